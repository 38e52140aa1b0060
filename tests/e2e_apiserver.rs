//! End to end against the real kube-apiserver (docs/architecture.md, *How it is tested*).
//!
//! One control plane (tests/kube: embedded etcd and kube-apiserver, built from
//! the upstream Go modules by scripts/build-kube.sh) is shared by every scenario:
//! one test function runs them in sequence, each under a step name. The
//! manifests are installed with kubectl as a platform team would, `nestdock
//! serve` (the real binary) runs as a local process with the manifests'
//! ServiceAccount, and every assertion is on what the API server stored or
//! answered.
//!
//! `NESTDOCK_E2E=skip` skips the suite (loudly); anything that keeps it from
//! building or starting fails it. `NESTDOCK_E2E_KEEP=1` keeps the state
//! directory (etcd data, certificates, kubeconfigs, logs) for debugging and
//! prints where it is.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use common::harness;
use common::kube::*;

// ------------------------------------------------------------ objects

fn pod(name: &str, annotations: Value, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "annotations": annotations},
           "spec": spec})
}

fn annotations(pod: &Value) -> BTreeMap<String, String> {
    pod["metadata"]["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn container_names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn all_container_names(pod: &Value) -> Vec<String> {
    let mut v = container_names(pod, "initContainers");
    v.extend(container_names(pod, "containers"));
    v
}

fn is_injected(pod: &Value) -> bool {
    annotations(pod).contains_key("nestdock.io/injected")
}

/// The parts of a stored pod that nestdock decides: the whole spec (both
/// sides went through the same API server defaulting), annotations, labels.
fn relevant(pod: &Value) -> Value {
    json!({
        "annotations": pod["metadata"]["annotations"],
        "labels": pod["metadata"]["labels"],
        "spec": pod["spec"],
    })
}

/// The pod templates of the examples, as pods without a namespace.
fn example_pods() -> Vec<(String, Value)> {
    let mut pods = Vec::new();
    let dir = repo().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for file in files {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, doc) in parse_documents(&text).into_iter().enumerate() {
            let items = if kind(&doc) == "List" {
                doc["items"].as_array().cloned().unwrap_or_default()
            } else {
                vec![doc]
            };
            for (j, item) in items.into_iter().enumerate() {
                let template = match kind(&item) {
                    "Pod" => Some(item.clone()),
                    "CronJob" => Some(item["spec"]["jobTemplate"]["spec"]["template"].clone()),
                    "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                        Some(item["spec"]["template"].clone())
                    }
                    _ => None,
                };
                let Some(mut t) = template else { continue };
                let pod_name = format!("ex-{stem}-{i}-{j}");
                let meta = t["metadata"].as_object().cloned().unwrap_or_default();
                let mut meta = serde_json::Map::from_iter(
                    meta.into_iter()
                        .filter(|(k, _)| k == "labels" || k == "annotations"),
                );
                meta.insert("name".into(), json!(pod_name));
                t["metadata"] = Value::Object(meta);
                t["apiVersion"] = json!("v1");
                t["kind"] = json!("Pod");
                pods.push((format!("examples/{stem}.yaml #{i}.{j}"), t));
            }
        }
    }
    assert!(pods.len() >= 7, "examples/ gave only {} pods", pods.len());
    pods
}

/// Pods shaped like the CI systems nestdock serves.
fn real_world_pods() -> Vec<(String, Value)> {
    let c = |name: &str, image: &str| json!({"name": name, "image": image});
    vec![
        (
            "GitLab runner job pod (build, helper, service)".into(),
            pod(
                "runner-abc123-project-42-concurrent-0",
                json!({"job.runner.gitlab.com/id": "4242"}),
                json!({
                    "restartPolicy": "Never",
                    "initContainers": [{"name": "init-permissions", "image": "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-v17.8.0",
                                        "command": ["sh", "-c", "chmod 777 /builds"],
                                        "volumeMounts": [{"name": "repo", "mountPath": "/builds"}]}],
                    "containers": [
                        {"name": "build", "image": "docker:28-cli", "command": ["sh", "-c", "sleep 3600"],
                         "env": [{"name": "CI_JOB_ID", "value": "4242"}],
                         "volumeMounts": [{"name": "repo", "mountPath": "/builds"}, {"name": "scripts", "mountPath": "/scripts-42"}]},
                        {"name": "helper", "image": "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-v17.8.0",
                         "command": ["sh", "-c", "sleep 3600"],
                         "volumeMounts": [{"name": "repo", "mountPath": "/builds"}]},
                        {"name": "svc-0", "image": "postgres:17", "env": [{"name": "POSTGRES_PASSWORD", "value": "ci"}]}
                    ],
                    "volumes": [{"name": "repo", "emptyDir": {}}, {"name": "scripts", "emptyDir": {}}]
                }),
            ),
        ),
        (
            "GitHub ARC runner".into(),
            pod(
                "arc-runner-set-x7k2p-runner-abcde",
                json!({"actions.github.com/patch-id": "1"}),
                json!({
                    "restartPolicy": "Never",
                    "securityContext": {"fsGroup": 123},
                    "containers": [{"name": "runner", "image": "ghcr.io/actions/actions-runner:2.321.0",
                                    "command": ["/home/runner/run.sh"],
                                    "securityContext": {"runAsUser": 1001, "runAsGroup": 123},
                                    "volumeMounts": [{"name": "work", "mountPath": "/home/runner/_work"}]}],
                    "volumes": [{"name": "work", "emptyDir": {}}]
                }),
            ),
        ),
        (
            "Tekton step".into(),
            pod(
                "build-run-build-pod",
                json!({"pipeline.tekton.dev/release": "v0.68.0"}),
                json!({
                    "restartPolicy": "Never",
                    "initContainers": [{"name": "prepare", "image": "gcr.io/tekton-releases/github.com/tektoncd/pipeline/cmd/entrypoint:v0.68.0",
                                        "command": ["/ko-app/entrypoint", "init", "/ko-app/entrypoint", "/tekton/bin/entrypoint"],
                                        "volumeMounts": [{"name": "tekton-internal-bin", "mountPath": "/tekton/bin"}]}],
                    "containers": [{"name": "step-build", "image": "docker:28-cli",
                                    "command": ["/tekton/bin/entrypoint"], "args": ["-entrypoint", "docker", "--", "build", "."],
                                    "workingDir": "/workspace/source",
                                    "volumeMounts": [{"name": "tekton-internal-bin", "mountPath": "/tekton/bin", "readOnly": true},
                                                     {"name": "ws-source", "mountPath": "/workspace/source"}]}],
                    "volumes": [{"name": "tekton-internal-bin", "emptyDir": {}}, {"name": "ws-source", "emptyDir": {}}]
                }),
            ),
        ),
        (
            "Argo step with /var/run/argo".into(),
            pod(
                "ci-wf-build-1234567890",
                json!({"workflows.argoproj.io/node-name": "ci-wf.build"}),
                json!({
                    "restartPolicy": "Never",
                    "initContainers": [{"name": "init", "image": "quay.io/argoproj/argoexec:v3.6.2",
                                        "command": ["argoexec", "init"],
                                        "volumeMounts": [{"name": "var-run-argo", "mountPath": "/var/run/argo"}]}],
                    "containers": [
                        {"name": "wait", "image": "quay.io/argoproj/argoexec:v3.6.2", "command": ["argoexec", "wait"],
                         "volumeMounts": [{"name": "var-run-argo", "mountPath": "/var/run/argo"}]},
                        {"name": "main", "image": "docker:28-cli", "command": ["/var/run/argo/argoexec", "emissary", "--", "docker", "build", "."],
                         "volumeMounts": [{"name": "var-run-argo", "mountPath": "/var/run/argo"}]}
                    ],
                    "volumes": [{"name": "var-run-argo", "emptyDir": {}}]
                }),
            ),
        ),
        (
            "Jenkins agent".into(),
            pod(
                "jenkins-agent-7x2kq",
                json!({"buildUrl": "http://jenkins.ci.svc:8080/job/app/42/"}),
                json!({
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "jnlp", "image": "jenkins/inbound-agent:3283.v92c105e0f819-1",
                         "env": [{"name": "JENKINS_URL", "value": "http://jenkins.ci.svc:8080/"}],
                         "volumeMounts": [{"name": "workspace-volume", "mountPath": "/home/jenkins/agent"}]},
                        {"name": "docker", "image": "docker:28-cli", "command": ["cat"], "tty": true,
                         "volumeMounts": [{"name": "workspace-volume", "mountPath": "/home/jenkins/agent"}]}
                    ],
                    "volumes": [{"name": "workspace-volume", "emptyDir": {}}]
                }),
            ),
        ),
        (
            "Testcontainers test pod".into(),
            pod(
                "orders-it",
                json!({}),
                json!({
                    "restartPolicy": "Never",
                    "containers": [{"name": "tests", "image": "gradle:8.12-jdk21",
                                    "command": ["gradle", "integrationTest"],
                                    "env": [{"name": "TESTCONTAINERS_RYUK_DISABLED", "value": "true"}],
                                    "securityContext": {"runAsNonRoot": true, "runAsUser": 1000}}]
                }),
            ),
        ),
        (
            "Job pod, restartPolicy Never".into(),
            pod(
                "job-never-abcde",
                json!({}),
                json!({"restartPolicy": "Never", "containers": [c("build", "docker:28-cli")]}),
            ),
        ),
        (
            "Job pod, restartPolicy OnFailure".into(),
            pod(
                "job-onfailure-abcde",
                json!({}),
                json!({"restartPolicy": "OnFailure", "containers": [c("build", "docker:28-cli")]}),
            ),
        ),
        (
            "generateName-only pod".into(),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"generateName": "gen-"},
                   "spec": {"containers": [c("build", "docker:28-cli")]}}),
        ),
    ]
}

