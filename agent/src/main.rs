//! The `tracewire` binary: parses flags and runs a subcommand. Everything else is in the library.
use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tracewire::{
    capture::{CaptureOptions, Selection},
    cli::capture::{self, CaptureOutput},
};
use tracewire_common::{DEFAULT_MAX_CONNS, DEFAULT_PAYLOAD, DEFAULT_RING_BYTES, MAX_PAYLOAD};

#[derive(Parser)]
#[command(
    name = "tracewire",
    version,
    about = "Zero-instrumentation tracing of unmodified services with eBPF"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print connection and data events as they happen (the first thing to run to see that
    /// tracewire sees a service).
    Capture(CaptureArgs),
}

#[derive(Args)]
struct SelectArgs {
    /// Trace this process and its descendants (repeatable).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Trace processes whose executable path or name matches this glob (repeatable).
    #[arg(long = "exe")]
    exes: Vec<String>,
    /// Trace processes in this cgroup v2 directory (absolute, or relative to the cgroup2 mount).
    #[arg(long = "cgroup")]
    cgroups: Vec<PathBuf>,
    /// Only connections to or from these server ports (repeatable).
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// Payload bytes captured per read or write.
    #[arg(long, default_value_t = DEFAULT_PAYLOAD, value_parser = clap::value_parser!(u32).range(0..=MAX_PAYLOAD as i64))]
    payload_cap: u32,
    /// Connections tracked at once.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNS)]
    max_conns: u32,
    /// Ring buffer size in bytes (power of two).
    #[arg(long, default_value_t = DEFAULT_RING_BYTES)]
    ring_bytes: u32,
}

#[derive(Args)]
struct CaptureArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// JSON lines on stdout.
    #[arg(long)]
    json: bool,
    /// Also print captured payload bytes (off by default: payloads may hold private data).
    #[arg(long)]
    show_payload: bool,
    /// Seconds between status lines (0: only at exit).
    #[arg(long, default_value_t = 5)]
    status_interval: u64,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<u64>,
}

impl SelectArgs {
    fn options(&self) -> anyhow::Result<CaptureOptions> {
        let selection = if self.pids.is_empty() && self.exes.is_empty() && self.cgroups.is_empty() {
            Selection::All
        } else {
            let exes = self
                .exes
                .iter()
                .map(|g| glob::Pattern::new(g).with_context(|| format!("--exe {g}: invalid glob")))
                .collect::<anyhow::Result<_>>()?;
            Selection::Only { pids: self.pids.clone(), exes, cgroups: self.cgroups.clone() }
        };
        Ok(CaptureOptions {
            selection,
            ports: self.ports.clone(),
            payload_cap: self.payload_cap,
            max_conns: self.max_conns,
            ring_bytes: self.ring_bytes,
            ..CaptureOptions::default()
        })
    }
}

fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    Ok(stop)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new().parse_filters(&cli.log).parse_env("RUST_LOG").format_target(false).init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracewire: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Capture(args) => {
            let options = args.select.options()?;
            let out = CaptureOutput {
                json: args.json,
                show_payload: args.show_payload,
                status_every: Duration::from_secs(args.status_interval),
                duration: args.duration.map(Duration::from_secs),
            };
            capture::run(options, out, stop_flag()?)?;
            Ok(())
        }
    }
}
