//! `inject::inject` (the offline command's manifest reader and writer) on
//! arbitrary text. It must not panic; the input's length picks the `--mode`.
//! When it succeeds, its output is accepted again and a second pass changes
//! no object (the README's promise for GitOps pipelines). The comparison is
//! of the objects, not the text: the writer may order the keys of a mapping
//! it does not know differently on the second pass (found by this target;
//! `regressions/inject/` keeps the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nestdock::config::Config;
use nestdock::inject::{inject, InjectOptions};
use nestdock::mode::Mode;
use serde::Deserialize as _;
use serde_json::Value;

/// The documents of a YAML stream; inject's own output must always read back.
fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|doc| match Value::deserialize(doc) {
            Ok(value) => value,
            Err(e) => panic!("inject wrote YAML that does not read back: {e}\n{yaml}"),
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = Config::default();
    let mode = match data.len() % 4 {
        0 => None,
        1 => Some(Mode::Dind),
        2 => Some(Mode::DindRootless),
        _ => Some(Mode::None),
    };
    let opts = InjectOptions {
        mode,
        config: &config,
    };
    let Ok(first) = inject(text, &opts) else {
        return;
    };
    let second = match inject(&first.yaml, &opts) {
        Ok(second) => second,
        Err(e) => panic!(
            "inject refuses its own output: {e}\noutput:\n{}",
            first.yaml
        ),
    };
    let first_docs = documents(&first.yaml);
    let second_docs = documents(&second.yaml);
    assert!(
        first_docs == second_docs,
        "a second inject changed the objects:\nfirst:\n{}\nsecond:\n{}",
        first.yaml,
        second.yaml
    );
});
