//! An in-process OTLP/gRPC receiver built from opentelemetry-proto's generated tonic server:
//! it records what it receives and can be told to fail, stall or partially reject.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    trace::v1::Span,
};
use tonic::{Code, Request, Response, Status};

/// What the receiver answers to one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Accept everything.
    Ok,
    /// Fail with this code (and an optional RetryInfo delay).
    Fail(Code, Option<Duration>),
    /// Accept but reject this many spans (partial success).
    Partial(i64),
    /// Wait this long, then accept.
    Stall(Duration),
}

#[derive(Default)]
struct State {
    script: VecDeque<Answer>,
    received: Vec<ExportTraceServiceRequest>,
    /// Metrics exports (accepted, never scripted).
    metrics: Vec<ExportMetricsServiceRequest>,
    attempts: u64,
    headers: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Svc(Arc<Mutex<State>>);

#[tonic::async_trait]
impl MetricsService for Svc {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.0.lock().unwrap().metrics.push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl TraceService for Svc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let answer = {
            let mut s = self.0.lock().unwrap();
            s.attempts += 1;
            for kv in request.metadata().iter() {
                if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                    s.headers.push((k.to_string(), v.to_str().unwrap_or("").to_string()));
                }
            }
            s.script.pop_front().unwrap_or(Answer::Ok)
        };
        match answer {
            Answer::Ok => {}
            Answer::Stall(d) => tokio::time::sleep(d).await,
            Answer::Fail(code, retry) => {
                let status = match retry {
                    Some(d) => Status::with_details(
                        code,
                        "scripted failure",
                        tracewire::export::retry::encode_retry_info(d).into(),
                    ),
                    None => Status::new(code, "scripted failure"),
                };
                return Err(status);
            }
            Answer::Partial(n) => {
                self.0.lock().unwrap().received.push(request.into_inner());
                return Ok(Response::new(ExportTraceServiceResponse {
                    partial_success: Some(ExportTracePartialSuccess {
                        rejected_spans: n,
                        error_message: "scripted".into(),
                    }),
                }));
            }
        }
        self.0.lock().unwrap().received.push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A running receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _rt: tokio::runtime::Runtime,
}

impl Receiver {
    /// Starts on 127.0.0.1 with a free port; answers follow `script`, then Ok.
    pub fn start(script: Vec<Answer>) -> Receiver {
        Receiver::start_with(script, None)
    }

    /// Like [`Receiver::start`], serving TLS with this certificate and key (PEM).
    pub fn start_tls(script: Vec<Answer>, cert_pem: &str, key_pem: &str) -> Receiver {
        Receiver::start_with(script, Some(tonic::transport::Identity::from_pem(cert_pem, key_pem)))
    }

    fn start_with(script: Vec<Answer>, tls: Option<tonic::transport::Identity>) -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let state = Arc::new(Mutex::new(State { script: script.into(), ..State::default() }));
        let svc = Svc(Arc::clone(&state));
        let metrics_svc = svc.clone();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            let mut builder = tonic::transport::Server::builder();
            if let Some(identity) = tls {
                builder =
                    builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)).unwrap();
            }
            builder
                .add_service(
                    TraceServiceServer::new(svc)
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                        .accept_compressed(tonic::codec::CompressionEncoding::Zstd),
                )
                .add_service(
                    MetricsServiceServer::new(metrics_svc)
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                        .accept_compressed(tonic::codec::CompressionEncoding::Zstd),
                )
                .serve_with_incoming(tokio_stream_wrapper(listener))
                .await
                .unwrap();
        });
        Receiver { addr, state, _rt: rt }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received, with its resource's service.name.
    pub fn spans(&self) -> Vec<(String, Span)> {
        spans_of(&self.state.lock().unwrap().received)
    }

    /// Every histogram point received, with its resource's service.name and its metric's name.
    pub fn histogram_points(&self) -> Vec<HistogramPoint> {
        histogram_points_of(&self.state.lock().unwrap().metrics)
    }

    /// Whether a span with this `url.path` was received (without copying every span).
    pub fn has_path(&self, path: &str) -> bool {
        let state = self.state.lock().unwrap();
        state
            .received
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .any(|ss| ss.spans.iter().any(|s| attr_str(s, "url.path").as_deref() == Some(path)))
    }

    /// The string attributes of every resource received.
    pub fn resources(&self) -> Vec<std::collections::HashMap<String, String>> {
        let state = self.state.lock().unwrap();
        state
            .received
            .iter()
            .flat_map(|r| &r.resource_spans)
            .filter_map(|rs| rs.resource.as_ref())
            .map(|r| {
                r.attributes
                    .iter()
                    .filter_map(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                            Some((a.key.clone(), s.clone()))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .collect()
    }

    pub fn attempts(&self) -> u64 {
        self.state.lock().unwrap().attempts
    }

    pub fn headers(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().headers.clone()
    }
}

fn tokio_stream_wrapper(
    listener: tokio::net::TcpListener,
) -> impl futures_core::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

/// String attribute of a span.
pub fn attr_str(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()).and_then(|v| match &v.value {
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(x)) => Some(x.clone()),
        _ => None,
    })
}

