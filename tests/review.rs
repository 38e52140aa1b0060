//! The review contract, in-process: the same axum router `nestdock serve`
//! serves, called with `tower::ServiceExt::oneshot` as the transport would
//! call it, without TLS or sockets (tests/server.rs drives the real binary
//! for what needs one: TLS, ALPN, keep-alive, HTTP/2 streams, signals).
//! What the API server relies on: the response echoes the review's uid,
//! apiVersion and kind; a patch is a base64 JSON Patch that applies to the
//! pod as sent and a second pass is empty; denials carry a code and a
//! message; what is not a pod CREATE passes unchanged; a body that is not a
//! readable v1 review is an HTTP error that says why. Namespace policy comes
//! from a [`StaticNamespaces`] source, as the server gets it from its cache.
//! The engine's own rules are tested in tests/engine.rs, the policy rules in
//! src/policy.rs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use common::harness::{
    assert_denied, assert_unchanged, check_envelope, decode_patch, env, named, pod, pod_create,
    pod_in, review, warnings, Reply,
};
use http_body_util::BodyExt as _;
use hyper::{header, Method, Request, StatusCode};
use nestdock::config::Config;
use nestdock::metrics::{Outcome, MODE_UNKNOWN};
use nestdock::namespaces::{NamespaceSource, StaticNamespaces};
use nestdock::server::{router, App, AppOptions};
use serde_json::{json, Value};
use tower::ServiceExt as _;

/// An app with the default config and no namespace policy.
fn app() -> Arc<App> {
    app_with(Config::default(), None)
}

fn app_with(config: Config, namespaces: Option<StaticNamespaces>) -> Arc<App> {
    App::new(AppOptions {
        config,
        namespaces: namespaces.map(|n| Arc::new(n) as Arc<dyn NamespaceSource>),
        max_body_bytes: nestdock::server::DEFAULT_MAX_BODY_BYTES,
        max_inflight_bytes: nestdock::server::DEFAULT_MAX_INFLIGHT_BYTES,
        body_read: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
    })
}

fn dind_review() -> (String, Value) {
    pod_create(&pod("builder", &[("nestdock.io/mode", "dind")]))
}

/// One request through the router.
async fn call(app: &Arc<App>, method: Method, path: &str, body: impl Into<Body>) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap();
    reply_of(router(app.clone()).oneshot(request).await.unwrap()).await
}

async fn reply_of(response: axum::response::Response) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// Posts a review; checks the envelope (uid, apiVersion, kind, JSON);
/// returns `response`.
async fn admit(app: &Arc<App>, uid: &str, review: &Value) -> Value {
    let reply = call(app, Method::POST, "/mutate", review.to_string()).await;
    check_envelope(&reply, uid)
}

/// A pod CREATE that gets a daemon: the patch applies to the pod as sent,
/// and the API server's second call (reinvocation) gets no patch.
async fn injected(app: &Arc<App>, pod: &Value) -> (Value, Value) {
    let (uid, review) = pod_create(pod);
    let response = admit(app, &uid, &review).await;
    let patched = common::apply_patch(pod, &decode_patch(&response));
    let (uid, again) = pod_create(&patched);
    assert_unchanged(&admit(app, &uid, &again).await);
    (patched, response)
}

#[tokio::test]
async fn a_pod_that_asks_gets_a_base64_patch_an_audit_annotation_and_no_second_patch() {
    let app = app();
    let (patched, response) = injected(&app, &pod("plain", &[("nestdock.io/mode", "dind")])).await;
    assert_eq!(response["auditAnnotations"]["mode"], "dind", "{response}");
    assert_eq!(
        patched["metadata"]["annotations"]["nestdock.io/injected"],
        "dind"
    );
    assert_eq!(
        env(named(&patched, "build"), "DOCKER_HOST"),
        Some("unix:///var/run/docker.sock")
    );
    // Counted once per review, by mode and outcome.
    assert_eq!(app.metrics().reviews("dind", Outcome::Injected), 1);
    assert_eq!(app.metrics().reviews("dind", Outcome::Unchanged), 1);
}

#[tokio::test]
async fn warnings_reach_the_response() {
    let mut pod = pod("own-docker-host", &[("nestdock.io/mode", "dind")]);
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "DOCKER_HOST", "value": "tcp://docker.example:2375"}]);
    let (_, response) = injected(&app(), &pod).await;
    assert!(
        warnings(&response)
            .iter()
            .any(|w| w.contains("DOCKER_HOST")),
        "{response}"
    );
}

#[tokio::test]
async fn denials_carry_their_code_message_and_mode() {
    let app = app();
    let bad = pod(
        "bad-mtu",
        &[("nestdock.io/mode", "dind"), ("nestdock.io/mtu", "9")],
    );
    let (uid, review) = pod_create(&bad);
    let response = admit(&app, &uid, &review).await;
    assert!(assert_denied(&response, 400).contains("nestdock.io/mtu"));
    assert_eq!(response["auditAnnotations"]["mode"], "dind", "{response}");
    let dood = pod("dood", &[("nestdock.io/mode", "dood")]);
    let (uid, review) = pod_create(&dood);
    assert!(assert_denied(&admit(&app, &uid, &review).await, 403).contains("dood"));
    assert_eq!(app.metrics().reviews("dind", Outcome::Denied), 1);
    assert_eq!(app.metrics().reviews("dood", Outcome::Denied), 1);
}

