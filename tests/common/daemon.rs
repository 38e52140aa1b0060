//! nestdock's daemon container run for real (tests/daemon.rs,
//! tests/registry_cache.rs): the root filesystem scripts/build-daemon-rootfs.sh
//! builds, a containerd of the test process, and a container started the way
//! the kubelet would start it. The module comment of tests/daemon.rs says how
//! the kubelet is emulated and where that differs from a node.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nestdock::config::Config;
use nestdock::engine::{mutate, Context, Effect, NamespacePolicy};
use serde_json::{json, Value};

/// The daemon root filesystem, built once per machine by the script.
pub fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-daemon-rootfs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/build-daemon-rootfs.sh");
        assert!(
            out.status.success(),
            "scripts/build-daemon-rootfs.sh failed ({}): the daemon tests need Debian's containerd, runc \
             and a trixie root filesystem, and cannot run without them",
            out.status
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// A containerd of this test process (its own state, socket and root), which
/// dies with it.
pub struct Containerd {
    pub socket: PathBuf,
    pub _dir: tempfile::TempDir,
    /// Never waited for: it lives as long as the test process.
    pub _process: std::process::Child,
    /// Closed when the process exits, which stops containerd.
    pub _keeper: std::process::ChildStdin,
}

pub fn containerd() -> &'static Containerd {
    static CTD: OnceLock<Containerd> = OnceLock::new();
    CTD.get_or_init(|| {
        rootfs(); // installs containerd and runc too
        // Directories of earlier runs whose process is gone (statics are
        // never dropped, so a run cannot remove its own).
        if let Ok(entries) = std::fs::read_dir("/var/tmp") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("nestdock-containerd-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("nestdock-containerd-{}", std::process::id()))
            .rand_bytes(0)
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{1}\"\n",
                dir.path().display(),
                socket.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        // containerd ends with this test process: sh kills it when its stdin,
        // a pipe this process holds, reaches EOF. (A parent-death signal
        // would not do: it fires when the *thread* that started it ends,
        // which is the first test to get here.)
        let mut process = Command::new("sh")
            .arg("-c")
            .arg(r#"containerd --config "$0" & pid=$!; read _line; kill $pid; wait $pid"#)
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd (installed by scripts/build-daemon-rootfs.sh)");
        let keeper = process.stdin.take().expect("a pipe to containerd's keeper");
        let ctd = Containerd {
            socket,
            _dir: dir,
            _process: process,
            _keeper: keeper,
        };
        let started = Instant::now();
        while !ctd.ctr(&["version"]).status.success() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "containerd did not answer within 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        ctd
    })
}

impl Containerd {
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("60")
            .arg("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run ctr")
    }
}

/// The daemon container nestdock writes into `pod`.
pub fn daemon_of(annotations: Value) -> Value {
    daemon_of_with(&Config::default(), annotations)
}

/// The daemon container nestdock writes into `pod` with `config`.
pub fn daemon_of_with(config: &Config, annotations: Value) -> Value {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "build", "namespace": "ci", "annotations": annotations},
        "spec": {"containers": [{"name": "build", "image": "docker:28-cli"}]},
    });
    let d = mutate(
        &pod,
        &Context {
            config,
            namespace: NamespacePolicy::Off,
            native_sidecars: true,
        },
    );
    let Effect::Patched(patch) = d.effect else {
        panic!("not injected: {:?}", d.effect);
    };
    let patched = super::apply_patch(&pod, &serde_json::to_value(&patch).unwrap());
    patched["spec"]["initContainers"][0].clone()
}

pub fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// What the pod around a container brings: its network namespace (the
/// container's own, loopback only, when None), and files the container
/// sees in its root filesystem (`/etc/hosts`, as the kubelet writes it).
#[derive(Default)]
pub struct Pod {
    pub netns: Option<PathBuf>,
    pub files: Vec<(String, String)>,
}

/// The daemon container running under containerd, stopped and removed when
/// dropped.
pub struct Running {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub spec: Value,
    pub stopped: bool,
}

impl Running {
    /// Starts `spec` (a container of the pod) as the kubelet would.
    pub fn start(name: &str, spec: &Value) -> Running {
        Running::start_with(name, spec, &Pod::default())
    }

