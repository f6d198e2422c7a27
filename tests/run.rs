//! Root integration tests of `tracewire run`: real servers (Python, Node, nginx) driven by curl
//! and wrk, spans received by an in-process OTLP/gRPC receiver and checked exactly.
mod common;
mod receiver;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::*;
use opentelemetry_proto::tonic::trace::v1::Span;
use receiver::{HttpReceiver, Receiver, attr_int, attr_str};
use serde_json::Value;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A server span against what its client observed (`before`..`after`, wall clock) and when the
/// spans were collected. The request is read, and stamped in the reading thread, before its
/// response can leave: the span starts inside the client's window. Its end is stamped when the
/// server's last write returns, and the writer's syscall goes on after loopback has delivered
/// the bytes, so a client may read them and exit first (a vCPU held up by the host is enough):
/// the end is bounded by the collection instead.
fn assert_in_client_window(
    label: &str,
    s: &opentelemetry_proto::tonic::trace::v1::Span,
    before: u64,
    after: u64,
    collected: u64,
) {
    let (start, end) = (s.start_time_unix_nano, s.end_time_unix_nano);
    assert!(
        (before..=after).contains(&start),
        "{label}: span start {start} outside the client's window {before}..{after}"
    );
    assert!(
        start <= end && end <= collected,
        "{label}: span end {end} before its start {start} or after the spans were collected ({collected})"
    );
}

