//! Hostile HTTP over a real loopback socket: slow bodies (slowloris), oversized bodies declared
//! or streamed, and garbage binary bodies on the query and block endpoints. The server answers
//! with its JSON codes within a bounded time, never panics or 5xxs, changes no state, and stays
//! healthy for everyone else.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use blindkd_engine::protocol::{BlockRef, BlockRequest, QueryKind};
use blindkd_keys::token::DeviceKey;
use blindkd_server::ServerLimits;
use blindkd_tests::{
    entry, error_reply, http, mlhe, plain, start_request, Fixture, TestServer, HANG,
};
use rand::{Rng, SeedableRng};
use std::io::{Read, Write};
use std::net::TcpStream;

/// A raw HTTP response read off a socket.
#[derive(Debug)]
struct RawReply {
    status: u16,
    body: String,
}

/// Connects with a generous read timeout (a hang becomes a failure, not a stuck test).
fn connect(server: &TestServer) -> TcpStream {
    let s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(HANG)).unwrap();
    s
}

/// Reads one HTTP/1.1 response (Content-Length framed) off a blocking socket, on a blocking
/// thread; `None` if the server closed first. Panics if nothing arrives within the socket read
/// timeout.
async fn read_reply(mut r: TcpStream) -> Option<RawReply> {
    tokio::task::spawn_blocking(move || read_reply_sync(&mut r))
        .await
        .unwrap()
}

fn read_reply_sync(r: &mut TcpStream) -> Option<RawReply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head.split_whitespace().nth(1)?.parse().ok()?;
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return Some(RawReply { status, body });
            }
        }
        match r.read(&mut chunk) {
            Ok(0) => return None,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("no reply within the socket read timeout")
            }
            Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn code(reply: &RawReply) -> String {
    let v: serde_json::Value = serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", reply.body));
    v["code"].as_str().unwrap().to_string()
}

