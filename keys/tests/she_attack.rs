//! The break of paper-she, reproduced: from N, three ciphertexts of unknown messages and a few
//! ciphertexts of known messages (the stored E(−1), encryptions of 0), recover p and L and decrypt
//! a fresh ciphertext.
#![cfg(feature = "paper-she")]
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use blindkd_keys::crypto::she::attack::{factor_modulus, recover_key};
use blindkd_keys::crypto::she::{SheKey, SheSizes};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn attack_at(sizes: SheSizes, seed: u8) {
    let t = Instant::now();
    let key = SheKey::generate(&[seed; 32], sizes).unwrap();
    let keygen = t.elapsed();
    let mut rng = ChaCha20Rng::from_seed([seed ^ 0x5a; 32]);
    let bound = 1i128 << (sizes.k2 - 2);
    let msg = |rng: &mut ChaCha20Rng| rng.random_range(-bound + 1..bound);
    let secrets: Vec<i128> = (0..3).map(|_| msg(&mut rng)).collect();
    let cts: Vec<_> = secrets
        .iter()
        .map(|&m| key.encrypt(m, &mut rng).unwrap())
        .collect();
    let zeros: Vec<_> = (0..3).map(|_| key.encrypt(0, &mut rng).unwrap()).collect();
    let known = [
        (&zeros[0], 0i128),
        (&zeros[1], 0),
        (&zeros[2], 0),
        (key.minus_one(), -1),
    ];

    let t = Instant::now();
    let rec = recover_key(key.modulus(), sizes, [&cts[0], &cts[1], &cts[2]], &known).unwrap();
    let attack = t.elapsed();
    println!(
        "attack k0={} k2={}: keygen {keygen:?}, key recovery {attack:?}",
        sizes.k0, sizes.k2
    );

    assert_eq!(&(rec.p() * rec.q()), key.modulus());
    assert_eq!(rec.l().bits(), u64::from(sizes.k2));
    // The attacker now reads the ciphertexts it used ...
    for (c, m) in cts.iter().zip(&secrets) {
        assert_eq!(rec.decrypt(c), Some(*m));
    }
    // ... and any fresh one, including products.
    for _ in 0..5 {
        let m = msg(&mut rng);
        let fresh = key.encrypt(m, &mut rng).unwrap();
        assert_eq!(rec.decrypt(&fresh), Some(m));
        assert_eq!(rec.decrypt(&fresh), Some(key.decrypt(&fresh)));
    }
}

#[test]
fn attack_recovers_the_key_at_paper_parameters() {
    attack_at(SheSizes::PAPER, 11);
}

#[test]
fn attack_recovers_the_key_at_small_parameters() {
    attack_at(
        SheSizes {
            k0: 256,
            k1: 30,
            k2: 40,
        },
        12,
    );
    attack_at(
        SheSizes {
            k0: 512,
            k1: 30,
            k2: 60,
        },
        13,
    );
}

#[test]
fn factoring_fails_on_unrelated_numbers() {
    // Random numbers are not approximate multiples of p: the lattice has no planted short vector.
    let key = SheKey::generate(
        &[14; 32],
        SheSizes {
            k0: 256,
            k1: 30,
            k2: 40,
        },
    )
    .unwrap();
    let mut rng = ChaCha20Rng::from_seed([15; 32]);
    let n = key.modulus();
    let rand_below_n = |rng: &mut ChaCha20Rng| {
        let mut b = vec![0u8; 64];
        rng.fill(&mut b[..]);
        num_bigint::BigUint::from_bytes_be(&b) % n
    };
    let cs: Vec<_> = (0..3).map(|_| rand_below_n(&mut rng)).collect();
    assert!(factor_modulus(n, [&cs[0], &cs[1], &cs[2]], 40).is_err());
}
