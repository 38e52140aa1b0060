//! The Helm install, end to end against the real kube-apiserver: the
//! README's two commands (`helm install` with the project's helm, built from
//! its Go module by scripts/setup-helm.sh, then the namespace's Pod Security
//! label) against the same control plane as tests/e2e_apiserver.rs (the
//! harness is tests/common/kube.rs).
//!
//! There is no node: no kubelet runs nestdock's pods, no controller-manager
//! makes their ReplicaSet or their EndpointSlice. The suite does those two
//! jobs itself, and nothing more:
//! - the Deployment's pod is run as a local `nestdock serve` with the
//!   Deployment's own arguments (the mounted ConfigMap and Secret written to
//!   local directories at their mount paths' place, the listeners moved to
//!   this machine), with a token of the chart's ServiceAccount;
//! - once its readiness probe's path answers, an EndpointSlice for the chart's
//!   Service points at it (what the endpoint controller writes for a ready
//!   pod). The API server reaches the webhook through the chart's Service, as
//!   in a cluster: `clientConfig` stays as the chart wrote it, and the API
//!   server checks the chart's certificate for `nestdock.nestdock-system.svc`
//!   against the chart's caBundle. An EndpointSlice may not hold a loopback
//!   address, so nestdock listens on this machine's first global IPv4 address
//!   (the connection still never leaves the machine).
//!
//! `NESTDOCK_E2E=skip` skips it, as the other e2e suite.

mod common;

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use common::kube::*;

const NS: &str = "nestdock-system";
/// The Service's name as the API server verifies the webhook's certificate.
const SERVICE_DNS: &str = "nestdock.nestdock-system.svc";

/// The project's helm with a home of its own, against one kubeconfig.
struct Helm {
    bin: PathBuf,
    home: PathBuf,
    kubeconfig: PathBuf,
}

impl Helm {
    fn output(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        for (var, dir) in [
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_DATA_HOME", "data"),
        ] {
            cmd.env(var, self.home.join(dir));
        }
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .current_dir(repo())
            .args(args);
        run_with_timeout(cmd, None, Duration::from_secs(180))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "helm {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "nestdock", "-n", NS, "-o", "json"]))
            .expect("helm status JSON")
    }
}

/// The commands of the README's Helm install block, continuation lines
/// joined, REGISTRY replaced.
fn readme_helm_commands() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split_once("### With Helm")
        .expect("README: a \"### With Helm\" section")
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("README: a sh block in \"With Helm\"")
        .0;
    let joined = block.replace("\\\n", " ");
    let commands: Vec<Vec<String>> = joined
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_whitespace()
                .map(|w| w.replace("REGISTRY", "registry.example"))
                .collect()
        })
        .collect();
    assert_eq!(
        commands.len(),
        2,
        "the README's Helm install is two commands: {commands:?}"
    );
    commands
}

/// This machine's first global IPv4 address.
fn local_address() -> IpAddr {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("run ip (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next()?.parse().ok())
        .expect(
            "this suite needs a global IPv4 address on this machine: an EndpointSlice \
             may not point at loopback",
        )
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// The config file of the ConfigMap, and the Secret's three files, written
/// where the Deployment mounts them (below `root`, one directory per volume).
fn write_volumes(admin: &Kubectl, deployment: &Value, root: &Path) {
    let _ = std::fs::remove_dir_all(root);
    for vol in deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
    {
        let dir = root.join(vol["name"].as_str().unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        let (kind, name, decode) = if let Some(s) = vol["secret"]["secretName"].as_str() {
            ("secret", s, true)
        } else if let Some(c) = vol["configMap"]["name"].as_str() {
            ("configmap", c, false)
        } else {
            panic!("a volume this suite cannot stand in for: {vol}")
        };
        let obj = admin.json(&["get", kind, name, "-n", NS, "-o", "json"], None);
        for (file, v) in obj["data"].as_object().expect("data") {
            let v = v.as_str().unwrap();
            let bytes = if decode {
                b64(v)
            } else {
                v.as_bytes().to_vec()
            };
            std::fs::write(dir.join(file), bytes).unwrap();
        }
    }
}

/// The Deployment's `nestdock` command line as a local process runs it: every
/// path below a mount point moved to that volume's local directory, the
/// webhook listener on `listen`, metrics on 127.0.0.1:`metrics_port`.
fn local_args(
    deployment: &Value,
    volumes: &Path,
    listen: SocketAddr,
    metrics_port: u16,
) -> Vec<OsString> {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "nestdock");
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mut moved = 0;
    let args: Vec<OsString> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            let Some((flag, value)) = a.split_once('=') else {
                return a.into();
            };
            match flag {
                "--listen" => return format!("--listen={listen}").into(),
                "--metrics-listen" => {
                    return format!("--metrics-listen=127.0.0.1:{metrics_port}").into()
                }
                _ => {}
            }
            for m in mounts {
                let at = m["mountPath"].as_str().unwrap();
                if let Some(rest) = value.strip_prefix(&format!("{at}/")) {
                    moved += 1;
                    let local = volumes.join(m["name"].as_str().unwrap()).join(rest);
                    return format!("{flag}={}", local.display()).into();
                }
            }
            a.into()
        })
        .collect();
    assert_eq!(
        moved, 3,
        "the certificate, its key and the config file are read from the mounts: {args:?}"
    );
    args
}

