//! AdmissionReview in, AdmissionReview bytes out (SPEC section 5). Pure: no I/O,
//! so the server only moves bytes and the rules can be tested without sockets.
//!
//! Two choices worth knowing:
//!
//! - The pod is taken out of the review as raw JSON and handed to the engine
//!   as it is. Going through typed objects would drop unknown fields or
//!   normalise values, and a patch built against a normalised pod may not
//!   apply to the pod the API server holds, which fails the pod's creation
//!   with HTTP 500 even under `failurePolicy: Ignore`. The rest of the request
//!   (uid, kind, operation, ...) is read with kube's admission types.
//! - The response is written here, not with kube's `AdmissionResponse`: that
//!   type serializes the patch as an array of numbers (kube-rs issue 1781),
//!   while the API server wants a base64 string.

use base64::Engine as _;
use kube::core::admission::{AdmissionReview, Operation};
use kube::core::DynamicObject;
use serde::Serialize;
use serde_json::Value;

use crate::engine::{self, Context, Outcome};
use crate::mode::Mode;

/// The only AdmissionReview version accepted (the manifests register v1 only).
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The kind of a review.
pub const KIND: &str = "AdmissionReview";

/// A body that is not a readable v1 AdmissionReview. The server answers with
/// this HTTP status and the message as plain text: there is no uid to echo, so
/// no AdmissionReview can be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ReviewError {
    /// HTTP status (400).
    pub status: u16,
    pub message: String,
}

impl ReviewError {
    fn bad_request(message: impl Into<String>) -> ReviewError {
        ReviewError {
            status: 400,
            message: message.into(),
        }
    }
}

/// What became of the request, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A pod that got a patch.
    Injected,
    /// A pod that was evaluated and allowed as it is.
    Unchanged,
    /// A pod that was refused.
    Denied,
    /// Not a pod CREATE (another kind, a subresource, another operation, no
    /// object): allowed without asking the engine.
    Skipped,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Injected => "injected",
            Verdict::Unchanged => "unchanged",
            Verdict::Denied => "denied",
            Verdict::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the log line of a review needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub uid: String,
    /// The request's namespace, else the object's; empty when neither says.
    pub namespace: String,
    /// The object's name, else its `generateName` (pods of a ReplicaSet or Job
    /// have no name yet at admission); empty when neither is set.
    pub name: String,
    /// `group/version/kind` of the object (`v1/Pod` for core pods).
    pub kind: String,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: &'static str,
    pub dry_run: bool,
    /// The mode that applied, when the engine evaluated a pod.
    pub mode: Option<Mode>,
    pub verdict: Verdict,
    /// The denial's status code, when denied.
    pub code: Option<u16>,
}

/// A handled review: the response body (an AdmissionReview, JSON) and what
/// the log line needs.
#[derive(Debug, Clone)]
pub struct Reviewed {
    pub body: Vec<u8>,
    pub summary: Summary,
}

/// Handles one AdmissionReview body: pod CREATEs go through
/// [`engine::mutate`], everything else is allowed unchanged.
pub fn review(body: &[u8], ctx: &Context<'_>) -> Result<Reviewed, ReviewError> {
    parse(body)?.answer(ctx)
}

/// A readable v1 review, not yet answered. The server looks at
/// [`Parsed::pod_namespace`] to fetch the namespace's labels, then calls
/// [`Parsed::answer`] with the matching [`Context`].
#[derive(Debug)]
pub struct Parsed {
    api_version: String,
    kind: String,
    uid: String,
    summary: Summary,
    /// The pod of a pod CREATE (exactly as sent); `None` for anything the
    /// engine does not evaluate.
    pod: Option<Value>,
}

impl Parsed {
    /// The namespace whose policy applies, when the engine will evaluate a pod.
    pub fn pod_namespace(&self) -> Option<&str> {
        self.pod.as_ref().map(|_| self.summary.namespace.as_str())
    }