/// `nestdock inject --mode MODE` of one object: the mutated object, or the
/// error text when it was denied.
fn inject(obj: &Value, mode: &str) -> Result<Value, String> {
    let mut cmd = Command::new(common::bin());
    cmd.args(["inject", "-f", "-", "--mode", mode]);
    let out = run_with_timeout(
        cmd,
        Some(obj.to_string().as_bytes()),
        Duration::from_secs(30),
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let docs = parse_documents(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(docs.len(), 1, "inject printed {} documents", docs.len());
    Ok(docs.into_iter().next().unwrap())
}

// ------------------------------------------------------------ the suite

#[test]
fn e2e_against_the_real_api_server() {
    if std::env::var("NESTDOCK_E2E").is_ok_and(|v| v == "skip") {
        // Straight to stderr: the test harness would capture eprintln! of a
        // passing test, and this must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! NESTDOCK_E2E=skip: the e2e suite against the real kube-apiserver\n\
             !!! was NOT run. Nothing here says that nestdock works in a cluster.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return;
    }
    let mut steps = Steps::new();

    steps.step("build the control plane (scripts/build-kube.sh) and kubectl");
    let plane_bin = setup_script("build-kube.sh", Duration::from_secs(60 * 60));
    let kubectl_bin = setup_script("setup-kubectl.sh", Duration::from_secs(600));

    remove_stale_state();
    let keep = std::env::var("NESTDOCK_E2E_KEEP").is_ok_and(|v| !v.is_empty() && v != "0");
    let tmp = tempfile::Builder::new()
        .prefix("nestdock-e2e-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let (dir, tmp) = if keep {
        let p = tmp.keep();
        eprintln!("e2e: NESTDOCK_E2E_KEEP: state kept in {}", p.display());
        (p, None)
    } else {
        (tmp.path().to_path_buf(), Some(tmp))
    };

    steps.step("start the control plane");
    let suite_start = Instant::now();
    let (mut plane, plane_start) = start_plane(&plane_bin, &dir);
    eprintln!(
        "e2e: control plane ready in {:.1}s at {}",
        plane_start.as_secs_f64(),
        plane.server
    );
    let admin = Kubectl {
        bin: kubectl_bin.clone(),
        kubeconfig: plane.admin_kubeconfig.clone(),
    };
    let version = admin.json(&["version", "-o", "json"], None);
    eprintln!(
        "e2e: kubectl {} against kube-apiserver {}",
        version["clientVersion"]["gitVersion"], version["serverVersion"]["gitVersion"]
    );

    let ctx = Ctx::install(&mut steps, &dir, admin, &plane);
    ctx.run(&mut steps, &mut plane);
    drop(ctx);

    steps.finish();
    // Straight to stderr, so that the figures show in a passing run's log too.
    let _ = writeln!(
        std::io::stderr(),
        "e2e: all scenarios passed; {:.1}s after the build (control plane start {:.1}s)",
        suite_start.elapsed().as_secs_f64(),
        plane_start.as_secs_f64()
    );
    drop(plane);
    drop(tmp);
}

/// What every scenario shares.
struct Ctx {
    dir: PathBuf,
    admin: Kubectl,
    /// nestdock's webhook port and metrics port (fixed across restarts).
    port: u16,
    metrics_port: u16,
    sa_kubeconfig: PathBuf,
    /// The webhook configuration as rendered by kustomize.
    rendered_webhooks: Value,
    nestdock: Mutex<Nestdock>,
    counter: AtomicUsize,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.nestdock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop();
    }
}

impl Ctx {
    /// Scenarios 1 and 2: install manifests/self-signed, start nestdock serve
    /// with the manifests' ServiceAccount.
    fn install(steps: &mut Steps, dir: &Path, admin: Kubectl, plane: &Plane) -> Ctx {
        steps.step("1. install manifests/self-signed with server-side validation");
        let manifests = dir.join("manifests");
        copy_dir(&repo().join("manifests"), &manifests);
        let certs = harness::certs_dir();
        let overlay_certs = manifests.join("self-signed/certs");
        std::fs::create_dir_all(&overlay_certs).unwrap();
        for f in ["ca.crt", "tls.crt", "tls.key"] {
            std::fs::copy(certs.join(f), overlay_certs.join(f)).unwrap();
        }
        let rendered = admin.ok(
            &["kustomize", manifests.join("self-signed").to_str().unwrap()],
            None,
        );
        let docs = parse_documents(&rendered);
        let ca_bundle = base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(certs.join("ca.crt")).unwrap());

        let port = free_port();
        let metrics_port = free_port();
        let url = format!("https://127.0.0.1:{port}/mutate");
        let mut installed = Vec::new();
        let mut rendered_webhooks = Value::Null;
        for doc in &docs {
            let mut doc = doc.clone();
            if kind(&doc) == "MutatingWebhookConfiguration" {
                rendered_webhooks = doc["webhooks"].clone();
                for wh in doc["webhooks"].as_array_mut().unwrap() {
                    // kustomize copies the Secret's data, which it wraps at 76
                    // characters; installed as rendered (what `kubectl apply -k`
                    // sends), the API server must read the same CA.
                    let rendered_bundle =
                        wh["clientConfig"]["caBundle"].as_str().unwrap().to_string();
                    assert_eq!(
                        rendered_bundle.replace('\n', ""),
                        ca_bundle,
                        "the rendered caBundle is nestdock certs' ca.crt"
                    );
                    wh["clientConfig"] = json!({"url": url, "caBundle": rendered_bundle});
                }
            }
            installed.push(doc);
        }
        assert!(
            rendered_webhooks.is_array(),
            "no MutatingWebhookConfiguration rendered"
        );
        // Namespaces first (kubectl apply orders only within one call).
        let (namespaces, rest): (Vec<Value>, Vec<Value>) =
            installed.into_iter().partition(|d| kind(d) == "Namespace");
        for batch in [namespaces, rest] {
            let out = admin.ok(
                &[
                    "apply",
                    "--server-side",
                    "--validate=strict",
                    "--field-manager=e2e",
                    "-f",
                    "-",
                ],
                Some(&list(batch).to_string()),
            );
            eprint!("{out}");
        }
        // Every rendered object is stored.
        for doc in &docs {
            let mut args = vec!["get", kind(doc), name(doc), "-o", "name"];
            let ns = doc["metadata"]["namespace"].as_str();
            if let Some(ns) = ns {
                args.extend(["-n", ns]);
            }
            admin.ok(&args, None);
        }
        // The webhooks as registered: exactly as rendered but clientConfig.
        let stored = admin.json(
            &[
                "get",
                "mutatingwebhookconfiguration",
                "nestdock",
                "-o",
                "json",
            ],
            None,
        );
        let stored_webhooks = stored["webhooks"].as_array().unwrap();
        let rendered_list = rendered_webhooks.as_array().unwrap();
        assert_eq!(stored_webhooks.len(), rendered_list.len());
        for (s, r) in stored_webhooks.iter().zip(rendered_list) {
            let (s, r) = (s.as_object().unwrap(), r.as_object().unwrap());
            for (k, v) in r {
                if k == "clientConfig" {
                    continue;
                }
                assert_eq!(&s[k], v, "webhook {}: {k} stored as rendered", r["name"]);
            }
            for (k, v) in s {
                if !r.contains_key(k) {
                    // Only the API server's defaults may be added.
                    assert!(
                        k == "objectSelector" && v == &json!({}),
                        "webhook {}: the API server added {k}: {v}",
                        r["name"]
                    );
                    eprintln!("e2e:    webhook {}: defaulted {k}: {v}", r["name"]);
                }
            }
            assert_eq!(
                s["clientConfig"],
                json!({"url": url, "caBundle": ca_bundle}),
                "clientConfig points at the local nestdock serve"
            );
        }

        steps.step("2. nestdock serve with the manifests' ServiceAccount (TokenRequest)");
        let token = admin
            .ok(
                &[
                    "create",
                    "token",
                    "nestdock",
                    "-n",
                    "nestdock-system",
                    "--duration=2h",
                ],
                None,
            )
            .trim()
            .to_string();
        let sa_kubeconfig = dir.join("nestdock.kubeconfig");
        plane.token_kubeconfig(&sa_kubeconfig, &token);
        let sa = Kubectl {
            bin: admin.bin.clone(),
            kubeconfig: sa_kubeconfig.clone(),
        };
        // The token is the ServiceAccount's, with the manifests' RBAC and no more.
        let me = sa.json(&["auth", "whoami", "-o", "json"], None);
        assert_eq!(
            me["status"]["userInfo"]["username"],
            json!("system:serviceaccount:nestdock-system:nestdock")
        );
        for (verb, resource, allowed) in [
            ("list", "namespaces", "yes"),
            ("watch", "namespaces", "yes"),
            ("get", "namespaces", "yes"),
            ("update", "namespaces", "no"),
            ("list", "pods", "no"),
            ("list", "secrets", "no"),
        ] {
            let out = sa.output(&["auth", "can-i", verb, resource], None);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                allowed,
                "nestdock may {verb} {resource}: {allowed}"
            );
        }
        let nestdock = spawn_nestdock(port, metrics_port, certs, &sa_kubeconfig, &[]);
        // GET /version with the ServiceAccount (system:public-info-viewer).
        let version = nestdock.wait_log(&["API server version read"], Duration::from_secs(10));
        assert!(
            version.contains("v1.37.") && version.contains("native_sidecars=true"),
            "{version}"
        );
        eprintln!(
            "e2e:    {}",
            nestdock.find_log(&["namespace cache synced"]).unwrap()
        );
        Ctx {
            dir: dir.to_path_buf(),
            admin,
            port,
            metrics_port,
            sa_kubeconfig,
            rendered_webhooks,
            nestdock: Mutex::new(nestdock),
            counter: AtomicUsize::new(0),
        }
    }

    fn unique(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }

    fn reviews(&self) -> u64 {
        self.nestdock.lock().unwrap().reviews()
    }

    fn run(&self, steps: &mut Steps, plane: &mut Plane) {
        steps.step("3. every example and real-world pod, every mode and sidecar placement");
        self.same_as_offline();
        steps.step("4. CEL matchConditions: only annotated pods reach nestdock");
        self.match_conditions();
        steps.step("4b. namespace selectors: which namespaces' pods reach nestdock");
        self.namespace_selectors();
        steps.step("5. Pod Security: baseline refused by nestdock's message, privileged admitted");
        self.pod_security();
        steps
            .step("5b. an ephemeral container cannot mount the node's socket (the chart's policy)");
        self.ephemeral_node_socket();
        steps.step("6. namespace policy through the real watch");
        self.namespace_watch();
        steps.step("6b. kube-apiserver stopped and started again: nestdock recovers");
        self.apiserver_restart(plane);
        steps.step("8. kubectl create --dry-run=server");
        self.dry_run();
        steps.step("11. nestdock inject output of every workload kind, apply --dry-run=server");
        self.workloads_dry_run();
        let ca = TestCa::new();
        steps.step("7. reinvocation: a second webhook after nestdock adds a container");
        self.reinvocation(&ca);
        steps.step("7b. a MutatingAdmissionPolicy (before the webhooks) adds a container");
        self.admission_policy();
        steps.step("10. certificate rotation during 200 pod creations");
        self.rotation(&ca);
        steps.step("9. failure policies with nestdock stopped");
        self.failure_policies();
        steps.step("12. the ServiceAccount admission plugin on, as in every real cluster");
        self.service_account_admission(plane);
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

// ------------------------------------------------------------ scenarios

impl Ctx {
    /// Scenario 3: The stored pod equals what `nestdock inject` produces offline for the
    /// same input and mode. Both go through the same API server: the offline
    /// result is created with --dry-run=server in a namespace of its own, so
    /// both carry the same defaults. nestdock does see the offline pods there
    /// (they are annotated), and leaves them as they are: each carries its
    /// injection, whose marker it trusts once the namespace's rules give the
    /// same mode; dood is allowed there, as in the namespaces it came from.
    fn same_as_offline(&self) {
        let mut pods = example_pods();
        pods.extend(real_world_pods());
        let offline_ns = "offline";
        self.admin
            .namespace(offline_ns, &[("nestdock.io/allow-dood", "true")]);
        let mut cases = 0;
        let mut injected = 0;
        let mut denied_cases = 0;
        for mode in ["dind", "dind-rootless", "dood", "none"] {
            // "auto": no sidecar annotation, as most pods; nestdock resolves it
            // from the real API server's /version (native since 1.29), offline
            // inject assumes native.
            let placements: &[&str] = if mode == "none" {
                &["auto"]
            } else {
                &["native", "container", "auto"]
            };
            for placement in placements {
                let ns = format!("m-{mode}-{placement}");
                self.admin.namespace(
                    &ns,
                    &[
                        ("nestdock.io/mode", mode),
                        ("nestdock.io/allow-dood", "true"),
                    ],
                );
                let mut allowed_inputs = Vec::new();
                let mut offline = Vec::new();
                let mut labels = Vec::new();
                for (label, p) in &pods {
                    let mut p = p.clone();
                    if *placement != "auto" {
                        if !p["metadata"]["annotations"].is_object() {
                            p["metadata"]["annotations"] = json!({});
                        }
                        p["metadata"]["annotations"]["nestdock.io/sidecar"] = json!(placement);
                    }
                    match inject(&p, mode) {
                        Ok(out) => {
                            allowed_inputs.push(p);
                            offline.push(out);
                            labels.push(label.clone());
                        }
                        Err(message) => {
                            // Denied offline: the API server refuses it too.
                            let err = self.admin.create_err(&ns, &p);
                            assert!(
                                err.contains("denied the request"),
                                "{label} in {ns}: inject denied it ({message}), the API server said: {err}"
                            );
                            denied_cases += 1;
                        }
                    }
                }
                let stored = list_items(self.admin.json(
                    &["create", "-n", &ns, "-o", "json", "-f", "-"],
                    Some(&list(allowed_inputs).to_string()),
                ));
                let offline_stored = list_items(self.admin.json(
                    &[
                        "create",
                        "--dry-run=server",
                        "-n",
                        offline_ns,
                        "-o",
                        "json",
                        "-f",
                        "-",
                    ],
                    Some(&list(offline).to_string()),
                ));
                assert_eq!(stored.len(), labels.len());
                assert_eq!(offline_stored.len(), labels.len());
                for ((label, live), off) in labels.iter().zip(&stored).zip(&offline_stored) {
                    let (l, o) = (relevant(live), relevant(off));
                    if l != o {
                        panic!(
                            "{label}, namespace mode {mode}, sidecar {placement}: the stored pod differs from \
                             `nestdock inject` offline\nlive: {}\noffline: {}",
                            serde_json::to_string_pretty(&l).unwrap(),
                            serde_json::to_string_pretty(&o).unwrap()
                        );
                    }
                    if mode != "none" && *placement != "container" {
                        // Native sidecars: the daemon is an init container that runs always.
                        let injected = annotations(live)
                            .get("nestdock.io/injected")
                            .is_some_and(|m| m.starts_with("dind"));
                        if injected {
                            let daemon = live["spec"]["initContainers"]
                                .as_array()
                                .and_then(|a| a.iter().find(|c| c["restartPolicy"] == "Always"));
                            assert!(daemon.is_some(), "{label}: no native sidecar in {live:#}");
                        }
                    }
                    if is_injected(live) {
                        injected += 1;
                    }
                    cases += 1;
                }
            }
        }
        eprintln!(
            "e2e:    {cases} stored pods equal to offline inject ({injected} injected), \
             {denied_cases} denied by both"
        );
        assert!(cases >= 100, "only {cases} cases");
        assert!(injected >= 90, "only {injected} injected pods");

        // Ephemeral containers (kubectl debug) on an injected pod: an update
        // of the ephemeralcontainers subresource, which nestdock's rules do not
        // select; the API server validates it against the injected pod.
        let before = self.reviews();
        let ns = "m-dind-native";
        let target = "job-never-abcde";
        let patch = json!({"spec": {"ephemeralContainers": [{
            "name": "debugger", "image": "busybox:1.37", "targetContainerName": "build",
            "stdin": true, "tty": true}]}});
        self.admin.ok(
            &[
                "patch",
                "pod",
                target,
                "-n",
                ns,
                "--subresource=ephemeralcontainers",
                "--type=strategic",
                "-p",
                &patch.to_string(),
            ],
            None,
        );
        let stored = self
            .admin
            .json(&["get", "pod", target, "-n", ns, "-o", "json"], None);
        assert!(is_injected(&stored));
        assert_eq!(
            stored["spec"]["ephemeralContainers"][0]["name"],
            json!("debugger")
        );
        assert_eq!(
            self.reviews(),
            before,
            "an ephemeral container does not reach nestdock"
        );
    }

    /// Scenario 4: The annotated webhook's CEL: a pod without a nestdock.io/ annotation
    /// in an unlabelled namespace never reaches nestdock.
    fn match_conditions(&self) {
        let ns = "plain";
        self.admin.namespace(ns, &[]);
        let spec = json!({"containers": [{"name": "app", "image": "busybox:1.37"}]});
        let before = self.reviews();
        for (i, ann) in [
            json!({}),
            json!({"example.com/owner": "team-a"}),
            // Already injected offline: needs nothing, so no call.
            json!({"nestdock.io/injected": "dind"}),
        ]
        .into_iter()
        .enumerate()
        {
            let stored = self
                .admin
                .create(ns, &pod(&format!("quiet-{i}"), ann.clone(), spec.clone()));
            assert_eq!(stored["spec"]["containers"].as_array().unwrap().len(), 1);
        }
        let after = self.reviews();
        assert_eq!(
            before, after,
            "pods without a nestdock.io/ annotation reached nestdock"
        );
        // The cases of tests/manifests.rs (which evaluates the expression with
        // the cel crate), judged by the real API server: dry runs, each
        // counted by nestdock's metrics.
        let asks = [
            json!({"nestdock.io/mode": "dind"}),
            json!({"nestdock.io/mode": "dood", "prometheus.io/scrape": "true"}),
            json!({"nestdock.io/containers": "build"}),
            json!({"nestdock.io/mod": "dind"}),
            json!({"nestdock.io/tls": "true", "nestdock.io/mode": "dind"}),
            json!({"nestdock.io/mode": "dind", "nestdock.io/injected": "dind"}),
        ];
        let others = [
            json!(null),
            json!({}),
            json!({"prometheus.io/scrape": "true", "kubectl.kubernetes.io/default-container": "build"}),
            json!({"example.com/nestdock.io-mode": "dind"}),
            json!({"sub.nestdock.io/mode": "dind"}),
            json!({"nestdock.io": "dind"}),
            // Not a valid annotation key: the API server refuses the pod, but
            // only after the webhooks, whose condition did not select it.
            json!({"NESTDOCK.IO/mode": "dind"}),
            json!({"nestdock.io/injected": "dind"}),
        ];
        for (reaches, cases) in [(true, &asks[..]), (false, &others[..])] {
            for ann in cases {
                let mut p = pod("cel", ann.clone(), spec.clone());
                if ann.is_null() {
                    p["metadata"].as_object_mut().unwrap().remove("annotations");
                }
                let before = self.reviews();
                let _ = self.admin.output(
                    &["create", "--dry-run=server", "-n", ns, "-f", "-"],
                    Some(&p.to_string()),
                );
                let delta = self.reviews() - before;
                assert_eq!(
                    delta,
                    u64::from(reaches),
                    "annotations {ann}: reached nestdock {delta} times, expected {}",
                    u64::from(reaches)
                );
            }
        }

        let after = self.reviews();
        let stored = self.admin.create(
            ns,
            &pod("asks", json!({"nestdock.io/mode": "dind"}), spec.clone()),
        );
        assert!(
            is_injected(&stored),
            "the annotated pod was injected: {stored:#}"
        );
        let after_annotated = self.reviews();
        assert_eq!(
            after_annotated,
            after + 1,
            "the annotated pod reached nestdock once"
        );
    }

    /// Scenario 5: Pod Security Admission labels.
    fn pod_security(&self) {
        let spec = json!({"containers": [{"name": "build", "image": "docker:28-cli"}]});
        for level in ["baseline", "restricted"] {
            let ns = format!("psa-{level}");
            self.admin.namespace(
                &ns,
                &[
                    ("nestdock.io/mode", "dind"),
                    ("pod-security.kubernetes.io/enforce", level),
                ],
            );
            let err = self
                .admin
                .create_err(&ns, &pod("dind", json!({}), spec.clone()));
            assert!(
                err.contains("admission webhook \"namespaces.nestdock.io\" denied the request")
                    && err.contains("pod-security.kubernetes.io/enforce"),
                "{ns}: refused by nestdock naming the label, got: {err}"
            );
            // The refusal is nestdock's, not Pod Security's own.
            assert!(!err.contains("violates PodSecurity"), "{err}");
        }
        let ns = "psa-privileged";
        self.admin.namespace(
            ns,
            &[
                ("nestdock.io/mode", "dind"),
                ("pod-security.kubernetes.io/enforce", "privileged"),
            ],
        );
        let stored = self.admin.create(ns, &pod("dind", json!({}), spec));
        assert!(is_injected(&stored));
        let privileged = self
            .admin
            .json(&["get", "pod", "dind", "-n", ns, "-o", "json"], None);
        let any_privileged = ["initContainers", "containers"].iter().any(|l| {
            privileged["spec"][l]
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c["securityContext"]["privileged"] == true))
        });
        assert!(any_privileged, "a privileged daemon was admitted");
    }

    /// manifests/base's ValidatingAdmissionPolicy, evaluated by the API
    /// server: an ephemeral container added to a guarded dood pod (what
    /// `kubectl debug` sends) may mount the guard's socket volume, never
    /// `nestdock-host-docker`, the node's socket.
    fn ephemeral_node_socket(&self) {
        let ns = "ephemeral-dood";
        self.admin.namespace(
            ns,
            &[
                ("nestdock.io/mode", "dood"),
                ("nestdock.io/allow-dood", "true"),
            ],
        );
        let spec = json!({"containers": [{"name": "build", "image": "docker:28-cli"}]});
        let stored = self.admin.create(ns, &pod("dood", json!({}), spec));
        assert!(is_injected(&stored));
        let path = format!("/api/v1/namespaces/{ns}/pods/dood/ephemeralcontainers");
        let debug = |volume: &str| {
            let mut p = self
                .admin
                .json(&["get", "pod", "dood", "-n", ns, "-o", "json"], None);
            let list = p["spec"]["ephemeralContainers"]
                .as_array()
                .map_or(0, Vec::len);
            let mut containers = p["spec"]["ephemeralContainers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            containers.push(json!({
                "name": format!("debug{list}"),
                "image": "busybox",
                "volumeMounts": [{"name": volume, "mountPath": "/mnt"}],
            }));
            p["spec"]["ephemeralContainers"] = json!(containers);
            self.admin.output(
                &["replace", "--raw", &path, "-f", "-"],
                Some(&p.to_string()),
            )
        };
        let out = debug("nestdock-host-docker");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("nestdock-node-socket")
                && err.contains("may not mount volume nestdock-host-docker"),
            "{out:?}"
        );
        let out = debug("nestdock-docker-sock");
        assert!(out.status.success(), "{out:?}");
    }

    /// Creates pods with `--dry-run=server` until `check` accepts the answer
    /// (Ok of the stored pod, Err of the refusal), at most `limit`.
    fn poll_until(
        &self,
        ns: &str,
        p: &Value,
        limit: Duration,
        check: impl Fn(&Result<Value, String>) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let out = self.admin.output(
                &[
                    "create",
                    "--dry-run=server",
                    "-n",
                    ns,
                    "-o",
                    "json",
                    "-f",
                    "-",
                ],
                Some(&p.to_string()),
            );
            let result = if out.status.success() {
                Ok(serde_json::from_slice(&out.stdout).unwrap())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            };
            if check(&result) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "not in effect within {limit:?}; last answer: {result:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Scenario 6: Labels changed after nestdock started, through its real watch.
    fn namespace_watch(&self) {
        let spec = json!({"containers": [{"name": "build", "image": "docker:28-cli"}]});
        let limit = Duration::from_secs(15);

        // A mode label added later.
        let ns = "late-label";
        self.admin.namespace(ns, &[]);
        let plain = pod("p", json!({}), spec.clone());
        let stored = self
            .admin
            .create(ns, &pod("before", json!({}), spec.clone()));
        assert!(!is_injected(&stored));
        self.admin
            .ok(&["label", "namespace", ns, "nestdock.io/mode=dind"], None);
        let took = self.poll_until(ns, &plain, limit, |r| r.as_ref().is_ok_and(is_injected));
        eprintln!(
            "e2e:    mode label in effect after {:.2}s",
            took.as_secs_f64()
        );

        // enforce: a pod asking another mode is refused once the label is there.
        let asks_none = pod(
            "asks-none",
            json!({"nestdock.io/mode": "none"}),
            spec.clone(),
        );
        let stored = self.admin.create(ns, &asks_none);
        assert!(
            !is_injected(&stored),
            "not enforced yet: the pod's own mode wins"
        );
        self.admin.ok(
            &["label", "namespace", ns, "nestdock.io/enforce=true"],
            None,
        );
        let mut asks_none_again = asks_none.clone();
        asks_none_again["metadata"]["name"] = json!("asks-none-again");
        let took = self.poll_until(ns, &asks_none_again, limit, |r| {
            r.as_ref().is_err_and(|e| {
                e.contains("admission webhook \"enforced.nestdock.io\" denied the request")
            })
        });
        eprintln!(
            "e2e:    enforce label in effect after {:.2}s",
            took.as_secs_f64()
        );

        // allow-dood: dood refused in a dind namespace until the label allows it.
        let ns = "late-dood";
        self.admin.namespace(ns, &[("nestdock.io/mode", "dind")]);
        let asks_dood = pod(
            "asks-dood",
            json!({"nestdock.io/mode": "dood"}),
            spec.clone(),
        );
        let err = self.admin.create_err(ns, &asks_dood);
        assert!(err.contains("nestdock.io/allow-dood"), "{err}");
        self.admin.ok(
            &["label", "namespace", ns, "nestdock.io/allow-dood=true"],
            None,
        );
        let took = self.poll_until(ns, &asks_dood, limit, |r| {
            r.as_ref().is_ok_and(|p| {
                annotations(p)
                    .get("nestdock.io/injected")
                    .map(String::as_str)
                    == Some("dood")
            })
        });
        eprintln!(
            "e2e:    allow-dood label in effect after {:.2}s",
            took.as_secs_f64()
        );

        // A namespace created a moment before its first pod.
        for i in 0..5 {
            let ns = format!("fresh-{i}");
            let both = list(vec![
                json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": ns, "labels": {"nestdock.io/mode": "dind"}}}),
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "first", "namespace": ns}, "spec": spec}),
            ]);
            let created = list_items(self.admin.json(
                &["create", "-o", "json", "-f", "-"],
                Some(&both.to_string()),
            ));
            assert!(
                is_injected(&created[1]),
                "first pod of a brand-new namespace injected: {:#}",
                created[1]
            );
        }
        // The watch may deliver a brand-new namespace before its first pod's
        // review, or nestdock fetches it directly: once at most.
        let n = self.nestdock.lock().unwrap();
        let mut direct = 0;
        for i in 0..5 {
            let lines = n
                .logs
                .lock()
                .unwrap()
                .iter()
                .filter(|l| {
                    l.contains("namespace fetched directly") && l.contains(&format!("fresh-{i}"))
                })
                .count();
            assert!(lines <= 1, "fresh-{i} fetched directly {lines} times");
            direct += lines;
        }
        eprintln!(
            "e2e:    5 brand-new namespaces, {direct} fetched directly before the watch had them"
        );
    }

    /// Scenario 8: `--dry-run=server` returns the injected pod and stores nothing.
    fn dry_run(&self) {
        let ns = "m-dind-native";
        let p = pod(
            "dry",
            json!({}),
            json!({"containers": [{"name": "build", "image": "docker:28-cli"}]}),
        );
        let answered = self.admin.json(
            &[
                "create",
                "--dry-run=server",
                "-n",
                ns,
                "-o",
                "json",
                "-f",
                "-",
            ],
            Some(&p.to_string()),
        );
        assert!(is_injected(&answered), "{answered:#}");
        assert!(all_container_names(&answered).len() > 1);
        let err = self.admin.fails(&["get", "pod", "dry", "-n", ns], None);
        assert!(
            err.contains("NotFound") || err.contains("not found"),
            "{err}"
        );
    }

    /// Scenario 11: `nestdock inject` output of every workload kind is accepted by the
    /// API server (server-side dry run, strict field validation).
    fn workloads_dry_run(&self) {
        let ns = "workloads";
        self.admin.namespace(ns, &[]);
        let template = json!({
            "metadata": {"labels": {"app": "w"}, "annotations": {"nestdock.io/mode": "dind"}},
            "spec": {"containers": [{"name": "build", "image": "docker:28-cli"}]}
        });
        let mut job_template = template.clone();
        job_template["spec"]["restartPolicy"] = json!("Never");
        let selector = json!({"matchLabels": {"app": "w"}});
        let objects = vec![
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"},
                   "spec": {"selector": selector, "template": template}}),
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "w"},
                   "spec": {"selector": selector, "serviceName": "w", "template": template}}),
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "w"},
                   "spec": {"selector": selector, "template": template}}),
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "w"},
                   "spec": {"selector": selector, "template": template}}),
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "w"},
                   "spec": {"template": job_template}}),
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "w"},
                   "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": job_template}}}}),
        ];
        for mode in ["dind", "dind-rootless", "dood"] {
            for obj in &objects {
                let mut obj = obj.clone();
                let t = if kind(&obj) == "CronJob" {
                    &mut obj["spec"]["jobTemplate"]["spec"]["template"]
                } else {
                    &mut obj["spec"]["template"]
                };
                t["metadata"]["annotations"]["nestdock.io/mode"] = json!(mode);
                let injected =
                    inject(&obj, mode).unwrap_or_else(|e| panic!("inject {}: {e}", kind(&obj)));
                let answered = self.admin.json(
                    &[
                        "apply",
                        "--server-side",
                        "--dry-run=server",
                        "--validate=strict",
                        "--field-manager=e2e",
                        "-n",
                        ns,
                        "-o",
                        "json",
                        "-f",
                        "-",
                    ],
                    Some(&injected.to_string()),
                );
                let t = if kind(&answered) == "CronJob" {
                    &answered["spec"]["jobTemplate"]["spec"]["template"]
                } else {
                    &answered["spec"]["template"]
                };
                assert!(
                    all_container_names(t).len() > 1 || mode == "dood",
                    "{} {mode}: the template kept its daemon: {t:#}",
                    kind(&answered)
                );
                assert_eq!(
                    annotations(t)
                        .get("nestdock.io/injected")
                        .map(String::as_str),
                    Some(mode)
                );
            }
        }
    }

    /// Scenario 9: With nestdock stopped: enforced namespaces refuse pods (failurePolicy
    /// Fail), annotated pods elsewhere are created unchanged (Ignore).
    fn failure_policies(&self) {
        let spec = json!({"containers": [{"name": "build", "image": "docker:28-cli"}]});
        let enforced = "down-enforced";
        self.admin.namespace(
            enforced,
            &[
                ("nestdock.io/mode", "dind"),
                ("nestdock.io/enforce", "true"),
            ],
        );
        let labelled = "down-labelled";
        self.admin
            .namespace(labelled, &[("nestdock.io/mode", "dind")]);
        self.admin.namespace("plain", &[]);
        self.nestdock.lock().unwrap().stop();

        let err = self
            .admin
            .create_err(enforced, &pod("refused", json!({}), spec.clone()));
        assert!(
            err.contains("failed calling webhook \"enforced.nestdock.io\""),
            "enforced namespace refuses pods while nestdock is down: {err}"
        );
        let asked = pod(
            "unchanged",
            json!({"nestdock.io/mode": "dind"}),
            spec.clone(),
        );
        for ns in ["plain", labelled] {
            let stored = self.admin.create(ns, &asked);
            assert!(!is_injected(&stored), "{ns}: created unchanged");
            assert_eq!(all_container_names(&stored), vec!["build".to_string()]);
        }

        // Back up, on the same port, for whatever runs next.
        let restarted = spawn_nestdock(
            self.port,
            self.metrics_port,
            harness::certs_dir(),
            &self.sa_kubeconfig,
            &[],
        );
        *self.nestdock.lock().unwrap() = restarted;
        let stored = self
            .admin
            .create(enforced, &pod("after-restart", json!({}), spec));
        assert!(is_injected(&stored));
    }
}

