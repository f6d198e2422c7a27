//! Events → spans. Pure code: recorded events in, span records out.
//!
//! Per connection, a request stream and a response stream reassemble HTTP/1 messages; requests
//! wait in a FIFO (pipelining) for their responses; each exchange becomes one span. Server spans
//! run from the first byte of the request read to the last byte of the response written; client
//! spans from the first byte of the request written to the last byte of the response read.
//!
//! Trace context, in order of authority: a valid incoming `traceparent` (server spans); a
//! `traceparent` the application itself wrote on an outgoing request (client spans); the server
//! request the same thread is serving (thread context from the kernel, exact for
//! thread-per-request servers); otherwise a new trace. Where the serving request is ambiguous the
//! client span is not guessed into a parent: it is marked `tracewire.link = unlinked`.
pub mod fifo;
pub mod http2;
mod memcached;
mod mysql;
pub mod postgres;
mod redis;
pub mod route;
pub mod span;
mod statement;
pub mod stream;

use std::{
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use route::Routes;

use crate::sampling::{RateLimiter, Sampler};
use span::{Kind, Link, SpanRecord, Text, Value};
use stream::{Meta, Side, Sink, Stream};
use tracewire_common::{
    CTX_AMBIGUOUS, CTX_GOROUTINE, CTX_NONE, CTX_ROOT, CTX_TCP, CTX_THREAD, CTX_UPSTREAM, ConnEvent, ConnId,
    DATA_FLAG_AFTER_LOSS, DATA_FLAG_AFTER_SKIP, DATA_FLAG_TLS, DIR_INGRESS, DataEvent, EventKind,
    ROLE_CLIENT, ROLE_SERVER, SockAddr, TraceCtx,
};

use crate::{
    events::{Event, clock::Clock, socket_addr},
    protocol::{
        http1::{self, Framing, RequestHead, ResponseHead},
        traceparent,
    },
};

/// Hash maps keyed by connection and address: foldhash (seeded per process) instead of SipHash,
/// which took several percent of the pipeline.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Requests waiting for a response on one connection (pipelining depth).
pub const MAX_PENDING: usize = 64;
/// Invalid messages before a connection that never carried HTTP is ignored.
const NON_HTTP_STRIKES: u8 = 2;

/// Events a client connection given up on as not HTTP still gets looked at for a database
/// protocol (one open before tracing began may first show mid-stream) before it is muted.
const CLIENT_MUTE_AFTER: u8 = 32;

/// Connections waiting to be muted in the kernel; more are counted (`mute_queue_full`) and go
/// on being reported.
const MAX_MUTE_QUEUE: usize = 4096;

/// Counters of the correlator, by reason.
#[derive(Debug, Default, Clone)]
pub struct CorrelateStats {
    /// Spans produced.
    pub spans: u64,
    /// Invalid or unparseable bytes, by reason.
    pub invalid: BTreeMap<&'static str, u64>,
    /// Connections recognised as not HTTP and skipped.
    pub non_http_conns: u64,
    /// Connections handed to the kernel to mute: no protocol read on them (see `take_mutes`).
    pub muted_conns: u64,
    /// Connections not muted because the queue to the kernel was full.
    pub mute_queue_full: u64,
    /// Connections read in plain text through their TLS library.
    pub tls_conns: u64,
    /// Responses with no request seen (tracing started mid-exchange).
    pub unpaired_responses: u64,
    /// Requests dropped because too many waited for responses on one connection.
    pub pending_overflow: u64,
    /// Connections not tracked because the table was full.
    pub conn_table_full: u64,
    /// Connections that became tunnels (upgrade, CONNECT).
    pub tunnels: u64,
    /// Incoming `traceparent` headers accepted.
    pub traceparent_valid: u64,
    /// Incoming `traceparent` headers rejected (ignored).
    pub traceparent_invalid: u64,
    /// Client spans linked to the request their thread was serving.
    pub linked_thread: u64,
    /// Client spans linked to the request their goroutine was serving (Go).
    pub linked_goroutine: u64,
    /// Client spans linked to the request nginx made the upstream request for.
    pub linked_upstream: u64,
    /// Client spans whose parent was ambiguous.
    pub unlinked: u64,
    /// Requests that never got a response (connection closed).
    pub no_response: u64,
    /// Server spans joined to the client span at the other end of the same connection.
    pub paired_same_node: u64,
    /// Server spans whose parent came in the TCP option of the peer's agent.
    pub linked_tcp: u64,
    /// Requests abandoned because the kernel left part of their exchange unreported (a request
    /// whose sampling differed from its continuation's, e.g. around 100-continue).
    pub unsampled_gap: u64,
    /// Requests abandoned because an event of their connection was lost to a full ring buffer
    /// (the kernel's `ring_full`): the response that follows may be a later request's.
    pub lost_gap: u64,
    /// Requests where the kernel's context and the parsed request disagreed (a header beyond
    /// the kernel's scan window, a parent userspace could not confirm): never a guessed parent,
    /// the span keeps the trace id its calls carried.
    pub kernel_ctx_differs: u64,
    /// PostgreSQL client connections.
    pub pg: postgres::PgStats,
    /// Redis client connections.
    pub redis: redis::RedisStats,
    /// Memcached client connections.
    pub memcached: memcached::MemcachedStats,
    /// MySQL and MariaDB client connections.
    pub mysql: mysql::MysqlStats,
    /// HTTP/2 connections.
    pub h2: http2::H2Stats,
}

impl CorrelateStats {
    /// `dropped` requests abandoned at an event flagged after a loss or after unsampled bytes.
    fn count_gap(&mut self, flags: u16, dropped: u64) {
        if flags & DATA_FLAG_AFTER_LOSS != 0 {
            self.lost_gap += dropped;
        } else {
            self.unsampled_gap += dropped;
        }
    }

    /// The scalar counters by name, as the summary and the metrics page report them.
    pub fn counts(&self) -> [(&'static str, u64); 19] {
        [
            ("non_http_conns", self.non_http_conns),
            ("muted_conns", self.muted_conns),
            ("mute_queue_full", self.mute_queue_full),
            ("tls_conns", self.tls_conns),
            ("unpaired_responses", self.unpaired_responses),
            ("no_response", self.no_response),
            ("pending_overflow", self.pending_overflow),
            ("conn_table_full", self.conn_table_full),
            ("traceparent_valid", self.traceparent_valid),
            ("traceparent_invalid", self.traceparent_invalid),
            ("linked_thread", self.linked_thread),
            ("linked_goroutine", self.linked_goroutine),
            ("linked_upstream", self.linked_upstream),
            ("linked_tcp", self.linked_tcp),
            ("paired_same_node", self.paired_same_node),
            ("unlinked", self.unlinked),
            ("unsampled_gap", self.unsampled_gap),
            ("lost_gap", self.lost_gap),
            ("kernel_ctx_differs", self.kernel_ctx_differs),
        ]
    }
}

/// Trace context of a span being built.
#[derive(Debug, Clone)]
struct SpanCtx {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
    parent_remote: bool,
    flags: u8,
    trace_state: Option<String>,
    link: Link,
    links: Vec<([u8; 16], [u8; 8])>,
}

impl SpanCtx {
    /// A child of `parent` in its trace (same flags and tracestate).
    fn child_of(parent: &SpanCtx, span_id: [u8; 8], parent_remote: bool, link: Link) -> SpanCtx {
        SpanCtx {
            trace_id: parent.trace_id,
            span_id,
            parent_id: Some(parent.span_id),
            parent_remote,
            flags: parent.flags,
            trace_state: parent.trace_state.clone(),
            link,
            links: Vec::new(),
        }
    }
}

/// Span links kept for an unlinked client span.
const MAX_LINKS: usize = 4;
/// The most span slots set aside for the next poll (see [`Correlator::take_spans`]).
const MAX_SPANS_PREALLOC: usize = 4096;

#[derive(Debug)]
struct Pending {
    head: RequestHead,
    meta: Meta,
    ctx: SpanCtx,
}

#[derive(Debug)]
struct Info {
    id: ConnId,
    role: u8,
    /// Derived from the kernel's addresses once per change, not once per span: parsing and
    /// formatting them was a visible share of the pipeline.
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    /// The peer's IP as text (`network.peer.address`, `client.address`).
    peer_ip: Option<std::sync::Arc<str>>,
    /// Same-node pairing key.
    pair: Option<PairKey>,
    /// Its bytes come from a TLS library in plain text (`https`).
    tls: bool,
    /// It carries HTTP/2.
    h2: bool,
}

impl Info {
    fn new(id: ConnId, role: u8, local: &SockAddr, remote: &SockAddr, text: &mut IpText) -> Info {
        let mut info =
            Info { id, role, local: None, remote: None, peer_ip: None, pair: None, tls: false, h2: false };
        info.set_addrs(local, remote, text);
        info
    }

    fn set_addrs(&mut self, local: &SockAddr, remote: &SockAddr, text: &mut IpText) {
        self.local = socket_addr(local);
        self.remote = socket_addr(remote);
        self.peer_ip = self.remote.map(|r| text.of(r.ip()));
        self.pair = match (addr_key(self.local), addr_key(self.remote)) {
            (Some(l), Some(r)) if self.role == ROLE_SERVER => Some((r, l)),
            (Some(l), Some(r)) => Some((l, r)),
            _ => None,
        };
    }
}

/// Peer addresses as text, shared between connections: formatting an address cost as much as
/// the rest of a connection's bookkeeping (connections that carry one request each made it a
/// twelfth of the pipeline), and a node's connections come from few peers. Direct-mapped with
/// a fixed number of slots, so bounded: an address whose slot another one took is formatted
/// again.
struct IpText {
    slots: Vec<Option<(IpAddr, Arc<str>)>>,
}

impl IpText {
    const SLOTS: usize = 256;

    fn of(&mut self, ip: IpAddr) -> Arc<str> {
        let bits = match ip {
            IpAddr::V4(v4) => u64::from(v4.to_bits()),
            IpAddr::V6(v6) => {
                let b = v6.to_bits();
                (b as u64) ^ ((b >> 64) as u64)
            }
        };
        // Fibonacci hashing: the top bits of the product mix every input bit.
        let slot = (bits.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize % Self::SLOTS;
        if let Some(Some((k, text))) = self.slots.get(slot)
            && *k == ip
        {
            return text.clone();
        }
        let text: Arc<str> = ip.to_string().into();
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Some((ip, text.clone()));
        }
        text
    }
}

impl Default for IpText {
    fn default() -> Self {
        IpText { slots: vec![None; Self::SLOTS] }
    }
}

/// Bookkeeping of one connection (separate from its streams so a stream can report into it).
#[derive(Debug, Default)]
struct Book {
    /// Boxed: a request moves from here to `current` by pointer, and an idle keep-alive
    /// connection (most of them, at 10,000 connections) holds two pointers instead of two
    /// inline requests (a connection's state went from 1.1 KiB to under 0.5).
    pending: fifo::Fifo<Box<Pending>>,
    current: Option<(Box<Pending>, ResponseHead)>,
    interim: bool,
    tunnel: bool,
    had_http: bool,
    strikes: u8,
    ignored: bool,
    /// Events seen since the connection was ignored (clients: see [`CLIENT_MUTE_AFTER`]).
    unread: u8,
    /// Handed to the kernel to mute.
    muted: bool,
    /// The kernel span id the last request took (each turn's context serves one request).
    kernel_span: Option<[u8; 8]>,
}

struct Conn {
    info: Info,
    req: Stream,
    resp: Stream,
    book: Book,
    /// A database client connection's protocol state (its bytes skip the HTTP streams).
    db: Option<Database>,
    /// What looked like a database protocol was not: no other is looked for.
    not_db: bool,
    /// An HTTP/2 connection's protocol state (its bytes skip the HTTP/1 streams).
    h2: Option<Box<http2::Session>>,
}

/// The database protocol a client connection speaks, and its state.
enum Database {
    Postgres(Box<postgres::Session>),
    Redis(Box<redis::Session>),
    Mysql(Box<mysql::Session>),
    Memcached(Box<memcached::Session>),
}

impl Database {
    /// Its traffic is encrypted and not read (the server accepted TLS, no library probed).
    fn encrypted(&self) -> bool {
        match self {
            Database::Postgres(s) => s.encrypted(),
            Database::Mysql(s) => s.encrypted(),
            Database::Redis(_) | Database::Memcached(_) => false,
        }
    }

    /// The connection is read in plain text from here on (its TLS library is probed).
    fn decrypted(&mut self) {
        match self {
            Database::Postgres(s) => s.decrypted(),
            Database::Mysql(s) => s.decrypted(),
            Database::Redis(_) | Database::Memcached(_) => {}
        }
    }

    /// What it waited for is lost; returns the operations dropped.
    fn reset(&mut self) -> u64 {
        match self {
            Database::Postgres(s) => s.reset(),
            Database::Redis(s) => s.reset(),
            Database::Mysql(s) => s.reset(),
            Database::Memcached(s) => s.reset(),
        }
    }

    fn read(&mut self, data: &[u8], gap: u64, end_ns: u64, sink: &mut ConnSink<'_>) {
        match self {
            Database::Postgres(s) => s.read(data, gap, end_ns, sink),
            Database::Redis(s) => s.read(data, gap, end_ns, sink),
            Database::Mysql(s) => s.read(data, gap, end_ns, sink),
            Database::Memcached(s) => s.read(data, gap, end_ns, sink),
        }
    }

    fn write(&mut self, data: &[u8], gap: u64, meta: Meta, sink: &mut ConnSink<'_>) {
        match self {
            Database::Postgres(s) => s.write(data, gap, meta, sink),
            Database::Redis(s) => s.write(data, gap, meta, sink),
            Database::Mysql(s) => s.write(data, gap, meta, sink),
            Database::Memcached(s) => s.write(data, gap, meta, sink),
        }
    }

    fn close(&mut self, at: u64, sink: &mut ConnSink<'_>) {
        match self {
            Database::Postgres(s) => s.close(at, sink),
            Database::Redis(s) => s.close(at, sink),
            Database::Mysql(s) => s.close(at, sink),
            Database::Memcached(s) => s.close(at, sink),
        }
    }

    /// What looked like the start of this protocol was not (a MySQL greeting's header followed
    /// by something else, a memcached command answered by a Redis server).
    fn rejected(&self) -> bool {
        match self {
            Database::Mysql(s) => s.rejected(),
            Database::Memcached(s) => s.rejected(),
            Database::Postgres(_) | Database::Redis(_) => false,
        }
    }

    /// Operations waiting for their answers.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        match self {
            Database::Postgres(s) => s.waiting(),
            Database::Redis(s) => s.waiting(),
            Database::Mysql(s) => s.waiting(),
            Database::Memcached(s) => s.waiting(),
        }
    }
}

