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

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

#[inline]
pub fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

#[inline]
pub fn f16_le(b: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(b).to_f32()
}
