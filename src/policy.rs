//! Which mode applies to a pod, and whether namespace policy allows it
//! (docs/behaviour.md, *Namespace policy*). Pure: the labels come from the caller.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::Config;
use crate::denial::Denial;
use crate::mode::Mode;

/// What the engine knows about the pod's namespace.
#[derive(Debug, Clone, Copy)]
pub enum NamespacePolicy<'a> {
    /// Namespace policy is off (`--kube=false`): annotations and config only,
    /// and dood only when `dood.allowWithoutNamespacePolicy` is set.
    Off,
    /// Offline `inject`: `--mode` acts like a namespace label and no gate applies.
    Offline { mode: Option<Mode> },
    /// The labels of the pod's namespace, from the namespace cache.
    Labels {
        namespace: &'a str,
        labels: &'a BTreeMap<String, String>,
    },
}

pub const LABEL_MODE: &str = "nestdock.io/mode";
pub const LABEL_ENFORCE: &str = "nestdock.io/enforce";
pub const LABEL_ALLOW_DOOD: &str = "nestdock.io/allow-dood";
pub const LABEL_PSA_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// Where the mode came from: what `explain` tells a user to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The pod's `nestdock.io/mode` annotation.
    Annotation,
    /// The namespace's `nestdock.io/mode` label.
    NamespaceLabel,
    /// `nestdock inject --mode`.
    InjectFlag,
    /// The config file's `defaultMode`.
    ConfigDefault,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Annotation => "the pod annotation nestdock.io/mode",
            Source::NamespaceLabel => "the namespace label nestdock.io/mode",
            Source::InjectFlag => "the --mode flag",
            Source::ConfigDefault => "the config file's defaultMode",
        })
    }
}

/// The mode that applies and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeChoice {
    pub mode: Mode,
    pub source: Source,
}

/// The mode that would apply before any gate, and where it comes from:
/// the annotation, else the namespace label (when valid), else the inject
/// flag, else the config default. What `explain` reports even for a denial.
pub fn choose(
    annotation: Option<Mode>,
    namespace: NamespacePolicy<'_>,
    config: &Config,
) -> ModeChoice {
    let label = match namespace {
        NamespacePolicy::Labels { labels, .. } => labels
            .get(LABEL_MODE)
            .and_then(|v| v.parse::<Mode>().ok())
            .map(|m| (m, Source::NamespaceLabel)),
        NamespacePolicy::Offline { mode } => mode.map(|m| (m, Source::InjectFlag)),
        NamespacePolicy::Off => None,
    };
    let (mode, source) = match (annotation, label) {
        (Some(m), _) => (m, Source::Annotation),
        (None, Some(found)) => found,
        (None, None) => (config.default_mode, Source::ConfigDefault),
    };
    ModeChoice { mode, source }
}

fn forbidden(reasons: Vec<String>) -> Denial {
    Denial::new(403, reasons)
}

