//! HTTP routes: a thin shell over the engine's protocol (DESIGN §6). JSON for control, binary
//! (`application/octet-stream`) bodies for ciphertexts.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use blindkd_engine::index::{id_hex, parse_id};
use blindkd_engine::protocol::{PayloadReply, PayloadRequest, QueryKind};
use serde::{Deserialize, Serialize};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::auth::{LiveQuery, Pass, StoreMeter};
use crate::metrics::Metrics;
use crate::{ApiError, AppState};

/// Header carrying the query id in a round-1 reply.
pub(crate) const QUERY_ID_HEADER: &str = "bkd-query-id";
/// Header carrying the token's budget units left after the request.
pub(crate) const BUDGET_LEFT_HEADER: &str = "bkd-budget-left";
const OCTET: &str = "application/octet-stream";

/// Path parameters; a path that does not decode (bad percent-encoding, invalid UTF-8) is a JSON
/// `bad_request` like every other error, not axum's plain-text rejection.
struct Ids<T>(T);

impl<S, T> FromRequestParts<S> for Ids<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| Ids(t))
            .map_err(|e| ApiError::new("bad_request", format!("malformed path: {e}")))
    }
}

#[derive(Clone, Default)]
struct RequestIds;

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let mut b = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
        HeaderValue::from_str(&hex::encode(b))
            .ok()
            .map(RequestId::new)
    }
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/nonces", post(nonce))
        .route("/v1/sessions", post(open_session).delete(close_session))
        .route("/v1/indexes/{id}/queries", post(start_query))
        .route("/v1/indexes/{id}/queries/{qid}/blocks", post(blocks))
        .route("/v1/indexes/{id}/queries/{qid}/payloads", post(payloads))
        .route(
            "/v1/indexes/{id}/queries/{qid}/records/{rid}/payload",
            get(payload),
        )
        .route("/v1/indexes/{id}/queries/{qid}", delete(end_query));
    common_layers(routes, &state).with_state(state)
}

/// The admin router: metrics and the health check, for a listener the operator keeps private
/// (loopback by default). Counters let an observer infer result counts, so they are not public.
pub(crate) fn admin_router(state: Arc<AppState>) -> Router {
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    common_layers(routes, &state).with_state(state)
}

fn common_layers(r: Router<Arc<AppState>>, state: &AppState) -> Router<Arc<AppState>> {
    let timeout = state.limits.request_timeout;
    r.fallback(|| async { ApiError::new("not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        // Bodies are read by `read_body` with per-route limits and JSON errors.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout + Duration::from_secs(5),
        ))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(RequestIds))
}

/// Liveness only: says nothing about the indexes, sessions or load.
async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let in_flight = s
        .limits
        .max_concurrent
        .saturating_sub(s.gate.available_permits());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(
            s.auth.session_count(),
            s.queries.count(),
            in_flight,
            s.conns.count(),
            s.audit.write_errors(),
        ),
    )
}

/// Reads a body with a size limit, a content type and a deadline (slow bodies time out).
async fn read_body(
    s: &AppState,
    req: Request,
    limit: usize,
    content_type: &str,
) -> Result<Bytes, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with(content_type) {
        return Err(ApiError::new(
            "wrong_content_type",
            format!("expected Content-Type: {content_type}"),
        ));
    }
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(ApiError::new(
                "body_too_large",
                format!("body of {len} bytes exceeds {limit}"),
            ));
        }
    }
    match tokio::time::timeout(
        s.limits.request_timeout,
        axum::body::to_bytes(req.into_body(), limit),
    )
    .await
    {
        Err(_) => Err(ApiError::new(
            "timeout",
            "the request body arrived too slowly",
        )),
        Ok(Err(_)) => Err(ApiError::new(
            "body_too_large",
            format!("body exceeds {limit} bytes or was cut off"),
        )),
        Ok(Ok(b)) => Ok(b),
    }
}

