//! nestdock's daemon container, run for real: the container the engine
//! writes into a pod (command, arguments, environment, security context,
//! volume mounts, startup probe) is started by Debian's containerd and runc
//! from a Debian trixie root filesystem with dockerd 26 (scripts/
//! build-daemon-rootfs.sh), the way the kubelet would start it, and real
//! docker clients talk to it. This is where the shape tests cannot see:
//! whether dockerd starts with our flags, whether its socket lets a non-root
//! target in, whether the MTU arrives, whether SIGTERM stops it.
//!
//! How the kubelet is emulated (and where this differs from a node): each
//! volume is a fresh root-owned 0777 directory bind-mounted at the mount's
//! path, as the kubelet makes an emptyDir; `privileged: true` is `ctr run
//! --privileged` with privilege escalation allowed and the cgroup hierarchy
//! mounted (what containerd's CRI plugin adds for a pod container);
//! `runAsUser`/`runAsGroup` are applied with `setpriv`, since `ctr` 1.6 has no
//! user flag; the startup probe's command is run with `ctr task exec`, as the
//! kubelet's exec probe does, once per second. The container gets a network
//! namespace of its own (loopback only), so the inner daemon's bridge and
//! iptables rules never touch this machine's. Rootless needs `/dev/net/tun`
//! usable by uid 1000, as it is on a node with udev; this machine has no
//! udev, so the test makes it 0666 first.
//!
//! The set-up is installed by the script (containerd, runc and debootstrap
//! from Debian); when it cannot be built or started, the tests fail saying so.

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nestdock::config::Config;
use nestdock::engine::{mutate, Context, Effect, NamespacePolicy};
use serde_json::{json, Value};

/// The daemon root filesystem, built once per machine by the script.
fn rootfs() -> &'static Path {
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
struct Containerd {
    socket: PathBuf,
    _dir: tempfile::TempDir,
    /// Never waited for: it lives as long as the test process.
    _process: std::process::Child,
    /// Closed when the process exits, which stops containerd.
    _keeper: std::process::ChildStdin,
}

fn containerd() -> &'static Containerd {
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
    fn ctr(&self, args: &[&str]) -> Output {
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
fn daemon_of(annotations: Value) -> Value {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "build", "namespace": "ci", "annotations": annotations},
        "spec": {"containers": [{"name": "build", "image": "docker:28-cli"}]},
    });
    let config = Config::default();
    let d = mutate(
        &pod,
        &Context {
            config: &config,
            namespace: NamespacePolicy::Off,
            native_sidecars: true,
        },
    );
    let Effect::Patched(patch) = d.effect else {
        panic!("not injected: {:?}", d.effect);
    };
    let patched = common::apply_patch(&pod, &serde_json::to_value(&patch).unwrap());
    patched["spec"]["initContainers"][0].clone()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// The daemon container running under containerd, stopped and removed when
/// dropped.
struct Running {
    id: String,
    dir: tempfile::TempDir,
    spec: Value,
    stopped: bool,
}

