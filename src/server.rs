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
//! Shutdown (SIGTERM): `/readyz` turns 503 at once, connections keep being
//! served for [`ServeOptions::shutdown_delay`] (5 s) while the endpoints
//! controller takes the pod out of the Service (a listener closed right away
//! would refuse the connections still routed here), then the listener closes,
//! idle connections are closed, in-flight requests finish (at most
//! [`Limits::drain`], 20 s) and the process exits 0. SIGINT skips the delay.
//!
//! Panics: the engine runs inside `catch_unwind` (a panic costs one review:
//! HTTP 500 and a log line), and so does every request as a whole; the
//! connection and the server go on.

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
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::admission::{self, Summary};
use crate::config::Config;
use crate::engine::{Context, NamespacePolicy};
use crate::metrics::{Metrics, Outcome, MODE_UNKNOWN};
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
    /// Memory budget of the reviews in flight, in bytes (see [`Budget`]).
    pub max_inflight_bytes: usize,
    /// Namespace labels for policy; `None` turns namespace policy off.
    pub namespaces: Option<NamespaceCache>,
    /// Address of the plain-HTTP Prometheus endpoint; `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// How often the certificate files are compared with what is served, in
    /// case a file event was missed (events trigger a check at once).
    pub cert_check_interval: Duration,
    /// After SIGTERM, how long connections keep being accepted with `/readyz`
    /// false, so that the Service stops routing here first.
    pub shutdown_delay: Duration,
}

impl ServeOptions {
    /// The product's defaults around the three things that have none.
    pub fn new(listen: SocketAddr, tls_cert: PathBuf, tls_key: PathBuf) -> ServeOptions {
        ServeOptions {
            listen,
            tls_cert,
            tls_key,
            config: Config::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            namespaces: None,
            metrics_listen: None,
            cert_check_interval: crate::tls::WatchOptions::default().interval,
            shutdown_delay: Duration::from_secs(5),
        }
    }
}

/// Default request body limit: above axum's 2 MiB, since an UPDATE review
/// carries two objects.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Default memory budget of the reviews in flight (`serve
/// --max-inflight-bytes`). Peak RSS runs at about 2.5 times the budget
/// under tests/adversarial.rs (the allocator keeps freed memory in
/// per-thread arenas): release builds peaked at 145-175 MiB with 64 MiB and
/// at 119-136 MiB with 48 MiB, against SPEC 5's 200 MiB (the shipped limit
/// is 256Mi). One largest review (8 MiB body + 28 MiB to decide it) fits.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 48 * 1024 * 1024;

/// What deciding a review holds beyond its body, as a multiple of the body:
/// the typed pod (borrowing strings from the body), the patch and the
/// response. Measured (VmHWM of a fresh server, one review at a time) on
/// the shapes of `tests/adversarial.rs`: the patch is what grows fastest,
/// ~250 bytes per container named in ~27, so 12,000 containers in a
/// 0.33 MiB body held 10.8 MiB (a 3.7 MiB response). A 6 KiB review is
/// charged 192 KiB.
const PROCESSING_FACTOR: usize = 32;

/// Cap of that extra charge. The engine bounds the typed pod (100,000
/// entries) and the patch (4 MiB, 5.3 MiB as base64); the most measured was
/// 27.3 MiB for 95,000 volumeMounts (3.2 MiB body, 4.2 MiB response), and
/// 17.7 MiB for an 8 MiB body refused at the entry cap.
const PROCESSING_CAP: usize = 28 * 1024 * 1024;

/// How long a review waits for its share of the budget before HTTP 503.
const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// The memory budget of requests in flight (SPEC 5: memory bounded across
/// all in-flight requests). A semaphore whose permits are bytes: a review
/// takes its body's declared `Content-Length` before reading it (or each
/// chunk as it comes when no length is declared), then [`PROCESSING_FACTOR`]
/// times the body (at most [`PROCESSING_CAP`]) before parsing, and keeps what
/// its response needs until the response has been written. When the budget
/// is in use it waits (at most [`BUDGET_WAIT`], within the review's deadline)
/// and then answers HTTP 503 naming the budget and its flag. Permits go back
/// whenever the request ends, also when the client goes away half-way (the
/// handler's future is dropped, and the permits with it).
///
/// The fast path is one `try_acquire` per phase: an uncontended atomic.
#[derive(Debug)]
pub struct Budget {
    semaphore: Arc<Semaphore>,
    total: usize,
}

/// Bytes taken from the [`Budget`]; given back when dropped.
#[derive(Debug, Default)]
pub struct Charge(Option<OwnedSemaphorePermit>);

