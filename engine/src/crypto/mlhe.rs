//! `mlhe`: linear homomorphic evaluation over a masked index (DESIGN §3.1). The default scheme.
//!
//! * The data owner stores `y_j = a_j + m_j mod t`, a one-time pad of the augmented row `a_j` with a
//!   mask from a keyed BLAKE3 XOF, keyed per policy class and index (`MlheKey`, in `blindkd-keys`).
//! * The client encrypts the query functional `w = (−2q̃, 1)` with BFV under a fresh **per-query**
//!   secret key, one constant-polynomial ciphertext per coordinate (**layout B**). Every ciphertext's
//!   `c1 = aᵢ` is a public constant ([`Mlhe::query_a`], expanded from a fixed domain string), so the
//!   client sends only the `c0`s, in NTT form (issue 12): half the upload of a full ciphertext, and
//!   nothing for the server to expand or transform. A fresh secret per query keeps this sound: the
//!   pairs `(aᵢ, −aᵢ·s + eᵢ)` are RLWE samples under a secret used for one query only.
//! * The server computes `Σᵢ ctᵢ·Yᵢ` where `Yᵢ(X) = Σⱼ y_{ji} Xʲ`, so coefficient `j` of the product is
//!   `⟨y_j, w⟩ mod t` for every one of the N rows of a block. Because the `aᵢ` are fixed, the `c1`
//!   half of that product, `Σᵢ aᵢ·Yᵢ`, is the same for every query: it is computed once per block at
//!   load ([`Scheme::prepare`]). It then **finishes** the output:
//!   re-randomises with the session public key, floods the noise with `±2^FLOOD_BITS` and switches
//!   down to the first prime. Without re-randomisation the reply's `c1` would be the same public
//!   function of the masked block for every query (see `reply_c1_is_fresh_per_reply`).
//! * The client decrypts, subtracts `⟨m_j, w⟩`, adds `‖q̃‖²` and centres: the exact distance.
//!
//! Layout B rather than A: every output coefficient is a result (no garbage coefficients to
//! randomise), and the finish step, which dominates, runs once per 8192 rows instead of once per
//! `⌊8192/(d+1)⌋`. Measured in the prototype at ~10× less server time per row; the price is a
//! `(d+1)`-polynomial upload (~2 MB at d = 10) once per query.
//!
//! Parameters: N = 8192, three 60-bit primes (log q = 180 ≤ 218, the 128-bit HE-standard bound at
//! N = 8192), t the prime [`PLAINTEXT_MODULUS`] just below 2^40. `t < q₀` is checked (fhe 0.1.1 does not and silently decrypts garbage).

use std::sync::{Arc, OnceLock};

use fhe::bfv::{BfvParameters, BfvParametersBuilder};
use fhe_math::rq::{traits::TryConvertFrom, Context, Poly, Representation};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{PkSeed, Scheme, SchemeId};
use crate::{Error, Result};

/// Ring degree N.
pub const DEGREE: usize = 8192;
/// The plaintext modulus t: the largest prime below 2^40 with t ≡ 1 (mod 2N).
///
/// A prime, not 2^40, so that the per-block check value is sound (issue 17, DESIGN §3.5): over
/// Z_t with t prime, a host that changes any result must also hit `Σ βᵢ·δᵢ` for secret uniform
/// βᵢ, a 1/t ≈ 2^−40 chance; modulo 2^40 a shift by 2^39 passes for every odd βᵢ. `t ≡ 1 (mod 2N)`
/// also allows SIMD (slot) packing later.
pub const PLAINTEXT_MODULUS: u64 = 1_099_511_480_321;
/// Ciphertext prime sizes.
pub const MODULI_BITS: [usize; 3] = [60, 60, 60];
/// Noise flooding bound: uniform in `±2^FLOOD_BITS`. The honest product noise of layout B is about
/// 2^50.5 (sum of d+1 products); 2^118 gives ≥ 40 statistical bits over a 10⁶-row answer and still
/// decrypts (the budget is about 2^137). DESIGN §3.1, notes §5.1.
pub const FLOOD_BITS: u32 = 118;
/// Largest accepted dimension for mlhe (bounds the query upload: d+1 ciphertexts).
pub const MAX_MLHE_DIM: usize = 64;
/// Rows of every block given to the check value (DESIGN §3.5): the last row of a block holds
/// `Σ βᵢ·aᵢ` (masked), with βᵢ secret per class, block and record id.
pub const CHECK_ROWS: usize = 1;
/// Magic of a sealed query: `BKQ2 ‖ u16 count ‖ count × c0` (each `c0` in NTT form at the top
/// level, packed by [`Mlhe::pack_ntt`]). `BKQ1` queries (full fhe.rs ciphertexts, before issue 12)
/// are refused with a message that names the upgrade.
pub const QUERY_MAGIC: &[u8; 4] = b"BKQ2";
/// Magic of a reply: `BKR2 ‖ c0 at q₀ ‖ c1 at q₀ ‖ u32 row count`, residues packed by
/// [`pack_residues`].
#[doc(hidden)]
pub const REPLY_MAGIC: &[u8; 4] = b"BKR2";