/// Where a database operation still waiting when its connection closed (at `at`, 0: unknown)
/// ends, and whether the server answered it: at the last byte read (`last_rx_ns`) if that came
/// after the operation was sent (`start_ns`), else at the close, unanswered.
fn end_at_close(last_rx_ns: u64, start_ns: u64, at: u64) -> (u64, bool) {
    let answered = last_rx_ns >= start_ns && last_rx_ns != 0;
    (if answered { last_rx_ns } else { at.max(last_rx_ns) }, answered)
}

/// A client connection's bytes that show a database protocol: PostgreSQL, Redis or memcached
/// from a client's write, MySQL from a server's greeting (read whole, or its header alone) or a write of
/// one command. Counts the connection (a MySQL greeting when the session has read it).
fn detect_database(
    d: &DataEvent,
    payload: &[u8],
    stats: &mut CorrelateStats,
    first_read: bool,
) -> Option<Database> {
    use crate::protocol::{memcached as mc, mysql as my, postgres as pg, redis as rd};
    let ingress = d.direction == DIR_INGRESS;
    let whole = d.captured == d.len;
    if ingress {
        let opening = if whole && my::is_greeting(payload) {
            mysql::Opening::Greeting
        } else if whole && first_read && my::is_greeting_header(payload) {
            mysql::Opening::GreetingHeader
        } else {
            return None;
        };
        return Some(Database::Mysql(Box::new(mysql::Session::new(opening))));
    }
    if let Some(opening) = pg::detect(payload, d.len) {
        stats.pg.conns += 1;
        return Some(Database::Postgres(Box::new(postgres::Session::new(opening))));
    }
    if rd::detect(payload) {
        stats.redis.conns += 1;
        return Some(Database::Redis(Box::new(redis::Session::new())));
    }
    if mc::detect(payload) {
        stats.memcached.conns += 1;
        return Some(Database::Memcached(Box::new(memcached::Session::new())));
    }
    if my::is_command(payload, d.len) {
        stats.mysql.conns += 1;
        return Some(Database::Mysql(Box::new(mysql::Session::new(mysql::Opening::Established))));
    }
    None
}

