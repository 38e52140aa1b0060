//! What a pod may ask dockerd to create: the rules on container, exec,
//! network and volume bodies and on image builds. Pure: a rule either
//! refuses (403 and a message naming the field) or says which objects the
//! request refers to, for the proxy to check that the pod owns them.
//!
//! Where a field has a small set of harmless values, those are allowed and
//! everything else refused (an allow list), so that a spelling dockerd
//! accepts and the guard did not foresee is refused rather than let through.

use super::body::Json;
use super::owner;
use super::ports::HostPorts;
use super::query::Query;
#[cfg(test)]
use super::{body, query};

/// A refusal: the HTTP status and dockerd-style message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub status: u16,
    pub message: String,
}

/// An object a request names, which must belong to the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// A container (`container:<id>` modes, `VolumesFrom`, `Links`,
    /// `network connect`): must exist and be the pod's.
    Container { field: String, id: String },
    /// A user-defined network: must exist and be the pod's.
    Network { field: String, name: String },
    /// A named volume: the pod's, or created for the pod when missing
    /// (dockerd would create it unlabelled).
    Volume { field: String, name: String },
    /// A path inside one of the pod's emptyDir volumes (`volume` is its name,
    /// `rest` the components below it): the volume must be one the pod has.
    /// How a path below its root is bound safely is `subpath`'s.
    HostPath {
        field: String,
        volume: String,
        rest: Vec<String>,
    },
}

/// What the rules know of the pod.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    pub uid: &'a str,
    /// The kubelet's root directory on the node (`/var/lib/kubelet`).
    pub kubelet_root: &'a str,
    /// Where fixed host ports may be published (none: random ports only).
    pub host_ports: &'a HostPorts,
}

/// Where the kubelet keeps pod `uid`'s emptyDir volumes on the node.
pub fn empty_dir_root(kubelet_root: &str, uid: &str) -> String {
    format!(
        "{}/pods/{uid}/volumes/kubernetes.io~empty-dir",
        kubelet_root.trim_end_matches('/')
    )
}

impl Scope<'_> {
    /// Where the kubelet keeps this pod's emptyDir volumes on the node.
    pub fn empty_dir_root(&self) -> String {
        empty_dir_root(self.kubelet_root, self.uid)
    }
}

pub(super) fn deny(field: &str, value: &Json, why: &str) -> Denied {
    Denied {
        status: 403,
        message: format!(
            "nestdock guard: {field} {} is refused: {why}",
            value.shown()
        ),
    }
}

pub(super) fn bad(field: &str, value: &Json, expected: &str) -> Denied {
    Denied {
        status: 400,
        message: format!(
            "nestdock guard: {field} {} cannot be read (expected {expected})",
            value.shown()
        ),
    }
}

/// Refuses a field unless it is unset (`null`, `false`, empty).
fn must_be_unset(obj: &Json, prefix: &str, name: &str, why: &str) -> Result<(), Denied> {
    match obj.field(name) {
        Some(v) if !v.is_unset() => Err(deny(&format!("{prefix}{name}"), v, why)),
        _ => Ok(()),
    }
}

/// Refuses a field unless it is absent or `null`: for lists where even `[]`
/// means something (it replaces dockerd's default).
fn must_be_absent(obj: &Json, prefix: &str, name: &str, why: &str) -> Result<(), Denied> {
    match obj.field(name) {
        Some(v) if !matches!(v, Json::Null) => Err(deny(&format!("{prefix}{name}"), v, why)),
        _ => Ok(()),
    }
}

/// The field as a string: `None` when absent or null, an error for another
/// type.
fn string_field<'a>(obj: &'a Json, prefix: &str, name: &str) -> Result<Option<&'a str>, Denied> {
    match obj.field(name) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(v) => Err(bad(&format!("{prefix}{name}"), v, "a string")),
    }
}

/// The field as a list of strings (absent or null: empty).
fn strings_field<'a>(obj: &'a Json, prefix: &str, name: &str) -> Result<Vec<&'a str>, Denied> {
    match obj.field(name) {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .ok_or_else(|| bad(&format!("{prefix}{name}"), i, "a list of strings"))
            })
            .collect(),
        Some(v) => Err(bad(&format!("{prefix}{name}"), v, "a list of strings")),
    }
}

/// A namespace mode (`PidMode`, `IpcMode`, `Cgroup`...): one of `allowed`,
/// or `container:<id>` of one of the pod's containers when `container` is
/// true.
fn namespace_mode(
    hc: &Json,
    name: &str,
    allowed: &[&str],
    container: bool,
    needs: &mut Vec<Need>,
) -> Result<(), Denied> {
    let field = format!("HostConfig.{name}");
    let Some(mode) = string_field(hc, "HostConfig.", name)? else {
        return Ok(());
    };
    if allowed.contains(&mode) {
        return Ok(());
    }
    if let Some(id) = mode.strip_prefix("container:").filter(|_| container) {
        needs.push(Need::Container {
            field,
            id: id.to_string(),
        });
        return Ok(());
    }
    let why = if mode == "host" {
        "the node's namespaces belong to no pod"
    } else {
        "allowed here: the daemon's default"
    };
    Err(deny(&field, &Json::String(mode.to_string()), why))
}

const RESOURCE_DENIALS: &[(&str, &str)] = &[
    ("Devices", "the node's devices belong to no pod"),
    (
        "DeviceRequests",
        "the node's devices (GPUs) are not shared through the guard",
    ),
    (
        "DeviceCgroupRules",
        "device cgroup rules open the node's devices to the container",
    ),
    (
        "CgroupParent",
        "containers stay under the daemon's cgroup parent, outside the node's other cgroups",
    ),
];

/// The security options a pod may set; everything else is refused.
fn security_opt_allowed(opt: &str) -> bool {
    let (key, value) = match opt.split_once('=') {
        Some(kv) => kv,
        None => opt.split_once(':').unwrap_or((opt, "")),
    };
    match key {
        "no-new-privileges" => matches!(value, "" | "true" | "false"),
        "apparmor" => value == "docker-default",
        "label" => value.starts_with("level:"),
        _ => false,
    }
}

