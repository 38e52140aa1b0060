//! The pod annotations of docs/behaviour.md, *Annotations* (`nestdock.io/*`), read and checked.
//!
//! Every `nestdock.io/*` key is checked whatever the mode, `none` included, so
//! that a typo (`nestdock.io/mdoe`) is reported when the pod is created instead
//! of silently doing nothing. Errors name the key, the value and what is accepted.

use crate::config::{Mtu, Sidecar};
use crate::mode::Mode;
use crate::quantity::Quantity;

/// Prefix of every annotation nestdock reads.
pub const PREFIX: &str = "nestdock.io/";
/// The idempotency marker nestdock records on every pod it patched.
pub const INJECTED: &str = "nestdock.io/injected";

/// Every key a pod may carry (after [`PREFIX`]), the one list of them: what
/// "accepted keys are ..." names, and whether the key only concerns a daemon
/// in the pod (so that it is ignored, with a warning, in dood). [`read`]
/// parses each; a test checks that none of them reads as unknown.
pub const KEYS: [(&str, DaemonOnly); 14] = [
    ("mode", false),
    ("containers", false),
    ("sidecar", true),
    ("tls", true),
    ("image", true),
    ("cpu-request", true),
    ("cpu-limit", true),
    ("memory-request", true),
    ("memory-limit", true),
    ("storage-limit", true),
    ("registry-mirrors", true),
    ("insecure-registries", true),
    ("mtu", true),
    ("injected", false),
];

/// Whether an annotation key only concerns a daemon in the pod.
type DaemonOnly = bool;

/// What a pod asked for, every value validated in isolation. Rules that need
/// the pod or the config (container names exist, image allow-list, request
/// below limit) are the engine's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodAnnotations {
    pub mode: Option<Mode>,
    pub containers: Option<Vec<String>>,
    pub sidecar: Option<Sidecar>,
    pub tls: Option<bool>,
    pub image: Option<String>,
    pub cpu_request: Option<Quantity>,
    pub cpu_limit: Option<Quantity>,
    pub memory_request: Option<Quantity>,
    pub memory_limit: Option<Quantity>,
    pub storage_limit: Option<Quantity>,
    pub registry_mirrors: Option<Vec<String>>,
    pub insecure_registries: Option<Vec<String>>,
    pub mtu: Option<Mtu>,
    /// `nestdock.io/injected`: the mode a previous pass injected.
    pub injected: Option<String>,
    /// Which of [`KEYS`] the pod set (bit `i` for `KEYS[i]`), valid or not.
    set: u16,
}

impl PodAnnotations {
    /// The keys (without prefix) this pod set that only matter to a daemon in the pod.
    pub fn daemon_only_keys(&self) -> Vec<&'static str> {
        KEYS.iter()
            .enumerate()
            .filter(|(i, (_, daemon_only))| *daemon_only && self.set & (1 << i) != 0)
            .map(|(_, (key, _))| *key)
            .collect()
    }
}

