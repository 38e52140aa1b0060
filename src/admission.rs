//! AdmissionReview in, AdmissionReview bytes out (docs/behaviour.md, *The server*). Pure: no I/O,
//! so the server only moves bytes and the rules can be tested without sockets.
//!
//! Two choices worth knowing:
//!
//! - The review is read borrowed and typed: only the fields a decision needs
//!   (uid, kind, operation, namespace, the object as raw JSON), strings
//!   borrowed from the body, no tree of the whole document. The pod is read
//!   the same way by [`crate::pod`], and every patch is built against the
//!   object exactly as it was sent: a patch that does not apply fails the
//!   pod's creation with HTTP 500 even under `failurePolicy: Ignore`. The
//!   `oldObject` of an UPDATE and `userInfo` are skipped, not parsed.
//! - The response is written here, not with kube's `AdmissionResponse`: that
//!   type serializes the patch as an array of numbers (kube-rs issue 1781),
//!   while the API server wants a base64 string.

use std::borrow::Cow;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use axum::http::StatusCode;

use crate::engine::{self, Context, Effect, Outcome};
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
    pub status: StatusCode,
    pub message: String,
}

impl ReviewError {
    fn bad_request(message: impl Into<String>) -> ReviewError {
        ReviewError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
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
    pub outcome: Outcome,
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
pub struct Parsed<'a> {
    api_version: Cow<'a, str>,
    kind: Cow<'a, str>,
    uid: Cow<'a, str>,
    summary: Summary,
    /// The pod of a pod CREATE, read (or why it cannot be); `None` for
    /// anything the engine does not evaluate.
    pod: Option<Result<crate::pod::Pod<'a>, String>>,
}

impl<'a> Parsed<'a> {
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
        let pod = match pod {
            None => {
                let body = encode(&api_version, &kind, response)?;
                return Ok(Reviewed { body, summary });
            }
            Some(Err(message)) => {
                summary.outcome = Outcome::Denied;
                summary.code = Some(400);
                response.allowed = false;
                response.status = Some(Status {
                    code: 400,
                    message: &message,
                });
                let body = encode(&api_version, &kind, response)?;
                return Ok(Reviewed { body, summary });
            }
            Some(Ok(pod)) => pod,
        };
        let decision = engine::mutate_pod(&pod, ctx);
        let denial_message = match &decision.effect {
            Effect::Denied(denial) => denial.message(),
            _ => String::new(),
        };
        summary.mode = Some(decision.mode);
        summary.outcome = decision.outcome();
        response.warnings = &decision.warnings;
        response.audit_annotations = Some(AuditAnnotations {
            mode: decision.mode.as_str(),
        });
        match &decision.effect {
            Effect::Patched(patch) if !patch.is_empty() => {
                response.patch_type = Some("JSONPatch");
                response.patch = Some(patch.as_json());
            }
            Effect::Patched(_) | Effect::Unchanged => {}
            Effect::Denied(denial) => {
                response.allowed = false;
                response.status = Some(Status {
                    code: denial.code,
                    message: &denial_message,
                });
                summary.code = Some(denial.code);
            }
        }
        let body = encode(&api_version, &kind, response)?;
        Ok(Reviewed { body, summary })
    }
}

impl Parsed<'_> {
    /// Denies the review without asking the engine (the server's own checks
    /// on the request, e.g. a namespace name that is not one): an
    /// AdmissionReview with `allowed: false` and `status`.
    pub fn deny(self, code: u16, message: &str) -> Result<Reviewed, ReviewError> {
        let mut summary = self.summary;
        summary.outcome = Outcome::Denied;
        summary.code = Some(code);
        let response = Response {
            uid: &self.uid,
            allowed: false,
            patch_type: None,
            patch: None,
            warnings: &[],
            audit_annotations: None,
            status: Some(Status { code, message }),
        };
        let body = encode(&self.api_version, &self.kind, response)?;
        Ok(Reviewed { body, summary })
    }
}

/// The review's envelope: only what is checked or echoed.
#[derive(Deserialize)]
struct ReviewIn<'a> {
    #[serde(rename = "apiVersion", borrow, default)]
    api_version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    request: Option<&'a RawValue>,
}

/// The request fields a decision and its log line need. `O` is how the
/// object is read: straight into the typed pod on the fast path, as raw JSON
/// on the checked path.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
struct RequestIn<'a, O> {
    #[serde(borrow)]
    uid: Cow<'a, str>,
    #[serde(borrow)]
    kind: GroupVersionKind<'a>,
    #[serde(borrow, default)]
    sub_resource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    operation: Cow<'a, str>,
    #[serde(default)]
    dry_run: Option<bool>,
    #[serde(default = "Option::default")]
    object: Option<O>,
}

