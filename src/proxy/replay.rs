//! Deciding whether a request body can be replayed after a 401, and buffering it if so.
//!
//! Only bodies that are empty, or small with a declared `Content-Length`, are buffered (the
//! capped replay buffer, as in linkerd2-proxy's `ReplayBody`): everything else streams
//! straight through and is never held whole in memory, so it cannot be sent twice.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::policy::{BodyRules, MAX_INSPECTED_BODY};

/// Largest body buffered for a replay.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// What to do with a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// No body at all: replayable at no cost.
    Empty,
    /// Stream it straight through; it is sent at most once.
    Stream,
    /// Buffer it (small, or inspected): [`buffer`].
    Buffer,
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

/// Decide, from the head alone, whether the body is buffered. Bodies that are small with a
/// declared `Content-Length` are (for a replay after a 401); with `always_inspect`
/// (`/admin/users` and below) every body is, chunked ones included, and one declared larger
/// than [`MAX_INSPECTED_BODY`] is refused (413). Others stream uninspected: they cannot reach
/// the route that sets a user's token.
pub fn plan(headers: &HeaderMap, empty: bool, rules: BodyRules) -> Result<Plan, ProxyError> {
    if empty {
        return Ok(Plan::Empty);
    }
    match content_length(headers) {
        Some(len) if len <= MAX_REPLAY_BODY => Ok(Plan::Buffer),
        // Refuse a declared oversize body before reading any of it.
        Some(_) if rules.always_inspect => {
            Err(ProxyError::InspectedBodyTooLarge(MAX_INSPECTED_BODY))
        }
        _ if rules.always_inspect => Ok(Plan::Buffer),
        _ => Ok(Plan::Stream),
    }
}

/// Buffer a body [`plan`] said to buffer, waiting at most `timeout` for it: a client that
/// stalls mid-body must not hold the request forever (408, and the connection is closed).
/// The body rules (`api-token-write`) inspect every body buffered here, since it is in memory
/// anyway. `max_body` (`policy.max_body`) still caps a chunked body buffered here.
pub async fn buffer(
    headers: &HeaderMap,
    body: Incoming,
    timeout: std::time::Duration,
    rules: BodyRules,
    max_body: u64,
) -> Result<Bytes, ProxyError> {
    let limit = MAX_REPLAY_BODY.max(MAX_INSPECTED_BODY).min(max_body);
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit as usize).collect())
        .await
        .map_err(|_| ProxyError::BodyTimeout(timeout))?
        .map_err(|e| {
            if !e.is::<LengthLimitError>() {
                ProxyError::BadRequest("the request body could not be read")
            } else if max_body < MAX_INSPECTED_BODY {
                ProxyError::PayloadTooLarge(max_body)
            } else {
                ProxyError::InspectedBodyTooLarge(MAX_INSPECTED_BODY)
            }
        })?;
    let bytes = collected.to_bytes();
    if rules.refuse_api_token {
        inspect(headers, &bytes, rules.always_inspect)?;
    }
    Ok(bytes)
}

/// The `api-token-write` rule on a buffered body. A body the proxy cannot read as Medusa's
/// parsers would (compressed: body-parser inflates gzip/deflate; a charset other than UTF-8:
/// body-parser decodes UTF-16) is refused where inspection is mandatory (`strict`).
fn inspect(headers: &HeaderMap, body: &[u8], strict: bool) -> Result<(), ProxyError> {
    let content_type = headers.get(CONTENT_TYPE).map(|v| v.as_bytes());
    let unreadable = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|v| crate::scrub::encoded(v.as_bytes()))
        || content_type.is_some_and(|ct| !charset_is_ascii_compatible(ct));
    let why = if unreadable {
        if !strict {
            return Ok(());
        }
        "the request body is compressed or not UTF-8, so it cannot be checked for api_token"
    } else if crate::scrub::sets_api_token(body, content_type) {
        "the request body sets api_token (a static Medusa credential)"
    } else {
        return Ok(());
    };
    tracing::info!(
        reason = why,
        "request body refused by built-in rule api-token-write"
    );
    Err(ProxyError::Forbidden {
        code: "route_denied",
        message: format!("{why}: refused by built-in rule \"api-token-write\""),
    })
}

/// No `charset` parameter, or one whose ASCII bytes mean ASCII (so a byte search finds
/// the key): UTF-8, US-ASCII, ISO-8859-1.
fn charset_is_ascii_compatible(content_type: &[u8]) -> bool {
    let ct = String::from_utf8_lossy(content_type).to_ascii_lowercase();
    ct.split(';').skip(1).all(|param| {
        let Some((name, value)) = param.split_once('=') else {
            return true;
        };
        if name.trim() != "charset" {
            return true;
        }
        matches!(
            value.trim().trim_matches('"'),
            "utf-8" | "utf8" | "us-ascii" | "iso-8859-1" | "latin1"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn charsets() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/x-www-form-urlencoded; charset=ISO-8859-1",
        ] {
            assert!(charset_is_ascii_compatible(ct.as_bytes()), "{ct}");
        }
        for ct in [
            "application/json; charset=utf-16le",
            "text/plain;charset=UTF-32",
        ] {
            assert!(!charset_is_ascii_compatible(ct.as_bytes()), "{ct}");
        }
    }

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
