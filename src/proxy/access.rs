//! Who may use the proxy (issue 3, "Who may use the proxy"): a pure decision over the peer
//! address, the request's headers and its URI, made before anything is forwarded.
//!
//! Whoever gets past [`check`] acts as the Medusa admin, so every rule fails closed: a header
//! that is missing, repeated, not valid text or not parseable denies the request.
//! The rules run in a fixed order, cheapest and least revealing first:
//!
//! 1. **Peer** (403 `peer_not_allowed`): the TCP peer must be inside one of `allow_cidrs`.
//! 2. **Host** (403 `host_not_allowed`): the `Host` header (and, when the request target has
//!    one, the URI authority: HTTP/2's `:authority` or an HTTP/1.1 absolute-form target) must
//!    name a host in `allow_hosts`, port ignored. This is the guard against DNS rebinding, as
//!    kubectl proxy's `--accept-hosts`: a page on `evil.com` whose name is re-pointed at
//!    127.0.0.1 reaches the listener, but its requests say `Host: evil.com`.
//! 3. **Origin** (403 `origin_not_allowed`): a request carrying `Origin` must carry a listed
//!    one; a browser request that is cross-site without an `Origin` is refused too (below).
//! 4. **Client key** (407 `proxy_auth_required` / `proxy_auth_invalid`), when keys are
//!    configured: exactly one `Proxy-Authorization: Bearer <key>`.
//!
//! Nothing here logs or returns a key: keys are held only as SHA-256 digests, and a caller is
//! identified by an 8-hex-digit fingerprint (`printf %s "$KEY" | sha256sum | cut -c1-8`).

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;

use http::header::{self, HeaderMap, HeaderName};
use http::{StatusCode, Uri};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// CIDR
// ---------------------------------------------------------------------------------------------

/// An address range such as `10.0.0.0/8` or `fd00::/8`; a bare address means that one address
/// (`/32` or `/128`).
///
/// IPv4-mapped IPv6 is treated as IPv4 on both sides: a dual-stack listener reports an IPv4
/// client as `::ffff:a.b.c.d`, and an allow-list written for IPv4 must still apply to it (and a
/// deny by omission must not be bypassed by connecting over the mapped form). An entry written
/// in mapped form with a prefix of at least 96 (`::ffff:127.0.0.0/104`) is stored as the IPv4
/// range it denotes (`127.0.0.0/8`). Otherwise an IPv6 range matches only IPv6 peers: `::/0`
/// does not admit IPv4 clients; write `0.0.0.0/0` as well for that.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// Always the range's first address: host bits are refused at parse time.
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside the range (IPv4-mapped IPv6 compared as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask_v4(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask_v6(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    /// Whether every address in the range is a loopback address (inside `127.0.0.0/8`, or
    /// exactly `::1`). Used to decide whether an allow-list lets anyone remote in at all.
    pub fn is_loopback_only(&self) -> bool {
        match self.network {
            IpAddr::V4(net) => self.prefix >= 8 && net.octets()[0] == 127,
            IpAddr::V6(net) => self.prefix == 128 && net == Ipv6Addr::LOCALHOST,
        }
    }
}

/// `checked_shl` is `None` for a shift by the full width, which is exactly the `/0` case
/// (mask 0); a plain `<<` there would overflow.
fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

fn apply_mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask_v4(prefix))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask_v6(prefix))),
    }
}

impl FromStr for Cidr {
    /// A message that quotes the entry, e.g. `"10.0.0.0/33": prefix length 33 is longer than
    /// 32`, for the config layer to prefix with the key.
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        // std's parser is strict (no `010.0.0.1` octal look-alikes, no `127.1`, no zone ids),
        // so what is accepted here means one thing only.
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("{s:?}: {addr_text:?} is not an IP address"))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => {
                // Digits only: `u16::from_str` would also take `+8`.
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!(
                        "{s:?}: prefix length {p:?} is not a number from 0 to {max}"
                    ));
                }
                let n: u16 = p.parse().map_err(|_| {
                    format!("{s:?}: prefix length {p:?} is not a number from 0 to {max}")
                })?;
                if n > u16::from(max) {
                    return Err(format!("{s:?}: prefix length {n} is longer than {max}"));
                }
                // n <= max <= 128, so this cannot fail.
                u8::try_from(n).map_err(|_| format!("{s:?}: prefix length {n} is too long"))?
            }
        };
        // Refuse host bits rather than silently masking them: `10.1.2.3/8` is more likely a
        // typo for one host than a wish to admit all of 10/8, and widening an allow-list by
        // accident is the wrong way to fail.
        let network = apply_mask(addr, prefix);
        if network != addr {
            return Err(format!(
                "{s:?}: has bits set after the first {prefix}; did you mean \"{network}/{prefix}\"?"
            ));
        }
        let (network, prefix) = match network {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (network, prefix),
            },
            _ => (network, prefix),
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cidr({self})")
    }
}

