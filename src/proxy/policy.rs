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

/// The `policy` layer.
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

/// The `policy` service.
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
