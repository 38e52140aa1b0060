//! What became of one review, in one vocabulary: the engine's decision maps
//! onto it ([`crate::engine::Decision::outcome`]), the admission response
//! records it, and the log line and the metrics print it. A leaf, so that
//! `metrics` needs nothing of the request path to count it.

use std::fmt;

/// The `outcome` of a review in logs and in `nestdock_reviews_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A pod that got a patch.
    Injected,
    /// A pod that was evaluated and allowed as it is.
    Unchanged,
    /// A pod that was refused (an AdmissionReview with `allowed: false`).
    Denied,
    /// Not a pod CREATE (another kind, a subresource, another operation, no
    /// object): allowed without asking the engine.
    Skipped,
    /// No AdmissionReview was answered: an HTTP 4xx or 5xx.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Unchanged => "unchanged",
            Outcome::Denied => "denied",
            Outcome::Skipped => "skipped",
            Outcome::Error => "error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