/// Drives `n` curl requests (every third one with a traceparent) at `port` and checks the
/// exported server spans one by one.
fn check_server(server_pid: u32, port: u16, service: &str) {
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(&rx.endpoint(), &["--pid", &server_pid.to_string()]);
    let n = 12;
    let mut windows = Vec::new();
    for i in 0..n {
        // Small bodies, copied with their heads, and 20 KB ones, counted without a copy.
        let path = format!("/bytes/{}", if i % 2 == 0 { 100 + i } else { 20_000 + i });
        let tp = format!("00-{:032x}-{:016x}-01", 0xabc000 + i, 0xdef000 + i);
        let before = now_ns();
        if i % 3 == 0 {
            curl(&format!("http://127.0.0.1:{port}{path}"), &["-H", &format!("traceparent: {tp}")]);
        } else {
            curl(&format!("http://127.0.0.1:{port}{path}?token=secret&page=2"), &[]);
        }
        windows.push((path, before, now_ns(), (i % 3 == 0).then_some(tp)));
    }
    let summary = agent.stop();
    let collected = now_ns();
    let spans = rx.spans();
    assert_eq!(spans.len(), n, "one span per request: {summary}");
    assert_eq!(summary["otlp"]["exported"], n as u64, "{summary}");
    assert_eq!(summary["otlp"]["produced"], n as u64);
    for (path, before, after, tp) in windows {
        let (svc, s) = spans
            .iter()
            .find(|(_, s)| attr_str(s, "url.path").as_deref() == Some(path.as_str()))
            .unwrap_or_else(|| panic!("no span for {path}"));
        assert_eq!(svc, service);
        assert_eq!(s.kind, 2, "SERVER");
        assert_eq!(s.name, "GET");
        assert_eq!(attr_int(s, "http.response.status_code"), Some(200));
        assert_eq!(attr_str(s, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(attr_str(s, "url.scheme").as_deref(), Some("http"));
        assert_eq!(attr_int(s, "server.port"), Some(i64::from(port)));
        assert_eq!(attr_str(s, "network.peer.address").as_deref(), Some("127.0.0.1"));
        assert!(attr_str(s, "user_agent.original").is_some_and(|u| u.starts_with("curl/")));
        assert_eq!(s.status.as_ref().map(|st| st.code), Some(0), "unset status on 200");
        assert_in_client_window(&path, s, before, after, collected);
        match tp {
            Some(tp) => {
                let parts: Vec<&str> = tp.split('-').collect();
                assert_eq!(hex(&s.trace_id), parts[1], "{path}: trace id from traceparent");
                assert_eq!(hex(&s.parent_span_id), parts[2], "{path}: parent from traceparent");
                assert_eq!(s.flags & 0x3ff, 0x301, "{path}: sampled, parent remote");
                assert_eq!(attr_str(s, "url.query"), None);
            }
            None => {
                assert!(s.parent_span_id.is_empty(), "{path}: root span");
                assert_eq!(attr_str(s, "url.query").as_deref(), Some("token=REDACTED&page=2"));
            }
        }
    }
}

#[test]
fn python_server_spans_over_otlp() {
    let _g = serial();
    require_root();
    let (server, port) = python_server("127.0.0.1");
    check_server(server.pid(), port, "http_server");
}

#[test]
fn node_server_spans_over_otlp() {
    let _g = serial();
    require_root();
    let mut server = Peer::spawn(Command::new("node").arg(repo().join("tests/peers/node_server.js")));
    let port: u16 = server.port();
    check_server(server.pid(), port, "node_server");
}

#[test]
fn nginx_under_wrk_every_request_is_a_span_and_nothing_drops() {
    let _g = serial();
    require_root();
    let dir = std::env::temp_dir().join(format!("tracewire-wrk-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let d = dir.display();
    // Every other request is a 4 KiB file, which nginx (without sendfile) writes as head and
    // body in one writev: the kernel copies its head and counts its body. The rest are a 3-byte
    // body, copied with the head. Both kinds share the keep-alive connections.
    let www = dir.join("www");
    fs::create_dir_all(&www).unwrap();
    fs::write(www.join("page.txt"), vec![b'p'; 4096]).unwrap();
    fs::write(dir.join("alternate.lua"), ALTERNATE_LUA).unwrap();
    nginx_conf(
        &dir,
        port,
        true,
        &format!(
            "location / {{ return 200 \"ok\\n\"; }} location /page.txt {{ sendfile off; root {d}/www; }}"
        ),
    );
    let nginx = Peer::spawn(Command::new("nginx").args([
        "-c",
        &dir.join("nginx.conf").display().to_string(),
        "-p",
        &d.to_string(),
    ]));
    wait_listening(port, "nginx");
    let rx = Receiver::start(vec![]);
    // The receiver runs in this test process, on the two cores wrk, nginx and the agent keep
    // busy, and can stall for longer than the default queue (16384 spans, a quarter of a
    // second here) lasts. The queue is made to hold the whole run: this test is about spans
    // being complete and exact; drops at the default sizes are the bench's R6.
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--otlp-queue-spans", "1000000", "--pid", &nginx.pid().to_string()],
    );
    let out = Command::new("wrk")
        .args(["-t", "1", "-c", "8", "-d", "3s", "-s", &dir.join("alternate.lua").display().to_string()])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk");
    let wrk = String::from_utf8_lossy(&out.stdout).to_string();
    // Requests wrk left in flight are answered before the agent stops (a busy machine can
    // delay nginx past the agent's last read of the ring).
    wait_connections_closed(port);
    let summary = agent.stop();
    drop(nginx);
    // The combined log format: `... "GET / HTTP/1.1" 200 3 "-" "wrk"`: status, body bytes sent.
    let log = fs::read_to_string(dir.join("access.log")).unwrap();
    let body_bytes: Vec<u64> = log
        .lines()
        .map(|l| l.split('"').nth(2).and_then(|f| f.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0))
        .collect();
    let pages = log.lines().filter(|l| l.contains("GET /page.txt ")).count();
    let pages_whole =
        log.lines().filter(|l| l.contains("GET /page.txt ") && l.contains(" 200 4096 ")).count();
    let _ = fs::remove_dir_all(&dir);
    let served = body_bytes.len();
    assert!(served >= 2_000, "wrk drove only {served} requests:\n{wrk}");
    // A request still in flight when wrk exits can find its connection reset: nginx logs it
    // (status 200, no body sent) and its write fails, so its span has a request and no response.
    let answered = body_bytes.iter().filter(|b| **b > 0).count();
    assert!(served - answered <= 8, "more unanswered requests than wrk's connections:\n{log}");
    let spans = rx.spans();
    let ok_spans =
        spans.iter().filter(|(_, s)| attr_int(s, "http.response.status_code") == Some(200)).count();
    // Every request nginx logged is exactly one span, and every one it answered has its
    // response; nothing was dropped anywhere.
    assert_eq!(spans.len(), served, "spans vs nginx access log\n{summary}\n{wrk}");
    assert_eq!(ok_spans, answered, "answered spans vs nginx access log\n{summary}\n{wrk}");
    assert_eq!(summary["otlp"]["dropped"], serde_json::json!({}), "{summary}");
    assert_eq!(summary["kernel"]["ring_full"], 0, "{summary}");
    assert_eq!(summary["decode_errors"], serde_json::json!({}), "{summary}");
    assert_eq!(summary["otlp"]["produced"], summary["otlp"]["exported"], "{summary}");
    assert_eq!(summary["http"]["invalid"], serde_json::json!({}), "framing held: {summary}");
    // The file's requests: one span each, with its status, whether or not its body was copied.
    let page_spans: Vec<_> =
        spans.iter().filter(|(_, s)| attr_str(s, "url.path").as_deref() == Some("/page.txt")).collect();
    assert!(pages >= served / 3, "wrk alternated: {pages} of {served}");
    assert_eq!(page_spans.len(), pages, "{summary}");
    let page_ok =
        page_spans.iter().filter(|(_, s)| attr_int(s, "http.response.status_code") == Some(200)).count();
    assert!(page_ok >= pages_whole, "{page_ok} of {pages_whole} whole pages");
    // Each whole page was one write of head and body whose body was counted, not copied.
    let skipped = summary["kernel"]["body_skipped"].as_u64().unwrap_or(0) as usize;
    assert!(
        skipped >= pages_whole && skipped <= pages,
        "body_skipped {skipped}, pages {pages_whole}/{pages}"
    );
}

/// wrk's requests alternate between a page nginx has (200) and one it has not (404).
const FOUND_MISSING_LUA: &str = "n = 0\nrequest = function()\n  n = n + 1\n  \
    return wrk.format(nil, (n % 2 == 0) and \"/missing\" or \"/\")\nend\n";

/// `GET path` on a keep-alive connection to nginx's `return 200 "ok\n"`, read to its body's end.
fn keep_alive_get(conn: &mut std::net::TcpStream, path: &str) {
    use std::io::{Read as _, Write as _};
    write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = conn.read(&mut buf).expect("read");
        assert!(n > 0, "nginx closed the connection after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_full_ring_loses_requests_counted_never_mispairs_and_every_connection_recovers() {
    let _g = serial();
    require_root();
    let dir = std::env::temp_dir().join(format!("tracewire-overload-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    fs::write(dir.join("alternate.lua"), FOUND_MISSING_LUA).unwrap();
    nginx_conf(&dir, port, true, "location / { return 200 \"ok\\n\"; } location /missing { return 404; }");
    let nginx = Peer::spawn(Command::new("nginx").args([
        "-c",
        &dir.join("nginx.conf").display().to_string(),
        "-p",
        &dir.display().to_string(),
    ]));
    wait_listening(port, "nginx");
    let rx = Receiver::start(vec![]);
    // A ring of 8 KiB holds a few dozen events: under wrk it fills whenever the agent is not
    // scheduled for a fraction of a millisecond, and the events of many requests (their request,
    // their response, or both) are lost. The requests made one at a time after fit in it even if
    // the agent read nothing meanwhile.
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--ring-bytes", "8192", "--otlp-queue-spans", "1000000", "--pid", &nginx.pid().to_string()],
    );
    let wrk = |secs: &str| {
        let out = Command::new("wrk")
            .args(["-t", "1", "-c", "8", "-d", secs, "-s", &dir.join("alternate.lua").display().to_string()])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .expect("wrk");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let mut wrk_out = wrk("2s");
    // Then the agent stopped (as a CPU-starved one is), the ring full: connections opened now
    // lose their open event with their first request's. Their second request, once the agent
    // runs again, is traced all the same.
    // SAFETY: signals to our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
    wrk_out += &wrk("1s");
    let mut late: Vec<std::net::TcpStream> = (0..20)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            keep_alive_get(&mut c, &format!("/early/{i}"));
            c
        })
        .collect();
    // SAFETY: as above.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };
    // The agent reads what the ring holds. A request traced end to end says the ring has room
    // again (one made before may still find it full: lost, and counted).
    let mut marker = 0;
    loop {
        let path = format!("/marker/{marker}");
        curl(&format!("http://127.0.0.1:{port}{path}"), &[]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !rx.has_path(&path) && Instant::now() < deadline {
            // Spans reach the receiver in export batches, up to a second apart.
            std::thread::sleep(Duration::from_millis(50));
        }
        if rx.has_path(&path) {
            break;
        }
        marker += 1;
        assert!(marker < 5, "no request traced after the agent resumed");
    }
    for (i, c) in late.iter_mut().enumerate() {
        keep_alive_get(c, &format!("/late/{i}"));
    }
    drop(late);
    wait_connections_closed(port);
    // Then a request at a time: the ring has room again, and each is traced.
    for i in 0..20 {
        let sizes = curl(&format!("http://127.0.0.1:{port}/after/{i}"), &[]);
        assert_eq!(sizes.body, 3, "GET /after/{i}");
    }
    let summary = agent.stop();
    drop(nginx);
    let served = fs::read_to_string(dir.join("access.log")).unwrap().lines().count();
    let _ = fs::remove_dir_all(&dir);
    let lost = summary["kernel"]["ring_full"].as_u64().unwrap_or(0);
    assert!(lost > 0, "the ring never filled:\n{summary}\n{wrk_out}");
    let spans = rx.spans();
    // A lost event loses its request's span, or leaves its request without a response; never
    // does a request take another one's response (the status tells: / is 200, /missing 404).
    let mut mispaired = Vec::new();
    for (_, s) in &spans {
        let path = attr_str(s, "url.path").unwrap_or_default();
        let status = attr_int(s, "http.response.status_code");
        let expected = if path == "/missing" { 404 } else { 200 };
        if status.is_some_and(|st| st != expected) {
            mispaired.push(format!("{path} {status:?}"));
        }
    }
    assert!(
        mispaired.is_empty(),
        "{} of {} spans with another request's response: {:?}\n{summary}",
        mispaired.len(),
        spans.len(),
        &mispaired[..mispaired.len().min(10)]
    );
    // Every span lost is accounted for: at most one per lost event.
    assert!(spans.len() <= served, "{} spans for {served} requests", spans.len());
    assert!(
        served as u64 - spans.len() as u64 <= lost,
        "{} spans for {served} requests, {lost} events lost\n{summary}",
        spans.len()
    );
    assert_eq!(summary["otlp"]["produced"], summary["otlp"]["exported"], "{summary}");
    // The requests after the overload are all there, on new connections and on those opened
    // during it.
    for path in (0..20).flat_map(|i| [format!("/after/{i}"), format!("/late/{i}")]) {
        let n =
            spans.iter().filter(|(_, s)| attr_str(s, "url.path").as_deref() == Some(path.as_str())).count();
        assert_eq!(n, 1, "{path}: {n} spans\n{summary}");
    }
}

/// A wrk script: requests alternate between `/` and `/page.txt`.
const ALTERNATE_LUA: &str = "n = 0\nrequest = function()\n  n = n + 1\n  \
    return wrk.format(nil, (n % 2 == 0) and \"/page.txt\" or \"/\")\nend\n";

#[test]
fn spans_over_otlp_http_protobuf() {
    let _g = serial();
    require_root();
    let (server, port) = python_server("127.0.0.1");
    let rx = HttpReceiver::start(vec![]);
    let base = format!("http://{}", rx.addr);
    let agent = RunAgent::start(
        &base,
        &[
            "--pid",
            &server.pid().to_string(),
            "--otlp-protocol",
            "http/protobuf",
            "--otlp-compression",
            "gzip",
        ],
    );
    for i in 0..10 {
        curl(&format!("http://127.0.0.1:{port}/bytes/{i}"), &[]);
    }
    let summary = agent.stop();
    assert_eq!(rx.span_count(), 10, "{summary}");
    assert_eq!(summary["otlp"]["exported"], 10);
    // The base endpoint was completed with /v1/traces, as the specification says, and with
    // /v1/metrics for the request metrics (exported at exit: the period is a minute).
    let paths = rx.paths();
    assert!(paths.iter().all(|p| p == "/v1/traces" || p == "/v1/metrics"), "{paths:?}");
    assert!(paths.iter().any(|p| p == "/v1/metrics"), "{paths:?}");
    let points = rx.histogram_points();
    let of = |metric: &str| points.iter().filter(|p| p.metric == metric).map(|p| p.count).sum::<u64>();
    assert_eq!(of("http.server.request.duration"), 10, "{points:?}");
    // The service graph's edge from `user` (curl sends no context), as the server saw it.
    assert_eq!(of("traces_service_graph_request_server_seconds"), 10, "{points:?}");
    // Every histogram point, and the edge's two counters.
    assert_eq!(summary["otlp"]["metric_points"]["exported"], points.len() + 2, "{summary}");
}

#[test]
fn config_file_selects_names_routes_and_writes_otlp_json() {
    let _g = serial();
    require_root();
    let (server, port) = python_server("127.0.0.1");
    let dir = std::env::temp_dir().join(format!("tracewire-config-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let out = dir.join("spans.jsonl");
    let cfg = dir.join("tracewire.yaml");
    fs::write(
        &cfg,
        format!(
            "select:\n  pids: [{}]\nroutes:\n  patterns: ['/bytes/{{size}}']\noutput:\n  print: none\n  otlp_json: {}\n",
            server.pid(),
            out.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracewire"))
        .args(["--config", &cfg.display().to_string(), "run", "--status-interval", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    loop {
        let l = rx.recv_timeout(READY_TIMEOUT).expect("agent ready");
        if l.contains("tracing with") {
            break;
        }
    }
    for i in 0..3 {
        curl(&format!("http://127.0.0.1:{port}/bytes/{i}"), &[]);
    }
    // SAFETY: signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    let text = fs::read_to_string(&out).unwrap();
    let names: Vec<String> = text
        .lines()
        .flat_map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(names, vec!["GET /bytes/{size}"; 3]);
    assert!(text.contains("\"http.route\""));

    // A typo in the file is a named error, not a silently ignored setting.
    fs::write(&cfg, "otlp:\n  endpont: http://x:4318\n").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_tracewire"))
        .args(["--config", &cfg.display().to_string(), "run"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("endpont"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_traced_collector_on_the_same_node_does_not_trace_the_exports() {
    let _g = serial();
    require_root();
    let (_server, port) = python_server("127.0.0.1");
    let rx = HttpReceiver::start(vec![]);
    // Every process is traced on both ports: the receiver (this test process) is a traced
    // HTTP/1 server, and the agent's exports are requests to it.
    let rport = rx.addr.port().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracewire"))
        .args([
            "run",
            "--print",
            "none",
            "--status-interval",
            "0",
            "--port",
            &port.to_string(),
            "--port",
            &rport,
        ])
        .args(["--otlp-endpoint", &format!("http://{}", rx.addr), "--otlp-protocol", "http/protobuf"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    loop {
        if lines.recv_timeout(READY_TIMEOUT).expect("agent ready").contains("tracing with") {
            break;
        }
    }
    // Requests a few batch periods apart, so several exports happen while tracing.
    for i in 0..3 {
        curl(&format!("http://127.0.0.1:{port}/bytes/{i}"), &[]);
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while rx.span_count() < i + 1 {
            assert!(Instant::now() < deadline, "span {i} not exported");
            std::thread::yield_now();
        }
    }
    // SAFETY: signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    let summary: Value = lines
        .try_iter()
        .find_map(|l| l.strip_prefix("tracewire: summary ").map(str::to_string))
        .map(|s| serde_json::from_str(&s).unwrap())
        .unwrap();
    // Only the three curl requests, seen from both ends (curl is traced too in this mode): no
    // span for any export request.
    assert_eq!(summary["spans"], 6, "{summary}");
    // Each server span is joined to curl's client span, by the TCP option of the agent (it
    // traces both ends here).
    assert_eq!(summary["http"]["linked_tcp"], 3, "{summary}");
    assert!(summary["own_connections_skipped"].as_u64().unwrap() >= 1, "{summary}");
}

#[test]
fn head_sampling_is_decided_at_the_root_and_follows_the_parent() {
    let _g = serial();
    require_root();
    let (server, port) = python_server("127.0.0.1");
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--pid", &server.pid().to_string(), "--sampler", "parentbased_traceidratio", "--sampler-arg", "0"],
    );
    // New traces: ratio 0, none kept.
    for i in 0..4 {
        curl(&format!("http://127.0.0.1:{port}/bytes/{i}"), &[]);
    }
    // A sampled parent is followed; an unsampled one too.
    for (i, flags) in [(10, "01"), (11, "01"), (12, "00")] {
        let tp = format!("traceparent: 00-{:032x}-{:016x}-{flags}", 0xfeed00 + i, 0xbeef00 + i);
        curl(&format!("http://127.0.0.1:{port}/bytes/{i}"), &["-H", &tp]);
    }
    let summary = agent.stop();
    let spans = rx.spans();
    let paths: Vec<String> = spans.iter().filter_map(|(_, s)| attr_str(s, "url.path")).collect();
    assert_eq!(spans.len(), 2, "{paths:?} {summary}");
    assert!(paths.contains(&"/bytes/10".to_string()) && paths.contains(&"/bytes/11".to_string()));
    // Decided where each request starts, in the kernel: the five unsampled requests were never
    // reported, so they cost no copy, no event and no parsing.
    assert_eq!(summary["kernel"]["sampled_out"], 5, "{summary}");
    assert_eq!(summary["sampled_out"], 0, "{summary}");
    assert_eq!(summary["spans"], 2, "{summary}");
    assert_eq!(summary["http"]["unsampled_gap"], 0, "{summary}");
}

/// `ratelimiting`: at most N new traces per second on the node, decided in the kernel where each
/// request starts (a burst of about a second's worth, then the rate); the rest are never
/// reported.
#[test]
fn head_rate_limiting_admits_a_burst_then_the_rate() {
    let _g = serial();
    require_root();
    let (server, port) = python_server("127.0.0.1");
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--pid", &server.pid().to_string(), "--sampler", "ratelimiting", "--sampler-arg", "2"],
    );
    let n = 30u64;
    let urls: Vec<String> = (0..n).map(|i| format!("http://127.0.0.1:{port}/bytes/{i}")).collect();
    let t0 = Instant::now();
    let out = Command::new("curl").args(["-s", "-o", "/dev/null"]).args(&urls).output().expect("curl");
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(out.status.success());
    let summary = agent.stop();
    let kept = summary["spans"].as_u64().unwrap();
    // Two a second: a burst of three at once (a second's worth and the one due now), then one
    // every 500 ms of the run.
    assert!(
        kept >= 3 && kept as f64 <= 3.0 + 2.0 * elapsed + 1.0,
        "{kept} kept in {elapsed:.2} s: {summary}"
    );
    assert_eq!(summary["kernel"]["sampled_out"], n - kept, "{summary}");
    assert_eq!(rx.spans().len() as u64, kept, "{summary}");
}

/// Go's net/http answering bodies of several sizes, with a Content-Length (the kernel copies
/// only the head) and chunked (the kernel copies the size lines framing needs), two requests on
/// each keep-alive connection: every response is one span with its status, ending before the
/// client had all of it, and nothing is invalid.
#[test]
fn go_bodies_with_a_length_or_chunked_make_exact_spans() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let go_bin = build_go_hop(dir.path());
    let rx = Receiver::start(vec![]);
    let mut servers = Vec::new();
    for (body, chunked) in [(3_000, false), (20_000, false), (3_000, true), (20_000, true)] {
        let port = free_port();
        let service = format!("go-{body}-{}", if chunked { "chunked" } else { "length" });
        let mut go = Peer::spawn(
            Command::new(&go_bin)
                .args(["127.0.0.1", &port.to_string()])
                .env("OTEL_SERVICE_NAME", &service)
                .env("HOP_BODY", body.to_string())
                .env("HOP_CHUNKED", if chunked { "1" } else { "0" }),
        );
        go.expect("port ");
        servers.push((go, port, body, chunked, service));
    }
    let mut args = Vec::new();
    for (go, ..) in &servers {
        args.extend(["--pid".to_string(), go.pid().to_string()]);
    }
    let agent = RunAgent::start(&rx.endpoint(), &args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut windows = Vec::new();
    for (_, port, body, chunked, service) in &servers {
        let before = now_ns();
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-o", "/dev/null", "-D", "-", "-w", "size %{size_download}\n"])
            .arg(format!("http://127.0.0.1:{port}/hop/first"))
            .arg(format!("http://127.0.0.1:{port}/hop/second"))
            .output()
            .expect("curl");
        let after = now_ns();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(text.matches(&format!("size {body}\n")).count(), 2, "{text}");
        assert_eq!(text.contains("Transfer-Encoding: chunked"), *chunked, "{text}");
        windows.push((service.clone(), before, after));
    }
    let summary = agent.stop();
    let collected = now_ns();
    drop(servers);
    let spans = rx.spans();
    assert_eq!(spans.len(), 8, "two spans per server: {summary}");
    assert_eq!(summary["http"]["invalid"], serde_json::json!({}), "{summary}");
    // At least the head-and-body write of each response with a length was counted, not copied.
    assert!(summary["kernel"]["body_skipped"].as_u64().unwrap_or(0) >= 4, "{summary}");
    for (service, before, after) in windows {
        let mine: Vec<_> = spans.iter().filter(|(svc, _)| *svc == service).collect();
        assert_eq!(mine.len(), 2, "{service}: {summary}");
        for (_, s) in mine {
            assert_eq!(attr_int(s, "http.response.status_code"), Some(200), "{service}");
            assert_in_client_window(&service, s, before, after, collected);
        }
    }
}

/// Eight requests pipelined in one write to Go's net/http, whose answers (head and body in one
/// write each) have their bodies counted, not copied: eight spans, each with its response.
#[test]
fn pipelined_requests_with_bodies_counted_are_one_span_each() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let go_bin = build_go_hop(dir.path());
    let port = free_port();
    let mut go = Peer::spawn(
        Command::new(&go_bin)
            .args(["127.0.0.1", &port.to_string()])
            .env("OTEL_SERVICE_NAME", "go-pipelined")
            .env("HOP_BODY", "2000"),
    );
    go.expect("port ");
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(&rx.endpoint(), &["--pid", &go.pid().to_string()]);
    // Reads until all eight answers are in, then closes.
    let client = format!(
        "import socket\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         s.sendall(b''.join(b'GET /hop/p%d HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' % i for i in range(8)))\n\
         want = 8 * (2000 + len(b'HTTP/1.1 200 OK\\r\\n'))\n\
         data = b''\n\
         while data.count(b'HTTP/1.1 200 OK') < 8 or len(data) < want:\n\
         \x20   d = s.recv(65536)\n\
         \x20   if not d: break\n\
         \x20   data += d\n\
         print(data.count(b'HTTP/1.1 200 OK'))\n"
    );
    let out = Command::new("python3").arg("-c").arg(&client).output().expect("python3");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "8", "{}", String::from_utf8_lossy(&out.stderr));
    wait_connections_closed(port);
    let summary = agent.stop();
    drop(go);
    let spans = rx.spans();
    let mut paths: Vec<String> = spans.iter().filter_map(|(_, s)| attr_str(s, "url.path")).collect();
    paths.sort();
    assert_eq!(paths, (0..8).map(|i| format!("/hop/p{i}")).collect::<Vec<_>>(), "{summary}");
    assert!(
        spans.iter().all(|(_, s)| attr_int(s, "http.response.status_code") == Some(200)),
        "every span has its response: {summary}"
    );
    assert_eq!(summary["http"]["invalid"], serde_json::json!({}), "{summary}");
    assert!(summary["kernel"]["body_skipped"].as_u64().unwrap_or(0) >= 8, "{summary}");
}

/// A hop of tests/peers/hop.py on 127.0.0.1: (peer, port).
fn python_hop(name: &str, next: Option<&str>) -> (Peer, u16) {
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("tests/peers/hop.py")).args(["127.0.0.1", &port.to_string()]);
    cmd.args(next).env("OTEL_SERVICE_NAME", name);
    let mut p = Peer::spawn(&mut cmd);
    p.expect("port ");
    (p, port)
}

#[test]
fn an_sdk_instrumented_service_and_the_agent_make_one_trace() {
    let _g = serial();
    require_root();
    let rx = HttpReceiver::start(vec![]);
    let (leaf, leaf_port) = python_hop("leaf", None);
    let (mid, mid_port) = python_hop("middle", Some(&format!("http://127.0.0.1:{leaf_port}")));
    // The gateway runs the official OpenTelemetry SDK and propagates traceparent itself; the
    // agent traces the two uninstrumented services behind it.
    let mut gw = Peer::python("sdk_gateway.py", &[&rx.url(), &format!("http://127.0.0.1:{mid_port}")]);
    let gw_port: u16 = gw.port();
    // A base endpoint, which the agent completes with /v1/traces (and /v1/metrics).
    let agent = RunAgent::start(
        &format!("http://{}", rx.addr),
        &[
            "--otlp-protocol",
            "http/protobuf",
            "--pid",
            &mid.pid().to_string(),
            "--pid",
            &leaf.pid().to_string(),
        ],
    );
    let ids = ["sdk1", "sdk2", "sdk3"];
    for id in ids {
        curl(&format!("http://127.0.0.1:{gw_port}/hop/{id}"), &[]);
    }
    let summary = agent.stop();
    let spans = rx.spans();
    for id in ids {
        let mine: Vec<&(String, opentelemetry_proto::tonic::trace::v1::Span)> = spans
            .iter()
            .filter(|(_, s)| {
                s.name.ends_with(&format!("/hop/{id}"))
                    || attr_str(s, "url.path").is_some_and(|p| p.ends_with(&format!("/hop/{id}")))
                    || attr_str(s, "url.full").is_some_and(|p| p.ends_with(&format!("/hop/{id}")))
            })
            .collect();
        let desc: Vec<String> =
            mine.iter().map(|(svc, s)| format!("{svc} {} kind={}", s.name, s.kind)).collect();
        assert_eq!(mine.len(), 5, "{id}: 2 SDK spans, 3 agent spans: {desc:#?}\n{summary}");
        let trace = &mine[0].1.trace_id;
        assert!(mine.iter().all(|(_, s)| &s.trace_id == trace), "{id}: one trace: {desc:#?}");
        let find = |svc: &str, kind: i32| {
            mine.iter()
                .find(|(s, sp)| s == svc && sp.kind == kind)
                .map(|(_, sp)| sp)
                .unwrap_or_else(|| panic!("{id}: no {svc} span of kind {kind}: {desc:#?}"))
        };
        let (sdk_server, sdk_client) = (find("sdk-gateway", 2), find("sdk-gateway", 3));
        let (mid_server, mid_client, leaf_server) = (find("middle", 2), find("middle", 3), find("leaf", 2));
        assert!(sdk_server.parent_span_id.is_empty(), "{id}: the SDK starts the trace");
        assert_eq!(sdk_client.parent_span_id, sdk_server.span_id);
        // The SDK's header: the agent's server span is the SDK client span's child...
        assert_eq!(mid_server.parent_span_id, sdk_client.span_id, "{id}: {desc:#?}");
        assert_eq!(mid_client.parent_span_id, mid_server.span_id);
        // ...and the call it makes carries that trace on (TCP option, no header).
        assert_eq!(leaf_server.parent_span_id, mid_client.span_id);
    }
    assert_eq!(summary["kernel"]["ctx_header"], 3, "the kernel read the SDK's header: {summary}");
    assert_eq!(summary["http"]["kernel_ctx_differs"], 0, "{summary}");
}

#[test]
fn unsampled_requests_are_left_out_in_the_kernel_and_the_rest_stay_whole() {
    let _g = serial();
    require_root();
    let rx = Receiver::start(vec![]);
    let chain =
        traced_chain(&rx.endpoint(), &["--sampler", "parentbased_traceidratio", "--sampler-arg", "0.5"]);
    let (agent, mid_port) = (chain.agent, chain.mid_port);
    // One keep-alive connection carries sampled and unsampled requests in turn.
    let n = 40;
    let urls: Vec<String> = (0..n).map(|i| format!("http://127.0.0.1:{mid_port}/hop/k{i}")).collect();
    let out = Command::new("curl").args(["-s", "-o", "/dev/null"]).args(&urls).output().expect("curl");
    assert!(out.status.success());
    let summary = agent.stop();
    let spans = rx.spans();
    let sampled: std::collections::BTreeSet<String> = spans.iter().filter_map(|(_, s)| rid(s)).collect();
    for id in &sampled {
        whole_request(&spans, id, mid_port, chain.leaf_port);
    }
    let kept = sampled.len() as u64;
    assert!((1..n).contains(&kept), "ratio 0.5 of {n} requests kept {kept}");
    // The others were never reported: three requests each (the middle's, its call, the leaf's).
    assert_eq!(summary["kernel"]["sampled_out"], 3 * (n - kept), "{summary}");
    assert_eq!(summary["spans"], 3 * kept, "{summary}");
    assert_eq!(summary["http"]["unsampled_gap"], 0, "{summary}");
    assert_eq!(summary["http"]["invalid"], serde_json::json!({}), "{summary}");
}

/// Tail sampling on a real chain (middle → leaf, both traced): the leaf fails some requests and
/// is slow on others. Only those traces are exported, each whole; the others are dropped and
/// counted, and the counts add up to every span built.
#[test]
fn tail_sampling_keeps_failed_and_slow_traces_whole_and_counts_the_rest() {
    let _g = serial();
    require_root();
    let rx = Receiver::start(vec![]);
    let chain =
        traced_chain(&rx.endpoint(), &["--tail-errors", "--tail-latency-ms", "200", "--tail-wait-ms", "300"]);
    let (agent, mid_port) = (chain.agent, chain.mid_port);
    let ids: Vec<String> =
        (0..10).map(|i| format!("ok{i}")).chain(["fail0", "fail1", "slow0"].map(String::from)).collect();
    let urls: Vec<String> = ids.iter().map(|id| format!("http://127.0.0.1:{mid_port}/hop/{id}")).collect();
    let out = Command::new("curl").args(["-s", "-o", "/dev/null"]).args(&urls).output().expect("curl");
    assert!(out.status.success());
    let summary = agent.stop();
    let spans = rx.spans();
    let kept: std::collections::BTreeSet<String> = spans.iter().filter_map(|(_, s)| rid(s)).collect();
    assert_eq!(kept, ["fail0", "fail1", "slow0"].map(String::from).into(), "{summary}");
    for id in &kept {
        let mine = whole_request(&spans, id, mid_port, chain.leaf_port);
        let errors = mine.iter().filter(|s| s.status.as_ref().is_some_and(|st| st.code == 2)).count();
        assert_eq!(errors, if id.starts_with("fail") { 3 } else { 0 }, "{id}");
    }
    let tail = &summary["tail"];
    assert_eq!(tail["kept_error"], 2, "{summary}");
    assert_eq!(tail["kept_slow"], 1, "{summary}");
    assert_eq!(tail["kept_baseline"], 0, "{summary}");
    assert_eq!(tail["dropped"], 10, "{summary}");
    assert_eq!(tail["spans_kept"], 9, "{summary}");
    assert_eq!(tail["spans_dropped"], 30, "{summary}");
    // Every span built is accounted for: exported, or dropped by tail sampling.
    assert_eq!(summary["spans"], 39, "{summary}");
    assert_eq!(summary["otlp"]["exported"], 9, "{summary}");
}

/// The service graph of a real chain (middle → leaf, both traced): every call of the middle's is
/// one edge named by both services, with both ends' durations; every request curl makes comes
/// from `user`; failures are counted on both edges; no end is left to a virtual node.
#[test]
fn the_service_graph_names_both_ends_of_every_call() {
    let _g = serial();
    require_root();
    let rx = Receiver::start(vec![]);
    let maddr = format!("127.0.0.1:{}", free_port());
    let chain = traced_chain(&rx.endpoint(), &["--metrics-addr", &maddr]);
    let ids = ["ok0", "ok1", "ok2", "ok3", "ok4", "fail0", "fail1"];
    let urls: Vec<String> =
        ids.iter().map(|id| format!("http://127.0.0.1:{}/hop/{id}", chain.mid_port)).collect();
    let out = Command::new("curl").args(["-s", "-o", "/dev/null"]).args(&urls).output().expect("curl");
    assert!(out.status.success());
    let internal = ["client=\"middle\"", "server=\"leaf\""];
    let from_user = ["client=\"user\"", "server=\"middle\"", "connection_type=\"virtual_node\""];
    let total = "traces_service_graph_request_total";
    let deadline = Instant::now() + Duration::from_secs(15);
    let page = loop {
        let (_, page) = http_get(&format!("http://{maddr}/metrics"));
        if prom_value(&page, total, &internal) == Some(7.0)
            && prom_value(&page, total, &from_user) == Some(7.0)
        {
            break page;
        }
        assert!(Instant::now() < deadline, "the graph never counted the calls:\n{page}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let failed = "traces_service_graph_request_failed_total";
    assert_eq!(prom_value(&page, failed, &internal), Some(2.0), "{page}");
    assert_eq!(prom_value(&page, failed, &from_user), Some(2.0), "{page}");
    for side in ["server", "client"] {
        let count = format!("traces_service_graph_request_{side}_seconds_count");
        assert_eq!(prom_value(&page, &count, &internal), Some(7.0), "{side}: {page}");
    }
    // The leaf is named, never taken for a virtual node by its address.
    assert!(!page.contains(&format!(":{}\"", chain.leaf_port)), "{page}");
    let summary = chain.agent.stop();
    let graph = &summary["request_metrics"]["service_graph"];
    assert_eq!((graph["paired"].as_u64(), graph["from_user"].as_u64()), (Some(7), Some(7)), "{summary}");
    assert_eq!(
        (graph["client_unpaired"].as_u64(), graph["server_unpaired"].as_u64()),
        (Some(0), Some(0)),
        "{summary}"
    );
    assert_eq!(graph["edges"], 2, "{summary}");
}

/// A chain of tests/peers/hop.py on 127.0.0.1, middle → leaf, and an agent (with `args`)
/// tracing both.
struct Chain {
    agent: RunAgent,
    mid_port: u16,
    leaf_port: u16,
    _hops: (Peer, Peer),
}

fn traced_chain(endpoint: &str, args: &[&str]) -> Chain {
    let (leaf, leaf_port) = python_hop("leaf", None);
    let (mid, mid_port) = python_hop("middle", Some(&format!("http://127.0.0.1:{leaf_port}")));
    let (mid_pid, leaf_pid) = (mid.pid().to_string(), leaf.pid().to_string());
    let mut all = vec!["--pid", &mid_pid, "--pid", &leaf_pid];
    all.extend_from_slice(args);
    Chain { agent: RunAgent::start(endpoint, &all), mid_port, leaf_port, _hops: (leaf, mid) }
}

/// The spans of request `id` through a [`Chain`], checked whole: the middle's server and client
/// span and the leaf's server span, in one trace, parent to child.
fn whole_request<'a>(
    spans: &'a [(String, opentelemetry_proto::tonic::trace::v1::Span)],
    id: &str,
    mid_port: u16,
    leaf_port: u16,
) -> Vec<&'a opentelemetry_proto::tonic::trace::v1::Span> {
    let mine: Vec<&opentelemetry_proto::tonic::trace::v1::Span> =
        spans.iter().filter(|(_, s)| rid(s).as_deref() == Some(id)).map(|(_, s)| s).collect();
    assert_eq!(mine.len(), 3, "{id}: the middle's server and client span, the leaf's server span");
    assert!(mine.iter().all(|s| s.trace_id == mine[0].trace_id), "{id}: one trace");
    let find = |kind: i32, port: u16| {
        *mine
            .iter()
            .find(|s| s.kind == kind && receiver::attr_int(s, "server.port") == Some(i64::from(port)))
            .unwrap_or_else(|| panic!("{id}: no span of kind {kind} for port {port}"))
    };
    let (server, client, leaf_server) = (find(2, mid_port), find(3, leaf_port), find(2, leaf_port));
    assert!(server.parent_span_id.is_empty(), "{id}");
    assert_eq!(client.parent_span_id, server.span_id, "{id}");
    assert_eq!(leaf_server.parent_span_id, client.span_id, "{id}");
    mine
}

/// The request id in a hop's path (`/hop/<id>`), from a server or client span.
fn rid(s: &opentelemetry_proto::tonic::trace::v1::Span) -> Option<String> {
    let p = attr_str(s, "url.path").or_else(|| attr_str(s, "url.full"))?;
    p.split("/hop/").nth(1).map(str::to_string)
}

/// `svc`'s spans of `kind`, by their request id ([`rid`]).
fn by_rid<'a>(
    spans: &'a [(String, opentelemetry_proto::tonic::trace::v1::Span)],
    svc: &str,
    kind: i32,
) -> std::collections::HashMap<String, &'a opentelemetry_proto::tonic::trace::v1::Span> {
    spans.iter().filter(|(v, s)| v == svc && s.kind == kind).filter_map(|(_, s)| Some((rid(s)?, s))).collect()
}

/// A Go service (net/http, goroutines on any thread) whose handler calls a leaf once itself and
/// twice from goroutines it starts, over pooled keep-alive connections, under 16 concurrent
/// clients: every call is the child of the request that made it, and none is left unlinked.
/// roundTrip ties each call to the connection it goes out on (one probe hit per call).
#[test]
fn go_calls_from_handlers_and_their_goroutines_are_children_of_their_request() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let go_bin = build_go_hop(dir.path());
    // What the kernel is told about this binary: the runtime.g layout from its DWARF (Go 1.19:
    // goid at 152, m at 48, sched at 56; m.curg at 192), the way from a persistConn to its fd,
    // and the probed functions.
    let bin = tracewire::capture::runtime::inspect_go(&go_bin).expect("a followable Go binary");
    assert_eq!((bin.version.get(..6), bin.goid_offset), (Some("go1.19"), 152), "{bin:?}");
    let ancestry = bin.ancestry.expect("goroutine creation probed");
    assert_eq!((ancestry.g_m, ancestry.g_sched, ancestry.m_curg), (48, 56, 192), "{bin:?}");
    let fd = bin.conn_fd.expect("the connection's fd is read at roundTrip");
    // net.TCPConn{conn{fd *netFD}}, netFD{pfd poll.FD{fdmu fdMutex (16 bytes), Sysfd int}}.
    assert_eq!((fd.tcp_fd, fd.netfd_sysfd), (0, 16), "{bin:?}");
    assert!(fd.pc_conn > 0 && fd.tcp_itab > 0, "{bin:?}");
    // Each probe sits on the stack check's branch, which the kernel emulates (jbe rel8/rel32).
    let code = std::fs::read(&go_bin).unwrap();
    for off in [bin.round_trip, bin.request_write, ancestry.new_goroutine] {
        let op = &code[off as usize..off as usize + 2];
        assert!(op[0] == 0x76 || op == [0x0f, 0x86], "{off:#x}: {op:02x?}");
    }
    go_calls(&go_bin, 2);
}

/// The same service built without DWARF: the goroutine id comes from the known runtime layout,
/// and roundTrip ties the request object, which `(*Request).write` hands to the transport's
/// writer goroutine. Goroutines started by handlers are not followed then (no `runtime.g`
/// layout for their creator), so the handler calls once itself.
#[test]
fn go_calls_from_a_binary_without_dwarf_are_children_of_their_request() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let go_bin = build_go_hop_with(dir.path(), &["-ldflags=-w"]);
    let bin = tracewire::capture::runtime::inspect_go(&go_bin).expect("a followable Go binary");
    assert_eq!(bin.goid_offset, 152, "{bin:?}");
    assert!(bin.ancestry.is_none() && bin.conn_fd.is_none(), "no DWARF: {bin:?}");
    go_calls(&go_bin, 0);
}

/// Runs `go_bin` as a service whose handler calls a leaf once and `fanout` more times from
/// goroutines, under load, and checks every call is the child of its request.
fn go_calls(go_bin: &std::path::Path, fanout: usize) {
    let rx = Receiver::start(vec![]);
    let (leaf, leaf_port) = python_hop("leaf", None);
    let go_port = free_port();
    let mut cmd = Command::new(go_bin);
    cmd.args(["127.0.0.1", &go_port.to_string(), &format!("http://127.0.0.1:{leaf_port}")])
        .env("OTEL_SERVICE_NAME", "go-fanout")
        .env("HOP_FANOUT", fanout.to_string())
        .env("HOP_KEEPALIVE", "1");
    let mut go = Peer::spawn(&mut cmd);
    go.expect("port ");
    let mut agent =
        RunAgent::start(&rx.endpoint(), &["--pid", &go.pid().to_string(), "--pid", &leaf.pid().to_string()]);
    // Goroutine creation is followed from the first net/http call on: a first request makes it
    // (its fan-out calls may stay unlinked, and are left out below).
    curl(&format!("http://127.0.0.1:{go_port}/hop/warmup"), &[]);
    if fanout > 0 {
        agent.wait_line(&format!("pid {} made its first net/http call", go.pid()));
    }
    let ids = drive_load(&format!("http://127.0.0.1:{go_port}/hop/"), "g", 16, 8);
    let summary = agent.stop();
    let spans = rx.spans();
    let calls = 1 + fanout;
    let measured = |s: &opentelemetry_proto::tonic::trace::v1::Span| rid(s).is_some_and(|r| r != "warmup");
    let servers: std::collections::HashMap<String, &opentelemetry_proto::tonic::trace::v1::Span> = spans
        .iter()
        .filter(|(svc, s)| svc == "go-fanout" && s.kind == 2 && measured(s))
        .filter_map(|(_, s)| Some((rid(s)?, s)))
        .collect();
    assert_eq!(servers.len(), ids.len(), "one server span per request: {summary}");
    let (mut linked, mut wrong, mut unlinked) = (0, 0, Vec::new());
    for (_, s) in spans.iter().filter(|(svc, s)| svc == "go-fanout" && s.kind == 3 && measured(s)) {
        let r = rid(s).expect("the call's id");
        let parent = servers[&r];
        if s.parent_span_id.is_empty() {
            unlinked.push(r);
        } else if s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id {
            linked += 1;
        } else {
            wrong += 1;
        }
    }
    assert_eq!(wrong, 0, "calls under another request: {summary}");
    assert!(unlinked.is_empty(), "unlinked calls {unlinked:?}: {summary}");
    assert_eq!(linked, calls * ids.len(), "{summary}");
    // The leaf's spans join the same traces (TCP option from the Go client spans).
    let leaf_spans = spans.iter().filter(|(svc, s)| svc == "leaf" && s.kind == 2 && measured(s));
    assert_eq!(leaf_spans.clone().count(), calls * ids.len(), "{summary}");
    for (_, s) in leaf_spans {
        assert_eq!(Some(&s.trace_id), servers.get(&rid(s).unwrap()).map(|p| &p.trace_id), "{summary}");
    }
    assert_eq!(summary["go_followed"], 1, "{summary}");
    // The warm-up request's direct call is linked too; its fan-out calls may not be.
    let go_linked = summary["kernel"]["go_linked"].as_u64().unwrap_or(0);
    let expected = (calls * ids.len()) as u64;
    assert!((expected + 1..=expected + 1 + fanout as u64).contains(&go_linked), "{summary}");
    assert!(summary["kernel"]["go_no_parent"].as_u64() <= Some(fanout as u64), "{summary}");
    assert_eq!(summary["http"]["linked_goroutine"].as_u64(), Some(go_linked), "{summary}");
}

/// nginx proxying over a keep-alive upstream pool to a Go service, under 16 concurrent clients:
/// one worker thread has many requests open at once, yet every upstream request is the child of
/// the client request nginx made it for, on new and on reused upstream connections alike.
#[test]
fn nginx_upstream_requests_are_children_of_their_client_request() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let go_bin = build_go_hop(dir.path());
    let rx = Receiver::start(vec![]);
    let leaf_port = free_port();
    let mut cmd = Command::new(&go_bin);
    cmd.args(["127.0.0.1", &leaf_port.to_string()]).env("OTEL_SERVICE_NAME", "go-leaf");
    let mut leaf = Peer::spawn(&mut cmd);
    leaf.expect("port ");
    let port = free_port();
    let conf = nginx_conf_with(
        dir.path(),
        &format!("upstream leaf {{ server 127.0.0.1:{leaf_port}; keepalive 8; }}"),
        &format!("127.0.0.1:{port}"),
        false,
        "location / { proxy_pass http://leaf; proxy_http_version 1.1; proxy_set_header Connection \"\"; }",
    );
    let nginx = Peer::spawn(Command::new("nginx").arg("-c").arg(&conf).arg("-e").arg("stderr"));
    wait_listening(port, "nginx");
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--pid", &nginx.pid().to_string(), "--pid", &leaf.pid().to_string()],
    );
    let ids = drive_load(&format!("http://127.0.0.1:{port}/hop/"), "n", 16, 8);
    let summary = agent.stop();
    let spans = rx.spans();
    let of = |svc: &str, kind: i32| by_rid(&spans, svc, kind);
    let (servers, clients, leaves) = (of("nginx", 2), of("nginx", 3), of("go-leaf", 2));
    assert_eq!((servers.len(), clients.len(), leaves.len()), (ids.len(), ids.len(), ids.len()), "{summary}");
    for id in &ids {
        let (server, client, leaf) = (servers[id], clients[id], leaves[id]);
        assert_eq!(client.parent_span_id, server.span_id, "{id}: the upstream request's parent: {summary}");
        assert_eq!(client.trace_id, server.trace_id, "{id}");
        assert_eq!(leaf.parent_span_id, client.span_id, "{id}: the leaf joins through the TCP option");
    }
    // The pool was used: fewer upstream connections than requests.
    let upstream_ports: std::collections::HashSet<Option<i64>> =
        leaves.values().map(|s| attr_int(s, "network.peer.port")).collect();
    assert!(upstream_ports.len() < ids.len() / 2, "{} upstream connections", upstream_ports.len());
    assert_eq!(summary["nginx_followed"], 2, "master and worker: {summary}");
    assert_eq!(summary["kernel"]["upstream_linked"], ids.len() as u64, "{summary}");
    assert_eq!(summary["http"]["linked_upstream"], ids.len() as u64, "{summary}");
}

/// The manifest's documents, parsed.
fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/tracewire.yaml")).unwrap();
    text.split("\n---\n").map(|doc| serde_saphyr::from_str::<Value>(doc).expect("manifest YAML")).collect()
}

/// The DaemonSet of deploy/kubernetes, run here as a kubelet would: its container's arguments,
/// environment and ConfigMap file, exactly its capabilities (bounding set, everything else
/// dropped), tracefs read-only and the node's cgroup2 hierarchy at its mount path, in a
/// private mount namespace. The agent must trace a real server end to end, and name the node
/// from the downward API variable.
#[test]
fn the_daemonset_manifest_runs_the_agent_with_its_capabilities_and_config() {
    let _g = serial();
    require_root();
    let docs = manifest();
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k}"));
    let (ds, cm) = (kind("DaemonSet"), kind("ConfigMap"));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "the node's pids and /proc");
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!((&sc["privileged"], &sc["runAsUser"]), (&Value::Bool(false), &Value::from(0)));
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    let caps: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("+{}", c.as_str().unwrap().to_lowercase()))
        .collect();

    let dir = tempfile::tempdir().unwrap();
    // The ConfigMap, where the container mounts it.
    let config_dir =
        c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "config").unwrap()["mountPath"]
            .as_str()
            .unwrap()
            .to_string();
    let config = dir.path().join("tracewire.yaml");
    std::fs::write(&config, cm["data"]["tracewire.yaml"].as_str().unwrap()).unwrap();
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str().unwrap().replace(&format!("{config_dir}/"), &format!("{}/", dir.path().display()))
        })
        .collect();
    let mounts: Vec<(String, String, bool)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] != "config")
        .map(|m| {
            let host = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap()["hostPath"]["path"]
                .as_str()
                .unwrap()
                .to_string();
            (host, m["mountPath"].as_str().unwrap().to_string(), m["readOnly"] == true)
        })
        .collect();

    let (server, port) = python_server("127.0.0.1");
    let rx = Receiver::start(vec![]);
    // The hostPath volumes, bound where the container has them. This machine's cgroup2 hierarchy
    // is wherever it is mounted here (the manifest's hostPath is the usual /sys/fs/cgroup).
    let cgroup2 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_string))
        .expect("a cgroup2 mount");
    // Mount points this test creates on the machine (mkdir is not namespaced), removed after.
    let mut created: Vec<std::path::PathBuf> = Vec::new();
    for (_, at, _) in &mounts {
        let mut p = std::path::PathBuf::from(at);
        let mut chain = Vec::new();
        while !p.exists() {
            chain.push(p.clone());
            p.pop();
        }
        created.extend(chain);
    }
    let mut script = String::from(
        "set -e; mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing; ",
    );
    for (host, at, ro) in &mounts {
        let host = if host == "/sys/fs/cgroup" { &cgroup2 } else { host };
        script.push_str(&format!("mkdir -p {at}; mount --bind {host} {at}; "));
        if *ro {
            script.push_str(&format!("mount -o remount,bind,ro {at}; "));
        }
    }
    script
        .push_str(&format!("exec setpriv --bounding-set -all,{} --inh-caps -all -- \"$@\"", caps.join(",")));
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
        env!("CARGO_BIN_EXE_tracewire"),
    ])
    .args(&args)
    .args(["--pid", &server.pid().to_string()]);
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        match name {
            "NODE_NAME" => cmd.env(name, "node-a"),
            // The manifest's endpoint is on 4317, which means gRPC: so is this receiver.
            "OTEL_EXPORTER_OTLP_ENDPOINT" => {
                cmd.env(name, rx.endpoint()).env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            }
            _ => cmd.env(name, e["value"].as_str().unwrap()),
        };
    }
    let agent = RunAgent::spawn(cmd);
    for i in 0..3 {
        curl(&format!("http://127.0.0.1:{port}/bytes/{i}"), &[]);
    }
    // The liveness probe the kubelet would send.
    let probe = &c["livenessProbe"]["httpGet"];
    let url = format!("http://127.0.0.1:{}{}", probe["port"], probe["path"].as_str().unwrap());
    assert_eq!(http_get(&url).0, 200, "{url}");
    let summary = agent.stop();
    // Deepest first; the mounts went with the agent's mount namespace, so these are empty.
    for p in &created {
        let _ = std::fs::remove_dir(p);
    }
    let spans = rx.spans();
    assert_eq!(spans.len(), 3, "{summary}");
    for r in rx.resources() {
        assert_eq!(r.get("k8s.node.name").map(String::as_str), Some("node-a"), "{r:?}");
        assert_eq!(r.get("host.name").map(String::as_str), Some("node-a"), "{r:?}");
    }
    assert_eq!(summary["kernel"]["ring_full"], 0, "{summary}");
}