/// Resolves the pod's mode and applies the namespace rules. A denial names
/// every rule that applies, one sentence each.
pub fn resolve(
    annotation: Option<Mode>,
    policy: NamespacePolicy<'_>,
    config: &Config,
) -> Result<ModeChoice, Denial> {
    match policy {
        NamespacePolicy::Offline { .. } => Ok(choose(annotation, policy, config)),
        NamespacePolicy::Off => {
            let choice = choose(annotation, policy, config);
            if choice.mode == Mode::Dood && !config.dood.allow_without_namespace_policy {
                return Err(forbidden(vec![format!(
                    "mode dood (from {}) is denied: namespace policy is off, and dood mounts the node's \
                     docker socket, which is root on that node; set dood.allowWithoutNamespacePolicy: true \
                     in the config to allow it.",
                    choice.source
                )]));
            }
            Ok(choice)
        }
        NamespacePolicy::Labels { namespace, labels } => {
            let label = |k: &str| labels.get(k).map(String::as_str);
            let mut bad_labels = Vec::new();
            let ns_mode = match label(LABEL_MODE) {
                None => None,
                Some(v) => match v.parse::<Mode>() {
                    Ok(m) => Some(m),
                    Err(_) => {
                        bad_labels.push(format!(
                            "namespace {namespace} has an invalid label {LABEL_MODE}={v:?}: accepted are {}.",
                            Mode::ACCEPTED
                        ));
                        None
                    }
                },
            };
            let flag = |k: &str, bad: &mut Vec<String>| match label(k) {
                None | Some("false") => false,
                Some("true") => true,
                Some(v) => {
                    bad.push(format!(
                        "namespace {namespace} has an invalid label {k}={v:?}: accepted are \"true\", \"false\"."
                    ));
                    false
                }
            };
            let enforce = flag(LABEL_ENFORCE, &mut bad_labels);
            let allow_dood = flag(LABEL_ALLOW_DOOD, &mut bad_labels);
            if !bad_labels.is_empty() {
                return Err(Denial::new(400, bad_labels));
            }
            let (ns_effective, ns_source) = match ns_mode {
                Some(m) => (m, Source::NamespaceLabel),
                None => (config.default_mode, Source::ConfigDefault),
            };
            let choice = choose(annotation, policy, config);
            let mut reasons = Vec::new();
            if enforce && choice.mode != ns_effective {
                reasons.push(format!(
                    "namespace {namespace} enforces mode {ns_effective} (label {LABEL_ENFORCE}=true, mode from {ns_source}), \
                     so the pod annotation nestdock.io/mode={} is not allowed; remove it or set it to {ns_effective}.",
                    choice.mode
                ));
            }
            if choice.mode == Mode::Dood && !allow_dood && ns_mode != Some(Mode::Dood) {
                reasons.push(format!(
                    "mode dood is not allowed in namespace {namespace}: it mounts the node's docker socket, which is \
                     root on that node; a cluster admin can label the namespace {LABEL_ALLOW_DOOD}=true."
                ));
            }
            if let Some(level) = label(LABEL_PSA_ENFORCE) {
                if matches!(level, "baseline" | "restricted") && choice.mode != Mode::None {
                    let needs = if choice.mode == Mode::Dood {
                        "a hostPath volume"
                    } else {
                        "a privileged container"
                    };
                    reasons.push(format!(
                        "namespace {namespace} has {LABEL_PSA_ENFORCE}={level}, which forbids {needs} that mode {} needs; \
                         use a namespace whose Pod Security level is privileged.",
                        choice.mode
                    ));
                }
            }
            if reasons.is_empty() {
                Ok(choice)
            } else {
                Err(forbidden(reasons))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn with(ann: Option<Mode>, kv: &[(&str, &str)], cfg: &Config) -> Result<ModeChoice, Denial> {
        let l = labels(kv);
        resolve(
            ann,
            NamespacePolicy::Labels {
                namespace: "ci",
                labels: &l,
            },
            cfg,
        )
    }

    #[test]
    fn annotation_wins_over_label_and_default() {
        let cfg = Config::default();
        let c = with(Some(Mode::Dind), &[(LABEL_MODE, "dind-rootless")], &cfg).unwrap();
        assert_eq!((c.mode, c.source), (Mode::Dind, Source::Annotation));
        let c = with(None, &[(LABEL_MODE, "dind-rootless")], &cfg).unwrap();
        assert_eq!(
            (c.mode, c.source),
            (Mode::DindRootless, Source::NamespaceLabel)
        );
        let c = with(None, &[], &cfg).unwrap();
        assert_eq!((c.mode, c.source), (Mode::None, Source::ConfigDefault));
    }

    #[test]
    fn enforce_blocks_other_modes_including_opting_in_under_none() {
        let cfg = Config::default();
        let e = with(
            Some(Mode::Dind),
            &[(LABEL_MODE, "none"), (LABEL_ENFORCE, "true")],
            &cfg,
        )
        .unwrap_err();
        assert_eq!(e.code, 403);
        assert!(e.message().contains(LABEL_ENFORCE) && e.message().contains("enforces mode none"));
        // The enforced mode itself, asked explicitly, is fine.
        with(
            Some(Mode::Dind),
            &[(LABEL_MODE, "dind"), (LABEL_ENFORCE, "true")],
            &cfg,
        )
        .unwrap();
        // Without a mode label, enforce uses the config default.
        let e = with(Some(Mode::Dind), &[(LABEL_ENFORCE, "true")], &cfg).unwrap_err();
        assert!(
            e.message().contains("config file's defaultMode"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn dood_needs_allow_label_or_namespace_mode() {
        let cfg = Config::default();
        let e = with(Some(Mode::Dood), &[], &cfg).unwrap_err();
        assert!(e.message().contains(LABEL_ALLOW_DOOD) && e.message().contains("root"));
        with(Some(Mode::Dood), &[(LABEL_ALLOW_DOOD, "true")], &cfg).unwrap();
        with(None, &[(LABEL_MODE, "dood")], &cfg).unwrap();
    }

    #[test]
    fn pod_security_levels_name_the_label_and_every_rule() {
        let cfg = Config::default();
        let e = with(
            Some(Mode::Dood),
            &[
                (LABEL_PSA_ENFORCE, "baseline"),
                (LABEL_MODE, "dind"),
                (LABEL_ENFORCE, "true"),
            ],
            &cfg,
        )
        .unwrap_err();
        assert!(e
            .message()
            .contains("pod-security.kubernetes.io/enforce=baseline"));
        assert!(e.message().contains("hostPath"));
        assert!(e.message().contains("enforces mode dind"));
        assert!(e.message().contains(LABEL_ALLOW_DOOD));
        with(Some(Mode::Dind), &[(LABEL_PSA_ENFORCE, "privileged")], &cfg).unwrap();
        with(Some(Mode::None), &[(LABEL_PSA_ENFORCE, "restricted")], &cfg).unwrap();
    }

    #[test]
    fn invalid_labels_are_reported_not_treated_as_none() {
        let e = with(None, &[(LABEL_MODE, "dnid")], &Config::default()).unwrap_err();
        assert!(
            e.message().contains("nestdock.io/mode=\"dnid\""),
            "{}",
            e.message()
        );
        let e = with(None, &[(LABEL_ENFORCE, "yes")], &Config::default()).unwrap_err();
        assert!(e.message().contains(LABEL_ENFORCE), "{}", e.message());
    }

    #[test]
    fn without_namespace_policy_dood_needs_the_config_switch() {
        let mut cfg = Config::default();
        let e = resolve(Some(Mode::Dood), NamespacePolicy::Off, &cfg).unwrap_err();
        assert!(e.message().contains("allowWithoutNamespacePolicy"));
        cfg.dood.allow_without_namespace_policy = true;
        resolve(Some(Mode::Dood), NamespacePolicy::Off, &cfg).unwrap();
        // Offline inject: the flag acts like a label, the annotation wins, no gate.
        let c = resolve(
            None,
            NamespacePolicy::Offline {
                mode: Some(Mode::Dood),
            },
            &Config::default(),
        )
        .unwrap();
        assert_eq!((c.mode, c.source), (Mode::Dood, Source::InjectFlag));
    }
}
