//! Index building: dataset → schema → encoded records → sealed index, written atomically.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use blindkd_engine::crypto::mlhe::Mlhe;
use blindkd_engine::crypto::plain::Plain;
use blindkd_engine::crypto::{Scheme, SchemeId};
use blindkd_engine::encoding::Schema;
use blindkd_engine::index::{id_hex, SchemeParams};
use blindkd_keys::owner::{build_index, BuildOptions, IndexRecord, OwnerKey, OwnerRecord};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::dataset::Dataset;
use crate::schema::{build_schema, encode_all, suggest_scale, Scaling};

/// Default bit budget per encoded coordinate.
pub const DEFAULT_BITS: u32 = 16;

/// What to build.
pub struct IndexJob {
    /// Scheme.
    pub scheme: SchemeId,
    /// Scaling; `None` picks the largest power-of-ten scale that fits the bit budget.
    pub scaling: Option<Scaling>,
    /// Bit budget.
    pub bits: u32,
    /// Column weights.
    pub weights: Option<Vec<u32>>,
    /// Records per leaf block; `None` = the scheme's block capacity.
    pub leaf_size: Option<usize>,
    /// Output file.
    pub out: PathBuf,
    /// Show a progress bar.
    pub progress: bool,
    /// The owner key file to update crash-safely (see [`build`]); `None` leaves saving to the caller.
    pub owner_key: Option<PathBuf>,
}

/// What was built (printed by `blindkd index`, `--json` too).
#[derive(Debug, Serialize)]
pub struct IndexReport {
    /// Index id (hex): the token audience.
    pub index_id: String,
    /// Output file.
    pub path: String,
    /// Scheme.
    pub scheme: String,
    /// Records indexed.
    pub records: usize,
    /// Rows skipped for missing cells.
    pub rows_skipped_missing: usize,
    /// Feature columns.
    pub columns: Vec<String>,
    /// Classes and their record counts.
    pub classes: Vec<(String, usize)>,
    /// Distance unit: a distance of 1.0 in results equals this many encoded units.
    pub distance_scale: f64,
    /// Seconds spent sealing (tree + masks + payloads).
    pub build_seconds: f64,
    /// Seconds spent writing.
    pub write_seconds: f64,
    /// File size.
    pub file_bytes: u64,
    /// Projected server memory once loaded (what `blindkd-server --max-index-memory` bounds).
    pub server_memory_bytes: u64,
}

