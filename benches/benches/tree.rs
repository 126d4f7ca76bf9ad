//! Tree build on 10^5 clustered records × d = 10: the kd-PB tree alone and full index builds.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use blindkd_benches::data;
use blindkd_engine::crypto::mlhe::Mlhe;
use blindkd_engine::crypto::plain::Plain;
use blindkd_engine::index::SchemeParams;
use blindkd_engine::tree::TreeBuilder;
use blindkd_indexer::synth::Distribution;
use blindkd_keys::owner::{build_index, BuildOptions, OwnerKey};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn tree(c: &mut Criterion) {
    let d = data::make(100_000, 10, 1, Distribution::Clustered, 1).unwrap();
    let points: Vec<Vec<i64>> = d.records.iter().map(|r| r.x.clone()).collect();
    let owner = OwnerKey::generate("bench").unwrap();
    let opts = BuildOptions {
        leaf_size: 8192,
        progress: None,
        index_id: None,
    };
    let mut g = c.benchmark_group("build_1e5_d10");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for leaf in [1024usize, 8192] {
        g.bench_function(format!("kdpb_tree_leaf{leaf}"), |b| {
            b.iter(|| TreeBuilder::new(leaf, vec![1; 10]).build(black_box(&points)))
        });
    }
    g.bench_function("index_plain", |b| {
        b.iter(|| {
            build_index(
                &Plain::new(),
                SchemeParams::Plain,
                &owner,
                "b",
                &d.schema,
                &d.records,
                &opts,
            )
            .unwrap()
        })
    });
    let m = Mlhe::new().unwrap();
    let p = SchemeParams::Mlhe(m.params());
    g.bench_function("index_mlhe", |b| {
        b.iter(|| build_index(&m, p.clone(), &owner, "b", &d.schema, &d.records, &opts).unwrap())
    });
    g.finish();
}

criterion_group!(benches, tree);
criterion_main!(benches);
