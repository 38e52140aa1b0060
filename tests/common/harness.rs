//! End-to-end harness for `nestdock serve`: certificates from `nestdock certs`
//! (once per test process), the real binary as a child process (its address
//! read from the "listening on" log line, its log kept), a TLS client that
//! verifies the server the way the API server does (CA from `ca.crt`, server
//! name `nestdock.nestdock-system.svc`) over HTTP/1.1 or HTTP/2, and
//! AdmissionReview builders and checks.
//!
//! Servers either live as long as the test process ([`Serve::spawn_shared`]:
//! a small `sh` kills the server when this process's end of its stdin pipe
//! closes) or as long as one test ([`Serve::spawn`]: killed on drop).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
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
pub const SERVER_NAME: &str = "nestdock.nestdock-system.svc";

/// The namespace of reviews built by [`pod`].
pub const NAMESPACE: &str = "ci";

/// Prefix of the per-process certificate directories.
const DIR_PREFIX: &str = "nestdock-tests-";

// ---------------------------------------------------------------- fixtures

/// `nestdock certs` once per test process, into cargo's per-target temp dir:
/// `ca.crt`, `tls.crt`, `tls.key`. Also checks that the printed caBundle is
/// base64 of `ca.crt`.
pub fn certs_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        remove_stale_dirs(&tmp);
        let dir = tmp.join(format!("{DIR_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(super::bin())
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
        dir
    })
}

/// Removes the certificate directories of earlier runs (older than an hour,
/// so that a run going on beside this one keeps its own).
fn remove_stale_dirs(tmp: &Path) {
    for prefix in [DIR_PREFIX, "server-tests-"] {
        super::remove_stale(tmp, prefix, Duration::from_secs(3600));
    }
}

/// Writes `contents` to a file in this process's certificate directory (for
/// config files) and returns its path.
pub fn write_file(name: &str, contents: &str) -> PathBuf {
    let path = certs_dir().join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// A running `nestdock serve`: its address, the log lines so far, and the
/// configuration it was started with.
#[derive(Clone)]
pub struct Served {
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub config: Config,
}

impl Served {
    /// Waits (up to 5 s) for a log line containing every one of `needles`.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        self.wait_for_log_within(needles, Duration::from_secs(5))
    }

    pub fn wait_for_log_within(&self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.find_log(needles) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?} within {limit:?}:\n{}",
                self.logs.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first log line so far containing every one of `needles`.
    pub fn find_log(&self, needles: &[&str]) -> Option<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .cloned()
    }

    /// All log lines so far, for failure messages.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

/// Waits for a log line containing every one of `needles` (5 s).
pub fn wait_for_log(served: &Served, needles: &[&str]) -> String {
    served.wait_for_log(needles)
}

