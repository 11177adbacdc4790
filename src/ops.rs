//! The ops listener: liveness, readiness, metrics.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use std::sync::Arc;

use crate::auth::TokenManager;
use crate::error::{json_response, json_value};
use crate::metrics::Metrics;

/// The token manager's events, counted in the proxy's registry. Here, where readiness and
/// metrics meet, rather than in `metrics` (which `auth` must not depend on, nor the other way).
impl crate::auth::TokenEvents for Metrics {
    fn login(&self, kind: &'static str, ok: bool) {
        Metrics::login(self, kind, ok);
    }

    fn token_expiry(&self, unix_seconds: f64) {
        Metrics::token_expiry(self, unix_seconds);
    }

    fn token_check(&self, outcome: &'static str) {
        Metrics::token_check(self, outcome);
    }
}

/// The ops listener's handler: `GET /healthz` (liveness: 200 while the process answers),
/// `GET /readyz` (200 with `token_usable_for_s` while a usable token is held, 503 with the
/// public reason otherwise) and `GET /metrics` (OpenMetrics text of [`Metrics`]). Other
/// paths answer 404, other methods than GET and HEAD 405, all as JSON.
///
/// ```no_run
/// # async fn demo(tokens: medusa_auth_proxy::auth::TokenManager) {
/// use std::sync::Arc;
/// use medusa_auth_proxy::{metrics::Metrics, ops::Ops};
///
/// let ops = Arc::new(Ops::new(tokens, Metrics::new()));
/// let service = tower::service_fn(move |req| {
///     let ops = ops.clone();
///     async move { Ok::<_, std::convert::Infallible>(ops.handle(req).await) }
/// });
/// # let _ = service;
/// # }
/// ```
pub struct Ops {
    tokens: TokenManager,
    metrics: Arc<Metrics>,
}

impl Ops {
    /// Readiness from `tokens`, metrics from `metrics`.
    pub fn new(tokens: TokenManager, metrics: Arc<Metrics>) -> Ops {
        Ops { tokens, metrics }
    }

    /// Answer one request (see [`Ops`]). Never fails: every outcome is a response.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET",
            );
        }
        match req.uri().path() {
            // Liveness: the process runs and answers.
            "/healthz" => json_value(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            // Readiness: a valid token is held, so a request sent now would be forwarded.
            "/readyz" => match self.tokens.readiness().await {
                Ok(left) => json_value(
                    StatusCode::OK,
                    &serde_json::json!({"status": "ready", "token_usable_for_s": left.as_secs()}),
                ),
                Err(reason) => json_value(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"status": "not_ready", "reason": reason}),
                ),
            },
            "/metrics" => {
                let mut resp = Response::new(Full::new(Bytes::from(self.metrics.encode())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "ops endpoints: /healthz, /readyz, /metrics",
            ),
        }
    }
}
