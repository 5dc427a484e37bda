//! The model's hyper-parameters, read from HF `config.json` or GGUF metadata and validated.

use bora_kernels::ops::RopeLayout;
use serde_json::Value as Json;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Mistral,
    Mixtral,
    Llama,
}

/// Sparse mixture of experts: each token goes to the `top_k` of `n_experts` the router picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeConfig {
    pub n_experts: usize,
    pub top_k: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rope_layout: RopeLayout,
    pub rms_eps: f32,
    /// Each query sees at most this many keys, itself included (`None`: full causal attention).
    pub sliding_window: Option<usize>,
    /// Positions the model was trained for; generation stops with an error past it.
    pub max_context: usize,
    pub tie_embeddings: bool,
    pub moe: Option<MoeConfig>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Checks the shapes are ones a forward pass can run; `source` names the file for errors.
    pub fn validate(&self, source: &str) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.n_layers),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_context),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(ModelError::config(source, field, "must be positive"));
            }
            if v > 1 << 24 {
                return Err(ModelError::config(
                    source,
                    field,
                    format!("{v} is implausibly large"),
                ));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(ModelError::config(
                source,
                "num_key_value_heads",
                format!(
                    "{} query heads cannot be grouped over {} KV heads",
                    self.n_heads, self.n_kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ModelError::config(
                source,
                "head_dim",
                format!("{} is odd; RoPE needs pairs", self.head_dim),
            ));
        }
        match self.sliding_window {
            Some(0) => {
                return Err(ModelError::config(
                    source,
                    "sliding_window",
                    "must be positive or null",
                ))
            }
            Some(w) if w > 1 << 24 => {
                return Err(ModelError::config(
                    source,
                    "sliding_window",
                    format!("{w} is implausibly large"),
                ))
            }
            _ => {}
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(ModelError::config(
                source,
                "rope_theta",
                format!("{} is not a positive number", self.rope_theta),
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return Err(ModelError::config(
                source,
                "rms_norm_eps",
                "must be a non-negative number",
            ));
        }
        if let Some(m) = self.moe {
            if m.top_k == 0 || m.top_k > m.n_experts {
                return Err(ModelError::config(
                    source,
                    "num_experts_per_tok",
                    format!("{} experts per token out of {}", m.top_k, m.n_experts),
                ));
            }
        }
        Ok(())
    }

    /// From a Hugging Face `config.json` (transformers 4 or 5 layout).
    pub fn from_hf_json(text: &str, source: &str) -> Result<Self> {
        let j: Json = serde_json::from_str(text)
            .map_err(|e| ModelError::config(source, "(file)", format!("not valid JSON: {e}")))?;
        let f = HfFields { j: &j, source };
        let arch = match j.get("model_type").and_then(Json::as_str).unwrap_or("") {
            "mistral" => Arch::Mistral,
            "mixtral" => Arch::Mixtral,
            "llama" => Arch::Llama,
            other => {
                return Err(ModelError::UnsupportedArch {
                    source_name: source.to_string(),
                    arch: other.to_string(),
                })
            }
        };
        f.refuse_unsupported()?;
        let hidden_size = f.usize("hidden_size")?;
        let n_heads = f.usize("num_attention_heads")?;
        let moe = match arch {
            Arch::Mixtral => Some(MoeConfig {
                n_experts: f.usize("num_local_experts")?,
                top_k: f.usize("num_experts_per_tok")?,
            }),
            _ => None,
        };
        let cfg = ModelConfig {
            arch,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            n_layers: f.usize("num_hidden_layers")?,
            n_heads,
            n_kv_heads: f.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
            head_dim: match f.opt_usize("head_dim")? {
                Some(d) => d,
                None => hidden_size.checked_div(n_heads).unwrap_or(0),
            },
            rope_theta: f.rope_theta()?,
            rope_layout: RopeLayout::SplitHalves,
            rms_eps: j.get("rms_norm_eps").and_then(Json::as_f64).unwrap_or(1e-5) as f32,
            sliding_window: match arch {
                Arch::Llama => None,
                _ => f.opt_usize("sliding_window")?,
            },
            max_context: f.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            tie_embeddings: j
                .get("tie_word_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(false),
            moe,
            bos_token_id: f.ids("bos_token_id").first().copied(),
            eos_token_ids: f.ids("eos_token_id"),
        };
        cfg.validate(source)?;
        Ok(cfg)
    }

    /// From Mistral's native `params.json` (mistral-inference's ModelArgs): dense models;
    /// Q/K rows in the interleaved RoPE order.
    pub fn from_params_json(text: &str, source: &str) -> Result<Self> {
        let j: Json = serde_json::from_str(text)
            .map_err(|e| ModelError::config(source, "(file)", format!("not valid JSON: {e}")))?;
        let f = HfFields { j: &j, source };
        if j.get("moe").is_some_and(|m| !m.is_null()) {
            return Err(ModelError::config(
                source,
                "moe",
                "native mixture-of-experts checkpoints are not supported yet (use the Hugging Face or GGUF release)",
            ));
        }
        if j.get("vision_encoder").is_some_and(|m| !m.is_null()) {
            return Err(ModelError::config(
                source,
                "vision_encoder",
                "vision models are not supported",
            ));
        }
        let hidden_size = f.usize("dim")?;
        let n_heads = f.usize("n_heads")?;
        // Older files give the window as a list (one per layer) or leave it out.
        let sliding_window = match j.get("sliding_window") {
            Some(Json::Array(v)) => v.first().and_then(Json::as_u64).map(|w| w as usize),
            Some(v) => v.as_u64().map(|w| w as usize),
            None => None,
        };
        let cfg = ModelConfig {
            arch: Arch::Mistral,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("hidden_dim")?,
            n_layers: f.usize("n_layers")?,
            n_heads,
            n_kv_heads: f.opt_usize("n_kv_heads")?.unwrap_or(n_heads),
            head_dim: match f.opt_usize("head_dim")? {
                Some(d) => d,
                None => hidden_size.checked_div(n_heads).unwrap_or(0),
            },
            rope_theta: j
                .get("rope_theta")
                .and_then(Json::as_f64)
                .unwrap_or(10_000.0),
            rope_layout: RopeLayout::Interleaved,
            rms_eps: j.get("norm_eps").and_then(Json::as_f64).unwrap_or(1e-5) as f32,
            sliding_window,
            // params.json does not say; Mistral's models since v0.2 are trained to 32k.
            max_context: f.opt_usize("max_seq_len")?.unwrap_or(32_768),
            tie_embeddings: j
                .get("tied_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(false),
            moe: None,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
        };
        cfg.validate(source)?;
        Ok(cfg)
    }

    /// From GGUF metadata (`general.architecture` = llama; Q/K rows in the interleaved layout).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let source = g.path().display().to_string();
        let arch_name = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("(missing)");
        if arch_name != "llama" {
            return Err(ModelError::UnsupportedArch {
                source_name: source,
                arch: arch_name.to_string(),
            });
        }
        let scaling = g
            .get("llama.rope.scaling.type")
            .and_then(|v| v.as_str())
            .unwrap_or("none");
        if scaling != "none" || g.tensors.contains_key("rope_freqs.weight") {
            let what = if scaling != "none" {
                scaling
            } else {
                "rope_freqs.weight"
            };
            return Err(ModelError::config(
                &source,
                "llama.rope.scaling.type",
                format!("RoPE scaling '{what}' is not supported"),
            ));
        }
        let key = |k: &str| format!("llama.{k}");
        let req = |k: &str| -> Result<usize> {
            let full = key(k);
            let v = g
                .get(&full)
                .ok_or_else(|| ModelError::config(&source, &full, "missing"))?;
            v.as_u64().map(|v| v as usize).ok_or_else(|| {
                ModelError::config(&source, &full, format!("expected an integer, got {v:?}"))
            })
        };
        let opt = |k: &str| g.get(&key(k)).and_then(|v| v.as_u64()).map(|v| v as usize);
        let hidden_size = req("embedding_length")?;
        let n_heads = req("attention.head_count")?;
        let n_kv_heads = opt("attention.head_count_kv").unwrap_or(n_heads);
        let head_dim = opt("attention.key_length")
            .or(opt("rope.dimension_count"))
            .unwrap_or(hidden_size.checked_div(n_heads).unwrap_or(0));
        let vocab_size = match opt("vocab_size") {
            Some(v) => v,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(|t| t.as_array())
                .map(|a| a.len())
                .or_else(|| {
                    g.tensors
                        .get("token_embd.weight")
                        .and_then(|t| t.shape.first().copied())
                })
                .ok_or_else(|| {
                    ModelError::config(
                        &source,
                        "llama.vocab_size",
                        "missing, and no vocabulary to count",
                    )
                })?,
        };
        let moe = match opt("expert_count") {
            Some(n) if n > 0 => Some(MoeConfig {
                n_experts: n,
                top_k: req("expert_used_count")?,
            }),
            _ => None,
        };
        let id = |k: &str| g.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let rms_eps = g
            .get(&key("attention.layer_norm_rms_epsilon"))
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-5) as f32;
        let cfg = ModelConfig {
            arch: if moe.is_some() {
                Arch::Mixtral
            } else {
                Arch::Llama
            },
            vocab_size,
            hidden_size,
            intermediate_size: req("feed_forward_length")?,
            n_layers: req("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_theta: g
                .get(&key("rope.freq_base"))
                .and_then(|v| v.as_f64())
                .unwrap_or(10000.0),
            rope_layout: RopeLayout::Interleaved,
            rms_eps,
            sliding_window: opt("attention.sliding_window").filter(|&w| w > 0),
            max_context: opt("context_length").unwrap_or(4096),
            tie_embeddings: !g.tensors.contains_key("output.weight"),
            moe,
            bos_token_id: id("tokenizer.ggml.bos_token_id"),
            eos_token_ids: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        };
        cfg.validate(&source)?;
        Ok(cfg)
    }
}

/// Typed access to the fields of a `config.json`, with errors naming the field.
struct HfFields<'a> {
    j: &'a Json,
    source: &'a str,
}

impl HfFields<'_> {
    fn usize(&self, name: &str) -> Result<usize> {
        let v = self
            .j
            .get(name)
            .ok_or_else(|| ModelError::config(self.source, name, "missing"))?;
        v.as_u64().map(|v| v as usize).ok_or_else(|| {
            ModelError::config(
                self.source,
                name,
                format!("expected a non-negative integer, got {v}"),
            )
        })
    }

    fn opt_usize(&self, name: &str) -> Result<Option<usize>> {
        match self.j.get(name) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => v.as_u64().map(|v| Some(v as usize)).ok_or_else(|| {
                ModelError::config(
                    self.source,
                    name,
                    format!("expected an integer or null, got {v}"),
                )
            }),
        }
    }

    /// One id or a list of them (`eos_token_id` may be either).
    fn ids(&self, name: &str) -> Vec<u32> {
        match self.j.get(name) {
            Some(Json::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(Json::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64().map(|v| v as u32))
                .collect(),
            _ => vec![],
        }
    }

    /// transformers 5 nests RoPE settings in `rope_parameters`; real checkpoints keep
    /// `rope_theta` at the top level.
    fn rope_theta(&self) -> Result<f64> {
        let nested = self
            .j
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"));
        match self.j.get("rope_theta").or(nested) {
            None => Ok(10000.0),
            Some(v) => v.as_f64().ok_or_else(|| {
                ModelError::config(
                    self.source,
                    "rope_theta",
                    format!("expected a number, got {v}"),
                )
            }),
        }
    }

    /// Features bora doesn't implement are refused, never silently dropped.
    fn refuse_unsupported(&self) -> Result<()> {
        for scaling in [self.j.get("rope_scaling"), self.j.get("rope_parameters")] {
            let kind = scaling
                .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
                .and_then(Json::as_str)
                .unwrap_or("default");
            if kind != "default" {
                let msg = format!("RoPE scaling '{kind}' is not supported");
                return Err(ModelError::config(self.source, "rope_scaling", msg));
            }
        }
        let act = self
            .j
            .get("hidden_act")
            .and_then(Json::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            let msg = format!("'{act}' is not supported (silu is)");
            return Err(ModelError::config(self.source, "hidden_act", msg));
        }
        for field in ["attention_bias", "mlp_bias"] {
            if self.j.get(field).and_then(Json::as_bool) == Some(true) {
                return Err(ModelError::config(
                    self.source,
                    field,
                    "biases are not supported",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MISTRAL_V01: &str = r#"{"architectures":["MistralForCausalLM"],"bos_token_id":1,"eos_token_id":2,
        "hidden_act":"silu","hidden_size":4096,"initializer_range":0.02,"intermediate_size":14336,
        "max_position_embeddings":32768,"model_type":"mistral","num_attention_heads":32,
        "num_hidden_layers":32,"num_key_value_heads":8,"rms_norm_eps":1e-05,"rope_theta":10000.0,
        "sliding_window":4096,"tie_word_embeddings":false,"torch_dtype":"bfloat16","vocab_size":32000}"#;

    #[test]
    fn reads_mistral_v01_config() {
        let c = ModelConfig::from_hf_json(MISTRAL_V01, "config.json").unwrap();
        assert_eq!(c.arch, Arch::Mistral);
        assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (32, 8, 128));
        assert_eq!(c.sliding_window, Some(4096));
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.eos_token_ids, vec![2]);
    }

    #[test]
    fn reads_transformers5_rope_parameters_and_explicit_head_dim() {
        let text = r#"{"model_type":"mistral","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":1,"head_dim":32,"vocab_size":256,
            "rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"},"sliding_window":null}"#;
        let c = ModelConfig::from_hf_json(text, "config.json").unwrap();
        assert_eq!(c.head_dim, 32);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.sliding_window, None);
    }

    /// Mistral 7B v0.3 and Mixtral 8x7B as their published config.json files describe them.
    #[test]
    fn reads_mistral_v03_and_mixtral_8x7b_configs() {
        let v03 = r#"{"architectures":["MistralForCausalLM"],"bos_token_id":1,"eos_token_id":2,
            "head_dim":128,"hidden_act":"silu","hidden_size":4096,"intermediate_size":14336,
            "max_position_embeddings":32768,"model_type":"mistral","num_attention_heads":32,
            "num_hidden_layers":32,"num_key_value_heads":8,"rms_norm_eps":1e-05,
            "rope_theta":1000000.0,"sliding_window":null,"tie_word_embeddings":false,
            "vocab_size":32768}"#;
        let c = ModelConfig::from_hf_json(v03, "config.json").unwrap();
        assert_eq!(
            (c.vocab_size, c.head_dim, c.sliding_window),
            (32768, 128, None)
        );
        assert_eq!(c.rope_theta, 1e6);
        let mixtral = r#"{"architectures":["MixtralForCausalLM"],"bos_token_id":1,"eos_token_id":2,
            "hidden_act":"silu","hidden_size":4096,"intermediate_size":14336,
            "max_position_embeddings":32768,"model_type":"mixtral","num_attention_heads":32,
            "num_experts_per_tok":2,"num_hidden_layers":32,"num_key_value_heads":8,
            "num_local_experts":8,"rms_norm_eps":1e-05,"rope_theta":1000000.0,
            "router_aux_loss_coef":0.02,"sliding_window":null,"vocab_size":32000}"#;
        let c = ModelConfig::from_hf_json(mixtral, "config.json").unwrap();
        assert_eq!(c.arch, Arch::Mixtral);
        assert_eq!(
            c.moe,
            Some(MoeConfig {
                n_experts: 8,
                top_k: 2
            })
        );
        assert_eq!(c.head_dim, 128);
    }

    #[test]
    fn rejects_impossible_shapes_and_unknown_archs() {
        let bad_heads =
            MISTRAL_V01.replace("\"num_key_value_heads\":8", "\"num_key_value_heads\":5");
        let e = ModelConfig::from_hf_json(&bad_heads, "config.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let gpt2 = MISTRAL_V01.replace("\"model_type\":\"mistral\"", "\"model_type\":\"gpt2\"");
        let e = ModelConfig::from_hf_json(&gpt2, "config.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported architecture 'gpt2'"), "{e}");
        let e = ModelConfig::from_hf_json("{not json", "config.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        let zero = MISTRAL_V01.replace("\"hidden_size\":4096", "\"hidden_size\":0");
        assert!(ModelConfig::from_hf_json(&zero, "c").is_err());
    }
}
