//! Decode's matrix × vector (one token) on AVX-512: four weight rows at a time.
//!
//! A row's blocks are added into its eight f32 lanes one after the other (llama.cpp's order,
//! which the greedy-parity tests follow), so each block's FMA waits for the previous one:
//! one row at a time runs at the FMA's latency, about four cycles a block, well short of the
//! memory stream. Four rows are four independent chains. Each row's terms and their order
//! are the one-row kernel's ([`crate::x86`]), so every result is equal to it to the bit.
//!
//! The rest of a block's work is trimmed too: the eight blocks' f16 scales come out of two
//! 64-byte loads and one byte permute (VBMI) instead of eight word inserts, nibbles are split
//! by a per-lane shift of a broadcast load (no lane insert), and quants are read through raw
//! pointers (bounds checks were most of the one-row kernel's instructions). Each row prefetches
//! the same bytes four rows on, which the next call reads.
//!
//! Measured (Mistral-7B-shaped files, 2 threads, `bora bench -p 16`, alternating with the
//! one-row kernels): Q4_0 3.85 vs 3.47 tok/s, Q8_0 1.62/1.44 vs 1.36/1.37 tok/s.

use std::arch::x86_64::*;

use crate::act_quant::{Q8Blocks, QuantizedRow};
use crate::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};
use crate::dispatch::{has_vnni, Isa, Level};
use crate::x86::vnni::{h, hsum, load32, load8_ps, nibbles, q8_0_rows, q8_1_rows};
use crate::DType;

/// Weight rows per call.
pub(crate) const ROWS: usize = 4;

/// `out[r] = row r · x` for [`ROWS`] consecutive rows of `row_bytes` bytes each in `rows`.
pub(crate) type RowsDot = unsafe fn(&[u8], usize, &QuantizedRow, &mut [f32; ROWS]);

/// The four-row kernel for `dtype`, if this CPU has AVX-512 with VNNI and VBMI.
pub(crate) fn rows_dot(isa: Isa, dtype: DType) -> Option<RowsDot> {
    if isa.level() < Level::Avx512 || !has_vnni() || !has_vbmi() {
        return None;
    }
    match dtype {
        DType::Q4_0 => Some(q4_0),
        DType::Q4_1 => Some(q4_1),
        DType::Q8_0 => Some(q8_0),
        _ => None,
    }
}

fn has_vbmi() -> bool {
    static VBMI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VBMI.get_or_init(|| is_x86_feature_detected!("avx512vbmi"))
}

/// Where a 32-weight type keeps its fields, for gathering eight blocks' scales.
struct Layout {
    /// Bytes per block.
    size: usize,
    /// Offset of the quants in a block.
    qs: usize,
    /// Offset of the second f16 (Q4_1's `m`), if any; `d` is at 0.
    second: Option<usize>,
    /// Start of the second 64-byte window over a group of eight blocks (the first is at 0):
    /// together they cover every scale byte and stay inside the group.
    window: usize,
}

const Q4_0: Layout = Layout {
    size: 18,
    qs: 2,
    second: None,
    window: 64,
};

const Q4_1: Layout = Layout {
    size: 20,
    qs: 4,
    second: Some(2),
    window: 80,
};

/// The `vpermt2b` index gathering `blocks` blocks' `d` into bytes 0..2·blocks and their
/// second f16 from byte 16 on, from windows at 0 and `l.window` of the group.
const fn scale_index(l: &Layout, blocks: usize) -> [u8; 64] {
    let mut idx = [0u8; 64];
    let fields = if l.second.is_some() { 2 } else { 1 };
    let mut f = 0;
    while f < fields {
        let off = match (f, l.second) {
            (1, Some(m)) => m,
            _ => 0,
        };
        let mut k = 0;
        while k < 2 * blocks {
            // Byte k of the field: block k / 2, byte k % 2.
            let p = l.size * (k / 2) + off + k % 2;
            idx[16 * f + k] = if p < 64 {
                p as u8
            } else {
                assert!(
                    p >= l.window && p < l.window + 64,
                    "a scale outside the windows"
                );
                (64 + p - l.window) as u8
            };
            k += 1;
        }
        f += 1;
    }
    idx
}

const Q4_0_INDEX: [u8; 64] = scale_index(&Q4_0, 8);
const Q4_1_INDEX: [u8; 64] = scale_index(&Q4_1, 8);