// ------------------------------------------------------------ test CA

/// A CA of the test's own, whose key it keeps: serving pairs for the
/// rotation scenario and the second webhook, for 127.0.0.1 and localhost.
struct TestCa {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "nestdock e2e test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa {
            ca: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    fn bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.ca.pem())
    }

    /// A serving pair (certificate PEM, key PEM) for 127.0.0.1 and localhost.
    fn serving(&self, cn: &str) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(std::net::IpAddr::V4(
                std::net::Ipv4Addr::LOCALHOST,
            )));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &*self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a serving pair the way the kubelet updates a Secret volume (what
    /// cert-manager's renewals reach a pod through): both files in a new
    /// directory, `..data` switched to it by one rename, `tls.crt` and
    /// `tls.key` symlinks through `..data`. Returns the certificate PEM.
    fn write_pair(&self, dir: &Path, cn: &str) -> String {
        let (cert, key) = self.serving(cn);
        std::fs::create_dir_all(dir).unwrap();
        let version = format!("..{cn}");
        std::fs::create_dir(dir.join(&version)).unwrap();
        std::fs::write(dir.join(&version).join("tls.crt"), &cert).unwrap();
        std::fs::write(dir.join(&version).join("tls.key"), &key).unwrap();
        std::os::unix::fs::symlink(&version, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        for f in ["tls.crt", "tls.key"] {
            if std::fs::symlink_metadata(dir.join(f)).is_err() {
                std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
            }
        }
        cert
    }
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("certificate PEM")
        .to_vec()
}

/// The certificate a TLS server on `addr` presents (verified against `ca_pem`).
fn presented_cert(addr: SocketAddr, ca_pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).expect("TLS handshake");
    }
    conn.peer_certificates().expect("peer certificate")[0].to_vec()
}

