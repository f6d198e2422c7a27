//! Tail sampling: this node's part of each trace is held until it is finished (see
//! [`traces`](super::traces)), then kept or dropped on what it shows:
//!
//! 1. an error in any span (`errors`), or a span at least `latency` long: always kept;
//! 2. every other trace: kept with the baseline probability — a fixed `ratio`, or, with
//!    `per_operation`, one adapted every second so that each operation (the service and the
//!    name of the trace's first span here, e.g. `GET /users/{id}`) keeps about that many traces
//!    per second: busy endpoints get low rates, quiet ones are kept whole (Jaeger's adaptive
//!    sampling, decided here instead of in a collector);
//! 3. `max_per_sec` caps the traces kept by step 2 (a token bucket), so the cost is predictable
//!    whatever the traffic; traces kept for an error or their latency are never refused.
//!
//! The baseline decision is made on the trace id, as the head sampler's ratio is: agents on
//! different nodes with the same probability keep the same traces. An error or a slow span is
//! only seen by the node it happens on; a trace that crosses nodes is kept there, and upstream
//! nodes keep their part by the baseline (a collector that receives every span can decide on
//! the whole trace).
//!
//! Accounting: every span offered is kept, dropped or still held; the counts reconcile.
use std::{
    collections::VecDeque,
    hash::BuildHasher as _,
    time::{Duration, Instant},
};

use super::{Sampler, traces::Assembler};
use crate::correlate::span::SpanRecord;

/// Trace ids are random and operation keys are hashes already: foldhash, not SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Tail sampling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TailConfig {
    /// Keep every trace with an error span.
    pub errors: bool,
    /// Keep every trace with a span at least this long.
    pub latency: Option<Duration>,
    /// Fraction of the other traces kept (unless `per_operation` is set).
    pub ratio: f64,
    /// Adaptive baseline: about this many traces per second per operation.
    pub per_operation: Option<f64>,
    /// At most this many baseline traces per second.
    pub max_per_sec: Option<f64>,
    /// How long a trace must be idle before it is decided.
    pub wait: Duration,
    /// Spans held at most; beyond, the oldest trace is decided early.
    pub max_spans: usize,
}

impl Default for TailConfig {
    fn default() -> Self {
        TailConfig {
            errors: false,
            latency: None,
            ratio: 1.0,
            per_operation: None,
            max_per_sec: None,
            wait: Duration::from_secs(2),
            // About 19 MiB held at most (1.2 KB a span, `cargo xtask bench` R13).
            max_spans: 16_384,
        }
    }
}

/// What tail sampling did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TailStats {
    /// Traces kept for an error.
    pub kept_error: u64,
    /// Traces kept for a slow span (and no error).
    pub kept_slow: u64,
    /// Traces kept by the baseline.
    pub kept_baseline: u64,
    /// Traces dropped.
    pub dropped: u64,
    /// Of those, traces the baseline kept but the rate cap refused.
    pub rate_limited: u64,
    /// Spans of kept traces (late ones included).
    pub spans_kept: u64,
    /// Spans of dropped traces (late ones included).
    pub spans_dropped: u64,
    /// Traces decided before they finished, to make room in a full buffer.
    pub decided_early: u64,
    /// Spans that arrived after their trace was decided, and followed that decision.
    pub late_spans: u64,
    /// Operations beyond the table's cap, which share one adaptive rate.
    pub operations_overflow: u64,
}

impl TailStats {
    /// Every count by name, as the summary reports them.
    pub fn counts(&self) -> [(&'static str, u64); 10] {
        [
            ("kept_error", self.kept_error),
            ("kept_slow", self.kept_slow),
            ("kept_baseline", self.kept_baseline),
            ("dropped", self.dropped),
            ("rate_limited", self.rate_limited),
            ("spans_kept", self.spans_kept),
            ("spans_dropped", self.spans_dropped),
            ("decided_early", self.decided_early),
            ("late_spans", self.late_spans),
            ("operations_overflow", self.operations_overflow),
        ]
    }
}

/// Operations with their own adaptive rate; more share one.
const MAX_OPERATIONS: usize = 4096;
/// Decisions remembered for spans that arrive late.
const DECISIONS: usize = 65_536;
/// How often adaptive rates are updated.
const WINDOW: Duration = Duration::from_secs(1);

struct Operation {
    /// Traces seen in the current window.
    seen: u64,
    /// Traces per second, smoothed over windows; `None` until the first window closes.
    rate: Option<f64>,
    /// Probability of keeping one of its traces by the baseline.
    p: f64,
}

/// The tail sampling stage.
pub struct TailSampler {
    cfg: TailConfig,
    traces: Assembler,
    /// Decisions of recent traces (true: kept), for their late spans; bounded, oldest forgotten.
    decided: HashMap<[u8; 16], bool>,
    decided_order: VecDeque<[u8; 16]>,
    ops: HashMap<u64, Operation>,
    op_hasher: foldhash::fast::RandomState,
    window_start: Instant,
    tokens: f64,
    refilled: Instant,
    stats: TailStats,
}

/// Why a trace is kept.
enum Verdict {
    Error,
    Slow,
    Baseline,
    Drop { rate_limited: bool },
}

impl TailSampler {
    pub fn new(cfg: TailConfig, now: Instant) -> Self {
        let tokens = cfg.max_per_sec.unwrap_or(0.0).max(1.0);
        TailSampler {
            traces: Assembler::new(cfg.wait, cfg.max_spans),
            cfg,
            decided: HashMap::default(),
            decided_order: VecDeque::new(),
            ops: HashMap::default(),
            op_hasher: Default::default(),
            window_start: now,
            tokens,
            refilled: now,
            stats: TailStats::default(),
        }
    }

