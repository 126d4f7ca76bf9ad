//! Hostile clients (issue 11): each finding of the review, reproduced through the real server on
//! 127.0.0.1 with a raw HTTP client where the product's client would refuse to misbehave.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use blindkd_engine::protocol::{
    BlockRef, BlockReply, BlockRequest, PayloadReply, PayloadRequest, QueryKind, StartReply,
};
use blindkd_keys::token::DeviceKey;
use blindkd_server::ServerLimits;
use blindkd_tests::{
    entry, error_reply, http, plain, raw_session, start_request, Fixture, TestServer, HANG,
};

const OCTET: &str = "application/octet-stream";

/// Opens a session for `token` by hand; returns the session id.
async fn session(server: &TestServer, token: &str, device: &DeviceKey) -> String {
    let (resp, _) = raw_session(&http(), &server.base, token, Some(device)).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    v["session"].as_str().unwrap().to_string()
}

/// Posts a binary body to `/v1/indexes/{index}/queries{suffix}`: the reply, or `(status, code)`.
async fn post_bin(
    server: &TestServer,
    fx: &Fixture,
    sid: &str,
    suffix: &str,
    body: Vec<u8>,
) -> Result<reqwest::Response, (u16, String)> {
    let resp = http()
        .post(format!(
            "{}/v1/indexes/{}/queries{suffix}",
            server.base, fx.index_id
        ))
        .bearer_auth(sid)
        .header("content-type", OCTET)
        .body(body)
        .send()
        .await
        .unwrap();
    if resp.status() != 200 {
        let (st, code, _) = error_reply(resp).await;
        return Err((st, code));
    }
    Ok(resp)
}

/// Posts a round-1 request; `Ok((query id, reply))` or `Err((status, code))`.
async fn raw_start(
    server: &TestServer,
    fx: &Fixture,
    sid: &str,
    body: Vec<u8>,
) -> Result<(String, StartReply), (u16, String)> {
    let resp = post_bin(server, fx, sid, "", body).await?;
    let qid = resp.headers()["bkd-query-id"].to_str().unwrap().to_string();
    let bytes = resp.bytes().await.unwrap();
    Ok((qid, postcard::from_bytes(&bytes).unwrap()))
}

/// Posts a binary body to a live query's sub-route; `Ok(decoded reply)` or `Err((status, code))`.
async fn post_query<T: serde::de::DeserializeOwned>(
    server: &TestServer,
    fx: &Fixture,
    sid: &str,
    route: &str,
    body: Vec<u8>,
) -> Result<T, (u16, String)> {
    let resp = post_bin(server, fx, sid, &format!("/{route}"), body).await?;
    Ok(postcard::from_bytes(&resp.bytes().await.unwrap()).unwrap())
}

/// Posts a block request.
async fn raw_blocks(
    server: &TestServer,
    fx: &Fixture,
    sid: &str,
    qid: &str,
    blocks: Vec<BlockRef>,
) -> Result<BlockReply, (u16, String)> {
    let body = postcard::to_allocvec(&BlockRequest { blocks }).unwrap();
    post_query(server, fx, sid, &format!("{qid}/blocks"), body).await
}

/// Fetches payloads through the live query `qid` (one batch request).
async fn raw_payloads(
    server: &TestServer,
    fx: &Fixture,
    sid: &str,
    qid: &str,
    records: Vec<u64>,
) -> Result<PayloadReply, (u16, String)> {
    let body = postcard::to_allocvec(&PayloadRequest { records }).unwrap();
    post_query(server, fx, sid, &format!("{qid}/payloads"), body).await
}

