//! Decode's matrix × vector for Q4_0, Q8_0, Q4_K, Q5_K and Q6_K weights on AVX2, where the
//! CPU has no AVX-512 VNNI/VBMI.
//!
//! The AVX2 row kernel ([`crate::x86`]) works block by block: each 32-weight block pays for
//! its own i32 → f32 conversion and its own scale broadcast and FMA, about nine vector
//! instructions a block besides the loads. On a Zen 3 core that computed 10–13 GB/s of
//! weights from L2, one thread, barely more than a core's share of the memory stream, so
//! decode ran at three quarters of the read bandwidth. Here two blocks share a register:
//!
//! - a group is eight blocks (144 bytes); blocks j and j + 4 (j < 4) are paired, their 16
//!   quant bytes each broadcast-loaded and blended into one register, so one AND gives both
//!   blocks' low nibbles and one shift and AND their high nibbles;
//! - the activation row is laid out once per matrix ([`fill_q4_0`]) to meet the pair as it
//!   lies (block j's first sixteen quants, block j + 4's first sixteen, then their last
//!   sixteen), so the two `vpmaddubsw` of a pair add in i16 (exact: |sum| ≤ 4·15·127) and
//!   one `vpmaddwd` widens both blocks' sums into four i32 lanes each;
//! - each lane's scale is the group's eight `d_w·d_x` products with element j broadcast
//!   within each 128-bit half (one in-lane `vpermilps`), since the pair's halves are blocks j
//!   and j + 4;
//! - Q4_0's −8 offset is `−8·d_x·Σq` per activation block, precomputed, and meets the eight
//!   weight scales in one FMA per group.
//!
//! Unsigned nibbles (0..15) are `vpmaddubsw`'s unsigned operand as they are, so no sign
//! tricks are needed.
//!
//! Q8_0 has no such saving (its signed quants need the sign trick, and two blocks' pair sums
//! would overflow i16), so its kernel is the row kernel's arithmetic with the chain taken out:
//! the row kernel's one accumulator waited on every block's FMA (4 cycles on Zen 3, about as
//! long as the block's other work), where four accumulators here wait one block in four.
//!
//! Q4_K and Q6_K (a Q4_K_M file's types) meet the activation row as the AVX-512 kernels lay
//! it out ([`super::kquants::KAct`]: every 32 quants of a sub-block lie whole and aligned in
//! it). The row kernels spent 16–22 ns a Q4_K block from L3 on this Zen 3, most of it on
//! scales unpacked in scalar code into a stack array and read back as vectors (a 32-byte load
//! of sixteen 2-byte stores cannot be forwarded, so it waits for them to reach the cache).
//! Here a block's scales and mins are unpacked in one 128-bit register (the shuffles the
//! AVX-512 kernel uses), widened once, and each 32 weights' scale is spread across its
//! register by one `vpshufb`; the rest is the row kernels' arithmetic. Q5_K is Q4_K with a
//! fifth bit per weight, moved into place by one shift and one AND per 32 weights.
//!
//! The integer sums are exact; the f32 additions run in another order than the row
//! kernels', so results agree with the scalar reference to float rounding, which the tests
//! bound.

use std::arch::x86_64::*;

use super::kquants::{q4_k_scales, KAct};
use super::{q4_0_tail, q8_0_tail, DecodeRow, Line, Quants};
use crate::act_quant::Q8Blocks;
use crate::blocks::{f16_le, BlockQ8_0};
use crate::x86::avx2::hsum;
use crate::DType;

/// Blocks in a group: Q4_0's four pairs; the eight scales one F16C conversion gives.
pub(super) const GROUP_BLOCKS: usize = 8;
const GROUP_BYTES: usize = GROUP_BLOCKS * 18;
const Q8_0_GROUP_BYTES: usize = GROUP_BLOCKS * 34;

/// How far ahead of the group being read its row is prefetched into L2, and into L1: the
/// distances the row kernels use (`crate::x86`), measured there.
const FAR_BYTES: usize = 4096;
const NEAR_BYTES: usize = 512;