/// Any object's metadata, for the log line of a review nestdock skips.
#[derive(Deserialize)]
struct MetadataOnly<'a> {
    #[serde(borrow, default)]
    metadata: Option<crate::pod::Metadata<'a>>,
}

#[derive(Deserialize)]
struct GroupVersionKind<'a> {
    #[serde(borrow, default)]
    group: Cow<'a, str>,
    #[serde(borrow)]
    version: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
}

/// Reads a review: a body that is not a readable v1 AdmissionReview is an
/// error (HTTP 400 naming what is wrong).
pub fn parse(body: &[u8]) -> Result<Parsed<'_>, ReviewError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ReviewError::bad_request(format!("malformed JSON: not UTF-8 ({e})")))?;
    // One pass over a well-formed review; anything else is read again,
    // field by field, to say exactly what is wrong.
    // Whatever a review holds, what is kept of it is bounded in entries.
    if let Ok(review) = crate::pod::bounded(|| serde_json::from_str::<ReviewFast<'_>>(text)) {
        if review.api_version == API_VERSION && review.kind == KIND {
            if let Some(parsed) = finish_fast(review) {
                return Ok(parsed);
            }
        }
    }
    crate::pod::bounded(|| parse_checked(text))
}

/// A well-formed v1 review of a pod (or of an object that reads as one),
/// read in one pass: the object is read as a [`crate::pod::Pod`] directly.
#[derive(Deserialize)]
struct ReviewFast<'a> {
    #[serde(rename = "apiVersion", borrow)]
    api_version: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    request: RequestIn<'a, crate::pod::Pod<'a>>,
}

/// The fast path's [`finish`]: only a pod CREATE with its object, or
/// `None` to take the checked path.
fn finish_fast(review: ReviewFast<'_>) -> Option<Parsed<'_>> {
    let r = review.request;
    let gvk = &r.kind;
    let pod_create = gvk.group.is_empty()
        && gvk.version == "v1"
        && gvk.kind == "Pod"
        && r.operation == "CREATE"
        && r.sub_resource.as_deref().is_none_or(str::is_empty);
    if !pod_create {
        return None;
    }
    let pod = r.object?;
    let meta = pod.metadata.as_ref();
    let (namespace, name) = log_names(&r.namespace, &r.name, meta);
    let summary = Summary {
        uid: r.uid.to_string(),
        namespace,
        name,
        kind: "v1/Pod".to_string(),
        operation: "CREATE",
        dry_run: r.dry_run.unwrap_or(false),
        mode: None,
        outcome: Outcome::Skipped,
        code: None,
    };
    Some(Parsed {
        api_version: review.api_version,
        kind: review.kind,
        uid: r.uid,
        summary,
        pod: Some(Ok(pod)),
    })
}

/// [`parse`] one check at a time, for the message of a review that is not
/// well-formed.
fn parse_checked(text: &str) -> Result<Parsed<'_>, ReviewError> {
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        // Let serde name a syntax error; otherwise say what was found.
        // A full parse (only for bodies that are refused anyway) so that
        // nesting past serde_json's recursion limit counts as malformed.
        let found = match serde_json::from_str::<serde_json::Value>(text) {
            Err(e) => return Err(ReviewError::bad_request(format!("malformed JSON: {e}"))),
            Ok(serde_json::Value::Null) => "null",
            Ok(serde_json::Value::Bool(_)) => "a boolean",
            Ok(serde_json::Value::Number(_)) => "a number",
            Ok(serde_json::Value::String(_)) => "a string",
            Ok(serde_json::Value::Array(_)) => "an array",
            Ok(serde_json::Value::Object(_)) => "an object",
        };
        return Err(ReviewError::bad_request(format!(
            "the body must be a JSON object (an {KIND}), found {found}"
        )));
    }
    let review: ReviewIn<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ReviewError::bad_request(format!("malformed JSON: {e}"))
        } else {
            ReviewError::bad_request(format!("invalid {KIND}: {e}"))
        }
    })?;
    let api_version = type_meta("apiVersion", review.api_version, API_VERSION)?;
    if api_version != API_VERSION {
        return Err(ReviewError::bad_request(format!(
            "unsupported {KIND} apiVersion {api_version:?}: accepted is {API_VERSION:?} \
             (register the webhook with admissionReviewVersions: [\"v1\"])"
        )));
    }
    let kind = type_meta("kind", review.kind, KIND)?;
    if kind != KIND {
        return Err(ReviewError::bad_request(format!(
            "unsupported kind {kind:?}: accepted is {KIND:?}"
        )));
    }
    let request = match review.request {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => Some(raw),
    }
    .ok_or_else(|| {
        ReviewError::bad_request(format!(
            "the {KIND} has no request (a {API_VERSION} {KIND} sent by the API server always has one)"
        ))
    })?;
    if !request.get().starts_with('{') {
        return Err(ReviewError::bad_request(format!(
            "request must be a JSON object, found {}",
            json_type(request)
        )));
    }
    let mut de = serde_json::Deserializer::from_str(request.get());
    let request: RequestIn<'_, &RawValue> =
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            ReviewError::bad_request(format!(
                "invalid {KIND} at request.{}: {}",
                e.path(),
                e.inner()
            ))
        })?;
    finish(api_version, kind, request)
}

