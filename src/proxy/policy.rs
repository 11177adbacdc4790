//! `policy`: which routes and bodies may pass. The route is checked against `[policy]` as
//! currently loaded (built-in denies, allow/deny lists, read-only; the pure decision is
//! [`crate::policy::Policy::check`]); the body rules in force for the route travel down as a
//! request extension ([`BodyRules`], used by `limit`), and Medusa's answer comes back with the
//! credential fields of those rules replaced as it streams ([`ScrubBody`]). A compressed answer
//! cannot be scanned and is refused (502) rather than passed on.
//!
//! The "own user" rule needs the id of the user the proxy logs in as: before the first login
//! finished, the check waits for it (the one boxed path of this step).

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Body;
use tower::{Layer, Service, ServiceExt};

use super::future::{Finish, LayerFuture};
use crate::auth::TokenManager;
use crate::error::ProxyError;
use crate::identity::Identity;
use crate::policy::{BodyRules, Decision, Policy};
use crate::scrub::{Scrub, ScrubBody};

/// `[policy]` as currently loaded, shared by the layer and the reloader.
pub type PolicyRules = Arc<ArcSwap<Policy>>;

/// The `policy` layer: checks each request's method and route against the `[policy]` rules it
/// holds (swapped on reload), and has Medusa's answer scrubbed of the route's credential
/// fields.
#[derive(Clone)]
pub struct PolicyLayer {
    /// The rules, swapped on reload.
    pub rules: PolicyRules,
    /// Where the proxy's own user id comes from.
    pub tokens: TokenManager,
}

impl<S> Layer<S> for PolicyLayer {
    type Service = PolicyCheck<S>;
    fn layer(&self, inner: S) -> PolicyCheck<S> {
        PolicyCheck {
            inner,
            rules: self.rules.clone(),
            tokens: self.tokens.clone(),
        }
    }
}

/// The `policy` service: 403 `route_denied` for a refused route, 400 for a path it cannot
/// read unambiguously; otherwise the request goes on with its [`BodyRules`] attached, and
/// the response body comes back as a [`ScrubBody`].
#[derive(Clone)]
pub struct PolicyCheck<S> {
    inner: S,
    rules: PolicyRules,
    tokens: TokenManager,
}

impl<S, B, RB> Service<Request<B>> for PolicyCheck<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    RB: Body + Send + 'static,
{
    type Response = Response<ScrubBody<RB>>;
    type Error = ProxyError;
    type Future = LayerFuture<S::Future, Scrubbed, Response<ScrubBody<RB>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let rules = self.rules.load_full();
        let body_rules = rules.body_rules(req.method(), req.uri().path());
        if body_rules != BodyRules::default() {
            req.extensions_mut().insert(body_rules);
        }
        let scrubbed = Scrubbed(body_rules.scrub);
        // The identity's token manager knows *its* user (the own-user rule), and its policy
        // narrows the global one.
        let identity = req.extensions().get::<Identity>();
        let narrowed = identity.and_then(|id| id.policy().cloned());
        let tokens = identity.map_or(&self.tokens, |id| id.tokens());
        match tokens.user_id_hint() {
            Some(own) => match decide(&rules, narrowed.as_ref(), &req, Some(&own)) {
                Ok(()) => LayerFuture::called(self.inner.call(req), scrubbed),
                Err(e) => LayerFuture::refuse(e),
            },
            None => {
                // First request before any login finished: the own-user rule needs the id.
                // Fail fast when no token can be had.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let tokens = tokens.clone();
                LayerFuture::boxed(async move {
                    let token = tokens.token().await?;
                    decide(&rules, narrowed.as_ref(), &req, token.user_id.as_deref())?;
                    scrubbed.finish(inner.oneshot(req).await)
                })
            }
        }
    }
}

/// The global policy, then the identity's (which only narrows it).
fn decide<B>(
    global: &Policy,
    identity: Option<&Policy>,
    req: &Request<B>,
    own: Option<&str>,
) -> Result<(), ProxyError> {
    check(global, req.method(), req.uri().path(), own)?;
    match identity {
        Some(p) => check(p, req.method(), req.uri().path(), own),
        None => Ok(()),
    }
}

