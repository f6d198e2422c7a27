//! The agent's own health and counters over HTTP, for a liveness probe and a Prometheus scrape:
//! `GET /healthz` answers 200 while the capture loop turns and 503 once it has stalled, and
//! `GET /metrics` serves the counters in the Prometheus text format. The server runs on its own
//! thread; the capture loop beats, and renders a page when a scrape asks for one (a page with
//! the request metrics at their cap is ~12 MB, too much to render every second for nobody).
use std::{
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;

/// A capture loop that has not turned for this long is stalled.
pub const STALL: Duration = Duration::from_secs(15);

/// Longest a scrape waits for the capture loop to render a fresh page; a stalled loop's last
/// page is served after it.
const PAGE_WAIT: Duration = Duration::from_secs(2);

/// What the server shows, written by the capture loop.
#[derive(Default)]
pub struct Metrics {
    page: Mutex<String>,
    /// When the capture loop last turned (ms since the epoch).
    beat_ms: AtomicU64,
    /// A scrape waits for a fresh page.
    wanted: AtomicBool,
    /// Pages published so far.
    published: AtomicU64,
    fresh: tokio::sync::Notify,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Metrics {
    /// The capture loop turned.
    pub fn beat(&self) {
        self.beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether a scrape is waiting for a page (the capture loop renders one only then).
    pub fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Acquire)
    }

    /// Replaces the page `/metrics` serves, and hands it to the scrapes waiting.
    pub fn publish(&self, page: String) {
        *self.page.lock().unwrap_or_else(|e| e.into_inner()) = page;
        self.wanted.store(false, Ordering::Release);
        self.published.fetch_add(1, Ordering::AcqRel);
        self.fresh.notify_waiters();
    }

    /// A page rendered after this call, or the last one if none comes within [`PAGE_WAIT`].
    async fn fresh_page(&self) -> String {
        let seen = self.published.load(Ordering::Acquire);
        // Created before asking: a publish from now on completes it.
        let notified = self.fresh.notified();
        self.wanted.store(true, Ordering::Release);
        if self.published.load(Ordering::Acquire) == seen {
            let _ = tokio::time::timeout(PAGE_WAIT, notified).await;
        }
        self.page.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn healthy(&self) -> bool {
        now_ms().saturating_sub(self.beat_ms.load(Ordering::Relaxed)) < STALL.as_millis() as u64
    }

    async fn answer(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, kind, body) = match path {
            "/metrics" => {
                (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.fresh_page().await)
            }
            "/healthz" if self.healthy() => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            "/healthz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("the capture loop has not turned for {} s\n", STALL.as_secs()),
            ),
            _ => (StatusCode::NOT_FOUND, "text/plain", "GET /metrics or /healthz\n".to_string()),
        };
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(kind) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    }
}

/// Binds `addr` (an error names it) and serves `metrics` from a thread of its own. Returns the
/// bound address.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let m = Arc::clone(&metrics);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let m = Arc::clone(&m);
                        async move { Ok::<_, Infallible>(m.answer(req.uri().path()).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    })?;
    Ok(bound)
}

/// A page in the Prometheus text format, one family at a time.
#[derive(Default)]
pub struct Page {
    text: String,
}

impl Page {
    /// Starts a family: `kind` is counter or gauge.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// A sample of the current family; `labels` are (name, value) pairs.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.text, "{k}=\"{v}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
        self
    }

    /// A family whose samples differ by one label: (`label` value, sample value) pairs.
    pub fn by_label<'a>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> &mut Self {
        self.family(name, kind, help);
        for (value, v) in samples {
            self.sample(name, &[(label, value)], v);
        }
        self
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_the_text_format() {
        let mut p = Page::default();
        p.single("tracewire_spans_total", "counter", "Spans built.", 3.0);
        p.family("tracewire_dropped_total", "counter", "Drops.").sample(
            "tracewire_dropped_total",
            &[("reason", "queue\"full")],
            1.0,
        );
        let text = p.finish();
        assert_eq!(
            text,
            "# HELP tracewire_spans_total Spans built.\n# TYPE tracewire_spans_total counter\n\
             tracewire_spans_total 3\n# HELP tracewire_dropped_total Drops.\n\
             # TYPE tracewire_dropped_total counter\ntracewire_dropped_total{reason=\"queue\\\"full\"} 1\n"
        );
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
    }

    #[test]
    fn health_follows_the_beat() {
        let m = Metrics::default();
        assert_eq!(block_on(m.answer("/healthz")).status(), StatusCode::SERVICE_UNAVAILABLE, "never turned");
        m.beat();
        assert_eq!(block_on(m.answer("/healthz")).status(), StatusCode::OK);
        assert_eq!(block_on(m.answer("/nope")).status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_scrape_gets_the_page_rendered_for_it() {
        let m = Arc::new(Metrics::default());
        m.publish("old\n".into());
        assert!(!m.wanted());
        let renderer = {
            let m = Arc::clone(&m);
            // The capture loop: renders once a scrape wants a page.
            std::thread::spawn(move || {
                while !m.wanted() {
                    std::thread::yield_now();
                }
                m.publish("fresh\n".into());
            })
        };
        let page = block_on(m.fresh_page());
        renderer.join().expect("renderer");
        assert_eq!(page, "fresh\n");
        assert!(!m.wanted(), "served");
    }
}