/// Turns a read request into a [`Parsed`]: the operation checked, the pod of
/// a pod CREATE read, the names for the log line.
fn finish<'a>(
    api_version: Cow<'a, str>,
    kind: Cow<'a, str>,
    request: RequestIn<'a, &'a RawValue>,
) -> Result<Parsed<'a>, ReviewError> {
    let operation = match request.operation.as_ref() {
        "CREATE" => "CREATE",
        "UPDATE" => "UPDATE",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        other => {
            return Err(ReviewError::bad_request(format!(
                "invalid {KIND} at request.operation: unknown operation {other:?}: accepted are \
                 CREATE, UPDATE, DELETE, CONNECT"
            )))
        }
    };
    let gvk = &request.kind;
    let is_pod = gvk.group.is_empty() && gvk.version == "v1" && gvk.kind == "Pod";
    let is_subresource = request
        .sub_resource
        .as_deref()
        .is_some_and(|s| !s.is_empty());
    let object = request.object.filter(|o| o.get() != "null");
    let evaluated = is_pod && !is_subresource && operation == "CREATE";
    let pod = match object {
        Some(raw) if evaluated => Some(if raw.get().starts_with('{') {
            crate::pod::from_json(raw.get())
        } else {
            Err(format!(
                "request.object must be a Pod object, found {}",
                json_type(raw)
            ))
        }),
        _ => None,
    };
    // Names for the log line: the pod's, else (another kind, an UPDATE) the
    // object's metadata read on its own.
    let other_meta;
    let meta = match pod.as_ref() {
        Some(p) => p.as_ref().ok().and_then(|p| p.metadata.as_ref()),
        None => {
            other_meta = object
                .and_then(|o| serde_json::from_str::<MetadataOnly<'_>>(o.get()).ok())
                .and_then(|o| o.metadata);
            other_meta.as_ref()
        }
    };
    let (namespace, name) = log_names(&request.namespace, &request.name, meta);
    let kind_label = if gvk.group.is_empty() {
        format!("{}/{}", gvk.version, gvk.kind)
    } else {
        format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind)
    };
    let summary = Summary {
        uid: request.uid.to_string(),
        namespace,
        name,
        kind: kind_label,
        operation,
        dry_run: request.dry_run.unwrap_or(false),
        mode: None,
        outcome: Outcome::Skipped,
        code: None,
    };
    Ok(Parsed {
        api_version,
        kind,
        uid: request.uid,
        summary,
        pod,
    })
}

/// Namespace and name for the log line: the request's, else the object's
/// (a pod made from a template has only a `generateName` at admission).
fn log_names(
    namespace: &Option<Cow<'_, str>>,
    name: &Option<Cow<'_, str>>,
    meta: Option<&crate::pod::Metadata<'_>>,
) -> (String, String) {
    let nonempty =
        |s: &Option<Cow<'_, str>>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let namespace = nonempty(namespace)
        .or_else(|| meta.and_then(|m| nonempty(&m.namespace)))
        .unwrap_or_default();
    let name = nonempty(name)
        .or_else(|| meta.and_then(|m| nonempty(&m.name)))
        .or_else(|| meta.and_then(|m| nonempty(&m.generate_name)))
        .unwrap_or_default();
    (namespace, name)
}

/// Reads `apiVersion` or `kind`, naming what is accepted when it is missing
/// or not a string.
fn type_meta<'a>(
    field: &str,
    raw: Option<&'a RawValue>,
    accepted: &str,
) -> Result<Cow<'a, str>, ReviewError> {
    let raw = raw.ok_or_else(|| {
        ReviewError::bad_request(format!("{field} is missing: accepted is {accepted:?}"))
    })?;
    serde_json::from_str::<Cow<'a, str>>(raw.get()).map_err(|_| {
        ReviewError::bad_request(format!(
            "{field} must be the string {accepted:?}, found {}",
            json_type(raw)
        ))
    })
}

/// What a raw JSON value is, for messages.
fn json_type(v: &RawValue) -> &'static str {
    match v.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

