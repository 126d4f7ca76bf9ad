//! Building the fixed-point encoding [`Schema`] for a loaded [`Dataset`] (DESIGN §2).
//!
//! Two scalings:
//! - [`Scaling::Uniform`]`(s)`: `x̃ = round(x·s)` for every column, and distances are in user units.
//! - [`Scaling::ZScore`]: `x̃ = round((x − mean)·sigma_units/std)`, so one standard deviation is
//!   `sigma_units` encoded units and distances are in standard deviations.
//!
//! The schema holds column statistics (means, standard deviations), which are data: it travels in
//! the owner key and the doctor's bundle, never in the server's index.

use blindkd_engine::encoding::{Column, Schema};
use rayon::prelude::*;

use crate::dataset::Dataset;

/// How feature values are turned into integers.
#[derive(Clone, Debug, PartialEq)]
pub enum Scaling {
    /// The same scale for every column, offset 0 (`--scale s`).
    Uniform(f64),
    /// Per-column z-score normalisation.
    ZScore {
        /// Encoded units per standard deviation; see [`Scaling::DEFAULT_SIGMA_UNITS`].
        sigma_units: f64,
    },
}

impl Scaling {
    /// Default encoded units per standard deviation: three decimal places of a z-score.
    pub const DEFAULT_SIGMA_UNITS: f64 = 1000.0;

    /// Z-score scaling with [`Scaling::DEFAULT_SIGMA_UNITS`].
    pub fn zscore() -> Self {
        Scaling::ZScore {
            sigma_units: Self::DEFAULT_SIGMA_UNITS,
        }
    }
}

/// Why a schema could not be built or a dataset encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The dataset has no records, so there is nothing to take statistics of.
    #[error("the dataset has no records")]
    EmptyDataset,
    /// The weights do not match the feature columns.
    #[error("{found} weights given for {expected} feature columns")]
    WeightsLength {
        /// Number of feature columns.
        expected: usize,
        /// Number of weights given.
        found: usize,
    },
    /// The schema itself is invalid (bit budget, scale, weight, dimension).
    #[error("invalid schema: {0}")]
    Invalid(#[source] blindkd_engine::Error),
    /// A record does not fit the schema.
    #[error("record `{id}` (row {row}), column `{column}`: {source}")]
    Encode {
        /// 0-based index in [`Dataset::records`].
        row: usize,
        /// The record's id.
        id: String,
        /// The first column whose value does not encode.
        column: String,
        /// The engine's explanation (value, budget, advice).
        #[source]
        source: blindkd_engine::Error,
    },
}

/// Per-column statistics, as used by [`Scaling::ZScore`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColumnStats {
    /// Arithmetic mean.
    pub mean: f64,
    /// Population standard deviation (divides by `n`).
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

