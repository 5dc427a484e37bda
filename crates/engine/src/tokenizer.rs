//! The model's tokenizer: an HF `tokenizer.json`, or the vocabulary embedded in a GGUF file
//! (SentencePiece-BPE `llama`, or byte-level BPE `gpt2` with merges).

use std::path::{Path, PathBuf};

use bora_model::gguf::{GgufFile, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{EngineError, Result};
use crate::spm::{SpmVocab, TYPE_CONTROL, TYPE_USER_DEFINED};
use crate::spm_model::SpmModel;
use crate::tekken::Tekken;

enum Backend {
    /// `parse` recognises special-token text; `plain` (encode_special_tokens) keeps it literal.
    Hf {
        parse: Box<tokenizers::Tokenizer>,
        plain: Box<tokenizers::Tokenizer>,
    },
    Spm(Box<SpmVocab>),
    Tekken(Box<Tekken>),
}

impl Backend {
    fn hf(tk: tokenizers::Tokenizer) -> Self {
        let mut plain = tk.clone();
        plain.set_encode_special_tokens(true);
        Backend::Hf {
            parse: Box::new(tk),
            plain: Box::new(plain),
        }
    }
}

pub struct Tokenizer {
    backend: Backend,
    source: PathBuf,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    /// Whether a prompt starts with BOS.
    pub add_bos: bool,
    /// The model's Jinja chat template, when its files carry one.
    pub chat_template: Option<String>,
    /// A GGUF vocabulary converted from a tekken.json: the version the file declared
    /// (`tokenizer.tekken.version`, which bora writes), so the chat format survives the
    /// conversion.
    declared_tekken_version: Option<String>,
}

/// The GGUF key under which bora keeps a Tekken file's version (llama.cpp ignores it).
pub const GGUF_TEKKEN_VERSION: &str = "tokenizer.tekken.version";

impl Tokenizer {
    /// A `tokenizer.json`; BOS/EOS come from the model config (`bos`, `eos`) and
    /// `tokenizer_config.json` beside it when present.
    pub fn from_json_file(path: &Path, bos: Option<u32>, eos: Vec<u32>) -> Result<Self> {
        let err = |msg: String| EngineError::Tokenizer {
            path: path.to_path_buf(),
            msg,
        };
        let tk =
            tokenizers::Tokenizer::from_file(path).map_err(|e| err(format!("cannot load: {e}")))?;
        let mut bos = bos.or_else(|| tk.token_to_id("<s>"));
        // Without an explicit add_bos_token, BOS is added when the tokenizer's own
        // post-processor adds it, as transformers does.
        let mut add_bos = post_processor_adds(&tk, bos);
        let mut chat_template = path
            .parent()
            .map(|d| d.join("chat_template.jinja"))
            .and_then(|p| std::fs::read_to_string(p).ok());
        if let Some(cfg) = path
            .parent()
            .map(|d| d.join("tokenizer_config.json"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        {
            if let Some(b) = cfg.get("add_bos_token").and_then(|v| v.as_bool()) {
                add_bos = b;
            }
            chat_template = chat_template.or_else(|| template_from_config(&cfg));
            if bos.is_none() {
                bos = cfg
                    .get("bos_token")
                    .and_then(|v| v.as_str())
                    .and_then(|s| tk.token_to_id(s));
            }
        }
        let eos = if eos.is_empty() {
            tk.token_to_id("</s>").into_iter().collect()
        } else {
            eos
        };
        Ok(Self {
            backend: Backend::hf(tk),
            source: path.to_path_buf(),
            bos,
            eos,
            add_bos: add_bos && bos.is_some(),
            chat_template,
            declared_tekken_version: None,
        })
    }

    /// The vocabulary embedded in a GGUF file, or `None` when it has none.
    pub fn from_gguf(g: &GgufFile) -> Result<Option<Self>> {
        let Some(model) = g.get("tokenizer.ggml.model").and_then(Value::as_str) else {
            return Ok(None);
        };
        let meta = GgufVocab { g };
        let tokens = meta.strings("tokenizer.ggml.tokens")?;
        let types: Vec<i32> = meta
            .numbers("tokenizer.ggml.token_type", tokens.len(), 1.0)?
            .iter()
            .map(|&t| t as i32)
            .collect();
        let id = |k: &str| meta.token_id(k, tokens.len());
        let bos = id("tokenizer.ggml.bos_token_id")?;
        // Generation ends at EOS and at the end-of-turn / end-of-message tokens, as in llama.cpp.
        let mut eos: Vec<u32> = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(t) = id(key)?.filter(|t| !eos.contains(t)) {
                eos.push(t);
            }
        }
        let (backend, default_add_bos) = match model {
            "llama" => {
                let scores = meta.numbers("tokenizer.ggml.scores", tokens.len(), 0.0)?;
                let add_space = meta.flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                let unk = id("tokenizer.ggml.unknown_token_id")?;
                let vocab = SpmVocab::new(tokens, scores, types, unk, add_space);
                (Backend::Spm(Box::new(vocab)), true)
            }
            "gpt2" => {
                let merges = meta.strings("tokenizer.ggml.merges")?;
                let pre = g
                    .get("tokenizer.ggml.pre")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let bpe = byte_level_bpe(tokens, &types, merges, pre).map_err(|m| meta.err(m))?;
                (Backend::hf(bpe), false)
            }
            other => {
                return Err(meta.err(format!(
                    "tokenizer model '{other}' is not supported (llama and gpt2 are)"
                )))
            }
        };
        let add_bos = meta
            .flag("tokenizer.ggml.add_bos_token")
            .unwrap_or(default_add_bos)
            && bos.is_some();
        Ok(Some(Self {
            backend,
            source: g.path().to_path_buf(),
            bos,
            eos,
            add_bos,
            chat_template: g
                .get("tokenizer.chat_template")
                .and_then(Value::as_str)
                .map(str::to_string),
            declared_tekken_version: g
                .get(GGUF_TEKKEN_VERSION)
                .and_then(Value::as_str)
                .map(str::to_string),
        }))
    }

    /// Text → ids, without BOS. Text spelling a special token (`<s>`, `<|im_start|>`) becomes
    /// that token, as llama.cpp and transformers treat prompts.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Text → ids with every character taken literally, as sentencepiece encodes.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let t = match &self.backend {
            Backend::Spm(v) if parse_special => return Ok(v.encode_parsing_special(text)),
            Backend::Spm(v) => return Ok(v.encode(text)),
            Backend::Tekken(t) => {
                let ids = if parse_special {
                    t.encode_parsing_special(text)
                } else {
                    t.encode(text)
                };
                return ids.map_err(|msg| EngineError::Tokenizer {
                    path: self.source.clone(),
                    msg,
                });
            }
            Backend::Hf { parse, .. } if parse_special => parse,
            Backend::Hf { plain, .. } => plain,
        };
        t.encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| EngineError::Tokenizer {
                path: self.source.clone(),
                msg: format!("cannot encode: {e}"),
            })
    }

    /// Text → ids of a prompt: BOS first when the model expects it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// Ids → text; special (control) tokens are left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.backend {
            Backend::Spm(v) => v.decode(ids),
            Backend::Tekken(t) => t.decode(ids),
            Backend::Hf { parse, .. } => parse.decode(ids, true).unwrap_or_default(),
        }
    }

    /// The bytes the token stands for (one byte of a character split over byte tokens is
    /// just that byte); nothing for control tokens.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.backend {
            Backend::Spm(v) => v.token_bytes(id, &mut out),
            Backend::Tekken(t) => t.token_bytes(id, &mut out),
            Backend::Hf { parse, .. } => {
                let piece = parse.id_to_token(id).unwrap_or_default();
                let byte = piece
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                out = match byte {
                    Some(b) => vec![b],
                    None => parse.decode(&[id], true).unwrap_or_default().into_bytes(),
                };
            }
        }
        out
    }

    /// The token's piece as the vocabulary spells it.
    pub fn piece(&self, id: u32) -> String {
        match &self.backend {
            Backend::Spm(v) => v.piece(id).unwrap_or("").to_string(),
            Backend::Tekken(t) => t.piece(id),
            Backend::Hf { parse, .. } => parse.id_to_token(id).unwrap_or_default(),
        }
    }

    /// The id of a token spelled exactly `text` (a control token such as `[INST]`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.backend {
            Backend::Spm(v) => v.id_of(text),
            Backend::Tekken(t) => t.special_id(text),
            Backend::Hf { parse, .. } => parse.token_to_id(text),
        }
    }

    /// The format version a Tekken file declares (`v3`, `v7`, …), also when its vocabulary
    /// came through a GGUF bora wrote; None for other kinds.
    pub fn tekken_version(&self) -> Option<&str> {
        match &self.backend {
            Backend::Tekken(t) => Some(&t.version),
            _ => self.declared_tekken_version.as_deref(),
        }
    }

    /// Which kind of tokenizer this is: `tekken`, `sentencepiece` or `tokenizers`.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Spm(_) => "sentencepiece",
            Backend::Tekken(_) => "tekken",
            Backend::Hf { .. } => "tokenizers",
        }
    }

    /// Where the tokenizer was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// A SentencePiece model file (`tokenizer.model`, `tokenizer.model.v3`, …).
    pub fn from_spm_model_file(path: &Path) -> Result<Self> {
        let m = SpmModel::open(path)?;
        Ok(Self {
            backend: Backend::Spm(Box::new(m.vocab)),
            source: path.to_path_buf(),
            bos: m.bos,
            eos: m.eos.into_iter().collect(),
            add_bos: m.bos.is_some(),
            chat_template: None,
            declared_tekken_version: None,
        })
    }

    /// A Tekken tokenizer file (`tekken.json`).
    pub fn from_tekken_file(path: &Path) -> Result<Self> {
        let t = Tekken::open(path)?;
        let (bos, eos) = (t.special_id("<s>"), t.special_id("</s>"));
        Ok(Self {
            backend: Backend::Tekken(Box::new(t)),
            source: path.to_path_buf(),
            bos,
            eos: eos.into_iter().collect(),
            add_bos: bos.is_some(),
            chat_template: None,
            declared_tekken_version: None,
        })
    }

    /// Mistral's own tokenizer files, by name: `tekken*.json` or `tokenizer.model*`.
    pub fn is_mistral_file(path: &Path) -> bool {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        (name.starts_with("tekken") && name.ends_with(".json"))
            || name.ends_with(".model")
            || name.contains(".model.v")
    }

    /// `tekken*.json` or a SentencePiece model, chosen by name.
    pub fn from_mistral_file(path: &Path) -> Result<Self> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".json") {
            Self::from_tekken_file(path)
        } else {
            Self::from_spm_model_file(path)
        }
    }
}

