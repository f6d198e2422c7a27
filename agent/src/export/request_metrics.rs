//! Request metrics: the rate, errors and duration (RED) of every request the agent sees, as the
//! OpenTelemetry semantic conventions' duration histograms (`http.server.request.duration`,
//! `http.client.request.duration`, `rpc.*.call.duration`, `db.client.operation.duration`).
//!
//! They are recorded from each span as it is built, before userspace head sampling and tail
//! sampling leave spans out: a trace kept at 5 % still has its requests counted whole, which a
//! Collector deriving metrics from the exported spans cannot do. Served on `/metrics` in the
//! Prometheus text format and exported over OTLP as cumulative histograms.
//!
//! Bounded: at most `max_series` attribute sets in all; beyond, a process's further sets go to
//! one overflow series per instrument (attribute `otel.metric.overflow`, as OpenTelemetry SDKs
//! do), so the totals stay exact. A process's series are kept `retain` after it exits, for the
//! last scrape and export to see them, then forgotten.
use std::{
    collections::HashMap,
    hash::{BuildHasher as _, Hash as _, Hasher as _},
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics,
        metric::Data,
    },
    resource::v1::Resource,
};
use smallvec::SmallVec;

use super::{metrics::Page, service_graph::ServiceGraph};
use crate::{
    correlate::span::{Kind, SpanRecord, Text, Value},
    metadata::ProcessInfo,
};

/// The histograms, one per kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Instrument {
    /// HTTP requests served.
    HttpServer,
    /// HTTP requests made.
    HttpClient,
    /// gRPC calls served.
    RpcServer,
    /// gRPC calls made.
    RpcClient,
    /// Database operations (PostgreSQL, MySQL, Redis, memcached).
    DbClient,
}

impl Instrument {
    /// Every instrument, in the order they are shown.
    pub const ALL: [Instrument; 5] = [
        Instrument::HttpServer,
        Instrument::HttpClient,
        Instrument::RpcServer,
        Instrument::RpcClient,
        Instrument::DbClient,
    ];

    /// The semantic-convention name.
    pub fn name(self) -> &'static str {
        match self {
            Instrument::HttpServer => "http.server.request.duration",
            Instrument::HttpClient => "http.client.request.duration",
            Instrument::RpcServer => "rpc.server.call.duration",
            Instrument::RpcClient => "rpc.client.call.duration",
            Instrument::DbClient => "db.client.operation.duration",
        }
    }

    /// The Prometheus family (unit suffix, dots as underscores).
    pub fn prometheus_name(self) -> &'static str {
        match self {
            Instrument::HttpServer => "http_server_request_duration_seconds",
            Instrument::HttpClient => "http_client_request_duration_seconds",
            Instrument::RpcServer => "rpc_server_call_duration_seconds",
            Instrument::RpcClient => "rpc_client_call_duration_seconds",
            Instrument::DbClient => "db_client_operation_duration_seconds",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Instrument::HttpServer => "Duration of HTTP server requests.",
            Instrument::HttpClient => "Duration of HTTP client requests.",
            Instrument::RpcServer => "Duration of gRPC calls served.",
            Instrument::RpcClient => "Duration of gRPC calls made.",
            Instrument::DbClient => "Duration of database client operations.",
        }
    }

    /// The span attributes a series is keyed by: the conventions' low-cardinality ones (no path,
    /// no query text; the route only where `--route` named it).
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Instrument::HttpServer => &[
                "http.request.method",
                "http.response.status_code",
                "http.route",
                "error.type",
                "network.protocol.version",
            ],
            Instrument::HttpClient => &[
                "http.request.method",
                "http.response.status_code",
                "server.address",
                "server.port",
                "error.type",
                "network.protocol.version",
            ],
            Instrument::RpcServer => {
                &["rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code", "error.type"]
            }
            Instrument::RpcClient => &[
                "rpc.system",
                "rpc.service",
                "rpc.method",
                "rpc.grpc.status_code",
                "error.type",
                "server.address",
                "server.port",
            ],
            Instrument::DbClient => &[
                "db.system.name",
                "db.operation.name",
                "db.namespace",
                "db.collection.name",
                "db.response.status_code",
                "error.type",
                "server.address",
                "server.port",
            ],
        }
    }

    /// [`Instrument::keys`] as slots of [`KEYS`].
    fn slots(self) -> &'static [usize] {
        match self {
            Instrument::HttpServer => &[0, 1, 2, 3, 4],
            Instrument::HttpClient => &[0, 1, 5, 6, 3, 4],
            Instrument::RpcServer => &[7, 8, 9, 10, 3],
            Instrument::RpcClient => &[7, 8, 9, 10, 3, 5, 6],
            Instrument::DbClient => &[11, 12, 13, 14, 15, 3, 5, 6],
        }
    }

    /// The instrument a span with these attributes (by slot) and `kind` is measured by, if any.
    fn decide(found: &[Option<&Value>; KEYS.len()], kind: Kind) -> Option<Instrument> {
        let by_kind = |server, client| if kind == Kind::Server { server } else { client };
        if found[11].is_some() {
            Some(Instrument::DbClient)
        } else if found[7].is_some() {
            Some(by_kind(Instrument::RpcServer, Instrument::RpcClient))
        } else if found[0].is_some() {
            Some(by_kind(Instrument::HttpServer, Instrument::HttpClient))
        } else {
            None
        }
    }

    /// The instrument `span` is measured by, if any.
    pub fn of(span: &SpanRecord) -> Option<Instrument> {
        Instrument::decide(&found(span), span.kind)
    }
}

