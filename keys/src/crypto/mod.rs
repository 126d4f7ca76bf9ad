//! The key-holding side of the schemes (DESIGN §3): class keys and [`ClientScheme`].
//!
//! Re-exports the engine's [`blindkd_engine::crypto`] (the keyless [`Scheme`] side) and adds what
//! holds keys: the data owner seals blocks, the doctor seals a query and opens a reply.

pub mod aead;
pub mod mlhe;
pub mod plain;
#[cfg(feature = "paper-she")]
pub mod she;

pub use blindkd_engine::crypto::*;

use blindkd_engine::encoding::QueryPlan;
use blindkd_engine::Result;

/// The key-holding side of a scheme: the data owner seals, the doctor queries and opens.
pub trait ClientScheme: Scheme {
    /// Per-class key material derived from a [`ClassKey`] (mlhe: the mask PRF key).
    type Key: Send + Sync;
    /// One query's client secrets (mlhe: a fresh BFV secret key, its session public key and its
    /// encryptions of zero). Made before the query is known ([`ClientScheme::new_session`]), so it
    /// can come from a pool (`protocol::QueryKeyPool`); it seals exactly one query.
    type Session: Send + Sync;

    /// Derives the key material of one class for one index.
    fn derive_key(&self, class_key: &ClassKey, index_id: &[u8; 16]) -> Result<Self::Key>;
    /// Seals augmented rows into one block. `rows.len() ≤ block_capacity()`.
    fn seal_block(&self, key: &Self::Key, rows: &[(RowRef, Vec<i64>)]) -> Result<Self::Block>;
    /// Fresh secrets for one query of `width = dim + 1` coordinates, for the server session whose
    /// seed is `pk_seed`. The expensive part of sealing (mlhe: every encryption of zero) happens
    /// here, before the doctor asks (issue 12).
    fn new_session(&self, pk_seed: &PkSeed, width: usize) -> Result<Self::Session>;
    /// Public session material the server needs (mlhe: the `b` of the session public key, whose
    /// `a` the server derives from `pk_seed`), as bytes.
    fn session_public(&self, session: &Self::Session) -> Result<Vec<u8>>;
    /// Seals the query functional `w` (length `dim + 1`). A session seals one query: a second call
    /// is refused (mlhe would reuse its encryptions of zero and leak the difference of the two).
    fn seal_query(&self, session: &mut Self::Session, w: &[i64]) -> Result<Vec<u8>>;
    /// The most bytes an honest reply for a block of `rows` rows can have.
    fn reply_bound(&self, rows: usize) -> usize {
        (1 << 20) + rows * 4096
    }
    /// Opens a reply for the given rows (in block order) into exact squared distances
    /// `⟨a_j, w⟩ + q_norm`.
    fn open(
        &self,
        key: &Self::Key,
        session: &Self::Session,
        reply: &[u8],
        plan: &QueryPlan,
        rows: &[RowRef],
    ) -> Result<Vec<u128>>;
}

/// A fresh query key for `w` (for the server session seeded `pk_seed`) and the framed query it
/// seals (session public key + sealed query), for in-process callers: tests, benchmarks, scans.
pub fn seal_framed<S: ClientScheme>(
    scheme: &S,
    pk_seed: &PkSeed,
    w: &[i64],
) -> Result<(S::Session, Vec<u8>)> {
    let mut session = scheme.new_session(pk_seed, w.len())?;
    let sealed = scheme.seal_query(&mut session, w)?;
    let framed = frame_query(&scheme.session_public(&session)?, &sealed);
    Ok((session, framed))
}

/// A 32-byte per-class secret from which each scheme derives its key material.
/// Zeroized on drop, never printed, not `Serialize`.
#[derive(zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct ClassKey([u8; 32]);

impl ClassKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        ClassKey(b)
    }
    /// A fresh random key from the OS CSPRNG.
    pub fn random() -> Self {
        let mut b = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
        ClassKey(b)
    }
    /// The raw bytes, for the owner key file and the sealed bundle only.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
    /// Derives a 32-byte subkey for `context` (a constant from [`domain`]) and `salt`.
    pub fn derive(&self, context: &str, salt: &[u8]) -> zeroize::Zeroizing<[u8; 32]> {
        let mut h = blake3::Hasher::new_derive_key(context);
        h.update(&self.0);
        h.update(salt);
        zeroize::Zeroizing::new(*h.finalize().as_bytes())
    }
}

impl std::fmt::Debug for ClassKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClassKey(<redacted>)")
    }
}
