//! Redis client connections → database client spans.
//!
//! The commands one write sends are one operation: a single command's span is named by the
//! command (`GET`), a pipeline's (two or more commands in one write) is a batch (`BATCH GET`
//! when they share a name, else `BATCH`, with `db.operation.batch.size`). It runs from the write
//! to the read that completes its last reply; replies answer commands in order, so a pipeline
//! that is still being answered when the next one is written (asynchronous clients) is paired
//! right. The parent is decided as for an HTTP client request: the request the writing thread
//! was serving.
//!
//! The text is the commands with every argument replaced by `?` (keys and values are the
//! application's data), but for the subcommand of container commands (`CLIENT SETINFO ? ?`).
//! A connection that subscribes (pub/sub, `MONITOR`) carries messages, not replies, from there
//! on: its subscribing operation ends at the first reply and the connection is left alone.
//!
//! When bytes the capture cap left out hid where replies start (a gap inside a bulk string is
//! skipped by its length; one across structure is not), the operations waiting end when the
//! client writes again, at the last byte read: the time is exact, only the error is unknown.
use std::{collections::VecDeque, fmt::Write as _, sync::Arc};

use super::{
    ConnSink, Info, SpanCtx, push_db_server,
    span::{Kind, SpanRecord, Text, Value},
    stream::Meta,
};
use crate::protocol::{
    redis::{self, Event, Framer},
    sql,
};

/// Operations waiting for their replies on one connection (an asynchronous client's depth).
pub(super) const MAX_OPS: usize = 64;
/// Arguments shown per command (`MSET ? ? ? ? …`).
const MAX_ARGS_SHOWN: i64 = 8;

/// Commands whose first argument names what they do (`CLIENT SETINFO`, `CONFIG GET`...): it is
/// kept in the text.
const CONTAINERS: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DEBUG", "FUNCTION", "LATENCY", "MEMORY", "MODULE",
    "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];

/// Commands after which the server sends messages instead of replies.
const SUBSCRIBING: &[&str] = &["SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR"];

/// Counters of Redis connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct RedisStats {
    /// Client connections recognised as Redis.
    pub conns: u64,
    /// Operations that ended without all their replies seen (the server's bytes were not all
    /// captured): their span ends at the last byte read, without an error status.
    pub unframed: u64,
    /// Operations dropped because too many waited on one connection.
    pub overflow: u64,
    /// Replies with no command waiting (tracing began mid-exchange).
    pub unpaired: u64,
    /// Connections that subscribed (pub/sub, `MONITOR`) and were left alone from there on.
    pub subscribed: u64,
}