/// Typed reads of a GGUF file's `tokenizer.ggml.*` metadata, errors naming the key.
struct GgufVocab<'a> {
    g: &'a GgufFile,
}

impl GgufVocab<'_> {
    fn err(&self, msg: String) -> EngineError {
        EngineError::Tokenizer {
            path: self.g.path().to_path_buf(),
            msg,
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        let arr = self
            .g
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| self.err(format!("'{key}' is missing or not an array")))?;
        arr.iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| self.err(format!("'{key}' holds a non-string")))
            })
            .collect()
    }

    /// A numeric array with one entry per token; absent, every entry is `default`.
    fn numbers(&self, key: &str, n: usize, default: f32) -> Result<Vec<f32>> {
        let Some(v) = self.g.get(key) else {
            return Ok(vec![default; n]);
        };
        let arr = v
            .as_array()
            .ok_or_else(|| self.err(format!("'{key}' is not an array")))?;
        if arr.len() != n {
            return Err(self.err(format!("'{key}' has {} entries for {n} tokens", arr.len())));
        }
        arr.iter()
            .map(|x| {
                x.as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| self.err(format!("'{key}' holds a non-number")))
            })
            .collect()
    }

    /// A token id: absent is `None`; present, it must be inside the vocabulary.
    fn token_id(&self, key: &str, vocab: usize) -> Result<Option<u32>> {
        match self.g.get(key).map(Value::as_u64) {
            None => Ok(None),
            Some(Some(v)) if v < vocab as u64 => Ok(Some(v as u32)),
            Some(v) => Err(self.err(format!(
                "'{key}' = {v:?} is not a token id in a vocabulary of {vocab}"
            ))),
        }
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.g.get(key).and_then(Value::as_bool)
    }
}

