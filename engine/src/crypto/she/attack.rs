//! The break of paper-she (DESIGN §3.2): key recovery from public data.
//!
//! Every ciphertext is `c = e + t·p` with a small residue `e = r·L + m < 2^(2·k2)`, and `N = p·q`
//! is an exact multiple of `p`: an approximate-common-divisor instance.
//!
//! * **p.** With `ρ = 2·k2 + 2`, the lattice spanned by the rows `(2^ρ, c1, c2, c3)`,
//!   `(0, N, 0, 0)`, `(0, 0, N, 0)`, `(0, 0, 0, N)` contains `q·(2^ρ, c1, c2, c3) − (…)·N =
//!   (q·2^ρ, q·e1, q·e2, q·e3)`, of norm about `2^(k0 + ρ)`, far below the `det^(1/4) ≈
//!   2^(ρ/4 + 3·k0/2)` of a typical vector whenever `ρ < k0/2`. LLL finds it; `gcd(v0/2^ρ, N)` splits
//!   `N`, and `p` is the factor modulo which the ciphertexts have small residues.
//! * **L.** For encryptions of known messages (the stored `E(−1)`, or any `E(0)`),
//!   `(c mod p) − m = r·L`, so the gcd of a few of them is `L` (once it has exactly k2 bits).
//!
//! The LLL here is exact integral LLL (Cohen, *A Course in Computational Algebraic Number Theory*,
//! Alg. 2.6.7): integers only, no floating point, so it is slow but sound.

use num_bigint::{BigInt, BigUint};
use num_integer::Integer;
use num_traits::{One, Signed, ToPrimitive, Zero};

use super::{SheCiphertext, SheSizes};
use crate::{Error, Result};

/// A key recovered by the attack. `Debug` is redacted.
pub struct RecoveredKey {
    p: BigUint,
    q: BigUint,
    l: BigUint,
}

impl std::fmt::Debug for RecoveredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveredKey(<redacted>)")
    }
}

impl RecoveredKey {
    /// The recovered prime `p`.
    pub fn p(&self) -> &BigUint {
        &self.p
    }
    /// The cofactor `q = N / p`.
    pub fn q(&self) -> &BigUint {
        &self.q
    }
    /// The recovered `L`.
    pub fn l(&self) -> &BigUint {
        &self.l
    }
    /// Decrypts like the legitimate key: `(c mod p) mod L`, centred. `None` if `L` exceeds 126 bits.
    pub fn decrypt(&self, c: &SheCiphertext) -> Option<i128> {
        let v = ((c.value() % &self.p) % &self.l).to_i128()?;
        let l = self.l.to_i128()?;
        Some(if 2 * v >= l { v - l } else { v })
    }
}

/// Recovers the whole key from `N`, three ciphertexts of anything, and a few ciphertexts of known
/// messages (the stored `E(−1)`, encryptions of 0).
pub fn recover_key(
    n: &BigUint,
    sizes: SheSizes,
    any: [&SheCiphertext; 3],
    known: &[(&SheCiphertext, i128)],
) -> Result<RecoveredKey> {
    let cs = [any[0].value(), any[1].value(), any[2].value()];
    let (p, q) = factor_modulus(n, cs, sizes.k2)?;
    let known: Vec<(&BigUint, i128)> = known.iter().map(|(c, m)| (c.value(), *m)).collect();
    let l = recover_l(&p, &known, sizes.k2)?;
    Ok(RecoveredKey { p, q, l })
}

/// Factors `N` from three ciphertexts with residues below `2^(2·k2)` and returns `(p, q)`, `p`
/// being the secret prime (small residues).
pub fn factor_modulus(n: &BigUint, cs: [&BigUint; 3], k2: u32) -> Result<(BigUint, BigUint)> {
    let rho = 2 * k2 + 2;
    let scale = BigInt::one() << rho;
    let ni = BigInt::from(n.clone());
    let z = BigInt::zero;
    let mut basis = vec![
        vec![
            scale.clone(),
            BigInt::from(cs[0].clone()),
            BigInt::from(cs[1].clone()),
            BigInt::from(cs[2].clone()),
        ],
        vec![z(), ni.clone(), z(), z()],
        vec![z(), z(), ni.clone(), z()],
        vec![z(), z(), z(), ni],
    ];
    lll_reduce(&mut basis, 99, 100)?;
    for v in &basis {
        let (quot, rem) = v[0].div_rem(&scale);
        if !rem.is_zero() || quot.is_zero() {
            continue;
        }
        let g = quot.magnitude().gcd(n);
        if g.is_one() || &g == n {
            continue;
        }
        let other = n / &g;
        // p is the factor modulo which the ciphertexts have residues of about 2·k2 bits.
        let small = |f: &BigUint| cs.iter().all(|c| (*c % f).bits() <= u64::from(2 * k2));
        if small(&g) {
            return Ok((g, other));
        }
        if small(&other) {
            return Ok((other, g));
        }
    }
    Err(Error::Crypto(
        "attack: the reduced basis did not split N (parameters outside ρ < k0/2?)".into(),
    ))
}

