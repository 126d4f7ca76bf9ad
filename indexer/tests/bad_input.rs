//! Malformed tables: each gives its own error, with line and column where relevant.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use blindkd_indexer::dataset::{
    load, load_reader, ClassSource, ColumnSel, Dataset, DatasetError, LoadOptions,
};

fn load_str(s: &str, opts: &LoadOptions) -> Result<Dataset, DatasetError> {
    load_reader(s.as_bytes(), opts)
}

fn err(s: &str) -> DatasetError {
    load_str(s, &LoadOptions::default()).unwrap_err()
}

#[test]
fn nan_and_infinity() {
    for cell in ["NaN", "nan", "inf", "-inf", "infinity", "1e999"] {
        let e = err(&format!("a,b\n1,2\n3,{cell}\n"));
        assert!(
            matches!(&e, DatasetError::NonFinite { line: 3, column, value } if column == "b" && value == cell),
            "{cell}: {e:?}"
        );
        assert!(e.to_string().contains("not a finite number"), "{e}");
    }
    // In the first data row too (auto-selection must not silently drop the column).
    let e = err("a,b\nNaN,2\n");
    assert!(
        matches!(&e, DatasetError::NonFinite { line: 2, column, .. } if column == "a"),
        "{e:?}"
    );
}

#[test]
fn ragged_rows() {
    let e = err("a,b,c\n1,2,3\n4,5\n");
    assert!(
        matches!(
            e,
            DatasetError::Ragged {
                line: 3,
                expected: 3,
                found: 2
            }
        ),
        "{e:?}"
    );
    let e = err("a,b\n1,2\n3,4,5\n");
    assert!(
        matches!(
            e,
            DatasetError::Ragged {
                line: 3,
                expected: 2,
                found: 3
            }
        ),
        "{e:?}"
    );
    let opts = LoadOptions {
        has_header: false,
        ..LoadOptions::default()
    };
    let e = load_str("1 2 3\n4 5 6\n7 8\n", &opts).unwrap_err();
    assert!(
        matches!(
            e,
            DatasetError::Ragged {
                line: 3,
                expected: 3,
                found: 2
            }
        ),
        "{e:?}"
    );
}