    pub fn stats(&self) -> &TailStats {
        &self.stats
    }

    /// Spans held, waiting for their trace to finish.
    pub fn held(&self) -> usize {
        self.traces.held()
    }

    /// The baseline probability an operation has now (1.0 for one not seen yet).
    #[cfg(test)]
    fn probability(&self, pid: u32, name: &str) -> f64 {
        match self.cfg.per_operation {
            Some(_) => self.ops.get(&self.op_key(pid, name)).map_or(1.0, |o| o.p),
            None => self.cfg.ratio,
        }
    }

    /// Takes finished spans. Returns the traces kept meanwhile: spans of traces decided before
    /// (late spans of a kept trace), and traces decided early to make room.
    pub fn add(&mut self, spans: Vec<SpanRecord>, now: Instant) -> Vec<Vec<SpanRecord>> {
        let mut out = Vec::new();
        let mut late: HashMap<[u8; 16], Vec<SpanRecord>> = HashMap::default();
        for s in spans {
            if let Some(&keep) = self.decided.get(&s.trace_id) {
                self.stats.late_spans += 1;
                if keep {
                    self.stats.spans_kept += 1;
                    late.entry(s.trace_id).or_default().push(s);
                } else {
                    self.stats.spans_dropped += 1;
                }
                continue;
            }
            if let Some(pushed_out) = self.traces.add(s, now) {
                self.stats.decided_early += 1;
                if let Some(t) = self.decide(pushed_out, now) {
                    out.push(t);
                }
            }
        }
        out.extend(late.into_values());
        out
    }

    /// Decides the traces finished by `now` (every held one with `all`); returns those kept.
    pub fn take_finished(&mut self, now: Instant, all: bool) -> Vec<Vec<SpanRecord>> {
        self.update_rates(now);
        let finished = self.traces.take_finished(now, all);
        finished.into_iter().filter_map(|t| self.decide(t, now)).collect()
    }

    fn op_key(&self, pid: u32, name: &str) -> u64 {
        self.op_hasher.hash_one((pid, name))
    }

    fn decide(&mut self, trace: Vec<SpanRecord>, now: Instant) -> Option<Vec<SpanRecord>> {
        let verdict = self.verdict(&trace, now);
        let n = trace.len() as u64;
        let keep = !matches!(verdict, Verdict::Drop { .. });
        match verdict {
            Verdict::Error => self.stats.kept_error += 1,
            Verdict::Slow => self.stats.kept_slow += 1,
            Verdict::Baseline => self.stats.kept_baseline += 1,
            Verdict::Drop { rate_limited } => {
                self.stats.dropped += 1;
                self.stats.rate_limited += u64::from(rate_limited);
            }
        }
        if let Some(first) = trace.first() {
            self.remember(first.trace_id, keep);
        }
        if keep {
            self.stats.spans_kept += n;
            Some(trace)
        } else {
            self.stats.spans_dropped += n;
            None
        }
    }

    fn verdict(&mut self, trace: &[SpanRecord], now: Instant) -> Verdict {
        let Some(first) = trace.first() else {
            return Verdict::Drop { rate_limited: false };
        };
        // The operation is counted whatever the verdict: its rate is its traffic.
        let p = self.baseline(trace);
        if self.cfg.errors && trace.iter().any(|s| s.error) {
            return Verdict::Error;
        }
        if self.cfg.latency.is_some_and(|l| trace.iter().any(|s| s.duration_ns() >= l.as_nanos() as u64)) {
            return Verdict::Slow;
        }
        if !Sampler::Ratio(p).sample(&first.trace_id, None) {
            return Verdict::Drop { rate_limited: false };
        }
        if let Some(rate) = self.cfg.max_per_sec {
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.refilled = now;
            self.tokens = (self.tokens + elapsed * rate).min(rate.max(1.0));
            if self.tokens < 1.0 {
                return Verdict::Drop { rate_limited: true };
            }
            self.tokens -= 1.0;
        }
        Verdict::Baseline
    }

