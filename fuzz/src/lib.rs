//! Shared fuzz harness: the same entry points are replayed by `engine/tests/fuzz_regressions.rs`.
#![allow(clippy::unwrap_used)]

pub mod harness;
