//! The end-to-end harness: the real control plane (tests/kube, built by
//! scripts/build-kube.sh), kubectl against it, `nestdock serve` as a local
//! process, and the small helpers the e2e suites share (tests/e2e_apiserver.rs
//! for the kustomize install, tests/e2e_helm.rs for the chart).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize as _;
use serde_json::{json, Value};

use super::harness;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Prints a step name and how long the previous one took.
pub struct Steps {
    pub last: Instant,
    pub current: String,
}

impl Steps {
    pub fn new() -> Steps {
        Steps {
            last: Instant::now(),
            current: String::new(),
        }
    }

    pub fn step(&mut self, name: &str) {
        self.finish();
        eprintln!("e2e: == {name}");
        self.current = name.to_string();
    }

    pub fn finish(&mut self) {
        if !self.current.is_empty() {
            eprintln!(
                "e2e:    {} done in {:.1}s",
                self.current,
                self.last.elapsed().as_secs_f64()
            );
        }
        self.last = Instant::now();
    }
}
// ------------------------------------------------------------ processes

/// A child process killed and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    /// A child with a stdin pipe (the `sh` wrapper of [`spawn_nestdock`]) is
    /// asked to stop by closing it, and given 10 s; then it is killed.
    pub fn stop(&mut self) {
        if let Some(stdin) = self.child.stdin.take() {
            drop(stdin);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        eprintln!("e2e: stopped {}", self.name);
    }
}

