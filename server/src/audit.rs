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
}

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
        })
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
