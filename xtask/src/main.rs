//! Project tasks: `cargo xtask setup | demo | test`.
//!
//! Every task that needs tools installs them first (idempotently), so each works on a fresh
//! machine as written in the README.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

mod bench;
mod database;
mod empty_prog;
mod load;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tracewire project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every prerequisite (rust-src, bpf-linker, test peers); safe to run again.
    Setup,
    /// Build tracewire, start the seed's six uninstrumented services, and watch tracewire trace
    /// page loads through them and name the slowest one.
    Demo {
        /// Page loads to send.
        #[arg(long, default_value_t = 2)]
        requests: u32,
        /// How long a Recommendation Service request takes, in ms (its own work plus its call
        /// to the Product Service).
        #[arg(long, default_value_t = 1400)]
        slow_ms: u64,
        /// Check the result (one joined trace per page load, the right tree, the verdict) and
        /// fail otherwise: the demo as an end-to-end test.
        #[arg(long)]
        check: bool,
        /// Leave the services up and tracewire printing, to curl the gateway yourself (Ctrl-C
        /// stops everything).
        #[arg(long)]
        keep_running: bool,
    },
    /// Measure what tracewire costs, side by side with running without it.
    Bench {
        /// A short run (checks the suite runs and reports).
        #[arg(long)]
        quick: bool,
    },
    /// Latency of a local HTTP/1.1 server at a fixed request rate (open loop, keep-alive), the
    /// load R2 uses: to compare a service with and without tracewire yourself.
    Latency {
        /// The server's port on 127.0.0.1 (answering `GET /`).
        #[arg(long)]
        port: u16,
        /// Requests per second.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Seconds.
        #[arg(long, default_value_t = 5)]
        secs: u64,
    },
    /// Unit tests, then the root integration tests with real servers and clients.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

const BPF_LINKER_VERSION: &str = "0.10.0";
/// Debian packages the tests and the demo drive.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
    ("bpftool", "bpftool"),
    ("curl", "curl"),
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("/usr/lib/go-1.19/bin/go", "golang-1.19-go"),
    ("setpriv", "util-linux"),
    ("node", "nodejs"),
    ("java", "openjdk-17-jdk-headless"),
    // A real PostgreSQL server and pgbench, for the database client spans.
    ("/usr/lib/postgresql/15/bin/postgres", "postgresql-15"),
    ("pg_isready", "postgresql-client-15"),
    // A real Redis server, redis-cli and redis-benchmark, for the Redis client spans.
    ("redis-server", "redis-server"),
    // A real MariaDB server and its client, for the MySQL client spans.
    ("mariadbd", "mariadb-server"),
    // A real memcached server, for the memcached client spans.
    ("memcached", "memcached"),
    // Certificates for the HTTPS benchmark.
    ("openssl", "openssl"),
    // An HTTP/2 load generator (h2load), for the HTTP/2 benchmark and test.
    ("h2load", "nghttp2-client"),
];

/// PyPI packages the tests drive (pinned: the test checks the SDK's own spans), psycopg2
/// (libpq, the usual PostgreSQL driver) for a service backed by a database, grpcio (gRPC's
/// C core) for gRPC services, redis-py for a service backed by Redis, mysql-connector-python
/// (its pure-Python protocol) for one backed by MySQL, and pymemcache for one backed by memcached.
const PYPI_PACKAGES: &[&str] = &[
    "opentelemetry-sdk==1.45.2",
    "opentelemetry-exporter-otlp-proto-http==1.45.2",
    "psycopg2-binary==2.9.13",
    "grpcio==1.84.0",
    "redis==8.1.0",
    "mysql-connector-python==26.10.0",
    "pymemcache==4.0.0",
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup(),
        Task::Demo { requests, slow_ms, check, keep_running } => {
            setup()?;
            demo(requests, slow_ms, check, keep_running)
        }
        Task::Bench { quick } => {
            setup()?;
            bench::bench(quick)
        }
        Task::Latency { port, rate, secs } => {
            let l = load::paced(port, rate, 4, 2, secs)?;
            println!(
                "{} requests at {rate}/s: p50 {:.1} us, p99 {:.1} us",
                l.requests,
                l.p50 as f64 / 1000.0,
                l.p99 as f64 / 1000.0
            );
            Ok(())
        }
        Task::Test { args } => {
            setup()?;
            test(&args)
        }
    }
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(program: &str) -> bool {
    output(Command::new("sh").args(["-c", &format!("command -v {program}")])).is_some()
}