/// A bind source: a host path inside one of the pod's emptyDirs, or a named
/// volume.
fn bind_source(
    field: &str,
    source: &str,
    scope: &Scope,
    needs: &mut Vec<Need>,
) -> Result<(), Denied> {
    let shown = Json::String(source.to_string());
    if !source.starts_with('/') {
        if source.is_empty() {
            return Ok(()); // an anonymous volume
        }
        needs.push(Need::Volume {
            field: field.to_string(),
            name: source.to_string(),
        });
        return Ok(());
    }
    let root = scope.empty_dir_root();
    let why =
        format!("only the pod's own emptyDir volumes ({root}/<volume>) may be bound from the node");
    let mut parts = Vec::new();
    for part in source.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(deny(
                    field,
                    &shown,
                    &format!("{why}; the path climbs with .."),
                ))
            }
            p => parts.push(p),
        }
    }
    let root_parts: Vec<&str> = root.split('/').filter(|p| !p.is_empty()).collect();
    if parts.len() <= root_parts.len() || parts[..root_parts.len()] != root_parts[..] {
        return Err(deny(field, &shown, &why));
    }
    let volume = parts[root_parts.len()].to_string();
    let rest: Vec<String> = parts[root_parts.len() + 1..]
        .iter()
        .map(|p| p.to_string())
        .collect();
    needs.push(Need::HostPath {
        field: field.to_string(),
        volume,
        rest,
    });
    Ok(())
}

/// Driver options of a local volume: none, or a tmpfs. Bind options
/// (`type=none,o=bind,device=/`) and devices (`device=/dev/sda1`, NFS) would
/// mount what the node has.
fn volume_driver_options(field: &str, opts: Option<&Json>) -> Result<(), Denied> {
    let Some(opts) = opts.filter(|o| !o.is_unset()) else {
        return Ok(());
    };
    let Json::Object(entries) = opts else {
        return Err(bad(field, opts, "a map of strings"));
    };
    let get = |k: &str| {
        entries
            .iter()
            .find(|(key, _)| key == k)
            .and_then(|(_, v)| v.as_str())
    };
    let tmpfs = get("type") == Some("tmpfs")
        && get("device") == Some("tmpfs")
        && !get("o").unwrap_or("").contains("bind")
        && entries
            .iter()
            .all(|(k, _)| matches!(k.as_str(), "type" | "device" | "o"));
    if tmpfs {
        Ok(())
    } else {
        Err(deny(
            field,
            opts,
            "a local volume may not mount the node's paths or devices (only type=tmpfs,device=tmpfs \
             options are allowed)",
        ))
    }
}

fn volume_driver(field: &str, driver: Option<&str>) -> Result<(), Denied> {
    match driver {
        None | Some("") | Some("local") => Ok(()),
        Some(d) => Err(deny(
            field,
            &Json::String(d.to_string()),
            "only the local volume driver is allowed",
        )),
    }
}

/// `POST /containers/create`: refuses what would reach the node, labels the
/// container with the pod's uid, and says which objects it names.
pub fn container_create(body: &mut Json, scope: &Scope) -> Result<Vec<Need>, Denied> {
    if !matches!(body, Json::Object(_)) {
        return Err(bad("the body", body, "a JSON object"));
    }
    let mut needs = Vec::new();
    if let Some(hc) = body
        .field("HostConfig")
        .filter(|h| !matches!(h, Json::Null))
    {
        if !matches!(hc, Json::Object(_)) {
            return Err(bad("HostConfig", hc, "an object"));
        }
        host_config(hc, scope, &mut needs)?;
    }
    if let Some(nc) = body.field("NetworkingConfig").filter(|n| !n.is_unset()) {
        match nc.field("EndpointsConfig") {
            None | Some(Json::Null) => {}
            Some(Json::Object(entries)) => {
                for (name, _) in entries {
                    network_name("NetworkingConfig.EndpointsConfig", name, &mut needs);
                }
            }
            Some(v) => return Err(bad("NetworkingConfig.EndpointsConfig", v, "a map")),
        }
    }
    owner::label_body(body, scope.uid);
    Ok(needs)
}

/// A network a container joins: the daemon's defaults, or one of the pod's.
fn network_name(field: &str, name: &str, needs: &mut Vec<Need>) {
    if !matches!(name, "" | "default" | "bridge" | "none") {
        needs.push(Need::Network {
            field: field.to_string(),
            name: name.to_string(),
        });
    }
}