/// `nestdock inject --config CONFIG --mode MODE` of one pod.
fn inject(obj: &Value, config: &Path, mode: &str) -> Value {
    let mut cmd = Command::new(common::bin());
    cmd.args(["inject", "-f", "-", "--mode", mode, "--config"])
        .arg(config);
    let out = run_with_timeout(
        cmd,
        Some(obj.to_string().as_bytes()),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = parse_documents(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(docs.len(), 1);
    docs.into_iter().next().unwrap()
}

fn build_pod(name: &str, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "annotations": annotations},
           "spec": {"restartPolicy": "Never",
                    "containers": [{"name": "build", "image": "docker:28-cli",
                                    "command": ["docker", "build", "."]}]}})
}

fn relevant(pod: &Value) -> Value {
    json!({
        "annotations": pod["metadata"]["annotations"],
        "labels": pod["metadata"]["labels"],
        "spec": pod["spec"],
    })
}

fn webhooks(admin: &Kubectl) -> Vec<Value> {
    admin.json(
        &[
            "get",
            "mutatingwebhookconfiguration",
            "nestdock",
            "-o",
            "json",
        ],
        None,
    )["webhooks"]
        .as_array()
        .unwrap()
        .clone()
}

struct Suite {
    admin: Kubectl,
    helm: Helm,
    plane_dir: PathBuf,
    listen: SocketAddr,
    metrics_port: u16,
    sa_kubeconfig: PathBuf,
    nestdock: Option<Nestdock>,
    /// The namespace of the offline comparison pods.
    offline_ns: &'static str,
}

impl Suite {
    fn deployment(&self) -> Value {
        self.admin.json(
            &["get", "deployment", "nestdock", "-n", NS, "-o", "json"],
            None,
        )
    }

    fn config_path(&self) -> PathBuf {
        self.plane_dir.join("volumes/config/config.yaml")
    }

    /// What the kubelet would do for the Deployment's pod: its volumes, its
    /// process; then what the endpoint controller does once it is ready.
    fn start_nestdock(&mut self) {
        let deployment = self.deployment();
        let volumes = self.plane_dir.join("volumes");
        write_volumes(&self.admin, &deployment, &volumes);
        let args = local_args(&deployment, &volumes, self.listen, self.metrics_port);
        let n = spawn_nestdock_args(&args, self.metrics_port, &self.sa_kubeconfig);
        // The readiness probe's request (the kubelet's does not verify the
        // certificate; this one does, for the Service's name).
        let probe =
            &deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"];
        assert_eq!(probe["scheme"], "HTTPS");
        let ca = std::fs::read(volumes.join("tls/ca.crt")).unwrap();
        let ready = https_get_named(
            self.listen,
            SERVICE_DNS,
            &ca,
            probe["path"].as_str().unwrap(),
        );
        assert_eq!(
            ready.as_ref().map(|r| r.0),
            Ok(200),
            "readiness probe: {ready:?}"
        );
        self.nestdock = Some(n);
    }

