//! End-to-end tests of `nestdock serve` (SPEC section 5): the real binary as a
//! child process, certificates from `nestdock certs`, and a TLS client that
//! verifies them the way the API server does (CA from `ca.crt`, server name
//! `nestdock.nestdock-system.svc`), over HTTP/1.1 and HTTP/2.
//!
//! Two servers are shared by the whole file (default config, and a config that
//! allows dood without namespace policy): starting one per test would cost more
//! than the tests. Each runs under a small `sh` that kills it when this test
//! process exits (its stdin pipe closes), so no server outlives the tests.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nestdock::config::Config;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The name the API server uses for the webhook's Service.
const SERVER_NAME: &str = "nestdock.nestdock-system.svc";
const DOOD_CONFIG: &str = "dood:\n  allowWithoutNamespacePolicy: true\n";

// ---------------------------------------------------------------- fixtures

/// `nestdock certs` once per test process, into cargo's per-target temp dir.
fn certs_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        remove_stale_dirs(&tmp);
        let dir = tmp.join(format!("server-tests-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(common::bin())
            .args([
                "certs",
                "--service",
                "nestdock",
                "--namespace",
                "nestdock-system",
            ])
            .arg("--out-dir")
            .arg(&dir)
            .output()
            .expect("run nestdock certs");
        assert!(
            out.status.success(),
            "nestdock certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ca = std::fs::read(dir.join("ca.crt")).expect("ca.crt");
        let printed = String::from_utf8(out.stdout).expect("utf-8 caBundle");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(printed.trim())
            .expect("certs prints base64");
        assert_eq!(decoded, ca, "the printed caBundle is base64 of ca.crt");
        std::fs::write(dir.join("dood.yaml"), DOOD_CONFIG).expect("write dood.yaml");
        dir
    })
}

/// Removes the certificate directories of earlier runs (older than an hour,
/// so that a run going on beside this one keeps its own).
fn remove_stale_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if stale
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with("server-tests-")
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A running `nestdock serve`: its address and the log lines so far.
struct Served {
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    config: Config,
}

/// What keeps a shared server alive: closing this pipe stops it.
struct Keeper(#[allow(dead_code)] ChildStdin);

/// Reads the child's stderr on a thread (so the pipe never fills), keeps the
/// lines, and returns the address of the "listening on" line.
fn watch_logs(
    stderr: impl Read + Send + 'static,
    mut early_exit: impl FnMut() -> Option<String>,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = listening_addr(&line) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            }
            sink.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
            return (addr, logs);
        }
        if let Some(status) = early_exit() {
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "nestdock serve exited ({status}) before listening:\n{}",
                logs.lock().unwrap().join("\n")
            );
        }
        assert!(
            Instant::now() < deadline,
            "nestdock serve did not log 'listening on' within 30 s:\n{}",
            logs.lock().unwrap().join("\n")
        );
    }
}

/// The address in a "listening on 127.0.0.1:PORT" log line (text or JSON,
/// with or without colour codes).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

fn serve_command(program: &Path, config: Option<&Path>) -> Command {
    let dir = certs_dir();
    let mut cmd = Command::new(program);
    // Namespace policy off: tests/namespaces.rs covers it against a fake API.
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--kube=false"])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"));
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Starts a server that lives as long as this test process.
fn spawn_shared(config: Option<&Path>) -> (Served, Keeper) {
    let inner = serve_command(&common::bin(), config);
    // sh runs the server in the background and kills it once its stdin (a
    // pipe held by this process) reaches EOF, i.e. when the tests are done.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#""$0" "$@" & pid=$!; read _line; kill $pid 2>/dev/null; wait $pid"#)
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn sh");
    let stdin = child.stdin.take().expect("stdin");
    let stderr = child.stderr.take().expect("stderr");
    let child = Arc::new(Mutex::new(child));
    let (addr, logs) = watch_logs(stderr, move || {
        child
            .lock()
            .unwrap()
            .try_wait()
            .ok()
            .flatten()
            .map(|s| s.to_string())
    });
    let config = match config {
        Some(path) => Config::load(path).expect("test config"),
        None => Config::default(),
    };
    (Served { addr, logs, config }, Keeper(stdin))
}

/// The server with the built-in configuration.
fn server() -> &'static Served {
    static S: OnceLock<(Served, Keeper)> = OnceLock::new();
    &S.get_or_init(|| spawn_shared(None)).0
}

/// The server whose configuration allows dood without namespace policy.
fn dood_server() -> &'static Served {
    static S: OnceLock<(Served, Keeper)> = OnceLock::new();
    &S.get_or_init(|| spawn_shared(Some(&certs_dir().join("dood.yaml"))))
        .0
}