/// What keeps a shared server alive: closing this pipe stops it.
pub struct Keeper(#[allow(dead_code)] ChildStdin);

/// How to start `nestdock serve` on 127.0.0.1 with a free port and this
/// process's certificates. Without [`Serve::kubeconfig`] it runs with
/// `--kube=false`, so that no test reaches a real cluster by accident.
#[derive(Debug, Clone, Default)]
pub struct Serve {
    config: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl Serve {
    pub fn new() -> Serve {
        Serve::default()
    }

    /// `--config FILE`.
    pub fn config(mut self, path: impl Into<PathBuf>) -> Serve {
        self.config = Some(path.into());
        self
    }

    /// Namespace policy on, against the cluster of this kubeconfig
    /// (`KUBECONFIG` set, no `--kube=false`).
    pub fn kubeconfig(mut self, path: impl Into<PathBuf>) -> Serve {
        self.kubeconfig = Some(path.into());
        self
    }

    /// An extra command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Serve {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Serve
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An extra environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Serve {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The command, stderr piped (the log), stdout discarded.
    pub fn command(&self) -> Command {
        let dir = certs_dir();
        let mut cmd = Command::new(super::bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.join("tls.key"));
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        match &self.kubeconfig {
            Some(kubeconfig) => {
                cmd.env("KUBECONFIG", kubeconfig);
            }
            None => {
                cmd.arg("--kube=false");
            }
        }
        cmd.args(&self.args);
        // The in-cluster configuration must not be picked up either.
        cmd.env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    fn loaded_config(&self) -> Config {
        match &self.config {
            Some(path) => Config::load(path).expect("test config"),
            None => Config::default(),
        }
    }

    /// Starts a server owned by the caller, killed when dropped. Waits for
    /// its "listening on" line (30 s at most).
    pub fn spawn(self) -> OwnServer {
        let mut child = self.command().spawn().expect("spawn nestdock serve");
        let stderr = child.stderr.take().expect("stderr");
        // Killed on drop from here on, also when the wait below panics.
        let child = ChildGuard(Arc::new(Mutex::new(child)));
        let watched = child.0.clone();
        let (addr, logs) = watch_logs(stderr, move || {
            watched
                .lock()
                .unwrap()
                .try_wait()
                .ok()
                .flatten()
                .map(|s| s.to_string())
        });
        OwnServer {
            child,
            served: Served {
                addr,
                logs,
                config: self.loaded_config(),
            },
        }
    }

    /// Starts a server that lives as long as this test process.
    pub fn spawn_shared(self) -> (Served, Keeper) {
        let inner = self.command();
        // sh runs the server in the background and kills it once its stdin (a
        // pipe held by this process) reaches EOF, i.e. when the tests are done.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#""$0" "$@" & pid=$!; read _line; kill $pid 2>/dev/null; wait $pid"#)
            .arg(inner.get_program())
            .args(inner.get_args());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
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
        (
            Served {
                addr,
                logs,
                config: self.loaded_config(),
            },
            Keeper(stdin),
        )
    }
}

/// Kills and reaps the child when dropped.
struct ChildGuard(Arc<Mutex<Child>>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let mut child = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A server owned by one test, killed when dropped.
pub struct OwnServer {
    child: ChildGuard,
    pub served: Served,
}

impl OwnServer {
    pub fn pid(&self) -> u32 {
        self.child.0.lock().unwrap().id()
    }

    /// The exit status once the server has exited.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.child.0.lock().unwrap().try_wait().expect("try_wait")
    }

    /// Sends a signal (`TERM`, `INT`, ...) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Deref for OwnServer {
    type Target = Served;

    fn deref(&self) -> &Served {
        &self.served
    }
}

/// Reads the child's stderr on a thread (so the pipe never fills), keeps the
/// lines, and returns the address of the "listening on" line. Panics (with
/// the log) when the child exits first or after 30 s; `early_exit` says
/// whether it has exited.
pub fn watch_logs(
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
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

// ---------------------------------------------------------------- client

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

/// A rustls client that trusts only `ca.crt`, offering `alpn`.
pub fn client_config(alpn: &[&[u8]]) -> rustls::ClientConfig {
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

/// TCP (with `TCP_NODELAY`) and a TLS handshake verifying `ca.crt` and
/// [`SERVER_NAME`].
pub async fn tls_connect(
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

/// One connection to the webhook.
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }
}

impl Client {
    pub async fn connect(served: &Served, proto: Proto) -> Client {
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

    pub async fn try_send(
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

    pub async fn send(&mut self, method: Method, path: &str, body: impl Into<Bytes>) -> Reply {
        self.try_send(method, path, body)
            .await
            .expect("request failed")
    }

    /// Posts an AdmissionReview the way the API server does (`?timeout=` on the path).
    pub async fn review(&mut self, review: &Value) -> Reply {
        let body = serde_json::to_vec(review).expect("a review serialises");
        self.send(Method::POST, "/mutate?timeout=10s", body).await
    }
}

/// One request on a new connection.
pub async fn request(
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

/// Polls `GET path` until it answers `status` (at most `limit`); returns the reply.
pub async fn wait_for_status(
    served: &Served,
    path: &str,
    status: StatusCode,
    limit: Duration,
) -> Reply {
    let deadline = Instant::now() + limit;
    loop {
        let reply = request(served, Proto::H1, Method::GET, path, Bytes::new()).await;
        if reply.status == status {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} still {} after {limit:?} (want {status}): {}\n{}",
            reply.status,
            reply.text(),
            served.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- reviews

pub fn next_uid() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "3f0c8e2a-5d1b-4c7e-9a6f-{:012x}",
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The token volume and mount the ServiceAccount admission plugin adds before
/// webhooks run.
pub const SA_VOLUME: &str = "kube-api-access-x7k2p";

pub fn sa_mount() -> Value {
    json!({
        "name": SA_VOLUME,
        "readOnly": true,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"
    })
}

pub fn sa_volume() -> Value {
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
pub fn container(name: &str, image: &str) -> Value {
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

/// A pod in namespace [`NAMESPACE`] as the API server sends it to a mutating
/// webhook on CREATE.
pub fn pod(name: &str, annotations: &[(&str, &str)]) -> Value {
    pod_in(NAMESPACE, name, annotations)
}

/// A pod in `namespace` as the API server sends it to a mutating webhook on
/// CREATE.
pub fn pod_in(namespace: &str, name: &str, annotations: &[(&str, &str)]) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
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

/// An AdmissionReview as the API server sends it; `request.namespace` is the
/// object's namespace (else the old object's, else [`NAMESPACE`]).
/// Returns the uid and the review.
pub fn review(operation: &str, kind: Value, object: Value, old_object: Value) -> (String, Value) {
    let uid = next_uid();
    let resource = match kind["kind"].as_str() {
        Some("Pod") => "pods",
        Some("ConfigMap") => "configmaps",
        _ => "others",
    };
    let namespace = object
        .pointer("/metadata/namespace")
        .or_else(|| old_object.pointer("/metadata/namespace"))
        .and_then(Value::as_str)
        .unwrap_or(NAMESPACE)
        .to_string();
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
            "namespace": namespace,
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

/// A pod CREATE review.
pub fn pod_create(pod: &Value) -> (String, Value) {
    review(
        "CREATE",
        json!({"group": "", "version": "v1", "kind": "Pod"}),
        pod.clone(),
        Value::Null,
    )
}

/// Posts a review the way the API server does (`/mutate?timeout=10s`) and
/// returns the raw reply, whatever its status.
pub async fn post_review(served: &Served, proto: Proto, review: &Value) -> Reply {
    let body = serde_json::to_vec(review).expect("serialize review");
    request(served, proto, Method::POST, "/mutate?timeout=10s", body).await
}

/// Posts a review the way the API server does and checks the envelope:
/// HTTP 200, JSON, the review's apiVersion/kind echoed, the same uid,
/// warnings under 120 characters. Returns `response`.
pub async fn admit(served: &Served, proto: Proto, uid: &str, review: &Value) -> Value {
    let reply = post_review(served, proto, review).await;
    check_envelope(&reply, uid)
}

/// [`admit`]'s checks on a reply; returns `response`.
pub fn check_envelope(reply: &Reply, uid: &str) -> Value {
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
pub fn assert_unchanged(response: &Value) {
    assert_eq!(response["allowed"], true, "{response}");
    assert!(
        response.get("patch").is_none(),
        "unexpected patch: {response}"
    );
    assert!(response.get("patchType").is_none(), "{response}");
    assert!(response.get("status").is_none(), "{response}");
}

/// Asserts a denial with `code`; returns its message.
pub fn assert_denied(response: &Value, code: u64) -> String {
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

pub fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|w| w.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The JSON Patch of an allowed response: `patchType: JSONPatch` and the
/// patch as a base64 string (not a byte array) of a JSON array.
pub fn decode_patch(response: &Value) -> Value {
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
    patch
}

/// The full contract for a pod that gets a daemon: a base64 JSON Patch that
/// applies to the pod as sent, a patched pod that satisfies the docs/behaviour.md
/// invariants, and no second patch when the API server calls again.
/// Returns the patched pod and the response.
pub async fn expect_injected(served: &Served, proto: Proto, pod: &Value) -> (Value, Value) {
    let (uid, review) = pod_create(pod);
    let response = admit(served, proto, &uid, &review).await;
    let patched = super::apply_patch(pod, &decode_patch(&response));
    super::invariants::check(&patched, &served.config);

    let (uid, again) = pod_create(&patched);
    let second = admit(served, proto, &uid, &again).await;
    assert_unchanged(&second);
    (patched, response)
}

pub fn containers<'a>(pod: &'a Value, list: &str) -> Vec<&'a Value> {
    pod["spec"][list]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// The container or init container `name`; panics when there is none.
pub fn named<'a>(pod: &'a Value, name: &str) -> &'a Value {
    containers(pod, "initContainers")
        .into_iter()
        .chain(containers(pod, "containers"))
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {pod:#}"))
}

pub fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}
