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

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;
    use crate::proxy::testing::stand_in;

    fn request(headers: &[(&'static str, &'static str)]) -> Request<()> {
        let mut req = Request::builder()
            .uri("/admin/products")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        for (name, value) in headers {
            req.headers_mut()
                .append(*name, HeaderValue::from_static(value));
        }
        req.extensions_mut()
            .insert(PeerAddr("127.0.0.7:50000".parse().unwrap()));
        req
    }

    /// What Medusa would get for `req`, and the client's answer to Medusa's `answer`.
    async fn through(req: Request<()>, answer: Response<()>) -> (Request<()>, Response<()>) {
        let answer = std::sync::Mutex::new(Some(answer));
        let (inner, probe) = stand_in(move |_| Ok(answer.lock().unwrap().take().unwrap()));
        let resp = HygieneLayer.layer(inner).oneshot(req).await.unwrap();
        assert_eq!(probe.calls(), 1);
        (probe.last(), resp)
    }

    #[tokio::test]
    async fn the_request_loses_hop_by_hop_credentials_and_origin_claims() {
        let req = request(&[
            ("host", "localhost:7000"),
            ("connection", "keep-alive, x-named-hop"),
            ("x-named-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("authorization", "Bearer client-token"),
            ("cookie", "connect.sid=abc"),
            ("x-medusa-access-token", "client-key"),
            ("proxy-authorization", "Bearer proxy-key"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-prefix", "/x"),
            ("x-real-ip", "6.6.6.6"),
            ("x-http-method-override", "DELETE"),
            ("accept-encoding", "gzip, br"),
            ("x-unrelated", "kept"),
        ]);
        let (seen, _) = through(req, Response::new(())).await;
        let h = seen.headers();
        for gone in [
            "connection",
            "x-named-hop",
            "keep-alive",
            "te",
            "proxy-connection",
            "authorization",
            "cookie",
            "x-medusa-access-token",
            "proxy-authorization",
            "forwarded",
            "x-forwarded-prefix",
            "x-real-ip",
            "x-http-method-override",
            "host",
        ] {
            assert!(h.get(gone).is_none(), "{gone} reached Medusa");
        }
        // What the proxy saw, once each.
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "127.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "localhost:7000");
        assert_eq!(h["accept-encoding"], "identity");
        assert_eq!(h["x-unrelated"], "kept");
        assert_eq!(seen.version(), Version::HTTP_11);
        assert!(seen.extensions().get::<UpgradeRequested>().is_none());
    }

    #[tokio::test]
    async fn an_http2_request_names_its_authority_and_goes_on_as_http11() {
        let mut req = Request::builder()
            .uri("https://localhost:7000/admin/products")
            .version(Version::HTTP_2)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(PeerAddr("[::1]:50000".parse().unwrap()));
        let (seen, _) = through(req, Response::new(())).await;
        assert_eq!(seen.headers()["x-forwarded-host"], "localhost:7000");
        assert_eq!(seen.headers()["x-forwarded-for"], "::1");
        assert_eq!(seen.version(), Version::HTTP_11);
        // Upgrade is HTTP/1.1's (RFC 9113 §8.2.2): not carried over from HTTP/2.
        assert!(seen.extensions().get::<UpgradeRequested>().is_none());
        assert!(seen.headers().get("upgrade").is_none());
    }

    #[tokio::test]
    async fn an_http11_upgrade_is_noted_for_the_upgrade_step() {
        let mut req = request(&[
            ("host", "localhost"),
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        *req.version_mut() = Version::HTTP_11;
        let (seen, _) = through(req, Response::new(())).await;
        let noted = seen.extensions().get::<UpgradeRequested>().expect("noted");
        assert_eq!(noted.0, "websocket");
        // Stripped here as hop-by-hop; `upgrade` sets them again on purpose.
        assert!(seen.headers().get("upgrade").is_none());
        assert!(seen.headers().get("connection").is_none());
    }

    #[tokio::test]
    async fn the_response_loses_cookies_and_hop_by_hop() {
        let answer = Response::builder()
            .header("set-cookie", "connect.sid=medusa-session")
            .header("connection", "keep-alive, x-named-hop")
            .header("x-named-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("upgrade", "h2c")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (_, resp) = through(request(&[("host", "localhost")]), answer).await;
        let h = resp.headers();
        for gone in [
            "set-cookie",
            "connection",
            "x-named-hop",
            "keep-alive",
            "upgrade",
        ] {
            assert!(h.get(gone).is_none(), "{gone} reached the client");
        }
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_101_keeps_its_upgrade_and_says_connection_upgrade() {
        let answer = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade, x-named-hop")
            .header("x-named-hop", "1")
            .header("set-cookie", "connect.sid=medusa-session")
            .body(())
            .unwrap();
        let (_, resp) = through(request(&[("host", "localhost")]), answer).await;
        let h = resp.headers();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h.get_all("connection").iter().count(), 1);
        assert_eq!(h["connection"], "upgrade");
        assert!(h.get("x-named-hop").is_none());
        assert!(h.get("set-cookie").is_none());
    }

    #[tokio::test]
    async fn the_inner_error_is_passed_on() {
        let (inner, probe) = stand_in::<(), ()>(|_| Err(ProxyError::Overloaded(5)));
        let err = HygieneLayer
            .layer(inner)
            .oneshot(request(&[]))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Overloaded(5)), "{err:?}");
        assert_eq!(probe.calls(), 1);
    }
}