impl Charge {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    fn add(&mut self, more: Charge) {
        match (&mut self.0, more.0) {
            (Some(held), Some(more)) => held.merge(more),
            (held @ None, more) => *held = more,
            (Some(_), None) => {}
        }
    }

    /// Gives back all but `keep` bytes.
    fn shrink_to(&mut self, keep: usize) {
        let held = self.bytes();
        if held > keep {
            if let Some(permit) = self.0.as_mut() {
                drop(permit.split(held - keep));
            }
        }
    }
}

/// The budget was in use for longer than a review may wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    pub wanted: usize,
    pub total: usize,
    pub waited: Duration,
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the memory budget for reviews in flight ({} bytes, serve --max-inflight-bytes) \
             is in use by other requests: this review needs {} bytes of it and none came free \
             within {:.1} s; retry later",
            self.total,
            self.wanted,
            self.waited.as_secs_f64()
        )
    }
}

impl Budget {
    /// A budget of `total` bytes (at most `u32::MAX`, what a semaphore
    /// acquisition can ask for).
    pub fn new(total: usize) -> Budget {
        let total = total.min(u32::MAX as usize);
        Budget {
            semaphore: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Bytes not taken now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// The whole budget.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Takes `bytes` (at most the whole budget, so that any one request can
    /// be served eventually): at once when free, else waiting up to `wait`.
    pub async fn charge(&self, bytes: usize, wait: Duration) -> Result<Charge, OverBudget> {
        let n = bytes.min(self.total);
        if n == 0 {
            return Ok(Charge(None));
        }
        // `total` fits a u32, so does `n`.
        let n32 = n as u32;
        if let Ok(permit) = self.semaphore.clone().try_acquire_many_owned(n32) {
            return Ok(Charge(Some(permit)));
        }
        match tokio::time::timeout(wait, self.semaphore.clone().acquire_many_owned(n32)).await {
            Ok(Ok(permit)) => Ok(Charge(Some(permit))),
            // Never closed; treat it like a full budget anyway.
            Ok(Err(_)) | Err(_) => Err(OverBudget {
                wanted: n,
                total: self.total,
                waited: wait,
            }),
        }
    }

    /// What deciding a review of `body` bytes is charged beyond the body
    /// (never more than the budget leaves beside the body).
    fn processing(&self, body: usize) -> usize {
        body.saturating_mul(PROCESSING_FACTOR)
            .min(PROCESSING_CAP)
            .min(self.total.saturating_sub(body))
    }
}

/// Time and size limits of connections and requests (SPEC section 8). The
/// defaults are the product's; tests use shorter ones in-process.
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
    budget: Budget,
    /// Large reviews decided at once on the blocking pool: one per CPU.
    offloaded: Arc<Semaphore>,
    body_read: Duration,
    request_timeout: Duration,
    ready: Readiness,
    namespaces: Option<NamespaceCache>,
    metrics: Arc<Metrics>,
}

/// A bound, not yet running server. [`bind`] then [`Server::run`]; in
/// between, [`Server::local_addr`] tells the port when port 0 was asked for.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics_listener: Option<(TcpListener, SocketAddr)>,
    acceptor: TlsAcceptor,
    certs: Arc<CertResolver>,
    cert_watch: crate::tls::WatchOptions,
    state: Arc<AppState>,
    limits: Limits,
    shutdown_delay: Duration,
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
    let metrics_listener = match opts.metrics_listen {
        Some(addr) => {
            let listener = crate::metrics::bind(addr).await?;
            let bound = listener
                .local_addr()
                .with_context(|| format!("cannot read the address bound for {addr}"))?;
            Some((listener, bound))
        }
        None => None,
    };
    anyhow::ensure!(
        limits.max_connections > 0,
        "the connection limit must be at least 1 (--max-connections)"
    );
    anyhow::ensure!(
        limits.max_streams > 0,
        "the HTTP/2 stream limit must be at least 1 (--max-concurrent-streams)"
    );
    anyhow::ensure!(
        opts.max_inflight_bytes >= opts.max_body_bytes
            && opts.max_inflight_bytes <= u32::MAX as usize,
        "the memory budget for reviews in flight (--max-inflight-bytes {}) must be at least \
         the body limit (--max-body-bytes {}) and at most {} bytes",
        opts.max_inflight_bytes,
        opts.max_body_bytes,
        u32::MAX
    );
    anyhow::ensure!(
        !opts.cert_check_interval.is_zero(),
        "the certificate check interval must be above zero (--cert-check-interval)"
    );
    let metrics = Arc::new(Metrics::new(opts.namespaces.clone()));
    let state = Arc::new(AppState {
        config: opts.config,
        max_body_bytes: opts.max_body_bytes,
        budget: Budget::new(opts.max_inflight_bytes),
        offloaded: Arc::new(Semaphore::new(
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
        )),
        body_read: limits.body_read,
        request_timeout: limits.request,
        ready: Readiness(Arc::new(AtomicBool::new(true))),
        namespaces: opts.namespaces,
        metrics,
    });
    Ok(Server {
        listener,
        local_addr,
        metrics_listener,
        acceptor: TlsAcceptor::from(tls_config),
        certs,
        cert_watch: crate::tls::WatchOptions {
            interval: opts.cert_check_interval,
            ..crate::tls::WatchOptions::default()
        },
        state,
        limits,
        shutdown_delay: opts.shutdown_delay,
    })
}

