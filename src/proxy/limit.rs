//! `limit`: the request body. A body declared larger than `policy.max_body` is refused before
//! a byte of it is read (413); a small or inspected body is buffered, within
//! `upstream.request_timeout` (408), and checked by the built-in body rules (see
//! [`super::replay`]); any other body streams through [`LimitedBody`], which breaks off at
//! `policy.max_body` so Medusa sees an incomplete message, never a truncated one presented as
//! whole. Buffered bodies are [`Replayable`] (sent again after a 401 or a broken pooled
//! connection); streamed ones are not.
//!
//! The buffering path is the one boxed future of this step (it waits for the client).
//!
//! Not `tower_http::limit::RequestBodyLimitLayer`: it caps the body, but the proxy must also
//! decide per request whether to buffer (for a replay after a 401, and for the built-in body
//! rules) or to stream, and must turn a stream broken off at the cap into the client's 413
//! after the send failed; that decision and that mapping are this step.

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
use super::record::Notes;
use super::replay::{self, Plan};
use crate::error::ProxyError;
use crate::policy::BodyRules;

/// The request body as the steps below `limit` see it: whole (replayable) or streamed.
pub type ProxyBody<B = Incoming> = Either<Full<Bytes>, LimitedBody<B>>;

/// What a client body must be for `limit` (hyper's `Incoming`; any body in tests).
pub trait ClientBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}
impl<B> ClientBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The `limit` layer: enforces `policy.max_body` on request bodies and buffers the ones that
/// are small or must be inspected. `max_body` is shared with the reloader.
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

/// The `limit` service: 413 for a body over the limit (declared, or reached while
/// streaming), 408 for a buffered body that does not arrive in time; the inner service gets
/// a [`ProxyBody`], whole or streamed.
#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    max_body: Arc<AtomicU64>,
    body_timeout: Duration,
}

