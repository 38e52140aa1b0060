//! Ownership: the pod-uid label every object the pod creates carries, the
//! label filter added to lists, prunes and events, and the answers dockerd
//! gives for an object that does not exist (which is what another pod's
//! object must look like).

use super::body::{self, Json};

/// The label that says which pod an object belongs to.
pub const POD_UID_LABEL: &str = "io.nestdock.pod-uid";

/// The label of the volume a guard keeps while its pod lives (its value:
/// the pod's uid). Not [`POD_UID_LABEL`]: the pod does not see it in its
/// lists, and its prunes do not remove it.
pub const GUARD_OF_LABEL: &str = "io.nestdock.guard-of";

/// The `changes` instruction that labels an imported or committed image
/// with the pod's uid (dockerd applies it after the client's own).
pub fn label_change(uid: &str) -> String {
    format!("LABEL {POD_UID_LABEL}={uid}")
}

/// Kinds of objects a pod owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Container,
    Network,
    Volume,
    Exec,
}

/// dockerd's own message for an object that does not exist (20.10 wording),
/// so that another pod's object is indistinguishable from none.
pub fn not_found(kind: Kind, id: &str) -> String {
    match kind {
        Kind::Container => format!("No such container: {id}"),
        Kind::Network => format!("network {id} not found"),
        Kind::Volume => format!("get {id}: no such volume"),
        Kind::Exec => format!("No such exec instance: {id}"),
    }
}

/// The prefix a pod's container, network and volume names are stored with,
/// so that two pods can both run `--name db` or create network `ci`:
/// `nd_<uid>_`. A pod uid has no `_` (see
/// `check_pod_uid`), so no two pods' prefixes overlap.
pub fn name_prefix(uid: &str) -> String {
    format!("nd_{uid}_")
}

