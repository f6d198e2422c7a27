//! Golden tests: recorded event streams (`agent/testdata/{http1,http2,memcached,mysql,postgres,redis}/*.events`) → expected spans
//! (`*.spans`). Run with `UPDATE_GOLDEN=1` to rewrite the expected files after a deliberate
//! change, then review the diff.
//!
//! The event format, one per line (`#` starts a comment):
//! - `open server|client PID FD LOCAL REMOTE`
//! - `in|out PID FD t=NS [tid=N] [len=N] [ctx=FD] "payload with \r\n escapes"`
//!   (`len` larger than the payload means the rest was not captured; `ctx` is the server fd the
//!   thread was serving)
//! - `close PID FD t=NS` and `exit PID`
use std::{collections::HashMap, fmt::Write as _, fs, path::PathBuf};

use tracewire_common::{
    CTX_AMBIGUOUS, CTX_GOROUTINE, CTX_HEADER, CTX_ROOT, CTX_TCP, CTX_THREAD, CTX_UPSTREAM, ConnEvent, ConnId,
    DIR_EGRESS, DIR_INGRESS, DataEvent, EventHeader, EventKind, ProcEvent, ROLE_CLIENT, ROLE_SERVER,
    SockAddr, Syscall, TraceCtx,
};

use super::{
    Correlator, IpText,
    span::{Kind, Link, SpanRecord, Value, hex},
};
use crate::{
    events::{Event, clock::Clock, encode_sockaddr},
    export::{
        request_metrics::RequestMetrics,
        waterfall::{graph_table, requests_table},
    },
    metadata::ProcessInfo,
};

fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'0' => out.push(0),
                b'\\' => out.push(b'\\'),
                b'"' => out.push(b'"'),
                b'x' if i + 3 < b.len() => {
                    out.push(u8::from_str_radix(&s[i + 2..i + 4], 16).expect("hex escape"));
                    i += 2;
                }
                other => out.push(other),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Replays a recording through a correlator and returns its spans and the correlator.
pub fn replay(text: &str) -> (Vec<SpanRecord>, Correlator) {
    replay_with(text, super::route::Routes::default())
}

/// [`replay`] with route patterns.
pub fn replay_with(text: &str, routes: super::route::Routes) -> (Vec<SpanRecord>, Correlator) {
    let mut c = Correlator::with_seed(Clock::with_offset(0), 1024, 7).with_routes(routes);
    let mut gens: HashMap<(u32, u32), u64> = HashMap::new();
    let mut next_gen = 1;
    let mut spans = Vec::new();
    for (lineno, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (words, payload) = match line.split_once('"') {
            Some((w, p)) => (w, Some(unescape(p.strip_suffix('"').expect("closing quote")))),
            None => (line, None),
        };
        let w: Vec<&str> = words.split_whitespace().collect();
        let kv =
            |key: &str| w.iter().find_map(|x| x.strip_prefix(key).map(|v| v.parse::<u64>().expect("number")));
        let pid: u32 = w.get(if w[0] == "open" { 2 } else { 1 }).and_then(|p| p.parse().ok()).unwrap_or(0);
        let header = |kind: EventKind, ts: u64, tid: u32| EventHeader {
            kind: kind as u32,
            cpu: 0,
            ts_ns: ts,
            pid_tgid: (u64::from(pid) << 32) | u64::from(tid),
        };
        match w[0] {
            "open" => {
                let fd: u32 = w[3].parse().unwrap();
                let role = if w[1] == "server" { ROLE_SERVER } else { ROLE_CLIENT };
                let generation = next_gen;
                next_gen += 1;
                gens.insert((pid, fd), generation);
                c.on_event(&Event::Conn(ConnEvent {
                    header: header(EventKind::ConnOpen, 0, pid),
                    conn: ConnId { tgid: pid, fd, generation },
                    role,
                    flags: 0,
                    _pad: [0; 2],
                    listener_fd: 0,
                    local: encode_sockaddr(&w[4].parse().unwrap()),
                    remote: encode_sockaddr(&w[5].parse().unwrap()),
                }));
            }
            "in" | "out" => {
                let fd: u32 = w[2].parse().unwrap();
                let payload = payload.unwrap_or_default();
                let ts = kv("t=").unwrap_or_else(|| panic!("line {}: t= missing", lineno + 1));
                let tid = kv("tid=").map_or(pid, |t| t as u32);
                let len = kv("len=").map_or(payload.len() as u32, |l| l as u32);
                let thread_ctx = kv("ctx=").map_or(ConnId::default(), |f| ConnId {
                    tgid: pid,
                    fd: f as u32,
                    generation: gens[&(pid, f as u32)],
                });
                let kctx =
                    w.iter().find_map(|x| x.strip_prefix("k=")).map_or(TraceCtx::default(), kernel_ctx);
                let ev = DataEvent {
                    header: header(EventKind::Data, ts, tid),
                    conn: ConnId { tgid: pid, fd, generation: *gens.get(&(pid, fd)).unwrap_or(&0) },
                    enter_ns: ts,
                    thread_ctx,
                    len,
                    captured: payload.len() as u32,
                    direction: if w[0] == "in" { DIR_INGRESS } else { DIR_EGRESS },
                    syscall: Syscall::Read as u8,
                    flags: kv("flags=").map_or(0, |f| f as u16),
                    role: 0,
                    _pad: 0,
                    _pad2: 0,
                    ctx: kctx,
                };
                c.on_event(&Event::Data(ev, &payload));
            }
            "close" => {
                let fd: u32 = w[2].parse().unwrap();
                let ts = kv("t=").unwrap_or(0);
                c.on_event(&Event::Conn(ConnEvent {
                    header: header(EventKind::ConnClose, ts, pid),
                    conn: ConnId { tgid: pid, fd, generation: *gens.get(&(pid, fd)).unwrap_or(&0) },
                    role: 0,
                    flags: 0,
                    _pad: [0; 2],
                    listener_fd: 0,
                    local: SockAddr::default(),
                    remote: SockAddr::default(),
                }));
            }
            "exit" => c.on_event(&Event::Proc(ProcEvent {
                header: header(EventKind::Exit, 0, pid),
                pid,
                ppid: 0,
                comm: [0; 16],
            })),
            other => panic!("line {}: unknown record {other:?}", lineno + 1),
        }
        spans.extend(c.take_spans());
    }
    (spans, c)
}

