//! The request path, composed in one place. Read it top to bottom: it is the order a request
//! meets the steps, and the reverse of the order its response leaves them. Each step is a
//! `Layer` + `Service` pair in `src/proxy/<step>.rs` with its own unit tests.
//!
//! ```text
//! record    metrics and the access log line, when the response body ends     proxy/record.rs
//! respond   a ProxyError becomes the client's JSON answer (status by class)   proxy/respond.rs
//! guard     smuggling probe (CL + TE), oversized head                         proxy/guard.rs
//! access    peer, Host, Origin, client key; the identity         403 / 407    proxy/access.rs
//! policy    route rules; body rules down, scrubbed body up           403      proxy/policy.rs
//! limit     body size, buffer or stream; replayable bodies       413 / 408    proxy/limit.rs
//! hygiene   hop-by-hop, client credentials, origin claims, X-Forwarded-*      proxy/hygiene.rs
//! admit     the concurrency slot, held until the body (or tunnel) ends  503   proxy/admit.rs
//! upgrade   WebSocket: Upgrade re-set, 101 spliced in a task                  proxy/upgrade.rs
//! route     to the identity's credential and upstream (one: no lookup)       proxy/route.rs
//! inject    Medusa's token; on 401: verify, then replay once                  proxy/inject.rs
//! upstream  session cookie, resend on a broken pooled connection, pool, TLS  upstream/
//! ```
//!
//! A step that refuses answers at once and the steps below never see the request: a refused
//! request holds no slot and costs no token (one exception: before the first login has
//! finished, `policy` waits for it, since the own-user rule needs the user id). The slot is
//! taken last before Medusa, so body buffering and every check happen before it (a slow
//! client holds none).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Body;
use tower::{Layer, Service, ServiceBuilder};

use crate::access_log::AccessLog;
use crate::config::{MainIdentity, Rules};
use crate::error::ProxyError;
use crate::identity::{Identity, Resolve};
use crate::metrics::Metrics;
use crate::proxy::access::{AccessLayer, AccessRules};
use crate::proxy::admit::{AdmitLayer, Held};
use crate::proxy::guard::GuardLayer;
use crate::proxy::hygiene::HygieneLayer;
use crate::proxy::inject::{CredentialError, CredentialLayer};
use crate::proxy::limit::{ClientBody, LimitLayer, ProxyBody};
use crate::proxy::policy::{PolicyLayer, PolicyRules};
use crate::proxy::record::{Attribution, RecordLayer, Recorder, Tracked};
use crate::proxy::respond::RespondLayer;
use crate::proxy::route::ByIdentity;
use crate::proxy::upgrade::UpgradeLayer;
use crate::scrub::ScrubBody;
use crate::upstream::{TargetLayer, TargetService, Upstream, UpstreamError};

pub mod swap;

/// What the proxy needs to build its request path, besides the clients to Medusa.
pub struct Parts {
    /// The identities, in the configuration's order (at least one): each request is served
    /// as one of them.
    pub identities: Vec<Identity>,
    /// Whose requests the main listener serves.
    pub main: MainIdentity,
    /// `[access]` and `[policy]`, validated.
    pub rules: Rules,
    /// How long a buffered request body may take (`upstream.request_timeout`).
    pub body_timeout: Duration,
    /// The metrics registry `record` and `respond` count into.
    pub metrics: Arc<Metrics>,
    /// Where access log lines go, and whether they are written (`log.access`).
    pub access_log: (Arc<AccessLog>, bool),
}

/// The reloadable parts of the stack, swapped in place by the reloader: each step reads the
/// rules it owns once per request. Shared by every listener.
#[derive(Clone)]
pub struct Handles {
    access: AccessRules,
    listener_access: AccessRules,
    policy: PolicyRules,
    max_body: Arc<AtomicU64>,
    recorder: Arc<Recorder>,
}

