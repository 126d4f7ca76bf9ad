//! blindkd engine: exact similarity search over a masked k-d tree index.
//!
//! The engine holds the cryptography ([`crypto`]), the fixed-point [`encoding`], the kd-PB
//! [`tree`], the [`index`] file format, the query [`protocol`] state machines and the access
//! [`token`] format. It does no network I/O.
//!
//! Everything that holds a secret key (data owner and doctor) sits behind the `client` feature.
//! The query server is built without it, so a server binary cannot even name a secret key type.
#![forbid(unsafe_code)]

pub mod atomic;
pub mod crypto;
pub mod encoding;
mod error;
pub mod index;
#[cfg(feature = "client")]
pub mod owner;
pub mod protocol;
pub mod token;
pub mod tree;

pub use error::{Error, Result};

/// Whether this build of the engine contains the key-holding code (feature `client`). Cargo unifies
/// features across a workspace build, so a `blindkd-server` built together with the client crates
/// links it; the server binary refuses to start then (issue 11, finding K).
pub const KEY_HOLDING: bool = cfg!(feature = "client");