/// A server, a session (whose token allows `max_blocks` leaves per query, or the fixture's
/// default), and a live k = 1 query on `cardiology`: `(server, session, query id, round-1 reply)`.
async fn cardiology_knn1(
    fx: &'static Fixture,
    max_blocks: Option<u32>,
) -> (TestServer, String, String, StartReply) {
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let device = DeviceKey::random();
    let token = match max_blocks {
        Some(m) => bounded_token(fx, &device, m),
        None => fx.token(&device),
    };
    let sid = session(&server, &token, &device).await;
    let (qid, reply) = raw_start(&server, fx, &sid, knn1(fx, vec!["cardiology".into()]))
        .await
        .unwrap();
    (server, sid, qid, reply)
}

/// A token for `device` that lets one query evaluate at most `max_blocks` leaves.
fn bounded_token(fx: &Fixture, device: &DeviceKey, max_blocks: u32) -> String {
    fx.token_with(device, |c| c.scope.max_blocks = max_blocks)
}

fn knn1(fx: &Fixture, classes: Vec<String>) -> Vec<u8> {
    let b = fx.full_bundle();
    let q = fx.query_points(1, 7).remove(0);
    start_request(entry(&b), QueryKind::Knn { k: 1 }, &q, classes)
}

/// Finding A: a query naming its class 2 000 times is evaluated once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_class_is_evaluated_once() {
    let fx = plain();
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let device = DeviceKey::random();
    let sid = session(&server, &fx.token(&device), &device).await;
    let body = knn1(fx, vec!["cardiology".to_string(); 2000]);
    match raw_start(&server, fx, &sid, body).await {
        Ok((_, reply)) => assert_eq!(
            reply.classes.len(),
            1,
            "the class was evaluated {} times",
            reply.classes.len()
        ),
        Err((_, code)) => assert_eq!(code, "duplicate_class"),
    }
}

/// Finding B: the same leaf repeated in one request, or asked for again, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_is_evaluated_at_most_once_per_query() {
    let fx = plain();
    let (server, sid, qid, reply) = cardiology_knn1(fx, None).await;
    let leaf = BlockRef {
        class_idx: reply.classes[0].class_idx,
        leaf: 0,
    };
    let r = raw_blocks(&server, fx, &sid, &qid, vec![leaf; 8]).await;
    assert_eq!(
        r.map(|b| b.blocks.len()).err(),
        Some((400, "repeated_block".to_string()))
    );
    raw_blocks(&server, fx, &sid, &qid, vec![leaf])
        .await
        .unwrap();
    let again = raw_blocks(&server, fx, &sid, &qid, vec![leaf]).await;
    assert_eq!(
        again.map(|b| b.blocks.len()).err(),
        Some((400, "repeated_block".to_string()))
    );
}

/// Findings B + C: a k = 1 token tries to copy its class, every leaf and every payload, and is
/// stopped at its bounds, with the refusals audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_k1_token_cannot_copy_its_class() {
    let fx = plain();
    let (server, sid, qid, reply) = cardiology_knn1(fx, Some(4)).await;
    let c = &reply.classes[0];
    let leaves = c.shape.leaves.len() as u32;
    assert!(leaves > 4, "the fixture class has {leaves} leaves");
    let mut evaluated = 0;
    let mut ids = Vec::new();
    for leaf in 0..leaves {
        match raw_blocks(
            &server,
            fx,
            &sid,
            &qid,
            vec![BlockRef {
                class_idx: c.class_idx,
                leaf,
            }],
        )
        .await
        {
            Ok(r) => {
                evaluated += 1;
                ids.extend(r.blocks[0].record_ids.iter().copied());
            }
            Err((st, code)) => assert_eq!((st, code.as_str()), (403, "limit_blocks")),
        }
    }
    assert_eq!(
        evaluated, 4,
        "a k = 1 query evaluated {evaluated} of {leaves} leaves"
    );
    let mut served = 0;
    for &rid in fx.ids_of_class("cardiology").iter() {
        match raw_payloads(&server, fx, &sid, &qid, vec![rid]).await {
            Ok(r) => served += r.payloads.len(),
            Err((_, code)) => assert!(
                ["limit_payloads", "unreachable_record"].contains(&code.as_str()),
                "{code}"
            ),
        }
    }
    assert_eq!(served, 1, "a k = 1 query was served {served} payloads");
    // Asking for all of them at once is refused whole.
    let e = raw_payloads(&server, fx, &sid, &qid, ids).await.err();
    assert_eq!(e, Some((403, "limit_payloads".to_string())));
    let audit = server.state.audit_lines();
    for reason in ["limit_blocks", "limit_payloads"] {
        assert!(
            audit
                .iter()
                .any(|l| l.contains("refused") && l.contains(reason)),
            "no audited refusal for {reason}"
        );
    }
}

