//! Register-tiled weight × activation kernels for prefill and batched decode on CPUs with
//! AVX2 but no AVX-512 VNNI (AMD Zen 1–3, Intel before Ice Lake, and Intel's client cores).
//!
//! The layout is [`crate::x86_tile`]'s at half the width: the eight i32 lanes of a 256-bit
//! vector are eight weight rows, a block of each row unpacked and transposed (dword k of row r
//! in lane r of vector k), so a token meets all eight rows with one broadcast activation dword
//! per four columns, and pays one conversion and one FMA per block for all eight rows where
//! the row kernels pay one per row. A task unpacks its tiles once, into a per-thread buffer,
//! and every panel of tokens then reads them ([`UnpackFn`], [`TileFn`]).
//!
//! Without `vpdpbusd`, a step is `vpmaddubsw` (u8 × i8 → i16 pair sums) and the pair sums are
//! added in i16 for as many steps as cannot overflow before one `vpmaddwd` widens them to
//! i32: all eight steps of a block for 4-bit weights, four for 5-bit, two for 6-bit
//! ([`flush_steps`]). So the multiply port does a step and a fraction where VNNI does one,
//! and the adds go to the other ports.
//!
//! Weights are unpacked to their unsigned values u; an offset (Q4_0's −8, Q5_0's −16, Q6_K's
//! −32) is the panel's starting sum −offset · Σ q, exact in i32, as in the AVX-512 tiles.
//! Q8_0's signed bytes cannot take the u8 side of `vpmaddubsw` (+128 would overflow its i16
//! pair sums), so its tiles keep |w| and w, and each step gives the activations w's sign
//! (`vpsignb`, as llama.cpp's kernels do) and widens at once: two multiplies a step, as the
//! row kernels, but one conversion and FMA per block for eight rows.
//!
//! Results equal the scalar reference up to the order of f32 additions (the integer sums are
//! exact); tests check them against it.

use std::arch::x86_64::*;

use crate::blocks::QK_K;
use crate::dispatch::{Isa, Level};
use crate::x86_tile::Panel;
use crate::DType;

/// Weight rows per tile: the eight i32 lanes of a 256-bit vector.
pub(crate) const ROWS: usize = 8;
/// Tokens per panel: four i32 and four f32 accumulators (and the K-quants' per-block sums)
/// stay in the sixteen vector registers.
pub(crate) const TOKENS: usize = 4;

/// Unpacks a tile ([`ROWS`] rows of `row_bytes` bytes) into the buffer, cleared first.
pub(crate) type UnpackFn = unsafe fn(&[u8], usize, &mut Vec<__m256i>);
/// `out[t][r] = row r · token t` for an unpacked tile and a panel; it also asks for the bytes
/// of its third argument to be brought into L2, a share per block, so weights the next unpack
/// reads arrive while this one computes.
pub(crate) type TileFn = unsafe fn(&[__m256i], &Panel, &[u8], &mut [[f32; ROWS]; TOKENS]);

/// The unpack and tile kernels for `dtype`, where the CPU has AVX2 but no AVX-512 VNNI tile
/// for it (those are faster where they exist; they lack Q2_K and Q3_K, which on such CPUs
/// took the row kernels, 2–2.5× slower here).
pub(crate) fn kernels(isa: Isa, dtype: DType) -> Option<(UnpackFn, TileFn)> {
    let vnni_tiles = crate::x86_tile::tile_kernel::<{ crate::x86_tile::TOKENS }>(isa, dtype);
    if vnni_tiles.is_some() || !crate::dispatch::tiles_enabled() {
        return None;
    }
    avx2_kernels(isa, dtype)
}

/// The kernels for `dtype` wherever the CPU has AVX2 (tests run them on VNNI CPUs too).
fn avx2_kernels(isa: Isa, dtype: DType) -> Option<(UnpackFn, TileFn)> {
    if isa.level() < Level::Avx2 {
        return None;
    }
    Some(match dtype {
        DType::Q4_0 => (unpack_legacy::<Q4_0>, legacy::<Q4_0>),
        DType::Q4_1 => (unpack_legacy::<Q4_1>, legacy::<Q4_1>),
        DType::Q5_0 => (unpack_legacy::<Q5_0>, legacy::<Q5_0>),
        DType::Q5_1 => (unpack_legacy::<Q5_1>, legacy::<Q5_1>),
        DType::Q8_0 => (unpack_q8_0, q8_0),
        DType::Q4_K => (unpack_k4::<144, 16, 0>, k4::<{ flush_steps(15) }>),
        DType::Q5_K => (unpack_k4::<176, 48, 16>, k4::<{ flush_steps(31) }>),
        DType::Q6_K => (unpack_q6k, k16::<{ flush_steps(63) }>),
        DType::Q3_K => (unpack_q3k, k16::<{ flush_steps(7) }>),
        DType::Q2_K => (unpack_q2k, q2k),
        _ => return None,
    })
}

/// Bytes of one unpacked tile of `dtype` rows of `cols` values: to size tasks whose tiles
/// stay in L2.
pub(crate) fn tile_bytes(dtype: DType, cols: usize) -> usize {
    let per_block = match dtype {
        DType::Q4_1 | DType::Q5_1 => LEGACY_PER_BLOCK + 1,
        DType::Q4_K | DType::Q5_K => K4_PER_BLOCK,
        DType::Q6_K | DType::Q3_K => K16_PER_BLOCK,
        DType::Q2_K => Q2K_PER_BLOCK,
        DType::Q8_0 => Q8_0_PER_BLOCK,
        _ => LEGACY_PER_BLOCK,
    };
    cols / dtype.block_elems() * per_block * 32
}

