//! Rendering: an [`Injection`] as JSON Patch operations against the pod
//! exactly as the API server sent it.
//!
//! This is the only place that knows how operations must be ordered and
//! addressed: a list or map that is absent (or `null`) in the pod is added
//! whole, because `add .../-` needs it to exist (the API server applies
//! patches without creating parents, and a patch that does not apply fails
//! the pod's creation even under `failurePolicy: Ignore`); items are appended
//! to lists that exist; and the daemon goes in last, because inserting it at
//! `initContainers/0` shifts the indices of every operation on an init
//! container written before it.

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::config::Sidecar;
use crate::mode::Mode;
use crate::patch::Patch;
use crate::plan::{GroupAt, Injection, MarkerAt};

/// Largest JSON patch nestdock writes. Why this much: the API server takes
/// request bodies up to 3 MiB and etcd stores objects under 1.5 MiB, so a
/// pod whose patch alone is past 4 MiB could never be stored; refusing it
/// keeps the response (and the memory behind it) bounded whatever a client
/// sends. A typical pod's patch is 2-3 KiB; 1,000 targets take about 250 KiB.
pub const MAX_PATCH_BYTES: usize = 4 * 1024 * 1024;

/// The patch would be over [`MAX_PATCH_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// Writes `injection` (of `mode`) as JSON Patch operations. Past
/// [`MAX_PATCH_BYTES`] it stops writing, so a hostile pod cannot make it
/// build a patch of hundreds of MiB first.
pub fn render(injection: &Injection<'_>, mode: Mode) -> Result<Patch, TooLarge> {
    let mut out = Writer {
        patch: Patch::new(),
    };
    out.marker(injection.marker_at, mode);
    for t in &injection.targets {
        let index = t.index.to_string();
        let env: Vec<_> = injection
            .env
            .iter()
            .filter(|e| !t.kept_env.contains(&e.name))
            .collect();
        out.append(t.env_exists, &["spec", t.list, &index, "env"], &env);
        out.append(
            t.mounts_exist,
            &["spec", t.list, &index, "volumeMounts"],
            &[&injection.target_mount],
        );
    }
    out.append(
        injection.volumes_exist,
        &["spec", "volumes"],
        &injection.volumes,
    );
    if let Some((gid, at)) = injection.group {
        match at {
            GroupAt::Append => out.add(
                &["spec", "securityContext", "supplementalGroups", "-"],
                &gid,
            ),
            GroupAt::NewList => out.add(&["spec", "securityContext", "supplementalGroups"], &[gid]),
            GroupAt::NewContext => out.add(
                &["spec", "securityContext"],
                &json!({ "supplementalGroups": [gid] }),
            ),
        }
    }
    if !injection.node_selector.is_empty() {
        if injection.node_selector_exists {
            for (k, v) in &injection.node_selector {
                out.add(&["spec", "nodeSelector", k], v);
            }
        } else {
            let map: Map<String, Value> = injection
                .node_selector
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect();
            out.add(&["spec", "nodeSelector"], &map);
        }
    }
    // Last: inserting at initContainers/0 shifts indices the target ops used.
    if let Some(daemon) = &injection.daemon {
        match (daemon.placement, daemon.list_exists) {
            (Sidecar::Native, true) => out.add(&["spec", "initContainers", "0"], &daemon.container),
            (Sidecar::Native, false) => out.add(&["spec", "initContainers"], &[&daemon.container]),
            (Sidecar::Container, true) => out.add(&["spec", "containers", "-"], &daemon.container),
            (Sidecar::Container, false) => out.add(&["spec", "containers"], &[&daemon.container]),
        }
    }
    if out.patch.as_json().len() > MAX_PATCH_BYTES {
        return Err(TooLarge);
    }
    Ok(out.patch)
}

/// The patch being written, with the size bound.
struct Writer {
    patch: Patch,
}

impl Writer {
    fn add(&mut self, path: &[&str], value: &impl Serialize) {
        if self.patch.as_json().len() <= MAX_PATCH_BYTES {
            self.patch.add(path, value);
        }
    }

    /// Appends `items` to the list at `path`: item by item when the list
    /// exists in the pod as sent, else the whole list at once.
    fn append<T: Serialize>(&mut self, exists: bool, path: &[&str], items: &[T]) {
        if items.is_empty() {
            return;
        }
        if exists {
            let mut p: Vec<&str> = path.to_vec();
            p.push("-");
            for item in items {
                self.add(&p, item);
            }
        } else {
            self.add(path, &items);
        }
    }

    /// The idempotency marker `nestdock.io/injected: <mode>`.
    fn marker(&mut self, at: MarkerAt, mode: Mode) {
        let key = crate::annotations::INJECTED;
        let mode = mode.as_str();
        match at {
            MarkerAt::Annotations => self.add(&["metadata", "annotations", key], &mode),
            MarkerAt::Metadata => self.add(&["metadata", "annotations"], &json!({ key: mode })),
            MarkerAt::Nothing => self.add(&["metadata"], &json!({ "annotations": { key: mode } })),
        }
    }
}
