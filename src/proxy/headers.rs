//! Header hygiene, both directions. Small pure functions over a `HeaderMap`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and must not be
/// forwarded. `Proxy-Connection` is not standard but old clients send it (RFC 9112 §9.6
/// notes it), and `Keep-Alive` is RFC 2068's.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Client headers that can carry a credential Medusa would accept (or that authenticate to
/// the proxy itself). The proxy injects its own credential; a client's must never reach Medusa.
const CLIENT_CREDENTIALS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::COOKIE,
    HeaderName::from_static("x-medusa-access-token"),
    header::PROXY_AUTHORIZATION,
];

/// Remove hop-by-hop headers, including every header named in `Connection` (RFC 9110
/// §7.6.1), whatever their spelling or however many `Connection` lines there are.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Collect the names first: `Connection` itself is removed below.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(s) = value.to_str() else { continue };
        for token in s.split(',') {
            let token = token.trim();
            // `keep-alive`, `upgrade`, ... are removed below anyway: skip them without
            // building a name (Node sends `Connection: keep-alive` on every response).
            if HOP_BY_HOP
                .iter()
                .any(|h| token.eq_ignore_ascii_case(h.as_str()))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The protocol a client asks to switch to (RFC 9110 §7.8), if this is an HTTP/1.1 request
/// with `Upgrade` and a `Connection` header naming `upgrade`.
pub fn upgrade_requested(version: http::Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != http::Version::HTTP_11 {
        return None;
    }
    let proto = headers.get(header::UPGRADE)?;
    let named = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    named.then(|| proto.clone())
}

/// Prepare a client's request headers for Medusa: no hop-by-hop headers, no client
/// credentials, no client-supplied forwarding claims; then our `X-Forwarded-*`.
pub fn sanitize_request(
    headers: &mut HeaderMap,
    client_ip: IpAddr,
    client_host: Option<HeaderValue>,
) {
    strip_hop_by_hop(headers);
    for name in &CLIENT_CREDENTIALS {
        headers.remove(name);
    }
    strip_origin_claims(headers);
    headers.remove(header::HOST);
    headers.insert(
        HeaderName::from_static("x-forwarded-for"),
        ip_header(client_ip),
    );
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    match client_host {
        Some(h) => headers.insert(HeaderName::from_static("x-forwarded-host"), h),
        None => headers.remove(HeaderName::from_static("x-forwarded-host")),
    };
}

/// Client headers that claim where a request came from or what it is. Medusa, a gateway or
/// a plugin in front of it may trust any of them (an IP allow list, a rewritten path, an
/// overridden method), so none from a client may pass; the proxy states what it saw in its
/// own `X-Forwarded-For/-Proto/-Host`. Every `x-forwarded-*` name is removed as well.
const ORIGIN_CLAIMS: [HeaderName; 10] = [
    header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-original-forwarded-for"),
];

/// Remove every client claim about the request's origin or method (`Forwarded`, `X-Real-IP`,
/// `X-Original-URL`, `X-HTTP-Method-Override`, the rest of the private `ORIGIN_CLAIMS`),
/// including all `X-Forwarded-*` headers, whatever their spelling (header names are
/// case-insensitive and `http` stores them lowercased).
pub fn strip_origin_claims(headers: &mut HeaderMap) {
    for name in &ORIGIN_CLAIMS {
        headers.remove(name);
    }
    // Rare: only a request that carries one pays for the list.
    let forwarded: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-forwarded-"))
        .cloned()
        .collect();
    for name in forwarded {
        headers.remove(name);
    }
}

/// Prepare Medusa's response headers for the client: no hop-by-hop headers and no cookies
/// (a Medusa session must never reach a client; `Upstream::send` already removed them, this
/// is the second lock on the same door).
pub fn sanitize_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(header::SET_COOKIE);
}