/// Every attribute an instrument is keyed by: `db.system.name` (11), `rpc.system` (7) and
/// `http.request.method` (0) also decide the instrument.
const KEYS: [&str; 16] = [
    "http.request.method",
    "http.response.status_code",
    "http.route",
    "error.type",
    "network.protocol.version",
    "server.address",
    "server.port",
    "rpc.system",
    "rpc.service",
    "rpc.method",
    "rpc.grpc.status_code",
    "db.system.name",
    "db.operation.name",
    "db.namespace",
    "db.collection.name",
    "db.response.status_code",
];

/// The slot of `key` in [`KEYS`]: a match, which compiles to a switch on the length and one
/// comparison, where a search of the list would compare each.
fn slot(key: &str) -> Option<usize> {
    Some(match key {
        "http.request.method" => 0,
        "http.response.status_code" => 1,
        "http.route" => 2,
        "error.type" => 3,
        "network.protocol.version" => 4,
        "server.address" => 5,
        "server.port" => 6,
        "rpc.system" => 7,
        "rpc.service" => 8,
        "rpc.method" => 9,
        "rpc.grpc.status_code" => 10,
        "db.system.name" => 11,
        "db.operation.name" => 12,
        "db.namespace" => 13,
        "db.collection.name" => 14,
        "db.response.status_code" => 15,
        _ => return None,
    })
}

/// `span`'s values of [`KEYS`], in one pass over its attributes.
fn found(span: &SpanRecord) -> [Option<&Value>; KEYS.len()] {
    let mut found = [None; KEYS.len()];
    for (k, v) in &span.attributes {
        if let Some(i) = slot(k) {
            found[i] = Some(v);
        }
    }
    found
}

/// How long one end of a call waits for the other before it is taken for an edge to or from a
/// virtual node: a server span is built when its response is written, its client span when the
/// response is read, moments later.
const GRAPH_WAIT: Duration = Duration::from_secs(5);

/// How long a service-graph edge is kept without a call.
const GRAPH_IDLE: Duration = Duration::from_secs(15 * 60);

/// Most keys an instrument has.
const MAX_KEYS: usize = 8;

