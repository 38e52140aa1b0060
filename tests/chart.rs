//! The Helm chart (charts/nestdock), the single source of nestdock's install
//! (README, *Install into a cluster*).
//!
//! - helm is built from its Go module by scripts/setup-helm.sh (no binary
//!   download); `helm lint --strict` is clean, with the default values and with
//!   every optional part on.
//! - `helm template` output validates strictly with the validator the other
//!   tests use (scripts/validate-k8s). The CRDs are checked apart: the chart's
//!   cert-manager objects are the ones manifests/cert-manager ships (which
//!   tests/manifests.rs checks against cert-manager's CRDs), and the
//!   ServiceMonitor against the Prometheus Operator's CRD.
//! - values.schema.json rejects typos, so `helm install` fails on them.
//! - The chart installs what `kubectl apply -k manifests/cert-manager` installs
//!   (Helm's labels aside), and manifests/ is rendered from the chart by
//!   scripts/render-manifests.sh: rendering again changes nothing.
//! - The self-signed certificate the chart generates serves nestdock and is the
//!   one the caBundle trusts; a render that finds the Secret (lookup, run by
//!   `helm template --dry-run=server` against a minimal API server on
//!   loopback) keeps it and the caBundle byte for byte, as `helm upgrade` does.
//! - The config file from values is one nestdock accepts, and with the
//!   registry cache on, the daemons nestdock injects use it as their mirror.
//! - The Grafana dashboard is dashboard JSON whose every query names a metric
//!   that the real binary exports on /metrics.
//!
//! When helm, kubectl or the validator cannot be set up, the tests fail with a
//! message that says so: they are part of the suite, never skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use serde_json::{json, Value};

mod common;

use common::docs::{free_port, kind, kubectl, name, named, parse_documents, read, repo, tool};

const RELEASE: &str = "nestdock";
const NAMESPACE: &str = "nestdock-system";
/// Every optional part of the chart on (the chart-testing convention).
const EVERYTHING: &str = "charts/nestdock/ci/everything-values.yaml";

// ------------------------------------------------------------------ plumbing

/// Runs a set-up script once per test binary and returns the path it prints
/// last; panics (never skips) when it fails.
/// helm, built from its Go module (a few minutes the first time).
fn helm() -> Command {
    static CELL: OnceLock<Result<String, String>> = OnceLock::new();
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    let bin = tool(&CELL, "scripts/setup-helm.sh", "helm");
    // No user's helm configuration, cache or plugins take part.
    let home = HOME.get_or_init(|| tempfile::tempdir().expect("temporary directory"));
    let mut cmd = Command::new(bin);
    for (var, dir) in [
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_DATA_HOME", "data"),
    ] {
        cmd.env(var, home.path().join(dir));
    }
    cmd.current_dir(repo());
    cmd
}

/// `helm template nestdock charts/nestdock -n nestdock-system ARGS...`: its
/// output, or helm's error.
fn try_template(args: &[&str]) -> Result<String, String> {
    let out = helm()
        .args([
            "template",
            RELEASE,
            "charts/nestdock",
            "--namespace",
            NAMESPACE,
        ])
        .args(args)
        .output()
        .expect("run helm template");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into())
    }
}

/// `helm template` with ARGS, parsed into its objects; panics when it fails.
fn template(args: &[&str]) -> Vec<Value> {
    let text = try_template(args)
        .unwrap_or_else(|e| panic!("helm template {} failed: {e}", args.join(" ")));
    parse_documents(&text)
}

fn kustomize(dir: &str) -> Vec<Value> {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(repo().join(dir))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_documents(&String::from_utf8_lossy(&out.stdout))
}

/// Validates built-in objects strictly with scripts/validate-k8s.
fn validate_strict(what: &str, docs: &[&Value]) {
    common::docs::validate_strict(&[(what.to_string(), docs.to_vec())]);
}

fn all<'a>(docs: &'a [Value], kind_: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == kind_).collect()
}

/// CRDs (not in the Kubernetes schema) and built-in objects.
fn split_crds(docs: &[Value]) -> (Vec<&Value>, Vec<&Value>) {
    docs.iter().partition(|d| {
        d["apiVersion"]
            .as_str()
            .is_some_and(|v| v.contains('.') && !v.contains(".k8s.io/"))
    })
}

fn config_file(docs: &[Value]) -> String {
    named(docs, "ConfigMap", "nestdock-config")["data"]["config.yaml"]
        .as_str()
        .expect("the ConfigMap has config.yaml")
        .to_string()
}

/// A child process that is killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `nestdock serve` on loopback with the given files, `--kube=false`.
fn serve(dir: &Path, cert: &str, key: &str, config: &str) -> (Running, u16, u16) {
    let files = [("tls.crt", cert), ("tls.key", key), ("config.yaml", config)];
    for (file, content) in files {
        std::fs::write(dir.join(file), content).unwrap();
    }
    let (port, metrics) = (free_port(), free_port());
    let child = Command::new(common::bin())
        .arg("serve")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--metrics-listen=127.0.0.1:{metrics}"))
        .arg(format!("--tls-cert={}", dir.join("tls.crt").display()))
        .arg(format!("--tls-key={}", dir.join("tls.key").display()))
        .arg(format!("--config={}", dir.join("config.yaml").display()))
        .arg("--kube=false")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nestdock serve");
    (Running(child), port, metrics)
}

