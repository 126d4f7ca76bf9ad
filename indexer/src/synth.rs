//! Seeded synthetic clinical tables for demos, tests and benchmarks.
//!
//! The output is a CSV with header `patient_id,department,<columns…>,diagnosis`. Values have two
//! decimals. Generation is a pure function of the [`SynthSpec`]: the same spec gives byte-identical
//! output. [`write_csv`] streams row by row. [`generate`] builds the same table in memory, equal
//! value for value to what [`crate::dataset::load`] reads back from [`write_csv`]'s output.

use std::fmt::Write as _;
use std::io::{self, Write};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use crate::dataset::{Dataset, LoadReport, Record, DEFAULT_CLASS};

/// How feature values are drawn, within each column's range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Distribution {
    /// Uniform over the range.
    Uniform,
    /// Normal around the range's midpoint, standard deviation a sixth of the range, clamped.
    #[default]
    Gaussian,
    /// Around [`CLUSTERS`] seeded centres, standard deviation 2% of the range, clamped.
    Clustered,
}

/// Number of cluster centres under [`Distribution::Clustered`].
pub const CLUSTERS: usize = 32;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthSpec {
    /// Number of rows.
    pub n: usize,
    /// Number of feature columns.
    pub dims: usize,
    /// RNG seed.
    pub seed: u64,
    /// Value distribution.
    pub distribution: Distribution,
    /// Name and range the first (up to) ten columns like vital signs and lab results
    /// (see [`MEDICAL_COLUMNS`]); otherwise every column is `f<i>` in `0..=100`.
    pub medical_columns: bool,
    /// Policy classes (the `department` column), drawn uniformly at random per row.
    /// Empty means a single class, [`DEFAULT_CLASS`].
    pub classes: Vec<String>,
}

impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec {
            n: 1000,
            dims: 10,
            seed: 0,
            distribution: Distribution::Gaussian,
            medical_columns: true,
            classes: vec![
                "cardiology".into(),
                "oncology".into(),
                "endocrinology".into(),
            ],
        }
    }
}

/// Names and realistic ranges `(name, low, high)` of the medical columns, in order.
pub const MEDICAL_COLUMNS: [(&str, f64, f64); 10] = [
    ("age", 18.0, 95.0),
    ("sbp", 90.0, 200.0),
    ("dbp", 50.0, 120.0),
    ("chol", 120.0, 400.0),
    ("glucose", 60.0, 300.0),
    ("bmi", 15.0, 50.0),
    ("hr", 40.0, 140.0),
    ("hba1c", 4.0, 14.0),
    ("creatinine", 0.4, 5.0),
    ("ldl", 40.0, 250.0),
];

/// Range of the generic `f<i>` columns.
const GENERIC_RANGE: (f64, f64) = (0.0, 100.0);

/// Values of the `diagnosis` payload column.
pub const DIAGNOSES: [&str; 6] = [
    "none",
    "hypertension",
    "type 2 diabetes",
    "hyperlipidaemia",
    "chronic kidney disease",
    "atrial fibrillation",
];

/// Streams the table as CSV into `writer` (buffer it yourself only if `writer` is unbuffered and
/// slow to flush; this function already writes whole rows at a time through a `BufWriter`).
pub fn write_csv<W: Write>(spec: &SynthSpec, writer: W) -> io::Result<()> {
    let mut w = io::BufWriter::with_capacity(1 << 16, writer);
    let mut gen = RowGen::new(spec);
    let mut line = String::with_capacity(64 + 12 * spec.dims);
    line.push_str("patient_id,department");
    for c in &gen.columns {
        line.push(',');
        line.push_str(&c.name);
    }
    line.push_str(",diagnosis\n");
    w.write_all(line.as_bytes())?;
    let mut cents = Vec::with_capacity(spec.dims);
    for i in 0..spec.n {
        let (class, diagnosis) = gen.next_row(&mut cents);
        line.clear();
        // Writing into a String cannot fail.
        let _ = write!(line, "{},{}", patient_id(i), gen.classes[class]);
        for &c in &cents {
            line.push(',');
            push_cents(&mut line, c);
        }
        line.push(',');
        line.push_str(DIAGNOSES[diagnosis]);
        line.push('\n');
        w.write_all(line.as_bytes())?;
    }
    w.flush()
}

