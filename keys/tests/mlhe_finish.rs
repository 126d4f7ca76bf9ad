//! The mlhe finish step, checked on the library as the server runs it (not the `cfg(test)` build):
//! every output is freshly re-randomised and flooded, and the division attack learns nothing.
#![allow(clippy::unwrap_used)]

use blindkd_engine::encoding::{augment, squared_distance, QueryPlan};
use blindkd_keys::crypto::mlhe::{Mlhe, CHECK_ROWS, DEGREE, PLAINTEXT_MODULUS};
use blindkd_keys::crypto::{frame_query, ClassKey, ClientScheme, RowDomain, RowRef, Scheme};
use fhe::bfv::BfvParametersBuilder;
use fhe_math::rq::{Poly, Representation};
use fhe_traits::Serialize as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn block(
    m: &Mlhe,
    n: usize,
    d: usize,
) -> (
    Vec<Vec<i64>>,
    Vec<RowRef>,
    blindkd_keys::crypto::mlhe::MlheBlock,
    blindkd_keys::crypto::mlhe::MlheKey,
) {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let xs: Vec<Vec<i64>> = (0..n)
        .map(|_| (0..d).map(|_| rng.random_range(-65535..=65535)).collect())
        .collect();
    let key = m
        .derive_key(&ClassKey::from_bytes([4; 32]), &[4; 16])
        .unwrap();
    let rows: Vec<(RowRef, Vec<i64>)> = xs
        .iter()
        .enumerate()
        .map(|(j, x)| {
            (
                RowRef {
                    domain: RowDomain::Leaf,
                    id: j as u64,
                    record: 0,
                },
                augment(x, &vec![1; d]),
            )
        })
        .collect();
    let b = m.seal_block(&key, &rows).unwrap();
    (xs, rows.iter().map(|r| r.0).collect(), b, key)
}

/// Without re-randomisation and flooding the product is a deterministic function of query and
/// block: two evaluations would be byte-identical. Finished outputs differ almost everywhere and
/// still open to the same exact distances.
#[test]
fn every_evaluation_is_freshly_randomised() {
    let m = Mlhe::new().unwrap();
    let d = 4;
    let (xs, refs, b, key) = block(&m, 500, d);
    let prepared = m.prepare(&b, d).unwrap();
    let s = m.new_session().unwrap();
    let q = vec![100, -200, 300, -400];
    let plan = QueryPlan::new(&q, &[1; 4]);
    let query = m
        .decode_query(
            &frame_query(
                &m.session_public(&s, &blindkd_keys::crypto::FIXED_PK_SEED)
                    .unwrap(),
                &m.seal_query(&s, &plan.w).unwrap(),
            ),
            d,
            &blindkd_keys::crypto::FIXED_PK_SEED,
        )
        .unwrap();
    let r1 = m.evaluate(&query, &prepared).unwrap();
    let r2 = m.evaluate(&query, &prepared).unwrap();
    assert_eq!(r1.len(), r2.len());
    let same = r1.iter().zip(&r2).filter(|(a, b)| a == b).count();
    assert!(
        same < r1.len() / 50,
        "{same} of {} reply bytes repeat: the finish step is not randomising",
        r1.len()
    );
    let d1 = m.open(&key, &s, &r1, &plan, &refs).unwrap();
    let d2 = m.open(&key, &s, &r2, &plan, &refs).unwrap();
    assert_eq!(d1, d2);
    for (x, got) in xs.iter().zip(&d1) {
        assert_eq!(*got, squared_distance(x, &q, &[1; 4]));
    }
}

/// The division attack through the public API: `ct₀ = (0, q₁q₂)` and zero ciphertexts elsewhere
/// make an unfinished `c1'` switch down to exactly the masked column `Y₀`. With the finish step the
/// client recovers (almost) none of it.
#[test]
fn division_attack_recovers_nothing() {
    let m = Mlhe::new().unwrap();
    let d = 2;
    let (_, _, b, _) = block(&m, DEGREE - CHECK_ROWS, d);
    let prepared = m.prepare(&b, d).unwrap();
    let par = BfvParametersBuilder::new()
        .set_degree(DEGREE)
        .set_plaintext_modulus(PLAINTEXT_MODULUS)
        .set_moduli_sizes(&[60, 60, 60])
        .build_arc()
        .unwrap();
    let ctx = par.context_at_level(0).unwrap().clone();
    let moduli = par.moduli().to_vec();
    let parts = m.division_attack_query(d).unwrap();
    let s = m.new_session().unwrap();
    // An honest session key, and `b = 0` (which, when the client also chose `a`, made pk = (0, 0)
    // and switched re-randomisation off): `a` is the server's now, so neither helps.
    for pk in [
        m.session_public(&s, &blindkd_keys::crypto::FIXED_PK_SEED)
            .unwrap(),
        Poly::zero(&ctx, Representation::Ntt).to_bytes(),
    ] {
        let bytes = frame_query(&pk, &parts);
        let reply = m
            .evaluate(
                &m.decode_query(&bytes, d, &blindkd_keys::crypto::FIXED_PK_SEED)
                    .unwrap(),
                &prepared,
            )
            .unwrap();
        let pb = DEGREE * 60 / 8;
        let q0 = &par
            .context_at_level(par.max_level())
            .unwrap()
            .moduli_operators()[0];
        let c1_out = q0.deserialize_vec(&reply[4 + pb..4 + 2 * pb]);
        let t = PLAINTEXT_MODULUS as i64;
        let q0v = moduli[0] as i64;
        let hits = c1_out
            .iter()
            .zip(&b.cols[0])
            .filter(|&(&c, &y)| {
                let v = c as i64;
                let centred = if v > q0v / 2 { v - q0v } else { v };
                let y = if y > (t as u64) / 2 {
                    y as i64 - t
                } else {
                    y as i64
                };
                centred == y
            })
            .count();
        assert!(
            hits < 4,
            "the client read {hits}/{DEGREE} masked values: re-randomisation is missing"
        );
    }
}