/// Whether `name` is an object name the guard stores privately
/// (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, one leading `/` allowed: dockerd's rule
/// for container and volume names; network names are held to it too).
pub fn is_name(name: &str) -> bool {
    let name = name.strip_prefix('/').unwrap_or(name);
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The name dockerd stores for the pod's container `name`.
pub fn private_name(uid: &str, name: &str) -> String {
    format!(
        "{}{}",
        name_prefix(uid),
        name.strip_prefix('/').unwrap_or(name)
    )
}

/// A stored name (`/nd_<uid>_db`, or a link's `/nd_<uid>_web/nd_<uid>_db`)
/// as the pod knows it (`/db`, `/web/db`).
pub fn public_name(uid: &str, stored: &str) -> String {
    let prefix = name_prefix(uid);
    stored
        .split('/')
        .map(|part| part.strip_prefix(prefix.as_str()).unwrap_or(part))
        .collect::<Vec<_>>()
        .join("/")
}

fn publish_string(v: &mut Json, uid: &str) {
    if let Json::String(s) = v {
        *s = public_name(uid, s);
    }
}

/// The names a container answer carries besides its own: the networks it
/// is on (keys of `NetworkSettings.Networks`, `HostConfig.NetworkMode`) and
/// the volumes it mounts (`Mounts[].Name`).
fn publish_container_refs(c: &mut Json, uid: &str) {
    if let Some(Json::Object(nets)) = c
        .field_mut("NetworkSettings")
        .and_then(|n| n.field_mut("Networks"))
    {
        for (k, _) in nets.iter_mut() {
            *k = public_name(uid, k);
        }
    }
    if let Some(mode) = c
        .field_mut("HostConfig")
        .and_then(|h| h.field_mut("NetworkMode"))
    {
        publish_string(mode, uid);
    }
    if let Some(Json::Array(mounts)) = c.field_mut("Mounts") {
        for m in mounts {
            if let Some(name) = m.field_mut("Name") {
                publish_string(name, uid);
            }
        }
    }
}

/// Rewrites the names in a container list (`Names`) or inspect (`Name`)
/// answer, and the network and volume names in it, to the pod's own.
pub fn publish_container_names(value: &mut Json, uid: &str) {
    match value {
        Json::Array(items) => {
            for item in items {
                if let Some(Json::Array(names)) = item.field_mut("Names") {
                    names.iter_mut().for_each(|n| publish_string(n, uid));
                }
                publish_container_refs(item, uid);
            }
        }
        Json::Object(_) => {
            if let Some(name) = value.field_mut("Name") {
                publish_string(name, uid);
            }
            publish_container_refs(value, uid);
        }
        _ => {}
    }
}

/// A network list (`[].Name`) or inspect (`Name`) answer, with the pod's
/// own names; an inspect's `Containers` map names containers too.
pub fn publish_network_names(value: &mut Json, uid: &str) {
    let one = |n: &mut Json| {
        if let Some(name) = n.field_mut("Name") {
            publish_string(name, uid);
        }
        if let Some(Json::Object(members)) = n.field_mut("Containers") {
            for (_, m) in members.iter_mut() {
                if let Some(name) = m.field_mut("Name") {
                    publish_string(name, uid);
                }
            }
        }
    };
    match value {
        Json::Array(items) => items.iter_mut().for_each(one),
        Json::Object(_) => one(value),
        _ => {}
    }
}

/// A volume list (`Volumes[].Name`) or inspect (`Name`) answer, with the
/// pod's own names.
pub fn publish_volume_names(value: &mut Json, uid: &str) {
    if let Some(Json::Array(items)) = value.field_mut("Volumes") {
        for v in items {
            if let Some(name) = v.field_mut("Name") {
                publish_string(name, uid);
            }
        }
    } else if let Some(name) = value.field_mut("Name") {
        publish_string(name, uid);
    }
}

/// The `name` values of a list's `filters`, taken out so that the guard
/// applies them to the names the pod sees (dockerd would match the stored
/// `nd_<uid>_` names: `name=^db$` would find nothing, `name=nd_` everything).
#[derive(Debug, Default)]
pub struct NameFilter {
    /// Each value, and its regular expression when it is one.
    values: Vec<(String, Option<regex::Regex>)>,
}

/// Splits `filters` into the rest (forwarded) and its `name` values.
pub fn take_name_filter(filters: Option<&str>) -> Result<(Option<String>, NameFilter), String> {
    let raw = filters.unwrap_or("").trim();
    if raw.is_empty() {
        return Ok((None, NameFilter::default()));
    }
    let mut value: Json = serde_json::from_str(raw)
        .map_err(|e| format!("nestdock guard: the filters parameter is not JSON: {e}"))?;
    let Json::Object(entries) = &mut value else {
        // with_pod_filter reports the shape.
        return Ok((Some(raw.to_string()), NameFilter::default()));
    };
    let mut names = Vec::new();
    entries.retain(|(key, values)| {
        if key != "name" {
            return true;
        }
        match values {
            Json::Array(items) => {
                names.extend(items.iter().filter_map(Json::as_str).map(str::to_string))
            }
            Json::Object(items) => names.extend(items.iter().map(|(k, _)| k.clone())),
            _ => {}
        }
        false
    });
    let rest = String::from_utf8_lossy(&value.to_bytes()).into_owned();
    let values = names
        .into_iter()
        .map(|n| {
            // dockerd skips a value that is not a valid expression (it can
            // still match exactly).
            let re = regex::Regex::new(&n).ok();
            (n, re)
        })
        .collect();
    Ok((Some(rest), NameFilter { values }))
}

impl NameFilter {
    /// Whether `name` passes, as dockerd's `filters.Match` decides: no
    /// values, the name itself, or an expression found in it.
    pub fn matches(&self, name: &str) -> bool {
        self.values.is_empty()
            || self
                .values
                .iter()
                .any(|(v, re)| v == name || re.as_ref().is_some_and(|re| re.is_match(name)))
    }

    /// Keeps the items of a published list the filter lets through: a
    /// container by any of its names, with or without the leading `/` (as
    /// dockerd matches them), a network or volume by its name.
    pub fn apply(&self, list: &mut Json) {
        if self.values.is_empty() {
            return;
        }
        let keep = |item: &Json| {
            if let Some(Json::Array(names)) = item.field("Names") {
                return names
                    .iter()
                    .filter_map(Json::as_str)
                    .any(|n| self.matches(n) || self.matches(n.strip_prefix('/').unwrap_or(n)));
            }
            item.field("Name")
                .and_then(Json::as_str)
                .is_some_and(|n| self.matches(n))
        };
        let items = match list {
            Json::Array(items) => items,
            other => match other.field_mut("Volumes") {
                Some(Json::Array(items)) => items,
                _ => return,
            },
        };
        items.retain(keep);
    }
}

/// An events `filters` parameter whose `container`, `network` and `volume`
/// values also name the stored objects: `-f container=db` is dockerd's
/// `nd_<uid>_db` (the pod's label filter keeps other pods' events out).
pub fn with_private_event_names(
    filters: Option<&str>,
    uid: &str,
) -> Result<Option<String>, String> {
    let raw = filters.unwrap_or("").trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let mut value: Json = serde_json::from_str(raw)
        .map_err(|e| format!("nestdock guard: the filters parameter is not JSON: {e}"))?;
    if let Json::Object(entries) = &mut value {
        for (key, values) in entries.iter_mut() {
            if !matches!(key.as_str(), "container" | "network" | "volume") {
                continue;
            }
            let private = |v: &str| is_name(v).then(|| private_name(uid, v));
            match values {
                Json::Array(items) => {
                    let extra: Vec<Json> = items
                        .iter()
                        .filter_map(Json::as_str)
                        .filter_map(private)
                        .map(Json::String)
                        .collect();
                    items.extend(extra);
                }
                Json::Object(items) => {
                    let extra: Vec<(String, Json)> = items
                        .iter()
                        .filter_map(|(k, _)| private(k))
                        .map(|k| (k, Json::Bool(true)))
                        .collect();
                    items.extend(extra);
                }
                _ => {}
            }
        }
    }
    Ok(Some(
        String::from_utf8_lossy(&value.to_bytes()).into_owned(),
    ))
}

/// One event of dockerd's stream (a JSON object on a line), with the names
/// the pod knows: the actor's `name` attribute (a container's or a
/// network's) and a volume's id, which is its name. A line that is not JSON
/// is left as it is.
pub fn publish_event(line: &[u8], uid: &str) -> Vec<u8> {
    let Ok(mut event) = serde_json::from_slice::<Json>(line) else {
        return line.to_vec();
    };
    let volume = event.field("Type").and_then(Json::as_str) == Some("volume");
    if let Some(actor) = event.field_mut("Actor") {
        if let Some(name) = actor.field_mut("Attributes").and_then(|a| match a {
            Json::Object(entries) => entries
                .iter_mut()
                .find(|(k, _)| k == "name")
                .map(|(_, v)| v),
            _ => None,
        }) {
            publish_string(name, uid);
        }
        if volume {
            if let Some(id) = actor.field_mut("ID") {
                publish_string(id, uid);
            }
        }
    }
    if volume {
        if let Some(id) = event.field_mut("id") {
            publish_string(id, uid);
        }
    }
    event.to_bytes()
}

/// `key=value` of the pod's label, as filters write it.
pub fn label_filter(uid: &str) -> String {
    format!("{POD_UID_LABEL}={uid}")
}

/// The `filters` parameter with the pod's label added to what the client
/// asked for (filters of one key are ANDed with filters of another, and
/// several `label` values must all match, so the pod's own constraint can
/// only narrow the client's). Both of dockerd's forms are read
/// (`{"label":["a=b"]}` and `{"label":{"a=b":true}}`); the map form is
/// written.
pub fn with_pod_filter(filters: Option<&str>, uid: &str) -> Result<String, String> {
    let mut merged: Vec<(String, Vec<String>)> = Vec::new();
    let raw = filters.unwrap_or("").trim();
    if !raw.is_empty() {
        let value: Json = serde_json::from_str(raw)
            .map_err(|e| format!("nestdock guard: the filters parameter is not JSON: {e}"))?;
        let bad = || {
            "nestdock guard: the filters parameter must be a JSON object of \
             {\"key\": [\"value\", ...]} or {\"key\": {\"value\": true}}"
                .to_string()
        };
        let Json::Object(entries) = value else {
            return Err(bad());
        };
        for (key, values) in entries {
            if merged.iter().any(|(k, _)| *k == key) {
                return Err(format!(
                    "nestdock guard: the filters parameter names {key:?} twice; name each key once"
                ));
            }
            let list = match values {
                Json::Array(items) => items
                    .into_iter()
                    .map(|v| match v {
                        Json::String(s) => Ok(s),
                        _ => Err(bad()),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                Json::Object(items) => {
                    let mut list: Vec<String> = Vec::with_capacity(items.len());
                    for (v, _) in items {
                        if list.contains(&v) {
                            return Err(format!(
                                "nestdock guard: the filters parameter repeats {v:?}"
                            ));
                        }
                        list.push(v);
                    }
                    list
                }
                Json::Null => Vec::new(),
                _ => return Err(bad()),
            };
            merged.push((key, list));
        }
    }
    let ours = label_filter(uid);
    match merged.iter_mut().find(|(k, _)| k == "label") {
        Some((_, list)) => {
            if !list.contains(&ours) {
                list.push(ours)
            }
        }
        None => merged.push(("label".into(), vec![ours])),
    }
    let out = Json::Object(
        merged
            .into_iter()
            .map(|(k, list)| {
                let set = list.into_iter().map(|v| (v, Json::Bool(true))).collect();
                (k, Json::Object(set))
            })
            .collect(),
    );
    Ok(String::from_utf8_lossy(&out.to_bytes()).into_owned())
}

/// Puts the pod's label into the `Labels` map of a create body (a
/// container's, a network's or a volume's), over any value the client gave
/// that key.
pub fn label_body(body: &mut Json, uid: &str) {
    if !matches!(body, Json::Object(_)) {
        return;
    }
    if body.field("Labels").is_none() {
        body.set_field("Labels", Json::Null);
    }
    if let Some(labels) = body.field_mut("Labels") {
        if !matches!(labels, Json::Object(_) | Json::Null) {
            *labels = Json::Null;
        }
        labels.set_entry(POD_UID_LABEL, Json::String(uid.to_string()));
    }
}

/// The `labels` parameter of an image build with the pod's label added.
pub fn with_pod_label_param(labels: Option<&str>, uid: &str) -> Result<String, String> {
    let mut value = match labels.map(str::trim).filter(|l| !l.is_empty()) {
        Some(raw) => body::parse_map(raw.as_bytes())
            .map_err(|e| format!("nestdock guard: the labels parameter: {e}"))?,
        None => Json::Null,
    };
    if !matches!(value, Json::Object(_) | Json::Null) {
        return Err(
            "nestdock guard: the labels parameter must be a JSON object of strings".to_string(),
        );
    }
    value.set_entry(POD_UID_LABEL, Json::String(uid.to_string()));
    Ok(String::from_utf8_lossy(&value.to_bytes()).into_owned())
}

/// Whether an inspect answer (a container's `Config.Labels`, a network's or
/// a volume's `Labels`) carries the pod's label.
pub fn owned_by(inspect: &Json, kind: Kind, uid: &str) -> bool {
    let labels = match kind {
        Kind::Container => inspect.field("Config").and_then(|c| c.field("Labels")),
        Kind::Network | Kind::Volume => inspect.field("Labels"),
        Kind::Exec => None,
    };
    labels
        .and_then(|l| l.entry(POD_UID_LABEL))
        .and_then(Json::as_str)
        == Some(uid)
}

/// `GET /system/df` trimmed to the pod's containers and volumes. Images and
/// the build cache are shared, and stay.
pub fn filter_df(df: &mut Json, uid: &str) {
    for field in ["Containers", "Volumes"] {
        if let Some(Json::Array(items)) = df.field_mut(field) {
            items.retain(|item| {
                item.field("Labels")
                    .and_then(|l| l.entry(POD_UID_LABEL))
                    .and_then(Json::as_str)
                    == Some(uid)
            });
        }
    }
    if let Some(containers) = df.field_mut("Containers") {
        publish_container_names(containers, uid);
    }
    if let Some(Json::Array(volumes)) = df.field_mut("Volumes") {
        for v in volumes {
            publish_volume_names(v, uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_show_and_take_the_pods_names() {
        let event = br#"{"Type":"container","Action":"start","Actor":{"ID":"abc","Attributes":{"name":"nd_u1_db","image":"busybox"}}}"#;
        let shown = String::from_utf8(publish_event(event, "u1")).unwrap();
        assert!(
            shown.contains(r#""name":"db""#) && shown.contains(r#""ID":"abc""#),
            "{shown}"
        );
        let volume = br#"{"Type":"volume","Action":"create","id":"nd_u1_data","Actor":{"ID":"nd_u1_data","Attributes":{"driver":"local"}}}"#;
        let shown = String::from_utf8(publish_event(volume, "u1")).unwrap();
        assert!(!shown.contains("nd_u1_"), "{shown}");
        assert_eq!(publish_event(b"not json", "u1"), b"not json".to_vec());
        let filters = with_private_event_names(
            Some(r#"{"container":["db"],"type":{"container":true}}"#),
            "u1",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            filters,
            r#"{"container":["db","nd_u1_db"],"type":{"container":true}}"#
        );
        assert_eq!(with_private_event_names(None, "u1").unwrap(), None);
    }

    #[test]
    fn name_filters_are_taken_out_and_read_as_dockerd_reads_them() {
        let (rest, names) =
            take_name_filter(Some(r#"{"name":{"^db$":true},"status":["exited"]}"#)).unwrap();
        assert_eq!(rest.as_deref(), Some(r#"{"status":["exited"]}"#));
        assert!(names.matches("db") && !names.matches("nd_u1_db") && !names.matches("dbx"));
        let (_, names) = take_name_filter(Some(r#"{"name":["a+","[x"]}"#)).unwrap();
        assert!(names.matches("aa") && names.matches("[x") && !names.matches("x"));
        let mut list: Json = serde_json::from_str(
            r#"[{"Names":["/db"]},{"Names":["/web","/web/db"]},{"Names":["/other"]}]"#,
        )
        .unwrap();
        take_name_filter(Some(r#"{"name":["^db$"]}"#))
            .unwrap()
            .1
            .apply(&mut list);
        assert_eq!(list.to_bytes(), br#"[{"Names":["/db"]}]"#.to_vec());
        let mut volumes: Json =
            serde_json::from_str(r#"{"Volumes":[{"Name":"data"},{"Name":"cache"}]}"#).unwrap();
        take_name_filter(Some(r#"{"name":["at"]}"#))
            .unwrap()
            .1
            .apply(&mut volumes);
        assert_eq!(
            volumes.to_bytes(),
            br#"{"Volumes":[{"Name":"data"}]}"#.to_vec()
        );
        assert_eq!(take_name_filter(None).unwrap().0, None);
        assert!(take_name_filter(Some("{"))
            .unwrap_err()
            .contains("not JSON"));
    }

    #[test]
    fn the_pod_filter_narrows_what_was_asked() {
        let uid = "u1";
        let cases = [
            (None, r#"{"label":{"io.nestdock.pod-uid=u1":true}}"#),
            (Some(""), r#"{"label":{"io.nestdock.pod-uid=u1":true}}"#),
            (
                Some(r#"{"status":["exited"]}"#),
                r#"{"status":{"exited":true},"label":{"io.nestdock.pod-uid=u1":true}}"#,
            ),
            (
                Some(r#"{"label":{"a=b":true}}"#),
                r#"{"label":{"a=b":true,"io.nestdock.pod-uid=u1":true}}"#,
            ),
            // Asking for another pod's objects asks for nothing.
            (
                Some(r#"{"label":["io.nestdock.pod-uid=u2"]}"#),
                r#"{"label":{"io.nestdock.pod-uid=u2":true,"io.nestdock.pod-uid=u1":true}}"#,
            ),
        ];
        for (given, want) in cases {
            assert_eq!(with_pod_filter(given, uid).unwrap(), want, "{given:?}");
        }
        for bad in [
            "[]",
            "{",
            r#"{"label":1}"#,
            r#"{"label":[1]}"#,
            r#"{"label":[],"label":["x"]}"#,
            r#"{"label":{"a":true,"a":false}}"#,
        ] {
            let e = with_pod_filter(Some(bad), uid).expect_err(bad);
            assert!(
                e.starts_with("nestdock guard: the filters parameter"),
                "{e}"
            );
        }
    }

    #[test]
    fn labels_are_set_over_what_the_client_gave() {
        let cases = [
            (
                r#"{"Image":"x"}"#,
                r#"{"Image":"x","Labels":{"io.nestdock.pod-uid":"u1"}}"#,
            ),
            (
                r#"{"labels":null}"#,
                r#"{"labels":{"io.nestdock.pod-uid":"u1"}}"#,
            ),
            (
                r#"{"Labels":{"a":"b","io.nestdock.pod-uid":"u2"}}"#,
                r#"{"Labels":{"a":"b","io.nestdock.pod-uid":"u1"}}"#,
            ),
        ];
        for (given, want) in cases {
            let mut b = body::parse(given.as_bytes()).unwrap();
            label_body(&mut b, "u1");
            assert_eq!(String::from_utf8(b.to_bytes()).unwrap(), want);
        }
        assert_eq!(
            with_pod_label_param(Some(r#"{"a":"b"}"#), "u1").unwrap(),
            r#"{"a":"b","io.nestdock.pod-uid":"u1"}"#
        );
        assert!(with_pod_label_param(Some("[]"), "u1").is_err());
    }

    #[test]
    fn ownership_is_read_from_inspect() {
        let c = body::parse(br#"{"Config":{"Labels":{"io.nestdock.pod-uid":"u1"}}}"#).unwrap();
        assert!(owned_by(&c, Kind::Container, "u1"));
        assert!(!owned_by(&c, Kind::Container, "u2"));
        let n = body::parse(br#"{"Labels":{"io.nestdock.pod-uid":"u1"}}"#).unwrap();
        assert!(owned_by(&n, Kind::Network, "u1"));
        assert!(!owned_by(&n, Kind::Container, "u1"));
        let none = body::parse(br#"{"Labels":null}"#).unwrap();
        assert!(!owned_by(&none, Kind::Volume, "u1"));
    }

    #[test]
    fn container_names_are_private_to_the_pod() {
        assert_eq!(private_name("u1", "db"), "nd_u1_db");
        assert_eq!(private_name("u1", "/db"), "nd_u1_db");
        assert_eq!(public_name("u1", "/nd_u1_db"), "/db");
        assert_eq!(public_name("u1", "/nd_u1_web/nd_u1_db"), "/web/db");
        assert_eq!(public_name("u1", "/nd_u2_db"), "/nd_u2_db");
        for ok in ["db", "/db", "a.b-c_d", "0"] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in ["", "/", "-a", "_a", "a/b", "a b", "a:b", "é"] {
            assert!(!is_name(bad), "{bad}");
        }
        let mut list =
            body::parse(br#"[{"Id":"x","Names":["/nd_u1_db","/nd_u1_web/nd_u1_db"]}]"#).unwrap();
        publish_container_names(&mut list, "u1");
        assert_eq!(
            String::from_utf8(list.to_bytes()).unwrap(),
            r#"[{"Id":"x","Names":["/db","/web/db"]}]"#
        );
        let mut one = body::parse(br#"{"Id":"x","Name":"/nd_u1_db"}"#).unwrap();
        publish_container_names(&mut one, "u1");
        assert_eq!(one.field("Name"), Some(&Json::String("/db".into())));
    }

    #[test]
    fn network_and_volume_names_are_published() {
        let mut c = body::parse(
            br#"{"Name":"/nd_u1_web","HostConfig":{"NetworkMode":"nd_u1_ci"},"NetworkSettings":{"Networks":{"nd_u1_ci":{},"bridge":{}}},"Mounts":[{"Name":"nd_u1_data"},{"Type":"bind"}]}"#,
        )
        .unwrap();
        publish_container_names(&mut c, "u1");
        assert_eq!(
            String::from_utf8(c.to_bytes()).unwrap(),
            r#"{"Name":"/web","HostConfig":{"NetworkMode":"ci"},"NetworkSettings":{"Networks":{"ci":{},"bridge":{}}},"Mounts":[{"Name":"data"},{"Type":"bind"}]}"#
        );
        let mut n =
            body::parse(br#"[{"Name":"nd_u1_ci","Containers":{"x":{"Name":"nd_u1_web"}}}]"#)
                .unwrap();
        publish_network_names(&mut n, "u1");
        assert_eq!(
            String::from_utf8(n.to_bytes()).unwrap(),
            r#"[{"Name":"ci","Containers":{"x":{"Name":"web"}}}]"#
        );
        let mut v =
            body::parse(br#"{"Volumes":[{"Name":"nd_u1_data"},{"Name":"anon"}],"Warnings":null}"#)
                .unwrap();
        publish_volume_names(&mut v, "u1");
        assert_eq!(
            String::from_utf8(v.to_bytes()).unwrap(),
            r#"{"Volumes":[{"Name":"data"},{"Name":"anon"}],"Warnings":null}"#
        );
    }

    #[test]
    fn df_keeps_the_pods_own() {
        let mut df = body::parse(
            br#"{"Images":[{"Id":"i"}],"Containers":[{"Id":"a","Labels":{"io.nestdock.pod-uid":"u1"}},{"Id":"b","Labels":{}}],"Volumes":[{"Name":"v","Labels":null}]}"#,
        )
        .unwrap();
        filter_df(&mut df, "u1");
        assert_eq!(
            String::from_utf8(df.to_bytes()).unwrap(),
            r#"{"Images":[{"Id":"i"}],"Containers":[{"Id":"a","Labels":{"io.nestdock.pod-uid":"u1"}}],"Volumes":[]}"#
        );
    }
}
