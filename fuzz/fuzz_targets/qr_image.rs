//! Fuzz target `qr_image`: see `src/harness.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    blindkd_fuzz::harness::qr_image(data);
});