/// Steps of `vpmaddubsw` whose i16 pair sums can be added before one overflows: a pair sum
/// is at most 2 · max_u · 128.
const fn flush_steps(max_u: i32) -> usize {
    (i16::MAX as i32 / (2 * max_u * 128)) as usize
}

/// For each token t, `init[t] + Σ_k Σ (w[k] · dword k of token t's quants)` over the steps
/// `w` holds, token t's quants at `q[stride · t..]`, the i16 pair sums widened every `FLUSH`
/// steps. Always inlined, so the accumulators stay in registers.
///
/// # Safety
/// The CPU must have AVX2. (`q` must hold `stride · (TOKENS − 1) + 4 · w.len()` bytes: this
/// is asserted.)
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn sums<const FLUSH: usize>(
    init: [__m256i; TOKENS],
    w: &[__m256i],
    q: &[i8],
    stride: usize,
) -> [__m256i; TOKENS] {
    // Checked, not assumed: one compare per 32 products keeps every read below inside `q`.
    assert!(q.len() >= stride * (TOKENS - 1) + 4 * w.len());
    let ones = _mm256_set1_epi16(1);
    let mut acc = init;
    for (c, ws) in w.chunks(FLUSH).enumerate() {
        let mut pairs = [_mm256_setzero_si256(); TOKENS];
        for (k, &wk) in ws.iter().enumerate() {
            let o = 4 * (c * FLUSH + k);
            for (t, pair) in pairs.iter_mut().enumerate() {
                // SAFETY: `stride · t + o + 4 ≤ q.len()` (asserted above); the read is
                // unaligned.
                let b = unsafe { (q.as_ptr().add(stride * t + o) as *const i32).read_unaligned() };
                let p = _mm256_maddubs_epi16(wk, _mm256_set1_epi32(b));
                *pair = if k == 0 {
                    p
                } else {
                    _mm256_add_epi16(*pair, p)
                };
            }
        }
        for (a, p) in acc.iter_mut().zip(pairs) {
            *a = _mm256_add_epi32(*a, _mm256_madd_epi16(p, ones));
        }
    }
    acc
}

/// Vector d holds dword d of every row (row r in lane r), from vector r holding row r.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn transpose(r: [__m256i; 8]) -> [__m256i; 8] {
    // u[k] (k < 4): dwords k and k + 4 of rows 0..4; v[k]: the same of rows 4..8.
    let u = transpose_lanes([r[0], r[1], r[2], r[3]]);
    let v = transpose_lanes([r[4], r[5], r[6], r[7]]);
    [
        _mm256_permute2x128_si256::<0x20>(u[0], v[0]),
        _mm256_permute2x128_si256::<0x20>(u[1], v[1]),
        _mm256_permute2x128_si256::<0x20>(u[2], v[2]),
        _mm256_permute2x128_si256::<0x20>(u[3], v[3]),
        _mm256_permute2x128_si256::<0x31>(u[0], v[0]),
        _mm256_permute2x128_si256::<0x31>(u[1], v[1]),
        _mm256_permute2x128_si256::<0x31>(u[2], v[2]),
        _mm256_permute2x128_si256::<0x31>(u[3], v[3]),
    ]
}

/// Dwords 0..4 of four vectors, per 128-bit lane: vector j of the result holds dword j of
/// vector r in dword r of each lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn transpose_lanes(a: [__m256i; 4]) -> [__m256i; 4] {
    let t0 = _mm256_unpacklo_epi32(a[0], a[1]);
    let t1 = _mm256_unpackhi_epi32(a[0], a[1]);
    let t2 = _mm256_unpacklo_epi32(a[2], a[3]);
    let t3 = _mm256_unpackhi_epi32(a[2], a[3]);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}

/// The 32 4-bit values at `at` (16 bytes) of each of the tile's rows, transposed as
/// [`transpose`] leaves them. Rows r and r + 4 share one load (low and high lane), so the
/// low nibbles (elements 0..16) and the high ones (16..32) transpose within lanes: 20
/// shuffles a block where splitting each row and [`transpose`] took 32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn nibbles_transposed(rows: &[&[u8]; ROWS], at: usize) -> [__m256i; 8] {
    let nib = _mm256_set1_epi8(0x0F);
    let pairs: [__m256i; 4] = std::array::from_fn(|r| {
        let lo: &[u8; 16] = rows[r][at..at + 16].try_into().expect("16 bytes");
        let hi: &[u8; 16] = rows[r + 4][at..at + 16].try_into().expect("16 bytes");
        // SAFETY: `lo` and `hi` are 16 readable bytes each; the loads are unaligned.
        unsafe { _mm256_loadu2_m128i(hi.as_ptr().cast(), lo.as_ptr().cast()) }
    });
    let low = transpose_lanes(pairs.map(|v| _mm256_and_si256(v, nib)));
    let high = transpose_lanes(pairs.map(|v| _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib)));
    [
        low[0], low[1], low[2], low[3], high[0], high[1], high[2], high[3],
    ]
}

/// 32 bytes at `at` of a row, unaligned.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load32(row: &[u8], at: usize) -> __m256i {
    let b: &[u8; 32] = row[at..at + 32].try_into().expect("32 bytes");
    // SAFETY: `b` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(b.as_ptr() as *const __m256i) }
}

/// 16 bytes at `at` of a row, as the low nibbles (low lane) and high nibbles (high lane).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn nibbles16(row: &[u8], at: usize) -> __m256i {
    let b: &[u8; 16] = row[at..at + 16].try_into().expect("16 bytes");
    // SAFETY: `b` is 16 readable bytes; the load is unaligned.
    let lo = unsafe { _mm_loadu_si128(b.as_ptr() as *const __m128i) };
    let hi = _mm_srli_epi16(lo, 4);
    _mm256_and_si256(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(0x0F))
}

