//! 8-bit quantization of activation rows, and integer dot products of quantized weight blocks
//! with them: llama.cpp's numerics for quantized weights.
//!
//! Each block of 32 activations gets a scale `d = amax / 127` (stored as f16) and
//! `q = round_half_even(x · 127 / amax)`, exactly as ggml's x86 kernels compute it; a weight
//! block then meets it in an integer dot product, scaled once per block:
//!   Q4_0·Q8_0, Q8_0·Q8_0: Σ_blocks d_w · d_x · Σ_i w_i q_i
//!   Q4_1·Q8_1:            Σ_blocks d_w · d_x · Σ_i w_i q_i + m_w · s_x

use bytemuck::Zeroable;

use crate::blocks::{
    f16_bytes, f16_le, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8K, BlockQ8_0, BlockQ8_1,
    QK, QK_K,
};
use crate::dispatch::{isa, multiversion};
use crate::kquants::{dot_q8_k, quantize_q8_k};
use crate::DType;

/// Scale and quants of one block of 32 activations.
#[inline(always)]
fn quantize_block(x: &[f32], qs: &mut [i8; QK]) -> f32 {
    // The magnitude in lanes the compiler vectorizes (a max is exact in any order); one
    // running max was a chain of scalar `maxss`, a tenth of a 7B prefill.
    let mut lanes = [0f32; 16];
    for c in x.chunks_exact(16) {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m = m.max(v.abs());
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
    }
    d
}

#[inline(always)]
pub fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let d = quantize_block(xs, &mut b.qs);
        b.d = f16_bytes(d);
    }
}

#[inline(always)]
pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let d = quantize_block(xs, &mut b.qs);
        let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
        b.d = f16_bytes(d);
        b.s = f16_bytes(d * sum as f32);
    }
}

// The quantizers compiled for each instruction set: the same operations (no contraction
// into FMAs), so the same bits, with `round_ties_even` one instruction instead of a call.
multiversion! {
    fn quantize_q8_0_compiled(x: &[f32], out: &mut [BlockQ8_0]) {
        quantize_q8_0(x, out)
    }
}

multiversion! {
    fn quantize_q8_1_compiled(x: &[f32], out: &mut [BlockQ8_1]) {
        quantize_q8_1(x, out)
    }
}

/// [`quantize_q8_0`] on this CPU's best kernel.
fn quantize_q8_0_simd(isa: crate::dispatch::Isa, x: &[f32], out: &mut [BlockQ8_0]) {
    #[cfg(target_arch = "x86_64")]
    if isa.level() == crate::dispatch::Level::Avx512 {
        for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
            // SAFETY: Level::Avx512 means avx512f/bw/vl and f16c were detected.
            b.d = f16_bytes(unsafe { avx512::quantize_block(xs, &mut b.qs) });
        }
        return;
    }
    quantize_q8_0_compiled(isa, x, out)
}

/// [`quantize_q8_1`] on this CPU's best kernel.
fn quantize_q8_1_simd(isa: crate::dispatch::Isa, x: &[f32], out: &mut [BlockQ8_1]) {
    #[cfg(target_arch = "x86_64")]
    if isa.level() == crate::dispatch::Level::Avx512 {
        for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
            // SAFETY: as in `quantize_q8_0_simd`.
            let d = unsafe { avx512::quantize_block(xs, &mut b.qs) };
            let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
            b.d = f16_bytes(d);
            b.s = f16_bytes(d * sum as f32);
        }
        return;
    }
    quantize_q8_1_compiled(isa, x, out)
}

