//! OTLP export (gRPC, or HTTP with a protobuf body): batching on the pipeline thread, sending
//! with retries on an exporter thread, and exact accounting: every span handed to the exporter ends up counted once, as
//! exported or as dropped for a reason.
use std::{
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client as HttpClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use log::warn;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::{Message as _, bytes::BufMut as _};
use tonic::{
    codec::CompressionEncoding,
    metadata::{MetadataKey, MetadataValue},
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
};

use super::{Accounting, DropReason, retry};
use crate::{
    correlate::span::SpanRecord,
    export::encode::EncodedSpans,
    metadata::{ProcessInfo, Resources},
};

/// TLS material for the collector connection: PEM files (OTEL_EXPORTER_OTLP_CERTIFICATE,
/// _CLIENT_CERTIFICATE, _CLIENT_KEY). The system's roots are always trusted as well.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Extra CA certificates.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate (mTLS).
    pub client_cert: Option<std::path::PathBuf>,
    /// Client key (mTLS).
    pub client_key: Option<std::path::PathBuf>,
}

/// A rustls client configuration from the system roots and `tls`. `system_roots` false (a
/// plain http:// endpoint) skips parsing the system's CA bundle, a few MiB the connection would
/// never use.
fn rustls_config(tls: &TlsFiles, system_roots: bool) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    if system_roots {
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    }
    if let Some(ca) = &tls.ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("OTLP certificate {}", ca.display()))?;
        for cert in certs {
            roots.add(cert.with_context(|| format!("OTLP certificate {}", ca.display()))?)?;
        }
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
    Ok(match (&tls.client_cert, &tls.client_key) {
        (Some(c), Some(k)) => {
            let chain = CertificateDer::pem_file_iter(c)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("OTLP client certificate {}", c.display()))?;
            let key = PrivateKeyDer::from_pem_file(k)
                .with_context(|| format!("OTLP client key {}", k.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => anyhow::bail!("OTLP mTLS needs both a client certificate and a client key"),
    })
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (port 4317).
    Grpc,
    /// OTLP/HTTP with a protobuf body, POST to `/v1/traces` (port 4318).
    HttpProtobuf,
}

/// Exporter settings (from flags and the standard `OTEL_EXPORTER_OTLP_*` variables).
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// gRPC: `http://host:4317`; HTTP: the full URL, `http://host:4318/v1/traces`.
    pub endpoint: String,
    /// Transport.
    pub protocol: Protocol,
    /// TLS files (used for `https://` endpoints).
    pub tls: TlsFiles,
    /// Extra request headers (authentication).
    pub headers: Vec<(String, String)>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// `gzip`, `zstd` or none.
    pub compression: Option<String>,
    /// Spans per request.
    pub batch_size: usize,
    /// Longest a span waits for its batch.
    pub batch_delay: Duration,
    /// Requests waiting to be sent; more are dropped (queue_full). Each holds a batch of encoded
    /// spans (~700 KiB at 2048 spans), so this bounds the memory a collector outage can take.
    pub queue_requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Give up retrying a request after this long.
    pub max_retry_elapsed: Duration,
    /// First backoff step.
    pub backoff_base: Duration,
    /// Where request metrics go, when they are exported: OTLP/HTTP's full URL (`…/v1/metrics`);
    /// for gRPC, the trace endpoint (metrics take the same channel).
    pub metrics_endpoint: Option<String>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: "http://localhost:4317".into(),
            protocol: Protocol::Grpc,
            tls: TlsFiles::default(),
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            compression: None,
            // Four times the SDKs' 512: each request costs the exporter thread about as much
            // again in framing, wakeups and the collector's answer as it does in bytes, and an
            // agent sends a whole node's spans (nginx under load, OTLP/HTTP: its CPU per request
            // 0.45-0.55 -> 0.19-0.21 us, the agent's in all ~20 % less; gRPC ~13 %). 4096 saved
            // nothing more: buffers that large are fresh pages from the kernel for every batch.
            batch_size: 2048,
            batch_delay: Duration::from_secs(1),
            // 8 × 2048 spans: a fraction of a second of a busy node's traffic while the collector
            // is slow, for ~6 MiB at most.
            queue_requests: 8,
            concurrency: 4,
            max_retry_elapsed: Duration::from_secs(30),
            backoff_base: Duration::from_millis(100),
            metrics_endpoint: None,
        }
    }
}

