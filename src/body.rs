//! Body wrappers of the request path: the request body size cap, and the response body that
//! holds a concurrency slot until it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

/// The client's body exceeded `policy.max_body` while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds policy.max_body ({0} bytes)")]
pub struct BodyTooLarge(pub u64);

/// A streamed request body that fails once more than `limit` bytes have passed. Failing the
/// body makes hyper abort the upstream request mid-body, so Medusa sees a broken message
/// (no final chunk), never a truncated body presented as complete.
pub struct LimitedBody {
    inner: Incoming,
    remaining: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
}

impl LimitedBody {
    /// The body and a flag that turns true if the limit was hit.
    pub fn new(inner: Incoming, limit: u64) -> (LimitedBody, Arc<AtomicBool>) {
        let exceeded = Arc::new(AtomicBool::new(false));
        (
            LimitedBody {
                inner,
                remaining: limit,
                limit,
                exceeded: exceeded.clone(),
            },
            exceeded,
        )
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
                        this.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                    this.remaining -= len;
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

/// A response body that holds the request's concurrency permit until the body has been sent
/// (or dropped): a long download counts as in flight until it ends.
pub struct Guarded<B> {
    inner: B,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, permit: Option<OwnedSemaphorePermit>) -> Self {
        Guarded {
            inner,
            _permit: permit,
        }
    }
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