/// The f16 at byte `at` of each row's block, as f32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16_lanes(rows: &[&[u8]; ROWS], at: usize) -> __m256 {
    let h: [u16; ROWS] =
        std::array::from_fn(|r| u16::from_le_bytes([rows[r][at], rows[r][at + 1]]));
    // SAFETY: `h` is 16 readable bytes; the load is unaligned.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr() as *const __m128i) })
}

/// The tile's rows, each `row_bytes` long, after checking the tile holds exactly ROWS of them
/// of whole `block`-byte blocks. Returns the rows and the blocks per row.
fn tile_rows(w: &[u8], row_bytes: usize, block: usize) -> ([&[u8]; ROWS], usize) {
    assert_eq!(w.len(), ROWS * row_bytes, "a tile is {ROWS} whole rows");
    assert_eq!(row_bytes % block, 0, "rows hold whole blocks");
    let rows = std::array::from_fn(|r| &w[r * row_bytes..(r + 1) * row_bytes]);
    (rows, row_bytes / block)
}

/// Checks an unpacked tile against its panel: whole blocks of `per` vectors, as many as the
/// panel has, and a panel of [`TOKENS`]. Returns the blocks.
fn unpacked_blocks(u: &[__m256i], per: usize, p: &Panel) -> usize {
    let n = u.len() / per;
    assert_eq!(u.len(), n * per, "whole unpacked blocks");
    assert_eq!(p.tokens(), TOKENS, "a panel of {TOKENS} tokens");
    assert_eq!(
        p.blocks(),
        n,
        "activations and weights have the same length"
    );
    n
}

/// Walks `ahead` (the next tile's weights) into L2 while a tile computes, a share of cache
/// lines per block (see [`crate::x86_tile`]). A pointer and a count: the division and the
/// bounds of each share cost more than the hints themselves (a profile of the Q4_0 tile
/// found three dozen scalar instructions a block in them).
struct Ahead {
    next: *const i8,
    end: *const i8,
    per_block: usize,
}

impl Ahead {
    fn new(ahead: &[u8], blocks: usize) -> Self {
        let range = ahead.as_ptr_range();
        Ahead {
            next: range.start.cast(),
            end: range.end.cast(),
            per_block: ahead.len().div_ceil(64).div_ceil(blocks.max(1)),
        }
    }

    /// One block's share. Its last hints may point past `ahead`: a hint never faults.
    #[inline(always)]
    fn step(&mut self) {
        if self.next < self.end {
            for line in 0..self.per_block {
                // SAFETY: SSE is part of x86-64; a prefetch reads nothing and cannot fault.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(self.next.wrapping_add(64 * line)) };
            }
            self.next = self.next.wrapping_add(64 * self.per_block);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn store(out: &mut [[f32; ROWS]; TOKENS], acc: [__m256; TOKENS]) {
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 8 writable f32; the store is unaligned.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), a) };
    }
}

/// A 32-weight type's block layout.
pub(crate) trait Legacy {
    /// Block size in bytes.
    const SIZE: usize;
    /// Byte offset of the 16 bytes of nibbles.
    const QS: usize;
    /// Byte offset of Q5's 32 fifth bits.
    const QH: Option<usize>;
    /// Whether the block carries a min (f16 at byte 2), met by the activations' `s`.
    const MIN: bool;
}

macro_rules! legacy_layout {
    ($name:ident, $size:expr, $qs:expr, $qh:expr, $min:expr) => {
        pub(crate) struct $name;
        impl Legacy for $name {
            const SIZE: usize = $size;
            const QS: usize = $qs;
            const QH: Option<usize> = $qh;
            const MIN: bool = $min;
        }
    };
}

legacy_layout!(Q4_0, 18, 2, None, false);
legacy_layout!(Q4_1, 20, 4, None, true);
legacy_layout!(Q5_0, 22, 6, Some(2), false);
legacy_layout!(Q5_1, 24, 8, Some(4), true);

/// Vectors per unpacked 32-weight block: eight of weights and the scales; the min types add
/// their mins.
const LEGACY_PER_BLOCK: usize = 9;

const fn legacy_per_block<L: Legacy>() -> usize {
    LEGACY_PER_BLOCK + L::MIN as usize
}

/// Bit e of a Q5 block's `qh` (at byte `at` of the row) as 0x10 in byte e, else 0.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn fifth_bits(row: &[u8], at: usize) -> __m256i {
    let qh = u32::from_le_bytes(row[at..at + 4].try_into().expect("4 bytes"));
    let spread = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), spread);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Every block of a tile of a 32-weight type: its eight transposed weight vectors (unsigned
/// values u, element order), the scales as f32 and, for the min types, the mins.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_legacy<L: Legacy>(w: &[u8], row_bytes: usize, dst: &mut Vec<__m256i>) {
    let (rows, n) = tile_rows(w, row_bytes, L::SIZE);
    dst.clear();
    dst.reserve(n * legacy_per_block::<L>());
    for i in 0..n {
        let at = i * L::SIZE;
        let values = match L::QH {
            Some(qh) => transpose(std::array::from_fn(|r| {
                _mm256_or_si256(nibbles16(rows[r], at + L::QS), fifth_bits(rows[r], at + qh))
            })),
            None => nibbles_transposed(&rows, at + L::QS),
        };
        dst.extend_from_slice(&values);
        dst.push(_mm256_castps_si256(f16_lanes(&rows, at)));
        if L::MIN {
            dst.push(_mm256_castps_si256(f16_lanes(&rows, at + 2)));
        }
    }
}