/// Lays out group `g` (blocks 8g..8g + 8) of `x`: per pair j, one line of 64 quants (block
/// j's 0..16, block j + 4's 0..16, block j's 16..32, block j + 4's 16..32), and per group a
/// line of the eight activation scales (lanes 0..8) and their offset terms −8·d_x·Σq
/// (lanes 8..16).
pub(super) fn push_q4_0_group(
    x: &Q8Blocks<BlockQ8_0>,
    g: usize,
    qs: &mut Vec<Quants>,
    scales: &mut Vec<Line<f32>>,
) {
    let first = g * GROUP_BLOCKS;
    let blocks = &x.blocks[first..first + GROUP_BLOCKS];
    for j in 0..GROUP_BLOCKS / 2 {
        let (a, b) = (&blocks[j].qs, &blocks[j + 4].qs);
        let mut line = [0i8; 64];
        line[..16].copy_from_slice(&a[..16]);
        line[16..32].copy_from_slice(&b[..16]);
        line[32..48].copy_from_slice(&a[16..]);
        line[48..].copy_from_slice(&b[16..]);
        qs.push(Quants(line));
    }
    let mut line = [0f32; 16];
    for (k, blk) in blocks.iter().enumerate() {
        let d = x.d[first + k];
        let sum: i32 = blk.qs.iter().map(|&q| q as i32).sum();
        line[k] = d;
        line[8 + k] = -8.0 * d * sum as f32;
    }
    scales.push(Line(line));
}

/// Lays out group `g` of `x` for Q8_0: the blocks' quants in order, two blocks a line, and
/// a line with the eight activation scales in lanes 0..8.
pub(super) fn push_q8_0_group(
    x: &Q8Blocks<BlockQ8_0>,
    g: usize,
    qs: &mut Vec<Quants>,
    scales: &mut Vec<Line<f32>>,
) {
    let first = g * GROUP_BLOCKS;
    for pair in x.blocks[first..first + GROUP_BLOCKS].chunks_exact(2) {
        let mut line = [0i8; 64];
        line[..32].copy_from_slice(&pair[0].qs);
        line[32..].copy_from_slice(&pair[1].qs);
        qs.push(Quants(line));
    }
    let mut line = [0f32; 16];
    line[..GROUP_BLOCKS].copy_from_slice(&x.d[first..first + GROUP_BLOCKS]);
    scales.push(Line(line));
}

/// The eight f16 scales of a group's `SIZE`-byte blocks (each block's first two bytes) as f32
/// lanes. Built in general-purpose registers (word loads, shifts and ORs), which decode
/// leaves idle, rather than by seven `vpinsrw`, which compete with the dot products for the
/// vector ports.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn group_scales<const SIZE: usize>(group: &[u8]) -> __m256 {
    let group = &group[..SIZE * GROUP_BLOCKS];
    let word = |k: usize| u16::from_le_bytes([group[SIZE * k], group[SIZE * k + 1]]) as u64;
    let lo = word(0) | word(1) << 16 | word(2) << 32 | word(3) << 48;
    let hi = word(4) | word(5) << 16 | word(6) << 32 | word(7) << 48;
    _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64))
}

/// Block j's and block j + 4's quant bytes in the low and high halves of one register.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pair_bytes(group: &[u8; GROUP_BYTES], j: usize) -> __m256i {
    let a: &[u8; 16] = group[18 * j + 2..][..16]
        .try_into()
        .expect("16 quant bytes");
    let b: &[u8; 16] = group[18 * (j + 4) + 2..][..16]
        .try_into()
        .expect("16 quant bytes");
    // SAFETY: `a` and `b` are 16 readable bytes each; the loads are unaligned.
    let (a, b) = unsafe {
        (
            _mm256_broadcastsi128_si256(_mm_loadu_si128(a.as_ptr() as *const __m128i)),
            _mm256_broadcastsi128_si256(_mm_loadu_si128(b.as_ptr() as *const __m128i)),
        )
    };
    _mm256_blend_epi32::<0xF0>(a, b)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_quants(q: &Quants, half: usize) -> __m256i {
    let q: &[i8; 32] = q.0[32 * half..][..32].try_into().expect("32 quants");
    // SAFETY: `q` is 32 readable bytes, 32-byte aligned (`Quants` is 64-aligned).
    unsafe { _mm256_load_si256(q.as_ptr() as *const __m256i) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_half(v: &Line<f32>, half: usize) -> __m256 {
    let v: &[f32; 8] = v.0[8 * half..][..8].try_into().expect("8 lanes");
    // SAFETY: `v` is 8 readable f32, 32-byte aligned (`Line` is 64-aligned).
    unsafe { _mm256_load_ps(v.as_ptr()) }
}

/// `v`'s eight lanes, for broadcasting one at a time: a broadcast from memory is a load,
/// where an in-register lane permute would compete with the dot products for the shuffle
/// port.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn lanes(v: __m256) -> [f32; 8] {
    let mut out = [0f32; 8];
    // SAFETY: `out` is 8 writable f32; the store is unaligned.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// Asks for a group's bytes `FAR_BYTES` ahead into L2 and `NEAR_BYTES` ahead into L1.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch_group(group: &[u8]) {
    let p = group.as_ptr();
    for line in (0..group.len()).step_by(64) {
        // A prefetch is a hint: it never faults, whatever the address.
        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(FAR_BYTES + line) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(NEAR_BYTES + line) as *const i8);
    }
}

