//! PostgreSQL client connections → database client spans.
//!
//! One span per statement the application runs: a simple query (`Q`, which may hold several
//! statements) from the write that sent it to the `ReadyForQuery` that ends it; an extended-query
//! execution (`E`) from its write to its `CommandComplete` (or error). Prepared statements are
//! remembered by name (their text arrives once, in `Parse`) and sanitized once. The parent is
//! decided as for an HTTP client request: the request the writing thread was serving.
//!
//! When bytes the capture cap left out hid where the server's messages start (a large result),
//! the statements waiting end when the connection's turn comes back to the client (its next
//! write), at the last byte read: the time is exact, only the row count and error code are
//! unknown. Connections whose traffic is encrypted (the server accepted an SSL or GSS request)
//! are counted and left alone.
use std::{collections::VecDeque, sync::Arc};

use super::{
    ConnSink, Info, SpanCtx, push_db_server,
    span::{Kind, SpanRecord, Text, Value},
    statement::Statement,
    stream::Meta,
};
use crate::protocol::{
    postgres::{
        self, CANCEL_REQUEST, ENCRYPTION_REPLY, End, Framer, GSSENC_REQUEST, Message, Opening, SSL_REQUEST,
        UNTYPED,
    },
    sql,
};

/// Statements waiting for their outcome on one connection (a pipelining client's depth).
pub(super) const MAX_OPS: usize = 64;
/// Prepared statements remembered per connection (named ones; the unnamed is kept apart).
const MAX_STATEMENTS: usize = 256;
/// Prepared statements remembered over all connections: a statement's sanitized text is up to
/// [`sql::MAX_TEXT`] bytes, so this bounds them to a few MiB (typical statements are a tenth).
pub(super) const MAX_STATEMENTS_TOTAL: usize = 4096;

/// A statement sent, waiting for its outcome.
#[derive(Debug)]
struct Op {
    stmt: Option<Arc<Statement>>,
    /// A simple query: it ends at `ReadyForQuery` (its statements may complete several commands).
    simple: bool,
    meta: Meta,
    ctx: SpanCtx,
    failure: Option<Failure>,
    rows: Option<i64>,
}

/// How a statement failed.
#[derive(Debug)]
enum Failure {
    /// The server's error, by SQLSTATE (`error` when the response had none).
    Sqlstate(String),
    /// The connection closed before the server answered.
    NoResponse,
}

/// Counters of PostgreSQL connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct PgStats {
    /// Client connections recognised as PostgreSQL.
    pub conns: u64,
    /// Of those, encrypted (SSL/GSS accepted): not traced further.
    pub encrypted: u64,
    /// Statements that ended without their outcome seen (the server's messages were not all
    /// captured): their span ends at the last byte read, without rows or error code.
    pub unframed: u64,
    /// Statements the server skipped after an earlier one in the same batch failed: no span.
    pub skipped: u64,
    /// Statements dropped because too many waited on one connection.
    pub overflow: u64,
    /// Prepared statements not remembered (too many on the connection or on the node): their
    /// executions' spans have no text.
    pub statements_full: u64,
    /// Prepared statements remembered now, over all connections.
    pub statements: u64,
}

impl PgStats {
    /// The counters by name, as the summary and the metrics page report them.
    pub fn counts(&self) -> [(&'static str, u64); 6] {
        [
            ("conns", self.conns),
            ("encrypted", self.encrypted),
            ("unframed", self.unframed),
            ("skipped", self.skipped),
            ("overflow", self.overflow),
            ("statements_full", self.statements_full),
        ]
    }
}

/// One PostgreSQL client connection's protocol state: its two directions' framing, and what
/// the messages said (kept apart so that a framer can hand each message straight to it).
#[derive(Debug)]
pub(super) struct Session {
    tx: Framer,
    rx: Framer,
    st: State,
}

#[derive(Debug)]
struct State {
    database: Option<Arc<str>>,
    unnamed: Option<Arc<Statement>>,
    statements: super::HashMap<Vec<u8>, Arc<Statement>>,
    /// The statement bound to the unnamed portal (the one drivers execute).
    portal: Option<Arc<Statement>>,
    ops: VecDeque<Op>,
    encrypted: bool,
    /// The client asked for encryption: the server's next byte is its one-byte answer, and
    /// the client's next message is untyped again.
    encryption_asked: bool,
    /// When the last byte from the server was read.
    last_rx_ns: u64,
}

impl Session {
    pub(super) fn new(opening: Opening) -> Session {
        Session {
            tx: Framer::new(End::Frontend, opening == Opening::Startup),
            rx: Framer::new(End::Backend, false),
            st: State {
                database: None,
                unnamed: None,
                statements: super::HashMap::default(),
                portal: None,
                ops: VecDeque::new(),
                encrypted: false,
                encryption_asked: false,
                last_rx_ns: 0,
            },
        }
    }

    /// Statements waiting for their outcome.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.st.ops.len()
    }

    /// Whether its traffic is encrypted (nothing more to read).
    pub(super) fn encrypted(&self) -> bool {
        self.st.encrypted
    }

