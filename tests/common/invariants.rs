//! The invariants of docs/behaviour.md that every pod nestdock patched must
//! satisfy, checked on the patched pod itself (not on the patch): what the
//! API server and the kubelet will see.

use std::collections::HashSet;

use nestdock::config::Config;
use serde_json::Value;

pub const DAEMON: &str = "nestdock-dind";
pub const VOL_SOCKET: &str = "nestdock-docker-sock";
pub const VOL_STORAGE: &str = "nestdock-docker-storage";
pub const VOL_CERTS: &str = "nestdock-docker-certs";
pub const VOL_HOST: &str = "nestdock-host-docker";
pub const GUARD: &str = "nestdock-guard";

fn arr<'a>(v: &'a Value, key: &str) -> Vec<&'a Value> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

pub fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

pub fn env<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    arr(c, "env")
        .into_iter()
        .find(|e| s(e, "name") == name)
        .map(|e| s(e, "value"))
}

pub fn mount<'a>(c: &'a Value, volume: &str) -> Option<&'a Value> {
    arr(c, "volumeMounts")
        .into_iter()
        .find(|m| s(m, "name") == volume)
}

pub fn container<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    let spec = &pod["spec"];
    arr(spec, "initContainers")
        .into_iter()
        .chain(arr(spec, "containers"))
        .find(|c| s(c, "name") == name)
}

pub fn volume<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    arr(&pod["spec"], "volumes")
        .into_iter()
        .find(|v| s(v, "name") == name)
}

/// The guard of guarded dood: the only container with the node's socket,
/// unprivileged, its pod's uid from the Downward API, started before the
/// containers it serves (or, as a plain container, next to them).
fn check_guard(pod: &Value, config: &Config, groups: &[i64]) {
    let spec = &pod["spec"];
    let guard = container(pod, GUARD).unwrap_or_else(|| panic!("no {GUARD} container: {pod:#}"));
    let native = arr(spec, "initContainers")
        .first()
        .is_some_and(|c| s(c, "name") == GUARD);
    if native {
        assert_eq!(
            guard["restartPolicy"], "Always",
            "native sidecar restarts Always"
        );
    } else {
        assert!(guard.get("restartPolicy").is_none());
    }
    assert!(
        mount(guard, VOL_HOST).is_some(),
        "the guard mounts the node's socket"
    );
    assert!(
        mount(guard, VOL_SOCKET).is_some(),
        "the guard serves the pod's socket volume"
    );
    for c in arr(spec, "initContainers")
        .into_iter()
        .chain(arr(spec, "containers"))
    {
        if s(c, "name") != GUARD {
            assert!(
                mount(c, VOL_HOST).is_none(),
                "{} mounts the node's socket",
                s(c, "name")
            );
        }
    }
    let sc = &guard["securityContext"];
    assert!(
        sc.get("privileged").is_none_or(|p| p == false),
        "the guard is not privileged"
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    let uid = arr(guard, "env")
        .into_iter()
        .find(|e| s(e, "name") == "NESTDOCK_POD_UID")
        .expect("the guard's pod uid");
    assert_eq!(uid["valueFrom"]["fieldRef"]["fieldPath"], "metadata.uid");
    assert!(guard["startupProbe"]["exec"]["command"].is_array());
    assert!(
        groups.contains(&config.socket_group),
        "supplementalGroups lacks {}",
        config.socket_group
    );
}

/// What the API server's validation checks that a patch could break.
pub fn check_valid(pod: &Value) {
    let spec = &pod["spec"];
    let mut names = HashSet::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in arr(spec, list) {
            assert!(
                names.insert(s(c, "name").to_string()),
                "duplicate container name {:?}",
                s(c, "name")
            );
        }
    }
    let mut vols = HashSet::new();
    for v in arr(spec, "volumes") {
        assert!(
            vols.insert(s(v, "name").to_string()),
            "duplicate volume {:?}",
            s(v, "name")
        );
    }
    for list in ["initContainers", "containers"] {
        for c in arr(spec, list) {
            let mut paths = HashSet::new();
            for m in arr(c, "volumeMounts") {
                assert!(
                    vols.contains(s(m, "name")),
                    "container {} mounts missing volume {}",
                    s(c, "name"),
                    s(m, "name")
                );
                assert!(
                    paths.insert(s(m, "mountPath").trim_end_matches('/').to_string()),
                    "container {} mounts {} twice",
                    s(c, "name"),
                    s(m, "mountPath")
                );
            }
            let mut env_names = HashSet::new();
            for e in arr(c, "env") {
                assert!(
                    env_names.insert(s(e, "name")),
                    "container {} sets env {} twice",
                    s(c, "name"),
                    s(e, "name")
                );
            }
        }
    }
}

