//! The OTLP/gRPC exporter against an in-process receiver that fails, stalls, throttles and
//! partially rejects: retried or not per the OTLP specification, with exact accounting.
//! No root needed: spans are made up, the network is loopback.
mod receiver;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use receiver::{Answer, Receiver};
use tonic::Code;
use tracewire::{
    correlate::span::{Kind, Link, SpanRecord, Value},
    export::{
        Accounting, DropReason,
        otlp::{OtlpConfig, OtlpExporter},
    },
    metadata::{ProcessInfo, Resources},
};

fn spans(n: usize) -> Vec<SpanRecord> {
    (0..n)
        .map(|i| SpanRecord {
            trace_id: [1; 16],
            span_id: (i as u64 + 1).to_be_bytes(),
            parent_id: None,
            parent_remote: false,
            flags: 1,
            trace_state: None,
            kind: Kind::Server,
            name: "GET".into(),
            start_ns: 1_000,
            end_ns: 2_000,
            pid: 42,
            tid: 42,
            error: false,
            attributes: vec![("http.request.method", Value::Str("GET".into()))],
            link: Link::None,
            links: Vec::new(),
        })
        .collect()
}

fn resources() -> Resources {
    let mut r = Resources::new(4);
    r.insert(ProcessInfo { service_name: "svc".into(), attributes: vec![], pid: 42 });
    r
}

/// Exports `n` spans in batches of `batch` to the gRPC receiver and shuts down; returns the
/// accounting.
fn export(rx: &Receiver, n: usize, batch: usize, tweak: impl FnOnce(&mut OtlpConfig)) -> Accounting {
    export_to(rx.endpoint(), tracewire::export::otlp::Protocol::Grpc, n, batch, tweak)
}

/// Exports `n` spans in batches of `batch` and shuts down, checking that the accounting
/// reconciles; returns it.
fn export_to(
    endpoint: String,
    protocol: tracewire::export::otlp::Protocol,
    n: usize,
    batch: usize,
    tweak: impl FnOnce(&mut OtlpConfig),
) -> Accounting {
    let acct = Arc::new(Mutex::new(Accounting::default()));
    let mut cfg = OtlpConfig {
        endpoint,
        protocol,
        batch_size: batch,
        backoff_base: Duration::from_millis(10),
        timeout: Duration::from_secs(2),
        max_retry_elapsed: Duration::from_secs(5),
        ..OtlpConfig::default()
    };
    tweak(&mut cfg);
    let mut exp = OtlpExporter::start(cfg, Arc::clone(&acct)).unwrap();
    let mut res = resources();
    acct.lock().unwrap().produced += n as u64;
    exp.submit(spans(n), &mut res);
    exp.shutdown(&mut res, Duration::from_secs(10));
    let a = acct.lock().unwrap().clone();
    assert_eq!(a.produced, a.exported + a.dropped_total(), "accounting does not reconcile: {a:?}");
    a
}

#[test]
fn all_spans_arrive_when_the_receiver_is_healthy() {
    let rx = Receiver::start(vec![]);
    let a = export(&rx, 1000, 256, |c| c.headers = vec![("x-api-key".into(), "k1".into())]);
    assert_eq!(a.exported, 1000);
    assert_eq!(rx.spans().len(), 1000);
    assert_eq!(rx.attempts(), 4);
    assert!(rx.headers().contains(&("x-api-key".into(), "k1".into())));
}

#[test]
fn retryable_codes_are_retried_until_success() {
    for code in [
        Code::Unavailable,
        Code::Cancelled,
        Code::DeadlineExceeded,
        Code::Aborted,
        Code::OutOfRange,
        Code::DataLoss,
    ] {
        let rx = Receiver::start(vec![Answer::Fail(code, None), Answer::Fail(code, None)]);
        let a = export(&rx, 10, 10, |_| {});
        assert_eq!(a.exported, 10, "{code:?}: {a:?}");
        assert_eq!(a.retries, 2, "{code:?}");
        assert_eq!(rx.attempts(), 3);
    }
}

#[test]
fn non_retryable_codes_drop_at_once() {
    for code in [
        Code::InvalidArgument,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::Unimplemented,
        Code::Internal,
        Code::NotFound,
        Code::ResourceExhausted, // without RetryInfo
    ] {
        let rx = Receiver::start(vec![Answer::Fail(code, None)]);
        let a = export(&rx, 7, 7, |_| {});
        assert_eq!(a.exported, 0, "{code:?}");
        assert_eq!(a.dropped(DropReason::Rejected), 7, "{code:?}");
        assert_eq!(a.retries, 0, "{code:?}");
        assert_eq!(rx.attempts(), 1, "{code:?}");
    }
}

