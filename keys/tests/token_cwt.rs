//! Issuing and verifying access tokens; every refusal code.
#![allow(clippy::unwrap_used)]

mod token_common;

use blindkd_keys::token::{
    codes, decode_unverified, issue, qr_version, verify, IssuerKey, IssuerPublic, Issuers,
    CLOCK_SKEW_SECS,
};
use coset::cwt::ClaimsSet;
use coset::{
    iana, CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable,
};
use ed25519_dalek::Signer;
use token_common::*;

#[test]
fn round_trip() {
    let (token, claims, issuers) = fixture();
    assert!(token.starts_with("BKD1:"));
    assert_eq!(verify(&token, &issuers, NOW, AUD).unwrap(), claims);
    assert_eq!(decode_unverified(&token).unwrap(), claims);
    // A trailing newline from a file or scanner does not matter.
    assert_eq!(
        verify(&format!("{token}\n"), &issuers, NOW, AUD).unwrap(),
        claims
    );
}

#[test]
fn token_size_and_qr_version() {
    let (token, _, _) = fixture();
    let bytes = token_bytes(&token).len();
    let version = qr_version(&token).unwrap();
    println!(
        "token: {bytes} bytes, {} characters, QR version {version} (ECC Q)",
        token.len()
    );
    assert!(bytes <= 260, "token is {bytes} bytes");
    assert!(version <= 14, "QR version {version}");

    // Three classes and long names (the issuer name appears twice: kid and iss) still fit v17.
    let mut c = claims(&device_key(7).public());
    c.iss = "st-elsewhere-general-hospital".into();
    c.sub = "dr.emily.jones@st-elsewhere".into();
    c.scope.classes = vec!["cardiology".into(), "nephrology".into(), "oncology".into()];
    let token = issue(&issuer_key(1), &c).unwrap();
    let bytes = token_bytes(&token).len();
    let version = qr_version(&token).unwrap();
    println!("larger token: {bytes} bytes, QR version {version}");
    assert!(version <= 17, "QR version {version}");
}

#[test]
fn tampered_payload_byte_is_bad_signature() {
    let (token, _, issuers) = fixture();
    let mut bytes = token_bytes(&token);
    // Flip one letter of the subject "dr.jones" inside the signed payload.
    let pos = bytes.windows(8).position(|w| w == b"dr.jones").unwrap();
    bytes[pos + 3] = b'J';
    let tampered = token_text(&bytes);
    assert_eq!(decode_unverified(&tampered).unwrap().sub, "dr.Jones");
    assert_eq!(
        code(verify(&tampered, &issuers, NOW, AUD).unwrap_err()),
        codes::BAD_SIGNATURE
    );
}

#[test]
fn tampered_signature_is_bad_signature() {
    let (token, _, issuers) = fixture();
    let mut bytes = token_bytes(&token);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let err = verify(&token_text(&bytes), &issuers, NOW, AUD).unwrap_err();
    assert_eq!(code(err), codes::BAD_SIGNATURE);
}

#[test]
fn class_a_token_tampered_to_class_b_fails() {
    let (token, _, issuers) = fixture();
    let mut sign1 = CoseSign1::from_tagged_slice(&token_bytes(&token)).unwrap();
    let mut claims = decode_unverified(&token).unwrap();
    assert_eq!(claims.scope.classes, vec!["cardiology".to_string()]);
    // Re-encode the claims with class B and keep the original signature.
    claims.scope.classes = vec!["oncology".into()];
    let set = ClaimsSet::from_slice(sign1.payload.as_deref().unwrap()).unwrap();
    let mut forged = set.clone();
    for (name, value) in &mut forged.rest {
        if *name == coset::cwt::ClaimName::PrivateUse(-65537) {
            let coset::cbor::value::Value::Map(entries) = value else {
                panic!()
            };
            for (k, v) in entries.iter_mut() {
                if *k == coset::cbor::value::Value::from(4) {
                    *v = coset::cbor::value::Value::Array(vec![coset::cbor::value::Value::Text(
                        "oncology".into(),
                    )]);
                }
            }
        }
    }
    assert_ne!(forged, set);
    sign1.payload = Some(forged.to_vec().unwrap());
    let tampered = token_text(&sign1.to_tagged_vec().unwrap());
    assert_eq!(decode_unverified(&tampered).unwrap(), claims);
    assert_eq!(
        code(verify(&tampered, &issuers, NOW, AUD).unwrap_err()),
        codes::BAD_SIGNATURE
    );

    // Re-signing class B with another key under the same issuer name fails too.
    let forged_token = issue(&issuer_key(2), &claims).unwrap();
    let err = verify(&forged_token, &issuers, NOW, AUD).unwrap_err();
    assert_eq!(code(err), codes::BAD_SIGNATURE);
    // And the genuine token still allows class A only.
    let genuine = verify(&token, &issuers, NOW, AUD).unwrap();
    assert!(genuine.scope.allows_class("cardiology"));
    assert!(!genuine.scope.allows_class("oncology"));
}

