//! The blindkd query server: hosts masked indexes blind and runs the engine's query protocol over
//! HTTP (DESIGN §6). It depends on the keyless `blindkd-engine` only, never on `blindkd-keys`:
//! nothing here can name a secret key type, decrypt, or unmask.
//!
//! Layering: `routes` (HTTP only) → `auth` (tokens → sessions → [`auth::Pass`]) → the engine's
//! [`HostedIndex`] / [`QueryHandle`] state machines.

pub mod audit;
pub mod auth;
mod conn;
pub mod error;
pub mod limit;
pub mod metrics;
mod revocation;
mod routes;
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use blindkd_engine::index::{id_hex, IndexId};
use blindkd_engine::protocol::{HostedIndex, Limits};
use blindkd_engine::token::Issuers;

pub use error::ApiError;

/// Server limits. Every one is enforced and returns its own error code.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Largest body of a query-start request (the sealed query: ~2 MB at d = 10 for mlhe).
    pub max_query_body: usize,
    /// Largest body of any other request.
    pub max_small_body: usize,
    /// Session lifetime.
    pub session_ttl: Duration,
    /// Query lifetime (between rounds).
    pub query_ttl: Duration,
    /// Sessions one token may open.
    pub max_sessions_per_token: u32,
    /// Queries evaluating at once; beyond it requests get 429 `overloaded` (back-pressure).
    pub max_concurrent: usize,
    /// Live queries held in memory in total.
    pub max_live_queries: usize,
    /// Per-query block limits.
    pub blocks: Limits,
    /// Request timeout (slow bodies included).
    pub request_timeout: Duration,
    /// How long a request may wait for an evaluation slot before 429 `overloaded`.
    pub queue_wait: Duration,
    /// Most requests waiting for an evaluation slot; beyond it, 429 `overloaded` at once.
    pub max_waiting: usize,
    /// Live queries one token may hold at once (across its sessions).
    pub max_live_queries_per_token: usize,
    /// Requests of one token in flight at once (bodies are read only after admission).
    pub max_in_flight_per_token: usize,
    /// Client connections admitted at once on the public listener; at the cap the longest-idle
    /// connection is closed to make room.
    pub max_connections: usize,
    /// A connection with no request in flight and no byte in or out for this long is closed
    /// (HTTP/1 keep-alive and HTTP/2 alike).
    pub idle_timeout: Duration,
    /// What one index file may ask for at load (classes, blocks, projected memory).
    pub index: blindkd_engine::index::LoadLimits,
    /// Revocation lists are re-read at least this often (and at once when a list's metadata
    /// changes).
    pub revocation_recheck: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_query_body: 16 << 20,
            max_small_body: 64 << 10,
            session_ttl: Duration::from_secs(15 * 60),
            query_ttl: Duration::from_secs(120),
            max_sessions_per_token: 16,
            max_concurrent: 4,
            max_live_queries: 256,
            blocks: Limits::default(),
            request_timeout: Duration::from_secs(30),
            queue_wait: Duration::from_secs(10),
            max_waiting: 256,
            max_live_queries_per_token: 8,
            max_in_flight_per_token: 4,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(30),
            revocation_recheck: Duration::from_secs(1),
            index: blindkd_engine::index::LoadLimits::default(),
        }
    }
}

/// Server configuration.
pub struct ServerConfig {
    /// Index files to host.
    pub indexes: Vec<PathBuf>,
    /// Pinned issuer keys.
    pub issuers: Issuers,
    /// Signed revocation lists, one per issuer (each must exist and verify; see `revocation`).
    pub revoked: Vec<PathBuf>,
    /// Audit log file (JSON lines). Audit lines also go to the `audit` tracing target.
    pub audit: Option<PathBuf>,
    /// Where token state lives (budgets, consumed nonces, revocations).
    pub state: StateConfig,
    /// Limits.
    pub limits: ServerLimits,
}

/// Where the server keeps the token state that must survive a restart.
#[derive(Clone, Debug)]
pub enum StateConfig {
    /// An embedded redb file (the default for `serve`).
    File(PathBuf),
    /// In memory: budgets and used nonces are forgotten on restart. Tests and demos only.
    Ephemeral,
}

