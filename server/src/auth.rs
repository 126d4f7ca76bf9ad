//! Tokens → sessions → a typed [`Pass`]. Handlers that touch an index take a `Pass`, and only
//! [`Auth::authorize`] can make one, so an unauthenticated call does not compile.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use blindkd_engine::index::IndexId;
use blindkd_engine::protocol::{Access, QueryHandle};
use blindkd_engine::token::{self, Claims, Issuers, QueryKind as TokenKind};
use rand::RngCore;

use crate::ApiError;

/// Proof that the bearer holds a live session for `index_id` with these rights.
/// Private fields: only this module constructs it.
#[derive(Clone, Debug)]
pub struct Pass {
    session: [u8; 16],
    index_id: IndexId,
    access: Access,
    cti: [u8; 16],
    subject: String,
    budget: u32,
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
}

struct Session {
    pass: Pass,
    expires: Instant,
}

struct Revocation {
    path: Option<PathBuf>,
    modified: Option<SystemTime>,
    set: HashSet<[u8; 16]>,
}

struct TokenUse {
    queries: u32,
    exp: i64,
}

/// Session and nonce bookkeeping.
pub struct Auth {
    issuers: Issuers,
    sessions: Mutex<HashMap<[u8; 16], Session>>,
    nonces: Mutex<HashMap<[u8; 32], Instant>>,
    revoked: Mutex<Revocation>,
    usage: Mutex<HashMap<[u8; 16], TokenUse>>,
}

/// How long a PoP nonce stays valid.
const NONCE_TTL: Duration = Duration::from_secs(120);
/// Most outstanding nonces (bounds memory under a nonce flood).
const MAX_NONCES: usize = 100_000;

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The outcome of a session request, for audit.
pub struct Opened {
    /// Session token for `Authorization: Bearer`.
    pub session: String,
    /// Claims of the token.
    pub claims: Claims,
}

impl Auth {
    /// New bookkeeping with pinned issuers and an optional revocation list.
    pub fn new(issuers: Issuers, revoked: Option<PathBuf>) -> Self {
        Auth {
            issuers,
            sessions: Mutex::default(),
            nonces: Mutex::default(),
            revoked: Mutex::new(Revocation {
                path: revoked,
                modified: None,
                set: HashSet::new(),
            }),
            usage: Mutex::default(),
        }
    }

    /// A fresh single-use nonce for proof of possession.
    pub fn nonce(&self) -> Result<[u8; 32], ApiError> {
        let mut n = [0u8; 32];
        rand::rng().fill_bytes(&mut n);
        let mut map = lock(&self.nonces)?;
        let now = Instant::now();
        map.retain(|_, exp| *exp > now);
        if map.len() >= MAX_NONCES {
            return Err(ApiError::new("overloaded", "too many outstanding nonces"));
        }
        map.insert(n, now + NONCE_TTL);
        Ok(n)
    }

