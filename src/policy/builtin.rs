//! The built-in rules: routes the proxy refuses by default, and the credential fields it
//! scrubs from (or refuses in) bodies. Lifted by name with `policy.unsafe_lift_builtin_denies`.

use http::Method;

/// A route the proxy refuses by default because it mints, resets or ends
/// credentials, or would let a caller take over or delete the proxy's own
/// Medusa user.
///
/// `pattern` is a canonical path whose segments are literals, except:
/// - `*` matches any one segment;
/// - `{own_user_id}` matches the proxy's own user id (case-insensitively,
///   after percent-decoding) and the alias `me`;
/// - a final `**` matches the path itself and anything below it.
#[derive(Debug, PartialEq, Eq)]
pub struct BuiltinRule {
    /// Stable name, used in `policy.unsafe_lift_builtin_denies` and in 403 messages.
    pub name: &'static str,
    /// Methods the rule applies to; `None` = every method.
    pub methods: Option<&'static [Method]>,
    /// Path pattern, see the type's docs.
    pub pattern: &'static str,
    /// Why the route is blocked (for docs and start-up warnings).
    pub description: &'static str,
    /// What the rule does on the routes it matches.
    pub kind: RuleKind,
}

/// What a built-in rule does to a request that matches its methods and pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// Refuse the request (403 `route_denied`); [`super::Policy::check`] applies these.
    Route,
    /// Replace the value of every `api_token` field in Medusa's response (see `crate::scrub`).
    ScrubApiToken,
    /// Replace the value of every `token` field in Medusa's response.
    ScrubInviteToken,
    /// Refuse (403 `route_denied`) a request whose body sets an `api_token` field. Bodies that
    /// are buffered anyway (small, with `Content-Length`) are inspected on every matching
    /// route; on [`ALWAYS_INSPECTED`] every body is, and a larger one is refused (413).
    RefuseApiTokenWrite,
}

/// Request bodies under this canonical prefix are always buffered (up to
/// [`MAX_INSPECTED_BODY`]) and inspected while `api-token-write` applies: v1 sets a user's
/// static token with `POST /admin/users/{id}`.
pub const ALWAYS_INSPECTED: &str = "/admin/users";

/// Largest body inspected on [`ALWAYS_INSPECTED`] routes; a larger one is refused there.
pub const MAX_INSPECTED_BODY: u64 = 64 * 1024;

