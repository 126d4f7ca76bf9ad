//! Synthetic data, encoding and the brute-force oracle.

use anyhow::Context;
use blindkd_engine::encoding::{squared_distance, Schema};
use blindkd_indexer::schema::{build_schema, encode_all, suggest_scale, Scaling};
use blindkd_indexer::synth::{generate, Distribution, SynthSpec};
use blindkd_keys::owner::OwnerRecord;
use rayon::prelude::*;

/// Bit budget of every encoded coordinate (the indexer's default).
pub const BITS: u32 = 16;

/// A generated table: indexed records plus held-out queries, all encoded with one schema.
pub struct Data {
    /// The encoding schema (uniform power-of-ten scale, 16 bits, the indexer's default).
    pub schema: Schema,
    /// Records to index.
    pub records: Vec<OwnerRecord>,
    /// Held-out query vectors in user units (what a doctor types).
    pub queries_user: Vec<Vec<f64>>,
    /// The same queries encoded.
    pub queries: Vec<Vec<i64>>,
}

/// Generates `n` records plus `q` held-out queries (the last `q` rows of the same table).
pub fn make(n: usize, d: usize, q: usize, dist: Distribution, seed: u64) -> anyhow::Result<Data> {
    let spec = SynthSpec {
        n: n + q,
        dims: d,
        seed,
        distribution: dist,
        medical_columns: true,
        classes: Vec::new(),
    };
    let ds = generate(&spec);
    let scale = suggest_scale(&ds, BITS);
    let schema = build_schema(&ds, &Scaling::Uniform(scale), BITS, None)
        .context("building the benchmark schema")?;
    let encoded = encode_all(&ds, &schema).context("encoding the benchmark table")?;
    let mut records = Vec::with_capacity(n);
    let mut queries_user = Vec::with_capacity(q);
    let mut queries = Vec::with_capacity(q);
    for (i, (r, x)) in ds.records.into_iter().zip(encoded).enumerate() {
        if i < n {
            records.push(OwnerRecord {
                id: r.id,
                class: r.class,
                x,
                payload: r.payload,
            });
        } else {
            queries_user.push(r.features);
            queries.push(x);
        }
    }
    Ok(Data {
        schema,
        records,
        queries_user,
        queries,
    })
}

/// Exact squared distances of every record to `q`, paired with the record's opaque id.
pub fn distances(data: &Data, ids: &[u64], q: &[i64]) -> Vec<(u128, u64)> {
    let w = data.schema.weights();
    data.records
        .par_iter()
        .zip(ids.par_iter())
        .map(|(r, &id)| (squared_distance(&r.x, q, &w), id))
        .collect()
}

/// The exact top-k, sorted by (distance, id): the engine's tie rule.
pub fn knn_truth(mut all: Vec<(u128, u64)>, k: usize) -> Vec<(u64, u128)> {
    let k = k.min(all.len());
    if k == 0 {
        return Vec::new();
    }
    if k < all.len() {
        all.select_nth_unstable(k - 1);
        all.truncate(k);
    }
    all.sort_unstable();
    all.into_iter().map(|(d, id)| (id, d)).collect()
}

/// Every record with squared distance `≤ thr`, sorted by (distance, id).
pub fn range_truth(all: &[(u128, u64)], thr: u128) -> Vec<(u64, u128)> {
    let mut v: Vec<(u128, u64)> = all.iter().copied().filter(|t| t.0 <= thr).collect();
    v.sort_unstable();
    v.into_iter().map(|(d, id)| (id, d)).collect()
}

/// A radius (user units) whose range holds at least `frac` of the records: the distance of the
/// `⌈frac·n⌉`-th nearest record. Returns the radius and its encoded threshold.
pub fn radius_for(schema: &Schema, all: &[(u128, u64)], frac: f64) -> anyhow::Result<(f64, u128)> {
    let n = all.len();
    let m = ((frac * n as f64).ceil() as usize).clamp(1, n);
    let mut d2s: Vec<u128> = all.iter().map(|t| t.0).collect();
    let (_, &mut target, _) = d2s.select_nth_unstable(m - 1);
    let mut r = (target as f64).sqrt() / schema.distance_scale;
    // Floating point may land one unit below the target: step up until it is included.
    for _ in 0..64 {
        let thr = schema.radius_threshold(r)?;
        if thr >= target {
            return Ok((r, thr));
        }
        r = f64::from_bits(r.to_bits() + 1);
    }
    anyhow::bail!("could not find a radius for squared distance {target}")
}

/// Same as `a == b` but says where they first differ.
pub fn compare(got: &[(u64, u128)], want: &[(u64, u128)]) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    Err(format!(
        "{} results, oracle {}; first difference at rank {first}: got {:?}, oracle {:?}",
        got.len(),
        want.len(),
        got.get(first),
        want.get(first)
    ))
}

/// Compares a float-metric result (kiddo) with the oracle: the distances must be identical, the
/// ids identical except among records tied at the last distance (kiddo has no tie rule).
pub fn compare_untied(got: &[(u64, u128)], want: &[(u64, u128)]) -> Result<(), String> {
    let mut g = got.to_vec();
    g.sort_unstable_by_key(|t| (t.1, t.0));
    let gd: Vec<u128> = g.iter().map(|t| t.1).collect();
    let wd: Vec<u128> = want.iter().map(|t| t.1).collect();
    if gd != wd {
        return compare(&g, want).map_err(|e| format!("distances differ: {e}"));
    }
    let last = wd.last().copied().unwrap_or(0);
    let strict = |v: &[(u64, u128)]| -> Vec<(u64, u128)> {
        v.iter().copied().filter(|t| t.1 < last).collect()
    };
    compare(&strict(&g), &strict(want)).map_err(|e| format!("ids differ: {e}"))
}
