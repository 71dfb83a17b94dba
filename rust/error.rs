//! The one error type of the core. Every failure names what went wrong, and its variant
//! says whose fault it is: a file that is missing or malformed (`File`), a readable file
//! whose layout or format cannot be scanned (`Layout`), a buffer a file asks for that
//! cannot be allocated (`Memory`), a bad request (`Input`), or a failure of the core
//! itself (`Internal`). The Python bindings raise the matching class of
//! `spectrum_rs.errors` (`MemoryError` for `Memory`).

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SpectrumError {
    /// A problem with one file (missing, unreadable, malformed).
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// A readable file that holds a layout or format the scan does not support (a dtype
    /// that cannot be decoded, scales that do not tile their weight).
    #[error("{path}: {message}")]
    Layout { path: String, message: String },
    /// A buffer whose size a file declares could not be allocated (the message says which
    /// tensor and how many bytes).
    #[error("{path}: {message}")]
    Memory { path: String, message: String },
    /// A problem with the request itself (bad argument, nothing to scan).
    #[error("{0}")]
    Input(String),
    /// A failure the input did not cause (the reader thread could not start or died).
    #[error("{0}")]
    Internal(String),
}

impl SpectrumError {
    pub fn file(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        SpectrumError::File { path: path.as_ref().display().to_string(), message: message.into() }
    }

    pub fn layout(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        SpectrumError::Layout { path: path.as_ref().display().to_string(), message: message.into() }
    }

    pub fn memory(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        SpectrumError::Memory { path: path.as_ref().display().to_string(), message: message.into() }
    }

    pub fn input(message: impl Into<String>) -> Self {
        SpectrumError::Input(message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        SpectrumError::Internal(message.into())
    }

    /// The file the error is about, when there is one.
    pub fn path(&self) -> Option<&str> {
        match self {
            SpectrumError::File { path, .. }
            | SpectrumError::Layout { path, .. }
            | SpectrumError::Memory { path, .. } => Some(path),
            SpectrumError::Input(_) | SpectrumError::Internal(_) => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, SpectrumError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file() {
        let e = SpectrumError::file("/m/model.safetensors", "no such file");
        assert_eq!(e.to_string(), "/m/model.safetensors: no such file");
        assert_eq!(e.path(), Some("/m/model.safetensors"));
        let e = SpectrumError::layout("/m/a.safetensors", "tensor \"w\" has dtype I32");
        assert_eq!(e.to_string(), "/m/a.safetensors: tensor \"w\" has dtype I32");
        let e = SpectrumError::memory("/m/a.safetensors", "cannot allocate 8 bytes");
        assert_eq!(e.to_string(), "/m/a.safetensors: cannot allocate 8 bytes");
        assert_eq!(e.path(), Some("/m/a.safetensors"));
        assert_eq!(SpectrumError::input("no model path given").to_string(), "no model path given");
        assert_eq!(SpectrumError::internal("reader died").path(), None);
    }
}
