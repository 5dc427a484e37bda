//! Dot products of one stored weight row with f32 activations, and row dequantization.
//!
//! Weights are never expanded wholesale: each kernel converts a block at a time. Accumulation
//! is in f32 with several independent lanes so the compiler can vectorize.

use crate::act_quant::unpack_q5;
use crate::blocks::{f16_le, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QK, QK_K};
use crate::DType;

const LANES: usize = 16;

/// `a · b` in f32, lane-parallel.
#[inline(always)]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_by(a, b, |x| x)
}

/// `a · f(b)` in f32, lane-parallel: [`dot_f32`] for `b` stored in another type.
#[inline(always)]
pub(crate) fn dot_by<T: Copy>(a: &[f32], b: &[T], f: impl Fn(T) -> f32) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += xa[l] * f(xb[l]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * f(*y);
    }
    acc.iter().sum::<f32>() + tail
}

/// Little-endian element conversions for the float storage types.
#[inline(always)]
fn f32_le(b: [u8; 4]) -> f32 {
    f32::from_le_bytes(b)
}

#[inline(always)]
fn bf16_le(b: [u8; 2]) -> f32 {
    f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
}

/// `row · x` where `row` holds `W`-byte elements that `conv` turns into f32: F16, BF16, and
/// F32 whose bytes are not 4-aligned (a safetensors offset may be anything).
#[inline(always)]
fn dot_converted<const W: usize>(row: &[u8], x: &[f32], conv: impl Fn([u8; W]) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let cw = row.chunks_exact(W * LANES);
    let cx = x.chunks_exact(LANES);
    let (rw, rx) = (cw.remainder(), cx.remainder());
    for (w, xs) in cw.zip(cx) {
        for l in 0..LANES {
            acc[l] += conv(std::array::from_fn(|i| w[W * l + i])) * xs[l];
        }
    }
    let mut tail = 0f32;
    for (w, xv) in rw.chunks_exact(W).zip(rx) {
        tail += conv(std::array::from_fn(|i| w[i])) * xv;
    }
    acc.iter().sum::<f32>() + tail
}

/// Expands `W`-byte elements into `out` with `conv`.
#[inline(always)]
fn expand<const W: usize>(row: &[u8], out: &mut [f32], conv: impl Fn([u8; W]) -> f32) {
    for (o, w) in out.iter_mut().zip(row.chunks_exact(W)) {
        *o = conv(std::array::from_fn(|i| w[i]));
    }
}

#[inline(always)]
fn dot_q8_0(blocks: &[BlockQ8_0], x: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, xs) in blocks.iter().zip(x.chunks_exact(QK)) {
        let mut acc = [0f32; LANES];
        for h in 0..2 {
            for l in 0..LANES {
                acc[l] += b.qs[h * LANES + l] as f32 * xs[h * LANES + l];
            }
        }
        sum += f16_le(b.d) * acc.iter().sum::<f32>();
    }
    sum
}

#[inline(always)]
fn dot_q4_0(blocks: &[BlockQ4_0], x: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, xs) in blocks.iter().zip(x.chunks_exact(QK)) {
        let mut acc = [0f32; QK / 2];
        for j in 0..QK / 2 {
            let lo = (b.qs[j] & 0x0F) as i32 - 8;
            let hi = (b.qs[j] >> 4) as i32 - 8;
            acc[j] = lo as f32 * xs[j] + hi as f32 * xs[j + QK / 2];
        }
        sum += f16_le(b.d) * acc.iter().sum::<f32>();
    }
    sum
}

#[inline(always)]
fn dot_q4_1(blocks: &[BlockQ4_1], x: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, xs) in blocks.iter().zip(x.chunks_exact(QK)) {
        let mut acc = [0f32; QK / 2];
        let mut xsum = [0f32; QK / 2];
        for j in 0..QK / 2 {
            let lo = (b.qs[j] & 0x0F) as f32;
            let hi = (b.qs[j] >> 4) as f32;
            acc[j] = lo * xs[j] + hi * xs[j + QK / 2];
            xsum[j] = xs[j] + xs[j + QK / 2];
        }
        sum += f16_le(b.d) * acc.iter().sum::<f32>() + f16_le(b.m) * xsum.iter().sum::<f32>();
    }
    sum
}

