//! k-quants (Q2_K … Q6_K): 256-weight super-blocks with per-group scales, as ggml defines them.
//!
//! Every type is first decoded into one common form, [`KBlock`]: 256 small integers `q`, and
//! for each group of 16 an integer scale and min, with the block's two f16 multipliers, so
//!   `w[i] = d · scale[i/16] · q[i] − dmin · min[i/16]`.
//! Dequantization and the integer dot product with 8-bit activations ([`BlockQ8K`]) are then
//! written once, for all five types; they are the reference the SIMD kernels are tested
//! against. Activations are quantized as ggml's `quantize_row_q8_K_ref` does.

use crate::blocks::{f16_le, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};
use crate::DType;

const GROUPS: usize = QK_K / 16;

/// One super-block in the common decoded form.
pub struct KBlock {
    pub q: [i8; QK_K],
    pub scale: [i16; GROUPS],
    pub min: [i16; GROUPS],
    pub d: f32,
    pub dmin: f32,
}

impl KBlock {
    fn new(d: f32, dmin: f32) -> Self {
        KBlock {
            q: [0; QK_K],
            scale: [0; GROUPS],
            min: [0; GROUPS],
            d,
            dmin,
        }
    }
}

/// Scale and min of group `j` (0..8, 32 weights each) from Q4_K/Q5_K's 12 packed bytes:
/// groups 0..4 keep 6 bits in bytes j and j+4; groups 4..8 put their low 4 bits in byte j+4
/// and their top 2 bits in the spare top bits of bytes j−4 and j.
#[inline(always)]
fn scale_min_k4(j: usize, s: &[u8; 12]) -> (i16, i16) {
    if j < 4 {
        ((s[j] & 63) as i16, (s[j + 4] & 63) as i16)
    } else {
        let sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        let m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        (sc as i16, m as i16)
    }
}

#[inline(always)]
pub fn unpack_q2_k(b: &BlockQ2K) -> KBlock {
    let mut k = KBlock::new(f16_le(b.d), f16_le(b.dmin));
    for g in 0..GROUPS {
        k.scale[g] = (b.scales[g] & 0x0F) as i16;
        k.min[g] = (b.scales[g] >> 4) as i16;
    }
    // Element 128n + 32j + l: bits 2j..2j+2 of qs[32n + l].
    for n in 0..2 {
        for j in 0..4 {
            for l in 0..32 {
                k.q[128 * n + 32 * j + l] = ((b.qs[32 * n + l] >> (2 * j)) & 3) as i8;
            }
        }
    }
    k
}

/// Q3_K's 16 signed 6-bit scales: low 4 bits in bytes 0..8 (two per byte), top 2 bits in
/// bytes 8..12 (four per byte).
#[inline(always)]
pub fn unpack_scales_q3_k(s: &[u8; 12]) -> [i16; GROUPS] {
    std::array::from_fn(|g| {
        let low = if g < 8 { s[g] & 0x0F } else { s[g - 8] >> 4 };
        let high = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
        (low | (high << 4)) as i16 - 32
    })
}

#[inline(always)]
pub fn unpack_q3_k(b: &BlockQ3K) -> KBlock {
    let mut k = KBlock::new(f16_le(b.d), 0.0);
    k.scale = unpack_scales_q3_k(&b.scales);
    // Element 128n + 32j + l: 2 bits of qs[32n + l], minus 4 unless bit 4n+j of hmask[l] is set.
    for n in 0..2 {
        for j in 0..4 {
            for l in 0..32 {
                let low = ((b.qs[32 * n + l] >> (2 * j)) & 3) as i8;
                let high_set = (b.hmask[l] >> (4 * n + j)) & 1 == 1;
                k.q[128 * n + 32 * j + l] = low - if high_set { 0 } else { 4 };
            }
        }
    }
    k
}

/// Q4_K/Q5_K scales and mins, each 32-group's value given for both its groups of 16.
pub struct Scales16 {
    pub scale: [i16; GROUPS],
    pub min: [i16; GROUPS],
}