/// A 32-weight type's tile: per block, `w = d·(u − o)` (the offset in the panel's starting
/// sums) or `w = d·u + m`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `u` unpacked by [`unpack_legacy`] for `L`, `p` a
/// panel filled for `L`'s type from rows as long.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy<L: Legacy>(
    u: &[__m256i],
    p: &Panel,
    ahead: &[u8],
    out: &mut [[f32; ROWS]; TOKENS],
) {
    let per = legacy_per_block::<L>();
    let n = unpacked_blocks(u, per, p);
    let mut ahead = Ahead::new(ahead, n);
    let mut acc = [_mm256_setzero_ps(); TOKENS];
    let mut acc_m = [_mm256_setzero_ps(); TOKENS];
    let blocks = u.chunks_exact(per).zip(p.qs.chunks_exact(32 * TOKENS));
    let per_token = p.d.chunks_exact(TOKENS).zip(p.ints.chunks_exact(TOKENS));
    for (i, ((blk, q), (d, init))) in blocks.zip(per_token).enumerate() {
        ahead.step();
        let d: &[f32; TOKENS] = d.try_into().expect("a scale a token");
        let init: &[i32; TOKENS] = init.try_into().expect("a sum a token");
        let init = init.map(|v| _mm256_set1_epi32(v));
        // SAFETY: `q` holds the panel's 32 quants of each token for this block.
        let s = unsafe {
            if L::QH.is_some() {
                sums::<{ flush_steps(31) }>(init, &blk[..8], q, 32)
            } else {
                sums::<{ flush_steps(15) }>(init, &blk[..8], q, 32)
            }
        };
        let dw = _mm256_castsi256_ps(blk[8]);
        for t in 0..TOKENS {
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(d[t]));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[t]), scale, acc[t]);
        }
        if L::MIN {
            let mw = _mm256_castsi256_ps(blk[9]);
            let sx = &p.s()[i * TOKENS..][..TOKENS];
            for t in 0..TOKENS {
                acc_m[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(sx[t]), acc_m[t]);
            }
        }
    }
    if L::MIN {
        for t in 0..TOKENS {
            acc[t] = _mm256_add_ps(acc[t], acc_m[t]);
        }
    }
    store(out, acc);
}

/// Vectors per unpacked Q8_0 block: the eight weight vectors, their magnitudes, the scales.
const Q8_0_PER_BLOCK: usize = 8 + 8 + 1;

/// Q8_0 tiles: per block, the 32 signed weights transposed, then their magnitudes, then the
/// scales as f32.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q8_0(w: &[u8], row_bytes: usize, dst: &mut Vec<__m256i>) {
    const SIZE: usize = 34;
    let (rows, n) = tile_rows(w, row_bytes, SIZE);
    dst.clear();
    dst.reserve(n * Q8_0_PER_BLOCK);
    for i in 0..n {
        let at = i * SIZE;
        let wt = transpose(std::array::from_fn(|r| load32(rows[r], at + 2)));
        dst.extend_from_slice(&wt);
        dst.extend(wt.map(|v| _mm256_sign_epi8(v, v)));
        dst.push(_mm256_castps_si256(f16_lanes(&rows, at)));
    }
}

/// Q8_0: per block `w = d·q`, q signed; the panel's starting sums (for the VNNI tiles'
/// +128) are not used.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `u` unpacked by [`unpack_q8_0`], `p` a panel filled
/// for Q8_0 from rows as long.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0(u: &[__m256i], p: &Panel, ahead: &[u8], out: &mut [[f32; ROWS]; TOKENS]) {
    let n = unpacked_blocks(u, Q8_0_PER_BLOCK, p);
    let mut ahead = Ahead::new(ahead, n);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); TOKENS];
    let blocks = u
        .chunks_exact(Q8_0_PER_BLOCK)
        .zip(p.qs.chunks_exact(32 * TOKENS));
    for ((blk, q), d) in blocks.zip(p.d.chunks_exact(TOKENS)) {
        ahead.step();
        let q: &[i8; 32 * TOKENS] = q.try_into().expect("32 quants a token");
        let d: &[f32; TOKENS] = d.try_into().expect("a scale a token");
        let mut s = [_mm256_setzero_si256(); TOKENS];
        for k in 0..8 {
            let (wk, ak) = (blk[k], blk[8 + k]);
            for (t, st) in s.iter_mut().enumerate() {
                let b = i32::from_le_bytes(std::array::from_fn(|j| q[32 * t + 4 * k + j] as u8));
                let y = _mm256_sign_epi8(_mm256_set1_epi32(b), wk);
                let pairs = _mm256_maddubs_epi16(ak, y);
                *st = _mm256_add_epi32(*st, _mm256_madd_epi16(pairs, ones));
            }
        }
        let dw = _mm256_castsi256_ps(blk[16]);
        for t in 0..TOKENS {
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(d[t]));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[t]), scale, acc[t]);
        }
    }
    store(out, acc);
}

/// Vectors per unpacked Q4_K/Q5_K block: eight per 32-group, its eight `d·sc` (f32), the
/// four min pairs (i16, group 2p low, 2p + 1 high), `dmin`.
const K4_PER_BLOCK: usize = 8 * 8 + 8 + 4 + 1;

