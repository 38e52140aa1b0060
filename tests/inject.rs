//! `nestdock inject` through the real binary (the README, *Command line*): every
//! example manifest injects, a second run changes nothing, every patched pod
//! satisfies the invariants of docs/behaviour.md, and the output passes an independent
//! strict Kubernetes schema check. Plus the command line's failure modes: a
//! denial writes nothing, bad usage exits 2 with one line, a missing file exits 1.

mod common;
use common::schema;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nestdock::config::Config;
use serde::Deserialize;
use serde_json::{json, Value};

const INJECTED: &str = "nestdock.io/injected";
const MODE: &str = "nestdock.io/mode";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `nestdock ARGS` from the repository root, with `stdin` as its input.
fn nestdock(args: &[&str], stdin: &str) -> Output {
    assert_eq!(common::bin(), PathBuf::from(env!("CARGO_BIN_EXE_nestdock")));
    let mut child = Command::new(common::bin())
        .args(args)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nestdock");
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_string();
    // Written from a thread: a large input must not dead-lock against a full stdout pipe.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for nestdock");
    writer.join().expect("stdin writer");
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// Asserts success and returns stdout; shows stderr when it failed.
fn success(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\nstderr:\n{}\nstdout:\n{}",
        out.status,
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout)
}

/// The non-empty documents of a YAML stream.
fn documents(yaml: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    for de in serde_norway::Deserializer::from_str(yaml) {
        // The iterator repeats an error forever: fail at the first.
        let v = Value::deserialize(de).unwrap_or_else(|e| panic!("not YAML: {e}\n{yaml}"));
        if !v.is_null() {
            docs.push(v);
        }
    }
    docs
}

/// Where each workload kind keeps its pod template.
fn template_path(doc: &Value) -> Option<&'static [&'static str]> {
    let group = doc["apiVersion"]
        .as_str()
        .and_then(|a| a.rsplit_once('/'))
        .map_or("", |(g, _)| g);
    match (group, doc["kind"].as_str()?) {
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") | ("batch", "Job") => {
            Some(&["spec", "template"])
        }
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Every pod in a document as a Pod object, labelled `Kind/name`: Pods as they
/// are, `List` items, and pod templates made into Pods the way `inject` does.
fn pods(doc: &Value) -> Vec<(String, Value)> {
    let name = format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    );
    if doc["kind"] == "List" {
        return doc["items"]
            .as_array()
            .expect("List items")
            .iter()
            .flat_map(pods)
            .collect();
    }
    if doc["kind"] == "Pod" {
        return vec![(name, doc.clone())];
    }
    let Some(path) = template_path(doc) else {
        return vec![];
    };
    let template = path.iter().fold(doc, |v, k| &v[*k]);
    let mut metadata = template.get("metadata").cloned().unwrap_or(json!({}));
    if let Some(ns) = doc["metadata"].get("namespace") {
        metadata["namespace"] = ns.clone();
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template["spec"].clone(),
    });
    vec![(name, pod)]
}

fn all_pods(docs: &[Value]) -> Vec<(String, Value)> {
    docs.iter().flat_map(pods).collect()
}

/// A container or init container of `pod` by name.
fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| pod["spec"][*k].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {pod:#}"))
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?
        .get("value")?
        .as_str()
}

/// Writes `yaml` to a temporary file and runs the strict schema check on it,
/// exactly as `nestdock inject` wrote it (so the YAML as read by a YAML 1.1
/// reader, like kubectl, is checked too).
fn validate_output(yaml: &str, example: &str) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(format!("injected-{example}"));
    std::fs::write(&path, yaml).expect("write output");
    schema::validate_k8s_files(&[path]);
}

