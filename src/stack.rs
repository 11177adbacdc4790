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
//! request holds no slot and costs no token (one exception: before the first login has finished,
//! `policy` waits for it, since the own-user rule needs the user id). The slot is taken last before Medusa, so body
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
use tower::{Layer, Service, ServiceBuilder};

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
use crate::upstream::{TargetLayer, Upstream, UpstreamError};

/// What the proxy needs to build its request path, besides the client to Medusa (see
/// [`proxy`] for an example).
pub struct Parts {
    /// Where `inject` gets Medusa's token, and `policy` the id of the user the proxy acts as.
    pub tokens: TokenManager,
    /// `[access]` and `[policy]`, validated, with the client keys read: the rules in force
    /// until [`Handles::set_rules`] swaps them.
    pub rules: Rules,
    /// Requests in flight at most (`proxy.max_concurrent_requests`); beyond it `admit`
    /// answers 503 at once.
    pub max_concurrent: usize,
    /// How long a buffered request body may take (`upstream.request_timeout`).
    pub body_timeout: Duration,
    /// The metrics registry `record` and `respond` count into.
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

/// The proxy's request path as one `Service` for [`crate::server::serve`], and the handles
/// the reloader swaps rules through: [`build`] over hyper's `Incoming` client bodies and the
/// pooled [`Upstream`]. Every request must carry a [`PeerAddr`](crate::server::PeerAddr)
/// extension (`serve` sets it). The service never fails: every refusal or failure is a JSON
/// answer (see [`crate::error`]).
///
/// ```no_run
/// # async fn demo(settings: medusa_auth_proxy::config::Settings) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use medusa_auth_proxy::access_log::AccessLog;
/// use medusa_auth_proxy::auth::{TokenManager, login::Login};
/// use medusa_auth_proxy::config::Rules;
/// use medusa_auth_proxy::metrics::Metrics;
/// use medusa_auth_proxy::{server, stack, upstream::Upstream};
///
/// let metrics = Metrics::new();
/// let upstream = Upstream::new(&settings.upstream)?;
/// let secret = settings.auth.secret.load()?;
/// let login = Login::new(upstream.for_body(), settings.auth.flavor, settings.auth.email.clone(), secret);
/// let tokens = TokenManager::new(login, settings.auth.clone(), metrics.clone());
/// let (stop, stop_rx) = tokio::sync::watch::channel(false);
/// tokens.spawn_driver(stop_rx.clone());
/// let (service, handles) = stack::proxy(
///     stack::Parts {
///         tokens,
///         rules: Rules::from_settings(&settings)?,
///         max_concurrent: settings.proxy.max_concurrent_requests,
///         body_timeout: settings.upstream.request_timeout,
///         metrics: metrics.clone(),
///         access_log: (Arc::new(AccessLog::stderr(settings.log.format)), settings.log.access),
///     },
///     upstream,
/// );
/// let listener = tokio::net::TcpListener::bind(settings.proxy.listen).await?;
/// let admit: server::Admit = Arc::new(move |ip| handles.peer_allowed(ip));
/// server::serve(
///     listener,
///     service,
///     admit,
///     stop_rx,
///     settings.proxy.shutdown_grace,
///     server::Limits::default(),
///     metrics.connections().clone(),
/// )
/// .await;
/// # drop(stop);
/// # Ok(()) }
/// ```
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
    // Medusa's request target: the client's behind upstream.url's base path, origin-form.
    let target = TargetLayer::new(&upstream.settings().base_path);
    build(p, target.layer(upstream))
}

/// [`proxy`] over any client body `B` and any client to Medusa `U` (benchmarks and tests use
/// stand-ins for both). `U` gets the request as the steps above left it (headers cleaned,
/// body limited, credential set) and answers with any body `RB`; its [`UpstreamError`]
/// becomes a 502 or 504 (see [`crate::error`]).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use medusa_auth_proxy::access_log::AccessLog;
/// use medusa_auth_proxy::auth::{TokenManager, login::Login};
/// use medusa_auth_proxy::config::{LogFormat, Rules, Settings};
/// use medusa_auth_proxy::metrics::Metrics;
/// use medusa_auth_proxy::proxy::limit::ProxyBody;
/// use medusa_auth_proxy::secret::Secret;
/// use medusa_auth_proxy::server::PeerAddr;
/// use medusa_auth_proxy::stack;
/// use medusa_auth_proxy::upstream::{Upstream, UpstreamError};
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let settings = Settings::from_toml(
///     "[upstream]\nurl = \"http://127.0.0.1:9000\"\n\
///      [auth]\nflavor = \"v2\"\nemail = \"a@example.com\"\npassword_env = \"MEDUSA_PASSWORD\"\n",
/// )?;
/// let metrics = Metrics::new();
/// let login = Login::new(
///     Upstream::new(&settings.upstream)?,
///     settings.auth.flavor,
///     settings.auth.email.clone(),
///     Secret::new("never sent in this example".into()),
/// );
/// let tokens = TokenManager::new(login, settings.auth.clone(), metrics.clone());
/// // A stand-in for Medusa: the stack is generic over the client.
/// let medusa = tower::service_fn(|_req: http::Request<ProxyBody<Full<Bytes>>>| async {
///     Ok::<_, UpstreamError>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
/// });
/// let quiet = AccessLog::with_sink(LogFormat::Text, Box::new(|_: &[u8]| {}));
/// let (service, _handles) = stack::build(
///     stack::Parts {
///         tokens,
///         rules: Rules::from_settings(&settings)?,
///         max_concurrent: 16,
///         body_timeout: Duration::from_secs(5),
///         metrics,
///         access_log: (Arc::new(quiet), false),
///     },
///     medusa,
/// );
/// // A peer outside `access.allow_cidrs` (loopback by default) is refused by `access`:
/// // the steps below it, Medusa included, never see the request.
/// let mut req = http::Request::get("/admin/products")
///     .header("host", "localhost:7000")
///     .body(Full::new(Bytes::new()))?;
/// req.extensions_mut().insert(PeerAddr("192.0.2.7:50000".parse()?));
/// let resp = service.oneshot(req).await?;
/// assert_eq!(resp.status(), 403);
/// # Ok(()) }
/// ```
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