/// Pair j's four-lane scales: element j of each 128-bit half of `f` (the scales of blocks
/// 0..4 and 4..8) across that half.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn spread(f: __m256, j: usize) -> __m256 {
    match j {
        0 => _mm256_permute_ps::<0x00>(f),
        1 => _mm256_permute_ps::<0x55>(f),
        2 => _mm256_permute_ps::<0xAA>(f),
        _ => _mm256_permute_ps::<0xFF>(f),
    }
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C; `rows` must hold `out.len()` rows of `row_bytes`
/// bytes of Q4_0 blocks, `x` laid out for this kernel with as many blocks as a row.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_0_rows(rows: &[u8], row_bytes: usize, x: &DecodeRow, out: &mut [f32]) {
    debug_assert!(x.avx2 && x.dtype == Some(DType::Q4_0));
    assert!(rows.len() >= out.len() * row_bytes && row_bytes == x.blocks * 18);
    let groups = x.scales.len();
    assert_eq!(x.qs.len(), 4 * groups);
    let nibble = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * row_bytes..(j + 1) * row_bytes];
        // Two accumulators: a pair's FMA (4 cycles) waits only for the pair before last.
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut acc_offset = _mm256_setzero_ps();
        let lines = x.qs.chunks_exact(4).zip(&x.scales);
        for (group, (qs, sc)) in row.chunks_exact(GROUP_BYTES).zip(lines) {
            let group: &[u8; GROUP_BYTES] = group.try_into().expect("a whole group");
            prefetch_group(group);
            let dw = group_scales::<18>(group);
            acc_offset = _mm256_fmadd_ps(dw, load_half(sc, 1), acc_offset);
            let f = _mm256_mul_ps(dw, load_half(sc, 0));
            for (pair, q) in qs.iter().enumerate() {
                let v = pair_bytes(group, pair);
                let lo = _mm256_and_si256(v, nibble);
                let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
                let s16 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(lo, load_quants(q, 0)),
                    _mm256_maddubs_epi16(hi, load_quants(q, 1)),
                );
                let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones));
                acc[pair % 2] = _mm256_fmadd_ps(s, spread(f, pair), acc[pair % 2]);
            }
        }
        let tail = q4_0_tail(&row[GROUP_BYTES * groups..], &x.tail);
        *o = hsum(_mm256_add_ps(acc[0], acc[1])) + hsum(acc_offset) + tail;
    }
}

/// # Safety
/// As [`q4_0_rows`], for Q8_0 blocks and `x` laid out for this kernel.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8_0_rows(rows: &[u8], row_bytes: usize, x: &DecodeRow, out: &mut [f32]) {
    debug_assert!(x.avx2 && x.dtype == Some(DType::Q8_0));
    assert!(rows.len() >= out.len() * row_bytes && row_bytes == x.blocks * 34);
    let groups = x.scales.len();
    assert_eq!(x.qs.len(), 4 * groups);
    let ones = _mm256_set1_epi16(1);
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * row_bytes..(j + 1) * row_bytes];
        let mut acc = [_mm256_setzero_ps(); 4];
        let lines = x.qs.chunks_exact(4).zip(&x.scales);
        for (group, (qs, sc)) in row.chunks_exact(Q8_0_GROUP_BYTES).zip(lines) {
            prefetch_group(group);
            let f = lanes(_mm256_mul_ps(group_scales::<34>(group), load_half(sc, 0)));
            for k in 0..GROUP_BLOCKS {
                let w: &[u8; 32] = group[34 * k + 2..][..32].try_into().expect("32 quants");
                // SAFETY: `w` is 32 readable bytes; the load is unaligned.
                let w = unsafe { _mm256_loadu_si256(w.as_ptr() as *const __m256i) };
                // |w| and x carrying w's sign: the u8·i8 form of a signed product.
                let x = _mm256_sign_epi8(load_quants(&qs[k / 2], k % 2), w);
                let s16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), x);
                let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones));
                acc[k % 4] = _mm256_fmadd_ps(s, _mm256_set1_ps(f[k]), acc[k % 4]);
            }
        }
        let tail = q8_0_tail(&row[Q8_0_GROUP_BYTES * groups..], &x.tail);
        let (a, b) = (_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        *o = hsum(_mm256_add_ps(a, b)) + tail;
    }
}

