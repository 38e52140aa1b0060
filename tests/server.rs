//! End-to-end tests of `nestdock serve` (docs/behaviour.md, *The server*): the real binary as a
//! child process, certificates from `nestdock certs`, and a TLS client that
//! verifies them the way the API server does (CA from `ca.crt`, server name
//! `nestdock.nestdock-system.svc`), over HTTP/1.1 and HTTP/2; the harness
//! for all of it is in tests/common/harness.rs.
//!
//! Two servers are shared by the whole file (default config, and a config that
//! allows dood without namespace policy): starting one per test would cost more
//! than the tests. Each runs under a small `sh` that kills it when this test
//! process exits (its stdin pipe closes), so no server outlives the tests.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::harness::{
    admit, assert_denied, assert_unchanged, certs_dir, client_config, container, containers,
    decode_patch, env, expect_injected, named, pod, pod_create, request, review, tls_connect,
    wait_for_log, warnings, Client, Keeper, Proto, Serve, Served, SA_VOLUME,
};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use rustls_pki_types::ServerName;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const DOOD_CONFIG: &str = "dood:\n  allowWithoutNamespacePolicy: true\n";

/// The server with the built-in configuration (namespace policy off:
/// tests/namespaces.rs covers it against a fake API server).
fn server() -> &'static Served {
    static S: OnceLock<(Served, Keeper)> = OnceLock::new();
    &S.get_or_init(|| Serve::new().spawn_shared()).0
}

/// The server whose configuration allows dood without namespace policy.
fn dood_server() -> &'static Served {
    static S: OnceLock<(Served, Keeper)> = OnceLock::new();
    &S.get_or_init(|| {
        Serve::new()
            .config(common::harness::write_file("dood.yaml", DOOD_CONFIG))
            .spawn_shared()
    })
    .0
}

// ---------------------------------------------------------------- injected pods

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
async fn pod_without_volumes_or_init_containers() {
    let mut pod = pod("bare", &[("nestdock.io/mode", "dind")]);
    let spec = pod["spec"].as_object_mut().unwrap();
    spec.remove("volumes");
    spec.insert("automountServiceAccountToken".into(), json!(false));
    pod["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("volumeMounts");
    let (patched, _) = expect_injected(server(), Proto::H2, &pod).await;
    assert_eq!(
        env(named(&patched, "build"), "DOCKER_HOST"),
        Some("unix:///var/run/docker.sock")
    );
}

#[tokio::test]
async fn job_pod_gets_a_native_sidecar() {
    let mut pod = pod("", &[("nestdock.io/mode", "dind")]);
    let meta = pod["metadata"].as_object_mut().unwrap();
    meta.remove("name");
    meta.insert("generateName".into(), json!("build-42-"));
    meta.insert(
        "labels".into(),
        json!({
            "batch.kubernetes.io/controller-uid": "6c3b7b2e-1f0e-4d3a-9d1e-0c2f8d7e6a51",
            "batch.kubernetes.io/job-name": "build-42",
            "controller-uid": "6c3b7b2e-1f0e-4d3a-9d1e-0c2f8d7e6a51",
            "job-name": "build-42"
        }),
    );
    meta.insert(
        "ownerReferences".into(),
        json!([{
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "build-42",
            "uid": "6c3b7b2e-1f0e-4d3a-9d1e-0c2f8d7e6a51",
            "controller": true,
            "blockOwnerDeletion": true
        }]),
    );
    pod["spec"]["restartPolicy"] = json!("Never");
    let (patched, _) = expect_injected(server(), Proto::H1, &pod).await;
    // docs/behaviour.md, start order: a native sidecar, first init container, so
    // that the Job's pod completes when its main container exits.
    let first = &patched["spec"]["initContainers"][0];
    assert_eq!(first["name"], "nestdock-dind", "{patched:#}");
    assert_eq!(first["restartPolicy"], "Always", "{patched:#}");
    assert_eq!(patched["spec"]["restartPolicy"], "Never");
}

#[tokio::test]
async fn pod_with_init_containers() {
    let mut pod = pod("with-init", &[("nestdock.io/mode", "dind")]);
    pod["spec"]["initContainers"] = json!([container("prepare", "busybox:1.36")]);
    let (patched, _) = expect_injected(server(), Proto::H1, &pod).await;
    let init = containers(&patched, "initContainers");
    assert_eq!(init[0]["name"], "nestdock-dind", "{patched:#}");
    assert_eq!(init[1]["name"], "prepare", "{patched:#}");
    // Init containers after the native daemon are targets too.
    assert_eq!(
        env(init[1], "DOCKER_HOST"),
        Some("unix:///var/run/docker.sock")
    );
}

#[tokio::test]
async fn existing_docker_host_is_kept_with_a_warning() {
    let mut pod = pod("own-docker-host", &[("nestdock.io/mode", "dind")]);
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "DOCKER_HOST", "value": "tcp://docker.example:2375"}]);
    let (uid, review) = pod_create(&pod);
    let response = admit(server(), Proto::H1, &uid, &review).await;
    assert_eq!(response["allowed"], true, "{response}");
    let patched = common::apply_patch(&pod, &decode_patch(&response));
    assert_eq!(
        env(named(&patched, "build"), "DOCKER_HOST"),
        Some("tcp://docker.example:2375")
    );
    let warnings = warnings(&response);
    assert!(
        warnings.iter().any(|w| w.contains("DOCKER_HOST")),
        "a warning names DOCKER_HOST: {response}"
    );
}

