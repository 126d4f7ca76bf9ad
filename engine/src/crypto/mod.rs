//! The three schemes behind one trait pair (DESIGN §3).
//!
//! * [`Scheme`] is the server's, keyless side: prepare a stored block, decode a client query,
//!   evaluate the query on a block. Nothing in it can take a secret key.
//! * `ClientScheme`, the key-holding side (seal blocks for the data owner, seal a query and open a
//!   reply for the doctor), is in the `blindkd-keys` crate, not here.
//!
//! Every scheme evaluates the same linear functional: for an augmented row `a = (w∘x̃, ‖x̃‖²_w)` and
//! a query `w = (−2q̃, 1)`, the server computes `⟨a, w⟩` blindly and the client adds `‖q̃‖²_w` to get
//! the exact squared distance. See [`crate::encoding::QueryPlan`].

pub mod domain;
pub mod mlhe;
pub mod plain;
#[cfg(feature = "paper-she")]
pub mod she;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::Result;

/// Which scheme an index uses. Stored in the index header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SchemeId {
    /// No encryption: the oracle and the benchmark floor.
    Plain,
    /// Masked index + BFV linear evaluation (the default, DESIGN §3.1).
    Mlhe,
    /// The published SHE scheme. Broken; comparison only (DESIGN §3.2).
    PaperShe,
}

impl SchemeId {
    /// The CLI / wire name.
    pub fn name(self) -> &'static str {
        match self {
            SchemeId::Plain => "plain",
            SchemeId::Mlhe => "mlhe",
            SchemeId::PaperShe => "paper-she",
        }
    }
}

impl std::fmt::Display for SchemeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which family a sealed row belongs to; part of the mask PRF's domain separation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RowDomain {
    /// A data record in a leaf block.
    Leaf,
    /// A tree pivot in a pivot block.
    Pivot,
}

/// Identifies one sealed row: its domain, a per-index unique id (the slot number) and, for a
/// record, its opaque record id. mlhe binds all three into the row's mask and check weight, so
/// a host that moves a distance to another slot or claims another record id is caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RowRef {
    /// Leaf record or pivot.
    pub domain: RowDomain,
    /// Unique id within the domain and index.
    pub id: u64,
    /// The opaque record id of a leaf row; 0 for a pivot.
    pub record: u64,
}

/// The server's keyless view of a scheme.
pub trait Scheme: Send + Sync + 'static {
    /// The scheme's id.
    const ID: SchemeId;
    /// One block as sealed by the data owner and stored in the index file.
    type Block: Serialize + DeserializeOwned + Clone + Send + Sync + std::fmt::Debug;
    /// The server's evaluable form of a block (for mlhe: NTT-precomputed plaintext polynomials).
    type Prepared: Send + Sync;
    /// A client query as the server holds it while the query lives.
    type Query: Send + Sync;

    /// Most rows one block can hold.
    fn block_capacity(&self) -> usize;
    /// The scheme opens values `v` with `|v| < exact_bound()` exactly; the encoding must keep every
    /// squared distance below it (see [`crate::encoding::Schema::check_overflow`]).
    fn exact_bound(&self) -> u128;
    /// Number of rows in a stored block.
    fn block_rows(&self, block: &Self::Block) -> usize;
    /// Validates a stored block against the index dimension and prepares it for evaluation.
    fn prepare(&self, block: &Self::Block, dim: usize) -> Result<Self::Prepared>;
    /// Decodes (and bounds) a client's query bytes for an index of dimension `dim`. `pk_seed` is
    /// the server's seed for this session: mlhe rebuilds the session public key's `a` from it, so
    /// the client cannot choose `a` (and so cannot switch re-randomisation off).
    fn decode_query(&self, bytes: &[u8], dim: usize, pk_seed: &PkSeed) -> Result<Self::Query>;
    /// Evaluates `⟨a_j, w⟩` for every row of `block` and returns the reply bytes for the client.
    fn evaluate(&self, query: &Self::Query, block: &Self::Prepared) -> Result<Vec<u8>>;
}

/// The server's per-session seed for the session public key's `a` (DESIGN §3.4): chosen by the
/// server, sent to the client with the session, never chosen by the client.
pub type PkSeed = [u8; 32];

/// A fixed seed for in-process runs (tests, benchmarks, `run_in_process` callers), where no server
/// chooses one. The query server never uses it: it draws a fresh seed per session.
pub const FIXED_PK_SEED: PkSeed = [0x5e; 32];

/// Server-side: the session public material plus the sealed query, decoded together.
/// For schemes whose server evaluation needs the session public key (mlhe), `decode_query` receives
/// both concatenated by [`frame_query`].
pub fn frame_query(session_public: &[u8], sealed_query: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + session_public.len() + sealed_query.len());
    out.extend_from_slice(&(session_public.len() as u64).to_le_bytes());
    out.extend_from_slice(session_public);
    out.extend_from_slice(sealed_query);
    out
}

/// Splits what [`frame_query`] joined.
pub fn unframe_query(bytes: &[u8]) -> Result<(&[u8], &[u8])> {
    let bad = |d: &str| crate::Error::malformed("query frame", d);
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("shorter than its 8-byte header"))?;
    let len = u64::from_le_bytes(len_bytes);
    let rest = &bytes[8..];
    if len > rest.len() as u64 {
        return Err(bad("session key length exceeds the message"));
    }
    Ok(rest.split_at(len as usize))
}