/// GET over plain HTTP on loopback, retried while the server starts (10 s).
fn http_get(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut sock = TcpStream::connect(("127.0.0.1", port))?;
            sock.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(
                sock,
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )?;
            let mut raw = String::new();
            sock.read_to_string(&mut raw)?;
            Ok(raw)
        })();
        match attempt {
            Ok(raw) if raw.starts_with("HTTP/1.1 200") => return raw,
            other if Instant::now() > deadline => {
                panic!("GET {path} on 127.0.0.1:{port}: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A request over HTTPS, verifying the server against `ca_pem` as
/// `server_name`, retried while the server starts (10 s). Returns the status
/// line.
fn https(
    port: u16,
    server_name: &str,
    ca_pem: &[u8],
    method: &str,
    path: &str,
    body: &str,
) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(ca.expect("caBundle is PEM")).expect("a CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = (|| -> Result<String, String> {
            let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
            let mut conn =
                rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
            let mut sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut tls = rustls::Stream::new(&mut conn, &mut sock);
            write!(
                tls,
                "{method} {path} HTTP/1.1\r\nHost: {server_name}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .map_err(|e| format!("TLS: {e}"))?;
            let mut raw = Vec::new();
            match tls.read_to_end(&mut raw) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
                Err(e) => return Err(format!("TLS: {e}")),
            }
            let text = String::from_utf8_lossy(&raw);
            Ok(text.lines().next().unwrap_or_default().to_string())
        })();
        match attempt {
            Ok(status) => return status,
            Err(e) if Instant::now() > deadline => panic!("{method} {path} over TLS: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ------------------------------------------------------------ 1. lint

#[test]
fn chart_lints_clean_with_default_values_and_with_everything_on() {
    for args in [vec![], vec!["--values", EVERYTHING]] {
        let out = helm()
            .args([
                "lint",
                "--strict",
                "charts/nestdock",
                "--namespace",
                NAMESPACE,
            ])
            .args(&args)
            .output()
            .expect("run helm lint");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "helm lint --strict {args:?} failed:\n{text}"
        );
        for bad in ["[WARNING]", "[ERROR]"] {
            assert!(!text.contains(bad), "helm lint --strict {args:?}:\n{text}");
        }
        assert!(text.contains("0 chart(s) failed"), "{text}");
    }
}

// -------------------------------------------- 2. render and validate strictly

#[test]
fn default_and_everything_on_renders_validate_strictly() {
    let defaults = template(&[]);
    let everything = template(&["--values", EVERYTHING]);

    let (crds, builtin) = split_crds(&defaults);
    assert!(crds.is_empty(), "the defaults need no CRD: {crds:?}");
    validate_strict("default values", &builtin);
    let kinds: BTreeSet<&str> = defaults.iter().map(kind).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "MutatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ]),
        "the default install"
    );

    let (crds, builtin) = split_crds(&everything);
    validate_strict("every optional part on", &builtin);
    let count = |k: &str| everything.iter().filter(|d| kind(d) == k).count();
    for (k, n) in [
        ("Namespace", 2),
        ("Deployment", 2),
        ("Service", 2),
        ("ConfigMap", 2),
        ("DaemonSet", 1),
        ("NetworkPolicy", 1),
        ("PersistentVolumeClaim", 1),
        ("ServiceMonitor", 1),
        ("Certificate", 2),
        ("Issuer", 2),
        ("Secret", 0),
    ] {
        assert_eq!(count(k), n, "{k} objects with every optional part on");
    }
    // Both pods that run nestdock's image can pull it from a private
    // registry: the webhook's and node-docker's (its reap container).
    for k in ["Deployment", "DaemonSet"] {
        for d in everything.iter().filter(|d| kind(d) == k) {
            let runs_nestdock = d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["image"].as_str().is_some_and(|i| i.contains("nestdock")));
            if runs_nestdock {
                assert!(
                    d["spec"]["template"]["spec"]["imagePullSecrets"].is_array(),
                    "{k} {} has no imagePullSecrets",
                    d["metadata"]["name"]
                );
            }
        }
    }
    for crd in crds {
        match (crd["apiVersion"].as_str().unwrap_or_default(), kind(crd)) {
            ("cert-manager.io/v1", "Issuer" | "Certificate") => {}
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                check_service_monitor(crd, &everything)
            }
            (v, k) => panic!("{v} {k}: no check for this CRD"),
        }
    }
    // The cert-manager objects: exactly manifests/cert-manager's, which
    // tests/manifests.rs checks against cert-manager's CRDs.
    let cert_manager = |docs: &[Value]| -> Vec<Value> {
        let docs = docs
            .iter()
            .filter(|d| {
                d["apiVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("cert-manager.io/")
            })
            .map(without_helm)
            .collect();
        sorted(docs)
    };
    let (ours, shipped) = (
        cert_manager(&everything),
        cert_manager(&kustomize("manifests/cert-manager")),
    );
    assert_eq!(ours, shipped);
}

/// What the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1)
/// requires of the fields the chart sets, and that it selects nestdock's
/// Service and its metrics port.
fn check_service_monitor(sm: &Value, docs: &[Value]) {
    let top: BTreeSet<&str> = sm.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        top,
        BTreeSet::from(["apiVersion", "kind", "metadata", "spec"])
    );
    assert_eq!(sm["metadata"]["namespace"], NAMESPACE);
    let spec = sm["spec"].as_object().expect("spec");
    for key in spec.keys() {
        assert!(
            ["selector", "namespaceSelector", "endpoints", "jobLabel"].contains(&key.as_str()),
            "ServiceMonitor: unexpected spec.{key}"
        );
    }
    let selector = sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("spec.selector.matchLabels (required)");
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        json!([NAMESPACE])
    );
    // The operator's duration pattern.
    let duration = |s: &str| {
        !s.is_empty()
            && s.split_inclusive(|c: char| c.is_ascii_alphabetic())
                .all(|part| {
                    let unit = part.trim_start_matches(|c: char| c.is_ascii_digit());
                    unit.len() < part.len() && ["y", "w", "d", "h", "m", "s"].contains(&unit)
                })
    };
    let endpoints = sm["spec"]["endpoints"].as_array().expect("endpoints");
    assert!(!endpoints.is_empty());
    for ep in endpoints {
        for key in ep.as_object().unwrap().keys() {
            assert!(
                ["port", "path", "scheme", "interval", "scrapeTimeout"].contains(&key.as_str()),
                "ServiceMonitor endpoint: unexpected {key}"
            );
        }
        assert!(["http", "https"].contains(&ep["scheme"].as_str().unwrap()));
        for d in ["interval", "scrapeTimeout"] {
            assert!(duration(ep[d].as_str().unwrap()), "{d}: {}", ep[d]);
        }
        let port = ep["port"].as_str().expect("endpoint port name");
        // Selects nestdock's Service (and nothing of its own that lacks the port).
        let services: Vec<&Value> = all(docs, "Service")
            .into_iter()
            .filter(|s| {
                selector
                    .iter()
                    .all(|(k, v)| &s["metadata"]["labels"][k] == v)
            })
            .filter(|s| {
                s["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == port)
            })
            .collect();
        assert_eq!(services.len(), 1, "the ServiceMonitor scrapes {services:?}");
        assert_eq!(name(services[0]), "nestdock");
        assert_eq!(ep["path"], "/metrics");
    }
}