    /// What the log line needs, as far as known before answering.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Decides (through the engine for a pod CREATE) and writes the response.
    pub fn answer(self, ctx: &Context<'_>) -> Result<Reviewed, ReviewError> {
        let Parsed {
            api_version,
            kind,
            uid,
            mut summary,
            pod,
        } = self;
        let mut response = Response {
            uid: &uid,
            allowed: true,
            patch_type: None,
            patch: None,
            warnings: &[],
            audit_annotations: None,
            status: None,
        };
        let Some(pod) = pod else {
            let body = encode(&api_version, &kind, response)?;
            return Ok(Reviewed { body, summary });
        };
        if !pod.is_object() {
            summary.verdict = Verdict::Denied;
            summary.code = Some(400);
            response.allowed = false;
            let message = format!(
                "request.object must be a Pod object, found {}",
                json_type(&pod)
            );
            response.status = Some(Status {
                code: 400,
                message: &message,
            });
            let body = encode(&api_version, &kind, response)?;
            return Ok(Reviewed { body, summary });
        }
        let decision = engine::mutate(&pod, ctx);
        summary.mode = Some(decision.mode);
        response.warnings = &decision.warnings;
        response.audit_annotations = Some(AuditAnnotations {
            mode: decision.mode.as_str(),
        });
        let patch_b64;
        match &decision.outcome {
            Outcome::Patched(patch) if !patch.0.is_empty() => {
                let json = serde_json::to_vec(patch).map_err(|e| ReviewError {
                    status: 500,
                    message: format!("cannot serialize the JSON patch: {e}"),
                })?;
                patch_b64 = base64::engine::general_purpose::STANDARD.encode(json);
                response.patch_type = Some("JSONPatch");
                response.patch = Some(&patch_b64);
                summary.verdict = Verdict::Injected;
            }
            Outcome::Patched(_) | Outcome::Unchanged => summary.verdict = Verdict::Unchanged,
            Outcome::Denied(denial) => {
                response.allowed = false;
                response.status = Some(Status {
                    code: denial.code,
                    message: &denial.message,
                });
                summary.verdict = Verdict::Denied;
                summary.code = Some(denial.code);
            }
        }
        let body = encode(&api_version, &kind, response)?;
        Ok(Reviewed { body, summary })
    }
}

/// Reads a review: a body that is not a readable v1 AdmissionReview is an
/// error (HTTP 400 naming what is wrong).
pub fn parse(body: &[u8]) -> Result<Parsed, ReviewError> {
    let mut doc: Value = serde_json::from_slice(body)
        .map_err(|e| ReviewError::bad_request(format!("malformed JSON: {e}")))?;
    let Some(top) = doc.as_object_mut() else {
        return Err(ReviewError::bad_request(format!(
            "the body must be a JSON object (an {KIND}), found {}",
            json_type(&doc)
        )));
    };
    check_type_meta(top)?;

    let object = match top.get_mut("request") {
        None | Some(Value::Null) => {
            return Err(ReviewError::bad_request(format!(
                "the {KIND} has no request (a {API_VERSION} {KIND} sent by the API server always has one)"
            )))
        }
        Some(Value::Object(request)) => {
            // Not needed: UPDATE's old object (not read, not worth parsing).
            request.remove("oldObject");
            request.remove("object")
        }
        Some(other) => {
            return Err(ReviewError::bad_request(format!(
                "request must be a JSON object, found {}",
                json_type(other)
            )))
        }
    };
    let object = object.filter(|o| !o.is_null());

    let review: AdmissionReview<DynamicObject> =
        serde_path_to_error::deserialize(doc).map_err(|e| {
            ReviewError::bad_request(format!("invalid {KIND} at {}: {}", e.path(), e.inner()))
        })?;
    let Some(request) = review.request else {
        return Err(ReviewError::bad_request(format!(
            "the {KIND} has no request"
        )));
    };

    let meta = object.as_ref().and_then(|o| o.get("metadata"));
    let meta_str = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let namespace = request
        .namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| meta_str("namespace").to_string());
    let name = [
        request.name.as_str(),
        meta_str("name"),
        meta_str("generateName"),
    ]
    .into_iter()
    .find(|s| !s.is_empty())
    .unwrap_or("")
    .to_string();
    let gvk = &request.kind;
    let kind = if gvk.group.is_empty() {
        format!("{}/{}", gvk.version, gvk.kind)
    } else {
        format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind)
    };
    let is_pod = gvk.group.is_empty() && gvk.version == "v1" && gvk.kind == "Pod";
    let is_subresource = request
        .sub_resource
        .as_deref()
        .is_some_and(|s| !s.is_empty());
    let evaluated = is_pod && !is_subresource && request.operation == Operation::Create;
    let summary = Summary {
        uid: request.uid.clone(),
        namespace,
        name,
        kind,
        operation: operation_name(&request.operation),
        dry_run: request.dry_run,
        mode: None,
        verdict: Verdict::Skipped,
        code: None,
    };
    Ok(Parsed {
        api_version: review.types.api_version,
        kind: review.types.kind,
        uid: request.uid,
        summary,
        pod: object.filter(|_| evaluated),
    })
}

