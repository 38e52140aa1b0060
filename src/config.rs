//! The configuration file (`--config`, YAML), the README, *Configuration*.
//!
//! Every field has a default, so nestdock runs with no file at all. A file is
//! parsed strictly: unknown fields are errors, and every error names the dotted
//! path of the field (`dind.mtu`) so that a platform team can fix a ConfigMap
//! from the pod's log alone. A bad file stops start-up: the server never runs
//! half-configured.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::mode::Mode;
use crate::quantity::Quantity;

/// Where the daemon container goes (docs/behaviour.md, "Start order").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarConfig {
    /// Native sidecar when the API server supports it (1.29+), else a plain container.
    Auto,
    /// First init container with `restartPolicy: Always`.
    Native,
    /// Entry of `spec.containers` (no start-order guarantee).
    Container,
}

/// The placement actually used for one pod, once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sidecar {
    Native,
    Container,
}

/// `mtu`: a fixed value, or `auto` (the pod interface's MTU, read when the daemon starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtu {
    Auto,
    Fixed(u32),
}

impl Mtu {
    /// Parses `auto` or an integer from 68 to 65535 (the range Linux accepts for IPv4).
    pub fn parse(s: &str) -> Result<Mtu, String> {
        let s = s.trim();
        if s == "auto" {
            return Ok(Mtu::Auto);
        }
        match s.parse::<u32>() {
            Ok(n) if (68..=65535).contains(&n) => Ok(Mtu::Fixed(n)),
            _ => Err(format!(
                "invalid MTU {s:?}: expected an integer from 68 to 65535, or \"auto\""
            )),
        }
    }
}

impl fmt::Display for Mtu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mtu::Auto => f.write_str("auto"),
            Mtu::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for Mtu {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        let s = match Raw::deserialize(d)? {
            Raw::Int(n) => n.to_string(),
            Raw::Str(s) => s,
        };
        Mtu::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Mtu {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Mtu::Auto => s.serialize_str("auto"),
            Mtu::Fixed(n) => s.serialize_u32(*n),
        }
    }
}

/// Kubernetes-shaped resource requirements for the daemon (`requests`/`limits` of `cpu`, `memory`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub requests: ResourceList,
    #[serde(default)]
    pub limits: ResourceList,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// Storage of the daemon's `/var/lib/docker`: never the container's overlay filesystem.
/// In the file, exactly one of `emptyDir` or `ephemeral`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "StorageFile", into = "StorageFile")]
pub enum Storage {
    /// An emptyDir, with an optional `sizeLimit`.
    EmptyDir { size_limit: Option<Quantity> },
    /// A generic ephemeral volume: a PVC made for the pod and deleted with it.
    Ephemeral {
        storage_class_name: Option<String>,
        size: Quantity,
    },
}

/// The file's shape of [`Storage`].
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StorageFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    empty_dir: Option<EmptyDirFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ephemeral: Option<EphemeralFile>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EmptyDirFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size_limit: Option<Quantity>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EphemeralFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    storage_class_name: Option<String>,
    size: Quantity,
}

impl TryFrom<StorageFile> for Storage {
    type Error = String;
    fn try_from(f: StorageFile) -> Result<Storage, String> {
        match (f.empty_dir, f.ephemeral) {
            (Some(e), None) => Ok(Storage::EmptyDir {
                size_limit: e.size_limit,
            }),
            (None, Some(e)) => Ok(Storage::Ephemeral {
                storage_class_name: e.storage_class_name,
                size: e.size,
            }),
            _ => Err("expected exactly one of emptyDir or ephemeral".into()),
        }
    }
}

impl From<Storage> for StorageFile {
    fn from(s: Storage) -> StorageFile {
        match s {
            Storage::EmptyDir { size_limit } => StorageFile {
                empty_dir: Some(EmptyDirFile { size_limit }),
                ephemeral: None,
            },
            Storage::Ephemeral {
                storage_class_name,
                size,
            } => StorageFile {
                empty_dir: None,
                ephemeral: Some(EphemeralFile {
                    storage_class_name,
                    size,
                }),
            },
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage::EmptyDir { size_limit: None }
    }
}

/// One `--default-address-pool` of the inner daemon.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPool {
    pub base: String,
    pub size: u8,
}

