//! Sealing a key bundle to a device (ECIES-style, like HPKE base mode).
//!
//! Format: `BKDSEAL` ‖ version 1 ‖ ephemeral X25519 public key (32) ‖ ChaCha20-Poly1305
//! ciphertext with its 16-byte tag. The AEAD key is BLAKE3 derive-key
//! ([`domain::BUNDLE_SEAL`]) over `shared ‖ ephemeral public ‖ recipient public`; the nonce is
//! zero because every key is used once (the ephemeral key is fresh per message). The header
//! and the recipient's public key are the associated data.
//!
//! The seal is not sender-authenticated: anyone holding the device's public key can seal to it.
//! The bundle's contents must carry their own authenticity where that matters.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::{DeviceKey, DevicePublic};
use crate::crypto::domain;
use crate::{Error, Result};

const MAGIC: &[u8; 7] = b"BKDSEAL";
const VERSION: u8 = 1;
const HEADER_LEN: usize = MAGIC.len() + 1 + 32;
const TAG_LEN: usize = 16;
/// The largest plaintext sealed or opened, in bytes.
const MAX_PLAINTEXT: usize = 64 << 20;

/// Seals `plaintext` (a key bundle) so that only the holder of `device`'s key can open it.
pub fn seal_to_device(device: &DevicePublic, plaintext: &[u8]) -> Result<Vec<u8>> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(Error::LimitExceeded(format!(
            "sealed bundle of {} bytes exceeds {MAX_PLAINTEXT}",
            plaintext.len()
        )));
    }
    let mut eph_bytes = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(eph_bytes.as_mut());
    let eph_secret = StaticSecret::from(*eph_bytes);
    let eph_public = PublicKey::from(&eph_secret);
    let recipient = PublicKey::from(device.x25519);
    let shared = eph_secret.diffie_hellman(&recipient);
    if !shared.was_contributory() {
        return Err(Error::Crypto(
            "device X25519 key is a low-order point; refusing to seal".into(),
        ));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(eph_public.as_bytes());
    let cipher = cipher(shared.as_bytes(), eph_public.as_bytes(), &device.x25519);
    let ct = cipher
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: plaintext,
                aad: &aad(&out, &device.x25519),
            },
        )
        .map_err(|_| Error::Crypto("sealing failed".into()))?;
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a bundle sealed by [`seal_to_device`] with the device's key.
///
/// A wrong key or any changed byte gives [`Error::Crypto`]; a wrong magic, length or version
/// gives [`Error::Malformed`] or [`Error::UnsupportedVersion`].
pub fn open_sealed(device: &DeviceKey, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let what = "sealed bundle";
    if sealed.len() < MAGIC.len() + 1 || &sealed[..MAGIC.len()] != MAGIC {
        return Err(Error::malformed(what, "not a blindkd sealed bundle"));
    }
    let version = sealed[MAGIC.len()];
    if version != VERSION {
        return Err(Error::UnsupportedVersion(format!(
            "sealed bundle version {version}; this build reads {VERSION}"
        )));
    }
    if sealed.len() < HEADER_LEN + TAG_LEN {
        return Err(Error::malformed(what, "truncated"));
    }
    if sealed.len() > HEADER_LEN + MAX_PLAINTEXT + TAG_LEN {
        return Err(Error::LimitExceeded(format!(
            "sealed bundle of {} bytes exceeds {MAX_PLAINTEXT}",
            sealed.len()
        )));
    }
    let (header, ct) = sealed.split_at(HEADER_LEN);
    let mut eph = [0u8; 32];
    eph.copy_from_slice(&header[MAGIC.len() + 1..]);
    let secret = device.x25519_secret();
    let recipient = PublicKey::from(secret).to_bytes();
    let shared = secret.diffie_hellman(&PublicKey::from(eph));
    let refused =
        || Error::Crypto("cannot open sealed bundle: wrong device key or corrupted".into());
    if !shared.was_contributory() {
        return Err(refused());
    }
    let plaintext = cipher(shared.as_bytes(), &eph, &recipient)
        .decrypt(
            &Nonce::default(),
            Payload {
                msg: ct,
                aad: &aad(header, &recipient),
            },
        )
        .map_err(|_| refused())?;
    Ok(Zeroizing::new(plaintext))
}

fn cipher(shared: &[u8; 32], eph_public: &[u8; 32], recipient: &[u8; 32]) -> ChaCha20Poly1305 {
    let key = Zeroizing::new(
        blake3::Hasher::new_derive_key(domain::BUNDLE_SEAL)
            .update(shared)
            .update(eph_public)
            .update(recipient)
            .finalize()
            .as_bytes()
            .to_owned(),
    );
    ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
}

fn aad(header: &[u8], recipient: &[u8; 32]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 32);
    aad.extend_from_slice(header);
    aad.extend_from_slice(recipient);
    aad
}