impl RedisStats {
    /// The counters by name, as the summary and the metrics page report them.
    pub fn counts(&self) -> [(&'static str, u64); 5] {
        [
            ("conns", self.conns),
            ("unframed", self.unframed),
            ("overflow", self.overflow),
            ("unpaired", self.unpaired),
            ("subscribed", self.subscribed),
        ]
    }
}

/// The commands of one write, waiting for their replies.
#[derive(Debug)]
struct Op {
    meta: Meta,
    ctx: SpanCtx,
    /// Commands begun (each is owed a reply).
    commands: u32,
    replies: u32,
    /// The first command's name.
    first: Option<redis::Name>,
    /// Commands whose name was seen, and whether all of them were the first's.
    named: u32,
    same: bool,
    text: String,
    /// The first error reply's prefix (`ERR`, `WRONGTYPE`...).
    error: Option<String>,
    /// A `SELECT` of this database index: the connection's namespace once it succeeds.
    select: Option<Arc<str>>,
}

impl Op {
    /// A command of the write; returns whether it subscribes (the server sends messages after it).
    fn command(&mut self, v: &redis::Value) -> bool {
        let Some(name) = redis::command_name(v.first.bytes()) else {
            return false;
        };
        self.named += 1;
        match self.first {
            None => self.first = Some(name),
            Some(first) => self.same &= first == name,
        }
        if &*name == "SELECT" {
            let index = v.second.bytes();
            if !index.is_empty() && index.len() <= 5 && index.iter().all(u8::is_ascii_digit) {
                self.select = Some(String::from_utf8_lossy(index).into());
            }
        }
        let subscribes = SUBSCRIBING.contains(&&*name);
        // The text up to its bound (a pipeline of thousands of commands is cut, not its count).
        if self.text.len() >= sql::MAX_TEXT {
            return subscribes;
        }
        if !self.text.is_empty() {
            self.text.push_str("; ");
        }
        self.text.push_str(&name);
        let mut args = v.count - 1;
        if CONTAINERS.contains(&&*name)
            && let Some(sub) = redis::command_name(v.second.bytes())
        {
            let _ = write!(self.text, " {sub}");
            args -= 1;
        }
        for _ in 0..args.min(MAX_ARGS_SHOWN) {
            self.text.push_str(" ?");
        }
        if args > MAX_ARGS_SHOWN {
            self.text.push_str(" …");
        }
        subscribes
    }
}

/// One Redis client connection's protocol state.
#[derive(Debug)]
pub(super) struct Session {
    tx: Framer,
    rx: Framer,
    st: State,
}

#[derive(Debug)]
struct State {
    ops: VecDeque<Op>,
    /// The database index selected (`db.namespace`), once a `SELECT` succeeded.
    namespace: Option<Arc<str>>,
    /// A command's bytes were lost: how many replies are owed is unknown until the client's
    /// next write.
    uncounted: bool,
    /// A subscribing command was sent: its first reply ends every operation and the session.
    subscribing: bool,
    /// Subscribed: nothing more to read.
    done: bool,
    /// When the last byte from the server was read.
    last_rx_ns: u64,
}

impl Session {
    pub(super) fn new() -> Session {
        Session {
            tx: Framer::new(true),
            rx: Framer::new(false),
            st: State {
                ops: VecDeque::new(),
                namespace: None,
                uncounted: false,
                subscribing: false,
                done: false,
                last_rx_ns: 0,
            },
        }
    }

    /// Operations waiting for their replies.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.st.ops.len()
    }

    /// The client wrote (`data` captured, then `gap` bytes not).
    pub(super) fn write(&mut self, data: &[u8], gap: u64, meta: Meta, sink: &mut ConnSink<'_>) {
        let Session { tx, rx, st } = self;
        if st.done {
            return;
        }
        if rx.lost() || st.uncounted {
            // Which replies answered what is unknown: whatever was asked ended by the last byte
            // read, and the server's next reply answers what this write asks.
            st.end_unframed(sink);
            rx.resync();
            st.uncounted = false;
        }
        if tx.lost() {
            tx.resync();
        }
        let mut opened = false;
        tx.feed(data, gap, &mut |e: Event<'_>| match e {
            Event::Begin => {
                if !opened {
                    opened = true;
                    st.push(meta, sink);
                }
                if let Some(op) = st.ops.back_mut() {
                    op.commands += 1;
                }
            }
            Event::End(v) => {
                if let Some(op) = st.ops.back_mut()
                    && op.command(v)
                {
                    st.subscribing = true;
                }
            }
        });
        if tx.lost() {
            st.uncounted = true;
        }
    }

    /// The client read (`data` captured, then `gap` bytes not) at `end_ns`.
    pub(super) fn read(&mut self, data: &[u8], gap: u64, end_ns: u64, sink: &mut ConnSink<'_>) {
        let Session { rx, st, .. } = self;
        if st.done {
            return;
        }
        st.last_rx_ns = end_ns;
        if st.subscribing {
            while let Some(op) = st.ops.pop_front() {
                st.finish(op, end_ns, sink);
            }
            st.done = true;
            sink.g.stats.redis.subscribed += 1;
            return;
        }
        if rx.lost() || st.uncounted {
            return;
        }
        rx.feed(data, gap, &mut |e: Event<'_>| {
            if let Event::End(v) = e
                && v.is_reply()
            {
                st.reply(v, end_ns, sink);
            }
        });
    }

    /// Events were lost or left out: what was waiting cannot be told apart from what follows.
    pub(super) fn reset(&mut self) -> u64 {
        let dropped = self.st.ops.len() as u64;
        self.st.ops.clear();
        self.st.uncounted = false;
        self.tx.resync();
        self.rx.resync();
        dropped
    }

    /// The connection closed at `at` (0: unknown): operations still waiting end there, as
    /// errors when the server never answered after they were sent.
    pub(super) fn close(&mut self, at: u64, sink: &mut ConnSink<'_>) {
        let st = &mut self.st;
        while let Some(mut op) = st.ops.pop_front() {
            let (end, answered) = super::end_at_close(st.last_rx_ns, op.meta.start_ns, at);
            if !answered {
                sink.g.stats.no_response += 1;
                op.error = Some("no_response".into());
            }
            st.finish(op, end, sink);
        }
    }
}

