//! Sending a request once more when its connection broke before a response head arrived.
//!
//! A keep-alive connection Medusa closes just as a request is written to it (Node's 5 s
//! keep-alive timeout racing the pool's reuse) fails the request without an answer. Medusa
//! may or may not have seen it, so it is sent again only when that is harmless: an
//! idempotent method (RFC 9110 §9.2.2) and a body the caller still holds whole
//! ([`Replayable`]). Once, never twice: a Medusa that breaks every connection gets the
//! error back. The response of a second attempt carries [`Resent`] in its extensions, so the
//! caller can count it.
//!
//! A request that never left the proxy (hyper hands it back unsent) is a different case,
//! sent again by the client whatever its method (see `client.rs`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::{Method, Request, Response};
use http_body_util::{Either, Empty, Full};
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

use super::error::UpstreamError;

/// A request body that may be sent again: `Some(copy)` when the whole body is held.
///
/// Called before the body is first polled. Implement it for a body type of your own to let
/// [`Resend`] send it again; a streamed body returns `None`.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{Either, Full};
/// use medusa_auth_proxy::upstream::Replayable;
///
/// /// A body streamed from somewhere else: gone once sent.
/// struct Streamed;
/// impl Replayable for Streamed {
///     fn replay(&self) -> Option<Self> {
///         None
///     }
/// }
///
/// let held: Either<Full<Bytes>, Streamed> = Either::Left(Full::new(Bytes::from_static(b"{}")));
/// assert!(held.replay().is_some());
/// assert!(Either::<Full<Bytes>, _>::Right(Streamed).replay().is_none());
/// ```
pub trait Replayable: Sized {
    /// A copy to send again, or `None` if this body cannot be sent twice.
    fn replay(&self) -> Option<Self>;
}

