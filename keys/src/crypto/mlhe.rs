//! mlhe's key-holding side (DESIGN §3.1): the mask PRF keys of a class ([`MlheKey`]), the session
//! secret key ([`MlheSession`]), sealing blocks and queries, and decrypting and unmasking replies.
//!
//! Re-exports the engine's [`blindkd_engine::crypto::mlhe`] (the server's view of the scheme).

pub use blindkd_engine::crypto::mlhe::*;

use fhe_math::rq::{traits::TryConvertFrom, Poly, Representation};
use zeroize::Zeroizing;

use super::{domain, ClassKey, ClientScheme, PkSeed, RowDomain, RowRef, Scheme};
use blindkd_engine::encoding::QueryPlan;
use blindkd_engine::{Error, Result};

/// The mask PRF keys of one class for one index. Zeroized on drop, never printed.
pub struct MlheKey {
    leaf: Zeroizing<[u8; 32]>,
    pivot: Zeroizing<[u8; 32]>,
    check: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MlheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MlheKey(<redacted>)")
    }
}

/// Reads values uniform in `[0, t)` from a keyed BLAKE3 XOF: 40-bit little-endian draws, five
/// bytes each, twelve per 64-byte output block, redrawn when ≥ t (t is a prime just below 2^40,
/// so about one draw in 7.5 million is redrawn).
struct MaskStream {
    xof: blake3::OutputReader,
    buf: [u8; 64],
    pos: usize,
    t: u64,
}

impl MaskStream {
    fn new(key: &[u8; 32], parts: &[&[u8]], t: u64) -> Self {
        let mut h = blake3::Hasher::new_keyed(key);
        for p in parts {
            h.update(p);
        }
        let mut xof = h.finalize_xof();
        let mut buf = [0u8; 64];
        xof.fill(&mut buf);
        MaskStream {
            xof,
            buf,
            pos: 0,
            t,
        }
    }

    fn next(&mut self) -> u64 {
        loop {
            if self.pos + 5 > self.buf.len() {
                self.xof.fill(&mut self.buf);
                self.pos = 0;
            }
            let mut v = [0u8; 8];
            v[..5].copy_from_slice(&self.buf[self.pos..self.pos + 5]);
            self.pos += 5;
            let v = u64::from_le_bytes(v);
            if v < self.t {
                return v;
            }
        }
    }
}

impl MlheKey {
    /// Writes the mask `m ∈ Z_t^{len}` of one row into `m` and returns its check weight β ∈ Z_t:
    /// one keyed BLAKE3 XOF of the row's slot and record id (the key is per class, index and
    /// domain), so both change if any of them does.
    pub(crate) fn mask_into(&self, row: RowRef, m: &mut [u64], t: u64) -> u64 {
        let key = match row.domain {
            RowDomain::Leaf => &self.leaf,
            RowDomain::Pivot => &self.pivot,
        };
        let mut s = MaskStream::new(key, &[&row.id.to_le_bytes(), &row.record.to_le_bytes()], t);
        for mi in m.iter_mut() {
            *mi = s.next();
        }
        s.next()
    }

    /// [`MlheKey::mask_into`] into a fresh vector.
    pub(crate) fn mask(&self, row: RowRef, len: usize, t: u64) -> (Vec<u64>, u64) {
        let mut m = vec![0; len];
        let beta = self.mask_into(row, &mut m, t);
        (m, beta)
    }

    /// The mask of a block's check row; the block is named by its first row.
    fn check_mask(&self, first: RowRef, len: usize, t: u64) -> Vec<u64> {
        let mut s = MaskStream::new(
            &self.check,
            &[&[first.domain as u8], &first.id.to_le_bytes()],
            t,
        );
        (0..len).map(|_| s.next()).collect()
    }
}

