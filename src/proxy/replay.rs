//! Deciding whether a request body can be replayed after a 401, and buffering it if so.
//!
//! Only bodies that are empty, or small with a declared `Content-Length`, are buffered (the
//! capped replay buffer, as in linkerd2-proxy's `ReplayBody`): everything else streams
//! straight through and is never held whole in memory, so it cannot be sent twice.

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};

use crate::error::ProxyError;

/// Largest body buffered for a replay.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

pub enum PreparedBody {
    /// The whole body, kept so it can be sent again.
    Replayable(Bytes),
    /// Streamed from the client; sent at most once.
    Streamed(Incoming),
}

/// The declared body length, if there is exactly one valid `Content-Length`.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.trim().parse().ok()
}

/// Buffer a small body, waiting at most `timeout` for it: a client that stalls mid-body must
/// not hold a concurrency slot forever (408, and the connection is closed).
pub async fn prepare(
    headers: &HeaderMap,
    body: Incoming,
    timeout: std::time::Duration,
) -> Result<PreparedBody, ProxyError> {
    if body.is_end_stream() {
        return Ok(PreparedBody::Replayable(Bytes::new()));
    }
    match content_length(headers) {
        Some(len) if len <= MAX_REPLAY_BODY => {
            let collected = tokio::time::timeout(
                timeout,
                Limited::new(body, MAX_REPLAY_BODY as usize).collect(),
            )
            .await
            .map_err(|_| ProxyError::BodyTimeout(timeout))?
            .map_err(|_| ProxyError::BadRequest("the request body could not be read"))?;
            Ok(PreparedBody::Replayable(collected.to_bytes()))
        }
        _ => Ok(PreparedBody::Streamed(body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn content_length_must_be_single_and_numeric() {
        let mut h = HeaderMap::new();
        assert_eq!(content_length(&h), None);
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("42"));
        assert_eq!(content_length(&h), Some(42));
        h.append(CONTENT_LENGTH, HeaderValue::from_static("42"));
        assert_eq!(content_length(&h), None);
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("-1"));
        assert_eq!(content_length(&h), None);
    }
}
