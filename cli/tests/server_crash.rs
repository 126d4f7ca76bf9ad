//! Token state survives a crash of the query server (issue 11, finding G): `blindkd serve` is
//! killed with SIGKILL, once between queries and once while a query runs, and restarted on the
//! same `--state` file. Every charge a client saw acknowledged is still there; nothing is reset.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use blindkd_tests::{error_reply, http, post_session, raw_session};
use common::{index_cleveland, issue_bundle, issue_token, ok, spawn_serve};

/// Starts `blindkd serve` on a free loopback port; returns the child and its base URL once it
/// listens.
fn serve(dir: &Path) -> (Child, String) {
    let mut child = spawn_serve(dir, &["--state", "state.redb"]);
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // `… listening addr=127.0.0.1:PORT listener="api"` (ANSI escapes stripped).
            if line.contains("listening") {
                let plain: String = line.split('\u{1b}').map(strip_sgr).collect();
                if let Some(a) = plain
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                {
                    let _ = tx.send(a.to_string());
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server did not start listening");
    (child, format!("http://{addr}"))
}

/// Drops a leading `[…m` colour sequence.
fn strip_sgr(s: &str) -> &str {
    match s
        .strip_prefix('[')
        .and_then(|r| r.find('m').map(|i| &r[i + 1..]))
    {
        Some(rest) => rest,
        None => s,
    }
}

const VECTOR: &str = "63,1,1,145,233,1,2,150,0,2.3,3,0,6";

fn query_args(base: &str) -> Vec<String> {
    [
        "query",
        "--server",
        base,
        "--token",
        "token.png",
        "--device",
        "doctor.device",
        "--bundle",
        "doctor.bundle",
        "--issuer",
        "hospital.key.pub",
        "--knn",
        "3",
        "--vector",
        VECTOR,
        "--json",
    ]
    .map(str::to_string)
    .to_vec()
}

/// The doctor's token text and device key, as the hospital wrote them for the test.
fn doctor(dir: &Path) -> (String, blindkd_keys::token::DeviceKey) {
    let token = blindkd::read_token(&dir.join("token.png")).unwrap();
    let device = blindkd_keys::token::DeviceKey::from_file_bytes(
        &std::fs::read(dir.join("doctor.device")).unwrap(),
    )
    .unwrap();
    (token, device)
}

/// Runs one query; returns the budget that was left before it.
fn query(dir: &Path, base: &str) -> u64 {
    let args = query_args(base);
    let out = ok(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["budget_left_before"].as_u64().unwrap()
}

#[test]
fn a_killed_server_keeps_every_acknowledged_charge() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(
        dir,
        &["keygen", "--out", "hospital.key", "--issuer", "st-marys"],
    );
    index_cleveland(
        dir,
        "hospital.key",
        "#0,#1,#2,#3,#4,#5,#6,#7,#8,#9,#10,#11,#12",
        &[
            "--payload-columns",
            "#13",
            "--normalize",
            "zscore",
            "--leaf-size",
            "32",
        ],
        "cardio.bkd",
    );
    ok(dir, &["device-key", "--out", "doctor.device"]);
    issue_token(
        dir,
        "hospital.key",
        "doctor-0042",
        "cardio",
        &["--budget", "1000", "--out", "token.png"],
    );
    issue_bundle(dir, "hospital.key", "doctor.bundle");

    // First life: three queries; the same query costs the same each time.
    let (mut server, base) = serve(dir);
    let l1 = query(dir, &base);
    let l2 = query(dir, &base);
    let l3 = query(dir, &base);
    assert_eq!(l1, 1000, "a fresh token starts with its whole budget");
    let cost = l1 - l2;
    assert!(cost > 0 && l2 - l3 == cost, "{l1} {l2} {l3}");
    // A session opened with a nonce and proof that a thief then replays.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (token, device) = doctor(dir);
    let (resp, nonce) = rt.block_on(raw_session(&http(), &base, &token, Some(&device)));
    assert_eq!(resp.status(), 200);
    let pop = hex::encode(device.sign_pop(&hex::decode(&nonce).unwrap(), &token));
    // SIGKILL between queries: nothing in flight.
    server.kill().unwrap();
    server.wait().unwrap();
    let (mut server, base) = serve(dir);
    let replay = rt.block_on(post_session(&http(), &base, &token, &nonce, &pop));
    let (status, code, _) = rt.block_on(error_reply(replay));
    assert_eq!((status, code.as_str()), (401, "replayed_nonce"));
    let l4 = query(dir, &base);
    assert_eq!(
        l4,
        l3 - cost,
        "a restart lost or reset acknowledged charges"
    );

    // SIGKILL while a query runs: its charges may or may not be durable, the earlier ones are.
    let args = query_args(&base);
    let mut running = Command::new(env!("CARGO_BIN_EXE_blindkd"))
        .current_dir(dir)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    server.kill().unwrap();
    server.wait().unwrap();
    let t = Instant::now();
    let _ = running.wait();
    assert!(t.elapsed() < Duration::from_secs(120));
    let (mut server, base) = serve(dir);
    let l5 = query(dir, &base);
    assert!(
        l5 <= l4 - cost && l5 >= l4 - 2 * cost,
        "after a kill mid-query: {l5} units left, expected {}..={}",
        l4 - 2 * cost,
        l4 - cost
    );
    server.kill().unwrap();
    let _ = server.wait();
}
