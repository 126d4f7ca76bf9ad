//! The index: what the query server stores (DESIGN §4 "Stored at the server", §7).
//!
//! File layout (all integers little-endian):
//!
//! ```text
//! magic "BLINDKD\0" (8) | format version u32 | header length u32 | header (postcard IndexHeader)
//! | body length u64 | body (postcard IndexBody<S::Block>) | blake3(all preceding bytes) (32) | "BKDEND\0\0" (8)
//! ```
//!
//! Written to a temp file in the same directory, fsynced, renamed over the target and the directory
//! fsynced, so a crash mid-write leaves the previous index intact. Read back with every length bounded
//! before allocation and the checksum verified before the body is parsed; then every block is
//! validated against the header's dimension and scheme.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::crypto::{mlhe::MlheParams, Scheme, SchemeId};
use crate::tree::{ShapeNode, TreeShape};
use crate::{Error, Result};

/// Current on-disk format version. Bump on any incompatible change and keep a reader for the old one.
///
/// Version 2 (issue 17): mlhe uses a prime plaintext modulus and a check row per block, and the
/// header names the issuer whose tokens the index accepts. Version 1
/// `plain` indexes still open; version 1 `mlhe` indexes cannot be verified by a client and are
/// refused with a message to rebuild them.
///
/// Version 3 (issue 12): mlhe row masks come from one keyed BLAKE3 XOF per row instead of a
/// keyed hash seeding ChaCha20 (4× cheaper to open). The layout is version 2's; version 2 `plain`
/// indexes open, version 2 `mlhe` indexes are refused with a message to rebuild them.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format version this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// File magic.
pub const MAGIC: &[u8; 8] = b"BLINDKD\0";
/// Footer magic.
pub const END_MAGIC: &[u8; 8] = b"BKDEND\0\0";
/// Largest header accepted.
pub const MAX_HEADER: u32 = 64 * 1024;
/// Largest index file accepted (64 GiB).
pub const MAX_FILE: u64 = 64 << 30;

/// A random 16-byte index id, shown in hex.
pub type IndexId = [u8; 16];

/// Public scheme parameters, per scheme.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SchemeParams {
    /// `plain`.
    Plain,
    /// `mlhe`.
    Mlhe(MlheParams),
    /// `paper-she`: the public modulus and sizes, opaque here so the format does not depend on the feature.
    PaperShe(Vec<u8>),
}

impl SchemeParams {
    /// The scheme id.
    pub fn id(&self) -> SchemeId {
        match self {
            SchemeParams::Plain => SchemeId::Plain,
            SchemeParams::Mlhe(_) => SchemeId::Mlhe,
            SchemeParams::PaperShe(_) => SchemeId::PaperShe,
        }
    }
}

/// The header: readable without parsing the body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexHeader {
    /// The index id (the token audience).
    pub index_id: IndexId,
    /// Scheme and its public parameters.
    pub scheme: SchemeParams,
    /// Feature dimension d.
    pub dim: u32,
    /// Most rows per block.
    pub block_capacity: u32,
    /// Total records.
    pub records: u64,
    /// Creation time (unix seconds).
    pub created: u64,
    /// The issuer (hospital) whose tokens may open sessions on this index (format 2; empty for
    /// a version 1 file: any pinned issuer, as before).
    pub issuer: String,
}

/// The header of a format version 1 file (no issuer).
#[derive(Deserialize)]
struct IndexHeaderV1 {
    index_id: IndexId,
    scheme: SchemeParams,
    dim: u32,
    block_capacity: u32,
    records: u64,
    created: u64,
}

/// The body for one scheme: one tree per policy class.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexBody<B> {
    /// Class trees, sorted by class name.
    pub classes: Vec<ClassIndex<B>>,
}

/// One policy class: its tree shape, masked pivots, sealed radii and masked leaves.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassIndex<B> {
    /// The policy class name.
    // LEAKAGE: [forest-shape] class names and per-class record counts (the forest shape) are visible to the server.
    pub class: String,
    /// The public tree shape.
    pub shape: TreeShape,
    /// Masked pivots: node `v` is row `v % capacity` of block `v / capacity`.
    pub pivot_blocks: Vec<B>,
    /// Radius bounds sealed with the class's AEAD key; the server hands them out as opaque bytes.
    pub sealed_radii: Vec<u8>,
    /// Masked leaf blocks, in leaf order.
    pub leaves: Vec<LeafBlock<B>>,
}