/// Server requests in flight, by server connection: what a client span made by a thread serving
/// that connection may take as its parent. One in flight (the usual) is held in place, and an
/// entry lives as long as its connection: a vector allocated, or an entry inserted and removed,
/// for every request was a visible share of the pipeline.
type Serving = HashMap<ConnId, smallvec::SmallVec<[SpanCtx; 1]>>;

/// A socket address normalised for matching the two ends of one TCP connection
/// (IPv4-mapped IPv6 and IPv4 compare equal).
type AddrKey = ([u8; 16], u16);
/// (client end, server end) of one TCP connection.
type PairKey = (AddrKey, AddrKey);

fn addr_key(sa: Option<SocketAddr>) -> Option<AddrKey> {
    let sa = sa?;
    let ip = match sa.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    Some((ip.octets(), sa.port()))
}

/// The key of a connection as seen from its client end.
fn pair_key(info: &Info) -> Option<PairKey> {
    info.pair
}

impl ConnSink<'_> {
    /// The pairing key, when same-node pairing is on.
    fn pair(&self) -> Option<PairKey> {
        if self.g.no_pairing { None } else { self.info.pair }
    }
}

/// A server request waiting for its client end: (span id, server connection key).
type WaitingServer = ([u8; 8], (u32, u32));

/// Most requests waiting for their other end on one connection.
const MAX_PEER_WAIT: usize = 64;

/// Same-node pairing: when both ends of a TCP connection belong to traced processes, the n-th
/// request the client wrote is the n-th request the server read (one byte stream), so the
/// server span is the client span's child, exactly. Whichever end is seen second completes the
/// pair (events from two CPUs can arrive in either order).
#[derive(Default)]
struct Peers {
    /// Client requests whose server end has not been seen yet.
    clients: HashMap<PairKey, VecDeque<SpanCtx>>,
    /// Server requests whose client end has not been seen yet: (span id, server connection).
    servers: HashMap<PairKey, VecDeque<WaitingServer>>,
    /// Server spans to re-parent once the sink is done: (server connection, span id, client).
    fixups: Vec<((u32, u32), [u8; 8], SpanCtx)>,
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() >= MAX_PEER_WAIT {
        q.pop_front();
    }
    q.push_back(v);
}

/// State shared by all connections: a field of its own so that a connection (borrowed from the
/// table) and this can be borrowed at the same time.
#[derive(Default)]
struct Shared {
    /// Same-node pairing by request order; off when the kernel skips unsampled requests (the
    /// two ends may then skip different ones, and the order no longer matches).
    no_pairing: bool,
    routes: Routes,
    sampler: Sampler,
    /// `ratelimiting`: the limiter for traces started here rather than in the kernel.
    limiter: Option<RateLimiter>,
    peers: Peers,
    serving: Serving,
    stats: CorrelateStats,
    out: Vec<SpanRecord>,
    rng: fastrand::Rng,
    /// MySQL servers whose greeting said which they are (`mariadb`, `mysql`), by address: what
    /// connections open before tracing began, which showed no greeting, are named by.
    mysql_servers: HashMap<AddrKey, &'static str>,
    /// Connections to mute in the kernel (see [`Correlator::take_mutes`]).
    mute: Vec<ConnId>,
}