/// Admits a request of `pass`'s token (per-token in-flight cap); a refusal is back-pressure.
fn admit<'a>(s: &'a AppState, pass: &Pass) -> Result<crate::auth::TokenRequest<'a>, ApiError> {
    s.auth
        .admit_request(pass, s.limits.max_in_flight_per_token)
        .map_err(|e| {
            Metrics::add(&s.metrics.overloaded, 1);
            err(s, e)
        })
}

/// Reads and discards the body of a request refused before its body was read (bounded in bytes
/// and time, never buffered), then returns the refusal. A server that answers and closes while
/// the client is still sending makes the TCP stack reset the connection, and the client sees a
/// transport error instead of the `overloaded` it would retry.
async fn drained(s: &AppState, req: Request, limit: usize, refusal: ApiError) -> ApiError {
    use http_body_util::BodyExt;
    let mut body = req.into_body();
    let mut seen = 0usize;
    let _ = tokio::time::timeout(s.limits.request_timeout, async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > limit {
                break;
            }
        }
    })
    .await;
    refusal
}

/// Audits a refused request of an authorised session (rate-limited like every refusal).
fn audit_refusal(s: &AppState, event: &str, pass: &Pass, code: &str) {
    s.audit.record_refusal(
        event,
        serde_json::json!({ "sub": pass.subject(), "session": pass.session_hex(), "reason": code }),
    );
}

fn err(s: &AppState, e: ApiError) -> ApiError {
    Metrics::add(&s.metrics.errors, 1);
    e
}

#[derive(Serialize)]
struct NonceReply {
    nonce: String,
}

/// Stateless: costs one MAC and stores nothing, so a flood of these cannot lock anyone out.
async fn nonce(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(NonceReply {
        nonce: hex::encode(s.auth.nonce()),
    })
}

#[derive(Deserialize)]
struct SessionRequest {
    token: String,
    nonce: String,
    #[serde(default)]
    pop: String,
}

#[derive(Serialize)]
struct SessionReply {
    session: String,
    index_id: String,
    classes: Vec<String>,
    knn: bool,
    range: bool,
    max_k: u32,
    max_radius: f64,
    max_blocks: u32,
    max_results: u32,
    /// Units over the token's life: one per block evaluated, one per payload served.
    budget: u32,
    /// Units left now.
    budget_left: u64,
    /// Seed of the session public key's `a` (hex): the client must build its key on it.
    pk_seed: String,
}

async fn open_session(State(s): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    // An address that keeps getting refused is slowed down before any work is done.
    let peer = req.extensions().get::<crate::limit::Peer>().map(|p| p.0);
    if !s.refusals.allows(peer) {
        Metrics::add(&s.metrics.overloaded, 1);
        return Err(err(
            &s,
            ApiError::new(
                "overloaded",
                "too many refused session requests from this address; retry in a few seconds",
            ),
        ));
    }
    let body = read_body(&s, req, s.limits.max_small_body, "application/json")
        .await
        .map_err(|e| err(&s, e))?;
    let r: SessionRequest = serde_json::from_slice(&body).map_err(|e| {
        err(
            &s,
            ApiError::new("malformed_body", format!("session request: {e}")),
        )
    })?;
    let nonce = hex::decode(&r.nonce).unwrap_or_default();
    let pop = hex::decode(&r.pop).unwrap_or_default();
    match s
        .auth
        .open_session(&s.indexes, &r.token, &nonce, &pop, &s.limits)
    {
        Ok(opened) => {
            // LEAKAGE: [session-identity] who (token subject, issuer, token id) opens a session, for
            // which index and classes, and when.
            Metrics::add(&s.metrics.sessions_opened, 1);
            let c = &opened.claims;
            s.audit.record(
                "session_opened",
                serde_json::json!({
                    "sub": c.sub, "iss": c.iss, "cti": hex::encode(c.cti), "aud": c.aud,
                    "classes": c.scope.classes, "exp": c.exp,
                }),
            );
            Ok(axum::Json(SessionReply {
                session: opened.session,
                index_id: c.aud.clone(),
                classes: c.scope.classes.clone(),
                knn: c
                    .scope
                    .kinds
                    .contains(&blindkd_engine::token::QueryKind::Knn),
                range: c
                    .scope
                    .kinds
                    .contains(&blindkd_engine::token::QueryKind::Range),
                max_k: c.scope.max_k,
                max_radius: c.scope.max_radius,
                max_blocks: c.scope.max_blocks,
                max_results: c.scope.max_results,
                budget: c.scope.budget,
                budget_left: opened.budget_left,
                pk_seed: hex::encode(opened.pk_seed),
            })
            .into_response())
        }
        Err(refused) => {
            Metrics::add(&s.metrics.sessions_refused, 1);
            s.refusals.refused(peer);
            // A token id is logged only once its signature verified: a forger cannot put a real
            // doctor's token id into the refusals. Refusals are rate-limited (unauthenticated).
            s.audit.record_refusal(
                "session_refused",
                serde_json::json!({
                    "reason": refused.error.code,
                    "cti": refused.cti.map(hex::encode),
                }),
            );
            Err(err(&s, refused.error))
        }
    }
}