/// One leaf block.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeafBlock<B> {
    /// The sealed block.
    pub block: B,
    /// Random opaque record ids, one per row.
    pub record_ids: Vec<u64>,
    /// AEAD-sealed payloads (record identity + payload fields), one per row.
    pub payloads: Vec<Vec<u8>>,
}

/// Summary of an index for `inspect`: what the server sees, never a value.
#[derive(Clone, Debug, Serialize)]
pub struct IndexSummary {
    /// Format version.
    pub format_version: u32,
    /// Index id, hex.
    pub index_id: String,
    /// Scheme name.
    pub scheme: String,
    /// Scheme parameters (public).
    pub params: String,
    /// Dimension.
    pub dim: u32,
    /// Total records.
    pub records: u64,
    /// Block capacity.
    pub block_capacity: u32,
    /// File size in bytes.
    pub file_bytes: u64,
    /// Projected server memory once loaded, in bytes ([`projected_memory`]).
    pub server_memory_bytes: u64,
    /// Per class: name, records, nodes, leaves, depth, pivot blocks.
    pub classes: Vec<ClassSummary>,
}

/// Per-class part of [`IndexSummary`].
#[derive(Clone, Debug, Serialize)]
pub struct ClassSummary {
    /// Class name.
    pub class: String,
    /// Records.
    pub records: u64,
    /// Tree nodes.
    pub nodes: usize,
    /// Leaves.
    pub leaves: usize,
    /// Tree depth.
    pub depth: usize,
    /// Pivot blocks.
    pub pivot_blocks: usize,
}

/// Hex of an index id.
pub fn id_hex(id: &IndexId) -> String {
    hex::encode(id)
}

/// Parses a hex index id.
pub fn parse_id(s: &str) -> Result<IndexId> {
    let v = hex::decode(s).map_err(|e| Error::InvalidInput(format!("index id `{s}`: {e}")))?;
    v.try_into()
        .map_err(|_| Error::InvalidInput(format!("index id `{s}` is not 16 bytes of hex")))
}

/// What a server accepts from one index file before it prepares anything (issue 17, C1): a
/// small file can otherwise ask for a lot of memory (every mlhe block becomes `(d+1)` NTT
/// polynomials of `N` coefficients however few rows it holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadLimits {
    /// Policy classes per index.
    pub max_classes: usize,
    /// Blocks (pivot and leaf) per index.
    pub max_blocks: usize,
    /// Projected server memory of the prepared index, in bytes ([`projected_memory`]).
    pub max_memory: u64,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            max_classes: 4096,
            max_blocks: 1 << 16,
            max_memory: 16 << 30,
        }
    }
}

/// Server memory one prepared block takes (its evaluable form), by scheme.
pub fn prepared_block_bytes(params: &SchemeParams, rows: usize, dim: usize) -> u64 {
    let cols = dim as u64 + 1;
    match params {
        SchemeParams::Plain => rows as u64 * cols * 8,
        // (d+1) polynomials of N coefficients per ciphertext prime, 8 bytes each, plus the
        // precomputed `c1 = Σ aᵢ·Yᵢ` (one more polynomial).
        SchemeParams::Mlhe(p) => (cols + 1) * u64::from(p.degree) * p.moduli_bits.len() as u64 * 8,
        // (d+1) big-integer ciphertexts of about 2·k0 bits per row.
        SchemeParams::PaperShe(_) => rows as u64 * cols * 512,
    }
}

/// The memory a server will hold for an index with this header and body, in bytes: prepared
/// blocks plus record ids, payloads and sealed radii (allocator overhead not included).
pub fn projected_memory<B>(
    header: &IndexHeader,
    body: &IndexBody<B>,
    rows: impl Fn(&B) -> usize,
) -> u64 {
    let dim = header.dim as usize;
    let block = |b: &B| prepared_block_bytes(&header.scheme, rows(b), dim);
    body.classes
        .iter()
        .map(|c| {
            let pivots: u64 = c.pivot_blocks.iter().map(&block).sum();
            let leaves: u64 = c
                .leaves
                .iter()
                .map(|l| {
                    block(&l.block)
                        + l.record_ids.len() as u64 * 8
                        + l.payloads.iter().map(|p| p.len() as u64 + 24).sum::<u64>()
                })
                .sum();
            pivots + leaves + c.sealed_radii.len() as u64
        })
        .sum()
}

