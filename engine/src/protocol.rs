//! The query protocol (DESIGN §4): the messages and the server's state machine, independent of
//! HTTP. The client's state machine (it opens replies, so it holds keys) is in `blindkd-keys`.
//!
//! * **Round 1** — the client sends its sealed query; the server evaluates *every* pivot block of
//!   every class the query may touch (so the pivot round says nothing about the path) and returns
//!   the tree shapes, the sealed radii and the pivot replies.
//! * **Between rounds** — the client opens pivot distances and radii and orders leaves by a
//!   conservative lower bound (own node and all ancestors).
//! * **Rounds 2…** — the client asks for leaf blocks in lower-bound order. kNN stops when no
//!   remaining leaf can hold a point at distance ≤ the current k-th distance; range asks for every
//!   leaf that can hold a point within the radius, then filters exactly.
//!
//! The server side takes bytes and answers bytes; the HTTP layer is a thin shell around it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::crypto::{plain::Plain, PkSeed, Scheme};
use crate::index::{IndexHeader, LoadLimits, ServerClass, ServerIndex};
use crate::tree::TreeShape;
use crate::{Error, Result};

/// What a query asks for.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum QueryKind {
    /// The k nearest records.
    Knn {
        /// k.
        k: u32,
    },
    /// Every record within `radius` (user units).
    Range {
        /// The radius in user units.
        radius: f64,
    },
}

/// Round-1 request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StartRequest {
    /// Kind and its parameter.
    // LEAKAGE: [query-params] the query kind, k, and the range radius (user units) are visible to the server, which
    // enforces the token's max_k / max_radius on them.
    pub kind: QueryKind,
    /// Classes to search; empty means every class the access scope allows.
    // LEAKAGE: [query-classes] which classes a query searches.
    pub classes: Vec<String>,
    /// Framed session public material + sealed query ([`crate::crypto::frame_query`]).
    #[serde(with = "serde_bytes")]
    pub query: Vec<u8>,
    /// Asks for **direct** round 1 (issue 12): every leaf block of the searched classes instead
    /// of the pivots, when they have at most [`DIRECT_MAX_LEAVES`] leaves in all and the token
    /// allows that many per query. The query then has one round. The client's fixed policy, not
    /// a function of the query.
    pub direct: bool,
}

/// Most leaf blocks (over the searched classes) that a direct round 1 evaluates; above this the
/// pivot round's pruning pays for its extra round.
pub const DIRECT_MAX_LEAVES: u64 = 4;

/// Round-1 reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StartReply {
    /// One entry per searched class.
    pub classes: Vec<ClassRound1>,
    /// Whether round 1 was direct: then `leaves` holds every leaf block of every searched class
    /// (class by class, in leaf order) and every `pivot_replies` is empty.
    // LEAKAGE: [access-pattern] a direct round evaluates every leaf of the searched classes: the
    // access pattern is the class list alone.
    pub direct: bool,
    /// The leaf blocks of a direct round 1.
    pub leaves: Vec<EvaluatedBlock>,
    /// Server compute time for this round, µs.
    pub server_micros: u64,
}

/// Round-1 data for one class.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassRound1 {
    /// Class index in the index (used in block requests).
    pub class_idx: u32,
    /// Class name.
    pub class: String,
    /// Public tree shape.
    pub shape: TreeShape,
    /// Sealed radius bounds.
    #[serde(with = "serde_bytes")]
    pub sealed_radii: Vec<u8>,
    /// One reply per pivot block.
    pub pivot_replies: Vec<serde_bytes::ByteBuf>,
}

/// A leaf block reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockRef {
    /// Class index.
    pub class_idx: u32,
    /// Leaf number within the class.
    pub leaf: u32,
}

/// Rounds 2…: which leaf blocks to evaluate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlockRequest {
    /// The leaves.
    // LEAKAGE: [access-pattern] the access pattern at block granularity: which leaves each query requests, in
    // which rounds.
    pub blocks: Vec<BlockRef>,
}