/// 32 bytes, aligned, for a `vpshufb` mask read from memory.
#[repr(C, align(32))]
struct Mask([u8; 32]);

/// `vpshufb` masks putting word `lo` of each 128-bit half in every word of the low half and
/// word `hi` in every word of the high half.
const fn words(lo: u8, hi: u8) -> Mask {
    let mut m = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        let w = if i < 16 { lo } else { hi };
        m[i] = 2 * w + (i % 2) as u8;
        i += 1;
    }
    Mask(m)
}

/// Q4_K: scale j (word j of both halves of the widened scales) across a register, j < 8.
static Q4_K_SCALE: [Mask; 8] = [
    words(0, 0),
    words(1, 1),
    words(2, 2),
    words(3, 3),
    words(4, 4),
    words(5, 5),
    words(6, 6),
    words(7, 7),
];

/// Q6_K: part p of a half (32 values, two groups of 16) meets scales 2p and 2p + 1 of the
/// half's eight, one per 128-bit half of the register.
static Q6_K_SCALE: [Mask; 4] = [words(0, 1), words(2, 3), words(4, 5), words(6, 7)];

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn spread_word(v: __m256i, mask: &Mask) -> __m256i {
    // SAFETY: `Mask` is 32 readable bytes aligned to 32.
    _mm256_shuffle_epi8(v, unsafe {
        _mm256_load_si256(mask.0.as_ptr() as *const __m256i)
    })
}

/// Bytes `at..at + 32` of `b`, unaligned.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_at(b: &[u8], at: usize) -> __m256i {
    let v: &[u8; 32] = b[at..at + 32].try_into().expect("32 bytes");
    // SAFETY: `v` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(v.as_ptr() as *const __m256i) }
}

/// The 32 activation quants of sub-block `s` (0..8) of a Q4_K-laid-out block: line
/// 2·(s/4) + s%2, half (s/2)%2 (see [`super::kquants::fill`]).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4_k_act(a: &KAct, s: usize) -> __m256i {
    load_quants(&a.qs[2 * (s / 4) + s % 2], (s / 2) % 2)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_sums(a: &KAct) -> __m256i {
    // SAFETY: `sums` is 16 i16 = 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(a.sums.as_ptr() as *const __m256i) }
}

/// The fifth bits of Q5_K sub-block `s` (bit s of each `qh` byte, byte l for element l) as
/// 0x10 in their bytes. A 16-bit shift moves bit s of both bytes of a word to bit 4 at once;
/// what crosses from the neighbouring byte lands outside the mask.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn fifth_bits(qh: __m256i, s: usize) -> __m256i {
    let v = match s {
        0 => _mm256_slli_epi16(qh, 4),
        1 => _mm256_slli_epi16(qh, 3),
        2 => _mm256_slli_epi16(qh, 2),
        3 => _mm256_slli_epi16(qh, 1),
        4 => qh,
        5 => _mm256_srli_epi16(qh, 1),
        6 => _mm256_srli_epi16(qh, 2),
        _ => _mm256_srli_epi16(qh, 3),
    };
    _mm256_and_si256(v, _mm256_set1_epi8(0x10))
}

