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
use std::time::Duration;

use serde_json::json;

use common::daemon::{containerd, daemon_of, docker_as, Running};

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
