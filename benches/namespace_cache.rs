//! What the namespace cache costs (docs/behaviour.md, *Namespace policy*: labels from a watch-backed
//! cache, no API call per admission), measured against the fake API of
//! tests/common/fake_kube.rs serving 10,000 realistic Namespaces:
//!
//! (a) heap bytes the cache holds once synced (a counting global allocator:
//!     live bytes after ready and a settle, minus before start; the kube
//!     client and its connection are included), next to the same reflector
//!     without stripping, for reference;
//! (b) one label lookup: `cache.cached(name)` + `namespaces::labels()`, and
//!     the request path's `cache.get(name).await`, over random names;
//! (c) one full review with no lookup: `admission::review` of a ~5 KB pod
//!     AdmissionReview with `NamespacePolicy::Off`;
//!
//! and (b)/(c). The machine is shared and noisy, so (b) and (c) alternate in
//! rounds and the table reports medians and ratios from the same run.
//!
//! `cargo bench --bench namespace_cache`

#[path = "../tests/common/fake_kube.rs"]
mod fake_kube;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use fake_kube::FakeKube;
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use nestdock::config::Config;
use nestdock::engine::{Context, NamespacePolicy};
use nestdock::namespaces::{self, NamespaceCache};
use serde_json::{json, Value};

// ---------------------------------------------------------------- allocator

/// Live heap bytes, by a wrapper around the system allocator.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call forwards to `System` with the caller's arguments; the
// counter is bookkeeping only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------- data

const NAMESPACES: usize = 10_000;

/// A small deterministic generator (xorshift64*), so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn ns_name(i: usize) -> String {
    const TEAMS: [&str; 8] = [
        "payments", "search", "ml", "web", "data", "platform", "mobile", "ci",
    ];
    format!(
        "{}-{}-{i:05}",
        TEAMS[i % TEAMS.len()],
        ["dev", "staging", "prod"][i % 3]
    )
}

/// A Namespace as a real cluster holds it: a few labels (some of them
/// nestdock's and Pod Security's), the annotations kubectl and GitOps tools
/// leave, and managedFields.
fn namespace(i: usize) -> Value {
    let name = ns_name(i);
    let team = name.split('-').next().unwrap().to_string();
    let env = ["dev", "staging", "prod"][i % 3];
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    labels.insert("team".into(), json!(team));
    labels.insert("environment".into(), json!(env));
    labels.insert("app.kubernetes.io/managed-by".into(), json!("argocd"));
    if i.is_multiple_of(4) {
        labels.insert(
            "nestdock.io/mode".into(),
            json!(["dind", "dind-rootless", "dood"][i % 3]),
        );
    }
    if i.is_multiple_of(12) {
        labels.insert("nestdock.io/enforce".into(), json!("true"));
    }
    if i % 3 == 2 {
        labels.insert(
            "pod-security.kubernetes.io/enforce".into(),
            json!("baseline"),
        );
        labels.insert(
            "pod-security.kubernetes.io/warn".into(),
            json!("restricted"),
        );
    }
    let applied = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"annotations": {"owner": format!("{team}@example.com")}, "labels": labels, "name": name}
    });
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": format!("7d0e1c9a-4b2f-4e8d-a1c3-{i:012x}"),
            "creationTimestamp": "2024-11-02T08:15:30Z",
            "labels": labels,
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": format!("{applied}\n"),
                "owner": format!("{team}@example.com"),
                "argocd.argoproj.io/tracking-id": format!("namespaces:/Namespace:{name}"),
            },
            "managedFields": [
                {
                    "manager": "kubectl-client-side-apply",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2024-11-02T08:15:30Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {
                        "f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}, "f:owner": {}},
                        "f:labels": {".": {}, "f:environment": {}, "f:kubernetes.io/metadata.name": {}, "f:team": {}}
                    }}
                },
                {
                    "manager": "argocd-controller",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2025-01-20T14:02:11Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {
                        "f:annotations": {"f:argocd.argoproj.io/tracking-id": {}},
                        "f:labels": {"f:app.kubernetes.io/managed-by": {}}
                    }}
                }
            ]
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

