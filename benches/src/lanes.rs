//! The lanes of the grid: one way each of answering the same query.

use std::collections::HashMap;
use std::num::NonZero;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context};
use blindkd_engine::encoding::QueryPlan;
use blindkd_engine::index::{id_hex, split_file, IndexId, SchemeParams, ServerIndex};
use blindkd_engine::tree::ShapeNode;
use blindkd_keys::crypto::{ClientScheme, RowDomain, RowRef};
use blindkd_keys::owner::{build_index, BuildOptions, Bundle, IndexRecord, OwnerKey, OwnerRecord};
use blindkd_keys::protocol::{
    new_query_client_with, open_index_bytes, run_in_process, Access, BatchPolicy, HostedIndex,
    Limits, QueryKeyPool, QueryKind, QueryStats,
};
use kiddo::immutable::float::kdtree::ImmutableKdTree;
use kiddo::SquaredEuclidean;

use crate::data::Data;

/// One query as every lane receives it.
pub struct Query<'a> {
    /// kNN or range (radius in user units).
    pub kind: QueryKind,
    /// Encoded query.
    pub q: &'a [i64],
    /// The same query in user units (the HTTP client encodes it itself).
    pub q_user: &'a [f64],
    /// Encoded squared-distance threshold of a range query.
    pub threshold: u128,
}

/// What one query cost and returned.
pub struct Sample {
    /// (record id, squared distance), sorted by (distance, id).
    pub hits: Vec<(u64, u128)>,
    /// Server compute, µs.
    pub server_us: f64,
    /// Client compute, µs.
    pub client_us: f64,
    /// Wall time of the whole query, µs.
    pub e2e_us: f64,
    /// Protocol statistics (zero for kiddo).
    pub stats: QueryStats,
}

/// A lane: answers queries.
pub trait Lane {
    /// Runs one query.
    fn run(&self, q: &Query<'_>) -> anyhow::Result<Sample>;
    /// kiddo's float results are checked up to ties at the last distance; every other lane exactly.
    fn exact_ties(&self) -> bool {
        true
    }
}

/// A built and loaded index.
pub struct Built {
    /// The index as the server hosts it.
    pub hosted: Arc<dyn HostedIndex>,
    /// The file bytes (kept only when a scan lane needs a typed copy).
    pub bytes: Option<Vec<u8>>,
    /// The owner's record of it.
    pub record: IndexRecord,
    /// A doctor's bundle for every class.
    pub bundle: Bundle,
    /// Opaque record ids in input order.
    pub ids: Vec<u64>,
    /// Owner side: tree + sealing + file encoding, seconds.
    pub build_s: f64,
    /// Server side: loading, validating, preparing (NTT) every block, seconds.
    pub load_s: f64,
    /// Index file size.
    pub file_bytes: u64,
}

/// Builds an index for `scheme` and loads it as the server would.
#[allow(clippy::too_many_arguments)]
pub fn build<S: ClientScheme>(
    scheme: &S,
    params: SchemeParams,
    owner: &mut OwnerKey,
    name: &str,
    data: &Data,
    leaf: usize,
    index_id: Option<IndexId>,
    keep_bytes: bool,
) -> anyhow::Result<Built> {
    let t = Instant::now();
    let out = build_index(
        scheme,
        params,
        owner,
        name,
        &data.schema,
        &data.records,
        &BuildOptions {
            leaf_size: leaf,
            progress: None,
            index_id,
        },
    )?;
    let bytes = out.to_file_bytes()?;
    let build_s = t.elapsed().as_secs_f64();
    let record = out.record.clone();
    let ids = out.record_ids.clone();
    drop(out);
    let t = Instant::now();
    let hosted = open_index_bytes(
        &bytes,
        Path::new("bench.bkd"),
        &blindkd_engine::index::LoadLimits::default(),
    )?;
    let load_s = t.elapsed().as_secs_f64();
    owner.indexes.push(record.clone());
    let bundle = owner.bundle(&record.classes, Some(&id_hex(&record.index_id)))?;
    Ok(Built {
        hosted,
        file_bytes: bytes.len() as u64,
        bytes: keep_bytes.then_some(bytes),
        record,
        bundle,
        ids,
        build_s,
        load_s,
    })
}

fn access(classes: Vec<String>) -> Access {
    Access {
        classes,
        knn: true,
        range: true,
        max_k: u32::MAX,
        max_radius: f64::INFINITY,
        max_blocks: u32::MAX,
        max_results: u32::MAX,
        pk_seed: blindkd_engine::crypto::FIXED_PK_SEED,
    }
}

const LIMITS: Limits = Limits {
    max_blocks_per_query: 1 << 20,
    max_blocks_per_request: 64,
};

/// The tree protocol in process: the client state machine (`blindkd-keys`) against the hosted
/// index.
///
/// mlhe queries take a query key made before the clock starts (a [`QueryKeyPool`] filled between
/// queries, issue 12): the timed path is the online one. `blindkd bench --micro` reports what a
/// key costs to make.
pub struct TreeLane<'a> {
    built: &'a Built,
    access: Access,
    keys: Option<QueryKeyPool>,
}

