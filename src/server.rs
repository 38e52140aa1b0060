//! The HTTPS server (SPEC section 5): an accept loop of our own around
//! rustls and hyper, serving an axum router.
//!
//! Why not `axum::serve`: the API server's traffic needs knobs it does not
//! expose: `TCP_NODELAY` on every accepted socket (without it HTTP/2 stalls
//! about 45 ms per request), a TLS handshake timeout, and the right idle
//! behaviour for keep-alive connections.
//!
//! Timeouts. hyper's own HTTP/1 `header_read_timeout` starts counting as soon as
//! a connection goes idle after a response, so setting it to 10 s would close
//! every idle keep-alive connection after 10 s. The API server keeps idle
//! connections for 90 s and reuses them; a server that closes them first makes
//! some webhook calls fail with `EOF`. hyper has no separate keep-alive idle
//! timeout, so both limits are enforced here instead, in `TimedIo`, a wrapper
//! around each connection's stream that knows (through `Activity`) whether a
//! request is being handled:
//!
//! - request-header read: once the first byte of a request arrives on an idle
//!   HTTP/1.1 connection (or the connection is new), the headers must be complete
//!   within [`Limits::header_read`] (10 s);
//! - keep-alive idle: a connection with no request in flight is closed after
//!   [`Limits::keep_alive_idle`] (120 s, longer than the API server's 90 s, so
//!   the client always closes first); HTTP/2 pings do not count as activity;
//! - the request body must arrive within [`Limits::body_read`] (10 s), enforced
//!   by the `/mutate` handler.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::admission;
use crate::config::Config;
use crate::engine::{Context, NamespacePolicy};
use crate::namespaces::NamespaceCache;
use crate::tls::CertResolver;

/// What `nestdock serve` needs to run.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address of the HTTPS listener; port 0 picks a free port (the
    /// "listening on" log line says which).
    pub listen: SocketAddr,
    /// PEM certificate chain, serving certificate first.
    pub tls_cert: PathBuf,
    /// PEM private key of the serving certificate.
    pub tls_key: PathBuf,
    pub config: Config,
    /// Largest request body accepted (an UPDATE review carries two objects).
    pub max_body_bytes: usize,
    /// Namespace labels for policy; `None` turns namespace policy off.
    pub namespaces: Option<NamespaceCache>,
}

/// Time limits of a connection (SPEC section 8). The defaults are the
/// product's; tests use shorter ones in-process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From TCP accept to a finished TLS handshake.
    pub handshake: Duration,
    /// From the first byte of a request (or a new connection) to its last header.
    pub header_read: Duration,
    /// How long a connection may wait with no request in flight.
    pub keep_alive_idle: Duration,
    /// From the handler's start to the last byte of the request body.
    pub body_read: Duration,
    /// After SIGTERM, how long open connections may take to finish.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            keep_alive_idle: Duration::from_secs(120),
            body_read: Duration::from_secs(10),
            drain: Duration::from_secs(20),
        }
    }
}

/// Whether `/readyz` answers 200. Starts ready; later parts (the namespace
/// cache) flip it, and shutdown turns it off.
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

/// What the handlers share.
struct AppState {
    config: Config,
    max_body_bytes: usize,
    body_read: Duration,
    ready: Readiness,
    namespaces: Option<NamespaceCache>,
}

/// A bound, not yet running server. [`bind`] then [`Server::run`]; in
/// between, [`Server::local_addr`] tells the port when port 0 was asked for.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    acceptor: TlsAcceptor,
    certs: Arc<CertResolver>,
    state: Arc<AppState>,
    limits: Limits,
}

/// Loads the certificate and binds the listener with the default [`Limits`].
/// Fails (naming the file or the address) before anything is served.
pub async fn bind(opts: ServeOptions) -> anyhow::Result<Server> {
    bind_with_limits(opts, Limits::default()).await
}

