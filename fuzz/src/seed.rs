//! Writes the seed corpora of the fuzz targets from the project's manifests:
//! every YAML or JSON file under `examples/` and `tests/fixtures/` (when it
//! exists). `inject` gets the files as they are; `engine` gets every pod and
//! pod template in them, under several contexts; `review` gets each pod
//! wrapped in an AdmissionReview, plus the other kinds of request the API
//! server sends.
//!
//! Usage: `seed REPO_ROOT CORPUS_DIR` (fuzz/run.sh calls it). Files are named
//! by a hash of their contents, so running it again adds nothing new.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Deserialize as _;
use serde_json::{json, Value};

// The instrumented build links libFuzzer, which wants a target; this one is
// never run (this binary has its own `main`).
libfuzzer_sys::fuzz_target!(|_data: &[u8]| {});

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [root, corpus] = args.as_slice() else {
        eprintln!("usage: seed REPO_ROOT CORPUS_DIR");
        return ExitCode::from(2);
    };
    match run(root, corpus) {
        Ok(counts) => {
            println!(
                "seed corpus: {} review, {} engine, {} inject, {} query, {} guard_body, {} guard_path inputs in {}",
                counts[0],
                counts[1],
                counts[2],
                counts[3],
                counts[4],
                counts[5],
                corpus.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("seed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(root: &Path, corpus: &Path) -> Result<[usize; 6], String> {
    let mut files = Vec::new();
    for dir in ["examples", "tests/fixtures"] {
        collect(&root.join(dir), &mut files)?;
    }
    if files.is_empty() {
        return Err(format!(
            "no YAML or JSON files under {}/examples or tests/fixtures",
            root.display()
        ));
    }
    files.sort();
    let mut out = Out::new(corpus)?;
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        out.write("inject", text.as_bytes())?;
        for doc in documents(&text) {
            let mut pods = Vec::new();
            pods_in(&doc, &mut pods);
            for pod in pods {
                let json = serde_json::to_vec(&pod).map_err(|e| e.to_string())?;
                for selector in [0u8, 1, 2, 3, 6, 9, 12, 15, 18, 24] {
                    let mut input = vec![selector];
                    input.extend_from_slice(&json);
                    out.write("engine", &input)?;
                }
                for (operation, dry_run) in [("CREATE", false), ("CREATE", true), ("UPDATE", false)]
                {
                    out.write("review", &review(&pod, operation, dry_run))?;
                }
            }
        }
    }
    for extra in extra_reviews() {
        out.write("review", &extra)?;
    }
    // What the server reads from a request head: query strings, durations,
    // Content-Types, namespace names.
    for query in [
        "timeout=10s",
        "timeout=1m30s&x=1",
        "timeout=500ms",
        "timeout=1.5s",
        "timeout=10000000000000000000s10000000000000000000s",
        "timeout=1e400",
        "application/json; charset=utf-8",
        "text/yaml",
        "builds?n=1",
        "team-a",
    ] {
        out.write("query", query.as_bytes())?;
    }
    // What nestdock guard reads: create bodies (the escape battery's shapes
    // among them) and filters; request paths with their queries.
    for body in [
        &br#"{"Image":"busybox","Cmd":["true"],"HostConfig":{"Privileged":true}}"#[..],
        br#"{"Image":"b","hostconfig":{"privileged":false,"Privileged":true}}"#,
        br#"{"HostConfig":{"Binds":["/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/w/src:/src"],"PortBindings":{"80/tcp":[{"HostPort":"0"}]},"SecurityOpt":["no-new-privileges"],"NetworkMode":"container:x"}}"#,
        br#"{"HostConfig":{"Mounts":[{"Type":"volume","Source":"v","VolumeOptions":{"DriverConfig":{"Options":{"type":"tmpfs","device":"tmpfs"}}}}]},"NetworkingConfig":{"EndpointsConfig":{"n":{}}}}"#,
        br#"{"Name":"v","Driver":"local","DriverOpts":{"type":"none","o":"bind","device":"/"},"Labels":{"a":"b"}}"#,
        br#"{"label":["a=b"],"status":{"exited":true}}"#,
    ] {
        out.write("guard_body", body)?;
    }
    for path in [
        "/v1.41/containers/json?all=1&filters=%7B%22label%22%3A%5B%22a%3Db%22%5D%7D",
        "//v1.41//containers/../swarm",
        "/v1.41/%73warm",
        "/v1.41/containers%2Fjson",
        "/v1.41/images/library%2Fbusybox/json",
        "/v1.41/containers/abc/attach?stream=1&stdout=1",
        "/build?t=x&labels=%7B%7D&networkmode=host",
        "/x/%2e%2e/%2E%2E/..",
        "/a?b=1;c=2&%zz",
    ] {
        out.write("guard_path", path.as_bytes())?;
    }
    Ok([
        out.count("review"),
        out.count("engine"),
        out.count("inject"),
        out.count("query"),
        out.count("guard_body"),
        out.count("guard_path"),
    ])
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .path();
        if path.is_dir() {
            collect(&path, files)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            files.push(path);
        }
    }
    Ok(())
}

/// The documents of a YAML stream (JSON is YAML); unreadable ones are skipped.
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .filter_map(|doc| Value::deserialize(doc).ok())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Pods in an object: a Pod, the items of a List, the pod template of a
/// workload (as the Pod it becomes).
fn pods_in(doc: &Value, pods: &mut Vec<Value>) {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    match kind {
        "Pod" => pods.push(doc.clone()),
        "List" => {
            for item in doc["items"].as_array().into_iter().flatten() {
                pods_in(item, pods);
            }
        }
        "CronJob" => {
            if let Some(template) = doc.pointer("/spec/jobTemplate/spec/template") {
                pods.push(from_template(template, doc));
            }
        }
        _ => {
            if let Some(template) = doc.pointer("/spec/template") {
                pods.push(from_template(template, doc));
            }
        }
    }
}

fn from_template(template: &Value, owner: &Value) -> Value {
    let mut metadata = template.get("metadata").cloned().unwrap_or(json!({}));
    if let (Some(meta), Some(name)) = (
        metadata.as_object_mut(),
        owner.pointer("/metadata/name").and_then(Value::as_str),
    ) {
        meta.insert("generateName".into(), json!(format!("{name}-")));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    })
}