async fn close_session(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let pass = s
        .auth
        .authorize(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
        .map_err(|e| err(&s, e))?;
    s.auth.close_session(&pass).map_err(|e| err(&s, e))?;
    s.audit.record(
        "session_closed",
        serde_json::json!({ "sub": pass.subject(), "session": pass.session_hex() }),
    );
    Ok(StatusCode::NO_CONTENT)
}

fn authorize(s: &AppState, headers: &HeaderMap, id: &str) -> Result<Pass, ApiError> {
    let pass = s.auth.authorize(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )?;
    let id = parse_id(id).map_err(|_| ApiError::new("unknown_index", "malformed index id"))?;
    if !s.indexes.contains_key(&id) {
        return Err(ApiError::new("unknown_index", "no such index"));
    }
    if pass.index_id() != &id {
        return Err(ApiError::new(
            "wrong_audience",
            "the session is for another index",
        ));
    }
    Ok(pass)
}

/// Counts one waiter; the count drops when the guard does, even if the request is cancelled
/// (client gone, request timeout) while it waits.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits (bounded) for an evaluation slot: back-pressure instead of collapse.
async fn slot(s: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    if let Ok(p) = s.gate.clone().try_acquire_owned() {
        return Ok(p);
    }
    let overloaded = || {
        Metrics::add(&s.metrics.overloaded, 1);
        ApiError::new("overloaded", "server busy; retry after a second")
    };
    let waiter = Waiting(&s.waiting);
    if s.waiting.fetch_add(1, Ordering::SeqCst) >= s.limits.max_waiting {
        return Err(overloaded());
    }
    let r = tokio::time::timeout(s.limits.queue_wait, s.gate.clone().acquire_owned()).await;
    drop(waiter);
    match r {
        Ok(Ok(p)) => Ok(p),
        _ => Err(overloaded()),
    }
}

fn binary(bytes: Vec<u8>, meter: &StoreMeter) -> Response {
    let mut r = ([(header::CONTENT_TYPE, OCTET)], bytes).into_response();
    if let Some(left) = meter.left {
        r.headers_mut()
            .insert(BUDGET_LEFT_HEADER, HeaderValue::from(left));
    }
    r
}

async fn start_query(
    State(s): State<Arc<AppState>>,
    Ids(id): Ids<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let pass = authorize(&s, req.headers(), &id).map_err(|e| err(&s, e))?;
    // Per-token in-flight cap before the (up to 16 MiB) body is read: one token cannot hold many
    // large bodies or every evaluation slot.
    let _turn = match admit(&s, &pass) {
        Ok(turn) => turn,
        Err(e) => return Err(drained(&s, req, s.limits.max_query_body, e).await),
    };
    let body = read_body(&s, req, s.limits.max_query_body, OCTET)
        .await
        .map_err(|e| err(&s, e))?;
    let index = s.indexes[pass.index_id()].clone();
    let permit = slot(&s).await.map_err(|e| err(&s, e))?;
    let t = Instant::now();
    let mut access = pass.access().clone();
    // A direct round 1 evaluates leaves: the server's own per-query cap bounds it as the token's does.
    access.max_blocks = access.max_blocks.min(s.limits.blocks.max_blocks_per_query);
    // Charged inside the engine once the query may run: a 429 `overloaded` (which clients retry)
    // costs nothing.
    let mut meter = s.auth.meter(&pass);
    let (started, meter) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let r = index.start(&access, &body, &mut meter);
        (r, meter)
    })
    .await
    .map_err(ApiError::internal)?;
    let started = match started {
        Ok(v) => v,
        Err(e) => {
            let e = ApiError::from(e);
            audit_refusal(&s, "query_refused", &pass, e.code);
            return Err(err(&s, e));
        }
    };
    // LEAKAGE: [sizes-timing] message sizes (the sealed query's size reveals d) and evaluation
    // times of every round.
    let micros = t.elapsed().as_micros() as u64;
    Metrics::add(&s.metrics.queries_started, 1);
    Metrics::add(&s.metrics.pivot_blocks, started.info.pivot_blocks as u64);
    Metrics::add(&s.metrics.leaf_blocks, started.info.leaf_blocks as u64);
    Metrics::add(&s.metrics.eval_micros, micros);
    let kind = match started.info.kind {
        QueryKind::Knn { .. } => "knn",
        QueryKind::Range { .. } => "range",
    };
    // LEAKAGE: [query-audit] the server records kind, k/radius, classes, block counts and timing per query.
    let (k, radius) = match started.info.kind {
        QueryKind::Knn { k } => (Some(k), None),
        QueryKind::Range { radius } => (None, Some(radius)),
    };
    let qid = s
        .queries
        .insert(
            LiveQuery {
                handle: started.handle,
                session: pass.session_id(),
                cti: *pass.cti(),
                index_id: *pass.index_id(),
                expires: Instant::now() + s.limits.query_ttl,
                kind,
            },
            s.limits.max_live_queries,
            s.limits.max_live_queries_per_token,
        )
        .map_err(|e| {
            audit_refusal(&s, "query_refused", &pass, e.code);
            err(&s, e)
        })?;
    s.audit.record(
        "query_started",
        serde_json::json!({
            "sub": pass.subject(), "session": pass.session_hex(), "index": id_hex(pass.index_id()),
            "query": &qid[..8], "kind": kind, "k": k, "radius": radius, "classes": started.info.classes,
            "pivot_blocks": started.info.pivot_blocks, "leaf_blocks": started.info.leaf_blocks,
            "micros": micros,
        }),
    );
    let mut resp = binary(started.reply, &meter);
    if let Ok(v) = HeaderValue::from_str(&qid) {
        resp.headers_mut().insert(QUERY_ID_HEADER, v);
    }
    Ok(resp)
}

