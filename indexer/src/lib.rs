//! blindkd data-owner side: turning a clinical table into encoded feature vectors.
//!
//! - [`dataset`]: CSV / whitespace table ingestion with strict limits and clear errors.
//! - [`schema`]: the fixed-point encoding schema (uniform or z-score) and bulk encoding.
//! - [`synth`]: seeded synthetic clinical tables for demos, tests and benchmarks.
//!
//! Key generation and index building sit on top of these (a `build` module, added separately).
#![forbid(unsafe_code)]

pub mod build;
pub mod dataset;
pub mod schema;
pub mod synth;

pub use dataset::{
    load, load_reader, ClassSource, ColumnSel, Dataset, DatasetError, LoadOptions, LoadReport,
    MissingPolicy, Record,
};
pub use schema::{build_schema, encode_all, suggest_scale, Scaling, SchemaError};
pub use synth::{generate, write_csv, Distribution, SynthSpec};
