//! Register-tiled weight × activation kernels for prefill and batched decode (AVX-512 VNNI).
//!
//! The row kernels in [`crate::x86`] keep one block's 32 products in the lanes of one weight
//! row, so every (row, token, block) pays its own conversion to f32 and its own scaled add.
//! Here the sixteen i32 lanes of a 512-bit vector are sixteen weight rows: a block of each row
//! is unpacked and transposed once (dword j of row r goes to lane r of vector j), after which
//! a token meets all sixteen rows with eight `vpdpbusd` on broadcast activation dwords, one
//! conversion and one FMA. The unpack and transpose are paid once per N tokens ([`TOKENS`] in
//! prefill; decode stays on the row kernels, which were faster from memory for one token).
//!
//! The tokens' quantized activations are first packed into a [`Panel`]: per block, the
//! tokens' quants back to back with the per-block values the kernels broadcast, so a kernel
//! reads them from one pointer.
//!
//! A weight offset (Q4_0's −8, Q5_0's −16, Q6_K's −32, and Q8_0's signed bytes read as
//! unsigned + 128) is folded into the integer sum: it starts at −offset · Σ activation quants,
//! the same for every row, so Σ (u − o)·q is exact in i32 before any rounding.
//!
//! Results equal the row kernels' up to the order of f32 additions (the integer sums are the
//! same); tests check them against the scalar reference.

use std::arch::x86_64::*;

use crate::act_quant::{Q8Blocks, QuantizedRow};
use crate::blocks::{BlockQ8K, QK_K};
use crate::dispatch::{Isa, Level};
use crate::DType;

/// Weight rows per tile: the sixteen i32 lanes of a 512-bit vector.
pub(crate) const ROWS: usize = 16;
/// Activation rows (tokens) per tile: one f32 accumulator each.
pub(crate) const TOKENS: usize = 10;

/// `out[t][r] = row r · token t` for a tile: `w` holds [`ROWS`] rows of `row_bytes` bytes.
pub(crate) type TileFn<const N: usize> = unsafe fn(&[u8], usize, &Panel, &mut [[f32; ROWS]; N]);

/// The tiled kernel for `dtype`, if this CPU has the features it is compiled for.
pub(crate) fn tile_kernel<const N: usize>(isa: Isa, dtype: DType) -> Option<TileFn<N>> {
    if isa.level() < Level::Avx512
        || !crate::dispatch::has_vnni()
        || !crate::dispatch::tiles_enabled()
    {
        return None;
    }
    Some(match dtype {
        DType::Q4_0 => q4_0::<N>,
        DType::Q4_1 => q4_1::<N>,
        DType::Q5_0 => q5_0::<N>,
        DType::Q5_1 => q5_1::<N>,
        DType::Q8_0 => q8_0::<N>,
        DType::Q4_K => q4_k::<N>,
        DType::Q5_K => q5_k::<N>,
        DType::Q6_K => q6_k::<N>,
        _ => return None,
    })
}

/// A few quantized activation rows, packed block by block for the tiled kernels.
#[derive(Default)]
pub(crate) struct Panel {
    /// Activation rows packed.
    pub(crate) tokens: usize,
    /// Per block, the tokens' quants: 32 each back to back; for the k-quants, per 32-group of
    /// the block, each token's 32 back to back.
    pub(crate) qs: Vec<i8>,
    /// Per block, each token's activation scale.
    pub(crate) d: Vec<f32>,
    /// Per block, each token's `s` (what Q4_1/Q5_1's min meets); empty for other types.
    s: Vec<f32>,
    /// Per block, [`ints_per_block`] i32 per token: the integer sums' starting values
    /// (−offset · Σ q) for the 32-weight types and Q6_K's and Q3_K's 16-groups, or the quant
    /// sums as i16 pairs that the mins meet: of Q4_K/Q5_K's 32-groups, Q2_K's 16-groups.
    pub(crate) ints: Vec<i32>,
}

/// How many i32 a [`Panel`] keeps per token and block for `dtype`.
fn ints_per_block(dtype: DType) -> usize {
    match k_ints(dtype) {
        KInts::Pairs32 => 4,
        KInts::Pairs16 => 8,
        KInts::Offset16(_) => 16,
        KInts::None => 1,
    }
}

/// What a panel keeps for a k-quant's integer sums (see [`Panel::ints`]).
#[derive(Clone, Copy)]
enum KInts {
    /// −offset · Σ q of each 16-group: the sums' starting values (Q6_K, Q3_K).
    Offset16(i32),
    /// Σ q of each 32-group, two to an i32 (Q4_K, Q5_K).
    Pairs32,
    /// Σ q of each 16-group, two to an i32 (Q2_K).
    Pairs16,
    /// Not a k-quant.
    None,
}

fn k_ints(dtype: DType) -> KInts {
    match dtype {
        DType::Q6_K => KInts::Offset16(32),
        DType::Q3_K => KInts::Offset16(4),
        DType::Q4_K | DType::Q5_K => KInts::Pairs32,
        DType::Q2_K => KInts::Pairs16,
        _ => KInts::None,
    }
}

/// The offset folded into the integer sums of a 32-weight type.
fn legacy_offset(dtype: DType) -> i32 {
    match dtype {
        DType::Q4_0 => 8,
        DType::Q5_0 => 16,
        DType::Q8_0 => 128,
        _ => 0,
    }
}

impl Panel {
    /// Packs `xs` (each quantized for `dtype`, all of one length) for `dtype`'s kernel.
    pub(crate) fn fill(&mut self, dtype: DType, xs: &[&QuantizedRow]) {
        self.tokens = xs.len();
        self.qs.clear();
        self.d.clear();
        self.s.clear();
        self.ints.clear();
        let mixed = || -> ! { unreachable!("activations quantized for one weight type") };
        match xs[0] {
            QuantizedRow::Q8_0(_) => {
                let rows = xs.iter().map(|x| match x {
                    QuantizedRow::Q8_0(b) => b,
                    _ => mixed(),
                });
                self.fill_legacy(rows, |b| &b.qs, Some(legacy_offset(dtype)));
            }
            QuantizedRow::Q8_1(_) => {
                let rows = xs.iter().map(|x| match x {
                    QuantizedRow::Q8_1(b) => b,
                    _ => mixed(),
                });
                self.fill_legacy(rows, |b| &b.qs, None);
            }
            QuantizedRow::Q8K(_) => {
                let rows: Vec<&[BlockQ8K]> = xs
                    .iter()
                    .map(|x| match x {
                        QuantizedRow::Q8K(b) => b.as_slice(),
                        _ => mixed(),
                    })
                    .collect();
                self.fill_k(&rows, k_ints(dtype));
            }
        }
        debug_assert_eq!(self.ints.len(), self.d.len() * ints_per_block(dtype));
    }

    /// 32-element blocks: per block, each token's quants, scale, and either the offset's
    /// starting sum (−o·Σq) or, for the min types (`offset = None`), its `s`.
    fn fill_legacy<'a, B: 'a>(
        &mut self,
        rows: impl Iterator<Item = &'a Q8Blocks<B>> + Clone,
        qs: impl Fn(&B) -> &[i8; 32],
        offset: Option<i32>,
    ) {
        let blocks = rows.clone().next().map_or(0, |r| r.len());
        for i in 0..blocks {
            for b in rows.clone() {
                self.qs.extend_from_slice(qs(&b.blocks[i]));
                self.d.push(b.d[i]);
                match offset {
                    Some(o) => self.ints.push(-o * b.sums[i]),
                    None => {
                        self.s.push(b.s[i]);
                        self.ints.push(0);
                    }
                }
            }
        }
    }