/// The built-in deny rules, in the order they are checked.
///
/// Rules with a `**` subtree are deliberately wider than the exact Medusa
/// route: nothing legitimate lives below these routes, and a wider rule cannot
/// be sidestepped by a route Medusa adds later under the same prefix. Rules do
/// not overlap on their documented routes, so lifting one rule by name really
/// opens its routes (a test checks this).
pub const BUILTIN_RULES: &[BuiltinRule] = &[
    BuiltinRule {
        name: "v1-auth-session",
        methods: Some(&[Method::POST, Method::DELETE]),
        pattern: "/admin/auth",
        kind: RuleKind::Route,
        description: "v1 cookie login (POST /admin/auth) hands out a session; DELETE ends the \
                      proxy's own session. GET /admin/auth (\"who am I\") stays allowed.",
    },
    BuiltinRule {
        name: "v1-auth-token",
        methods: None,
        pattern: "/admin/auth/token/**",
        kind: RuleKind::Route,
        description: "v1 login: POST /admin/auth/token returns a 24 h admin JWT.",
    },
    BuiltinRule {
        name: "users-password-token",
        methods: None,
        pattern: "/admin/users/password-token/**",
        kind: RuleKind::Route,
        description: "v1: creates a password-reset token for any user.",
    },
    BuiltinRule {
        name: "users-reset-password",
        methods: None,
        pattern: "/admin/users/reset-password/**",
        kind: RuleKind::Route,
        description: "v1: sets a user's password with a reset token.",
    },
    BuiltinRule {
        name: "invites-create",
        methods: Some(&[Method::POST]),
        pattern: "/admin/invites",
        kind: RuleKind::Route,
        description: "Creates an invite; its token lets anyone become an admin (v2 returns \
                      it in the response). Listing and deleting invites stay allowed.",
    },
    BuiltinRule {
        name: "invites-resend",
        methods: Some(&[Method::POST]),
        pattern: "/admin/invites/*/resend",
        kind: RuleKind::Route,
        description: "Issues a fresh token for an existing invite (v2 returns it).",
    },
    BuiltinRule {
        name: "invites-accept",
        methods: None,
        pattern: "/admin/invites/accept/**",
        kind: RuleKind::Route,
        description: "Accepting an invite creates a new admin user.",
    },
    BuiltinRule {
        name: "users-create",
        methods: Some(&[Method::POST]),
        pattern: "/admin/users",
        kind: RuleKind::Route,
        description: "v1: POST /admin/users creates an admin user with a password of the \
                      caller's choosing.",
    },
    BuiltinRule {
        name: "own-user",
        methods: Some(&[Method::POST, Method::DELETE]),
        pattern: "/admin/users/{own_user_id}/**",
        kind: RuleKind::Route,
        description: "Updating the proxy's own user (v1: set its api_token, a static \
                      credential) or deleting it (the proxy loses its login).",
    },
    BuiltinRule {
        name: "v2-auth",
        methods: None,
        pattern: "/auth/**",
        kind: RuleKind::Route,
        description: "v2 login, registration, token refresh, password reset and sessions \
                      all live under /auth.",
    },
    BuiltinRule {
        name: "api-keys-create",
        methods: Some(&[Method::POST]),
        pattern: "/admin/api-keys/**",
        kind: RuleKind::Route,
        description: "v2: POST /admin/api-keys creates a secret API key (a credential); \
                      POST below it updates or revokes keys. GET and DELETE stay allowed.",
    },
    BuiltinRule {
        name: "api-token-read",
        methods: None,
        pattern: "/**",
        kind: RuleKind::ScrubApiToken,
        description: "v1 returns every user's static api_token (a credential that works \
                      directly against Medusa, forever) in user objects: GET /admin/auth, \
                      /admin/users, and wherever a user is embedded. Its value is replaced \
                      with null in every response.",
    },
    BuiltinRule {
        name: "api-token-write",
        methods: None,
        pattern: "/**",
        kind: RuleKind::RefuseApiTokenWrite,
        description: "v1: POST /admin/users/{id} with {\"api_token\": ...} sets any user's \
                      static token. A request body that sets api_token is refused; bodies \
                      to /admin/users and below are always inspected (at most 64 KiB).",
    },
    BuiltinRule {
        name: "invite-token-read",
        methods: None,
        pattern: "/admin/invites/**",
        kind: RuleKind::ScrubInviteToken,
        description: "Invite listings (v1 and v2) carry each invite's token, which creates \
                      an admin account. Its value is replaced with null on /admin/invites \
                      and below.",
    },
];

/// Looks up a built-in rule by its exact name.
pub fn builtin_rule(name: &str) -> Option<&'static BuiltinRule> {
    BUILTIN_RULES.iter().find(|r| r.name == name)
}

/// What the body rules in force require for one request (see [`super::Policy::body_rules`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyRules {
    /// Fields whose values are replaced in Medusa's response.
    pub scrub: crate::scrub::Scrub,
    /// Refuse a request body that sets `api_token`, if it is inspected.
    pub refuse_api_token: bool,
    /// Inspect the body whatever its framing (buffering at most [`MAX_INSPECTED_BODY`]).
    pub always_inspect: bool,
}

#[cfg(test)]
mod tests {
    use super::super::canonicalize;
    use super::super::matching::OWN_USER_ID;
    use super::*;

    #[test]
    fn builtin_rule_table_is_well_formed() {
        for (i, rule) in BUILTIN_RULES.iter().enumerate() {
            assert!(
                BUILTIN_RULES[..i].iter().all(|r| r.name != rule.name),
                "duplicate {}",
                rule.name
            );
            assert!(builtin_rule(rule.name).is_some());
            // Patterns are canonical once placeholders are filled in.
            let mut filled = rule
                .pattern
                .replace(OWN_USER_ID, "id")
                .replace("/**", "")
                .replace("/*/", "/id/");
            if filled.is_empty() {
                filled.push('/');
            }
            assert_eq!(canonicalize(&filled), Ok(filled.clone()), "{}", rule.name);
            assert!(!rule.description.is_empty());
        }
    }
}