/// Statistics of every feature column, in column order. Empty when the dataset is.
pub fn column_stats(ds: &Dataset) -> Vec<ColumnStats> {
    let n = ds.records.len();
    if n == 0 {
        return Vec::new();
    }
    (0..ds.feature_names.len())
        .map(|c| {
            let col = || ds.records.iter().map(move |r| r.features[c]);
            // Two passes: the naive Σx² − n·mean² loses everything on large, tight columns.
            let mean = col().sum::<f64>() / n as f64;
            let var = col().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
            ColumnStats {
                mean,
                std: var.sqrt(),
                min: col().fold(f64::INFINITY, f64::min),
                max: col().fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect()
}

/// Builds and checks the schema: every record must encode within `bits`.
///
/// Under [`Scaling::ZScore`] a constant column (standard deviation 0) gets scale `sigma_units`,
/// i.e. it is treated as if its standard deviation were 1 user unit; every record then encodes it
/// as 0. `weights` default to 1.
pub fn build_schema(
    ds: &Dataset,
    scaling: &Scaling,
    bits: u32,
    weights: Option<&[u32]>,
) -> Result<Schema, SchemaError> {
    let d = ds.feature_names.len();
    if let Some(w) = weights {
        if w.len() != d {
            return Err(SchemaError::WeightsLength {
                expected: d,
                found: w.len(),
            });
        }
    }
    let weight = |i: usize| weights.map_or(1, |w| w[i]);
    let schema = match *scaling {
        Scaling::Uniform(s) => Schema {
            columns: ds
                .feature_names
                .iter()
                .enumerate()
                .map(|(i, name)| Column {
                    name: name.clone(),
                    scale: s,
                    offset: 0.0,
                    weight: weight(i),
                })
                .collect(),
            bits,
            distance_scale: s,
        },
        Scaling::ZScore { sigma_units } => {
            if ds.records.is_empty() {
                return Err(SchemaError::EmptyDataset);
            }
            let stats = column_stats(ds);
            Schema {
                columns: ds
                    .feature_names
                    .iter()
                    .zip(&stats)
                    .enumerate()
                    .map(|(i, (name, st))| {
                        let scale = if st.std == 0.0 {
                            tracing::warn!(
                                column = %name,
                                "constant column: z-score uses standard deviation 1"
                            );
                            sigma_units
                        } else {
                            sigma_units / st.std
                        };
                        Column {
                            name: name.clone(),
                            scale,
                            offset: st.mean,
                            weight: weight(i),
                        }
                    })
                    .collect(),
                bits,
                distance_scale: sigma_units,
            }
        }
    };
    schema.validate().map_err(SchemaError::Invalid)?;
    if let Some(e) = first_encode_error(ds, &schema) {
        return Err(e);
    }
    Ok(schema)
}

/// The largest power of 10 at which every feature value encodes within `bits` under a uniform
/// scale, for use when the user gives neither `--scale` nor `--zscore`.
///
/// Returns 1 for an empty or all-zero dataset, and stays within `1e-300..=1e300`. `bits` is clamped
/// to `1..=62` here; [`build_schema`] enforces the engine's real limit.
pub fn suggest_scale(ds: &Dataset, bits: u32) -> f64 {
    let max_abs = ds
        .records
        .iter()
        .flat_map(|r| r.features.iter())
        .fold(0.0f64, |m, &x| m.max(x.abs()));
    if max_abs == 0.0 || !max_abs.is_finite() {
        return 1.0;
    }
    let budget = ((1u64 << bits.clamp(1, 62)) - 1) as f64;
    let pow10 = |k: i32| -> f64 { format!("1e{k}").parse().unwrap_or(1.0) };
    let fits = |s: f64| (max_abs * s).round() <= budget;
    let mut k = ((budget / max_abs).log10().floor() as i32).clamp(-300, 300);
    // log10 may be off by one either way near exact powers of ten.
    while k < 300 && fits(pow10(k + 1)) {
        k += 1;
    }
    while k > -300 && !fits(pow10(k)) {
        k -= 1;
    }
    pow10(k)
}

/// Encodes every record, in parallel. On failure, reports the first offending record in order.
pub fn encode_all(ds: &Dataset, schema: &Schema) -> Result<Vec<Vec<i64>>, SchemaError> {
    let encoded: Result<Vec<Vec<i64>>, blindkd_engine::Error> = ds
        .records
        .par_iter()
        .map(|r| schema.encode(&r.features))
        .collect();
    match encoded {
        Ok(v) => Ok(v),
        // rayon returns whichever error it met first; find the first in record order instead.
        Err(e) => Err(first_encode_error(ds, schema).unwrap_or(SchemaError::Invalid(e))),
    }
}

/// The first record (in order) that does not encode, with the column at fault.
fn first_encode_error(ds: &Dataset, schema: &Schema) -> Option<SchemaError> {
    ds.records
        .par_iter()
        .enumerate()
        .find_map_first(|(row, r)| {
            schema.encode(&r.features).err().map(|source| {
                let column = offending_column(schema, &r.features);
                SchemaError::Encode {
                    row,
                    id: r.id.clone(),
                    column,
                    source,
                }
            })
        })
}

/// Names the first column whose value does not encode (or `?` for a dimension mismatch).
fn offending_column(schema: &Schema, x: &[f64]) -> String {
    if x.len() != schema.dim() {
        return "?".to_string();
    }
    let max = schema.max_abs() as f64;
    x.iter()
        .zip(&schema.columns)
        .find(|(&v, c)| {
            let e = ((v - c.offset) * c.scale).round();
            !(v.is_finite() && e.abs() <= max)
        })
        .map_or_else(|| "?".to_string(), |(_, c)| c.name.clone())
}
