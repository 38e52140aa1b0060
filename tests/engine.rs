//! The mutation engine through its public function, the way the webhook and
//! `inject` call it: every patch is applied to the pod as sent (no implicit
//! parents), the result is checked against docs/behaviour.md, and a second pass
//! over the patched pod must change nothing.

mod common;

use common::invariants::{self, annotation, container, env, mount, volume};
use nestdock::config::Config;
use nestdock::engine::{mutate, Context, Decision, Effect, NamespacePolicy};
use serde_json::{json, Value};

/// A pod as the API server sends it to a mutating webhook: the ServiceAccount
/// plugin has already added the token volume and its mounts.
fn pod(annotations: Value, mut spec: Value) -> Value {
    let token = json!({"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true});
    for list in ["initContainers", "containers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                let mounts = c
                    .as_object_mut()
                    .unwrap()
                    .entry("volumeMounts")
                    .or_insert(json!([]));
                mounts.as_array_mut().unwrap().push(token.clone());
            }
        }
    }
    let vols = spec
        .as_object_mut()
        .unwrap()
        .entry("volumes")
        .or_insert(json!([]));
    vols.as_array_mut().unwrap().push(json!({"name": "kube-api-access-x7k2p", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}));
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "build-", "namespace": "ci", "annotations": annotations},
        "spec": spec,
    })
}

fn app(name: &str) -> Value {
    json!({"name": name, "image": "alpine:3.20", "command": ["sh", "-c", "docker info"]})
}

fn ctx(config: &Config) -> Context<'_> {
    Context {
        config,
        namespace: NamespacePolicy::Off,
        native_sidecars: true,
    }
}

fn decide(p: &Value, config: &Config) -> Decision {
    mutate(p, &ctx(config))
}

/// Asserts the pod is injected; applies the patch; checks the invariants and
/// that a second pass changes nothing. Returns the patched pod and warnings.
fn injected(p: &Value, config: &Config) -> (Value, Vec<String>) {
    let d = decide(p, config);
    let Effect::Patched(patch) = &d.effect else {
        panic!("expected a patch, got {:?}", d.effect);
    };
    for w in &d.warnings {
        assert!(w.len() < 120, "warning over 120 characters: {w}");
    }
    let patched = common::apply_patch(p, &serde_json::to_value(patch).unwrap());
    invariants::check_against(Some(p), &patched, config);
    let again = decide(&patched, config);
    assert_eq!(
        again.effect,
        Effect::Unchanged,
        "second pass must change nothing"
    );
    (patched, d.warnings)
}

fn denied(p: &Value, config: &Config) -> (u16, String) {
    match decide(p, config).effect {
        Effect::Denied(d) => (d.code, d.message()),
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn plain_pod_gets_a_native_dind_sidecar() {
    let p = pod(
        json!({"nestdock.io/mode": "dind"}),
        json!({"containers": [app("build")]}),
    );
    let (out, warnings) = injected(&p, &Config::default());
    assert!(warnings.is_empty(), "{warnings:?}");
    let daemon = &out["spec"]["initContainers"][0];
    assert_eq!(daemon["name"], "nestdock-dind");
    assert_eq!(daemon["image"], "docker:28-dind");
    assert_eq!(
        env(container(&out, "build").unwrap(), "DOCKER_HOST"),
        Some("unix:///var/run/docker.sock")
    );
    assert_eq!(
        out["spec"]["securityContext"]["supplementalGroups"],
        json!([2375])
    );
    assert_eq!(annotation(&out, "nestdock.io/injected"), Some("dind"));
    // The service-account token is not mirrored into the daemon.
    assert!(mount(daemon, "kube-api-access-x7k2p").is_none());
    assert_eq!(
        volume(&out, "nestdock-docker-storage").unwrap()["emptyDir"],
        json!({})
    );
}

#[test]
fn pod_without_volumes_init_containers_env_or_annotations_map() {
    // Nothing to append to: every list and the annotations map must be added whole.
    let p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bare", "namespace": "ci"},
        "spec": {"containers": [{"name": "c", "image": "alpine"}]},
    });
    let cfg = Config {
        default_mode: nestdock::mode::Mode::Dind,
        ..Config::default()
    };
    let (out, _) = injected(&p, &cfg);
    assert_eq!(out["spec"]["initContainers"].as_array().unwrap().len(), 1);
    assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 2);
}

#[test]
fn null_lists_are_replaced_not_appended_to() {
    let p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "nulls", "annotations": {"nestdock.io/mode": "dind"}},
        "spec": {"containers": [{"name": "c", "image": "alpine", "env": null, "volumeMounts": null}],
                 "volumes": null, "initContainers": null, "securityContext": null},
    });
    injected(&p, &Config::default());
}