/// A kernel trace context written `origin:trace:span[:parent[:flags]]` (ids in hex; origin one of
/// root, header, tcp, thread, ambiguous, goroutine, upstream).
fn kernel_ctx(spec: &str) -> TraceCtx {
    let f: Vec<&str> = spec.split(':').collect();
    let bytes = |s: &str| -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    };
    let mut k = TraceCtx {
        origin: match f[0] {
            "root" => CTX_ROOT,
            "header" => CTX_HEADER,
            "tcp" => CTX_TCP,
            "thread" => CTX_THREAD,
            "ambiguous" => CTX_AMBIGUOUS,
            "goroutine" => CTX_GOROUTINE,
            "upstream" => CTX_UPSTREAM,
            other => panic!("kernel context origin {other:?}"),
        },
        ..TraceCtx::default()
    };
    k.trace_id.copy_from_slice(&bytes(f[1]));
    k.span_id.copy_from_slice(&bytes(f[2]));
    if let Some(p) = f.get(3) {
        k.parent_id.copy_from_slice(&bytes(p));
    }
    k.trace_flags = f.get(4).map_or(1, |x| u8::from_str_radix(x, 16).expect("hex flags"));
    k
}

/// Renders spans with stable labels instead of random ids.
pub fn render(spans: &[SpanRecord]) -> String {
    let mut traces: HashMap<[u8; 16], usize> = HashMap::new();
    let mut ids: HashMap<[u8; 8], usize> = HashMap::new();
    for s in spans {
        let n = traces.len() + 1;
        traces.entry(s.trace_id).or_insert(n);
        let n = ids.len() + 1;
        ids.entry(s.span_id).or_insert(n);
    }
    let mut out = String::new();
    for s in spans {
        let kind = match s.kind {
            Kind::Server => "SERVER",
            Kind::Client => "CLIENT",
        };
        let parent = match s.parent_id {
            None => "-".to_string(),
            Some(p) => match (ids.get(&p), s.parent_remote) {
                (Some(n), false) => format!("s{n}"),
                (Some(n), true) => format!("s{n}(other process)"),
                (None, true) => format!("remote:{}", hex(&p)),
                (None, false) => format!("ext:{}", hex(&p)),
            },
        };
        let trace = if spans.iter().any(|o| o.trace_id == s.trace_id && o.parent_remote) {
            format!("t{} ({})", traces[&s.trace_id], hex(&s.trace_id))
        } else {
            format!("t{}", traces[&s.trace_id])
        };
        let link = match s.link {
            Link::None => "",
            Link::Thread => " link=thread",
            Link::Goroutine => " link=goroutine",
            Link::Upstream => " link=upstream",
            Link::Unlinked => " link=unlinked",
        };
        let links = if s.links.is_empty() {
            String::new()
        } else {
            let l: Vec<String> = s
                .links
                .iter()
                .map(|(_, id)| ids.get(id).map_or_else(|| format!("ext:{}", hex(id)), |n| format!("s{n}")))
                .collect();
            format!(" links=[{}]", l.join(","))
        };
        let _ = writeln!(
            out,
            "{kind} {:?} s{} parent={parent} trace={trace} pid={} tid={} start={} end={} error={}{link}{links}",
            s.name, ids[&s.span_id], s.pid, s.tid, s.start_ns, s.end_ns, s.error
        );
        for (k, v) in &s.attributes {
            let v = match v {
                Value::Str(s) => format!("{s:?}"),
                Value::Int(i) => i.to_string(),
            };
            let _ = writeln!(out, "    {k}={v}");
        }
    }
    out
}

