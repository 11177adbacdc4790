//! The ops listener: liveness, readiness, metrics.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use std::sync::Arc;

use crate::auth::TokenManager;
use crate::error::{json_response, json_value};
use crate::identity::Identity;
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
        Metrics::token_check(self, crate::config::DEFAULT_IDENTITY, outcome);
    }
}

/// One identity's token events: the process-wide families as before (the expiry gauge from
/// the first identity only, so the single form's metrics read as they always did), and the
/// `identity`-labelled ones.
pub struct IdentityEvents {
    identity: Arc<str>,
    metrics: Arc<Metrics>,
    primary: bool,
}

impl IdentityEvents {
    /// Events of identity `identity`; `primary`: the first one, which also sets the
    /// unlabelled `token_expiry_timestamp_seconds`.
    pub fn new(identity: &str, metrics: Arc<Metrics>, primary: bool) -> Arc<IdentityEvents> {
        Arc::new(IdentityEvents {
            identity: identity.into(),
            metrics,
            primary,
        })
    }
}

impl crate::auth::TokenEvents for IdentityEvents {
    fn login(&self, kind: &'static str, ok: bool) {
        self.metrics.login(kind, ok);
        self.metrics.identity_login(&self.identity, kind, ok);
    }

    fn token_expiry(&self, unix_seconds: f64) {
        if self.primary {
            self.metrics.token_expiry(unix_seconds);
        }
        self.metrics
            .identity_token_expiry(&self.identity, unix_seconds);
    }

    fn token_check(&self, outcome: &'static str) {
        self.metrics.token_check(&self.identity, outcome);
    }
}

/// The ops listener's handler: `GET /healthz` (liveness: 200 while the process answers),
/// `GET /readyz` (200 with `token_usable_for_s` while every identity holds a usable token,
/// 503 with the public reason otherwise; each identity named with its state, `?identity=NAME`
/// for one) and `GET /metrics` (OpenMetrics text of [`Metrics`]). Other
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
    identities: arc_swap::ArcSwap<Vec<Identity>>,
    metrics: Arc<Metrics>,
}

impl Ops {
    /// One identity, `default`, with these tokens (the single form): readiness from
    /// `tokens`, metrics from `metrics`.
    pub fn new(tokens: TokenManager, metrics: Arc<Metrics>) -> Ops {
        Ops::with_identities(
            vec![Identity::new(
                0,
                crate::config::DEFAULT_IDENTITY,
                tokens,
                None,
            )],
            metrics,
        )
    }

    /// Every identity: `/readyz` is 200 only when each holds a credential.
    pub fn with_identities(identities: Vec<Identity>, metrics: Arc<Metrics>) -> Ops {
        Ops {
            identities: arc_swap::ArcSwap::from_pointee(identities),
            metrics,
        }
    }

    /// The identities a reload left in force: `/readyz` answers for these from now on.
    pub fn set_identities(&self, identities: Vec<Identity>) {
        self.identities.store(Arc::new(identities));
    }

    /// `/readyz`: 200 when every identity asked about holds a usable credential. The JSON
    /// keeps the single form's fields (`status`, `token_usable_for_s` (the least of them) or
    /// `reason` (the first)) and names each identity with its state.
    async fn readiness(&self, query: Option<&str>) -> Response<Full<Bytes>> {
        let wanted =
            query.and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("identity=")));
        let identities = self.identities.load();
        let asked: Vec<&Identity> = match wanted {
            None => identities.iter().collect(),
            Some(name) => match identities.iter().find(|i| i.name() == name) {
                Some(id) => vec![id],
                None => {
                    return json_response(
                        StatusCode::NOT_FOUND,
                        "unknown_identity",
                        "no identity has that name",
                    );
                }
            },
        };
        let states =
            futures_util::future::join_all(asked.iter().map(|id| id.tokens().readiness())).await;
        let mut each = serde_json::Map::new();
        let mut least: Option<u64> = None;
        let mut first_reason: Option<String> = None;
        for (id, state) in asked.iter().zip(states) {
            let value = match state {
                Ok(left) => {
                    let left = left.as_secs();
                    least = Some(least.map_or(left, |l| l.min(left)));
                    serde_json::json!({"state": "ready", "token_usable_for_s": left})
                }
                Err(reason) => {
                    if first_reason.is_none() {
                        first_reason = Some(if identities.len() == 1 {
                            reason.clone()
                        } else {
                            format!("identity {}: {reason}", id.name())
                        });
                    }
                    serde_json::json!({"state": "not_ready", "reason": reason})
                }
            };
            each.insert(id.name().to_owned(), value);
        }
        match first_reason {
            None => json_value(
                StatusCode::OK,
                &serde_json::json!({
                    "status": "ready",
                    "token_usable_for_s": least.unwrap_or(0),
                    "identities": each,
                }),
            ),
            Some(reason) => json_value(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not_ready", "reason": reason, "identities": each}),
            ),
        }
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
            "/readyz" => self.readiness(req.uri().query()).await,
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