/// Q4_K (`BYTES` = 144) and Q5_K (176: the 32 `qh` bytes after the scales, then the quants):
/// `w = d·sc·u − dmin·m`, u the low or high nibble, plus 16 × its fifth bit for Q5_K.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4k_like_rows<const BYTES: usize>(
    rows: &[u8],
    row_bytes: usize,
    x: &DecodeRow,
    out: &mut [f32],
) {
    assert!(rows.len() >= out.len() * row_bytes && row_bytes == x.k.len() * BYTES);
    let five = BYTES == 176;
    let quants = if five { 48 } else { 16 };
    let nibble = _mm256_set1_epi8(0x0F);
    // Masks the compiler cannot see through: knowing them, it turned each one-instruction
    // `vpshufb` into a shift and a word broadcast, two.
    let spread_masks: &[Mask; 8] = std::hint::black_box(&Q4_K_SCALE);
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * row_bytes..(j + 1) * row_bytes];
        let mut acc = _mm256_setzero_ps();
        let mut acc_min = _mm256_setzero_ps();
        for (blk, a) in row.chunks_exact(BYTES).zip(&x.k) {
            prefetch_group(blk);
            let head: &[u8; 16] = blk[..16].try_into().expect("d, dmin and the scales");
            // SAFETY: `head` is 16 readable bytes; the load is unaligned.
            let head = unsafe { _mm_loadu_si128(head.as_ptr() as *const __m128i) };
            let sm = q4_k_scales(head);
            let scales = _mm256_permute2x128_si256::<0x00>(sm, sm);
            let mut sum = _mm256_setzero_si256();
            for c in 0..4 {
                // Quant bytes 32c..32c + 32: sub-block 2c in the low nibbles, 2c + 1 in the high.
                let q = load_at(blk, quants + 32 * c);
                let mut lo = _mm256_and_si256(q, nibble);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), nibble);
                if five {
                    let qh = load_at(blk, 16);
                    lo = _mm256_or_si256(lo, fifth_bits(qh, 2 * c));
                    hi = _mm256_or_si256(hi, fifth_bits(qh, 2 * c + 1));
                }
                let pl = _mm256_maddubs_epi16(lo, q4_k_act(a, 2 * c));
                let ph = _mm256_maddubs_epi16(hi, q4_k_act(a, 2 * c + 1));
                let pl = _mm256_madd_epi16(pl, spread_word(scales, &spread_masks[2 * c]));
                let ph = _mm256_madd_epi16(ph, spread_word(scales, &spread_masks[2 * c + 1]));
                sum = _mm256_add_epi32(sum, _mm256_add_epi32(pl, ph));
            }
            // The mins (words 8..16) meet the sums of each 32 quants (`sums` words 8..16;
            // words 0..8 are zero, so the scales there add nothing).
            let mins = _mm256_madd_epi16(sm, load_sums(a));
            // d and dmin are the block's first two f16s.
            let dd = _mm_mul_ps(_mm_cvtph_ps(head), _mm_set1_ps(a.d));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_broadcastss_ps(dd), acc);
            let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
            acc_min = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), dmin, acc_min);
        }
        *o = hsum(acc) - hsum(acc_min);
    }
}

/// # Safety
/// As [`q4_0_rows`], for Q4_K blocks and `x` laid out for Q4_K.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_k_rows(rows: &[u8], row_bytes: usize, x: &DecodeRow, out: &mut [f32]) {
    q4k_like_rows::<144>(rows, row_bytes, x, out)
}

/// # Safety
/// As [`q4_0_rows`], for Q5_K blocks and `x` laid out for Q5_K (as for Q4_K).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q5_k_rows(rows: &[u8], row_bytes: usize, x: &DecodeRow, out: &mut [f32]) {
    q4k_like_rows::<176>(rows, row_bytes, x, out)
}