#[test]
fn golden_recordings() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut entries: Vec<PathBuf> = ["http1", "http2", "memcached", "mysql", "postgres", "redis"]
        .iter()
        .flat_map(|d| fs::read_dir(root.join(d)).unwrap_or_else(|e| panic!("testdata/{d}: {e}")))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "events"))
        .collect();
    entries.sort();
    assert!(entries.len() >= 13, "golden recordings missing");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for events in entries {
        let text = fs::read_to_string(&events)?;
        let (spans, mut c) = replay(&text);
        // Server connections keep their in-flight list between requests: the table holds
        // only connections that are open, and none once every connection has ended.
        let open = |c: &Correlator| {
            c.shared.serving.keys().all(|id| c.conns.get(&(id.tgid, id.fd)).is_some_and(|k| k.info.id == *id))
        };
        assert!(open(&c), "{}: in-flight lists of closed connections", events.display());
        let mut actual = render(&spans);
        let stats = c.stats();
        let _ = writeln!(
            actual,
            "# stats: spans={} invalid={:?} non_http_conns={} muted_conns={} unpaired_responses={} tunnels={} traceparent_valid={} traceparent_invalid={} linked_thread={} linked_goroutine={} linked_upstream={} unlinked={} no_response={} paired_same_node={} linked_tcp={} kernel_ctx_differs={}",
            stats.spans,
            stats.invalid,
            stats.non_http_conns,
            stats.muted_conns,
            stats.unpaired_responses,
            stats.tunnels,
            stats.traceparent_valid,
            stats.traceparent_invalid,
            stats.linked_thread,
            stats.linked_goroutine,
            stats.linked_upstream,
            stats.unlinked,
            stats.no_response,
            stats.paired_same_node,
            stats.linked_tcp,
            stats.kernel_ctx_differs
        );
        if stats.pg.conns != 0 {
            let _ = writeln!(actual, "# postgres: {:?}", stats.pg);
        }
        if stats.mysql.conns != 0 {
            let _ = writeln!(actual, "# mysql: {:?}", stats.mysql);
        }
        if stats.redis.conns != 0 {
            let _ = writeln!(actual, "# redis: {:?}", stats.redis);
        }
        if stats.memcached.conns != 0 {
            let _ = writeln!(actual, "# memcached: {:?}", stats.memcached);
        }
        if stats.h2.conns != 0 {
            let _ = writeln!(actual, "# h2: {:?}", stats.h2);
        }
        if stats.tls_conns != 0 {
            let _ = writeln!(actual, "# tls: conns={}", stats.tls_conns);
        }
        // The request metrics of these spans, as the terminal shows them at exit.
        let mut metrics = RequestMetrics::new(4096, std::time::Duration::from_secs(60));
        for s in &spans {
            metrics.record(s, &mut |pid| {
                std::sync::Arc::new(ProcessInfo {
                    service_name: format!("pid-{pid}"),
                    attributes: vec![],
                    pid,
                })
            });
        }
        metrics.flush_graph();
        for line in requests_table(&metrics).lines().chain(graph_table(metrics.graph()).lines()) {
            let _ = writeln!(actual, "# {line}");
        }
        c.close_all();
        assert!(c.shared.serving.is_empty(), "{}: in-flight lists after every close", events.display());
        let expected_path = events.with_extension("spans");
        if update {
            fs::write(&expected_path, &actual)?;
            continue;
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            fs::write(events.with_extension("actual"), &actual)?;
            failures.push(events.display().to_string());
        }
    }
    assert!(failures.is_empty(), "golden mismatch (see *.actual next to): {failures:?}");
    Ok(())
}

#[test]
fn random_bytes_never_panic_and_make_no_spans() {
    let mut rng = fastrand::Rng::with_seed(42);
    let mut c = Correlator::new(Clock::with_offset(0), 16);
    let local = encode_sockaddr(&"127.0.0.1:80".parse().unwrap());
    c.on_event(&Event::Conn(ConnEvent {
        header: EventHeader { kind: EventKind::ConnOpen as u32, cpu: 0, ts_ns: 0, pid_tgid: 1 << 32 },
        conn: ConnId { tgid: 1, fd: 3, generation: 1 },
        role: ROLE_SERVER,
        flags: 0,
        _pad: [0; 2],
        listener_fd: 0,
        local,
        remote: local,
    }));
    for i in 0..5_000u64 {
        let len = rng.usize(0..300);
        let payload: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        let ev = DataEvent {
            header: EventHeader { kind: EventKind::Data as u32, cpu: 0, ts_ns: i, pid_tgid: 1 << 32 },
            conn: ConnId { tgid: 1, fd: 3, generation: 1 },
            enter_ns: i,
            thread_ctx: ConnId::default(),
            len: len as u32 + rng.u32(0..3) * 1000,
            captured: len as u32,
            direction: if rng.bool() { DIR_INGRESS } else { DIR_EGRESS },
            syscall: 1,
            flags: 0,
            role: ROLE_SERVER,
            _pad: 0,
            _pad2: 0,
            ctx: TraceCtx::default(),
        };
        c.on_event(&Event::Data(ev, &payload));
    }
    assert!(c.take_spans().is_empty());
    assert!(c.stats().non_http_conns <= 1);
    // A server connection given up on is muted, once.
    let muted = c.take_mutes();
    assert_eq!(muted.len() as u64, c.stats().non_http_conns, "{muted:?}");
    assert_eq!(c.stats().muted_conns, c.stats().non_http_conns);
}

#[test]
fn only_connections_no_protocol_is_read_on_are_muted_and_each_once() {
    let mut c = Correlator::new(Clock::with_offset(0), 16);
    let (http, binary, redis) = (open_client(&mut c, 3), open_client(&mut c, 4), open_client(&mut c, 5));
    let mut ts = 1;
    for _ in 0..100 {
        ts += 10;
        client_data(&mut c, http, ts, false, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27);
        client_data(&mut c, http, ts + 1, true, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 38);
        client_data(&mut c, redis, ts + 2, false, b"*1\r\n$4\r\nPING\r\n", 14);
        client_data(&mut c, redis, ts + 3, true, b"+PONG\r\n", 7);
    }
    assert_eq!(c.take_mutes(), vec![], "HTTP and Redis are read");
    // A client's binary protocol: given a few more events to show a database protocol.
    let frame = [0xfe_u8; 64];
    let mut muted_at = None;
    for i in 0..100u64 {
        client_data(&mut c, binary, ts + 10 + i, i % 2 == 1, &frame, 64);
        let m = c.take_mutes();
        if !m.is_empty() {
            assert_eq!((m, muted_at), (vec![binary], None), "muted once");
            muted_at = Some(i);
        }
    }
    let at = muted_at.expect("muted");
    assert!((30..40).contains(&at), "muted at event {at}");
    assert_eq!((c.stats().non_http_conns, c.stats().muted_conns), (1, 1));
    assert_eq!(c.take_spans().len(), 200, "the HTTP and Redis exchanges");
}