impl Handles {
    /// Swap in new access and policy rules (config reloaded, client keys file changed).
    pub fn set_rules(&self, rules: Rules) {
        self.access.store(Arc::new(rules.access));
        self.listener_access.store(Arc::new(rules.listener_access));
        self.policy.store(Arc::new(rules.policy));
        self.max_body.store(rules.max_body, Ordering::Relaxed);
    }

    /// Turn the access log on or off.
    pub fn set_access_log(&self, on: bool) {
        self.recorder.set_access_log(on);
    }

    /// Whether a TCP peer may connect at all (asked at accept; `[access]` is the same for
    /// every listener).
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

/// The body of every answer of a request path over a client to Medusa whose answers have
/// body `RB`: Medusa's (slot held, credentials scrubbed) or the proxy's own JSON, counted by
/// `record`.
pub type ResponseBodyOf<RB> = Tracked<Either<ScrubBody<Held<RB>>, Full<Bytes>>>;

/// The body of every answer of the proxy's request path (over the pooled upstream).
pub type ProxyResponseBody = ResponseBodyOf<crate::upstream::ResponseBody<ProxyBody>>;

/// Which listener a request path is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `proxy.listen`: its identity as [`Parts::main`] says.
    Main,
    /// A `[[listeners]]` entry: always identity number `identity`.
    Fixed {
        /// The identity's index in [`Parts::identities`].
        identity: usize,
    },
}

/// The request path, built once and served by every listener ([`Stack::service`]), and the
/// handles the reloader swaps rules through. [`Stack::proxy`] builds it over the pooled
/// [`Upstream`]s; [`Stack::new`] over any client to Medusa `U` (benchmarks and tests use
/// stand-ins). Every request must carry a [`PeerAddr`](crate::server::PeerAddr) extension
/// (`serve` sets it). A listener's service never fails: every refusal or failure is a JSON
/// answer (see [`crate::error`]).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use medusa_auth_proxy::access_log::AccessLog;
/// use medusa_auth_proxy::auth::{TokenManager, login::Login};
/// use medusa_auth_proxy::config::{LogFormat, MainIdentity, Rules, Settings};
/// use medusa_auth_proxy::identity::Identity;
/// use medusa_auth_proxy::metrics::Metrics;
/// use medusa_auth_proxy::proxy::limit::ProxyBody;
/// use medusa_auth_proxy::secret::Secret;
/// use medusa_auth_proxy::server::PeerAddr;
/// use medusa_auth_proxy::stack::{Listener, Parts, Stack};
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
/// let (stack, _handles) = Stack::new(
///     Parts {
///         identities: vec![Identity::new(0, "default", tokens, None)],
///         main: MainIdentity::Fixed(0),
///         rules: Rules::from_settings(&settings)?,
///         body_timeout: Duration::from_secs(5),
///         metrics,
///         access_log: (Arc::new(quiet), false),
///     },
///     vec![medusa],
/// );
/// let service = stack.service(Listener::Main, 16);
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
pub struct Stack<U> {
    handles: Handles,
    identities: Arc<[Identity]>,
    main: MainIdentity,
    /// The client to Medusa of each identity (its upstream's), in identity order.
    upstreams: Vec<U>,
    body_timeout: Duration,
    metrics: Arc<Metrics>,
    /// The first identity's tokens, for a request without an identity (none reaches
    /// `policy`: `access` sets one on every request it admits).
    fallback: crate::auth::TokenManager,
}

impl Stack<TargetService<Upstream<ProxyBody>>> {
    /// [`Stack::new`] over the pooled clients to Medusa, `upstreams[i]` the one of identity
    /// `i`. Each gets the client's request target behind its own `upstream.url` base path,
    /// origin-form ([`TargetLayer`]).
    ///
    /// # Panics
    ///
    /// When `p.identities` is empty (a validated config always has one).
    pub fn proxy(
        p: Parts,
        upstreams: Vec<Upstream<ProxyBody>>,
    ) -> (Stack<TargetService<Upstream<ProxyBody>>>, Handles) {
        Stack::new(p, targeted(upstreams))
    }