/// Integer attribute of a span.
pub fn attr_int(s: &Span, key: &str) -> Option<i64> {
    s.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()).and_then(|v| match &v.value {
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(x)) => Some(*x),
        _ => None,
    })
}

/// What the HTTP receiver answers to one request.
#[derive(Debug, Clone)]
pub enum HttpAnswer {
    /// 200 with an empty response.
    Ok,
    /// This status, with an optional Retry-After in seconds.
    Status(u16, Option<u64>),
    /// 200 with a partial success rejecting this many spans.
    Partial(i64),
}

#[derive(Default)]
struct HttpState {
    script: VecDeque<HttpAnswer>,
    received: Vec<ExportTraceServiceRequest>,
    /// Posts to /v1/metrics (accepted, never scripted).
    metrics: Vec<ExportMetricsServiceRequest>,
    attempts: u64,
    paths: Vec<String>,
    headers: Vec<(String, String)>,
}

/// An in-process OTLP/HTTP receiver (protobuf bodies, gzip accepted).
pub struct HttpReceiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<HttpState>>,
    _rt: tokio::runtime::Runtime,
}

impl HttpReceiver {
    pub fn start(script: Vec<HttpAnswer>) -> HttpReceiver {
        HttpReceiver::start_with(script, None)
    }

    /// Like [`HttpReceiver::start`], serving HTTPS with this certificate and key (PEM).
    pub fn start_tls(script: Vec<HttpAnswer>, cert_pem: &str, key_pem: &str) -> HttpReceiver {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        HttpReceiver::start_with(script, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }

    fn start_with(script: Vec<HttpAnswer>, tls: Option<tokio_rustls::TlsAcceptor>) -> HttpReceiver {
        use http_body_util::{BodyExt as _, Full};
        use hyper::body::Bytes;
        use prost::Message as _;

        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let state = Arc::new(Mutex::new(HttpState { script: script.into(), ..HttpState::default() }));
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let st = Arc::clone(&state);
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { break };
                let st = Arc::clone(&st);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let st = Arc::clone(&st);
                            async move {
                                let path = req.uri().path().to_string();
                                let encoding = req
                                    .headers()
                                    .get("content-encoding")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                let hdrs: Vec<(String, String)> = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                                    .collect();
                                let body =
                                    req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                let body = match encoding.as_str() {
                                    "gzip" => {
                                        let mut out = Vec::new();
                                        std::io::Read::read_to_end(
                                            &mut flate2::read::GzDecoder::new(&body[..]),
                                            &mut out,
                                        )
                                        .unwrap();
                                        out
                                    }
                                    "zstd" => zstd::decode_all(&body[..]).unwrap(),
                                    _ => body.to_vec(),
                                };
                                if path != "/v1/traces" && path != "/v1/metrics" {
                                    st.lock().unwrap().paths.push(path);
                                    return Ok(hyper::Response::builder()
                                        .status(404)
                                        .body(Full::new(Bytes::new()))
                                        .unwrap());
                                }
                                if path == "/v1/metrics" {
                                    let mut s = st.lock().unwrap();
                                    s.paths.push(path);
                                    s.metrics
                                        .push(ExportMetricsServiceRequest::decode(body.as_slice()).unwrap());
                                    let resp = ExportMetricsServiceResponse { partial_success: None };
                                    return Ok::<_, std::convert::Infallible>(
                                        hyper::Response::builder()
                                            .status(200)
                                            .header("content-type", "application/x-protobuf")
                                            .body(Full::new(Bytes::from(resp.encode_to_vec())))
                                            .unwrap(),
                                    );
                                }
                                let answer = {
                                    let mut s = st.lock().unwrap();
                                    s.attempts += 1;
                                    s.paths.push(path);
                                    s.headers.extend(hdrs);
                                    s.script.pop_front().unwrap_or(HttpAnswer::Ok)
                                };
                                let (status, retry, resp) = match answer {
                                    HttpAnswer::Ok => {
                                        (200, None, ExportTraceServiceResponse { partial_success: None })
                                    }
                                    HttpAnswer::Partial(n) => (
                                        200,
                                        None,
                                        ExportTraceServiceResponse {
                                            partial_success: Some(ExportTracePartialSuccess {
                                                rejected_spans: n,
                                                error_message: "scripted".into(),
                                            }),
                                        },
                                    ),
                                    HttpAnswer::Status(s, r) => {
                                        (s, r, ExportTraceServiceResponse { partial_success: None })
                                    }
                                };
                                if status == 200 {
                                    st.lock()
                                        .unwrap()
                                        .received
                                        .push(ExportTraceServiceRequest::decode(body.as_slice()).unwrap());
                                }
                                let mut b = hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/x-protobuf");
                                if let Some(r) = retry {
                                    b = b.header("retry-after", r.to_string());
                                }
                                Ok::<_, std::convert::Infallible>(
                                    b.body(Full::new(Bytes::from(resp.encode_to_vec()))).unwrap(),
                                )
                            }
                        });
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        }
                        None => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
            }
        });
        HttpReceiver { addr, state, _rt: rt }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Every span received, with its resource's service.name.
    pub fn spans(&self) -> Vec<(String, Span)> {
        spans_of(&self.state.lock().unwrap().received)
    }

    /// Every histogram point received, with its resource's service.name and its metric's name.
    pub fn histogram_points(&self) -> Vec<HistogramPoint> {
        histogram_points_of(&self.state.lock().unwrap().metrics)
    }

    pub fn span_count(&self) -> usize {
        let s = self.state.lock().unwrap();
        s.received
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum()
    }

    pub fn attempts(&self) -> u64 {
        self.state.lock().unwrap().attempts
    }

    pub fn paths(&self) -> Vec<String> {
        self.state.lock().unwrap().paths.clone()
    }

    pub fn headers(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().headers.clone()
    }
}