/// The block quantizer in AVX-512: the compiler kept [`quantize_block`]'s magnitude and its
/// float-to-integer casts scalar (a tenth of a 16-token step's time).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::QK;
    use std::arch::x86_64::*;

    /// [`super::quantize_block`], bit for bit: the same scale, and each value's
    /// `round_ties_even(x · id)` saturated to i8 with NaN as 0, as Rust's cast gives.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn quantize_block(x: &[f32], qs: &mut [i8; QK]) -> f32 {
        let x: &[f32; QK] = x.try_into().expect("a block of 32");
        // SAFETY: `x` is 32 f32, read as two vectors of 16.
        let (lo, hi) = unsafe {
            (
                _mm512_loadu_ps(x.as_ptr()),
                _mm512_loadu_ps(x.as_ptr().add(16)),
            )
        };
        // `max_ps` returns its second operand when either is NaN, so NaNs never enter the
        // running maximum: f32::max's rule. Without NaNs a maximum is exact in any order.
        let m = _mm512_max_ps(_mm512_abs_ps(lo), _mm512_setzero_ps());
        let m = _mm512_max_ps(_mm512_abs_ps(hi), m);
        let amax = _mm512_reduce_max_ps(m);
        let d = amax / 127.0;
        let id = _mm512_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let quant = |v: __m512| {
            let p = _mm512_mul_ps(v, id);
            // Clamped first (exact: the bounds are integers), so huge or infinite products
            // saturate as the cast does; NaN products are zeroed after the conversion.
            let c = _mm512_min_ps(
                _mm512_max_ps(p, _mm512_set1_ps(-128.0)),
                _mm512_set1_ps(127.0),
            );
            let q =
                _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(c);
            let q = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(p, p), q);
            _mm512_cvtepi32_epi8(q)
        };
        let (a, b) = (quant(lo), quant(hi));
        // SAFETY: `qs` is 32 writable bytes, written as two halves of 16.
        unsafe {
            _mm_storeu_si128(qs.as_mut_ptr() as *mut __m128i, a);
            _mm_storeu_si128(qs.as_mut_ptr().add(16) as *mut __m128i, b);
        }
        d
    }
}

multiversion! {
    fn quantize_q8_k_simd(x: &[f32], out: &mut [BlockQ8K]) {
        quantize_q8_k(x, out)
    }
}

/// Σ w_i · x_i over one block, in i32 (exact), written so the compiler vectorizes it.
#[inline(always)]
fn block_sum(w: &[i8; QK], x: &[i8; QK]) -> i32 {
    let mut acc = [0i32; 8];
    for i in 0..QK {
        acc[i % 8] += w[i] as i16 as i32 * x[i] as i16 as i32;
    }
    acc.iter().sum()
}

/// A Q4 block's 32 nibbles as i8 (element j: low nibble of byte j; j+16: high nibble).
#[inline(always)]
fn unpack_nibbles(qs: &[u8; QK / 2], offset: i8) -> [i8; QK] {
    let mut w = [0i8; QK];
    for j in 0..QK / 2 {
        w[j] = (qs[j] & 0x0F) as i8 - offset;
        w[j + QK / 2] = (qs[j] >> 4) as i8 - offset;
    }
    w
}

/// A Q5 block's 32 values as i8: the Q4 nibbles plus bit j of `qh` as bit 4 of element j.
#[inline(always)]
pub(crate) fn unpack_q5(qs: &[u8; QK / 2], qh: [u8; 4], offset: i8) -> [i8; QK] {
    let high = u32::from_le_bytes(qh);
    let mut w = unpack_nibbles(qs, 0);
    for (j, v) in w.iter_mut().enumerate() {
        *v = (*v | ((((high >> j) & 1) as i8) << 4)) - offset;
    }
    w
}

#[inline(always)]
pub fn dot_q5_0_q8_0(w: &[BlockQ5_0], x: &[BlockQ8_0]) -> f32 {
    let mut sum = 0f32;
    for (a, b) in w.iter().zip(x) {
        let sumi = block_sum(&unpack_q5(&a.qs, a.qh, 16), &b.qs);
        sum += sumi as f32 * (f16_le(a.d) * f16_le(b.d));
    }
    sum
}

#[inline(always)]
pub fn dot_q5_1_q8_1(w: &[BlockQ5_1], x: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (a, b) in w.iter().zip(x) {
        let sumi = block_sum(&unpack_q5(&a.qs, a.qh, 0), &b.qs);
        sum += sumi as f32 * (f16_le(a.d) * f16_le(b.d)) + f16_le(a.m) * f16_le(b.s);
    }
    sum
}

#[inline(always)]
pub fn dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    let mut sum = 0f32;
    for (a, b) in w.iter().zip(x) {
        sum += block_sum(&a.qs, &b.qs) as f32 * (f16_le(a.d) * f16_le(b.d));
    }
    sum
}

#[inline(always)]
pub fn dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    let mut sum = 0f32;
    for (a, b) in w.iter().zip(x) {
        sum += block_sum(&unpack_nibbles(&a.qs, 8), &b.qs) as f32 * (f16_le(a.d) * f16_le(b.d));
    }
    sum
}

#[inline(always)]
pub fn dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (a, b) in w.iter().zip(x) {
        let sumi = block_sum(&unpack_nibbles(&a.qs, 0), &b.qs);
        sum += sumi as f32 * (f16_le(a.d) * f16_le(b.d)) + f16_le(a.m) * f16_le(b.s);
    }
    sum
}

