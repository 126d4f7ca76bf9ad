//! paper-she operations at the published parameters (k0 = 1024), d = 10, on a 1024-row block.
//! Needs `--features paper-she`; without it this suite is empty.
#![allow(missing_docs, clippy::unwrap_used)]

#[cfg(feature = "paper-she")]
mod she {
    use std::time::Duration;

    use blindkd_benches::micro::rows;
    use blindkd_engine::encoding::QueryPlan;
    use blindkd_keys::crypto::she::{PaperSheClient, SHE_BLOCK};
    use blindkd_keys::crypto::{frame_query, ClassKey, ClientScheme, RowRef, Scheme};
    use criterion::{black_box, Criterion};

    pub(crate) fn she(c: &mut Criterion) {
        let d = 10;
        let (scheme, key) =
            PaperSheClient::setup(&ClassKey::from_bytes([9; 32]), &[3; 16]).unwrap();
        let r = rows(SHE_BLOCK, d, 3);
        let block = scheme.seal_block(&key, &r).unwrap();
        let prepared = scheme.prepare(&block, d).unwrap();
        let plan = QueryPlan::new(&vec![5; d], &vec![1; d]);
        let sealed = scheme.seal_query(&mut (), &plan.w).unwrap();
        let q = scheme
            .decode_query(
                &frame_query(&[], &sealed),
                d,
                &blindkd_engine::crypto::FIXED_PK_SEED,
            )
            .unwrap();
        let reply = scheme.evaluate(&q, &prepared).unwrap();
        let refs: Vec<RowRef> = r.iter().map(|(x, _)| *x).collect();
        let a = key.encrypt(1234, &mut rand::rng()).unwrap();
        let b2 = key.encrypt(-77, &mut rand::rng()).unwrap();
        let mut g = c.benchmark_group("paper_she_d10");
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        g.bench_function("encrypt", |b| {
            b.iter(|| key.encrypt(black_box(42), &mut rand::rng()).unwrap())
        });
        g.bench_function("ct_mul", |b| {
            b.iter(|| scheme.mul(&a, black_box(&b2)).unwrap())
        });
        g.bench_function("ct_add", |b| {
            b.iter(|| scheme.add(&a, black_box(&b2)).unwrap())
        });
        g.bench_function("seal_query", |b| {
            b.iter(|| scheme.seal_query(&mut (), black_box(&plan.w)).unwrap())
        });
        g.bench_function("evaluate_block_1024", |b| {
            b.iter(|| scheme.evaluate(&q, black_box(&prepared)).unwrap())
        });
        g.bench_function("open_block_1024", |b| {
            b.iter(|| {
                scheme
                    .open(&key, &(), black_box(&reply), &plan, &refs)
                    .unwrap()
            })
        });
        g.finish();
    }
}

#[cfg(feature = "paper-she")]
criterion::criterion_group!(benches, she::she);
#[cfg(feature = "paper-she")]
criterion::criterion_main!(benches);

#[cfg(not(feature = "paper-she"))]
fn main() {
    eprintln!("paper-she suite: build with --features paper-she");
}
