//! An independent Kubernetes schema check for test output: `scripts/validate-k8s`
//! (kubernetes-validate, strict, against the Kubernetes OpenAPI schemas).
//!
//! Why not only our own assertions: a test written by the same hands as the code
//! can share its misreading of the Pod schema (a field name, a type, a field in
//! the wrong object). The validator shares nothing with nestdock, and strict mode
//! rejects unknown fields as `kubectl apply` does.
//!
//! The validator is installed from PyPI by `scripts/setup-validator.sh` (once per
//! test binary, then a no-op). When it cannot be installed the calling test
//! fails with a message that says so: the check is part of the suite, never
//! skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Installs the validator once per test binary; every caller sees the result.
fn setup() {
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    let result = SETUP.get_or_init(|| {
        let script = repo().join("scripts/setup-validator.sh");
        match Command::new("bash").arg(&script).output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "{} failed ({}): {}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) => Err(format!("cannot run {}: {e}", script.display())),
        }
    });
    if let Err(e) = result {
        panic!(
            "the Kubernetes schema validator is not available, so the schema check cannot run \
             (it needs PyPI to install kubernetes-validate; this check is required, not skipped): {e}"
        );
    }
}

/// Validates files of manifests (YAML or JSON, any number of documents, `List`s
/// expanded) in strict mode; panics with the validator's report on any error.
pub fn validate_k8s_files(files: &[PathBuf]) {
    setup();
    let script = repo().join("scripts/validate-k8s");
    let out = Command::new("bash")
        .arg(&script)
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    if !out.status.success() {
        let mut shown = String::new();
        for f in files {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            shown.push_str(&format!("--- {}\n{text}\n", f.display()));
        }
        panic!(
            "Kubernetes schema validation failed ({}):\n{}{}\n{shown}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}

/// Validates Kubernetes objects (each written to its own temporary file as
/// JSON, which is YAML) in strict mode; panics with the validator's report on
/// any error.
pub fn validate_k8s(docs: &[Value]) {
    assert!(!docs.is_empty(), "validate_k8s: no object to validate");
    let dir = tempfile::tempdir().expect("temporary directory");
    let files: Vec<PathBuf> = docs
        .iter()
        .enumerate()
        .map(|(i, doc)| {
            let path = dir.path().join(format!("object-{i}.json"));
            let text = serde_json::to_string_pretty(doc).expect("a JSON value serializes");
            std::fs::write(&path, text).expect("write temporary manifest");
            path
        })
        .collect();
    validate_k8s_files(&files);
}