/// Runs the webhook until SIGTERM or SIGINT, then drains and returns.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    serve_with_limits(opts, Limits::default()).await
}

/// [`serve`] with other limits.
pub async fn serve_with_limits(opts: ServeOptions, limits: Limits) -> anyhow::Result<()> {
    let server = bind_with_limits(opts, limits).await?;
    let addr = server.local_addr();
    tracing::info!(%addr, "listening on {addr}");
    if let Some(metrics) = server.metrics_addr() {
        tracing::info!(%metrics, "metrics at http://{metrics}/metrics");
    }
    let ready = server.readiness();
    let delay = server.shutdown_delay;
    server
        .run(async move {
            let signal = shutdown_signal().await;
            ready.set(false);
            if signal == "SIGTERM" && !delay.is_zero() {
                tracing::info!(
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "readiness off; still serving during the shutdown delay so that the Service stops routing here"
                );
                // A second signal cuts the delay short.
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = shutdown_signal() => {}
                }
            }
        })
        .await
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

    /// The metrics this server updates.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// The address of the metrics endpoint, when one was asked for.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// Accepts connections until `shutdown` completes; then stops accepting,
    /// lets open connections finish their requests (at most
    /// [`Limits::drain`]) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Server {
            listener,
            metrics_listener,
            acceptor,
            certs,
            cert_watch,
            state,
            limits,
            ..
        } = self;
        let ready = state.ready.clone();
        let metrics = state.metrics.clone();
        let router = router(state);
        let builder = Arc::new(http_builder(&limits));
        // `stop` tells connections to finish; `open` counts them: every
        // connection task holds a receiver, and `closed()` resolves when the
        // last one is gone.
        let (stop_tx, stop_rx) = watch::channel(false);
        let (open_tx, open_rx) = watch::channel(());

        let reload_metrics = metrics.clone();
        let _cert_watcher = crate::tls::watch(certs, cert_watch, move |ok| {
            reload_metrics.cert_reload(ok);
        });
        // The metrics endpoint outlives the drain (it is stopped last), so
        // that a scrape can watch in-flight reviews go to zero.
        let (metrics_stop_tx, metrics_stop_rx) = watch::channel(false);
        let metrics_task = metrics_listener.map(|(listener, _)| {
            tokio::spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
                limits.header_read.min(crate::metrics::METRICS_READ_TIMEOUT),
                metrics_stop_rx,
            ))
        });

        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let mut saturated = false;
        tokio::pin!(shutdown);
        loop {
            if slots.available_permits() == 0 && !saturated {
                saturated = true;
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached: new connections wait until one closes (--max-connections)"
                );
            }
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            if saturated && slots.available_permits() > limits.max_connections / 10 {
                saturated = false;
                tracing::info!("connections below the limit again");
            }
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
                _slot: permit,
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
        let _ = metrics_stop_tx.send(true);
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Resolves on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C), naming it.
async fn shutdown_signal() -> &'static str {
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
        "shutting down: readiness off, then no new connections; open ones may finish"
    );
    signal
}

/// HTTP/1.1 with keep-alive and HTTP/2 on the same port, chosen by ALPN (or the
/// HTTP/2 preface). hyper's header timeout is off: `TimedIo` does it.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
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
const H2_WINDOW: u32 = 64 * 1024;

/// Largest request head accepted (the API server's are well under 1 KiB).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// One accepted connection and what it needs.
struct Conn {
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    limits: Limits,
    stop: watch::Receiver<bool>,
    /// Held for the connection's lifetime: the drain waits for all of them.
    _open: watch::Receiver<()>,
    /// The connection's place under [`Limits::max_connections`].
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    /// Serves one connection to its end. Errors end this connection only;
    /// a panic ends this task only (tokio catches it), never the accept loop.
    async fn serve(mut self, tcp: TcpStream, peer: SocketAddr) {
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
        let router = self.router.clone();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let handled = CatchPanic(Box::pin(router.oneshot(request)));
        Box::pin(async move {
            let response = match handled.await {
                Ok(response) => response,
                Err(what) => {
                    tracing::error!(%method, path, status = 500, error = %what, "request handler panicked; the server goes on");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("internal error while handling the request: {what}"),
                    )
                }
            };
            drop(guard);
            Ok(response)
        })
    }
}