/// One activation row quantized for the weight type it will meet.
pub enum QuantizedRow {
    Q8_0(Q8Blocks<BlockQ8_0>),
    Q8_1(Q8Blocks<BlockQ8_1>),
    Q8K(Vec<BlockQ8K>),
}

/// 32-element activation blocks in ggml's layout, with per-block values the SIMD kernels
/// would otherwise recompute for every weight row: the f16 scales as f32 (exactly), and what
/// a weight offset meets.
pub struct Q8Blocks<B> {
    pub blocks: Vec<B>,
    /// `d` of each block, as f32.
    pub d: Vec<f32>,
    /// Per block, what an offset in the weights meets: Q8_1's stored `s` (ggml rounds it to
    /// f16), for Q8_0 `d · Σ qs` in f32.
    pub s: Vec<f32>,
    /// Per block, `Σ qs` (exact): the tiled kernels fold a weight offset into the integer sum.
    pub sums: Vec<i32>,
}

impl<B> std::ops::Deref for Q8Blocks<B> {
    type Target = [B];
    fn deref(&self) -> &[B] {
        &self.blocks
    }
}

impl<B> Q8Blocks<B> {
    fn new(blocks: Vec<B>, fields: impl Fn(&B) -> ([u8; 2], Option<[u8; 2]>, &[i8; QK])) -> Self {
        let mut q = Q8Blocks {
            blocks,
            d: Vec::new(),
            s: Vec::new(),
            sums: Vec::new(),
        };
        q.refresh(fields);
        q
    }

    /// Recomputes the per-block values from the blocks (`fields`: d, s, qs of a block).
    fn refresh(&mut self, fields: impl Fn(&B) -> ([u8; 2], Option<[u8; 2]>, &[i8; QK])) {
        self.d.clear();
        self.s.clear();
        self.sums.clear();
        for b in &self.blocks {
            let (d, s, qs) = fields(b);
            let sum: i32 = qs.iter().map(|&q| q as i32).sum();
            self.d.push(f16_le(d));
            self.s.push(s.map_or(f16_le(d) * sum as f32, f16_le));
            self.sums.push(sum);
        }
    }
}

fn q8_0_blocks(blocks: Vec<BlockQ8_0>) -> Q8Blocks<BlockQ8_0> {
    Q8Blocks::new(blocks, |b| (b.d, None, &b.qs))
}

fn q8_1_blocks(blocks: Vec<BlockQ8_1>) -> Q8Blocks<BlockQ8_1> {
    Q8Blocks::new(blocks, |b| (b.d, Some(b.s), &b.qs))
}

impl QuantizedRow {
    /// `None` for weight types that compute on f32 activations.
    pub fn for_weight(dtype: DType, x: &[f32]) -> Option<Self> {
        let n = x.len() / QK;
        match dtype {
            DType::Q8_0 | DType::Q4_0 | DType::Q5_0 => {
                let mut v = vec![
                    BlockQ8_0 {
                        d: [0; 2],
                        qs: [0; QK]
                    };
                    n
                ];
                quantize_q8_0_simd(isa(), x, &mut v);
                Some(QuantizedRow::Q8_0(q8_0_blocks(v)))
            }
            DType::Q4_1 | DType::Q5_1 => {
                let mut v = vec![
                    BlockQ8_1 {
                        d: [0; 2],
                        s: [0; 2],
                        qs: [0; QK]
                    };
                    n
                ];
                quantize_q8_1_simd(isa(), x, &mut v);
                Some(QuantizedRow::Q8_1(q8_1_blocks(v)))
            }
            DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K => {
                let mut v = vec![BlockQ8K::zeroed(); x.len() / QK_K];
                quantize_q8_k_simd(isa(), x, &mut v);
                Some(QuantizedRow::Q8K(v))
            }
            DType::F32 | DType::F16 | DType::BF16 => None,
        }
    }

