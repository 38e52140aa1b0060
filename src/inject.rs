//! `nestdock inject`: the webhook's mutation, offline (the README, *Command line*).
//!
//! GitOps repositories and CI pipelines want the patched manifests before they
//! reach a cluster, so this module reads manifests, hands every Pod and every pod
//! template to the same [`engine::mutate`] the webhook uses, and writes YAML.
//!
//! Reading: YAML or JSON (JSON is YAML), one or many documents, and `List`
//! objects whose items are mutated in place. Pods and the pod templates of
//! Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob are mutated;
//! every other object passes through unchanged.
//!
//! All or nothing: a CI job must not apply half-injected manifests, so any
//! denied object fails the whole run (every denial is reported, so one run shows
//! everything to fix) and nothing is written.
//!
//! Writing: YAML 1.1 that `kubectl` reads back as the same objects
//! ([`crate::yaml`]), in the input's key order with what nestdock added after
//! it, so a diff of the output against the input shows what nestdock added
//! and little else. Comments are not kept.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::engine::{self, Context, Decision, Effect, NamespacePolicy};
use crate::mode::Mode;

/// What `nestdock inject` was asked to do besides the manifests themselves.
pub struct InjectOptions<'a> {
    /// `--mode`: acts like a namespace label (a pod's own annotation wins).
    pub mode: Option<Mode>,
    pub config: &'a Config,
}

/// The mutated manifests and what the engine had to say about them.
pub struct InjectOutput {
    /// YAML documents separated by `---`, in input order.
    pub yaml: String,
    /// Each prefixed with the object it concerns (`Deployment/web: ...`).
    pub warnings: Vec<String>,
}

/// Where an object sits in the input: the document (1-based, as an editor
/// counts) and, inside `List`s, the item indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub document: usize,
    pub items: Vec<usize>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "document {}", self.document)?;
        for i in &self.items {
            write!(f, " items[{i}]")?;
        }
        Ok(())
    }
}

/// One object the engine refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedObject {
    /// `Kind/name`, as `kubectl` names objects.
    pub object: String,
    pub location: Location,
    /// The webhook's status code for the same pod (400: bad value, 403: policy).
    pub code: u16,
    pub message: String,
}

/// Why `inject` wrote nothing. Each variant says where (document index, object)
/// and why, so the message alone is enough to fix the input.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The input is not readable YAML or JSON; the message carries the YAML
    /// error with its line and column in the whole input.
    #[error("document {document}: cannot read YAML/JSON: {message}")]
    Read { document: usize, message: String },
    /// A document that is not a mapping (a bare string, a list).
    #[error("document {document}: expected a Kubernetes object (a mapping with apiVersion and kind), found {found}")]
    NotAnObject {
        document: usize,
        found: &'static str,
    },
    /// An object that is shaped wrong where nestdock has to look into it.
    #[error("{object} ({location}): {message}")]
    Malformed {
        object: String,
        location: Location,
        message: String,
    },
    /// The engine refused one or more objects.
    #[error("{}", denials_message(.0))]
    Denied(Vec<DeniedObject>),
    /// The engine's patch did not apply: a bug in nestdock, reported as such.
    #[error("{object} ({location}): nestdock's patch does not apply ({message}); this is a bug in nestdock, please report it")]
    Patch {
        object: String,
        location: Location,
        message: String,
    },
}

fn denials_message(denials: &[DeniedObject]) -> String {
    match denials {
        [one] => format!("{} ({}) denied: {}", one.object, one.location, one.message),
        many => {
            let mut s = format!("{} objects denied:", many.len());
            for d in many {
                s.push_str(&format!("\n  {} ({}): {}", d.object, d.location, d.message));
            }
            s
        }
    }
}

/// Mutates every Pod and pod template in `input` (YAML or JSON, one or many
/// documents) and returns the result as YAML. Nothing is returned when any
/// object is denied or the input cannot be read.
pub fn inject(input: &str, opts: &InjectOptions<'_>) -> Result<InjectOutput, InjectError> {
    let ctx = Context {
        config: opts.config,
        namespace: NamespacePolicy::Offline { mode: opts.mode },
        native_sidecars: true,
    };
    inject_with(input, &|pod: &Value| engine::mutate(pod, &ctx))
}

