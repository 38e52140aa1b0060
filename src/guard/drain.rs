//! Request bodies the guard answers before reading to their end.
//!
//! The guard refuses some requests on their head alone (`docker build -t`
//! naming another pod's tag) and cuts others mid-stream (`docker load` of an
//! archive that would move a tag). If the connection then closed with the
//! client's upload unread, the kernel would reset it: the docker CLI, whose
//! Go client reports a failed body write rather than the response it was
//! sent, shows `error during connect` instead of the refusal. So an unread
//! body is read to its end and thrown away after the answer, which keeps the
//! connection open until the client has sent everything; Go's own HTTP server
//! does the same for up to 256 KiB. The reading is bounded in bytes and time:
//! past either bound the connection closes as it would have.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

/// Most bytes of an unread body the guard reads and discards: more than a
/// large build context, far less than it costs to read.
const DRAIN_BYTES: u64 = 1 << 30;
/// Longest time spent reading an unread body.
const DRAIN_TIME: Duration = Duration::from_secs(60);

/// A request body that is read to its end in the background if it is
/// dropped before its end.
pub struct Unread {
    body: Option<Incoming>,
    ended: bool,
}

impl Unread {
    pub fn new(body: Incoming) -> Self {
        Unread {
            body: Some(body),
            ended: false,
        }
    }
}

impl Body for Unread {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        if self.is_end_stream() {
            return;
        }
        let Some(body) = self.body.take() else { return };
        // Outside a runtime (never, in the guard) the body is simply dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(discard(body));
        }
    }
}

async fn discard(mut body: Incoming) {
    let read = async {
        let mut left = DRAIN_BYTES;
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            if n >= left {
                break;
            }
            left -= n;
        }
    };
    if tokio::time::timeout(DRAIN_TIME, read).await.is_err() {
        tracing::debug!("guard: stopped reading an unread request body after {DRAIN_TIME:?}");
    }
}