impl Shared {
    /// Queues connection `id` (whose book is `book`) for the kernel to mute, once (see
    /// [`Correlator::take_mutes`]), or counts that the queue was full.
    fn mute(&mut self, book: &mut Book, id: ConnId) {
        if std::mem::replace(&mut book.muted, true) {
            return;
        }
        if self.mute.len() < MAX_MUTE_QUEUE {
            self.mute.push(id);
            self.stats.muted_conns += 1;
        } else {
            self.stats.mute_queue_full += 1;
        }
    }
}

/// Most MySQL servers remembered by address.
const MAX_MYSQL_SERVERS: usize = 1024;

struct ConnSink<'a> {
    info: &'a Info,
    book: &'a mut Book,
    g: &'a mut Shared,
}

fn random_nonzero<const N: usize>(rng: &mut fastrand::Rng) -> [u8; N] {
    loop {
        let mut b = [0u8; N];
        rng.fill(&mut b);
        if b != [0; N] {
            return b;
        }
    }
}

impl ConnSink<'_> {
    /// The kernel's context for this message's turn, unless another request of the same turn
    /// already took it (pipelining: one turn, several requests).
    fn kernel_ctx(&mut self, meta: &Meta) -> Option<TraceCtx> {
        let k = meta.kctx;
        if k.origin == CTX_NONE || self.book.kernel_span == Some(k.span_id) {
            return None;
        }
        self.book.kernel_span = Some(k.span_id);
        Some(k)
    }

    /// The trace context of a request: `traceparent` and `tracestate` are what its head carried
    /// (none for protocols without them).
    #[inline]
    fn new_ctx(&mut self, traceparent: &[Vec<u8>], tracestate: Option<&[u8]>, meta: &Meta) -> SpanCtx {
        let kernel = self.kernel_ctx(meta);
        let span_id = match &kernel {
            Some(k) => k.span_id,
            None => random_nonzero::<8>(&mut self.g.rng),
        };
        let values: Vec<&[u8]> = traceparent.iter().map(Vec::as_slice).collect();
        let incoming = match traceparent::parse_all(&values) {
            Ok(Some(tp)) => {
                self.g.stats.traceparent_valid += 1;
                Some(tp)
            }
            Ok(None) => None,
            Err(_) => {
                self.g.stats.traceparent_invalid += 1;
                None
            }
        };
        let trace_state =
            incoming.and(tracestate).and_then(traceparent::tracestate).filter(|s| !s.is_empty());
        if self.info.role == ROLE_SERVER {
            // Same-node pairing keeps its n-th-request order whatever decides the parent.
            let mut paired = None;
            if incoming.is_none()
                && let Some(key) = self.pair()
            {
                match self.g.peers.clients.get_mut(&key).and_then(VecDeque::pop_front) {
                    Some(client) => paired = Some(client),
                    None => {
                        let conn = (self.info.id.tgid, self.info.id.fd);
                        push_bounded(self.g.peers.servers.entry(key).or_default(), (span_id, conn));
                    }
                }
            }
            if let Some(tp) = incoming {
                if kernel.is_some_and(|k| k.trace_id != tp.trace_id) {
                    // The kernel missed the header (beyond its scan window): calls this request
                    // makes went out with another trace id.
                    self.g.stats.kernel_ctx_differs += 1;
                }
                return SpanCtx {
                    trace_id: tp.trace_id,
                    span_id,
                    parent_id: Some(tp.parent_id),
                    parent_remote: true,
                    flags: self.decide(&tp.trace_id, tp.flags),
                    trace_state,
                    link: Link::None,
                    links: Vec::new(),
                };
            }
            if let Some(k) = kernel.filter(|k| k.origin == CTX_TCP) {
                self.g.stats.linked_tcp += 1;
                if paired.as_ref().is_some_and(|c| c.span_id != k.parent_id) {
                    self.g.stats.kernel_ctx_differs += 1;
                }
                return SpanCtx {
                    trace_id: k.trace_id,
                    span_id,
                    parent_id: Some(k.parent_id),
                    parent_remote: true,
                    flags: self.decide(&k.trace_id, k.trace_flags | traceparent::FLAG_RANDOM),
                    trace_state: None,
                    link: Link::None,
                    links: Vec::new(),
                };
            }
            if let Some(client) = paired {
                self.g.stats.paired_same_node += 1;
                if kernel.is_some() {
                    self.g.stats.kernel_ctx_differs += 1;
                }
                return SpanCtx::child_of(&client, span_id, true, Link::None);
            }
            return self.root(span_id, kernel.as_ref(), Link::None);
        }
        // Client: the serving request of this thread, if exactly one is in flight.
        let candidates: Vec<&SpanCtx> =
            if meta.thread_ctx.generation != 0 && meta.thread_ctx.tgid == self.info.id.tgid {
                self.g.serving.get(&meta.thread_ctx).map(|v| v.iter().collect()).unwrap_or_default()
            } else {
                Vec::new()
            };
        let links = |c: &[&SpanCtx]| c.iter().take(MAX_LINKS).map(|p| (p.trace_id, p.span_id)).collect();
        if let Some(tp) = incoming {
            // The application propagates itself: its header wins.
            let parent_id = match candidates.as_slice() {
                [p] if p.trace_id == tp.trace_id => p.span_id,
                _ => tp.parent_id,
            };
            return SpanCtx {
                trace_id: tp.trace_id,
                span_id,
                parent_id: Some(parent_id),
                parent_remote: false,
                flags: self.decide(&tp.trace_id, tp.flags),
                trace_state,
                link: Link::None,
                links: Vec::new(),
            };
        }
        match (kernel, candidates.as_slice()) {
            // The kernel linked it when the call left (and told the peer's agent so); userspace
            // confirms from what it parsed.
            // Through the thread, or a runtime the uprobes follow (a Go goroutine, an nginx
            // upstream): the kernel names `p`, the request the call was made for.
            (Some(k), [p])
                if let Some(link) = kernel_link(k.origin)
                    && p.span_id == k.parent_id
                    && p.trace_id == k.trace_id =>
            {
                *match link {
                    Link::Goroutine => &mut self.g.stats.linked_goroutine,
                    Link::Upstream => &mut self.g.stats.linked_upstream,
                    _ => &mut self.g.stats.linked_thread,
                } += 1;
                SpanCtx::child_of(p, span_id, false, link)
            }
            // A new trace in the kernel, nothing served in userspace either.
            (Some(k), []) if k.origin == CTX_ROOT => self.root(span_id, Some(&k), Link::None),
            // Ambiguous, or the two views differ: the span keeps the trace id the call carried
            // (its downstream is there) and no parent; the candidates become span links.
            (Some(k), c) => {
                if k.origin != CTX_AMBIGUOUS {
                    self.g.stats.kernel_ctx_differs += 1;
                }
                let links = links(c);
                self.g.stats.unlinked += 1;
                let mut ctx = self.root(span_id, Some(&k), Link::Unlinked);
                ctx.links = links;
                ctx
            }
            (None, [p]) => {
                self.g.stats.linked_thread += 1;
                SpanCtx::child_of(p, span_id, false, Link::Thread)
            }
            (None, []) => self.root(span_id, None, Link::None),
            (None, c) => {
                let links = links(c);
                self.g.stats.unlinked += 1;
                let mut ctx = self.root(span_id, None, Link::Unlinked);
                ctx.links = links;
                ctx
            }
        }
    }

    /// The sampled flag for a trace continued from `flags` (a remote parent's).
    fn decide(&self, trace_id: &[u8; 16], flags: u8) -> u8 {
        let sampled = self.g.sampler.sample(trace_id, Some(flags & traceparent::FLAG_SAMPLED != 0));
        (flags & !traceparent::FLAG_SAMPLED) | u8::from(sampled)
    }

    /// A new trace: the kernel's when it minted one (calls already carried it), else a random id.
    fn root(&mut self, span_id: [u8; 8], kernel: Option<&TraceCtx>, link: Link) -> SpanCtx {
        let trace_id = match kernel {
            Some(k) => k.trace_id,
            None => random_nonzero::<16>(&mut self.g.rng),
        };
        // The trace starts here: the head-sampling decision is made once, now. A rate limit is
        // the kernel's for the traces it started (its decision went downstream with them).
        let sampled = match (kernel, &mut self.g.limiter) {
            (Some(k), Some(_)) => k.trace_flags & traceparent::FLAG_SAMPLED != 0,
            (None, Some(l)) => l.admit(std::time::Instant::now()),
            _ => self.g.sampler.sample(&trace_id, None),
        };
        SpanCtx {
            trace_id,
            span_id,
            parent_id: None,
            parent_remote: false,
            flags: traceparent::FLAG_RANDOM | u8::from(sampled),
            trace_state: None,
            link,
            links: Vec::new(),
        }
    }

    /// A request is in flight: a server's is what calls its thread makes may take as their
    /// parent, a client's waits for its server end on this node (same-node pairing).
    fn begin(&mut self, ctx: &SpanCtx) {
        if self.info.role == ROLE_SERVER {
            self.g.serving.entry(self.info.id).or_default().push(ctx.clone());
        } else if let Some(key) = self.pair() {
            match self.g.peers.servers.get_mut(&key).and_then(VecDeque::pop_front) {
                // The server end read this request first: re-parent its span.
                Some((span_id, conn)) => {
                    self.g.stats.paired_same_node += 1;
                    self.g.peers.fixups.push((conn, span_id, ctx.clone()));
                }
                None => push_bounded(self.g.peers.clients.entry(key).or_default(), ctx.clone()),
            }
        }
    }

    /// A request is over (answered, or dropped): no longer a parent, nor waiting for its other
    /// end (one answered without it appearing has no traced peer).
    fn forget(&mut self, ctx: &SpanCtx) {
        if let Some(key) = self.pair() {
            if self.info.role == ROLE_SERVER {
                if let Some(q) = self.g.peers.servers.get_mut(&key) {
                    q.retain(|(id, _)| *id != ctx.span_id);
                }
            } else if let Some(q) = self.g.peers.clients.get_mut(&key) {
                q.retain(|c| c.span_id != ctx.span_id);
            }
        }
        // An emptied list stays until its connection closes (see `Correlator::close`): the
        // connection's next request reuses it instead of inserting and removing an entry each.
        if self.info.role == ROLE_SERVER
            && let Some(list) = self.g.serving.get_mut(&self.info.id)
        {
            list.retain(|c| c.span_id != ctx.span_id);
        }
    }

    fn finish_exchange(&mut self, p: Box<Pending>, resp: Option<&ResponseHead>, end_ns: u64) {
        self.forget(&p.ctx);
        if resp.is_none() {
            self.g.stats.no_response += 1;
        }
        self.g.out.push(build_span(self.info, p, resp, end_ns, &self.g.routes));
        self.g.stats.spans += 1;
    }
}

