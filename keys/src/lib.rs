//! blindkd keys: the key-holding half of blindkd, for the data owner and the doctor.
//!
//! Everything that holds, derives or uses a secret key lives here, on top of the keyless
//! [`blindkd_engine`]: class keys and the [`crypto::ClientScheme`] side of every scheme (mask PRF,
//! sealing blocks, session secret keys, sealing queries, decrypting and unmasking replies), token
//! issuing and device keys ([`token`]), the [`owner`] key, index building and key bundles, and the
//! client's query state machine ([`protocol`]).
//!
//! The query server depends on `blindkd-engine` only and never on this crate, so no build of the
//! server can link key-holding code (issue 11, finding K; `scripts/check-server-keyless.sh`).
//!
//! The modules mirror the engine's: each re-exports the engine module of the same name and adds the
//! key-holding items, so `blindkd_keys::token::{issue, verify}` both resolve.
#![forbid(unsafe_code)]

pub mod crypto;
pub mod owner;
pub mod pool;
pub mod protocol;
pub mod token;

pub use blindkd_engine::{Error, Result};
