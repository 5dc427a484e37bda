//! Decode's matrix × vector for Q4_K and Q6_K weights on AVX-512 VNNI/VBMI, the two types of
//! a Q4_K_M file.
//!
//! The 256-bit row kernels ([`crate::x86`]) spent 13 ns per Q4_K block and 15 per Q6_K block
//! from L3 (`matvec_speed Q4_K 8192 4096`, one thread), more than a core's share of the memory
//! stream takes to bring a block (about 10 ns for Q4_K's 144 bytes): decode of these types was
//! bound by arithmetic. Most of it went on unpacking the block's scales in scalar code and
//! broadcasting each to a register, and on eight-lane arithmetic. Here a block is worked on
//! 512 bits at a time:
//!
//! - the 6-bit scales and mins (Q4_K) are unpacked by two byte shuffles and a few masks in one
//!   128-bit register, widened to sixteen i16 words once, and each register's scales spread
//!   from there by one `vpermw`;
//! - the weights' 4- or 6-bit values meet the activation quants in `vpmaddubsw` (exact: pair
//!   sums stay inside i16), and `vpdpwssd` multiplies the pair sums by their scales and adds
//!   them into sixteen i32 lanes;
//! - the terms that do not depend on a weight's value (Q4_K's `dmin·m`, Q6_K's −32) meet the
//!   activation's block sums in one `vpmaddwd` of the widened scales;
//! - the activation row is laid out once per matrix ([`KAct`]) in the order the weight
//!   registers meet it.
//!
//! The integer sums are exact; the f32 sums are added in another order than the row kernels',
//! so results agree with the scalar reference to float rounding, which the tests bound.

use std::arch::x86_64::*;

use super::{load_idx, load_quants, Quants};
use crate::blocks::BlockQ8K;
use crate::DType;

/// One Q8_K activation block laid out for a k-quant kernel here: its 256 quants in the order
/// the weight registers meet them, the block sums the weight-independent term needs (Q4_K:
/// words 8..16 hold the sums of each 32 quants, meeting the mins; Q6_K: the negated sums of
/// each 16, meeting the scales), and its scale.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct KAct {
    pub(super) qs: [Quants; 4],
    pub(super) sums: [i16; 16],
    pub(super) d: f32,
}

/// Lays out `x` for `dtype`'s kernel (Q4_K or Q6_K; of the types only the AVX2 kernels take,
/// Q5_K as Q4_K, Q2_K and Q3_K as Q6_K) into `out`.
pub(crate) fn fill(dtype: DType, x: &[BlockQ8K], out: &mut Vec<KAct>) {
    out.clear();
    out.extend(x.iter().map(|b| {
        let mut a = KAct {
            qs: [Quants([0; 64]); 4],
            sums: [0; 16],
            d: b.d,
        };
        if matches!(dtype, DType::Q4_K | DType::Q5_K) {
            // Register r of weight values holds the low (r even) or high (r odd) nibbles of
            // 64 quant bytes: sub-blocks 4·(r/2) + r%2 and 4·(r/2) + r%2 + 2, 32 values each.
            for (r, q) in a.qs.iter_mut().enumerate() {
                let first = 4 * (r / 2) + r % 2;
                for (half, sub) in [first, first + 2].into_iter().enumerate() {
                    q.0[32 * half..32 * half + 32].copy_from_slice(&b.qs[32 * sub..32 * sub + 32]);
                }
            }
            for j in 0..8 {
                a.sums[8 + j] = b.bsums[2 * j] + b.bsums[2 * j + 1];
            }
        } else {
            for (r, q) in a.qs.iter_mut().enumerate() {
                q.0.copy_from_slice(&b.qs[64 * r..64 * r + 64]);
            }
            for (s, &b) in a.sums.iter_mut().zip(&b.bsums) {
                *s = -b;
            }
        }
        a
    }));
}

/// `vpermw` indices putting word `a` of a register in the first `lanes` words of the result
/// and word `a + step` in the next `lanes`, and so on for 32 words.
const fn spread(first: u16, step: u16, lanes: usize) -> [u16; 32] {
    let mut idx = [0u16; 32];
    let mut i = 0;
    while i < 32 {
        idx[i] = first + step * (i / lanes) as u16;
        i += 1;
    }
    idx
}