/// A server owned by one test, killed when dropped.
struct OwnServer {
    child: Child,
    served: Served,
}

impl OwnServer {
    fn start() -> OwnServer {
        let mut child = serve_command(&common::bin(), None)
            .spawn()
            .expect("spawn nestdock serve");
        let stderr = child.stderr.take().expect("stderr");
        let pid = child.id();
        let (addr, logs) = watch_logs(stderr, move || {
            // `kill -0` says whether the process is still there without
            // needing the `Child` on this side.
            let alive = Command::new("kill")
                .args(["-0", &pid.to_string()])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(true);
            (!alive).then(|| "exited".to_string())
        });
        OwnServer {
            child,
            served: Served {
                addr,
                logs,
                config: Config::default(),
            },
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- client

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

fn client_config(alpn: &[&[u8]]) -> rustls::ClientConfig {
    let ca = std::fs::read(certs_dir().join("ca.crt")).expect("ca.crt");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots
            .add(cert.expect("ca.crt is PEM"))
            .expect("CA accepted");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

async fn tls_connect(
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("TCP connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from(SERVER_NAME).expect("server name");
    TlsConnector::from(Arc::new(client_config(alpn)))
        .connect(name, tcp)
        .await
        .expect("TLS handshake verifying ca.crt and the service name")
}

enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }
}

impl Client {
    async fn connect(served: &Served, proto: Proto) -> Client {
        let alpn: &[&[u8]] = match proto {
            Proto::H1 => &[b"http/1.1"],
            Proto::H2 => &[b"h2"],
        };
        let tls = tls_connect(served.addr, alpn).await;
        let io = TokioIo::new(tls);
        match proto {
            Proto::H1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .expect("HTTP/1.1 handshake");
                tokio::spawn(conn);
                Client::H1(sender)
            }
            Proto::H2 => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .expect("HTTP/2 handshake");
                tokio::spawn(conn);
                Client::H2(sender)
            }
        }
    }

    async fn try_send(
        &mut self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Reply, hyper::Error> {
        let builder = Request::builder()
            .method(method)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, */*");
        let response = match self {
            Client::H1(sender) => {
                let request = builder
                    .uri(path)
                    .header(header::HOST, SERVER_NAME)
                    .body(Full::new(body.into()))
                    .expect("request");
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Client::H2(sender) => {
                let request = builder
                    .uri(format!("https://{SERVER_NAME}{path}"))
                    .body(Full::new(body.into()))
                    .expect("request");
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn send(&mut self, method: Method, path: &str, body: impl Into<Bytes>) -> Reply {
        self.try_send(method, path, body)
            .await
            .expect("request failed")
    }
}

async fn request(
    served: &Served,
    proto: Proto,
    method: Method,
    path: &str,
    body: impl Into<Bytes>,
) -> Reply {
    Client::connect(served, proto)
        .await
        .send(method, path, body)
        .await
}

// ---------------------------------------------------------------- reviews

fn next_uid() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "3f0c8e2a-5d1b-4c7e-9a6f-{:012x}",
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The token volume and mount the ServiceAccount admission plugin adds before
/// webhooks run.
const SA_VOLUME: &str = "kube-api-access-x7k2p";

fn sa_mount() -> Value {
    json!({
        "name": SA_VOLUME,
        "readOnly": true,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"
    })
}

fn sa_volume() -> Value {
    json!({
        "name": SA_VOLUME,
        "projected": {
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ],
            "defaultMode": 420
        }
    })
}

/// A container as the API server has defaulted it.
fn container(name: &str, image: &str) -> Value {
    json!({
        "name": name,
        "image": image,
        "command": ["sh", "-c", "docker version && docker run --rm hello-world"],
        "resources": {},
        "volumeMounts": [sa_mount()],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent"
    })
}

/// A pod as the API server sends it to a mutating webhook on CREATE.
fn pod(name: &str, annotations: &[(&str, &str)]) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ci",
            "creationTimestamp": null,
            "labels": {"app": "builder"},
            "annotations": annotations
        },
        "spec": {
            "volumes": [sa_volume()],
            "containers": [container("build", "docker:28-cli")],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {}
    })
}

fn review(operation: &str, kind: Value, object: Value, old_object: Value) -> (String, Value) {
    let uid = next_uid();
    let resource = match kind["kind"].as_str() {
        Some("Pod") => "pods",
        Some("ConfigMap") => "configmaps",
        _ => "others",
    };
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": kind,
            "resource": {"group": "", "version": "v1", "resource": resource},
            "requestKind": kind,
            "requestResource": {"group": "", "version": "v1", "resource": resource},
            "name": object.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            "namespace": "ci",
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:job-controller",
                "uid": "b4a5e0e9-7d2c-4a1e-8f4a-2f7c9c6d1e11",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": object,
            "oldObject": old_object,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    (uid, review)
}

fn pod_create(pod: &Value) -> (String, Value) {
    review(
        "CREATE",
        json!({"group": "", "version": "v1", "kind": "Pod"}),
        pod.clone(),
        Value::Null,
    )
}

/// Posts a review the way the API server does and checks the envelope:
/// HTTP 200, JSON, the review's apiVersion/kind echoed, the same uid.
/// Returns `response`.
async fn admit(served: &Served, proto: Proto, uid: &str, review: &Value) -> Value {
    let body = serde_json::to_vec(review).expect("serialize review");
    let reply = request(served, proto, Method::POST, "/mutate?timeout=10s", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    let out = reply.json();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1", "{out}");
    assert_eq!(out["kind"], "AdmissionReview", "{out}");
    let response = out["response"].clone();
    assert_eq!(response["uid"], uid, "{out}");
    assert!(response["allowed"].is_boolean(), "{out}");
    if let Some(warnings) = response.get("warnings") {
        for w in warnings.as_array().expect("warnings is a list") {
            let w = w.as_str().expect("warning is a string");
            assert!(
                w.chars().count() < 120,
                "warning of 120 characters or more: {w}"
            );
        }
    }
    response
}

/// Asserts an allowed response without a patch.
fn assert_unchanged(response: &Value) {
    assert_eq!(response["allowed"], true, "{response}");
    assert!(
        response.get("patch").is_none(),
        "unexpected patch: {response}"
    );
    assert!(response.get("patchType").is_none(), "{response}");
    assert!(response.get("status").is_none(), "{response}");
}

/// Asserts a denial with `code`; returns its message.
fn assert_denied(response: &Value, code: u64) -> String {
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["status"]["code"], code, "{response}");
    assert!(response.get("patch").is_none(), "{response}");
    let message = response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !message.is_empty(),
        "a denial carries a message: {response}"
    );
    message
}

fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|w| w.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The full contract for a pod that gets a daemon: a base64 JSON Patch that
/// applies to the pod as sent, a patched pod that satisfies the SPEC section 1
/// invariants, and no second patch when the API server calls again.
/// Returns the patched pod and the response.
async fn expect_injected(served: &Served, proto: Proto, pod: &Value) -> (Value, Value) {
    let (uid, review) = pod_create(pod);
    let response = admit(served, proto, &uid, &review).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let patch_b64 = response["patch"]
        .as_str()
        .unwrap_or_else(|| panic!("patch must be a base64 string: {response}"));
    let patch_bytes = base64::engine::general_purpose::STANDARD
        .decode(patch_b64)
        .expect("patch is base64");
    let patch: Value = serde_json::from_slice(&patch_bytes).expect("patch is JSON");
    assert!(patch.is_array(), "patch is a JSON array: {patch}");
    let patched = common::apply_patch(pod, &patch);
    common::invariants::check(&patched, &served.config);

    let (uid, again) = pod_create(&patched);
    let second = admit(served, proto, &uid, &again).await;
    assert_unchanged(&second);
    (patched, response)
}

fn containers<'a>(pod: &'a Value, list: &str) -> Vec<&'a Value> {
    pod["spec"][list]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn named<'a>(pod: &'a Value, name: &str) -> &'a Value {
    containers(pod, "initContainers")
        .into_iter()
        .chain(containers(pod, "containers"))
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {pod:#}"))
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

/// Waits for a log line containing every one of `needles`.
fn wait_for_log(served: &Served, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(line) = served
            .logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needles:?}:\n{}",
            served.logs.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
    // SPEC section 1, start order: a native sidecar, first init container, so
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
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a patch"))
        .unwrap();
    let patched = common::apply_patch(&pod, &serde_json::from_slice(&patch).unwrap());
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
        let reply = client
            .send(
                Method::POST,
                "/mutate?timeout=10s",
                serde_json::to_vec(&review).unwrap(),
            )
            .await;
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
    let mut own = OwnServer::start();
    // An open keep-alive connection must not hold the exit up.
    let mut client = Client::connect(&own.served, Proto::H1).await;
    let reply = client.send(Method::GET, "/healthz", Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::OK);

    let status = Command::new("kill")
        .args(["-TERM", &own.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = own.child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "still running 15 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    wait_for_log(&own.served, &["SIGTERM"]);
    wait_for_log(&own.served, &["stopped"]);
    // No new connections after that.
    assert!(TcpStream::connect(own.served.addr).await.is_err());
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
