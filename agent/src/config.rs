//! The YAML configuration file (`--config`). Every setting also exists as a flag, and the
//! standard `OTEL_*` variables apply: flags override the environment, which overrides the file.
//! Unknown keys are an error, so a typo never silently does nothing.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;

/// The whole file; every section is optional.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Which processes to trace.
    pub select: Select,
    /// Kernel capture sizes.
    pub capture: Capture,
    /// Span naming.
    pub routes: Routes,
    /// OTLP export.
    pub otlp: Otlp,
    /// Local outputs.
    pub output: Output,
    /// Head and tail sampling.
    pub sampling: Sampling,
}

/// `sampling:`
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    /// An `OTEL_TRACES_SAMPLER` name.
    pub sampler: Option<String>,
    /// Its argument (the ratio).
    pub arg: Option<String>,
    /// Tail sampling (on when this section is present).
    pub tail: Option<Tail>,
}

/// `sampling: tail:` (see `--tail-*`).
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tail {
    /// Keep every trace with an error.
    pub errors: bool,
    /// Keep every trace with a span at least this long.
    pub latency_ms: Option<u64>,
    /// Fraction of the other traces kept.
    pub ratio: Option<f64>,
    /// Adaptive baseline: traces per second per operation.
    pub per_operation: Option<f64>,
    /// Cap on baseline traces per second.
    pub max_per_sec: Option<f64>,
    /// Idle time before a trace is decided.
    pub wait_ms: Option<u64>,
    /// Spans held at most.
    pub max_spans: Option<usize>,
}

/// `select:`
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Select {
    /// Process ids (and their descendants).
    pub pids: Vec<u32>,
    /// Executable globs.
    pub exe: Vec<String>,
    /// cgroup v2 directories.
    pub cgroups: Vec<PathBuf>,
    /// Server ports.
    pub ports: Vec<u16>,
}

/// `capture:`
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Capture {
    /// Payload bytes copied per read or write.
    pub payload_cap: Option<u32>,
    /// Connections tracked at once.
    pub max_conns: Option<u32>,
    /// Ring buffer bytes.
    pub ring_bytes: Option<u32>,
    /// Trace context in TCP options between agents (default on).
    pub tcp_option: Option<bool>,
    /// Hooks that see the bytes: auto, sockets or syscalls.
    pub data_hooks: Option<crate::capture::DataHooks>,
    /// Insert `traceparent` into the selected processes' outgoing requests (default off).
    pub inject_traceparent: Option<bool>,
    /// Inject even where FIONREAD is broken for sockets in a sockhash.
    pub inject_despite_fionread: Option<bool>,
    /// Follow calls through Go's goroutines and nginx's upstreams with uprobes (default on).
    pub uprobes: Option<bool>,
}

/// `routes:`
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Routes {
    /// Route patterns (`/users/{id}`).
    pub patterns: Vec<String>,
    /// Name unmatched spans with ids replaced by `*`.
    pub heuristic: bool,
}

/// `otlp:`
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Otlp {
    /// Endpoint base URL.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: Option<String>,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// Timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// `gzip`, `zstd` or `none`.
    pub compression: Option<String>,
    /// CA certificate (PEM) trusted for `https://` endpoints, besides the system's.
    pub certificate: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    pub client_certificate: Option<PathBuf>,
    /// Client key (PEM) for mTLS.
    pub client_key: Option<PathBuf>,
    /// Spans that may wait for export (default 16384).
    pub queue_spans: Option<usize>,
}

/// `output:`
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Output {
    /// `waterfall` or `none`.
    pub print: Option<String>,
    /// OTLP-JSON lines file.
    pub otlp_json: Option<PathBuf>,
    /// Address of the `/metrics` and `/healthz` server.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Request metrics (duration histograms) on `/metrics` and over OTLP (default true).
    pub request_metrics: Option<bool>,
}

/// A configuration file that could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Not readable.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid YAML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's explanation (line, column, expected keys).
        message: String,
    },
}

/// Parses configuration text.
pub fn parse(text: &str, path: &str) -> Result<FileConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_saphyr::from_str(text)
        .map_err(|e| ConfigError::Parse { path: path.to_string(), message: e.to_string() })
}

/// Reads and parses a configuration file.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let p = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
    parse(&text, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file() {
        let c = parse(
            "select:\n  exe: [nginx, 'python3*']\n  ports: [8080]\ncapture:\n  payload_cap: 8192\n\
             routes:\n  patterns: ['/users/{id}']\n  heuristic: true\n\
             otlp:\n  endpoint: http://collector:4318\n  headers: {authorization: Bearer x}\n  compression: gzip\n\
             output:\n  print: none\n  request_metrics: false\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(c.select.exe, vec!["nginx", "python3*"]);
        assert_eq!(c.select.ports, vec![8080]);
        assert_eq!(c.capture.payload_cap, Some(8192));
        assert_eq!(c.routes.patterns, vec!["/users/{id}"]);
        assert!(c.routes.heuristic);
        assert_eq!(c.otlp.endpoint.as_deref(), Some("http://collector:4318"));
        assert_eq!(c.otlp.headers.get("authorization").map(String::as_str), Some("Bearer x"));
        assert_eq!(c.output.print.as_deref(), Some("none"));
        assert_eq!(c.output.request_metrics, Some(false));
        assert_eq!(parse("", "e.yaml").unwrap(), FileConfig::default());
    }

    #[test]
    fn tail_sampling_section() {
        let c = parse(
            "sampling:\n  sampler: always_on\n  tail:\n    errors: true\n    latency_ms: 500\n    per_operation: 2.5\n",
            "t.yaml",
        )
        .unwrap();
        let t = c.sampling.tail.unwrap();
        assert!(t.errors);
        assert_eq!((t.latency_ms, t.per_operation, t.ratio), (Some(500), Some(2.5), None));
        assert!(parse("sampling:\n  tail:\n    error: true\n", "t.yaml").is_err(), "typo");
    }

    #[test]
    fn typos_and_bad_types_are_errors() {
        let e = parse("otlp:\n  endpont: x\n", "t.yaml").unwrap_err().to_string();
        assert!(e.contains("t.yaml") && e.contains("endpont"), "{e}");
        assert!(parse("capture:\n  payload_cap: lots\n", "t.yaml").is_err());
        assert!(load(Path::new("/nonexistent/tracewire.yaml")).is_err());
    }
}