// ------------------------------------------------------------ a second webhook

/// A tiny HTTPS mutating webhook (HTTP/1.1 only, one thread a connection)
/// that adds a `mesh-proxy` container, like a service mesh's injector. It
/// records, for each call, whether nestdock had already injected the pod.
struct MeshWebhook {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<bool>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl MeshWebhook {
    fn start(ca: &TestCa) -> MeshWebhook {
        use rustls_pki_types::pem::PemObject as _;
        let (cert, key) = ca.serving("mesh-webhook");
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
            .map(Result::unwrap)
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (calls2, stop2) = (calls.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let (config, calls) = (config.clone(), calls2.clone());
                        std::thread::spawn(move || mesh_connection(sock, config, calls));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        MeshWebhook { addr, calls, stop }
    }
}

impl Drop for MeshWebhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn mesh_connection(
    sock: TcpStream,
    config: Arc<rustls::ServerConfig>,
    calls: Arc<Mutex<Vec<bool>>>,
) {
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let conn = rustls::ServerConnection::new(config).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    // At most 100 requests a connection: bounded like every loop here.
    for _ in 0..100 {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match tls.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
            if head.len() > 64 * 1024 {
                return;
            }
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if tls.read_exact(&mut body).is_err() {
            return;
        }
        let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let object = &review["request"]["object"];
        calls.lock().unwrap().push(is_injected(object));
        let has_proxy = container_names(object, "containers")
            .iter()
            .any(|n| n == "mesh-proxy");
        let mut response = json!({"uid": review["request"]["uid"], "allowed": true});
        if !has_proxy {
            let patch = json!([{"op": "add", "path": "/spec/containers/-",
                                "value": {"name": "mesh-proxy", "image": "envoyproxy/envoy:v1.33.0"}}]);
            response["patchType"] = json!("JSONPatch");
            response["patch"] =
                json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
        }
        let answer = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                            "response": response})
        .to_string();
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if tls
            .write_all(reply.as_bytes())
            .and_then(|_| tls.flush())
            .is_err()
        {
            return;
        }
    }
}