#[test]
fn routes_name_spans_and_set_http_route_only_when_configured() -> std::io::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/http1");
    let text = fs::read_to_string(dir.join("01_basic_get.events"))?;
    let (spans, _) = replay_with(&text, super::route::Routes::new(&["/users/{id}".into()], false));
    assert_eq!(spans[0].name, "GET /users/{id}");
    assert_eq!(spans[0].attr("http.route"), Some(&Value::Str("/users/{id}".into())));
    let (spans, _) = replay_with(&text, super::route::Routes::new(&[], true));
    assert_eq!(spans[0].name, "GET /users/*");
    assert_eq!(spans[0].attr("http.route"), None, "a guessed route is never http.route");
    let (spans, _) = replay(&text);
    assert_eq!(spans[0].name, "GET");
    Ok(())
}

#[test]
fn after_a_lost_event_no_request_takes_another_ones_response() {
    let (spans, c) = replay(concat!(
        "open server 100 5 10.0.0.1:80 10.0.0.2:5000\n",
        "in 100 5 t=1000 \"GET /a HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n\"\n",
        "# /a's response was lost to a full ring: the next event says an event was lost\n",
        "in 100 5 t=3000 flags=32 \"GET /b HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n\"\n",
        "out 100 5 t=4000 \"HTTP/1.1 404 Not Found\\r\\nContent-Length: 0\\r\\n\\r\\n\"\n",
        "# a request lost: the response that follows has no request\n",
        "out 100 5 t=6000 flags=32 \"HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n\"\n",
        "in 100 5 t=7000 \"GET /c HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n\"\n",
        "out 100 5 t=8000 \"HTTP/1.1 201 Created\\r\\nContent-Length: 0\\r\\n\\r\\n\"\n",
    ));
    let got: Vec<(String, Option<i64>)> = spans
        .iter()
        .map(|s| {
            let path = match s.attr("url.path") {
                Some(Value::Str(p)) => p.to_string(),
                _ => String::new(),
            };
            let status = match s.attr("http.response.status_code") {
                Some(Value::Int(n)) => Some(*n),
                _ => None,
            };
            (path, status)
        })
        .collect();
    assert_eq!(got, vec![("/b".to_string(), Some(404)), ("/c".to_string(), Some(201))]);
    assert_eq!(c.stats().lost_gap, 1, "/a, abandoned");
    assert_eq!(c.stats().unpaired_responses, 1, "the response of the lost request");
}

#[test]
fn kernel_minted_span_ids_are_the_exported_ones() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/http1");
    let (spans, _) = replay(&fs::read_to_string(dir.join("21_kernel_context.events")).unwrap());
    let by_path = |pid: u32, kind: Kind| {
        spans.iter().filter(move |s| s.pid == pid && s.kind == kind).map(|s| s.span_id).collect::<Vec<_>>()
    };
    // The peer's agent holds these ids: the server span's parent came from it, and the client
    // span id went out in the option.
    assert_eq!(by_path(100, Kind::Server), vec![[0x11; 8]]);
    assert_eq!(by_path(100, Kind::Client), vec![[0x22; 8]]);
    // Pipelining: the turn's id goes to the first request only.
    let pipelined = by_path(400, Kind::Server);
    assert_eq!(pipelined.len(), 2);
    assert_eq!(pipelined.iter().filter(|id| **id == [0x88; 8]).count(), 1);
}

#[test]
fn host_values_split_into_address_and_port() {
    let split = |h: &str| super::host_port(h.to_string(), 80);
    assert_eq!(split("a.example:8080"), ("a.example".to_string(), 8080));
    assert_eq!(split("a.example"), ("a.example".to_string(), 80));
    assert_eq!(split("a.example:"), ("a.example".to_string(), 80));
    assert_eq!(split("a.example:x1"), ("a.example".to_string(), 80));
    assert_eq!(split("[::1]:9000"), ("::1".to_string(), 9000));
    assert_eq!(split("[::1]"), ("::1".to_string(), 80));
    // An IPv6 address without brackets has no port to split off.
    assert_eq!(split("::1"), ("::1".to_string(), 80));
    assert_eq!(split("fe80::1:443"), ("fe80::1:443".to_string(), 80));
    assert_eq!(split("café.example:81"), ("café.example".to_string(), 81));
}

#[test]
fn peer_address_text_is_shared_and_bounded() {
    let mut text = IpText::default();
    let a: std::net::IpAddr = [10, 0, 0, 7].into();
    let b: std::net::IpAddr = "fd00::1:2".parse().expect("an IPv6 literal");
    let first = text.of(a);
    assert_eq!(&*first, "10.0.0.7");
    // The same peer again: the same text, not formatted anew.
    assert!(std::sync::Arc::ptr_eq(&first, &text.of(a)));
    assert_eq!(&*text.of(b), "fd00::1:2");
    // Many more peers than slots: the table does not grow, and every text stays right.
    for i in 0..4 * IpText::SLOTS as u32 {
        let ip: std::net::IpAddr = std::net::Ipv4Addr::from_bits(0x0a00_0000 | i).into();
        assert_eq!(*text.of(ip), *ip.to_string());
    }
    assert_eq!(text.slots.len(), IpText::SLOTS);
    assert_eq!(&*text.of(a), "10.0.0.7");
}

