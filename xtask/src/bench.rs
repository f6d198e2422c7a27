//! `cargo xtask bench`: what tracewire costs, measured side by side in one run, as ratios.
//!
//! nginx (`return 200`) under wrk: without the agent, with it, without it again. The agent's own
//! CPU comes from /proc, its kernel time from bpf_stats. The userspace pipeline is timed on a
//! recording of the same traffic. An unwatched process's syscall cost is timed with dd and a
//! socket loop. A small Go net/http server gets the same A/B/A, and a Go service calling a Go
//! leaf is traced with the goroutine uprobes and without, to show what following them costs.
//! Nothing here is a test: the numbers are printed and written to target/bench/report.json.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{Guard, libc_kill, load, root};

/// Response sizes of R15 (nginx files, KiB), and of its Go server (bytes).
const R15_NGINX_KIB: [usize; 2] = [4, 64];
const R15_GO_BYTES: usize = 4096;

/// One R15 case: what tracewire's programs cost per request, and what they copied.
struct SizeCost {
    what: String,
    bpf_ns: f64,
    copied: f64,
    skipped: f64,
}

/// Traces `pid` under wrk on `path` with bpf_stats on: BPF ns per request (net of bpf_stats'
/// own cost), payload bytes copied per request, and bodies counted without a copy per request.
fn size_cost(
    tracewire: &Path,
    what: String,
    pid: u32,
    port: u16,
    path: &str,
    secs: u64,
    empty_run_ns: f64,
) -> Result<SizeCost> {
    let pid = pid.to_string();
    let (mut agent, lines) =
        start_agent(tracewire, &["run", "--pid", &pid, "--print", "none", "--status-interval", "0"])?;
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let (ns0, cnt0) = bpf_stats();
    let (requests, _) = wrk_path(port, path, secs)?;
    let (ns1, cnt1) = bpf_stats();
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    stop(&mut agent);
    let summary = summary_of(&lines);
    let per_req = |x: f64| x / requests.max(1) as f64;
    Ok(SizeCost {
        what,
        bpf_ns: per_req(net_bpf((ns0, cnt0), (ns1, cnt1), empty_run_ns).0),
        copied: per_req(summary["kernel"]["payload_bytes"].as_f64().unwrap_or(0.0)),
        skipped: per_req(summary["kernel"]["body_skipped"].as_f64().unwrap_or(0.0)),
    })
}

/// BPF run time and program runs between two bpf_stats readings, the run time net of what
/// bpf_stats reports for a program that does nothing (its own clock reads, `empty_run_ns` per
/// run), which tracewire's programs do not pay without it.
fn net_bpf((ns0, runs0): (u64, u64), (ns1, runs1): (u64, u64), empty_run_ns: f64) -> (f64, f64) {
    let runs = runs1.saturating_sub(runs0) as f64;
    ((ns1.saturating_sub(ns0) as f64 - runs * empty_run_ns).max(0.0), runs)
}

/// R16: the data path of kernels without the socket tracepoints (before 6.16).
struct SyscallHooksCost {
    /// BPF ns per nginx request (net of bpf_stats' own cost), and program runs per request.
    request_ns: f64,
    request_runs: f64,
    /// BPF ns per syscall of an unwatched process, and runs per syscall: dd's file I/O, then the
    /// loopback socket loop.
    file_ns: f64,
    file_runs: f64,
    socket_ns: f64,
    socket_runs: f64,
}

/// The agent on the syscall data path (`--data-hooks syscalls`, what kernels before 6.16 get:
/// 5.15, 6.1, 6.6 and the other long-term ones), with bpf_stats on: nginx (`pid` on `port`)
/// under wrk, then `n` one-byte dd copies and `sn` loopback write+read pairs of this
/// (unwatched) process.
fn syscall_hooks_cost(
    tracewire: &Path,
    pid: u32,
    port: u16,
    secs: u64,
    (n, sn): (u64, u64),
    empty_run_ns: f64,
) -> Result<SyscallHooksCost> {
    let pid = pid.to_string();
    let (mut agent, _) = start_agent(
        tracewire,
        &["run", "--pid", &pid, "--print", "none", "--status-interval", "0", "--data-hooks", "syscalls"],
    )?;
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let s0 = bpf_stats();
    // Each measurement's error waits until bpf_stats is off and the agent stopped.
    let measured = wrk(port, secs);
    let s1 = bpf_stats();
    let file = dd_seconds(n);
    let s2 = bpf_stats();
    let socket = socket_loop_seconds(sn);
    let s3 = bpf_stats();
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    stop(&mut agent);
    let (requests, _) = measured?;
    file?;
    socket?;
    // (net ns, runs) per unit between two readings.
    let per = |a, b, units: u64| {
        let (ns, runs) = net_bpf(a, b, empty_run_ns);
        let units = units.max(1) as f64;
        (ns / units, runs / units)
    };
    let (request_ns, request_runs) = per(s0, s1, requests);
    let (file_ns, file_runs) = per(s1, s2, 2 * n);
    let (socket_ns, socket_runs) = per(s2, s3, 2 * sn);
    Ok(SyscallHooksCost { request_ns, request_runs, file_ns, file_runs, socket_ns, socket_runs })
}

/// R17: one request per connection (clients that do not keep connections alive, health checks,
/// HTTP/1.0 peers): every request also opens, accepts and closes a connection, which runs the
/// connection lifecycle hooks for both sockets.
struct ChurnCost {
    /// req/s without, with, without the agent (exporting).
    base1: f64,
    with: f64,
    base2: f64,
    /// Requests wrk completed in the run with the agent, and the spans the agent made then.
    requests: u64,
    spans: u64,
    /// Agent CPU-s (user+sys) per million requests, in the run with the agent.
    agent_cpu_per_m: f64,
    /// BPF ns per request net of bpf_stats' own cost, and program runs per request, from a run
    /// of its own with bpf_stats on.
    bpf_ns: f64,
    runs: f64,
    /// The same, with the agent watching another process: what the connections of a service
    /// tracewire does not trace pay (both sockets' state changes, the sock_ops callbacks, the
    /// data hooks' early exits).
    unwatched_ns: f64,
    unwatched_runs: f64,
}

/// wrk's arguments for one request per connection: nginx closes after each response, wrk
/// reconnects.
const CLOSE: [&str; 2] = ["-H", "Connection: close"];

/// R17 against nginx on `port`: A/B/A throughput with the agent started with `args`, then the
/// same agent with bpf_stats on, then an agent watching another process with bpf_stats on.
fn churn_cost(tracewire: &Path, args: &[&str], port: u16, secs: u64, empty_run_ns: f64) -> Result<ChurnCost> {
    let (_, base1) = wrk_args(port, "/", secs, &CLOSE)?;
    let (mut agent, lines) = start_agent(tracewire, args)?;
    let agent_pid = agent.0.id();
    let cpu0 = cpu_seconds(agent_pid);
    let measured = wrk_args(port, "/", secs, &CLOSE);
    let cpu = cpu_seconds(agent_pid) - cpu0;
    stop(&mut agent);
    let (requests, with) = measured?;
    let spans = summary_of(&lines)["spans"].as_u64().unwrap_or(0);
    let (_, base2) = wrk_args(port, "/", secs, &CLOSE)?;
    let (bpf_ns, runs) = churn_bpf(tracewire, args, port, secs, empty_run_ns)?;
    // The agent watching a process that does nothing (nginx unwatched).
    let other = idle_process()?;
    let other_pid = other.0.id().to_string();
    let unwatched = ["run", "--pid", &other_pid, "--print", "none", "--status-interval", "0"];
    let (unwatched_ns, unwatched_runs) = churn_bpf(tracewire, &unwatched, port, secs, empty_run_ns)?;
    drop(other);
    Ok(ChurnCost {
        base1,
        with,
        base2,
        requests,
        spans,
        agent_cpu_per_m: cpu / requests.max(1) as f64 * 1e6,
        bpf_ns,
        runs,
        unwatched_ns,
        unwatched_runs,
    })
}

/// BPF ns per request (net of bpf_stats' own cost) and program runs per request of one wrk run
/// of one request per connection, the agent started with `args`.
fn churn_bpf(tracewire: &Path, args: &[&str], port: u16, secs: u64, empty_run_ns: f64) -> Result<(f64, f64)> {
    let run = stats_run(tracewire, args, port, secs, &CLOSE)?;
    Ok(run.per_request(empty_run_ns))
}

/// bpf_stats before and after one wrk run, and the requests it made.
struct StatsRun {
    before: (u64, u64),
    after: (u64, u64),
    requests: u64,
}

impl StatsRun {
    /// BPF ns per request net of bpf_stats' own cost, and program runs per request.
    fn per_request(&self, empty_run_ns: f64) -> (f64, f64) {
        let (ns, runs) = net_bpf(self.before, self.after, empty_run_ns);
        let requests = self.requests.max(1) as f64;
        (ns / requests, runs / requests)
    }
}

/// bpf_stats over one wrk run (`wrk_extra`: its extra arguments) with the agent started with `args`.
fn stats_run(tracewire: &Path, args: &[&str], port: u16, secs: u64, wrk_extra: &[&str]) -> Result<StatsRun> {
    let (mut agent, _) = start_agent(tracewire, args)?;
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let before = bpf_stats();
    let measured = wrk_args(port, "/", secs, wrk_extra);
    let after = bpf_stats();
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    stop(&mut agent);
    Ok(StatsRun { before, after, requests: measured?.0 })
}

/// A process that does nothing, for the agent to watch instead of nginx (every run of the
/// programs then takes the unwatched exit).
fn idle_process() -> Result<Guard> {
    Ok(Guard(Command::new("sleep").arg("3600").spawn().context("starting sleep")?))
}