/// `allow_cidrs`' default: loopback only.
pub fn default_allow_cidrs() -> Vec<Cidr> {
    vec![
        Cidr {
            network: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
            prefix: 8,
        },
        Cidr {
            network: IpAddr::V6(Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Configuration and outcome
// ---------------------------------------------------------------------------------------------

/// The `[access]` table, validated. Entries of `allow_hosts` / `allow_origins` are compared
/// case-insensitively; see [`AccessConfig::validate`] for what a well-formed entry is.
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

impl AccessConfig {
    /// Checks every `allow_hosts` and `allow_origins` entry, naming the first bad one (with
    /// the list it is in). [`check`] never matches a malformed entry, so without this call a
    /// typo silently denies; with it, the typo is a start-up error.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(e) = self
            .allow_hosts
            .patterns
            .iter()
            .find_map(|p| p.as_ref().err())
        {
            return Err(format!("allow_hosts: {e}"));
        }
        for entry in &self.allow_origins {
            validate_origin_entry(entry).map_err(|e| format!("allow_origins: {e}"))?;
        }
        Ok(())
    }
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
    pub fn status(&self) -> StatusCode {
        match self {
            Denied::Peer | Denied::Host | Denied::Origin => StatusCode::FORBIDDEN,
            Denied::NoKey | Denied::BadKey => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        }
    }

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

    /// The `Proxy-Authenticate` value a 407 must carry (RFC 9110 §11.7.1); `None` for 403s.
    pub fn proxy_authenticate(&self) -> Option<&'static str> {
        match self {
            Denied::NoKey | Denied::BadKey => Some("Bearer"),
            Denied::Peer | Denied::Host | Denied::Origin => None,
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
}

// ---------------------------------------------------------------------------------------------
// The decision
// ---------------------------------------------------------------------------------------------

/// Admit or refuse one request. Order: peer, host, origin, key: a stranger learns nothing
/// about which hosts or keys exist, and no key is hashed for a request that is refused anyway.
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
    let key_fingerprint = match &cfg.client_keys {
        None => None,
        Some(keys) => {
            let presented = presented_key(headers)?;
            Some(keys.verify(presented).ok_or(Denied::BadKey)?)
        }
    };
    Ok(Caller { key_fingerprint })
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
        if !host_allowed(allow, text) {
            return Err(Denied::Host);
        }
    }
    if let Some(authority) = uri_host
        && !host_allowed(allow, authority.as_str())
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

/// Exact, case-insensitive comparison of the serialised origin: browsers send exactly
/// `scheme://host[:port]` with no default port and no path, so no normalisation is needed,
/// and none is attempted (normalising is where look-alikes slip through).
fn origin_matches(entry: &str, origin: &str) -> bool {
    let entry = entry.trim();
    !entry.is_empty() && entry.eq_ignore_ascii_case(origin)
}

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
// Host names
// ---------------------------------------------------------------------------------------------

/// A host from a request or an allow-list entry, normalised: lowercase, one trailing dot
/// removed (`localhost.` is the same name, absolute), IPv6 in canonical bracketed form.
/// Borrowed from the input when that already is the normal form (the usual case).
#[derive(Debug, PartialEq, Eq)]
struct HostName<'a> {
    name: Cow<'a, str>,
    /// IP literals never match a `*.` pattern: `*.0.0.1` is not a way to admit `127.0.0.1`.
    is_ip: bool,
}

/// Parses `host[:port]` (RFC 9110 §7.2 / RFC 3986 authority without userinfo). Strict: no
/// userinfo (`user@host` is how some parsers are fooled into reading the wrong host), no
/// percent-encoding, no bare IPv6, no IPvFuture, no zone ids. Returns the host and whether a
/// port was present.
fn parse_authority(value: &str) -> Option<(HostName<'_>, bool)> {
    if let Some(rest) = value.strip_prefix('[') {
        let (literal, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = literal.parse().ok()?;
        let has_port = match after {
            "" => false,
            _ => valid_port(after.strip_prefix(':')?).then_some(true)?,
        };
        return Some((
            HostName {
                name: Cow::Owned(format!("[{ip}]")),
                is_ip: true,
            },
            has_port,
        ));
    }
    let (host, port) = match value.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (value, None),
    };
    if let Some(port) = port
        && !valid_port(port)
    {
        return None;
    }
    Some((parse_name(host)?, port.is_some()))
}

/// 1 to 5 digits, at most 65535. An empty port (`host:`) is legal in RFC 3986 but no client
/// sends it; refusing it keeps one spelling per host.
fn valid_port(port: &str) -> bool {
    !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| p <= 65535)
}

/// A DNS name or dotted IPv4 address. Letters, digits, `-`, `_` and dots between non-empty
/// labels only: anything else (`%`, `@`, `,`, sub-delims, non-ASCII) is not a name a browser
/// would put in `Host` and is refused rather than interpreted.
fn parse_name(host: &str) -> Option<HostName<'_>> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let charset_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if host.is_empty() || !charset_ok || host.split('.').any(str::is_empty) {
        return None;
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        // std's parser accepts only the canonical dotted quad (no leading zeros, no short or
        // hex forms: `ipv4_text_that_parses_is_canonical` pins this), so the text is already
        // its normal form.
        return Some(HostName {
            name: Cow::Borrowed(host),
            is_ip: true,
        });
    }
    let name = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    Some(HostName { name, is_ip: false })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `.example.com` for the entry `*.example.com`.
    Subdomains(String),
    Exact(String),
}

