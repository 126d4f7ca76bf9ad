//! The key-holding side of access tokens (DESIGN §5): issuing ([`issue`], [`IssuerKey`]), the
//! doctor's device secret ([`DeviceKey`]) and sealing key bundles to a device ([`seal_to_device`],
//! [`open_sealed`]).
//!
//! Re-exports the engine's [`blindkd_engine::token`] (format, decoding, verification, QR codes).

mod device;
mod issuing;
mod seal;

pub use blindkd_engine::token::*;

pub use device::DeviceKey;
pub use issuing::{issue, IssuerKey};
pub use seal::{open_sealed, seal_to_device};
