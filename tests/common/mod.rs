//! Shared test helpers: applying patches the way the API server does, and the
//! invariants of docs/behaviour.md every patched pod must satisfy.
#![allow(dead_code)]

pub mod daemon;
pub mod docs;
pub mod harness;
pub mod invariants;
pub mod kube;
pub mod node;
pub mod schema;

use serde_json::Value;

/// Path of the real `nestdock` binary built for these tests.
pub fn bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_nestdock"))
}

/// Applies a JSON Patch (as JSON) to `original` with RFC 6902 semantics and no
/// implicit parents (what evanphx/json-patch does in the API server). Panics
/// with the failing operation when the patch does not apply.
pub fn apply_patch(original: &Value, patch: &Value) -> Value {
    let p: json_patch::Patch = serde_json::from_value(patch.clone())
        .unwrap_or_else(|e| panic!("patch is not a JSON Patch: {e}\n{patch:#}"));
    let mut doc = original.clone();
    json_patch::patch(&mut doc, &p).unwrap_or_else(|e| {
        panic!("patch does not apply: {e}\npatch: {patch:#}\nto: {original:#}")
    });
    doc
}

/// Removes the entries of `dir` named `prefix...` that were last modified
/// more than `older_than` ago: what earlier (killed) test runs left behind,
/// without touching a run going on beside this one.
pub fn remove_stale(dir: &std::path::Path, prefix: &str, older_than: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > older_than);
        if stale && entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
