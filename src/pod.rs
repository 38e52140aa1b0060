//! The parts of a Pod the engine reads, deserialised borrowed and typed.
//!
//! Why not `serde_json::Value`: building a tree of the whole pod allocates
//! for every field of it, and the webhook sits on the path of every pod
//! creation. These structs name only what a decision needs; serde skips the
//! rest while scanning, and strings without escapes borrow from the request
//! body. The same structs read a `Value` (offline `inject`), so both paths
//! share one engine.
//!
//! Patches must apply to the object exactly as sent, so each list or map the
//! engine appends to remembers whether it was absent, `null` or present
//! ([`Field`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// A field as it was sent: missing, `null`, or a value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Field<T> {
    #[default]
    Absent,
    Null,
    Present(T),
}

impl<T> Field<T> {
    pub fn as_ref(&self) -> Option<&T> {
        match self {
            Field::Present(v) => Some(v),
            _ => None,
        }
    }

    pub fn is_present(&self) -> bool {
        matches!(self, Field::Present(_))
    }
}

impl<T> Field<Vec<T>> {
    /// The items, empty when absent or null.
    pub fn items(&self) -> &[T] {
        match self {
            Field::Present(v) => v,
            _ => &[],
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            Some(v) => Field::Present(v),
            None => Field::Null,
        })
    }
}

/// A string map (annotations, nodeSelector) kept as pairs in document order:
/// pods carry a handful of entries, and a Vec costs one allocation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pairs<'a>(pub Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Pairs<'a> {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }
}

/// A map value that must be a string: a number or boolean (a YAML `yes` in a
/// manifest, say) is reported with the key instead of a generic type error.
struct StrValue<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for StrValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // serde's own `Cow` impl always copies; borrow when the text allows.
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = StrValue<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<StrValue<'a>, E> {
                Ok(StrValue(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrValue<'a>, E> {
                Ok(StrValue(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<StrValue<'a>, E> {
                Ok(StrValue(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Pairs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Pairs<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs<'a>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(k) = map.next_key::<StrValue<'a>>()? {
                    let v = map
                        .next_value::<StrValue<'a>>()
                        .map_err(|e| de::Error::custom(format_args!("value of {:?}: {e}", k.0)))?;
                    out.push((k.0, v.0));
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The pod: metadata and spec, nothing else.
#[derive(Debug, Default, Deserialize)]
pub struct Pod<'a> {
    #[serde(borrow, default)]
    pub metadata: Field<Metadata<'a>>,
    #[serde(borrow, default)]
    pub spec: Field<Spec<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata<'a> {
    #[serde(borrow, default)]
    pub annotations: Field<Pairs<'a>>,
    /// For log lines: the API server may send a pod without a name yet.
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub generate_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub namespace: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec<'a> {
    #[serde(borrow, default)]
    pub containers: Field<Vec<Container<'a>>>,
    #[serde(borrow, default)]
    pub init_containers: Field<Vec<Container<'a>>>,
    #[serde(borrow, default)]
    pub ephemeral_containers: Field<Vec<Named<'a>>>,
    #[serde(borrow, default)]
    pub volumes: Field<Vec<Volume<'a>>>,
    #[serde(default)]
    pub host_network: Option<bool>,
    #[serde(default)]
    pub host_users: Option<bool>,
    #[serde(default)]
    pub security_context: Field<SecurityContext>,
    #[serde(borrow, default)]
    pub node_selector: Field<Pairs<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    #[serde(default)]
    pub supplemental_groups: Field<Vec<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub env: Field<Vec<Named<'a>>>,
    #[serde(borrow, default)]
    pub volume_mounts: Field<Vec<Mount<'a>>>,
}

/// Anything with a name (env vars, ephemeral containers).
#[derive(Debug, Deserialize)]
pub struct Named<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub mount_path: Cow<'a, str>,
    #[serde(borrow, default)]
    pub sub_path: Option<Cow<'a, str>>,
    #[serde(default)]
    pub sub_path_expr: Option<IgnoredAny>,
    #[serde(default)]
    pub read_only: Option<bool>,
}

impl Mount<'_> {
    /// The mount path without a trailing `/`, as the kubelet compares them.
    pub fn path(&self) -> &str {
        let p = self.mount_path.as_ref();
        if p.len() > 1 {
            p.trim_end_matches('/')
        } else {
            p
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Volume<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(default)]
    pub projected: Option<Projected>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Projected {
    #[serde(default)]
    pub sources: Field<Vec<ProjectionSource>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionSource {
    #[serde(default)]
    pub service_account_token: Option<IgnoredAny>,
}

impl Volume<'_> {
    /// A projected service-account token (what the ServiceAccount admission
    /// plugin adds to every pod).
    pub fn is_service_account_token(&self) -> bool {
        self.projected.as_ref().is_some_and(|p| {
            p.sources
                .items()
                .iter()
                .any(|s| s.service_account_token.is_some())
        })
    }
}

/// Reads the pod from a JSON text (the webhook's path: borrowed, no tree).
pub fn from_json(text: &str) -> Result<Pod<'_>, String> {
    // Fast path without path tracking; a failure is read again to say where.
    serde_json::from_str(text).or_else(|_| {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(describe)
    })
}

/// Reads the pod from a JSON value (offline `inject`, tests).
pub fn from_value(value: &serde_json::Value) -> Result<Pod<'_>, String> {
    serde_path_to_error::deserialize(value).map_err(describe)
}

fn describe<E: fmt::Display>(e: serde_path_to_error::Error<E>) -> String {
    let path = e.path().to_string();
    format!("the pod cannot be read at {path}: {}", e.inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn absent_null_and_present_are_told_apart() {
        let v = json!({"metadata": {"annotations": null}, "spec": {"containers": [{"name": "a", "env": []}], "volumes": null}});
        let pod = from_value(&v).unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert!(matches!(
            pod.metadata.as_ref().unwrap().annotations,
            Field::Null
        ));
        assert!(matches!(spec.volumes, Field::Null));
        assert!(matches!(spec.init_containers, Field::Absent));
        assert!(matches!(spec.containers.items()[0].env, Field::Present(ref e) if e.is_empty()));
    }

    #[test]
    fn strings_borrow_from_the_body_and_unknown_fields_are_skipped() {
        let text = r#"{"kind":"Pod","metadata":{"annotations":{"nestdock.io/mode":"dind"},"labels":{"x":"y"}},
            "spec":{"containers":[{"name":"build","image":"alpine","resources":{"limits":{"cpu":"1"}}}]}}"#;
        let pod = from_json(text).unwrap();
        let ann = pod.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
        assert!(matches!(ann.0[0].1, Cow::Borrowed("dind")));
        assert_eq!(ann.get("nestdock.io/mode"), Some("dind"));
    }

    #[test]
    fn wrong_shapes_are_errors_naming_the_path() {
        let e = from_value(&json!({"spec": {"containers": "no"}})).unwrap_err();
        assert!(e.contains("spec.containers"), "{e}");
        let e = from_value(&json!({"metadata": {"annotations": {"nestdock.io/tls": true}}}))
            .unwrap_err();
        assert!(e.contains("nestdock.io/tls"), "{e}");
    }
}
