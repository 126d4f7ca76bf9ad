//! Fuzz target `index_file`: see `src/harness.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    blindkd_fuzz::harness::index_file(data);
});
