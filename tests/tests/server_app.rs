//! The HTTP shell in process: `app(state).oneshot(request)`, no socket. Health, metrics, routing,
//! content types, body limits (declared and streamed), bearer handling, malformed bodies and ids.
//! Every error reply is JSON `{code, message}` with the status the `CODES` table gives its code.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::IntoResponse;
use blindkd_engine::protocol::{BlockRef, BlockReply, BlockRequest, QueryKind};
use blindkd_keys::token::DeviceKey;
use blindkd_server::error::CODES;
use blindkd_server::{admin_app, app, ApiError, AppState, ServerLimits};
use blindkd_tests::{entry, metric_value, plain, start_request, Fixture};
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

async fn send(state: &Arc<AppState>, req: Request<Body>) -> Reply {
    send_to(app(state.clone()), req).await
}

async fn send_to(router: axum::Router, req: Request<Body>) -> Reply {
    let resp = router.oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: axum::body::to_bytes(body, usize::MAX).await.unwrap(),
    }
}

fn req(method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

fn get(uri: &str) -> Request<Body> {
    req(Method::GET, uri).body(Body::empty()).unwrap()
}

/// Asserts `r` is the error `code`: JSON `{code, message}` only, with the table's status.
fn assert_error(r: &Reply, code: &str) {
    let ct = r
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        ct.starts_with("application/json"),
        "{} with content type {ct:?}: {text}",
        r.status
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 2, "only code and message: {v}");
    assert!(o["message"].is_string(), "{v}");
    assert_eq!(o["code"], code, "{v}");
    let want = CODES
        .iter()
        .find(|(c, _)| *c == code)
        .unwrap_or_else(|| panic!("code {code} not in CODES"))
        .1;
    assert_eq!(r.status.as_u16(), want, "status of {code}: {v}");
}

fn state(limits: ServerLimits) -> Arc<AppState> {
    blindkd_tests::state(&[plain()], limits, &[])
}