/// [`inject`] with the engine passed in, so that the manifest handling can be
/// tested on its own.
fn inject_with(
    input: &str,
    mutate: &dyn Fn(&Value) -> Decision,
) -> Result<InjectOutput, InjectError> {
    let documents = read_documents(input)?;
    let mut run = Run {
        mutate,
        warnings: Vec::new(),
        denials: Vec::new(),
    };
    let mut mutated = Vec::with_capacity(documents.len());
    for doc in documents {
        let mut value = doc.value;
        let location = Location {
            document: doc.index,
            items: Vec::new(),
        };
        run.object(&mut value, &location, None)?;
        mutated.push(value);
    }
    if !run.denials.is_empty() {
        return Err(InjectError::Denied(run.denials));
    }
    if mutated.is_empty() {
        run.warnings
            .push("the input holds no Kubernetes object; nothing to inject".to_string());
    }
    let mut out = String::new();
    for (i, value) in mutated.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        crate::yaml::emit_document(&mut out, value);
    }
    Ok(InjectOutput {
        yaml: out,
        warnings: run.warnings,
    })
}

/// One non-empty input document, as the engine sees it. Its maps keep the
/// input's key order (serde_json's `preserve_order`), so the output does too.
struct Document {
    index: usize,
    value: Value,
}

/// The objects of a manifest: every non-empty document, in order, each a
/// mapping. The one YAML reader of the command line (`inject` and `explain`).
pub fn read_manifests(input: &str) -> Result<Vec<Value>, InjectError> {
    Ok(read_documents(input)?
        .into_iter()
        .map(|d| d.value)
        .collect())
}

/// Splits the input into documents and converts each to JSON values, skipping
/// empty ones (a leading or doubled `---`), as `kubectl` does.
fn read_documents(input: &str) -> Result<Vec<Document>, InjectError> {
    let mut documents = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(input).enumerate() {
        let index = i + 1;
        // After an error the iterator yields that same error forever: return
        // at the first one, never `continue`.
        let mut yaml = serde_norway::Value::deserialize(de).map_err(|e| InjectError::Read {
            document: index,
            message: e.to_string(),
        })?;
        if yaml.is_null() {
            continue;
        }
        yaml.apply_merge().map_err(|e| InjectError::Read {
            document: index,
            message: format!("merge key (<<): {e}"),
        })?;
        let value = crate::yaml::to_json(&yaml).map_err(|message| InjectError::Read {
            document: index,
            message,
        })?;
        if !value.is_object() {
            return Err(InjectError::NotAnObject {
                document: index,
                found: type_name(&value),
            });
        }
        documents.push(Document { index, value });
    }
    Ok(documents)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Which objects carry a pod, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Pod,
    /// A workload: the path of its `PodTemplateSpec`.
    Template(&'static [&'static str]),
}

/// The API group of an `apiVersion` (`""` for the core group).
fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// Matches on the API group as well as the kind: other groups have kinds
/// called `Job` (Volcano) or `Deployment` whose pods live elsewhere.
fn target(api_version: &str, kind: &str) -> Option<Target> {
    const TEMPLATE: &[&str] = &["spec", "template"];
    const CRONJOB_TEMPLATE: &[&str] = &["spec", "jobTemplate", "spec", "template"];
    match (api_group(api_version), kind) {
        ("", "Pod") => Some(Target::Pod),
        ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
            Some(Target::Template(TEMPLATE))
        }
        ("batch", "Job") => Some(Target::Template(TEMPLATE)),
        ("batch", "CronJob") => Some(Target::Template(CRONJOB_TEMPLATE)),
        _ => None,
    }
}

/// `Kind/name` for messages; `Kind/prefix*` for a `generateName` object.
fn object_name(kind: &str, obj: &Value) -> String {
    let meta = obj.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let generate = meta
        .and_then(|m| m.get("generateName"))
        .and_then(Value::as_str);
    match (name, generate) {
        (Some(n), _) => format!("{kind}/{n}"),
        (None, Some(g)) => format!("{kind}/{g}*"),
        (None, None) => format!("{kind}/<unnamed>"),
    }
}

