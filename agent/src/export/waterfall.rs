//! The terminal waterfall: each finished trace as an indented tree of spans with bars scaled to
//! the trace's duration, the way tracing UIs draw them.
use std::{
    collections::HashMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use crate::correlate::span::{Kind, SpanRecord, Value};

const BAR: usize = 40;

/// The label shown for a span: method and path (server) or method and URL (client).
pub fn operation(s: &SpanRecord) -> String {
    let get = |k: &str| match s.attr(k) {
        Some(Value::Str(v)) => Some(v.as_str()),
        _ => None,
    };
    match s.kind {
        Kind::Server => format!("{} {}", s.name, get("url.path").unwrap_or("")),
        Kind::Client => {
            let url = get("url.full").unwrap_or("");
            let url = url.strip_prefix("http://").unwrap_or(url);
            let url = url.split('?').next().unwrap_or(url);
            format!("{} → {url}", s.name)
        }
    }
}

fn ms(ns: u64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

/// Renders one trace. `service` names a span's process.
pub fn render(spans: &[SpanRecord], service: &dyn Fn(u32) -> String, color: bool) -> String {
    let Some(first) = spans.first() else {
        return String::new();
    };
    let start = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_ns).max().unwrap_or(start);
    let total = end.saturating_sub(start).max(1);
    let ids: HashMap<[u8; 8], usize> = spans.iter().enumerate().map(|(i, s)| (s.span_id, i)).collect();
    let mut children: HashMap<Option<usize>, Vec<usize>> = HashMap::new();
    for (i, s) in spans.iter().enumerate() {
        let parent = s.parent_id.and_then(|p| ids.get(&p).copied());
        children.entry(parent).or_default().push(i);
    }
    for v in children.values_mut() {
        v.sort_by_key(|&i| (spans[i].start_ns, spans[i].kind == Kind::Client));
    }
    let mut order: Vec<(usize, usize)> = Vec::new();
    let mut stack: Vec<(usize, usize)> =
        children.get(&None).map(|r| r.iter().rev().map(|&i| (i, 0)).collect()).unwrap_or_default();
    while let Some((i, depth)) = stack.pop() {
        order.push((i, depth));
        if let Some(c) = children.get(&Some(i)) {
            stack.extend(c.iter().rev().map(|&j| (j, depth + 1)));
        }
    }
    let trace_hex: String = first.trace_id.iter().map(|b| format!("{b:02x}")).collect();
    let errors = spans.iter().filter(|s| s.error).count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace {trace_hex} · {} spans · {}{}",
        spans.len(),
        ms(total),
        if errors > 0 { format!(" · {errors} error(s)") } else { String::new() }
    );
    let rows: Vec<(String, String, &SpanRecord)> = order
        .iter()
        .map(|&(i, depth)| {
            let s = &spans[i];
            (format!("{}{}", "  ".repeat(depth), service(s.pid)), operation(s), s)
        })
        .collect();
    let w_service = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(7).max(7);
    let w_op = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(9).clamp(9, 60);
    let _ = writeln!(
        out,
        "  {:<w_service$}  {:<w_op$}  {:>10}  {:>10}",
        "SERVICE", "OPERATION", "START", "DURATION"
    );
    for (svc, op, s) in rows {
        let off = s.start_ns.saturating_sub(start);
        let a = (off as u128 * BAR as u128 / total as u128) as usize;
        let b = ((off + s.duration_ns()) as u128 * BAR as u128).div_ceil(total as u128) as usize;
        let b = b.clamp(a + 1, BAR);
        let bar = format!("{}{}{}", " ".repeat(a.min(BAR)), "█".repeat(b - a.min(b)), " ".repeat(BAR - b));
        let op: String = op.chars().take(w_op).collect();
        let mut line =
            format!("  {svc:<w_service$}  {op:<w_op$}  {:>10}  {:>10} |{bar}|", ms(off), ms(s.duration_ns()));
        if s.error {
            line.push_str(" error");
            if color {
                line = format!("\x1b[31m{line}\x1b[0m");
            }
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

/// Collects spans per trace and releases a trace once no span has joined it for `idle`.
pub struct Waterfall {
    traces: HashMap<[u8; 16], (Vec<SpanRecord>, Instant)>,
    idle: Duration,
    max_spans: usize,
    held: usize,
    /// Spans not shown because too many were held at once.
    pub dropped: u64,
}

impl Waterfall {
    /// Holds at most `max_spans` spans waiting for their traces to finish.
    pub fn new(idle: Duration, max_spans: usize) -> Self {
        Waterfall { traces: HashMap::new(), idle, max_spans, held: 0, dropped: 0 }
    }

    /// Adds spans.
    pub fn add(&mut self, spans: &[SpanRecord]) {
        let now = Instant::now();
        for s in spans {
            if self.held >= self.max_spans {
                self.dropped += 1;
                continue;
            }
            let e = self.traces.entry(s.trace_id).or_insert_with(|| (Vec::new(), now));
            e.0.push(s.clone());
            e.1 = now;
            self.held += 1;
        }
    }

    /// Traces that are finished (idle long enough, or all of them when `all`), oldest first.
    pub fn take_finished(&mut self, all: bool) -> Vec<Vec<SpanRecord>> {
        let now = Instant::now();
        let done: Vec<[u8; 16]> = self
            .traces
            .iter()
            .filter(|(_, (_, t))| all || now.duration_since(*t) >= self.idle)
            .map(|(k, _)| *k)
            .collect();
        let mut out: Vec<Vec<SpanRecord>> =
            done.iter().filter_map(|k| self.traces.remove(k).map(|(v, _)| v)).collect();
        for t in &out {
            self.held -= t.len();
        }
        out.sort_by_key(|t| t.iter().map(|s| s.start_ns).min().unwrap_or(0));
        out
    }
}