    /// 256-element blocks: quants chunk-major (per block, each 32-group's tokens back to back,
    /// so a group's reads are one run of N·32 bytes), then per token its scale and `ints`.
    fn fill_k(&mut self, rows: &[&[BlockQ8K]], ints: KInts) {
        let blocks = rows.first().map_or(0, |r| r.len());
        for i in 0..blocks {
            for c in 0..QK_K / 32 {
                for r in rows {
                    self.qs.extend_from_slice(&r[i].qs[32 * c..32 * c + 32]);
                }
            }
        }
        for i in 0..blocks {
            for r in rows {
                let y = &r[i];
                self.d.push(y.d);
                let pair = |a: i32, b: i32| (a & 0xFFFF) | (b << 16);
                match ints {
                    KInts::Offset16(o) => self.ints.extend(y.bsums.iter().map(|&v| -o * v as i32)),
                    KInts::Pairs32 => {
                        let sum32 = |g: usize| y.bsums[2 * g] as i32 + y.bsums[2 * g + 1] as i32;
                        self.ints
                            .extend((0..4).map(|p| pair(sum32(2 * p), sum32(2 * p + 1))));
                    }
                    KInts::Pairs16 => self.ints.extend(
                        (0..8).map(|p| pair(y.bsums[2 * p] as i32, y.bsums[2 * p + 1] as i32)),
                    ),
                    KInts::None => unreachable!("a k-quant panel"),
                }
            }
        }
    }

    /// Per block, each token's `s` (Q4_1/Q5_1 panels; empty for other types).
    pub(crate) fn s(&self) -> &[f32] {
        &self.s
    }

    pub(crate) fn tokens(&self) -> usize {
        self.tokens
    }

    pub(crate) fn blocks(&self) -> usize {
        self.d.len() / self.tokens.max(1)
    }
}

/// `$body` once per listed index, with `$t` bound to it.
macro_rules! unroll {
    ($t:ident, $body:block, $($i:literal)*) => {{
        $( { let $t: usize = $i; $body } )*
    }};
}

/// Calls `$body` with `$t` bound to each token index in turn, written out for the token counts
/// in use so that per-token accumulators stay in registers (a loop this large is not unrolled
/// by the compiler).
macro_rules! each_token {
    ($t:ident => $body:block) => {{
        if N == 10 {
            unroll!($t, $body, 0 1 2 3 4 5 6 7 8 9)
        } else if N == 8 {
            unroll!($t, $body, 0 1 2 3 4 5 6 7)
        } else if N == 4 {
            unroll!($t, $body, 0 1 2 3)
        } else {
            for $t in 0..N $body
        }
    }};
}

/// How far ahead of the block being computed each weight row is prefetched.
const PREFETCH_BYTES: usize = 1024;

/// Checks a tile's bounds once, so the kernels' unchecked loads stay inside `w`: `ROWS` rows
/// of `n` blocks of `block` bytes each. Returns `n`.
fn tile_blocks(w: &[u8], row_bytes: usize, block: usize, p: &Panel) -> usize {
    assert_eq!(w.len(), ROWS * row_bytes, "a tile is {ROWS} whole rows");
    assert_eq!(row_bytes % block, 0, "rows hold whole blocks");
    let n = row_bytes / block;
    assert_eq!(
        p.blocks(),
        n,
        "activations and weights have the same length"
    );
    assert!(
        row_bytes * ROWS < i32::MAX as usize,
        "row offsets fit the gather's i32 indices"
    );
    n
}

/// The rows' byte offsets, as gather indices.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(crate) fn row_offsets(row_bytes: usize) -> __m512i {
    _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(row_bytes as i32),
    )
}

/// The dword at byte `off` of block `i` of each row.
///
/// # Safety
/// `w` must hold [`ROWS`] rows of `row_bytes` bytes; block `i` must lie inside a row with
/// `off + 4` bytes of it readable (`off + 4 ≤` block size).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn gather(w: &[u8], rows: __m512i, at: usize) -> __m512i {
    // SAFETY: the caller keeps `at + 4` inside row 0, so `at + r·row_bytes + 4` is inside
    // row r; the gather reads 4 bytes at each, unaligned.
    unsafe { _mm512_i32gather_epi32::<1>(rows, w.as_ptr().add(at) as *const i32) }
}

/// The f16 in the low (`HIGH = false`) or high half of each dword, as f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(crate) fn f16_half<const HIGH: bool>(v: __m512i) -> __m512 {
    let v = if HIGH { _mm512_srli_epi32(v, 16) } else { v };
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
}

/// 16 bytes at byte `$at` of rows k, k+4, k+8 and k+12, as the four 128-bit lanes. A macro
/// so it is always inlined. Must be used inside `unsafe`, with `$w` holding [`ROWS`] rows of
/// `$row_bytes` bytes and `$at + 16 ≤ $row_bytes`: every load is then inside `$w`.
macro_rules! rows4 {
    ($w:expr, $row_bytes:expr, $at:expr, $k:expr) => {{
        let (base, rb, at, k): (*const u8, usize, usize, usize) =
            ($w.as_ptr(), $row_bytes, $at, $k);
        let p = |r: usize| base.add(r * rb + at) as *const __m128i;
        let z = _mm512_castsi128_si512(_mm_loadu_si128(p(k)));
        let z = _mm512_inserti32x4::<1>(z, _mm_loadu_si128(p(k + 4)));
        let z = _mm512_inserti32x4::<2>(z, _mm_loadu_si128(p(k + 8)));
        _mm512_inserti32x4::<3>(z, _mm_loadu_si128(p(k + 12)))
    }};
}

/// `rows4!` for k = 0..4.
macro_rules! rows16 {
    ($w:expr, $row_bytes:expr, $at:expr) => {
        [
            rows4!($w, $row_bytes, $at, 0),
            rows4!($w, $row_bytes, $at, 1),
            rows4!($w, $row_bytes, $at, 2),
            rows4!($w, $row_bytes, $at, 3),
        ]
    };
}

/// From `rows4!(.., k)` for k = 0..4 (lane L of input k: row k + 4L, four dwords), vector d
/// holds dword d of every row, row r in lane r.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn transpose4(z: [__m512i; 4]) -> [__m512i; 4] {
    let t0 = _mm512_unpacklo_epi32(z[0], z[1]);
    let t1 = _mm512_unpackhi_epi32(z[0], z[1]);
    let t2 = _mm512_unpacklo_epi32(z[2], z[3]);
    let t3 = _mm512_unpackhi_epi32(z[2], z[3]);
    [
        _mm512_unpacklo_epi64(t0, t2),
        _mm512_unpackhi_epi64(t0, t2),
        _mm512_unpacklo_epi64(t1, t3),
        _mm512_unpackhi_epi64(t1, t3),
    ]
}

/// Eight transposed vectors: dwords 0..4 from `lo`, 4..8 from `hi`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn transpose8(lo: [__m512i; 4], hi: [__m512i; 4]) -> [__m512i; 8] {
    let (a, b) = (transpose4(lo), transpose4(hi));
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
}