/// The bound must not refuse what it allows: a kNN query whose exact best-first search needs L
/// leaves (one leaf per round) is answered exactly under a token with `max_blocks` = L, although
/// the client's doubling batches (4, 8, …) would overshoot L; with one leaf (k = 20 > 16 records
/// per leaf) it is refused with `limit_blocks`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knn_query_that_fits_its_bound_is_answered() {
    let fx = plain();
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let client = server.client();
    let b = fx.full_bundle();
    let kind = QueryKind::Knn { k: 20 };
    let mut checked = 0;
    for q in fx.query_points(12, 31) {
        let device = DeviceKey::random();
        let needed = {
            use blindkd_keys::protocol::{new_query_client, run_in_process, BatchPolicy, Limits};
            let one_by_one = BatchPolicy {
                knn_first: 1,
                max_per_request: 1,
                max_blocks: u32::MAX,
                direct: false,
            };
            let qe = fx.schema.encode(&q).unwrap();
            let mut c = new_query_client(entry(&b), kind, &qe, vec![], one_by_one).unwrap();
            run_in_process(&fx.index, &open_access(), &Limits::default(), c.as_mut()).unwrap();
            c.stats().leaf_blocks
        };
        if [4, 12, 28].contains(&needed) {
            continue; // doubling batches land exactly on the bound: nothing to overshoot
        }
        checked += 1;
        let s = client
            .open_session(&bounded_token(fx, &device, needed), &device)
            .await
            .unwrap();
        let got = client
            .query(&s, entry(&b), kind, &q, vec![], true)
            .await
            .unwrap_or_else(|e| panic!("a query needing {needed} leaves, bound {needed}: {e}"));
        fx.assert_matches(&got, &fx.truth(kind, &q, &[]), "at its bound");
        let s = client
            .open_session(&bounded_token(fx, &device, 1), &device)
            .await
            .unwrap();
        let e = client
            .query(&s, entry(&b), kind, &q, vec![], false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("limit_blocks"), "{e}");
    }
    assert!(checked > 0, "no query needed more than one batch");
}

/// Finding C: a payload of a record outside the blocks the query evaluated is refused, and the
/// session-wide payload route is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_only_for_records_the_query_evaluated() {
    let fx = plain();
    let (server, sid, qid, reply) = cardiology_knn1(fx, None).await;
    let c = &reply.classes[0];
    let r = raw_blocks(
        &server,
        fx,
        &sid,
        &qid,
        vec![BlockRef {
            class_idx: c.class_idx,
            leaf: 0,
        }],
    )
    .await
    .unwrap();
    let outside = fx
        .ids_of_class("cardiology")
        .into_iter()
        .find(|id| !r.blocks[0].record_ids.contains(id))
        .unwrap();
    let got = raw_payloads(&server, fx, &sid, &qid, vec![outside]).await;
    assert_eq!(got.err(), Some((404, "unreachable_record".to_string())));
    let inside = r.blocks[0].record_ids[0];
    let got = raw_payloads(&server, fx, &sid, &qid, vec![inside])
        .await
        .unwrap();
    assert_eq!(got.payloads.len(), 1);
    let old = http()
        .get(format!(
            "{}/v1/indexes/{}/records/{outside:016x}/payload",
            server.base, fx.index_id
        ))
        .bearer_auth(&sid)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 404);
}

