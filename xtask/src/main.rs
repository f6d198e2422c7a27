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
    /// Build tracewire and watch it capture a local HTTP server driven by curl.
    Demo {
        /// Requests to send.
        #[arg(long, default_value_t = 3)]
        requests: u32,
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
    ("curl", "curl"),
    ("ip", "iproute2"),
    ("setpriv", "util-linux"),
    ("node", "nodejs"),
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup(),
        Task::Demo { requests } => {
            setup()?;
            demo(requests)
        }
        Task::Test { args } => {
            setup()?;
            test(&args)
        }
    }
}

fn root() -> PathBuf {
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
        .filter(|(program, _)| !have(program) && !Path::new("/usr/sbin").join(program).exists())
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
    // nginx starts itself on install on Debian; the tests run their own instances.
    if Path::new("/run/nginx.pid").exists() {
        let _ = Command::new("nginx").args(["-s", "stop"]).stderr(Stdio::null()).status();
    }
    Ok(())
}

fn build() -> Result<PathBuf> {
    run(Command::new("cargo").args(["build", "--release", "--package", "tracewire"]).current_dir(root()))?;
    Ok(root().join("target/release/tracewire"))
}

/// Kills a child process on drop, so an error path never leaves a server behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn demo(requests: u32) -> Result<()> {
    let tracewire = build()?;
    let dir = std::env::temp_dir().join("tracewire-demo");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("index.html"), "<h1>hello from an uninstrumented server</h1>\n")?;
    let server = Command::new("python3")
        .args(["-m", "http.server", "0", "--bind", "127.0.0.1"])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting python3 -m http.server")?;
    let mut server = Guard(server);
    let pid = server.0.id();
    // http.server prints "Serving HTTP on 127.0.0.1 port N (...)" once it listens.
    let stdout = server.0.stdout.take().context("server stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port: u16 = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("unexpected http.server banner: {line:?}"))?;
    println!(
        "\ndemo: python3 http.server (pid {pid}) listens on 127.0.0.1:{port}; starting tracewire capture --pid {pid}\n"
    );

    let mut agent = Command::new(&tracewire)
        .args(["capture", "--pid", &pid.to_string(), "--status-interval", "0"])
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tracewire")?;
    let stderr = agent.stderr.take().context("agent stderr")?;
    let mut agent = Guard(agent);
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let Some(Ok(l)) = lines.next() else {
            bail!("tracewire exited before it was ready");
        };
        eprintln!("{l}");
        if l.contains("capturing with") {
            break;
        }
        if Instant::now() > deadline {
            bail!("tracewire was not ready within 60 s");
        }
    }
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            eprintln!("{l}");
        }
    });
    for i in 0..requests {
        run(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/?visit={i}"),
        ]))?;
    }
    // curl has exited, so every event is in the ring buffer; the agent drains it on SIGINT.
    // SAFETY: plain signal to our own child.
    unsafe { libc_kill(agent.0.id() as i32, 2) };
    let _ = agent.0.wait();
    println!(
        "\ndemo: each request shows as conn_open, data in (the request), data out (the response), conn_close."
    );
    Ok(())
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn test(args: &[String]) -> Result<()> {
    // Default members: the kernel crate only builds for the bpf target (through agent/build.rs).
    run(Command::new("cargo").arg("test").args(args).current_dir(root()))
}