/// One stored row (`row` holds exactly `x.len()` elements of `dtype`) · `x`.
///
/// Callers guarantee the row's byte length matches; this is an internal invariant checked by
/// the loader, so a mismatch here is a bug, not bad input.
#[inline(always)]
pub fn dot_row(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(Ok(row.len()), dtype.row_bytes(x.len()));
    match dtype {
        DType::F32 => match bytemuck::try_cast_slice::<u8, f32>(row) {
            Ok(w) => dot_f32(w, x),
            Err(_) => dot_converted(row, x, f32_le),
        },
        DType::F16 => dot_converted(row, x, f16_le),
        DType::BF16 => dot_converted(row, x, bf16_le),
        DType::Q8_0 => dot_q8_0(bytemuck::cast_slice(row), x),
        DType::Q4_0 => dot_q4_0(bytemuck::cast_slice(row), x),
        DType::Q4_1 => dot_q4_1(bytemuck::cast_slice(row), x),
        DType::Q5_0 | DType::Q5_1 => dot_by_blocks(dtype, row, x),
        d if d.is_k_quant() => crate::kquants::dot_f32(d, row, x),
        _ => unreachable!(),
    }
}

/// Expands one stored row into `out` (f32, `out.len()` elements).
#[inline(always)]
pub fn dequantize_row(dtype: DType, row: &[u8], out: &mut [f32]) {
    debug_assert_eq!(Ok(row.len()), dtype.row_bytes(out.len()));
    match dtype {
        DType::F32 => expand(row, out, f32_le),
        DType::F16 => expand(row, out, f16_le),
        DType::BF16 => expand(row, out, bf16_le),
        DType::Q8_0 => {
            let blocks: &[BlockQ8_0] = bytemuck::cast_slice(row);
            for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
                let d = f16_le(b.d);
                for (oi, q) in o.iter_mut().zip(b.qs) {
                    *oi = d * q as f32;
                }
            }
        }
        DType::Q4_0 => {
            let blocks: &[BlockQ4_0] = bytemuck::cast_slice(row);
            for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
                let d = f16_le(b.d);
                for j in 0..QK / 2 {
                    o[j] = d * ((b.qs[j] & 0x0F) as i32 - 8) as f32;
                    o[j + QK / 2] = d * ((b.qs[j] >> 4) as i32 - 8) as f32;
                }
            }
        }
        DType::Q4_1 => {
            let blocks: &[BlockQ4_1] = bytemuck::cast_slice(row);
            for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
                let (d, m) = (f16_le(b.d), f16_le(b.m));
                for j in 0..QK / 2 {
                    o[j] = d * (b.qs[j] & 0x0F) as f32 + m;
                    o[j + QK / 2] = d * (b.qs[j] >> 4) as f32 + m;
                }
            }
        }
        DType::Q5_0 => {
            let blocks: &[BlockQ5_0] = bytemuck::cast_slice(row);
            for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
                let d = f16_le(b.d);
                for (oi, q) in o.iter_mut().zip(unpack_q5(&b.qs, b.qh, 16)) {
                    *oi = d * q as f32;
                }
            }
        }
        DType::Q5_1 => {
            let blocks: &[BlockQ5_1] = bytemuck::cast_slice(row);
            for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
                let (d, m) = (f16_le(b.d), f16_le(b.m));
                for (oi, q) in o.iter_mut().zip(unpack_q5(&b.qs, b.qh, 0)) {
                    *oi = d * q as f32 + m;
                }
            }
        }
        d => {
            for (i, o) in out.chunks_exact_mut(QK_K).enumerate() {
                crate::kquants::dequantize_block(&crate::kquants::unpack(d, row, i), o);
            }
        }
    }
}