/// An object without what only Helm adds: its labels, the config checksum.
fn without_helm(doc: &Value) -> Value {
    let mut doc = doc.clone();
    fn strip(meta: &mut Value) {
        // get_mut, not IndexMut: indexing would add the key as null.
        if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
            for l in [
                "app.kubernetes.io/instance",
                "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by",
                "helm.sh/chart",
            ] {
                labels.remove(l);
            }
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove("checksum/config");
            if annotations.is_empty() {
                meta.as_object_mut().unwrap().remove("annotations");
            }
        }
    }
    strip(&mut doc["metadata"]);
    if doc["spec"]["template"]["metadata"].is_object() {
        strip(&mut doc["spec"]["template"]["metadata"]);
    }
    doc
}

fn sorted(mut docs: Vec<Value>) -> Vec<Value> {
    docs.sort_by_key(|d| format!("{} {} {}", kind(d), d["metadata"]["namespace"], name(d)));
    docs
}

// ------------------------------------------------------ 3. values schema

#[test]
fn a_values_typo_fails_through_the_schema() {
    for (set, field) in [
        ("replica=3", "replica"),
        ("registryCache.enabeld=true", "enabeld"),
        ("config.dind.mtuu=1400", "mtuu"),
        ("config.defaultMode=dockerd", "defaultMode"),
        ("certificates.mode=selfsigned", "mode"),
        ("webhook.timeoutSeconds=60", "timeoutSeconds"),
    ] {
        let err = try_template(&["--set", set])
            .expect_err(&format!("helm template --set {set} should fail"));
        assert!(
            err.contains("schema") && err.contains(field),
            "--set {set}: helm's error should name the schema and {field}: {err}"
        );
    }
    // The file in the repository is the schema helm uses, and it is strict at
    // every level it describes.
    let schema: Value =
        serde_json::from_str(&read(repo().join("charts/nestdock/values.schema.json")))
            .expect("values.schema.json is JSON");
    fn strict(v: &Value, path: &str) {
        if v["type"] == "object" && v["properties"].is_object() {
            assert_eq!(
                v["additionalProperties"], false,
                "values.schema.json: {path} allows unknown keys"
            );
            for (k, p) in v["properties"].as_object().unwrap() {
                // Free-form by design: passed to Kubernetes as they are.
                if !["global", "affinity"].contains(&k.as_str()) {
                    strict(p, &format!("{path}.{k}"));
                }
            }
        }
    }
    strict(&schema, "values");
    // Every value has a schema entry: values.yaml itself passes.
    let values: Value = serde_norway::from_str(&read(repo().join("charts/nestdock/values.yaml")))
        .expect("values.yaml is YAML");
    let described: BTreeSet<&String> = schema["properties"].as_object().unwrap().keys().collect();
    for key in values.as_object().unwrap().keys() {
        assert!(described.contains(key), "values.schema.json lacks {key}");
    }
}

