//! Decode's matrix × vector (one activation row) on AVX-512 with VNNI and VBMI, for Q4_0 and
//! Q8_0 weights here and Q4_K and Q6_K in [`kquants`]; on AVX2 alone, for those four types and
//! Q5_K in [`avx2`].
//!
//! A decode step reads every weight once, so these kernels must keep up with memory: a core
//! streams 13–14 GB/s here, about 1.3 ns per 18-byte Q4_0 block, and arithmetic that does not
//! fit in that time slows the stream. The 256-bit row kernels ([`crate::x86`]) spend 1.5 ns
//! per Q4_0 block from L3 (`matvec_speed Q4_0 8192 4096`, one thread): every block pays for
//! its own nibble unpacking, i32 → f32 conversion, scale conversion and FMA on eight lanes.
//! These spend 0.9–1.1, working on whole 512-bit registers, four Q4_0 or two Q8_0 blocks at a
//! time:
//!
//! - a group's bytes are loaded as they lie (two overlapping 64-byte loads) and one `vpermt2b`
//!   gathers every block's quants, leaving the f16 scales behind; one `vpermw` puts each
//!   block's scale in the lanes its sums occupy;
//! - the activation row is laid out once per matrix ([`DecodeRow`]) to meet the weights as
//!   that gather leaves them (Q4_0: four blocks' low nibbles, then their high nibbles), with
//!   each lane's share of the weights' offset (Q4_0's −8; the +128 that makes Q8_0's signed
//!   quants the unsigned operand of `vpdpbusd`, an XOR) precomputed as the i32 the lane's sum
//!   starts from, and each lane's activation scale;
//! - per group, then: the gather, the integer dot products, one conversion and one FMA of
//!   sixteen lanes.
//!
//! The integer sums are exact whatever their grouping; the f32 additions run in another order
//! than the 256-bit kernels' (sixteen lanes, not eight), so results agree with the scalar
//! reference to float rounding, which the tests bound.

use std::arch::x86_64::*;
use std::sync::OnceLock;

mod avx2;
mod kquants;

use crate::act_quant::{Q8Blocks, QuantizedRow};
use crate::blocks::{f16_le, BlockQ8_0};
use crate::dispatch::{Isa, Level};
use crate::DType;

/// How far ahead of the block being read its row is prefetched into L2, and into L1: the
/// distances the 256-bit row kernels use (`crate::x86`), measured there.
const FAR_BYTES: usize = 4096;
const NEAR_BYTES: usize = 512;

/// 64 bytes on a cache line of their own, so every activation load is aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line<T: Copy>([T; 16]);

/// 64 quants on a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Quants([i8; 64]);

/// One Q8_0 activation row laid out for one weight type's kernel here: per register of
/// weight quants, the 64 activation quants they meet (in their order), and per i32 lane the
/// weights' offset term and the activation block's scale. Blocks past the last whole group
/// keep their natural order, for the per-block tail.
#[derive(Default)]
pub(crate) struct DecodeRow {
    dtype: Option<DType>,
    /// Laid out for the AVX2 kernels ([`avx2`]) rather than the AVX-512 ones.
    avx2: bool,
    blocks: usize,
    qs: Vec<Quants>,
    offsets: Vec<Line<i32>>,
    scales: Vec<Line<f32>>,
    tail: Vec<([i8; 32], f32)>,
    /// The k-quants: the row's Q8_K blocks ([`kquants`]).
    k: Vec<kquants::KAct>,
}

/// Blocks per group: Q4_0 packs four blocks' 128 quants into one register of 64 bytes (two
/// nibbles a byte), Q8_0 two blocks' 64.
fn group_blocks(dtype: DType) -> usize {
    match dtype {
        DType::Q4_0 => 4,
        _ => 2,
    }
}

