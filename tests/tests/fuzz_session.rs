//! Replays the `session_request` fuzz corpus (`fuzz/corpus/session_request/`), kept crash
//! reproducers (`fuzz/regressions/session_request/`) and local crash artifacts through the very
//! harness the cargo-fuzz target runs (`fuzz/src/session.rs`).
//!
//! Regenerate the seeds (deterministic) with
//! `cargo test -p blindkd-tests --test fuzz_session -- --ignored generate_seed_corpus`.
#![allow(clippy::unwrap_used, unreachable_pub, dead_code)]

#[path = "../../fuzz/src/session.rs"]
mod session;

use std::path::{Path, PathBuf};

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(sub)
        .join("session_request")
}

fn seed(name: &str, mode: u8, rest: &[u8]) {
    std::fs::create_dir_all(dir("corpus")).unwrap();
    let mut v = vec![mode];
    v.extend_from_slice(rest);
    std::fs::write(dir("corpus").join(format!("seed-{name}")), v).unwrap();
}

#[test]
fn replay_session_request() {
    let mut n = 0;
    for sub in ["corpus", "regressions", "artifacts"] {
        let Ok(rd) = std::fs::read_dir(dir(sub)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
        files.sort();
        for p in files {
            let data = std::fs::read(&p).unwrap();
            let r = std::panic::catch_unwind(|| {
                session::session_request(&data);
            });
            assert!(r.is_ok(), "{} panicked", p.display());
            n += 1;
        }
    }
    assert!(n >= 5, "{n} inputs replayed");
}

/// The success path is reachable: the fixture token with a valid proof of possession opens a
/// session (mode 2), so the fuzzer starts from a seed that gets past every check.
#[test]
fn fixture_token_opens_a_session() {
    let f = session::fixture();
    let mode2 = |t: &str| [&[2], t.as_bytes()].concat();
    assert_eq!(session::session_request(&mode2(&f.token)), Some(true));
    // The same with one character changed, and with the seed file: refused, and present.
    let mut bad = f.token.clone().into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
    assert_eq!(
        session::session_request(&[&[2], &bad[..]].concat()),
        Some(false)
    );
    let seeded = std::fs::read(dir("corpus").join("seed-token-valid")).unwrap();
    assert_eq!(seeded, mode2(&f.token), "regenerate the seed corpus");
    // Mode 1 (the valid token with a made-up proof of possession) never opens one.
    assert_eq!(session::session_request(&[1; 65]), Some(false));
}

#[test]
#[ignore = "writes the seed corpus"]
fn generate_seed_corpus() {
    seed("raw-empty", 0, b"");
    seed("raw-empty-object", 0, b"{}");
    seed("raw-not-json", 0, b"token=abc");
    seed(
        "raw-fields",
        0,
        br#"{"token":"BKD1:6BFOXN*TS0BI$ZD","nonce":"00","pop":"zz"}"#,
    );
    seed(
        "raw-wrong-types",
        0,
        br#"{"token":1,"nonce":[],"pop":null}"#,
    );
    seed("raw-deep", 0, &[b'['; 256]);
    seed("pop-empty", 1, b"");
    seed("pop-64-zero", 1, &[0; 64]);
    seed("pop-short", 1, &[1; 10]);
    let f = session::fixture();
    seed("token-valid", 2, f.token.as_bytes());
    seed(
        "raw-valid-token",
        0,
        &serde_json::to_vec(&serde_json::json!({"token": f.token, "nonce": "00", "pop": "00"}))
            .unwrap(),
    );
    seed("token-prefix-only", 2, b"BKD1:");
    seed("token-garbage", 2, b"BKD1:::::~~~");
    seed("token-not-ours", 2, b"HC1:6BFOXN*TS0BI$ZD");
}