/// A plain `name`/`value` environment variable for the daemon (proxies, say).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// Settings of the Docker-in-Docker daemon (`dind` and `dind-rootless`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DindConfig {
    pub image: String,
    pub rootless_image: String,
    /// The only images the `image` annotation may choose: exact matches, or
    /// prefixes when an entry ends in `*`. The image runs privileged, so the
    /// default is the official `docker` repository alone; an empty list lets
    /// no pod choose an image, and `["*"]` lets pods run any image.
    pub allowed_images: Vec<String>,
    pub resources: Resources,
    pub storage: Storage,
    pub mtu: Mtu,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bip: Option<String>,
    pub default_address_pools: Vec<AddressPool>,
    pub registry_mirrors: Vec<String>,
    pub insecure_registries: Vec<String>,
    pub extra_args: Vec<String>,
    pub env: Vec<EnvVar>,
}

impl Default for DindConfig {
    fn default() -> Self {
        DindConfig {
            image: "docker:28-dind".into(),
            rootless_image: "docker:28-dind-rootless".into(),
            allowed_images: vec!["docker:*".into(), "docker.io/library/docker:*".into()],
            resources: Resources {
                requests: ResourceList {
                    cpu: Some(Quantity::parse("250m").expect("valid default")),
                    memory: Some(Quantity::parse("256Mi").expect("valid default")),
                },
                limits: ResourceList::default(),
            },
            storage: Storage::default(),
            mtu: Mtu::Auto,
            bip: None,
            default_address_pools: Vec::new(),
            registry_mirrors: Vec::new(),
            insecure_registries: Vec::new(),
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// Settings of Docker-outside-of-Docker (the node's socket by hostPath).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DoodConfig {
    /// Path of the docker socket on the node.
    pub host_socket: String,
    /// Merged into dood pods so they land on nodes that run a docker daemon.
    pub node_selector: BTreeMap<String, String>,
    /// Group owning the node's socket; added to the pod's `supplementalGroups`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<i64>,
    /// Without namespace policy (`--kube=false`) dood is denied unless this is true.
    pub allow_without_namespace_policy: bool,
    /// The guard in front of the node's socket (`guard: false` turns it off).
    pub guard: GuardConfig,
    /// The kubelet's root directory on the nodes: where the guard finds the
    /// pod's emptyDir volumes as the node's daemon sees them.
    pub kubelet_root: String,
    /// Where targets' Testcontainers find the ports that sibling containers
    /// publish: on the node's daemon they are on the node's address, not on
    /// the pod's localhost.
    pub testcontainers_host: TestcontainersHost,
}

/// `dood.testcontainersHost`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TestcontainersHost {
    /// `TESTCONTAINERS_HOST_OVERRIDE` from the Downward API's `status.hostIP`:
    /// a daemon in the node's network namespace publishes ports there.
    #[default]
    #[serde(rename = "nodeIP")]
    NodeIp,
    /// Not set: the daemon publishes elsewhere (manifests/node-docker's
    /// dockerd runs in a pod network of its own), and jobs set it themselves.
    #[serde(rename = "none")]
    None,
}

impl Default for DoodConfig {
    fn default() -> Self {
        DoodConfig {
            host_socket: "/var/run/docker.sock".into(),
            node_selector: BTreeMap::new(),
            socket_group: None,
            allow_without_namespace_policy: false,
            guard: GuardConfig::default(),
            kubelet_root: "/var/lib/kubelet".into(),
            testcontainers_host: TestcontainersHost::NodeIp,
        }
    }
}

/// The image the guard runs when the config names none: nestdock's own, as
/// the chart tags it. The server uses the image it runs itself instead
/// (`NESTDOCK_IMAGE`, set by the Deployment).
pub const DEFAULT_GUARD_IMAGE: &str = concat!("nestdock:", env!("CARGO_PKG_VERSION"));

/// `dood.guard`: `true`/`false`, or its settings (which mean on unless
/// `enabled: false`). With the guard on, dood pods never see the node's
/// socket: the `nestdock-guard` sidecar alone mounts it and serves a
/// filtered Docker API on the pod's socket volume.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardConfig {
    pub enabled: bool,
    /// The guard's image; `None`: the image the webhook runs (see
    /// [`DEFAULT_GUARD_IMAGE`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The guard container's resources (Kubernetes shape).
    pub resources: Resources,
    /// Where the pod's sibling containers' cgroups go (`pod`: under the
    /// pod's own, so its limits and `kubectl top` include them).
    pub cgroup_parent: CgroupParent,
    /// Ranges (`8000-8999`, `5432`) in which the pod may publish fixed host
    /// ports on the node; empty (the default): random host ports only, so
    /// jobs never collide on a node's port.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<String>,
}