fn host_config(hc: &Json, scope: &Scope, needs: &mut Vec<Need>) -> Result<(), Denied> {
    let p = "HostConfig.";
    must_be_unset(
        hc,
        p,
        "Privileged",
        "a privileged container is root on the node",
    )?;
    must_be_unset(
        hc,
        p,
        "CapAdd",
        "added capabilities reach beyond the container",
    )?;
    must_be_unset(
        hc,
        p,
        "Capabilities",
        "a capability set replaces the daemon's safe default",
    )?;
    for (name, why) in RESOURCE_DENIALS {
        must_be_unset(hc, p, name, why)?;
    }
    must_be_absent(
        hc,
        p,
        "MaskedPaths",
        "it replaces the masked /proc and /sys paths (systempaths=unconfined)",
    )?;
    must_be_absent(
        hc,
        p,
        "ReadonlyPaths",
        "it replaces the read-only /proc and /sys paths (systempaths=unconfined)",
    )?;
    namespace_mode(hc, "PidMode", &[""], true, needs)?;
    namespace_mode(
        hc,
        "IpcMode",
        &["", "none", "private", "shareable"],
        true,
        needs,
    )?;
    namespace_mode(hc, "UTSMode", &[""], false, needs)?;
    namespace_mode(hc, "UsernsMode", &[""], false, needs)?;
    namespace_mode(hc, "CgroupnsMode", &["", "private"], false, needs)?;
    namespace_mode(hc, "Cgroup", &[""], true, needs)?;
    match string_field(hc, p, "NetworkMode")? {
        Some("host") => {
            return Err(deny(
                "HostConfig.NetworkMode",
                &Json::String("host".into()),
                "the node's network namespace belongs to no pod",
            ))
        }
        Some(mode) => match mode.strip_prefix("container:") {
            Some(id) => needs.push(Need::Container {
                field: "HostConfig.NetworkMode".into(),
                id: id.to_string(),
            }),
            None => network_name("HostConfig.NetworkMode", mode, needs),
        },
        None => {}
    }
    for opt in strings_field(hc, p, "SecurityOpt")? {
        if !security_opt_allowed(opt) {
            return Err(deny(
                "HostConfig.SecurityOpt",
                &Json::String(opt.to_string()),
                "seccomp, AppArmor and SELinux stay confined (allowed: no-new-privileges, \
                 apparmor=docker-default, label=level:...)",
            ));
        }
    }
    match string_field(hc, p, "Runtime")? {
        None | Some("") | Some("runc") => {}
        Some(r) => {
            return Err(deny(
                "HostConfig.Runtime",
                &Json::String(r.to_string()),
                "only the daemon's default runtime (runc) is allowed",
            ))
        }
    }
    volume_driver(
        "HostConfig.VolumeDriver",
        string_field(hc, p, "VolumeDriver")?,
    )?;
    for from in strings_field(hc, p, "VolumesFrom")? {
        let id = from.split(':').next().unwrap_or("");
        needs.push(Need::Container {
            field: "HostConfig.VolumesFrom".into(),
            id: id.to_string(),
        });
    }
    for link in strings_field(hc, p, "Links")? {
        let id = link.split(':').next().unwrap_or("").trim_start_matches('/');
        needs.push(Need::Container {
            field: "HostConfig.Links".into(),
            id: id.to_string(),
        });
    }
    for bind in strings_field(hc, p, "Binds")? {
        let parts: Vec<&str> = bind.split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad(
                "HostConfig.Binds",
                &Json::String(bind.to_string()),
                "source:target[:options]",
            ));
        }
        bind_source("HostConfig.Binds", parts[0], scope, needs)?;
    }
    match hc.field("Mounts") {
        None | Some(Json::Null) => {}
        Some(Json::Array(mounts)) => {
            for m in mounts {
                mount(m, scope, needs)?;
            }
        }
        Some(v) => return Err(bad("HostConfig.Mounts", v, "a list of mounts")),
    }
    match hc.field("PortBindings") {
        None | Some(Json::Null) => {}
        Some(Json::Object(ports)) => {
            for (port, bindings) in ports {
                let field = format!("HostConfig.PortBindings[{port:?}]");
                let list = match bindings {
                    Json::Null => continue,
                    Json::Array(list) => list,
                    v => return Err(bad(&field, v, "a list of bindings")),
                };
                for b in list {
                    match b.field("HostPort") {
                        None | Some(Json::Null) => {}
                        Some(Json::String(s)) if s.is_empty() || s == "0" => {}
                        Some(v @ Json::String(s)) => {
                            if let Some(why) = scope.host_ports.refuse(s) {
                                return Err(deny(&format!("{field}.HostPort"), v, &why));
                            }
                        }
                        Some(v) => return Err(bad(&format!("{field}.HostPort"), v, "a string")),
                    }
                }
            }
        }
        Some(v) => return Err(bad("HostConfig.PortBindings", v, "a map of ports")),
    }
    Ok(())
}

fn mount(m: &Json, scope: &Scope, needs: &mut Vec<Need>) -> Result<(), Denied> {
    let field = "HostConfig.Mounts";
    let kind = string_field(m, "HostConfig.Mounts.", "Type")?.unwrap_or("");
    let source = string_field(m, "HostConfig.Mounts.", "Source")?.unwrap_or("");
    match kind {
        "bind" => {
            if !source.starts_with('/') {
                return Err(bad(field, m, "an absolute Source for a bind"));
            }
            bind_source(field, source, scope, needs)
        }
        "volume" => {
            if let Some(opts) = m.field("VolumeOptions").filter(|o| !o.is_unset()) {
                if let Some(dc) = opts.field("DriverConfig").filter(|d| !d.is_unset()) {
                    volume_driver(
                        "HostConfig.Mounts.VolumeOptions.DriverConfig.Name",
                        string_field(dc, "", "Name")?,
                    )?;
                    volume_driver_options(
                        "HostConfig.Mounts.VolumeOptions.DriverConfig.Options",
                        dc.field("Options"),
                    )?;
                }
            }
            if !source.is_empty() {
                needs.push(Need::Volume {
                    field: field.to_string(),
                    name: source.to_string(),
                });
            }
            Ok(())
        }
        "tmpfs" => Ok(()),
        other => Err(deny(
            "HostConfig.Mounts.Type",
            &Json::String(other.to_string()),
            "allowed mount types: bind (of the pod's emptyDirs), volume, tmpfs",
        )),
    }
}

/// The `name` of a container create or rename, stored with the pod's
/// prefix. Absent or empty: dockerd picks a random name, which is nobody's.
pub fn container_name(query: &mut Query, uid: &str) -> Result<(), Denied> {
    let name = match query.single("name") {
        Ok(n) => n.map(str::to_string),
        Err(message) => {
            return Err(Denied {
                status: 400,
                message,
            })
        }
    };
    match name.filter(|n| !n.is_empty()) {
        None => Ok(()),
        Some(n) if owner::is_name(&n) => {
            query.set("name", owner::private_name(uid, &n));
            Ok(())
        }
        Some(n) => Err(bad("name", &Json::String(n), "[a-zA-Z0-9][a-zA-Z0-9_.-]*")),
    }
}