/// One query's secrets (issue 12): a fresh BFV secret key, the session public key `b` built on
/// the server's `a`, and the `c0`s of one encryption of zero per coordinate on the public
/// [`Mlhe::query_a`], all made before the query is known. Sealing adds `⌊q·wᵢ/t⌋` to each `c0`
/// and uses them up. The secret and the encryptions of zero (with the sealed query they would give
/// away `w`) are zeroized on drop; never printed.
pub struct MlheSession {
    /// The secret at the last level (q₀), NTT form: replies are decrypted there.
    s_last: Zeroizing<Poly>,
    public: Vec<u8>,
    zeros: Option<Zeroizing<Vec<Poly>>>,
}

/// Variance of the centred binomial secret and error, as in fhe.rs's own keys.
const VARIANCE: usize = 10;

impl std::fmt::Debug for MlheSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MlheSession(<redacted>)")
    }
}

impl ClientScheme for Mlhe {
    type Key = MlheKey;
    type Session = MlheSession;

    fn derive_key(&self, class_key: &ClassKey, index_id: &[u8; 16]) -> Result<MlheKey> {
        Ok(MlheKey {
            leaf: class_key.derive(domain::MASK_LEAF, index_id),
            pivot: class_key.derive(domain::MASK_PIVOT, index_id),
            check: class_key.derive(domain::MASK_CHECK, index_id),
        })
    }

    fn seal_block(&self, key: &MlheKey, rows: &[(RowRef, Vec<i64>)]) -> Result<MlheBlock> {
        let cap = self.block_capacity();
        if rows.is_empty() || rows.len() > cap {
            return Err(Error::InvalidInput(format!(
                "{} rows for one block (1..={cap})",
                rows.len()
            )));
        }
        let width = rows[0].1.len();
        let t = self.t();
        let mut cols = vec![Vec::with_capacity(rows.len() + CHECK_ROWS); width];
        // The check row's plain value: Σ βᵢ·aᵢ mod t.
        let mut check = vec![0u128; width];
        for (r, a) in rows {
            if a.len() != width {
                return Err(Error::InvalidInput("rows of different lengths".into()));
            }
            let (m, beta) = key.mask(*r, width, t);
            for (i, (&ai, mi)) in a.iter().zip(m).enumerate() {
                let ai = ai.rem_euclid(t as i64) as u64;
                cols[i].push(((u128::from(ai) + u128::from(mi)) % u128::from(t)) as u64);
                check[i] = (check[i] + u128::from(beta) * u128::from(ai)) % u128::from(t);
            }
        }
        let mc = key.check_mask(rows[0].0, width, t);
        for (i, (c, m)) in check.into_iter().zip(mc).enumerate() {
            cols[i].push(((c + u128::from(m)) % u128::from(t)) as u64);
        }
        Ok(MlheBlock { cols })
    }

    fn reply_bound(&self, _rows: usize) -> usize {
        // Magic, two polynomials at q₀, the row count: the same for every block.
        8 + 2 * self.q0_poly_bytes()
    }

