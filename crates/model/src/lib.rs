//! bora's model layer: from a checkpoint on disk to logits.
//!
//! - [`Checkpoint`]: an HF folder or GGUF file opened, its [`ModelConfig`] read and every tensor
//!   located and bounds-checked in the memory-mapped file(s) ([`safetensors`], [`gguf`]).
//! - [`ModelWeights`]: the tensors the forward pass uses, found through the one name table
//!   ([`names`]) and checked against the config; they stay in their stored dtype.
//! - [`Model::forward`]: one batched step — prefill chunks and decode tokens of many sequences —
//!   against the paged [`KvPool`] each sequence addresses through its [`SeqKv`].

pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod gguf;
pub mod gguf_write;
pub mod kv_cache;
pub mod mmap;
pub mod model;
pub mod moe;
pub mod names;
pub mod rope;
pub mod safetensors;
pub mod tensor;
pub mod weights;

pub use checkpoint::Checkpoint;
pub use config::{Arch, ModelConfig, MoeConfig};
pub use error::{ModelError, Result};
pub use kv_cache::{block_hashes, next_block_hash, BlockHash, KvLayout, KvPool, KvType, SeqKv};
pub use model::{LogitsRows, Model, SeqStep, DEFAULT_BLOCK_SIZE};
pub use weights::{ModelWeights, QuantizeReport};