/// # Safety
/// As [`q4_0_rows`], for Q6_K blocks and `x` laid out for Q6_K.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q6_k_rows(rows: &[u8], row_bytes: usize, x: &DecodeRow, out: &mut [f32]) {
    assert!(rows.len() >= out.len() * row_bytes && row_bytes == x.k.len() * 210);
    let nibble = _mm256_set1_epi8(0x0F);
    let two_bits = _mm256_set1_epi8(0x30);
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * row_bytes..(j + 1) * row_bytes];
        let mut acc = _mm256_setzero_ps();
        for (blk, a) in row.chunks_exact(210).zip(&x.k) {
            prefetch_group(blk);
            let sc: &[u8; 16] = blk[192..208].try_into().expect("16 scales");
            // SAFETY: `sc` is 16 readable bytes; the load is unaligned.
            let scales =
                _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(sc.as_ptr() as *const __m128i) });
            // Values are q − 32: the sum starts from −32 · Σ scale · (sum of its 16 quants)
            // (`sums` holds those sums negated).
            let mut sum = _mm256_slli_epi32(_mm256_madd_epi16(scales, load_sums(a)), 5);
            for half in 0..2 {
                // The half's eight scales in both 128-bit halves.
                let sh = match half {
                    0 => _mm256_permute2x128_si256::<0x00>(scales, scales),
                    _ => _mm256_permute2x128_si256::<0x11>(scales, scales),
                };
                let qh = load_at(blk, 128 + 32 * half);
                for (p, mask) in Q6_K_SCALE.iter().enumerate() {
                    // Values 32p..32p + 32 of the half: the low nibbles of ql bytes 0..32
                    // (p = 0) or 32..64 (p = 1), then their high nibbles (p = 2, 3); their top
                    // two bits are bits 2p, 2p + 1 of the qh bytes, moved to bits 4-5. Each
                    // part is built where it is used, so few registers stay live.
                    let l = load_at(blk, 64 * half + 32 * (p % 2));
                    let low = match p {
                        0 | 1 => l,
                        _ => _mm256_srli_epi16(l, 4),
                    };
                    let top = match p {
                        0 => _mm256_slli_epi16(qh, 4),
                        1 => _mm256_slli_epi16(qh, 2),
                        2 => qh,
                        _ => _mm256_srli_epi16(qh, 2),
                    };
                    let v = _mm256_or_si256(
                        _mm256_and_si256(low, nibble),
                        _mm256_and_si256(top, two_bits),
                    );
                    let pairs =
                        _mm256_maddubs_epi16(v, load_quants(&a.qs[2 * half + p / 2], p % 2));
                    let s = spread_word(sh, mask);
                    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(pairs, s));
                }
            }
            let d = f16_le([blk[208], blk[209]]) * a.d;
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(d), acc);
        }
        *o = hsum(acc);
    }
}

/// Q3_K's sixteen 6-bit scales, minus 32, as i16 words: the low four bits are nibbles of
/// bytes 0..8 (scale g < 8 the low nibble of byte g, g ≥ 8 the high one of byte g − 8), the top
/// two bits are bits 2·(g/4) of byte 8 + g % 4. Built in one 128-bit register: for the top
/// bits, dword k of the four bytes broadcast is shifted right by 2k, which puts the bits of
/// scales 4k..4k + 4 at the bottom of its bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q3_k_scales(blk: &[u8]) -> __m256i {
    let low: &[u8; 8] = blk[96..104].try_into().expect("8 scale bytes");
    let top = u32::from_le_bytes(blk[104..108].try_into().expect("4 scale bytes"));
    // SAFETY: `low` is 8 readable bytes; the load is unaligned.
    let low = unsafe { _mm_loadl_epi64(low.as_ptr() as *const __m128i) };
    let nibble = _mm_set1_epi8(0x0F);
    let low = _mm_unpacklo_epi64(
        _mm_and_si128(low, nibble),
        _mm_and_si128(_mm_srli_epi16(low, 4), nibble),
    );
    let top = _mm_srlv_epi32(_mm_set1_epi32(top as i32), _mm_set_epi32(6, 4, 2, 0));
    let top = _mm_slli_epi16(_mm_and_si128(top, _mm_set1_epi8(0x03)), 4);
    let scales = _mm_sub_epi8(_mm_or_si128(low, top), _mm_set1_epi8(32));
    _mm256_cvtepi8_epi16(scales)
}