struct Nginx {
    _guard: Guard,
    pid: u32,
    port: u16,
    /// The same `return 200` over HTTPS (R20).
    tls_port: u16,
    /// The same over cleartext HTTP/2 (R21).
    h2_port: u16,
    dir: PathBuf,
}

fn start_nginx() -> Result<Nginx> {
    let dir = root().join("target/bench/nginx");
    fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let h2_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let d = dir.display();
    // R20's certificate: self-signed, made by the openssl command `cargo xtask setup` installs.
    let cert = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .context("running openssl req")?;
    if !cert.status.success() {
        bail!("openssl req: {}", String::from_utf8_lossy(&cert.stderr));
    }
    fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off; master_process on; worker_processes 1; user root; pid {d}/nginx.pid;\n\
             worker_rlimit_nofile 16000; error_log {d}/error.log;\nevents {{ worker_connections 16384; }}\n\
             http {{ access_log off; keepalive_requests 10000000; client_body_temp_path {d}; proxy_temp_path {d};\n\
             fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }}\n\
             location /files/ {{ sendfile off; root {d}; }} }}\n\
             server {{ listen 127.0.0.1:{tls_port} ssl; ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;\n\
             location / {{ return 200 \"ok\\n\"; }} }}\n\
             server {{ listen 127.0.0.1:{h2_port} http2; location / {{ return 200 \"ok\\n\"; }} }} }}\n"
        ),
    )?;
    // R15's files: nginx without sendfile writes each as head and body in one writev (a 64 KiB
    // one as two writes of its 32 KiB output buffers).
    fs::create_dir_all(dir.join("files"))?;
    for kib in R15_NGINX_KIB {
        fs::write(dir.join(format!("files/{kib}k.txt")), vec![b'x'; kib * 1024])?;
    }
    let child = Command::new("nginx")
        .args(["-c", &dir.join("nginx.conf").display().to_string(), "-p", &d.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nginx did not start");
        }
        std::thread::yield_now();
    }
    Ok(Nginx { _guard: Guard(child), pid, port, tls_port, h2_port, dir })
}

/// A Go net/http service (tests/peers/hop.go): answers `ok`, or first calls `next` over pooled
/// keep-alive connections.
struct GoHop {
    _guard: Guard,
    pid: u32,
    port: u16,
}

/// Builds tests/peers/hop.go with the Go toolchain `cargo xtask setup` installs.
fn build_go_hop() -> Result<PathBuf> {
    let out = root().join("target/bench/hop-go");
    let status = Command::new("/usr/lib/go-1.19/bin/go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(root().join("tests/peers/hop.go"))
        .env("GOCACHE", root().join("target/go-cache"))
        .env("GOPATH", root().join("target/go-path"))
        .env("GO111MODULE", "off")
        .status()
        .context("running go build (cargo xtask setup installs Go 1.19)")?;
    if !status.success() {
        bail!("go build tests/peers/hop.go failed");
    }
    Ok(out)
}

/// A Go hop calling `next`, or answering `ok` (`body` 0) or `body` bytes; over HTTPS with the
/// `cert.pem` and `key.pem` in `tls` when given.
fn start_go_hop(bin: &Path, next: Option<u16>, body: usize, tls: Option<&Path>) -> Result<GoHop> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new(bin);
    cmd.args(["127.0.0.1", &port.to_string()]).env("HOP_KEEPALIVE", "1").env("HOP_BODY", body.to_string());
    if let Some(dir) = tls {
        cmd.env("HOP_TLS_CERT", dir.join("cert.pem")).env("HOP_TLS_KEY", dir.join("key.pem"));
    }
    if let Some(next) = next {
        cmd.arg(format!("http://127.0.0.1:{next}"));
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("starting the Go service")?;
    let pid = child.id();
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("the Go service did not start");
        }
        std::thread::yield_now();
    }
    Ok(GoHop { _guard: guard, pid, port })
}

/// wrk's totals: (requests, requests/s).
fn wrk(port: u16, secs: u64) -> Result<(u64, f64)> {
    wrk_path(port, "/", secs)
}

/// wrk's totals for requests of `path`.
fn wrk_path(port: u16, path: &str, secs: u64) -> Result<(u64, f64)> {
    wrk_args(port, path, secs, &[])
}

/// wrk's totals for requests of `path`, with `extra` arguments.
fn wrk_args(port: u16, path: &str, secs: u64, extra: &[&str]) -> Result<(u64, f64)> {
    wrk_url(&format!("http://127.0.0.1:{port}{path}"), secs, extra)
}

/// wrk's totals for requests of `url`, with `extra` arguments.
fn wrk_url(url: &str, secs: u64, extra: &[&str]) -> Result<(u64, f64)> {
    let out = Command::new("wrk")
        .args(["-t", "1", "-c", "8", "-d", &format!("{secs}s")])
        .args(extra)
        .arg(url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected wrk output: {text}"))?;
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected wrk output: {text}"))?;
    Ok((requests, rps))
}

/// h2load's streams over cleartext HTTP/2 (prior knowledge): 8 connections, 10 streams in
/// flight on each, for `secs`. Returns (requests completed, requests per second).
fn h2load(url: &str, secs: u64) -> Result<(u64, f64)> {
    let out = Command::new("h2load")
        .args(["-t", "1", "-c", "8", "-m", "10", "-D", &secs.to_string()])
        .arg(url)
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "finished in 10.00s, 21807.43 req/s, 1.44MB/s" and "requests: N total, N started, N done, ..."
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s"))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected h2load output: {text}"))?;
    let done = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| l.split(", ").find_map(|f| f.strip_suffix(" done")))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected h2load output: {text}"))?;
    Ok((done, rps))
}

/// The machine's CPU time so far, (idle + iowait, total), in clock ticks (/proc/stat's first line).
fn cpu_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (idle, v.iter().take(8).sum())
}