/// Q8_0's 34-byte blocks: eight span 272 bytes, so scales are gathered four blocks (136
/// bytes, windows at 0 and 64) at a time.
const Q8_0: Layout = Layout {
    size: 34,
    qs: 2,
    second: None,
    window: 64,
};
const Q8_0_INDEX: [u8; 64] = scale_index(&Q8_0, 4);

/// The activation-side values the offset kernels read.
trait OffsetRow {
    fn parts(&self) -> (&[f32], &[f32], &[[i8; 32]]);
}

impl<A> OffsetRow for Q8Blocks<A> {
    fn parts(&self) -> (&[f32], &[f32], &[[i8; 32]]) {
        (&self.d, &self.s, &self.qs)
    }
}

/// The loop the kernels share, over the whole groups of eight blocks: `scales(r, group, i0)`
/// gives row r's eight per-block factors for the group starting at block i0 (doing any other
/// per-group work of the type); then, block by block in order, `acc[r] += factor ·
/// product(quants, x)`, with `product` the block's i32 lane sums from a pointer to its quants.
/// Each group is prefetched four rows on, where the next call reads.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn whole_groups(
    l: &Layout,
    rows: &[u8],
    row_bytes: usize,
    xq: &[[i8; 32]],
    acc: &mut [__m256; ROWS],
    mut scales: impl FnMut(usize, &[u8], usize) -> __m256,
    product: impl Fn(*const u8, __m256i) -> __m256i,
) {
    let n = row_bytes / l.size;
    assert!(n * l.size == row_bytes && rows.len() >= ROWS * row_bytes && xq.len() >= n);
    let base = rows.as_ptr();
    for i0 in (0..n / 8 * 8).step_by(8) {
        let f: [__m256; ROWS] = std::array::from_fn(|r| {
            let group = &rows[r * row_bytes + i0 * l.size..][..8 * l.size];
            let ahead = group.as_ptr().wrapping_add(ROWS * row_bytes) as *const i8;
            for line in (0..8 * l.size).step_by(64).chain([8 * l.size - 1]) {
                // A hint: it never faults, whatever the address.
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(line));
            }
            scales(r, group, i0)
        });
        for k in 0..8 {
            let lane = _mm256_set1_epi32(k as i32);
            let x = load32(&xq[i0 + k]);
            let at = (i0 + k) * l.size + l.qs;
            for r in 0..ROWS {
                // Block i0 + k < n of row r < ROWS: its quants lie inside `rows` (asserted
                // above: ROWS rows of n blocks). A raw pointer, as bounds checks here were
                // most of the one-row kernel's instructions; `product` loads from it.
                let q = base.wrapping_add(r * row_bytes + at);
                let p = _mm256_cvtepi32_ps(product(q, x));
                acc[r] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(f[r], lane), p, acc[r]);
            }
        }
    }
}