impl StateConfig {
    /// Opens the store.
    pub fn open(&self) -> anyhow::Result<Arc<dyn store::TokenStore>> {
        Ok(match self {
            StateConfig::File(p) => {
                let s = store::RedbStore::open(p)?;
                tracing::info!(path = %p.display(), "token state opened");
                Arc::new(s)
            }
            StateConfig::Ephemeral => {
                tracing::warn!(
                    "token state is in memory only: budgets and used nonces reset on restart"
                );
                Arc::new(store::MemoryStore::default())
            }
        })
    }
}

/// Shared server state.
pub struct AppState {
    pub(crate) indexes: HashMap<IndexId, Arc<dyn HostedIndex>>,
    pub(crate) auth: auth::Auth,
    pub(crate) limits: ServerLimits,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) audit: audit::Audit,
    pub(crate) gate: Arc<tokio::sync::Semaphore>,
    /// Requests waiting for a `gate` permit (per server, bounded by `limits.max_waiting`).
    pub(crate) waiting: std::sync::atomic::AtomicUsize,
    pub(crate) queries: auth::Queries,
    pub(crate) conns: Arc<conn::Conns>,
    pub(crate) refusals: limit::RefusalLimiter,
}

impl AppState {
    /// Loads and validates every index (fully, before serving) and builds the state.
    pub fn new(cfg: ServerConfig) -> anyhow::Result<Arc<Self>> {
        let mut indexes = HashMap::new();
        for p in &cfg.indexes {
            let idx = blindkd_engine::protocol::open_index_with(p, &cfg.limits.index)
                .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", p.display()))?;
            let id = idx.header().index_id;
            tracing::info!(
                index = %id_hex(&id),
                path = %p.display(),
                scheme = %idx.header().scheme.id(),
                records = idx.header().records,
                "index loaded"
            );
            if indexes.insert(id, idx).is_some() {
                anyhow::bail!("index {} is given twice", id_hex(&id));
            }
        }
        let store = cfg.state.open()?;
        Self::with_store(
            indexes,
            cfg.issuers,
            &cfg.revoked,
            cfg.audit,
            cfg.limits,
            store,
        )
    }

    /// Builds the state from indexes already in memory, with in-memory token state (tests).
    pub fn from_indexes(
        indexes: HashMap<IndexId, Arc<dyn HostedIndex>>,
        issuers: Issuers,
        revoked: &[PathBuf],
        audit: Option<PathBuf>,
        limits: ServerLimits,
    ) -> anyhow::Result<Arc<Self>> {
        let store: Arc<dyn store::TokenStore> = Arc::new(store::MemoryStore::default());
        Self::with_store(indexes, issuers, revoked, audit, limits, store)
    }

    /// Builds the state from indexes already in memory and a token store.
    pub fn with_store(
        indexes: HashMap<IndexId, Arc<dyn HostedIndex>>,
        issuers: Issuers,
        revoked: &[PathBuf],
        audit: Option<PathBuf>,
        limits: ServerLimits,
        store: Arc<dyn store::TokenStore>,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(AppState {
            indexes,
            auth: auth::Auth::new(issuers, revoked, store, &limits)?,
            gate: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            conns: Arc::new(conn::Conns::new(
                limits.max_connections,
                limits.idle_timeout,
            )),
            refusals: limit::RefusalLimiter::default(),
            limits,
            metrics: metrics::Metrics::default(),
            audit: audit::Audit::open(audit)?,
            queries: auth::Queries::default(),
        }))
    }

    /// The audit lines written so far (kept in memory too, for `demo` and tests).
    pub fn audit_lines(&self) -> Vec<String> {
        self.audit.lines()
    }
}

/// The router (HTTP shell around the engine).
pub fn app(state: Arc<AppState>) -> axum::Router {
    routes::router(state)
}

/// The admin router: `/metrics` and `/healthz`, for a private listener.
pub fn admin_app(state: Arc<AppState>) -> axum::Router {
    routes::admin_router(state)
}

/// Serves the public API until `shutdown` resolves; returns once in-flight requests have drained
/// (at most 30 s).
///
/// A hand-written accept loop rather than `axum::serve`:
/// * hyper gets a timer, so slow or stalled request *headers* are cut off after `request_timeout`
///   (slowloris); bodies are bounded by `read_body`'s deadline;
/// * connections are capped (`max_connections`), idle ones close after `idle_timeout`, and at the
///   cap the longest-idle connection makes room for a newcomer (see `conn`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = app(state.clone());
    serve_loop(listener, router, state, "api", shutdown).await
}