/// Bits of every ciphertext prime (the only supported parameter set); residues are packed at
/// this width.
const RESIDUE_BITS: u32 = 60;
const RESIDUE_MASK: u128 = (1 << RESIDUE_BITS) - 1;
const _: () = assert!(
    MODULI_BITS[0] == RESIDUE_BITS as usize
        && MODULI_BITS[1] == RESIDUE_BITS as usize
        && MODULI_BITS[2] == RESIDUE_BITS as usize
);

/// Packs residues below 2^60 two to 15 bytes, little-endian (fhe-math's generic `serialize_vec`
/// took a fifth of a small query's time). The count must be even (it is N); an odd last residue
/// would be dropped.
#[doc(hidden)]
pub fn pack_residues(vals: impl IntoIterator<Item = u64>, out: &mut Vec<u8>) {
    let mut it = vals.into_iter();
    out.reserve(it.size_hint().0 / 2 * 15);
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        let v = (u128::from(a) & RESIDUE_MASK) | (u128::from(b) << RESIDUE_BITS);
        out.extend_from_slice(&v.to_le_bytes()[..15]);
    }
}

/// The inverse of [`pack_residues`]: `bytes.len() / 15 * 2` residues (each below 2^60).
#[doc(hidden)]
pub fn unpack_residues(bytes: &[u8]) -> Vec<u64> {
    let mut out = Vec::with_capacity(bytes.len() / 15 * 2);
    for c in bytes.chunks_exact(15) {
        let mut b = [0u8; 16];
        b[..15].copy_from_slice(c);
        let v = u128::from_le_bytes(b);
        out.push((v & RESIDUE_MASK) as u64);
        out.push((v >> RESIDUE_BITS) as u64);
    }
    out
}

/// Public mlhe parameters, as stored in an index header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlheParams {
    /// Ring degree N.
    pub degree: u32,
    /// The plaintext modulus t (a prime).
    pub t: u64,
    /// Bit sizes of the ciphertext primes.
    pub moduli_bits: [u32; 3],
    /// Flooding bits.
    pub flood_bits: u32,
}

impl Default for MlheParams {
    fn default() -> Self {
        MlheParams {
            degree: DEGREE as u32,
            t: PLAINTEXT_MODULUS,
            moduli_bits: MODULI_BITS.map(|b| b as u32),
            flood_bits: FLOOD_BITS,
        }
    }
}

/// The mlhe scheme, server view. The key-holding half (mask keys, session secret keys, sealing and
/// opening) is `blindkd-keys`' `ClientScheme` implementation for this type.
#[derive(Clone)]
pub struct Mlhe {
    par: Arc<BfvParameters>,
    params: MlheParams,
    finish: Finish,
}

/// The one supported parameter set, built once per process, and the public query `aᵢ` expanded
/// from it on first use. Sharing one `Arc<BfvParameters>` also makes every polynomial's context
/// pointer-equal, so fhe-math's context checks are cheap.
struct Shared {
    par: Arc<BfvParameters>,
    query_a: Vec<OnceLock<Poly>>,
}

fn shared() -> Result<&'static Shared> {
    static SHARED: OnceLock<std::result::Result<Shared, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let p = MlheParams::default();
            let par = BfvParametersBuilder::new()
                .set_degree(p.degree as usize)
                .set_plaintext_modulus(p.t)
                .set_moduli_sizes(&p.moduli_bits.map(|b| b as usize))
                .build_arc()
                .map_err(|e| format!("BFV parameters: {e}"))?;
            Ok(Shared {
                par,
                query_a: (0..=MAX_MLHE_DIM).map(|_| OnceLock::new()).collect(),
            })
        })
        .as_ref()
        .map_err(|e| Error::Crypto(e.clone()))
}

/// Which finish steps run. Only [`Finish::Full`] is reachable outside this crate's tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finish {
    Full,
    #[cfg(test)]
    NoRerandomise,
}

impl std::fmt::Debug for Mlhe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mlhe")
            .field("params", &self.params)
            .finish()
    }
}

impl Mlhe {
    /// The default parameters of DESIGN §3.1.
    pub fn new() -> Result<Self> {
        Self::from_params(MlheParams::default())
    }

