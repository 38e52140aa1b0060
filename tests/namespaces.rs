//! The namespace cache end to end (docs/behaviour.md, *Namespace policy*):
//! the real `nestdock serve`, with `KUBECONFIG` pointing at a fake Kubernetes
//! API (tests/common/fake_kube.rs) that serves real Namespace JSON, lists and
//! watches, and can fail in ways the real one is hard to make fail. Labels
//! reach the reviews through the watch; the cache follows label changes,
//! survives the API going away, fetches a namespace the watch has not
//! delivered (within a bounded cache), refuses names that are not names, and
//! the API server's version decides where `sidecar: auto` puts the daemon.
//! The policy rules themselves are a table in src/policy.rs; the real
//! kube-apiserver runs them in tests/e2e_apiserver.rs.
//!
//! Most tests share one fake API and one server (each test uses namespaces of
//! its own); the ones that take the API down, hold its list or need another
//! version run their own pair.

mod common;
#[path = "common/fake_kube.rs"]
mod fake_kube;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::harness::{
    admit, assert_unchanged, certs_dir, decode_patch, expect_injected, named, pod_create, pod_in,
    post_review, review, wait_for_status, warnings, Keeper, OwnServer, Proto, Reply, Serve, Served,
};
use fake_kube::{FakeKube, Outage};
use hyper::StatusCode;
use serde_json::{json, Value};

const MODE: &str = "nestdock.io/mode";
const ENFORCE: &str = "nestdock.io/enforce";
const ALLOW_DOOD: &str = "nestdock.io/allow-dood";
const PSA: &str = "pod-security.kubernetes.io/enforce";

/// How long a label change may take to reach reviews through the watch.
const WATCH_DELAY: Duration = Duration::from_secs(5);

/// Namespaces of the shared fake API, there before the server's first list.
const SHARED_NAMESPACES: &[(&str, &[(&str, &str)])] = &[
    ("plain", &[("team", "web")]),
    ("ns-dind", &[(MODE, "dind"), ("team", "ci")]),
    ("ns-enforced", &[(MODE, "dind"), (ENFORCE, "true")]),
    ("ns-enforced-none", &[(MODE, "none"), (ENFORCE, "true")]),
    ("ns-dood-allowed", &[(ALLOW_DOOD, "true")]),
    ("ns-dood", &[(MODE, "dood")]),
    ("ns-baseline", &[(PSA, "baseline")]),
    (
        "ns-restricted",
        &[(PSA, "restricted"), (ALLOW_DOOD, "true")],
    ),
    ("ns-privileged", &[(PSA, "privileged")]),
    ("ns-typo", &[(MODE, "dnid")]),
    ("ns-watch", &[("team", "data")]),
    ("ns-fetch-check", &[]),
];

/// The shared fake API (Kubernetes 1.31) and the server that watches it.
struct Cluster {
    fake: FakeKube,
    served: Served,
    _keeper: Keeper,
}

/// The shared cluster, ready (its `/readyz` answered 200).
async fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    let cluster = CLUSTER.get_or_init(|| {
        let fake = FakeKube::start("31");
        for (name, labels) in SHARED_NAMESPACES {
            fake.set_labels(name, labels);
        }
        // Never dropped: keep its kubeconfig with this process's certificates.
        let kubeconfig = certs_dir().join("kubeconfig-shared.yaml");
        fake.write_kubeconfig(&kubeconfig);
        let (served, keeper) = Serve::new().kubeconfig(&kubeconfig).spawn_shared();
        Cluster {
            fake,
            served,
            _keeper: keeper,
        }
    });
    wait_ready(&cluster.served).await;
    cluster
}

async fn wait_ready(served: &Served) {
    wait_for_status(served, "/readyz", StatusCode::OK, Duration::from_secs(30)).await;
}

/// A fake API of its own and a server watching it, ready.
async fn own_cluster(minor: &str, namespaces: &[(&str, &[(&str, &str)])]) -> (FakeKube, OwnServer) {
    let fake = FakeKube::start(minor);
    for (name, labels) in namespaces {
        fake.set_labels(name, labels);
    }
    let server = Serve::new().kubeconfig(fake.kubeconfig()).spawn();
    wait_ready(&server).await;
    (fake, server)
}

/// Posts a pod CREATE and returns the AdmissionReview's `response`
/// (asserting HTTP 200 and the envelope).
async fn admit_pod(served: &Served, pod: &Value) -> Value {
    let (uid, review) = pod_create(pod);
    admit(served, Proto::H1, &uid, &review).await
}

/// Posts a pod CREATE and returns the raw reply.
async fn post_pod(served: &Served, pod: &Value) -> Reply {
    post_review(served, Proto::H1, &pod_create(pod).1).await
}

