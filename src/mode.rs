//! The four modes of docs/behaviour.md and their names on the wire.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a pod gets its Docker daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Privileged `docker:<ver>-dind` sidecar.
    Dind,
    /// `docker:<ver>-dind-rootless` sidecar (dockerd as uid 1000 in a user namespace).
    DindRootless,
    /// The node's docker socket by hostPath.
    Dood,
    /// No change.
    #[default]
    None,
}

impl Mode {
    /// What error messages list as accepted.
    pub const ACCEPTED: &'static str = "dind, dind-rootless, dood, none";

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Dind => "dind",
            Mode::DindRootless => "dind-rootless",
            Mode::Dood => "dood",
            Mode::None => "none",
        }
    }

    /// True for the modes that run a daemon container in the pod.
    pub fn has_daemon(self) -> bool {
        matches!(self, Mode::Dind | Mode::DindRootless)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "dind" => Ok(Mode::Dind),
            "dind-rootless" => Ok(Mode::DindRootless),
            "dood" => Ok(Mode::Dood),
            "none" => Ok(Mode::None),
            other => Err(format!(
                "unknown mode {other:?}: accepted are {}",
                Mode::ACCEPTED
            )),
        }
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
