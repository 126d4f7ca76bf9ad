//! INSECURE: the published SHE scheme, broken by an approximate-common-divisor lattice attack
//! ([`attack`]); kept only to reproduce and compare the published design (DESIGN §3.2).
//!
//! The symmetric homomorphic encryption of Mahdikhani, Lu, Zheng et al.:
//!
//! * KeyGen(k0, k1, k2): primes `p`, `q` of k0 bits, `N = p·q`, a random `L` of k2 bits.
//! * Enc(m) = `(r·L + m)(1 + r'·p) mod N`, with `r` of k2 bits and `r'` of k0 bits.
//! * Dec(c) = `(c mod p) mod L`; the upper half of `[0, L)` reads negative.
//!
//! Every ciphertext is `c ≡ e (mod p)` with a small *residue* `e = r·L + m < 2^(2·k2)`. Sums and
//! products act on the residues as plain integers, so a result decrypts correctly while its residue
//! stays below `p`: at most ⌊(k0−1)/(2·k2)⌋ fresh factors may be multiplied together
//! ([`SheCiphertext::factors`]). Raw `c1 − c2` makes the residue negative about half the time, so
//! subtraction and negation go through a stored `E(−1)`.
//!
//! That same structure is the break: `N` is an exact multiple of `p` and every ciphertext is an
//! approximate multiple of it, so three ciphertexts and LLL give `p`, and a few encryptions of
//! `0` or `−1` give `L` ([`attack`]).
//!
//! In blindkd the data owner stores SHE ciphertexts of every coordinate of each augmented row `a_j`;
//! the doctor, who holds the same SHE key, sends `E(w)`; the server returns `Σᵢ E(a_ji)·E(wᵢ)` per
//! row (ct×ct, two factors), and the doctor decrypts and adds `‖q̃‖²_w`.
//!
//! The parameter `k1` is the paper's nominal message size. The augmented rows need more (`‖x̃‖²_w`
//! exceeds 2^30), and the scheme decrypts any `|m| < 2^(k2−2)` exactly, so that is what
//! [`PaperShe::exact_bound`](super::Scheme::exact_bound) and encryption accept.

pub mod arith;
pub mod attack;

use num_bigint::BigUint;
use num_traits::Zero;
use serde::{Deserialize, Serialize};

use self::arith::{BigArith, ModArith};
use super::{Scheme, SchemeId};
use crate::{Error, Result};

/// Rows per block. Each row costs `(d+1)` ciphertexts of `2·k0` bits, so blocks stay small.
pub const SHE_BLOCK: usize = 1024;
/// Largest accepted `k0` (prime size in bits), bounding every allocation driven by the parameters.
pub const MAX_K0: u32 = 4096;
/// Smallest accepted `k0`. Below this the parameters are toys (the tests use 256).
pub const MIN_K0: u32 = 128;

/// Magic and version of a sealed query: `SHEq`, version 1.
#[doc(hidden)]
pub const QUERY_MAGIC: [u8; 5] = *b"SHEq\x01";
/// Magic and version of a reply: `SHEr`, version 1.
#[doc(hidden)]
pub const REPLY_MAGIC: [u8; 5] = *b"SHEr\x01";

/// The three size parameters of the scheme, in bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SheSizes {
    /// Size of each prime `p`, `q`.
    pub k0: u32,
    /// Nominal message size (the paper's; see the module docs).
    pub k1: u32,
    /// Size of `L` and of the randomiser `r`.
    pub k2: u32,
}

impl SheSizes {
    /// The published parameters: k0 = 1024, k1 = 30, k2 = 80.
    pub const PAPER: SheSizes = SheSizes {
        k0: 1024,
        k1: 30,
        k2: 80,
    };

