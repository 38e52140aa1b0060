//! SPEC section 1 invariants (under construction: filled in with the engine).
use nestdock::config::Config;
use serde_json::Value;

/// Asserts every SPEC section 1 invariant on a pod that nestdock patched.
pub fn check(pod: &Value, config: &Config) {
    let _ = (pod, config);
}