/// A future whose panic becomes an `Err` with the panic's message, so that a
/// bug in a handler costs one request (HTTP 500), not the connection.
struct CatchPanic<F>(Pin<Box<F>>);

impl<F, T> Future for CatchPanic<F>
where
    F: Future<Output = Result<T, Infallible>>,
{
    type Output = Result<T, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = &mut self.get_mut().0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Ready(Ok(value))) => Poll::Ready(Ok(value)),
            Ok(Poll::Ready(Err(never))) => match never {},
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

/// Reads the whole body, at most `limit` bytes within `timeout`, charging
/// its bytes to `budget` (the declared length up front, else chunk by
/// chunk); returns the body and its charge.
///
/// Over the limit the answer is 413. On HTTP/2 (`drain` false) that happens
/// at once, the stream is reset cleanly; on HTTP/1.1 the rest of the body is
/// read and dropped first (up to [`DRAIN_CAP`], within the same timeout), so
/// that the client reads the 413 before the connection closes. When the
/// budget stays in use the answer is 503.
async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
    drain: bool,
    budget: &Budget,
    wait: Duration,
) -> Result<(Bytes, Charge), (StatusCode, String)> {
    let mut over = axum::body::HttpBody::size_hint(&body).lower() > limit as u64;
    if over && !drain {
        return Err(too_large(limit));
    }
    let mut charge = Charge::default();
    let read = collect_limited(body, limit, drain, &mut over, budget, wait, &mut charge);
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(Some(bytes))) => Ok((bytes, charge)),
        Ok(Ok(None)) => Err(too_large(limit)),
        Ok(Err(ReadError::Body(e))) => Err((
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
        Ok(Err(ReadError::Budget(e))) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
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

enum ReadError {
    Body(axum::Error),
    Budget(OverBudget),
}

/// The body's bytes, or `None` once it is known to be over `limit` (after
/// draining the rest when asked). `over` says so as soon as it is known, also
/// to a caller whose timeout cut this short. Bytes kept are charged to
/// `budget` before they are read: the declared length at once, any more as
/// chunks come (drained bytes are dropped at once and not charged).
async fn collect_limited(
    mut body: Body,
    limit: usize,
    drain: bool,
    over: &mut bool,
    budget: &Budget,
    wait: Duration,
    charge: &mut Charge,
) -> Result<Option<Bytes>, ReadError> {
    let declared = axum::body::HttpBody::size_hint(&body).lower();
    let declared = usize::try_from(declared).unwrap_or(usize::MAX).min(limit);
    if !*over && declared > 0 {
        charge.add(
            budget
                .charge(declared, wait)
                .await
                .map_err(ReadError::Budget)?,
        );
    }
    let mut buf = Vec::with_capacity(declared);
    let mut drained = 0usize;
    while let Some(frame) = body.frame().await {
        // Trailers carry nothing a review needs.
        let Ok(data) = frame.map_err(ReadError::Body)?.into_data() else {
            continue;
        };
        if !*over && buf.len() + data.len() <= limit {
            let needed = buf.len() + data.len();
            if needed > charge.bytes() {
                let more = budget
                    .charge(needed - charge.bytes(), wait)
                    .await
                    .map_err(ReadError::Budget)?;
                charge.add(more);
            }
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

/// `POST /mutate`: one AdmissionReview, one log line, counted in the metrics.
async fn mutate(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = std::time::Instant::now();
    let _inflight = state.metrics.review_started();
    let mut counted = Abandoned {
        metrics: &state.metrics,
        started,
        answered: false,
    };
    let deadline = review_deadline(state.request_timeout, request.uri().query());
    // What is known of the review when the deadline cuts it short.
    let known = Known::default();
    let handled = tokio::time::timeout(
        deadline,
        review(state.clone(), request, started, deadline, known.clone()),
    )
    .await;
    let (response, mode, outcome) = match handled {
        Ok(done) => done,
        Err(_) => failed(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the review was not answered within its deadline of {:.1} s \
                 (serve --request-timeout, or nine tenths of the API server's timeout)",
                deadline.as_secs_f64()
            ),
            known.get().as_ref(),
            started,
        ),
    };
    counted.answered = true;
    state.metrics.review_done(mode, outcome, started.elapsed());
    response
}

/// Counts (as an error) and logs a review whose handler was dropped before it
/// answered: the client closed the connection or reset the stream, which the
/// API server does when its own timeout passes.
struct Abandoned<'a> {
    metrics: &'a Metrics,
    started: std::time::Instant,
    answered: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        tracing::warn!(
            mode = %MODE_UNKNOWN,
            outcome = %Outcome::Error,
            micros = micros(self.started),
            "review abandoned: the client went away before the answer"
        );
        self.metrics
            .review_done(MODE_UNKNOWN, Outcome::Error, self.started.elapsed());
    }
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
        .and_then(|value| parse_duration(value).ok())
        .filter(|d| !d.is_zero());
    match asked {
        // Integer arithmetic: `mul_f64` panics on overflow.
        Some(asked) => configured.min(asked / 10 * 9),
        None => configured,
    }
}

/// Parses a duration as Go prints it (`10s`, `1m30s`, `500ms`, `1.5s`; units
/// `h`, `m`, `s`, `ms`, `us`, `µs`, `ns`), or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!("invalid duration {text:?}: {why} (expected e.g. 10s, 500ms, 1m30s, or seconds)")
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(bad("empty"));
    }
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad("out of range"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("a number without a unit"))?;
        if number_len == 0 {
            return Err(bad("a unit without a number"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| bad("not a number"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[unit_len..];
        // Checked: `?timeout=` is client input, and a sum of in-range parts
        // can still overflow a Duration (a panic, HTTP 500, before this).
        total = Duration::try_from_secs_f64(number * scale)
            .ok()
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| bad("out of range"))?;
    }
    Ok(total)
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

/// A review answered with an HTTP error (no AdmissionReview): its log line
/// and what the metrics count.
fn failed(
    status: StatusCode,
    message: String,
    known: Option<&Summary>,
    started: std::time::Instant,
) -> (Response, &'static str, Outcome) {
    let field = |f: fn(&Summary) -> &str| known.map(f).unwrap_or("-");
    let (uid, namespace, name, kind) = (
        field(|s| &s.uid),
        field(|s| &s.namespace),
        field(|s| &s.name),
        field(|s| &s.kind),
    );
    let operation = known.map(|s| s.operation).unwrap_or("-");
    if status.is_server_error() {
        tracing::error!(
            uid = %uid,
            namespace = %namespace,
            name = %name,
            kind = %kind,
            operation = %operation,
            mode = %MODE_UNKNOWN,
            outcome = %Outcome::Error,
            status = status.as_u16(),
            error = %message,
            micros = micros(started),
            "review"
        );
    } else {
        tracing::warn!(
            uid = %uid,
            namespace = %namespace,
            name = %name,
            kind = %kind,
            operation = %operation,
            mode = %MODE_UNKNOWN,
            outcome = %Outcome::Error,
            status = status.as_u16(),
            error = %message,
            micros = micros(started),
            "review"
        );
    }
    (text(status, message), MODE_UNKNOWN, Outcome::Error)
}

/// The review's summary once parsed, for the log line of a review that the
/// deadline cuts short (also while it is decided on a blocking thread).
#[derive(Clone, Default)]
struct Known(Arc<Mutex<Option<Summary>>>);

impl Known {
    fn set(&self, summary: &Summary) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(summary.clone());
    }

    fn get(&self) -> Option<Summary> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Bodies above this are parsed and decided on tokio's blocking pool, not
/// on a worker: the worker stays free for `/healthz` and small reviews
/// (SPEC 5: one review never holds a worker for more than milliseconds).
/// The API server's reviews are a few KiB and stay on the fast path.
const OFFLOAD_BYTES: usize = 128 * 1024;

/// Reads one review's body within the budget, then decides and answers it
/// ([`decide`]: on the worker for a small body, on the blocking pool for a
/// large one); `known` receives the review's summary as soon as it is parsed.
async fn review(
    state: Arc<AppState>,
    request: Request,
    started: std::time::Instant,
    deadline: Duration,
    known: Known,
) -> (Response, &'static str, Outcome) {
    if let Some(problem) = content_type_problem(request.headers()) {
        return failed(StatusCode::UNSUPPORTED_MEDIA_TYPE, problem, None, started);
    }
    // Waiting for the budget leaves time to answer within the deadline.
    let wait = BUDGET_WAIT.min(deadline / 2);
    let drain = request.version() < axum::http::Version::HTTP_2;
    let (body, mut charge) = match read_body(
        request.into_body(),
        state.max_body_bytes,
        state.body_read,
        drain,
        &state.budget,
        wait,
    )
    .await
    {
        Ok(read) => read,
        Err((status, message)) => return failed(status, message, None, started),
    };
    // Parsing and deciding hold the typed pod, the patch and the response.
    match state
        .budget
        .charge(state.budget.processing(body.len()), wait)
        .await
    {
        Ok(more) => charge.add(more),
        Err(e) => {
            return failed(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
                None,
                started,
            )
        }
    }
    if body.len() <= OFFLOAD_BYTES {
        return decide(&state, body, charge, started, &known).await;
    }
    // One at a time per CPU: more would only share the same cores (and
    // start more allocator arenas). Waiting here counts against the
    // review's deadline.
    let Ok(slot) = state.offloaded.clone().acquire_owned().await else {
        return internal_error("the blocking pool's gate is closed", None, started);
    };
    // The blocking thread drives the namespace lookup (if any) through the
    // runtime's handle; the charge and the slot go with it and come back when
    // it is done, also when the deadline has answered the client first.
    let handle = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        handle.block_on(decide(&state, body, charge, started, &known))
    });
    match task.await {
        Ok(done) => done,
        Err(e) => internal_error(&e.to_string(), None, started),
    }
}

/// Parses, looks up the namespace, decides and answers one review.
async fn decide(
    state: &AppState,
    body: Bytes,
    mut charge: Charge,
    started: std::time::Instant,
    known: &Known,
) -> (Response, &'static str, Outcome) {
    // The engine is pure code on untrusted input: a bug there must cost one
    // review (HTTP 500, which `failurePolicy` handles), not the connection.
    let parsed = match guarded(|| admission::parse(&body)) {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(e)) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            return failed(status, e.message, None, started);
        }
        Err(what) => return internal_error(&what, None, started),
    };
    // Kept for the log line of an answer that is not an AdmissionReview;
    // read back from `known` only on those (rare) paths, not copied twice.
    known.set(parsed.summary());
    // Namespace policy: labels from the watch-backed cache. When they cannot
    // be had, HTTP 503 lets the API server apply the webhook's failurePolicy
    // (closed for enforced namespaces) instead of nestdock guessing.
    let namespace_name = parsed.pod_namespace().map(str::to_owned);
    // The name is the client's (any pod can call the webhook): checked before
    // any lookup, so that nothing else reaches the cache or the API server's
    // URL. A review whose namespace is not a name is denied (code 400).
    let invalid_namespace = match (&state.namespaces, namespace_name.as_deref()) {
        (Some(_), Some(name)) => crate::namespaces::check_name(name).err(),
        _ => None,
    };
    let namespace_obj;
    let namespace = match (&state.namespaces, namespace_name.as_deref()) {
        _ if invalid_namespace.is_some() => NamespacePolicy::Off,
        (Some(cache), Some(name)) => match cache.get(name).await {
            Ok(found) => {
                namespace_obj = found;
                NamespacePolicy::Labels {
                    namespace: name,
                    labels: crate::namespaces::labels(&namespace_obj),
                }
            }
            Err(e) => {
                return failed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("namespace policy unavailable: {e}"),
                    known.get().as_ref(),
                    started,
                )
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
    let answered = match &invalid_namespace {
        Some(message) => guarded(|| parsed.deny(400, message)),
        None => guarded(|| parsed.answer(&ctx)),
    };
    match answered {
        Ok(Ok(reviewed)) => {
            let s = &reviewed.summary;
            let mode = s.mode.map(|m| m.as_str()).unwrap_or(MODE_UNKNOWN);
            let outcome = Outcome::from(s.verdict);
            tracing::info!(
                uid = %s.uid,
                namespace = %s.namespace,
                name = %s.name,
                kind = %s.kind,
                operation = %s.operation,
                dry_run = s.dry_run,
                mode = %mode,
                outcome = %outcome,
                code = s.code,
                micros = micros(started),
                "review"
            );
            // Only the response stays charged, until it has been written.
            charge.shrink_to(reviewed.body.len());
            let response = (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                Bytes::from_owner(Charged {
                    bytes: reviewed.body,
                    _charge: charge,
                }),
            )
                .into_response();
            (response, mode, outcome)
        }
        Ok(Err(e)) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            failed(status, e.message, known.get().as_ref(), started)
        }
        Err(what) => internal_error(&what, known.get().as_ref(), started),
    }
}

/// Response bytes that keep their share of the [`Budget`] until the last
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

/// Runs `f`, turning a panic into its message.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|panic| panic_message(panic.as_ref()))
}