async fn blocks(
    State(s): State<Arc<AppState>>,
    Ids((id, qid)): Ids<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let pass = authorize(&s, req.headers(), &id).map_err(|e| err(&s, e))?;
    let q = s.queries.get(&pass, &qid).map_err(|e| err(&s, e))?;
    let _turn = match admit(&s, &pass) {
        Ok(turn) => turn,
        Err(e) => return Err(drained(&s, req, s.limits.max_small_body, e).await),
    };
    let body = read_body(&s, req, s.limits.max_small_body, OCTET)
        .await
        .map_err(|e| err(&s, e))?;
    let permit = slot(&s).await.map_err(|e| err(&s, e))?;
    let limits = s.limits.blocks;
    let t = Instant::now();
    let mut meter = s.auth.meter(&pass);
    let res = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut g = q.blocking_lock();
        let before = g.handle.blocks_evaluated();
        let r = g.handle.blocks(&limits, &body, &mut meter);
        (r, g.handle.blocks_evaluated() - before, g.kind, meter)
    })
    .await
    .map_err(ApiError::internal)?;
    let (reply, n, kind, meter) = res;
    let micros = t.elapsed().as_micros() as u64;
    match reply {
        Ok(bytes) => {
            Metrics::add(&s.metrics.leaf_blocks, n as u64);
            Metrics::add(&s.metrics.eval_micros, micros);
            // LEAKAGE: [block-audit] which leaf blocks (count here; ids in the request) each round asks for.
            s.audit.record(
                "blocks",
                serde_json::json!({ "sub": pass.subject(), "session": pass.session_hex(), "query": &qid[..qid.len().min(8)], "kind": kind, "blocks": n, "micros": micros }),
            );
            Ok(binary(bytes, &meter))
        }
        Err(e) => {
            let e = ApiError::from(e);
            audit_refusal(&s, "blocks_refused", &pass, e.code);
            Err(err(&s, e))
        }
    }
}

