//! JSON request bodies read the way dockerd reads them, so that what the
//! guard checks is what the daemon will act on.
//!
//! dockerd decodes bodies with Go's `encoding/json`: a struct field matches a
//! key ignoring case (with Unicode simple folding: `ſ` is `s`, the Kelvin
//! sign is `k`), a repeated key overwrites the earlier one, and a repeated
//! *object* key decodes into the same struct again, merging the two. A proxy
//! that reads `{"HostConfig":{"Privileged":true},"hostconfig":{}}` with
//! "exact names, last one wins" sees no `Privileged` while dockerd creates a
//! privileged container. So a body in which two keys of one object name the
//! same field is refused outright, and the body the guard forwards is the
//! tree it checked, written out again (never the bytes it received).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// The largest body the guard reads to inspect (create, exec, network and
/// volume bodies). Real ones are a few KiB; a compose service with a long
/// environment stays far below.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// A JSON value that keeps every key of an object, in order, duplicates
/// included, so that ambiguity can be seen.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not one JSON value (or trailing data after it).
    Syntax(String),
    /// Larger than [`MAX_BODY_BYTES`].
    TooLarge(usize),
    /// Two keys of one object that dockerd would read as the same field.
    Ambiguous {
        at: String,
        first: String,
        second: String,
    },
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Syntax(e) => write!(
                f,
                "nestdock guard: the request body is not one JSON value: {e}"
            ),
            BodyError::TooLarge(limit) => write!(
                f,
                "nestdock guard: the request body is over {limit} bytes, the most the guard reads"
            ),
            BodyError::Ambiguous { at, first, second } => write!(
                f,
                "nestdock guard: ambiguous request body: keys {first:?} and {second:?} in {at} name \
                 the same field (dockerd reads field names ignoring case and merges repeats); \
                 send each field once"
            ),
        }
    }
}

impl std::error::Error for BodyError {}

/// Field names as Go's `encoding/json` compares them: ASCII case ignored,
/// and the two non-ASCII letters whose simple fold reaches ASCII (`ſ` U+017F
/// and the Kelvin sign U+212A) taken as `s` and `k`. Other non-ASCII letters
/// are lower-cased, which can only make more keys collide (a refusal), never
/// fewer.
pub fn fold(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '\u{17F}' => out.push('s'),
            '\u{212A}' => out.push('k'),
            c if c.is_ascii() => out.push(c.to_ascii_lowercase()),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// Keys whose object value is a Go map (labels, options, port maps...), not a
/// struct: their keys are data and compared exactly (`a` and `A` are two
/// labels), while every other object is a struct whose keys fold.
const MAP_FIELDS: &[&str] = &[
    "labels",
    "exposedports",
    "volumes",
    "portbindings",
    "tmpfs",
    "storageopt",
    "sysctls",
    "driveropts",
    "options",
    "endpointsconfig",
    "config",
    "filters",
    "annotations",
];

/// Reads a body: one JSON value, at most [`MAX_BODY_BYTES`], no key that
/// collides with another of its object.
pub fn parse(bytes: &[u8]) -> Result<Json, BodyError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(BodyError::TooLarge(MAX_BODY_BYTES));
    }
    let value: Json =
        serde_json::from_slice(bytes).map_err(|e| BodyError::Syntax(e.to_string()))?;
    value.check_unambiguous("the body", false)?;
    Ok(value)
}

/// Reads a JSON value whose top level is a Go map (a `filters` or `labels`
/// query parameter): its own keys compared exactly, everything below as in
/// [`parse`].
pub fn parse_map(bytes: &[u8]) -> Result<Json, BodyError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(BodyError::TooLarge(MAX_BODY_BYTES));
    }
    let value: Json =
        serde_json::from_slice(bytes).map_err(|e| BodyError::Syntax(e.to_string()))?;
    value.check_unambiguous("the value", true)?;
    Ok(value)
}