/// [`bind`] with other time limits.
pub async fn bind_with_limits(opts: ServeOptions, limits: Limits) -> anyhow::Result<Server> {
    crate::tls::install_ring();
    let (tls_config, certs) = crate::tls::load(&opts.tls_cert, &opts.tls_key)?;
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let local_addr = listener
        .local_addr()
        .with_context(|| format!("cannot read the address bound for {}", opts.listen))?;
    let state = Arc::new(AppState {
        config: opts.config,
        max_body_bytes: opts.max_body_bytes,
        body_read: limits.body_read,
        ready: Readiness(Arc::new(AtomicBool::new(true))),
        namespaces: opts.namespaces,
    });
    Ok(Server {
        listener,
        local_addr,
        acceptor: TlsAcceptor::from(tls_config),
        certs,
        state,
        limits,
    })
}

/// Runs the webhook until SIGTERM or SIGINT, then drains and returns.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let server = bind(opts).await?;
    let addr = server.local_addr();
    tracing::info!(%addr, "listening on {addr}");
    server.run(shutdown_signal()).await
}

impl Server {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The handle that flips `/readyz`.
    pub fn readiness(&self) -> Readiness {
        self.state.ready.clone()
    }

    /// The certificate resolver, to reload the pair when its files change.
    pub fn certs(&self) -> Arc<CertResolver> {
        self.certs.clone()
    }

    /// Accepts connections until `shutdown` completes; then stops accepting,
    /// lets open connections finish their requests (at most
    /// [`Limits::drain`]) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Server {
            listener,
            acceptor,
            state,
            limits,
            ..
        } = self;
        let ready = state.ready.clone();
        let router = router(state);
        let builder = Arc::new(http_builder());
        // `stop` tells connections to finish; `open` counts them: every
        // connection task holds a receiver, and `closed()` resolves when the
        // last one is gone.
        let (stop_tx, stop_rx) = watch::channel(false);
        let (open_tx, open_rx) = watch::channel(());

        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Per-connection errors (the peer reset before accept)
                        // are harmless; running out of file descriptors is
                        // not, and retrying at once would spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let conn = Conn {
                acceptor: acceptor.clone(),
                builder: builder.clone(),
                router: router.clone(),
                limits,
                stop: stop_rx.clone(),
                _open: open_rx.clone(),
            };
            tokio::spawn(conn.serve(tcp, peer));
        }

        drop(listener);
        ready.set(false);
        let _ = stop_tx.send(true);
        drop(open_rx);
        let open = open_tx.receiver_count();
        if open > 0 {
            tracing::info!(open, "draining open connections");
        }
        if tokio::time::timeout(limits.drain, open_tx.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                open = open_tx.receiver_count(),
                drain_secs = limits.drain.as_secs(),
                "connections still open after the drain period; closing them"
            );
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Resolves on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
                "SIGTERM"
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the server");
                std::future::pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<&str>();
    let int = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "SIGINT",
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGINT");
                std::future::pending().await
            }
        }
    };
    let signal = tokio::select! {
        s = term => s,
        s = int => s,
    };
    tracing::info!(
        signal,
        "shutting down: no new connections, open ones may finish"
    );
}

/// HTTP/1.1 with keep-alive and HTTP/2 on the same port, chosen by ALPN (or the
/// HTTP/2 preface). hyper's header timeout is off: `TimedIo` does it.
fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .header_read_timeout(None)
        .max_headers(100);
    builder.http2().max_concurrent_streams(250);
    builder
}

/// One accepted connection and what it needs.
struct Conn {
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    limits: Limits,
    stop: watch::Receiver<bool>,
    /// Held for the connection's lifetime: the drain waits for all of them.
    _open: watch::Receiver<()>,
}

