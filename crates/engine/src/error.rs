//! The engine's error type: every failure names what went wrong.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, EngineError>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("file not found: {}", .0.display())]
    MissingFile(PathBuf),
    #[error("unsupported architecture `{found}`; supported: {}", crate::config::SUPPORTED_ARCHITECTURES.join(", "))]
    UnsupportedArchitecture { found: String },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("missing tensor `{0}` in the checkpoint")]
    MissingTensor(String),
    #[error("bad GGUF file {}: {reason}", path.display())]
    BadGguf { path: PathBuf, reason: String },
    #[error("bad config: {0}")]
    BadConfig(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model hub: {0}")]
    Hub(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("io error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("GPU: {0}")]
    Gpu(String),
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl EngineError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
