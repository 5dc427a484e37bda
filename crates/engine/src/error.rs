use std::path::PathBuf;

use bora_model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{0} has no tokenizer (no tokenizer.json / GGUF vocabulary): pass token ids with --ids, or a tokenizer with --tokenizer")]
    NoTokenizer(PathBuf),
    #[error("the prompt is empty: give at least one token")]
    EmptyPrompt,
    #[error("prompt of {prompt} tokens plus {requested} new tokens exceeds the context limit of {limit} tokens")]
    TooLong {
        prompt: usize,
        requested: usize,
        limit: usize,
    },
    #[error("{0}")]
    InvalidOption(String),
    #[error("invalid conversation: {0}")]
    InvalidChat(String),
    /// The caller's callback asked the batch loop to stop (its own error says why).
    #[error("stopped by the caller")]
    Stopped,
    #[error("invalid sampling option: {0}")]
    Sampling(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;