impl<'a> TreeLane<'a> {
    /// A tree lane over `built`.
    pub fn new(built: &'a Built) -> anyhow::Result<Self> {
        let access = access(built.hosted.class_names());
        let keys = premade_keys(built, access.pk_seed)?;
        Ok(TreeLane {
            access,
            built,
            keys,
        })
    }
}

/// A manual query-key pool for the bench's mlhe lanes (None for other schemes).
fn premade_keys(built: &Built, pk_seed: [u8; 32]) -> anyhow::Result<Option<QueryKeyPool>> {
    let entry = built
        .bundle
        .entries
        .first()
        .ok_or_else(|| anyhow!("empty bundle"))?;
    Ok(match entry.scheme {
        SchemeParams::Mlhe(_) => Some(QueryKeyPool::manual(pk_seed, entry.schema.dim() + 1, 1)?),
        _ => None,
    })
}

impl Lane for TreeLane<'_> {
    fn run(&self, q: &Query<'_>) -> anyhow::Result<Sample> {
        let entry = self
            .built
            .bundle
            .entries
            .first()
            .ok_or_else(|| anyhow!("empty bundle"))?;
        if let Some(k) = &self.keys {
            k.fill()?;
        }
        let t = Instant::now();
        let mut client = new_query_client_with(
            entry,
            q.kind,
            q.q,
            vec![],
            BatchPolicy::default(),
            self.keys.as_ref(),
        )?;
        let hits = run_in_process(&self.built.hosted, &self.access, &LIMITS, client.as_mut())?;
        let e2e_us = t.elapsed().as_secs_f64() * 1e6;
        let stats = client.stats().clone();
        Ok(Sample {
            hits: hits.iter().map(|h| (h.record_id, h.d2)).collect(),
            server_us: stats.server_micros as f64,
            client_us: stats.client_micros as f64,
            e2e_us,
            stats,
        })
    }
}

/// A linear scan: seal the query, evaluate **every** leaf block of the index (no pivot round, no
/// pruning), open every reply. The same sealed blocks and per-block costs as the tree lane.
pub struct ScanLane<S: ClientScheme> {
    server: ServerIndex<S>,
    keys: Vec<S::Key>,
    /// Per class, per leaf: the rows in block order.
    rows: Vec<Vec<Vec<RowRef>>>,
    weights: Vec<u32>,
    dim: usize,
}

impl<S: ClientScheme> ScanLane<S> {
    /// Loads a typed copy of `built` (its bytes must have been kept) for scheme `scheme`.
    pub fn new(scheme: S, built: &Built, owner: &OwnerKey, data: &Data) -> anyhow::Result<Self> {
        let bytes = built
            .bytes
            .as_ref()
            .ok_or_else(|| anyhow!("scan lane needs the index bytes"))?;
        let path = Path::new("bench-scan.bkd");
        let raw = split_file(bytes, path)?;
        let server = ServerIndex::from_body(
            scheme,
            raw.header.clone(),
            raw.body,
            path,
            &blindkd_engine::index::LoadLimits::default(),
        )?;
        let mut keys = Vec::new();
        let mut rows = Vec::new();
        for cls in &server.classes {
            let ck = owner.class_key(S::ID, &cls.class, &built.record.index_id);
            keys.push(server.scheme.derive_key(&ck, &built.record.index_id)?);
            let mut per_leaf = Vec::with_capacity(cls.shape.leaves.len());
            for (leaf, &node) in cls.shape.leaves.iter().enumerate() {
                let ShapeNode::Leaf {
                    first_slot,
                    rows: n,
                    ..
                } = cls.shape.nodes[node as usize]
                else {
                    anyhow::bail!("leaf list points at an inner node");
                };
                per_leaf.push(
                    (first_slot..first_slot + n as u64)
                        .zip(&cls.record_ids[leaf])
                        .map(|(id, &record)| RowRef {
                            domain: RowDomain::Leaf,
                            id,
                            record,
                        })
                        .collect(),
                );
            }
            rows.push(per_leaf);
        }
        Ok(ScanLane {
            dim: server.header.dim as usize,
            server,
            keys,
            rows,
            weights: data.schema.weights(),
        })
    }
}