/// Finding H: sealed payload lengths fall into buckets; records whose plaintexts differ in
/// length (class names of 8, 10 and 13 letters, ids of 1–3 digits) look the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_payload_lengths_are_padded() {
    let fx = plain();
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let device = DeviceKey::random();
    let sid = session(&server, &fx.token(&device), &device).await;
    let b = fx.full_bundle();
    let q = fx.query_points(1, 7).remove(0);
    let body = start_request(entry(&b), QueryKind::Range { radius: 1.0 }, &q, vec![]);
    let (qid, reply) = raw_start(&server, fx, &sid, body).await.unwrap();
    let leaves: Vec<BlockRef> = reply
        .classes
        .iter()
        .map(|c| BlockRef {
            class_idx: c.class_idx,
            leaf: 0,
        })
        .collect();
    let r = raw_blocks(&server, fx, &sid, &qid, leaves).await.unwrap();
    let ids: Vec<u64> = r
        .blocks
        .iter()
        .flat_map(|b| b.record_ids.iter().take(3).copied())
        .collect();
    let got = raw_payloads(&server, fx, &sid, &qid, ids).await.unwrap();
    let lens: std::collections::BTreeSet<usize> =
        got.payloads.iter().map(|p| p.sealed.len()).collect();
    assert_eq!(got.payloads.len(), 9);
    assert_eq!(lens.len(), 1, "sealed payload lengths {lens:?}");
}