/// Opens client connection `fd` of process 1 to 127.0.0.1:5432.
fn open_client(c: &mut Correlator, fd: u32) -> ConnId {
    let addr = encode_sockaddr(&"127.0.0.1:5432".parse().unwrap());
    let conn = ConnId { tgid: 1, fd, generation: 1 };
    c.on_event(&Event::Conn(ConnEvent {
        header: EventHeader { kind: EventKind::ConnOpen as u32, cpu: 0, ts_ns: 0, pid_tgid: 1 << 32 },
        conn,
        role: ROLE_CLIENT,
        flags: 0,
        _pad: [0; 2],
        listener_fd: 0,
        local: addr,
        remote: addr,
    }));
    conn
}

/// `payload` captured of a `len`-byte read (`ingress`) or write on client connection `conn`.
fn client_data(c: &mut Correlator, conn: ConnId, ts: u64, ingress: bool, payload: &[u8], len: u32) {
    let ev = DataEvent {
        header: EventHeader { kind: EventKind::Data as u32, cpu: 0, ts_ns: ts, pid_tgid: 1 << 32 },
        conn,
        enter_ns: ts,
        thread_ctx: ConnId::default(),
        len,
        captured: payload.len() as u32,
        direction: if ingress { DIR_INGRESS } else { DIR_EGRESS },
        syscall: 1,
        flags: 0,
        role: ROLE_CLIENT,
        _pad: 0,
        _pad2: 0,
        ctx: TraceCtx::default(),
    };
    c.on_event(&Event::Data(ev, payload));
}

/// Feeds one client connection 20,000 random reads and writes (`message(rng, ingress)` makes
/// each one's bytes; they are then cut short and given uncaptured gaps at random), after a first
/// write `opening` (which shows the protocol). Never a panic, never more operations waiting
/// than `bound`, and every one of them ends when the connection does. Returns the correlator and
/// the spans made.
fn random_client_traffic(
    seed: u64,
    opening: &[u8],
    mut message: impl FnMut(&mut fastrand::Rng, bool, &mut Vec<u8>),
    bound: usize,
) -> (Correlator, usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut c = Correlator::new(Clock::with_offset(0), 16);
    let conn = open_client(&mut c, 3);
    client_data(&mut c, conn, 1, false, opening, opening.len() as u32);
    let mut spans = c.take_spans().len();
    let waiting_now =
        |c: &Correlator| c.conns.get(&(1, 3)).and_then(|k| k.db.as_ref()).map_or(0, |db| db.waiting());
    for i in 2..20_000u64 {
        let ingress = rng.bool();
        let mut payload = Vec::new();
        for _ in 0..rng.usize(1..4) {
            message(&mut rng, ingress, &mut payload);
            // Now and then bytes of no protocol.
            if rng.u8(..) < 8 {
                payload.extend((0..rng.usize(1..8)).map(|_| rng.u8(..)));
            }
        }
        let total = payload.len() as u32 + if rng.u8(..) < 30 { rng.u32(0..200) } else { 0 };
        payload.truncate(rng.usize(payload.len() / 2..=payload.len()));
        client_data(&mut c, conn, i, ingress, &payload, total.max(payload.len() as u32));
        spans += c.take_spans().len();
        let waiting = waiting_now(&c);
        assert!(waiting <= bound, "{waiting} operations waiting");
    }
    let waiting = waiting_now(&c);
    c.close_all();
    let at_close = c.take_spans().len();
    assert_eq!(at_close, waiting, "every waiting operation ends at the close");
    (c, spans + at_close)
}

/// PostgreSQL messages of every type with random contents and lengths, some of which lie.
#[test]
fn random_postgres_traffic_never_panics_and_every_statement_ends() {
    let (c, spans) = random_client_traffic(
        7,
        b"Q\0\0\0\x0dSELECT 1\0",
        |rng, ingress, out| {
            let kinds: &[u8] = if ingress { b"CEZIsDT12nR" } else { b"QPBESCXd" };
            out.push(kinds[rng.usize(..kinds.len())]);
            let body: Vec<u8> = (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect();
            let len = if rng.u8(..) < 8 { rng.u32(..) } else { body.len() as u32 + 4 };
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&body);
        },
        super::postgres::MAX_OPS,
    );
    assert!(spans > 1000, "the statements that completed made spans ({spans}): {:?}", c.stats().pg);
    assert_eq!(c.stats().pg.conns, 1);
}

/// Redis commands, and replies of every RESP type with random contents.
#[test]
fn random_redis_traffic_never_panics_and_every_operation_ends() {
    let (c, spans) = random_client_traffic(
        11,
        b"*1\r\n$4\r\nPING\r\n",
        |rng, ingress, out| {
            if !ingress {
                let n = rng.usize(1..4);
                out.extend(format!("*{n}\r\n$3\r\nGET\r\n").as_bytes());
                for _ in 1..n {
                    out.extend(b"$2\r\nk1\r\n");
                }
                return;
            }
            let kinds: &[u8] = b"+-:$*_,#(!=%~>|";
            let kind = kinds[rng.usize(..kinds.len())];
            out.push(kind);
            match kind {
                b'$' | b'!' | b'=' => {
                    let body: Vec<u8> = (0..rng.usize(0..20)).map(|_| rng.u8(..)).collect();
                    out.extend(format!("{}\r\n", body.len()).as_bytes());
                    out.extend(&body);
                    out.extend(b"\r\n");
                }
                b'*' | b'%' | b'~' | b'>' | b'|' => {
                    out.extend(format!("{}\r\n:1\r\n", rng.u8(..4)).as_bytes())
                }
                _ => out.extend(b"ERR x\r\n"),
            }
        },
        super::redis::MAX_OPS,
    );
    let r = c.stats().redis;
    assert!(spans > 1000, "the operations that completed made spans ({spans}): {r:?}");
    assert_eq!(r.conns, 1);
    assert!(r.unframed > 0 && r.unpaired > 0, "the random bytes lost the framing at times: {r:?}");
}

