//! Shared fuzz harness: the same entry points are replayed by `keys/tests/fuzz_regressions.rs`.
#![allow(clippy::unwrap_used)]

pub mod harness;
pub mod session;

/// Lets panics raised inside rqrr unwind instead of aborting.
///
/// rqrr 0.9 asserts on some degenerate grids; the engine runs it under `catch_unwind` and
/// turns that into an error (`engine/src/token/qr.rs`, `guarded`). libFuzzer's panic hook
/// aborts on every panic, caught or not, so the QR targets call this once: panics located in
/// rqrr's source unwind to that guard, and any other panic still aborts and is a finding.
pub fn let_rqrr_panics_unwind() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.location().is_some_and(|l| l.file().contains("/rqrr-")) {
                return;
            }
            abort(info);
        }));
    });
}
