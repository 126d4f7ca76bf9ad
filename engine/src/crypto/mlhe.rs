//! `mlhe`: linear homomorphic evaluation over a masked index (DESIGN §3.1). The default scheme.
//!
//! * The data owner stores `y_j = a_j + m_j mod t`, a one-time pad of the augmented row `a_j` with a
//!   ChaCha20 mask keyed per policy class (`MlheKey`, in `blindkd-keys`).
//! * The client encrypts the query functional `w = (−2q̃, 1)` with BFV under a fresh per-session
//!   secret key, one constant-polynomial ciphertext per coordinate (**layout B**).
//! * The server computes `Σᵢ ctᵢ·Yᵢ` where `Yᵢ(X) = Σⱼ y_{ji} Xʲ`, so coefficient `j` of the product is
//!   `⟨y_j, w⟩ mod t` for every one of the N rows of a block. It then **finishes** the output:
//!   re-randomises with the session public key, floods the noise with `±2^FLOOD_BITS` and switches
//!   down to the first prime. Without re-randomisation a client divides out its own `c1` and reads the
//!   masked block (see the `division_attack_works_without_rerandomisation` test).
//! * The client decrypts, subtracts `⟨m_j, w⟩`, adds `‖q̃‖²` and centres: the exact distance.
//!
//! Layout B rather than A: every output coefficient is a result (no garbage coefficients to
//! randomise), and the finish step, which dominates, runs once per 8192 rows instead of once per
//! `⌊8192/(d+1)⌋`. Measured in the prototype at ~10× less server time per row; the price is a
//! `(d+1)`-ciphertext upload (~2 MB at d = 10) once per query.
//!
//! Parameters: N = 8192, three 60-bit primes (log q = 180 ≤ 218, the 128-bit HE-standard bound at
//! N = 8192), t the prime [`PLAINTEXT_MODULUS`] just below 2^40. `t < q₀` is checked (fhe 0.1.1 does not and silently decrypts garbage).

use std::sync::Arc;

use fhe::bfv::{BfvParameters, BfvParametersBuilder, Ciphertext};
use fhe_math::rq::{traits::TryConvertFrom, Context, Poly, Representation};
use fhe_traits::DeserializeParametrized;
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
/// Upper bound on one serialised query ciphertext (a fresh seeded one is ~184 KB).
const MAX_CT_BYTES: usize = 512 * 1024;
/// Rows of every block given to the check value (DESIGN §3.5): the last row of a block holds
/// `Σ βᵢ·aᵢ` (masked), with βᵢ secret per class, block and record id.
pub const CHECK_ROWS: usize = 1;
/// Magic of a reply: `BKR1 ‖ c0 at q₀ ‖ c1 at q₀ ‖ u32 row count`.
#[doc(hidden)]
pub const REPLY_MAGIC: &[u8; 4] = b"BKR1";

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
        let par = BfvParametersBuilder::new()
            .set_degree(params.degree as usize)
            .set_plaintext_modulus(params.t)
            .set_moduli_sizes(&params.moduli_bits.map(|b| b as usize))
            .build_arc()
            .map_err(|e| Error::Crypto(format!("BFV parameters: {e}")))?;
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
        let q0 = &self.last_ctx()?.moduli_operators()[0];
        let mut out = Vec::with_capacity(8 + 2 * self.q0_poly_bytes());
        out.extend_from_slice(REPLY_MAGIC);
        for p in [&c0, &c1] {
            let coeffs = p.coefficients();
            let row = coeffs
                .row(0)
                .to_slice()
                .map(<[u64]>::to_vec)
                .unwrap_or_else(|| coeffs.row(0).to_vec());
            out.extend_from_slice(&q0.serialize_vec(&row));
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
        let mut c0 = q0.deserialize_vec(&reply[4..4 + pb]);
        let q = **q0 as u128;
        let t = u128::from(self.t());
        let shift = ((q * (u128::from(delta) % t) + t / 2) / t) as u64;
        c0[row] = ((u128::from(c0[row]) + u128::from(shift)) % q) as u64;
        let mut out = reply.to_vec();
        out[4..4 + pb].copy_from_slice(&q0.serialize_vec(&c0));
        Ok(out)
    }
}

