//! Numeric kernels for bora, with no knowledge of models.
//!
//! - [`DType`]: the storage types a weight can have (float and GGUF block-quantized).
//! - [`blocks`]: the `#[repr(C)]` quant block layouts, size-checked at compile time.
//! - [`dot`]: a stored row (any dtype) · an f32 vector, dequantizing block by block;
//!   [`dequantize_row`] turns one stored row into f32.
//! - [`MatRef`] + [`matmul`]: `out[t] = W · x[t]` for a batch of activation rows, split over
//!   threads by weight rows, each weight row read once for the whole batch.
//! - [`act_quant`] and [`kquants`]: activations rounded to 8 bits as ggml does, and the
//!   integer block dot products against them (the scalar references).
//! - [`attention`]: one query head against a run of cached keys, with an online softmax;
//!   [`attention_group`]: decode's pass, the heads sharing a KV head over the cache as stored.
//! - [`quantize`]: weights to the GGUF block types.
//! - [`ops`]: RMSNorm, SiLU, softmax, rotary embedding.
//! - [`dispatch`]: which instruction set the CPU has, chosen at run time.
//!
//! The plain-Rust kernels are the references, compiled once per instruction set where the
//! compiler vectorizes them. The x86 modules beside them are hand-written: row kernels for
//! decode (`x86`) and register-tiled kernels for prefill (`x86_tile`); each is tested against
//! its reference.

pub mod act_quant;
pub mod attention;
pub mod attention_group;
pub mod blocks;
pub mod dispatch;
pub mod dot;
pub mod dtype;
pub mod kquants;
pub mod matmul;
pub mod ops;
pub mod quantize;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_amx;
#[cfg(target_arch = "x86_64")]
mod x86_decode;
#[cfg(target_arch = "x86_64")]
mod x86_tile;
#[cfg(target_arch = "x86_64")]
mod x86_tile_avx2;

pub use dot::{dequantize_row, dot_f32, dot_row};
pub use dtype::{DType, DTypeError};
pub use matmul::{matmul, matmul_with, Activations, MatRef};
