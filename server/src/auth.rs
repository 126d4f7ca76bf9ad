//! Tokens → sessions → a typed [`Pass`]. Handlers that touch an index take a `Pass`, and only
//! [`Auth::open_session`] / [`Auth::authorize`] can make one, so an unauthenticated call does not
//! compile.
//!
//! What must outlive the process (budget use, consumed nonces, revocations, the nonce MAC key)
//! lives in the [`TokenStore`]; sessions and live queries are short-lived and stay in memory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use blindkd_engine::index::IndexId;
use blindkd_engine::protocol::{Access, HostedIndex, Meter, QueryHandle};
use blindkd_engine::token::{self, Claims, Issuers, QueryKind as TokenKind};
use rand::RngCore;

use crate::store::{StoreError, TokenStore};
use crate::ApiError;

/// Proof that the bearer holds a live session for `index_id` with these rights.
/// Private fields: only this module constructs it.
#[derive(Clone, Debug)]
pub struct Pass {
    session: [u8; 16],
    index_id: IndexId,
    access: Access,
    cti: [u8; 16],
    exp: i64,
    subject: String,
    budget: u64,
}

impl Pass {
    /// The index the session is bound to.
    pub fn index_id(&self) -> &IndexId {
        &self.index_id
    }
    /// What the token allows.
    pub fn access(&self) -> &Access {
        &self.access
    }
    /// The token id (for budgets and audit).
    pub fn cti(&self) -> &[u8; 16] {
        &self.cti
    }
    /// The token subject (the doctor), for audit.
    pub fn subject(&self) -> &str {
        &self.subject
    }
    /// Session id (hex), for audit.
    pub fn session_hex(&self) -> String {
        hex::encode(&self.session[..4])
    }
    /// Whether this pass's session owns a query.
    pub(crate) fn session_id(&self) -> [u8; 16] {
        self.session
    }
}

struct Session {
    pass: Pass,
    expires: Instant,
}

/// Session and token bookkeeping.
pub struct Auth {
    issuers: Issuers,
    store: Arc<dyn TokenStore>,
    nonce_key: [u8; 32],
    sessions: Mutex<HashMap<[u8; 16], Session>>,
    revoked: Mutex<crate::revocation::Revocations>,
    in_flight: Mutex<HashMap<[u8; 16], usize>>,
    last_purge: Mutex<Instant>,
}

/// How long a PoP nonce stays valid.
pub const NONCE_TTL: Duration = Duration::from_secs(120);
/// How far in the future a nonce's time may be (clock skew between replicas).
const NONCE_SKEW: i64 = 5;
/// Domain separation of the nonce MAC.
const NONCE_DOMAIN: &[u8] = b"blindkd/v1/nonce";

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A store failure as an API error: an exhausted budget is the client's, anything else is ours.
pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Exhausted { left, wanted } => ApiError::new(
            "budget_exhausted",
            format!(
                "the token's budget is used up ({left} units left, this needs {wanted}); ask the \
                 hospital for a new access token"
            ),
        ),
        StoreError::Backend(d) => ApiError::internal(d),
    }
}

/// The outcome of a session request.
pub struct Opened {
    /// Session token for `Authorization: Bearer`.
    pub session: String,
    /// Claims of the token.
    pub claims: Claims,
    /// Budget units left.
    pub budget_left: u64,
    /// The session's public-key seed.
    pub pk_seed: [u8; 32],
}

/// A refused session request. `cti` is set only when the token's signature verified, so the audit
/// log never carries a token id an attacker made up.
pub struct Refused {
    /// Why.
    pub error: ApiError,
    /// The verified token id, if the refusal came after the signature check.
    pub cti: Option<[u8; 16]>,
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Self {
        Refused { error, cti: None }
    }
}

impl Auth {
    /// New bookkeeping with pinned issuers, the signed revocation lists (each must exist and
    /// verify) and the token store.
    pub fn new(
        issuers: Issuers,
        revoked: &[PathBuf],
        store: Arc<dyn TokenStore>,
        limits: &crate::ServerLimits,
    ) -> anyhow::Result<Self> {
        let nonce_key = store.secret("nonce-mac")?;
        let revocations = crate::revocation::Revocations::load(
            revoked,
            &issuers,
            &store,
            limits.revocation_recheck,
        )?;
        Ok(Auth {
            issuers,
            store,
            nonce_key,
            sessions: Mutex::default(),
            revoked: Mutex::new(revocations),
            in_flight: Mutex::default(),
            last_purge: Mutex::new(Instant::now()),
        })
    }

    fn nonce_mac(&self, body: &[u8]) -> [u8; 16] {
        let mut h = blake3::Hasher::new_keyed(&self.nonce_key);
        h.update(NONCE_DOMAIN);
        h.update(body);
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }

