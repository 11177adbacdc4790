//! `admit`: the request's concurrency slot (`proxy.max_concurrent_requests`). Only a request
//! that passed every check takes one, so a refused request never holds one; beyond the cap the
//! answer is 503 at once rather than a queue (a queue hides overload and grows memory).
//!
//! Written here rather than taken from `tower::limit::ConcurrencyLimit`, which releases its
//! permit when the response *future* completes and waits for a permit in `poll_ready`: the slot
//! must be held until the response *body* ends (a long download is in flight until then, and
//! an upgraded connection until its tunnel closes), and a full proxy must answer, not wait.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tower::{Layer, Service};

use super::future::{Finish, LayerFuture};
use crate::error::ProxyError;

/// The `admit` layer: `max` slots shared by every request of the listener.
#[derive(Clone)]
pub struct AdmitLayer {
    slots: Arc<Semaphore>,
    max: usize,
}

impl AdmitLayer {
    /// At most `max` requests in flight.
    pub fn new(max: usize) -> AdmitLayer {
        AdmitLayer {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;
    fn layer(&self, inner: S) -> Admit<S> {
        Admit {
            inner,
            slots: self.slots.clone(),
            max: self.max,
        }
    }
}

/// The `admit` service: takes a slot for each request, or answers 503 at once when all are
/// taken; the slot travels with the response body (or the upgraded tunnel) and is given back
/// when that ends, or when the inner service fails.
#[derive(Clone)]
pub struct Admit<S> {
    inner: S,
    slots: Arc<Semaphore>,
    max: usize,
}

/// Hand the slot to an upgraded connection's tunnel (a response extension set by `upgrade`
/// on a 101): the tunnel holds it until it closes.
/// (Extensions must be `Clone`: the sender sits behind a shared, take-once cell; only
/// upgrades pay for it.)
#[derive(Debug, Clone)]
pub struct TunnelSlot(pub Arc<std::sync::Mutex<Option<oneshot::Sender<OwnedSemaphorePermit>>>>);

impl<S, B, RB> Service<Request<B>> for Admit<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = ProxyError>,
{
    type Response = Response<Held<RB>>;
    type Error = ProxyError;
    type Future = LayerFuture<S::Future, Hold, Response<Held<RB>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => LayerFuture::called(self.inner.call(req), Hold(permit)),
            Err(_) => LayerFuture::refuse(ProxyError::Overloaded(self.max)),
        }
    }
}

/// Finishes `admit`: the slot goes with the response body (or to the tunnel); an error gives
/// it back at once.
pub struct Hold(OwnedSemaphorePermit);

impl<RB> Finish<Result<Response<RB>, ProxyError>> for Hold {
    type Output = Response<Held<RB>>;
    fn finish(self, answer: Result<Response<RB>, ProxyError>) -> Result<Self::Output, ProxyError> {
        let mut resp = answer?;
        let permit = match resp.extensions_mut().remove::<TunnelSlot>() {
            Some(TunnelSlot(tunnel)) => match tunnel.lock().ok().and_then(|mut t| t.take()) {
                Some(tunnel) => tunnel.send(self.0).err(),
                None => Some(self.0),
            },
            None => Some(self.0),
        };
        Ok(resp.map(|inner| Held {
            inner,
            _permit: permit,
        }))
    }
}

/// A response body holding the request's slot until it ends or is dropped.
#[derive(Debug)]
pub struct Held<B> {
    inner: B,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<B: Body + Unpin> Body for Held<B> {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceExt, service_fn};

    use super::*;

    fn counted(
        calls: Arc<AtomicUsize>,
    ) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = ProxyError> + Clone
    {
        service_fn(move |req: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if req.uri().path() == "/fail" {
                    return Err(ProxyError::BadRequest("stand-in failure"));
                }
                Ok(Response::new(Full::new(Bytes::from_static(b"body"))))
            }
        })
    }

    fn req(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn the_slot_is_held_until_the_body_ends_and_beyond_the_cap_the_answer_is_503() {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = AdmitLayer::new(1);
        let svc = layer.layer(counted(calls.clone()));
        let first = svc.clone().oneshot(req("/a")).await.unwrap();
        let refused = svc.clone().oneshot(req("/b")).await.unwrap_err();
        assert!(matches!(refused, ProxyError::Overloaded(1)), "{refused:?}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a refused request never reaches Medusa"
        );
        // Reading the body to its end and dropping it gives the slot back.
        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"body");
        assert!(svc.clone().oneshot(req("/c")).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_error_gives_the_slot_back_at_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = AdmitLayer::new(1).layer(counted(calls.clone()));
        assert!(svc.clone().oneshot(req("/fail")).await.is_err());
        let ok = svc.clone().oneshot(req("/a")).await;
        assert!(ok.is_ok(), "the failed request kept its slot");
    }

    #[tokio::test]
    async fn a_tunnel_holds_the_slot_until_it_closes() {
        let layer = AdmitLayer::new(1);
        let (tx, rx) = oneshot::channel();
        let tunnel = TunnelSlot(Arc::new(std::sync::Mutex::new(Some(tx))));
        let svc = layer.layer(service_fn(move |_: Request<()>| {
            let tunnel = tunnel.clone();
            async move {
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                resp.extensions_mut().insert(tunnel);
                Ok::<_, ProxyError>(resp)
            }
        }));
        let resp = svc.clone().oneshot(req("/ws")).await.unwrap();
        drop(resp);
        let held = rx.await.expect("the tunnel got the slot");
        assert!(
            matches!(
                svc.clone().oneshot(req("/b")).await,
                Err(ProxyError::Overloaded(1))
            ),
            "the response is gone but the tunnel holds the slot"
        );
        drop(held);
        assert!(svc.clone().oneshot(req("/b")).await.is_ok());
    }
}