/// `L` from ciphertexts of known messages: `gcd((cᵢ mod p) − mᵢ)`, accepted once it has exactly
/// `k2` bits (a larger gcd carries a common factor of the randomisers; pass more ciphertexts).
pub fn recover_l(p: &BigUint, known: &[(&BigUint, i128)], k2: u32) -> Result<BigUint> {
    let mut g = BigUint::zero();
    for (c, m) in known {
        let e = BigInt::from(*c % p) - BigInt::from(*m);
        g = g.gcd(e.magnitude());
    }
    if g.bits() != u64::from(k2) {
        return Err(Error::Crypto(format!(
            "attack: gcd of the known residues has {} bits, L has {k2}; need more known ciphertexts",
            g.bits()
        )));
    }
    Ok(g)
}

/// Exact integral LLL (Cohen Alg. 2.6.7) on the rows of `b`, in place, with
/// `δ = delta_num / delta_den ∈ (1/4, 1]`. The rows must be linearly independent.
// Index loops mirror Cohen's 1-based pseudocode, which is the reference for checking this code.
#[allow(clippy::needless_range_loop)]
pub fn lll_reduce(b: &mut [Vec<BigInt>], delta_num: u32, delta_den: u32) -> Result<()> {
    let n = b.len();
    if n == 0 {
        return Ok(());
    }
    let dim = b[0].len();
    if b.iter().any(|r| r.len() != dim) {
        return Err(Error::InvalidInput("lll: rows of different lengths".into()));
    }
    let dot = |x: &[BigInt], y: &[BigInt]| -> BigInt { x.iter().zip(y).map(|(a, c)| a * c).sum() };
    let (dn, dd) = (BigInt::from(delta_num), BigInt::from(delta_den));
    // 1-based as in Cohen: d[0] = 1, d[i] = Gram determinant of the first i rows;
    // lam[k][j] = d[j]·μ_{k,j} for j < k.
    let mut d: Vec<BigInt> = vec![BigInt::zero(); n + 1];
    let mut lam: Vec<Vec<BigInt>> = vec![vec![BigInt::zero(); n + 1]; n + 1];
    d[0] = BigInt::one();
    d[1] = dot(&b[0], &b[0]);
    if d[1].is_zero() {
        return Err(Error::InvalidInput("lll: zero row".into()));
    }
    let mut k = 2usize;
    let mut k_max = 1usize;

    // RED(k, l): size-reduce row k against row l (1-based).
    fn red(b: &mut [Vec<BigInt>], d: &[BigInt], lam: &mut [Vec<BigInt>], k: usize, l: usize) {
        let two_lam: BigInt = &lam[k][l] * 2u32;
        if two_lam.abs() <= d[l] {
            return;
        }
        // q = round(λ / d_l) = ⌊(2λ + d_l) / (2·d_l)⌋.
        let q = (two_lam + &d[l]).div_floor(&(&d[l] * 2u32));
        let (head, tail) = b.split_at_mut(k - 1);
        for (x, y) in tail[0].iter_mut().zip(&head[l - 1]) {
            *x -= &q * y;
        }
        let dl_q = &q * &d[l];
        lam[k][l] -= dl_q;
        for i in 1..l {
            let t = &q * &lam[l][i];
            lam[k][i] -= t;
        }
    }

    while k <= n {
        if k > k_max {
            k_max = k;
            for j in 1..=k {
                let mut u = dot(&b[k - 1], &b[j - 1]);
                for i in 1..j {
                    u = (&d[i] * &u - &lam[k][i] * &lam[j][i]) / &d[i - 1];
                }
                if j < k {
                    lam[k][j] = u;
                } else {
                    if u.is_zero() {
                        return Err(Error::InvalidInput(
                            "lll: rows are linearly dependent".into(),
                        ));
                    }
                    d[k] = u;
                }
            }
        }
        loop {
            red(b, &d, &mut lam, k, k - 1);
            // Lovász: swap when d_k·d_{k−2} < δ·d_{k−1}² − λ², i.e. den·(d_k·d_{k−2} + λ²) < num·d_{k−1}².
            let lhs = &dd * (&d[k] * &d[k - 2] + &lam[k][k - 1] * &lam[k][k - 1]);
            let rhs = &dn * &d[k - 1] * &d[k - 1];
            if lhs < rhs {
                swap(b, &mut d, &mut lam, k, k_max);
                k = (k - 1).max(2);
                continue;
            }
            for l in (1..k - 1).rev() {
                red(b, &d, &mut lam, k, l);
            }
            k += 1;
            break;
        }
    }
    Ok(())
}