impl DecodeRow {
    /// Lays out `x` (quantized for `dtype`) for the kernel [`kernel`] gives at `isa`.
    pub(crate) fn fill(&mut self, isa: Isa, dtype: DType, x: &QuantizedRow) {
        self.dtype = Some(dtype);
        self.avx2 = !wide(isa);
        let x = match x {
            QuantizedRow::Q8_0(x) => x,
            QuantizedRow::Q8K(x) => return kquants::fill(dtype, x, &mut self.k),
            QuantizedRow::Q8_1(_) => unreachable!("no decode kernel here meets Q8_1 activations"),
        };
        self.blocks = x.blocks.len();
        self.qs.clear();
        self.offsets.clear();
        self.scales.clear();
        self.tail.clear();
        let per = if self.avx2 {
            avx2::GROUP_BLOCKS
        } else {
            group_blocks(dtype)
        };
        let whole = self.blocks / per * per;
        for g in (0..whole).step_by(per) {
            match dtype {
                DType::Q4_0 if self.avx2 => {
                    avx2::push_q4_0_group(x, g / per, &mut self.qs, &mut self.scales)
                }
                _ if self.avx2 => avx2::push_q8_0_group(x, g / per, &mut self.qs, &mut self.scales),
                DType::Q4_0 => self.push_q4_0_group(x, g),
                _ => self.push_q8_0_group(x, g),
            }
        }
        for (b, d) in x.blocks[whole..].iter().zip(&x.d[whole..]) {
            self.tail.push((b.qs, *d));
        }
    }

    /// Blocks g..g+4: the first sixteen quants of each (what the low nibbles meet), then the
    /// last sixteen; lane 4b+i sums block b's quants 4i..4i+3 and 16+4i..16+4i+3.
    fn push_q4_0_group(&mut self, x: &Q8Blocks<BlockQ8_0>, g: usize) {
        let blocks = &x.blocks[g..g + 4];
        let (mut lo, mut hi) = ([0i8; 64], [0i8; 64]);
        let (mut off, mut sc) = ([0i32; 16], [0f32; 16]);
        for (b, blk) in blocks.iter().enumerate() {
            lo[16 * b..16 * b + 16].copy_from_slice(&blk.qs[..16]);
            hi[16 * b..16 * b + 16].copy_from_slice(&blk.qs[16..]);
            for i in 0..4 {
                let sum: i32 = (0..4)
                    .map(|k| blk.qs[4 * i + k] as i32 + blk.qs[16 + 4 * i + k] as i32)
                    .sum();
                off[4 * b + i] = -8 * sum;
                sc[4 * b + i] = x.d[g + b];
            }
        }
        self.qs.push(Quants(lo));
        self.qs.push(Quants(hi));
        self.offsets.push(Line(off));
        self.scales.push(Line(sc));
    }

    /// Blocks g, g+1 in order; lane 8b+i sums block b's quants 4i..4i+3.
    fn push_q8_0_group(&mut self, x: &Q8Blocks<BlockQ8_0>, g: usize) {
        let mut qs = [0i8; 64];
        let (mut off, mut sc) = ([0i32; 16], [0f32; 16]);
        for (b, blk) in x.blocks[g..g + 2].iter().enumerate() {
            qs[32 * b..32 * b + 32].copy_from_slice(&blk.qs);
            for i in 0..8 {
                let sum: i32 = blk.qs[4 * i..4 * i + 4].iter().map(|&q| q as i32).sum();
                off[8 * b + i] = -128 * sum;
                sc[8 * b + i] = x.d[g + b];
            }
        }
        self.qs.push(Quants(qs));
        self.offsets.push(Line(off));
        self.scales.push(Line(sc));
    }
}

/// `out[j] = row j of `rows` · x`, for `out.len()` consecutive rows of `row_bytes` bytes.
pub(crate) type RowsKernel = unsafe fn(&[u8], usize, &DecodeRow, &mut [f32]);

/// Whether the CPU has what these kernels use beyond AVX-512 F/BW: VNNI and VBMI.
fn has_vnni_vbmi() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vbmi")
    })
}

/// Whether the AVX-512 kernels run at `isa` on this CPU.
fn wide(isa: Isa) -> bool {
    isa.level() >= Level::Avx512 && has_vnni_vbmi()
}

/// The kernel for `dtype`, where this CPU (at `isa`) has one.
pub(crate) fn kernel(isa: Isa, dtype: DType) -> Option<RowsKernel> {
    if wide(isa) {
        match dtype {
            DType::Q4_0 => return Some(q4_0_rows),
            DType::Q8_0 => return Some(q8_0_rows),
            DType::Q4_K => return Some(kquants::q4_k_rows),
            DType::Q6_K => return Some(kquants::q6_k_rows),
            _ => {}
        }
    }
    // The AVX2 kernels, also for the k-quants that have no 512-bit kernel on CPUs that have
    // one for others: they meet the same activation layout ([`kquants::fill`] does not
    // depend on the instruction set), and the row kernels were 2–3× slower.
    if isa.level() < Level::Avx2 {
        return None;
    }
    match dtype {
        DType::Q4_0 => Some(avx2::q4_0_rows),
        DType::Q8_0 => Some(avx2::q8_0_rows),
        DType::Q4_K => Some(avx2::q4_k_rows),
        DType::Q5_K => Some(avx2::q5_k_rows),
        DType::Q6_K => Some(avx2::q6_k_rows),
        DType::Q3_K => Some(avx2::q3_k_rows),
        DType::Q2_K => Some(avx2::q2_k_rows),
        _ => None,
    }
}

