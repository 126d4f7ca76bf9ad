//! Schema construction: exact encodings, scale suggestion, budget errors.
#![allow(clippy::unwrap_used)]

use blindkd_indexer::dataset::{load_reader, Dataset, LoadOptions};
use blindkd_indexer::schema::{
    build_schema, column_stats, encode_all, suggest_scale, Scaling, SchemaError,
};

fn table(s: &str) -> Dataset {
    load_reader(s.as_bytes(), &LoadOptions::default()).unwrap()
}

#[test]
fn uniform_encodes_known_values() {
    let ds = table("age,chol\n63,233.5\n-1.24,0.05\n");
    let s = build_schema(&ds, &Scaling::Uniform(10.0), 16, None).unwrap();
    assert_eq!(s.distance_scale, 10.0);
    assert_eq!(s.bits, 16);
    assert_eq!(s.column_names(), ["age", "chol"]);
    assert!(s
        .columns
        .iter()
        .all(|c| c.offset == 0.0 && c.scale == 10.0 && c.weight == 1));
    // 0.05·10 = 0.5 rounds away from zero.
    assert_eq!(
        encode_all(&ds, &s).unwrap(),
        vec![vec![630, 2335], vec![-12, 1]]
    );
}

#[test]
fn zscore_encodes_known_values() {
    // x = 1, 3: mean 2, population std 1. y is constant: std 0, so its scale is sigma_units.
    let ds = table("x,y\n1,7\n3,7\n");
    let s = build_schema(
        &ds,
        &Scaling::ZScore {
            sigma_units: 1000.0,
        },
        16,
        Some(&[2, 1]),
    )
    .unwrap();
    assert_eq!(s.distance_scale, 1000.0);
    assert_eq!(s.columns[0].offset, 2.0);
    assert_eq!(s.columns[0].scale, 1000.0);
    assert_eq!(s.columns[0].weight, 2);
    assert_eq!(s.columns[1].offset, 7.0);
    assert_eq!(s.columns[1].scale, 1000.0);
    assert_eq!(
        encode_all(&ds, &s).unwrap(),
        vec![vec![-1000, 0], vec![1000, 0]]
    );
    // A query 2.5 standard deviations away in x decodes back to 2.5.
    let q = s.encode(&[4.5, 7.0]).unwrap();
    assert_eq!(q, vec![2500, 0]);
    let d2 = ((q[0] - 1000) as u128).pow(2);
    assert_eq!(s.decode_distance(d2), 1.5);

    let ds = table("x\n0\n4\n8\n");
    let st = column_stats(&ds)[0];
    assert_eq!(st.mean, 4.0);
    assert_eq!(st.std, (32.0f64 / 3.0).sqrt());
    assert_eq!((st.min, st.max), (0.0, 8.0));
    let s = build_schema(&ds, &Scaling::zscore(), 16, None).unwrap();
    let e = encode_all(&ds, &s).unwrap();
    let expect = (4.0 * 1000.0 / (32.0f64 / 3.0).sqrt()).round() as i64; // 1225
    assert_eq!(e, vec![vec![-expect], vec![0], vec![expect]]);
}

#[test]
fn suggest_scale_fits_the_budget() {
    let ds = table("a,b\n123.456,-9.5\n0.001,42\n");
    // 2^16 − 1 = 65535: 123.456·100 = 12346 fits, ·1000 = 123456 does not.
    assert_eq!(suggest_scale(&ds, 16), 100.0);
    build_schema(&ds, &Scaling::Uniform(100.0), 16, None).unwrap();
    assert!(build_schema(&ds, &Scaling::Uniform(1000.0), 16, None).is_err());
    // Exactly at the edge: 65535 fits with scale 1, 65536 does not.
    assert_eq!(suggest_scale(&table("a\n65535\n"), 16), 1.0);
    assert_eq!(suggest_scale(&table("a\n65536\n"), 16), 0.1);
    assert_eq!(suggest_scale(&table("a\n-6.5535\n"), 16), 10000.0);
    // Tiny and huge values stay finite and usable.
    let big = table("a\n1e300\n");
    let s = suggest_scale(&big, 30);
    assert!(s > 0.0 && s < 1e-290, "{s}");
    build_schema(&big, &Scaling::Uniform(s), 30, None).unwrap();
    assert_eq!(suggest_scale(&table("a\n0\n"), 16), 1.0);
    // Every bundled-style value range gets a scale that builds.
    for bits in [8, 12, 20, 30] {
        let ds = table("x,y\n0.0001,250\n99.99,-3\n");
        let s = suggest_scale(&ds, bits);
        build_schema(&ds, &Scaling::Uniform(s), bits, None).unwrap();
        assert!(build_schema(&ds, &Scaling::Uniform(s * 10.0), bits, None).is_err());
    }
}

#[test]
fn value_that_cannot_fit_names_the_column() {
    let ds = table("id,age,chol\na,50,200\nb,60,1e9\nc,1e12,1\n");
    let e = build_schema(&ds, &Scaling::Uniform(1.0), 20, None).unwrap_err();
    match &e {
        SchemaError::Encode {
            row, id, column, ..
        } => {
            assert_eq!((*row, id.as_str(), column.as_str()), (1, "1", "chol"));
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("chol") && msg.contains("budget"), "{msg}");

    // encode_all reports the first offending record in order, too.
    let s = build_schema(&table("age,chol\n1,1\n"), &Scaling::Uniform(1.0), 20, None).unwrap();
    let e = encode_all(&ds, &s).unwrap_err();
    assert!(matches!(e, SchemaError::Encode { row: 1, .. }), "{e:?}");
}

#[test]
fn absurd_values_error_not_panic() {
    let ds = table("a,b\n1e308,1\n-1e308,2\n");
    // Squares overflow: the std is infinite, the scale 0 and the schema invalid.
    let e = build_schema(&ds, &Scaling::zscore(), 30, None).unwrap_err();
    assert!(
        matches!(e, SchemaError::Invalid(_) | SchemaError::Encode { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("`a`"), "{e}");
    assert!(build_schema(&ds, &Scaling::Uniform(1e300), 30, None).is_err());
}

#[test]
fn bad_parameters() {
    let ds = table("a,b\n1,2\n");
    let e = build_schema(&ds, &Scaling::Uniform(1.0), 16, Some(&[1])).unwrap_err();
    assert!(
        matches!(
            e,
            SchemaError::WeightsLength {
                expected: 2,
                found: 1
            }
        ),
        "{e:?}"
    );
    for (scaling, bits, w) in [
        (Scaling::Uniform(0.0), 16, None),
        (Scaling::Uniform(f64::NAN), 16, None),
        (Scaling::Uniform(-1.0), 16, None),
        (Scaling::Uniform(1.0), 0, None),
        (Scaling::Uniform(1.0), 31, None),
        (Scaling::Uniform(1.0), 16, Some(&[1u32, 0][..])),
        (Scaling::ZScore { sigma_units: 0.0 }, 16, None),
    ] {
        let e = build_schema(&ds, &scaling, bits, w).unwrap_err();
        assert!(
            matches!(e, SchemaError::Invalid(_)),
            "{scaling:?} {bits}: {e:?}"
        );
    }
    let empty = Dataset {
        feature_names: vec!["a".into()],
        records: vec![],
        report: Default::default(),
    };
    assert!(matches!(
        build_schema(&empty, &Scaling::zscore(), 16, None).unwrap_err(),
        SchemaError::EmptyDataset
    ));
}
