//! Issue 17, C1: a small index file can ask for a lot of server memory (every mlhe block becomes
//! (d+1) NTT polynomials however few rows it holds). `index` and `inspect` show the projection,
//! and a server refuses an index above its `--max-index-memory` before allocating for it.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

mod common;
use common::{blindkd, ok, serve_args};

#[test]
fn a_tiny_file_that_needs_huge_memory_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(dir, &["keygen", "--out", "hospital.key"]);
    let out = common::index_cleveland(
        dir,
        "hospital.key",
        "#0,#3,#4,#7",
        &["--leaf-size", "1", "--json"],
        "tiny.bkd",
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let file = report["file_bytes"].as_u64().unwrap();
    let memory = report["server_memory_bytes"].as_u64().unwrap();
    // 303 one-row leaves (plus pivots), each 5 polynomials × 8192 coefficients × 3 primes × 8 B.
    assert!(memory >= 303 * 5 * 8192 * 3 * 8, "{memory}");
    assert!(memory > 100 * file, "file {file} B, memory {memory} B");
    let shown = ok(dir, &["inspect", "tiny.bkd"]);
    assert!(shown.contains("server memory"), "{shown}");

    let mut args = serve_args("tiny.bkd");
    args.extend(["--ephemeral-state", "--max-index-memory", "64MiB"]);
    let o = blindkd(dir, &args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the server loaded it: {err}");
    assert!(
        err.contains("server memory") && err.contains("64 MiB"),
        "{err}"
    );
}
