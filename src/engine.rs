//! The mutation engine: one pure function from (pod, namespace policy, config)
//! to a decision. The webhook, `nestdock inject`, `explain` and the tests all
//! go through here; nothing here does I/O.
//!
//! Two steps: [`crate::plan::decide`] works out what to do and why (a
//! [`Plan`]), [`crate::render::render`] writes an injection as JSON Patch.
//! [`Decision`] is what the callers that only need the answer get.

use serde_json::Value;

use crate::mode::Mode;
pub use crate::outcome::Outcome;
use crate::patch::Patch;
use crate::plan::{Action, Plan};

pub use crate::denial::{Denial, MAX_REASONS, MAX_REASON_BYTES};
pub use crate::plan::{
    Context, ModeFrom, DAEMON_CONTAINER, MAX_WARNINGS, VOL_CERTS, VOL_HOST_SOCKET, VOL_SOCKET,
    VOL_STORAGE,
};
pub use crate::policy::NamespacePolicy;
pub use crate::render::MAX_PATCH_BYTES;

/// What happens to the pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Allowed as it is (mode `none`, already injected, not a pod to touch).
    Unchanged,
    /// Allowed with these JSON Patch operations, built against the pod as received.
    Patched(Patch),
    /// Refused.
    Denied(Denial),
}

/// The engine's answer for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The mode that applied (for audit annotations, logs and metrics).
    pub mode: Mode,
    pub from: ModeFrom,
    pub effect: Effect,
    /// Each under 120 characters, as the API server requires; at most
    /// [`MAX_WARNINGS`] (+1 saying how many more there were).
    pub warnings: Vec<String>,
}

impl Decision {
    /// The decision as logged and counted: a patch that turned out empty is
    /// [`Outcome::Unchanged`], as the API server sees it.
    pub fn outcome(&self) -> Outcome {
        match &self.effect {
            Effect::Patched(patch) if !patch.is_empty() => Outcome::Injected,
            Effect::Patched(_) | Effect::Unchanged => Outcome::Unchanged,
            Effect::Denied(_) => Outcome::Denied,
        }
    }
}

/// Decides what happens to `pod` (the object exactly as the API server sent it).
pub fn mutate(pod: &Value, ctx: &Context<'_>) -> Decision {
    match crate::pod::from_value(pod) {
        Ok(pod) => mutate_pod(&pod, ctx),
        Err(message) => finish(crate::plan::unreadable(ctx, message)),
    }
}

/// [`mutate`] on the pod's JSON text, as the webhook receives it: the pod is
/// read borrowed and typed, without building a tree of it.
pub fn mutate_json(pod: &str, ctx: &Context<'_>) -> Decision {
    match crate::pod::from_json(pod) {
        Ok(pod) => mutate_pod(&pod, ctx),
        Err(message) => finish(crate::plan::unreadable(ctx, message)),
    }
}

/// [`mutate`] on a pod already read (the webhook reads it with the review).
pub fn mutate_pod(pod: &crate::pod::Pod<'_>, ctx: &Context<'_>) -> Decision {
    finish(crate::plan::decide(pod, ctx))
}

/// Renders a plan into the decision the callers send or apply.
fn finish(plan: Plan<'_>) -> Decision {
    let Plan {
        mode,
        from,
        action,
        warnings,
    } = plan;
    let (effect, warnings) = match action {
        Action::Nothing => (Effect::Unchanged, warnings),
        Action::Deny(d) => (Effect::Denied(d), warnings),
        Action::Inject(injection) => match crate::render::render(&injection, mode) {
            Ok(patch) if patch.is_empty() => (Effect::Unchanged, warnings),
            Ok(patch) => (Effect::Patched(patch), warnings),
            Err(crate::render::TooLarge) => (
                Effect::Denied(Denial::bad(format!(
                    "the patch for this pod would be over {MAX_PATCH_BYTES} bytes, more than any pod \
                     Kubernetes can store; name fewer containers with nestdock.io/containers"
                ))),
                Vec::new(),
            ),
        },
    };
    Decision {
        mode,
        from,
        effect,
        warnings,
    }
}
