//! Proof of possession: the device named in a token's `cnf` signs a fresh server nonce.

use ed25519_dalek::{Signature, VerifyingKey};

use super::{canonical_text, codes, refuse};
use crate::crypto::domain;
use crate::Result;

/// The shortest server nonce [`verify_pop`] accepts, in bytes.
pub const MIN_POP_NONCE_LEN: usize = 16;

/// The message a device signs to prove possession of the `cnf` key for one session.
///
/// `POP_CONTEXT ‖ 0x00 ‖ H(token) ‖ len(nonce) as u64 BE ‖ nonce`, where `H` is BLAKE3 in
/// derive-key mode with [`domain::TOKEN_HASH`] over the trimmed token text. Binding the token
/// hash means a proof made for one token cannot be replayed with another token naming the same
/// device; binding the nonce means it cannot be replayed in another session.
pub fn pop_message(nonce: &[u8], token_text: &str) -> Vec<u8> {
    let token_hash = blake3::Hasher::new_derive_key(domain::TOKEN_HASH)
        .update(canonical_text(token_text).as_bytes())
        .finalize();
    let mut msg = Vec::with_capacity(domain::POP_CONTEXT.len() + 1 + 32 + 8 + nonce.len());
    msg.extend_from_slice(domain::POP_CONTEXT);
    msg.push(0);
    msg.extend_from_slice(token_hash.as_bytes());
    msg.extend_from_slice(&(nonce.len() as u64).to_be_bytes());
    msg.extend_from_slice(nonce);
    msg
}

/// Checks a proof-of-possession signature `sig` made by the device key `cnf` over
/// [`pop_message`]`(nonce, token_text)`.
///
/// Refuses with `missing_pop` when `sig` is empty and `bad_pop` otherwise (wrong length, bad
/// `cnf` point, nonce shorter than [`MIN_POP_NONCE_LEN`], signature that does not verify).
pub fn verify_pop(cnf: &[u8; 32], nonce: &[u8], token_text: &str, sig: &[u8]) -> Result<()> {
    if sig.is_empty() {
        return Err(refuse(
            codes::MISSING_POP,
            "no proof-of-possession signature",
        ));
    }
    if nonce.len() < MIN_POP_NONCE_LEN {
        return Err(refuse(
            codes::BAD_POP,
            format!("nonce shorter than {MIN_POP_NONCE_LEN} bytes"),
        ));
    }
    let key = VerifyingKey::from_bytes(cnf)
        .map_err(|_| refuse(codes::BAD_POP, "cnf is not an Ed25519 public key"))?;
    let sig = Signature::from_slice(sig)
        .map_err(|_| refuse(codes::BAD_POP, "signature must be 64 bytes"))?;
    key.verify_strict(&pop_message(nonce, token_text), &sig)
        .map_err(|_| refuse(codes::BAD_POP, "signature does not verify under cnf"))
}