/// The bucket bounds the conventions advise for request durations, in seconds.
pub const BOUNDS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// A histogram of durations in seconds: explicit buckets, their count, sum, min and max.
#[derive(Debug, Clone, PartialEq)]
pub struct Durations {
    /// Per bucket (not cumulative): `buckets[i]` counts values in (BOUNDS[i-1], BOUNDS[i]], the
    /// last one the values above every bound.
    pub buckets: [u64; BOUNDS.len() + 1],
    /// Values recorded.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Default for Durations {
    fn default() -> Self {
        Durations { buckets: [0; BOUNDS.len() + 1], count: 0, sum: 0.0, min: f64::INFINITY, max: 0.0 }
    }
}

impl Durations {
    pub(crate) fn record(&mut self, seconds: f64) {
        // The first bound at or above the value (a bucket's upper bound is inclusive).
        self.buckets[BOUNDS.partition_point(|b| *b < seconds)] += 1;
        self.count += 1;
        self.sum += seconds;
        self.min = self.min.min(seconds);
        self.max = self.max.max(seconds);
    }
}

/// One attribute set of one process's instrument.
#[derive(Debug, Clone)]
pub struct Series {
    /// The instrument.
    pub instrument: Instrument,
    /// The values of the instrument's keys, in order (`None`: the span had none).
    pub values: SmallVec<[Option<Value>; MAX_KEYS]>,
    /// The overflow series (attribute sets beyond the cap).
    pub overflow: bool,
    /// When the series began (its first span's start), ns since the epoch.
    pub start_ns: u64,
    /// What it measured.
    pub histogram: Durations,
}

impl Series {
    /// The attributes: the keys with a value, and the overflow marker.
    pub fn attributes(&self) -> impl Iterator<Item = (&'static str, &Value)> + '_ {
        self.instrument.keys().iter().zip(&self.values).filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
    }
}

#[derive(Debug)]
struct Process {
    /// Read when its first span is measured: its series keep their labels after it exits.
    resource: Arc<ProcessInfo>,
    /// Its service name, as the service graph shares it.
    service: Arc<str>,
    series: Vec<Series>,
    /// Series by (instrument, hash of values): collisions share the list.
    index: HashMap<(Instrument, u64), SmallVec<[u32; 1]>, foldhash::fast::FixedState>,
    exited: Option<Instant>,
}

/// What the recorder did, for the agent's own metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecorderStats {
    /// Spans measured (each into exactly one series).
    pub recorded: u64,
    /// Of those, measured into an overflow series (the attribute-set cap was reached).
    pub overflowed: u64,
    /// Spans no instrument measures.
    pub not_measured: u64,
    /// Series forgotten after their process exited.
    pub series_forgotten: u64,
}

/// The request metrics of every traced process.
#[derive(Debug)]
pub struct RequestMetrics {
    processes: HashMap<u32, Process, foldhash::fast::FixedState>,
    series: usize,
    max_series: usize,
    retain: Duration,
    hasher: foldhash::fast::FixedState,
    stats: RecorderStats,
    graph: ServiceGraph,
}

impl RequestMetrics {
    /// Holds at most `max_series` attribute sets (plus one overflow series per process and
    /// instrument), and an exited process's series for `retain`.
    pub fn new(max_series: usize, retain: Duration) -> Self {
        RequestMetrics {
            processes: HashMap::default(),
            series: 0,
            max_series,
            retain,
            hasher: foldhash::fast::FixedState::with_seed(0x7472_6163_6577_6972),
            stats: RecorderStats::default(),
            // An edge is forgotten after a quarter of an hour without a call (as Tempo's series
            // go stale), or the request metrics' own retention if longer.
            graph: ServiceGraph::new(max_series / 4, max_series, GRAPH_WAIT, retain.max(GRAPH_IDLE)),
        }
    }

    /// The service graph, made from the same spans.
    pub fn graph(&self) -> &ServiceGraph {
        &self.graph
    }

