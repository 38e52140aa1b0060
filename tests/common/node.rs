//! The real-node harness (tests/e2e_node.rs): one cluster per test binary,
//! the control plane and a node (containerd 2.4, kubelet, kube-scheduler,
//! kube-controller-manager, kube-proxy, Debian's runc and CNI plugins; see
//! tests/kube/node.go) in a network namespace of their own, with nestdock
//! installed the way the README says, from its release binary's image.
//!
//! Set-up: scripts/build-kube.sh (the Kubernetes programs), scripts/build-node.sh
//! (containerd and the images), scripts/setup-kubectl.sh, and
//! scripts/setup-docker-engine.sh (Debian's dockerd 20.10, the node's own
//! Docker Engine that dood pods reach through the guard). Anything that keeps
//! the cluster from starting fails the tests, naming the log to read.
//!
//! The cluster lives as long as the test process: kube-testplane polls its
//! parent and, once the process is gone, stops every pod, the components and
//! containerd. The node's state and logs stay in /var/lib/nestdock-node (the
//! next run removes them first); `NESTDOCK_E2E_KEEP=1` also keeps the control
//! plane's directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::kube::{repo, setup_script, spawn_until_line, Kubectl, Proc};

/// Where the node keeps its state (containerd's root, the kubelet's root,
/// each component's log). Fixed: one node per machine, serialised by a lock.
pub const NODE_DIR: &str = "/var/lib/nestdock-node";
/// The pod network's MTU (the CNI bridge's), which scenario 3 checks arrives
/// in the inner daemons.
pub const POD_MTU: u32 = 1400;
/// The dockerd that dood pods reach through the guard (scenario 7).
pub const NODE_DOCKER_SOCKET: &str = "/var/lib/nestdock-node/docker/docker.sock";

pub struct Cluster {
    pub kubectl: Kubectl,
    pub dir: PathBuf,
    /// kube-testplane's pid: the node's network namespace is its.
    pub plane_pid: u32,
    _plane: Proc,
    _tmp: Option<tempfile::TempDir>,
}

/// The cluster of this test binary, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(start)
}

