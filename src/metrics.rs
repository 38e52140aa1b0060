//! Prometheus metrics (docs/behaviour.md, *Metrics and logs*) and the plain-HTTP endpoint that
//! serves them on `--metrics-listen`.
//!
//! The crate is `prometheus-client`, the Prometheus project's own Rust client
//! (github.com/prometheus/client_rust): typed label sets, no global registry,
//! both the OpenMetrics and the classic 0.0.4 text formats, and no protobuf or
//! `lazy_static` baggage. The older `prometheus` crate (tikv) works too but is
//! maintained less actively and is built around a process-global registry,
//! which makes tests that start several servers in one process share counters.
//!
//! Series (their names are part of the product: dashboards and alerts use them):
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `nestdock_reviews_total` | counter | `mode`, `outcome` |
//! | `nestdock_review_duration_seconds` | histogram | |
//! | `nestdock_inflight_reviews` | gauge | |
//! | `nestdock_cert_reloads_total` | counter | `result` (`success`, `failure`) |
//! | `nestdock_namespace_cache_ready` | gauge (1 or 0) | only with namespace policy on |
//!
//! `outcome` is one of `injected`, `unchanged`, `denied` (the engine's
//! verdicts), `skipped` (not a pod CREATE: another kind, a subresource, an
//! UPDATE; allowed without asking the engine; a high share means the webhook's
//! selectors send it more than it needs) and `error` (no AdmissionReview could
//! be answered: unreadable body, over the size limit, namespace policy
//! unavailable, deadline passed, internal error; the API server applied the
//! webhook's `failurePolicy`). `mode` is the mode the engine applied
//! (`dind`, `dind-rootless`, `dood`, `none`), or `unknown` when the engine did
//! not get to decide (skipped reviews and errors).

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::namespaces::NamespaceSource;
pub use crate::outcome::Outcome;

/// `mode` label value when the engine did not decide a mode.
pub const MODE_UNKNOWN: &str = "unknown";

/// Upper bounds of the latency histogram, in seconds: a review takes tens of
/// microseconds to a few milliseconds; the API server gives up at its
/// `timeoutSeconds` (10 s at most by default).
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReviewLabels {
    mode: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// The server's metrics. Cheap to update from any task; [`Metrics::encode`]
/// renders them for a scrape.
pub struct Metrics {
    registry: Registry,
    reviews: Family<ReviewLabels, Counter>,
    duration: Histogram,
    inflight: Gauge,
    cert_reloads: Family<ReloadLabels, Counter>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("inflight", &self.inflight.get())
            .finish_non_exhaustive()
    }
}

/// Reads the namespace cache's state at scrape time.
#[derive(Debug)]
struct NamespaceCacheCollector(Arc<dyn NamespaceSource>);