/// A private name for a network or volume create's `Name`.
fn private_body_name(body: &mut Json, uid: &str) -> Result<(), Denied> {
    match body.field("Name") {
        None | Some(Json::Null) => Ok(()),
        Some(Json::String(n)) if n.is_empty() => Ok(()),
        Some(Json::String(n)) if owner::is_name(n) => {
            let private = owner::private_name(uid, n);
            body.set_field("Name", Json::String(private));
            Ok(())
        }
        Some(v) => Err(bad("Name", v, "a name of [a-zA-Z0-9][a-zA-Z0-9_.-]*")),
    }
}

/// Writes what the guard checked in place of each reference of a create
/// body: the full id of a container (`container:<ref>` modes,
/// `VolumesFrom`, `Links`), the stored name of a network (`NetworkMode`,
/// the keys of `NetworkingConfig.EndpointsConfig`) or volume (`Binds`,
/// `Mounts`). dockerd then acts on what was checked, not on whatever the
/// name means a moment later (or without the pod's prefix). `pin(kind,
/// reference)` is `None` for references left as they are.
pub fn pin_refs(body: &mut Json, pin: &dyn Fn(owner::Kind, &str) -> Option<String>) {
    use owner::Kind;
    if let Some(Json::Object(endpoints)) = body
        .field_mut("NetworkingConfig")
        .and_then(|n| n.field_mut("EndpointsConfig"))
    {
        for (k, _) in endpoints.iter_mut() {
            if let Some(name) = pin(Kind::Network, k) {
                *k = name;
            }
        }
    }
    let Some(hc) = body.field_mut("HostConfig") else {
        return;
    };
    if let Some(Json::String(mode)) = hc.field_mut("NetworkMode") {
        if !mode.starts_with("container:") {
            if let Some(name) = pin(Kind::Network, mode) {
                *mode = name;
            }
        }
    }
    if let Some(Json::Array(binds)) = hc.field_mut("Binds") {
        for b in binds {
            if let Json::String(s) = b {
                if let Some((src, rest)) = s.split_once(':') {
                    if !src.starts_with('/') {
                        if let Some(name) = pin(Kind::Volume, src) {
                            *s = format!("{name}:{rest}");
                        }
                    }
                }
            }
        }
    }
    if let Some(Json::Array(mounts)) = hc.field_mut("Mounts") {
        for m in mounts {
            let is_volume = m.field("Type").and_then(Json::as_str) == Some("volume");
            if let (true, Some(Json::String(src))) = (is_volume, m.field_mut("Source")) {
                if let Some(name) = pin(Kind::Volume, src) {
                    *src = name;
                }
            }
        }
    }
    let ids = |r: &str| pin(Kind::Container, r);
    for mode in ["PidMode", "IpcMode", "NetworkMode", "Cgroup"] {
        if let Some(Json::String(s)) = hc.field_mut(mode) {
            if let Some(id) = s.strip_prefix("container:").and_then(&ids) {
                *s = format!("container:{id}");
            }
        }
    }
    if let Some(Json::Array(items)) = hc.field_mut("VolumesFrom") {
        for item in items {
            if let Json::String(s) = item {
                let (r, mode) = s
                    .split_once(':')
                    .map_or((s.as_str(), None), |(a, b)| (a, Some(b)));
                if let Some(id) = ids(r) {
                    *s = match mode {
                        Some(m) => format!("{id}:{m}"),
                        None => id,
                    };
                }
            }
        }
    }
    if let Some(Json::Array(items)) = hc.field_mut("Links") {
        for item in items {
            if let Json::String(s) = item {
                let (r, alias) = s
                    .split_once(':')
                    .map_or((s.as_str(), None), |(a, b)| (a, Some(b)));
                let r = r.trim_start_matches('/');
                if let Some(id) = ids(r) {
                    // dockerd names the link after the container unless an
                    // alias is given: keep the name the pod used.
                    *s = format!("{id}:{}", alias.unwrap_or(r));
                }
            }
        }
    }
}

/// Adds the name the pod gave a container as a network alias on each
/// user-defined network it joins: dockerd's DNS answers for the stored
/// (prefixed) name, and `ping db` from a sibling must keep working.
pub fn alias_public_name(body: &mut Json, name: &str) {
    let name = name.trim_start_matches('/');
    if name.is_empty() {
        return;
    }
    let builtin = |n: &str| matches!(n, "" | "default" | "bridge" | "none" | "host");
    let mode = body
        .field("HostConfig")
        .and_then(|h| h.field("NetworkMode"))
        .and_then(Json::as_str)
        .filter(|m| !builtin(m) && !m.starts_with("container:"))
        .map(str::to_string);
    if !matches!(body, Json::Object(_)) {
        return;
    }
    if body
        .field("NetworkingConfig")
        .is_none_or(|n| matches!(n, Json::Null))
    {
        body.set_field("NetworkingConfig", Json::Object(Vec::new()));
    }
    let Some(nc) = body.field_mut("NetworkingConfig") else {
        return;
    };
    if nc
        .field("EndpointsConfig")
        .is_none_or(|e| matches!(e, Json::Null))
    {
        nc.set_field("EndpointsConfig", Json::Object(Vec::new()));
    }
    let Some(Json::Object(endpoints)) = nc.field_mut("EndpointsConfig") else {
        return;
    };
    if let Some(mode) = mode {
        if !endpoints.iter().any(|(k, _)| *k == mode) {
            endpoints.push((mode, Json::Object(Vec::new())));
        }
    }
    for (net, settings) in endpoints.iter_mut() {
        if !builtin(net) {
            add_alias(settings, name);
        }
    }
}

/// Adds `name` to an endpoint's `Aliases` (creating what is missing).
fn add_alias(settings: &mut Json, name: &str) {
    if matches!(settings, Json::Null) {
        *settings = Json::Object(Vec::new());
    }
    if settings
        .field("Aliases")
        .is_none_or(|a| matches!(a, Json::Null))
    {
        settings.set_field("Aliases", Json::Array(Vec::new()));
    }
    if let Some(Json::Array(aliases)) = settings.field_mut("Aliases") {
        if !aliases.iter().any(|a| a.as_str() == Some(name)) {
            aliases.push(Json::String(name.to_string()));
        }
    }
}

