//! The mutation engine: one pure function from (pod, namespace policy, config)
//! to a decision. The webhook, `nestdock inject` and the tests all go through
//! [`mutate`]; nothing here does I/O.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::Config;
use crate::mode::Mode;

/// What the engine knows about the pod's namespace.
#[derive(Debug, Clone, Copy)]
pub enum NamespacePolicy<'a> {
    /// Namespace policy is off (`--kube=false`): annotations and config only,
    /// and dood only when `dood.allowWithoutNamespacePolicy` is set.
    Off,
    /// Offline `inject`: `--mode` acts like a namespace label and no gate applies.
    Offline { mode: Option<Mode> },
    /// The labels of the pod's namespace, from the namespace cache.
    Labels {
        namespace: &'a str,
        labels: &'a BTreeMap<String, String>,
    },
}

/// Everything besides the pod that a decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub config: &'a Config,
    pub namespace: NamespacePolicy<'a>,
    /// Whether the API server runs native sidecars (1.29+); resolves `sidecar: auto`.
    pub native_sidecars: bool,
}

/// A refusal: the HTTP-like status code for the AdmissionReview and a message
/// that names what was wrong and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// 400 for a bad annotation value or a pod nestdock cannot serve as asked,
    /// 403 for a policy or safety rule.
    pub code: u16,
    pub message: String,
}

/// What happens to the pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Allowed as it is (mode `none`, already injected, not a pod to touch).
    Unchanged,
    /// Allowed with these JSON Patch operations, built against the pod as received.
    Patched(json_patch::Patch),
    /// Refused.
    Denied(Denial),
}

/// The engine's answer for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The mode that applied (for audit annotations, logs and metrics).
    pub mode: Mode,
    pub outcome: Outcome,
    /// Each under 120 characters, as the API server requires.
    pub warnings: Vec<String>,
}

/// Decides what happens to `pod` (the object exactly as the API server sent it).
pub fn mutate(pod: &Value, ctx: &Context<'_>) -> Decision {
    let _ = (pod, ctx);
    todo!("engine under construction")
}
