//! `admission::review` on arbitrary bytes with the default configuration, as
//! the server calls it: it must never panic; an answer is a v1
//! AdmissionReview that echoes the uid, and its patch (base64 JSON Patch)
//! applies to the object that was sent.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use nestdock::config::Config;
use nestdock::engine::{Context, NamespacePolicy};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let config = Config::default();
    let ctx = Context {
        config: &config,
        namespace: NamespacePolicy::Off,
        native_sidecars: true,
    };
    let Ok(reviewed) = nestdock::admission::review(data, &ctx) else {
        return;
    };
    let answer: Value = serde_json::from_slice(&reviewed.body).expect("the answer is JSON");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    // nestdock reads only the fields it needs and skips the rest unchecked,
    // as Go's encoding/json reads what the API server sends: a lone
    // surrogate escape (`\ude3e`) in a skipped key is no reason to refuse a
    // review, but serde_json's Value refuses the whole body. Then there is
    // nothing to compare the answer with.
    let Ok(sent) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    assert_eq!(answer["response"]["uid"], sent["request"]["uid"]);
    let response = &answer["response"];
    let allowed = response["allowed"].as_bool().expect("allowed is a boolean");
    if !allowed {
        let code = response["status"]["code"]
            .as_u64()
            .expect("a denial has a code");
        assert!(code >= 400, "denial code {code}");
    }
    if let Some(patch) = response["patch"].as_str() {
        assert_eq!(response["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("the patch is base64");
        let patch: json_patch::Patch =
            serde_json::from_slice(&patch).expect("the patch is a JSON Patch");
        let mut object = sent["request"]["object"].clone();
        if let Err(e) = json_patch::patch(&mut object, &patch) {
            panic!("the patch does not apply to request.object: {e}");
        }
    }
    for warning in response["warnings"].as_array().into_iter().flatten() {
        let warning = warning.as_str().expect("a warning is a string");
        assert!(warning.chars().count() < 120, "warning too long: {warning}");
    }
});