/// Runs a payload request on the live query (off the executor: the charge is a durable write),
/// and counts and audits what it served. Both payload routes go through here.
async fn serve_payloads(
    s: &Arc<AppState>,
    pass: &Pass,
    qid: &str,
    body: Vec<u8>,
) -> Result<(Vec<u8>, StoreMeter), ApiError> {
    let q = s.queries.get(pass, qid)?;
    let mut meter = s.auth.meter(pass);
    let (r, meter) = tokio::task::spawn_blocking(move || {
        let mut g = q.blocking_lock();
        let r = g.handle.payloads(&body, &mut meter);
        (r, meter)
    })
    .await
    .map_err(ApiError::internal)?;
    let served = r.map_err(|e| {
        let e = ApiError::from(e);
        audit_refusal(s, "payload_refused", pass, e.code);
        e
    })?;
    Metrics::add(&s.metrics.payloads, served.records.len() as u64);
    // LEAKAGE: [payload-fetch] which records' payloads a doctor fetches (the result set's ids).
    s.audit.record(
        "payloads",
        serde_json::json!({
            "sub": pass.subject(), "session": pass.session_hex(), "query": &qid[..qid.len().min(8)],
            "records": served.records.iter().map(|r| format!("{r:016x}")).collect::<Vec<_>>(),
        }),
    );
    Ok((served.reply, meter))
}

/// The payloads of a result set, in one round trip.
async fn payloads(
    State(s): State<Arc<AppState>>,
    Ids((id, qid)): Ids<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let pass = authorize(&s, req.headers(), &id).map_err(|e| err(&s, e))?;
    let _turn = match admit(&s, &pass) {
        Ok(turn) => turn,
        Err(e) => return Err(drained(&s, req, s.limits.max_small_body, e).await),
    };
    let body = read_body(&s, req, s.limits.max_small_body, OCTET)
        .await
        .map_err(|e| err(&s, e))?;
    let (bytes, meter) = serve_payloads(&s, &pass, &qid, body.to_vec())
        .await
        .map_err(|e| err(&s, e))?;
    Ok(binary(bytes, &meter))
}

/// One payload (the single form of [`payloads`]), bounded, charged and audited the same way.
async fn payload(
    State(s): State<Arc<AppState>>,
    Ids((id, qid, rid)): Ids<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pass = authorize(&s, &headers, &id).map_err(|e| err(&s, e))?;
    let _turn = admit(&s, &pass)?;
    let rid = u64::from_str_radix(&rid, 16).map_err(|_| {
        err(
            &s,
            ApiError::new("unreachable_record", "malformed record id"),
        )
    })?;
    let body = postcard::to_allocvec(&PayloadRequest { records: vec![rid] })
        .map_err(ApiError::internal)?;
    let (bytes, meter) = serve_payloads(&s, &pass, &qid, body)
        .await
        .map_err(|e| err(&s, e))?;
    let mut served: PayloadReply = postcard::from_bytes(&bytes).map_err(ApiError::internal)?;
    let p = served
        .payloads
        .pop()
        .ok_or_else(|| ApiError::internal("empty payload reply"))?;
    Ok(binary(p.sealed, &meter))
}

async fn end_query(
    State(s): State<Arc<AppState>>,
    Ids((id, qid)): Ids<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let pass = authorize(&s, &headers, &id).map_err(|e| err(&s, e))?;
    s.queries.get(&pass, &qid).map_err(|e| err(&s, e))?;
    s.queries.remove(&qid);
    Ok(StatusCode::NO_CONTENT)
}