/// For each token t, `acc[t] + Σ_j w[j] · (dword j of token t's quants, broadcast)` for j in
/// `js`, token t's quants at `q[stride·t + at..]`. Tokens innermost: eight independent
/// `vpdpbusd` chains in flight instead of one chain of eight dependent ones per token. A macro,
/// so it is always inlined (as a function the compiler kept it out of line, its arrays in
/// memory). The quants are taken as one fixed-size array (one bounds check, then constant
/// offsets); `black_box` keeps its base in a register, or the compiler folds the chunk offset
/// into every address with a scalar `or`, one per `vpdpbusd`.
macro_rules! dots {
    ($acc:expr, $w:expr, $js:expr, $q:expr, $stride:expr, $at:expr) => {{
        let len = $stride * (N - 1) + 32;
        let q: &[i8] = &$q[$at..][..len];
        // Re-sliced after `black_box`, so the length is known again: no checks below.
        dots!(@run $acc, $w, $js, &std::hint::black_box(q)[..len], $stride)
    }};
    // Q6_K's two half-chunk calls: there the opaque base cost more than the `or`s it saves.
    ($acc:expr, $w:expr, $js:expr, $q:expr, $stride:expr, $at:expr, transparent) => {{
        let q: &[i8] = &$q[$at..][..$stride * (N - 1) + 32];
        dots!(@run $acc, $w, $js, q, $stride)
    }};
    (@run $acc:expr, $w:expr, $js:expr, $q:expr, $stride:expr) => {{
        let mut acc: [__m512i; N] = $acc;
        let w: &[__m512i; 8] = $w;
        let q = $q;
        for j in $js {
            each_token!(t => {
                let o = $stride * t + 4 * j;
                let b = [q[o] as u8, q[o + 1] as u8, q[o + 2] as u8, q[o + 3] as u8];
                let b = _mm512_set1_epi32(i32::from_le_bytes(b));
                acc[t] = _mm512_dpbusd_epi32(acc[t], w[j], b);
            });
        }
        acc
    }};
}

/// Prefetches `$bytes` of each row, `PREFETCH_BYTES` past byte `$at`. A macro: as a call
/// (the compiler kept the function out of line) it forced the accumulators out of registers.
macro_rules! prefetch_rows {
    ($w:expr, $row_bytes:expr, $at:expr, $bytes:expr) => {
        for r in 0..ROWS {
            let base = $w
                .as_ptr()
                .wrapping_add(r * $row_bytes + $at + PREFETCH_BYTES);
            for line in (0..$bytes).step_by(64) {
                // A prefetch is a hint: it never faults, whatever the address.
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(line) as *const i8);
            }
        }
    };
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn store<const N: usize>(out: &mut [[f32; ROWS]; N], acc: [__m512; N]) {
    for t in 0..N {
        // SAFETY: `out[t]` is 16 writable f32; the store is unaligned.
        unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]) };
    }
}

/// How a 32-weight type's blocks are laid out and unpacked (constants, so each type's kernel
/// is compiled for its own layout).
pub(crate) trait Legacy {
    /// Block size in bytes.
    const SIZE: usize;
    /// Byte offset of the quants.
    const QS: usize;
    /// Whether the block carries a min (f16 at byte 2), met by the activations' `s`.
    const MIN: bool;
    /// Byte offset of Q5's 32 fifth bits.
    const QH: Option<usize>;
    /// Q8_0: the quants are 32 signed bytes (read as unsigned + 128), not 16 bytes of nibbles.
    const BYTES: bool;
}

/// The fifth bits of rows k, k+4, k+8, k+12 for elements `16·half..16·half+16`, as 0x10 in
/// each byte whose bit is set.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn fifth_bits(w: &[u8], row_bytes: usize, at: usize, k: usize, half: usize) -> __m512i {
    let mut mask = 0u64;
    for lane in 0..4 {
        let p = (k + 4 * lane) * row_bytes + at;
        let qh = u32::from_le_bytes([w[p], w[p + 1], w[p + 2], w[p + 3]]);
        mask |= (((qh >> (16 * half)) & 0xFFFF) as u64) << (16 * lane);
    }
    _mm512_maskz_mov_epi8(mask, _mm512_set1_epi8(0x10))
}

/// Block `at` (a byte offset) of the tile's rows, unpacked and transposed: vector j holds
/// dword j of the 32 unsigned values (u, before any offset) of every row, row r in lane r; and
/// the first dword of each row's block (its f16 scale, then Q4_1/Q5_1's min).
///
/// # Safety
/// The CPU must have the features this function is compiled for; `w` holds [`ROWS`] rows of
/// `row_bytes` bytes and the block at `at` lies inside each row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn legacy_block<L: Legacy>(
    w: &[u8],
    row_bytes: usize,
    offsets: __m512i,
    at: usize,
) -> ([__m512i; 8], __m512i) {
    let nib = _mm512_set1_epi8(0x0F);
    prefetch_rows!(w, row_bytes, at, L::SIZE);
    // SAFETY (all loads below): the block is inside every row (the caller's contract), and
    // each read stays inside it: bytes 0..4, and quants at `qs..qs + 16 (32)`.
    let scales = unsafe { gather(w, offsets, at) };
    let wt = if L::BYTES {
        let flip = _mm512_set1_epi8(-128);
        let (lo, hi) = unsafe {
            (
                rows16!(w, row_bytes, at + L::QS),
                rows16!(w, row_bytes, at + L::QS + 16),
            )
        };
        transpose8(
            lo.map(|z| _mm512_xor_si512(z, flip)),
            hi.map(|z| _mm512_xor_si512(z, flip)),
        )
    } else {
        let raw: [__m512i; 4] = unsafe { rows16!(w, row_bytes, at + L::QS) };
        if let Some(qh) = L::QH {
            let mut lo = raw.map(|z| _mm512_and_si512(z, nib));
            let mut hi = raw.map(|z| _mm512_and_si512(_mm512_srli_epi16(z, 4), nib));
            for k in 0..4 {
                lo[k] = _mm512_or_si512(lo[k], fifth_bits(w, row_bytes, at + qh, k, 0));
                hi[k] = _mm512_or_si512(hi[k], fifth_bits(w, row_bytes, at + qh, k, 1));
            }
            transpose8(lo, hi)
        } else {
            // Nibbles taken after the transpose (bytewise operations commute with moving
            // dwords): one 4-vector transpose for both halves of the block.
            let t = transpose4(raw);
            let lo = t.map(|v| _mm512_and_si512(v, nib));
            let hi = t.map(|v| _mm512_and_si512(_mm512_srli_epi16(v, 4), nib));
            [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]]
        }
    };
    (wt, scales)
}

/// The 32-weight types: per block, d (f16 at byte 0), 32 unsigned values u and either the
/// offset folded into the panel's starting sums (w = d·(u − o)) or a min m (w = d·u + m).
///
/// # Safety
/// The CPU must have the features this function is compiled for; `w` and `p` as
/// [`tile_blocks`] checks, for this layout.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn legacy<L: Legacy, const N: usize>(
    w: &[u8],
    row_bytes: usize,
    p: &Panel,
    out: &mut [[f32; ROWS]; N],
) {
    let n = tile_blocks(w, row_bytes, L::SIZE, p);
    let offsets = row_offsets(row_bytes);
    let mut acc = [_mm512_setzero_ps(); N];
    // The min terms, summed apart and added at the end, as llama.cpp does.
    let mut acc_m = [_mm512_setzero_ps(); N];
    for i in 0..n {
        let at = i * L::SIZE;
        // SAFETY: block i of every row is inside `w` (`tile_blocks`).
        let (wt, scales) = unsafe { legacy_block::<L>(w, row_bytes, offsets, at) };
        let dw = f16_half::<false>(scales);
        let mw = f16_half::<true>(scales);
        let q: &[i8] = &p.qs[i * 32 * N..][..32 * N];
        let d: &[f32; N] = p.d[i * N..][..N].try_into().expect("a scale per token");
        let init: &[i32; N] = p.ints[i * N..][..N].try_into().expect("a sum per token");
        let sums = dots!(init.map(|v| _mm512_set1_epi32(v)), &wt, 0..8, q, 32, 0);
        each_token!(t => {
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(d[t]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[t]), scale, acc[t]);
        });
        if L::MIN {
            let s: &[f32; N] = p.s[i * N..][..N].try_into().expect("an s per token");
            each_token!(t => {
                acc_m[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(s[t]), acc_m[t]);
            });
        }
    }
    if L::MIN {
        each_token!(t => {
            acc[t] = _mm512_add_ps(acc[t], acc_m[t]);
        });
    }
    store(out, acc);
}

