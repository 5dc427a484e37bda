//! Perplexity as llama.cpp's `llama-perplexity` measures it: the text's tokens (BOS first)
//! cut into non-overlapping windows of `ctx` tokens, each window's first token replaced by
//! BOS, and only the second half of each window scored, so every scored token has at least
//! ctx/2 tokens of context.

use std::collections::BTreeMap;

use bora_engine::{run_batch, BatchJob, BatchOptions};
use bora_model::Model;

use crate::error::{EvalError, Result};
use crate::logits_file::LogitsWriter;
use crate::logprob::{NllSums, RowSoftmax};

/// The windows of a text.
#[derive(Debug, Clone)]
pub struct Windows {
    /// `n_chunks · ctx` tokens, as tokenized.
    pub tokens: Vec<u32>,
    pub ctx: usize,
    pub n_chunks: usize,
    /// Put in each window's first position, when the model expects one.
    pub bos: Option<u32>,
}

impl Windows {
    /// Cuts `tokens` into windows of `ctx`; at most `max_chunks` of them when given.
    pub fn new(
        tokens: &[u32],
        ctx: usize,
        bos: Option<u32>,
        max_chunks: Option<usize>,
    ) -> Result<Self> {
        if ctx < 4 {
            return Err(EvalError::Invalid(format!(
                "a perplexity window of {ctx} tokens is too small (at least 4)"
            )));
        }
        if tokens.len() < 2 * ctx {
            return Err(EvalError::Invalid(format!(
                "the text has {} tokens; a context of {ctx} needs at least {} (two windows)",
                tokens.len(),
                2 * ctx
            )));
        }
        let n_chunks = (tokens.len() / ctx).min(max_chunks.unwrap_or(usize::MAX).max(1));
        Ok(Self {
            tokens: tokens[..n_chunks * ctx].to_vec(),
            ctx,
            n_chunks,
            bos,
        })
    }

    /// Position of the first row whose prediction is scored.
    pub fn first(&self) -> usize {
        self.ctx / 2
    }

    /// Tokens scored in each window.
    pub fn scored_per_chunk(&self) -> usize {
        self.ctx - 1 - self.first()
    }

    /// What the model reads for window `i`.
    fn input(&self, i: usize) -> Vec<u32> {
        let mut w = self.tokens[i * self.ctx..(i + 1) * self.ctx].to_vec();
        if let Some(b) = self.bos {
            w[0] = b;
        }
        w
    }

    /// The tokens window `i`'s scored rows predict, one per row.
    pub fn targets(&self, i: usize) -> &[u32] {
        &self.tokens[i * self.ctx + self.first() + 1..(i + 1) * self.ctx]
    }
}

/// Runs every window through the model, `parallel` windows in flight, and hands each one's
/// scored rows (`[scored_per_chunk, vocab]`) to `per_chunk` in window order.
pub fn run_windows(
    model: &Model,
    w: &Windows,
    batch: BatchOptions,
    mut per_chunk: impl FnMut(usize, &[f32]) -> Result<()>,
) -> Result<()> {
    if w.ctx > model.config.max_context {
        return Err(EvalError::Invalid(format!(
            "a window of {} tokens exceeds the model's context of {} (use a smaller --ctx)",
            w.ctx, model.config.max_context
        )));
    }
    let vocab = model.config.vocab_size;
    if let Some(&t) = w.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(EvalError::Invalid(format!(
            "token {t} is outside the model's vocabulary of {vocab}: the text (or base file) was tokenized for another model"
        )));
    }
    let first = w.first();
    let jobs = (0..w.n_chunks)
        .map(|i| BatchJob::score(w.input(i), first))
        .collect();
    let want = w.scored_per_chunk() * vocab;
    let mut partial: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
    let mut next = 0;
    let mut failure = None;
    let result = run_batch(model, jobs, batch, |out| {
        let buf = partial.entry(out.job).or_default();
        let room = want.saturating_sub(buf.len());
        buf.extend_from_slice(&out.rows[..out.rows.len().min(room)]);
        while partial.get(&next).is_some_and(|b| b.len() == want) {
            let rows = partial.remove(&next).unwrap_or_default();
            if let Err(e) = per_chunk(next, &rows) {
                failure = Some(e);
                return Err(bora_engine::EngineError::Stopped);
            }
            next += 1;
        }
        Ok(None)
    });
    match (failure, result) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(e.into()),
        (None, Ok(())) if next == w.n_chunks => Ok(()),
        (None, Ok(())) => Err(EvalError::Invalid(format!(
            "only {next} of {} windows were scored",
            w.n_chunks
        ))),
    }
}

/// The result of a perplexity run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PerplexityReport {
    pub perplexity: f64,
    pub stderr: f64,
    pub ctx: usize,
    pub chunks: usize,
    pub tokens_scored: usize,
    /// Running estimate after each window, as llama-perplexity prints it.
    pub running: Vec<f64>,
}

/// Adds each scored row's negative log-likelihood of its target.
fn chunk_nll(w: &Windows, chunk: usize, rows: &[f32], vocab: usize, sums: &mut NllSums) {
    for (row, &t) in rows.chunks_exact(vocab).zip(w.targets(chunk)) {
        sums.add(-RowSoftmax::new(row).log_prob(row, t));
    }
}

/// Perplexity of the windows, saving every scored row's log-probabilities to `save` when
/// given; `on_chunk(i, running estimate)` after each window.
pub fn perplexity(
    model: &Model,
    w: &Windows,
    batch: BatchOptions,
    mut save: Option<&mut LogitsWriter>,
    mut on_chunk: impl FnMut(usize, f64),
) -> Result<PerplexityReport> {
    let vocab = model.config.vocab_size;
    let mut sums = NllSums::default();
    let mut running = Vec::new();
    run_windows(model, w, batch, |i, rows| {
        chunk_nll(w, i, rows, vocab, &mut sums);
        if let Some(s) = save.as_deref_mut() {
            for row in rows.chunks_exact(vocab) {
                s.write_row(row)?;
            }
        }
        running.push(sums.perplexity());
        on_chunk(i, sums.perplexity());
        Ok(())
    })?;
    Ok(PerplexityReport {
        perplexity: sums.perplexity(),
        stderr: sums.perplexity_stderr(),
        ctx: w.ctx,
        chunks: w.n_chunks,
        tokens_scored: sums.count,
        running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_score_the_second_half_and_put_bos_first() {
        let tokens: Vec<u32> = (10..60).collect();
        let w = Windows::new(&tokens, 16, Some(1), None).unwrap();
        assert_eq!(w.n_chunks, 3); // 50 tokens: 3 whole windows of 16
        assert_eq!(w.first(), 8);
        assert_eq!(w.scored_per_chunk(), 7);
        assert_eq!(w.input(1)[0], 1);
        assert_eq!(&w.input(1)[1..], &tokens[17..32]);
        // Row 8 of window 1 (token 16+8) predicts the token after it.
        assert_eq!(w.targets(1), &tokens[16 + 9..32]);
        assert!(Windows::new(&tokens[..31], 16, None, None).is_err());
        assert_eq!(
            Windows::new(&tokens, 16, None, Some(2)).unwrap().n_chunks,
            2
        );
    }
}
