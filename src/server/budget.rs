//! The memory budget of the reviews in flight: what bounds the server's
//! memory whatever the clients send, since any pod in the cluster can reach
//! the webhook's Service.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// The memory budget of requests in flight (docs/behaviour.md, *Who can
/// call*: memory bounded across all in-flight requests). A semaphore whose permits are bytes: a review
/// takes its body's declared `Content-Length` before reading it (or each
/// chunk as it comes when no length is declared), then [`PROCESSING_FACTOR`]
/// times the body (at most [`PROCESSING_CAP`]) before parsing, and keeps what
/// its response needs until the response has been written. When the budget
/// is in use it waits (at most [`BUDGET_WAIT`], within the review's deadline)
/// and then answers HTTP 503 naming the budget and its flag. Permits go back
/// whenever the request ends, also when the client goes away half-way (the
/// handler's future is dropped, and the permits with it).
///
/// The fast path is one `try_acquire` per phase: an uncontended atomic.
#[derive(Debug)]
pub struct Budget {
    semaphore: Arc<Semaphore>,
    total: usize,
}

/// Bytes taken from the [`Budget`]; given back when dropped.
#[derive(Debug, Default)]
pub struct Charge(Option<OwnedSemaphorePermit>);

impl Charge {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    pub(super) fn add(&mut self, more: Charge) {
        match (&mut self.0, more.0) {
            (Some(held), Some(more)) => held.merge(more),
            (held @ None, more) => *held = more,
            (Some(_), None) => {}
        }
    }

    /// Gives back all but `keep` bytes.
    pub(super) fn shrink_to(&mut self, keep: usize) {
        let held = self.bytes();
        if held > keep {
            if let Some(permit) = self.0.as_mut() {
                drop(permit.split(held - keep));
            }
        }
    }
}

/// The budget was in use for longer than a review may wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    pub wanted: usize,
    pub total: usize,
    pub waited: Duration,
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the memory budget for reviews in flight ({} bytes, serve --max-inflight-bytes) \
             is in use by other requests: this review needs {} bytes of it and none came free \
             within {:.1} s; retry later",
            self.total,
            self.wanted,
            self.waited.as_secs_f64()
        )
    }
}

impl Budget {
    /// A budget of `total` bytes (at most `u32::MAX`, what a semaphore
    /// acquisition can ask for).
    pub fn new(total: usize) -> Budget {
        let total = total.min(u32::MAX as usize);
        Budget {
            semaphore: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Bytes not taken now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// The whole budget.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Takes `bytes` (at most the whole budget, so that any one request can
    /// be served eventually): at once when free, else waiting up to `wait`.
    pub async fn charge(&self, bytes: usize, wait: Duration) -> Result<Charge, OverBudget> {
        let n = bytes.min(self.total);
        if n == 0 {
            return Ok(Charge(None));
        }
        // `total` fits a u32, so does `n`.
        let n32 = n as u32;
        if let Ok(permit) = self.semaphore.clone().try_acquire_many_owned(n32) {
            return Ok(Charge(Some(permit)));
        }
        match tokio::time::timeout(wait, self.semaphore.clone().acquire_many_owned(n32)).await {
            Ok(Ok(permit)) => Ok(Charge(Some(permit))),
            // Never closed; treat it like a full budget anyway.
            Ok(Err(_)) | Err(_) => Err(OverBudget {
                wanted: n,
                total: self.total,
                waited: wait,
            }),
        }
    }

    /// What deciding a review of `body` bytes is charged beyond the body
    /// (never more than the budget leaves beside the body).
    pub(super) fn processing(&self, body: usize) -> usize {
        body.saturating_mul(PROCESSING_FACTOR)
            .min(PROCESSING_CAP)
            .min(self.total.saturating_sub(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_charges_add_shrink_and_come_back_when_dropped() {
        let budget = Budget::new(1000);
        let wait = Duration::from_millis(50);
        let mut charge = budget.charge(300, wait).await.unwrap();
        charge.add(budget.charge(200, wait).await.unwrap());
        assert_eq!((charge.bytes(), budget.available()), (500, 500));
        // More than is free: waits, then says what it wanted and the flag.
        let err = budget.charge(600, wait).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("600 bytes") && text.contains("1000 bytes"),
            "{text}"
        );
        assert!(text.contains("--max-inflight-bytes"), "{text}");
        charge.shrink_to(100);
        assert_eq!((charge.bytes(), budget.available()), (100, 900));
        // Waiting ends as soon as the bytes come back.
        let waiting = budget.charge(950, Duration::from_secs(5));
        let release = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(charge);
        };
        let (got, ()) = tokio::join!(waiting, release);
        assert_eq!(got.unwrap().bytes(), 950);
        assert_eq!(budget.available(), 1000);
        // One request never asks for more than the whole budget, and the
        // processing share leaves room for the body.
        assert_eq!(budget.charge(5000, wait).await.unwrap().bytes(), 1000);
        assert_eq!(budget.processing(10), 320);
        assert_eq!(budget.processing(100), 900);
        assert_eq!(Budget::new(1 << 30).processing(6 << 10), 192 << 10);
        assert_eq!(Budget::new(1 << 30).processing(8 << 20), PROCESSING_CAP);
        assert_eq!(budget.charge(0, wait).await.unwrap().bytes(), 0);
    }
}
