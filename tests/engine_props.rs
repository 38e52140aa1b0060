//! Property test: for any valid pod shape and every mode, the engine either
//! denies with a reason or returns a patch that applies to the pod as sent,
//! yields a pod that satisfies docs/behaviour.md, and a second pass changes nothing.

mod common;

use nestdock::config::Config;
use nestdock::engine::{mutate, Context, Effect, NamespacePolicy};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const PATHS: [&str; 10] = [
    "/workspace",
    "/cache",
    "/builds/project",
    "/tmp/out",
    "/var/lib/docker",
    "/etc/ssl/certs/ca.crt",
    "/home/runner",
    "/certs",
    "/run",
    "/var/run/docker.sock",
];

/// How a list or map is present in the object as sent.
#[derive(Debug, Clone, Copy)]
enum Presence {
    Absent,
    Null,
    Empty,
    Filled,
}

fn presence() -> impl Strategy<Value = Presence> {
    prop_oneof![
        Just(Presence::Absent),
        Just(Presence::Null),
        Just(Presence::Empty),
        Just(Presence::Filled),
        Just(Presence::Filled),
    ]
}

#[derive(Debug, Clone)]
struct ContainerShape {
    env: Presence,
    docker_host: bool,
    mounts: Presence,
    /// Indices into PATHS, with a volume index and an optional subPath.
    mount_specs: Vec<(usize, usize, bool)>,
}

fn container_shape() -> impl Strategy<Value = ContainerShape> {
    (
        presence(),
        any::<bool>(),
        presence(),
        prop::collection::vec((0..PATHS.len(), 0..4usize, any::<bool>()), 0..4),
    )
        .prop_map(|(env, docker_host, mounts, mount_specs)| ContainerShape {
            env,
            docker_host,
            mounts,
            mount_specs,
        })
}

fn put(obj: &mut Map<String, Value>, key: &str, p: Presence, items: Vec<Value>) {
    match p {
        Presence::Absent => {}
        Presence::Null => {
            obj.insert(key.into(), Value::Null);
        }
        Presence::Empty => {
            obj.insert(key.into(), json!([]));
        }
        Presence::Filled => {
            obj.insert(key.into(), Value::Array(items));
        }
    }
}

fn container(name: String, s: &ContainerShape, volumes: usize) -> Value {
    let mut c = Map::new();
    c.insert("name".into(), json!(name));
    c.insert("image".into(), json!("alpine:3.20"));
    let mut env = vec![json!({"name": "CI", "value": "true"})];
    if s.docker_host {
        env.push(json!({"name": "DOCKER_HOST", "value": "tcp://elsewhere:2375"}));
    }
    put(&mut c, "env", s.env, env);
    let mut seen = Vec::new();
    let mut mounts = Vec::new();
    if volumes > 0 {
        for (p, v, sub) in &s.mount_specs {
            if seen.contains(p) {
                continue;
            }
            seen.push(*p);
            let mut m = json!({"name": format!("vol{}", v % volumes), "mountPath": PATHS[*p]});
            if *sub {
                m["subPath"] = json!("sub");
            }
            mounts.push(m);
        }
    }
    put(&mut c, "volumeMounts", s.mounts, mounts);
    Value::Object(c)
}

#[derive(Debug, Clone)]
struct PodShape {
    init: Vec<ContainerShape>,
    init_presence: Presence,
    app: Vec<ContainerShape>,
    volumes: usize,
    volumes_presence: Presence,
    annotations: Presence,
    security_context: u8,
    mode: &'static str,
    tls: bool,
    sidecar: Option<&'static str>,
    subset: Option<Vec<usize>>,
}

fn pod_shape() -> impl Strategy<Value = PodShape> {
    (
        prop::collection::vec(container_shape(), 0..3),
        presence(),
        prop::collection::vec(container_shape(), 1..4),
        0..4usize,
        presence(),
        presence(),
        0..4u8,
        prop::sample::select(vec!["dind", "dind-rootless", "dood", "none"]),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["native", "container"])),
        prop::option::of(prop::collection::vec(0..6usize, 1..3)),
    )
        .prop_map(
            |(
                init,
                init_presence,
                app,
                volumes,
                volumes_presence,
                annotations,
                security_context,
                mode,
                tls,
                sidecar,
                subset,
            )| {
                PodShape {
                    init,
                    init_presence,
                    app,
                    volumes,
                    volumes_presence,
                    annotations,
                    security_context,
                    mode,
                    tls,
                    sidecar,
                    subset,
                }
            },
        )
}