    /// Builds the scheme from stored parameters, validating every bound fhe 0.1.1 does not.
    pub fn from_params(params: MlheParams) -> Result<Self> {
        if params != MlheParams::default() {
            // Only the audited parameter set is accepted: anything else needs a fresh noise and
            // security analysis (notes §3.3, §7).
            return Err(Error::UnsupportedVersion(format!(
                "mlhe parameters {params:?} are not the supported set {:?}",
                MlheParams::default()
            )));
        }
        let par = shared()?.par.clone();
        let q0 = par.moduli()[0];
        if params.t >= q0 {
            return Err(Error::Crypto(
                "plaintext modulus must be below the first prime".into(),
            ));
        }
        let log_q: u32 = params.moduli_bits.iter().sum();
        if log_q > 218 {
            return Err(Error::Crypto(format!(
                "log q = {log_q} exceeds the 128-bit HE-standard bound 218 at N = 8192"
            )));
        }
        if q0 < (1u64 << 55) {
            return Err(Error::Crypto(
                "q0 must be ≥ 2^55 to decrypt after switching".into(),
            ));
        }
        Ok(Mlhe {
            par,
            params,
            finish: Finish::Full,
        })
    }

    /// The public parameters.
    pub fn params(&self) -> MlheParams {
        self.params
    }

    /// The fhe.rs BFV parameters (public), for the key-holding side in `blindkd-keys`.
    #[doc(hidden)]
    pub fn bfv_parameters(&self) -> &Arc<BfvParameters> {
        &self.par
    }

    /// The plaintext modulus t.
    #[doc(hidden)]
    pub fn t(&self) -> u64 {
        self.params.t
    }

    /// The ring context at the top level (all primes), where queries are encrypted.
    #[doc(hidden)]
    pub fn top_ctx(&self) -> Result<&Arc<Context>> {
        self.par
            .context_at_level(0)
            .map_err(|e| Error::Crypto(e.to_string()))
    }

    /// The ring context at the last level (q₀ only), where replies are.
    #[doc(hidden)]
    pub fn last_ctx(&self) -> Result<&Arc<Context>> {
        self.par
            .context_at_level(self.par.max_level())
            .map_err(|e| Error::Crypto(e.to_string()))
    }

    /// Bytes of one packed polynomial at q₀.
    #[doc(hidden)]
    pub fn q0_poly_bytes(&self) -> usize {
        DEGREE * self.params.moduli_bits[0] as usize / 8
    }

    /// Bytes of one packed polynomial at the top level (every prime).
    #[doc(hidden)]
    pub fn top_poly_bytes(&self) -> usize {
        self.params
            .moduli_bits
            .iter()
            .map(|&b| DEGREE * b as usize / 8)
            .sum()
    }