/// Four rows of an offset type (Q4_0: `offset = Some(8)`, Q4_1: `None`, `m` from the block)
/// against one 8-bit row: per row, the one-row kernel's `offset_n` to the operation.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn offset_rows(
    l: &Layout,
    index: &[u8; 64],
    rows: &[u8],
    row_bytes: usize,
    x: &impl OffsetRow,
    offset: Option<f32>,
    out: &mut [f32; ROWS],
) {
    let n = row_bytes / l.size;
    assert!(n * l.size == row_bytes && rows.len() >= ROWS * row_bytes);
    let rows = &rows[..ROWS * row_bytes];
    let (d, s, xq) = x.parts();
    // Equal lengths up front let the compiler drop the per-block bounds checks.
    let (d, s, xq) = (&d[..n], &s[..n], &xq[..n]);
    // SAFETY: the index array is 64 readable bytes; the load is unaligned.
    let idx = unsafe { _mm512_loadu_si512(index.as_ptr() as *const __m512i) };
    let nib = _mm256_set1_epi8(0x0F);
    let high = _mm256_set_epi64x(0x0004_0004_0004_0004, 0x0004_0004_0004_0004, 0, 0);
    let mut acc = [_mm256_setzero_ps(); ROWS];
    let mut acc_c = [_mm256_setzero_ps(); ROWS];
    let mut tail_c = [0f32; ROWS];
    let scales = |r: usize, group: &[u8], i0: usize| {
        let (lo, hi) = (&group[..64], &group[l.window..l.window + 64]);
        // SAFETY: `lo` and `hi` are 64 readable bytes each; the loads are unaligned.
        let (lo, hi) = unsafe {
            (
                _mm512_loadu_si512(lo.as_ptr() as *const __m512i),
                _mm512_loadu_si512(hi.as_ptr() as *const __m512i),
            )
        };
        let halves = _mm512_permutex2var_epi8(lo, idx, hi);
        let dw = _mm256_cvtph_ps(_mm512_castsi512_si128(halves));
        let cw = match offset {
            Some(o) => _mm256_mul_ps(dw, _mm256_set1_ps(-o)),
            None => _mm256_cvtph_ps(_mm512_extracti32x4_epi32::<1>(halves)),
        };
        acc_c[r] = _mm256_fmadd_ps(cw, load8_ps(&s[i0..i0 + 8]), acc_c[r]);
        _mm256_mul_ps(dw, load8_ps(&d[i0..i0 + 8]))
    };
    let product = |q: *const u8, x| {
        // SAFETY: `whole_groups` passes a pointer to a block's 16 quant bytes inside `rows`;
        // the load is unaligned.
        let q = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(q as *const __m128i)) };
        // Low nibbles in the low half, high nibbles in the high half: `nibbles`.
        let u = _mm256_and_si256(_mm256_srlv_epi16(q, high), nib);
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x)
    };
    whole_groups(l, rows, row_bytes, xq, &mut acc, scales, product);
    let whole = n / 8 * 8;
    for i in whole..n {
        for r in 0..ROWS {
            let at = r * row_bytes + i * l.size;
            let b = &rows[at..at + l.size];
            let q: &[u8; 16] = b[l.qs..l.qs + 16].try_into().expect("16 bytes");
            let dw = h([b[0], b[1]]);
            let cw = match (offset, l.second) {
                (Some(o), _) => -o * dw,
                (None, Some(m)) => h([b[m], b[m + 1]]),
                (None, None) => 0.0,
            };
            let p = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(
                _mm256_setzero_si256(),
                nibbles(q),
                load32(&xq[i]),
            ));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * d[i]), p, acc[r]);
            tail_c[r] += cw * s[i];
        }
    }
    for r in 0..ROWS {
        out[r] = hsum(acc[r]) + hsum(acc_c[r]) + tail_c[r];
    }
}

/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA and F16C (as [`rows_dot`] checks);
/// `rows` must hold [`ROWS`] rows of `row_bytes` bytes of Q4_0 blocks, `x` a Q8_0 row of as
/// many blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn q4_0(rows: &[u8], row_bytes: usize, x: &QuantizedRow, out: &mut [f32; ROWS]) {
    let [x]: [&Q8Blocks<BlockQ8_0>; 1] = q8_0_rows::<1>(std::slice::from_ref(x));
    debug_assert_eq!(std::mem::size_of::<BlockQ4_0>(), Q4_0.size);
    offset_rows(&Q4_0, &Q4_0_INDEX, rows, row_bytes, x, Some(8.0), out)
}

/// # Safety
/// As [`q4_0`], for Q4_1 rows and a Q8_1 row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn q4_1(rows: &[u8], row_bytes: usize, x: &QuantizedRow, out: &mut [f32; ROWS]) {
    let [x]: [&Q8Blocks<BlockQ8_1>; 1] = q8_1_rows::<1>(std::slice::from_ref(x));
    debug_assert_eq!(std::mem::size_of::<BlockQ4_1>(), Q4_1.size);
    offset_rows(&Q4_1, &Q4_1_INDEX, rows, row_bytes, x, None, out)
}

