//! INSECURE: paper-she's key-holding side ([`SheKey`], [`PaperSheClient`]). A comparison baseline
//! only: the scheme is broken from public data (`blindkd_engine::crypto::she::attack`, DESIGN
//! §3.2).
//!
//! Re-exports the engine's [`blindkd_engine::crypto::she`] (the server's view of the scheme). The
//! engine's [`PaperShe`] holds only public parameters; [`PaperSheClient`] is the same scheme with
//! the key attached, for the data owner and the doctor: the scheme encrypts queries under the same
//! symmetric key as the rows, and [`ClientScheme::seal_query`] takes no key, so the instance that
//! seals queries keeps the key it derived.

mod key;
pub mod prime;

pub use blindkd_engine::crypto::she::*;

pub use self::key::SheKey;

use std::sync::OnceLock;

use super::{domain, ClassKey, ClientScheme, PkSeed, RowRef, Scheme, SchemeId};
use blindkd_engine::encoding::QueryPlan;
use blindkd_engine::{Error, Result};

/// paper-she with its key: the engine's keyless [`PaperShe`] plus the [`SheKey`] it seals queries
/// under. Dereferences to the [`PaperShe`] (homomorphic arithmetic, parameters); implements
/// [`Scheme`] by delegating to it, so it can also play the server in tests and benchmarks.
pub struct PaperSheClient {
    scheme: PaperShe,
    key: OnceLock<SheKey>,
}

impl std::fmt::Debug for PaperSheClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaperSheClient")
            .field("scheme", &self.scheme)
            .field("key", &self.key.get().map(|_| "<redacted>"))
            .finish()
    }
}

impl std::ops::Deref for PaperSheClient {
    type Target = PaperShe;
    fn deref(&self) -> &PaperShe {
        &self.scheme
    }
}

impl PaperSheClient {
    /// The key-holding instance of `scheme`, with no key yet: [`ClientScheme::derive_key`] or
    /// [`Self::attach_key`] attaches one.
    pub fn new(scheme: PaperShe) -> Self {
        PaperSheClient {
            scheme,
            key: OnceLock::new(),
        }
    }

    /// [`PaperShe::from_params`], with no key yet.
    pub fn from_params(params: SheParams) -> Result<Self> {
        PaperShe::from_params(params).map(Self::new)
    }

    /// [`PaperShe::from_param_bytes`], with no key yet.
    pub fn from_param_bytes(bytes: &[u8]) -> Result<Self> {
        PaperShe::from_param_bytes(bytes).map(Self::new)
    }

    /// The data owner's setup: derives the SHE key of `index_id` from the class key and returns
    /// the scheme (public parameters, with the key attached for sealing) and the key.
    pub fn setup(class_key: &ClassKey, index_id: &[u8; 16]) -> Result<(Self, SheKey)> {
        Self::setup_with_sizes(class_key, index_id, SheSizes::PAPER)
    }

    /// [`Self::setup`] with explicit sizes (tests use small ones).
    pub fn setup_with_sizes(
        class_key: &ClassKey,
        index_id: &[u8; 16],
        sizes: SheSizes,
    ) -> Result<(Self, SheKey)> {
        let seed = class_key.derive(domain::SHE_KEY, index_id);
        let key = SheKey::generate(&seed, sizes)?;
        let scheme = Self::from_params(key.params())?;
        let _ = scheme.key.set(key.share());
        Ok((scheme, key))
    }

    /// Attaches `key` for sealing queries on this instance. Fails if it belongs to another `N`.
    pub fn attach_key(&self, key: &SheKey) -> Result<()> {
        self.check_key(key)?;
        let _ = self.key.set(key.share());
        Ok(())
    }

    /// The keyless scheme, as the server holds it.
    pub fn scheme(&self) -> &PaperShe {
        &self.scheme
    }

    fn check_key(&self, key: &SheKey) -> Result<()> {
        if key.sizes() != self.scheme.params().sizes || key.modulus() != self.scheme.modulus() {
            return Err(Error::Crypto(
                "paper-she key does not belong to this index's modulus".into(),
            ));
        }
        Ok(())
    }
}

