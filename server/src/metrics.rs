//! Prometheus text metrics from plain atomics: counts and time sums, never data values.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Server counters.
#[derive(Default)]
pub struct Metrics {
    /// Sessions opened.
    pub sessions_opened: AtomicU64,
    /// Sessions refused.
    pub sessions_refused: AtomicU64,
    /// Queries started.
    pub queries_started: AtomicU64,
    /// Pivot blocks evaluated.
    pub pivot_blocks: AtomicU64,
    /// Leaf blocks evaluated.
    pub leaf_blocks: AtomicU64,
    /// Payloads served.
    pub payloads: AtomicU64,
    /// Requests refused with 429 `overloaded`.
    pub overloaded: AtomicU64,
    /// Error responses.
    pub errors: AtomicU64,
    /// Connections dropped at the cap because every admitted one was busy.
    pub connections_refused: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub connections_evicted: AtomicU64,
    /// Microseconds spent evaluating.
    pub eval_micros: AtomicU64,
}

impl Metrics {
    /// Adds to a counter.
    pub fn add(c: &AtomicU64, v: u64) {
        c.fetch_add(v, Ordering::Relaxed);
    }

    /// Renders the Prometheus text format.
    pub fn render(
        &self,
        sessions: usize,
        queries: usize,
        in_flight: usize,
        connections: usize,
        audit_write_errors: u64,
    ) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP blindkd_{name} {help}\n# TYPE blindkd_{name} counter\nblindkd_{name} {v}"
            );
        };
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            "sessions_opened_total",
            "Sessions opened.",
            g(&self.sessions_opened),
        );
        counter(
            "sessions_refused_total",
            "Session requests refused.",
            g(&self.sessions_refused),
        );
        counter(
            "queries_started_total",
            "Queries started.",
            g(&self.queries_started),
        );
        counter(
            "pivot_blocks_evaluated_total",
            "Pivot blocks evaluated.",
            g(&self.pivot_blocks),
        );
        counter(
            "leaf_blocks_evaluated_total",
            "Leaf blocks evaluated.",
            g(&self.leaf_blocks),
        );
        counter(
            "payloads_served_total",
            "Sealed payloads served.",
            g(&self.payloads),
        );
        counter(
            "overloaded_total",
            "Requests refused for back-pressure (429).",
            g(&self.overloaded),
        );
        counter("errors_total", "Error responses.", g(&self.errors));
        counter(
            "audit_write_errors_total",
            "Audit lines that could not be written to the audit file (alert on any).",
            audit_write_errors,
        );
        counter(
            "connections_refused_total",
            "Connections dropped at the cap (every admitted one busy).",
            g(&self.connections_refused),
        );
        counter(
            "connections_evicted_total",
            "Idle connections closed to admit a new one.",
            g(&self.connections_evicted),
        );
        counter(
            "eval_seconds_total",
            "Seconds spent in homomorphic evaluation (integer).",
            g(&self.eval_micros) / 1_000_000,
        );
        let mut gauge = |name: &str, help: &str, v: usize| {
            let _ = writeln!(
                out,
                "# HELP blindkd_{name} {help}\n# TYPE blindkd_{name} gauge\nblindkd_{name} {v}"
            );
        };
        gauge("sessions_live", "Live sessions.", sessions);
        gauge("queries_live", "Live queries.", queries);
        gauge(
            "evaluations_in_flight",
            "Evaluations running now.",
            in_flight,
        );
        gauge(
            "connections_open",
            "Client connections admitted on the public listener.",
            connections,
        );
        out
    }
}
