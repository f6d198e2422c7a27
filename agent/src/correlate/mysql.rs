//! MySQL and MariaDB client connections → database client spans.
//!
//! One span per statement the application runs: a text query (`COM_QUERY`) or a prepared
//! statement's execution (`COM_STMT_EXECUTE`), from the write that sent it to the packet that
//! ends its response (an OK or ERR, or the EOF or OK after a result set's rows, counted; a
//! multi-statement query goes on while the server says more results follow). Prepared
//! statements are remembered by the id the server gave them (their text arrives once, in
//! `COM_STMT_PREPARE`) and sanitized once. Other commands (ping, `USE`, resets) make no span,
//! but their responses are framed. The parent is decided as for an HTTP client request: the
//! request the writing thread was serving.
//!
//! A connection seen from its start names the server (MariaDB or MySQL), the database and
//! whether result sets end with EOF packets; one open before tracing began learns the last from
//! its first result set. When bytes the capture cap left out hid where the server's packets
//! start, the statement waiting ends when the client writes again, at the last byte read: its
//! time is exact, its row count and error code unknown. Connections that switch to TLS are
//! counted and left alone (unless their TLS library is probed: then read in plain text).
use std::{collections::hash_map::Entry, sync::Arc};

use super::{
    ConnSink, Info, SpanCtx, push_db_server,
    span::{Kind, SpanRecord, Text, Value},
    statement::Statement,
    stream::Meta,
};
use crate::protocol::{
    mysql::{
        self, CLIENT_DEPRECATE_EOF, COM_INIT_DB, COM_QUERY, COM_QUIT, COM_STMT_CLOSE, COM_STMT_EXECUTE,
        COM_STMT_PREPARE, COM_STMT_SEND_LONG_DATA, Framer, Packet, SERVER_MORE_RESULTS_EXISTS,
    },
    sql::Dialect,
};

/// Prepared statements remembered per connection.
const MAX_STATEMENTS: usize = 256;
/// Prepared statements remembered over all connections (see the PostgreSQL bound).
pub(super) const MAX_STATEMENTS_TOTAL: usize = 4096;

/// Counters of MySQL connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct MysqlStats {
    /// Client connections recognised as MySQL or MariaDB.
    pub conns: u64,
    /// Of those, switched to TLS: not traced further (unless read in plain text).
    pub encrypted: u64,
    /// Statements that ended without their response all seen: their span ends at the last
    /// byte read, without rows or error code.
    pub unframed: u64,
    /// Prepared statements not remembered (too many on the connection or on the node): their
    /// executions' spans have no text.
    pub statements_full: u64,
    /// Prepared statements remembered now, over all connections.
    pub statements: u64,
}

impl MysqlStats {
    /// The counters by name, as the summary and the metrics page report them.
    pub fn counts(&self) -> [(&'static str, u64); 4] {
        [
            ("conns", self.conns),
            ("encrypted", self.encrypted),
            ("unframed", self.unframed),
            ("statements_full", self.statements_full),
        ]
    }
}

/// How a connection was recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opening {
    /// The server's greeting: the connection's start was seen.
    Greeting,
    /// What may be the header of the server's greeting (its body comes in the next read).
    GreetingHeader,
    /// A command on a connection that was already open.
    Established,
}

/// What a command waits for.
#[derive(Debug)]
enum Command {
    /// A statement run: a span.
    Statement { stmt: Option<Arc<Statement>>, ctx: SpanCtx },
    /// A statement prepared: remembered under the id its response gives.
    Prepare(Arc<Statement>),
    /// `USE db`: the connection's database once it succeeds.
    InitDb(Arc<str>),
    /// Anything else with a response (ping, resets...): framed, no span.
    Other,
}

/// A command sent, waiting for its response.
#[derive(Debug)]
struct Op {
    command: Command,
    meta: Meta,
    rows: Option<i64>,
    failure: Option<Failure>,
}

#[derive(Debug)]
enum Failure {
    /// The server's error number.
    Code(u16),
    /// The connection closed before the server answered.
    NoResponse,
}