/// `vpermt2b` indices gathering the quants of a group of `block`-byte blocks (a 2-byte scale,
/// then `quants` bytes each) loaded as `a` = bytes 0..64 and `b` = bytes `shift`..64 + shift
/// (b's byte k read as 64 + k): block b's quant bytes in bytes quants·b.. of the result.
const fn quant_gather(block: usize, quants: usize, shift: usize) -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let byte = block * (i / quants) + 2 + i % quants;
        idx[i] = if byte < 64 { byte } else { 64 + byte - shift } as u8;
        i += 1;
    }
    idx
}

/// `vpermw` indices putting block b's f16 scale (word block·b/2 of `a`) in the `lanes` i32
/// lanes its sums occupy (the low 16 words of the result; one word per lane).
const fn scale_spread(block: usize, lanes: usize) -> [u16; 32] {
    let mut idx = [0u16; 32];
    let mut i = 0;
    while i < 16 {
        idx[i] = (block / 2 * (i / lanes)) as u16;
        i += 1;
    }
    idx
}

/// Q4_0: four 18-byte blocks (72 bytes: the second load at byte 8), 16 quant bytes each,
/// each block's sums in four lanes.
const Q4_0_QUANTS: [u8; 64] = quant_gather(18, 16, 8);
const Q4_0_SCALES: [u16; 32] = scale_spread(18, 4);
/// Q8_0: two 34-byte blocks (68 bytes: the second load at byte 4), 32 quants each, each
/// block's sums in eight lanes.
const Q8_0_QUANTS: [u8; 64] = quant_gather(34, 32, 4);
const Q8_0_SCALES: [u16; 32] = scale_spread(34, 8);

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
#[inline]
fn load_idx<T>(idx: &[T]) -> __m512i {
    assert_eq!(std::mem::size_of_val(idx), 64);
    // SAFETY: `idx` is 64 readable bytes (checked); the load is unaligned.
    unsafe { _mm512_loadu_si512(idx.as_ptr() as *const __m512i) }
}

/// Asks for the bytes `FAR_BYTES` past `p` into L2 and `NEAR_BYTES` past it into L1. A
/// prefetch is a hint: it never faults, whatever the address.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
#[inline]
fn prefetch(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(FAR_BYTES) as *const i8);
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(NEAR_BYTES) as *const i8);
}

/// # Safety
/// The CPU must have AVX-512 F/BW, VNNI and VBMI; `rows` must hold `out.len()` rows of
/// `row_bytes` bytes of Q4_0 blocks, `x` laid out for Q4_0 with as many blocks as a row.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
unsafe fn q4_0_rows(rows: &[u8], row_bytes: usize, x: &DecodeRow, out: &mut [f32]) {
    debug_assert!(x.dtype == Some(DType::Q4_0) && !x.avx2);
    assert!(rows.len() >= out.len() * row_bytes && row_bytes == x.blocks * 18);
    let quants = load_idx(&Q4_0_QUANTS);
    let scales = load_idx(&Q4_0_SCALES);
    let nibble = _mm512_set1_epi8(0x0F);
    let groups = x.offsets.len();
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * row_bytes..(j + 1) * row_bytes];
        let mut acc = _mm512_setzero_ps();
        let lines = x.qs.chunks_exact(2).zip(&x.offsets).zip(&x.scales);
        for (group, ((qs, off), sc)) in row.chunks_exact(72).zip(lines) {
            let p = group.as_ptr();
            prefetch(p);
            // SAFETY: bytes 0..64 and 8..72 of the group's 72; unaligned loads.
            let (a, b) = unsafe {
                (
                    _mm512_loadu_si512(p as *const __m512i),
                    _mm512_loadu_si512(p.add(8) as *const __m512i),
                )
            };
            let q = _mm512_permutex2var_epi8(a, quants, b);
            let lo = _mm512_and_si512(q, nibble);
            let hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), nibble);
            let s = _mm512_dpbusd_epi32(load_i32(off), lo, load_quants(&qs[0]));
            let s = _mm512_dpbusd_epi32(s, hi, load_quants(&qs[1]));
            let d = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(scales, a)));
            let f = _mm512_mul_ps(d, load_f32(sc));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), f, acc);
        }
        *o = _mm512_reduce_add_ps(acc) + q4_0_tail(&row[72 * groups..], &x.tail);
    }
}

