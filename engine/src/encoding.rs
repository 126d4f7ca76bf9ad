//! Fixed-point encoding of feature vectors (DESIGN §2).
//!
//! Every feature becomes a signed integer `x̃ = round((x − offset)·scale)` within a declared bit
//! budget `|x̃| ≤ 2^bits − 1`. Distances are exact weighted squared Euclidean distances on the
//! encoded integers, `D = Σ wᵢ (x̃ᵢ − q̃ᵢ)²`. The schema is data (column statistics), so it travels in
//! the owner key and the doctor's bundle, never in the server's index.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Largest accepted dimension. Far above clinical use; bounds allocations from untrusted input.
pub const MAX_DIM: usize = 4096;
/// Largest accepted bit budget per encoded coordinate.
pub const MAX_BITS: u32 = 30;

/// One column of the schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// Column name (from the CSV header, or `c<index>`).
    pub name: String,
    /// Multiplier applied after subtracting the offset.
    pub scale: f64,
    /// Subtracted before scaling (for z-score: the column mean).
    pub offset: f64,
    /// Integer weight of this column in the squared distance.
    pub weight: u32,
}

/// The encoding schema: columns, bit budget, and the factor that converts distances back to user units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// Columns in vector order.
    pub columns: Vec<Column>,
    /// Bit budget: every encoded value satisfies `|x̃| ≤ 2^bits − 1`.
    pub bits: u32,
    /// A user-unit distance `r` corresponds to the encoded distance `r · distance_scale`.
    /// With a uniform `--scale s` it is `s`; with z-score normalisation distances are in standard deviations.
    pub distance_scale: f64,
}

impl Schema {
    /// A schema with the same scale for every column, offset 0 and weight 1.
    pub fn uniform(names: &[&str], scale: f64, bits: u32) -> Result<Self> {
        let s = Schema {
            columns: names
                .iter()
                .map(|n| Column {
                    name: (*n).to_string(),
                    scale,
                    offset: 0.0,
                    weight: 1,
                })
                .collect(),
            bits,
            distance_scale: scale,
        };
        s.validate()?;
        Ok(s)
    }

    /// The dimension `d`.
    pub fn dim(&self) -> usize {
        self.columns.len()
    }

    /// The integer weights, in column order.
    pub fn weights(&self) -> Vec<u32> {
        self.columns.iter().map(|c| c.weight).collect()
    }

    /// Largest encoded magnitude, `2^bits − 1`.
    pub fn max_abs(&self) -> i64 {
        (1i64 << self.bits) - 1
    }

    /// Checks the schema itself: dimension, finite positive scales, bit budget, weights.
    pub fn validate(&self) -> Result<()> {
        if self.columns.is_empty() || self.columns.len() > MAX_DIM {
            return Err(Error::InvalidInput(format!(
                "schema has {} columns; need 1..={MAX_DIM}",
                self.columns.len()
            )));
        }
        if self.bits == 0 || self.bits > MAX_BITS {
            return Err(Error::InvalidInput(format!(
                "bit budget {} outside 1..={MAX_BITS}",
                self.bits
            )));
        }
        if !(self.distance_scale.is_finite() && self.distance_scale > 0.0) {
            return Err(Error::InvalidInput(
                "distance scale must be finite and > 0".into(),
            ));
        }
        for c in &self.columns {
            if !(c.scale.is_finite() && c.scale > 0.0 && c.offset.is_finite()) {
                return Err(Error::InvalidInput(format!(
                    "column `{}`: scale must be finite and > 0, offset finite",
                    c.name
                )));
            }
            if c.weight == 0 || c.weight > 1 << 16 {
                return Err(Error::InvalidInput(format!(
                    "column `{}`: weight {} outside 1..=65536",
                    c.name, c.weight
                )));
            }
        }
        Ok(())
    }