/// The containers that got the daemon: what the `containers` annotation
/// names, else every container the mode serves.
fn targets(pod: &Value, native: bool) -> Vec<&Value> {
    let spec = &pod["spec"];
    let subset: Option<Vec<&str>> =
        annotation(pod, "nestdock.io/containers").map(|v| v.split(',').map(str::trim).collect());
    let init_ok = native;
    arr(spec, "initContainers")
        .into_iter()
        .filter(|_| init_ok)
        .chain(arr(spec, "containers"))
        .filter(|c| s(c, "name") != DAEMON && s(c, "name") != GUARD)
        .filter(|c| {
            subset
                .as_ref()
                .is_none_or(|names| names.contains(&s(c, "name")))
        })
        .collect()
}

/// Asserts every invariant of docs/behaviour.md on a pod that nestdock patched.
/// Without the original, an env var a target already set is only required to exist.
/// Testcontainers' override of the socket path as the daemon sees it.
const TC_OVERRIDE: &str = "TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE";

/// The daemon image's system paths (docs/behaviour.md, *Same paths for bind mounts*).
const SYSTEM: [&str; 9] = [
    "/bin",
    "/sbin",
    "/usr",
    "/etc",
    "/root",
    "/proc",
    "/sys",
    "/dev",
    "/home/rootless",
];

/// A path as the kubelet resolves it, written here independently of the
/// product: `//`, `.`, `..` and a trailing `/` removed.
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            x => parts.push(x),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `p` is `base` or below it.
fn within(p: &str, base: &str) -> bool {
    p == base || p.starts_with(&format!("{}/", base.trim_end_matches('/')))
}

pub fn check(pod: &Value, config: &Config) {
    check_against(None, pod, config)
}

