//! Route policy: which requests the proxy forwards to Medusa at all.
//!
//! This module is pure (no I/O, no global state): [`Policy::check`] takes the
//! method, the raw request path and the proxy's own Medusa user id, and
//! returns a [`Decision`]. The caller maps it to a response:
//! [`Decision::BadPath`] -> 400, [`Decision::Deny`] -> 403, and only
//! [`Decision::Allow`] is forwarded.
//!
//! # Canonical paths and why the proxy rejects so much
//!
//! Medusa (v1 and v2) routes with Express. Express matches the request path
//! case-insensitively and ignores one trailing slash, so `/ADMIN/AUTH/TOKEN`
//! and `/admin/auth/token/` reach the same handler as `/admin/auth/token`.
//! Express matches its route patterns against the *raw* (still
//! percent-encoded) path and only decodes route parameters afterwards.
//!
//! The proxy forwards the raw path bytes unchanged. So the rule is: every path
//! the proxy accepts has exactly one meaning, and the proxy matches on that
//! meaning. [`canonicalize`] therefore *rejects* (400) every spelling where
//! Express, Node's URL parser or any hop in between could see a different
//! route than the one we matched, and otherwise returns the path lowercased
//! with one trailing slash removed, which is exactly the equivalence Express
//! applies. Policy matching (built-in rules, `deny_paths`, `allow_paths`)
//! only ever looks at the canonical form.
//!
//! The caller must pass the path component only (`uri.path()`), not the query:
//! a `?` or `#` in `raw_path` is rejected. It must then forward exactly that
//! path, byte for byte (and the query untouched): the guarantees here hold
//! only for the bytes that were checked.
//!
//! # Order of checks
//!
//! 1. [`canonicalize`] fails -> `BadPath`.
//! 2. A built-in rule ([`BUILTIN_RULES`]) matches and was not lifted ->
//!    `Deny(BuiltIn(name))`. Built-ins win over `allow_paths`: an operator who
//!    allows `/` still cannot reach `/admin/auth/token` unless they lift the
//!    rule by name in `policy.unsafe_lift_builtin_denies`.
//! 3. A `deny_paths` prefix matches -> `Deny(DenyListed)`.
//! 4. No `allow_paths` prefix matches -> `Deny(NotAllowed)`.
//! 5. `read_only` and the method is not GET, HEAD or OPTIONS ->
//!    `Deny(ReadOnly)`.
//! 6. `Allow`.
//!
//! # Path prefixes in `allow_paths` / `deny_paths`
//!
//! Entries are canonicalised like request paths (so they are
//! case-insensitive and must be spelled plainly) and match *whole segments*:
//! `/admin/users` and `/admin/users/` are the same entry and both match
//! `/admin/users` and everything below it (`/admin/users/usr_1`), but never
//! `/admin/users-extra`. `/` matches every path. A trailing slash therefore
//! does not change an entry's meaning, just as it does not change a route's
//! meaning for Express. Wildcards (`*`) are rejected at start-up rather than
//! silently treated as a literal character.

mod builtin;
mod canonical;
mod matching;

use std::fmt;

use http::Method;

pub use builtin::{
    ALWAYS_INSPECTED, BUILTIN_RULES, BodyRules, BuiltinRule, MAX_INSPECTED_BODY, RuleKind,
    builtin_rule,
};
pub use canonical::canonicalize;
use matching::prefix_matches;

/// The `[policy]` section, as far as routes are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Path prefixes that may be forwarded. Default: `["/admin/"]`.
    pub allow_paths: Vec<String>,
    /// Path prefixes that are never forwarded (checked before `allow_paths`).
    pub deny_paths: Vec<String>,
    /// Only GET, HEAD and OPTIONS are forwarded.
    pub read_only: bool,
    /// Names of built-in deny rules the operator deliberately lifts.
    pub lift_builtin: Vec<String>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            allow_paths: vec!["/admin/".to_owned()],
            deny_paths: Vec::new(),
            read_only: false,
            lift_builtin: Vec::new(),
        }
    }
}

/// Outcome of [`Policy::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward the request (with the raw path, unchanged).
    Allow,
    /// The path has a spelling the proxy refuses to interpret: answer 400.
    /// The string is a short reason, safe to show to the client.
    BadPath(&'static str),
    /// Answer 403 and do not forward.
    Deny(DenyReason),
}

/// Why a request was denied (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// The path is not under any `policy.allow_paths` prefix.
    NotAllowed,
    /// The path is under a `policy.deny_paths` prefix.
    DenyListed,
    /// `policy.read_only` is set and the method is not GET, HEAD or OPTIONS.
    ReadOnly,
    /// A built-in rule (named) matched; see [`BUILTIN_RULES`].
    BuiltIn(&'static str),
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NotAllowed => f.write_str("path is not in policy.allow_paths"),
            DenyReason::DenyListed => f.write_str("path is in policy.deny_paths"),
            DenyReason::ReadOnly => {
                f.write_str("policy.read_only is set: only GET, HEAD and OPTIONS are forwarded")
            }
            DenyReason::BuiltIn(name) => write!(
                f,
                "route is blocked by built-in rule \"{name}\" (it hands out or ends credentials)"
            ),
        }
    }
}

/// The configuration key that lists lifted built-in rules (for messages).
pub const LIFT_KEY: &str = "policy.unsafe_lift_builtin_denies";