/// Q4_K: the scales of the registers of low and high nibbles of quant bytes 0..64, then of
/// 64..128 (sub-blocks 0 and 2, 1 and 3, 4 and 6, 5 and 7; 16 words each).
const Q4_K_SCALES: [[u16; 32]; 4] = [
    spread(0, 2, 16),
    spread(1, 2, 16),
    spread(4, 2, 16),
    spread(5, 2, 16),
];

/// Q6_K: a register holds 64 consecutive values, four groups of 16 with a scale each.
const Q6_K_SCALES: [[u16; 32]; 4] = [
    spread(0, 1, 8),
    spread(4, 1, 8),
    spread(8, 1, 8),
    spread(12, 1, 8),
];

/// Asks for the `LINES` cache lines from `FAR_BYTES` past `p` into L2, and from `NEAR_BYTES`
/// past it into L1. A prefetch is a hint: it never faults, whatever the address.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
#[inline]
fn prefetch_lines<const LINES: usize>(p: *const u8) {
    for l in 0..LINES {
        let q = p.wrapping_add(64 * l);
        _mm_prefetch::<_MM_HINT_T1>(q.wrapping_add(super::FAR_BYTES) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(super::NEAR_BYTES) as *const i8);
    }
}

/// A Q4_K block's 6-bit scales and mins from its first 16 bytes (d, dmin, then the 12 packed
/// bytes s0..s11), as sixteen u16 words: scales 0..8, then mins 0..8. Scale j < 4 is
/// s[j] & 63 and min j is s[j+4] & 63; for j ≥ 4 the low four bits come from s[j+4] (low
/// nibble for the scale, high for the min) and the top two from s[j-4] (scale) or s[j] (min).
/// AVX2 instructions only: the AVX2 kernel ([`super::avx2`]) shares it.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn q4_k_scales(head: __m128i) -> __m256i {
    // Dwords [s0..3, s8..11, s4..7, s8..11] give the low bits, [s0..3, s0..3, s4..7, s4..7]
    // the top two.
    let low = _mm_shuffle_epi8(
        head,
        _mm_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15),
    );
    let top = _mm_shuffle_epi8(
        head,
        _mm_setr_epi8(4, 5, 6, 7, 4, 5, 6, 7, 8, 9, 10, 11, 8, 9, 10, 11),
    );
    let low = _mm_and_si128(
        _mm_srlv_epi32(low, _mm_setr_epi32(0, 0, 0, 4)),
        _mm_setr_epi32(0x3F3F3F3F, 0x0F0F0F0F, 0x3F3F3F3F, 0x0F0F0F0F),
    );
    let top = _mm_and_si128(
        _mm_srli_epi32(top, 2),
        _mm_setr_epi32(0, 0x30303030, 0, 0x30303030),
    );
    _mm256_cvtepu8_epi16(_mm_or_si128(low, top))
}

/// # Safety
/// The CPU must have AVX-512 F/BW, VNNI and VBMI; `rows` must hold `out.len()` rows of
/// `row_bytes` bytes of Q4_K blocks, `x` laid out for Q4_K with as many blocks as a row.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
pub(super) unsafe fn q4_k_rows(
    rows: &[u8],
    row_bytes: usize,
    x: &super::DecodeRow,
    out: &mut [f32],
) {
    debug_assert_eq!(x.dtype, Some(DType::Q4_K));
    assert!(rows.len() >= out.len() * row_bytes && row_bytes == x.k.len() * 144);
    let spread = Q4_K_SCALES.map(|s| load_idx(&s));
    let nibble = _mm512_set1_epi8(0x0F);
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * row_bytes..(j + 1) * row_bytes];
        let mut acc = _mm512_setzero_ps();
        let mut acc_min = _mm256_setzero_ps();
        for (blk, a) in row.chunks_exact(144).zip(&x.k) {
            let p = blk.as_ptr();
            prefetch_lines::<3>(p);
            // SAFETY: bytes 0..16, 16..80 and 80..144 of the block's 144; unaligned loads.
            let (head, q0, q1) = unsafe {
                (
                    _mm_loadu_si128(p as *const __m128i),
                    _mm512_loadu_si512(p.add(16) as *const __m512i),
                    _mm512_loadu_si512(p.add(80) as *const __m512i),
                )
            };
            let sm = q4_k_scales(head);
            let smz = _mm512_castsi256_si512(sm);
            let values = [
                _mm512_and_si512(q0, nibble),
                _mm512_and_si512(_mm512_srli_epi16(q0, 4), nibble),
                _mm512_and_si512(q1, nibble),
                _mm512_and_si512(_mm512_srli_epi16(q1, 4), nibble),
            ];
            let mut sum = _mm512_setzero_si512();
            for r in 0..4 {
                let pairs = _mm512_maddubs_epi16(values[r], load_quants(&a.qs[r]));
                sum = _mm512_dpwssd_epi32(sum, pairs, _mm512_permutexvar_epi16(spread[r], smz));
            }
            // SAFETY: `sums` is 16 i16 = 32 readable bytes.
            let sums = unsafe { _mm256_loadu_si256(a.sums.as_ptr() as *const __m256i) };
            let mins = _mm256_madd_epi16(sm, sums);
            // d and dmin are the block's first two f16s.
            let dd = _mm_mul_ps(_mm_cvtph_ps(head), _mm_set1_ps(a.d));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_broadcastss_ps(dd), acc);
            let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
            acc_min = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), dmin, acc_min);
        }
        let min = _mm256_add_ps(acc_min, _mm256_permute2f128_ps(acc_min, acc_min, 1));
        let min = _mm256_castps256_ps128(min);
        let min = _mm_add_ps(min, _mm_movehl_ps(min, min));
        let min = _mm_add_ss(min, _mm_movehdup_ps(min));
        *o = _mm512_reduce_add_ps(acc) - _mm_cvtss_f32(min);
    }
}