#[test]
fn throttling_with_retry_info_waits_as_told() {
    let rx = Receiver::start(vec![Answer::Fail(Code::ResourceExhausted, Some(Duration::from_millis(300)))]);
    let start = Instant::now();
    let a = export(&rx, 5, 5, |_| {});
    assert_eq!(a.exported, 5);
    assert_eq!(a.retries, 1);
    assert!(start.elapsed() >= Duration::from_millis(300), "retried before the server's delay");
}

#[test]
fn partial_success_counts_rejected_spans_and_is_not_retried() {
    let rx = Receiver::start(vec![Answer::Partial(3)]);
    let a = export(&rx, 10, 10, |_| {});
    assert_eq!(a.exported, 7);
    assert_eq!(a.dropped(DropReason::Rejected), 3);
    assert_eq!(rx.attempts(), 1);
}

#[test]
fn retries_give_up_after_the_budget() {
    let script = vec![Answer::Fail(Code::Unavailable, None); 1000];
    let rx = Receiver::start(script);
    let a = export(&rx, 4, 4, |c| c.max_retry_elapsed = Duration::from_millis(300));
    assert_eq!(a.exported, 0);
    assert_eq!(a.dropped(DropReason::RetryExhausted), 4);
    assert!(a.retries >= 1);
}

#[test]
fn a_stalled_receiver_times_out_and_is_retried() {
    let rx = Receiver::start(vec![Answer::Stall(Duration::from_secs(3))]);
    let a = export(&rx, 3, 3, |c| c.timeout = Duration::from_millis(200));
    assert_eq!(a.exported, 3, "{a:?}");
    assert!(a.retries >= 1);
}

#[test]
fn a_receiver_that_is_down_loses_spans_counted_not_silently() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let acct = Arc::new(Mutex::new(Accounting::default()));
    let cfg = OtlpConfig {
        endpoint: format!("http://127.0.0.1:{port}"),
        batch_size: 5,
        backoff_base: Duration::from_millis(10),
        max_retry_elapsed: Duration::from_millis(200),
        timeout: Duration::from_millis(200),
        ..OtlpConfig::default()
    };
    let mut exp = OtlpExporter::start(cfg, Arc::clone(&acct)).unwrap();
    let mut res = resources();
    acct.lock().unwrap().produced += 5;
    exp.submit(spans(5), &mut res);
    exp.shutdown(&mut res, Duration::from_secs(5));
    let a = acct.lock().unwrap().clone();
    assert_eq!(a.exported, 0);
    assert_eq!(a.dropped_total(), 5);
    assert!(a.last_error.is_some());
}

#[test]
fn compressed_requests_arrive() {
    for c in ["gzip", "zstd"] {
        let rx = Receiver::start(vec![]);
        let a = export(&rx, 50, 50, |cfg| cfg.compression = Some(c.into()));
        assert_eq!(a.exported, 50, "{c}");
        assert_eq!(rx.spans().len(), 50);
    }
}

#[test]
fn a_full_queue_drops_and_counts() {
    // The receiver stalls; the queue holds one request; the rest are dropped as queue_full.
    let rx = Receiver::start(vec![Answer::Stall(Duration::from_millis(500)); 4]);
    let acct = Arc::new(Mutex::new(Accounting::default()));
    let cfg = OtlpConfig {
        endpoint: rx.endpoint(),
        batch_size: 10,
        queue_requests: 1,
        concurrency: 1,
        ..OtlpConfig::default()
    };
    let mut exp = OtlpExporter::start(cfg, Arc::clone(&acct)).unwrap();
    let mut res = resources();
    acct.lock().unwrap().produced += 100;
    exp.submit(spans(100), &mut res);
    exp.shutdown(&mut res, Duration::from_secs(10));
    let a = acct.lock().unwrap().clone();
    assert!(a.dropped(DropReason::QueueFull) >= 70, "{a:?}");
    assert_eq!(a.produced, a.exported + a.dropped_total(), "{a:?}");
    assert_eq!(rx.spans().len() as u64, a.exported);
}

// --- OTLP/HTTP (protobuf) ---------------------------------------------------------------------

use receiver::{HttpAnswer, HttpReceiver};
use tracewire::export::otlp::Protocol;

fn export_http(rx: &HttpReceiver, n: usize, tweak: impl FnOnce(&mut OtlpConfig)) -> Accounting {
    export_to(rx.url(), Protocol::HttpProtobuf, n, n, tweak)
}