/// A configuration error, naming the offending entry. [`PolicyError::key`] is the config key it
/// is about, [`PolicyError::problem`] what is wrong; `Display` shows both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// An `allow_paths` / `deny_paths` entry is not a usable path prefix.
    BadPathEntry {
        /// `policy.allow_paths` or `policy.deny_paths`.
        key: &'static str,
        /// The entry as written.
        entry: String,
        /// Why it is refused (from [`canonicalize`], or the wildcard rule).
        reason: &'static str,
    },
    /// A `lift_builtin` entry names no built-in rule.
    UnknownBuiltin {
        /// The name as written.
        name: String,
    },
    /// A narrowing policy's `allow_paths` entry reaches outside the policy it narrows
    /// ([`Policy::narrow`]).
    Widens {
        /// The entry as written.
        entry: String,
    },
}

impl PolicyError {
    /// The config key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            PolicyError::BadPathEntry { key, .. } => key,
            PolicyError::UnknownBuiltin { .. } => LIFT_KEY,
            PolicyError::Widens { .. } => "policy.allow_paths",
        }
    }

    /// What is wrong with the entry (quoted), without the key.
    pub fn problem(&self) -> String {
        match self {
            PolicyError::BadPathEntry { entry, reason, .. } => {
                format!("{entry:?} is not a usable path prefix: {reason}")
            }
            PolicyError::UnknownBuiltin { name } => {
                let known: Vec<&str> = BUILTIN_RULES.iter().map(|r| r.name).collect();
                format!("unknown rule {name:?}; known: {}", known.join(", "))
            }
            PolicyError::Widens { entry } => format!(
                "{entry:?} is not within the global [policy] allow_paths: an identity's policy \
                 can only narrow the global one"
            ),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key(), self.problem())
    }
}

impl std::error::Error for PolicyError {}

/// A validated route policy. Cheap to clone; immutable.
///
/// ```
/// use http::Method;
/// use medusa_auth_proxy::policy::{Decision, DenyReason, Policy, PolicyConfig};
///
/// let policy = Policy::new(PolicyConfig::default()).unwrap();
/// assert_eq!(policy.check(&Method::GET, "/admin/products", None), Decision::Allow);
/// assert_eq!(
///     policy.check(&Method::POST, "/ADMIN/auth/token/", None),
///     Decision::Deny(DenyReason::BuiltIn("v1-auth-token"))
/// );
/// assert!(matches!(
///     policy.check(&Method::POST, "/admin/auth//token", None),
///     Decision::BadPath(_)
/// ));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    allow: Vec<String>,
    deny: Vec<String>,
    read_only: bool,
    /// Route rules in force.
    active: Vec<&'static BuiltinRule>,
    /// Body rules in force (every kind but [`RuleKind::Route`]).
    content: Vec<&'static BuiltinRule>,
    lifted: Vec<String>,
}

fn canonical_prefixes(key: &'static str, entries: &[String]) -> Result<Vec<String>, PolicyError> {
    entries
        .iter()
        .map(|entry| {
            let bad = |reason| PolicyError::BadPathEntry {
                key,
                entry: entry.clone(),
                reason,
            };
            if entry.contains('*') {
                // `*` is a legal path character, so `/admin/*` would silently
                // be a literal prefix that matches nothing useful.
                return Err(bad(
                    "wildcards are not supported (entries are path prefixes)",
                ));
            }
            canonicalize(entry).map_err(bad)
        })
        .collect()
}

impl Policy {
    /// Validates `cfg`: every path entry must canonicalise (see
    /// [`canonicalize`]; no wildcards) and every `lift_builtin` name must name
    /// a rule in [`BUILTIN_RULES`].
    pub fn new(cfg: PolicyConfig) -> Result<Policy, PolicyError> {
        let allow = canonical_prefixes("policy.allow_paths", &cfg.allow_paths)?;
        let deny = canonical_prefixes("policy.deny_paths", &cfg.deny_paths)?;
        for name in &cfg.lift_builtin {
            if builtin_rule(name).is_none() {
                return Err(PolicyError::UnknownBuiltin { name: name.clone() });
            }
        }
        let is_lifted = |rule: &BuiltinRule| cfg.lift_builtin.iter().any(|n| n == rule.name);
        let (active, content) = BUILTIN_RULES
            .iter()
            .filter(|r| !is_lifted(r))
            .partition(|r| r.kind == RuleKind::Route);
        let lifted = BUILTIN_RULES
            .iter()
            .filter(|r| is_lifted(r))
            .map(|r| r.name.to_owned())
            .collect();
        Ok(Policy {
            allow,
            deny,
            read_only: cfg.read_only,
            active,
            content,
            lifted,
        })
    }

    /// Names of the built-in rules lifted by configuration (deduplicated, in
    /// [`BUILTIN_RULES`] order), so the app can warn loudly at start-up.
    pub fn lifted(&self) -> &[String] {
        &self.lifted
    }

