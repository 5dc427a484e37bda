//! The transformer: one batched forward pass for prefill chunks and decode steps alike.

use std::sync::atomic::{AtomicBool, Ordering};

use bora_kernels::{matmul_with, ops, Activations};

use crate::attention::{attend, AttentionShape, QueryRow};
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::kv_cache::{KvLayout, KvPool, KvType, SeqKv};
use crate::moe::{moe_forward, MoeScratch};
use crate::rope::{Rope, RopeAngles};
use crate::weights::{Ffn, LayerWeights, Mlp, ModelWeights};
use smallvec::SmallVec;

/// Which rows of a sequence's chunk need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsRows {
    None,
    Last,
    All,
    /// Rows from this index of the step's tokens on (none when it is past the end).
    From(usize),
}

/// One sequence's part of a step: its next tokens, continuing its own cache.
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    pub kv: &'a mut SeqKv,
    pub logits: LogitsRows,
}

pub struct Model {
    pub config: ModelConfig,
    pub weights: ModelWeights,
    /// How activations meet quantized weights (8-bit as llama.cpp, or exact f32).
    pub activations: Activations,
    /// How the KV caches made for this model store K and V.
    pub kv_type: KvType,
    rope: Rope,
    /// The step buffers, kept between steps so a decode step allocates none of them.
    scratch: std::sync::Mutex<Scratch>,
}

/// Default positions per KV block.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

impl Model {
    /// Takes the weights of `ckpt` for `config` (the checkpoint's own, or one with overrides).
    pub fn new(ckpt: &Checkpoint, config: ModelConfig) -> Result<Self> {
        config.validate(&ckpt.path.display().to_string())?;
        let weights = ModelWeights::load(ckpt, &config)?;
        let rope = Rope::new(config.head_dim, config.rope_theta);
        let mut model = Self {
            config,
            weights,
            activations: Activations::default(),
            kv_type: KvType::F32,
            rope,
            scratch: Default::default(),
        };
        model.kv_type = model.default_kv_type();
        Ok(model)
    }

    /// The cache type that goes with this model's numerics: f16 (llama.cpp's default) when
    /// quantized weights meet 8-bit activations, as in llama.cpp; f32 otherwise, where bora
    /// computes what transformers does.
    pub fn default_kv_type(&self) -> KvType {
        let quantized = self
            .weights
            .layers
            .first()
            .is_some_and(|l| l.wq.dtype.is_quantized());
        match self.activations {
            Activations::Q8 | Activations::Q8Batched if quantized => KvType::F16,
            _ => KvType::F32,
        }
    }

    pub fn kv_layout(&self, block_size: usize) -> KvLayout {
        KvLayout {
            n_layers: self.config.n_layers,
            n_kv_heads: self.config.n_kv_heads,
            head_dim: self.config.head_dim,
            block_size,
            kv_type: self.kv_type,
        }
    }

    /// Blocks one sequence can hold at once: the window plus one step's chunk, or the context.
    pub fn blocks_per_sequence(&self, block_size: usize, max_chunk: usize) -> usize {
        let span = match self.config.sliding_window {
            Some(w) => w
                .saturating_add(max_chunk)
                .min(self.config.max_context.saturating_add(1)),
            None => self.config.max_context,
        };
        span.div_ceil(block_size) + 1
    }