fn ip_header(ip: IpAddr) -> HeaderValue {
    // Clients of a sidecar all come from one address: keep the last value per worker thread
    // (a clone of a `HeaderValue` shares its bytes) instead of formatting it for every request.
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        if let Some((cached, value)) = last.as_ref()
            && *cached == ip
        {
            return value.clone();
        }
        // An IP address always renders as a valid header value.
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(ip.to_string()))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        *last = Some((ip, value.clone()));
        value
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarded_for_names_each_client_even_when_they_alternate() {
        for ip in ["127.0.0.1", "::1", "127.0.0.1", "10.0.0.7", "10.0.0.7"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut h = map(&[("host", "localhost"), ("x-forwarded-for", "6.6.6.6")]);
            sanitize_request(&mut h, ip, None);
            assert_eq!(h["x-forwarded-for"], ip.to_string().as_str());
            assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        }
    }

    #[test]
    fn connection_named_headers_are_removed_in_any_spelling() {
        let mut h = map(&[
            ("Connection", "X-Foo, keep-alive"),
            ("connection", " x-BAR ,"),
            ("x-foo", "1"),
            ("X-Bar", "2"),
            ("x-unrelated", "3"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-unrelated"], "3");
        // Hop-by-hop names among the tokens do not hide the others; a field literally named
        // by a token (even `close`) goes too (RFC 9110 §7.6.1).
        let mut h = map(&[
            ("connection", "Keep-Alive, close, UPGRADE, X-Baz"),
            ("keep-alive", "timeout=5"),
            ("x-baz", "1"),
            ("close", "named, so removed"),
            ("x-kept", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "2");
    }

    #[test]
    fn upgrade_needs_both_headers_and_http11() {
        let h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(
            upgrade_requested(http::Version::HTTP_11, &h).unwrap(),
            "websocket"
        );
        assert!(upgrade_requested(http::Version::HTTP_10, &h).is_none());
        let h = map(&[("upgrade", "websocket")]);
        assert!(upgrade_requested(http::Version::HTTP_11, &h).is_none());
        let h = map(&[("connection", "upgrade")]);
        assert!(upgrade_requested(http::Version::HTTP_11, &h).is_none());
    }

    #[test]
    fn garbage_connection_tokens_are_ignored() {
        let mut h = map(&[
            ("connection", "bad header name, , x-a"),
            ("x-a", "1"),
            ("x-b", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-a").is_none());
        assert_eq!(h["x-b"], "2");
    }

    #[test]
    fn every_client_claim_about_origin_or_method_is_removed() {
        let claims = [
            ("Forwarded", "for=6.6.6.6"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Prefix", "/admin/auth"),
            ("X-Forwarded-Port", "443"),
            ("X-Forwarded-Server", "evil"),
            ("x-FORWARDED-ssl", "on"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Client-IP", "6.6.6.6"),
            ("True-Client-IP", "6.6.6.6"),
            ("X-Original-URL", "/admin/auth/token"),
            ("X-Rewrite-URL", "/admin/auth/token"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("X-HTTP-Method", "DELETE"),
            ("X-Method-Override", "DELETE"),
        ];
        let mut pairs = vec![("host", "localhost:7000"), ("x-request-id", "r1")];
        pairs.extend_from_slice(&claims);
        let mut h = map(&pairs);
        sanitize_request(&mut h, "127.0.0.1".parse().unwrap(), None);
        for (name, _) in claims {
            let kept = h.get(name).map(|v| v.to_str().unwrap().to_owned());
            match name.to_ascii_lowercase().as_str() {
                "x-forwarded-for" => assert_eq!(kept.as_deref(), Some("127.0.0.1")),
                "x-forwarded-proto" => assert_eq!(kept.as_deref(), Some("http")),
                _ => assert_eq!(kept, None, "{name} reached Medusa"),
            }
        }
        // Unrelated headers stay.
        assert_eq!(h["x-request-id"], "r1");
    }

    #[test]
    fn request_credentials_are_dropped_and_forwarded_set() {
        let mut h = map(&[
            ("authorization", "Bearer client-token"),
            ("AUTHORIZATION", "Basic xyz"),
            ("cookie", "connect.sid=client"),
            ("x-medusa-access-token", "api"),
            ("proxy-authorization", "Bearer k"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("host", "localhost:7000"),
            ("accept", "application/json"),
        ]);
        sanitize_request(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            Some(HeaderValue::from_static("localhost:7000")),
        );
        for gone in [
            "authorization",
            "cookie",
            "x-medusa-access-token",
            "proxy-authorization",
            "forwarded",
            "host",
        ] {
            assert!(h.get(gone).is_none(), "{gone} kept");
        }
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "localhost:7000");
        assert_eq!(h["accept"], "application/json");
    }

    #[test]
    fn response_cookies_and_hop_headers_are_dropped() {
        let mut h = map(&[
            ("set-cookie", "connect.sid=abc"),
            ("Set-Cookie", "other=1"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("content-type", "application/json"),
        ]);
        sanitize_response(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["content-type"], "application/json");
    }
}