/// Q4_K and Q5_K tiles: blocks of `SIZE` bytes with d/dmin at 0, the 6-bit scales at 4 and
/// quants at `QS`; for Q5_K (`FIFTH > 0`) bit j of the 32 bytes at `FIFTH` is 32-group j's
/// fifth bit.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_k4<const SIZE: usize, const QS: usize, const FIFTH: usize>(
    w: &[u8],
    row_bytes: usize,
    dst: &mut Vec<__m256i>,
) {
    let (rows, n) = tile_rows(w, row_bytes, SIZE);
    let nib = _mm256_set1_epi8(0x0F);
    dst.clear();
    dst.reserve(n * K4_PER_BLOCK);
    let low16 = _mm256_set1_epi32(0xFFFF);
    for i in 0..n {
        let at = i * SIZE;
        let scales: [crate::kquants::Scales16; ROWS] = std::array::from_fn(|r| {
            let s: &[u8; 12] = rows[r][at + 4..at + 16].try_into().expect("12 bytes");
            crate::kquants::unpack_scales_q4_k(s)
        });
        let fifth: [__m256i; ROWS] = std::array::from_fn(|r| {
            if FIFTH > 0 {
                load32(rows[r], at + FIFTH)
            } else {
                _mm256_setzero_si256()
            }
        });
        // Each 32 bytes of quants hold two groups (low and high nibbles): loaded once.
        for pair in 0..4 {
            let raw: [__m256i; ROWS] =
                std::array::from_fn(|r| load32(rows[r], at + QS + 32 * pair));
            for half in 0..2 {
                let j = 2 * pair + half;
                let shift = _mm_cvtsi32_si128(4 * half as i32);
                let values: [__m256i; ROWS] = std::array::from_fn(|r| {
                    let u = _mm256_and_si256(_mm256_srl_epi16(raw[r], shift), nib);
                    if FIFTH > 0 {
                        let hb = _mm256_srl_epi16(fifth[r], _mm_cvtsi32_si128(j as i32));
                        let b = _mm256_and_si256(hb, _mm256_set1_epi8(1));
                        _mm256_or_si256(u, _mm256_slli_epi16::<4>(b))
                    } else {
                        u
                    }
                });
                dst.extend_from_slice(&transpose(values));
            }
        }
        // Scales and mins transposed in vectors, not lane by lane: each row's 16 i16 (every
        // group's value twice) keep one i16 per dword, group j's in dword j.
        // SAFETY: `scale` and `min` are 16 i16 = 32 readable bytes; the loads are unaligned.
        let load16 = |v: &[i16; 16]| unsafe { _mm256_loadu_si256(v.as_ptr().cast()) };
        let sc = transpose(
            scales
                .each_ref()
                .map(|k| _mm256_and_si256(load16(&k.scale), low16)),
        );
        let d = f16_lanes(&rows, at);
        for scj in sc {
            dst.push(_mm256_castps_si256(_mm256_mul_ps(
                _mm256_cvtepi32_ps(scj),
                d,
            )));
        }
        // Group 2p's min and 2p + 1's as the two i16 of one dword (dword 2p of each row).
        let mins = transpose(scales.each_ref().map(|k| {
            let m = _mm256_and_si256(load16(&k.min), low16);
            _mm256_or_si256(m, _mm256_srli_epi64::<16>(m))
        }));
        for pr in 0..4 {
            dst.push(mins[2 * pr]);
        }
        dst.push(_mm256_castps_si256(f16_lanes(&rows, at + 2)));
    }
}

/// Adds a block with mins (Q4_K, Q5_K, Q2_K) to each token's sums:
/// `acc[t] += d_t·(block_acc[t] − dmin·Σ_p madd(pairs[p], sums of token t, pair p))`, the
/// mins two i16 a dword (`pairs`), the token's group sums two i16 an i32 (`group_sums`, `P`
/// a token).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn add_block_with_mins<const P: usize>(
    acc: &mut [__m256; TOKENS],
    block_acc: &[__m256; TOKENS],
    pairs: &[__m256i; P],
    dmin: __m256i,
    dy: &[f32],
    group_sums: &[i32],
) {
    let dmin = _mm256_castsi256_ps(dmin);
    let dy: &[f32; TOKENS] = dy.try_into().expect("a scale a token");
    for t in 0..TOKENS {
        let y = _mm256_set1_ps(dy[t]);
        let sums: &[i32; P] = group_sums[P * t..P * t + P]
            .try_into()
            .expect("P sums a token");
        let mut mins = _mm256_setzero_si256();
        for (&mp, &gs) in pairs.iter().zip(sums) {
            mins = _mm256_add_epi32(mins, _mm256_madd_epi16(mp, _mm256_set1_epi32(gs)));
        }
        acc[t] = _mm256_fmadd_ps(block_acc[t], y, acc[t]);
        acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_mul_ps(dmin, y), acc[t]);
    }
}

/// Q4_K/Q5_K: per 32-group j, `w = d·sc_j·u − dmin·m_j`; the pair sums widened every `FLUSH`
/// steps ([`flush_steps`] of the type's largest u: 8 for Q4_K, 4 for Q5_K).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `u` unpacked by [`unpack_k4`] for the type, `p` a
/// panel filled for it from rows as long.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4<const FLUSH: usize>(
    u: &[__m256i],
    p: &Panel,
    ahead: &[u8],
    out: &mut [[f32; ROWS]; TOKENS],
) {
    let n = unpacked_blocks(u, K4_PER_BLOCK, p);
    let mut ahead = Ahead::new(ahead, n);
    let mut acc = [_mm256_setzero_ps(); TOKENS];
    let blocks = u
        .chunks_exact(K4_PER_BLOCK)
        .zip(p.qs.chunks_exact(QK_K * TOKENS));
    let per_token =
        p.d.chunks_exact(TOKENS)
            .zip(p.ints.chunks_exact(4 * TOKENS));
    for ((blk, q), (dy, group_sums)) in blocks.zip(per_token) {
        ahead.step();
        let mut block_acc = [_mm256_setzero_ps(); TOKENS];
        for j in 0..8 {
            let zero = [_mm256_setzero_si256(); TOKENS];
            // SAFETY: group j's quants of the panel's tokens, 32 each back to back.
            let s =
                unsafe { sums::<FLUSH>(zero, &blk[8 * j..8 * j + 8], &q[32 * TOKENS * j..], 32) };
            let dsj = _mm256_castsi256_ps(blk[64 + j]);
            for t in 0..TOKENS {
                block_acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[t]), dsj, block_acc[t]);
            }
        }
        let pairs: &[__m256i; 4] = blk[72..76].try_into().expect("4 min pairs");
        add_block_with_mins(&mut acc, &block_acc, pairs, blk[76], dy, group_sums);
    }
    store(out, acc);
}