/// `POST /networks/{id}/connect` of the pod's container `name` (as the pod
/// names it) to one of the pod's networks: the name becomes an alias there,
/// as on create, so siblings resolve it (dockerd's DNS knows the stored
/// name).
pub fn alias_on_connect(body: &mut Json, name: &str) {
    let name = name.trim_start_matches('/');
    if name.is_empty() || !matches!(body, Json::Object(_)) {
        return;
    }
    if body.field("EndpointConfig").is_none() {
        body.set_field("EndpointConfig", Json::Null);
    }
    if let Some(settings) = body.field_mut("EndpointConfig") {
        add_alias(settings, name);
    }
}

/// `POST /containers/{id}/exec`: no privileged exec.
pub fn exec_create(body: &Json) -> Result<(), Denied> {
    must_be_unset(
        body,
        "",
        "Privileged",
        "a privileged exec has every capability on the node",
    )
}

/// `POST /containers/{id}/update`: the resource fields that reach the node.
pub fn container_update(body: &Json) -> Result<(), Denied> {
    for (name, why) in RESOURCE_DENIALS {
        must_be_unset(body, "", name, why)?;
    }
    Ok(())
}

/// `POST /networks/create`: a bridge of the pod's own, labelled.
pub fn network_create(body: &mut Json, uid: &str) -> Result<(), Denied> {
    if !matches!(body, Json::Object(_)) {
        return Err(bad("the body", body, "a JSON object"));
    }
    match string_field(body, "", "Driver")? {
        None | Some("") | Some("bridge") => {}
        Some(d) => {
            return Err(deny(
                "Driver",
                &Json::String(d.to_string()),
                "only bridge networks are allowed (macvlan, ipvlan and overlay reach the node's \
                 interfaces or the swarm)",
            ))
        }
    }
    if let Some(Json::Object(opts)) = body.field("Options") {
        if let Some((k, v)) = opts
            .iter()
            .find(|(k, _)| k == "com.docker.network.bridge.name")
        {
            return Err(deny(
                &format!("Options[{k:?}]"),
                v,
                "the network may not take over a bridge of the node",
            ));
        }
    }
    must_be_unset(body, "", "Ingress", "the ingress network is the swarm's")?;
    must_be_unset(
        body,
        "",
        "ConfigFrom",
        "config-only networks are not served",
    )?;
    private_body_name(body, uid)?;
    owner::label_body(body, uid);
    Ok(())
}

/// `POST /volumes/create`: a local volume without node paths, labelled.
pub fn volume_create(body: &mut Json, uid: &str) -> Result<(), Denied> {
    if !matches!(body, Json::Object(_)) {
        return Err(bad("the body", body, "a JSON object"));
    }
    volume_driver("Driver", string_field(body, "", "Driver")?)?;
    volume_driver_options("DriverOpts", body.field("DriverOpts"))?;
    private_body_name(body, uid)?;
    owner::label_body(body, uid);
    Ok(())
}

/// `POST /networks/{id}/connect` and `disconnect`: the container must be
/// the pod's.
pub fn network_connect(body: &Json) -> Result<Vec<Need>, Denied> {
    match string_field(body, "", "Container")? {
        Some(id) => Ok(vec![Need::Container {
            field: "Container".into(),
            id: id.to_string(),
        }]),
        None => Err(bad("Container", &Json::Null, "a container id or name")),
    }
}

/// `POST /build`: no host network, no cgroup parent, the pod's label on the
/// image.
pub fn build(query: &mut Query, uid: &str) -> Result<(), Denied> {
    let single = |q: &Query, k: &str| {
        q.single(k)
            .map(|v| v.map(str::to_string))
            .map_err(|message| Denied {
                status: 400,
                message,
            })
    };
    match single(query, "networkmode")?.as_deref() {
        None | Some("") | Some("default") | Some("bridge") | Some("none") => {}
        Some(mode) => {
            return Err(deny(
                "networkmode",
                &Json::String(mode.to_string()),
                "builds use the daemon's default network",
            ))
        }
    }
    // dockerd fetches a remote context itself, from the node's network, and
    // reads a non-archive answer as the Dockerfile: its parse error shows the
    // first line of whatever answered (a metadata service, the kubelet).
    if let Some(remote) = single(query, "remote")?.filter(|r| !r.is_empty()) {
        return Err(deny(
            "remote",
            &Json::String(remote),
            "dockerd would fetch the build context from the node's network; send the context \
             in the request (docker build with a local directory or -)",
        ));
    }
    if let Some(parent) = single(query, "cgroupparent")?.filter(|p| !p.is_empty()) {
        return Err(deny(
            "cgroupparent",
            &Json::String(parent),
            RESOURCE_DENIALS[3].1,
        ));
    }
    let labels = single(query, "labels")?;
    let labels = owner::with_pod_label_param(labels.as_deref(), uid).map_err(|message| Denied {
        status: 400,
        message,
    })?;
    query.set("labels", labels);
    Ok(())
}

