//! `tracewire run`: capture → spans → exporters (OTLP/gRPC, OTLP-JSON file, terminal waterfall),
//! with a periodic status line and exact span accounting at exit.
use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use tracewire_common::{Counter, EventKind};

use crate::{
    capture::{CaptureOptions, session::Session},
    correlate::{Correlator, span::SpanRecord},
    events::{Event, clock::Clock},
    export::{
        Accounting,
        json::JsonFile,
        metrics::{Metrics, Page},
        otlp::{OtlpConfig, OtlpExporter},
        request_metrics::RequestMetrics,
        service_graph::ServiceGraph,
        waterfall::{self, Waterfall},
    },
    metadata::Resources,
    sampling::tail::{TailConfig, TailSampler, TailStats},
};

/// Where spans go.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Print each finished trace as a waterfall.
    pub waterfall: bool,
    /// Span naming.
    pub routes: crate::correlate::route::Routes,
    /// Head sampling.
    pub sampler: crate::sampling::Sampler,
    /// Tail sampling, when on.
    pub tail: Option<TailConfig>,
    /// Write OTLP-JSON lines here.
    pub otlp_json: Option<PathBuf>,
    /// Export OTLP/gRPC.
    pub otlp: Option<OtlpConfig>,
    /// Status line period (0: only at exit).
    pub status_every: Duration,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// How long to keep exporting after a stop signal.
    pub shutdown_deadline: Duration,
    /// A trace is printed once no span joined it for this long.
    pub trace_idle: Duration,
    /// Serve `/metrics` and `/healthz` here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Measure request durations (on `/metrics`, and over OTLP when it has a metrics endpoint).
    pub request_metrics: Option<RequestMetricsConfig>,
}

/// Request metrics settings.
#[derive(Debug, Clone)]
pub struct RequestMetricsConfig {
    /// Attribute sets held in all; beyond, they go to overflow series.
    pub max_series: usize,
    /// How long an exited process's series stay (for the last scrape and export to see them).
    pub retain: Duration,
    /// Period of the OTLP export.
    pub export_interval: Duration,
}

impl RequestMetricsConfig {
    /// The defaults, with the export period from `OTEL_METRIC_EXPORT_INTERVAL` (ms, read through
    /// `var`; 60000 as in the SDKs).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let export_interval = match var("OTEL_METRIC_EXPORT_INTERVAL").filter(|v| !v.trim().is_empty()) {
            None => Duration::from_secs(60),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => anyhow::bail!("OTEL_METRIC_EXPORT_INTERVAL={v}: a positive number of milliseconds"),
            },
        };
        Ok(RequestMetricsConfig {
            // ~0.4 KiB each: under 2 MiB in all.
            max_series: 4096,
            // Two exports, and more than a Prometheus scrape interval.
            retain: (export_interval * 2).max(Duration::from_secs(120)),
            export_interval,
        })
    }
}

/// What a run produced, printed as JSON on stderr at exit (`tracewire: summary {...}`).
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Spans built.
    pub spans: u64,
    /// OTLP accounting.
    pub otlp: Option<Accounting>,
    /// Spans written to the JSON file.
    pub json_written: u64,
    /// Tail sampling, when on.
    pub tail: Option<TailStats>,
}

struct Sinks {
    resources: Resources,
    otlp: Option<OtlpExporter>,
    accounting: Arc<Mutex<Accounting>>,
    json: Option<JsonFile>,
    waterfall: Option<Waterfall>,
    color: bool,
}

impl Sinks {
    /// Hands spans to every sink; the OTLP exporter, last, takes them without a copy. `whole`:
    /// the spans are one finished trace (kept by tail sampling).
    fn deliver(&mut self, spans: Vec<SpanRecord>, whole: bool) {
        if spans.is_empty() {
            return;
        }
        if let Some(j) = &mut self.json {
            j.write(&spans, &mut self.resources);
        }
        if let Some(w) = &mut self.waterfall {
            if whole {
                w.add_trace(&spans);
            } else {
                w.add(&spans);
            }
        }
        if let Some(o) = &mut self.otlp {
            self.accounting.lock().unwrap_or_else(|e| e.into_inner()).produced += spans.len() as u64;
            o.submit(spans, &mut self.resources);
        }
    }

