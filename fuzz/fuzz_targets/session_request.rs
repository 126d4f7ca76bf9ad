//! Fuzz target `session_request`: see `src/session.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = blindkd_fuzz::session::session_request(data);
});