/// A ~5 KB pod CREATE review as the API server sends it: a CI job's pod with
/// two containers, an init container, env, resources, volumes, tolerations.
fn review_body() -> Vec<u8> {
    let sa = json!({
        "name": "kube-api-access-x7k2p",
        "readOnly": true,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"
    });
    let container = |name: &str, image: &str| {
        json!({
            "name": name,
            "image": image,
            "command": ["sh", "-c", "docker build -t registry.example.com/app:$CI_COMMIT_SHA . && docker push registry.example.com/app:$CI_COMMIT_SHA"],
            "env": [
                {"name": "CI", "value": "true"},
                {"name": "CI_COMMIT_SHA", "value": "0f3e6b1c9d2a4e5f8a7b6c5d4e3f2a1b0c9d8e7f"},
                {"name": "CI_PROJECT_PATH", "value": "platform/build-tools"},
                {"name": "HTTP_PROXY", "value": "http://proxy.example.com:3128"},
                {"name": "NO_PROXY", "value": "localhost,127.0.0.1,.svc,.cluster.local"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}
            ],
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
            "volumeMounts": [sa, {"name": "workspace", "mountPath": "/builds"}, {"name": "cache", "mountPath": "/cache"}],
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent"
        })
    };
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "runner-x7k2p-project-42-concurrent-0-",
            "namespace": "ci-dev-00042",
            "creationTimestamp": null,
            "labels": {
                "app.kubernetes.io/name": "gitlab-runner",
                "job.runner.gitlab.com/id": "987654321",
                "project.runner.gitlab.com/id": "42",
                "pod": "runner-x7k2p-project-42-concurrent-0"
            },
            "annotations": {
                "nestdock.io/mode": "dind",
                "job.runner.gitlab.com/url": "https://gitlab.example.com/platform/build-tools/-/jobs/987654321",
                "project.runner.gitlab.com/ref": "main"
            },
            "ownerReferences": []
        },
        "spec": {
            "volumes": [
                {"name": "workspace", "emptyDir": {}},
                {"name": "cache", "persistentVolumeClaim": {"claimName": "runner-cache"}},
                {"name": "kube-api-access-x7k2p", "projected": {"sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ], "defaultMode": 420}}
            ],
            "initContainers": [container("init-permissions", "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-v17.5.0")],
            "containers": [
                container("build", "docker:28-cli"),
                container("helper", "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-v17.5.0")
            ],
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "gitlab-runner",
            "serviceAccount": "gitlab-runner",
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "securityContext": {"fsGroup": 1000},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {}
    });
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3f0c8e2a-5d1b-4c7e-9a6f-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "",
            "namespace": "ci-dev-00042",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:gitlab:gitlab-runner",
                "uid": "b4a5e0e9-7d2c-4a1e-8f4a-2f7c9c6d1e11",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:gitlab", "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

// ---------------------------------------------------------------- timing

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Nanoseconds per iteration of `f` over `n` iterations.
fn per_iter(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn human_bytes(b: f64) -> String {
    if b.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b.abs() >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn human_ns(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else if ns >= 1_000.0 {
        format!("{:.1} µs", ns / 1_000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once
    // quickly instead (fewer rounds).
    let quick =
        std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let rounds = if quick { 1 } else { 9 };

    nestdock::tls::install_ring();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let fake = FakeKube::start("31");
    let mut served_json = 0usize;
    for i in 0..NAMESPACES {
        let ns = namespace(i);
        served_json += serde_json::to_vec(&ns).unwrap().len();
        fake.insert_object_unannounced(ns);
    }
    let url: hyper::Uri = fake.url().parse().expect("fake API URL");

    // (a) heap held: live bytes before the client exists, and after the
    // cache has synced and settled.
    std::thread::sleep(Duration::from_millis(200));
    let before = live();
    let (cache, sync_time) = rt.block_on(async {
        let config = kube::Config::new(url);
        let client = kube::Client::try_from(config).expect("kube client");
        let started = Instant::now();
        let cache = NamespaceCache::start(client);
        let deadline = started + Duration::from_secs(120);
        while !(cache.is_ready() && cache.len() == NAMESPACES) {
            assert!(
                Instant::now() < deadline,
                "cache not synced within 120 s: {cache:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sync_time = started.elapsed();
        // Let the list pages, buffers and the watch request settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        (cache, sync_time)
    });
    std::thread::sleep(Duration::from_millis(200));
    let held = (live() - before) as f64;
    assert_eq!(fake.open_watches(), 1, "the cache watches after its list");

    // (a0) For reference: the same reflector without `strip`, i.e. what the
    // cache would hold if it kept whole Namespaces.
    let url: hyper::Uri = fake.url().parse().expect("fake API URL");
    let before = live();
    let reference_store = rt.block_on(async {
        let client = kube::Client::try_from(kube::Config::new(url)).expect("kube client");
        let api: kube::Api<Namespace> = kube::Api::all(client);
        let (store, writer) = kube::runtime::reflector::store();
        let stream = kube::runtime::reflector::reflector(
            writer,
            kube::runtime::watcher(api, kube::runtime::watcher::Config::default()),
        );
        tokio::spawn(stream.for_each(|_| async {}));
        tokio::time::timeout(Duration::from_secs(120), store.wait_until_ready())
            .await
            .expect("reference store synced within 120 s")
            .expect("reference store");
        tokio::time::sleep(Duration::from_secs(1)).await;
        store
    });
    std::thread::sleep(Duration::from_millis(200));
    let unstripped = (live() - before) as f64;
    assert_eq!(reference_store.len(), NAMESPACES);

    // (b) lookups over random names; (c) full reviews; alternating rounds.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let names: Vec<String> = (0..4096).map(|_| ns_name(rng.below(NAMESPACES))).collect();
    let body = review_body();
    let config = Config::default();
    let ctx = Context {
        config: &config,
        namespace: NamespacePolicy::Off,
        native_sidecars: true,
    };
    // The review must be the real thing: a mutation with a patch.
    let out = nestdock::admission::review(&body, &ctx).expect("review");
    assert!(
        String::from_utf8_lossy(&out.body).contains("\"patch\""),
        "the benchmark review injects"
    );
    let lookups = if quick { 20_000 } else { 400_000 };
    let reviews = if quick { 200 } else { 3_000 };
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let (mut cached_ns, mut get_ns, mut review_ns) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        cached_ns.push(per_iter(lookups, |i| {
            let ns = cache.cached(&names[i & 4095]).expect("cached");
            black_box(namespaces::labels(&ns).get("nestdock.io/mode"));
        }));
        get_ns.push(local.block_on(async {
            let start = Instant::now();
            for i in 0..lookups {
                let ns = cache.get(&names[i & 4095]).await.expect("get");
                black_box(namespaces::labels(&ns).get("nestdock.io/mode"));
            }
            start.elapsed().as_nanos() as f64 / lookups as f64
        }));
        review_ns.push(per_iter(reviews, |_| {
            black_box(nestdock::admission::review(black_box(&body), &ctx).expect("review"));
        }));
    }
    let cached = median(cached_ns);
    let get = median(get_ns);
    let review = median(review_ns);

    let per_ns = held / NAMESPACES as f64;
    println!();
    println!(
        "namespace cache: {NAMESPACES} namespaces, {} of Namespace JSON served, synced in {:.2} s{}",
        human_bytes(served_json as f64),
        sync_time.as_secs_f64(),
        if quick { " (quick run)" } else { "" }
    );
    println!("medians of {rounds} alternating rounds; ratios are within this run");
    println!();
    println!(
        "| measure                                        | value        | ratio                |"
    );
    println!(
        "|------------------------------------------------|--------------|----------------------|"
    );
    println!(
        "| (a) heap held by the synced cache              | {:>12} | {:.0} B per namespace; {:.1}% of the JSON |",
        human_bytes(held),
        per_ns,
        held / served_json as f64 * 100.0
    );
    println!(
        "| (a0) reference: same store without stripping   | {:>12} | {:.0} B per namespace; cache holds {:.0}% of it |",
        human_bytes(unstripped),
        unstripped / NAMESPACES as f64,
        held / unstripped * 100.0
    );
    println!(
        "| (b) lookup: cached(name) + labels()            | {:>12} | {:.3}% of (c)        |",
        human_ns(cached),
        cached / review * 100.0
    );
    println!(
        "| (b') lookup: get(name).await (request path)    | {:>12} | {:.3}% of (c)        |",
        human_ns(get),
        get / review * 100.0
    );
    println!(
        "| (c) full review, no lookup ({:.1} KB pod review) | {:>12} | 1                    |",
        body.len() as f64 / 1000.0,
        human_ns(review)
    );
    println!();
    println!(
        "(b)/(c) = {:.5}; (b')/(c) = {:.5}",
        cached / review,
        get / review
    );
    drop(cache);
    drop(rt);
}