#[test]
fn other_issuer_key_same_name_is_bad_signature() {
    let (_, claims, issuers) = fixture();
    let token = issue(&issuer_key(2), &claims).unwrap();
    assert_eq!(
        code(verify(&token, &issuers, NOW, AUD).unwrap_err()),
        codes::BAD_SIGNATURE
    );
}

#[test]
fn unknown_issuer() {
    let (token, _, _) = fixture();
    let issuers = issuers("hospital-b", issuer_key(1).public());
    assert_eq!(
        code(verify(&token, &issuers, NOW, AUD).unwrap_err()),
        codes::UNKNOWN_ISSUER
    );
    assert_eq!(
        code(verify(&token, &Issuers::new(), NOW, AUD).unwrap_err()),
        codes::UNKNOWN_ISSUER
    );
}

#[test]
fn kid_must_match_iss() {
    // Issuer B signs, under its own kid, a claims set naming issuer A.
    let key_b = issuer_key(2);
    let claims = claims(&device_key(7).public());
    let genuine = issue(&issuer_key(1), &claims).unwrap();
    let sign1 = CoseSign1::from_tagged_slice(&token_bytes(&genuine)).unwrap();
    let signing = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
    let forged = CoseSign1Builder::new()
        .protected(
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::EdDSA)
                .key_id(b"hospital-b".to_vec())
                .build(),
        )
        .payload(sign1.payload.unwrap())
        .create_signature(b"", |tbs| signing.sign(tbs).to_bytes().to_vec())
        .build();
    let token = token_text(&forged.to_tagged_vec().unwrap());
    let mut both = issuers(ISS, issuer_key(1).public());
    both.insert("hospital-b", key_b.public());
    assert_eq!(
        code(verify(&token, &both, NOW, AUD).unwrap_err()),
        codes::BAD_SIGNATURE
    );
}

#[test]
fn expired() {
    let (token, claims, issuers) = fixture();
    // Within the skew it is still accepted; past it, refused.
    verify(&token, &issuers, claims.exp + CLOCK_SKEW_SECS - 1, AUD).unwrap();
    let err = verify(&token, &issuers, claims.exp + CLOCK_SKEW_SECS, AUD).unwrap_err();
    assert_eq!(code(err), codes::EXPIRED);
}

#[test]
fn not_yet_valid() {
    let key = issuer_key(1);
    let mut c = claims(&device_key(7).public());
    c.nbf = NOW + 3600;
    c.iat = NOW;
    let token = issue(&key, &c).unwrap();
    let issuers = issuers(ISS, key.public());
    let err = verify(&token, &issuers, NOW, AUD).unwrap_err();
    assert_eq!(code(err), codes::NOT_YET_VALID);
    verify(&token, &issuers, c.nbf - CLOCK_SKEW_SECS, AUD).unwrap();
    let err = verify(&token, &issuers, c.nbf - CLOCK_SKEW_SECS - 1, AUD).unwrap_err();
    assert_eq!(code(err), codes::NOT_YET_VALID);
}

#[test]
fn wrong_audience() {
    let (token, _, issuers) = fixture();
    let err = verify(&token, &issuers, NOW, "oncology-2026").unwrap_err();
    assert_eq!(code(err), codes::WRONG_AUDIENCE);
}