    /// The baseline probability for `trace`, counting it for its operation's rate.
    fn baseline(&mut self, trace: &[SpanRecord]) -> f64 {
        if self.cfg.per_operation.is_none() {
            return self.cfg.ratio;
        }
        // The operation: the trace's first span on this node (no parent here, earliest start).
        // Most traces have a few spans here: a scan beats building a set.
        let ids: Option<std::collections::HashSet<[u8; 8], foldhash::fast::RandomState>> =
            (trace.len() > 16).then(|| trace.iter().map(|s| s.span_id).collect());
        let here = |p: &[u8; 8]| match &ids {
            Some(ids) => ids.contains(p),
            None => trace.iter().any(|o| o.span_id == *p),
        };
        let Some(root) =
            trace.iter().filter(|s| s.parent_id.is_none_or(|p| !here(&p))).min_by_key(|s| s.start_ns)
        else {
            return 1.0;
        };
        let mut key = self.op_key(root.pid, &root.name);
        if !self.ops.contains_key(&key) && self.ops.len() >= MAX_OPERATIONS {
            self.stats.operations_overflow += 1;
            key = 0;
        }
        let op = self.ops.entry(key).or_insert(Operation { seen: 0, rate: None, p: 1.0 });
        op.seen += 1;
        op.p
    }

    /// Once a window: each operation's traffic rate, smoothed, and its probability from it.
    fn update_rates(&mut self, now: Instant) {
        let Some(target) = self.cfg.per_operation else {
            return;
        };
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < WINDOW {
            return;
        }
        self.window_start = now;
        let secs = elapsed.as_secs_f64();
        self.ops.retain(|_, op| {
            let current = op.seen as f64 / secs;
            let rate = match op.rate {
                Some(r) => 0.5 * r + 0.5 * current,
                None => current,
            };
            op.rate = Some(rate);
            op.seen = 0;
            op.p = if rate <= target { 1.0 } else { target / rate };
            // An operation idle for a while is forgotten (it starts again at 1.0).
            rate > 0.01
        });
    }