    fn print_traces(&mut self, all: bool) {
        let Some(w) = &mut self.waterfall else {
            return;
        };
        let traces = w.take_finished(all);
        if traces.is_empty() {
            return;
        }
        let resources = &mut self.resources;
        let mut names: HashMap<u32, String> = HashMap::new();
        for t in &traces {
            for s in t {
                names.entry(s.pid).or_insert_with(|| resources.get(s.pid).service_name.clone());
            }
        }
        let service = |pid: u32| names.get(&pid).cloned().unwrap_or_else(|| pid.to_string());
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for t in traces {
            let _ = writeln!(out, "{}", waterfall::render(&t, &service, self.color));
        }
        let _ = out.flush();
    }
}

/// The agent's own TCP connections (its exports), as (local, remote). The kernel never traces
/// the agent, but a traced collector on the same node would see the other end of these
/// connections.
#[derive(Default)]
struct OwnSockets {
    conns: std::collections::HashSet<(std::net::SocketAddr, std::net::SocketAddr)>,
    refreshed: Option<Instant>,
    skipped: u64,
}

impl OwnSockets {
    /// Whether a connection seen with these (local, remote) addresses is the far end of one of
    /// the agent's. Both ends must match: one local port serves connections to different
    /// destinations at once, so the agent's port alone also names other processes' connections.
    fn is_own_peer(
        &mut self,
        local: &tracewire_common::SockAddr,
        remote: &tracewire_common::SockAddr,
    ) -> bool {
        let (Some(local), Some(peer)) =
            (crate::events::socket_addr(local), crate::events::socket_addr(remote))
        else {
            return false;
        };
        // Only a peer on this machine can be the agent.
        if !peer.ip().is_loopback() && !self.conns.iter().any(|(a, _)| a.ip() == peer.ip()) {
            return false;
        }
        if self.matches(peer, local) {
            return true;
        }
        // Unknown local peer: look again, at most every 200 ms (new export connections).
        if self.refreshed.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
            self.refreshed = Some(Instant::now());
            self.conns = crate::capture::resolve::own_tcp_connections()
                .iter()
                .filter_map(|(l, r)| Some((crate::events::socket_addr(l)?, crate::events::socket_addr(r)?)))
                .collect();
            return self.matches(peer, local);
        }
        false
    }

    /// `local` may still be the listener's wildcard address (learned on the first read): then
    /// its port must match.
    fn matches(&self, peer: std::net::SocketAddr, local: std::net::SocketAddr) -> bool {
        if local.ip().is_unspecified() {
            self.conns.iter().any(|(l, r)| *l == peer && r.port() == local.port())
        } else {
            self.conns.contains(&(peer, local))
        }
    }
}

