//! The request path, composed in one place. Read it top to bottom: it is the order a request
//! meets the steps, and the reverse of the order its response leaves them. Each step is a
//! `Layer` + `Service` pair in `src/proxy/<step>.rs` with its own unit tests.
//!
//! ```text
//! record    metrics and the access log line, when the response body ends     proxy/record.rs
//! respond   a ProxyError becomes the client's JSON answer (status by class)   proxy/respond.rs
//! guard     smuggling probe (CL + TE), oversized head                         proxy/guard.rs
//! access    peer, Host, Origin, client key                       403 / 407    proxy/access.rs
//! policy    route rules; body rules down, scrubbed body up           403      proxy/policy.rs
//! limit     body size, buffer or stream; replayable bodies       413 / 408    proxy/limit.rs
//! hygiene   hop-by-hop, client credentials, origin claims, X-Forwarded-*      proxy/hygiene.rs
//! admit     the concurrency slot, held until the body (or tunnel) ends  503   proxy/admit.rs
//! upgrade   WebSocket: Upgrade re-set, 101 spliced in a task                  proxy/upgrade.rs
//! inject    Medusa's token; on 401: verify, then replay once                  proxy/inject.rs
//! upstream  session cookie, resend on a broken pooled connection, pool, TLS  upstream/
//! ```
//!
//! A step that refuses answers at once and the steps below never see the request: a refused
//! request holds no slot and costs no token. The slot is taken last before Medusa, so body
//! buffering and every check happen before it (a slow client holds none).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};
use tower::{Service, ServiceBuilder};

use crate::access_log::AccessLog;
use crate::auth::TokenManager;
use crate::config::Rules;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::proxy::access::{AccessLayer, AccessRules};
use crate::proxy::admit::{AdmitLayer, Held};
use crate::proxy::guard::GuardLayer;
use crate::proxy::hygiene::HygieneLayer;
use crate::proxy::inject::{CredentialError, CredentialLayer};
use crate::proxy::limit::{ClientBody, LimitLayer, ProxyBody};
use crate::proxy::policy::{PolicyLayer, PolicyRules};
use crate::proxy::record::{RecordLayer, Recorder, Tracked};
use crate::proxy::respond::RespondLayer;
use crate::proxy::upgrade::UpgradeLayer;
use crate::scrub::ScrubBody;
use crate::upstream::{Upstream, UpstreamError};

/// What the proxy needs to build its request path, besides the client to Medusa.
pub struct Parts {
    /// Medusa tokens.
    pub tokens: TokenManager,
    /// `[access]` and `[policy]`, validated.
    pub rules: Rules,
    /// `proxy.max_concurrent_requests`.
    pub max_concurrent: usize,
    /// How long a buffered request body may take (`upstream.request_timeout`).
    pub body_timeout: Duration,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Where access log lines go, and whether they are written (`log.access`).
    pub access_log: (Arc<AccessLog>, bool),
}

/// The reloadable parts of the stack, swapped in place by the reloader: each step reads the
/// rules it owns once per request.
#[derive(Clone)]
pub struct Handles {
    access: AccessRules,
    policy: PolicyRules,
    max_body: Arc<AtomicU64>,
    recorder: Arc<Recorder>,
}

impl Handles {
    /// Swap in new access and policy rules (config reloaded, client keys file changed).
    pub fn set_rules(&self, rules: Rules) {
        self.access.store(Arc::new(rules.access));
        self.policy.store(Arc::new(rules.policy));
        self.max_body.store(rules.max_body, Ordering::Relaxed);
    }

    /// Turn the access log on or off.
    pub fn set_access_log(&self, on: bool) {
        self.recorder.set_access_log(on);
    }

    /// Whether a TCP peer may connect at all (asked at accept).
    pub fn peer_allowed(&self, ip: std::net::IpAddr) -> bool {
        crate::proxy::access::peer_allowed(&self.access, ip)
    }
}

/// The credential step's error as the proxy's (here, where both are known: `error` stays
/// below `proxy`).
fn from_credential(e: CredentialError<UpstreamError>) -> ProxyError {
    match e {
        CredentialError::Token(e) => e.into(),
        CredentialError::Rejected => ProxyError::TokenRejected,
        CredentialError::Inner(e) => e.into(),
    }
}

/// The body of every answer of the proxy's request path: Medusa's (pooled connection, slot
/// held, credentials scrubbed) or the proxy's own JSON, counted by `record`.
pub type ProxyResponseBody = Answer<crate::upstream::ResponseBody<ProxyBody>>;

/// The body of the stack's answers over a client to Medusa whose bodies are `RB`.
pub type Answer<RB> = Tracked<Either<ScrubBody<Held<RB>>, Full<Bytes>>>;

/// The proxy's request path as one `Service` for `crate::server::serve`, and the handles the
/// reloader swaps rules through.
pub fn proxy(
    p: Parts,
    upstream: Upstream<ProxyBody>,
) -> (
    impl Service<
        Request<Incoming>,
        Response = Response<ProxyResponseBody>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static,
    Handles,
) {
    build(p, upstream)
}

/// [`proxy`] over any client body and any client to Medusa (benchmarks and tests use
/// stand-ins for both).
pub fn build<B, U, RB>(
    p: Parts,
    upstream: U,
) -> (
    impl Service<
        Request<B>,
        Response = Response<Answer<RB>>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static,
    Handles,
)
where
    B: ClientBody,
    U: Service<Request<ProxyBody<B>>, Response = Response<RB>, Error = UpstreamError>
        + Clone
        + Send
        + 'static,
    U::Future: Send,
    RB: Body + Send + Unpin + 'static,
{
    let handles = Handles {
        access: Arc::new(ArcSwap::from_pointee(p.rules.access)),
        policy: Arc::new(ArcSwap::from_pointee(p.rules.policy)),
        max_body: Arc::new(AtomicU64::new(p.rules.max_body)),
        recorder: Recorder::new(p.metrics.clone(), p.access_log.0, p.access_log.1),
    };
    let service = ServiceBuilder::new()
        .layer(RecordLayer(handles.recorder.clone()))
        .layer(RespondLayer(p.metrics.clone()))
        .layer(GuardLayer)
        .layer(AccessLayer(handles.access.clone()))
        .layer(PolicyLayer {
            rules: handles.policy.clone(),
            tokens: p.tokens.clone(),
        })
        .layer(LimitLayer {
            max_body: handles.max_body.clone(),
            body_timeout: p.body_timeout,
        })
        .layer(HygieneLayer)
        .layer(AdmitLayer::new(p.max_concurrent))
        .layer(UpgradeLayer)
        .map_err(from_credential as fn(_) -> _)
        .layer(CredentialLayer::new(p.tokens))
        .service(upstream);
    (service, handles)
}