#[test]
fn init_containers_keep_their_order_after_the_daemon() {
    let p = pod(
        json!({"nestdock.io/mode": "dind"}),
        json!({"initContainers": [app("fetch"), app("prepare")], "containers": [app("build")]}),
    );
    let (out, _) = injected(&p, &Config::default());
    let names: Vec<&str> = out["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["nestdock-dind", "fetch", "prepare"]);
    // Init containers after the daemon are targets in native mode.
    for n in ["fetch", "prepare"] {
        assert!(mount(container(&out, n).unwrap(), "nestdock-docker-sock").is_some());
    }
}

#[test]
fn job_pod_uses_the_native_sidecar_so_the_job_completes() {
    let mut p = pod(
        json!({"nestdock.io/mode": "dind"}),
        json!({"restartPolicy": "Never", "containers": [app("build")]}),
    );
    p["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "build", "uid": "6f1c", "controller": true}]);
    let (out, _) = injected(&p, &Config::default());
    assert_eq!(out["spec"]["initContainers"][0]["restartPolicy"], "Always");
    assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 1);
}

#[test]
fn user_docker_host_is_kept_with_a_warning() {
    let mut c = app("build");
    c["env"] = json!([{"name": "DOCKER_HOST", "value": "tcp://docker:2375"}]);
    let p = pod(
        json!({"nestdock.io/mode": "dind"}),
        json!({"containers": [c]}),
    );
    let (out, warnings) = injected(&p, &Config::default());
    assert_eq!(
        env(container(&out, "build").unwrap(), "DOCKER_HOST"),
        Some("tcp://docker:2375")
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("build") && w.contains("DOCKER_HOST")),
        "{warnings:?}"
    );
}

#[test]
fn name_clashes_are_denied_naming_the_name() {
    let p = pod(
        json!({"nestdock.io/mode": "dind"}),
        json!({"containers": [app("nestdock-dind")]}),
    );
    let (code, msg) = denied(&p, &Config::default());
    assert_eq!(code, 400);
    assert!(msg.contains("nestdock-dind"), "{msg}");

    let mut p = pod(
        json!({"nestdock.io/mode": "dind"}),
        json!({"containers": [app("build")]}),
    );
    p["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "nestdock-docker-storage", "emptyDir": {}}));
    let (_, msg) = denied(&p, &Config::default());
    assert!(msg.contains("nestdock-docker-storage"), "{msg}");

    let mut p = pod(
        json!({"nestdock.io/mode": "dind"}),
        json!({"containers": [app("build")]}),
    );
    p["spec"]["ephemeralContainers"] = json!([{"name": "nestdock-dind", "image": "busybox"}]);
    let (_, msg) = denied(&p, &Config::default());
    assert!(msg.contains("ephemeralContainers"), "{msg}");
}

/// A container that names one of nestdock's volumes in its own mounts would
/// get it once the webhook adds it: in dood, the node's socket, past the
/// guard. Denied in every mode that adds the volume.
#[test]
fn mounts_of_the_volumes_nestdock_adds_are_denied() {
    for (mode, volume, list) in [
        ("dood", "nestdock-host-docker", "containers"),
        ("dood", "nestdock-host-docker", "initContainers"),
        ("dind", "nestdock-docker-storage", "containers"),
        ("dind", "nestdock-docker-sock", "initContainers"),
    ] {
        let mut sneaky = app("sneaky");
        sneaky["volumeMounts"] = json!([{"name": volume, "mountPath": "/host"}]);
        let mut spec = json!({"containers": [app("build")]});
        match spec[list].as_array_mut() {
            Some(l) => l.push(sneaky),
            None => spec[list] = json!([sneaky]),
        }
        let p = pod(json!({"nestdock.io/mode": mode}), spec);
        let mut cfg = Config::default();
        cfg.dood.allow_without_namespace_policy = true;
        let (code, msg) = denied(&p, &cfg);
        assert_eq!(code, 400, "{mode} {volume}");
        assert!(
            msg.contains(&format!(
                "container sneaky (spec.{list}) mounts volume {volume}"
            )),
            "{msg}"
        );
    }
}

#[test]
fn containers_subset_gets_the_daemon_only() {
    let p = pod(
        json!({"nestdock.io/mode": "dind", "nestdock.io/containers": " build "}),
        json!({"containers": [app("build"), app("sidecar-proxy")]}),
    );
    let (out, _) = injected(&p, &Config::default());
    assert!(env(container(&out, "sidecar-proxy").unwrap(), "DOCKER_HOST").is_none());
    assert!(env(container(&out, "build").unwrap(), "DOCKER_HOST").is_some());

    let p = pod(
        json!({"nestdock.io/mode": "dind", "nestdock.io/containers": "nope"}),
        json!({"containers": [app("build")]}),
    );
    let (code, msg) = denied(&p, &Config::default());
    assert_eq!(code, 400);
    assert!(msg.contains("\"nope\"") && msg.contains("build"), "{msg}");
}

#[test]
fn mount_at_the_socket_directory_is_denied_unless_left_out() {
    let mut c = app("build");
    c["volumeMounts"] = json!([{"name": "run", "mountPath": "/var/run"}]);
    let spec =
        json!({"containers": [c, app("test")], "volumes": [{"name": "run", "emptyDir": {}}]});
    let p = pod(json!({"nestdock.io/mode": "dind"}), spec.clone());
    let (code, msg) = denied(&p, &Config::default());
    assert_eq!(code, 400);
    assert!(msg.contains("build") && msg.contains("/var/run"), "{msg}");
    let p = pod(
        json!({"nestdock.io/mode": "dind", "nestdock.io/containers": "test"}),
        spec,
    );
    injected(&p, &Config::default());
}

#[test]
fn rootless_uses_its_own_image_paths_and_group() {
    let p = pod(
        json!({"nestdock.io/mode": "dind-rootless"}),
        json!({"containers": [app("build")]}),
    );
    let (out, _) = injected(&p, &Config::default());
    let daemon = container(&out, "nestdock-dind").unwrap();
    assert_eq!(daemon["image"], "docker:28-dind-rootless");
    assert_eq!(
        mount(daemon, "nestdock-docker-sock").unwrap()["mountPath"],
        "/run/user/1000"
    );
    assert_eq!(
        out["spec"]["securityContext"]["supplementalGroups"],
        json!([1000])
    );
}

#[test]
fn guarded_dood_gives_the_node_socket_to_the_guard_alone() {
    let mut cfg = Config::default();
    cfg.dood.allow_without_namespace_policy = true;
    cfg.dood
        .node_selector
        .insert("nestdock.io/docker".into(), "true".into());
    let mut build = app("build");
    build["volumeMounts"] = json!([{"name": "src", "mountPath": "/src"}]);
    let p = pod(
        json!({"nestdock.io/mode": "dood"}),
        json!({
            "initContainers": [app("warm")],
            "containers": [build],
            "volumes": [{"name": "src", "emptyDir": {}}],
        }),
    );
    let (out, _) = injected(&p, &cfg);
    // The guard is the first init container, so every later one is served.
    let guard = &out["spec"]["initContainers"][0];
    assert_eq!(guard["name"], "nestdock-guard", "{out:#}");
    assert_eq!(guard["image"], nestdock::config::DEFAULT_GUARD_IMAGE);
    assert!(mount(guard, "nestdock-host-docker").is_some());
    // It sees the targets' emptyDirs, to check what is bound and to make a
    // missing -v directory.
    let src = mount(guard, "src").expect("the guard sees the src emptyDir");
    assert_eq!(src["mountPath"], "/run/nestdock/volumes/src");
    // And has a volume of its own, which no target mounts: the socket that
    // binds of the pod's socket get.
    let own = mount(guard, "nestdock-guard-socket").expect("the guard's own socket volume");
    assert_eq!(
        own["mountPath"],
        "/run/nestdock/volumes/nestdock-guard-socket"
    );
    for c in out["spec"]["containers"].as_array().unwrap() {
        assert!(mount(c, "nestdock-guard-socket").is_none(), "{c}");
    }
    // And knows where the targets mount them (same paths for docker run -v),
    // the socket volume among them (a bind of the socket reaches the guard).
    let args: Vec<&str> = guard["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--mount=/src=src"), "{args:?}");
    assert!(
        args.contains(&"--bind-socket-volume=nestdock-guard-socket"),
        "{args:?}"
    );
    assert!(
        args.contains(&"--mount=/var/run=nestdock-docker-sock"),
        "{args:?}"
    );
    for name in ["warm", "build"] {
        let c = container(&out, name).unwrap();
        assert!(mount(c, "nestdock-host-docker").is_none(), "{name}");
        assert!(mount(c, "nestdock-docker-sock").is_some(), "{name}");
    }
    assert_eq!(out["spec"]["nodeSelector"]["nestdock.io/docker"], "true");
    assert!(!out.to_string().contains("privileged"));
    // By default the pod's siblings stay in dockerd's cgroup parent.
    assert!(
        !args.iter().any(|a| a.starts_with("--pod-cgroup")),
        "{args:?}"
    );
    // And random host ports only.
    assert!(
        !args.iter().any(|a| a.starts_with("--host-ports")),
        "{args:?}"
    );
    // A guard image of the platform's choosing.
    cfg.dood.guard.image = Some("registry.example/nestdock:1.2".into());
    // Fixed host ports in the platform's ranges, one flag each.
    cfg.dood.guard.host_ports = vec!["8000-8999".into(), "5432".into()];
    // And the pod's cgroup as its siblings' parent (the guard finds it).
    cfg.dood.guard.cgroup_parent = nestdock::config::CgroupParent::Pod;
    let (out, _) = injected(&p, &cfg);
    let guard = &out["spec"]["initContainers"][0];
    assert_eq!(guard["image"], "registry.example/nestdock:1.2");
    assert!(
        guard["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--pod-cgroup=auto")),
        "{guard}"
    );
    let args = guard["args"].as_array().unwrap();
    assert!(
        args.contains(&json!("--host-ports=8000-8999"))
            && args.contains(&json!("--host-ports=5432")),
        "{guard}"
    );
}

