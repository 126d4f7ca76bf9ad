//! Measures rounds and leaf blocks per kNN query for several first-batch sizes (the doubling batch
//! policy of `protocol::BatchPolicy`). Rounds and blocks depend only on the tree and the distances,
//! not on the scheme, so `plain` measures them exactly and fast; mlhe's cost is then
//! blocks × (per-block cost) + rounds × (round-trip cost). Ignored by default (it builds 10⁶ records):
//! `cargo test --release -p blindkd-keys --test batch_policy -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use blindkd_engine::encoding::Schema;
use blindkd_engine::index::SchemeParams;
use blindkd_keys::crypto::plain::Plain;
use blindkd_keys::owner::{build_index, BuildOptions, OwnerKey, OwnerRecord};
use blindkd_keys::protocol::{
    new_query_client, open_index_bytes, run_in_process, Access, BatchPolicy, Limits, QueryKind,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

#[test]
#[ignore]
fn batch_policy_table() {
    let d = 10;
    println!("| n | leaf | first batch | mean rounds | mean leaf blocks | max leaf blocks |");
    println!("|---|---|---|---|---|---|");
    for &n in &[10_000usize, 100_000, 1_000_000] {
        let mut rng = ChaCha20Rng::seed_from_u64(n as u64);
        let centres: Vec<Vec<i64>> = (0..32)
            .map(|_| (0..d).map(|_| rng.random_range(-20000..20000)).collect())
            .collect();
        let records: Vec<OwnerRecord> = (0..n)
            .map(|i| {
                let c = &centres[rng.random_range(0..32)];
                OwnerRecord {
                    id: i.to_string(),
                    class: "c".into(),
                    x: c.iter()
                        .map(|&v| v + rng.random_range(-2000..=2000))
                        .collect(),
                    payload: Default::default(),
                }
            })
            .collect();
        let names: Vec<String> = (0..d).map(|i| format!("c{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let schema = Schema::uniform(&names, 1.0, 16).unwrap();
        for &leaf in &[8192usize, 2048] {
            let mut owner = OwnerKey::generate("t").unwrap();
            let out = build_index(
                &Plain::new(),
                SchemeParams::Plain,
                &owner,
                "t",
                &schema,
                &records,
                &BuildOptions {
                    leaf_size: leaf,
                    progress: None,
                    index_id: None,
                },
            )
            .unwrap();
            let index = open_index_bytes(
                &out.to_file_bytes().unwrap(),
                Path::new("t"),
                &blindkd_engine::index::LoadLimits::default(),
            )
            .unwrap();
            owner.indexes.push(out.record.clone());
            let bundle = owner.bundle(&["c".into()], None).unwrap();
            let access = Access {
                classes: vec!["c".into()],
                knn: true,
                range: true,
                max_k: 1000,
                max_radius: f64::INFINITY,
                max_blocks: u32::MAX,
                max_results: u32::MAX,
                pk_seed: blindkd_keys::crypto::FIXED_PK_SEED,
            };
            for first in [1u32, 2, 4, 8] {
                let (mut rounds, mut blocks, mut maxb) = (0u64, 0u64, 0u32);
                let queries = 50;
                let mut qrng = ChaCha20Rng::seed_from_u64(7);
                for _ in 0..queries {
                    let base = &records[qrng.random_range(0..n)].x;
                    let q: Vec<i64> = base
                        .iter()
                        .map(|&v| v + qrng.random_range(-500..=500))
                        .collect();
                    let mut c = new_query_client(
                        &bundle.entries[0],
                        QueryKind::Knn { k: 10 },
                        &q,
                        vec![],
                        BatchPolicy {
                            knn_first: first,
                            max_per_request: 64,
                            max_blocks: u32::MAX,
                            direct: false,
                        },
                    )
                    .unwrap();
                    run_in_process(&index, &access, &Limits::default(), c.as_mut()).unwrap();
                    rounds += c.stats().rounds as u64;
                    blocks += c.stats().leaf_blocks as u64;
                    maxb = maxb.max(c.stats().leaf_blocks);
                }
                println!(
                    "| {n} | {leaf} | {first} | {:.2} | {:.2} | {maxb} |",
                    rounds as f64 / queries as f64,
                    blocks as f64 / queries as f64
                );
            }
        }
    }
}
