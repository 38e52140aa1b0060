//! A memory budget: bytes that requests in flight may hold at once, across
//! every connection, whatever the clients send. The webhook's reviews have
//! one (`server::budget`: `serve --max-inflight-bytes`), and so do the
//! bodies `nestdock guard` reads whole (the requests it checks, the answers
//! it rewrites): many connections, each sending or asking for a large body,
//! would otherwise add up past any memory limit.
//!
//! A semaphore whose permits are bytes. Taking a share waits at most a
//! given time and then fails with [`OverBudget`], which names the budget
//! (never forever: readers that hold part of the budget while waiting for
//! more could otherwise wait for each other). Shares go back when dropped,
//! also when a client goes away half-way (the handler's future is dropped,
//! and the share with it); [`hold`] keeps one until an answer built from it
//! has been written out. The fast path is one `try_acquire`: an uncontended
//! atomic.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A memory budget (see the module).
#[derive(Debug, Clone)]
pub struct Budget {
    semaphore: Arc<Semaphore>,
    total: usize,
    what: &'static str,
    set_by: &'static str,
}

/// Bytes taken from a [`Budget`]; given back when dropped.
#[derive(Debug, Default)]
pub struct Charge(Option<OwnedSemaphorePermit>);

impl Charge {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    pub fn add(&mut self, more: Charge) {
        match (&mut self.0, more.0) {
            (Some(held), Some(more)) => held.merge(more),
            (held @ None, more) => *held = more,
            (Some(_), None) => {}
        }
    }

    /// Gives back all but `keep` bytes.
    pub fn shrink_to(&mut self, keep: usize) {
        let held = self.bytes();
        if held > keep {
            if let Some(permit) = self.0.as_mut() {
                drop(permit.split(held - keep));
            }
        }
    }
}

/// The budget was in use for longer than a request may wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    pub wanted: usize,
    pub total: usize,
    pub waited: Duration,
    what: &'static str,
    set_by: &'static str,
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the memory budget for {} ({} bytes, {}) is in use by other requests: this \
             request needs {} bytes of it and none came free within {:.1} s; retry later",
            self.what,
            self.total,
            self.set_by,
            self.wanted,
            self.waited.as_secs_f64()
        )
    }
}

impl std::error::Error for OverBudget {}

/// Why a body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Budget(OverBudget),
    #[error(transparent)]
    Body(E),
}

impl Budget {
    /// A budget of `total` bytes (at most `u32::MAX`, what a semaphore
    /// acquisition can ask for) for `what`, its size `set_by` (both for
    /// the message when it is spent).
    pub fn new(total: usize, what: &'static str, set_by: &'static str) -> Budget {
        let total = total.min(u32::MAX as usize);
        Budget {
            semaphore: Arc::new(Semaphore::new(total)),
            total,
            what,
            set_by,
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
                what: self.what,
                set_by: self.set_by,
            }),
        }
    }

    /// Grows `charge` to cover `bytes` (a body read so far), waiting up to
    /// `wait` for the difference.
    pub async fn cover(
        &self,
        charge: &mut Charge,
        bytes: usize,
        wait: Duration,
    ) -> Result<(), OverBudget> {
        if bytes > charge.bytes() {
            charge.add(self.charge(bytes - charge.bytes(), wait).await?);
        }
        Ok(())
    }

    /// Reads `body` whole, at most `limit` bytes, charging what it keeps as
    /// it comes (each wait at most `wait`).
    pub async fn read<B>(
        &self,
        mut body: B,
        limit: usize,
        wait: Duration,
    ) -> Result<(Bytes, Charge), ReadError<B::Error>>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let mut charge = Charge::default();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(ReadError::Body)?.into_data() else {
                continue; // trailers: nothing read whole needs them
            };
            let needed = buf.len() + data.len();
            if needed > limit {
                return Err(ReadError::TooLarge(limit));
            }
            self.cover(&mut charge, needed, wait)
                .await
                .map_err(ReadError::Budget)?;
            buf.extend_from_slice(&data);
        }
        Ok((Bytes::from(buf), charge))
    }
}

/// A body that keeps a [`Charge`] until it has been written out (or
/// dropped): an answer built from what the charge paid for.
pub struct Holding<B> {
    body: B,
    charge: Charge,
}

/// `body`, keeping `charge` until it has been written out.
pub fn hold<B>(body: B, charge: Charge) -> Holding<B> {
    Holding { body, charge }
}

impl<B: Body + Unpin> Body for Holding<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.charge = Charge::default();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn budget(total: usize) -> Budget {
        Budget::new(total, "tests", "set by the test")
    }

    type Frames = StreamBody<
        futures_util::stream::Iter<
            std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>,
        >,
    >;

    /// A body sent in frames of these sizes.
    fn frames(sizes: &[usize]) -> Frames {
        let v: Vec<_> = sizes
            .iter()
            .map(|n| Ok(Frame::data(Bytes::from(vec![b'x'; *n]))))
            .collect();
        StreamBody::new(futures_util::stream::iter(v))
    }

    #[tokio::test]
    async fn charges_add_shrink_and_come_back_when_dropped() {
        let budget = budget(1000);
        let wait = Duration::from_millis(50);
        let mut charge = budget.charge(300, wait).await.unwrap();
        charge.add(budget.charge(200, wait).await.unwrap());
        assert_eq!((charge.bytes(), budget.available()), (500, 500));
        // More than is free: waits, then says what it wanted, of what, and
        // what sets the budget.
        let text = budget.charge(600, wait).await.unwrap_err().to_string();
        for part in ["600 bytes", "1000 bytes", "for tests", "set by the test"] {
            assert!(text.contains(part), "{part:?} in {text}");
        }
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
        // One request never asks for more than the whole budget.
        assert_eq!(budget.charge(5000, wait).await.unwrap().bytes(), 1000);
        assert_eq!(budget.charge(0, wait).await.unwrap().bytes(), 0);
    }

    #[tokio::test]
    async fn a_body_read_whole_is_charged_and_bounded() {
        let budget = budget(100);
        let wait = Duration::from_millis(20);
        let (bytes, charge) = budget.read(frames(&[10, 20, 30]), 60, wait).await.unwrap();
        assert_eq!(
            (bytes.len(), charge.bytes(), budget.available()),
            (60, 60, 40)
        );
        let e = budget.read(frames(&[10, 51]), 60, wait).await.unwrap_err();
        assert!(matches!(e, ReadError::TooLarge(60)), "{e:?}");
        // 60 held: a read that needs 50 waits, fails, and gives back the
        // part it took.
        let e = budget.read(frames(&[30, 20]), 60, wait).await.unwrap_err();
        assert!(matches!(e, ReadError::Budget(_)), "{e:?}");
        assert_eq!(budget.available(), 40);
        drop(charge);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn an_answer_holds_its_charge_until_written_out() {
        let budget = budget(100);
        let wait = Duration::from_millis(20);
        let (bytes, charge) = budget.read(frames(&[100]), 100, wait).await.unwrap();
        let mut answer = hold(Full::new(bytes), charge);
        assert_eq!(budget.available(), 0);
        let frame = answer.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap().len(), 100);
        assert!(answer.frame().await.is_none());
        assert_eq!(budget.available(), 100);
    }
}
