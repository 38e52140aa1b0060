//! The mutation engine on arbitrary JSON: the first byte picks the context
//! (configuration, namespace policy, native sidecars), the rest is the pod.
//! Any patch must apply to the pod as given, and a second pass must change
//! nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let Ok(pod) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let ctx = nestdock_fuzz::context(selector);
    nestdock_fuzz::check_engine(&pod, &ctx);
});