/// # Safety
/// As [`q4_0`], for Q8_0 rows and a Q8_0 row: per row, the one-row kernel's `q8_0_n`
/// (the sign trick for signed × signed) to the operation.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn q8_0(rows: &[u8], row_bytes: usize, x: &QuantizedRow, out: &mut [f32; ROWS]) {
    q8_0_rows_dot(rows, row_bytes, x, out)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn q8_0_rows_dot(rows: &[u8], row_bytes: usize, x: &QuantizedRow, out: &mut [f32; ROWS]) {
    let l = &Q8_0;
    debug_assert_eq!(std::mem::size_of::<BlockQ8_0>(), l.size);
    let [x]: [&Q8Blocks<BlockQ8_0>; 1] = q8_0_rows::<1>(std::slice::from_ref(x));
    let n = row_bytes / l.size;
    assert!(n * l.size == row_bytes && rows.len() >= ROWS * row_bytes);
    let rows = &rows[..ROWS * row_bytes];
    let (d, xq) = (&x.d[..n], &x.qs[..n]);
    // SAFETY: the index array is 64 readable bytes; the load is unaligned.
    let idx = unsafe { _mm512_loadu_si512(Q8_0_INDEX.as_ptr() as *const __m512i) };
    let load64 = |b: &[u8]| {
        let b: &[u8; 64] = b[..64].try_into().expect("64 bytes");
        // SAFETY: `b` is 64 readable bytes; the load is unaligned.
        unsafe { _mm512_loadu_si512(b.as_ptr() as *const __m512i) }
    };
    let mut acc = [_mm256_setzero_ps(); ROWS];
    let scales = |_: usize, group: &[u8], i0: usize| {
        let half = |h: usize| {
            let g = &group[136 * h..];
            _mm512_castsi512_si128(_mm512_permutex2var_epi8(load64(g), idx, load64(&g[64..])))
        };
        let dw = _mm256_cvtph_ps(_mm_unpacklo_epi64(half(0), half(1)));
        _mm256_mul_ps(dw, load8_ps(&d[i0..i0 + 8]))
    };
    let product = |q: *const u8, x| {
        // SAFETY: `whole_groups` passes a pointer to a block's 32 quant bytes inside `rows`;
        // the load is unaligned.
        let w = unsafe { _mm256_loadu_si256(q as *const __m256i) };
        // |w| and x carrying w's sign: the u8·i8 form of a signed product.
        _mm256_dpbusd_epi32(
            _mm256_setzero_si256(),
            _mm256_sign_epi8(w, w),
            _mm256_sign_epi8(x, w),
        )
    };
    whole_groups(l, rows, row_bytes, xq, &mut acc, scales, product);
    let whole = n / 8 * 8;
    for i in whole..n {
        let x = load32(&xq[i]);
        for r in 0..ROWS {
            let b = &rows[r * row_bytes + i * l.size..][..l.size];
            let w: &[i8; 32] = bytemuck::cast_slice(&b[l.qs..])
                .try_into()
                .expect("32 quants");
            let w = load32(w);
            let sum = _mm256_dpbusd_epi32(
                _mm256_setzero_si256(),
                _mm256_sign_epi8(w, w),
                _mm256_sign_epi8(x, w),
            );
            let f = h([b[0], b[1]]) * d[i];
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(f), _mm256_cvtepi32_ps(sum), acc[r]);
        }
    }
    for r in 0..ROWS {
        out[r] = hsum(acc[r]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86::tests::random_row;

    /// Four rows at once give, bit for bit, what the one-row kernel gives for each, and stay
    /// within rounding of the scalar reference: whole groups of eight blocks and a tail.
    #[test]
    fn four_rows_match_the_one_row_kernel() {
        let isa = crate::dispatch::isa();
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q8_0] {
            let Some(four) = rows_dot(isa, dtype) else {
                eprintln!("skipped {dtype}: no AVX-512 VNNI/VBMI here");
                continue;
            };
            let (one, _) = crate::x86::row_dots(isa, dtype).expect("a one-row kernel");
            for blocks in [8usize, 13, 40] {
                let rows: Vec<u8> = (0..ROWS as u32)
                    .flat_map(|r| random_row(dtype, blocks, 11 + 5 * r))
                    .collect();
                let rb = rows.len() / ROWS;
                let x: Vec<f32> = (0..blocks * 32)
                    .map(|i| ((i * 7919) % 211) as f32 / 105.0 - 1.0)
                    .collect();
                let xq = QuantizedRow::for_weight(dtype, &x).unwrap();
                let mut out = [0f32; ROWS];
                // SAFETY: `rows_dot` checked the CPU; `rows` is ROWS rows of `dtype` blocks
                // and `xq` was quantized for `dtype` with as many blocks.
                unsafe { four(&rows, rb, &xq, &mut out) };
                for (r, got) in out.iter().enumerate() {
                    let row = &rows[r * rb..(r + 1) * rb];
                    // SAFETY: as above, one row.
                    let want = unsafe { one(row, &xq) };
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{dtype} {blocks} blocks row {r}"
                    );
                    let reference = xq.dot(dtype, row);
                    assert!(
                        (got - reference).abs() <= 1e-4 * reference.abs().max(1.0),
                        "{dtype} {blocks} blocks row {r}: {got} vs reference {reference}"
                    );
                }
            }
        }
    }
}