/// Runs until `stop` is set or the duration ends.
pub fn run(options: CaptureOptions, out: RunOutput, stop: Arc<AtomicBool>) -> anyhow::Result<Summary> {
    let max_conns = options.max_conns as usize;
    let accounting = Arc::new(Mutex::new(Accounting::default()));
    let otlp = match &out.otlp {
        Some(cfg) => Some(OtlpExporter::start(cfg.clone(), Arc::clone(&accounting))?),
        None => None,
    };
    let json = match &out.otlp_json {
        Some(p) => {
            Some(JsonFile::create(p).map_err(|e| anyhow::anyhow!("--otlp-json {}: {e}", p.display()))?)
        }
        None => None,
    };
    let mut sinks = Sinks {
        resources: Resources::new(4096),
        otlp,
        accounting: Arc::clone(&accounting),
        json,
        waterfall: out.waterfall.then(|| Waterfall::new(out.trace_idle, 100_000)),
        color: std::io::stdout().is_terminal(),
    };
    let mut session = Session::start(options)?;
    let metrics = match out.metrics_addr {
        Some(addr) => {
            let m = Arc::new(Metrics::default());
            let bound = crate::export::metrics::serve(addr, Arc::clone(&m))
                .map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: {e}"))?;
            eprintln!("tracewire: metrics on http://{bound}/metrics, health on http://{bound}/healthz");
            Some(m)
        }
        None => None,
    };
    let mut rendered = false;
    let mut correlator = Correlator::new(Clock::now(), max_conns)
        .with_routes(out.routes.clone())
        .with_sampler(out.sampler.clone());
    if session.capture().skips_unsampled() {
        correlator = correlator.without_pairing();
    }
    eprintln!("tracewire: tracing with {} programs attached (Ctrl-C to stop)", session.capture().attached());
    let started = Instant::now();
    let mut last_status = Instant::now();
    let mut exited: Vec<u32> = Vec::new();
    let mut own = OwnSockets::default();
    let mut sampled_out = 0u64;
    let mut tail = out.tail.clone().map(|cfg| TailSampler::new(cfg, Instant::now()));
    let mut red = out.request_metrics.as_ref().map(|c| RequestMetrics::new(c.max_series, c.retain));
    let mut last_metrics_export = Instant::now();
    let mut last_forget = Instant::now();
    // Polls left once stopping: what the ring holds is read before connections are closed.
    let mut drain = session.drain_polls();
    loop {
        let stopping = stop.load(Ordering::Relaxed) || out.duration.is_some_and(|d| started.elapsed() >= d);
        let timeout = if stopping { Duration::ZERO } else { Duration::from_millis(20) };
        let resources = &mut sinks.resources;
        let exits_before = exited.len();
        let read = session.poll(timeout, |ev| {
            match ev {
                Event::Conn(c) if EventKind::try_from(c.header.kind) == Ok(EventKind::ConnOpen) => {
                    if own.is_own_peer(&c.local, &c.remote) {
                        // A traced collector's side of the agent's own export connection: its
                        // spans would be exported, and each export would make another span.
                        own.skipped += 1;
                        return;
                    }
                    // Read the process while it is alive: short-lived clients are gone by the
                    // time their spans are exported.
                    resources.observe(c.conn.tgid);
                }
                Event::Proc(p) if EventKind::try_from(p.header.kind) == Ok(EventKind::Exit) => {
                    exited.push(p.pid)
                }
                _ => {}
            }
            correlator.on_event(ev);
        })?;
        if let Some(r) = &mut red {
            let now = Instant::now();
            for pid in &exited[exits_before..] {
                r.exited(*pid, now);
            }
            if last_forget.elapsed() >= Duration::from_secs(1) {
                last_forget = now;
                r.forget_exited(now);
            }
        }
        if stopping {
            drain = drain.saturating_sub(1);
        }
        let last = stopping && (read == 0 || drain == 0);
        if last {
            correlator.close_all();
        }
        let mutes = correlator.take_mutes();
        if !mutes.is_empty() {
            session.mute(&mutes);
        }
        let mut spans = correlator.take_spans();
        if let Some(r) = &mut red {
            // Every request counts, whatever sampling keeps of its trace.
            let resources = &mut sinks.resources;
            for s in &spans {
                r.record(s, &mut |pid| resources.get(pid));
            }
            if last {
                r.flush_graph();
            }
        }
        // Head sampling: a trace not sampled where it started is not exported anywhere.
        let before = spans.len();
        spans.retain(|s| s.flags & crate::protocol::traceparent::FLAG_SAMPLED != 0);
        sampled_out += (before - spans.len()) as u64;
        match &mut tail {
            None => sinks.deliver(spans, false),
            Some(t) => {
                let now = Instant::now();
                let mut kept = t.add(spans, now);
                kept.extend(t.take_finished(now, last));
                for trace in kept {
                    sinks.deliver(trace, true);
                }
            }
        }
        if let Some(o) = &mut sinks.otlp {
            o.tick(&mut sinks.resources);
            if let (Some(r), Some(c)) = (&red, &out.request_metrics)
                && o.exports_metrics()
                && (last_metrics_export.elapsed() >= c.export_interval || last)
            {
                last_metrics_export = Instant::now();
                if let Some((request, points)) = r.otlp(Clock::wall_now_ns()) {
                    o.submit_metrics(&request, points);
                }
            }
        }
        sinks.print_traces(last);
        if let Some(m) = &metrics {
            m.beat();
            // Rendered when a scrape asks (and once at start, for one that comes first).
            if m.wanted() || !rendered {
                rendered = true;
                let counts = Counts { own_skipped: own.skipped, sampled_out };
                m.publish(metrics_page(
                    &session,
                    &correlator,
                    &accounting,
                    tail.as_ref(),
                    red.as_ref(),
                    &counts,
                )?);
            }
        }
        if last {
            break;
        }
        if !out.status_every.is_zero() && last_status.elapsed() >= out.status_every {
            eprintln!(
                "{}",
                status_line(&session, &correlator, &accounting, sinks.otlp.is_some(), tail.as_ref())?
            );
            correlator.set_clock(Clock::now());
            // Resources of exited processes are kept one status period, for spans still queued.
            for pid in exited.drain(..) {
                sinks.resources.forget(pid);
            }
            last_status = Instant::now();
        }
    }
    if let Some(o) = sinks.otlp.take() {
        o.shutdown(&mut sinks.resources, out.shutdown_deadline);
    }
    if out.waterfall
        && let Some(r) = &red
    {
        // After the last traces: what every request did, whatever sampling kept.
        let mut stdout = std::io::stdout().lock();
        for table in [waterfall::requests_table(r), waterfall::graph_table(r.graph())] {
            if !table.is_empty() {
                let _ = writeln!(stdout, "{table}");
            }
        }
        let _ = stdout.flush();
    }
    eprintln!("{}", status_line(&session, &correlator, &accounting, out.otlp.is_some(), tail.as_ref())?);
    let summary = Summary {
        spans: correlator.stats().spans,
        otlp: out.otlp.as_ref().map(|_| accounting.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        json_written: sinks.json.as_ref().map_or(0, |j| j.written),
        tail: tail.as_ref().map(|t| t.stats().clone()),
    };
    let stats = correlator.stats();
    let k = session.kernel_counters()?;
    let otlp_json = summary.otlp.as_ref().map(|a| {
        json!({
            "produced": a.produced, "exported": a.exported, "retries": a.retries,
            "dropped": a.dropped.iter().map(|(r, n)| (r.name(), *n)).collect::<HashMap<_, _>>(),
            "last_error": a.last_error,
            "metric_points": {
                "produced": a.points.produced, "exported": a.points.exported, "dropped": a.points.dropped,
                "last_error": a.points.last_error,
            },
        })
    });
    let mut http_json = counts_json(&stats.counts());
    http_json.insert("invalid".into(), json!(stats.invalid));
    eprintln!(
        "tracewire: summary {}",
        json!({
            "spans": summary.spans,
            "sampled_out": sampled_out,
            "tail": summary.tail.as_ref().map(tail_json),
            "request_metrics": red.as_ref().map(|r| {
                let s = r.stats();
                json!({
                    "recorded": s.recorded, "overflowed": s.overflowed, "not_measured": s.not_measured,
                    "series": r.series(), "series_forgotten": s.series_forgotten,
                    "service_graph": graph_json(r.graph()),
                })
            }),
            "otlp": otlp_json,
            "json_written": summary.json_written,
            "http": http_json,
            "http2": counts_json(&stats.h2.counts()),
            "postgres": counts_json(&stats.pg.counts()),
            "redis": counts_json(&stats.redis.counts()),
            "memcached": counts_json(&stats.memcached.counts()),
            "mysql": counts_json(&stats.mysql.counts()),
            "kernel": Counter::ALL.iter().map(|c| (c.name(), k[*c as usize])).collect::<HashMap<_, _>>(),
            "decode_errors": session.stats().decode_errors,
            "data_unknown_conn": session.stats().data_unknown_conn,
            "handoff_runtimes": session.stats().handoff_runtimes,
            "go_followed": session.stats().go_followed,
            "go_not_followed": session.stats().go_not_followed,
            "go_tls_followed": session.stats().go_tls_followed,
            "nginx_followed": session.stats().nginx_followed,
            "nginx_not_followed": session.stats().nginx_not_followed,
            "tls_followed": session.stats().tls_followed,
            "tls_not_followed": session.stats().tls_not_followed,
            "own_connections_skipped": own.skipped,
            "pids_beyond_max": session.stats().pids_beyond_max,
        })
    );
    Ok(summary)
}

/// Loop-local counts the metrics page shows.
struct Counts {
    own_skipped: u64,
    sampled_out: u64,
}

/// Everything the summary counts, as a Prometheus page.
fn metrics_page(
    session: &Session,
    correlator: &Correlator,
    accounting: &Mutex<Accounting>,
    tail: Option<&TailSampler>,
    red: Option<&RequestMetrics>,
    counts: &Counts,
) -> anyhow::Result<String> {
    let mut p = Page::default();
    let k = session.kernel_counters()?;
    let stats = correlator.stats();
    p.single("tracewire_spans_total", "counter", "Spans built.", stats.spans as f64);
    p.single(
        "tracewire_head_sampled_out_spans_total",
        "counter",
        "Spans left out by head sampling in the agent (the kernel's count is kernel_events_total{counter=\"sampled_out\"}).",
        counts.sampled_out as f64,
    );
    p.single(
        "tracewire_open_connections",
        "gauge",
        "Connections being followed.",
        correlator.open_conns() as f64,
    );
    let name = "tracewire_kernel_events_total";
    p.family(
        name,
        "counter",
        "Kernel-side counters, by name (drops: ring_full, conn_map_full, active_map_full...).",
    );
    for c in Counter::ALL {
        p.sample(name, &[("counter", c.name())], k[c as usize] as f64);
    }
    let by_kind = [
        (
            "tracewire_http_events_total",
            "What the HTTP correlation saw, by kind.",
            stats.counts().into_iter().chain([("own_connections_skipped", counts.own_skipped)]).collect(),
        ),
        (
            "tracewire_postgres_events_total",
            "What the PostgreSQL correlation saw, by kind (conns, encrypted, unframed...).",
            stats.pg.counts().to_vec(),
        ),
        (
            "tracewire_mysql_events_total",
            "What the MySQL and MariaDB correlation saw, by kind (conns, encrypted, unframed...).",
            stats.mysql.counts().to_vec(),
        ),
        (
            "tracewire_redis_events_total",
            "What the Redis correlation saw, by kind (conns, unframed, unpaired, subscribed...).",
            stats.redis.counts().to_vec(),
        ),
        (
            "tracewire_memcached_events_total",
            "What the memcached correlation saw, by kind (conns, rejected, unframed, unpaired...).",
            stats.memcached.counts().to_vec(),
        ),
        (
            "tracewire_http2_events_total",
            "What the HTTP/2 and gRPC correlation saw, by kind (conns, grpc, lost, resets...).",
            stats.h2.counts().to_vec(),
        ),
    ];
    for (name, help, kinds) in by_kind {
        p.by_label(name, "counter", help, "kind", kinds.into_iter().map(|(k, v)| (k, v as f64)));
    }
    p.by_label(
        "tracewire_invalid_messages_total",
        "counter",
        "Bytes that did not parse as HTTP, by reason.",
        "reason",
        stats.invalid.iter().map(|(r, v)| (*r, *v as f64)),
    );
    p.by_label(
        "tracewire_decode_errors_total",
        "counter",
        "Ring buffer records that failed to decode, by reason.",
        "reason",
        session.stats().decode_errors.iter().map(|(r, v)| (*r, *v as f64)),
    );
    {
        let a = accounting.lock().unwrap_or_else(|e| e.into_inner());
        p.by_label(
            "tracewire_otlp_spans_total",
            "counter",
            "Spans handed to the OTLP exporter, and exported.",
            "outcome",
            [("produced", a.produced as f64), ("exported", a.exported as f64)],
        );
        p.by_label(
            "tracewire_otlp_dropped_spans_total",
            "counter",
            "Spans the OTLP exporter dropped, by reason.",
            "reason",
            a.dropped.iter().map(|(r, v)| (r.name(), *v as f64)),
        );
        p.single("tracewire_otlp_retries_total", "counter", "OTLP export retries.", a.retries as f64);
    }
    if let Some(t) = tail {
        let s = t.stats();
        let name = "tracewire_tail_traces_total";
        p.family(name, "counter", "Traces decided by tail sampling, by decision.");
        // The first five counts are traces by decision.
        for (decision, v) in &s.counts()[..5] {
            p.sample(name, &[("decision", decision)], *v as f64);
        }
        let name = "tracewire_tail_spans_total";
        p.family(name, "counter", "Spans decided by tail sampling.");
        p.sample(name, &[("decision", "kept")], s.spans_kept as f64);
        p.sample(name, &[("decision", "dropped")], s.spans_dropped as f64);
        p.single(
            "tracewire_tail_spans_held",
            "gauge",
            "Spans waiting for their trace to finish.",
            t.held() as f64,
        );
    }
    {
        let a = accounting.lock().unwrap_or_else(|e| e.into_inner());
        p.by_label(
            "tracewire_otlp_metric_points_total",
            "counter",
            "Request-metric data points handed to the OTLP exporter, exported and dropped.",
            "outcome",
            [
                ("produced", a.points.produced as f64),
                ("exported", a.points.exported as f64),
                ("dropped", a.points.dropped as f64),
            ],
        );
    }
    if let Some(r) = red {
        let s = r.stats();
        p.by_label(
            "tracewire_request_metrics_spans_total",
            "counter",
            "Spans measured by the request metrics (overflowed: into an overflow series), or not.",
            "outcome",
            [
                ("recorded", s.recorded as f64),
                ("overflowed", s.overflowed as f64),
                ("not_measured", s.not_measured as f64),
            ],
        );
        p.single(
            "tracewire_request_metrics_series",
            "gauge",
            "Attribute sets the request metrics hold.",
            r.series() as f64,
        );
        let g = r.graph().stats();
        p.by_label(
            "tracewire_service_graph_calls_total",
            "counter",
            "Calls the service graph counted, by how their edge was made.",
            "outcome",
            [
                ("paired", g.paired as f64),
                ("client_unpaired", g.client_unpaired as f64),
                ("server_unpaired", g.server_unpaired as f64),
                ("from_user", g.from_user as f64),
                ("database", g.database as f64),
            ],
        );
        p.by_label(
            "tracewire_service_graph_limited_total",
            "counter",
            "Calls counted in the overflow edge (edge cap reached), or made an edge before their other end could come (pending table full).",
            "reason",
            [("overflowed", g.overflowed as f64), ("pending_full", g.pending_full as f64)],
        );
        p.single(
            "tracewire_service_graph_edges",
            "gauge",
            "Edges the service graph holds.",
            r.graph().edges().len() as f64,
        );
        p.single(
            "tracewire_service_graph_edges_forgotten_total",
            "counter",
            "Edges forgotten after 15 minutes without a call.",
            g.edges_forgotten as f64,
        );
        r.prometheus(&mut p);
    }
    if let Ok(stat) = procfs::process::Process::myself().and_then(|me| me.stat()) {
        let ticks = procfs::ticks_per_second() as f64;
        p.single(
            "tracewire_cpu_seconds_total",
            "counter",
            "The agent's CPU time (user and system).",
            (stat.utime + stat.stime) as f64 / ticks,
        );
        p.single(
            "tracewire_resident_memory_bytes",
            "gauge",
            "The agent's resident memory.",
            (stat.rss * procfs::page_size()) as f64,
        );
    }
    Ok(p.finish())
}

fn graph_json(g: &ServiceGraph) -> serde_json::Value {
    let s = g.stats();
    json!({
        "edges": g.edges().len(), "pending": g.pending(), "paired": s.paired,
        "client_unpaired": s.client_unpaired, "server_unpaired": s.server_unpaired,
        "from_user": s.from_user, "database": s.database, "overflowed": s.overflowed,
        "pending_full": s.pending_full, "edges_forgotten": s.edges_forgotten,
    })
}

fn tail_json(s: &TailStats) -> serde_json::Value {
    counts_json(&s.counts()).into()
}

/// Named counters as a JSON object, for the summary.
fn counts_json(counts: &[(&str, u64)]) -> serde_json::Map<String, serde_json::Value> {
    counts.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()
}

fn status_line(
    session: &Session,
    correlator: &Correlator,
    accounting: &Mutex<Accounting>,
    otlp: bool,
    tail: Option<&TailSampler>,
) -> anyhow::Result<String> {
    let k = session.kernel_counters()?;
    let stats = correlator.stats();
    let mut line = format!(
        "status: {} spans, {} open conns, {} events, drops: ring_full={} conn_map_full={} active_map_full={} copy_failed={}",
        stats.spans,
        correlator.open_conns(),
        k[Counter::EventsOut as usize],
        k[Counter::RingFull as usize],
        k[Counter::ConnMapFull as usize],
        k[Counter::ActiveMapFull as usize],
        k[Counter::CopyFailed as usize],
    );
    if otlp {
        let a = accounting.lock().unwrap_or_else(|e| e.into_inner());
        line.push_str(&format!(", otlp: {}", a.summary()));
    }
    if let Some(t) = tail {
        let s = t.stats();
        line.push_str(&format!(
            ", tail: kept {} (error {}, slow {}, baseline {}), dropped {} ({} rate-limited), {} spans held",
            s.kept_error + s.kept_slow + s.kept_baseline,
            s.kept_error,
            s.kept_slow,
            s.kept_baseline,
            s.dropped,
            s.rate_limited,
            t.held()
        ));
    }
    Ok(line)
}