/// Checks `apiVersion` and `kind` before anything else, so that a review in
/// another version is refused by name rather than by a confusing field error.
fn check_type_meta(top: &serde_json::Map<String, Value>) -> Result<(), ReviewError> {
    match top.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(Value::String(v)) => {
            return Err(ReviewError::bad_request(format!(
                "unsupported {KIND} apiVersion {v:?}: accepted is {API_VERSION:?} \
                 (register the webhook with admissionReviewVersions: [\"v1\"])"
            )))
        }
        Some(other) => {
            return Err(ReviewError::bad_request(format!(
                "apiVersion must be the string {API_VERSION:?}, found {}",
                json_type(other)
            )))
        }
        None => {
            return Err(ReviewError::bad_request(format!(
                "apiVersion is missing: accepted is {API_VERSION:?}"
            )))
        }
    }
    match top.get("kind") {
        Some(Value::String(k)) if k == KIND => Ok(()),
        Some(Value::String(k)) => Err(ReviewError::bad_request(format!(
            "unsupported kind {k:?}: accepted is {KIND:?}"
        ))),
        Some(other) => Err(ReviewError::bad_request(format!(
            "kind must be the string {KIND:?}, found {}",
            json_type(other)
        ))),
        None => Err(ReviewError::bad_request(format!(
            "kind is missing: accepted is {KIND:?}"
        ))),
    }
}

fn operation_name(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The response review, exactly as the API server reads it.
#[derive(Serialize)]
struct ReviewOut<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    response: Response<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    /// Base64 of the JSON Patch array.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
    /// Key `mode` without a slash: the API server prefixes the webhook's name
    /// and drops keys that already contain one.
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_annotations: Option<AuditAnnotations<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status<'a>>,
}

#[derive(Serialize)]
struct AuditAnnotations<'a> {
    mode: &'a str,
}

#[derive(Serialize)]
struct Status<'a> {
    code: u16,
    message: &'a str,
}