/// GET a URL with curl: (status, body).
fn http_get(url: &str) -> (u16, String) {
    let out = Command::new("curl").args(["-s", "-w", "\n%{http_code}", url]).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `--metrics-addr`: a Prometheus page with what the summary counts, and a health check.
#[test]
fn metrics_and_health_are_served_while_tracing() {
    let _g = serial();
    require_root();
    let (server, port) = python_server("127.0.0.1");
    let rx = Receiver::start(vec![]);
    let maddr = format!("127.0.0.1:{}", free_port());
    let agent =
        RunAgent::start(&rx.endpoint(), &["--pid", &server.pid().to_string(), "--metrics-addr", &maddr]);
    for i in 0..4 {
        curl(&format!("http://127.0.0.1:{port}/bytes/{i}"), &[]);
    }
    // Spans reach the page as the agent reads them: wait for it to show the four.
    let deadline = Instant::now() + Duration::from_secs(15);
    let page = loop {
        let (code, body) = http_get(&format!("http://{maddr}/metrics"));
        assert_eq!(code, 200, "{body}");
        if body.lines().any(|l| l == "tracewire_spans_total 4") {
            break body;
        }
        assert!(Instant::now() < deadline, "the page never counted 4 spans:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for line in [
        "# TYPE tracewire_spans_total counter",
        "tracewire_kernel_events_total{counter=\"ring_full\"} 0",
        "tracewire_kernel_events_total{counter=\"conn_map_full\"} 0",
        "# TYPE tracewire_open_connections gauge",
    ] {
        assert!(page.lines().any(|l| l == line), "{line:?} missing:\n{page}");
    }
    assert!(page.contains("tracewire_resident_memory_bytes "), "{page}");
    assert_eq!(http_get(&format!("http://{maddr}/healthz")), (200, "ok\n".to_string()));
    assert_eq!(http_get(&format!("http://{maddr}/nothing-here")).0, 404);
    let summary = agent.stop();
    assert_eq!(summary["spans"], 4, "{summary}");
}

/// The line of a Prometheus page for `family` whose labels include every one of `labels`.
fn prom_value(page: &str, family: &str, labels: &[&str]) -> Option<f64> {
    page.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// Request metrics: every request is counted, by method, status and route, with its duration,
/// whatever sampling keeps of its trace (tail sampling keeps none here); on `/metrics` and over
/// OTLP, periodically and at exit.
#[test]
fn request_metrics_count_every_request_whatever_sampling_keeps() {
    let _g = serial();
    require_root();
    let (server, port) = python_server("127.0.0.1");
    let rx = Receiver::start(vec![]);
    let maddr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracewire"));
    cmd.env("OTEL_METRIC_EXPORT_INTERVAL", "300").args([
        "run",
        "--print",
        "none",
        "--status-interval",
        "0",
        "--otlp-endpoint",
        &rx.endpoint(),
        "--otlp-protocol",
        "grpc",
        "--pid",
        &server.pid().to_string(),
        "--metrics-addr",
        &maddr,
        "--route",
        "/status/{code}",
        "--tail-ratio",
        "0",
    ]);
    let agent = RunAgent::spawn(cmd);
    let mut want = vec![];
    for (path, status, n) in [("/bytes/1", 200, 5), ("/status/404", 404, 3), ("/status/503", 503, 2)] {
        for _ in 0..n {
            assert_eq!(http_get(&format!("http://127.0.0.1:{port}{path}")).0, status);
        }
        want.push((status, n));
    }
    let family = "http_server_request_duration_seconds_count";
    let status_label = |s: u16| format!("http_response_status_code=\"{s}\"");
    let deadline = Instant::now() + Duration::from_secs(15);
    let page = loop {
        let (_, page) = http_get(&format!("http://{maddr}/metrics"));
        if want.iter().all(|(s, n)| prom_value(&page, family, &[&status_label(*s)]) == Some(*n as f64)) {
            break page;
        }
        assert!(Instant::now() < deadline, "the page never counted the requests:\n{page}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Labelled with the service and the conventions' attributes; the route where one matched;
    // a 5xx is an error; the path of an unrouted request is no label.
    let common = ["service_name=\"http_server\"", "http_request_method=\"GET\""];
    let routed = [common[0], common[1], "http_route=\"/status/{code}\"", "error_type=\"503\""];
    assert_eq!(prom_value(&page, family, &routed), Some(2.0), "{page}");
    assert!(!page.contains("/bytes/1"), "{page}");
    assert_eq!(
        prom_value(
            &page,
            "http_server_request_duration_seconds_bucket",
            &[&status_label(200), "le=\"+Inf\""]
        ),
        Some(5.0),
        "{page}"
    );
    assert!(page.contains("tracewire_request_metrics_spans_total{outcome=\"recorded\"} 10"), "{page}");
    // Exported over OTLP every 300 ms while running (not only at exit).
    let deadline = Instant::now() + Duration::from_secs(15);
    while rx.histogram_points().iter().filter(|p| p.metric == "http.server.request.duration").count() < 3 {
        assert!(Instant::now() < deadline, "no metrics exported while running");
        std::thread::sleep(Duration::from_millis(50));
    }
    let summary = agent.stop();
    assert_eq!(summary["spans"], 10, "{summary}");
    assert_eq!(summary["request_metrics"]["recorded"], 10, "{summary}");
    assert_eq!(summary["request_metrics"]["overflowed"], 0, "{summary}");
    // Tail sampling kept no trace: the metrics counted what no exported span shows.
    assert!(rx.spans().is_empty(), "{summary}");
    let points = &summary["otlp"]["metric_points"];
    assert_eq!(points["dropped"], 0, "{summary}");
    assert_eq!(points["produced"], points["exported"], "{summary}");
    // The last export, at exit, has every request; cumulative points keep their start.
    let received = rx.histogram_points();
    for (status, n) in want {
        let of_status: Vec<_> = received
            .iter()
            .filter(|p| {
                p.metric == "http.server.request.duration"
                    && p.attributes.get("http.response.status_code") == Some(&status.to_string())
            })
            .collect();
        let last = of_status.last().expect("points of each status");
        assert_eq!((last.service.as_str(), last.count, last.bucket_total), ("http_server", n, n), "{last:?}");
        assert!(
            of_status.iter().all(|p| p.start_ns == last.start_ns && p.time_ns >= p.start_ns),
            "{of_status:?}"
        );
        assert_eq!(last.attributes.get("http.request.method").map(String::as_str), Some("GET"));
    }
}

/// A connection no protocol is read on (a binary protocol, a broker's) is muted in the kernel
/// once userspace gives up on it: its bytes stop being copied and sent to the agent, while an
/// HTTP server traced alongside goes on being traced.
#[test]
fn a_connection_no_protocol_is_read_on_is_muted_in_the_kernel() {
    use std::io::{Read as _, Write as _};
    let _g = serial();
    require_root();
    let (http, http_port) = python_server("127.0.0.1");
    let mut echo = Peer::python("binary_echo.py", &["127.0.0.1"]);
    let echo_port = echo.port();
    let rx = Receiver::start(vec![]);
    let maddr = format!("127.0.0.1:{}", free_port());
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--pid", &http.pid().to_string(), "--pid", &echo.pid().to_string(), "--metrics-addr", &maddr],
    );
    for i in 0..3 {
        curl(&format!("http://127.0.0.1:{http_port}/bytes/{i}"), &[]);
    }
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", echo_port)).expect("connect");
    let mut round_trip = |n: usize| {
        let mut frame = [0u8; 64];
        for i in 0..n {
            frame[0] = 0xfe; // not a request line
            frame[1] = i as u8;
            conn.write_all(&frame).unwrap();
            conn.read_exact(&mut frame).unwrap();
        }
    };
    let page = || http_get(&format!("http://{maddr}/metrics")).1;
    let kernel = |page: &str, name: &str| {
        prom_value(page, "tracewire_kernel_events_total", &[&format!("counter=\"{name}\"")]).unwrap_or(-1.0)
    };
    // Frames go back and forth until the kernel has muted the connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        round_trip(8);
        let p = page();
        if kernel(&p, "muted") == 1.0 {
            break p;
        }
        assert!(Instant::now() < deadline, "the connection was never muted:\n{p}");
    };
    let events_before = kernel(&before, "events_out");
    // 4000 more calls on the server's side: none is reported.
    round_trip(2000);
    for i in 3..6 {
        curl(&format!("http://127.0.0.1:{http_port}/bytes/{i}"), &[]);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let p = page();
        if p.lines().any(|l| l == "tracewire_spans_total 6") {
            break p;
        }
        assert!(Instant::now() < deadline, "the HTTP server's spans never came:\n{p}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The three requests' events (opens, reads, writes, closes) and nothing of the echo's.
    let added = kernel(&after, "events_out") - events_before;
    assert!(added < 40.0, "{added} events after muting ({events_before} before):\n{after}");
    drop(conn);
    let summary = agent.stop();
    assert_eq!(summary["spans"], 6, "{summary}");
    assert_eq!(summary["http"]["non_http_conns"], 1, "{summary}");
    assert_eq!(summary["http"]["muted_conns"], 1, "{summary}");
    assert_eq!(summary["kernel"]["muted"], 1, "{summary}");
}

/// Puts kernel.pid_max back when dropped.
struct PidMax(u32);

impl Drop for PidMax {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/pid_max", self.0.to_string());
    }
}

/// A process whose pid is beyond the selection array (kernel.pid_max raised after the agent
/// started) is counted and left out; tracing goes on.
#[test]
fn a_pid_beyond_the_pid_max_the_agent_started_with_is_counted_not_fatal() {
    let _g = serial();
    require_root();
    let old: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("tw-beyond-pid-max");
    // Alive long enough for the agent to read its /proc entry at exec (it runs for 2 s).
    std::fs::copy("/bin/sleep", &exe).unwrap();
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(&rx.endpoint(), &["--exe", "*tw-beyond-pid-max"]);
    let _restore = PidMax(old);
    std::fs::write("/proc/sys/kernel/pid_max", (old + 4096).to_string()).unwrap();
    // The next pid handed out is past the old maximum.
    std::fs::write("/proc/sys/kernel/ns_last_pid", (old + 100).to_string()).unwrap();
    let status = Command::new(&exe).arg("2").status().unwrap();
    assert!(status.success());
    drop(_restore);
    let summary = agent.stop();
    assert_eq!(summary["pids_beyond_max"], 1, "{summary}");
}

/// A span described on one line (service, name, path, statement), for messages.
fn describe_spans(spans: &[(String, Span)]) -> Vec<String> {
    spans
        .iter()
        .map(|(svc, s)| {
            format!("{svc}: {} {:?} {:?}", s.name, attr_str(s, "url.path"), attr_str(s, "db.query.text"))
        })
        .collect()
}

/// Privacy: none of `secrets` is in any attribute of a database span.
fn assert_db_spans_hide(spans: &[(String, Span)], secrets: &[&str]) {
    for (_, s) in spans.iter().filter(|(_, s)| attr_str(s, "db.system.name").is_some()) {
        for kv in &s.attributes {
            let v = format!("{:?}", kv.value);
            assert!(!secrets.iter().any(|x| v.contains(x)), "{}: {v}", kv.key);
        }
    }
}

/// The client spans the server span of `path` (to the database on `db_port`) made, in the order
/// they started; each in its trace and inside it.
fn db_children<'a>(spans: &'a [(String, Span)], path: &str, db_port: u16, summary: &Value) -> Vec<&'a Span> {
    let all = describe_spans(spans);
    let parent = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.kind == 2 && attr_str(s, "url.path").as_deref() == Some(path))
        .unwrap_or_else(|| panic!("no server span for {path}: {all:#?}\n{summary}"));
    let mut children: Vec<&Span> =
        spans.iter().map(|(_, s)| s).filter(|s| s.kind == 3 && s.parent_span_id == parent.span_id).collect();
    children.sort_by_key(|s| s.start_time_unix_nano);
    for c in &children {
        assert_eq!(c.trace_id, parent.trace_id);
        assert!(
            parent.start_time_unix_nano <= c.start_time_unix_nano
                && c.end_time_unix_nano <= parent.end_time_unix_nano,
            "{path}: {} inside its request",
            c.name
        );
        assert_eq!(attr_int(c, "server.port"), Some(i64::from(db_port)));
    }
    children
}

/// A service backed by PostgreSQL through libpq (psycopg2): each query it runs while serving a
/// request is a client span of that request, named and described by the database conventions,
/// with every literal taken out of its text; a failing query is an error span with its SQLSTATE.
/// pgbench runs prepared statements (the extended protocol): one span per execution.
#[test]
fn postgres_queries_are_client_spans_of_their_request_without_literals() {
    let _g = serial();
    require_root();
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE, name text); \
         INSERT INTO users (email, name) VALUES ('alice@example.com', 'Alice'), ('bob@example.com', 'Bob')",
    );
    let bench = |args: &[&str]| {
        let out = Command::new(std::path::Path::new(PG_BIN).join("pgbench"))
            .args(["-h", "127.0.0.1", "-U", "app", "-p", &pg.port.to_string()])
            .args(args)
            .arg("shop")
            .output()
            .expect("pgbench");
        assert!(out.status.success(), "pgbench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    bench(&["-i", "-q", "-s", "1"]);
    // The service connects before tracing starts: its connection is seen mid-stream.
    let mut service = Peer::python("db_server.py", &[&pg.port.to_string(), "app", "shop"]);
    let port: u16 = service.port();
    // pgbench, from its first connection: a shell the agent watches, which becomes pgbench
    // (an exec keeps a watched process watched) when told to.
    const TRANSACTIONS: usize = 20;
    let (pg_port, transactions) = (pg.port.to_string(), TRANSACTIONS.to_string());
    let mut load = held(
        std::path::Path::new(PG_BIN).join("pgbench"),
        &[
            "-h",
            "127.0.0.1",
            "-U",
            "app",
            "-p",
            &pg_port,
            "-n",
            "-S",
            "-M",
            "prepared",
            "-c",
            "1",
            "-t",
            &transactions,
            "shop",
        ],
    );
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--pid", &service.pid().to_string(), "--pid", &load.id().to_string()],
    );
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(http_get(&format!("{base}/user?email=alice%40example.com")), (200, "Alice".to_string()));
    assert_eq!(http_get(&format!("{base}/missing")), (500, "42P01".to_string()));
    assert_eq!(http_get(&format!("{base}/fresh")), (200, "2".to_string()));
    release(&mut load);
    assert!(load.wait().expect("pgbench").success(), "pgbench failed");
    let summary = agent.stop();
    let spans = rx.spans();
    let all = describe_spans(&spans);
    // Privacy: the value the service looked up is in no exported span.
    for (_, s) in &spans {
        for kv in &s.attributes {
            let v = format!("{:?}", kv.value);
            assert!(!v.contains("alice@example.com"), "{}: {v}", kv.key);
        }
    }
    let query_of = |path: &str| {
        let parent = spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.kind == 2 && attr_str(s, "url.path").as_deref() == Some(path))
            .unwrap_or_else(|| panic!("no server span for {path}: {all:#?}\n{summary}"));
        let children = db_children(&spans, path, pg.port, &summary);
        assert_eq!(children.len(), 1, "{path}: one query: {all:#?}\n{summary}");
        let q = children[0];
        assert_eq!(attr_str(q, "db.system.name").as_deref(), Some("postgresql"));
        (parent, q)
    };
    let (_, user) = query_of("/user");
    assert_eq!(user.name, "SELECT users");
    assert_eq!(attr_str(user, "db.query.text").as_deref(), Some("SELECT name FROM users WHERE email = ?"));
    assert_eq!(attr_str(user, "db.operation.name").as_deref(), Some("SELECT"));
    assert_eq!(attr_str(user, "db.collection.name").as_deref(), Some("users"));
    assert_eq!(attr_int(user, "db.response.returned_rows"), Some(1));
    assert_eq!(user.status.as_ref().map_or(0, |s| s.code), 0);
    let (missing_server, missing) = query_of("/missing");
    assert_eq!(attr_str(missing, "db.query.text").as_deref(), Some("SELECT * FROM nope WHERE id = ?"));
    assert_eq!(attr_str(missing, "db.response.status_code").as_deref(), Some("42P01"));
    assert_eq!(attr_str(missing, "error.type").as_deref(), Some("42P01"));
    assert_eq!(missing.status.as_ref().map(|s| s.code), Some(2), "an error span");
    assert_eq!(attr_int(missing_server, "http.response.status_code"), Some(500));
    // A connection opened while tracing: its startup names the database.
    let (_, fresh) = query_of("/fresh");
    assert_eq!(attr_str(fresh, "db.query.text").as_deref(), Some("SELECT count(*) FROM users"));
    assert_eq!(attr_str(fresh, "db.namespace").as_deref(), Some("shop"));
    // pgbench's prepared statement: parsed once, one span per execution.
    let selects = spans
        .iter()
        .filter(|(_, s)| {
            attr_str(s, "db.query.text").as_deref()
                == Some("SELECT abalance FROM pgbench_accounts WHERE aid = $1;")
        })
        .count();
    assert_eq!(selects, TRANSACTIONS, "{all:#?}\n{summary}");
    assert_eq!(summary["postgres"]["unframed"], 0, "{summary}");
    // The service's two, pgbench's (it checks the scale on a connection of its own first).
    assert!(summary["postgres"]["conns"].as_u64() >= Some(3), "{summary}");
    drop(service);
}