    /// The public `c1` of query coordinate `i`: uniform, expanded from a fixed domain string,
    /// in NTT form at the top level. The same for every query, so the server can precompute
    /// `Σᵢ aᵢ·Yᵢ` per block; each query's fresh secret key keeps the `c0`s RLWE samples.
    pub fn query_a(&self, i: usize) -> Result<&'static Poly> {
        let sh = shared()?;
        let cell = sh.query_a.get(i).ok_or_else(|| {
            Error::InvalidInput(format!("mlhe query coordinate {i} above {MAX_MLHE_DIM}"))
        })?;
        let ctx = sh
            .par
            .context_at_level(0)
            .map_err(|e| Error::Crypto(e.to_string()))?;
        Ok(cell.get_or_init(|| {
            let mut h = blake3::Hasher::new_derive_key(super::domain::QUERY_A);
            h.update(&(i as u64).to_le_bytes());
            Poly::random_from_seed(ctx, Representation::Ntt, *h.finalize().as_bytes())
        }))
    }

    /// Packs a top-level polynomial's residues as they are (NTT form for queries and session
    /// keys): each prime's N residues at ⌈log₂ qᵢ⌉ bits.
    #[doc(hidden)]
    pub fn pack_ntt(&self, p: &Poly) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.top_poly_bytes());
        self.pack_shifted(p, &[0; MODULI_BITS.len()], &mut out)?;
        Ok(out)
    }

    /// Appends a top-level NTT-form polynomial's packed residues, with `shift[j]` (reduced mod
    /// prime j) added to every residue of prime j: that adds the constant polynomial `shift`,
    /// whose NTT is the same value in every slot.
    fn pack_shifted(&self, p: &Poly, shift: &[u64], out: &mut Vec<u8>) -> Result<()> {
        let moduli = self.par.moduli();
        let coeffs = p.coefficients();
        if p.representation() != &Representation::Ntt || coeffs.nrows() != moduli.len() {
            return Err(Error::Crypto(
                "packing needs a top-level polynomial in NTT form".into(),
            ));
        }
        if shift.len() != moduli.len() || shift.iter().zip(moduli).any(|(s, q)| s >= q) {
            return Err(Error::Crypto(
                "a shift is not one reduced residue per prime".into(),
            ));
        }
        for ((row, &s), &q) in coeffs.outer_iter().zip(shift).zip(moduli) {
            pack_residues(
                row.iter().map(|&x| {
                    let y = x + s;
                    if y >= q {
                        y - q
                    } else {
                        y
                    }
                }),
                out,
            );
        }
        Ok(())
    }

    /// The inverse of [`Mlhe::pack_ntt`], for bytes from a client: exact length, every residue
    /// reduced. The polynomial is marked constant-time (the server multiplies it by secrets).
    #[doc(hidden)]
    pub fn unpack_ntt(&self, bytes: &[u8], what: &'static str) -> Result<Poly> {
        if bytes.len() != self.top_poly_bytes() {
            return Err(Error::malformed(
                what,
                format!(
                    "{} bytes, expected {} (a polynomial in NTT form at the top level)",
                    bytes.len(),
                    self.top_poly_bytes()
                ),
            ));
        }
        let ctx = self.top_ctx()?;
        let mut v = Vec::with_capacity(ctx.moduli().len() * DEGREE);
        let len = DEGREE * RESIDUE_BITS as usize / 8;
        for (op, chunk) in ctx.moduli_operators().iter().zip(bytes.chunks_exact(len)) {
            let row = unpack_residues(chunk);
            if row.len() != DEGREE || row.iter().any(|&c| c >= **op) {
                return Err(Error::malformed(what, "a residue is not reduced"));
            }
            v.extend_from_slice(&row);
        }
        Poly::try_convert_from(v, ctx, false, Representation::Ntt)
            .map_err(|e| Error::malformed(what, e))
    }

    /// Re-randomise, flood and switch down one product (c0, c1) in NTT form at the top level.
    fn finish(&self, pk: &[Poly; 2], mut c0: Poly, mut c1: Poly) -> Result<Vec<u8>> {
        let ctx = self.top_ctx()?;
        let mut rng = rand::rng();
        let cerr = |e: fhe_math::Error| Error::Crypto(e.to_string());
        if self.finish.rerandomise() {
            // c += Enc_pk(0) = (b·u + e1, a·u + e2); the flood below plays e1's role.
            let u = Poly::small(ctx, Representation::Ntt, 10, &mut rng).map_err(cerr)?;
            c0 += &(&pk[0] * &u);
            c1 += &(&pk[1] * &u);
        }
        c0.change_representation(Representation::PowerBasis);
        c1.change_representation(Representation::PowerBasis);
        if self.finish.rerandomise() {
            let e2 = Poly::small(ctx, Representation::PowerBasis, 10, &mut rng).map_err(cerr)?;
            c1 += &e2;
        }
        c0 += &self.flood_poly(ctx, &mut rng)?;
        // Mod-switch after flooding is post-processing. `switch_down` in a loop: fhe-math's
        // `switch_down_to` deep-compares contexts (~1.7 ms per call).
        for _ in 0..self.par.max_level() {
            c0.switch_down().map_err(cerr)?;
            c1.switch_down().map_err(cerr)?;
        }
        let mut out = Vec::with_capacity(8 + 2 * self.q0_poly_bytes());
        out.extend_from_slice(REPLY_MAGIC);
        for p in [&c0, &c1] {
            pack_residues(p.coefficients().row(0).iter().copied(), &mut out);
        }
        Ok(out)
    }

    /// A fresh uniform polynomial in `[−2^b, 2^b)` in RNS power basis.
    fn flood_poly(&self, ctx: &Arc<Context>, rng: &mut impl rand::RngCore) -> Result<Poly> {
        let b = self.params.flood_bits;
        // A `1u128 << k` with k ≥ 128 silently wraps in release builds; the bound is a constant.
        const _: () = assert!(FLOOD_BITS <= 125);
        let ops = ctx.moduli_operators();
        let mut v = vec![0u64; ops.len() * DEGREE];
        let span_mask = (1u128 << (b + 1)) - 1;
        for j in 0..DEGREE {
            let raw = rng.random::<u128>() & span_mask;
            let (neg, mag) = if raw >= 1u128 << b {
                (false, raw - (1u128 << b))
            } else {
                (true, (1u128 << b) - raw)
            };
            for (i, op) in ops.iter().enumerate() {
                let r = op.reduce_u128(mag);
                v[i * DEGREE + j] = if neg && r != 0 { **op - r } else { r };
            }
        }
        Poly::try_convert_from(v, ctx, false, Representation::PowerBasis)
            .map_err(|e| Error::Crypto(e.to_string()))
    }
}

