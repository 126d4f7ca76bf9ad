//! The secret half of a doctor's device key: Ed25519 for proof of possession, X25519 for opening
//! sealed bundles. The public half ([`DevicePublic`]) is the engine's.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey};
use rand::RngCore;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::{pop_message, DevicePublic};
use crate::crypto::domain;
use crate::{Error, Result};

/// Magic of a device key file.
const FILE_MAGIC: &[u8; 7] = b"BKDDEVK";
/// Format version of a device key file.
const FILE_VERSION: u8 = 1;
/// Bytes of the file checksum (BLAKE3, [`domain::DEVICE_KEY_FILE`]).
const CHECKSUM_LEN: usize = 16;
/// Total size of a device key file.
const FILE_LEN: usize = FILE_MAGIC.len() + 1 + 32 + CHECKSUM_LEN;

/// A doctor's device secret: one 32-byte seed from which an Ed25519 key (proof of
/// possession) and an X25519 key (opening sealed bundles) are derived with BLAKE3
/// (`domain::DEVICE_ED25519`, `domain::DEVICE_X25519`).
///
/// Not `Clone`, not `Serialize`; zeroized on drop; `Debug` shows only the public keys.
pub struct DeviceKey {
    seed: Zeroizing<[u8; 32]>,
    ed25519: SigningKey,
    x25519: StaticSecret,
}

impl DeviceKey {
    /// The key derived from a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let ed_secret = Zeroizing::new(blake3::derive_key(domain::DEVICE_ED25519, seed));
        let x_secret = Zeroizing::new(blake3::derive_key(domain::DEVICE_X25519, seed));
        DeviceKey {
            seed: Zeroizing::new(*seed),
            ed25519: SigningKey::from_bytes(&ed_secret),
            x25519: StaticSecret::from(*x_secret),
        }
    }

    /// A fresh random key.
    pub fn random() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// The public keys, for the `.pub` file.
    pub fn public(&self) -> DevicePublic {
        DevicePublic {
            ed25519: self.ed25519.verifying_key().to_bytes(),
            x25519: PublicKey::from(&self.x25519).to_bytes(),
        }
    }

    /// The key file: `BKDDEVK`, version byte 1, the seed, a 16-byte BLAKE3 checksum.
    /// Store it with owner-only permissions.
    pub fn to_file_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(FILE_LEN));
        out.extend_from_slice(FILE_MAGIC);
        out.push(FILE_VERSION);
        out.extend_from_slice(self.seed.as_ref());
        let sum = blake3::derive_key(domain::DEVICE_KEY_FILE, &out);
        out.extend_from_slice(&sum[..CHECKSUM_LEN]);
        out
    }

    /// Reads a key file written by [`DeviceKey::to_file_bytes`].
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self> {
        let what = "device key file";
        if bytes.len() < FILE_MAGIC.len() + 1 || &bytes[..FILE_MAGIC.len()] != FILE_MAGIC {
            return Err(Error::malformed(what, "not a blindkd device key"));
        }
        let version = bytes[FILE_MAGIC.len()];
        if version != FILE_VERSION {
            return Err(Error::UnsupportedVersion(format!(
                "device key file version {version}; this build reads {FILE_VERSION}"
            )));
        }
        if bytes.len() != FILE_LEN {
            return Err(Error::malformed(
                what,
                format!("{} bytes, expected {FILE_LEN}", bytes.len()),
            ));
        }
        let (body, sum) = bytes.split_at(FILE_LEN - CHECKSUM_LEN);
        let expected = blake3::derive_key(domain::DEVICE_KEY_FILE, body);
        if sum != &expected[..CHECKSUM_LEN] {
            return Err(Error::malformed(what, "checksum mismatch (corrupted file)"));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&body[FILE_MAGIC.len() + 1..]);
        Ok(Self::from_seed(&seed))
    }

    /// Signs the proof of possession for `token_text` and the server's `nonce`
    /// ([`pop_message`]).
    pub fn sign_pop(&self, nonce: &[u8], token_text: &str) -> Vec<u8> {
        self.ed25519
            .sign(&pop_message(nonce, token_text))
            .to_bytes()
            .to_vec()
    }

    /// The X25519 secret, for opening sealed bundles.
    pub(in crate::token) fn x25519_secret(&self) -> &StaticSecret {
        &self.x25519
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}