fn encode(api_version: &str, kind: &str, response: Response<'_>) -> Result<Vec<u8>, ReviewError> {
    serde_json::to_vec(&ReviewOut {
        api_version,
        kind,
        response,
    })
    .map_err(|e| ReviewError {
        status: 500,
        message: format!("cannot serialize the {KIND}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::NamespacePolicy;
    use serde_json::json;

    fn ctx(config: &Config) -> Context<'_> {
        Context {
            config,
            namespace: NamespacePolicy::Off,
            native_sidecars: true,
        }
    }

    fn review_json(request: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "request": request,
        }))
        .unwrap()
    }

    fn request(kind: Value, operation: &str, object: Value) -> Value {
        json!({
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": kind,
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "namespace": "team-a",
            "operation": operation,
            "userInfo": {"username": "admin"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
        })
    }

    fn run(body: &[u8]) -> Result<(Value, Summary), ReviewError> {
        let config = Config::default();
        let out = review(body, &ctx(&config))?;
        Ok((serde_json::from_slice(&out.body).unwrap(), out.summary))
    }

    #[test]
    fn other_kinds_are_allowed_unchanged_and_echo_the_uid() {
        let body = review_json(request(
            json!({"group": "", "version": "v1", "kind": "ConfigMap"}),
            "CREATE",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}),
        ));
        let (out, summary) = run(&body).unwrap();
        assert_eq!(
            out,
            json!({
                "apiVersion": API_VERSION,
                "kind": KIND,
                "response": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true}
            })
        );
        assert_eq!(summary.verdict, Verdict::Skipped);
        assert_eq!(summary.name, "cm");
        assert_eq!(summary.namespace, "team-a");
        assert_eq!(summary.kind, "v1/ConfigMap");
    }

    #[test]
    fn pod_updates_subresources_and_deletes_are_skipped() {
        let pod_kind = json!({"group": "", "version": "v1", "kind": "Pod"});
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
        let update = review_json(request(pod_kind.clone(), "UPDATE", pod.clone()));
        assert_eq!(run(&update).unwrap().1.verdict, Verdict::Skipped);
        let mut sub = request(pod_kind.clone(), "CREATE", pod.clone());
        sub["subResource"] = json!("binding");
        assert_eq!(run(&review_json(sub)).unwrap().1.verdict, Verdict::Skipped);
        let delete = review_json(request(pod_kind.clone(), "DELETE", Value::Null));
        assert_eq!(run(&delete).unwrap().1.verdict, Verdict::Skipped);
        let apps_pod = json!({"group": "example.com", "version": "v1", "kind": "Pod"});
        let other = review_json(request(apps_pod, "CREATE", pod));
        assert_eq!(run(&other).unwrap().1.verdict, Verdict::Skipped);
    }

    #[test]
    fn unreadable_reviews_are_400_with_a_reason() {
        let err = run(b"{not json").unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.message.starts_with("malformed JSON"), "{err}");

        let err = run(br#"[1]"#).unwrap_err();
        assert!(err.message.contains("JSON object"), "{err}");

        let v1beta1 =
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": KIND, "request": {}});
        let err = run(&serde_json::to_vec(&v1beta1).unwrap()).unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.message.contains("admission.k8s.io/v1beta1"), "{err}");
        assert!(err.message.contains(API_VERSION), "{err}");

        let wrong_kind = json!({"apiVersion": API_VERSION, "kind": "Pod", "request": {}});
        let err = run(&serde_json::to_vec(&wrong_kind).unwrap()).unwrap_err();
        assert!(err.message.contains("\"Pod\""), "{err}");

        let no_request = json!({"apiVersion": API_VERSION, "kind": KIND});
        let err = run(&serde_json::to_vec(&no_request).unwrap()).unwrap_err();
        assert!(err.message.contains("no request"), "{err}");

        let mut bad = request(
            json!({"group": "", "version": "v1", "kind": "Pod"}),
            "EXPLODE",
            Value::Null,
        );
        bad.as_object_mut().unwrap().remove("uid");
        let err = run(&review_json(bad)).unwrap_err();
        assert!(err.message.contains("request"), "{err}");
    }

    #[test]
    fn verdict_names() {
        let names: Vec<_> = [
            Verdict::Injected,
            Verdict::Unchanged,
            Verdict::Denied,
            Verdict::Skipped,
        ]
        .iter()
        .map(|v| v.to_string())
        .collect();
        assert_eq!(names, ["injected", "unchanged", "denied", "skipped"]);
    }
}