impl Mlhe {
    /// What any host can do to a reply without a key: add `delta` to the plaintext of row `row`
    /// (`c0 += ⌊q₀·δ/t⌉`). Here for the malicious-host tests (issue 17), which must show that the
    /// client catches it.
    #[doc(hidden)]
    pub fn forge_add(&self, reply: &[u8], row: usize, delta: u64) -> Result<Vec<u8>> {
        let pb = self.q0_poly_bytes();
        if reply.len() != 4 + 2 * pb + 4 || row >= DEGREE {
            return Err(Error::malformed("mlhe reply", "not a reply"));
        }
        let q0 = &self.last_ctx()?.moduli_operators()[0];
        let mut c0 = unpack_residues(&reply[4..4 + pb]);
        let q = **q0 as u128;
        let t = u128::from(self.t());
        let shift = ((q * (u128::from(delta) % t) + t / 2) / t) as u64;
        c0[row] = ((u128::from(c0[row]) + u128::from(shift)) % q) as u64;
        let mut out = reply.to_vec();
        let mut packed = Vec::with_capacity(pb);
        pack_residues(c0, &mut packed);
        out[4..4 + pb].copy_from_slice(&packed);
        Ok(out)
    }
}

impl Mlhe {
    /// A planted query (keyless: any client can send it): `c0₀ = q₁q₂` and zero `c0`s for the
    /// other `d` coordinates. The product's `c0 = q₁q₂·Y₀` switches down to the masked column `Y₀`
    /// with the flood below the rounding: the known limit of the finish step (SECURITY.md §2,
    /// "what the finish step cannot stop"). Frame it with a session key ([`super::frame_query`]).
    /// For the attack tests.
    #[doc(hidden)]
    pub fn planted_query(&self, d: usize) -> Result<Vec<u8>> {
        let cerr = |e: fhe_math::Error| Error::Crypto(e.to_string());
        let ctx = self.top_ctx()?;
        let moduli = self.par.moduli();
        let c = moduli[1] as u128 * moduli[2] as u128;
        // The constant q1·q2 in NTT form is the same value in every slot.
        let coeffs: Vec<u64> = moduli
            .iter()
            .flat_map(|&qi| vec![(c % qi as u128) as u64; DEGREE])
            .collect();
        let planted =
            Poly::try_convert_from(coeffs, ctx, false, Representation::Ntt).map_err(cerr)?;
        let zero = Poly::zero(ctx, Representation::Ntt);
        let mut c0s = vec![planted];
        c0s.extend(std::iter::repeat_n(zero, d));
        self.encode_query(&c0s, &vec![vec![0; moduli.len()]; d + 1])
    }

    /// The sealed-query bytes: [`QUERY_MAGIC`], a u16 count, then each `c0` (NTT form, top level)
    /// packed with the constant `shifts[i]` (one residue per prime) added, which is how a client
    /// adds its plaintext `⌊q·wᵢ/t⌋` to an encryption of zero in the same pass.
    #[doc(hidden)]
    pub fn encode_query(&self, c0s: &[Poly], shifts: &[Vec<u64>]) -> Result<Vec<u8>> {
        let count = u16::try_from(c0s.len())
            .ok()
            .filter(|_| shifts.len() == c0s.len())
            .ok_or_else(|| {
                Error::InvalidInput("one shift per query coordinate, at most 2^16".into())
            })?;
        let mut out = Vec::with_capacity(6 + c0s.len() * self.top_poly_bytes());
        out.extend_from_slice(QUERY_MAGIC);
        out.extend_from_slice(&count.to_le_bytes());
        for (p, shift) in c0s.iter().zip(shifts) {
            self.pack_shifted(p, shift, &mut out)?;
        }
        Ok(out)
    }
}

impl Finish {
    /// Whether to add the public-key encryption of zero. Only a unit test can turn it off.
    fn rerandomise(self) -> bool {
        #[cfg(test)]
        if self == Finish::NoRerandomise {
            return false;
        }
        true
    }
}

/// A stored block: the masked augmented rows, column-major (`cols[i][j] = y_{ji} ∈ [0, t)`).
#[derive(Clone, Serialize, Deserialize)]
pub struct MlheBlock {
    /// `d + 1` columns of equal length (the number of rows).
    pub cols: Vec<Vec<u64>>,
}

impl std::fmt::Debug for MlheBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MlheBlock {{ cols: {}, rows: {} }}",
            self.cols.len(),
            self.cols.first().map_or(0, Vec::len)
        )
    }
}

