//! The doctor's client: opens a session with a QR access token and proof of possession, runs the
//! client query state machine (`blindkd-keys`) over HTTP, and opens results and payloads with the
//! key bundle. Secrets (device key, bundle, session key, the query) never leave this process.

use std::time::{Duration, Instant};

use blindkd_keys::owner::{BundleEntry, OpenedPayload};
use blindkd_keys::protocol::{
    new_query_client_with, BatchPolicy, QueryClient, QueryKeyPool, QueryKind, QueryStats, Step,
};
use blindkd_keys::token::DeviceKey;
use serde::{Deserialize, Serialize};

/// A client error: the server's `{code, message}`, transport trouble, or a local engine error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused with a stable code.
    #[error("server refused ({code}, HTTP {status}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable code.
        code: String,
        /// Message.
        message: String,
    },
    /// Could not reach the server or read its answer.
    #[error("transport: {0}")]
    Transport(String),
    /// Local engine error (bad input, wrong key, corrupt reply).
    #[error(transparent)]
    Engine(#[from] blindkd_engine::Error),
}

impl ClientError {
    /// The server's code, or `integrity` for a reply that failed verification (the one error a
    /// lying host gets, whatever it changed).
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            ClientError::Engine(blindkd_engine::Error::Integrity(_)) => Some("integrity"),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// An open session.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Session {
    /// Bearer session id.
    pub session: String,
    /// Index id (hex).
    pub index_id: String,
    /// Classes the token allows.
    pub classes: Vec<String>,
    /// kNN allowed.
    pub knn: bool,
    /// Range allowed.
    pub range: bool,
    /// Largest k.
    pub max_k: u32,
    /// Largest radius.
    pub max_radius: f64,
    /// Most leaf blocks one query may evaluate.
    pub max_blocks: u32,
    /// Most payloads one range query may fetch (kNN: k).
    pub max_results: u32,
    /// Units of work over the token's life (one per block evaluated, one per payload).
    pub budget: u32,
    /// Units left when the session opened.
    pub budget_left: u64,
    /// The server's seed for the session public key's `a` (hex).
    pub pk_seed: String,
    /// The classes the doctor's own token names (read locally from the token, not from the
    /// server): a query that names no class searches these, so a host cannot narrow it unseen.
    #[serde(skip, default)]
    pub token_classes: Vec<String>,
    /// Query keys made ahead of time for this session ([`Session::prepare_query_keys`]); a
    /// query without a ready key makes its own.
    #[serde(skip, default)]
    pub query_keys: Option<QueryKeyPool>,
}

impl Session {
    /// Starts making `count` query keys in the background for queries against `entry` in this
    /// session (issue 12: sealing leaves the critical path). Each key seals one query; the pool
    /// refills itself after each. Only mlhe has keys worth making ahead; other schemes ignore it.
    pub fn prepare_query_keys(&mut self, entry: &BundleEntry, count: usize) -> Result<()> {
        if !matches!(entry.scheme, blindkd_engine::index::SchemeParams::Mlhe(_)) {
            return Ok(());
        }
        let pool = QueryKeyPool::new(self.pk_seed_bytes()?, entry.schema.dim() + 1, count)?;
        pool.refill_in_background();
        self.query_keys = Some(pool);
        Ok(())
    }

    /// The server's seed for the session public key's `a`, decoded from [`Session::pk_seed`].
    pub fn pk_seed_bytes(&self) -> Result<[u8; 32]> {
        hex::decode(&self.pk_seed)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| ClientError::Transport("the session has no valid key seed".into()))
    }
}

/// One result row as the doctor sees it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ResultRow {
    /// Rank (1-based).
    pub rank: usize,
    /// Class.
    pub class: String,
    /// Opaque record id (hex).
    pub record_id: String,
    /// Exact squared distance on the encoded integers.
    pub d2: u128,
    /// Distance in user units.
    pub distance: f64,
    /// The opened payload, when fetched.
    pub payload: Option<OpenedPayload>,
}

