use std::path::PathBuf;

use bora_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A data set or logits file that is not in the expected format.
    #[error("{path}: {msg}")]
    Data { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
}

impl EvalError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn data(path: &std::path::Path, msg: impl Into<String>) -> Self {
        Self::Data {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

impl From<bora_model::ModelError> for EvalError {
    fn from(e: bora_model::ModelError) -> Self {
        Self::Engine(e.into())
    }
}

pub type Result<T> = std::result::Result<T, EvalError>;
