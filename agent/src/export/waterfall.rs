//! The terminal waterfall: each finished trace as an indented tree of spans with bars scaled to
//! the trace's duration, the way tracing UIs draw them.
use std::{
    collections::HashMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use super::{
    request_metrics::{Durations, Instrument, RequestMetrics, Series, value_text},
    service_graph::{ConnectionType, Edge, ServiceGraph},
};
use crate::{
    correlate::span::{Kind, SpanRecord, Value},
    sampling::traces::Assembler,
};

const BAR: usize = 40;

/// The label shown for a span: method and path (server), method and URL (client), or the
/// sanitized statement or command (database client).
pub fn operation(s: &SpanRecord) -> String {
    let get = |k: &str| match s.attr(k) {
        Some(Value::Str(v)) => Some(v.as_ref()),
        _ => None,
    };
    if let Some(system) = get("db.system.name") {
        let prefix = match system {
            "redis" => "REDIS",
            "memcached" => "MEMCACHED",
            _ => "SQL",
        };
        // A statement whose text was not seen (prepared before tracing began) shows its name.
        return match get("db.query.text") {
            Some(text) => format!("{prefix} {text}"),
            None => format!("{prefix} {}", s.name),
        };
    }
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

/// A duration in seconds, in the unit that suits it.
fn seconds(s: f64) -> String {
    if s >= 1.0 { format!("{s:.2} s") } else { format!("{:.1} ms", s * 1e3) }
}

/// What a series of the request metrics measures, as a line of the requests table: method,
/// route and status (served), method, peer and status (called), the operation (database).
fn series_label(s: &Series) -> String {
    if s.overflow {
        return format!("{} (attribute sets beyond the cap)", s.instrument.name());
    }
    let get = |k: &str| s.attributes().find(|(key, _)| *key == k).map(|(_, v)| value_text(v));
    let or = |k: &str, default: &str| get(k).unwrap_or_else(|| default.to_string());
    let peer = || match (get("server.address"), get("server.port")) {
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a,
        _ => "?".to_string(),
    };
    match s.instrument {
        Instrument::HttpServer => {
            let route = get("http.route").map(|r| format!("{r} ")).unwrap_or_default();
            format!(
                "{} {route}{}",
                or("http.request.method", "?"),
                or("http.response.status_code", "no response")
            )
        }
        Instrument::HttpClient => format!(
            "{} → {} {}",
            or("http.request.method", "?"),
            peer(),
            or("http.response.status_code", "no response")
        ),
        Instrument::RpcServer | Instrument::RpcClient => {
            let to = if s.instrument == Instrument::RpcClient {
                format!(" → {}", peer())
            } else {
                String::new()
            };
            format!(
                "{}/{}{to} {}",
                or("rpc.service", "?"),
                or("rpc.method", "?"),
                or("rpc.grpc.status_code", "?")
            )
        }
        Instrument::DbClient => {
            let system = or("db.system.name", "?");
            let prefix = match system.as_str() {
                "redis" => "REDIS",
                "memcached" => "MEMCACHED",
                _ => "SQL",
            };
            let error = get("error.type").map(|e| format!(" {e}")).unwrap_or_default();
            format!("{prefix} {}{error}", or("db.operation.name", "?"))
        }
    }
}

/// The request metrics as a table: every request measured, by service and what it was, with
/// its count, errors, mean and longest duration (what sampling kept of the traces does not
/// matter here). Processes of one service are added up.
pub fn requests_table(metrics: &RequestMetrics) -> String {
    // (service, label) -> (count, errors, sum, max)
    let mut rows: std::collections::BTreeMap<(String, String), (u64, u64, f64, f64)> = Default::default();
    for (pid, s) in metrics.each() {
        let service = metrics.resource(pid).map_or_else(|| pid.to_string(), |r| r.service_name.clone());
        let h = &s.histogram;
        let row = rows.entry((service, series_label(s))).or_default();
        row.0 += h.count;
        if s.attributes().any(|(k, _)| k == "error.type") {
            row.1 += h.count;
        }
        row.2 += h.sum;
        row.3 = row.3.max(h.max);
    }
    if rows.is_empty() {
        return String::new();
    }
    let width = rows.keys().map(|(svc, _)| svc.chars().count()).max().unwrap_or(7).max(7);
    let label_width = rows.keys().map(|(_, l)| l.chars().count()).max().unwrap_or(8).clamp(8, 64);
    let mut out =
        String::from("requests measured (every request seen, whatever sampling kept of its trace)\n");
    let _ = writeln!(
        out,
        "  {:<width$}  {:<label_width$}  {:>8}  {:>6}  {:>9}  {:>9}",
        "SERVICE", "REQUEST", "COUNT", "ERRORS", "MEAN", "MAX"
    );
    for ((service, label), (count, errors, sum, max)) in rows {
        let label: String = label.chars().take(label_width).collect();
        let _ = writeln!(
            out,
            "  {service:<width$}  {label:<label_width$}  {count:>8}  {errors:>6}  {:>9}  {:>9}",
            seconds(sum / count.max(1) as f64),
            seconds(max)
        );
    }
    out
}

/// The service graph as a table: each edge (who called whom), its calls, failures and mean
/// durations as the client and as the server saw them. Empty when no edge was seen.
pub fn graph_table(graph: &ServiceGraph) -> String {
    let edges = graph.edges();
    if edges.is_empty() {
        return String::new();
    }
    let end = |e: &Edge, name: &str, virtual_end: bool| -> String {
        if e.overflow {
            "(edges beyond the cap)".to_string()
        } else if virtual_end {
            format!("[{name}]")
        } else {
            name.to_string()
        }
    };
    // In the order their first calls started: a page load reads top to bottom.
    let mut edges: Vec<&Edge> = edges.iter().collect();
    edges.sort_by_key(|e| e.start_ns);
    let rows: Vec<(String, String, &Edge)> = edges
        .into_iter()
        .map(|e| {
            // The end not traced here: the client of a virtual-node edge whose server span was
            // seen, the server otherwise.
            let virtual_client =
                e.connection_type == ConnectionType::VirtualNode && e.server_seconds.count > 0;
            let virtual_server = e.connection_type != ConnectionType::Direct && !virtual_client;
            (end(e, &e.client, virtual_client), end(e, &e.server, virtual_server), e)
        })
        .collect();
    let cw = rows.iter().map(|(c, _, _)| c.chars().count()).max().unwrap_or(6).clamp(6, 40);
    let sw = rows.iter().map(|(_, s, _)| s.chars().count()).max().unwrap_or(6).clamp(6, 48);
    let mean = |d: &Durations| if d.count == 0 { "-".to_string() } else { seconds(d.sum / d.count as f64) };
    let mut out =
        String::from("service graph (who calls whom, every call seen; [a name] is not traced here)\n");
    let _ = writeln!(
        out,
        "  {:<cw$}  {:<sw$}  {:>8}  {:>6}  {:>11}  {:>11}",
        "CLIENT", "SERVER", "CALLS", "FAILED", "CLIENT MEAN", "SERVER MEAN"
    );
    for (client, server, e) in rows {
        let client: String = client.chars().take(cw).collect();
        let server: String = server.chars().take(sw).collect();
        let _ = writeln!(
            out,
            "  {client:<cw$}  {server:<sw$}  {:>8}  {:>6}  {:>11}  {:>11}",
            e.requests,
            e.failed,
            mean(&e.client_seconds),
            mean(&e.server_seconds)
        );
    }
    out
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
    for (svc, op, s) in &rows {
        let (svc, op, s) = (svc, op, *s);
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
    if let Some((i, self_ns)) = largest_self_time(spans, &children) {
        let s = &spans[i];
        let _ = writeln!(
            out,
            "  ⮕ slowest: {} {} spends {} of {} in itself ({:.0}% of the trace)",
            service(s.pid),
            operation(s),
            ms(self_ns),
            ms(total),
            self_ns as f64 * 100.0 / total as f64
        );
    }
    out
}

/// The span with the largest self time (its duration minus the time covered by its
/// children): where the request actually waited.
pub fn largest_self_time(
    spans: &[SpanRecord],
    children: &HashMap<Option<usize>, Vec<usize>>,
) -> Option<(usize, u64)> {
    (0..spans.len())
        .map(|i| {
            let s = &spans[i];
            let mut covered = 0u64;
            let mut cursor = s.start_ns;
            let mut kids: Vec<(u64, u64)> = children
                .get(&Some(i))
                .map(|c| {
                    c.iter()
                        .map(|&j| (spans[j].start_ns.max(s.start_ns), spans[j].end_ns.min(s.end_ns)))
                        .collect()
                })
                .unwrap_or_default();
            kids.sort_unstable();
            for (a, b) in kids {
                let a = a.max(cursor);
                if b > a {
                    covered += b - a;
                    cursor = b;
                }
            }
            (i, s.duration_ns().saturating_sub(covered))
        })
        .max_by_key(|&(_, t)| t)
}

/// Collects spans per trace and releases a trace once it is finished (see
/// [`traces`](crate::sampling::traces)); traces that tail sampling kept arrive whole.
pub struct Waterfall {
    traces: Assembler,
    /// Whole traces, shown at the next look.
    ready: Vec<Vec<SpanRecord>>,
}

impl Waterfall {
    /// Holds at most `max_spans` spans waiting for their traces to finish; beyond, the oldest
    /// trace is shown as it is.
    pub fn new(idle: Duration, max_spans: usize) -> Self {
        Waterfall { traces: Assembler::new(idle, max_spans), ready: Vec::new() }
    }

    /// Adds spans.
    pub fn add(&mut self, spans: &[SpanRecord]) {
        let now = Instant::now();
        for s in spans {
            if let Some(t) = self.traces.add(s.clone(), now) {
                self.ready.push(t);
            }
        }
    }

    /// Adds a trace already known to be finished.
    pub fn add_trace(&mut self, spans: &[SpanRecord]) {
        self.ready.push(spans.to_vec());
    }

    /// Traces that are finished, oldest first: idle long enough with every in-process parent
    /// present (a parent still in flight, like a gateway waiting on a slow call, holds its trace
    /// back, up to [`MAX_WAIT`](crate::sampling::traces::MAX_WAIT)), or all of them when `all`.
    pub fn take_finished(&mut self, all: bool) -> Vec<Vec<SpanRecord>> {
        let mut out = std::mem::take(&mut self.ready);
        out.extend(self.traces.take_finished(Instant::now(), all));
        out.sort_by_key(|t| t.iter().map(|s| s.start_ns).min().unwrap_or(0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: u8, parent: Option<u8>, start: u64, end: u64, path: &str) -> SpanRecord {
        SpanRecord {
            start_ns: start,
            end_ns: end,
            pid: u32::from(id),
            attributes: vec![("url.path", Value::Str(path.to_string().into()))],
            ..SpanRecord::for_test([9; 16], id, parent)
        }
    }

    #[test]
    fn tree_bars_and_verdict() {
        let ms = 1_000_000;
        let spans = vec![
            span(1, None, 0, 2000 * ms, "/page"),
            span(2, Some(1), 100 * ms, 300 * ms, "/user"),
            span(3, Some(1), 300 * ms, 1900 * ms, "/recommendations"),
            span(4, Some(3), 400 * ms, 500 * ms, "/catalog"),
        ];
        let names = |pid: u32| ["", "gateway", "users", "recs", "catalog"][pid as usize].to_string();
        let text = render(&spans, &names, false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("4 spans") && lines[0].contains("2000.0 ms"), "{text}");
        // Children are indented under their parent, in start order.
        assert!(lines[2].starts_with("  gateway"));
        assert!(lines[3].starts_with("    users"));
        assert!(lines[4].starts_with("    recs"));
        assert!(lines[5].starts_with("      catalog"));
        // Bars are scaled to the trace: the root fills the whole width.
        assert!(lines[2].contains(&"█".repeat(BAR)));
        // recs: 1600 ms minus 100 ms of child time.
        assert!(lines[6].contains("recs GET /recommendations spends 1500.0 ms"), "{text}");
    }

    #[test]
    fn a_database_call_shows_its_statement() {
        let query = SpanRecord {
            kind: Kind::Client,
            name: "SELECT users".into(),
            attributes: vec![
                ("db.system.name", Value::Str("postgresql".into())),
                ("db.query.text", Value::Str("SELECT name FROM users WHERE id = ?".into())),
            ],
            ..SpanRecord::for_test([9; 16], 1, None)
        };
        assert_eq!(operation(&query), "SQL SELECT name FROM users WHERE id = ?");
        let command = SpanRecord {
            kind: Kind::Client,
            name: "GET".into(),
            attributes: vec![
                ("db.system.name", Value::Str("redis".into())),
                ("db.query.text", Value::Str("GET ?".into())),
            ],
            ..SpanRecord::for_test([9; 16], 2, None)
        };
        assert_eq!(operation(&command), "REDIS GET ?");
        // An execution of a statement prepared before tracing began: no text, its name.
        let unseen = SpanRecord {
            kind: Kind::Client,
            name: "shop".into(),
            attributes: vec![("db.system.name", Value::Str("mariadb".into()))],
            ..SpanRecord::for_test([9; 16], 3, None)
        };
        assert_eq!(operation(&unseen), "SQL shop");
        let get = SpanRecord {
            kind: Kind::Client,
            name: "get".into(),
            attributes: vec![("db.system.name", Value::Str("memcached".into()))],
            ..SpanRecord::for_test([9; 16], 4, None)
        };
        assert_eq!(operation(&get), "MEMCACHED get");
    }
}

#[cfg(test)]
mod requests_table_tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::metadata::ProcessInfo;

    fn measured(kind: Kind, pid: u32, ms: u64, attrs: Vec<(&'static str, Value)>) -> SpanRecord {
        SpanRecord {
            kind,
            pid,
            start_ns: 0,
            end_ns: ms * 1_000_000,
            attributes: attrs,
            ..SpanRecord::for_test([1; 16], 1, None)
        }
    }

    #[test]
    fn the_requests_table_adds_up_each_service_s_requests() {
        let mut m = RequestMetrics::new(100, Duration::from_secs(60));
        let mut names = |pid: u32| {
            Arc::new(ProcessInfo {
                service_name: if pid == 3 { "db-user".into() } else { "gateway".into() },
                attributes: vec![],
                pid,
            })
        };
        let get = |status: i64| {
            let mut a = vec![
                ("http.request.method", Value::Str("GET".into())),
                ("http.response.status_code", Value::Int(status)),
            ];
            if status >= 500 {
                a.push(("error.type", Value::Str("500".into())));
            }
            a
        };
        // Two processes of one service, added up.
        m.record(&measured(Kind::Server, 1, 10, get(200)), &mut names);
        m.record(&measured(Kind::Server, 2, 30, get(200)), &mut names);
        m.record(&measured(Kind::Server, 2, 2000, get(500)), &mut names);
        let sql = vec![
            ("db.system.name", Value::Str("postgresql".into())),
            ("db.operation.name", Value::Str("SELECT".into())),
        ];
        m.record(&measured(Kind::Client, 3, 4, sql), &mut names);
        let text = requests_table(&m);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("requests measured"), "{text}");
        let row = |service: &str, label: &str| {
            lines
                .iter()
                .find(|l| l.trim_start().starts_with(service) && l.contains(label))
                .map(|l| l.split_whitespace().rev().take(6).collect::<Vec<_>>())
                .unwrap_or_else(|| panic!("no {service} {label} in\n{text}"))
        };
        // Columns from the right: MAX, its unit, MEAN, its unit, ERRORS, COUNT.
        assert_eq!(row("gateway", "GET 200"), ["ms", "30.0", "ms", "20.0", "0", "2"]);
        assert_eq!(row("gateway", "GET 500"), ["s", "2.00", "s", "2.00", "1", "1"]);
        assert_eq!(row("db-user", "SQL SELECT"), ["ms", "4.0", "ms", "4.0", "0", "1"]);
        assert_eq!(requests_table(&RequestMetrics::new(1, Duration::from_secs(1))), "");
    }
}