/// Evaluated leaf blocks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlockReply {
    /// Per requested block, in request order.
    pub blocks: Vec<EvaluatedBlock>,
    /// Server compute time, µs.
    pub server_micros: u64,
}

/// One evaluated leaf block.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvaluatedBlock {
    /// Which block.
    pub block: BlockRef,
    /// Opaque record ids of its rows.
    pub record_ids: Vec<u64>,
    /// The scheme's reply.
    #[serde(with = "serde_bytes")]
    pub reply: Vec<u8>,
}

/// What a verified access scope allows (from the token).
#[derive(Clone, Debug, PartialEq)]
pub struct Access {
    /// Classes the holder may search.
    pub classes: Vec<String>,
    /// Whether kNN is allowed.
    pub knn: bool,
    /// Whether range is allowed.
    pub range: bool,
    /// Largest k.
    pub max_k: u32,
    /// Largest radius (user units).
    pub max_radius: f64,
    /// Most leaf blocks one query may evaluate.
    pub max_blocks: u32,
    /// Most payloads one range query may fetch (kNN: at most k).
    pub max_results: u32,
    /// The server's seed for this session's public key `a` (see [`crate::crypto::PkSeed`]).
    pub pk_seed: PkSeed,
}

/// Server-side limits, on top of the token's.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Leaf blocks one query may evaluate in total, whatever its token says.
    pub max_blocks_per_query: u32,
    /// Leaf blocks per request.
    pub max_blocks_per_request: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blocks_per_query: 4096,
            max_blocks_per_request: 64,
        }
    }
}

/// Charges units of work to the token before the server does the work: one unit per block
/// evaluated (pivot or leaf) and one per payload served. An error refuses the work, and nothing was
/// evaluated or served.
pub trait Meter {
    /// Charges `units`.
    fn charge(&mut self, units: u64) -> Result<()>;
}

/// A meter that charges nothing: in-process runs and benchmarks, where no token is involved.
pub struct Unmetered;

impl Meter for Unmetered {
    fn charge(&mut self, _: u64) -> Result<()> {
        Ok(())
    }
}

/// Most record ids in one payload request.
pub const MAX_PAYLOADS_PER_REQUEST: usize = 1024;

/// A batch of payloads to fetch for the live query's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PayloadRequest {
    /// Opaque record ids. Only records in blocks this query evaluated are served, at most k per
    /// kNN query and the token's `max_results` per range query.
    // LEAKAGE: [payload-fetch] which records' payloads a doctor fetches (the result set's ids); the
    // client sends them sorted by id, so their order says nothing about the ranking.
    pub records: Vec<u64>,
}

/// Sealed payloads, in request order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PayloadReply {
    /// `(record id, sealed payload)`.
    pub payloads: Vec<SealedPayload>,
}

/// One sealed payload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SealedPayload {
    /// Opaque record id.
    pub record_id: u64,
    /// The AEAD-sealed payload, padded to a size bucket by the owner.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

fn denied(code: &'static str, detail: impl Into<String>) -> Error {
    Error::Denied {
        code,
        detail: detail.into(),
    }
}

/// A hosted index of any scheme, as the query server sees it.
pub trait HostedIndex: Send + Sync {
    /// The header.
    fn header(&self) -> &IndexHeader;
    /// Class names in index order.
    fn class_names(&self) -> Vec<String>;
    /// Round 1: checks scope, charges the pivot blocks to `meter`, decodes the query and evaluates
    /// every pivot block of the searched classes (each class once, however often it is named).
    fn start(
        self: Arc<Self>,
        access: &Access,
        req: &[u8],
        meter: &mut dyn Meter,
    ) -> Result<Started>;
}

/// What one payload request served.
#[derive(Debug)]
pub struct ServedPayloads {
    /// Reply bytes for the client (a [`PayloadReply`]).
    pub reply: Vec<u8>,
    /// The records served, in reply order, for audit and metrics.
    pub records: Vec<u64>,
}