/// Where the response being read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Nothing is waiting.
    Nothing,
    /// A response's (or the next result set's) first packet.
    First,
    /// Column definitions, then their end.
    Columns { left: u64 },
    /// After the column definitions: an EOF packet, unless result sets end with OK only.
    ColumnsEnd,
    /// Rows, until the packet that ends them.
    Rows,
    /// A prepared statement's parameter definitions, then its column definitions.
    PrepareParams { left: u64, columns: u64 },
    /// After the parameter definitions: an EOF packet (unless OK only), then the columns.
    PrepareParamsEnd { columns: u64 },
    /// A prepared statement's column definitions.
    PrepareColumns { left: u64 },
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the server's greeting.
    Greeting,
    /// Authenticating, until the server's OK or ERR.
    Handshake,
    /// Commands.
    Commands,
}

/// One MySQL client connection's protocol state.
#[derive(Debug)]
pub(super) struct Session {
    tx: Framer,
    rx: Framer,
    st: State,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// `mariadb` or `mysql`, as the greeting said (None: not seen).
    system: Option<&'static str>,
    server_capabilities: u32,
    /// Result sets end with an OK packet only (None: not known yet).
    deprecate_eof: Option<bool>,
    database: Option<Arc<str>>,
    statements: super::HashMap<u32, Arc<Statement>>,
    op: Option<Op>,
    expect: Expect,
    encrypted: bool,
    /// A greeting was expected and something else came.
    rejected: bool,
    /// When the last byte from the server was read.
    last_rx_ns: u64,
}

impl Session {
    pub(super) fn new(opening: Opening) -> Session {
        Session {
            tx: Framer::default(),
            rx: Framer::default(),
            st: State {
                phase: if opening == Opening::Established { Phase::Commands } else { Phase::Greeting },
                system: None,
                server_capabilities: 0,
                deprecate_eof: None,
                database: None,
                statements: super::HashMap::default(),
                op: None,
                expect: Expect::Nothing,
                encrypted: false,
                rejected: false,
                last_rx_ns: 0,
            },
        }
    }