#[inline(always)]
pub fn unpack_scales_q4_k(s: &[u8; 12]) -> Scales16 {
    let mut out = Scales16 {
        scale: [0; GROUPS],
        min: [0; GROUPS],
    };
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, s);
        out.scale[2 * j] = sc;
        out.scale[2 * j + 1] = sc;
        out.min[2 * j] = m;
        out.min[2 * j + 1] = m;
    }
    out
}

#[inline(always)]
fn scales_k4(s: &[u8; 12], k: &mut KBlock) {
    let u = unpack_scales_q4_k(s);
    k.scale = u.scale;
    k.min = u.min;
}

#[inline(always)]
pub fn unpack_q4_k(b: &BlockQ4K) -> KBlock {
    let mut k = KBlock::new(f16_le(b.d), f16_le(b.dmin));
    scales_k4(&b.scales, &mut k);
    // Element 64c + 32h + l: nibble h of qs[32c + l].
    for c in 0..4 {
        for l in 0..32 {
            let byte = b.qs[32 * c + l];
            k.q[64 * c + l] = (byte & 0x0F) as i8;
            k.q[64 * c + 32 + l] = (byte >> 4) as i8;
        }
    }
    k
}

#[inline(always)]
pub fn unpack_q5_k(b: &BlockQ5K) -> KBlock {
    let mut k = KBlock::new(f16_le(b.d), f16_le(b.dmin));
    scales_k4(&b.scales, &mut k);
    // As Q4_K, plus bit (group index) of qh[l] as the fifth bit.
    for c in 0..4 {
        for l in 0..32 {
            let byte = b.qs[32 * c + l];
            let hi_lo = ((b.qh[l] >> (2 * c)) & 1) << 4;
            let hi_hi = ((b.qh[l] >> (2 * c + 1)) & 1) << 4;
            k.q[64 * c + l] = ((byte & 0x0F) | hi_lo) as i8;
            k.q[64 * c + 32 + l] = ((byte >> 4) | hi_hi) as i8;
        }
    }
    k
}

#[inline(always)]
pub fn unpack_q6_k(b: &BlockQ6K) -> KBlock {
    let mut k = KBlock::new(f16_le(b.d), 0.0);
    for g in 0..GROUPS {
        k.scale[g] = b.scales[g] as i16;
    }
    // Per half h of 128: element 128h + 32r + l takes nibble r/2 of ql[64h + 32(r%2) + l]
    // and bits 2r..2r+2 of qh[32h + l].
    for h in 0..2 {
        for r in 0..4 {
            for l in 0..32 {
                let low = (b.ql[64 * h + 32 * (r % 2) + l] >> (4 * (r / 2))) & 0x0F;
                let high = (b.qh[32 * h + l] >> (2 * r)) & 3;
                k.q[128 * h + 32 * r + l] = (low | (high << 4)) as i8 - 32;
            }
        }
    }
    k
}

/// Decodes super-block `i` of a k-quant row.
#[inline(always)]
pub fn unpack(dtype: DType, row: &[u8], i: usize) -> KBlock {
    let bytes = dtype.block_bytes();
    let blk = &row[i * bytes..(i + 1) * bytes];
    match dtype {
        DType::Q2_K => unpack_q2_k(bytemuck::from_bytes(blk)),
        DType::Q3_K => unpack_q3_k(bytemuck::from_bytes(blk)),
        DType::Q4_K => unpack_q4_k(bytemuck::from_bytes(blk)),
        DType::Q5_K => unpack_q5_k(bytemuck::from_bytes(blk)),
        DType::Q6_K => unpack_q6_k(bytemuck::from_bytes(blk)),
        _ => unreachable!("{dtype} is not a k-quant"),
    }
}

