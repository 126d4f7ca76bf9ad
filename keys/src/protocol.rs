//! The doctor's side of the query protocol (DESIGN §4): the client state machine, which seals the
//! query and opens every reply with the class keys of a bundle entry.
//!
//! Re-exports the engine's [`blindkd_engine::protocol`] (the messages and the server's side).

pub use blindkd_engine::protocol::*;

use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use blindkd_engine::crypto::mlhe::Mlhe;
use blindkd_engine::crypto::plain::Plain;
use blindkd_engine::encoding::QueryPlan;
use blindkd_engine::index::SchemeParams;
use blindkd_engine::tree::{lower_bound, prunable, ShapeNode};

use crate::crypto::{aead, domain, frame_query, ClassKey, ClientScheme, PkSeed, RowDomain, RowRef};
use crate::owner::{payload_aad, radii_aad, BundleEntry, OpenedPayload};
pub use crate::pool::QueryKeyPool;
use crate::{Error, Result};

fn denied(code: &'static str, detail: impl Into<String>) -> Error {
    Error::Denied {
        code,
        detail: detail.into(),
    }
}

fn micros(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

/// How many leaf blocks to request per round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    /// kNN: leaves in the first leaf round; doubles each round.
    pub knn_first: u32,
    /// Most leaves per request (the server's limit).
    pub max_per_request: u32,
    /// Most leaves the whole query may evaluate (the token's `max_blocks`): the client never
    /// asks for more, so batch doubling cannot push an answerable kNN query over its bound.
    pub max_blocks: u32,
    /// Ask for a direct round 1 (every leaf, no pivot round) when the classes are small
    /// ([`DIRECT_MAX_LEAVES`]): one round instead of two or more (issue 12).
    pub direct: bool,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        // Measured (keys/tests/batch_policy.rs, ARCHITECTURE.md): with 8192-record leaves a
        // first batch of 4 evaluates as few blocks as 1 or 2 at 10⁶ records with 0.5–1.4 fewer
        // rounds; 8 overshoots (+2 blocks).
        BatchPolicy {
            knn_first: 4,
            max_per_request: 64,
            max_blocks: u32::MAX,
            direct: true,
        }
    }
}

/// A scheme-erased query client (the doctor's state machine for one query).
pub trait QueryClient: Send {
    /// Round-1 request bytes; `pk_seed` is the server's seed from the session.
    fn start_request(&mut self, pk_seed: &PkSeed) -> Result<Vec<u8>>;
    /// Feeds the round-1 reply.
    fn on_start(&mut self, reply: &[u8]) -> Result<Step>;
    /// Feeds a block reply.
    fn on_blocks(&mut self, reply: &[u8]) -> Result<Step>;
    /// Results so far, sorted by (distance, record id).
    fn results(&self) -> Vec<Hit>;
    /// Statistics.
    fn stats(&self) -> &QueryStats;
    /// Opens a payload fetched for a result record.
    fn open_payload(&self, class: &str, record_id: u64, sealed: &[u8]) -> Result<OpenedPayload>;
    /// The payload request for every result, or `None` if there are no results. Ids go out
    /// sorted, so the request's order says nothing about the ranking.
    fn payload_request(&self) -> Result<Option<Vec<u8>>>;
    /// Opens a payload reply: one opened payload per result, by record id. A reply that
    /// misses a result, adds a record or does not open is an error.
    fn open_payloads(&self, reply: &[u8]) -> Result<HashMap<u64, OpenedPayload>>;
    /// The most bytes an honest reply to the request just made can have (round 1: a bound for
    /// the classes asked; block and payload rounds: from the shapes and the request). A transport
    /// reads no more than this.
    fn reply_limit(&self) -> usize;
}

/// A reply that fails any check: the one error a lying host gets, whatever it changed.
fn lie(detail: impl Into<String>) -> Error {
    Error::Integrity(detail.into())
}