    /// The encrypted connection is read in plain text from here on (its TLS library is probed).
    pub(super) fn decrypted(&mut self) {
        self.st.encrypted = false;
    }

    /// The client wrote (`data` captured, then `gap` bytes not).
    pub(super) fn write(&mut self, data: &[u8], gap: u64, meta: Meta, sink: &mut ConnSink<'_>) {
        let Session { tx, rx, st } = self;
        if rx.lost() {
            // The server's turn is over: whatever it answered ended by its last byte.
            st.end_unframed(sink);
        }
        if !rx.at_start() {
            rx.resync();
        }
        tx.feed(data, gap, &mut |m: Message<'_>| st.frontend(m.kind, m.body, meta, sink));
        if std::mem::take(&mut st.encryption_asked) {
            rx.expect_untyped();
            tx.expect_untyped();
        }
    }

    /// The client read (`data` captured, then `gap` bytes not) at `end_ns`.
    pub(super) fn read(&mut self, data: &[u8], gap: u64, end_ns: u64, sink: &mut ConnSink<'_>) {
        let Session { tx, rx, st } = self;
        st.last_rx_ns = end_ns;
        if !tx.at_start() {
            // The client's turn is over, so was its message (a length that said otherwise was
            // not one): its next write starts a message.
            tx.resync();
        }
        if rx.lost() {
            // A whole read that ends with ReadyForQuery ends the statements waiting (whose
            // outcome was in the bytes not captured) and starts the framing again.
            if gap == 0 && ends_with_ready(data) {
                st.end_unframed(sink);
                rx.resync();
            }
            return;
        }
        rx.feed(data, gap, &mut |m: Message<'_>| st.backend(m.kind, m.body, end_ns, sink));
    }

    /// Events were lost or left out: what was waiting cannot be told apart from what follows.
    pub(super) fn reset(&mut self) -> u64 {
        let dropped = self.st.ops.len() as u64;
        self.st.ops.clear();
        self.tx.resync();
        self.rx.resync();
        dropped
    }

    /// The connection closed at `at` (0: unknown): statements still waiting end there, as
    /// errors when the server never answered after they were sent.
    pub(super) fn close(&mut self, at: u64, sink: &mut ConnSink<'_>) {
        self.st.close(at, sink);
    }
}

impl State {
    fn frontend(&mut self, kind: u8, body: &[u8], meta: Meta, sink: &mut ConnSink<'_>) {
        match kind {
            UNTYPED if body.len() >= 4 => {
                let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                if code == SSL_REQUEST || code == GSSENC_REQUEST {
                    self.encryption_asked = true;
                } else if code != CANCEL_REQUEST {
                    self.startup(body);
                }
            }
            b'Q' => {
                let (text, _) = postgres::cstr(body);
                let stmt = Statement::parse(text, sql::Dialect::Postgres);
                self.push(Some(stmt), true, meta, sink);
            }
            b'P' => {
                let (name, rest) = postgres::cstr(body);
                let (text, _) = postgres::cstr(rest);
                let stmt = Statement::parse(text, sql::Dialect::Postgres);
                let pg = &mut sink.g.stats.pg;
                if name.is_empty() {
                    self.unnamed = Some(stmt);
                } else if let Some(old) = self.statements.get_mut(name) {
                    *old = stmt;
                } else if self.statements.len() < MAX_STATEMENTS
                    && (pg.statements as usize) < MAX_STATEMENTS_TOTAL
                {
                    self.statements.insert(name.to_vec(), stmt);
                    pg.statements += 1;
                } else {
                    pg.statements_full += 1;
                }
            }
            b'B' => {
                let (portal, rest) = postgres::cstr(body);
                let (name, _) = postgres::cstr(rest);
                if portal.is_empty() {
                    self.portal = if name.is_empty() {
                        self.unnamed.clone()
                    } else {
                        self.statements.get(name).cloned()
                    };
                }
            }
            b'E' => {
                let (portal, _) = postgres::cstr(body);
                let stmt = if portal.is_empty() { self.portal.clone() } else { None };
                self.push(stmt, false, meta, sink);
            }
            b'C' if body.first() == Some(&b'S') => {
                // Close of a prepared statement.
                let (name, _) = postgres::cstr(&body[1..]);
                if self.statements.remove(name).is_some() {
                    sink.g.stats.pg.statements -= 1;
                }
            }
            _ => {}
        }
    }

    fn startup(&mut self, body: &[u8]) {
        let params = postgres::startup_params(body);
        let get = |key: &[u8]| params.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        // A connection without a database parameter uses the user's name.
        if let Some(db) = get(b"database").or_else(|| get(b"user")).filter(|d| !d.is_empty()) {
            self.database = Some(String::from_utf8_lossy(db).into());
        }
    }

    fn push(&mut self, stmt: Option<Arc<Statement>>, simple: bool, meta: Meta, sink: &mut ConnSink<'_>) {
        if self.ops.len() >= MAX_OPS {
            self.ops.pop_front();
            sink.g.stats.pg.overflow += 1;
        }
        let ctx = sink.new_ctx(&[], None, &meta);
        self.ops.push_back(Op { stmt, simple, meta, ctx, failure: None, rows: None });
    }

    fn backend(&mut self, kind: u8, body: &[u8], end_ns: u64, sink: &mut ConnSink<'_>) {
        match kind {
            ENCRYPTION_REPLY if body.first().is_some_and(|&b| b == b'S' || b == b'G') => {
                self.encrypted = true;
                sink.g.stats.pg.encrypted += 1;
            }
            b'C' | b'I' | b's' => {
                let rows = if kind == b'C' { postgres::returned_rows(body) } else { None };
                self.outcome(end_ns, sink, |op| op.rows = rows.or(op.rows));
            }
            b'E' => {
                let code = postgres::error_code(body)
                    .map_or_else(|| "error".to_string(), |c| String::from_utf8_lossy(c).into_owned());
                self.outcome(end_ns, sink, |op| op.failure = Some(Failure::Sqlstate(code)));
            }
            b'Z' => {
                if self.ops.front().is_some_and(|op| op.simple)
                    && let Some(op) = self.ops.pop_front()
                {
                    self.finish(op, end_ns, sink);
                }
                // Executions still waiting at the end of their batch were skipped after an
                // error: they never ran. (A later batch's are behind a simple query or none.)
                while self.ops.front().is_some_and(|op| !op.simple) {
                    self.ops.pop_front();
                    sink.g.stats.pg.skipped += 1;
                }
            }
            _ => {}
        }
    }

    /// The first waiting statement's outcome arrived (`record` notes it): an execution ends
    /// here, a simple query goes on to its `ReadyForQuery` (its statements may complete several
    /// commands).
    fn outcome(&mut self, end_ns: u64, sink: &mut ConnSink<'_>, record: impl FnOnce(&mut Op)) {
        let Some(op) = self.ops.front_mut() else {
            return;
        };
        record(op);
        if !op.simple
            && let Some(op) = self.ops.pop_front()
        {
            self.finish(op, end_ns, sink);
        }
    }

    /// The server's messages were not all seen: every statement waiting ends at its last byte.
    fn end_unframed(&mut self, sink: &mut ConnSink<'_>) {
        while let Some(op) = self.ops.pop_front() {
            sink.g.stats.pg.unframed += 1;
            let end = self.last_rx_ns;
            self.finish(op, end, sink);
        }
    }

    fn close(&mut self, at: u64, sink: &mut ConnSink<'_>) {
        sink.g.stats.pg.statements -= self.statements.len() as u64;
        self.statements.clear();
        while let Some(mut op) = self.ops.pop_front() {
            let (end, answered) = super::end_at_close(self.last_rx_ns, op.meta.start_ns, at);
            if !answered {
                sink.g.stats.no_response += 1;
                op.failure = Some(Failure::NoResponse);
            }
            self.finish(op, end, sink);
        }
    }

    fn finish(&self, op: Op, end_ns: u64, sink: &mut ConnSink<'_>) {
        let span = build_span(sink.info, self.database.as_ref(), op, end_ns);
        sink.g.out.push(span);
        sink.g.stats.spans += 1;
    }
}

/// Whether a read's bytes end with a whole `ReadyForQuery` message.
fn ends_with_ready(data: &[u8]) -> bool {
    data.len() >= 6 && {
        let z = &data[data.len() - 6..];
        z[..5] == [b'Z', 0, 0, 0, 5] && matches!(z[5], b'I' | b'T' | b'E')
    }
}

/// The span of one statement, named and described as the OpenTelemetry database semantic
/// conventions ask: `{operation} {table}`, else the operation, the database, or the system.
fn build_span(info: &Info, database: Option<&Arc<str>>, op: Op, end_ns: u64) -> SpanRecord {
    let shared = |t: &Arc<str>| Text::Shared(t.clone());
    let stmt = op.stmt.as_deref();
    let name = match (stmt.and_then(|s| s.name.as_ref()), database) {
        (Some(n), _) | (None, Some(n)) => shared(n),
        (None, None) => "postgresql".into(),
    };
    let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(12);
    attrs.push(("db.system.name", Value::Str("postgresql".into())));
    if let Some(db) = database {
        attrs.push(("db.namespace", Value::Str(shared(db))));
    }
    if let Some(s) = stmt {
        s.push_attrs(&mut attrs);
    }
    if let Some(rows) = op.rows {
        attrs.push(("db.response.returned_rows", Value::Int(rows)));
    }
    if let Some(Failure::Sqlstate(code)) = &op.failure {
        attrs.push(("db.response.status_code", Value::Str(code.clone().into())));
    }
    push_db_server(&mut attrs, info);
    let error_type = match &op.failure {
        Some(Failure::Sqlstate(code)) => Some(Text::from(code.clone())),
        Some(Failure::NoResponse) => Some("no_response".into()),
        None => None,
    };
    let error = error_type.is_some();
    if let Some(e) = error_type {
        attrs.push(("error.type", Value::Str(e)));
    }
    op.ctx.record(Kind::Client, name, info.id.tgid, &op.meta, end_ns, error, attrs)
}