/// `dood.guard.cgroupParent`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CgroupParent {
    /// dockerd's default (its own cgroup parent).
    #[default]
    None,
    /// The pod's cgroup, which the guard finds from its own
    /// (`nestdock guard --pod-cgroup auto`).
    Pod,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            enabled: true,
            cgroup_parent: CgroupParent::None,
            host_ports: Vec::new(),
            image: None,
            resources: Resources {
                requests: ResourceList {
                    cpu: Some(Quantity::parse("10m").expect("valid default")),
                    memory: Some(Quantity::parse("32Mi").expect("valid default")),
                },
                limits: ResourceList {
                    cpu: None,
                    memory: Some(Quantity::parse("128Mi").expect("valid default")),
                },
            },
        }
    }
}

/// The file's map form of [`GuardConfig`].
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct GuardSettings {
    enabled: bool,
    image: Option<String>,
    resources: Resources,
    cgroup_parent: CgroupParent,
    host_ports: Vec<String>,
}

impl Default for GuardSettings {
    fn default() -> Self {
        let GuardConfig {
            enabled,
            image,
            resources,
            cgroup_parent,
            host_ports,
        } = GuardConfig::default();
        GuardSettings {
            enabled,
            image,
            resources,
            cgroup_parent,
            host_ports,
        }
    }
}

impl<'de> Deserialize<'de> for GuardConfig {
    /// A bool or a map, read without an untagged enum so that an error
    /// inside the map keeps its message and its path (`dood.guard.image`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = GuardConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "true, false, or a map with enabled, image, resources, cgroupParent, hostPorts",
                )
            }
            fn visit_bool<E: serde::de::Error>(self, enabled: bool) -> Result<GuardConfig, E> {
                Ok(GuardConfig {
                    enabled,
                    ..GuardConfig::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<GuardConfig, A::Error> {
                let s =
                    GuardSettings::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(GuardConfig {
                    enabled: s.enabled,
                    image: s.image,
                    resources: s.resources,
                    cgroup_parent: s.cgroup_parent,
                    host_ports: s.host_ports,
                })
            }
        }
        d.deserialize_any(Visit)
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub default_mode: Mode,
    pub sidecar: SidecarConfig,
    /// Directory of the docker socket in the app containers (and the dind daemon).
    pub socket_dir: String,
    /// Group of the dind socket (`dockerd --group`), added to `supplementalGroups`.
    pub socket_group: i64,
    /// Mount every target volume into the daemon at the same path (bind mounts just work).
    pub mirror_mounts: bool,
    pub dind: DindConfig,
    pub dood: DoodConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_mode: Mode::None,
            sidecar: SidecarConfig::Auto,
            socket_dir: "/var/run".into(),
            socket_group: 2375,
            mirror_mounts: true,
            dind: DindConfig::default(),
            dood: DoodConfig::default(),
        }
    }
}

/// A configuration error: the dotted path of the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration{}: {message}", field.as_deref().map(|f| format!(" at {f}")).unwrap_or_default())]
pub struct ConfigError {
    /// Dotted path, e.g. `dind.mtu`; `None` when the document itself is unreadable.
    pub field: Option<String>,
    pub message: String,
}