impl Sink for ConnSink<'_> {
    fn request(&mut self, head: RequestHead, meta: Meta, _truncated: bool) -> Framing {
        self.book.had_http = true;
        let framing = http1::request_framing(&head);
        let ctx = self.new_ctx(&head.traceparent, head.tracestate.as_deref(), &meta);
        self.begin(&ctx);
        if self.book.pending.len() >= MAX_PENDING
            && let Some(old) = self.book.pending.pop_front()
        {
            self.g.stats.pending_overflow += 1;
            if let Some(list) = self.g.serving.get_mut(&self.info.id) {
                list.retain(|c| c.span_id != old.ctx.span_id);
            }
        }
        self.book.pending.push_back(Box::new(Pending { head, meta, ctx }));
        framing
    }

    fn response(&mut self, head: ResponseHead, _meta: Meta, _truncated: bool) -> Framing {
        self.book.had_http = true;
        if (100..200).contains(&head.status) && head.status != 101 {
            // 100 Continue and friends: interim, the final response follows.
            self.book.interim = true;
            return Framing::None;
        }
        let Some(req) = self.book.pending.pop_front() else {
            self.g.stats.unpaired_responses += 1;
            return http1::response_framing(&head, None);
        };
        let framing = http1::response_framing(&head, Some(&req.head.method));
        if head.status == 101 || (req.head.method == "CONNECT" && (200..300).contains(&head.status)) {
            self.book.tunnel = true;
        }
        self.book.current = Some((req, head));
        framing
    }

    fn end(&mut self, side: Side, end_ns: u64) {
        if side == Side::Request {
            return;
        }
        if self.book.interim {
            self.book.interim = false;
            return;
        }
        if let Some((req, head)) = self.book.current.take() {
            self.finish_exchange(req, Some(&head), end_ns);
        }
    }

    fn invalid(&mut self, _side: Side, reason: &'static str) {
        *self.g.stats.invalid.entry(reason).or_default() += 1;
        if !self.book.had_http {
            self.book.strikes += 1;
            if self.book.strikes >= NON_HTTP_STRIKES && !self.book.ignored {
                self.book.ignored = true;
                self.g.stats.non_http_conns += 1;
                // A server reads no other protocol: muted now, not at its next call (which may
                // never come). A client may still show a database protocol (see `data`).
                if self.info.role == ROLE_SERVER {
                    self.g.mute(self.book, self.info.id);
                }
            }
        }
    }
}

