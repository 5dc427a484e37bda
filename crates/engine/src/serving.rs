//! The serving loop: one thread owns the model and runs continuous batching. Requests join
//! and leave between steps; each step packs the next token of every running sequence and
//! chunks of the prompts still being read, within a token budget, so a long prompt never
//! stalls the others for more than one step.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;

use bora_model::{KvPool, LogitsRows, Model, SeqKv, SeqStep};

use crate::sampler::{Sampler, SamplingParams};

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token.
    Stop,
    /// `max_tokens`, or the context, reached.
    Length,
    /// The client went away.
    Cancelled,
}

/// What a request's sink receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token(u32),
    Done {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

/// Receives a request's events; returns false when nobody listens any more (the sequence is
/// then cancelled and its blocks freed at once).
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_tokens: Vec<u32>,
    pub sink: Sink,
}

#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Sequences running at once.
    pub max_seqs: usize,
    /// Most tokens in one step.
    pub step_tokens: usize,
    pub block_size: usize,
    /// KV blocks in the pool.
    pub kv_blocks: usize,
}

struct Running {
    req: Request,
    kv: SeqKv,
    tokens: Vec<u32>,
    fed: usize,
    sampler: Sampler,
    generated: usize,
}

impl Running {
    fn prompt_len(&self) -> usize {
        self.req.prompt.len()
    }
}

/// Blocks a sequence of `len` positions can hold at most.
fn blocks_for(model: &Model, len: usize, opts: &ServeOptions) -> usize {
    let span = match model.config.sliding_window {
        Some(w) => len.min(w + opts.step_tokens),
        None => len,
    };
    span.div_ceil(opts.block_size) + 1
}

/// What the loop reports, for `/metrics`: gauges of now and counters since start.
#[derive(Debug, Default)]
pub struct ServeStats {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub kv_blocks_used: AtomicUsize,
    pub kv_blocks_total: AtomicUsize,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub steps: AtomicU64,
}