/// Checks a tile's bounds once for an unpack, as [`tile_blocks`] does for a kernel: `ROWS`
/// rows of whole `block`-byte blocks. Returns the blocks per row.
fn unpack_bounds(w: &[u8], row_bytes: usize, block: usize) -> usize {
    assert_eq!(w.len(), ROWS * row_bytes, "a tile is {ROWS} whole rows");
    assert_eq!(row_bytes % block, 0, "rows hold whole blocks");
    assert!(
        row_bytes * ROWS < i32::MAX as usize,
        "row offsets fit the gather's i32 indices"
    );
    row_bytes / block
}

/// Checks an unpacked tile against its panel: whole blocks of `per` vectors, as many as the
/// panel has. Returns the blocks.
fn unpacked_blocks(u: &[__m512i], per: usize, p: &Panel) -> usize {
    let n = u.len() / per;
    assert_eq!(u.len(), n * per, "whole unpacked blocks");
    assert_eq!(
        p.blocks(),
        n,
        "activations and weights have the same length"
    );
    n
}

/// Vectors per block of an unpacked tile ([`unpack_legacy`]): the eight weight vectors, the
/// scales as f32 and, for the min types, the mins.
const fn unpacked_per_block<L: Legacy>() -> usize {
    if L::MIN {
        10
    } else {
        9
    }
}

/// Every block of a tile unpacked and transposed as [`legacy_block`] leaves it, its scales
/// (and mins) widened to f32, into `dst` (cleared first): for prefill, where a tile meets
/// several panels, so it is unpacked once and not once per panel.
///
/// # Safety
/// The CPU must have the features this function is compiled for; `w` holds [`ROWS`] rows of
/// `row_bytes` bytes of `L`'s blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack_legacy<L: Legacy>(w: &[u8], row_bytes: usize, dst: &mut Vec<__m512i>) {
    unpack_bounds(w, row_bytes, L::SIZE);
    let offsets = row_offsets(row_bytes);
    dst.clear();
    for at in (0..row_bytes).step_by(L::SIZE) {
        // SAFETY: block `at` lies inside every row (the asserts above).
        let (wt, scales) = unsafe { legacy_block::<L>(w, row_bytes, offsets, at) };
        dst.extend_from_slice(&wt);
        dst.push(_mm512_castps_si512(f16_half::<false>(scales)));
        if L::MIN {
            dst.push(_mm512_castps_si512(f16_half::<true>(scales)));
        }
    }
}

/// [`legacy`] on a tile [`unpack_legacy`] unpacked: the same operations in the same order,
/// so the same results, without the unpacking.
///
/// # Safety
/// The CPU must have the features this function is compiled for.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn legacy_unpacked<L: Legacy, const N: usize>(
    u: &[__m512i],
    p: &Panel,
    ahead: &[u8],
    out: &mut [[f32; ROWS]; N],
) {
    let per = unpacked_per_block::<L>();
    let n = unpacked_blocks(u, per, p);
    let mut acc = [_mm512_setzero_ps(); N];
    let mut acc_m = [_mm512_setzero_ps(); N];
    for (i, blk) in u.chunks_exact(per).enumerate() {
        prefetch_share(ahead, i, n);
        let wt: &[__m512i; 8] = blk[..8].try_into().expect("eight weight vectors");
        let dw = _mm512_castsi512_ps(blk[8]);
        let q: &[i8] = &p.qs[i * 32 * N..][..32 * N];
        let d: &[f32; N] = p.d[i * N..][..N].try_into().expect("a scale per token");
        let init: &[i32; N] = p.ints[i * N..][..N].try_into().expect("a sum per token");
        let sums = dots!(init.map(|v| _mm512_set1_epi32(v)), wt, 0..8, q, 32, 0);
        each_token!(t => {
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(d[t]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[t]), scale, acc[t]);
        });
        if L::MIN {
            let mw = _mm512_castsi512_ps(blk[9]);
            let s: &[f32; N] = p.s[i * N..][..N].try_into().expect("an s per token");
            each_token!(t => {
                acc_m[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(s[t]), acc_m[t]);
            });
        }
    }
    if L::MIN {
        each_token!(t => {
            acc[t] = _mm512_add_ps(acc[t], acc_m[t]);
        });
    }
    store(out, acc);
}

/// Unpacks a tile for [`UnpackedTileFn`].
pub(crate) type UnpackFn = unsafe fn(&[u8], usize, &mut Vec<__m512i>);
/// A tile kernel on an unpacked tile; it also asks for the bytes of its third argument to be
/// brought into L2, a share per block, so weights a later unpack reads arrive while this
/// one computes.
pub(crate) type UnpackedTileFn<const N: usize> =
    unsafe fn(&[__m512i], &Panel, &[u8], &mut [[f32; ROWS]; N]);

/// Block `i` of `n`'s share of `ahead`: its cache lines asked into L2, spread evenly so the
/// requests never pile up (a burst of them stalls on the fill buffers, as demand loads do).
#[inline(always)]
fn prefetch_share(ahead: &[u8], i: usize, n: usize) {
    let lines = ahead.len().div_ceil(64);
    let (from, to) = (lines * i / n, lines * (i + 1) / n);
    for line in from..to {
        let p = ahead.as_ptr().wrapping_add(64 * line);
        // SAFETY: SSE is part of x86-64; a prefetch reads nothing and cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(p.cast::<i8>()) };
    }
}

/// The unpack-once kernels for `dtype` (the 32-weight types), if this CPU has their features.
pub(crate) fn unpacked_kernels<const N: usize>(
    isa: Isa,
    dtype: DType,
) -> Option<(UnpackFn, UnpackedTileFn<N>)> {
    tile_kernel::<N>(isa, dtype)?;
    fn pair<L: Legacy, const N: usize>() -> (UnpackFn, UnpackedTileFn<N>) {
        (unpack_legacy::<L>, legacy_unpacked::<L, N>)
    }
    Some(match dtype {
        DType::Q4_0 => pair::<Q4_0Layout, N>(),
        DType::Q4_1 => pair::<Q4_1Layout, N>(),
        DType::Q5_0 => pair::<Q5_0Layout, N>(),
        DType::Q5_1 => pair::<Q5_1Layout, N>(),
        DType::Q8_0 => pair::<Q8_0Layout, N>(),
        DType::Q4_K => (unpack_k4::<144, 16, 0>, k4_unpacked::<N>),
        DType::Q5_K => (unpack_k4::<176, 48, 16>, k4_unpacked::<N>),
        DType::Q6_K => (unpack_q6k, q6k_unpacked::<N>),
        _ => return None,
    })
}

/// Bytes of one tile unpacked by [`UnpackFn`]: to size tasks whose tiles stay in L2.
pub(crate) fn unpacked_tile_bytes(dtype: DType, cols: usize) -> usize {
    let per_block = match dtype {
        DType::Q4_1 | DType::Q5_1 => 10,
        DType::Q4_K | DType::Q5_K => K4_PER_BLOCK,
        DType::Q6_K => Q6K_PER_BLOCK,
        _ => 9,
    };
    cols / dtype.block_elems() * per_block * 64
}

macro_rules! legacy_kernel {
    ($name:ident, $layout:ident, $doc:literal, $size:expr, $qs:expr, $min:expr, $qh:expr, $bytes:expr) => {
        #[doc = concat!($doc, " layout.")]
        pub(crate) struct $layout;
        impl Legacy for $layout {
            const SIZE: usize = $size;
            const QS: usize = $qs;
            const MIN: bool = $min;
            const QH: Option<usize> = $qh;
            const BYTES: bool = $bytes;
        }

        #[doc = concat!($doc, " tiles.")]
        ///
        /// # Safety
        /// The CPU must have AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `w` must hold
        /// [`ROWS`] rows of this type's blocks, `p` a panel filled for this type from rows of
        /// as many elements.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        unsafe fn $name<const N: usize>(
            w: &[u8],
            row_bytes: usize,
            p: &Panel,
            out: &mut [[f32; ROWS]; N],
        ) {
            // SAFETY: this function's contract, with the layout of its type.
            unsafe { legacy::<$layout, N>(w, row_bytes, p, out) }
        }
    };
}