impl<S: ClientScheme> Lane for ScanLane<S> {
    fn run(&self, q: &Query<'_>) -> anyhow::Result<Sample> {
        use rayon::prelude::*;
        let s = &self.server.scheme;
        let t0 = Instant::now();
        let plan = QueryPlan::new(q.q, &self.weights);
        let (session, sealed) =
            blindkd_keys::crypto::seal_framed(s, &blindkd_engine::crypto::FIXED_PK_SEED, &plan.w)?;
        let mut client_us = t0.elapsed().as_secs_f64() * 1e6;
        let mut stats = QueryStats {
            rounds: 1,
            bytes_up: sealed.len() as u64,
            ..QueryStats::default()
        };
        // Server: decode, then every leaf block of every class, in parallel.
        let t = Instant::now();
        let query = s.decode_query(&sealed, self.dim, &blindkd_engine::crypto::FIXED_PK_SEED)?;
        let replies: Vec<Vec<Vec<u8>>> = self
            .server
            .classes
            .iter()
            .map(|cls| {
                cls.leaves
                    .par_iter()
                    .map(|b| s.evaluate(&query, b))
                    .collect::<blindkd_engine::Result<Vec<_>>>()
            })
            .collect::<blindkd_engine::Result<_>>()?;
        let server_us = t.elapsed().as_secs_f64() * 1e6;
        // Client: open every reply (single-threaded, like the protocol client), keep the answer.
        let t = Instant::now();
        let mut all: Vec<(u128, u64)> = Vec::new();
        for (c, cls) in self.server.classes.iter().enumerate() {
            for (l, reply) in replies[c].iter().enumerate() {
                stats.bytes_down += reply.len() as u64;
                stats.leaf_blocks += 1;
                let d2 = s.open(&self.keys[c], &session, reply, &plan, &self.rows[c][l])?;
                stats.records_evaluated += d2.len() as u64;
                let ids = &cls.record_ids[l];
                match q.kind {
                    QueryKind::Knn { .. } => all.extend(d2.into_iter().zip(ids.iter().copied())),
                    QueryKind::Range { .. } => all.extend(
                        d2.into_iter()
                            .zip(ids.iter().copied())
                            .filter(|t| t.0 <= q.threshold),
                    ),
                }
            }
        }
        let hits = match q.kind {
            QueryKind::Knn { k } => crate::data::knn_truth(all, k as usize),
            QueryKind::Range { .. } => crate::data::range_truth(&all, u128::MAX),
        };
        client_us += t.elapsed().as_secs_f64() * 1e6;
        stats.rounds += 1;
        stats.server_micros = server_us as u64;
        stats.client_micros = client_us as u64;
        Ok(Sample {
            hits,
            server_us,
            client_us,
            e2e_us: t0.elapsed().as_secs_f64() * 1e6,
            stats,
        })
    }
}

/// kiddo 5 (`ImmutableKdTree<f64, u32, D, 32>`) over the encoded integers cast to f64: a plaintext
/// speed reference. Squared distances stay below 2^53, so its f64 distances are exact.
pub struct KiddoLane {
    inner: Box<dyn KiddoDyn>,
    ids: Vec<u64>,
    /// Seconds to build the kiddo tree.
    pub build_s: f64,
}

trait KiddoDyn {
    fn knn(&self, q: &[i64], k: usize) -> Vec<(u32, f64)>;
    fn range(&self, q: &[i64], thr: f64) -> Vec<(u32, f64)>;
}

struct KiddoK<const D: usize> {
    tree: ImmutableKdTree<f64, u32, D, 32>,
}

