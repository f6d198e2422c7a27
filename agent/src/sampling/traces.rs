//! Spans grouped into traces until each trace is finished on this node: idle for a while and
//! whole (every in-process parent present), or older than [`MAX_WAIT`]. Spans arrive as they
//! end, children before their parents, so a trace is only known in full some time after its
//! last span; tail sampling and the terminal waterfall both need it in full.
//!
//! Bounded: at most `max_spans` spans are held. A span that finds the buffer full pushes the
//! oldest trace out, unfinished, to the caller (who decides or prints it early); nothing is
//! dropped here.
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::correlate::span::SpanRecord;

/// Keyed by trace id, which is random already: foldhash, not SipHash (a span's way through this
/// stage is a few lookups).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Longest a trace with a missing in-process parent (a request still running, or a parent span
/// that was never built) is held once idle.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

struct Held {
    spans: Vec<SpanRecord>,
    first: Instant,
    last: Instant,
}

/// Traces being assembled.
pub struct Assembler {
    traces: HashMap<[u8; 16], Held>,
    /// Trace ids in the order they are due for a look, with when they were queued. Each live
    /// trace has at least one entry; entries of traces already taken are skipped when reached.
    queue: VecDeque<([u8; 16], Instant)>,
    idle: Duration,
    max_spans: usize,
    held: usize,
}

/// Whether every span whose parent is in the same process has that parent here.
pub fn is_whole(spans: &[SpanRecord]) -> bool {
    spans.iter().all(|s| match s.parent_id {
        Some(p) if !s.parent_remote => spans.iter().any(|o| o.span_id == p),
        _ => true,
    })
}

impl Assembler {
    /// `idle`: how long no span must have joined a trace before it is finished.
    pub fn new(idle: Duration, max_spans: usize) -> Self {
        Assembler {
            traces: HashMap::default(),
            queue: VecDeque::new(),
            idle,
            max_spans: max_spans.max(1),
            held: 0,
        }
    }

    /// Spans held now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Adds a span. Returns the oldest trace when the buffer was full and it had to make room.
    pub fn add(&mut self, span: SpanRecord, now: Instant) -> Option<Vec<SpanRecord>> {
        let pushed_out = if self.held >= self.max_spans { self.take_oldest() } else { None };
        self.held += 1;
        match self.traces.get_mut(&span.trace_id) {
            Some(t) => {
                t.spans.push(span);
                t.last = now;
            }
            None => {
                self.queue.push_back((span.trace_id, now));
                self.traces.insert(span.trace_id, Held { spans: vec![span], first: now, last: now });
            }
        }
        pushed_out
    }

    fn take_oldest(&mut self) -> Option<Vec<SpanRecord>> {
        while let Some((id, _)) = self.queue.pop_front() {
            if let Some(t) = self.traces.remove(&id) {
                self.held -= t.spans.len();
                return Some(t.spans);
            }
        }
        None
    }

    /// The traces finished by `now` (all of them with `all`), oldest first.
    pub fn take_finished(&mut self, now: Instant, all: bool) -> Vec<Vec<SpanRecord>> {
        let mut out = Vec::new();
        while let Some(&(id, queued)) = self.queue.front() {
            // Entries are queued in time order: the rest are not due either.
            if !all && now.duration_since(queued) < self.idle {
                break;
            }
            self.queue.pop_front();
            let Some(t) = self.traces.get(&id) else {
                continue; // taken already
            };
            let idle = now.duration_since(t.last) >= self.idle;
            if all || (idle && (is_whole(&t.spans) || now.duration_since(t.first) >= MAX_WAIT)) {
                if let Some(t) = self.traces.remove(&id) {
                    self.held -= t.spans.len();
                    out.push(t.spans);
                }
            } else {
                // Joined since it was queued, or waiting for a parent: looked at again later.
                self.queue.push_back((id, now));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: u8, id: u8, parent: Option<u8>) -> SpanRecord {
        SpanRecord::for_test([trace; 16], id, parent)
    }

    #[test]
    fn a_trace_is_finished_when_idle_and_whole() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut a = Assembler::new(ms(100), 100);
        // The child ends first; its parent is still running.
        assert!(a.add(span(1, 2, Some(1)), t0).is_none());
        assert!(a.take_finished(t0 + ms(150), false).is_empty(), "parent missing");
        a.add(span(1, 1, None), t0 + ms(200));
        assert!(a.take_finished(t0 + ms(250), false).is_empty(), "not idle yet");
        let done = a.take_finished(t0 + ms(400), false);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].len(), 2);
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn a_trace_missing_a_parent_is_finished_after_the_longest_wait() {
        let t0 = Instant::now();
        let mut a = Assembler::new(Duration::from_millis(100), 100);
        a.add(span(1, 2, Some(1)), t0);
        assert!(a.take_finished(t0 + MAX_WAIT - Duration::from_millis(1), false).is_empty());
        assert_eq!(a.take_finished(t0 + MAX_WAIT + Duration::from_millis(200), false).len(), 1);
    }

    #[test]
    fn a_full_buffer_pushes_the_oldest_trace_out() {
        let t0 = Instant::now();
        let mut a = Assembler::new(Duration::from_millis(100), 3);
        a.add(span(1, 1, None), t0);
        a.add(span(1, 2, Some(1)), t0);
        a.add(span(2, 1, None), t0);
        let out = a.add(span(3, 1, None), t0).expect("room made");
        assert_eq!((out.len(), out[0].trace_id), (2, [1; 16]));
        assert_eq!(a.held(), 2);
        // The pushed-out trace's queue entry is skipped; the others finish.
        assert_eq!(a.take_finished(t0 + Duration::from_secs(1), false).len(), 2);
        assert_eq!(a.held(), 0);
    }
}