/// Vectors per unpacked Q6_K or Q3_K block: eight per 32-element chunk, then its sixteen
/// `d·sc`.
const K16_PER_BLOCK: usize = 8 * 8 + 16;

/// Q6_K tiles: per block, the eight 32-element chunks' 6-bit values q (4 bits of `ql`, 2 of
/// `qh`), in element order, then `d·sc_g` of the sixteen 16-groups.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q6k(w: &[u8], row_bytes: usize, dst: &mut Vec<__m256i>) {
    const SIZE: usize = 210;
    let (rows, n) = tile_rows(w, row_bytes, SIZE);
    let (nib, two) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x03));
    dst.clear();
    dst.reserve(n * K16_PER_BLOCK);
    for i in 0..n {
        let at = i * SIZE;
        for c in 0..8 {
            // Chunk 4h + part: nibble part / 2 of ql[64h + 32·(part % 2)..], bits 2·part of
            // qh[32h..].
            let (h, part) = (c / 4, c % 4);
            let lshift = _mm_cvtsi32_si128(4 * (part / 2) as i32);
            let hshift = _mm_cvtsi32_si128(2 * part as i32);
            let values: [__m256i; ROWS] = std::array::from_fn(|r| {
                let l = load32(rows[r], at + 64 * h + 32 * (part % 2));
                let hb = load32(rows[r], at + 128 + 32 * h);
                let lo4 = _mm256_and_si256(_mm256_srl_epi16(l, lshift), nib);
                let hi2 = _mm256_and_si256(_mm256_srl_epi16(hb, hshift), two);
                _mm256_or_si256(lo4, _mm256_slli_epi16::<4>(hi2))
            });
            dst.extend_from_slice(&transpose(values));
        }
        let d = f16_lanes(&rows, at + 208);
        // The sixteen i8 scales of each row, widened and transposed as vectors (not 128
        // conversions lane by lane): groups 8h..8h + 8 from bytes 8h of each row.
        for h in 0..2 {
            let sc = transpose(std::array::from_fn(|r| {
                let b: &[u8; 8] = rows[r][at + 192 + 8 * h..at + 200 + 8 * h]
                    .try_into()
                    .expect("8 scales");
                // SAFETY: `b` is 8 readable bytes; the load is unaligned.
                let v = unsafe { _mm_loadl_epi64(b.as_ptr().cast()) };
                _mm256_cvtepi8_epi32(v)
            }));
            for scg in sc {
                dst.push(_mm256_castps_si256(_mm256_mul_ps(
                    _mm256_cvtepi32_ps(scg),
                    d,
                )));
            }
        }
    }
}

/// Q3_K tiles: per block, the eight 32-element chunks' values u = q + 4 in 0..8 (two bits of
/// `qs`, the third of `hmask`), in element order, then `d·sc_g` of the sixteen 16-groups: the
/// layout of [`unpack_q6k`]'s, for [`k16`].
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q3k(w: &[u8], row_bytes: usize, dst: &mut Vec<__m256i>) {
    const SIZE: usize = 110;
    let (rows, n) = tile_rows(w, row_bytes, SIZE);
    let (two, one) = (_mm256_set1_epi8(0x03), _mm256_set1_epi8(0x01));
    dst.clear();
    dst.reserve(n * K16_PER_BLOCK);
    for i in 0..n {
        let at = i * SIZE;
        for c in 0..8 {
            // Chunk c = 4h + j: bits 2j of qs[32h..] (after the 32 hmask bytes), bit c of hmask.
            let (h, j) = (c / 4, c % 4);
            let lshift = _mm_cvtsi32_si128(2 * j as i32);
            let hshift = _mm_cvtsi32_si128(c as i32);
            let values: [__m256i; ROWS] = std::array::from_fn(|r| {
                let lo2 = _mm256_and_si256(
                    _mm256_srl_epi16(load32(rows[r], at + 32 + 32 * h), lshift),
                    two,
                );
                let hi = _mm256_and_si256(_mm256_srl_epi16(load32(rows[r], at), hshift), one);
                _mm256_or_si256(lo2, _mm256_slli_epi16::<2>(hi))
            });
            dst.extend_from_slice(&transpose(values));
        }
        let d = f16_lanes(&rows, at + 108);
        let scales: [[i16; 16]; ROWS] = std::array::from_fn(|r| {
            let s: &[u8; 12] = rows[r][at + 96..at + 108].try_into().expect("12 bytes");
            crate::kquants::unpack_scales_q3_k(s)
        });
        for h in 0..2 {
            let sc = transpose(std::array::from_fn(|r| {
                let s: &[i16; 8] = scales[r][8 * h..8 * h + 8].try_into().expect("8 scales");
                // SAFETY: `s` is 16 readable bytes; the load is unaligned.
                _mm256_cvtepi16_epi32(unsafe { _mm_loadu_si128(s.as_ptr().cast()) })
            }));
            for scg in sc {
                dst.push(_mm256_castps_si256(_mm256_mul_ps(
                    _mm256_cvtepi32_ps(scg),
                    d,
                )));
            }
        }
    }
}

