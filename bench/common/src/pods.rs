//! The pods and AdmissionReviews the benchmarks send, built in code so that
//! `bench/run.sh` (through `nestdock-bench fixtures`) and the Criterion
//! benchmarks (`benches/engine.rs`, which includes this file with `#[path]`)
//! measure exactly the same objects. Deterministic: the same bytes every run.
//!
//! Only `serde_json` is used here, so that the file compiles in both crates.

use serde_json::{json, Map, Value};

/// The uid of every review (the servers echo it back).
pub const UID: &str = "3c0d8a4e-6f5b-4e0c-9b7a-2d1f0e9c8b7a";

/// The projected service-account token volume the ServiceAccount admission
/// plugin adds to every pod (and mounts into every container) before
/// mutating webhooks run.
const SA_VOLUME: &str = "kube-api-access-7x2kq";
const SA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn sa_volume() -> Value {
    json!({
        "name": SA_VOLUME,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]
        }
    })
}

fn sa_mount() -> Value {
    json!({"name": SA_VOLUME, "mountPath": SA_PATH, "readOnly": true})
}

/// Fields the API server defaults on every container.
fn container_defaults(c: &mut Map<String, Value>) {
    c.insert(
        "terminationMessagePath".into(),
        json!("/dev/termination-log"),
    );
    c.insert("terminationMessagePolicy".into(), json!("File"));
    c.insert("imagePullPolicy".into(), json!("IfNotPresent"));
}

fn container(value: Value) -> Value {
    let mut c = match value {
        Value::Object(m) => m,
        _ => unreachable!("containers are objects"),
    };
    container_defaults(&mut c);
    Value::Object(c)
}

/// Metadata of a pod created by the Job controller, with the annotation that
/// asks for dind and the managedFields the API server records.
fn job_pod_metadata(job: &str, extra_annotations: Map<String, Value>) -> Value {
    let mut annotations = Map::new();
    annotations.insert("nestdock.io/mode".into(), json!("dind"));
    annotations.insert("ci.example.com/pipeline".into(), json!("orders/main#4711"));
    annotations.extend(extra_annotations);
    json!({
        "generateName": format!("{job}-"),
        "namespace": "ci",
        "labels": {
            "batch.kubernetes.io/controller-uid": "9f1c2b3a-4d5e-4f60-8a7b-1c2d3e4f5a6b",
            "batch.kubernetes.io/job-name": job,
            "controller-uid": "9f1c2b3a-4d5e-4f60-8a7b-1c2d3e4f5a6b",
            "job-name": job,
            "app.kubernetes.io/name": "orders-ci",
            "app.kubernetes.io/part-of": "ci"
        },
        "annotations": annotations,
        "ownerReferences": [{
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": job,
            "uid": "9f1c2b3a-4d5e-4f60-8a7b-1c2d3e4f5a6b",
            "controller": true,
            "blockOwnerDeletion": true
        }],
        "managedFields": [{
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2025-11-25T06:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {
                    "f:annotations": {".": {}, "f:ci.example.com/pipeline": {}, "f:nestdock.io/mode": {}},
                    "f:generateName": {},
                    "f:labels": {".": {}, "f:app.kubernetes.io/name": {}, "f:app.kubernetes.io/part-of": {},
                        "f:batch.kubernetes.io/controller-uid": {}, "f:batch.kubernetes.io/job-name": {},
                        "f:controller-uid": {}, "f:job-name": {}},
                    "f:ownerReferences": {".": {}, "k:{\"uid\":\"9f1c2b3a-4d5e-4f60-8a7b-1c2d3e4f5a6b\"}": {}}
                },
                "f:spec": {
                    "f:containers": {"k:{\"name\":\"build\"}": {}, "k:{\"name\":\"log-shipper\"}": {}},
                    "f:initContainers": {"k:{\"name\":\"checkout\"}": {}},
                    "f:restartPolicy": {}, "f:securityContext": {}, "f:volumes": {}
                }
            }
        }]
    })
}

/// Pod-level fields the API server defaults, plus the tolerations the
/// DefaultTolerationSeconds plugin adds.
fn pod_spec_defaults(spec: &mut Map<String, Value>) {
    let defaults = json!({
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 30,
        "activeDeadlineSeconds": 3600,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "schedulerName": "default-scheduler",
        "enableServiceLinks": true,
        "priority": 0,
        "preemptionPolicy": "PreemptLowerPriority",
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ]
    });
    if let Value::Object(d) = defaults {
        for (k, v) in d {
            spec.entry(k).or_insert(v);
        }
    }
}

/// The typical pod: a CI Job's pod asking for dind. One init container
/// (checkout), two app containers (the build and a log shipper), env,
/// resources, four volumes of its own plus the service-account token.
/// About 5.5 KB as a review.
pub fn typical_pod() -> Value {
    typical_pod_with(Map::new(), Vec::new())
}

