//! Who may use the proxy (issue 3, "Who may use the proxy"): a pure decision over the peer
//! address, the request's headers and its URI, made before anything is forwarded.
//!
//! Whoever gets past [`check`] acts as the Medusa admin, so every rule fails closed: a header
//! that is missing, repeated, not valid text or not parseable denies the request.
//! The rules run in a fixed order, cheapest and least revealing first:
//!
//! 1. **Peer** (403 `peer_not_allowed`): the TCP peer must be inside one of `allow_cidrs`
//!    ([`cidr`]).
//! 2. **Host** (403 `host_not_allowed`): the `Host` header (and, when the request target has
//!    one, the URI authority: HTTP/2's `:authority` or an HTTP/1.1 absolute-form target) must
//!    name a host in `allow_hosts`, port ignored ([`host`]). This is the guard against DNS
//!    rebinding, as kubectl proxy's `--accept-hosts`: a page on `evil.com` whose name is
//!    re-pointed at 127.0.0.1 reaches the listener, but its requests say `Host: evil.com`.
//! 3. **Origin** (403 `origin_not_allowed`): a request carrying `Origin` must carry a listed
//!    one; a browser request that is cross-site without an `Origin` is refused too (below).
//! 4. **Client key** (407 `proxy_auth_required` / `proxy_auth_invalid`), when keys are
//!    configured: exactly one `Proxy-Authorization: Bearer <key>` ([`keys`]).
//!
//! Nothing here logs or returns a key: keys are held only as SHA-256 digests, and a caller is
//! identified by an 8-hex-digit fingerprint (`printf %s "$KEY" | sha256sum | cut -c1-8`).
//!
//! This module is pure: it reads no configuration file (the config module builds an
//! [`AccessConfig`]) and does no I/O beyond [`ClientKeys::load`].

pub mod cidr;
pub mod host;
pub mod keys;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName};
use http::{StatusCode, Uri};

pub use cidr::{Cidr, default_allow_cidrs};
pub use host::{HostList, default_allow_hosts};
pub use keys::{ClientKeys, NO_OWNER};

use host::origin_matches;

// ---------------------------------------------------------------------------------------------
// Configuration and outcome
// ---------------------------------------------------------------------------------------------

/// The `[access]` rules, as [`check`] applies them. The config module builds this from a
/// validated `[access]` table; an entry that does not parse never matches (fails closed).
/// Entries of `allow_hosts` / `allow_origins` are compared case-insensitively.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// Peers outside every range get 403. Empty admits nobody.
    pub allow_cidrs: Vec<Cidr>,
    /// Host names (or IP literals, IPv6 in brackets) a request may be addressed to; ports are
    /// not part of an entry. `"*.example.com"` admits every subdomain of example.com (not
    /// example.com itself: list it too). `"*"` admits any host and **switches off the DNS
    /// rebinding guard**: use it only behind client keys, never on a developer machine.
    pub allow_hosts: HostList,
    /// Browser origins (`scheme://host[:port]`, exactly as browsers send them) allowed to
    /// drive the proxy. `"null"` (sandboxed frames, `file:` pages) is admitted only if listed
    /// literally.
    pub allow_origins: Vec<String>,
    /// When set, every request needs `Proxy-Authorization: Bearer <key>` with one of these.
    pub client_keys: Option<ClientKeys>,
}

/// Why a request was refused. Each maps to one status and one JSON `error` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The peer address is in no `allow_cidrs` range (403).
    Peer,
    /// `Host` missing, repeated, malformed, or not in `allow_hosts` (403).
    Host,
    /// `Origin` present and not in `allow_origins`, or a cross-site browser request (403).
    Origin,
    /// Client keys are configured and the request has no `Proxy-Authorization` (407).
    NoKey,
    /// `Proxy-Authorization` repeated, not `Bearer`, or not a configured key (407).
    BadKey,
}

impl Denied {
    /// 403 for the peer, host and origin rules; 407 for the client key rules.
    pub fn status(&self) -> StatusCode {
        match self {
            Denied::Peer | Denied::Host | Denied::Origin => StatusCode::FORBIDDEN,
            Denied::NoKey | Denied::BadKey => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        }
    }

