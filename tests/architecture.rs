//! The module map of docs/architecture.md, checked: every module under
//! `src/` says what it is for (a `//!` comment), and the modules' uses of
//! each other form no cycle, so that each can be read (and tested) knowing
//! only the ones below it. A new edge that closes a cycle fails here, naming
//! the cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The source files of `src/`, each with its module's path: `plan` for
/// src/plan.rs, `server` for src/server/mod.rs, `server::review` for
/// src/server/review.rs. Test-only files (`tests.rs`) are left out.
fn modules() -> BTreeMap<String, PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).expect("a module directory") {
                let inner = inner.expect("a directory entry").path();
                if inner.extension().and_then(|e| e.to_str()) != Some("rs") {
                    continue;
                }
                let stem = inner.file_stem().unwrap().to_string_lossy().into_owned();
                match stem.as_str() {
                    "mod" => modules.insert(name.clone(), inner),
                    "tests" => None,
                    _ => modules.insert(format!("{name}::{stem}"), inner),
                };
            }
        } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
            modules.insert(name, path);
        }
    }
    modules
}

/// The module names that follow `prefix` in a line of code: one, or several
/// for a group (`crate::{a, b::c}`).
fn names_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        // `xsuper::` or `my_crate::` is not the keyword.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        match rest.strip_prefix('{') {
            Some(group) => found.extend(
                group
                    .split([',', '}'])
                    .map(|part| part.trim().split("::").next().unwrap_or("")),
            ),
            None => found.push(
                rest.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .next()
                    .unwrap_or(""),
            ),
        }
    }
    found
        .into_iter()
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect()
}

/// Whether `code` has a path starting with `segment::` (not `xsegment::`,
/// not `a::segment::`).
fn starts_path(code: &str, segment: &str) -> bool {
    let needle = format!("{segment}::");
    code.match_indices(&needle).any(|(at, _)| {
        !code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    })
}

/// `module -> modules it uses`, read from the code (comments skipped):
/// `crate::x` names the top-level module `x`; inside a module directory,
/// `super::x` names a sibling, and its `mod.rs` naming `x::` a child.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut graph = BTreeMap::new();
    for (name, path) in &modules {
        let text = std::fs::read_to_string(path).expect("a source file");
        let (parent, is_dir_root) = match name.split_once("::") {
            Some((parent, _)) => (Some(parent.to_string()), false),
            None => (None, path.ends_with("mod.rs")),
        };
        let mut uses = BTreeSet::new();
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for n in names_after(code, "crate::") {
                uses.insert(n.to_string());
            }
            if let Some(parent) = &parent {
                for n in names_after(code, "super::") {
                    let sibling = format!("{parent}::{n}");
                    uses.insert(if modules.contains_key(&sibling) {
                        sibling
                    } else {
                        parent.clone()
                    });
                }
            }
            if is_dir_root {
                for child in modules
                    .keys()
                    .filter_map(|m| m.strip_prefix(&format!("{name}::")))
                {
                    if starts_path(code, child) {
                        uses.insert(format!("{name}::{child}"));
                    }
                }
            }
        }
        uses.remove(name);
        graph.insert(name.clone(), uses);
    }
    graph
}

#[test]
fn modules_use_each_other_without_cycles() {
    let graph = module_graph();
    // Depth-first search with colours; a grey node met again closes a cycle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if !graph.contains_key(next) {
                continue; // not a module of src/ (a re-export, a macro)
            }
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(next, graph, state, stack) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(cycle) = visit(node, &graph, &mut state, &mut Vec::new()) {
                panic!(
                    "modules use each other in a cycle: {} (docs/architecture.md says which way each edge goes)",
                    cycle.join(" -> ")
                );
            }
        }
    }
    // The engine's core depends on nothing that does I/O.
    for core in [
        "plan",
        "render",
        "policy",
        "denial",
        "annotations",
        "pod",
        "patch",
    ] {
        for io in ["server", "namespaces", "tls", "metrics", "cli", "admission"] {
            assert!(
                !graph[core].contains(io),
                "{core} (pure) uses {io} (I/O): {:?}",
                graph[core]
            );
        }
    }
}

#[test]
fn every_module_says_what_it_is_for() {
    for (name, path) in modules() {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.trim_start().starts_with("//!"),
            "{} ({name}) has no module comment (//!) saying what it owns",
            path.display()
        );
    }
}

/// `nestdock guard` (src/guard/) stands apart from the webhook: its files
/// use each other (`super::`), `validate` (how a value is quoted) and
/// `budget` (a memory budget for bodies read whole), and nothing else of the
/// crate, so the webhook's modules can change without
/// touching the proxy. Each file says what it owns.
#[test]
fn the_guard_stands_apart() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/guard");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("src/guard/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.trim_start().starts_with("//!"),
            "{} has no module comment (//!) saying what it owns",
            path.display()
        );
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                assert!(
                    ["validate::", "budget::", "guard::"]
                        .iter()
                        .any(|m| rest.starts_with(m)),
                    "{} uses crate::{} (the guard may use only itself, validate and budget)",
                    path.display(),
                    rest.split(|c: char| !c.is_alphanumeric() && c != '_' && c != ':')
                        .next()
                        .unwrap_or("")
                );
            }
        }
    }
    assert!(files >= 5, "src/guard/ has {files} files");
}
