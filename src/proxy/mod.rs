//! The request path: guards (slots, access, policy, body size) -> header hygiene -> token ->
//! Medusa -> response hygiene. On a 401 for our token: invalidate it (if still cached), wait
//! for the next token, and replay once if the body was buffered for that.

pub mod access;
pub mod headers;
pub mod policy;
pub mod replay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Incoming};
use tokio::sync::Semaphore;

use crate::access_log::AccessLog;
use crate::auth::{Token, TokenManager};
use crate::body::{BodyStats, LimitedBody, RequestRecord, Tracked};
use crate::config::Settings;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::scrub::{Scrub, ScrubBody};
use crate::upstream::{Replayable, Resent, Upstream, UpstreamError, error_chain};
use policy::{Decision, Policy, PolicyConfig};
use replay::PreparedBody;

/// The request body sent to Medusa: buffered (small, replayable) or streamed from the client.
pub type UpstreamBody = Either<Full<Bytes>, LimitedBody>;

/// Medusa's response body as the proxy passes it on (its connection returns to the pool when
/// it has been read). It passes through unchanged unless credential scrubbing is switched on
/// ([`ScrubBody::scrub`]).
pub type ResponseBody = ScrubBody<crate::upstream::ResponseBody<UpstreamBody>>;

/// A body streamed from the client is gone once sent: never sent twice.
impl Replayable for LimitedBody {
    fn replay(&self) -> Option<Self> {
        None
    }
}

/// Body of every response the proxy sends: Medusa's, streamed, or one of our own; it holds
/// the request's concurrency slot until it ends.
pub type ProxyBody = Tracked<Either<ResponseBody, Full<Bytes>>>;

/// Everything a reload may change about who may call and what they may reach.
#[derive(Debug)]
pub struct Rules {
    pub access: access::AccessConfig,
    pub policy: Policy,
    pub max_body: u64,
}

/// A rule set that cannot be used, naming the config key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RulesError(pub String);

impl Rules {
    /// Validate `[access]` and `[policy]` (reads `client_keys_file`).
    pub fn from_settings(s: &Settings) -> Result<Rules, RulesError> {
        Rules::build(s, true)
    }

    /// Validate like [`Rules::from_settings`] without reading `client_keys_file`, for
    /// `check --no-secrets` (CI of manifests whose secrets live elsewhere). The result admits
    /// no client key: never serve with it.
    pub fn validate_without_secrets(s: &Settings) -> Result<Rules, RulesError> {
        Rules::build(s, false)
    }

    fn build(s: &Settings, read_keys: bool) -> Result<Rules, RulesError> {
        let mut allow_cidrs = Vec::new();
        for c in &s.access.allow_cidrs {
            allow_cidrs.push(
                c.parse::<access::Cidr>()
                    .map_err(|e| RulesError(format!("config key `access.allow_cidrs`: {e}")))?,
            );
        }
        let client_keys =
            match &s.access.client_keys_file {
                Some(_) if !read_keys => Some(access::ClientKeys::unread()),
                Some(path) => Some(access::ClientKeys::load(path).map_err(|e| {
                    RulesError(format!("config key `access.client_keys_file`: {e}"))
                })?),
                None => None,
            };
        let allow_hosts = match &s.access.allow_hosts {
            Some(hosts) => hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            None => access::default_allow_hosts(s.proxy.listen),
        };
        let access = access::AccessConfig {
            allow_cidrs,
            allow_hosts: allow_hosts.into(),
            allow_origins: s.access.allow_origins.clone(),
            client_keys,
        };
        access
            .validate()
            .map_err(|e| RulesError(format!("config key `[access]`: {e}")))?;
        access::remote_exposure_ok(
            s.proxy.listen,
            &access,
            s.access.allow_unauthenticated_remote,
        )
        .map_err(RulesError)?;
        let policy = Policy::new(PolicyConfig {
            allow_paths: s.policy.allow_paths.clone(),
            deny_paths: s.policy.deny_paths.clone(),
            read_only: s.policy.read_only,
            lift_builtin: s.policy.unsafe_lift_builtin_denies.clone(),
        })
        .map_err(|e| RulesError(format!("config: {e}")))?;
        Ok(Rules {
            access,
            policy,
            max_body: s.policy.max_body,
        })
    }
}