    /// The JSON `error` code (and metric label) of the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Denied::Peer => "peer_not_allowed",
            Denied::Host => "host_not_allowed",
            Denied::Origin => "origin_not_allowed",
            Denied::NoKey => "proxy_auth_required",
            Denied::BadKey => "proxy_auth_invalid",
        }
    }

    /// Text for the JSON body. Names the `[access]` setting involved (so an operator knows
    /// what to change) and nothing from the request or the configuration's values.
    pub fn message(&self) -> &'static str {
        match self {
            Denied::Peer => "the client's address is not in [access] allow_cidrs",
            Denied::Host => "the Host header is missing, malformed or not in [access] allow_hosts",
            Denied::Origin => {
                "browser requests from this origin are not allowed ([access] allow_origins)"
            }
            Denied::NoKey => "this proxy requires Proxy-Authorization: Bearer <client key>",
            Denied::BadKey => "the Proxy-Authorization client key is not valid",
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Denied {}

/// Who the admitted caller is, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The first 8 hex digits of SHA-256 of the key used; `None` when keys are not configured.
    pub key_fingerprint: Option<String>,
    /// The identities the key maps to, as a bit set ([`ClientKeys::verify_owners`]); 0 when
    /// keys are not configured.
    pub key_owners: u64,
}

// ---------------------------------------------------------------------------------------------
// The decision
// ---------------------------------------------------------------------------------------------

/// Admit or refuse one request. Order: peer, host, origin, key: a stranger learns nothing
/// about which hosts or keys exist, and no key is hashed for a request that is refused anyway.
///
/// ```
/// use http::{HeaderMap, HeaderValue, Uri};
/// use medusa_auth_proxy::access::{self, AccessConfig, Denied};
///
/// let listen = "127.0.0.1:7000".parse().unwrap();
/// let rules = AccessConfig {
///     allow_cidrs: access::default_allow_cidrs(),
///     allow_hosts: access::default_allow_hosts(listen).into(),
///     allow_origins: Vec::new(),
///     client_keys: None,
/// };
/// let mut headers = HeaderMap::new();
/// headers.insert("host", HeaderValue::from_static("localhost:7000"));
/// let uri = Uri::from_static("/admin/products");
/// let loopback = "127.0.0.1".parse().unwrap();
/// assert!(access::check(&rules, loopback, &headers, &uri).is_ok());
///
/// headers.insert("host", HeaderValue::from_static("evil.example"));
/// assert_eq!(access::check(&rules, loopback, &headers, &uri), Err(Denied::Host));
/// ```
pub fn check(
    cfg: &AccessConfig,
    peer: IpAddr,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Caller, Denied> {
    let result = check_inner(cfg, peer, headers, uri);
    if let Err(denied) = result {
        // Debug-level only: these are routine for a listener reachable by scanners. Request
        // values are printed with `?` (escaped), never a key.
        tracing::debug!(
            %peer,
            reason = denied.code(),
            host = ?headers.get(header::HOST),
            authority = ?uri.authority().map(|a| a.as_str()),
            origin = ?headers.get(header::ORIGIN),
            "access denied"
        );
    }
    result
}

fn check_inner(
    cfg: &AccessConfig,
    peer: IpAddr,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Caller, Denied> {
    if !cfg.allow_cidrs.iter().any(|c| c.contains(peer)) {
        return Err(Denied::Peer);
    }
    check_host(&cfg.allow_hosts, headers, uri)?;
    check_origin(&cfg.allow_origins, headers)?;
    let (key_fingerprint, key_owners) = match &cfg.client_keys {
        None => (None, 0),
        Some(keys) => {
            let presented = presented_key(headers)?;
            let (fp, owners) = keys.verify_owners(presented).ok_or(Denied::BadKey)?;
            (Some(fp), owners)
        }
    };
    Ok(Caller {
        key_fingerprint,
        key_owners,
    })
}

/// At most one of a header; two is refused outright, because which one a later component
/// reads is not ours to decide (one checked, the other forwarded, is a bypass).
fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a http::HeaderValue>, ()> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => Ok(Some(v)),
        (Some(_), Some(_)) => Err(()),
    }
}

fn check_host(allow: &HostList, headers: &HeaderMap, uri: &Uri) -> Result<(), Denied> {
    let header_host = single(headers, &header::HOST).map_err(|_| Denied::Host)?;
    let uri_host = uri.authority();
    // HTTP/2 carries the host in `:authority` (often without `host`); HTTP/1.1 in `Host`, and
    // an absolute-form target carries both. Every one present must pass: the proxy forwards
    // the client's Host as X-Forwarded-Host, so checking only one would let the other through.
    if header_host.is_none() && uri_host.is_none() {
        return Err(Denied::Host);
    }
    if let Some(value) = header_host {
        let text = value.to_str().map_err(|_| Denied::Host)?;
        if !allow.allows(text) {
            return Err(Denied::Host);
        }
    }
    if let Some(authority) = uri_host
        && !allow.allows(authority.as_str())
    {
        return Err(Denied::Host);
    }
    Ok(())
}

