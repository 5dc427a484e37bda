//! Many independent sequences through one model, step by step: each step packs the next
//! token of every generating sequence and chunks of the prompts still being read into one
//! forward pass, so every read of the weights serves all of them. Scoring (perplexity,
//! log-likelihoods) and batched generation both run on this loop.

use std::collections::VecDeque;

use bora_model::kv_cache::MAX_BLOCK_SIZE;
use bora_model::{KvPool, LogitsRows, Model, SeqKv, SeqStep};

use crate::error::{EngineError, Result};

/// One sequence to run: its known tokens, which positions need logits, and how far it may grow.
#[derive(Debug, Clone)]
pub struct BatchJob {
    pub tokens: Vec<u32>,
    /// First position whose logits the caller wants (`tokens.len()`: none while reading them).
    pub logits_from: usize,
    /// Most positions the sequence may reach, generated tokens included.
    pub max_len: usize,
}

impl BatchJob {
    /// A job that only reads `tokens`, wanting the logits of positions `logits_from..`.
    pub fn score(tokens: Vec<u32>, logits_from: usize) -> Self {
        let max_len = tokens.len();
        Self {
            tokens,
            logits_from,
            max_len,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Sequences in flight at once.
    pub max_seqs: usize,
    /// Most tokens in one forward step (a generating sequence always counts one).
    pub step_tokens: usize,
    pub block_size: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_seqs: 8,
            step_tokens: 512,
            block_size: bora_model::DEFAULT_BLOCK_SIZE,
        }
    }
}

/// The logits a step produced for one job.
pub struct JobLogits<'a> {
    pub job: usize,
    /// Position of the first row.
    pub first_pos: usize,
    /// `[rows, vocab]`, row-major.
    pub rows: &'a [f32],
    /// True when the job's last known token has been read: the caller now appends the next
    /// token (generation) or lets the job finish.
    pub at_end: bool,
}

struct Active {
    job: usize,
    kv: SeqKv,
    tokens: Vec<u32>,
    /// Tokens already run through the model.
    fed: usize,
    logits_from: usize,
    max_len: usize,
}

/// Runs every job to its end. `on_logits` gets each job's rows as they are computed; when
/// `at_end` is set it returns `Some(token)` to extend the job (within its `max_len`) or
/// `None` to finish it. Jobs are started in order; at most `max_seqs` run at once.
pub fn run_batch(
    model: &Model,
    jobs: Vec<BatchJob>,
    opts: BatchOptions,
    mut on_logits: impl FnMut(JobLogits<'_>) -> Result<Option<u32>>,
) -> Result<()> {
    let cfg = &model.config;
    if opts.block_size == 0 || opts.block_size > MAX_BLOCK_SIZE {
        return Err(EngineError::InvalidOption(format!(
            "KV block size {} is outside 1..={MAX_BLOCK_SIZE}",
            opts.block_size
        )));
    }
    if opts.max_seqs == 0 || opts.step_tokens == 0 {
        return Err(EngineError::InvalidOption(
            "a batch needs at least one sequence and one token per step".into(),
        ));
    }
    for j in &jobs {
        if j.tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if j.max_len.max(j.tokens.len()) > cfg.max_context {
            return Err(EngineError::TooLong {
                prompt: j.tokens.len(),
                requested: j.max_len.saturating_sub(j.tokens.len()),
                limit: cfg.max_context,
            });
        }
    }
    let longest = jobs
        .iter()
        .map(|j| j.max_len.max(j.tokens.len()))
        .max()
        .unwrap_or(0);
    let span = match cfg.sliding_window {
        Some(w) => longest.min(w.saturating_add(opts.step_tokens)),
        None => longest,
    };
    let per_seq = span.div_ceil(opts.block_size) + 1;
    let mut pool = KvPool::new(
        model.kv_layout(opts.block_size),
        per_seq * opts.max_seqs.min(jobs.len().max(1)),
    );
    let mut pending: VecDeque<(usize, BatchJob)> = jobs.into_iter().enumerate().collect();
    let mut active: Vec<Active> = Vec::new();
    let vocab = cfg.vocab_size;
    loop {
        while active.len() < opts.max_seqs {
            let Some((job, j)) = pending.pop_front() else {
                break;
            };
            active.push(Active {
                job,
                kv: SeqKv::new(),
                max_len: j.max_len.max(j.tokens.len()),
                tokens: j.tokens,
                fed: 0,
                logits_from: j.logits_from,
            });
        }
        if active.is_empty() {
            return Ok(());
        }
        // Generating sequences (one token waiting) first, so decoding never waits on a prompt.
        active.sort_by_key(|a| (a.tokens.len() - a.fed > 1, a.job));
        let mut budget = opts.step_tokens;
        let mut takes = Vec::with_capacity(active.len());
        for a in &active {
            let n = (a.tokens.len() - a.fed).min(budget);
            budget -= n;
            takes.push(n);
        }
        let outputs = {
            let mut steps: Vec<SeqStep<'_>> = active
                .iter_mut()
                .zip(&takes)
                .map(|(a, &n)| {
                    let logits = if n > 0 && a.logits_from < a.fed + n {
                        LogitsRows::From(a.logits_from.saturating_sub(a.fed))
                    } else {
                        LogitsRows::None
                    };
                    SeqStep {
                        tokens: &a.tokens[a.fed..a.fed + n],
                        kv: &mut a.kv,
                        logits,
                    }
                })
                .collect();
            model.forward(&mut pool, &mut steps)?
        };
        let mut finished = Vec::new();
        for ((i, a), (&n, rows)) in active
            .iter_mut()
            .enumerate()
            .zip(takes.iter().zip(&outputs))
        {
            if n == 0 {
                continue;
            }
            let first_pos = a.logits_from.max(a.fed);
            a.fed += n;
            let at_end = a.fed == a.tokens.len();
            if rows.is_empty() && !at_end {
                continue;
            }
            debug_assert_eq!(rows.len() % vocab, 0);
            let next = on_logits(JobLogits {
                job: a.job,
                first_pos,
                rows,
                at_end,
            })?;
            if !at_end {
                continue;
            }
            match next {
                Some(t) if a.tokens.len() < a.max_len => {
                    a.tokens.push(t);
                    a.logits_from = a.logits_from.max(a.tokens.len() - 1);
                }
                Some(_) => {
                    return Err(EngineError::TooLong {
                        prompt: a.tokens.len(),
                        requested: 1,
                        limit: a.max_len,
                    })
                }
                None => finished.push(i),
            }
        }
        for &i in finished.iter().rev() {
            let mut a = active.swap_remove(i);
            a.kv.free(&mut pool);
        }
    }
}
