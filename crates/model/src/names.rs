//! The one table of tensor names: each weight the model uses, as HF and GGUF spell it.

/// A weight of the model, independent of the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Embed,
    FinalNorm,
    LmHead,
    AttnNorm(usize),
    Wq(usize),
    Wk(usize),
    Wv(usize),
    Wo(usize),
    FfnNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
    Router(usize),
    /// (layer, expert). HF stores one tensor per expert; GGUF stacks them (see `*_exps`).
    ExpertGate(usize, usize),
    ExpertUp(usize, usize),
    ExpertDown(usize, usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Hf,
    Gguf,
    /// Mistral's own layout (`params.json` + `consolidated.safetensors`), as mistral-inference
    /// reads it.
    Native,
}

impl Role {
    pub fn name(self, format: Format) -> String {
        use Role::*;
        match format {
            Format::Hf => match self {
                Embed => "model.embed_tokens.weight".into(),
                FinalNorm => "model.norm.weight".into(),
                LmHead => "lm_head.weight".into(),
                AttnNorm(l) => format!("model.layers.{l}.input_layernorm.weight"),
                Wq(l) => format!("model.layers.{l}.self_attn.q_proj.weight"),
                Wk(l) => format!("model.layers.{l}.self_attn.k_proj.weight"),
                Wv(l) => format!("model.layers.{l}.self_attn.v_proj.weight"),
                Wo(l) => format!("model.layers.{l}.self_attn.o_proj.weight"),
                FfnNorm(l) => format!("model.layers.{l}.post_attention_layernorm.weight"),
                Gate(l) => format!("model.layers.{l}.mlp.gate_proj.weight"),
                Up(l) => format!("model.layers.{l}.mlp.up_proj.weight"),
                Down(l) => format!("model.layers.{l}.mlp.down_proj.weight"),
                Router(l) => format!("model.layers.{l}.block_sparse_moe.gate.weight"),
                ExpertGate(l, e) => {
                    format!("model.layers.{l}.block_sparse_moe.experts.{e}.w1.weight")
                }
                ExpertDown(l, e) => {
                    format!("model.layers.{l}.block_sparse_moe.experts.{e}.w2.weight")
                }
                ExpertUp(l, e) => {
                    format!("model.layers.{l}.block_sparse_moe.experts.{e}.w3.weight")
                }
            },
            Format::Gguf => match self {
                Embed => "token_embd.weight".into(),
                FinalNorm => "output_norm.weight".into(),
                LmHead => "output.weight".into(),
                AttnNorm(l) => format!("blk.{l}.attn_norm.weight"),
                Wq(l) => format!("blk.{l}.attn_q.weight"),
                Wk(l) => format!("blk.{l}.attn_k.weight"),
                Wv(l) => format!("blk.{l}.attn_v.weight"),
                Wo(l) => format!("blk.{l}.attn_output.weight"),
                FfnNorm(l) => format!("blk.{l}.ffn_norm.weight"),
                Gate(l) => format!("blk.{l}.ffn_gate.weight"),
                Up(l) => format!("blk.{l}.ffn_up.weight"),
                Down(l) => format!("blk.{l}.ffn_down.weight"),
                Router(l) => format!("blk.{l}.ffn_gate_inp.weight"),
                ExpertGate(l, e) => format!("blk.{l}.ffn_gate.{e}.weight"),
                ExpertUp(l, e) => format!("blk.{l}.ffn_up.{e}.weight"),
                ExpertDown(l, e) => format!("blk.{l}.ffn_down.{e}.weight"),
            },
            Format::Native => match self {
                Embed => "tok_embeddings.weight".into(),
                FinalNorm => "norm.weight".into(),
                LmHead => "output.weight".into(),
                AttnNorm(l) => format!("layers.{l}.attention_norm.weight"),
                Wq(l) => format!("layers.{l}.attention.wq.weight"),
                Wk(l) => format!("layers.{l}.attention.wk.weight"),
                Wv(l) => format!("layers.{l}.attention.wv.weight"),
                Wo(l) => format!("layers.{l}.attention.wo.weight"),
                FfnNorm(l) => format!("layers.{l}.ffn_norm.weight"),
                Gate(l) => format!("layers.{l}.feed_forward.w1.weight"),
                Up(l) => format!("layers.{l}.feed_forward.w3.weight"),
                Down(l) => format!("layers.{l}.feed_forward.w2.weight"),
                Router(l) => format!("layers.{l}.feed_forward.gate.weight"),
                ExpertGate(l, e) => format!("layers.{l}.feed_forward.experts.{e}.w1.weight"),
                ExpertUp(l, e) => format!("layers.{l}.feed_forward.experts.{e}.w3.weight"),
                ExpertDown(l, e) => format!("layers.{l}.feed_forward.experts.{e}.w2.weight"),
            },
        }
    }
}

/// GGUF's stacked expert tensors `[n_expert, rows, cols]` for a layer: (gate, up, down).
pub fn gguf_stacked_experts(layer: usize) -> [String; 3] {
    [
        format!("blk.{layer}.ffn_gate_exps.weight"),
        format!("blk.{layer}.ffn_up_exps.weight"),
        format!("blk.{layer}.ffn_down_exps.weight"),
    ]
}