pub struct Proxy {
    upstream: Upstream<UpstreamBody>,
    tokens: TokenManager,
    rules: ArcSwap<Rules>,
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    metrics: Arc<Metrics>,
    access_on: AtomicBool,
    access_log: Arc<AccessLog>,
}

/// What is needed to send the same request again.
#[derive(Clone)]
struct ReplayParts {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Proxy {
    pub fn new(
        upstream: Upstream<UpstreamBody>,
        tokens: TokenManager,
        rules: Rules,
        max_concurrent: usize,
        metrics: Arc<Metrics>,
        access_log: Arc<AccessLog>,
        access_on: bool,
    ) -> Proxy {
        Proxy {
            upstream,
            tokens,
            rules: ArcSwap::from_pointee(rules),
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            metrics,
            access_on: AtomicBool::new(access_on),
            access_log,
        }
    }

    /// Turn the access log on or off (config reload).
    pub fn set_access_log(&self, on: bool) {
        self.access_on.store(on, Ordering::Relaxed);
    }

    /// Whether a TCP peer may connect at all (`access.allow_cidrs`, as currently loaded):
    /// asked at accept, before a byte of the connection is read.
    pub fn peer_allowed(&self, ip: std::net::IpAddr) -> bool {
        self.rules
            .load()
            .access
            .allow_cidrs
            .iter()
            .any(|c| c.contains(ip))
    }

