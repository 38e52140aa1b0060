//! A request body, read whole within the size limit, the body timeout and
//! the memory budget: the one place where a client decides how much the
//! server holds.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use http_body_util::BodyExt as _;

use super::app::Failure;
use super::budget::{Budget, Charge, OverBudget};

fn too_large(limit: usize) -> Failure {
    Failure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is over the limit of {limit} bytes (serve --max-body-bytes)"),
    )
}

/// How much of an over-limit HTTP/1.1 body is read and thrown away so that
/// the client, still writing, gets to read the 413 (rather than a broken
/// pipe when the server closes on it). Past this the connection is closed.
const DRAIN_CAP: usize = 32 * 1024 * 1024;

/// Reads the whole body, at most `limit` bytes within `timeout`, charging
/// its bytes to `budget` (the declared length up front, else chunk by
/// chunk); returns the body and its charge.
///
/// Over the limit the answer is 413. On HTTP/2 (`drain` false) that happens
/// at once, the stream is reset cleanly; on HTTP/1.1 the rest of the body is
/// read and dropped first (up to [`DRAIN_CAP`], within the same timeout), so
/// that the client reads the 413 before the connection closes. When the
/// budget stays in use the answer is 503.
pub(super) async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
    drain: bool,
    budget: &Budget,
    wait: Duration,
) -> Result<(Bytes, Charge), Failure> {
    let mut over = axum::body::HttpBody::size_hint(&body).lower() > limit as u64;
    if over && !drain {
        return Err(too_large(limit));
    }
    let mut charge = Charge::default();
    let read = collect_limited(body, limit, drain, &mut over, budget, wait, &mut charge);
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(Some(bytes))) => Ok((bytes, charge)),
        Ok(Ok(None)) => Err(too_large(limit)),
        Ok(Err(ReadError::Body(e))) => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
        Ok(Err(ReadError::Budget(e))) => Err(e.into()),
        Err(_) if over => Err(too_large(limit)),
        Err(_) => Err(Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f32()
            ),
        )),
    }
}

enum ReadError {
    Body(axum::Error),
    Budget(OverBudget),
}

/// The body's bytes, or `None` once it is known to be over `limit` (after
/// draining the rest when asked). `over` says so as soon as it is known, also
/// to a caller whose timeout cut this short. Bytes kept are charged to
/// `budget` before they are read: the declared length at once, any more as
/// chunks come (drained bytes are dropped at once and not charged).
async fn collect_limited(
    mut body: Body,
    limit: usize,
    drain: bool,
    over: &mut bool,
    budget: &Budget,
    wait: Duration,
    charge: &mut Charge,
) -> Result<Option<Bytes>, ReadError> {
    let declared = axum::body::HttpBody::size_hint(&body).lower();
    let declared = usize::try_from(declared).unwrap_or(usize::MAX).min(limit);
    if !*over && declared > 0 {
        charge.add(
            budget
                .charge(declared, wait)
                .await
                .map_err(ReadError::Budget)?,
        );
    }
    let mut buf = Vec::with_capacity(declared);
    let mut drained = 0usize;
    while let Some(frame) = body.frame().await {
        // Trailers carry nothing a review needs.
        let Ok(data) = frame.map_err(ReadError::Body)?.into_data() else {
            continue;
        };
        if !*over && buf.len() + data.len() <= limit {
            budget
                .cover(charge, buf.len() + data.len(), wait)
                .await
                .map_err(ReadError::Budget)?;
            buf.extend_from_slice(&data);
            continue;
        }
        *over = true;
        drained += data.len();
        if !drain || drained > DRAIN_CAP {
            return Ok(None);
        }
    }
    Ok((!*over).then(|| Bytes::from(buf)))
}
