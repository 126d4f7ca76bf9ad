//! In-process kNN (k = 10) and 0.1 % range queries on 10^5 clustered records × d = 10, per scheme
//! (plain, mlhe), through the client state machine (`blindkd-keys`) and the engine's hosted index.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use blindkd_benches::data;
use blindkd_benches::lanes::{self, Lane, Query, TreeLane};
use blindkd_engine::crypto::mlhe::Mlhe;
use blindkd_engine::crypto::plain::Plain;
use blindkd_engine::index::SchemeParams;
use blindkd_engine::protocol::QueryKind;
use blindkd_indexer::synth::Distribution;
use blindkd_keys::owner::OwnerKey;
use criterion::{criterion_group, criterion_main, Criterion};

fn query(c: &mut Criterion) {
    let d = data::make(100_000, 10, 8, Distribution::Clustered, 1).unwrap();
    let mut owner = OwnerKey::generate("bench").unwrap();
    let plain = lanes::build(
        &Plain::new(),
        SchemeParams::Plain,
        &mut owner,
        "plain",
        &d,
        8192,
        None,
        false,
    )
    .unwrap();
    let m = Mlhe::new().unwrap();
    let p = SchemeParams::Mlhe(m.params());
    let mlhe = lanes::build(&m, p, &mut owner, "mlhe", &d, 8192, None, false).unwrap();
    // A 0.1 % radius for the first query.
    let all = data::distances(&d, &plain.ids, &d.queries[0]);
    let (radius, threshold) = data::radius_for(&d.schema, &all, 0.001).unwrap();
    let mut g = c.benchmark_group("query_1e5_d10_clustered");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    for (name, built) in [("plain", &plain), ("mlhe", &mlhe)] {
        let lane = TreeLane::new(built).unwrap();
        for (kind, label) in [
            (QueryKind::Knn { k: 10 }, "knn10"),
            (QueryKind::Range { radius }, "range0.1pct"),
        ] {
            let q = Query {
                kind,
                q: &d.queries[0],
                q_user: &d.queries_user[0],
                threshold,
            };
            g.bench_function(format!("{name}_{label}"), |b| {
                b.iter(|| lane.run(&q).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, query);
criterion_main!(benches);