fn field_err(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: Some(field.to_string()),
        message: message.into(),
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            field: None,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Config::from_yaml(&text)
    }

    /// Parses and validates YAML (JSON is YAML too). An empty document means all defaults.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let de = serde_norway::Deserializer::from_str(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            ConfigError {
                field: (path != "." && !path.is_empty()).then_some(path),
                message: inner,
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Settings that are valid but probably not what the platform meant; the
    /// server logs each at start, `inject` and `explain` print them.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, img) in self.dind.allowed_images.iter().enumerate() {
            let Some(prefix) = img.strip_suffix('*') else {
                continue;
            };
            if prefix.is_empty() {
                out.push(format!(
                    "dind.allowedImages[{i}] is \"*\": pods may run any image as the privileged daemon"
                ));
            } else if !prefix.ends_with(['/', ':']) {
                out.push(format!(
                    "dind.allowedImages[{i}] {img:?} matches every image whose name starts with {prefix:?} \
                     ({prefix}.evil.example/x too); end the prefix at '/' or ':' ({prefix}/*)"
                ));
            }
        }
        out
    }

    /// Checks the values serde cannot: paths, ranges, image patterns, daemon arguments.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_abs_path("socketDir", &self.socket_dir)?;
        if self.socket_dir != "/" && self.socket_dir.ends_with('/') {
            return Err(field_err("socketDir", "must not end with '/'"));
        }
        check_gid("socketGroup", self.socket_group)?;
        check_image("dind.image", &self.dind.image)?;
        check_image("dind.rootlessImage", &self.dind.rootless_image)?;
        for (i, img) in self.dind.allowed_images.iter().enumerate() {
            let f = format!("dind.allowedImages[{i}]");
            let base = img.strip_suffix('*').unwrap_or(img);
            if base.is_empty() && img != "*" {
                return Err(field_err(&f, "must not be empty"));
            }
            if img.chars().any(char::is_whitespace) {
                return Err(field_err(&f, format!("{img:?} contains white space")));
            }
        }
        check_resources("dind.resources", &self.dind.resources)?;
        match &self.dind.storage {
            Storage::EmptyDir {
                size_limit: Some(q),
            } if !q.is_positive() => {
                return Err(field_err(
                    "dind.storage.emptyDir.sizeLimit",
                    format!("{q} must be greater than zero"),
                ));
            }
            Storage::Ephemeral {
                size,
                storage_class_name,
            } => {
                if !size.is_positive() {
                    return Err(field_err(
                        "dind.storage.ephemeral.size",
                        format!("{size} must be greater than zero"),
                    ));
                }
                if let Some(sc) = storage_class_name {
                    crate::validate::dns_subdomain(sc)
                        .map_err(|m| field_err("dind.storage.ephemeral.storageClassName", m))?;
                }
            }
            _ => {}
        }
        if let Some(bip) = &self.dind.bip {
            crate::validate::cidr(bip).map_err(|m| field_err("dind.bip", m))?;
        }
        for (i, p) in self.dind.default_address_pools.iter().enumerate() {
            crate::validate::cidr(&p.base)
                .map_err(|m| field_err(&format!("dind.defaultAddressPools[{i}].base"), m))?;
            if p.size == 0 || p.size > 32 {
                return Err(field_err(
                    &format!("dind.defaultAddressPools[{i}].size"),
                    format!("{} is not a prefix length from 1 to 32", p.size),
                ));
            }
        }
        for (i, m) in self.dind.registry_mirrors.iter().enumerate() {
            crate::validate::registry_mirror(m)
                .map_err(|e| field_err(&format!("dind.registryMirrors[{i}]"), e))?;
        }
        for (i, r) in self.dind.insecure_registries.iter().enumerate() {
            crate::validate::insecure_registry(r)
                .map_err(|e| field_err(&format!("dind.insecureRegistries[{i}]"), e))?;
        }
        for (i, a) in self.dind.extra_args.iter().enumerate() {
            if !a.starts_with("--") {
                return Err(field_err(
                    &format!("dind.extraArgs[{i}]"),
                    format!("{a:?} is not a dockerd flag: expected --flag or --flag=value"),
                ));
            }
        }
        for (i, e) in self.dind.env.iter().enumerate() {
            crate::validate::env_name(&e.name)
                .map_err(|m| field_err(&format!("dind.env[{i}].name"), m))?;
        }
        check_abs_path("dood.hostSocket", &self.dood.host_socket)?;
        check_abs_path("dood.kubeletRoot", &self.dood.kubelet_root)?;
        if let Some(image) = &self.dood.guard.image {
            check_image("dood.guard.image", image)?;
        }
        check_resources("dood.guard.resources", &self.dood.guard.resources)?;
        for (i, r) in self.dood.guard.host_ports.iter().enumerate() {
            r.parse::<crate::guard::ports::PortRange>()
                .map_err(|m| field_err(&format!("dood.guard.hostPorts[{i}]"), m))?;
        }
        if let Some(g) = self.dood.socket_group {
            check_gid("dood.socketGroup", g)?;
        }
        for (k, v) in &self.dood.node_selector {
            crate::validate::label_key(k)
                .map_err(|m| field_err(&format!("dood.nodeSelector.{k}"), m))?;
            crate::validate::label_value(v)
                .map_err(|m| field_err(&format!("dood.nodeSelector.{k}"), m))?;
        }
        Ok(())
    }

    /// The socket path that `DOCKER_HOST`, the daemon's listener and the mounts agree on.
    pub fn socket_path(&self) -> String {
        if self.socket_dir == "/" {
            "/docker.sock".into()
        } else {
            format!("{}/docker.sock", self.socket_dir)
        }
    }
}