/// Builds the schema (with the job's scaling) and the index, writes it atomically, and records the
/// index in the owner key (the caller saves the key).
///
/// Takes the dataset by value: its rows move into the sealed records instead of being copied
/// (at 10⁷ records every copy of the table is gigabytes; issue 12).
pub fn build(
    owner: &mut OwnerKey,
    ds: Dataset,
    job: &IndexJob,
) -> anyhow::Result<(IndexReport, Vec<u64>)> {
    if job.scheme == SchemeId::Plain {
        tracing::warn!(
            "scheme `plain` stores vectors in the clear: use it only for testing and benchmarks"
        );
    }
    let scaling = match &job.scaling {
        Some(s) => s.clone(),
        None => Scaling::Uniform(suggest_scale(&ds, job.bits)),
    };
    let schema = build_schema(&ds, &scaling, job.bits, job.weights.as_deref())?;
    let encoded = encode_all(&ds, &schema)?;
    let rows_skipped_missing = ds.report.rows_skipped_missing;
    let mut classes: Vec<(String, usize)> = Vec::new();
    for r in &ds.records {
        match classes.iter_mut().find(|(c, _)| c == &r.class) {
            Some((_, n)) => *n += 1,
            None => classes.push((r.class.clone(), 1)),
        }
    }
    classes.sort();
    let records: Vec<OwnerRecord> = ds
        .records
        .into_iter()
        .zip(encoded)
        .map(|(r, x)| OwnerRecord {
            id: r.id,
            class: r.class,
            x,
            payload: r.payload,
        })
        .collect();
    let n_records = records.len();
    let name = job
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "index".into());
    let t = Instant::now();
    let bar = if job.progress {
        let b = ProgressBar::new(records.len() as u64);
        b.set_style(
            ProgressStyle::with_template(
                "sealing {bar:40} {pos}/{len} records  {per_sec}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let progress = |n: u64| bar.set_position(n);
    let Sealed {
        bytes,
        record,
        record_ids: ids,
        server_memory_bytes,
    } = seal(
        owner,
        job.scheme,
        &name,
        &schema,
        &records,
        job.leaf_size,
        &progress,
    )?;
    drop(records);
    bar.finish_and_clear();
    let build_seconds = t.elapsed().as_secs_f64();
    // Crash-safe order: (1) write and fsync the new file under a temporary name, the slow part;
    // (2) record the new index in the owner key, keeping the old record of the same name; (3) rename
    // the file into place; (4) drop the old record. A crash in (1) changes nothing; after (3) the file
    // on disk has its record in the key (`find_index` prefers the newest record of a name).
    let t = Instant::now();
    let staged = blindkd_engine::atomic::stage(&job.out, &bytes)
        .with_context(|| format!("writing {}", job.out.display()))?;
    owner.indexes.push(record.clone());
    if let Some(k) = &job.owner_key {
        owner
            .save(k)
            .with_context(|| format!("saving {}", k.display()))?;
    }
    staged
        .commit()
        .with_context(|| format!("renaming into {}", job.out.display()))?;
    let write_seconds = t.elapsed().as_secs_f64();
    let report = IndexReport {
        index_id: id_hex(&record.index_id),
        path: job.out.display().to_string(),
        scheme: job.scheme.to_string(),
        records: n_records,
        rows_skipped_missing,
        columns: schema
            .column_names()
            .iter()
            .map(|s| s.to_string())
            .collect(),
        classes,
        distance_scale: schema.distance_scale,
        build_seconds,
        write_seconds,
        file_bytes: bytes.len() as u64,
        server_memory_bytes,
    };
    owner
        .indexes
        .retain(|r| r.name != record.name || r.index_id == record.index_id);
    if let Some(k) = &job.owner_key {
        owner
            .save(k)
            .with_context(|| format!("saving {}", k.display()))?;
    }
    Ok((report, ids))
}

/// A sealed index: its file bytes, the owner's record of it, the opaque record ids (in input
/// order) and the server memory it will take once loaded.
pub struct Sealed {
    /// The index file.
    pub bytes: Vec<u8>,
    /// The owner's record of the index.
    pub record: IndexRecord,
    /// Opaque record ids, in input order.
    pub record_ids: Vec<u64>,
    /// Projected server memory ([`blindkd_engine::index::projected_memory`]).
    pub server_memory_bytes: u64,
}

/// Seals records into index file bytes for any scheme.
pub fn seal(
    owner: &OwnerKey,
    scheme: SchemeId,
    name: &str,
    schema: &Schema,
    records: &[OwnerRecord],
    leaf_size: Option<usize>,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Sealed> {
    let mut index_id = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut index_id);
    macro_rules! go {
        ($s:expr, $params:expr, $default_leaf:expr) => {{
            let s = $s;
            let opts = BuildOptions {
                leaf_size: leaf_size.unwrap_or($default_leaf),
                progress: Some(progress),
                index_id: Some(index_id),
            };
            let out = build_index(&s, $params, owner, name, schema, records, &opts)?;
            let server_memory_bytes =
                blindkd_engine::index::projected_memory(&out.header, &out.body, |b| {
                    s.block_rows(b)
                });
            let bytes = out.to_file_bytes()?;
            Sealed {
                bytes,
                record: out.record,
                record_ids: out.record_ids,
                server_memory_bytes,
            }
        }};
    }
    Ok(match scheme {
        SchemeId::Plain => go!(Plain::new(), SchemeParams::Plain, 1024),
        SchemeId::Mlhe => {
            let m = Mlhe::new()?;
            let p = SchemeParams::Mlhe(m.params());
            go!(m, p, blindkd_engine::crypto::mlhe::DEGREE)
        }
        #[cfg(feature = "paper-she")]
        SchemeId::PaperShe => {
            let class_key = owner.class_key(SchemeId::PaperShe, "", &index_id);
            let (s, _key) =
                blindkd_keys::crypto::she::PaperSheClient::setup(&class_key, &index_id)?;
            let p = SchemeParams::PaperShe(s.param_bytes()?);
            go!(s, p, 256)
        }
        #[cfg(not(feature = "paper-she"))]
        SchemeId::PaperShe => {
            bail!("this build has no `paper-she` support (cargo feature `paper-she`)")
        }
        #[allow(unreachable_patterns)]
        other => bail!("unsupported scheme {other}"),
    })
}