fn to_point<const D: usize>(x: &[i64]) -> [f64; D] {
    let mut p = [0.0; D];
    for (o, &v) in p.iter_mut().zip(x) {
        *o = v as f64;
    }
    p
}

impl<const D: usize> KiddoDyn for KiddoK<D> {
    fn knn(&self, q: &[i64], k: usize) -> Vec<(u32, f64)> {
        let Some(k) = NonZero::new(k) else {
            return Vec::new();
        };
        self.tree
            .nearest_n::<SquaredEuclidean>(&to_point::<D>(q), k)
            .into_iter()
            .map(|n| (n.item, n.distance))
            .collect()
    }
    fn range(&self, q: &[i64], thr: f64) -> Vec<(u32, f64)> {
        self.tree
            .within_unsorted::<SquaredEuclidean>(&to_point::<D>(q), thr)
            .into_iter()
            .map(|n| (n.item, n.distance))
            .collect()
    }
}

fn kiddo_build<const D: usize>(records: &[OwnerRecord]) -> Box<dyn KiddoDyn> {
    let pts: Vec<[f64; D]> = records.iter().map(|r| to_point::<D>(&r.x)).collect();
    Box::new(KiddoK::<D> {
        tree: ImmutableKdTree::new_from_slice(&pts),
    })
}

impl KiddoLane {
    /// Builds kiddo over the records; `None` for a dimension without a monomorphised tree.
    pub fn new(data: &Data, ids: &[u64]) -> Option<Self> {
        let d = data.schema.dim();
        let t = Instant::now();
        let r = &data.records;
        let inner = match d {
            1 => kiddo_build::<1>(r),
            2 => kiddo_build::<2>(r),
            3 => kiddo_build::<3>(r),
            4 => kiddo_build::<4>(r),
            5 => kiddo_build::<5>(r),
            6 => kiddo_build::<6>(r),
            8 => kiddo_build::<8>(r),
            10 => kiddo_build::<10>(r),
            12 => kiddo_build::<12>(r),
            13 => kiddo_build::<13>(r),
            16 => kiddo_build::<16>(r),
            20 => kiddo_build::<20>(r),
            24 => kiddo_build::<24>(r),
            30 => kiddo_build::<30>(r),
            32 => kiddo_build::<32>(r),
            _ => return None,
        };
        Some(KiddoLane {
            inner,
            ids: ids.to_vec(),
            build_s: t.elapsed().as_secs_f64(),
        })
    }
}

impl Lane for KiddoLane {
    fn run(&self, q: &Query<'_>) -> anyhow::Result<Sample> {
        let t = Instant::now();
        let raw = match q.kind {
            QueryKind::Knn { k } => self.inner.knn(q.q, k as usize),
            QueryKind::Range { .. } => self.inner.range(q.q, q.threshold as f64),
        };
        let us = t.elapsed().as_secs_f64() * 1e6;
        let mut hits: Vec<(u64, u128)> = raw
            .into_iter()
            .map(|(i, d)| (self.ids[i as usize], d as u128))
            .collect();
        hits.sort_unstable_by_key(|t| (t.1, t.0));
        Ok(Sample {
            stats: QueryStats {
                records_evaluated: hits.len() as u64,
                ..QueryStats::default()
            },
            hits,
            server_us: us,
            client_us: 0.0,
            e2e_us: us,
        })
    }
    fn exact_ties(&self) -> bool {
        false
    }
}

/// A server state hosting `built`, with `owner`'s issuer key pinned: what every loopback
/// benchmark server runs. Token state is durable, as with `serve`: a redb file in a temporary
/// directory that lives as long as the returned guard (every charge is an fsynced commit).
pub(crate) fn loopback_state(
    owner: &OwnerKey,
    built: &Built,
    limits: blindkd_server::ServerLimits,
) -> anyhow::Result<(Arc<blindkd_server::AppState>, tempfile::TempDir)> {
    use blindkd_keys::token::{IssuerKey, Issuers};
    let mut issuers = Issuers::new();
    issuers.insert(
        owner.issuer(),
        IssuerKey::from_bytes(owner.signing_seed()).public(),
    );
    let mut indexes = HashMap::new();
    indexes.insert(built.record.index_id, built.hosted.clone());
    let dir = tempfile::tempdir()?;
    let store = Arc::new(blindkd_server::store::RedbStore::open(
        &dir.path().join("state.redb"),
    )?);
    let state = blindkd_server::AppState::with_store(indexes, issuers, &[], None, limits, store)?;
    Ok((state, dir))
}