    /// Checks the sizes are usable: a two-factor inner product over [`crate::encoding::MAX_DIM`]
    /// + 1 terms must keep its residue below `p`, and the exact range must fit a `u128`.
    pub fn validate(&self) -> Result<()> {
        let SheSizes { k0, k1, k2 } = *self;
        if !(MIN_K0..=MAX_K0).contains(&k0) {
            return Err(Error::InvalidInput(format!(
                "paper-she: k0 = {k0} outside {MIN_K0}..={MAX_K0}"
            )));
        }
        if !(8..=126).contains(&k2) {
            return Err(Error::InvalidInput(format!(
                "paper-she: k2 = {k2} outside 8..=126"
            )));
        }
        if k1 == 0 || k1 > k2 - 2 {
            return Err(Error::InvalidInput(format!(
                "paper-she: k1 = {k1} must be in 1..=k2−2 = {}",
                k2 - 2
            )));
        }
        if 4 * k2 + SUM_SLACK_BITS > k0 - 1 {
            return Err(Error::InvalidInput(format!(
                "paper-she: k0 = {k0} too small for k2 = {k2}: an inner product of two-factor \
                 terms needs 4·k2 + {SUM_SLACK_BITS} ≤ k0 − 1"
            )));
        }
        Ok(())
    }

    /// ⌊(k0−1)/(2·k2)⌋: the most fresh factors one product may hold and still decrypt.
    pub fn max_factors(&self) -> u32 {
        (self.k0 - 1) / (2 * self.k2)
    }

    /// Bytes of one serialized ciphertext: `⌈2·k0 / 8⌉`.
    pub fn ciphertext_len(&self) -> usize {
        (2 * self.k0).div_ceil(8) as usize
    }
}

/// Bits a sum of up to `MAX_DIM + 1` terms adds to the largest term's residue.
const SUM_SLACK_BITS: u32 = 13;

/// The public parameters the server needs: sizes and the modulus `N`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SheParams {
    /// Sizes in bits.
    pub sizes: SheSizes,
    /// `N = p·q`, big-endian, without leading zero bytes.
    pub modulus: Vec<u8>,
}

/// A ciphertext with its bookkeeping: how many fresh factors its residue is a product of, and an
/// upper bound (in bits) on that residue.
#[derive(Clone, PartialEq, Eq)]
pub struct SheCiphertext {
    value: BigUint,
    factors: u32,
    residue_bits: u32,
}

impl SheCiphertext {
    /// The ciphertext as an integer in `[0, N)`. Public: it is what the server and the wire see.
    pub fn value(&self) -> &BigUint {
        &self.value
    }
    /// Number of fresh ciphertexts multiplied into this one (1 for a fresh ciphertext).
    pub fn factors(&self) -> u32 {
        self.factors
    }
    /// Upper bound on `log2` of the residue `c mod p`.
    pub fn residue_bits(&self) -> u32 {
        self.residue_bits
    }
    /// A ciphertext from its value and bookkeeping, for encryption in `blindkd-keys`.
    #[doc(hidden)]
    pub fn from_parts(value: BigUint, factors: u32, residue_bits: u32) -> Self {
        SheCiphertext {
            value,
            factors,
            residue_bits,
        }
    }
}

impl std::fmt::Debug for SheCiphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SheCiphertext {{ {} bits, factors: {}, residue < 2^{} }}",
            self.value.bits(),
            self.factors,
            self.residue_bits
        )
    }
}

/// A stored block: for each row, the SHE ciphertexts of its `dim + 1` coordinates, each
/// [`SheSizes::ciphertext_len`] bytes big-endian, concatenated.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SheBlock {
    /// One byte string per row.
    pub rows: Vec<Vec<u8>>,
}

/// A block parsed into integers, ready for evaluation.
pub struct ShePrepared {
    rows: Vec<Vec<<BigArith as ModArith>::Elem>>,
}

/// A decoded query: `E(wᵢ)` for `i = 0..=dim`.
pub struct SheQuery {
    w: Vec<<BigArith as ModArith>::Elem>,
}

/// The paper-she scheme, as the server holds it: only the public [`SheParams`]. The key (`SheKey`)
/// and the key-holding instance that seals and opens are in `blindkd-keys`.
pub struct PaperShe {
    params: SheParams,
    n: BigUint,
    arith: BigArith,
    capacity: usize,
}

impl std::fmt::Debug for PaperShe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaperShe")
            .field("sizes", &self.params.sizes)
            .field("modulus_bits", &self.n.bits())
            .finish()
    }
}

