//! paper-she: exactness against the plaintext oracle, known-answer tests of the scheme's
//! arithmetic (depth limit, subtraction through E(−1), negative plaintexts), malformed input.
#![cfg(feature = "paper-she")]
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use blindkd_engine::encoding::{augment, squared_distance, QueryPlan};
use blindkd_engine::Error;
use blindkd_keys::crypto::she::{
    PaperShe, PaperSheClient, SheBlock, SheCiphertext, SheKey, SheParams, SheSizes,
};
use blindkd_keys::crypto::{frame_query, ClassKey, ClientScheme, RowDomain, RowRef, Scheme};
use num_bigint::BigUint;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const INDEX_ID: [u8; 16] = [0x1d; 16];

/// Paper-size key, generated once: (owner scheme with key attached, key).
fn owner() -> &'static (PaperSheClient, SheKey) {
    static OWNER: OnceLock<(PaperSheClient, SheKey)> = OnceLock::new();
    OWNER.get_or_init(|| {
        PaperSheClient::setup(&ClassKey::from_bytes([7; 32]), &INDEX_ID).expect("setup")
    })
}

/// The server's instance: only the public parameters, through their wire form.
fn server() -> &'static PaperShe {
    static SERVER: OnceLock<PaperShe> = OnceLock::new();
    SERVER.get_or_init(|| {
        let bytes = postcard::to_allocvec(owner().0.params()).unwrap();
        let params: SheParams = postcard::from_bytes(&bytes).unwrap();
        PaperShe::from_params(params).unwrap()
    })
}

/// A doctor's instance: public parameters plus the key re-derived from the class key.
fn doctor() -> &'static (PaperSheClient, SheKey) {
    static DOCTOR: OnceLock<(PaperSheClient, SheKey)> = OnceLock::new();
    DOCTOR.get_or_init(|| {
        let doctor = PaperSheClient::from_params(owner().0.params().clone()).unwrap();
        let key = doctor
            .derive_key(&ClassKey::from_bytes([7; 32]), &INDEX_ID)
            .unwrap();
        (doctor, key)
    })
}

fn rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

fn leaf(id: u64) -> RowRef {
    RowRef {
        domain: RowDomain::Leaf,
        id,
        record: 0,
    }
}

/// Full round trip: the owner seals, the server evaluates, a doctor's instance (derived from the
/// class key, not the owner's) seals the query and opens.
fn distances(xs: &[Vec<i64>], q: &[i64], weights: &[u32]) -> Vec<u128> {
    let (owner_scheme, key) = owner();
    let rows: Vec<(RowRef, Vec<i64>)> = xs
        .iter()
        .enumerate()
        .map(|(i, x)| (leaf(i as u64), augment(x, weights)))
        .collect();
    let block = owner_scheme.seal_block(key, &rows).unwrap();
    let block: SheBlock = postcard::from_bytes(&postcard::to_allocvec(&block).unwrap()).unwrap();

    let (doctor, dkey) = doctor();
    #[allow(clippy::let_unit_value)] // paper-she has no session secrets; keep the generic flow
    let mut session = doctor
        .new_session(&blindkd_keys::crypto::FIXED_PK_SEED, q.len() + 1)
        .unwrap();
    let plan = QueryPlan::new(q, weights);
    let sealed = doctor.seal_query(&mut session, &plan.w).unwrap();

    let dim = q.len();
    let srv = server();
    let prepared = srv.prepare(&block, dim).unwrap();
    let query = srv
        .decode_query(
            &frame_query(&doctor.session_public(&session).unwrap(), &sealed),
            dim,
            &blindkd_keys::crypto::FIXED_PK_SEED,
        )
        .unwrap();
    let reply = srv.evaluate(&query, &prepared).unwrap();
    let refs: Vec<RowRef> = rows.iter().map(|(r, _)| *r).collect();
    doctor.open(dkey, &session, &reply, &plan, &refs).unwrap()
}

