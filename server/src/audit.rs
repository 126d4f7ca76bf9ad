//! The audit log: one JSON line per decision (session opened or refused, query, blocks, payload).
//! It names tokens, subjects, classes, counts and durations; never a feature value, a distance,
//! a query or a payload.
//!
//! # The hash chain
//!
//! Every line carries `seq` (0, 1, 2, … across restarts) and `prev`, the hex BLAKE3 of
//! [`CHAIN_DOMAIN`] ‖ the previous line's bytes (64 zeros before the first line). Deleting,
//! inserting, reordering or editing a line breaks the chain at that point; `blindkd audit verify`
//! finds it. A chain has no key, so whoever can write the file could recompute it from the edit
//! onwards: the hospital anchors it by recording the head `audit verify` prints (or the server
//! logs at start and stop) and passing it back as `--expect-head`.
//!
//! Lines the server could not write (a full disk) or a line torn by a crash are a *gap*: the next
//! line that is written starts on a fresh line, chains to the last line that was written whole,
//! and carries `after_gap` (how many lines were lost; 0 for a torn tail). `audit verify` reports
//! every gap; only a broken chain is tampering.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Domain separation of the chain hash.
pub const CHAIN_DOMAIN: &[u8] = b"blindkd 2026-11 audit chain v1";

/// The chain hash of one line (without its newline).
pub fn line_hash(line: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(CHAIN_DOMAIN);
    h.update(line);
    *h.finalize().as_bytes()
}

/// Audit sink: a file (append), the `audit` tracing target, and an in-memory copy.
pub struct Audit {
    chain: Mutex<Chain>,
    lines: Mutex<Vec<String>>,
    refusals: Mutex<Bucket>,
    write_errors: std::sync::atomic::AtomicU64,
}

/// The file and the head of its chain. One lock: a line's `prev` and its write are one step.
struct Chain {
    file: Option<std::fs::File>,
    seq: u64,
    head: [u8; 32],
    /// Lines not written since the last line that was; `Some(0)` for a torn tail found at open.
    gap: Option<u64>,
}

/// A token bucket for refusal lines: anyone can cause a refusal, so refusals must not be able to
/// flood the log (or the disk, or the synchronous writer every request waits on).
struct Bucket {
    tokens: f64,
    last: std::time::Instant,
    suppressed: u64,
}

/// Refusal lines allowed in a burst.
const REFUSAL_BURST: f64 = 50.0;
/// Refusal lines allowed per second, sustained.
const REFUSALS_PER_SEC: f64 = 10.0;

/// Lines kept in memory.
const KEEP: usize = 10_000;

/// The head of an existing file: (next seq, head hash, torn tail bytes).
fn resume(f: &mut std::fs::File, path: &Path) -> anyhow::Result<(u64, [u8; 32], u64)> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok((0, [0; 32], 0));
    }
    // The last complete line is within the last 64 KiB (lines are a few hundred bytes).
    let start = len.saturating_sub(64 << 10);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    let torn = tail.iter().rev().take_while(|&&b| b != b'\n').count();
    let complete = &tail[..tail.len() - torn];
    let last = complete
        .strip_suffix(b"\n")
        .map(|c| c.rsplit(|&b| b == b'\n').next().unwrap_or(c))
        .filter(|l| !l.is_empty());
    let Some(last) = last else {
        if torn > 0 && start == 0 && complete.is_empty() {
            return Ok((0, [0; 32], torn as u64));
        }
        anyhow::bail!(
            "the audit log {} does not end in a chained line; check it with `blindkd audit verify`",
            path.display()
        );
    };
    let seq = serde_json::from_slice::<serde_json::Value>(last)
        .ok()
        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the last line of the audit log {} is not a chained audit line (an older format or \
                 an edit); move the file aside and check it with `blindkd audit verify`",
                path.display()
            )
        })?;
    Ok((seq + 1, line_hash(last), torn as u64))
}