impl PaperShe {
    /// The server's, keyless instance. Validates the sizes and that `N` has exactly `2·k0` bits
    /// and is odd.
    pub fn from_params(params: SheParams) -> Result<Self> {
        params.sizes.validate()?;
        let k0 = params.sizes.k0;
        if params.modulus.len() != params.sizes.ciphertext_len() {
            return Err(Error::InvalidInput(format!(
                "paper-she: modulus has {} bytes, k0 = {k0} needs {}",
                params.modulus.len(),
                params.sizes.ciphertext_len()
            )));
        }
        let n = BigUint::from_bytes_be(&params.modulus);
        if n.bits() != u64::from(2 * k0) || !n.bit(0) {
            return Err(Error::InvalidInput(format!(
                "paper-she: modulus must be odd with exactly {} bits",
                2 * k0
            )));
        }
        Ok(PaperShe {
            arith: BigArith::new(n.clone()),
            n,
            params,
            capacity: SHE_BLOCK,
        })
    }

    /// The public parameters (what the index header stores).
    pub fn params(&self) -> &SheParams {
        &self.params
    }

    /// The modulus `N`.
    pub fn modulus(&self) -> &BigUint {
        &self.n
    }

    /// ⌊(k0−1)/(2·k2)⌋.
    pub fn max_factors(&self) -> u32 {
        self.params.sizes.max_factors()
    }

    /// Fixed-width big-endian bytes of a ciphertext.
    pub fn ciphertext_to_bytes(&self, c: &SheCiphertext) -> Vec<u8> {
        let mut out = vec![0u8; self.ct_len()];
        write_fixed(&mut out, &c.value);
        out
    }

    /// Parses a fresh ciphertext (one factor) from exactly [`SheSizes::ciphertext_len`] bytes;
    /// rejects other lengths and values `≥ N`.
    pub fn ciphertext_from_bytes(&self, bytes: &[u8]) -> Result<SheCiphertext> {
        let value = self.parse_ct(bytes, "paper-she ciphertext")?;
        Ok(self.fresh(value))
    }

    /// Homomorphic addition. The residue grows by at most one bit.
    pub fn add(&self, a: &SheCiphertext, b: &SheCiphertext) -> Result<SheCiphertext> {
        let residue_bits = a.residue_bits.max(b.residue_bits) + 1;
        self.check_residue(residue_bits, "sum")?;
        Ok(SheCiphertext {
            value: self.arith.add_mod(&a.value, &b.value),
            factors: a.factors.max(b.factors),
            residue_bits,
        })
    }

    /// Homomorphic ct×ct product. Refuses a product of more than [`Self::max_factors`] fresh
    /// factors, whose residue could exceed `p` and decrypt to garbage.
    pub fn mul(&self, a: &SheCiphertext, b: &SheCiphertext) -> Result<SheCiphertext> {
        let factors = a.factors + b.factors;
        let max = self.max_factors();
        if factors > max {
            return Err(Error::LimitExceeded(format!(
                "paper-she: a product of {factors} fresh factors exceeds the depth limit \
                 ⌊(k0−1)/(2·k2)⌋ = {max}; it would not decrypt"
            )));
        }
        let residue_bits = a.residue_bits + b.residue_bits;
        self.check_residue(residue_bits, "product")?;
        Ok(SheCiphertext {
            value: self.arith.mul_mod(&a.value, &b.value),
            factors,
            residue_bits,
        })
    }

    /// Homomorphic ct×pt product by a non-negative one-word plaintext. (A negative plaintext
    /// would make the residue negative; multiply by `|k|` and [`Self::neg`] instead.)
    pub fn mul_plain(&self, a: &SheCiphertext, k: u64) -> Result<SheCiphertext> {
        let residue_bits = a.residue_bits + (64 - k.leading_zeros());
        self.check_residue(residue_bits, "plaintext product")?;
        Ok(SheCiphertext {
            value: self.arith.mul_small(&a.value, k),
            factors: a.factors,
            residue_bits,
        })
    }