/// `row · x` for block types without a fused kernel: each block expanded, then dotted.
#[inline(always)]
fn dot_by_blocks(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let n = dtype.block_elems();
    let bytes = dtype.block_bytes();
    let mut w = [0f32; QK];
    let mut sum = 0f32;
    for (blk, xs) in row.chunks_exact(bytes).zip(x.chunks_exact(n)) {
        dequantize_row(dtype, blk, &mut w[..n]);
        sum += dot_f32(&w[..n], xs);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes/floats for kernel tests.
    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    fn random_row(dtype: DType, cols: usize, seed: &mut u64) -> Vec<u8> {
        let n = dtype.row_bytes(cols).unwrap();
        let mut v: Vec<u8> = (0..n).map(|_| lcg(seed) as u8).collect();
        // Keep scales finite and modest: rewrite every f16 scale with a value in [-0.5, 0.5].
        let scale_offsets = dtype.scale_fields();
        if dtype.is_quantized() {
            for blk in v.chunks_exact_mut(dtype.block_bytes()) {
                for &o in scale_offsets {
                    let s = (lcg(seed) as f32 / u32::MAX as f32 - 0.5) / 16.0;
                    blk[o..o + 2].copy_from_slice(&half::f16::from_f32(s).to_le_bytes());
                }
            }
        } else {
            for e in v.chunks_exact_mut(dtype.block_bytes()) {
                let s = lcg(seed) as f32 / u32::MAX as f32 - 0.5;
                match dtype {
                    DType::F32 => e.copy_from_slice(&s.to_le_bytes()),
                    DType::F16 => e.copy_from_slice(&half::f16::from_f32(s).to_le_bytes()),
                    DType::BF16 => e.copy_from_slice(&half::bf16::from_f32(s).to_le_bytes()),
                    _ => unreachable!(),
                }
            }
        }
        v
    }

    /// The fused dot product equals dequantize-then-dot (the definition) at odd lengths.
    #[test]
    fn fused_dot_matches_dequantized_dot() {
        let mut seed = 7u64;
        for dtype in DType::ALL {
            let lens: &[usize] = if dtype.is_quantized() {
                &[256, 512, 1024]
            } else {
                &[1, 2, 3, 7, 15, 17, 31, 33, 1023]
            };
            for &n in lens {
                let row = random_row(dtype, n, &mut seed);
                let x: Vec<f32> = (0..n)
                    .map(|_| lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5)
                    .collect();
                let mut w = vec![0f32; n];
                dequantize_row(dtype, &row, &mut w);
                let reference: f64 = w.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let got = dot_row(dtype, &row, &x) as f64;
                let scale: f64 = w
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                assert!(
                    (got - reference).abs() <= 1e-5 * scale.max(1.0),
                    "{dtype} n={n}: {got} vs {reference}"
                );
            }
        }
    }

    #[test]
    fn q4_0_dequantizes_as_ggml_defines() {
        let mut b = BlockQ4_0 {
            d: half::f16::from_f32(0.5).to_le_bytes(),
            qs: [0; 16],
        };
        b.qs[0] = 0x2F; // lo = 15 → (15-8)*0.5 = 3.5 at index 0; hi = 2 → (2-8)*0.5 = -3 at 16
        let mut out = [0f32; 32];
        dequantize_row(DType::Q4_0, bytemuck::bytes_of(&b), &mut out);
        assert_eq!(out[0], 3.5);
        assert_eq!(out[16], -3.0);
        assert_eq!(out[1], -4.0);
    }

    #[test]
    fn q4_1_and_q8_0_dequantize_as_ggml_defines() {
        let mut b = BlockQ4_1 {
            d: half::f16::from_f32(0.25).to_le_bytes(),
            m: half::f16::from_f32(-1.0).to_le_bytes(),
            qs: [0; 16],
        };
        b.qs[3] = 0xA4;
        let mut out = [0f32; 32];
        dequantize_row(DType::Q4_1, bytemuck::bytes_of(&b), &mut out);
        assert_eq!(out[3], 0.0); // 4*0.25-1
        assert_eq!(out[19], 1.5); // 10*0.25-1
        let mut q = BlockQ8_0 {
            d: half::f16::from_f32(2.0).to_le_bytes(),
            qs: [0; 32],
        };
        q.qs[5] = -3;
        dequantize_row(DType::Q8_0, bytemuck::bytes_of(&q), &mut out);
        assert_eq!(out[5], -6.0);
    }
}
