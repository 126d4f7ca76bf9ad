//! End to end over a real loopback socket with the real `Client`: answers equal the plaintext
//! brute force (ids, squared distances, payloads) for `plain` and `mlhe`; every refusal returns
//! its stable code; a token for one class never yields another class's records; the audit log
//! holds no feature value, distance or payload.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use blindkd_client::{Client, QueryOutcome, Session};
use blindkd_engine::protocol::{
    BlockRef, BlockRequest, Limits, PayloadRequest, QueryKind, StartRequest,
};
use blindkd_keys::token::{self, DeviceKey, IssuerKey};
use blindkd_server::ServerLimits;
use blindkd_tests::{
    code_of, entry, error_reply, fresh_nonce, http, mlhe, plain, post_session, raw_session,
    start_request, Fixture, TestServer, CLASSES, HANG, NOTE_PREFIX,
};

/// Opens a session for a fresh device with the fixture's default claims edited by `edit`.
async fn open(
    server: &TestServer,
    fx: &Fixture,
    edit: impl FnOnce(&mut token::Claims),
) -> (Client, Session) {
    let device = DeviceKey::random();
    let t = fx.token_with(&device, edit);
    let client = server.client();
    let s = client.open_session(&t, &device).await.unwrap();
    (client, s)
}

/// Runs a query with the fixture's full bundle.
async fn query(
    client: &Client,
    s: &Session,
    fx: &Fixture,
    kind: QueryKind,
    q: &[f64],
    classes: &[&str],
    payloads: bool,
) -> Result<QueryOutcome, blindkd_client::ClientError> {
    let bundle = fx.full_bundle();
    let classes = classes.iter().map(|c| c.to_string()).collect();
    tokio::time::timeout(
        HANG,
        client.query(s, entry(&bundle), kind, q, classes, payloads),
    )
    .await
    .expect("query hung")
}

/// The refusal code of a session attempt.
async fn session_refusal(server: &TestServer, token_text: &str, device: &DeviceKey) -> String {
    let e = server
        .client()
        .open_session(token_text, device)
        .await
        .expect_err("the session must be refused");
    code_of(&e).to_string()
}