    /// Encodes one vector. Rejects a wrong dimension, NaN, infinities and values outside the bit budget,
    /// naming the column.
    pub fn encode(&self, x: &[f64]) -> Result<Vec<i64>> {
        if x.len() != self.dim() {
            return Err(Error::InvalidInput(format!(
                "vector has {} values, schema has {} columns ({})",
                x.len(),
                self.dim(),
                self.column_names().join(",")
            )));
        }
        let max = self.max_abs() as f64;
        x.iter()
            .zip(&self.columns)
            .map(|(&v, c)| {
                if !v.is_finite() {
                    return Err(Error::InvalidInput(format!(
                        "column `{}`: value {v} is not a finite number",
                        c.name
                    )));
                }
                let e = ((v - c.offset) * c.scale).round();
                if e.is_nan() || e.abs() > max {
                    return Err(Error::InvalidInput(format!(
                        "column `{}`: value {v} encodes to {e}, outside the {}-bit budget (±{max}); \
                         lower its scale or raise the bit budget",
                        c.name, self.bits
                    )));
                }
                Ok(e as i64)
            })
            .collect()
    }

    /// Converts an encoded squared distance back to a user-unit distance.
    pub fn decode_distance(&self, d2: u128) -> f64 {
        (d2 as f64).sqrt() / self.distance_scale
    }

    /// The largest encoded squared distance `D` that is `≤ (r·distance_scale)²`, for range queries.
    pub fn radius_threshold(&self, r: f64) -> Result<u128> {
        if !(r.is_finite() && r >= 0.0) {
            return Err(Error::InvalidInput(format!(
                "radius {r} must be a finite number ≥ 0"
            )));
        }
        let e = r * self.distance_scale;
        let t = (e * e).floor();
        if t >= u128::MAX as f64 {
            return Ok(u128::MAX);
        }
        // Floating point may be off by one around exact squares: fix it up in integers.
        let mut t = t as u128;
        let exact = |t: u128| (t as f64).sqrt() <= e;
        while t > 0 && !exact(t) {
            t -= 1;
        }
        while exact(t + 1) {
            t += 1;
        }
        Ok(t)
    }

    /// Column names in order.
    pub fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }

    /// Largest possible squared distance between two encoded vectors.
    pub fn max_squared_distance(&self) -> u128 {
        let span = 2 * self.max_abs() as u128;
        self.columns
            .iter()
            .map(|c| c.weight as u128 * span * span)
            .sum()
    }

    /// Refuses an encoding whose worst-case squared distance would not open exactly under a scheme
    /// that can open values of magnitude `< bound`, and says which column to rescale.
    pub fn check_overflow(&self, bound: u128) -> Result<()> {
        self.validate()?;
        let max = self.max_squared_distance();
        if max < bound {
            return Ok(());
        }
        let heaviest = self
            .columns
            .iter()
            .max_by_key(|c| c.weight)
            .map(|c| c.name.as_str())
            .unwrap_or("?");
        Err(Error::Overflow(format!(
            "worst-case squared distance 2^{:.1} does not fit the scheme's exact range 2^{:.1}; \
             lower the bit budget (now {}), the scales, or the weight of column `{heaviest}`",
            (max as f64).log2(),
            (bound as f64).log2(),
            self.bits
        )))
    }
}

/// Builds the augmented row `a = (w∘x, Σ wᵢxᵢ²)` of DESIGN §3.1 for an encoded vector.
pub fn augment(x: &[i64], weights: &[u32]) -> Vec<i64> {
    let mut a: Vec<i64> = x.iter().zip(weights).map(|(&v, &w)| v * w as i64).collect();
    a.push(weighted_norm2(x, weights) as i64);
    a
}

/// `Σ wᵢ xᵢ²`.
pub fn weighted_norm2(x: &[i64], weights: &[u32]) -> i128 {
    x.iter()
        .zip(weights)
        .map(|(&v, &w)| w as i128 * (v as i128) * (v as i128))
        .sum()
}

/// Exact weighted squared distance on encoded integers: the oracle every query is checked against.
pub fn squared_distance(x: &[i64], q: &[i64], weights: &[u32]) -> u128 {
    x.iter()
        .zip(q)
        .zip(weights)
        .map(|((&a, &b), &w)| {
            let d = (a as i128 - b as i128).unsigned_abs();
            w as u128 * d * d
        })
        .sum()
}

/// The query vector `w = (−2q̃, 1)` and the correction `‖q̃‖²_w`: `⟨a, w⟩ + ‖q̃‖²_w = D`.
#[derive(Clone, PartialEq, Eq)]
pub struct QueryPlan {
    /// The linear functional the server evaluates (under encryption).
    pub w: Vec<i64>,
    /// `Σ wᵢ q̃ᵢ²`.
    pub q_norm: i128,
}

impl std::fmt::Debug for QueryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The query is secret: never print it.
        f.write_str("QueryPlan { .. }")
    }
}

