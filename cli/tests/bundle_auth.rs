//! Issue 17, B1: a key bundle is the hospital's only if it carries the hospital's signature.
//! Anyone can seal bytes to a doctor's device *public* key; before bundles were signed, such a
//! bundle with scheme `plain` made `blindkd query` send `w = (−2q, 1)` to the server in the clear.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::path::Path;

mod common;
use common::{blindkd, index_cleveland, issue_bundle, issue_token, ok};

fn index(dir: &Path, key: &str, scheme: &str, out: &str) {
    index_cleveland(dir, key, "#0,#3,#4,#7", &["--scheme", scheme], out);
}

fn bundle(dir: &Path, key: &str, out: &str) {
    issue_bundle(dir, key, out);
}

/// `blindkd query` with `bundle`, against a port nothing listens on: every refusal here must
/// come before the client sends anything.
fn query(dir: &Path, bundle: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "query",
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "token.txt",
        "--device",
        "doctor.device",
        "--bundle",
        bundle,
        "--issuer",
        "hospital.key.pub",
        "--knn",
        "3",
        "--vector",
        "63,145,233,150",
    ];
    args.extend_from_slice(extra);
    let o = blindkd(dir, &args);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn forged_unsigned_and_plain_bundles_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(
        dir,
        &["keygen", "--out", "hospital.key", "--issuer", "st-marys"],
    );
    index(dir, "hospital.key", "mlhe", "cardio.bkd");
    ok(dir, &["device-key", "--out", "doctor.device"]);
    issue_token(
        dir,
        "hospital.key",
        "doctor-0042",
        "cardio",
        &["--text", "--out", "token.png"],
    );
    bundle(dir, "hospital.key", "real.bundle");
    // The real bundle opens and verifies; the query then fails only on the network.
    let (okay, err) = query(dir, "real.bundle", &[]);
    assert!(!okay && err.contains("transport"), "{err}");

    // An attacker with the device's public key and a key of its own, under the same name.
    ok(
        dir,
        &["keygen", "--out", "attacker.key", "--issuer", "st-marys"],
    );
    index(dir, "attacker.key", "plain", "cardio.bkd.fake");
    bundle(dir, "attacker.key", "forged.bundle");
    let (okay, err) = query(dir, "forged.bundle", &[]);
    assert!(!okay, "a forged bundle was accepted");
    assert!(err.contains("signature does not verify"), "{err}");

    // The hospital's own plain-scheme bundle: refused unless the insecure flag is given.
    index(dir, "hospital.key", "plain", "cardio-plain.bkd");
    bundle(dir, "hospital.key", "plain.bundle");
    issue_token(
        dir,
        "hospital.key",
        "doctor-0042",
        "cardio-plain",
        &["--text", "--out", "token.png"],
    );
    let (okay, err) = query(dir, "plain.bundle", &[]);
    assert!(!okay && err.contains("does not hide the query"), "{err}");
    let (okay, err) = query(dir, "plain.bundle", &["--insecure-scheme"]);
    assert!(!okay && err.contains("transport"), "{err}");
}