    /// Runs one step over every sequence's new tokens; returns, per sequence, the logits of
    /// the rows it asked for, row-major `[rows, vocab]`.
    pub fn forward(&self, pool: &mut KvPool, steps: &mut [SeqStep<'_>]) -> Result<Vec<Vec<f32>>> {
        let mut out = vec![Vec::new(); steps.len()];
        self.forward_into(pool, steps, &mut out)?;
        Ok(out)
    }

    /// [`Model::forward`] into `out` (one buffer per step, `steps.len()` of them), reusing
    /// their capacity: a decode step that needs no new KV block allocates nothing.
    pub fn forward_into(
        &self,
        pool: &mut KvPool,
        steps: &mut [SeqStep<'_>],
        out: &mut [Vec<f32>],
    ) -> Result<()> {
        assert_eq!(out.len(), steps.len(), "one logits buffer per step");
        let cfg = &self.config;
        let window = cfg.sliding_window;
        for s in steps.iter() {
            if let Some(&id) = s.tokens.iter().find(|&&id| id as usize >= cfg.vocab_size) {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    vocab: cfg.vocab_size,
                });
            }
            let end = s.kv.len() + s.tokens.len();
            if end > cfg.max_context {
                return Err(ModelError::ContextOverflow {
                    pos: end - 1,
                    limit: cfg.max_context,
                });
            }
        }
        out.iter_mut().for_each(Vec::clear);
        if steps.iter().all(|s| s.tokens.is_empty()) {
            return Ok(());
        }
        for s in steps.iter_mut() {
            s.kv.prepare(pool, s.tokens.len(), window)?;
        }
        // A step that batches separate sequences is throughput-bound: its matmuls of a few
        // rows take the tiled kernels too. One sequence's rows keep llama.cpp's order.
        let act = match self.activations {
            Activations::Q8 if steps.len() > 1 => Activations::Q8Batched,
            a => a,
        };
        // A step running while another holds the buffers (not done today: steps are run by
        // one thread) gets buffers of its own.
        let mut own = Scratch::default();
        let mut guard = self.scratch.try_lock();
        let scratch = match guard.as_deref_mut() {
            Ok(s) => s,
            Err(_) => &mut own,
        };
        {
            let meta = StepMeta::new(steps, &self.rope, pool.layout().block_size, act, scratch);
            // The step runs on a pool thread, so each parallel op inside starts from a worker
            // that shares its work out through its own queue. Started from this thread, every
            // op (about 225 a decoded token for a 32-layer model) was handed to the pool while
            // this thread slept until it was done: a sleep and a wake-up per op.
            let stepping = AtomicBool::new(true);
            with_workers_ready(rayon::current_num_threads() - 1, &stepping, || {
                self.run_layers(pool, &meta, scratch);
                self.logits_into(steps, &meta, scratch, out);
                stepping.store(false, Ordering::Release);
            });
            scratch.angles = meta.angles;
        }
        for s in steps.iter_mut() {
            s.kv.advance(pool, s.tokens.len(), window);
        }
        Ok(())
    }

    /// Embedding and every layer, leaving the residual stream `[T, hidden]` in `scratch.x`.
    fn run_layers(&self, pool: &mut KvPool, meta: &StepMeta<'_>, scratch: &mut Scratch) {
        let h = self.config.hidden_size;
        let embed = self.weights.embed.mat();
        scratch.resize(&self.config, meta.rows.len());
        let mut x = std::mem::take(&mut scratch.x);
        for (xr, &id) in x.chunks_exact_mut(h).zip(&meta.tokens) {
            embed.dequantize_row_into(id as usize, xr);
        }
        for (li, layer) in self.weights.layers.iter().enumerate() {
            self.attention_block(li, layer, pool, meta, &mut x, scratch);
            self.ffn_block(layer, &mut x, scratch, meta.act);
        }
        scratch.x = x;
    }

