//! `token revoke` and `serve --revoked` through the real binary (issue 17, R1/R2): concurrent
//! revokes lose nothing, a damaged list is never overwritten, and a server does not start on a
//! missing list or one edited to un-revoke a token.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use common::{blindkd, index_cleveland, issue_token, ok, spawn_serve};

/// A hospital with a key, an index `cardio` and `n` tokens `t-<i>.txt`; returns their ids (hex).
fn hospital(dir: &Path, n: usize) -> Vec<String> {
    ok(
        dir,
        &["keygen", "--out", "hospital.key", "--issuer", "st-marys"],
    );
    index_cleveland(dir, "hospital.key", "#0,#1,#2,#3,#4", &[], "cardio.bkd");
    ok(dir, &["device-key", "--out", "doctor.device"]);
    (0..n)
        .map(|i| {
            let out = format!("t-{i}.png");
            let subject = format!("doctor-{i}");
            issue_token(
                dir,
                "hospital.key",
                &subject,
                "cardio",
                &["--text", "--out", &out],
            );
            let text = std::fs::read_to_string(dir.join(format!("t-{i}.txt"))).unwrap();
            hex::encode(
                blindkd_engine::token::decode_unverified(text.trim())
                    .unwrap()
                    .cti,
            )
        })
        .collect()
}

fn revoke_args(i: usize) -> Vec<String> {
    [
        "token",
        "revoke",
        "--key",
        "hospital.key",
        "--token",
        &format!("t-{i}.txt"),
        "--out",
        "revoked.list",
    ]
    .map(str::to_string)
    .to_vec()
}

#[test]
fn concurrent_revokes_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ids = hospital(dir, 8);
    for round in 0..2 {
        let children: Vec<_> = (0..ids.len())
            .filter(|i| i % 2 == round)
            .map(|i| {
                Command::new(env!("CARGO_BIN_EXE_blindkd"))
                    .current_dir(dir)
                    .args(revoke_args(i))
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let list = std::fs::read_to_string(dir.join("revoked.list")).unwrap();
    let lost: Vec<_> = ids
        .iter()
        .filter(|id| !list.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "every revoke printed success, yet {} of {} ids are missing from the list",
        lost.len(),
        ids.len()
    );
}

#[test]
fn a_damaged_list_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ids = hospital(dir, 2);
    let args = revoke_args(0);
    ok(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let path = dir.join("revoked.list");
    // A line the revoke cannot read (not UTF-8), as a disk error or a bad edit would leave.
    let mut damaged = std::fs::read(&path).unwrap();
    damaged.extend_from_slice(b"\xff\xfe garbage\n");
    std::fs::write(&path, &damaged).unwrap();
    let args = revoke_args(1);
    let o = blindkd(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let after = std::fs::read(&path).unwrap();
    assert!(
        String::from_utf8_lossy(&after).contains(&ids[0]),
        "the revoke rewrote the damaged list and dropped the earlier revocation"
    );
    assert!(!o.status.success(), "a revoke on a damaged list succeeded");
    assert_eq!(after, damaged, "the damaged list was modified");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a valid revocation list"), "{err}");
}

/// Starts `blindkd serve` with `revoked`; `Ok(stderr)` if it exits, `Err(())` if it listens.
fn serve_outcome(dir: &Path, revoked: &str) -> Result<String, ()> {
    let mut child = spawn_serve(dir, &["--revoked", revoked, "--ephemeral-state"]);
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("listening") {
            child.kill().unwrap();
            child.wait().unwrap();
            return Err(());
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(!status.success());
    Ok(seen)
}

#[test]
fn the_server_refuses_a_missing_or_edited_list() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ids = hospital(dir, 1);
    // A misspelt path is not "nothing revoked".
    let err =
        serve_outcome(dir, "revoked.lst").expect("the server started without its revocation list");
    assert!(err.contains("revocation list"), "{err}");
    let args = revoke_args(0);
    ok(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        serve_outcome(dir, "revoked.list").is_err(),
        "a valid list must serve"
    );
    // Whoever can write the file deletes the revocation.
    let path = dir.join("revoked.list");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited: String = text
        .lines()
        .filter(|l| !l.contains(ids[0].as_str()))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(edited, text);
    std::fs::write(&path, edited).unwrap();
    let err = serve_outcome(dir, "revoked.list")
        .expect("the server started on a list edited to un-revoke a token");
    assert!(err.contains("signature"), "{err}");
}
