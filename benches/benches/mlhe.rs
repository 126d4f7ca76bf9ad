//! mlhe per-block operations at d = 10 on a full 8192-row block: query sealing, block preparation,
//! `Scheme::evaluate` (ct×pt + finish), the bare product, and `open` (decrypt + unmask).
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use blindkd_benches::micro::{MlheFixture, Product};
use blindkd_keys::crypto::{ClientScheme, Scheme};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn mlhe(c: &mut Criterion) {
    let d = 10;
    let f = MlheFixture::new(d).unwrap();
    let m = &f.m;
    let prepared = m.prepare(&f.block, d).unwrap();
    let query = m
        .decode_query(&f.query_bytes, d, &blindkd_engine::crypto::FIXED_PK_SEED)
        .unwrap();
    let reply = m.evaluate(&query, &prepared).unwrap();
    let product = Product::new(d).unwrap();
    let mut g = c.benchmark_group("mlhe_d10");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("query_key_offline", |b| {
        b.iter(|| {
            m.new_session(&blindkd_engine::crypto::FIXED_PK_SEED, f.d + 1)
                .unwrap()
        })
    });
    g.bench_function("seal_query_online", |b| {
        b.iter_batched(
            || {
                m.new_session(&blindkd_engine::crypto::FIXED_PK_SEED, f.d + 1)
                    .unwrap()
            },
            |mut k| m.seal_query(&mut k, black_box(&f.plan.w)).unwrap(),
            criterion::BatchSize::PerIteration,
        )
    });
    g.bench_function("decode_query", |b| {
        b.iter(|| {
            m.decode_query(
                black_box(&f.query_bytes),
                d,
                &blindkd_engine::crypto::FIXED_PK_SEED,
            )
            .unwrap()
        })
    });
    g.bench_function("prepare_block", |b| {
        b.iter(|| m.prepare(black_box(&f.block), d).unwrap())
    });
    g.bench_function("ct_x_pt_product_only", |b| {
        b.iter(|| product.run().unwrap())
    });
    g.bench_function("evaluate_block", |b| {
        b.iter(|| m.evaluate(&query, black_box(&prepared)).unwrap())
    });
    g.bench_function("open_block", |b| {
        b.iter(|| {
            m.open(&f.key, &f.session, black_box(&reply), &f.plan, &f.refs)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, mlhe);
criterion_main!(benches);
