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
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .map_err(|e| anyhow::anyhow!("cannot open audit log {}: {e}", p.display()))?,
            )),
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
            if let Ok(mut f) = f.lock() {
                let _ = writeln!(f, "{line}");
            }
        }
        if let Ok(mut l) = self.lines.lock() {
            if l.len() >= KEEP {
                l.remove(0);
            }
            l.push(line);
        }
    }

    /// The lines kept in memory.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}
