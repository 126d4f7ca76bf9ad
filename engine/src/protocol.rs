//! The query protocol (DESIGN §4): client and server state machines, independent of HTTP.
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
use crate::index::{IndexHeader, LoadLimits, ServerIndex};
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
    pub query: Vec<u8>,
}

/// Round-1 reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StartReply {
    /// One entry per searched class.
    pub classes: Vec<ClassRound1>,
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
    pub sealed_radii: Vec<u8>,
    /// One reply per pivot block.
    pub pivot_replies: Vec<Vec<u8>>,
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
        let pivot_blocks: u64 = classes
            .iter()
            .map(|&c| self.index.classes[c as usize].pivot_blocks.len() as u64)
            .sum();
        meter.charge(pivot_blocks)?;
        let query = self.index.scheme.decode_query(
            &req.query,
            self.index.header.dim as usize,
            &access.pk_seed,
        )?;
        // Every pivot block of every searched class: the pivot round is independent of the query.
        let out = classes
            .iter()
            .map(|&c| {
                let cls = &self.index.classes[c as usize];
                let pivot_replies = cls
                    .pivot_blocks
                    .par_iter()
                    .map(|b| self.index.scheme.evaluate(&query, b))
                    .collect::<Result<Vec<_>>>()?;
                Ok(ClassRound1 {
                    class_idx: c,
                    class: cls.class.clone(),
                    shape: cls.shape.clone(),
                    sealed_radii: cls.sealed_radii.clone(),
                    pivot_replies,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let reply = StartReply {
            classes: out,
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
        };
        let live = Live {
            hosted: self,
            query,
            access: access.clone(),
            kind: req.kind,
            classes,
            evaluated: Default::default(),
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
            .map(|b| {
                let cls = &index.classes[b.class_idx as usize];
                Ok(EvaluatedBlock {
                    block: *b,
                    record_ids: cls.record_ids[b.leaf as usize].clone(),
                    reply: index
                        .scheme
                        .evaluate(&self.query, &cls.leaves[b.leaf as usize])?,
                })
            })
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

#[cfg(feature = "client")]
pub use client::{new_query_client, run_in_process, run_with_payloads, BatchPolicy, QueryClient};

#[cfg(feature = "client")]
mod client {
    use std::collections::BinaryHeap;

    use super::*;
    use crate::crypto::{aead, domain, frame_query, ClientScheme, RowDomain, RowRef};
    use crate::encoding::QueryPlan;
    use crate::index::SchemeParams;
    use crate::owner::{payload_aad, radii_aad, BundleEntry, OpenedPayload};
    use crate::tree::{lower_bound, prunable, ShapeNode};

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
    }

    impl Default for BatchPolicy {
        fn default() -> Self {
            // Measured (engine/tests/batch_policy.rs, ARCHITECTURE.md): with 8192-record leaves a
            // first batch of 4 evaluates as few blocks as 1 or 2 at 10⁶ records with 0.5–1.4 fewer
            // rounds; 8 overshoots (+2 blocks).
            BatchPolicy {
                knn_first: 4,
                max_per_request: 64,
                max_blocks: u32::MAX,
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
        fn open_payload(&self, class: &str, record_id: u64, sealed: &[u8])
            -> Result<OpenedPayload>;
        /// The payload request for every result, or `None` if there are no results. Ids go out
        /// sorted, so the request's order says nothing about the ranking.
        fn payload_request(&self) -> Result<Option<Vec<u8>>>;
        /// Opens a payload reply: one opened payload per result, by record id. A reply that
        /// misses a result, adds a record or does not open is an error.
        fn open_payloads(&self, reply: &[u8]) -> Result<HashMap<u64, OpenedPayload>>;
    }

    /// Builds a query client for the scheme named in the bundle entry. `q` is the encoded query.
    pub fn new_query_client(
        entry: &BundleEntry,
        kind: QueryKind,
        q: &[i64],
        classes: Vec<String>,
        batch: BatchPolicy,
    ) -> Result<Box<dyn QueryClient>> {
        Ok(match &entry.scheme {
            SchemeParams::Plain => {
                Box::new(Driver::new(Plain::new(), entry, kind, q, classes, batch)?)
            }
            SchemeParams::Mlhe(p) => Box::new(Driver::new(
                crate::crypto::mlhe::Mlhe::from_params(*p)?,
                entry,
                kind,
                q,
                classes,
                batch,
            )?),
            #[cfg(feature = "paper-she")]
            SchemeParams::PaperShe(p) => Box::new(Driver::new(
                crate::crypto::she::PaperShe::from_param_bytes(p)?,
                entry,
                kind,
                q,
                classes,
                batch,
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
                let r: PayloadReply = postcard::from_bytes(&reply)
                    .map_err(|e| Error::malformed("payload reply", e))?;
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
        index_id: crate::index::IndexId,
        keys: HashMap<String, ClassKeys<S>>,
        session: S::Session,
        plan: QueryPlan,
        kind: QueryKind,
        threshold: u128,
        classes: Vec<String>,
        class_names: HashMap<u32, String>,
        pending: Vec<Candidate>,
        next_batch: u32,
        /// Leaves requested so far.
        requested: u32,
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
                let ck = crate::crypto::ClassKey::from_bytes(*raw);
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
            let session = scheme.new_session()?;
            let stats = QueryStats {
                client_micros: micros(t),
                ..QueryStats::default()
            };
            Ok(Driver {
                plan: QueryPlan::new(q, &schema.weights()),
                index_id: entry.index_id,
                scheme,
                keys,
                session,
                kind,
                threshold,
                classes,
                class_names: HashMap::new(),
                pending: Vec::new(),
                next_batch: batch.knn_first.max(1),
                requested: 0,
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

    impl<S: ClientScheme> QueryClient for Driver<S> {
        fn start_request(&mut self, pk_seed: &PkSeed) -> Result<Vec<u8>> {
            let t = Instant::now();
            let query = frame_query(
                &self.scheme.session_public(&self.session, pk_seed)?,
                &self.scheme.seal_query(&self.session, &self.plan.w)?,
            );
            let bytes = postcard::to_allocvec(&StartRequest {
                kind: self.kind,
                classes: self.classes.clone(),
                query,
            })
            .map_err(|e| Error::malformed("start request", e))?;
            self.stats.bytes_up += bytes.len() as u64;
            self.stats.client_micros += micros(t);
            Ok(bytes)
        }

        fn on_start(&mut self, reply: &[u8]) -> Result<Step> {
            let t = Instant::now();
            self.stats.rounds += 1;
            self.stats.bytes_down += reply.len() as u64;
            let r: StartReply =
                postcard::from_bytes(reply).map_err(|e| Error::malformed("start reply", e))?;
            self.stats.server_micros += r.server_micros;
            let cap = self.scheme.block_capacity();
            for c in r.classes {
                let keys = self.keys.get(&c.class).ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "server returned class `{}` we hold no key for",
                        c.class
                    ))
                })?;
                c.shape
                    .validate(self.scheme.block_capacity())
                    .map_err(|e| Error::malformed("tree shape", e))?;
                let nodes = c.shape.nodes.len();
                if c.pivot_replies.len() != nodes.div_ceil(cap) {
                    return Err(Error::malformed(
                        "start reply",
                        "wrong number of pivot replies",
                    ));
                }
                let radii_bytes = aead::open(
                    &keys.radius,
                    &radii_aad(&self.index_id, &c.class),
                    &c.sealed_radii,
                )?;
                let radii: Vec<u64> =
                    postcard::from_bytes(&radii_bytes).map_err(|e| Error::malformed("radii", e))?;
                if radii.len() != nodes {
                    return Err(Error::malformed("radii", "one radius per node expected"));
                }
                let mut d2 = Vec::with_capacity(nodes);
                for (b, rep) in c.pivot_replies.iter().enumerate() {
                    let rows: Vec<RowRef> = (b * cap..((b + 1) * cap).min(nodes))
                        .map(|v| RowRef {
                            domain: RowDomain::Pivot,
                            id: v as u64,
                        })
                        .collect();
                    d2.extend(self.scheme.open(
                        &keys.key,
                        &self.session,
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
                    let ShapeNode::Leaf {
                        first_slot, rows, ..
                    } = c.shape.nodes[c.shape.leaves[leaf] as usize]
                    else {
                        return Err(Error::malformed(
                            "tree shape",
                            "leaf list points at an inner node",
                        ));
                    };
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
            // Descending, so the most promising candidates pop from the end.
            self.pending
                .sort_by_key(|c| std::cmp::Reverse((c.lb, c.class_idx, c.leaf)));
            self.stats.client_micros += micros(t);
            self.next_step()
        }

        fn on_blocks(&mut self, reply: &[u8]) -> Result<Step> {
            let t = Instant::now();
            if self.done {
                return Err(Error::InvalidInput("query already finished".into()));
            }
            self.stats.rounds += 1;
            self.stats.bytes_down += reply.len() as u64;
            let r: BlockReply =
                postcard::from_bytes(reply).map_err(|e| Error::malformed("block reply", e))?;
            self.stats.server_micros += r.server_micros;
            let mut work = Vec::with_capacity(r.blocks.len());
            for eb in r.blocks {
                let pos = self
                    .pending
                    .iter()
                    .position(|c| c.class_idx == eb.block.class_idx && c.leaf == eb.block.leaf)
                    .ok_or_else(|| Error::malformed("block reply", "a block we did not ask for"))?;
                let cand = self.pending.remove(pos);
                if eb.record_ids.len() != cand.rows as usize {
                    return Err(Error::malformed("block reply", "record id count mismatch"));
                }
                let class = self
                    .class_names
                    .get(&cand.class_idx)
                    .cloned()
                    .ok_or_else(|| Error::malformed("block reply", "unknown class"))?;
                work.push((cand, class, eb));
            }
            // Opening (decrypt + unmask) is independent per block: spread it over the cores.
            let opened = {
                use rayon::prelude::*;
                let (scheme, keys, session, plan) =
                    (&self.scheme, &self.keys, &self.session, &self.plan);
                work.par_iter()
                    .map(|(cand, class, eb)| {
                        let rows: Vec<RowRef> = (cand.first_slot
                            ..cand.first_slot + cand.rows as u64)
                            .map(|s| RowRef {
                                domain: RowDomain::Leaf,
                                id: s,
                            })
                            .collect();
                        scheme.open(&keys[class].key, session, &eb.reply, plan, &rows)
                    })
                    .collect::<Result<Vec<_>>>()?
            };
            for ((cand, _, eb), d2) in work.into_iter().zip(opened) {
                self.stats.leaf_blocks += 1;
                self.stats.records_evaluated += cand.rows as u64;
                for (d, id) in d2.into_iter().zip(eb.record_ids) {
                    self.offer(d, id, cand.class_idx);
                }
            }
            self.stats.client_micros += micros(t);
            self.next_step()
        }

        fn results(&self) -> Vec<Hit> {
            self.hits.clone()
        }

        fn stats(&self) -> &QueryStats {
            &self.stats
        }

        fn open_payload(
            &self,
            class: &str,
            record_id: u64,
            sealed: &[u8],
        ) -> Result<OpenedPayload> {
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
            let r: PayloadReply =
                postcard::from_bytes(reply).map_err(|e| Error::malformed("payload reply", e))?;
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
}