/// State of one `inject` run: the engine, and what it said so far.
struct Run<'e> {
    mutate: &'e dyn Fn(&Value) -> Decision,
    warnings: Vec<String>,
    denials: Vec<DeniedObject>,
}

impl Run<'_> {
    /// Mutates one object in place, recursing into `List`s. `implied` is what
    /// a typed list (`PodList`) says about items that omit apiVersion/kind.
    fn object(
        &mut self,
        obj: &mut Value,
        location: &Location,
        implied: Option<(&str, &str)>,
    ) -> Result<(), InjectError> {
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .or(implied.map(|i| i.0))
            .unwrap_or("")
            .to_string();
        let Some(kind) = obj
            .get("kind")
            .and_then(Value::as_str)
            .or(implied.map(|i| i.1))
            .map(str::to_string)
        else {
            // Not a Kubernetes object (a kustomization, say): not ours to judge.
            return Ok(());
        };
        if let Some(item_kind) = list_item_kind(&api_version, &kind) {
            return self.list(obj, location, &kind, &api_version, item_kind);
        }
        match target(&api_version, &kind) {
            None => Ok(()),
            Some(Target::Pod) => {
                let name = object_name(&kind, obj);
                let decision = if obj.get("apiVersion").is_some() && obj.get("kind").is_some() {
                    (self.mutate)(obj)
                } else {
                    // A typed list's item: the engine sees a whole Pod; the
                    // patch (metadata and spec only) applies to the item as is.
                    let mut whole = obj.clone();
                    if let Some(m) = whole.as_object_mut() {
                        m.insert("apiVersion".into(), Value::from(api_version.as_str()));
                        m.insert("kind".into(), Value::from(kind.as_str()));
                    }
                    (self.mutate)(&whole)
                };
                if let Some(patch) = self.decided(decision, &name, location) {
                    apply(obj, &patch, &name, location)?;
                }
                Ok(())
            }
            Some(Target::Template(path)) => self.template(obj, path, &kind, location),
        }
    }

    fn list(
        &mut self,
        obj: &mut Value,
        location: &Location,
        kind: &str,
        api_version: &str,
        item_kind: Option<&str>,
    ) -> Result<(), InjectError> {
        let name = object_name(kind, obj);
        let items = match obj.get_mut("items") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(InjectError::Malformed {
                    object: name,
                    location: location.clone(),
                    message: format!("items must be a list, found {}", type_name(other)),
                })
            }
        };
        for (i, item) in items.iter_mut().enumerate() {
            let mut at = location.clone();
            at.items.push(i);
            if !item.is_object() {
                return Err(InjectError::Malformed {
                    object: name,
                    location: at,
                    message: format!(
                        "a list item must be a Kubernetes object, found {}",
                        type_name(item)
                    ),
                });
            }
            let implied = item_kind.map(|k| (api_version, k));
            self.object(item, &at, implied)?;
        }
        Ok(())
    }

    /// Mutates a workload's pod template through a Pod-shaped copy, so that the
    /// engine sees exactly what the pods will be created from.
    fn template(
        &mut self,
        obj: &mut Value,
        path: &[&str],
        kind: &str,
        location: &Location,
    ) -> Result<(), InjectError> {
        let name = object_name(kind, obj);
        let template_path = path.join(".");
        let malformed = |message: String| InjectError::Malformed {
            object: name.clone(),
            location: location.clone(),
            message,
        };
        let namespace = obj
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .cloned();
        let mut template: &mut Value = obj;
        for (depth, key) in path.iter().enumerate() {
            match template.get_mut(*key) {
                Some(next) if next.is_object() => template = next,
                None | Some(Value::Null) => {
                    // A fragment (a kustomize patch, say) with no pod in it.
                    self.warnings.push(format!(
                        "{name}: has no pod template at {template_path}; left unchanged"
                    ));
                    return Ok(());
                }
                Some(other) => {
                    return Err(malformed(format!(
                        "{} must be a mapping, found {}",
                        path[..=depth].join("."),
                        type_name(other)
                    )))
                }
            }
        }
        let Some(spec) = template.get("spec").filter(|s| !s.is_null()).cloned() else {
            self.warnings.push(format!(
                "{name}: has no pod spec at {template_path}.spec; left unchanged"
            ));
            return Ok(());
        };
        if !spec.is_object() {
            return Err(malformed(format!(
                "{template_path}.spec must be a mapping, found {}",
                type_name(&spec)
            )));
        }
        let had_metadata = template.get("metadata").is_some_and(|m| !m.is_null());
        let mut metadata = match template.get("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(malformed(format!(
                    "{template_path}.metadata must be a mapping, found {}",
                    type_name(other)
                )))
            }
        };
        // The namespace matters to the engine's messages and to nothing it
        // writes; it is taken off again unless the template had its own.
        let added_namespace = match namespace {
            Some(ns) if !metadata.contains_key("namespace") => {
                metadata.insert("namespace".to_string(), ns);
                true
            }
            _ => false,
        };
        let mut pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": Value::Object(metadata),
            "spec": spec,
        });
        let decision = (self.mutate)(&pod);
        let Some(patch) = self.decided(decision, &name, location) else {
            return Ok(());
        };
        apply(&mut pod, &patch, &name, location)?;
        let Value::Object(mut pod) = pod else {
            return Err(InjectError::Patch {
                object: name,
                location: location.clone(),
                message: "the patched pod is no longer a mapping".to_string(),
            });
        };
        let mut metadata = pod.remove("metadata").unwrap_or(Value::Null);
        if added_namespace {
            if let Some(m) = metadata.as_object_mut() {
                m.remove("namespace");
            }
        }
        let empty = metadata.as_object().is_some_and(Map::is_empty);
        if let Some(t) = template.as_object_mut() {
            if had_metadata || !empty {
                t.insert("metadata".to_string(), metadata);
            }
            match pod.remove("spec") {
                Some(spec) => t.insert("spec".to_string(), spec),
                None => t.remove("spec"),
            };
        }
        Ok(())
    }

    /// Records the decision's warnings or denial; returns the patch to apply.
    fn decided(
        &mut self,
        decision: Decision,
        name: &str,
        location: &Location,
    ) -> Option<json_patch::Patch> {
        match decision.effect {
            Effect::Unchanged => {
                self.push_warnings(name, decision.warnings);
                None
            }
            Effect::Patched(patch) => {
                self.push_warnings(name, decision.warnings);
                Some(patch.to_json_patch())
            }
            Effect::Denied(denial) => {
                self.denials.push(DeniedObject {
                    object: name.to_string(),
                    location: location.clone(),
                    code: denial.code,
                    message: denial.message(),
                });
                None
            }
        }
    }

    fn push_warnings(&mut self, name: &str, warnings: Vec<String>) {
        self.warnings
            .extend(warnings.into_iter().map(|w| format!("{name}: {w}")));
    }
}

