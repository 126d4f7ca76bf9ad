//! Proof of possession and device keys.
#![allow(clippy::unwrap_used)]

mod token_common;

use blindkd_keys::token::{codes, issue, verify, verify_pop, DeviceKey, DevicePublic};
use token_common::*;

const NONCE: [u8; 32] = [0x11; 32];

#[test]
fn right_key_passes() {
    let (token, _, issuers) = fixture();
    let claims = verify(&token, &issuers, NOW, AUD).unwrap();
    let sig = device_key(7).sign_pop(&NONCE, &token);
    verify_pop(&claims.cnf, &NONCE, &token, &sig).unwrap();
}

#[test]
fn other_device_key_is_refused() {
    let (token, claims, _) = fixture();
    let sig = device_key(8).sign_pop(&NONCE, &token);
    assert_eq!(
        code(verify_pop(&claims.cnf, &NONCE, &token, &sig).unwrap_err()),
        codes::BAD_POP
    );
}

#[test]
fn other_nonce_is_refused() {
    let (token, claims, _) = fixture();
    let sig = device_key(7).sign_pop(&NONCE, &token);
    let other = [0x12; 32];
    assert_eq!(
        code(verify_pop(&claims.cnf, &other, &token, &sig).unwrap_err()),
        codes::BAD_POP
    );
}

#[test]
fn other_token_is_refused() {
    let (token, claims, _) = fixture();
    // A second token for the same device: a proof made for it does not carry over.
    let mut c2 = claims.clone();
    c2.cti = [0x77; 16];
    let token2 = issue(&issuer_key(1), &c2).unwrap();
    let sig = device_key(7).sign_pop(&NONCE, &token2);
    verify_pop(&claims.cnf, &NONCE, &token2, &sig).unwrap();
    assert_eq!(
        code(verify_pop(&claims.cnf, &NONCE, &token, &sig).unwrap_err()),
        codes::BAD_POP
    );
}

#[test]
fn missing_and_broken_proofs() {
    let (token, claims, _) = fixture();
    assert_eq!(
        code(verify_pop(&claims.cnf, &NONCE, &token, &[]).unwrap_err()),
        codes::MISSING_POP
    );
    let mut sig = device_key(7).sign_pop(&NONCE, &token);
    assert_eq!(
        code(verify_pop(&claims.cnf, &NONCE, &token, &sig[..63]).unwrap_err()),
        codes::BAD_POP
    );
    sig[5] ^= 0x80;
    assert_eq!(
        code(verify_pop(&claims.cnf, &NONCE, &token, &sig).unwrap_err()),
        codes::BAD_POP
    );
    // A short nonce is refused even with a valid signature over it.
    let short = [1u8; 8];
    let sig = device_key(7).sign_pop(&short, &token);
    assert_eq!(
        code(verify_pop(&claims.cnf, &short, &token, &sig).unwrap_err()),
        codes::BAD_POP
    );
}

#[test]
fn device_key_file_round_trip() {
    let key = DeviceKey::random();
    let bytes = key.to_file_bytes();
    let back = DeviceKey::from_file_bytes(&bytes).unwrap();
    assert_eq!(back.public(), key.public());
    for i in 0..bytes.len() {
        let mut bad = bytes.to_vec();
        bad[i] ^= 0x01;
        assert!(DeviceKey::from_file_bytes(&bad).is_err(), "byte {i}");
    }
    assert!(DeviceKey::from_file_bytes(&bytes[..bytes.len() - 1]).is_err());
    assert!(DeviceKey::from_file_bytes(&[]).is_err());
    // Same seed, same keys (known-answer style determinism); different seeds, different keys.
    assert_eq!(device_key(7).public(), device_key(7).public());
    assert_ne!(device_key(7).public(), device_key(8).public());
}

#[test]
fn device_public_text_round_trip() {
    let public = device_key(7).public();
    let text = public.to_string();
    assert!(text.starts_with("bkd-device1:"));
    assert_eq!(text.parse::<DevicePublic>().unwrap(), public);
    assert_eq!(format!("{text}\n").parse::<DevicePublic>().unwrap(), public);
    assert!(text[..text.len() - 2].parse::<DevicePublic>().is_err());
    assert!(text
        .replace("bkd-device1:", "bkd-device2:")
        .parse::<DevicePublic>()
        .is_err());
}