/// Memcached commands (classic, noreply, quiet meta, storage with blocks), and response lines of
/// every kind with values whose declared sizes sometimes lie.
#[test]
fn random_memcached_traffic_never_panics_and_every_operation_ends() {
    let (c, spans) = random_client_traffic(
        17,
        b"version\r\n",
        |rng, ingress, out| {
            if ingress {
                let lines: &[&[u8]] = &[
                    b"END\r\n",
                    b"STORED\r\n",
                    b"NOT_FOUND\r\n",
                    b"42\r\n",
                    b"HD\r\n",
                    b"EN\r\n",
                    b"MN\r\n",
                    b"STAT pid 1\r\n",
                    b"SERVER_ERROR out of memory\r\n",
                    b"CLIENT_ERROR bad\r\n",
                ];
                if rng.u8(..) < 80 {
                    let size = rng.usize(0..30);
                    let told = if rng.u8(..) < 8 { rng.usize(..1000) } else { size };
                    let head = if rng.bool() { format!("VALUE k 0 {told}") } else { format!("VA {told} t") };
                    out.extend(head.as_bytes());
                    out.extend(b"\r\n");
                    out.extend((0..size).map(|_| rng.u8(..)));
                    out.extend(b"\r\n");
                } else {
                    out.extend(lines[rng.usize(..lines.len())]);
                }
                return;
            }
            let commands: &[&[u8]] = &[
                b"get a\r\n",
                b"get a b c\r\n",
                b"set k 0 0 3\r\nabc\r\n",
                b"set k 0 0 3 noreply\r\nabc\r\n",
                b"incr n 1\r\n",
                b"delete k noreply\r\n",
                b"stats\r\n",
                b"mg k v q\r\nmg j v q\r\nmn\r\n",
                b"ms k 2 q\r\nhi\r\nmn\r\n",
                b"mg k v\r\n",
            ];
            out.extend(commands[rng.usize(..commands.len())]);
        },
        super::memcached::MAX_OPS,
    );
    let m = c.stats().memcached;
    assert!(spans > 1000, "the operations that completed made spans ({spans}): {m:?}");
    assert_eq!((m.conns, m.rejected), (1, 0), "{m:?}");
    assert!(m.unframed > 0 && m.unpaired > 0, "the random bytes lost the framing at times: {m:?}");
}

/// MySQL commands, and response packets of every kind (OK, ERR, EOF, column counts, rows) with
/// random contents and sequence numbers, some of whose lengths lie.
#[test]
fn random_mysql_traffic_never_panics_and_every_statement_ends() {
    let (c, spans) = random_client_traffic(
        13,
        b"\x09\0\0\0\x03SELECT 1",
        |rng, ingress, out| {
            let body: Vec<u8> = if ingress {
                let first: &[u8] = &[0x00, 0xff, 0xfe, 0x01, 0x02, 0x03, 0xfb];
                let mut b = vec![first[rng.usize(..first.len())]];
                b.extend((0..rng.usize(0..12)).map(|_| rng.u8(..)));
                b
            } else {
                let commands: &[&[u8]] = &[
                    b"\x03SELECT a FROM t",
                    b"\x16SELECT ?",
                    b"\x17\x01\0\0\0\0\x01\0\0\0",
                    b"\x0e",
                    b"\x19\x01\0\0\0",
                    b"\x02db",
                ];
                commands[rng.usize(..commands.len())].to_vec()
            };
            let len = if rng.u8(..) < 8 { rng.u32(..1 << 24) } else { body.len() as u32 };
            out.extend_from_slice(&len.to_le_bytes()[..3]);
            out.push(if ingress { rng.u8(1..6) } else { 0 });
            out.extend_from_slice(&body);
        },
        1,
    );
    let m = c.stats().mysql;
    assert!(spans > 1000, "the statements that completed made spans ({spans}): {m:?}");
    assert_eq!(m.conns, 1);
    assert!(m.unframed > 0, "the random bytes lost the framing at times: {m:?}");
}

/// A pipeline of a thousand commands in one write is one batch span, named by its commands
/// whatever the bound on its text.
#[test]
fn a_long_redis_pipeline_is_one_batch_named_by_all_its_commands() {
    let mut c = Correlator::new(Clock::with_offset(0), 16);
    let conn = open_client(&mut c, 3);
    let write: Vec<u8> =
        (0..1000).flat_map(|i| format!("*2\r\n$3\r\nGET\r\n$5\r\nk{i:04}\r\n").into_bytes()).collect();
    client_data(&mut c, conn, 1, false, &write, write.len() as u32);
    let replies = b"$1\r\nv\r\n".repeat(1000);
    client_data(&mut c, conn, 2, true, &replies, replies.len() as u32);
    let spans = c.take_spans();
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.name.to_string(), "BATCH GET");
    assert!(matches!(s.attr("db.operation.batch.size"), Some(Value::Int(1000))));
    let Some(Value::Str(text)) = s.attr("db.query.text") else { panic!("no text") };
    assert!(text.len() <= crate::protocol::sql::MAX_TEXT + 16 && text.starts_with("GET ?; GET ?"), "{text}");
}

