//! `POST /mutate`: one review, from body to answer (docs/architecture.md,
//! *The request path*). In order: the deadline (ours, or nine tenths of the
//! API server's `?timeout=`), the body within the size limit and the memory
//! budget ([`super::body`]), the review parsed ([`crate::admission`]), the
//! namespace's labels from the [`NamespaceSource`], the engine, the response.
//! Whatever happens, one log line and one count in the metrics, written in
//! one place ([`Pending::finish`]) from one [`Outcome`].
//!
//! The review's identity (uid, namespace, object name, kind, operation) lives on a
//! `tracing` span named `review`, made as soon as the body is parsed, so that
//! every line logged while the review is handled (a namespace fetched
//! directly, say) carries it, and the closing line adds only what became of
//! the review. The span is made with its fields rather than recorded into
//! one made earlier: six `record` calls cost the request path about 2 % more
//! instructions (bench/callgrind.sh).
//!
//! Panics: the engine is pure code on untrusted input, so a bug there must
//! cost one review (HTTP 500, which the webhook's `failurePolicy` handles),
//! not the connection. The one boundary is around the whole review
//! ([`CatchPanic`]); a large review decided on the blocking pool comes back
//! through its join handle, where a panic is the same HTTP 500.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::{Instrument as _, Span};

use super::app::{App, Failure};
use super::body::read_body;
use super::budget::{Charge, BUDGET_WAIT};
use crate::admission::{self, Summary};
use crate::engine::{Context, NamespacePolicy};
use crate::metrics::{Outcome, MODE_UNKNOWN};
use crate::mode::Mode;

/// Bodies above this are parsed and decided on tokio's blocking pool, not
/// on a worker: the worker stays free for `/healthz` and small reviews (one
/// review never holds a worker for more than milliseconds). The API
/// server's reviews are a few KiB and stay on the fast path.
const OFFLOAD_BYTES: usize = 128 * 1024;

/// An answered review: the AdmissionReview's bytes and what the log line
/// and the metrics say of it.
struct Answered {
    body: Bytes,
    mode: Option<Mode>,
    outcome: Outcome,
    /// The denial's status code, when denied.
    code: Option<u16>,
}

/// `POST /mutate`: one AdmissionReview, one log line, one count.
pub(super) async fn mutate(State(app): State<Arc<App>>, request: Request) -> Response {
    let mut pending = Pending::new(&app);
    let deadline = review_deadline(app.request_timeout, request.uri().query());
    let handled = tokio::time::timeout(
        deadline,
        CatchPanic(Box::pin(review(
            app.clone(),
            request,
            deadline,
            pending.span.clone(),
        ))),
    )
    .await;
    let answer = match handled {
        Ok(Ok(answer)) => answer,
        Ok(Err(panic)) => Err(Failure::internal(&panic)),
        Err(_) => Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the review was not answered within its deadline of {:.1} s \
                 (serve --request-timeout, or nine tenths of the API server's timeout)",
                deadline.as_secs_f64()
            ),
        )),
    };
    pending.finish(answer)
}

/// A review being handled: counted in flight now, and logged and counted
/// once when it ends: by [`Pending::finish`], or, when the handler's
/// future is dropped first (the client closed the connection or reset the
/// stream, which the API server does when its own timeout passes), as
/// abandoned.
struct Pending<'a> {
    app: &'a App,
    /// The review's span once its body is parsed ([`Span::none`] before):
    /// shared with the handler, which may run on a blocking thread and may
    /// be cut short by the deadline.
    span: SpanSlot,
    started: Instant,
    _inflight: crate::metrics::InflightGuard,
    done: bool,
}