impl Conn {
    /// Serves one connection to its end. Errors end this connection only;
    /// a panic ends this task only (tokio catches it), never the accept loop.
    async fn serve(mut self, tcp: TcpStream, peer: SocketAddr) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let tls = tokio::select! {
            handshake = tokio::time::timeout(self.limits.handshake, self.acceptor.accept(tcp)) => {
                match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        // An EOF is a port probe or a client giving up; other
                        // errors (unknown CA, no common cipher) are worth seeing.
                        if e.kind() == io::ErrorKind::UnexpectedEof {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        } else {
                            tracing::info!(%peer, error = %e, "TLS handshake failed");
                        }
                        return;
                    }
                    Err(_) => {
                        tracing::info!(
                            %peer,
                            timeout_secs = self.limits.handshake.as_secs(),
                            "TLS handshake timed out"
                        );
                        return;
                    }
                }
            }
            _ = self.stop.changed() => return,
        };
        let proto = match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => Proto::H2,
            Some(b"http/1.1") => Proto::H1,
            _ => Proto::Unknown,
        };
        let activity = Arc::new(Activity::new());
        let io = TimedIo::new(tls, activity.clone(), self.limits, proto);
        let service = ConnService {
            router: self.router,
            activity,
        };
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = self.stop.changed() => {
                // HTTP/1.1: close when idle, after the response in flight;
                // HTTP/2: GOAWAY, then let open streams finish.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// What a connection's [`TimedIo`] needs to know about its requests.
#[derive(Debug)]
struct Activity {
    /// When the connection was set up; the origin of `last_done_ms`.
    base: Instant,
    /// Requests being handled now.
    in_flight: AtomicUsize,
    /// Requests started so far; a change means "a request head was complete".
    started: AtomicU64,
    /// When the last request finished, in milliseconds since `base` (0 before
    /// the first): the start of the idle period.
    last_done_ms: AtomicU64,
    /// The reader waiting while requests were in flight (it had no deadline
    /// to wait for); woken when the last one finishes so that it arms the
    /// idle deadline.
    waker: Mutex<Option<Waker>>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            last_done_ms: AtomicU64::new(0),
            waker: Mutex::new(None),
        }
    }

    /// Since when the connection has had no request in flight.
    fn idle_since(&self) -> Instant {
        self.base + Duration::from_millis(self.last_done_ms.load(Ordering::Acquire))
    }
}

/// Marks a request in flight until dropped (also when the handler's future is
/// dropped half-way).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> InFlight {
        // `in_flight` first: whoever sees the new `started` sees it too.
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.started.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let done = u64::try_from(activity.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.last_done_ms.store(done, Ordering::Release);
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let waker = activity
                .waker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// The router for one connection, counting its requests for [`TimedIo`].
#[derive(Clone)]
struct ConnService {
    router: Router,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let guard = InFlight::enter(&self.activity);
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(request).await;
            drop(guard);
            response
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// No ALPN and no bytes yet: HTTP/1.1 unless the HTTP/2 preface comes.
    Unknown,
    H1,
    H2,
}

/// A connection's stream with the header-read and keep-alive idle limits
/// (see the module documentation). The deadline is checked whenever hyper
/// waits for bytes, which it always does between requests; a passed deadline
/// is a `TimedOut` read error, which makes hyper close the connection.
struct TimedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    limits: Limits,
    proto: Proto,
    /// Value of `activity.started` last seen.
    seen_started: u64,
    /// When the first byte of the next HTTP/1.1 request arrived.
    head_started: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    /// The deadline `timer` is set to.
    armed: Option<Instant>,
}

impl<T> TimedIo<T> {
    fn new(inner: T, activity: Arc<Activity>, limits: Limits, proto: Proto) -> Self {
        let now = Instant::now();
        TimedIo {
            inner,
            activity,
            limits,
            proto,
            seen_started: 0,
            // A new HTTP/1.1 connection owes its first request head at once.
            head_started: (proto != Proto::H2).then_some(now),
            timer: Box::pin(tokio::time::sleep_until(now + limits.keep_alive_idle)),
            armed: None,
        }
    }

    /// Catches up with the connection's requests; true while one is in flight.
    fn refresh(&mut self) -> bool {
        let started = self.activity.started.load(Ordering::Acquire);
        if started != self.seen_started {
            // A request head was complete since: its header clock is done.
            self.seen_started = started;
            self.head_started = None;
        }
        self.activity.in_flight.load(Ordering::Acquire) > 0
    }

    fn on_bytes(&mut self, bytes: &[u8]) {
        if self.proto == Proto::Unknown {
            self.proto = if bytes.starts_with(b"PRI") {
                self.head_started = None;
                Proto::H2
            } else {
                Proto::H1
            };
        }
        let busy = self.refresh();
        if !busy && self.proto == Proto::H1 && self.head_started.is_none() {
            self.head_started = Some(Instant::now());
        }
    }

