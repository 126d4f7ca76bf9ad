//! Crash safety of `blindkd index`: a build killed with SIGKILL while it runs (and while it is
//! writing its temp file) leaves the previous index at the same path byte-identical and loadable,
//! and the owner key intact.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::ok;

/// Temp files of the index writer for `cardio.bkd` (`.cardio.bkd.tmp<pid>`).
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".cardio.bkd.tmp"))
        .collect()
}

enum KillAt {
    /// After a fixed delay (CSV parsing or sealing).
    Delay(Duration),
    /// As soon as the temp file exists and is non-empty (mid-write).
    TempFile,
}

/// Starts a big `index` to `cardio.bkd` and kills it. Returns whether the kill hit the process
/// while it was still running (and, for `TempFile`, while the temp file was still in place).
fn kill_mid_way(dir: &Path, at: &KillAt) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_blindkd"))
        .current_dir(dir)
        .args([
            "index",
            "--key",
            "owner.key",
            "--input",
            "big.csv",
            "--out",
            "cardio.bkd",
            "--scheme",
            "plain",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let tmp = dir.join(format!(".cardio.bkd.tmp{pid}"));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    let mut hit = false;
    loop {
        if child.try_wait().unwrap().is_some() {
            break; // finished before we could kill it
        }
        let fire = match at {
            KillAt::Delay(d) => start.elapsed() >= *d,
            KillAt::TempFile => std::fs::metadata(&tmp).is_ok_and(|m| m.len() > 0),
        };
        if fire || Instant::now() > deadline {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            hit = match at {
                KillAt::Delay(_) => true,
                // The rename had not happened if the temp file is still there.
                KillAt::TempFile => tmp.exists(),
            };
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    hit
}

#[test]
fn killed_index_build_leaves_previous_index_intact() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["keygen", "--out", "owner.key"]);
    ok(
        d,
        &[
            "synth",
            "--n",
            "300",
            "--dims",
            "10",
            "--seed",
            "1",
            "--out",
            "small.csv",
        ],
    );
    ok(
        d,
        &[
            "index",
            "--key",
            "owner.key",
            "--input",
            "small.csv",
            "--out",
            "cardio.bkd",
            "--scheme",
            "plain",
        ],
    );
    let original = std::fs::read(d.join("cardio.bkd")).unwrap();
    let inspect_before = ok(d, &["inspect", "--json", "cardio.bkd"]);
    let key_before = std::fs::read(d.join("owner.key")).unwrap();
    ok(
        d,
        &[
            "synth", "--n", "300000", "--dims", "10", "--seed", "2", "--out", "big.csv",
        ],
    );

    let mut mid_write_hits = 0;
    let plans = [
        KillAt::Delay(Duration::from_millis(150)),
        KillAt::Delay(Duration::from_millis(1200)),
        KillAt::TempFile,
        KillAt::TempFile,
        KillAt::TempFile,
    ];
    for at in &plans {
        let hit = kill_mid_way(d, at);
        if !hit {
            // The build won the race (finished or renamed first): restore and go on.
            std::fs::write(d.join("cardio.bkd"), &original).unwrap();
            std::fs::write(d.join("owner.key"), &key_before).unwrap();
            continue;
        }
        if matches!(at, KillAt::TempFile) {
            mid_write_hits += 1;
        }
        assert_eq!(
            std::fs::read(d.join("cardio.bkd")).unwrap(),
            original,
            "the previous index changed after a killed build"
        );
        assert_eq!(
            ok(d, &["inspect", "--json", "cardio.bkd"]),
            inspect_before,
            "the previous index no longer inspects the same"
        );
        assert_eq!(
            std::fs::read(d.join("owner.key")).unwrap(),
            key_before,
            "owner key changed after a killed build"
        );
        // The server-side loader accepts it too.
        let bytes = std::fs::read(d.join("cardio.bkd")).unwrap();
        blindkd_engine::protocol::open_index_bytes(
            &bytes,
            Path::new("cardio.bkd"),
            &blindkd_engine::index::LoadLimits::default(),
        )
        .unwrap();
        // Stray temp files are harmless: a later build ignores them and succeeds.
        for name in temp_files(d) {
            std::fs::remove_file(d.join(name)).unwrap();
        }
    }
    eprintln!(
        "killed {} builds, {mid_write_hits} of them mid-write, in {:?}",
        plans.len(),
        t0.elapsed()
    );
    assert!(
        mid_write_hits >= 1,
        "never managed to kill the build while it was writing its temp file"
    );
    // Finally a build that completes replaces the index atomically and cleanly.
    ok(
        d,
        &[
            "index",
            "--key",
            "owner.key",
            "--input",
            "small.csv",
            "--out",
            "cardio.bkd",
            "--scheme",
            "plain",
        ],
    );
    assert!(temp_files(d).is_empty());
    ok(d, &["inspect", "cardio.bkd"]);
    assert!(
        t0.elapsed() < Duration::from_secs(170),
        "crash test took {:?}",
        t0.elapsed()
    );
}