/// # Safety
/// As [`q4_0_rows`], for Q3_K blocks and `x` laid out for Q3_K (as for Q6_K: quants in
/// order, negated 16-sums).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q3_k_rows(rows: &[u8], row_bytes: usize, x: &DecodeRow, out: &mut [f32]) {
    assert!(rows.len() >= out.len() * row_bytes && row_bytes == x.k.len() * 110);
    let (two_bits, one_bit) = (_mm256_set1_epi8(0x03), _mm256_set1_epi8(0x04));
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * row_bytes..(j + 1) * row_bytes];
        let mut acc = _mm256_setzero_ps();
        for (blk, a) in row.chunks_exact(110).zip(&x.k) {
            prefetch_group(blk);
            let scales = q3_k_scales(blk);
            // Values are u − 4: the sum starts from −4 · Σ scale · (sum of its 16 quants)
            // (`sums` holds those sums negated).
            let mut sum = _mm256_slli_epi32(_mm256_madd_epi16(scales, load_sums(a)), 2);
            let hmask = load_at(blk, 0);
            for half in 0..2 {
                let sh = match half {
                    0 => _mm256_permute2x128_si256::<0x00>(scales, scales),
                    _ => _mm256_permute2x128_si256::<0x11>(scales, scales),
                };
                let qs = load_at(blk, 32 + 32 * half);
                for (p, mask) in Q6_K_SCALE.iter().enumerate() {
                    // Values 32p..32p + 32 of the half: bits 2p of the qs bytes, and bit
                    // 4·half + p of the hmask bytes moved to bit 2.
                    let low = match p {
                        0 => qs,
                        1 => _mm256_srli_epi16(qs, 2),
                        2 => _mm256_srli_epi16(qs, 4),
                        _ => _mm256_srli_epi16(qs, 6),
                    };
                    let c = 4 * half + p;
                    let high = match c {
                        0 => _mm256_slli_epi16(hmask, 2),
                        1 => _mm256_slli_epi16(hmask, 1),
                        2 => hmask,
                        _ => _mm256_srl_epi16(hmask, _mm_cvtsi32_si128(c as i32 - 2)),
                    };
                    let v = _mm256_or_si256(
                        _mm256_and_si256(low, two_bits),
                        _mm256_and_si256(high, one_bit),
                    );
                    let pairs =
                        _mm256_maddubs_epi16(v, load_quants(&a.qs[2 * half + p / 2], p % 2));
                    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(pairs, spread_word(sh, mask)));
                }
            }
            let d = f16_le([blk[108], blk[109]]) * a.d;
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(d), acc);
        }
        *o = hsum(acc);
    }
}

/// # Safety
/// As [`q4_0_rows`], for Q2_K blocks and `x` laid out for Q2_K (as for Q6_K).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q2_k_rows(rows: &[u8], row_bytes: usize, x: &DecodeRow, out: &mut [f32]) {
    assert!(rows.len() >= out.len() * row_bytes && row_bytes == x.k.len() * 84);
    let two_bits = _mm256_set1_epi8(0x03);
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * row_bytes..(j + 1) * row_bytes];
        let mut acc = _mm256_setzero_ps();
        let mut acc_min = _mm256_setzero_ps();
        for (blk, a) in row.chunks_exact(84).zip(&x.k) {
            prefetch_group(blk);
            let sc: &[u8; 16] = blk[..16].try_into().expect("16 scale bytes");
            // SAFETY: `sc` is 16 readable bytes; the load is unaligned.
            let bytes = _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(sc.as_ptr().cast()) });
            // Each byte: the group's scale in the low nibble, its min in the high one.
            let scales = _mm256_and_si256(bytes, _mm256_set1_epi16(0x0F));
            let mins = _mm256_srli_epi16(bytes, 4);
            let mut sum = _mm256_setzero_si256();
            for half in 0..2 {
                let sh = match half {
                    0 => _mm256_permute2x128_si256::<0x00>(scales, scales),
                    _ => _mm256_permute2x128_si256::<0x11>(scales, scales),
                };
                let qs = load_at(blk, 16 + 32 * half);
                for (p, mask) in Q6_K_SCALE.iter().enumerate() {
                    let v = match p {
                        0 => qs,
                        1 => _mm256_srli_epi16(qs, 2),
                        2 => _mm256_srli_epi16(qs, 4),
                        _ => _mm256_srli_epi16(qs, 6),
                    };
                    let v = _mm256_and_si256(v, two_bits);
                    let pairs =
                        _mm256_maddubs_epi16(v, load_quants(&a.qs[2 * half + p / 2], p % 2));
                    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(pairs, spread_word(sh, mask)));
                }
            }
            // The mins meet the negated 16-sums: −Σ m·(sum of its quants).
            let neg_mins = _mm256_madd_epi16(mins, load_sums(a));
            let d = f16_le([blk[80], blk[81]]) * a.d;
            let dmin = f16_le([blk[82], blk[83]]) * a.d;
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(d), acc);
            acc_min = _mm256_fmadd_ps(_mm256_cvtepi32_ps(neg_mins), _mm256_set1_ps(dmin), acc_min);
        }
        *o = hsum(acc) + hsum(acc_min);
    }
}