/// SWAP(k) of Cohen Alg. 2.6.7.
#[allow(clippy::needless_range_loop)]
fn swap(b: &mut [Vec<BigInt>], d: &mut [BigInt], lam: &mut [Vec<BigInt>], k: usize, k_max: usize) {
    b.swap(k - 1, k - 2);
    for j in 1..k - 1 {
        let t = std::mem::take(&mut lam[k][j]);
        lam[k][j] = std::mem::replace(&mut lam[k - 1][j], t);
    }
    let l = lam[k][k - 1].clone();
    let bb = (&d[k - 2] * &d[k] + &l * &l) / &d[k - 1];
    for i in k + 1..=k_max {
        let t = lam[i][k].clone();
        lam[i][k] = (&d[k] * &lam[i][k - 1] - &l * &t) / &d[k - 1];
        lam[i][k - 1] = (&bb * &t + &l * &lam[i][k]) / &d[k];
    }
    d[k - 1] = bb;
}

/// Squared Euclidean norm, for tests and diagnostics.
pub fn norm2(v: &[BigInt]) -> BigInt {
    v.iter().map(|x| x * x).sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bi(v: &[i64]) -> Vec<BigInt> {
        v.iter().map(|&x| BigInt::from(x)).collect()
    }

    #[test]
    fn lll_textbook_example() {
        // Cohen's / Wikipedia's example: (1,1,1), (−1,0,2), (3,5,6) reduces to
        // (0,1,0), (1,0,1), (−1,0,2) with δ = 3/4.
        let mut b = vec![bi(&[1, 1, 1]), bi(&[-1, 0, 2]), bi(&[3, 5, 6])];
        lll_reduce(&mut b, 3, 4).unwrap();
        assert_eq!(b, vec![bi(&[0, 1, 0]), bi(&[1, 0, 1]), bi(&[-1, 0, 2])]);
    }

    #[test]
    fn lll_finds_short_vector_and_keeps_lattice() {
        // A knapsack-like lattice with a planted short vector.
        let big = 1_000_003i64;
        let mut b = vec![
            bi(&[1, 0, 0, 3 * big]),
            bi(&[0, 1, 0, 5 * big]),
            bi(&[0, 0, 1, 7 * big]),
            bi(&[0, 0, 0, 11 * big]),
        ];
        let det_before = 11 * big;
        lll_reduce(&mut b, 99, 100).unwrap();
        // λ1² = 5 (e.g. (2,1,0,0)); LLL with δ = 0.99 guarantees ‖b1‖² ≤ (δ − 1/4)^−3 · λ1² < 12.4.
        assert!(norm2(&b[0]) <= BigInt::from(12), "{:?}", b[0]);
        // Unimodular: the determinant (of this square lattice) is unchanged up to sign.
        let det = det4(&b);
        assert_eq!(det.abs(), BigInt::from(det_before));
    }

    fn det4(m: &[Vec<BigInt>]) -> BigInt {
        // Laplace expansion; fine for 4×4 in a test.
        fn det(m: &[Vec<BigInt>]) -> BigInt {
            if m.len() == 1 {
                return m[0][0].clone();
            }
            let mut s = BigInt::zero();
            for c in 0..m.len() {
                let minor: Vec<Vec<BigInt>> = m[1..]
                    .iter()
                    .map(|r| {
                        r.iter()
                            .enumerate()
                            .filter(|(j, _)| *j != c)
                            .map(|(_, x)| x.clone())
                            .collect()
                    })
                    .collect();
                let t = &m[0][c] * det(&minor);
                if c % 2 == 0 {
                    s += t;
                } else {
                    s -= t;
                }
            }
            s
        }
        det(m)
    }

    #[test]
    fn lll_rejects_dependent_rows() {
        let mut b = vec![bi(&[1, 2]), bi(&[2, 4])];
        assert!(lll_reduce(&mut b, 3, 4).is_err());
    }
}
