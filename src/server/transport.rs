//! Connections: TLS, HTTP/1.1 and HTTP/2 on one port, and what bounds them
//! in time and number. The accept loop itself is [`super::Server::run`].
//!
//! Why not `axum::serve` or hyper-util's defaults: the API server's traffic
//! needs knobs they do not expose: `TCP_NODELAY` on every accepted socket
//! (without it HTTP/2 stalls about 45 ms per request), a TLS handshake
//! timeout, a plain-text 400 for plain HTTP on the TLS port, and above all a
//! keep-alive idle timeout separate from the header timeout.
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
//!   within [`Limits::header_read`] (10 s); a connection of either protocol
//!   that has not completed a first request head within that time of its TLS
//!   handshake is closed (an HTTP/2 client that sends only its preface would
//!   otherwise hold a connection slot for the whole idle timeout);
//! - keep-alive idle: a connection with no request in flight is closed after
//!   [`Limits::keep_alive_idle`] (120 s, longer than the API server's 90 s, so
//!   the client always closes first); HTTP/2 pings do not count as activity;
//! - the request body must arrive within [`Limits::body_read`] (10 s), enforced
//!   by the `/mutate` handler.
//!
//! Beyond time, what one client can hold is bounded too:
//!
//! - at most [`Limits::max_connections`] open connections (1024): at the cap
//!   the accept loop stops accepting, so new connections wait in the kernel's
//!   backlog instead of being reset. Each connection costs memory outside the
//!   request budget (TLS state and hyper's buffers: about 32 KiB once it has
//!   served a request, measured with 1000 of them), so the cap is part of the
//!   memory bound: 4096 such connections held some 130 MiB, 1024 hold 32 MiB;
//!   the API server keeps at most 25 idle connections per instance;
//! - HTTP/2 flow-control windows of 64 KiB per stream and per connection
//!   (HTTP/2's own default; hyper's is 1 MiB each): what a client can make
//!   the server buffer on a connection before the handler reads the body
//!   (which it does only once the body is within the budget);
//! - at most [`Limits::max_streams`] concurrent HTTP/2 streams per connection
//!   (256);
//! - request bodies up to `--max-body-bytes` (8 MiB; 413 above);
//! - a review must be answered within [`Limits::request`] (9 s), or within
//!   nine tenths of the `?timeout=` the API server appends, whichever is
//!   shorter. Past it the answer is HTTP 503 with the reason. The API server
//!   would treat its own timeout exactly like a 503, applying the webhook's
//!   `failurePolicy` (Ignore: the pod is created unmutated; Fail: it is
//!   refused), so answering first changes nothing for the pod, but frees the
//!   handler at once, and the API server's error names the cause instead of
//!   "context deadline exceeded".
//!
//! The test that shows why hyper's own timeout will not do is
//! `idle_keep_alive_outlives_the_header_timeout_then_closes` (src/server/tests.rs):
//! with hyper's `header_read_timeout` at the header limit, the idle
//! connection it keeps would be closed at the header limit instead.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// Time and size limits of connections and requests (docs/behaviour.md,
/// *Limits*). The defaults are the product's; tests use shorter ones in-process.
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
    /// A review's deadline, from the handler's start to its answer (also
    /// bounded by the API server's `?timeout=`).
    pub request: Duration,
    /// Open connections at once; at the cap, accepting pauses.
    pub max_connections: usize,
    /// Concurrent streams on one HTTP/2 connection.
    pub max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            keep_alive_idle: Duration::from_secs(120),
            body_read: Duration::from_secs(10),
            drain: Duration::from_secs(20),
            request: Duration::from_secs(9),
            max_connections: 1024,
            max_streams: 256,
        }
    }
}

/// HTTP/1.1 with keep-alive and HTTP/2 on the same port, chosen by ALPN (or the
/// HTTP/2 preface). hyper's header timeout is off: `TimedIo` does it.
pub(super) fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .header_read_timeout(None)
        .max_headers(100)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .initial_stream_window_size(H2_WINDOW)
        .initial_connection_window_size(H2_WINDOW)
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    builder
}

/// HTTP/2 flow-control window, per stream and per connection: what a client
/// may send ahead of the handler reading (see the module documentation).
pub(super) const H2_WINDOW: u32 = 64 * 1024;

/// Largest request head accepted (the API server's are well under 1 KiB).
pub(super) const MAX_HEADER_BYTES: usize = 64 * 1024;

/// One accepted connection and what it needs.
pub(super) struct Conn {
    pub(super) acceptor: TlsAcceptor,
    pub(super) builder: Arc<auto::Builder<TokioExecutor>>,
    pub(super) router: Router,
    pub(super) limits: Limits,
    pub(super) stop: watch::Receiver<bool>,
    /// Held for the connection's lifetime: the drain waits for all of them.
    pub(super) _open: watch::Receiver<()>,
    /// The connection's place under [`Limits::max_connections`].
    pub(super) _slot: OwnedSemaphorePermit,
}

impl Conn {
    /// Serves one connection to its end. Errors end this connection only;
    /// a panic ends this task only (tokio catches it), never the accept loop.
    pub(super) async fn serve(mut self, tcp: TcpStream, peer: SocketAddr) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let handshake_deadline = Instant::now() + self.limits.handshake;
        let tcp = tokio::select! {
            checked = tokio::time::timeout_at(handshake_deadline, refuse_plain_http(tcp, peer)) => {
                match checked {
                    Ok(Some(tcp)) => tcp,
                    Ok(None) => return,
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
        let tls = tokio::select! {
            handshake = tokio::time::timeout_at(handshake_deadline, self.acceptor.accept(tcp)) => {
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
        // The connection's slot is given back when this task ends.
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

/// The first byte of a TLS connection is a handshake record (0x16). A client
/// that speaks plain HTTP to this port gets a plain-text 400 that says so
/// (as Go's servers do), rather than a TLS alert it cannot read. Returns the
/// stream, nothing read from it, when it may be TLS; `None` when it was
/// answered or is gone.
async fn refuse_plain_http(mut tcp: TcpStream, peer: SocketAddr) -> Option<TcpStream> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(0) => {
            tracing::debug!(%peer, "connection closed before the TLS handshake");
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection failed before the TLS handshake");
            return None;
        }
    }
    // Every HTTP/1 method (and the HTTP/2 preface, "PRI") starts with an
    // upper-case letter; a TLS record starts with a content type below 0x20.
    if !first[0].is_ascii_uppercase() {
        return Some(tcp);
    }
    tracing::info!(%peer, status = 400, "plain HTTP on the HTTPS port");
    let body = "this port speaks HTTPS only; the client sent plain HTTP (use https://)\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if tcp.write_all(response.as_bytes()).await.is_ok() {
        let _ = tcp.shutdown().await;
        // Closing with unread bytes would reset the connection, and the
        // client might lose the answer: read what it sends (a little, briefly).
        let mut sink = [0u8; 4096];
        let mut total = 0usize;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(n) = tcp.read(&mut sink).await {
                total += n;
                if n == 0 || total > 64 * 1024 {
                    break;
                }
            }
        })
        .await;
    }
    None
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
        let handled = self.router.clone().oneshot(request);
        Box::pin(async move {
            let response = handled.await;
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
            // A connection that has never completed a request head (HTTP/2
            // after its preface and SETTINGS, or nothing at all) owes its
            // first one within the header timeout, not the idle one: it only
            // holds a connection slot.
            None if self.seen_started == 0 => (
                self.activity.base + self.limits.header_read,
                "request header read timeout (no request since the connection opened)",
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