/// A finished query.
#[derive(Clone, Debug, Serialize)]
pub struct QueryOutcome {
    /// Results in order.
    pub results: Vec<ResultRow>,
    /// Statistics.
    pub stats: QueryStats,
    /// Wall time, ms.
    pub elapsed_ms: f64,
}

/// HTTP client for one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    retries: u32,
    deadline: Duration,
}

#[derive(Deserialize)]
struct ApiErrorBody {
    code: String,
    message: String,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:8700`).
    pub fn new(base: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            http,
            retries: 20,
            deadline: Duration::from_secs(300),
        })
    }

    /// Every query must finish within `deadline` (default 300 s), whatever the host does.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    async fn send(&self, rb: impl Fn() -> reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let mut delay = Duration::from_millis(50);
        for attempt in 0.. {
            let resp = rb()
                .send()
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?;
            if resp.status().is_success() {
                return Ok(resp);
            }
            let status = resp.status().as_u16();
            // An error body is small; a host that sends more gets cut off, not buffered.
            let body = read_limited(resp, MAX_ERROR_BODY).await.unwrap_or_default();
            let (code, message) = match serde_json::from_slice::<ApiErrorBody>(&body) {
                Ok(b) => (b.code, b.message),
                Err(_) => (
                    "unknown".into(),
                    String::from_utf8_lossy(&body).into_owned(),
                ),
            };
            // Back-pressure: retry `overloaded` with bounded exponential backoff.
            if code == "overloaded" && attempt < self.retries {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
            return Err(ClientError::Api {
                status,
                code,
                message,
            });
        }
        unreachable!("the loop returns")
    }

    /// Opens a session: fetches a nonce, signs it with the device key (proof of possession).
    pub async fn open_session(&self, token_text: &str, device: &DeviceKey) -> Result<Session> {
        #[derive(Deserialize)]
        struct N {
            nonce: String,
        }
        let n: N = self
            .send(|| self.http.post(format!("{}/v1/nonces", self.base)))
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let nonce = hex::decode(&n.nonce).map_err(|e| ClientError::Transport(e.to_string()))?;
        let pop = device.sign_pop(&nonce, token_text);
        let body =
            serde_json::json!({ "token": token_text, "nonce": n.nonce, "pop": hex::encode(pop) });
        let mut session: Session = self
            .send(|| {
                self.http
                    .post(format!("{}/v1/sessions", self.base))
                    .json(&body)
            })
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        session.token_classes = blindkd_engine::token::decode_unverified(token_text)?
            .scope
            .classes;
        Ok(session)
    }

    /// Ends a session on the server (frees its slot; the token's budget is unaffected).
    pub async fn close_session(&self, session: &Session) -> Result<()> {
        self.send(|| {
            self.http
                .delete(format!("{}/v1/sessions", self.base))
                .bearer_auth(&session.session)
        })
        .await
        .map(|_| ())
    }

    /// Posts `body`; reads at most `limit` bytes of the reply (the engine knows the size of every
    /// honest reply in advance), so a host cannot make the client buffer without bound.
    async fn post_bin(
        &self,
        url: &str,
        session: &Session,
        body: Vec<u8>,
        limit: usize,
    ) -> Result<(Vec<u8>, Option<String>)> {
        let resp = self
            .send(|| {
                self.http
                    .post(url)
                    .bearer_auth(&session.session)
                    .header("content-type", "application/octet-stream")
                    .body(body.clone())
            })
            .await?;
        let qid = resp
            .headers()
            .get("bkd-query-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok((read_limited(resp, limit).await?, qid))
    }

    /// Runs one query end to end. `vector` is in user units; it is encoded with the bundle's schema
    /// and never leaves this process in the clear.
    pub async fn query(
        &self,
        session: &Session,
        entry: &BundleEntry,
        kind: QueryKind,
        vector: &[f64],
        classes: Vec<String>,
        fetch_payloads: bool,
    ) -> Result<QueryOutcome> {
        tokio::time::timeout(
            self.deadline,
            self.run_query(session, entry, kind, vector, classes, fetch_payloads),
        )
        .await
        .map_err(|_| {
            ClientError::Transport(format!(
                "the query did not finish within {} s",
                self.deadline.as_secs()
            ))
        })?
    }

    async fn run_query(
        &self,
        session: &Session,
        entry: &BundleEntry,
        kind: QueryKind,
        vector: &[f64],
        classes: Vec<String>,
        fetch_payloads: bool,
    ) -> Result<QueryOutcome> {
        let t = Instant::now();
        let q = entry.schema.encode(vector)?;
        // No class named: every class the token allows that the bundle opens, named explicitly,
        // so that the client knows exactly which classes the answer must cover.
        let classes = if classes.is_empty() {
            let mut c: Vec<String> = entry
                .keys
                .iter()
                .map(|(c, _)| c.clone())
                .filter(|c| session.token_classes.contains(c))
                .collect();
            c.sort();
            c
        } else {
            classes
        };
        let batch = BatchPolicy {
            max_blocks: session.max_blocks,
            ..BatchPolicy::default()
        };
        let seed = session.pk_seed_bytes()?;
        let mut client =
            new_query_client_with(entry, kind, &q, classes, batch, session.query_keys.as_ref())?;
        let (c, start) = blocking(client, move |c| c.start_request(&seed)).await?;
        client = c;
        let base = format!("{}/v1/indexes/{}/queries", self.base, session.index_id);
        let limit = client.reply_limit();
        let (reply, qid) = self.post_bin(&base, session, start, limit).await?;
        let qid = qid.ok_or_else(|| ClientError::Transport("reply without a query id".into()))?;
        let (c, mut step) = blocking(client, move |c| c.on_start(&reply)).await?;
        client = c;
        while let Step::Blocks(req) = step {
            let limit = client.reply_limit();
            let (reply, _) = self
                .post_bin(&format!("{base}/{qid}/blocks"), session, req, limit)
                .await?;
            let (c, s) = blocking(client, move |c| c.on_blocks(&reply)).await?;
            client = c;
            step = s;
        }
        // Payloads while the query lives: the server serves only records of blocks this query
        // evaluated, at most k (kNN) or the token's max_results (range), in one round trip.
        let mut payloads = if fetch_payloads {
            match client.payload_request()? {
                Some(req) => {
                    let limit = client.reply_limit();
                    let (reply, _) = self
                        .post_bin(&format!("{base}/{qid}/payloads"), session, req, limit)
                        .await?;
                    client.open_payloads(&reply)?
                }
                None => Default::default(),
            }
        } else {
            Default::default()
        };
        // Free the server's state; failure here does not affect the answer.
        let _ = self
            .http
            .delete(format!("{base}/{qid}"))
            .bearer_auth(&session.session)
            .send()
            .await;
        let hits = client.results();
        let results = hits
            .iter()
            .enumerate()
            .map(|(i, h)| ResultRow {
                rank: i + 1,
                class: h.class.clone(),
                record_id: format!("{:016x}", h.record_id),
                d2: h.d2,
                distance: entry.schema.decode_distance(h.d2),
                payload: payloads.remove(&h.record_id),
            })
            .collect();
        Ok(QueryOutcome {
            results,
            stats: client.stats().clone(),
            elapsed_ms: t.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// The largest error body read from a server.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Reads a response body, refusing one longer than `limit` (checked on the declared length and
/// again while streaming, so a lying `Content-Length` does not help).
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    let too_long = || {
        ClientError::Engine(blindkd_engine::Error::Integrity(format!(
            "the server's reply is longer than the {limit} bytes an honest reply can have"
        )))
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_long());
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ClientError::Transport(e.to_string()))?
    {
        if out.len() + chunk.len() > limit {
            return Err(too_long());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Runs client-side crypto off the async executor.
async fn blocking<T: Send + 'static>(
    mut c: Box<dyn QueryClient>,
    f: impl FnOnce(&mut dyn QueryClient) -> blindkd_engine::Result<T> + Send + 'static,
) -> Result<(Box<dyn QueryClient>, T)> {
    tokio::task::spawn_blocking(move || {
        let r = f(c.as_mut());
        r.map(|v| (c, v))
    })
    .await
    .map_err(|e| ClientError::Transport(e.to_string()))?
    .map_err(ClientError::from)
}