    /// The deadline that applies now, and what it is called in the error;
    /// none while a request is in flight.
    fn deadline(&mut self) -> Option<(Instant, &'static str)> {
        if self.refresh() {
            return None;
        }
        Some(match self.head_started {
            Some(head) => (
                head + self.limits.header_read,
                "request header read timeout",
            ),
            None => (
                self.activity.idle_since() + self.limits.keep_alive_idle,
                "keep-alive idle timeout",
            ),
        })
    }

    fn poll_deadline(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let (deadline, what) = match self.deadline() {
            Some(deadline) => deadline,
            None => {
                // No deadline while a request is in flight; have the last
                // one to finish wake this reader so that it arms the idle one.
                *self
                    .activity
                    .waker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
                // It may have finished before the waker was stored.
                match self.deadline() {
                    Some(deadline) => deadline,
                    None => return Poll::Pending,
                }
            }
        };
        let timed_out = || Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
        if Instant::now() >= deadline {
            return timed_out();
        }
        if self.armed != Some(deadline) {
            self.timer.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => timed_out(),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.on_bytes(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The routes. `/mutate` is matched on the path only: the API server appends
/// `?timeout=10s`.
fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
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

async fn healthz() -> Response {
    text(StatusCode::OK, "ok")
}

/// Ready when not shutting down and, with namespace policy on, once the
/// namespace cache has its first full list.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if !state.ready.is_ready() {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down")
    } else if state.namespaces.as_ref().is_some_and(|c| !c.is_ready()) {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the namespace cache has not finished its first list",
        )
    } else {
        text(StatusCode::OK, "ok")
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    tracing::info!(%method, path = uri.path(), status = 404, "no such path");
    text(
        StatusCode::NOT_FOUND,
        format!(
            "not found: {} (served: POST /mutate, GET /healthz, GET /readyz)",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
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

fn too_large(limit: usize) -> (StatusCode, String) {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is over the limit of {limit} bytes (serve --max-body-bytes)"),
    )
}

/// How much of an over-limit HTTP/1.1 body is read and thrown away so that
/// the client, still writing, gets to read the 413 (rather than a broken
/// pipe when the server closes on it). Past this the connection is closed.
const DRAIN_CAP: usize = 32 * 1024 * 1024;

/// Reads the whole body, at most `limit` bytes within `timeout`.
///
/// Over the limit the answer is 413. On HTTP/2 (`drain` false) that happens
/// at once, the stream is reset cleanly; on HTTP/1.1 the rest of the body is
/// read and dropped first (up to [`DRAIN_CAP`], within the same timeout).
async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
    drain: bool,
) -> Result<Bytes, (StatusCode, String)> {
    let mut over = axum::body::HttpBody::size_hint(&body).lower() > limit as u64;
    if over && !drain {
        return Err(too_large(limit));
    }
    match tokio::time::timeout(timeout, collect_limited(body, limit, drain, &mut over)).await {
        Ok(Ok(Some(bytes))) => Ok(bytes),
        Ok(Ok(None)) => Err(too_large(limit)),
        Ok(Err(e)) => Err((
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
        Err(_) if over => Err(too_large(limit)),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f32()
            ),
        )),
    }
}

/// The body's bytes, or `None` once it is known to be over `limit` (after
/// draining the rest when asked). `over` says so as soon as it is known, also
/// to a caller whose timeout cut this short.
async fn collect_limited(
    mut body: Body,
    limit: usize,
    drain: bool,
    over: &mut bool,
) -> Result<Option<Bytes>, axum::Error> {
    let declared = axum::body::HttpBody::size_hint(&body).lower();
    let mut buf = Vec::with_capacity(usize::try_from(declared).unwrap_or(0).min(limit));
    let mut drained = 0usize;
    while let Some(frame) = body.frame().await {
        // Trailers carry nothing a review needs.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if !*over && buf.len() + data.len() <= limit {
            buf.extend_from_slice(&data);
            continue;
        }
        *over = true;
        drained += data.len();
        if !drain || drained > DRAIN_CAP {
            return Ok(None);
        }
    }
    Ok((!*over).then(|| Bytes::from(buf)))
}

/// `POST /mutate`: one AdmissionReview, one log line.
async fn mutate(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = std::time::Instant::now();
    let drain = request.version() < axum::http::Version::HTTP_2;
    let body = match read_body(
        request.into_body(),
        state.max_body_bytes,
        state.body_read,
        drain,
    )
    .await
    {
        Ok(body) => body,
        Err((status, message)) => {
            tracing::warn!(
                status = status.as_u16(),
                error = %message,
                micros = micros(started),
                "review not read"
            );
            return text(status, message);
        }
    };
    // The engine is pure code on untrusted input: a bug there must cost one
    // review (HTTP 500, which `failurePolicy` handles), not the connection.
    let parsed = match guarded(|| admission::parse(&body)) {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(e)) => return refused(e, started),
        Err(what) => return internal_error(&what, started),
    };
    // Namespace policy: labels from the watch-backed cache. When they cannot
    // be had, HTTP 503 lets the API server apply the webhook's failurePolicy
    // (closed for enforced namespaces) instead of nestdock guessing.
    let namespace_name = parsed.pod_namespace().map(str::to_owned);
    let namespace_obj;
    let namespace = match (&state.namespaces, namespace_name.as_deref()) {
        (Some(cache), Some(name)) => match cache.get(name).await {
            Ok(found) => {
                namespace_obj = found;
                NamespacePolicy::Labels {
                    namespace: name,
                    labels: crate::namespaces::labels(&namespace_obj),
                }
            }
            Err(e) => {
                let s = parsed.summary();
                tracing::warn!(
                    uid = %s.uid,
                    namespace = %s.namespace,
                    name = %s.name,
                    status = 503,
                    error = %e,
                    micros = micros(started),
                    "review not answered: namespace policy unavailable"
                );
                return text(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            }
        },
        _ => NamespacePolicy::Off,
    };
    let ctx = Context {
        config: &state.config,
        namespace,
        native_sidecars: state
            .namespaces
            .as_ref()
            .is_none_or(NamespaceCache::native_sidecars),
    };
    let result = guarded(|| parsed.answer(&ctx));
    match result {
        Ok(Ok(reviewed)) => {
            let s = &reviewed.summary;
            tracing::info!(
                uid = %s.uid,
                namespace = %s.namespace,
                name = %s.name,
                kind = %s.kind,
                operation = %s.operation,
                dry_run = s.dry_run,
                mode = %s.mode.map(|m| m.as_str()).unwrap_or("-"),
                outcome = %s.verdict,
                code = s.code,
                micros = micros(started),
                "review"
            );
            (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                reviewed.body,
            )
                .into_response()
        }
        Ok(Err(e)) => refused(e, started),
        Err(what) => internal_error(&what, started),
    }
}

/// Runs `f`, turning a panic into its message.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string())
    })
}