    /// Decides whether to forward `method raw_path`. `raw_path` is the path
    /// component exactly as it will be forwarded (no query). `own_user_id` is
    /// the proxy's own Medusa user id, when known (from its token).
    pub fn check(&self, method: &Method, raw_path: &str, own_user_id: Option<&str>) -> Decision {
        let canonical = match canonicalize(raw_path) {
            Ok(c) => c,
            Err(reason) => return Decision::BadPath(reason),
        };
        if let Some(rule) = self
            .active
            .iter()
            .find(|r| r.matches(method, &canonical, own_user_id))
        {
            return Decision::Deny(DenyReason::BuiltIn(rule.name));
        }
        if self.deny.iter().any(|p| prefix_matches(p, &canonical)) {
            return Decision::Deny(DenyReason::DenyListed);
        }
        if !self.allow.iter().any(|p| prefix_matches(p, &canonical)) {
            return Decision::Deny(DenyReason::NotAllowed);
        }
        if self.read_only && !is_read_method(method) {
            return Decision::Deny(DenyReason::ReadOnly);
        }
        Decision::Allow
    }
}

impl Policy {
    /// The body rules for `method raw_path`, a request that [`Policy::check`] allowed (so
    /// the path canonicalises; if it did not, only the rules for every path apply).
    pub fn body_rules(&self, method: &Method, raw_path: &str) -> BodyRules {
        let mut out = BodyRules::default();
        if self.content.is_empty() {
            return out;
        }
        let canonical = canonicalize(raw_path).unwrap_or_default();
        for rule in &self.content {
            if !rule.matches(method, &canonical, None) {
                continue;
            }
            match rule.kind {
                RuleKind::Route => {}
                RuleKind::ScrubApiToken => out.scrub.api_token = true,
                RuleKind::ScrubInviteToken => out.scrub.invite_token = true,
                RuleKind::RefuseApiTokenWrite => {
                    out.refuse_api_token = true;
                    out.always_inspect = prefix_matches(ALWAYS_INSPECTED, &canonical);
                }
            }
        }
        out
    }
}

/// What a narrowing policy (an identity's `policy` table) may say: it can only take away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Narrowing {
    /// Path prefixes this caller may reach, each within the narrowed policy's `allow_paths`;
    /// `None`: the narrowed policy's.
    pub allow_paths: Option<Vec<String>>,
    /// More path prefixes never forwarded.
    pub deny_paths: Vec<String>,
    /// Only GET, HEAD and OPTIONS (adds to the narrowed policy's `read_only`).
    pub read_only: bool,
}

impl Policy {
    /// A policy checked *in addition to* `self` that only takes away: its `allow_paths` must
    /// each lie within one of `self`'s (whole segments), its `deny_paths` and `read_only` add
    /// up, and the built-in rules are `self`'s (lifting is the global policy's business).
    ///
    /// ```
    /// use http::Method;
    /// use medusa_auth_proxy::policy::{Decision, Narrowing, Policy, PolicyConfig};
    ///
    /// let global = Policy::new(PolicyConfig::default()).unwrap();
    /// let reporting = global
    ///     .narrow(Narrowing {
    ///         allow_paths: Some(vec!["/admin/orders".into()]),
    ///         read_only: true,
    ///         ..Narrowing::default()
    ///     })
    ///     .unwrap();
    /// assert_eq!(reporting.check(&Method::GET, "/admin/orders/o_1", None), Decision::Allow);
    /// assert!(reporting.check(&Method::GET, "/admin/products", None) != Decision::Allow);
    /// // Wider than the global allow_paths (`/admin/`): refused.
    /// assert!(global.narrow(Narrowing {
    ///     allow_paths: Some(vec!["/store".into()]),
    ///     ..Narrowing::default()
    /// }).is_err());
    /// ```
    pub fn narrow(&self, n: Narrowing) -> Result<Policy, PolicyError> {
        let allow = match &n.allow_paths {
            None => self.allow.clone(),
            Some(entries) => {
                let allow = canonical_prefixes("policy.allow_paths", entries)?;
                for (entry, canonical) in entries.iter().zip(&allow) {
                    if !self.allow.iter().any(|g| prefix_matches(g, canonical)) {
                        return Err(PolicyError::Widens {
                            entry: entry.clone(),
                        });
                    }
                }
                allow
            }
        };
        let mut deny = self.deny.clone();
        deny.extend(canonical_prefixes("policy.deny_paths", &n.deny_paths)?);
        Ok(Policy {
            allow,
            deny,
            read_only: self.read_only || n.read_only,
            active: self.active.clone(),
            content: self.content.clone(),
            lifted: self.lifted.clone(),
        })
    }
}

/// Exact comparison on purpose: a lowercase `get` is not GET and is refused
/// in read-only mode (Node would reject it anyway).
fn is_read_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS
}

#[cfg(test)]
mod tests {
    use super::canonical::{hex_val, is_unreserved};
    use super::matching::segments;
    use super::*;
    use proptest::prelude::*;

    const OWN: &str = "usr_01ABCdef";

    fn policy(cfg: PolicyConfig) -> Policy {
        match Policy::new(cfg) {
            Ok(p) => p,
            Err(e) => panic!("bad test config: {e}"),
        }
    }

    fn default_policy() -> Policy {
        policy(PolicyConfig::default())
    }

    /// Allows everything, so that only built-ins (and BadPath) can refuse.
    fn open_policy() -> Policy {
        policy(PolicyConfig {
            allow_paths: vec!["/".into()],
            ..PolicyConfig::default()
        })
    }

    fn m(s: &str) -> Method {
        match Method::from_bytes(s.as_bytes()) {
            Ok(m) => m,
            Err(e) => panic!("bad method {s}: {e}"),
        }
    }