/// `out` (256 values) = the weights of one decoded super-block.
#[inline(always)]
pub fn dequantize_block(k: &KBlock, out: &mut [f32]) {
    for (g, o) in out.chunks_exact_mut(16).enumerate() {
        let dl = k.d * k.scale[g] as f32;
        let ml = k.dmin * k.min[g] as f32;
        for (v, &q) in o.iter_mut().zip(&k.q[16 * g..16 * g + 16]) {
            *v = dl * q as f32 - ml;
        }
    }
}

/// A k-quant row · f32 activations, one super-block expanded at a time.
#[inline(always)]
pub fn dot_f32(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let mut w = [0f32; QK_K];
    let mut sum = 0f32;
    for (i, xs) in x.chunks_exact(QK_K).enumerate() {
        dequantize_block(&unpack(dtype, row, i), &mut w);
        sum += crate::dot::dot_f32(&w, xs);
    }
    sum
}

/// ggml's `nearest_int`: round half to even (the FPU's default mode).
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// 256 activations per block: `d = −max/127` where max is the value of largest magnitude,
/// `q = min(127, round(x / d))`, and the sums of each group of 16 quants.
#[inline(always)]
pub fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        // ggml keeps the first value of largest magnitude. Its magnitude first, in lanes the
        // compiler vectorizes (a max is exact in any order), then the first value that has it.
        let mut lanes = [0f32; 16];
        for c in xs.chunks_exact(16) {
            for (m, v) in lanes.iter_mut().zip(c) {
                *m = m.max(v.abs());
            }
        }
        let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
        let max = xs.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
        if amax == 0.0 {
            *b = BlockQ8K::zeroed();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
    }
}

use bytemuck::Zeroable;

/// Σ over groups of scale · Σ q·x (exact in i32), and Σ min · (group sum of x).
#[inline(always)]
fn block_sums(k: &KBlock, x: &BlockQ8K) -> (i32, i32) {
    let mut sumi = 0i32;
    for g in 0..GROUPS {
        let mut s = 0i32;
        for l in 0..16 {
            s += k.q[16 * g + l] as i32 * x.qs[16 * g + l] as i32;
        }
        sumi += s * k.scale[g] as i32;
    }
    let summ: i32 = (0..GROUPS)
        .map(|g| k.min[g] as i32 * x.bsums[g] as i32)
        .sum();
    (sumi, summ)
}

/// A k-quant row · one Q8_K activation row: per block `d_x·d · Σi − d_x·dmin · Σm`.
#[inline(always)]
pub fn dot_q8_k(dtype: DType, row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (i, xb) in x.iter().enumerate() {
        let k = unpack(dtype, row, i);
        let (sumi, summ) = block_sums(&k, xb);
        sum += xb.d * k.d * sumi as f32 - xb.d * k.dmin * summ as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_k_quantization_follows_ggml() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 7919) % 2003) as f32 / 1000.0 - 1.0)
            .collect();
        let mut b = vec![BlockQ8K::zeroed(); 2];
        quantize_q8_k(&x, &mut b);
        for (blk, xs) in b.iter().zip(x.chunks_exact(QK_K)) {
            // The largest-magnitude value maps to ∓127 exactly (d carries its sign).
            let (imax, _) = xs.iter().enumerate().fold((0, 0f32), |(bi, bv), (i, v)| {
                if v.abs() > bv {
                    (i, v.abs())
                } else {
                    (bi, bv)
                }
            });
            assert_eq!(blk.qs[imax], -127);
            for (q, v) in blk.qs.iter().zip(xs) {
                assert!((*q as f32 * blk.d - v).abs() <= 0.5 * blk.d.abs() * 1.0001);
            }
            for (g, s) in blk.bsums.iter().enumerate() {
                let want: i32 = blk.qs[16 * g..16 * g + 16].iter().map(|&q| q as i32).sum();
                assert_eq!(*s as i32, want);
            }
        }
        let mut z = vec![BlockQ8K::zeroed(); 1];
        quantize_q8_k(&[0.0; 256], &mut z);
        assert!(z[0].d == 0.0 && z[0].qs.iter().all(|&q| q == 0));
    }
}