    fn remember(&mut self, trace_id: [u8; 16], keep: bool) {
        if self.decided.insert(trace_id, keep).is_none() {
            self.decided_order.push_back(trace_id);
            if self.decided_order.len() > DECISIONS
                && let Some(old) = self.decided_order.pop_front()
            {
                self.decided.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn span(trace: u64, id: u8, parent: Option<u8>, ms: u64, error: bool, name: &'static str) -> SpanRecord {
        let mut trace_id = [0u8; 16];
        trace_id[8..].copy_from_slice(&trace.to_be_bytes());
        SpanRecord {
            name: name.into(),
            start_ns: 1_000 * MS,
            end_ns: 1_000 * MS + ms * MS,
            pid: 7,
            error,
            ..SpanRecord::for_test(trace_id, id, parent)
        }
    }

    /// A trace of two spans (server and its child); `trace` spreads over the id space.
    fn trace(n: u64, ms: u64, error: bool, name: &'static str) -> Vec<SpanRecord> {
        let id = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        vec![span(id, 2, Some(1), ms / 2, error, name), span(id, 1, None, ms, false, name)]
    }

    fn run(cfg: TailConfig, traces: Vec<Vec<SpanRecord>>) -> (TailSampler, Vec<Vec<SpanRecord>>) {
        let t0 = Instant::now();
        let mut t = TailSampler::new(cfg, t0);
        let mut kept = t.add(traces.into_iter().flatten().collect(), t0);
        kept.extend(t.take_finished(t0 + Duration::from_secs(3), false));
        (t, kept)
    }

    fn reconciles(t: &TailSampler, offered: u64) {
        let s = t.stats();
        assert_eq!(s.spans_kept + s.spans_dropped + t.held() as u64, offered, "{s:?}");
    }

    #[test]
    fn errors_and_slow_traces_are_kept_the_rest_by_the_baseline() {
        let cfg = TailConfig {
            errors: true,
            latency: Some(Duration::from_millis(500)),
            ratio: 0.0,
            ..TailConfig::default()
        };
        let mut traces: Vec<Vec<SpanRecord>> = (0..20).map(|i| trace(i, 10, false, "GET")).collect();
        traces.push(trace(100, 10, true, "GET"));
        traces.push(trace(101, 800, false, "GET"));
        let (t, kept) = run(cfg, traces);
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|k| k.len() == 2), "traces stay whole");
        let s = t.stats();
        assert_eq!((s.kept_error, s.kept_slow, s.kept_baseline, s.dropped), (1, 1, 0, 20));
        reconciles(&t, 44);
    }

    #[test]
    fn the_baseline_ratio_is_decided_on_the_trace_id() {
        let cfg = TailConfig { ratio: 0.25, ..TailConfig::default() };
        let traces: Vec<Vec<SpanRecord>> = (0..2000).map(|i| trace(i, 10, false, "GET")).collect();
        let expect: usize =
            traces.iter().filter(|t| Sampler::Ratio(0.25).sample(&t[0].trace_id, None)).count();
        let (t, kept) = run(cfg, traces);
        assert_eq!(kept.len(), expect, "the head sampler's decision on the same ids");
        assert!((400..600).contains(&expect), "{expect}");
        reconciles(&t, 4000);
    }

    #[test]
    fn the_rate_cap_refuses_baseline_traces_but_never_errors() {
        let cfg = TailConfig { errors: true, ratio: 1.0, max_per_sec: Some(5.0), ..TailConfig::default() };
        let mut traces: Vec<Vec<SpanRecord>> = (0..50).map(|i| trace(i, 10, false, "GET")).collect();
        traces.extend((50..60).map(|i| trace(i, 10, true, "GET")));
        let (t, kept) = run(cfg, traces);
        let s = t.stats();
        // One burst of 5 tokens (3 s of refill happen before the decisions, capped at 5).
        assert_eq!(s.kept_baseline, 5, "{s:?}");
        assert_eq!(s.kept_error, 10);
        assert_eq!(s.rate_limited, 45);
        assert_eq!(kept.len(), 15);
        reconciles(&t, 120);
    }

    #[test]
    fn adaptive_rates_favour_quiet_operations() {
        let cfg = TailConfig { ratio: 0.0, per_operation: Some(10.0), ..TailConfig::default() };
        let t0 = Instant::now();
        let mut t = TailSampler::new(cfg, t0);
        let mut offered = 0u64;
        let mut kept_busy = 0usize;
        let mut kept_quiet = 0usize;
        let mut n = 0u64;
        // Ten one-second windows: 1000 traces/s of GET /busy, 5/s of GET /quiet.
        for sec in 0..10u64 {
            let now = t0 + Duration::from_secs(sec + 1);
            let mut batch = Vec::new();
            for i in 0..1005 {
                n += 1;
                let name = if i < 1000 { "GET /busy" } else { "GET /quiet" };
                batch.extend(trace(n, 10, false, name));
            }
            offered += batch.len() as u64;
            t.add(batch, now - Duration::from_secs(3));
            for k in t.take_finished(now, false) {
                if sec >= 3 {
                    if &*k[0].name == "GET /busy" {
                        kept_busy += 1;
                    } else {
                        kept_quiet += 1;
                    }
                }
            }
        }
        // After the first windows the busy operation keeps about 10 a second, the quiet one all.
        let p = t.probability(7, "GET /busy");
        assert!((0.005..0.02).contains(&p), "{p}");
        assert_eq!(t.probability(7, "GET /quiet"), 1.0);
        assert!((30..120).contains(&kept_busy), "{kept_busy} in 7 s");
        assert_eq!(kept_quiet, 35);
        reconciles(&t, offered);
    }

    #[test]
    fn late_spans_follow_their_trace_and_a_full_buffer_decides_early() {
        let cfg = TailConfig { errors: true, ratio: 0.0, max_spans: 4, ..TailConfig::default() };
        let t0 = Instant::now();
        let mut t = TailSampler::new(cfg, t0);
        // An error trace and a clean one, decided.
        t.add(trace(1, 10, true, "GET").into_iter().chain(trace(2, 10, false, "GET")).collect(), t0);
        let kept = t.take_finished(t0 + Duration::from_secs(3), false);
        assert_eq!(kept.len(), 1);
        // A late span of each: the kept trace's comes out at once, the other is dropped.
        let mut late = span(0, 9, Some(1), 5, false, "GET");
        late.trace_id = kept[0][0].trace_id;
        let mut late_dropped = trace(2, 10, false, "GET").remove(0);
        late_dropped.span_id = [9; 8];
        let out = t.add(vec![late, late_dropped], t0 + Duration::from_secs(4));
        assert_eq!(out.len(), 1);
        assert_eq!(t.stats().late_spans, 2);
        // Three more traces of two spans in a buffer of four: the first is decided early.
        let more: Vec<SpanRecord> = (3..6).flat_map(|i| trace(i, 10, i == 3, "GET")).collect();
        let out = t.add(more, t0 + Duration::from_secs(5));
        assert_eq!(t.stats().decided_early, 1);
        assert_eq!(out.len(), 1, "the early one had an error");
        reconciles(&t, 4 + 2 + 6);
        t.take_finished(t0 + Duration::from_secs(5), true);
        assert_eq!(t.held(), 0);
        reconciles(&t, 12);
    }
}
