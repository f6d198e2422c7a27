//! The service graph: which service calls which, how many calls failed, and how long they took
//! as the client and as the server saw them. Grafana draws its service graph from these
//! metrics; they are the ones Tempo's metrics generator and the Collector's
//! `servicegraph` connector derive from spans (`traces_service_graph_request_total`,
//! `..._failed_total`, `..._server_seconds`, `..._client_seconds`, labels `client`, `server`,
//! `connection_type`), but made here from every span before sampling, like the request metrics.
//!
//! An edge is a client span paired with the server span it caused: the server span's parent is
//! the client span. Both ends traced on this node make a whole edge (both durations, named by
//! their services). One end alone, once it has waited [`ServiceGraph::new`]'s `wait` for the
//! other, makes an edge to a virtual node (`connection_type="virtual_node"`) named by address:
//! a caller or a server not traced here (on another node, or not selected). A server span no
//! trace context came with is called by `user`, and a database call's server is the database
//! (`connection_type="database"`, named `<system> <address>:<port>`).
//!
//! Bounded: at most `max_edges` edges (beyond, calls of new edges are counted in one overflow
//! edge) and `max_pending` halves waiting for their other end each way (beyond, a half is made
//! an edge to a virtual node at once); an edge no call took for `idle` is forgotten.
use std::{
    collections::HashMap,
    fmt::Write as _,
    hash::{BuildHasher as _, Hasher as _},
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Histogram, Metric, NumberDataPoint, Sum, metric::Data, number_data_point,
    },
};
use smallvec::SmallVec;

use super::{
    metrics::Page,
    request_metrics::{Durations, histogram_point, histogram_samples, value_text},
};
use crate::correlate::span::{Kind, SpanRecord, Value};

/// How an edge's ends were seen (the `connection_type` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionType {
    /// Both ends are services traced here.
    Direct,
    /// One end is named by address: not traced here.
    VirtualNode,
    /// The server end is a database.
    Database,
}

impl ConnectionType {
    /// The label's value (none for a direct edge, as Tempo has it).
    pub fn label(self) -> &'static str {
        match self {
            ConnectionType::Direct => "",
            ConnectionType::VirtualNode => "virtual_node",
            ConnectionType::Database => "database",
        }
    }
}

use ConnectionType::{Database, Direct, VirtualNode};

/// The caller of a request that came with no trace context.
pub const USER: &str = "user";

/// Calls between two services.
#[derive(Debug, Clone)]
pub struct Edge {
    /// The calling service (or virtual node).
    pub client: Arc<str>,
    /// The called service (or virtual node).
    pub server: Arc<str>,
    /// How its ends were seen.
    pub connection_type: ConnectionType,
    /// The overflow edge (edges beyond the cap).
    pub overflow: bool,
    /// Calls.
    pub requests: u64,
    /// Calls that failed (either end's span is an error).
    pub failed: u64,
    /// Durations as the client saw them (calls whose client span was seen).
    pub client_seconds: Durations,
    /// Durations as the server saw them (calls whose server span was seen).
    pub server_seconds: Durations,
    /// When the edge began (its first call's start), ns since the epoch.
    pub start_ns: u64,
    /// The tick of its last call: an edge idle for [`ServiceGraph::new`]'s `idle` is forgotten.
    pub last_call: Instant,
}

/// One end of a call, waiting for the other.
#[derive(Debug)]
struct Half {
    service: Arc<str>,
    /// The other end's address: a virtual node's name if it never comes (`None`: unknown).
    peer: Option<Arc<str>>,
    seconds: f64,
    error: bool,
    start_ns: u64,
    since: Instant,
}

/// What the graph did with the spans it was given.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GraphStats {
    /// Calls whose two ends were paired.
    pub paired: u64,
    /// Client spans whose server end never came (edges to a virtual node).
    pub client_unpaired: u64,
    /// Server spans whose client end never came (edges from a virtual node).
    pub server_unpaired: u64,
    /// Server spans no trace context came with (edges from `user`).
    pub from_user: u64,
    /// Database calls.
    pub database: u64,
    /// Calls counted in the overflow edge (the edge cap was reached).
    pub overflowed: u64,
    /// Halves made edges at once because the pending table was full.
    pub pending_full: u64,
    /// Edges forgotten after no call took them for the idle time.
    pub edges_forgotten: u64,
}

