//! `nestdock explain -f POD [--namespace-labels k=v,...] [--config F]`
//! (the README, *Command line*): what a user runs when a pod did not get what they
//! expected. For every way a decision goes, the text must say the outcome and
//! name the annotation, label or config field that decided it.

mod common;

use std::path::Path;
use std::process::{Command, Output};

/// A pod manifest in YAML, as a user has it in their repository.
fn pod_yaml(annotations: &[(&str, &str)]) -> String {
    let mut yaml = String::from(
        "apiVersion: v1\n\
         kind: Pod\n\
         metadata:\n  name: build\n  namespace: ci\n",
    );
    if !annotations.is_empty() {
        yaml.push_str("  annotations:\n");
        for (k, v) in annotations {
            yaml.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    yaml.push_str(
        "spec:\n\
         \x20 containers:\n\
         \x20 - name: build\n\
         \x20   image: docker:28-cli\n\
         \x20   command: [\"sh\", \"-c\", \"docker build -t app .\"]\n",
    );
    yaml
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(common::bin())
        .arg("explain")
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run nestdock explain")
}

/// Runs `explain` on a pod with these annotations and namespace labels
/// (`k=v,...`, empty for none); returns its text.
fn explain(annotations: &[(&str, &str)], labels: &str) -> String {
    explain_with(&pod_yaml(annotations), labels, None)
}

fn explain_with(pod: &str, labels: &str, config: Option<&str>) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("pod.yaml"), pod).expect("write pod.yaml");
    let mut args = vec!["-f", "pod.yaml"];
    if !labels.is_empty() {
        args.extend(["--namespace-labels", labels]);
    }
    if let Some(config) = config {
        std::fs::write(dir.path().join("config.yaml"), config).expect("write config");
        args.extend(["--config", "config.yaml"]);
    }
    let out = run(dir.path(), &args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "explain failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn assert_says(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "{n:?} missing from:\n{text}");
    }
}

#[test]
fn injected_because_of_the_pod_annotation() {
    let text = explain(&[("nestdock.io/mode", "dind")], "");
    assert_says(
        &text,
        &[
            "pod build in namespace ci",
            "mode: dind (from the pod annotation nestdock.io/mode)",
            "result: injected",
            "nestdock-dind",
            "native sidecar",
            "docker for containers: build",
        ],
    );
}

#[test]
fn injected_because_of_the_namespace_label() {
    let text = explain(&[], "nestdock.io/mode=dind-rootless,team=ci");
    assert_says(
        &text,
        &[
            "namespace labels: nestdock.io/mode=dind-rootless",
            "mode: dind-rootless (from the namespace label nestdock.io/mode",
            "result: injected",
            "dind-rootless",
        ],
    );
    // Labels that do not matter to nestdock are not listed as if they did.
    assert!(!text.contains("team=ci"), "{text}");
}

#[test]
fn unchanged_under_the_config_default_with_a_hint() {
    let text = explain(&[], "team=ci");
    assert_says(
        &text,
        &[
            "namespace labels: none that matter to nestdock",
            "mode: none (from the config file's defaultMode",
            "result: unchanged",
            "annotate the pod nestdock.io/mode: dind",
            "label the namespace nestdock.io/mode",
        ],
    );
}

#[test]
fn injected_because_of_the_config_default() {
    let text = explain_with(&pod_yaml(&[]), "", Some("defaultMode: dind\n"));
    assert_says(
        &text,
        &[
            "mode: dind (from the config file's defaultMode",
            "result: injected",
        ],
    );
}

#[test]
fn the_namespace_labels_and_the_denial_are_printed() {
    // The rules themselves are tested in src/policy.rs; explain shows the
    // labels it was given and the denial the engine gave.
    let text = explain(
        &[("nestdock.io/mode", "dind")],
        "pod-security.kubernetes.io/enforce=baseline",
    );
    assert_says(
        &text,
        &[
            "namespace labels: pod-security.kubernetes.io/enforce=baseline",
            "result: denied (code 403)",
            "pod-security.kubernetes.io/enforce=baseline",
            "privileged",
        ],
    );
}

#[test]
fn already_injected_pod_is_left_alone_and_a_forged_marker_is_not_believed() {
    // A marker on a pod that carries no injection is the author's claim only.
    let text = explain(
        &[
            ("nestdock.io/mode", "dind"),
            ("nestdock.io/injected", "dind"),
        ],
        "",
    );
    assert_says(
        &text,
        &["result: injected", "nestdock.io/injected=\"dind\" ignored"],
    );
    // The pod as `nestdock inject` writes it does carry the injection.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("pod.yaml"),
        pod_yaml(&[("nestdock.io/mode", "dind")]),
    )
    .unwrap();
    let injected = Command::new(common::bin())
        .args(["inject", "-f", "pod.yaml"])
        .current_dir(dir.path())
        .output()
        .expect("run nestdock inject");
    assert!(injected.status.success(), "{injected:?}");
    let text = explain_with(&String::from_utf8_lossy(&injected.stdout), "", None);
    assert_says(
        &text,
        &[
            "result: unchanged",
            "already carries nestdock's dind injection",
        ],
    );
}

#[test]
fn mode_source_is_told_truthfully_and_every_reason_is_listed() {
    // A valid mode annotation beside a bad one: the mode comes from the
    // annotation, and both problems are listed.
    let text = explain(
        &[
            ("nestdock.io/mode", "dood"),
            ("nestdock.io/mtu", "9"),
            ("nestdock.io/tls", "yes"),
        ],
        "nestdock.io/mode=dind,nestdock.io/enforce=true",
    );
    assert_says(
        &text,
        &[
            "mode: dood (from the pod annotation nestdock.io/mode)",
            "result: denied (code 400)",
            "  - annotation nestdock.io/mtu",
            "  - annotation nestdock.io/tls",
            "  - namespace ci enforces mode dind",
            "  - mode dood is not allowed in namespace ci",
        ],
    );
    // An invalid mode annotation is not "no annotation".
    let text = explain(&[("nestdock.io/mode", "dnid")], "nestdock.io/mode=dind");
    assert_says(
        &text,
        &[
            "the pod's nestdock.io/mode annotation is invalid",
            "  - annotation nestdock.io/mode: invalid value \"dnid\"",
        ],
    );
    assert!(
        !text.contains("has no nestdock.io/mode annotation"),
        "{text}"
    );
}

#[test]
fn malformed_namespace_labels_are_bad_usage() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("pod.yaml"), pod_yaml(&[])).unwrap();
    let out = run(
        dir.path(),
        &["-f", "pod.yaml", "--namespace-labels", "nestdock.io/mode"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert_says(&stderr, &["nestdock.io/mode", "key=value"]);
}

#[test]
fn a_manifest_that_is_not_a_pod_is_refused_naming_its_kind() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("deploy.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n",
    )
    .unwrap();
    let out = run(dir.path(), &["-f", "deploy.yaml"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_says(&stderr, &["Deployment", "Pod"]);
}
