//! A Hugging Face (or Mistral native) checkpoint as GGUF sees it: llama.cpp's `llama`
//! architecture metadata, its tensor names, Q/K rows in the interleaved RoPE order, and the
//! vocabulary from the folder's `tokenizer.model` (or tekken.json, or tokenizer.json) — what llama.cpp's
//! convert_hf_to_gguf.py writes for a Mistral, Mixtral or Llama model (Mixtral's experts
//! stacked as `ffn_{gate,up,down}_exps`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use bora_engine::spm_model::SpmModel;
use bora_kernels::ops::RopeLayout;
use bora_model::gguf::Value;
use bora_model::names::{gguf_stacked_experts, Format, Role};
use bora_model::tensor::TensorRef;
use bora_model::Checkpoint;

/// One tensor to write: its GGUF name and shape, the input tensors its rows come from (one,
/// or one per expert for GGUF's stacked `[n_expert, rows, cols]` expert tensors, each giving
/// an equal share of the rows in order), and for Q/K of a split-halves checkpoint the head
/// count whose rows are interleaved.
pub struct SourceTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub parts: Vec<TensorRef>,
    pub interleave_heads: Option<usize>,
}

impl SourceTensor {
    /// One input tensor written under `name` with its own shape.
    pub fn whole(name: String, tensor: TensorRef) -> Self {
        Self {
            name,
            shape: tensor.shape.clone(),
            parts: vec![tensor],
            interleave_heads: None,
        }
    }

    /// The input row that output row `r` of a part takes: within each head, rows `i` and
    /// `hd/2 + i` become neighbours (transformers' permute undone, as llama.cpp's converter
    /// does).
    pub fn source_row(&self, r: usize) -> usize {
        match self.interleave_heads {
            None => r,
            Some(heads) => {
                let hd = self.shape[0] / heads;
                let (h, k) = (r / hd, r % hd);
                h * hd + (k % 2) * (hd / 2) + k / 2
            }
        }
    }
}

pub struct Source {
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<SourceTensor>,
}

/// The folder's SentencePiece model: tokenizer.model, or the newest tokenizer.model.vN.
fn spm_file(dir: &Path) -> Option<PathBuf> {
    match bora_engine::mistral_tokenizer_in(dir) {
        Some(p) if !p.ends_with("tekken.json") => Some(p),
        _ => Some(dir.join("tokenizer.model")).filter(|p| p.is_file()),
    }
}

/// A SentencePiece vocabulary as llama.cpp's `llama` tokenizer model reads it.
/// A SentencePiece-style vocabulary, as GGUF's `llama` tokenizer metadata writes it.
pub(super) struct LlamaVocab {
    pub pieces: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub add_bos: bool,
    pub add_space_prefix: bool,
}

impl LlamaVocab {
    pub(super) fn write(self, md: &mut BTreeMap<String, Value>) {
        let mut put = |k: &str, v: Value| {
            md.insert(k.to_string(), v);
        };
        put("tokenizer.ggml.model", Value::Str("llama".into()));
        put(
            "tokenizer.ggml.tokens",
            Value::Array(self.pieces.into_iter().map(Value::Str).collect()),
        );
        put(
            "tokenizer.ggml.scores",
            Value::Array(self.scores.into_iter().map(Value::F32).collect()),
        );
        put(
            "tokenizer.ggml.token_type",
            Value::Array(self.types.into_iter().map(Value::I32).collect()),
        );
        for (k, id) in [
            ("tokenizer.ggml.bos_token_id", self.bos),
            ("tokenizer.ggml.eos_token_id", self.eos),
            ("tokenizer.ggml.unknown_token_id", self.unk),
        ] {
            if let Some(id) = id {
                put(k, Value::U32(id));
            }
        }
        put("tokenizer.ggml.add_bos_token", Value::Bool(self.add_bos));
        put("tokenizer.ggml.add_eos_token", Value::Bool(false));
        put(
            "tokenizer.ggml.add_space_prefix",
            Value::Bool(self.add_space_prefix),
        );
    }
}

fn spm_vocab(spm: &Path, vocab_size: usize, md: &mut BTreeMap<String, Value>) -> Result<()> {
    let vocab = SpmModel::open(spm)?;
    if vocab.pieces.len() != vocab_size {
        bail!(
            "{}: {} pieces, but the model has a vocabulary of {vocab_size}",
            spm.display(),
            vocab.pieces.len(),
        );
    }
    LlamaVocab {
        pieces: vocab.pieces,
        scores: vocab.scores,
        types: vocab.types,
        bos: vocab.bos,
        eos: vocab.eos,
        unk: vocab.unk,
        add_bos: true,
        add_space_prefix: vocab.add_dummy_prefix,
    }
    .write(md);
    Ok(())
}

