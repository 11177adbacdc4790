//! `guard`: requests that must not be forwarded at all, as the connection reader flagged
//! them (`crate::sniff`, `crate::server`): Content-Length together with Transfer-Encoding
//! (a smuggling probe; RFC 9112 §6.1 lets a server reject it, and hyper closes the
//! connection after the answer) and a request head larger than the server's
//! `Limits::max_head_bytes` (64 KiB).

use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use super::future::{LayerFuture, Pass};
use crate::error::ProxyError;
use crate::server::HeadTooLarge;
use crate::sniff::ConflictingFraming;

/// The `guard` layer: refuses what the connection reader flagged (see the module
/// documentation). Holds no state.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardLayer;

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard { inner }
    }
}

/// The `guard` service: answers 400 to a request with both `Content-Length` and
/// `Transfer-Encoding` and 431 to an oversized head, and passes anything else on untouched.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Guard<S>
where
    S: Service<Request<B>, Error = ProxyError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = LayerFuture<S::Future, Pass, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if req.extensions().get::<ConflictingFraming>().is_some() {
            return LayerFuture::refuse(ProxyError::BadRequest(
                "Content-Length together with Transfer-Encoding",
            ));
        }
        if let Some(HeadTooLarge(limit)) = req.extensions().get() {
            return LayerFuture::refuse(ProxyError::HeadTooLarge(*limit));
        }
        LayerFuture::called(self.inner.call(req), Pass)
    }
}