    fn stop_nestdock(&mut self) {
        if let Some(mut n) = self.nestdock.take() {
            n.stop();
        }
    }

    fn reviews(&self) -> u64 {
        self.nestdock.as_ref().expect("nestdock running").reviews()
    }

    /// Creates `pod` in `ns` and checks it is stored as `nestdock inject`
    /// with the installed config file writes it offline for `mode` (both
    /// defaulted by the same API server); returns the stored pod.
    fn injected_as_offline(&self, ns: &str, pod: &Value, mode: &str) -> Value {
        let before = self.reviews();
        let live = self.admin.create(ns, pod);
        assert_eq!(self.reviews(), before + 1, "one review for {ns}");
        let offline = inject(pod, &self.config_path(), mode);
        let offline = self.admin.json(
            &[
                "create",
                "--dry-run=server",
                "-n",
                self.offline_ns,
                "-o",
                "json",
                "-f",
                "-",
            ],
            Some(&offline.to_string()),
        );
        assert_eq!(
            relevant(&live),
            relevant(&offline),
            "in {ns}: the stored pod is not `nestdock inject --mode {mode}` with the chart's config"
        );
        assert_eq!(
            live["metadata"]["annotations"]["nestdock.io/injected"], mode,
            "{live:#}"
        );
        live
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        self.stop_nestdock();
    }
}