/// # Safety
/// As [`q4_0_rows`], for Q8_0 blocks and `x` laid out for Q8_0.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
unsafe fn q8_0_rows(rows: &[u8], row_bytes: usize, x: &DecodeRow, out: &mut [f32]) {
    debug_assert!(x.dtype == Some(DType::Q8_0) && !x.avx2);
    assert!(rows.len() >= out.len() * row_bytes && row_bytes == x.blocks * 34);
    let quants = load_idx(&Q8_0_QUANTS);
    let scales = load_idx(&Q8_0_SCALES);
    let flip = _mm512_set1_epi8(-128);
    let groups = x.offsets.len();
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * row_bytes..(j + 1) * row_bytes];
        let mut acc = _mm512_setzero_ps();
        let lines = x.qs.iter().zip(&x.offsets).zip(&x.scales);
        for (pair, ((qs, off), sc)) in row.chunks_exact(68).zip(lines) {
            let p = pair.as_ptr();
            prefetch(p);
            // SAFETY: bytes 0..64 and 4..68 of the pair's 68; unaligned loads.
            let (a, b) = unsafe {
                (
                    _mm512_loadu_si512(p as *const __m512i),
                    _mm512_loadu_si512(p.add(4) as *const __m512i),
                )
            };
            // w + 128 as u8: the offset term in `offsets` takes the 128 back out.
            let u = _mm512_xor_si512(_mm512_permutex2var_epi8(a, quants, b), flip);
            let s = _mm512_dpbusd_epi32(load_i32(off), u, load_quants(qs));
            let d = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(scales, a)));
            let f = _mm512_mul_ps(d, load_f32(sc));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), f, acc);
        }
        *o = _mm512_reduce_add_ps(acc) + q8_0_tail(&row[68 * groups..], &x.tail);
    }
}

/// Σ over the Q4_0 blocks past a row's last whole group (`blocks`, one per `tail` entry) of
/// the block's dot product with its activation quants and scale, in scalar code.
fn q4_0_tail(blocks: &[u8], tail: &[([i8; 32], f32)]) -> f32 {
    let mut sum = 0f32;
    for (blk, (qs, dx)) in blocks.chunks_exact(18).zip(tail) {
        let dot: i32 = (0..16)
            .map(|i| {
                let (l, h) = ((blk[2 + i] & 0x0F) as i32, (blk[2 + i] >> 4) as i32);
                (l - 8) * qs[i] as i32 + (h - 8) * qs[16 + i] as i32
            })
            .sum();
        sum += f16_le([blk[0], blk[1]]) * dx * dot as f32;
    }
    sum
}