fn parse_host_pattern(entry: &str) -> Result<HostPattern, String> {
    let trimmed = entry.trim();
    if trimmed == "*" {
        return Ok(HostPattern::Any);
    }
    if let Some(suffix) = trimmed.strip_prefix("*.") {
        return match parse_name(suffix) {
            Some(h) if !h.is_ip => Ok(HostPattern::Subdomains(format!(".{}", h.name))),
            _ => Err(format!("{entry:?}: \"*.\" must be followed by a DNS name")),
        };
    }
    // A bare IPv6 address is unambiguous in an entry (no port allowed), so accept it too.
    if let Ok(ip) = trimmed.parse::<Ipv6Addr>() {
        return Ok(HostPattern::Exact(format!("[{ip}]")));
    }
    match parse_authority(trimmed) {
        Some((host, false)) => Ok(HostPattern::Exact(host.name.into_owned())),
        Some((_, true)) => Err(format!(
            "{entry:?}: an allow_hosts entry has no port (ports are ignored when matching)"
        )),
        None => Err(format!(
            "{entry:?}: not a host name, IPv4 address, [IPv6] address, \"*.domain\" or \"*\""
        )),
    }
}

/// `allow_hosts`, each entry parsed once (a malformed entry is kept as its error, which
/// `validate` reports and which never matches).
#[derive(Debug, Clone, Default)]
pub struct HostList {
    patterns: Vec<Result<HostPattern, String>>,
}

impl From<Vec<String>> for HostList {
    fn from(entries: Vec<String>) -> HostList {
        HostList {
            patterns: entries.iter().map(|e| parse_host_pattern(e)).collect(),
        }
    }
}

fn host_allowed(allow: &HostList, value: &str) -> bool {
    let Some((host, _)) = parse_authority(value) else {
        return false;
    };
    allow.patterns.iter().any(|entry| match entry {
        Ok(HostPattern::Any) => true,
        Ok(HostPattern::Exact(name)) => host.name == name.as_str(),
        // The suffix starts with a dot and names have no empty labels, so this is a match on
        // a label boundary: `evilexample.com` is not under `*.example.com`.
        Ok(HostPattern::Subdomains(suffix)) => !host.is_ip && host.name.ends_with(suffix.as_str()),
        Err(_) => false,
    })
}