#[test]
fn http_protobuf_posts_to_v1_traces_with_gzip_and_headers() {
    let rx = HttpReceiver::start(vec![]);
    let a = export_http(&rx, 40, |c| {
        c.compression = Some("gzip".into());
        c.headers = vec![("authorization".into(), "Bearer t".into())];
    });
    assert_eq!(a.exported, 40);
    assert_eq!(rx.span_count(), 40);
    assert_eq!(rx.paths(), vec!["/v1/traces".to_string()]);
    let h = rx.headers();
    assert!(h.contains(&("content-type".into(), "application/x-protobuf".into())));
    assert!(h.contains(&("content-encoding".into(), "gzip".into())));
    assert!(h.contains(&("authorization".into(), "Bearer t".into())));
}

#[test]
fn http_retryable_statuses_are_retried_and_retry_after_is_honoured() {
    for status in [429u16, 502, 503, 504] {
        let rx = HttpReceiver::start(vec![HttpAnswer::Status(status, None)]);
        let a = export_http(&rx, 5, |_| {});
        assert_eq!(a.exported, 5, "{status}");
        assert_eq!(a.retries, 1, "{status}");
    }
    let rx = HttpReceiver::start(vec![HttpAnswer::Status(429, Some(1))]);
    let start = Instant::now();
    let a = export_http(&rx, 5, |_| {});
    assert_eq!(a.exported, 5);
    assert!(start.elapsed() >= Duration::from_secs(1), "retried before Retry-After");
}

#[test]
fn http_other_statuses_drop_at_once() {
    for status in [400u16, 401, 403, 404, 413, 500] {
        let rx = HttpReceiver::start(vec![HttpAnswer::Status(status, None)]);
        let a = export_http(&rx, 6, |_| {});
        assert_eq!(a.exported, 0, "{status}");
        assert_eq!(a.dropped(DropReason::Rejected), 6, "{status}");
        assert_eq!(rx.attempts(), 1, "{status}");
    }
}

#[test]
fn http_partial_success_is_counted() {
    let rx = HttpReceiver::start(vec![HttpAnswer::Partial(2)]);
    let a = export_http(&rx, 9, |_| {});
    assert_eq!(a.exported, 7);
    assert_eq!(a.dropped(DropReason::Rejected), 2);
}

// --- TLS ------------------------------------------------------------------------------------------

