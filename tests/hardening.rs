//! Production hardening of `nestdock serve` (docs/behaviour.md, *The server*), against the real
//! binary over real TLS: what needs a socket: oversized bodies and heads on
//! the wire, slow and stalled clients, plain HTTP and garbage on the TLS
//! port, certificate rotation by a Secret-volume symlink swap, SIGTERM with
//! reviews in flight, a bounded load test, logs and the metrics endpoint.
//!
//! Bodies that are not reviews (malformed, wrong version or shape, wrong
//! Content-Type) are the review contract: tests/review.rs, in-process. Servers here run with `--read-timeout 2s` so that the slow-client
//! tests take seconds, not the default 10 s.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::harness::{
    admit, assert_denied, assert_unchanged, check_envelope, decode_patch, expect_injected, pod,
    pod_create, review, tls_connect, watch_logs, Client, Keeper, Proto, Serve, Served, SERVER_NAME,
};
use http_body_util::BodyExt as _;
use hyper::body::{Bytes, Frame};
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The read timeout of the servers in this file (handshake, headers, body).
const READ_TIMEOUT: Duration = Duration::from_secs(2);

fn hardening_args() -> [&'static str; 4] {
    ["--read-timeout", "2s", "--metrics-listen", "127.0.0.1:0"]
}

/// A server shared by the bad-input tests.
fn server() -> &'static Served {
    static S: OnceLock<(Served, Keeper)> = OnceLock::new();
    &S.get_or_init(|| Serve::new().args(hardening_args()).spawn_shared())
        .0
}

/// The address in the "metrics at http://ADDR/metrics" log line.
fn metrics_addr(served: &Served) -> SocketAddr {
    let line = served.wait_for_log(&["metrics at http://"]);
    let rest = &line[line.find("metrics at http://").unwrap() + "metrics at http://".len()..];
    rest[..rest.find('/').unwrap()]
        .parse()
        .unwrap_or_else(|e| panic!("no address in {line:?}: {e}"))
}

/// The whole review contract on one dind pod, over both protocols: a patch
/// that applies, a patched pod that satisfies the invariants, no second patch.
async fn still_serves(served: &Served) {
    for proto in [Proto::H1, Proto::H2] {
        let pod = pod("after-bad-input", &[("nestdock.io/mode", "dind")]);
        let (patched, _) = expect_injected(served, proto, &pod).await;
        assert_eq!(
            patched["spec"]["initContainers"][0]["name"],
            "nestdock-dind"
        );
    }
}

fn dind_review() -> (String, Value) {
    pod_create(&pod("builder", &[("nestdock.io/mode", "dind")]))
}

// ---------------------------------------------------------------- raw HTTP/1.1

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// An HTTP/1.1 response read off a raw stream.
#[derive(Debug)]
struct RawReply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawReply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response (headers and a Content-Length body); `None` when the
/// connection closes first.
async fn read_reply(stream: &mut (impl AsyncRead + Unpin)) -> Option<RawReply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().expect("content-length"))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("a status code");
                let body = buf[end + 4..end + 4 + length].to_vec();
                return Some(RawReply { status, head, body });
            }
        }
        match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no response and no close within 15 s"),
        }
    }
}

/// A request head for `POST path` with a JSON body of `length` bytes.
fn post_head(path: &str, length: usize, content_type: Option<&str>) -> Vec<u8> {
    let mut head =
        format!("POST {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Length: {length}\r\n");
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Waits until the peer closes the stream; returns how long that took.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> Duration {
    let start = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + limit).into(), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("still open after {limit:?}"),
        }
    }
}

/// Writes `bytes` one at a time, `gap` apart, until the peer stops taking
/// them; returns how many were written.
async fn trickle(stream: &mut (impl AsyncWrite + Unpin), bytes: &[u8], gap: Duration) -> usize {
    for (i, b) in bytes.iter().enumerate() {
        if stream.write_all(&[*b]).await.is_err() || stream.flush().await.is_err() {
            return i;
        }
        tokio::time::sleep(gap).await;
    }
    bytes.len()
}

/// The bytes of a real TLS ClientHello for [`SERVER_NAME`].
fn client_hello() -> Vec<u8> {
    let config = Arc::new(common::harness::client_config(&[b"http/1.1"]));
    let mut conn =
        rustls::ClientConnection::new(config, ServerName::try_from(SERVER_NAME).unwrap())
            .expect("client connection");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("ClientHello");
    hello
}

#[tokio::test]
async fn twenty_mib_body_is_413_on_both_protocols() {
    let served = server();
    let (_, review) = dind_review();
    // A review padded to 20 MiB: valid JSON, just too big.
    let mut big = serde_json::to_vec(&review).unwrap();
    big.truncate(big.len() - 1);
    big.extend_from_slice(b",\"padding\":\"");
    big.resize(20 * 1024 * 1024 - 2, b'x');
    big.extend_from_slice(b"\"}");
    for proto in [Proto::H1, Proto::H2] {
        let mut client = Client::connect(served, proto).await;
        let reply = client.send(Method::POST, "/mutate", big.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{proto:?}: {}",
            reply.text()
        );
        assert!(reply.text().contains("8388608 bytes"), "{}", reply.text());
        assert!(
            reply.text().contains("--max-body-bytes"),
            "{}",
            reply.text()
        );
    }
    // A declared length over the limit is refused before any body is sent.
    let mut tls = tls_connect(served.addr, &[b"http/1.1"]).await;
    tls.write_all(&post_head(
        "/mutate",
        20 * 1024 * 1024,
        Some("application/json"),
    ))
    .await
    .unwrap();
    let reply = read_reply(&mut tls).await.expect("a reply before the body");
    assert_eq!(reply.status, 413);
    still_serves(served).await;
}