impl Ctx {
    /// Scenario 7: Reinvocation: a second webhook, ordered after nestdock, adds a
    /// container; the API server calls nestdock again (IfNeeded), and the
    /// stored pod carries nestdock's injection exactly once.
    fn reinvocation(&self, ca: &TestCa) {
        let mesh = MeshWebhook::start(ca);
        let ns = "mesh";
        self.admin.namespace(
            ns,
            &[("nestdock.io/mode", "dind"), ("e2e.test/mesh", "true")],
        );
        let config = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            // Webhooks are called in the order of their configurations' names:
            // "zz-..." after "nestdock".
            "metadata": {"name": "zz-mesh-proxy"},
            "webhooks": [{
                "name": "mesh.e2e.test",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "timeoutSeconds": 5,
                "clientConfig": {"url": format!("https://127.0.0.1:{}/mutate", mesh.addr.port()),
                                 "caBundle": ca.bundle()},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {"e2e.test/mesh": "true"}}
            }]
        });
        self.admin
            .ok(&["apply", "-f", "-"], Some(&config.to_string()));
        let input = pod(
            "meshed",
            json!({}),
            json!({"restartPolicy": "Never", "containers": [{"name": "build", "image": "docker:28-cli"}]}),
        );
        let offline = inject(&input, "dind").expect("inject");
        // The API server may take a moment to see the new configuration.
        let start = Instant::now();
        let stored = loop {
            let before = self.reviews();
            let mut p = input.clone();
            p["metadata"]["name"] = json!(self.unique("meshed"));
            let stored = self.admin.create(ns, &p);
            if container_names(&stored, "containers")
                .iter()
                .any(|n| n == "mesh-proxy")
            {
                let calls = self.reviews() - before;
                assert_eq!(
                    calls, 2,
                    "nestdock was called, then called again after the mesh webhook"
                );
                break stored;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the mesh webhook was never called"
            );
            std::thread::sleep(Duration::from_millis(300));
        };
        let mut want_containers = container_names(&offline, "containers");
        want_containers.push("mesh-proxy".into());
        assert_eq!(container_names(&stored, "containers"), want_containers);
        assert_eq!(
            container_names(&stored, "initContainers"),
            container_names(&offline, "initContainers"),
            "nestdock's daemon exactly once"
        );
        assert_eq!(stored["spec"]["volumes"], {
            // Volumes as nestdock made them (the mesh container adds none).
            let dry = self.admin.json(
                &[
                    "create",
                    "--dry-run=server",
                    "-n",
                    "offline",
                    "-o",
                    "json",
                    "-f",
                    "-",
                ],
                Some(&offline.to_string()),
            );
            dry["spec"]["volumes"].clone()
        });
        assert!(
            mesh.calls
                .lock()
                .unwrap()
                .iter()
                .all(|&seen_injected| seen_injected),
            "the mesh webhook ran after nestdock: {:?}",
            mesh.calls.lock().unwrap()
        );
        self.admin.ok(
            &["delete", "mutatingwebhookconfiguration", "zz-mesh-proxy"],
            None,
        );
    }

    /// Scenario 10: The serving pair replaced on disk (same CA) in the middle of 200
    /// pod creations: none fails, and new connections get the new pair.
    fn rotation(&self, ca: &TestCa) {
        let dir = self.dir.join("rotation");
        let first = ca.write_pair(&dir, "nestdock-rotation-1");
        let port = free_port();
        let mut second = spawn_nestdock(
            port,
            free_port(),
            &dir,
            &self.sa_kubeconfig,
            &["--cert-check-interval", "2s"],
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let ca_pem = ca.ca.pem();
        assert_eq!(presented_cert(addr, &ca_pem), der_of(&first));

        // Point the three webhooks at the second server.
        let point = |url: &str, bundle: &str| {
            let ops: Vec<Value> = (0..self.rendered_webhooks.as_array().unwrap().len())
                .map(|i| {
                    json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig"),
                                "value": {"url": url, "caBundle": bundle}})
                })
                .collect();
            self.admin.ok(
                &[
                    "patch",
                    "mutatingwebhookconfiguration",
                    "nestdock",
                    "--type=json",
                    "-p",
                    &Value::Array(ops).to_string(),
                ],
                None,
            );
        };
        point(&format!("https://127.0.0.1:{port}/mutate"), &ca.bundle());
        let ns = "rotation";
        self.admin.namespace(ns, &[("nestdock.io/mode", "dind")]);
        let spec = json!({"restartPolicy": "Never", "containers": [{"name": "build", "image": "docker:28-cli"}]});
        // The API server picks the new configuration up within moments.
        self.poll_until(
            ns,
            &pod("probe", json!({}), spec.clone()),
            Duration::from_secs(15),
            |r| r.as_ref().is_ok_and(is_injected) && second.reviews() > 0,
        );
        let before = second.reviews();

        let mut created = 0;
        let mut second_cert = String::new();
        for batch in 0..10 {
            if batch == 5 {
                second_cert = ca.write_pair(&dir, "nestdock-rotation-2");
            }
            if batch == 7 {
                // Batches 5 and 6 race the reload; 7 to 9 come after it.
                second.wait_log(&["serving certificate reloaded"], Duration::from_secs(10));
            }
            let pods: Vec<Value> = (0..20)
                .map(|i| pod(&format!("r-{batch}-{i}"), json!({}), spec.clone()))
                .collect();
            let out = self.admin.json(
                &["create", "-n", ns, "-o", "json", "-f", "-"],
                Some(&list(pods).to_string()),
            );
            for p in list_items(out) {
                assert!(is_injected(&p), "{}: injected", name(&p));
                created += 1;
            }
        }
        assert_eq!(created, 200, "200 pods created, 0 failures");
        assert!(
            second.find_log(&["reload failed"]).is_none(),
            "{}",
            second.log_text()
        );
        assert_eq!(
            presented_cert(addr, &ca_pem),
            der_of(&second_cert),
            "new connections get the new pair"
        );
        assert!(second.reviews() >= before + 200);
        // Back to the main server.
        point(
            &format!("https://127.0.0.1:{}/mutate", self.port),
            &base64::engine::general_purpose::STANDARD
                .encode(std::fs::read(harness::certs_dir().join("ca.crt")).unwrap()),
        );
        let main_before = self.reviews();
        self.poll_until(
            ns,
            &pod("probe", json!({}), spec),
            Duration::from_secs(15),
            |r| r.as_ref().is_ok_and(is_injected) && self.reviews() > main_before,
        );
        second.stop();
    }
}