/// Batching from the batch span processor's variables (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`,
/// `OTEL_BSP_SCHEDULE_DELAY` in ms, `OTEL_BSP_MAX_QUEUE_SIZE` in spans), read through `var`;
/// `queue_spans` (a flag or the config file) wins over the variable. Unset values keep `config`'s.
pub fn apply_batching(
    config: &mut OtlpConfig,
    queue_spans: Option<usize>,
    var: impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    let number = |name: &str| -> Result<Option<usize>, String> {
        match var(name).filter(|v| !v.trim().is_empty()) {
            Some(v) => v.trim().parse().map(Some).map_err(|_| format!("{name}={v}: not a number")),
            None => Ok(None),
        }
    };
    match number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")? {
        Some(0) => return Err("OTEL_BSP_MAX_EXPORT_BATCH_SIZE must be at least 1".into()),
        Some(n) => config.batch_size = n,
        None => {}
    }
    if let Some(ms) = number("OTEL_BSP_SCHEDULE_DELAY")? {
        config.batch_delay = Duration::from_millis(ms as u64);
    }
    let spans = match queue_spans {
        Some(n) => Some(n),
        None => number("OTEL_BSP_MAX_QUEUE_SIZE")?,
    };
    if let Some(spans) = spans {
        config.queue_requests = spans.div_ceil(config.batch_size).max(1);
    }
    Ok(())
}

/// Parses `k1=v1,k2=v2` (OTEL_EXPORTER_OTLP_HEADERS; values may be percent-encoded).
pub fn parse_headers(s: &str) -> Vec<(String, String)> {
    crate::metadata::parse_resource_attributes(s).unwrap_or_default()
}

/// What a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Traces,
    Metrics,
}

struct Batch {
    /// The encoded export request: encoded once, sent as is by every attempt.
    request: Bytes,
    /// Spans, or data points.
    items: u64,
    signal: Signal,
}

/// A request on its way to the exporter thread.
enum Queued {
    /// Spans, which the exporter thread frames as a request.
    Spans {
        spans: EncodedSpans,
        /// The resource of every process in the batch.
        resources: Vec<(u32, Arc<ProcessInfo>)>,
    },
    /// Request metrics, encoded.
    Metrics { request: Bytes, points: u64 },
}

/// Spans encoded into the next request as they are submitted. A request is cut when it holds
/// the batch size, or once its spans' encoding reaches `max_bytes` (so a request is at most
/// that plus one span and the processes' framing).
struct Batcher {
    pending: EncodedSpans,
    /// When the first pending span came.
    oldest: Option<Instant>,
    batch_size: usize,
    max_bytes: usize,
}

impl Batcher {
    fn new(batch_size: usize, max_bytes: usize) -> Self {
        let batch_size = batch_size.max(1);
        Batcher { pending: EncodedSpans::for_batch(batch_size), oldest: None, batch_size, max_bytes }
    }

    /// Encodes `s`; returns the batch it completes, if it does.
    fn push(&mut self, s: &SpanRecord) -> Option<EncodedSpans> {
        if self.pending.is_empty() {
            self.oldest = Some(Instant::now());
        }
        self.pending.push(s);
        (self.pending.len() >= self.batch_size || self.pending.encoded_bytes() >= self.max_bytes)
            .then(|| self.take())
    }

    /// Whatever is pending.
    fn take(&mut self) -> EncodedSpans {
        self.oldest = None;
        std::mem::replace(&mut self.pending, EncodedSpans::for_batch(self.batch_size))
    }
}