/// Checks `body` against `limits` before anything is prepared.
fn check_load_limits<B>(
    header: &IndexHeader,
    body: &IndexBody<B>,
    rows: impl Fn(&B) -> usize,
    limits: &LoadLimits,
    path: &Path,
) -> Result<()> {
    let over = |what: String| {
        Err(Error::LimitExceeded(format!(
            "{}: {what}; rebuild the index with fewer classes or larger leaves (--leaf-size), or \
             raise the server's limit",
            path.display()
        )))
    };
    if body.classes.len() > limits.max_classes {
        return over(format!(
            "{} classes, over the limit of {}",
            body.classes.len(),
            limits.max_classes
        ));
    }
    let blocks: usize = body
        .classes
        .iter()
        .map(|c| c.pivot_blocks.len() + c.leaves.len())
        .sum();
    if blocks > limits.max_blocks {
        return over(format!(
            "{blocks} blocks, over the limit of {}",
            limits.max_blocks
        ));
    }
    let memory = projected_memory(header, body, rows);
    if memory > limits.max_memory {
        return over(format!(
            "it would take {} MiB of server memory, over the limit of {} MiB",
            memory >> 20,
            limits.max_memory >> 20
        ));
    }
    Ok(())
}

/// What the owner vouches for about one class of an index, delivered to doctors inside their
/// (sealed) key bundle: the record count and a hash of the public tree shape. The client compares
/// round 1 with it, so a host cannot present a smaller or rewired tree (issue 17, S1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassManifest {
    /// The class.
    pub class: String,
    /// Records in the class.
    pub records: u64,
    /// [`shape_hash`] of the class's tree.
    pub shape: [u8; 32],
}

/// The hash of a tree shape (BLAKE3 of a domain string and its postcard encoding).
pub fn shape_hash(shape: &TreeShape) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"blindkd 2026-11 tree shape v1");
    // Infallible for a Vec-of-enums value; an empty encoding would still be hashed.
    h.update(&postcard::to_allocvec(shape).unwrap_or_default());
    *h.finalize().as_bytes()
}

/// Serialises header and body into the file format.
pub fn encode_file<B: Serialize>(header: &IndexHeader, body: &IndexBody<B>) -> Result<Vec<u8>> {
    let h = postcard::to_allocvec(header).map_err(|e| Error::malformed("index header", e))?;
    let mut out = Vec::with_capacity(8 + 4 + 4 + h.len() + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    // The body is encoded in place (one buffer, not a body buffer and a copy: at 10⁷ records the
    // file is 1.7 GB), then its length is patched in.
    let len_at = out.len();
    out.extend_from_slice(&0u64.to_le_bytes());
    let mut out = postcard::to_extend(body, out).map_err(|e| Error::malformed("index body", e))?;
    let body_len = (out.len() - len_at - 8) as u64;
    out[len_at..len_at + 8].copy_from_slice(&body_len.to_le_bytes());
    out.reserve_exact(40);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out.extend_from_slice(END_MAGIC);
    Ok(out)
}

/// A file split and checked at the framing level: header parsed, body bytes checksummed.
#[derive(Debug)]
pub struct RawIndex<'a> {
    /// Format version found.
    pub version: u32,
    /// The parsed header.
    pub header: IndexHeader,
    /// The body bytes (checksum verified).
    pub body: &'a [u8],
}