/// The result of round 1 on the server.
pub struct Started {
    /// The live query, for rounds 2….
    pub handle: Box<dyn QueryHandle>,
    /// Reply bytes for the client.
    pub reply: Vec<u8>,
    /// What the server learned, for audit and metrics.
    pub info: StartInfo,
}

/// What round 1 tells the server (all of it is leakage listed in SECURITY.md).
#[derive(Clone, Debug)]
pub struct StartInfo {
    /// Kind and parameter.
    pub kind: QueryKind,
    /// Classes searched.
    pub classes: Vec<String>,
    /// Pivot blocks evaluated.
    pub pivot_blocks: u32,
    /// Leaf blocks evaluated in round 1 (a direct round; 0 otherwise).
    pub leaf_blocks: u32,
}

/// A live query on the server: the decoded query and what it may still touch.
pub trait QueryHandle: Send + Sync {
    /// Rounds 2…: evaluates requested leaf blocks. Each leaf at most once per query, at most
    /// `min(limits.max_blocks_per_query, access.max_blocks)` in total; charged before evaluation.
    fn blocks(&mut self, limits: &Limits, req: &[u8], meter: &mut dyn Meter) -> Result<Vec<u8>>;
    /// Sealed payloads of records in blocks this query evaluated: at most k per kNN query and
    /// `max_results` per range query (a record fetched again is not counted again); each new
    /// payload is charged before it is served.
    fn payloads(&mut self, req: &[u8], meter: &mut dyn Meter) -> Result<ServedPayloads>;
    /// Leaf blocks evaluated so far.
    fn blocks_evaluated(&self) -> u32;
}

/// An index loaded for serving, with a record-id lookup for payloads.
pub struct Hosted<S: Scheme> {
    index: ServerIndex<S>,
    records: HashMap<u64, RecordSlot>,
}

/// Where a record sits: class, leaf, row.
#[derive(Clone, Copy, Debug)]
struct RecordSlot {
    class: u32,
    leaf: u32,
    row: u32,
}

impl<S: Scheme> Hosted<S> {
    /// Wraps a loaded index.
    pub fn new(index: ServerIndex<S>) -> Self {
        let mut records = HashMap::new();
        for (c, cls) in index.classes.iter().enumerate() {
            for (l, ids) in cls.record_ids.iter().enumerate() {
                for (r, &id) in ids.iter().enumerate() {
                    records.insert(
                        id,
                        RecordSlot {
                            class: c as u32,
                            leaf: l as u32,
                            row: r as u32,
                        },
                    );
                }
            }
        }
        Hosted { index, records }
    }
}

struct Live<S: Scheme> {
    hosted: Arc<Hosted<S>>,
    query: S::Query,
    access: Access,
    kind: QueryKind,
    classes: Vec<u32>,
    /// Leaf blocks evaluated, as `(class, leaf)`.
    evaluated: std::collections::HashSet<(u32, u32)>,
    /// Records whose payload was served.
    served: std::collections::HashSet<u64>,
}

/// Evaluates one (checked) leaf block: its record ids and the scheme's reply.
fn evaluate_leaf<S: Scheme>(
    index: &ServerIndex<S>,
    query: &S::Query,
    b: BlockRef,
) -> Result<EvaluatedBlock> {
    let cls = &index.classes[b.class_idx as usize];
    Ok(EvaluatedBlock {
        block: b,
        record_ids: cls.record_ids[b.leaf as usize].clone(),
        reply: index.scheme.evaluate(query, &cls.leaves[b.leaf as usize])?,
    })
}