/// `"null"`, or `scheme://host[:port]` with nothing after it. A trailing slash or path would
/// never equal what a browser sends, so it is an error rather than a silent non-match.
fn validate_origin_entry(entry: &str) -> Result<(), String> {
    let trimmed = entry.trim();
    if trimmed.eq_ignore_ascii_case("null") {
        return Ok(());
    }
    if trimmed.contains('*') {
        return Err(format!(
            "{entry:?}: wildcards are not supported in allow_origins; list each origin"
        ));
    }
    let Some((scheme, authority)) = trimmed.split_once("://") else {
        return Err(format!(
            "{entry:?}: an origin is scheme://host[:port], e.g. \"https://dash.example.com\""
        ));
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.');
    if !scheme_ok {
        return Err(format!("{entry:?}: {scheme:?} is not a URL scheme"));
    }
    if authority.contains('/') {
        return Err(format!(
            "{entry:?}: an origin has no path or trailing slash (browsers send scheme://host[:port])"
        ));
    }
    if parse_authority(authority).is_none() {
        return Err(format!("{entry:?}: {authority:?} is not host[:port]"));
    }
    Ok(())
}

/// `allow_hosts`' default: the loopback names plus the listen address's host, lowercase,
/// without duplicates. An unspecified listen address (`0.0.0.0`, `[::]`) is not added: no
/// legitimate client addresses a request to it, while a browser page can ("0.0.0.0 day"),
/// so admitting it would reopen the rebinding hole. Listening on all interfaces therefore
/// needs `allow_hosts` set to the names tools actually use.
pub fn default_allow_hosts(listen: SocketAddr) -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
        .into_iter()
        .map(String::from)
        .collect();
    let ip = listen.ip();
    if !ip.to_canonical().is_unspecified() {
        let host = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts
}

// ---------------------------------------------------------------------------------------------
// Remote exposure
// ---------------------------------------------------------------------------------------------

/// Whether the listen address is loopback-only (`127.0.0.0/8`, `::1`, or their mapped form).
/// `0.0.0.0` and `[::]` listen on every interface and are not.
pub fn is_loopback_listen(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Refuses, at start-up and in `check`, a listener that strangers could reach and use as the
/// Medusa admin: non-loopback, no client keys, and no allow_cidrs entry beyond loopback.
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
        "proxy.listen = \"{listen}\" is not a loopback address, but [access] has no \
         client_keys_file and no non-loopback allow_cidrs entry: anyone who can reach the \
         listener would act as the Medusa admin. In [access], set client_keys_file, or add a \
         non-loopback allow_cidrs entry (e.g. the pod or office network), or set \
         allow_unauthenticated_remote = true if something outside the proxy restricts access"
    ))
}

// ---------------------------------------------------------------------------------------------
// Client keys
// ---------------------------------------------------------------------------------------------

/// Shortest key accepted: 16 visible ASCII characters. Keys should be random
/// (`openssl rand -hex 32`); the floor catches placeholders like `changeme`.
const MIN_KEY_LEN: usize = 16;

/// The configured client keys. Only SHA-256 digests and fingerprints are kept, never a key,
/// so neither `Debug` nor a memory dump of this value can reveal one. Immutable and
/// `Send + Sync`: hold it in an `Arc` and swap the `Arc` on reload.
#[derive(Clone)]
pub struct ClientKeys {
    keys: Vec<StoredKey>,
}

#[derive(Clone)]
struct StoredKey {
    digest: [u8; 32],
    fingerprint: String,
}

impl fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKeys")
            .field("count", &self.keys.len())
            .field("fingerprints", &self.fingerprints())
            .finish()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// First 4 bytes of the digest as 8 lowercase hex digits: enough to tell a handful of callers
/// apart in logs, far too little to help recover a random key.
fn fingerprint_of(digest: &[u8; 32]) -> String {
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// 1 if equal, else 0, in time independent of where the digests differ. The inputs are
/// digests, so this reveals nothing useful even if the compiler did short-circuit; it is
/// constant-time anyway so that no reviewer has to take that argument on trust.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> u8 {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    let diff = std::hint::black_box(diff);
    // diff == 0 -> 0xFFFF >> 8 has bit 0 set; diff in 1..=255 -> (diff - 1) >> 8 == 0.
    ((u16::from(diff).wrapping_sub(1) >> 8) & 1) as u8
}