// ------------------------------- 4. the chart installs what kustomize installs

#[test]
fn chart_installs_what_the_kustomize_install_installs() {
    let chart = template(&[
        "--set",
        "certificates.mode=cert-manager",
        "--set",
        "namespace.create=true",
    ]);
    let kustomized = kustomize("manifests/cert-manager");
    let normalize = |docs: &[Value]| -> Vec<Value> {
        let docs: Vec<Value> = docs
            .iter()
            .map(without_helm)
            .map(|mut d| {
                // kustomize's ConfigMap name carries its content hash.
                if kind(&d) == "ConfigMap" {
                    d["metadata"]["name"] = json!("nestdock-config");
                }
                if kind(&d) == "Deployment" {
                    for v in d["spec"]["template"]["spec"]["volumes"]
                        .as_array_mut()
                        .unwrap()
                    {
                        if v["configMap"].is_object() {
                            v["configMap"]["name"] = json!("nestdock-config");
                        }
                    }
                }
                // The config's text: compare what it says, not its layout.
                if let Some(text) = d["data"]["config.yaml"].as_str() {
                    let parsed: Value = serde_norway::from_str(text).unwrap();
                    d["data"]["config.yaml"] = parsed;
                }
                d
            })
            .collect();
        sorted(docs)
    };
    let (ours, theirs) = (normalize(&chart), normalize(&kustomized));
    let list = |docs: &[Value]| -> Vec<String> {
        docs.iter()
            .map(|d| format!("{} {}", kind(d), name(d)))
            .collect()
    };
    assert_eq!(list(&ours), list(&theirs), "the same objects");
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(
            a,
            b,
            "{} {}: the chart and manifests/cert-manager differ",
            kind(a),
            name(a)
        );
    }
}