impl Ctx {
    fn readyz(&self) -> Result<(u16, String), String> {
        let ca = std::fs::read(harness::certs_dir().join("ca.crt")).unwrap();
        https_get(
            SocketAddr::from(([127, 0, 0, 1], self.port)),
            &ca,
            "/readyz",
        )
    }

    /// Scenario 6b: kube-apiserver stopped and started again on the same etcd:
    /// nestdock, not restarted, is ready again and sees labels changed after.
    fn apiserver_restart(&self, plane: &mut Plane) {
        let spec = json!({"containers": [{"name": "build", "image": "docker:28-cli"}]});
        assert_eq!(self.readyz().map(|r| r.0), Ok(200), "ready before");
        let ns = "across-restart";
        self.admin.namespace(ns, &[]);
        plane.stop_apiserver();
        // Long enough for the watch to notice the connection is gone.
        std::thread::sleep(Duration::from_secs(3));
        let during = self.readyz();
        eprintln!("e2e:    nestdock /readyz with the API server down: {during:?}");
        let took = plane.start_apiserver();
        eprintln!(
            "e2e:    kube-apiserver ready again after {:.1}s",
            took.as_secs_f64()
        );
        // A namespace and its first pod right away, while nestdock's watch is
        // likely still reconnecting: the namespace is fetched directly.
        let both = list(vec![
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "after-restart", "labels": {"nestdock.io/mode": "dind"}}}),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "first", "namespace": "after-restart"}, "spec": spec}),
        ]);
        let created = list_items(self.admin.json(
            &["create", "-o", "json", "-f", "-"],
            Some(&both.to_string()),
        ));
        assert!(is_injected(&created[1]), "{:#}", created[1]);
        let direct = self
            .nestdock
            .lock()
            .unwrap()
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("namespace fetched directly") && l.contains("after-restart"))
            .count();
        assert!(direct <= 1, "fetched directly {direct} times");
        eprintln!("e2e:    a namespace created right after the restart: fetched directly {direct} time(s)");
        self.admin
            .ok(&["label", "namespace", ns, "nestdock.io/mode=dind"], None);
        let took = self.poll_until(
            ns,
            &pod("after", json!({}), spec.clone()),
            Duration::from_secs(60),
            |r| r.as_ref().is_ok_and(is_injected),
        );
        eprintln!(
            "e2e:    a label set after the restart in effect after {:.2}s",
            took.as_secs_f64()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.readyz() {
                Ok((200, _)) => break,
                other => assert!(
                    Instant::now() < deadline,
                    "nestdock not ready again after the API server came back: {other:?}\n{}",
                    self.nestdock.lock().unwrap().log_text()
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Ctx {
    /// Scenario 4b: the three webhooks' namespace selectors, judged by the real
    /// API server (tests/manifests.rs matches them with our own reading): a
    /// pod reaches nestdock once or not at all, as the labels say.
    fn namespace_selectors(&self) {
        let spec = json!({"containers": [{"name": "app", "image": "busybox:1.37"}]});
        let pods = [
            ("plain", pod("sel", json!(null), spec.clone())),
            (
                "unrelated",
                pod("sel", json!({"prometheus.io/scrape": "true"}), spec.clone()),
            ),
            (
                "asking",
                pod("sel", json!({"nestdock.io/mode": "dind"}), spec.clone()),
            ),
        ];
        let modes = [None, Some("dind"), Some("none")];
        let enforce = [None, Some("true"), Some("false")];
        let excluded = ["kube-system", "kube-node-lease", "nestdock-system"];
        let mut checked = 0;
        for mode in modes {
            for enf in enforce {
                let mut labels = Vec::new();
                if let Some(m) = mode {
                    labels.push(("nestdock.io/mode", m));
                }
                if let Some(e) = enf {
                    labels.push(("nestdock.io/enforce", e));
                }
                let fresh = format!("sel-{}-{}", mode.unwrap_or("unset"), enf.unwrap_or("unset"));
                self.admin.namespace(&fresh, &labels);
                for ns in excluded {
                    // Relabel: drop both labels, then set this combination.
                    self.admin.ok(
                        &[
                            "label",
                            "namespace",
                            ns,
                            "nestdock.io/mode-",
                            "nestdock.io/enforce-",
                        ],
                        None,
                    );
                    if !labels.is_empty() {
                        let mut args = vec!["label".to_string(), "namespace".into(), ns.into()];
                        args.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        self.admin.ok(&args, None);
                    }
                }
                // The API server's namespace informer and nestdock's watch
                // catch up within moments.
                std::thread::sleep(Duration::from_millis(200));
                for ns in std::iter::once(fresh.as_str()).chain(excluded) {
                    for (what, p) in &pods {
                        let expected = if excluded.contains(&ns) {
                            0
                        } else if enf == Some("true") || mode.is_some() || *what == "asking" {
                            1
                        } else {
                            0
                        };
                        // A label change reaches the API server's namespace
                        // informer within moments: a mismatch is retried for
                        // up to 5 s before it counts.
                        let deadline = Instant::now() + Duration::from_secs(5);
                        loop {
                            let before = self.reviews();
                            let _ = self.admin.output(
                                &["create", "--dry-run=server", "-n", ns, "-f", "-"],
                                Some(&p.to_string()),
                            );
                            let delta = self.reviews() - before;
                            if delta == expected {
                                break;
                            }
                            assert!(
                                Instant::now() < deadline,
                                "namespace {ns} labelled {labels:?}, {what} pod: reached nestdock \
                                 {delta} times, expected {expected}"
                            );
                            std::thread::sleep(Duration::from_millis(250));
                        }
                        checked += 1;
                    }
                }
            }
        }
        for ns in excluded {
            self.admin.ok(
                &[
                    "label",
                    "namespace",
                    ns,
                    "nestdock.io/mode-",
                    "nestdock.io/enforce-",
                ],
                None,
            );
        }
        eprintln!("e2e:    {checked} namespace/pod combinations as the selectors say");
    }
}

impl Ctx {
    /// Scenario 7b: a MutatingAdmissionPolicy (GA since 1.36; the API server
    /// runs policies before webhooks) adds a container. nestdock sees it and
    /// treats it like any other container: the stored pod equals `nestdock
    /// inject` of the pod with that container, and nestdock is called once.
    fn admission_policy(&self) {
        let ns = "policy";
        self.admin.namespace(
            ns,
            &[("nestdock.io/mode", "dind"), ("e2e.test/policy", "true")],
        );
        let policy = list(vec![
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingAdmissionPolicy",
                "metadata": {"name": "e2e-add-proxy"},
                "spec": {
                    "matchConstraints": {"resourceRules": [{
                        "apiGroups": [""], "apiVersions": ["v1"],
                        "operations": ["CREATE"], "resources": ["pods"]}]},
                    "failurePolicy": "Fail",
                    "reinvocationPolicy": "IfNeeded",
                    "matchConditions": [{"name": "no-proxy-yet",
                        "expression": "!object.spec.containers.exists(c, c.name == 'policy-proxy')"}],
                    "mutations": [{"patchType": "ApplyConfiguration", "applyConfiguration": {
                        "expression": "Object{spec: Object.spec{containers: [Object.spec.containers{name: \"policy-proxy\", image: \"envoyproxy/envoy:v1.33.0\"}]}}"
                    }}]
                }
            }),
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingAdmissionPolicyBinding",
                "metadata": {"name": "e2e-add-proxy"},
                "spec": {"policyName": "e2e-add-proxy",
                         "matchResources": {"namespaceSelector": {"matchLabels": {"e2e.test/policy": "true"}}}}
            }),
        ]);
        self.admin.ok(
            &[
                "apply",
                "--server-side",
                "--validate=strict",
                "--field-manager=e2e",
                "-f",
                "-",
            ],
            Some(&policy.to_string()),
        );
        let input = pod(
            "with-policy",
            json!({}),
            json!({"restartPolicy": "Never", "containers": [{"name": "build", "image": "docker:28-cli"}]}),
        );
        let mut with_proxy = input.clone();
        with_proxy["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "policy-proxy", "image": "envoyproxy/envoy:v1.33.0"}));
        let offline = inject(&with_proxy, "dind").expect("inject");
        let expected = self.admin.json(
            &[
                "create",
                "--dry-run=server",
                "-n",
                "offline",
                "-o",
                "json",
                "-f",
                "-",
            ],
            Some(&offline.to_string()),
        );
        // The policy takes effect once the API server has loaded it.
        let start = Instant::now();
        let stored = loop {
            let before = self.reviews();
            let mut p = input.clone();
            p["metadata"]["name"] = json!(self.unique("with-policy"));
            let stored = self.admin.create(ns, &p);
            if container_names(&stored, "containers")
                .iter()
                .any(|n| n == "policy-proxy")
            {
                assert_eq!(self.reviews() - before, 1, "nestdock called once");
                break stored;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the MutatingAdmissionPolicy never applied: {stored:#}"
            );
            std::thread::sleep(Duration::from_millis(300));
        };
        assert_eq!(
            relevant(&stored),
            relevant(&expected),
            "the stored pod is nestdock inject of the pod with the policy's container"
        );
        self.admin.ok(
            &[
                "delete",
                "mutatingadmissionpolicybinding,mutatingadmissionpolicy",
                "e2e-add-proxy",
            ],
            None,
        );
    }
}

/// The names of the projected token volume end in 5 random characters; both
/// sides of a comparison get the same placeholder.
fn normalize_token_volume(v: &Value) -> Value {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    const PREFIX: &str = "kube-api-access-";
    while let Some(i) = rest.find(PREFIX) {
        out.push_str(&rest[..i + PREFIX.len()]);
        rest = &rest[i + PREFIX.len()..];
        let n = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        out.push_str("xxxxx");
        rest = &rest[n..];
    }
    out.push_str(rest);
    serde_json::from_str(&out).unwrap()
}

/// What a client would send again of a stored or answered pod.
fn as_input(p: &Value) -> Value {
    let mut meta = serde_json::Map::new();
    for k in ["name", "generateName", "labels", "annotations"] {
        if let Some(v) = p["metadata"].get(k) {
            meta.insert(k.to_string(), v.clone());
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": p["spec"]})
}

impl Ctx {
    /// Scenario 12: the API server restarted with the ServiceAccount admission
    /// plugin, which runs before the webhooks in every real cluster: the pods
    /// reach nestdock with the projected token volume mounted in their
    /// containers. The stored pod equals `nestdock inject` of the pod as
    /// nestdock saw it (taken from a dry run in kube-system, which nestdock's
    /// webhooks leave out), both defaulted by the same API server.
    fn service_account_admission(&self, plane: &mut Plane) {
        plane.stop_apiserver();
        plane.api_flags = vec!["--service-account-admission".into()];
        plane.start_apiserver();
        let modes = ["dind", "dind-rootless", "dood"];
        let spec = json!({"containers": [{"name": "build", "image": "docker:28-cli"}]});
        for mode in modes {
            self.admin.namespace(
                &format!("sa-{mode}"),
                &[
                    ("nestdock.io/mode", mode),
                    ("nestdock.io/allow-dood", "true"),
                ],
            );
        }
        for n in ["sa-dind", "sa-dind-rootless", "sa-dood", "kube-system"] {
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                            "metadata": {"name": "default", "namespace": n}});
            self.admin.ok(&["apply", "-f", "-"], Some(&sa.to_string()));
        }
        // nestdock's watch reconnects to the restarted API server.
        self.poll_until(
            "sa-dind",
            &pod("probe", json!({}), spec),
            Duration::from_secs(60),
            |r| r.as_ref().is_ok_and(is_injected),
        );

        let mut pods = example_pods();
        pods.extend(real_world_pods());
        let mut cases = 0;
        let mut denied = 0;
        let mut differences = Vec::new();
        for mode in modes {
            let ns = format!("sa-{mode}");
            let mut inputs = Vec::new();
            let mut expected = Vec::new();
            for (label, p) in &pods {
                // As nestdock sees it: after the ServiceAccount plugin.
                let seen = self.admin.json(
                    &[
                        "create",
                        "--dry-run=server",
                        "-n",
                        "kube-system",
                        "-o",
                        "json",
                        "-f",
                        "-",
                    ],
                    Some(&p.to_string()),
                );
                assert!(
                    seen["spec"]["volumes"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|v| v["name"]
                            .as_str()
                            .is_some_and(|n| n.starts_with("kube-api-access-")))),
                    "{label}: the ServiceAccount plugin added the token volume"
                );
                let offline = match inject(&as_input(&seen), mode) {
                    Ok(o) => o,
                    Err(message) => {
                        let err = self.admin.create_err(&ns, p);
                        assert!(
                            err.contains("denied the request"),
                            "{label} ({mode}): inject denied it ({message}), the API server said: {err}"
                        );
                        denied += 1;
                        continue;
                    }
                };
                let defaulted = self.admin.json(
                    &[
                        "create",
                        "--dry-run=server",
                        "-n",
                        "kube-system",
                        "-o",
                        "json",
                        "-f",
                        "-",
                    ],
                    Some(&offline.to_string()),
                );
                inputs.push(p.clone());
                expected.push((label.clone(), defaulted));
            }
            let stored = list_items(self.admin.json(
                &["create", "-n", &ns, "-o", "json", "-f", "-"],
                Some(&list(inputs).to_string()),
            ));
            assert_eq!(stored.len(), expected.len());
            for (live, (label, want)) in stored.iter().zip(&expected) {
                let (l, w) = (
                    normalize_token_volume(&relevant(live)),
                    normalize_token_volume(&relevant(want)),
                );
                if l != w {
                    differences.push(format!(
                        "{label} ({mode}):\nlive: {}\noffline: {}",
                        serde_json::to_string_pretty(&l["spec"]).unwrap(),
                        serde_json::to_string_pretty(&w["spec"]).unwrap()
                    ));
                }
                if cases == 0 {
                    let with_token: Vec<String> = ["initContainers", "containers"]
                        .iter()
                        .flat_map(|l| live["spec"][l].as_array().cloned().unwrap_or_default())
                        .filter(|c| {
                            c["volumeMounts"].as_array().is_some_and(|m| {
                                m.iter().any(|m| {
                                    m["mountPath"]
                                        == "/var/run/secrets/kubernetes.io/serviceaccount"
                                })
                            })
                        })
                        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                        .collect();
                    eprintln!(
                        "e2e:    {label} ({mode}): containers of {:?} with the token mounted: {with_token:?}",
                        all_container_names(live)
                    );
                }
                cases += 1;
            }
        }
        eprintln!(
            "e2e:    {cases} pods with the ServiceAccount plugin ({denied} denied by both), {} differ from offline inject",
            differences.len()
        );
        assert!(
            differences.is_empty(),
            "{}",
            differences[..differences.len().min(2)].join("\n\n")
        );
    }
}