    fn new_session(&self, pk_seed: &PkSeed, width: usize) -> Result<MlheSession> {
        use rayon::prelude::*;
        if !(2..=MAX_MLHE_DIM + 1).contains(&width) {
            return Err(Error::InvalidInput(format!(
                "mlhe query width {width} outside 2..={}",
                MAX_MLHE_DIM + 1
            )));
        }
        let cerr = |e: fhe_math::Error| Error::Crypto(e.to_string());
        // The secret as fhe.rs samples it (`SecretKey::random`), kept long enough to build the
        // encryptions of zero.
        let coeffs = Zeroizing::new(
            fhe_util::sample_vec_cbd(DEGREE, VARIANCE, &mut rand::rng())
                .map_err(|e| Error::Crypto(e.to_string()))?,
        );
        let mut s_last = Zeroizing::new(
            Poly::try_convert_from(
                &coeffs[..],
                self.last_ctx()?,
                false,
                Representation::PowerBasis,
            )
            .map_err(cerr)?,
        );
        s_last.change_representation(Representation::Ntt);
        let ctx = self.top_ctx()?;
        let mut sp = Zeroizing::new(
            Poly::try_convert_from(&coeffs[..], ctx, false, Representation::PowerBasis)
                .map_err(cerr)?,
        );
        sp.change_representation(Representation::Ntt);
        // (−a·s + e): an encryption of zero on `a`, of which only this `c0` is sent.
        let zero_on = |a: &Poly| -> Result<Poly> {
            let mut c =
                Poly::small(ctx, Representation::Ntt, VARIANCE, &mut rand::rng()).map_err(cerr)?;
            c -= &(a * sp.as_ref());
            Ok(c)
        };
        let public = self.pack_ntt(&zero_on(&session_a(ctx, pk_seed))?)?;
        let zeros = (0..width)
            .into_par_iter()
            .map(|i| zero_on(self.query_a(i)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(MlheSession {
            s_last,
            public,
            zeros: Some(Zeroizing::new(zeros)),
        })
    }

    fn session_public(&self, s: &MlheSession) -> Result<Vec<u8>> {
        Ok(s.public.clone())
    }

    fn seal_query(&self, s: &mut MlheSession, w: &[i64]) -> Result<Vec<u8>> {
        let zeros = s.zeros.take().ok_or_else(|| {
            Error::InvalidInput(
                "this query key has sealed a query already (a second query under it would leak \
                 the difference of the two)"
                    .into(),
            )
        })?;
        if w.len() != zeros.len() {
            return Err(Error::InvalidInput(format!(
                "query has {} coordinates, the query key was made for {}",
                w.len(),
                zeros.len()
            )));
        }
        // c0ᵢ + ⌊q·wᵢ/t⌋, added while the c0s are packed.
        let scale = Scale::new(self)?;
        let shifts: Vec<Vec<u64>> = w.iter().map(|&wi| scale.of(wi)).collect();
        self.encode_query(&zeros, &shifts)
    }

    fn open(
        &self,
        key: &MlheKey,
        s: &MlheSession,
        reply: &[u8],
        plan: &QueryPlan,
        rows: &[RowRef],
    ) -> Result<Vec<u128>> {
        let (c0, c1, n) = parse_reply(self, reply)?;
        if n != rows.len() + CHECK_ROWS || rows.is_empty() {
            return Err(Error::Integrity(format!(
                "{n} rows in a reply for {} rows and the check row",
                rows.len()
            )));
        }
        let t = self.t();
        let coeffs = decrypt_q0(self, s, &c0, c1, t)?;
        let tt = i128::from(t);
        // ⟨m, w⟩ mod t, with w's entries taken mod t once: each product is below 2^80 and at most
        // 65 of them are summed, so one reduction per row suffices.
        let w_mod: Vec<u128> = plan
            .w
            .iter()
            .map(|&wi| i128::from(wi).rem_euclid(tt) as u128)
            .collect();
        let mw = |m: &[u64]| -> i128 {
            let sum: u128 = m
                .iter()
                .zip(&w_mod)
                .map(|(&mi, &wi)| u128::from(mi) * wi)
                .sum();
            (sum % u128::from(t)) as i128
        };
        // ⟨aⱼ, w⟩ mod t for every data row, and Σ βⱼ·⟨aⱼ, w⟩.
        let mut inner = Vec::with_capacity(rows.len());
        let mut expected = 0i128;
        let mut m = vec![0u64; plan.w.len()];
        for (j, &r) in rows.iter().enumerate() {
            let beta = key.mask_into(r, &mut m, t);
            let v = (i128::from(coeffs[j]) - mw(&m)).rem_euclid(tt);
            expected = (expected + i128::from(beta) * v) % tt;
            inner.push(v);
        }
        let mc = key.check_mask(rows[0], plan.w.len(), t);
        let got = (i128::from(coeffs[rows.len()]) - mw(&mc)).rem_euclid(tt);
        // Checked before any value is used: a changed row, slot, record id or block (or a
        // reply for another session) fails here, except with probability about 1/t.
        if got != expected {
            return Err(Error::Integrity(
                "a block's check value does not match its rows".into(),
            ));
        }
        let bound = self.exact_bound() as i128;
        inner
            .into_iter()
            .map(|v| {
                let v = (v + plan.q_norm).rem_euclid(tt);
                let centred = if v >= tt / 2 { v - tt } else { v };
                if centred < 0 || centred >= bound {
                    // The check passed, so the encoding overflowed: a bug, not a forgery.
                    return Err(Error::Crypto(
                        "a verified result is not a valid distance (encoding overflow)".into(),
                    ));
                }
                Ok(centred as u128)
            })
            .collect()
    }
}

/// BFV decryption at q₀: `round(t·[c0 + c1·s]_{q₀} / q₀) mod t` for every coefficient (the
/// reply is at one prime, so two NTTs of one prime and a u128 division per row; fhe.rs's
/// general path cost three times as much here).
fn decrypt_q0(
    m: &Mlhe,
    s: &MlheSession,
    c0: &[u64],
    c1: Vec<u64>,
    t: u64,
) -> Result<Zeroizing<Vec<u64>>> {
    let last = m.last_ctx()?;
    let q0 = u128::from(last.moduli()[0]);
    let cerr = |e: fhe_math::Error| Error::Crypto(e.to_string());
    let mut c1s = Zeroizing::new(
        Poly::try_convert_from(c1, last, false, Representation::PowerBasis).map_err(cerr)?,
    );
    c1s.change_representation(Representation::Ntt);
    *c1s.as_mut() *= s.s_last.as_ref();
    c1s.change_representation(Representation::PowerBasis);
    let t = u128::from(t);
    let coeffs = c1s.coefficients();
    Ok(Zeroizing::new(
        c0.iter()
            .zip(coeffs.row(0))
            .map(|(&a, &b)| {
                let v = (u128::from(a) + u128::from(b)) % q0;
                ((t * v + q0 / 2) / q0 % t) as u64
            })
            .collect(),
    ))
}

/// `⌊q·m/t⌋ mod qᵢ` for a plaintext constant m, as fhe.rs encodes plaintexts:
/// `q·m = t·⌊q·m/t⌋ + (q·m mod t)` and `q ≡ 0 (mod qᵢ)`, so `⌊q·m/t⌋ ≡ −((q mod t)·m mod t)·t⁻¹`.
struct Scale {
    t: u64,
    q_mod_t: u64,
    /// Per prime: (qᵢ, −t⁻¹ mod qᵢ).
    primes: Vec<(u64, u64)>,
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) % u128::from(m)) as u64
}