fn micros(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

impl<S: Scheme> HostedIndex for Hosted<S> {
    fn header(&self) -> &IndexHeader {
        &self.index.header
    }

    fn class_names(&self) -> Vec<String> {
        self.index.classes.iter().map(|c| c.class.clone()).collect()
    }

    fn start(
        self: Arc<Self>,
        access: &Access,
        req: &[u8],
        meter: &mut dyn Meter,
    ) -> Result<Started> {
        use rayon::prelude::*;
        let t = Instant::now();
        let req: StartRequest =
            postcard::from_bytes(req).map_err(|e| Error::malformed("start request", e))?;
        match req.kind {
            QueryKind::Knn { k } => {
                if !access.knn {
                    return Err(denied("scope_kind", "the token does not allow kNN queries"));
                }
                if k == 0 || k > access.max_k {
                    return Err(denied(
                        "scope_k",
                        format!("k = {k} outside 1..={}", access.max_k),
                    ));
                }
            }
            QueryKind::Range { radius } => {
                if !access.range {
                    return Err(denied(
                        "scope_kind",
                        "the token does not allow range queries",
                    ));
                }
                if !(radius.is_finite() && radius >= 0.0 && radius <= access.max_radius) {
                    return Err(denied(
                        "scope_radius",
                        format!("radius {radius} outside 0..={}", access.max_radius),
                    ));
                }
            }
        }
        let wanted: Vec<&String> = if req.classes.is_empty() {
            access.classes.iter().collect()
        } else {
            req.classes.iter().collect()
        };
        // Each class once, however often the request names it: repeats must not multiply work.
        let mut classes: Vec<u32> = Vec::new();
        for name in wanted {
            if !access.classes.contains(name) {
                return Err(denied(
                    "forbidden_class",
                    format!("class `{name}` is not in the token's scope"),
                ));
            }
            if let Some(i) = self.index.classes.iter().position(|c| &c.class == name) {
                if !classes.contains(&(i as u32)) {
                    classes.push(i as u32);
                }
            } else if !req.classes.is_empty() {
                return Err(denied(
                    "unknown_class",
                    format!("class `{name}` is not in this index"),
                ));
            }
        }
        if classes.is_empty() {
            return Err(denied(
                "forbidden_class",
                "none of the token's classes is in this index",
            ));
        }
        let count = |f: fn(&ServerClass<S>) -> usize| -> u64 {
            classes
                .iter()
                .map(|&c| f(&self.index.classes[c as usize]) as u64)
                .sum()
        };
        let leaf_count = count(|c| c.leaves.len());
        let direct = req.direct
            && leaf_count <= DIRECT_MAX_LEAVES
            && leaf_count <= u64::from(access.max_blocks);
        let pivot_blocks = if direct {
            0
        } else {
            count(|c| c.pivot_blocks.len())
        };
        let leaf_refs: Vec<BlockRef> = if direct {
            classes
                .iter()
                .flat_map(|&c| {
                    (0..self.index.classes[c as usize].leaves.len()).map(move |l| BlockRef {
                        class_idx: c,
                        leaf: l as u32,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        meter.charge(pivot_blocks + leaf_refs.len() as u64)?;
        let query = self.index.scheme.decode_query(
            &req.query,
            self.index.header.dim as usize,
            &access.pk_seed,
        )?;
        let leaves = leaf_refs
            .par_iter()
            .map(|b| evaluate_leaf(&self.index, &query, *b))
            .collect::<Result<Vec<_>>>()?;
        // Every pivot block of every searched class: the pivot round is independent of the query.
        let out = classes
            .iter()
            .map(|&c| {
                let cls = &self.index.classes[c as usize];
                let pivot_replies = if direct {
                    Vec::new()
                } else {
                    cls.pivot_blocks
                        .par_iter()
                        .map(|b| self.index.scheme.evaluate(&query, b))
                        .collect::<Result<Vec<_>>>()?
                };
                Ok(ClassRound1 {
                    class_idx: c,
                    class: cls.class.clone(),
                    shape: cls.shape.clone(),
                    sealed_radii: cls.sealed_radii.clone(),
                    pivot_replies: pivot_replies
                        .into_iter()
                        .map(serde_bytes::ByteBuf::from)
                        .collect(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let reply = StartReply {
            classes: out,
            direct,
            leaves,
            server_micros: micros(t),
        };
        let bytes =
            postcard::to_allocvec(&reply).map_err(|e| Error::malformed("start reply", e))?;
        let info = StartInfo {
            kind: req.kind,
            classes: classes
                .iter()
                .map(|&c| self.index.classes[c as usize].class.clone())
                .collect(),
            pivot_blocks: pivot_blocks as u32,
            leaf_blocks: leaf_refs.len() as u32,
        };
        let live = Live {
            hosted: self,
            query,
            access: access.clone(),
            kind: req.kind,
            classes,
            evaluated: leaf_refs.iter().map(|b| (b.class_idx, b.leaf)).collect(),
            served: Default::default(),
        };
        Ok(Started {
            handle: Box::new(live),
            reply: bytes,
            info,
        })
    }
}

impl<S: Scheme> QueryHandle for Live<S> {
    fn blocks(&mut self, limits: &Limits, req: &[u8], meter: &mut dyn Meter) -> Result<Vec<u8>> {
        use rayon::prelude::*;
        let t = Instant::now();
        let req: BlockRequest =
            postcard::from_bytes(req).map_err(|e| Error::malformed("block request", e))?;
        if req.blocks.is_empty() {
            return Err(Error::InvalidInput("empty block request".into()));
        }
        if req.blocks.len() > limits.max_blocks_per_request as usize {
            return Err(denied(
                "limit_blocks",
                format!(
                    "{} blocks in one request; the limit is {}",
                    req.blocks.len(),
                    limits.max_blocks_per_request
                ),
            ));
        }
        let index = &self.hosted.index;
        let mut fresh = std::collections::HashSet::with_capacity(req.blocks.len());
        for b in &req.blocks {
            if !self.classes.contains(&b.class_idx) {
                // Never evaluate a block of a class outside the query's (token-checked) classes.
                return Err(denied(
                    "forbidden_class",
                    "block of a class outside this query",
                ));
            }
            if b.leaf as usize >= index.classes[b.class_idx as usize].leaves.len() {
                return Err(denied("unknown_block", "no such leaf block"));
            }
            let key = (b.class_idx, b.leaf);
            if self.evaluated.contains(&key) || !fresh.insert(key) {
                return Err(denied(
                    "repeated_block",
                    "a query evaluates each leaf block at most once",
                ));
            }
        }
        let cap = limits.max_blocks_per_query.min(self.access.max_blocks);
        let total = self.evaluated.len() as u64 + req.blocks.len() as u64;
        if total > cap as u64 {
            return Err(denied(
                "limit_blocks",
                format!(
                    "this query would evaluate {total} leaf blocks; the token allows {cap} per query \
                     (ask the hospital for a larger --max-blocks, or narrow the query)"
                ),
            ));
        }
        meter.charge(req.blocks.len() as u64)?;
        let blocks = req
            .blocks
            .par_iter()
            .map(|b| evaluate_leaf(index, &self.query, *b))
            .collect::<Result<Vec<_>>>()?;
        self.evaluated.extend(fresh);
        postcard::to_allocvec(&BlockReply {
            blocks,
            server_micros: micros(t),
        })
        .map_err(|e| Error::malformed("block reply", e))
    }

    fn payloads(&mut self, req: &[u8], meter: &mut dyn Meter) -> Result<ServedPayloads> {
        let req: PayloadRequest =
            postcard::from_bytes(req).map_err(|e| Error::malformed("payload request", e))?;
        if req.records.is_empty() || req.records.len() > MAX_PAYLOADS_PER_REQUEST {
            return Err(Error::InvalidInput(format!(
                "a payload request names 1..={MAX_PAYLOADS_PER_REQUEST} records"
            )));
        }
        let cap = match self.kind {
            QueryKind::Knn { k } => k,
            QueryKind::Range { .. } => self.access.max_results,
        } as usize;
        let mut slots = Vec::with_capacity(req.records.len());
        let mut new = std::collections::HashSet::new();
        for &id in &req.records {
            // An unknown id, a record of another class and one outside the evaluated blocks get the
            // same answer: the reply does not confirm that a record exists.
            let slot = self
                .hosted
                .records
                .get(&id)
                .filter(|s| self.evaluated.contains(&(s.class, s.leaf)))
                .ok_or_else(|| {
                    denied(
                        "unreachable_record",
                        "payloads are served only for records in blocks this query evaluated",
                    )
                })?;
            if !self.served.contains(&id) {
                new.insert(id);
            }
            slots.push((id, *slot));
        }
        if self.served.len() + new.len() > cap {
            return Err(denied(
                "limit_payloads",
                format!(
                    "this query may fetch {cap} payloads; {} were fetched already and {} more asked for",
                    self.served.len(),
                    new.len()
                ),
            ));
        }
        meter.charge(new.len() as u64)?;
        self.served.extend(new);
        let index = &self.hosted.index;
        let payloads = slots
            .into_iter()
            .map(|(id, s)| SealedPayload {
                record_id: id,
                sealed: index.classes[s.class as usize].payloads[s.leaf as usize][s.row as usize]
                    .clone(),
            })
            .collect();
        let reply = postcard::to_allocvec(&PayloadReply { payloads })
            .map_err(|e| Error::malformed("payload reply", e))?;
        Ok(ServedPayloads {
            reply,
            records: req.records,
        })
    }

    fn blocks_evaluated(&self) -> u32 {
        self.evaluated.len() as u32
    }
}

/// Loads an index file for serving: framing, checksum, full validation, block preparation.
pub fn open_index(path: &Path) -> Result<Arc<dyn HostedIndex>> {
    open_index_with(path, &LoadLimits::default())
}

/// [`open_index`] with the server's [`LoadLimits`].
pub fn open_index_with(path: &Path, limits: &LoadLimits) -> Result<Arc<dyn HostedIndex>> {
    let bytes = crate::index::read_file(path)?;
    open_index_bytes(&bytes, path, limits)
}

/// [`open_index`] on bytes already in memory.
pub fn open_index_bytes(
    bytes: &[u8],
    path: &Path,
    limits: &LoadLimits,
) -> Result<Arc<dyn HostedIndex>> {
    use crate::index::SchemeParams;
    let raw = crate::index::split_file(bytes, path)?;
    let header = raw.header.clone();
    Ok(match &header.scheme {
        SchemeParams::Plain => Arc::new(Hosted::new(ServerIndex::from_body(
            Plain::new(),
            header,
            raw.body,
            path,
            limits,
        )?)),
        SchemeParams::Mlhe(p) => {
            let s = crate::crypto::mlhe::Mlhe::from_params(*p)?;
            Arc::new(Hosted::new(ServerIndex::from_body(
                s, header, raw.body, path, limits,
            )?))
        }
        #[cfg(feature = "paper-she")]
        SchemeParams::PaperShe(p) => {
            let s = crate::crypto::she::PaperShe::from_param_bytes(p)?;
            Arc::new(Hosted::new(ServerIndex::from_body(
                s, header, raw.body, path, limits,
            )?))
        }
        #[cfg(not(feature = "paper-she"))]
        SchemeParams::PaperShe(_) => {
            return Err(Error::UnsupportedVersion(
                "paper-she index: this build was made without the `paper-she` feature".into(),
            ))
        }
    })
}

/// Per-query statistics, gathered by the client.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct QueryStats {
    /// Round trips (round 1 included).
    pub rounds: u32,
    /// Pivot blocks evaluated by the server.
    pub pivot_blocks: u32,
    /// Leaf blocks evaluated by the server.
    pub leaf_blocks: u32,
    /// Records whose distance the client opened.
    pub records_evaluated: u64,
    /// Bytes sent.
    pub bytes_up: u64,
    /// Bytes received.
    pub bytes_down: u64,
    /// Server compute time, µs (as reported by the server).
    pub server_micros: u64,
    /// Client compute time (seal, open, planning), µs.
    pub client_micros: u64,
}

/// One result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hit {
    /// Class of the record.
    pub class: String,
    /// Opaque record id (fetch its payload with it).
    pub record_id: u64,
    /// Exact squared distance on the encoded integers.
    pub d2: u128,
}

/// What the client does next.
#[derive(Debug)]
pub enum Step {
    /// Send this block request and feed the reply to `on_blocks`.
    Blocks(Vec<u8>),
    /// Finished: read `results()`.
    Done,
}
