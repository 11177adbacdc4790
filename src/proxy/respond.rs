//! `respond`: the one place a [`ProxyError`] becomes the client's answer. It logs the
//! failure once, counts it in the metric its class names ([`ProxyError::counted`]), under the
//! identity the request was served as ([`Attribution`]), and answers JSON with the status the
//! class gives. Below it every step returns `Result<_, ProxyError>`; above it nothing can
//! fail.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use tower::{Layer, Service};

use super::record::{Attribution, Notes};
use crate::error::{Counted, ProxyError};
use crate::metrics::IdentityMetrics;

/// The `respond` layer: turns the [`ProxyError`] of the steps below into the client's JSON
/// answer, counting it under the identity the [`Attribution`] it holds gives.
#[derive(Clone)]
pub struct RespondLayer(pub Attribution);

impl<S> Layer<S> for RespondLayer {
    type Service = Respond<S>;
    fn layer(&self, inner: S) -> Respond<S> {
        Respond {
            inner,
            by: self.0.clone(),
        }
    }
}

/// The `respond` service: errors of the steps below become JSON responses.
#[derive(Clone)]
pub struct Respond<S> {
    inner: S,
    by: Attribution,
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
        // `access` notes the identity it picks there, after this step has passed the request.
        let notes = self
            .by
            .per_request()
            .then(|| req.extensions().get::<Notes>().cloned())
            .flatten();
        RespondFuture {
            method: req.method().clone(),
            inner: self.inner.call(req),
            by: self.by.clone(),
            notes,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Respond`]: the inner future, and what logging and counting a failure
    /// needs (the request's method, whose series it counts in).
    pub struct RespondFuture<F> {
        #[pin]
        inner: F,
        method: http::Method,
        by: Attribution,
        notes: Option<Notes>,
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
            Err(e) => answer(e, this.method, this.by.of(this.notes.as_ref())).map(Either::Right),
        }))
    }
}

/// Count (under `identity`), log and answer one failure.
pub fn answer(
    e: ProxyError,
    method: &http::Method,
    identity: &IdentityMetrics,
) -> Response<Full<Bytes>> {
    match e.counted() {
        Counted::Upstream(kind) => identity.upstream_error(kind),
        Counted::Denied(reason) => identity.denied(reason),
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
    use crate::metrics::Metrics;
    use crate::proxy::testing::{body_text, response, stand_in};

    /// Every failure counted under one identity, `default`, as on the single form's listener.
    fn as_default(metrics: &Metrics) -> RespondLayer {
        RespondLayer(Attribution::fixed(metrics.identity("default")))
    }

    /// Answer one request whose next step fails with `e` (or succeeds, `None`).
    async fn answered(
        e: impl Fn() -> ProxyError + Send + Sync + 'static,
        metrics: &Metrics,
    ) -> Response<Either<Full<Bytes>, Full<Bytes>>> {
        let (inner, probe) = stand_in(move |_| Err::<Response<Full<Bytes>>, _>(e()));
        let req = Request::builder()
            .method(Method::POST)
            .uri("/admin/products")
            .body(())
            .unwrap();
        let resp = as_default(metrics).layer(inner).oneshot(req).await.unwrap();
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
            "medusa_auth_proxy_denied_requests_total{identity=\"default\",reason=\"route_denied\"} 1"
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
            "medusa_auth_proxy_upstream_errors_total{identity=\"default\",kind=\"timeout\"} 1"
        ));
        assert!(counted(
            &metrics,
            "medusa_auth_proxy_upstream_errors_total{identity=\"default\",kind=\"encoded\"} 1"
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
            "medusa_auth_proxy_denied_requests_total{identity=\"default\",reason=\"overloaded\"} 1"
        ));
        assert!(counted(
            &metrics,
            "medusa_auth_proxy_denied_requests_total{identity=\"default\",reason=\"no_token\"} 2"
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
        // The identity's series exist (as 0) from when its listener is built.
        let layer = as_default(&metrics);
        let before = metrics.encode();
        let (inner, probe) = stand_in(|_| {
            let mut resp = response(StatusCode::NOT_FOUND, "medusa's own 404");
            resp.headers_mut()
                .insert("x-medusa", HeaderValue::from_static("1"));
            Ok(resp)
        });
        let resp = layer.layer(inner).oneshot(Request::new(())).await.unwrap();
        assert_eq!(probe.calls(), 1);
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()["x-medusa"], "1");
        assert!(matches!(resp.body(), Either::Left(_)), "Medusa's own body");
        assert_eq!(body_text(resp.into_body()).await, "medusa's own 404");
        assert_eq!(metrics.encode(), before);
    }
}
