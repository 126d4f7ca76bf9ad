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

/// The bundled Cleveland heart data (303 records, 14 columns, no header).
pub(crate) fn cleveland() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/heart-cleveland.data")
}

/// `blindkd index` of the Cleveland data into `out`, one class `cardiology`, with `key` and the
/// given feature `columns`, plus `extra` flags; returns its standard output.
pub(crate) fn index_cleveland(
    dir: &Path,
    key: &str,
    columns: &str,
    extra: &[&str],
    out: &str,
) -> String {
    let data = cleveland();
    let mut args = vec![
        "index",
        "--key",
        key,
        "--input",
        data.to_str().unwrap(),
        "--no-header",
        "--columns",
        columns,
        "--class",
        "cardiology",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    ok(dir, &args)
}

/// `blindkd token issue` with `key` for `doctor.device.pub`, class `cardiology`, plus `extra`.
pub(crate) fn issue_token(dir: &Path, key: &str, subject: &str, audience: &str, extra: &[&str]) {
    let mut args = vec![
        "token",
        "issue",
        "--key",
        key,
        "--subject",
        subject,
        "--audience",
        audience,
        "--classes",
        "cardiology",
        "--device",
        "doctor.device.pub",
    ];
    args.extend_from_slice(extra);
    ok(dir, &args);
}

/// `blindkd bundle issue` with `key` for `doctor.device.pub`, class `cardiology`, into `out`.
pub(crate) fn issue_bundle(dir: &Path, key: &str, out: &str) {
    ok(
        dir,
        &[
            "bundle",
            "issue",
            "--key",
            key,
            "--device",
            "doctor.device.pub",
            "--classes",
            "cardiology",
            "--out",
            out,
        ],
    );
}

/// `blindkd serve` of `index` on a free loopback port, issuer `hospital.key.pub`, no admin
/// listener.
pub(crate) fn serve_args(index: &str) -> Vec<&str> {
    vec![
        "serve",
        "--index",
        index,
        "--issuer",
        "hospital.key.pub",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
    ]
}

/// Starts [`serve_args`] of `cardio.bkd` in `dir` with `extra` flags; its log goes to the piped
/// stderr.
pub(crate) fn spawn_serve(dir: &Path, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_blindkd"))
        .current_dir(dir)
        .args(serve_args("cardio.bkd"))
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}