    /// Swap in new access and policy rules (client keys file changed, config reloaded).
    pub fn set_rules(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let access_log = self.access_on.load(Ordering::Relaxed);
        let mut record = RequestRecord {
            start: Instant::now(),
            method: req.method().clone(),
            path: access_log.then(|| {
                crate::body::redact_query(req.uri().path_and_query().map_or("/", |p| p.as_str()))
            }),
            peer,
            status: 0,
            key_fingerprint: None,
            replayed: false,
            bytes_in: 0,
            streamed_in: None,
        };
        self.metrics.in_flight().inc();
        // The concurrency slot is taken by `forward` once every check passed, so a refused
        // request never holds one; the proxy's own error responses give it back at once.
        let mut permit = None;
        let result = self.forward(req, peer, &mut record, &mut permit).await;
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                permit = None;
                self.count_error(&e);
                tracing::warn!(method = %record.method, status = e.status().as_u16(), error = %e, "request failed");
                e.into_response().map(Either::Right)
            }
        };
        record.status = resp.status().as_u16();
        resp.map(|b| {
            Tracked::new(
                b,
                Some(record),
                Some(self.metrics.clone()),
                access_log.then(|| self.access_log.clone()),
                permit,
            )
        })
    }

    fn count_error(&self, e: &ProxyError) {
        match e {
            ProxyError::UpstreamUnreachable(_) => self.metrics.upstream_error("unreachable"),
            ProxyError::UpstreamTimeout(_) => self.metrics.upstream_error("timeout"),
            ProxyError::UpstreamCertificate(_) => self.metrics.upstream_error("certificate"),
            ProxyError::UpstreamEncoded(_) => self.metrics.upstream_error("encoded"),
            ProxyError::PayloadTooLarge(_) | ProxyError::InspectedBodyTooLarge(_) => {
                self.metrics.denied("payload_too_large")
            }
            ProxyError::Forbidden { code, .. } | ProxyError::ProxyAuth { code, .. } => {
                self.metrics.denied(code)
            }
            ProxyError::Overloaded(_) => self.metrics.denied("overloaded"),
            ProxyError::BadRequest(_) => self.metrics.denied("bad_request"),
            ProxyError::BodyTimeout(_) => self.metrics.denied("body_timeout"),
            ProxyError::HeadTooLarge(_) => self.metrics.denied("header_too_large"),
            ProxyError::NoToken { .. } => self.metrics.denied("no_token"),
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        record: &mut RequestRecord,
        slot: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<Response<Either<ResponseBody, Full<Bytes>>>, ProxyError> {
        let rules = self.rules.load();
        let (mut parts, body) = req.into_parts();
        if parts
            .extensions
            .get::<crate::sniff::ConflictingFraming>()
            .is_some()
        {
            // RFC 9112 §6.1: a server MAY reject such a request; it is a smuggling probe.
            // hyper closes the connection after this response.
            return Err(ProxyError::BadRequest(
                "Content-Length together with Transfer-Encoding",
            ));
        }

        if let Some(crate::server::HeadTooLarge(limit)) = parts.extensions.get() {
            return Err(ProxyError::HeadTooLarge(*limit));
        }
        let caller =
            access::check(&rules.access, peer.ip(), &parts.headers, &parts.uri).map_err(|d| {
                // The refused name is what the operator must add to allow_hosts (or tell the
                // tool to stop using): say it, in the log and to the caller who sent it.
                let host = match d {
                    access::Denied::Host => access::refused_host(&parts.headers, &parts.uri),
                    _ => None,
                };
                tracing::info!(
                    peer = %peer,
                    reason = d.code(),
                    host = host.as_deref().unwrap_or(""),
                    "request denied"
                );
                match d.status() {
                    StatusCode::PROXY_AUTHENTICATION_REQUIRED => ProxyError::ProxyAuth {
                        code: d.code(),
                        message: d.message(),
                    },
                    _ => ProxyError::Forbidden {
                        code: d.code(),
                        message: match host {
                            Some(h) => format!(
                                "the Host {h:?} is not in [access] allow_hosts: add it there, or \
                                 call the proxy by a name that is"
                            ),
                            None => d.message().to_owned(),
                        },
                    },
                }
            })?;
        self.check_policy(
            &rules.policy,
            &parts.method,
            parts.uri.path(),
            self.tokens.user_id_hint().as_deref().map(String::as_str),
        )?;

        // Refuse a declared oversize body before reading any of it.
        if replay::content_length(&parts.headers).is_some_and(|len| len > rules.max_body) {
            return Err(ProxyError::PayloadTooLarge(rules.max_body));
        }

        let uri = self
            .upstream
            .uri_for_target(&parts.uri)
            .map_err(upstream_error)?;
        let client_host = parts.headers.get(HOST).cloned().or_else(|| {
            // HTTP/2 clients send :authority instead of Host.
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // A protocol upgrade (WebSocket) passes through: the upgrade headers are hop-by-hop,
        // so they are stripped below like all others and then set again on purpose.
        let upgrade = headers::upgrade_requested(parts.version, &parts.headers);
        let client_upgrade = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
        headers::sanitize_request(&mut parts.headers, peer.ip(), client_host);
        if let Some(proto) = &upgrade {
            parts.headers.insert(header::UPGRADE, proto.clone());
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }

        // Only a request about to reach Medusa takes a slot. Beyond the cap: answer at once
        // rather than queue (a queue hides overload and grows memory); the slot is held until
        // the response body ends (an upgraded connection takes it along and holds it until
        // the tunnel closes).
        *slot = Some(
            self.slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| ProxyError::Overloaded(self.max_concurrent))?,
        );

        // Fail fast, before reading any body, when no token can be had.
        let token = self.tokens.token().await?;
        if self.tokens.user_id_hint().is_none() {
            // First request before any login finished: the own-user rule needs the id.
            self.check_policy(
                &rules.policy,
                &parts.method,
                parts.uri.path(),
                token.user_id.as_deref(),
            )?;
        }
        record.key_fingerprint = caller.key_fingerprint;

        // Credentials in bodies (built-in body rules): the request body may be refused in
        // `prepare`, and every answer below goes through this `finish`, which scrubs Medusa's
        // body. It shadows the free `finish`, so no exit below can forget the scrubbing.
        let body_rules = rules.policy.body_rules(&parts.method, parts.uri.path());
        let finish = |resp| {
            finish(resp, body_rules.scrub).unwrap_or_else(|e| {
                self.count_error(&e);
                tracing::warn!(error = %e, "response refused");
                e.into_response().map(Either::Right)
            })
        };
        let mut too_large = None;
        let (first_body, replay) = match replay::prepare(
            &parts.headers,
            body,
            self.upstream.settings().request_timeout,
            body_rules,
            rules.max_body,
        )
        .await?
        {
            PreparedBody::Replayable(bytes) => {
                record.bytes_in = bytes.len() as u64;
                (
                    Either::Left(Full::new(bytes.clone())),
                    Some(ReplayParts {
                        method: parts.method.clone(),
                        uri: uri.clone(),
                        headers: parts.headers.clone(),
                        body: bytes,
                    }),
                )
            }
            PreparedBody::Streamed(incoming) => {
                let stats = Arc::new(BodyStats::default());
                record.streamed_in = Some(stats.clone());
                too_large = Some(stats.clone());
                (
                    Either::Right(LimitedBody::new(incoming, rules.max_body, stats)),
                    None,
                )
            }
        };

        let sent = self
            .send(parts.method, uri, parts.headers, first_body, &token)
            .await;
        let resp = match sent {
            Err(_)
                if too_large
                    .as_ref()
                    .is_some_and(|s| s.exceeded.load(Ordering::Relaxed)) =>
            {
                // The body broke off at the cap; Medusa saw an incomplete message.
                return Err(ProxyError::PayloadTooLarge(rules.max_body));
            }
            other => other.map_err(upstream_error)?,
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(self.tunnel(resp, client_upgrade, &token, slot.take()));
        }
        if resp.status() != StatusCode::UNAUTHORIZED {
            token.mark_verified();
            return Ok(finish(resp));
        }

        // A 401 is about our token (rotated secret, early expiry) or about the route (a
        // customer route, a plugin's own auth): only Medusa can tell. Ask it (one check per
        // token at a time and per few seconds, see auth::check) before the token is dropped;
        // unless it confirms, the client gets Medusa's own 401, body and all, and nobody else
        // is affected. A check that cannot reach Medusa keeps the token too.
        if !self.tokens.confirm_rejected(&token).await {
            return Ok(finish(resp));
        }
        // Confirmed: a new login is under way. Never hand the client a 401 it cannot fix if
        // we can replay; never replay more than once.
        let Some(replay) = replay else {
            tracing::info!("401 for a streamed body: not replayable, passing the 401 on");
            return Ok(finish(resp));
        };
        drop(resp);
        let fresh = self.tokens.token().await?;
        if fresh.id == token.id {
            return Err(ProxyError::NoToken {
                reason: "Medusa rejected the token and no new one is available".into(),
                retry_after: std::time::Duration::from_secs(1),
            });
        }
        let resp = self.resend(replay, &fresh).await.map_err(upstream_error)?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(self.tunnel(resp, client_upgrade, &fresh, slot.take()));
        }
        record.replayed = true;
        self.metrics.replay(resp.status().as_u16());
        if resp.status() == StatusCode::UNAUTHORIZED {
            // The fresh token too, or the route? Ask again; if the fresh token is rejected
            // as well, the driver backs off (a Medusa that rejects every token it issues).
            self.tokens.confirm_rejected(&fresh).await;
        } else {
            fresh.mark_verified();
        }
        tracing::debug!(status = resp.status().as_u16(), "replayed after 401");
        Ok(finish(resp))
    }

    fn check_policy(
        &self,
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

    async fn send(
        &self,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        body: UpstreamBody,
        token: &Token,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        headers.insert(token.header_name.clone(), token.header.clone());
        // A compressed answer could not be scanned for credentials (`crate::scrub`), and
        // compressing on the loopback hop to Medusa buys nothing.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        // Medusa speaks HTTP/1.1 whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        let resp = self.upstream.send(req).await?;
        // The upstream client sent it once more after a broken connection (an idempotent
        // request whose body it still held).
        if resp.extensions().get::<Resent>().is_some() {
            self.metrics.upstream_error("retried");
        }
        Ok(resp.map(ScrubBody::passthrough))
    }

    /// Send a buffered request again (after a broken connection or a 401).
    async fn resend(
        &self,
        r: ReplayParts,
        token: &Token,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        self.send(
            r.method,
            r.uri,
            r.headers,
            Either::Left(Full::new(r.body)),
            token,
        )
        .await
    }

    /// Medusa accepted a protocol upgrade: answer the client with the 101 and splice the two
    /// upgraded connections together in the background. The tunnel holds the request's
    /// concurrency slot until it closes.
    fn tunnel(
        &self,
        mut resp: Response<ResponseBody>,
        client: Option<hyper::upgrade::OnUpgrade>,
        token: &Token,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Response<Either<ResponseBody, Full<Bytes>>> {
        token.mark_verified();
        let upstream = hyper::upgrade::on(&mut resp);
        let (mut parts, body) = resp.into_parts();
        let proto = parts.headers.get(header::UPGRADE).cloned();
        headers::sanitize_response(&mut parts.headers);
        if let Some(proto) = proto {
            parts.headers.insert(header::UPGRADE, proto);
        }
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        match client {
            Some(client) => {
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::try_join!(client, upstream) {
                        Ok((c, u)) => {
                            let mut c = hyper_util::rt::TokioIo::new(c);
                            let mut u = hyper_util::rt::TokioIo::new(u);
                            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                                tracing::debug!(error = %e, "upgraded connection ended");
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                    }
                });
            }
            None => tracing::warn!("Medusa switched protocols for a request that did not ask to"),
        }
        Response::from_parts(parts, Either::Left(body))
    }
}

/// Medusa's answer for the client: response hygiene, and the credential fields of `scrub`
/// replaced in its body as it streams (see `crate::scrub`). A compressed body cannot be
/// scanned and is refused rather than passed on.
fn finish(
    resp: Response<ResponseBody>,
    scrub: Scrub,
) -> Result<Response<Either<ResponseBody, Full<Bytes>>>, ProxyError> {
    let (mut parts, mut body) = resp.into_parts();
    headers::sanitize_response(&mut parts.headers);
    let content_type = parts.headers.get(header::CONTENT_TYPE);
    if scrub.any()
        && !body.is_end_stream()
        && crate::scrub::scanned_content_type(content_type.map(HeaderValue::as_bytes))
    {
        let encodings = parts.headers.get_all(header::CONTENT_ENCODING);
        if let Some(enc) = encodings
            .iter()
            .find(|v| crate::scrub::encoded(v.as_bytes()))
        {
            let enc = String::from_utf8_lossy(enc.as_bytes()).into_owned();
            return Err(ProxyError::UpstreamEncoded(enc));
        }
        body.scrub(scrub);
    }
    Ok(Response::from_parts(parts, Either::Left(body)))
}

fn upstream_error(e: UpstreamError) -> ProxyError {
    match e {
        UpstreamError::Timeout(d) => ProxyError::UpstreamTimeout(d),
        UpstreamError::InvalidUri(_) => {
            ProxyError::BadRequest("the request target is not a valid URI")
        }
        e @ (UpstreamError::Connect { .. }
        | UpstreamError::ConnectionBroken(_)
        | UpstreamError::NotTls { .. }) => ProxyError::UpstreamUnreachable(error_chain(&e)),
        e @ UpstreamError::Certificate { .. } => ProxyError::UpstreamCertificate(error_chain(&e)),
    }
}