/// Runs a command with standard input `stdin`, killed after `limit`.
pub fn run_with_timeout(mut cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> Output {
    let shown = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Runs one of the repository's set-up scripts and returns the path it prints.
pub fn setup_script(script: &str, limit: Duration) -> PathBuf {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts").join(script));
    // Its progress goes to our stderr as it happens (a first build is long).
    cmd.stderr(Stdio::inherit());
    let shown = format!("scripts/{script}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let mut out = String::new();
    let mut pipe = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let _ = pipe.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap();
    assert!(
        status.success(),
        "\n\n!!! e2e: {shown} failed ({status}); see its output above.\n\
         !!! The e2e suite needs Go (1.26+) and the Go module proxy (scripts/build-kube.sh)\n\
         !!! and PyPI for kubectl (scripts/setup-kubectl.sh). Set NESTDOCK_E2E=skip to opt out.\n"
    );
    let path = PathBuf::from(out.trim().lines().last().unwrap_or_default());
    assert!(path.exists(), "{shown} printed {out:?}, not a path");
    path
}

/// Removes state directories of earlier runs that did not clean up (killed),
/// once they are a day old (a kept one may still be looked at).
pub fn remove_stale_state() {
    super::remove_stale(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        "nestdock-e2e-",
        Duration::from_secs(24 * 3600),
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

// ------------------------------------------------------------ control plane

/// The running test control plane: etcd and kube-apiserver as two processes
/// of the same program, so that the API server can be stopped and started
/// again on the same data, port and certificates.
pub struct Plane {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub etcd_url: String,
    pub port: u16,
    pub api: Option<Proc>,
    /// Extra flags of kube-testplane for the API server's next start.
    pub api_flags: Vec<String>,
    pub _etcd: Proc,
    pub server: String,
    pub admin_kubeconfig: PathBuf,
    /// The API server's CA, base64 (from the admin kubeconfig).
    pub ca_data: String,
}

/// Starts `cmd` (stderr appended to `log_path`) and waits for a line on its
/// stdout that starts with `prefix`.
pub fn spawn_until_line(
    mut cmd: Command,
    name: &'static str,
    prefix: &'static str,
    log_path: &Path,
    limit: Duration,
) -> (Proc, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("log file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let proc_ = Proc { child, name };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with(prefix) {
                let _ = tx.send(line);
            }
        }
    });
    match rx.recv_timeout(limit) {
        Ok(line) => (proc_, line),
        Err(_) => {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            panic!(
                "\n\n!!! e2e: {name} did not become ready within {limit:?}.\n\
                 !!! Last lines of {}:\n{}\n",
                log_path.display(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

pub fn start_plane(bin: &Path, dir: &Path) -> (Plane, Duration) {
    let start = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.arg("--etcd-only")
        .arg("--state-dir")
        .arg(dir.join("state"));
    let (etcd, line) = spawn_until_line(
        cmd,
        "etcd",
        "nestdock-testplane etcd ready ",
        &dir.join("etcd.log"),
        Duration::from_secs(60),
    );
    let etcd_url = line.rsplit(' ').next().unwrap().to_string();
    let mut plane = Plane {
        bin: bin.to_path_buf(),
        dir: dir.to_path_buf(),
        etcd_url,
        port: free_port(),
        api: None,
        api_flags: Vec::new(),
        _etcd: etcd,
        server: String::new(),
        admin_kubeconfig: dir.join("admin.kubeconfig"),
        ca_data: String::new(),
    };
    plane.start_apiserver();
    let cfg: Value = serde_norway::from_str(
        &std::fs::read_to_string(&plane.admin_kubeconfig).expect("admin kubeconfig"),
    )
    .expect("kubeconfig YAML");
    plane.ca_data = cfg["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .expect("CA data")
        .to_string();
    (plane, start.elapsed())
}

impl Plane {
    /// Starts kube-apiserver (again) on the same port, etcd and certificates;
    /// returns how long it took to be ready.
    pub fn start_apiserver(&mut self) -> Duration {
        let start = Instant::now();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--etcd-servers")
            .arg(&self.etcd_url)
            .arg(format!("--port={}", self.port))
            .args(&self.api_flags);
        let (api, line) = spawn_until_line(
            cmd,
            "kube-apiserver",
            "nestdock-testplane ready ",
            &self.dir.join("testplane.log"),
            Duration::from_secs(240),
        );
        eprintln!("e2e: {line}");
        self.server = line
            .split_whitespace()
            .nth(2)
            .expect("server in ready line")
            .to_string();
        self.api = Some(api);
        start.elapsed()
    }

    /// Writes a kubeconfig to `path` that talks to this API server with a
    /// bearer token (a ServiceAccount's, from `kubectl create token`).
    pub fn token_kubeconfig(&self, path: &Path, token: &str) {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: testplane\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: nestdock\n  user:\n    token: {token}\ncontexts:\n- name: nestdock\n  context:\n    cluster: testplane\n    user: nestdock\ncurrent-context: nestdock\n",
                self.server, self.ca_data
            ),
        )
        .unwrap();
    }

    pub fn stop_apiserver(&mut self) {
        drop(self.api.take());
    }
}

/// kubectl against the control plane with one kubeconfig.
#[derive(Clone)]
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=60s")
            .args(args);
        run_with_timeout(cmd, stdin.map(str::as_bytes), Duration::from_secs(90))
    }

    /// Runs kubectl and panics with its stderr unless it succeeds.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.output(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            stdin.map(|s| &s[..s.len().min(4000)]).unwrap_or("")
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Runs kubectl, expects a failure, returns stderr.
    pub fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.output(args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {} should have failed, it printed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str], stdin: Option<&str>) -> Value {
        // One object, or (kubectl create -f of a List) one object after another.
        let text = self.ok(args, stdin);
        let mut values: Vec<Value> = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("kubectl output not JSON: {e}\n{text}"));
        match values.len() {
            1 => values.pop().unwrap(),
            _ => list(values),
        }
    }

    /// `kubectl create -o json -f -` of one object in `ns`.
    pub fn create(&self, ns: &str, obj: &Value) -> Value {
        self.json(
            &["create", "-n", ns, "-o", "json", "-f", "-"],
            Some(&obj.to_string()),
        )
    }

    pub fn create_err(&self, ns: &str, obj: &Value) -> String {
        self.fails(&["create", "-n", ns, "-f", "-"], Some(&obj.to_string()))
    }

    /// A namespace with these labels, created (or relabelled) in one call.
    pub fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": name, "labels": labels}});
        self.ok(&["apply", "-f", "-"], Some(&ns.to_string()));
    }
}

// ------------------------------------------------------------ nestdock serve

/// A `nestdock serve` on fixed ports (so that the webhook configuration's
/// `url:` stays right across restarts), with a kubeconfig.
pub struct Nestdock {
    pub proc_: Option<Proc>,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub metrics: SocketAddr,
}

pub fn spawn_nestdock(
    port: u16,
    metrics_port: u16,
    cert_dir: &Path,
    kubeconfig: &Path,
    extra: &[&str],
) -> Nestdock {
    let mut args: Vec<std::ffi::OsString> = vec![
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}").into(),
        "--metrics-listen".into(),
        format!("127.0.0.1:{metrics_port}").into(),
        "--tls-cert".into(),
        cert_dir.join("tls.crt").into(),
        "--tls-key".into(),
        cert_dir.join("tls.key").into(),
    ];
    args.extend(["--shutdown-delay", "0s", "--drain-timeout", "2s"].map(Into::into));
    args.extend(extra.iter().map(Into::into));
    spawn_nestdock_args(&args, metrics_port, kubeconfig)
}