/// [`check`], knowing the pod as it was sent: an env var the user had set
/// must have kept the user's value, and every other one has nestdock's.
pub fn check_against(original: Option<&Value>, pod: &Value, config: &Config) {
    check_valid(pod);
    let mode = annotation(pod, "nestdock.io/injected")
        .unwrap_or_else(|| panic!("patched pod lacks nestdock.io/injected: {pod:#}"));
    let socket_dir = config.socket_dir.as_str();
    let socket = config.socket_path();
    let spec = &pod["spec"];
    let groups: Vec<i64> = arr(&spec["securityContext"], "supplementalGroups")
        .into_iter()
        .filter_map(Value::as_i64)
        .collect();
    // The value a target must have for `k`: the user's own if they set it
    // (or whatever it has, when the original is unknown), else nestdock's.
    let user_env = |c: &Value, k: &str| match original {
        Some(o) => container(o, s(c, "name")).and_then(|o| env(o, k).map(str::to_string)),
        None => env(c, k).map(str::to_string),
    };

    match mode {
        "dood" => {
            let v = volume(pod, VOL_HOST).expect("dood volume");
            assert_eq!(v["hostPath"]["type"], "Socket");
            assert_eq!(v["hostPath"]["path"], config.dood.host_socket.as_str());
            assert!(container(pod, DAEMON).is_none(), "dood adds no daemon");
            // Init containers are targets unless the guard is a plain
            // container (it does not exist yet when they run).
            let native = !config.dood.guard.enabled
                || arr(spec, "initContainers")
                    .first()
                    .is_some_and(|c| s(c, "name") == GUARD);
            let ts = targets(pod, native);
            assert!(!ts.is_empty(), "no target container");
            if config.dood.guard.enabled {
                check_guard(pod, config, &groups);
            }
            for t in ts {
                let want = user_env(t, "DOCKER_HOST").unwrap_or(format!("unix://{socket}"));
                assert_eq!(env(t, "DOCKER_HOST"), Some(want.as_str()));
                if config.dood.guard.enabled {
                    // The targets reach the guard's socket on the pod's
                    // socket volume and never see the node's.
                    assert!(
                        mount(t, VOL_HOST).is_none(),
                        "{} mounts the node's socket",
                        s(t, "name")
                    );
                    let m = mount(t, VOL_SOCKET)
                        .unwrap_or_else(|| panic!("{} lacks the socket volume", s(t, "name")));
                    assert_eq!(s(m, "mountPath"), socket_dir);
                    assert_eq!(env(t, TC_OVERRIDE), user_env(t, TC_OVERRIDE).as_deref());
                } else {
                    let m = mount(t, VOL_HOST)
                        .unwrap_or_else(|| panic!("{} lacks the socket", s(t, "name")));
                    assert_eq!(s(m, "mountPath"), socket);
                    // Helpers that bind-mount the socket (Ryuk) need the path
                    // the node's daemon sees, when it differs from the targets'.
                    let override_wanted = (config.dood.host_socket != socket)
                        .then(|| config.dood.host_socket.clone());
                    let want = user_env(t, TC_OVERRIDE).or(override_wanted);
                    assert_eq!(env(t, TC_OVERRIDE), want.as_deref(), "{}", s(t, "name"));
                }
            }
            if let Some(g) = config
                .dood
                .socket_group
                .filter(|_| !config.dood.guard.enabled)
            {
                assert!(groups.contains(&g), "supplementalGroups lacks {g}");
            }
            for (k, v) in &config.dood.node_selector {
                assert!(
                    spec["nodeSelector"].get(k).is_some(),
                    "nodeSelector lacks {k}={v}"
                );
            }
        }
        "dind" | "dind-rootless" => {
            let rootless = mode == "dind-rootless";
            let tls = annotation(pod, "nestdock.io/tls") == Some("true");
            let inits = arr(spec, "initContainers");
            let native = inits.first().is_some_and(|c| s(c, "name") == DAEMON);
            let daemon = container(pod, DAEMON).expect("daemon container");
            if native {
                assert_eq!(
                    daemon["restartPolicy"], "Always",
                    "native sidecar restarts Always"
                );
            } else {
                assert!(
                    arr(spec, "containers")
                        .iter()
                        .any(|c| s(c, "name") == DAEMON),
                    "daemon must be the first init container or an app container"
                );
                assert!(daemon.get("restartPolicy").is_none());
            }
            let probe = &daemon["startupProbe"];
            assert_eq!(probe["periodSeconds"], 1, "startup probe period 1 s");
            assert!(
                probe["exec"]["command"].is_array(),
                "startup probe runs a command"
            );
            let sc = &daemon["securityContext"];
            assert_eq!(sc["privileged"], true);
            if rootless {
                assert_eq!(sc["runAsUser"], 1000);
                assert_eq!(sc["runAsGroup"], 1000);
            } else {
                assert_eq!(sc["runAsUser"], 0);
                assert_eq!(
                    sc["runAsGroup"], 0,
                    "the daemon does not inherit the pod's group"
                );
                assert_eq!(sc["runAsNonRoot"], false);
            }
            let cmd: Vec<&str> = arr(daemon, "command")
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
            let args: Vec<&str> = arr(daemon, "args")
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
            let script = cmd.join(" ");
            assert!(
                script.contains("dockerd-entrypoint.sh"),
                "daemon starts through the entrypoint"
            );
            assert!(
                script.contains("/sys/class/net/eth0/mtu"),
                "MTU follows the pod interface"
            );
            assert!(
                script.contains("--default-network-opt"),
                "MTU applies to user networks"
            );
            assert!(env(daemon, "NESTDOCK_MTU").is_some());

            // Storage: a volume, never the overlay filesystem.
            let storage_path = if rootless {
                "/home/rootless/.local/share/docker"
            } else {
                "/var/lib/docker"
            };
            let sm = mount(daemon, VOL_STORAGE).expect("storage mount");
            assert_eq!(s(sm, "mountPath"), storage_path);
            if rootless {
                // dockerd chmods its data root, which the user namespace
                // cannot do to the emptyDir's root-owned mount point.
                let data_root = args
                    .iter()
                    .find_map(|a| a.strip_prefix("--data-root="))
                    .expect("rootless daemon has --data-root");
                assert!(
                    data_root.starts_with(&format!("{storage_path}/")),
                    "rootless data root {data_root} must lie below {storage_path}"
                );
                assert!(
                    script.contains("DOCKERD_ROOTLESS_ROOTLESSKIT_MTU"),
                    "rootlesskit's MTU follows the daemon's"
                );
            }
            let sv = volume(pod, VOL_STORAGE).expect("storage volume");
            assert!(sv.get("emptyDir").is_some() || sv.get("ephemeral").is_some());

            let ts = targets(pod, native);
            assert!(!ts.is_empty(), "no target container");
            if tls {
                assert_eq!(env(daemon, "DOCKER_TLS_CERTDIR"), Some("/certs"));
                assert_eq!(
                    s(mount(daemon, VOL_CERTS).expect("certs"), "mountPath"),
                    "/certs"
                );
                assert!(
                    mount(daemon, VOL_SOCKET).is_none(),
                    "TLS mode shares no socket"
                );
                for t in &ts {
                    let m = mount(t, VOL_CERTS).expect("client certs mount");
                    assert_eq!(s(m, "mountPath"), "/certs/client");
                    assert_eq!(s(m, "subPath"), "client");
                    assert_eq!(m["readOnly"], true);
                    for (k, v) in [
                        ("DOCKER_HOST", "tcp://localhost:2376"),
                        ("DOCKER_TLS_VERIFY", "1"),
                        ("DOCKER_CERT_PATH", "/certs/client"),
                    ] {
                        let want = user_env(t, k).unwrap_or(v.to_string());
                        assert_eq!(env(t, k), Some(want.as_str()), "{} {k}", s(t, "name"));
                    }
                }
            } else {
                // Socket: DOCKER_HOST, the listener and the mounts agree on one file.
                assert!(!script.contains("tcp://") && !args.iter().any(|a| a.contains("tcp://")));
                let dm = mount(daemon, VOL_SOCKET).expect("daemon socket mount");
                let listen = format!("--host=unix://{}/docker.sock", s(dm, "mountPath"));
                assert!(
                    args.contains(&listen.as_str()),
                    "daemon listens at {listen}: {args:?}"
                );
                // Rootless: gid 0 in the user namespace is 1000 outside.
                let (gid, flag) = if rootless {
                    (1000, "--group=0".to_string())
                } else {
                    (
                        config.socket_group,
                        format!("--group={}", config.socket_group),
                    )
                };
                assert!(args.contains(&flag.as_str()), "{flag} in {args:?}");
                assert!(groups.contains(&gid), "supplementalGroups lacks {gid}");
                let override_wanted = rootless.then(|| "/run/user/1000/docker.sock".to_string());
                for t in &ts {
                    let want = user_env(t, TC_OVERRIDE).or(override_wanted.clone());
                    assert_eq!(env(t, TC_OVERRIDE), want.as_deref(), "{}", s(t, "name"));
                }
                for t in &ts {
                    let m = mount(t, VOL_SOCKET)
                        .unwrap_or_else(|| panic!("{} lacks socket", s(t, "name")));
                    assert_eq!(s(m, "mountPath"), socket_dir);
                    let want = user_env(t, "DOCKER_HOST").unwrap_or(format!("unix://{socket}"));
                    assert_eq!(env(t, "DOCKER_HOST"), Some(want.as_str()));
                }
            }
            // Mirrored mounts: what the daemon mounts besides its own comes
            // from a target, same volume, path and subPath.
            for m in arr(daemon, "volumeMounts") {
                let name = s(m, "name");
                if [VOL_SOCKET, VOL_STORAGE, VOL_CERTS].contains(&name) {
                    continue;
                }
                assert!(
                    ts.iter().any(|t| arr(t, "volumeMounts")
                        .iter()
                        .any(|tm| s(tm, "name") == name
                            && clean(s(tm, "mountPath")) == clean(s(m, "mountPath"))
                            && s(tm, "subPath") == s(m, "subPath"))),
                    "daemon mount {m} mirrors no target mount"
                );
                // Never at, below or above what the privileged daemon runs.
                let p = clean(s(m, "mountPath"));
                let first = p.trim_start_matches('/').split('/').next().unwrap_or("");
                assert!(
                    p != "/"
                        && !first.starts_with("lib")
                        && !SYSTEM.iter().any(|sys| within(&p, sys) || within(sys, &p)),
                    "mirrored mount {m} reaches a daemon system path"
                );
            }
            if config.mirror_mounts {
                for t in &ts {
                    for tm in arr(t, "volumeMounts") {
                        let p = clean(s(tm, "mountPath"));
                        let p = p.as_str();
                        if SYSTEM.iter().any(|sys| within(p, sys) || within(sys, p)) {
                            continue;
                        }
                        let skip = [VOL_SOCKET, VOL_CERTS].contains(&s(tm, "name"))
                            || p.starts_with("/var/run")
                            || p.starts_with("/run")
                            || tm.get("subPathExpr").is_some()
                            || s(tm, "name").starts_with("kube-api-access-");
                        if !skip
                            && !["/", "/var", "/var/lib", "/etc", "/usr", "/certs"].contains(&p)
                            && !p.starts_with("/var/lib/docker")
                            && !p.starts_with("/certs/")
                            && !p.starts_with("/home")
                            && !p.starts_with("/proc")
                            && !p.starts_with("/sys")
                            && !p.starts_with("/dev")
                            && !p.starts_with("/bin")
                            && !p.starts_with("/sbin")
                            && !p.starts_with("/lib")
                            && !p.starts_with("/usr")
                        {
                            assert!(
                                arr(daemon, "volumeMounts")
                                    .iter()
                                    .any(|dm| clean(s(dm, "mountPath")) == p),
                                "target mount {tm} is not mirrored into the daemon"
                            );
                        }
                    }
                }
            }
        }
        other => panic!("unexpected injected mode {other}"),
    }
}