/// The response of an AdmissionReview.
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    patch_type: Option<&'static str>,
    /// The JSON Patch document; it goes out base64-encoded.
    patch: Option<&'a [u8]>,
    warnings: &'a [String],
    /// Key `mode` without a slash: the API server prefixes the webhook's name
    /// and drops keys that already contain one.
    audit_annotations: Option<AuditAnnotations<'a>>,
    status: Option<Status<'a>>,
}

struct AuditAnnotations<'a> {
    mode: &'a str,
}

struct Status<'a> {
    code: u16,
    message: &'a str,
}

/// Writes the response review, exactly as the API server reads it.
///
/// Written field by field rather than derived: the base64 patch is most of
/// the bytes, and a serializer would scan it for characters to escape that
/// base64 never contains.
fn encode(api_version: &str, kind: &str, response: Response<'_>) -> Result<Vec<u8>, ReviewError> {
    use base64::engine::general_purpose::STANDARD;
    let patch_len = response
        .patch
        .map(|p| base64::encoded_len(p.len(), true).unwrap_or(usize::MAX))
        .unwrap_or(0);
    let mut out = Vec::with_capacity(256 + patch_len.min(64 << 20));
    let string = |out: &mut Vec<u8>, s: &str| {
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(out, s);
    };
    out.extend_from_slice(b"{\"apiVersion\":");
    string(&mut out, api_version);
    out.extend_from_slice(b",\"kind\":");
    string(&mut out, kind);
    out.extend_from_slice(b",\"response\":{\"uid\":");
    string(&mut out, response.uid);
    out.extend_from_slice(if response.allowed {
        b",\"allowed\":true"
    } else {
        b",\"allowed\":false"
    });
    if let (Some(patch_type), Some(patch)) = (response.patch_type, response.patch) {
        out.extend_from_slice(b",\"patchType\":");
        string(&mut out, patch_type);
        out.extend_from_slice(b",\"patch\":\"");
        let start = out.len();
        out.resize(start + patch_len, 0);
        let written = STANDARD
            .encode_slice(patch, &mut out[start..])
            .map_err(|e| ReviewError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("cannot encode the JSON patch: {e}"),
            })?;
        out.truncate(start + written);
        out.push(b'"');
    }
    if !response.warnings.is_empty() {
        out.extend_from_slice(b",\"warnings\":");
        let _ = serde_json::to_writer(&mut out, response.warnings);
    }
    if let Some(audit) = response.audit_annotations {
        out.extend_from_slice(b",\"auditAnnotations\":{\"mode\":");
        string(&mut out, audit.mode);
        out.push(b'}');
    }
    if let Some(status) = response.status {
        out.extend_from_slice(b",\"status\":{\"code\":");
        out.extend_from_slice(status.code.to_string().as_bytes());
        out.extend_from_slice(b",\"message\":");
        string(&mut out, status.message);
        out.push(b'}');
    }
    out.extend_from_slice(b"}}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::NamespacePolicy;
    use serde_json::{json, Value};

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
        assert_eq!(summary.outcome, Outcome::Skipped);
        assert_eq!(summary.name, "cm");
        assert_eq!(summary.namespace, "team-a");
        assert_eq!(summary.kind, "v1/ConfigMap");
    }

    #[test]
    fn pod_updates_subresources_and_deletes_are_skipped() {
        let pod_kind = json!({"group": "", "version": "v1", "kind": "Pod"});
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
        let update = review_json(request(pod_kind.clone(), "UPDATE", pod.clone()));
        assert_eq!(run(&update).unwrap().1.outcome, Outcome::Skipped);
        let mut sub = request(pod_kind.clone(), "CREATE", pod.clone());
        sub["subResource"] = json!("binding");
        assert_eq!(run(&review_json(sub)).unwrap().1.outcome, Outcome::Skipped);
        let delete = review_json(request(pod_kind.clone(), "DELETE", Value::Null));
        assert_eq!(run(&delete).unwrap().1.outcome, Outcome::Skipped);
        let apps_pod = json!({"group": "example.com", "version": "v1", "kind": "Pod"});
        let other = review_json(request(apps_pod, "CREATE", pod));
        assert_eq!(run(&other).unwrap().1.outcome, Outcome::Skipped);
    }

    #[test]
    fn unreadable_reviews_are_400_with_a_reason() {
        let err = run(b"{not json").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.starts_with("malformed JSON"), "{err}");

        let err = run(br#"[1]"#).unwrap_err();
        assert!(err.message.contains("JSON object"), "{err}");

        let v1beta1 =
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": KIND, "request": {}});
        let err = run(&serde_json::to_vec(&v1beta1).unwrap()).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
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
}
