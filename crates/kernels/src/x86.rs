//! x86 SIMD versions of the integer block dot products in [`crate::act_quant`] (the scalar
//! references). Two builds of each: AVX2 (`maddubs` + `madd` pair sums) and AVX-512 VNNI
//! (`vpdpbusd`). A block's products are summed exactly in eight i32 lanes, each lane scaled
//! and accumulated in f32 across blocks (llama.cpp's x86 order), then the lanes are added: the
//! same terms as the reference, reassociated.

use std::arch::x86_64::*;

use crate::act_quant::{Q8Blocks, QuantizedRow};
use crate::blocks::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1,
};
use crate::dispatch::{Isa, Level};
use crate::DType;

/// How far ahead of the block being computed the weight stream is prefetched into L2.
const PREFETCH_BYTES: usize = 4096;

/// How far ahead it is asked into L1, from L2: without it the k-quant kernels stalled on their
/// weight loads (a profile of Q4_K decode), and Q4_K_M decode was 7–9% slower (2.52 / 2.19 /
/// 2.23 vs 2.74 / 2.38 / 2.38 tok/s, alternating; 1024 bytes was no better than 512).
const NEAR_BYTES: usize = 512;

/// A row dot product compiled for a feature set the CPU was checked to have.
pub(crate) type RowDot = unsafe fn(&[u8], &QuantizedRow) -> f32;

/// The quants of an 8-bit activation block (Q8_0 or Q8_1).
trait ActBlock {
    fn qs(&self) -> &[i8; 32];
}

impl ActBlock for BlockQ8_0 {
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
}

impl ActBlock for BlockQ8_1 {
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
}

/// The fields Q4_K and Q5_K share, for the one kernel body they share.
trait Q4KLike: bytemuck::Pod {
    fn d(&self) -> [u8; 2];
    fn dmin(&self) -> [u8; 2];
    fn scales(&self) -> &[u8; 12];
    fn qs(&self) -> &[u8; 128];
}

macro_rules! q4k_like {
    ($t:ty) => {
        impl Q4KLike for $t {
            fn d(&self) -> [u8; 2] {
                self.d
            }
            fn dmin(&self) -> [u8; 2] {
                self.dmin
            }
            fn scales(&self) -> &[u8; 12] {
                &self.scales
            }
            fn qs(&self) -> &[u8; 128] {
                &self.qs
            }
        }
    };
}
q4k_like!(BlockQ4K);
q4k_like!(BlockQ5K);

/// Activation rows met together by the multi-row kernels (prefill, batched decode).
pub(crate) const GROUP: usize = 8;

/// The same dot product for [`GROUP`] activation rows at once (`xs.len() == GROUP`, into
/// `out[..GROUP]`): each weight block is unpacked once and met by all of them.
pub(crate) type RowDot4 = unsafe fn(&[u8], &[QuantizedRow], &mut [f32]);

/// The fastest kernels for `dtype` against quantized activations (one row, GROUP rows), if
/// this CPU has them.
pub(crate) fn row_dots(isa: Isa, dtype: DType) -> Option<(RowDot, RowDot4)> {
    if isa.level() < Level::Avx2 {
        return None;
    }
    let vnni = isa.level() >= Level::Avx512 && crate::dispatch::has_vnni();
    Some(match (dtype, vnni) {
        (DType::Q4_0, false) => (avx2::q4_0, avx2::q4_0_x4),
        (DType::Q4_0, true) => (vnni::q4_0, vnni::q4_0_x4),
        (DType::Q4_1, false) => (avx2::q4_1, avx2::q4_1_x4),
        (DType::Q4_1, true) => (vnni::q4_1, vnni::q4_1_x4),
        (DType::Q8_0, false) => (avx2::q8_0, avx2::q8_0_x4),
        (DType::Q8_0, true) => (vnni::q8_0, vnni::q8_0_x4),
        (DType::Q5_0, false) => (avx2::q5_0, avx2::q5_0_x4),
        (DType::Q5_0, true) => (vnni::q5_0, vnni::q5_0_x4),
        (DType::Q5_1, false) => (avx2::q5_1, avx2::q5_1_x4),
        (DType::Q5_1, true) => (vnni::q5_1, vnni::q5_1_x4),
        (DType::Q2_K, false) => (avx2::q2_k, avx2::q2_k_x4),
        (DType::Q2_K, true) => (vnni::q2_k, vnni::q2_k_x4),
        (DType::Q3_K, false) => (avx2::q3_k, avx2::q3_k_x4),
        (DType::Q3_K, true) => (vnni::q3_k, vnni::q3_k_x4),
        (DType::Q4_K, false) => (avx2::q4_k, avx2::q4_k_x4),
        (DType::Q4_K, true) => (vnni::q4_k, vnni::q4_k_x4),
        (DType::Q5_K, false) => (avx2::q5_k, avx2::q5_k_x4),
        (DType::Q5_K, true) => (vnni::q5_k, vnni::q5_k_x4),
        (DType::Q6_K, false) => (avx2::q6_k, avx2::q6_k_x4),
        (DType::Q6_K, true) => (vnni::q6_k, vnni::q6_k_x4),
        _ => return None,
    })
}