/// Whether encoding with special tokens puts `bos` in front of what plain encoding gives.
fn post_processor_adds(tk: &tokenizers::Tokenizer, bos: Option<u32>) -> bool {
    let (Some(bos), Ok(with), Ok(without)) = (bos, tk.encode("a", true), tk.encode("a", false))
    else {
        return false;
    };
    with.get_ids().len() == without.get_ids().len() + 1 && with.get_ids().first() == Some(&bos)
}

/// The `tokenizer.ggml.pre` whose split is the single regex `pattern` (a tokenizer.json's
/// `Split` before a `ByteLevel` that does not split again): what a GGUF writer names it by.
pub fn pre_tokenizer_named_by_regex(pattern: &str) -> Option<&'static str> {
    ["llama-bpe", "tekken"]
        .into_iter()
        .find(|name| pre_tokenizer_regexes(name).is_some_and(|r| r == [pattern]))
}

/// The split regexes llama.cpp uses for each `tokenizer.ggml.pre`, in order.
fn pre_tokenizer_regexes(pre: &str) -> Option<Vec<&'static str>> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    Some(match pre {
        "default" | "gpt2" => vec![GPT2],
        "smollm" => vec![r"\p{N}", GPT2],
        "llama3" | "llama-bpe" | "llama-v3" => vec![
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
        // Tekken's own pattern (tekken.json's config.pattern, as mistral-common splits);
        // llama.cpp runs an ASCII approximation of its letter classes, which splits mixed-case
        // non-ASCII words differently.
        "tekken" => vec![
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
        _ => return None,
    })
}