#[test]
fn unknown_column_lists_available() {
    let opts = LoadOptions {
        columns: Some(vec![
            ColumnSel::Name("age".into()),
            ColumnSel::Name("weight".into()),
        ]),
        ..LoadOptions::default()
    };
    let e = load_str("age,sbp\n1,2\n", &opts).unwrap_err();
    assert!(
        matches!(&e, DatasetError::UnknownColumn { selection, .. } if selection == "weight"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("`weight`") && msg.contains("#0 age") && msg.contains("#1 sbp"),
        "{msg}"
    );

    for (what, opts) in [
        (
            "index",
            LoadOptions {
                id_column: Some(ColumnSel::Index(2)),
                ..LoadOptions::default()
            },
        ),
        (
            "class",
            LoadOptions {
                class: ClassSource::Column(ColumnSel::Name("dept".into())),
                ..LoadOptions::default()
            },
        ),
        (
            "payload",
            LoadOptions {
                payload_columns: vec![ColumnSel::Name("notes".into())],
                ..LoadOptions::default()
            },
        ),
    ] {
        let e = load_str("age,sbp\n1,2\n", &opts).unwrap_err();
        assert!(
            matches!(e, DatasetError::UnknownColumn { .. }),
            "{what}: {e:?}"
        );
    }
}

#[test]
fn empty_and_header_only() {
    assert!(matches!(err(""), DatasetError::Empty { .. }));
    assert!(matches!(err("\n\n  \n"), DatasetError::Empty { .. }));
    let skip = LoadOptions {
        skip_lines: 3,
        ..LoadOptions::default()
    };
    assert!(matches!(
        load_str("x\ny\n", &skip).unwrap_err(),
        DatasetError::Empty { skipped: 3 }
    ));
    let e = err("age,sbp\n");
    assert!(matches!(e, DatasetError::NoDataRows), "{e:?}");
    assert!(matches!(err("age,sbp"), DatasetError::NoDataRows));
    assert!(matches!(err("age,sbp\n\n\n"), DatasetError::NoDataRows));
}

#[test]
fn duplicate_ids() {
    let opts = LoadOptions {
        id_column: Some(ColumnSel::Name("id".into())),
        ..LoadOptions::default()
    };
    let e = load_str("id,x\np1,1\np2,2\np1,3\n", &opts).unwrap_err();
    assert!(
        matches!(&e, DatasetError::DuplicateId { id, line: 4, first_line: 2 } if id == "p1"),
        "{e:?}"
    );
    // Unique ids load, and the id column is not a feature.
    let ds = load_str("id,x\np1,1\np2,2\n", &opts).unwrap();
    assert_eq!(ds.feature_names, ["x"]);
    assert_eq!(ds.records[1].id, "p2");
}

#[test]
fn non_numeric_feature_cell() {
    let e = err("a,b\n1,2\n3,high\n");
    assert!(
        matches!(&e, DatasetError::NonNumeric { line: 3, column, value } if column == "b" && value == "high"),
        "{e:?}"
    );
    // An explicitly chosen text column is an error from the first row.
    let opts = LoadOptions {
        columns: Some(vec![ColumnSel::Name("dept".into())]),
        ..LoadOptions::default()
    };
    let e = load_str("dept,x\ncardio,1\n", &opts).unwrap_err();
    assert!(
        matches!(e, DatasetError::NonNumeric { line: 2, .. }),
        "{e:?}"
    );
    // Automatic selection leaves text columns out; none left is its own error.
    let ds = load_str("dept,x\ncardio,1\n", &LoadOptions::default()).unwrap();
    assert_eq!(ds.feature_names, ["x"]);
    let e = load_str("dept\ncardio\n", &LoadOptions::default()).unwrap_err();
    assert!(matches!(e, DatasetError::NoFeatureColumns { .. }), "{e:?}");
}

#[test]
fn duplicate_and_ambiguous_columns() {
    let opts = LoadOptions {
        columns: Some(ColumnSel::parse_list("a,#0")),
        ..LoadOptions::default()
    };
    let e = load_str("a,b\n1,2\n", &opts).unwrap_err();
    assert!(
        matches!(&e, DatasetError::DuplicateFeature { name } if name == "a"),
        "{e:?}"
    );
    let opts = LoadOptions {
        columns: Some(ColumnSel::parse_list("a")),
        ..LoadOptions::default()
    };
    let e = load_str("a,a\n1,2\n", &opts).unwrap_err();
    assert!(matches!(e, DatasetError::AmbiguousColumn { .. }), "{e:?}");
}

#[test]
fn row_limit() {
    let opts = LoadOptions {
        max_rows: 2,
        ..LoadOptions::default()
    };
    assert!(load_str("a\n1\n2\n", &opts).is_ok());
    let e = load_str("a\n1\n2\n3\n", &opts).unwrap_err();
    assert!(matches!(e, DatasetError::TooManyRows { max: 2 }), "{e:?}");
}

#[test]
fn absurd_but_finite_values_load() {
    // Too big to encode is the schema's business, not the loader's; it must not panic either.
    let ds = err_free("a,b\n1e308,-1.7976931348623157e308\n5e-324,0\n");
    assert_eq!(ds.records[0].features, vec![1e308, f64::MIN]);
}

fn err_free(s: &str) -> Dataset {
    load_str(s, &LoadOptions::default()).unwrap()
}

#[test]
fn million_columns_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wide.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
        for _ in 0..2 {
            for i in 0..1_000_000 {
                if i > 0 {
                    f.write_all(b",").unwrap();
                }
                f.write_all(b"1.5").unwrap();
            }
            f.write_all(b"\n").unwrap();
        }
    }
    for (has_header, delimiter) in [(true, None), (false, None), (false, Some(b','))] {
        let opts = LoadOptions {
            has_header,
            delimiter,
            ..LoadOptions::default()
        };
        let t = Instant::now();
        let e = load(&p, &opts).unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
        assert!(
            matches!(e, DatasetError::TooManyColumns { line: 1, max: 4096 }),
            "{e:?}"
        );
        assert!(e.to_string().contains("max_columns"), "{e}");
    }
    // The same with whitespace separation.
    let p2 = dir.path().join("wide.txt");
    std::fs::write(&p2, "1 ".repeat(1_000_000)).unwrap();
    let opts = LoadOptions {
        has_header: false,
        ..LoadOptions::default()
    };
    let e = load(&p2, &opts).unwrap_err();
    assert!(matches!(e, DatasetError::TooManyColumns { .. }), "{e:?}");
    // A later wide row is ragged, not a crash.
    let p3 = dir.path().join("late.csv");
    std::fs::write(&p3, format!("a,b\n1,2\n{}\n", "3,".repeat(1_000_000))).unwrap();
    let e = load(&p3, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            DatasetError::Ragged {
                line: 3,
                expected: 2,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let e = load(
        std::path::Path::new("/nonexistent/x.csv"),
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/x.csv"), "{e}");
}

#[test]
fn invalid_utf8_is_a_read_error() {
    let e = load_reader(&b"a,b\n1,\xff\n"[..], &LoadOptions::default()).unwrap_err();
    assert!(matches!(e, DatasetError::Read { line: 2, .. }), "{e:?}");
}

#[test]
fn missing_cells_in_id_class_and_payload() {
    let opts = LoadOptions {
        id_column: Some(ColumnSel::Name("id".into())),
        class: ClassSource::Column(ColumnSel::Name("dept".into())),
        payload_columns: vec![ColumnSel::Name("note".into())],
        ..LoadOptions::default()
    };
    let ds = load_str(
        "id,dept,x,note\np1,card,1,ok\n,card,2,x\np3,?,3,x\np4,onc,NA,x\np5,onc,5,\n",
        &opts,
    )
    .unwrap();
    assert_eq!(ds.report.rows_read, 5);
    assert_eq!(ds.report.rows_skipped_missing, 3);
    assert_eq!(
        ds.report.missing_by_column,
        vec![("id".into(), 1), ("dept".into(), 1), ("x".into(), 1)]
    );
    let ids: Vec<_> = ds.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["p1", "p5"]);
    assert_eq!(ds.records[1].payload["note"], serde_json::Value::Null);
    assert_eq!(ds.records[0].class, "card");
}

#[test]
fn quoting_crlf_bom_and_other_delimiters() {
    let opts = LoadOptions {
        id_column: Some(ColumnSel::Name("id".into())),
        payload_columns: vec![ColumnSel::Name("note".into())],
        ..LoadOptions::default()
    };
    let text = "\u{feff}id,age,note\r\n\"p,1\",50,\"chest pain, \"\"acute\"\"\"\r\np2, 61 ,\r\n";
    let ds = load_str(text, &opts).unwrap();
    assert_eq!(ds.feature_names, ["age"]);
    assert_eq!(ds.records[0].id, "p,1");
    assert_eq!(ds.records[0].payload["note"], "chest pain, \"acute\"");
    assert_eq!(ds.records[1].features, vec![61.0]);
    let semi = LoadOptions {
        delimiter: Some(b';'),
        ..LoadOptions::default()
    };
    let ds = load_str("a;b\n1,5;2\n", &semi);
    // `1,5` (a decimal comma) is not a number here: say so rather than guess.
    assert!(matches!(
        ds.unwrap_err(),
        DatasetError::NonNumeric { line: 2, .. }
    ));
    let ds = load_str("a;b\n1.5;2\n", &semi).unwrap();
    assert_eq!(ds.records[0].features, vec![1.5, 2.0]);
    let ws = LoadOptions {
        has_header: false,
        ..LoadOptions::default()
    };
    let ds = load_str("1\t2\r\n\r\n 3   4\r\n", &ws).unwrap();
    assert_eq!(ds.records[1].features, vec![3.0, 4.0]);
}

/// Issue 17, U1: a class name with terminal control characters (or empty, or too long) is refused
/// when the CSV is read, so it never reaches an index, a token or a screen.
#[test]
fn class_names_with_control_characters_are_refused() {
    let opts = LoadOptions {
        class: ClassSource::Column(ColumnSel::Name("dept".into())),
        ..LoadOptions::default()
    };
    let long = "x".repeat(65);
    for bad in ["cardio\u{1b}[2J", "on\u{7}cology", long.as_str()] {
        let e = load_str(&format!("age,sbp,dept\n1,2,{bad}\n"), &opts).unwrap_err();
        assert!(
            matches!(e, DatasetError::BadClass { line: 2, .. }),
            "{bad:?}: {e:?}"
        );
        assert!(
            !e.to_string().contains('\u{1b}'),
            "the error itself prints the escape: {e}"
        );
    }
    load_str("age,sbp,dept\n1,2,cardiologie-été\n", &opts).unwrap();
    let fixed = LoadOptions {
        class: ClassSource::Fixed("a\u{1b}b".into()),
        ..LoadOptions::default()
    };
    let e = load_str("age,sbp\n1,2\n", &fixed).unwrap_err();
    assert!(matches!(e, DatasetError::BadClass { line: 0, .. }), "{e:?}");
}