fn check_abs_path(field: &str, p: &str) -> Result<(), ConfigError> {
    if !p.starts_with('/') {
        return Err(field_err(field, format!("{p:?} is not an absolute path")));
    }
    if p.split('/').any(|c| c == "..") || p.contains("//") || p.contains(':') {
        return Err(field_err(
            field,
            format!("{p:?} must be a clean absolute path without '..', '//' or ':'"),
        ));
    }
    Ok(())
}

fn check_gid(field: &str, gid: i64) -> Result<(), ConfigError> {
    if !(0..=2147483647).contains(&gid) {
        return Err(field_err(
            field,
            format!("{gid} is not a group id from 0 to 2147483647"),
        ));
    }
    Ok(())
}

/// Quantities above zero, and no request above its limit.
fn check_resources(field: &str, r: &Resources) -> Result<(), ConfigError> {
    for (name, req, lim) in [
        ("cpu", &r.requests.cpu, &r.limits.cpu),
        ("memory", &r.requests.memory, &r.limits.memory),
    ] {
        for (kind, q) in [("requests", req), ("limits", lim)] {
            if let Some(q) = q {
                if !q.is_positive() {
                    return Err(field_err(
                        &format!("{field}.{kind}.{name}"),
                        format!("{q} must be greater than zero"),
                    ));
                }
            }
        }
        if let (Some(req), Some(lim)) = (req, lim) {
            if req.value() > lim.value() {
                return Err(field_err(
                    &format!("{field}.requests.{name}"),
                    format!("request {req} is above the limit {lim}"),
                ));
            }
        }
    }
    Ok(())
}