/// The edges between the services traced here.
#[derive(Debug)]
pub struct ServiceGraph {
    edges: Vec<Edge>,
    /// Edges by hash of (client, server, connection type): collisions share the list.
    index: HashMap<u64, SmallVec<[u32; 1]>, foldhash::fast::FixedState>,
    overflow: Option<usize>,
    max_edges: usize,
    /// Client spans by (trace, own span id), waiting for the server span they caused.
    clients: HashMap<([u8; 16], [u8; 8]), Half, foldhash::fast::FixedState>,
    /// Server spans by (trace, parent span id), waiting for the client span that caused them.
    servers: HashMap<([u8; 16], [u8; 8]), Half, foldhash::fast::FixedState>,
    max_pending: usize,
    wait: Duration,
    /// The last tick: halves are stamped with it (a clock read per span would cost more than
    /// the pairing).
    now: Instant,
    hasher: foldhash::fast::FixedState,
    stats: GraphStats,
    /// A database node's name, built in place.
    name: String,
    idle: Duration,
}

impl ServiceGraph {
    /// At most `max_edges` edges and `max_pending` halves waiting each way, each for `wait`; an
    /// edge no call took for `idle` is forgotten (a service gone, a peer's address reused).
    pub fn new(max_edges: usize, max_pending: usize, wait: Duration, idle: Duration) -> Self {
        ServiceGraph {
            edges: Vec::new(),
            index: HashMap::default(),
            overflow: None,
            max_edges,
            clients: HashMap::default(),
            servers: HashMap::default(),
            max_pending,
            wait,
            now: Instant::now(),
            hasher: foldhash::fast::FixedState::with_seed(0x6772_6170_6865_6467),
            stats: GraphStats::default(),
            name: String::new(),
            idle,
        }
    }

    /// Counts.
    pub fn stats(&self) -> GraphStats {
        self.stats
    }

    /// Every edge, in the order they were first seen (the overflow edge where it began).
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// Halves waiting for their other end.
    pub fn pending(&self) -> usize {
        self.clients.len() + self.servers.len()
    }

    /// Takes a request span of `service`'s: `db` is its database system, `server_address` and
    /// `server_port` where a client span called.
    pub(crate) fn record(
        &mut self,
        span: &SpanRecord,
        service: &Arc<str>,
        db: Option<&Value>,
        server_address: Option<&Value>,
        server_port: Option<&Value>,
    ) {
        let me = |peer: Option<Arc<str>>| Half {
            service: Arc::clone(service),
            peer,
            seconds: span.duration_ns() as f64 / 1e9,
            error: span.error,
            start_ns: span.start_ns,
            since: self.now,
        };
        match span.kind {
            Kind::Server => {
                let Some(parent) = span.parent_id else {
                    self.stats.from_user += 1;
                    let e = self.edge(USER, service, VirtualNode, span.start_ns);
                    e.server_seconds.record(span.duration_ns() as f64 / 1e9);
                    count(e, span.error);
                    return;
                };
                let key = (span.trace_id, parent);
                match self.clients.remove(&key) {
                    Some(client) => self.paired(client, me(None)),
                    None => {
                        let peer = span.attr("client.address").or_else(|| span.attr("network.peer.address"));
                        let server = me(peer.map(|v| Arc::from(value_text(v))));
                        self.wait(key, server, false);
                    }
                }
            }
            Kind::Client => {
                if let Some(system) = db {
                    self.stats.database += 1;
                    // Named in a buffer kept between calls: a database's edge exists after its
                    // first call, and finding it allocates nothing.
                    let mut name = std::mem::take(&mut self.name);
                    name.clear();
                    push_value(&mut name, system);
                    if let Some(a) = server_address {
                        name.push(' ');
                        push_address(&mut name, a, server_port);
                    }
                    let e = self.edge(service, &name, Database, span.start_ns);
                    e.client_seconds.record(span.duration_ns() as f64 / 1e9);
                    count(e, span.error);
                    self.name = name;
                    return;
                }
                let key = (span.trace_id, span.span_id);
                match self.servers.remove(&key) {
                    Some(server) => self.paired(me(None), server),
                    None => {
                        let peer = server_address.map(|a| {
                            let mut at = String::new();
                            push_address(&mut at, a, server_port);
                            Arc::from(at)
                        });
                        self.wait(key, me(peer), true)
                    }
                }
            }
        }
    }