impl<'a> Pending<'a> {
    fn new(app: &'a Arc<App>) -> Pending<'a> {
        Pending {
            _inflight: app.metrics.review_started(),
            app,
            span: SpanSlot::default(),
            started: Instant::now(),
            done: false,
        }
    }

    /// Logs the review's line, counts it and makes its response.
    fn finish(&mut self, answer: Result<Answered, Failure>) -> Response {
        self.done = true;
        let micros = micros(self.started);
        let span = self.span.get();
        let _entered = span.enter();
        let (mode, outcome, response) = match answer {
            Ok(a) => {
                let mode = a.mode.map_or(MODE_UNKNOWN, Mode::as_str);
                tracing::info!(mode = %mode, outcome = %a.outcome, code = a.code, micros, "review");
                let response = (
                    StatusCode::OK,
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    a.body,
                )
                    .into_response();
                (mode, a.outcome, response)
            }
            Err(f) => {
                let (status, error) = (f.status.as_u16(), f.message.as_str());
                let mode = MODE_UNKNOWN;
                let outcome = Outcome::Error;
                if f.status.is_server_error() {
                    tracing::error!(mode = %mode, %outcome, status, error = %error, micros, "review");
                } else {
                    tracing::warn!(mode = %mode, %outcome, status, error = %error, micros, "review");
                }
                (mode, outcome, f.into_response())
            }
        };
        self.app
            .metrics
            .review_done(mode, outcome, self.started.elapsed());
        response
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let span = self.span.get();
        let _entered = span.enter();
        tracing::warn!(
            mode = %MODE_UNKNOWN,
            outcome = %Outcome::Error,
            micros = micros(self.started),
            "review abandoned: the client went away before the answer"
        );
        self.app
            .metrics
            .review_done(MODE_UNKNOWN, Outcome::Error, self.started.elapsed());
    }
}

/// Where the review's span goes once it is made.
#[derive(Clone, Default)]
struct SpanSlot(Arc<Mutex<Option<Span>>>);

impl SpanSlot {
    fn set(&self, span: &Span) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(span.clone());
    }

    fn get(&self) -> Span {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(Span::none)
    }
}

/// The review's span, with its identity.
fn review_span(s: &Summary) -> Span {
    tracing::info_span!(
        "review",
        uid = %s.uid,
        namespace = %s.namespace,
        // Not `name`: in JSON logs the span's own name sits beside its fields.
        object = %s.name,
        kind = %s.kind,
        operation = %s.operation,
        dry_run = s.dry_run,
    )
}

/// Reads one review's body within the budget, then decides and answers it
/// ([`decide`]: on the worker for a small body, on the blocking pool for a
/// large one).
async fn review(
    app: Arc<App>,
    request: Request,
    deadline: Duration,
    slot: SpanSlot,
) -> Result<Answered, Failure> {
    if let Some(problem) = content_type_problem(request.headers()) {
        return Err(Failure::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, problem));
    }
    // Waiting for the budget leaves time to answer within the deadline.
    let wait = BUDGET_WAIT.min(deadline / 2);
    let drain = request.version() < axum::http::Version::HTTP_2;
    let (body, mut charge) = read_body(
        request.into_body(),
        app.max_body_bytes,
        app.body_read,
        drain,
        &app.budget,
        wait,
    )
    .await?;
    // Parsing and deciding hold the typed pod, the patch and the response.
    charge.add(
        app.budget
            .charge(super::budget::processing(&app.budget, body.len()), wait)
            .await?,
    );
    if body.len() <= OFFLOAD_BYTES {
        return decide(&app, body, charge, &slot).await;
    }
    // One at a time per CPU: more would only share the same cores (and
    // start more allocator arenas). Waiting here counts against the
    // review's deadline.
    let Ok(gate) = app.offloaded.clone().acquire_owned().await else {
        return Err(Failure::internal("the blocking pool's gate is closed"));
    };
    // The blocking thread drives the namespace lookup (if any) through the
    // runtime's handle; the charge and the slot go with it and come back when
    // it is done, also when the deadline has answered the client first.
    let handle = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        let _gate = gate;
        handle.block_on(decide(&app, body, charge, &slot))
    });
    match task.await {
        Ok(done) => done,
        Err(e) if e.is_panic() => Err(Failure::internal(&panic_message(e.into_panic().as_ref()))),
        Err(e) => Err(Failure::internal(&e.to_string())),
    }
}

/// Parses, looks up the namespace, decides and answers one review.
async fn decide(
    app: &App,
    body: Bytes,
    mut charge: Charge,
    slot: &SpanSlot,
) -> Result<Answered, Failure> {
    let parsed = admission::parse(&body)?;
    let span = review_span(parsed.summary());
    slot.set(&span);
    // Namespace policy: labels from the namespace source. When they cannot
    // be had, HTTP 503 lets the API server apply the webhook's failurePolicy
    // (closed for enforced namespaces) instead of nestdock guessing.
    let (source, name) = match (&app.namespaces, parsed.pod_namespace()) {
        (Some(source), Some(name)) => (Some(source), Some(name.to_owned())),
        _ => (None, None),
    };
    let found;
    let reviewed = match (source, name.as_deref()) {
        (Some(source), Some(name)) => {
            // The name is the client's (any pod can call the webhook):
            // checked before any lookup, so that nothing else reaches the
            // cache or the API server's URL. Not a name: denied, code 400.
            if let Err(message) = crate::namespaces::check_name(name) {
                parsed.deny(400, &message)?
            } else {
                found = source
                    .get(name)
                    .instrument(span.clone())
                    .await
                    .map_err(|e| {
                        Failure::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("namespace policy unavailable: {e}"),
                        )
                    })?;
                parsed.answer(&Context {
                    config: &app.config,
                    namespace: NamespacePolicy::Labels {
                        namespace: name,
                        labels: crate::namespaces::labels(&found),
                    },
                    native_sidecars: source.native_sidecars(),
                })?
            }
        }
        // The engine is pure and logs nothing: it runs outside the span.
        _ => parsed.answer(&Context {
            config: &app.config,
            namespace: NamespacePolicy::Off,
            native_sidecars: app.namespaces.as_ref().is_none_or(|s| s.native_sidecars()),
        })?,
    };
    // Only the response stays charged, until it has been written.
    charge.shrink_to(reviewed.body.len());
    let s = &reviewed.summary;
    Ok(Answered {
        mode: s.mode,
        outcome: s.outcome,
        code: s.code,
        body: Bytes::from_owner(Charged {
            bytes: reviewed.body,
            _charge: charge,
        }),
    })
}