/// `f`'s result, and the share of the machine's CPU time that was idle while it ran, in %.
fn with_idle<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let (i0, t0) = cpu_ticks();
    let r = f()?;
    let (i1, t1) = cpu_ticks();
    Ok((r, 100.0 * i1.saturating_sub(i0) as f64 / t1.saturating_sub(t0).max(1) as f64))
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/PID/stat, counted from after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU time of every thread of `pid`, in ns (schedstat: not rounded to clock ticks).
fn cpu_ns_all_threads(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

fn current_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// (run_time_ns, run_cnt) summed over tracewire's programs (bpf_stats must be on).
fn bpf_stats() -> (u64, u64) {
    bpf_stats_of(|name| {
        name.starts_with("sys_enter")
            || name.starts_with("sys_exit")
            || name.starts_with("sock_send_length")
            || name.starts_with("sock_recv_length")
            || name.starts_with("tcp_sendmsg_lock")
            || name == "tcp_option"
            || name.starts_with("sched_process_")
            || name == "inet_sock_set_state"
            || name == "sock_set_state"
            || name == "tcp_destroy_sock"
            || name == "tcp_rcv_space_adjust"
    })
}

/// `bpftool <args> --json`, parsed (Null when it printed no JSON).
fn bpftool_json(args: &[&str]) -> Result<Value> {
    let out = Command::new("bpftool").args(args).arg("--json").output().context("running bpftool")?;
    Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

/// The loaded BPF programs, as bpftool lists them (an empty list without bpftool).
fn loaded_programs() -> Vec<Value> {
    match bpftool_json(&["prog", "show"]) {
        Ok(Value::Array(progs)) => progs,
        _ => Vec::new(),
    }
}

/// (run_time_ns, run_cnt) summed over the loaded programs whose name `select` accepts.
fn bpf_stats_of(select: impl Fn(&str) -> bool) -> (u64, u64) {
    let progs = loaded_programs();
    let mut ns = 0;
    let mut cnt = 0;
    for p in &progs {
        if select(p["name"].as_str().unwrap_or("")) {
            ns += p["run_time_ns"].as_u64().unwrap_or(0);
            cnt += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    (ns, cnt)
}

/// R19, R23, R24: what tracewire costs a database client.
struct DbCost {
    /// The client's operations per second: without, with, without.
    tps: [f64; 3],
    /// Operations in the traced run.
    transactions: u64,
    spans: u64,
    agent_cpu_per_m: f64,
}

/// A client's rate and operations from its report.
type ParseReport<'a> = dyn Fn(&std::process::Output) -> Result<(f64, u64)> + 'a;

/// A database client's load, A/B/A: `program` with `args`, its report read by `parse`; in the
/// B run the agent watches the client from its first connection (a shell it watches, which then
/// becomes the client) and exports.
fn client_cost(
    tracewire: &Path,
    sink: &str,
    program: &Path,
    args: &[String],
    parse: &ParseReport<'_>,
) -> Result<DbCost> {
    let run = || -> Result<(f64, u64)> { parse(&Command::new(program).args(args).output()?) };
    let base1 = run()?.0;
    let mut shell = Command::new("sh")
        .args(["-c", "read _ && exec \"$0\" \"$@\""])
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let shell_pid = shell.id().to_string();
    let agent_args = exporting_run(sink, &["--pid", &shell_pid]);
    let (mut agent, lines) = start_agent(tracewire, &agent_args)?;
    let cpu0 = cpu_seconds(agent.0.id());
    shell.stdin.take().context("shell stdin")?.write_all(b"go\n")?;
    let (with, transactions) = parse(&shell.wait_with_output()?)?;
    let cpu1 = cpu_seconds(agent.0.id());
    stop(&mut agent);
    let spans = summary_of(&lines)["spans"].as_u64().unwrap_or(0);
    let base2 = run()?.0;
    Ok(DbCost {
        tps: [base1, with, base2],
        transactions,
        spans,
        agent_cpu_per_m: (cpu1 - cpu0) / transactions.max(1) as f64 * 1e6,
    })
}

impl DbCost {
    /// The report's row: `units` names the rate, the operations and what a span is one of. One
    /// span per operation, plus a few of the client's own setup statements.
    fn row(&self, id: &str, measure: &str, target: &str, setup: &str, units: (&str, &str, &str)) -> Value {
        let (rate, ops, per) = units;
        let base = (self.tps[0] + self.tps[2]) / 2.0;
        row(
            id,
            measure,
            self.tps[1] / base.max(1.0),
            target,
            self.spans >= self.transactions && self.spans <= self.transactions + 16,
            &format!(
                "{setup}, exporting: {:.0} vs {:.0}/{:.0} {rate}; {} spans for {} {ops}; agent {:.2} CPU-s per M {per}",
                self.tps[1], self.tps[0], self.tps[2], self.spans, self.transactions, self.agent_cpu_per_m
            ),
        )
    }
}

/// R19: pgbench's select-only transactions (one prepared statement each: Bind, Execute, Sync
/// and their answers) against a local PostgreSQL.
fn database_cost(tracewire: &Path, sink: &str, secs: u64) -> Result<DbCost> {
    let db = crate::database::Database::start()?;
    let pgbench = crate::database::Database::pgbench();
    let init =
        Command::new(&pgbench).args(db.client_args()).args(["-i", "-q", "-s", "1", db.name]).output()?;
    if !init.status.success() {
        bail!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
    }
    let secs = secs.to_string();
    let run_args: Vec<String> = db
        .client_args()
        .into_iter()
        .chain(["-n", "-S", "-M", "prepared", "-c", "4", "-j", "2", "-T", &secs, db.name].map(str::to_string))
        .collect();
    // tps and transactions from pgbench's report.
    let parse = |out: &std::process::Output| -> Result<(f64, u64)> {
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("pgbench: {}", String::from_utf8_lossy(&out.stderr));
        }
        let field = |prefix: &str| {
            text.lines().find_map(|l| l.trim().strip_prefix(prefix)).and_then(|v| v.split_whitespace().next())
        };
        let tps = field("tps = ").and_then(|v| v.parse().ok()).context("pgbench printed no tps")?;
        let n = field("number of transactions actually processed: ")
            .and_then(|v| v.split('/').next()?.parse().ok())
            .context("pgbench printed no transaction count")?;
        Ok((tps, n))
    };
    client_cost(tracewire, sink, &pgbench, &run_args, &parse)
}

/// R24: mariadb-slap's queries (one text query each, four connections) against a local
/// MariaDB, after a run that warms the server up; the queries are counted by the server.
fn mysql_cost(tracewire: &Path, sink: &str, queries: u64) -> Result<DbCost> {
    let db = crate::database::MariaDb::start()?;
    let args: Vec<String> = db
        .client_args()
        .into_iter()
        .chain(
            [
                "--create-schema=slap",
                "--delimiter=;",
                "--create=CREATE TABLE t (id int PRIMARY KEY, name varchar(32)); INSERT INTO t VALUES (1, 'a')",
                "--query=SELECT name FROM t WHERE id = 1",
                "--concurrency=4",
                "--iterations=1",
            ]
            .map(str::to_string),
        )
        .chain([format!("--number-of-queries={queries}")])
        .collect();
    let warm = Command::new("mariadb-slap").args(&args).output()?;
    if !warm.status.success() {
        bail!("mariadb-slap: {}", String::from_utf8_lossy(&warm.stderr));
    }
    let before = std::cell::Cell::new(db.selects()?);
    // "Average number of seconds to run all queries: 1.234 seconds": the rate; the SELECTs the
    // server ran, the operations (the schema's statements around them make a few spans more).
    let parse = |out: &std::process::Output| -> Result<(f64, u64)> {
        if !out.status.success() {
            bail!("mariadb-slap: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let secs: f64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Average number of seconds to run all queries: "))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("mariadb-slap printed no time")?;
        let now = db.selects()?;
        Ok((queries as f64 / secs.max(1e-6), now.saturating_sub(before.replace(now))))
    };
    client_cost(tracewire, sink, Path::new("mariadb-slap"), &args, &parse)
}

/// R23: redis-benchmark's GETs, one command a write from four connections, against a local
/// Redis.
fn redis_cost(tracewire: &Path, sink: &str, requests: u64) -> Result<DbCost> {
    let cache = crate::database::Cache::start()?;
    let args: Vec<String> = ["-p", &cache.port.to_string(), "-c", "4", "-P", "1", "-t", "get", "--csv", "-n"]
        .iter()
        .map(|s| s.to_string())
        .chain([requests.to_string()])
        .collect();
    // "GET","60790.27",... : the rate; the requests are the ones asked for.
    let parse = move |out: &std::process::Output| -> Result<(f64, u64)> {
        if !out.status.success() {
            bail!("redis-benchmark: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let rps = text
            .lines()
            .find_map(|l| l.strip_prefix("\"GET\",\""))
            .and_then(|r| r.split('"').next()?.parse().ok())
            .context("redis-benchmark printed no GET rate")?;
        Ok((rps, requests))
    };
    client_cost(tracewire, sink, Path::new("redis-benchmark"), &args, &parse)
}

/// R25: a protocol tracewire does not read, streamed over loopback with every process traced:
/// what the stream's throughput keeps, and what the agent spends on it once it has muted the
/// connection.
struct StreamCost {
    /// MiB/s: without, with, without the agent.
    mib_s: [f64; 3],
    /// Agent CPU-s during the run with it.
    agent_cpu: f64,
    /// The kernel's counters of that run: events, payload bytes copied, connections muted.
    events: u64,
    copied: u64,
    muted: u64,
}

/// Writes `chunks` chunks of 64 KiB of a binary protocol to a reader on loopback, both in this
/// process; returns MiB/s.
fn stream_mib_s(chunks: u64) -> Result<f64> {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut c, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        loop {
            match c.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let chunk = vec![0xfe_u8; 1 << 16];
    let start = Instant::now();
    let mut w = std::net::TcpStream::connect(addr)?;
    for _ in 0..chunks {
        w.write_all(&chunk)?;
    }
    drop(w);
    let read = reader.join().map_err(|_| anyhow::anyhow!("stream reader panicked"))??;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(read == chunks << 16, "the stream lost bytes: {read}");
    Ok((chunks * 64) as f64 / 1024.0 / secs)
}

/// R25 (see [`StreamCost`]): without, with (every process traced, exporting), without.
fn stream_cost(tracewire: &Path, sink: &str, chunks: u64) -> Result<StreamCost> {
    let base1 = stream_mib_s(chunks)?;
    let (mut agent, lines) = start_agent(tracewire, &exporting_run(sink, &[]))?;
    let cpu0 = cpu_seconds(agent.0.id());
    let with = stream_mib_s(chunks);
    let agent_cpu = cpu_seconds(agent.0.id()) - cpu0;
    stop(&mut agent);
    let with = with?;
    let summary = summary_of(&lines);
    let kernel = |k: &str| summary["kernel"][k].as_u64().unwrap_or(0);
    let base2 = stream_mib_s(chunks)?;
    Ok(StreamCost {
        mib_s: [base1, with, base2],
        agent_cpu,
        events: kernel("events_out"),
        copied: kernel("payload_bytes"),
        muted: kernel("muted"),
    })
}

/// R20 to R22: what tracing costs a server under a load generator (HTTPS, HTTP/2).
struct ServerCost {
    /// Requests per second: without, with, without the agent (exporting).
    rps: [f64; 3],
    requests: u64,
    spans: u64,
    /// Agent CPU-s (user+sys) per million requests, in the run with the agent.
    agent_cpu_per_m: f64,
    /// BPF ns per request net of bpf_stats' own cost, and program runs per request (the uprobe
    /// traps themselves are not in it: they show in the throughput).
    bpf_ns: f64,
    runs: f64,
}

impl ServerCost {
    /// The report row: the throughput ratio, and a span for every request (up to `in_flight`
    /// more: requests the load generator left unfinished).
    fn row(&self, id: &str, measure: &str, in_flight: u64, setup: &str, bpf_note: &str) -> Value {
        let base = (self.rps[0] + self.rps[2]) / 2.0;
        row(
            id,
            measure,
            self.rps[1] / base.max(1.0),
            "1 span/req",
            self.spans >= self.requests && self.spans <= self.requests + in_flight,
            &format!(
                "{setup}, exporting: {:.0} vs {:.0}/{:.0} req/s; {} spans for {} requests; agent {:.2} CPU-s per M \
                 requests; BPF {:.0} ns per request ({:.1} program runs){bpf_note}",
                self.rps[1],
                self.rps[0],
                self.rps[2],
                self.spans,
                self.requests,
                self.agent_cpu_per_m,
                self.bpf_ns,
                self.runs
            ),
        )
    }
}

/// A load generator's run: (requests completed, requests per second).
type Load<'a> = &'a dyn Fn() -> Result<(u64, f64)>;

/// R20 to R22 against a server: A/B/A with the agent watching it, then a run
/// with bpf_stats on.
fn server_cost(tracewire: &Path, load: Load<'_>, args: &[&str], empty_run_ns: f64) -> Result<ServerCost> {
    let (_, base1) = load()?;
    let (mut agent, lines) = start_agent(tracewire, args)?;
    let agent_pid = agent.0.id();
    let cpu0 = cpu_seconds(agent_pid);
    let measured = load();
    let cpu = cpu_seconds(agent_pid) - cpu0;
    stop(&mut agent);
    let (requests, with) = measured?;
    let summary = summary_of(&lines);
    let spans = summary["spans"].as_u64().unwrap_or(0);
    let (_, base2) = load()?;
    let (mut agent, _) = start_agent(tracewire, args)?;
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let before = bpf_stats();
    let stats = load();
    let after = bpf_stats();
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    stop(&mut agent);
    let run = StatsRun { before, after, requests: stats?.0 };
    let (bpf_ns, runs) = run.per_request(empty_run_ns);
    Ok(ServerCost {
        rps: [base1, with, base2],
        requests,
        spans,
        agent_cpu_per_m: cpu / requests.max(1) as f64 * 1e6,
        bpf_ns,
        runs,
    })
}

/// `tracewire run` exporting OTLP/HTTP to `sink`, quietly, tracing what `select` selects
/// (every process when empty).
fn exporting_run<'a>(sink: &'a str, select: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend_from_slice(select);
    args.extend([
        "--print",
        "none",
        "--status-interval",
        "0",
        "--otlp-endpoint",
        sink,
        "--otlp-protocol",
        "http/protobuf",
    ]);
    args
}

/// Starts the agent and waits until it has attached.
fn start_agent(tracewire: &Path, args: &[&str]) -> Result<(Guard, std::sync::mpsc::Receiver<String>)> {
    let mut child: Child = Command::new(tracewire)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tracewire")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).context("agent not ready")?;
        if l.contains("tracing with") || l.contains("capturing with") {
            break;
        }
    }
    Ok((Guard(child), rx))
}

/// The JSON summary a stopped agent printed on stderr (Null if none).
fn summary_of(lines: &std::sync::mpsc::Receiver<String>) -> Value {
    lines
        .try_iter()
        .find_map(|l| l.strip_prefix("tracewire: summary ").map(str::to_string))
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

fn stop(agent: &mut Guard) {
    // SAFETY: plain signal to our own child.
    unsafe { libc_kill(agent.0.id() as i32, 2) };
    let _ = agent.0.wait();
}

/// Seconds dd takes to move `n` single bytes (2n syscalls) from /dev/zero to /dev/null.
fn dd_seconds(n: u64) -> Result<f64> {
    let start = Instant::now();
    let status = Command::new("dd")
        .args(["if=/dev/zero", "of=/dev/null", "bs=1", &format!("count={n}")])
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("dd failed");
    }
    Ok(start.elapsed().as_secs_f64())
}

/// CPU seconds the calling thread has used: unlike wall time, not inflated when the scheduler
/// runs something else on this core (on a 2-core VM, back-to-back wall-clock baselines of the
/// socket loop differed by up to 60 %).
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// CPU seconds this (unwatched) thread takes for `n` one-byte write + read pairs over a loopback
/// TCP connection: 2n socket syscalls, each of which passes tracewire's socket hooks (loopback
/// delivery runs in the writer's syscall, so it is counted too).
fn socket_loop_seconds(n: u64) -> Result<f64> {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    let mut b = [0u8; 1];
    let start = thread_cpu_seconds();
    for _ in 0..n {
        client.write_all(&b)?;
        server.read_exact(&mut b)?;
    }
    Ok(thread_cpu_seconds() - start)
}

/// The fastest of `k` timings: on a shared 2-core VM the noise only ever adds time.
fn fastest(k: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..k {
        best = best.min(f()?);
    }
    Ok(best)
}

/// What bpf_stats measures in the unwatched socket loop, and what it costs itself.
struct StatsCalibration {
    /// What bpf_stats reports per run of a program that does nothing (its own clock reads),
    /// attached next to tracewire's on `sock_recv_length` (median of three loops).
    empty_run_ns: f64,
    /// The fastest loop with stats off (and no empty program).
    fastest_off: f64,
    /// Program run time per syscall of the (unwatched) loop, as bpf_stats reports it (median).
    bpf_ns_per_syscall: f64,
    /// Program runs per syscall of the loop.
    runs_per_syscall: f64,
}

/// The socket loop three times with bpf_stats on and an empty program attached next to
/// tracewire's, then three times with stats off and no empty program (the timing R9 uses).
fn bpf_stats_cost(n: u64) -> Result<StatsCalibration> {
    let is_empty = |name: &str| name == crate::empty_prog::NAME;
    let mut empty_ns = Vec::new();
    let mut bpf = Vec::new();
    let mut runs_per_syscall = 0.0;
    let empty = crate::empty_prog::EmptyProgram::attach("sock_recv_length")?;
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    for _ in 0..3 {
        let (ns0, cnt0) = bpf_stats();
        let (e_ns0, e_cnt0) = bpf_stats_of(is_empty);
        socket_loop_seconds(n)?;
        let (ns1, cnt1) = bpf_stats();
        let (e_ns1, e_cnt1) = bpf_stats_of(is_empty);
        let runs = cnt1.saturating_sub(cnt0).max(1);
        bpf.push(ns1.saturating_sub(ns0) as f64 / (2 * n) as f64);
        runs_per_syscall = runs as f64 / (2 * n) as f64;
        empty_ns.push(e_ns1.saturating_sub(e_ns0) as f64 / e_cnt1.saturating_sub(e_cnt0).max(1) as f64);
    }
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    drop(empty);
    let fastest_off = fastest(3, || socket_loop_seconds(n))?;
    bpf.sort_by(f64::total_cmp);
    empty_ns.sort_by(f64::total_cmp);
    Ok(StatsCalibration {
        empty_run_ns: empty_ns[1],
        fastest_off,
        bpf_ns_per_syscall: bpf[1],
        runs_per_syscall,
    })
}

/// What a program run costs the thread that fires the tracepoint beyond the program's own
/// instructions: the kernel's dispatch (the tracepoint's call into `bpf_trace_run`, its recursion
/// guard and RCU section), which bpf_stats does not see. Measured as a slope, so that the loop's
/// own time cancels out: the unwatched socket loop with [`DISPATCH_PROGRAMS`] empty programs on
/// `sock_recv_length` (each runs once per loop read) and without, alternating, fastest of three
/// each. Returns ns per program run.
fn dispatch_cost(n: u64) -> Result<f64> {
    let (mut without, mut with) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        without = without.min(socket_loop_seconds(n)?);
        let programs = (0..DISPATCH_PROGRAMS)
            .map(|_| crate::empty_prog::EmptyProgram::attach("sock_recv_length"))
            .collect::<Result<Vec<_>>>()?;
        with = with.min(socket_loop_seconds(n)?);
        drop(programs);
    }
    Ok(((with - without) / (DISPATCH_PROGRAMS * n) as f64 * 1e9).max(0.0))
}

/// Empty programs for [`dispatch_cost`]: enough that their runs take a loop a good share longer
/// than the VM's noise between runs.
const DISPATCH_PROGRAMS: u64 = 64;

/// A stand-in collector on loopback: takes OTLP/HTTP posts and answers 200 with an empty
/// body, so the agent's figures include encoding and sending its spans (and its request
/// metrics), as in production. Returns its port and the trace requests' total body bytes.
fn start_sink() -> Result<(u16, std::sync::Arc<std::sync::atomic::AtomicU64>)> {
    use std::{
        io::{BufRead as _, BufReader, Read as _, Write as _},
        sync::{Arc, atomic::AtomicU64, atomic::Ordering},
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let received = Arc::new(AtomicU64::new(0));
    let total = Arc::clone(&received);
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let total = Arc::clone(&total);
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut writer = conn.try_clone()?;
                let mut reader = BufReader::new(conn);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    // Spans only: the request metrics' posts (/v1/metrics, at exit) are no span's.
                    let mut traces = false;
                    loop {
                        line.clear();
                        if reader.read_line(&mut line)? == 0 {
                            return Ok(());
                        }
                        if line.starts_with("POST ") {
                            traces = line.contains("/v1/traces");
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body)?;
                    if traces {
                        total.fetch_add(length as u64, Ordering::Relaxed);
                    }
                    writer.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    )?;
                }
            });
        }
    });
    Ok((port, received))
}

