//! `blindkd audit verify` on a server's audit log (issue 17, A1): an intact chain passes and
//! prints its head; an edited line fails with the line number; a recorded head catches a log
//! cut short.
#![allow(clippy::unwrap_used)]

use blindkd_server::audit::Audit;

mod common;
use common::{blindkd, ok};

#[test]
fn audit_verify_finds_an_edited_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = dir.join("audit.log");
    let a = Audit::open(Some(log.clone())).unwrap();
    for i in 0..4 {
        a.record(
            "session_opened",
            serde_json::json!({ "sub": format!("doctor-{i}") }),
        );
    }
    let (seq, head) = a.head();
    drop(a);
    let out = ok(dir, &["audit", "verify", "audit.log"]);
    let anchor = format!("{seq}:{}", hex::encode(head));
    assert!(
        out.contains("chain intact, 4 lines") && out.contains(&anchor),
        "{out}"
    );
    ok(
        dir,
        &["audit", "verify", "audit.log", "--expect-head", &anchor],
    );

    // Someone with write access hides which doctor opened the second session.
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replace("doctor-1", "doctor-9")).unwrap();
    let o = blindkd(dir, &["audit", "verify", "audit.log"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "an edited audit log verified");
    assert!(err.contains("BROKEN at line 3"), "{err}");

    // Cutting the last line off leaves a valid prefix; the recorded head catches it.
    let cut: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(&log, cut).unwrap();
    ok(dir, &["audit", "verify", "audit.log"]);
    let o = blindkd(
        dir,
        &["audit", "verify", "audit.log", "--expect-head", &anchor],
    );
    assert!(
        !o.status.success(),
        "a log cut short passed its recorded head"
    );
}