    fn builtin(name: &'static str) -> Decision {
        Decision::Deny(DenyReason::BuiltIn(name))
    }

    /// (method, canonical path, rule that must deny it)
    const DENIED: &[(&str, &str, &str)] = &[
        ("POST", "/admin/auth", "v1-auth-session"),
        ("DELETE", "/admin/auth", "v1-auth-session"),
        ("GET", "/admin/auth/token", "v1-auth-token"),
        ("POST", "/admin/auth/token", "v1-auth-token"),
        ("OPTIONS", "/admin/auth/token", "v1-auth-token"),
        ("GET", "/admin/users/password-token", "users-password-token"),
        (
            "POST",
            "/admin/users/password-token",
            "users-password-token",
        ),
        (
            "POST",
            "/admin/users/reset-password",
            "users-reset-password",
        ),
        ("PUT", "/admin/users/reset-password", "users-reset-password"),
        ("POST", "/admin/invites", "invites-create"),
        ("POST", "/admin/invites/invite_1/resend", "invites-resend"),
        ("GET", "/admin/invites/accept", "invites-accept"),
        ("POST", "/admin/users", "users-create"),
        ("POST", "/admin/users/usr_01abcdef", "own-user"),
        ("DELETE", "/admin/users/usr_01abcdef", "own-user"),
        ("POST", "/admin/users/me", "own-user"),
        ("GET", "/auth", "v2-auth"),
        ("POST", "/auth/user/emailpass", "v2-auth"),
        ("POST", "/auth/token/refresh", "v2-auth"),
        ("DELETE", "/auth/session", "v2-auth"),
        ("POST", "/admin/api-keys", "api-keys-create"),
        ("POST", "/admin/api-keys/apk_1/revoke", "api-keys-create"),
    ];

    #[test]
    fn every_builtin_rule_denies_its_routes() {
        for p in [default_policy(), open_policy()] {
            for (method, path, rule) in DENIED {
                // v2-auth is outside the default allow list but must still be
                // reported as the built-in (built-ins are checked first).
                assert_eq!(
                    p.check(&m(method), path, Some(OWN)),
                    builtin(rule),
                    "{method} {path}"
                );
            }
        }
        // Every route rule is exercised above (body rules: `body_rules_*`).
        for rule in BUILTIN_RULES.iter().filter(|r| r.kind == RuleKind::Route) {
            assert!(
                DENIED.iter().any(|(_, _, r)| *r == rule.name),
                "no test for {}",
                rule.name
            );
        }
    }