/// A service backed by Redis through redis-py, and redis-benchmark pipelining: each command the
/// service sends while serving a request is a client span of that request, named by the Redis
/// conventions, with every key and value taken out of its text; a pipeline written at once is a
/// batch; an error reply is an error span with its prefix; a value larger than the capture cap
/// is skipped by its length, not lost.
#[test]
fn redis_commands_are_client_spans_of_their_request_without_keys_or_values() {
    let _g = serial();
    require_root();
    let redis = Redis::start();
    // A server that speaks TLS, which the service calls on /secure (Python's OpenSSL).
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls_files(dir.path());
    let secure = Redis::start_tls(&cert, &key);
    // The service connects before tracing starts: its connection is seen mid-stream.
    let mut service = Peer::python("cache_server.py", &[&redis.port.to_string(), &secure.port.to_string()]);
    let port: u16 = service.port();
    // redis-benchmark, from its first connection: one client, ten commands a write.
    const REQUESTS: usize = 100;
    const PIPELINE: usize = 10;
    let (redis_port, requests, pipeline) =
        (redis.port.to_string(), REQUESTS.to_string(), PIPELINE.to_string());
    let mut load = held(
        "redis-benchmark",
        &["-p", &redis_port, "-c", "1", "-n", &requests, "-P", &pipeline, "-t", "set,get", "-q"],
    );
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--pid", &service.pid().to_string(), "--pid", &load.id().to_string()],
    );
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(http_get(&format!("{base}/cart?user=7")), (200, "cart".to_string()));
    assert_eq!(http_get(&format!("{base}/wrong")), (500, "ResponseError".to_string()));
    assert_eq!(http_get(&format!("{base}/big")), (200, "100000".to_string()));
    assert_eq!(http_get(&format!("{base}/burst")), (200, String::new()));
    assert_eq!(http_get(&format!("{base}/fresh")), (200, String::new()));
    assert_eq!(http_get(&format!("{base}/secure")), (200, String::new()));
    release(&mut load);
    assert!(load.wait().expect("redis-benchmark").success(), "redis-benchmark failed");
    let summary = agent.stop();
    let spans = rx.spans();
    let all = describe_spans(&spans);
    // Privacy: the keys and values the service used are in no span.
    assert_db_spans_hide(&spans, &["4111", "cart:7", "xxxx", "s3cret"]);
    let children_of = |path: &str| {
        let children = db_children(&spans, path, redis.port, &summary);
        for c in &children {
            assert_eq!(attr_str(c, "db.system.name").as_deref(), Some("redis"));
        }
        children
    };
    let text =
        |s: &opentelemetry_proto::tonic::trace::v1::Span| attr_str(s, "db.query.text").unwrap_or_default();
    let ok = |s: &opentelemetry_proto::tonic::trace::v1::Span| s.status.as_ref().map_or(0, |st| st.code) != 2;

    let cart = children_of("/cart");
    assert_eq!(cart.len(), 2, "{all:#?}");
    assert_eq!((cart[0].name.as_str(), text(cart[0]).as_str()), ("GET", "GET ?"));
    assert_eq!(attr_str(cart[0], "db.operation.name").as_deref(), Some("GET"));
    assert_eq!(cart[1].name, "BATCH");
    assert_eq!(text(cart[1]), "MULTI; HSET ? ? ? ? ?; EXPIRE ? ?; EXEC");
    assert_eq!(attr_int(cart[1], "db.operation.batch.size"), Some(4));
    assert!(ok(cart[0]) && ok(cart[1]));

    let wrong = children_of("/wrong");
    assert_eq!(wrong.len(), 1, "{all:#?}");
    assert_eq!((wrong[0].name.as_str(), text(wrong[0]).as_str()), ("HGET", "HGET ? ?"));
    assert_eq!(attr_str(wrong[0], "db.response.status_code").as_deref(), Some("WRONGTYPE"));
    assert_eq!(attr_str(wrong[0], "error.type").as_deref(), Some("WRONGTYPE"));
    assert!(!ok(wrong[0]), "an error span");

    // The 100,000-byte reply: one span, which ends when its last byte is read.
    let big = children_of("/big");
    assert_eq!(big.len(), 1, "{all:#?}");
    assert_eq!(text(big[0]), "GET ?");

    let burst = children_of("/burst");
    assert_eq!(burst.len(), 3, "{all:#?}");
    for b in &burst {
        assert_eq!((b.name.as_str(), text(b).as_str()), ("BATCH INCRBY", "INCRBY ? ?; INCRBY ? ?"));
        assert_eq!(attr_int(b, "db.operation.batch.size"), Some(2));
    }

    // A connection opened while tracing: it selects database 2, which later spans name.
    let fresh = children_of("/fresh");
    let select = fresh.iter().position(|s| s.name == "SELECT").unwrap_or_else(|| panic!("{all:#?}"));
    let get = fresh.last().unwrap_or_else(|| panic!("{all:#?}"));
    assert!(select < fresh.len() - 1 && get.name == "GET", "{all:#?}");
    assert_eq!(attr_str(get, "db.namespace").as_deref(), Some("2"));

    // redis-benchmark: every write of ten commands is one batch.
    for name in ["BATCH SET", "BATCH GET"] {
        let batches: Vec<_> = spans.iter().map(|(_, s)| s).filter(|s| s.name == name).collect();
        assert_eq!(batches.len(), REQUESTS / PIPELINE, "{name}: {all:#?}\n{summary}");
        assert!(batches.iter().all(|s| attr_int(s, "db.operation.batch.size") == Some(PIPELINE as i64)));
    }
    // Over TLS: read in plain text through Python's OpenSSL.
    let secured = db_children(&spans, "/secure", secure.port, &summary);
    let set = secured.last().unwrap_or_else(|| panic!("the SET over TLS: {all:#?}\n{summary}"));
    assert_eq!((set.name.as_str(), text(set).as_str()), ("SET", "SET ? ?"));
    assert!(summary["http"]["tls_conns"].as_u64() >= Some(1), "{summary}");
    assert_eq!(summary["redis"]["unframed"], 0, "{summary}");
    assert_eq!(summary["redis"]["unpaired"], 0, "{summary}");
    assert!(summary["redis"]["conns"].as_u64() >= Some(3), "{summary}");
    drop(service);
}