/// A Tekken vocabulary as llama.cpp's byte-level BPE (`gpt2`, pre-tokenizer `tekken`) reads
/// it: the special tokens first (control tokens, by their text), then each rank's bytes in
/// GPT-2's byte-to-character spelling, and the merges recovered from the ranks as
/// transformers' TikTokenConverter does (every split of a token into two tokens, ordered by
/// the token's rank, then the halves' ranks).
fn tekken_vocab(path: &Path, vocab_size: usize, md: &mut BTreeMap<String, Value>) -> Result<()> {
    let tk = bora_engine::tekken::Tekken::open(path)?;
    if tk.vocab_size() != vocab_size {
        bail!(
            "{}: {} tokens ({} special), but the model has a vocabulary of {vocab_size}",
            path.display(),
            tk.vocab_size(),
            tk.n_special()
        );
    }
    let spell = |bytes: &[u8]| -> String { bytes.iter().map(|&b| gpt2_char(b)).collect() };
    let mut tokens: Vec<Value> = tk
        .specials()
        .iter()
        .map(|s| Value::Str(s.clone()))
        .collect();
    tokens.extend(tk.pieces().iter().map(|p| Value::Str(spell(p))));
    let mut types = vec![Value::I32(3); tk.n_special()];
    types.extend(std::iter::repeat_n(Value::I32(1), tk.pieces().len()));
    let mut merges = Vec::new();
    for piece in tk.pieces() {
        let mut local: Vec<(u32, u32, usize)> = (1..piece.len())
            .filter_map(|k| Some((tk.rank(&piece[..k])?, tk.rank(&piece[k..])?, k)))
            .collect();
        local.sort_unstable();
        merges.extend(
            local.into_iter().map(|(_, _, k)| {
                Value::Str(format!("{} {}", spell(&piece[..k]), spell(&piece[k..])))
            }),
        );
    }
    let special = |text: &str| tk.special_id(text).map(Value::U32);
    for (k, v) in [
        ("tokenizer.ggml.model", Some(Value::Str("gpt2".into()))),
        ("tokenizer.ggml.pre", Some(Value::Str("tekken".into()))),
        ("tokenizer.ggml.tokens", Some(Value::Array(tokens))),
        ("tokenizer.ggml.token_type", Some(Value::Array(types))),
        ("tokenizer.ggml.merges", Some(Value::Array(merges))),
        ("tokenizer.ggml.bos_token_id", special("<s>")),
        ("tokenizer.ggml.eos_token_id", special("</s>")),
        ("tokenizer.ggml.unknown_token_id", special("<unk>")),
        ("tokenizer.ggml.add_bos_token", Some(Value::Bool(true))),
        ("tokenizer.ggml.add_eos_token", Some(Value::Bool(false))),
        // The chat format follows the version (mistral-common's rule); llama.cpp ignores it.
        (
            bora_engine::tokenizer::GGUF_TEKKEN_VERSION,
            Some(Value::Str(tk.version.clone())),
        ),
    ] {
        if let Some(v) = v {
            md.insert(k.to_string(), v);
        }
    }
    Ok(())
}

/// GPT-2's spelling of a byte as a printable character: the printable Latin-1 bytes stand for
/// themselves, the others (controls, space, 127–160, 173) for U+0100 onwards in byte order.
fn gpt2_char(b: u8) -> char {
    let printable = |x: u8| matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return b as char;
    }
    let shifted = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + shifted).expect("U+0100..U+0143 are characters")
}