    /// Statements waiting for their response (one at most: the protocol takes turns).
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        usize::from(self.st.op.as_ref().is_some_and(|op| matches!(op.command, Command::Statement { .. })))
    }

    /// Whether the server's greeting was expected and what came was not one: not MySQL.
    pub(super) fn rejected(&self) -> bool {
        self.st.rejected
    }

    /// Whether its traffic is encrypted (nothing more to read).
    pub(super) fn encrypted(&self) -> bool {
        self.st.encrypted
    }

    /// The encrypted connection is read in plain text from here on (its TLS library is probed):
    /// the handshake response follows, in the session.
    pub(super) fn decrypted(&mut self) {
        self.st.encrypted = false;
        self.tx.resync();
        self.rx.resync();
    }

    /// The client wrote (`data` captured, then `gap` bytes not).
    pub(super) fn write(&mut self, data: &[u8], gap: u64, meta: Meta, sink: &mut ConnSink<'_>) {
        let Session { tx, rx, st } = self;
        if rx.lost() {
            // The server's turn is over: whatever it answered ended by its last byte.
            st.end_unframed(sink);
            rx.resync();
        } else if !rx.at_start() {
            rx.resync();
        }
        if tx.lost() {
            tx.resync();
        }
        tx.feed(data, gap, &mut |p: Packet<'_>| st.client_packet(&p, meta, sink));
    }

    /// The client read (`data` captured, then `gap` bytes not) at `end_ns`.
    pub(super) fn read(&mut self, data: &[u8], gap: u64, end_ns: u64, sink: &mut ConnSink<'_>) {
        let Session { tx, rx, st } = self;
        st.last_rx_ns = end_ns;
        if !tx.at_start() {
            // The client's turn is over, so was its packet.
            tx.resync();
        }
        rx.feed(data, gap, &mut |p: Packet<'_>| st.server_packet(&p, end_ns, sink));
    }

    /// Events were lost or left out: what was waiting cannot be told apart from what follows.
    pub(super) fn reset(&mut self) -> u64 {
        let dropped =
            u64::from(self.st.op.take().is_some_and(|op| matches!(op.command, Command::Statement { .. })));
        self.st.expect = Expect::Nothing;
        self.tx.resync();
        self.rx.resync();
        dropped
    }

    /// The connection closed at `at` (0: unknown): a statement still waiting ends there, as an
    /// error when the server never answered after it was sent.
    pub(super) fn close(&mut self, at: u64, sink: &mut ConnSink<'_>) {
        let st = &mut self.st;
        sink.g.stats.mysql.statements -= st.statements.len() as u64;
        st.statements.clear();
        if let Some(mut op) = st.op.take() {
            let (end, answered) = super::end_at_close(st.last_rx_ns, op.meta.start_ns, at);
            if !answered {
                op.failure = Some(Failure::NoResponse);
                if matches!(op.command, Command::Statement { .. }) {
                    sink.g.stats.no_response += 1;
                }
            }
            st.finish(op, end, sink);
        }
    }
}

impl State {
    fn client_packet(&mut self, p: &Packet<'_>, meta: Meta, sink: &mut ConnSink<'_>) {
        if p.continued {
            return;
        }
        if self.phase == Phase::Handshake {
            // The handshake response (after an SSL request, again in TLS); then auth data.
            if matches!(p.seq, 1 | 2)
                && let Some(login) = mysql::login(p.body)
            {
                if login.ssl {
                    self.encrypted = true;
                    sink.g.stats.mysql.encrypted += 1;
                    return;
                }
                self.deprecate_eof =
                    Some(login.capabilities & self.server_capabilities & CLIENT_DEPRECATE_EOF != 0);
                if let Some(db) = login.database {
                    self.database = Some(String::from_utf8_lossy(&db).into());
                }
            }
            return;
        }
        // A command starts a sequence; later packets of the client's (a LOAD DATA file) do not.
        if p.seq != 0 {
            return;
        }
        let Some((&code, rest)) = p.body.split_first() else {
            return;
        };
        let command = match code {
            COM_QUERY => {
                let stmt = Statement::parse(rest, Dialect::MySql);
                Command::Statement { stmt: Some(stmt), ctx: sink.new_ctx(&[], None, &meta) }
            }
            COM_STMT_PREPARE => Command::Prepare(Statement::parse(rest, Dialect::MySql)),
            COM_STMT_EXECUTE => {
                let stmt = rest.get(..4).and_then(|id| {
                    self.statements.get(&u32::from_le_bytes([id[0], id[1], id[2], id[3]])).cloned()
                });
                Command::Statement { stmt, ctx: sink.new_ctx(&[], None, &meta) }
            }
            COM_INIT_DB => Command::InitDb(String::from_utf8_lossy(rest).into()),
            COM_STMT_CLOSE => {
                if let Some(id) = rest.get(..4)
                    && self.statements.remove(&u32::from_le_bytes([id[0], id[1], id[2], id[3]])).is_some()
                {
                    sink.g.stats.mysql.statements -= 1;
                }
                return;
            }
            // No response.
            COM_STMT_SEND_LONG_DATA | COM_QUIT => return,
            _ => Command::Other,
        };
        // A command before the last one's response was all seen: that one ended unseen.
        self.end_unframed(sink);
        self.op = Some(Op { command, meta, rows: None, failure: None });
        self.expect = Expect::First;
    }

    fn server_packet(&mut self, p: &Packet<'_>, end_ns: u64, sink: &mut ConnSink<'_>) {
        if self.encrypted || p.continued {
            return;
        }
        match self.phase {
            Phase::Greeting => {
                match mysql::greeting(p.body) {
                    Some(g) if p.seq == 0 => {
                        let system = if g.mariadb() { "mariadb" } else { "mysql" };
                        self.system = Some(system);
                        self.server_capabilities = g.capabilities;
                        self.phase = Phase::Handshake;
                        sink.g.stats.mysql.conns += 1;
                        let servers = &mut sink.g.mysql_servers;
                        if let Some(key) = super::addr_key(sink.info.remote)
                            && (servers.len() < super::MAX_MYSQL_SERVERS || servers.contains_key(&key))
                        {
                            servers.insert(key, system);
                        }
                    }
                    _ => self.rejected = true,
                }
                return;
            }
            Phase::Handshake => {
                // Auth switches and more auth data go on; OK or ERR ends the handshake.
                if matches!(mysql::kind(p, true), mysql::Kind::Ok { .. } | mysql::Kind::Err { .. })
                    && p.body.first() != Some(&0xfe)
                {
                    self.phase = Phase::Commands;
                }
                return;
            }
            Phase::Commands => {}
        }
        match self.expect {
            Expect::Nothing => {
                // An EOF after a prepared statement's last definitions, when it was not known
                // whether one comes: now it is.
                if matches!(mysql::kind(p, false), mysql::Kind::Eof { .. }) {
                    self.deprecate_eof = Some(false);
                }
            }
            Expect::First => self.first(p, end_ns, sink),
            Expect::Columns { left } => {
                self.expect = if left > 1 { Expect::Columns { left: left - 1 } } else { Expect::ColumnsEnd };
            }
            Expect::ColumnsEnd => {
                if self.deprecate_eof != Some(true)
                    && matches!(mysql::kind(p, false), mysql::Kind::Eof { .. })
                {
                    self.deprecate_eof = Some(false);
                    self.expect = Expect::Rows;
                } else {
                    // No EOF between definitions and rows: this is a row, or the end.
                    self.deprecate_eof.get_or_insert(true);
                    self.expect = Expect::Rows;
                    self.row(p, end_ns, sink);
                }
            }
            Expect::Rows => self.row(p, end_ns, sink),
            Expect::PrepareParams { left, columns } => {
                self.expect = if left > 1 {
                    Expect::PrepareParams { left: left - 1, columns }
                } else if self.deprecate_eof == Some(true) {
                    self.prepare_columns(columns, end_ns, sink)
                } else {
                    Expect::PrepareParamsEnd { columns }
                };
            }
            Expect::PrepareParamsEnd { columns } => {
                if matches!(mysql::kind(p, false), mysql::Kind::Eof { .. }) {
                    self.deprecate_eof = Some(false);
                    self.expect = self.prepare_columns(columns, end_ns, sink);
                } else {
                    // No EOF: this is the first column definition.
                    self.deprecate_eof = Some(true);
                    self.expect = self.prepare_columns(columns, end_ns, sink);
                    self.server_packet(p, end_ns, sink);
                }
            }
            Expect::PrepareColumns { left } => {
                if left > 1 {
                    self.expect = Expect::PrepareColumns { left: left - 1 };
                } else {
                    // With EOF packets, one follows the definitions: it arrives with nothing
                    // waiting (above) and is passed over.
                    self.done(end_ns, sink);
                }
            }
        }
    }

    /// What follows a prepared statement's parameter definitions.
    fn prepare_columns(&mut self, columns: u64, end_ns: u64, sink: &mut ConnSink<'_>) -> Expect {
        if columns > 0 {
            Expect::PrepareColumns { left: columns }
        } else {
            self.done(end_ns, sink);
            self.expect
        }
    }

    fn first(&mut self, p: &Packet<'_>, end_ns: u64, sink: &mut ConnSink<'_>) {
        let Some(op) = self.op.as_mut() else {
            self.expect = Expect::Nothing;
            return;
        };
        match mysql::kind(p, true) {
            mysql::Kind::Err { code } => {
                op.failure = Some(Failure::Code(code));
                self.done(end_ns, sink);
            }
            mysql::Kind::Ok { status } => {
                if let Command::Prepare(stmt) = &op.command
                    && let Some(h) = p.body.get(1..9)
                {
                    let id = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
                    let columns = u64::from(u16::from_le_bytes([h[4], h[5]]));
                    let params = u64::from(u16::from_le_bytes([h[6], h[7]]));
                    let stmt = stmt.clone();
                    self.remember(id, stmt, sink);
                    self.expect = if params > 0 {
                        Expect::PrepareParams { left: params, columns }
                    } else {
                        self.prepare_columns(columns, end_ns, sink)
                    };
                    return;
                }
                if status & SERVER_MORE_RESULTS_EXISTS == 0 {
                    self.done(end_ns, sink);
                }
            }
            _ => match mysql::lenenc(p.body) {
                // LOCAL INFILE (0xFB): the client sends the file, then the server answers.
                _ if p.body.first() == Some(&0xfb) => {}
                Some((columns, _)) if columns > 0 => {
                    op.rows.get_or_insert(0);
                    self.expect = Expect::Columns { left: columns };
                }
                _ => {}
            },
        }
    }

    fn row(&mut self, p: &Packet<'_>, end_ns: u64, sink: &mut ConnSink<'_>) {
        match mysql::kind(p, false) {
            mysql::Kind::Err { code } => {
                if let Some(op) = self.op.as_mut() {
                    op.failure = Some(Failure::Code(code));
                }
                self.done(end_ns, sink);
            }
            mysql::Kind::Eof { status } | mysql::Kind::Ok { status } => {
                if status & SERVER_MORE_RESULTS_EXISTS != 0 {
                    self.expect = Expect::First;
                } else {
                    self.done(end_ns, sink);
                }
            }
            mysql::Kind::Other => {
                if let Some(rows) = self.op.as_mut().and_then(|op| op.rows.as_mut()) {
                    *rows += 1;
                }
            }
        }
    }

    fn remember(&mut self, id: u32, stmt: Arc<Statement>, sink: &mut ConnSink<'_>) {
        let stats = &mut sink.g.stats.mysql;
        let room =
            self.statements.len() < MAX_STATEMENTS && (stats.statements as usize) < MAX_STATEMENTS_TOTAL;
        match self.statements.entry(id) {
            Entry::Occupied(mut e) => {
                e.insert(stmt);
            }
            Entry::Vacant(e) if room => {
                e.insert(stmt);
                stats.statements += 1;
            }
            Entry::Vacant(_) => stats.statements_full += 1,
        }
    }

    /// The waiting command's response is complete.
    fn done(&mut self, end_ns: u64, sink: &mut ConnSink<'_>) {
        self.expect = Expect::Nothing;
        if let Some(op) = self.op.take() {
            if let (Command::InitDb(db), None) = (&op.command, &op.failure) {
                self.database = Some(db.clone());
            }
            self.finish(op, end_ns, sink);
        }
    }

    /// The server's packets were not all seen: the statement waiting ends at its last byte.
    fn end_unframed(&mut self, sink: &mut ConnSink<'_>) {
        self.expect = Expect::Nothing;
        if let Some(mut op) = self.op.take() {
            if matches!(op.command, Command::Statement { .. }) {
                sink.g.stats.mysql.unframed += 1;
            }
            op.rows = None;
            let end = self.last_rx_ns.max(op.meta.start_ns);
            self.finish(op, end, sink);
        }
    }

    fn finish(&self, op: Op, end_ns: u64, sink: &mut ConnSink<'_>) {
        if let Command::Statement { stmt, ctx } = op.command {
            // A connection that showed no greeting: its server as another connection's named it.
            let system = self.system.unwrap_or_else(|| {
                super::addr_key(sink.info.remote)
                    .and_then(|k| sink.g.mysql_servers.get(&k).copied())
                    .unwrap_or("mysql")
            });
            let span = build_span(
                sink.info,
                system,
                self.database.as_ref(),
                stmt.as_deref(),
                ctx,
                &op.meta,
                op.rows,
                op.failure,
                end_ns,
            );
            sink.g.out.push(span);
            sink.g.stats.spans += 1;
        }
    }
}

/// The span of one statement, named and described as the OpenTelemetry database conventions
/// ask: `{operation} {table}`, else the operation, the database, or the system.
#[allow(clippy::too_many_arguments)]
fn build_span(
    info: &Info,
    system: &'static str,
    database: Option<&Arc<str>>,
    stmt: Option<&Statement>,
    ctx: SpanCtx,
    meta: &Meta,
    rows: Option<i64>,
    failure: Option<Failure>,
    end_ns: u64,
) -> SpanRecord {
    let name = match (stmt.and_then(|s| s.name.as_ref()), database) {
        (Some(n), _) | (None, Some(n)) => Text::Shared(n.clone()),
        (None, None) => system.into(),
    };
    let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(12);
    attrs.push(("db.system.name", Value::Str(system.into())));
    if let Some(db) = database {
        attrs.push(("db.namespace", Value::Str(Text::Shared(db.clone()))));
    }
    if let Some(s) = stmt {
        s.push_attrs(&mut attrs);
    }
    if let Some(rows) = rows {
        attrs.push(("db.response.returned_rows", Value::Int(rows)));
    }
    push_db_server(&mut attrs, info);
    let error_type: Option<Text> = match &failure {
        Some(Failure::Code(code)) => {
            attrs.push(("db.response.status_code", Value::Str(code.to_string().into())));
            Some(code.to_string().into())
        }
        Some(Failure::NoResponse) => Some("no_response".into()),
        None => None,
    };
    let error = error_type.is_some();
    if let Some(e) = error_type {
        attrs.push(("error.type", Value::Str(e)));
    }
    ctx.record(Kind::Client, name, info.id.tgid, meta, end_ns, error, attrs)
}
