//! Issue 17, B2: class keys are per (class, index). A bundle for one index carries keys that open
//! no other index built with the same owner key: not a second index, not a rebuild of the first.
#![allow(clippy::unwrap_used)]

use blindkd_engine::encoding::Schema;
use blindkd_engine::index::SchemeParams;
use blindkd_keys::crypto::plain::Plain;
use blindkd_keys::owner::{build_index, BuildOptions, OwnerKey, OwnerRecord};
use blindkd_keys::protocol::{
    new_query_client, open_index_bytes, run_in_process, Access, BatchPolicy, Limits, QueryKind,
};

/// Two unit-weight columns `c0`, `c1`.
fn schema() -> Schema {
    Schema::uniform(&["c0", "c1"], 1.0, 16).unwrap()
}

fn records() -> Vec<OwnerRecord> {
    (0..40)
        .map(|i| OwnerRecord {
            id: format!("rec-{i}"),
            class: "a".into(),
            x: vec![i64::from(i) * 7 - 100, 50 - i64::from(i)],
            payload: Default::default(),
        })
        .collect()
}

#[test]
fn a_bundle_for_one_index_opens_no_other() {
    let mut owner = OwnerKey::generate("st-marys").unwrap();
    let mut built = Vec::new();
    for name in ["cohort", "cohort2"] {
        let out = build_index(
            &Plain::new(),
            SchemeParams::Plain,
            &owner,
            name,
            &schema(),
            &records(),
            &BuildOptions {
                leaf_size: 8,
                progress: None,
                index_id: None,
            },
        )
        .unwrap();
        owner.indexes.push(out.record.clone());
        built.push(out);
    }
    let one = owner.bundle(&["a".into()], Some("cohort")).unwrap();
    let two = owner.bundle(&["a".into()], Some("cohort2")).unwrap();
    assert_ne!(
        one.entries[0].keys[0].1, two.entries[0].keys[0].1,
        "bundles for two indexes carry the same class key"
    );
    // A doctor holding only cohort's bundle points it at cohort2 (same owner, same class).
    let mut stolen = owner.bundle(&["a".into()], Some("cohort")).unwrap();
    stolen.entries[0].index_id = built[1].record.index_id;
    let index = open_index_bytes(
        &built[1].to_file_bytes().unwrap(),
        std::path::Path::new("cohort2.bkd"),
        &Default::default(),
    )
    .unwrap();
    let access = Access {
        classes: vec!["a".into()],
        knn: true,
        range: true,
        max_k: 100,
        max_radius: f64::INFINITY,
        max_blocks: u32::MAX,
        max_results: u32::MAX,
        pk_seed: blindkd_keys::crypto::FIXED_PK_SEED,
    };
    let mut client = new_query_client(
        &stolen.entries[0],
        QueryKind::Knn { k: 3 },
        &[0, 0],
        vec!["a".into()],
        BatchPolicy::default(),
    )
    .unwrap();
    let r = run_in_process(&index, &access, &Limits::default(), client.as_mut());
    assert!(
        r.is_err(),
        "cohort's bundle answered a query on cohort2: {:?}",
        r.unwrap()
    );
}
