//! f32 weights → quant blocks, for `bora quantize` and quantization at load.
//!
//! Every type follows ggml's reference quantizers (`quantize_row_*_ref`, what llama-quantize
//! runs without an importance matrix), so the bytes are llama.cpp's: the 32-weight types'
//! equal what the `gguf` package's `gguf.quants.quantize` writes, and the k-quants' ([`kquant`])
//! what ggml's own quantizer writes (both tested on fixtures).

mod kquant;

use crate::blocks::{f16_bytes, QK};
use crate::DType;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantizeError {
    #[error(
        "bora cannot quantize to {0} (it can to Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)"
    )]
    Unsupported(DType),
    #[error(transparent)]
    Ragged(#[from] crate::DTypeError),
}

/// The types [`quantize_row`] writes.
pub const QUANTIZABLE: [DType; 10] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

/// Quantizes one row of `x.len()` weights into `dtype` blocks (`out` = the row's bytes).
pub fn quantize_row(dtype: DType, x: &[f32], out: &mut [u8]) -> Result<(), QuantizeError> {
    if !QUANTIZABLE.contains(&dtype) {
        return Err(QuantizeError::Unsupported(dtype));
    }
    let bytes = dtype.row_bytes(x.len())?;
    assert_eq!(out.len(), bytes, "output row has the wrong size");
    if dtype.block_elems() == crate::blocks::QK_K {
        kquant::quantize_row(dtype, x, out);
        return Ok(());
    }
    let n = dtype.block_elems();
    for (xs, blk) in x
        .chunks_exact(n)
        .zip(out.chunks_exact_mut(dtype.block_bytes()))
    {
        match dtype {
            DType::Q8_0 => q8_0(xs, blk),
            DType::Q4_0 => q4_0(xs, blk),
            DType::Q4_1 => q4_1(xs, blk),
            DType::Q5_0 => q5_0(xs, blk),
            DType::Q5_1 => q5_1(xs, blk),
            _ => unreachable!("checked above"),
        }
    }
    Ok(())
}

/// The value of largest magnitude, with its sign (the first one, on ties).
fn signed_max(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Packs 32 values < 16 as ggml does: element j in the low nibble of byte j, j+16 in the high.
fn pack_nibbles(q: &[u8; QK], out: &mut [u8]) {
    for j in 0..QK / 2 {
        out[j] = (q[j] & 0x0F) | (q[j + QK / 2] << 4);
    }
}

/// Bit 4 of each of 32 values, as Q5's little-endian `qh`.
fn high_bits(q: &[u8; QK]) -> [u8; 4] {
    let bits = q
        .iter()
        .enumerate()
        .fold(0u32, |acc, (j, &v)| acc | (((v >> 4) as u32 & 1) << j));
    bits.to_le_bytes()
}

fn q8_0(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    out[..2].copy_from_slice(&f16_bytes(d));
    for (o, &v) in out[2..].iter_mut().zip(x) {
        // C's roundf: half away from zero.
        *o = (v * id).round() as i8 as u8;
    }
}

/// Q4_0 and Q5_0: `d = max / −(2^(bits−1))`, `q = trunc(x/d + 2^(bits−1) + 0.5)`.
fn symmetric(x: &[f32], levels: f32, top: u8) -> (f32, [u8; QK]) {
    let d = signed_max(x) / -levels;
    let id = inverse(d);
    let mut q = [0u8; QK];
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = ((v * id + (levels + 0.5)).trunc() as i32).clamp(0, top as i32) as u8;
    }
    (d, q)
}

/// Q4_1 and Q5_1: `d = (max − min) / top`, `q = trunc((x − min)/d + 0.5)`.
fn affine(x: &[f32], top: u8) -> (f32, f32, [u8; QK]) {
    let (min, max) = min_max(x);
    let d = (max - min) / top as f32;
    let id = inverse(d);
    let mut q = [0u8; QK];
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = (((v - min) * id + 0.5).trunc() as i32).clamp(0, top as i32) as u8;
    }
    (d, min, q)
}

