//! bora's engine: what turns a model into a text generator.
//!
//! - [`load`]: opens a checkpoint (HF folder or GGUF) with its [`Tokenizer`] into an [`Engine`].
//! - [`run_batch`]: many sequences per forward step (scoring, batched generation).
//! - [`Session`]: one sequence with its KV pool; chunked prefill and single steps.
//! - [`generate`]: prefill + sampling loop; [`Sampler`] is the chain of sampling steps.
//! - [`StreamDecoder`]: releases text only when it is whole (UTF-8, SentencePiece spaces).

pub mod batch;
pub mod chat;
pub mod chat_template;
pub mod error;
pub mod generate;
pub mod sampler;
pub mod serving;
pub mod session;
pub mod spm;
pub mod spm_model;
pub mod stream;
pub mod tekken;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use bora_kernels::Activations;
use bora_model::{Checkpoint, KvType, Model, ModelConfig};

pub use batch::{run_batch, BatchJob, BatchOptions, JobLogits};
pub use error::{EngineError, Result};
pub use generate::{default_prefill_chunk, generate, GenerateOptions, GenerationStats};
pub use sampler::{argmax, Sampler, SamplingParams};
pub use session::Session;
pub use stream::StreamDecoder;
pub use tokenizer::Tokenizer;

/// Overrides of what the checkpoint says.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `Some(Some(w))`: attend within a window of w; `Some(None)`: full attention.
    pub sliding_window: Option<Option<usize>>,
    pub context_length: Option<usize>,
    /// A tokenizer.json to use instead of the model's own.
    pub tokenizer: Option<PathBuf>,
    /// Skip the tokenizer (token ids in and out).
    pub no_tokenizer: bool,
    /// How activations meet quantized weights; default: 8-bit, as llama.cpp.
    pub activations: Activations,
    /// Quantize a float checkpoint's matrices to this type while loading.
    pub quant: Option<bora_kernels::DType>,
    /// How the KV cache stores K and V. Default: f16 for quantized weights met by 8-bit
    /// activations (llama.cpp's numerics, llama.cpp's default cache type); f32 otherwise, so
    /// float checkpoints and exact activations compute what transformers does.
    pub kv_type: Option<KvType>,
}

pub struct Engine {
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
    pub path: PathBuf,
}

pub fn load(path: &Path, opts: &LoadOptions) -> Result<Engine> {
    load_with(path, opts, |_, _| {})
}

/// [`load`], calling `progress(layers done, layers)` while it quantizes (`opts.quant`).
pub fn load_with(
    path: &Path,
    opts: &LoadOptions,
    progress: impl FnMut(usize, usize),
) -> Result<Engine> {
    let ckpt = Checkpoint::open(path)?;
    let mut config: ModelConfig = ckpt.config.clone();
    if let Some(w) = opts.sliding_window {
        config.sliding_window = w;
    }
    if let Some(c) = opts.context_length {
        config.max_context = c;
    }
    let mut model = Model::new(&ckpt, config)?;
    model.activations = opts.activations;
    if let Some(target) = opts.quant {
        model.weights.quantize_with(target, progress)?;
    }
    model.kv_type = opts.kv_type.unwrap_or(model.default_kv_type());
    // A tokenizer.json given explicitly, or the one in an HF folder; else a GGUF's vocabulary.
    let json = match &opts.tokenizer {
        Some(t) => Some(t.clone()),
        None if ckpt.gguf.is_none() => Some(path.join("tokenizer.json")).filter(|f| f.exists()),
        None => None,
    };
    let native = match (&opts.tokenizer, &ckpt.gguf) {
        (Some(t), _) if Tokenizer::is_mistral_file(t) => Some(t.clone()),
        (None, None) if !path.join("tokenizer.json").exists() => mistral_tokenizer_in(path),
        _ => None,
    };
    let json = json.filter(|_| native.is_none());
    let tokenizer = match (opts.no_tokenizer, json, &ckpt.gguf) {
        (true, _, _) => None,
        (false, _, _) if native.is_some() => native
            .as_deref()
            .map(Tokenizer::from_mistral_file)
            .transpose()?,
        (false, Some(file), _) => {
            let (bos, eos) = (
                model.config.bos_token_id,
                model.config.eos_token_ids.clone(),
            );
            Some(Tokenizer::from_json_file(&file, bos, eos)?)
        }
        (false, None, Some(g)) => Tokenizer::from_gguf(g)?,
        (false, None, None) => None,
    };
    Ok(Engine {
        model,
        tokenizer,
        path: path.to_path_buf(),
    })
}

/// Only the tokenizer of a model (no weights are checked): a GGUF file's vocabulary, a
/// folder's tokenizer.json, or a tokenizer.json given directly.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if path.is_file() && Tokenizer::is_mistral_file(path) {
        return Tokenizer::from_mistral_file(path);
    }
    if path.is_dir() && !path.join("tokenizer.json").exists() {
        if let Some(f) = mistral_tokenizer_in(path) {
            return Tokenizer::from_mistral_file(&f);
        }
    }
    let is_json = path.extension().is_some_and(|e| e == "json");
    if path.is_file() && !is_json {
        let g = bora_model::gguf::GgufFile::open(path)?;
        return Tokenizer::from_gguf(&g)?
            .ok_or_else(|| EngineError::NoTokenizer(path.to_path_buf()));
    }
    let (file, dir) = if is_json {
        (
            path.to_path_buf(),
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
        )
    } else {
        (path.join("tokenizer.json"), path.to_path_buf())
    };
    if !file.exists() {
        if !path.exists() {
            return Err(bora_model::ModelError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            }
            .into());
        }
        return Err(EngineError::NoTokenizer(path.to_path_buf()));
    }
    // BOS/EOS ids from config.json when there is one; the tokenizer's own otherwise.
    let config: serde_json::Value = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let id = |v: &serde_json::Value| v.as_u64().map(|x| x as u32);
    let bos = config.get("bos_token_id").and_then(id);
    let eos = config
        .get("eos_token_id")
        .and_then(id)
        .into_iter()
        .collect();
    Tokenizer::from_json_file(&file, bos, eos)
}

impl Engine {
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| EngineError::NoTokenizer(self.path.clone()))
    }

    /// Tokens that end generation: the tokenizer's EOS, else the config's.
    pub fn stop_tokens(&self) -> Vec<u32> {
        match &self.tokenizer {
            Some(t) if !t.eos.is_empty() => t.eos.clone(),
            _ => self.model.config.eos_token_ids.clone(),
        }
    }
}

/// Mistral's own tokenizer file in a checkpoint folder (its native layout): `tekken.json`,
/// else the newest `tokenizer.model.vN`, else `tokenizer.model`.
pub fn mistral_tokenizer_in(dir: &Path) -> Option<PathBuf> {
    let tekken = dir.join("tekken.json");
    if tekken.is_file() {
        return Some(tekken);
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let v = name.strip_prefix("tokenizer.model.v")?;
            let n: u32 = v
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    versioned.sort();
    versioned
        .pop()
        .map(|(_, p)| p)
        .or_else(|| Some(dir.join("tokenizer.model")).filter(|p| p.is_file()))
}
