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

use super::future::{Finish, LayerFuture};
use super::record::Noted;
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

/// The `access` layer.
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

/// The `access` service.
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
    type Future = LayerFuture<S::Future, Fingerprint, Response<RB>>;

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
                let identity = match &self.resolve {
                    None => None,
                    Some(resolve) => match resolve.pick(caller.key_owners) {
                        Ok(id) => {
                            req.extensions_mut().insert(id.clone());
                            Some(id.shared_name())
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
                    },
                };
                LayerFuture::called(
                    self.inner.call(req),
                    Fingerprint(caller.key_fingerprint, identity),
                )
            }
            Err(d) => LayerFuture::refuse(refusal(d, &req, peer)),
        }
    }
}

/// The client's answer to a refusal. The refused host is what the operator must add to
/// `allow_hosts` (or tell the tool to stop using): say it, in the log and to the caller who
/// sent it.
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
                None => d.message().to_owned(),
            },
        },
    }
}

/// Finishes `access`: the key's fingerprint and the identity's name for the access log.
pub struct Fingerprint(Option<String>, Option<Arc<str>>);

impl<RB> Finish<Result<Response<RB>, ProxyError>> for Fingerprint {
    type Output = Response<RB>;
    fn finish(self, answer: Result<Response<RB>, ProxyError>) -> Result<Response<RB>, ProxyError> {
        let mut resp = answer?;
        if self.0.is_some() || self.1.is_some() {
            let noted = resp.extensions_mut().get_or_insert_default::<Noted>();
            noted.key_fingerprint = self.0;
            noted.identity = self.1;
        }
        Ok(resp)
    }
}
