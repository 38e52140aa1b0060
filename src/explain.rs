//! `nestdock explain`: what a user runs when a pod did not get what they
//! expected. It goes through the same engine as the webhook, then says in
//! plain words which mode applies and why, what would be injected, or why the
//! pod would be denied and which annotation or label to change.

use std::fmt::Write as _;

use serde_json::Value;

use crate::engine::{self, Context, ModeFrom, NamespacePolicy, Outcome};
use crate::mode::Mode;
use crate::policy::{self, Source};

fn names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

fn find<'a>(list: Option<&'a Value>, name: &str) -> Option<&'a Value> {
    list.and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

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

    let decision = engine::mutate(pod, ctx);
    let has_mode_annotation = meta
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(policy::LABEL_MODE))
        .is_some();
    let why = match decision.from {
        ModeFrom::AlreadyInjected => {
            let _ = writeln!(
                out,
                "result: unchanged: the pod already carries nestdock's {} injection ({}={}), so \
                 nestdock leaves it alone",
                decision.mode,
                crate::annotations::INJECTED,
                decision.mode
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
    let _ = writeln!(out, "mode: {} (from {why})", decision.mode);

    match &decision.outcome {
        Outcome::Denied(d) => {
            let _ = writeln!(out, "result: denied (code {})", d.code);
            // Every reason: each bad annotation and every policy rule that applies.
            for reason in &d.reasons {
                let _ = writeln!(out, "  - {reason}");
            }
        }
        Outcome::Unchanged => {
            let _ = writeln!(out, "result: unchanged");
            if decision.mode == Mode::None {
                let _ = writeln!(
                    out,
                    "to get a daemon: annotate the pod nestdock.io/mode: dind (or dind-rootless, dood), \
                     or label the namespace {}",
                    policy::LABEL_MODE
                );
            }
        }
        Outcome::Patched(patch) => {
            let mut patched = pod.clone();
            if patch.apply(&mut patched).is_err() {
                let _ = writeln!(out, "result: injected (the patch could not be previewed)");
            } else {
                let _ = writeln!(out, "result: injected");
                describe(&mut out, pod, &patched, decision.mode);
            }
        }
    }
    if !decision.warnings.is_empty() {
        let _ = writeln!(out, "warnings:");
        for w in &decision.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}

/// Describes what the patch added, read off the patched pod.
fn describe(out: &mut String, before: &Value, after: &Value, mode: Mode) {
    let spec = &after["spec"];
    if let Some(daemon) = find(spec.get("initContainers"), engine::DAEMON_CONTAINER) {
        let _ = writeln!(
            out,
            "  daemon: container {} ({}), a native sidecar: the first init container, running and answering \
             before any later container starts",
            engine::DAEMON_CONTAINER,
            daemon["image"].as_str().unwrap_or("?")
        );
        let _ = writeln!(
            out,
            "  (with sidecar: auto this assumes Kubernetes 1.29 or newer; the webhook asks the API server, \
             and before 1.29 the daemon is a plain container)"
        );
    } else if let Some(daemon) = find(spec.get("containers"), engine::DAEMON_CONTAINER) {
        let _ = writeln!(
            out,
            "  daemon: container {} ({}), a plain container next to yours: no start-order guarantee",
            engine::DAEMON_CONTAINER,
            daemon["image"].as_str().unwrap_or("?")
        );
    } else if mode == Mode::Dood {
        let _ = writeln!(out, "  daemon: the node's docker socket (hostPath)");
    }
    let mut targets = Vec::new();
    for list in ["initContainers", "containers"] {
        for n in names(spec.get(list)) {
            if n == engine::DAEMON_CONTAINER {
                continue;
            }
            let mounts = |pod: &Value| {
                find(pod["spec"].get(list), &n)
                    .and_then(|c| c.get("volumeMounts"))
                    .and_then(Value::as_array)
                    .map(Vec::len)
                    .unwrap_or(0)
            };
            if mounts(after) > mounts(before) {
                targets.push(n);
            }
        }
    }
    let _ = writeln!(out, "  docker for containers: {}", targets.join(", "));
    let before_vols = names(before["spec"].get("volumes"));
    let added: Vec<String> = after["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| !before_vols.contains(&v["name"].as_str().unwrap_or("").to_string()))
        .map(|v| {
            let kind = v
                .as_object()
                .and_then(|o| o.keys().find(|k| k.as_str() != "name").cloned())
                .unwrap_or_default();
            format!("{} ({kind})", v["name"].as_str().unwrap_or("?"))
        })
        .collect();
    let _ = writeln!(out, "  volumes added: {}", added.join(", "));
    if let Some(g) = after["spec"]["securityContext"]["supplementalGroups"].as_array() {
        let groups: Vec<String> = g.iter().map(|x| x.to_string()).collect();
        let _ = writeln!(out, "  supplementalGroups: {}", groups.join(", "));
    }
}