legacy_kernel!(q4_0, Q4_0Layout, "Q4_0", 18, 2, false, None, false);
legacy_kernel!(q4_1, Q4_1Layout, "Q4_1", 20, 4, true, None, false);
legacy_kernel!(q5_0, Q5_0Layout, "Q5_0", 22, 6, false, Some(2), false);
legacy_kernel!(q5_1, Q5_1Layout, "Q5_1", 24, 8, true, Some(4), false);
legacy_kernel!(q8_0, Q8_0Layout, "Q8_0", 34, 2, false, None, true);

/// The 6-bit scales and mins of Q4_K/Q5_K (12 bytes at byte 4), from three gathered dwords
/// per row: D0 = bytes 0..4, D1 = 4..8, D2 = 8..12 of the scales.
struct K4Scales {
    d0: __m512i,
    d1: __m512i,
    d2: __m512i,
}

impl K4Scales {
    /// The scale (`MIN = false`) or min of 32-group `j`, per row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    fn get<const MIN: bool>(&self, j: usize) -> __m512i {
        let byte = |v: __m512i, shift: usize, bits: i32| {
            let s = _mm512_srl_epi32(v, _mm_cvtsi32_si128(shift as i32));
            _mm512_and_si512(s, _mm512_set1_epi32((1 << bits) - 1))
        };
        let (low, high_src) = if MIN {
            (self.d1, self.d1)
        } else {
            (self.d0, self.d0)
        };
        if j < 4 {
            byte(low, 8 * j, 6)
        } else {
            let k = j - 4;
            let lo4 = byte(self.d2, 8 * k + if MIN { 4 } else { 0 }, 4);
            let hi2 = byte(high_src, 8 * k + 6, 2);
            _mm512_or_si512(lo4, _mm512_slli_epi32(hi2, 4))
        }
    }
}

/// A Q4_K/Q5_K block's scales, per row (lane): `d·sc_j` for the eight 32-groups, the mins
/// as i16 pairs (group 2p low, 2p + 1 high), and dmin.
pub(crate) struct K4Block {
    pub(crate) ds: [__m512; 8],
    pub(crate) pairs: [__m512i; 4],
    pub(crate) dmin: __m512,
}

/// The scales of the Q4_K/Q5_K block at byte `at` of every row.
///
/// # Safety
/// The CPU must have the features this function is compiled for; `w` holds [`ROWS`] rows at
/// `offsets` and bytes `at..at + 16` lie inside each row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn k4_scales(w: &[u8], offsets: __m512i, at: usize) -> K4Block {
    // SAFETY: the reads are bytes 0..16 of the block (d, dmin, scales), inside every row.
    let (dd, sc) = unsafe {
        (
            gather(w, offsets, at),
            K4Scales {
                d0: gather(w, offsets, at + 4),
                d1: gather(w, offsets, at + 8),
                d2: gather(w, offsets, at + 12),
            },
        )
    };
    let d = f16_half::<false>(dd);
    K4Block {
        ds: std::array::from_fn(|j| _mm512_mul_ps(_mm512_cvtepi32_ps(sc.get::<false>(j)), d)),
        pairs: std::array::from_fn(|pr| {
            let (a, b) = (sc.get::<true>(2 * pr), sc.get::<true>(2 * pr + 1));
            _mm512_or_si512(a, _mm512_slli_epi32::<16>(b))
        }),
        dmin: f16_half::<true>(dd),
    }
}

/// Calls `each(j, wt)` for the eight 32-groups of the Q4_K/Q5_K block at byte `at` of every
/// row, in order: `wt[k]` holds dword k of the group's unsigned values u (0..16, or 0..32 with
/// Q5_K's fifth bits at `FIFTH`), row r in lane r.
///
/// # Safety
/// As [`k4_scales`], for the whole block (`QS..QS + 128` and `FIFTH..FIFTH + 32`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn k4_groups<const QS: usize, const FIFTH: usize>(
    w: &[u8],
    row_bytes: usize,
    at: usize,
    mut each: impl FnMut(usize, &[__m512i; 8]),
) {
    let (nib, one) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x01));
    // SAFETY (all loads below): `QS..QS + 128` and `FIFTH..FIFTH + 32` of the block, inside
    // every row (the caller's contract).
    // Q5_K's fifth-bit bytes, transposed once for the block.
    let fifth = if FIFTH > 0 {
        unsafe {
            transpose8(
                rows16!(w, row_bytes, at + FIFTH),
                rows16!(w, row_bytes, at + FIFTH + 16),
            )
        }
    } else {
        [_mm512_setzero_si512(); 8]
    };
    for pair in 0..4 {
        let (lo, hi) = unsafe {
            (
                rows16!(w, row_bytes, at + QS + 32 * pair),
                rows16!(w, row_bytes, at + QS + 32 * pair + 16),
            )
        };
        // The pair's bytes transposed once; each group's nibbles are taken after (bytewise
        // operations commute with moving dwords).
        let raw = transpose8(lo, hi);
        for nibble in 0..2 {
            let j = 2 * pair + nibble;
            let shift = _mm_cvtsi32_si128(4 * nibble as i32);
            let jshift = _mm_cvtsi32_si128(j as i32);
            let wt: [__m512i; 8] = std::array::from_fn(|k| {
                let u = _mm512_and_si512(_mm512_srl_epi16(raw[k], shift), nib);
                if FIFTH > 0 {
                    let b = _mm512_and_si512(_mm512_srl_epi16(fifth[k], jshift), one);
                    _mm512_or_si512(u, _mm512_slli_epi16::<4>(b))
                } else {
                    u
                }
            });
            each(j, &wt);
        }
    }
}

/// Q4_K and Q5_K: per 32-group j, `w = d·sc_j·u − dmin·m_j`, blocks of `SIZE` bytes with
/// d/dmin at 0, scales at 4 and quants at `QS`; for Q5_K (`FIFTH > 0`) bit j of the 32 bytes
/// at `FIFTH` is group j's fifth bit.
///
/// # Safety
/// As [`legacy`], for this layout.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn k4<const SIZE: usize, const QS: usize, const FIFTH: usize, const N: usize>(
    w: &[u8],
    row_bytes: usize,
    p: &Panel,
    out: &mut [[f32; ROWS]; N],
) {
    let n = tile_blocks(w, row_bytes, SIZE, p);
    let offsets = row_offsets(row_bytes);
    let mut acc = [_mm512_setzero_ps(); N];
    for i in 0..n {
        let at = i * SIZE;
        prefetch_rows!(w, row_bytes, at, SIZE);
        // SAFETY: block i of every row is inside `w` (`tile_blocks`).
        let K4Block { ds, pairs, dmin } = unsafe { k4_scales(w, offsets, at) };
        let q: &[i8] = &p.qs[i * QK_K * N..][..QK_K * N];
        let mut block_acc = [_mm512_setzero_ps(); N];
        // SAFETY: as above.
        unsafe {
            k4_groups::<QS, FIFTH>(w, row_bytes, at, |j, wt| {
                let zero = [_mm512_setzero_si512(); N];
                let sums = dots!(zero, wt, 0..8, q, 32, 32 * N * j);
                each_token!(t => {
                    block_acc[t] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[t]), ds[j], block_acc[t]);
                });
            })
        };
        let dy: &[f32; N] = p.d[i * N..][..N].try_into().expect("a scale per token");
        let sums: &[i32] = &p.ints[i * 4 * N..][..4 * N];
        each_token!(t => {
            let y = _mm512_set1_ps(dy[t]);
            let mut mins = _mm512_setzero_si512();
            for (pr, &mp) in pairs.iter().enumerate() {
                mins = _mm512_dpwssd_epi32(mins, mp, _mm512_set1_epi32(sums[4 * t + pr]));
            }
            acc[t] = _mm512_fmadd_ps(block_acc[t], y, acc[t]);
            acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins), _mm512_mul_ps(dmin, y), acc[t]);
        });
    }
    store(out, acc);
}