    /// A call whose two ends were both seen.
    fn paired(&mut self, client: Half, server: Half) {
        self.stats.paired += 1;
        let e = self.edge(&client.service, &server.service, Direct, client.start_ns);
        e.client_seconds.record(client.seconds);
        e.server_seconds.record(server.seconds);
        count(e, client.error || server.error);
    }

    /// One end of a call waits for the other (or, with the table full, makes its edge now).
    fn wait(&mut self, key: ([u8; 16], [u8; 8]), half: Half, client_side: bool) {
        let table = if client_side { &mut self.clients } else { &mut self.servers };
        if table.len() >= self.max_pending {
            self.stats.pending_full += 1;
            self.unpaired(half, client_side);
        } else {
            table.insert(key, half);
        }
    }

    /// Halves that waited `wait` by `now` become edges to or from a virtual node, and edges idle
    /// for `idle` are forgotten; `now` stamps the halves and calls that come next.
    pub fn expire(&mut self, now: Instant) {
        self.now = now;
        let wait = self.wait;
        let old = |h: &Half| now.duration_since(h.since) >= wait;
        self.flush_where(old);
        let idle = self.idle;
        let before = self.edges.len();
        // Without churn a graph keeps its edges: without this, a long-running agent's graph
        // would fill with the addresses of peers long gone and count new edges as overflow.
        self.edges.retain(|e| now.duration_since(e.last_call) < idle);
        let forgotten = before - self.edges.len();
        if forgotten > 0 {
            self.stats.edges_forgotten += forgotten as u64;
            self.index.clear();
            self.overflow = None;
            for i in 0..self.edges.len() {
                let e = &self.edges[i];
                if e.overflow {
                    self.overflow = Some(i);
                    continue;
                }
                let hash = self.hash(&e.client, &e.server, e.connection_type);
                self.index.entry(hash).or_default().push(i as u32);
            }
        }
    }

