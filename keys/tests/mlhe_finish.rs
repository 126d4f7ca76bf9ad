//! The mlhe finish step, checked on the library as the server runs it (not the `cfg(test)` build):
//! every output is freshly re-randomised and flooded, and a reply's `c1` is fresh whatever the
//! session key.
#![allow(clippy::unwrap_used)]

use blindkd_engine::encoding::{augment, squared_distance, QueryPlan};
use blindkd_keys::crypto::mlhe::{Mlhe, CHECK_ROWS, DEGREE};
use blindkd_keys::crypto::{
    frame_query, seal_framed, ClassKey, ClientScheme, RowDomain, RowRef, Scheme,
};
use fhe_math::rq::{Poly, Representation};
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
    let q = vec![100, -200, 300, -400];
    let plan = QueryPlan::new(&q, &[1; 4]);
    let (s, framed) = seal_framed(&m, &blindkd_keys::crypto::FIXED_PK_SEED, &plan.w).unwrap();
    let query = m
        .decode_query(&framed, d, &blindkd_keys::crypto::FIXED_PK_SEED)
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

/// The division attack of DESIGN §3.1 needs a client-chosen `c1`; since issue 12 the query's
/// `c1`s are public constants and the wire carries none. What re-randomisation still guarantees,
/// checked here on the build the server runs: the reply's `c1` is fresh in every reply, whatever
/// session key the client sends (an honest `b`, or `b = 0`). The engine's
/// `reply_c1_is_fresh_per_reply` shows the same check failing without re-randomisation.
#[test]
fn reply_c1_is_fresh_whatever_the_session_key() {
    let m = Mlhe::new().unwrap();
    let d = 2;
    let (_, _, b, _) = block(&m, DEGREE - CHECK_ROWS, d);
    let prepared = m.prepare(&b, d).unwrap();
    let ctx = m.top_ctx().unwrap().clone();
    let plan = QueryPlan::new(&[1, 2], &[1, 1]);
    let (s, _) = seal_framed(&m, &blindkd_keys::crypto::FIXED_PK_SEED, &plan.w).unwrap();
    for pk in [
        m.session_public(&s).unwrap(),
        m.pack_ntt(&Poly::zero(&ctx, Representation::Ntt)).unwrap(),
    ] {
        let bytes = frame_query(&pk, &m.planted_query(d).unwrap());
        let q = m
            .decode_query(&bytes, d, &blindkd_keys::crypto::FIXED_PK_SEED)
            .unwrap();
        let pb = m.q0_poly_bytes();
        let c1 = |r: &[u8]| r[4 + pb..4 + 2 * pb].to_vec();
        let r1 = c1(&m.evaluate(&q, &prepared).unwrap());
        let r2 = c1(&m.evaluate(&q, &prepared).unwrap());
        let same = r1.iter().zip(&r2).filter(|(a, b)| a == b).count();
        assert!(
            same < r1.len() / 50,
            "{same}/{} bytes of c1 repeat: re-randomisation is missing",
            r1.len()
        );
    }
}