impl State {
    fn push(&mut self, meta: Meta, sink: &mut ConnSink<'_>) {
        if self.ops.len() >= MAX_OPS {
            self.ops.pop_front();
            sink.g.stats.redis.overflow += 1;
        }
        let ctx = sink.new_ctx(&[], None, &meta);
        self.ops.push_back(Op {
            meta,
            ctx,
            commands: 0,
            replies: 0,
            first: None,
            named: 0,
            same: true,
            text: String::new(),
            error: None,
            select: None,
        });
    }

    fn reply(&mut self, v: &redis::Value, end_ns: u64, sink: &mut ConnSink<'_>) {
        let Some(op) = self.ops.front_mut() else {
            sink.g.stats.redis.unpaired += 1;
            return;
        };
        op.replies += 1;
        if v.is_error() && op.error.is_none() {
            let prefix =
                v.error_prefix().map_or_else(|| "error".into(), |p| String::from_utf8_lossy(p).into_owned());
            op.error = Some(prefix);
        }
        if op.replies >= op.commands
            && let Some(op) = self.ops.pop_front()
        {
            if op.error.is_none()
                && let Some(index) = &op.select
            {
                self.namespace = Some(index.clone());
            }
            self.finish(op, end_ns, sink);
        }
    }

    /// The server's replies were not all seen: every operation waiting ends at its last byte.
    fn end_unframed(&mut self, sink: &mut ConnSink<'_>) {
        while let Some(op) = self.ops.pop_front() {
            sink.g.stats.redis.unframed += 1;
            let end = self.last_rx_ns.max(op.meta.start_ns);
            self.finish(op, end, sink);
        }
    }

    fn finish(&self, op: Op, end_ns: u64, sink: &mut ConnSink<'_>) {
        let span = build_span(sink.info, self.namespace.as_ref(), op, end_ns);
        sink.g.out.push(span);
        sink.g.stats.spans += 1;
    }
}

/// The span of one operation, named and described as the OpenTelemetry Redis conventions ask.
fn build_span(info: &Info, namespace: Option<&Arc<str>>, op: Op, end_ns: u64) -> SpanRecord {
    let batch = op.commands > 1;
    // Shared by the span's name and its attribute.
    let operation: Option<Arc<str>> = match op.first {
        None => None,
        Some(first) if !batch => Some((*first).into()),
        Some(first) if op.named == op.commands && op.same => Some(format!("BATCH {first}").into()),
        Some(_) => Some("BATCH".into()),
    };
    let name: Text = operation.clone().map_or(Text::Static("redis"), Text::from);
    let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(12);
    attrs.push(("db.system.name", Value::Str("redis".into())));
    if let Some(ns) = namespace {
        attrs.push(("db.namespace", Value::Str(Text::Shared(ns.clone()))));
    }
    if let Some(o) = operation {
        attrs.push(("db.operation.name", Value::Str(o.into())));
    }
    if batch {
        attrs.push(("db.operation.batch.size", Value::Int(i64::from(op.commands))));
    }
    if !op.text.is_empty() {
        attrs.push(("db.query.text", Value::Str(op.text.into())));
    }
    push_db_server(&mut attrs, info);
    let error = op.error.is_some();
    if let Some(e) = op.error {
        if e != "no_response" {
            attrs.push(("db.response.status_code", Value::Str(e.clone().into())));
        }
        attrs.push(("error.type", Value::Str(e.into())));
    }
    op.ctx.record(Kind::Client, name, info.id.tgid, &op.meta, end_ns, error, attrs)
}
