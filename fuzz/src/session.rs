//! Fuzz entry point for the server's session request (`POST /v1/sessions`, a JSON body), run
//! through the real router with `oneshot`, as a client would reach it.
//!
//! Shared verbatim by the cargo-fuzz target `session_request` and by the corpus replay test
//! `tests/tests/fuzz_session.rs` (`#[path]` include). Each execution gets a fresh server state
//! (nonces, sessions and the in-memory audit log would otherwise grow across executions and
//! make them depend on each other).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use blindkd_engine::index::{id_hex, IndexId};
use blindkd_engine::protocol::{open_index_bytes, HostedIndex};
use blindkd_engine::token::{verify, Claims, Issuers, QueryKind, Scope};
use blindkd_keys::token::{issue, DeviceKey, IssuerKey};
use blindkd_server::{app, AppState, ServerLimits};
use tower::ServiceExt;

/// The checked-in format-v1 plain index (48 records, d = 4, classes `a` and `b`).
const PLAIN_INDEX: &[u8] = include_bytes!("../../keys/tests/fixtures/v1-plain.bkd");

/// When the fixture token was issued (2026-11-01T00:00:00Z).
pub const ISSUED_AT: i64 = 1_793_491_200;

/// What every execution shares: the runtime, the hosted index, the issuer and a valid token.
pub struct Fixture {
    rt: tokio::runtime::Runtime,
    hosted: Arc<dyn HostedIndex>,
    id: IndexId,
    issuers: Issuers,
    device: DeviceKey,
    claims: Claims,
    /// A token for the fixture index, valid from [`ISSUED_AT`] for twenty years: a constant
    /// (Ed25519 is deterministic), so it can stand in the seed corpus.
    pub token: String,
}

/// The fixture, built once.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let hosted = open_index_bytes(
            PLAIN_INDEX,
            Path::new("fuzz.bkd"),
            &blindkd_engine::index::LoadLimits::default(),
        )
        .unwrap();
        let id = hosted.header().index_id;
        let issuer = IssuerKey::from_bytes(&[1; 32]);
        let mut issuers = Issuers::new();
        issuers.insert("hospital-a", issuer.public());
        let device = DeviceKey::from_seed(&[7; 32]);
        let claims = Claims {
            iss: "hospital-a".into(),
            sub: "dr.jones".into(),
            aud: id_hex(&id),
            iat: ISSUED_AT,
            nbf: ISSUED_AT,
            exp: ISSUED_AT + 20 * 365 * 86_400,
            cti: [0x5a; 16],
            scope: Scope {
                kinds: vec![QueryKind::Knn, QueryKind::Range],
                max_k: 50,
                max_radius: 2.5,
                classes: vec!["a".into()],
                budget: 100,
                max_blocks: 16,
                max_results: 100,
            },
            cnf: device.public().ed25519,
        };
        let token = issue(&issuer, &claims).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Fixture {
            rt,
            hosted,
            id,
            issuers,
            device,
            claims,
            token,
        }
    })
}

async fn call(router: &axum::Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    // Every answer, error or not, is a JSON object.
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    (status, v)
}

fn post_json(uri: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// The session request body. First byte selects the mode; the rest is:
/// 0: the whole body, as is;
/// 1: a proof-of-possession signature (raw bytes, sent hex-encoded) beside the valid token and
///    a fresh nonce: must never open a session (it would be a forgery);
/// 2: token text (lossy UTF-8) beside a fresh nonce and a valid proof of possession for that
///    very text: opens a session only if the text verifies, with the claims the issuer signed.
///
/// No input may get a 5xx or a non-JSON answer. Returns whether a session opened (`None`: empty
/// input).
pub fn session_request(data: &[u8]) -> Option<bool> {
    let f = fixture();
    let (&mode, rest) = data.split_first()?;
    let mut indexes = HashMap::new();
    indexes.insert(f.id, f.hosted.clone());
    let state = AppState::from_indexes(
        indexes,
        f.issuers.clone(),
        &[],
        None,
        ServerLimits::default(),
    )
    .unwrap();
    let router = app(state);
    Some(f.rt.block_on(async {
        let fresh_nonce = || async {
            let (status, v) = call(&router, post_json("/v1/nonces", Vec::new())).await;
            assert_eq!(status, StatusCode::OK);
            v["nonce"].as_str().unwrap().to_owned()
        };
        let (body, token_text) = match mode % 3 {
            0 => (rest.to_vec(), None),
            1 => {
                let nonce = fresh_nonce().await;
                let body = serde_json::json!({
                    "token": f.token, "nonce": nonce, "pop": hex::encode(rest),
                });
                (serde_json::to_vec(&body).unwrap(), None)
            }
            _ => {
                let text = String::from_utf8_lossy(rest).into_owned();
                let nonce = fresh_nonce().await;
                let pop = f.device.sign_pop(&hex::decode(&nonce).unwrap(), &text);
                let body = serde_json::json!({
                    "token": text, "nonce": nonce, "pop": hex::encode(pop),
                });
                (serde_json::to_vec(&body).unwrap(), Some(text))
            }
        };
        let (status, v) = call(&router, post_json("/v1/sessions", body)).await;
        assert!(!status.is_server_error(), "{status}: {v}");
        if status.is_success() {
            // A session needs a valid token, an issued nonce and a proof of possession: only
            // mode 2 can supply all three, and only for a text that verifies to what was signed.
            let text = token_text.expect("a session opened without a proof of possession");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let claims = verify(&text, &f.issuers, now, &f.claims.aud).unwrap();
            assert_eq!(
                claims, f.claims,
                "a session for claims the issuer never signed"
            );
            assert!(v["session"].is_string());
            true
        } else {
            assert!(v["code"].is_string(), "{status}: {v}");
            false
        }
    }))
}
