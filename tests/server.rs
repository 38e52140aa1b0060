//! End-to-end tests of `nestdock serve` (docs/behaviour.md, *The server*)
//! for what needs the real binary: TLS, ALPN, HTTP/1.1 keep-alive, HTTP/2
//! streams, the body limit on the wire, signals, key files. The review
//! contract itself is tested in-process in tests/review.rs, the engine's
//! rules in tests/engine.rs. Here: the binary as a
//! child process, certificates from `nestdock certs`, and a TLS client that
//! verifies them the way the API server does (CA from `ca.crt`, server name
//! `nestdock.nestdock-system.svc`), over HTTP/1.1 and HTTP/2; the harness
//! for all of it is in tests/common/harness.rs.
//!
//! One server is shared by the whole file: starting one per test would cost
//! more than the tests. Each runs under a small `sh` that kills it when this test
//! process exits (its stdin pipe closes), so no server outlives the tests.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::harness::{
    certs_dir, client_config, env, expect_injected, named, pod, request, review, tls_connect,
    wait_for_log, Client, Keeper, Proto, Serve, Served, SA_VOLUME,
};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The server with the built-in configuration (namespace policy off:
/// tests/namespaces.rs covers it against a fake API server).
fn server() -> &'static Served {
    static S: OnceLock<(Served, Keeper)> = OnceLock::new();
    &S.get_or_init(|| Serve::new().spawn_shared()).0
}

// ---------------------------------------------------------------- a review end to end

#[tokio::test]
async fn plain_pod_gets_dind_over_http1() {
    let pod = pod("plain", &[("nestdock.io/mode", "dind")]);
    let (patched, response) = expect_injected(server(), Proto::H1, &pod).await;
    assert_eq!(response["auditAnnotations"]["mode"], "dind", "{response}");
    assert_eq!(
        patched["metadata"]["annotations"]["nestdock.io/injected"], "dind",
        "{patched:#}"
    );
    let build = named(&patched, "build");
    assert_eq!(
        env(build, "DOCKER_HOST"),
        Some("unix:///var/run/docker.sock")
    );
    // The API server's token mount is still there.
    assert!(build["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == SA_VOLUME));
}

#[tokio::test]
async fn plain_pod_gets_dind_over_http2() {
    let pod = pod("plain-h2", &[("nestdock.io/mode", "dind")]);
    expect_injected(server(), Proto::H2, &pod).await;
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let big = vec![b' '; 9 * 1024 * 1024];
    for proto in [Proto::H2, Proto::H1] {
        let mut client = Client::connect(server(), proto).await;
        let reply = client.send(Method::POST, "/mutate", big.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{proto:?}: {}",
            reply.text()
        );
        assert!(reply.text().contains("limit"), "{}", reply.text());
        // The client read the answer and may go on (HTTP/1.1 drained the
        // rest of the body; HTTP/2 reset only that stream).
        let reply = client.send(Method::GET, "/healthz", Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::OK, "{proto:?}");
    }
}

// ---------------------------------------------------------------- transport

#[tokio::test]
async fn healthz_and_readyz() {
    for path in ["/healthz", "/readyz"] {
        for proto in [Proto::H1, Proto::H2] {
            let reply = request(server(), proto, Method::GET, path, Bytes::new()).await;
            assert_eq!(reply.status, StatusCode::OK, "{path} {proto:?}");
            assert_eq!(reply.text().trim(), "ok");
        }
    }
}

#[tokio::test]
async fn alpn_prefers_h2_and_offers_http1() {
    let tls = tls_connect(server().addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let tls = tls_connect(server().addr, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn wrong_server_name_fails_verification() {
    let tcp = TcpStream::connect(server().addr).await.unwrap();
    let name = ServerName::try_from("other.example.com").unwrap();
    let result = TlsConnector::from(Arc::new(client_config(&[b"http/1.1"])))
        .connect(name, tcp)
        .await;
    assert!(
        result.is_err(),
        "the certificate is only for the service's names"
    );
}

#[tokio::test]
async fn http1_keep_alive_serves_many_reviews_on_one_connection() {
    let mut client = Client::connect(server(), Proto::H1).await;
    for _ in 0..5 {
        let (uid, review) = review(
            "UPDATE",
            json!({"group": "", "version": "v1", "kind": "Pod"}),
            pod("again", &[]),
            pod("again", &[]),
        );
        let reply = client.review(&review).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["response"]["uid"], uid);
    }
    // A bad request does not cost the connection either.
    let reply = client.send(Method::POST, "/mutate", "nope").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = client.send(Method::GET, "/healthz", Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn http2_serves_concurrent_streams_on_one_connection() {
    let Client::H2(sender) = Client::connect(server(), Proto::H2).await else {
        unreachable!()
    };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = Client::H2(sender.clone());
        tasks.push(tokio::spawn(async move {
            let (uid, review) = review(
                "UPDATE",
                json!({"group": "", "version": "v1", "kind": "Pod"}),
                pod("concurrent", &[]),
                pod("concurrent", &[]),
            );
            let reply = client
                .send(
                    Method::POST,
                    "/mutate",
                    serde_json::to_vec(&review).unwrap(),
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.json()["response"]["uid"], uid);
        }));
    }
    for t in tasks {
        t.await.expect("stream task");
    }
}

// ---------------------------------------------------------------- process

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let own = Serve::new().spawn();
    // An open keep-alive connection must not hold the exit up.
    let mut client = Client::connect(&own, Proto::H1).await;
    let reply = client.send(Method::GET, "/healthz", Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::OK);

    own.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = own.try_wait() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "still running 15 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    wait_for_log(&own, &["SIGTERM"]);
    wait_for_log(&own, &["stopped"]);
    // No new connections after that.
    assert!(TcpStream::connect(own.addr).await.is_err());
}

#[test]
fn serve_with_a_missing_key_file_fails_naming_it() {
    let dir = certs_dir();
    let out = Command::new(common::bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("missing.key"))
        .output()
        .expect("run nestdock serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.key"), "{stderr}");
}

#[test]
fn serve_with_a_key_that_does_not_match_fails() {
    let dir = certs_dir();
    let other = dir.join("other");
    let status = Command::new(common::bin())
        .args(["certs", "--out-dir"])
        .arg(&other)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new(common::bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(other.join("tls.key"))
        .output()
        .expect("run nestdock serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not match"), "{stderr}");
}

#[test]
fn certs_rejects_a_namespace_that_is_not_a_dns_label() {
    let dir = certs_dir().join("bad");
    let out = Command::new(common::bin())
        .args(["certs", "--service", "nestdock", "--namespace", "Bad_NS"])
        .arg("--out-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Bad_NS"), "{stderr}");
    assert!(!dir.join("tls.key").exists());
}

#[cfg(unix)]
#[test]
fn certs_key_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(certs_dir().join("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