#[test]
fn guarded_dood_as_a_plain_container_serves_app_containers_only() {
    let mut cfg = Config::default();
    cfg.dood.allow_without_namespace_policy = true;
    let p = pod(
        json!({"nestdock.io/mode": "dood", "nestdock.io/sidecar": "container"}),
        json!({"initContainers": [app("warm")], "containers": [app("build")]}),
    );
    let (out, warnings) = injected(&p, &cfg);
    assert!(container(&out, "nestdock-guard")
        .unwrap()
        .get("restartPolicy")
        .is_none());
    assert!(mount(container(&out, "warm").unwrap(), "nestdock-docker-sock").is_none());
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("the guard may start after")),
        "{warnings:?}"
    );
    assert!(
        !warnings.iter().any(|w| w.contains("no effect")),
        "{warnings:?}"
    );
}

#[test]
fn unguarded_dood_mounts_the_node_socket_into_init_and_app_containers() {
    let mut cfg = Config::default();
    cfg.dood.allow_without_namespace_policy = true;
    cfg.dood.guard.enabled = false;
    cfg.dood.socket_group = Some(998);
    let p = pod(
        json!({"nestdock.io/mode": "dood"}),
        json!({"initContainers": [app("warm")], "containers": [app("build")]}),
    );
    let (out, _) = injected(&p, &cfg);
    assert!(mount(container(&out, "warm").unwrap(), "nestdock-host-docker").is_some());
    assert!(container(&out, "nestdock-guard").is_none());
    assert!(!out.to_string().contains("privileged"));
}