impl Mlhe {
    /// The sealed-query part of the malicious-client division attack (keyless: any client can send
    /// it): `ct₀ = (0, q₁q₂)` and zero ciphertexts for the other `d` coordinates, so the product's
    /// `c1 = q₁q₂·Y₀` switches down to exactly the masked column `Y₀` unless the finish step
    /// re-randomises it. Frame it with a session key ([`super::frame_query`]). For the attack tests.
    #[doc(hidden)]
    pub fn division_attack_query(&self, d: usize) -> Result<Vec<u8>> {
        use fhe_traits::Serialize as _;
        let cerr = |e: fhe_math::Error| Error::Crypto(e.to_string());
        let ctx = self.top_ctx()?;
        let moduli = self.par.moduli();
        let c = moduli[1] as u128 * moduli[2] as u128;
        // Constant polynomial q1·q2 in RNS.
        let coeffs: Vec<u64> = moduli
            .iter()
            .flat_map(|&qi| {
                let mut row = vec![0u64; DEGREE];
                row[0] = (c % qi as u128) as u64;
                row
            })
            .collect();
        let mut c1 =
            Poly::try_convert_from(coeffs, ctx, false, Representation::PowerBasis).map_err(cerr)?;
        c1.change_representation(Representation::Ntt);
        let zero = Poly::zero(ctx, Representation::Ntt);
        let ct = |c0: Poly, c1: Poly| {
            Ciphertext::new(vec![c0, c1], &self.par).map_err(|e| Error::Crypto(e.to_string()))
        };
        let mut parts = vec![ct(zero.clone(), c1)?.to_bytes()];
        for _ in 0..d {
            parts.push(ct(zero.clone(), zero.clone())?.to_bytes());
        }
        postcard::to_allocvec(&parts).map_err(|e| Error::malformed("mlhe query", e))
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

/// A block ready for evaluation: one NTT-form plaintext polynomial per coordinate.
pub struct MlhePrepared {
    polys: Vec<Poly>,
    rows: usize,
}

/// A decoded query: the session public key (an encryption of zero) and `d + 1` ciphertexts.
pub struct MlheQuery {
    pk: [Poly; 2],
    cts: Vec<Ciphertext>,
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
        Ok(MlhePrepared { polys, rows })
    }

    fn decode_query(&self, bytes: &[u8], dim: usize, pk_seed: &PkSeed) -> Result<MlheQuery> {
        if dim == 0 || dim > MAX_MLHE_DIM {
            return Err(Error::InvalidInput(format!(
                "mlhe dimension {dim} outside 1..={MAX_MLHE_DIM}"
            )));
        }
        let (pk_bytes, q_bytes) = super::unframe_query(bytes)?;
        let pk = self.session_key(pk_bytes, pk_seed)?;
        let parts: Vec<Vec<u8>> =
            postcard::from_bytes(q_bytes).map_err(|e| Error::malformed("mlhe query", e))?;
        if parts.len() != dim + 1 {
            return Err(Error::InvalidInput(format!(
                "query has {} ciphertexts, index needs {}",
                parts.len(),
                dim + 1
            )));
        }
        // Each decode expands a seeded c1 and NTTs it (~1.5 ms): spread the d + 1 over the cores.
        let cts = {
            use rayon::prelude::*;
            parts
                .par_iter()
                .map(|p| self.decode_ct(p, "query ciphertext"))
                .collect::<Result<Vec<_>>>()?
        };
        Ok(MlheQuery { pk, cts })
    }

    fn evaluate(&self, q: &MlheQuery, block: &MlhePrepared) -> Result<Vec<u8>> {
        if block.polys.len() != q.cts.len() {
            return Err(Error::InvalidInput(
                "query dimension does not match the block".into(),
            ));
        }
        let cerr = |e: fhe_math::Error| Error::Crypto(e.to_string());
        let c0 = fhe_math::rq::dot_product(q.cts.iter().map(|c| &c[0]), block.polys.iter())
            .map_err(cerr)?;
        let c1 = fhe_math::rq::dot_product(q.cts.iter().map(|c| &c[1]), block.polys.iter())
            .map_err(cerr)?;
        let mut out = self.finish(&q.pk, c0, c1)?;
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
        use fhe_traits::DeserializeWithContext;
        if b_bytes.len() > MAX_CT_BYTES {
            return Err(Error::LimitExceeded(format!(
                "session public key is {} bytes",
                b_bytes.len()
            )));
        }
        let ctx = self.top_ctx()?;
        let mut b = Poly::from_bytes(b_bytes, ctx)
            .map_err(|e| Error::malformed("session public key", e))?;
        if b.representation() != &Representation::Ntt {
            return Err(Error::malformed(
                "session public key",
                "expected a polynomial in NTT form",
            ));
        }
        // The sender may have marked it variable-time; the server multiplies it by secret `u`.
        b.disallow_variable_time_computations();
        Ok([b, session_a(ctx, seed)])
    }

    /// Decodes one client ciphertext: bounded size, 2 polynomials, top level.
    fn decode_ct(&self, bytes: &[u8], what: &'static str) -> Result<Ciphertext> {
        if bytes.len() > MAX_CT_BYTES {
            return Err(Error::LimitExceeded(format!(
                "{what} is {} bytes",
                bytes.len()
            )));
        }
        let ct = Ciphertext::from_bytes(bytes, &self.par).map_err(|e| Error::malformed(what, e))?;
        if ct.len() != 2 || ct[0].ctx().moduli().len() != self.par.moduli().len() {
            return Err(Error::malformed(
                what,
                "expected a fresh 2-polynomial ciphertext at the top level",
            ));
        }
        Ok(ct)
    }
}

/// Keyless checks of the finish step that need its test-only switches. The round trips (sealing,
/// opening, wrong keys) are `blindkd-keys`' tests.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::{frame_query, FIXED_PK_SEED};
    use fhe_traits::Serialize as _;
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

