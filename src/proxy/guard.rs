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

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use tower::ServiceExt;

    use super::*;
    use crate::proxy::testing::{response, stand_in};

    fn request() -> Request<&'static str> {
        Request::builder()
            .method(Method::POST)
            .uri("/admin/products?limit=1")
            .header("x-client", "kept")
            .body("payload")
            .unwrap()
    }

    #[tokio::test]
    async fn conflicting_framing_is_a_bad_request_that_reaches_nobody() {
        let (inner, probe) = stand_in(|_| Ok(response(StatusCode::OK, "")));
        let mut req = request();
        req.extensions_mut().insert(ConflictingFraming);
        // Both flags: the smuggling probe is named, not the size.
        req.extensions_mut().insert(HeadTooLarge(8192));
        let err = GuardLayer.layer(inner).oneshot(req).await.unwrap_err();
        assert!(matches!(err, ProxyError::BadRequest(_)), "{err:?}");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.code(), "bad_request");
        assert_eq!(probe.calls(), 0);
    }

    #[tokio::test]
    async fn an_oversized_head_is_431_that_reaches_nobody() {
        let (inner, probe) = stand_in(|_| Ok(response(StatusCode::OK, "")));
        let mut req = request();
        req.extensions_mut().insert(HeadTooLarge(8192));
        let err = GuardLayer.layer(inner).oneshot(req).await.unwrap_err();
        assert!(matches!(err, ProxyError::HeadTooLarge(8192)), "{err:?}");
        assert_eq!(err.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(err.code(), "header_too_large");
        assert_eq!(probe.calls(), 0);
    }

    #[tokio::test]
    async fn anything_else_passes_unchanged_both_ways() {
        let (inner, probe) = stand_in(|_| {
            let mut resp = response(StatusCode::CREATED, "made");
            resp.headers_mut()
                .insert("x-medusa", http::HeaderValue::from_static("1"));
            Ok(resp)
        });
        let resp = GuardLayer.layer(inner).oneshot(request()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()["x-medusa"], "1");
        assert_eq!(probe.calls(), 1);
        let seen = probe.last();
        assert_eq!(seen.method(), Method::POST);
        assert_eq!(seen.uri(), "/admin/products?limit=1");
        assert_eq!(seen.headers()["x-client"], "kept");
        assert_eq!(*seen.body(), "payload");
    }

    #[tokio::test]
    async fn the_inner_error_is_passed_on() {
        let (inner, probe) = stand_in::<&str, ()>(|_| Err(ProxyError::Overloaded(2)));
        let err = GuardLayer
            .layer(inner)
            .oneshot(request())
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Overloaded(2)), "{err:?}");
        assert_eq!(probe.calls(), 1);
    }
}
