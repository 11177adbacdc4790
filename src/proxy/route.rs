//! `route`: each request to the credential and upstream of its identity (the [`Identity`]
//! request extension set by `access`). With one identity there is nothing to look up: the
//! request goes straight to the one service, as before identities existed.

use std::future::{Ready, ready};
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::Request;
use tower::Service;

use crate::error::ProxyError;
use crate::identity::Identity;

/// One service per identity, in the identities' order; picks by [`Identity::index`].
#[derive(Clone)]
pub struct ByIdentity<S> {
    services: Vec<S>,
}

impl<S> ByIdentity<S> {
    /// `services[i]` serves identity `i`. At least one.
    pub fn new(services: Vec<S>) -> ByIdentity<S> {
        ByIdentity { services }
    }
}

impl<S, B, R> Service<Request<B>> for ByIdentity<S>
where
    S: Service<Request<B>, Response = R, Error = ProxyError>,
{
    type Response = R;
    type Error = ProxyError;
    type Future = Either<S::Future, Ready<Result<R, ProxyError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Every service is ready before any is called (the upstream client always is).
        let mut pending = false;
        for s in &mut self.services {
            match s.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => pending = true,
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let [only] = &mut self.services[..] {
            return Either::Left(only.call(req));
        }
        let index = req.extensions().get::<Identity>().map(Identity::index);
        match index.and_then(|i| self.services.get_mut(i)) {
            Some(s) => Either::Left(s.call(req)),
            // `access` sets the identity of every request it admits; never guess one.
            None => Either::Right(ready(Err(ProxyError::Internal(
                "request without an identity",
            )))),
        }
    }
}