/// Finding D: a flood of unauthenticated nonce requests does not lock a doctor out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_flood_does_not_lock_out_a_doctor() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let fx = plain();
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    const FLOOD: u64 = 200_000;
    const WORKERS: u64 = 8;
    let mut flood = Vec::new();
    for _ in 0..WORKERS {
        let (base, sent, refused) = (server.base.clone(), sent.clone(), refused.clone());
        flood.push(tokio::spawn(async move {
            let h = http();
            for _ in 0..FLOOD / WORKERS {
                let r = h.post(format!("{base}/v1/nonces")).send().await.unwrap();
                if r.status() != 200 {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                let _ = r.bytes().await;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The doctor arrives once the flood has sent more nonce requests than the old table held.
    let t = std::time::Instant::now();
    while sent.load(Ordering::Relaxed) < 110_000 && t.elapsed() < HANG {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let device = DeviceKey::random();
    let client = server.client();
    let s = tokio::time::timeout(
        Duration::from_secs(60),
        client.open_session(&fx.token(&device), &device),
    )
    .await
    .expect("the doctor's session did not open within 60 s")
    .expect("the doctor's session was refused");
    let q = fx.query_points(1, 5).remove(0);
    let b = fx.full_bundle();
    let kind = QueryKind::Knn { k: 3 };
    let got = client
        .query(&s, entry(&b), kind, &q, vec![], false)
        .await
        .unwrap();
    fx.assert_matches(&got, &fx.truth(kind, &q, &[]), "during a nonce flood");
    for f in flood {
        f.await.unwrap();
    }
    assert_eq!(refused.load(Ordering::Relaxed), 0, "nonce requests refused");
}

/// Finding F: one token holding every live-query slot does not starve another doctor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_cannot_hold_every_live_query() {
    let fx = plain();
    let limits = ServerLimits::default();
    let server = TestServer::hosting(&[fx], limits.clone()).await;
    let hog = DeviceKey::random();
    let hog_token = fx.token(&hog);
    let mut started = 0;
    'outer: for _ in 0..limits.max_sessions_per_token {
        let sid = session(&server, &hog_token, &hog).await;
        for _ in 0..limits.max_live_queries {
            match raw_start(&server, fx, &sid, knn1(fx, vec![])).await {
                Ok(_) => started += 1,
                Err(_) => continue 'outer,
            }
            if started >= limits.max_live_queries {
                break 'outer;
            }
        }
    }
    let device = DeviceKey::random();
    let client = server.client();
    let s = client
        .open_session(&fx.token(&device), &device)
        .await
        .unwrap();
    let q = fx.query_points(1, 9).remove(0);
    let b = fx.full_bundle();
    let kind = QueryKind::Knn { k: 2 };
    let got = tokio::time::timeout(
        Duration::from_secs(60),
        client.query(&s, entry(&b), kind, &q, vec![], false),
    )
    .await
    .expect("the second doctor waited over 60 s")
    .unwrap_or_else(|e| {
        panic!("the second doctor was refused after the hog started {started} queries: {e}")
    });
    fx.assert_matches(&got, &fx.truth(kind, &q, &[]), "beside a hog");
}

/// Finding G: budget use and consumed nonces live past a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_and_used_nonces_survive_a_restart() {
    use blindkd_server::store::{RedbStore, TokenStore};
    use std::sync::Arc;
    let fx = plain();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let device = DeviceKey::random();
    let token = fx.token_with(&device, |c| c.scope.budget = 40);
    let q = fx.query_points(1, 3).remove(0);
    let b = fx.full_bundle();
    let kind = QueryKind::Knn { k: 1 };
    let start = |store: Arc<dyn TokenStore>| {
        let state = blindkd_tests::state_with_store(&[fx], ServerLimits::default(), store);
        TestServer::start(state)
    };
    // First life: spend part of the budget, keep one used (nonce, proof).
    let server = start(Arc::new(RedbStore::open(&path).unwrap())).await;
    let h = http();
    let (resp, nonce) = raw_session(&h, &server.base, &token, Some(&device)).await;
    assert_eq!(resp.status(), 200);
    let first: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(first["budget_left"], 40);
    let pop = hex::encode(device.sign_pop(&hex::decode(&nonce).unwrap(), &token));
    let client = server.client();
    let s = client.open_session(&token, &device).await.unwrap();
    client
        .query(&s, entry(&b), kind, &q, vec![], true)
        .await
        .unwrap();
    let (resp, _) = raw_session(&h, &server.base, &token, Some(&device)).await;
    let left: u64 = resp.json::<serde_json::Value>().await.unwrap()["budget_left"]
        .as_u64()
        .unwrap();
    assert!(left < 40, "the query was not charged");
    server.shutdown().await;
    // Second life, same state file.
    let server = start(Arc::new(RedbStore::open(&path).unwrap())).await;
    let (resp, _) = raw_session(&h, &server.base, &token, Some(&device)).await;
    let after: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        after["budget_left"].as_u64(),
        Some(left),
        "the budget was reset"
    );
    let replay = blindkd_tests::post_session(&h, &server.base, &token, &nonce, &pop).await;
    let (st, code, _) = error_reply(replay).await;
    assert_eq!((st, code.as_str()), (401, "replayed_nonce"));
    // Spend the rest: the store refuses past the budget, across the restart.
    let client = server.client();
    let s = client.open_session(&token, &device).await.unwrap();
    let mut refused = None;
    for _ in 0..40 {
        if let Err(e) = client.query(&s, entry(&b), kind, &q, vec![], true).await {
            refused = Some(e.code().unwrap_or("").to_string());
            break;
        }
    }
    assert_eq!(refused.as_deref(), Some("budget_exhausted"));
}

/// Finding L: `/metrics` is not on the public listener and `/healthz` reveals nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_listener_has_no_metrics_and_a_bare_health_check() {
    let fx = plain();
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let r = http()
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "metrics on the public listener");
    let v = blindkd_tests::get_json(&server.base, "/healthz").await;
    assert_eq!(v, serde_json::json!({ "status": "ok" }));
    // The admin listener has them.
    assert!(server.metric("blindkd_sessions_opened_total").await == 0);
}