#[test]
fn grpc_over_tls_trusts_the_configured_ca_and_refuses_others() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let dir = std::env::temp_dir().join(format!("tracewire-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &cert_pem).unwrap();
    let rx = Receiver::start_tls(vec![], &cert_pem, &key_pem);
    let endpoint = format!("https://localhost:{}", rx.addr.port());

    let a = export(&rx, 20, 20, |c| {
        c.endpoint = endpoint.clone();
        c.tls.ca = Some(ca.clone());
    });
    assert_eq!(a.exported, 20, "{a:?}");
    assert_eq!(rx.spans().len(), 20);

    // Without the CA the server's certificate is not trusted: nothing is sent, all counted.
    let a = export(&rx, 5, 5, |c| {
        c.endpoint = endpoint.clone();
        c.max_retry_elapsed = Duration::from_millis(300);
    });
    assert_eq!(a.exported, 0);
    assert_eq!(a.dropped_total(), 5);
    assert_eq!(rx.spans().len(), 20);

    // A missing certificate file is an error at start.
    let acct = Arc::new(Mutex::new(Accounting::default()));
    let cfg = OtlpConfig {
        endpoint,
        tls: tracewire::export::otlp::TlsFiles { ca: Some(dir.join("missing.pem")), ..Default::default() },
        ..OtlpConfig::default()
    };
    assert!(OtlpExporter::start(cfg, acct).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn http_over_tls_trusts_the_configured_ca() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let dir = std::env::temp_dir().join(format!("tracewire-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &cert_pem).unwrap();
    let rx = HttpReceiver::start_tls(vec![], &cert_pem, &key_pem);
    let url = format!("https://localhost:{}/v1/traces", rx.addr.port());
    let a = export_http(&rx, 12, |c| {
        c.endpoint = url.clone();
        c.tls.ca = Some(ca.clone());
    });
    assert_eq!(a.exported, 12, "{a:?}");
    assert_eq!(rx.span_count(), 12);
    let a = export_http(&rx, 3, |c| {
        c.endpoint = url.clone();
        c.max_retry_elapsed = Duration::from_millis(300);
    });
    assert_eq!(a.exported, 0, "an untrusted certificate must not be accepted");
    assert_eq!(rx.span_count(), 12);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn http_zstd_bodies_arrive() {
    let rx = HttpReceiver::start(vec![]);
    let a = export_http(&rx, 30, |c| c.compression = Some("zstd".into()));
    assert_eq!(a.exported, 30);
    assert_eq!(rx.span_count(), 30);
    assert!(rx.headers().contains(&("content-encoding".into(), "zstd".into())));
}

// --- Request metrics ----------------------------------------------------------------------------

/// Request metrics of `spans`, exported once next to them through `protocol`; returns the
/// accounting (which must reconcile for both signals).
fn export_metrics(
    endpoint: String,
    protocol: Protocol,
    metrics_endpoint: Option<String>,
    spans: &[SpanRecord],
) -> Accounting {
    use tracewire::export::request_metrics::RequestMetrics;
    let acct = Arc::new(Mutex::new(Accounting::default()));
    let cfg = OtlpConfig {
        endpoint,
        protocol,
        metrics_endpoint,
        backoff_base: Duration::from_millis(10),
        timeout: Duration::from_secs(1),
        max_retry_elapsed: Duration::from_secs(1),
        ..OtlpConfig::default()
    };
    let mut exp = OtlpExporter::start(cfg, Arc::clone(&acct)).unwrap();
    let mut res = resources();
    let mut m = RequestMetrics::new(100, Duration::from_secs(60));
    for s in spans {
        m.record(s, &mut |pid| res.get(pid));
    }
    let (request, points) = m.otlp(3_000).expect("points");
    exp.submit_metrics(&request, points);
    acct.lock().unwrap().produced += spans.len() as u64;
    exp.submit(spans.to_vec(), &mut res);
    exp.shutdown(&mut res, Duration::from_secs(5));
    let a = acct.lock().unwrap().clone();
    assert_eq!(a.produced, a.exported + a.dropped_total(), "{a:?}");
    assert_eq!(a.points.produced, a.points.exported + a.points.dropped, "{a:?}");
    a
}

#[test]
fn request_metrics_go_to_the_metrics_service_and_to_v1_metrics_next_to_the_spans() {
    let mut spans = spans(7);
    spans[0].attributes.push(("http.response.status_code", Value::Int(500)));
    let rx = Receiver::start(vec![]);
    let a = export_metrics(rx.endpoint(), Protocol::Grpc, Some(rx.endpoint()), &spans);
    // Two histogram points (by status), and the service graph's edge from `user` (the spans
    // came with no context): its two counters and its server-side histogram.
    assert_eq!((a.exported, a.points.exported, a.points.dropped), (7, 2 + 3, 0), "{a:?}");
    let requests = |points: Vec<receiver::HistogramPoint>| -> Vec<receiver::HistogramPoint> {
        points.into_iter().filter(|p| p.metric == "http.server.request.duration").collect()
    };
    let mut counts: Vec<u64> = requests(rx.histogram_points()).iter().map(|p| p.count).collect();
    counts.sort_unstable();
    assert_eq!(counts, [1, 6]);
    assert!(requests(rx.histogram_points()).iter().all(|p| p.service == "svc"));
    let graph: Vec<_> = rx
        .histogram_points()
        .into_iter()
        .filter(|p| p.metric == "traces_service_graph_request_server_seconds")
        .collect();
    assert_eq!(graph.iter().map(|p| p.count).collect::<Vec<_>>(), [7], "{graph:?}");

    let rx = HttpReceiver::start(vec![]);
    let metrics_url = rx.url().replace("/v1/traces", "/v1/metrics");
    let a = export_metrics(rx.url(), Protocol::HttpProtobuf, Some(metrics_url), &spans);
    assert_eq!((a.exported, a.points.exported), (7, 2 + 3), "{a:?}");
    assert_eq!(requests(rx.histogram_points()).iter().map(|p| p.count).sum::<u64>(), 7);
    assert_eq!(rx.span_count(), 7, "metrics are not read as spans");
}

#[test]
fn request_metrics_that_cannot_be_sent_are_counted_apart_from_spans() {
    // A metrics endpoint that answers 404: not retryable, the points are dropped; the spans,
    // sent to their own path, are all exported.
    let rx = HttpReceiver::start(vec![]);
    let nowhere = rx.url().replace("/v1/traces", "/nowhere");
    let a = export_metrics(rx.url(), Protocol::HttpProtobuf, Some(nowhere), &spans(3));
    assert_eq!((a.exported, a.dropped_total()), (3, 0), "{a:?}");
    assert_eq!((a.points.exported, a.points.dropped), (0, 1 + 3), "{a:?}");
    assert!(a.points.last_error.as_deref().is_some_and(|e| e.contains("404")), "{a:?}");
    // No metrics endpoint: nothing is produced.
    let a = export_metrics(rx.url(), Protocol::HttpProtobuf, None, &spans(3));
    assert_eq!(a.points, Default::default());
}