/// A service backed by memcached through pymemcache: each command is a client span of the
/// request it serves, named by it, with the values a read found (`db.response.returned_rows`: a
/// miss is 0) and a server's error as the span's error; commands sent with `noreply` end where
/// they were written; meta commands in quiet mode and the `mn` after them are one batch. Keys and
/// values stay out of the spans.
#[test]
fn memcached_commands_are_client_spans_of_their_request_without_keys_or_values() {
    let _g = serial();
    require_root();
    let server = Memcached::start();
    // The service connects (and stores its values) before tracing starts.
    let mut service = Peer::python("memcache_server.py", &[&server.port.to_string()]);
    let port: u16 = service.port();
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(&rx.endpoint(), &["--pid", &service.pid().to_string()]);
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(http_get(&format!("{base}/user?id=7")), (200, String::new()));
    assert_eq!(http_get(&format!("{base}/many")), (200, "2".to_string()));
    assert_eq!(http_get(&format!("{base}/big")), (200, "100000".to_string()));
    assert_eq!(http_get(&format!("{base}/count")), (200, "2".to_string()));
    assert_eq!(http_get(&format!("{base}/wrong")), (500, "MemcacheClientError".to_string()));
    assert_eq!(http_get(&format!("{base}/meta")), (200, "VA 2\r\nhi\r\nMN\r\n".to_string()));
    assert_eq!(http_get(&format!("{base}/fresh")), (200, String::new()));
    let summary = agent.stop();
    let spans = rx.spans();
    let all = describe_spans(&spans);
    assert_db_spans_hide(&spans, &["user:7", "alice", "xxxx", "mk"]);
    let children_of = |path: &str| {
        let children = db_children(&spans, path, server.port, &summary);
        for c in &children {
            assert_eq!(attr_str(c, "db.system.name").as_deref(), Some("memcached"), "{all:#?}");
            assert_eq!(c.name, attr_str(c, "db.operation.name").unwrap_or_default(), "{all:#?}");
        }
        children
    };
    let rows = |s: &Span| attr_int(s, "db.response.returned_rows");
    let ok = |s: &Span| s.status.as_ref().map_or(0, |st| st.code) != 2;
    let names = |c: &[&Span]| c.iter().map(|s| s.name.clone()).collect::<Vec<_>>();

    // A miss, then a set that asks for no reply: it ends where it was written.
    let user = children_of("/user");
    assert_eq!(names(&user), ["get", "set"], "{all:#?}");
    assert_eq!(rows(user[0]), Some(0), "a miss");
    assert_eq!(rows(user[1]), None);
    assert_eq!(user[1].start_time_unix_nano, user[1].end_time_unix_nano, "noreply: {all:#?}");
    let many = children_of("/many");
    assert_eq!(names(&many), ["get"], "{all:#?}");
    assert_eq!(rows(many[0]), Some(2), "two of three keys found");
    // The 100,000-byte value (beyond the capture cap): skipped by its length.
    let big = children_of("/big");
    assert_eq!(names(&big), ["get"], "{all:#?}");
    assert_eq!(rows(big[0]), Some(1));
    assert_eq!(names(&children_of("/count")), ["set", "incr", "incr"], "{all:#?}");
    let wrong = children_of("/wrong");
    assert_eq!(names(&wrong), ["incr"], "{all:#?}");
    assert_eq!(attr_str(wrong[0], "db.response.status_code").as_deref(), Some("CLIENT_ERROR"));
    assert_eq!(attr_str(wrong[0], "error.type").as_deref(), Some("CLIENT_ERROR"));
    assert!(!ok(wrong[0]), "an error span");
    assert!(user.iter().chain(&many).all(|s| ok(s)));
    // Quiet meta commands and their mn, in one write: one batch, which found one value.
    let meta = children_of("/meta");
    assert_eq!(names(&meta), ["BATCH"], "{all:#?}");
    assert_eq!(attr_int(meta[0], "db.operation.batch.size"), Some(4));
    assert_eq!(rows(meta[0]), Some(1));
    assert_eq!(names(&children_of("/fresh")), ["get"], "{all:#?}");
    assert_eq!(summary["memcached"]["unframed"], 0, "{summary}");
    assert_eq!(summary["memcached"]["unpaired"], 0, "{summary}");
    assert_eq!(summary["memcached"]["rejected"], 0, "{summary}");
    assert!(summary["memcached"]["conns"].as_u64() >= Some(3), "{summary}");
    drop(service);
}

/// A service backed by MariaDB through mysql-connector-python, and the `mariadb` command-line
/// client (libmariadb): each statement is a client span of the request it serves, named by the
/// database conventions, with every literal taken out of its text; a prepared statement's
/// executions carry the text it was prepared with; an error is an error span with its number;
/// a result larger than the capture cap counts its rows; a connection seen from its greeting
/// names the server (`mariadb`) and the database, in plain text or over TLS.
#[test]
fn mysql_statements_are_client_spans_of_their_request_without_literals() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls_files(dir.path());
    let db = MariaDb::start(&cert, &key);
    db.sql("", "CREATE DATABASE shop");
    db.sql(
        "shop",
        "CREATE TABLE users (id int PRIMARY KEY, email varchar(64), name varchar(64)); \
         INSERT INTO users VALUES (1, 'alice@example.com', 'Alice'), (2, 'bob@example.com', 'Bob'); \
         CREATE TABLE products (sku varchar(16) PRIMARY KEY, price decimal(8,2)); \
         INSERT INTO products VALUES ('A1', 9.99); \
         CREATE TABLE numbers (id int PRIMARY KEY, email varchar(64)); \
         INSERT INTO numbers SELECT seq, concat('user', seq, '@example.com') FROM seq_1_to_2000",
    );
    // The service connects before tracing starts: its connection is seen mid-stream.
    let mut service = Peer::python("mysql_server.py", &[&db.port.to_string(), "app", "shop"]);
    let port: u16 = service.port();
    // The mariadb client takes TLS (the server offers it) on its one connection, as soon as it
    // starts: selected before its exec, it is probed on the host's OpenSSL before it maps it.
    let mut args = db.client_args("shop");
    args.extend(["-e", "SELECT name FROM users WHERE email = 'bob@example.com'"].map(str::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cli = held("mariadb", &args);
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--pid", &service.pid().to_string(), "--pid", &cli.id().to_string()],
    );
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(http_get(&format!("{base}/user?email=alice%40example.com")), (200, "Alice".to_string()));
    assert_eq!(http_get(&format!("{base}/price?sku=A1")), (200, "9.99".to_string()));
    assert_eq!(http_get(&format!("{base}/price?sku=B2")), (200, String::new()));
    assert_eq!(http_get(&format!("{base}/missing")), (500, "1146".to_string()));
    assert_eq!(http_get(&format!("{base}/many")), (200, "2000".to_string()));
    assert_eq!(http_get(&format!("{base}/fresh")), (200, "2".to_string()));
    assert_eq!(http_get(&format!("{base}/secure")), (200, "2".to_string()));
    release(&mut cli);
    assert!(cli.wait().expect("mariadb").success(), "mariadb failed");
    let summary = agent.stop();
    let spans = rx.spans();
    let all = describe_spans(&spans);
    // Privacy: the values the statements used, and the rows they read, are in no span.
    assert_db_spans_hide(&spans, &["example.com", "A1"]);
    let statements_of = |path: &str| db_children(&spans, path, db.port, &summary);
    let text =
        |s: &opentelemetry_proto::tonic::trace::v1::Span| attr_str(s, "db.query.text").unwrap_or_default();
    fn with_text<'a>(children: &[&'a Span], t: &str) -> Option<&'a Span> {
        children.iter().copied().find(|s| attr_str(s, "db.query.text").as_deref() == Some(t))
    }
    let find = |path: &str, t: &str| {
        with_text(&statements_of(path), t).unwrap_or_else(|| panic!("{path}: no {t:?}: {all:#?}"))
    };
    let user = find("/user", "SELECT name FROM users WHERE email = ?");
    assert_eq!(user.name, "SELECT users");
    assert_eq!(attr_str(user, "db.operation.name").as_deref(), Some("SELECT"));
    assert_eq!(attr_str(user, "db.collection.name").as_deref(), Some("users"));
    assert_eq!(attr_int(user, "db.response.returned_rows"), Some(1));
    // The prepared statement: prepared in the first request, its text on both executions.
    let price = find("/price", "SELECT price FROM products WHERE sku = ?");
    assert_eq!(price.name, "SELECT products");
    let executions =
        spans.iter().filter(|(_, s)| text(s) == "SELECT price FROM products WHERE sku = ?").count();
    assert_eq!(executions, 2, "{all:#?}");
    let missing = find("/missing", "SELECT * FROM nope WHERE id = ?");
    assert_eq!(attr_str(missing, "db.response.status_code").as_deref(), Some("1146"));
    assert_eq!(attr_str(missing, "error.type").as_deref(), Some("1146"));
    assert_eq!(missing.status.as_ref().map(|s| s.code), Some(2), "an error span");
    let many = find("/many", "SELECT id, email FROM numbers");
    assert_eq!(attr_int(many, "db.response.returned_rows"), Some(2000));
    // Connections seen from their greeting: the server and the database are named.
    // Over TLS too: the handshake after the SSL request is read in plain text (Python's OpenSSL).
    for path in ["/fresh", "/secure"] {
        let fresh = find(path, "SELECT count(*) FROM users");
        assert_eq!(attr_str(fresh, "db.system.name").as_deref(), Some("mariadb"), "{path}");
        assert_eq!(attr_str(fresh, "db.namespace").as_deref(), Some("shop"), "{path}");
    }
    // /secure's connection and the client's.
    assert!(summary["mysql"]["encrypted"].as_u64() >= Some(2), "{summary}");
    assert!(summary["http"]["tls_conns"].as_u64() >= Some(1), "{summary}");
    let bob = spans
        .iter()
        .find(|(_, s)| text(s) == "SELECT name FROM users WHERE email = ?" && s.parent_span_id.is_empty())
        .unwrap_or_else(|| panic!("the mariadb client's statement: {all:#?}"));
    assert_eq!(attr_str(&bob.1, "db.system.name").as_deref(), Some("mariadb"));
    assert_eq!(attr_str(&bob.1, "db.namespace").as_deref(), Some("shop"));
    assert_eq!(summary["mysql"]["unframed"], 0, "{summary}");
    assert!(summary["mysql"]["conns"].as_u64() >= Some(3), "{summary}");
    drop(service);
}

