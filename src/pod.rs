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
//! engine appends to remembers whether it was present: an `Option`, `None`
//! for absent and `null` alike (both are added whole, never appended to).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// The items of a list field, empty when it is absent or `null` (for the
/// patch both mean "add the list whole"; only a present list is appended to).
pub trait Items<T> {
    fn items(&self) -> &[T];
}

impl<T> Items<T> for Option<Vec<T>> {
    fn items(&self) -> &[T] {
        self.as_deref().unwrap_or(&[])
    }
}

/// How many list items and map entries one pod may hold once read.
///
/// Why: the typed pod costs tens of bytes per entry where the JSON costs a
/// dozen (`{"name":"a"},` becomes an 88-byte container), so an 8 MiB review
/// of tiny containers would take hundreds of MiB. No pod Kubernetes can
/// store comes near this (etcd keeps objects under 1.5 MiB, and a defaulted
/// container alone is over 150 bytes); a pod past it is refused with a
/// message, and the memory a review can take stays bounded.
pub const MAX_ENTRIES: usize = 100_000;

thread_local! {
    /// Entries left for the pod being read on this thread; `None` when no
    /// read is bounded. Reading is synchronous, so one counter per thread is
    /// one counter per read; [`bounded`] sets and restores it.
    static ENTRIES_LEFT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `read` with at most [`MAX_ENTRIES`] list items and map entries
/// allowed in what it deserialises into the pod types. A nested call gets a
/// budget of its own and gives the outer one back when it returns.
pub fn bounded<T>(read: impl FnOnce() -> T) -> T {
    let outer = ENTRIES_LEFT.with(|c| c.replace(Some(MAX_ENTRIES)));
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ENTRIES_LEFT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(outer);
    read()
}

/// Takes one entry from the budget of the read in progress.
fn take_entry<E: de::Error>() -> Result<(), E> {
    ENTRIES_LEFT.with(|c| match c.get() {
        None => Ok(()),
        Some(0) => Err(E::custom(format_args!(
            "the pod has more than {MAX_ENTRIES} list items and map entries (containers, volumes, \
             mounts, env, annotations...), more than any pod Kubernetes can store; nestdock reads \
             at most {MAX_ENTRIES}"
        ))),
        Some(n) => {
            c.set(Some(n - 1));
            Ok(())
        }
    })
}

/// A deserializer that reads a struct only from a map. serde's derived
/// structs also accept a sequence, read by position (`[[], [[]]]` would be a
/// pod with a spec), and the patch written for such a "pod" could not apply
/// to the array it is. Everything else passes to the wrapped deserializer.
struct MapOnly<D>(D);

macro_rules! forward {
    ($($method:ident),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
            self.0.$method(v)
        })*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;
    forward!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any,
    );
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_unit_struct(name, v)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_newtype_struct(name, v)
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, v)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple_struct(name, len, v)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(v)
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_enum(name, variants, v)
    }
    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// `T` read with [`MapOnly`]: a struct of the pod from a JSON object only.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(MapOnly(d)).map(Obj)
    }
}

/// `deserialize_with` for the pod's objects that may be absent or `null`.
fn object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Obj<T>>::deserialize(d)?.map(|o| o.0))
}

/// `deserialize_with` for the pod's lists: an `Option` whose items count
/// against the read's entry budget; items that are structs are read from
/// objects only ([`Obj`]).
fn list<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Items<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Items<T> {
        type Value = Option<Vec<T>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_seq(self)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(Obj(item)) = seq.next_element()? {
                take_entry::<A::Error>()?;
                out.push(item);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(Items(std::marker::PhantomData))
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
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(4).min(16));
                while let Some(k) = map.next_key::<StrValue<'a>>()? {
                    take_entry::<A::Error>()?;
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
    #[serde(borrow, default, deserialize_with = "object")]
    pub metadata: Option<Metadata<'a>>,
    #[serde(borrow, default, deserialize_with = "object")]
    pub spec: Option<Spec<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata<'a> {
    #[serde(borrow, default)]
    pub annotations: Option<Pairs<'a>>,
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
    #[serde(borrow, default, deserialize_with = "list")]
    pub containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default, deserialize_with = "list")]
    pub init_containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default, deserialize_with = "list")]
    pub ephemeral_containers: Option<Vec<Named<'a>>>,
    #[serde(borrow, default, deserialize_with = "list")]
    pub volumes: Option<Vec<Volume<'a>>>,
    #[serde(default)]
    pub host_network: Option<bool>,
    #[serde(default)]
    pub host_users: Option<bool>,
    #[serde(default, rename = "hostPID")]
    pub host_pid: Option<bool>,
    #[serde(default, rename = "hostIPC")]
    pub host_ipc: Option<bool>,
    #[serde(default, deserialize_with = "object")]
    pub security_context: Option<SecurityContext>,
    #[serde(borrow, default)]
    pub node_selector: Option<Pairs<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    #[serde(default, deserialize_with = "list")]
    pub supplemental_groups: Option<Vec<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "list")]
    pub env: Option<Vec<Named<'a>>>,
    #[serde(borrow, default, deserialize_with = "list")]
    pub volume_mounts: Option<Vec<Mount<'a>>>,
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

