//! GGUF quant block layouts (as ggml defines them). Scales are f16 stored as raw bytes so the
//! structs have alignment 1 and can be viewed in place inside a memory-mapped file.

use bytemuck::{Pod, Zeroable};

pub const QK: usize = 32;

/// 32 weights: `w[i] = d · qs[i]`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; QK],
}

/// 32 weights: `w[j] = d · (lo(qs[j]) − 8)`, `w[j+16] = d · (hi(qs[j]) − 8)`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}

/// 32 weights: `w[j] = d · lo(qs[j]) + m`, `w[j+16] = d · hi(qs[j]) + m`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; QK / 2],
}

/// 32 activations quantized for Q4_1 dot products: `x[i] ≈ d · qs[i]`, `s = d · Σ qs`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [i8; QK],
}

/// 32 weights of 5 bits: `w[j] = d · (q[j] − 16)`, `q[j]` = nibble | (bit j of `qh`) << 4
/// (nibbles as in Q4_0: element j low, j+16 high).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// 32 weights of 5 bits with an offset: `w[j] = d · q[j] + m`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Weights per k-quant super-block.
pub const QK_K: usize = 256;

/// 2 bits per weight; 16 groups of 16 with a 4-bit scale and a 4-bit min each:
/// `w = d · (scales[g] & 15) · q − dmin · (scales[g] >> 4)`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}

/// 3 bits per weight (2 low bits in `qs`, the high bit in `hmask`, set meaning "no −4");
/// 16 groups of 16 with 6-bit signed scales: `w = d · (scale − 32) · q`, q in −4..=3.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}

/// 4 bits per weight; 8 groups of 32 with 6-bit scales and mins packed in 12 bytes:
/// `w = d · scale · q − dmin · min`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

/// Q4_K plus a fifth bit per weight in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// 6 bits per weight (4 in `ql`, 2 in `qh`); 16 groups of 16 with i8 scales:
/// `w = d · scale · (q − 32)`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: [u8; 2],
}

/// 256 activations quantized for k-quant dot products: `x ≈ d · qs`, with the sums of each
/// group of 16 quants (for the weights' min terms).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

#[inline]
pub fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// IEEE half → f32, exactly, without branches on the common path (vectorizes; no call).
/// Normals: exponent and mantissa moved into f32 position, the exponent rebiased in integer
/// arithmetic. Subnormals (m · 2⁻²⁴): the integer m converted and scaled, every operand and
/// result a normal f32. The earlier form rescaled every value by 2¹¹², which for a subnormal
/// half multiplied a subnormal f32: a microcode assist on x86 (about 100 cycles), paid per
/// block by kernels reading such scales (a 7B Q6_K file whose block scales were mostly
/// subnormal halves decoded 30% slower).
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let em = (h as u32) & 0x7fff;
    let v = if em >= 0x7c00 {
        f32::from_bits((em << 13) | 0x7f80_0000)
    } else if em >= 0x0400 {
        f32::from_bits((em << 13) + ((127 - 15) << 23))
    } else {
        em as f32 * f32::from_bits(0x3380_0000)
    };
    f32::from_bits(v.to_bits() | sign)
}

#[inline(always)]
pub fn f16_le(b: [u8; 2]) -> f32 {
    f16_to_f32(u16::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn f16_conversion_is_exact_for_every_value() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = super::f16_to_f32(h);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}: {got} vs {want}"
            );
        }
    }
}