/// Q6_K and Q3_K: per 16-group g, `w = d·sc_g·(u − o)` (o: 32, 4), the −o in the panel's
/// starting sums; the pair sums widened every `FLUSH` steps.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `u` unpacked by [`unpack_q6k`] or [`unpack_q3k`],
/// `p` a panel filled for the type from rows as long.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k16<const FLUSH: usize>(
    u: &[__m256i],
    p: &Panel,
    ahead: &[u8],
    out: &mut [[f32; ROWS]; TOKENS],
) {
    let n = unpacked_blocks(u, K16_PER_BLOCK, p);
    let mut ahead = Ahead::new(ahead, n);
    let mut acc = [_mm256_setzero_ps(); TOKENS];
    let blocks = u
        .chunks_exact(K16_PER_BLOCK)
        .zip(p.qs.chunks_exact(QK_K * TOKENS));
    let per_token =
        p.d.chunks_exact(TOKENS)
            .zip(p.ints.chunks_exact(16 * TOKENS));
    for ((blk, q), (dy, init)) in blocks.zip(per_token) {
        ahead.step();
        let init: &[i32; 16 * TOKENS] = init.try_into().expect("16 sums a token");
        let mut block_acc = [_mm256_setzero_ps(); TOKENS];
        for g in 0..16 {
            let (c, half) = (g / 2, g % 2);
            let start = std::array::from_fn(|t| _mm256_set1_epi32(init[16 * t + g]));
            let ws = &blk[8 * c + 4 * half..8 * c + 4 * half + 4];
            // SAFETY: chunk c's quants of the panel's tokens, 32 each back to back; this
            // 16-group's are the 16 bytes at 16·half of each.
            let s = unsafe { sums::<FLUSH>(start, ws, &q[32 * TOKENS * c + 16 * half..], 32) };
            let dsg = _mm256_castsi256_ps(blk[64 + g]);
            for t in 0..TOKENS {
                block_acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[t]), dsg, block_acc[t]);
            }
        }
        let dy: &[f32; TOKENS] = dy.try_into().expect("a scale a token");
        for t in 0..TOKENS {
            acc[t] = _mm256_fmadd_ps(block_acc[t], _mm256_set1_ps(dy[t]), acc[t]);
        }
    }
    store(out, acc);
}

/// Vectors per unpacked Q2_K block: eight per 32-element chunk, the sixteen `d·sc` (f32), the
/// eight min pairs (i16: group 2p low, 2p + 1 high), `dmin`.
const Q2K_PER_BLOCK: usize = 8 * 8 + 16 + 8 + 1;

/// Q2_K tiles: per block, the eight 32-element chunks' values u in 0..4 (two bits of `qs`), in
/// element order, then the groups' `d·sc`, their mins in pairs, and `dmin`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q2k(w: &[u8], row_bytes: usize, dst: &mut Vec<__m256i>) {
    const SIZE: usize = 84;
    let (rows, n) = tile_rows(w, row_bytes, SIZE);
    let (two, nib) = (_mm256_set1_epi8(0x03), _mm256_set1_epi32(0x0F));
    dst.clear();
    dst.reserve(n * Q2K_PER_BLOCK);
    for i in 0..n {
        let at = i * SIZE;
        for c in 0..8 {
            // Chunk c = 4h + j: bits 2j of qs[32h..] (after the 16 scale bytes).
            let (h, j) = (c / 4, c % 4);
            let shift = _mm_cvtsi32_si128(2 * j as i32);
            let values: [__m256i; ROWS] = std::array::from_fn(|r| {
                _mm256_and_si256(
                    _mm256_srl_epi16(load32(rows[r], at + 16 + 32 * h), shift),
                    two,
                )
            });
            dst.extend_from_slice(&transpose(values));
        }
        let scale_bytes: [__m128i; ROWS] = std::array::from_fn(|r| {
            let b: &[u8; 16] = rows[r][at..at + 16].try_into().expect("16 scale bytes");
            // SAFETY: `b` is 16 readable bytes; the load is unaligned.
            unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
        });
        // Each byte: the group's scale in the low nibble, its min in the high one.
        let d = f16_lanes(&rows, at + 80);
        for h in 0..2 {
            let sc = transpose(scale_bytes.map(|b| {
                let bytes = if h == 0 { b } else { _mm_srli_si128::<8>(b) };
                _mm256_and_si256(_mm256_cvtepu8_epi32(bytes), nib)
            }));
            for scg in sc {
                dst.push(_mm256_castps_si256(_mm256_mul_ps(
                    _mm256_cvtepi32_ps(scg),
                    d,
                )));
            }
        }
        // Sixteen i16 mins a row: dword p holds groups 2p and 2p + 1.
        let mins = transpose(scale_bytes.map(|b| _mm256_srli_epi16::<4>(_mm256_cvtepu8_epi16(b))));
        dst.extend_from_slice(&mins);
        dst.push(_mm256_castps_si256(f16_lanes(&rows, at + 82)));
    }
}