/// Builds the table in memory: the same rows [`write_csv`] writes, as [`crate::dataset::load`]
/// would read them with id `patient_id`, class `department` and payload `diagnosis`.
pub fn generate(spec: &SynthSpec) -> Dataset {
    let mut gen = RowGen::new(spec);
    let mut cents = Vec::with_capacity(spec.dims);
    let records = (0..spec.n)
        .map(|i| {
            let (class, diagnosis) = gen.next_row(&mut cents);
            let mut payload = Map::new();
            payload.insert("diagnosis".into(), Value::from(DIAGNOSES[diagnosis]));
            Record {
                id: patient_id(i),
                class: gen.classes[class].clone(),
                // Exactly what parsing the written decimal gives: both are the f64 nearest c/100.
                features: cents.iter().map(|&c| c as f64 / 100.0).collect(),
                payload,
            }
        })
        .collect();
    Dataset {
        feature_names: gen.columns.iter().map(|c| c.name.clone()).collect(),
        records,
        report: LoadReport {
            rows_read: spec.n,
            rows_skipped_missing: 0,
            missing_by_column: Vec::new(),
        },
    }
}

/// The column layout a spec produces: `(name, low, high)`.
pub fn columns(spec: &SynthSpec) -> Vec<(String, f64, f64)> {
    (0..spec.dims)
        .map(|i| match MEDICAL_COLUMNS.get(i) {
            Some(&(name, lo, hi)) if spec.medical_columns => (name.to_string(), lo, hi),
            _ => (format!("f{i}"), GENERIC_RANGE.0, GENERIC_RANGE.1),
        })
        .collect()
}

fn patient_id(i: usize) -> String {
    format!("P{i:07}")
}

/// Appends `c/100` with exactly two decimals.
fn push_cents(s: &mut String, c: i64) {
    if c < 0 {
        s.push('-');
    }
    let a = c.unsigned_abs();
    // Writing into a String cannot fail.
    let _ = write!(s, "{}.{:02}", a / 100, a % 100);
}

struct ColumnGen {
    name: String,
    /// Range in cents.
    lo: i64,
    hi: i64,
}

/// The one sequential source of rows shared by [`write_csv`] and [`generate`].
struct RowGen {
    rng: ChaCha8Rng,
    distribution: Distribution,
    columns: Vec<ColumnGen>,
    classes: Vec<String>,
    /// Cluster centres in cents, `CLUSTERS × dims`, only for [`Distribution::Clustered`].
    centres: Vec<Vec<i64>>,
}

impl RowGen {
    fn new(spec: &SynthSpec) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let columns: Vec<ColumnGen> = columns(spec)
            .into_iter()
            .map(|(name, lo, hi)| ColumnGen {
                name,
                lo: (lo * 100.0).round() as i64,
                hi: (hi * 100.0).round() as i64,
            })
            .collect();
        let centres = if spec.distribution == Distribution::Clustered {
            (0..CLUSTERS)
                .map(|_| {
                    columns
                        .iter()
                        .map(|c| rng.random_range(c.lo..=c.hi))
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        let classes = if spec.classes.is_empty() {
            vec![DEFAULT_CLASS.to_string()]
        } else {
            spec.classes.clone()
        };
        RowGen {
            rng,
            distribution: spec.distribution,
            columns,
            classes,
            centres,
        }
    }

    /// Fills `cents` with one row's values; returns (class index, diagnosis index).
    fn next_row(&mut self, cents: &mut Vec<i64>) -> (usize, usize) {
        let class = self.rng.random_range(0..self.classes.len());
        let diagnosis = self.rng.random_range(0..DIAGNOSES.len());
        let centre = match self.distribution {
            Distribution::Clustered => self.rng.random_range(0..CLUSTERS),
            _ => 0,
        };
        cents.clear();
        for (j, c) in self.columns.iter().enumerate() {
            let range = (c.hi - c.lo) as f64;
            let v = match self.distribution {
                Distribution::Uniform => self.rng.random_range(c.lo..=c.hi),
                Distribution::Gaussian => {
                    let mid = (c.lo + c.hi) as f64 / 2.0;
                    (mid + gaussian(&mut self.rng) * range / 6.0).round() as i64
                }
                Distribution::Clustered => {
                    let centre = self.centres[centre][j] as f64;
                    (centre + gaussian(&mut self.rng) * range * 0.02).round() as i64
                }
            };
            cents.push(v.clamp(c.lo, c.hi));
        }
        (class, diagnosis)
    }
}

/// A standard normal draw (Box–Muller; one of the pair is discarded to keep the stream simple).
fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    // 1 − u lies in (0, 1], so the logarithm is finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_format() {
        let mut s = String::new();
        for c in [0, 5, -5, 12345, -100, 99] {
            push_cents(&mut s, c);
            s.push(' ');
        }
        assert_eq!(s, "0.00 0.05 -0.05 123.45 -1.00 0.99 ");
    }
}
