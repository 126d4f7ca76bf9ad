//! Finding E of issue 11: silent connections must not exhaust the server's file descriptors or lock
//! out a doctor. 20 000 idle sockets (or fewer where the descriptor limit is lower) are opened to
//! a real server on 127.0.0.1: half by this process, half by a copy of this test binary re-run as a
//! helper (one process cannot hold 20 000 sockets under a 20 000-descriptor limit). Then `/healthz`
//! and an exact query must still work. This file has its own test binary because it uses up
//! descriptors for the whole process.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use blindkd_engine::protocol::QueryKind;
use blindkd_keys::token::DeviceKey;
use blindkd_server::ServerLimits;
use blindkd_tests::{entry, http, plain, TestServer};

/// Environment variable that turns [`idle_socket_holder`] into a helper holding sockets open.
const HOLD_ADDR: &str = "BLINDKD_TEST_HOLD_ADDR";
const HOLD_COUNT: &str = "BLINDKD_TEST_HOLD_COUNT";

/// The soft descriptor limit, as the shell reports it (no `unsafe` getrlimit here).
fn fd_limit() -> usize {
    let out = Command::new("sh")
        .args(["-c", "ulimit -n"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(1024)
}

/// Opens up to `n` silent connections to `addr`.
fn open_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => v.push(s),
            Err(_) => break,
        }
    }
    v
}

/// Not a test of its own: run by [`idle_connections_do_not_stop_health_or_queries`] as a helper
/// process that holds idle sockets until its standard input closes.
#[test]
fn idle_socket_holder() {
    let (Ok(addr), Ok(n)) = (std::env::var(HOLD_ADDR), std::env::var(HOLD_COUNT)) else {
        return;
    };
    let held = open_idle(addr.parse().unwrap(), n.parse().unwrap());
    println!("held {}", held.len());
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_stop_health_or_queries() {
    let fx = plain();
    let limits = ServerLimits::default();
    let max_connections = limits.max_connections;
    let server = TestServer::hosting(&[fx], limits).await;
    let addr = server.addr;
    // Each process keeps room for the server's own sockets and the test's.
    let per_process = (fd_limit().saturating_sub(max_connections + 512)).min(10_000);
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "idle_socket_holder",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD_ADDR, addr.to_string())
        .env(HOLD_COUNT, per_process.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mine = tokio::task::spawn_blocking(move || open_idle(addr, per_process))
        .await
        .unwrap();
    eprintln!("this process holds {} idle sockets", mine.len());
    let theirs = tokio::task::spawn_blocking({
        let out = helper.stdout.take().unwrap();
        move || {
            let mut lines = BufReader::new(out).lines();
            // libtest prints "test idle_socket_holder ... " before the helper's own line.
            let n = lines.by_ref().map_while(Result::ok).find_map(|l| {
                let n = l.split("held ").nth(1)?;
                n.trim().parse::<usize>().ok()
            });
            // Keep draining, so the helper's last lines do not hit a closed pipe.
            std::thread::spawn(move || lines.for_each(drop));
            n.unwrap_or(0)
        }
    })
    .await
    .unwrap();
    let idle = mine.len() + theirs;
    eprintln!(
        "{idle} idle connections open (descriptor limit {})",
        fd_limit()
    );
    assert!(
        idle >= 2 * per_process * 9 / 10,
        "opened only {idle} of {} idle sockets",
        2 * per_process
    );
    let h = tokio::time::timeout(
        Duration::from_secs(30),
        http().get(format!("{}/healthz", server.base)).send(),
    )
    .await
    .expect("healthz hung behind idle connections")
    .expect("healthz failed behind idle connections");
    assert_eq!(h.status(), 200);
    let device = DeviceKey::random();
    let client = server.client();
    let s = tokio::time::timeout(
        Duration::from_secs(30),
        client.open_session(&fx.token(&device), &device),
    )
    .await
    .expect("session hung")
    .unwrap();
    let q = fx.query_points(1, 4).remove(0);
    let b = fx.full_bundle();
    let kind = QueryKind::Knn { k: 3 };
    let got = tokio::time::timeout(
        Duration::from_secs(60),
        client.query(&s, entry(&b), kind, &q, vec![], false),
    )
    .await
    .expect("query hung")
    .unwrap();
    fx.assert_matches(&got, &fx.truth(kind, &q, &[]), "beside idle sockets");
    assert!(
        server.metric("blindkd_connections_open").await <= max_connections as u64,
        "the server holds more connections than its cap"
    );
    drop(helper.stdin.take());
    let _ = helper.wait();
    drop(mine);
}