    /// Quantizes `x` for `dtype` into this row, reusing its buffers when it already holds
    /// the activation type `dtype` needs (no allocation once they are large enough).
    pub fn refill(&mut self, dtype: DType, x: &[f32]) {
        match self {
            QuantizedRow::Q8_0(b) if matches!(dtype, DType::Q8_0 | DType::Q4_0 | DType::Q5_0) => {
                b.blocks.resize(x.len() / QK, BlockQ8_0::zeroed());
                quantize_q8_0_simd(isa(), x, &mut b.blocks);
                b.refresh(|blk| (blk.d, None, &blk.qs));
            }
            QuantizedRow::Q8_1(b) if matches!(dtype, DType::Q4_1 | DType::Q5_1) => {
                b.blocks.resize(x.len() / QK, BlockQ8_1::zeroed());
                quantize_q8_1_simd(isa(), x, &mut b.blocks);
                b.refresh(|blk| (blk.d, Some(blk.s), &blk.qs));
            }
            QuantizedRow::Q8K(v) if dtype.is_k_quant() => {
                v.resize(x.len() / QK_K, BlockQ8K::zeroed());
                quantize_q8_k_simd(isa(), x, v);
            }
            other => *other = QuantizedRow::for_weight(dtype, x).expect("a quantized weight type"),
        }
    }