#[tokio::test]
async fn container_named_like_the_daemon_is_denied() {
    let mut pod = pod("clash", &[("nestdock.io/mode", "dind")]);
    pod["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(container("nestdock-dind", "docker:28-dind"));
    let (uid, review) = pod_create(&pod);
    let response = admit(server(), Proto::H1, &uid, &review).await;
    assert_eq!(response["allowed"], false, "{response}");
    let code = response["status"]["code"].as_u64().unwrap_or_default();
    assert!(code >= 400, "{response}");
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("nestdock-dind"), "{response}");
    assert_eq!(response["auditAnnotations"]["mode"], "dind", "{response}");
}

#[tokio::test]
async fn containers_annotation_selects_a_subset() {
    let mut pod = pod(
        "subset",
        &[
            ("nestdock.io/mode", "dind"),
            ("nestdock.io/containers", " build "),
        ],
    );
    pod["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(container("helper", "alpine:3.20"));
    let (patched, _) = expect_injected(server(), Proto::H1, &pod).await;
    assert_eq!(
        env(named(&patched, "build"), "DOCKER_HOST"),
        Some("unix:///var/run/docker.sock")
    );
    assert_eq!(env(named(&patched, "helper"), "DOCKER_HOST"), None);
}

#[tokio::test]
async fn mode_dind_rootless() {
    let pod = pod("rootless", &[("nestdock.io/mode", "dind-rootless")]);
    let (patched, response) = expect_injected(server(), Proto::H1, &pod).await;
    assert_eq!(response["auditAnnotations"]["mode"], "dind-rootless");
    let daemon = named(&patched, "nestdock-dind");
    assert!(
        daemon["image"]
            .as_str()
            .unwrap_or_default()
            .contains("dind-rootless"),
        "{daemon:#}"
    );
}

#[tokio::test]
async fn mode_dood_is_denied_without_namespace_policy() {
    let pod = pod("dood-denied", &[("nestdock.io/mode", "dood")]);
    let (uid, review) = pod_create(&pod);
    let response = admit(server(), Proto::H1, &uid, &review).await;
    let message = assert_denied(&response, 403);
    assert!(message.contains("dood"), "{message}");
}

#[tokio::test]
async fn mode_dood_when_the_config_allows_it() {
    let pod = pod("dood", &[("nestdock.io/mode", "dood")]);
    let (patched, response) = expect_injected(dood_server(), Proto::H1, &pod).await;
    assert_eq!(response["auditAnnotations"]["mode"], "dood");
    let host = patched["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v.get("hostPath").is_some())
        .unwrap_or_else(|| panic!("a hostPath volume: {patched:#}"));
    assert_eq!(host["hostPath"]["type"], "Socket", "{host}");
    assert!(
        containers(&patched, "containers")
            .iter()
            .all(|c| c["name"] != "nestdock-dind"),
        "dood runs no daemon"
    );
}

#[tokio::test]
async fn mode_none_is_allowed_unchanged() {
    let pod = pod("none", &[("nestdock.io/mode", "none")]);
    let (uid, review) = pod_create(&pod);
    let response = admit(server(), Proto::H1, &uid, &review).await;
    assert_unchanged(&response);
    assert_eq!(response["auditAnnotations"]["mode"], "none", "{response}");
}

#[tokio::test]
async fn pod_without_annotations_is_unchanged_under_the_default_config() {
    let pod = pod("untouched", &[]);
    let (uid, review) = pod_create(&pod);
    let response = admit(server(), Proto::H2, &uid, &review).await;
    assert_unchanged(&response);
}

#[tokio::test]
async fn tls_annotation_puts_the_daemon_on_tcp_2376() {
    let pod = pod(
        "tls",
        &[("nestdock.io/mode", "dind"), ("nestdock.io/tls", "true")],
    );
    let (patched, _) = expect_injected(server(), Proto::H1, &pod).await;
    let build = named(&patched, "build");
    assert_eq!(env(build, "DOCKER_HOST"), Some("tcp://localhost:2376"));
    assert_eq!(env(build, "DOCKER_TLS_VERIFY"), Some("1"));
    assert_eq!(env(build, "DOCKER_CERT_PATH"), Some("/certs/client"));
}

#[tokio::test]
async fn sidecar_container_warns_about_start_order() {
    let pod = pod(
        "classic-sidecar",
        &[
            ("nestdock.io/mode", "dind"),
            ("nestdock.io/sidecar", "container"),
        ],
    );
    let (patched, response) = expect_injected(server(), Proto::H1, &pod).await;
    assert!(
        containers(&patched, "containers")
            .iter()
            .any(|c| c["name"] == "nestdock-dind"),
        "{patched:#}"
    );
    assert!(
        !warnings(&response).is_empty(),
        "sidecar: container warns that start order is not guaranteed: {response}"
    );
}

#[tokio::test]
async fn bad_annotation_value_is_denied_with_400() {
    let pod = pod(
        "bad-mtu",
        &[("nestdock.io/mode", "dind"), ("nestdock.io/mtu", "9")],
    );
    let (uid, review) = pod_create(&pod);
    let response = admit(server(), Proto::H1, &uid, &review).await;
    let message = assert_denied(&response, 400);
    assert!(
        message.contains("mtu"),
        "the message names the key: {message}"
    );
}

#[tokio::test]
async fn dry_run_is_mutated_the_same_way() {
    let pod = pod("dry", &[("nestdock.io/mode", "dind")]);
    let (uid, mut review) = pod_create(&pod);
    review["request"]["dryRun"] = json!(true);
    let response = admit(server(), Proto::H1, &uid, &review).await;
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
}

// ---------------------------------------------------------------- not pods, not CREATE

#[tokio::test]
async fn config_map_is_allowed_unchanged() {
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "ci", "annotations": {"nestdock.io/mode": "dind"}},
        "data": {"a": "b"}
    });
    let (uid, review) = review(
        "CREATE",
        json!({"group": "", "version": "v1", "kind": "ConfigMap"}),
        cm,
        Value::Null,
    );
    let response = admit(server(), Proto::H1, &uid, &review).await;
    assert_unchanged(&response);
    assert!(response.get("auditAnnotations").is_none(), "{response}");
}