impl<D: Buf + Clone> Replayable for Full<D> {
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl Replayable for Empty<Bytes> {
    fn replay(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

impl<L: Replayable, R: Replayable> Replayable for Either<L, R> {
    fn replay(&self) -> Option<Self> {
        match self {
            Either::Left(l) => l.replay().map(Either::Left),
            Either::Right(r) => r.replay().map(Either::Right),
        }
    }
}

/// Response extension: this response answers the request's second attempt, sent after its
/// connection broke (see the module docs).
///
/// ```
/// # fn count(resp: &http::Response<()>) -> bool {
/// use medusa_auth_proxy::upstream::Resent;
/// resp.extensions().get::<Resent>().is_some()
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resent;

/// RFC 9110 §9.2.2: the methods whose intended effect is the same however often they are
/// sent. (POST and PATCH are not; CONNECT is not sent this way at all.)
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Layer of [`Resend`].
///
/// ```
/// use tower::ServiceBuilder;
/// # use medusa_auth_proxy::upstream::{ResendLayer, UpstreamError};
/// # let client = tower::service_fn(|_req: http::Request<http_body_util::Full<bytes::Bytes>>| async {
/// #     Ok::<_, UpstreamError>(http::Response::new(()))
/// # });
/// let service = ServiceBuilder::new().layer(ResendLayer).service(client);
/// # let _ = service;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ResendLayer;

impl<S> Layer<S> for ResendLayer {
    type Service = Resend<S>;

    fn layer(&self, inner: S) -> Resend<S> {
        Resend { inner }
    }
}

/// Sends a request once more when its connection broke before a response head
/// ([`UpstreamError::is_connection_broken`]), if its method is idempotent and its body
/// [`Replayable`]; marks that response with [`Resent`].
#[derive(Clone, Debug)]
pub struct Resend<S> {
    inner: S,
}

impl<S> Resend<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, RB> Service<Request<B>> for Resend<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = UpstreamError> + Clone,
    B: Replayable,
{
    type Response = Response<RB>;
    type Error = UpstreamError;
    type Future = ResendFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> ResendFuture<S, B> {
        // The copy is made before the body is polled. The service polled ready above serves
        // the first attempt; a clone, polled ready in its turn, the second.
        let again = match is_idempotent(req.method()) {
            true => req
                .body()
                .replay()
                .map(|body| (self.inner.clone(), copy(&req, body))),
            false => None,
        };
        ResendFuture {
            state: State::First {
                future: self.inner.call(req),
            },
            again,
        }
    }
}

/// The same request with `body`: method, target, version and headers. Not the extensions:
/// the client below reads none, and copying them cost four allocations per request
/// (`bench/instructions-per-request.sh`).
fn copy<B>(req: &Request<B>, body: B) -> Request<B> {
    let mut again = Request::new(body);
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    again
}

pin_project_lite::pin_project! {
    /// Future of [`Resend`].
    pub struct ResendFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future, Oneshot<S, Request<B>>>,
        // The service and the request for a second attempt, while one may still be made.
        again: Option<(S, Request<B>)>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, G> {
        First { #[pin] future: F },
        Second { #[pin] future: G },
    }
}

impl<S, B, RB> Future for ResendFuture<S, B>
where
    S: Service<Request<B>, Response = Response<RB>, Error = UpstreamError>,
{
    type Output = Result<Response<RB>, UpstreamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::First { future } => match ready!(future.poll(cx)) {
                    Err(e) if e.is_connection_broken() => match this.again.take() {
                        Some((service, req)) => {
                            tracing::debug!(
                                error = %super::chain::error_chain(&e),
                                "upstream connection broke; sending an idempotent request once more"
                            );
                            this.state.set(State::Second {
                                future: service.oneshot(req),
                            });
                        }
                        None => return Poll::Ready(Err(e)),
                    },
                    done => return Poll::Ready(done),
                },
                StateProj::Second { future } => {
                    let mut resp = ready!(future.poll(cx))?;
                    resp.extensions_mut().insert(Resent);
                    return Poll::Ready(Ok(resp));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    /// A broken-connection error as hyper reports one: the connection closed before the
    /// response head.
    async fn broken() -> UpstreamError {
        use hyper_util::rt::TokioIo;
        let (io, peer) = tokio::io::duplex(64);
        drop(peer);
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        let e = tx
            .send_request(Request::new(Empty::new()))
            .await
            .unwrap_err();
        UpstreamError::ConnectionBroken(e)
    }

    /// A stand-in for the client: fails the first `failures` calls with a broken connection,
    /// then answers 200; counts the calls.
    fn flaky<B: Send + 'static>(
        failures: usize,
    ) -> (
        impl Service<Request<B>, Response = Response<()>, Error = UpstreamError, Future = impl Send>
        + Clone,
        Arc<AtomicUsize>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let svc = tower::service_fn(move |_req: Request<B>| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match n < failures {
                    true => Err(broken().await),
                    false => Ok(Response::new(())),
                }
            }
        });
        (svc, calls)
    }

    fn request<B>(method: Method, body: B) -> Request<B> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = "/admin/products".parse().unwrap();
        req.headers_mut()
            .insert("x-kept", http::HeaderValue::from_static("1"));
        req
    }

    fn full() -> Full<Bytes> {
        Full::new(Bytes::from_static(b"{}"))
    }

    /// A body that is never replayable, like a body streamed from the client.
    struct Streamed;
    impl Replayable for Streamed {
        fn replay(&self) -> Option<Self> {
            None
        }
    }

    #[tokio::test]
    async fn a_get_whose_connection_broke_is_sent_once_more_and_marked() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = {
            let (seen, calls) = (seen.clone(), calls.clone());
            tower::service_fn(move |req: Request<Full<Bytes>>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                seen.lock().unwrap().push((
                    req.method().clone(),
                    req.uri().to_string(),
                    req.headers().get("x-kept").cloned(),
                ));
                async move {
                    match n {
                        0 => Err(broken().await),
                        _ => Ok(Response::new(())),
                    }
                }
            })
        };
        let resp = ResendLayer
            .layer(svc)
            .oneshot(request(Method::GET, full()))
            .await
            .expect("answered by the second attempt");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(resp.extensions().get::<Resent>(), Some(&Resent));
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0], seen[1], "the same request both times");
    }

    #[tokio::test]
    async fn a_request_answered_at_once_is_sent_once_and_not_marked() {
        let (svc, calls) = flaky::<Full<Bytes>>(0);
        let resp = ResendLayer
            .layer(svc)
            .oneshot(request(Method::GET, full()))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(resp.extensions().get::<Resent>().is_none());
    }

    #[tokio::test]
    async fn a_post_is_never_sent_again() {
        let (svc, calls) = flaky::<Full<Bytes>>(1);
        let e = ResendLayer
            .layer(svc)
            .oneshot(request(Method::POST, full()))
            .await
            .unwrap_err();
        assert!(e.is_connection_broken());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_that_cannot_be_replayed_is_never_sent_again() {
        let (svc, calls) = flaky::<Either<Full<Bytes>, Streamed>>(1);
        let e = ResendLayer
            .layer(svc)
            .oneshot(request(Method::PUT, Either::Right(Streamed)))
            .await
            .unwrap_err();
        assert!(e.is_connection_broken());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_request_is_never_sent_a_third_time() {
        let (svc, calls) = flaky::<Empty<Bytes>>(5);
        let e = ResendLayer
            .layer(svc)
            .oneshot(request(Method::DELETE, Empty::new()))
            .await
            .unwrap_err();
        assert!(e.is_connection_broken());
        assert_eq!(calls.load(Ordering::SeqCst), 2, "once more, not twice");
    }

    #[tokio::test]
    async fn other_failures_are_not_sent_again() {
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = {
            let calls = calls.clone();
            tower::service_fn(move |_req: Request<Full<Bytes>>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    Err::<Response<()>, _>(UpstreamError::Timeout(std::time::Duration::from_secs(
                        1,
                    )))
                }
            })
        };
        let e = ResendLayer
            .layer(svc)
            .oneshot(request(Method::GET, full()))
            .await
            .unwrap_err();
        assert!(e.is_timeout());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn idempotent_methods_are_those_of_rfc_9110() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(is_idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PURGE"] {
            assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
        }
    }
}