impl Running {
    /// Starts `spec` (a container of the pod) as the kubelet would.
    fn start(name: &str, spec: &Value) -> Running {
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
    fn wait_started(&self) -> Duration {
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

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The host directory behind the pod volume `name`.
    fn volume(&self, name: &str) -> PathBuf {
        self.dir.path().join("volumes").join(name)
    }

    /// SIGTERM, as the kubelet sends it; the daemon must stop within `grace`.
    fn terminate(&mut self, grace: Duration) {
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
fn as_user(sc: &Value) -> Vec<String> {
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
fn docker_as(uid: u32, groups: &[u32], socket: &Path, args: &[&str]) -> Output {
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

#[test]
fn dind_daemon_starts_serves_its_group_and_carries_the_mtu() {
    let daemon = daemon_of(json!({"nestdock.io/mode": "dind", "nestdock.io/mtu": "1400"}));
    let mut run = Running::start("nd-dind", &daemon);
    let took = run.wait_started();
    eprintln!("dind: startup probe passed after {took:?}");
    let socket = run.volume("nestdock-docker-sock").join("docker.sock");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().gid(),
        2375,
        "the socket's group"
    );
    // A non-root target with the injected supplementary group gets in...
    let ok = docker_as(
        2000,
        &[2375],
        &socket,
        &["version", "--format", "{{.Server.Version}}"],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // ...and without it does not (the group is what lets it in).
    let refused = docker_as(2000, &[], &socket, &["version"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("permission denied"),
        "{refused:?}"
    );
    // The MTU reaches the default bridge and user-defined networks.
    let bridge = docker_as(
        0,
        &[],
        &socket,
        &[
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{json .Options}}",
        ],
    );
    assert!(
        String::from_utf8_lossy(&bridge.stdout)
            .contains("\"com.docker.network.driver.mtu\":\"1400\""),
        "{bridge:?}"
    );
    let created = docker_as(0, &[], &socket, &["network", "create", "builds"]);
    assert!(created.status.success(), "{created:?}");
    let user_net = docker_as(
        0,
        &[],
        &socket,
        &[
            "network",
            "inspect",
            "builds",
            "--format",
            "{{json .Options}}",
        ],
    );
    assert!(
        String::from_utf8_lossy(&user_net.stdout).contains("1400"),
        "user-defined network options: {user_net:?}"
    );
    run.terminate(Duration::from_secs(30));
    assert!(
        run.log().contains("Daemon shutdown complete")
            || run
                .log()
                .contains("stopping event stream following graceful shutdown"),
        "dockerd did not shut down cleanly:\n{}",
        run.log()
    );
}

#[test]
fn rootless_daemon_starts_and_serves_a_non_root_target() {
    // What udev does on a node: /dev/net/tun usable by the rootless user.
    std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666))
        .expect("make /dev/net/tun 0666 (the tests run as root)");
    let daemon = daemon_of(json!({"nestdock.io/mode": "dind-rootless", "nestdock.io/mtu": "1400"}));
    let mut run = Running::start("nd-rootless", &daemon);
    let took = run.wait_started();
    eprintln!("dind-rootless: startup probe passed after {took:?}");
    // The data root is a directory the daemon made below the mount point.
    let storage = run.volume("nestdock-docker-storage");
    assert_eq!(
        std::fs::metadata(&storage).unwrap().uid(),
        0,
        "the kubelet's emptyDir stays root's"
    );
    assert_eq!(std::fs::metadata(storage.join("data")).unwrap().uid(), 1000);
    // The socket belongs to the daemon's group, 1000 outside its namespace:
    // a target running as uid 2000 with supplementalGroups [1000] gets in.
    let socket = run.volume("nestdock-docker-sock").join("docker.sock");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().gid(),
        1000,
        "the socket's group"
    );
    let ok = docker_as(
        2000,
        &[1000],
        &socket,
        &["info", "--format", "{{.SecurityOptions}}"],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("rootless"),
        "{ok:?}"
    );
    // rootlesskit's own interface got the daemon's MTU (dockerd's own
    // --mtu is on the same line, so the flag must come before the script).
    let log = run.log();
    let rootlesskit = log
        .lines()
        .find(|l| l.contains("exec rootlesskit"))
        .unwrap_or_else(|| panic!("rootlesskit was not started:\n{log}"));
    let own_flags = &rootlesskit[..rootlesskit
        .find("dockerd-rootless.sh")
        .unwrap_or(rootlesskit.len())];
    assert!(
        own_flags.contains("--mtu=1400"),
        "rootlesskit's MTU: {rootlesskit}"
    );
    run.terminate(Duration::from_secs(30));
}

#[test]
fn tls_daemon_serves_only_holders_of_the_client_certificate() {
    let daemon = daemon_of(json!({"nestdock.io/mode": "dind", "nestdock.io/tls": "true"}));
    let mut run = Running::start("nd-tls", &daemon);
    let took = run.wait_started();
    eprintln!("dind with TLS: startup probe passed after {took:?}");
    let client = run.volume("nestdock-docker-certs").join("client");
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(client.join(f).exists(), "client/{f} missing");
    }
    // Inside the pod's network namespace: with the certificate it answers,
    // without it the daemon refuses.
    let exec = |id: &str, cmd: &[&str]| {
        let mut args = vec!["task", "exec", "--exec-id", id, run.id.as_str()];
        args.extend_from_slice(cmd);
        containerd().ctr(&args)
    };
    let with = exec(
        "with-cert",
        &[
            "docker",
            "--host=tcp://localhost:2376",
            "--tlsverify",
            "--tlscacert=/certs/client/ca.pem",
            "--tlscert=/certs/client/cert.pem",
            "--tlskey=/certs/client/key.pem",
            "version",
        ],
    );
    assert!(with.status.success(), "{with:?}");
    let without = exec(
        "without-cert",
        &[
            "docker",
            "--host=tcp://localhost:2376",
            "--tlsverify",
            "--tlscacert=/certs/client/ca.pem",
            "version",
        ],
    );
    assert!(
        !without.status.success(),
        "answered without a client certificate: {without:?}"
    );
    run.terminate(Duration::from_secs(30));
}