impl ClientKeys {
    /// Parses a key file:
    /// - one key per line; surrounding whitespace is trimmed; blank lines are ignored;
    /// - a line whose first non-blank character is `#` is a comment;
    /// - a key may be followed by whitespace and a `#` comment (`k3y… # etl job`). This is
    ///   unambiguous because a key never contains whitespace; a `#` inside a key (`ab#cd…`) is
    ///   part of the key, and a key cannot start with `#`;
    /// - a key is at least 16 visible ASCII characters (`!`..`~`);
    /// - the same key twice is an error (two lines, one caller: almost surely a mistake);
    /// - a UTF-8 byte-order mark is ignored; CRLF line ends are fine.
    ///
    /// Errors name the line number and never contain any of the file's text, so they can be
    /// logged and shown by `check`. Zero keys is an error: an empty file must not mean "no
    /// authentication".
    pub fn parse(text: &str) -> Result<ClientKeys, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut keys: Vec<StoredKey> = Vec::new();
        let mut key_lines: Vec<usize> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = match line.find(char::is_whitespace) {
                None => line,
                Some(at) => {
                    let (key, rest) = line.split_at(at);
                    if !rest.trim_start().starts_with('#') {
                        return Err(format!(
                            "line {line_no}: a key must not contain whitespace (a comment after \
                             a key is whitespace, then #)"
                        ));
                    }
                    key
                }
            };
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "line {line_no}: a key may contain only visible ASCII characters"
                ));
            }
            if key.len() < MIN_KEY_LEN {
                return Err(format!(
                    "line {line_no}: the key is shorter than {MIN_KEY_LEN} characters; use a \
                     long random key (e.g. `openssl rand -hex 32`)"
                ));
            }
            let digest = sha256(key.as_bytes());
            if let Some(pos) = keys.iter().position(|k| k.digest == digest) {
                let first = key_lines.get(pos).copied().unwrap_or(0);
                return Err(format!("line {line_no}: the same key as line {first}"));
            }
            keys.push(StoredKey {
                fingerprint: fingerprint_of(&digest),
                digest,
            });
            key_lines.push(line_no);
        }
        if keys.is_empty() {
            return Err("no keys (every line is blank or a comment)".to_string());
        }
        Ok(ClientKeys { keys })
    }

    /// Reads and parses `path`. Every error starts with the path; none contains file text.
    /// Stands in for a keys file that was deliberately not read (`check --no-secrets`): the
    /// rules around it validate as if it held keys, and it admits nobody.
    pub fn unread() -> ClientKeys {
        ClientKeys { keys: Vec::new() }
    }

    pub fn load(path: &Path) -> Result<ClientKeys, String> {
        let shown = path.display();
        let mut bytes =
            std::fs::read(path).map_err(|e| format!("client keys file {shown}: {e}"))?;
        let result = match std::str::from_utf8(&bytes) {
            Ok(text) => ClientKeys::parse(text),
            Err(e) => {
                // Name the line, not the bytes: they may be part of a key.
                let line_no = bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                Err(format!("line {line_no}: not UTF-8 text"))
            }
        };
        // Best effort: do not leave the file's keys in freed memory. (No zeroize dependency
        // here; black_box keeps the writes from being optimised away as dead stores.)
        bytes.fill(0);
        std::hint::black_box(&bytes);
        result.map_err(|e| format!("client keys file {shown}: {e}"))
    }

    /// The fingerprint of the matching key, or `None`. The presented key is hashed and its
    /// digest compared with every stored digest in constant time, with no early exit on a
    /// match: the time taken depends only on the number of keys, not on which (if any)
    /// matched or how much of a key was right, and comparing digests means the presented
    /// key's length is not compared either.
    pub fn verify(&self, presented: &[u8]) -> Option<String> {
        let digest = sha256(presented);
        let mut found: u8 = 0;
        let mut index: usize = 0;
        for (i, key) in self.keys.iter().enumerate() {
            let eq = ct_eq(&digest, &key.digest);
            // All ones when eq == 1, else zero: select i without a branch.
            let mask = usize::from(eq).wrapping_neg();
            index = (i & mask) | (index & !mask);
            found |= eq;
        }
        if std::hint::black_box(found) == 1 {
            self.keys.get(index).map(|k| k.fingerprint.clone())
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: [`ClientKeys::parse`] refuses a file without keys. Present for clippy's
    /// `len_without_is_empty` and for callers that expect the pair.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Fingerprints in file order, for the start-up / reload log line.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.fingerprint.clone()).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

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
        fingerprint_of(&sha256(key.as_bytes()))
    }

    // --- CIDR parsing -------------------------------------------------------------------------

    #[test]
    fn cidr_parse_errors_name_the_entry_and_reason() {
        let err = "10.0.0.0/33".parse::<Cidr>().unwrap_err();
        assert_eq!(err, "\"10.0.0.0/33\": prefix length 33 is longer than 32");
        let err = "::/129".parse::<Cidr>().unwrap_err();
        assert_eq!(err, "\"::/129\": prefix length 129 is longer than 128");
        for bad in [
            "",
            "/8",
            "10.0.0/8",
            "10.0.0.256/32",
            "localhost",
            "010.0.0.1",
            "127.1",
            " 10.0.0.0/8",
            "fe80::1%eth0/128",
        ] {
            let err = bad.parse::<Cidr>().unwrap_err();
            assert!(err.contains("is not an IP address"), "{bad:?}: {err}");
            assert!(err.starts_with(&format!("{bad:?}")), "{err}");
        }
        for bad in [
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/x",
            "10.0.0.0/8/8",
            "10.0.0.0/1000",
            "10.0.0.0/ 8",
        ] {
            let err = bad.parse::<Cidr>().unwrap_err();
            assert!(err.contains("is not a number"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn cidr_with_host_bits_is_refused_with_a_suggestion() {
        // Masking silently would turn a typo for one host into a whole /8.
        let err = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
        assert!(err.contains("did you mean \"10.0.0.0/8\""), "{err}");
        assert!("fd00::1/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn cidr_v4_matching() {
        let c = cidr("10.0.0.0/8");
        assert!(c.contains(ip("10.0.0.0")));
        assert!(c.contains(ip("10.255.255.255")));
        assert!(!c.contains(ip("11.0.0.0")));
        assert!(!c.contains(ip("9.255.255.255")));
        let one = cidr("192.168.1.7/32");
        assert!(one.contains(ip("192.168.1.7")));
        assert!(!one.contains(ip("192.168.1.6")));
        assert_eq!(cidr("192.168.1.7"), one, "a bare address is /32");
        let all = cidr("0.0.0.0/0");
        assert!(all.contains(ip("1.2.3.4")) && all.contains(ip("255.255.255.255")));
        assert!(!all.contains(ip("::1")), "an IPv4 range never matches IPv6");
    }

    #[test]
    fn cidr_v6_matching() {
        let c = cidr("fd00::/8");
        assert!(c.contains(ip("fd12::1")));
        assert!(!c.contains(ip("fe80::1")));
        let one = cidr("::1/128");
        assert!(one.contains(ip("::1")));
        assert!(!one.contains(ip("::2")));
        assert_eq!(cidr("::1"), one, "a bare address is /128");
        let all = cidr("::/0");
        assert!(all.contains(ip("2001:db8::1")));
        assert!(!all.contains(ip("10.0.0.1")), "::/0 does not admit IPv4");
        assert!(
            !all.contains(ip("::ffff:10.0.0.1")),
            "nor mapped IPv4, which is IPv4"
        );
    }

    #[test]
    fn cidr_ipv4_mapped_is_ipv4() {
        // A dual-stack listener reports IPv4 peers in mapped form.
        let lo = cidr("127.0.0.0/8");
        assert!(lo.contains(ip("::ffff:127.0.0.1")));
        assert!(!lo.contains(ip("::ffff:128.0.0.1")));
        // And an entry in mapped form is the IPv4 range.
        let mapped = cidr("::ffff:10.0.0.0/104");
        assert_eq!(mapped, cidr("10.0.0.0/8"));
        assert!(mapped.contains(ip("10.1.2.3")));
        assert_eq!(cidr("::ffff:127.0.0.1"), cidr("127.0.0.1/32"));
        assert_eq!(cidr("::ffff:0:0/96"), cidr("0.0.0.0/0"));
    }

    #[test]
    fn cidr_loopback_only() {
        for c in [
            "127.0.0.0/8",
            "127.0.0.1/32",
            "127.1.0.0/16",
            "::1/128",
            "::ffff:127.0.0.1/128",
        ] {
            assert!(cidr(c).is_loopback_only(), "{c}");
        }
        for c in [
            "126.0.0.0/7",
            "0.0.0.0/0",
            "10.0.0.0/8",
            "::/0",
            "::/127",
            "::2/128",
            "fd00::/8",
        ] {
            assert!(!cidr(c).is_loopback_only(), "{c}");
        }
    }

    #[test]
    fn cidr_display_round_trips() {
        for s in ["10.0.0.0/8", "::1/128", "0.0.0.0/0", "fd00::/8"] {
            assert_eq!(cidr(s).to_string(), s);
            assert_eq!(cidr(&cidr(s).to_string()), cidr(s));
        }
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
    fn ipv4_text_that_parses_is_canonical() {
        for text in ["127.0.0.1", "10.1.2.3", "0.0.0.0", "255.255.255.255"] {
            assert_eq!(text.parse::<Ipv4Addr>().unwrap().to_string(), text);
        }
        for odd in [
            "127.000.0.1",
            "0127.0.0.1",
            "127.1",
            "0x7f.0.0.1",
            "2130706433",
        ] {
            assert!(odd.parse::<Ipv4Addr>().is_err(), "{odd}");
        }
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
            let err = cfg.validate().unwrap_err();
            assert!(err.starts_with("allow_hosts: "), "{err}");
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(
                !host_ok(&cfg, "localhost:7000") && !host_ok(&cfg, "localhost"),
                "{bad:?}"
            );
        }
        assert!(local().validate().is_ok());
        let ok = AccessConfig {
            allow_hosts: strings(&["*", "*.example.com", "::1"]).into(),
            ..local()
        };
        assert!(ok.validate().is_ok());
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
        assert!(cfg.validate().is_ok());
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
            let cfg = AccessConfig {
                allow_origins: strings(&[good]),
                ..local()
            };
            assert!(cfg.validate().is_ok(), "{good}");
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
            let cfg = AccessConfig {
                allow_origins: strings(&[bad]),
                ..local()
            };
            let err = cfg.validate().unwrap_err();
            assert!(
                err.starts_with("allow_origins: ") && err.contains(&format!("{bad:?}")),
                "{err}"
            );
        }
    }

    // --- Client keys ------------------------------------------------------------------------

    #[test]
    fn keys_missing_is_407_required() {
        let denied = run(&keyed(), &[("host", "localhost")]).unwrap_err();
        assert_eq!(denied, Denied::NoKey);
        assert_eq!(denied.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert_eq!(denied.code(), "proxy_auth_required");
        assert_eq!(denied.proxy_authenticate(), Some("Bearer"));
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
            assert_eq!(denied.proxy_authenticate(), Some("Bearer"));
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
                key_fingerprint: None
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
    fn key_file_syntax() {
        let text = "\u{feff}# leading comment\n\n   \n  key-one-0123456789abcdef  \r\n\
                    key-two-0123456789abcdef # etl job\n\
                    key#three-0123456789abcdef\t# # hashes are fine in keys\n   # indented comment\n";
        let keys = ClientKeys::parse(text).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(!keys.is_empty());
        assert_eq!(
            keys.fingerprints(),
            vec![
                fp("key-one-0123456789abcdef"),
                fp("key-two-0123456789abcdef"),
                fp("key#three-0123456789abcdef")
            ]
        );
        assert!(keys.verify(b"key-two-0123456789abcdef").is_some());
        assert!(keys.verify(b"key#three-0123456789abcdef").is_some());
        assert!(keys.verify(b"key-two-0123456789abcdef # etl job").is_none());
        assert!(keys.verify(b"key").is_none());
        assert!(keys.verify(b"").is_none());
    }

    #[test]
    fn key_file_errors_name_the_line_and_never_the_key() {
        let cases: [(&str, &str, &str); 6] = [
            ("# c\nshort-secretkey\n", "line 2:", "short-secretkey"),
            (
                "ok-key-0123456789abcdef\n\nsecret-part-one secret-part-two\n",
                "line 3:",
                "secret-part",
            ),
            (
                "ok-key-0123456789abcdef\nsecret\u{1}control-0123456789\n",
                "line 2:",
                "control",
            ),
            ("sécret-non-ascii-0123456789\n", "line 1:", "cret-non-ascii"),
            (
                "dup-key-0123456789abcdef\n# x\ndup-key-0123456789abcdef # again\n",
                "line 3: the same key as line 1",
                "dup-key",
            ),
            (
                "ok-key-0123456789abcdef\nsecret-key-0123456789abcdef trailing\n",
                "line 2:",
                "trailing",
            ),
        ];
        for (text, expected, secret) in cases {
            let err = ClientKeys::parse(text).unwrap_err();
            assert!(
                err.starts_with(expected),
                "{err:?} should start with {expected:?}"
            );
            assert!(!err.contains(secret), "{err:?} leaks {secret:?}");
        }
        for empty in ["", "\n\n", "# only comments\n  # here\n"] {
            assert!(ClientKeys::parse(empty).unwrap_err().contains("no keys"));
        }
    }

    #[test]
    fn key_file_load_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("# callers\n{KEY_A}\n")).unwrap();
        let keys = ClientKeys::load(&path).unwrap();
        assert_eq!(keys.fingerprints(), vec![fp(KEY_A)]);

        std::fs::write(&path, "tooshort-secret\n").unwrap();
        let err = ClientKeys::load(&path).unwrap_err();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("line 1:"),
            "{err}"
        );
        assert!(!err.contains("tooshort"), "{err}");

        std::fs::write(
            &path,
            b"ok-key-0123456789abcdef\nsecret\xffbytes-0123456789\n",
        )
        .unwrap();
        let err = ClientKeys::load(&path).unwrap_err();
        assert!(err.contains("line 2: not UTF-8"), "{err}");
        assert!(!err.contains("secret"), "{err}");

        let missing = dir.path().join("missing");
        let err = ClientKeys::load(&missing).unwrap_err();
        assert!(err.contains(&missing.display().to_string()), "{err}");
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

    #[test]
    fn ct_eq_is_equality() {
        let a = sha256(b"a");
        let mut b = a;
        assert_eq!(ct_eq(&a, &b), 1);
        for i in 0..32 {
            for bit in 0..8 {
                b = a;
                b[i] ^= 1 << bit;
                assert_eq!(ct_eq(&a, &b), 0);
            }
        }
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
        assert_eq!(Denied::Peer.proxy_authenticate(), None);
    }

    // --- Properties ---------------------------------------------------------------------------

    /// A key as the file format accepts it.
    fn key_strategy() -> impl Strategy<Value = String> {
        "[!-~]{16,48}".prop_filter("a key cannot start with #", |k| !k.starts_with('#'))
    }

    proptest! {
        #[test]
        fn verify_never_accepts_a_key_not_in_the_set(
            set in proptest::collection::hash_set(key_strategy(), 1..6),
            candidate in proptest::collection::vec(any::<u8>(), 0..64),
            near in key_strategy(),
        ) {
            let text: String = set.iter().map(|k| format!("{k}\n")).collect();
            let keys = ClientKeys::parse(&text).unwrap();
            prop_assert_eq!(keys.len(), set.len());
            for k in &set {
                prop_assert_eq!(keys.verify(k.as_bytes()), Some(fp(k)));
                // Prefixes and extensions of a real key are not keys.
                prop_assert!(keys.verify(&k.as_bytes()[..k.len() - 1]).is_none() || set.contains(&k[..k.len() - 1]));
                let longer = format!("{k}x");
                prop_assert!(keys.verify(longer.as_bytes()).is_none() || set.contains(&longer));
            }
            for c in [candidate.as_slice(), near.as_bytes()] {
                let member = std::str::from_utf8(c).is_ok_and(|s| set.contains(s));
                prop_assert_eq!(keys.verify(c).is_some(), member);
            }
        }

        #[test]
        fn cidr_contains_matches_bitwise_reference(
            addr in any::<u32>(), prefix in 0u8..=32, probe in any::<u32>(),
        ) {
            let net = addr & mask_v4(prefix);
            let c: Cidr = format!("{}/{prefix}", Ipv4Addr::from(net)).parse().unwrap();
            // Reference: the first `prefix` bits agree, one bit at a time.
            let same = (0..prefix).all(|i| (net >> (31 - i)) & 1 == (probe >> (31 - i)) & 1);
            prop_assert_eq!(c.contains(IpAddr::V4(Ipv4Addr::from(probe))), same);
            let mapped = IpAddr::V6(Ipv4Addr::from(probe).to_ipv6_mapped());
            prop_assert_eq!(c.contains(mapped), same);
        }

        #[test]
        fn cidr_v6_contains_matches_bitwise_reference(
            addr in any::<u128>(), prefix in 0u8..=128, probe in any::<u128>(),
        ) {
            let net = addr & mask_v6(prefix);
            let text = format!("{}/{prefix}", Ipv6Addr::from(net));
            let c: Cidr = text.parse().unwrap();
            let probe_ip = Ipv6Addr::from(probe);
            let same = (0..prefix).all(|i| (net >> (127 - i)) & 1 == (probe >> (127 - i)) & 1);
            // Mapped ranges and probes are compared as IPv4; the reference is plain IPv6 bits,
            // which agree whenever neither side is in ::ffff:0:0/96.
            let mapped_space = |x: u128| x >> 32 == 0xffff;
            if !mapped_space(net) && !mapped_space(probe) {
                prop_assert_eq!(c.contains(IpAddr::V6(probe_ip)), same);
            }
        }

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
            let _ = parse_authority(&s);
            let _ = parse_host_pattern(&s);
            let _ = validate_origin_entry(&s);
            let _ = ClientKeys::parse(&s);
        }
    }
}
