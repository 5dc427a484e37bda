//! The serving loop: one thread owns the model and runs continuous batching. Requests join
//! and leave between steps; each step packs the next token of every running sequence and
//! chunks of the prompts still being read, within a token budget, so a long prompt never
//! stalls the others for more than one step.
//!
//! Memory is paged ([`KvPool`]): a sequence takes blocks as it grows. Full blocks are hashed
//! and shared: a prompt that begins like an earlier one (a system prompt, the previous turns
//! of a chat) takes the cached blocks and skips their prefill. When a step needs a block and
//! none is left, the youngest sequence is preempted: its blocks go back to the pool, and it
//! waits at the head of the queue to be recomputed (its prefix is often still cached).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;

use bora_model::{next_block_hash, BlockHash, KvPool, LogitsRows, Model, SeqKv, SeqStep};

use crate::sampler::{logprobs_of, Sampler, SamplingParams, TokenLogprobs};

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
    /// The prompt is read (sent once, before the first token): how many of its tokens came
    /// from the prefix cache, and, when the request asked for them, the log-probabilities of
    /// prompt tokens 1.. (token 0 has none).
    Prompt {
        cached_tokens: usize,
        logprobs: Option<Vec<TokenLogprobs>>,
    },
    /// A generated token, with its log-probability when the request asked for them.
    Token {
        id: u32,
        logprobs: Option<TokenLogprobs>,
    },
    Done {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Prompt tokens whose KV came from the prefix cache.
        cached_tokens: usize,
    },
    Error(String),
}

/// Receives a request's events; returns false when nobody listens any more (the sequence is
/// then cancelled and its blocks freed at once).
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

pub struct Request {
    pub prompt: Vec<u32>,
    /// 0 only makes sense with `prompt_logprobs` (scoring a text).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_tokens: Vec<u32>,
    /// Report each generated token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    /// Report the prompt tokens' log-probabilities (such a prompt is computed, not taken from
    /// the prefix cache).
    pub prompt_logprobs: bool,
    pub sink: Sink,
    /// Whether the client has gone; asked every step, so a request that is waiting or still
    /// reading its prompt is dropped as fast as one that is generating.
    pub cancelled: Box<dyn Fn() -> bool + Send>,
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
    /// Share full blocks between prompts with the same beginning.
    pub prefix_caching: bool,
}

/// What the loop reports, for `/metrics`: gauges of now and counters since start.
#[derive(Debug, Default)]
pub struct ServeStats {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub kv_blocks_used: AtomicUsize,
    pub kv_blocks_cached: AtomicUsize,
    pub kv_blocks_total: AtomicUsize,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub steps: AtomicU64,
    /// Prompt tokens looked up in the prefix cache, and those found there.
    pub prefix_queried_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    pub preemptions: AtomicU64,
}

/// A request in the engine, waiting or running.
struct Seq {
    req: Request,
    sampler: Sampler,
    /// Prompt, then every generated token.
    tokens: Vec<u32>,
    kv: SeqKv,
    /// Tokens whose KV is in `kv`.
    fed: usize,
    generated: usize,
    /// Chained hashes of the full blocks of `tokens`.
    hashes: Vec<BlockHash>,
    /// Full blocks already offered to the prefix cache.
    registered: usize,
    /// Prompt tokens counted in the stats (a recomputed prompt is not counted twice).
    prompt_counted: usize,
    /// Whether the prompt was looked up in the prefix cache (counted once).
    queried: bool,
    cached_tokens: usize,
    prompt_lps: Option<Vec<TokenLogprobs>>,
    /// Whether `Event::Prompt` went out (a recomputed prompt is not announced again).
    announced: bool,
    /// Arrival order: the youngest is preempted first.
    order: u64,
}

impl Seq {
    fn prompt_len(&self) -> usize {
        self.req.prompt.len()
    }

    fn push_token(&mut self, t: u32, block_size: usize) {
        self.tokens.push(t);
        if self.tokens.len().is_multiple_of(block_size) {
            let parent = self.hashes.last().copied().unwrap_or(0);
            let block = &self.tokens[self.tokens.len() - block_size..];
            self.hashes.push(next_block_hash(parent, block));
        }
    }

