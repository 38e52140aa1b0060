//! A refusal and its reasons. A leaf module: the policy rules, the plan and
//! the request path all produce or carry one, and none of them owns it.

/// How many reasons a denial names.
pub const MAX_REASONS: usize = 16;
/// How long one reason may be.
pub const MAX_REASON_BYTES: usize = 1024;

/// A refusal: the HTTP-like status code for the AdmissionReview and every
/// reason that applies, each naming what was wrong and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// 400 for a bad annotation value or a pod nestdock cannot serve as asked,
    /// 403 for a policy or safety rule.
    pub code: u16,
    /// One sentence (or so) each; never empty.
    pub reasons: Vec<String>,
}

impl Denial {
    /// A denial for these reasons, bounded: at most [`MAX_REASONS`] reasons
    /// of at most [`MAX_REASON_BYTES`] each, so that a pod with a thousand
    /// bad annotations gets a readable (and small) answer.
    pub fn new(code: u16, reasons: Vec<String>) -> Denial {
        let total = reasons.len();
        let mut kept: Vec<String> = reasons
            .into_iter()
            .take(MAX_REASONS)
            .map(|r| cut(r, MAX_REASON_BYTES))
            .collect();
        if total > kept.len() {
            kept.push(format!("({} more reasons not shown)", total - kept.len()));
        }
        Denial {
            code,
            reasons: kept,
        }
    }

    /// A denial for one reason.
    pub fn one(code: u16, reason: String) -> Denial {
        Denial::new(code, vec![reason])
    }

    /// A bad request (400): a value or a pod nestdock cannot serve as asked.
    pub fn bad(reason: String) -> Denial {
        Denial::one(400, reason)
    }

    /// The reasons as one message, as the AdmissionReview's status carries it.
    pub fn message(&self) -> String {
        self.reasons.join(" ")
    }
}

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
pub(crate) fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max.saturating_sub(3);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}
