//! Fuzz target `mlhe_query`: see `src/harness.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    blindkd_fuzz::harness::mlhe_query(data);
});