fn check_image(field: &str, image: &str) -> Result<(), ConfigError> {
    crate::validate::image(image).map_err(|m| field_err(field, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::from_yaml("").unwrap(), Config::default());
        assert_eq!(Config::from_yaml("{}\n").unwrap(), Config::default());
    }

    #[test]
    fn default_config_is_valid() {
        Config::default().validate().unwrap();
        assert!(Config::default().warnings().is_empty());
    }

    #[test]
    fn allowed_images_default_to_the_official_repository_and_loose_prefixes_warn() {
        assert_eq!(
            Config::default().dind.allowed_images,
            ["docker:*", "docker.io/library/docker:*"]
        );
        let cfg = Config::from_yaml(
            "dind:\n  allowedImages: [\"registry.corp*\", \"registry.corp/docker:*\", \"*\", \"mirror/dind\"]\n",
        )
        .unwrap();
        let w = cfg.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("allowedImages[0]") && w[0].contains("registry.corp.evil"),
            "{w:?}"
        );
        assert!(
            w[1].contains("allowedImages[2]") && w[1].contains("any image"),
            "{w:?}"
        );
    }

    #[test]
    fn full_file_parses() {
        let cfg = Config::from_yaml(
            r#"
defaultMode: dind
sidecar: container
socketDir: /run/docker
socketGroup: 999
mirrorMounts: false
dind:
  image: registry.example.com/docker:28-dind
  allowedImages: ["registry.example.com/*"]
  resources:
    requests: {cpu: 500m, memory: 1Gi}
    limits: {memory: 4Gi}
  storage:
    ephemeral: {storageClassName: fast, size: 50Gi}
  mtu: 1400
  bip: 172.30.0.1/16
  defaultAddressPools: [{base: 172.31.0.0/16, size: 24}]
  registryMirrors: ["https://mirror.example.com"]
  insecureRegistries: ["registry.local:5000", "10.0.0.0/8"]
  extraArgs: ["--log-level=warn"]
  env: [{name: HTTPS_PROXY, value: "http://proxy:3128"}]
dood:
  hostSocket: /run/nestdock/docker.sock
  nodeSelector: {nestdock.io/docker: "true"}
  socketGroup: 998
  allowWithoutNamespacePolicy: true
"#,
        )
        .unwrap();
        assert_eq!(cfg.default_mode, Mode::Dind);
        assert_eq!(cfg.dind.mtu, Mtu::Fixed(1400));
        assert_eq!(cfg.socket_path(), "/run/docker/docker.sock");
        assert!(matches!(cfg.dind.storage, Storage::Ephemeral { .. }));
    }

    #[test]
    fn the_guard_is_on_by_default_and_reads_as_a_switch_or_settings() {
        assert!(Config::default().dood.guard.enabled);
        let off = Config::from_yaml("dood:\n  guard: false\n").unwrap();
        assert!(!off.dood.guard.enabled);
        let set = Config::from_yaml(
            "dood:\n  guard:\n    image: registry.example/nestdock:1.2\n    resources:\n      limits:\n        memory: 64Mi\n",
        )
        .unwrap();
        assert!(set.dood.guard.enabled);
        assert_eq!(
            set.dood.guard.image.as_deref(),
            Some("registry.example/nestdock:1.2")
        );
        assert_eq!(
            set.dood
                .guard
                .resources
                .limits
                .memory
                .as_ref()
                .map(|q| q.as_str()),
            Some("64Mi")
        );
        for (yaml, field, says) in [
            ("dood:\n  guard:\n    imgae: x\n", "dood.guard.imgae", "unknown field"),
            ("dood:\n  guard: 3\n", "dood.guard", "true, false, or a map"),
            ("dood:\n  guard:\n    image: \"bad image\"\n", "dood.guard.image", "bad image"),
            (
                "dood:\n  guard:\n    resources:\n      requests:\n        memory: 1Gi\n      limits:\n        memory: 1Mi\n",
                "dood.guard.resources.requests.memory",
                "above the limit",
            ),
            ("dood:\n  kubeletRoot: var/lib/kubelet\n", "dood.kubeletRoot", "absolute"),
            ("dood:\n  guard:\n    cgroupParent: node\n", "dood.guard.cgroupParent", "unknown variant"),
            ("dood:\n  testcontainersHost: nodeIp\n", "dood.testcontainersHost", "expected `nodeIP` or `none`"),
            ("dood:\n  guard:\n    hostPorts: [\"8000-8999\", \"80-\"]\n", "dood.guard.hostPorts[1]", "expected PORT or FIRST-LAST"),
            ("dood:\n  guard:\n    hostPorts: [\"0\"]\n", "dood.guard.hostPorts[0]", "ports 1 to 65535"),
        ] {
            let e = Config::from_yaml(yaml).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{yaml}: {e}");
            assert!(e.to_string().contains(says), "{yaml}: {e}");
        }
    }

    #[test]
    fn the_guards_cgroup_parent_is_opt_in() {
        assert_eq!(
            Config::default().dood.guard.cgroup_parent,
            CgroupParent::None
        );
        let pod = Config::from_yaml("dood:\n  guard:\n    cgroupParent: pod\n").unwrap();
        assert_eq!(pod.dood.guard.cgroup_parent, CgroupParent::Pod);
        assert!(pod.dood.guard.enabled);
    }

    #[test]
    fn errors_name_the_dotted_path() {
        let e = Config::from_yaml("dind:\n  mtu: 9\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("dind.mtu"), "{e}");
        assert!(e.to_string().contains("68 to 65535"), "{e}");

        let e = Config::from_yaml("dind:\n  bogus: 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");

        let e = Config::from_yaml("defaultMode: dnid\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("defaultMode"), "{e}");

        let e = Config::from_yaml(
            "dind:\n  resources:\n    requests: {memory: 2Gi}\n    limits: {memory: 1Gi}\n",
        )
        .unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("dind.resources.requests.memory"),
            "{e}"
        );

        let e = Config::from_yaml("dood:\n  hostSocket: relative/docker.sock\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("dood.hostSocket"), "{e}");

        let e = Config::from_yaml("dind:\n  registryMirrors: [\"ftp://x\"]\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("dind.registryMirrors[0]"), "{e}");
    }
}
