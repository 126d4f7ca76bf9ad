//! Property: any table of finite f64 values, written as text and loaded, gives the same values.
#![allow(clippy::unwrap_used)]

use blindkd_indexer::dataset::{load_reader, LoadOptions};
use proptest::prelude::*;

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO,
        (-1_000_000i64..1_000_000).prop_map(|c| c as f64 / 100.0),
    ]
}

proptest! {
    #[test]
    fn written_tables_load_back(
        rows in prop::collection::vec(prop::collection::vec(finite(), 4), 1..40),
        header in any::<bool>(),
        whitespace in any::<bool>(),
        exponent in any::<bool>(),
    ) {
        let sep = if whitespace { "  " } else { "," };
        let mut text = String::new();
        if header {
            text.push_str(&["w", "x", "y", "z"].join(sep));
            text.push('\n');
        }
        for r in &rows {
            let cells: Vec<String> = r
                .iter()
                .map(|v| if exponent { format!("{v:e}") } else { format!("{v}") })
                .collect();
            text.push_str(&cells.join(sep));
            text.push('\n');
        }
        let opts = LoadOptions { has_header: header, ..LoadOptions::default() };
        let ds = load_reader(text.as_bytes(), &opts).unwrap();
        prop_assert_eq!(ds.records.len(), rows.len());
        for (i, (rec, row)) in ds.records.iter().zip(&rows).enumerate() {
            prop_assert_eq!(&rec.id, &i.to_string());
            // Bit-exact, sign of zero included.
            let got: Vec<u64> = rec.features.iter().map(|v| v.to_bits()).collect();
            let want: Vec<u64> = row.iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(got, want);
        }
    }
}