#[test]
fn dood_is_denied_without_namespace_policy_by_default() {
    let p = pod(
        json!({"nestdock.io/mode": "dood"}),
        json!({"containers": [app("build")]}),
    );
    let (code, msg) = denied(&p, &Config::default());
    assert_eq!(code, 403);
    assert!(msg.contains("allowWithoutNamespacePolicy"), "{msg}");
}

#[test]
fn tls_mode_uses_the_gitlab_layout() {
    let p = pod(
        json!({"nestdock.io/mode": "dind", "nestdock.io/tls": "true"}),
        json!({"containers": [app("build")]}),
    );
    let (out, _) = injected(&p, &Config::default());
    let daemon = container(&out, "nestdock-dind").unwrap();
    let probe = daemon["startupProbe"]["exec"]["command"].to_string();
    assert!(
        probe.contains("/certs/client/cert.pem") && probe.contains("tcp://localhost:2376"),
        "{probe}"
    );

    let p = pod(
        json!({"nestdock.io/mode": "dood", "nestdock.io/tls": "true"}),
        json!({"containers": [app("b")]}),
    );
    let mut cfg = Config::default();
    cfg.dood.allow_without_namespace_policy = true;
    let (code, msg) = denied(&p, &cfg);
    assert_eq!(code, 400);
    assert!(msg.contains("nestdock.io/tls"), "{msg}");
}

#[test]
fn sidecar_container_warns_and_leaves_init_containers_alone() {
    let p = pod(
        json!({"nestdock.io/mode": "dind", "nestdock.io/sidecar": "container"}),
        json!({"initContainers": [app("fetch")], "containers": [app("build")]}),
    );
    let (out, warnings) = injected(&p, &Config::default());
    assert_eq!(out["spec"]["containers"][1]["name"], "nestdock-dind");
    assert!(env(container(&out, "fetch").unwrap(), "DOCKER_HOST").is_none());
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("Jobs will not complete")),
        "{warnings:?}"
    );

    let p = pod(
        json!({"nestdock.io/mode": "dind", "nestdock.io/sidecar": "container", "nestdock.io/containers": "fetch"}),
        json!({"initContainers": [app("fetch")], "containers": [app("build")]}),
    );
    let (_, msg) = denied(&p, &Config::default());
    assert!(msg.contains("init container \"fetch\""), "{msg}");
}

#[test]
fn mode_none_and_other_kinds_of_no_change() {
    let p = pod(
        json!({"nestdock.io/mode": "none"}),
        json!({"containers": [app("build")]}),
    );
    assert_eq!(decide(&p, &Config::default()).effect, Effect::Unchanged);
    let p = pod(json!({}), json!({"containers": [app("build")]}));
    assert_eq!(decide(&p, &Config::default()).effect, Effect::Unchanged);
    // Bad values are denied whatever the mode.
    let p = pod(
        json!({"nestdock.io/mode": "none", "nestdock.io/mtu": "9"}),
        json!({"containers": [app("build")]}),
    );
    let (code, msg) = denied(&p, &Config::default());
    assert_eq!(code, 400);
    assert!(
        msg.contains("nestdock.io/mtu") && msg.contains("\"9\""),
        "{msg}"
    );
}

#[test]
fn host_network_and_host_users_false_are_denied_for_dind() {
    let p = pod(
        json!({"nestdock.io/mode": "dind"}),
        json!({"hostNetwork": true, "containers": [app("b")]}),
    );
    let (code, msg) = denied(&p, &Config::default());
    assert_eq!(code, 403);
    assert!(msg.contains("hostNetwork"), "{msg}");
    let p = pod(
        json!({"nestdock.io/mode": "dind-rootless"}),
        json!({"hostUsers": false, "containers": [app("b")]}),
    );
    let (_, msg) = denied(&p, &Config::default());
    assert!(msg.contains("hostUsers"), "{msg}");
}

#[test]
fn mirrored_mounts_follow_the_targets_and_skip_the_daemons_paths() {
    let mut build = app("build");
    build["volumeMounts"] = json!([
        {"name": "src", "mountPath": "/workspace"},
        {"name": "cache", "mountPath": "/cache", "subPath": "docker", "readOnly": true},
        {"name": "lib", "mountPath": "/var/lib/docker"},
    ]);
    let mut test = app("test");
    test["volumeMounts"] = json!([
        {"name": "src", "mountPath": "/workspace"},
        {"name": "other", "mountPath": "/cache"},
    ]);
    let spec = json!({
        "containers": [build, test],
        "volumes": [{"name": "src", "emptyDir": {}}, {"name": "cache", "emptyDir": {}},
                    {"name": "lib", "emptyDir": {}}, {"name": "other", "emptyDir": {}}],
    });
    let p = pod(json!({"nestdock.io/mode": "dind"}), spec);
    let (out, warnings) = injected(&p, &Config::default());
    let daemon = container(&out, "nestdock-dind").unwrap();
    assert_eq!(mount(daemon, "src").unwrap()["mountPath"], "/workspace");
    assert_eq!(
        mount(daemon, "cache").unwrap(),
        &json!({"name": "cache", "mountPath": "/cache", "subPath": "docker", "readOnly": true})
    );
    assert!(mount(daemon, "lib").is_none());
    assert!(mount(daemon, "other").is_none());
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("lib") && w.contains("/var/lib/docker")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("other") && w.contains("cache")),
        "{warnings:?}"
    );
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}

