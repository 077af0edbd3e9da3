//! The one error type of the core. The bindings map each variant onto one class of the Python
//! hierarchy rooted at `tierflow.TierflowError` (see `rust/py/src/errors.rs`).

use std::path::PathBuf;

/// Every fallible core operation returns `Result<T, CoreError>`.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A tensor does not fit: names both sizes.
    #[error("{0}")]
    Capacity(String),
    /// An unknown tensor name.
    #[error("no tensor named {0:?}")]
    NotFound(String),
    /// A name that exists already (put without overwrite).
    #[error("a tensor named {0:?} exists already (pass overwrite=True to replace it)")]
    Exists(String),
    /// A name that is empty, has NUL, or would leave the store's folder.
    #[error("invalid tensor name {0:?}: {1}")]
    InvalidName(String, String),
    /// Unsupported or mismatched dtype.
    #[error("{0}")]
    DType(String),
    /// Mismatched or invalid shape.
    #[error("{0}")]
    Shape(String),
    /// A file whose contents are not what they claim to be.
    #[error("corrupt file {path}{}: {msg}", tensor.as_ref().map(|t| format!(" (tensor {t:?})")).unwrap_or_default())]
    Corrupt { path: PathBuf, tensor: Option<String>, msg: String },
    /// An operating-system I/O error, with the path it concerns.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A bad argument value (capacity strings, policies, ...).
    #[error("{0}")]
    Value(String),
    /// A plan that cannot be scheduled (a CoE that does not fit a device, ...).
    #[error("{0}")]
    Schedule(String),
    /// The store (or another handle) was closed.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// A bug: an invariant that did not hold, or a caught panic.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl CoreError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io { path: path.into(), source }
    }
    /// A corrupt-file error naming the file and, when known, the tensor.
    pub fn corrupt(path: impl Into<PathBuf>, tensor: Option<&str>, msg: impl Into<String>) -> Self {
        CoreError::Corrupt { path: path.into(), tensor: tensor.map(str::to_owned), msg: msg.into() }
    }
}
