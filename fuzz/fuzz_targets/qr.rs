//! Fuzz target `qr`: see `src/harness.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    blindkd_fuzz::let_rqrr_panics_unwind();
    blindkd_fuzz::harness::qr(data);
});