#[tokio::test]
async fn mode_none_other_kinds_operations_and_subresources_pass_unchanged() {
    let app = app();
    let (uid, review_none) = pod_create(&pod("none", &[("nestdock.io/mode", "none")]));
    let response = admit(&app, &uid, &review_none).await;
    assert_unchanged(&response);
    assert_eq!(response["auditAnnotations"]["mode"], "none", "{response}");

    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "ci",
                     "annotations": {"nestdock.io/mode": "dind"}},
        "data": {"a": "b"}
    });
    let pod_kind = json!({"group": "", "version": "v1", "kind": "Pod"});
    let dind = pod("updated", &[("nestdock.io/mode", "dind")]);
    for (operation, kind, object, old) in [
        (
            "CREATE",
            json!({"group": "", "version": "v1", "kind": "ConfigMap"}),
            config_map,
            Value::Null,
        ),
        ("UPDATE", pod_kind.clone(), dind.clone(), dind.clone()),
        ("DELETE", pod_kind.clone(), Value::Null, dind.clone()),
    ] {
        let (uid, review) = review(operation, kind, object, old);
        let response = admit(&app, &uid, &review).await;
        assert_unchanged(&response);
        assert!(response.get("auditAnnotations").is_none(), "{response}");
    }
    assert_eq!(app.metrics().reviews(MODE_UNKNOWN, Outcome::Skipped), 3);
}

#[tokio::test]
async fn dry_run_is_mutated_and_the_timeout_query_is_ignored_for_routing() {
    let app = app();
    let (uid, mut review) = pod_create(&pod("dry", &[("nestdock.io/mode", "dind")]));
    review["request"]["dryRun"] = json!(true);
    let reply = call(
        &app,
        Method::POST,
        "/mutate?timeout=10s",
        review.to_string(),
    )
    .await;
    let response = check_envelope(&reply, &uid);
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
}

// ---------------------------------------------------------------- bodies that are not reviews

#[tokio::test]
async fn malformed_truncated_empty_and_nested_bodies_are_400() {
    let app = app();
    let (_, review) = dind_review();
    let whole = serde_json::to_vec(&review).unwrap();
    let mut nested = "[".repeat(100_000).into_bytes();
    nested.extend(std::iter::repeat_n(b']', 100_000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            whole[..whole.len() / 2].to_vec(),
            "malformed JSON",
        ),
        (
            "one byte short",
            whole[..whole.len() - 1].to_vec(),
            "malformed JSON",
        ),
        ("empty", Vec::new(), "malformed JSON"),
        ("whitespace", b" \n\t ".to_vec(), "malformed JSON"),
        (
            "not UTF-8",
            b"{\"apiVersion\": \"\xff\xfe\"}".to_vec(),
            "malformed JSON",
        ),
        (
            "trailing garbage",
            [&whole[..], b"}"].concat(),
            "malformed JSON",
        ),
        ("deeply nested", nested, "malformed JSON"),
        ("null", b"null".to_vec(), "JSON object"),
        ("array", b"[1,2]".to_vec(), "JSON object"),
        ("string", b"\"AdmissionReview\"".to_vec(), "JSON object"),
    ];
    for (what, body, reason) in cases {
        let reply = call(&app, Method::POST, "/mutate", body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            reply.text()
        );
        assert!(reply.text().contains(reason), "{what}: {}", reply.text());
    }
    assert_eq!(app.metrics().reviews(MODE_UNKNOWN, Outcome::Error), 10);
}

#[tokio::test]
async fn wrong_api_version_kind_and_shape_are_400_naming_the_problem() {
    let app = app();
    let (_, good) = dind_review();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            with(&|v| v["apiVersion"] = json!("admission.k8s.io/v1beta1")),
            "admission.k8s.io/v1beta1",
        ),
        (with(&|v| v["apiVersion"] = json!("v1")), "\"v1\""),
        (
            with(&|v| {
                v.as_object_mut().unwrap().remove("apiVersion");
            }),
            "apiVersion is missing",
        ),
        (
            with(&|v| v["apiVersion"] = json!(1)),
            "apiVersion must be the string",
        ),
        (
            with(&|v| v["kind"] = json!("Pod")),
            "unsupported kind \"Pod\"",
        ),
        (
            with(&|v| {
                v.as_object_mut().unwrap().remove("kind");
            }),
            "kind is missing",
        ),
        (
            with(&|v| {
                v.as_object_mut().unwrap().remove("request");
            }),
            "no request",
        ),
        (with(&|v| v["request"] = Value::Null), "no request"),
        (
            with(&|v| v["request"] = json!([])),
            "request must be a JSON object",
        ),
        (
            with(&|v| {
                v["request"].as_object_mut().unwrap().remove("uid");
            }),
            "uid",
        ),
        (
            with(&|v| v["request"]["operation"] = json!("EXPLODE")),
            "operation",
        ),
        (
            with(&|v| v["request"]["kind"] = json!("Pod")),
            "request.kind",
        ),
    ];
    for (body, reason) in cases {
        let reply = call(&app, Method::POST, "/mutate", body.to_string()).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{reason}: {}",
            reply.text()
        );
        assert!(
            reply.text().contains(reason),
            "want {reason:?} in: {}",
            reply.text()
        );
    }
}

