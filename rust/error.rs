//! The one error type of the core. Every failure that depends on input (a file, a
//! header, an index, a dtype) becomes a `SpectrumError` that names the file and the
//! problem; the Python bindings turn it into `spectrum_rs.SpectrumError`.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SpectrumError {
    /// A problem with one file (missing, unreadable, malformed).
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// A problem with the request itself (bad argument, nothing to scan).
    #[error("{0}")]
    Input(String),
}

impl SpectrumError {
    pub fn file(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        SpectrumError::File {
            path: path.as_ref().display().to_string(),
            message: message.into(),
        }
    }

    pub fn input(message: impl Into<String>) -> Self {
        SpectrumError::Input(message.into())
    }
}

pub type Result<T> = std::result::Result<T, SpectrumError>;