/// The OTLP exporter.
pub struct OtlpExporter {
    tx: Option<tokio::sync::mpsc::Sender<Queued>>,
    thread: Option<JoinHandle<()>>,
    accounting: Arc<Mutex<Accounting>>,
    batcher: Batcher,
    config: OtlpConfig,
}

impl OtlpExporter {
    /// Starts the exporter thread. Connecting is lazy: a collector that is down now is retried
    /// when batches are sent.
    pub fn start(config: OtlpConfig, accounting: Arc<Mutex<Accounting>>) -> anyhow::Result<Self> {
        let https = config.endpoint.starts_with("https://");
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| anyhow::anyhow!("OTLP endpoint {:?}: {e}", config.endpoint))?
            .connect_timeout(config.timeout);
        if https && config.protocol == Protocol::Grpc {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| anyhow::anyhow!("OTLP TLS file {}: {e}", p.display()))
            };
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &config.tls.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            match (&config.tls.client_cert, &config.tls.client_key) {
                (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
                (None, None) => {}
                _ => anyhow::bail!("OTLP mTLS needs both a client certificate and a client key"),
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| anyhow::anyhow!("OTLP TLS: {e}"))?;
        }
        // Built here so that a bad certificate is an error at start, not a silent export failure.
        let http_tls = match config.protocol {
            Protocol::HttpProtobuf => Some(rustls_config(&config.tls, https)?),
            Protocol::Grpc => None,
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Queued>(config.queue_requests.max(1));
        let acct = Arc::clone(&accounting);
        let cfg = config.clone();
        let thread = std::thread::Builder::new().name("otlp-export".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    warn!("OTLP exporter could not start its runtime: {e}");
                    return;
                }
            };
            rt.block_on(send_loop(endpoint, http_tls, cfg, rx, acct));
        })?;
        let batcher = Batcher::new(config.batch_size, MAX_REQUEST_BYTES);
        Ok(OtlpExporter { tx: Some(tx), thread: Some(thread), accounting, batcher, config })
    }

    /// Encodes spans into the pending batch (each record is freed once encoded); a full batch
    /// is sent at once.
    pub fn submit(&mut self, spans: Vec<SpanRecord>, resources: &mut Resources) {
        for s in spans {
            if let Some(batch) = self.batcher.push(&s) {
                self.send(batch, resources);
            }
        }
    }

    /// Sends a partial batch that has waited long enough.
    pub fn tick(&mut self, resources: &mut Resources) {
        if self.batcher.oldest.is_some_and(|t| t.elapsed() >= self.config.batch_delay) {
            self.flush(resources);
        }
    }

    fn flush(&mut self, resources: &mut Resources) {
        let batch = self.batcher.take();
        if !batch.is_empty() {
            self.send(batch, resources);
        }
    }

    fn send(&mut self, spans: EncodedSpans, resources: &mut Resources) {
        let n = spans.len() as u64;
        let resources = spans.pids().into_iter().map(|pid| (pid, resources.get(pid))).collect();
        let Some(tx) = &self.tx else {
            lock(&self.accounting).count_drop(DropReason::Shutdown, n);
            return;
        };
        if tx.try_send(Queued::Spans { spans, resources }).is_err() {
            let mut a = lock(&self.accounting);
            if a.dropped(DropReason::QueueFull) == 0 {
                warn!("OTLP export queue full: dropping spans (counted as queue_full)");
            }
            a.count_drop(DropReason::QueueFull, n);
        }
    }

    /// Whether request metrics are exported (there is a metrics endpoint).
    pub fn exports_metrics(&self) -> bool {
        self.config.metrics_endpoint.is_some()
    }

    /// Queues an export of request metrics (a no-op without a metrics endpoint). A full queue
    /// drops it, counted: the next export carries the same cumulative counts.
    pub fn submit_metrics(&mut self, request: &ExportMetricsServiceRequest, points: u64) {
        if !self.exports_metrics() {
            return;
        }
        // Encoded before the accounting is locked: the sending tasks settle under that lock.
        let queued = Queued::Metrics { request: Bytes::from(request.encode_to_vec()), points };
        let mut a = lock(&self.accounting);
        a.points.produced += points;
        if self.tx.as_ref().is_none_or(|tx| tx.try_send(queued).is_err()) {
            a.points.dropped += points;
        }
    }

    /// Sends what is pending and waits up to `deadline` for the queue to drain; whatever is
    /// still queued then is counted as dropped (shutdown).
    pub fn shutdown(mut self, resources: &mut Resources, deadline: Duration) {
        self.flush(resources);
        let tx = self.tx.take();
        let start = Instant::now();
        if let Some(tx) = tx {
            // Closing the channel lets the sender finish the queue and exit.
            while tx.capacity() < tx.max_capacity() && start.elapsed() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(tx);
        }
        lock(&self.accounting).shutdown_deadline =
            Some(Instant::now() + deadline.saturating_sub(start.elapsed()));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(a: &Mutex<Accounting>) -> std::sync::MutexGuard<'_, Accounting> {
    a.lock().unwrap_or_else(|e| e.into_inner())
}