fn review(pod: &Value, operation: &str, dry_run: bool) -> Vec<u8> {
    let old = if operation == "UPDATE" {
        pod.clone()
    } else {
        Value::Null
    };
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts"]},
            "object": pod,
            "oldObject": old,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    }))
    .unwrap_or_default()
}

fn extra_reviews() -> Vec<Vec<u8>> {
    let config_map = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "1",
            "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "operation": "CREATE",
            "userInfo": {},
            "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
        }
    });
    let null_object = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "2",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": "",
            "operation": "DELETE",
            "userInfo": {},
            "object": null,
        }
    });
    let mut out: Vec<Vec<u8>> = [config_map, null_object]
        .iter()
        .map(|v| serde_json::to_vec(v).unwrap_or_default())
        .collect();
    out.push(
        br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#
            .to_vec(),
    );
    out.push(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec());
    out
}

/// The corpus directories, one per target, and what was written.
struct Out {
    root: PathBuf,
    written: Vec<(&'static str, u64)>,
}

impl Out {
    fn new(root: &Path) -> Result<Out, String> {
        for target in [
            "review",
            "engine",
            "inject",
            "query",
            "guard_body",
            "guard_path",
        ] {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Ok(Out {
            root: root.to_owned(),
            written: Vec::new(),
        })
    }

    fn write(&mut self, target: &'static str, data: &[u8]) -> Result<(), String> {
        let mut hasher = DefaultHasher::new();
        data.hash(&mut hasher);
        let hash = hasher.finish();
        if self.written.contains(&(target, hash)) {
            return Ok(());
        }
        let path = self.root.join(target).join(format!("seed-{hash:016x}"));
        std::fs::write(&path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        self.written.push((target, hash));
        Ok(())
    }

    fn count(&self, target: &str) -> usize {
        self.written.iter().filter(|(t, _)| *t == target).count()
    }
}