fn check(
    policy: &Policy,
    method: &Method,
    path: &str,
    own: Option<&str>,
) -> Result<(), ProxyError> {
    match policy.check(method, path, own) {
        Decision::Allow => Ok(()),
        Decision::BadPath(why) => Err(ProxyError::BadRequest(why)),
        Decision::Deny(reason) => {
            tracing::info!(method = %method, reason = %reason, "route denied by policy");
            Err(ProxyError::Forbidden {
                code: "route_denied",
                message: reason.to_string(),
            })
        }
    }
}

/// Finishes `policy`: Medusa's body with the route's credential fields scrubbed.
#[derive(Debug, Clone, Copy)]
pub struct Scrubbed(Scrub);

impl<RB: Body> Finish<Result<Response<RB>, ProxyError>> for Scrubbed {
    type Output = Response<ScrubBody<RB>>;
    fn finish(self, answer: Result<Response<RB>, ProxyError>) -> Result<Self::Output, ProxyError> {
        let resp = answer?;
        let scrub = self.0;
        if !scrub.any() || resp.body().is_end_stream() {
            return Ok(resp.map(ScrubBody::passthrough));
        }
        let content_type = resp.headers().get(header::CONTENT_TYPE);
        if !crate::scrub::scanned_content_type(content_type.map(HeaderValue::as_bytes)) {
            return Ok(resp.map(ScrubBody::passthrough));
        }
        if let Some(enc) = resp
            .headers()
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .find(|v| crate::scrub::encoded(v.as_bytes()))
        {
            let enc = String::from_utf8_lossy(enc.as_bytes()).into_owned();
            return Err(ProxyError::UpstreamEncoded(enc));
        }
        Ok(resp.map(|b| ScrubBody::new(b, scrub)))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{StatusCode, Uri};
    use http_body_util::Full;
    use tower::ServiceExt;

    use super::*;
    use crate::auth::{Flavor, SecretSource};
    use crate::policy::PolicyConfig;
    use crate::proxy::testing::{Probe, body_text, response, stand_in};

    const OWN: &str = "usr_own";

    /// A token manager for a Medusa nobody listens for (127.0.0.1:9), whose driver is never
    /// started: it has a token (and a user id) only when a test seeds one.
    fn tokens() -> TokenManager {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "static-key-0123456789").unwrap();
        TokenManager::builder("http://127.0.0.1:9", Flavor::V1ApiToken)
            .secret(SecretSource::File(key))
            .build()
            .unwrap()
    }

    /// A manager holding a token for the proxy's own user, `OWN`.
    async fn logged_in() -> TokenManager {
        let tokens = tokens();
        tokens.seed_token(Some(OWN)).await;
        tokens
    }

    fn rules(cfg: PolicyConfig) -> PolicyRules {
        Arc::new(ArcSwap::from_pointee(Policy::new(cfg).unwrap()))
    }

    fn defaults() -> PolicyRules {
        rules(PolicyConfig::default())
    }

