//! `access`: who may use the proxy. The peer address, the `Host`, a browser's `Origin` and
//! the client key (`Proxy-Authorization`) are checked against `[access]` as currently loaded
//! (the rules are swapped in place on reload, see [`AccessRules`]); the pure decision is
//! [`crate::access::check`]. A refusal is 403 (or 407 for a missing or wrong key) and names
//! the setting to change. The peer check also runs at accept (`crate::server`), so this one
//! only matters for rules reloaded while a connection is open.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

use super::future::{LayerFuture, Pass};
use super::record::Notes;
use crate::access::{self, AccessConfig, Denied};
use crate::error::ProxyError;
use crate::identity::Resolve;
use crate::server::PeerAddr;

/// `[access]` as currently loaded, shared by the layer, the accept loop and the reloader.
pub type AccessRules = Arc<ArcSwap<AccessConfig>>;

/// Whether a TCP peer may connect at all (`access.allow_cidrs`, as currently loaded): asked
/// at accept, before a byte of the connection is read.
pub fn peer_allowed(rules: &AccessRules, ip: IpAddr) -> bool {
    rules.load().allow_cidrs.iter().any(|c| c.contains(ip))
}

/// The `access` layer: checks the peer, `Host`, `Origin` and client key of each request
/// against the `[access]` rules it holds (swapped in place on reload) before the inner
/// service sees it.
#[derive(Clone)]
pub struct AccessLayer {
    /// The rules, swapped on reload.
    pub rules: AccessRules,
    /// How the identity of an admitted request is chosen (set as a request
    /// extension, [`crate::identity::Identity`]); `None`: no identity is set (unit tests of the steps below).
    pub resolve: Option<Resolve>,
}

impl AccessLayer {
    /// The step with `rules` and no identity.
    pub fn new(rules: AccessRules) -> AccessLayer {
        AccessLayer {
            rules,
            resolve: None,
        }
    }

    /// Choose each admitted request's identity this way.
    pub fn resolving(mut self, resolve: Resolve) -> AccessLayer {
        self.resolve = Some(resolve);
        self
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;
    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            rules: self.rules.clone(),
            resolve: self.resolve.clone(),
        }
    }
}

/// The `access` service: passes an admitted request on (the client key's fingerprint noted
/// for the access log) and answers a refused one itself, 403 or 407.
#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    rules: AccessRules,
    resolve: Option<Resolve>,
}

impl<S, B, RB> Service<Request<B>> for Access<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = ProxyError>,
{
    type Response = Response<RB>;
    type Error = ProxyError;
    type Future = LayerFuture<S::Future, Pass, Response<RB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let peer = req
            .extensions()
            .get::<PeerAddr>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0.ip());
        let rules = self.rules.load();
        match access::check(&rules, peer, req.headers(), req.uri()) {
            Ok(caller) => {
                // What the access line needs, noted now: also when a later step fails.
                let notes = req.extensions().get::<Notes>().cloned();
                if let (Some(fp), Some(notes)) = (&caller.key_fingerprint, &notes) {
                    notes.note(|n| n.key_fingerprint = Some(fp.clone()));
                }
                if let Some(resolve) = &self.resolve {
                    match resolve.pick(caller.key_owners) {
                        Ok(id) => {
                            if let Some(notes) = &notes {
                                notes.note(|n| {
                                    n.identity = Some(id.shared_name());
                                    n.identity_index = Some(id.index());
                                });
                            }
                            req.extensions_mut().insert(id.clone());
                        }
                        Err(u) => {
                            tracing::info!(
                                peer = %peer,
                                reason = u.code(),
                                client_key = caller.key_fingerprint.as_deref().unwrap_or(""),
                                "request denied"
                            );
                            return LayerFuture::refuse(ProxyError::Forbidden {
                                code: u.code(),
                                message: u.message().to_owned(),
                            });
                        }
                    }
                }
                LayerFuture::called(self.inner.call(req), Pass)
            }
            Err(d) => LayerFuture::refuse(refusal(d, &req, peer)),
        }
    }
}