fn start() -> Cluster {
    let begin = Instant::now();
    let plane_bin = setup_script("build-kube.sh", Duration::from_secs(60 * 60));
    let node_out = setup_script("build-node.sh", Duration::from_secs(60 * 60));
    let kubectl_bin = setup_script("setup-kubectl.sh", Duration::from_secs(600));
    let dockerd = setup_script("setup-docker-engine.sh", Duration::from_secs(600));
    eprintln!(
        "e2e-node: set-up scripts done in {:.1}s",
        begin.elapsed().as_secs_f64()
    );

    // Rootless dind needs /dev/net/tun usable by uid 1000, as udev makes it
    // on a node; this machine has no udev (0600).
    let _ = std::fs::set_permissions(
        "/dev/net/tun",
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    );

    super::kube::remove_stale_state();
    let tmp = tempfile::Builder::new()
        .prefix("nestdock-e2e-node-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let keep = std::env::var("NESTDOCK_E2E_KEEP").is_ok_and(|v| !v.is_empty() && v != "0");
    let (dir, tmp) = if keep {
        let p = tmp.keep();
        eprintln!("e2e-node: NESTDOCK_E2E_KEEP: state kept in {}", p.display());
        (p, None)
    } else {
        (tmp.path().to_path_buf(), Some(tmp))
    };

    let kubeconfig = dir.join("admin.kubeconfig");
    let mut cmd = Command::new("unshare");
    cmd.arg("--net")
        .arg("--")
        .arg("bash")
        .arg(repo().join("tests/kube/netns.sh"))
        .arg(&plane_bin)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--state-dir")
        .arg(dir.join("plane"))
        .arg("--port=6443")
        .arg("--ready-timeout=5m")
        .arg("--node")
        .arg(format!("--node-dir={NODE_DIR}"))
        .arg(format!("--node-bin-dir={}", node_out.join("bin").display()))
        .arg(format!(
            "--images={}",
            node_out.join("images/node.tar").display()
        ))
        .arg(format!("--cni-mtu={POD_MTU}"))
        .arg(format!("--dockerd={}", dockerd.display()));
    let started = Instant::now();
    let (plane, line) = spawn_until_line(
        cmd,
        "the node (kube-testplane --node)",
        "nestdock-testplane node ready",
        &dir.join("testplane.log"),
        Duration::from_secs(420),
    );
    eprintln!(
        "e2e-node: {line}; cluster up in {:.1}s (component logs: {NODE_DIR}/logs)",
        started.elapsed().as_secs_f64()
    );
    let plane_pid = plane.child.id();
    let kubectl = Kubectl {
        bin: kubectl_bin,
        kubeconfig,
    };
    let cluster = Cluster {
        kubectl,
        dir,
        plane_pid,
        _plane: plane,
        _tmp: tmp,
    };
    cluster.install_nestdock();
    cluster
}

/// nestdock's configuration in the suite: the defaults, but for the daemon
/// images (built locally, nothing can be pulled), the node's dockerd and the
/// kubelet's root directory (the node keeps both below NODE_DIR), and the
/// guard's opt-in cgroup placement under the pod, which the suite checks.
pub const NESTDOCK_CONFIG: &str = "\
dind:
  image: nestdock.test/docker:dind
  rootlessImage: nestdock.test/docker:dind-rootless
  allowedImages: [\"nestdock.test/docker:*\"]
dood:
  hostSocket: /var/lib/nestdock-node/docker/docker.sock
  kubeletRoot: /var/lib/nestdock-node/kubelet
  guard:
    cgroupParent: pod
";

impl Cluster {
    /// The README's install (`nestdock certs ...` then `kubectl apply -k
    /// manifests/self-signed`) on a copy of the manifests, through an overlay
    /// that replaces the config file as the base's comment says to; then
    /// waits for both replicas and for the webhook to answer.
    fn install_nestdock(&self) {
        let m = self.dir.join("manifests");
        for part in ["base", "policy", "self-signed"] {
            copy_dir(&repo().join("manifests").join(part), &m.join(part));
        }
        let _ = std::fs::remove_dir_all(m.join("self-signed/certs"));
        let certs = Command::new(super::bin())
            .args(["certs", "--service", "nestdock", "--namespace"])
            .arg("nestdock-system")
            .arg("--out-dir")
            .arg(m.join("self-signed/certs"))
            .output()
            .expect("nestdock certs");
        assert!(certs.status.success(), "nestdock certs: {certs:?}");
        let overlay = self.dir.join("overlay");
        std::fs::create_dir_all(&overlay).unwrap();
        std::fs::write(overlay.join("config.yaml"), NESTDOCK_CONFIG).unwrap();
        std::fs::write(
            overlay.join("kustomization.yaml"),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources: [../manifests/self-signed]\nconfigMapGenerator:\n  \
             - name: nestdock-config\n    namespace: nestdock-system\n    \
             behavior: replace\n    files: [config.yaml]\n",
        )
        .unwrap();
        let k = &self.kubectl;
        k.ok(&["apply", "-k", overlay.to_str().unwrap()], None);
        k.ok(
            &[
                "-n",
                "nestdock-system",
                "rollout",
                "status",
                "deployment/nestdock",
                "--timeout=80s",
            ],
            None,
        );
        // The API server reaches the webhook at the endpoints' addresses
        // (no kube-proxy in its path): wait until a server-side dry run
        // comes back injected.
        let probe = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "probe", "annotations": {"nestdock.io/mode": "dind"}},
            "spec": {"containers": [{"name": "c", "image": "nestdock.test/build:1"}]}});
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = k.output(
                &["create", "--dry-run=server", "-o", "json", "-f", "-"],
                Some(&probe.to_string()),
            );
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && text.contains("nestdock-dind") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the webhook does not inject within 60 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A fresh namespace with these labels.
    pub fn namespace(&self, name: &str, labels: &[(&str, &str)]) -> String {
        self.kubectl.namespace(name, labels);
        name.to_string()
    }

    /// The pod (JSON) once `done` says so, polled twice a second; panics
    /// after `limit` with the pod's state and events.
    pub fn wait_pod(
        &self,
        ns: &str,
        name: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let out = self
                .kubectl
                .output(&["get", "pod", "-n", ns, name, "-o", "json"], None);
            if out.status.success() {
                let pod: Value = serde_json::from_slice(&out.stdout).expect("pod JSON");
                if done(&pod) {
                    return pod;
                }
                if Instant::now() > deadline {
                    panic!(
                        "pod {ns}/{name} not as expected within {limit:?}:\n{:#}\n{}",
                        pod["status"],
                        self.describe(ns, name)
                    );
                }
            } else if Instant::now() > deadline {
                panic!("pod {ns}/{name}: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `kubectl describe pod` and the logs of every container, for failures.
    pub fn describe(&self, ns: &str, name: &str) -> String {
        let d = self
            .kubectl
            .output(&["describe", "pod", "-n", ns, name], None);
        let l = self.kubectl.output(
            &["logs", "-n", ns, name, "--all-containers", "--tail=40"],
            None,
        );
        format!(
            "{}\n--- logs:\n{}{}",
            String::from_utf8_lossy(&d.stdout),
            String::from_utf8_lossy(&l.stdout),
            String::from_utf8_lossy(&l.stderr)
        )
    }

    pub fn logs(&self, ns: &str, pod: &str, container: &str) -> String {
        self.kubectl
            .ok(&["logs", "-n", ns, pod, "-c", container], None)
    }

    /// Creates a bare pod (restartPolicy Never) with one build container
    /// running `script` in the build image; returns the created pod and the
    /// warnings the API server passed on.
    pub fn run_pod(
        &self,
        ns: &str,
        name: &str,
        annotations: Value,
        build: Value,
        extra_spec: Value,
    ) -> (Value, String) {
        let mut spec = json!({
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "containers": [build],
        });
        merge(&mut spec, extra_spec);
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations},
            "spec": spec});
        let out = self.kubectl.output(
            &["create", "-n", ns, "-o", "json", "-f", "-"],
            Some(&pod.to_string()),
        );
        assert!(
            out.status.success(),
            "creating pod {ns}/{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            serde_json::from_slice(&out.stdout).expect("pod JSON"),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Waits for a container of the pod to terminate; returns its exit code
    /// and its log.
    pub fn wait_container_exit(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        limit: Duration,
    ) -> (i64, String) {
        let pod_json = self.wait_pod(ns, pod, limit, |p| {
            container_state(p, container).get("terminated").is_some()
        });
        let code = container_state(&pod_json, container)["terminated"]["exitCode"]
            .as_i64()
            .unwrap_or(-1);
        (code, self.logs(ns, pod, container))
    }
}

/// A build container: the build image running `script` with `sh -ec`.
pub fn build_container(script: &str) -> Value {
    json!({"name": "build", "image": "nestdock.test/build:1", "imagePullPolicy": "Never",
           "command": ["sh", "-ec", script]})
}

/// The state object of a container (app, init or sidecar) in a pod's status.
pub fn container_state<'a>(pod: &'a Value, name: &str) -> &'a Value {
    for key in ["containerStatuses", "initContainerStatuses"] {
        if let Some(s) = pod["status"][key]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
        {
            return &s["state"];
        }
    }
    &Value::Null
}

/// Seconds since the epoch, as the build containers print them (`date
/// +%s.%N`): the same clock, so start-up can be measured from the test.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Merges `extra` into `base` (objects key by key, anything else replaced).
fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}
