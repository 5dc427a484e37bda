//! Numeric kernels for bora, with no knowledge of models.
//!
//! - [`DType`]: the storage types a weight can have (float and GGUF block-quantized).
//! - [`blocks`]: the `#[repr(C)]` quant block layouts, size-checked at compile time.
//! - [`dot`]: a stored row (any dtype) · an f32 vector, dequantizing block by block;
//!   [`dequantize_row`] turns one stored row into f32.
//! - [`MatRef`] + [`matmul`]: `out[t] = W · x[t]` for a batch of activation rows, split over
//!   threads by weight rows, each weight row read once for the whole batch.
//! - [`ops`]: RMSNorm, SiLU, softmax, rotary embedding.
//!
//! Every kernel here is the plain reference implementation; SIMD versions will sit beside them
//! and be tested against them.

pub mod act_quant;
pub mod attention;
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
mod x86_tile;

pub use dot::{dequantize_row, dot_f32, dot_row};
pub use dtype::{DType, DTypeError};
pub use matmul::{matmul, matmul_with, Activations, MatRef};
