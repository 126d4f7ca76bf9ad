//! Running the `blindkd` binary from the CLI's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `blindkd ARGS` in `dir`.
pub(crate) fn blindkd(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blindkd"))
        .current_dir(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Runs `blindkd ARGS` in `dir`, asserts success and returns its standard output.
pub(crate) fn ok(dir: &Path, args: &[&str]) -> String {
    let out = blindkd(dir, args);
    assert!(
        out.status.success(),
        "blindkd {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
