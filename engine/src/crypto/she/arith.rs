//! Modular arithmetic behind one small trait, so a faster fixed-width backend can replace
//! `num-bigint` without touching the scheme.

use num_bigint::BigUint;
use num_traits::Zero;

/// Arithmetic modulo a fixed public modulus `N`.
///
/// Elements handed in are always reduced (`< N`); every result is reduced too.
pub trait ModArith: Send + Sync {
    /// The backend's representation of a residue.
    type Elem: Clone + Send + Sync;

    /// The modulus.
    fn modulus(&self) -> &BigUint;
    /// Converts a reduced integer (`x < N`) into the backend's form.
    fn import(&self, x: &BigUint) -> Self::Elem;
    /// Converts back to an integer in `[0, N)`.
    fn export(&self, x: &Self::Elem) -> BigUint;
    /// `a + b mod N`.
    fn add_mod(&self, a: &Self::Elem, b: &Self::Elem) -> Self::Elem;
    /// `a · b mod N`.
    fn mul_mod(&self, a: &Self::Elem, b: &Self::Elem) -> Self::Elem;
    /// `a · k mod N` for a one-word plaintext `k`: one single-word multiply and one reduction.
    fn mul_small(&self, a: &Self::Elem, k: u64) -> Self::Elem;
    /// `Σ aᵢ · bᵢ mod N` over equally long slices.
    fn dot_mod(&self, a: &[Self::Elem], b: &[Self::Elem]) -> Self::Elem;
}

/// The `num-bigint` backend. `dot_mod` accumulates the full-width products and reduces once,
/// which is where almost all of the server's time goes.
#[derive(Clone, Debug)]
pub struct BigArith {
    n: BigUint,
}

impl BigArith {
    /// Arithmetic modulo `n` (`n > 1`; the caller validates it).
    pub fn new(n: BigUint) -> Self {
        BigArith { n }
    }
}

impl ModArith for BigArith {
    type Elem = BigUint;

    fn modulus(&self) -> &BigUint {
        &self.n
    }

    fn import(&self, x: &BigUint) -> BigUint {
        x % &self.n
    }

    fn export(&self, x: &BigUint) -> BigUint {
        x.clone()
    }

    fn add_mod(&self, a: &BigUint, b: &BigUint) -> BigUint {
        let s = a + b;
        if s >= self.n {
            s - &self.n
        } else {
            s
        }
    }

    fn mul_mod(&self, a: &BigUint, b: &BigUint) -> BigUint {
        (a * b) % &self.n
    }

    fn mul_small(&self, a: &BigUint, k: u64) -> BigUint {
        (a * k) % &self.n
    }

    fn dot_mod(&self, a: &[BigUint], b: &[BigUint]) -> BigUint {
        debug_assert_eq!(a.len(), b.len());
        let mut acc = BigUint::zero();
        for (x, y) in a.iter().zip(b) {
            acc += x * y;
        }
        acc % &self.n
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_stepwise() {
        let n = BigUint::from(1_000_000_007u64) * BigUint::from(998_244_353u64);
        let ar = BigArith::new(n.clone());
        let a: Vec<BigUint> = (1..6u64)
            .map(|i| ar.import(&BigUint::from(i * 0x1234_5678_9abc)))
            .collect();
        let b: Vec<BigUint> = (1..6u64)
            .map(|i| ar.import(&BigUint::from(i * 0xfedc_ba98_7654)))
            .collect();
        let mut want = BigUint::zero();
        for (x, y) in a.iter().zip(&b) {
            want = ar.add_mod(&want, &ar.mul_mod(x, y));
        }
        assert_eq!(ar.dot_mod(&a, &b), want);
        assert_eq!(
            ar.mul_small(&a[1], 7),
            ar.mul_mod(&a[1], &BigUint::from(7u32))
        );
    }
}