/// Prepared statements are remembered up to a bound per connection and over all of them;
/// those beyond are counted, and a closed connection gives its share back.
#[test]
fn prepared_statements_are_bounded_per_connection_and_in_all() {
    let mut c = Correlator::new(Clock::with_offset(0), 64);
    let conns = 20u32;
    for fd in 0..conns {
        let conn = open_client(&mut c, fd);
        for i in 0..300 {
            let body = format!("s{i}\0SELECT {i}\0\0\0");
            let mut msg = vec![b'P'];
            msg.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            msg.extend_from_slice(body.as_bytes());
            msg.extend_from_slice(b"S\0\0\0\x04");
            client_data(&mut c, conn, i, false, &msg, msg.len() as u32);
        }
    }
    let pg = c.stats().pg;
    assert_eq!(pg.conns, u64::from(conns));
    assert_eq!(pg.statements as usize, super::postgres::MAX_STATEMENTS_TOTAL);
    assert_eq!(pg.statements + pg.statements_full, u64::from(conns) * 300);
    c.close_all();
    assert_eq!(c.stats().pg.statements, 0);
}

/// A payload in the golden format's quoted form.
fn escape(payload: &[u8]) -> String {
    let mut s = String::with_capacity(payload.len());
    for &b in payload {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    s
}

/// A recording (`tracewire capture --record FILE`) in the golden event format, its times counted
/// from 1000 ns: how a capture of real traffic becomes a golden file.
fn recording_as_events(records: &[Vec<u8>]) -> String {
    let mut out = String::new();
    let mut first = None;
    let mut t = |ts: u64| 1000 + ts.saturating_sub(*first.get_or_insert(ts));
    let addr = |a: &SockAddr| {
        crate::events::socket_addr(a).map_or_else(|| "0.0.0.0:0".to_string(), |s| s.to_string())
    };
    for rec in records {
        let Ok(ev) = crate::events::decode::decode(rec) else { continue };
        match ev {
            Event::Conn(c) => match EventKind::try_from(c.header.kind) {
                Ok(EventKind::ConnOpen) if c.role == ROLE_SERVER || c.role == ROLE_CLIENT => {
                    let role = if c.role == ROLE_SERVER { "server" } else { "client" };
                    let (pid, fd) = (c.conn.tgid, c.conn.fd);
                    let _ = writeln!(out, "open {role} {pid} {fd} {} {}", addr(&c.local), addr(&c.remote));
                }
                Ok(EventKind::ConnClose) => {
                    let _ = writeln!(out, "close {} {} t={}", c.conn.tgid, c.conn.fd, t(c.header.ts_ns));
                }
                _ => {}
            },
            Event::Data(d, payload) => {
                let dir = if d.direction == DIR_INGRESS { "in" } else { "out" };
                let pid = d.conn.tgid;
                let mut line = format!(
                    "{dir} {pid} {} t={} tid={}",
                    d.conn.fd,
                    t(d.header.ts_ns),
                    d.header.pid_tgid as u32
                );
                if d.len as usize != payload.len() {
                    let _ = write!(line, " len={}", d.len);
                }
                if d.thread_ctx.generation != 0 && d.thread_ctx.tgid == pid {
                    let _ = write!(line, " ctx={}", d.thread_ctx.fd);
                }
                let k = d.ctx;
                let origin = match k.origin {
                    CTX_ROOT => Some("root"),
                    CTX_HEADER => Some("header"),
                    CTX_TCP => Some("tcp"),
                    CTX_THREAD => Some("thread"),
                    CTX_AMBIGUOUS => Some("ambiguous"),
                    CTX_GOROUTINE => Some("goroutine"),
                    CTX_UPSTREAM => Some("upstream"),
                    _ => None,
                };
                if let Some(o) = origin {
                    let (tr, sp, pa) = (hex(&k.trace_id), hex(&k.span_id), hex(&k.parent_id));
                    let _ = write!(line, " k={o}:{tr}:{sp}:{pa}:{:02x}", k.trace_flags);
                }
                if d.flags != 0 {
                    let _ = write!(line, " flags={}", d.flags);
                }
                let _ = writeln!(out, "{line} \"{}\"", escape(payload));
            }
            Event::Proc(p) => {
                if EventKind::try_from(p.header.kind) == Ok(EventKind::Exit) {
                    let _ = writeln!(out, "exit {}", p.pid);
                }
            }
        }
    }
    out
}

/// `RECORDING=FILE cargo test --lib recording_to_golden_events -- --ignored --nocapture` prints
/// a recording in the golden event format.
#[test]
#[ignore = "a tool: converts the recording named by $RECORDING"]
fn recording_to_golden_events() -> std::io::Result<()> {
    let path = std::env::var_os("RECORDING").map(PathBuf::from).expect("RECORDING=FILE");
    print!("{}", recording_as_events(&crate::events::record::read_all(&path)?));
    Ok(())
}

#[test]
fn a_recording_converted_to_golden_events_replays_to_the_same_spans() {
    // Records as the kernel writes them: an HTTP/1 exchange with a binary byte in its body.
    let conn = ConnId { tgid: 9, fd: 4, generation: 3 };
    let header = |kind: EventKind, ts: u64| EventHeader {
        kind: kind as u32,
        cpu: 0,
        ts_ns: ts,
        pid_tgid: 9 << 32 | 9,
    };
    let open = ConnEvent {
        header: header(EventKind::ConnOpen, 50_000),
        conn,
        role: ROLE_SERVER,
        flags: 0,
        _pad: [0; 2],
        listener_fd: 0,
        local: encode_sockaddr(&"127.0.0.1:80".parse().unwrap()),
        remote: encode_sockaddr(&"127.0.0.1:5000".parse().unwrap()),
    };
    let data = |ts: u64, direction: u8, payload: &[u8]| {
        let ev = DataEvent {
            header: header(EventKind::Data, ts),
            conn,
            enter_ns: ts,
            thread_ctx: ConnId::default(),
            len: payload.len() as u32 + 10,
            captured: payload.len() as u32,
            direction,
            syscall: Syscall::Read as u8,
            flags: 0,
            role: ROLE_SERVER,
            _pad: 0,
            _pad2: 0,
            ctx: kernel_ctx("root:0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331"),
        };
        crate::events::decode::encode::encode(&Event::Data(ev, payload))
    };
    let records = vec![
        crate::events::decode::encode::encode(&Event::Conn(open)),
        data(60_000, DIR_INGRESS, b"POST /x HTTP/1.1\r\nContent-Length: 12\r\n\r\n\"q\"\x00"),
        data(70_000, DIR_EGRESS, b"HTTP/1.1 204 No Content\r\n\r\n"),
    ];
    let text = recording_as_events(&records);
    assert!(text.contains("t=11000") && text.contains("\\\"q\\\"\\x00") && text.contains("len="), "{text}");
    let (spans, _) = replay(&text);
    assert_eq!(spans.len(), 1, "{text}");
    assert_eq!(spans[0].span_id, [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
    assert_eq!((spans[0].start_ns, spans[0].end_ns), (1_000, 11_000));
}

#[test]
fn random_http2_frames_never_panic_and_every_stream_ends_once() {
    // Connections that open with the preface, then carry frames of every type with random
    // flags, streams and payloads (valid header blocks among them), in both directions.
    let mut rng = fastrand::Rng::with_seed(9);
    let local = encode_sockaddr(&"127.0.0.1:50051".parse().unwrap());
    let block =
        [&[0x83, 0x86, 0x44, 0x05, b'/', b'a', b'.', b'B', b'/', 0x5f, 0x10][..], b"application/grpc"]
            .concat();
    let mut total = 0;
    for round in 0..200u32 {
        let mut c = Correlator::new(Clock::with_offset(0), 16);
        let role = if round % 2 == 0 { ROLE_SERVER } else { ROLE_CLIENT };
        let conn = ConnId { tgid: 1, fd: 3, generation: 1 };
        c.on_event(&Event::Conn(ConnEvent {
            header: EventHeader { kind: EventKind::ConnOpen as u32, cpu: 0, ts_ns: 0, pid_tgid: 1 << 32 },
            conn,
            role,
            flags: 0,
            _pad: [0; 2],
            listener_fd: 0,
            local,
            remote: local,
        }));
        let data = |c: &mut Correlator, i: u64, ingress: bool, payload: &[u8], extra: u32| {
            let ev = DataEvent {
                header: EventHeader { kind: EventKind::Data as u32, cpu: 0, ts_ns: i, pid_tgid: 1 << 32 },
                conn,
                enter_ns: i,
                thread_ctx: ConnId::default(),
                len: payload.len() as u32 + extra,
                captured: payload.len() as u32,
                direction: if ingress { DIR_INGRESS } else { DIR_EGRESS },
                syscall: 1,
                flags: 0,
                role,
                _pad: 0,
                _pad2: 0,
                ctx: TraceCtx::default(),
            };
            c.on_event(&Event::Data(ev, payload));
        };
        let client_ingress = role == ROLE_SERVER;
        data(&mut c, 1, client_ingress, crate::protocol::http2::PREFACE, 0);
        for i in 2..200u64 {
            let mut frame = Vec::new();
            // Mostly HEADERS (a valid block), DATA and RST_STREAM; now and then anything.
            let kind = [0, 0, 1, 1, 1, 3, 4, 6, 8][rng.usize(0..9)];
            let garbage = rng.u8(0..40) == 0;
            let kind = if garbage { rng.u8(0..11) } else { kind };
            let payload: Vec<u8> = match kind {
                1 if !garbage => block.clone(),
                3 if !garbage => vec![0, 0, 0, 8],
                _ => (0..rng.usize(0..24)).map(|_| rng.u8(..)).collect(),
            };
            let flags = if garbage { rng.u8(..) & 0x2d } else { 0x4 | (rng.u8(..) & 1) };
            frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            frame.push(kind);
            frame.push(flags);
            frame.extend_from_slice(&rng.u32(0..8).to_be_bytes());
            frame.extend_from_slice(&payload);
            let extra = if rng.u8(0..50) == 0 { rng.u32(1..20) } else { 0 };
            data(&mut c, i, rng.bool(), &frame, extra);
        }
        c.close_all();
        let spans = c.take_spans();
        let mut ids: Vec<[u8; 8]> = spans.iter().map(|s| s.span_id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), spans.len(), "round {round}: a stream ended twice");
        assert!(c.shared.serving.is_empty(), "round {round}");
        let h2 = c.stats().h2;
        assert_eq!(h2.conns, 1, "round {round}");
        assert!(h2.lost <= 1, "round {round}");
        total += spans.len();
    }
    assert!(total >= 50, "the frames opened only {total} streams");
}