/// A self-signed certificate for localhost and its key, as PEM files in `dir`.
fn tls_files(dir: &std::path::Path) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    fs::write(&c, cert.cert.pem()).unwrap();
    fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

/// A hop of tests/peers/hop.py serving HTTPS with `cert`/`key` on 127.0.0.1, calling `next`
/// (https, verified with `cert`). `wait`: it loads OpenSSL only when told to (see hop.py).
fn tls_hop((cert, key): &(String, String), next: Option<&str>, wait: bool) -> Peer {
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("tests/peers/hop.py")).args(["127.0.0.1", &free_port().to_string()]);
    cmd.args(next).env("HOP_TLS_CERT", cert).env("HOP_TLS_KEY", key).env("HOP_TLS_CA", cert);
    cmd.env("OTEL_SERVICE_NAME", "tls-hop");
    if wait {
        cmd.env("HOP_WAIT", "1");
    }
    Peer::spawn(&mut cmd)
}

/// The server span of request `/hop/{id}` on `port`.
fn find_server_span<'a>(
    spans: &'a [opentelemetry_proto::tonic::trace::v1::Span],
    id: &str,
    port: u16,
    all: &[String],
    summary: &serde_json::Value,
) -> &'a opentelemetry_proto::tonic::trace::v1::Span {
    spans
        .iter()
        .find(|s| {
            s.kind == 2
                && attr_str(s, "url.path").as_deref() == Some(&format!("/hop/{id}"))
                && attr_int(s, "server.port") == Some(i64::from(port))
        })
        .unwrap_or_else(|| panic!("no server span for {id} on {port}: {all:#?}\n{summary}"))
}

/// Checks the traces of HTTPS requests `/hop/{id}?api_key=...` sent to a middle service on
/// `mid_port` that calls a leaf on `leaf_port` over HTTPS: for each id, the middle's server
/// span, its call and the leaf's server span make one trace, each the parent of the next, with
/// the query redacted everywhere. Returns the spans' one-line descriptions (for messages).
fn tls_chains(
    spans: &[opentelemetry_proto::tonic::trace::v1::Span],
    summary: &serde_json::Value,
    ids: &[&str],
    mid_port: u16,
    leaf_port: u16,
) -> Vec<String> {
    let all: Vec<String> = spans
        .iter()
        .map(|s| {
            format!("{} kind={} {:?} {:?}", s.name, s.kind, attr_str(s, "url.path"), attr_str(s, "url.full"))
        })
        .collect();
    // Bodies and secrets stay out: the query value is redacted wherever the request appears.
    for s in spans {
        for kv in &s.attributes {
            let v = format!("{:?}", kv.value);
            assert!(!v.contains("zz-secret-zz"), "{}: {v}", kv.key);
        }
    }
    for &id in ids {
        let m = find_server_span(spans, id, mid_port, &all, summary);
        let l = find_server_span(spans, id, leaf_port, &all, summary);
        let call = spans
            .iter()
            .find(|s| {
                s.kind == 3
                    && attr_str(s, "url.full").as_deref()
                        == Some(&format!("https://localhost:{leaf_port}/hop/{id}?api_key=REDACTED"))
            })
            .unwrap_or_else(|| panic!("no client span for {id}: {all:#?}\n{summary}"));
        for s in [m, l] {
            assert_eq!(attr_str(s, "url.scheme").as_deref(), Some("https"), "{id}");
            assert_eq!(attr_str(s, "url.query").as_deref(), Some("api_key=REDACTED"), "{id}");
            assert_eq!(attr_int(s, "http.response.status_code"), Some(200), "{id}");
        }
        // The call is a child of the request it was made for (its thread), and the server it
        // reached is the call's child (the TCP option rides under TLS): one trace.
        assert_eq!(call.parent_span_id, m.span_id, "{id}: {all:#?}");
        assert_eq!(l.parent_span_id, call.span_id, "{id}: {all:#?}");
        assert!(m.trace_id == call.trace_id && call.trace_id == l.trace_id, "{id}");
        assert!(
            m.start_time_unix_nano <= call.start_time_unix_nano
                && call.end_time_unix_nano <= m.end_time_unix_nano
        );
    }
    all
}

#[test]
fn tls_connections_are_read_in_plain_text_through_openssl() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let files = tls_files(dir.path());
    let mut leaf = tls_hop(&files, None, false);
    let leaf_port = leaf.port();
    let mut mid = tls_hop(&files, Some(&format!("https://localhost:{leaf_port}")), false);
    let mid_port = mid.port();
    // A service that maps OpenSSL only after the agent started: its library is found when it
    // listens.
    let mut late = tls_hop(&files, None, true);
    late.expect("waiting");
    let rx = Receiver::start(vec![]);
    let mut agent = RunAgent::start(
        &rx.endpoint(),
        &[
            "--pid",
            &mid.pid().to_string(),
            "--pid",
            &leaf.pid().to_string(),
            "--pid",
            &late.pid().to_string(),
        ],
    );
    late.send("go");
    let late_port = late.port();
    agent.wait_line(&format!("pid {} loaded a TLS library", late.pid()));
    let ids = ["tls1", "tls2", "tls3"];
    for id in ids {
        curl(&format!("https://localhost:{mid_port}/hop/{id}?api_key=zz-secret-zz"), &["--cacert", &files.0]);
    }
    curl(&format!("https://localhost:{late_port}/hop/late1"), &["--cacert", &files.0]);
    let summary = agent.stop();
    let spans: Vec<_> = rx.spans().into_iter().map(|(_, s)| s).collect();
    let all = tls_chains(&spans, &summary, &ids, mid_port, leaf_port);
    let late_span = find_server_span(&spans, "late1", late_port, &all, &summary);
    assert_eq!(attr_str(late_span, "url.scheme").as_deref(), Some("https"));
    assert_eq!(spans.len(), ids.len() * 3 + 1, "{all:#?}\n{summary}");
    assert_eq!(summary["tls_followed"], 3, "{summary}");
    assert_eq!(summary["tls_not_followed"], 0, "{summary}");
    // Every connection was read in plain text: curl's to the middle and the late service, the
    // middle's to the leaf (both ends).
    assert_eq!(summary["http"]["tls_conns"], 10, "{summary}");
    assert_eq!(summary["http"]["non_http_conns"], 0, "{summary}");
    assert_eq!(summary["kernel"]["tls_no_conn"], 0, "{summary}");
    assert_eq!(summary["kernel"]["tls_calls_full"], 0, "{summary}");
    assert!(summary["kernel"]["tls_ciphertext"].as_u64() > Some(0), "{summary}");
}

/// The client span of `url` and the server span it reached (its child, the same trace).
fn tls_call_and_server<'a>(
    spans: &'a [Span],
    url: &str,
    path: &str,
    summary: &Value,
) -> (&'a Span, &'a Span) {
    let all: Vec<String> =
        spans.iter().map(|s| format!("{} kind={} {:?}", s.name, s.kind, attr_str(s, "url.full"))).collect();
    let call = spans
        .iter()
        .find(|s| s.kind == 3 && attr_str(s, "url.full").as_deref() == Some(url))
        .unwrap_or_else(|| panic!("no client span for {url}: {all:#?}\n{summary}"));
    let server = spans
        .iter()
        .find(|s| s.kind == 2 && attr_str(s, "url.path").as_deref() == Some(path))
        .unwrap_or_else(|| panic!("no server span for {path}: {all:#?}\n{summary}"));
    assert_eq!(server.parent_span_id, call.span_id, "{url}: {all:#?}");
    assert_eq!(server.trace_id, call.trace_id, "{url}");
    (call, server)
}

/// A client that starts and makes its TLS call at once (curl in a job, a database client) is
/// read from its first call, before the agent has even read its exec: with every process traced,
/// the host's OpenSSL is probed for all of them from the start; with processes selected, a
/// selected one is probed on the host's libraries before its exec maps them.
#[test]
fn tls_clients_are_read_from_their_first_call() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let files = tls_files(dir.path());
    // Node has OpenSSL in its executable: no process here maps the host's libssl before curl.
    let mut leaf = node_tls_hop(&files, None, false);
    let leaf_port = leaf.port();
    let base = format!("https://localhost:{leaf_port}/hop");

    // Every process traced (those talking to the leaf's port): three curls, each a new process.
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(&rx.endpoint(), &["--port", &leaf_port.to_string()]);
    let ids = ["first1", "first2", "first3"];
    for id in ids {
        curl(&format!("{base}/{id}"), &["--cacert", &files.0]);
    }
    let summary = agent.stop();
    let spans: Vec<Span> = rx.spans().into_iter().map(|(_, s)| s).collect();
    for id in ids {
        let (_, server) =
            tls_call_and_server(&spans, &format!("{base}/{id}"), &format!("/hop/{id}"), &summary);
        assert_eq!(attr_str(server, "url.scheme").as_deref(), Some("https"), "{id}");
        assert_eq!(attr_int(server, "http.response.status_code"), Some(200), "{id}");
    }
    assert_eq!(spans.len(), ids.len() * 2, "{summary}");

    // One process selected, which execs curl once the agent runs.
    let url = format!("{base}/held1");
    let mut client = held("curl", &["-s", "-o", "/dev/null", "--cacert", &files.0, &url]);
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--pid", &client.id().to_string(), "--pid", &leaf.pid().to_string()],
    );
    release(&mut client);
    assert!(client.wait().expect("curl").success(), "curl failed");
    let summary = agent.stop();
    let spans: Vec<Span> = rx.spans().into_iter().map(|(_, s)| s).collect();
    tls_call_and_server(&spans, &url, "/hop/held1", &summary);
    assert_eq!(summary["kernel"]["tls_no_conn"], 0, "{summary}");
    drop(leaf);
}

/// A hop of tests/peers/hop.js serving HTTPS with `cert`/`key` on 127.0.0.1, calling `next`
/// (https, trusting `cert`).
fn node_tls_hop((cert, key): &(String, String), next: Option<&str>, keep_alive: bool) -> Peer {
    let mut cmd = Command::new("node");
    cmd.arg(repo().join("tests/peers/hop.js")).args(["127.0.0.1", &free_port().to_string()]);
    cmd.args(next).env("HOP_TLS_CERT", cert).env("HOP_TLS_KEY", key).env("HOP_TLS_CA", cert);
    cmd.env("HOP_KEEPALIVE", if keep_alive { "1" } else { "0" });
    Peer::spawn(&mut cmd)
}

/// Node.js and Python's asyncio run OpenSSL over memory buffers: the event loop reads and writes
/// the ciphertext itself, outside any library call, so no socket call inside `SSL_read`/`SSL_write` names the
/// session's connection. The connection is named by the ciphertext its thread read just before
/// the call; a client's request turn starts at `SSL_write`'s return, before its ciphertext
/// leaves, so the TCP option carries the call's context to the next service. Calls on a fresh
/// connection each (the handshake's turn) and on one kept alive (later requests) both link.
#[test]
fn tls_over_memory_buffers_is_read_in_plain_text_node_and_asyncio() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let files = tls_files(dir.path());
    let mut leaf = node_tls_hop(&files, None, false);
    let leaf_port = leaf.port();
    let mut mid = node_tls_hop(&files, Some(&format!("https://localhost:{leaf_port}")), false);
    let mid_port = mid.port();
    let mut pooled = node_tls_hop(&files, Some(&format!("https://localhost:{leaf_port}")), true);
    let pooled_port = pooled.port();
    let mut aio = Peer::spawn(
        Command::new("python3")
            .arg(repo().join("tests/peers/async_tls.py"))
            .args(["127.0.0.1", &free_port().to_string()])
            .env("HOP_TLS_CERT", &files.0)
            .env("HOP_TLS_KEY", &files.1),
    );
    let aio_port = aio.port();
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(
        &rx.endpoint(),
        &[
            "--pid",
            &mid.pid().to_string(),
            "--pid",
            &leaf.pid().to_string(),
            "--pid",
            &aio.pid().to_string(),
            "--pid",
            &pooled.pid().to_string(),
        ],
    );
    let ids = ["n1", "n2", "n3", "n4"];
    for id in ids {
        curl(&format!("https://localhost:{mid_port}/hop/{id}?api_key=zz-secret-zz"), &["--cacert", &files.0]);
    }
    // The same calls over one connection kept alive.
    let pooled_ids = ["k1", "k2", "k3"];
    for id in pooled_ids {
        curl(
            &format!("https://localhost:{pooled_port}/hop/{id}?api_key=zz-secret-zz"),
            &["--cacert", &files.0],
        );
    }
    // asyncio's SSL protocol, on the same kind of event loop.
    let aio_ids = ["a1", "a2"];
    for id in aio_ids {
        curl(&format!("https://localhost:{aio_port}/hop/{id}?api_key=zz-secret-zz"), &["--cacert", &files.0]);
    }
    let summary = agent.stop();
    let spans: Vec<_> = rx.spans().into_iter().map(|(_, s)| s).collect();
    let all = tls_chains(&spans, &summary, &ids, mid_port, leaf_port);
    tls_chains(&spans, &summary, &pooled_ids, pooled_port, leaf_port);
    for id in aio_ids {
        let s = find_server_span(&spans, id, aio_port, &all, &summary);
        assert_eq!(attr_str(s, "url.scheme").as_deref(), Some("https"), "{id}");
        assert_eq!(attr_int(s, "http.response.status_code"), Some(200), "{id}");
    }
    assert_eq!(spans.len(), (ids.len() + pooled_ids.len()) * 3 + aio_ids.len(), "{all:#?}\n{summary}");
    assert_eq!(summary["tls_followed"], 4, "{summary}");
    // Every connection was read in plain text (curl's to the middle, the middle's to the leaf at
    // both ends; the pooled middle's one connection to the leaf), and none of the ciphertext
    // reached userspace.
    assert_eq!(
        summary["http"]["tls_conns"],
        3 * ids.len() + pooled_ids.len() + 2 + aio_ids.len(),
        "{summary}"
    );
    assert_eq!(summary["http"]["non_http_conns"], 0, "{summary}");
    assert_eq!(summary["kernel"]["tls_no_conn"], 0, "{summary}");
    assert!(summary["kernel"]["tls_ciphertext"].as_u64() > Some(0), "{summary}");
}

/// A service of tests/peers/hop.go serving HTTPS with `cert`/`key` on 127.0.0.1 as `name`, calling
/// `next` over pooled connections (HTTP/2 when `h2`, else HTTP/1.1) that trust `cert`.
fn go_tls_hop(
    go_bin: &std::path::Path,
    (cert, key): &(String, String),
    name: &str,
    next: Option<String>,
    h2: bool,
) -> (Peer, u16) {
    let mut cmd = Command::new(go_bin);
    cmd.args(["127.0.0.1", &free_port().to_string()]).args(next);
    cmd.env("OTEL_SERVICE_NAME", name).env("HOP_TLS_CERT", cert).env("HOP_TLS_KEY", key);
    cmd.env("HOP_TLS_CA", cert).env("HOP_KEEPALIVE", "1").env("HOP_H2", if h2 { "1" } else { "0" });
    let mut peer = Peer::spawn(&mut cmd);
    let port = peer.port();
    (peer, port)
}