impl Json {
    fn check_unambiguous(&self, at: &str, is_map: bool) -> Result<(), BodyError> {
        match self {
            Json::Array(items) => items
                .iter()
                .try_for_each(|item| item.check_unambiguous(at, false)),
            Json::Object(entries) => {
                let mut seen: std::collections::HashMap<String, &str> =
                    std::collections::HashMap::with_capacity(entries.len());
                for (key, value) in entries {
                    let name = if is_map { key.clone() } else { fold(key) };
                    if let Some(first) = seen.insert(name, key) {
                        return Err(BodyError::Ambiguous {
                            at: at.to_string(),
                            first: first.to_string(),
                            second: key.clone(),
                        });
                    }
                    let child_is_map = !is_map && MAP_FIELDS.contains(&fold(key).as_str());
                    value.check_unambiguous(key, child_is_map)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The value of struct field `name` (matched as dockerd matches it).
    pub fn field(&self, name: &str) -> Option<&Json> {
        let Json::Object(entries) = self else {
            return None;
        };
        let want = fold(name);
        entries
            .iter()
            .find(|(k, _)| fold(k) == want)
            .map(|(_, v)| v)
    }

    /// The value of struct field `name`, to change it.
    pub fn field_mut(&mut self, name: &str) -> Option<&mut Json> {
        let Json::Object(entries) = self else {
            return None;
        };
        let want = fold(name);
        entries
            .iter_mut()
            .find(|(k, _)| fold(k) == want)
            .map(|(_, v)| v)
    }

    /// Sets struct field `name`, keeping the spelling of the key already
    /// there. Does nothing on a value that is not an object.
    pub fn set_field(&mut self, name: &str, value: Json) {
        if let Some(slot) = self.field_mut(name) {
            *slot = value;
        } else if let Json::Object(entries) = self {
            entries.push((name.to_string(), value));
        }
    }

    /// The entry `key` of a map (exact key).
    pub fn entry(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets the entry `key` of a map (exact key), turning `null` into a map.
    pub fn set_entry(&mut self, key: &str, value: Json) {
        if matches!(self, Json::Null) {
            *self = Json::Object(Vec::new());
        }
        if let Json::Object(entries) = self {
            entries.retain(|(k, _)| k != key);
            entries.push((key.to_string(), value));
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// `null`, `false`, `""`, `0`, `[]` or `{}`: what dockerd treats as "not
    /// set" for the fields the guard refuses.
    pub fn is_unset(&self) -> bool {
        match self {
            Json::Null => true,
            Json::Bool(b) => !b,
            Json::String(s) => s.is_empty(),
            Json::Number(n) => n.as_f64() == Some(0.0),
            Json::Array(a) => a.is_empty(),
            Json::Object(o) => o.is_empty(),
        }
    }

    /// The bytes to forward.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising this tree cannot fail: keys are strings, numbers are
        // serde_json's own.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A short rendering of a value for a message.
    pub fn shown(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.to_bytes()).into_owned();
        if s.len() > 80 {
            let mut cut = 77;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push_str("...");
        }
        s
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Json, E> {
                serde_json::Number::from_f64(n)
                    .map(Json::Number)
                    .ok_or_else(|| E::custom("a number that is not finite"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::String(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Json, E> {
                Ok(Json::String(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    entries.push((k, v));
                }
                Ok(Json::Object(entries))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_name_one_field_are_refused() {
        let refused = [
            r#"{"HostConfig":{"Privileged":true,"privileged":false}}"#,
            r#"{"HostConfig":{"Privileged":false,"Privileged":true}}"#,
            r#"{"HostConfig":{"Privileged":true},"hostconfig":{"Memory":0}}"#,
            r#"{"HostConfig":{"Privileged":true},"HostConfig":{}}"#,
            // The long s and the Kelvin sign fold to ASCII in Go.
            r#"{"HostConfig":{"SecurityOpt":[],"ſecurityOpt":["seccomp=unconfined"]}}"#,
            "{\"HostConfig\":{\"Links\":[],\"Lin\u{212A}s\":[]}}",
            r#"{"HostConfig":{"PortBindings":{"80/tcp":[],"80/tcp":[{"HostPort":"80"}]}}}"#,
            r#"{"Labels":{"a":"1","a":"2"}}"#,
        ];
        for body in refused {
            let e = parse(body.as_bytes()).expect_err(body);
            assert!(matches!(e, BodyError::Ambiguous { .. }), "{body}: {e}");
            assert!(e.to_string().contains("send each field once"), "{e}");
        }
    }

    #[test]
    fn map_keys_are_data_and_compared_exactly() {
        let ok = [
            r#"{"Labels":{"a":"1","A":"2"}}"#,
            r#"{"HostConfig":{"Sysctls":{"net.a":"1","NET.A":"2"}}}"#,
            r#"{"NetworkingConfig":{"EndpointsConfig":{"net":{},"NET":{}}}}"#,
            r#"[{"a":1},{"A":2}]"#,
        ];
        for body in ok {
            parse(body.as_bytes()).expect(body);
        }
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "not one JSON value"),
            (
                b"{\"Image\":\"x\"}{\"HostConfig\":{}}",
                "not one JSON value",
            ),
            (b"{\"Image\":\"\xff\"}", "not one JSON value"),
            (b"{\"Memory\":1e400}", "not one JSON value"),
            (&[b'['; 200], "not one JSON value"),
        ];
        for (body, want) in cases {
            let e = parse(body).expect_err(&String::from_utf8_lossy(body));
            assert!(e.to_string().contains(want), "{e}");
        }
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(parse(&big), Err(BodyError::TooLarge(MAX_BODY_BYTES)));
    }

    #[test]
    fn fields_are_found_as_go_finds_them() {
        let body =
            parse(r#"{"hostconfig":{"PRIVILEGED":true,"ſecurityopt":["x"]}}"#.as_bytes()).unwrap();
        let hc = body.field("HostConfig").unwrap();
        assert_eq!(hc.field("Privileged"), Some(&Json::Bool(true)));
        assert!(hc.field("SecurityOpt").is_some());
        assert!(hc.field("CapAdd").is_none());
    }

    #[test]
    fn numbers_read_back_exactly() {
        // Found by fuzzing: without correctly rounded float parsing, a
        // 42-digit integer came back one unit in the last place off.
        for text in [
            "666666666666666666666666666666666666666666",
            "0.1",
            "-1e-300",
            "18446744073709551615",
        ] {
            let v = parse(text.as_bytes()).unwrap();
            assert_eq!(parse(&v.to_bytes()).unwrap(), v, "{text}");
        }
    }

    #[test]
    fn a_body_is_written_back_as_read() {
        let text = r#"{"Image":"a","hostConfig":{"Memory":1,"Binds":null},"Labels":{"x":"y"}}"#;
        let mut body = parse(text.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(body.to_bytes()).unwrap(), text);
        body.field_mut("Labels")
            .unwrap()
            .set_entry("k", Json::String("v".into()));
        body.set_field("Env", Json::Null);
        assert_eq!(
            String::from_utf8(body.to_bytes()).unwrap(),
            r#"{"Image":"a","hostConfig":{"Memory":1,"Binds":null},"Labels":{"x":"y","k":"v"},"Env":null}"#
        );
    }
}
