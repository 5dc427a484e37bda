//! One sequence and its own KV pool: the unit `run`, `logits` and the tests drive.

use bora_model::kv_cache::MAX_BLOCK_SIZE;
use bora_model::{KvPool, LogitsRows, Model, SeqKv, SeqStep};

use crate::error::{EngineError, Result};

pub struct Session<'m> {
    model: &'m Model,
    pool: KvPool,
    seq: SeqKv,
}

impl<'m> Session<'m> {
    /// `max_chunk` bounds the tokens fed in one step, which sizes the pool under a window.
    pub fn new(model: &'m Model, block_size: usize, max_chunk: usize) -> Result<Self> {
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(EngineError::InvalidOption(format!(
                "KV block size {block_size} is outside 1..={MAX_BLOCK_SIZE}"
            )));
        }
        let max_chunk = max_chunk.clamp(1, model.config.max_context);
        let capacity = model.blocks_per_sequence(block_size, max_chunk);
        Ok(Self {
            model,
            pool: KvPool::new(model.kv_layout(block_size), capacity),
            seq: SeqKv::new(),
        })
    }

    /// Positions processed so far.
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    /// Runs `tokens` in one step; returns the logits of the rows asked for, `[rows, vocab]`.
    pub fn step(&mut self, tokens: &[u32], rows: LogitsRows) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.step_into(tokens, rows, &mut out)?;
        Ok(out)
    }

    /// [`Session::step`] into `logits` (replacing what it held, reusing its capacity): a
    /// decode loop that keeps one buffer allocates nothing per token, but the KV block opened
    /// every `block_size` positions.
    pub fn step_into(
        &mut self,
        tokens: &[u32],
        rows: LogitsRows,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let mut steps = [SeqStep {
            tokens,
            kv: &mut self.seq,
            logits: rows,
        }];
        self.model
            .forward_into(&mut self.pool, &mut steps, std::slice::from_mut(logits))?;
        Ok(())
    }

    /// Feeds a prompt in chunks of at most `chunk` tokens. Returns the logits `rows` asks for:
    /// the last position's (`Last`), every position's (`All`, `[positions, vocab]`), those from
    /// a position on (`From`), or none.
    pub fn prefill(&mut self, tokens: &[u32], chunk: usize, rows: LogitsRows) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        let chunk = chunk.max(1);
        let chunks: Vec<&[u32]> = tokens.chunks(chunk).collect();
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let start = i * chunk;
            let step_rows = match rows {
                LogitsRows::Last if !last => LogitsRows::None,
                LogitsRows::From(k) if k >= start + c.len() => LogitsRows::None,
                LogitsRows::From(k) => LogitsRows::From(k.saturating_sub(start)),
                r => r,
            };
            out.extend_from_slice(&self.step(c, step_rows)?);
        }
        Ok(out)
    }

    /// Forgets positions from `n` on (to take another continuation from there). When the
    /// window has already dropped what position `n` needs, forgets everything: returns the
    /// positions kept, `n` or 0.
    pub fn rewind(&mut self, n: usize) -> usize {
        if self
            .seq
            .truncate(&mut self.pool, n, self.model.config.sliding_window)
        {
            n.min(self.seq.len())
        } else {
            0
        }
    }

    /// KV blocks this sequence holds now.
    pub fn blocks_held(&self) -> usize {
        self.seq.blocks_held()
    }

    /// The pool behind this session.
    pub fn pool(&self) -> &KvPool {
        &self.pool
    }

    /// Bytes of KV storage the pool has allocated.
    pub fn kv_bytes(&self) -> usize {
        self.pool.bytes_allocated()
    }
}