/// Q2_K: per 16-group g, `w = d·sc_g·u − dmin·m_g`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `u` unpacked by [`unpack_q2k`], `p` a panel filled
/// for Q2_K from rows as long.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q2k(u: &[__m256i], p: &Panel, ahead: &[u8], out: &mut [[f32; ROWS]; TOKENS]) {
    let n = unpacked_blocks(u, Q2K_PER_BLOCK, p);
    let mut ahead = Ahead::new(ahead, n);
    let mut acc = [_mm256_setzero_ps(); TOKENS];
    let blocks = u
        .chunks_exact(Q2K_PER_BLOCK)
        .zip(p.qs.chunks_exact(QK_K * TOKENS));
    let per_token =
        p.d.chunks_exact(TOKENS)
            .zip(p.ints.chunks_exact(8 * TOKENS));
    for ((blk, q), (dy, group_sums)) in blocks.zip(per_token) {
        ahead.step();
        let mut block_acc = [_mm256_setzero_ps(); TOKENS];
        for g in 0..16 {
            let (c, half) = (g / 2, g % 2);
            let zero = [_mm256_setzero_si256(); TOKENS];
            let ws = &blk[8 * c + 4 * half..8 * c + 4 * half + 4];
            // SAFETY: chunk c's quants of the panel's tokens, 32 each back to back; this
            // 16-group's are the 16 bytes at 16·half of each.
            let s = unsafe {
                sums::<{ flush_steps(3) }>(zero, ws, &q[32 * TOKENS * c + 16 * half..], 32)
            };
            let dsg = _mm256_castsi256_ps(blk[64 + g]);
            for t in 0..TOKENS {
                block_acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[t]), dsg, block_acc[t]);
            }
        }
        let pairs: &[__m256i; 8] = blk[80..88].try_into().expect("8 min pairs");
        add_block_with_mins(&mut acc, &block_acc, pairs, blk[88], dy, group_sums);
    }
    store(out, acc);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act_quant::QuantizedRow;

    const TYPES: [DType; 10] = [
        DType::Q4_0,
        DType::Q8_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];

    fn random_rows(dtype: DType, blocks: usize, seed: u32) -> Vec<u8> {
        crate::x86_tile::tests::random_tile(dtype, ROWS, blocks, seed)
    }

    /// Activation rows with outliers, an all-zero first block in token 1, and all of token 2
    /// at the end of the 8-bit range (which, with the largest weights, bounds the i16 sums).
    fn activations(dtype: DType, cols: usize, seed: usize) -> Vec<QuantizedRow> {
        (0..TOKENS)
            .map(|t| {
                let mut x: Vec<f32> = (0..cols)
                    .map(|i| {
                        (((i * 7919 + t * 31 + seed) % 2001) as f32 / 1000.0 - 1.0)
                            * (1.0 + (i % 13) as f32)
                    })
                    .collect();
                match t {
                    1 => x[..dtype.block_elems()].iter_mut().for_each(|v| *v = 0.0),
                    2 => x.fill(1.0),
                    _ => {}
                }
                QuantizedRow::for_weight(dtype, &x).unwrap()
            })
            .collect()
    }

    /// Every kernel against the scalar reference dot of each (row, token), for weights whose
    /// values reach their type's maximum (all bits set) as well as random ones.
    #[test]
    fn tiles_match_the_scalar_reference() {
        let isa = crate::dispatch::isa();
        for dtype in TYPES {
            let Some((unpack, kernel)) = avx2_kernels(isa, dtype) else {
                eprintln!("no AVX2 on this CPU: skipped");
                continue;
            };
            for blocks in [1usize, 2, 3, 9] {
                let mut w = random_rows(dtype, blocks, blocks as u32);
                let row_bytes = w.len() / ROWS;
                // Row 3: every quant bit set, the largest u of the type.
                let scales = dtype.scale_fields();
                for (k, blk) in w[3 * row_bytes..4 * row_bytes]
                    .chunks_exact_mut(dtype.block_bytes())
                    .enumerate()
                {
                    let keep: Vec<[u8; 2]> = scales.iter().map(|&f| [blk[f], blk[f + 1]]).collect();
                    blk.fill(0xFF);
                    for (&f, v) in scales.iter().zip(keep) {
                        blk[f..f + 2].copy_from_slice(&v);
                    }
                    if dtype == DType::Q6_K {
                        blk[192..208].fill(if k % 2 == 0 { 127 } else { 0x80 });
                    }
                }
                let cols = blocks * dtype.block_elems();
                let xs = activations(dtype, cols, blocks);
                let mut panel = Panel::default();
                panel.fill(dtype, &xs.iter().collect::<Vec<_>>());
                let mut u = Vec::new();
                let mut out = [[0f32; ROWS]; TOKENS];
                // SAFETY: `avx2_kernels` checked the CPU; rows and panel are of `dtype`.
                unsafe {
                    unpack(&w, row_bytes, &mut u);
                    kernel(&u, &panel, &w, &mut out);
                }
                assert_eq!(u.len() * 32, tile_bytes(dtype, cols));
                let what = format!("blocks={blocks}");
                crate::x86_tile::tests::assert_matches_reference(
                    dtype,
                    &w,
                    cols,
                    &xs,
                    |t, r| out[t][r],
                    &what,
                );
            }
        }
    }

    #[test]
    #[ignore = "a speed probe: [COLS=4096] cargo test --release -p bora-kernels avx2_tile_speed -- --ignored --nocapture"]
    fn avx2_tile_speed() {
        let isa = crate::dispatch::isa();
        for dtype in [DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q6_K] {
            let Some((unpack, kernel)) = avx2_kernels(isa, dtype) else {
                continue;
            };
            let cols: usize = std::env::var("COLS").map_or(4096, |v| v.parse().unwrap());
            let w = random_rows(dtype, cols / dtype.block_elems(), 1);
            let xs = activations(dtype, cols, 0);
            let mut panel = Panel::default();
            panel.fill(dtype, &xs.iter().collect::<Vec<_>>());
            let mut u = Vec::new();
            let mut out = [[0f32; ROWS]; TOKENS];
            let iters = 4_000_000 / cols;
            let t0 = std::time::Instant::now();
            for _ in 0..iters {
                // SAFETY: as in the test above.
                unsafe { unpack(&w, w.len() / ROWS, &mut u) };
                std::hint::black_box(&u);
            }
            let unpack_s = t0.elapsed().as_secs_f64();
            let t0 = std::time::Instant::now();
            for _ in 0..iters {
                // SAFETY: as in the test above.
                // The tile's own bytes as the ones to prefetch: as many as a matmul passes.
                unsafe { kernel(&u, &panel, &w, &mut out) };
                std::hint::black_box(&out);
            }
            let s = t0.elapsed().as_secs_f64();
            let macs = (iters * ROWS * TOKENS * cols) as f64;
            println!(
                "{dtype}: {:.1} GMAC/s on one thread; an unpack costs {:.2} panels ({:.0} ns a block)",
                macs / s / 1e9,
                unpack_s / s,
                unpack_s / (iters * cols / dtype.block_elems()) as f64 * 1e9
            );
        }
    }
}