async fn nonce(state: &Arc<AppState>) -> Vec<u8> {
    let r = send(
        state,
        req(Method::POST, "/v1/nonces").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let n = hex::decode(v["nonce"].as_str().unwrap()).unwrap();
    assert_eq!(n.len(), 32);
    n
}

fn session_request(token: &str, nonce: &[u8], pop: &[u8]) -> Request<Body> {
    let body = serde_json::json!({
        "token": token, "nonce": hex::encode(nonce), "pop": hex::encode(pop)
    });
    req(Method::POST, "/v1/sessions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Opens a session for a fresh device on the fixture index; returns the bearer session id.
async fn session(state: &Arc<AppState>, fx: &Fixture) -> String {
    let device = DeviceKey::random();
    let token = fx.token(&device);
    let n = nonce(state).await;
    let r = send(
        state,
        session_request(&token, &n, &device.sign_pop(&n, &token)),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["index_id"], fx.index_id);
    v["session"].as_str().unwrap().to_string()
}

async fn metrics_text(state: &Arc<AppState>) -> String {
    let r = send_to(admin_app(state.clone()), get("/metrics")).await;
    assert_eq!(r.status, StatusCode::OK);
    let ct = r.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    String::from_utf8(r.body.to_vec()).unwrap()
}

#[tokio::test]
async fn healthz_reports_ok_and_nothing_else() {
    let s = state(ServerLimits::default());
    let r = send(&s, get("/healthz")).await;
    assert_eq!(r.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v, serde_json::json!({ "status": "ok" }));
    // Metrics are on the admin router only.
    assert_error(&send(&s, get("/metrics")).await, "not_found");
    let r = send_to(admin_app(s.clone()), get("/healthz")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers.contains_key("x-request-id"),
        "request id propagated"
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_counters_move() {
    let s = state(ServerLimits::default());
    let text = metrics_text(&s).await;
    for name in [
        "sessions_opened_total",
        "sessions_refused_total",
        "queries_started_total",
        "pivot_blocks_evaluated_total",
        "leaf_blocks_evaluated_total",
        "payloads_served_total",
        "overloaded_total",
        "errors_total",
        "eval_seconds_total",
        "sessions_live",
        "queries_live",
        "evaluations_in_flight",
        "connections_open",
        "audit_write_errors_total",
        "connections_refused_total",
        "connections_evicted_total",
    ] {
        let full = format!("blindkd_{name}");
        assert!(text.contains(&format!("# HELP {full} ")), "{full} HELP");
        assert!(text.contains(&format!("# TYPE {full} ")), "{full} TYPE");
        assert_eq!(metric_value(&text, &full), 0, "{full} starts at 0");
    }
    // Every sample line is `name value`.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (n, v) = l.split_once(' ').unwrap();
        assert!(n.starts_with("blindkd_"), "{l}");
        v.parse::<u64>().unwrap();
    }

    // A refused session moves sessions_refused and errors.
    let n = nonce(&s).await;
    let r = send(&s, session_request("BKD1:garbage", &n, &[1; 64])).await;
    assert_error(&r, "malformed_token");
    // An opened session moves sessions_opened and sessions_live.
    let fx = plain();
    let sid = session(&s, fx).await;
    // A started query moves queries_started, pivot blocks and queries_live.
    let bundle = fx.full_bundle();
    let e = entry(&bundle);
    let q = fx.query_points(1, 5).remove(0);
    let body = start_request(e, QueryKind::Knn { k: 3 }, &q, vec![]);
    let r = send(
        &s,
        req(
            Method::POST,
            &format!("/v1/indexes/{}/queries", fx.index_id),
        )
        .header(header::AUTHORIZATION, format!("Bearer {sid}"))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(body))
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers[header::CONTENT_TYPE],
        "application/octet-stream",
        "binary reply"
    );
    assert_eq!(
        r.headers["bkd-query-id"].to_str().unwrap().len(),
        32,
        "query id header"
    );

    let text = metrics_text(&s).await;
    assert_eq!(metric_value(&text, "blindkd_sessions_refused_total"), 1);
    assert_eq!(metric_value(&text, "blindkd_errors_total"), 1);
    assert_eq!(metric_value(&text, "blindkd_sessions_opened_total"), 1);
    assert_eq!(metric_value(&text, "blindkd_sessions_live"), 1);
    assert_eq!(metric_value(&text, "blindkd_queries_started_total"), 1);
    assert_eq!(metric_value(&text, "blindkd_queries_live"), 1);
    assert!(metric_value(&text, "blindkd_pivot_blocks_evaluated_total") >= 3);
    assert_eq!(metric_value(&text, "blindkd_evaluations_in_flight"), 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let s = state(ServerLimits::default());
    for uri in ["/", "/nope", "/v1", "/v1/indexes", "/v2/sessions"] {
        let r = send(&s, get(uri)).await;
        assert_error(&r, "not_found");
    }
    // A known path with the wrong method is still a JSON error, not an empty 405.
    for (m, uri) in [
        (Method::POST, "/healthz"),
        (Method::GET, "/v1/sessions"),
        (Method::DELETE, "/v1/nonces"),
    ] {
        let r = send(&s, req(m.clone(), uri).body(Body::empty()).unwrap()).await;
        assert_error(&r, "method_not_allowed");
    }
}

#[tokio::test]
async fn wrong_content_type_is_refused() {
    let s = state(ServerLimits::default());
    for ct in [None, Some("text/plain"), Some("application/octet-stream")] {
        let mut b = req(Method::POST, "/v1/sessions");
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        let r = send(&s, b.body(Body::from("{}")).unwrap()).await;
        assert_error(&r, "wrong_content_type");
    }
    // The binary endpoints want octet-stream.
    let fx = plain();
    let sid = session(&s, fx).await;
    for ct in ["application/json", "text/plain"] {
        let r = send(
            &s,
            req(
                Method::POST,
                &format!("/v1/indexes/{}/queries", fx.index_id),
            )
            .header(header::AUTHORIZATION, format!("Bearer {sid}"))
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from("[]"))
            .unwrap(),
        )
        .await;
        assert_error(&r, "wrong_content_type");
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused_declared_or_streamed() {
    let limits = ServerLimits {
        max_small_body: 1024,
        max_query_body: 4096,
        ..ServerLimits::default()
    };
    let s = state(limits);
    // Declared: Content-Length over the limit, refused before reading.
    let r = send(
        &s,
        req(Method::POST, "/v1/sessions")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, "1000000")
            .body(Body::from(vec![b' '; 2048]))
            .unwrap(),
    )
    .await;
    assert_error(&r, "body_too_large");
    // Undeclared, one frame over the limit.
    let r = send(
        &s,
        req(Method::POST, "/v1/sessions")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(vec![b' '; 1025]))
            .unwrap(),
    )
    .await;
    assert_error(&r, "body_too_large");
    // Streamed in small chunks, no length: cut off once the total passes the limit.
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..64)
        .map(|_| Ok(Bytes::from_static(&[b' '; 100])))
        .collect();
    let r = send(
        &s,
        req(Method::POST, "/v1/sessions")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .unwrap(),
    )
    .await;
    assert_error(&r, "body_too_large");
    // Exactly at the limit is read (and then refused for what it is, not for its size).
    let mut at_limit = b"{\"token\":\"x\",\"nonce\":\"\"}".to_vec();
    at_limit.resize(1024, b' ');
    let r = send(
        &s,
        req(Method::POST, "/v1/sessions")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(at_limit))
            .unwrap(),
    )
    .await;
    // The nonce is checked first (a MAC, cheaper than decoding a token).
    assert_error(&r, "unknown_nonce");
    // The query endpoint has its own (larger) limit.
    let fx = plain();
    let sid = session(&s, fx).await;
    let url = format!("/v1/indexes/{}/queries", fx.index_id);
    let r = send(
        &s,
        req(Method::POST, &url)
            .header(header::AUTHORIZATION, format!("Bearer {sid}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(vec![0u8; 4097]))
            .unwrap(),
    )
    .await;
    assert_error(&r, "body_too_large");
    let r = send(
        &s,
        req(Method::POST, &url)
            .header(header::AUTHORIZATION, format!("Bearer {sid}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(vec![0xa5u8; 2048]))
            .unwrap(),
    )
    .await;
    assert_error(&r, "malformed_body");
}

#[tokio::test]
async fn missing_or_garbage_bearer_is_refused() {
    let s = state(ServerLimits::default());
    let fx = plain();
    let url = format!("/v1/indexes/{}/queries", fx.index_id);
    let cases: [(Option<String>, &str); 7] = [
        (None, "unauthenticated"),
        (Some("Bearer".into()), "unknown_session"),
        (Some("Bearer ".into()), "unknown_session"),
        (Some("Bearer not-hex".into()), "unknown_session"),
        (Some("Basic dXNlcjpwYXNz".into()), "unknown_session"),
        (
            Some(format!("Bearer {}", "ab".repeat(15))),
            "unknown_session",
        ),
        (
            Some(format!("Bearer {}", "ab".repeat(16))),
            "unknown_session",
        ),
    ];
    for (auth, code) in cases {
        for (m, uri) in [
            (Method::POST, url.clone()),
            (Method::POST, format!("{url}/{}/blocks", "00".repeat(16))),
            (Method::DELETE, format!("{url}/{}", "00".repeat(16))),
            (
                Method::GET,
                format!("{url}/{}/records/{}/payload", "00".repeat(16), "0"),
            ),
            (Method::POST, format!("{url}/{}/payloads", "00".repeat(16))),
        ] {
            let mut b = req(m, &uri).header(header::CONTENT_TYPE, "application/octet-stream");
            if let Some(a) = &auth {
                b = b.header(header::AUTHORIZATION, a);
            }
            let r = send(&s, b.body(Body::from(vec![1, 2, 3])).unwrap()).await;
            assert_error(&r, code);
        }
    }
}

#[tokio::test]
async fn malformed_session_json_is_refused() {
    let s = state(ServerLimits::default());
    for body in [
        "",
        "{",
        "null",
        "[]",
        "{\"token\": 5, \"nonce\": \"\"}",
        "{\"nonce\": \"00\"}",
        "\u{0}\u{1}\u{2}",
    ] {
        let r = send(
            &s,
            req(Method::POST, "/v1/sessions")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
        assert_error(&r, "malformed_body");
    }
    // Well-formed JSON with garbage inside is judged field by field.
    let n = nonce(&s).await;
    let r = send(&s, session_request("not a token", &n, &[0; 64])).await;
    assert_error(&r, "malformed_token");
    let device = DeviceKey::random();
    let token = plain().token(&device);
    let r = send(
        &s,
        req(Method::POST, "/v1/sessions")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                serde_json::json!({"token": token, "nonce": "zz-not-hex", "pop": "00"}).to_string(),
            ))
            .unwrap(),
    )
    .await;
    assert_error(&r, "unknown_nonce");
    let r = send(
        &s,
        req(Method::POST, "/v1/sessions")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                serde_json::json!({"token": token, "nonce": hex::encode(nonce(&s).await), "pop": "not hex"})
                    .to_string(),
            ))
            .unwrap(),
    )
    .await;
    assert_error(&r, "missing_pop");
    let text = metrics_text(&s).await;
    assert_eq!(metric_value(&text, "blindkd_sessions_opened_total"), 0);
}

#[tokio::test]
async fn bad_ids_in_paths_have_clear_codes() {
    let s = state(ServerLimits::default());
    let fx = plain();
    let sid = session(&s, fx).await;
    let bearer = format!("Bearer {sid}");
    let other_index = "00".repeat(16);
    // A live query, for the query-scoped payload routes.
    let bundle = fx.full_bundle();
    let q = fx.query_points(1, 5).remove(0);
    let r = send(
        &s,
        req(
            Method::POST,
            &format!("/v1/indexes/{}/queries", fx.index_id),
        )
        .header(header::AUTHORIZATION, &bearer)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(start_request(
            entry(&bundle),
            QueryKind::Knn { k: 3 },
            &q,
            vec![],
        )))
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let live = format!(
        "/v1/indexes/{}/queries/{}",
        fx.index_id,
        r.headers["bkd-query-id"].to_str().unwrap()
    );
    let cases: Vec<(Method, String, &str)> = vec![
        (
            Method::POST,
            "/v1/indexes/zz/queries".into(),
            "unknown_index",
        ),
        (
            Method::POST,
            format!("/v1/indexes/{}/queries", "ab".repeat(40)),
            "unknown_index",
        ),
        (
            Method::POST,
            format!("/v1/indexes/{other_index}/queries"),
            "unknown_index",
        ),
        (
            Method::POST,
            format!("/v1/indexes/{}/queries/xyz/blocks", fx.index_id),
            "unknown_query",
        ),
        (
            Method::POST,
            format!(
                "/v1/indexes/{}/queries/{}/blocks",
                fx.index_id,
                "ab".repeat(17)
            ),
            "unknown_query",
        ),
        (
            Method::POST,
            format!(
                "/v1/indexes/{}/queries/{}/blocks",
                fx.index_id,
                "ab".repeat(16)
            ),
            "unknown_query",
        ),
        (
            Method::DELETE,
            format!("/v1/indexes/{}/queries/{}", fx.index_id, "ab".repeat(16)),
            "unknown_query",
        ),
        (
            Method::DELETE,
            format!("/v1/indexes/{}/queries/é", fx.index_id),
            "unknown_query",
        ),
        (
            Method::GET,
            format!("{live}/records/zz/payload"),
            "unreachable_record",
        ),
        (
            Method::GET,
            format!("{live}/records/{}/payload", "f".repeat(17)),
            "unreachable_record",
        ),
        (
            Method::GET,
            format!("{live}/records/-1/payload"),
            "unreachable_record",
        ),
        (
            Method::GET,
            format!("{live}/records/%ff%fe/payload"),
            "bad_request",
        ),
        (
            Method::GET,
            format!(
                "/v1/indexes/{}/queries/{}/records/00/payload",
                fx.index_id,
                "ab".repeat(16)
            ),
            "unknown_query",
        ),
        (
            Method::POST,
            "/v1/indexes/%ff/queries".into(),
            "bad_request",
        ),
        (
            Method::POST,
            format!("/v1/indexes/{}/queries/%c3%28/blocks", fx.index_id),
            "bad_request",
        ),
        (
            Method::GET,
            format!("{live}/records/{}/payload", "0".repeat(16)),
            "unreachable_record",
        ),
        (Method::POST, format!("{live}/payloads"), "malformed_body"),
    ];
    for (m, uri, code) in cases {
        let r = send(
            &s,
            req(m.clone(), &uri)
                .header(header::AUTHORIZATION, &bearer)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Body::from(vec![0u8; 4]))
                .unwrap(),
        )
        .await;
        assert_error(&r, code);
    }
    // A record of a block the query evaluated is served (the refusals above are not blanket).
    let blocks = postcard::to_allocvec(&BlockRequest {
        blocks: vec![BlockRef {
            class_idx: 0,
            leaf: 0,
        }],
    })
    .unwrap();
    let r = send(
        &s,
        req(Method::POST, &format!("{live}/blocks"))
            .header(header::AUTHORIZATION, &bearer)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(blocks))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let reply: BlockReply = postcard::from_bytes(&r.body).unwrap();
    let id = reply.blocks[0].record_ids[0];
    let r = send(
        &s,
        req(Method::GET, &format!("{live}/records/{id:016x}/payload"))
            .header(header::AUTHORIZATION, &bearer)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.is_empty());
    assert!(r.headers.contains_key("bkd-budget-left"));
}

#[tokio::test]
async fn internal_errors_do_not_leak_detail() {
    let secret = "db password hunter2 at /etc/secret";
    let resp = ApiError::internal(secret).into_response();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(!text.contains("hunter2"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["code"], "internal");
    assert_eq!(v["message"], "internal error");
    // Engine errors that are not the client's fault become the same opaque 500.
    let e: ApiError = blindkd_engine::Error::DataCorruption {
        path: secret.into(),
        detail: secret.into(),
    }
    .into();
    assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!e.message.contains("hunter2"), "{}", e.message);
    // Every code in the table maps to its status; the only 5xx are `internal` and the
    // fail-closed `revocation_unavailable`.
    for (c, st) in CODES {
        assert_eq!(ApiError::new(c, "").status.as_u16(), *st);
        assert_eq!(
            *st >= 500,
            ["internal", "revocation_unavailable"].contains(c),
            "{c}"
        );
    }
}