    /// A stored weight row · this activation row.
    #[inline(always)]
    pub fn dot(&self, dtype: DType, row: &[u8]) -> f32 {
        match (self, dtype) {
            (QuantizedRow::Q8_0(x), DType::Q8_0) => dot_q8_0_q8_0(bytemuck::cast_slice(row), x),
            (QuantizedRow::Q8_0(x), DType::Q4_0) => dot_q4_0_q8_0(bytemuck::cast_slice(row), x),
            (QuantizedRow::Q8_1(x), DType::Q4_1) => dot_q4_1_q8_1(bytemuck::cast_slice(row), x),
            (QuantizedRow::Q8_0(x), DType::Q5_0) => dot_q5_0_q8_0(bytemuck::cast_slice(row), x),
            (QuantizedRow::Q8_1(x), DType::Q5_1) => dot_q5_1_q8_1(bytemuck::cast_slice(row), x),
            (QuantizedRow::Q8K(x), d) if d.is_k_quant() => dot_q8_k(d, row, x),
            _ => unreachable!("activation row quantized for another weight type"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::{dequantize_row, dot_row};

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503));
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn q8_quantization_round_trips_within_half_a_step() {
        let x = data(96, 1);
        let mut b = vec![
            BlockQ8_1 {
                d: [0; 2],
                s: [0; 2],
                qs: [0; QK]
            };
            3
        ];
        quantize_q8_1(&x, &mut b);
        for (blk, xs) in b.iter().zip(x.chunks_exact(QK)) {
            let d = f16_le(blk.d);
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(blk.qs.iter().any(|&q| q.unsigned_abs() == 127));
            for (q, v) in blk.qs.iter().zip(xs) {
                assert!((*q as f32 * d - v).abs() <= 0.5 * amax / 127.0 + 1e-3 * amax);
            }
            let sum: i32 = blk.qs.iter().map(|&q| q as i32).sum();
            assert!(
                (f16_le(blk.s) - d * sum as f32).abs() <= 1e-3 * (d * sum as f32).abs().max(1e-3)
            );
        }
        let mut zero = vec![
            BlockQ8_0 {
                d: [0; 2],
                qs: [1; QK]
            };
            1
        ];
        quantize_q8_0(&[0.0; 32], &mut zero);
        assert!(zero[0].qs.iter().all(|&q| q == 0));
    }

    /// Every instruction set's build of the activation quantizers writes the portable
    /// build's bytes (ties included: values at exact half steps are in the data).
    #[test]
    fn quantizers_are_bit_identical_on_every_isa() {
        use crate::dispatch::{isa, Isa, Level};
        let mut x = data(1024, 3);
        for (i, v) in x.iter_mut().enumerate().step_by(7) {
            *v = (i % 5) as f32 * 0.5 - 1.0;
        }
        x[..32].iter_mut().for_each(|v| *v = 0.0);
        // NaN and infinities (the casts' saturation and NaN rules), a subnormal-only block
        // (127 / amax overflows to infinity), and negative zero.
        x[32] = f32::NAN;
        x[40] = f32::INFINITY;
        x[70] = f32::NEG_INFINITY;
        x[96..128]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i as f32 - 16.0) * 1e-45);
        x[130] = -0.0;
        x[160..192].iter_mut().for_each(|v| *v = f32::NAN);
        let run = |isa: Isa| {
            let mut a = vec![BlockQ8_0::zeroed(); 32];
            let mut b = vec![BlockQ8_1::zeroed(); 32];
            let mut k = vec![BlockQ8K::zeroed(); 4];
            quantize_q8_0_simd(isa, &x, &mut a);
            quantize_q8_1_simd(isa, &x, &mut b);
            quantize_q8_k_simd(isa, &x, &mut k);
            let bytes = [
                bytemuck::cast_slice::<_, u8>(&a).to_vec(),
                bytemuck::cast_slice::<_, u8>(&b).to_vec(),
                bytemuck::cast_slice::<_, u8>(&k).to_vec(),
            ];
            bytes
        };
        let reference = run(Isa::PORTABLE);
        for level in [isa(), Isa::at_most(Level::Avx2)] {
            assert!(run(level) == reference, "{level:?}");
        }
    }

    /// A row refilled in place (whatever it held before) equals a freshly quantized one.
    #[test]
    fn refilled_rows_equal_fresh_ones() {
        let seq = [
            (DType::Q4_0, 64),
            (DType::Q4_K, 512),
            (DType::Q5_1, 96),
            (DType::Q8_0, 32),
            (DType::Q8_0, 256),
            (DType::Q6_K, 256),
        ];
        let mut row = QuantizedRow::for_weight(DType::Q4_1, &data(64, 9)).unwrap();
        for (k, &(dtype, n)) in seq.iter().enumerate() {
            let x = data(n, k as u32);
            row.refill(dtype, &x);
            let fresh = QuantizedRow::for_weight(dtype, &x).unwrap();
            let bytes = |r: &QuantizedRow| -> (Vec<u8>, Vec<f32>, Vec<f32>) {
                match r {
                    QuantizedRow::Q8_0(b) => (
                        bytemuck::cast_slice(&b.blocks).to_vec(),
                        b.d.clone(),
                        b.s.clone(),
                    ),
                    QuantizedRow::Q8_1(b) => (
                        bytemuck::cast_slice(&b.blocks).to_vec(),
                        b.d.clone(),
                        b.s.clone(),
                    ),
                    QuantizedRow::Q8K(v) => (bytemuck::cast_slice(v).to_vec(), vec![], vec![]),
                }
            };
            assert!(bytes(&row) == bytes(&fresh), "{dtype} n={n}");
        }
    }

    /// The integer dot equals the f32 dot of the dequantized weights with the dequantized
    /// activations (the definition), up to float rounding.
    #[test]
    fn integer_dots_equal_dequantized_dots() {
        for dtype in DType::ALL.into_iter().filter(|d| d.is_quantized()) {
            let bytes = dtype.block_bytes();
            for n in [256usize, 512, 1024] {
                let mut row = vec![0u8; n / dtype.block_elems() * bytes];
                for (i, b) in row.iter_mut().enumerate() {
                    *b = (i as u32).wrapping_mul(2246822519).rotate_left(7) as u8;
                }
                for blk in row.chunks_exact_mut(bytes) {
                    for (k, &f) in dtype.scale_fields().iter().enumerate() {
                        let v = if k == 0 { 0.013 } else { -0.007 };
                        blk[f..f + 2].copy_from_slice(&f16_bytes(v));
                    }
                }
                let x = data(n, n as u32);
                let q = QuantizedRow::for_weight(dtype, &x).unwrap();
                let xq: Vec<f32> = match &q {
                    QuantizedRow::Q8_0(b) => b
                        .iter()
                        .flat_map(|b| b.qs.map(|v| v as f32 * f16_le(b.d)))
                        .collect(),
                    QuantizedRow::Q8_1(b) => b
                        .iter()
                        .flat_map(|b| b.qs.map(|v| v as f32 * f16_le(b.d)))
                        .collect(),
                    QuantizedRow::Q8K(b) => b
                        .iter()
                        .flat_map(|b| b.qs.map(|v| v as f32 * b.d))
                        .collect(),
                };
                let mut w = vec![0f32; n];
                dequantize_row(dtype, &row, &mut w);
                let want: f64 = w.iter().zip(&xq).map(|(a, b)| *a as f64 * *b as f64).sum();
                let got = q.dot(dtype, &row) as f64;
                // Q4_1's m·s term uses s rounded to f16, as ggml does.
                let tol = 1e-4
                    * w.iter()
                        .zip(&xq)
                        .map(|(a, b)| (*a as f64 * *b as f64).abs())
                        .sum::<f64>()
                    + 2e-3;
                assert!((got - want).abs() <= tol, "{dtype} n={n}: {got} vs {want}");
                // And it approximates the exact f32 product, within the activations' 8-bit
                // rounding (relative to the magnitude of the terms, which may cancel).
                let exact = dot_row(dtype, &row, &x) as f64;
                let magnitude: f64 = w
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                assert!(
                    (got - exact).abs() <= 0.01 * magnitude.max(1.0),
                    "{dtype} n={n}: {got} vs {exact}"
                );
            }
        }
    }
}
