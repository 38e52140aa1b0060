//! The memory budget of the reviews in flight: what bounds the server's
//! memory whatever the clients send, since any pod in the cluster can reach
//! the webhook's Service.

use std::time::Duration;

pub use crate::budget::{Budget, Charge, OverBudget};

/// Default memory budget of the reviews in flight (`serve
/// --max-inflight-bytes`). Peak RSS runs at about 2.5 times the budget
/// under tests/adversarial.rs (the allocator keeps freed memory in
/// per-thread arenas): release builds peaked at 145-175 MiB with 64 MiB and
/// at 119-136 MiB with 48 MiB, against the 200 MiB peak the product promises (the shipped limit
/// is 256Mi). One largest review (8 MiB body + 28 MiB to decide it) fits.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 48 * 1024 * 1024;

/// What deciding a review holds beyond its body, as a multiple of the body:
/// the typed pod (borrowing strings from the body), the patch and the
/// response. Measured (VmHWM of a fresh server, one review at a time) on
/// the shapes of `tests/adversarial.rs`: the patch is what grows fastest,
/// ~250 bytes per container named in ~27, so 12,000 containers in a
/// 0.33 MiB body held 10.8 MiB (a 3.7 MiB response). A 6 KiB review is
/// charged 192 KiB.
const PROCESSING_FACTOR: usize = 32;

/// Cap of that extra charge. The engine bounds the typed pod (100,000
/// entries) and the patch (4 MiB, 5.3 MiB as base64); the most measured was
/// 27.3 MiB for 95,000 volumeMounts (3.2 MiB body, 4.2 MiB response), and
/// 17.7 MiB for an 8 MiB body refused at the entry cap.
const PROCESSING_CAP: usize = 28 * 1024 * 1024;

/// How long a review waits for its share of the budget before HTTP 503.
pub(super) const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// The budget of the reviews in flight (docs/behaviour.md, *Who can call*:
/// memory bounded across all in-flight requests): a review takes its body's
/// declared `Content-Length` before reading it (or each chunk as it comes
/// when no length is declared), then [`processing`] before parsing, and
/// keeps what its response needs until the response has been written. When
/// the budget is in use it waits (at most [`BUDGET_WAIT`], within the
/// review's deadline) and then answers HTTP 503 naming the budget and its
/// flag.
pub fn budget(total: usize) -> Budget {
    Budget::new(total, "reviews in flight", "serve --max-inflight-bytes")
}

/// What deciding a review of `body` bytes is charged beyond the body
/// (never more than the budget leaves beside the body).
pub(super) fn processing(budget: &Budget, body: usize) -> usize {
    body.saturating_mul(PROCESSING_FACTOR)
        .min(PROCESSING_CAP)
        .min(budget.total().saturating_sub(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_review_budget_names_its_flag_and_leaves_room_for_the_body() {
        let b = budget(1000);
        let _held = b.charge(600, Duration::ZERO).await.unwrap();
        let wait = Duration::from_millis(10);
        let text = b.charge(600, wait).await.unwrap_err().to_string();
        assert!(text.contains("serve --max-inflight-bytes"), "{text}");
        assert_eq!(processing(&b, 10), 320);
        assert_eq!(processing(&b, 100), 900);
        assert_eq!(processing(&budget(1 << 30), 6 << 10), 192 << 10);
        assert_eq!(processing(&budget(1 << 30), 8 << 20), PROCESSING_CAP);
    }
}