fn internal_error(
    what: &str,
    known: Option<&Summary>,
    started: std::time::Instant,
) -> (Response, &'static str, Outcome) {
    failed(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error while handling the review: {what}"),
        known,
        started,
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
        request: Duration::from_secs(5),
        max_connections: 64,
        max_streams: 16,
    };

    struct Running {
        addr: SocketAddr,
        ca: Vec<u8>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        done: tokio::task::JoinHandle<anyhow::Result<()>>,
        _dir: tempfile::TempDir,
    }

    async fn start() -> Running {
        start_with(SHORT).await
    }

    async fn start_with(limits: Limits) -> Running {
        start_opts(limits, |_| {}).await
    }

    async fn start_opts(limits: Limits, adjust: impl FnOnce(&mut ServeOptions)) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let bundle = crate::certs::generate("nestdock", "nestdock-system").unwrap();
        bundle.write_to(dir.path()).unwrap();
        let mut opts = ServeOptions {
            max_body_bytes: 1024,
            ..ServeOptions::new(
                "127.0.0.1:0".parse().unwrap(),
                dir.path().join("tls.crt"),
                dir.path().join("tls.key"),
            )
        };
        adjust(&mut opts);
        let server = bind_with_limits(opts, limits).await.unwrap();
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
        connect_to(running.addr, &running.ca, alpn).await
    }

    async fn connect_to(addr: SocketAddr, ca: &[u8], alpn: &[u8]) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca) {
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
        let tcp = TcpStream::connect(addr).await.unwrap();
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

    /// An HTTP/2 client that sends its preface and SETTINGS but never a
    /// request is closed after the header timeout, not the idle one.
    #[tokio::test]
    async fn http2_preface_without_a_request_is_cut_off_after_the_header_timeout() {
        let running = start_with(Limits {
            keep_alive_idle: Duration::from_secs(10),
            ..SHORT
        })
        .await;
        let mut tls = connect(&running, b"h2").await;
        // Preface, then an empty SETTINGS frame (length 0, type 4, flags 0, stream 0).
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let waited = closed_after(&mut tls).await;
        assert!(waited < Duration::from_millis(1500), "{waited:?}");

        // Same over HTTP/1.1 ALPN: nothing sent at all.
        let mut tls = connect(&running, b"http/1.1").await;
        let waited = closed_after(&mut tls).await;
        assert!(waited < Duration::from_millis(1500), "{waited:?}");
    }

    /// SPEC 5's 200 MiB with the default limits: the process (~20 MiB),
    /// every connection at its measured ~32 KiB plus what a client can make
    /// it buffer unread (the HTTP/2 window; hyper's HTTP/1 read buffer is
    /// capped at the same 64 KiB), and the request budget. With 4096
    /// connections and hyper's 1 MiB windows this was over 4 GiB.
    #[test]
    fn default_limits_fit_the_memory_bound() {
        const MIB: usize = 1024 * 1024;
        let limits = Limits::default();
        let per_connection = 32 * 1024 + (H2_WINDOW as usize).max(MAX_HEADER_BYTES);
        let total = 20 * MIB + limits.max_connections * per_connection + DEFAULT_MAX_INFLIGHT_BYTES;
        assert!(total <= 180 * MIB, "{} MiB", total / MIB);
    }

    #[tokio::test]
    async fn budget_charges_add_shrink_and_come_back_when_dropped() {
        let budget = Budget::new(1000);
        let wait = Duration::from_millis(50);
        let mut charge = budget.charge(300, wait).await.unwrap();
        charge.add(budget.charge(200, wait).await.unwrap());
        assert_eq!((charge.bytes(), budget.available()), (500, 500));
        // More than is free: waits, then says what it wanted and the flag.
        let err = budget.charge(600, wait).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("600 bytes") && text.contains("1000 bytes"),
            "{text}"
        );
        assert!(text.contains("--max-inflight-bytes"), "{text}");
        charge.shrink_to(100);
        assert_eq!((charge.bytes(), budget.available()), (100, 900));
        // Waiting ends as soon as the bytes come back.
        let waiting = budget.charge(950, Duration::from_secs(5));
        let release = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(charge);
        };
        let (got, ()) = tokio::join!(waiting, release);
        assert_eq!(got.unwrap().bytes(), 950);
        assert_eq!(budget.available(), 1000);
        // One request never asks for more than the whole budget, and the
        // processing share leaves room for the body.
        assert_eq!(budget.charge(5000, wait).await.unwrap().bytes(), 1000);
        assert_eq!(budget.processing(10), 320);
        assert_eq!(budget.processing(100), 900);
        assert_eq!(Budget::new(1 << 30).processing(6 << 10), 192 << 10);
        assert_eq!(Budget::new(1 << 30).processing(8 << 20), PROCESSING_CAP);
        assert_eq!(budget.charge(0, wait).await.unwrap().bytes(), 0);
    }

    /// Two clients that declared large bodies hold the whole budget: a third
    /// review waits, then gets a 503 naming the budget and its flag; once the
    /// two go away (mid-body), the budget is whole again.
    #[tokio::test]
    async fn reviews_past_the_memory_budget_wait_then_get_503() {
        let running = start_opts(
            Limits {
                body_read: Duration::from_secs(5),
                request: Duration::from_secs(2),
                ..SHORT
            },
            |o| o.max_inflight_bytes = 2048,
        )
        .await;
        let mut holders = Vec::new();
        for _ in 0..2 {
            let mut tls = connect(&running, b"http/1.1").await;
            tls.write_all(
                b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1024\r\n\r\n{\"api",
            )
            .await
            .unwrap();
            holders.push(tls);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let small = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}";
        let mut tls = connect(&running, b"http/1.1").await;
        let start = Instant::now();
        tls.write_all(small).await.unwrap();
        let response = read_response(&mut tls).await.expect("a response");
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
        assert!(
            response.contains("memory budget") && response.contains("--max-inflight-bytes"),
            "{response}"
        );
        // It waited (half the 2 s deadline), but not for the deadline.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_millis(1900),
            "{waited:?}"
        );
        // The holders go away mid-body: their charges come back.
        drop(holders);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut tls = connect(&running, b"http/1.1").await;
        let start = Instant::now();
        tls.write_all(small).await.unwrap();
        let response = read_response(&mut tls).await.expect("a response");
        // `{}` is not a review: 400, at once.
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        assert!(start.elapsed() < Duration::from_millis(500));
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

    #[tokio::test]
    async fn slow_review_gets_503_at_the_deadline() {
        let running = start_with(Limits {
            request: Duration::from_millis(200),
            body_read: Duration::from_secs(5),
            ..SHORT
        })
        .await;
        let mut tls = connect(&running, b"http/1.1").await;
        tls.write_all(
            b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"apiVersion\"",
        )
        .await
        .unwrap();
        let response = read_response(&mut tls).await.expect("a response");
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
        assert!(response.contains("deadline of 0.2 s"), "{response}");
    }

    #[tokio::test]
    async fn plain_http_on_the_tls_port_gets_a_readable_400() {
        let running = start().await;
        let mut tcp = TcpStream::connect(running.addr).await.unwrap();
        tcp.write_all(HEALTHZ).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer))
            .await
            .expect("answered and closed within 5 s")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("HTTPS"), "{answer}");
        // TLS clients are still served.
        let mut tls = connect(&running, b"http/1.1").await;
        tls.write_all(HEALTHZ).await.unwrap();
        assert!(read_response(&mut tls)
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_for_a_slot() {
        let running = start_with(Limits {
            max_connections: 2,
            handshake: Duration::from_secs(5),
            header_read: Duration::from_secs(5),
            ..SHORT
        })
        .await;
        let mut first = connect(&running, b"http/1.1").await;
        let _second = connect(&running, b"http/1.1").await;
        // The third is queued by the kernel, not served: no handshake yet.
        let third = tokio::spawn({
            let (addr, ca) = (running.addr, running.ca.clone());
            async move { connect_to(addr, &ca, b"http/1.1").await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !third.is_finished(),
            "a third connection was served over the cap"
        );
        // Closing one lets it in.
        first
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut first).await.is_some());
        drop(first);
        let mut third = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("served once a slot was free")
            .unwrap();
        third.write_all(HEALTHZ).await.unwrap();
        assert!(read_response(&mut third)
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn a_panicking_handler_costs_one_request() {
        let ok = CatchPanic(Box::pin(async { Ok::<_, Infallible>(1) })).await;
        assert_eq!(ok, Ok(1));
        let panicked = CatchPanic(Box::pin(async {
            if std::hint::black_box(true) {
                panic!("boom in a handler");
            }
            Ok::<u8, Infallible>(0)
        }))
        .await;
        assert_eq!(panicked, Err("boom in a handler".to_string()));
    }

    #[test]
    fn durations_and_deadlines() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in ["", "s", "10x", "ten", "-1"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
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
    }

    #[test]
    fn huge_and_hostile_durations_are_errors_not_panics() {
        // Each part fits a Duration; their sum does not (was a panic: HTTP 500).
        let sum = "10000000000000000000s10000000000000000000s";
        let err = parse_duration(sum).unwrap_err();
        assert!(err.contains("out of range") && err.contains("10s"), "{err}");
        for bad in [
            "1e400",
            "1e400s",
            "99999999999999999999999h",
            "18446744073709551615s1ns",
            "NaN",
            "inf",
            "-inf",
            "1..2s",
            ".s",
            "1s.",
            "µ",
            "1µ",
            "\u{0}",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let nine = Duration::from_secs(9);
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
        assert_eq!(
            review_deadline(nine, Some("timeout=18446744073709551615s")),
            nine
        );
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
