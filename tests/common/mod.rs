//! Harness for the root integration tests: runs the real `tracewire capture --json` and real
//! peers (Python servers and clients, curl, nginx), and waits on conditions, never on sleeps.
#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Mutex, MutexGuard,
        mpsc::{self, Receiver},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Agent start-up (load + verify + attach) takes a second or two; generous for a loaded machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises the tests of one binary: each loads its own programs and the machine has 2 cores.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// These tests load kernel programs: they need root (or the capabilities the agent names).
pub fn require_root() {
    // SAFETY: no arguments.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the integration tests load eBPF programs and must run as root (cargo xtask test)");
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

fn lines_of(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A running `tracewire capture --json`.
pub struct Agent {
    child: Child,
    events: Receiver<String>,
    stderr: Receiver<String>,
    /// Every event received so far.
    pub seen: Vec<Value>,
}

impl Agent {
    /// Starts the agent with `args` after `capture --json --show-payload` and waits until it is
    /// ready.
    pub fn start(args: &[&str]) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracewire"))
            .args(["capture", "--json", "--show-payload", "--status-interval", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tracewire");
        let events = lines_of(child.stdout.take().expect("stdout"));
        let stderr = lines_of(child.stderr.take().expect("stderr"));
        let mut agent = Agent { child, events, stderr, seen: Vec::new() };
        agent.wait_for("ready", READY_TIMEOUT, |e| e["type"] == "ready");
        agent
    }

    fn stderr_text(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Waits for an event matching `pred` (also among those already seen) and returns it.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(e) = self.seen.iter().find(|e| pred(e)) {
            return e.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("agent printed non-JSON line {line:?}: {e}"));
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "timed out waiting for {what} (agent exit status: {status:?})\nstderr:\n{}\nevents:\n{}",
                        self.stderr_text(),
                        self.seen.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
    }

    /// Stops the agent with SIGINT (it drains the ring buffer first) and returns every event.
    pub fn stop(mut self) -> Vec<Value> {
        // SAFETY: signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("wait for tracewire");
        for line in self.events.iter() {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                self.seen.push(v);
            }
        }
        assert!(status.success(), "tracewire exited with {status}\nstderr:\n{}", self.stderr_text());
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `tracewire run` exporting to `endpoint`.
pub struct RunAgent {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl RunAgent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start(endpoint: &str, args: &[&str]) -> RunAgent {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracewire"));
        cmd.args(["run", "--print", "none", "--status-interval", "0", "--otlp-endpoint", endpoint])
            .args(if args.contains(&"--otlp-protocol") { &[][..] } else { &["--otlp-protocol", "grpc"][..] })
            .args(args);
        RunAgent::spawn(cmd)
    }

    /// Runs `tracewire run` as `cmd` starts it (through a wrapper that ends by exec'ing it, so
    /// that signals reach the agent), once it is tracing.
    pub fn spawn(mut cmd: Command) -> RunAgent {
        let mut child =
            cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn tracewire run");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let line =
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("agent ready");
            if line.contains("tracing with") {
                break;
            }
        }
        RunAgent { child, stderr: rx }
    }

    /// Waits for a log line containing `needle` (the agent reached a state) and returns it.
    pub fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let line = self
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("the agent never logged {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// SIGINT, wait, and return the summary it printed.
    pub fn stop(mut self) -> Value {
        // SAFETY: signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        let lines: Vec<String> = self.stderr.try_iter().collect();
        assert!(status.success(), "tracewire run failed: {}", lines.join("\n"));
        let summary = lines
            .iter()
            .find_map(|l| l.strip_prefix("tracewire: summary "))
            .unwrap_or_else(|| panic!("no summary in {lines:?}"));
        serde_json::from_str(summary).unwrap()
    }
}

impl Drop for RunAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A peer process speaking a line protocol on stdin/stdout.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<String>,
}

impl Peer {
    pub fn spawn(cmd: &mut Command) -> Peer {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let out = lines_of(child.stdout.take().expect("stdout"));
        Peer { child, stdin, out }
    }

    /// `python3 tests/peers/<script> args...`
    pub fn python(script: &str, args: &[&str]) -> Peer {
        Peer::spawn(Command::new("python3").arg(repo().join("tests/peers").join(script)).args(args))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Next stdout line, which must start with `prefix`.
    pub fn expect(&mut self, prefix: &str) -> String {
        let line = self
            .out
            .recv_timeout(EVENT_TIMEOUT)
            .unwrap_or_else(|_| panic!("peer {} printed nothing starting with {prefix:?}", self.pid()));
        assert!(line.starts_with(prefix), "peer said {line:?}, expected {prefix:?}");
        line
    }

    /// The port the peer printed it listens on (its next line, `port N`).
    pub fn port(&mut self) -> u16 {
        self.expect("port ")[5..].trim().parse().expect("port number")
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to peer");
        stdin.flush().expect("flush peer");
    }
}

impl Drop for Peer {
    /// SIGTERM first, so that a server with workers (nginx's master) takes them down with it;
    /// SIGKILL if it has not exited within two seconds.
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test HTTP server: returns (peer, port).
pub fn python_server(host: &str) -> (Peer, u16) {
    let mut p = Peer::python("http_server.py", &[host]);
    let line = p.expect("port ");
    let port = line[5..].trim().parse().expect("port number");
    (p, port)
}

/// Byte counts curl reports for one request.
#[derive(Debug, Clone, Copy)]
pub struct CurlSizes {
    pub request: u64,
    pub header: u64,
    pub body: u64,
    pub local_port: u16,
}

pub fn curl(url: &str, extra: &[&str]) -> CurlSizes {
    let out = Command::new("curl")
        .args([
            "-s",
            "-g",
            "-o",
            "/dev/null",
            "-w",
            "%{size_request} %{size_header} %{size_download} %{local_port} %{http_code}",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let n: Vec<u64> = text.split_whitespace().map(|w| w.parse().expect("curl number")).collect();
    assert_eq!(n.get(4), Some(&200), "curl {url}: {text}");
    CurlSizes { request: n[0], header: n[1], body: n[2], local_port: n[3] as u16 }
}

/// Events of `kind` from process `pid`.
pub fn of<'a>(events: &'a [Value], kind: &str, pid: u32) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind && e["pid"] == pid).collect()
}

/// Sum of `len` over data events matching the filter.
pub fn bytes(events: &[&Value], role: &str, direction: &str) -> u64 {
    events
        .iter()
        .filter(|e| e["role"] == role && e["direction"] == direction)
        .map(|e| e["len"].as_u64().expect("len"))
        .sum()
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Writes `dir/nginx.conf` for a single-worker nginx on 127.0.0.1:`port` whose server block
/// holds `server_body`; with `access_log`, requests are logged to `dir/access.log`.
pub fn nginx_conf(dir: &std::path::Path, port: u16, access_log: bool, server_body: &str) -> PathBuf {
    nginx_conf_on(dir, &format!("127.0.0.1:{port}"), access_log, server_body)
}

/// As [`nginx_conf`], listening on `listen` (address:port).
pub fn nginx_conf_on(dir: &std::path::Path, listen: &str, access_log: bool, server_body: &str) -> PathBuf {
    nginx_conf_with(dir, "", listen, access_log, server_body)
}

/// As [`nginx_conf_on`], with `http_extra` in the `http` block (an `upstream`, say).
pub fn nginx_conf_with(
    dir: &std::path::Path,
    http_extra: &str,
    listen: &str,
    access_log: bool,
    server_body: &str,
) -> PathBuf {
    let d = dir.display();
    let log = if access_log { format!("{d}/access.log") } else { "off".to_string() };
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes 1; user root; pid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 256; }}\n\
             http {{ access_log {log}; sendfile on; client_body_temp_path {d}; proxy_temp_path {d};\n\
             fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             {http_extra}\n\
             server {{ listen {listen}; {server_body} }} }}\n"
        ),
    )
    .expect("write nginx.conf");
    conf
}

/// Waits until no TCP connection to 127.0.0.1:`port` is left open on this machine (every
/// client has gone and the server has closed its ends): whatever the server was answering, it
/// has answered.
pub fn wait_connections_closed(port: u16) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    // /proc/net/tcp: local address as hex IP:PORT in the second column, state in the fourth.
    // The server's end is in use while ESTABLISHED (01), SYN_RECV (03) or CLOSE_WAIT (08: the
    // client has gone, the server has not closed yet); past those the server has closed it.
    let open = || {
        std::fs::read_to_string("/proc/net/tcp").unwrap_or_default().lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&format!(":{port:04X}")) && matches!(f[3], "01" | "03" | "08")
        })
    };
    while open() {
        assert!(Instant::now() < deadline, "connections to port {port} still open");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port` (a condition, not a sleep).
pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::yield_now();
    }
}

/// Builds tests/peers/hop.go (standard library only) into `dir`.
pub fn build_go_hop(dir: &std::path::Path) -> PathBuf {
    build_go_hop_with(dir, &[])
}

/// As [`build_go_hop`], with extra `go build` flags (`-ldflags=-w`: no DWARF, say).
pub fn build_go_hop_with(dir: &std::path::Path, flags: &[&str]) -> PathBuf {
    let go = ["/usr/lib/go-1.19/bin/go", "go"]
        .into_iter()
        .find(|g| Command::new(g).arg("version").output().is_ok_and(|o| o.status.success()))
        .expect("Go 1.19 (cargo xtask setup installs it)");
    let out = dir.join("hop-go");
    let status = Command::new(go)
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(repo().join("tests/peers/hop.go"))
        .env("GOCACHE", repo().join("target/go-cache"))
        .env("GOPATH", repo().join("target/go-path"))
        .env("GO111MODULE", "off")
        .status()
        .expect("run go build");
    assert!(status.success(), "go build hop.go");
    out
}

/// Runs tests/peers/load.py: `clients` concurrent clients, `per_client` GETs each of
/// `{base}{prefix}{client}x{n}`, every one of which must succeed. Returns the ids.
pub fn drive_load(base: &str, prefix: &str, clients: usize, per_client: usize) -> Vec<String> {
    drive_load_with(Command::new("python3"), base, prefix, clients, per_client)
}

/// As [`drive_load`], with `python` as the interpreter command (one run inside a network
/// namespace, say).
pub fn drive_load_with(
    mut python: Command,
    base: &str,
    prefix: &str,
    clients: usize,
    per_client: usize,
) -> Vec<String> {
    let out = python
        .arg(repo().join("tests/peers/load.py"))
        .args([base, prefix, &clients.to_string(), &per_client.to_string()])
        .output()
        .expect("run load.py");
    assert!(out.status.success(), "load.py: {}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(ids.len(), clients * per_client, "every request answered");
    ids
}

/// `program` started held: a shell the agent can be told to watch, which becomes `program`
/// (an exec keeps a watched process watched) when [`release`]d, so the agent sees it from its
/// first connection.
pub fn held(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Child {
    Command::new("sh")
        .args(["-c", "read _ && exec \"$0\" \"$@\""])
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sh")
}

/// Lets a [`held`] program start.
pub fn release(child: &mut Child) {
    use std::io::Write as _;
    child.stdin.take().expect("stdin of a held program").write_all(b"go\n").expect("release");
}

/// A throwaway Redis server on 127.0.0.1 (nothing persisted); stopped when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
    tls: bool,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(None)
    }

    /// A server that speaks only TLS, with the PEM files `cert` and `key`.
    pub fn start_tls(cert: &str, key: &str) -> Redis {
        Redis::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Redis {
        let port = free_port().to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        match tls {
            None => cmd.args(["--port", &port]),
            Some((cert, key)) => cmd
                .args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"])
                .args(["--tls-cert-file", cert, "--tls-key-file", key]),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (Debian's redis-server, installed by `cargo xtask setup`)");
        let redis = Redis { child, port: port.parse().expect("a port"), tls: tls.is_some() };
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while redis.cli(&["PING"]).is_none_or(|out| out.trim() != "PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// redis-cli's arguments to reach it.
    fn cli_args(&self) -> Vec<String> {
        let mut args = vec!["-p".to_string(), self.port.to_string()];
        if self.tls {
            args.extend(["--tls".to_string(), "--insecure".to_string()]);
        }
        args
    }

    /// Runs one command with redis-cli; its output, when it ran.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli").args(self.cli_args()).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway memcached server on 127.0.0.1; stopped when dropped.
pub struct Memcached {
    child: Child,
    pub port: u16,
}

impl Memcached {
    pub fn start() -> Memcached {
        let port = free_port();
        let child = Command::new("memcached")
            .args(["-u", "nobody", "-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0", "-m", "64"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn memcached (Debian's memcached, installed by `cargo xtask setup`)");
        let server = Memcached { child, port };
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while !server.answers() {
            assert!(Instant::now() < deadline, "memcached did not start");
            thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Whether it answers `version`.
    fn answers(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let mut buf = [0u8; 64];
        s.write_all(b"version\r\n").is_ok()
            && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"VERSION"))
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway MariaDB server on 127.0.0.1 in a directory of its own, without grant tables
/// (any user connects, as `app` does), offering TLS with the PEM files `cert` and `key`;
/// stopped and removed when dropped.
pub struct MariaDb {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl MariaDb {
    pub fn start(cert: &str, key: &str) -> MariaDb {
        let dir = tempfile::Builder::new().prefix("tw-mariadb").tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .expect("mariadb-install-db (Debian's mariadb-server, installed by `cargo xtask setup`)");
        assert!(out.status.success(), "mariadb-install-db: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let child = Command::new("/usr/sbin/mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                "--skip-grant-tables",
                "--skip-log-bin",
                "--bind-address=127.0.0.1",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--port={port}"))
            .arg(format!("--ssl-cert={cert}"))
            .arg(format!("--ssl-key={key}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mariadbd");
        let db = MariaDb { child, _dir: dir, port };
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while db.try_sql("", "SELECT 1").is_err() {
            assert!(Instant::now() < deadline, "mariadbd did not start");
            thread::sleep(Duration::from_millis(50));
        }
        db
    }

    /// The `mariadb` client's arguments to reach it as `app`, in `database` (none if empty).
    pub fn client_args(&self, database: &str) -> Vec<String> {
        let mut args: Vec<String> =
            ["--no-defaults", "-h", "127.0.0.1", "-u", "app", "-P"].iter().map(|s| s.to_string()).collect();
        args.push(self.port.to_string());
        if !database.is_empty() {
            args.push(database.to_string());
        }
        args
    }

    fn try_sql(&self, database: &str, sql: &str) -> Result<(), String> {
        let out = Command::new("mariadb")
            .args(self.client_args(database))
            .args(["-e", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    }

    /// Runs `sql` with the `mariadb` client in `database`.
    pub fn sql(&self, database: &str, sql: &str) {
        if let Err(e) = self.try_sql(database, sql) {
            panic!("mariadb {sql}: {e}");
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Debian's PostgreSQL server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A throwaway PostgreSQL server on 127.0.0.1 (trust authentication, user `app`), run as the
/// `postgres` user (it refuses root) in a directory of its own; stopped and removed when dropped.
pub struct Postgres {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new().prefix("tw-pg").tempdir().expect("tempdir");
        let as_postgres = |program: &str| {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid", "postgres", "--regid", "postgres", "--clear-groups", "--"])
                .arg(std::path::Path::new(PG_BIN).join(program));
            cmd
        };
        let status = Command::new("chown").arg("postgres:postgres").arg(dir.path()).status().expect("chown");
        assert!(status.success(), "chown {}", dir.path().display());
        let data = dir.path().join("data");
        let out = as_postgres("initdb")
            .args(["--auth=trust", "--username=app", "--encoding=UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        // Fast to start and stop, nothing kept: no fsync, no SSL (the test's clients speak plain).
        let child = as_postgres("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "ssl=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn postgres");
        let pg = Postgres { child, dir, port };
        // Accepting connections is not yet ready for queries (recovery at start): pg_isready says.
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while !Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(Instant::now() < deadline, "postgres did not start");
            thread::sleep(Duration::from_millis(20));
        }
        pg
    }

    /// Runs `sql` with psql in database `db`.
    pub fn psql(&self, db: &str, sql: &str) {
        let out = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "app", "-p"])
            .arg(self.port.to_string())
            .args(["-d", db, "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    /// SIGINT: PostgreSQL's fast shutdown (SIGTERM would wait for its clients to leave).
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}
