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
    //! Every namespace rule, once, as a table: the webhook, `explain` and
    //! `inject` reach these rules only through [`resolve`].
    use super::*;

    /// What a row expects: the mode and its source, or a denial's code and
    /// the words its message must contain.
    enum Want {
        Mode(Mode, Source),
        Denied(u16, &'static [&'static str]),
    }
    use Want::{Denied, Mode as Is};

    /// The pod's mode annotation, the namespace's labels, what must happen.
    type Row = (Option<Mode>, &'static [(&'static str, &'static str)], Want);

    const DEFAULT: Source = Source::ConfigDefault;
    const LABEL: Source = Source::NamespaceLabel;
    const ANNOTATION: Source = Source::Annotation;

    #[test]
    fn namespace_rules() {
        let dind = Some(Mode::Dind);
        let dood = Some(Mode::Dood);
        let rootless = Some(Mode::DindRootless);
        #[rustfmt::skip]
        let rows: &[Row] = &[
            // Where the mode comes from: annotation, label, config default.
            (dind, &[(LABEL_MODE, "dind-rootless")], Is(Mode::Dind, ANNOTATION)),
            (None, &[(LABEL_MODE, "dind-rootless")], Is(Mode::DindRootless, LABEL)),
            (None, &[], Is(Mode::None, DEFAULT)),
            // Enforce: another mode is denied naming the namespace, the label,
            // both modes; the enforced mode itself, asked or not, is fine.
            (rootless, &[(LABEL_MODE, "dind"), (LABEL_ENFORCE, "true")],
             Denied(403, &["namespace ci", "nestdock.io/enforce=true", "enforces mode dind", "dind-rootless"])),
            (dind, &[(LABEL_MODE, "dind"), (LABEL_ENFORCE, "true")], Is(Mode::Dind, ANNOTATION)),
            (None, &[(LABEL_MODE, "dind"), (LABEL_ENFORCE, "true")], Is(Mode::Dind, LABEL)),
            // An enforced none blocks opting in; without a mode label,
            // enforce uses the config default and says so.
            (dind, &[(LABEL_MODE, "none"), (LABEL_ENFORCE, "true")],
             Denied(403, &["enforces mode none"])),
            (dind, &[(LABEL_ENFORCE, "true")], Denied(403, &["config file's defaultMode"])),
            // dood: the allow label or the namespace's own mode.
            (dood, &[], Denied(403, &["namespace ci", "nestdock.io/allow-dood", "root"])),
            (dood, &[(LABEL_ALLOW_DOOD, "true")], Is(Mode::Dood, ANNOTATION)),
            (None, &[(LABEL_MODE, "dood")], Is(Mode::Dood, LABEL)),
            // Pod Security: baseline and restricted forbid what the modes need.
            (dind, &[(LABEL_PSA_ENFORCE, "baseline")],
             Denied(403, &["pod-security.kubernetes.io/enforce=baseline", "privileged container"])),
            (dood, &[(LABEL_PSA_ENFORCE, "restricted"), (LABEL_ALLOW_DOOD, "true")],
             Denied(403, &["pod-security.kubernetes.io/enforce=restricted", "hostPath"])),
            (dind, &[(LABEL_PSA_ENFORCE, "privileged")], Is(Mode::Dind, ANNOTATION)),
            (None, &[(LABEL_PSA_ENFORCE, "restricted")], Is(Mode::None, DEFAULT)),
            // Every rule that applies, in one denial.
            (dood, &[(LABEL_PSA_ENFORCE, "baseline"), (LABEL_MODE, "dind"), (LABEL_ENFORCE, "true")],
             Denied(403, &["enforce=baseline", "hostPath", "enforces mode dind", "nestdock.io/allow-dood"])),
            // Invalid labels are reported, never read as "no label".
            (None, &[(LABEL_MODE, "dnid")], Denied(400, &["namespace ci", "nestdock.io/mode=\"dnid\"", "dind"])),
            (None, &[(LABEL_ENFORCE, "yes")], Denied(400, &["nestdock.io/enforce=\"yes\"", "\"true\""])),
        ];
        let config = Config::default();
        for (i, (annotation, kv, want)) in rows.iter().enumerate() {
            let labels: BTreeMap<String, String> = kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let policy = NamespacePolicy::Labels {
                namespace: "ci",
                labels: &labels,
            };
            match (resolve(*annotation, policy, &config), want) {
                (Ok(c), Is(mode, source)) => {
                    assert_eq!((c.mode, c.source), (*mode, *source), "row {i}: {kv:?}")
                }
                (Err(d), Denied(code, words)) => {
                    assert_eq!(d.code, *code, "row {i}: {}", d.message());
                    for w in *words {
                        assert!(
                            d.message().contains(w),
                            "row {i}: {w:?} not in {}",
                            d.message()
                        );
                    }
                }
                (Ok(c), Denied(..)) => panic!("row {i} {kv:?}: allowed as {c:?}"),
                (Err(d), Is(..)) => panic!("row {i} {kv:?}: denied: {}", d.message()),
            }
        }
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