/// The host name a refused request asked for (`Host`, else the target's authority), when it
/// is one host name and looks like one: only those characters are ever echoed back, so a
/// refusal cannot be made to carry arbitrary text.
pub fn refused_host(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let text = match single(headers, &header::HOST) {
        Ok(Some(v)) => v.to_str().ok()?,
        Ok(None) => uri.authority()?.as_str(),
        Err(()) => return None,
    };
    let plausible = !text.is_empty()
        && text.len() <= 255
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        });
    plausible.then(|| text.to_owned())
}

fn check_origin(allow: &[String], headers: &HeaderMap) -> Result<(), Denied> {
    match single(headers, &header::ORIGIN).map_err(|_| Denied::Origin)? {
        Some(value) => {
            let listed = value
                .to_str()
                .is_ok_and(|origin| allow.iter().any(|entry| origin_matches(entry, origin)));
            if listed { Ok(()) } else { Err(Denied::Origin) }
        }
        None => {
            // Browsers omit `Origin` on "no-cors" GETs (`<img src>`, `<script src>`, links), so
            // a page could still fire admin GETs at a local proxy. Those requests carry
            // `Sec-Fetch-Site` (every current browser sends it); non-browser tools send none,
            // and a user typing the URL gets `none`. Cross-site without an Origin is therefore
            // always a page acting on its own, never a tool.
            let cross_site = headers.get_all(SEC_FETCH_SITE).iter().any(|v| {
                let v = v.as_bytes();
                v.eq_ignore_ascii_case(b"cross-site") || v.eq_ignore_ascii_case(b"same-site")
            });
            if cross_site {
                Err(Denied::Origin)
            } else {
                Ok(())
            }
        }
    }
}

const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// The client key from `Proxy-Authorization: Bearer <key>` (scheme case-insensitive, RFC 9110
/// §11.1). Missing -> NoKey; present but repeated or unusable -> BadKey.
fn presented_key(headers: &HeaderMap) -> Result<&[u8], Denied> {
    let value = single(headers, &header::PROXY_AUTHORIZATION)
        .map_err(|_| Denied::BadKey)?
        .ok_or(Denied::NoKey)?;
    let bytes = value.as_bytes();
    let Some(space) = bytes.iter().position(|&b| b == b' ') else {
        return Err(Denied::BadKey);
    };
    let (scheme, rest) = bytes.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Denied::BadKey);
    }
    // Keys never contain whitespace, so trimming cannot turn a wrong key into a right one.
    let key = rest.trim_ascii();
    if key.is_empty() {
        return Err(Denied::BadKey);
    }
    Ok(key)
}

// ---------------------------------------------------------------------------------------------
// Remote exposure
// ---------------------------------------------------------------------------------------------

