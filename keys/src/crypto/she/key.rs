//! The SHE secret key: generation from a seed, encryption, decryption.

use std::sync::Arc;

use num_bigint::BigUint;
use num_traits::ToPrimitive;
use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::prime::{random_exact_bits, random_prime};
use super::{SheCiphertext, SheParams, SheSizes};
use crate::{Error, Result};

/// Miller–Rabin rounds for key primes (a composite survives with probability ≤ 4^−32).
const MR_ROUNDS: u32 = 32;

/// The SHE secret key `(p, q, L)` with the public `N` and a stored `E(−1)`.
///
/// Not `Clone`, not `Serialize`; `Debug` is redacted. On drop the limbs of `p`, `q` and `L` are
/// overwritten (best effort: `num-bigint` temporaries made during arithmetic are not wiped, and
/// neither is the seeded ChaCha state used at generation).
pub struct SheKey {
    inner: Arc<SheSecret>,
}

struct SheSecret {
    sizes: SheSizes,
    n: BigUint,
    p: BigUint,
    q: BigUint,
    l: BigUint,
    minus_one: SheCiphertext,
}

impl Drop for SheSecret {
    fn drop(&mut self) {
        wipe(&mut self.p);
        wipe(&mut self.q);
        wipe(&mut self.l);
    }
}

/// Overwrites a `BigUint`'s limbs in place with zeros (`assign_from_slice` reuses the buffer).
fn wipe(x: &mut BigUint) {
    let words = x.iter_u32_digits().len();
    x.assign_from_slice(&vec![0u32; words]);
}

impl std::fmt::Debug for SheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SheKey({:?}, <redacted>)", self.inner.sizes)
    }
}

impl SheKey {
    /// Deterministic key generation from a 32-byte seed through ChaCha20: `p`, then `q ≠ p`, then
    /// `L`, then the randomness of the stored `E(−1)`.
    pub fn generate(seed: &[u8; 32], sizes: SheSizes) -> Result<SheKey> {
        sizes.validate()?;
        let mut rng = ChaCha20Rng::from_seed(*seed);
        let p = random_prime(&mut rng, sizes.k0, MR_ROUNDS);
        let q = loop {
            let q = random_prime(&mut rng, sizes.k0, MR_ROUNDS);
            if q != p {
                break q;
            }
        };
        let n = &p * &q;
        let l = random_exact_bits(&mut rng, sizes.k2);
        let mut secret = SheSecret {
            sizes,
            n,
            p,
            q,
            l,
            minus_one: SheCiphertext::from_parts(BigUint::default(), 1, 2 * sizes.k2),
        };
        secret.minus_one = secret.encrypt(-1, &mut rng)?;
        Ok(SheKey {
            inner: Arc::new(secret),
        })
    }

    /// Another handle on the same secret, for the scheme instance that seals queries.
    pub(super) fn share(&self) -> SheKey {
        SheKey {
            inner: Arc::clone(&self.inner),
        }
    }

    /// The public parameters of this key.
    pub fn params(&self) -> SheParams {
        SheParams {
            sizes: self.inner.sizes,
            modulus: self.inner.n.to_bytes_be(),
        }
    }

    /// The sizes.
    pub fn sizes(&self) -> SheSizes {
        self.inner.sizes
    }

    /// `N`.
    pub fn modulus(&self) -> &BigUint {
        &self.inner.n
    }

    /// The stored `E(−1)` (generated with the key), for negation and subtraction.
    pub fn minus_one(&self) -> &SheCiphertext {
        &self.inner.minus_one
    }

    /// `E(m) = (r·L + m)(1 + r'·p) mod N` for `|m| < 2^(k2−2)`.
    pub fn encrypt<R: RngCore + CryptoRng>(&self, m: i128, rng: &mut R) -> Result<SheCiphertext> {
        self.inner.encrypt(m, rng)
    }

    /// `Dec(c) = (c mod p) mod L`, the upper half of `[0, L)` read as negative.
    pub fn decrypt(&self, c: &SheCiphertext) -> i128 {
        self.decrypt_value(c.value())
    }

    /// [`Self::decrypt`] on a bare integer.
    pub(super) fn decrypt_value(&self, c: &BigUint) -> i128 {
        let s = &self.inner;
        let v = (c % &s.p) % &s.l;
        // L < 2^126 (validated), so both fit an i128.
        let v = v.to_i128().expect("v < L < 2^126");
        let l = s.l.to_i128().expect("L < 2^126");
        if 2 * v >= l {
            v - l
        } else {
            v
        }
    }
}

impl SheSecret {
    fn encrypt(&self, m: i128, rng: &mut impl RngCore) -> Result<SheCiphertext> {
        let k2 = self.sizes.k2;
        if m.unsigned_abs() >= 1u128 << (k2 - 2) {
            return Err(Error::Overflow(format!(
                "paper-she: plaintext of magnitude 2^{:.1} does not fit 2^{}",
                (m.unsigned_abs() as f64).log2(),
                k2 - 2
            )));
        }
        let mut r = random_exact_bits(rng, k2);
        let mut r2 = random_exact_bits(rng, self.sizes.k0);
        // r·L ≥ 2^(2·k2−2) > |m|, so the residue is positive; it stays below 2^(2·k2).
        let rl = &r * &self.l;
        let mag = BigUint::from(m.unsigned_abs());
        let mut e = if m >= 0 { rl + mag } else { rl - mag };
        let mut blind = &r2 * &self.p + 1u32;
        let value = (&e * &blind) % &self.n;
        for x in [&mut r, &mut r2, &mut e, &mut blind] {
            wipe(x);
        }
        Ok(SheCiphertext::from_parts(value, 1, 2 * k2))
    }
}
