//! Canonical request paths: the one spelling the policy matches on, or a refusal (400) of
//! every spelling some hop between the client and Medusa could read differently.

use percent_encoding::percent_decode;

/// The value of one hex digit. (`u8::from_str_radix` would also take a sign: `%+f`.)
pub(super) fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 unreserved: percent-encoding one of these must not change
/// meaning, yet Express matches routes on the raw path, so `/admin/%61uth`
/// would be `/admin/auth` to a decoding hop and something else to Express.
pub(super) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Canonical form of a request path, or a short reason why the proxy refuses
/// to interpret it (answer 400).
///
/// Accepted bytes: `/`, unreserved characters, the sub-delimiters
/// `! $ & ' ( ) * + , =`, `:`, `@`, and `%XX` escapes. The canonical form is
/// the path with ASCII letters (and escape hex digits) lowercased and one
/// trailing slash removed (`/` stays `/`).
///
/// Rejected, with the bypass each rejection blocks:
/// - not starting with `/` (empty, `*`, absolute-form): parseurl sends such
///   strings through Node's `url.parse`, which reinterprets them;
/// - raw `?` or `#`: the caller must pass the path only; Node's URL parsing
///   cuts the path at `#`, so `/admin/auth/token#x` would be the token route;
/// - control characters, space, non-ASCII: they push parseurl onto
///   `url.parse`, which trims whitespace and turns `\` into `/`; raw
///   non-ASCII is not a valid request-target (clients percent-encode it);
/// - backslash, raw or `%5C`: `url.parse` and many other URL parsers treat
///   `\` as `/`;
/// - `%2F`: a decoding hop would see two segments where Express sees one;
/// - `%XX` of an unreserved character (`%61`, `%2e`, `%7E`...): equal to the
///   plain character for any decoding hop, different for Express;
/// - `%25` (encoded `%`): double encoding (`%2561`) becomes a new escape in
///   any hop that decodes once;
/// - `%00`-`%20`, `%7F`: NUL and control bytes truncate or confuse code that
///   later sees the decoded parameter, and decoded whitespace gets trimmed;
/// - escapes that do not decode to valid UTF-8 (overlong `%C0%AF` for `/`,
///   lone continuation bytes): JavaScript's `decodeURIComponent` rejects them
///   and older decoders turn overlongs into `/` or `.`;
/// - invalid escapes (`%`, `%4`, `%zz`, `%u0061`);
/// - `;`: Express does not treat `;` specially, but servers that strip
///   `;params` from segments (Tomcat/Spring, some gateways) would see
///   `/admin/auth/token;x` as the token route; no Medusa route contains `;`;
/// - `"` `<` `>` `[` `]` `^` `` ` `` `{` `|` `}`: not allowed unencoded in a
///   path (RFC 3986), so parsers disagree about them;
/// - empty segments (`//`, except one trailing slash) and `.` / `..`
///   segments: Express does not collapse or resolve them, but proxies,
///   clients and frameworks in between often do.
pub fn canonicalize(raw_path: &str) -> Result<String, &'static str> {
    let bytes = raw_path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err("path must start with '/'");
    }
    let mut out = String::with_capacity(bytes.len());
    let mut has_escape = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied();
                let lo = bytes.get(i + 2).copied();
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err("invalid percent-escape");
                };
                let (Some(h), Some(l)) = (hex_val(hi), hex_val(lo)) else {
                    return Err("invalid percent-escape");
                };
                let v = h * 16 + l;
                if v <= 0x20 || v == 0x7f {
                    // Includes %20: decoding hops that trim whitespace would
                    // turn `/admin/auth/token%20` into the token route.
                    return Err("percent-encoded control character or space");
                }
                if v == b'/' || v == b'\\' {
                    return Err("percent-encoded '/' or '\\'");
                }
                if is_unreserved(v) {
                    return Err("percent-encoded unreserved character");
                }
                if v == b'%' {
                    return Err("percent-encoded '%' (double encoding)");
                }
                out.push('%');
                out.push(char::from(hi.to_ascii_lowercase()));
                out.push(char::from(lo.to_ascii_lowercase()));
                has_escape = true;
                i += 3;
            }
            b'/' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':'
            | b'@' => {
                out.push(char::from(b));
                i += 1;
            }
            _ if is_unreserved(b) => {
                out.push(char::from(b.to_ascii_lowercase()));
                i += 1;
            }
            0x80..=0xff => return Err("non-ASCII character in path"),
            0x00..=0x20 | 0x7f => return Err("control character or space in path"),
            b'\\' => return Err("backslash in path"),
            b'?' | b'#' => return Err("'?' or '#' in path (pass the path without query)"),
            b';' => return Err("';' in path"),
            _ => return Err("character in path that must be percent-encoded"),
        }
    }
    // Every byte was accepted above and every escape is valid, so the crate's (lenient)
    // decoding is exact here. Without any escape the path is plain ASCII: nothing to check.
    if has_escape && percent_decode(bytes).decode_utf8().is_err() {
        return Err("percent-escapes do not decode to UTF-8");
    }
    if out == "/" {
        return Ok(out);
    }
    // Express ignores exactly one trailing slash (path-to-regexp, strict:
    // false): `/a/` is `/a`, but `/a//` is not, so only one is removed and
    // whatever remains must be a run of non-empty, non-dot segments.
    if out.ends_with('/') {
        out.pop();
    }
    for seg in out[1..].split('/') {
        if seg.is_empty() {
            return Err("empty path segment ('//')");
        }
        if seg == "." || seg == ".." {
            return Err("dot segment ('.' or '..') in path");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalize_examples() {
        for (raw, want) in [
            ("/", "/"),
            ("/Admin/Products/", "/admin/products"),
            (
                "/admin/products/prod_01HX~x-y.z",
                "/admin/products/prod_01hx~x-y.z",
            ),
            ("/a/%3A%C3%A9%3f%23", "/a/%3a%c3%a9%3f%23"),
            ("/a/b:c@d!$&'()*+,=", "/a/b:c@d!$&'()*+,="),
            ("/a/.../..x/.x", "/a/.../..x/.x"),
        ] {
            assert_eq!(canonicalize(raw), Ok(want.to_owned()), "{raw}");
        }
        for (raw, why) in [
            ("", "start with '/'"),
            ("*", "start with '/'"),
            ("http://x/admin", "start with '/'"),
            ("//", "empty"),
            ("/a//", "empty"),
            ("/.", "dot"),
            ("/a/..", "dot"),
            ("/a/./", "dot"),
            ("/%41", "unreserved"),
            ("/%7e", "unreserved"),
            ("/%2E%2E", "unreserved"),
            ("/%2F", "'/'"),
            ("/%5C", "'/'"),
            ("/a\\b", "backslash"),
            ("/%25", "double"),
            ("/%00", "control"),
            ("/%7F", "control"),
            ("/a%20", "space"),
            ("/%", "invalid"),
            ("/%4", "invalid"),
            ("/%zz", "invalid"),
            ("/%u0061", "invalid"),
            ("/%C0%AF", "UTF-8"),
            ("/%80", "UTF-8"),
            ("/a b", "control"),
            ("/a\u{0}", "control"),
            ("/\u{e9}", "non-ASCII"),
            ("/a;b", "';'"),
            ("/a?b", "'?'"),
            ("/a#b", "'#'"),
            ("/a|b", "percent-encoded"),
            ("/a{b}", "percent-encoded"),
        ] {
            match canonicalize(raw) {
                Ok(c) => panic!("{raw:?} accepted as {c:?}"),
                Err(e) => assert!(e.contains(why), "{raw:?}: {e}"),
            }
        }
    }
}