    fn hash(&self, client: &str, server: &str, connection_type: ConnectionType) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(client.as_bytes());
        h.write_u8(0xff);
        h.write(server.as_bytes());
        h.write_u8(0xff);
        h.write_u8(connection_type as u8);
        h.finish()
    }

    /// Every half waiting becomes an edge to or from a virtual node (the agent is stopping).
    pub fn flush(&mut self) {
        self.flush_where(|_| true);
    }

    fn flush_where(&mut self, due: impl Fn(&Half) -> bool) {
        let mut clients: Vec<Half> = self.clients.extract_if(|_, h| due(h)).map(|(_, h)| h).collect();
        let mut servers: Vec<Half> = self.servers.extract_if(|_, h| due(h)).map(|(_, h)| h).collect();
        // In the order the calls started: edges are listed as first seen.
        clients.sort_by_key(|h| h.start_ns);
        servers.sort_by_key(|h| h.start_ns);
        for h in clients {
            self.unpaired(h, true);
        }
        for h in servers {
            self.unpaired(h, false);
        }
    }

    /// An end whose other end is not traced here: an edge to (a client's) or from (a server's)
    /// the virtual node its peer names.
    fn unpaired(&mut self, h: Half, client_side: bool) {
        let peer = h.peer.unwrap_or_else(|| Arc::from("unknown"));
        let e = if client_side {
            self.stats.client_unpaired += 1;
            self.edge(&h.service, &peer, VirtualNode, h.start_ns)
        } else {
            if &*peer != USER {
                self.stats.server_unpaired += 1;
            }
            self.edge(&peer, &h.service, VirtualNode, h.start_ns)
        };
        if client_side {
            e.client_seconds.record(h.seconds);
        } else {
            e.server_seconds.record(h.seconds);
        }
        count(e, h.error);
    }

    /// The edge (client, server, type), made when new (or the overflow edge, beyond the cap).
    fn edge(
        &mut self,
        client: &str,
        server: &str,
        connection_type: ConnectionType,
        start_ns: u64,
    ) -> &mut Edge {
        let hash = self.hash(client, server, connection_type);
        let found = self.index.get(&hash).and_then(|ids| {
            ids.iter().copied().find(|&i| {
                let e = &self.edges[i as usize];
                e.connection_type == connection_type && &*e.client == client && &*e.server == server
            })
        });
        let i = match found {
            Some(i) => i as usize,
            None if self.edges.len() - usize::from(self.overflow.is_some()) >= self.max_edges => {
                self.stats.overflowed += 1;
                match self.overflow {
                    Some(i) => i,
                    None => {
                        let e = new_edge(Arc::from(""), Arc::from(""), Direct, true, start_ns, self.now);
                        self.edges.push(e);
                        self.overflow = Some(self.edges.len() - 1);
                        self.edges.len() - 1
                    }
                }
            }
            None => {
                self.edges.push(new_edge(
                    Arc::from(client),
                    Arc::from(server),
                    connection_type,
                    false,
                    start_ns,
                    self.now,
                ));
                let i = self.edges.len() - 1;
                self.index.entry(hash).or_default().push(i as u32);
                i
            }
        };
        let e = &mut self.edges[i];
        e.last_call = self.now;
        e
    }

    /// The edges as Prometheus families on `page`.
    pub fn prometheus(&self, page: &mut Page) {
        if self.edges.is_empty() {
            return;
        }
        let labelled: Vec<(&Edge, Vec<(&str, &str)>)> = self.edges.iter().map(|e| (e, labels(e))).collect();
        for (name, help, of) in COUNTERS {
            page.family(name, "counter", help);
            for (e, l) in &labelled {
                page.sample(name, l, of(e) as f64);
            }
        }
        for (name, help, of) in HISTOGRAMS {
            page.family(name, "histogram", help);
            for (e, l) in &labelled {
                let h = of(e);
                if h.count > 0 {
                    histogram_samples(page, name, l, h);
                }
            }
        }
    }

    /// The edges as OTLP metrics (cumulative; empty when there are none).
    pub fn otlp(&self, now_ns: u64) -> Vec<Metric> {
        if self.edges.is_empty() {
            return Vec::new();
        }
        let attributes = |e: &Edge| -> Vec<KeyValue> {
            labels(e)
                .into_iter()
                .map(|(k, v)| {
                    let value = if k == "otel_metric_overflow" {
                        any_value::Value::BoolValue(true)
                    } else {
                        any_value::Value::StringValue(v.to_string())
                    };
                    let key = if k == "otel_metric_overflow" { "otel.metric.overflow" } else { k };
                    KeyValue {
                        key: key.into(),
                        value: Some(AnyValue { value: Some(value) }),
                        ..Default::default()
                    }
                })
                .collect()
        };
        let counter = |name: &str, description: &str, of: Count| Metric {
            name: name.into(),
            description: description.into(),
            unit: "1".into(),
            data: Some(Data::Sum(Sum {
                data_points: self
                    .edges
                    .iter()
                    .map(|e| NumberDataPoint {
                        attributes: attributes(e),
                        start_time_unix_nano: e.start_ns,
                        time_unix_nano: now_ns.max(e.start_ns),
                        value: Some(number_data_point::Value::AsInt(of(e) as i64)),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        let mut metrics: Vec<Metric> =
            COUNTERS.iter().map(|(name, help, of)| counter(name, help, *of)).collect();
        for (name, help, of) in HISTOGRAMS {
            let data_points: Vec<_> = self
                .edges
                .iter()
                .filter(|e| of(e).count > 0)
                .map(|e| histogram_point(attributes(e), e.start_ns, now_ns, of(e)))
                .collect();
            if data_points.is_empty() {
                continue;
            }
            metrics.push(Metric {
                name: name.into(),
                description: help.into(),
                unit: "s".into(),
                data: Some(Data::Histogram(Histogram {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Default::default()
            });
        }
        metrics
    }

    /// Data points [`ServiceGraph::otlp`] makes.
    pub fn points(&self) -> u64 {
        let histograms: usize =
            HISTOGRAMS.iter().map(|(_, _, of)| self.edges.iter().filter(|e| of(e).count > 0).count()).sum();
        (2 * self.edges.len() + histograms) as u64
    }
}

type Of = fn(&Edge) -> &Durations;
type Count = fn(&Edge) -> u64;

/// The two counters: name, description, which count.
const COUNTERS: [(&str, &str, Count); 2] = [
    (
        "traces_service_graph_request_total",
        "Calls between two services (every call seen, before sampling).",
        |e| e.requests,
    ),
    (
        "traces_service_graph_request_failed_total",
        "Calls between two services that failed (either end's span is an error).",
        |e| e.failed,
    ),
];

/// The two duration histograms: name, description, which durations.
const HISTOGRAMS: [(&str, &str, Of); 2] = [
    (
        "traces_service_graph_request_server_seconds",
        "Durations of calls between two services as the server saw them.",
        |e| &e.server_seconds,
    ),
    (
        "traces_service_graph_request_client_seconds",
        "Durations of calls between two services as the client saw them.",
        |e| &e.client_seconds,
    ),
];

fn labels(e: &Edge) -> Vec<(&str, &str)> {
    if e.overflow {
        return vec![("otel_metric_overflow", "true")];
    }
    let mut l = vec![("client", &*e.client), ("server", &*e.server)];
    if e.connection_type != Direct {
        l.push(("connection_type", e.connection_type.label()));
    }
    l
}

fn new_edge(
    client: Arc<str>,
    server: Arc<str>,
    connection_type: ConnectionType,
    overflow: bool,
    start_ns: u64,
    last_call: Instant,
) -> Edge {
    Edge {
        client,
        server,
        connection_type,
        overflow,
        requests: 0,
        failed: 0,
        client_seconds: Durations::default(),
        server_seconds: Durations::default(),
        start_ns,
        last_call,
    }
}

fn count(e: &mut Edge, error: bool) {
    e.requests += 1;
    if error {
        e.failed += 1;
    }
}

fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::Str(s) => out.push_str(s),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
    }
}

/// `address:port` (an IPv6 address in brackets), or the address alone.
fn push_address(out: &mut String, a: &Value, port: Option<&Value>) {
    let v6 = matches!(a, Value::Str(s) if s.contains(':'));
    if v6 && port.is_some() {
        out.push('[');
    }
    push_value(out, a);
    if let Some(p) = port {
        out.push_str(if v6 { "]:" } else { ":" });
        push_value(out, p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::span::Text;

    const IDLE: Duration = Duration::from_secs(900);

    fn process(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    /// A span of `kind` in trace 1: `id`, `parent`, `ms` long, failed or not.
    fn span(kind: Kind, id: u8, parent: Option<u8>, ms: u64, error: bool) -> SpanRecord {
        let mut s = SpanRecord::for_test([1; 16], id, parent);
        s.kind = kind;
        s.start_ns = 1_000_000_000;
        s.end_ns = s.start_ns + ms * 1_000_000;
        s.error = error;
        s.attributes = vec![("client.address", Value::Str(Text::Static("10.0.0.9")))];
        s
    }

    /// `gateway`'s client span `id` (parent `parent`, `ms` long) calling `host`:`port`.
    fn call(g: &mut ServiceGraph, id: u8, parent: Option<u8>, ms: u64, host: &Value, port: &Value) {
        g.record(
            &span(Kind::Client, id, parent, ms, false),
            &process("gateway"),
            None,
            Some(host),
            Some(port),
        );
    }

    fn addr(s: &'static str) -> Value {
        Value::Str(Text::Static(s))
    }

    fn edge<'a>(g: &'a ServiceGraph, client: &str, server: &str) -> &'a Edge {
        g.edges()
            .iter()
            .find(|e| &*e.client == client && &*e.server == server)
            .unwrap_or_else(|| panic!("no edge {client} -> {server} in {:?}", g.edges()))
    }

    #[test]
    fn a_client_span_and_the_server_span_it_caused_make_one_edge_whichever_comes_first() {
        let mut g = ServiceGraph::new(10, 10, Duration::from_secs(5), IDLE);
        let (host, port) = (addr("127.0.0.1"), Value::Int(8080));
        // The server span is built first (its response is written before the client reads it).
        g.record(&span(Kind::Server, 2, Some(1), 8, false), &process("users"), None, None, None);
        call(&mut g, 1, Some(9), 10, &host, &port);
        // Then the other way round, and a failure on the server's side.
        call(&mut g, 3, Some(9), 30, &host, &port);
        g.record(&span(Kind::Server, 4, Some(3), 20, true), &process("users"), None, None, None);
        assert_eq!(g.pending(), 0);
        assert_eq!(g.edges().len(), 1);
        let e = edge(&g, "gateway", "users");
        assert_eq!((e.requests, e.failed, e.connection_type), (2, 1, Direct));
        assert_eq!((e.client_seconds.count, e.server_seconds.count), (2, 2));
        assert!((e.client_seconds.sum - 0.040).abs() < 1e-9 && (e.server_seconds.sum - 0.028).abs() < 1e-9);
        assert_eq!(g.stats().paired, 2);
    }

    #[test]
    fn a_call_without_context_comes_from_user_and_a_database_is_a_node_of_its_own() {
        let mut g = ServiceGraph::new(10, 10, Duration::from_secs(5), IDLE);
        g.record(&span(Kind::Server, 1, None, 5, false), &process("gateway"), None, None, None);
        let (pg, host, port) = (addr("postgresql"), addr("127.0.0.1"), Value::Int(5432));
        g.record(
            &span(Kind::Client, 2, Some(1), 1, true),
            &process("gateway"),
            Some(&pg),
            Some(&host),
            Some(&port),
        );
        let user = edge(&g, USER, "gateway");
        assert_eq!((user.requests, user.connection_type, user.server_seconds.count), (1, VirtualNode, 1));
        let db = edge(&g, "gateway", "postgresql 127.0.0.1:5432");
        assert_eq!(
            (db.requests, db.failed, db.connection_type, db.client_seconds.count),
            (1, 1, Database, 1)
        );
        let (redis, v6, port) = (addr("redis"), addr("::1"), Value::Int(6379));
        g.record(
            &span(Kind::Client, 3, Some(1), 1, false),
            &process("gateway"),
            Some(&redis),
            Some(&v6),
            Some(&port),
        );
        assert_eq!(edge(&g, "gateway", "redis [::1]:6379").requests, 1);
        assert_eq!((g.stats().from_user, g.stats().database, g.pending()), (1, 2, 0));
    }

    #[test]
    fn an_end_whose_other_end_never_comes_is_an_edge_to_a_virtual_node_after_the_wait() {
        let mut g = ServiceGraph::new(10, 10, Duration::from_secs(5), IDLE);
        let t = Instant::now();
        g.expire(t);
        let (host, port) = (addr("10.0.0.2"), Value::Int(80));
        call(&mut g, 1, Some(9), 10, &host, &port);
        g.record(&span(Kind::Server, 2, Some(7), 10, false), &process("users"), None, None, None);
        g.expire(t + Duration::from_secs(4));
        assert_eq!((g.pending(), g.edges().len()), (2, 0), "not before the wait");
        g.expire(t + Duration::from_secs(5));
        assert_eq!(g.pending(), 0);
        let out = edge(&g, "gateway", "10.0.0.2:80");
        assert_eq!(
            (out.connection_type, out.client_seconds.count, out.server_seconds.count),
            (VirtualNode, 1, 0)
        );
        let caller = edge(&g, "10.0.0.9", "users");
        assert_eq!(
            (caller.connection_type, caller.client_seconds.count, caller.server_seconds.count),
            (VirtualNode, 0, 1)
        );
        // At exit every waiting end is taken at once.
        call(&mut g, 3, Some(9), 10, &host, &port);
        g.flush();
        assert_eq!((g.pending(), edge(&g, "gateway", "10.0.0.2:80").requests), (0, 2));
        let s = g.stats();
        assert_eq!((s.client_unpaired, s.server_unpaired, s.paired), (2, 1, 0));
    }

    #[test]
    fn beyond_the_caps_calls_are_still_counted() {
        let mut g = ServiceGraph::new(2, 1, Duration::from_secs(5), IDLE);
        let port = Value::Int(80);
        let hosts = [addr("a"), addr("b"), addr("c"), addr("d")];
        for (i, h) in hosts.iter().enumerate() {
            g.record(
                &span(Kind::Client, i as u8 + 1, None, 1, false),
                &process("gw"),
                None,
                Some(h),
                Some(&port),
            );
        }
        // One waits; the others found the pending table full and made their edge at once.
        assert_eq!((g.pending(), g.stats().pending_full), (1, 3));
        g.flush();
        // Two edges, then the overflow edge counts the rest.
        assert_eq!(g.edges().len(), 3);
        assert_eq!(g.stats().overflowed, 2);
        assert_eq!(g.edges().iter().map(|e| e.requests).sum::<u64>(), 4);
        let overflow = g.edges().iter().find(|e| e.overflow).map(|e| e.requests);
        assert_eq!(overflow, Some(2));
    }

    #[test]
    fn edges_are_served_as_prometheus_text_and_exported_as_otlp() {
        let mut g = ServiceGraph::new(10, 10, Duration::from_secs(5), IDLE);
        g.record(&span(Kind::Server, 2, Some(1), 8, false), &process("users"), None, None, None);
        g.record(&span(Kind::Client, 1, None, 10, true), &process("gateway"), None, None, None);
        g.record(&span(Kind::Server, 3, None, 12, false), &process("gateway"), None, None, None);
        let mut page = Page::default();
        g.prometheus(&mut page);
        let text = page.finish();
        assert!(text.contains("# TYPE traces_service_graph_request_total counter"), "{text}");
        assert!(
            text.contains(r#"traces_service_graph_request_total{client="gateway",server="users"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"traces_service_graph_request_failed_total{client="gateway",server="users"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"traces_service_graph_request_server_seconds_bucket{client="user",server="gateway",connection_type="virtual_node",le="0.025"} 1"#
            ),
            "{text}"
        );
        // The user edge has no client side: no client histogram for it.
        assert!(
            !text.contains(r#"traces_service_graph_request_client_seconds_count{client="user""#),
            "{text}"
        );
        let metrics = g.otlp(2_000_000_000);
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "traces_service_graph_request_total",
                "traces_service_graph_request_failed_total",
                "traces_service_graph_request_server_seconds",
                "traces_service_graph_request_client_seconds"
            ]
        );
        let points: usize = metrics
            .iter()
            .map(|m| match &m.data {
                Some(Data::Sum(s)) => s.data_points.len(),
                Some(Data::Histogram(h)) => h.data_points.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(points as u64, g.points());
        assert_eq!(g.points(), 2 + 2 + 2 + 1);
    }

    #[test]
    fn an_edge_no_call_took_for_the_idle_time_is_forgotten_and_the_rest_still_count() {
        let mut g = ServiceGraph::new(10, 10, Duration::from_secs(5), Duration::from_secs(60));
        let t = Instant::now();
        g.expire(t);
        let port = Value::Int(80);
        let (gone, kept) = (addr("10.0.0.7"), addr("10.0.0.8"));
        let call = |g: &mut ServiceGraph, id: u8, host: &Value| {
            g.record(&span(Kind::Client, id, None, 1, false), &process("gw"), None, Some(host), Some(&port));
            g.flush();
        };
        call(&mut g, 1, &gone);
        call(&mut g, 2, &kept);
        g.expire(t + Duration::from_secs(30));
        call(&mut g, 3, &kept);
        g.expire(t + Duration::from_secs(59));
        assert_eq!(g.edges().len(), 2);
        g.expire(t + Duration::from_secs(61));
        assert_eq!(g.edges().len(), 1, "{:?}", g.edges());
        assert_eq!(g.stats().edges_forgotten, 1);
        // The index follows: the kept edge still counts its calls, and the forgotten one starts
        // afresh when it comes back.
        call(&mut g, 4, &kept);
        call(&mut g, 5, &gone);
        assert_eq!(g.edges().len(), 2);
        assert_eq!(edge(&g, "gw", "10.0.0.8:80").requests, 3);
        assert_eq!(edge(&g, "gw", "10.0.0.7:80").requests, 1);
    }
}
