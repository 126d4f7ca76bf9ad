//! Revocation through a real server on 127.0.0.1 (issue 17, R2): the list is signed, re-read by
//! content, and enforced fail-closed. A missing, edited, rolled-back or forked list stops the
//! server from serving any token until a valid list is back; revocations outlive the list.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use blindkd_keys::token::{self, DeviceKey, RevocationList, RevokedToken};
use blindkd_server::{AppState, ServerLimits};
use blindkd_tests::{code_of, plain, Fixture, TestServer};

fn cti(text: &str) -> [u8; 16] {
    token::decode_unverified(text).unwrap().cti
}

/// Writes `fx`'s list at `serial` revoking `ctis`, signed with `fx`'s key.
fn write_list(fx: &Fixture, path: &Path, serial: u64, ctis: &[[u8; 16]]) -> String {
    let mut list = RevocationList::new(fx.issuer_name());
    list.serial = serial;
    list.issued = 1_764_513_600 + serial as i64;
    list.entries = ctis
        .iter()
        .map(|c| RevokedToken {
            cti: *c,
            revoked_at: 1_764_513_000,
            subject: "doctor-0042".into(),
        })
        .collect();
    let text = fx.issuer_key.sign_revocation_list(&list).unwrap();
    // Atomically, as `blindkd token revoke` does: a reader never sees half a file.
    blindkd_engine::atomic::write(path, text.as_bytes()).unwrap();
    text
}

fn limits() -> ServerLimits {
    ServerLimits {
        // Every request re-reads the lists by content, so a change inside one mtime tick counts.
        revocation_recheck: Duration::ZERO,
        ..ServerLimits::default()
    }
}

async fn server_with_list(fx: &'static Fixture, list: &Path) -> TestServer {
    TestServer::start(blindkd_tests::state(&[fx], limits(), &[list.to_path_buf()])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_revocation_takes_effect_and_outlives_the_list() {
    let fx = plain();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("revoked.list");
    write_list(fx, &list, 0, &[]);
    let server = server_with_list(fx, &list).await;
    let device = DeviceKey::random();
    let mut claims = fx.claims(&device);
    let victim = fx.sign(&claims);
    claims.cti = token::random_cti();
    let bystander = fx.sign(&claims);
    let client = server.client();
    client.open_session(&victim, &device).await.unwrap();
    write_list(fx, &list, 1, &[cti(&victim)]);
    let e = client.open_session(&victim, &device).await.unwrap_err();
    assert_eq!(code_of(&e), "revoked");
    client.open_session(&bystander, &device).await.unwrap();
    // Even the hospital's own signed list without the id (serial 2) does not un-revoke: the
    // server recorded the revocation in its token store.
    write_list(fx, &list, 2, &[]);
    let e = client.open_session(&victim, &device).await.unwrap_err();
    assert_eq!(code_of(&e), "revoked");
    client.open_session(&bystander, &device).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_list_stops_every_token_until_it_is_fixed() {
    let fx = plain();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("revoked.list");
    let device = DeviceKey::random();
    let mut claims = fx.claims(&device);
    let victim = fx.sign(&claims);
    claims.cti = token::random_cti();
    let bystander = fx.sign(&claims);
    let signed = write_list(fx, &list, 1, &[cti(&victim)]);
    // A server starting from a list edited to drop the victim's line.
    let edited: String = signed
        .lines()
        .filter(|l| !l.starts_with("revoked "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&list, &edited).unwrap();
    let refused = AppState::from_indexes(
        [(fx.id(), fx.index.clone())].into_iter().collect(),
        fx.issuers(),
        std::slice::from_ref(&list),
        None,
        limits(),
    );
    let err = format!("{:#}", refused.err().expect("started on an edited list"));
    assert!(err.contains("signature"), "{err}");
    // From a valid list, the server serves; each broken state then refuses every token with
    // `revocation_unavailable`, and a valid list (same content or a newer serial) heals it.
    std::fs::write(&list, &signed).unwrap();
    let server = server_with_list(fx, &list).await;
    let client = server.client();
    let s = client.open_session(&bystander, &device).await.unwrap();
    type Breakage<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let breakages: Vec<Breakage> = vec![
        (
            "edited",
            Box::new(|| std::fs::write(&list, &edited).unwrap()),
        ),
        ("removed", Box::new(|| std::fs::remove_file(&list).unwrap())),
        (
            "with a byte-order mark and CR line ends",
            Box::new(|| {
                std::fs::write(&list, format!("\u{feff}{}", signed.replace('\n', "\r\n"))).unwrap()
            }),
        ),
        (
            "rolled back to serial 0",
            Box::new(|| {
                write_list(fx, &list, 0, &[]);
            }),
        ),
        (
            "forked at serial 1",
            Box::new(|| {
                write_list(fx, &list, 1, &[token::random_cti()]);
            }),
        ),
    ];
    for (what, break_it) in &breakages {
        break_it();
        let e = client.open_session(&bystander, &device).await.unwrap_err();
        assert_eq!(code_of(&e), "revocation_unavailable", "list {what}");
        // A live session is cut off too: its token might be on the list the server cannot read.
        let e = client.close_session(&s).await.unwrap_err();
        assert_eq!(code_of(&e), "revocation_unavailable", "list {what}");
        std::fs::write(&list, &signed).unwrap();
        client.open_session(&bystander, &device).await.unwrap();
    }
    let e = client.open_session(&victim, &device).await.unwrap_err();
    assert_eq!(code_of(&e), "revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_order_mark_hides_no_entry() {
    let fx = plain();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("revoked.list");
    let device = DeviceKey::random();
    let victim = fx.token(&device);
    let signed = write_list(fx, &list, 1, &[cti(&victim)]);
    std::fs::write(&list, format!("\u{feff}{signed}")).unwrap();
    let server = server_with_list(fx, &list).await;
    let e = server
        .client()
        .open_session(&victim, &device)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), "revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_cuts_off_live_sessions() {
    let fx = plain();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("revoked.list");
    write_list(fx, &list, 0, &[]);
    let server = server_with_list(fx, &list).await;
    let device = DeviceKey::random();
    let t = fx.token(&device);
    let client = server.client();
    let s = client.open_session(&t, &device).await.unwrap();
    client.close_session(&s).await.ok();
    let s = client.open_session(&t, &device).await.unwrap();
    // Revoked while the session is live; only the request path can notice.
    write_list(fx, &list, 1, &[cti(&t)]);
    let e = client.close_session(&s).await.unwrap_err();
    assert_eq!(code_of(&e), "revoked");
}