// ---------------------------------------------------------------- slow clients

#[tokio::test]
async fn one_byte_per_second_clients_are_cut_off_while_others_are_served() {
    let served = server();
    let gap = Duration::from_secs(1);
    let limit = READ_TIMEOUT + Duration::from_secs(3);

    // Headers, one byte a second: closed after the read timeout.
    let headers = async {
        let mut tls = tls_connect(served.addr, &[b"http/1.1"]).await;
        let head = post_head("/mutate", 10, Some("application/json"));
        let start = Instant::now();
        let sent = trickle(&mut tls, &head, gap).await;
        assert!(sent < head.len(), "all {sent} header bytes were taken");
        let waited = closed_within(&mut tls, limit).await + start.elapsed();
        assert!(waited < limit * 2, "{waited:?}");
    };
    // Body, one byte a second: 408 after the read timeout.
    let body = async {
        let tls = tls_connect(served.addr, &[b"http/1.1"]).await;
        let (mut rx, mut tx) = tokio::io::split(tls);
        let (_, review) = dind_review();
        let json = serde_json::to_vec(&review).unwrap();
        tx.write_all(&post_head("/mutate", json.len(), Some("application/json")))
            .await
            .unwrap();
        let start = Instant::now();
        let reply = tokio::select! {
            reply = read_reply(&mut rx) => reply.expect("a reply"),
            _ = trickle(&mut tx, &json, gap) => panic!("the whole slow body was taken"),
        };
        assert_eq!(reply.status, 408, "{}", reply.text());
        assert!(
            reply.text().contains("did not arrive within 2"),
            "{}",
            reply.text()
        );
        assert!(start.elapsed() < limit, "{:?}", start.elapsed());
    };
    // The same with the API server's `?timeout=1s`: the review's deadline
    // (nine tenths of it) comes first, 503.
    let deadline = async {
        let tls = tls_connect(served.addr, &[b"http/1.1"]).await;
        let (mut rx, mut tx) = tokio::io::split(tls);
        let (_, review) = dind_review();
        let json = serde_json::to_vec(&review).unwrap();
        tx.write_all(&post_head(
            "/mutate?timeout=1s",
            json.len(),
            Some("application/json"),
        ))
        .await
        .unwrap();
        let reply = tokio::select! {
            reply = read_reply(&mut rx) => reply.expect("a reply"),
            _ = trickle(&mut tx, &json, gap) => panic!("the whole slow body was taken"),
        };
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(
            reply.text().contains("deadline of 0.9 s"),
            "{}",
            reply.text()
        );
    };
    // The TLS handshake, one byte a second: closed after the read timeout.
    let handshake = async {
        let mut tcp = TcpStream::connect(served.addr).await.unwrap();
        let hello = client_hello();
        let start = Instant::now();
        let sent = trickle(&mut tcp, &hello, gap).await;
        assert!(sent < hello.len(), "the whole ClientHello was taken");
        let waited = start.elapsed();
        assert!(waited < limit * 2, "{waited:?}");
    };
    // Meanwhile reviews are answered at once.
    let others = async {
        for _ in 0..3 {
            let start = Instant::now();
            still_serves(served).await;
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{:?}",
                start.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::join!(headers, body, deadline, handshake, others);
    still_serves(served).await;
}

#[tokio::test]
async fn tls_clients_that_stop_mid_handshake_are_cut_off() {
    let served = server();
    let hello = client_hello();
    let limit = READ_TIMEOUT + Duration::from_secs(3);
    // Half a ClientHello, then nothing.
    let mut half = TcpStream::connect(served.addr).await.unwrap();
    half.write_all(&hello[..hello.len() / 2]).await.unwrap();
    // A whole ClientHello, the server's answer read, then nothing.
    let mut whole = TcpStream::connect(served.addr).await.unwrap();
    whole.write_all(&hello).await.unwrap();
    let mut first = [0u8; 5];
    whole
        .read_exact(&mut first)
        .await
        .expect("the server answers the hello");
    assert_eq!(first[0], 0x16, "a TLS handshake record");
    // Connected, not a byte sent.
    let mut silent = TcpStream::connect(served.addr).await.unwrap();
    // Served meanwhile.
    still_serves(served).await;
    for (what, stream) in [
        ("half", &mut half),
        ("whole", &mut whole),
        ("silent", &mut silent),
    ] {
        let waited = closed_within(stream, limit).await;
        assert!(waited < limit, "{what}: {waited:?}");
    }
    still_serves(served).await;
}

/// Connections that complete TLS but never a request head are closed after
/// the header timeout on both protocols; an HTTP/2 preface (and SETTINGS)
/// alone used to hold a slot for the 120 s keep-alive idle timeout.
#[tokio::test]
async fn connections_that_never_send_a_request_close_after_the_header_timeout() {
    let served = server();
    let limit = READ_TIMEOUT + Duration::from_secs(2);
    let mut h2 = tls_connect(served.addr, &[b"h2"]).await;
    // The client preface, then an empty SETTINGS frame: what an HTTP/2
    // client sends before its first request.
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut h1 = tls_connect(served.addr, &[b"http/1.1"]).await;
    let mut no_alpn = tls_connect(served.addr, &[]).await;
    for (what, stream) in [("h2", &mut h2), ("h1", &mut h1), ("no ALPN", &mut no_alpn)] {
        let waited = closed_within(stream, limit).await;
        assert!(waited < limit, "{what}: {waited:?}");
    }
    still_serves(served).await;
}

/// Idle TCP connections on the metrics port neither delay a scrape (64 used
/// to take every slot, and the scrape waited 9.5 s) nor stay open past the
/// header timeout.
#[tokio::test]
async fn idle_connections_on_the_metrics_port_do_not_delay_a_scrape() {
    let served = server();
    let addr = metrics_addr(served);
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Let the server accept them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let s = scrape(addr, false).await;
    let took = start.elapsed();
    assert!(
        s.text.contains("nestdock_review_duration_seconds"),
        "{}",
        s.text
    );
    assert!(took < Duration::from_secs(1), "scrape took {took:?}");
    // They are closed after the header timeout (2 s at most on this port).
    let limit = Duration::from_secs(4);
    for stream in idle.iter_mut().take(5) {
        let waited = closed_within(stream, limit).await;
        assert!(waited < limit, "{waited:?}");
    }
}

#[tokio::test]
async fn plain_http_and_garbage_on_the_tls_port() {
    let served = server();
    // Plain HTTP gets a readable 400 that says what is wrong.
    let mut tcp = TcpStream::connect(served.addr).await.unwrap();
    tcp.write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let reply = read_reply(&mut tcp).await.expect("a plain-text reply");
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(reply.text().contains("HTTPS"), "{}", reply.text());
    closed_within(&mut tcp, Duration::from_secs(5)).await;
    // Bytes that are neither HTTP nor TLS: the connection is closed.
    let mut tcp = TcpStream::connect(served.addr).await.unwrap();
    tcp.write_all(&[0x00, 0xff, 0x13, 0x37, 0x0a, 0x0d, 0x00, 0x01])
        .await
        .unwrap();
    closed_within(&mut tcp, Duration::from_secs(5)).await;
    // A TLS record of the wrong type.
    let mut tcp = TcpStream::connect(served.addr).await.unwrap();
    tcp.write_all(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    closed_within(&mut tcp, Duration::from_secs(5)).await;
    still_serves(served).await;
}

#[tokio::test]
async fn unknown_paths_methods_and_oversized_heads() {
    let served = server();
    let long_path = format!("/{}", "a".repeat(8000));
    let cases: [(Method, &str, StatusCode); 9] = [
        (Method::GET, "/", StatusCode::NOT_FOUND),
        (Method::POST, "/mutate/", StatusCode::NOT_FOUND),
        (Method::POST, "/validate", StatusCode::NOT_FOUND),
        (Method::GET, "/metrics", StatusCode::NOT_FOUND),
        (Method::GET, &long_path, StatusCode::NOT_FOUND),
        (Method::PUT, "/mutate", StatusCode::METHOD_NOT_ALLOWED),
        (Method::DELETE, "/healthz", StatusCode::METHOD_NOT_ALLOWED),
        (Method::PATCH, "/readyz", StatusCode::METHOD_NOT_ALLOWED),
        (Method::OPTIONS, "/mutate", StatusCode::METHOD_NOT_ALLOWED),
    ];
    for proto in [Proto::H1, Proto::H2] {
        let mut client = Client::connect(served, proto).await;
        for (method, path, status) in &cases {
            let reply = client.send(method.clone(), path, Bytes::new()).await;
            assert_eq!(reply.status, *status, "{method} {:.40} {proto:?}", path);
            assert!(!reply.text().is_empty());
        }
    }
    let reply =
        common::harness::request(served, Proto::H1, Method::HEAD, "/healthz", Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::OK);
    // A request head over 64 KiB is refused (431) or the connection closed.
    let mut tls = tls_connect(served.addr, &[b"http/1.1"]).await;
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(100 * 1024)
    );
    let _ = tls.write_all(huge.as_bytes()).await;
    if let Some(reply) = read_reply(&mut tls).await {
        assert_eq!(reply.status, 431, "{}", reply.head);
    }
    // An HTTP/1.1 request line that is not HTTP.
    let mut tls = tls_connect(served.addr, &[b"http/1.1"]).await;
    tls.write_all(b"\x01\x02 nonsense\r\n\r\n").await.unwrap();
    if let Some(reply) = read_reply(&mut tls).await {
        assert_eq!(reply.status, 400, "{}", reply.head);
    }
    still_serves(served).await;
}

#[tokio::test]
async fn logs_carry_the_review_but_never_env_values() {
    let served = server();
    let secret = "hunter2-do-not-log-9f8e7d";
    let mut pod = pod("secretive", &[("nestdock.io/mode", "dind")]);
    pod["spec"]["containers"][0]["env"] = json!([{"name": "TOKEN", "value": secret}]);
    pod["metadata"]["name"] = json!("");
    pod["metadata"]["generateName"] = json!("secretive-job-");
    let (uid, mut review) = pod_create(&pod);
    review["request"]["name"] = json!("");
    let response = admit(served, Proto::H1, &uid, &review).await;
    decode_patch(&response);
    let line = served.wait_for_log(&[&uid]);
    for field in [
        "namespace=ci",
        "object=secretive-job-",
        "mode=dind",
        "outcome=injected",
        "micros=",
    ] {
        assert!(line.contains(field), "{field} missing from: {line}");
    }
    // A refused review is one line too, with the reason.
    let reply =
        common::harness::request(served, Proto::H1, Method::POST, "/mutate", "{\"oops\"").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    served.wait_for_log(&["outcome=error", "status=400", "malformed JSON"]);
    assert!(
        !served.log_text().contains(secret),
        "an env value reached the log"
    );
}

// ---------------------------------------------------------------- own servers

/// A `nestdock serve` started by one test with its own arguments, killed
/// (and reaped) when dropped.
struct Own {
    child: Reaper,
    served: Served,
}

/// Kills and reaps the child when dropped (also when a test panics).
struct Reaper(Arc<Mutex<Child>>);

impl Drop for Reaper {
    fn drop(&mut self) {
        let mut child = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Own {
    fn start(cert: &Path, key: &Path, extra: &[&str]) -> Own {
        let mut cmd = Command::new(common::bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--kube=false"])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .args(hardening_args())
            .args(extra)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn nestdock serve");
        let stderr = child.stderr.take().expect("stderr");
        let reaper = Reaper(Arc::new(Mutex::new(child)));
        let watched = reaper.0.clone();
        let (addr, logs) = watch_logs(stderr, move || {
            watched
                .lock()
                .unwrap()
                .try_wait()
                .ok()
                .flatten()
                .map(|s| s.to_string())
        });
        Own {
            child: reaper,
            served: Served {
                addr,
                logs,
                config: nestdock::config::Config::default(),
            },
        }
    }

    /// With the shared test certificates.
    fn default_certs(extra: &[&str]) -> Own {
        let dir = common::harness::certs_dir();
        Own::start(&dir.join("tls.crt"), &dir.join("tls.key"), extra)
    }

    fn signal(&self, name: &str) {
        let pid = self.child.0.lock().unwrap().id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (at most `limit`).
    async fn exit_status(&self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.0.lock().unwrap().try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}:\n{}",
                self.served.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl std::ops::Deref for Own {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.served
    }
}

// ---------------------------------------------------------------- metrics

/// One scrape: the samples (`name{labels}` to value) and the raw text.
struct Scrape {
    text: String,
    samples: Vec<(String, f64)>,
}

impl Scrape {
    fn value(&self, series: &str) -> f64 {
        self.samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no sample {series} in:\n{}", self.text))
    }

    fn get(&self, series: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
    }
}

/// Parses the Prometheus / OpenMetrics text format: every line is a comment
/// (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) or `series value`.
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
        };
        samples.push((series.to_string(), value));
    }
    samples
}

/// `GET /metrics` over plain HTTP/1.1; `openmetrics` sets Prometheus's Accept.
async fn scrape(addr: SocketAddr, openmetrics: bool) -> Scrape {
    let mut tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the metrics port");
    let accept = if openmetrics {
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    } else {
        "*/*"
    };
    tcp.write_all(
        format!(
            "GET /metrics HTTP/1.1\r\nHost: m\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let reply = read_reply(&mut tcp).await.expect("a metrics reply");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let content_type = reply
        .head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .expect("a content type");
    if openmetrics {
        assert!(
            content_type.starts_with("application/openmetrics-text; version=1.0.0"),
            "{content_type}"
        );
        assert!(reply.text().ends_with("# EOF\n"), "{}", reply.text());
    } else {
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
    }
    let text = reply.text();
    Scrape {
        samples: parse_exposition(&text),
        text,
    }
}

/// Polls the metrics until `series` has `value` (at most `limit`).
async fn wait_for_metric(addr: SocketAddr, series: &str, value: f64, limit: Duration) -> Scrape {
    let deadline = Instant::now() + limit;
    loop {
        let s = scrape(addr, false).await;
        if s.get(series) == Some(value) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {:?}, not {value}, after {limit:?}:\n{}",
            s.get(series),
            s.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reviews(mode: &str, outcome: &str) -> String {
    format!("nestdock_reviews_total{{mode=\"{mode}\",outcome=\"{outcome}\"}}")
}

#[tokio::test]
async fn metrics_after_a_known_sequence_of_reviews() {
    let own = Own::default_certs(&[]);
    let metrics = metrics_addr(&own);
    let before = scrape(metrics, true).await;
    assert_eq!(before.value("nestdock_inflight_reviews"), 0.0);
    assert_eq!(before.value("nestdock_review_duration_seconds_count"), 0.0);
    assert_eq!(
        before.value("nestdock_cert_reloads_total{result=\"success\"}"),
        0.0
    );
    assert_eq!(
        before.value("nestdock_cert_reloads_total{result=\"failure\"}"),
        0.0
    );
    // Namespace policy is off (--kube=false): no cache, no gauge.
    assert!(
        !before.text.contains("nestdock_namespace_cache_ready"),
        "{}",
        before.text
    );

    // 2 injected (HTTP/1.1 and HTTP/2), 1 unchanged, 1 dood denied, 1
    // skipped (a ConfigMap), 2 errors (malformed JSON, an oversized body).
    for proto in [Proto::H1, Proto::H2] {
        let (uid, review) = dind_review();
        decode_patch(&admit(&own, proto, &uid, &review).await);
    }
    let (uid, review) = pod_create(&pod("plain", &[]));
    assert_unchanged(&admit(&own, Proto::H1, &uid, &review).await);
    let (uid, review) = pod_create(&pod("dood", &[("nestdock.io/mode", "dood")]));
    assert_denied(&admit(&own, Proto::H1, &uid, &review).await, 403);
    let (uid, review) = review_of_config_map();
    assert_unchanged(&admit(&own, Proto::H1, &uid, &review).await);
    let reply = common::harness::request(&own, Proto::H1, Method::POST, "/mutate", "{").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = common::harness::request(
        &own,
        Proto::H2,
        Method::POST,
        "/mutate",
        vec![b' '; 9 << 20],
    )
    .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Not reviews: not counted.
    common::harness::request(&own, Proto::H1, Method::GET, "/healthz", Bytes::new()).await;
    common::harness::request(&own, Proto::H1, Method::GET, "/nope", Bytes::new()).await;

    for openmetrics in [true, false] {
        let after = scrape(metrics, openmetrics).await;
        assert_eq!(after.value(&reviews("dind", "injected")), 2.0);
        assert_eq!(after.value(&reviews("none", "unchanged")), 1.0);
        assert_eq!(after.value(&reviews("dood", "denied")), 1.0);
        assert_eq!(after.value(&reviews("unknown", "skipped")), 1.0);
        assert_eq!(after.value(&reviews("unknown", "error")), 2.0);
        let total: f64 = after
            .samples
            .iter()
            .filter(|(s, _)| s.starts_with("nestdock_reviews_total{"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(total, 7.0, "{}", after.text);
        assert_eq!(after.value("nestdock_review_duration_seconds_count"), 7.0);
        assert!(after.value("nestdock_review_duration_seconds_sum") > 0.0);
        // Buckets: cumulative, ending with +Inf = count.
        let buckets: Vec<f64> = after
            .samples
            .iter()
            .filter(|(s, _)| s.starts_with("nestdock_review_duration_seconds_bucket{"))
            .map(|(_, v)| *v)
            .collect();
        assert!(buckets.len() >= 10, "{}", after.text);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{}", after.text);
        assert_eq!(
            after.value("nestdock_review_duration_seconds_bucket{le=\"+Inf\"}"),
            7.0
        );
        assert_eq!(after.value("nestdock_inflight_reviews"), 0.0);
        assert_eq!(
            after.value("nestdock_cert_reloads_total{result=\"success\"}"),
            0.0
        );
        // In OpenMetrics a counter's family is named without `_total`.
        if openmetrics {
            for (kind, name) in [
                ("counter", "nestdock_reviews"),
                ("histogram", "nestdock_review_duration_seconds"),
                ("gauge", "nestdock_inflight_reviews"),
                ("counter", "nestdock_cert_reloads"),
            ] {
                let line = format!("# TYPE {name} {kind}");
                assert!(
                    after.text.lines().any(|l| l == line),
                    "{line} missing:\n{}",
                    after.text
                );
            }
        }
    }
    // A review the client gives up on half-way (as the API server does at its
    // own timeout) is counted as an error and logged.
    {
        let mut tls = tls_connect(own.addr, &[b"http/1.1"]).await;
        tls.write_all(&post_head("/mutate", 1000, Some("application/json")))
            .await
            .unwrap();
        tls.write_all(b"{\"apiVersion\"").await.unwrap();
        wait_for_metric(
            metrics,
            "nestdock_inflight_reviews",
            1.0,
            Duration::from_secs(5),
        )
        .await;
    }
    wait_for_metric(
        metrics,
        &reviews("unknown", "error"),
        3.0,
        Duration::from_secs(5),
    )
    .await;
    own.wait_for_log(&["outcome=error", "cannot read the request body"]);
    assert_eq!(
        scrape(metrics, false)
            .await
            .value("nestdock_inflight_reviews"),
        0.0
    );
    // The metrics port serves nothing else.
    let mut tcp = TcpStream::connect(metrics).await.unwrap();
    tcp.write_all(b"GET /mutate HTTP/1.1\r\nHost: m\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut tcp).await.unwrap().status, 404);
    tcp.write_all(b"POST /metrics HTTP/1.1\r\nHost: m\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut tcp).await.unwrap().status, 405);
}

fn review_of_config_map() -> (String, Value) {
    review(
        "CREATE",
        json!({"group": "", "version": "v1", "kind": "ConfigMap"}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "ci"}}),
        Value::Null,
    )
}

// ---------------------------------------------------------------- load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_reviews_with_64_in_flight_are_all_answered_correctly() {
    const REVIEWS: usize = 3000;
    const IN_FLIGHT: usize = 64;
    let own = Own::default_certs(&[]);
    let metrics = metrics_addr(&own);
    let started = Instant::now();
    let served = Arc::new(Served {
        addr: own.addr,
        logs: own.logs.clone(),
        config: own.config.clone(),
    });
    // 48 HTTP/1.1 connections (what the API server uses) and 16 streams on
    // two HTTP/2 connections.
    let h2: Vec<_> = futures_client_pair(&served).await;
    let mut tasks = Vec::new();
    for worker in 0..IN_FLIGHT {
        let served = served.clone();
        let mut client = if worker < 48 {
            Client::connect(&served, Proto::H1).await
        } else {
            match &h2[worker % 2] {
                Client::H2(sender) => Client::H2(sender.clone()),
                Client::H1(_) => unreachable!(),
            }
        };
        tasks.push(tokio::spawn(async move {
            let mut counts = [0usize; 4];
            for n in (worker..REVIEWS).step_by(IN_FLIGHT) {
                let kind = n % 4;
                let (uid, review, pod) = match kind {
                    0 => {
                        let pod = pod(&format!("load-{n}"), &[("nestdock.io/mode", "dind")]);
                        let (uid, review) = pod_create(&pod);
                        (uid, review, Some(pod))
                    }
                    1 => {
                        let (uid, review) = pod_create(&pod(&format!("load-{n}"), &[]));
                        (uid, review, None)
                    }
                    2 => {
                        let bad = pod(&format!("load-{n}"), &[("nestdock.io/mtu", "9")]);
                        let (uid, review) = pod_create(&bad);
                        (uid, review, None)
                    }
                    _ => {
                        let (uid, review) = review_of_config_map();
                        (uid, review, None)
                    }
                };
                let reply = client.review(&review).await;
                let response = check_envelope(&reply, &uid);
                match kind {
                    0 => {
                        let patched =
                            common::apply_patch(pod.as_ref().unwrap(), &decode_patch(&response));
                        assert_eq!(
                            patched["spec"]["initContainers"][0]["name"],
                            "nestdock-dind"
                        );
                        assert_eq!(
                            patched["metadata"]["annotations"]["nestdock.io/injected"],
                            "dind"
                        );
                    }
                    1 | 3 => assert_unchanged(&response),
                    _ => {
                        let message = assert_denied(&response, 400);
                        assert!(message.contains("nestdock.io/mtu"), "{message}");
                    }
                }
                counts[kind] += 1;
            }
            counts
        }));
    }
    let mut counts = [0usize; 4];
    for task in tasks {
        let c = tokio::time::timeout(Duration::from_secs(240), task)
            .await
            .expect("the load finished within 240 s")
            .expect("a worker failed");
        for (total, n) in counts.iter_mut().zip(c) {
            *total += n;
        }
    }
    assert_eq!(counts, [REVIEWS / 4; 4]);
    let elapsed = started.elapsed();
    let after = scrape(metrics, false).await;
    assert_eq!(
        after.value(&reviews("dind", "injected")),
        (REVIEWS / 4) as f64
    );
    assert_eq!(
        after.value(&reviews("none", "unchanged")),
        (REVIEWS / 4) as f64
    );
    assert_eq!(
        after.value(&reviews("unknown", "skipped")),
        (REVIEWS / 4) as f64
    );
    assert_eq!(
        after.get(&reviews("unknown", "error")),
        None,
        "{}",
        after.text
    );
    assert_eq!(
        after.value("nestdock_review_duration_seconds_count"),
        REVIEWS as f64
    );
    assert_eq!(after.value("nestdock_inflight_reviews"), 0.0);
    eprintln!("{REVIEWS} reviews, {IN_FLIGHT} in flight, in {elapsed:?}");
}

/// Two HTTP/2 connections, each with one request served at once: a
/// connection that has not completed a request within the header timeout
/// (2 s here) is closed, and the 48 HTTP/1.1 connections opened next take
/// about that long on a slow machine.
async fn futures_client_pair(served: &Served) -> Vec<Client> {
    let mut pair = Vec::new();
    for _ in 0..2 {
        let mut client = Client::connect(served, Proto::H2).await;
        let reply = client.send(Method::GET, "/healthz", Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::OK);
        pair.push(client);
    }
    pair
}

// ---------------------------------------------------------------- SIGTERM

/// A request body fed from a channel, to hold an HTTP/2 stream in flight.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// Checks a raw reply to a dind pod CREATE: 200, the uid, a patch that
/// applies to the pod that was sent.
fn check_injected(status: u16, body: &[u8], uid: &str, review: &Value) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, 200, "{text}");
    let out: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(out["response"]["uid"], uid, "{out}");
    let patched = common::apply_patch(
        &review["request"]["object"],
        &decode_patch(&out["response"]),
    );
    assert_eq!(
        patched["spec"]["initContainers"][0]["name"],
        "nestdock-dind"
    );
}

#[tokio::test]
async fn sigterm_answers_every_review_in_flight_then_exits_zero() {
    let own = Own::default_certs(&["--shutdown-delay", "0s"]);
    let metrics = metrics_addr(&own);

    // Four HTTP/1.1 connections, each with half a review sent.
    let mut h1 = Vec::new();
    for _ in 0..4 {
        let (uid, review) = dind_review();
        let json = serde_json::to_vec(&review).unwrap();
        let mut tls = tls_connect(own.addr, &[b"http/1.1"]).await;
        tls.write_all(&post_head(
            "/mutate?timeout=10s",
            json.len(),
            Some("application/json"),
        ))
        .await
        .unwrap();
        tls.write_all(&json[..json.len() / 2]).await.unwrap();
        h1.push((uid, review, json, tls));
    }
    // Four streams on one HTTP/2 connection, each with half a review sent.
    let tls = tls_connect(own.addr, &[b"h2"]).await;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let mut h2 = Vec::new();
    for _ in 0..4 {
        let (uid, review) = dind_review();
        let json = serde_json::to_vec(&review).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(Bytes::copy_from_slice(&json[..json.len() / 2]))
            .await
            .unwrap();
        let request = hyper::Request::post(format!("https://{SERVER_NAME}/mutate?timeout=10s"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(ChannelBody(rx))
            .unwrap();
        let mut sender: hyper::client::conn::http2::SendRequest<ChannelBody> = sender.clone();
        let answer = tokio::spawn(async move {
            sender.ready().await?;
            let (parts, body) = sender.send_request(request).await?.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>((parts.status.as_u16(), body))
        });
        h2.push((uid, review, json, tx, answer));
    }
    // All eight are being handled when the signal comes.
    wait_for_metric(
        metrics,
        "nestdock_inflight_reviews",
        8.0,
        Duration::from_secs(10),
    )
    .await;
    own.signal("TERM");
    own.wait_for_log(&["draining open connections"]);
    assert!(
        TcpStream::connect(own.addr).await.is_err(),
        "the listener is closed while draining"
    );
    // The metrics endpoint still shows them in flight.
    assert_eq!(
        scrape(metrics, false)
            .await
            .value("nestdock_inflight_reviews"),
        8.0
    );

    for (uid, review, json, mut tls) in h1 {
        tls.write_all(&json[json.len() / 2..]).await.unwrap();
        let reply = read_reply(&mut tls)
            .await
            .expect("an answer while draining");
        check_injected(reply.status, &reply.body, &uid, &review);
        // Then the server closes the connection (no keep-alive while draining).
        closed_within(&mut tls, Duration::from_secs(5)).await;
    }
    for (uid, review, json, tx, answer) in h2 {
        tx.send(Bytes::copy_from_slice(&json[json.len() / 2..]))
            .await
            .unwrap();
        drop(tx);
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("answered within 10 s")
            .expect("task")
            .expect("an HTTP/2 answer while draining");
        check_injected(status, &body, &uid, &review);
    }
    let status = own.exit_status(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status}\n{}", own.log_text());
    own.wait_for_log(&["stopped"]);
    assert!(own
        .find_log(&["still open after the drain period"])
        .is_none());
}

#[tokio::test]
async fn sigterm_turns_readiness_off_first_and_serves_through_the_delay() {
    let own = Own::default_certs(&["--shutdown-delay", "3s"]);
    let mut client = Client::connect(&own, Proto::H1).await;
    assert_eq!(
        client
            .send(Method::GET, "/readyz", Bytes::new())
            .await
            .status,
        StatusCode::OK
    );
    own.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(2);
    let reply = loop {
        let reply = client.send(Method::GET, "/readyz", Bytes::new()).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            break reply;
        }
        assert!(Instant::now() < deadline, "/readyz still {}", reply.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(reply.text().contains("shutting down"), "{}", reply.text());
    // During the delay reviews are answered, on open and on new connections.
    let (uid, review) = dind_review();
    let reply = client.review(&review).await;
    decode_patch(&check_envelope(&reply, &uid));
    expect_injected(
        &own,
        Proto::H2,
        &pod("during-delay", &[("nestdock.io/mode", "dind")]),
    )
    .await;
    own.wait_for_log(&["readiness off", "shutdown delay"]);
    let status = own.exit_status(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{status}");
}

// ---------------------------------------------------------------- rotation

/// `nestdock certs` into `dir`: (CA, certificate, key) as PEM.
fn generate_pair(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let out = Command::new(common::bin())
        .args([
            "certs",
            "--service",
            "nestdock",
            "--namespace",
            "nestdock-system",
        ])
        .arg("--out-dir")
        .arg(dir)
        .output()
        .expect("run nestdock certs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read(dir.join(f)).expect(f);
    (read("ca.crt"), read("tls.crt"), read("tls.key"))
}

/// Publishes a pair the way the kubelet updates a Secret volume: a new
/// `..VERSION` directory, a `..data_tmp` symlink to it renamed over `..data`
/// (atomic), then the old directory removed.
fn publish(root: &Path, version: &str, cert: &[u8], key: &[u8]) {
    let dir = root.join(format!("..{version}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    let old = std::fs::read_link(root.join("..data")).ok();
    std::os::unix::fs::symlink(format!("..{version}"), root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(root.join(old)).unwrap();
    }
    for f in ["tls.crt", "tls.key"] {
        if std::fs::symlink_metadata(root.join(f)).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), root.join(f)).unwrap();
        }
    }
}

fn leaf_der(pem: &[u8]) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem)
        .next()
        .expect("a certificate")
        .expect("PEM")
        .to_vec()
}

/// A TLS connection that trusts every CA in `cas`; returns it with the
/// server's leaf certificate (DER).
async fn connect_trusting(addr: SocketAddr, cas: &[&[u8]]) -> (Tls, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in CertificateDer::pem_slice_iter(ca) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let leaf = tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
    (tls, leaf)
}

/// Opens new connections until one is served `want` (at most 10 s).
async fn wait_for_leaf(addr: SocketAddr, cas: &[&[u8]], want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, leaf) = connect_trusting(addr, cas).await;
        if leaf == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "new connections still get the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One review over a raw HTTP/1.1 TLS stream.
async fn review_over(tls: &mut Tls) {
    let (uid, review) = dind_review();
    let json = serde_json::to_vec(&review).unwrap();
    tls.write_all(&post_head("/mutate", json.len(), Some("application/json")))
        .await
        .unwrap();
    tls.write_all(&json).await.unwrap();
    let reply = read_reply(tls).await.expect("an answer");
    check_injected(reply.status, &reply.body, &uid, &review);
}

#[cfg(unix)]
#[tokio::test]
async fn certificate_rotation_by_symlink_swap_keeps_connections_and_refuses_broken_pairs() {
    let tmp = tempfile::Builder::new()
        .prefix("rotation-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let (ca_a, cert_a, key_a) = generate_pair(&tmp.path().join("a"));
    let (ca_b, cert_b, key_b) = generate_pair(&tmp.path().join("b"));
    let cas: [&[u8]; 2] = [&ca_a, &ca_b];
    let root = tmp.path().join("secret-volume");
    std::fs::create_dir(&root).unwrap();
    publish(&root, "2024_01_01", &cert_a, &key_a);

    let own = Own::start(&root.join("tls.crt"), &root.join("tls.key"), &[]);
    let metrics = metrics_addr(&own);

    // A keep-alive connection on the first certificate, and a review held
    // in flight on another.
    let (mut kept, leaf) = connect_trusting(own.addr, &cas).await;
    assert_eq!(leaf, leaf_der(&cert_a));
    review_over(&mut kept).await;
    let (mut in_flight, _) = connect_trusting(own.addr, &cas).await;
    let (uid, review) = dind_review();
    let json = serde_json::to_vec(&review).unwrap();
    in_flight
        .write_all(&post_head("/mutate", json.len(), Some("application/json")))
        .await
        .unwrap();
    in_flight.write_all(&json[..json.len() / 2]).await.unwrap();

    // Rotation: new connections get the new certificate...
    publish(&root, "2024_02_01", &cert_b, &key_b);
    wait_for_leaf(own.addr, &cas, &leaf_der(&cert_b)).await;
    wait_for_metric(
        metrics,
        "nestdock_cert_reloads_total{result=\"success\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    own.wait_for_log(&["serving certificate reloaded"]);
    // ...while the open ones finish undisturbed.
    in_flight.write_all(&json[json.len() / 2..]).await.unwrap();
    let reply = read_reply(&mut in_flight)
        .await
        .expect("the in-flight review is answered");
    check_injected(reply.status, &reply.body, &uid, &review);
    review_over(&mut kept).await;
    review_over(&mut in_flight).await;

    // A mismatched pair is refused, counted, logged with the reason; the
    // current pair stays.
    publish(&root, "2024_03_01", &cert_a, &key_b);
    wait_for_metric(
        metrics,
        "nestdock_cert_reloads_total{result=\"failure\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    own.wait_for_log(&["reload failed", "does not match"]);
    let (mut tls, leaf) = connect_trusting(own.addr, &cas).await;
    assert_eq!(leaf, leaf_der(&cert_b));
    review_over(&mut tls).await;

    // So is a certificate file that holds no certificate.
    publish(&root, "2024_04_01", b"not a certificate\n", &key_b);
    wait_for_metric(
        metrics,
        "nestdock_cert_reloads_total{result=\"failure\"}",
        2.0,
        Duration::from_secs(10),
    )
    .await;
    own.wait_for_log(&["reload failed", "holds no certificate"]);
    let (_, leaf) = connect_trusting(own.addr, &cas).await;
    assert_eq!(leaf, leaf_der(&cert_b));

    // A good pair after the broken ones is taken.
    publish(&root, "2024_05_01", &cert_a, &key_a);
    wait_for_leaf(own.addr, &cas, &leaf_der(&cert_a)).await;
    let after = wait_for_metric(
        metrics,
        "nestdock_cert_reloads_total{result=\"success\"}",
        2.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        after.value("nestdock_cert_reloads_total{result=\"failure\"}"),
        2.0
    );
    review_over(&mut kept).await;
}

#[tokio::test]
async fn json_logs_are_one_object_per_review() {
    let own = Own::default_certs(&["--log-format", "json"]);
    let (uid, review) = dind_review();
    decode_patch(&admit(&own, Proto::H1, &uid, &review).await);
    let reply = common::harness::request(&own, Proto::H2, Method::POST, "/mutate", "[").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let line = own.wait_for_log(&[&uid]);
    let entry: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(entry["message"], "review", "{entry}");
    // The review's identity is on its span (so every line logged while the
    // review is handled carries it); what became of it is on the line.
    let review = &entry["span"];
    assert_eq!(review["name"], "review", "{entry}");
    assert_eq!(review["uid"], uid.as_str(), "{entry}");
    assert_eq!(review["namespace"], "ci");
    assert_eq!(review["object"], "builder");
    assert_eq!(entry["spans"][0]["name"], "review", "{entry}");
    assert_eq!(entry["mode"], "dind");
    assert_eq!(entry["outcome"], "injected");
    assert!(entry["micros"].as_u64().is_some(), "{entry}");
    let line = own.wait_for_log(&["\"outcome\":\"error\""]);
    let entry: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(entry["status"], 400, "{entry}");
    assert!(
        entry["error"].as_str().unwrap().contains("malformed JSON"),
        "{entry}"
    );
    // Every line is JSON.
    for line in own.logs.lock().unwrap().iter() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}