/// A `Host` value's host and port; the string is reused (cut at the port) where it can be.
fn host_port(mut host: String, default_port: u16) -> (String, u16) {
    // [v6]:port, host:port, host
    if let Some(rest) = host.strip_prefix('[')
        && let Some((h, p)) = rest.split_once(']')
    {
        return (h.to_string(), p.strip_prefix(':').and_then(|p| p.parse().ok()).unwrap_or(default_port));
    }
    // Bytes, not chars: ':' is ASCII, so its index is a char boundary, and a Host value is a
    // dozen bytes, which a plain loop searches faster than the str pattern machinery.
    let b = host.as_bytes();
    match b.iter().rposition(|&c| c == b':') {
        Some(at) if !b[..at].contains(&b':') => {
            let port = host[at + 1..].parse().unwrap_or(default_port);
            host.truncate(at);
            (host, port)
        }
        _ => (host, default_port),
    }
}

/// The connection's peer address, shared by all its spans.
fn peer_address(info: &Info) -> Value {
    Value::Str(info.peer_ip.clone().map_or(Text::Static(""), Text::Shared))
}

/// A database client span's `server.*` and `network.peer.*`: the server end of its connection
/// (a database protocol names no host of its own).
fn push_db_server(attrs: &mut Vec<(&'static str, Value)>, info: &Info) {
    if let Some(peer) = info.remote {
        attrs.push(("server.address", peer_address(info)));
        attrs.push(("server.port", Value::Int(i64::from(peer.port()))));
        attrs.push(("network.peer.address", peer_address(info)));
        attrs.push(("network.peer.port", Value::Int(i64::from(peer.port()))));
    }
}

/// `server.address`/`server.port` (the request's host, else the server end's address) and
/// `network.peer.address`/`port`: what every span of a connection says about its two ends.
fn push_endpoints(
    attrs: &mut Vec<(&'static str, Value)>,
    info: &Info,
    host: Option<String>,
    default_port: u16,
) {
    let server_side = if info.role == ROLE_SERVER { info.local } else { info.remote };
    let (address, port) = match host {
        Some(h) => host_port(h, default_port),
        None => server_side.map_or((String::new(), 0), |a| (a.ip().to_string(), a.port())),
    };
    if !address.is_empty() {
        attrs.push(("server.address", Value::Str(address.into())));
        attrs.push(("server.port", Value::Int(i64::from(port))));
    }
    if let Some(peer) = info.remote {
        attrs.push(("network.peer.address", peer_address(info)));
        attrs.push(("network.peer.port", Value::Int(i64::from(peer.port()))));
    }
}

fn build_span(
    info: &Info,
    mut p: Box<Pending>,
    resp: Option<&ResponseHead>,
    end_ns: u64,
    routes: &Routes,
) -> SpanRecord {
    let kind = if info.role == ROLE_SERVER { Kind::Server } else { Kind::Client };
    let method = http1::normalize_method(&p.head.method);
    let (path, query) = http1::split_target(&p.head.target);
    let base = if method == "_OTHER" { "HTTP" } else { method };
    let named = routes.name(path);
    let name: Text = match &named {
        route::Named::Route(r) | route::Named::Heuristic(r) => format!("{base} {r}").into(),
        route::Named::None => base.into(),
    };
    let remote = info.remote;
    let (scheme, default_port) = if info.tls { ("https", 443) } else { ("http", 80) };
    let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(14);
    attrs.push(("http.request.method", Value::Str(method.into())));
    if method == "_OTHER" {
        attrs.push(("http.request.method_original", Value::Str(p.head.method.clone().into())));
    }
    let status = resp.map(|r| r.status);
    if let Some(s) = status {
        attrs.push(("http.response.status_code", Value::Int(i64::from(s))));
    }
    let version = match resp.map_or(p.head.minor, |r| r.minor) {
        _ if info.h2 => "2",
        0 => "1.0",
        _ => "1.1",
    };
    attrs.push(("network.protocol.version", Value::Str(version.into())));
    // A server span needs the Host header for nothing else: its string becomes the attribute.
    let host = if kind == Kind::Server { p.head.host.take() } else { p.head.host.clone() };
    push_endpoints(&mut attrs, info, host, default_port);
    match kind {
        Kind::Server => {
            if let route::Named::Route(r) = &named {
                attrs.push(("http.route", Value::Str(r.clone().into())));
            }
            // Without a query, the path is the whole target, which is not needed after this.
            let path = if query.is_none() && path.len() == p.head.target.len() {
                std::mem::take(&mut p.head.target)
            } else {
                path.to_string()
            };
            attrs.push(("url.path", Value::Str(path.into())));
            attrs.push(("url.scheme", Value::Str(scheme.into())));
            if let Some(q) = &query {
                attrs.push(("url.query", Value::Str(q.clone().into())));
            }
            // client.port is Opt-In in the HTTP semantic conventions; network.peer.port has it.
            if remote.is_some() {
                attrs.push(("client.address", peer_address(info)));
            }
            if let Some(ua) = &p.head.user_agent {
                attrs.push(("user_agent.original", Value::Str(ua.clone().into())));
            }
        }
        Kind::Client => {
            let authority = p.head.host.clone().unwrap_or_else(|| match remote {
                Some(a) if a.port() == default_port => a.ip().to_string(),
                Some(a) => a.to_string(),
                None => String::new(),
            });
            let full = if p.head.target.starts_with("http://") || p.head.target.starts_with("https://") {
                let (abs_path, _) = http1::split_target(&p.head.target);
                abs_path.to_string()
            } else {
                format!("{scheme}://{authority}{path}")
            };
            let full = match &query {
                Some(q) => format!("{full}?{q}"),
                None => full,
            };
            attrs.push(("url.full", Value::Str(full.into())));
        }
    }
    let error_type = match status {
        None => Some("no_response".to_string()),
        Some(s) if s >= 500 || (kind == Kind::Client && s >= 400) => Some(s.to_string()),
        _ => None,
    };
    if let Some(e) = &error_type {
        attrs.push(("error.type", Value::Str(e.clone().into())));
    }
    let error = error_type.is_some();
    p.ctx.record(kind, name, info.id.tgid, &p.meta, end_ns, error, attrs)
}

impl SpanCtx {
    /// The span record of a request with this context, whatever its protocol: an unlinked
    /// client span says so in an attribute.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn record(
        self,
        kind: Kind,
        name: Text,
        pid: u32,
        meta: &Meta,
        end_ns: u64,
        error: bool,
        mut attributes: Vec<(&'static str, Value)>,
    ) -> SpanRecord {
        if self.link == Link::Unlinked {
            attributes.push(("tracewire.link", Value::Str("unlinked".into())));
        }
        SpanRecord {
            links: self.links,
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_id: self.parent_id,
            parent_remote: self.parent_remote,
            flags: self.flags,
            trace_state: self.trace_state,
            kind,
            name,
            start_ns: meta.start_ns,
            end_ns: end_ns.max(meta.start_ns),
            pid,
            tid: meta.tid,
            error,
            attributes,
            link: self.link,
        }
    }
}

/// Turns events into spans.
pub struct Correlator {
    clock: Clock,
    /// Boxed: a table sized for many connections holds pointers, not 800-byte slots.
    conns: HashMap<(u32, u32), Box<Conn>>,
    max_conns: usize,
    shared: Shared,
    ip_text: IpText,
}

impl Correlator {
    /// A correlator converting kernel timestamps with `clock`, tracking at most `max_conns`
    /// connections.
    pub fn new(clock: Clock, max_conns: usize) -> Self {
        Correlator {
            clock,
            conns: HashMap::default(),
            max_conns,
            shared: Shared::default(),
            ip_text: IpText::default(),
        }
    }

    /// A correlator with a fixed random seed (reproducible ids in tests).
    pub fn with_seed(clock: Clock, max_conns: usize, seed: u64) -> Self {
        let mut c = Correlator::new(clock, max_conns);
        c.shared.rng = fastrand::Rng::with_seed(seed);
        c
    }

    /// Span naming from route patterns (and the optional heuristic).
    pub fn with_routes(mut self, routes: Routes) -> Self {
        self.shared.routes = routes;
        self
    }

    /// Same-node pairing by request order off (see [`Shared::no_pairing`]).
    pub fn without_pairing(mut self) -> Self {
        self.shared.no_pairing = true;
        self
    }

    /// Head sampling for traces that start here.
    pub fn with_sampler(mut self, sampler: Sampler) -> Self {
        self.shared.limiter = match sampler {
            Sampler::RateLimited(r) => Some(RateLimiter::new(r)),
            _ => None,
        };
        self.shared.sampler = sampler;
        self
    }

    /// Counters.
    pub fn stats(&self) -> &CorrelateStats {
        &self.shared.stats
    }

    /// Updates the clock offset (NTP slews the wall clock).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Takes the spans finished so far.
    pub fn take_spans(&mut self) -> Vec<SpanRecord> {
        // The next poll's spans go into a vector sized like this one's: not grown (and its
        // records moved) again from empty every time.
        let next = Vec::with_capacity(self.shared.out.len().min(MAX_SPANS_PREALLOC));
        std::mem::replace(&mut self.shared.out, next)
    }

    /// The connections no span will come of (no protocol read on them, tunnels), for the kernel
    /// to stop reporting (`Capture::mute`).
    pub fn take_mutes(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.shared.mute)
    }

    /// Open connections.
    pub fn open_conns(&self) -> usize {
        self.conns.len()
    }

    /// Processes one event.
    pub fn on_event(&mut self, ev: &Event<'_>) {
        match ev {
            Event::Conn(c) => match EventKind::try_from(c.header.kind) {
                Ok(EventKind::ConnOpen) => self.open(c),
                Ok(EventKind::ConnAddr) => {
                    if let Some(conn) = self.conns.get_mut(&(c.conn.tgid, c.conn.fd))
                        && conn.info.id.generation == c.conn.generation
                    {
                        conn.info.set_addrs(&c.local, &c.remote, &mut self.ip_text);
                    }
                }
                Ok(EventKind::ConnClose) => {
                    let at = self.clock.wall_ns(c.header.ts_ns);
                    self.close(c.conn.tgid, c.conn.fd, Some(c.conn.generation), at);
                }
                _ => {}
            },
            Event::Data(d, payload) => self.data(d, payload),
            Event::Proc(p) => {
                if EventKind::try_from(p.header.kind) == Ok(EventKind::Exit) {
                    let fds: Vec<u32> =
                        self.conns.keys().filter(|(t, _)| *t == p.pid).map(|(_, fd)| *fd).collect();
                    for fd in fds {
                        self.close(p.pid, fd, None, 0);
                    }
                }
            }
        }
    }

    /// Ends every connection (shutdown): requests without a response become error spans.
    pub fn close_all(&mut self) {
        let keys: Vec<(u32, u32)> = self.conns.keys().copied().collect();
        for (t, fd) in keys {
            self.close(t, fd, None, 0);
        }
    }

    fn open(&mut self, c: &ConnEvent) {
        let key = (c.conn.tgid, c.conn.fd);
        if c.role != ROLE_SERVER && c.role != ROLE_CLIENT {
            return;
        }
        if self.conns.contains_key(&key) {
            // A close we did not see: end the old connection first.
            self.close(c.conn.tgid, c.conn.fd, None, 0);
        }
        if self.conns.len() >= self.max_conns {
            self.shared.stats.conn_table_full += 1;
            return;
        }
        self.conns.insert(
            key,
            Box::new(Conn {
                info: Info::new(c.conn, c.role, &c.local, &c.remote, &mut self.ip_text),
                req: Stream::new(Side::Request),
                resp: Stream::new(Side::Response),
                book: Book::default(),
                db: None,
                not_db: false,
                h2: None,
            }),
        );
    }

    /// Ends a connection; `at` is when it closed (0: unknown, the last byte seen is used).
    fn close(&mut self, tgid: u32, fd: u32, generation: Option<u64>, at: u64) {
        let key = (tgid, fd);
        if let Some(g) = generation
            && self.conns.get(&key).is_some_and(|c| c.info.id.generation != g)
        {
            return;
        }
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        let last = conn.req.last_ns().max(conn.resp.last_ns());
        let mut sink = ConnSink { info: &conn.info, book: &mut conn.book, g: &mut self.shared };
        if let Some(db) = conn.db.as_mut() {
            db.close(at, &mut sink);
        }
        if let Some(h2) = conn.h2.as_mut() {
            h2.close(last.max(at), &mut sink);
        }
        conn.req.finish(&mut sink);
        conn.resp.finish(&mut sink);
        // A response cut short by the close ends at the last byte seen; requests that never got
        // an answer end when the connection closed (they waited until then), as errors.
        if let Some((p, head)) = sink.book.current.take() {
            sink.finish_exchange(p, Some(&head), last);
        }
        let end = last.max(at);
        while let Some(p) = sink.book.pending.pop_front() {
            sink.finish_exchange(p, None, end);
        }
        self.shared.serving.remove(&conn.info.id);
        if let Some(key) = pair_key(&conn.info) {
            if conn.info.role == ROLE_SERVER {
                self.shared.peers.servers.remove(&key);
            } else {
                self.shared.peers.clients.remove(&key);
            }
        }
        self.apply_fixups();
    }

    /// Re-parents server spans whose client end was seen after them.
    fn apply_fixups(&mut self) {
        for (key, span_id, client) in std::mem::take(&mut self.shared.peers.fixups) {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let fix = |ctx: &mut SpanCtx| {
                if ctx.span_id == span_id && ctx.parent_id.is_none() {
                    ctx.trace_id = client.trace_id;
                    ctx.parent_id = Some(client.span_id);
                    ctx.parent_remote = true;
                    ctx.flags = client.flags;
                    ctx.trace_state = client.trace_state.clone();
                }
            };
            conn.book.pending.iter_mut().for_each(|p| fix(&mut p.ctx));
            if let Some((p, _)) = conn.book.current.as_mut() {
                fix(&mut p.ctx);
            }
            if let Some(h2) = conn.h2.as_mut() {
                h2.contexts().for_each(fix);
            }
            if let Some(list) = self.shared.serving.get_mut(&conn.info.id) {
                list.iter_mut().for_each(fix);
            }
        }
    }

    fn data(&mut self, d: &DataEvent, payload: &[u8]) {
        let key = (d.conn.tgid, d.conn.fd);
        let conn = match self.conns.get_mut(&key) {
            Some(c) if c.info.id.generation == d.conn.generation => c,
            _ => return,
        };
        let ingress = d.direction == DIR_INGRESS;
        let end_ns = self.clock.wall_ns(d.header.ts_ns);
        let start_ns = if ingress { end_ns } else { self.clock.wall_ns(d.enter_ns) };
        let meta = Meta { start_ns, tid: d.header.pid_tgid as u32, thread_ctx: d.thread_ctx, kctx: d.ctx };
        let gap = u64::from(d.len.saturating_sub(d.captured));
        if d.flags & DATA_FLAG_TLS != 0 && !conn.info.tls {
            conn.info.tls = true;
            self.shared.stats.tls_conns += 1;
            match conn.db.as_mut() {
                // PostgreSQL and MySQL ask for encryption in plain text; the startup message
                // follows in the session, read now from the library.
                Some(db) => db.decrypted(),
                // Anything seen before was ciphertext (the connection began before its process's
                // library was probed): the plain text starts afresh.
                None => {
                    conn.req = Stream::new(Side::Request);
                    conn.resp = Stream::new(Side::Response);
                    conn.book = Book::default();
                }
            }
        }
        let request_side = (conn.info.role == ROLE_SERVER) == ingress;
        // HTTP/2 from its client's preface (prior knowledge in clear text, or TLS that
        // negotiated it, read in plain text), or a server's that comes first.
        if conn.h2.is_none()
            && conn.db.is_none()
            && !conn.book.had_http
            && if request_side {
                crate::protocol::http2::starts_preface(payload)
            } else {
                conn.info.role == ROLE_SERVER && crate::protocol::http2::starts_server_preface(payload)
            }
        {
            conn.h2 = Some(Box::new(http2::Session::new()));
            conn.info.h2 = true;
            conn.book.ignored = false;
            self.shared.stats.h2.conns += 1;
        }
        if let Some(h2) = conn.h2.as_mut() {
            let mut sink = ConnSink { info: &conn.info, book: &mut conn.book, g: &mut self.shared };
            if d.flags & (DATA_FLAG_AFTER_SKIP | DATA_FLAG_AFTER_LOSS) != 0 {
                let dropped = h2.lose("h2_gap", &mut sink);
                self.shared.stats.count_gap(d.flags, dropped);
                return;
            }
            h2.feed(request_side, payload, gap, meta, end_ns, &mut sink);
            if !self.shared.peers.fixups.is_empty() {
                self.apply_fixups();
            }
            return;
        }
        // A client connection's bytes may show a database protocol: before HTTP gave up on the
        // connection, or after (a connection open before tracing began may first be seen
        // mid-result; clients keep their database connections).
        if conn.db.is_none()
            && conn.info.role == ROLE_CLIENT
            && !conn.book.had_http
            && !conn.not_db
            && let Some(db) = detect_database(d, payload, &mut self.shared.stats, conn.book.strikes == 0)
        {
            conn.db = Some(db);
            conn.book.ignored = false;
        }
        if let Some(db) = conn.db.as_mut() {
            if db.encrypted() {
                return;
            }
            if d.flags & (DATA_FLAG_AFTER_SKIP | DATA_FLAG_AFTER_LOSS) != 0 {
                self.shared.stats.count_gap(d.flags, db.reset());
            }
            let mut sink = ConnSink { info: &conn.info, book: &mut conn.book, g: &mut self.shared };
            if ingress {
                db.read(payload, gap, end_ns, &mut sink);
            } else {
                db.write(payload, gap, meta, &mut sink);
            }
            if db.rejected() {
                conn.db = None;
                conn.not_db = true;
            }
            return;
        }
        if conn.book.ignored || conn.req.stopped() {
            // No span will come of this connection: its bytes need not be copied and sent here
            // (a broker's or a binary protocol's traffic would otherwise fill the ring). A
            // client's is given a few more events for a database protocol to show.
            conn.book.unread = conn.book.unread.saturating_add(1);
            if conn.req.stopped()
                || conn.info.role == ROLE_SERVER
                || conn.not_db
                || conn.book.unread >= CLIENT_MUTE_AFTER
            {
                self.shared.mute(&mut conn.book, conn.info.id);
            }
            return;
        }
        let side = match (conn.info.role, ingress) {
            (ROLE_SERVER, true) | (ROLE_CLIENT, false) => Side::Request,
            _ => Side::Response,
        };
        if d.flags & (DATA_FLAG_AFTER_SKIP | DATA_FLAG_AFTER_LOSS) != 0 {
            // Unsampled requests were left out, or an event was lost: what was in progress
            // cannot complete.
            conn.req.reset();
            conn.resp.reset();
            let dropped = (conn.book.pending.len() + usize::from(conn.book.current.is_some())) as u64;
            self.shared.stats.count_gap(d.flags, dropped);
            let current = conn.book.current.take().map(|(p, _)| p);
            for p in std::iter::from_fn(|| conn.book.pending.pop_front()).chain(current) {
                if let Some(list) = self.shared.serving.get_mut(&conn.info.id) {
                    list.retain(|c| c.span_id != p.ctx.span_id);
                }
            }
            conn.book.interim = false;
        }
        let mut sink = ConnSink { info: &conn.info, book: &mut conn.book, g: &mut self.shared };
        let (this, other) = match side {
            Side::Request => (&mut conn.req, &mut conn.resp),
            Side::Response => (&mut conn.resp, &mut conn.req),
        };
        // The other direction spoke: its unframed message (if any) is over.
        other.finish(&mut sink);
        this.feed(payload, gap, meta, end_ns, &mut sink);
        if sink.book.tunnel && !conn.req.stopped() {
            conn.req.stop();
            conn.resp.stop();
            self.shared.stats.tunnels += 1;
        }
        if !self.shared.peers.fixups.is_empty() {
            self.apply_fixups();
        }
    }
}

/// The link of a client span whose parent the kernel decided when the call left, by the
/// context's origin.
fn kernel_link(origin: u8) -> Option<Link> {
    match origin {
        CTX_THREAD => Some(Link::Thread),
        CTX_GOROUTINE => Some(Link::Goroutine),
        CTX_UPSTREAM => Some(Link::Upstream),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