    /// A fresh nonce for proof of possession. Stateless: `time ‖ random ‖ MAC(time ‖ random)`
    /// under a server key, so issuing one stores nothing; only a nonce that arrives with a valid
    /// token and proof is recorded, as used.
    pub fn nonce(&self) -> [u8; 32] {
        let mut n = [0u8; 32];
        n[..8].copy_from_slice(&now_unix().to_be_bytes());
        rand::rng().fill_bytes(&mut n[8..16]);
        let mac = self.nonce_mac(&n[..16]);
        n[16..].copy_from_slice(&mac);
        n
    }

    /// Checks a nonce's MAC and age; returns when it expires.
    fn check_nonce(&self, nonce: &[u8]) -> Result<([u8; 32], i64), ApiError> {
        let bad = || ApiError::new("unknown_nonce", "not a nonce from POST /v1/nonces");
        let n: [u8; 32] = nonce.try_into().map_err(|_| bad())?;
        let mac = self.nonce_mac(&n[..16]);
        // Constant time: the comparison must not tell a forger how many bytes were right.
        let diff = mac
            .iter()
            .zip(&n[16..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(bad());
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&n[..8]);
        let issued = i64::from_be_bytes(t);
        let now = now_unix();
        let exp = issued.saturating_add(NONCE_TTL.as_secs() as i64);
        if issued > now + NONCE_SKEW || exp < now {
            return Err(ApiError::new(
                "unknown_nonce",
                "the nonce expired; fetch a new one",
            ));
        }
        Ok((n, exp))
    }

    fn is_revoked(&self, cti: &[u8; 16]) -> Result<bool, ApiError> {
        lock(&self.revoked)?.is_revoked(cti, &self.store)
    }

    /// Verifies token, time claims, audience, the issuer the index names (none, for a format 1
    /// index: any pinned issuer), revocation, PoP and nonce, then opens a session.
    pub fn open_session(
        &self,
        hosted: &HashMap<IndexId, Arc<dyn HostedIndex>>,
        token_text: &str,
        nonce: &[u8],
        pop: &[u8],
        limits: &crate::ServerLimits,
    ) -> Result<Opened, Refused> {
        self.purge_now_and_then();
        // Cheap checks first: a forged nonce costs one MAC, never a signature verification.
        let (nonce_arr, nonce_exp) = self.check_nonce(nonce)?;
        // The audience names the index; accept any hosted one.
        let unverified = token::decode_unverified(token_text).map_err(ApiError::from)?;
        let (aud_id, index) = blindkd_engine::index::parse_id(&unverified.aud)
            .ok()
            .and_then(|id| Some((id, hosted.get(&id)?)))
            .ok_or_else(|| {
                ApiError::new(
                    "wrong_audience",
                    "the token is for an index this server does not host",
                )
            })?;
        let claims = token::verify(token_text, &self.issuers, now_unix(), &unverified.aud)
            .map_err(ApiError::from)?;
        let refused = |error: ApiError| Refused {
            error,
            cti: Some(claims.cti),
        };
        // A second hospital's pinned key must not mint tokens for this one's index.
        let index_issuer = &index.header().issuer;
        if !index_issuer.is_empty() && claims.iss != *index_issuer {
            return Err(refused(ApiError::new(
                "issuer_not_allowed",
                format!(
                    "tokens for this index come from {index_issuer:?}, not {:?}",
                    claims.iss
                ),
            )));
        }
        if self.is_revoked(&claims.cti).map_err(refused)? {
            return Err(refused(ApiError::new(
                "revoked",
                "this token has been revoked; ask the hospital for a new access token",
            )));
        }
        if pop.is_empty() {
            return Err(refused(ApiError::new(
                "missing_pop",
                "a proof-of-possession signature is required",
            )));
        }
        token::verify_pop(&claims.cnf, nonce, token_text, pop)
            .map_err(|e| refused(ApiError::from(e)))?;
        // Only now, with a valid token and proof, is the nonce recorded (as used, durably).
        if !self
            .store
            .consume_nonce(&nonce_arr, nonce_exp)
            .map_err(|e| refused(store_error(e)))?
        {
            return Err(refused(ApiError::new(
                "replayed_nonce",
                "this nonce was used already; fetch a new one",
            )));
        }
        let budget = u64::from(claims.scope.budget);
        let used = self
            .store
            .used(&claims.cti)
            .map_err(|e| refused(store_error(e)))?;
        let mut sid = [0u8; 16];
        rand::rng().fill_bytes(&mut sid);
        // The session public key's `a` comes from this seed, never from the client.
        let mut pk_seed = [0u8; 32];
        rand::rng().fill_bytes(&mut pk_seed);
        let scope = &claims.scope;
        let pass = Pass {
            session: sid,
            index_id: aud_id,
            access: Access {
                classes: scope.classes.clone(),
                knn: scope.kinds.contains(&TokenKind::Knn),
                range: scope.kinds.contains(&TokenKind::Range),
                max_k: scope.max_k,
                max_radius: scope.max_radius,
                max_blocks: scope.max_blocks,
                max_results: scope.max_results,
                pk_seed,
            },
            cti: claims.cti,
            exp: claims.exp,
            subject: claims.sub.clone(),
            budget,
        };
        let ttl_left = (claims.exp - now_unix()).max(0) as u64;
        let ttl = limits.session_ttl.min(Duration::from_secs(ttl_left));
        let mut sessions = lock(&self.sessions).map_err(refused)?;
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        // Live sessions per token are bounded; closed and expired ones free their slot, so a doctor
        // running one query after another never runs out while the budget lasts.
        let live = sessions
            .values()
            .filter(|s| s.pass.cti == claims.cti)
            .count();
        if live >= limits.max_sessions_per_token as usize {
            return Err(refused(ApiError::new(
                "too_many_sessions",
                format!("this token already has {live} live sessions; close one or wait for one to expire"),
            )));
        }
        sessions.insert(
            sid,
            Session {
                pass,
                expires: now + ttl,
            },
        );
        Ok(Opened {
            session: hex::encode(sid),
            claims,
            budget_left: budget.saturating_sub(used),
            pk_seed,
        })
    }

    /// Resolves `Authorization: Bearer <session>` into a [`Pass`].
    pub fn authorize(&self, header: Option<&str>) -> Result<Pass, ApiError> {
        let h = header.ok_or_else(|| {
            ApiError::new("unauthenticated", "missing Authorization: Bearer <session>")
        })?;
        let sid = h
            .strip_prefix("Bearer ")
            .and_then(|s| hex::decode(s.trim()).ok())
            .and_then(|v| <[u8; 16]>::try_from(v).ok())
            .ok_or_else(|| ApiError::new("unknown_session", "malformed session id"))?;
        let pass = {
            let sessions = lock(&self.sessions)?;
            let s = sessions
                .get(&sid)
                .ok_or_else(|| ApiError::new("unknown_session", "no such session"))?;
            if s.expires <= Instant::now() {
                return Err(ApiError::new(
                    "session_expired",
                    "the session expired; open a new one",
                ));
            }
            s.pass.clone()
        };
        // A revocation must cut off live sessions too, not only new ones.
        if self.is_revoked(&pass.cti)? {
            return Err(ApiError::new(
                "revoked",
                "this token has been revoked; ask the hospital for a new access token",
            ));
        }
        Ok(pass)
    }

    /// A meter that charges `pass`'s token in the store.
    pub fn meter(&self, pass: &Pass) -> StoreMeter {
        StoreMeter {
            store: self.store.clone(),
            cti: pass.cti,
            exp: pass.exp,
            budget: pass.budget,
            left: None,
        }
    }

    /// Counts a request of `pass`'s token in flight (until the guard drops); refuses past `max`,
    /// so one token cannot hold every evaluation slot or read many large bodies at once.
    pub fn admit_request(&self, pass: &Pass, max: usize) -> Result<TokenRequest<'_>, ApiError> {
        let mut m = lock(&self.in_flight)?;
        let n = m.entry(pass.cti).or_insert(0);
        if *n >= max {
            return Err(ApiError::new(
                "overloaded",
                format!("this token already has {max} requests in flight; retry shortly"),
            ));
        }
        *n += 1;
        Ok(TokenRequest {
            auth: self,
            cti: pass.cti,
        })
    }