/// # Safety
/// As [`q4_k_rows`], for Q6_K blocks and `x` laid out for Q6_K.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
pub(super) unsafe fn q6_k_rows(
    rows: &[u8],
    row_bytes: usize,
    x: &super::DecodeRow,
    out: &mut [f32],
) {
    debug_assert_eq!(x.dtype, Some(DType::Q6_K));
    assert!(rows.len() >= out.len() * row_bytes && row_bytes == x.k.len() * 210);
    let spread = Q6_K_SCALES.map(|s| load_idx(&s));
    let nibble = _mm512_set1_epi8(0x0F);
    let two_bits = _mm512_set1_epi8(0x30);
    // The high bits of values 0..32 and 32..64 of a half sit in bits 0-1 and 2-3 of its qh
    // bytes, of values 64..96 and 96..128 in bits 4-5 and 6-7: shifted to bits 4-5.
    let up = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    let down = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * row_bytes..(j + 1) * row_bytes];
        let mut acc = _mm512_setzero_ps();
        for (blk, a) in row.chunks_exact(210).zip(&x.k) {
            let p = blk.as_ptr();
            prefetch_lines::<4>(p);
            // SAFETY: bytes 192..208 (the 16 i8 scales) of the block's 210, unaligned.
            let scales =
                _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(p.add(192) as *const __m128i) });
            let scales_z = _mm512_castsi256_si512(scales);
            // SAFETY: `sums` is 16 i16 = 32 readable bytes.
            let sums = unsafe { _mm256_loadu_si256(a.sums.as_ptr() as *const __m256i) };
            // Values are q − 32: the sum starts from −32 · Σ scale · (sum of its 16 quants).
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(scales, sums), 5);
            let mut sum = _mm512_zextsi256_si512(offset);
            for half in 0..2 {
                // SAFETY: bytes 64h..64h+64 (ql) and 128+32h..160+32h (qh) of the block's 210.
                let (ql, qh) = unsafe {
                    (
                        _mm512_loadu_si512(p.add(64 * half) as *const __m512i),
                        _mm512_broadcast_i64x4(_mm256_loadu_si256(
                            p.add(128 + 32 * half) as *const __m256i
                        )),
                    )
                };
                let high_a = _mm512_and_si512(_mm512_sllv_epi16(qh, up), two_bits);
                let high_b = _mm512_and_si512(_mm512_srlv_epi16(qh, down), two_bits);
                let values = [
                    _mm512_or_si512(_mm512_and_si512(ql, nibble), high_a),
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), nibble), high_b),
                ];
                for (part, v) in values.into_iter().enumerate() {
                    let r = 2 * half + part;
                    let pairs = _mm512_maddubs_epi16(v, load_quants(&a.qs[r]));
                    sum = _mm512_dpwssd_epi32(
                        sum,
                        pairs,
                        _mm512_permutexvar_epi16(spread[r], scales_z),
                    );
                }
            }
            // SAFETY: bytes 208..210 of the block's 210.
            let d = unsafe { std::ptr::read_unaligned(p.add(208) as *const u16) };
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(d as i32))) * a.d;
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(d), acc);
        }
        *o = _mm512_reduce_add_ps(acc);
    }
}
