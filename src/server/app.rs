//! What the handlers share ([`App`]), the small handlers (`/healthz`,
//! `/readyz`, 404, 405) and the one error type of the request path
//! ([`Failure`]: an HTTP status and a message, answered as plain text).
//! The route table is [`super::router`]; `/mutate` is [`super::review`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::budget::Budget;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::namespaces::NamespaceSource;

/// Whether `/readyz` answers 200. Starts ready; shutdown turns it off (the
/// namespace source has its own say, see [`readyz`]).
#[derive(Debug, Clone)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the handlers share: built once per server (or per test).
pub struct App {
    pub(super) config: Config,
    pub(super) max_body_bytes: usize,
    pub(super) budget: Budget,
    /// Large reviews decided at once on the blocking pool: one per CPU.
    pub(super) offloaded: Arc<Semaphore>,
    pub(super) body_read: Duration,
    pub(super) request_timeout: Duration,
    pub(super) ready: Readiness,
    pub(super) namespaces: Option<Arc<dyn NamespaceSource>>,
    pub(super) metrics: Arc<Metrics>,
}

/// What an [`App`] is built from.
pub struct AppOptions {
    pub config: Config,
    /// Namespace labels for policy; `None` turns namespace policy off.
    pub namespaces: Option<Arc<dyn NamespaceSource>>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Memory budget of the reviews in flight (see [`Budget`]).
    pub max_inflight_bytes: usize,
    /// From the handler's start to the last byte of the request body.
    pub body_read: Duration,
    /// A review's deadline (also bounded by the API server's `?timeout=`).
    pub request_timeout: Duration,
}

impl App {
    pub fn new(opts: AppOptions) -> Arc<App> {
        let metrics = Arc::new(Metrics::new(opts.namespaces.clone()));
        Arc::new(App {
            config: opts.config,
            max_body_bytes: opts.max_body_bytes,
            budget: super::budget::budget(opts.max_inflight_bytes),
            offloaded: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            )),
            body_read: opts.body_read,
            request_timeout: opts.request_timeout,
            ready: Readiness(Arc::new(AtomicBool::new(true))),
            namespaces: opts.namespaces,
            metrics,
        })
    }

    /// The handle that flips `/readyz`.
    pub fn readiness(&self) -> Readiness {
        self.ready.clone()
    }

    /// The metrics the handlers update.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

pub(super) fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut body = message.into();
    body.push('\n');
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

pub(super) async fn healthz() -> Response {
    text(StatusCode::OK, "ok")
}

/// Ready when not shutting down and, with namespace policy on, once the
/// namespace cache has its first full list.
pub(super) async fn readyz(State(app): State<Arc<App>>) -> Response {
    if !app.ready.is_ready() {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down")
    } else if app.namespaces.as_ref().is_some_and(|n| !n.is_ready()) {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the namespace cache has not finished its first list",
        )
    } else {
        text(StatusCode::OK, "ok")
    }
}

pub(super) async fn not_found(method: Method, uri: Uri) -> Response {
    tracing::info!(%method, path = uri.path(), status = 404, "no such path");
    text(
        StatusCode::NOT_FOUND,
        format!(
            "not found: {} (served: POST /mutate, GET /healthz, GET /readyz)",
            uri.path()
        ),
    )
}

pub(super) async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    tracing::info!(%method, path = uri.path(), status = 405, "method not allowed");
    let allowed = if uri.path() == "/mutate" {
        "POST"
    } else {
        "GET"
    };
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {method} is not allowed on {}: use {allowed}",
            uri.path()
        ),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    response
}

/// A request answered with an HTTP error instead of an AdmissionReview: a
/// body that is not a readable review (there is no uid to echo), over the
/// size limit, too slow, over the memory budget, past the deadline, a
/// namespace that cannot be looked up, an internal error. The status travels
/// typed from where the failure is found to the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    pub(super) status: StatusCode,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// A bug (a panic) caught at the review's boundary.
    pub(super) fn internal(what: &str) -> Failure {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error while handling the review: {what}"),
        )
    }
}

impl From<crate::admission::ReviewError> for Failure {
    fn from(e: crate::admission::ReviewError) -> Failure {
        Failure::new(e.status, e.message)
    }
}

impl From<super::budget::OverBudget> for Failure {
    fn from(e: super::budget::OverBudget) -> Failure {
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        text(self.status, self.message)
    }
}