/// The generic contract for one example; returns the output documents for the
/// example's own checks.
fn check_example(example: &str) -> Vec<Value> {
    let file = format!("examples/{example}");
    let input = std::fs::read_to_string(repo().join(&file)).expect("read example");
    let out = nestdock(&["inject", "-f", &file], "");
    let yaml = success(&out, &format!("nestdock inject -f {file}"));
    assert!(!yaml.is_empty(), "{file}: empty output");

    // Idempotent: the output fed back in comes out byte for byte.
    let again = nestdock(&["inject", "-f", "-"], &yaml);
    let yaml2 = success(&again, &format!("second nestdock inject of {file}"));
    assert_eq!(yaml2, yaml, "{file}: a second inject changed the output");

    let in_docs = documents(&input);
    let out_docs = documents(&yaml);
    let kinds = |d: &[Value]| d.iter().map(|d| d["kind"].clone()).collect::<Vec<_>>();
    assert_eq!(
        kinds(&out_docs),
        kinds(&in_docs),
        "{file}: documents changed"
    );

    let in_pods = all_pods(&in_docs);
    let out_pods = all_pods(&out_docs);
    assert_eq!(in_pods.len(), out_pods.len(), "{file}");
    assert!(!in_pods.is_empty(), "{file}: an example without a pod");
    for ((name, before), (_, after)) in in_pods.iter().zip(&out_pods) {
        match before["metadata"]["annotations"][MODE].as_str() {
            Some(mode) if mode != "none" => {
                assert_eq!(
                    after["metadata"]["annotations"][INJECTED], mode,
                    "{file}: {name} asked for {mode} and was not injected:\n{after:#}"
                );
                common::invariants::check(after, &Config::default());
            }
            _ => assert_eq!(
                after, before,
                "{file}: {name} asked for nothing but changed"
            ),
        }
    }
    // Objects that are not pods or workloads pass through as they were.
    for (before, after) in in_docs.iter().zip(&out_docs) {
        if before["kind"] != "List" && pods(before).is_empty() {
            assert_eq!(after, before, "{file}: a non-workload object changed");
        }
    }

    validate_output(&yaml, example);
    out_docs
}

#[test]
fn example_pod_dind() {
    let docs = check_example("pod-dind.yaml");
    let pod = &docs[0];
    assert_eq!(
        env(container(pod, "tests"), "DOCKER_HOST"),
        Some("unix:///var/run/docker.sock")
    );
    // The daemon starts first, so `checkout` and `tests` start with it ready.
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "nestdock-dind");
}