/// Runs until every sender of `requests` is gone and the last sequence has finished.
pub fn serve_loop(
    model: Arc<Model>,
    requests: Receiver<Request>,
    opts: ServeOptions,
    stats: Arc<ServeStats>,
) {
    stats.kv_blocks_total.store(opts.kv_blocks, Relaxed);
    let mut pool = KvPool::new(model.kv_layout(opts.block_size), opts.kv_blocks);
    let mut waiting: VecDeque<Request> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    let mut reserved = 0usize; // blocks promised to running sequences
    let ctx = model.config.max_context;
    let mut open = true;
    loop {
        // Take new requests; wait for one when idle.
        loop {
            let next = if running.is_empty() && waiting.is_empty() && open {
                requests.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                requests.try_recv()
            };
            match next {
                Ok(r) => waiting.push_back(r),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !open && running.is_empty() && waiting.is_empty() {
            return;
        }
        // Admit in arrival order while the pool can hold each sequence whole.
        while running.len() < opts.max_seqs {
            let Some(mut r) = waiting.pop_front() else {
                break;
            };
            // A request that could outgrow the whole pool is capped to what it can hold.
            let fits = opts.kv_blocks.saturating_sub(1) * opts.block_size;
            if model.config.sliding_window.is_none() && r.prompt.len() + r.max_tokens > fits {
                r.max_tokens = fits.saturating_sub(r.prompt.len());
            }
            let len = (r.prompt.len() + r.max_tokens).min(ctx);
            let need = blocks_for(&model, len, &opts);
            if need > opts.kv_blocks || r.max_tokens == 0 {
                (r.sink)(Event::Error(format!(
                    "the prompt of {} tokens does not fit the KV cache ({} blocks of {}); give the server more --kv-memory-mib",
                    r.prompt.len(),
                    opts.kv_blocks,
                    opts.block_size
                )));
                continue;
            }
            if reserved + need > opts.kv_blocks {
                waiting.push_front(r);
                break;
            }
            let sampler = match Sampler::new(r.sampling.clone()) {
                Ok(s) => s,
                Err(e) => {
                    (r.sink)(Event::Error(e.to_string()));
                    continue;
                }
            };
            reserved += need;
            running.push(Running {
                tokens: r.prompt.clone(),
                req: r,
                kv: SeqKv::new(),
                fed: 0,
                sampler,
                generated: 0,
            });
        }
        stats.running.store(running.len(), Relaxed);
        stats.waiting.store(waiting.len(), Relaxed);
        if running.is_empty() {
            continue;
        }
        // Decoding sequences first (one token each), then prompt chunks in the budget left.
        running.sort_by_key(|r| r.tokens.len() - r.fed > 1);
        let mut budget = opts.step_tokens;
        let takes: Vec<usize> = running
            .iter()
            .map(|r| {
                let n = (r.tokens.len() - r.fed).min(budget);
                budget -= n;
                n
            })
            .collect();
        let result = {
            let mut steps: Vec<SeqStep<'_>> = running
                .iter_mut()
                .zip(&takes)
                .map(|(r, &n)| SeqStep {
                    tokens: &r.tokens[r.fed..r.fed + n],
                    logits: if n > 0 && r.fed + n == r.tokens.len() {
                        LogitsRows::Last
                    } else {
                        LogitsRows::None
                    },
                    kv: &mut r.kv,
                })
                .collect();
            model.forward(&mut pool, &mut steps)
        };
        let outputs = match result {
            Ok(o) => o,
            Err(e) => {
                // A failed step fails every sequence in it; the server goes on.
                for mut r in running.drain(..) {
                    (r.req.sink)(Event::Error(e.to_string()));
                    r.kv.free(&mut pool);
                }
                reserved = 0;
                continue;
            }
        };
        stats.steps.fetch_add(1, Relaxed);
        stats.kv_blocks_used.store(pool.blocks_in_use(), Relaxed);
        let mut done = Vec::new();
        for (i, ((r, &n), logits)) in running.iter_mut().zip(&takes).zip(&outputs).enumerate() {
            if n == 0 {
                continue;
            }
            if r.fed < r.prompt_len() {
                let prompt_part = (r.fed + n).min(r.prompt_len()) - r.fed;
                stats.prompt_tokens.fetch_add(prompt_part as u64, Relaxed);
            }
            r.fed += n;
            if r.fed < r.tokens.len() {
                continue;
            }
            let finish = |r: &mut Running, reason| {
                let (prompt_tokens, completion_tokens) = (r.prompt_len(), r.generated);
                (r.req.sink)(Event::Done {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                });
            };
            let next = match r.sampler.sample(logits, &r.tokens) {
                Ok(t) => t,
                Err(e) => {
                    (r.req.sink)(Event::Error(e.to_string()));
                    done.push(i);
                    continue;
                }
            };
            if r.req.stop_tokens.contains(&next) {
                finish(r, FinishReason::Stop);
                done.push(i);
                continue;
            }
            r.generated += 1;
            stats.generated_tokens.fetch_add(1, Relaxed);
            if !(r.req.sink)(Event::Token(next)) {
                done.push(i);
                continue;
            }
            if r.generated >= r.req.max_tokens || r.tokens.len() + 1 >= ctx {
                finish(r, FinishReason::Length);
                done.push(i);
                continue;
            }
            r.tokens.push(next);
        }
        for &i in done.iter().rev() {
            let mut r = running.swap_remove(i);
            let len = (r.prompt_len() + r.req.max_tokens).min(ctx);
            reserved = reserved.saturating_sub(blocks_for(&model, len, &opts));
            r.kv.free(&mut pool);
        }
        stats.kv_blocks_used.store(pool.blocks_in_use(), Relaxed);
        stats.running.store(running.len(), Relaxed);
    }
}

/// Starts the loop on its own thread; requests go to the returned sender.
pub fn spawn(model: Arc<Model>, opts: ServeOptions, stats: Arc<ServeStats>) -> Sender<Request> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bora-engine".into())
        .spawn(move || serve_loop(model, rx, opts, stats))
        .expect("cannot start the engine thread");
    tx
}

/// Stop strings over streamed text: text is released only once no stop string can still
/// start in it, so a stop string split across tokens is caught and never shown.
#[derive(Debug, Default)]
pub struct StopText {
    stops: Vec<String>,
    held: String,
}

impl StopText {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Takes the next piece of text; returns the text safe to show, and whether a stop
    /// string was reached (the text before it is all that is shown).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // Hold back the longest tail that could begin a stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in self.held.char_indices() {
                let tail = &self.held[i..];
                if tail.len() > keep && s.starts_with(tail) {
                    keep = tail.len();
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// What is still held back once the text has ended.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_split_across_pieces_are_caught_and_never_shown() {
        let mut s = StopText::new(vec!["\nUser:".into(), "END".into()]);
        assert_eq!(s.push("Hello"), ("Hello".into(), false));
        assert_eq!(s.push(" wor"), (" wor".into(), false));
        assert_eq!(s.push("ld\nUs"), ("ld".into(), false));
        assert_eq!(s.push("er: next"), (String::new(), true));
        let mut s = StopText::new(vec!["END".into()]);
        assert_eq!(s.push("aEN"), ("a".into(), false));
        assert_eq!(s.push("x"), ("ENx".into(), false));
        assert_eq!(s.push("E"), (String::new(), false));
        assert_eq!(s.flush(), "E");
        let mut s = StopText::new(vec![]);
        assert_eq!(s.push("ünï"), ("ünï".into(), false));
    }
}