    /// [`Stack::next`] over the pooled clients to Medusa (as [`Stack::proxy`]).
    ///
    /// # Panics
    ///
    /// When `g.identities` is empty.
    pub fn next_proxy(
        &self,
        g: Generation,
        upstreams: Vec<Upstream<ProxyBody>>,
    ) -> (Stack<TargetService<Upstream<ProxyBody>>>, Handles) {
        self.next(g, targeted(upstreams))
    }
}

/// Each client to Medusa behind its own `upstream.url` base path.
fn targeted(upstreams: Vec<Upstream<ProxyBody>>) -> Vec<TargetService<Upstream<ProxyBody>>> {
    upstreams
        .into_iter()
        .map(|upstream| TargetLayer::new(&upstream.settings().base_path).layer(upstream))
        .collect()
}

/// What a reload changes in the request path: everything of [`Parts`] but the metrics and
/// the access log, which stay.
pub struct Generation {
    /// The identities, in the new configuration's order (at least one).
    pub identities: Vec<Identity>,
    /// Whose requests the main listener serves.
    pub main: MainIdentity,
    /// `[access]` and `[policy]` with the new `[[clients]]` mapping.
    pub rules: Rules,
    /// How long a buffered request body may take.
    pub body_timeout: Duration,
}

impl<U: Clone> Stack<U> {
    /// The stack over `upstreams[i]`, the client to the upstream of identity `i`, and the
    /// handles the reloader swaps rules through.
    ///
    /// # Panics
    ///
    /// When `p.identities` is empty (a validated config always has one).
    pub fn new(p: Parts, upstreams: Vec<U>) -> (Stack<U>, Handles) {
        let recorder = Recorder::new(p.metrics.clone(), p.access_log.0, p.access_log.1);
        let g = Generation {
            identities: p.identities,
            main: p.main,
            rules: p.rules,
            body_timeout: p.body_timeout,
        };
        Stack::build(g, recorder, p.metrics, upstreams)
    }

    /// The stack a reload builds: generation `g` over `upstreams`, recording into this one's
    /// metrics and access log (its on/off switch included). Its handles are its own: the
    /// rules that map client keys to identities change with the identities, in one step
    /// (serve it through a [`swap::Swappable`]).
    ///
    /// # Panics
    ///
    /// When `g.identities` is empty.
    pub fn next<V: Clone>(&self, g: Generation, upstreams: Vec<V>) -> (Stack<V>, Handles) {
        Stack::build(
            g,
            self.handles.recorder.clone(),
            self.metrics.clone(),
            upstreams,
        )
    }

    fn build(
        g: Generation,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
        upstreams: Vec<U>,
    ) -> (Stack<U>, Handles) {
        assert!(
            !g.identities.is_empty(),
            "a stack needs at least one identity"
        );
        let handles = Handles {
            access: Arc::new(ArcSwap::from_pointee(g.rules.access)),
            listener_access: Arc::new(ArcSwap::from_pointee(g.rules.listener_access)),
            policy: Arc::new(ArcSwap::from_pointee(g.rules.policy)),
            max_body: Arc::new(AtomicU64::new(g.rules.max_body)),
            recorder,
        };
        let stack = Stack {
            fallback: g.identities[0].tokens().clone(),
            handles: handles.clone(),
            identities: g.identities.into(),
            main: g.main,
            upstreams,
            body_timeout: g.body_timeout,
            metrics,
        };
        (stack, handles)
    }

