//! Fixed-point encoding, augmentation and exact squared distances (d = 10).
#![allow(missing_docs, clippy::unwrap_used)]

use blindkd_engine::encoding::{augment, squared_distance, QueryPlan, Schema};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn encoding(c: &mut Criterion) {
    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let schema = Schema::uniform(&refs, 100.0, 16).unwrap();
    let x: Vec<f64> = (0..10).map(|i| 12.34 * i as f64).collect();
    let e = schema.encode(&x).unwrap();
    let q: Vec<i64> = e.iter().map(|v| v + 17).collect();
    let w = vec![1u32; 10];
    let mut g = c.benchmark_group("encoding_d10");
    g.bench_function("schema_encode", |b| b.iter(|| schema.encode(black_box(&x))));
    g.bench_function("augment", |b| b.iter(|| augment(black_box(&e), &w)));
    g.bench_function("squared_distance", |b| {
        b.iter(|| squared_distance(black_box(&e), black_box(&q), &w))
    });
    g.bench_function("query_plan", |b| {
        b.iter(|| QueryPlan::new(black_box(&q), &w))
    });
    g.bench_function("radius_threshold", |b| {
        b.iter(|| schema.radius_threshold(black_box(3.7)))
    });
    g.finish();
}

criterion_group!(benches, encoding);
criterion_main!(benches);