/// Q4_K tiles.
///
/// # Safety
/// As the 32-weight kernels (`q4_0`), for Q4_K blocks and a Q4_K panel.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_k<const N: usize>(w: &[u8], row_bytes: usize, p: &Panel, out: &mut [[f32; ROWS]; N]) {
    // SAFETY: this function's contract, with Q4_K's layout.
    unsafe { k4::<144, 16, 0, N>(w, row_bytes, p, out) }
}

/// Q5_K tiles.
///
/// # Safety
/// As the 32-weight kernels (`q4_0`), for Q5_K blocks and a Q5_K panel.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q5_k<const N: usize>(w: &[u8], row_bytes: usize, p: &Panel, out: &mut [[f32; ROWS]; N]) {
    // SAFETY: this function's contract, with Q5_K's layout.
    unsafe { k4::<176, 48, 16, N>(w, row_bytes, p, out) }
}

/// `d · sc_g` of the Q6_K block at byte `at` of every row, for its sixteen 16-groups.
///
/// # Safety
/// The CPU must have the features this function is compiled for; `w` holds [`ROWS`] rows at
/// `offsets` and the block (210 bytes at `at`) lies inside each row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn q6k_scales(w: &[u8], offsets: __m512i, at: usize) -> [__m512; 16] {
    // SAFETY: the reads are the scales (192..208) and bytes 206..210 of the block.
    let d = f16_half::<true>(unsafe { gather(w, offsets, at + 206) });
    let scale_words: [__m512i; 4] =
        std::array::from_fn(|k| unsafe { gather(w, offsets, at + 192 + 4 * k) });
    std::array::from_fn(|g| {
        let v = _mm512_sll_epi32(
            scale_words[g / 4],
            _mm_cvtsi32_si128((24 - 8 * (g % 4)) as i32),
        );
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32::<24>(v)), d)
    })
}

/// Calls `each(c, wt)` for the eight 32-element chunks c of the Q6_K block at byte `at` of
/// every row, in the order the kernels add them (0, 2, 1, 3, 4, 6, 5, 7): `wt[k]` holds dword
/// k of the chunk's unsigned 6-bit values q, row r in lane r. Chunk c holds 16-groups 2c and
/// 2c + 1 (dwords 0..4 and 4..8).
///
/// # Safety
/// As [`q6k_scales`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn q6k_chunks(
    w: &[u8],
    row_bytes: usize,
    at: usize,
    mut each: impl FnMut(usize, &[__m512i; 8]),
) {
    let (nib, two) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x03));
    for half in 0..2 {
        // SAFETY (all loads below): ql (0..128) and qh (128..192) of the block, inside every
        // row (the caller's contract).
        // The high bits of all four parts of this half, loaded and transposed once; the bit
        // fields are taken after (bytewise operations commute with moving dwords).
        let hb = unsafe {
            transpose8(
                rows16!(w, row_bytes, at + 128 + 32 * half),
                rows16!(w, row_bytes, at + 128 + 32 * half + 16),
            )
        };
        for seg in 0..2 {
            // Parts seg and seg + 2 share their low-bit bytes (low and high nibbles).
            let l = unsafe {
                transpose8(
                    rows16!(w, row_bytes, at + 64 * half + 32 * seg),
                    rows16!(w, row_bytes, at + 64 * half + 32 * seg + 16),
                )
            };
            for part in [seg, seg + 2] {
                // Chunk (half, part): ql bytes 64·half + 32·(part % 2), nibble part / 2; high
                // bits 2·part of qh[32·half..].
                let lshift = _mm_cvtsi32_si128(4 * (part / 2) as i32);
                let hshift = _mm_cvtsi32_si128(2 * part as i32);
                let wt: [__m512i; 8] = std::array::from_fn(|k| {
                    let lo4 = _mm512_and_si512(_mm512_srl_epi16(l[k], lshift), nib);
                    let hi2 = _mm512_and_si512(_mm512_srl_epi16(hb[k], hshift), two);
                    _mm512_or_si512(lo4, _mm512_slli_epi16::<4>(hi2))
                });
                each(4 * half + part, &wt);
            }
        }
    }
}

/// Q6_K tiles: per 16-group g, `w = d·sc_g·(q − 32)`, q = 4 bits of `ql` and 2 of `qh`.
///
/// # Safety
/// As the 32-weight kernels (`q4_0`), for Q6_K blocks and a Q6_K panel.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6_k<const N: usize>(w: &[u8], row_bytes: usize, p: &Panel, out: &mut [[f32; ROWS]; N]) {
    const SIZE: usize = 210;
    let n = tile_blocks(w, row_bytes, SIZE, p);
    let offsets = row_offsets(row_bytes);
    let mut acc = [_mm512_setzero_ps(); N];
    for i in 0..n {
        let at = i * SIZE;
        prefetch_rows!(w, row_bytes, at, SIZE);
        // SAFETY: block i of every row is inside `w` (`tile_blocks`).
        let ds = unsafe { q6k_scales(w, offsets, at) };
        let q: &[i8] = &p.qs[i * QK_K * N..][..QK_K * N];
        let init: &[i32] = &p.ints[i * 16 * N..][..16 * N];
        let mut block_acc = [_mm512_setzero_ps(); N];
        // SAFETY: as above.
        unsafe {
            q6k_chunks(w, row_bytes, at, |c, wt| {
                let g = 2 * c;
                let (da, db) = (ds[g], ds[g + 1]);
                let at_q = 32 * N * c;
                let start = |g: usize| std::array::from_fn(|t| _mm512_set1_epi32(init[16 * t + g]));
                let sa = dots!(start(g), wt, 0..4, q, 32, at_q, transparent);
                each_token!(t => {
                    block_acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sa[t]), da, block_acc[t]);
                });
                let sb = dots!(start(g + 1), wt, 4..8, q, 32, at_q, transparent);
                each_token!(t => {
                    block_acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sb[t]), db, block_acc[t]);
                });
            })
        };
        let dy: &[f32; N] = p.d[i * N..][..N].try_into().expect("a scale per token");
        each_token!(t => {
            acc[t] = _mm512_fmadd_ps(block_acc[t], _mm512_set1_ps(dy[t]), acc[t]);
        });
    }
    store(out, acc);
}

/// Vectors per unpacked Q4_K/Q5_K block: eight per 32-group, its eight `d·sc` (f32), the
/// four min pairs, `dmin`.
const K4_PER_BLOCK: usize = 8 * 8 + 8 + 4 + 1;