fn setup() -> Result<()> {
    // The kernel crate builds with nightly and -Z build-std=core (aya-build), which needs rust-src.
    let components =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
            .unwrap_or_default();
    if components.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src (nightly) present");
    } else {
        println!("setup: installing rust-src for nightly");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }

    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if linker.contains(BPF_LINKER_VERSION) {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} present");
    } else {
        println!("setup: installing bpf-linker {BPF_LINKER_VERSION}");
        run(Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ]))?;
    }

    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(program, _)| {
            !have(program) && !Path::new("/usr/sbin").join(program).exists() && !Path::new(program).exists()
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        println!("setup: Debian packages present");
    } else {
        println!("setup: installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // The official OpenTelemetry Python SDK, for the test where an instrumented service and the
    // agent share one trace; the database drivers of the services backed by PostgreSQL, Redis,
    // MySQL and memcached; grpcio, for gRPC.
    let sdk = Command::new("python3")
        .args([
            "-c",
            "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, psycopg2, grpc, redis, \
             mysql.connector, pymemcache",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if sdk {
        println!("setup: OpenTelemetry Python SDK and the database and gRPC drivers present");
    } else {
        println!("setup: installing the OpenTelemetry Python SDK and the database and gRPC drivers");
        run(Command::new("python3").args(["-m", "pip", "install", "-q"]).args(PYPI_PACKAGES))?;
    }
    // nginx starts itself on install on Debian; the tests run their own instances.
    if Path::new("/run/nginx.pid").exists() {
        let _ = Command::new("nginx").args(["-s", "stop"]).stderr(Stdio::null()).status();
    }
    Ok(())
}

/// Builds the agent with a cargo profile: `release` for the demo a person runs and the bench,
/// [`TEST_PROFILE`] when the demo runs as a test (the test build already has it).
pub(crate) fn build(profile: &str) -> Result<PathBuf> {
    run(Command::new("cargo")
        .args(["build", "--package", "tracewire", "--profile", profile])
        .current_dir(root()))?;
    Ok(root().join("target").join(profile).join("tracewire"))
}

/// The tests run an optimised agent with debug assertions and overflow checks (see Cargo.toml):
/// a debug build cannot keep up with nginx under wrk, and the tests assert that nothing drops.
pub(crate) const TEST_PROFILE: &str = "ci";

/// Stops a child process on drop, so an error path never leaves a server behind: SIGTERM first
/// (nginx's master then stops its workers too), SIGKILL after two seconds.
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc_kill(self.0.id() as i32, 15) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The language a demo service is written in.
#[derive(Clone, Copy)]
enum Lang {
    Python,
    Node,
    Java,
}

/// Starts one demo service; returns it and its port.
/// The queries the demo's Python services run: Cart reads the cart; Recommendation's work is a
/// slow query (the database sleeps the request's work time, standing in for a scan that misses
/// an index).
const CART_SQL: &str = "SELECT p.name, p.price, c.qty FROM cart_items c JOIN products p ON p.id = c.product_id \
     WHERE c.cart_id = 42";
const RECOMMENDATION_SQL: &str = "SELECT v.product_id, count(*) FROM views v, pg_sleep(%(work)s) \
     WHERE v.user_id = 42 GROUP BY v.product_id ORDER BY count(*) DESC LIMIT 5";

/// Starts one demo service; `sql`: a query it runs in `db` per request (Python services).
fn service(
    name: &str,
    lang: Lang,
    work_ms: u64,
    downstreams: &[String],
    sql: Option<(&database::Database, &str)>,
    cache: Option<&database::Cache>,
) -> Result<(Guard, u16)> {
    let demo = root().join("xtask/demo");
    let mut cmd = match lang {
        Lang::Python => {
            let mut c = Command::new("python3");
            c.arg(demo.join("service.py"));
            c
        }
        Lang::Node => {
            let mut c = Command::new("node");
            c.arg(demo.join("service.js"));
            c
        }
        Lang::Java => {
            // Single-file source launch: no build step, still an ordinary JVM process.
            let mut c = Command::new("java");
            c.arg(demo.join("Service.java"));
            c
        }
    };
    if let Some((db, sql)) = sql {
        cmd.env("DEMO_PG", format!("{} {} {}", db.port, db.user, db.name)).env("DEMO_SQL", sql);
    }
    if let Some(cache) = cache {
        cmd.env("DEMO_REDIS", cache.port.to_string());
    }
    let mut child = cmd
        .arg(work_ms.to_string())
        .args(downstreams)
        // The agent reads each process's own OTEL_SERVICE_NAME: configuration, not code.
        .env("OTEL_SERVICE_NAME", name)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("service stdout")?;
    let guard = Guard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = line.trim().strip_prefix("port ").and_then(|p| p.parse().ok());
    let port = port.with_context(|| format!("{name} did not start: {line:?}"))?;
    Ok((guard, port))
}

fn demo(requests: u32, slow_ms: u64, check: bool, keep_running: bool) -> Result<()> {
    let tracewire = build(if check { TEST_PROFILE } else { "release" })?;
    let out_dir = root().join("target/demo");
    std::fs::create_dir_all(&out_dir)?;
    let url = |port: u16, path: &str| format!("http://127.0.0.1:{port}{path}");
    // The assignment's six services. The gateway fans out; Cart calls Pricing; Recommendation
    // calls Product, then works slowly on its own.
    const PRODUCT_MS: u64 = 120;
    // Cart and Recommendation keep their data in PostgreSQL; the gateway its sessions in Redis.
    let db = database::Database::start()?;
    let cache = database::Cache::start()?;
    // Leaves in Node.js and Java, the services that call others in Python (thread per request).
    let (pricing, pricing_port) = service("pricing-service", Lang::Node, 180, &[], None, None)?;
    let (cart, cart_port) = service(
        "cart-service",
        Lang::Python,
        100,
        &[url(pricing_port, "/price")],
        Some((&db, CART_SQL)),
        None,
    )?;
    let (product, product_port) = service("product-service", Lang::Java, PRODUCT_MS, &[], None, None)?;
    let rec_work = slow_ms.saturating_sub(PRODUCT_MS);
    let (recommendation, rec_port) = service(
        "recommendation-service",
        Lang::Python,
        rec_work,
        &[url(product_port, "/products?related=42")],
        Some((&db, RECOMMENDATION_SQL)),
        None,
    )?;
    let (user, user_port) = service("user-service", Lang::Node, 60, &[], None, None)?;
    let downstreams = [
        url(user_port, "/user/42"),
        url(product_port, "/products?page=1"),
        url(rec_port, "/recommendations/42"),
        url(cart_port, "/cart/42"),
    ];
    let (gateway, gateway_port) = service("api-gateway", Lang::Python, 40, &downstreams, None, Some(&cache))?;
    let services = [&gateway, &user, &product, &recommendation, &cart, &pricing];
    // One page load before tracing: a JVM's and Node's first request run cold (class loading,
    // JIT) and would take the page load's time away from the bottleneck the demo shows.
    run(Command::new("curl").args(["-s", "-o", "/dev/null", &url(gateway_port, "/page")]))?;
    let pids: Vec<String> = services.iter().map(|g| g.0.id().to_string()).collect();
    println!(
        "\ndemo: six uninstrumented services are up; the gateway is http://127.0.0.1:{gateway_port}/page\n"
    );

    let traces = out_dir.join("traces.jsonl");
    let mut cmd = Command::new(&tracewire);
    cmd.args(["run", "--print", "waterfall", "--status-interval", "0", "--trace-idle-ms", "500"]);
    cmd.arg("--otlp-json").arg(&traces);
    for p in &pids {
        cmd.args(["--pid", p]);
    }
    let mut agent =
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("starting tracewire")?;
    let stderr = agent.stderr.take().context("agent stderr")?;
    let stdout = agent.stdout.take().context("agent stdout")?;
    // The waterfalls: shown as they come, and kept for --check.
    let printed = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{l}");
            kept.push(l);
        }
        kept
    });
    let mut agent = Guard(agent);
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let Some(Ok(l)) = lines.next() else {
            bail!("tracewire exited before it was ready");
        };
        if l.contains("tracing with") {
            eprintln!("{l}");
            break;
        }
        eprintln!("{l}");
        if Instant::now() > deadline {
            bail!("tracewire was not ready within 60 s");
        }
    }
    let summary = std::thread::spawn(move || {
        let mut summary = String::new();
        for l in lines.map_while(Result::ok) {
            if l.starts_with("tracewire: summary") {
                summary = l;
            } else {
                eprintln!("{l}");
            }
        }
        summary
    });
    for i in 1..=requests {
        let started = Instant::now();
        run(Command::new("curl").args(["-s", "-o", "/dev/null", &url(gateway_port, "/page")]))?;
        println!("demo: page load {i}/{requests} took {:.2} s", started.elapsed().as_secs_f64());
    }
    if keep_running {
        println!(
            "\ndemo: still running. Try: curl http://127.0.0.1:{gateway_port}/page   (Ctrl-C stops the services \
             and tracewire)"
        );
        // Ctrl-C reaches the whole foreground process group: the agent prints what it has and
        // exits, the services exit, and so does this wait.
        let _ = agent.0.wait();
    }
    // Every page load has completed; the agent drains what the kernel wrote and prints the
    // traces on SIGINT.
    // SAFETY: plain signal to our own child.
    unsafe { libc_kill(agent.0.id() as i32, 2) };
    let _ = agent.0.wait();
    let summary = summary.join().unwrap_or_default();
    let printed = printed.join().unwrap_or_default();
    println!("\ndemo: the same traces, as OTLP-JSON, are in {}", traces.display());
    println!(
        "demo: set OTEL_EXPORTER_OTLP_ENDPOINT=http://<collector>:4317 to send them to your backend too."
    );
    if !summary.is_empty() {
        println!("{summary}");
    }
    if check {
        check_demo(&traces, &printed, requests)?;
        println!("demo check: ok");
    }
    Ok(())
}