    /// Ends the pass's session (the client is done).
    pub fn close_session(&self, pass: &Pass) -> Result<(), ApiError> {
        lock(&self.sessions)?.remove(&pass.session);
        Ok(())
    }

    /// Live session count (metrics).
    pub fn session_count(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Drops expired usage and nonces from the store, at most once a minute.
    fn purge_now_and_then(&self) {
        let Ok(mut last) = self.last_purge.lock() else {
            return;
        };
        if last.elapsed() < Duration::from_secs(60) {
            return;
        }
        *last = Instant::now();
        if let Err(e) = self.store.purge(now_unix()) {
            tracing::warn!(error = %e, "token store purge failed");
        }
    }
}

/// A request of one token in flight.
pub struct TokenRequest<'a> {
    auth: &'a Auth,
    cti: [u8; 16],
}

impl Drop for TokenRequest<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.auth.in_flight.lock() {
            if let Some(n) = m.get_mut(&self.cti) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.cti);
                }
            }
        }
    }
}

/// Charges a token's budget in the store; remembers what is left for the reply header.
pub struct StoreMeter {
    store: Arc<dyn TokenStore>,
    cti: [u8; 16],
    exp: i64,
    budget: u64,
    /// Units left after the last charge.
    pub left: Option<u64>,
}

