//! Host names and origins: parsing `Host` / `:authority` values and `allow_hosts` /
//! `allow_origins` entries, strictly enough that each accepted spelling means one host.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A host from a request or an allow-list entry, normalised: lowercase, one trailing dot
/// removed (`localhost.` is the same name, absolute), IPv6 in canonical bracketed form.
/// Borrowed from the input when that already is the normal form (the usual case).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct HostName<'a> {
    name: Cow<'a, str>,
    /// IP literals never match a `*.` pattern: `*.0.0.1` is not a way to admit `127.0.0.1`.
    is_ip: bool,
}

/// Parses `host[:port]` (RFC 9110 §7.2 / RFC 3986 authority without userinfo). Strict: no
/// userinfo (`user@host` is how some parsers are fooled into reading the wrong host), no
/// percent-encoding, no bare IPv6, no IPvFuture, no zone ids. Returns the host and whether a
/// port was present.
pub(super) fn parse_authority(value: &str) -> Option<(HostName<'_>, bool)> {
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
pub(super) enum HostPattern {
    Any,
    /// `.example.com` for the entry `*.example.com`.
    Subdomains(String),
    Exact(String),
}

pub(super) fn parse_host_pattern(entry: &str) -> Result<HostPattern, String> {
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

/// `allow_hosts`, each entry parsed once. A malformed entry is kept as its error, which
/// [`HostList::first_error`] reports (the config refuses it) and which never matches.
///
/// ```
/// use medusa_auth_proxy::access::HostList;
///
/// let hosts = HostList::from(vec!["localhost".to_owned(), "*.example.com".to_owned()]);
/// assert!(hosts.first_error().is_none());
/// let typo = HostList::from(vec!["localhost:7000".to_owned()]);
/// assert!(typo.first_error().unwrap().contains("has no port"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

impl HostList {
    /// Why the first malformed entry is malformed (quoting it), or `None` when all are fine.
    pub fn first_error(&self) -> Option<&str> {
        self.patterns
            .iter()
            .find_map(|p| p.as_ref().err().map(String::as_str))
    }

    /// Whether `value` (a `Host` header or URI authority, `host[:port]`) names a listed host.
    /// Ports are ignored; a value that does not parse never matches.
    pub(super) fn allows(&self, value: &str) -> bool {
        let Some((host, _)) = parse_authority(value) else {
            return false;
        };
        self.patterns.iter().any(|entry| match entry {
            Ok(HostPattern::Any) => true,
            Ok(HostPattern::Exact(name)) => host.name == name.as_str(),
            // The suffix starts with a dot and names have no empty labels, so this is a match
            // on a label boundary: `evilexample.com` is not under `*.example.com`.
            Ok(HostPattern::Subdomains(suffix)) => {
                !host.is_ip && host.name.ends_with(suffix.as_str())
            }
            Err(_) => false,
        })
    }
}

/// Checks one `allow_origins` entry: `"null"`, or `scheme://host[:port]` with nothing after
/// it. A trailing slash or path would never equal what a browser sends, so it is an error
/// (quoting the entry) rather than a silent non-match.
///
/// ```
/// use medusa_auth_proxy::access::host::validate_origin_entry;
///
/// assert!(validate_origin_entry("https://dash.example.com").is_ok());
/// assert!(validate_origin_entry("https://dash.example.com/").is_err());
/// ```
pub fn validate_origin_entry(entry: &str) -> Result<(), String> {
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

/// Exact, case-insensitive comparison of the serialised origin: browsers send exactly
/// `scheme://host[:port]` with no default port and no path, so no normalisation is needed,
/// and none is attempted (normalising is where look-alikes slip through).
pub(super) fn origin_matches(entry: &str, origin: &str) -> bool {
    let entry = entry.trim();
    !entry.is_empty() && entry.eq_ignore_ascii_case(origin)
}

/// `allow_hosts`' default: the loopback names plus the listen address's host, lowercase,
/// without duplicates. An unspecified listen address (`0.0.0.0`, `[::]`) is not added: no
/// legitimate client addresses a request to it, while a browser page can ("0.0.0.0 day"),
/// so admitting it would reopen the rebinding hole. Listening on all interfaces therefore
/// needs `allow_hosts` set to the names tools actually use.
///
/// ```
/// use medusa_auth_proxy::access::default_allow_hosts;
///
/// let hosts = default_allow_hosts("10.1.2.3:7000".parse().unwrap());
/// assert_eq!(hosts, ["localhost", "127.0.0.1", "[::1]", "10.1.2.3"]);
/// ```
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
