//! `nestdock explain`: what a user runs when a pod did not get what they
//! expected. It prints the same [`crate::plan::Plan`] the webhook renders:
//! which mode applies and why, what would be injected (targets, daemon,
//! mirrored and skipped mounts, volumes, group), or every reason the pod
//! would be denied and which annotation or label to change. Nothing here
//! re-derives a decision.

use std::fmt::Write as _;

use serde_json::Value;

use crate::config::Sidecar;
use crate::engine::{Context, ModeFrom, NamespacePolicy, VOL_CERTS, VOL_SOCKET, VOL_STORAGE};
use crate::mode::Mode;
use crate::plan::{Action, Injection, GUARD_CONTAINER};
use crate::policy::{self, Source};

/// Explains the decision for one pod. `ctx` is what the webhook would use;
/// the text names the annotation, label or config field that decided.
pub fn explain(pod: &Value, ctx: &Context<'_>) -> String {
    let mut out = String::new();
    let meta = pod.get("metadata");
    let name = meta
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    let ns = match ctx.namespace {
        NamespacePolicy::Labels { namespace, .. } => namespace.to_string(),
        _ => meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string(),
    };
    let _ = writeln!(out, "pod {name} in namespace {ns}");
    if let NamespacePolicy::Labels { labels, .. } = ctx.namespace {
        let relevant: Vec<String> = labels
            .iter()
            .filter(|(k, _)| {
                k.starts_with("nestdock.io/") || k.as_str() == policy::LABEL_PSA_ENFORCE
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let shown = if relevant.is_empty() {
            "none that matter to nestdock".to_string()
        } else {
            relevant.join(", ")
        };
        let _ = writeln!(out, "namespace labels: {shown}");
    }

    let read = match crate::pod::from_value(pod) {
        Ok(read) => read,
        Err(message) => {
            let _ = writeln!(out, "result: denied (code 400): {message}");
            return out;
        }
    };
    let plan = crate::plan::decide(&read, ctx);
    let has_mode_annotation = meta
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(policy::LABEL_MODE))
        .is_some();
    let why = match plan.from {
        ModeFrom::AlreadyInjected => {
            let _ = writeln!(
                out,
                "result: unchanged: the pod already carries nestdock's {} injection ({}={}), so \
                 nestdock leaves it alone",
                plan.mode,
                crate::annotations::INJECTED,
                plan.mode
            );
            return out;
        }
        ModeFrom::Unreadable => {
            "the config file's defaultMode (the pod could not be read)".to_string()
        }
        ModeFrom::Chosen(Source::Annotation) => "the pod annotation nestdock.io/mode".to_string(),
        ModeFrom::Chosen(source) => {
            let annotation = if has_mode_annotation {
                "the pod's nestdock.io/mode annotation is invalid, see below"
            } else {
                "the pod has no nestdock.io/mode annotation"
            };
            match source {
                Source::NamespaceLabel => {
                    format!("the namespace label {} ({annotation})", policy::LABEL_MODE)
                }
                Source::InjectFlag => format!("the --mode flag ({annotation})"),
                _ => format!(
                    "the config file's defaultMode ({annotation}; no {} label on the namespace)",
                    policy::LABEL_MODE
                ),
            }
        }
    };
    let _ = writeln!(out, "mode: {} (from {why})", plan.mode);

    let deny = |out: &mut String, d: &crate::denial::Denial| {
        let _ = writeln!(out, "result: denied (code {})", d.code);
        // Every reason: each bad annotation and every policy rule that applies.
        for reason in &d.reasons {
            let _ = writeln!(out, "  - {reason}");
        }
    };
    match &plan.action {
        Action::Deny(d) => deny(&mut out, d),
        Action::Nothing => {
            let _ = writeln!(out, "result: unchanged");
            if plan.mode == Mode::None {
                let _ = writeln!(
                    out,
                    "to get a daemon: annotate the pod nestdock.io/mode: dind (or dind-rootless, dood), \
                     or label the namespace {}",
                    policy::LABEL_MODE
                );
            }
        }
        Action::Inject(injection) => match crate::render::render(injection, plan.mode) {
            Err(crate::render::TooLarge) => deny(
                &mut out,
                &crate::denial::Denial::bad(format!(
                    "the patch for this pod would be over {} bytes",
                    crate::render::MAX_PATCH_BYTES
                )),
            ),
            Ok(_) => {
                let _ = writeln!(out, "result: injected");
                describe(&mut out, injection, ctx);
            }
        },
    }
    if !plan.warnings.is_empty() {
        let _ = writeln!(out, "warnings:");
        for w in &plan.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}

/// What an injection adds, read off the plan.
fn describe(out: &mut String, injection: &Injection<'_>, ctx: &Context<'_>) {
    let guard = injection
        .daemon
        .as_ref()
        .is_some_and(|d| d.container.name == GUARD_CONTAINER);
    let what = if guard { "guard" } else { "daemon" };
    match &injection.daemon {
        Some(daemon) if daemon.placement == Sidecar::Native => {
            let _ = writeln!(
                out,
                "  {what}: container {} ({}), a native sidecar: the first init container, running and \
                 answering before any later container starts",
                daemon.container.name, daemon.container.image
            );
            if ctx.config.sidecar == crate::config::SidecarConfig::Auto {
                let _ = writeln!(
                    out,
                    "  (with sidecar: auto this assumes Kubernetes 1.29 or newer; the webhook asks the API \
                     server, and before 1.29 the {what} is a plain container)"
                );
            }
        }
        Some(daemon) => {
            let _ = writeln!(
                out,
                "  {what}: container {} ({}), a plain container next to yours: no start-order guarantee",
                daemon.container.name, daemon.container.image
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  daemon: the node's docker socket (hostPath {}), mounted into the containers: \
                 root on the node (dood.guard is off)",
                ctx.config.dood.host_socket
            );
        }
    }
    if guard {
        let _ = writeln!(
            out,
            "  the node's docker daemon (hostPath {}) is reached through the guard only: the \
             containers see the pod's own objects, and creates that would reach the node are refused",
            ctx.config.dood.host_socket
        );
    }
    let targets: Vec<&str> = injection.targets.iter().map(|t| t.name).collect();
    let _ = writeln!(out, "  docker for containers: {}", targets.join(", "));
    let env: Vec<String> = injection
        .env
        .iter()
        .map(|e| format!("{}={}", e.name, e.value))
        .collect();
    let _ = writeln!(out, "  environment: {}", env.join(", "));
    for t in injection.targets.iter().filter(|t| !t.kept_env.is_empty()) {
        let _ = writeln!(
            out,
            "  container {} keeps its own {}",
            t.name,
            t.kept_env.join(", ")
        );
    }
    if let Some(daemon) = injection.daemon.as_ref().filter(|_| !guard) {
        let own = [VOL_SOCKET, VOL_STORAGE, VOL_CERTS];
        let mirrored: Vec<String> = daemon
            .container
            .volume_mounts
            .iter()
            .filter(|m| !own.contains(&m.name))
            .map(|m| format!("{} at {}", m.name, m.mount_path))
            .collect();
        if !mirrored.is_empty() {
            let _ = writeln!(
                out,
                "  mounts mirrored into the daemon (same paths for docker run -v): {}",
                mirrored.join(", ")
            );
        }
    }
    for m in &injection.skipped_mounts {
        let _ = writeln!(
            out,
            "  not mirrored: {} at {} (container {}): {}",
            m.volume, m.path, m.container, m.reason
        );
    }
    let added: Vec<String> = injection
        .volumes
        .iter()
        .map(|v| {
            let kind = v
                .as_object()
                .and_then(|o| o.keys().find(|k| k.as_str() != "name").cloned())
                .unwrap_or_default();
            format!("{} ({kind})", v["name"].as_str().unwrap_or("?"))
        })
        .collect();
    let _ = writeln!(out, "  volumes added: {}", added.join(", "));
    if let Some((gid, _)) = injection.group {
        let _ = writeln!(out, "  supplementalGroups: {gid} added");
    }
    for (k, v) in &injection.node_selector {
        let _ = writeln!(out, "  nodeSelector: {k}={v} added");
    }
}
