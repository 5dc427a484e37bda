//! The model's weights, taken from a checkpoint by role and checked against the config.

use bora_kernels::DType;

use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::names::{gguf_stacked_experts, Format, Role};
use crate::tensor::Weight;

/// SwiGLU feed-forward: `down(silu(gate·x) ⊙ up·x)`.
pub struct Mlp {
    pub gate: Weight, // [intermediate, hidden]
    pub up: Weight,   // [intermediate, hidden]
    pub down: Weight, // [hidden, intermediate]
}

pub enum Ffn {
    Dense(Mlp),
    Moe {
        router: Weight, // [n_experts, hidden]
        experts: Vec<Mlp>,
    },
}

pub struct LayerWeights {
    pub attn_norm: Vec<f32>, // [hidden]
    pub wq: Weight,          // [n_heads·head_dim, hidden]
    pub wk: Weight,          // [n_kv_heads·head_dim, hidden]
    pub wv: Weight,          // [n_kv_heads·head_dim, hidden]
    pub wo: Weight,          // [hidden, n_heads·head_dim]
    pub ffn_norm: Vec<f32>,  // [hidden]
    pub ffn: Ffn,
}

pub struct ModelWeights {
    pub embed: Weight, // [vocab, hidden]
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>, // [hidden]
    pub lm_head: Weight,      // [vocab, hidden]; the embedding itself when tied
}

struct Loader<'a> {
    ckpt: &'a Checkpoint,
}

impl Loader<'_> {
    fn name(&self, role: Role) -> String {
        role.name(self.ckpt.format)
    }

    fn matrix(&self, role: Role, rows: usize, cols: usize) -> Result<Weight> {
        let t = self.ckpt.tensor(&self.name(role))?;
        t.expect_shape(&[rows, cols])?;
        Weight::from_tensor(t, rows, cols)
    }

    fn vector(&self, role: Role, n: usize) -> Result<Vec<f32>> {
        let t = self.ckpt.tensor(&self.name(role))?;
        t.expect_shape(&[n])?;
        t.to_f32_vec()
    }

    fn mlp(&self, roles: [Role; 3], hidden: usize, ff: usize) -> Result<Mlp> {
        Ok(Mlp {
            gate: self.matrix(roles[0], ff, hidden)?,
            up: self.matrix(roles[1], ff, hidden)?,
            down: self.matrix(roles[2], hidden, ff)?,
        })
    }

    /// GGUF stacks experts as `[n_expert, rows, cols]`; older files have one tensor each.
    fn experts(&self, layer: usize, n: usize, hidden: usize, ff: usize) -> Result<Vec<Mlp>> {
        let [g, u, d] = gguf_stacked_experts(layer);
        if self.ckpt.format == Format::Gguf && self.ckpt.tensors.contains_key(&g) {
            let stacked = |name: &str, rows: usize, cols: usize| -> Result<Weight> {
                let t = self.ckpt.tensor(name)?;
                t.expect_shape(&[n, rows, cols])?;
                Weight::from_tensor(t, n * rows, cols)
            };
            let (g, u, d) = (
                stacked(&g, ff, hidden)?,
                stacked(&u, ff, hidden)?,
                stacked(&d, hidden, ff)?,
            );
            return Ok((0..n)
                .map(|e| Mlp {
                    gate: g.slice_rows(e * ff, ff),
                    up: u.slice_rows(e * ff, ff),
                    down: d.slice_rows(e * hidden, hidden),
                })
                .collect());
        }
        (0..n)
            .map(|e| {
                self.mlp(
                    [
                        Role::ExpertGate(layer, e),
                        Role::ExpertUp(layer, e),
                        Role::ExpertDown(layer, e),
                    ],
                    hidden,
                    ff,
                )
            })
            .collect()
    }
}

