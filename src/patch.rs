//! JSON Patch (RFC 6902) `add` operations, written as JSON text while the
//! engine plans them.
//!
//! Why text and not a `Vec` of operations holding `serde_json::Value`s: the
//! webhook only ever sends the patch as bytes (base64 in the response), so
//! building a tree per value and serialising it afterwards is work done twice
//! on the path of every pod creation. Values are serialised straight from
//! typed structs into one buffer. `inject`, `explain` and the tests read the
//! same bytes back as a [`json_patch::Patch`] to apply them.

use serde::Serialize;
use serde_json::value::RawValue;

/// A JSON Patch document. The buffer is always a complete JSON array.
#[derive(Clone, PartialEq, Eq)]
pub struct Patch {
    json: Vec<u8>,
    ops: usize,
}

impl Default for Patch {
    fn default() -> Self {
        Patch {
            json: b"[]".to_vec(),
            ops: 0,
        }
    }
}

impl std::fmt::Debug for Patch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.json))
    }
}

/// Writes `tokens` as a JSON Pointer, each token escaped by `jsonptr`
/// (RFC 6901: `~` is `~0`, `/` is `~1`; borrowed when nothing needs escaping).
fn pointer(tokens: &[&str]) -> String {
    let mut p = String::with_capacity(tokens.iter().map(|t| t.len() + 1).sum());
    for t in tokens {
        p.push('/');
        p.push_str(jsonptr::Token::new(*t).encoded());
    }
    p
}

impl Patch {
    pub fn new() -> Patch {
        Patch::default()
    }

    /// Appends `{"op":"add","path":<tokens as a pointer>,"value":<value>}`.
    pub fn add(&mut self, path: &[&str], value: &impl Serialize) {
        self.json.pop(); // the closing `]`
        if self.ops > 0 {
            self.json.push(b',');
        }
        self.json.extend_from_slice(br#"{"op":"add","path":"#);
        let pointer = pointer(path);
        if pointer
            .bytes()
            .all(|b| b >= 0x20 && b != b'"' && b != b'\\')
        {
            // Nothing to escape (the usual case): no second scan.
            self.json.push(b'"');
            self.json.extend_from_slice(pointer.as_bytes());
            self.json.push(b'"');
        } else {
            // Writing to a Vec and serialising a &str cannot fail.
            let _ = serde_json::to_writer(&mut self.json, &pointer);
        }
        self.json.extend_from_slice(br#","value":"#);
        if serde_json::to_writer(&mut self.json, value).is_err() {
            // Only a map with non-string keys fails, and the engine writes
            // none; keep the document valid regardless.
            self.json.extend_from_slice(b"null");
        }
        self.json.extend_from_slice(b"}]");
        self.ops += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops
    }

    /// The patch as JSON text (what the AdmissionReview carries, base64-encoded).
    pub fn as_json(&self) -> &[u8] {
        &self.json
    }

    /// The patch as `json_patch` operations, to apply it.
    pub fn to_json_patch(&self) -> json_patch::Patch {
        serde_json::from_slice(&self.json).expect("the engine writes valid JSON Patch documents")
    }

    /// Applies the patch to `doc` the way the API server does (no implicit parents).
    pub fn apply(&self, doc: &mut serde_json::Value) -> Result<(), json_patch::PatchError> {
        json_patch::patch(doc, &self.to_json_patch())
    }
}

impl Serialize for Patch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(&self.json).map_err(serde::ser::Error::custom)?;
        let raw: &RawValue = serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_a_json_patch_with_escaped_pointers() {
        let mut p = Patch::new();
        assert_eq!(p.as_json(), b"[]");
        p.add(
            &["metadata", "annotations", "nestdock.io/injected"],
            &"dind",
        );
        p.add(
            &["spec", "volumes", "-"],
            &json!({"name": "a~b", "emptyDir": {}}),
        );
        let v: serde_json::Value = serde_json::from_slice(p.as_json()).unwrap();
        assert_eq!(
            v,
            json!([
                {"op": "add", "path": "/metadata/annotations/nestdock.io~1injected", "value": "dind"},
                {"op": "add", "path": "/spec/volumes/-", "value": {"name": "a~b", "emptyDir": {}}},
            ])
        );
        assert_eq!(pointer(&["a~b/c"]), "/a~0b~1c");
        assert_eq!(p.len(), 2);
        assert_eq!(serde_json::to_value(&p).unwrap(), v);
    }

    #[test]
    fn applies_without_implicit_parents() {
        let mut p = Patch::new();
        p.add(&["spec", "volumes", "-"], &json!({"name": "x"}));
        let mut doc = json!({"spec": {}});
        assert!(
            p.apply(&mut doc).is_err(),
            "add to a missing list must fail"
        );
        let mut doc = json!({"spec": {"volumes": []}});
        p.apply(&mut doc).unwrap();
        assert_eq!(doc, json!({"spec": {"volumes": [{"name": "x"}]}}));
    }
}
