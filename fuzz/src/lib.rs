//! What the fuzz targets and the seed writer share: the engine's contexts a
//! target picks from its first input byte, and the checks every answer must
//! pass.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use nestdock::config::Config;
use nestdock::engine::{self, Context, NamespacePolicy, Effect};
use nestdock::mode::Mode;
use serde_json::Value;

/// Configurations the engine target runs under: the default, one that allows
/// dood without namespace policy and sets most knobs, and one with
/// `sidecar: container` and an ephemeral storage volume.
pub fn configs() -> &'static [Config] {
    static CONFIGS: OnceLock<Vec<Config>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let busy = "\
defaultMode: dind
socketGroup: 2000
dind:
  allowedImages: [\"docker:*\", \"registry.example.com/dind\"]
  resources:
    requests: {cpu: 100m, memory: 128Mi}
    limits: {cpu: \"2\", memory: 4Gi}
  storage:
    emptyDir: {sizeLimit: 20Gi}
  mtu: \"1400\"
  bip: 172.30.0.1/16
  defaultAddressPools: [{base: 172.31.0.0/16, size: 24}]
  registryMirrors: [\"https://mirror.example.com\"]
  insecureRegistries: [\"registry.local:5000\"]
  extraArgs: [\"--debug\"]
  env: [{name: HTTPS_PROXY, value: \"http://proxy:3128\"}]
dood:
  hostSocket: /run/docker.sock
  nodeSelector: {docker: \"true\"}
  socketGroup: 998
  allowWithoutNamespacePolicy: true
";
        let container = "\
sidecar: container
socketDir: /run/docker
mirrorMounts: false
dind:
  storage:
    ephemeral: {storageClassName: fast, size: 50Gi}
";
        let mut out = vec![Config::default()];
        for yaml in [busy, container] {
            match Config::from_yaml(yaml) {
                Ok(config) => out.push(config),
                Err(e) => panic!("fuzz config does not load: {e}"),
            }
        }
        out
    })
}

/// Namespace label sets the engine target runs under.
pub fn label_sets() -> &'static [BTreeMap<String, String>] {
    static LABELS: OnceLock<Vec<BTreeMap<String, String>>> = OnceLock::new();
    LABELS.get_or_init(|| {
        let set = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        vec![
            set(&[]),
            set(&[("nestdock.io/mode", "dind")]),
            set(&[
                ("nestdock.io/mode", "dood"),
                ("nestdock.io/enforce", "true"),
            ]),
            set(&[("nestdock.io/allow-dood", "true")]),
            set(&[("pod-security.kubernetes.io/enforce", "baseline")]),
            set(&[("nestdock.io/mode", "dnid")]),
        ]
    })
}

/// How many contexts [`context`] tells apart.
pub const CONTEXTS: u8 = 3 * 8 * 2;

/// The engine context chosen by `selector` (any byte): a configuration, a
/// namespace policy (off, offline with a mode, or one of the label sets), and
/// native sidecars or not.
pub fn context(selector: u8) -> Context<'static> {
    let selector = selector % CONTEXTS;
    let configs = configs();
    let config = &configs[usize::from(selector % 3)];
    let policy = (selector / 3) % 8;
    let labels = label_sets();
    let namespace = match policy {
        0 => NamespacePolicy::Off,
        1 => NamespacePolicy::Offline {
            mode: Some(Mode::Dind),
        },
        n => NamespacePolicy::Labels {
            namespace: "team-a",
            labels: &labels[usize::from(n - 2) % labels.len()],
        },
    };
    Context {
        config,
        namespace,
        native_sidecars: selector / 24 == 0,
    }
}

/// The engine's promises on any pod: a patch applies to the pod exactly as
/// given (RFC 6902, no implicit parents, as the API server applies it), and
/// the patched pod gets no second patch.
pub fn check_engine(pod: &Value, ctx: &Context<'_>) {
    let decision = engine::mutate(pod, ctx);
    // The webhook reads the pod from its JSON text: it must decide alike
    // (a denial's message may differ in where a parse error points).
    let text = engine::mutate_json(&pod.to_string(), ctx);
    let same = match (&text.effect, &decision.effect) {
        (Effect::Denied(a), Effect::Denied(b)) => a.code == b.code,
        (a, b) => a == b && text.warnings == decision.warnings,
    };
    assert!(
        same && text.mode == decision.mode,
        "the text path decided differently for {pod}:\n{text:?}\n{decision:?}"
    );
    let Effect::Patched(patch) = &decision.effect else {
        return;
    };
    let mut patched = pod.clone();
    if let Err(e) = patch.apply(&mut patched) {
        panic!(
            "the patch does not apply: {e}\npatch: {}\npod: {pod}",
            serde_json::to_string(patch).unwrap_or_default()
        );
    }
    let again = engine::mutate(&patched, ctx);
    match &again.effect {
        Effect::Unchanged => {}
        Effect::Patched(p) if p.is_empty() => {}
        other => panic!("a second pass is not unchanged: {other:?}\npatched pod: {patched}"),
    }
}
