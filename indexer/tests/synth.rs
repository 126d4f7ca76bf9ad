//! Synthetic data: deterministic per seed, right shape, and loads back exactly.
#![allow(clippy::unwrap_used)]

use blindkd_indexer::dataset::{load, load_reader, ClassSource, ColumnSel, LoadOptions};
use blindkd_indexer::synth::{generate, write_csv, Distribution, SynthSpec, MEDICAL_COLUMNS};

fn spec(distribution: Distribution, seed: u64) -> SynthSpec {
    SynthSpec {
        n: 500,
        dims: 12,
        seed,
        distribution,
        medical_columns: true,
        classes: vec!["cardiology".into(), "oncology".into()],
    }
}

fn csv(spec: &SynthSpec) -> Vec<u8> {
    let mut out = Vec::new();
    write_csv(spec, &mut out).unwrap();
    out
}

fn load_opts() -> LoadOptions {
    LoadOptions {
        id_column: Some(ColumnSel::Name("patient_id".into())),
        class: ClassSource::Column(ColumnSel::Name("department".into())),
        payload_columns: vec![ColumnSel::Name("diagnosis".into())],
        ..LoadOptions::default()
    }
}

#[test]
fn deterministic_per_seed() {
    for d in [
        Distribution::Uniform,
        Distribution::Gaussian,
        Distribution::Clustered,
    ] {
        assert_eq!(csv(&spec(d, 7)), csv(&spec(d, 7)), "{d:?}");
        assert_ne!(csv(&spec(d, 7)), csv(&spec(d, 8)), "{d:?}");
        assert_eq!(generate(&spec(d, 7)), generate(&spec(d, 7)));
    }
    // Known answer: a change to the generator changes demo data and benchmarks; make it visible.
    let s = SynthSpec {
        n: 2,
        dims: 3,
        ..spec(Distribution::Uniform, 1)
    };
    let text = String::from_utf8(csv(&s)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "patient_id,department,age,sbp,dbp,diagnosis");
    assert_eq!(lines.len(), 3);
    assert!(lines[1].starts_with("P0000000,") && lines[2].starts_with("P0000001,"));
}

#[test]
fn shape_header_and_ranges() {
    let s = spec(Distribution::Gaussian, 3);
    let text = String::from_utf8(csv(&s)).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let mut expect = vec!["patient_id", "department"];
    expect.extend(MEDICAL_COLUMNS.iter().map(|c| c.0));
    expect.extend(["f10", "f11", "diagnosis"]);
    assert_eq!(header, expect.join(","));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 500);
    for row in &rows {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), 15);
        for (i, cell) in cells[2..14].iter().enumerate() {
            let (int, frac) = cell.split_once('.').unwrap();
            assert_eq!(frac.len(), 2, "{cell}");
            assert!(!int.is_empty());
            let v: f64 = cell.parse().unwrap();
            let (lo, hi) = MEDICAL_COLUMNS.get(i).map_or((0.0, 100.0), |c| (c.1, c.2));
            assert!((lo..=hi).contains(&v), "column {i}: {v}");
        }
        assert!(["cardiology", "oncology"].contains(&cells[1]));
    }
    let ds = generate(&s);
    assert_eq!(ds.records.len(), 500);
    assert_eq!(ds.feature_names.len(), 12);
    assert_eq!(ds.feature_names[0], "age");
    assert!(ds.records.iter().any(|r| r.class == "cardiology"));
    assert!(ds.records.iter().any(|r| r.class == "oncology"));

    let generic = SynthSpec {
        medical_columns: false,
        dims: 3,
        ..s
    };
    assert_eq!(generate(&generic).feature_names, ["f0", "f1", "f2"]);
}

#[test]
fn clustered_rows_sit_near_centres() {
    // Cut the first four columns into 10 bins each: uniform rows spread over the 10^4 cells,
    // rows around 32 centres with a 2% spread occupy only a few cells per centre.
    let occupied = |d| {
        let ds = generate(&SynthSpec {
            n: 2000,
            ..spec(d, 5)
        });
        let mut cells: Vec<Vec<i64>> = ds
            .records
            .iter()
            .map(|r| {
                (0..4)
                    .map(|j| {
                        let (_, lo, hi) = MEDICAL_COLUMNS[j];
                        ((r.features[j] - lo) / (hi - lo) * 10.0).floor() as i64
                    })
                    .collect()
            })
            .collect();
        cells.sort_unstable();
        cells.dedup();
        cells.len()
    };
    let (clustered, uniform) = (
        occupied(Distribution::Clustered),
        occupied(Distribution::Uniform),
    );
    assert!(
        clustered * 3 < uniform,
        "clustered {clustered}, uniform {uniform}"
    );
}

#[test]
fn loads_back_exactly() {
    for d in [
        Distribution::Uniform,
        Distribution::Gaussian,
        Distribution::Clustered,
    ] {
        let s = spec(d, 11);
        let loaded = load_reader(&csv(&s)[..], &load_opts()).unwrap();
        assert_eq!(loaded, generate(&s), "{d:?}");
    }
    // Through a real file, with an empty class list.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("synth.csv");
    let s = SynthSpec {
        classes: vec![],
        ..spec(Distribution::Gaussian, 2)
    };
    write_csv(&s, std::fs::File::create(&p).unwrap()).unwrap();
    let loaded = load(&p, &load_opts()).unwrap();
    assert_eq!(loaded, generate(&s));
    assert!(loaded.records.iter().all(|r| r.class == "general"));
    // Without naming the columns, text columns drop out and the features are the same.
    let auto = load(&p, &LoadOptions::default()).unwrap();
    assert_eq!(auto.feature_names, loaded.feature_names);
}

#[test]
fn a_million_rows_stream_quickly() {
    let s = SynthSpec {
        n: 1_000_000,
        dims: 10,
        ..spec(Distribution::Gaussian, 0)
    };
    let t = std::time::Instant::now();
    let mut count = CountingSink(0);
    write_csv(&s, &mut count).unwrap();
    // ~10 bytes per value: anything near that means every row was written.
    assert!(count.0 > 60_000_000, "{}", count.0);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        t.elapsed()
    );
}

struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