    /// A malicious client sends `ct₀ = (0, q₁q₂)` and zero ciphertexts for the other coordinates, so
    /// `c1' = q₁q₂·Y₀`, which switches down to exactly `Y₀` mod q₀. Returns how many values of the
    /// masked column `Y₀` the reply's `c1` gives away.
    fn recovered(m: &Mlhe, block: &MlheBlock, d: usize, which: Pk) -> usize {
        let t = PLAINTEXT_MODULUS as i64;
        let y0: Vec<i64> = block.cols[0]
            .iter()
            .map(|&y| {
                if y > (t as u64) / 2 {
                    y as i64 - t
                } else {
                    y as i64
                }
            })
            .collect();
        let prepared = m.prepare(block, d).unwrap();
        let ctx = m.top_ctx().unwrap().clone();
        let pk = match which {
            Pk::Zero => Poly::zero(&ctx, Representation::Ntt).to_bytes(),
            Pk::PlantedA => Poly::small(&ctx, Representation::Ntt, 10, &mut rand::rng())
                .unwrap()
                .to_bytes(),
        };
        let moduli = m.par.moduli();
        let bytes = frame_query(&pk, &m.division_attack_query(d).unwrap());
        let reply = m
            .evaluate(
                &m.decode_query(&bytes, d, &FIXED_PK_SEED).unwrap(),
                &prepared,
            )
            .unwrap();
        // The reply's c1 at q₀ (layout: magic, c0, c1, row count).
        let pb = m.q0_poly_bytes();
        let q0op = &m.last_ctx().unwrap().moduli_operators()[0];
        let c1_out = q0op.deserialize_vec(&reply[4 + pb..4 + 2 * pb]);
        let q0 = moduli[0] as i64;
        c1_out
            .iter()
            .zip(&y0)
            .filter(|&(&c, &y)| {
                let v = c as i64;
                let centred = if v > q0 / 2 { v - q0 } else { v };
                centred == y
            })
            .count()
    }

    /// The attack is real: without re-randomisation the reply hands over the whole masked column.
    /// With it, the client's choice of session key (here `b = 0`, or `b` for its own `a`) cannot
    /// switch it off, because `a` is the server's. The honest-key case is `blindkd-keys`'
    /// `rerandomisation_stops_division_attack`.
    #[test]
    fn division_attack_works_without_rerandomisation() {
        let d = 2;
        let block = masked_block(d, 3);
        let honest = Mlhe::new().unwrap();
        let mut broken = honest.clone();
        broken.finish = Finish::NoRerandomise;
        assert_eq!(
            recovered(&broken, &block, d, Pk::Zero),
            DEGREE,
            "the attack itself must work"
        );
        for which in [Pk::Zero, Pk::PlantedA] {
            let got = recovered(&honest, &block, d, which);
            assert!(
                got < 4,
                "{which:?}: re-randomised output leaked {got} masked values"
            );
        }
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