    fn request(method: Method, path: &str) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = Uri::try_from(path).unwrap();
        req
    }

    type Answer = Response<ScrubBody<Full<Bytes>>>;

    /// One request through `policy` over a stand-in answering `answer`.
    async fn through(
        rules: &PolicyRules,
        tokens: &TokenManager,
        req: Request<()>,
        answer: impl Fn() -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> (Result<Answer, ProxyError>, Probe<()>) {
        let (inner, probe) = stand_in(move |_| Ok(answer()));
        let layer = PolicyLayer {
            rules: rules.clone(),
            tokens: tokens.clone(),
        };
        (layer.layer(inner).oneshot(req).await, probe)
    }

    fn ok() -> Response<Full<Bytes>> {
        response(StatusCode::OK, "{}")
    }

    fn json(body: &'static str) -> Response<Full<Bytes>> {
        let mut resp = response(StatusCode::OK, body);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        resp
    }

    /// The 403 `route_denied` message, or a panic.
    fn route_denied(answer: Result<Answer, ProxyError>) -> String {
        match answer {
            Err(
                e @ ProxyError::Forbidden {
                    code: "route_denied",
                    ..
                },
            ) => {
                assert_eq!(e.status(), StatusCode::FORBIDDEN);
                e.to_string()
            }
            Err(other) => panic!("expected route_denied, got {other:?}"),
            Ok(resp) => panic!("expected route_denied, got {}", resp.status()),
        }
    }

    #[tokio::test]
    async fn built_in_denies_reach_nobody() {
        let (rules, tokens) = (defaults(), logged_in().await);
        for (method, path, rule) in [
            (Method::POST, "/admin/auth/token", "v1-auth-token"),
            (Method::GET, "/ADMIN/auth/token/", "v1-auth-token"),
            (Method::POST, "/admin/auth", "v1-auth-session"),
            (Method::POST, "/auth/user/emailpass", "v2-auth"),
            (Method::POST, "/auth/token/refresh", "v2-auth"),
            (Method::POST, "/admin/api-keys", "api-keys-create"),
            (Method::POST, "/admin/invites", "invites-create"),
        ] {
            let (answer, probe) = through(&rules, &tokens, request(method, path), ok).await;
            let message = route_denied(answer);
            assert!(message.contains(rule), "{path}: {message}");
            assert_eq!(probe.calls(), 0, "{path}");
        }
    }

    #[tokio::test]
    async fn the_own_user_rule_uses_the_logged_in_users_id() {
        let (rules, tokens) = (defaults(), logged_in().await);
        let (answer, probe) = through(
            &rules,
            &tokens,
            request(Method::POST, "/admin/users/USR_OWN"),
            ok,
        )
        .await;
        assert!(route_denied(answer).contains("own-user"));
        assert_eq!(probe.calls(), 0);
        // Another user may be updated.
        let (answer, probe) = through(
            &rules,
            &tokens,
            request(Method::POST, "/admin/users/usr_other"),
            ok,
        )
        .await;
        assert_eq!(answer.unwrap().status(), StatusCode::OK);
        assert_eq!(probe.calls(), 1);
    }

    #[tokio::test]
    async fn allow_and_deny_lists_and_read_only() {
        let rules = rules(PolicyConfig {
            allow_paths: vec!["/admin/".into()],
            deny_paths: vec!["/admin/orders".into()],
            read_only: true,
            lift_builtin: Vec::new(),
        });
        let tokens = logged_in().await;
        for (method, path, why) in [
            (Method::GET, "/admin/orders/ord_1", "deny_paths"),
            (Method::GET, "/store/products", "allow_paths"),
            (Method::POST, "/admin/products", "read_only"),
            (Method::DELETE, "/admin/products/prod_1", "read_only"),
        ] {
            let (answer, probe) = through(&rules, &tokens, request(method, path), ok).await;
            let message = route_denied(answer);
            assert!(message.contains(why), "{path}: {message}");
            assert_eq!(probe.calls(), 0, "{path}");
        }
        let (answer, probe) =
            through(&rules, &tokens, request(Method::GET, "/admin/products"), ok).await;
        assert_eq!(answer.unwrap().status(), StatusCode::OK);
        assert_eq!(probe.calls(), 1);
    }

    #[tokio::test]
    async fn a_path_spelled_ambiguously_is_a_bad_request() {
        let (rules, tokens) = (defaults(), logged_in().await);
        for path in [
            "/admin/auth//token",
            "/admin/%2e%2e/auth/token",
            "/admin/./users",
        ] {
            let (answer, probe) = through(&rules, &tokens, request(Method::GET, path), ok).await;
            match answer {
                Err(e @ ProxyError::BadRequest(_)) => {
                    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
                    assert_eq!(e.code(), "bad_request");
                }
                Err(other) => panic!("{path}: expected 400, got {other:?}"),
                Ok(resp) => panic!("{path}: expected 400, got {}", resp.status()),
            }
            assert_eq!(probe.calls(), 0, "{path}");
        }
    }

    #[tokio::test]
    async fn the_body_rules_travel_down_as_an_extension() {
        let (rules, tokens) = (defaults(), logged_in().await);
        let (answer, probe) = through(
            &rules,
            &tokens,
            request(Method::POST, "/admin/users/usr_other"),
            ok,
        )
        .await;
        answer.unwrap();
        let seen = probe.last();
        let body_rules = seen.extensions().get::<BodyRules>().expect("body rules");
        assert!(body_rules.refuse_api_token);
        assert!(
            body_rules.always_inspect,
            "bodies to /admin/users are inspected"
        );
        assert!(body_rules.scrub.api_token);

        let (answer, probe) = through(
            &rules,
            &tokens,
            request(Method::POST, "/admin/products"),
            ok,
        )
        .await;
        answer.unwrap();
        let seen = probe.last();
        let body_rules = seen.extensions().get::<BodyRules>().expect("body rules");
        assert!(body_rules.refuse_api_token);
        assert!(!body_rules.always_inspect);

        // With every body rule lifted, nothing travels.
        let lifted = super::tests::rules(PolicyConfig {
            lift_builtin: vec![
                "api-token-read".into(),
                "api-token-write".into(),
                "invite-token-read".into(),
            ],
            ..PolicyConfig::default()
        });
        let (answer, probe) = through(
            &lifted,
            &tokens,
            request(Method::POST, "/admin/users/usr_other"),
            || json(r#"{"api_token":"secret-abc"}"#),
        )
        .await;
        assert!(probe.last().extensions().get::<BodyRules>().is_none());
        // ... and nothing is scrubbed.
        let body = body_text(answer.unwrap().into_body()).await;
        assert_eq!(body, r#"{"api_token":"secret-abc"}"#);
    }

    #[tokio::test]
    async fn credentials_in_medusas_answer_are_scrubbed() {
        let (rules, tokens) = (defaults(), logged_in().await);
        let sent = r#"{"users":[{"id":"usr_1","api_token":"secret-abc"}]}"#;
        let (answer, probe) = through(
            &rules,
            &tokens,
            request(Method::GET, "/admin/users"),
            move || json(sent),
        )
        .await;
        assert_eq!(probe.calls(), 1);
        let body = body_text(answer.unwrap().into_body()).await;
        assert!(!body.contains("secret-abc"), "{body}");
        assert_eq!(body.len(), sent.len(), "same length: Content-Length holds");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["users"][0]["api_token"], serde_json::Value::Null);
        assert_eq!(v["users"][0]["id"], "usr_1");

        // Invite tokens on invite routes only.
        let (answer, _) = through(
            &rules,
            &tokens,
            request(Method::GET, "/admin/invites"),
            || json(r#"{"invites":[{"token":"inv-secret"}]}"#),
        )
        .await;
        let body = body_text(answer.unwrap().into_body()).await;
        assert!(!body.contains("inv-secret"), "{body}");
        let (answer, _) = through(
            &rules,
            &tokens,
            request(Method::GET, "/admin/products"),
            || json(r#"{"token":"a-product-field"}"#),
        )
        .await;
        let body = body_text(answer.unwrap().into_body()).await;
        assert_eq!(body, r#"{"token":"a-product-field"}"#);

        // A binary body is not scanned.
        let (answer, _) = through(
            &rules,
            &tokens,
            request(Method::GET, "/admin/uploads/x"),
            || {
                let mut resp = response(StatusCode::OK, r#"{"api_token":"bytes-by-chance"}"#);
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
                resp
            },
        )
        .await;
        let body = body_text(answer.unwrap().into_body()).await;
        assert!(body.contains("bytes-by-chance"));
    }

    #[tokio::test]
    async fn a_compressed_answer_on_a_scrubbed_route_is_refused() {
        let (rules, tokens) = (defaults(), logged_in().await);
        let (answer, probe) = through(
            &rules,
            &tokens,
            request(Method::GET, "/admin/users"),
            || {
                let mut resp = json(r#"{"api_token":"secret-abc"}"#);
                resp.headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                resp
            },
        )
        .await;
        assert_eq!(probe.calls(), 1);
        match answer {
            Err(e @ ProxyError::UpstreamEncoded(_)) => {
                assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
                assert!(e.to_string().contains("gzip"), "{e}");
            }
            Err(other) => panic!("expected 502 upstream_encoded, got {other:?}"),
            Ok(resp) => panic!("expected 502 upstream_encoded, got {}", resp.status()),
        }
        // `identity` is no encoding, and an empty body has nothing to scan.
        for (encoding, body) in [("identity", r#"{"a":1}"#), ("gzip", "")] {
            let (answer, _) = through(&rules, &tokens, request(Method::GET, "/admin/users"), {
                move || {
                    let mut resp = json(body);
                    resp.headers_mut()
                        .insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
                    resp
                }
            })
            .await;
            assert_eq!(body_text(answer.unwrap().into_body()).await, body);
        }
    }

    #[tokio::test]
    async fn swapped_rules_apply_to_the_next_request() {
        let (rules, tokens) = (defaults(), logged_in().await);
        let (inner, probe) = stand_in(|_| Ok(ok()));
        let mut svc = PolicyLayer {
            rules: rules.clone(),
            tokens,
        }
        .layer(inner);
        let get = || request(Method::GET, "/admin/orders");
        (&mut svc).oneshot(get()).await.unwrap();
        rules.store(Arc::new(
            Policy::new(PolicyConfig {
                deny_paths: vec!["/admin/orders".into()],
                ..PolicyConfig::default()
            })
            .unwrap(),
        ));
        assert!(route_denied((&mut svc).oneshot(get()).await).contains("deny_paths"));
        assert_eq!(probe.calls(), 1);
    }

    #[tokio::test]
    async fn the_inner_error_is_passed_on() {
        let (rules, tokens) = (defaults(), logged_in().await);
        let (inner, probe) = stand_in::<(), Full<Bytes>>(|_| Err(ProxyError::Overloaded(7)));
        let answer = PolicyLayer { rules, tokens }
            .layer(inner)
            .oneshot(request(Method::GET, "/admin/products"))
            .await;
        assert!(matches!(answer, Err(ProxyError::Overloaded(7))));
        assert_eq!(probe.calls(), 1);
    }

    // Before any login named a user (no `user_id_hint`), the step waits for a token: the
    // boxed path.

    #[tokio::test]
    async fn before_any_login_a_token_held_is_used_for_the_decision() {
        // A token that names no user: the hint stays empty, the request takes the boxed path
        // and finds the token at once. Only the `me` alias is the own user then.
        let (rules, tokens) = (defaults(), tokens());
        tokens.seed_token(None).await;
        assert!(tokens.user_id_hint().is_none());
        let (answer, probe) = through(
            &rules,
            &tokens,
            request(Method::POST, "/admin/users/me"),
            ok,
        )
        .await;
        assert!(route_denied(answer).contains("own-user"));
        assert_eq!(probe.calls(), 0);
        let sent = r#"{"user":{"api_token":"secret-abc"}}"#;
        let (answer, probe) = through(
            &rules,
            &tokens,
            request(Method::GET, "/admin/auth"),
            move || json(sent),
        )
        .await;
        assert_eq!(probe.calls(), 1);
        let body = body_text(answer.unwrap().into_body()).await;
        assert!(
            !body.contains("secret-abc"),
            "scrubbed on the boxed path too: {body}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn before_any_login_no_token_means_503_and_no_call() {
        // No driver runs: the wait for a first login times out (paused time runs ahead).
        let (rules, tokens) = (defaults(), tokens());
        let (answer, probe) =
            through(&rules, &tokens, request(Method::GET, "/admin/products"), ok).await;
        match answer {
            Err(e @ ProxyError::NoToken { .. }) => {
                assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
            }
            Err(other) => panic!("expected no_token, got {other:?}"),
            Ok(resp) => panic!("expected no_token, got {}", resp.status()),
        }
        assert_eq!(probe.calls(), 0);
    }
}
