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
//! Writing: our own small YAML emitter (module `yaml` below) rather than `serde_norway`'s,
//! for two reasons that matter to people who commit the output. First, the API
//! server and `kubectl` read YAML 1.1, where a plain `on`, `no` or `y` is a
//! boolean; `serde_norway` (YAML 1.2) writes the string `"no"` unquoted, and an
//! env value or annotation would come back as a bool that the API server refuses.
//! Second, key order: documents keep the order they were written in
//! (serde_json's `preserve_order` keeps maps in insertion order, and the
//! patch adds its keys after the input's), so a diff of the output against
//! the input shows what nestdock added and little else. Comments
//! are not kept.

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
        yaml::emit_document(&mut out, value);
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
        let value = yaml_to_json(&yaml).map_err(|message| InjectError::Read {
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

/// Converts one parsed YAML document to the JSON data model the API server
/// works in: scalar keys become strings (as `sigs.k8s.io/yaml` does), and what
/// JSON cannot hold (custom tags, `.inf`, complex keys) is an error rather than
/// a silent change.
fn yaml_to_json(v: &serde_norway::Value) -> Result<Value, String> {
    use serde_norway::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match serde_json::Number::from_f64(f) {
                    Some(n) => Value::Number(n),
                    None => return Err(format!("the number {n} cannot be represented in JSON")),
                }
            }
        }
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => {
            Value::Array(items.iter().map(yaml_to_json).collect::<Result<_, _>>()?)
        }
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = yaml_key(k).ok_or_else(|| {
                    "a mapping key must be a string or another scalar".to_string()
                })?;
                out.insert(key, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => {
            return Err(format!(
                "the YAML tag {} is not supported (Kubernetes manifests use plain YAML)",
                t.tag
            ))
        }
    })
}

