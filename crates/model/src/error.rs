use std::path::PathBuf;

/// Everything that can go wrong between a path on disk and a forward pass.
/// Each variant names the file, tensor or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A malformed or truncated checkpoint file.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: tensor '{name}': {msg}")]
    Tensor {
        path: PathBuf,
        name: String,
        msg: String,
    },
    #[error("{path}: missing tensor '{name}'")]
    MissingTensor { path: PathBuf, name: String },
    #[error("tensor '{name}' has shape {actual:?} but the config implies {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{source_name}: field '{field}': {msg}")]
    Config {
        source_name: String,
        field: String,
        msg: String,
    },
    #[error(
        "{source_name}: unsupported architecture '{arch}' (bora runs mistral, mixtral and llama)"
    )]
    UnsupportedArch { source_name: String, arch: String },
    #[error(
        "{path}: not a model: expected a GGUF file or a folder with config.json and *.safetensors"
    )]
    UnknownFormat { path: PathBuf },
    #[error("cannot quantize to {target}: {msg}")]
    Quantize {
        target: bora_kernels::DType,
        msg: String,
    },
    #[error("token id {id} is out of range: the vocabulary has {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("position {pos} is past the context limit of {limit} tokens")]
    ContextOverflow { pos: usize, limit: usize },
    #[error("KV cache is full: {needed} more blocks needed, {free} free of {capacity}")]
    CacheFull {
        needed: usize,
        free: usize,
        capacity: usize,
    },
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn format(path: &std::path::Path, msg: impl Into<String>) -> Self {
        ModelError::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn config(source_name: &str, field: &str, msg: impl Into<String>) -> Self {
        ModelError::Config {
            source_name: source_name.to_string(),
            field: field.to_string(),
            msg: msg.into(),
        }
    }
}
