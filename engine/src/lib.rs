//! blindkd engine: exact similarity search over a masked k-d tree index.
//!
//! The engine holds the keyless half of blindkd: the server's view of the schemes ([`crypto`]), the
//! fixed-point [`encoding`], the kd-PB [`tree`], the [`index`] file format, the server side of the
//! query [`protocol`] and the access [`token`] format (decoding and verification). It does no
//! network I/O.
//!
//! Nothing here holds a secret key: key generation, sealing, decryption, unmasking, the mask PRF
//! and signing live in the `blindkd-keys` crate, which depends on this one. The query server
//! depends on this crate only, so a server binary cannot even name a secret key type.
#![forbid(unsafe_code)]

pub mod atomic;
pub mod crypto;
pub mod encoding;
mod error;
pub mod index;
pub mod protocol;
pub mod token;
pub mod tree;

pub use error::{Error, Result};