/// The JSON key for a YAML mapping key, `None` for keys JSON cannot have.
fn yaml_key(k: &serde_norway::Value) -> Option<String> {
    use serde_norway::Value as Y;
    match k {
        Y::String(s) => Some(s.clone()),
        Y::Number(n) => Some(n.to_string()),
        Y::Bool(b) => Some(b.to_string()),
        Y::Null => Some("null".to_string()),
        _ => None,
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

/// A YAML emitter for the JSON data model, written for `kubectl` and the API
/// server as readers (YAML 1.1), and for people reading diffs.
mod yaml {
    use serde_json::{Map, Value};

    /// Appends one document (a mapping) ending in a newline. Keys come in
    /// the map's order: the input's, then what the patch added.
    pub fn emit_document(out: &mut String, value: &Value) {
        match value {
            Value::Object(m) if !m.is_empty() => emit_mapping(out, m, 0, false),
            other => {
                emit_inline(out, other);
                out.push('\n');
            }
        }
    }

    fn indent(out: &mut String, n: usize) {
        out.extend(std::iter::repeat_n(' ', n));
    }

    /// Written keys longer than this use the explicit form (YAML's limit for an
    /// implicit key is 1024 characters; no Kubernetes key comes close).
    const EXPLICIT_KEY_OVER: usize = 1000;

    /// A non-empty mapping whose entries start at column `n`; with
    /// `first_inline` the first entry follows a `- ` already written.
    fn emit_mapping(out: &mut String, m: &Map<String, Value>, n: usize, first_inline: bool) {
        for (i, (k, v)) in m.iter().enumerate() {
            if i > 0 || !first_inline {
                indent(out, n);
            }
            let start = out.len();
            emit_string(out, k);
            if out.len() - start > EXPLICIT_KEY_OVER {
                // YAML allows at most 1024 characters in an implicit key;
                // longer ones are written in the explicit `? key` form.
                let key = out.split_off(start);
                out.push_str("? ");
                out.push_str(&key);
                out.push('\n');
                indent(out, n);
            }
            out.push(':');
            emit_value(out, v, n);
        }
    }

    /// A non-empty sequence whose dashes sit at column `n` (Kubernetes style:
    /// under a key, not indented further).
    fn emit_sequence(out: &mut String, s: &[Value], n: usize, first_inline: bool) {
        for (i, item) in s.iter().enumerate() {
            if i > 0 || !first_inline {
                indent(out, n);
            }
            out.push('-');
            match item {
                Value::Object(m) if !m.is_empty() => {
                    out.push(' ');
                    emit_mapping(out, m, n + 2, true);
                }
                Value::Array(a) if !a.is_empty() => {
                    out.push(' ');
                    emit_sequence(out, a, n + 2, true);
                }
                _ => emit_value(out, item, n),
            }
        }
    }

    /// The value after `key:` (column `n` of the key) or after `-`; writes the
    /// separating space or newline itself, and ends with a newline.
    fn emit_value(out: &mut String, v: &Value, n: usize) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                out.push('\n');
                emit_mapping(out, m, n + 2, false);
            }
            Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                emit_sequence(out, a, n, false);
            }
            Value::String(s) if literal_ok(s) => {
                out.push(' ');
                emit_literal(out, s, n + 2);
            }
            other => {
                out.push(' ');
                emit_inline(out, other);
                out.push('\n');
            }
        }
    }

    /// Scalars and empty collections, on one line.
    fn emit_inline(out: &mut String, v: &Value) {
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(num) => out.push_str(&number(num)),
            Value::String(s) => emit_string(out, s),
            Value::Array(_) => out.push_str("[]"),
            Value::Object(_) => out.push_str("{}"),
        }
    }

    /// Numbers as both YAML 1.1 and 1.2 read them back: a float needs a `.`
    /// and a signed exponent in YAML 1.1 (`1e300` would be a string there).
    fn number(num: &serde_json::Number) -> String {
        let s = num.to_string();
        if !num.is_f64() {
            return s;
        }
        match s.split_once(['e', 'E']) {
            Some((mantissa, exp)) => {
                let mantissa = if mantissa.contains('.') {
                    mantissa.to_string()
                } else {
                    format!("{mantissa}.0")
                };
                let exp = if exp.starts_with(['-', '+']) {
                    exp.to_string()
                } else {
                    format!("+{exp}")
                };
                format!("{mantissa}e{exp}")
            }
            None if s.contains('.') => s,
            None => format!("{s}.0"),
        }
    }

    /// A one-line string: plain when no YAML reader could take it for
    /// anything else, else single-quoted, else double-quoted with escapes.
    fn emit_string(out: &mut String, s: &str) {
        if plain_ok(s) {
            out.push_str(s);
        } else if single_ok(s) {
            out.push('\'');
            out.push_str(&s.replace('\'', "''"));
            out.push('\'');
        } else {
            emit_double(out, s);
        }
    }

    /// Characters that YAML treats as line breaks or that it cannot carry
    /// unescaped.
    fn special(c: char) -> bool {
        matches!(
            c,
            '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
        ) || (c.is_control() && c != '\n')
            || c == '\t'
    }

    /// Words that YAML 1.1 (kubectl, the API server) or 1.2 read as null,
    /// booleans, infinities or merge keys.
    const RESERVED: &[&str] = &[
        "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
        "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
        ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan",
        ".NaN", ".NAN", "<<", "=",
    ];

    /// Could a YAML 1.1 or 1.2 reader take `s` for a number or a timestamp
    /// (`1e3`, `0x1F`, `0755`, `1_000`, `1:30`, `2024-01-01`)? Errs on the side
    /// of quoting: `1Gi` and `500m` stay plain, `1d` gets quoted.
    fn numeric_like(s: &str) -> bool {
        let body = s.strip_prefix(['+', '-']).unwrap_or(s);
        let starts = body.starts_with(|c: char| c.is_ascii_digit() || c == '.');
        starts
            && body
                .chars()
                .all(|c| c.is_ascii_hexdigit() || "_.:+-xXoOtTzZ ".contains(c))
    }

    fn plain_ok(s: &str) -> bool {
        let Some(first) = s.chars().next() else {
            return false;
        };
        if RESERVED.contains(&s) || numeric_like(s) {
            return false;
        }
        if s.starts_with("---") || s.starts_with("...") {
            return false;
        }
        if "?:,[]{}#&*!|>'\"%@` ".contains(first) {
            return false;
        }
        if first == '-' {
            // `--flag` and `-x` are fine; `-` alone or `- x` start a sequence.
            match s.chars().nth(1) {
                Some(c) if c != ' ' => {}
                _ => return false,
            }
        }
        !(s.ends_with(' ')
            || s.ends_with(':')
            || s.contains(": ")
            || s.contains(" #")
            || s.contains('\n')
            || s.chars().any(special))
    }

    fn single_ok(s: &str) -> bool {
        !s.contains('\n') && !s.chars().any(special)
    }

    fn emit_double(out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\u{85}' => out.push_str("\\N"),
                '\u{2028}' => out.push_str("\\L"),
                '\u{2029}' => out.push_str("\\P"),
                c if special(c) => {
                    let code = c as u32;
                    if code <= 0xff {
                        out.push_str(&format!("\\x{code:02x}"));
                    } else {
                        out.push_str(&format!("\\u{code:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }

    /// A multi-line string can be a literal block (`|`) when it reads back the
    /// same: no trailing spaces on a line (editors strip them), no tabs or
    /// control characters, and a first line that does not start with a space
    /// (the block's indentation is taken from it).
    fn literal_ok(s: &str) -> bool {
        if !s.contains('\n') || s.chars().any(special) {
            return false;
        }
        let body = s.trim_end_matches('\n');
        if body.is_empty() || body.starts_with('\n') {
            return false;
        }
        if body.starts_with(' ') {
            return false;
        }
        !s.contains(" \n") && !s.ends_with(' ')
    }

    /// Writes `|`, `|-` or `|+` and the lines at column `n`.
    fn emit_literal(out: &mut String, s: &str, n: usize) {
        let body = s.trim_end_matches('\n');
        let trailing = s.len() - body.len();
        out.push_str(match trailing {
            0 => "|-",
            1 => "|",
            _ => "|+",
        });
        out.push('\n');
        for line in body.split('\n') {
            if !line.is_empty() {
                indent(out, n);
                out.push_str(line);
            }
            out.push('\n');
        }
        for _ in 1..trailing {
            out.push('\n');
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use proptest::prelude::*;

        fn render(v: &Value) -> String {
            let mut s = String::new();
            emit_document(&mut s, v);
            s
        }

        fn reread(text: &str) -> Value {
            let y: serde_norway::Value = serde_norway::from_str(text)
                .unwrap_or_else(|e| panic!("emitted YAML does not parse: {e}\n{text}"));
            super::super::yaml_to_json(&y).unwrap()
        }

        #[test]
        fn yaml_1_1_words_and_numbers_are_quoted() {
            for s in [
                "yes",
                "no",
                "on",
                "off",
                "y",
                "N",
                "NO",
                "Off",
                "true",
                "null",
                "~",
                "1_000",
                "2024-01-01",
                "1:30",
                "0755",
                "0x1F",
                "1e3",
                ".5",
                "=",
                "<<",
                ".inf",
                "-1",
                "",
                "- x",
                "-",
                "a: b",
                "a #b",
                "end:",
                " lead",
                "trail ",
                "---",
                "#c",
                "*a",
                "&a",
                "!t",
                "%x",
                "@x",
                "`x",
                "'q'",
                "\"q\"",
                "[x]",
                "{x}",
                "|",
                ">",
                "?",
                "1.0",
            ] {
                let v = serde_json::json!({ "k": s });
                let text = render(&v);
                assert_ne!(text, format!("k: {s}\n"), "{s:?} must be quoted");
                assert_eq!(reread(&text), v, "{text}");
            }
        }

        #[test]
        fn common_kubernetes_values_stay_plain() {
            for s in [
                "docker:28-dind",
                "1Gi",
                "500m",
                "--group=2375",
                "unix:///var/run/docker.sock",
                "nestdock.io/mode",
                "/var/run",
                "registry.example.com:5000/team/app:1.2.3",
                "dind-rootless",
                "10.0.0.0/8",
            ] {
                let v = serde_json::json!({ "k": s });
                assert_eq!(render(&v), format!("k: {s}\n"));
            }
        }

        #[test]
        fn multi_line_strings_are_literal_blocks() {
            let v = serde_json::json!({"spec": {"args": ["-c", "set -e\ndocker build .\n\ndocker push x\n"], "s": "a\nb", "k": "a\n\n\n"}});
            let text = render(&v);
            assert!(
                text.contains("- |\n    set -e\n    docker build .\n\n    docker push x\n"),
                "{text}"
            );
            assert!(text.contains("s: |-\n    a\n    b\n"), "{text}");
            assert_eq!(reread(&text), v);
        }

        #[test]
        fn floats_read_back_as_floats_in_yaml_1_1() {
            assert_eq!(
                number(&serde_json::Number::from_f64(1e300).unwrap()),
                "1.0e+300"
            );
            assert_eq!(
                number(&serde_json::Number::from_f64(1.5e-7).unwrap()),
                "1.5e-7"
            );
            assert_eq!(number(&serde_json::Number::from_f64(0.5).unwrap()), "0.5");
            assert_eq!(number(&serde_json::Number::from(42)), "42");
        }

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                (-1e6f64..1e6).prop_map(Value::from),
                "\\PC{0,12}".prop_map(Value::String),
                "[ a-z0-9:#'\"\\-\n\t.]{0,12}".prop_map(Value::String),
                prop::sample::select(RESERVED).prop_map(|s| Value::String(s.to_string())),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map("[a-z0-9 :#.-]{0,8}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn emitted_yaml_reads_back_unchanged(
                m in prop::collection::btree_map("[a-zA-Z0-9 :#.-]{0,8}", json_value(), 0..5)
            ) {
                let v = Value::Object(m.into_iter().collect());
                let text = render(&v);
                prop_assert_eq!(reread(&text), v, "{}", text);
            }
        }
    }
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
