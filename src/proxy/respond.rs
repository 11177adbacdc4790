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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderValue, Method, StatusCode, header};
    use tower::ServiceExt;

    use super::*;
    use crate::proxy::testing::{body_text, response, stand_in};

    /// Answer one request whose next step fails with `e` (or succeeds, `None`).
    async fn answered(
        e: impl Fn() -> ProxyError + Send + Sync + 'static,
        metrics: &Arc<Metrics>,
    ) -> Response<Either<Full<Bytes>, Full<Bytes>>> {
        let (inner, probe) = stand_in(move |_| Err::<Response<Full<Bytes>>, _>(e()));
        let req = Request::builder()
            .method(Method::POST)
            .uri("/admin/products")
            .body(())
            .unwrap();
        let resp = RespondLayer(metrics.clone())
            .layer(inner)
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(probe.calls(), 1);
        resp
    }

    async fn json(resp: Response<Either<Full<Bytes>, Full<Bytes>>>) -> serde_json::Value {
        assert!(
            matches!(resp.body(), Either::Right(_)),
            "the proxy's own body"
        );
        serde_json::from_str(&body_text(resp.into_body()).await).unwrap()
    }

    fn counted(metrics: &Metrics, line: &str) -> bool {
        metrics.encode().lines().any(|l| l == line)
    }

    #[tokio::test]
    async fn a_denial_is_json_with_its_code_and_status_and_is_counted() {
        let metrics = Metrics::new();
        let resp = answered(
            || ProxyError::Forbidden {
                code: "route_denied",
                message: "path is in policy.deny_paths".into(),
            },
            &metrics,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
        let v = json(resp).await;
        assert_eq!(v["error"], "route_denied");
        assert_eq!(v["message"], "path is in policy.deny_paths");
        assert!(counted(
            &metrics,
            "medusa_auth_proxy_denied_requests_total{reason=\"route_denied\"} 1"
        ));
    }

    #[tokio::test]
    async fn medusa_failures_count_as_upstream_errors() {
        let metrics = Metrics::new();
        let resp = answered(
            || {
                ProxyError::from(crate::upstream::UpstreamError::Timeout(
                    Duration::from_secs(30),
                ))
            },
            &metrics,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(json(resp).await["error"], "upstream_timeout");
        let resp = answered(|| ProxyError::UpstreamEncoded("gzip".into()), &metrics).await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(json(resp).await["error"], "upstream_encoded");
        assert!(counted(
            &metrics,
            "medusa_auth_proxy_upstream_errors_total{kind=\"timeout\"} 1"
        ));
        assert!(counted(
            &metrics,
            "medusa_auth_proxy_upstream_errors_total{kind=\"encoded\"} 1"
        ));
        // Not also counted as a denial.
        assert!(!metrics.encode().contains("reason=\"upstream_timeout\""));
    }

    #[tokio::test]
    async fn overloaded_and_no_token_say_when_to_retry() {
        let metrics = Metrics::new();
        let resp = answered(|| ProxyError::Overloaded(64), &metrics).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(json(resp).await["error"], "overloaded");

        let resp = answered(
            || ProxyError::NoToken {
                reason: "login failed".into(),
                retry_after: Duration::from_millis(2500),
            },
            &metrics,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        assert_eq!(json(resp).await["error"], "no_token");

        let resp = answered(|| ProxyError::TokenRejected, &metrics).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(json(resp).await["error"], "no_token");

        assert!(counted(
            &metrics,
            "medusa_auth_proxy_denied_requests_total{reason=\"overloaded\"} 1"
        ));
        assert!(counted(
            &metrics,
            "medusa_auth_proxy_denied_requests_total{reason=\"no_token\"} 2"
        ));
    }

    #[tokio::test]
    async fn a_client_key_refusal_asks_for_proxy_authentication() {
        let metrics = Metrics::new();
        let resp = answered(
            || ProxyError::ProxyAuth {
                code: "proxy_auth_required",
                message: "key needed",
            },
            &metrics,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert_eq!(
            resp.headers()[header::PROXY_AUTHENTICATE],
            HeaderValue::from_static("Bearer")
        );
        assert_eq!(json(resp).await["error"], "proxy_auth_required");
    }

    #[tokio::test]
    async fn an_answer_passes_through_and_counts_nothing() {
        let metrics = Metrics::new();
        let before = metrics.encode();
        let (inner, probe) = stand_in(|_| {
            let mut resp = response(StatusCode::NOT_FOUND, "medusa's own 404");
            resp.headers_mut()
                .insert("x-medusa", HeaderValue::from_static("1"));
            Ok(resp)
        });
        let resp = RespondLayer(metrics.clone())
            .layer(inner)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(probe.calls(), 1);
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()["x-medusa"], "1");
        assert!(matches!(resp.body(), Either::Left(_)), "Medusa's own body");
        assert_eq!(body_text(resp.into_body()).await, "medusa's own 404");
        assert_eq!(metrics.encode(), before);
    }
}