/// A block ready for evaluation: one NTT-form plaintext polynomial per coordinate, and the `c1`
/// half of every query's product, `Σᵢ aᵢ·Yᵢ`, computed once.
pub struct MlhePrepared {
    polys: Vec<Poly>,
    c1: Poly,
    rows: usize,
}

/// A decoded query: the session public key (an encryption of zero) and the `d + 1` ciphertexts'
/// `c0`s (their `c1`s are the public [`Mlhe::query_a`]).
pub struct MlheQuery {
    pk: [Poly; 2],
    c0s: Vec<Poly>,
}

impl Scheme for Mlhe {
    const ID: SchemeId = SchemeId::Mlhe;
    type Block = MlheBlock;
    type Prepared = MlhePrepared;
    type Query = MlheQuery;

    fn block_capacity(&self) -> usize {
        DEGREE - CHECK_ROWS
    }

    fn exact_bound(&self) -> u128 {
        // Results are opened centred mod t.
        (self.t() / 2) as u128
    }

    fn block_rows(&self, block: &MlheBlock) -> usize {
        block
            .cols
            .first()
            .map_or(0, |c| c.len().saturating_sub(CHECK_ROWS))
    }

    fn prepare(&self, block: &MlheBlock, dim: usize) -> Result<MlhePrepared> {
        let bad = |d: &str| Error::malformed("mlhe block", d);
        if block.cols.len() != dim + 1 {
            return Err(bad("column count is not dim + 1"));
        }
        // Every row is evaluated, the check row too.
        let rows = block.cols.first().map_or(0, Vec::len);
        if rows <= CHECK_ROWS || rows > DEGREE {
            return Err(bad(
                "row count outside 2..=8192 (data rows and the check row)",
            ));
        }
        let t = self.t();
        let ctx = self.top_ctx()?;
        let half = t / 2;
        let mut polys = Vec::with_capacity(block.cols.len());
        for col in &block.cols {
            if col.len() != rows {
                return Err(bad("ragged columns"));
            }
            // Centred coefficients cost one bit less noise than [0, t) (notes §2.1).
            let mut centred = Vec::with_capacity(rows);
            for &y in col {
                if y >= t {
                    return Err(bad("value outside [0, t)"));
                }
                centred.push(if y > half {
                    y as i64 - t as i64
                } else {
                    y as i64
                });
            }
            let mut p =
                Poly::try_convert_from(centred.as_slice(), ctx, false, Representation::PowerBasis)
                    .map_err(|e| Error::Crypto(e.to_string()))?;
            p.change_representation(Representation::Ntt);
            polys.push(p);
        }
        let a = (0..polys.len())
            .map(|i| self.query_a(i))
            .collect::<Result<Vec<_>>>()?;
        let c1 = fhe_math::rq::dot_product(a.into_iter(), polys.iter())
            .map_err(|e| Error::Crypto(e.to_string()))?;
        Ok(MlhePrepared { polys, c1, rows })
    }

    fn decode_query(&self, bytes: &[u8], dim: usize, pk_seed: &PkSeed) -> Result<MlheQuery> {
        if dim == 0 || dim > MAX_MLHE_DIM {
            return Err(Error::InvalidInput(format!(
                "mlhe dimension {dim} outside 1..={MAX_MLHE_DIM}"
            )));
        }
        let (pk_bytes, q_bytes) = super::unframe_query(bytes)?;
        let pk = self.session_key(pk_bytes, pk_seed)?;
        let bad = |d: String| Error::malformed("mlhe query", d);
        match q_bytes.get(..4) {
            Some(m) if m == QUERY_MAGIC => {}
            _ => {
                return Err(bad(
                    "not a BKQ2 query (clients before issue 12 sent full ciphertexts: upgrade the client)"
                        .into(),
                ))
            }
        }
        let count = q_bytes
            .get(4..6)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize)
            .ok_or_else(|| bad("shorter than its header".into()))?;
        if count != dim + 1 {
            return Err(Error::InvalidInput(format!(
                "query has {count} ciphertexts, index needs {}",
                dim + 1
            )));
        }
        let pb = self.top_poly_bytes();
        let body = &q_bytes[6..];
        if body.len() != count * pb {
            return Err(bad(format!(
                "{} bytes of ciphertexts, expected {count} × {pb}",
                body.len()
            )));
        }
        let c0s = body
            .chunks_exact(pb)
            .map(|c| self.unpack_ntt(c, "query ciphertext"))
            .collect::<Result<Vec<_>>>()?;
        Ok(MlheQuery { pk, c0s })
    }

    fn evaluate(&self, q: &MlheQuery, block: &MlhePrepared) -> Result<Vec<u8>> {
        if block.polys.len() != q.c0s.len() {
            return Err(Error::InvalidInput(
                "query dimension does not match the block".into(),
            ));
        }
        let c0 = fhe_math::rq::dot_product(q.c0s.iter(), block.polys.iter())
            .map_err(|e| Error::Crypto(e.to_string()))?;
        let mut out = self.finish(&q.pk, c0, block.c1.clone())?;
        out.extend_from_slice(&(block.rows as u32).to_le_bytes());
        Ok(out)
    }
}

