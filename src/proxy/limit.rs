//! `limit`: the request body. A body declared larger than `policy.max_body` is refused before
//! a byte of it is read (413); a small or inspected body is buffered, within
//! `upstream.request_timeout` (408), and checked by the built-in body rules (see
//! [`super::replay`]); any other body streams through [`LimitedBody`], which breaks off at
//! `policy.max_body` so Medusa sees an incomplete message, never a truncated one presented as
//! whole. Buffered bodies are [`Replayable`] (sent again after a 401 or a broken pooled
//! connection); streamed ones are not.
//!
//! The buffering path is the one boxed future of this step (it waits for the client).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tower::{Layer, Service, ServiceExt};

use super::future::{Finish, LayerFuture};
use super::inject::Replayable;
use super::record::Noted;
use super::replay::{self, Plan};
use crate::error::ProxyError;
use crate::policy::BodyRules;

/// The request body as the steps below `limit` see it: whole (replayable) or streamed.
pub type ProxyBody = Either<Full<Bytes>, LimitedBody>;

/// The `limit` layer. `max_body` is shared with the reloader.
#[derive(Clone)]
pub struct LimitLayer {
    /// `policy.max_body`, swapped on reload.
    pub max_body: Arc<AtomicU64>,
    /// How long a buffered body may take to arrive (`upstream.request_timeout`).
    pub body_timeout: Duration,
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            max_body: self.max_body.clone(),
            body_timeout: self.body_timeout,
        }
    }
}

/// The `limit` service.
#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    max_body: Arc<AtomicU64>,
    body_timeout: Duration,
}

impl<S, RB> Service<Request<Incoming>> for Limit<S>
where
    S: Service<Request<ProxyBody>, Response = Response<RB>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = ProxyError;
    type Future = LayerFuture<S::Future, Counted, Response<RB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let max_body = self.max_body.load(Ordering::Relaxed);
        if replay::content_length(req.headers()).is_some_and(|len| len > max_body) {
            return LayerFuture::refuse(ProxyError::PayloadTooLarge(max_body));
        }
        let rules = req
            .extensions()
            .get::<BodyRules>()
            .copied()
            .unwrap_or_default();
        let (parts, body) = req.into_parts();
        match replay::plan(&parts.headers, body.is_end_stream(), rules) {
            Err(e) => LayerFuture::refuse(e),
            Ok(Plan::Empty) => {
                let req = Request::from_parts(parts, Either::Left(Full::new(Bytes::new())));
                LayerFuture::called(self.inner.call(req), Counted::default())
            }
            Ok(Plan::Stream) => {
                let stats = Arc::new(BodyStats::default());
                let body = LimitedBody::new(body, max_body, stats.clone());
                let req = Request::from_parts(parts, Either::Right(body));
                let counted = Counted {
                    bytes_in: 0,
                    stats: Some(stats),
                    max_body,
                };
                LayerFuture::called(self.inner.call(req), counted)
            }
            Ok(Plan::Buffer) => {
                // Take the service that was made ready; leave a clone in its place.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let timeout = self.body_timeout;
                LayerFuture::boxed(async move {
                    let bytes =
                        replay::buffer(&parts.headers, body, timeout, rules, max_body).await?;
                    let counted = Counted {
                        bytes_in: bytes.len() as u64,
                        stats: None,
                        max_body,
                    };
                    let req = Request::from_parts(parts, Either::Left(Full::new(bytes)));
                    counted.finish(inner.oneshot(req).await)
                })
            }
        }
    }
}

/// Finishes `limit`: tells the record how many bytes came in, and turns a send that failed
/// because the streamed body broke off at the cap into the client's 413.
#[derive(Default)]
pub struct Counted {
    bytes_in: u64,
    stats: Option<Arc<BodyStats>>,
    max_body: u64,
}

impl<RB> Finish<Result<Response<RB>, ProxyError>> for Counted {
    type Output = Response<RB>;
    fn finish(self, answer: Result<Response<RB>, ProxyError>) -> Result<Response<RB>, ProxyError> {
        let exceeded = self
            .stats
            .as_ref()
            .is_some_and(|s| s.exceeded.load(Ordering::Relaxed));
        match answer {
            // The body broke off at the cap; Medusa saw an incomplete message.
            Err(_) if exceeded => Err(ProxyError::PayloadTooLarge(self.max_body)),
            Err(e) => Err(e),
            Ok(mut resp) => {
                if self.bytes_in > 0 || self.stats.is_some() {
                    let noted = resp.extensions_mut().get_or_insert_default::<Noted>();
                    noted.bytes_in = self.bytes_in;
                    noted.streamed_in = self.stats;
                }
                Ok(resp)
            }
        }
    }
}

/// The client's body exceeded `policy.max_body` while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds policy.max_body ({0} bytes)")]
pub struct BodyTooLarge(pub u64);

/// What a streamed request body did, shared with the request's record.
#[derive(Debug, Default)]
pub struct BodyStats {
    /// Bytes passed on so far.
    pub bytes: AtomicU64,
    /// The body went past the cap and was broken off.
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
    /// Stream `inner`, breaking off after `limit` bytes; counts into `stats`.
    pub fn new(inner: Incoming, limit: u64, stats: Arc<BodyStats>) -> LimitedBody {
        LimitedBody {
            inner,
            remaining: limit,
            limit,
            stats,
        }
    }
}

impl Replayable for LimitedBody {
    /// A streamed body is never held whole: it cannot be sent again.
    fn replay(&self) -> Option<Self> {
        None
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