impl Scheme for PaperSheClient {
    const ID: SchemeId = SchemeId::PaperShe;
    type Block = SheBlock;
    type Prepared = ShePrepared;
    type Query = SheQuery;

    fn block_capacity(&self) -> usize {
        self.scheme.block_capacity()
    }

    fn exact_bound(&self) -> u128 {
        self.scheme.exact_bound()
    }

    fn block_rows(&self, block: &SheBlock) -> usize {
        self.scheme.block_rows(block)
    }

    fn prepare(&self, block: &SheBlock, dim: usize) -> Result<ShePrepared> {
        self.scheme.prepare(block, dim)
    }

    fn decode_query(&self, bytes: &[u8], dim: usize, pk_seed: &PkSeed) -> Result<SheQuery> {
        self.scheme.decode_query(bytes, dim, pk_seed)
    }

    fn evaluate(&self, query: &SheQuery, block: &ShePrepared) -> Result<Vec<u8>> {
        self.scheme.evaluate(query, block)
    }
}

impl ClientScheme for PaperSheClient {
    type Key = SheKey;
    type Session = ();

    /// Regenerates the key from `class_key.derive(SHE_KEY, index_id)`, checks it against `N`, and
    /// attaches it to this instance so [`seal_query`](ClientScheme::seal_query) can use it.
    fn derive_key(&self, class_key: &ClassKey, index_id: &[u8; 16]) -> Result<SheKey> {
        let seed = class_key.derive(domain::SHE_KEY, index_id);
        let key = SheKey::generate(&seed, self.scheme.params().sizes)?;
        self.attach_key(&key)?;
        Ok(key)
    }

    fn seal_block(&self, key: &SheKey, rows: &[(RowRef, Vec<i64>)]) -> Result<SheBlock> {
        self.check_key(key)?;
        if rows.len() > self.block_capacity() {
            return Err(Error::InvalidInput("too many rows for one block".into()));
        }
        let width = rows.first().map_or(0, |(_, r)| r.len());
        if rows.iter().any(|(_, r)| r.len() != width || r.len() < 2) {
            return Err(Error::InvalidInput(
                "paper-she: rows must all have length dim + 1 ≥ 2".into(),
            ));
        }
        let mut rng = rand::rng();
        let rows = rows
            .iter()
            .map(|(_, r)| {
                let mut bytes =
                    Vec::with_capacity(r.len() * self.scheme.params().sizes.ciphertext_len());
                for &a in r {
                    let c = key.encrypt(i128::from(a), &mut rng)?;
                    bytes.extend_from_slice(&self.scheme.ciphertext_to_bytes(&c));
                }
                Ok(bytes)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SheBlock { rows })
    }

    fn new_session(&self, _: &PkSeed, _: usize) -> Result<()> {
        Ok(())
    }

    fn session_public(&self, _: &()) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn seal_query(&self, _: &mut (), w: &[i64]) -> Result<Vec<u8>> {
        let key = self.key.get().ok_or_else(|| {
            Error::InvalidInput(
                "paper-she seals queries under the SHE key: call derive_key (or attach_key) on \
                 this scheme first"
                    .into(),
            )
        })?;
        check_dim(w.len().saturating_sub(1))?;
        let mut rng = rand::rng();
        let cts = w
            .iter()
            .map(|&x| key.encrypt(i128::from(x), &mut rng))
            .collect::<Result<Vec<_>>>()?;
        self.scheme
            .encode_cts(&QUERY_MAGIC, cts.iter().map(SheCiphertext::value))
    }

    fn open(
        &self,
        key: &SheKey,
        _: &(),
        reply: &[u8],
        plan: &QueryPlan,
        rows: &[RowRef],
    ) -> Result<Vec<u128>> {
        self.check_key(key)?;
        let cts = self
            .scheme
            .decode_cts(reply, &REPLY_MAGIC, rows.len(), "paper-she reply")?;
        cts.into_iter()
            .map(|c| {
                let ip = key.decrypt_value(&c);
                ip.checked_add(plan.q_norm)
                    .and_then(|d| u128::try_from(d).ok())
                    .ok_or_else(|| Error::Crypto("paper-she: negative squared distance".into()))
            })
            .collect()
    }
}