/// The `a` of a session public key, expanded from the server's seed: public, and never the client's
/// choice, so re-randomisation always adds `a·u` with `a` uniform (DESIGN §3.4).
#[doc(hidden)]
pub fn session_a(ctx: &Arc<Context>, seed: &PkSeed) -> Poly {
    let expanded = blake3::derive_key(super::domain::SESSION_PK_A, seed);
    Poly::random_from_seed(ctx, Representation::Ntt, expanded)
}

impl Mlhe {
    /// The session public key `(b, a)`: `b` as the client sent it (bounded, top level, NTT form,
    /// constant-time arithmetic), `a` from the server's seed.
    fn session_key(&self, b_bytes: &[u8], seed: &PkSeed) -> Result<[Poly; 2]> {
        // Constant-time: the server multiplies `b` by its secret `u`.
        let b = self.unpack_ntt(b_bytes, "session public key")?;
        Ok([b, session_a(self.top_ctx()?, seed)])
    }
}

/// Keyless checks of the finish step that need its test-only switches. The round trips (sealing,
/// opening, wrong keys) are `blindkd-keys`' tests.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::{frame_query, FIXED_PK_SEED};
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// A full block of `d + 1` masked columns: uniform in `[0, t)`, as sealing makes them.
    fn masked_block(d: usize, seed: u64) -> MlheBlock {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let t = PLAINTEXT_MODULUS;
        MlheBlock {
            cols: (0..=d)
                .map(|_| (0..DEGREE).map(|_| rng.random_range(0..t)).collect())
                .collect(),
        }
    }

    /// The session key a malicious client sends instead of an honest `b`.
    #[derive(Clone, Copy, Debug)]
    enum Pk {
        /// `b = 0` (the old attack: pk = (0, 0)).
        Zero,
        /// `b` made for an `a` of the client's choosing (here a' = 0, so b = e).
        PlantedA,
    }

    /// The reply to the planted query under a malicious session key: `(c0, c1)` at q₀, centred.
    fn planted_reply(m: &Mlhe, prepared: &MlhePrepared, d: usize, which: Pk) -> [Vec<i64>; 2] {
        let ctx = m.top_ctx().unwrap().clone();
        let b = match which {
            Pk::Zero => Poly::zero(&ctx, Representation::Ntt),
            Pk::PlantedA => Poly::small(&ctx, Representation::Ntt, 10, &mut rand::rng()).unwrap(),
        };
        let bytes = frame_query(&m.pack_ntt(&b).unwrap(), &m.planted_query(d).unwrap());
        let q = m.decode_query(&bytes, d, &FIXED_PK_SEED).unwrap();
        let reply = m.evaluate(&q, prepared).unwrap();
        let pb = m.q0_poly_bytes();
        let q0op = &m.last_ctx().unwrap().moduli_operators()[0];
        let q0 = **q0op as i64;
        let centred = |bytes: &[u8]| -> Vec<i64> {
            unpack_residues(bytes)
                .into_iter()
                .map(|c| {
                    let v = c as i64;
                    if v > q0 / 2 {
                        v - q0
                    } else {
                        v
                    }
                })
                .collect()
        };
        [
            centred(&reply[4..4 + pb]),
            centred(&reply[4 + pb..4 + 2 * pb]),
        ]
    }

    fn centred_column(block: &MlheBlock, i: usize) -> Vec<i64> {
        let t = PLAINTEXT_MODULUS as i64;
        block.cols[i]
            .iter()
            .map(|&y| {
                if y > (t as u64) / 2 {
                    y as i64 - t
                } else {
                    y as i64
                }
            })
            .collect()
    }

    /// Since issue 12 a query's `c1`s are public constants, so no client can divide out a `c1` of
    /// its own choosing (the attack of DESIGN §3.1 and issue 11). What re-randomisation still
    /// does is make every reply's `c1` fresh: without it `c1` is the same public function
    /// `Σ aᵢ·Yᵢ` of the masked block in every reply, whatever session key the client sends.
    #[test]
    fn reply_c1_is_fresh_per_reply() {
        let d = 2;
        let block = masked_block(d, 3);
        let honest = Mlhe::new().unwrap();
        let mut broken = honest.clone();
        broken.finish = Finish::NoRerandomise;
        let same = |m: &Mlhe, which: Pk| {
            let prepared = m.prepare(&block, d).unwrap();
            let [_, r1] = planted_reply(m, &prepared, d, which);
            let [_, r2] = planted_reply(m, &prepared, d, which);
            r1.iter().zip(&r2).filter(|(a, b)| a == b).count()
        };
        assert_eq!(
            same(&broken, Pk::Zero),
            DEGREE,
            "without re-randomisation c1 must repeat (the test must be able to fail)"
        );
        for which in [Pk::Zero, Pk::PlantedA] {
            let got = same(&honest, which);
            assert!(got < 4, "{which:?}: {got} coefficients of c1 repeated");
        }
    }

    /// The known limit of the finish step (SECURITY.md §2, "what the finish step cannot stop"):
    /// a planted `c0₀ = q₁q₂` with `b = 0` reads the masked column `Y₀` through the reply's `c0`,
    /// flood and re-randomisation notwithstanding. Only the token bounds the blocks it reaches.
    /// If this ever stops holding, SECURITY.md must be updated.
    #[test]
    fn planted_query_reads_a_masked_column() {
        let d = 2;
        let block = masked_block(d, 4);
        let m = Mlhe::new().unwrap();
        let prepared = m.prepare(&block, d).unwrap();
        let [c0, _] = planted_reply(&m, &prepared, d, Pk::Zero);
        let y0 = centred_column(&block, 0);
        let hits = c0.iter().zip(&y0).filter(|(a, b)| a == b).count();
        assert!(hits > DEGREE - 16, "{hits}/{DEGREE}");
    }

    proptest::proptest! {
        /// The residue codec round-trips every even-length vector of 60-bit values, and its
        /// size is 7.5 bytes per residue.
        #[test]
        fn residues_round_trip(v in proptest::collection::vec(0u64..(1 << 60), 0..64)) {
            let v = &v[..v.len() / 2 * 2];
            let mut packed = Vec::new();
            pack_residues(v.iter().copied(), &mut packed);
            proptest::prop_assert_eq!(packed.len(), v.len() / 2 * 15);
            proptest::prop_assert_eq!(unpack_residues(&packed), v.to_vec());
        }
    }

    /// Query bytes from before issue 12 (or any other shape) are refused with a clear error.
    #[test]
    fn malformed_queries_are_refused() {
        let m = Mlhe::new().unwrap();
        let d = 2;
        let ctx = m.top_ctx().unwrap().clone();
        let pk = m.pack_ntt(&Poly::zero(&ctx, Representation::Ntt)).unwrap();
        let good = m.planted_query(d).unwrap();
        let old: Vec<Vec<u8>> = vec![vec![0u8; 100]; d + 1];
        let mut unreduced = good.clone();
        unreduced[6..14].copy_from_slice(&[0xff; 8]);
        for (what, q) in [
            ("v1 postcard", postcard::to_allocvec(&old).unwrap()),
            ("truncated", good[..good.len() - 1].to_vec()),
            ("trailing byte", [good.clone(), vec![0]].concat()),
            ("unreduced", unreduced),
            ("empty", vec![]),
        ] {
            let r = m.decode_query(&frame_query(&pk, &q), d, &FIXED_PK_SEED);
            assert!(r.is_err(), "{what} accepted");
        }
        assert!(m
            .decode_query(&frame_query(&pk, &good), d + 1, &FIXED_PK_SEED)
            .is_err());
        assert!(m
            .decode_query(&frame_query(&pk[1..], &good), d, &FIXED_PK_SEED)
            .is_err());
        assert!(m
            .decode_query(&frame_query(&pk, &good), d, &FIXED_PK_SEED)
            .is_ok());
    }

    /// Honest flooding must dominate the client-known noise `e·Y`: the flood polynomial is large
    /// (a 118-bit value reduced mod a 60-bit prime is uniform). That flooded replies still open
    /// exactly is `blindkd-keys`' `flooded_replies_open_exactly`.
    #[test]
    fn flooding_is_applied() {
        let m = Mlhe::new().unwrap();
        let ctx = m.top_ctx().unwrap().clone();
        let p = m.flood_poly(&ctx, &mut rand::rng()).unwrap();
        let q0 = m.par.moduli()[0];
        let big = p
            .coefficients()
            .row(0)
            .iter()
            .filter(|&&c: &&u64| {
                let centred = if c > q0 / 2 { q0 - c } else { c };
                centred > 1 << 40
            })
            .count();
        assert!(big > DEGREE - 10, "flood looks small: {big}");
    }
}