/// [`unpack_legacy`] for Q4_K and Q5_K: per block what [`k4_scales`] and [`k4_groups`] give.
///
/// # Safety
/// As [`unpack_legacy`], for this layout.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack_k4<const SIZE: usize, const QS: usize, const FIFTH: usize>(
    w: &[u8],
    row_bytes: usize,
    dst: &mut Vec<__m512i>,
) {
    let n = unpack_bounds(w, row_bytes, SIZE);
    let offsets = row_offsets(row_bytes);
    dst.clear();
    dst.resize(n * K4_PER_BLOCK, _mm512_setzero_si512());
    for (i, blk) in dst.chunks_exact_mut(K4_PER_BLOCK).enumerate() {
        let at = i * SIZE;
        // SAFETY: block i lies inside every row (`unpack_bounds`).
        let K4Block { ds, pairs, dmin } = unsafe { k4_scales(w, offsets, at) };
        let (groups, rest) = blk.split_at_mut(64);
        // SAFETY: as above.
        unsafe {
            k4_groups::<QS, FIFTH>(w, row_bytes, at, |j, wt| {
                groups[8 * j..8 * j + 8].copy_from_slice(wt)
            })
        };
        for (r, d) in rest.iter_mut().zip(ds) {
            *r = _mm512_castps_si512(d);
        }
        rest[8..12].copy_from_slice(&pairs);
        rest[12] = _mm512_castps_si512(dmin);
    }
}

/// [`k4`] on a tile [`unpack_k4`] unpacked: the same operations in the same order.
///
/// # Safety
/// The CPU must have the features this function is compiled for.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn k4_unpacked<const N: usize>(
    u: &[__m512i],
    p: &Panel,
    ahead: &[u8],
    out: &mut [[f32; ROWS]; N],
) {
    let n = unpacked_blocks(u, K4_PER_BLOCK, p);
    let mut acc = [_mm512_setzero_ps(); N];
    for (i, blk) in u.chunks_exact(K4_PER_BLOCK).enumerate() {
        prefetch_share(ahead, i, n);
        let q: &[i8] = &p.qs[i * QK_K * N..][..QK_K * N];
        let mut block_acc = [_mm512_setzero_ps(); N];
        for j in 0..8 {
            let wt: &[__m512i; 8] = blk[8 * j..8 * j + 8].try_into().expect("a group");
            let dsj = _mm512_castsi512_ps(blk[64 + j]);
            let zero = [_mm512_setzero_si512(); N];
            let sums = dots!(zero, wt, 0..8, q, 32, 32 * N * j);
            each_token!(t => {
                block_acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[t]), dsj, block_acc[t]);
            });
        }
        let pairs = &blk[72..76];
        let dmin = _mm512_castsi512_ps(blk[76]);
        let dy: &[f32; N] = p.d[i * N..][..N].try_into().expect("a scale per token");
        let sums: &[i32] = &p.ints[i * 4 * N..][..4 * N];
        each_token!(t => {
            let y = _mm512_set1_ps(dy[t]);
            let mut mins = _mm512_setzero_si512();
            for (pr, &mp) in pairs.iter().enumerate() {
                mins = _mm512_dpwssd_epi32(mins, mp, _mm512_set1_epi32(sums[4 * t + pr]));
            }
            acc[t] = _mm512_fmadd_ps(block_acc[t], y, acc[t]);
            acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins), _mm512_mul_ps(dmin, y), acc[t]);
        });
    }
    store(out, acc);
}

/// Vectors per unpacked Q6_K block: eight per 32-chunk, then its sixteen `d·sc` (f32).
const Q6K_PER_BLOCK: usize = 8 * 8 + 16;

/// The order [`q6k_chunks`] gives the chunks in, which the kernels add in.
const Q6K_ORDER: [usize; 8] = [0, 2, 1, 3, 4, 6, 5, 7];

/// [`unpack_legacy`] for Q6_K: per block what [`q6k_scales`] and [`q6k_chunks`] give, each
/// chunk at its own index.
///
/// # Safety
/// As [`unpack_legacy`], for Q6_K blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack_q6k(w: &[u8], row_bytes: usize, dst: &mut Vec<__m512i>) {
    const SIZE: usize = 210;
    let n = unpack_bounds(w, row_bytes, SIZE);
    let offsets = row_offsets(row_bytes);
    dst.clear();
    dst.resize(n * Q6K_PER_BLOCK, _mm512_setzero_si512());
    for (i, blk) in dst.chunks_exact_mut(Q6K_PER_BLOCK).enumerate() {
        let at = i * SIZE;
        // SAFETY: block i lies inside every row (`unpack_bounds`).
        let ds = unsafe { q6k_scales(w, offsets, at) };
        let (chunks, scales) = blk.split_at_mut(64);
        // SAFETY: as above.
        unsafe {
            q6k_chunks(w, row_bytes, at, |c, wt| {
                chunks[8 * c..8 * c + 8].copy_from_slice(wt)
            })
        };
        for (r, d) in scales.iter_mut().zip(ds) {
            *r = _mm512_castps_si512(d);
        }
    }
}

