//! The webhook's HTTPS server (docs/architecture.md, *The request path*),
//! a file per concern:
//!
//! - [`transport`]: connections: TLS, HTTP/1.1 and HTTP/2 on one port, the
//!   time limits and the connection cap (bespoke, and why, in its doc);
//! - [`app`]: what the handlers share, the probes and the fallbacks, and the
//!   one error type of the request path;
//! - [`review`]: `POST /mutate`, one review from body to answer, with
//!   [`body`] (the body within its limits) and [`budget`] (the memory bound);
//! - here: binding, the accept loop, the route table and shutdown.
//!
//! Shutdown (SIGTERM): `/readyz` turns 503 at once, connections keep being
//! served for [`ServeOptions::shutdown_delay`] (5 s) while the endpoints
//! controller takes the pod out of the Service (a listener closed right away
//! would refuse the connections still routed here), then the listener closes,
//! idle connections are closed, in-flight requests finish (at most
//! [`Limits::drain`], 20 s) and the process exits 0. SIGINT skips the delay.

mod app;
mod body;
mod budget;
mod review;
mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

pub use app::{App, AppOptions, Readiness};
pub use budget::{Budget, Charge, OverBudget, DEFAULT_MAX_INFLIGHT_BYTES};
#[doc(hidden)] // public for the fuzz target `query` only
pub use review::{content_type_problem, content_type_problem_of, review_deadline};
pub use transport::Limits;

use crate::config::Config;
use crate::namespaces::NamespaceSource;
use crate::tls::CertResolver;
use transport::{http_builder, Conn};

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
    pub namespaces: Option<Arc<dyn NamespaceSource>>,
    /// Address of the plain-HTTP Prometheus endpoint; `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// How often the certificate files are compared with what is served, in
    /// case a file event was missed (events trigger a check at once).
    pub cert_check_interval: Duration,
    /// After SIGTERM, how long connections keep being accepted with `/readyz`
    /// false, so that the Service stops routing here first.
    pub shutdown_delay: Duration,
    /// Time and size limits of connections and requests.
    pub limits: Limits,
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
            limits: Limits::default(),
        }
    }
}

/// Default request body limit: above axum's 2 MiB, since an UPDATE review
/// carries two objects.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// A bound, not yet running server. [`Server::bind`] then [`Server::run`]; in
/// between, [`Server::local_addr`] tells the port when port 0 was asked for.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics_listener: Option<(TcpListener, SocketAddr)>,
    acceptor: TlsAcceptor,
    certs: Arc<CertResolver>,
    cert_watch: crate::tls::WatchOptions,
    app: Arc<App>,
    limits: Limits,
    shutdown_delay: Duration,
}

impl Server {
    /// Loads the certificate and binds the listeners. Fails (naming the
    /// file, the address or the flag) before anything is served.
    pub async fn bind(opts: ServeOptions) -> anyhow::Result<Server> {
        let limits = opts.limits;
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
        let app = App::new(AppOptions {
            config: opts.config,
            namespaces: opts.namespaces,
            max_body_bytes: opts.max_body_bytes,
            max_inflight_bytes: opts.max_inflight_bytes,
            body_read: limits.body_read,
            request_timeout: limits.request,
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
            app,
            limits,
            shutdown_delay: opts.shutdown_delay,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The handle that flips `/readyz`.
    pub fn readiness(&self) -> Readiness {
        self.app.readiness()
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
            app,
            limits,
            ..
        } = self;
        let ready = app.readiness();
        let metrics = app.metrics().clone();
        let router = router(app);
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
/// Runs the webhook until SIGTERM or SIGINT, then drains and returns.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let server = Server::bind(opts).await?;
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

/// The routes. `/mutate` is matched on the path only: the API server appends
/// `?timeout=10s`. Public so that the review contract can be tested
/// in-process (`tower::ServiceExt::oneshot`, tests/review.rs); the
/// transport serves this same router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/mutate", post(review::mutate))
        .route("/healthz", get(app::healthz))
        .route("/readyz", get(app::readyz))
        .fallback(app::not_found)
        .method_not_allowed_fallback(app::method_not_allowed)
        .with_state(app)
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

#[cfg(test)]
mod tests;