#[test]
fn manifests_are_rendered_from_the_chart() {
    // Build helm first (once), so the script finds it ready.
    let _ = helm();
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = Command::new("bash")
        .arg(repo().join("scripts/render-manifests.sh"))
        .arg("--out")
        .arg(dir.path())
        .output()
        .expect("run scripts/render-manifests.sh");
    assert!(
        out.status.success(),
        "scripts/render-manifests.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = "# Rendered from charts/nestdock by scripts/render-manifests.sh";
    let rendered = walk(dir.path());
    assert!(rendered.len() >= 10, "{rendered:?}");
    for file in &rendered {
        let rel = file.strip_prefix(dir.path()).unwrap();
        let fresh = read(file);
        assert!(fresh.starts_with(header), "{}", rel.display());
        let committed = repo().join("manifests").join(rel);
        assert!(
            committed.is_file() && read(&committed) == fresh,
            "manifests/{} is not what the chart renders: run scripts/render-manifests.sh \
             and commit the result",
            rel.display()
        );
    }
    // No rendered file is left over from an older layout.
    for file in walk(&repo().join("manifests")) {
        if read(&file).starts_with(header) {
            let rel = file.strip_prefix(repo().join("manifests")).unwrap();
            assert!(
                dir.path().join(rel).is_file(),
                "manifests/{} says it is rendered, but the script no longer renders it",
                rel.display()
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

// ------------------------------------------------------- 5. certificates

#[test]
fn self_signed_certificate_serves_nestdock_and_is_what_the_webhooks_trust() {
    let docs = template(&[]);
    let secret = named(&docs, "Secret", "nestdock-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let b64 = |k: &str| -> String {
        let v = secret["data"][k]
            .as_str()
            .unwrap_or_else(|| panic!("Secret data.{k}"));
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).unwrap()).unwrap()
    };
    let config = named(&docs, "MutatingWebhookConfiguration", "nestdock");
    let hooks = config["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 3);
    for hook in hooks {
        assert_eq!(
            hook["clientConfig"]["caBundle"], secret["data"]["ca.crt"],
            "{}: caBundle is the Secret's CA",
            hook["name"]
        );
    }
    // The Deployment mounts that Secret.
    let deployment = named(&docs, "Deployment", "nestdock");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(volumes
        .iter()
        .any(|v| v["secret"]["secretName"] == "nestdock-tls"));

    // The real server serves the generated certificate, and a client that
    // trusts only the caBundle accepts it under the Service's name.
    let dir = tempfile::tempdir().unwrap();
    let (_server, port, _) = serve(
        dir.path(),
        &b64("tls.crt"),
        &b64("tls.key"),
        &config_file(&docs),
    );
    let status = https(
        port,
        "nestdock.nestdock-system.svc",
        b64("ca.crt").as_bytes(),
        "GET",
        "/healthz",
        "",
    );
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

#[test]
fn self_signed_secret_is_kept_across_upgrades_and_other_modes_ship_none() {
    // Plain helm template has no cluster, so lookup finds nothing and each
    // render makes a new CA; `helm upgrade` finds the Secret and keeps it
    // (an_upgrade_keeps_the_self_signed_secret_it_finds runs lookup against an
    // API server). Here: the template looks the Secret up by the name it
    // writes, and uses what it finds for both the Secret and the caBundle.
    let source = read(repo().join("charts/nestdock/templates/webhook.yaml"));
    let lookup = source
        .lines()
        .find(|l| l.contains("lookup \""))
        .expect("templates/webhook.yaml looks the Secret up");
    assert!(
        lookup.contains(r#"lookup "v1" "Secret" $ns $secretName"#),
        "{lookup}"
    );
    assert!(source.contains("name: {{ $secretName }}"));
    assert!(source.contains(r#"$caBundle = index $tls "ca.crt""#));
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(
            source.contains(&format!(r#"(index $existing.data "{key}")"#)),
            "the kept Secret's {key} is reused"
        );
    }
    let first = template(&[]);
    let second = template(&[]);
    let ca = |docs: &[Value]| named(docs, "Secret", "nestdock-tls")["data"]["ca.crt"].clone();
    assert_ne!(
        ca(&first),
        ca(&second),
        "without a Secret to find, a new CA is made"
    );

    // cert-manager: no Secret from the chart; cainjector fills the caBundle.
    let docs = template(&["--set", "certificates.mode=cert-manager"]);
    assert!(
        all(&docs, "Secret").is_empty(),
        "cert-manager writes the Secret"
    );
    let config = named(&docs, "MutatingWebhookConfiguration", "nestdock");
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "nestdock-system/nestdock"
    );
    for hook in config["webhooks"].as_array().unwrap() {
        assert!(hook["clientConfig"]["caBundle"].is_null());
    }
    assert_eq!(
        named(&docs, "Certificate", "nestdock")["spec"]["secretName"],
        "nestdock-tls"
    );

    // external: no Secret; the caBundle given, if any.
    let docs = template(&[
        "--set",
        "certificates.mode=external",
        "--set",
        "certificates.external.caBundle=Q0E=",
    ]);
    assert!(all(&docs, "Secret").is_empty());
    assert!(all(&docs, "Certificate").is_empty());
    for hook in named(&docs, "MutatingWebhookConfiguration", "nestdock")["webhooks"]
        .as_array()
        .unwrap()
    {
        assert_eq!(hook["clientConfig"]["caBundle"], "Q0E=");
    }
}

// --------------------------------------- 6. config, registry cache, node docker

/// `nestdock inject --config FILE --mode MODE` on a plain pod: the injected pod.
fn inject(config: &str, mode: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "build", "namespace": "ci"},
        "spec": {"containers": [{"name": "build", "image": "docker:28-cli"}]}
    });
    let mut child = Command::new(common::bin())
        .args(["inject", "--mode", mode, "-f", "-", "--config"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nestdock inject");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pod.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nestdock inject --config (from the chart) failed: {}\nconfig:\n{config}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into()
}

#[test]
fn registry_cache_is_the_dind_mirror_and_node_docker_the_dood_socket() {
    let url = "http://nestdock-registry-cache.nestdock-system.svc:5000";
    // The default config: nestdock accepts it, and no mirror is set.
    let defaults = template(&[]);
    assert!(!inject(&config_file(&defaults), "dind").contains(url));

    let docs = template(&["--values", EVERYTHING]);
    let config = config_file(&docs);
    let parsed: Value = serde_norway::from_str(&config).unwrap();
    assert_eq!(parsed["dind"]["registryMirrors"][0], url, "{config}");
    // nestdock accepts the config and hands the mirror to every dind daemon.
    assert!(
        inject(&config, "dind").contains(url),
        "the daemon does not use the cache"
    );

    // The cache answers at that URL: a Service in front of registry:2 in proxy mode.
    let service = named(&docs, "Service", "nestdock-registry-cache");
    assert_eq!(service["metadata"]["namespace"], NAMESPACE);
    assert_eq!(service["spec"]["ports"][0]["port"], 5000);
    let cache = named(&docs, "Deployment", "nestdock-registry-cache");
    let selector = &cache["spec"]["selector"]["matchLabels"];
    assert_eq!(&service["spec"]["selector"], selector);
    let pod = &cache["spec"]["template"];
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][k], v);
    }
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "registry:2");
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(
        env["REGISTRY_PROXY_REMOTEURL"]["value"],
        "https://registry-1.docker.io"
    );
    assert_eq!(env["REGISTRY_HTTP_ADDR"]["value"], ":5000");
    for (var, key) in [
        ("REGISTRY_PROXY_USERNAME", "username"),
        ("REGISTRY_PROXY_PASSWORD", "password"),
    ] {
        assert_eq!(env[var]["valueFrom"]["secretKeyRef"]["key"], key);
    }
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "registry", "{probe}");
    }
    assert!(container["resources"]["requests"].is_object());
    let claim = named(&docs, "PersistentVolumeClaim", "nestdock-registry-cache");
    assert_eq!(
        pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "storage")
            .expect("the storage volume")["persistentVolumeClaim"]["claimName"],
        name(claim)
    );
    assert_eq!(
        container["volumeMounts"][0]["mountPath"],
        "/var/lib/registry"
    );
    // In the restricted namespace: non-root, nothing to escalate.
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );

    // dood points at the node daemon the chart runs.
    let ds = named(&docs, "DaemonSet", "node-docker");
    let args = ds["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--host=unix:///run/nestdock-docker/docker.sock"),
        "{args}"
    );
    assert_eq!(
        parsed["dood"]["hostSocket"],
        "/run/nestdock-docker/docker.sock"
    );
    assert_eq!(
        parsed["dood"]["nodeSelector"],
        ds["spec"]["template"]["spec"]["nodeSelector"]
    );
    assert!(args.contains(&format!("--group={}", parsed["dood"]["socketGroup"])));
}

