//! `respond`: the one place a [`ProxyError`] becomes the client's answer. It logs the
//! failure once, counts it in the metric its class names ([`ProxyError::counted`]) and
//! answers JSON with the status the class gives. Below it every step returns
//! `Result<_, ProxyError>`; above it nothing can fail.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use tower::{Layer, Service};

use crate::error::{Counted, ProxyError};
use crate::metrics::Metrics;

/// The `respond` layer: turns the [`ProxyError`] of the steps below into the client's JSON
/// answer, counting it in the [`Metrics`] it holds.
#[derive(Clone)]
pub struct RespondLayer(pub Arc<Metrics>);

impl<S> Layer<S> for RespondLayer {
    type Service = Respond<S>;
    fn layer(&self, inner: S) -> Respond<S> {
        Respond {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The `respond` service: errors of the steps below become JSON responses.
#[derive(Clone)]
pub struct Respond<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> Service<Request<B>> for Respond<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = ProxyError>,
{
    type Response = Response<Either<RB, Full<Bytes>>>;
    type Error = Infallible;
    type Future = RespondFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The steps below are always ready (they refuse rather than queue); an error here
        // would be answered by the call.
        let _ = ready!(self.inner.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        RespondFuture {
            method: req.method().clone(),
            inner: self.inner.call(req),
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Respond`]: the inner future, and what logging and counting a failure
    /// needs (the request's method, the metrics).
    pub struct RespondFuture<F> {
        #[pin]
        inner: F,
        method: http::Method,
        metrics: Arc<Metrics>,
    }
}

impl<F, RB> Future for RespondFuture<F>
where
    F: Future<Output = Result<Response<RB>, ProxyError>>,
{
    type Output = Result<Response<Either<RB, Full<Bytes>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(match ready!(this.inner.poll(cx)) {
            Ok(resp) => resp.map(Either::Left),
            Err(e) => answer(e, this.method, this.metrics).map(Either::Right),
        }))
    }
}

/// Count, log and answer one failure.
pub fn answer(e: ProxyError, method: &http::Method, metrics: &Metrics) -> Response<Full<Bytes>> {
    match e.counted() {
        Counted::Upstream(kind) => metrics.upstream_error(kind),
        Counted::Denied(reason) => metrics.denied(reason),
    }
    tracing::warn!(method = %method, status = e.status().as_u16(), class = ?e.class(), error = %e, "request failed");
    e.into_response()
}