#[test]
fn annotations_and_config_shape_the_daemon() {
    let cfg = Config::from_yaml(
        r#"
dind:
  allowedImages: ["registry.example.com/docker:*"]
  storage: {ephemeral: {storageClassName: fast, size: 50Gi}}
  bip: 172.30.0.1/16
  defaultAddressPools: [{base: 172.31.0.0/16, size: 24}]
  env: [{name: HTTPS_PROXY, value: "http://proxy:3128"}]
"#,
    )
    .unwrap();
    let p = pod(
        json!({
            "nestdock.io/mode": "dind",
            "nestdock.io/image": "registry.example.com/docker:28-dind",
            "nestdock.io/cpu-limit": "2",
            "nestdock.io/memory-request": "1Gi",
            "nestdock.io/storage-limit": "20Gi",
            "nestdock.io/registry-mirrors": "https://mirror.example.com",
            "nestdock.io/insecure-registries": "registry.local:5000",
            "nestdock.io/mtu": "1400",
        }),
        json!({"containers": [app("build")]}),
    );
    let (out, _) = injected(&p, &cfg);
    let d = container(&out, "nestdock-dind").unwrap();
    assert_eq!(d["image"], "registry.example.com/docker:28-dind");
    assert_eq!(
        d["resources"],
        json!({"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"cpu": "2"}})
    );
    let args: Vec<&str> = d["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for want in [
        "--registry-mirror=https://mirror.example.com",
        "--insecure-registry=registry.local:5000",
        "--bip=172.30.0.1/16",
        "--default-address-pool=base=172.31.0.0/16,size=24",
    ] {
        assert!(args.contains(&want), "{want} not in {args:?}");
    }
    assert_eq!(env(d, "NESTDOCK_MTU"), Some("1400"));
    assert_eq!(env(d, "HTTPS_PROXY"), Some("http://proxy:3128"));
    let v = volume(&out, "nestdock-docker-storage").unwrap();
    assert_eq!(
        v["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"],
        "20Gi"
    );
    assert_eq!(
        v["ephemeral"]["volumeClaimTemplate"]["spec"]["storageClassName"],
        "fast"
    );

    let p = pod(
        json!({"nestdock.io/mode": "dind", "nestdock.io/image": "evil/docker:dind"}),
        json!({"containers": [app("b")]}),
    );
    let (code, msg) = denied(&p, &cfg);
    assert_eq!(code, 403);
    assert!(
        msg.contains("evil/docker:dind") && msg.contains("registry.example.com/docker:*"),
        "{msg}"
    );

    let p = pod(
        json!({"nestdock.io/mode": "dind", "nestdock.io/memory-request": "2Gi", "nestdock.io/memory-limit": "1Gi"}),
        json!({"containers": [app("b")]}),
    );
    let (_, msg) = denied(&p, &cfg);
    assert!(
        msg.contains("memory request 2Gi is above its limit 1Gi"),
        "{msg}"
    );
}

#[test]
fn configured_socket_dir_moves_every_piece_together() {
    let cfg = Config::from_yaml("socketDir: /run/docker\nsocketGroup: 999\n").unwrap();
    let p = pod(
        json!({"nestdock.io/mode": "dind"}),
        json!({"containers": [app("build")]}),
    );
    let (out, _) = injected(&p, &cfg);
    assert_eq!(
        env(container(&out, "build").unwrap(), "DOCKER_HOST"),
        Some("unix:///run/docker/docker.sock")
    );
}

#[test]
fn namespace_labels_feed_the_engine() {
    let labels = [("nestdock.io/mode".to_string(), "dind".to_string())]
        .into_iter()
        .collect();
    let cfg = Config::default();
    let c = Context {
        config: &cfg,
        namespace: NamespacePolicy::Labels {
            namespace: "ci",
            labels: &labels,
        },
        native_sidecars: true,
    };
    let p = pod(json!({}), json!({"containers": [app("build")]}));
    let d = mutate(&p, &c);
    assert_eq!(d.mode, nestdock::mode::Mode::Dind);
    assert!(matches!(d.effect, Effect::Patched(_)));
}

#[test]
fn sidecar_auto_follows_the_api_server() {
    let p = pod(
        json!({"nestdock.io/mode": "dind"}),
        json!({"containers": [app("build")]}),
    );
    let cfg = Config::default();
    let c = Context {
        config: &cfg,
        namespace: NamespacePolicy::Off,
        native_sidecars: false,
    };
    let Effect::Patched(patch) = mutate(&p, &c).effect else {
        panic!()
    };
    let out = common::apply_patch(&p, &serde_json::to_value(&patch).unwrap());
    assert_eq!(out["spec"]["containers"][1]["name"], "nestdock-dind");
    invariants::check_against(Some(&p), &out, &cfg);
}

/// The patched pods of the main cases also pass the independent Kubernetes
/// schema check (kubernetes-validate, strict): our reading of the Pod schema
/// is not the only judge.
#[test]
fn patched_pods_pass_the_kubernetes_schema() {
    let mut dood = Config::default();
    dood.dood.allow_without_namespace_policy = true;
    dood.dood.socket_group = Some(998);
    dood.dood
        .node_selector
        .insert("nestdock.io/docker".into(), "true".into());
    let ephemeral = Config::from_yaml(
        "dind:\n  storage: {ephemeral: {storageClassName: fast, size: 50Gi}}\n  bip: 172.30.0.1/16\n  defaultAddressPools: [{base: 172.31.0.0/16, size: 24}]\n",
    )
    .unwrap();
    let mut with_mounts = app("build");
    with_mounts["volumeMounts"] =
        json!([{"name": "src", "mountPath": "/workspace", "subPath": "app", "readOnly": true}]);
    let cases = [
        (
            pod(
                json!({"nestdock.io/mode": "dind"}),
                json!({"containers": [app("build")]}),
            ),
            Config::default(),
        ),
        (
            pod(
                json!({"nestdock.io/mode": "dind", "nestdock.io/memory-limit": "4Gi", "nestdock.io/storage-limit": "20Gi"}),
                json!({"initContainers": [app("fetch")], "containers": [with_mounts, app("test")], "volumes": [{"name": "src", "emptyDir": {}}]}),
            ),
            Config::default(),
        ),
        (
            pod(
                json!({"nestdock.io/mode": "dind-rootless"}),
                json!({"containers": [app("build")]}),
            ),
            Config::default(),
        ),
        (
            pod(
                json!({"nestdock.io/mode": "dind", "nestdock.io/tls": "true"}),
                json!({"containers": [app("build")]}),
            ),
            Config::default(),
        ),
        (
            pod(
                json!({"nestdock.io/mode": "dind", "nestdock.io/sidecar": "container"}),
                json!({"containers": [app("build")]}),
            ),
            Config::default(),
        ),
        (
            pod(
                json!({"nestdock.io/mode": "dood"}),
                json!({"initContainers": [app("warm")], "containers": [app("build")]}),
            ),
            dood,
        ),
        (
            pod(
                json!({"nestdock.io/mode": "dind"}),
                json!({"containers": [app("build")]}),
            ),
            ephemeral,
        ),
    ];
    let patched: Vec<Value> = cases.iter().map(|(p, cfg)| injected(p, cfg).0).collect();
    common::schema::validate_k8s(&patched);
}

/// Labels of a namespace for [`with_labels`].
fn labels(kv: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn with_labels(
    p: &Value,
    config: &Config,
    labels: &std::collections::BTreeMap<String, String>,
) -> Decision {
    mutate(
        p,
        &Context {
            config,
            namespace: NamespacePolicy::Labels {
                namespace: "ci",
                labels,
            },
            native_sidecars: true,
        },
    )
}

fn args(daemon: &Value) -> Vec<&str> {
    daemon["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn rootless_starts_inside_its_user_namespace() {
    let mut own = app("own");
    own["env"] = json!([{"name": "TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE", "value": "/mine.sock"}]);
    let p = pod(
        json!({"nestdock.io/mode": "dind-rootless", "nestdock.io/mtu": "1400"}),
        json!({"containers": [app("build"), own]}),
    );
    let (out, warnings) = injected(&p, &Config::default());
    let daemon = container(&out, "nestdock-dind").unwrap();
    // The data root is a directory below the volume's (root-owned) mount point.
    assert_eq!(
        mount(daemon, "nestdock-docker-storage").unwrap()["mountPath"],
        "/home/rootless/.local/share/docker"
    );
    let a = args(daemon);
    assert!(
        a.contains(&"--data-root=/home/rootless/.local/share/docker/data"),
        "{a:?}"
    );
    // The socket's group is the daemon's own (gid 0 inside = 1000 outside).
    assert!(a.contains(&"--group=0"), "{a:?}");
    // rootlesskit's interface gets the same MTU as dockerd.
    assert!(daemon["command"][2]
        .as_str()
        .unwrap()
        .contains("export DOCKERD_ROOTLESS_ROOTLESSKIT_MTU=\"$mtu\""));
    assert_eq!(env(daemon, "NESTDOCK_MTU"), Some("1400"));
    // Ryuk binds the socket as the daemon sees it; a target's own value wins, silently.
    assert_eq!(
        env(
            container(&out, "build").unwrap(),
            "TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE"
        ),
        Some("/run/user/1000/docker.sock")
    );
    assert_eq!(
        env(
            container(&out, "own").unwrap(),
            "TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE"
        ),
        Some("/mine.sock")
    );
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn rootful_daemon_runs_as_group_0_and_needs_no_socket_override() {
    let p = pod(
        json!({"nestdock.io/mode": "dind"}),
        json!({"securityContext": {"runAsUser": 2000, "runAsGroup": 2000}, "containers": [app("build")]}),
    );
    let (out, _) = injected(&p, &Config::default());
    let daemon = container(&out, "nestdock-dind").unwrap();
    assert_eq!(daemon["securityContext"]["runAsGroup"], 0);
    assert_eq!(
        env(
            container(&out, "build").unwrap(),
            "TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE"
        ),
        None
    );
}

#[test]
fn dood_with_a_custom_host_socket_tells_testcontainers_the_node_path() {
    let mut cfg = Config::default();
    cfg.dood.allow_without_namespace_policy = true;
    // Guarded, the guard rewrites a bind of the docker socket: no override.
    cfg.dood.host_socket = "/run/containerd-docker/docker.sock".into();
    let p = pod(
        json!({"nestdock.io/mode": "dood"}),
        json!({"containers": [app("build")]}),
    );
    let (out, _) = injected(&p, &cfg);
    assert_eq!(
        env(
            container(&out, "build").unwrap(),
            "TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE"
        ),
        None
    );
    cfg.dood.host_socket = "/var/run/docker.sock".into();
    cfg.dood.guard.enabled = false;
    let (out, _) = injected(&p, &cfg);
    assert_eq!(
        env(
            container(&out, "build").unwrap(),
            "TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE"
        ),
        None
    );
    cfg.dood.host_socket = "/run/containerd-docker/docker.sock".into();
    let (out, _) = injected(&p, &cfg);
    assert_eq!(
        env(
            container(&out, "build").unwrap(),
            "TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE"
        ),
        Some("/run/containerd-docker/docker.sock")
    );
}

#[test]
fn dood_tells_testcontainers_to_reach_published_ports_on_the_node() {
    let mut cfg = Config::default();
    cfg.dood.allow_without_namespace_policy = true;
    let mut own = app("own");
    own["env"] = json!([{"name": "TESTCONTAINERS_HOST_OVERRIDE", "value": "10.0.0.9"}]);
    let p = pod(
        json!({"nestdock.io/mode": "dood"}),
        json!({"containers": [app("build"), own]}),
    );
    let host_override = |out: &Value, name: &str| {
        container(out, name).unwrap()["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "TESTCONTAINERS_HOST_OVERRIDE")
            .cloned()
    };
    // The node's daemon publishes ports on the node's address, guarded or
    // not: the Downward API gives it; a target's own value wins, silently.
    for guard in [true, false] {
        cfg.dood.guard.enabled = guard;
        let (out, warnings) = injected(&p, &cfg);
        assert_eq!(
            host_override(&out, "build"),
            Some(json!({"name": "TESTCONTAINERS_HOST_OVERRIDE",
                        "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}})),
            "guard {guard}"
        );
        assert_eq!(
            host_override(&out, "own"),
            Some(json!({"name": "TESTCONTAINERS_HOST_OVERRIDE", "value": "10.0.0.9"}))
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }
    // A daemon that publishes elsewhere (manifests/node-docker): not set.
    cfg.dood.testcontainers_host = nestdock::config::TestcontainersHost::None;
    let (out, _) = injected(&p, &cfg);
    assert_eq!(host_override(&out, "build"), None);
    // dind publishes in the pod: localhost is right, nothing is set.
    let p = pod(
        json!({"nestdock.io/mode": "dind"}),
        json!({"containers": [app("build")]}),
    );
    let (out, _) = injected(&p, &Config::default());
    assert_eq!(host_override(&out, "build"), None);
}

#[test]
fn a_forged_injected_marker_is_ignored() {
    let cfg = Config::default();
    // A namespace that enforces dind and does not allow dood.
    let enforced = labels(&[
        ("nestdock.io/mode", "dind"),
        ("nestdock.io/enforce", "true"),
    ]);
    for marker in ["dood", "dind", "none", "garbage"] {
        let p = pod(
            json!({"nestdock.io/injected": marker}),
            json!({"containers": [app("build")]}),
        );
        let d = with_labels(&p, &cfg, &enforced);
        assert_eq!(d.mode, nestdock::mode::Mode::Dind, "marker {marker}");
        let Effect::Patched(patch) = &d.effect else {
            panic!(
                "marker {marker}: the pod must meet policy, got {:?}",
                d.effect
            );
        };
        let out = common::apply_patch(&p, &serde_json::to_value(patch).unwrap());
        assert_eq!(annotation(&out, "nestdock.io/injected"), Some("dind"));
        assert!(container(&out, "nestdock-dind").is_some());
        // Now it does carry the injection: the next pass leaves it alone.
        assert_eq!(with_labels(&out, &cfg, &enforced).effect, Effect::Unchanged);
    }
    // A marker does not skip validation either.
    let p = pod(
        json!({"nestdock.io/injected": "dind", "nestdock.io/mtu": "9"}),
        json!({"containers": [app("build")]}),
    );
    let (code, msg) = denied(&p, &cfg);
    assert_eq!(code, 400);
    assert!(msg.contains("nestdock.io/mtu"), "{msg}");
    // Nor dood's namespace gate.
    let p = pod(
        json!({"nestdock.io/injected": "dood", "nestdock.io/mode": "dood"}),
        json!({"containers": [app("build")]}),
    );
    let d = with_labels(&p, &cfg, &labels(&[]));
    assert!(
        matches!(d.effect, Effect::Denied(ref x) if x.code == 403),
        "{d:?}"
    );
}

#[test]
fn only_the_official_docker_image_may_be_chosen_by_default() {
    let cfg = Config::default();
    for image in [
        "docker:27-dind",
        "docker.io/library/docker:27-dind-rootless",
    ] {
        let p = pod(
            json!({"nestdock.io/mode": "dind", "nestdock.io/image": image}),
            json!({"containers": [app("b")]}),
        );
        let (out, _) = injected(&p, &cfg);
        assert_eq!(container(&out, "nestdock-dind").unwrap()["image"], image);
    }
    for image in [
        "evil.example.com/suid-sh:1",
        "docker.evil.example/docker:1",
        "dockerx:1",
    ] {
        let p = pod(
            json!({"nestdock.io/mode": "dind-rootless", "nestdock.io/image": image}),
            json!({"containers": [app("b")]}),
        );
        let (code, msg) = denied(&p, &cfg);
        assert_eq!(code, 403, "{image}");
        assert!(msg.contains(image) && msg.contains("docker:*"), "{msg}");
    }
    // An empty list lets no pod choose.
    let mut cfg = Config::default();
    cfg.dind.allowed_images.clear();
    let p = pod(
        json!({"nestdock.io/mode": "dind", "nestdock.io/image": "docker:27-dind"}),
        json!({"containers": [app("b")]}),
    );
    let (_, msg) = denied(&p, &cfg);
    assert!(msg.contains("allowedImages is empty"), "{msg}");
}

#[test]
fn mirrored_mounts_never_reach_the_daemons_system_paths() {
    let mut build = app("build");
    let paths = [
        ("/usr/local/bin/dockerd-entrypoint.sh", Some("entrypoint")),
        ("/bin/sh", Some("sh")),
        ("/usr/local/sbin", None),
        ("/etc/docker", None),
        ("/root", None),
        ("//usr/bin", None),
        ("/usr/./sbin", None),
        ("/lib64", None),
        ("/home", None),
        ("/work/../etc", None),
        ("/", None),
    ];
    let mut mounts: Vec<Value> = paths
        .iter()
        .map(|(p, sub)| match sub {
            Some(sub) => json!({"name": "evil", "mountPath": p, "subPath": sub}),
            None => json!({"name": "evil", "mountPath": p}),
        })
        .collect();
    mounts.push(json!({"name": "src", "mountPath": "/workspace//"}));
    build["volumeMounts"] = Value::Array(mounts);
    let spec = json!({
        "containers": [build],
        "volumes": [{"name": "evil", "emptyDir": {}}, {"name": "src", "emptyDir": {}}],
    });
    let p = pod(json!({"nestdock.io/mode": "dind"}), spec);
    let (out, warnings) = injected(&p, &Config::default());
    let daemon = container(&out, "nestdock-dind").unwrap();
    assert!(mount(daemon, "evil").is_none(), "{daemon:#}");
    assert_eq!(mount(daemon, "src").unwrap()["mountPath"], "/workspace");
    assert!(
        warnings.iter().any(|w| w.contains("/bin/sh")),
        "{warnings:?}"
    );
}

#[test]
fn a_mount_at_the_socket_directory_is_caught_however_it_is_spelled() {
    for path in [
        "//var/run",
        "/var/run/",
        "/var/./run",
        "/var/run/docker.sock/",
    ] {
        let mut build = app("build");
        build["volumeMounts"] = json!([{"name": "run", "mountPath": path}]);
        let p = pod(
            json!({"nestdock.io/mode": "dind"}),
            json!({"containers": [build], "volumes": [{"name": "run", "emptyDir": {}}]}),
        );
        let (code, msg) = denied(&p, &Config::default());
        assert_eq!(code, 400, "{path}");
        assert!(
            msg.contains("where nestdock puts the docker socket"),
            "{path}: {msg}"
        );
    }
}

#[test]
fn dind_shares_no_host_namespace_and_every_field_is_named() {
    for mode in ["dind", "dind-rootless"] {
        let p = pod(
            json!({"nestdock.io/mode": mode}),
            json!({"hostPID": true, "hostIPC": true, "containers": [app("b")]}),
        );
        let (code, msg) = denied(&p, &Config::default());
        assert_eq!(code, 403);
        assert!(msg.contains("hostPID") && msg.contains("hostIPC"), "{msg}");
    }
}

#[test]
fn a_denial_names_every_bad_annotation_and_every_policy_rule() {
    let p = pod(
        json!({
            "nestdock.io/mode": "dood",
            "nestdock.io/mtu": "9",
            "nestdock.io/tls": "yes",
            "nestdock.io/mdoe": "dind",
        }),
        json!({"containers": [app("b")]}),
    );
    let ns = labels(&[
        ("nestdock.io/mode", "dind"),
        ("nestdock.io/enforce", "true"),
        ("pod-security.kubernetes.io/enforce", "baseline"),
    ]);
    let d = with_labels(&p, &Config::default(), &ns);
    let Effect::Denied(denial) = d.effect else {
        panic!("{d:?}");
    };
    assert_eq!(denial.code, 400, "a bad value makes it a bad request");
    let all = denial.message();
    for needle in [
        "nestdock.io/mtu",
        "nestdock.io/tls",
        "nestdock.io/mdoe",
        "enforces mode dind",
        "nestdock.io/allow-dood",
        "pod-security.kubernetes.io/enforce=baseline",
    ] {
        assert!(all.contains(needle), "{needle} missing from {all}");
    }
    assert_eq!(denial.reasons.len(), 6, "{:#?}", denial.reasons);
}

#[test]
fn what_a_hostile_pod_gets_back_is_bounded() {
    // A thousand unknown keys with long values: one short reason.
    let mut ann = serde_json::Map::new();
    for i in 0..1000 {
        ann.insert(format!("nestdock.io/k{i}"), json!("x".repeat(10_000)));
    }
    let p = pod(Value::Object(ann), json!({"containers": [app("b")]}));
    let (_, msg) = denied(&p, &Config::default());
    assert!(msg.len() < 2_000, "{} bytes", msg.len());
    assert!(msg.contains("995 more"), "{msg}");
    // Hundreds of skipped mounts: a bounded number of warnings.
    let mut build = app("build");
    build["volumeMounts"] = Value::Array(
        (0..500)
            .map(|i| json!({"name": "v", "mountPath": format!("/usr/x{i}")}))
            .collect(),
    );
    let p = pod(
        json!({"nestdock.io/mode": "dind"}),
        json!({"containers": [build], "volumes": [{"name": "v", "emptyDir": {}}]}),
    );
    let (_, warnings) = injected(&p, &Config::default());
    assert!(
        warnings.len() <= nestdock::engine::MAX_WARNINGS + 1,
        "{}",
        warnings.len()
    );
    assert!(
        warnings.last().unwrap().contains("more warnings"),
        "{warnings:?}"
    );
    // A patch past the bound is refused, not written.
    let containers: Vec<Value> = (0..25_000)
        .map(|i| json!({"name": format!("c{i}")}))
        .collect();
    let p = pod(
        json!({"nestdock.io/mode": "dind"}),
        json!({"containers": containers}),
    );
    let (code, msg) = denied(&p, &Config::default());
    assert_eq!(code, 400);
    assert!(
        msg.contains(&nestdock::engine::MAX_PATCH_BYTES.to_string()),
        "{msg}"
    );
}