impl<S, B, RB> Service<Request<B>> for Limit<S>
where
    B: ClientBody,
    S: Service<Request<ProxyBody<B>>, Response = Response<RB>, Error = ProxyError>
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

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let max_body = self.max_body.load(Ordering::Relaxed);
        if replay::content_length(req.headers()).is_some_and(|len| len > max_body) {
            return LayerFuture::refuse(ProxyError::PayloadTooLarge(max_body));
        }
        let rules = req
            .extensions()
            .get::<BodyRules>()
            .copied()
            .unwrap_or_default();
        let notes = req.extensions().get::<Notes>().cloned();
        let (parts, body) = req.into_parts();
        match replay::plan(&parts.headers, body.is_end_stream(), rules) {
            Err(e) => LayerFuture::refuse(e),
            Ok(Plan::Empty) => {
                let req = Request::from_parts(parts, Either::Left(Full::new(Bytes::new())));
                LayerFuture::called(self.inner.call(req), Counted::default())
            }
            Ok(Plan::Stream) => {
                let stats = Arc::new(BodyStats::default());
                if let Some(notes) = notes {
                    notes.note(|n| n.streamed_in = Some(stats.clone()));
                }
                let body = LimitedBody::new(body, max_body, stats.clone());
                let req = Request::from_parts(parts, Either::Right(body));
                let counted = Counted {
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
                    if let Some(notes) = notes {
                        notes.note(|n| n.bytes_in = bytes.len() as u64);
                    }
                    let counted = Counted {
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

/// Finishes `limit`: turns a send that failed because the streamed body broke off at the cap
/// into the client's 413.
#[derive(Default)]
pub struct Counted {
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
            other => other,
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
pub struct LimitedBody<B = Incoming> {
    inner: B,
    remaining: u64,
    limit: u64,
    stats: Arc<BodyStats>,
}

impl<B> LimitedBody<B> {
    /// Stream `inner`, breaking off after `limit` bytes; counts into `stats`.
    pub fn new(inner: B, limit: u64, stats: Arc<BodyStats>) -> LimitedBody<B> {
        LimitedBody {
            inner,
            remaining: limit,
            limit,
            stats,
        }
    }
}

impl<B> Replayable for LimitedBody<B> {
    /// A streamed body is never held whole: it cannot be sent again.
    fn replay(&self) -> Option<Self> {
        None
    }
}

impl<B: ClientBody> Body for LimitedBody<B> {
    type Data = Bytes;
    type Error = BoxError;

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
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures_util::stream;
    use http_body_util::{BodyExt, Empty, StreamBody};
    use tower::service_fn;

    use super::*;

    type Seen = Arc<Mutex<Vec<(bool, Bytes)>>>;

    /// Medusa stand-in: records whether each body could be replayed and what it read.
    fn medusa<B: ClientBody>(
        seen: Seen,
    ) -> impl Service<
        Request<ProxyBody<B>>,
        Response = Response<Empty<Bytes>>,
        Error = ProxyError,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        service_fn(move |req: Request<ProxyBody<B>>| {
            let seen = seen.clone();
            async move {
                let replayable = req.body().replay().is_some();
                let body = req.into_body().collect().await.map_err(|_| {
                    ProxyError::Upstream(crate::upstream::UpstreamError::Timeout(
                        Duration::from_secs(1),
                    ))
                })?;
                seen.lock().unwrap().push((replayable, body.to_bytes()));
                Ok(Response::new(Empty::new()))
            }
        })
    }

    fn layer(max: u64) -> LimitLayer {
        LimitLayer {
            max_body: Arc::new(AtomicU64::new(max)),
            body_timeout: Duration::from_secs(5),
        }
    }

    fn chunked(
        parts: &[&'static [u8]],
    ) -> StreamBody<
        impl futures_util::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>>
        + Send
        + Unpin
        + 'static,
    > {
        let frames: Vec<_> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(stream::iter(frames))
    }

    #[tokio::test]
    async fn a_declared_oversize_body_is_refused_before_a_byte_is_read() {
        let seen = Seen::default();
        let svc = layer(10).layer(medusa::<Full<Bytes>>(seen.clone()));
        let req = Request::post("/admin/products")
            .header("content-length", "11")
            .body(Full::new(Bytes::from_static(b"01234567890")))
            .unwrap();
        let err = svc.oneshot(req).await.unwrap_err();
        assert!(matches!(err, ProxyError::PayloadTooLarge(10)), "{err:?}");
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_small_declared_body_is_buffered_replayable_and_counted() {
        let seen = Seen::default();
        let svc = layer(1 << 20).layer(medusa::<Full<Bytes>>(seen.clone()));
        let mut req = Request::post("/admin/products")
            .header("content-length", "5")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let notes = Notes::default();
        req.extensions_mut().insert(notes.clone());
        svc.oneshot(req).await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [(true, Bytes::from_static(b"hello"))]
        );
        assert_eq!(notes.get().bytes_in, 5);
    }

    #[tokio::test]
    async fn a_chunked_body_streams_and_breaks_off_at_the_cap_as_a_413() {
        let seen = Seen::default();
        let svc = layer(8).layer(medusa(seen.clone()));
        let mut ok = Request::post("/admin/products")
            .body(chunked(&[b"abcd", b"efgh"]))
            .unwrap();
        let notes = Notes::default();
        ok.extensions_mut().insert(notes.clone());
        svc.clone().oneshot(ok).await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [(false, Bytes::from_static(b"abcdefgh"))]
        );
        let stats = notes.get().streamed_in;
        assert_eq!(stats.unwrap().bytes.load(Ordering::Relaxed), 8);
        let over = Request::post("/admin/products")
            .body(chunked(&[b"abcd", b"efgh", b"i"]))
            .unwrap();
        let err = svc.oneshot(over).await.unwrap_err();
        assert!(matches!(err, ProxyError::PayloadTooLarge(8)), "{err:?}");
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "Medusa never got the whole body"
        );
    }

    #[tokio::test]
    async fn an_inspected_body_that_sets_api_token_is_refused() {
        let seen = Seen::default();
        let svc = layer(1 << 20).layer(medusa(seen.clone()));
        let mut req = Request::post("/admin/users/usr_1")
            .header("content-type", "application/json")
            .body(chunked(&[b"{\"api_tok", b"en\": \"x\"}"]))
            .unwrap();
        req.extensions_mut().insert(BodyRules {
            refuse_api_token: true,
            always_inspect: true,
            ..BodyRules::default()
        });
        let err = svc.oneshot(req).await.unwrap_err();
        assert!(
            matches!(
                &err,
                ProxyError::Forbidden {
                    code: "route_denied",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_stalled_small_body_is_a_408() {
        let seen = Seen::default();
        let mut l = layer(1 << 20);
        l.body_timeout = Duration::from_millis(50);
        let svc = l.layer(medusa(seen.clone()));
        let stalled = StreamBody::new(stream::pending::<
            Result<Frame<Bytes>, std::convert::Infallible>,
        >());
        let req = Request::post("/admin/products")
            .header("content-length", "5")
            .body(stalled)
            .unwrap();
        let err = svc.oneshot(req).await.unwrap_err();
        assert!(matches!(err, ProxyError::BodyTimeout(_)), "{err:?}");
        assert!(seen.lock().unwrap().is_empty());
    }
}