#[test]
fn registry_cache_overlay_renders_validates_and_matches_the_chart() {
    let docs = kustomize("manifests/examples/registry-cache");
    let (crds, builtin) = split_crds(&docs);
    assert!(crds.iter().all(|d| d["apiVersion"] == "cert-manager.io/v1"));
    validate_strict("manifests/examples/registry-cache", &builtin);
    // One config, the one with the mirror, and the Deployment mounts it.
    let configs = all(&docs, "ConfigMap");
    assert_eq!(configs.len(), 1, "{configs:?}");
    let text = configs[0]["data"]["config.yaml"].as_str().unwrap();
    let parsed: Value = serde_norway::from_str(text).unwrap();
    assert_eq!(
        parsed["dind"]["registryMirrors"],
        json!(["http://nestdock-registry-cache.nestdock-system.svc:5000"])
    );
    let deployment = named(&docs, "Deployment", "nestdock");
    assert!(deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["configMap"]["name"] == configs[0]["metadata"]["name"]));
    named(&docs, "Deployment", "nestdock-registry-cache");
    named(&docs, "Service", "nestdock-registry-cache");
    named(&docs, "PersistentVolumeClaim", "nestdock-registry-cache");
    assert!(inject(text, "dind").contains("nestdock-registry-cache"));
}

// ------------------------------------------------------------ 7. dashboard

/// The series the real binary exports, from its /metrics after one review:
/// each family's samples (`_total` for counters; `_bucket`, `_sum`, `_count`
/// for histograms), and the families registered in src/metrics.rs (the
/// namespace cache's gauge is there only with a cluster, `--kube=true`).
fn exported_series() -> (BTreeSet<String>, BTreeSet<String>) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = Command::new(common::bin())
        .args(["certs", "--out-dir"])
        .arg(&certs)
        .output()
        .expect("run nestdock certs");
    assert!(out.status.success());
    let (_server, port, metrics) = serve(
        dir.path(),
        &read(certs.join("tls.crt")),
        &read(certs.join("tls.key")),
        "{}",
    );
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": "ci"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]}
    });
    let (_, review) = common::harness::review(
        "CREATE",
        json!({"group": "", "version": "v1", "kind": "Pod"}),
        pod,
        Value::Null,
    );
    let status = https(
        port,
        "nestdock.nestdock-system.svc",
        read(certs.join("ca.crt")).as_bytes(),
        "POST",
        "/mutate",
        &review.to_string(),
    );
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let body = http_get(metrics, "/metrics");
    let (mut families, mut series) = (BTreeSet::new(), BTreeSet::new());
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (family, kind_) = (words.next().unwrap(), words.next().unwrap_or_default());
            families.insert(family.to_string());
            let suffixes: &[&str] = match kind_ {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                let base = family.strip_suffix(s).unwrap_or(family);
                series.insert(format!("{base}{s}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let sample = line.split(['{', ' ']).next().unwrap();
            series.insert(sample.to_string());
        }
    }
    // Registered in src/metrics.rs: the names in `register*(` and
    // `encode_descriptor(` calls. A custom collector's gauge is exported
    // under its name as it is.
    let source = read(repo().join("src/metrics.rs"));
    let mut registered = BTreeSet::new();
    for (call, gauge) in [
        ("register(", false),
        ("register_with_unit(", false),
        ("encode_descriptor(", true),
    ] {
        for part in source.split(call).skip(1) {
            let name: String = part
                .trim_start()
                .strip_prefix('"')
                .map(|rest| rest.chars().take_while(|c| *c != '"').collect())
                .unwrap_or_default();
            if name.starts_with("nestdock_") {
                if gauge {
                    series.insert(name.clone());
                    families.insert(name.clone());
                }
                registered.insert(name);
            }
        }
    }
    assert!(
        registered.len() >= 5,
        "registered in src/metrics.rs: {registered:?}"
    );
    // Every registered family is seen one way or the other.
    for name in &registered {
        assert!(
            families.iter().any(|f| f.starts_with(name.as_str())),
            "{name} is registered but not exported: {families:?}"
        );
    }
    (families, series)
}

