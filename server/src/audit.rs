//! The audit log: one JSON line per decision (session opened or refused, query, blocks, payload).
//! It names tokens, subjects, classes, counts and durations; never a feature value, a distance,
//! a query or a payload.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// Audit sink: a file (append), the `audit` tracing target, and an in-memory copy.
pub struct Audit {
    file: Option<Mutex<std::fs::File>>,
    lines: Mutex<Vec<String>>,
    refusals: Mutex<Bucket>,
    write_errors: std::sync::atomic::AtomicU64,
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

impl Audit {
    /// Opens the sink; `path` is appended to.
    pub fn open(path: Option<PathBuf>) -> anyhow::Result<Self> {
        let file = match path {
            Some(p) => {
                let mut o = std::fs::OpenOptions::new();
                o.create(true).append(true);
                // Private to the server from the moment it exists (an existing file keeps its mode).
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
                Some(Mutex::new(o.open(&p).map_err(|e| {
                    anyhow::anyhow!("cannot open audit log {}: {e}", p.display())
                })?))
            }
            None => None,
        };
        Ok(Audit {
            file,
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
        let mut obj = serde_json::json!({ "ts_ms": ts, "event": event });
        if let (Some(o), serde_json::Value::Object(f)) = (obj.as_object_mut(), fields) {
            o.extend(f);
        }
        let line = obj.to_string();
        tracing::info!(target: "audit", "{line}");
        if let Some(f) = &self.file {
            // A lost audit line is an alert, not a shrug: logged at error level and counted
            // (`blindkd_audit_write_errors_total`).
            let written = f
                .lock()
                .map_err(|_| std::io::Error::other("poisoned lock"))
                .and_then(|mut f| writeln!(f, "{line}").and_then(|()| f.flush()));
            if let Err(e) = written {
                self.write_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(error = %e, "AUDIT LINE NOT WRITTEN to the audit file");
            }
        }
        if let Ok(mut l) = self.lines.lock() {
            if l.len() >= KEEP {
                l.remove(0);
            }
            l.push(line);
        }
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
}