/// A token signed by `owner` for `built`'s index, bound to `device`, valid for `ttl` from now.
pub(crate) fn bench_token(
    owner: &OwnerKey,
    built: &Built,
    device: &blindkd_keys::token::DeviceKey,
    sub: &str,
    ttl: std::time::Duration,
    scope: blindkd_engine::token::Scope,
) -> anyhow::Result<String> {
    use blindkd_keys::token::{self, Claims, IssuerKey};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let claims = Claims {
        iss: owner.issuer().to_string(),
        sub: sub.into(),
        aud: id_hex(&built.record.index_id),
        iat: now,
        nbf: now,
        exp: now + ttl.as_secs() as i64,
        cti: token::random_cti(),
        scope,
        cnf: device.public().ed25519,
    };
    Ok(token::issue(
        &IssuerKey::from_bytes(owner.signing_seed()),
        &claims,
    )?)
}

/// End to end over loopback: the real HTTP server (`blindkd_server::serve` on 127.0.0.1:0) and the
/// real HTTP client, with a signed token, proof of possession and a session.
pub struct HttpLane<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: blindkd_client::Client,
    session: blindkd_client::Session,
    built: &'a Built,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _state_dir: tempfile::TempDir,
}

impl<'a> HttpLane<'a> {
    /// Starts a server hosting `built`, issues a token for a fresh device and opens a session.
    pub fn start(
        rt: &'a tokio::runtime::Runtime,
        owner: &OwnerKey,
        built: &'a Built,
    ) -> anyhow::Result<Self> {
        use blindkd_keys::token::{self, DeviceKey, Scope};
        let limits = blindkd_server::ServerLimits {
            max_query_body: 64 << 20,
            request_timeout: std::time::Duration::from_secs(600),
            query_ttl: std::time::Duration::from_secs(600),
            blocks: LIMITS,
            ..blindkd_server::ServerLimits::default()
        };
        let (state, state_dir) = loopback_state(owner, built, limits)?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(blindkd_server::serve(listener, state, async {
            let _ = stop_rx.await;
        }));
        let device = DeviceKey::random();
        let text = bench_token(
            owner,
            built,
            &device,
            "bench-doctor",
            std::time::Duration::from_secs(24 * 3600),
            Scope {
                kinds: vec![token::QueryKind::Knn, token::QueryKind::Range],
                max_k: u32::MAX,
                max_radius: 1e12,
                classes: built.record.classes.clone(),
                budget: u32::MAX,
                max_blocks: u32::MAX,
                max_results: u32::MAX,
            },
        )?;
        let client = blindkd_client::Client::new(&format!("http://{addr}"))?;
        let mut session = rt
            .block_on(client.open_session(&text, &device))
            .context("opening a session on the loopback server")?;
        session.query_keys = premade_keys(built, session.pk_seed_bytes()?)?;
        Ok(HttpLane {
            rt,
            client,
            session,
            built,
            stop: Some(stop),
            server: Some(server),
            _state_dir: state_dir,
        })
    }

    /// Stops the server and waits for it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            self.rt.block_on(h)??;
        }
        Ok(())
    }
}

impl Lane for HttpLane<'_> {
    fn run(&self, q: &Query<'_>) -> anyhow::Result<Sample> {
        let entry = self
            .built
            .bundle
            .entries
            .first()
            .ok_or_else(|| anyhow!("empty bundle"))?;
        if let Some(k) = &self.session.query_keys {
            k.fill()?;
        }
        let t = Instant::now();
        let out = self.rt.block_on(self.client.query(
            &self.session,
            entry,
            q.kind,
            q.q_user,
            vec![],
            false,
        ))?;
        let e2e_us = t.elapsed().as_secs_f64() * 1e6;
        let hits = out
            .results
            .iter()
            .map(|r| {
                u64::from_str_radix(&r.record_id, 16)
                    .map(|id| (id, r.d2))
                    .map_err(|e| anyhow!("bad record id {}: {e}", r.record_id))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Sample {
            hits,
            server_us: out.stats.server_micros as f64,
            client_us: out.stats.client_micros as f64,
            e2e_us,
            stats: out.stats,
        })
    }
}

impl Drop for HttpLane<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
