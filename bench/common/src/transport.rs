//! The HTTPS transport of the floor and the baseline servers: the same stack
//! and the same tuning as `nestdock serve` (`src/server.rs`), so that the
//! benchmark compares request paths and nothing else.
//!
//! Same as nestdock: an accept loop of its own, `TCP_NODELAY` on every
//! accepted socket, a 10 s TLS handshake limit, tokio-rustls with the server
//! configuration built by `nestdock::tls::load` (ring, TLS 1.3 and 1.2, ALPN
//! `h2` then `http/1.1`, the certificate `nestdock certs` writes), and
//! hyper-util's auto builder with the same HTTP/1.1 and HTTP/2 settings, a
//! multi-thread tokio runtime (one worker per core the process may use).
//!
//! Left out, because a floor does only what a server must: nestdock's
//! per-connection header-read and keep-alive idle timers (`TimedIo`), the
//! in-flight request accounting and graceful drain on SIGTERM (here SIGTERM
//! simply ends the process).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The body limit of all three servers: nestdock's `--max-body-bytes` default.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Command line of the floor and the baseline:
/// `--listen ADDR --tls-cert FILE --tls-key FILE`.
#[derive(Debug, Clone)]
pub struct Args {
    pub listen: SocketAddr,
    pub tls_cert: std::path::PathBuf,
    pub tls_key: std::path::PathBuf,
}

impl Args {
    /// Reads the arguments of the process; exits 2 with a usage line on error.
    pub fn from_env(program: &str) -> Args {
        let usage = || -> ! {
            eprintln!("usage: {program} --listen ADDR --tls-cert FILE --tls-key FILE");
            std::process::exit(2)
        };
        let mut listen = None;
        let mut cert = None;
        let mut key = None;
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().unwrap_or_else(|| usage());
            match flag.as_str() {
                "--listen" => listen = Some(value.parse().unwrap_or_else(|_| usage())),
                "--tls-cert" => cert = Some(value.into()),
                "--tls-key" => key = Some(value.into()),
                _ => usage(),
            }
        }
        match (listen, cert, key) {
            (Some(listen), Some(tls_cert), Some(tls_key)) => Args {
                listen,
                tls_cert,
                tls_key,
            },
            _ => usage(),
        }
    }
}

/// Builds the runtime nestdock builds and serves `router` on it forever.
pub fn run(args: Args, router: Router) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(router, args.listen, &args.tls_cert, &args.tls_key))
}

/// Accepts connections on `listen` and serves `router` on each, forever.
pub async fn serve(
    router: Router,
    listen: SocketAddr,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    let (tls_config, _resolver) = nestdock::tls::load(cert, key)?;
    let acceptor = TlsAcceptor::from(tls_config);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("listening on {}", listener.local_addr()?);
    let builder = Arc::new(http_builder());
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _peer)) => tcp,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    _ => return,
                };
            let service = TowerToHyperService::new(router);
            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

/// nestdock's `http_builder` (src/server.rs), setting for setting.
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