#[tokio::test]
async fn pod_update_is_allowed_unchanged() {
    let old = pod("updated", &[("nestdock.io/mode", "dind")]);
    let mut new = old.clone();
    new["metadata"]["labels"]["extra"] = json!("yes");
    let (uid, review) = review(
        "UPDATE",
        json!({"group": "", "version": "v1", "kind": "Pod"}),
        new,
        old,
    );
    let response = admit(server(), Proto::H2, &uid, &review).await;
    assert_unchanged(&response);
}

#[tokio::test]
async fn mutate_with_the_api_servers_timeout_query() {
    let (uid, review) = review(
        "DELETE",
        json!({"group": "", "version": "v1", "kind": "Pod"}),
        Value::Null,
        pod("gone", &[]),
    );
    for path in ["/mutate?timeout=10s", "/mutate"] {
        let reply = request(
            server(),
            Proto::H1,
            Method::POST,
            path,
            serde_json::to_vec(&review).unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        assert_eq!(reply.json()["response"]["uid"], uid);
    }
}

#[tokio::test]
async fn one_log_line_per_review() {
    let (uid, review) = review(
        "UPDATE",
        json!({"group": "", "version": "v1", "kind": "Pod"}),
        pod("logged", &[]),
        pod("logged", &[]),
    );
    admit(server(), Proto::H1, &uid, &review).await;
    let line = wait_for_log(server(), &[&uid]);
    for field in ["namespace", "name", "mode", "outcome", "micros"] {
        assert!(line.contains(field), "{field} missing from: {line}");
    }
    assert!(line.contains("logged"), "{line}");
}

// ---------------------------------------------------------------- bad input

#[tokio::test]
async fn malformed_json_is_400() {
    let reply = request(
        server(),
        Proto::H1,
        Method::POST,
        "/mutate",
        &b"{\"apiVersion\": "[..],
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("malformed JSON"), "{}", reply.text());
}

#[tokio::test]
async fn v1beta1_review_is_400_naming_the_version() {
    let (_, mut review) = pod_create(&pod("old", &[]));
    review["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let reply = request(
        server(),
        Proto::H2,
        Method::POST,
        "/mutate",
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let text = reply.text();
    assert!(text.contains("admission.k8s.io/v1beta1"), "{text}");
    assert!(text.contains("\"admission.k8s.io/v1\""), "{text}");
}

#[tokio::test]
async fn review_without_request_is_400() {
    let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let reply = request(
        server(),
        Proto::H1,
        Method::POST,
        "/mutate",
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("no request"), "{}", reply.text());
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

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_405() {
    let reply = request(server(), Proto::H1, Method::GET, "/nope", Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.text().contains("/nope"), "{}", reply.text());
    let reply = request(server(), Proto::H1, Method::POST, "/validate", Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = request(server(), Proto::H2, Method::GET, "/mutate", Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.text().contains("POST"), "{}", reply.text());
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