/// [`typical_pod`] with extra annotations and extra env vars in `build`.
fn typical_pod_with(extra_annotations: Map<String, Value>, extra_env: Vec<Value>) -> Value {
    let mut build_env = vec![
        json!({"name": "CI", "value": "true"}),
        json!({"name": "CI_COMMIT_SHA", "value": "5f3a9c1e2b7d4a60c8e1f2a3b4c5d6e7f8091a2b"}),
        json!({"name": "CI_PIPELINE_ID", "value": "4711"}),
        json!({"name": "REGISTRY", "value": "registry.example.com/orders"}),
        json!({"name": "DOCKER_BUILDKIT", "value": "1"}),
        json!({"name": "REGISTRY_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "registry-push", "key": "password"}}}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}),
    ];
    build_env.extend(extra_env);
    let mut spec = Map::new();
    spec.insert(
        "initContainers".into(),
        json!([container(json!({
            "name": "checkout",
            "image": "alpine/git:2.47.2",
            "args": ["clone", "--depth=1", "https://git.example.com/team/orders.git", "/workspace"],
            "env": [{"name": "GIT_TERMINAL_PROMPT", "value": "0"}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
            "volumeMounts": [
                {"name": "workspace", "mountPath": "/workspace"},
                {"name": "git-credentials", "mountPath": "/root/.git-credentials", "subPath": ".git-credentials", "readOnly": true},
                sa_mount()
            ]
        }))]),
    );
    spec.insert(
        "containers".into(),
        json!([
            container(json!({
                "name": "build",
                "image": "docker:28-cli",
                "workingDir": "/workspace",
                "command": ["/bin/sh", "-c"],
                "args": ["docker build -t \"$REGISTRY/app:$CI_COMMIT_SHA\" . && docker push \"$REGISTRY/app:$CI_COMMIT_SHA\""],
                "env": build_env,
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
                "securityContext": {"allowPrivilegeEscalation": false, "runAsUser": 1000},
                "volumeMounts": [
                    {"name": "workspace", "mountPath": "/workspace"},
                    {"name": "build-cache", "mountPath": "/cache"},
                    {"name": "docker-config", "mountPath": "/home/build/.docker", "readOnly": true},
                    sa_mount()
                ]
            })),
            container(json!({
                "name": "log-shipper",
                "image": "fluent/fluent-bit:3.2",
                "args": ["--config=/fluent-bit/etc/fluent-bit.yaml"],
                "env": [
                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}},
                    {"name": "LOG_SINK", "value": "https://logs.example.com/ingest"}
                ],
                "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
                "volumeMounts": [
                    {"name": "workspace", "mountPath": "/workspace", "readOnly": true},
                    sa_mount()
                ]
            }))
        ]),
    );
    spec.insert("securityContext".into(), json!({"fsGroup": 1000}));
    spec.insert(
        "volumes".into(),
        json!([
            {"name": "workspace", "emptyDir": {}},
            {"name": "build-cache", "persistentVolumeClaim": {"claimName": "orders-build-cache"}},
            {"name": "docker-config", "secret": {"secretName": "registry-push-config", "defaultMode": 420}},
            {"name": "git-credentials", "secret": {"secretName": "git-read", "defaultMode": 256}},
            sa_volume()
        ]),
    );
    pod_spec_defaults(&mut spec);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": job_pod_metadata("orders-build-4711", extra_annotations),
        "spec": spec
    })
}

/// A dind pod of `n` app containers, each with three env vars, a volume of
/// its own mounted at a path of its own, and the service-account token: the
/// work of the engine grows with `n` (targets, env, mounts to mirror).
pub fn pod_with_containers(n: usize) -> Value {
    let mut containers = Vec::with_capacity(n);
    let mut volumes = Vec::with_capacity(n + 1);
    for i in 0..n {
        let name = format!("worker-{i:04}");
        containers.push(container(json!({
            "name": name,
            "image": "registry.example.com/orders/worker:1.4.2",
            "args": ["--shard", i.to_string()],
            "env": [
                {"name": "SHARD", "value": i.to_string()},
                {"name": "SHARDS", "value": n.to_string()},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}}
            ],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            "volumeMounts": [
                {"name": format!("scratch-{i:04}"), "mountPath": format!("/scratch/{i:04}")},
                sa_mount()
            ]
        })));
        volumes.push(json!({"name": format!("scratch-{i:04}"), "emptyDir": {}}));
    }
    volumes.push(sa_volume());
    let mut spec = Map::new();
    spec.insert("containers".into(), Value::Array(containers));
    spec.insert("volumes".into(), Value::Array(volumes));
    pod_spec_defaults(&mut spec);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("workers-{n}-"),
            "namespace": "ci",
            "labels": {"app.kubernetes.io/name": "workers"},
            "annotations": {"nestdock.io/mode": "dind"}
        },
        "spec": spec
    })
}

/// The typical pod grown to about `target` bytes as a review: a
/// `last-applied-configuration`-style annotation of 200 KiB (under the API
/// server's 256 KiB limit on all annotations) and the rest as env vars of
/// the build container (what a generated `.env` file turned into env looks
/// like).
pub fn large_pod(target: usize) -> Value {
    let filler = "x".repeat(200 * 1024);
    let mut annotations = Map::new();
    annotations.insert(
        "kubectl.kubernetes.io/last-applied-configuration".into(),
        Value::String(filler),
    );
    let base = serde_json::to_vec(&review(&typical_pod_with(annotations.clone(), Vec::new())))
        .map(|v| v.len())
        .unwrap_or(0);
    let one = |i: usize| {
        json!({
            "name": format!("FEATURE_FLAG_{i:05}"),
            "value": format!("enabled;rollout=25%;owner=team-orders;ticket=ORD-{i:05};notes=generated-by-config-sync")
        })
    };
    let per_var = serde_json::to_vec(&one(0))
        .map(|v| v.len() + 1)
        .unwrap_or(1);
    let count = target.saturating_sub(base) / per_var;
    let env = (0..count).map(one).collect();
    typical_pod_with(annotations, env)
}

/// The AdmissionReview the API server sends for a pod CREATE (after the
/// built-in mutating plugins, as a mutating webhook sees it).
pub fn review(pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "ci",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:job-controller",
                "uid": "b5a0c0de-1f2e-4d3c-8b4a-5f6e7d8c9b0a",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}
