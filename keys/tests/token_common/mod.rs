//! Shared fixtures of the token tests.
#![allow(dead_code, unreachable_pub)]

use blindkd_keys::token::{
    issue, Claims, DeviceKey, DevicePublic, IssuerKey, IssuerPublic, Issuers, QueryKind, Scope,
};

/// The fixed "now" of the tests (2026-11-01T00:00:00Z).
pub const NOW: i64 = 1_793_491_200;
pub const ISS: &str = "hospital-a";
pub const AUD: &str = "cardio-2026";

pub fn issuer_key(seed: u8) -> IssuerKey {
    IssuerKey::from_bytes(&[seed; 32])
}

pub fn device_key(seed: u8) -> DeviceKey {
    DeviceKey::from_seed(&[seed; 32])
}

/// A realistic claims set: one class, both kinds, a 30-day token.
pub fn claims(device: &DevicePublic) -> Claims {
    Claims {
        iss: ISS.into(),
        sub: "dr.jones".into(),
        aud: AUD.into(),
        iat: NOW - 10,
        nbf: NOW - 10,
        exp: NOW + 30 * 86_400,
        cti: [0x5a; 16],
        scope: Scope {
            kinds: vec![QueryKind::Knn, QueryKind::Range],
            max_k: 50,
            max_radius: 2.5,
            classes: vec!["cardiology".into()],
            budget: 100,
            max_blocks: 16,
            max_results: 100,
        },
        cnf: device.ed25519,
    }
}

pub fn issuers(name: &str, key: IssuerPublic) -> Issuers {
    let mut issuers = Issuers::new();
    issuers.insert(name, key);
    issuers
}

/// A token from issuer key 1 for device 7, and the issuers pinning key 1.
pub fn fixture() -> (String, Claims, Issuers) {
    let key = issuer_key(1);
    let c = claims(&device_key(7).public());
    let token = issue(&key, &c).unwrap();
    (token, c, issuers(ISS, key.public()))
}

/// The refusal code of an error, or panic.
pub fn code(err: blindkd_engine::Error) -> &'static str {
    match err {
        blindkd_engine::Error::Token { code, .. } => code,
        other => panic!("expected a token refusal, got {other:?}"),
    }
}

/// The CBOR bytes behind a token text.
pub fn token_bytes(token: &str) -> Vec<u8> {
    base45::decode(token.strip_prefix("BKD1:").unwrap()).unwrap()
}

/// Token text from CBOR bytes.
pub fn token_text(bytes: &[u8]) -> String {
    format!("BKD1:{}", base45::encode(bytes))
}