impl<'a> Mount<'a> {
    /// The mount path as the kubelet resolves it: `//`, `.` and `..`
    /// segments and a trailing `/` removed (`//usr/./bin/` is `/usr/bin`).
    /// Paths are compared in this form, so that a spelling cannot slip a
    /// mount past a check. Borrowed when the path is already in that form.
    pub fn path(&'a self) -> Cow<'a, str> {
        normalize_path(&self.mount_path)
    }
}

/// `p` with `//`, `.` and `..` segments and a trailing `/` removed (lexically,
/// as `path.Clean` in Go does for absolute paths); borrowed when nothing changes.
pub fn normalize_path(p: &str) -> Cow<'_, str> {
    // One pass over the bytes: every segment non-empty and neither `.` nor
    // `..` (this runs for every mount of every target; a split-based check
    // cost 5 % of a review's instructions).
    let clean = |rest: &str| {
        rest.as_bytes()
            .split(|b| *b == b'/')
            .all(|s| !matches!(s, b"" | b"." | b".."))
    };
    match p.strip_prefix('/') {
        Some("") => return Cow::Borrowed(p),
        Some(rest) if clean(rest) => return Cow::Borrowed(p),
        None if p.is_empty() || clean(p) => return Cow::Borrowed(p),
        _ => {}
    }
    let absolute = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    Cow::Owned(if absolute {
        format!("/{joined}")
    } else {
        joined
    })
}

#[derive(Debug, Deserialize)]
pub struct Volume<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(default, deserialize_with = "object")]
    pub projected: Option<Projected>,
    /// Set for an emptyDir volume (its settings are not read).
    #[serde(default, rename = "emptyDir")]
    pub empty_dir: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Projected {
    #[serde(default, deserialize_with = "list")]
    pub sources: Option<Vec<ProjectionSource>>,
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
    bounded(|| {
        serde_json::from_str::<Obj<Pod<'_>>>(text)
            .or_else(|_| {
                let mut de = serde_json::Deserializer::from_str(text);
                serde_path_to_error::deserialize(&mut de).map_err(describe)
            })
            .map(|o| o.0)
    })
}

/// Reads the pod from a JSON value (offline `inject`, tests).
pub fn from_value(value: &serde_json::Value) -> Result<Pod<'_>, String> {
    bounded(|| {
        serde_path_to_error::deserialize::<_, Obj<Pod<'_>>>(value)
            .map(|o| o.0)
            .map_err(describe)
    })
}

fn describe<E: fmt::Display>(e: serde_path_to_error::Error<E>) -> String {
    let path = e.path().to_string();
    format!("the pod cannot be read at {path}: {}", e.inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// serde's structs read a sequence by position too: a pod, a spec or a
    /// container written as an array is refused, naming where, on both paths.
    #[test]
    fn objects_written_as_arrays_are_refused() {
        for (pod, at) in [
            (json!([[], [[], [], []]]), "."),
            (json!({"spec": [[{"name": "a"}]]}), "spec"),
            (json!({"metadata": []}), "metadata"),
            (
                json!({"spec": {"containers": [["a"]]}}),
                "spec.containers[0]",
            ),
            (
                json!({"spec": {"securityContext": [[1]]}}),
                "spec.securityContext",
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "volumeMounts": [["v", "/x"]]}]}}),
                "spec.containers[0].volumeMounts[0]",
            ),
        ] {
            let e = from_value(&pod).map(|_| ()).unwrap_err();
            assert!(
                e.contains(&format!("at {at}:")) && e.contains("expected"),
                "{pod}: {e}"
            );
            let e = from_json(&pod.to_string()).map(|_| ()).unwrap_err();
            assert!(e.contains(&format!("at {at}:")), "{pod}: {e}");
        }
    }

    #[test]
    fn present_lists_are_told_from_absent_and_null_ones() {
        let v = json!({"metadata": {"annotations": null}, "spec": {"containers": [{"name": "a", "env": []}], "volumes": null}});
        let pod = from_value(&v).unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert!(pod.metadata.as_ref().unwrap().annotations.is_none());
        assert!(spec.volumes.is_none());
        assert!(spec.init_containers.is_none());
        assert!(matches!(spec.containers.items()[0].env, Some(ref e) if e.is_empty()));
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
    fn paths_are_compared_normalised() {
        for (given, want) in [
            ("/usr/bin", "/usr/bin"),
            ("//usr/bin", "/usr/bin"),
            ("/usr/./sbin", "/usr/sbin"),
            ("/var/run/", "/var/run"),
            ("/a/b/../../etc", "/etc"),
            ("/../..", "/"),
            ("/", "/"),
            ("///", "/"),
        ] {
            assert_eq!(normalize_path(given), want, "{given}");
        }
        assert!(matches!(normalize_path("/workspace"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_pod_past_the_entry_budget_is_an_error_naming_the_bound() {
        let containers: Vec<_> = (0..MAX_ENTRIES + 1).map(|_| json!({"name": "a"})).collect();
        let text = json!({"spec": {"containers": containers}}).to_string();
        let e = from_json(&text).unwrap_err();
        assert!(e.contains(&MAX_ENTRIES.to_string()), "{e}");
        // Within the budget (and outside any bounded read) it reads.
        let containers: Vec<_> = (0..MAX_ENTRIES).map(|_| json!({"name": "a"})).collect();
        let text = json!({"spec": {"containers": containers}}).to_string();
        assert_eq!(
            from_json(&text)
                .unwrap()
                .spec
                .as_ref()
                .unwrap()
                .containers
                .items()
                .len(),
            MAX_ENTRIES
        );
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
