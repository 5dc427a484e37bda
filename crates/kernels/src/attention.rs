//! The inner step of attention: one query head against a run of cached keys and values, with
//! an online softmax, compiled for each instruction set (`multiversion!`), so the dot
//! products and the weighted sums of values run on the widest vectors the CPU has.

use half::f16;

use crate::attention_group::HeadRun;
use crate::blocks::f16_to_f32;
use crate::dispatch::{multiversion, Isa};
use crate::dot::dot_f32;

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
    /// The first `n` keys and values of `run`, `hd` wide, as f32 for [`attend_keys`]: the run
    /// itself for f32; for f16, widened once into `buf` (keys, then values, each `[n, hd]`),
    /// so that every query head meeting the run reads f32, not one conversion per head.
    fn widened<'a>(
        isa: Isa,
        run: &KeyRun<'a, Self>,
        n: usize,
        hd: usize,
        buf: &'a mut Vec<f32>,
    ) -> KeyRun<'a, f32>;
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

impl KvElem for f32 {
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
        return crate::attention_group::x86::fold_group_f32(
            isa, q, run, scale, states, scores, out,
        );
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (isa, q, run, scale, states, scores, out);
            false
        }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn store(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn widened<'a>(
        _: Isa,
        run: &KeyRun<'a, f32>,
        _: usize,
        _: usize,
        _: &'a mut Vec<f32>,
    ) -> KeyRun<'a, f32> {
        *run
    }
}

impl KvElem for f16 {
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
        return crate::attention_group::x86::fold_group_f16(
            isa, q, run, scale, states, scores, out,
        );
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (isa, q, run, scale, states, scores, out);
            false
        }
    }
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
        run: &KeyRun<'a, f16>,
        n: usize,
        hd: usize,
        buf: &'a mut Vec<f32>,
    ) -> KeyRun<'a, f32> {
        buf.resize(2 * n * hd, 0.0);
        let (k, v) = buf.split_at_mut(n * hd);
        for (j, (kd, vd)) in k
            .chunks_exact_mut(hd)
            .zip(v.chunks_exact_mut(hd))
            .enumerate()
        {
            widen_f16(isa, &run.keys[j * run.stride..][..hd], kd);
            widen_f16(isa, &run.values[j * run.stride..][..hd], vd);
        }
        let (k, v) = buf.split_at(n * hd);
        KeyRun {
            keys: k,
            values: v,
            stride: hd,
            scale: run.scale,
        }
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

/// Consecutive cached positions of one KV head: key and value j start at `j·stride`.
#[derive(Clone, Copy)]
pub struct KeyRun<'a, E = f32> {
    pub keys: &'a [E],
    pub values: &'a [E],
    pub stride: usize,
    /// The score scale, 1/√head_dim.
    pub scale: f32,
}

multiversion! {
    /// Folds the first `scores.len()` keys of `run` (`q.len()` wide) into `state` and `out`:
    /// m' = max(m, max_j s_j), out ← out·e^(m−m') + Σ_j e^(s_j−m')·v_j,
    /// l ← l·e^(m−m') + Σ_j e^(s_j−m'), with s_j = scale · q·k_j.
    pub fn attend_keys(
        q: &[f32],
        run: &KeyRun<'_>,
        state: &mut OnlineSoftmax,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        fold_keys(q, run, state, scores, out)
    }
}

/// The body of [`attend_keys`], inlined into each instruction set's build.
#[inline(always)]
fn fold_keys(
    q: &[f32],
    run: &KeyRun<'_>,
    state: &mut OnlineSoftmax,
    scores: &mut [f32],
    out: &mut [f32],
) {
    {
        let KeyRun {
            keys,
            values,
            stride,
            scale,
        } = *run;
        let hd = q.len();
        let mut block_max = f32::NEG_INFINITY;
        for (j, s) in scores.iter_mut().enumerate() {
            *s = dot_f32(q, &keys[j * stride..][..hd]) * scale;
            block_max = block_max.max(*s);
        }
        let m_new = state.m.max(block_max);
        let correction = (state.m - m_new).exp();
        if correction != 1.0 {
            out.iter_mut().for_each(|o| *o *= correction);
        }
        state.l *= correction;
        // libm's `exp`, one value at a time interleaved with the weighted sums: a separate
        // vectorized pass with `ops::exp` made 7B prefill 10% slower (measured side by side).
        for (j, s) in scores.iter().enumerate() {
            let p = (s - m_new).exp();
            state.l += p;
            let v = &values[j * stride..][..hd];
            for (o, vv) in out.iter_mut().zip(v) {
                *o += p * vv;
            }
        }
        state.m = m_new;
    }
}

/// `out ← out / l`: the attention output once every key has been folded in.
pub fn finish(state: &OnlineSoftmax, out: &mut [f32]) {
    let inv = 1.0 / state.l;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Asks for `s` to be brought into L1 ahead of its use: decode's attention reads a head's
/// next cache block while it works on this one, and at long context that read is from memory.
/// A prefetch is a hint: it never faults, whatever the address.
pub fn prefetch<E>(s: &[E]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(s);
        let base = s.as_ptr() as *const i8;
        for at in (0..bytes).step_by(64) {
            // SAFETY: SSE is part of x86-64; a prefetch reads nothing and cannot fault.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    base.wrapping_add(at),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = s;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::isa;

    /// Keys folded in runs of any length, on every instruction set, give the plain softmax
    /// attention computed in f64 (on the values as stored).
    #[test]
    fn runs_of_keys_give_softmax_attention() {
        check_runs::<f32>();
        check_runs::<f16>();
    }

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

    fn check_runs<E: KvElem>() {
        let (hd, n, stride) = (40, 23, 56);
        let q: Vec<f32> = (0..hd).map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0).collect();
        let stored = |f: &dyn Fn(usize) -> f32| {
            let x: Vec<f32> = (0..n * stride).map(f).collect();
            let mut e = vec![E::default(); x.len()];
            E::store(&x, &mut e);
            e
        };
        let keys = stored(&|i| ((i * 13) % 17) as f32 / 8.0 - 1.0);
        let values = stored(&|i| ((i * 5) % 19) as f32 / 9.0 - 1.0);
        let scale = 0.3f32;
        let s: Vec<f64> = (0..n)
            .map(|j| {
                (0..hd)
                    .map(|d| q[d] as f64 * keys[j * stride + d].to_f32() as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l: f64 = s.iter().map(|v| (v - m).exp()).sum();
        let want: Vec<f64> = (0..hd)
            .map(|d| {
                (0..n)
                    .map(|j| (s[j] - m).exp() * values[j * stride + d].to_f32() as f64)
                    .sum::<f64>()
                    / l
            })
            .collect();
        for isa in [Isa::PORTABLE, isa()] {
            for run in [1usize, 4, 23] {
                let mut state = OnlineSoftmax::default();
                let mut out = vec![0f32; hd];
                let mut scores = vec![0f32; run];
                let mut start = 0;
                while start < n {
                    let k = run.min(n - start);
                    let (ks, vs) = (&keys[start * stride..], &values[start * stride..]);
                    let run = KeyRun {
                        keys: ks,
                        values: vs,
                        stride,
                        scale,
                    };
                    let mut buf = Vec::new();
                    let run = E::widened(isa, &run, k, hd, &mut buf);
                    attend_keys(isa, &q, &run, &mut state, &mut scores[..k], &mut out);
                    start += k;
                }
                finish(&state, &mut out);
                for (g, w) in out.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() < 1e-5,
                        "{isa:?} run {run}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