/// Go services talking HTTPS with crypto/tls (no OpenSSL): a Go front calls a Go leaf over a
/// pooled TLS connection for each request, served over HTTP/1.1 and over HTTP/2 (ALPN). Every
/// request, call and leaf request is read in plain text, each call is the child of the request
/// its goroutine serves (the connection under the *tls.Conn is tied at roundTrip), and the leaf
/// joins the trace (TCP option under TLS). A pooled connection opened before tracewire, whose
/// reads were blocked from before, is read whole too.
#[test]
fn go_tls_connections_are_read_in_plain_text_through_crypto_tls() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let go_bin = build_go_hop(dir.path());
    let bin = tracewire::capture::runtime::inspect_go(&go_bin).expect("a followable Go binary");
    let tls = bin.tls.as_ref().expect("crypto/tls followed");
    // Every probe sits on an instruction the kernel emulates: the stack check's branch (jbe), or
    // Read's call of runtime.memmove.
    let code = fs::read(&go_bin).unwrap();
    for off in [tls.write, tls.read].into_iter().chain(tls.handshakes.iter().copied()) {
        let op = &code[off as usize..off as usize + 2];
        assert!(op[0] == 0x76 || op == [0x0f, 0x86], "{off:#x}: {op:02x?}");
    }
    assert_eq!(code[tls.read_copy as usize], 0xe8, "{tls:?}");
    // Read keeps its receiver in its spill slot (Go 1.19: a 0x68-byte frame, the slot above the
    // return address), read at the copy: its entry is not probed.
    assert_eq!(tls.read_conn_at, Some(0x70), "{tls:?}");
    // Both roles are in the binary (it serves and calls), and tls.Conn's conn comes first.
    assert_eq!((tls.handshakes.len(), tls.tls_conn), (2, 0), "{tls:?}");
    assert!(tls.tls_itab > 0, "{tls:?}");

    let files = tls_files(dir.path());
    let go_hop = |name: &str, next: Option<String>| go_tls_hop(&go_bin, &files, name, next, false);
    let (leaf, leaf_port) = go_hop("go-tls-leaf", None);
    let (front, front_port) = go_hop("go-tls", Some(format!("https://localhost:{leaf_port}")));
    // Another front calls the leaf once before tracewire starts: its pooled connection's
    // handshake goes unseen, and both ends' reads are blocked from before.
    let (early, early_port) = go_hop("go-tls-early", Some(format!("https://localhost:{leaf_port}")));
    curl(&format!("https://localhost:{early_port}/hop/warmup"), &["--cacert", &files.0]);
    let rx = Receiver::start(vec![]);
    let pids = [&front, &leaf, &early].map(|p| p.pid().to_string());
    let mut agent =
        RunAgent::start(&rx.endpoint(), &["--pid", &pids[0], "--pid", &pids[1], "--pid", &pids[2]]);
    let late: Vec<String> = (0..4).map(|i| format!("early{i}")).collect();
    for id in &late {
        curl(&format!("https://localhost:{early_port}/hop/{id}"), &["--cacert", &files.0, "--http1.1"]);
    }
    let h1: Vec<String> = (0..6).map(|i| format!("gotls{i}")).collect();
    let h2: Vec<String> = (0..3).map(|i| format!("gotlsh2{i}")).collect();
    for id in &h1 {
        curl(
            &format!("https://localhost:{front_port}/hop/{id}?token=zz-secret-zz"),
            &["--cacert", &files.0, "--http1.1"],
        );
    }
    // The HTTP/2 handlers' goroutines inherit their stream once goroutine creation is followed,
    // from the front's first call on.
    agent.wait_line(&format!("pid {} made its first net/http call", front.pid()));
    for id in &h2 {
        curl(&format!("https://localhost:{front_port}/hop/{id}"), &["--cacert", &files.0, "--http2"]);
    }
    let summary = agent.stop();
    let spans = rx.spans();
    let names: Vec<String> = spans.iter().map(|(v, s)| format!("{v} {} {}", s.kind, s.name)).collect();
    for (_, s) in &spans {
        for kv in &s.attributes {
            assert!(!format!("{:?}", kv.value).contains("zz-secret-zz"), "{}", kv.key);
        }
    }
    let (servers, calls, leaves) =
        (by_rid(&spans, "go-tls", 2), by_rid(&spans, "go-tls", 3), by_rid(&spans, "go-tls-leaf", 2));
    let n = h1.len() + h2.len();
    let front_leaves = h1.iter().chain(&h2).filter(|id| leaves.contains_key(*id)).count();
    assert_eq!((servers.len(), calls.len(), front_leaves), (n, n, n), "{names:#?}\n{summary}");
    for id in h1.iter().chain(&h2) {
        let (s, c, l) = (servers[id], calls[id], leaves[id]);
        assert_eq!(attr_str(s, "url.scheme").as_deref(), Some("https"), "{id}");
        assert_eq!(attr_int(s, "http.response.status_code"), Some(200), "{id}");
        assert_eq!(attr_str(c, "url.full"), Some(format!("https://localhost:{leaf_port}/hop/{id}")), "{id}");
        assert_eq!(attr_int(l, "http.response.status_code"), Some(200), "{id}");
        // The leaf's request is the call's child (TCP option), over HTTP/1.1 pooled connections.
        assert_eq!((&l.parent_span_id, &l.trace_id), (&c.span_id, &c.trace_id), "{id}: {names:#?}");
    }
    for id in &h1 {
        let (s, c) = (servers[id], calls[id]);
        assert_eq!(attr_str(s, "url.query").as_deref(), Some("token=REDACTED"), "{id}");
        // The call is its request's child, followed from the serving goroutine.
        assert_eq!(
            (&c.parent_span_id, &c.trace_id),
            (&s.span_id, &s.trace_id),
            "{id}: {names:#?}\n{summary}"
        );
        assert!(
            s.start_time_unix_nano <= c.start_time_unix_nano && c.end_time_unix_nano <= s.end_time_unix_nano
        );
    }
    for id in &h2 {
        assert_eq!(attr_str(servers[id], "network.protocol.version").as_deref(), Some("2"), "{id}");
    }
    // The connection opened before: its reads blocked from before tracewire are named by the
    // socket read under them, and a first read from the middle of its TLS session is known by
    // its record header: all of it is read, at both ends.
    let (early_servers, early_calls) = (by_rid(&spans, "go-tls-early", 2), by_rid(&spans, "go-tls-early", 3));
    assert_eq!(early_servers.len(), late.len(), "{names:#?}\n{summary}");
    for id in &late {
        let (s, c, l) = (early_servers[id], early_calls.get(id), leaves.get(id));
        let c = c.unwrap_or_else(|| panic!("{id}: no call: {names:#?}\n{summary}"));
        assert_eq!(
            (&c.parent_span_id, &c.trace_id),
            (&s.span_id, &s.trace_id),
            "{id}: {names:#?}\n{summary}"
        );
        assert_eq!(attr_int(c, "http.response.status_code"), Some(200), "{id}");
        let l = l.unwrap_or_else(|| panic!("{id}: no leaf request: {names:#?}\n{summary}"));
        assert_eq!(attr_str(l, "url.scheme").as_deref(), Some("https"), "{id}");
    }
    assert_eq!(summary["kernel"]["tls_no_conn"], 0, "{summary}");
    assert_eq!(summary["http"]["invalid"], serde_json::json!({}), "{summary}");
    assert_eq!(summary["http"]["no_response"], 0, "{summary}");
    assert_eq!(summary["go_tls_followed"], 3, "{summary}");
    assert_eq!(summary["http2"]["conns"], h2.len(), "{summary}");
    assert_eq!(summary["http"]["non_http_conns"], 0, "{summary}");
    assert!(summary["kernel"]["tls_ciphertext"].as_u64() > Some(0), "{summary}");
    // The HTTP/2 streams' calls too: their handlers' goroutines inherit the stream.
    assert_eq!(summary["kernel"]["go_linked"], h1.len() + h2.len() + late.len(), "{summary}");
    for id in &h2 {
        let (s, c) = (servers[id], calls[id]);
        assert_eq!(
            (&c.parent_span_id, &c.trace_id),
            (&s.span_id, &s.trace_id),
            "{id}: {names:#?}\n{summary}"
        );
    }
}

/// Go services over HTTP/2 (net/http over TLS, `h2` by ALPN): curl asks the front for HTTP/2,
/// and the front calls its leaf over one pooled HTTP/2 connection. Each call is the child of the
/// stream its handler serves (the goroutine that starts the handler is noted as serving the
/// stream; the handler and the transport goroutine that writes the call inherit it), and the
/// leaf's stream is the call's child (TCP option, a context per request's HEADERS).
#[test]
fn go_http2_calls_are_children_of_the_stream_they_serve() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let go_bin = build_go_hop(dir.path());
    let bin = tracewire::capture::runtime::inspect_go(&go_bin).expect("a followable Go binary");
    let tls = bin.tls.as_ref().expect("crypto/tls followed");
    let (headers, conn_at) = tls.h2_server.expect("net/http's HTTP/2 server followed");
    let code = fs::read(&go_bin).unwrap();
    let op = &code[headers as usize..headers as usize + 2];
    assert!(op[0] == 0x76 || op == [0x0f, 0x86], "{headers:#x}: {op:02x?}");
    assert!(conn_at > 0, "{tls:?}");

    let files = tls_files(dir.path());
    let go_hop = |name: &str, next: Option<String>| go_tls_hop(&go_bin, &files, name, next, true);
    let (leaf, leaf_port) = go_hop("go-h2-leaf", None);
    let (front, front_port) = go_hop("go-h2", Some(format!("https://localhost:{leaf_port}")));
    let rx = Receiver::start(vec![]);
    let mut agent = RunAgent::start(
        &rx.endpoint(),
        &["--pid", &front.pid().to_string(), "--pid", &leaf.pid().to_string()],
    );
    // Goroutine creation is followed from the program's first HTTP/2 stream on: a first request
    // makes it (and is left out below).
    let get = |id: &str| {
        curl(&format!("https://localhost:{front_port}/hop/{id}"), &["--cacert", &files.0, "--http2"])
    };
    get("warmup");
    agent.wait_line(&format!("pid {} made its first net/http call", front.pid()));
    let ids: Vec<String> = (0..5).map(|i| format!("goh2x{i}")).collect();
    for id in &ids {
        get(id);
    }
    let summary = agent.stop();
    let spans = rx.spans();
    let names: Vec<String> =
        spans.iter().map(|(v, s)| format!("{v} {} {} {:?}", s.kind, s.name, rid(s))).collect();
    let (servers, calls, leaves) =
        (by_rid(&spans, "go-h2", 2), by_rid(&spans, "go-h2", 3), by_rid(&spans, "go-h2-leaf", 2));
    for id in &ids {
        let found = (servers.get(id), calls.get(id), leaves.get(id));
        let (Some(s), Some(c), Some(l)) = found else {
            panic!("{id}: {found:?}: {names:#?}\n{summary}");
        };
        for span in [s, c, l] {
            assert_eq!(
                attr_str(span, "network.protocol.version").as_deref(),
                Some("2"),
                "{id}: {}",
                span.name
            );
            assert_eq!(attr_int(span, "http.response.status_code"), Some(200), "{id}: {}", span.name);
        }
        assert_eq!(
            (&c.parent_span_id, &c.trace_id),
            (&s.span_id, &s.trace_id),
            "{id}: {names:#?}\n{summary}"
        );
        assert_eq!(
            (&l.parent_span_id, &l.trace_id),
            (&c.span_id, &c.trace_id),
            "{id}: {names:#?}\n{summary}"
        );
    }
    assert_eq!(summary["http2"]["lost"], 0, "{summary}");
    assert_eq!(summary["http"]["non_http_conns"], 0, "{summary}");
}

/// The same services under h2load: 4 connections with 10 streams in flight each, every request
/// a path of its own. Streams now share connections and kernel turns, and the calls share the
/// front's pooled connection: a call is linked only where its stream is the one its connection
/// serves (never to another stream: the goroutine that starts handlers may run behind the
/// reader), and a leaf stream read in one turn with others does not take the last segment's TCP
/// option as its parent (`tcp_ambiguous`).
#[test]
fn go_http2_streams_in_flight_at_once_are_never_misparented() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let go_bin = build_go_hop(dir.path());
    let files = tls_files(dir.path());
    let go_hop = |name: &str, next: Option<String>| go_tls_hop(&go_bin, &files, name, next, true);
    let (leaf, leaf_port) = go_hop("go-h2-leaf", None);
    let (front, front_port) = go_hop("go-h2", Some(format!("https://localhost:{leaf_port}")));
    let rx = Receiver::start(vec![]);
    let mut agent = RunAgent::start(
        &rx.endpoint(),
        &[
            "--otlp-queue-spans",
            "1000000",
            "--pid",
            &front.pid().to_string(),
            "--pid",
            &leaf.pid().to_string(),
        ],
    );
    curl(&format!("https://localhost:{front_port}/hop/warmup"), &["--cacert", &files.0, "--http2"]);
    agent.wait_line(&format!("pid {} made its first net/http call", front.pid()));
    // Four h2load clients at once, one connection each (h2load gives each of its connections
    // the same list of paths), 500 paths of their own.
    let (clients, per) = (4, 500);
    let n = clients * per;
    let loads: Vec<std::process::Child> = (0..clients)
        .map(|c| {
            let uris = dir.path().join(format!("uris{c}.txt"));
            let lines: Vec<String> =
                (0..per).map(|i| format!("https://localhost:{front_port}/hop/load{}", c * per + i)).collect();
            fs::write(&uris, lines.join("\n")).unwrap();
            Command::new("h2load")
                .args(["-t", "1", "-c", "1", "-m", "10", "-n", &per.to_string(), "-i"])
                .arg(&uris)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("h2load")
        })
        .collect();
    for child in loads {
        let out = child.wait_with_output().expect("h2load");
        let load = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            load.contains(&format!("requests: {per} total, {per} started, {per} done, {per} succeeded")),
            "{load}"
        );
    }
    let summary = agent.stop();
    let spans = rx.spans();
    let by_span: std::collections::HashMap<&[u8], (&str, Option<String>)> =
        spans.iter().map(|(v, s)| (s.span_id.as_slice(), (v.as_str(), rid(s)))).collect();
    let (servers, calls, leaves) =
        (by_rid(&spans, "go-h2", 2), by_rid(&spans, "go-h2", 3), by_rid(&spans, "go-h2-leaf", 2));
    let ids: Vec<String> = (0..n).map(|i| format!("load{i}")).collect();
    let missing = ids
        .iter()
        .filter(|id| !(servers.contains_key(*id) && calls.contains_key(*id) && leaves.contains_key(*id)));
    assert_eq!(missing.count(), 0, "{summary}");
    // Linked calls: to their own stream, always.
    let (mut linked, mut wrong) = (0u64, Vec::new());
    for id in &ids {
        let c = calls[id];
        if c.parent_span_id.is_empty() {
            continue;
        }
        linked += 1;
        if c.parent_span_id != servers[id].span_id {
            wrong.push((id, by_span.get(c.parent_span_id.as_slice()).cloned()));
        }
    }
    assert!(wrong.is_empty(), "calls under another stream: {wrong:?}\n{summary}");
    // (The warm-up's call may be linked too.)
    let counted = summary["http"]["linked_goroutine"].as_u64().unwrap_or(0);
    assert!(counted == linked || counted == linked + 1, "{linked} linked\n{summary}");
    // Leaf streams: a TCP option read with other streams' is dropped, not taken; what is left is
    // a request whose header block the kernel read in two parts around another stream's
    // response (its turn ended between them), rare.
    let misparented = ids
        .iter()
        .filter(|id| {
            let l = leaves[*id];
            !l.parent_span_id.is_empty() && l.parent_span_id != calls[*id].span_id
        })
        .count();
    assert!(misparented * 20 <= n, "{misparented} leaf streams under another call\n{summary}");
    assert_eq!(summary["http2"]["lost"], 0, "{summary}");
}

#[test]
fn nginx_terminating_tls_and_calling_its_upstream_over_tls_is_read_in_plain_text() {
    nginx_tls(false);
}

/// The same with HTTP/2 negotiated (ALPN) between curl and nginx: each request is a stream of
/// one HTTP/2 connection read in plain text, and nginx still calls its upstream for it.
#[test]
fn nginx_serving_http2_over_tls_is_read_in_plain_text() {
    nginx_tls(true);
}

fn nginx_tls(h2: bool) {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let files = tls_files(dir.path());
    let mut leaf = tls_hop(&files, None, false);
    let leaf_port = leaf.port();
    let port = free_port();
    let (cert, key) = &files;
    let conf = nginx_conf_with(
        dir.path(),
        &format!("upstream leaf {{ server 127.0.0.1:{leaf_port}; keepalive 8; }}"),
        &format!("127.0.0.1:{port} ssl{}", if h2 { " http2" } else { "" }),
        false,
        &format!(
            "ssl_certificate {cert}; ssl_certificate_key {key}; location / {{ proxy_pass https://leaf; \
             proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_ssl_verify off; }}"
        ),
    );
    let nginx = Peer::spawn(Command::new("nginx").arg("-c").arg(&conf).arg("-e").arg("stderr"));
    wait_listening(port, "nginx");
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--pid", &nginx.pid().to_string(), "--pid", &leaf.pid().to_string()],
    );
    let ids: Vec<String> = (0..6).map(|i| format!("ngtls{i}")).collect();
    let version = if h2 { "--http2" } else { "--http1.1" };
    for id in &ids {
        curl(&format!("https://localhost:{port}/hop/{id}"), &["--cacert", cert, version]);
    }
    let summary = agent.stop();
    let spans = rx.spans();
    let of = |svc: &str, kind: i32| by_rid(&spans, svc, kind);
    let (servers, clients, leaves) = (of("nginx", 2), of("nginx", 3), of("tls-hop", 2));
    let names: Vec<String> = spans.iter().map(|(v, s)| format!("{v} {} {}", s.kind, s.name)).collect();
    assert_eq!(
        (servers.len(), clients.len(), leaves.len()),
        (ids.len(), ids.len(), ids.len()),
        "{names:#?}\n{summary}"
    );
    for id in &ids {
        let (server, client, leaf) = (servers[id], clients[id], leaves[id]);
        assert_eq!(attr_str(server, "url.scheme").as_deref(), Some("https"), "{id}");
        let expected = if h2 { "2" } else { "1.1" };
        assert_eq!(attr_str(server, "network.protocol.version").as_deref(), Some(expected), "{id}");
        assert_eq!(attr_int(server, "http.response.status_code"), Some(200), "{id}");
        assert_eq!(attr_str(leaf, "url.scheme").as_deref(), Some("https"), "{id}");
        assert!(attr_str(client, "url.full").is_some_and(|u| u.starts_with("https://")), "{id}");
        // nginx's worker serves many requests on one thread: the upstream probes tie the call to
        // its request, and the leaf joins through the TCP option under TLS.
        assert_eq!(client.parent_span_id, server.span_id, "{id}: {summary}");
        assert_eq!(leaf.parent_span_id, client.span_id, "{id}: {summary}");
        assert_eq!(leaf.trace_id, server.trace_id, "{id}");
    }
    // The master, its worker (probed on its own: probes are per process) and the leaf.
    assert_eq!(summary["tls_followed"], 3, "{summary}");
    // One HTTP/2 connection per curl, each recognised from its preface and read to its end.
    let h2_conns = if h2 { ids.len() } else { 0 };
    assert_eq!(summary["http2"]["conns"], h2_conns, "{summary}");
    assert_eq!(summary["http2"]["lost"], 0, "{summary}");
    assert_eq!(summary["http"]["non_http_conns"], 0, "{summary}");
    assert_eq!(summary["kernel"]["tls_no_conn"], 0, "{summary}");
}