pub fn from_folder(dir: &Path) -> Result<Source> {
    let ckpt = Checkpoint::open(dir)?;
    let c = ckpt.config.clone();
    let mut md: BTreeMap<String, Value> = BTreeMap::new();
    let tekken = dir.join("tekken.json");
    if tekken.is_file() {
        tekken_vocab(&tekken, c.vocab_size, &mut md)?;
    } else {
        match spm_file(dir) {
            Some(spm) => spm_vocab(&spm, c.vocab_size, &mut md)?,
            None if dir.join("tokenizer.json").is_file() => {
                let path = dir.join("tokenizer.json");
                super::hf_json_vocab::tokenizer_json_vocab(&path, c.vocab_size, &mut md)?
            }
            None => bail!(
                "{}: no tokenizer.model, tekken.json or tokenizer.json to write into the GGUF",
                dir.display()
            ),
        }
    }
    let mut put = |k: &str, v: Value| {
        md.insert(k.to_string(), v);
    };
    let u32v = |x: usize| Value::U32(x as u32);
    put("general.architecture", Value::Str("llama".into()));
    put(
        "general.name",
        Value::Str(
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    );
    put("llama.context_length", u32v(c.max_context));
    put("llama.embedding_length", u32v(c.hidden_size));
    put("llama.block_count", u32v(c.n_layers));
    put("llama.feed_forward_length", u32v(c.intermediate_size));
    put("llama.rope.dimension_count", u32v(c.head_dim));
    put("llama.attention.head_count", u32v(c.n_heads));
    put("llama.attention.head_count_kv", u32v(c.n_kv_heads));
    put(
        "llama.attention.layer_norm_rms_epsilon",
        Value::F32(c.rms_eps),
    );
    put("llama.rope.freq_base", Value::F32(c.rope_theta as f32));
    put("llama.vocab_size", u32v(c.vocab_size));
    if let Some(m) = c.moe {
        put("llama.expert_count", u32v(m.n_experts));
        put("llama.expert_used_count", u32v(m.top_k));
    }
    if c.head_dim * c.n_heads != c.hidden_size {
        put("llama.attention.key_length", u32v(c.head_dim));
        put("llama.attention.value_length", u32v(c.head_dim));
    }
    if let Some(w) = c.sliding_window {
        // llama.cpp's llama architecture ignores it; bora reads it.
        put("llama.attention.sliding_window", u32v(w));
    }
    if let Some(t) = bora_engine::load_tokenizer(dir)
        .ok()
        .and_then(|t| t.chat_template)
    {
        put("tokenizer.chat_template", Value::Str(t));
    }

    let interleave = ckpt.format == Format::Hf && c.rope_layout == RopeLayout::SplitHalves;
    let tensor =
        |role: Role| -> Result<TensorRef> { Ok(ckpt.tensor(&role.name(ckpt.format))?.clone()) };
    let one = |role: Role, heads: Option<usize>| -> Result<SourceTensor> {
        Ok(SourceTensor {
            interleave_heads: heads.filter(|_| interleave),
            ..SourceTensor::whole(role.name(Format::Gguf), tensor(role)?)
        })
    };
    let mut tensors = Vec::new();
    tensors.push(one(Role::Embed, None)?);
    for l in 0..c.n_layers {
        tensors.push(one(Role::AttnNorm(l), None)?);
        tensors.push(one(Role::Wq(l), Some(c.n_heads))?);
        tensors.push(one(Role::Wk(l), Some(c.n_kv_heads))?);
        tensors.push(one(Role::Wv(l), None)?);
        tensors.push(one(Role::Wo(l), None)?);
        tensors.push(one(Role::FfnNorm(l), None)?);
        match c.moe {
            None => {
                tensors.push(one(Role::Gate(l), None)?);
                tensors.push(one(Role::Up(l), None)?);
                tensors.push(one(Role::Down(l), None)?);
            }
            Some(m) => {
                tensors.push(one(Role::Router(l), None)?);
                // GGUF stacks the experts: [n_expert, rows, cols], as llama.cpp reads Mixtral.
                let names = gguf_stacked_experts(l);
                type ExpertRole = fn(usize, usize) -> Role;
                let roles: [ExpertRole; 3] = [Role::ExpertGate, Role::ExpertUp, Role::ExpertDown];
                for (name, role) in names.into_iter().zip(roles) {
                    let parts = (0..m.n_experts)
                        .map(|e| tensor(role(l, e)))
                        .collect::<Result<Vec<_>>>()?;
                    let each = parts[0].shape.clone();
                    if let Some(p) = parts.iter().find(|p| p.shape != each) {
                        bail!(
                            "{}: expert tensor '{}' is {:?}, unlike expert 0's {each:?}",
                            dir.display(),
                            p.name,
                            p.shape
                        );
                    }
                    tensors.push(SourceTensor {
                        name,
                        shape: [&[m.n_experts][..], &each].concat(),
                        parts,
                        interleave_heads: None,
                    });
                }
            }
        }
    }
    tensors.push(one(Role::FinalNorm, None)?);
    if !c.tie_embeddings {
        tensors.push(one(Role::LmHead, None)?);
    }
    Ok(Source {
        metadata: md,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::gpt2_char;

    /// GPT-2's byte spelling: a bijection of the 256 bytes, printable Latin-1 kept, and the
    /// characters GPT-2 vocabularies show for space, newline and tab (Ġ, Ċ, ĉ).
    #[test]
    fn bytes_are_spelled_as_gpt2_spells_them() {
        let chars: std::collections::BTreeSet<char> = (0..=255u8).map(gpt2_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(gpt2_char(b'a'), 'a');
        assert_eq!(gpt2_char(0xE9), 'é');
        assert_eq!(gpt2_char(b' '), 'Ġ');
        assert_eq!(gpt2_char(b'\n'), 'Ċ');
        assert_eq!(gpt2_char(b'\t'), 'ĉ');
        assert_eq!(gpt2_char(0x00), 'Ā');
        assert_eq!(gpt2_char(0xAD), 'Ń');
    }
}
