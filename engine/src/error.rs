use std::path::PathBuf;

/// The engine's one error type. Variants are grouped by cause; each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input value or argument is invalid (NaN, wrong dimension, out of range...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The encoding would let a squared distance overflow the scheme's plaintext space.
    #[error("encoding overflow: {0}")]
    Overflow(String),
    /// Bytes from outside (network, file) did not decode.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// A file on disk is corrupt (bad checksum, truncated, bad lengths).
    #[error("data corruption in {path}: {detail}")]
    DataCorruption {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The file or message has a format version this build cannot read.
    #[error("unsupported format: {0}")]
    UnsupportedVersion(String),
    /// A limit was exceeded (size, count, depth).
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// A ciphertext or key does not belong to these parameters, or a cryptographic operation failed.
    #[error("crypto error: {0}")]
    Crypto(String),
    /// Token or signature verification failed.
    #[error("token rejected ({code}): {detail}")]
    Token {
        /// A stable snake_case reason code.
        code: &'static str,
        /// Human detail.
        detail: String,
    },
    /// The request is refused by access control or a limit; `code` is stable snake_case.
    #[error("refused ({code}): {detail}")]
    Denied {
        /// Stable reason code.
        code: &'static str,
        /// Human detail.
        detail: String,
    },
    /// A reply from the query server failed verification (issue 17): its structure does not match
    /// the request or the bundle, or a check value does not match. The client discards the whole
    /// answer; the detail is for logs, and the code is always `integrity`.
    #[error("the server's reply failed verification and was discarded ({0})")]
    Integrity(String),
    /// An I/O error with the path involved.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// [`Error::Malformed`] for `what` with a displayable detail.
    #[doc(hidden)]
    pub fn malformed(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Error::Malformed {
            what,
            detail: detail.to_string(),
        }
    }
    /// [`Error::Io`] for `path`.
    #[doc(hidden)]
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