impl Meter for StoreMeter {
    fn charge(&mut self, units: u64) -> blindkd_engine::Result<()> {
        // LEAKAGE: [budget-use] units each token spends, when, and how much is left.
        match self.store.charge(&self.cti, self.exp, self.budget, units) {
            Ok(left) => {
                self.left = Some(left);
                Ok(())
            }
            Err(StoreError::Exhausted { left, wanted }) => {
                self.left = Some(left);
                Err(blindkd_engine::Error::Denied {
                    code: "budget_exhausted",
                    detail: format!(
                        "the token's budget is used up ({left} units left, this needs {wanted}); \
                         ask the hospital for a new access token"
                    ),
                })
            }
            Err(StoreError::Backend(d)) => Err(blindkd_engine::Error::Io {
                path: "token store".into(),
                source: std::io::Error::other(d),
            }),
        }
    }
}

/// A live query: its engine handle, owner session and expiry.
pub struct LiveQuery {
    /// Engine state.
    pub handle: Box<dyn QueryHandle>,
    /// Session that owns it (only it may continue the query).
    pub session: [u8; 16],
    /// Token of that session (per-token limits).
    pub cti: [u8; 16],
    /// Index.
    pub index_id: IndexId,
    /// Expiry.
    pub expires: Instant,
    /// Kind, for audit.
    pub kind: &'static str,
}

/// Live queries by id. The owner, index and expiry sit beside the lock, so they are checked even
/// while another request holds the query (a busy query is still only its session's).
#[derive(Default)]
pub struct Queries {
    map: Mutex<HashMap<[u8; 16], QueryEntry>>,
}

struct QueryEntry {
    session: [u8; 16],
    cti: [u8; 16],
    index_id: IndexId,
    expires: Instant,
    query: std::sync::Arc<tokio::sync::Mutex<LiveQuery>>,
}

impl Queries {
    /// Stores a new query; refuses when too many are live in all, or for this token.
    pub fn insert(&self, q: LiveQuery, max: usize, per_token: usize) -> Result<String, ApiError> {
        let mut map = lock(&self.map)?;
        let now = Instant::now();
        map.retain(|_, e| e.expires > now);
        let mine = map.values().filter(|e| e.cti == q.cti).count();
        if mine >= per_token {
            return Err(ApiError::new(
                "too_many_queries",
                format!("this token already has {mine} live queries; finish one first"),
            ));
        }
        if map.len() >= max {
            return Err(ApiError::new(
                "overloaded",
                "too many live queries; retry shortly",
            ));
        }
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        map.insert(
            id,
            QueryEntry {
                session: q.session,
                cti: q.cti,
                index_id: q.index_id,
                expires: q.expires,
                query: std::sync::Arc::new(tokio::sync::Mutex::new(q)),
            },
        );
        Ok(hex::encode(id))
    }

    /// Looks up a query owned by `pass`'s session.
    pub fn get(
        &self,
        pass: &Pass,
        qid: &str,
    ) -> Result<std::sync::Arc<tokio::sync::Mutex<LiveQuery>>, ApiError> {
        let id = hex::decode(qid)
            .ok()
            .and_then(|v| <[u8; 16]>::try_from(v).ok())
            .ok_or_else(|| ApiError::new("unknown_query", "malformed query id"))?;
        let map = lock(&self.map)?;
        let e = map
            .get(&id)
            .ok_or_else(|| ApiError::new("unknown_query", "no such query"))?;
        // Another session's query looks exactly like a missing one.
        if e.session != pass.session || e.index_id != pass.index_id {
            return Err(ApiError::new("unknown_query", "no such query"));
        }
        if e.expires <= Instant::now() {
            return Err(ApiError::new("unknown_query", "the query expired"));
        }
        Ok(e.query.clone())
    }

    /// Drops a query.
    pub fn remove(&self, qid: &str) {
        if let Some(id) = hex::decode(qid)
            .ok()
            .and_then(|v| <[u8; 16]>::try_from(v).ok())
        {
            if let Ok(mut m) = self.map.lock() {
                m.remove(&id);
            }
        }
    }

    /// Live query count (metrics).
    pub fn count(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, ApiError> {
    m.lock().map_err(|_| ApiError::internal("poisoned lock"))
}