    /// Calls still waiting for their other end become edges to or from a virtual node (the
    /// agent is stopping).
    pub fn flush_graph(&mut self) {
        self.graph.flush();
    }

    /// Counts.
    pub fn stats(&self) -> RecorderStats {
        self.stats
    }

    /// Attribute sets held (overflow series included).
    pub fn series(&self) -> usize {
        self.series
    }

    /// Measures `span`; `resource_of` names a process seen for the first time. No allocation
    /// when its series exists.
    pub fn record(&mut self, span: &SpanRecord, resource_of: &mut dyn FnMut(u32) -> Arc<ProcessInfo>) {
        let found = found(span);
        let Some(instrument) = Instrument::decide(&found, span.kind) else {
            self.stats.not_measured += 1;
            return;
        };
        let mut values: SmallVec<[Option<&Value>; MAX_KEYS]> = SmallVec::new();
        let mut h = self.hasher.build_hasher();
        for &i in instrument.slots() {
            let v = found[i];
            match v {
                None => h.write_u8(0),
                Some(Value::Int(i)) => {
                    h.write_u8(1);
                    i.hash(&mut h);
                }
                Some(Value::Str(s)) => {
                    h.write_u8(2);
                    s.as_bytes().hash(&mut h);
                }
            }
            values.push(v);
        }
        let hash = h.finish();
        let seconds = span.duration_ns() as f64 / 1e9;
        let p = self.processes.entry(span.pid).or_insert_with(|| {
            let resource = resource_of(span.pid);
            Process {
                service: Arc::from(resource.service_name.as_str()),
                resource,
                series: Vec::new(),
                index: HashMap::default(),
                exited: None,
            }
        });
        self.graph.record(span, &p.service, found[11], found[5], found[6]);
        let same = |s: &Series| !s.overflow && s.values.iter().map(Option::as_ref).eq(values.iter().copied());
        if let Some(i) = p
            .index
            .get(&(instrument, hash))
            .and_then(|ids| ids.iter().copied().find(|&i| p.series.get(i as usize).is_some_and(&same)))
        {
            p.series[i as usize].histogram.record(seconds);
            self.stats.recorded += 1;
            return;
        }
        let overflow = self.series >= self.max_series;
        let i = if overflow {
            self.stats.overflowed += 1;
            match p.series.iter().position(|s| s.overflow && s.instrument == instrument) {
                Some(i) => i,
                None => {
                    p.series.push(Series {
                        instrument,
                        values: instrument.keys().iter().map(|_| None).collect(),
                        overflow: true,
                        start_ns: span.start_ns,
                        histogram: Durations::default(),
                    });
                    self.series += 1;
                    p.series.len() - 1
                }
            }
        } else {
            p.series.push(Series {
                instrument,
                values: values.iter().map(|v| v.cloned()).collect(),
                overflow: false,
                start_ns: span.start_ns,
                histogram: Durations::default(),
            });
            self.series += 1;
            let i = p.series.len() - 1;
            p.index.entry((instrument, hash)).or_default().push(i as u32);
            i
        };
        p.series[i].histogram.record(seconds);
        self.stats.recorded += 1;
    }

    /// `pid` exited: its series are forgotten `retain` from `now`.
    pub fn exited(&mut self, pid: u32, now: Instant) {
        if let Some(p) = self.processes.get_mut(&pid) {
            p.exited.get_or_insert(now);
        }
    }

    /// Forgets the processes that exited at least `retain` before `now`.
    pub fn forget_exited(&mut self, now: Instant) {
        self.graph.expire(now);
        let retain = self.retain;
        let mut forgotten = 0;
        self.processes.retain(|_, p| {
            let keep = p.exited.is_none_or(|t| now.duration_since(t) < retain);
            if !keep {
                forgotten += p.series.len();
            }
            keep
        });
        self.series -= forgotten;
        self.stats.series_forgotten += forgotten as u64;
    }