/// Reads the `nestdock.io/*` annotations out of `metadata.annotations`.
///
/// Every key is read, so that a pod with three mistakes hears about all three
/// at once: the values that are valid are returned together with one message
/// per bad key (naming the key, the value and what is accepted). Unknown keys
/// are gathered into one message. Work is linear in the annotations' size:
/// the `containers` list is de-duplicated through a set, because a tenant
/// may send 256 KiB of names.
pub fn read<'a>(
    annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> (PodAnnotations, Vec<String>) {
    let mut out = PodAnnotations::default();
    let mut errors = Vec::new();
    let mut unknown: Vec<&str> = Vec::new();
    let mut unknown_count = 0usize;
    for (key, v) in annotations {
        let Some(name) = key.strip_prefix(PREFIX) else {
            continue;
        };
        if let Some(i) = KEYS.iter().position(|(k, _)| *k == name) {
            out.set |= 1 << i;
        }
        let bad = |accepted: &str| {
            format!(
                "annotation {key}: invalid value {}: {accepted}",
                crate::validate::shown(v)
            )
        };
        let result: Result<(), String> = (|| {
            match name {
                "mode" => {
                    out.mode = Some(
                        v.parse::<Mode>()
                            .map_err(|_| bad(&format!("accepted are {}", Mode::ACCEPTED)))?,
                    )
                }
                "containers" => {
                    let mut names: Vec<String> = Vec::new();
                    let mut seen = std::collections::HashSet::new();
                    for n in v.split(',').map(str::trim) {
                        if n.is_empty() {
                            return Err(bad(
                                "expected comma-separated container names, none of them empty",
                            ));
                        }
                        if seen.insert(n) {
                            names.push(n.to_string());
                        }
                    }
                    out.containers = Some(names);
                }
                "sidecar" => {
                    out.sidecar = Some(match v {
                        "native" => Sidecar::Native,
                        "container" => Sidecar::Container,
                        _ => return Err(bad("accepted are native, container")),
                    })
                }
                "tls" => {
                    out.tls = Some(match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad("accepted are \"true\", \"false\"")),
                    })
                }
                "image" => {
                    crate::validate::image(v).map_err(|m| format!("annotation {key}: {m}"))?;
                    out.image = Some(v.to_string());
                }
                "cpu-request" | "cpu-limit" | "memory-request" | "memory-limit"
                | "storage-limit" => {
                    let q = Quantity::parse(v).map_err(|m| format!("annotation {key}: {m}"))?;
                    if !q.is_positive() {
                        return Err(bad("expected a quantity greater than zero"));
                    }
                    let slot = match name {
                        "cpu-request" => &mut out.cpu_request,
                        "cpu-limit" => &mut out.cpu_limit,
                        "memory-request" => &mut out.memory_request,
                        "memory-limit" => &mut out.memory_limit,
                        _ => &mut out.storage_limit,
                    };
                    *slot = Some(q);
                }
                "registry-mirrors" => {
                    out.registry_mirrors =
                        Some(list(v, crate::validate::registry_mirror).map_err(|m| {
                            format!("annotation {key}: {m}; expected comma-separated http(s) URLs")
                        })?)
                }
                "insecure-registries" => {
                    out.insecure_registries =
                        Some(list(v, crate::validate::insecure_registry).map_err(|m| {
                            format!(
                            "annotation {key}: {m}; expected comma-separated host[:port] or CIDRs"
                        )
                        })?)
                }
                "mtu" => {
                    out.mtu = Some(Mtu::parse(v).map_err(|m| format!("annotation {key}: {m}"))?)
                }
                "injected" => out.injected = Some(v.to_string()),
                _ => {
                    unknown_count += 1;
                    if unknown.len() < MAX_NAMED {
                        unknown.push(key);
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            errors.push(e);
        }
    }
    if unknown_count > 0 {
        let mut named: Vec<String> = unknown.iter().map(|k| crate::validate::shown(k)).collect();
        if unknown_count > named.len() {
            named.push(format!("and {} more", unknown_count - named.len()));
        }
        errors.push(format!(
            "unknown annotation{} {}: accepted keys are {}",
            if unknown_count == 1 { "" } else { "s" },
            named.join(", "),
            KEYS.map(|(k, _)| format!("{PREFIX}{k}")).join(", ")
        ));
    }
    (out, errors)
}

/// How many unknown keys a message names before it says "and N more".
const MAX_NAMED: usize = 5;

fn list(v: &str, check: impl Fn(&str) -> Result<(), String>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("empty entry in {v:?}"));
        }
        check(item)?;
        out.push(item.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: serde_json::Value) -> Result<PodAnnotations, String> {
        let map = v.as_object().unwrap();
        let (a, errors) = read(map.iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap())));
        if errors.is_empty() {
            Ok(a)
        } else {
            Err(errors.join(" | "))
        }
    }

    /// The key list and the parser agree: no listed key reads as unknown,
    /// and the daemon-only ones are reported as set.
    #[test]
    fn every_listed_key_is_read_and_daemon_only_keys_are_reported() {
        for (key, daemon_only) in KEYS {
            let full = format!("{PREFIX}{key}");
            let (a, errors) = read([(full.as_str(), "x")]);
            assert!(
                errors.iter().all(|e| !e.contains("unknown annotation")),
                "{key}: {errors:?}"
            );
            assert_eq!(a.daemon_only_keys() == [key], daemon_only, "{key}");
        }
    }

    #[test]
    fn reads_every_key() {
        let a = p(json!({
            "nestdock.io/mode": "dind",
            "nestdock.io/containers": " build , test,build",
            "nestdock.io/sidecar": "container",
            "nestdock.io/tls": "true",
            "nestdock.io/image": "docker:27-dind",
            "nestdock.io/cpu-request": "500m",
            "nestdock.io/memory-limit": "2Gi",
            "nestdock.io/storage-limit": "20Gi",
            "nestdock.io/registry-mirrors": "https://a.example.com, http://b:5000",
            "nestdock.io/insecure-registries": "reg.local:5000,10.0.0.0/8",
            "nestdock.io/mtu": "1400",
            "other.io/x": "ignored",
        }))
        .unwrap();
        assert_eq!(a.mode, Some(Mode::Dind));
        assert_eq!(a.containers.unwrap(), ["build", "test"]);
        assert_eq!(a.sidecar, Some(Sidecar::Container));
        assert_eq!(a.tls, Some(true));
        assert_eq!(a.mtu, Some(Mtu::Fixed(1400)));
        assert_eq!(a.registry_mirrors.unwrap().len(), 2);
    }

    #[test]
    fn bad_values_name_key_value_and_accepted() {
        let cases = [
            (
                "nestdock.io/mode",
                "dnid",
                "dind, dind-rootless, dood, none",
            ),
            ("nestdock.io/containers", "", "none of them empty"),
            ("nestdock.io/containers", "a,,b", "none of them empty"),
            ("nestdock.io/sidecar", "yes", "native, container"),
            ("nestdock.io/tls", "yes", "\"true\""),
            ("nestdock.io/cpu-limit", "lots", "expected a number"),
            ("nestdock.io/storage-limit", "0", "greater than zero"),
            ("nestdock.io/memory-request", "-1Gi", "greater than zero"),
            (
                "nestdock.io/registry-mirrors",
                "mirror.local",
                "http(s) URLs",
            ),
            ("nestdock.io/insecure-registries", "http://x", "host[:port]"),
            ("nestdock.io/mtu", "9", "68 to 65535"),
            ("nestdock.io/mtu", "big", "auto"),
            ("nestdock.io/image", "a b", "image reference"),
            ("nestdock.io/mdoe", "dind", "accepted keys are"),
        ];
        for (k, v, accepted) in cases {
            let e = p(json!({ k: v })).unwrap_err();
            assert!(e.contains(k), "{k}={v}: {e}");
            assert!(e.contains(accepted), "{k}={v}: {e}");
            if !v.is_empty() && k != "nestdock.io/mdoe" {
                assert!(e.contains(v), "{k}={v}: {e}");
            }
        }
    }
}