/// Decodes exactly one postcard value: trailing bytes are a lie too.
fn decode_exact<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    let (v, rest) = postcard::take_from_bytes(bytes)
        .map_err(|e| lie(format!("{what} does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(lie(format!("{what} has {} trailing bytes", rest.len())));
    }
    Ok(v)
}

/// Round 1 may carry at most this much per class asked for (pivot replies and the shape).
pub const MAX_START_REPLY_PER_CLASS: usize = 64 << 20;
/// The largest sealed payload a client reads (the owner pads payloads above 64 KiB to multiples
/// of 64 KiB; larger records belong in a document store).
pub const MAX_SEALED_PAYLOAD: usize = 4 << 20;

/// Builds a query client for the scheme named in the bundle entry. `q` is the encoded query.
pub fn new_query_client(
    entry: &BundleEntry,
    kind: QueryKind,
    q: &[i64],
    classes: Vec<String>,
    batch: BatchPolicy,
) -> Result<Box<dyn QueryClient>> {
    new_query_client_with(entry, kind, q, classes, batch, None)
}

/// [`new_query_client`] that takes its query key from `pool` when the pool has one for this
/// scheme and width (issue 12): sealing is then an encoding and an addition. Without a ready key
/// the query makes its own.
pub fn new_query_client_with(
    entry: &BundleEntry,
    kind: QueryKind,
    q: &[i64],
    classes: Vec<String>,
    batch: BatchPolicy,
    pool: Option<&QueryKeyPool>,
) -> Result<Box<dyn QueryClient>> {
    Ok(match &entry.scheme {
        SchemeParams::Plain => Box::new(Driver::new(
            Plain::new(),
            entry,
            kind,
            q,
            classes,
            batch,
            None,
        )?),
        SchemeParams::Mlhe(p) => {
            let premade = pool
                .filter(|p| p.width() == q.len() + 1)
                .and_then(|p| p.take().map(|k| (*p.pk_seed(), k)));
            Box::new(Driver::new(
                Mlhe::from_params(*p)?,
                entry,
                kind,
                q,
                classes,
                batch,
                premade,
            )?)
        }
        #[cfg(feature = "paper-she")]
        SchemeParams::PaperShe(p) => Box::new(Driver::new(
            crate::crypto::she::PaperSheClient::from_param_bytes(p)?,
            entry,
            kind,
            q,
            classes,
            batch,
            None,
        )?),
        #[cfg(not(feature = "paper-she"))]
        SchemeParams::PaperShe(_) => {
            return Err(Error::UnsupportedVersion(
                "paper-she needs the `paper-she` feature".into(),
            ))
        }
    })
}

/// Drives a query against an index in the same process (tests, benchmarks, the oracle harness).
pub fn run_in_process(
    index: &Arc<dyn HostedIndex>,
    access: &Access,
    limits: &Limits,
    client: &mut dyn QueryClient,
) -> Result<Vec<Hit>> {
    run_with_payloads(index, access, limits, client, false).map(|(hits, _)| hits)
}

/// [`run_in_process`], then (if `payloads`) the payload round for the results: returns the
/// sealed payloads as the server served them.
pub fn run_with_payloads(
    index: &Arc<dyn HostedIndex>,
    access: &Access,
    limits: &Limits,
    client: &mut dyn QueryClient,
    payloads: bool,
) -> Result<(Vec<Hit>, Vec<SealedPayload>)> {
    let req = client.start_request(&access.pk_seed)?;
    let started = index.clone().start(access, &req, &mut Unmetered)?;
    let mut live = started.handle;
    let mut step = client.on_start(&started.reply)?;
    while let Step::Blocks(req) = step {
        let reply = live.blocks(limits, &req, &mut Unmetered)?;
        step = client.on_blocks(&reply)?;
    }
    let mut sealed = Vec::new();
    if payloads {
        if let Some(req) = client.payload_request()? {
            let reply = live.payloads(&req, &mut Unmetered)?.reply;
            client.open_payloads(&reply)?;
            let r: PayloadReply =
                postcard::from_bytes(&reply).map_err(|e| Error::malformed("payload reply", e))?;
            sealed = r.payloads;
        }
    }
    Ok((client.results(), sealed))
}

struct ClassKeys<S: ClientScheme> {
    key: S::Key,
    payload: zeroize::Zeroizing<[u8; 32]>,
    radius: zeroize::Zeroizing<[u8; 32]>,
}

struct Candidate {
    class_idx: u32,
    leaf: u32,
    lb: u128,
    bounds: Vec<(u128, u64)>,
    first_slot: u64,
    rows: u32,
}

struct Driver<S: ClientScheme> {
    scheme: S,
    index_id: blindkd_engine::index::IndexId,
    keys: HashMap<String, ClassKeys<S>>,
    /// A query key made ahead of time (from a [`QueryKeyPool`]) and the server seed it was made
    /// for; used by [`QueryClient::start_request`] if the seed matches.
    premade: Option<(PkSeed, S::Session)>,
    /// The query key that sealed this query, from [`QueryClient::start_request`] on.
    session: Option<S::Session>,
    plan: QueryPlan,
    kind: QueryKind,
    threshold: u128,
    classes: Vec<String>,
    class_names: HashMap<u32, String>,
    pending: Vec<Candidate>,
    next_batch: u32,
    /// Leaves requested so far.
    requested: u32,
    /// The leaves of the last block request, which the next reply must answer exactly.
    in_flight: Vec<BlockRef>,
    /// Every record id the answer has so far: a repeat is a lie.
    seen: std::collections::HashSet<u64>,
    /// Leaves of the classes in round 1: rounds beyond this are a lie.
    total_leaves: u64,
    /// Round 1 answered.
    started: bool,
    /// What the owner vouches for per class (from the bundle).
    manifest: HashMap<String, blindkd_engine::index::ClassManifest>,
    /// Whether round 1 must match the manifest (every scheme but `plain`, the test baseline).
    require_manifest: bool,
    batch: BatchPolicy,
    best: BinaryHeap<(u128, u64, u32)>,
    hits: Vec<Hit>,
    stats: QueryStats,
    done: bool,
}

impl<S: ClientScheme> Driver<S> {
    fn new(
        scheme: S,
        entry: &BundleEntry,
        kind: QueryKind,
        q: &[i64],
        classes: Vec<String>,
        batch: BatchPolicy,
        premade: Option<(PkSeed, S::Session)>,
    ) -> Result<Self> {
        let t = Instant::now();
        let schema = &entry.schema;
        if q.len() != schema.dim() {
            return Err(Error::InvalidInput(format!(
                "query has {} values, the index has {} columns",
                q.len(),
                schema.dim()
            )));
        }
        let threshold = match kind {
            QueryKind::Knn { k: 0 } => return Err(Error::InvalidInput("k must be ≥ 1".into())),
            QueryKind::Knn { .. } => u128::MAX,
            QueryKind::Range { radius } => schema.radius_threshold(radius)?,
        };
        let mut keys = HashMap::new();
        for (class, raw) in &entry.keys {
            if !classes.is_empty() && !classes.contains(class) {
                continue;
            }
            let ck = ClassKey::from_bytes(*raw);
            keys.insert(
                class.clone(),
                ClassKeys {
                    key: scheme.derive_key(&ck, &entry.index_id)?,
                    payload: ck.derive(domain::PAYLOAD_AEAD, &entry.index_id),
                    radius: ck.derive(domain::RADIUS_AEAD, &entry.index_id),
                },
            );
        }
        if let Some(c) = classes.iter().find(|c| !keys.contains_key(*c)) {
            return Err(Error::InvalidInput(format!(
                "the key bundle has no key for class `{c}`"
            )));
        }
        let stats = QueryStats {
            client_micros: micros(t),
            ..QueryStats::default()
        };
        Ok(Driver {
            plan: QueryPlan::new(q, &schema.weights()),
            index_id: entry.index_id,
            scheme,
            keys,
            premade,
            session: None,
            kind,
            threshold,
            classes,
            class_names: HashMap::new(),
            pending: Vec::new(),
            next_batch: batch.knn_first.max(1),
            requested: 0,
            in_flight: Vec::new(),
            seen: std::collections::HashSet::new(),
            total_leaves: 0,
            started: false,
            manifest: entry
                .manifest
                .iter()
                .map(|m| (m.class.clone(), m.clone()))
                .collect(),
            require_manifest: S::ID != blindkd_engine::crypto::SchemeId::Plain,
            batch,
            best: BinaryHeap::new(),
            hits: Vec::new(),
            stats,
            done: false,
        })
    }

    fn k(&self) -> Option<usize> {
        match self.kind {
            QueryKind::Knn { k } => Some(k as usize),
            QueryKind::Range { .. } => None,
        }
    }

    /// The current pruning threshold: the radius, or the k-th best distance once k are known.
    fn current_threshold(&self) -> u128 {
        match self.k() {
            Some(k) if self.best.len() >= k => self.best.peek().map_or(u128::MAX, |b| b.0),
            Some(_) => u128::MAX,
            None => self.threshold,
        }
    }

    fn next_step(&mut self) -> Result<Step> {
        let t = Instant::now();
        let thr = self.current_threshold();
        self.pending
            .retain(|c| !c.bounds.iter().any(|&(d2, r)| prunable(d2, r, thr)));
        if self.pending.is_empty() {
            self.done = true;
            self.finish();
            self.stats.client_micros += micros(t);
            return Ok(Step::Done);
        }
        let n = match self.k() {
            Some(_) => {
                let n = self.next_batch.min(self.batch.max_per_request.max(1));
                self.next_batch = self.next_batch.saturating_mul(2);
                n
            }
            None => self.batch.max_per_request.max(1),
        } as usize;
        // Never ask for more leaves than the token allows. A range query needs every pending
        // leaf, a kNN query at least one more: past the bound there is no exact answer.
        let allowance = self.batch.max_blocks.saturating_sub(self.requested) as usize;
        let needed = if self.k().is_some() {
            1
        } else {
            self.pending.len()
        };
        if allowance < needed {
            return Err(denied(
                "limit_blocks",
                format!(
                    "this query needs more than the token's {} leaf blocks; ask the hospital \
                     for a larger --max-blocks, or narrow the query",
                    self.batch.max_blocks
                ),
            ));
        }
        let take = n.min(self.pending.len()).min(allowance);
        self.requested += take as u32;
        // `pending` is sorted by descending lower bound: the best candidates sit at the end.
        let start = self.pending.len() - take;
        let mut blocks: Vec<BlockRef> = self.pending[start..]
            .iter()
            .map(|c| BlockRef {
                class_idx: c.class_idx,
                leaf: c.leaf,
            })
            .collect();
        // Which leaves a round asks for is leakage we accept (DESIGN §4); their order within
        // the round would add the lower-bound ranking to it, so it is shuffled.
        rand::seq::SliceRandom::shuffle(&mut blocks[..], &mut rand::rng());
        self.in_flight = blocks.clone();
        let bytes = postcard::to_allocvec(&BlockRequest { blocks })
            .map_err(|e| Error::malformed("block request", e))?;
        self.stats.bytes_up += bytes.len() as u64;
        self.stats.client_micros += micros(t);
        Ok(Step::Blocks(bytes))
    }

    fn finish(&mut self) {
        let mut hits: Vec<Hit> = match self.k() {
            Some(_) => self
                .best
                .iter()
                .map(|&(d2, id, c)| Hit {
                    class: self.class_names.get(&c).cloned().unwrap_or_default(),
                    record_id: id,
                    d2,
                })
                .collect(),
            None => std::mem::take(&mut self.hits),
        };
        hits.sort_by_key(|h| (h.d2, h.record_id));
        self.hits = hits;
    }

    fn offer(&mut self, d2: u128, id: u64, class_idx: u32) {
        match self.k() {
            Some(k) => {
                let item = (d2, id, class_idx);
                if self.best.len() < k {
                    self.best.push(item);
                } else if let Some(top) = self.best.peek() {
                    // Ties at the k-th place go to the smaller record id.
                    if (item.0, item.1) < (top.0, top.1) {
                        self.best.pop();
                        self.best.push(item);
                    }
                }
            }
            None => {
                if d2 <= self.threshold {
                    self.hits.push(Hit {
                        class: self
                            .class_names
                            .get(&class_idx)
                            .cloned()
                            .unwrap_or_default(),
                        record_id: id,
                        d2,
                    });
                }
            }
        }
    }
}

/// Any failure while reading a reply is the host's: one error, whatever the cause (a check
/// value, a decoding error, an AEAD failure).
/// The first slot and row count of leaf `leaf` of a (validated) shape.
fn leaf_rows(shape: &blindkd_engine::tree::TreeShape, leaf: usize) -> Result<(u64, u32)> {
    match shape.nodes[shape.leaves[leaf] as usize] {
        ShapeNode::Leaf {
            first_slot, rows, ..
        } => Ok((first_slot, rows)),
        _ => Err(lie("leaf list points at an inner node")),
    }
}

/// A reply before [`QueryClient::start_request`]: the caller's mistake, not the server's.
fn unsent() -> Error {
    Error::InvalidInput("a reply to a query that was not sent".into())
}

fn as_lie(e: Error) -> Error {
    match e {
        Error::Integrity(_) => e,
        other => lie(other.to_string()),
    }
}

impl<S: ClientScheme> Driver<S> {
    /// Round 1: exactly the classes asked for, each once, with consistent shapes, sealed radii
    /// that open, and pivot replies that pass their check values.
    fn read_start(&mut self, reply: &[u8]) -> Result<()> {
        let r: StartReply = decode_exact(reply, "the round-1 reply")?;
        self.stats.server_micros += r.server_micros;
        if r.direct && !self.batch.direct {
            return Err(lie("a direct round 1 that was not asked for"));
        }
        if !r.direct && !r.leaves.is_empty() {
            return Err(lie("leaf blocks in a pivot round"));
        }
        let cap = self.scheme.block_capacity();
        let mut want: std::collections::BTreeSet<String> = self.keys.keys().cloned().collect();
        if r.classes.len() != want.len() {
            return Err(lie(format!(
                "{} classes in round 1 for {} asked",
                r.classes.len(),
                want.len()
            )));
        }
        for c in r.classes {
            if !want.remove(&c.class) {
                return Err(lie(format!("class `{}` not asked for, or twice", c.class)));
            }
            if self.class_names.contains_key(&c.class_idx) {
                return Err(lie("two classes under one class index"));
            }
            let keys = &self.keys[&c.class];
            c.shape.validate(cap).map_err(|e| lie(e.to_string()))?;
            match self.manifest.get(&c.class) {
                Some(m)
                    if m.records != c.shape.records()
                        || m.shape != blindkd_engine::index::shape_hash(&c.shape) =>
                {
                    return Err(lie(format!(
                        "the tree of class `{}` is not the one the hospital built",
                        c.class
                    )));
                }
                None if self.require_manifest => {
                    return Err(lie(format!(
                        "the bundle vouches for no tree of class `{}` (an old bundle?)",
                        c.class
                    )));
                }
                _ => {}
            }
            self.total_leaves += c.shape.leaves.len() as u64;
            if r.direct {
                // No pivots: every leaf is a candidate, and every one is in this reply.
                if !c.pivot_replies.is_empty() {
                    return Err(lie("pivot replies in a direct round"));
                }
                for leaf in 0..c.shape.leaves.len() {
                    let (first_slot, rows) = leaf_rows(&c.shape, leaf)?;
                    self.in_flight.push(BlockRef {
                        class_idx: c.class_idx,
                        leaf: leaf as u32,
                    });
                    self.pending.push(Candidate {
                        class_idx: c.class_idx,
                        leaf: leaf as u32,
                        lb: 0,
                        bounds: Vec::new(),
                        first_slot,
                        rows,
                    });
                }
                self.class_names.insert(c.class_idx, c.class);
                continue;
            }
            let nodes = c.shape.nodes.len();
            if c.pivot_replies.len() != nodes.div_ceil(cap) {
                return Err(lie("wrong number of pivot replies"));
            }
            let radii_bytes = aead::open(
                &keys.radius,
                &radii_aad(&self.index_id, &c.class),
                &c.sealed_radii,
            )?;
            let radii: Vec<u64> = decode_exact(&radii_bytes, "the radii")?;
            if radii.len() != nodes {
                return Err(lie("not one radius per node"));
            }
            let mut d2 = Vec::with_capacity(nodes);
            for (b, rep) in c.pivot_replies.iter().enumerate() {
                let rows: Vec<RowRef> = (b * cap..((b + 1) * cap).min(nodes))
                    .map(|v| RowRef {
                        domain: RowDomain::Pivot,
                        id: v as u64,
                        record: 0,
                    })
                    .collect();
                d2.extend(self.scheme.open(
                    &keys.key,
                    self.session.as_ref().ok_or_else(unsent)?,
                    rep,
                    &self.plan,
                    &rows,
                )?);
            }
            self.stats.pivot_blocks += c.pivot_replies.len() as u32;
            for (leaf, path) in c.shape.leaf_paths().into_iter().enumerate() {
                let bounds: Vec<(u128, u64)> = path
                    .iter()
                    .map(|&v| (d2[v as usize], radii[v as usize]))
                    .collect();
                let lb = bounds
                    .iter()
                    .map(|&(d, r)| lower_bound(d, r))
                    .max()
                    .unwrap_or(0);
                let (first_slot, rows) = leaf_rows(&c.shape, leaf)?;
                self.pending.push(Candidate {
                    class_idx: c.class_idx,
                    leaf: leaf as u32,
                    lb,
                    bounds,
                    first_slot,
                    rows,
                });
            }
            self.class_names.insert(c.class_idx, c.class);
        }
        // The duplicate check sees every record id of every opened leaf: size it once (bounded,
        // since the sizes come from the host) instead of rehashing as it grows.
        let records: u64 = self.pending.iter().map(|c| u64::from(c.rows)).sum();
        self.seen.reserve(records.min(1 << 17) as usize);
        if r.direct {
            // Every leaf of every class, in class and leaf order, as asked.
            self.apply_blocks(r.leaves)?;
        }
        Ok(())
    }

    /// A block round: exactly the leaves asked for, in order, each with as many record ids as
    /// rows, no id seen before, and replies that pass their check values.
    fn read_blocks(&mut self, reply: &[u8]) -> Result<()> {
        let r: BlockReply = decode_exact(reply, "the block reply")?;
        self.stats.server_micros += r.server_micros;
        self.apply_blocks(r.blocks)
    }

    /// Checks and opens the answers to the leaves in flight (see [`Driver::read_blocks`]).
    fn apply_blocks(&mut self, blocks: Vec<EvaluatedBlock>) -> Result<()> {
        let asked = std::mem::take(&mut self.in_flight);
        if blocks.len() != asked.len() {
            return Err(lie(format!(
                "{} blocks in a reply to {} asked",
                blocks.len(),
                asked.len()
            )));
        }
        let mut work = Vec::with_capacity(blocks.len());
        for (eb, want) in blocks.into_iter().zip(&asked) {
            if eb.block != *want {
                return Err(lie("a block not asked for, or out of order"));
            }
            let pos = self
                .pending
                .iter()
                .position(|c| c.class_idx == eb.block.class_idx && c.leaf == eb.block.leaf)
                .ok_or_else(|| lie("a block not pending"))?;
            let cand = self.pending.remove(pos);
            if eb.record_ids.len() != cand.rows as usize {
                return Err(lie("record id count differs from the leaf's rows"));
            }
            if let Some(id) = eb.record_ids.iter().find(|&&id| !self.seen.insert(id)) {
                return Err(lie(format!("record id {id:016x} twice")));
            }
            let class = self
                .class_names
                .get(&cand.class_idx)
                .cloned()
                .ok_or_else(|| lie("unknown class"))?;
            work.push((cand, class, eb));
        }
        // Opening (decrypt + unmask + check) is independent per block: spread it over the cores.
        let opened = {
            use rayon::prelude::*;
            let session = self.session.as_ref().ok_or_else(unsent)?;
            let (scheme, keys, plan) = (&self.scheme, &self.keys, &self.plan);
            work.par_iter()
                .map(|(cand, class, eb)| {
                    // The record ids the server claims are bound into the masks and check
                    // weights: a wrong one fails the block's check.
                    let rows: Vec<RowRef> = (cand.first_slot..cand.first_slot + cand.rows as u64)
                        .zip(&eb.record_ids)
                        .map(|(s, &record)| RowRef {
                            domain: RowDomain::Leaf,
                            id: s,
                            record,
                        })
                        .collect();
                    scheme.open(&keys[class].key, session, &eb.reply, plan, &rows)
                })
                .collect::<Result<Vec<_>>>()?
        };
        // Only now, with every block of the round verified, is any value used.
        for ((cand, _, eb), d2) in work.into_iter().zip(opened) {
            self.stats.leaf_blocks += 1;
            self.stats.records_evaluated += cand.rows as u64;
            for (d, id) in d2.into_iter().zip(eb.record_ids) {
                self.offer(d, id, cand.class_idx);
            }
        }
        Ok(())
    }
}

impl<S: ClientScheme> QueryClient for Driver<S> {
    fn start_request(&mut self, pk_seed: &PkSeed) -> Result<Vec<u8>> {
        let t = Instant::now();
        if self.session.is_some() {
            return Err(Error::InvalidInput("this query was sent already".into()));
        }
        let mut session = match self.premade.take() {
            Some((seed, s)) if seed == *pk_seed => s,
            _ => self.scheme.new_session(pk_seed, self.plan.w.len())?,
        };
        let sealed = self.scheme.seal_query(&mut session, &self.plan.w)?;
        let query = frame_query(&self.scheme.session_public(&session)?, &sealed);
        self.session = Some(session);
        let bytes = postcard::to_allocvec(&StartRequest {
            kind: self.kind,
            classes: self.classes.clone(),
            query,
            direct: self.batch.direct,
        })
        .map_err(|e| Error::malformed("start request", e))?;
        self.stats.bytes_up += bytes.len() as u64;
        self.stats.client_micros += micros(t);
        Ok(bytes)
    }

    fn on_start(&mut self, reply: &[u8]) -> Result<Step> {
        let t = Instant::now();
        if self.started {
            return Err(lie("a second round-1 reply"));
        }
        self.started = true;
        self.stats.rounds += 1;
        self.stats.bytes_down += reply.len() as u64;
        self.read_start(reply).map_err(as_lie)?;
        // Descending, so the most promising candidates pop from the end.
        self.pending
            .sort_by_key(|c| std::cmp::Reverse((c.lb, c.class_idx, c.leaf)));
        self.stats.client_micros += micros(t);
        self.next_step()
    }

    fn on_blocks(&mut self, reply: &[u8]) -> Result<Step> {
        let t = Instant::now();
        if self.done || !self.started || self.in_flight.is_empty() {
            return Err(lie("a block reply to no block request"));
        }
        self.stats.rounds += 1;
        // Every round answers at least one leaf, so more rounds than leaves is a loop.
        if u64::from(self.stats.rounds) > self.total_leaves + 1 {
            return Err(lie("more rounds than the classes have leaves"));
        }
        self.stats.bytes_down += reply.len() as u64;
        self.read_blocks(reply).map_err(as_lie)?;
        self.stats.client_micros += micros(t);
        self.next_step()
    }

    fn results(&self) -> Vec<Hit> {
        self.hits.clone()
    }

    fn stats(&self) -> &QueryStats {
        &self.stats
    }

    fn open_payload(&self, class: &str, record_id: u64, sealed: &[u8]) -> Result<OpenedPayload> {
        let keys = self
            .keys
            .get(class)
            .ok_or_else(|| Error::InvalidInput(format!("no key for class `{class}`")))?;
        let bytes = aead::open(
            &keys.payload,
            &payload_aad(&self.index_id, class, record_id),
            sealed,
        )?;
        serde_json::from_slice(&bytes).map_err(|e| Error::malformed("payload", e))
    }

    fn payload_request(&self) -> Result<Option<Vec<u8>>> {
        let mut records: Vec<u64> = self.hits.iter().map(|h| h.record_id).collect();
        if records.is_empty() {
            return Ok(None);
        }
        records.sort_unstable();
        records.dedup();
        postcard::to_allocvec(&PayloadRequest { records })
            .map(Some)
            .map_err(|e| Error::malformed("payload request", e))
    }

    fn open_payloads(&self, reply: &[u8]) -> Result<HashMap<u64, OpenedPayload>> {
        self.read_payloads(reply).map_err(as_lie)
    }

    fn reply_limit(&self) -> usize {
        let overhead = 1024;
        if !self.started {
            return overhead + self.keys.len().max(1) * MAX_START_REPLY_PER_CLASS;
        }
        if !self.done {
            let rows = |b: &BlockRef| {
                self.pending
                    .iter()
                    .find(|c| c.class_idx == b.class_idx && c.leaf == b.leaf)
                    .map_or(0, |c| c.rows as usize)
            };
            return overhead
                + self
                    .in_flight
                    .iter()
                    .map(|b| 32 + 10 * rows(b) + self.scheme.reply_bound(rows(b)))
                    .sum::<usize>();
        }
        overhead + self.hits.len() * (32 + MAX_SEALED_PAYLOAD)
    }
}

impl<S: ClientScheme> Driver<S> {
    fn read_payloads(&self, reply: &[u8]) -> Result<HashMap<u64, OpenedPayload>> {
        let r: PayloadReply = decode_exact(reply, "the payload reply")?;
        let classes: HashMap<u64, &str> = self
            .hits
            .iter()
            .map(|h| (h.record_id, h.class.as_str()))
            .collect();
        let mut out = HashMap::with_capacity(classes.len());
        for p in r.payloads {
            let class = classes.get(&p.record_id).ok_or_else(|| {
                Error::malformed("payload reply", "a payload for a record we did not ask for")
            })?;
            let opened = self.open_payload(class, p.record_id, &p.sealed)?;
            if out.insert(p.record_id, opened).is_some() {
                return Err(Error::malformed("payload reply", "a record twice"));
            }
        }
        if out.len() != classes.len() {
            return Err(Error::malformed(
                "payload reply",
                "a result's payload is missing",
            ));
        }
        Ok(out)
    }
}

impl<S: ClientScheme> Drop for Driver<S> {
    fn drop(&mut self) {
        // The plan is the query itself.
        use zeroize::Zeroize;
        self.plan.w.zeroize();
        self.plan.q_norm = 0;
    }
}