/// [`q6_k`] on a tile [`unpack_q6k`] unpacked: the same operations in the same order.
///
/// # Safety
/// The CPU must have the features this function is compiled for.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6k_unpacked<const N: usize>(
    u: &[__m512i],
    p: &Panel,
    ahead: &[u8],
    out: &mut [[f32; ROWS]; N],
) {
    let n = unpacked_blocks(u, Q6K_PER_BLOCK, p);
    let mut acc = [_mm512_setzero_ps(); N];
    for (i, blk) in u.chunks_exact(Q6K_PER_BLOCK).enumerate() {
        prefetch_share(ahead, i, n);
        let q: &[i8] = &p.qs[i * QK_K * N..][..QK_K * N];
        let init: &[i32] = &p.ints[i * 16 * N..][..16 * N];
        let mut block_acc = [_mm512_setzero_ps(); N];
        for c in Q6K_ORDER {
            let wt: &[__m512i; 8] = blk[8 * c..8 * c + 8].try_into().expect("a chunk");
            let g = 2 * c;
            let (da, db) = (
                _mm512_castsi512_ps(blk[64 + g]),
                _mm512_castsi512_ps(blk[64 + g + 1]),
            );
            let at_q = 32 * N * c;
            let start = |g: usize| std::array::from_fn(|t| _mm512_set1_epi32(init[16 * t + g]));
            let sa = dots!(start(g), wt, 0..4, q, 32, at_q, transparent);
            each_token!(t => {
                block_acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sa[t]), da, block_acc[t]);
            });
            let sb = dots!(start(g + 1), wt, 4..8, q, 32, at_q, transparent);
            each_token!(t => {
                block_acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sb[t]), db, block_acc[t]);
            });
        }
        let dy: &[f32; N] = p.d[i * N..][..N].try_into().expect("a scale per token");
        each_token!(t => {
            acc[t] = _mm512_fmadd_ps(block_acc[t], _mm512_set1_ps(dy[t]), acc[t]);
        });
    }
    store(out, acc);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::blocks::f16_bytes;

    /// A panel of `tokens` simple activation rows of `cols` values, for the speed tests.
    pub(crate) fn speed_panel(dtype: DType, cols: usize, tokens: usize) -> Panel {
        let xs: Vec<QuantizedRow> = (0..tokens)
            .map(|t| {
                let x: Vec<f32> = (0..cols).map(|i| ((i + t) % 7) as f32 - 3.0).collect();
                QuantizedRow::for_weight(dtype, &x).unwrap()
            })
            .collect();
        let mut panel = Panel::default();
        panel.fill(dtype, &xs.iter().collect::<Vec<_>>());
        panel
    }

    /// ROWS random rows of `blocks` blocks each, back to back, with sane f16 scales.
    pub(crate) fn random_rows(dtype: DType, blocks: usize, seed: u32) -> Vec<u8> {
        random_tile(dtype, ROWS, blocks, seed)
    }

    /// `rows` random rows of `blocks` blocks each, back to back, with sane f16 scales.
    pub(crate) fn random_tile(dtype: DType, rows: usize, blocks: usize, seed: u32) -> Vec<u8> {
        let bytes = dtype.block_bytes();
        let mut w: Vec<u8> = (0..rows * blocks * bytes)
            .map(|i| ((i as u32).wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for (k, blk) in w.chunks_exact_mut(bytes).enumerate() {
            let d = ((k as u32 * 7 + seed) % 97) as f32 / 97.0 * 0.05 + 0.001;
            for (f, &off) in dtype.scale_fields().iter().enumerate() {
                let v = if f == 0 { d } else { -d * 4.0 };
                blk[off..off + 2].copy_from_slice(&f16_bytes(v));
            }
        }
        w
    }

    /// Every tile kernel against the scalar reference dot of each (row, token), on random
    /// weights and activations with outliers and all-zero blocks, for N tokens per tile.
    fn check_tiles<const N: usize>() {
        let isa = crate::dispatch::isa();
        for dtype in [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q5_1,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
        ] {
            let Some(kernel) = tile_kernel::<N>(isa, dtype) else {
                eprintln!("no tiled kernel for {dtype} on this CPU: skipped");
                continue;
            };
            for blocks in [1usize, 2, 3, 9] {
                let w = random_rows(dtype, blocks, blocks as u32);
                let row_bytes = w.len() / ROWS;
                let cols = blocks * dtype.block_elems();
                let xs: Vec<QuantizedRow> = (0..N)
                    .map(|t| {
                        let mut x: Vec<f32> = (0..cols)
                            .map(|i| {
                                (((i as u32 * 7919 + t as u32 * 31) % 2001) as f32 / 1000.0 - 1.0)
                                    * (1.0 + (i % 13) as f32)
                            })
                            .collect();
                        if t == 1 || N == 1 {
                            x[..dtype.block_elems()].iter_mut().for_each(|v| *v = 0.0);
                        }
                        QuantizedRow::for_weight(dtype, &x).unwrap()
                    })
                    .collect();
                let mut panel = Panel::default();
                panel.fill(dtype, &xs.iter().collect::<Vec<_>>());
                let mut out = [[0f32; ROWS]; N];
                // SAFETY: `tile_kernel` checked the CPU; rows and panel match `dtype`.
                unsafe { kernel(&w, row_bytes, &panel, &mut out) };
                let what = format!("N={N} blocks={blocks}");
                assert_matches_reference(dtype, &w, cols, &xs, |t, r| out[t][r], &what);
            }
        }
    }

    /// `got(t, r)` is the scalar reference dot of token t's activations with row r of `w`
    /// (rows of `cols` values back to back), to float rounding bounded by the row's magnitude.
    pub(crate) fn assert_matches_reference(
        dtype: DType,
        w: &[u8],
        cols: usize,
        xs: &[QuantizedRow],
        got: impl Fn(usize, usize) -> f32,
        what: &str,
    ) {
        let row_bytes = dtype.row_bytes(cols).unwrap();
        for (t, x) in xs.iter().enumerate() {
            for (r, row) in w.chunks_exact(row_bytes).enumerate() {
                let want = x.dot(dtype, row);
                let mut wf = vec![0f32; cols];
                crate::dot::dequantize_row(dtype, row, &mut wf);
                let magnitude: f32 = wf.iter().map(|v| v.abs() * 13.0).sum();
                let tol = 1e-5 * want.abs().max(1.0) + 1e-6 * magnitude;
                let got = got(t, r);
                assert!(
                    (got - want).abs() <= tol,
                    "{dtype} {what} token {t} row {r}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn tiles_match_the_scalar_reference() {
        check_tiles::<TOKENS>();
        check_tiles::<8>();
        check_tiles::<4>();
    }

    /// A tile unpacked once gives, panel after panel, what the kernel that unpacks it each time
    /// gives, bit for bit (the same operations in the same order).
    #[test]
    fn unpacked_tiles_match_the_tile_kernels() {
        let isa = crate::dispatch::isa();
        for dtype in [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q5_1,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
        ] {
            let (Some(tile), Some((unpack, unpacked))) = (
                tile_kernel::<TOKENS>(isa, dtype),
                unpacked_kernels::<TOKENS>(isa, dtype),
            ) else {
                eprintln!("no tiled kernel for {dtype} on this CPU: skipped");
                continue;
            };
            for blocks in [1usize, 3, 9] {
                let w = random_rows(dtype, blocks, 7 + blocks as u32);
                let row_bytes = w.len() / ROWS;
                let cols = blocks * dtype.block_elems();
                let mut u = Vec::new();
                // SAFETY: the kernels are for this CPU; `w` is ROWS rows of `dtype` blocks.
                unsafe { unpack(&w, row_bytes, &mut u) };
                assert_eq!(u.len() * 64, unpacked_tile_bytes(dtype, cols));
                for shift in 0..3 {
                    let xs: Vec<QuantizedRow> = (0..TOKENS)
                        .map(|t| {
                            let x: Vec<f32> = (0..cols)
                                .map(|i| ((i * 37 + t * 11 + shift * 5) % 23) as f32 / 7.0 - 1.5)
                                .collect();
                            QuantizedRow::for_weight(dtype, &x).unwrap()
                        })
                        .collect();
                    let mut panel = Panel::default();
                    panel.fill(dtype, &xs.iter().collect::<Vec<_>>());
                    let (mut want, mut got) = ([[0f32; ROWS]; TOKENS], [[0f32; ROWS]; TOKENS]);
                    // SAFETY: as above; the panel was filled for `dtype` from rows as long.
                    unsafe {
                        tile(&w, row_bytes, &panel, &mut want);
                        unpacked(&u, &panel, &w, &mut got);
                    }
                    assert_eq!(got, want, "{dtype}, {blocks} blocks");
                }
            }
        }
    }

    #[test]
    #[ignore = "a speed probe: [COLS=4096 TILES=1] cargo test --release -p bora-kernels tile_speed -- --ignored --nocapture"]
    fn tile_speed() {
        let isa = crate::dispatch::isa();
        for dtype in [DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q6_K] {
            let Some(k) = tile_kernel::<TOKENS>(isa, dtype) else {
                continue;
            };
            let cols: usize = std::env::var("COLS").map_or(4096, |v| v.parse().unwrap());
            let tiles: usize = std::env::var("TILES").map_or(1, |v| v.parse().unwrap());
            let ws: Vec<Vec<u8>> = (0..tiles)
                .map(|k| random_rows(dtype, cols / dtype.block_elems(), k as u32))
                .collect();
            let panel = speed_panel(dtype, cols, TOKENS);
            let mut out = [[0f32; ROWS]; TOKENS];
            let iters = 4_000_000 / cols;
            let t0 = std::time::Instant::now();
            for it in 0..iters {
                let w = &ws[it % tiles];
                // SAFETY: as in the test above.
                unsafe { k(w, w.len() / ROWS, &panel, &mut out) };
                std::hint::black_box(&out);
            }
            let s = t0.elapsed().as_secs_f64();
            let macs = (iters * ROWS * TOKENS * cols) as f64;
            println!("{dtype}: {:.1} GMAC/s on one thread", macs / s / 1e9);
            if let Some((unpack, unpacked)) = unpacked_kernels::<TOKENS>(isa, dtype) {
                let us: Vec<Vec<__m512i>> = ws
                    .iter()
                    .map(|w| {
                        let mut u = Vec::new();
                        // SAFETY: as above.
                        unsafe { unpack(w, w.len() / ROWS, &mut u) };
                        u
                    })
                    .collect();
                let t0 = std::time::Instant::now();
                for it in 0..iters {
                    // SAFETY: as above.
                    unsafe { unpacked(&us[it % tiles], &panel, &[], &mut out) };
                    std::hint::black_box(&out);
                }
                let s = t0.elapsed().as_secs_f64();
                println!(
                    "{dtype} unpacked once: {:.1} GMAC/s on one thread",
                    macs / s / 1e9
                );
            }
        }
    }
}