fn byte_level_bpe(
    tokens: Vec<String>,
    types: &[i32],
    merges: Vec<String>,
    pre: &str,
) -> std::result::Result<tokenizers::Tokenizer, String> {
    let regexes = pre_tokenizer_regexes(pre).ok_or_else(|| {
        format!("pre-tokenizer '{pre}' (tokenizer.ggml.pre) is not supported yet")
    })?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("merge '{m}' is not two tokens"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        // Llama-3 and Tekken vocabularies take a word that is itself a token whole (llama.cpp
        // and HF agree; tiktoken does the same).
        .ignore_merges(matches!(
            pre,
            "llama3" | "llama-bpe" | "llama-v3" | "tekken"
        ))
        .build()
        .map_err(|e| format!("cannot build BPE: {e}"))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for (i, r) in regexes.iter().enumerate() {
        if pre == "smollm" && i == 0 {
            steps.push(Digits::new(true).into());
            continue;
        }
        let split = Split::new(
            SplitPattern::Regex(r.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| format!("bad split regex: {e}"))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    tk.with_pre_tokenizer(Some(Sequence::new(steps)));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    // Control tokens are special (left out of decoded text); user-defined ones are ordinary
    // text that must still be matched whole, as llama.cpp prints and parses them.
    let added = |ty: i32, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types)
            .filter(|(_, &t)| t == ty)
            .map(|(s, _)| AddedToken::from(s.clone(), special))
            .collect()
    };
    tk.add_special_tokens(&added(TYPE_CONTROL, true));
    tk.add_tokens(&added(TYPE_USER_DEFINED, false));
    Ok(tk)
}

/// tokenizer_config.json's `chat_template`: a string, or a list of named templates (the
/// one named "default").
fn template_from_config(cfg: &serde_json::Value) -> Option<String> {
    match cfg.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}