/// The client's answer to a refusal. The refused host (or peer address) is what the operator
/// must add to `allow_hosts` (`allow_cidrs`), or tell the tool to stop using: say it, in the
/// log and to the caller who sent it.
fn refusal<B>(d: Denied, req: &Request<B>, peer: IpAddr) -> ProxyError {
    let host = match d {
        Denied::Host => access::refused_host(req.headers(), req.uri()),
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
                    "the Host {h:?} is not in [access] allow_hosts: add it there, or call the \
                     proxy by a name that is"
                ),
                // The address the operator must add (a missing `PeerAddr` is 0.0.0.0: say
                // nothing rather than a made-up address).
                None if d == Denied::Peer && !peer.is_unspecified() => format!(
                    "the client's address {peer} is not in [access] allow_cidrs: add its \
                     network there"
                ),
                None => d.message().to_owned(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http::HeaderValue;
    use tower::ServiceExt;

    use super::*;
    use crate::access::{ClientKeys, HostList};
    use crate::proxy::testing::stand_in;

    const KEY: &str = "key-a-0123456789abcdef";

    fn rules(keys: bool) -> AccessConfig {
        AccessConfig {
            allow_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
            allow_hosts: HostList::from(vec!["localhost".to_owned()]),
            allow_origins: vec!["https://dash.example.com".to_owned()],
            client_keys: keys.then(|| ClientKeys::parse(KEY).unwrap()),
        }
    }

    fn shared(cfg: AccessConfig) -> AccessRules {
        Arc::new(ArcSwap::from_pointee(cfg))
    }

    /// A request from 127.0.0.1 to `Host: localhost:7000`, with `extra` headers.
    fn request(extra: &[(&'static str, &'static str)]) -> Request<()> {
        let mut req = Request::builder()
            .uri("/admin/products")
            .header("host", "localhost:7000")
            .body(())
            .unwrap();
        for (name, value) in extra {
            req.headers_mut()
                .insert(*name, HeaderValue::from_static(value));
        }
        req.extensions_mut()
            .insert(PeerAddr("127.0.0.1:50000".parse::<SocketAddr>().unwrap()));
        req
    }

    fn from(peer: &str, mut req: Request<()>) -> Request<()> {
        req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        req
    }

    /// The `access` step over a stand-in answering 200, and how often it was called.
    fn access(
        rules: &AccessRules,
    ) -> (
        impl Service<Request<()>, Response = Response<()>, Error = ProxyError>,
        crate::proxy::testing::Probe<()>,
    ) {
        let (inner, probe) = stand_in(|_| Ok(Response::new(())));
        (AccessLayer::new(rules.clone()).layer(inner), probe)
    }

    fn forbidden(err: &ProxyError) -> (&'static str, &str) {
        match err {
            ProxyError::Forbidden { code, message } => (code, message),
            other => panic!("expected 403, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_peer_outside_allow_cidrs_is_refused() {
        let rules = shared(rules(false));
        let (svc, probe) = access(&rules);
        let err = svc
            .oneshot(from("10.1.2.3:4000", request(&[])))
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        let (code, message) = forbidden(&err);
        assert_eq!(code, "peer_not_allowed");
        assert!(message.contains("allow_cidrs"), "{message}");
        // The refused address is what the operator must add: named.
        assert!(message.contains("10.1.2.3"), "{message}");
        assert_eq!(probe.calls(), 0);
    }

    #[tokio::test]
    async fn a_request_without_a_peer_address_is_refused() {
        // Fails closed: no `PeerAddr` is 0.0.0.0, in no range.
        let rules = shared(rules(false));
        let (svc, probe) = access(&rules);
        let mut req = request(&[]);
        req.extensions_mut().remove::<PeerAddr>();
        let err = svc.oneshot(req).await.unwrap_err();
        assert_eq!(forbidden(&err).0, "peer_not_allowed");
        assert_eq!(forbidden(&err).1, Denied::Peer.message());
        assert_eq!(probe.calls(), 0);
    }

    #[tokio::test]
    async fn a_wrong_host_is_refused_and_named() {
        let rules = shared(rules(false));
        let (svc, probe) = access(&rules);
        let err = svc
            .oneshot(request(&[("host", "evil.example:7000")]))
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        let (code, message) = forbidden(&err);
        assert_eq!(code, "host_not_allowed");
        assert!(message.contains("\"evil.example:7000\""), "{message}");
        assert!(message.contains("allow_hosts"), "{message}");
        assert_eq!(probe.calls(), 0);
    }

    #[tokio::test]
    async fn a_host_that_does_not_look_like_one_is_not_echoed() {
        let rules = shared(rules(false));
        let (svc, probe) = access(&rules);
        let err = svc
            .oneshot(request(&[("host", "evil<script>")]))
            .await
            .unwrap_err();
        let (code, message) = forbidden(&err);
        assert_eq!(code, "host_not_allowed");
        assert!(!message.contains("script"), "{message}");
        assert_eq!(message, Denied::Host.message());
        assert_eq!(probe.calls(), 0);
    }

    #[tokio::test]
    async fn an_origin_must_be_listed() {
        let rules = shared(rules(false));
        let (mut svc, probe) = access(&rules);
        let err = (&mut svc)
            .oneshot(request(&[("origin", "https://evil.example")]))
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        assert_eq!(forbidden(&err).0, "origin_not_allowed");
        // A cross-site browser request without an Origin is refused too.
        let err = (&mut svc)
            .oneshot(request(&[("sec-fetch-site", "cross-site")]))
            .await
            .unwrap_err();
        assert_eq!(forbidden(&err).0, "origin_not_allowed");
        assert_eq!(probe.calls(), 0);
        (&mut svc)
            .oneshot(request(&[("origin", "https://dash.example.com")]))
            .await
            .unwrap();
        assert_eq!(probe.calls(), 1);
    }

    #[tokio::test]
    async fn a_missing_or_wrong_client_key_is_407() {
        let rules = shared(rules(true));
        let (mut svc, probe) = access(&rules);
        let err = (&mut svc).oneshot(request(&[])).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert!(
            matches!(
                err,
                ProxyError::ProxyAuth {
                    code: "proxy_auth_required",
                    ..
                }
            ),
            "{err:?}"
        );
        let err = (&mut svc)
            .oneshot(request(&[(
                "proxy-authorization",
                "Bearer key-a-0123456789abcdeX",
            )]))
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert!(
            matches!(
                err,
                ProxyError::ProxyAuth {
                    code: "proxy_auth_invalid",
                    ..
                }
            ),
            "{err:?}"
        );
        // The key is not in what the client is told.
        assert!(!err.to_string().contains("key-a-"), "{err}");
        assert_eq!(probe.calls(), 0);
    }

    #[tokio::test]
    async fn an_admitted_caller_reaches_inner_and_its_key_is_noted() {
        let rules = shared(rules(true));
        let (svc, probe) = access(&rules);
        let mut req = request(&[("proxy-authorization", "Bearer key-a-0123456789abcdef")]);
        let notes = Notes::default();
        req.extensions_mut().insert(notes.clone());
        svc.oneshot(req).await.unwrap();
        assert_eq!(probe.calls(), 1);
        let want = ClientKeys::parse(KEY).unwrap().fingerprints();
        assert_eq!(notes.get().key_fingerprint.as_ref(), Some(&want[0]));
        // The request itself went on as it came (hygiene strips the key, not access).
        assert_eq!(probe.last().uri(), "/admin/products");
    }

    #[tokio::test]
    async fn without_keys_nothing_is_noted() {
        let rules = shared(rules(false));
        let (svc, probe) = access(&rules);
        let mut req = request(&[]);
        let notes = Notes::default();
        req.extensions_mut().insert(notes.clone());
        svc.oneshot(req).await.unwrap();
        assert_eq!(probe.calls(), 1);
        assert!(notes.get().key_fingerprint.is_none());
    }

    fn identity(index: usize, name: &str) -> crate::identity::Identity {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "password").unwrap();
        let tokens =
            crate::auth::TokenManager::builder("http://127.0.0.1:9", crate::config::Flavor::V1)
                .email("a@b.c")
                .secret(crate::secret::SecretSource::File(pw))
                .build()
                .unwrap();
        crate::identity::Identity::new(index, name, tokens, None)
    }

    #[tokio::test]
    async fn the_key_picks_the_identity_which_is_set_and_noted() {
        const OTHER: &str = "key-b-0123456789abcdef";
        let mut cfg = rules(false);
        cfg.client_keys = Some(ClientKeys::merge([
            ClientKeys::parse(KEY).unwrap().owned_by(1),
            ClientKeys::parse(OTHER).unwrap(),
        ]));
        let all: Arc<[_]> = vec![identity(0, "catalog"), identity(1, "reporting")].into();
        let (inner, probe) = stand_in(|_| Ok(Response::new(())));
        let mut svc = AccessLayer::new(shared(cfg))
            .resolving(Resolve::ByClientKey(all))
            .layer(inner);
        let mut req = request(&[("proxy-authorization", "Bearer key-a-0123456789abcdef")]);
        let notes = Notes::default();
        req.extensions_mut().insert(notes.clone());
        (&mut svc).oneshot(req).await.unwrap();
        let seen = probe.last();
        let id = seen.extensions().get::<crate::identity::Identity>();
        assert_eq!(id.map(|i| i.name()), Some("reporting"));
        assert_eq!(notes.get().identity.as_deref(), Some("reporting"));
        // A valid key of no [[clients]] entry: 403 naming the rule, never the key; the key's
        // fingerprint is still noted for the access line.
        let mut req = request(&[("proxy-authorization", "Bearer key-b-0123456789abcdef")]);
        let notes = Notes::default();
        req.extensions_mut().insert(notes.clone());
        let err = (&mut svc).oneshot(req).await.unwrap_err();
        let (code, message) = forbidden(&err);
        assert_eq!(code, "no_identity");
        assert!(
            message.contains("[[clients]]") && !message.contains("key-b"),
            "{message}"
        );
        assert!(notes.get().key_fingerprint.is_some() && notes.get().identity.is_none());
        assert_eq!(probe.calls(), 1);
    }

    #[tokio::test]
    async fn the_inner_error_is_passed_on() {
        let rules = shared(rules(false));
        let (inner, probe) = stand_in::<(), ()>(|_| Err(ProxyError::Overloaded(4)));
        let err = AccessLayer::new(rules)
            .layer(inner)
            .oneshot(request(&[]))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Overloaded(4)), "{err:?}");
        assert_eq!(probe.calls(), 1);
    }

    #[tokio::test]
    async fn swapped_rules_apply_to_the_next_request() {
        let rules = shared(rules(false));
        let (mut svc, probe) = access(&rules);
        (&mut svc).oneshot(request(&[])).await.unwrap();
        assert_eq!(probe.calls(), 1);
        // Reload: keys required now, on the same service (an open connection).
        rules.store(Arc::new(super::tests::rules(true)));
        let err = (&mut svc).oneshot(request(&[])).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        // Reload: another host allowed, localhost no longer.
        let mut other = super::tests::rules(false);
        other.allow_hosts = HostList::from(vec!["proxy.internal".to_owned()]);
        rules.store(Arc::new(other));
        let err = (&mut svc).oneshot(request(&[])).await.unwrap_err();
        assert_eq!(forbidden(&err).0, "host_not_allowed");
        (&mut svc)
            .oneshot(request(&[("host", "proxy.internal")]))
            .await
            .unwrap();
        assert_eq!(probe.calls(), 2);
        // The accept-time check reads the same rules.
        assert!(peer_allowed(&rules, "127.0.0.1".parse().unwrap()));
        assert!(!peer_allowed(&rules, "10.0.0.1".parse().unwrap()));
    }
}