fn q4_0(x: &[f32], out: &mut [u8]) {
    let (d, q) = symmetric(x, 8.0, 15);
    out[..2].copy_from_slice(&f16_bytes(d));
    pack_nibbles(&q, &mut out[2..]);
}

fn q4_1(x: &[f32], out: &mut [u8]) {
    let (d, m, q) = affine(x, 15);
    out[..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(m));
    pack_nibbles(&q, &mut out[4..]);
}

fn q5_0(x: &[f32], out: &mut [u8]) {
    let (d, q) = symmetric(x, 16.0, 31);
    out[..2].copy_from_slice(&f16_bytes(d));
    out[2..6].copy_from_slice(&high_bits(&q));
    pack_nibbles(&q, &mut out[6..]);
}

fn q5_1(x: &[f32], out: &mut [u8]) {
    let (d, m, q) = affine(x, 31);
    out[..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(m));
    out[4..8].copy_from_slice(&high_bits(&q));
    pack_nibbles(&q, &mut out[8..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dequantize_row;

    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                // Mostly small, some outliers, a constant run: what real rows look like.
                if i % 97 == 0 {
                    u * 8.0
                } else if (300..340).contains(&i) {
                    0.25
                } else {
                    u
                }
            })
            .collect()
    }

    /// Each type's round trip stays within its step: relative RMS error well under what its
    /// bits allow, and shrinking as the bits grow.
    #[test]
    fn round_trips_are_as_close_as_the_bits_allow() {
        let x = weights(4096, 3);
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        let mut errors = Vec::new();
        for dtype in QUANTIZABLE {
            let mut q = vec![0u8; dtype.row_bytes(x.len()).unwrap()];
            quantize_row(dtype, &x, &mut q).unwrap();
            let mut y = vec![0f32; x.len()];
            dequantize_row(dtype, &q, &mut y);
            let err = (x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                / x.len() as f32)
                .sqrt()
                / rms;
            errors.push((dtype, err));
        }
        let e = |d: DType| errors.iter().find(|(t, _)| *t == d).unwrap().1;
        assert!(e(DType::Q8_0) < 0.01, "{errors:?}");
        assert!(e(DType::Q6_K) < 0.05, "{errors:?}");
        assert!(e(DType::Q5_0) < 0.08 && e(DType::Q5_1) < 0.08, "{errors:?}");
        assert!(e(DType::Q4_0) < 0.15 && e(DType::Q4_1) < 0.15, "{errors:?}");
        assert!(e(DType::Q4_K) < 0.15, "{errors:?}");
        assert!(e(DType::Q3_K) < 0.25 && e(DType::Q2_K) < 0.4, "{errors:?}");
        assert!(e(DType::Q8_0) < e(DType::Q6_K) && e(DType::Q6_K) < e(DType::Q4_K));
        assert!(e(DType::Q4_K) < e(DType::Q3_K) && e(DType::Q3_K) < e(DType::Q2_K));
        assert!(e(DType::Q5_0) < e(DType::Q4_0) && e(DType::Q5_1) < e(DType::Q4_1));
    }

    #[test]
    fn zeros_stay_zero_and_bad_requests_are_refused() {
        for dtype in QUANTIZABLE {
            let x = vec![0f32; 256];
            let mut q = vec![0xAAu8; dtype.row_bytes(256).unwrap()];
            quantize_row(dtype, &x, &mut q).unwrap();
            let mut y = vec![1f32; 256];
            dequantize_row(dtype, &q, &mut y);
            assert!(y.iter().all(|&v| v == 0.0), "{dtype}");
        }
        let mut q = vec![0u8; 512];
        assert_eq!(
            quantize_row(DType::F16, &[0.0; 256], &mut q),
            Err(QuantizeError::Unsupported(DType::F16))
        );
        assert!(matches!(
            quantize_row(DType::Q4_0, &[0.0; 33], &mut q),
            Err(QuantizeError::Ragged(_))
        ));
    }
}
