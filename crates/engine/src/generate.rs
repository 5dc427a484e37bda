//! Text generation for one sequence: chunked prefill, then sample-and-decode until done.

use std::ops::ControlFlow;
use std::time::Instant;

use bora_model::{LogitsRows, Model};

use crate::error::{EngineError, Result};
use crate::sampler::{Sampler, SamplingParams};
use crate::session::Session;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Most prompt tokens per forward step.
    pub prefill_chunk: usize,
    pub block_size: usize,
    pub sampling: SamplingParams,
    /// Generation ends at these tokens (not emitted). Empty: run to `max_new_tokens`.
    pub stop_tokens: Vec<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    pub generated_tokens: usize,
    pub generate_secs: f64,
    /// True when a stop token ended generation.
    pub stopped: bool,
}

impl GenerationStats {
    pub fn prompt_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_secs.max(1e-9)
    }

    pub fn generated_tokens_per_s(&self) -> f64 {
        self.generated_tokens as f64 / self.generate_secs.max(1e-9)
    }
}

/// Default prefill chunk: the sliding window when the model has one, else 512, as the
/// Mistral paper chunks a prompt by its window.
pub fn default_prefill_chunk(model: &Model) -> usize {
    model.config.sliding_window.unwrap_or(512).min(512)
}

/// Generates after `prompt`, calling `on_token` with each new token as it is chosen; it
/// returns `ControlFlow::Break` to stop early (a reader that went away).
pub fn generate(
    model: &Model,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<GenerationStats> {
    if prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    let limit = model.config.max_context;
    if prompt.len().saturating_add(opts.max_new_tokens) > limit {
        return Err(EngineError::TooLong {
            prompt: prompt.len(),
            requested: opts.max_new_tokens,
            limit,
        });
    }
    let mut sampler = Sampler::new(opts.sampling.clone())?;
    let mut session = Session::new(model, opts.block_size, opts.prefill_chunk)?;
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut logits = session.prefill(prompt, opts.prefill_chunk, LogitsRows::Last)?;
    stats.prompt_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut history = prompt.to_vec();
    for i in 0..opts.max_new_tokens {
        let next = sampler.sample(&logits, &history)?;
        if opts.stop_tokens.contains(&next) {
            stats.stopped = true;
            break;
        }
        history.push(next);
        stats.generated_tokens += 1;
        if on_token(next).is_break() {
            break;
        }
        if i + 1 < opts.max_new_tokens {
            session.step_into(&[next], LogitsRows::Last, &mut logits)?;
        }
    }
    stats.generate_secs = t1.elapsed().as_secs_f64();
    Ok(stats)
}
