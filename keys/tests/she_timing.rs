//! Timing of paper-she at the published parameters. Prints, asserts nothing about speed.
//! Run: `cargo test --release -p blindkd-keys --features paper-she --test she_timing -- --ignored --nocapture`
#![cfg(feature = "paper-she")]
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use blindkd_engine::encoding::{augment, QueryPlan};
use blindkd_keys::crypto::she::PaperSheClient;
use blindkd_keys::crypto::{frame_query, ClassKey, ClientScheme, RowDomain, RowRef, Scheme};

#[test]
#[ignore = "timing; run with --release --ignored --nocapture"]
fn per_record_costs() {
    let t = Instant::now();
    let (scheme, key) = PaperSheClient::setup(&ClassKey::from_bytes([9; 32]), &[3; 16]).unwrap();
    println!("keygen (k0=1024): {:?}", t.elapsed());

    for dim in [10usize, 32] {
        let rows_n = scheme.block_capacity();
        let w = vec![1u32; dim];
        let rows: Vec<_> = (0..rows_n)
            .map(|i| {
                let x: Vec<i64> = (0..dim)
                    .map(|j| ((i * 31 + j * 17) % 2001) as i64 - 1000)
                    .collect();
                (
                    RowRef {
                        domain: RowDomain::Leaf,
                        id: i as u64,
                        record: 0,
                    },
                    augment(&x, &w),
                )
            })
            .collect();
        let t = Instant::now();
        let block = scheme.seal_block(&key, &rows).unwrap();
        let seal = t.elapsed();
        let t = Instant::now();
        let prepared = scheme.prepare(&block, dim).unwrap();
        let prep = t.elapsed();
        let plan = QueryPlan::new(&vec![5; dim], &w);
        let sealed = scheme.seal_query(&mut (), &plan.w).unwrap();
        let q = scheme
            .decode_query(
                &frame_query(&[], &sealed),
                dim,
                &blindkd_keys::crypto::FIXED_PK_SEED,
            )
            .unwrap();
        let reps = 3;
        let t = Instant::now();
        let mut reply = Vec::new();
        for _ in 0..reps {
            reply = scheme.evaluate(&q, &prepared).unwrap();
        }
        let eval = t.elapsed() / reps;
        let refs: Vec<RowRef> = rows.iter().map(|(r, _)| *r).collect();
        let t = Instant::now();
        let out = scheme.open(&key, &(), &reply, &plan, &refs).unwrap();
        let open = t.elapsed();
        assert_eq!(out.len(), rows_n);
        let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / rows_n as f64;
        println!(
            "d={dim}, {rows_n} rows: evaluate {:.2} µs/record ({eval:?}/block), seal {:.1} µs/record, \
             prepare {:.2} µs/record, open {:.2} µs/record, stored {} B/record",
            per(eval),
            per(seal),
            per(prep),
            per(open),
            block.rows[0].len()
        );
    }
}