/// Response bytes that keep their share of the budget until the last
/// reference is gone: when hyper has written them to the socket, or dropped
/// them with the connection (a client that reads slowly keeps them charged).
struct Charged {
    bytes: Vec<u8>,
    _charge: Charge,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A future whose panic becomes an `Err` with the panic's message: the
/// review's panic boundary.
struct CatchPanic<F>(Pin<Box<F>>);

impl<F, T> Future for CatchPanic<F>
where
    F: Future<Output = T>,
{
    type Output = Result<T, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = &mut self.get_mut().0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic_message(panic.as_ref()))),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

fn micros(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The review's deadline: `configured`, or nine tenths of the `timeout` the
/// API server puts in the query (`?timeout=10s`) when that is shorter, so that
/// nestdock answers before the API server gives up.
#[doc(hidden)] // public for the fuzz target `query` only
pub fn review_deadline(configured: Duration, query: Option<&str>) -> Duration {
    let asked = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("timeout="))
        .and_then(|value| crate::duration::parse_duration(value).ok())
        .filter(|d| !d.is_zero());
    match asked {
        // Integer arithmetic: `mul_f64` panics on overflow.
        Some(asked) => configured.min(asked / 10 * 9),
        None => configured,
    }
}

/// Why a `Content-Type` is refused: the API server always sends
/// `application/json`; a request without the header is read as JSON too.
#[doc(hidden)] // public for the fuzz target `query` only
pub fn content_type_problem(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?;
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/json") => None,
        _ => Some(format!(
            "unsupported Content-Type {}: an AdmissionReview is sent as application/json",
            String::from_utf8_lossy(value.as_bytes())
        )),
    }
}

/// [`content_type_problem`] of a raw `Content-Type` value, as hyper would
/// pass it (values hyper refuses never reach the handler: `None`). For the
/// fuzz target `query`.
#[doc(hidden)]
pub fn content_type_problem_of(value: &[u8]) -> Option<String> {
    let value = HeaderValue::from_bytes(value).ok()?;
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, value);
    content_type_problem(&headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_costs_one_request() {
        let ok = CatchPanic(Box::pin(async { 1 })).await;
        assert_eq!(ok, Ok(1));
        let panicked = CatchPanic(Box::pin(async {
            if std::hint::black_box(true) {
                panic!("boom in a handler");
            }
            0u8
        }))
        .await;
        assert_eq!(panicked, Err("boom in a handler".to_string()));
    }

    #[test]
    fn deadlines_follow_the_api_servers_timeout() {
        let nine = Duration::from_secs(9);
        assert_eq!(review_deadline(nine, Some("timeout=10s")), nine);
        assert_eq!(
            review_deadline(nine, Some("x=1&timeout=5s")),
            Duration::from_millis(4500)
        );
        assert_eq!(review_deadline(nine, Some("timeout=30s")), nine);
        assert_eq!(review_deadline(nine, Some("timeout=0s")), nine);
        assert_eq!(review_deadline(nine, Some("timeout=junk")), nine);
        assert_eq!(review_deadline(nine, None), nine);
        for query in [
            "timeout=10000000000000000000s10000000000000000000s",
            "timeout=18446744073709551615s",
            "timeout=1e300",
            "timeout=",
            "timeout=%FF",
            "&&&timeout",
        ] {
            assert_eq!(review_deadline(nine, Some(query)), nine, "{query}");
        }
    }

    #[test]
    fn content_types() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(content_type_problem(&headers), None);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert_eq!(content_type_problem(&headers), None);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/yaml"));
        let problem = content_type_problem(&headers).unwrap();
        assert!(problem.contains("text/yaml") && problem.contains("application/json"));
    }
}