async fn check_oracle(fx: &Fixture, server: &TestServer, points: usize, seed: u64) {
    let (client, s) = open(server, fx, |_| {}).await;
    assert_eq!(s.index_id, fx.index_id);
    for (i, q) in fx.query_points(points, seed).iter().enumerate() {
        let payloads = i % 2 == 0;
        for k in [1, 7] {
            let kind = QueryKind::Knn { k };
            let got = query(&client, &s, fx, kind, q, &[], payloads)
                .await
                .unwrap();
            fx.assert_matches(&got, &fx.truth(kind, q, &[]), &format!("kNN k={k} q#{i}"));
            assert_eq!(
                got.results.iter().all(|r| r.payload.is_some()),
                payloads,
                "payloads fetched iff asked"
            );
        }
        let kind = QueryKind::Range {
            radius: fx.radius_for(q, 6, &[]),
        };
        let got = query(&client, &s, fx, kind, q, &[], payloads)
            .await
            .unwrap();
        let want = fx.truth(kind, q, &[]);
        assert!(want.len() >= 6, "the radius catches the 6 nearest");
        fx.assert_matches(&got, &want, &format!("range q#{i}"));
        // One class, named in the request.
        let kind = QueryKind::Knn { k: 4 };
        let got = query(&client, &s, fx, kind, q, &["oncology"], payloads)
            .await
            .unwrap();
        fx.assert_matches(
            &got,
            &fx.truth(kind, q, &["oncology"]),
            &format!("kNN oncology q#{i}"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_the_brute_force_plain() {
    let fx = plain();
    let server = TestServer::hosting(&[fx, mlhe()], ServerLimits::default()).await;
    check_oracle(fx, &server, 4, 1).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_the_brute_force_mlhe() {
    let fx = mlhe();
    let server = TestServer::hosting(&[plain(), fx], ServerLimits::default()).await;
    check_oracle(fx, &server, 2, 2).await;
    server.shutdown().await;
}

// ---------------------------------------------------------------- session refusals

/// Flips a bit in the last byte of the COSE_Sign1 (inside the signature) and re-encodes.
fn tamper_signature(t: &str) -> String {
    let body = t.strip_prefix(token::TOKEN_PREFIX).unwrap();
    let mut bytes = base45::decode(body).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    format!("{}{}", token::TOKEN_PREFIX, base45::encode(&bytes))
}

/// Changes the `sub` claim's text inside the signed payload, keeping the old signature.
fn tamper_payload(t: &str) -> String {
    let body = t.strip_prefix(token::TOKEN_PREFIX).unwrap();
    let mut bytes = base45::decode(body).unwrap();
    let at = bytes.windows(11).position(|w| w == b"doctor-0042").unwrap();
    bytes[at + 10] = b'3';
    format!("{}{}", token::TOKEN_PREFIX, base45::encode(&bytes))
}

/// Rewrites the scope's class list inside the signed payload to `to` (re-encoding the COSE
/// structure around it), keeping the old signature: a class-A token made to claim class B.
fn tamper_class(t: &str, from: &str, to: &str) -> String {
    use coset::TaggedCborSerializable;
    let body = t.strip_prefix(token::TOKEN_PREFIX).unwrap();
    let mut sign1 = coset::CoseSign1::from_tagged_slice(&base45::decode(body).unwrap()).unwrap();
    let payload = sign1.payload.take().unwrap();
    // A CBOR text string of up to 23 bytes: its header byte is 0x60 + length.
    let text = |s: &str| [&[0x60 + s.len() as u8][..], s.as_bytes()].concat();
    let (old, new) = (text(from), text(to));
    let at = payload.windows(old.len()).position(|w| w == old).unwrap();
    let tampered = [&payload[..at], &new[..], &payload[at + old.len()..]].concat();
    sign1.payload = Some(tampered);
    format!(
        "{}{}",
        token::TOKEN_PREFIX,
        base45::encode(sign1.to_tagged_vec().unwrap())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_a_token_tampered_to_claim_class_b_opens_nothing() {
    for fx in [plain(), mlhe()] {
        let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
        let device = DeviceKey::random();
        let class_a = fx.token_with(&device, |c| c.scope.classes = vec!["cardiology".into()]);
        let tampered = tamper_class(&class_a, "cardiology", "oncology");
        // The tamper did what an attacker wants: the (unverified) claims now name class B.
        let claimed = token::decode_unverified(&tampered).unwrap();
        assert_eq!(claimed.scope.classes, vec!["oncology".to_string()]);
        assert_eq!(
            session_refusal(&server, &tampered, &device).await,
            "bad_signature"
        );
        // The untampered token still works, for class A only.
        let s = server
            .client()
            .open_session(&class_a, &device)
            .await
            .unwrap();
        assert_eq!(s.classes, vec!["cardiology".to_string()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refusals_have_their_codes() {
    let fx = plain();
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let device = DeviceKey::random();
    let now = blindkd_tests::now_unix();

    let good = fx.token(&device);
    assert_eq!(
        session_refusal(&server, &tamper_signature(&good), &device).await,
        "bad_signature"
    );
    assert_eq!(
        session_refusal(&server, &tamper_payload(&good), &device).await,
        "bad_signature"
    );
    // Same issuer name, another key.
    let forged = token::issue(&IssuerKey::random(), &fx.claims(&device)).unwrap();
    assert_eq!(
        session_refusal(&server, &forged, &device).await,
        "bad_signature"
    );
    // An issuer the server does not pin.
    let mut c = fx.claims(&device);
    c.iss = "rogue-hospital".into();
    let rogue = token::issue(&IssuerKey::random(), &c).unwrap();
    assert_eq!(
        session_refusal(&server, &rogue, &device).await,
        "unknown_issuer"
    );
    // Time claims (the verifier allows 60 s of skew; these are an hour off).
    let expired = fx.token_with(&device, |c| {
        c.iat = now - 7200;
        c.nbf = now - 7200;
        c.exp = now - 3600;
    });
    assert_eq!(session_refusal(&server, &expired, &device).await, "expired");
    let early = fx.token_with(&device, |c| {
        c.iat = now;
        c.nbf = now + 3600;
        c.exp = now + 7200;
    });
    assert_eq!(
        session_refusal(&server, &early, &device).await,
        "not_yet_valid"
    );
    // Another index (not hosted here) and the mlhe fixture's index.
    let other = fx.token_with(&device, |c| c.aud = "11".repeat(16));
    assert_eq!(
        session_refusal(&server, &other, &device).await,
        "wrong_audience"
    );
    let other = fx.token_with(&device, |c| c.aud = "not an index id".into());
    assert_eq!(
        session_refusal(&server, &other, &device).await,
        "wrong_audience"
    );
    assert_eq!(
        session_refusal(&server, "BKD1:%%%", &device).await,
        "malformed_token"
    );
    assert_eq!(
        session_refusal(&server, "", &device).await,
        "malformed_token"
    );
    // None of these opened anything; the good token still works.
    assert_eq!(server.metric("blindkd_sessions_opened_total").await, 0);
    assert_eq!(server.metric("blindkd_sessions_refused_total").await, 10);
    server.client().open_session(&good, &device).await.unwrap();
    assert_eq!(server.metric("blindkd_sessions_opened_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proof_of_possession_is_required_and_single_use() {
    let fx = plain();
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let h = http();
    let device = DeviceKey::random();
    let t = fx.token(&device);

    // No proof at all: a photographed QR alone is useless.
    let (resp, _) = raw_session(&h, &server.base, &t, None).await;
    assert_eq!(error_reply(resp).await.1, "missing_pop");
    // A proof by another device key.
    let thief = DeviceKey::random();
    assert_eq!(session_refusal(&server, &t, &thief).await, "bad_pop");
    // A proof for another token naming the same device.
    let nonce = fresh_nonce(&h, &server.base).await;
    let other = fx.token(&device);
    let pop = hex::encode(device.sign_pop(&hex::decode(&nonce).unwrap(), &other));
    let resp = post_session(&h, &server.base, &t, &nonce, &pop).await;
    assert_eq!(error_reply(resp).await.1, "bad_pop");
    // Garbage signature bytes.
    let nonce = fresh_nonce(&h, &server.base).await;
    let resp = post_session(&h, &server.base, &t, &nonce, &"ab".repeat(64)).await;
    assert_eq!(error_reply(resp).await.1, "bad_pop");

    // A good proof works once; replaying the same nonce and proof is refused.
    let nonce = fresh_nonce(&h, &server.base).await;
    let pop = hex::encode(device.sign_pop(&hex::decode(&nonce).unwrap(), &t));
    let resp = post_session(&h, &server.base, &t, &nonce, &pop).await;
    assert_eq!(resp.status(), 200);
    let resp = post_session(&h, &server.base, &t, &nonce, &pop).await;
    assert_eq!(error_reply(resp).await.1, "replayed_nonce");
    // A nonce the server never issued (its MAC does not verify), correctly signed.
    let made_up = [7u8; 32];
    let pop = hex::encode(device.sign_pop(&made_up, &t));
    let resp = post_session(&h, &server.base, &t, &hex::encode(made_up), &pop).await;
    assert_eq!(error_reply(resp).await.1, "unknown_nonce");
    // A nonce of the wrong size.
    let resp = post_session(&h, &server.base, &t, "abcd", &pop).await;
    assert_eq!(error_reply(resp).await.1, "unknown_nonce");
    // Nonces are stateless until used: a refused attempt (bad proof) does not record one, so the
    // device can still use it; once it opened a session, it is spent.
    let nonce = fresh_nonce(&h, &server.base).await;
    let bad = hex::encode(thief.sign_pop(&hex::decode(&nonce).unwrap(), &t));
    let resp = post_session(&h, &server.base, &t, &nonce, &bad).await;
    assert_eq!(error_reply(resp).await.1, "bad_pop");
    let good = hex::encode(device.sign_pop(&hex::decode(&nonce).unwrap(), &t));
    let resp = post_session(&h, &server.base, &t, &nonce, &good).await;
    assert_eq!(resp.status(), 200);
    let resp = post_session(&h, &server.base, &t, &nonce, &good).await;
    assert_eq!(error_reply(resp).await.1, "replayed_nonce");
    assert_eq!(server.metric("blindkd_sessions_opened_total").await, 2);
}

// ---------------------------------------------------------------- scope, budget, sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_limits_are_enforced() {
    let fx = plain();
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let q = fx.query_points(1, 3).remove(0);

    let (c, s) = open(&server, fx, |c| {
        c.scope.max_k = 5;
        c.scope.max_radius = 10.0;
    })
    .await;
    assert_eq!((s.max_k, s.max_radius), (5, 10.0));
    let ok = query(&c, &s, fx, QueryKind::Knn { k: 5 }, &q, &[], false)
        .await
        .unwrap();
    assert_eq!(ok.results.len(), 5);
    let e = query(&c, &s, fx, QueryKind::Knn { k: 6 }, &q, &[], false)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), "scope_k");
    query(
        &c,
        &s,
        fx,
        QueryKind::Range { radius: 10.0 },
        &q,
        &[],
        false,
    )
    .await
    .unwrap();
    let e = query(
        &c,
        &s,
        fx,
        QueryKind::Range { radius: 10.5 },
        &q,
        &[],
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(code_of(&e), "scope_radius");

    let (c, s) = open(&server, fx, |c| c.scope.kinds = vec![token::QueryKind::Knn]).await;
    assert!(s.knn && !s.range);
    let e = query(&c, &s, fx, QueryKind::Range { radius: 1.0 }, &q, &[], false)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), "scope_kind");
    let (c, s) = open(&server, fx, |c| {
        c.scope.kinds = vec![token::QueryKind::Range]
    })
    .await;
    let e = query(&c, &s, fx, QueryKind::Knn { k: 1 }, &q, &[], false)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), "scope_kind");

    // A class outside the token, asked for by name (the device happens to hold its key).
    let (c, s) = open(&server, fx, |c| c.scope.classes = vec!["cardiology".into()]).await;
    for classes in [&["oncology"][..], &["cardiology", "oncology"]] {
        let e = query(&c, &s, fx, QueryKind::Knn { k: 1 }, &q, classes, false)
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), "forbidden_class");
    }
    // A token class that the index does not have, asked for by name (a raw request: the client
    // holds no key for it, so it would refuse locally).
    let (_, s) = open(&server, fx, |c| {
        c.scope.classes = vec!["cardiology".into(), "radiology".into()]
    })
    .await;
    let b = fx.full_bundle();
    let bytes = start_request(entry(&b), QueryKind::Knn { k: 1 }, &q, vec![]);
    let mut req: StartRequest = postcard::from_bytes(&bytes).unwrap();
    req.classes = vec!["radiology".into()];
    let resp = http()
        .post(format!(
            "{}/v1/indexes/{}/queries",
            server.base, fx.index_id
        ))
        .bearer_auth(&s.session)
        .header("content-type", "application/octet-stream")
        .body(postcard::to_allocvec(&req).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(error_reply(resp).await.1, "unknown_class");
    assert_eq!(server.metric("blindkd_queries_started_total").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_and_session_limits() {
    let fx = plain();
    let limits = ServerLimits {
        max_sessions_per_token: 2,
        ..ServerLimits::default()
    };
    let server = TestServer::hosting(&[fx], limits).await;
    let q = fx.query_points(1, 4).remove(0);
    let client = server.client();
    // The budget counts units of work (blocks evaluated, payloads served): measure what this
    // query costs on another token, then give the token room for exactly two of them.
    let probe_dev = DeviceKey::random();
    let probe = fx.token(&probe_dev);
    let p = client.open_session(&probe, &probe_dev).await.unwrap();
    query(&client, &p, fx, QueryKind::Knn { k: 2 }, &q, &[], false)
        .await
        .unwrap();
    let after = client.open_session(&probe, &probe_dev).await.unwrap();
    let cost = p.budget_left - after.budget_left;
    assert!(cost >= 2, "a query costs its pivot and leaf blocks: {cost}");
    let device = DeviceKey::random();
    let budget = 2 * cost as u32;
    let t = fx.token_with(&device, |c| c.scope.budget = budget);
    let s1 = client.open_session(&t, &device).await.unwrap();
    let s2 = client.open_session(&t, &device).await.unwrap();
    assert_eq!(s1.budget, budget);
    assert_eq!(s1.budget_left, u64::from(budget));
    let e = client.open_session(&t, &device).await.unwrap_err();
    assert_eq!(code_of(&e), "too_many_sessions");
    // The budget is per token, across its sessions.
    query(&client, &s1, fx, QueryKind::Knn { k: 2 }, &q, &[], false)
        .await
        .unwrap();
    query(&client, &s2, fx, QueryKind::Knn { k: 2 }, &q, &[], false)
        .await
        .unwrap();
    for s in [&s1, &s2] {
        let e = query(&client, s, fx, QueryKind::Knn { k: 2 }, &q, &[], false)
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), "budget_exhausted");
    }
    // Another token for the same device is unaffected.
    let (c, s) = open(&server, fx, |_| {}).await;
    query(&c, &s, fx, QueryKind::Knn { k: 2 }, &q, &[], false)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_expired_sessions_and_queries() {
    let fx = plain();
    let q = fx.query_points(1, 6).remove(0);
    // Expired session: a zero session lifetime expires the session at once.
    let server = TestServer::hosting(
        &[fx],
        ServerLimits {
            session_ttl: Duration::ZERO,
            ..ServerLimits::default()
        },
    )
    .await;
    let (c, s) = open(&server, fx, |_| {}).await;
    let e = query(&c, &s, fx, QueryKind::Knn { k: 1 }, &q, &[], false)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), "session_expired");
    drop(server);

    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let (c, s) = open(&server, fx, |_| {}).await;
    // A session id the server never issued.
    let fake = Session {
        session: "5a".repeat(16),
        ..s.clone()
    };
    let e = query(&c, &fake, fx, QueryKind::Knn { k: 1 }, &q, &[], false)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), "unknown_session");

    // Query ids: never issued, another session's, deleted.
    let h = http();
    let b = fx.full_bundle();
    let base = format!("{}/v1/indexes/{}/queries", server.base, fx.index_id);
    let start = |sid: &str| {
        h.post(&base)
            .bearer_auth(sid)
            .header("content-type", "application/octet-stream")
            .body(start_request(
                entry(&b),
                QueryKind::Knn { k: 1 },
                &q,
                vec![],
            ))
            .send()
    };
    let blocks = |sid: &str, qid: &str| {
        let req = BlockRequest {
            blocks: vec![BlockRef {
                class_idx: 0,
                leaf: 0,
            }],
        };
        h.post(format!("{base}/{qid}/blocks"))
            .bearer_auth(sid)
            .header("content-type", "application/octet-stream")
            .body(postcard::to_allocvec(&req).unwrap())
            .send()
    };
    let resp = blocks(&s.session, &"77".repeat(16)).await.unwrap();
    assert_eq!(error_reply(resp).await.1, "unknown_query");
    let resp = start(&s.session).await.unwrap();
    assert_eq!(resp.status(), 200);
    let qid = resp.headers()["bkd-query-id"].to_str().unwrap().to_string();
    let resp = blocks(&s.session, &qid).await.unwrap();
    assert_eq!(resp.status(), 200, "the owner may continue its query");
    let (_, other) = open(&server, fx, |_| {}).await;
    let resp = blocks(&other.session, &qid).await.unwrap();
    assert_eq!(error_reply(resp).await.1, "unknown_query");
    let resp = h
        .delete(format!("{base}/{qid}"))
        .bearer_auth(&other.session)
        .send()
        .await
        .unwrap();
    assert_eq!(error_reply(resp).await.1, "unknown_query");
    let resp = h
        .delete(format!("{base}/{qid}"))
        .bearer_auth(&s.session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = blocks(&s.session, &qid).await.unwrap();
    assert_eq!(error_reply(resp).await.1, "unknown_query");
    drop(server);

    // An expired query (zero query lifetime).
    let server = TestServer::hosting(
        &[fx],
        ServerLimits {
            query_ttl: Duration::ZERO,
            ..ServerLimits::default()
        },
    )
    .await;
    let (c, s) = open(&server, fx, |_| {}).await;
    let e = query(&c, &s, fx, QueryKind::Knn { k: 3 }, &q, &[], false)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), "unknown_query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_limits_are_enforced() {
    let fx = plain();
    let q = fx.query_points(1, 8).remove(0);
    let radius = fx.radius_for(&q, 150, &[]);
    for blocks in [
        Limits {
            max_blocks_per_query: 4096,
            max_blocks_per_request: 1,
        },
        Limits {
            max_blocks_per_query: 2,
            max_blocks_per_request: 64,
        },
    ] {
        let server = TestServer::hosting(
            &[fx],
            ServerLimits {
                blocks,
                ..ServerLimits::default()
            },
        )
        .await;
        let (c, s) = open(&server, fx, |_| {}).await;
        let e = query(&c, &s, fx, QueryKind::Range { radius }, &q, &[], false)
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), "limit_blocks", "{blocks:?}");
    }
}

// ---------------------------------------------------------------- class isolation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_a_token_never_yields_class_b_records() {
    for fx in [plain(), mlhe()] {
        let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
        let (c, s) = open(&server, fx, |c| c.scope.classes = vec!["cardiology".into()]).await;
        assert_eq!(s.classes, vec!["cardiology".to_string()]);
        let q = fx.query_points(1, 12).remove(0);
        // The device holds every class key (worst case); the token still limits the answer.
        for kind in [
            QueryKind::Knn { k: 9 },
            QueryKind::Range {
                radius: fx.radius_for(&q, 60, &[]),
            },
        ] {
            let got = query(&c, &s, fx, kind, &q, &[], true).await.unwrap();
            assert!(got.results.iter().all(|r| r.class == "cardiology"));
            fx.assert_matches(&got, &fx.truth(kind, &q, &["cardiology"]), "class A only");
        }
        let h = http();
        // Raw block requests for another class's leaves inside a class-A query are refused.
        let b = fx.full_bundle();
        let base = format!("{}/v1/indexes/{}/queries", server.base, fx.index_id);
        let resp = h
            .post(&base)
            .bearer_auth(&s.session)
            .header("content-type", "application/octet-stream")
            .body(start_request(
                entry(&b),
                QueryKind::Knn { k: 1 },
                &q,
                vec![],
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let qid = resp.headers()["bkd-query-id"].to_str().unwrap().to_string();
        let names = fx.index.class_names();
        for class in ["oncology", "endocrinology"] {
            let idx = names.iter().position(|n| n == class).unwrap() as u32;
            let req = BlockRequest {
                blocks: vec![BlockRef {
                    class_idx: idx,
                    leaf: 0,
                }],
            };
            let resp = h
                .post(format!("{base}/{qid}/blocks"))
                .bearer_auth(&s.session)
                .header("content-type", "application/octet-stream")
                .body(postcard::to_allocvec(&req).unwrap())
                .send()
                .await
                .unwrap();
            assert_eq!(error_reply(resp).await.1, "forbidden_class");
        }
        // Payload fetches of other classes' records look like unknown records.
        for class in ["oncology", "endocrinology"] {
            for id in fx.ids_of_class(class).into_iter().take(5).chain([0xdead]) {
                let resp = h
                    .post(format!("{base}/{qid}/payloads"))
                    .bearer_auth(&s.session)
                    .header("content-type", "application/octet-stream")
                    .body(postcard::to_allocvec(&PayloadRequest { records: vec![id] }).unwrap())
                    .send()
                    .await
                    .unwrap();
                let (status, code, message) = error_reply(resp).await;
                assert_eq!((status, code.as_str()), (404, "unreachable_record"));
                assert_eq!(
                    message, "payloads are served only for records in blocks this query evaluated",
                    "same answer as a missing id"
                );
            }
        }
        // A session for one index cannot reach another hosted index.
        let both = TestServer::hosting(&[plain(), mlhe()], ServerLimits::default()).await;
        let (_, s) = open(&both, fx, |_| {}).await;
        let other = if std::ptr::eq(fx, plain()) {
            mlhe()
        } else {
            plain()
        };
        let resp = h
            .post(format!(
                "{}/v1/indexes/{}/queries/{}/payloads",
                both.base,
                other.index_id,
                "ab".repeat(16)
            ))
            .bearer_auth(&s.session)
            .header("content-type", "application/octet-stream")
            .body(
                postcard::to_allocvec(&PayloadRequest {
                    records: vec![other.record_ids[0]],
                })
                .unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(error_reply(resp).await.1, "wrong_audience");
    }
}

// ---------------------------------------------------------------- audit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lines_hold_no_values_distances_or_payloads() {
    let fx = mlhe();
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let (c, s) = open(&server, fx, |_| {}).await;
    let device = DeviceKey::random();
    let refused_token = fx.token(&device);
    let _ = session_refusal(&server, &refused_token, &DeviceKey::random()).await;
    // A distinctive query: values with decimals that cannot be confused with counts or ids.
    let q: Vec<f64> = vec![57.31, 131.17, 83.53, 241.19];
    let mut outcomes = Vec::new();
    for kind in [
        QueryKind::Knn { k: 6 },
        QueryKind::Range {
            radius: fx.radius_for(&q, 5, &[]),
        },
    ] {
        let got = query(&c, &s, fx, kind, &q, &[], true).await.unwrap();
        fx.assert_matches(&got, &fx.truth(kind, &q, &[]), "audit query");
        outcomes.push(got);
    }
    let lines = server.state.audit_lines();
    let events: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["event"].as_str().unwrap().to_string()
        })
        .collect();
    for e in [
        "session_opened",
        "session_refused",
        "query_started",
        "blocks",
        "payloads",
    ] {
        assert!(events.iter().any(|x| x == e), "no {e} line in {events:?}");
    }

    // Forbidden text: payload fields, owner record ids, the query's values, distances, tokens.
    let mut forbidden: Vec<String> = vec![
        NOTE_PREFIX.to_string(),
        refused_token.clone(),
        refused_token[..40].to_string(),
    ];
    for d in blindkd_indexer::synth::DIAGNOSES {
        forbidden.push(d.to_string());
    }
    let qe = fx.schema.encode(&q).unwrap();
    for v in &q {
        forbidden.push(format!("{v}"));
    }
    let mut forbidden_numbers: Vec<f64> = q.clone();
    forbidden_numbers.extend(qe.iter().map(|&v| v as f64));
    for o in &outcomes {
        for r in &o.results {
            let p = r.payload.as_ref().unwrap();
            forbidden.push(p.record.clone());
            for v in p.fields.values() {
                if let Some(t) = v.as_str() {
                    forbidden.push(t.to_string());
                }
            }
            let d = format!("{}", r.distance);
            if d.len() >= 6 {
                forbidden.push(d);
            }
            forbidden_numbers.push(r.d2 as f64);
            forbidden_numbers.push(r.distance);
        }
    }
    for line in &lines {
        for f in &forbidden {
            assert!(!line.contains(f.as_str()), "audit line leaks {f:?}: {line}");
        }
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for (key, val) in v.as_object().unwrap() {
            // Timing and clock fields are not data.
            if ["ts_ms", "micros", "exp"].contains(&key.as_str()) {
                continue;
            }
            let mut nums = Vec::new();
            collect_numbers(val, &mut nums);
            for n in nums {
                assert!(
                    !forbidden_numbers.contains(&n),
                    "audit field {key} = {n} equals a query value or distance: {line}"
                );
            }
        }
    }
    // The audit names the subject and classes, which is its job.
    assert!(lines.iter().any(|l| l.contains("doctor-0042")));
    for c in CLASSES {
        assert!(lines.iter().any(|l| l.contains(c)));
    }
}

