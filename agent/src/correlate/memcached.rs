//! Memcached client connections → database client spans.
//!
//! As for Redis, the commands one write sends are one operation: a single command's span is named
//! by it (`get`), several are a batch (`BATCH get` when they share a name, else `BATCH`, with
//! `db.operation.batch.size`). It runs from the write to the read that completes its last
//! response; responses answer commands in order, each command's kind saying where its response
//! ends (`END` after values, one line otherwise). Keys and values stay out: the span has the
//! operation, the values a read returned (`db.response.returned_rows`: 0 is a miss) and an
//! error's kind (`CLIENT_ERROR`, `SERVER_ERROR`). `NOT_FOUND`, `NOT_STORED` and `EXISTS` are
//! answers, not errors.
//!
//! Commands that get no response (`noreply`, `quit`) owe nothing: a write of only those ends
//! where it was written. Meta commands in quiet mode (`q`) are answered only when they fail or
//! hit, so they owe nothing either, and a batch of them ends at the `MN` of the `mn` the client
//! sends after them; whatever answers arrive before it count towards that batch.
//!
//! A connection is taken as memcached from a client's write of a known command; a first
//! response that no memcached server writes (a Redis server answering inline commands) gives
//! the connection up.
use std::collections::VecDeque;

use super::{
    ConnSink, Info, SpanCtx, push_db_server,
    span::{Kind, SpanRecord, Text, Value},
    stream::Meta,
};
use crate::protocol::memcached::{self, Framer, Reply, Response};

/// Operations waiting for their responses on one connection.
pub(super) const MAX_OPS: usize = 64;
/// Responses owed on one connection (a pipeline of thousands of gets); beyond, the operations
/// end as unframed at the client's next write.
const MAX_OWED: usize = 4096;

/// Counters of memcached connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemcachedStats {
    /// Client connections recognised as memcached.
    pub conns: u64,
    /// Connections given up at their first response (not memcached after all).
    pub rejected: u64,
    /// Operations that ended without all their responses seen: their span ends at the last
    /// byte read, without an error status.
    pub unframed: u64,
    /// Operations dropped because too many waited on one connection.
    pub overflow: u64,
    /// Responses with no command waiting (tracing began mid-exchange).
    pub unpaired: u64,
}

impl MemcachedStats {
    /// The counters by name, as the summary and the metrics page report them.
    pub fn counts(&self) -> [(&'static str, u64); 5] {
        [
            ("conns", self.conns),
            ("rejected", self.rejected),
            ("unframed", self.unframed),
            ("overflow", self.overflow),
            ("unpaired", self.unpaired),
        ]
    }
}

/// The commands of one write, waiting for their responses.
#[derive(Debug)]
struct Op {
    meta: Meta,
    ctx: SpanCtx,
    commands: u32,
    /// Responses still owed.
    owed: u32,
    first: Option<&'static str>,
    same: bool,
    /// A command that reads values was among them: the values returned are reported.
    reads: bool,
    values: u32,
    error: Option<&'static str>,
}

/// One memcached client connection's protocol state.
#[derive(Debug)]
pub(super) struct Session {
    tx: Framer,
    rx: Framer,
    st: State,
}

#[derive(Debug, Default)]
struct State {
    ops: VecDeque<Op>,
    /// What answers each command owed a response, in order (the front is the front op's).
    owed: VecDeque<Reply>,
    /// A command's bytes were lost, or too many were owed: what answers what is unknown until
    /// the client's next write.
    uncounted: bool,
    /// A response was read: the connection is memcached.
    answered: bool,
    /// The first response was not memcached's.
    rejected: bool,
    /// When the last byte from the server was read.
    last_rx_ns: u64,
}

impl Session {
    pub(super) fn new() -> Session {
        Session { tx: Framer::default(), rx: Framer::default(), st: State::default() }
    }

    /// Operations waiting for their responses.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.st.ops.len()
    }

    /// The connection turned out not to be memcached.
    pub(super) fn rejected(&self) -> bool {
        self.st.rejected
    }