fn coord() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => -65535i64..=65535,
        1 => Just(65535i64),
        1 => Just(-65535i64),
        1 => Just(0i64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn opened_distance_is_exact(
        (xs, q, weights) in (1usize..=32).prop_flat_map(|d| (
            prop::collection::vec(prop::collection::vec(coord(), d), 1..4),
            prop::collection::vec(coord(), d),
            prop::collection::vec(1u32..=3, d),
        ))
    ) {
        let got = distances(&xs, &q, &weights);
        let want: Vec<u128> = xs.iter().map(|x| squared_distance(x, &q, &weights)).collect();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn extremes_at_full_dimension() {
    // Opposite corners: the largest squared distance the 16-bit, d = 32 encoding can produce.
    let d = 32;
    let x = vec![65535i64; d];
    let q = vec![-65535i64; d];
    let w = vec![1u32; d];
    let got = distances(&[x.clone(), q.clone()], &q, &w);
    assert_eq!(got, vec![squared_distance(&x, &q, &w), 0]);
    assert_eq!(got[0], 32 * 131070u128 * 131070);
}

#[test]
fn exact_bound_is_honest() {
    let (scheme, key) = owner();
    let bound = scheme.exact_bound();
    assert_eq!(bound, 1 << 78);
    let mut r = rng(1);
    for m in [bound as i128 - 1, 1 - bound as i128, 0, -1] {
        assert_eq!(key.decrypt(&key.encrypt(m, &mut r).unwrap()), m);
    }
    for m in [bound as i128, -(bound as i128)] {
        assert!(matches!(key.encrypt(m, &mut r), Err(Error::Overflow(_))));
    }
    // The bound of an inner product: a product near the bound still decrypts exactly.
    let a = key.encrypt((1 << 39) - 1, &mut r).unwrap();
    let b = key.encrypt(-(1 << 38) + 3, &mut r).unwrap();
    let ab = scheme.mul(&a, &b).unwrap();
    assert_eq!(key.decrypt(&ab), ((1i128 << 39) - 1) * (-(1i128 << 38) + 3));
}

#[test]
fn negative_plaintexts_decode() {
    let (scheme, key) = owner();
    let mut r = rng(2);
    for m in [-1i128, -2, -65535, -(1 << 40), i64::MIN as i128 / 4096] {
        let c = key.encrypt(m, &mut r).unwrap();
        assert_eq!(key.decrypt(&c), m);
        // And through a product with a negative factor.
        let c2 = scheme.mul(&c, &key.encrypt(-3, &mut r).unwrap()).unwrap();
        assert_eq!(key.decrypt(&c2), -3 * m);
    }
    // Homomorphic addition of mixed signs.
    let s = scheme
        .add(
            &key.encrypt(-700, &mut r).unwrap(),
            &key.encrypt(500, &mut r).unwrap(),
        )
        .unwrap();
    assert_eq!(key.decrypt(&s), -200);
    // ct × pt.
    let p = scheme
        .mul_plain(&key.encrypt(-9, &mut r).unwrap(), 11)
        .unwrap();
    assert_eq!(key.decrypt(&p), -99);
}

/// 3 · (−2) · 5 · 7 · (−1) · 2.
const PRODUCT6: i128 = 420;

#[test]
fn depth_limit_is_enforced_and_real() {
    let (scheme, key) = owner();
    assert_eq!(scheme.max_factors(), 6); // ⌊1023 / 160⌋
    let mut r = rng(3);
    let ms = [3i128, -2, 5, 7, -1, 2, 3];
    let cts: Vec<SheCiphertext> = ms
        .iter()
        .map(|&m| key.encrypt(m, &mut r).unwrap())
        .collect();
    let mut acc = cts[0].clone();
    for c in &cts[1..6] {
        acc = scheme.mul(&acc, c).unwrap();
    }
    assert_eq!(acc.factors(), 6);
    assert_eq!(key.decrypt(&acc), PRODUCT6);
    let err = scheme.mul(&acc, &cts[6]).unwrap_err();
    assert!(matches!(err, Error::LimitExceeded(_)), "{err}");
    assert!(err.to_string().contains("depth limit"), "{err}");
    // Without the check the 7-factor product really is garbage: its residue passes p.
    let raw = (acc.value() * cts[6].value()) % scheme.modulus();
    let mut bytes = vec![0u8; 256];
    let b = raw.to_bytes_be();
    bytes[256 - b.len()..].copy_from_slice(&b);
    let forged = scheme.ciphertext_from_bytes(&bytes).unwrap();
    assert_ne!(key.decrypt(&forged), PRODUCT6 * 3);
}

#[test]
fn subtraction_needs_minus_one() {
    let (scheme, key) = owner();
    let mut r = rng(4);
    let minus_one = key.minus_one();
    assert_eq!(key.decrypt(minus_one), -1);
    let n = scheme.modulus();
    let trials = 64;
    let mut raw_failures = 0;
    for i in 0..trials {
        let (m1, m2) = (1000 + i as i128 * 37, 2000 - i as i128 * 11);
        let c1 = key.encrypt(m1, &mut r).unwrap();
        let c2 = key.encrypt(m2, &mut r).unwrap();
        let diff = scheme.sub(&c1, &c2, minus_one).unwrap();
        assert_eq!(key.decrypt(&diff), m1 - m2);
        assert_eq!(key.decrypt(&scheme.neg(&c2, minus_one).unwrap()), -m2);
        // Raw c1 − c2 mod N: the residue e1 − e2 is negative about half the time.
        let raw = (c1.value() + n - c2.value()) % n;
        let raw = scheme.ciphertext_from_bytes(&fixed(&raw)).unwrap();
        if key.decrypt(&raw) != m1 - m2 {
            raw_failures += 1;
        }
    }
    assert!(
        (16..=48).contains(&raw_failures),
        "raw subtraction failed {raw_failures}/{trials} times, expected about half"
    );
}

fn fixed(v: &BigUint) -> Vec<u8> {
    let mut out = vec![0u8; 256];
    let b = v.to_bytes_be();
    out[256 - b.len()..].copy_from_slice(&b);
    out
}

#[test]
fn keygen_is_deterministic_kat() {
    // Small sizes keep this fast; the seed fixes N, so its hash is a known answer.
    let sizes = SheSizes {
        k0: 256,
        k1: 30,
        k2: 40,
    };
    let a = SheKey::generate(&[42; 32], sizes).unwrap();
    let b = SheKey::generate(&[42; 32], sizes).unwrap();
    assert_eq!(a.params(), b.params());
    assert_eq!(a.modulus().bits(), 512);
    let h = blake3::hash(&a.params().modulus).to_hex();
    assert_eq!(&h[..16], KAT_N_HASH_PREFIX, "N for seed [42; 32] changed");
    let c = SheKey::generate(&[43; 32], sizes).unwrap();
    assert_ne!(a.params(), c.params());
    assert!(format!("{a:?}").contains("redacted"));
}

const KAT_N_HASH_PREFIX: &str = "0714c8d19e65cda8";

#[test]
fn derive_key_checks_the_modulus() {
    let (owner_scheme, _) = owner();
    let doctor = PaperSheClient::from_params(owner_scheme.params().clone()).unwrap();
    // Without a key the instance cannot seal a query.
    let err = doctor.seal_query(&mut (), &[1, 2, 1]).unwrap_err();
    assert!(err.to_string().contains("derive_key"), "{err}");
    // A different class key yields a different N: refused.
    let sizes = SheSizes {
        k0: 256,
        k1: 30,
        k2: 40,
    };
    let (small, _) =
        PaperSheClient::setup_with_sizes(&ClassKey::from_bytes([1; 32]), &INDEX_ID, sizes).unwrap();
    let err = small
        .derive_key(&ClassKey::from_bytes([2; 32]), &INDEX_ID)
        .unwrap_err();
    assert!(matches!(err, Error::Crypto(_)), "{err}");
    small
        .derive_key(&ClassKey::from_bytes([1; 32]), &INDEX_ID)
        .unwrap();
}

#[test]
fn small_parameters_round_trip() {
    let sizes = SheSizes {
        k0: 256,
        k1: 30,
        k2: 40,
    };
    let (scheme, key) =
        PaperSheClient::setup_with_sizes(&ClassKey::from_bytes([3; 32]), &INDEX_ID, sizes).unwrap();
    assert_eq!(scheme.max_factors(), 3);
    assert_eq!(scheme.exact_bound(), 1 << 38);
    let w = [1u32, 2];
    let xs = [vec![-300i64, 400], vec![5, -6]];
    let q = [7i64, -8];
    let rows: Vec<_> = xs
        .iter()
        .enumerate()
        .map(|(i, x)| (leaf(i as u64), augment(x, &w)))
        .collect();
    let block = scheme.seal_block(&key, &rows).unwrap();
    let plan = QueryPlan::new(&q, &w);
    let sealed = scheme.seal_query(&mut (), &plan.w).unwrap();
    let query = scheme
        .decode_query(
            &frame_query(&[], &sealed),
            2,
            &blindkd_keys::crypto::FIXED_PK_SEED,
        )
        .unwrap();
    let reply = scheme
        .evaluate(&query, &scheme.prepare(&block, 2).unwrap())
        .unwrap();
    let got = scheme
        .open(&key, &(), &reply, &plan, &[leaf(0), leaf(1)])
        .unwrap();
    let want: Vec<u128> = xs.iter().map(|x| squared_distance(x, &q, &w)).collect();
    assert_eq!(got, want);
}

// ---- malformed input ----

fn sealed_fixture(dim: usize) -> (SheBlock, Vec<u8>, Vec<u8>, QueryPlan) {
    let (scheme, key) = owner();
    let w = vec![1u32; dim];
    let rows: Vec<_> = (0..2)
        .map(|i| (leaf(i), augment(&vec![i as i64 + 1; dim], &w)))
        .collect();
    let block = scheme.seal_block(key, &rows).unwrap();
    let plan = QueryPlan::new(&vec![3; dim], &w);
    let sealed = scheme.seal_query(&mut (), &plan.w).unwrap();
    let framed = frame_query(&[], &sealed);
    let q = server()
        .decode_query(&framed, dim, &blindkd_keys::crypto::FIXED_PK_SEED)
        .unwrap();
    let reply = server()
        .evaluate(&q, &server().prepare(&block, dim).unwrap())
        .unwrap();
    (block, framed, reply, plan)
}

fn is_malformed(e: &Error) -> bool {
    matches!(e, Error::Malformed { .. })
}

#[test]
fn malformed_blocks_are_rejected() {
    let srv = server();
    let (block, ..) = sealed_fixture(3);
    // Wrong dimension.
    assert!(is_malformed(&srv.prepare(&block, 2).err().unwrap()));
    assert!(is_malformed(&srv.prepare(&block, 4).err().unwrap()));
    // Truncated row.
    let mut b = block.clone();
    b.rows[1].pop();
    assert!(is_malformed(&srv.prepare(&b, 3).err().unwrap()));
    // A coordinate ≥ N.
    let mut b = block.clone();
    b.rows[0][..256].fill(0xff);
    assert!(is_malformed(&srv.prepare(&b, 3).err().unwrap()));
    // Too many rows (cheap: empty rows fail the capacity check before any parsing).
    let b = SheBlock {
        rows: vec![Vec::new(); srv.block_capacity() + 1],
    };
    assert!(is_malformed(&srv.prepare(&b, 3).err().unwrap()));
    // Zero and absurd dimensions.
    assert!(srv.prepare(&block, 0).is_err());
    assert!(srv.prepare(&block, usize::MAX).is_err());
}

#[test]
fn malformed_queries_are_rejected() {
    let srv = server();
    let (_, framed, ..) = sealed_fixture(3);
    // Every truncation, without panicking.
    for len in 0..framed.len() {
        let e = srv
            .decode_query(&framed[..len], 3, &blindkd_keys::crypto::FIXED_PK_SEED)
            .err()
            .unwrap();
        assert!(is_malformed(&e), "len {len}: {e}");
    }
    // Trailing garbage.
    let mut long = framed.clone();
    long.push(0);
    assert!(is_malformed(
        &srv.decode_query(&long, 3, &blindkd_keys::crypto::FIXED_PK_SEED)
            .err()
            .unwrap()
    ));
    // Wrong dimension: the count is checked before the length.
    let e = srv
        .decode_query(&framed, 4, &blindkd_keys::crypto::FIXED_PK_SEED)
        .err()
        .unwrap();
    assert!(
        is_malformed(&e) && e.to_string().contains("expected 5"),
        "{e}"
    );
    // Bad magic.
    let mut bad = framed.clone();
    bad[8] ^= 1;
    assert!(is_malformed(
        &srv.decode_query(&bad, 3, &blindkd_keys::crypto::FIXED_PK_SEED)
            .err()
            .unwrap()
    ));
    // A session public key, which paper-she does not have.
    let (_, sealed) = blindkd_keys::crypto::unframe_query(&framed).unwrap();
    let e = srv
        .decode_query(
            &frame_query(b"pk", sealed),
            3,
            &blindkd_keys::crypto::FIXED_PK_SEED,
        )
        .err()
        .unwrap();
    assert!(is_malformed(&e), "{e}");
    // A huge claimed count must not allocate.
    let mut huge = frame_query(&[], b"SHEq\x01");
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(is_malformed(
        &srv.decode_query(&huge, 3, &blindkd_keys::crypto::FIXED_PK_SEED)
            .err()
            .unwrap()
    ));
    // Random garbage.
    let mut r = rng(9);
    for len in [0usize, 7, 8, 100, 1037] {
        let mut g = vec![0u8; len];
        rand::RngCore::fill_bytes(&mut r, &mut g);
        assert!(srv
            .decode_query(&g, 3, &blindkd_keys::crypto::FIXED_PK_SEED)
            .is_err());
    }
}

#[test]
fn malformed_replies_are_rejected() {
    let (scheme, key) = owner();
    let (_, _, reply, plan) = sealed_fixture(3);
    let rows = [leaf(0), leaf(1)];
    let ok = scheme.open(key, &(), &reply, &plan, &rows).unwrap();
    assert_eq!(ok, vec![12, 3]);
    for len in [0, 4, 5, 9, reply.len() - 1] {
        let e = scheme
            .open(key, &(), &reply[..len], &plan, &rows)
            .unwrap_err();
        assert!(is_malformed(&e), "len {len}: {e}");
    }
    // Row count mismatch.
    let e = scheme
        .open(key, &(), &reply, &plan, &rows[..1])
        .unwrap_err();
    assert!(is_malformed(&e), "{e}");
    // A reply that decrypts below −q_norm reads as a negative distance: a clear error.
    let mut r = rng(5);
    let neg = key.encrypt(-1_000_000, &mut r).unwrap();
    let mut forged = b"SHEr\x01".to_vec();
    forged.extend_from_slice(&1u32.to_le_bytes());
    forged.extend_from_slice(&scheme.ciphertext_to_bytes(&neg));
    let e = scheme
        .open(key, &(), &forged, &plan, &rows[..1])
        .unwrap_err();
    assert!(matches!(e, Error::Crypto(_)), "{e}");
}

#[test]
fn bad_params_are_rejected() {
    let good = owner().0.params().clone();
    let mut even = good.clone();
    *even.modulus.last_mut().unwrap() &= 0xfe;
    assert!(PaperShe::from_params(even).is_err());
    let mut short = good.clone();
    short.modulus.pop();
    assert!(PaperShe::from_params(short).is_err());
    let mut lead = good.clone();
    lead.modulus[0] = 0;
    assert!(PaperShe::from_params(lead).is_err());
    for sizes in [
        SheSizes {
            k0: 64,
            k1: 30,
            k2: 40,
        },
        SheSizes {
            k0: 1024,
            k1: 79,
            k2: 80,
        },
        SheSizes {
            k0: 1024,
            k1: 30,
            k2: 200,
        },
        SheSizes {
            k0: 200,
            k1: 30,
            k2: 60,
        },
        SheSizes {
            k0: 1 << 20,
            k1: 30,
            k2: 80,
        },
    ] {
        assert!(sizes.validate().is_err(), "{sizes:?}");
        let mut p = good.clone();
        p.sizes = sizes;
        assert!(PaperShe::from_params(p).is_err());
    }
}