fn pow_mod(mut b: u64, mut e: u64, m: u64) -> u64 {
    let mut r = 1 % m;
    b %= m;
    while e > 0 {
        if e & 1 == 1 {
            r = mul_mod(r, b, m);
        }
        b = mul_mod(b, b, m);
        e >>= 1;
    }
    r
}

impl Scale {
    fn new(m: &Mlhe) -> Result<Self> {
        let t = m.t();
        let moduli = m.bfv_parameters().moduli();
        let q_mod_t = moduli
            .iter()
            .fold(1 % t, |acc, &qi| mul_mod(acc, qi % t, t));
        let primes = moduli
            .iter()
            .map(|&qi| {
                // qᵢ is prime: t⁻¹ = t^(qᵢ−2).
                let inv = pow_mod(t % qi, qi - 2, qi);
                if mul_mod(inv, t % qi, qi) != 1 {
                    return Err(Error::Crypto(
                        "t has no inverse modulo a ciphertext prime".into(),
                    ));
                }
                Ok((qi, (qi - inv) % qi))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Scale { t, q_mod_t, primes })
    }

    /// The residues of `⌊q·(w mod t)/t⌋`, one per prime.
    fn of(&self, w: i64) -> Vec<u64> {
        let m = i128::from(w).rem_euclid(i128::from(self.t)) as u64;
        let v = mul_mod(self.q_mod_t, m, self.t);
        self.primes
            .iter()
            .map(|&(qi, neg_tinv)| mul_mod(v % qi, neg_tinv, qi))
            .collect()
    }
}

/// Splits a reply into its two q₀ polynomials' coefficient rows and the row count.
pub(crate) fn parse_reply(m: &Mlhe, reply: &[u8]) -> Result<(Vec<u64>, Vec<u64>, usize)> {
    let pb = m.q0_poly_bytes();
    if reply.len() != 4 + 2 * pb + 4 || &reply[..4] != REPLY_MAGIC {
        return Err(Error::malformed(
            "mlhe reply",
            format!("expected {} bytes with magic", 8 + 2 * pb),
        ));
    }
    let q0 = &m.last_ctx()?.moduli_operators()[0];
    let c0 = unpack_residues(&reply[4..4 + pb]);
    let c1 = unpack_residues(&reply[4 + pb..4 + 2 * pb]);
    let mut n = [0u8; 4];
    n.copy_from_slice(&reply[4 + 2 * pb..]);
    let rows = u32::from_le_bytes(n) as usize;
    if c0.len() != DEGREE || c1.len() != DEGREE || rows > DEGREE {
        return Err(Error::malformed(
            "mlhe reply",
            "bad polynomial length or row count",
        ));
    }
    if c0.iter().chain(&c1).any(|&c| c >= **q0) {
        return Err(Error::malformed(
            "mlhe reply",
            "coefficient not reduced mod q0",
        ));
    }
    Ok((c0, c1, rows))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::frame_query;
    use blindkd_engine::encoding::{augment, squared_distance};
    use rand::Rng;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn rows(n: usize, d: usize, seed: u64) -> Vec<Vec<i64>> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                (0..d)
                    .map(|_| rng.random_range(-65535i64..=65535))
                    .collect()
            })
            .collect()
    }

    /// A fresh query key for `plan` and the framed query it seals.
    fn sealed_query(m: &Mlhe, plan: &QueryPlan) -> (MlheSession, Vec<u8>) {
        let mut s = m
            .new_session(&crate::crypto::FIXED_PK_SEED, plan.w.len())
            .unwrap();
        let sealed = m.seal_query(&mut s, &plan.w).unwrap();
        let bytes = frame_query(&m.session_public(&s).unwrap(), &sealed);
        (s, bytes)
    }

    fn roundtrip(m: &Mlhe, xs: &[Vec<i64>], q: &[i64], first_id: u64) -> Vec<u128> {
        let d = q.len();
        let weights = vec![1u32; d];
        let ck = ClassKey::from_bytes([7; 32]);
        let key = m.derive_key(&ck, &[1; 16]).unwrap();
        let sealed: Vec<(RowRef, Vec<i64>)> = xs
            .iter()
            .enumerate()
            .map(|(j, x)| {
                (
                    RowRef {
                        domain: RowDomain::Leaf,
                        id: first_id + j as u64,
                        record: 0,
                    },
                    augment(x, &weights),
                )
            })
            .collect();
        let block = m.seal_block(&key, &sealed).unwrap();
        let prepared = m.prepare(&block, d).unwrap();
        let plan = QueryPlan::new(q, &weights);
        let (s, bytes) = sealed_query(m, &plan);
        let query = m
            .decode_query(&bytes, d, &crate::crypto::FIXED_PK_SEED)
            .unwrap();
        let reply = m.evaluate(&query, &prepared).unwrap();
        let refs: Vec<RowRef> = sealed.iter().map(|(r, _)| *r).collect();
        m.open(&key, &s, &reply, &plan, &refs).unwrap()
    }

    #[test]
    fn full_block_and_extremes_are_exact() {
        let m = Mlhe::new().unwrap();
        let d = 10;
        let mut xs = rows(DEGREE - CHECK_ROWS, d, 1);
        xs[0] = vec![65535; d];
        xs[1] = vec![-65535; d];
        let q = vec![-65535; d];
        let got = roundtrip(&m, &xs, &q, 1000);
        for (x, g) in xs.iter().zip(&got) {
            assert_eq!(*g, squared_distance(x, &q, &vec![1; d]));
        }
        assert_eq!(got[0], 10 * (2u128 * 65535).pow(2));
        assert_eq!(got[1], 0);
    }

    #[test]
    fn wrong_key_does_not_open() {
        let m = Mlhe::new().unwrap();
        let xs = rows(50, 3, 2);
        let weights = [1u32; 3];
        let key = m
            .derive_key(&ClassKey::from_bytes([1; 32]), &[0; 16])
            .unwrap();
        let other = m
            .derive_key(&ClassKey::from_bytes([2; 32]), &[0; 16])
            .unwrap();
        let sealed: Vec<_> = xs
            .iter()
            .enumerate()
            .map(|(j, x)| {
                (
                    RowRef {
                        domain: RowDomain::Leaf,
                        id: j as u64,
                        record: 0,
                    },
                    augment(x, &weights),
                )
            })
            .collect();
        let block = m.seal_block(&key, &sealed).unwrap();
        let prepared = m.prepare(&block, 3).unwrap();
        let plan = QueryPlan::new(&[0, 0, 0], &weights);
        let (s, bytes) = sealed_query(&m, &plan);
        let reply = m
            .evaluate(
                &m.decode_query(&bytes, 3, &crate::crypto::FIXED_PK_SEED)
                    .unwrap(),
                &prepared,
            )
            .unwrap();
        let refs: Vec<_> = sealed.iter().map(|(r, _)| *r).collect();
        assert!(m.open(&other, &s, &reply, &plan, &refs).is_err());
        // Another session's secret key does not decrypt either.
        let s2 = m
            .new_session(&crate::crypto::FIXED_PK_SEED, plan.w.len())
            .unwrap();
        assert!(m.open(&key, &s2, &reply, &plan, &refs).is_err());
        assert!(m.open(&key, &s, &reply, &plan, &refs).is_ok());
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let m = Mlhe::new().unwrap();
        let plan = QueryPlan::new(&[1, 2], &[1, 1]);
        let (mut s, good) = sealed_query(&m, &plan);
        // A query key seals one query: a second one would reuse its encryptions of zero.
        assert!(m.seal_query(&mut s, &plan.w).is_err());
        let mut fresh = m
            .new_session(&crate::crypto::FIXED_PK_SEED, plan.w.len())
            .unwrap();
        assert!(m.seal_query(&mut fresh, &[1, 2]).is_err(), "wrong width");
        assert!(m
            .decode_query(&good, 2, &crate::crypto::FIXED_PK_SEED)
            .is_ok());
        assert!(
            m.decode_query(&good, 3, &crate::crypto::FIXED_PK_SEED)
                .is_err(),
            "wrong dimension"
        );
        for cut in [0, 7, 8, 100, good.len() / 2, good.len() - 1] {
            assert!(
                m.decode_query(&good[..cut], 2, &crate::crypto::FIXED_PK_SEED)
                    .is_err(),
                "truncated at {cut}"
            );
        }
        let mut flipped = good.clone();
        flipped[20] ^= 0xff;
        let _ = m.decode_query(&flipped, 2, &crate::crypto::FIXED_PK_SEED); // must not panic
                                                                            // A block with ragged or out-of-range columns.
        assert!(m
            .prepare(
                &MlheBlock {
                    cols: vec![vec![1, 2], vec![3]]
                },
                1
            )
            .is_err());
        assert!(m
            .prepare(
                &MlheBlock {
                    cols: vec![vec![1 << 41], vec![3]]
                },
                1
            )
            .is_err());
        assert!(m
            .prepare(
                &MlheBlock {
                    cols: vec![vec![1], vec![3]]
                },
                2
            )
            .is_err());
        // Replies.
        let key = m
            .derive_key(&ClassKey::from_bytes([0; 32]), &[0; 16])
            .unwrap();
        assert!(m.open(&key, &s, &[0u8; 10], &plan, &[]).is_err());
        assert!(m.open(&key, &s, b"BKR1", &plan, &[]).is_err());
    }

    /// Flooded replies (`±2^118` on top of the product noise) still open exactly: flooding keeps
    /// within the noise budget. That the flood is applied and large is the engine's
    /// `flooding_is_applied`.
    #[test]
    fn flooded_replies_open_exactly() {
        let m = Mlhe::new().unwrap();
        let xs = rows(100, 4, 9);
        let q = vec![5, -5, 7, 0];
        let got = roundtrip(&m, &xs, &q, 0);
        for (x, g) in xs.iter().zip(&got) {
            assert_eq!(*g, squared_distance(x, &q, &[1; 4]));
        }
    }
}
