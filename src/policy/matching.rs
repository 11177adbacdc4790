//! Matching canonical paths: built-in rule patterns (with `*`, `**` and `{own_user_id}`) and
//! the whole-segment prefixes of `allow_paths` / `deny_paths`.

use http::Method;
use percent_encoding::percent_decode;

use super::builtin::BuiltinRule;

/// In a pattern: the proxy's own user id (or the alias `me`).
pub(super) const OWN_USER_ID: &str = "{own_user_id}";
/// At the end of a pattern: the path itself and everything below it.
pub(super) const SUBTREE: &str = "**";
/// In a pattern: any one segment.
pub(super) const ANY_SEGMENT: &str = "*";

impl BuiltinRule {
    /// Does this rule match `method` on the *canonical* path `canonical`?
    ///
    /// Methods are compared ASCII-case-insensitively: HTTP methods are
    /// case-sensitive and Node rejects `post`, but a lowercase spelling must
    /// never be the thing that slips past a deny.
    pub fn matches(&self, method: &Method, canonical: &str, own_user_id: Option<&str>) -> bool {
        let method_ok = self.methods.is_none_or(|ms| {
            ms.iter()
                .any(|m| m.as_str().eq_ignore_ascii_case(method.as_str()))
        });
        method_ok && pattern_matches(self.pattern, canonical, own_user_id)
    }
}

/// Segments of a canonical path; `/` has none.
pub(super) fn segments(canonical: &str) -> impl Iterator<Item = &str> {
    let body = canonical.strip_prefix('/').unwrap_or(canonical);
    body.split('/').filter(|s| !s.is_empty())
}

fn pattern_matches(pattern: &str, canonical: &str, own_user_id: Option<&str>) -> bool {
    let mut path = segments(canonical);
    for pat in segments(pattern) {
        if pat == SUBTREE {
            return true;
        }
        let Some(seg) = path.next() else {
            return false;
        };
        let ok = if pat == ANY_SEGMENT {
            true
        } else if pat == OWN_USER_ID {
            is_own_user_segment(seg, own_user_id)
        } else {
            pat == seg
        };
        if !ok {
            return false;
        }
    }
    path.next().is_none()
}

/// `seg` is a canonical segment (lowercase; only escapes that canonicalize
/// accepted). Express hands route parameters to Medusa percent-decoded, so the
/// comparison is on the decoded bytes; and it is case-insensitive because the
/// canonical form is lowercase (this over-denies a different user whose id
/// differs only in case, which Medusa's ids never do). `me` is denied too:
/// Medusa v2 has `/admin/users/me` for the current user, and although only GET
/// exists there today, a write to it would mean the proxy's own user.
fn is_own_user_segment(seg: &str, own_user_id: Option<&str>) -> bool {
    if seg == "me" {
        return true;
    }
    let Some(own) = own_user_id else {
        return false;
    };
    // Lenient decoding (an invalid escape is kept as-is) is exact here: a canonical segment
    // holds only valid escapes.
    let decoded = percent_decode(seg.as_bytes()).map(|b| b.to_ascii_lowercase());
    !own.is_empty() && decoded.eq(own.bytes().map(|b| b.to_ascii_lowercase()))
}

/// Whole-segment prefix match on canonical paths: `/admin` matches `/admin`
/// and `/admin/...`, never `/adminx`; `/` matches everything.
pub(super) fn prefix_matches(prefix: &str, canonical: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match canonical.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}