#[test]
fn example_job_dind_uses_a_native_sidecar() {
    let docs = check_example("job-dind.yaml");
    assert_eq!(docs[0]["kind"], "ConfigMap");
    let template = &docs[1]["spec"]["template"];
    let daemon = &template["spec"]["initContainers"][0];
    assert_eq!(daemon["name"], "nestdock-dind");
    assert_eq!(
        daemon["restartPolicy"], "Always",
        "the Job only completes with a native sidecar"
    );
    assert!(template["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .all(|c| c["name"] != "nestdock-dind"));
}

#[test]
fn example_deployment_dood() {
    let docs = check_example("deployment-dood.yaml");
    let (_, pod) = &pods(&docs[0])[0];
    let host_path_socket = pod["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .any(|v| v["hostPath"]["type"] == "Socket");
    assert!(host_path_socket, "dood mounts the node's socket:\n{pod:#}");
    assert_eq!(
        env(container(pod, "docker"), "DOCKER_HOST"),
        Some("unix:///var/run/docker.sock")
    );
    let names = |k: &str| {
        pod["spec"][k]
            .as_array()
            .map(|a| a.iter().filter(|c| c["name"] == "nestdock-dind").count())
            .unwrap_or(0)
    };
    assert_eq!(
        names("containers") + names("initContainers"),
        0,
        "dood runs no daemon"
    );
}

#[test]
fn example_gitlab_runner_tls() {
    let docs = check_example("gitlab-runner-tls.yaml");
    let build = container(&docs[0], "build");
    assert_eq!(env(build, "DOCKER_HOST"), Some("tcp://localhost:2376"));
    assert_eq!(env(build, "DOCKER_TLS_VERIFY"), Some("1"));
    assert_eq!(env(build, "DOCKER_CERT_PATH"), Some("/certs/client"));
}

#[test]
fn example_cronjob_rootless() {
    let docs = check_example("cronjob-rootless.yaml");
    let (_, pod) = &pods(&docs[0])[0];
    let image = container(pod, "nestdock-dind")["image"]
        .as_str()
        .expect("daemon image");
    assert!(image.contains("rootless"), "{image}");
}

#[test]
fn example_pod_subset_only_named_containers() {
    let docs = check_example("pod-subset.yaml");
    let pod = &docs[0];
    assert!(env(container(pod, "tests"), "DOCKER_HOST").is_some());
    assert_eq!(env(container(pod, "log-shipper"), "DOCKER_HOST"), None);
    assert_eq!(env(container(pod, "fetch-fixtures"), "DOCKER_HOST"), None);
}

#[test]
fn example_list_stays_a_list() {
    let docs = check_example("list.yaml");
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["kind"], "List");
    let items = docs[0]["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["metadata"]["annotations"][INJECTED], "dind");
    assert!(items[1]["metadata"].get("annotations").is_none());
}

const PLAIN_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: plain
  namespace: ci
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: docker:28-cli
    command: [docker, info]
";

#[test]
fn mode_flag_injects_an_unannotated_pod() {
    let out = nestdock(&["inject", "--mode", "dind", "-f", "-"], PLAIN_POD);
    let yaml = success(&out, "nestdock inject --mode dind");
    let docs = documents(&yaml);
    assert_eq!(docs[0]["metadata"]["annotations"][INJECTED], "dind");
    common::invariants::check(&docs[0], &Config::default());
    validate_output(&yaml, "mode-flag.yaml");

    // Without the flag the same pod is left alone.
    let out = nestdock(&["inject", "-f", "-"], PLAIN_POD);
    assert_eq!(
        documents(&success(&out, "nestdock inject")),
        documents(PLAIN_POD)
    );
}

#[test]
fn the_pod_annotation_wins_over_the_mode_flag() {
    let pod = PLAIN_POD.replace(
        "  namespace: ci\n",
        "  namespace: ci\n  annotations:\n    nestdock.io/mode: none\n",
    );
    let out = nestdock(&["inject", "--mode", "dind", "-f", "-"], &pod);
    let docs = documents(&success(&out, "nestdock inject --mode dind"));
    assert!(docs[0]["metadata"]["annotations"].get(INJECTED).is_none());
}

#[test]
fn json_input_gives_yaml_output() {
    let input = serde_json::to_string_pretty(&documents(PLAIN_POD)[0]).expect("JSON");
    let out = nestdock(&["inject", "--mode", "dind", "-f", "-"], &input);
    let yaml = success(&out, "nestdock inject of JSON");
    assert!(yaml.starts_with("apiVersion: v1\nkind: Pod\n"), "{yaml}");
    assert_eq!(
        documents(&yaml)[0]["metadata"]["annotations"][INJECTED],
        "dind"
    );
}

#[test]
fn a_denied_object_writes_nothing_and_names_object_and_key() {
    let bad = PLAIN_POD.replace(
        "  namespace: ci\n",
        "  namespace: ci\n  annotations:\n    nestdock.io/mode: dind\n    nestdock.io/mtu: \"9\"\n",
    );
    // A good document before the bad one: all or nothing.
    let input = format!(
        "{}---\n{}",
        PLAIN_POD.replace("name: plain", "name: fine"),
        bad
    );
    let out = nestdock(&["inject", "--mode", "dind", "-f", "-"], &input);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    assert!(stderr.contains("Pod/plain"), "{stderr}");
    assert!(stderr.contains("document 2"), "{stderr}");
    assert!(stderr.contains("nestdock.io/mtu"), "{stderr}");
}

#[test]
fn bad_usage_exits_2_with_one_line() {
    let out = nestdock(&["inject", "--bogus"], "");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--bogus"), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = nestdock(&["inject", "--mode", "sideways"], "");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("sideways"), "{stderr}");
}

#[test]
fn a_missing_file_exits_1_naming_it() {
    let out = nestdock(&["inject", "-f", "examples/no-such-file.yaml"], "");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("examples/no-such-file.yaml"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn unreadable_yaml_exits_1_naming_document_and_line() {
    let input = format!("{PLAIN_POD}---\nkind: Pod\nspec: {{containers: [\n");
    let out = nestdock(&["inject", "-f", "-"], &input);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("document 2"), "{stderr}");
    assert!(stderr.contains("line "), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_document_that_is_not_an_object_exits_1() {
    let input = format!("{PLAIN_POD}---\njust some words\n");
    let out = nestdock(&["inject", "-f", "-"], &input);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("document 2") && stderr.contains("found a string"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn the_schema_check_catches_what_it_should() {
    // Guards the guard: the validator must fail an unknown field (strict) and
    // a missing required field, or the example tests above prove nothing.
    let good = documents(PLAIN_POD);
    schema::validate_k8s(&good);
    for bad in [
        {
            let mut p = good[0].clone();
            p["spec"]["containers"][0]["imagePullPolicy2"] = json!("Always");
            p
        },
        {
            let mut p = good[0].clone();
            p["spec"]
                .as_object_mut()
                .expect("spec")
                .remove("containers");
            p
        },
    ] {
        let caught = std::panic::catch_unwind(|| schema::validate_k8s(std::slice::from_ref(&bad)));
        assert!(caught.is_err(), "the validator accepted {bad:#}");
    }
}
