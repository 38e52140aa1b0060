//! The server in-process: the time limits with short values (the integration tests in
//! `tests/server.rs` drive the real binary with the real ones).
use super::transport::{H2_WINDOW, MAX_HEADER_BYTES};
use super::*;
use axum::body::Bytes;
use axum::http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
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
    opts.limits = limits;
    let server = Server::bind(opts).await.unwrap();
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

/// The 200 MiB peak the product promises, with the default limits: the process (~20 MiB),
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