/// `POST /images/create`: pulls pass; an import from a URL (`fromSrc`) is
/// refused, since dockerd would fetch it from the node's network (the
/// node's metadata service and kubelet included). `fromSrc=-` (the body) is
/// fine.
pub fn image_create(query: &Query) -> Result<(), Denied> {
    match query.single("fromSrc") {
        Err(message) => Err(Denied {
            status: 400,
            message,
        }),
        Ok(None) | Ok(Some("-")) | Ok(Some("")) => Ok(()),
        Ok(Some(src)) => Err(deny(
            "fromSrc",
            &Json::String(src.to_string()),
            "dockerd would fetch the URL from the node's network; import from the request body \
             (docker import FILE, or -)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCOPE: Scope = Scope {
        uid: "u1",
        kubelet_root: "/var/lib/kubelet",
        host_ports: &HostPorts(Vec::new()),
    };

    fn create(text: &str) -> Result<(Vec<Need>, String), Denied> {
        let mut b = body::parse(text.as_bytes()).expect(text);
        let needs = container_create(&mut b, &SCOPE)?;
        Ok((needs, String::from_utf8(b.to_bytes()).unwrap()))
    }

    #[test]
    fn dangerous_create_fields_are_refused_naming_the_field() {
        let ed = "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir";
        let cases: Vec<(String, &str)> = vec![
            (r#"{"HostConfig":{"Privileged":true}}"#.into(), "HostConfig.Privileged true"),
            (r#"{"hostconfig":{"privileged":true}}"#.into(), "HostConfig.Privileged true"),
            (r#"{"HOSTCONFIG":{"PRIVILEGED":true}}"#.into(), "HostConfig.Privileged"),
            (r#"{"HostConfig":{"Privileged":"yes"}}"#.into(), "HostConfig.Privileged"),
            (r#"{"HostConfig":{"CapAdd":["SYS_ADMIN"]}}"#.into(), "HostConfig.CapAdd"),
            (r#"{"HostConfig":{"Capabilities":["CAP_SYS_ADMIN"]}}"#.into(), "HostConfig.Capabilities"),
            (r#"{"HostConfig":{"Devices":[{"PathOnHost":"/dev/sda"}]}}"#.into(), "HostConfig.Devices"),
            (r#"{"HostConfig":{"DeviceRequests":[{"Count":-1}]}}"#.into(), "HostConfig.DeviceRequests"),
            (r#"{"HostConfig":{"DeviceCgroupRules":["c *:* rwm"]}}"#.into(), "HostConfig.DeviceCgroupRules"),
            (r#"{"HostConfig":{"PidMode":"host"}}"#.into(), "HostConfig.PidMode \"host\""),
            (r#"{"HostConfig":{"IpcMode":"host"}}"#.into(), "HostConfig.IpcMode"),
            (r#"{"HostConfig":{"UTSMode":"host"}}"#.into(), "HostConfig.UTSMode"),
            (r#"{"HostConfig":{"UsernsMode":"host"}}"#.into(), "HostConfig.UsernsMode"),
            (r#"{"HostConfig":{"CgroupnsMode":"host"}}"#.into(), "HostConfig.CgroupnsMode"),
            (r#"{"HostConfig":{"NetworkMode":"host"}}"#.into(), "HostConfig.NetworkMode"),
            (r#"{"HostConfig":{"PidMode":"HOST"}}"#.into(), "HostConfig.PidMode"),
            (r#"{"HostConfig":{"SecurityOpt":["seccomp=unconfined"]}}"#.into(), "seccomp=unconfined"),
            (r#"{"HostConfig":{"SecurityOpt":["seccomp:unconfined"]}}"#.into(), "seccomp:unconfined"),
            (r#"{"HostConfig":{"SecurityOpt":["seccomp={\"defaultAction\":\"SCMP_ACT_ALLOW\"}"]}}"#.into(), "HostConfig.SecurityOpt"),
            (r#"{"HostConfig":{"SecurityOpt":["apparmor=unconfined"]}}"#.into(), "apparmor=unconfined"),
            (r#"{"HostConfig":{"SecurityOpt":["label=disable"]}}"#.into(), "label=disable"),
            (r#"{"HostConfig":{"SecurityOpt":["label:disable"]}}"#.into(), "label:disable"),
            (r#"{"HostConfig":{"SecurityOpt":["label=type:spc_t"]}}"#.into(), "label=type:spc_t"),
            (r#"{"HostConfig":{"SecurityOpt":["systempaths=unconfined"]}}"#.into(), "systempaths"),
            (r#"{"HostConfig":{"MaskedPaths":[]}}"#.into(), "HostConfig.MaskedPaths []"),
            (r#"{"HostConfig":{"ReadonlyPaths":[]}}"#.into(), "HostConfig.ReadonlyPaths"),
            (r#"{"HostConfig":{"CgroupParent":"/"}}"#.into(), "HostConfig.CgroupParent"),
            (r#"{"HostConfig":{"Runtime":"io.containerd.runtime.v1.linux"}}"#.into(), "HostConfig.Runtime"),
            (r#"{"HostConfig":{"VolumeDriver":"sshfs"}}"#.into(), "HostConfig.VolumeDriver"),
            (r#"{"HostConfig":{"Binds":["/:/host"]}}"#.into(), "HostConfig.Binds \"/\""),
            (r#"{"HostConfig":{"Binds":["/etc:/x:ro"]}}"#.into(), "HostConfig.Binds \"/etc\""),
            (r#"{"HostConfig":{"Binds":["/var/run/docker.sock:/var/run/docker.sock"]}}"#.into(), "HostConfig.Binds"),
            (format!(r#"{{"HostConfig":{{"Binds":["{ed}/../../../../..:/x"]}}}}"#), "climbs"),
            (format!(r#"{{"HostConfig":{{"Binds":["{ed}:/x"]}}}}"#), "only the pod's own emptyDir"),
            (r#"{"HostConfig":{"Binds":["/var/lib/kubelet/pods/u2/volumes/kubernetes.io~empty-dir/w:/x"]}}"#.into(), "HostConfig.Binds"),
            (r#"{"HostConfig":{"Mounts":[{"Type":"bind","Source":"/","Target":"/h"}]}}"#.into(), "HostConfig.Mounts \"/\""),
            (r#"{"HostConfig":{"Mounts":[{"Type":"npipe","Source":"x","Target":"/h"}]}}"#.into(), "HostConfig.Mounts.Type"),
            (r#"{"HostConfig":{"Mounts":[{"Type":"volume","Target":"/h","VolumeOptions":{"DriverConfig":{"Options":{"type":"none","o":"bind","device":"/"}}}}]}}"#.into(), "DriverConfig.Options"),
            (r#"{"HostConfig":{"PortBindings":{"80/tcp":[{"HostPort":"8080"}]}}}"#.into(), "HostConfig.PortBindings[\"80/tcp\"].HostPort \"8080\""),
            (r#"{"HostConfig":{"PortBindings":{"80/tcp":[{"HostIp":"","HostPort":"1-65535"}]}}}"#.into(), "HostPort"),
        ];
        for (text, want) in &cases {
            let e = create(text).expect_err(text);
            assert!(e.message.contains(want), "{text}: {}", e.message);
            assert!(e.message.starts_with("nestdock guard: "), "{}", e.message);
            assert!(e.status == 403 || e.status == 400, "{text}");
        }
    }

    #[test]
    fn fixed_host_ports_pass_only_in_the_configured_ranges() {
        let ranges = HostPorts(vec!["8000-8099".parse().unwrap()]);
        let scope = Scope {
            host_ports: &ranges,
            ..SCOPE
        };
        let with = |port: &str| {
            let text = format!(
                r#"{{"HostConfig":{{"PortBindings":{{"80/tcp":[{{"HostPort":"{port}"}}]}}}}}}"#
            );
            container_create(&mut body::parse(text.as_bytes()).unwrap(), &scope)
        };
        assert!(with("8080").is_ok());
        assert!(with("8000-8010").is_ok());
        let e = with("8100").unwrap_err();
        assert_eq!(e.status, 403);
        assert!(
            e.message
                .contains("HostConfig.PortBindings[\"80/tcp\"].HostPort \"8100\"")
                && e.message.contains("8000-8099 (dood.guard.hostPorts)"),
            "{}",
            e.message
        );
        assert!(with("8000-8100").is_err());
        assert!(with(" 8080").is_err());
    }

    #[test]
    fn ordinary_creates_pass_labelled_naming_what_they_use() {
        let ed = "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir";
        let (needs, out) = create(&format!(
            r#"{{"Image":"busybox","Labels":{{"a":"b"}},"HostConfig":{{"Privileged":false,"CapAdd":null,
            "CapDrop":["ALL"],"NetworkMode":"mynet","IpcMode":"shareable","PidMode":"container:c1",
            "SecurityOpt":["no-new-privileges","apparmor=docker-default","label=level:s0"],
            "Binds":["{ed}/work/src:/src:ro","data:/data"],"VolumesFrom":["c2:ro"],
            "Mounts":[{{"Type":"tmpfs","Target":"/t"}},{{"Type":"volume","Source":"v","Target":"/v"}}],
            "PortBindings":{{"80/tcp":[{{"HostIp":"","HostPort":""}}],"81/tcp":[{{"HostPort":"0"}}]}},
            "Runtime":"runc"}},"NetworkingConfig":{{"EndpointsConfig":{{"mynet":{{}},"bridge":{{}}}}}}}}"#
        ))
        .unwrap();
        assert!(
            out.contains(r#""Labels":{"a":"b","io.nestdock.pod-uid":"u1"}"#),
            "{out}"
        );
        let c = |id: &str, field: &str| Need::Container {
            field: field.into(),
            id: id.into(),
        };
        assert_eq!(
            needs,
            vec![
                c("c1", "HostConfig.PidMode"),
                Need::Network {
                    field: "HostConfig.NetworkMode".into(),
                    name: "mynet".into()
                },
                c("c2", "HostConfig.VolumesFrom"),
                Need::HostPath {
                    field: "HostConfig.Binds".into(),
                    volume: "work".into(),
                    rest: vec!["src".into()]
                },
                Need::Volume {
                    field: "HostConfig.Binds".into(),
                    name: "data".into()
                },
                Need::Volume {
                    field: "HostConfig.Mounts".into(),
                    name: "v".into()
                },
                Need::Network {
                    field: "NetworkingConfig.EndpointsConfig".into(),
                    name: "mynet".into()
                },
            ]
        );
    }

    #[test]
    fn names_and_references() {
        let mut q = query::parse(Some("name=db")).unwrap();
        container_name(&mut q, "u1").unwrap();
        assert_eq!(q.single("name").unwrap(), Some("nd_u1_db"));
        let mut q = query::parse(Some("name=")).unwrap();
        container_name(&mut q, "u1").unwrap();
        for bad in ["name=a/b", "name=-x", "name=a&name=b"] {
            let mut q = query::parse(Some(bad)).unwrap();
            assert_eq!(
                container_name(&mut q, "u1").unwrap_err().status,
                400,
                "{bad}"
            );
        }
        let mut b = body::parse(
            br#"{"HostConfig":{"PidMode":"container:db","NetworkMode":"bridge","VolumesFrom":["db:ro","x"],"Links":["/db:alias","web"]}}"#,
        )
        .unwrap();
        let pin = |kind: owner::Kind, r: &str| match (kind, r) {
            (owner::Kind::Container, "db") => Some("1111".to_string()),
            (owner::Kind::Container, "web") => Some("2222".to_string()),
            (owner::Kind::Network, "ci") => Some("nd_u1_ci".to_string()),
            (owner::Kind::Volume, "data") => Some("nd_u1_data".to_string()),
            _ => None,
        };
        pin_refs(&mut b, &pin);
        assert_eq!(
            String::from_utf8(b.to_bytes()).unwrap(),
            r#"{"HostConfig":{"PidMode":"container:1111","NetworkMode":"bridge","VolumesFrom":["1111:ro","x"],"Links":["1111:alias","2222:web"]}}"#
        );
        let mut b = body::parse(
            br#"{"HostConfig":{"NetworkMode":"ci","Binds":["data:/d:ro","/abs:/x"],"Mounts":[{"Type":"volume","Source":"data"},{"Type":"bind","Source":"data"}]},"NetworkingConfig":{"EndpointsConfig":{"ci":{"Aliases":["db"]}}}}"#,
        )
        .unwrap();
        pin_refs(&mut b, &pin);
        assert_eq!(
            String::from_utf8(b.to_bytes()).unwrap(),
            r#"{"HostConfig":{"NetworkMode":"nd_u1_ci","Binds":["nd_u1_data:/d:ro","/abs:/x"],"Mounts":[{"Type":"volume","Source":"nd_u1_data"},{"Type":"bind","Source":"data"}]},"NetworkingConfig":{"EndpointsConfig":{"nd_u1_ci":{"Aliases":["db"]}}}}"#
        );
        let mut n = body::parse(br#"{"Name":"ci"}"#).unwrap();
        network_create(&mut n, "u1").unwrap();
        assert_eq!(n.field("Name"), Some(&Json::String("nd_u1_ci".into())));
        let mut v = body::parse(br#"{"Name":"data"}"#).unwrap();
        volume_create(&mut v, "u1").unwrap();
        assert_eq!(v.field("Name"), Some(&Json::String("nd_u1_data".into())));
        let mut bad_name = body::parse(br#"{"Name":"a b"}"#).unwrap();
        assert_eq!(network_create(&mut bad_name, "u1").unwrap_err().status, 400);
    }

    #[test]
    fn the_pods_name_is_an_alias_on_its_networks() {
        let cases = [
            (
                r#"{"Image":"x"}"#,
                r#"{"Image":"x","NetworkingConfig":{"EndpointsConfig":{}}}"#,
            ),
            (
                r#"{"HostConfig":{"NetworkMode":"ci"}}"#,
                r#"{"HostConfig":{"NetworkMode":"ci"},"NetworkingConfig":{"EndpointsConfig":{"ci":{"Aliases":["db"]}}}}"#,
            ),
            (
                r#"{"HostConfig":{"NetworkMode":"ci"},"NetworkingConfig":{"EndpointsConfig":{"ci":{"Aliases":["x","db"]},"bridge":{}}}}"#,
                r#"{"HostConfig":{"NetworkMode":"ci"},"NetworkingConfig":{"EndpointsConfig":{"ci":{"Aliases":["x","db"]},"bridge":{}}}}"#,
            ),
            (
                r#"{"HostConfig":{"NetworkMode":"bridge"},"NetworkingConfig":null}"#,
                r#"{"HostConfig":{"NetworkMode":"bridge"},"NetworkingConfig":{"EndpointsConfig":{}}}"#,
            ),
        ];
        for (given, want) in cases {
            let mut b = body::parse(given.as_bytes()).unwrap();
            alias_public_name(&mut b, "/db");
            assert_eq!(String::from_utf8(b.to_bytes()).unwrap(), want, "{given}");
        }
    }

    #[test]
    fn other_bodies() {
        let p = |t: &str| body::parse(t.as_bytes()).unwrap();
        assert!(exec_create(&p(r#"{"Cmd":["sh"],"privileged":true}"#))
            .unwrap_err()
            .message
            .contains("Privileged"));
        assert!(exec_create(&p(r#"{"Cmd":["sh"],"Privileged":false}"#)).is_ok());
        assert!(container_update(&p(r#"{"Memory":1,"DeviceCgroupRules":["a *:* rwm"]}"#)).is_err());
        assert!(container_update(&p(r#"{"Memory":1}"#)).is_ok());
        for (text, want) in [
            (r#"{"Name":"n","Driver":"macvlan"}"#, "Driver \"macvlan\""),
            (
                r#"{"Name":"n","Options":{"com.docker.network.bridge.name":"cni0"}}"#,
                "bridge.name",
            ),
            (r#"{"Name":"n","Ingress":true}"#, "Ingress"),
        ] {
            assert!(
                network_create(&mut p(text), "u1")
                    .unwrap_err()
                    .message
                    .contains(want),
                "{text}"
            );
        }
        let mut n = p(r#"{"Name":"n","Driver":"bridge"}"#);
        network_create(&mut n, "u1").unwrap();
        assert!(String::from_utf8(n.to_bytes())
            .unwrap()
            .contains("io.nestdock.pod-uid"));
        for (text, want) in [
            (
                r#"{"Name":"v","DriverOpts":{"type":"none","o":"bind","device":"/"}}"#,
                "DriverOpts",
            ),
            (
                r#"{"Name":"v","DriverOpts":{"device":"/dev/vda"}}"#,
                "DriverOpts",
            ),
            (
                r#"{"Name":"v","DriverOpts":{"type":"nfs","o":"addr=1.2.3.4","device":":/"}}"#,
                "DriverOpts",
            ),
            (r#"{"Name":"v","Driver":"rexray"}"#, "Driver"),
        ] {
            assert!(
                volume_create(&mut p(text), "u1")
                    .unwrap_err()
                    .message
                    .contains(want),
                "{text}"
            );
        }
        assert!(volume_create(
            &mut p(r#"{"Name":"v","DriverOpts":{"type":"tmpfs","device":"tmpfs","o":"size=1m"}}"#),
            "u1"
        )
        .is_ok());
        assert_eq!(
            network_connect(&p(r#"{"Container":"c"}"#)).unwrap().len(),
            1
        );
        let mut q = query::parse(Some("t=x&networkmode=host")).unwrap();
        assert!(build(&mut q, "u1")
            .unwrap_err()
            .message
            .contains("networkmode"));
        let mut q = query::parse(Some("t=x&remote=http%3A%2F%2F169.254.169.254%2F")).unwrap();
        assert!(build(&mut q, "u1").unwrap_err().message.contains("remote"));
        let q = query::parse(Some("fromSrc=http%3A%2F%2F169.254.169.254%2F&repo=x")).unwrap();
        assert!(image_create(&q).unwrap_err().message.contains("fromSrc"));
        for ok in ["fromImage=busybox&tag=1", "fromSrc=-&repo=x"] {
            image_create(&query::parse(Some(ok)).unwrap()).unwrap();
        }
        let mut q = query::parse(Some("t=x&cgroupparent=/")).unwrap();
        assert!(build(&mut q, "u1").is_err());
        let mut q = query::parse(Some("t=x&labels=%7B%22a%22%3A%22b%22%7D")).unwrap();
        build(&mut q, "u1").unwrap();
        assert_eq!(
            q.single("labels").unwrap(),
            Some(r#"{"a":"b","io.nestdock.pod-uid":"u1"}"#)
        );
    }
}