/// The OTLP/HTTP client (plain http:// or TLS).
type HttpsClient = HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where batches go: OTLP/gRPC or OTLP/HTTP (protobuf body).
#[derive(Clone)]
enum Transport {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    // Boxed: the HTTP client is much larger than the gRPC one, and transports are cloned per send.
    // The URIs of traces and of metrics.
    Http(Box<(HttpsClient, hyper::Uri, Option<hyper::Uri>)>),
}

/// The result of one attempt.
enum Outcome {
    /// Accepted; this many spans were rejected (partial success).
    Accepted(u64),
    /// Failed: retry or drop, and why.
    Failed(retry::Verdict, String),
}

impl Transport {
    async fn attempt(
        &mut self,
        cfg: &OtlpConfig,
        signal: Signal,
        request: &Bytes,
        timeout: Duration,
    ) -> Outcome {
        match self {
            Transport::Grpc(client) => {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(timeout);
                for (k, v) in &cfg.headers {
                    if let (Ok(k), Ok(v)) =
                        (MetadataKey::from_bytes(k.as_bytes()), MetadataValue::try_from(v.as_str()))
                    {
                        req.metadata_mut().insert(k, v);
                    }
                }
                let sent = async {
                    client.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    client
                        .unary(
                            req,
                            tonic::codegen::http::uri::PathAndQuery::from_static(match signal {
                                Signal::Traces => EXPORT_PATH,
                                Signal::Metrics => METRICS_EXPORT_PATH,
                            }),
                            Encoded,
                        )
                        .await
                };
                match sent.await {
                    Ok(resp) => Outcome::Accepted(resp.into_inner().rejected()),
                    Err(status) => {
                        let hint = retry::retry_info(status.details());
                        Outcome::Failed(
                            retry::classify_grpc(status.code(), hint),
                            format!("{}: {}", status.code(), status.message()),
                        )
                    }
                }
            }
            Transport::Http(h) => {
                let uri = match signal {
                    Signal::Traces => &h.1,
                    Signal::Metrics => match &h.2 {
                        Some(u) => u,
                        None => return Outcome::Failed(retry::Verdict::Drop, "no metrics endpoint".into()),
                    },
                };
                http_attempt(&h.0, uri, cfg, request, timeout).await
            }
        }
    }
}

/// The OTLP trace export method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The OTLP metrics export method.
const METRICS_EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// An export response of either signal: every OTLP `Export*ServiceResponse` is field 1, a partial
/// success whose field 1 counts what was rejected (`rejected_spans`, `rejected_data_points`)
/// and field 2 says why.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<PartialSuccess>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PartialSuccess {
    #[prost(int64, tag = "1")]
    rejected: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

impl ExportResponse {
    fn rejected(&self) -> u64 {
        self.partial_success.as_ref().map_or(0, |p| p.rejected.max(0) as u64)
    }
}