/// Serves the admin router (`/metrics`, `/healthz`) until `shutdown` resolves. Bind it to a
/// private address (loopback by default).
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = admin_app(state.clone());
    serve_loop(listener, router, state, "admin", shutdown).await
}

async fn serve_loop(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    state: Arc<AppState>,
    name: &'static str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let conns: Arc<conn::Conns> = if name == "admin" {
        Arc::new(conn::Conns::new(64, state.limits.idle_timeout))
    } else {
        state.conns.clone()
    };
    let header_timeout = state.limits.request_timeout;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, listener = name, "listening");
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(handle) = conns.admit(&state.metrics) else {
                    // Every admitted connection is busy: drop the newcomer (it may retry).
                    metrics::Metrics::add(&state.metrics.connections_refused, 1);
                    continue;
                };
                let mut builder = Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let per_conn = handle.clone();
                let router = router.clone();
                // Counts the connection's requests in flight: a busy connection is never idle.
                let svc = TowerToHyperService::new(tower::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        let guard = per_conn.request();
                        req.extensions_mut().insert(limit::Peer(peer.ip()));
                        let router = router.clone();
                        async move {
                            let r = tower::ServiceExt::oneshot(router, req).await;
                            drop(guard);
                            r
                        }
                    },
                ));
                let io = TokioIo::new(conn::Tracked::new(stream, handle.clone()));
                let conns = conns.clone();
                let idle = conns.idle_timeout();
                tokio::spawn(async move {
                    let conn = builder.serve_connection_with_upgrades(io, svc);
                    let mut conn = std::pin::pin!(conn);
                    let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
                    let mut closing = false;
                    loop {
                        tokio::select! {
                            r = conn.as_mut() => {
                                if let Err(e) = r {
                                    tracing::debug!(error = %e, "connection ended with an error");
                                }
                                break;
                            }
                            _ = handle.close.notified(), if !closing => {
                                conn.as_mut().graceful_shutdown();
                                closing = true;
                            }
                            _ = tokio::time::sleep(tick), if !closing => {
                                if handle.idle_longer_than(idle) {
                                    conn.as_mut().graceful_shutdown();
                                    closing = true;
                                }
                            }
                        }
                    }
                    conns.ended(&handle);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    conns.close_all();
    let drained = async {
        while conns.count() > 0 {
            let wait = conns.ended.notified();
            if conns.count() == 0 {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), wait).await;
        }
    };
    tokio::select! {
        _ = drained => tracing::info!(listener = name, "shut down cleanly"),
        _ = tokio::time::sleep(Duration::from_secs(30)) => tracing::warn!(listener = name, "shut down with connections still open after 30 s"),
    }
    Ok(())
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Binds a listener with a deep accept queue (4096, the usual `somaxconn`): a burst of connections
/// waits in the kernel for the accept loop instead of having its SYNs dropped and retried a second
/// later.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}

/// Entry point for `blindkd serve` and the `blindkd-server` binary: the public API on `listen`,
/// `/metrics` and `/healthz` on `admin` (if any).
pub async fn run(
    cfg: ServerConfig,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let state = AppState::new(cfg)?;
    let listener = bind(listen).map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = match admin {
        Some(a) => {
            let l = bind(a).map_err(|e| anyhow::anyhow!("cannot listen on {a} (admin): {e}"))?;
            let mut rx = stop_rx.clone();
            Some(tokio::spawn(serve_admin(l, state.clone(), async move {
                let _ = rx.wait_for(|v| *v).await;
            })))
        }
        None => None,
    };
    let r = serve(listener, state.clone(), shutdown_signal()).await;
    let _ = stop_tx.send(true);
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    let (seq, head) = state.audit.head();
    tracing::info!(seq, head = %hex::encode(head), "audit log head at shutdown (an anchor for `blindkd audit verify --expect-head`)");
    r
}

/// Arguments of `blindkd serve` / `blindkd-server`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeCmd {
    /// Index files to host (repeatable).
    #[arg(long = "index", required = true)]
    pub indexes: Vec<PathBuf>,
    /// Pinned issuer public key file(s) (`hospital.pub`).
    #[arg(long = "issuer", required = true)]
    pub issuers: Vec<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8700")]
    pub listen: SocketAddr,
    /// Admin address for `/metrics` (and `/healthz`); keep it private. `off` disables it.
    #[arg(long, default_value = "127.0.0.1:8701", value_parser = parse_admin)]
    pub admin_listen: AdminListen,
    /// Token state file (budget use, consumed nonces, revocations); created 0600 if missing.
    #[arg(
        long,
        default_value = "blindkd-state.redb",
        conflicts_with = "ephemeral_state"
    )]
    pub state: PathBuf,
    /// Keep token state in memory only: budgets and used nonces reset on restart (demos, tests).
    #[arg(long)]
    pub ephemeral_state: bool,
    /// Client connections admitted at once (the longest-idle one makes room at the cap).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// The hospital's signed revocation list (repeatable, one per issuer). The server refuses to
    /// start if a list is missing or does not verify, and refuses tokens while one is broken.
    #[arg(long)]
    pub revoked: Vec<PathBuf>,
    /// Append audit lines (JSON) to this file.
    #[arg(long)]
    pub audit: Option<PathBuf>,
    /// Most server memory one index may take once loaded (`512MiB`, `16GiB`, …); `blindkd
    /// inspect` shows an index's projection. Checked before anything is allocated for it.
    #[arg(long, default_value = "16GiB", value_parser = parse_bytes)]
    pub max_index_memory: u64,
    /// Evaluations running at once (back-pressure beyond it).
    #[arg(long, default_value_t = 4)]
    pub max_concurrent: usize,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
}