    /// Starts `spec` as a container of `pod`: in its network namespace, with
    /// its files.
    pub fn start_with(name: &str, spec: &Value, pod: &Pod) -> Running {
        let ctd = containerd();
        // runc's state is per machine, not per containerd: ids are unique per run.
        let id = format!("{name}-{}", std::process::id());
        let id = id.as_str();
        let dir = tempfile::Builder::new()
            .prefix("nestdock-pod-")
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        let mut args: Vec<String> = vec!["run".into(), "-d".into()];
        let sc = &spec["securityContext"];
        if sc["privileged"] == true {
            args.extend(
                [
                    "--privileged",
                    "--allow-new-privs",
                    "--mount",
                    "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=rw:nosuid:nodev:noexec",
                ]
                .map(String::from),
            );
        }
        for m in spec["volumeMounts"].as_array().unwrap() {
            // An emptyDir as the kubelet makes one: root-owned, mode 0777.
            let vol = dir.path().join("volumes").join(m["name"].as_str().unwrap());
            std::fs::create_dir_all(&vol).unwrap();
            std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o777)).unwrap();
            args.push("--mount".into());
            args.push(format!(
                "type=bind,src={},dst={},options=rbind:rw",
                vol.display(),
                m["mountPath"].as_str().unwrap()
            ));
        }
        let uid = sc["runAsUser"].as_i64().unwrap_or(0);
        let mut env =
            vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
        if uid == 1000 {
            // What the rootless image sets; Debian's rootlesskit has no vpnkit.
            env.extend(
                [
                    "HOME=/home/rootless",
                    "USER=rootless",
                    "DOCKERD_ROOTLESS_ROOTLESSKIT_NET=slirp4netns",
                ]
                .map(String::from),
            );
        }
        for e in spec["env"].as_array().into_iter().flatten() {
            env.push(format!(
                "{}={}",
                e["name"].as_str().unwrap(),
                e["value"].as_str().unwrap_or("")
            ));
        }
        for e in env {
            args.push("--env".into());
            args.push(e);
        }
        args.push("--log-uri".into());
        args.push(format!(
            "file://{}",
            dir.path().join("daemon.log").display()
        ));
        // Each container writes to its own layer over the shared root
        // filesystem, as with the kubelet's snapshots: nothing one daemon
        // writes outside its volumes (a pid file, /etc) is seen by another.
        let merged = dir.path().join("rootfs");
        for d in ["upper", "work", "rootfs"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        for (path, contents) in &pod.files {
            let file = dir.path().join("upper").join(path.trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, contents).unwrap();
        }
        if let Some(netns) = &pod.netns {
            args.push("--with-ns".into());
            args.push(format!("network:{}", netns.display()));
        }
        let mounted = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                rootfs().display(),
                dir.path().join("upper").display(),
                dir.path().join("work").display()
            ))
            .arg(&merged)
            .status()
            .expect("run mount");
        assert!(
            mounted.success(),
            "cannot mount the container's overlay root filesystem"
        );
        args.push("--rootfs".into());
        args.push(merged.display().to_string());
        args.push(id.into());
        args.extend(as_user(sc));
        args.extend(strs(&spec["command"]));
        args.extend(strs(&spec["args"]));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ctd.ctr(&argv);
        assert!(
            out.status.success(),
            "ctr run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Running {
            id: id.into(),
            dir,
            spec: spec.clone(),
            stopped: false,
        }
    }

    /// Runs the startup probe's command every second, as the kubelet does,
    /// until it passes; returns how long that took.
    pub fn wait_started(&self) -> Duration {
        let started = Instant::now();
        let probe = strs(&self.spec["startupProbe"]["exec"]["command"]);
        for attempt in 0.. {
            let mut args: Vec<String> = vec![
                "task".into(),
                "exec".into(),
                "--exec-id".into(),
                format!("probe{attempt}"),
                self.id.clone(),
            ];
            args.extend(as_user(&self.spec["securityContext"]));
            args.extend(probe.iter().cloned());
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = containerd().ctr(&argv);
            if out.status.success() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "the startup probe {probe:?} did not pass within 180 s (last: {}{}); the daemon's log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        unreachable!()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The host directory behind the pod volume `name`.
    pub fn volume(&self, name: &str) -> PathBuf {
        self.dir.path().join("volumes").join(name)
    }

    /// SIGTERM, as the kubelet sends it; the daemon must stop within `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        let ctd = containerd();
        ctd.ctr(&["task", "kill", "--signal", "SIGTERM", &self.id]);
        let started = Instant::now();
        loop {
            let out = ctd.ctr(&["task", "ls"]);
            let listing = String::from_utf8_lossy(&out.stdout).into_owned();
            let running = listing
                .lines()
                .any(|l| l.starts_with(&format!("{} ", self.id)) && l.contains("RUNNING"));
            if !running {
                break;
            }
            assert!(
                started.elapsed() < grace,
                "the daemon did not stop within {grace:?} of SIGTERM; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.stopped = true;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let ctd = containerd();
        if !self.stopped {
            ctd.ctr(&["task", "kill", "--signal", "SIGKILL", &self.id]);
            std::thread::sleep(Duration::from_millis(500));
        }
        ctd.ctr(&["task", "rm", "-f", &self.id]);
        ctd.ctr(&["container", "rm", &self.id]);
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(self.dir.path().join("rootfs"))
            .status();
    }
}

/// `runAsUser`/`runAsGroup` as a `setpriv` prefix (nothing for root).
pub fn as_user(sc: &Value) -> Vec<String> {
    let uid = sc["runAsUser"].as_i64().unwrap_or(0);
    let gid = sc["runAsGroup"].as_i64().unwrap_or(0);
    if uid == 0 && gid == 0 {
        return Vec::new();
    }
    vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".into(),
    ]
}

/// The docker CLI of the root filesystem, run on this machine as `uid` with
/// these supplementary groups (a target container that runs as non-root).
pub fn docker_as(uid: u32, groups: &[u32], socket: &Path, args: &[&str]) -> Output {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let mut cmd = Command::new("timeout");
    cmd.arg("30")
        .arg("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.arg(format!("--groups={}", groups.join(",")));
    }
    cmd.arg(rootfs().join("usr/bin/docker"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .output()
        .expect("run the docker CLI")
}