    /// The client wrote (`data` captured, then `gap` bytes not).
    pub(super) fn write(&mut self, data: &[u8], gap: u64, meta: Meta, sink: &mut ConnSink<'_>) {
        let Session { tx, rx, st } = self;
        if st.rejected {
            return;
        }
        if rx.lost() || st.uncounted {
            // Which responses answered what is unknown: whatever was asked ended by the last byte
            // read, and the server's next response answers what this write asks.
            st.end_unframed(sink);
            rx.resync();
            st.uncounted = false;
        }
        if tx.lost() {
            tx.resync();
        }
        let mut opened = false;
        tx.feed(data, gap, &mut |line: &[u8]| {
            let cmd = memcached::command(line)?;
            if !opened {
                opened = true;
                st.push(meta, sink);
            }
            let op = st.ops.back_mut()?;
            op.commands += 1;
            match op.first {
                None => op.first = Some(cmd.name),
                Some(first) => op.same &= first == cmd.name,
            }
            op.reads |= matches!(cmd.name, "get" | "gets" | "gat" | "gats" | "mg");
            if cmd.reply != Reply::None && !cmd.quiet {
                if st.owed.len() >= MAX_OWED {
                    st.uncounted = true;
                } else {
                    st.owed.push_back(cmd.reply);
                    op.owed += 1;
                }
            }
            Some(cmd.block)
        });
        if tx.lost() {
            st.uncounted = true;
        }
        // Nothing will answer a write of commands that owe nothing: it ends as written.
        if opened
            && st.ops.back().is_some_and(|op| op.owed == 0)
            && !st.uncounted
            && let Some(op) = st.ops.pop_back()
        {
            let end = op.meta.start_ns;
            st.finish(op, end, sink);
        }
    }

    /// The client read (`data` captured, then `gap` bytes not) at `end_ns`.
    pub(super) fn read(&mut self, data: &[u8], gap: u64, end_ns: u64, sink: &mut ConnSink<'_>) {
        let Session { rx, st, .. } = self;
        if st.rejected {
            return;
        }
        st.last_rx_ns = end_ns;
        if rx.lost() || st.uncounted {
            return;
        }
        rx.feed(data, gap, &mut |line: &[u8]| st.response(line, end_ns, sink));
        if st.rejected {
            sink.g.stats.memcached.rejected += 1;
            st.ops.clear();
        }
    }

    /// Events were lost or left out: what was waiting cannot be told apart from what follows.
    pub(super) fn reset(&mut self) -> u64 {
        let dropped = self.st.ops.len() as u64;
        self.st.ops.clear();
        self.st.owed.clear();
        self.st.uncounted = false;
        self.tx.resync();
        self.rx.resync();
        dropped
    }

    /// The connection closed at `at` (0: unknown): operations still waiting end there, as
    /// errors when the server never answered after they were sent.
    pub(super) fn close(&mut self, at: u64, sink: &mut ConnSink<'_>) {
        let st = &mut self.st;
        if st.rejected {
            return;
        }
        while let Some(mut op) = st.ops.pop_front() {
            let (end, answered) = super::end_at_close(st.last_rx_ns, op.meta.start_ns, at);
            if !answered {
                sink.g.stats.no_response += 1;
                op.error = Some("no_response");
            }
            st.finish(op, end, sink);
        }
    }
}

impl State {
    fn push(&mut self, meta: Meta, sink: &mut ConnSink<'_>) {
        if self.ops.len() >= MAX_OPS
            && let Some(old) = self.ops.pop_front()
        {
            // Its owed responses go with it, so that the next ones pair with the next op.
            self.owed.drain(..(old.owed as usize).min(self.owed.len()));
            sink.g.stats.memcached.overflow += 1;
        }
        let ctx = sink.new_ctx(&[], None, &meta);
        self.ops.push_back(Op {
            meta,
            ctx,
            commands: 0,
            owed: 0,
            first: None,
            same: true,
            reads: false,
            values: 0,
            error: None,
        });
    }