    /// x += Wo · attend(rope(Wq·n(x)), rope(Wk·n(x)), Wv·n(x)), writing K and V to the cache.
    fn attention_block(
        &self,
        li: usize,
        layer: &LayerWeights,
        pool: &mut KvPool,
        meta: &StepMeta<'_>,
        x: &mut [f32],
        s: &mut Scratch,
    ) {
        let cfg = &self.config;
        let (qd, kvd, hd, act) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim, meta.act);
        rms_norm_rows(x, &layer.attn_norm, cfg.rms_eps, &mut s.xn);
        matmul_with(&layer.wq.mat(), &s.xn, &mut s.q, act);
        matmul_with(&layer.wk.mat(), &s.xn, &mut s.k, act);
        matmul_with(&layer.wv.mat(), &s.xn, &mut s.v, act);
        for ti in 0..meta.rows.len() {
            let (cos, sin) = meta.angles.row(ti);
            for head in s.q[ti * qd..(ti + 1) * qd].chunks_exact_mut(hd) {
                ops::rope(head, cos, sin, cfg.rope_layout);
            }
            let (k, v) = (
                &mut s.k[ti * kvd..(ti + 1) * kvd],
                &s.v[ti * kvd..(ti + 1) * kvd],
            );
            for head in k.chunks_exact_mut(hd) {
                ops::rope(head, cos, sin, cfg.rope_layout);
            }
            pool.write(meta.slots[ti], li, k, v);
        }
        let shape = AttentionShape {
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: hd,
            window: cfg.sliding_window,
        };
        attend(pool, li, &shape, &meta.rows, &s.q, &mut s.att);
        matmul_with(&layer.wo.mat(), &s.att, &mut s.delta, act);
        add_into(x, &s.delta);
    }

    /// x += FFN(n(x)): SwiGLU, or the router's top-k experts for a mixture.
    fn ffn_block(&self, layer: &LayerWeights, x: &mut [f32], s: &mut Scratch, act: Activations) {
        rms_norm_rows(x, &layer.ffn_norm, self.config.rms_eps, &mut s.xn);
        match &layer.ffn {
            Ffn::Dense(mlp) => mlp_forward(mlp, &s.xn, &mut s.delta, act, &mut s.mlp),
            Ffn::Moe { router, experts } => {
                let top_k = self.config.moe.map_or(1, |m| m.top_k);
                moe_forward(router, experts, top_k, &s.xn, &mut s.delta, act, &mut s.moe);
            }
        }
        add_into(x, &s.delta);
    }

    /// Final norm and LM head of `scratch.x`, only for the rows that want logits, appended to
    /// each step's buffer in `out`.
    fn logits_into(
        &self,
        steps: &[SeqStep<'_>],
        meta: &StepMeta<'_>,
        s: &mut Scratch,
        out: &mut [Vec<f32>],
    ) {
        let (h, vocab) = (self.config.hidden_size, self.config.vocab_size);
        // (step index, row in x)
        let mut picked: PerRow<(usize, usize)> = PerRow::new();
        let mut row = 0;
        for (si, st) in steps.iter().enumerate() {
            let n = st.tokens.len();
            match st.logits {
                LogitsRows::None => {}
                LogitsRows::Last if n > 0 => picked.push((si, row + n - 1)),
                LogitsRows::Last => {}
                LogitsRows::All => picked.extend((row..row + n).map(|r| (si, r))),
                LogitsRows::From(k) => picked.extend((row + k.min(n)..row + n).map(|r| (si, r))),
            }
            row += n;
        }
        if picked.is_empty() {
            return;
        }
        // The layers are done with `xn` ([T, hidden], T ≥ the picked rows).
        let xn = &mut s.xn[..picked.len() * h];
        for (dst, &(_, r)) in xn.chunks_exact_mut(h).zip(&picked) {
            ops::rms_norm(
                &s.x[r * h..(r + 1) * h],
                &self.weights.final_norm,
                self.config.rms_eps,
                dst,
            );
        }
        s.lm.resize(picked.len() * vocab, 0.0);
        matmul_with(&self.weights.lm_head.mat(), xn, &mut s.lm, meta.act);
        for (lr, &(si, _)) in s.lm.chunks_exact(vocab).zip(&picked) {
            out[si].extend_from_slice(lr);
        }
        if picked.spilled() {
            // Logits of many rows (a prompt's, for perplexity or prompt logprobs) can be
            // hundreds of MB: kept only for steps as small as decode's.
            s.lm = Vec::new();
        }
    }
}

/// Per-row data of a step, held inline up to 8 rows (decode, and batched decode of up to 8
/// sequences) so that such a step allocates none of it.
type PerRow<T> = SmallVec<[T; 8]>;

/// What a step needs to know about each of its T rows, computed once for every layer.
struct StepMeta<'a> {
    tokens: PerRow<u32>,
    /// Each row's sequence cache and position.
    rows: PerRow<QueryRow<'a>>,
    /// Where each row's K and V go: (physical block, slot).
    slots: PerRow<(u32, usize)>,
    /// Each row's rope angles (buffers taken from the scratch, given back after the step).
    angles: RopeAngles,
    /// How the step's matmuls meet quantized weights.
    act: Activations,
}

impl<'a> StepMeta<'a> {
    fn new(
        steps: &'a [SeqStep<'_>],
        rope: &Rope,
        block_size: usize,
        act: Activations,
        scratch: &mut Scratch,
    ) -> Self {
        let rows: PerRow<QueryRow<'a>> = steps
            .iter()
            .flat_map(|s| {
                let kv: &SeqKv = s.kv;
                (0..s.tokens.len()).map(move |i| QueryRow {
                    kv,
                    pos: kv.len() + i,
                })
            })
            .collect();
        let mut angles = std::mem::take(&mut scratch.angles);
        rope.angles_into(rows.iter().map(|r| r.pos), &mut angles);
        Self {
            tokens: steps
                .iter()
                .flat_map(|s| s.tokens.iter().copied())
                .collect(),
            slots: rows
                .iter()
                .map(|r| r.kv.locate(r.pos, block_size))
                .collect(),
            angles,
            rows,
            act,
        }
    }
}

