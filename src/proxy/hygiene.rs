//! `hygiene`: what crosses the proxy in headers. On the way in: hop-by-hop headers, client
//! credentials and every claim about the request's origin are removed, and the proxy states
//! what it saw (`X-Forwarded-For/-Proto/-Host`); Medusa is asked for an uncompressed answer
//! (a compressed body could not be scanned for credentials, see `crate::scrub`) over
//! HTTP/1.1. On the way out: hop-by-hop headers and cookies are removed. A protocol upgrade
//! keeps its `Upgrade` header, re-set on purpose ([`UpgradeRequested`], see `upgrade`). The
//! decisions are the pure functions of [`super::headers`].

use std::net::{IpAddr, Ipv4Addr};
use std::task::{Context, Poll};

use http::header::{self, HOST};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use tower::{Layer, Service};

use super::future::{Finish, LayerFuture};
use super::headers;
use crate::error::ProxyError;
use crate::server::PeerAddr;

/// The client asked to switch to this protocol (a request extension for `upgrade`).
#[derive(Debug, Clone)]
pub struct UpgradeRequested(pub HeaderValue);

/// The `hygiene` layer: cleans request headers on the way to Medusa and response headers on
/// the way back (see the module documentation). Holds no state.
#[derive(Debug, Clone, Copy, Default)]
pub struct HygieneLayer;

impl<S> Layer<S> for HygieneLayer {
    type Service = Hygiene<S>;
    fn layer(&self, inner: S) -> Hygiene<S> {
        Hygiene { inner }
    }
}

/// The `hygiene` service: [`clean_request`] before the inner service, Medusa's response
/// headers cleaned after it. Never refuses.
#[derive(Debug, Clone)]
pub struct Hygiene<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for Hygiene<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = ProxyError>,
{
    type Response = Response<RB>;
    type Error = ProxyError;
    type Future = LayerFuture<S::Future, Clean, Response<RB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        clean_request(&mut req);
        LayerFuture::called(self.inner.call(req), Clean)
    }
}

/// The request as Medusa gets it (see the module documentation).
pub fn clean_request<B>(req: &mut Request<B>) {
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0.ip());
    let client_host = req.headers().get(HOST).cloned().or_else(|| {
        // HTTP/2 clients send :authority instead of Host.
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let upgrade = headers::upgrade_requested(req.version(), req.headers());
    let h = req.headers_mut();
    headers::sanitize_request(h, peer, client_host);
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    if let Some(proto) = upgrade {
        req.extensions_mut().insert(UpgradeRequested(proto));
    }
    // Medusa speaks HTTP/1.1 whatever the client spoke.
    *req.version_mut() = Version::HTTP_11;
}

/// Finishes `hygiene`: Medusa's response headers for the client.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clean;

impl<RB> Finish<Result<Response<RB>, ProxyError>> for Clean {
    type Output = Response<RB>;
    fn finish(self, answer: Result<Response<RB>, ProxyError>) -> Result<Response<RB>, ProxyError> {
        let mut resp = answer?;
        let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let proto = upgraded
            .then(|| resp.headers().get(header::UPGRADE).cloned())
            .flatten();
        headers::sanitize_response(resp.headers_mut());
        if upgraded {
            if let Some(proto) = proto {
                resp.headers_mut().insert(header::UPGRADE, proto);
            }
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        Ok(resp)
    }
}