/// Instructions the replay pipeline runs per event, counted by valgrind (cachegrind): three
/// passes minus one, so that loading the recording and the replay's other figures cancel out.
/// Unlike a time, it does not move with a shared machine's speed: what a change to the pipeline
/// saves shows in one run. None without valgrind.
fn instructions_per_event(tracewire: &Path, rec: &str, records: u64) -> Option<f64> {
    let count = |passes: &str| -> Option<f64> {
        let out = Command::new("valgrind")
            .args(["--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"])
            .arg(tracewire)
            .args(["replay", rec, "--seconds", "0", "--passes", passes])
            .stdout(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        // "==pid== I   refs:      3,334,811,643"
        let text = String::from_utf8_lossy(&out.stderr);
        let line = text.lines().find(|l| l.contains("I") && l.contains("refs:"))?;
        line.rsplit(':').next()?.trim().replace(',', "").parse().ok()
    };
    let (one, three) = (count("1")?, count("3")?);
    (records > 0).then(|| (three - one) / (2.0 * records as f64))
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// The ids of the BPF programs loaded now.
fn loaded_program_ids() -> Vec<u64> {
    loaded_programs().iter().filter_map(|p| p["id"].as_u64()).collect()
}

/// The kernel memory (bytes_memlock, charged to the loader's memory cgroup) of the maps used by
/// the programs loaded since `before` was listed, and the three largest of them by name.
fn maps_memory(before: &[u64]) -> (u64, Vec<(String, u64)>) {
    let mut ids: Vec<u64> = loaded_programs()
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| !before.contains(&id)))
        .flat_map(|p| p["map_ids"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| m.as_u64())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let maps = bpftool_json(&["map", "show"]).unwrap_or(Value::Null);
    let mut ours: Vec<(String, u64)> = maps
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["id"].as_u64().is_some_and(|id| ids.binary_search(&id).is_ok()))
        .map(|m| (m["name"].as_str().unwrap_or("?").to_string(), m["bytes_memlock"].as_u64().unwrap_or(0)))
        .collect();
    let total = ours.iter().map(|(_, b)| b).sum();
    ours.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
    ours.truncate(3);
    (total, ours)
}