fn build(s: &PodShape) -> Value {
    // Volumes are only referenced when they exist in the pod.
    let volumes = if matches!(s.volumes_presence, Presence::Filled) {
        s.volumes
    } else {
        0
    };
    let init: Vec<Value> = s
        .init
        .iter()
        .enumerate()
        .map(|(i, c)| container(format!("init{i}"), c, volumes))
        .collect();
    let app: Vec<Value> = s
        .app
        .iter()
        .enumerate()
        .map(|(i, c)| container(format!("app{i}"), c, volumes))
        .collect();
    let mut spec = Map::new();
    let init_presence = if init.is_empty() && matches!(s.init_presence, Presence::Filled) {
        Presence::Empty
    } else if !init.is_empty() {
        Presence::Filled
    } else {
        s.init_presence
    };
    put(&mut spec, "initContainers", init_presence, init);
    spec.insert("containers".into(), Value::Array(app));
    let vols = (0..s.volumes)
        .map(|i| json!({"name": format!("vol{i}"), "emptyDir": {}}))
        .collect();
    put(&mut spec, "volumes", s.volumes_presence, vols);
    match s.security_context {
        0 => {}
        1 => {
            spec.insert("securityContext".into(), json!({}));
        }
        2 => {
            spec.insert(
                "securityContext".into(),
                json!({"runAsNonRoot": true, "runAsUser": 1001}),
            );
        }
        _ => {
            spec.insert(
                "securityContext".into(),
                json!({"supplementalGroups": [2375, 5000]}),
            );
        }
    }
    let mut ann = Map::new();
    ann.insert("nestdock.io/mode".into(), json!(s.mode));
    if s.tls {
        ann.insert("nestdock.io/tls".into(), json!("true"));
    }
    if let Some(sc) = s.sidecar {
        ann.insert("nestdock.io/sidecar".into(), json!(sc));
    }
    if let Some(subset) = &s.subset {
        let names: Vec<String> = subset
            .iter()
            .map(|i| {
                if i % 2 == 0 && !s.init.is_empty() {
                    format!("init{}", i % s.init.len())
                } else {
                    format!("app{}", i % s.app.len())
                }
            })
            .collect();
        ann.insert("nestdock.io/containers".into(), json!(names.join(",")));
    }
    let mut meta = Map::new();
    meta.insert("name".into(), json!("p"));
    match s.annotations {
        Presence::Absent | Presence::Null | Presence::Empty => {
            // The mode must be somewhere: without annotations it comes from the inject flag.
            if matches!(s.annotations, Presence::Null) {
                meta.insert("annotations".into(), Value::Null);
            }
        }
        Presence::Filled => {
            meta.insert("annotations".into(), Value::Object(ann.clone()));
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "_annotations": ann})
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 768, .. ProptestConfig::default() })]

    #[test]
    fn any_pod_patch_applies_is_valid_and_idempotent(shape in pod_shape()) {
        let mut pod = build(&shape);
        let wanted = pod.as_object_mut().unwrap().remove("_annotations").unwrap();
        let mut config = Config::default();
        config.dood.allow_without_namespace_policy = true;
        // Pods without annotations get their mode as `inject --mode` gives it.
        let flag = if pod.pointer("/metadata/annotations").is_some_and(Value::is_object) {
            None
        } else {
            // Keep the property meaningful: the subset/tls/sidecar keys ride on annotations only.
            Some(wanted["nestdock.io/mode"].as_str().unwrap().parse().unwrap())
        };
        let ctx = Context { config: &config, namespace: NamespacePolicy::Offline { mode: flag }, native_sidecars: true };
        let d = mutate(&pod, &ctx);
        // The webhook reads the pod from its JSON text: same decision.
        prop_assert_eq!(&nestdock::engine::mutate_json(&pod.to_string(), &ctx), &d);
        match &d.effect {
            Effect::Unchanged => prop_assert!(d.mode == nestdock::mode::Mode::None),
            Effect::Denied(denial) => {
                prop_assert!(denial.code >= 400);
                prop_assert!(!denial.message().is_empty());
                // Only the documented reasons: a mount where the socket goes,
                // TLS outside dind, or an init container named with a plain sidecar.
                prop_assert!(
                    denial.message().contains("where nestdock puts the docker socket")
                        || denial.message().contains("nestdock.io/tls")
                        || denial.message().contains("names init container"),
                    "unexpected denial: {}", denial.message()
                );
            }
            Effect::Patched(patch) => {
                let patched = common::apply_patch(&pod, &serde_json::to_value(patch).unwrap());
                common::invariants::check_against(Some(&pod), &patched, &config);
                for w in &d.warnings {
                    prop_assert!(w.len() < 120, "long warning: {}", w);
                }
                let again = mutate(&patched, &ctx);
                prop_assert_eq!(again.effect, Effect::Unchanged);
            }
        }
    }
}
