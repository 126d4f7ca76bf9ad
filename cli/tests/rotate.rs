//! Issue 17, B2: the signing key rotates on its own. Tokens signed before a rotation stay valid
//! wherever the new issuer file is pinned, until the previous key is dropped; the revocation list
//! signed by the old key keeps working.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

mod common;
use common::{index_cleveland, issue_token, ok};

fn show(dir: &std::path::Path, token: &str) -> String {
    ok(
        dir,
        &["token", "show", token, "--issuer", "hospital.key.pub"],
    )
}

#[test]
fn tokens_survive_a_signing_key_rotation_until_the_old_key_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(
        dir,
        &["keygen", "--out", "hospital.key", "--issuer", "st-marys"],
    );
    index_cleveland(dir, "hospital.key", "#0,#3,#4,#7", &[], "cardio.bkd");
    ok(dir, &["device-key", "--out", "doctor.device"]);
    issue_token(
        dir,
        "hospital.key",
        "doctor-old",
        "cardio",
        &["--text", "--out", "old.png"],
    );
    ok(dir, &["rotate", "signing-key", "--key", "hospital.key"]);
    issue_token(
        dir,
        "hospital.key",
        "doctor-new",
        "cardio",
        &["--text", "--out", "new.png"],
    );
    let pins = std::fs::read_to_string(dir.join("hospital.key.pub")).unwrap();
    assert_eq!(pins.lines().count(), 2, "{pins}");
    assert!(show(dir, "old.txt").contains("VALID signature"));
    assert!(show(dir, "new.txt").contains("VALID signature"));
    // The list keygen signed with the old key still verifies; the revoke signs with the new one.
    ok(
        dir,
        &[
            "token",
            "revoke",
            "--key",
            "hospital.key",
            "--token",
            "old.txt",
            "--list",
            "hospital.key.revoked",
        ],
    );
    ok(
        dir,
        &[
            "rotate",
            "signing-key",
            "--key",
            "hospital.key",
            "--drop-previous",
        ],
    );
    let pins = std::fs::read_to_string(dir.join("hospital.key.pub")).unwrap();
    assert_eq!(pins.lines().count(), 1, "{pins}");
    assert!(
        show(dir, "old.txt").contains("INVALID"),
        "the dropped key still verifies"
    );
    assert!(show(dir, "new.txt").contains("VALID signature"));
}