impl Audit {
    /// Opens the sink; `path` is appended to, continuing its chain.
    pub fn open(path: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut chain = Chain {
            file: None,
            seq: 0,
            head: [0; 32],
            gap: None,
        };
        if let Some(p) = path {
            let mut o = std::fs::OpenOptions::new();
            o.create(true).append(true).read(true);
            // Private to the server from the moment it exists (an existing file keeps its mode).
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            let mut f = o
                .open(&p)
                .map_err(|e| anyhow::anyhow!("cannot open audit log {}: {e}", p.display()))?;
            let (seq, head, torn) = resume(&mut f, &p)?;
            if torn > 0 {
                tracing::warn!(path = %p.display(), bytes = torn, "the audit log ends in a torn line (a crash mid-write); the chain continues after it");
                chain.gap = Some(0);
            }
            tracing::info!(path = %p.display(), seq, head = %hex::encode(head), "audit log opened");
            chain.file = Some(f);
            chain.seq = seq;
            chain.head = head;
        }
        Ok(Audit {
            chain: Mutex::new(chain),
            lines: Mutex::new(Vec::new()),
            refusals: Mutex::new(Bucket {
                tokens: REFUSAL_BURST,
                last: std::time::Instant::now(),
                suppressed: 0,
            }),
            write_errors: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Records a refusal, rate-limited: past the budget, refusals are counted and the next line
    /// that is written says how many were suppressed (`"suppressed": n`).
    pub fn record_refusal(&self, event: &str, mut fields: serde_json::Value) {
        let suppressed = {
            let Ok(mut b) = self.refusals.lock() else {
                return;
            };
            let now = std::time::Instant::now();
            let dt = now.duration_since(b.last).as_secs_f64();
            b.last = now;
            b.tokens = (b.tokens + dt * REFUSALS_PER_SEC).min(REFUSAL_BURST);
            if b.tokens < 1.0 {
                b.suppressed += 1;
                return;
            }
            b.tokens -= 1.0;
            std::mem::take(&mut b.suppressed)
        };
        if suppressed > 0 {
            if let Some(o) = fields.as_object_mut() {
                o.insert("suppressed".into(), suppressed.into());
            }
        }
        self.record(event, fields);
    }

    /// Records one decision.
    pub fn record(&self, event: &str, fields: serde_json::Value) {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let Ok(mut chain) = self.chain.lock() else {
            return;
        };
        let mut obj = serde_json::json!({
            "ts_ms": ts,
            "event": event,
            "seq": chain.seq,
            "prev": hex::encode(chain.head),
        });
        if let (Some(o), serde_json::Value::Object(f)) = (obj.as_object_mut(), fields) {
            for (k, v) in f {
                // The chain fields are the server's, never a caller's.
                if !["seq", "prev", "after_gap"].contains(&k.as_str()) {
                    o.insert(k, v);
                }
            }
            if let Some(lost) = chain.gap {
                o.insert("after_gap".into(), lost.into());
            }
        }
        let line = obj.to_string();
        tracing::info!(target: "audit", "{line}");
        let gap = chain.gap;
        let written = match &mut chain.file {
            // After a gap the line starts on a fresh line: a partial write before it stays a
            // fragment of its own.
            Some(f) => {
                let lead = if gap.is_some() { "\n" } else { "" };
                f.write_all(format!("{lead}{line}\n").as_bytes())
                    .and_then(|()| f.flush())
            }
            None => Ok(()),
        };
        match written {
            Ok(()) => {
                chain.seq += 1;
                chain.head = line_hash(line.as_bytes());
                chain.gap = None;
            }
            Err(e) => {
                // A lost audit line is an alert, not a shrug: logged at error level and counted
                // (`blindkd_audit_write_errors_total`); the next line written marks the gap.
                chain.gap = Some(gap.unwrap_or(0) + 1);
                self.write_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(error = %e, "AUDIT LINE NOT WRITTEN to the audit file");
            }
        }
        drop(chain);
        if let Ok(mut l) = self.lines.lock() {
            if l.len() >= KEEP {
                l.remove(0);
            }
            l.push(line);
        }
    }

    /// The chain head: the next `seq` and the hash the next line will carry as `prev`.
    pub fn head(&self) -> (u64, [u8; 32]) {
        self.chain
            .lock()
            .map(|c| (c.seq, c.head))
            .unwrap_or((0, [0; 32]))
    }

    /// Audit lines that could not be written to the file.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The lines kept in memory.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// What `audit verify` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// Chained lines checked.
    pub lines: u64,
    /// The head: the next `seq` and the hash of the last line.
    pub head: (u64, [u8; 32]),
    /// Gaps: (line number in the file of the line after the gap, lines lost; 0 = a torn line).
    pub gaps: Vec<(u64, u64)>,
}

/// A broken chain: where and why.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct ChainBroken {
    /// 1-based line number in the file.
    pub line: u64,
    /// What is wrong.
    pub why: String,
}

/// Checks a whole audit log's chain (see the module docs). `expect_head`, a head recorded
/// earlier (the next `seq` then and the hash of the line before it), must lie on the chain.
pub fn verify(
    mut r: impl std::io::BufRead,
    expect_head: Option<(u64, [u8; 32])>,
) -> Result<Verified, ChainBroken> {
    let mut v = Verified::default();
    let mut fragments = 0u64;
    let mut anchor_seen = expect_head.is_none_or(|h| h == (0, [0; 32]));
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        let read = r.read_until(b'\n', &mut buf).map_err(|e| ChainBroken {
            line: n + 1,
            why: format!("read error: {e}"),
        })?;
        if read == 0 {
            break;
        }
        n += 1;
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let broken = |why: String| ChainBroken { line: n, why };
        let parsed = serde_json::from_slice::<serde_json::Value>(line).ok();
        let Some(obj) = parsed.as_ref().and_then(|p| p.as_object()) else {
            fragments += 1;
            continue;
        };
        let seq = obj.get("seq").and_then(serde_json::Value::as_u64);
        let prev = obj.get("prev").and_then(serde_json::Value::as_str);
        let (Some(seq), Some(prev)) = (seq, prev) else {
            return Err(broken("not a chained audit line (no seq or prev)".into()));
        };
        let after_gap = obj.get("after_gap").and_then(serde_json::Value::as_u64);
        if fragments > 0 && after_gap.is_none() {
            return Err(broken(format!(
                "{fragments} unreadable line(s) before it and no gap marker: lines were edited"
            )));
        }
        if seq != v.head.0 {
            return Err(broken(format!(
                "seq {seq}, expected {}: lines were removed, added or reordered",
                v.head.0
            )));
        }
        if prev != hex::encode(v.head.1) {
            return Err(broken(
                "its prev hash does not match the line before: a line was edited, removed or \
                 inserted"
                    .into(),
            ));
        }
        if let Some(lost) = after_gap {
            v.gaps.push((n, lost));
        }
        fragments = 0;
        v.head = (seq + 1, line_hash(line));
        v.lines += 1;
        if expect_head == Some(v.head) {
            anchor_seen = true;
        }
    }
    if !anchor_seen {
        return Err(ChainBroken {
            line: n,
            why: "the recorded head is not on this chain: the log was rewritten or cut short"
                .into(),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Issue 17, finding A1: the audit file is private to the server.
    #[cfg(unix)]
    #[test]
    fn the_audit_file_is_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let a = Audit::open(Some(p.clone())).unwrap();
        a.record("test", serde_json::json!({}));
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "audit log mode {mode:o}");
        assert_eq!(a.write_errors(), 0);
    }

    /// Issue 17, finding A1: a write failure is counted, not ignored (`/dev/full` lost lines
    /// silently).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_audit_write_is_counted() {
        let a = Audit::open(Some("/dev/full".into())).unwrap();
        a.record("test", serde_json::json!({}));
        a.record("test", serde_json::json!({}));
        assert_eq!(a.write_errors(), 2);
        assert_eq!(a.lines().len(), 2, "the lines are still kept in memory");
    }

    fn log_with(lines: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let a = Audit::open(Some(p.clone())).unwrap();
        for i in 0..lines {
            a.record(
                "query",
                serde_json::json!({ "n": i, "seq": 99, "prev": "forged" }),
            );
        }
        (dir, p)
    }

    fn check(p: &Path) -> Result<Verified, ChainBroken> {
        verify(
            std::io::BufReader::new(std::fs::File::open(p).unwrap()),
            None,
        )
    }

    /// Issue 17, finding A1: every edit, deletion, insertion or reordering breaks the chain.
    #[test]
    fn the_chain_detects_edits() {
        let (_d, p) = log_with(5);
        let v = check(&p).unwrap();
        assert_eq!((v.lines, v.head.0, v.gaps.len()), (5, 5, 0));
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let join = |ls: Vec<&str>| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
        let edited = text.replacen("\"n\":2", "\"n\":7", 1);
        let mut dropped = lines.clone();
        dropped.remove(2);
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        let mut blank = lines.clone();
        blank.insert(3, "");
        for (what, bad, at) in [
            ("edited", edited, 4),
            ("dropped", join(dropped), 3),
            ("swapped", join(swapped), 2),
            ("blank line", join(blank), 5),
        ] {
            std::fs::write(&p, bad).unwrap();
            let e = check(&p).unwrap_err();
            assert_eq!(e.line, at, "{what}: {e}");
        }
        // Cutting the end off keeps a valid chain; a recorded head catches it.
        std::fs::write(&p, join(lines[..3].to_vec())).unwrap();
        let short = check(&p).unwrap();
        assert_eq!(short.lines, 3);
        let r = verify(
            std::io::BufReader::new(std::fs::File::open(&p).unwrap()),
            Some(v.head),
        );
        assert!(r.is_err(), "a truncated log passed its recorded head");
        std::fs::write(&p, &text).unwrap();
        let r = verify(
            std::io::BufReader::new(std::fs::File::open(&p).unwrap()),
            Some(short.head),
        );
        assert_eq!(r.unwrap().lines, 5, "an earlier head lies on the chain");
    }

    /// A restart continues the chain; a torn last line (a crash) is a reported gap, not a break.
    #[test]
    fn the_chain_survives_a_restart_and_a_torn_line() {
        let (_d, p) = log_with(3);
        let a = Audit::open(Some(p.clone())).unwrap();
        assert_eq!(a.head().0, 3);
        a.record("after_restart", serde_json::json!({}));
        drop(a);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"ts_ms\":1,\"ev").unwrap();
        drop(f);
        let a = Audit::open(Some(p.clone())).unwrap();
        a.record("after_crash", serde_json::json!({}));
        let v = check(&p).unwrap();
        assert_eq!((v.lines, v.gaps.clone()), (5, vec![(6, 0)]));
    }

    /// Lines lost to a write error are a gap the next written line reports.
    #[cfg(target_os = "linux")]
    #[test]
    fn lost_lines_are_counted_in_the_chain() {
        let a = Audit::open(Some("/dev/full".into())).unwrap();
        a.record("x", serde_json::json!({}));
        a.record("y", serde_json::json!({}));
        assert_eq!(a.head().0, 0, "unwritten lines do not advance the chain");
        let last: serde_json::Value = serde_json::from_str(&a.lines()[1]).unwrap();
        assert_eq!(last["after_gap"], 1);
    }
}