    /// A response line: returns the length of the block after it, or `None` when framing
    /// stops (not memcached's).
    fn response(&mut self, line: &[u8], end_ns: u64, sink: &mut ConnSink<'_>) -> Option<u64> {
        let Some(r) = memcached::response(line) else {
            self.rejected = !self.answered;
            return None;
        };
        let block = match r {
            Response::Value { block, .. } => block,
            _ => 0,
        };
        let (Some(&reply), Some(op)) = (self.owed.front(), self.ops.front_mut()) else {
            sink.g.stats.memcached.unpaired += 1;
            self.answered = true;
            return Some(block);
        };
        let done = match (reply, r) {
            (Reply::Values, Response::Value { meta: false, .. }) | (Reply::NoOp, Response::Value { .. }) => {
                op.values += 1;
                false
            }
            (Reply::Values | Reply::Stats, Response::End) | (Reply::NoOp, Response::NoOp) => true,
            (Reply::Stats, Response::Stat) | (Reply::NoOp, Response::Other) => false,
            (_, Response::Error(e)) => {
                op.error = op.error.or(Some(e));
                // A quiet command's failure before the `mn`: the batch still waits for `MN`.
                reply != Reply::NoOp
            }
            (Reply::Line, Response::Value { meta: true, .. }) => {
                op.values += 1;
                true
            }
            (Reply::Line | Reply::None, _) => true,
            // Not what the command's response is made of: a Redis server answering inline
            // commands, or a misread.
            (Reply::Values | Reply::Stats | Reply::NoOp, _) => {
                self.rejected = !self.answered;
                return None;
            }
        };
        self.answered = true;
        if done {
            self.owed.pop_front();
            op.owed = op.owed.saturating_sub(1);
            if op.owed == 0
                && let Some(op) = self.ops.pop_front()
            {
                self.finish(op, end_ns, sink);
            }
        }
        Some(block)
    }

    /// The server's responses were not all seen: every operation waiting ends at its last byte.
    fn end_unframed(&mut self, sink: &mut ConnSink<'_>) {
        self.owed.clear();
        while let Some(op) = self.ops.pop_front() {
            sink.g.stats.memcached.unframed += 1;
            let end = self.last_rx_ns.max(op.meta.start_ns);
            self.finish(op, end, sink);
        }
    }

    fn finish(&self, op: Op, end_ns: u64, sink: &mut ConnSink<'_>) {
        sink.g.out.push(build_span(sink.info, op, end_ns));
        sink.g.stats.spans += 1;
    }
}

/// The span of one operation, named as the OpenTelemetry database conventions ask.
fn build_span(info: &Info, op: Op, end_ns: u64) -> SpanRecord {
    let batch = op.commands > 1;
    let operation: Option<Text> = match op.first {
        None => None,
        Some(first) if !batch => Some(Text::Static(first)),
        Some(first) if op.same => Some(format!("BATCH {first}").into()),
        Some(_) => Some(Text::Static("BATCH")),
    };
    let name = operation.clone().unwrap_or(Text::Static("memcached"));
    let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(10);
    attrs.push(("db.system.name", Value::Str(Text::Static("memcached"))));
    if let Some(o) = operation {
        attrs.push(("db.operation.name", Value::Str(o)));
    }
    if batch {
        attrs.push(("db.operation.batch.size", Value::Int(i64::from(op.commands))));
    }
    if op.reads {
        attrs.push(("db.response.returned_rows", Value::Int(i64::from(op.values))));
    }
    push_db_server(&mut attrs, info);
    let error = op.error.is_some();
    if let Some(e) = op.error {
        if e != "no_response" {
            attrs.push(("db.response.status_code", Value::Str(Text::Static(e))));
        }
        attrs.push(("error.type", Value::Str(Text::Static(e))));
    }
    op.ctx.record(Kind::Client, name, info.id.tgid, &op.meta, end_ns, error, attrs)
}