    /// The request path of one listener, with `max_concurrent` slots of its own
    /// (`proxy.max_concurrent_requests`, or the listener's): the `Service` for
    /// [`crate::server::serve_tls`]. `U` gets the request as the steps above left it (headers
    /// cleaned, body limited, credential set); its [`UpstreamError`] becomes a 502 or 504.
    pub fn service<B, RB>(
        &self,
        listener: Listener,
        max_concurrent: usize,
    ) -> impl Service<
        Request<B>,
        Response = Response<ResponseBodyOf<RB>>,
        Error = Infallible,
        Future: Send + 'static,
    >
    + Clone
    + Send
    + 'static
    + use<U, B, RB>
    where
        B: ClientBody,
        U: Service<Request<ProxyBody<B>>, Response = Response<RB>, Error = UpstreamError>
            + Clone
            + Send
            + 'static,
        U::Future: Send,
        RB: Body + Send + Unpin + 'static,
    {
        self.service_with_slots(listener, AdmitLayer::new(max_concurrent))
    }

    /// [`Stack::service`] with the listener's slots given: the stacks a reload builds share
    /// each listener's slots with the ones they replace (requests in flight on the old stack
    /// keep theirs; the cap holds across the swap).
    pub fn service_with_slots<B, RB>(
        &self,
        listener: Listener,
        slots: AdmitLayer,
    ) -> impl Service<
        Request<B>,
        Response = Response<ResponseBodyOf<RB>>,
        Error = Infallible,
        Future: Send + 'static,
    >
    + Clone
    + Send
    + 'static
    + use<U, B, RB>
    where
        B: ClientBody,
        U: Service<Request<ProxyBody<B>>, Response = Response<RB>, Error = UpstreamError>
            + Clone
            + Send
            + 'static,
        U::Future: Send,
        RB: Body + Send + Unpin + 'static,
    {
        let pick = |i: usize| {
            self.identities
                .get(i)
                .or_else(|| self.identities.first())
                .cloned()
        };
        let (access, resolve) = match (listener, self.main) {
            (Listener::Fixed { identity }, _) => (
                self.handles.listener_access.clone(),
                pick(identity).map(Resolve::Fixed),
            ),
            (Listener::Main, MainIdentity::Fixed(i)) => {
                (self.handles.access.clone(), pick(i).map(Resolve::Fixed))
            }
            (Listener::Main, MainIdentity::ByClientKey) => (
                self.handles.access.clone(),
                Some(Resolve::ByClientKey(self.identities.clone())),
            ),
        };
        // The single form's lone `default` identity needs no extension: `route` has one
        // service, `policy` falls back to its tokens and it has no policy of its own. Its hot
        // path stays exactly as before identities (no allocation, no lookup).
        let lone_default = matches!(&self.identities[..], [only]
            if only.policy().is_none() && only.name() == crate::config::DEFAULT_IDENTITY)
            && matches!(resolve, Some(Resolve::Fixed(_)));
        let by = Attribution::of_listener(&self.metrics, resolve.as_ref());
        let mut access = AccessLayer::new(access);
        if let Some(resolve) = resolve.filter(|_| !lone_default) {
            access = access.resolving(resolve);
        }
        let routes = ByIdentity::new(
            self.identities
                .iter()
                .zip(&self.upstreams)
                .map(|(id, upstream)| {
                    ServiceBuilder::new()
                        .map_err(from_credential as fn(_) -> _)
                        .layer(CredentialLayer::new(id.tokens().clone()))
                        .service(upstream.clone())
                })
                .collect(),
        );
        ServiceBuilder::new()
            .layer(RecordLayer::new(self.handles.recorder.clone(), by.clone()))
            .layer(RespondLayer(by))
            .layer(GuardLayer)
            .layer(access)
            .layer(PolicyLayer {
                rules: self.handles.policy.clone(),
                tokens: self.fallback.clone(),
            })
            .layer(LimitLayer {
                max_body: self.handles.max_body.clone(),
                body_timeout: self.body_timeout,
            })
            .layer(HygieneLayer)
            .layer(slots)
            .layer(UpgradeLayer)
            .service(routes)
    }
}
