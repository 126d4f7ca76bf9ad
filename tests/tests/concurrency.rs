//! Many doctors at once on one small `mlhe` index: every answer still equals the brute force and
//! nothing fails (the client retries 429 `overloaded` itself); under a deliberately tiny
//! evaluation gate the server answers 429 `overloaded` instead of failing or hanging; a busy query
//! is still only its own session's.
//!
//! No assertion is about speed: time bounds are generous and only turn a hang into a failure.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use blindkd_engine::protocol::{BlockRef, BlockRequest, QueryKind};
use blindkd_keys::token::DeviceKey;
use blindkd_server::ServerLimits;
use blindkd_tests::{entry, error_reply, http, mlhe, start_request, TestServer, HANG};

const CLIENTS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_clients_get_exact_answers() {
    let fx = mlhe();
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let base = server.base.clone();
    let points = Arc::new(fx.query_points(CLIENTS, 77));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let base = base.clone();
        let points = points.clone();
        tasks.push(tokio::spawn(async move {
            let device = DeviceKey::random();
            let t = fx.token_with(&device, |c| c.sub = format!("doctor-{i}"));
            let client = blindkd_client::Client::new(&base).unwrap();
            let s = client.open_session(&t, &device).await?;
            let bundle = fx.full_bundle();
            let q = &points[i];
            let knn = QueryKind::Knn { k: 3 };
            let got = client
                .query(&s, entry(&bundle), knn, q, vec![], i % 4 == 0)
                .await?;
            fx.assert_matches(&got, &fx.truth(knn, q, &[]), &format!("client {i} kNN"));
            let range = QueryKind::Range {
                radius: fx.radius_for(q, 3, &[]),
            };
            let got = client
                .query(&s, entry(&bundle), range, q, vec![], false)
                .await?;
            fx.assert_matches(&got, &fx.truth(range, q, &[]), &format!("client {i} range"));
            Ok::<_, blindkd_client::ClientError>(())
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(600), async {
        let mut errors = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            if let Err(e) = t.await.unwrap() {
                errors.push(format!("client {i}: {e}"));
            }
        }
        errors
    })
    .await
    .expect("the clients did not finish");
    assert!(all.is_empty(), "errors: {all:#?}");
    assert_eq!(
        server.metric("blindkd_sessions_opened_total").await,
        CLIENTS as u64
    );
    assert_eq!(
        server.metric("blindkd_queries_started_total").await,
        2 * CLIENTS as u64
    );
    // The only error replies were back-pressure ones (which the client retried).
    assert_eq!(
        server.metric("blindkd_errors_total").await,
        server.metric("blindkd_overloaded_total").await
    );
    assert_eq!(server.metric("blindkd_evaluations_in_flight").await, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_gate_answers_429_overloaded_not_failures() {
    let fx = mlhe();
    // One token sends the whole burst: lift its own caps so the global gate is what answers.
    let limits = ServerLimits {
        max_concurrent: 1,
        max_waiting: 1,
        queue_wait: Duration::ZERO,
        max_in_flight_per_token: 64,
        max_live_queries_per_token: 64,
        ..ServerLimits::default()
    };
    let server = TestServer::hosting(&[fx], limits).await;
    let device = DeviceKey::random();
    let t = fx.token(&device);
    let s = server.client().open_session(&t, &device).await.unwrap();
    let bundle = fx.full_bundle();
    let q = fx.query_points(1, 5).remove(0);
    let body = Arc::new(start_request(
        entry(&bundle),
        QueryKind::Knn { k: 1 },
        &q,
        vec![],
    ));
    let url = format!("{}/v1/indexes/{}/queries", server.base, fx.index_id);
    let h = http();
    let (mut ok, mut overloaded) = (0, 0);
    // Rounds of simultaneous starts (raw HTTP, no retries) until back-pressure shows; bounded.
    for _round in 0..5 {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (h, url, body, sid) = (h.clone(), url.clone(), body.clone(), s.session.clone());
            tasks.push(tokio::spawn(async move {
                h.post(url)
                    .bearer_auth(sid)
                    .header("content-type", "application/octet-stream")
                    .body(body.to_vec())
                    .send()
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            let resp = tokio::time::timeout(HANG, t).await.expect("hang").unwrap();
            if resp.status() == 200 {
                ok += 1;
            } else {
                let (status, code, _) = error_reply(resp).await;
                assert_eq!((status, code.as_str()), (429, "overloaded"));
                overloaded += 1;
            }
        }
        if overloaded > 0 && ok > 0 {
            break;
        }
    }
    assert!(ok > 0, "some requests got through");
    assert!(overloaded > 0, "back-pressure showed as 429 overloaded");
    assert_eq!(
        server.metric("blindkd_overloaded_total").await,
        overloaded as u64
    );
    assert_eq!(
        server.metric("blindkd_queries_started_total").await,
        ok as u64
    );
    assert_eq!(server.metric("blindkd_evaluations_in_flight").await, 0);
    // Still healthy: the real client (which retries 429) gets an exact answer.
    let kind = QueryKind::Knn { k: 2 };
    let got = server
        .client()
        .query(&s, entry(&bundle), kind, &q, vec![], true)
        .await
        .unwrap();
    fx.assert_matches(&got, &fx.truth(kind, &q, &[]), "after overload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_query_still_belongs_to_its_session_only() {
    let fx = mlhe();
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let client = server.client();
    let owner_dev = DeviceKey::random();
    let owner = client
        .open_session(&fx.token(&owner_dev), &owner_dev)
        .await
        .unwrap();
    let other_dev = DeviceKey::random();
    let other = client
        .open_session(&fx.token(&other_dev), &other_dev)
        .await
        .unwrap();
    let bundle = fx.full_bundle();
    let q = fx.query_points(1, 6).remove(0);
    let h = http();
    let base = format!("{}/v1/indexes/{}/queries", server.base, fx.index_id);
    // Every class's first leaf: a request that keeps the query busy for a while. Each round
    // starts a new query, since a query evaluates each leaf at most once.
    let req = BlockRequest {
        blocks: (0..3)
            .map(|c| BlockRef {
                class_idx: c,
                leaf: 0,
            })
            .collect(),
    };
    let body = postcard::to_allocvec(&req).unwrap();
    let start = || {
        let (h, base, sid) = (h.clone(), base.clone(), owner.session.clone());
        let start = start_request(entry(&bundle), QueryKind::Knn { k: 1 }, &q, vec![]);
        async move {
            let resp = h
                .post(&base)
                .bearer_auth(sid)
                .header("content-type", "application/octet-stream")
                .body(start)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let qid = resp.headers()["bkd-query-id"].to_str().unwrap().to_string();
            format!("{base}/{qid}/blocks")
        }
    };
    let mut intruder_tries = 0;
    for _round in 0..4 {
        let url = start().await;
        let busy = {
            let (h, url, body, sid) = (h.clone(), url.clone(), body.clone(), owner.session.clone());
            tokio::spawn(async move {
                h.post(url)
                    .bearer_auth(sid)
                    .header("content-type", "application/octet-stream")
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        };
        // While the owner's request runs, another session hammers the same query id.
        while !busy.is_finished() {
            let resp = h
                .post(&url)
                .bearer_auth(&other.session)
                .header("content-type", "application/octet-stream")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            intruder_tries += 1;
            assert_ne!(
                resp.status(),
                200,
                "another session continued a busy query it does not own"
            );
            let (status, code, _) = error_reply(resp).await;
            assert_eq!(
                (status, code.as_str()),
                (404, "unknown_query"),
                "another session continued a query it does not own"
            );
        }
        assert_eq!(
            tokio::time::timeout(HANG, busy).await.unwrap().unwrap(),
            200
        );
    }
    assert!(intruder_tries > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_does_not_spend_the_budget() {
    // The budget counts units of work: a k = 1 start costs its pivot blocks (one per class here),
    // so a budget of three starts is three times that.
    let fx = mlhe();
    let per_start: u32 = fx.index.class_names().len().try_into().unwrap();
    const STARTS: u32 = 3;
    let budget = STARTS * per_start;
    let limits = ServerLimits {
        max_concurrent: 1,
        max_waiting: 0,
        queue_wait: Duration::ZERO,
        ..ServerLimits::default()
    };
    let server = TestServer::hosting(&[fx], limits).await;
    let device = DeviceKey::random();
    let t = fx.token_with(&device, |c| c.scope.budget = budget);
    let s = server.client().open_session(&t, &device).await.unwrap();
    let bundle = fx.full_bundle();
    let q = fx.query_points(1, 5).remove(0);
    let body = Arc::new(start_request(
        entry(&bundle),
        QueryKind::Knn { k: 1 },
        &q,
        vec![],
    ));
    let url = format!("{}/v1/indexes/{}/queries", server.base, fx.index_id);
    let h = http();
    let send = |h: reqwest::Client, sid: String| {
        let (url, body) = (url.clone(), body.clone());
        async move {
            let resp = h
                .post(url)
                .bearer_auth(sid)
                .header("content-type", "application/octet-stream")
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            if resp.status() == 200 {
                "ok".to_string()
            } else {
                error_reply(resp).await.1
            }
        }
    };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(send(h.clone(), s.session.clone())));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(tokio::time::timeout(HANG, t).await.expect("hang").unwrap());
    }
    let served = codes.iter().filter(|c| *c == "ok").count() as u32;
    for c in &codes {
        assert!(
            ["ok", "overloaded", "budget_exhausted"].contains(&c.as_str()),
            "{codes:?}"
        );
    }
    assert!(served <= STARTS, "{codes:?}");
    // One at a time now (no contention): the token has exactly STARTS − served starts left.
    let mut more = 0;
    loop {
        match send(h.clone(), s.session.clone()).await.as_str() {
            "ok" => more += 1,
            "budget_exhausted" => break,
            other => panic!("unexpected {other}"),
        }
        assert!(more <= STARTS, "the budget is not enforced");
    }
    assert_eq!(
        served + more,
        STARTS,
        "refused-for-load requests spent the budget: first burst {codes:?}"
    );
}