impl Collector for NamespaceCacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let gauge = ConstGauge::new(i64::from(self.0.is_ready()));
        let metric = encoder.encode_descriptor(
            "nestdock_namespace_cache_ready",
            "1 once the namespace cache has its first full list (reviews are answered), 0 before",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

impl Metrics {
    /// The metrics of one server; with a namespace cache its readiness is
    /// exported too.
    pub fn new(namespaces: Option<Arc<dyn NamespaceSource>>) -> Metrics {
        let mut registry = Registry::default();
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "nestdock_reviews",
            "Admission reviews handled, by mode applied and outcome",
            reviews.clone(),
        );
        let duration = Histogram::new(DURATION_BUCKETS);
        registry.register_with_unit(
            "nestdock_review_duration",
            "Time from the start of a review's handling to its answer",
            Unit::Seconds,
            duration.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "nestdock_inflight_reviews",
            "Admission reviews being handled now",
            inflight.clone(),
        );
        let cert_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "nestdock_cert_reloads",
            "Serving certificate reloads after the files changed, by result (a failure keeps the previous pair)",
            cert_reloads.clone(),
        );
        // Both results exist from the start, so that `increase()` and alerts
        // see the first failure.
        for result in ["success", "failure"] {
            let _ = cert_reloads.get_or_create(&ReloadLabels { result });
        }
        if let Some(cache) = namespaces {
            registry.register_collector(Box::new(NamespaceCacheCollector(cache)));
        }
        Metrics {
            registry,
            reviews,
            duration,
            inflight,
            cert_reloads,
        }
    }

    /// Counts a review in flight until the guard is dropped (also when the
    /// handler's future is dropped half-way).
    pub fn review_started(self: &Arc<Self>) -> InflightGuard {
        self.inflight.inc();
        InflightGuard(self.clone())
    }

    /// Records a finished review.
    pub fn review_done(&self, mode: &'static str, outcome: Outcome, elapsed: Duration) {
        self.reviews
            .get_or_create(&ReviewLabels {
                mode,
                outcome: outcome.as_str(),
            })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Records a certificate reload that was attempted because the files
    /// changed.
    pub fn cert_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.cert_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// Reviews counted so far with these labels.
    pub fn reviews(&self, mode: &'static str, outcome: Outcome) -> u64 {
        self.reviews
            .get_or_create(&ReviewLabels {
                mode,
                outcome: outcome.as_str(),
            })
            .get()
    }

    /// Reviews being handled now.
    pub fn inflight(&self) -> i64 {
        self.inflight.get()
    }

    /// The exposition and its content type: OpenMetrics when `openmetrics`,
    /// else the classic Prometheus text format 0.0.4.
    pub fn encode(&self, openmetrics: bool) -> Result<(String, &'static str), fmt::Error> {
        let mut out = String::with_capacity(4096);
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
            Ok((out, OPENMETRICS_CONTENT_TYPE))
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
            Ok((
                out,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            ))
        }
    }
}

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// See [`Metrics::review_started`].
pub struct InflightGuard(Arc<Metrics>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

/// Whether a scraper's `Accept` header asks for OpenMetrics (Prometheus does;
/// curl and older agents get the classic format).
fn wants_openmetrics(accept: Option<&HeaderValue>) -> bool {
    accept
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Connections the metrics port serves at once. Scrapers need one or two;
/// the rest is room for connections that never send a request, so that a
/// scrape does not queue behind them (64 idle connections used to delay one
/// by 9.5 s: every slot taken until their header timeout ran out).
pub const METRICS_CONNECTIONS: usize = 1024;
/// A scrape's request head must arrive within this (or the server's header
/// timeout when shorter), counted from the connection's start and, on a
/// keep-alive connection, from the end of the previous response. A scraper
/// sends its request as soon as it connects.
pub const METRICS_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `GET /metrics` over plain HTTP/1.1 on `listener` until `stop` turns
/// true. Nothing else is served there: the webhook port stays the only one
/// that takes reviews.
///
/// hyper's `header_read_timeout` starts when the connection's first request
/// head is awaited, i.e. at once for a new connection (checked against
/// hyper 1.12), so an idle connection holds one of [`METRICS_CONNECTIONS`]
/// slots for `header_timeout` at most.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&metrics, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}

fn answer(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            format!(
                "not found: {} (served here: GET /metrics)\n",
                req.uri().path()
            ),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {} is not allowed on /metrics: use GET\n",
                req.method()
            ),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match metrics.encode(wants_openmetrics(req.headers().get(header::ACCEPT))) {
        Ok((body, content_type)) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the metrics: {e}\n"),
            )
        }
    }
}

/// Binds the metrics listener, naming the address when it cannot.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics (--metrics-listen)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_follow_the_spec() {
        let metrics = Arc::new(Metrics::new(None));
        {
            let _guard = metrics.review_started();
            assert_eq!(metrics.inflight(), 1);
        }
        metrics.review_done("dind", Outcome::Injected, Duration::from_micros(300));
        metrics.review_done(MODE_UNKNOWN, Outcome::Error, Duration::from_millis(2));
        metrics.cert_reload(true);
        let (text, content_type) = metrics.encode(false).unwrap();
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        for line in [
            "nestdock_reviews_total{mode=\"dind\",outcome=\"injected\"} 1",
            "nestdock_reviews_total{mode=\"unknown\",outcome=\"error\"} 1",
            "nestdock_review_duration_seconds_count 2",
            "nestdock_review_duration_seconds_bucket{le=\"0.0005\"} 1",
            "nestdock_inflight_reviews 0",
            "nestdock_cert_reloads_total{result=\"success\"} 1",
            "nestdock_cert_reloads_total{result=\"failure\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("namespace_cache"), "{text}");
        let (text, content_type) = metrics.encode(true).unwrap();
        assert!(content_type.starts_with("application/openmetrics-text"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn accept_header_chooses_the_format() {
        let prometheus = HeaderValue::from_static(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        );
        assert!(wants_openmetrics(Some(&prometheus)));
        assert!(!wants_openmetrics(Some(&HeaderValue::from_static("*/*"))));
        assert!(!wants_openmetrics(None));
    }

    #[tokio::test]
    async fn namespace_cache_readiness_is_read_at_scrape_time() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // An API server that is not there: the cache never syncs.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let metrics = Metrics::new(Some(Arc::new(crate::namespaces::NamespaceCache::start(
            client,
        ))));
        let (text, _) = metrics.encode(false).unwrap();
        assert!(
            text.lines()
                .any(|l| l == "nestdock_namespace_cache_ready 0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE nestdock_namespace_cache_ready gauge"),
            "{text}"
        );
    }
}