/// Another tracewire (or a leftover test agent) would be measured too, in every "without" run.
fn refuse_if_an_agent_is_loaded() -> Result<()> {
    let progs = bpftool_json(&["prog", "show"])?;
    let ids: Vec<u64> = progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| matches!(p["name"].as_str(), Some("tcp_option" | "sock_recv_length" | "sys_enter")))
        .filter_map(|p| p["id"].as_u64())
        .collect();
    if !ids.is_empty() {
        bail!(
            "tracewire programs are already loaded (program ids {ids:?}): another agent is running, \
             and the runs without tracewire would not be; stop it first"
        );
    }
    Ok(())
}

pub fn bench(quick: bool) -> Result<()> {
    let tracewire = crate::build("release")?;
    refuse_if_an_agent_is_loaded()?;
    // R10 holds 10,000 connections open from this process.
    load::raise_nofile(12_000)?;
    let out_dir = root().join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let secs = if quick { 2 } else { 10 };
    let nginx = start_nginx()?;
    let stats_before = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    // Throughput and latency are measured as deployed: without bpf_stats, whose clock reads
    // around every program run are not tracewire's cost. R3/R4 take their own run with it on.
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");

    println!(
        "bench: nginx return-200 on 127.0.0.1:{}, wrk -t1 -c8 -d{secs}s, 2 cores, nothing pinned; the agent exports OTLP/HTTP to a loopback sink",
        nginx.port
    );
    // Idle CPU around each run: where the throughput lost with the agent is not CPU it used.
    let ((_, base1), idle0) = with_idle(|| wrk(nginx.port, secs))?;
    println!("bench: without tracewire: {base1:.0} req/s");

    let pid = nginx.pid.to_string();
    let (sink_port, sink_bytes) = start_sink()?;
    let sink = format!("http://127.0.0.1:{sink_port}");
    let exporting = exporting_run(&sink, &["--pid", &pid]);
    let (mut agent, lines) = start_agent(&tracewire, &exporting)?;
    let agent_pid = agent.0.id();
    let cpu0 = cpu_seconds(agent_pid);
    let ((requests, with), idle1) = with_idle(|| wrk(nginx.port, secs))?;
    let cpu1 = cpu_seconds(agent_pid);
    let rss = peak_rss_kib(agent_pid);
    stop(&mut agent);
    let summary = summary_of(&lines);
    let r1_sink_bytes = sink_bytes.load(std::sync::atomic::Ordering::Relaxed);
    println!("bench: with tracewire:    {with:.0} req/s");
    let ((_, base2), idle2) = with_idle(|| wrk(nginx.port, secs))?;
    println!("bench: without tracewire: {base2:.0} req/s");

    // R3/R4: the same traffic once more with bpf_stats on, for the programs' run time.
    let (mut agent, _) = start_agent(&tracewire, &exporting)?;
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let (bpf_ns0, bpf_cnt0) = bpf_stats();
    let (stats_requests, _) = wrk(nginx.port, secs)?;
    let (bpf_ns1, bpf_cnt1) = bpf_stats();
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    stop(&mut agent);
    // R4 is the traced thread's: the same traffic with the agent watching a process that does
    // nothing, where every run (nginx's and wrk's alike) takes the unwatched exit. wrk's runs
    // take it in both runs, and make half of this one's (a send and a receive per request on
    // each side), so half of it comes off the total.
    let idle = idle_process()?;
    let idle_pid = idle.0.id().to_string();
    let unwatched_run = stats_run(
        &tracewire,
        &["run", "--pid", &idle_pid, "--print", "none", "--status-interval", "0"],
        nginx.port,
        secs,
        &[],
    )?;
    drop(idle);

    // R2: latency at about half of capacity, paced (open loop), without / with / without.
    let rate = ((base1 / 2.0) as u64).max(1000);
    let lat_secs = if quick { 2 } else { 8 };
    let lat0 = load::paced(nginx.port, rate, 4, 2, lat_secs)?;
    let (mut agent, _) = start_agent(&tracewire, &exporting)?;
    let lat1 = load::paced(nginx.port, rate, 4, 2, lat_secs)?;
    stop(&mut agent);
    let lat2 = load::paced(nginx.port, rate, 4, 2, lat_secs)?;
    println!(
        "bench: latency at {rate} req/s: p50 {:.1}/{:.1}/{:.1} us, p99 {:.1}/{:.1}/{:.1} us (without/with/without)",
        us(lat0.p50),
        us(lat1.p50),
        us(lat2.p50),
        us(lat0.p99),
        us(lat1.p99),
        us(lat2.p99)
    );
    let added_p50 = us(lat1.p50) - (us(lat0.p50) + us(lat2.p50)) / 2.0;
    let added_p99 = us(lat1.p99) - (us(lat0.p99) + us(lat2.p99)) / 2.0;

    // R14: what head sampling saves. At 10 %, decided in the kernel where a request starts, an
    // unsampled request's bytes are neither copied nor handed to userspace: A/B/A throughput,
    // then the same agent once more with bpf_stats on.
    let sampling =
        [&exporting[..], &["--sampler", "parentbased_traceidratio", "--sampler-arg", "0.1"]].concat();
    let (_, s_base1) = wrk(nginx.port, secs)?;
    let (mut agent, s_lines) = start_agent(&tracewire, &sampling)?;
    let s_pid = agent.0.id();
    let s_cpu0 = cpu_seconds(s_pid);
    let (s_requests, s_with) = wrk(nginx.port, secs)?;
    let s_cpu = cpu_seconds(s_pid) - s_cpu0;
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let (s_ns0, s_cnt0) = bpf_stats();
    let (s_stats_requests, _) = wrk(nginx.port, secs)?;
    let (s_ns1, s_cnt1) = bpf_stats();
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    stop(&mut agent);
    let s_summary = summary_of(&s_lines);
    let (_, s_base2) = wrk(nginx.port, secs)?;
    println!(
        "bench: sampled at 10 %: {s_base1:.0} / {s_with:.0} / {s_base2:.0} req/s (without/with/without), {} spans, {} left out in the kernel",
        s_summary["spans"], s_summary["kernel"]["sampled_out"]
    );

    // R12: the agent at rest (watching nginx, no traffic): how long it takes to attach, and
    // what it costs while nothing happens.
    let programs_before = loaded_program_ids();
    let spawned = Instant::now();
    let (mut agent, r10_lines) = start_agent(&tracewire, &exporting)?;
    let attach_s = spawned.elapsed().as_secs_f64();
    // R18: what its maps take in the kernel, besides its own memory.
    let (maps_bytes, largest_maps) = maps_memory(&programs_before);
    let r10_agent = agent.0.id();
    let rest_s = if quick { 2.0 } else { 5.0 };
    let rest_cpu0 = cpu_ns_all_threads(r10_agent);
    // The measuring window itself: nothing to wait for.
    std::thread::sleep(Duration::from_secs_f64(rest_s));
    let rest_cpu_pct =
        cpu_ns_all_threads(r10_agent).saturating_sub(rest_cpu0) as f64 / (rest_s * 1e9) * 100.0;
    let rest_rss = current_rss_kib(r10_agent);

    // R10: memory with 10,000 open connections and 5,000 req/s.
    let idle_n = if quick { 2_000 } else { 10_000 };
    let idle = load::idle_connections(nginx.port, idle_n)?;
    let r10_load = load::paced(nginx.port, 5_000, 4, 25, lat_secs)?;
    let r10_rss = peak_rss_kib(r10_agent);
    drop(idle);
    stop(&mut agent);
    let r10_summary = summary_of(&r10_lines);
    println!(
        "bench: {idle_n} idle connections + {} paced requests: agent peak RSS {:.1} MiB, {} spans",
        r10_load.requests,
        r10_rss as f64 / 1024.0,
        r10_summary["spans"]
    );

    // The userspace pipeline on a recording of the same traffic.
    let recording = out_dir.join("nginx.rec");
    let rec = recording.display().to_string();
    let (mut capture, _) =
        start_agent(&tracewire, &["capture", "--pid", &pid, "--status-interval", "0", "--record", &rec])?;
    wrk(nginx.port, 1)?;
    stop(&mut capture);
    let replay = Command::new(&tracewire)
        .args(["replay", &rec, "--seconds", if quick { "1" } else { "5" }])
        .output()?;
    let replay: Value = serde_json::from_slice(&replay.stdout).context("replay output")?;
    let replay_instructions =
        instructions_per_event(&tracewire, &rec, replay["records"].as_u64().unwrap_or(0));

    // An unwatched process's syscalls while the agent watches nginx: file I/O (dd) and socket
    // I/O (a loopback ping-pong in this process).
    let n = if quick { 300_000 } else { 1_000_000 };
    let sn = n / 5;
    let dd_without = fastest(3, || dd_seconds(n))?;
    let sock_without = fastest(3, || socket_loop_seconds(sn))?;
    let (mut agent, _) =
        start_agent(&tracewire, &["run", "--pid", &pid, "--print", "none", "--status-interval", "0"])?;
    // With bpf_stats off (its clock reads are not tracewire's cost), and on, which measures what
    // bpf_stats adds per program run.
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    let dd_with = fastest(3, || dd_seconds(n))?;
    // What tracewire's programs do during dd's syscalls, as bpf_stats reports it (its clock
    // reads are taken off below, as for the socket loop).
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let (dd_ns0, dd_cnt0) = bpf_stats();
    dd_seconds(n)?;
    let (dd_ns1, dd_cnt1) = bpf_stats();
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    let calibration = bpf_stats_cost(sn)?;
    let sock_with = calibration.fastest_off;
    stop(&mut agent);
    let dispatch_ns = dispatch_cost(sn)?;
    let dd_without2 = fastest(3, || dd_seconds(n))?;
    let sock_without2 = fastest(3, || socket_loop_seconds(sn))?;

    // R1 for a small Go net/http server, A/B/A, the agent exporting.
    let go_bin = build_go_hop()?;
    let leaf = start_go_hop(&go_bin, None, 0, None)?;
    let leaf_pid = leaf.pid.to_string();
    let go_args = |pids: &[&str], uprobes: bool| -> Vec<String> {
        let mut a: Vec<String> = exporting.iter().map(|s| s.to_string()).collect();
        a.retain(|x| x != "--pid" && x != &pid);
        for p in pids {
            a.extend(["--pid".to_string(), p.to_string()]);
        }
        if !uprobes {
            a.push("--no-uprobes".into());
        }
        a
    };
    let (_, go0) = wrk(leaf.port, secs)?;
    let args = go_args(&[&leaf_pid], true);
    let (mut agent, go_lines) =
        start_agent(&tracewire, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let (go_requests, go1) = wrk(leaf.port, secs)?;
    stop(&mut agent);
    let go_summary = summary_of(&go_lines);
    let (_, go2) = wrk(leaf.port, secs)?;
    println!("bench: Go net/http: {go0:.0} / {go1:.0} / {go2:.0} req/s (without/with/without)");

    // R19: a PostgreSQL client.
    let db_cost = database_cost(&tracewire, &sink, secs)?;
    println!(
        "bench: pgbench select-only: {:.0} / {:.0} / {:.0} tps (without/with/without)",
        db_cost.tps[0], db_cost.tps[1], db_cost.tps[2]
    );

    // R23: a Redis client.
    let redis_requests: u64 = if quick { 20_000 } else { 200_000 };
    let redis = redis_cost(&tracewire, &sink, redis_requests)?;
    println!(
        "bench: redis-benchmark GET: {:.0} / {:.0} / {:.0} requests/s (without/with/without)",
        redis.tps[0], redis.tps[1], redis.tps[2]
    );

    // R24: a MySQL client.
    let mysql_queries: u64 = if quick { 60_000 } else { 400_000 };
    let mysql = mysql_cost(&tracewire, &sink, mysql_queries)?;
    println!(
        "bench: mariadb-slap: {:.0} / {:.0} / {:.0} queries/s (without/with/without)",
        mysql.tps[0], mysql.tps[1], mysql.tps[2]
    );

    // R25: a protocol tracewire does not read, streamed with every process traced.
    let stream_chunks: u64 = if quick { 8_192 } else { 65_536 };
    let stream = stream_cost(&tracewire, &sink, stream_chunks)?;
    println!(
        "bench: binary stream: {:.0} / {:.0} / {:.0} MiB/s (without/with/without), {} events, {} muted",
        stream.mib_s[0], stream.mib_s[1], stream.mib_s[2], stream.events, stream.muted
    );

    // R20: an HTTPS server, its plain text read through its TLS library.
    let https = format!("https://127.0.0.1:{}/", nginx.tls_port);
    let tls = server_cost(&tracewire, &|| wrk_url(&https, secs, &[]), &exporting, calibration.empty_run_ns)?;
    println!(
        "bench: nginx HTTPS: {:.0} / {:.0} / {:.0} req/s (without/with/without), BPF {:.0} ns per request ({:.1} runs)",
        tls.rps[0], tls.rps[1], tls.rps[2], tls.bpf_ns, tls.runs
    );
    // R21: an HTTP/2 server, ten streams at a time on each connection.
    let h2c = format!("http://127.0.0.1:{}/", nginx.h2_port);
    let h2 = server_cost(&tracewire, &|| h2load(&h2c, secs), &exporting, calibration.empty_run_ns)?;
    println!(
        "bench: nginx HTTP/2: {:.0} / {:.0} / {:.0} req/s (without/with/without), BPF {:.0} ns per request ({:.1} runs)",
        h2.rps[0], h2.rps[1], h2.rps[2], h2.bpf_ns, h2.runs
    );

    // R22: a Go HTTPS server, its plain text read through crypto/tls (nginx's certificate).
    let go_tls_server = start_go_hop(&go_bin, None, 0, Some(&nginx.dir))?;
    let go_https = format!("https://127.0.0.1:{}/", go_tls_server.port);
    let go_tls_args = go_args(&[&go_tls_server.pid.to_string()], true);
    let go_tls = server_cost(
        &tracewire,
        &|| wrk_url(&go_https, secs, &[]),
        &go_tls_args.iter().map(String::as_str).collect::<Vec<_>>(),
        calibration.empty_run_ns,
    )?;
    drop(go_tls_server);
    println!(
        "bench: Go HTTPS: {:.0} / {:.0} / {:.0} req/s (without/with/without), BPF {:.0} ns per request ({:.1} runs)",
        go_tls.rps[0], go_tls.rps[1], go_tls.rps[2], go_tls.bpf_ns, go_tls.runs
    );

    // R15: what a response's size costs. The same programs, nginx's 4 and 64 KiB files (head
    // and body in one writev) and a Go server's 4 KiB body (written with its head, flat).
    let mut sizes = Vec::new();
    for kib in R15_NGINX_KIB {
        let what = format!("nginx {kib} KiB");
        let path = format!("/files/{kib}k.txt");
        sizes.push(size_cost(
            &tracewire,
            what,
            nginx.pid,
            nginx.port,
            &path,
            secs,
            calibration.empty_run_ns,
        )?);
    }
    {
        let server = start_go_hop(&go_bin, None, R15_GO_BYTES, None)?;
        let what = format!("Go {} KiB", R15_GO_BYTES / 1024);
        sizes.push(size_cost(
            &tracewire,
            what,
            server.pid,
            server.port,
            "/",
            secs,
            calibration.empty_run_ns,
        )?);
    }
    for c in &sizes {
        println!(
            "bench: {}: BPF {:.0} ns per request, {:.0} B copied per request, {:.2} bodies counted without a copy",
            c.what, c.bpf_ns, c.copied, c.skipped
        );
    }

    // R16: the same nginx and unwatched loops on the syscall data path of older kernels.
    let legacy =
        syscall_hooks_cost(&tracewire, nginx.pid, nginx.port, secs, (n, sn), calibration.empty_run_ns)?;
    println!(
        "bench: syscall hooks: BPF {:.0} ns per nginx request ({:.1} runs), {:.1} ns per unwatched file syscall, {:.1} per socket syscall",
        legacy.request_ns, legacy.request_runs, legacy.file_ns, legacy.socket_ns
    );

    // R17: one request per connection.
    let churn = churn_cost(&tracewire, &exporting, nginx.port, secs, calibration.empty_run_ns)?;
    println!(
        "bench: one request per connection: {:.0} / {:.0} / {:.0} req/s (without/with/without), BPF {:.0} ns per request ({:.1} runs), {} spans for {} requests; unwatched: BPF {:.0} ns per request ({:.1} runs)",
        churn.base1,
        churn.with,
        churn.base2,
        churn.bpf_ns,
        churn.runs,
        churn.spans,
        churn.requests,
        churn.unwatched_ns,
        churn.unwatched_runs
    );

    // What following goroutines costs: a Go service calling a Go leaf once per request, traced
    // with the uprobes and without (then its calls are unlinked), alternating.
    let front = start_go_hop(&go_bin, Some(leaf.port), 0, None)?;
    let front_pid = front.pid.to_string();
    let chain = |uprobes: bool| -> Result<(f64, Value, u64)> {
        let args = go_args(&[&front_pid, &leaf_pid], uprobes);
        let (mut agent, lines) =
            start_agent(&tracewire, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
        let (n, rps) = wrk(front.port, secs)?;
        stop(&mut agent);
        Ok((rps, summary_of(&lines), n))
    };
    let (off0, _, _) = chain(false)?;
    let (on, on_summary, on_requests) = chain(true)?;
    let (off1, _, _) = chain(false)?;
    println!(
        "bench: Go service calling a Go leaf: {off0:.0} / {on:.0} / {off1:.0} req/s (uprobes off/on/off)"
    );
    let go_linked = on_summary["kernel"]["go_linked"].as_u64().unwrap_or(0);
    drop(front);
    drop(leaf);

    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_before.trim());
    let _ = fs::remove_dir_all(&nginx.dir);

    let baseline = (base1 + base2) / 2.0;
    let spans = summary["spans"].as_u64().unwrap_or(0);
    let agent_cpu = cpu1 - cpu0;
    // What bpf_stats reports for a program that does nothing is its own cost (its clock reads):
    // every run's figure includes it, and without it tracewire's programs do not pay it.
    let empty_run_ns = calibration.empty_run_ns;
    let (bpf_net_ns, stats_runs) = net_bpf((bpf_ns0, bpf_cnt0), (bpf_ns1, bpf_cnt1), empty_run_ns);
    let bpf_secs = bpf_net_ns / 1e9 * requests as f64 / stats_requests.max(1) as f64;
    let per_m = |x: f64| x / requests.max(1) as f64 * 1e6;
    let bpf_per_req = bpf_ns1.saturating_sub(bpf_ns0) as f64 / stats_requests.max(1) as f64;
    let runs_per_req = stats_runs / stats_requests.max(1) as f64;
    let bpf_per_req_net = bpf_net_ns / stats_requests.max(1) as f64;
    let (unwatched_per_req, unwatched_runs_per_req) = unwatched_run.per_request(empty_run_ns);
    let traced_thread_ns = (bpf_per_req_net - unwatched_per_req / 2.0).max(0.0);
    let drops = summary["kernel"]["ring_full"].as_u64().unwrap_or(0)
        + summary["kernel"]["conn_map_full"].as_u64().unwrap_or(0)
        + summary["kernel"]["active_map_full"].as_u64().unwrap_or(0)
        + summary["decode_errors"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
        + summary["otlp"]["dropped"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    let exported = summary["otlp"]["exported"].as_u64().unwrap_or(0);
    // The fastest runs on each side: noise only adds time.
    let dd_base = dd_without.min(dd_without2);
    let dd_diff_ns = ((dd_with - dd_base) / (2 * n) as f64 * 1e9).max(0.0);
    let sock_base = sock_without.min(sock_without2);
    let sock_diff_ns = ((sock_with - sock_base) / (2 * sn) as f64 * 1e9).max(0.0);
    // What the hooks cost an unwatched process is what bpf_stats puts on tracewire's programs
    // during its syscalls, net of what it reports for empty programs (its own clock reads). The
    // loops' CPU time, with and without tracewire, is reported but not used: on this VM it moves
    // by hundreds of ns per syscall between runs of the same state (a 2.3-3.1 µs loopback
    // write+read), far more than the tens of ns measured here, either way.
    let (dd_net_ns, dd_runs) = net_bpf((dd_ns0, dd_cnt0), (dd_ns1, dd_cnt1), empty_run_ns);
    let dd_bpf_ns = dd_net_ns / (2 * n) as f64;
    let sock_bpf_ns = (calibration.bpf_ns_per_syscall - empty_run_ns * calibration.runs_per_syscall).max(0.0);
    // What an unwatched socket syscall pays: each program run's dispatch, and what the programs
    // do beyond an empty one.
    let sock_ns = calibration.runs_per_syscall * dispatch_ns + sock_bpf_ns;
    let rows = vec![
        row(
            "R1",
            "req/s with ÷ without (nginx, wrk, A/B/A)",
            with / baseline,
            ">= 0.97",
            with / baseline >= 0.97,
            &format!(
                "{with:.0} vs {base1:.0}/{base2:.0} req/s; the two cores idle {idle1:.1} % of the run with \
                 tracewire, {idle0:.1}/{idle2:.1} % without"
            ),
        ),
        row(
            "R1",
            "req/s with ÷ without (Go net/http, wrk, A/B/A)",
            go1 / ((go0 + go2) / 2.0),
            ">= 0.97",
            go1 / ((go0 + go2) / 2.0) >= 0.97,
            &format!(
                "{go1:.0} vs {go0:.0}/{go2:.0} req/s, {} spans for {go_requests} requests",
                go_summary["spans"]
            ),
        ),
        row(
            "R2",
            "added latency p50 / p99 at half capacity (us)",
            added_p50,
            "<= 2 / 10 us",
            added_p50 <= 2.0 && added_p99 <= 10.0,
            &format!(
                "p99 +{added_p99:.1} us; {rate} req/s paced over 4 workers x 2 keep-alive conns, {lat_secs} s each, \
                 p50 {:.1}/{:.1}/{:.1} us without/with/without",
                us(lat0.p50),
                us(lat1.p50),
                us(lat2.p50)
            ),
        ),
        row(
            "R3",
            "agent CPU-s per million requests (user+sys+BPF)",
            per_m(agent_cpu + bpf_secs),
            "<= 3 s",
            per_m(agent_cpu + bpf_secs) <= 3.0,
            &format!(
                "userspace {:.2} s (the R1 run, /proc) + BPF {:.2} s per M (the bpf_stats run, net of its clock reads)",
                per_m(agent_cpu),
                per_m(bpf_secs)
            ),
        ),
        row(
            "R4",
            "BPF ns per request on the traced thread (minus bpf_stats overhead)",
            traced_thread_ns,
            "<= 400 ns",
            traced_thread_ns <= 400.0,
            &format!(
                "nginx's runs: {bpf_per_req_net:.0} ns over all {runs_per_req:.1} program runs per request (wrk's \
                 included; {bpf_per_req:.0} raw), minus wrk's half of {unwatched_per_req:.0} ns over \
                 {unwatched_runs_per_req:.1} runs with the agent watching another process (every run then takes \
                 the unwatched exit, as wrk's do); net of {empty_run_ns:.0} ns per run, what bpf_stats reports for \
                 an empty program (its own clock reads); separate {secs} s wrk runs with bpf_stats on"
            ),
        ),
        row(
            "R5",
            "userspace pipeline events/s on one core (replay)",
            replay["events_per_sec"].as_f64().unwrap_or(0.0),
            ">= 1 M/s",
            replay["events_per_sec"].as_f64().unwrap_or(0.0) >= 1e6,
            &format!(
                "{:.0} ns per event over {} passes of {} records; {:.0} in the fastest pass; request metrics \
                 included ({:.0} ns per span alone, {} series); {}",
                replay["ns_per_event"].as_f64().unwrap_or(0.0),
                replay["passes"],
                replay["records"],
                replay["best_pass_ns_per_event"].as_f64().unwrap_or(0.0),
                replay["request_metrics_ns_per_span"].as_f64().unwrap_or(0.0),
                replay["request_metrics_series"],
                replay_instructions.map_or("instructions not counted (no valgrind)".to_string(), |i| format!(
                    "{i:.0} instructions per event (valgrind, two passes), which the machine's speed does not move"
                ))
            ),
        ),
        row(
            "R6",
            "events dropped during the R1 run",
            drops as f64,
            "0",
            drops == 0,
            "ring buffer, maps, decoding, OTLP export",
        ),
        row(
            "R7",
            "OTLP bytes per span, uncompressed / gzip",
            replay["otlp_bytes_per_span"].as_f64().unwrap_or(0.0),
            "<= 350 / 80 B",
            replay["otlp_bytes_per_span"].as_f64().unwrap_or(0.0) <= 350.0
                && replay["otlp_gzip_bytes_per_span"].as_f64().unwrap_or(f64::MAX) <= 80.0,
            &format!(
                "gzip {:.0} B; batches of the exporter's default size ({} spans), resource per batch",
                replay["otlp_gzip_bytes_per_span"].as_f64().unwrap_or(0.0),
                replay["batch_spans"].as_u64().unwrap_or(0)
            ),
        ),
        row(
            "R8",
            "spans exported ÷ requests served (R1 run)",
            exported as f64 / requests.max(1) as f64,
            "1.000",
            // wrk stops with up to one request in flight per connection: answered, so traced, but
            // not counted by wrk.
            exported == spans && spans >= requests && spans <= requests + 8,
            &format!(
                "{exported} of {spans} spans exported over OTLP/HTTP ({:.0} B per span, {} retries) to a loopback sink, {requests} \
                 requests completed by wrk (requests in flight when wrk stops are answered but not counted by wrk)",
                r1_sink_bytes as f64 / exported.max(1) as f64,
                summary["otlp"]["retries"]
            ),
        ),
        row(
            "R9",
            "extra ns per socket / file syscall of an unwatched process",
            sock_ns,
            "<= 10 ns",
            sock_ns <= 10.0 && dd_bpf_ns <= 10.0,
            &format!(
                "socket: {sock_ns:.1} ns per syscall = {:.2} program runs x {dispatch_ns:.1} ns of dispatch per run (the \
                 loop's CPU time with {DISPATCH_PROGRAMS} empty programs on sock_recv_length and without, fastest of 3 \
                 each: the slope) + {sock_bpf_ns:.1} ns of the programs' work beyond an empty one's (bpf_stats, \
                 {:.0} ns raw, whose own clock reads an empty program measures at {empty_run_ns:.0} ns per run), \
                 {sn} loopback write+read pairs in this process; file: {dd_bpf_ns:.1} ns ({:.4} runs per syscall), dd \
                 bs=1 count={n}. Timings with and without the agent, not used (this VM moves them by more between runs \
                 of one state): socket {sock_without:.3}/{sock_without2:.3} CPU-s without, {sock_with:.3} with \
                 ({sock_diff_ns:.0} ns per syscall); file {dd_without:.3}/{dd_without2:.3} s without, {dd_with:.3} with \
                 ({dd_diff_ns:.1} ns); fastest of 3 each, bpf_stats off",
                calibration.runs_per_syscall,
                calibration.bpf_ns_per_syscall,
                dd_runs / (2 * n) as f64
            ),
        ),
        row(
            "R10",
            "agent peak RSS, MiB",
            r10_rss as f64 / 1024.0,
            "<= 64 MiB",
            r10_rss <= 64 * 1024,
            &format!(
                "{idle_n} open connections + 5000 req/s paced for {lat_secs} s; {:.1} MiB in the R1 run",
                rss as f64 / 1024.0
            ),
        ),
        row(
            "R11",
            "req/s, Go calls followed by uprobes ÷ not (traced both)",
            on / ((off0 + off1) / 2.0),
            "report",
            true,
            &format!(
                "{on:.0} vs {off0:.0}/{off1:.0} req/s; a Go service making one keep-alive call per request to a Go \
                 leaf; {go_linked} of {on_requests} calls linked through goroutines"
            ),
        ),
        row(
            "R12",
            "agent at rest: CPU % of one core",
            rest_cpu_pct,
            "report",
            true,
            &format!(
                "watching nginx with no traffic for {rest_s} s, exporting; RSS {:.1} MiB; {attach_s:.2} s from start \
                 to attached (BTF, programs, /proc scan)",
                rest_rss as f64 / 1024.0
            ),
        ),
        row(
            "R13",
            "tail sampling: ns per span, one core (replay)",
            replay["tail_ns_per_span"].as_f64().unwrap_or(0.0),
            "report",
            true,
            &format!(
                "errors + latency + adaptive per operation over the R5 recording's {} spans (dropping the kept \
                 ones included); {:.0} B of memory per span held waiting for its trace to finish",
                replay["tail_spans"],
                replay["tail_bytes_per_held_span"].as_f64().unwrap_or(0.0)
            ),
        ),
        {
            let ratio = s_with / ((s_base1 + s_base2) / 2.0);
            let (net, _) = net_bpf((s_ns0, s_cnt0), (s_ns1, s_cnt1), empty_run_ns);
            let bpf_per_req = net / s_stats_requests.max(1) as f64;
            // Agent CPU over the throughput run, BPF time scaled from its own run.
            let cpu_per_m = (s_cpu + bpf_per_req * s_requests as f64 / 1e9) / s_requests.max(1) as f64 * 1e6;
            let spans = s_summary["spans"].as_u64().unwrap_or(0);
            let sampled_out = s_summary["kernel"]["sampled_out"].as_u64().unwrap_or(0);
            row(
                "R14",
                "head sampling at 10 %: req/s with ÷ without (nginx, A/B/A)",
                ratio,
                "report",
                true,
                &format!(
                    "{s_with:.0} vs {s_base1:.0}/{s_base2:.0} req/s; BPF {bpf_per_req:.0} ns per request (net, its own \
                     bpf_stats run), agent {cpu_per_m:.2} CPU-s per M requests (user+sys+BPF); {spans} spans kept, \
                     {sampled_out} requests left out in the kernel, for {} requests served over both runs",
                    s_requests + s_stats_requests
                ),
            )
        },
        {
            let nginx_4k = sizes.first().map_or(0.0, |c| c.bpf_ns);
            let cases: Vec<String> = sizes
                .iter()
                .map(|c| {
                    format!(
                        "{} {:.0} ns ({:.0} B copied, {:.2} bodies counted without a copy)",
                        c.what, c.bpf_ns, c.copied, c.skipped
                    )
                })
                .collect();
            row(
                "R15",
                "BPF ns per request, 4 KiB responses ÷ 3 B (nginx)",
                nginx_4k / bpf_per_req_net.max(1.0),
                "report",
                true,
                &format!(
                    "per request, net of bpf_stats, wrk {secs} s each: 3 B {bpf_per_req_net:.0} ns (R4's run, wrk's runs included); {}; bodies \
                     written apart from their head are counted, not copied; a flat write's body is copied up \
                     to the capture cap",
                    cases.join("; ")
                ),
            )
        },
        row(
            "R16",
            "syscall hooks (before 6.16): BPF ns per request (nginx)",
            legacy.request_ns,
            "report",
            true,
            &format!(
                "--data-hooks syscalls, every syscall of every process runs two programs: {:.1} runs per request \
                 (wrk's included; {bpf_per_req_net:.0} ns over {runs_per_req:.1} with the socket hooks in R4's run); an \
                 unwatched process: {:.1} ns per file syscall ({:.2} runs; the socket hooks: {dd_bpf_ns:.1}), {:.1} ns \
                 per socket syscall ({:.2} runs; the socket hooks: {sock_bpf_ns:.1}); the programs' work net of \
                 bpf_stats' own clock reads, and {dispatch_ns:.1} ns of dispatch per run on top (R9), wrk {secs} s",
                legacy.request_runs, legacy.file_ns, legacy.file_runs, legacy.socket_ns, legacy.socket_runs
            ),
        ),
        {
            let churn_base = (churn.base1 + churn.base2) / 2.0;
            row(
                "R17",
                "one request per connection: req/s with ÷ without (nginx)",
                churn.with / churn_base.max(1.0),
                "1 span/req",
                // As for R8: wrk does not count the requests in flight when it stops.
                churn.spans >= churn.requests && churn.spans <= churn.requests + 8,
                &format!(
                    "wrk -H 'Connection: close' (a connect, accept and close per request), exporting: {:.0} vs \
                     {:.0}/{:.0} req/s; BPF {:.0} ns per request over {:.1} program runs (net of bpf_stats, a run of \
                     its own; keep-alive: {bpf_per_req_net:.0} ns in R4's run); agent {:.2} CPU-s per M requests; {} spans \
                     for {} requests completed by wrk; nginx unwatched (the agent watching another process): \
                     {:.0} ns per request over {:.1} runs, what a service tracewire does not trace pays per \
                     connection",
                    churn.with,
                    churn.base1,
                    churn.base2,
                    churn.bpf_ns,
                    churn.runs,
                    churn.agent_cpu_per_m,
                    churn.spans,
                    churn.requests,
                    churn.unwatched_ns,
                    churn.unwatched_runs
                ),
            )
        },
        {
            let mib = |b: u64| b as f64 / f64::from(1 << 20);
            let largest: Vec<String> = largest_maps.iter().map(|(name, b)| format!("{name} {:.1}", mib(*b))).collect();
            row(
                "R18",
                "kernel memory of the agent's BPF maps, MiB",
                mib(maps_bytes),
                "report",
                maps_bytes > 0,
                &format!(
                    "default sizes (65536 connections, 8 MiB ring), bpftool's bytes_memlock over the maps of the \
                     programs the agent loaded; the largest: {} MiB; charged to the agent's memory cgroup, on top of \
                     its RSS ({:.1} MiB at peak in R10), which counts the ring's pages as well (mapped into it)",
                    largest.join(", "),
                    r10_rss as f64 / 1024.0
                ),
            )
        },
        db_cost.row(
            "R19",
            "PostgreSQL client: transactions/s with ÷ without (pgbench)",
            "1 span/stmt",
            &format!(
                "pgbench -S -M prepared -c 4 -j 2 -T {secs} against a local PostgreSQL 15 (one prepared SELECT per \
                 transaction)"
            ),
            ("tps", "transactions", "statements"),
        ),
        // As for R8: wrk does not count the requests in flight when it stops.
        tls.row(
            "R20",
            "HTTPS server: requests/s with ÷ without (nginx, OpenSSL)",
            8,
            &format!(
                "nginx return-200 over TLS 1.3 (keep-alive, one handshake per connection), wrk -t1 -c8 -d{secs}s, \
                 the agent reading nginx's libssl (uprobes on the functions SSL_read and SSL_write call, and their \
                 returns)"
            ),
            " besides the uprobe traps",
        ),
        go_tls.row(
            "R22",
            "HTTPS server: requests/s with ÷ without (Go crypto/tls)",
            8,
            &format!(
                "Go 1.19 net/http answering `ok` over TLS 1.3 (keep-alive), wrk -t1 -c8 -d{secs}s, the agent \
                 reading crypto/tls (uprobes on Write's stack check and on Read's copy of its plain text, both \
                 emulated: two hits per request)"
            ),
            " besides the uprobe traps",
        ),
        // h2load stops with up to 80 streams in flight (8 connections x 10).
        h2.row(
            "R21",
            "HTTP/2 server: requests/s with ÷ without (nginx h2c)",
            80,
            &format!(
                "nginx return-200 over cleartext HTTP/2 (prior knowledge), h2load -t1 -c8 -m10 -D{secs}: 8 \
                 connections with 10 streams in flight each"
            ),
            "",
        ),
        redis.row(
            "R23",
            "Redis client: requests/s with ÷ without (redis-benchmark)",
            "1 span/cmd",
            &format!(
                "redis-benchmark -t get -c 4 -P 1 -n {redis_requests} against a local Redis 7.0 (one GET a write, \
                 so one span each)"
            ),
            ("req/s", "requests", "commands"),
        ),
        mysql.row(
            "R24",
            "MySQL client: queries/s with ÷ without (mariadb-slap)",
            "1 span/stmt",
            &format!(
                "mariadb-slap --concurrency=4 --number-of-queries={mysql_queries} against a local MariaDB 10.11 (one \
                 text SELECT a query, counted by the server's Com_select; after a warm-up run)"
            ),
            ("queries/s", "SELECTs", "statements"),
        ),
        row(
            "R25",
            "binary stream, all traced: MiB/s with ÷ without",
            stream.mib_s[1] / ((stream.mib_s[0] + stream.mib_s[2]) / 2.0).max(1e-9),
            "report",
            stream.muted >= 1,
            &format!(
                "{} MiB in 64 KiB writes of a protocol tracewire does not read, one loopback connection, every process \
                 traced (no selector), exporting: {:.0} vs {:.0}/{:.0} MiB/s; muted in the kernel once userspace gave \
                 up on it: {} events and {} KiB copied in all ({} connections muted), agent {:.2} CPU-s",
                stream_chunks * 64 / 1024,
                stream.mib_s[1],
                stream.mib_s[0],
                stream.mib_s[2],
                stream.events,
                stream.copied / 1024,
                stream.muted,
                stream.agent_cpu
            ),
        ),
    ];
    println!("\n{:<4} {:<52} {:>14} {:>12}  {:<5} conditions", "id", "measure", "measured", "target", "pass");
    for r in &rows {
        let v = r["measured"].as_f64().map_or("—".to_string(), |v| {
            if v.abs() >= 100.0 { format!("{v:.0}") } else { format!("{v:.3}") }
        });
        println!(
            "{:<4} {:<52} {:>14} {:>12}  {:<5} {}",
            r["id"].as_str().unwrap_or(""),
            r["measure"].as_str().unwrap_or(""),
            v,
            r["target"].as_str().unwrap_or(""),
            if r["pass"] == true { "yes" } else { "no" },
            r["conditions"].as_str().unwrap_or("")
        );
    }
    let report = json!({
        "quick": quick,
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "rows": rows,
        "agent_summary": summary,
        "replay": replay,
        "replay_instructions_per_event": replay_instructions,
        "latency_ns": {
            "rate": rate,
            "without": [lat0.p50, lat0.p99],
            "with": [lat1.p50, lat1.p99],
            "without_again": [lat2.p50, lat2.p99],
        },
        "r10_summary": r10_summary,
    });
    let path = out_dir.join("report.json");
    fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("\nbench: report written to {}", path.display());
    Ok(())
}

fn row(id: &str, measure: &str, measured: f64, target: &str, pass: bool, conditions: &str) -> Value {
    json!({
        "id": id,
        "measure": measure,
        "measured": if measured.is_finite() { json!(measured) } else { Value::Null },
        "target": target,
        "pass": pass,
        "conditions": conditions,
    })
}