    /// Still reading known tokens (a prompt, or a recomputation after preemption).
    fn reading(&self) -> bool {
        self.tokens.len() - self.fed > 1
    }

    fn finish(&mut self, reason: FinishReason) {
        let e = Event::Done {
            reason,
            prompt_tokens: self.prompt_len(),
            completion_tokens: self.generated,
            cached_tokens: self.cached_tokens,
        };
        (self.req.sink)(e);
    }
}

/// The loop's state between steps.
struct Scheduler {
    model: Arc<Model>,
    opts: ServeOptions,
    stats: Arc<ServeStats>,
    pool: KvPool,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    arrivals: u64,
}

impl Scheduler {
    fn window(&self) -> Option<usize> {
        self.model.config.sliding_window
    }

    /// Most blocks a sequence of `len` positions holds at once.
    fn span_blocks(&self, len: usize) -> usize {
        let span = match self.window() {
            Some(w) => len.min(w + self.opts.step_tokens),
            None => len,
        };
        span.div_ceil(self.opts.block_size) + 1
    }

    fn enqueue(&mut self, req: Request) {
        let b = self.opts.block_size;
        let sampler = match Sampler::new(req.sampling.clone()) {
            Ok(s) => s,
            Err(e) => return fail(req, e.to_string()),
        };
        let ctx = self.model.config.max_context;
        if req.prompt.is_empty() || req.prompt.len() >= ctx {
            let msg = format!(
                "the prompt has {} tokens; it needs 1 to {} (the context is {ctx})",
                req.prompt.len(),
                ctx - 1
            );
            return fail(req, msg);
        }
        if self.span_blocks(req.prompt.len() + 1) > self.opts.kv_blocks {
            let msg = format!(
                "the prompt of {} tokens does not fit the KV cache ({} blocks of {b}); give the server more --kv-memory-mib",
                req.prompt.len(),
                self.opts.kv_blocks
            );
            return fail(req, msg);
        }
        let vocab = self.model.config.vocab_size;
        if let Some(&id) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return fail(
                req,
                format!("prompt token {id} is outside the vocabulary of {vocab}"),
            );
        }
        if req.max_tokens == 0 && !req.prompt_logprobs {
            let mut s = req;
            (s.sink)(Event::Done {
                reason: FinishReason::Length,
                prompt_tokens: s.prompt.len(),
                completion_tokens: 0,
                cached_tokens: 0,
            });
            return;
        }
        self.arrivals += 1;
        let mut seq = Seq {
            tokens: Vec::new(),
            sampler,
            kv: SeqKv::new(),
            fed: 0,
            generated: 0,
            hashes: Vec::new(),
            registered: 0,
            prompt_counted: 0,
            queried: false,
            cached_tokens: 0,
            prompt_lps: req.prompt_logprobs.then(Vec::new),
            announced: false,
            order: self.arrivals,
            req,
        };
        for &t in &seq.req.prompt.clone() {
            seq.push_token(t, b);
        }
        self.waiting.push_back(seq);
    }

    /// Full blocks at the start of `seq` whose KV is cached and usable: without a window,
    /// a run from block 0; with one, the blocks the next query can see. At least one token
    /// is always left to compute, for its logits.
    fn cached_prefix(&self, seq: &Seq) -> (usize, usize) {
        let b = self.opts.block_size;
        if !self.opts.prefix_caching || seq.req.prompt_logprobs {
            return (0, 0);
        }
        let usable = ((seq.tokens.len() - 1) / b).min(seq.hashes.len());
        let mut best = (0, 0);
        let mut run = 0; // cached blocks ending at block k−1
        for k in 1..=usable {
            run = if self.pool.is_cached(&seq.hashes[k - 1]) {
                run + 1
            } else {
                0
            };
            let first = match self.window() {
                Some(w) => (k * b + 1).saturating_sub(w) / b,
                None => 0,
            };
            if run >= k - first {
                best = (k, first);
            }
        }
        best
    }

    /// Blocks the running sequences still need for the tokens they already know.
    fn pending_blocks(&self) -> usize {
        let b = self.opts.block_size;
        self.running
            .iter()
            .map(|s| {
                let need = s.kv.blocks_needed(b, s.tokens.len() - s.fed);
                need.min(self.span_blocks(s.tokens.len()))
            })
            .sum()
    }

    /// Moves waiting sequences to running, in order, while their known tokens fit.
    fn admit(&mut self) {
        let b = self.opts.block_size;
        // Requests whose next block another running prompt is computing now: they wait for it
        // to be cached rather than compute it again (`n` choices, or users sharing a system
        // prompt, arriving together).
        let mut deferred = Vec::new();
        while self.running.len() < self.opts.max_seqs {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            let (hit, first) = self.cached_prefix(&seq);
            if self.being_computed(&seq, hit) {
                deferred.push(seq);
                continue;
            }
            if hit > 0 && !seq.kv.adopt(&mut self.pool, &seq.hashes[..hit], first) {
                seq.kv = SeqKv::new();
            }
            let reused = seq.kv.len();
            let need = seq
                .kv
                .blocks_needed(b, seq.tokens.len() + 1 - reused)
                .min(self.span_blocks(seq.tokens.len() + 1));
            if self.pool.available() < self.pending_blocks() + need && !self.running.is_empty() {
                seq.kv.free(&mut self.pool);
                self.waiting.push_front(seq);
                break;
            }
            if !seq.queried {
                seq.queried = true;
                let queried = seq.prompt_len() as u64;
                self.stats.prefix_queried_tokens.fetch_add(queried, Relaxed);
                self.stats
                    .prefix_hit_tokens
                    .fetch_add(reused as u64, Relaxed);
                seq.cached_tokens = reused.min(seq.prompt_len());
                seq.prompt_counted = seq.cached_tokens;
            }
            seq.fed = reused;
            self.running.push(seq);
        }
        for seq in deferred.into_iter().rev() {
            self.waiting.push_front(seq);
        }
    }

    /// Whether a running sequence is reading the block `seq` needs after its `hit` cached
    /// ones (so it will be cached within a few steps).
    fn being_computed(&self, seq: &Seq, hit: usize) -> bool {
        let b = self.opts.block_size;
        let Some(next) = seq.hashes.get(hit) else {
            return false;
        };
        if !self.opts.prefix_caching || seq.req.prompt_logprobs || (hit + 1) * b >= seq.tokens.len()
        {
            return false;
        }
        self.running.iter().any(|r| {
            r.fed < (hit + 1) * b && r.hashes.get(hit) == Some(next) && r.fed < r.tokens.len()
        })
    }

    /// Drops every sequence whose client has gone.
    fn drop_cancelled(&mut self) {
        let pool = &mut self.pool;
        self.waiting.retain(|s| !(s.req.cancelled)());
        self.running.retain_mut(|s| {
            let gone = (s.req.cancelled)();
            if gone {
                s.kv.free(pool);
            }
            !gone
        });
    }

    /// The sequence to preempt so that `running[i]` can grow: the youngest of it and the
    /// others holding blocks. None when no other sequence holds any.
    fn victim(&self, i: usize, gone: &[bool]) -> Option<usize> {
        let others = (0..self.running.len())
            .filter(|&j| j != i && !gone[j] && self.running[j].kv.blocks_held() > 0);
        let youngest = others.max_by_key(|&j| self.running[j].order)?;
        Some(if self.running[i].order > self.running[youngest].order {
            i
        } else {
            youngest
        })
    }

    /// Frees `running[v]`'s blocks; it will be read again from its start.
    fn preempt(&mut self, v: usize) {
        let s = &mut self.running[v];
        s.kv.free(&mut self.pool);
        s.fed = 0;
        self.stats.preemptions.fetch_add(1, Relaxed);
    }

    /// Tokens each running sequence feeds this step, with blocks for them taken from the
    /// pool; sequences preempted to make room are moved back to the queue.
    fn plan_step(&mut self) -> Vec<usize> {
        let window = self.window();
        let b = self.opts.block_size;
        // Decoding sequences first, then prompts, oldest first.
        self.running.sort_by_key(|s| (s.reading(), s.order));
        let n_run = self.running.len();
        let mut takes = vec![0usize; n_run];
        let mut gone = vec![false; n_run];
        let mut budget = self.opts.step_tokens;
        for i in 0..n_run {
            if gone[i] {
                continue;
            }
            let mut n = (self.running[i].tokens.len() - self.running[i].fed).min(budget);
            while n > 0 {
                if self.running[i]
                    .kv
                    .prepare(&mut self.pool, n, window)
                    .is_ok()
                {
                    break;
                }
                if let Some(v) = self.victim(i, &gone) {
                    self.preempt(v);
                    gone[v] = true;
                    budget += std::mem::take(&mut takes[v]);
                    if v == i {
                        n = 0;
                    }
                    continue;
                }
                // Alone and still short: read what fits now (the step's end recycles more
                // under a window), or nothing.
                let s = &self.running[i];
                let fits = (s.kv.len().div_ceil(b) + self.pool.available()) * b - s.kv.len();
                n = if fits < n { fits } else { 0 };
            }
            takes[i] = n;
            budget -= n;
        }
        // Preempted sequences wait at the head of the queue, oldest first.
        let mut preempted = Vec::new();
        for i in (0..n_run).rev() {
            if gone[i] {
                preempted.push(self.running.remove(i));
                takes.remove(i);
            }
        }
        preempted.sort_by_key(|s| std::cmp::Reverse(s.order));
        for s in preempted {
            self.waiting.push_front(s);
        }
        takes
    }

    /// One step: admit, plan, run the model, hand out tokens. False when there was nothing
    /// to run.
    fn step(&mut self) -> bool {
        self.drop_cancelled();
        self.admit();
        if self.running.is_empty() {
            self.publish();
            return false;
        }
        let takes = self.plan_step();
        // A sequence that could not get a single block while alone ends here.
        for i in (0..self.running.len()).rev() {
            let s = &self.running[i];
            if takes[i] == 0 && s.fed < s.tokens.len() && self.running.len() == 1 {
                let mut s = self.running.remove(i);
                if s.fed < s.prompt_len() {
                    fail_seq(&mut s, "the KV cache is too small for this prompt".into());
                } else {
                    s.finish(FinishReason::Length);
                }
                s.kv.free(&mut self.pool);
                self.publish();
                return true;
            }
        }
        let result = {
            let mut steps: Vec<SeqStep<'_>> = self
                .running
                .iter_mut()
                .zip(&takes)
                .map(|(s, &n)| {
                    let ends = n > 0 && s.fed + n == s.tokens.len();
                    let logits = if n > 0 && s.prompt_lps.is_some() {
                        LogitsRows::From(0)
                    } else if ends {
                        LogitsRows::Last
                    } else {
                        LogitsRows::None
                    };
                    SeqStep {
                        tokens: &s.tokens[s.fed..s.fed + n],
                        logits,
                        kv: &mut s.kv,
                    }
                })
                .collect();
            self.model.forward(&mut self.pool, &mut steps)
        };
        let outputs = match result {
            Ok(o) => o,
            Err(e) => {
                // A failed step fails every sequence in it; the server goes on.
                for mut s in std::mem::take(&mut self.running) {
                    fail_seq(&mut s, e.to_string());
                    s.kv.free(&mut self.pool);
                }
                self.publish();
                return true;
            }
        };
        self.stats.steps.fetch_add(1, Relaxed);
        let mut done = Vec::new();
        for (i, (&n, rows)) in takes.iter().zip(&outputs).enumerate() {
            if n > 0 && !self.after_step(i, n, rows) {
                done.push(i);
            }
        }
        for &i in done.iter().rev() {
            let mut s = self.running.swap_remove(i);
            s.kv.free(&mut self.pool);
        }
        self.publish();
        true
    }

    /// Takes the rows of `running[i]`'s `n` tokens; returns false when the sequence is over.
    fn after_step(&mut self, i: usize, n: usize, rows: &[f32]) -> bool {
        let b = self.opts.block_size;
        let vocab = self.model.config.vocab_size;
        let ctx = self.model.config.max_context;
        let stats = self.stats.clone();
        let prefix_caching = self.opts.prefix_caching;
        let s = &mut self.running[i];
        let upto = (s.fed + n).min(s.prompt_len());
        if upto > s.prompt_counted {
            stats
                .prompt_tokens
                .fetch_add((upto - s.prompt_counted) as u64, Relaxed);
            s.prompt_counted = upto;
        }
        let (prompt_len, top) = (s.prompt_len(), s.req.logprobs.unwrap_or(0));
        if let Some(lps) = &mut s.prompt_lps {
            // Row r predicts position fed + r + 1.
            for (r, row) in rows.chunks_exact(vocab).enumerate() {
                let next = s.fed + r + 1;
                if next < prompt_len && next > lps.len() {
                    lps.push(logprobs_of(row, s.tokens[next], top));
                }
            }
        }
        s.fed += n;
        if prefix_caching {
            while s.registered < s.hashes.len() && (s.registered + 1) * b <= s.fed {
                if let Some(block) = s.kv.block_at(s.registered) {
                    self.pool.register(block, s.hashes[s.registered]);
                }
                s.registered += 1;
            }
        }
        if s.fed < s.tokens.len() {
            return true;
        }
        if !s.announced {
            s.announced = true;
            let logprobs = s.prompt_lps.take();
            let scoring = logprobs.is_some();
            let cached_tokens = s.cached_tokens;
            if !(s.req.sink)(Event::Prompt {
                cached_tokens,
                logprobs,
            }) {
                return false;
            }
            if scoring && s.req.max_tokens == 0 {
                s.finish(FinishReason::Length);
                return false;
            }
        }
        let Some(last) = rows.len().checked_sub(vocab).map(|o| &rows[o..]) else {
            fail_seq(s, "the model returned no logits".into());
            return false;
        };
        let next = match s.sampler.sample_after(last, &s.tokens, s.req.prompt.len()) {
            Ok(t) => t,
            Err(e) => {
                fail_seq(s, e.to_string());
                return false;
            }
        };
        if s.req.stop_tokens.contains(&next) {
            s.finish(FinishReason::Stop);
            return false;
        }
        s.generated += 1;
        stats.generated_tokens.fetch_add(1, Relaxed);
        let logprobs = s.req.logprobs.map(|top| logprobs_of(last, next, top));
        if !(s.req.sink)(Event::Token { id: next, logprobs }) {
            return false;
        }
        if s.generated >= s.req.max_tokens || s.tokens.len() + 1 >= ctx {
            s.finish(FinishReason::Length);
            return false;
        }
        s.push_token(next, b);
        true
    }

    fn publish(&self) {
        let st = &self.stats;
        st.running.store(self.running.len(), Relaxed);
        st.waiting.store(self.waiting.len(), Relaxed);
        st.kv_blocks_used.store(self.pool.blocks_in_use(), Relaxed);
        st.kv_blocks_cached
            .store(self.pool.blocks_cached(), Relaxed);
    }
}