/// Activation buffers of one step, shared by all layers and kept between steps.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,     // [T, hidden]: the residual stream
    xn: Vec<f32>,    // [T, hidden]
    q: Vec<f32>,     // [T, n_heads·head_dim]
    k: Vec<f32>,     // [T, n_kv_heads·head_dim]
    v: Vec<f32>,     // [T, n_kv_heads·head_dim]
    att: Vec<f32>,   // [T, n_heads·head_dim]
    delta: Vec<f32>, // [T, hidden]
    mlp: MlpScratch,
    moe: MoeScratch,
    lm: Vec<f32>, // [rows wanting logits, vocab]
    angles: RopeAngles,
}

impl Scratch {
    /// Sizes every buffer for a step of `t` rows (no allocation once they have grown).
    fn resize(&mut self, cfg: &ModelConfig, t: usize) {
        let (h, qd, kvd) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim());
        for (buf, n) in [
            (&mut self.x, t * h),
            (&mut self.xn, t * h),
            (&mut self.q, t * qd),
            (&mut self.k, t * kvd),
            (&mut self.v, t * kvd),
            (&mut self.att, t * qd),
            (&mut self.delta, t * h),
        ] {
            buf.resize(n, 0.0);
        }
    }
}

/// The SwiGLU's gate and up projections, `[T, intermediate]` each.
#[derive(Default)]
pub(crate) struct MlpScratch {
    gate: Vec<f32>,
    up: Vec<f32>,
}

/// Runs `work` with `n` of the pool's other workers kept ready ([`stay_ready`]) until it
/// clears `stepping`. Each polling job is a `join`'s other half, which lives on this
/// thread's stack: a scope's spawned job was a heap allocation per step. A half no worker
/// took is run here after `work`, and returns at once.
fn with_workers_ready(n: usize, stepping: &AtomicBool, work: impl FnOnce() + Send) {
    if n == 0 {
        return work();
    }
    rayon::join(
        || with_workers_ready(n - 1, stepping, work),
        || stay_ready(stepping),
    );
}

/// Keeps a pool worker looking for work until the step ends (`stepping` goes false).
///
/// A decode step is about 225 parallel ops separated by short serial parts (norms, the
/// activations' quantization). A rayon worker that finds no work sleeps after a few dozen
/// yields, and each op then paid for waking it: Q4_0 7B decode ran 1.83 CPUs of 2, with about
/// 300 context switches a token. Looking for work the whole step, as llama.cpp's threads poll,
/// the worker takes each op's share as soon as it is queued.
///
/// Idle for more than `GIVE_UP` in a row, it returns: a guard against ever holding a thread
/// the step needs (a worker waiting on a join could pick this job up itself).
fn stay_ready(stepping: &AtomicBool) {
    const GIVE_UP: std::time::Duration = std::time::Duration::from_millis(5);
    let mut idle_since = None;
    while stepping.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle_since = None,
            _ => {
                let since = *idle_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > GIVE_UP {
                    return;
                }
                std::hint::spin_loop();
            }
        }
    }
}

fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let h = weight.len();
    for (xr, or) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        ops::rms_norm(xr, weight, eps, or);
    }
}

fn add_into(x: &mut [f32], delta: &[f32]) {
    for (a, b) in x.iter_mut().zip(delta) {
        *a += b;
    }
}

/// SwiGLU over a batch: `out = Wdown · (silu(Wgate·x) ⊙ Wup·x)`, `x` and `out` `[T, hidden]`.
pub(crate) fn mlp_forward(
    mlp: &Mlp,
    x: &[f32],
    out: &mut [f32],
    act: Activations,
    s: &mut MlpScratch,
) {
    let t = x.len() / mlp.gate.cols;
    s.gate.resize(t * mlp.gate.rows, 0.0);
    s.up.resize(t * mlp.up.rows, 0.0);
    matmul_with(&mlp.gate.mat(), x, &mut s.gate, act);
    matmul_with(&mlp.up.mat(), x, &mut s.up, act);
    ops::silu_mul(&mut s.gate, &s.up);
    matmul_with(&mlp.down.mat(), &s.gate, out, act);
}