/// The code and message of a denial.
fn denial(response: &Value) -> (u64, String) {
    assert_eq!(response["allowed"], false, "{response}");
    assert!(response.get("patch").is_none(), "{response}");
    let code = response["status"]["code"].as_u64().unwrap_or_default();
    let message = response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !message.is_empty(),
        "a denial carries a message: {response}"
    );
    (code, message)
}

fn assert_mentions(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "{n:?} missing from: {text}");
    }
}

/// The daemon's image in a patched pod.
fn daemon_image(patched: &Value) -> String {
    named(patched, "nestdock-dind")["image"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Polls pod CREATE reviews until `done` accepts the response (at most
/// `limit`); returns that response.
async fn poll_review(
    served: &Served,
    pod: &Value,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let reply = post_pod(served, pod).await;
        if reply.status == StatusCode::OK {
            let response = reply.json()["response"].clone();
            if done(&response) {
                return response;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}; last response: {response}\n{}",
                served.log_text()
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}; last reply: {} {}\n{}",
                reply.status,
                reply.text(),
                served.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_patched(response: &Value) -> bool {
    response["allowed"] == true && response.get("patch").is_some()
}

// ---------------------------------------------------------------- readiness

#[tokio::test]
async fn not_ready_and_reviews_get_503_until_the_first_list() {
    let fake = FakeKube::start("31");
    fake.set_labels("builds", &[(MODE, "dind")]);
    fake.hold_lists();
    let server = Serve::new().kubeconfig(fake.kubeconfig()).spawn();
    // The server has asked for the list, and waits for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.lists() == 0 {
        assert!(
            Instant::now() < deadline,
            "the server never listed namespaces:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let readyz = wait_for_status(
        &server,
        "/readyz",
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::ZERO,
    )
    .await;
    assert_mentions(&readyz.text(), &["namespace cache", "first list"]);
    // Liveness does not depend on the API server.
    wait_for_status(&server, "/healthz", StatusCode::OK, Duration::ZERO).await;
    // A pod CREATE cannot be decided yet: HTTP 503 with the reason, so that
    // the API server applies the webhook's failurePolicy.
    let pod = pod_in("builds", "early", &[]);
    let reply = post_pod(&server, &pod).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_mentions(&reply.text(), &["namespace cache", "first list"]);
    // A review that needs no namespace labels is answered meanwhile.
    let (uid, update) = review(
        "UPDATE",
        json!({"group": "", "version": "v1", "kind": "Pod"}),
        pod.clone(),
        pod.clone(),
    );
    assert_unchanged(&admit(&server, Proto::H1, &uid, &update).await);

    fake.release_lists();
    wait_ready(&server).await;
    server.wait_for_log(&["namespace cache synced"]);
    let (patched, _) = expect_injected(&server, Proto::H1, &pod).await;
    assert_eq!(
        patched["metadata"]["annotations"]["nestdock.io/injected"],
        "dind"
    );
}

// ---------------------------------------------------------------- labels decide

#[tokio::test]
async fn namespace_mode_label_injects_unannotated_pods() {
    let c = cluster().await;
    let pod = pod_in("ns-dind", "unannotated", &[]);
    let (patched, response) = expect_injected(&c.served, Proto::H1, &pod).await;
    assert_eq!(response["auditAnnotations"]["mode"], "dind", "{response}");
    assert_eq!(
        patched["metadata"]["annotations"]["nestdock.io/injected"],
        "dind"
    );
    assert_eq!(daemon_image(&patched), "docker:28-dind");

    // The pod's annotation wins over the label: opting out is possible.
    let out = pod_in("ns-dind", "opted-out", &[(MODE, "none")]);
    assert_unchanged(&admit_pod(&c.served, &out).await);
    // A namespace without the label leaves unannotated pods alone.
    assert_unchanged(&admit_pod(&c.served, &pod_in("plain", "untouched", &[])).await);
}

#[tokio::test]
async fn native_sidecar_on_kubernetes_1_31() {
    let c = cluster().await;
    let pod = pod_in("ns-dind", "native", &[]);
    let (patched, response) = expect_injected(&c.served, Proto::H1, &pod).await;
    let first = &patched["spec"]["initContainers"][0];
    assert_eq!(first["name"], "nestdock-dind", "{patched:#}");
    assert_eq!(first["restartPolicy"], "Always", "{patched:#}");
    assert!(warnings(&response).is_empty(), "{response}");
}

#[tokio::test]
async fn plain_container_sidecar_on_kubernetes_1_28() {
    // "28+" as EKS and GKE report it.
    let (_fake, server) = own_cluster("28+", &[("builds", &[(MODE, "dind")])]).await;
    server.wait_for_log(&["API server version read", "native_sidecars=false"]);
    let pod = pod_in("builds", "job", &[]);
    let (patched, response) = expect_injected(&server, Proto::H1, &pod).await;
    assert!(
        patched["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "nestdock-dind"),
        "{patched:#}"
    );
    assert!(
        patched["spec"].get("initContainers").is_none(),
        "{patched:#}"
    );
    assert!(
        !warnings(&response).is_empty(),
        "start order is not guaranteed and the response says so: {response}"
    );
}

// ---------------------------------------------------------------- the cache follows the API

#[tokio::test]
async fn label_changes_through_the_watch_apply_without_restart() {
    let c = cluster().await;
    let unannotated = pod_in("ns-watch", "follow", &[]);
    assert_unchanged(&admit_pod(&c.served, &unannotated).await);

    c.fake.set_label("ns-watch", MODE, "dind");
    poll_review(
        &c.served,
        &unannotated,
        WATCH_DELAY,
        "mode label added",
        is_patched,
    )
    .await;
    expect_injected(&c.served, Proto::H1, &unannotated).await;

    c.fake.set_label("ns-watch", ENFORCE, "true");
    let rootless = pod_in("ns-watch", "rootless", &[(MODE, "dind-rootless")]);
    let response = poll_review(
        &c.served,
        &rootless,
        WATCH_DELAY,
        "enforce label added",
        |r| r["allowed"] == false,
    )
    .await;
    assert_mentions(&denial(&response).1, &["nestdock.io/enforce"]);

    c.fake.set_labels("ns-watch", &[("team", "data")]);
    poll_review(
        &c.served,
        &unannotated,
        WATCH_DELAY,
        "labels removed",
        |r| r["allowed"] == true && r.get("patch").is_none(),
    )
    .await;
    let response = admit_pod(&c.served, &rootless).await;
    let patched = common::apply_patch(&rootless, &decode_patch(&response));
    assert!(
        daemon_image(&patched).contains("dind-rootless"),
        "{patched:#}"
    );

    // No API call per admission: every label came through the watch.
    assert_eq!(c.fake.requests("/api/v1/namespaces/ns-watch"), 0);
}

#[tokio::test]
async fn namespace_the_watch_has_not_delivered_is_fetched_once() {
    let c = cluster().await;
    c.fake.create_unannounced("ns-late", &[(MODE, "dind")]);
    let pod = pod_in("ns-late", "first", &[]);
    expect_injected(&c.served, Proto::H1, &pod).await;
    assert_eq!(c.fake.requests("/api/v1/namespaces/ns-late"), 1);
    c.served
        .wait_for_log(&["namespace fetched directly", "ns-late"]);
    // Remembered: later reviews do not fetch it again.
    expect_injected(&c.served, Proto::H1, &pod_in("ns-late", "second", &[])).await;
    assert_eq!(c.fake.requests("/api/v1/namespaces/ns-late"), 1);

    // A namespace that exists nowhere: HTTP 503 naming it.
    let reply = post_pod(&c.served, &pod_in("ns-nowhere", "lost", &[])).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_mentions(&reply.text(), &["ns-nowhere"]);
    assert!(c.fake.requests("/api/v1/namespaces/ns-nowhere") >= 1);
    // Namespaces from the list are never fetched one by one.
    assert_unchanged(&admit_pod(&c.served, &pod_in("ns-fetch-check", "x", &[])).await);
    assert_eq!(c.fake.requests("/api/v1/namespaces/ns-fetch-check"), 0);
}

/// The API goes away: reviews keep being answered from the last known labels
/// (a namespace never seen gets 503); it comes back with its watch history
/// gone, and a change made meanwhile arrives through a relist.
async fn outage_and_relist(outage: Outage) {
    let (fake, server) = own_cluster("31", &[("builds", &[(MODE, "dind")])]).await;
    let pod = pod_in("builds", "before", &[]);
    let (patched, _) = expect_injected(&server, Proto::H1, &pod).await;
    assert_eq!(daemon_image(&patched), "docker:28-dind");
    let lists_before = fake.lists();

    let watch_requests = fake.requests("/api/v1/namespaces");
    fake.go_down(outage);
    match outage {
        Outage::Unreachable => {
            server.wait_for_log_within(&["namespace watch lost"], Duration::from_secs(10));
        }
        // kube's client retries 503s itself (up to 15 times), so the watcher
        // sees no error yet: wait until the server has hit the outage.
        Outage::Unavailable => {
            let deadline = Instant::now() + Duration::from_secs(10);
            while fake.requests("/api/v1/namespaces") == watch_requests {
                assert!(
                    Instant::now() < deadline,
                    "no new watch request after the outage"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let (patched, _) = expect_injected(&server, Proto::H1, &pod_in("builds", "during", &[])).await;
    assert_eq!(daemon_image(&patched), "docker:28-dind");
    wait_for_status(&server, "/readyz", StatusCode::OK, Duration::ZERO).await;
    let reply = post_pod(&server, &pod_in("created-meanwhile", "x", &[])).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_mentions(&reply.text(), &["created-meanwhile"]);

    fake.set_labels("builds", &[(MODE, "dind-rootless")]);
    fake.come_up();
    // Backoff after the failures (kube's default: 0.8 s doubling, with
    // jitter) plus a relist: well within 30 s.
    let response = poll_review(
        &server,
        &pod_in("builds", "after", &[]),
        Duration::from_secs(30),
        "change made during the outage",
        |r| {
            is_patched(r)
                && common::apply_patch(&pod_in("builds", "after", &[]), &decode_patch(r))["spec"]
                    ["initContainers"][0]["image"]
                    .as_str()
                    .is_some_and(|i| i.contains("dind-rootless"))
        },
    )
    .await;
    assert_eq!(response["auditAnnotations"]["mode"], "dind-rootless");
    assert!(fake.lists() > lists_before, "picked up through a relist");
    server.wait_for_log(&["namespace watch reconnected and relisted"]);
}

#[tokio::test]
async fn api_unreachable_then_back_relists() {
    outage_and_relist(Outage::Unreachable).await;
}

#[tokio::test]
async fn api_unavailable_then_back_relists() {
    outage_and_relist(Outage::Unavailable).await;
}

/// `request.namespace` is the client's to write: a name that is not a
/// DNS-1123 label is denied (code 400, naming the value and what is
/// accepted) and never reaches the API server or the cache. It used to be
/// put into the URL unescaped (`GET /api/v1/namespaces/builds?n=1`).
#[tokio::test]
async fn namespace_names_that_are_not_labels_are_denied_before_any_lookup() {
    let c = cluster().await;
    let before = c.fake.request_log().len();
    for bad in [
        "builds?n=1",
        "builds/../kube-system",
        "Builds",
        "a.b",
        "ns%2fx",
        "-a",
        "",
        &"x".repeat(64),
    ] {
        let mut pod = pod_in(bad, "steered", &[(MODE, "dind")]);
        let (uid, mut review) = pod_create(&pod);
        // The request's namespace and the object's both say it.
        review["request"]["namespace"] = json!(bad);
        pod["metadata"]["namespace"] = json!(bad);
        let response = admit(&c.served, Proto::H1, &uid, &review).await;
        let (code, message) = denial(&response);
        assert_eq!(code, 400, "{bad:?}: {message}");
        assert_mentions(&message, &["DNS-1123", "63"]);
        let shown = format!("{:?}", bad.chars().take(100).collect::<String>());
        assert!(message.contains(&shown), "{shown} missing from: {message}");
    }
    let log = c.fake.request_log();
    let after: Vec<&String> = log[before..]
        .iter()
        .filter(|r| r.starts_with("/api/v1/namespaces/"))
        .collect();
    assert!(
        after.is_empty(),
        "lookups reached the API server: {after:?}"
    );
    // A valid name still works.
    assert_unchanged(&admit_pod(&c.served, &pod_in("plain", "ok", &[])).await);
}

/// Namespaces fetched outside the watch are kept in a bounded cache: 4000
/// distinct names fill it to its bound, the oldest is evicted (fetched again
/// when asked again), the newest is still served from the cache.
#[tokio::test]
async fn four_thousand_fetched_namespaces_stay_within_the_cache_bound() {
    const COUNT: usize = 4000;
    let (fake, server) = own_cluster("31", &[("seed", &[])]).await;
    let names: Vec<String> = (0..COUNT).map(|i| format!("late-{i}")).collect();
    for name in &names {
        fake.create_unannounced(name, &[]);
    }
    // In order (the cache's age order is the order of the fetches).
    for name in &names {
        assert_unchanged(&admit_pod(&server, &pod_in(name, "p", &[])).await);
    }
    for name in [&names[0], &names[COUNT / 2], &names[COUNT - 1]] {
        assert_eq!(
            fake.requests(&format!("/api/v1/namespaces/{name}")),
            1,
            "{name}"
        );
    }
    // The newest is cached; the oldest was evicted and is fetched again.
    assert_unchanged(&admit_pod(&server, &pod_in(&names[COUNT - 1], "q", &[])).await);
    assert_eq!(
        fake.requests(&format!("/api/v1/namespaces/{}", names[COUNT - 1])),
        1
    );
    assert_unchanged(&admit_pod(&server, &pod_in(&names[0], "q", &[])).await);
    assert_eq!(
        fake.requests(&format!("/api/v1/namespaces/{}", names[0])),
        2
    );
    // The log says how many are kept.
    let line = server.wait_for_log(&["namespace fetched directly", "cached=1024"]);
    assert!(line.contains("late-"), "{line}");
}