    fn reload_revocations(&self) -> Result<(), ApiError> {
        let mut r = lock(&self.revoked)?;
        let Some(path) = r.path.clone() else {
            return Ok(());
        };
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified == r.modified {
            return Ok(());
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut set = HashSet::new();
                for line in text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                {
                    let hex_id = line.split_whitespace().next().unwrap_or("");
                    match hex::decode(hex_id)
                        .ok()
                        .and_then(|v| <[u8; 16]>::try_from(v).ok())
                    {
                        Some(id) => {
                            set.insert(id);
                        }
                        None => {
                            tracing::warn!(path = %path.display(), "ignoring a malformed revocation line")
                        }
                    }
                }
                tracing::info!(path = %path.display(), revoked = set.len(), "revocation list loaded");
                r.set = set;
                r.modified = modified;
            }
            // No list yet: nothing revoked.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && r.modified.is_none() => {}
            // A list that vanished or became unreadable keeps the last set.
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "revocation list unreadable; keeping the last one")
            }
        }
        Ok(())
    }

    /// Verifies token, time claims, audience, revocation, PoP and nonce freshness, then opens a session.
    pub fn open_session(
        &self,
        index_ids: &[IndexId],
        token_text: &str,
        nonce: &[u8],
        pop: &[u8],
        limits: &crate::ServerLimits,
    ) -> Result<Opened, ApiError> {
        // The audience names the index; accept any hosted one.
        let unverified = token::decode_unverified(token_text)?;
        let aud_id = blindkd_engine::index::parse_id(&unverified.aud)
            .ok()
            .filter(|id| index_ids.contains(id))
            .ok_or_else(|| {
                ApiError::new(
                    "wrong_audience",
                    "the token is for an index this server does not host",
                )
            })?;
        let claims = token::verify(token_text, &self.issuers, now_unix(), &unverified.aud)?;
        self.reload_revocations()?;
        if lock(&self.revoked)?.set.contains(&claims.cti) {
            return Err(ApiError::new("revoked", "this token has been revoked"));
        }
        if pop.is_empty() {
            return Err(ApiError::new(
                "missing_pop",
                "a proof-of-possession signature is required",
            ));
        }
        // The nonce must be one we issued and is consumed whatever the outcome.
        let n: [u8; 32] = nonce.try_into().map_err(|_| {
            ApiError::new("unknown_nonce", "nonce must be 32 bytes from /v1/nonces")
        })?;
        match lock(&self.nonces)?.remove(&n) {
            Some(exp) if exp > Instant::now() => {}
            Some(_) => return Err(ApiError::new("unknown_nonce", "the nonce expired")),
            None => {
                return Err(ApiError::new(
                    "replayed_nonce",
                    "unknown or already used nonce",
                ))
            }
        }
        token::verify_pop(&claims.cnf, nonce, token_text, pop)?;
        {
            // The query budget is per token, across its sessions.
            let mut usage = lock(&self.usage)?;
            let now = now_unix();
            usage.retain(|_, u| u.exp + 60 > now);
            usage.entry(claims.cti).or_insert(TokenUse {
                queries: 0,
                exp: claims.exp,
            });
        }
        let mut sid = [0u8; 16];
        rand::rng().fill_bytes(&mut sid);
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
            },
            cti: claims.cti,
            subject: claims.sub.clone(),
            budget: scope.budget,
        };
        let ttl_left = (claims.exp - now_unix()).max(0) as u64;
        let ttl = limits.session_ttl.min(Duration::from_secs(ttl_left));
        let mut sessions = lock(&self.sessions)?;
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        // Live sessions per token are bounded; closed and expired ones free their slot, so a doctor
        // running one query after another never runs out while the budget lasts.
        let live = sessions
            .values()
            .filter(|s| s.pass.cti == claims.cti)
            .count();
        if live >= limits.max_sessions_per_token as usize {
            return Err(ApiError::new(
                "too_many_sessions",
                format!("this token already has {live} live sessions; close one or wait for one to expire"),
            ));
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
        // A revocation must cut off live sessions too, not only new ones: pick up a changed list
        // here (one stat per request) before the check below.
        self.reload_revocations()?;
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
        if lock(&self.revoked)?.set.contains(&s.pass.cti) {
            return Err(ApiError::new("revoked", "this token has been revoked"));
        }
        Ok(s.pass.clone())
    }

    /// Charges one query against the token's budget.
    pub fn charge_query(&self, pass: &Pass) -> Result<(), ApiError> {
        let budget = pass.budget;
        let mut usage = lock(&self.usage)?;
        let u = usage
            .get_mut(&pass.cti)
            .ok_or_else(|| ApiError::new("unknown_session", "no usage record for this token"))?;
        if u.queries >= budget {
            return Err(ApiError::new(
                "budget_exhausted",
                "the token's query budget is used up",
            ));
        }
        u.queries += 1;
        Ok(())
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
}

/// A live query: its engine handle, owner session and expiry.
pub struct LiveQuery {
    /// Engine state.
    pub handle: Box<dyn QueryHandle>,
    /// Session that owns it (only it may continue the query).
    pub session: [u8; 16],
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
    index_id: IndexId,
    expires: Instant,
    query: std::sync::Arc<tokio::sync::Mutex<LiveQuery>>,
}

impl Queries {
    /// Stores a new query; refuses when too many are live.
    pub fn insert(&self, q: LiveQuery, max: usize) -> Result<String, ApiError> {
        let mut map = lock(&self.map)?;
        let now = Instant::now();
        map.retain(|_, e| e.expires > now);
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

impl Pass {
    /// Whether this pass's session owns a query.
    pub(crate) fn session_id(&self) -> [u8; 16] {
        self.session
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, ApiError> {
    m.lock().map_err(|_| ApiError::internal("poisoned lock"))
}