#[test]
fn dashboard_is_grafana_json_and_queries_only_exported_metrics() {
    let docs = template(&["--values", EVERYTHING]);
    let cm = named(&docs, "ConfigMap", "nestdock-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let text = cm["data"]["nestdock.json"].as_str().expect("nestdock.json");
    assert_eq!(
        text.trim(),
        read(repo().join("charts/nestdock/dashboards/nestdock.json")).trim()
    );
    let dash: Value = serde_json::from_str(text).expect("the dashboard is JSON");
    for key in ["uid", "title"] {
        assert!(dash[key].as_str().is_some_and(|s| !s.is_empty()), "{key}");
    }
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    assert!(
        dash["id"].is_null(),
        "an imported dashboard carries no database id"
    );
    let variables: BTreeSet<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6);
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "{title}: id"
        );
        assert!(panel["type"].as_str().is_some(), "{title}: type");
        for k in ["x", "y", "w", "h"] {
            assert!(
                panel["gridPos"][k].as_u64().is_some(),
                "{title}: gridPos.{k}"
            );
        }
        assert!(
            panel["gridPos"]["x"].as_u64().unwrap() + panel["gridPos"]["w"].as_u64().unwrap() <= 24
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "{title}: refId"
            );
            let expr = t["expr"].as_str().expect("a PromQL expr");
            // Every $variable is defined or one of Grafana's own.
            for var in expr.split('$').skip(1) {
                let var: String = var
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    variables.contains(var.as_str()) || var.starts_with("__"),
                    "{title}: ${var} is not a dashboard variable"
                );
            }
            queries.push((title.to_string(), expr.to_string()));
        }
        let ds = &panel["datasource"]["uid"];
        assert_eq!(ds, "${datasource}", "{title}: the datasource variable");
    }
    // Panels the issue asks for, by what they query.
    let joined: String = queries
        .iter()
        .map(|(_, q)| q.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "by (mode, outcome)",
        "outcome=\"denied\"",
        "histogram_quantile",
        "nestdock_inflight_reviews",
        "nestdock_cert_reloads_total",
        "nestdock_namespace_cache_ready",
    ] {
        assert!(joined.contains(needle), "no panel queries {needle}");
    }

    let (families, series) = exported_series();
    assert!(families.len() >= 5, "{families:?}");
    let mut used = BTreeSet::new();
    for (title, expr) in &queries {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("nestdock_") {
            let metric: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                series.contains(&metric),
                "{title}: {metric} is not a metric nestdock exports ({series:?})"
            );
            used.insert(metric.clone());
            rest = &rest[at + metric.len()..];
        }
    }
    // And every family nestdock exports is on the dashboard.
    for family in &families {
        assert!(
            used.iter().any(|m| m.starts_with(family.as_str())),
            "the dashboard shows nothing of {family}"
        );
    }
}

// ------------------------------------------- 8. lookup against an API server

/// A minimal API server on loopback for `helm template --dry-run=server`:
/// discovery, `/version`, and GET of one Secret (404 until it is set), so
/// that the chart's `lookup` runs for real. Plain HTTP; every path asked for
/// is recorded.
struct FakeApi {
    secret: Arc<std::sync::Mutex<Option<Value>>>,
    paths: Arc<std::sync::Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
}

