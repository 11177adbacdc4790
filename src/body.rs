//! Body wrappers of the request path: the request body size cap (which also counts bytes in),
//! and the response body that counts bytes out, holds the request's concurrency slot, and
//! records the request (metrics, access log) when it ends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use crate::access_log::{AccessLog, Entry};
use crate::metrics::Metrics;

/// The client's body exceeded `policy.max_body` while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds policy.max_body ({0} bytes)")]
pub struct BodyTooLarge(pub u64);

/// What a streamed request body did, shared with the request's record.
#[derive(Debug, Default)]
pub struct BodyStats {
    pub bytes: AtomicU64,
    pub exceeded: AtomicBool,
}

/// A streamed request body that fails once more than `limit` bytes have passed. Failing the
/// body makes hyper abort the upstream request mid-body, so Medusa sees a broken message
/// (no final chunk), never a truncated body presented as complete.
pub struct LimitedBody {
    inner: Incoming,
    remaining: u64,
    limit: u64,
    stats: Arc<BodyStats>,
}

impl LimitedBody {
    pub fn new(inner: Incoming, limit: u64, stats: Arc<BodyStats>) -> LimitedBody {
        LimitedBody {
            inner,
            remaining: limit,
            limit,
            stats,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.stats.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                    this.remaining -= len;
                    this.stats.bytes.fetch_add(len, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Everything the access log and the metrics need about one request.
pub struct RequestRecord {
    pub start: Instant,
    pub method: http::Method,
    /// Path with query values redacted; only computed when the access log is on.
    pub path: Option<String>,
    pub peer: SocketAddr,
    pub status: u16,
    pub key_fingerprint: Option<String>,
    pub replayed: bool,
    pub bytes_in: u64,
    pub streamed_in: Option<Arc<BodyStats>>,
}

/// A response body that counts bytes out, holds the request's concurrency slot until the body
/// has been sent (or dropped: a long download counts as in flight until it ends), and records
/// the request when dropped.
pub struct Tracked<B> {
    inner: B,
    bytes_out: u64,
    record: Option<RequestRecord>,
    metrics: Option<Arc<Metrics>>,
    access_log: Option<Arc<AccessLog>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<B> Tracked<B> {
    pub fn new(
        inner: B,
        record: Option<RequestRecord>,
        metrics: Option<Arc<Metrics>>,
        access_log: Option<Arc<AccessLog>>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Tracked {
            inner,
            bytes_out: 0,
            record,
            metrics,
            access_log,
            _permit: permit,
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        let Some(r) = self.record.take() else { return };
        let elapsed = r.start.elapsed();
        if let Some(m) = &self.metrics {
            m.request(&r.method, r.status, elapsed.as_secs_f64());
            m.in_flight().dec();
        }
        if let Some(log) = &self.access_log {
            let bytes_in = r.bytes_in
                + r.streamed_in
                    .as_ref()
                    .map_or(0, |s| s.bytes.load(Ordering::Relaxed));
            log.record(&Entry {
                method: r.method.as_str(),
                path: r.path.as_deref().unwrap_or("-"),
                status: r.status,
                duration: elapsed,
                bytes_in,
                bytes_out: self.bytes_out,
                client: r.peer,
                client_key: r.key_fingerprint.as_deref(),
                replayed: r.replayed,
            });
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(d) = frame.data_ref()
        {
            self.bytes_out += d.remaining() as u64;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The path for the access log with every query value replaced: query strings carry search
/// terms, emails, sometimes tokens; the keys are enough to see what a caller did.
pub fn redact_query(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) => {
                out.push_str(k);
                out.push_str("=***");
            }
            None => out.push_str(pair),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_redacted() {
        assert_eq!(redact_query("/admin/products"), "/admin/products");
        assert_eq!(
            redact_query("/admin/customers?q=alice@example.com&limit=10&flag"),
            "/admin/customers?q=***&limit=***&flag"
        );
        assert_eq!(redact_query("/a?token=abc.def"), "/a?token=***");
    }
}