    #[test]
    fn neighbouring_routes_stay_allowed() {
        let p = default_policy();
        for (method, path) in [
            ("GET", "/admin/auth"), // "who am I"
            ("HEAD", "/admin/auth"),
            ("GET", "/admin/users"),
            ("GET", "/admin/users/me"),
            ("GET", "/admin/users/usr_01abcdef"),
            ("POST", "/admin/users/usr_other"),
            ("DELETE", "/admin/users/usr_other"),
            ("GET", "/admin/invites"),
            ("DELETE", "/admin/invites/invite_1"),
            ("GET", "/admin/api-keys"),
            ("GET", "/admin/api-keys/apk_1"),
            ("DELETE", "/admin/api-keys/apk_1"),
            ("POST", "/admin/products"),
            ("POST", "/admin/authx"),
            ("POST", "/admin/users-x"),
            ("GET", "/admin/auth/tokenx"),
            ("GET", "/admin"),
            ("GET", "/admin/"),
        ] {
            assert_eq!(
                p.check(&m(method), path, Some(OWN)),
                Decision::Allow,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn bypass_spellings_of_the_token_route() {
        let p = open_policy();
        let get = Method::GET;
        // Express-equivalent spellings: denied by the rule itself.
        for path in [
            "/admin/auth/token",
            "/ADMIN/AUTH/TOKEN",
            "/Admin/Auth/Token/",
            "/admin/auth/token/",
        ] {
            assert_eq!(
                p.check(&get, path, None),
                builtin("v1-auth-token"),
                "{path}"
            );
        }
        // Spellings some hop could read differently: refused outright.
        for path in [
            "/admin//auth/token",
            "//admin/auth/token",
            "/admin/auth/token//",
            "/admin/./auth/token",
            "/admin/x/../auth/token",
            "/admin/auth/token/.",
            "/admin/%61uth/token",
            "/admin/%2e/auth/token",
            "/admin/auth%2Ftoken",
            "/admin/auth%2ftoken",
            "/admin/auth/token%2f",
            "/admin/auth/token%2F",
            "/admin\\auth\\token",
            "/admin/auth%5ctoken",
            "/admin/auth/token;x",
            "/admin/auth;x/token",
            "/admin/auth/token%00",
            "/admin/auth/token%20",
            "/admin/auth/token#x",
            "/admin/auth/token?x",
            "/admin/auth/token\t",
            "/admin/auth/token ",
            "/admin/auth/tok%65n",
            "/admin/auth/%2561uth",
            "/admin/auth%c0%aftoken",
            "/admin/auth/token%",
            "/admin/auth/tok\u{212a}en",
            "admin/auth/token",
            "",
        ] {
            let d = p.check(&get, path, None);
            assert!(matches!(d, Decision::BadPath(_)), "{path:?} -> {d:?}");
        }
    }

    #[test]
    fn own_user_rule() {
        let p = default_policy();
        let post = Method::POST;
        // Case-insensitive: Express passes the raw case to Medusa, but the
        // canonical form is lowercase; denying the other case is the safe side.
        for path in [
            "/admin/users/usr_01ABCdef",
            "/admin/users/USR_01ABCDEF/",
            "/admin/users/usr_01abcdef/anything",
            "/admin/users/me",
            "/admin/users/ME",
        ] {
            assert_eq!(
                p.check(&post, path, Some(OWN)),
                builtin("own-user"),
                "{path}"
            );
            assert_eq!(
                p.check(&Method::DELETE, path, Some(OWN)),
                builtin("own-user"),
                "{path}"
            );
            assert_eq!(p.check(&Method::GET, path, Some(OWN)), Decision::Allow);
        }
        // An encoded spelling of the id is refused before matching.
        assert!(matches!(
            p.check(&post, "/admin/users/usr%5F01abcdef", Some(OWN)),
            Decision::BadPath(_)
        ));
        // Unknown own id: only the alias is denied.
        assert_eq!(
            p.check(&post, "/admin/users/usr_01abcdef", None),
            Decision::Allow
        );
        assert_eq!(p.check(&post, "/admin/users/me", None), builtin("own-user"));
        // Another user's id is fine, as is an id that merely starts the same.
        assert_eq!(
            p.check(&post, "/admin/users/usr_01abcdefg", Some(OWN)),
            Decision::Allow
        );
        assert_eq!(p.check(&post, "/admin/users/x", Some("")), Decision::Allow);
    }

    #[test]
    fn own_user_id_with_reserved_characters_is_compared_decoded() {
        let p = default_policy();
        assert_eq!(
            p.check(&Method::POST, "/admin/users/a%3Ab", Some("a:b")),
            builtin("own-user")
        );
        assert_eq!(
            p.check(&Method::POST, "/admin/users/a:b", Some("a:b")),
            builtin("own-user")
        );
    }

    #[test]
    fn lowercase_method_spelling_is_still_denied() {
        let p = default_policy();
        assert_eq!(
            p.check(&m("post"), "/admin/users", None),
            builtin("users-create")
        );
        assert_eq!(
            p.check(&m("Delete"), "/admin/auth", None),
            builtin("v1-auth-session")
        );
    }

    #[test]
    fn read_only() {
        let p = policy(PolicyConfig {
            read_only: true,
            ..PolicyConfig::default()
        });
        for method in ["GET", "HEAD", "OPTIONS"] {
            assert_eq!(
                p.check(&m(method), "/admin/products", None),
                Decision::Allow
            );
        }
        for method in ["POST", "PUT", "PATCH", "DELETE", "get", "PROPFIND"] {
            assert_eq!(
                p.check(&m(method), "/admin/products", None),
                Decision::Deny(DenyReason::ReadOnly),
                "{method}"
            );
        }
        // Built-ins and path rules come first.
        assert_eq!(
            p.check(&Method::POST, "/admin/users", None),
            builtin("users-create")
        );
        assert_eq!(
            p.check(&Method::POST, "/store/carts", None),
            Decision::Deny(DenyReason::NotAllowed)
        );
    }

    #[test]
    fn allow_paths_default_and_prefix_semantics() {
        let p = default_policy();
        for path in ["/store/products", "/health", "/", "/adminx", "/app/admin"] {
            assert_eq!(
                p.check(&Method::GET, path, None),
                Decision::Deny(DenyReason::NotAllowed),
                "{path}"
            );
        }
        for path in ["/admin", "/admin/", "/ADMIN/products", "/admin/products/"] {
            assert_eq!(p.check(&Method::GET, path, None), Decision::Allow, "{path}");
        }
        // With or without trailing slash, an entry means the same subtree.
        let q = policy(PolicyConfig {
            allow_paths: vec!["/Admin/Products".into(), "/store/".into()],
            ..PolicyConfig::default()
        });
        for (path, ok) in [
            ("/admin/products", true),
            ("/admin/products/prod_1", true),
            ("/admin/productsx", false),
            ("/admin/orders", false),
            ("/store", true),
            ("/store/carts", true),
            ("/storex", false),
        ] {
            let want = if ok {
                Decision::Allow
            } else {
                Decision::Deny(DenyReason::NotAllowed)
            };
            assert_eq!(q.check(&Method::GET, path, None), want, "{path}");
        }
        let none = policy(PolicyConfig {
            allow_paths: vec![],
            ..PolicyConfig::default()
        });
        assert_eq!(
            none.check(&Method::GET, "/admin/products", None),
            Decision::Deny(DenyReason::NotAllowed)
        );
    }

    #[test]
    fn deny_paths() {
        let p = policy(PolicyConfig {
            deny_paths: vec!["/admin/users/".into(), "/admin/Orders".into()],
            read_only: true,
            ..PolicyConfig::default()
        });
        for path in [
            "/admin/users",
            "/ADMIN/Users/",
            "/admin/users/usr_1",
            "/admin/orders",
            "/admin/orders/order_1/fulfillments",
        ] {
            assert_eq!(
                p.check(&Method::GET, path, None),
                Decision::Deny(DenyReason::DenyListed),
                "{path}"
            );
        }
        // Deny-listing is reported before read-only.
        assert_eq!(
            p.check(&Method::PUT, "/admin/orders", None),
            Decision::Deny(DenyReason::DenyListed)
        );
        for path in ["/admin/users-groups", "/admin/ordersx", "/admin/products"] {
            assert_eq!(p.check(&Method::GET, path, None), Decision::Allow, "{path}");
        }
        // Built-ins still win over deny_paths in the report.
        assert_eq!(
            p.check(&Method::GET, "/admin/users/password-token", None),
            builtin("users-password-token")
        );
    }

    #[test]
    fn builtins_win_over_allow_root() {
        let p = open_policy();
        assert_eq!(
            p.check(&Method::POST, "/auth/user/emailpass", None),
            builtin("v2-auth")
        );
        assert_eq!(
            p.check(&Method::GET, "/store/products", None),
            Decision::Allow
        );
        assert_eq!(p.check(&Method::GET, "/", None), Decision::Allow);
    }

    #[test]
    fn lift_builtin() {
        let p = policy(PolicyConfig {
            lift_builtin: vec![
                "v1-auth-token".into(),
                "own-user".into(),
                "v1-auth-token".into(),
            ],
            ..PolicyConfig::default()
        });
        assert_eq!(p.lifted(), ["v1-auth-token", "own-user"]);
        assert_eq!(
            p.check(&Method::POST, "/admin/auth/token", None),
            Decision::Allow
        );
        assert_eq!(
            p.check(&Method::POST, "/admin/users/me", Some(OWN)),
            Decision::Allow
        );
        // Other rules stay in force.
        assert_eq!(
            p.check(&Method::POST, "/admin/auth", None),
            builtin("v1-auth-session")
        );
        assert_eq!(
            p.check(&Method::POST, "/admin/users", None),
            builtin("users-create")
        );
        // Lifting does not bypass canonicalisation, nor allow_paths.
        assert!(matches!(
            p.check(&Method::GET, "/admin//auth/token", None),
            Decision::BadPath(_)
        ));
        assert!(default_policy().lifted().is_empty());
        let q = policy(PolicyConfig {
            lift_builtin: vec!["v2-auth".into()],
            ..PolicyConfig::default()
        });
        assert_eq!(
            q.check(&Method::POST, "/auth/user/emailpass", None),
            Decision::Deny(DenyReason::NotAllowed)
        );
    }

    #[test]
    fn lifting_one_rule_opens_exactly_its_routes() {
        for rule in BUILTIN_RULES {
            let p = policy(PolicyConfig {
                allow_paths: vec!["/".into()],
                lift_builtin: vec![rule.name.to_owned()],
                ..PolicyConfig::default()
            });
            assert_eq!(p.lifted(), [rule.name]);
            for (method, path, name) in DENIED {
                let want = if *name == rule.name {
                    Decision::Allow
                } else {
                    builtin(name)
                };
                assert_eq!(
                    p.check(&m(method), path, Some(OWN)),
                    want,
                    "lifted {}: {method} {path}",
                    rule.name
                );
            }
        }
    }

    #[test]
    fn config_errors_name_the_entry() {
        let err = |cfg| match Policy::new(cfg) {
            Ok(_) => panic!("config accepted"),
            Err(e) => e.to_string(),
        };
        let e = err(PolicyConfig {
            allow_paths: vec!["admin/".into()],
            ..PolicyConfig::default()
        });
        assert!(e.starts_with("policy.allow_paths: \"admin/\""), "{e}");
        assert!(e.contains("start with '/'"), "{e}");
        let e = err(PolicyConfig {
            deny_paths: vec!["/admin//users".into()],
            ..PolicyConfig::default()
        });
        assert!(e.starts_with("policy.deny_paths: \"/admin//users\""), "{e}");
        let e = err(PolicyConfig {
            deny_paths: vec!["/admin/*".into()],
            ..PolicyConfig::default()
        });
        assert!(e.contains("wildcards"), "{e}");
        let e = err(PolicyConfig {
            lift_builtin: vec!["x".into()],
            ..PolicyConfig::default()
        });
        assert!(
            e.starts_with(&format!(
                "{LIFT_KEY}: unknown rule \"x\"; known: v1-auth-session, "
            )),
            "{e}"
        );
        for rule in BUILTIN_RULES {
            assert!(e.contains(rule.name), "{e}");
        }
        // Names are exact.
        let e = err(PolicyConfig {
            lift_builtin: vec!["V2-AUTH".into()],
            ..PolicyConfig::default()
        });
        assert!(e.contains("\"V2-AUTH\""), "{e}");
    }

    #[test]
    fn body_rules_apply_by_default() {
        let p = default_policy();
        let r = p.body_rules(&Method::GET, "/admin/products");
        assert!(r.scrub.api_token && !r.scrub.invite_token, "{r:?}");
        assert!(r.refuse_api_token && !r.always_inspect, "{r:?}");
        for path in ["/admin/invites", "/ADMIN/Invites/", "/admin/invites/inv_1"] {
            let r = p.body_rules(&Method::GET, path);
            assert!(r.scrub.api_token && r.scrub.invite_token, "{path}: {r:?}");
        }
        assert!(
            !p.body_rules(&Method::GET, "/admin/invitesx")
                .scrub
                .invite_token
        );
        for path in ["/admin/users", "/admin/Users/usr_1", "/admin/users/usr_1/x"] {
            let r = p.body_rules(&Method::POST, path);
            assert!(r.refuse_api_token && r.always_inspect, "{path}: {r:?}");
        }
        assert!(!p.body_rules(&Method::POST, "/admin/users-x").always_inspect);
        // Body rules never refuse a route by themselves.
        assert_eq!(p.check(&Method::GET, "/admin/users", None), Decision::Allow);
        assert_eq!(
            p.check(&Method::GET, "/admin/invites", None),
            Decision::Allow
        );
    }

    #[test]
    fn body_rules_lift_one_by_one() {
        let lift = |names: &[&str]| {
            policy(PolicyConfig {
                lift_builtin: names.iter().map(|n| (*n).to_owned()).collect(),
                ..PolicyConfig::default()
            })
        };
        let p = lift(&["api-token-read"]);
        assert_eq!(p.lifted(), ["api-token-read"]);
        let r = p.body_rules(&Method::GET, "/admin/invites");
        assert!(!r.scrub.api_token && r.scrub.invite_token && r.refuse_api_token);
        let r = lift(&["invite-token-read"]).body_rules(&Method::GET, "/admin/invites");
        assert!(r.scrub.api_token && !r.scrub.invite_token);
        let r = lift(&["api-token-write"]).body_rules(&Method::POST, "/admin/users/usr_1");
        assert!(!r.refuse_api_token && !r.always_inspect && r.scrub.api_token);
        let all = lift(&["api-token-read", "api-token-write", "invite-token-read"]);
        assert_eq!(
            all.body_rules(&Method::GET, "/admin/invites"),
            BodyRules::default()
        );
        // Lifting them opens no route and closes none.
        for (method, path, name) in DENIED {
            assert_eq!(all.check(&m(method), path, Some(OWN)), builtin(name));
        }
    }

    #[test]
    fn deny_reason_display() {
        assert!(
            DenyReason::BuiltIn("v2-auth")
                .to_string()
                .contains("\"v2-auth\"")
        );
        assert!(DenyReason::ReadOnly.to_string().contains("read_only"));
        assert!(DenyReason::NotAllowed.to_string().contains("allow_paths"));
        assert!(DenyReason::DenyListed.to_string().contains("deny_paths"));
    }

    // ---- property tests ----

    /// The most liberal reading of a path any hop might apply: `\` as `/`,
    /// repeated decoding of escapes that "should not matter" (unreserved,
    /// `/`, `\`, `%`, controls), cutting at `?`/`#`, stripping `;params`,
    /// collapsing empty segments, resolving dot segments, lowercasing.
    fn liberal(s: &str) -> String {
        let mut b: Vec<u8> = s.as_bytes().to_vec();
        for _ in 0..4 {
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                let escaped = match (b.get(i), b.get(i + 1), b.get(i + 2)) {
                    (Some(b'%'), Some(&h), Some(&l)) => hex_val(h).zip(hex_val(l)),
                    _ => None,
                };
                if let Some((h, l)) = escaped
                    && let v = h * 16 + l
                    && (is_unreserved(v) || matches!(v, b'/' | b'\\' | b'%' | 0..=0x20 | 0x7f))
                {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b[i]);
                i += 1;
            }
            b = out;
        }
        let s = String::from_utf8_lossy(&b).replace('\\', "/");
        let s = s.split(['?', '#']).next().unwrap_or("");
        let mut segs: Vec<String> = Vec::new();
        for seg in s.split('/') {
            let seg = seg.split(';').next().unwrap_or("");
            let seg: String = seg
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
                .trim()
                .to_ascii_lowercase();
            match seg.as_str() {
                "" | "." => {}
                ".." => {
                    segs.pop();
                }
                _ => segs.push(seg),
            }
        }
        format!("/{}", segs.join("/"))
    }

    fn tricky_path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            4 => Just("/".to_owned()),
            6 => prop::sample::select(vec![
                "admin", "ADMIN", "Auth", "auth", "token", "users", "me", "usr_01abcdef",
                "invites", "accept", "resend", "api-keys", "password-token", "x", ".", "..", "%2f",
                "%2F", "%5c", "%61", "%41", "%2e", "%2E", "%25", "%252f", "%3a", "%3A",
                "%C3%A9", "%c0%af", "%80", "%00", "%0a", "%", "%g1", "\\", ";", "?", "#",
                " ", "\t", "\u{e9}", "\u{212a}", "~", "-", "_", "*", "|",
            ])
            .prop_map(str::to_owned),
            1 => any::<char>().prop_map(String::from),
        ];
        (any::<bool>(), prop::collection::vec(piece, 0..14)).prop_map(|(slash, pieces)| {
            let mut s = if slash { "/".to_owned() } else { String::new() };
            s.extend(pieces);
            s
        })
    }