fn fail(mut req: Request, msg: String) {
    (req.sink)(Event::Error(msg));
}

fn fail_seq(s: &mut Seq, msg: String) {
    (s.req.sink)(Event::Error(msg));
}

/// Runs until every sender of `requests` is gone and the last sequence has finished.
pub fn serve_loop(
    model: Arc<Model>,
    requests: Receiver<Request>,
    opts: ServeOptions,
    stats: Arc<ServeStats>,
) {
    stats.kv_blocks_total.store(opts.kv_blocks, Relaxed);
    let mut sched = Scheduler {
        pool: KvPool::new(model.kv_layout(opts.block_size), opts.kv_blocks),
        model,
        opts,
        stats,
        waiting: VecDeque::new(),
        running: Vec::new(),
        arrivals: 0,
    };
    let mut open = true;
    loop {
        // Take new requests; wait for one when idle.
        loop {
            let idle = sched.running.is_empty() && sched.waiting.is_empty();
            let next = if idle && open {
                requests.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                requests.try_recv()
            };
            match next {
                Ok(r) => sched.enqueue(r),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !open && sched.running.is_empty() && sched.waiting.is_empty() {
            return;
        }
        if !sched.step() && !sched.waiting.is_empty() {
            // Waiting for room that only a finishing sequence can make cannot happen with
            // nothing running; a short sleep keeps a bug from spinning a core.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
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