/// `List` is the generic list (`kubectl get -o yaml`); a typed list (`PodList`)
/// names its items' kind, which its items then may omit. Returns `None` when
/// `kind` is not a list, `Some(None)` for `List`, `Some(Some(kind))` for a typed
/// list of something nestdock mutates.
fn list_item_kind<'k>(api_version: &str, kind: &'k str) -> Option<Option<&'k str>> {
    if kind == "List" {
        return Some(None);
    }
    let item = kind.strip_suffix("List")?;
    target(api_version, item).map(|_| Some(item))
}

fn apply(
    doc: &mut Value,
    patch: &json_patch::Patch,
    name: &str,
    location: &Location,
) -> Result<(), InjectError> {
    json_patch::patch(doc, patch).map_err(|e| InjectError::Patch {
        object: name.to_string(),
        location: location.clone(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Denial, ModeFrom};
    use serde_json::json;

    const INJECTED: &str = "nestdock.io/injected";

    /// A stand-in for the engine: injects a container into pods that ask for
    /// dind (by annotation) and records the annotation; denies `mtu: "9"`;
    /// leaves already-injected pods alone, like the real one.
    fn fake_engine(pod: &Value) -> Decision {
        let annotations = pod["metadata"]["annotations"].as_object();
        let get = |k: &str| annotations.and_then(|a| a.get(k)).and_then(Value::as_str);
        let unchanged = Decision {
            mode: Mode::None,
            from: ModeFrom::AlreadyInjected,
            effect: Effect::Unchanged,
            warnings: vec![],
        };
        assert_eq!(pod["apiVersion"], "v1");
        assert_eq!(pod["kind"], "Pod");
        if get(INJECTED).is_some() {
            return unchanged;
        }
        if get("nestdock.io/mtu") == Some("9") {
            return Decision {
                mode: Mode::Dind,
                from: ModeFrom::Unreadable,
                effect: Effect::Denied(Denial::one(
                    400,
                    "annotation nestdock.io/mtu: \"9\" is invalid".into(),
                )),
                warnings: vec![],
            };
        }
        let asked = get("nestdock.io/mode") == Some("dind")
            || pod["spec"]["containers"][0]["name"] == "dind-please";
        if !asked {
            return unchanged;
        }
        let mut patch = crate::patch::Patch::new();
        if pod["metadata"].get("annotations").is_none() {
            patch.add(&["metadata", "annotations"], &json!({}));
        }
        patch.add(&["metadata", "annotations", INJECTED], &"dind");
        patch.add(
            &["spec", "initContainers"],
            &json!([{"name": "nestdock-dind", "image": "docker:28-dind", "restartPolicy": "Always"}]),
        );
        Decision {
            mode: Mode::Dind,
            from: ModeFrom::Chosen(crate::policy::Source::Annotation),
            effect: Effect::Patched(patch),
            warnings: vec![format!(
                "namespace seen: {}",
                pod["metadata"]["namespace"].as_str().unwrap_or("-")
            )],
        }
    }

    fn run(input: &str) -> Result<InjectOutput, InjectError> {
        inject_with(input, &fake_engine)
    }

    fn docs(yaml: &str) -> Vec<Value> {
        read_documents(yaml)
            .unwrap()
            .into_iter()
            .map(|d| d.value)
            .collect()
    }

    const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: test
  annotations:
    nestdock.io/mode: dind
spec:
  containers:
  - name: app
    image: golang:1.24
";

    #[test]
    fn a_pod_is_mutated_and_a_second_run_changes_nothing() {
        let out = run(POD).unwrap();
        let d = docs(&out.yaml);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0]["metadata"]["annotations"][INJECTED], "dind");
        assert_eq!(d[0]["spec"]["initContainers"][0]["name"], "nestdock-dind");
        assert_eq!(out.warnings, vec!["Pod/test: namespace seen: -"]);
        let again = run(&out.yaml).unwrap();
        assert_eq!(again.yaml, out.yaml);
        assert!(again.warnings.is_empty());
    }

    #[test]
    fn keys_over_the_implicit_key_limit_read_back() {
        let key = "k".repeat(1500);
        let input = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  ? {key}\n  : v\n"
        );
        let out = run(&input).unwrap();
        let again = run(&out.yaml).unwrap();
        assert_eq!(out.yaml, again.yaml);
        assert!(out.yaml.contains(&format!("? {key}")), "{}", out.yaml);
    }

    #[test]
    fn key_order_of_the_input_is_kept() {
        let out = run(POD).unwrap();
        assert!(
            out.yaml
                .starts_with("apiVersion: v1\nkind: Pod\nmetadata:\n  name: test\n"),
            "{}",
            out.yaml
        );
        assert!(
            out.yaml
                .contains("  containers:\n  - name: app\n    image: golang:1.24\n"),
            "{}",
            out.yaml
        );
        // New keys: `name` first.
        assert!(out.yaml.contains("- name: nestdock-dind\n"), "{}", out.yaml);
    }

    #[test]
    fn many_documents_keep_their_order_and_skip_empty_ones() {
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  on: 'yes'\n";
        let input = format!("---\n{cm}---\n---\n{POD}---\n# only a comment\n");
        let out = run(&input).unwrap();
        let d = docs(&out.yaml);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0]["kind"], "ConfigMap");
        assert_eq!(d[1]["metadata"]["annotations"][INJECTED], "dind");
        assert_eq!(out.yaml.matches("---\n").count(), 1);
        // YAML 1.1 readers must still see a string.
        assert!(out.yaml.contains("  'on': 'yes'\n"), "{}", out.yaml);
    }

    #[test]
    fn other_objects_pass_through_unchanged() {
        let input = "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: batch.volcano.sh/v1alpha1
kind: Job
metadata:
  name: not-a-batch-job
spec:
  template:
    metadata:
      annotations:
        nestdock.io/mode: dind
    spec:
      containers: []
---
kind: Kustomization
resources: [a.yaml]
";
        let out = run(input).unwrap();
        assert_eq!(docs(&out.yaml), docs(input));
        assert!(out.warnings.is_empty());
    }

    #[test]
    fn a_list_is_mutated_in_place_and_stays_a_list() {
        let input = format!(
            "apiVersion: v1\nkind: List\nmetadata: {{}}\nitems:\n{}",
            POD.lines()
                .enumerate()
                .map(|(i, l)| if i == 0 {
                    format!("- {l}\n")
                } else {
                    format!("  {l}\n")
                })
                .collect::<String>()
        );
        let out = run(&input).unwrap();
        let d = docs(&out.yaml);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0]["kind"], "List");
        assert_eq!(
            d[0]["items"][0]["metadata"]["annotations"][INJECTED],
            "dind"
        );
    }

    #[test]
    fn typed_list_items_may_omit_kind() {
        let input = r#"{"apiVersion": "v1", "kind": "PodList", "items": [
            {"metadata": {"name": "p", "annotations": {"nestdock.io/mode": "dind"}},
             "spec": {"containers": [{"name": "a", "image": "busybox:1.37"}]}}]}"#;
        let out = run(input).unwrap();
        let d = docs(&out.yaml);
        assert_eq!(
            d[0]["items"][0]["metadata"]["annotations"][INJECTED],
            "dind"
        );
        assert!(d[0]["items"][0].get("kind").is_none());
    }

    #[test]
    fn json_input_is_read() {
        let input = r#"{
	"apiVersion": "apps/v1",
	"kind": "Deployment",
	"metadata": {"name": "web", "namespace": "ci"},
	"spec": {"template": {"metadata": {"annotations": {"nestdock.io/mode": "dind"}},
	         "spec": {"containers": [{"name": "a", "image": "busybox:1.37"}]}}}
}"#;
        let out = run(input).unwrap();
        let d = docs(&out.yaml);
        let template = &d[0]["spec"]["template"];
        assert_eq!(template["metadata"]["annotations"][INJECTED], "dind");
        assert_eq!(
            template["spec"]["initContainers"][0]["name"],
            "nestdock-dind"
        );
        // The workload's namespace reaches the engine, but is not written into the template.
        assert_eq!(out.warnings, vec!["Deployment/web: namespace seen: ci"]);
        assert!(template["metadata"].get("namespace").is_none());
        assert!(template.get("apiVersion").is_none());
    }

    #[test]
    fn a_cronjob_template_is_found() {
        let input = "apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: '0 3 * * *'
  jobTemplate:
    spec:
      template:
        metadata:
          annotations:
            nestdock.io/mode: dind
        spec:
          restartPolicy: Never
          containers:
          - name: build
            image: docker:28-cli
";
        let out = run(input).unwrap();
        let d = docs(&out.yaml);
        let t = &d[0]["spec"]["jobTemplate"]["spec"]["template"];
        assert_eq!(t["metadata"]["annotations"][INJECTED], "dind");
        assert_eq!(t["spec"]["initContainers"][0]["name"], "nestdock-dind");
        assert_eq!(d[0]["spec"]["schedule"], "0 3 * * *");
        assert_eq!(run(&out.yaml).unwrap().yaml, out.yaml);
    }

    #[test]
    fn a_template_without_metadata_gets_it_only_when_mutated() {
        let input = "apiVersion: batch/v1
kind: Job
metadata: {name: j, namespace: ci}
spec:
  template:
    spec:
      containers: [{name: a, image: 'busybox:1.37'}]
";
        let out = run(input).unwrap();
        assert_eq!(docs(&out.yaml), docs(input));
        let wants = input.replace("name: a,", "name: dind-please,");
        let d = docs(&run(&wants).unwrap().yaml);
        assert_eq!(
            d[0]["spec"]["template"]["metadata"],
            json!({"annotations": {INJECTED: "dind"}})
        );
    }

    #[test]
    fn a_workload_without_template_is_left_alone_with_a_warning() {
        let input =
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 3}\n";
        let out = run(input).unwrap();
        assert_eq!(docs(&out.yaml), docs(input));
        assert_eq!(
            out.warnings,
            vec!["Deployment/web: has no pod template at spec.template; left unchanged"]
        );
    }

    #[test]
    fn denials_name_every_object_and_write_nothing() {
        let bad = POD
            .replace("name: test", "name: bad")
            .replace("nestdock.io/mode: dind", "nestdock.io/mtu: \"9\"");
        let err = run(&format!("{POD}---\n{bad}")).err().expect("denied");
        let msg = err.to_string();
        assert_eq!(
            msg,
            "Pod/bad (document 2) denied: annotation nestdock.io/mtu: \"9\" is invalid"
        );
        let err = run(&format!("{bad}---\n{bad}")).err().expect("denied");
        assert!(err
            .to_string()
            .starts_with("2 objects denied:\n  Pod/bad (document 1): "));
    }

    #[test]
    fn invalid_yaml_names_the_document_and_the_line() {
        let err = run(&format!("{POD}---\nkind: Pod\nmetadata: [unclosed\n"))
            .err()
            .expect("error");
        let msg = err.to_string();
        assert!(
            msg.starts_with("document 2: cannot read YAML/JSON: "),
            "{msg}"
        );
        assert!(msg.contains("line 14"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        let err = run("a: 1\na: 2\n").err().expect("error");
        assert!(err.to_string().contains("duplicate"), "{err}");
    }

    #[test]
    fn a_document_that_is_not_a_mapping_is_an_error() {
        let err = run(&format!("{POD}---\njust a string\n"))
            .err()
            .expect("error");
        assert_eq!(
            err.to_string(),
            "document 2: expected a Kubernetes object (a mapping with apiVersion and kind), found a string"
        );
        let err = run("- a\n- b\n").err().expect("error");
        assert!(err.to_string().contains("found a list"), "{err}");
    }

    #[test]
    fn custom_tags_are_an_error() {
        let err = run("kind: Pod\nspec: !Foo bar\n").err().expect("error");
        assert!(err.to_string().contains("tag !Foo"), "{err}");
    }

    #[test]
    fn merge_keys_are_resolved() {
        let input = "apiVersion: v1
kind: ConfigMap
metadata:
  name: m
  labels: &l {a: b}
  annotations:
    <<: *l
    c: d
";
        let d = docs(&run(input).unwrap().yaml);
        assert_eq!(d[0]["metadata"]["annotations"], json!({"a": "b", "c": "d"}));
    }

    #[test]
    fn malformed_shapes_are_errors_not_panics() {
        let err = run("apiVersion: v1\nkind: List\nitems: 3\n")
            .err()
            .expect("error");
        assert_eq!(
            err.to_string(),
            "List/<unnamed> (document 1): items must be a list, found a number"
        );
        let err = run(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\nspec: {template: x}\n",
        )
        .err()
        .expect("error");
        assert_eq!(
            err.to_string(),
            "Deployment/w (document 1): spec.template must be a mapping, found a string"
        );
        let err = run("apiVersion: v1\nkind: List\nitems: [1]\n")
            .err()
            .expect("error");
        assert!(err.to_string().contains("items[0]"), "{err}");
    }

    #[test]
    fn empty_input_gives_empty_output_and_a_warning() {
        let out = run("").unwrap();
        assert_eq!(out.yaml, "");
        assert_eq!(out.warnings.len(), 1);
        let out = run("---\n# nothing\n").unwrap();
        assert_eq!(out.yaml, "");
    }
}