    /// Re-spells a canonical denied path: `seps[i]` picks the separator
    /// before segment `i` (doubled slash, `/./`, `/x/../`, backslash, encoded
    /// slashes, encoded dot segments), `chars[j]` what happens to character
    /// `j` (case flip, percent-encoding in either hex case, double encoding)
    /// and `suffix` what is appended (trailing slashes, dot segments, `;x`,
    /// `%00`, fragment, query...). Missing choices mean "leave as is".
    fn respell(path: &str, seps: &[u8], chars: &[u8], suffix: u8) -> String {
        let mut out = String::new();
        let mut j = 0;
        for (i, seg) in segments(path).enumerate() {
            out.push_str(match seps.get(i).map_or(255, |c| c % 16) {
                0 => "//",
                1 => "/./",
                2 => "/x/../",
                3 => "\\",
                4 => "%2f",
                5 => "%2F",
                6 => "%5C",
                7 => "/%2e/",
                8 => "/.%2E/../",
                _ => "/",
            });
            for c in seg.chars() {
                match chars.get(j).map_or(255, |c| c % 12) {
                    0..=2 => out.push(c.to_ascii_uppercase()),
                    3 => out.push_str(&format!("%{:02X}", u32::from(c))),
                    4 => out.push_str(&format!("%{:02x}", u32::from(c))),
                    5 => out.push_str(&format!("%25{:02x}", u32::from(c))),
                    _ => out.push(c),
                }
                j += 1;
            }
        }
        out.push_str(match suffix % 20 {
            0 => "/",
            1 => "//",
            2 => "/.",
            3 => ";x",
            4 => "%00",
            5 => "#x",
            6 => "?x",
            7 => "/x/..",
            8 => "%2f",
            9 => " ",
            10 => "\\",
            11 => ";",
            12 => "/%2e",
            13 => "%20",
            14 => "%09",
            _ => "",
        });
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// (1) No spelling of a built-in-denied route is ever allowed, even
        /// with every path allowed; the plain Express-equivalent spellings
        /// (case, one trailing slash) are denied by the right rule.
        #[test]
        fn denied_routes_stay_denied_under_any_spelling(
            idx in 0..DENIED.len(),
            seps in prop::collection::vec(any::<u8>(), 0..6),
            chars in prop::collection::vec(any::<u8>(), 0..40),
            suffix in any::<u8>(),
        ) {
            let (method, path, rule) = DENIED[idx];
            let spelled = respell(path, &seps, &chars, suffix);
            for p in [open_policy(), default_policy()] {
                let d = p.check(&m(method), &spelled, Some(OWN));
                prop_assert!(
                    matches!(d, Decision::Deny(_) | Decision::BadPath(_)),
                    "{} {:?} -> {:?}", method, spelled, d
                );
            }
            // Case flips and one trailing slash only: the rule itself denies.
            let mut plain: String = path
                .chars()
                .zip(chars.iter().chain(std::iter::repeat(&0)))
                .map(|(c, r)| if r % 2 == 1 { c.to_ascii_uppercase() } else { c })
                .collect();
            if suffix % 3 == 0 {
                plain.push('/');
            }
            prop_assert_eq!(
                open_policy().check(&m(method), &plain, Some(OWN)),
                builtin(rule),
                "{}", plain
            );
        }

        /// (1b) Whatever the path: Allow implies it canonicalises, and the
        /// most liberal reading of it is not a built-in-denied route.
        #[test]
        fn allowed_paths_are_unambiguous(path in tricky_path()) {
            let p = open_policy();
            for method in [Method::GET, Method::POST, Method::DELETE] {
                if p.check(&method, &path, Some(OWN)) == Decision::Allow {
                    prop_assert!(canonicalize(&path).is_ok());
                    let lib = liberal(&path);
                    prop_assert!(
                        !BUILTIN_RULES
                            .iter()
                            .any(|r| r.kind == RuleKind::Route && r.matches(&method, &lib, Some(OWN))),
                        "{} {:?} allowed, but reads as {:?}", method, path, lib
                    );
                }
            }
        }

        /// (4) Every accepted path means the same under the most liberal
        /// reading as its canonical form: there is nothing left to interpret.
        #[test]
        fn canonical_form_equals_liberal_reading(path in tricky_path()) {
            if let Ok(c) = canonicalize(&path) {
                prop_assert_eq!(liberal(&path), c, "{:?}", path);
            }
        }

        /// (2) Never panics; idempotent on its output.
        #[test]
        fn canonicalize_is_idempotent(path in prop_oneof![any::<String>(), tricky_path()]) {
            if let Ok(c) = canonicalize(&path) {
                prop_assert_eq!(canonicalize(&c), Ok(c.clone()));
            }
            let _ = open_policy().check(&Method::POST, &path, Some(OWN));
        }

        /// (3) Shape of the canonical form.
        #[test]
        fn canonical_form_invariants(path in prop_oneof![any::<String>(), tricky_path()]) {
            if let Ok(c) = canonicalize(&path) {
                prop_assert!(c.starts_with('/'));
                prop_assert!(!c.contains("//"), "{:?}", c);
                prop_assert!(!c.contains("/./") && !c.ends_with("/."), "{:?}", c);
                prop_assert!(!c.contains("/../") && !c.ends_with("/.."), "{:?}", c);
                prop_assert!(!c.contains("%2f") && !c.contains("%5c"), "{:?}", c);
                prop_assert!(!c.contains('\\') && !c.contains(';'), "{:?}", c);
                prop_assert!(!c.bytes().any(|b| b.is_ascii_uppercase()), "{:?}", c);
                prop_assert!(c == "/" || !c.ends_with('/'), "{:?}", c);
                prop_assert!(c.is_ascii());
            }
        }
    }
}