/// A gRPC codec that sends an already encoded request and decodes the response with prost.
#[derive(Clone, Copy, Default)]
struct Encoded;

impl tonic::codec::Codec for Encoded {
    type Encode = Bytes;
    type Decode = ExportResponse;
    type Encoder = Encoded;
    type Decoder = Encoded;

    fn encoder(&mut self) -> Encoded {
        Encoded
    }

    fn decoder(&mut self) -> Encoded {
        Encoded
    }
}

impl tonic::codec::Encoder for Encoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Encoded {
    type Item = ExportResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<ExportResponse>, tonic::Status> {
        ExportResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("decoding the export response: {e}")))
    }
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(body)?;
    enc.finish()
}

/// `Retry-After`: delay-seconds (HTTP-dates are treated as "no hint").
fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    headers
        .get(hyper::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

async fn http_attempt(
    client: &HttpsClient,
    uri: &hyper::Uri,
    cfg: &OtlpConfig,
    request: &Bytes,
    timeout: Duration,
) -> Outcome {
    // Uncompressed, the encoded batch is sent as it is (shared, not copied).
    let mut body = request.clone();
    let mut builder = hyper::Request::post(uri.clone()).header("content-type", "application/x-protobuf");
    let compressed = match cfg.compression.as_deref() {
        Some("gzip") => Some(("gzip", gzip(request))),
        Some("zstd") => Some(("zstd", zstd::encode_all(request.as_ref(), 3))),
        _ => None,
    };
    if let Some((encoding, result)) = compressed {
        match result {
            Ok(z) => {
                body = Bytes::from(z);
                builder = builder.header("content-encoding", encoding);
            }
            Err(e) => return Outcome::Failed(retry::Verdict::Drop, format!("{encoding}: {e}")),
        }
    }
    for (k, v) in &cfg.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let req = match builder.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(retry::Verdict::Drop, format!("building the request: {e}")),
    };
    let resp = match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => return Outcome::Failed(retry::Verdict::Retry(None), "timed out".into()),
        // Connection refused, reset...: transient by nature.
        Ok(Err(e)) => {
            return Outcome::Failed(retry::Verdict::Retry(None), format!("HTTP request failed: {e}"));
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    let hint = retry_after(resp.headers());
    // The response body is bounded (4 MiB, as the specification recommends).
    let bytes = match tokio::time::timeout(timeout, Limited::new(resp.into_body(), 4 << 20).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => Bytes::new(),
    };
    if (200..300).contains(&status) {
        return Outcome::Accepted(ExportResponse::decode(bytes.as_ref()).map_or(0, |r| r.rejected()));
    }
    Outcome::Failed(retry::classify_http(status, hint), format!("HTTP {status}"))
}

async fn send_loop(
    endpoint: Endpoint,
    http_tls: Option<rustls::ClientConfig>,
    cfg: OtlpConfig,
    mut rx: tokio::sync::mpsc::Receiver<Queued>,
    accounting: Arc<Mutex<Accounting>>,
) {
    let transport = match cfg.protocol {
        Protocol::Grpc => {
            let mut client = tonic::client::Grpc::new(endpoint.connect_lazy());
            match cfg.compression.as_deref() {
                Some("gzip") => client = client.send_compressed(CompressionEncoding::Gzip),
                Some("zstd") => client = client.send_compressed(CompressionEncoding::Zstd),
                _ => {}
            }
            Transport::Grpc(client)
        }
        Protocol::HttpProtobuf => {
            let uri = match cfg.endpoint.parse::<hyper::Uri>() {
                Ok(u) => u,
                Err(e) => {
                    warn!("OTLP endpoint {:?}: {e}", cfg.endpoint);
                    return;
                }
            };
            let Some(tls) = http_tls else {
                warn!("OTLP/HTTP exporter started without a TLS configuration");
                return;
            };
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .build();
            let metrics_uri = match cfg.metrics_endpoint.as_deref().map(str::parse::<hyper::Uri>) {
                Some(Ok(u)) => Some(u),
                Some(Err(e)) => {
                    warn!("OTLP metrics endpoint {:?}: {e}", cfg.metrics_endpoint);
                    None
                }
                None => None,
            };
            Transport::Http(Box::new((
                HttpClient::builder(TokioExecutor::new()).build(connector),
                uri,
                metrics_uri,
            )))
        }
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let cfg = Arc::new(cfg);
    while let Some(queued) = rx.recv().await {
        let batch = frame(queued);
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let (transport, cfg, accounting) = (transport.clone(), Arc::clone(&cfg), Arc::clone(&accounting));
        tasks.spawn(async move {
            send_one(transport, &cfg, batch, &accounting).await;
            drop(permit);
        });
        // Reap finished sends so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Where a batch is cut by size: a request stays below the 4 MiB a gRPC server (the
/// Collector's receiver included) accepts by default, spans being a few KiB at most.
const MAX_REQUEST_BYTES: usize = 3 << 20;

/// A queued batch as the request body every attempt sends.
fn frame(queued: Queued) -> Batch {
    let (spans, resources) = match queued {
        Queued::Spans { spans, resources } => (spans, resources),
        Queued::Metrics { request, points } => {
            return Batch { request, items: points, signal: Signal::Metrics };
        }
    };
    let mut lookup = |pid: u32| {
        resources.iter().find(|(p, _)| *p == pid).map(|(_, r)| Arc::clone(r)).unwrap_or_else(|| {
            Arc::new(ProcessInfo { service_name: format!("pid-{pid}"), attributes: Vec::new(), pid })
        })
    };
    let items = spans.len() as u64;
    Batch { request: spans.into_request(&mut lookup), items, signal: Signal::Traces }
}

/// Accounts for a batch that is done: `exported` of its items were accepted, the rest dropped
/// for `reason`.
fn settle(a: &mut Accounting, batch: &Batch, exported: u64, reason: DropReason, error: Option<String>) {
    let dropped = batch.items - exported;
    match batch.signal {
        Signal::Traces => {
            a.exported += exported;
            a.count_drop(reason, dropped);
            if error.is_some() {
                a.last_error = error;
            }
        }
        Signal::Metrics => {
            a.points.exported += exported;
            a.points.dropped += dropped;
            if error.is_some() {
                a.points.last_error = error;
            }
        }
    }
}

/// Sends one batch, retrying per the OTLP rules, and accounts for every item in it.
async fn send_one(mut transport: Transport, cfg: &OtlpConfig, batch: Batch, accounting: &Mutex<Accounting>) {
    let mut rng = fastrand::Rng::new();
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        let deadline = lock(accounting).shutdown_deadline;
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            settle(&mut lock(accounting), &batch, 0, DropReason::Shutdown, None);
            break;
        }
        let timeout = left.map_or(cfg.timeout, |l| l.min(cfg.timeout));
        let (verdict, error) = match transport.attempt(cfg, batch.signal, &batch.request, timeout).await {
            Outcome::Accepted(rejected) => {
                let rejected = rejected.min(batch.items);
                let mut a = lock(accounting);
                settle(&mut a, &batch, batch.items - rejected, DropReason::Rejected, None);
                a.requests_ok += 1;
                break;
            }
            Outcome::Failed(verdict, error) => (verdict, error),
        };
        let wait = match verdict {
            retry::Verdict::Drop => None,
            retry::Verdict::Retry(hint) => {
                let b = retry::backoff(attempt, cfg.backoff_base, Duration::from_secs(5), &mut rng);
                Some(hint.map_or(b, |h| h.max(b).min(Duration::from_secs(30))))
            }
        };
        let budget_spent = |w: Duration| started.elapsed() + w > cfg.max_retry_elapsed;
        let past_deadline = |w: Duration| deadline.is_some_and(|d| Instant::now() + w > d);
        match wait {
            Some(w) if !budget_spent(w) && !past_deadline(w) => {
                lock(accounting).retries += 1;
                tokio::time::sleep(w).await;
                attempt += 1;
            }
            Some(w) => {
                let mut a = lock(accounting);
                let reason = if budget_spent(w) { DropReason::RetryExhausted } else { DropReason::Shutdown };
                settle(&mut a, &batch, 0, reason, Some(error));
                break;
            }
            None => {
                settle(&mut lock(accounting), &batch, 0, DropReason::Rejected, Some(error));
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_at_the_batch_size_or_the_size_limit_and_lose_no_span() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        let spans: Vec<SpanRecord> = (0..40u8)
            .map(|i| {
                let mut s = crate::export::transform::tests::sample(7 + u32::from(i % 3));
                s.span_id = [i; 8];
                // Every fifth span far larger than the others.
                s.name = "n".repeat(if i % 5 == 0 { 30_000 } else { 100 }).into();
                s
            })
            .collect();
        let run = |batch_size: usize, max: usize| {
            let mut b = Batcher::new(batch_size, max);
            let mut out: Vec<Batch> = Vec::new();
            let queue = |spans: EncodedSpans| {
                let info =
                    |pid| Arc::new(ProcessInfo { service_name: "s".into(), attributes: Vec::new(), pid });
                let resources = spans.pids().into_iter().map(|pid| (pid, info(pid))).collect();
                frame(Queued::Spans { spans, resources })
            };
            for s in &spans {
                if let Some(full) = b.push(s) {
                    out.push(queue(full));
                }
            }
            let rest = b.take();
            if !rest.is_empty() {
                out.push(queue(rest));
            }
            assert!(b.oldest.is_none() && b.pending.is_empty());
            out
        };
        let decode = |r: &Batch| {
            let d = ExportTraceServiceRequest::decode(r.request.clone()).unwrap();
            let ids: Vec<u8> = d
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
                .map(|s| s.span_id[0])
                .collect();
            assert_eq!(ids.len() as u64, r.items);
            ids
        };
        // By size: a request ends with the span that reaches the limit.
        let max = 64 * 1024;
        let requests = run(1000, max);
        assert!(requests.len() > 1, "split");
        let mut ids = Vec::new();
        for r in &requests {
            assert!(r.request.len() <= max + 31_000, "{} bytes", r.request.len());
            let mut got = decode(r);
            got.sort_unstable();
            ids.extend(got);
        }
        assert_eq!(ids, (0..40u8).collect::<Vec<_>>(), "every span once");
        // By count.
        let requests = run(16, usize::MAX);
        assert_eq!(requests.iter().map(|r| r.items).collect::<Vec<_>>(), [16, 16, 8]);
        // Within a request, a process's spans keep their order.
        let first = decode(&requests[0]);
        assert_eq!(first[..6], [0, 3, 6, 9, 12, 15], "pid 7's spans first, in order");
    }

    #[test]
    fn batching_follows_the_batch_span_processor_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let mut c = OtlpConfig::default();
        apply_batching(&mut c, None, vars(&[])).unwrap();
        assert_eq!((c.batch_size, c.queue_requests, c.batch_delay), (2048, 8, Duration::from_secs(1)));
        let mut c = OtlpConfig::default();
        const SET: &[(&str, &str)] = &[
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "1001"),
        ];
        apply_batching(&mut c, None, vars(SET)).unwrap();
        assert_eq!((c.batch_size, c.queue_requests, c.batch_delay), (100, 11, Duration::from_millis(250)));
        // The flag wins over the variable; a queue is at least one request.
        apply_batching(&mut c, Some(1), vars(SET)).unwrap();
        assert_eq!(c.queue_requests, 1);
        let e = apply_batching(&mut c, None, vars(&[("OTEL_BSP_MAX_QUEUE_SIZE", "lots")])).unwrap_err();
        assert!(e.contains("OTEL_BSP_MAX_QUEUE_SIZE=lots"), "{e}");
        assert!(apply_batching(&mut c, None, vars(&[("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0")])).is_err());
    }
}