/// A body that is not a readable review: plain-text HTTP error with the reason.
fn refused(e: admission::ReviewError, started: std::time::Instant) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    tracing::warn!(
        status = status.as_u16(),
        error = %e.message,
        micros = micros(started),
        "review refused"
    );
    text(status, e.message)
}

fn internal_error(what: &str, started: std::time::Instant) -> Response {
    tracing::error!(error = %what, micros = micros(started), "review failed: internal error");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error while handling the review: {what}"),
    )
}

fn micros(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    //! The time limits, in-process with short values (the integration tests in
    //! `tests/server.rs` drive the real binary with the real ones).
    use super::*;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::client::TlsStream;

    const SHORT: Limits = Limits {
        handshake: Duration::from_millis(300),
        header_read: Duration::from_millis(300),
        keep_alive_idle: Duration::from_millis(1200),
        body_read: Duration::from_millis(300),
        drain: Duration::from_secs(2),
    };

    struct Running {
        addr: SocketAddr,
        ca: Vec<u8>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        done: tokio::task::JoinHandle<anyhow::Result<()>>,
        _dir: tempfile::TempDir,
    }

    async fn start() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let bundle = crate::certs::generate("nestdock", "nestdock-system").unwrap();
        bundle.write_to(dir.path()).unwrap();
        let opts = ServeOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: dir.path().join("tls.crt"),
            tls_key: dir.path().join("tls.key"),
            config: Config::default(),
            max_body_bytes: 1024,
            namespaces: None,
        };
        let server = bind_with_limits(opts, SHORT).await.unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            ca: bundle.ca_pem.into_bytes(),
            stop: Some(stop),
            done,
            _dir: dir,
        }
    }

    async fn connect(running: &Running, alpn: &[u8]) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&running.ca) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(running.addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// Reads one HTTP/1.1 response (headers and a Content-Length body).
    async fn read_response(tls: &mut TlsStream<TcpStream>) -> Option<String> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return Some(text);
                }
            }
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Waits for the server to close the connection; returns how long it took.
    async fn closed_after(tls: &mut TlsStream<TcpStream>) -> Duration {
        let start = Instant::now();
        let mut chunk = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("connection still open after 5 s"),
            }
        }
    }

    const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

    #[tokio::test]
    async fn slow_request_headers_are_cut_off() {
        let running = start().await;
        let mut tls = connect(&running, b"http/1.1").await;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: local")
            .await
            .unwrap();
        let waited = closed_after(&mut tls).await;
        assert!(waited < Duration::from_millis(1000), "{waited:?}");

        // A new connection that never sends a request is cut off too.
        let mut tls = connect(&running, b"http/1.1").await;
        let waited = closed_after(&mut tls).await;
        assert!(waited < Duration::from_millis(1000), "{waited:?}");
    }

    #[tokio::test]
    async fn idle_keep_alive_outlives_the_header_timeout_then_closes() {
        let running = start().await;
        let mut tls = connect(&running, b"http/1.1").await;
        for _ in 0..2 {
            tls.write_all(HEALTHZ).await.unwrap();
            let response = read_response(&mut tls).await.expect("a response");
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            // Longer than the header timeout, shorter than the idle one.
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let waited = closed_after(&mut tls).await;
        assert!(
            waited > Duration::from_millis(300) && waited < Duration::from_millis(1500),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn idle_http2_connection_closes_after_the_idle_limit() {
        let running = start().await;
        let tls = connect(&running, b"h2").await;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let request = hyper::Request::get("https://localhost/healthz")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // Idle past the header timeout: still usable.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let request = hyper::Request::get("https://localhost/healthz")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(
            sender.send_request(request).await.unwrap().status(),
            StatusCode::OK
        );
        let start = Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the server closes the idle HTTP/2 connection");
        assert!(
            start.elapsed() > Duration::from_millis(900),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn silent_tls_client_is_cut_off() {
        let running = start().await;
        let mut tcp = TcpStream::connect(running.addr).await.unwrap();
        let start = Instant::now();
        let mut chunk = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .expect("closed before 5 s");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(start.elapsed() < Duration::from_millis(1000));
    }

    #[tokio::test]
    async fn slow_body_gets_408_and_big_body_413() {
        let running = start().await;
        let mut tls = connect(&running, b"http/1.1").await;
        tls.write_all(
            b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"apiVersion\"",
        )
        .await
        .unwrap();
        let response = read_response(&mut tls).await.expect("a response");
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");

        let mut tls = connect(&running, b"http/1.1").await;
        tls.write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2000\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut tls).await.expect("a response");
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        assert!(response.contains("1024 bytes"), "{response}");
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_readiness_goes_false() {
        let mut running = start().await;
        let mut tls = connect(&running, b"http/1.1").await;
        tls.write_all(HEALTHZ).await.unwrap();
        assert!(read_response(&mut tls).await.is_some());
        running.stop.take().unwrap().send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(3), &mut running.done)
            .await
            .expect("drained within the limit")
            .expect("task");
        assert!(result.is_ok());
        // The idle keep-alive connection was closed, not waited for.
        closed_after(&mut tls).await;
        assert!(TcpStream::connect(running.addr).await.is_err());
    }
}