/// Whether the listen address is loopback-only (`127.0.0.0/8`, `::1`, or their mapped form).
/// `0.0.0.0` and `[::]` listen on every interface and are not.
pub fn is_loopback_listen(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// The warning for a listener other machines can reach although `allow_cidrs` admits only
/// loopback peers: every remote caller is closed at accept, so it serves nobody it could not
/// serve on 127.0.0.1. `key` is the listener's config key (`proxy.listen`,
/// `listeners[0].listen`). An empty `allow_cidrs` (nobody at all) is not this mistake.
///
/// ```
/// use medusa_auth_proxy::access::{self, unreachable_listener_warning};
///
/// let loopback = access::default_allow_cidrs();
/// let remote = "0.0.0.0:7000".parse().unwrap();
/// let w = unreachable_listener_warning("proxy.listen", remote, &loopback).unwrap();
/// assert!(w.starts_with("proxy.listen = \"0.0.0.0:7000\""));
/// assert!(unreachable_listener_warning("proxy.listen", "127.0.0.1:7000".parse().unwrap(), &loopback).is_none());
/// ```
pub fn unreachable_listener_warning(
    key: &str,
    listen: SocketAddr,
    allow_cidrs: &[Cidr],
) -> Option<String> {
    if is_loopback_listen(listen)
        || allow_cidrs.is_empty()
        || allow_cidrs.iter().any(|c| !c.is_loopback_only())
    {
        return None;
    }
    Some(format!(
        "{key} = \"{listen}\" accepts connections from other machines, but [access] \
         allow_cidrs admits only loopback peers, so every remote caller will be refused: add \
         their network to allow_cidrs (e.g. \"10.0.0.0/8\"), or listen on 127.0.0.1"
    ))
}

/// Refuses, when a config is loaded, a listener that strangers could reach and use as the
/// Medusa admin: non-loopback, no client keys, and no allow_cidrs entry beyond loopback. The
/// message quotes `listen` and says what to set; the config layer names the key.
/// `allow_unauthenticated_remote = true` is the operator saying so on purpose (e.g. a network
/// policy outside the proxy does the restricting).
pub fn remote_exposure_ok(
    listen: SocketAddr,
    cfg: &AccessConfig,
    allow_unauthenticated_remote: bool,
) -> Result<(), String> {
    if is_loopback_listen(listen)
        || allow_unauthenticated_remote
        || cfg.client_keys.is_some()
        || cfg.allow_cidrs.iter().any(|c| !c.is_loopback_only())
    {
        return Ok(());
    }
    Err(format!(
        "\"{listen}\" is not a loopback address, but [access] has no \
         client_keys_file and no non-loopback allow_cidrs entry: anyone who can reach the \
         listener would act as the Medusa admin. In [access], set client_keys_file, or add a \
         non-loopback allow_cidrs entry (e.g. the pod or office network), or set \
         allow_unauthenticated_remote = true if something outside the proxy restricts access"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;

    const KEY_A: &str = "key-a-0123456789abcdef";
    const KEY_B: &str = "key-b-fedcba9876543210";

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn listen(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The defaults for a proxy on 127.0.0.1:7000, no keys.
    fn local() -> AccessConfig {
        AccessConfig {
            allow_cidrs: default_allow_cidrs(),
            allow_hosts: default_allow_hosts(listen("127.0.0.1:7000")).into(),
            allow_origins: Vec::new(),
            client_keys: None,
        }
    }

    fn keyed() -> AccessConfig {
        AccessConfig {
            client_keys: Some(ClientKeys::parse(&format!("{KEY_A}\n{KEY_B}\n")).unwrap()),
            ..local()
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn origin_form() -> Uri {
        Uri::from_static("/admin/products")
    }

    fn run(cfg: &AccessConfig, pairs: &[(&str, &str)]) -> Result<Caller, Denied> {
        check(cfg, ip("127.0.0.1"), &headers(pairs), &origin_form())
    }

    fn host_ok(cfg: &AccessConfig, host: &str) -> bool {
        run(cfg, &[("host", host)]).is_ok()
    }

    fn fp(key: &str) -> String {
        keys::fingerprint(key)
    }

    // --- Peer ------------------------------------------------------------------------------

    #[test]
    fn peer_outside_allow_cidrs_is_403_and_checked_first() {
        let cfg = keyed();
        // Everything else wrong too: the peer rule must be the one reported.
        let h = headers(&[("host", "evil.com"), ("origin", "http://evil.com")]);
        let denied = check(&cfg, ip("10.0.0.1"), &h, &origin_form()).unwrap_err();
        assert_eq!(denied, Denied::Peer);
        assert_eq!(denied.status(), StatusCode::FORBIDDEN);
        assert_eq!(denied.code(), "peer_not_allowed");
        let ok = headers(&[
            ("host", "localhost"),
            ("proxy-authorization", &format!("Bearer {KEY_A}")),
        ]);
        assert!(check(&cfg, ip("127.0.0.1"), &ok, &origin_form()).is_ok());
        assert!(check(&cfg, ip("::1"), &ok, &origin_form()).is_ok());
        assert!(check(&cfg, ip("::ffff:127.0.0.1"), &ok, &origin_form()).is_ok());
        assert_eq!(
            check(&cfg, ip("::ffff:10.0.0.1"), &ok, &origin_form()),
            Err(Denied::Peer)
        );
    }

    #[test]
    fn empty_allow_cidrs_admits_nobody() {
        let cfg = AccessConfig {
            allow_cidrs: Vec::new(),
            ..local()
        };
        assert_eq!(run(&cfg, &[("host", "localhost")]), Err(Denied::Peer));
    }

    // --- Host --------------------------------------------------------------------------------

    #[test]
    fn host_spellings_that_name_an_allowed_host() {
        let cfg = local();
        for host in [
            "localhost",
            "LOCALHOST",
            "LocalHost:7000",
            "localhost.",
            "localhost.:7000",
            "127.0.0.1",
            "127.0.0.1:7000",
            "[::1]",
            "[::1]:7000",
            "[0:0:0:0:0:0:0:1]:7000",
        ] {
            assert!(host_ok(&cfg, host), "{host:?} should be allowed");
        }
    }

    #[test]
    fn host_spellings_that_are_denied() {
        let cfg = local();
        for host in [
            "evil.com",
            "evil.com:7000",
            "localhost.evil.com",
            "127.0.0.1.nip.io",
            "localhost..",
            "localhost:",
            "localhost:7000:1",
            "localhost:99999",
            "localhost:x",
            "user@localhost",
            "localhost@evil.com",
            "evil.com@localhost",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[fe80::1%25eth0]",
            "local%68ost",
            "127.1",
            "0x7f.0.0.1",
            "2130706433",
            "",
            ".localhost",
            "localhost, evil.com",
            " localhost",
            "[::ffff:127.0.0.1]",
            "0.0.0.0",
        ] {
            assert!(!host_ok(&cfg, host), "{host:?} should be denied");
            assert_eq!(run(&cfg, &[("host", host)]), Err(Denied::Host), "{host:?}");
        }
    }

    #[test]
    fn missing_or_repeated_or_non_text_host_is_denied() {
        let cfg = local();
        assert_eq!(run(&cfg, &[]), Err(Denied::Host));
        assert_eq!(
            run(&cfg, &[("host", "localhost"), ("host", "localhost")]),
            Err(Denied::Host)
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_bytes(b"localh\xf6st").unwrap(),
        );
        assert_eq!(
            check(&cfg, ip("127.0.0.1"), &h, &origin_form()),
            Err(Denied::Host)
        );
        assert_eq!(Denied::Host.status(), StatusCode::FORBIDDEN);
        assert_eq!(Denied::Host.code(), "host_not_allowed");
    }

    #[test]
    fn uri_authority_is_checked_for_http2_and_absolute_form() {
        let cfg = local();
        let none = HeaderMap::new();
        // HTTP/2 without a host header: :authority is the host.
        let good = Uri::from_static("http://localhost:7000/admin/products");
        assert!(check(&cfg, ip("127.0.0.1"), &none, &good).is_ok());
        let evil = Uri::from_static("http://evil.com/admin/products");
        assert_eq!(
            check(&cfg, ip("127.0.0.1"), &none, &evil),
            Err(Denied::Host)
        );
        // Both present: both must pass, whichever one is bad.
        let h = headers(&[("host", "localhost")]);
        assert_eq!(check(&cfg, ip("127.0.0.1"), &h, &evil), Err(Denied::Host));
        let h = headers(&[("host", "evil.com")]);
        assert_eq!(check(&cfg, ip("127.0.0.1"), &h, &good), Err(Denied::Host));
        let userinfo = Uri::from_static("http://user@localhost/admin");
        assert_eq!(
            check(&cfg, ip("127.0.0.1"), &none, &userinfo),
            Err(Denied::Host)
        );
    }

    #[test]
    fn host_wildcards() {
        let cfg = AccessConfig {
            allow_hosts: strings(&["*.example.com"]).into(),
            ..local()
        };
        assert!(host_ok(&cfg, "a.example.com"));
        assert!(host_ok(&cfg, "A.B.Example.COM.:443"));
        assert!(!host_ok(&cfg, "example.com"), "the apex is not a subdomain");
        assert!(!host_ok(&cfg, "evilexample.com"), "label boundary");
        assert!(!host_ok(&cfg, "example.com.evil.com"));
        assert!(!host_ok(&cfg, "localhost"));
        let ips = AccessConfig {
            allow_hosts: strings(&["*.0.0.1"]).into(),
            ..local()
        };
        assert!(!host_ok(&ips, "127.0.0.1"), "IP literals never match *.");
        let any = AccessConfig {
            allow_hosts: strings(&["*"]).into(),
            ..local()
        };
        assert!(host_ok(&any, "evil.com"));
        assert!(host_ok(&any, "[2001:db8::1]:80"));
        assert!(
            !host_ok(&any, "user@evil.com"),
            "* still requires a well-formed Host"
        );
        assert_eq!(run(&any, &[]), Err(Denied::Host), "* still requires a Host");
    }
    #[test]
    fn host_entries_are_normalised() {
        let cfg = AccessConfig {
            allow_hosts: strings(&["Proxy.Internal.", " tools.local ", "::1", "[0::2]"]).into(),
            ..local()
        };
        assert!(host_ok(&cfg, "proxy.internal:7000"));
        assert!(host_ok(&cfg, "TOOLS.LOCAL"));
        assert!(host_ok(&cfg, "[::1]:7000"));
        assert!(host_ok(&cfg, "[::2]"));
        assert!(!host_ok(&cfg, "localhost"), "only the listed entries");
    }

    #[test]
    fn malformed_host_entries_never_match_and_fail_validation() {
        for bad in [
            "localhost:7000",
            "",
            "*.",
            "*.127.0.0.1",
            "a b",
            "user@host",
            "*evil.com",
            "http://localhost",
        ] {
            let cfg = AccessConfig {
                allow_hosts: strings(&[bad]).into(),
                ..local()
            };
            // The config module prefixes this with the key (`access.allow_hosts`).
            let err = cfg.allow_hosts.first_error().unwrap();
            assert!(err.starts_with(&format!("{bad:?}: ")), "{err}");
            assert!(
                !host_ok(&cfg, "localhost:7000") && !host_ok(&cfg, "localhost"),
                "{bad:?}"
            );
        }
        assert!(local().allow_hosts.first_error().is_none());
        let ok = HostList::from(strings(&["*", "*.example.com", "::1"]));
        assert!(ok.first_error().is_none());
    }

    #[test]
    fn default_allow_hosts_add_the_listen_host() {
        assert_eq!(
            default_allow_hosts(listen("127.0.0.1:7000")),
            strings(&["localhost", "127.0.0.1", "[::1]"])
        );
        assert_eq!(
            default_allow_hosts(listen("[::1]:7000")),
            strings(&["localhost", "127.0.0.1", "[::1]"])
        );
        assert_eq!(
            default_allow_hosts(listen("10.1.2.3:7000")),
            strings(&["localhost", "127.0.0.1", "[::1]", "10.1.2.3"])
        );
        assert_eq!(
            default_allow_hosts(listen("[FD00::AB]:7000")),
            strings(&["localhost", "127.0.0.1", "[::1]", "[fd00::ab]"])
        );
        // Unspecified addresses are not names anyone legitimately uses.
        assert_eq!(default_allow_hosts(listen("0.0.0.0:7000")).len(), 3);
        assert_eq!(default_allow_hosts(listen("[::]:7000")).len(), 3);
        // And the result is itself valid config that admits the listen host.
        let cfg = AccessConfig {
            allow_hosts: default_allow_hosts(listen("[fd00::ab]:7000")).into(),
            ..local()
        };
        assert!(cfg.allow_hosts.first_error().is_none());
        assert!(host_ok(&cfg, "[fd00::ab]:7000"));
    }

    // --- Origin ---------------------------------------------------------------------------

    #[test]
    fn origin_rules() {
        let cfg = AccessConfig {
            allow_origins: strings(&["https://dash.example.com"]),
            ..local()
        };
        assert!(
            run(&cfg, &[("host", "localhost")]).is_ok(),
            "no Origin: a tool, fine"
        );
        let denied = run(
            &cfg,
            &[("host", "localhost"), ("origin", "http://evil.com")],
        )
        .unwrap_err();
        assert_eq!(denied, Denied::Origin);
        assert_eq!(denied.status(), StatusCode::FORBIDDEN);
        assert_eq!(denied.code(), "origin_not_allowed");
        assert!(
            run(
                &cfg,
                &[
                    ("host", "localhost"),
                    ("origin", "https://dash.example.com")
                ]
            )
            .is_ok()
        );
        assert!(
            run(
                &cfg,
                &[
                    ("host", "localhost"),
                    ("origin", "HTTPS://Dash.Example.com")
                ]
            )
            .is_ok()
        );
        for other in [
            "null",
            "http://dash.example.com",
            "https://dash.example.com:8443",
            "https://dash.example.com.evil.com",
            "https://dash.example.com/",
            "",
        ] {
            assert_eq!(
                run(&cfg, &[("host", "localhost"), ("origin", other)]),
                Err(Denied::Origin),
                "{other:?}"
            );
        }
        // Two Origin headers: refuse rather than pick one.
        let two = [
            ("host", "localhost"),
            ("origin", "https://dash.example.com"),
            ("origin", "http://evil.com"),
        ];
        assert_eq!(run(&cfg, &two), Err(Denied::Origin));
        // The default, empty list, refuses every browser origin.
        assert_eq!(
            run(
                &local(),
                &[("host", "localhost"), ("origin", "http://localhost:7000")]
            ),
            Err(Denied::Origin)
        );
    }

    #[test]
    fn null_origin_only_when_listed_literally() {
        let cfg = AccessConfig {
            allow_origins: strings(&["null"]),
            ..local()
        };
        assert!(run(&cfg, &[("host", "localhost"), ("origin", "null")]).is_ok());
        assert_eq!(
            run(&local(), &[("host", "localhost"), ("origin", "null")]),
            Err(Denied::Origin)
        );
    }

    #[test]
    fn cross_site_browser_request_without_origin_is_denied() {
        let cfg = local();
        for site in ["cross-site", "same-site", "Cross-Site"] {
            assert_eq!(
                run(&cfg, &[("host", "localhost"), ("sec-fetch-site", site)]),
                Err(Denied::Origin),
                "{site}"
            );
        }
        // Typed into the address bar, or same-origin: fine.
        for site in ["none", "same-origin"] {
            assert!(
                run(&cfg, &[("host", "localhost"), ("sec-fetch-site", site)]).is_ok(),
                "{site}"
            );
        }
        // A listed origin's CORS request carries Origin, which decides.
        let listed = AccessConfig {
            allow_origins: strings(&["https://dash.example.com"]),
            ..local()
        };
        let h = [
            ("host", "localhost"),
            ("origin", "https://dash.example.com"),
            ("sec-fetch-site", "cross-site"),
        ];
        assert!(run(&listed, &h).is_ok());
    }

    #[test]
    fn origin_entries_validation() {
        for good in [
            "https://dash.example.com",
            "http://localhost:3000",
            "http://[::1]:3000",
            "null",
            "chrome-extension://abcdef",
        ] {
            assert!(host::validate_origin_entry(good).is_ok(), "{good}");
        }
        for bad in [
            "*",
            "https://*.example.com",
            "https://dash.example.com/",
            "dash.example.com",
            "https://a/b",
            "1http://x",
            "https://user@x",
        ] {
            // The config module prefixes this with the key (`access.allow_origins`).
            let err = host::validate_origin_entry(bad).unwrap_err();
            assert!(err.starts_with(&format!("{bad:?}: ")), "{err}");
        }
    }

    // --- Client keys ------------------------------------------------------------------------

    #[test]
    fn keys_missing_is_407_required() {
        let denied = run(&keyed(), &[("host", "localhost")]).unwrap_err();
        assert_eq!(denied, Denied::NoKey);
        assert_eq!(denied.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert_eq!(denied.code(), "proxy_auth_required");
    }

    #[test]
    fn keys_wrong_is_407_invalid() {
        let cfg = keyed();
        for value in [
            "Bearer wrong-key-0123456789".to_string(),
            format!("Bearer {KEY_A}x"),
            format!("Bearer {}", &KEY_A[..KEY_A.len() - 1]),
            format!("Basic {KEY_A}"),
            format!("Bearer{KEY_A}"),
            KEY_A.to_string(),
            "Bearer ".to_string(),
            "Bearer".to_string(),
            String::new(),
        ] {
            let denied = run(
                &cfg,
                &[("host", "localhost"), ("proxy-authorization", &value)],
            )
            .unwrap_err();
            assert_eq!(denied, Denied::BadKey, "{value:?}");
            assert_eq!(denied.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
            assert_eq!(denied.code(), "proxy_auth_invalid");
        }
    }

    #[test]
    fn keys_right_gives_the_fingerprint() {
        let cfg = keyed();
        for (key, scheme) in [(KEY_A, "Bearer"), (KEY_B, "bearer"), (KEY_A, "BEARER")] {
            let value = format!("{scheme}  {key}");
            let caller = run(
                &cfg,
                &[("host", "localhost"), ("proxy-authorization", &value)],
            )
            .unwrap();
            assert_eq!(caller.key_fingerprint, Some(fp(key)));
        }
        assert_eq!(fp(KEY_A).len(), 8);
        assert!(
            fp(KEY_A)
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(fp(KEY_A), fp(KEY_B));
        // Without keys configured there is no fingerprint and no header needed.
        assert_eq!(
            run(&local(), &[("host", "localhost")]),
            Ok(Caller {
                key_fingerprint: None,
                key_owners: 0
            })
        );
    }

    #[test]
    fn two_proxy_authorization_headers_are_denied() {
        let right = format!("Bearer {KEY_A}");
        let h = [
            ("host", "localhost"),
            ("proxy-authorization", &right),
            ("proxy-authorization", &right),
        ];
        assert_eq!(run(&keyed(), &h), Err(Denied::BadKey));
        let wrong = [
            ("host", "localhost"),
            ("proxy-authorization", "Bearer nope-nope-nope-nope"),
            ("proxy-authorization", &right),
        ];
        assert_eq!(run(&keyed(), &wrong), Err(Denied::BadKey));
    }

    #[test]
    fn key_is_checked_last() {
        // A wrong key on a request that fails an earlier rule reports the earlier rule.
        assert_eq!(run(&keyed(), &[("host", "evil.com")]), Err(Denied::Host));
        let h = [("host", "localhost"), ("origin", "http://evil.com")];
        assert_eq!(run(&keyed(), &h), Err(Denied::Origin));
    }

    #[test]
    fn debug_never_shows_a_key() {
        let cfg = keyed();
        for shown in [
            format!("{:?}", cfg.client_keys),
            format!("{cfg:?}"),
            format!("{cfg:#?}"),
        ] {
            assert!(!shown.contains(KEY_A) && !shown.contains(KEY_B), "{shown}");
            assert!(!shown.contains("0123456789"), "{shown}");
            assert!(shown.contains(&fp(KEY_A)), "{shown}");
        }
        let keys = ClientKeys::parse(&format!("{KEY_A}\n")).unwrap();
        assert_eq!(
            format!("{keys:?}"),
            format!("ClientKeys {{ count: 1, fingerprints: [{:?}] }}", fp(KEY_A))
        );
    }

    // --- Remote exposure -----------------------------------------------------------------------

    #[test]
    fn loopback_listen() {
        for a in [
            "127.0.0.1:7000",
            "127.0.0.2:7000",
            "[::1]:7000",
            "[::ffff:127.0.0.1]:7000",
        ] {
            assert!(is_loopback_listen(listen(a)), "{a}");
        }
        for a in [
            "0.0.0.0:7000",
            "[::]:7000",
            "10.0.0.1:7000",
            "[fd00::1]:7000",
        ] {
            assert!(!is_loopback_listen(listen(a)), "{a}");
        }
    }

    #[test]
    fn remote_exposure_rules() {
        let remote = listen("0.0.0.0:7000");
        // Loopback listener: always fine.
        assert!(remote_exposure_ok(listen("127.0.0.1:7000"), &local(), false).is_ok());
        assert!(remote_exposure_ok(listen("[::1]:7000"), &local(), false).is_ok());
        // Remote listener with only loopback CIDRs and no keys: refused, with directions.
        for l in [remote, listen("[::]:7000"), listen("10.0.0.5:7000")] {
            let err = remote_exposure_ok(l, &local(), false).unwrap_err();
            for needle in [
                "[access]",
                "client_keys_file",
                "allow_cidrs",
                "allow_unauthenticated_remote = true",
                &l.to_string(),
            ] {
                assert!(err.contains(needle), "{err} lacks {needle}");
            }
        }
        let nobody = AccessConfig {
            allow_cidrs: Vec::new(),
            ..local()
        };
        assert!(remote_exposure_ok(remote, &nobody, false).is_err());
        let mapped_lo = AccessConfig {
            allow_cidrs: vec![cidr("::ffff:127.0.0.1")],
            ..local()
        };
        assert!(remote_exposure_ok(remote, &mapped_lo, false).is_err());
        // Any one of the three ways out.
        assert!(remote_exposure_ok(remote, &keyed(), false).is_ok());
        let wide = AccessConfig {
            allow_cidrs: vec![cidr("127.0.0.0/8"), cidr("10.0.0.0/8")],
            ..local()
        };
        assert!(remote_exposure_ok(remote, &wide, false).is_ok());
        assert!(remote_exposure_ok(remote, &local(), true).is_ok());
    }

    #[test]
    fn messages_are_fixed_text() {
        for d in [
            Denied::Peer,
            Denied::Host,
            Denied::Origin,
            Denied::NoKey,
            Denied::BadKey,
        ] {
            assert_eq!(d.to_string(), d.message());
            assert!(!d.message().is_empty());
        }
    }

    // --- Properties ---------------------------------------------------------------------------

    proptest! {
        /// Whatever the Host header says, it is admitted only if, lowercased, with a port and
        /// one trailing dot removed, it is literally one of the allowed names.
        #[test]
        fn host_check_admits_only_listed_names(
            host in prop_oneof![
                "[a-zA-Z0-9.:\\[\\]@%_,-]{0,24}",
                "(localhost|LOCALHOST|127\\.0\\.0\\.1|\\[::1\\])[.:@%a-z0-9\\[\\]]{0,8}",
                "[.:@a-z0-9]{0,6}(localhost|127\\.0\\.0\\.1|\\[::1\\])",
            ],
        ) {
            let cfg = local();
            if host_ok(&cfg, &host) {
                let lower = host.to_ascii_lowercase();
                let no_port = match lower.rsplit_once(':') {
                    Some((h, p)) if !h.is_empty() && !p.contains(']') && (h.ends_with(']') || !h.contains(':')) => h.to_string(),
                    _ => lower.clone(),
                };
                let name = no_port.strip_suffix('.').unwrap_or(&no_port);
                let loopback_v6 = name
                    .strip_prefix('[')
                    .and_then(|n| n.strip_suffix(']'))
                    .is_some_and(|n| n.parse::<Ipv6Addr>() == Ok(Ipv6Addr::LOCALHOST));
                prop_assert!(
                    ["localhost", "127.0.0.1"].contains(&name) || loopback_v6,
                    "{host:?} admitted as {name:?}"
                );
            }
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = s.parse::<Cidr>();
            let _ = host::parse_authority(&s);
            let _ = host::parse_host_pattern(&s);
            let _ = host::validate_origin_entry(&s);
            let _ = ClientKeys::parse(&s);
        }
    }
}