    /// The resource of a process with series.
    pub fn resource(&self, pid: u32) -> Option<&ProcessInfo> {
        self.processes.get(&pid).map(|p| &*p.resource)
    }

    /// Every series, by process then instrument then creation order.
    pub fn each(&self) -> impl Iterator<Item = (u32, &Series)> {
        let mut pids: Vec<u32> = self.processes.keys().copied().collect();
        pids.sort_unstable();
        pids.into_iter().flat_map(move |pid| {
            let mut series: Vec<&Series> = self.processes[&pid].series.iter().collect();
            series.sort_by_key(|s| s.instrument);
            series.into_iter().map(move |s| (pid, s))
        })
    }

    /// The histograms as Prometheus families on `page`, labelled with each process's
    /// `service_name` and `service_instance_id`.
    pub fn prometheus(&self, page: &mut Page) {
        let mut by_instrument: Vec<(u32, &Series)> = self.each().collect();
        by_instrument.sort_by_key(|(_, s)| s.instrument);
        let mut current = None;
        for (pid, s) in by_instrument {
            let name = s.instrument.prometheus_name();
            if current != Some(s.instrument) {
                current = Some(s.instrument);
                page.family(name, "histogram", s.instrument.description());
            }
            let r = &self.processes[&pid].resource;
            let instance =
                r.attributes.iter().find(|(k, _)| k == "service.instance.id").map(|(_, v)| v.clone());
            let mut labels: Vec<(String, String)> = vec![
                ("service_name".into(), r.service_name.clone()),
                ("service_instance_id".into(), instance.unwrap_or_else(|| pid.to_string())),
            ];
            labels.extend(s.attributes().map(|(k, v)| (k.replace('.', "_"), value_text(v))));
            if s.overflow {
                labels.push(("otel_metric_overflow".into(), "true".into()));
            }
            let plain: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            histogram_samples(page, name, &plain, &s.histogram);
        }
        self.graph.prometheus(page);
    }

    /// The histograms as an OTLP export request (cumulative, one resource per process), with
    /// the number of data points in it; `None` when there is nothing to send.
    pub fn otlp(&self, now_ns: u64) -> Option<(ExportMetricsServiceRequest, u64)> {
        let mut resource_metrics = Vec::new();
        let mut points = 0u64;
        let mut pids: Vec<u32> = self.processes.keys().copied().collect();
        pids.sort_unstable();
        for pid in pids {
            let p = &self.processes[&pid];
            if p.series.is_empty() {
                continue;
            }
            let mut metrics: Vec<Metric> = Vec::new();
            for instrument in Instrument::ALL {
                let data_points: Vec<HistogramDataPoint> = p
                    .series
                    .iter()
                    .filter(|s| s.instrument == instrument)
                    .map(|s| {
                        let mut attributes: Vec<KeyValue> =
                            s.attributes().map(|(k, v)| key_value(k, v)).collect();
                        if s.overflow {
                            attributes.push(KeyValue {
                                key: "otel.metric.overflow".into(),
                                value: Some(AnyValue { value: Some(any_value::Value::BoolValue(true)) }),
                                ..Default::default()
                            });
                        }
                        histogram_point(attributes, s.start_ns, now_ns, &s.histogram)
                    })
                    .collect();
                if data_points.is_empty() {
                    continue;
                }
                points += data_points.len() as u64;
                metrics.push(Metric {
                    name: instrument.name().into(),
                    description: instrument.description().into(),
                    unit: "s".into(),
                    data: Some(Data::Histogram(Histogram {
                        data_points,
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    })),
                    ..Default::default()
                });
            }
            resource_metrics.push(ResourceMetrics {
                // The same resource as the process's spans.
                resource: Some(super::transform::resource(&p.resource)),
                scope_metrics: vec![ScopeMetrics { scope: Some(scope()), metrics, ..Default::default() }],
                ..Default::default()
            });
        }
        let graph = self.graph.otlp(now_ns);
        if !graph.is_empty() {
            points += self.graph.points();
            // Edges join two services: they belong to the node that saw them, not to either.
            resource_metrics.push(ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![key_value(
                        "host.name",
                        &Value::Str(Text::Static(crate::metadata::host_name())),
                    )],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics: graph,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        (points > 0).then_some((ExportMetricsServiceRequest { resource_metrics }, points))
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "tracewire".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// A histogram's Prometheus samples (`_bucket` per bound, cumulative; `_sum`; `_count`).
pub(crate) fn histogram_samples(page: &mut Page, name: &str, labels: &[(&str, &str)], h: &Durations) {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (i, n) in h.buckets.iter().enumerate() {
        cumulative += n;
        let le = BOUNDS.get(i).map_or_else(|| "+Inf".to_string(), |b| b.to_string());
        let mut with_le = labels.to_vec();
        with_le.push(("le", &le));
        page.sample(&bucket, &with_le, cumulative as f64);
    }
    page.sample(&format!("{name}_sum"), labels, h.sum);
    page.sample(&format!("{name}_count"), labels, h.count as f64);
}

/// A histogram as a cumulative OTLP data point.
pub(crate) fn histogram_point(
    attributes: Vec<KeyValue>,
    start_ns: u64,
    now_ns: u64,
    h: &Durations,
) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: start_ns,
        time_unix_nano: now_ns.max(start_ns),
        count: h.count,
        sum: Some(h.sum),
        bucket_counts: h.buckets.to_vec(),
        explicit_bounds: BOUNDS.to_vec(),
        min: (h.count > 0).then_some(h.min),
        max: (h.count > 0).then_some(h.max),
        ..Default::default()
    }
}

/// A value as text (an integer in decimal).
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
    }
}