#[tokio::test]
async fn pod_create_with_a_null_object_is_allowed_unchanged() {
    // The API server never sends this; if it did, there is nothing to mutate,
    // and the answer is still an AdmissionReview that echoes the uid.
    let app = app();
    let (uid, mut review) = dind_review();
    review["request"]["object"] = Value::Null;
    let response = admit(&app, &uid, &review).await;
    assert_unchanged(&response);
    // An object that is not an object is a denial (400) naming it.
    let (uid, mut review) = dind_review();
    review["request"]["object"] = json!("a pod");
    let response = admit(&app, &uid, &review).await;
    let message = assert_denied(&response, 400);
    assert!(message.contains("request.object"), "{message}");
}

#[tokio::test]
async fn wrong_content_type_is_415_and_a_missing_one_is_read_as_json() {
    let app = app();
    let (uid, review) = dind_review();
    let body = serde_json::to_vec(&review).unwrap();
    for (content_type, status) in [
        (Some("text/plain"), 415),
        (Some("application/x-www-form-urlencoded"), 415),
        (Some("application/yaml"), 415),
        // With parameters and in any case it is JSON, and so is no header.
        (Some("application/json; charset=utf-8"), 200),
        (Some("Application/JSON"), 200),
        (None, 200),
    ] {
        let mut request = Request::builder().method(Method::POST).uri("/mutate");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(Body::from(body.clone())).unwrap();
        let reply = reply_of(router(app.clone()).oneshot(request).await.unwrap()).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{content_type:?}: {}",
            reply.text()
        );
        if status == 415 {
            let text = reply.text();
            assert!(
                text.contains(content_type.unwrap()) && text.contains("application/json"),
                "{text}"
            );
        } else {
            assert_eq!(reply.json()["response"]["uid"], uid);
        }
    }
}

// ---------------------------------------------------------------- routes

#[tokio::test]
async fn paths_and_methods_outside_the_api_say_what_is_served() {
    let app = app();
    let reply = call(&app, Method::GET, "/nope", "").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.text().contains("/nope") && reply.text().contains("POST /mutate"));
    let reply = call(&app, Method::POST, "/validate", "").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = call(&app, Method::GET, "/mutate", "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers[header::ALLOW], "POST");
    for path in ["/healthz", "/readyz"] {
        let reply = call(&app, Method::GET, path, "").await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.text().trim(), "ok");
    }
    app.readiness().set(false);
    let reply = call(&app, Method::GET, "/readyz", "").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.text().contains("shutting down"), "{}", reply.text());
}

#[tokio::test]
async fn namespace_labels_come_from_the_namespace_source() {
    let app = app_with(
        Config::default(),
        Some(StaticNamespaces::new([
            ("ci", &[("nestdock.io/mode", "dind")][..]),
            ("plain", &[][..]),
        ])),
    );
    // The namespace's mode applies to a pod that asks nothing.
    let (patched, response) = injected(&app, &pod_in("ci", "unannotated", &[])).await;
    assert_eq!(response["auditAnnotations"]["mode"], "dind");
    assert!(patched["spec"]["initContainers"][0]["name"] == "nestdock-dind");
    // No label, no default: unchanged.
    let (uid, review) = pod_create(&pod_in("plain", "left-alone", &[]));
    assert_unchanged(&admit(&app, &uid, &review).await);
    // A namespace the source cannot deliver: 503, so that the API server
    // applies the webhook's failurePolicy.
    let (_, review) = pod_create(&pod_in("unknown", "p", &[]));
    let reply = call(&app, Method::POST, "/mutate", review.to_string()).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reply.text().contains("namespace policy unavailable") && reply.text().contains("unknown"),
        "{}",
        reply.text()
    );
    // A namespace that is not a name is denied before any lookup.
    let (uid, mut review) = pod_create(&pod_in("ci", "p", &[]));
    review["request"]["namespace"] = json!("../../api/v1/secrets");
    let message = assert_denied(&admit(&app, &uid, &review).await, 400);
    assert!(message.contains("DNS-1123"), "{message}");
}

#[tokio::test]
async fn sidecar_auto_follows_the_namespace_sources_cluster() {
    let old = app_with(
        Config::default(),
        Some(StaticNamespaces::new([("ci", &[][..])]).without_native_sidecars()),
    );
    let (patched, response) =
        injected(&old, &pod_in("ci", "p", &[("nestdock.io/mode", "dind")])).await;
    assert!(
        patched["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "nestdock-dind"),
        "{patched:#}"
    );
    assert!(!warnings(&response).is_empty(), "{response}");
}
