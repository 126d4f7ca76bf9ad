//! Fuzz target `qr_payload`: see `src/harness.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    blindkd_fuzz::let_rqrr_panics_unwind();
    blindkd_fuzz::harness::qr_payload(data);
});