#[test]
fn helm_install_upgrade_and_uninstall_against_the_real_api_server() {
    if std::env::var("NESTDOCK_E2E").is_ok_and(|v| v == "skip") {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n\n!!! NESTDOCK_E2E=skip: the Helm install against the real kube-apiserver was NOT run.\n"
        );
        return;
    }
    let mut steps = Steps::new();
    steps.step("build the control plane, kubectl and helm (scripts/)");
    let plane_bin = setup_script("build-kube.sh", Duration::from_secs(60 * 60));
    let kubectl_bin = setup_script("setup-kubectl.sh", Duration::from_secs(600));
    let helm_bin = setup_script("setup-helm.sh", Duration::from_secs(60 * 60));
    remove_stale_state();
    let tmp = tempfile::Builder::new()
        .prefix("nestdock-e2e-helm-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let dir = tmp.path().to_path_buf();

    steps.step("start the control plane");
    let (plane, took) = start_plane(&plane_bin, &dir);
    eprintln!("e2e: control plane ready in {:.1}s", took.as_secs_f64());
    let admin = Kubectl {
        bin: kubectl_bin,
        kubeconfig: plane.admin_kubeconfig.clone(),
    };
    let helm = Helm {
        bin: helm_bin,
        home: dir.join("helm-home"),
        kubeconfig: plane.admin_kubeconfig.clone(),
    };

    steps.step("1. the README's two commands: helm install, then the Pod Security label");
    let started = Instant::now();
    for command in readme_helm_commands() {
        let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
        match command[0].as_str() {
            "helm" => {
                // --wait would wait for the Deployment's pods, which need a
                // node; without it helm returns once the objects are stored.
                let out = helm.ok(&args);
                eprint!("{out}");
            }
            "kubectl" => {
                admin.ok(&args, None);
            }
            other => panic!("the README's Helm install runs {other}"),
        }
    }
    eprintln!(
        "e2e:    installed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let status = helm.status();
    assert_eq!(status["info"]["status"], "deployed", "{status:#}");
    assert_eq!(status["version"], 1);
    // Every object of the release is stored.
    let manifest = helm.ok(&["get", "manifest", "nestdock", "-n", NS]);
    let objects = parse_documents(&manifest);
    let kinds: Vec<&str> = objects.iter().map(kind).collect();
    for want in [
        "Secret",
        "ConfigMap",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
    ] {
        assert!(kinds.contains(&want), "no {want} in the release: {kinds:?}");
    }
    for obj in &objects {
        let mut args = vec!["get", kind(obj), name(obj), "-o", "name"];
        if let Some(ns) = obj["metadata"]["namespace"].as_str() {
            args.extend(["-n", ns]);
        }
        admin.ok(&args, None);
    }
    let ns = admin.json(&["get", "namespace", NS, "-o", "json"], None);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );

    steps.step("2. the chart's certificate: the Secret, and the caBundle of the three webhooks");
    let secret = admin.json(
        &["get", "secret", "nestdock-tls", "-n", NS, "-o", "json"],
        None,
    );
    let ca_b64 = secret["data"]["ca.crt"]
        .as_str()
        .expect("ca.crt")
        .to_string();
    let hooks = webhooks(&admin);
    assert_eq!(hooks.len(), 3);
    for h in &hooks {
        assert_eq!(
            h["clientConfig"],
            json!({"caBundle": ca_b64,
                   "service": {"name": "nestdock", "namespace": NS, "path": "/mutate", "port": 443}}),
            "{}: the chart's Service and CA",
            h["name"]
        );
    }
    let installed_config: Value = serde_norway::from_str(
        admin.json(
            &[
                "get",
                "configmap",
                "nestdock-config",
                "-n",
                NS,
                "-o",
                "json",
            ],
            None,
        )["data"]["config.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let kustomize_config: Value = serde_norway::from_str(
        &std::fs::read_to_string(repo().join("manifests/base/config.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        installed_config, kustomize_config,
        "the default values install the kustomize base's config file"
    );

    steps.step("3. nestdock's own pod, as its ReplicaSet would create it: Pod Security restricted admits it");
    let deployment = admin.json(
        &["get", "deployment", "nestdock", "-n", NS, "-o", "json"],
        None,
    );
    let template = &deployment["spec"]["template"];
    let own_pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "nestdock-as-replicaset-makes-it",
                     "labels": template["metadata"]["labels"],
                     "annotations": template["metadata"]["annotations"]},
        "spec": template["spec"]});
    admin.ok(
        &["create", "--dry-run=server", "-n", NS, "-f", "-"],
        Some(&own_pod.to_string()),
    );
    // The label is enforced: a privileged pod is not.
    let refused = admin.create_err(
        NS,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged"},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                                         "securityContext": {"privileged": true}}]}}),
    );
    assert!(
        refused.contains("violates PodSecurity \"restricted:latest\""),
        "{refused}"
    );

    steps.step("4. nestdock serve with the Deployment's arguments and the chart's ServiceAccount, behind the chart's Service");
    let token = admin
        .ok(
            &["create", "token", "nestdock", "-n", NS, "--duration=1h"],
            None,
        )
        .trim()
        .to_string();
    let sa_kubeconfig = dir.join("nestdock.kubeconfig");
    plane.token_kubeconfig(&sa_kubeconfig, &token);
    let listen = SocketAddr::new(local_address(), free_port());
    let mut suite = Suite {
        admin: admin.clone(),
        helm,
        plane_dir: dir.clone(),
        listen,
        metrics_port: free_port(),
        sa_kubeconfig,
        nestdock: None,
        offline_ns: "offline",
    };
    suite.start_nestdock();
    // What the endpoint controller writes for the ready pod.
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "nestdock-local", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "nestdock"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [listen.ip().to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": listen.port(), "protocol": "TCP"}],
    });
    admin.ok(&["create", "-f", "-"], Some(&slice.to_string()));
    eprintln!("e2e:    nestdock on {listen}, its EndpointSlice created");

    steps.step(
        "5. pods are injected through the chart's webhooks, as `nestdock inject` writes them",
    );
    admin.namespace(suite.offline_ns, &[]);
    admin.namespace("helm-dind", &[("nestdock.io/mode", "dind")]);
    admin.namespace(
        "helm-enforced",
        &[
            ("nestdock.io/mode", "dind-rootless"),
            ("nestdock.io/enforce", "true"),
        ],
    );
    admin.namespace("helm-plain", &[]);
    // The API server's first call may wait for the EndpointSlice to reach
    // its informer: the first pod is retried, for at most 20 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pod = build_pod("first", json!({"nestdock.io/mode": "dind"}));
        let out = admin.output(
            &["create", "-n", "helm-plain", "-o", "json", "-f", "-"],
            Some(&pod.to_string()),
        );
        let stored: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if stored["metadata"]["annotations"]["nestdock.io/injected"] == "dind" {
            break;
        }
        if out.status.success() {
            admin.ok(&["delete", "pod", "first", "-n", "helm-plain"], None);
        }
        assert!(
            Instant::now() < deadline,
            "no injection through the Service within 20 s: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            suite.nestdock.as_ref().unwrap().log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    suite.injected_as_offline("helm-dind", &build_pod("ns-dind", json!({})), "dind");
    suite.injected_as_offline(
        "helm-enforced",
        &build_pod("ns-enforced", json!({})),
        "dind-rootless",
    );
    suite.injected_as_offline(
        "helm-plain",
        &build_pod("annotated", json!({"nestdock.io/mode": "dind"})),
        "dind",
    );
    // Without an annotation, outside labelled namespaces: never sent.
    let before = suite.reviews();
    let plain = admin.create("helm-plain", &build_pod("plain", json!({})));
    assert!(plain["metadata"]["annotations"]["nestdock.io/injected"].is_null());
    // nestdock's own namespace is never sent either (its pods must start
    // while nestdock is down).
    admin.ok(&["create", "-n", NS, "-f", "-"], Some(&own_pod.to_string()));
    admin.ok(
        &["delete", "pod", "nestdock-as-replicaset-makes-it", "-n", NS],
        None,
    );
    assert_eq!(suite.reviews(), before, "reviews of pods that are not sent");

    steps.step(
        "6. helm upgrade with a config change: the pod template changes, the certificate does not",
    );
    let before_deployment = suite.deployment();
    let before_secret = admin.json(
        &["get", "secret", "nestdock-tls", "-n", NS, "-o", "json"],
        None,
    );
    let before_hooks = webhooks(&admin);
    // A typo is refused by the schema, and changes nothing.
    let typo = suite.helm.output(&[
        "upgrade",
        "nestdock",
        "charts/nestdock",
        "-n",
        NS,
        "--reuse-values",
        "--set",
        "config.dind.mtuu=1400",
    ]);
    assert!(!typo.status.success(), "a values typo was accepted");
    let typo_err = String::from_utf8_lossy(&typo.stderr);
    assert!(typo_err.contains("mtuu"), "{typo_err}");
    assert_eq!(suite.helm.status()["version"], 1);
    let started = Instant::now();
    suite.helm.ok(&[
        "upgrade",
        "nestdock",
        "charts/nestdock",
        "-n",
        NS,
        "--reuse-values",
        "--set",
        "config.dind.mtu=1400",
    ]);
    eprintln!(
        "e2e:    upgraded in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(suite.helm.status()["version"], 2);
    let after_deployment = suite.deployment();
    let checksum = |d: &Value| {
        d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .expect("checksum/config")
            .to_string()
    };
    assert_ne!(
        checksum(&before_deployment),
        checksum(&after_deployment),
        "the config checksum on the pod template"
    );
    // The checksum is the only change of the pod template: the Deployment
    // controller rolls the pods because of the config, and for nothing else.
    let mut old_template = before_deployment["spec"]["template"].clone();
    old_template["metadata"]["annotations"]["checksum/config"] = json!(checksum(&after_deployment));
    assert_eq!(old_template, after_deployment["spec"]["template"]);
    assert_eq!(
        after_deployment["metadata"]["generation"].as_i64(),
        before_deployment["metadata"]["generation"]
            .as_i64()
            .map(|g| g + 1),
        "a new generation for the Deployment controller to roll out"
    );
    let after_secret = admin.json(
        &["get", "secret", "nestdock-tls", "-n", NS, "-o", "json"],
        None,
    );
    assert_eq!(
        after_secret["data"], before_secret["data"],
        "the certificate is kept"
    );
    assert_eq!(
        after_secret["metadata"]["resourceVersion"], before_secret["metadata"]["resourceVersion"],
        "the Secret is not even rewritten"
    );
    let after_hooks = webhooks(&admin);
    for (a, b) in after_hooks.iter().zip(&before_hooks) {
        assert_eq!(
            a["clientConfig"], b["clientConfig"],
            "{}: the caBundle is kept",
            a["name"]
        );
    }

    steps.step("6b. the rolled pod: the new config file, the same certificate, the new MTU");
    suite.stop_nestdock();
    suite.start_nestdock();
    let config_text = std::fs::read_to_string(suite.config_path()).unwrap();
    assert!(config_text.contains("mtu: 1400"), "{config_text}");
    let live =
        suite.injected_as_offline("helm-dind", &build_pod("after-upgrade", json!({})), "dind");
    let daemon = live["spec"]["initContainers"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "nestdock-dind"))
        .unwrap_or_else(|| panic!("no nestdock-dind init container: {live:#}"));
    assert!(
        daemon.to_string().contains("1400"),
        "the daemon carries the new MTU: {daemon:#}"
    );

    steps.step(
        "6c. helm upgrade turns the registry cache on: its objects, and the mirror in new pods",
    );
    let before_checksum = checksum(&suite.deployment());
    suite.helm.ok(&[
        "upgrade",
        "nestdock",
        "charts/nestdock",
        "-n",
        NS,
        "--reuse-values",
        "--set",
        "registryCache.enabled=true",
    ]);
    assert_ne!(
        checksum(&suite.deployment()),
        before_checksum,
        "the mirror is a config change: the pods roll"
    );
    for what in [
        "deployment/nestdock-registry-cache",
        "service/nestdock-registry-cache",
        "persistentvolumeclaim/nestdock-registry-cache",
    ] {
        admin.ok(&["get", what, "-n", NS, "-o", "name"], None);
    }
    // The cache's pod, as its ReplicaSet would create it: admitted by the
    // namespace's Pod Security level (restricted).
    let cache = admin.json(
        &[
            "get",
            "deployment",
            "nestdock-registry-cache",
            "-n",
            NS,
            "-o",
            "json",
        ],
        None,
    );
    let cache_pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "registry-cache-as-replicaset-makes-it",
                     "labels": cache["spec"]["template"]["metadata"]["labels"]},
        "spec": cache["spec"]["template"]["spec"]});
    admin.ok(
        &["create", "--dry-run=server", "-n", NS, "-f", "-"],
        Some(&cache_pod.to_string()),
    );
    assert_eq!(
        webhooks(&admin)
            .iter()
            .map(|h| h["clientConfig"].clone())
            .collect::<Vec<_>>(),
        before_hooks
            .iter()
            .map(|h| h["clientConfig"].clone())
            .collect::<Vec<_>>(),
        "the caBundle is still the one made at install"
    );
    suite.stop_nestdock();
    suite.start_nestdock();
    let live = suite.injected_as_offline("helm-dind", &build_pod("with-cache", json!({})), "dind");
    let daemon = live["spec"]["initContainers"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "nestdock-dind"))
        .unwrap_or_else(|| panic!("no nestdock-dind init container: {live:#}"));
    assert!(
        daemon
            .to_string()
            .contains("--registry-mirror=http://nestdock-registry-cache.nestdock-system.svc:5000"),
        "the daemon's mirror is the cache (tests/registry_cache.rs pulls through it): {daemon:#}"
    );

    steps.step("7. helm uninstall: the webhooks go, pods are created as they are");
    suite.helm.ok(&["uninstall", "nestdock", "-n", NS]);
    let gone = admin.output(&["get", "mutatingwebhookconfiguration", "nestdock"], None);
    assert!(
        !gone.status.success(),
        "the webhook configuration is deleted"
    );
    let gone = admin.output(&["get", "secret", "nestdock-tls", "-n", NS], None);
    assert!(!gone.status.success(), "the Secret is deleted");
    let before = suite.reviews();
    let after = admin.create(
        "helm-plain",
        &build_pod("after-uninstall", json!({"nestdock.io/mode": "dind"})),
    );
    assert!(after["metadata"]["annotations"]["nestdock.io/injected"].is_null());
    assert_eq!(suite.reviews(), before);

    steps.finish();
    drop(suite);
    drop(plane);
    drop(tmp);
}