impl FakeApi {
    fn start() -> FakeApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let secret: Arc<std::sync::Mutex<Option<Value>>> = Arc::default();
        let paths: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let (s, p) = (secret.clone(), paths.clone());
        // The thread ends with the test binary; it only ever answers loopback.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let path = target.split('?').next().unwrap_or_default().to_string();
                p.lock().unwrap().push(target.clone());
                let (code, body) = Self::answer(&path, &target, &s.lock().unwrap());
                let body = body.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: \
                 http://127.0.0.1:{port}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
                 user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: fake\n"
            ),
        )
        .unwrap();
        FakeApi { secret, paths, dir }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn answer(path: &str, target: &str, secret: &Option<Value>) -> (u16, Value) {
        let not_found = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "NotFound", "code": 404, "message": format!("{target} not found")
        });
        let resource = |name: &str, kind_: &str, namespaced: bool| {
            json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind_,
                   "verbs": ["get", "list", "create", "update", "patch", "delete"]})
        };
        match path {
            "/version" => (
                200,
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "",
                       "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z",
                       "goVersion": "go1.24.2", "compiler": "gc", "platform": "linux/amd64"}),
            ),
            "/api" => (
                200,
                json!({"kind": "APIVersions", "versions": ["v1"],
                       "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            ),
            "/apis" => (
                200,
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
            ),
            "/api/v1" => (
                200,
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
                       "resources": [resource("secrets", "Secret", true),
                                     resource("namespaces", "Namespace", false),
                                     resource("configmaps", "ConfigMap", true)]}),
            ),
            "/api/v1/namespaces/nestdock-system/secrets/nestdock-tls" => match secret {
                Some(s) => (200, s.clone()),
                None => (404, not_found),
            },
            // Helm's own release records: none.
            "/api/v1/namespaces/nestdock-system/secrets" => (
                200,
                json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}),
            ),
            _ => (404, not_found),
        }
    }
}

#[test]
fn an_upgrade_keeps_the_self_signed_secret_it_finds() {
    let api = FakeApi::start();
    let render = || {
        let out = helm()
            .args([
                "template",
                RELEASE,
                "charts/nestdock",
                "--namespace",
                NAMESPACE,
            ])
            .args(["--dry-run=server", "--kubeconfig"])
            .arg(api.kubeconfig())
            .output()
            .expect("run helm template --dry-run=server");
        assert!(
            out.status.success(),
            "helm template --dry-run=server failed: {}\nasked: {:?}",
            String::from_utf8_lossy(&out.stderr),
            api.paths.lock().unwrap()
        );
        parse_documents(&String::from_utf8_lossy(&out.stdout))
    };
    // Install: no Secret in the cluster, so the chart makes one.
    let install = render();
    let made = named(&install, "Secret", "nestdock-tls").clone();
    assert!(
        api.paths
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.starts_with("/api/v1/namespaces/nestdock-system/secrets/nestdock-tls")),
        "the chart never looked the Secret up: {:?}",
        api.paths.lock().unwrap()
    );
    // Upgrade: the Secret is there; the chart keeps it, byte for byte, and the
    // caBundle with it.
    *api.secret.lock().unwrap() = Some(made.clone());
    let upgrade = render();
    let kept = named(&upgrade, "Secret", "nestdock-tls");
    assert_eq!(
        kept["data"], made["data"],
        "the upgrade made a new certificate"
    );
    for hook in named(&upgrade, "MutatingWebhookConfiguration", "nestdock")["webhooks"]
        .as_array()
        .unwrap()
    {
        assert_eq!(hook["clientConfig"]["caBundle"], made["data"]["ca.crt"]);
    }
    // And a third render without the Secret (deleted) makes a new one.
    *api.secret.lock().unwrap() = None;
    let again = render();
    assert_ne!(
        named(&again, "Secret", "nestdock-tls")["data"],
        made["data"]
    );
}

#[test]
fn helm_install_refuses_a_values_typo_and_rolls_pods_on_a_config_change() {
    let api = FakeApi::start();
    let install = |sets: &[&str]| {
        let mut cmd = helm();
        cmd.args([
            "install",
            RELEASE,
            "charts/nestdock",
            "--namespace",
            NAMESPACE,
        ])
        .args(["--dry-run=server", "--kubeconfig"])
        .arg(api.kubeconfig());
        for set in sets {
            cmd.args(["--set", set]);
        }
        let out = cmd.output().expect("run helm install --dry-run=server");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // helm install reads the chart and checks values against the schema
    // before it creates anything.
    let (ok, err) = install(&["replica=3"]);
    assert!(
        !ok && err.contains("schema") && err.contains("replica"),
        "helm install with a typo: {err}"
    );
    // (A whole install would need the cluster's OpenAPI and every API group;
    // that is for the suite with a real control plane.)

    // A config change (helm upgrade --set config...) changes the pods'
    // checksum annotation, so the Deployment rolls; nothing else changes.
    let checksum = |docs: &[Value]| {
        named(docs, "Deployment", "nestdock")["spec"]["template"]["metadata"]["annotations"]
            ["checksum/config"]
            .as_str()
            .expect("checksum/config")
            .to_string()
    };
    let before = template(&[]);
    let after = template(&["--set", "config.dind.mtu=1400"]);
    assert_ne!(checksum(&before), checksum(&after));
    assert_eq!(checksum(&before), checksum(&template(&[])), "stable");
}

/// The config the install ships is the product's own default: a default
/// that changes in the code (say, which images a pod may pick) reaches the
/// chart's values and the rendered manifests, or this fails.
#[test]
fn the_shipped_config_is_the_products_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/base/config.yaml");
    let text = std::fs::read_to_string(&path).expect("manifests/base/config.yaml");
    let shipped = nestdock::config::Config::from_yaml(&text).expect("a valid config");
    assert_eq!(shipped, nestdock::config::Config::default());
}