    /// `E(−m)` from `E(m)` and a stored `E(−1)`: one extra factor.
    pub fn neg(&self, a: &SheCiphertext, minus_one: &SheCiphertext) -> Result<SheCiphertext> {
        self.mul(a, minus_one)
    }

    /// `E(m1 − m2) = E(m1) + E(−1)·E(m2)`. Raw `c1 − c2 mod N` is not a subtraction: its residue
    /// `e1 − e2` is negative about half the time.
    pub fn sub(
        &self,
        a: &SheCiphertext,
        b: &SheCiphertext,
        minus_one: &SheCiphertext,
    ) -> Result<SheCiphertext> {
        self.add(a, &self.neg(b, minus_one)?)
    }

    fn ct_len(&self) -> usize {
        self.params.sizes.ciphertext_len()
    }

    fn fresh(&self, value: BigUint) -> SheCiphertext {
        SheCiphertext {
            value,
            factors: 1,
            residue_bits: 2 * self.params.sizes.k2,
        }
    }

    fn check_residue(&self, bits: u32, what: &str) -> Result<()> {
        // p ≥ 2^(k0−1), so a residue below 2^(k0−1) is still the exact integer.
        if bits > self.params.sizes.k0 - 1 {
            return Err(Error::LimitExceeded(format!(
                "paper-she: the {what}'s residue may reach 2^{bits}, beyond p ≥ 2^{}; \
                 it would not decrypt",
                self.params.sizes.k0 - 1
            )));
        }
        Ok(())
    }

    fn parse_ct(&self, bytes: &[u8], what: &'static str) -> Result<BigUint> {
        if bytes.len() != self.ct_len() {
            return Err(Error::malformed(
                what,
                format!("{} bytes, expected {}", bytes.len(), self.ct_len()),
            ));
        }
        let v = BigUint::from_bytes_be(bytes);
        if v >= self.n {
            return Err(Error::malformed(what, "value is not reduced modulo N"));
        }
        Ok(v)
    }

    /// Parses `magic ‖ u32 count ‖ count fixed-width ciphertexts`, checking `count == expected`
    /// and the exact length before allocating.
    #[doc(hidden)]
    pub fn decode_cts(
        &self,
        bytes: &[u8],
        magic: &[u8; 5],
        expected: usize,
        what: &'static str,
    ) -> Result<Vec<BigUint>> {
        let body = bytes
            .strip_prefix(magic.as_slice())
            .ok_or_else(|| Error::malformed(what, "bad magic or version"))?;
        let count_bytes: [u8; 4] = body
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::malformed(what, "truncated before the count"))?;
        let count = u32::from_le_bytes(count_bytes) as usize;
        if count != expected {
            return Err(Error::malformed(
                what,
                format!("{count} ciphertexts, expected {expected}"),
            ));
        }
        let body = &body[4..];
        let ct_len = self.ct_len();
        if Some(body.len()) != count.checked_mul(ct_len) {
            return Err(Error::malformed(
                what,
                format!(
                    "{} bytes of ciphertexts, expected {count} × {ct_len}",
                    body.len()
                ),
            ));
        }
        body.chunks_exact(ct_len)
            .map(|c| self.parse_ct(c, what))
            .collect()
    }

    /// Writes `magic ‖ u32 count ‖ the ciphertexts, fixed width`.
    #[doc(hidden)]
    pub fn encode_cts<'a>(
        &self,
        magic: &[u8; 5],
        cts: impl ExactSizeIterator<Item = &'a BigUint>,
    ) -> Result<Vec<u8>> {
        let count = u32::try_from(cts.len())
            .map_err(|_| Error::LimitExceeded("paper-she: too many ciphertexts".into()))?;
        let ct_len = self.ct_len();
        let mut out = Vec::with_capacity(magic.len() + 4 + cts.len() * ct_len);
        out.extend_from_slice(magic);
        out.extend_from_slice(&count.to_le_bytes());
        for c in cts {
            let start = out.len();
            out.resize(start + ct_len, 0);
            write_fixed(&mut out[start..], c);
        }
        Ok(out)
    }
}

