//! Exporters: OTLP/gRPC, OTLP-JSON lines to a file, and the terminal waterfall.
//!
//! Accounting: every span the pipeline produces is counted once, as exported or dropped for a
//! reason, so `produced = exported + Σ dropped` holds at any quiescent moment and at exit.
pub mod encode;
pub mod json;
pub mod metrics;
pub mod otlp;
pub mod request_metrics;
pub mod retry;
pub mod service_graph;
pub mod transform;
pub mod waterfall;

use std::{collections::BTreeMap, time::Instant};

/// Why spans were not exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// The export queue was full.
    QueueFull,
    /// Retries ran out of time.
    RetryExhausted,
    /// The backend refused them (non-retryable status, or partial success).
    Rejected,
    /// The agent stopped before they could be sent.
    Shutdown,
}

impl DropReason {
    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::RetryExhausted => "retry_exhausted",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// Span accounting of one exporter.
#[derive(Debug, Default, Clone)]
pub struct Accounting {
    /// Spans handed to the exporter.
    pub produced: u64,
    /// Spans the backend accepted.
    pub exported: u64,
    /// Dropped spans by reason.
    pub dropped: BTreeMap<DropReason, u64>,
    /// Retried attempts.
    pub retries: u64,
    /// Successful requests.
    pub requests_ok: u64,
    /// The last error seen.
    pub last_error: Option<String>,
    /// Set at shutdown: retries stop at this instant.
    pub shutdown_deadline: Option<Instant>,
    /// The request metrics' data points, accounted apart from spans.
    pub points: PointAccounting,
}

/// Data-point accounting of the request metrics' exports: `produced = exported + dropped` once
/// nothing is in flight. A point is one series' histogram at one export (cumulative: a dropped
/// point loses no request, the next export carries its counts).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PointAccounting {
    /// Points handed to the exporter.
    pub produced: u64,
    /// Points the backend accepted.
    pub exported: u64,
    /// Points dropped (queue full, refused, retries exhausted, shutdown).
    pub dropped: u64,
    /// The last export error.
    pub last_error: Option<String>,
}

impl Accounting {
    /// Counts `n` dropped spans.
    pub fn count_drop(&mut self, reason: DropReason, n: u64) {
        if n > 0 {
            *self.dropped.entry(reason).or_default() += n;
        }
    }

    /// Dropped spans for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(&reason).copied().unwrap_or(0)
    }

    /// All dropped spans.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// Spans accepted but neither exported nor dropped yet (queued or in flight).
    pub fn in_flight(&self) -> u64 {
        self.produced.saturating_sub(self.exported + self.dropped_total())
    }

    /// `exported=… dropped{reason=…}` for status lines.
    pub fn summary(&self) -> String {
        let drops: Vec<String> = self.dropped.iter().map(|(r, n)| format!("{}={n}", r.name())).collect();
        format!(
            "produced={} exported={} dropped={{{}}} in_flight={} retries={}",
            self.produced,
            self.exported,
            drops.join(","),
            self.in_flight(),
            self.retries
        )
    }
}