/// The server still serves a full session and an exact query.
async fn assert_healthy(server: &TestServer, fx: &Fixture) {
    let h = http();
    let r = h
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let device = DeviceKey::random();
    let client = server.client();
    let s = client
        .open_session(&fx.token(&device), &device)
        .await
        .unwrap();
    let q = fx.query_points(1, 41).remove(0);
    let kind = QueryKind::Knn { k: 4 };
    let b = fx.full_bundle();
    let got = tokio::time::timeout(HANG, client.query(&s, entry(&b), kind, &q, vec![], true))
        .await
        .unwrap()
        .unwrap();
    fx.assert_matches(&got, &fx.truth(kind, &q, &[]), "after hostile input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_times_out_and_the_server_stays_healthy() {
    let fx = plain();
    let limits = ServerLimits {
        request_timeout: Duration::from_millis(500),
        ..ServerLimits::default()
    };
    let server = TestServer::hosting(&[fx], limits).await;
    let rd = connect(&server);
    let mut wr = rd.try_clone().unwrap();
    wr.write_all(
        b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 60000\r\n\r\n{",
    )
    .unwrap();
    // Dribble a byte every 50 ms (finishing would take over an hour) until told to stop or the
    // server hangs up.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let dribble = std::thread::spawn(move || {
        for _ in 0..100_000 {
            std::thread::sleep(Duration::from_millis(50));
            if stop2.load(std::sync::atomic::Ordering::Relaxed) || wr.write_all(b" ").is_err() {
                break;
            }
        }
    });
    // Meanwhile another client is served normally.
    let r = http()
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reply = read_reply(rd).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    dribble.join().unwrap();
    if let Some(reply) = reply {
        assert_eq!(reply.status, 408, "{reply:?}");
        assert_eq!(code(&reply), "timeout");
    }
    assert_eq!(server.metric("blindkd_sessions_opened_total").await, 0);
    assert_healthy(&server, fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_after_headers_times_out() {
    let fx = plain();
    let limits = ServerLimits {
        request_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let server = TestServer::hosting(&[fx], limits).await;
    let mut stream = connect(&server);
    stream
        .write_all(
            b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Content-Length: 50\r\n\r\n",
        )
        .unwrap();
    let reply = read_reply(stream).await;
    if let Some(reply) = reply {
        assert_eq!(reply.status, 408, "{reply:?}");
        assert_eq!(code(&reply), "timeout");
    }
    assert_healthy(&server, fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let fx = plain();
    let limits = ServerLimits {
        request_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let server = TestServer::hosting(&[fx], limits).await;
    let rd = TcpStream::connect(server.addr).unwrap();
    rd.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut wr = rd.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let dribble = std::thread::spawn(move || {
        let _ = wr.write_all(b"GET /healthz HTTP/1.1\r\n");
        for i in 0..100_000 {
            std::thread::sleep(Duration::from_millis(200));
            if stop2.load(std::sync::atomic::Ordering::Relaxed)
                || wr
                    .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                    .is_err()
            {
                break;
            }
        }
    });
    // Panics (fails) if nothing happens for a minute.
    let reply = read_reply(rd).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    dribble.join().unwrap();
    if let Some(reply) = reply {
        assert_eq!(reply.status, 408, "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_over_the_socket() {
    let fx = plain();
    let limits = ServerLimits {
        max_small_body: 2048,
        max_query_body: 64 << 10,
        ..ServerLimits::default()
    };
    let server = TestServer::hosting(&[fx], limits).await;
    let device = DeviceKey::random();
    let s = server
        .client()
        .open_session(&fx.token(&device), &device)
        .await
        .unwrap();
    let path = format!("/v1/indexes/{}/queries", fx.index_id);

    // Declared too large: refused from the headers, before any body byte is sent.
    let mut stream = connect(&server);
    stream
        .write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                s.session,
                1u64 << 40
            )
            .as_bytes(),
        )
        .unwrap();
    let reply = read_reply(stream).await.expect("a reply");
    assert_eq!(
        (reply.status, code(&reply).as_str()),
        (413, "body_too_large")
    );

    // Streamed (chunked, no length) past the limit: cut off once it passes.
    let rd = connect(&server);
    let mut wr = rd.try_clone().unwrap();
    wr.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            s.session
        )
        .as_bytes(),
    )
    .unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = format!("1000\r\n{}\r\n", "A".repeat(0x1000));
        // 64 chunks of 4 KiB = 256 KiB, four times the limit; stop once the server hangs up.
        for _ in 0..64 {
            if wr.write_all(chunk.as_bytes()).is_err() {
                return;
            }
        }
        let _ = wr.write_all(b"0\r\n\r\n");
    });
    let reply = read_reply(rd).await.expect("a reply");
    writer.join().unwrap();
    assert_eq!(
        (reply.status, code(&reply).as_str()),
        (413, "body_too_large")
    );

    // Session requests have the small limit.
    let r = http()
        .post(format!("{}/v1/sessions", server.base))
        .header("content-type", "application/json")
        .body(vec![b' '; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(error_reply(r).await.1, "body_too_large");

    assert_eq!(server.metric("blindkd_queries_started_total").await, 0);
    assert_eq!(server.metric("blindkd_sessions_opened_total").await, 1);
    assert_healthy(&server, fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_binary_bodies_are_malformed_and_change_nothing() {
    let fx = mlhe();
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let device = DeviceKey::random();
    let s = server
        .client()
        .open_session(&fx.token(&device), &device)
        .await
        .unwrap();
    let h = http();
    let base = format!("{}/v1/indexes/{}/queries", server.base, fx.index_id);
    let post = |url: String, body: Vec<u8>| {
        h.post(url)
            .bearer_auth(&s.session)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };
    let b = fx.full_bundle();
    let q = fx.query_points(1, 2).remove(0);
    let valid = start_request(entry(&b), QueryKind::Knn { k: 2 }, &q, vec![]);

    // Exactly malformed: empty, an unknown query-kind tag, truncations of a valid request, a
    // valid request with trailing junk cut at the sealed query.
    let mut malformed: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff],
        vec![0x07; 64],
        b"{\"kind\":\"knn\"}".to_vec(),
    ];
    for cut in [1, 2, 8, valid.len() / 2, valid.len() - 1] {
        malformed.push(valid[..cut].to_vec());
    }
    for body in malformed {
        let len = body.len();
        let (status, code, _) = error_reply(post(base.clone(), body).await.unwrap()).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "malformed_body"),
            "{len}-byte body"
        );
    }
    // Seeded random bytes: always a 4xx with a JSON code, never a 5xx.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    for i in 0..24 {
        let len = [0, 1, 3, 17, 100, 1000, 70_000][i % 7];
        let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let (status, code, _) = error_reply(post(base.clone(), body).await.unwrap()).await;
        assert!(
            (400..500).contains(&status),
            "random body #{i}: {status} {code}"
        );
    }
    assert_eq!(server.metric("blindkd_queries_started_total").await, 0);
    assert_eq!(server.metric("blindkd_queries_live").await, 0);
    assert_eq!(
        server.metric("blindkd_pivot_blocks_evaluated_total").await,
        0
    );
    let audit = server.state.audit_lines();
    assert!(
        !audit.iter().any(|l| l.contains("\"query_started\"")),
        "{audit:#?}"
    );

    // A live query: garbage block requests are refused and leave it usable.
    let resp = post(base.clone(), valid.clone()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let qid = resp.headers()["bkd-query-id"].to_str().unwrap().to_string();
    let blocks_url = format!("{base}/{qid}/blocks");
    let enc = |blocks: Vec<BlockRef>| postcard::to_allocvec(&BlockRequest { blocks }).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "malformed_body"),
        (vec![0xff; 9], "malformed_body"),
        (valid[..2000].to_vec(), "malformed_body"),
        (enc(vec![]), "malformed_body"),
        (
            enc(vec![BlockRef {
                class_idx: u32::MAX,
                leaf: 0,
            }]),
            "forbidden_class",
        ),
        (
            enc(vec![BlockRef {
                class_idx: 0,
                leaf: u32::MAX,
            }]),
            "unknown_block",
        ),
    ];
    for (body, want) in cases {
        let (_, code, _) = error_reply(post(blocks_url.clone(), body).await.unwrap()).await;
        assert_eq!(code, want);
    }
    for i in 0..12 {
        let len = [1, 2, 5, 33, 500, 4000][i % 6];
        let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let (status, code, _) = error_reply(post(blocks_url.clone(), body).await.unwrap()).await;
        assert!(
            (400..500).contains(&status),
            "random block body #{i}: {status} {code}"
        );
    }
    assert_eq!(
        server.metric("blindkd_leaf_blocks_evaluated_total").await,
        0
    );
    // The query still works after all that.
    let ok = post(
        blocks_url.clone(),
        enc(vec![BlockRef {
            class_idx: 0,
            leaf: 0,
        }]),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        server.metric("blindkd_leaf_blocks_evaluated_total").await,
        1
    );
    assert_eq!(server.metric("blindkd_queries_started_total").await, 1);
    assert_healthy(&server, fx).await;
}