/// Checks magic, version, lengths and checksum, and parses the header. `path` is only for errors.
pub fn split_file<'a>(bytes: &'a [u8], path: &Path) -> Result<RawIndex<'a>> {
    let corrupt = |d: String| Error::DataCorruption {
        path: path.to_path_buf(),
        detail: d,
    };
    if bytes.len() < 8 + 4 + 4 + 8 + 40 {
        return Err(corrupt(format!(
            "file is {} bytes, too short for an index",
            bytes.len()
        )));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt("not a blindkd index (bad magic)".into()));
    }
    let version = u32::from_le_bytes(take4(bytes, 8));
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(Error::UnsupportedVersion(format!(
            "{}: index format version {version}; this build reads versions \
             {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}",
            path.display()
        )));
    }
    let hlen = u32::from_le_bytes(take4(bytes, 12));
    if hlen > MAX_HEADER || 16 + hlen as usize + 8 + 40 > bytes.len() {
        return Err(corrupt(format!("header length {hlen} is out of bounds")));
    }
    let hend = 16 + hlen as usize;
    let blen = u64::from_le_bytes(take8(bytes, hend));
    let expected = (hend as u64 + 8)
        .checked_add(blen)
        .and_then(|v| v.checked_add(40));
    if expected != Some(bytes.len() as u64) {
        return Err(corrupt(format!(
            "body length {blen} does not match the file size {} (truncated or appended to)",
            bytes.len()
        )));
    }
    let body_start = hend + 8;
    let body_end = bytes.len() - 40;
    if &bytes[bytes.len() - 8..] != END_MAGIC {
        return Err(corrupt("missing footer (truncated?)".into()));
    }
    let sum = blake3::hash(&bytes[..body_end]);
    if sum.as_bytes() != &bytes[body_end..body_end + 32] {
        return Err(corrupt("checksum mismatch: the file is corrupt".into()));
    }
    if version < FORMAT_VERSION && header_scheme_is_mlhe(&bytes[16..hend]) {
        let what = if version == 1 {
            "t = 2^40, no check rows, which a client cannot verify"
        } else {
            "row masks from before issue 12, which this client derives differently"
        };
        return Err(Error::UnsupportedVersion(format!(
            "{}: a format version {version} mlhe index ({what}); rebuild it with `blindkd index`",
            path.display()
        )));
    }
    let header: IndexHeader = if version == 1 {
        let h: IndexHeaderV1 =
            from_exact_bytes(&bytes[16..hend]).map_err(|e| corrupt(format!("header: {e}")))?;
        IndexHeader {
            index_id: h.index_id,
            scheme: h.scheme,
            dim: h.dim,
            block_capacity: h.block_capacity,
            records: h.records,
            created: h.created,
            issuer: String::new(),
        }
    } else {
        from_exact_bytes(&bytes[16..hend]).map_err(|e| corrupt(format!("header: {e}")))?
    };
    Ok(RawIndex {
        version,
        header,
        body: &bytes[body_start..body_end],
    })
}

/// Whether a header's scheme is mlhe: the header starts with the 16-byte index id, then the
/// `SchemeParams` variant index (postcard varint; 1 = `Mlhe`).
fn header_scheme_is_mlhe(header: &[u8]) -> bool {
    header.get(16) == Some(&1)
}

/// Parses `bytes` as exactly one postcard value: trailing bytes are refused (postcard's
/// `from_bytes` silently ignores them, which would let a file carry unvalidated data).
fn from_exact_bytes<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> std::result::Result<T, String> {
    let (v, rest) = postcard::take_from_bytes(bytes).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} unexpected trailing bytes", rest.len()));
    }
    Ok(v)
}

fn take4(b: &[u8], at: usize) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    a
}

fn take8(b: &[u8], at: usize) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    a
}

