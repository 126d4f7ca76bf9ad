//! The blindkd query server: hosts masked indexes blind and runs the engine's query protocol over
//! HTTP (DESIGN §6). Built **without** the engine's key-holding `client` feature: nothing here can
//! name a secret key type, decrypt, or unmask.
//!
//! Layering: `routes` (HTTP only) → `auth` (tokens → sessions → [`auth::Pass`]) → the engine's
//! [`HostedIndex`] / [`QueryHandle`] state machines.

pub mod audit;
pub mod auth;
pub mod error;
pub mod metrics;
mod routes;

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
        }
    }
}

/// Server configuration.
pub struct ServerConfig {
    /// Index files to host.
    pub indexes: Vec<PathBuf>,
    /// Pinned issuer keys.
    pub issuers: Issuers,
    /// Revocation list (one hex `cti` per line); re-read when it changes.
    pub revoked: Option<PathBuf>,
    /// Audit log file (JSON lines). Audit lines also go to the `audit` tracing target.
    pub audit: Option<PathBuf>,
    /// Limits.
    pub limits: ServerLimits,
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
}

impl AppState {
    /// Loads and validates every index (fully, before serving) and builds the state.
    pub fn new(cfg: ServerConfig) -> anyhow::Result<Arc<Self>> {
        let mut indexes = HashMap::new();
        for p in &cfg.indexes {
            let idx = blindkd_engine::protocol::open_index(p)
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
        Self::from_indexes(indexes, cfg.issuers, cfg.revoked, cfg.audit, cfg.limits)
    }

    /// Builds the state from indexes already in memory (tests).
    pub fn from_indexes(
        indexes: HashMap<IndexId, Arc<dyn HostedIndex>>,
        issuers: Issuers,
        revoked: Option<PathBuf>,
        audit: Option<PathBuf>,
        limits: ServerLimits,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(AppState {
            indexes,
            auth: auth::Auth::new(issuers, revoked),
            gate: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
            waiting: std::sync::atomic::AtomicUsize::new(0),
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

/// Serves until `shutdown` resolves; returns once in-flight requests have drained (at most 30 s).
///
/// A hand-written accept loop rather than `axum::serve`: hyper then gets a timer, so slow or
/// stalled request *headers* are cut off after `request_timeout` (slowloris); bodies are bounded
/// by `read_body`'s deadline.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    let header_timeout = state.limits.request_timeout;
    let router = app(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let mut builder = Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let svc = TowerToHyperService::new(router.clone());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("shut down cleanly"),
        _ = tokio::time::sleep(Duration::from_secs(30)) => tracing::warn!("shut down with connections still open after 30 s"),
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

/// Entry point for `blindkd serve` and the `blindkd-server` binary.
pub async fn run(cfg: ServerConfig, listen: SocketAddr) -> anyhow::Result<()> {
    let state = AppState::new(cfg)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    serve(listener, state, shutdown_signal()).await
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
    /// Revocation list (hex token ids, one per line); re-read when it changes.
    #[arg(long)]
    pub revoked: Option<PathBuf>,
    /// Append audit lines (JSON) to this file.
    #[arg(long)]
    pub audit: Option<PathBuf>,
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
            limits: ServerLimits {
                max_concurrent: self.max_concurrent.max(1),
                ..ServerLimits::default()
            },
        })
    }
}

/// Initialises logging (RUST_LOG, default info).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
    rt.block_on(run(cfg, args.serve.listen))
}
