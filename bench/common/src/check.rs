//! Checks on one server's answer to one review, run by `bench/run.sh` before
//! anything is measured: HTTP 200, an `admission.k8s.io/v1` AdmissionReview
//! that echoes the uid and allows the pod, and a JSON Patch that applies to
//! the pod as sent (RFC 6902: no implicit parents, as the API server applies
//! it). The patched pods of nestdock and the baseline must be the same pod.

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use serde_json::Value;

/// How the patch was encoded in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchEncoding {
    /// A base64 string: what the API server reads.
    Base64,
    /// An array of byte values: what kube's `AdmissionResponse` writes
    /// (kube-rs issue 1781).
    NumberArray,
}

/// What a valid answer carried.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The pod with the patch applied, when there was a patch.
    pub patched: Option<Value>,
    pub ops: usize,
    pub patch_bytes: usize,
    pub encoding: Option<PatchEncoding>,
}

impl Answer {
    /// One line for the log of `bench/run.sh`.
    pub fn describe(&self) -> String {
        match self.encoding {
            None => "allowed, no patch".to_string(),
            Some(enc) => format!(
                "allowed, JSONPatch of {} operations ({} bytes, as {}), applies to the pod",
                self.ops,
                self.patch_bytes,
                match enc {
                    PatchEncoding::Base64 => "a base64 string",
                    PatchEncoding::NumberArray => "an array of numbers",
                }
            ),
        }
    }
}

/// Checks `response` (the body of an HTTP `status` answer) to `review`.
pub fn answer(review: &Value, status: u16, response: &[u8]) -> anyhow::Result<Answer> {
    if status != 200 {
        bail!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&response[..response.len().min(300)])
        );
    }
    let doc: Value = serde_json::from_slice(response).context("the answer is not JSON")?;
    let field = |v: &Value, name: &str| -> anyhow::Result<Value> {
        v.get(name)
            .cloned()
            .ok_or_else(|| anyhow!("the answer has no {name}"))
    };
    if field(&doc, "apiVersion")? != "admission.k8s.io/v1" {
        bail!("apiVersion is not admission.k8s.io/v1");
    }
    if field(&doc, "kind")? != "AdmissionReview" {
        bail!("kind is not AdmissionReview");
    }
    let response = field(&doc, "response")?;
    let uid = review.pointer("/request/uid").cloned().unwrap_or_default();
    if field(&response, "uid")? != uid {
        bail!("response.uid is not the request's uid {uid}");
    }
    if field(&response, "allowed")? != Value::Bool(true) {
        bail!("the pod is not allowed: {}", response);
    }
    let Some(patch) = response.get("patch") else {
        return Ok(Answer {
            patched: None,
            ops: 0,
            patch_bytes: 0,
            encoding: None,
        });
    };
    if response.get("patchType") != Some(&Value::String("JSONPatch".into())) {
        bail!("a patch without patchType: JSONPatch");
    }
    let (bytes, encoding) = match patch {
        Value::String(s) => (
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .context("the patch is not base64")?,
            PatchEncoding::Base64,
        ),
        Value::Array(items) => (
            items
                .iter()
                .map(|b| {
                    b.as_u64()
                        .and_then(|b| u8::try_from(b).ok())
                        .ok_or_else(|| anyhow!("the patch array holds {b}, not a byte"))
                })
                .collect::<anyhow::Result<Vec<u8>>>()?,
            PatchEncoding::NumberArray,
        ),
        other => bail!("the patch is neither a string nor an array: {other}"),
    };
    let ops: json_patch::Patch =
        serde_json::from_slice(&bytes).context("the patch is not a JSON Patch")?;
    let mut pod = review
        .pointer("/request/object")
        .cloned()
        .ok_or_else(|| anyhow!("the review has no request.object"))?;
    json_patch::patch(&mut pod, &ops).context("the patch does not apply to the pod as sent")?;
    Ok(Answer {
        patched: Some(pod),
        ops: ops.0.len(),
        patch_bytes: bytes.len(),
        encoding: Some(encoding),
    })
}

/// The first place where two JSON values differ, as a JSON pointer and the
/// two values there; `None` when they are equal.
pub fn first_difference(a: &Value, b: &Value) -> Option<(String, String, String)> {
    fn walk(a: &Value, b: &Value, at: &mut String) -> Option<(String, String, String)> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for key in x.keys().chain(y.keys()) {
                    let len = at.len();
                    at.push('/');
                    at.push_str(key);
                    let found = match (x.get(key), y.get(key)) {
                        (Some(u), Some(v)) => walk(u, v, at),
                        (u, v) => Some((at.clone(), show(u), show(v))),
                    };
                    if found.is_some() {
                        return found;
                    }
                    at.truncate(len);
                }
                None
            }
            (Value::Array(x), Value::Array(y)) => {
                for i in 0..x.len().max(y.len()) {
                    let len = at.len();
                    at.push_str(&format!("/{i}"));
                    let found = match (x.get(i), y.get(i)) {
                        (Some(u), Some(v)) => walk(u, v, at),
                        (u, v) => Some((at.clone(), show(u), show(v))),
                    };
                    if found.is_some() {
                        return found;
                    }
                    at.truncate(len);
                }
                None
            }
            _ if a == b => None,
            _ => Some((at.clone(), show(Some(a)), show(Some(b)))),
        }
    }
    fn show(v: Option<&Value>) -> String {
        match v {
            None => "(absent)".to_string(),
            Some(v) => {
                let s = v.to_string();
                if s.len() > 200 {
                    format!("{}...", &s[..200])
                } else {
                    s
                }
            }
        }
    }
    walk(a, b, &mut String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_are_located() {
        let a = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let b = json!({"spec": {"containers": [{"name": "a"}, {"name": "c"}]}});
        assert_eq!(first_difference(&a, &a), None);
        let (at, x, y) = first_difference(&a, &b).unwrap();
        assert_eq!(at, "/spec/containers/1/name");
        assert_eq!((x.as_str(), y.as_str()), ("\"b\"", "\"c\""));
    }

    #[test]
    fn both_patch_encodings_are_read() {
        let review = json!({"request": {"uid": "u", "object": {"metadata": {}}}});
        let patch = br#"[{"op":"add","path":"/metadata/x","value":1}]"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(patch);
        let ok = |p: Value| {
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "response": {"uid": "u", "allowed": true, "patchType": "JSONPatch", "patch": p}})
        };
        for body in [ok(json!(b64)), ok(json!(patch.to_vec()))] {
            let a = answer(&review, 200, body.to_string().as_bytes()).unwrap();
            assert_eq!(a.patched, Some(json!({"metadata": {"x": 1}})));
        }
        let bad = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "response": {"uid": "v", "allowed": true}});
        assert!(answer(&review, 200, bad.to_string().as_bytes()).is_err());
        assert!(answer(&review, 500, b"oops").is_err());
    }
}