impl QueryPlan {
    /// Plans the query for an encoded vector.
    pub fn new(q: &[i64], weights: &[u32]) -> Self {
        let mut w: Vec<i64> = q.iter().map(|&v| -2 * v).collect();
        w.push(1);
        QueryPlan {
            w,
            q_norm: weighted_norm2(q, weights),
        }
    }
}

/// Integer square root, rounded down.
pub fn isqrt_floor(n: u128) -> u128 {
    if n < 2 {
        return n;
    }
    let mut x = ((n as f64).sqrt() as u128).min(u64::MAX as u128);
    while x.checked_mul(x).is_none_or(|sq| sq > n) {
        x -= 1;
    }
    while (x + 1).checked_mul(x + 1).is_some_and(|sq| sq <= n) {
        x += 1;
    }
    x
}

/// Integer square root, rounded up.
pub fn isqrt_ceil(n: u128) -> u128 {
    let f = isqrt_floor(n);
    if f.checked_mul(f) == Some(n) {
        f
    } else {
        f + 1
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn schema(d: usize) -> Schema {
        let names: Vec<String> = (0..d).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        Schema::uniform(&refs, 10.0, 16).unwrap()
    }

    #[test]
    fn rejects_bad_values_with_column_name() {
        let s = schema(2);
        let e = s.encode(&[1.0, f64::NAN]).unwrap_err().to_string();
        assert!(e.contains("c1") && e.contains("finite"), "{e}");
        assert!(s.encode(&[f64::INFINITY, 0.0]).is_err());
        let e = s.encode(&[1.0]).unwrap_err().to_string();
        assert!(e.contains("1 values") && e.contains("2 columns"), "{e}");
        let e = s.encode(&[1e9, 0.0]).unwrap_err().to_string();
        assert!(e.contains("c0") && e.contains("budget"), "{e}");
        assert_eq!(s.encode(&[-1.24, 6553.5]).unwrap(), vec![-12, 65535]);
        assert!(s.encode(&[6553.6, 0.0]).is_err());
    }

    #[test]
    fn overflow_check_names_a_column() {
        let s = schema(32);
        // 32 · (2·(2^16−1))² = 2^39 − 2^24 + 128 fits below 2^39 (mlhe opens below t/2 ≈ 2^39 − 2^16).
        s.check_overflow(1 << 39).unwrap();
        let mut heavy = schema(32);
        heavy.columns[5].weight = 4;
        let e = heavy.check_overflow(1 << 39).unwrap_err().to_string();
        assert!(e.contains("c5"), "{e}");
    }

    #[test]
    fn radius_threshold_is_exact_on_squares() {
        let s = schema(1);
        assert_eq!(s.radius_threshold(0.0).unwrap(), 0);
        assert_eq!(s.radius_threshold(0.5).unwrap(), 25);
        assert_eq!(s.radius_threshold(0.51).unwrap(), 26);
        assert!(s.radius_threshold(-1.0).is_err());
        assert!(s.radius_threshold(f64::NAN).is_err());
    }

    proptest! {
        #[test]
        fn plan_gives_exact_distance(x in prop::collection::vec(-65535i64..=65535, 1..33),
                                     seed in any::<u64>()) {
            let d = x.len();
            let q: Vec<i64> = (0..d).map(|i| ((seed.rotate_left(i as u32) % 131071) as i64) - 65535).collect();
            let w: Vec<u32> = (0..d).map(|i| 1 + (i as u32 % 3)).collect();
            let a = augment(&x, &w);
            let p = QueryPlan::new(&q, &w);
            let ip: i128 = a.iter().zip(&p.w).map(|(&a, &b)| a as i128 * b as i128).sum();
            prop_assert_eq!((ip + p.q_norm) as u128, squared_distance(&x, &q, &w));
        }

        #[test]
        fn isqrt_bounds(n in any::<u64>(), big in any::<bool>()) {
            let n = if big { u128::MAX - n as u128 } else { n as u128 };
            let f = isqrt_floor(n);
            prop_assert!(f * f <= n && (f + 1).checked_mul(f + 1).is_none_or(|s| s > n));
            let c = isqrt_ceil(n);
            prop_assert!(c.checked_mul(c).is_none_or(|s| s >= n) && (c == 0 || (c - 1) * (c - 1) < n));
        }
    }
}