impl ModelWeights {
    pub fn load(ckpt: &Checkpoint, cfg: &ModelConfig) -> Result<Self> {
        let l = Loader { ckpt };
        let (h, ff, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let embed = l.matrix(Role::Embed, v, h)?;
        // transformers ties the head to the embedding whenever the config says so, even if the
        // file also carries an lm_head tensor.
        let lm_head = if cfg.tie_embeddings {
            embed.clone()
        } else {
            l.matrix(Role::LmHead, v, h)?
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let ffn = match cfg.moe {
                None => Ffn::Dense(l.mlp([Role::Gate(i), Role::Up(i), Role::Down(i)], h, ff)?),
                Some(m) => Ffn::Moe {
                    router: l.matrix(Role::Router(i), m.n_experts, h)?,
                    experts: l.experts(i, m.n_experts, h, ff)?,
                },
            };
            layers.push(LayerWeights {
                attn_norm: l.vector(Role::AttnNorm(i), h)?,
                wq: l.matrix(Role::Wq(i), cfg.q_dim(), h)?,
                wk: l.matrix(Role::Wk(i), cfg.kv_dim(), h)?,
                wv: l.matrix(Role::Wv(i), cfg.kv_dim(), h)?,
                wo: l.matrix(Role::Wo(i), h, cfg.q_dim())?,
                ffn_norm: l.vector(Role::FfnNorm(i), h)?,
                ffn,
            });
        }
        let final_norm = l.vector(Role::FinalNorm, h)?;
        if embed.cols != h {
            return Err(ModelError::Shape {
                name: l.name(Role::Embed),
                expected: vec![v, h],
                actual: vec![embed.rows, embed.cols],
            });
        }
        Ok(Self {
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }
}

/// What quantizing a model's matrices did: how many went to the asked type, how many to Q8_0
/// because their rows don't split into the asked type's blocks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QuantizeReport {
    pub to_target: usize,
    pub to_q8_0: usize,
}

impl ModelWeights {
    /// Stores every weight matrix as `target` (quantization at load). The MoE router stays as
    /// it is (llama.cpp keeps it in f32 too); a matrix whose rows are not a whole number of
    /// `target` blocks gets Q8_0, as llama.cpp falls back for such rows. Only float
    /// checkpoints: re-quantizing quantized weights would compound two roundings.
    pub fn quantize(&mut self, target: DType) -> Result<QuantizeReport> {
        self.quantize_with(target, |_, _| {})
    }

    /// [`quantize`](Self::quantize), calling `progress(layers done, layers)` as it goes.
    pub fn quantize_with(
        &mut self,
        target: DType,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<QuantizeReport> {
        let n_layers = self.layers.len();
        let mut report = QuantizeReport::default();
        let mut convert = |w: &mut Weight| -> Result<()> {
            if w.dtype.is_quantized() {
                return Err(ModelError::Quantize {
                    target,
                    msg: format!("the weights are already quantized ({})", w.dtype),
                });
            }
            let to = if target.row_bytes(w.cols).is_ok() {
                report.to_target += 1;
                target
            } else {
                report.to_q8_0 += 1;
                DType::Q8_0
            };
            *w = w.quantized(to).map_err(|e| ModelError::Quantize {
                target,
                msg: e.to_string(),
            })?;
            Ok(())
        };
        let tied = self.lm_head.bytes().as_ptr() == self.embed.bytes().as_ptr();
        convert(&mut self.embed)?;
        if tied {
            self.lm_head = self.embed.clone();
        } else {
            convert(&mut self.lm_head)?;
        }
        for (li, l) in self.layers.iter_mut().enumerate() {
            for w in [&mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo] {
                convert(w)?;
            }
            let mlps: Vec<&mut Mlp> = match &mut l.ffn {
                Ffn::Dense(m) => vec![m],
                Ffn::Moe { experts, .. } => experts.iter_mut().collect(),
            };
            for m in mlps {
                for w in [&mut m.gate, &mut m.up, &mut m.down] {
                    convert(w)?;
                }
            }
            progress(li + 1, n_layers);
        }
        Ok(report)
    }
}