/// Writes `v` big-endian right-aligned into `out`. `v` fits: every value written is `< N`.
fn write_fixed(out: &mut [u8], v: &BigUint) {
    let b = v.to_bytes_be();
    let skip = if v.is_zero() { 1 } else { 0 };
    let b = &b[skip..];
    let start = out.len() - b.len();
    out[start..].copy_from_slice(b);
}

/// Refuses a dimension outside `1..=MAX_DIM`.
#[doc(hidden)]
pub fn check_dim(dim: usize) -> Result<()> {
    if dim == 0 || dim > crate::encoding::MAX_DIM {
        return Err(Error::InvalidInput(format!(
            "dimension {dim} outside 1..={}",
            crate::encoding::MAX_DIM
        )));
    }
    Ok(())
}

impl Scheme for PaperShe {
    const ID: SchemeId = SchemeId::PaperShe;
    type Block = SheBlock;
    type Prepared = ShePrepared;
    type Query = SheQuery;

    fn block_capacity(&self) -> usize {
        self.capacity
    }

    fn exact_bound(&self) -> u128 {
        // L ≥ 2^(k2−1), and Dec reads [0, L) centred, so |v| < 2^(k2−2) ≤ L/2 opens exactly.
        1u128 << (self.params.sizes.k2 - 2)
    }

    fn block_rows(&self, block: &SheBlock) -> usize {
        block.rows.len()
    }

    fn prepare(&self, block: &SheBlock, dim: usize) -> Result<ShePrepared> {
        check_dim(dim)?;
        if block.rows.len() > self.block_capacity() {
            return Err(Error::malformed(
                "paper-she block",
                "more rows than the block capacity",
            ));
        }
        let row_len = (dim + 1) * self.ct_len();
        let rows = block
            .rows
            .iter()
            .map(|r| {
                if r.len() != row_len {
                    return Err(Error::malformed(
                        "paper-she block",
                        format!("row of {} bytes, dim {dim} needs {row_len}", r.len()),
                    ));
                }
                r.chunks_exact(self.ct_len())
                    .map(|c| Ok(self.arith.import(&self.parse_ct(c, "paper-she block")?)))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ShePrepared { rows })
    }

    fn decode_query(
        &self,
        bytes: &[u8],
        dim: usize,
        _: &crate::crypto::PkSeed,
    ) -> Result<SheQuery> {
        check_dim(dim)?;
        let (session_public, sealed) = super::unframe_query(bytes)?;
        if !session_public.is_empty() {
            return Err(Error::malformed(
                "paper-she query",
                "unexpected session public key (paper-she has none)",
            ));
        }
        let w = self.decode_cts(sealed, &QUERY_MAGIC, dim + 1, "paper-she query")?;
        Ok(SheQuery {
            w: w.iter().map(|c| self.arith.import(c)).collect(),
        })
    }

    fn evaluate(&self, query: &SheQuery, block: &ShePrepared) -> Result<Vec<u8>> {
        // LEAKAGE: [she-modulus] nothing beyond the row count is revealed by evaluating, but the server holds N
        // and every stored ciphertext: three of them factor N (`attack`), after which it reads
        // every row and every query. This scheme protects nothing from the server.
        let w = &query.w;
        let mut out = Vec::with_capacity(block.rows.len());
        for row in &block.rows {
            if row.len() != w.len() {
                return Err(Error::InvalidInput(format!(
                    "paper-she: query has {} coordinates, block rows have {}",
                    w.len(),
                    row.len()
                )));
            }
            out.push(self.arith.export(&self.arith.dot_mod(row, w)));
        }
        self.encode_cts(&REPLY_MAGIC, out.iter())
    }
}

impl PaperShe {
    /// Parses the opaque parameter bytes stored in an index header ([`crate::index::SchemeParams`]).
    pub fn from_param_bytes(bytes: &[u8]) -> Result<Self> {
        let p: SheParams =
            postcard::from_bytes(bytes).map_err(|e| Error::malformed("paper-she parameters", e))?;
        Self::from_params(p)
    }

    /// The parameter bytes for an index header.
    pub fn param_bytes(&self) -> Result<Vec<u8>> {
        postcard::to_allocvec(self.params())
            .map_err(|e| Error::malformed("paper-she parameters", e))
    }
}