/// The spans of export requests, each with its resource's service.name.
fn spans_of(received: &[ExportTraceServiceRequest]) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for req in received {
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                        Some(s.clone())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for sp in &ss.spans {
                    out.push((service.clone(), sp.clone()));
                }
            }
        }
    }
    out
}

/// A histogram data point as received: the resource's service.name, the metric's name, its
/// attributes as text, and its count.
#[derive(Debug, Clone)]
pub struct HistogramPoint {
    pub service: String,
    pub metric: String,
    pub attributes: std::collections::BTreeMap<String, String>,
    pub count: u64,
    pub bucket_total: u64,
    pub start_ns: u64,
    pub time_ns: u64,
}

fn histogram_points_of(received: &[ExportMetricsServiceRequest]) -> Vec<HistogramPoint> {
    use opentelemetry_proto::tonic::{common::v1::any_value::Value as V, metrics::v1::metric::Data};
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(V::StringValue(s)) => s.clone(),
        Some(V::IntValue(i)) => i.to_string(),
        Some(V::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    };
    let mut out = Vec::new();
    for req in received {
        for rm in &req.resource_metrics {
            let service = rm
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let Some(Data::Histogram(h)) = &m.data else { continue };
                    for p in &h.data_points {
                        out.push(HistogramPoint {
                            service: service.clone(),
                            metric: m.name.clone(),
                            attributes: p
                                .attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), text(&kv.value)))
                                .collect(),
                            count: p.count,
                            bucket_total: p.bucket_counts.iter().sum(),
                            start_ns: p.start_time_unix_nano,
                            time_ns: p.time_unix_nano,
                        });
                    }
                }
            }
        }
    }
    out
}