/// [`q4_0_tail`] for Q8_0 blocks.
fn q8_0_tail(blocks: &[u8], tail: &[([i8; 32], f32)]) -> f32 {
    let mut sum = 0f32;
    for (blk, (qs, dx)) in blocks.chunks_exact(34).zip(tail) {
        let dot: i32 = (0..32)
            .map(|i| blk[2 + i] as i8 as i32 * qs[i] as i32)
            .sum();
        sum += f16_le([blk[0], blk[1]]) * dx * dot as f32;
    }
    sum
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
#[inline]
fn load_quants(q: &Quants) -> __m512i {
    // SAFETY: `Quants` is 64 bytes aligned to 64.
    unsafe { _mm512_load_si512(q.0.as_ptr() as *const __m512i) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
#[inline]
fn load_i32(v: &Line<i32>) -> __m512i {
    // SAFETY: `Line` is 64 bytes aligned to 64.
    unsafe { _mm512_load_si512(v.0.as_ptr() as *const __m512i) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
#[inline]
fn load_f32(v: &Line<f32>) -> __m512 {
    // SAFETY: `Line` is 64 bytes aligned to 64.
    unsafe { _mm512_load_ps(v.0.as_ptr()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86::tests::random_row;

    /// Every type with a decode kernel at some instruction set.
    const DECODE_TYPES: [DType; 7] = [
        DType::Q4_0,
        DType::Q8_0,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];

    /// Each kernel against the scalar reference on random rows, with whole groups, a tail,
    /// or only a tail, several rows per call.
    #[test]
    fn decode_kernels_match_the_scalar_reference() {
        let isa = crate::dispatch::isa();
        for dtype in DECODE_TYPES {
            let Some(kernel) = kernel(isa, dtype) else {
                eprintln!("{dtype}: no decode kernel at this CPU's instruction set");
                continue;
            };
            for blocks in [1usize, 2, 3, 4, 5, 7, 8, 18, 31, 32, 33, 128, 449] {
                let rows = 5;
                let data: Vec<u8> = (0..rows)
                    .flat_map(|r| random_row(dtype, blocks, r as u32 * 11 + blocks as u32))
                    .collect();
                let rb = data.len() / rows;
                let mut x: Vec<f32> = (0..blocks * dtype.block_elems())
                    .map(|i| {
                        (((i as u32 * 7919 + blocks as u32 * 31) % 2001) as f32 / 1000.0 - 1.0)
                            * (1.0 + (i % 13) as f32)
                    })
                    .collect();
                x[..32].iter_mut().for_each(|v| *v = 0.0);
                let xq = QuantizedRow::for_weight(dtype, &x).unwrap();
                let mut lay = DecodeRow::default();
                lay.fill(isa, dtype, &xq);
                let mut got = vec![0f32; rows];
                // SAFETY: `kernel` checked the CPU; `data` holds `rows` rows of `rb` bytes of
                // `dtype`, and `lay` was filled for `dtype` from as many blocks.
                unsafe { kernel(&data, rb, &lay, &mut got) };
                for (r, g) in got.iter().enumerate() {
                    let row = &data[r * rb..(r + 1) * rb];
                    let want = xq.dot(dtype, row);
                    let mut w = vec![0f32; x.len()];
                    crate::dot::dequantize_row(dtype, row, &mut w);
                    let magnitude: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
                    let tol = 1e-5 * want.abs().max(1.0) + 1e-6 * magnitude;
                    assert!(
                        (g - want).abs() <= tol,
                        "{dtype} blocks={blocks} row {r}: {g} vs {want}"
                    );
                }
            }
        }
    }

    /// Decode's kernels alone, one thread: weight bytes a second from L2 (the kernel's own
    /// rate) and streamed once from memory (what decode sees). Where the first is not well
    /// above a core's share of the memory stream, decode waits on arithmetic.
    #[test]
    #[ignore = "a speed probe: cargo test --release -p bora-kernels decode_kernel_speed -- --ignored --nocapture"]
    fn decode_kernel_speed() {
        let isa = crate::dispatch::isa();
        let cols = 4096;
        for dtype in DECODE_TYPES {
            let Some(kernel) = kernel(isa, dtype) else {
                continue;
            };
            let blocks = cols / dtype.block_elems();
            let x: Vec<f32> = (0..cols)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let xq = QuantizedRow::for_weight(dtype, &x).unwrap();
            let mut lay = DecodeRow::default();
            lay.fill(isa, dtype, &xq);
            let mut rates = Vec::new();
            for (what, total, passes) in
                [("L2", 192usize << 10, 4000), ("memory", 512usize << 20, 2)]
            {
                let one = random_row(dtype, blocks, 7);
                let rb = one.len();
                let rows = total / rb / 16 * 16;
                let m: Vec<u8> = (0..rows)
                    .flat_map(|r| random_row(dtype, blocks, r as u32))
                    .collect();
                let mut out = vec![0f32; 16];
                let mut best = f64::MAX;
                for _ in 0..3 {
                    let t = std::time::Instant::now();
                    for _ in 0..passes {
                        for chunk in m.chunks_exact(16 * rb) {
                            // SAFETY: the kernel matched this CPU; `chunk` is 16 rows of
                            // `dtype`, and `lay` was filled for it from a row as long.
                            unsafe { kernel(chunk, rb, &lay, &mut out) };
                            std::hint::black_box(&out);
                        }
                    }
                    best = best.min(t.elapsed().as_secs_f64());
                }
                rates.push(format!(
                    "{what} {:.1} GB/s",
                    (m.len() * passes) as f64 / best / 1e9
                ));
            }
            println!("{dtype}: {}", rates.join(", "));
        }
    }
}
