//! Root tests across simulated nodes: two network namespaces joined by a veth pair, one
//! `tracewire run` per node selecting only that node's processes, and a chain of uninstrumented
//! services in five runtimes crossing between the nodes, once through a DNAT rule:
//!
//! ```text
//! client ─▶ A: gateway (Python) ─▶ B: nginx proxy ─▶ B: Node ─▶ (DNAT) A: Java ─▶ B: Go [─▶ B: leaf (Python)]
//! ```
//!
//! The request id travels in every URL path: it is the ground truth each span's parent is
//! checked against.
mod common;
mod receiver;

use std::{
    collections::{BTreeMap, HashMap},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use common::*;
use opentelemetry_proto::tonic::trace::v1::Span;
use receiver::{Receiver, attr_str};

const A_IP: &str = "10.213.0.1";
const B_IP: &str = "10.213.0.2";
/// The address node B's Node service calls; DNAT on node B sends it to the Java service on A.
const NAT_IP: &str = "10.213.0.100";
const NAT_PORT: u16 = 9000;

const GATEWAY: u16 = 8001;
const NGINX: u16 = 8002;
const NODE: u16 = 8003;
const JAVA: u16 = 8004;
const GO: u16 = 8005;
const LEAF: u16 = 8006;

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Two network namespaces ("nodes") joined by veth, removed on drop.
struct Nodes {
    a: String,
    b: String,
}

impl Nodes {
    fn create() -> Nodes {
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!("{}{}", std::process::id() % 10_000, N.fetch_add(1, Ordering::Relaxed));
        let nodes = Nodes { a: format!("twa{tag}"), b: format!("twb{tag}") };
        let (va, vb) = (format!("twva{tag}"), format!("twvb{tag}"));
        sh(&["ip", "netns", "add", &nodes.a]);
        sh(&["ip", "netns", "add", &nodes.b]);
        sh(&["ip", "link", "add", &va, "type", "veth", "peer", "name", &vb]);
        sh(&["ip", "link", "set", &va, "netns", &nodes.a]);
        sh(&["ip", "link", "set", &vb, "netns", &nodes.b]);
        for (ns, dev, ip) in [(&nodes.a, &va, A_IP), (&nodes.b, &vb, B_IP)] {
            sh(&["ip", "-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // Node B reaches the Java service on A through a virtual address.
        sh(&[
            "ip",
            "netns",
            "exec",
            &nodes.b,
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            NAT_IP,
            "--dport",
            &NAT_PORT.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{A_IP}:{JAVA}"),
        ]);
        nodes
    }

    fn exec(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// Waits until `ip:port` accepts connections inside `ns`.
    fn wait_listening(ns: &str, ip: &str, port: u16, what: &str) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let ok = Nodes::exec(ns, "bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "{what} did not start in {ns}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The services, started in their namespaces.
struct Chain {
    gateway: Peer,
    nginx: Peer,
    node: Peer,
    java: Peer,
    go: Peer,
    leaf: Option<Peer>,
    _dir: tempfile::TempDir,
}

fn hop(ns: &str, name: &str, script: &str, addr: (&str, u16), next: Option<String>) -> Peer {
    let (ip, port) = addr;
    let mut cmd = match script {
        "hop.py" => Nodes::exec(ns, "python3"),
        "hop.js" => Nodes::exec(ns, "node"),
        "Hop.java" => {
            let mut c = Nodes::exec(ns, "java");
            c.arg("-XX:TieredStopAtLevel=1");
            c
        }
        // A binary built from hop.go.
        binary => Nodes::exec(ns, binary),
    };
    cmd.env("OTEL_SERVICE_NAME", name);
    if script.ends_with(".py") || script.ends_with(".js") || script.ends_with(".java") {
        cmd.arg(repo().join("tests/peers").join(script));
    }
    cmd.args([ip, &port.to_string()]);
    if let Some(n) = next {
        cmd.arg(n);
    }
    let mut p = Peer::spawn(&mut cmd);
    p.expect("port ");
    p
}

impl Chain {
    /// The chain; with `leaf`, the Go service calls a Python leaf (it is the last hop otherwise).
    fn start(nodes: &Nodes, leaf: bool) -> Chain {
        let dir = tempfile::tempdir().expect("tempdir");
        let go_bin = build_go_hop(dir.path());
        let leaf = leaf.then(|| hop(&nodes.b, "leaf", "hop.py", (B_IP, LEAF), None));
        let go_next = leaf.as_ref().map(|_| format!("http://{B_IP}:{LEAF}"));
        let go = hop(&nodes.b, "go-hop", &go_bin.display().to_string(), (B_IP, GO), go_next);
        let java = hop(&nodes.a, "java-hop", "Hop.java", (A_IP, JAVA), Some(format!("http://{B_IP}:{GO}")));
        let node =
            hop(&nodes.b, "node-hop", "hop.js", (B_IP, NODE), Some(format!("http://{NAT_IP}:{NAT_PORT}")));
        let conf = nginx_conf_on(
            dir.path(),
            &format!("{B_IP}:{NGINX}"),
            false,
            &format!("location / {{ proxy_pass http://{B_IP}:{NODE}; }}"),
        );
        let nginx = Peer::spawn(Nodes::exec(&nodes.b, "nginx").arg("-c").arg(&conf).arg("-e").arg("stderr"));
        Nodes::wait_listening(&nodes.b, B_IP, NGINX, "nginx");
        let gateway =
            hop(&nodes.a, "gateway", "hop.py", (A_IP, GATEWAY), Some(format!("http://{B_IP}:{NGINX}")));
        Chain { gateway, nginx, node, java, go, leaf, _dir: dir }
    }

    /// Process ids per node: (node A, node B).
    fn pids(&self) -> (Vec<u32>, Vec<u32>) {
        let b = [self.nginx.pid(), self.node.pid(), self.go.pid()];
        (
            vec![self.gateway.pid(), self.java.pid()],
            b.into_iter().chain(self.leaf.as_ref().map(Peer::pid)).collect(),
        )
    }
}

/// `tracewire run` per node, each selecting that node's processes, both exporting to `rx`.
fn agents(rx: &Receiver, chain: &Chain) -> (RunAgent, RunAgent) {
    let (a, b) = chain.pids();
    let args =
        |pids: &[u32]| -> Vec<String> { pids.iter().flat_map(|p| ["--pid".into(), p.to_string()]).collect() };
    let aa = args(&a);
    let ba = args(&b);
    let agent_a = RunAgent::start(&rx.endpoint(), &aa.iter().map(String::as_str).collect::<Vec<_>>());
    let agent_b = RunAgent::start(&rx.endpoint(), &ba.iter().map(String::as_str).collect::<Vec<_>>());
    (agent_a, agent_b)
}

/// Drives `clients` concurrent clients on node A, `per_client` requests each, with ids
/// `{prefix}{client}x{n}`; every request must succeed.
fn drive(nodes: &Nodes, prefix: &str, clients: usize, per_client: usize) -> Vec<String> {
    let base = format!("http://{A_IP}:{GATEWAY}/hop/");
    drive_load_with(Nodes::exec(&nodes.a, "python3"), &base, prefix, clients, per_client)
}

/// The request id a span belongs to (from its path or URL).
fn rid(s: &Span) -> Option<String> {
    let p = attr_str(s, "url.path").or_else(|| attr_str(s, "url.full"))?;
    p.split("/hop/").nth(1).map(|r| r.split('?').next().unwrap_or(r).to_string())
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// Which runtime made a span: services are named after theirs (OTEL_SERVICE_NAME, which the
/// agent reads from the traced process).
fn runtime(service: &str) -> &'static str {
    match service {
        "nginx" => "nginx",
        "node-hop" => "node",
        "java-hop" => "java",
        "go-hop" => "go",
        _ => "python",
    }
}

#[derive(Default, Debug)]
struct Tally {
    linked: u64,
    unlinked: u64,
    wrong: u64,
    total: u64,
}

#[test]
fn a_request_through_two_nodes_and_a_nat_is_one_trace() {
    let _g = serial();
    require_root();
    let nodes = Nodes::create();
    let chain = Chain::start(&nodes, false);
    let rx = Receiver::start(vec![]);
    let (agent_a, agent_b) = agents(&rx, &chain);
    let ids = drive(&nodes, "seq", 1, 5);
    let sa = agent_a.stop();
    let sb = agent_b.stop();
    let spans = rx.spans();
    let by_id: HashMap<Vec<u8>, &(String, Span)> = spans.iter().map(|x| (x.1.span_id.clone(), x)).collect();
    for id in &ids {
        let mine: Vec<&(String, Span)> =
            spans.iter().filter(|(_, s)| rid(s).as_deref() == Some(id)).collect();
        let desc: Vec<String> =
            mine.iter().map(|(svc, s)| format!("{svc} kind={} {:?}", s.kind, rid(s))).collect();
        assert_eq!(mine.len(), 9, "{id}: 5 server and 4 client spans: {desc:#?}\nA: {sa}\nB: {sb}");
        let trace = &mine[0].1.trace_id;
        assert!(mine.iter().all(|(_, s)| &s.trace_id == trace), "{id}: one trace: {desc:#?}");
        // Walk from the leaf server span to the root: the chain in order, every hop present.
        let mut cur = *mine
            .iter()
            .find(|(svc, s)| s.kind == SERVER && svc == "go-hop")
            .unwrap_or_else(|| panic!("{id}: no leaf server span"));
        let mut path = vec![(cur.1.kind, cur.0.as_str())];
        while !cur.1.parent_span_id.is_empty() {
            cur =
                by_id.get(&cur.1.parent_span_id).unwrap_or_else(|| panic!("{id}: parent missing: {desc:#?}"));
            assert_eq!(rid(&cur.1).as_deref(), Some(id.as_str()), "{id}: a parent from another request");
            path.push((cur.1.kind, cur.0.as_str()));
        }
        let expected = [
            (SERVER, "go-hop"),
            (CLIENT, "java-hop"),
            (SERVER, "java-hop"),
            (CLIENT, "node-hop"),
            (SERVER, "node-hop"),
            (CLIENT, "nginx"),
            (SERVER, "nginx"),
            (CLIENT, "gateway"),
            (SERVER, "gateway"),
        ];
        assert_eq!(path, expected, "{id}: the tree, leaf to root (kind, service)");
    }
    // The service graph: a call within a node is one edge named by both services; a call that
    // crosses is reported by each node's agent as its own end, the far end named by address.
    // A: the gateway's requests come from `user`; its calls to nginx and Java's to Go leave the
    // node; Java is called from B (through the NAT).
    let graph = |s: &serde_json::Value| {
        let g = &s["request_metrics"]["service_graph"];
        ["paired", "from_user", "client_unpaired", "server_unpaired"]
            .map(|k| g[k].as_u64().unwrap_or(u64::MAX))
    };
    assert_eq!(graph(&sa), [0, 5, 10, 5], "A: {sa}");
    // B: nginx calls node-hop on the node; nginx and Go are called from A; node-hop calls Java.
    assert_eq!(graph(&sb), [5, 0, 5, 10], "B: {sb}");
    let edge = |metric: &str, client: &str, server: &str| -> u64 {
        rx.histogram_points()
            .iter()
            .filter(|p| {
                p.metric == metric
                    && p.attributes.get("client").map(String::as_str) == Some(client)
                    && p.attributes.get("server").map(String::as_str) == Some(server)
            })
            .map(|p| p.count)
            .max()
            .unwrap_or(0)
    };
    let (client_side, server_side) =
        ("traces_service_graph_request_client_seconds", "traces_service_graph_request_server_seconds");
    assert_eq!(edge(client_side, "nginx", "node-hop"), 5);
    assert_eq!(edge(server_side, "nginx", "node-hop"), 5);
    assert_eq!(edge(client_side, "gateway", &format!("{B_IP}:{NGINX}")), 5);
    assert_eq!(edge(server_side, A_IP, "nginx"), 5);
    assert_eq!(edge(client_side, "java-hop", &format!("{B_IP}:{GO}")), 5);
    assert_eq!(edge(server_side, A_IP, "go-hop"), 5);
    // Both agents carried context: A wrote options (gateway→nginx, java→leaf), B read them, and
    // the other way round.
    for s in [&sa, &sb] {
        assert!(s["kernel"]["tcp_opt_written"].as_u64() > Some(0), "{s}");
        assert!(s["kernel"]["tcp_opt_used"].as_u64() > Some(0), "{s}");
        assert_eq!(s["otlp"]["dropped"], serde_json::json!({}), "{s}");
    }
}

#[test]
fn sixty_four_concurrent_clients_never_get_a_wrong_parent() {
    let _g = serial();
    require_root();
    let nodes = Nodes::create();
    let chain = Chain::start(&nodes, true);
    let rx = Receiver::start(vec![]);
    let (agent_a, agent_b) = agents(&rx, &chain);
    let ids = drive(&nodes, "c", 64, 4);
    let sa = agent_a.stop();
    let sb = agent_b.stop();
    let spans = rx.spans();
    let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|(_, s)| (s.span_id.clone(), s)).collect();
    let mut tally: BTreeMap<(&str, &str), Tally> = BTreeMap::new();
    let mut missing = 0;
    for (svc, s) in &spans {
        let Some(r) = rid(s) else { continue };
        let kind = if s.kind == SERVER { "server" } else { "client" };
        let t = tally.entry((runtime(svc), kind)).or_default();
        t.total += 1;
        let unlinked = attr_str(s, "tracewire.link").as_deref() == Some("unlinked");
        if s.parent_span_id.is_empty() {
            // Roots: the gateway's server spans (the client is not traced), or unlinked calls.
            if !unlinked && svc == "gateway" && s.kind == SERVER {
                t.linked += 1;
            } else {
                t.unlinked += 1;
            }
            continue;
        }
        match by_id.get(&s.parent_span_id) {
            Some(p) if rid(p).as_deref() == Some(r.as_str()) && p.trace_id == s.trace_id => t.linked += 1,
            Some(_) => t.wrong += 1,
            // The parent span is in a trace that was split above it (an unlinked call): its
            // parent is still the right span, just not exported under this trace.
            None => missing += 1,
        }
    }
    println!("per runtime and kind: linked / unlinked / wrong of total");
    for ((rt, kind), t) in &tally {
        println!(
            "  {rt:7} {kind:6} {:5.1}% linked {:5.1}% unlinked {} wrong ({} spans)",
            100.0 * t.linked as f64 / t.total.max(1) as f64,
            100.0 * t.unlinked as f64 / t.total.max(1) as f64,
            t.wrong,
            t.total
        );
    }
    println!("agent A: {sa}\nagent B: {sb}");
    let wrong: u64 = tally.values().map(|t| t.wrong).sum();
    assert_eq!(wrong, 0, "wrong parents: {tally:#?}");
    assert_eq!(missing, 0, "parents not exported");
    // Every request made every span (nothing lost under load).
    let per_request = spans.iter().filter(|(_, s)| rid(s).is_some()).count();
    assert_eq!(per_request, ids.len() * 11, "{tally:#?}");
    // Thread-per-request runtimes link exactly, whatever the concurrency.
    for rt in ["python", "java"] {
        let t = &tally[&(rt, "client")];
        assert_eq!(t.linked, t.total, "{rt}: {t:?}");
    }
    // Go's goroutines move between threads: its calls are linked through the goroutine that
    // serves the request (uprobes on net/http), exactly.
    let go = &tally[&("go", "client")];
    assert_eq!(go.linked, go.total, "go: {go:?}");
    assert!(sb["kernel"]["go_linked"].as_u64() >= Some(go.total), "{sb}");
    // nginx serves every request from one thread: its upstream requests are linked through the
    // request nginx opened each upstream connection for (uprobes), exactly.
    let nginx = &tally[&("nginx", "client")];
    assert_eq!(nginx.linked, nginx.total, "nginx: {nginx:?}");
    assert_eq!(sb["kernel"]["upstream_linked"].as_u64(), Some(nginx.total), "{sb}");
    // Server spans reached across the nodes take their parent from the TCP option.
    for rt in ["nginx", "java", "go"] {
        let t = &tally[&(rt, "server")];
        assert_eq!(t.linked, t.total, "{rt} server spans: {t:?}");
    }
}
