//! Measuring a model: perplexity the way llama.cpp measures it, KL divergence against a
//! saved base run (llama.cpp's file format), and benchmark tasks (MMLU, GSM8K, HumanEval,
//! any multiple-choice set) scored as lm-evaluation-harness scores them. Everything runs
//! batched through the engine: many sequences share each forward step.

pub mod error;
pub mod generation;
pub mod kl;
pub mod logits_file;
pub mod loglik;
pub mod logprob;
pub mod perplexity;
pub mod tasks;

pub use error::{EvalError, Result};
