//! What attention's kernels share: the running (online) softmax of a query head, the element
//! types a KV cache stores, and the f16 widening and prefetch around them. The kernel itself
//! is [`attention_group`](crate::attention_group).

use half::f16;

use crate::attention_group::HeadRun;
use crate::blocks::f16_to_f32;
use crate::dispatch::Isa;

/// The running softmax of one query head over the keys seen so far: max score `m` and
/// `l = Σ e^(s − m)`; the output holds `Σ e^(s − m)·v` until [`finish`] divides by `l`.
#[derive(Debug, Clone, Copy)]
pub struct OnlineSoftmax {
    pub m: f32,
    pub l: f32,
}

impl Default for OnlineSoftmax {
    fn default() -> Self {
        Self {
            m: f32::NEG_INFINITY,
            l: 0.0,
        }
    }
}

/// What a KV cache stores: f32, or f16 (llama.cpp's default cache type: half the memory and
/// the bytes attention reads, K and V rounded as llama.cpp rounds them).
pub trait KvElem: Copy + Default + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// `dst[i] = src[i]` rounded to this type (to nearest, ties to even).
    fn store(src: &[f32], dst: &mut [Self]);
    /// `run` as f32: the run itself for f32; for f16, widened once into `buf` (keys, then
    /// values), so that prefill's rows, which each read a cache block, read it converted.
    fn widened<'a>(
        isa: Isa,
        run: HeadRun<'a, Self>,
        hd: usize,
        buf: &'a mut Vec<f32>,
    ) -> HeadRun<'a, f32>;
    /// [`attend_group`](crate::attention_group::attend_group)'s pass over up to four heads
    /// with this CPU's SIMD kernel; false where there is none for `isa` and this head size.
    fn fold_group_simd(
        isa: Isa,
        q: &[f32],
        run: HeadRun<'_, Self>,
        scale: f32,
        states: &mut [OnlineSoftmax],
        scores: &mut [f32],
        out: &mut [f32],
    ) -> bool;
}

/// A [`KvElem::fold_group_simd`] that runs `attention_group::x86::$kernel` on x86-64 and
/// reports no SIMD kernel elsewhere.
macro_rules! fold_group_simd_with {
    ($kernel:ident) => {
        fn fold_group_simd(
            isa: Isa,
            q: &[f32],
            run: HeadRun<'_, Self>,
            scale: f32,
            states: &mut [OnlineSoftmax],
            scores: &mut [f32],
            out: &mut [f32],
        ) -> bool {
            #[cfg(target_arch = "x86_64")]
            return crate::attention_group::x86::$kernel(isa, q, run, scale, states, scores, out);
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (isa, q, run, scale, states, scores, out);
                false
            }
        }
    };
}

impl KvElem for f32 {
    fold_group_simd_with!(fold_group_f32);
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn store(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn widened<'a>(
        _: Isa,
        run: HeadRun<'a, f32>,
        _: usize,
        _: &'a mut Vec<f32>,
    ) -> HeadRun<'a, f32> {
        run
    }
}

impl KvElem for f16 {
    fold_group_simd_with!(fold_group_f16);
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16_to_f32(self.to_bits())
    }
    fn store(src: &[f32], dst: &mut [f16]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
    fn widened<'a>(
        isa: Isa,
        run: HeadRun<'a, f16>,
        hd: usize,
        buf: &'a mut Vec<f32>,
    ) -> HeadRun<'a, f32> {
        let len = run.n * hd;
        buf.resize(2 * len, 0.0);
        let (k, v) = buf.split_at_mut(len);
        widen_f16(isa, &run.keys[..len], k);
        widen_f16(isa, &run.values[..len], v);
        let (keys, values) = buf.split_at(len);
        HeadRun::new(keys, values, run.n)
    }
}

/// `dst[i] = src[i]` as f32 (exact), with the CPU's f16 conversion (F16C) where it has one.
pub fn widen_f16(isa: Isa, src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen_f16: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if isa.is_simd() {
        // SAFETY: a SIMD `Isa` is only made after AVX2, FMA and F16C were detected.
        unsafe { widen_f16_f16c(src, dst) };
        return;
    }
    let _ = isa;
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f16_to_f32(s.to_bits());
    }
}

/// [`widen_f16`] eight values at a time with `vcvtph2ps`; the caller checked for F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
fn widen_f16_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let (hs, ht) = src.as_chunks::<8>();
    let (fs, ft) = dst.as_chunks_mut::<8>();
    for (h, f) in hs.iter().zip(fs) {
        // SAFETY: `h` is 16 readable bytes and `f` 32 writable ones; both intrinsics take
        // unaligned addresses.
        unsafe {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast::<__m128i>()));
            _mm256_storeu_ps(f.as_mut_ptr(), v);
        }
    }
    for (d, s) in ft.iter_mut().zip(ht) {
        *d = f16_to_f32(s.to_bits());
    }
}

/// `out ← out / l`: the attention output once every key has been folded in.
pub fn finish(state: &OnlineSoftmax, out: &mut [f32]) {
    let inv = 1.0 / state.l;
    out.iter_mut().for_each(|o| *o *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::isa;

    /// Storing rounds to nearest f16, as the `half` crate (and llama.cpp's F16C) does.
    #[test]
    fn f16_store_rounds_to_nearest() {
        let src: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 300.0).collect();
        let mut dst = vec![f16::ZERO; src.len()];
        f16::store(&src, &mut dst);
        for (s, d) in src.iter().zip(&dst) {
            assert_eq!(d.to_bits(), f16::from_f32(*s).to_bits(), "{s}");
            assert!((d.to_f32() - s).abs() <= s.abs() * 2f32.powi(-11), "{s}");
        }
    }

    /// The hardware conversion gives what the exact scalar one gives, for every f16 (NaNs as
    /// NaNs), at every length's tail.
    #[test]
    fn widening_f16_is_exact() {
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        for isa in [Isa::PORTABLE, isa()] {
            for len in [all.len(), 13, 7] {
                let mut got = vec![0f32; len];
                widen_f16(isa, &all[..len], &mut got);
                for (h, g) in all.iter().zip(&got) {
                    let want = h.to_f32();
                    assert!(
                        g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                        "{isa:?} {:#06x}: {g} vs {want}",
                        h.to_bits()
                    );
                }
            }
        }
    }
}