/// Generates the three row kernels for one feature set, given its i8 pair-sum primitives.
macro_rules! row_kernels {
    ($mod:ident, $features:literal, $sum_us:ident) => {
        pub(crate) mod $mod {
            use super::*;

            /// Σ u[i]·s[i] (u unsigned, s signed bytes) as eight i32 lanes.
            #[target_feature(enable = $features)]
            #[inline]
            fn sum_us(u: __m256i, s: __m256i) -> __m256i {
                $sum_us(u, s)
            }

            /// 16 bytes of nibbles → 32 bytes: low nibbles first (elements 0..16), then high.
            #[target_feature(enable = $features)]
            #[inline]
            pub(crate) fn nibbles(qs: &[u8; 16]) -> __m256i {
                // SAFETY: `qs` is 16 readable bytes; the load is unaligned.
                let lo = unsafe { _mm_loadu_si128(qs.as_ptr() as *const __m128i) };
                // The bytes in both halves (a broadcast load), the upper half shifted by 4:
                // one shift and one AND, no lane insert.
                let both = _mm256_broadcastsi128_si256(lo);
                let shifted = _mm256_srlv_epi64(both, _mm256_setr_epi64x(0, 0, 4, 4));
                _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
            }

            #[target_feature(enable = $features)]
            #[inline]
            pub(crate) fn load32(q: &[i8; 32]) -> __m256i {
                // SAFETY: `q` is 32 readable bytes; the load is unaligned.
                unsafe { _mm256_loadu_si256(q.as_ptr() as *const __m256i) }
            }

            /// f16 → f32 in integer arithmetic. Not F16C's `vcvtph2ps` on one lane: LLVM feeds
            /// it with a `vpinsrw` that merges into whatever register is free, often the
            /// accumulator, chaining every block's conversion behind the previous block's FMA
            /// (measured: 10 ns per Q4_0 block instead of 2).
            #[inline(always)]
            pub(crate) fn h(b: [u8; 2]) -> f32 {
                crate::blocks::f16_le(b)
            }

            /// Asks for the weight bytes `PREFETCH_BYTES` ahead of `at` into L2 and those
            /// `NEAR_BYTES` ahead into L1. The hardware
            /// prefetchers of the machines measured (VMs) do not keep a weight stream in flight
            /// on their own: without this the kernels ran at a quarter of the read bandwidth.
            /// [`prefetch`] for a run of small blocks: one hint per cache line of the run,
            /// where one per block asked for each line three or four times.
            #[target_feature(enable = $features)]
            #[inline]
            fn prefetch_run<T>(run: &[T]) {
                let at = run.as_ptr() as *const i8;
                let (base, near) = (at.wrapping_add(PREFETCH_BYTES), at.wrapping_add(NEAR_BYTES));
                for line in (0..std::mem::size_of_val(run)).step_by(64) {
                    // A prefetch is a hint: it never faults, whatever the address.
                    _mm_prefetch::<_MM_HINT_T1>(base.wrapping_add(line));
                    _mm_prefetch::<_MM_HINT_T0>(near.wrapping_add(line));
                }
            }

            #[target_feature(enable = $features)]
            #[inline]
            fn prefetch<T>(at: &T) {
                let base = (at as *const T as *const i8).wrapping_add(PREFETCH_BYTES);
                let near = (at as *const T as *const i8).wrapping_add(NEAR_BYTES);
                // One hint per cache line the block spans (k-quant blocks span several).
                for line in (0..std::mem::size_of::<T>()).step_by(64) {
                    // A prefetch is a hint: it never faults, whatever the address.
                    _mm_prefetch::<_MM_HINT_T1>(base.wrapping_add(line));
                    _mm_prefetch::<_MM_HINT_T0>(near.wrapping_add(line));
                }
            }

            /// Σ over pairs of (u·s) pairs, each pair sum times the i16 scale in its lane:
            /// eight i32 lanes. Exact: |u| ≤ 63 and |s| ≤ 127 keep pair sums inside i16.
            #[target_feature(enable = $features)]
            #[inline]
            fn sum_scaled(u: __m256i, s: __m256i, scale: __m256i) -> __m256i {
                _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale)
            }

            fn q8k_rows<const N: usize>(xs: &[QuantizedRow]) -> [&[BlockQ8K]; N] {
                std::array::from_fn(|r| match &xs[r] {
                    QuantizedRow::Q8K(b) => b.as_slice(),
                    _ => unreachable!("Q8_K activations expected"),
                })
            }

            #[target_feature(enable = $features)]
            #[inline]
            fn load_bsums(b: &BlockQ8K) -> __m256i {
                // SAFETY: `bsums` is 16 i16 = 32 readable bytes; the load is unaligned.
                unsafe { _mm256_loadu_si256(b.bsums.as_ptr() as *const __m256i) }
            }

            #[target_feature(enable = $features)]
            #[inline]
            fn load_q8k(b: &BlockQ8K, at: usize) -> __m256i {
                let q: &[i8; 32] = b.qs[at..at + 32].try_into().expect("32 quants");
                load32(q)
            }

            /// One k-quant block's share for each row: `d_x·d · Σ sc·u·x − d_x·dmin · Σ m·bsum`,
            /// the integer sums `sumi` and the per-16 mins given.
            #[target_feature(enable = $features)]
            #[inline]
            #[allow(clippy::too_many_arguments)]
            fn add_scaled<const N: usize>(
                d: f32,
                dmin: f32,
                mins: __m256i,
                sumi: &[__m256i; N],
                ys: &[&[BlockQ8K]; N],
                i: usize,
                acc: &mut [__m256; N],
                acc_min: &mut [__m256; N],
            ) {
                add_block::<N>(d, sumi, ys, i, acc);
                for r in 0..N {
                    let y = &ys[r][i];
                    let m = _mm256_cvtepi32_ps(_mm256_madd_epi16(mins, load_bsums(y)));
                    acc_min[r] = _mm256_fmadd_ps(_mm256_set1_ps(-y.d * dmin), m, acc_min[r]);
                }
            }

            /// One k-quant block's `d_x·d · Σ sc·u·x` for each row (types without mins).
            #[target_feature(enable = $features)]
            #[inline]
            fn add_block<const N: usize>(
                d: f32,
                sumi: &[__m256i; N],
                ys: &[&[BlockQ8K]; N],
                i: usize,
                acc: &mut [__m256; N],
            ) {
                for r in 0..N {
                    let dd = _mm256_set1_ps(ys[r][i].d * d);
                    acc[r] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sumi[r]), acc[r]);
                }
            }

            /// Q4_K and Q5_K (`w = d·sc·u − dmin·m`, u in 4 or 5 bits) against Q8_K rows;
            /// `fifth(block, group)` gives group's fifth bits (0x10 per set bit) or zero.
            #[target_feature(enable = $features)]
            #[inline]
            fn q4k_like_n<const N: usize, B: Q4KLike>(
                row: &[u8],
                xs: &[QuantizedRow],
                out: &mut [f32],
                fifth: impl Fn(&B, usize) -> __m256i,
            ) {
                let w = bytemuck::cast_slice::<u8, B>(row);
                let ys = q8k_rows::<N>(xs);
                let mut acc = [_mm256_setzero_ps(); N];
                let mut acc_min = [_mm256_setzero_ps(); N];
                let nib = _mm256_set1_epi8(0x0F);
                for (i, a) in w.iter().enumerate() {
                    prefetch(a);
                    let k = crate::kquants::unpack_scales_q4_k(a.scales());
                    // Mins per group of 16 (each 32-group's min twice), against the bsums.
                    // SAFETY: `k.min` is 16 i16 = 32 readable bytes.
                    let mins = unsafe { _mm256_loadu_si256(k.min.as_ptr() as *const __m256i) };
                    let mut sumi = [_mm256_setzero_si256(); N];
                    for c in 0..4 {
                        // SAFETY: `qs[32c..32c+32]` is in bounds (128 bytes).
                        let q = unsafe {
                            _mm256_loadu_si256(a.qs().as_ptr().add(32 * c) as *const __m256i)
                        };
                        let lo = _mm256_or_si256(_mm256_and_si256(q, nib), fifth(a, 2 * c));
                        let hi = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(q, 4), nib),
                            fifth(a, 2 * c + 1),
                        );
                        let (sl, sh) = (
                            _mm256_set1_epi16(k.scale[4 * c]),
                            _mm256_set1_epi16(k.scale[4 * c + 2]),
                        );
                        for r in 0..N {
                            let y = &ys[r][i];
                            let pl = sum_scaled(lo, load_q8k(y, 64 * c), sl);
                            let ph = sum_scaled(hi, load_q8k(y, 64 * c + 32), sh);
                            sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(pl, ph));
                        }
                    }
                    let (d, dmin) = (h(a.d()), h(a.dmin()));
                    add_scaled::<N>(d, dmin, mins, &sumi, &ys, i, &mut acc, &mut acc_min);
                }
                for r in 0..N {
                    out[r] = hsum(_mm256_add_ps(acc[r], acc_min[r]));
                }
            }

            /// # Safety
            /// As [`q4_0_n`], for Q4_K blocks and Q8_K rows.
            #[target_feature(enable = $features)]
            unsafe fn q4_k_n<const N: usize>(row: &[u8], xs: &[QuantizedRow], out: &mut [f32]) {
                q4k_like_n::<N, BlockQ4K>(row, xs, out, |_, _| _mm256_setzero_si256())
            }

            /// # Safety
            /// As [`q4_0_n`], for Q5_K blocks and Q8_K rows.
            #[target_feature(enable = $features)]
            unsafe fn q5_k_n<const N: usize>(row: &[u8], xs: &[QuantizedRow], out: &mut [f32]) {
                let one = _mm256_set1_epi8(0x01);
                // The fifth bit of group j is bit j of each qh byte.
                let fifth = |a: &BlockQ5K, j: usize| {
                    // SAFETY: `qh` is 32 readable bytes.
                    let qh = unsafe { _mm256_loadu_si256(a.qh.as_ptr() as *const __m256i) };
                    let v = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32));
                    _mm256_slli_epi16(_mm256_and_si256(v, one), 4)
                };
                q4k_like_n::<N, BlockQ5K>(row, xs, out, fifth)
            }

            /// Σ over the 16-weight groups of scale · Σ u·x, for a block whose 2-bit fields sit
            /// as Q2_K/Q3_K pack them (element 128n + 32j + l: bits 2j of byte 32n + l), each
            /// field widened by `high(n, j)` (Q3_K's third bit), against N rows.
            #[target_feature(enable = $features)]
            #[inline]
            fn sum_2bit_fields<const N: usize>(
                qs: &[u8; 64],
                scales: &[i16; 16],
                high: impl Fn(usize, usize) -> __m256i,
                ys: &[&[BlockQ8K]; N],
                i: usize,
                sumi: &mut [__m256i; N],
            ) {
                let three = _mm256_set1_epi8(0x03);
                for n in 0..2 {
                    // SAFETY: `qs[32n..32n+32]` is in bounds (64 bytes).
                    let qv =
                        unsafe { _mm256_loadu_si256(qs.as_ptr().add(32 * n) as *const __m256i) };
                    for j in 0..4 {
                        let shifted = _mm256_srl_epi16(qv, _mm_cvtsi32_si128(2 * j as i32));
                        let u = _mm256_or_si256(_mm256_and_si256(shifted, three), high(n, j));
                        let g = 8 * n + 2 * j;
                        let sc = _mm256_set_m128i(
                            _mm_set1_epi16(scales[g + 1]),
                            _mm_set1_epi16(scales[g]),
                        );
                        for r in 0..N {
                            let x = load_q8k(&ys[r][i], 128 * n + 32 * j);
                            sumi[r] = _mm256_add_epi32(sumi[r], sum_scaled(u, x, sc));
                        }
                    }
                }
            }

            /// # Safety
            /// As [`q4_0_n`], for Q2_K blocks and Q8_K rows.
            #[target_feature(enable = $features)]
            unsafe fn q2_k_n<const N: usize>(row: &[u8], xs: &[QuantizedRow], out: &mut [f32]) {
                let w = bytemuck::cast_slice::<u8, BlockQ2K>(row);
                let ys = q8k_rows::<N>(xs);
                let mut acc = [_mm256_setzero_ps(); N];
                let mut acc_min = [_mm256_setzero_ps(); N];
                for (i, a) in w.iter().enumerate() {
                    prefetch(a);
                    let scales: [i16; 16] = std::array::from_fn(|g| (a.scales[g] & 0x0F) as i16);
                    let mins: [i16; 16] = std::array::from_fn(|g| (a.scales[g] >> 4) as i16);
                    // SAFETY: `mins` is 16 i16 = 32 readable bytes.
                    let mins = unsafe { _mm256_loadu_si256(mins.as_ptr() as *const __m256i) };
                    let mut sumi = [_mm256_setzero_si256(); N];
                    sum_2bit_fields::<N>(
                        &a.qs,
                        &scales,
                        |_, _| _mm256_setzero_si256(),
                        &ys,
                        i,
                        &mut sumi,
                    );
                    let (d, dmin) = (h(a.d), h(a.dmin));
                    add_scaled::<N>(d, dmin, mins, &sumi, &ys, i, &mut acc, &mut acc_min);
                }
                for r in 0..N {
                    out[r] = hsum(_mm256_add_ps(acc[r], acc_min[r]));
                }
            }

            /// # Safety
            /// As [`q4_0_n`], for Q3_K blocks and Q8_K rows.
            #[target_feature(enable = $features)]
            unsafe fn q3_k_n<const N: usize>(row: &[u8], xs: &[QuantizedRow], out: &mut [f32]) {
                let w = bytemuck::cast_slice::<u8, BlockQ3K>(row);
                let ys = q8k_rows::<N>(xs);
                let mut acc = [_mm256_setzero_ps(); N];
                let one = _mm256_set1_epi8(0x01);
                for (i, a) in w.iter().enumerate() {
                    prefetch(a);
                    let scales = crate::kquants::unpack_scales_q3_k(&a.scales);
                    // SAFETY: `scales` is 16 i16 = 32 readable bytes.
                    let sc16 = unsafe { _mm256_loadu_si256(scales.as_ptr() as *const __m256i) };
                    // SAFETY: `hmask` is 32 readable bytes.
                    let hm = unsafe { _mm256_loadu_si256(a.hmask.as_ptr() as *const __m256i) };
                    // Weights are u − 4 with u = low bits + 4·(hmask bit): Σ sc·(u−4)·x =
                    // Σ sc·u·x − 4 · Σ sc · bsum.
                    let mut sumi = [_mm256_setzero_si256(); N];
                    for r in 0..N {
                        let offset = _mm256_madd_epi16(sc16, load_bsums(&ys[r][i]));
                        sumi[r] = _mm256_sub_epi32(sumi[r], _mm256_slli_epi32(offset, 2));
                    }
                    let high = |n: usize, j: usize| {
                        let v = _mm256_srl_epi16(hm, _mm_cvtsi32_si128((4 * n + j) as i32));
                        _mm256_slli_epi16(_mm256_and_si256(v, one), 2)
                    };
                    sum_2bit_fields::<N>(&a.qs, &scales, high, &ys, i, &mut sumi);
                    add_block::<N>(h(a.d), &sumi, &ys, i, &mut acc);
                }
                for r in 0..N {
                    out[r] = hsum(acc[r]);
                }
            }

            /// # Safety
            /// As [`q4_0_n`], for Q6_K blocks and Q8_K rows.
            #[target_feature(enable = $features)]
            unsafe fn q6_k_n<const N: usize>(row: &[u8], xs: &[QuantizedRow], out: &mut [f32]) {
                let w = bytemuck::cast_slice::<u8, BlockQ6K>(row);
                let ys = q8k_rows::<N>(xs);
                let mut acc = [_mm256_setzero_ps(); N];
                let (nib, two) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x03));
                for (i, a) in w.iter().enumerate() {
                    prefetch(a);
                    // SAFETY: `scales` is 16 readable bytes.
                    let sc8 = unsafe { _mm_loadu_si128(a.scales.as_ptr() as *const __m128i) };
                    let scales = _mm256_cvtepi8_epi16(sc8);
                    // Weights are q − 32: Σ sc·(q−32)·x = Σ sc·q·x − 32 · Σ sc · bsum.
                    let mut sumi = [_mm256_setzero_si256(); N];
                    for r in 0..N {
                        let offset = _mm256_madd_epi16(scales, load_bsums(&ys[r][i]));
                        sumi[r] = _mm256_sub_epi32(sumi[r], _mm256_slli_epi32(offset, 5));
                    }
                    for half in 0..2 {
                        // SAFETY: ql[64h..64h+64] and qh[32h..32h+32] are in bounds.
                        let (la, lb, qh) = unsafe {
                            (
                                _mm256_loadu_si256(a.ql.as_ptr().add(64 * half) as *const __m256i),
                                _mm256_loadu_si256(
                                    a.ql.as_ptr().add(64 * half + 32) as *const __m256i
                                ),
                                _mm256_loadu_si256(a.qh.as_ptr().add(32 * half) as *const __m256i),
                            )
                        };
                        let high = |shift: i32| -> __m256i {
                            let v = match shift {
                                0 => qh,
                                2 => _mm256_srli_epi16(qh, 2),
                                4 => _mm256_srli_epi16(qh, 4),
                                _ => _mm256_srli_epi16(qh, 6),
                            };
                            _mm256_slli_epi16(_mm256_and_si256(v, two), 4)
                        };
                        let q = [
                            _mm256_or_si256(_mm256_and_si256(la, nib), high(0)),
                            _mm256_or_si256(_mm256_and_si256(lb, nib), high(2)),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(la, 4), nib),
                                high(4),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(lb, 4), nib),
                                high(6),
                            ),
                        ];
                        for (part, qv) in q.into_iter().enumerate() {
                            let g = 8 * half + 2 * part;
                            let sc = _mm256_set_m128i(
                                _mm_set1_epi16(a.scales[g + 1] as i16),
                                _mm_set1_epi16(a.scales[g] as i16),
                            );
                            for r in 0..N {
                                let x = load_q8k(&ys[r][i], 128 * half + 32 * part);
                                sumi[r] = _mm256_add_epi32(sumi[r], sum_scaled(qv, x, sc));
                            }
                        }
                    }
                    add_block::<N>(h(a.d), &sumi, &ys, i, &mut acc);
                }
                for r in 0..N {
                    out[r] = hsum(acc[r]);
                }
            }

            #[target_feature(enable = $features)]
            #[inline]
            pub(crate) fn hsum(v: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
            }

            pub(crate) fn q8_0_rows<const N: usize>(
                xs: &[QuantizedRow],
            ) -> [&Q8Blocks<BlockQ8_0>; N] {
                std::array::from_fn(|r| match &xs[r] {
                    QuantizedRow::Q8_0(b) => b,
                    _ => unreachable!("Q8_0 activations expected"),
                })
            }

            pub(crate) fn q8_1_rows<const N: usize>(
                xs: &[QuantizedRow],
            ) -> [&Q8Blocks<BlockQ8_1>; N] {
                std::array::from_fn(|r| match &xs[r] {
                    QuantizedRow::Q8_1(b) => b,
                    _ => unreachable!("Q8_1 activations expected"),
                })
            }

            /// Eight consecutive blocks' f16 field at byte `off` (blocks of `size` bytes from
            /// block `first`), as f32 lanes: one F16C conversion for eight blocks.
            /// Always inlined, so never a call that spills the callers' accumulators; only
            /// called from this module's kernels, which are compiled with these features.
            #[inline(always)]
            fn scales8(row: &[u8], size: usize, first: usize, off: usize) -> __m256 {
                // The eight blocks sliced once: the reads below need no checks of their own
                // (sixteen compares and branches per group cost decode a tenth of its time).
                let group = &row[first * size..][..8 * size];
                let at = |k: usize| {
                    let p = k * size + off;
                    i16::from_le_bytes([group[p], group[p + 1]])
                };
                let h = [at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7)];
                // SAFETY: inlined into kernels compiled with F16C and AVX (their callers
                // checked the CPU has them); `h` is 16 readable bytes, loaded unaligned.
                unsafe { _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i)) }
            }

            /// The eight lanes of `v`, for broadcasting one at a time: a broadcast from memory
            /// is a load, where an in-register lane permute would compete with the dot
            /// products for the shuffle port.
            #[target_feature(enable = $features)]
            #[inline]
            fn lanes(v: __m256) -> [f32; 8] {
                let mut out = [0f32; 8];
                // SAFETY: `out` is 8 writable f32; the store is unaligned.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
                out
            }

            #[target_feature(enable = $features)]
            #[inline]
            pub(crate) fn load8_ps(v: &[f32]) -> __m256 {
                let v: &[f32; 8] = v.try_into().expect("8 values");
                // SAFETY: `v` is 8 readable f32; the load is unaligned.
                unsafe { _mm256_loadu_ps(v.as_ptr()) }
            }

            /// Blocks `i0..i0 + 8` of `v`, checked once.
            #[inline(always)]
            fn group<T>(v: &[T], i0: usize) -> &[T; 8] {
                v[i0..i0 + 8].try_into().expect("a group is 8 blocks")
            }

            // The 32-weight kernels work in groups of eight blocks: the eight weight scales
            // are converted at once and multiplied by the rows' eight precomputed activation
            // scales, so a block costs one broadcast (a load) and one FMA per row on top of its
            // integer dot. Blocks past the last whole group take the per-block path.

            /// The 32-weight types with an offset term, against 8-bit rows: Q4_0/Q5_0
            /// (`w = d·(u − o)`, `offset = Some(o)`) and Q4_1/Q5_1 (`w = d·u + m`, m the f16 at
            /// byte 2, `offset = None`). Per block, Σ w·x = d·d_x · Σ u·q + c_w·c_x with
            /// c_w = −o·d or m, and c_x the row's `s` (d_x·Σq, or Q8_1's stored s): unsigned
            /// values go straight into the u8·i8 sum, the offsets are accumulated apart.
            #[target_feature(enable = $features)]
            #[inline]
            fn offset_n<const N: usize, B: bytemuck::Pod, A: ActBlock>(
                row: &[u8],
                rows: [&Q8Blocks<A>; N],
                out: &mut [f32],
                offset: Option<f32>,
                unpack: impl Fn(&B) -> __m256i,
            ) {
                let size = std::mem::size_of::<B>();
                let w = bytemuck::cast_slice::<u8, B>(row);
                let n = w.len();
                // Equal lengths up front let the compiler drop the per-block bounds checks.
                let d: [&[f32]; N] = std::array::from_fn(|r| &rows[r].d[..n]);
                let s: [&[f32]; N] = std::array::from_fn(|r| &rows[r].s[..n]);
                let ys: [&[A]; N] = std::array::from_fn(|r| &rows[r].blocks[..n]);
                let f16_at =
                    |i: usize, off: usize| h([row[i * size + off], row[i * size + off + 1]]);
                let mut acc = [_mm256_setzero_ps(); N];
                let mut acc_c = [_mm256_setzero_ps(); N];
                let mut tail_c = [0f32; N];
                let whole = n / 8 * 8;
                for i0 in (0..whole).step_by(8) {
                    let dw = scales8(row, size, i0, 0);
                    let cw = match offset {
                        Some(o) => _mm256_mul_ps(dw, _mm256_set1_ps(-o)),
                        None => scales8(row, size, i0, 2),
                    };
                    let mut f = [[0f32; 8]; N];
                    for r in 0..N {
                        f[r] = lanes(_mm256_mul_ps(dw, load8_ps(&d[r][i0..i0 + 8])));
                        acc_c[r] = _mm256_fmadd_ps(cw, load8_ps(&s[r][i0..i0 + 8]), acc_c[r]);
                    }
                    // The group's blocks as arrays: no bounds check per block (a profile of Q4_0
                    // decode found six scalar instructions and two branches per block).
                    let wg: &[B; 8] = group(w, i0);
                    let yg: [&[A; 8]; N] = std::array::from_fn(|r| group(ys[r], i0));
                    prefetch_run(wg);
                    for k in 0..8 {
                        let u = unpack(&wg[k]);
                        for r in 0..N {
                            let p = _mm256_cvtepi32_ps(sum_us(u, load32(yg[r][k].qs())));
                            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(f[r][k]), p, acc[r]);
                        }
                    }
                }
                for i in whole..n {
                    let u = unpack(&w[i]);
                    let dw = f16_at(i, 0);
                    let cw = offset.map_or_else(|| f16_at(i, 2), |o| -o * dw);
                    for r in 0..N {
                        let p = _mm256_cvtepi32_ps(sum_us(u, load32(ys[r][i].qs())));
                        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * d[r][i]), p, acc[r]);
                        tail_c[r] += cw * s[r][i];
                    }
                }
                for r in 0..N {
                    out[r] = hsum(acc[r]) + hsum(acc_c[r]) + tail_c[r];
                }
            }

            /// Bit e of a Q5 block's `qh` as 0x10 in byte e (the fifth bit of element e, in the
            /// element order [`nibbles`] gives), else 0.
            #[target_feature(enable = $features)]
            #[inline]
            fn fifth_bits(qh: [u8; 4]) -> __m256i {
                let v = _mm256_set1_epi32(i32::from_le_bytes(qh));
                let spread = _mm256_setr_epi8(
                    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                    3, 3, 3, 3, 3, 3,
                );
                let bytes = _mm256_shuffle_epi8(v, spread);
                let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask);
                _mm256_and_si256(set, _mm256_set1_epi8(0x10))
            }

            /// `out[r] = row · xs[r]` for N activation rows; each weight block is unpacked once.
            ///
            /// # Safety
            /// The CPU must support the features this module is compiled for; `row` must hold
            /// Q4_0 blocks, `xs` N Q8_0 rows of as many blocks, `out` at least N values.
            #[target_feature(enable = $features)]
            unsafe fn q4_0_n<const N: usize>(row: &[u8], xs: &[QuantizedRow], out: &mut [f32]) {
                let unpack = |a: &BlockQ4_0| nibbles(&a.qs);
                offset_n::<N, BlockQ4_0, _>(row, q8_0_rows::<N>(xs), out, Some(8.0), unpack)
            }

            /// # Safety
            /// As [`q4_0_n`], for Q5_0 blocks and Q8_0 rows.
            #[target_feature(enable = $features)]
            unsafe fn q5_0_n<const N: usize>(row: &[u8], xs: &[QuantizedRow], out: &mut [f32]) {
                let unpack = |a: &BlockQ5_0| _mm256_or_si256(nibbles(&a.qs), fifth_bits(a.qh));
                offset_n::<N, BlockQ5_0, _>(row, q8_0_rows::<N>(xs), out, Some(16.0), unpack)
            }

            /// # Safety
            /// As [`q4_0_n`], for Q4_1 blocks and Q8_1 rows.
            #[target_feature(enable = $features)]
            unsafe fn q4_1_n<const N: usize>(row: &[u8], xs: &[QuantizedRow], out: &mut [f32]) {
                let unpack = |a: &BlockQ4_1| nibbles(&a.qs);
                offset_n::<N, BlockQ4_1, _>(row, q8_1_rows::<N>(xs), out, None, unpack)
            }

            /// # Safety
            /// As [`q4_0_n`], for Q5_1 blocks and Q8_1 rows.
            #[target_feature(enable = $features)]
            unsafe fn q5_1_n<const N: usize>(row: &[u8], xs: &[QuantizedRow], out: &mut [f32]) {
                let unpack = |a: &BlockQ5_1| _mm256_or_si256(nibbles(&a.qs), fifth_bits(a.qh));
                offset_n::<N, BlockQ5_1, _>(row, q8_1_rows::<N>(xs), out, None, unpack)
            }

            /// # Safety
            /// As [`q4_0_n`], for Q8_0 blocks and Q8_0 rows.
            #[target_feature(enable = $features)]
            unsafe fn q8_0_n<const N: usize>(row: &[u8], xs: &[QuantizedRow], out: &mut [f32]) {
                let w = bytemuck::cast_slice::<u8, BlockQ8_0>(row);
                let ys = q8_0_rows::<N>(xs);
                let n = w.len();
                // Equal lengths up front let the compiler drop the per-block bounds checks.
                let d: [&[f32]; N] = std::array::from_fn(|r| &ys[r].d[..n]);
                let ys: [&[_]; N] = std::array::from_fn(|r| &ys[r].blocks[..n]);
                let mut acc = [_mm256_setzero_ps(); N];
                // |w| and x carrying w's sign: the u8·i8 form of a signed product.
                let dot = |a: &BlockQ8_0, b: &BlockQ8_0| {
                    let qx = load32(&a.qs);
                    _mm256_cvtepi32_ps(sum_us(
                        _mm256_sign_epi8(qx, qx),
                        _mm256_sign_epi8(load32(&b.qs), qx),
                    ))
                };
                let whole = n / 8 * 8;
                for i0 in (0..whole).step_by(8) {
                    let dw = scales8(row, 34, i0, 0);
                    let f: [[f32; 8]; N] = std::array::from_fn(|r| {
                        lanes(_mm256_mul_ps(dw, load8_ps(&d[r][i0..i0 + 8])))
                    });
                    let wg: &[BlockQ8_0; 8] = group(w, i0);
                    let yg: [&[BlockQ8_0; 8]; N] = std::array::from_fn(|r| group(ys[r], i0));
                    prefetch_run(wg);
                    for k in 0..8 {
                        let a = &wg[k];
                        for r in 0..N {
                            let p = dot(a, &yg[r][k]);
                            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(f[r][k]), p, acc[r]);
                        }
                    }
                }
                for i in whole..n {
                    let a = &w[i];
                    for r in 0..N {
                        let f = h(a.d) * d[r][i];
                        let p = dot(a, &ys[r][i]);
                        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(f), p, acc[r]);
                    }
                }
                for r in 0..N {
                    out[r] = hsum(acc[r]);
                }
            }

            /// The [`RowDot`] and [`RowDot4`] entry points: one and four activation rows.
            macro_rules! entry_points {
                ($one:ident, $four:ident, $n:ident) => {
                    /// # Safety
                    /// As the N-row kernel, for one row.
                    #[target_feature(enable = $features)]
                    pub(crate) unsafe fn $one(row: &[u8], x: &QuantizedRow) -> f32 {
                        let mut out = [0f32];
                        // SAFETY: this function's contract is the N-row kernel's, with N = 1.
                        unsafe { $n::<1>(row, std::slice::from_ref(x), &mut out) };
                        out[0]
                    }

                    /// # Safety
                    /// As the N-row kernel, with N = [`GROUP`].
                    #[target_feature(enable = $features)]
                    pub(crate) unsafe fn $four(row: &[u8], xs: &[QuantizedRow], out: &mut [f32]) {
                        // SAFETY: this function's contract is the N-row kernel's, with N = GROUP.
                        unsafe { $n::<GROUP>(row, xs, out) }
                    }
                };
            }
            entry_points!(q4_0, q4_0_x4, q4_0_n);
            entry_points!(q4_1, q4_1_x4, q4_1_n);
            entry_points!(q8_0, q8_0_x4, q8_0_n);
            entry_points!(q5_0, q5_0_x4, q5_0_n);
            entry_points!(q5_1, q5_1_x4, q5_1_n);
            entry_points!(q4_k, q4_k_x4, q4_k_n);
            entry_points!(q2_k, q2_k_x4, q2_k_n);
            entry_points!(q3_k, q3_k_x4, q3_k_n);
            entry_points!(q5_k, q5_k_x4, q5_k_n);
            entry_points!(q6_k, q6_k_x4, q6_k_n);
        }
    };
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn sum_us_avx2(u: __m256i, s: __m256i) -> __m256i {
    // Pairs of u8·i8 products fit i16 (|u| ≤ 128, |s| ≤ 127: at most 32 512).
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
#[inline]
fn sum_us_vnni(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

row_kernels!(avx2, "avx2,fma,f16c", sum_us_avx2);
row_kernels!(vnni, "avx2,fma,f16c,avx512vnni,avx512vl", sum_us_vnni);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::blocks::f16_bytes;

    pub(crate) fn random_row(dtype: DType, blocks: usize, seed: u32) -> Vec<u8> {
        let bytes = dtype.block_bytes();
        let mut row: Vec<u8> = (0..blocks * bytes)
            .map(|i| ((i as u32).wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for (k, blk) in row.chunks_exact_mut(bytes).enumerate() {
            let d = ((k as u32 * 7 + seed) % 97) as f32 / 97.0 * 0.05 + 0.001;
            for (f, &off) in dtype.scale_fields().iter().enumerate() {
                let v = if f == 0 { d } else { -d * 4.0 };
                blk[off..off + 2].copy_from_slice(&f16_bytes(v));
            }
        }
        row
    }

    /// The four-row kernel gives, bit for bit, what four single-row calls give.
    fn check_four_rows(k: RowDot, k4: RowDot4, row: &[u8], x: &[f32], dtype: DType, name: &str) {
        let xs: Vec<QuantizedRow> = (0..GROUP)
            .map(|r| {
                let shifted: Vec<f32> = x
                    .iter()
                    .map(|v| v * (1.0 + r as f32 * 0.37) - r as f32 * 0.1)
                    .collect();
                QuantizedRow::for_weight(dtype, &shifted).unwrap()
            })
            .collect();
        let mut four = [0f32; GROUP];
        // SAFETY: the kernels come from `row_dots` for a detected ISA; `xs` holds 4 rows
        // quantized for `dtype`, matching `row`.
        unsafe { k4(row, &xs, &mut four) };
        for (r, xr) in xs.iter().enumerate() {
            // SAFETY: as above, one row.
            let single = unsafe { k(row, xr) };
            assert_eq!(
                four[r].to_bits(),
                single.to_bits(),
                "{dtype} {name} x4 row {r}"
            );
        }
    }

    /// Every SIMD kernel against the scalar reference, on random data, at odd block counts,
    /// including activations with outliers and all-zero blocks.
    #[test]
    fn simd_dots_match_the_scalar_reference() {
        let cpu = crate::dispatch::isa();
        if cpu.level() < Level::Avx2 {
            return;
        }
        let kernels: Vec<(Isa, &str)> = [(Isa::at_most(Level::Avx2), "avx2"), (cpu, "best")]
            .into_iter()
            .collect();
        for dtype in [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q6_K,
        ] {
            for blocks in [1usize, 2, 3, 7, 15, 17, 31, 33] {
                for seed in 0..4u32 {
                    let row = random_row(dtype, blocks, seed);
                    let mut x: Vec<f32> = (0..blocks * dtype.block_elems())
                        .map(|i| {
                            (((i as u32 * 7919 + seed * 31) % 2001) as f32 / 1000.0 - 1.0)
                                * (1.0 + (i % 13) as f32)
                        })
                        .collect();
                    x[..dtype.block_elems()].iter_mut().for_each(|v| *v = 0.0);
                    let xq = QuantizedRow::for_weight(dtype, &x).unwrap();
                    let want = xq.dot(dtype, &row);
                    // Float rounding scales with the terms' magnitude, which may cancel.
                    let mut w = vec![0f32; x.len()];
                    crate::dot::dequantize_row(dtype, &row, &mut w);
                    let magnitude: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
                    for &(isa, name) in &kernels {
                        let (k, k4) = row_dots(isa, dtype).expect("kernels for a quantized type");
                        // SAFETY: `isa` is at most what the CPU reported; `row` and `xq` match.
                        let got = unsafe { k(&row, &xq) };
                        let tol = 1e-5 * want.abs().max(1.0) + 1e-6 * magnitude;
                        assert!(
                            (got - want).abs() <= tol,
                            "{dtype} {name} blocks={blocks}: {got} vs {want}"
                        );
                        check_four_rows(k, k4, &row, &x, dtype, name);
                    }
                }
            }
        }
    }

    /// Decode's row kernel alone, one thread: weight bytes per second from L2 (the kernel's
    /// own rate) and streamed from memory once (what decode sees).
    #[test]
    #[ignore = "a speed probe: cargo test --release -p bora-kernels row_dot_speed -- --ignored --nocapture"]
    fn row_dot_speed() {
        let isa = crate::dispatch::isa();
        if isa.level() < Level::Avx2 {
            return;
        }
        let cols = 4096;
        for dtype in [DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q6_K] {
            let (k, _) = row_dots(isa, dtype).expect("kernels for a quantized type");
            let blocks = cols / dtype.block_elems();
            let row_bytes = blocks * dtype.block_bytes();
            let x: Vec<f32> = (0..cols)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let xq = QuantizedRow::for_weight(dtype, &x).unwrap();
            let mut rates = Vec::new();
            for (what, total, passes) in
                [("L2", 192usize << 10, 5000), ("memory", 512usize << 20, 2)]
            {
                let rows = total / row_bytes;
                let m: Vec<u8> = (0..rows)
                    .flat_map(|r| random_row(dtype, blocks, r as u32))
                    .collect();
                let mut sink = 0f32;
                let mut best = f64::MAX;
                for _ in 0..3 {
                    let t = std::time::Instant::now();
                    for _ in 0..passes {
                        for r in m.chunks_exact(row_bytes) {
                            // SAFETY: the ISA was detected; `r` and `xq` match `dtype`.
                            sink += unsafe { k(r, &xq) };
                        }
                    }
                    best = best.min(t.elapsed().as_secs_f64());
                }
                std::hint::black_box(sink);
                rates.push(format!(
                    "{what} {:.1} GB/s",
                    (m.len() * passes) as f64 / best / 1e9
                ));
            }
            println!("{dtype}: {}", rates.join(", "));
        }
    }
}