/// Finding L: refused sessions are rate-limited in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_rate_limited_in_the_audit_log() {
    let fx = plain();
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let h = http();
    let device = DeviceKey::random();
    let forged = fx.token(&device);
    for _ in 0..2000 {
        let r = blindkd_tests::post_session(&h, &server.base, &forged, "00", "").await;
        assert_ne!(r.status(), 200);
    }
    let refusals = server
        .state
        .audit_lines()
        .iter()
        .filter(|l| l.contains("session_refused"))
        .count();
    assert!(
        refusals <= 200,
        "{refusals} refusal lines for 2000 attempts"
    );
}

/// Finding I: the client's leaf requests within a round are not in lower-bound order: the same
/// query asks for the same leaves in different orders.
#[test]
fn leaf_requests_are_shuffled_within_a_round() {
    use blindkd_keys::protocol::{new_query_client, BatchPolicy, Step, Unmetered};
    let fx = plain();
    let b = fx.full_bundle();
    let q = fx.query_points(1, 2).remove(0);
    let radius = fx.radius_for(&q, 250, &[]);
    let access = open_access();
    let orders: Vec<Vec<BlockRef>> = (0..4)
        .map(|_| {
            let qe = fx.schema.encode(&q).unwrap();
            let mut c = new_query_client(
                entry(&b),
                QueryKind::Range { radius },
                &qe,
                vec![],
                BatchPolicy::default(),
            )
            .unwrap();
            let started = fx
                .index
                .clone()
                .start(
                    &access,
                    &c.start_request(&blindkd_engine::crypto::FIXED_PK_SEED)
                        .unwrap(),
                    &mut Unmetered,
                )
                .unwrap();
            let Step::Blocks(req) = c.on_start(&started.reply).unwrap() else {
                panic!("no leaf round")
            };
            let r: BlockRequest = postcard::from_bytes(&req).unwrap();
            assert!(r.blocks.len() > 8, "{} leaves", r.blocks.len());
            r.blocks
        })
        .collect();
    assert!(
        orders.iter().any(|o| o != &orders[0]),
        "four runs asked for the leaves in the same order"
    );
}

/// An access scope allowing everything on the fixture (in-process runs).
fn open_access() -> blindkd_engine::protocol::Access {
    blindkd_engine::protocol::Access {
        classes: blindkd_tests::CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        knn: true,
        range: true,
        max_k: 50,
        max_radius: 1e9,
        max_blocks: u32::MAX,
        max_results: u32::MAX,
        pk_seed: blindkd_engine::crypto::FIXED_PK_SEED,
    }
}

/// Item 3 (unauthenticated request rates): an address that keeps sending refused session
/// requests (each costs the server a token decode and a signature check) is slowed down with 429
/// `overloaded`, and a doctor's client, which retries `overloaded`, still gets in afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_session_requests_are_rate_limited_per_address() {
    let fx = plain();
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let h = http();
    let device = DeviceKey::random();
    let token = fx.token(&device);
    let mut throttled = 0;
    for _ in 0..400 {
        let nonce = blindkd_tests::fresh_nonce(&h, &server.base).await;
        // A proof by the wrong key: a signature check, then a refusal.
        let pop = hex::encode(DeviceKey::random().sign_pop(&hex::decode(&nonce).unwrap(), &token));
        let r = blindkd_tests::post_session(&h, &server.base, &token, &nonce, &pop).await;
        let (st, code, _) = error_reply(r).await;
        match (st, code.as_str()) {
            (401, "bad_pop") => {}
            (429, "overloaded") => throttled += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        throttled > 100,
        "only {throttled} of 400 refused requests were throttled"
    );
    let s = tokio::time::timeout(
        Duration::from_secs(60),
        server.client().open_session(&token, &device),
    )
    .await
    .expect("the doctor waited over 60 s")
    .expect("the doctor was refused");
    assert!(!s.session.is_empty());
}