fn collect_numbers(v: &serde_json::Value, out: &mut Vec<f64>) {
    match v {
        serde_json::Value::Number(n) => out.push(n.as_f64().unwrap()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_numbers(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| collect_numbers(x, out)),
        _ => {}
    }
}

/// The session limit counts live sessions: a doctor who closes each session after a query (as
/// `blindkd query` does) never runs out while the budget lasts, and a closed session is unusable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_sessions_free_their_slot() {
    let fx = plain();
    let limits = ServerLimits {
        max_sessions_per_token: 2,
        ..ServerLimits::default()
    };
    let server = TestServer::hosting(&[fx], limits).await;
    let q = fx.query_points(1, 9).remove(0);
    let device = DeviceKey::random();
    let t = fx.token_with(&device, |c| c.scope.budget = 10_000);
    let client = server.client();
    for _ in 0..6 {
        let s = client.open_session(&t, &device).await.unwrap();
        query(&client, &s, fx, QueryKind::Knn { k: 2 }, &q, &[], false)
            .await
            .unwrap();
        client.close_session(&s).await.unwrap();
        let e = query(&client, &s, fx, QueryKind::Knn { k: 2 }, &q, &[], false)
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), "unknown_session");
    }
    let a = client.open_session(&t, &device).await.unwrap();
    let _b = client.open_session(&t, &device).await.unwrap();
    let e = client.open_session(&t, &device).await.unwrap_err();
    assert_eq!(code_of(&e), "too_many_sessions");
    client.close_session(&a).await.unwrap();
    client.open_session(&t, &device).await.unwrap();
    server.shutdown().await;
}