fn key_value(k: &str, v: &Value) -> KeyValue {
    let value = match v {
        Value::Str(s) => any_value::Value::StringValue(s.to_string()),
        Value::Int(i) => any_value::Value::IntValue(*i),
    };
    KeyValue { key: k.to_string(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::correlate::span::Text;

    fn http(kind: Kind, pid: u32, status: i64, ms: u64) -> SpanRecord {
        let mut s = SpanRecord::for_test([1; 16], 1, None);
        s.kind = kind;
        s.pid = pid;
        s.start_ns = 1_000_000_000;
        s.end_ns = s.start_ns + ms * 1_000_000;
        s.attributes = vec![
            ("http.request.method", Value::Str("GET".into())),
            ("url.path", Value::Str(Text::Owned(format!("/users/{ms}")))),
            ("http.response.status_code", Value::Int(status)),
        ];
        if status >= 500 {
            s.attributes.push(("error.type", Value::Str(Text::Owned(status.to_string()))));
        }
        s
    }

    fn resource(pid: u32) -> Arc<ProcessInfo> {
        Arc::new(ProcessInfo {
            service_name: format!("svc-{pid}"),
            attributes: vec![("service.instance.id".into(), format!("node/{pid}"))],
            pid,
        })
    }

    fn total(m: &RequestMetrics) -> u64 {
        m.each().map(|(_, s)| s.histogram.count).sum()
    }

    #[test]
    fn a_duration_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let mut d = Durations::default();
        for s in [0.0, 0.005, 0.0051, 0.1, 10.0, 10.5] {
            d.record(s);
        }
        let mut want = [0u64; BOUNDS.len() + 1];
        want[0] = 2; // 0 and 0.005
        want[1] = 1; // 0.0051
        want[5] = 1; // 0.1
        want[13] = 1; // 10
        want[14] = 1; // above every bound
        assert_eq!(d.buckets, want);
        assert_eq!((d.count, d.min, d.max), (6, 0.0, 10.5));
        assert!((d.sum - 20.6101).abs() < 1e-9);
    }

    #[test]
    fn series_are_keyed_by_process_instrument_and_low_cardinality_attributes() {
        let mut m = RequestMetrics::new(100, Duration::from_secs(60));
        // Paths differ (/users/1, /users/2...) but are no key: one series per status.
        for ms in 1..=10 {
            m.record(&http(Kind::Server, 7, 200, ms), &mut resource);
        }
        m.record(&http(Kind::Server, 7, 500, 3), &mut resource);
        m.record(&http(Kind::Client, 7, 200, 3), &mut resource);
        m.record(&http(Kind::Server, 8, 200, 3), &mut resource);
        let mut not_a_request = http(Kind::Server, 7, 200, 1);
        not_a_request.attributes.clear();
        m.record(&not_a_request, &mut resource);
        let s = m.stats();
        assert_eq!((s.recorded, s.not_measured, s.overflowed), (13, 1, 0));
        assert_eq!(m.series(), 4);
        let ok: Vec<&Series> = m
            .each()
            .filter(|(pid, s)| {
                *pid == 7
                    && s.instrument == Instrument::HttpServer
                    && s.attributes().any(|(k, v)| k == "http.response.status_code" && *v == Value::Int(200))
            })
            .map(|(_, s)| s)
            .collect();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].histogram.count, 10);
        assert!(ok[0].attributes().all(|(k, _)| k != "url.path"), "{:?}", ok[0]);
        let failed = m.each().find(|(_, s)| s.attributes().any(|(k, _)| k == "error.type"));
        assert!(failed.is_some_and(|(_, s)| s.histogram.count == 1));
    }

    #[test]
    fn beyond_the_cap_new_attribute_sets_share_an_overflow_series_and_nothing_is_lost() {
        let mut m = RequestMetrics::new(3, Duration::from_secs(60));
        for status in 200..210 {
            m.record(&http(Kind::Server, 7, status, 1), &mut resource);
            m.record(&http(Kind::Server, 7, status, 1), &mut resource);
        }
        // The first three sets keep their series (and keep counting); the seven others overflow.
        m.record(&http(Kind::Server, 7, 200, 1), &mut resource);
        assert_eq!(m.series(), 4);
        assert_eq!(m.stats().overflowed, 14);
        assert_eq!(total(&m), 21);
        assert_eq!(m.stats().recorded, 21);
        let overflow: Vec<&Series> = m.each().map(|(_, s)| s).filter(|s| s.overflow).collect();
        assert_eq!(overflow.len(), 1);
        assert_eq!(overflow[0].histogram.count, 14);
        assert_eq!(overflow[0].attributes().count(), 0);
    }

    #[test]
    fn an_exited_process_is_forgotten_after_the_retention() {
        let mut m = RequestMetrics::new(100, Duration::from_secs(60));
        m.record(&http(Kind::Server, 7, 200, 1), &mut resource);
        m.record(&http(Kind::Server, 8, 200, 1), &mut resource);
        let t = Instant::now();
        m.exited(7, t);
        m.forget_exited(t + Duration::from_secs(59));
        assert_eq!(m.series(), 2);
        m.forget_exited(t + Duration::from_secs(60));
        assert_eq!(m.series(), 1);
        assert_eq!(m.stats().series_forgotten, 1);
        assert!(m.each().all(|(pid, _)| pid == 8));
    }

    #[test]
    fn every_instrument_s_keys_have_their_slots() {
        for i in Instrument::ALL {
            let by_slot: Vec<&str> = i.slots().iter().map(|&s| KEYS[s]).collect();
            assert_eq!(by_slot, i.keys(), "{i:?}");
            assert!(i.keys().len() <= MAX_KEYS);
        }
        for (n, k) in KEYS.iter().enumerate() {
            assert_eq!(slot(k), Some(n));
        }
        assert_eq!(slot("url.path"), None);
    }

    #[test]
    fn databases_and_grpc_have_their_own_instruments() {
        let mut db = http(Kind::Client, 7, 200, 1);
        db.attributes = vec![
            ("db.system.name", Value::Str("postgresql".into())),
            ("db.operation.name", Value::Str("SELECT".into())),
            ("db.query.text", Value::Str("SELECT ? FROM t".into())),
        ];
        assert_eq!(Instrument::of(&db), Some(Instrument::DbClient));
        let mut grpc = http(Kind::Server, 7, 200, 1);
        grpc.attributes.push(("rpc.system", Value::Str("grpc".into())));
        assert_eq!(Instrument::of(&grpc), Some(Instrument::RpcServer));
        let mut m = RequestMetrics::new(100, Duration::from_secs(60));
        m.record(&db, &mut resource);
        let (_, s) = m.each().next().expect("a series");
        // The query text is never a key.
        assert_eq!(
            s.attributes().map(|(k, _)| k).collect::<Vec<_>>(),
            vec!["db.system.name", "db.operation.name"]
        );
    }

    #[test]
    fn prometheus_histograms_have_cumulative_buckets_sum_and_count() {
        let mut m = RequestMetrics::new(100, Duration::from_secs(60));
        m.record(&http(Kind::Server, 7, 200, 3), &mut resource);
        m.record(&http(Kind::Server, 7, 200, 30), &mut resource);
        let mut page = Page::default();
        m.prometheus(&mut page);
        let text = page.finish();
        let labels = "service_name=\"svc-7\",service_instance_id=\"node/7\",http_request_method=\"GET\",\
                      http_response_status_code=\"200\"";
        for line in [
            "# TYPE http_server_request_duration_seconds histogram".to_string(),
            format!("http_server_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 1"),
            format!("http_server_request_duration_seconds_bucket{{{labels},le=\"0.025\"}} 1"),
            format!("http_server_request_duration_seconds_bucket{{{labels},le=\"0.05\"}} 2"),
            format!("http_server_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2"),
            format!("http_server_request_duration_seconds_count{{{labels}}} 2"),
            format!("http_server_request_duration_seconds_sum{{{labels}}} 0.033"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn otlp_has_one_resource_per_process_and_cumulative_points() {
        let mut m = RequestMetrics::new(100, Duration::from_secs(60));
        assert!(m.otlp(5).is_none(), "nothing to send");
        m.record(&http(Kind::Server, 7, 200, 3), &mut resource);
        m.record(&http(Kind::Server, 7, 404, 3), &mut resource);
        m.record(&http(Kind::Client, 8, 200, 3), &mut resource);
        let (req, points) = m.otlp(2_000_000_000).expect("a request");
        // Three histogram points, then the service graph's: the two served requests came with
        // no context (one edge from `user`: two counters and the server histogram; the client
        // span still waits for its server end).
        assert_eq!(points, 3 + 3);
        assert_eq!(req.resource_metrics.len(), 3);
        let graph = &req.resource_metrics[2];
        let graph_attrs = &graph.resource.as_ref().expect("resource").attributes;
        assert_eq!(graph_attrs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["host.name"]);
        assert_eq!(graph.scope_metrics[0].metrics[0].name, "traces_service_graph_request_total");
        let rm = &req.resource_metrics[0];
        let attrs = &rm.resource.as_ref().expect("resource").attributes;
        assert!(attrs.iter().any(|kv| kv.key == "service.name"
            && kv.value == Some(AnyValue { value: Some(any_value::Value::StringValue("svc-7".into())) })));
        let metric = &rm.scope_metrics[0].metrics[0];
        assert_eq!((metric.name.as_str(), metric.unit.as_str()), ("http.server.request.duration", "s"));
        let Some(Data::Histogram(h)) = &metric.data else { panic!("{metric:?}") };
        assert_eq!(h.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        assert_eq!(h.data_points.len(), 2);
        for p in &h.data_points {
            assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
            assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
            assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (1_000_000_000, 2_000_000_000));
        }
    }
}