/// Reads a whole index file into memory with a size bound.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_FILE {
        return Err(Error::LimitExceeded(format!(
            "{} is {} bytes, above the {MAX_FILE}-byte limit",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// A loaded, validated, evaluable index for one scheme: what the query server holds.
pub struct ServerIndex<S: Scheme> {
    /// The scheme (public parameters).
    pub scheme: S,
    /// The header.
    pub header: IndexHeader,
    /// Per class.
    pub classes: Vec<ServerClass<S>>,
}

/// One class of a loaded index.
pub struct ServerClass<S: Scheme> {
    /// Name.
    pub class: String,
    /// Shape.
    pub shape: TreeShape,
    /// Prepared pivot blocks.
    pub pivot_blocks: Vec<S::Prepared>,
    /// Sealed radii.
    pub sealed_radii: Vec<u8>,
    /// Prepared leaf blocks.
    pub leaves: Vec<S::Prepared>,
    /// Record ids per leaf.
    pub record_ids: Vec<Vec<u64>>,
    /// Payloads per leaf.
    pub payloads: Vec<Vec<Vec<u8>>>,
}

impl<S: Scheme> ServerIndex<S> {
    /// Parses and fully validates a body, checks it against `limits` (before any allocation
    /// that scales with them), then prepares every block (for mlhe: NTT precompute), in parallel.
    pub fn from_body(
        scheme: S,
        header: IndexHeader,
        body: &[u8],
        path: &Path,
        limits: &LoadLimits,
    ) -> Result<Self> {
        use rayon::prelude::*;
        let corrupt = |d: String| Error::DataCorruption {
            path: path.to_path_buf(),
            detail: d,
        };
        let body: IndexBody<S::Block> =
            from_exact_bytes(body).map_err(|e| corrupt(format!("body: {e}")))?;
        if body.classes.is_empty() {
            return Err(corrupt("index has no classes".into()));
        }
        check_load_limits(&header, &body, |b| scheme.block_rows(b), limits, path)?;
        let dim = header.dim as usize;
        let cap = scheme.block_capacity();
        if header.block_capacity as usize > cap || header.block_capacity == 0 {
            return Err(corrupt("block capacity out of range for the scheme".into()));
        }
        let mut total = 0u64;
        let mut classes = Vec::with_capacity(body.classes.len());
        let mut names = std::collections::BTreeSet::new();
        for c in body.classes {
            if !names.insert(c.class.clone()) {
                return Err(corrupt(format!("class `{}` appears twice", c.class)));
            }
            c.shape
                .validate(header.block_capacity as usize)
                .map_err(|e| corrupt(format!("class `{}`: {e}", c.class)))?;
            let nodes = c.shape.nodes.len();
            if c.pivot_blocks.len() != nodes.div_ceil(cap) {
                return Err(corrupt(format!(
                    "class `{}`: wrong pivot block count",
                    c.class
                )));
            }
            for (b, blk) in c.pivot_blocks.iter().enumerate() {
                let want = (nodes - b * cap).min(cap);
                if scheme.block_rows(blk) != want {
                    return Err(corrupt(format!(
                        "class `{}`: pivot block {b} has the wrong row count",
                        c.class
                    )));
                }
            }
            if c.leaves.len() != c.shape.leaves.len() {
                return Err(corrupt(format!("class `{}`: leaf count mismatch", c.class)));
            }
            for (i, leaf) in c.leaves.iter().enumerate() {
                let ShapeNode::Leaf { rows, .. } = c.shape.nodes[c.shape.leaves[i] as usize] else {
                    return Err(corrupt("leaf list points at an inner node".into()));
                };
                let rows = rows as usize;
                if scheme.block_rows(&leaf.block) != rows
                    || leaf.record_ids.len() != rows
                    || leaf.payloads.len() != rows
                {
                    return Err(corrupt(format!(
                        "class `{}`: leaf {i} row counts disagree",
                        c.class
                    )));
                }
            }
            total += c.shape.records();
            let prep = |b: &S::Block| scheme.prepare(b, dim);
            let pivot_blocks = c
                .pivot_blocks
                .par_iter()
                .map(prep)
                .collect::<Result<Vec<_>>>()?;
            let leaves = c
                .leaves
                .par_iter()
                .map(|l| prep(&l.block))
                .collect::<Result<Vec<_>>>()?;
            let (record_ids, payloads) = c
                .leaves
                .into_iter()
                .map(|l| (l.record_ids, l.payloads))
                .unzip();
            classes.push(ServerClass {
                class: c.class,
                shape: c.shape,
                pivot_blocks,
                sealed_radii: c.sealed_radii,
                leaves,
                record_ids,
                payloads,
            });
        }
        if total != header.records {
            return Err(corrupt(
                "record count in the header does not match the trees".into(),
            ));
        }
        Ok(ServerIndex {
            scheme,
            header,
            classes,
        })
    }

    /// The index id.
    pub fn id(&self) -> IndexId {
        self.header.index_id
    }
}

/// Summarises an index file for `inspect` without preparing blocks: shape and sizes only.
pub fn summarize(bytes: &[u8], path: &Path) -> Result<IndexSummary> {
    let raw = split_file(bytes, path)?;
    match raw.header.scheme.id() {
        SchemeId::Plain => {
            let s = crate::crypto::plain::Plain::new();
            summarize_body(&raw, bytes.len(), path, |b| s.block_rows(b))
        }
        SchemeId::Mlhe => {
            let SchemeParams::Mlhe(p) = &raw.header.scheme else {
                unreachable!("the id comes from the params")
            };
            let s = crate::crypto::mlhe::Mlhe::from_params(*p)?;
            summarize_body(&raw, bytes.len(), path, |b| s.block_rows(b))
        }
        #[cfg(feature = "paper-she")]
        SchemeId::PaperShe => {
            let SchemeParams::PaperShe(p) = &raw.header.scheme else {
                unreachable!("the id comes from the params")
            };
            let s = crate::crypto::she::PaperShe::from_param_bytes(p)?;
            summarize_body(&raw, bytes.len(), path, |b| s.block_rows(b))
        }
        #[cfg(not(feature = "paper-she"))]
        SchemeId::PaperShe => Err(Error::UnsupportedVersion(
            "this is a paper-she index; rebuild with the `paper-she` feature to read it".into(),
        )),
    }
}

/// Parses a checked body for scheme block type `B`.
pub fn parse_body<B: serde::de::DeserializeOwned>(
    raw: &RawIndex<'_>,
    path: &Path,
) -> Result<IndexBody<B>> {
    from_exact_bytes(raw.body).map_err(|e| Error::DataCorruption {
        path: path.to_path_buf(),
        detail: format!("body: {e}"),
    })
}

fn summarize_body<B: serde::de::DeserializeOwned>(
    raw: &RawIndex<'_>,
    file_bytes: usize,
    path: &Path,
    rows: impl Fn(&B) -> usize,
) -> Result<IndexSummary> {
    let body: IndexBody<B> = parse_body(raw, path)?;
    // The shape comes from the file: validate it before walking it (a cycle would make
    // `leaf_paths` loop and allocate without bound; an out-of-range child would panic).
    for c in &body.classes {
        c.shape
            .validate(raw.header.block_capacity as usize)
            .map_err(|e| Error::DataCorruption {
                path: path.to_path_buf(),
                detail: format!("class `{}`: {e}", c.class),
            })?;
    }
    let classes = body
        .classes
        .iter()
        .map(|c| ClassSummary {
            class: c.class.clone(),
            records: c.shape.records(),
            nodes: c.shape.nodes.len(),
            leaves: c.shape.leaves.len(),
            depth: c.shape.leaf_paths().iter().map(Vec::len).max().unwrap_or(0),
            pivot_blocks: c.pivot_blocks.len(),
        })
        .collect();
    let h = &raw.header;
    Ok(IndexSummary {
        format_version: raw.version,
        index_id: id_hex(&h.index_id),
        scheme: h.scheme.id().to_string(),
        params: match &h.scheme {
            SchemeParams::Plain => "none (plaintext: NOT confidential)".into(),
            SchemeParams::Mlhe(p) => format!(
                "BFV N={} t={} (prime) q={:?} bits, flood 2^{}, one check row per block",
                p.degree, p.t, p.moduli_bits, p.flood_bits
            ),
            SchemeParams::PaperShe(_) => "paper-she (INSECURE baseline)".into(),
        },
        dim: h.dim,
        records: h.records,
        block_capacity: h.block_capacity,
        file_bytes: file_bytes as u64,
        server_memory_bytes: projected_memory(h, &body, rows),
        classes,
    })
}

#[cfg(test)]
mod load_limit_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn body(classes: usize, leaves: usize) -> IndexBody<usize> {
        let class = |i: usize| ClassIndex {
            class: format!("c{i}"),
            shape: TreeShape {
                nodes: Vec::new(),
                leaves: Vec::new(),
            },
            pivot_blocks: vec![1],
            sealed_radii: Vec::new(),
            leaves: (0..leaves)
                .map(|_| LeafBlock {
                    block: 1,
                    record_ids: vec![0],
                    payloads: vec![Vec::new()],
                })
                .collect(),
        };
        IndexBody {
            classes: (0..classes).map(class).collect(),
        }
    }

    fn header() -> IndexHeader {
        IndexHeader {
            index_id: [0; 16],
            scheme: SchemeParams::Mlhe(crate::crypto::mlhe::MlheParams::default()),
            dim: 4,
            block_capacity: 8192,
            records: 0,
            created: 0,
            issuer: String::new(),
        }
    }

    /// Issue 17, C1: classes, blocks and projected memory are bounded before anything is prepared.
    #[test]
    fn classes_blocks_and_memory_are_capped() {
        let limits = LoadLimits {
            max_classes: 10,
            max_blocks: 100,
            max_memory: 64 << 20,
        };
        let check = |b: &IndexBody<usize>| {
            check_load_limits(&header(), b, |r| *r, &limits, Path::new("x.bkd"))
        };
        check(&body(10, 2)).unwrap();
        let e = check(&body(11, 1)).unwrap_err().to_string();
        assert!(e.contains("11 classes"), "{e}");
        let e = check(&body(2, 60)).unwrap_err().to_string();
        assert!(e.contains("122 blocks"), "{e}");
        // (5 + 1) × 8192 × 3 × 8 B ≈ 1.1 MiB per mlhe block (d + 1 columns and the precomputed
        // c1): 69 blocks are over 64 MiB.
        let e = check(&body(1, 69)).unwrap_err().to_string();
        assert!(e.contains("server memory"), "{e}");
        assert_eq!(
            projected_memory(&header(), &body(1, 1), |r| *r),
            2 * 6 * 8192 * 3 * 8 + 8 + 24
        );
    }
}