#[test]
fn malformed_tokens() {
    let (token, _, issuers) = fixture();
    let body = token.strip_prefix("BKD1:").unwrap();
    let cases = [
        format!("BKD2:{body}"),
        body.to_string(),
        format!("bkd1:{body}"),
        "BKD1:".to_string(),
        "BKD1:!!!!".to_string(),
        "BKD1:hello world".to_string(),
        token[..token.len() - 10].to_string(),
        token[..token.len() - 1].to_string(),
        token[..40].to_string(),
        format!("{token}00"),
        format!("BKD1:{}", "A".repeat(5000)),
        String::new(),
    ];
    for case in cases {
        let err = verify(&case, &issuers, NOW, AUD).unwrap_err();
        assert_eq!(code(err), codes::MALFORMED_TOKEN, "{case:.60}");
        let err = decode_unverified(&case).unwrap_err();
        assert_eq!(code(err), codes::MALFORMED_TOKEN, "{case:.60}");
    }
}

#[test]
fn invalid_claims_are_not_issued() {
    let key = issuer_key(1);
    let good = claims(&device_key(7).public());
    let mut bad = Vec::new();
    let mut c = good.clone();
    c.exp = c.nbf;
    bad.push(c);
    let mut c = good.clone();
    c.scope.classes.clear();
    bad.push(c);
    let mut c = good.clone();
    c.scope.max_radius = f64::NAN;
    bad.push(c);
    let mut c = good.clone();
    c.scope.kinds.clear();
    bad.push(c);
    let mut c = good.clone();
    c.iss.clear();
    bad.push(c);
    for c in bad {
        assert_eq!(code(issue(&key, &c).unwrap_err()), codes::MALFORMED_TOKEN);
    }
}

#[test]
fn issuer_public_text_round_trip() {
    let public = issuer_key(1).public();
    let text = public.to_string();
    assert!(text.starts_with("bkd-issuer:"));
    assert_eq!(text.parse::<IssuerPublic>().unwrap(), public);
    assert!("bkd-issuer:00".parse::<IssuerPublic>().is_err());
    assert!(text
        .replace("bkd-issuer:", "bkd-device1:")
        .parse::<IssuerPublic>()
        .is_err());
}

#[test]
fn debug_prints_no_secret() {
    let secret = [0x3c; 32];
    let key = IssuerKey::from_bytes(&secret);
    let shown = format!("{key:?} {key:#?}");
    assert!(!shown.contains(&hex::encode(secret)), "{shown}");
    assert!(!shown.contains(&format!("{:?}", secret)), "{shown}");
    assert!(shown.contains(&hex::encode(key.public().to_bytes())));

    let seed = [0x4d; 32];
    let device = blindkd_keys::token::DeviceKey::from_seed(&seed);
    let shown = format!("{device:?} {device:#?}");
    let derived = [
        seed,
        blake3::derive_key(blindkd_keys::crypto::domain::DEVICE_ED25519, &seed),
        blake3::derive_key(blindkd_keys::crypto::domain::DEVICE_X25519, &seed),
    ];
    for secret in derived {
        assert!(!shown.contains(&hex::encode(secret)), "{shown}");
        assert!(!shown.contains(&format!("{:?}", secret)), "{shown}");
    }
    assert!(shown.contains(&hex::encode(device.public().ed25519)));
}

/// Issue 17, finding U1: terminal control characters in a name (a forged subject once hid the
/// real "INVALID" line of `token show` behind a fake "VALID") are refused at issue time, and a
/// token carrying one is malformed.
#[test]
fn names_with_control_characters_are_refused() {
    let (_, good, _) = fixture();
    for (field, bad) in [
        ("sub", "doctor\u{1b}[2K\rVALID"),
        ("iss", "st-marys\u{7}"),
        ("class", "cardio\nlogy"),
    ] {
        let mut c = good.clone();
        match field {
            "sub" => c.sub = bad.into(),
            "iss" => c.iss = bad.into(),
            _ => c.scope.classes = vec![bad.into()],
        }
        let e = c.validate().expect_err(field);
        assert_eq!(code(e), "malformed_token", "{field}");
        assert!(
            blindkd_keys::token::issue(&issuer_key(1), &c).is_err(),
            "{field}: issued"
        );
    }
    // Non-ASCII letters are names, not control characters.
    let mut c = good.clone();
    c.sub = "Dr. Müller-Łukasiewicz".into();
    c.validate().unwrap();
}
