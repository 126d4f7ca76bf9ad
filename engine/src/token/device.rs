//! The public half of a doctor's device key: Ed25519 for proof of possession, X25519 for bundle
//! sealing. The secret half (`DeviceKey`) is in `blindkd-keys`.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;

use crate::{Error, Result};

/// The text prefix of a [`DevicePublic`]; the `1` is the format version.
const DEVICE_PUBLIC_PREFIX: &str = "bkd-device1:";

/// A device's public keys, as written to its `.pub` file and given to the issuer.
///
/// Text form: `bkd-device1:<64 hex Ed25519><64 hex X25519>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DevicePublic {
    /// Ed25519 verification key; goes into a token's `cnf` claim.
    pub ed25519: [u8; 32],
    /// X25519 public key; key bundles are sealed to it.
    pub x25519: [u8; 32],
}

impl fmt::Display for DevicePublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{DEVICE_PUBLIC_PREFIX}{}{}",
            hex::encode(self.ed25519),
            hex::encode(self.x25519)
        )
    }
}

impl fmt::Debug for DevicePublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevicePublic({self})")
    }
}

impl FromStr for DevicePublic {
    type Err = Error;
    /// Parses the text form, refusing an Ed25519 half that is not a curve point.
    fn from_str(s: &str) -> Result<Self> {
        let hex_part = s.trim().strip_prefix(DEVICE_PUBLIC_PREFIX).ok_or_else(|| {
            Error::malformed(
                "device public key",
                format!("expected the prefix {DEVICE_PUBLIC_PREFIX}"),
            )
        })?;
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(hex_part, &mut bytes)
            .map_err(|e| Error::malformed("device public key", e))?;
        let mut public = DevicePublic {
            ed25519: [0; 32],
            x25519: [0; 32],
        };
        public.ed25519.copy_from_slice(&bytes[..32]);
        public.x25519.copy_from_slice(&bytes[32..]);
        VerifyingKey::from_bytes(&public.ed25519)
            .map_err(|e| Error::malformed("device public key", e))?;
        Ok(public)
    }
}
