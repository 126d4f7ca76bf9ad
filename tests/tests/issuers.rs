//! Issue 17, T1: each hosted index names the issuer whose tokens it accepts. A server that pins
//! two hospitals' keys must not let the second one mint tokens for the first one's index.
#![allow(clippy::unwrap_used)]

use blindkd_keys::token::DeviceKey;
use blindkd_server::ServerLimits;
use blindkd_tests::{code_of, mlhe, plain, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_issuer_cannot_mint_tokens_for_another_hospitals_index() {
    let (st_marys, other) = (plain(), mlhe());
    assert_ne!(st_marys.issuer_name(), other.issuer_name());
    let server = TestServer::hosting(&[st_marys, other], ServerLimits::default()).await;
    let device = DeviceKey::random();
    // The other hospital signs a token for St Mary's index, with its own (pinned) key.
    let mut claims = st_marys.claims(&device);
    claims.iss = other.issuer_name().to_string();
    let forged = other.sign(&claims);
    let e = server
        .client()
        .open_session(&forged, &device)
        .await
        .expect_err("another hospital's token opened a session on this index");
    assert_eq!(code_of(&e), "issuer_not_allowed");
    // Each hospital's own tokens still work.
    for fx in [st_marys, other] {
        server
            .client()
            .open_session(&fx.token(&device), &device)
            .await
            .unwrap();
    }
}