/// Top-level arguments of the `blindkd-server` binary.
#[derive(clap::Parser, Debug)]
#[command(
    name = "blindkd-server",
    version,
    about = "blindkd query server: hosts masked indexes blind"
)]
pub struct ServeArgs {
    /// Server options.
    #[command(flatten)]
    pub serve: ServeCmd,
}

impl ServeCmd {
    /// The configuration these arguments describe.
    pub fn config(&self) -> anyhow::Result<ServerConfig> {
        let mut issuers = Issuers::new();
        for p in &self.issuers {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            blindkd_engine::token::parse_issuer_lines(&text, &mut issuers)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        }
        Ok(ServerConfig {
            indexes: self.indexes.clone(),
            issuers,
            revoked: self.revoked.clone(),
            audit: self.audit.clone(),
            state: if self.ephemeral_state {
                StateConfig::Ephemeral
            } else {
                StateConfig::File(self.state.clone())
            },
            limits: ServerLimits {
                max_concurrent: self.max_concurrent.max(1),
                max_connections: self.max_connections as usize,
                index: blindkd_engine::index::LoadLimits {
                    max_memory: self.max_index_memory,
                    ..Default::default()
                },
                ..ServerLimits::default()
            },
        })
    }

    /// The admin address, unless disabled.
    pub fn admin(&self) -> Option<SocketAddr> {
        match self.admin_listen {
            AdminListen::Off => None,
            AdminListen::At(a) => Some(a),
        }
    }
}

/// Where the admin listener binds.
#[derive(Clone, Copy, Debug)]
pub enum AdminListen {
    /// No admin listener.
    Off,
    /// This address.
    At(SocketAddr),
}

/// Parses a size: a number of bytes, or with a `KiB`, `MiB`, `GiB` or `TiB` suffix.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        u => {
            return Err(format!(
                "unknown unit `{u}` in `{s}` (use KiB, MiB, GiB or TiB)"
            ))
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|e| format!("`{s}` is not a size like 16GiB: {e}"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn parse_admin(s: &str) -> Result<AdminListen, String> {
    if s == "off" {
        return Ok(AdminListen::Off);
    }
    s.parse()
        .map(AdminListen::At)
        .map_err(|e| format!("`{s}` is not an address like 127.0.0.1:8701 (or `off`): {e}"))
}

/// Initialises logging (RUST_LOG, default info).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: redirected logs stay plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// Runs the server from parsed arguments (blocking; own runtime).
pub fn run_from_args(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.serve.log_json);
    let cfg = args.serve.config()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cfg, args.serve.listen, args.serve.admin()))
}
