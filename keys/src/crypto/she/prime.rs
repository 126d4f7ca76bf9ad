//! Random integers and primes from a caller's RNG (a seeded ChaCha20 for deterministic keys).
//!
//! `num-bigint`'s own `RandBigInt` speaks rand 0.8 traits, so integers are built from raw bytes here.

use num_bigint::BigUint;
use num_traits::{One, Zero};
use rand::RngCore;

/// Odd primes below 2000, for trial division before Miller–Rabin.
fn small_primes() -> &'static [u32] {
    static PRIMES: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    PRIMES.get_or_init(|| {
        (3u32..2000)
            .step_by(2)
            .filter(|&n| {
                (3..)
                    .step_by(2)
                    .take_while(|d| d * d <= n)
                    .all(|d| n % d != 0)
            })
            .collect()
    })
}

/// A uniform integer in `[0, 2^bits)`.
pub(crate) fn random_bits(rng: &mut impl RngCore, bits: u32) -> BigUint {
    if bits == 0 {
        return BigUint::zero();
    }
    let nbytes = bits.div_ceil(8) as usize;
    let mut buf = zeroize::Zeroizing::new(vec![0u8; nbytes]);
    rng.fill_bytes(&mut buf);
    let excess = nbytes as u32 * 8 - bits;
    buf[0] &= 0xffu8 >> excess;
    BigUint::from_bytes_be(&buf)
}

/// A uniform integer of exactly `bits` bits (top bit set). `bits ≥ 1`.
pub(crate) fn random_exact_bits(rng: &mut impl RngCore, bits: u32) -> BigUint {
    let mut x = random_bits(rng, bits);
    x.set_bit(u64::from(bits) - 1, true);
    x
}

/// A uniform integer in `[lo, hi)`, by rejection. `lo < hi`.
fn random_range(rng: &mut impl RngCore, lo: &BigUint, hi: &BigUint) -> BigUint {
    let span = hi - lo;
    let bits = u32::try_from(span.bits()).unwrap_or(u32::MAX);
    loop {
        let x = random_bits(rng, bits);
        if x < span {
            return x + lo;
        }
    }
}

/// Miller–Rabin with `rounds` random bases drawn from `rng`, after trial division.
/// A composite passes with probability at most `4^−rounds`.
pub fn is_probable_prime(n: &BigUint, rounds: u32, rng: &mut impl RngCore) -> bool {
    let two = BigUint::from(2u32);
    if n < &two {
        return false;
    }
    for &sp in small_primes().iter().chain(std::iter::once(&2)) {
        let sp_big = BigUint::from(sp);
        if n == &sp_big {
            return true;
        }
        if (n % sp).is_zero() {
            return false;
        }
    }
    let n_minus_1 = n - 1u32;
    let s = n_minus_1.trailing_zeros().unwrap_or(0);
    let d = &n_minus_1 >> s;
    'witness: for _ in 0..rounds {
        let a = random_range(rng, &two, &n_minus_1);
        let mut x = a.modpow(&d, n);
        if x.is_one() || x == n_minus_1 {
            continue;
        }
        for _ in 1..s {
            x = (&x * &x) % n;
            if x == n_minus_1 {
                continue 'witness;
            }
            if x.is_one() {
                return false;
            }
        }
        return false;
    }
    true
}

/// A random prime of exactly `bits` bits with its top two bits set, so a product of two has
/// exactly `2·bits` bits. `bits ≥ 16`.
pub(crate) fn random_prime(rng: &mut impl RngCore, bits: u32, rounds: u32) -> BigUint {
    loop {
        let mut c = random_bits(rng, bits);
        c.set_bit(u64::from(bits) - 1, true);
        c.set_bit(u64::from(bits) - 2, true);
        c.set_bit(0, true);
        // One round first rejects almost every composite before paying for the full count.
        if is_probable_prime(&c, 1, rng) && is_probable_prime(&c, rounds, rng) {
            return c;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn miller_rabin_known_values() {
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let primes = [
            2u64,
            3,
            5,
            1999,
            2003,
            1_000_000_007,
            998_244_353,
            (1 << 61) - 1,
        ];
        for p in primes {
            assert!(is_probable_prime(&BigUint::from(p), 20, &mut rng), "{p}");
        }
        // Carmichael numbers, a strong pseudoprime to base 2, squares, products.
        let composites = [
            1u64,
            0,
            4,
            561,
            1105,
            41041,
            2047,
            3_215_031_751,
            1999 * 1999,
            1_000_000_007 * 3,
        ];
        for c in composites {
            assert!(!is_probable_prime(&BigUint::from(c), 20, &mut rng), "{c}");
        }
        // M127 is prime; M127 · M61 is not.
        let m127 = (BigUint::one() << 127u32) - 1u32;
        assert!(is_probable_prime(&m127, 20, &mut rng));
        let m61 = BigUint::from((1u64 << 61) - 1);
        assert!(!is_probable_prime(&(&m127 * &m61), 20, &mut rng));
    }

    #[test]
    fn random_prime_has_exact_size() {
        let mut rng = ChaCha20Rng::from_seed([2; 32]);
        let p = random_prime(&mut rng, 128, 20);
        assert_eq!(p.bits(), 128);
        assert!(p.bit(126));
        let q = random_prime(&mut rng, 128, 20);
        assert_eq!((&p * &q).bits(), 256);
    }

    #[test]
    fn random_bits_bounds() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        for bits in [1u32, 7, 8, 9, 80, 81] {
            for _ in 0..50 {
                assert!(random_bits(&mut rng, bits).bits() <= u64::from(bits));
                assert_eq!(random_exact_bits(&mut rng, bits).bits(), u64::from(bits));
            }
        }
    }
}