/// `nestdock ARGS...` (a `serve` command line whose metrics listener is
/// 127.0.0.1:`metrics_port`) with `kubeconfig`, once its namespace cache is
/// synced.
pub fn spawn_nestdock_args(
    args: &[std::ffi::OsString],
    metrics_port: u16,
    kubeconfig: &Path,
) -> Nestdock {
    // sh runs the server and stops it (SIGTERM, then waits) once its stdin,
    // a pipe held by this process, reaches EOF: on Proc::stop, and also when
    // this process dies without cleaning up.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#""$0" "$@" & pid=$!; read _line; kill $pid 2>/dev/null; wait $pid"#)
        .arg(super::bin())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn nestdock serve");
    let stderr = child.stderr.take().unwrap();
    let proc_ = Proc {
        child,
        name: "nestdock serve",
    };
    let exited = Arc::new(Mutex::new(None::<String>));
    let (_, logs) = harness::watch_logs(stderr, {
        let exited = exited.clone();
        move || exited.lock().unwrap().clone()
    });
    let n = Nestdock {
        proc_: Some(proc_),
        logs,
        metrics: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
    };
    n.wait_log(&["namespace cache synced"], Duration::from_secs(30));
    n
}

impl Nestdock {
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn find_log(&self, needles: &[&str]) -> Option<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .cloned()
    }

    pub fn wait_log(&self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.find_log(needles) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "nestdock serve logged no line with {needles:?} within {limit:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sum of `nestdock_reviews_total` over all labels (plain HTTP GET).
    pub fn reviews(&self) -> u64 {
        self.metric_sum("nestdock_reviews_total")
    }

    pub fn metric_sum(&self, name: &str) -> u64 {
        let text = http_get(self.metrics, "/metrics");
        text.lines()
            .filter(|l| {
                l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc_.take() {
            p.stop();
        }
    }
}

/// A plain HTTP/1.0 GET on loopback; the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read metrics");
    match text.split_once("\r\n\r\n") {
        Some((head, body)) => {
            assert!(
                head.starts_with("HTTP/1.") && head.contains(" 200"),
                "{head}"
            );
            body.to_string()
        }
        None => panic!("bad HTTP answer: {text}"),
    }
}

pub fn parse_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

pub fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

pub fn list_items(v: Value) -> Vec<Value> {
    if kind(&v) == "List" {
        v["items"].as_array().cloned().unwrap_or_default()
    } else {
        vec![v]
    }
}

/// An HTTPS GET on loopback verifying `ca_pem`: status code and body.
pub fn https_get(addr: SocketAddr, ca_pem: &[u8], path: &str) -> Result<(u16, String), String> {
    https_get_named(addr, "127.0.0.1", ca_pem, path)
}

/// An HTTPS GET of `addr` that verifies the certificate against `ca_pem` for
/// `server_name`: status code and body.
pub fn https_get_named(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &[u8],
    path: &str,
) -> Result<(u16, String), String> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    // A close_notify-less end is fine here: the body is read up to EOF.
    let _ = tls.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad answer: {text}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}