/// A Node service speaking HTTP/2 (`tests/peers/h2hop.js`): in clear text (prior knowledge), or
/// over TLS with these PEM files (and trusting them when it calls `next`).
fn h2_hop(name: &str, next: Option<&str>, tls: Option<&(String, String)>) -> (Peer, u16) {
    let mut cmd = Command::new("node");
    cmd.arg(repo().join("tests/peers/h2hop.js")).args(["127.0.0.1", "0"]);
    cmd.args(next).env("OTEL_SERVICE_NAME", name);
    if let Some((cert, key)) = tls {
        cmd.env("HOP_TLS_CERT", cert).env("HOP_TLS_KEY", key).env("HOP_TLS_CA", cert);
    }
    let mut p = Peer::spawn(&mut cmd);
    let port = p.port();
    (p, port)
}

/// curl over HTTP/2, in clear text with prior knowledge (an http:// URL) or over TLS, trusting
/// `cacert` (ALPN): the status code.
fn curl_h2(url: &str, cacert: Option<&str>) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}"]);
    match cacert {
        Some(ca) => cmd.args(["--http2", "--cacert", ca]),
        None => cmd.arg("--http2-prior-knowledge"),
    };
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (code, version) = text.split_once(' ').unwrap_or_default();
    assert_eq!(version, "2", "curl {url}: {text}");
    code.parse().unwrap_or_else(|_| panic!("curl {url}: {text}"))
}

/// The gRPC status a span carries.
fn grpc_status(s: &opentelemetry_proto::tonic::trace::v1::Span) -> Option<i64> {
    attr_int(s, "rpc.grpc.status_code")
}

/// HTTP/2 between unmodified Node services (the core http2 module, one event loop), in clear
/// text and over TLS (OpenSSL over memory buffers, ALPN h2): curl's requests to a front
/// service, which calls a back one with gRPC-shaped calls on one session it keeps open. Every
/// stream is a span; the call is the child of the request it was made for (the event loop
/// serves one at a time here), and the back's span the call's child through the TCP option,
/// whose contexts the settings exchanged around the first call leave alone. A failing call
/// carries its gRPC status to both ends.
#[test]
fn http2_and_grpc_between_node_services_make_one_trace_per_request() {
    let _g = serial();
    require_root();
    node_h2_chain(None);
    let dir = tempfile::tempdir().unwrap();
    node_h2_chain(Some(&tls_files(dir.path())));
}

fn node_h2_chain(tls: Option<&(String, String)>) {
    let scheme = if tls.is_some() { "https://localhost" } else { "http://127.0.0.1" };
    let (back, back_port) = h2_hop("h2-back", None, tls);
    let (front, front_port) = h2_hop("h2-front", Some(&format!("{scheme}:{back_port}")), tls);
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--pid", &front.pid().to_string(), "--pid", &back.pid().to_string()],
    );
    let ids = ["h2a", "h2b", "h2cfail", "h2d"];
    for id in ids {
        let code = curl_h2(
            &format!("{scheme}:{front_port}/hop/{id}?token=zz-secret-zz"),
            tls.map(|(cert, _)| cert.as_str()),
        );
        assert_eq!(code, if id.contains("fail") { 502 } else { 200 }, "{id}");
    }
    let summary = agent.stop();
    let spans = rx.spans();
    let names: Vec<String> = spans.iter().map(|(v, s)| format!("{v} {} {}", s.kind, s.name)).collect();
    let servers = by_rid(&spans, "h2-front", 2);
    let calls: Vec<_> =
        spans.iter().filter(|(v, s)| v == "h2-front" && s.kind == 3).map(|(_, s)| s).collect();
    let backs: Vec<_> = spans.iter().filter(|(v, s)| v == "h2-back" && s.kind == 2).map(|(_, s)| s).collect();
    assert_eq!((servers.len(), calls.len(), backs.len()), (4, 4, 4), "{names:#?}\n{summary}");
    assert_eq!(spans.len(), 12, "{names:#?}");
    for id in ids {
        let failed = id.contains("fail");
        let server = servers[id];
        assert_eq!(attr_str(server, "network.protocol.version").as_deref(), Some("2"), "{id}");
        assert_eq!(attr_str(server, "url.query").as_deref(), Some("token=REDACTED"), "{id}");
        assert_eq!(
            attr_int(server, "http.response.status_code"),
            Some(if failed { 502 } else { 200 }),
            "{id}"
        );
        let call = calls
            .iter()
            .find(|c| c.parent_span_id == server.span_id)
            .unwrap_or_else(|| panic!("{id}: no call under the request: {names:#?}\n{summary}"));
        // Over TLS, the first call of a new session is not always linked (a known limit, see
        // the README: the back's span may take a context minted for the session's handshake, or
        // none): its back span is then the one that ran inside it.
        let may_be_unlinked = tls.is_some() && id == ids[0];
        let inside = |b: &&&Span| {
            call.start_time_unix_nano <= b.start_time_unix_nano
                && b.end_time_unix_nano <= call.end_time_unix_nano
        };
        let back = backs
            .iter()
            .find(|b| b.parent_span_id == call.span_id)
            .or_else(|| may_be_unlinked.then(|| backs.iter().find(inside)).flatten())
            .unwrap_or_else(|| panic!("{id}: no back span under the call: {names:#?}\n{summary}"));
        assert_eq!(server.trace_id, call.trace_id, "{id}");
        if back.parent_span_id == call.span_id {
            assert_eq!(call.trace_id, back.trace_id, "{id}");
        }
        let status = if failed { 14 } else { 0 };
        for s in [call, back] {
            assert_eq!(s.name, "hop.Hop/Call", "{id}");
            assert_eq!(attr_str(s, "rpc.system").as_deref(), Some("grpc"), "{id}");
            assert_eq!(attr_str(s, "rpc.service").as_deref(), Some("hop.Hop"), "{id}");
            assert_eq!(attr_str(s, "rpc.method").as_deref(), Some("Call"), "{id}");
            assert_eq!(grpc_status(s), Some(status), "{id}");
            assert_eq!(attr_str(s, "error.type").as_deref(), failed.then_some("UNAVAILABLE"), "{id}");
        }
        assert!(
            server.start_time_unix_nano <= call.start_time_unix_nano
                && call.start_time_unix_nano <= back.start_time_unix_nano
                && back.end_time_unix_nano <= call.end_time_unix_nano
                && call.end_time_unix_nano <= server.end_time_unix_nano,
            "{id}: not nested in time"
        );
    }
    // curl's four connections, the front's session to the back (both ends): read whole.
    assert_eq!(summary["http2"]["conns"], 6, "{summary}");
    assert_eq!(summary["http2"]["grpc"], 8, "{summary}");
    assert_eq!(summary["http2"]["lost"], 0, "{summary}");
    assert_eq!(summary["http"]["kernel_ctx_differs"], 0, "{summary}");
    assert_eq!(summary["http"]["invalid"], serde_json::json!({}), "{summary}");
    // Over TLS, every connection was read in plain text.
    assert_eq!(summary["http"]["tls_conns"], if tls.is_some() { 6 } else { 0 }, "{summary}");
    assert_eq!(summary["kernel"]["tls_no_conn"], 0, "{summary}");
}

/// gRPC between services on gRPC's C core (grpcio, Python): a front service's handler calls a
/// back one on a channel it keeps open. Its writes gather two dozen buffers (frame headers,
/// header blocks and messages apart), all copied. Every call is a span at both ends with its
/// gRPC status, and the back's span is the call's child from the very first call of the
/// channel (the TCP option; the settings exchange does not count as requests).
#[test]
fn grpc_calls_between_grpcio_services_are_rpc_spans_with_their_status() {
    let _g = serial();
    require_root();
    let grpc_peer = |name: &str, args: &[&str]| {
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/peers/grpc_peer.py")).args(args).env("OTEL_SERVICE_NAME", name);
        Peer::spawn(&mut cmd)
    };
    let mut back = grpc_peer("grpc-back", &["serve", "0"]);
    let back_port = back.port();
    let mut front = grpc_peer("grpc-front", &["serve", "0", &format!("127.0.0.1:{back_port}")]);
    let front_port = front.port();
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--pid", &front.pid().to_string(), "--pid", &back.pid().to_string()],
    );
    let ids = ["g1", "g2", "g3fail", "g4"];
    let out = Command::new("python3")
        .arg(repo().join("tests/peers/grpc_peer.py"))
        .args(["call", &format!("127.0.0.1:{front_port}")])
        .args(ids)
        .output()
        .expect("run the gRPC client");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    // The back's UNAVAILABLE fails the front's handler: the caller sees UNKNOWN.
    assert_eq!(said, "g1 OK\ng2 OK\ng3fail UNKNOWN\ng4 OK\n");
    let summary = agent.stop();
    let spans = rx.spans();
    let names: Vec<String> =
        spans.iter().map(|(v, s)| format!("{v} {} {} {:?}", s.kind, s.name, grpc_status(s))).collect();
    let of = |svc: &str, kind: i32| -> Vec<&opentelemetry_proto::tonic::trace::v1::Span> {
        spans.iter().filter(|(v, s)| v == svc && s.kind == kind).map(|(_, s)| s).collect()
    };
    let (served, calls, backs) = (of("grpc-front", 2), of("grpc-front", 3), of("grpc-back", 2));
    assert_eq!((served.len(), calls.len(), backs.len()), (4, 4, 4), "{names:#?}\n{summary}");
    let statuses = |v: &[&opentelemetry_proto::tonic::trace::v1::Span]| {
        let mut s: Vec<i64> = v.iter().filter_map(|s| grpc_status(s)).collect();
        s.sort_unstable();
        s
    };
    assert_eq!(statuses(&served), [0, 0, 0, 2], "{names:#?}");
    assert_eq!(statuses(&calls), [0, 0, 0, 14], "{names:#?}");
    for s in &served {
        assert_eq!(s.name, "shop.Cart/GetCart");
        assert_eq!(attr_str(s, "rpc.method").as_deref(), Some("GetCart"));
        // UNKNOWN is a server error in the semantic conventions.
        let error = (grpc_status(s) == Some(2)).then_some("UNKNOWN");
        assert_eq!(attr_str(s, "error.type").as_deref(), error, "{names:#?}");
    }
    for call in &calls {
        assert_eq!(call.name, "shop.Pricing/Quote");
        assert_eq!(attr_int(call, "server.port"), Some(i64::from(back_port)));
        let back = backs
            .iter()
            .find(|b| b.parent_span_id == call.span_id)
            .unwrap_or_else(|| panic!("no back span under a call: {names:#?}\n{summary}"));
        assert_eq!(back.trace_id, call.trace_id);
        assert_eq!(back.name, "shop.Pricing/Quote");
        assert_eq!(grpc_status(back), grpc_status(call));
        let error = (grpc_status(call) == Some(14)).then_some("UNAVAILABLE");
        assert_eq!(attr_str(call, "error.type").as_deref(), error);
        assert_eq!(attr_str(back, "error.type").as_deref(), error);
    }
    // The caller's connection to the front, the front's channel to the back (both ends).
    assert_eq!(summary["http2"]["conns"], 3, "{summary}");
    assert_eq!(summary["http2"]["lost"], 0, "{summary}");
    assert_eq!(summary["kernel"]["truncated"], 0, "{summary}");
}

/// nginx serving cleartext HTTP/2 to h2load: 4 connections with 10 streams in flight on each,
/// answered in any order, every other one a 404. Every stream is exactly one span with its
/// status; nothing drops and no connection is given up.
#[test]
fn nginx_serving_h2c_under_h2load_makes_one_span_per_stream() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = nginx_conf_on(
        dir.path(),
        &format!("127.0.0.1:{port} http2"),
        false,
        "keepalive_requests 1000000; location / { return 200 \"ok\\n\"; } location /missing { return 404; }",
    );
    let nginx = Peer::spawn(Command::new("nginx").arg("-c").arg(&conf).arg("-e").arg("stderr"));
    wait_listening(port, "nginx");
    let rx = Receiver::start(vec![]);
    // As in the wrk test: the queue holds the whole run (drops at default sizes are the bench's).
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--otlp-queue-spans", "1000000", "--pid", &nginx.pid().to_string()],
    );
    let n = 20_000;
    let out = Command::new("h2load")
        .args(["-t", "1", "-c", "4", "-m", "10", "-n", &n.to_string()])
        .arg(format!("http://127.0.0.1:{port}/ok?session=zz-secret-zz"))
        .arg(format!("http://127.0.0.1:{port}/missing"))
        .output()
        .expect("h2load");
    let load = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(load.contains(&format!("requests: {n} total, {n} started, {n} done")), "{load}");
    assert!(load.contains(&format!("status codes: {} 2xx, 0 3xx, {} 4xx", n / 2, n / 2)), "{load}");
    let summary = agent.stop();
    let spans = rx.spans();
    let status = |code: i64| {
        spans.iter().filter(|(_, s)| attr_int(s, "http.response.status_code") == Some(code)).count()
    };
    assert_eq!(spans.len(), n, "{summary}\n{load}");
    assert_eq!((status(200), status(404)), (n / 2, n / 2), "{summary}");
    for (_, s) in &spans {
        assert_eq!(attr_str(s, "network.protocol.version").as_deref(), Some("2"));
        assert!(attr_str(s, "url.query").is_none_or(|q| q == "session=REDACTED"));
    }
    assert_eq!(summary["http2"]["conns"], 4, "{summary}");
    assert_eq!(summary["http2"]["lost"], 0, "{summary}");
    assert_eq!(summary["kernel"]["ring_full"], 0, "{summary}");
    assert_eq!(summary["otlp"]["dropped"], serde_json::json!({}), "{summary}");
    assert_eq!(summary["otlp"]["produced"], summary["otlp"]["exported"], "{summary}");
    assert_eq!(summary["http"]["invalid"], serde_json::json!({}), "{summary}");
}

/// nginx proxying HTTP/2 over TLS to another nginx serving HTTP/2 over TLS (`grpc_pass
/// grpcs://`): the proxy is an HTTP/2 client whose settings and flow-control writes leave as
/// ciphertext. They are told from requests by the plaintext `SSL_write` was handed, so the
/// context the TCP option carries is the request's: the upstream server's span is the call's
/// child, and the call the request's.
#[test]
fn nginx_proxying_http2_over_tls_to_an_http2_server_makes_one_trace_per_request() {
    let _g = serial();
    require_root();
    let (front_dir, leaf_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let files = tls_files(front_dir.path());
    let (cert, key) = &files;
    let (port, leaf_port) = (free_port(), free_port());
    let tls = format!("ssl_certificate {cert}; ssl_certificate_key {key};");
    let leaf_conf = nginx_conf_on(
        leaf_dir.path(),
        &format!("127.0.0.1:{leaf_port} ssl http2"),
        false,
        &format!("{tls} location / {{ return 200 \"ok\\n\"; }}"),
    );
    let front_conf = nginx_conf_on(
        front_dir.path(),
        &format!("127.0.0.1:{port} ssl http2"),
        false,
        &format!("{tls} location / {{ grpc_pass grpcs://127.0.0.1:{leaf_port}; grpc_ssl_verify off; }}"),
    );
    let leaf = Peer::spawn(Command::new("nginx").arg("-c").arg(&leaf_conf).arg("-e").arg("stderr"));
    let front = Peer::spawn(Command::new("nginx").arg("-c").arg(&front_conf).arg("-e").arg("stderr"));
    wait_listening(port, "nginx");
    wait_listening(leaf_port, "the upstream nginx");
    let rx = Receiver::start(vec![]);
    let agent = RunAgent::start(
        &rx.endpoint(),
        &["--pid", &front.pid().to_string(), "--pid", &leaf.pid().to_string()],
    );
    let ids: Vec<String> = (0..5).map(|i| format!("ngh2{i}")).collect();
    for id in &ids {
        curl(&format!("https://localhost:{port}/hop/{id}"), &["--cacert", cert, "--http2"]);
    }
    let summary = agent.stop();
    let spans = rx.spans();
    let names: Vec<String> = spans
        .iter()
        .map(|(v, s)| {
            format!(
                "{v} {} {} {:?} {:?}",
                s.kind,
                s.name,
                attr_str(s, "url.path"),
                attr_int(s, "server.port")
            )
        })
        .collect();
    let clients = by_rid(&spans, "nginx", 3);
    let servers: Vec<_> = spans.iter().filter(|(_, s)| s.kind == 2).map(|(_, s)| s).collect();
    assert_eq!((clients.len(), servers.len()), (ids.len(), 2 * ids.len()), "{names:#?}\n{summary}");
    for id in &ids {
        let path = format!("/hop/{id}");
        // The front's span and the upstream's: the one the call's span is the parent of.
        let (front, leaf): (Vec<_>, Vec<_>) = servers
            .iter()
            .filter(|s| attr_str(s, "url.path") == Some(path.clone()))
            .partition(|s| s.parent_span_id.is_empty());
        let call = clients[id];
        assert_eq!((front.len(), leaf.len()), (1, 1), "{id}: {names:#?}\n{summary}");
        let (front, leaf) = (front[0], leaf[0]);
        for s in [front, leaf, call] {
            assert_eq!(attr_str(s, "network.protocol.version").as_deref(), Some("2"), "{id}");
        }
        assert_eq!(call.parent_span_id, front.span_id, "{id}: {names:#?}\n{summary}");
        assert_eq!(leaf.parent_span_id, call.span_id, "{id}: {names:#?}\n{summary}");
        assert!(front.trace_id == call.trace_id && call.trace_id == leaf.trace_id, "{id}");
    }
    assert_eq!(summary["http2"]["lost"], 0, "{summary}");
    assert_eq!(summary["http"]["kernel_ctx_differs"], 0, "{summary}");
}