/// One span of the demo's OTLP-JSON output.
#[derive(Debug, Clone)]
struct DemoSpan {
    trace: String,
    id: String,
    parent: String,
    service: String,
    kind: i64,
    start: u64,
    end: u64,
    path: String,
    /// `db.query.text` (database client spans).
    query: String,
}

fn read_spans(path: &Path) -> Result<Vec<DemoSpan>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    let str_of = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let num =
        |v: &serde_json::Value| v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64()).unwrap_or(0);
    for line in text.lines() {
        let req: serde_json::Value = serde_json::from_str(line)?;
        for rs in req["resourceSpans"].as_array().into_iter().flatten() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .map(|a| str_of(&a["value"]["stringValue"]))
                .unwrap_or_default();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for sp in ss["spans"].as_array().into_iter().flatten() {
                    let attr = |k: &str| {
                        sp["attributes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|a| a["key"] == k)
                            .map(|a| str_of(&a["value"]["stringValue"]))
                            .unwrap_or_default()
                    };
                    let path = if sp["kind"] == 2 { attr("url.path") } else { attr("url.full") };
                    out.push(DemoSpan {
                        trace: str_of(&sp["traceId"]),
                        id: str_of(&sp["spanId"]),
                        parent: str_of(&sp["parentSpanId"]),
                        service: service.clone(),
                        kind: sp["kind"].as_i64().unwrap_or(0),
                        start: num(&sp["startTimeUnixNano"]),
                        end: num(&sp["endTimeUnixNano"]),
                        path,
                        query: attr("db.query.text"),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The demo's acceptance: each page load is exactly one trace holding the server and client
/// spans of all six services in the right tree, the Recommendation Service takes most of the
/// page load, and the verdict names it.
fn check_demo(traces: &Path, printed: &[String], requests: u32) -> Result<()> {
    let spans = read_spans(traces)?;
    let mut by_trace: std::collections::BTreeMap<String, Vec<DemoSpan>> = Default::default();
    for s in &spans {
        by_trace.entry(s.trace.clone()).or_default().push(s.clone());
    }
    if by_trace.len() != requests as usize {
        bail!(
            "{} traces for {requests} page loads (every span must join its page load's trace)",
            by_trace.len()
        );
    }
    // Caller of each service's server span.
    let callers = [
        ("user-service", "api-gateway"),
        ("product-service", "api-gateway|recommendation-service"),
        ("recommendation-service", "api-gateway"),
        ("cart-service", "api-gateway"),
        ("pricing-service", "cart-service"),
    ];
    for (trace, t) in &by_trace {
        if t.len() < 15 {
            bail!("trace {trace} has {} spans, expected at least 15", t.len());
        }
        // The two queries and the session lookup, as client spans of their services (their
        // parents are checked with every client span's below), with their literals and keys
        // taken out.
        for (svc, sanitized) in [
            ("api-gateway", "GET ?"),
            (
                "cart-service",
                "SELECT p.name, p.price, c.qty FROM cart_items c JOIN products p ON p.id = c.product_id WHERE c.cart_id = ?",
            ),
            (
                "recommendation-service",
                "SELECT v.product_id, count(*) FROM views v, pg_sleep(?) WHERE v.user_id = ? GROUP BY v.product_id ORDER BY count(*) DESC LIMIT ?",
            ),
        ] {
            if !t.iter().any(|s| s.service == svc && s.kind == 3 && s.query == sanitized) {
                let queries: Vec<&str> =
                    t.iter().map(|s| s.query.as_str()).filter(|q| !q.is_empty()).collect();
                bail!("trace {trace}: no query span of {svc} reading {sanitized:?}, found {queries:?}");
            }
        }
        let roots: Vec<&DemoSpan> = t.iter().filter(|s| s.parent.is_empty()).collect();
        if roots.len() != 1
            || roots[0].service != "api-gateway"
            || roots[0].kind != 2
            || roots[0].path != "/page"
        {
            bail!("trace {trace}: the root must be the gateway's GET /page, found {roots:?}");
        }
        let by_id: std::collections::HashMap<&str, &DemoSpan> =
            t.iter().map(|s| (s.id.as_str(), s)).collect();
        for s in t.iter().filter(|s| !s.parent.is_empty()) {
            let Some(parent) = by_id.get(s.parent.as_str()) else {
                bail!("trace {trace}: {} {} has a parent outside the trace", s.service, s.path);
            };
            if s.kind == 2 {
                // A server span's parent is the client span that called it, in the caller.
                let (_, allowed) =
                    callers.iter().find(|(svc, _)| *svc == s.service).copied().unwrap_or(("", ""));
                if parent.kind != 3 || !allowed.split('|').any(|a| a == parent.service) {
                    bail!(
                        "trace {trace}: {} {} is a child of {} {}",
                        s.service,
                        s.path,
                        parent.service,
                        parent.path
                    );
                }
            } else if parent.kind != 2 || parent.service != s.service {
                bail!(
                    "trace {trace}: client span {} {} is not under its own service's request",
                    s.service,
                    s.path
                );
            }
        }
        for (svc, _) in callers.iter().chain([("api-gateway", "")].iter()) {
            if !t.iter().any(|s| s.service == *svc && s.kind == 2) {
                bail!("trace {trace}: no server span of {svc}");
            }
        }
        let root = roots[0];
        let rec = t
            .iter()
            .find(|s| s.service == "recommendation-service" && s.kind == 2)
            .context("recommendation span")?;
        let share = (rec.end - rec.start) as f64 / (root.end - root.start).max(1) as f64;
        if !(0.6..=0.9).contains(&share) {
            bail!("trace {trace}: the Recommendation Service took {:.0}% of the page load", share * 100.0);
        }
        println!(
            "demo check: trace {trace}: {} spans, Recommendation Service {:.0}% of the page load",
            t.len(),
            share * 100.0
        );
    }
    // The bottleneck named: Recommendation's slow query.
    let verdicts =
        printed.iter().filter(|l| l.contains("slowest: recommendation-service SQL SELECT")).count();
    let page_traces = printed.iter().filter(|l| l.starts_with("trace ")).count();
    if verdicts != requests as usize || page_traces != requests as usize {
        bail!(
            "expected {requests} waterfalls each naming recommendation-service's query, saw {page_traces} traces and {verdicts} such verdicts"
        );
    }
    // The requests table at exit: every page load the gateway served, counted.
    let served = printed
        .iter()
        .skip_while(|l| !l.starts_with("requests measured"))
        .find(|l| l.trim_start().starts_with("api-gateway") && l.contains(" GET 200 "))
        .and_then(|l| l.split_whitespace().rev().nth(5)?.parse::<u32>().ok());
    if served != Some(requests) {
        bail!(
            "expected the requests table to count {requests} GET 200 served by api-gateway, saw {served:?}"
        );
    }
    // The service graph at exit: each call between two services is one edge named by both, and
    // each page load comes from `user`.
    let graph: Vec<Vec<&str>> = printed
        .iter()
        .skip_while(|l| !l.starts_with("service graph"))
        .skip(2)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let edges = callers
        .iter()
        .flat_map(|(server, clients)| clients.split('|').map(move |c| (c, *server)))
        .chain([("[user]", "api-gateway")]);
    for (client, server) in edges {
        let calls = graph
            .iter()
            .find(|t| t.len() > 2 && t[0] == client && t[1] == server)
            .and_then(|t| t[2].parse::<u32>().ok());
        if calls != Some(requests) {
            bail!("expected the service graph to count {requests} calls {client} → {server}, saw {calls:?}");
        }
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "kill"]
    pub(crate) fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn test(args: &[String]) -> Result<()> {
    // Default members: the kernel crate only builds for the bpf target (through agent/build.rs).
    run(Command::new("cargo").args(["test", "--profile", TEST_PROFILE]).args(args).current_dir(root()))?;
    if args.is_empty() {
        // The demo, headless, as the end-to-end acceptance test.
        demo(2, 1400, true, false)?;
        println!("demo: 1 passed, 0 failed");
    }
    Ok(())
}
