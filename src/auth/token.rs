//! A token as the proxy holds it, and when to stop using it and start renewing it.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio::time::Instant;

use super::check::CheckGate;
use super::jwt;
use super::login::{self, Credential, LoginError, Obtained};
use crate::config::{AuthSettings, Flavor};
use crate::secret::Secret;

/// How long a static key stays in the cache without a failed check (effectively forever).
const STATIC_USABLE_FOR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A token as cached: the ready-made header value plus what its lifecycle needs.
///
/// Requests get an `Arc<Token>` from [`TokenManager::token`](super::TokenManager::token) and
/// put [`Token::header`] under [`Token::header_name`]; nothing else on the request path needs
/// to know how it was obtained. `Debug` masks the credential.
///
/// ```no_run
/// # async fn demo(tokens: medusa_auth_proxy::auth::TokenManager) -> Result<(), Box<dyn std::error::Error>> {
/// let token = tokens.token().await?;
/// let mut req = http::Request::new(());
/// req.headers_mut().insert(token.header_name.clone(), token.header.clone());
/// // ... send it; on any answer but a 401:
/// token.mark_verified();
/// # Ok(()) }
/// ```
pub struct Token {
    /// Identity of this token within the process, for "invalidate only if still cached".
    pub id: u64,
    /// The header that carries the credential (`Authorization`, or `x-medusa-access-token`).
    pub header_name: HeaderName,
    /// E.g. `Bearer <jwt>`, marked sensitive, built once per token and shared by every request.
    pub header: HeaderValue,
    /// The raw credential (a v2 refresh presents it again).
    pub(super) secret: Secret,
    /// How it was obtained.
    pub how: Obtained,
    /// The flavor that produced it (never `Auto`): which route checks it.
    pub(super) flavor: Flavor,
    /// The Medusa user the token acts as, when known (JWT claims, or v1's `GET /admin/auth`).
    pub user_id: Option<String>,
    /// When the token was received.
    pub received: Instant,
    /// How long the token is valid from `received` (a static key: the key check interval).
    pub lifetime: Duration,
    /// Requests stop using the token at this instant (the cache entry expires).
    pub usable_until: Instant,
    /// The driver starts renewing at this instant, ahead of `usable_until`.
    pub refresh_at: Instant,
    /// Set once Medusa accepted the token for a request (a non-401 answer) or a check.
    verified: AtomicBool,
    /// Obtained by the login that followed a confirmed rejection: if this one is rejected too
    /// before Medusa ever accepted it, logging in again at once could loop; back off instead.
    pub(super) after_rejection: bool,
    /// Verifies a 401 for this token: single flight, at most one check per `CHECK_EVERY`.
    pub(super) check: CheckGate,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .field("header_name", &self.header_name)
            .field("header", &"***")
            .field("how", &self.how)
            .field("user_id", &self.user_id)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Turn a credential just obtained from Medusa into a token: its header, its lifetime
    /// (JWT claims, or `key_check_interval` for a static key) and its schedule.
    pub(super) fn new(
        cred: Credential,
        settings: &AuthSettings,
        id: u64,
        after_rejection: bool,
    ) -> Result<Token, LoginError> {
        let received = Instant::now();
        let (header_name, header) = login::credential_header(cred.flavor, cred.value.expose())
            .ok_or(LoginError::BadResponse("token is not a header value"))?;
        let (lifetime, user_id, usable_for, refresh_after) = if cred.flavor.is_static() {
            // A static key does not expire; it is re-checked every key_check_interval, and a
            // failed check (or an upstream 401) takes it out of use.
            let every = settings.key_check_interval;
            (every, cred.user_id, STATIC_USABLE_FOR, every)
        } else {
            let info = jwt::inspect(cred.value.expose(), settings.default_token_lifetime).map_err(
                |e| match e {
                    jwt::JwtError::NotJwt => LoginError::BadResponse("the token is not a JWT"),
                    jwt::JwtError::NoLifetime => {
                        LoginError::BadResponse("the token is already expired")
                    }
                },
            )?;
            let (usable_for, refresh_after) =
                schedule(info.lifetime, settings.refresh_before_expiry);
            (info.lifetime, info.user_id, usable_for, refresh_after)
        };
        Ok(Token {
            id,
            header_name,
            header,
            secret: cred.value,
            how: cred.how,
            flavor: cred.flavor,
            user_id,
            received,
            lifetime,
            usable_until: received + usable_for,
            refresh_at: received + refresh_after,
            verified: AtomicBool::new(false),
            after_rejection,
            check: CheckGate::default(),
        })
    }

    /// Record that Medusa accepted this token (it answered a request sent with it with
    /// anything but 401). Cheap: a load first, so the cache line is written once per token
    /// rather than once per request.
    ///
    /// ```no_run
    /// # fn demo(token: &medusa_auth_proxy::auth::Token, status: http::StatusCode) {
    /// if status != http::StatusCode::UNAUTHORIZED {
    ///     token.mark_verified();
    /// }
    /// # }
    /// ```
    pub fn mark_verified(&self) {
        if !self.verified.load(Ordering::Relaxed) {
            self.verified.store(true, Ordering::Relaxed);
        }
    }

    /// Whether Medusa has accepted this token at least once.
    ///
    /// ```no_run
    /// # fn demo(token: &medusa_auth_proxy::auth::Token) {
    /// token.mark_verified();
    /// assert!(token.is_verified());
    /// # }
    /// ```
    pub fn is_verified(&self) -> bool {
        self.verified.load(Ordering::Relaxed)
    }

    /// Whether renewing this token should present it again (a v2 JWT refresh) rather than the
    /// password: not for `x-medusa-access-token`, a static key that is checked, not renewed.
    pub(super) fn renewable(&self) -> Option<&Secret> {
        (self.header_name.as_str() != "x-medusa-access-token").then_some(&self.secret)
    }
}

/// When to stop using a token and when to start renewing it, from its lifetime: returns
/// `(usable_for, refresh_after)`, both counted from when the token was received.
///
/// The token is used until `lifetime - margin`, where margin is `refresh_before_expiry`, or
/// half the lifetime when the lifetime is shorter than twice that (a 2 s token with a 60 s
/// margin would otherwise never be usable, and every request would log in). Renewal starts a
/// quarter of the usable time earlier (at most 5 minutes), so steady-state requests never
/// wait for a login.
///
/// ```
/// use std::time::Duration;
/// use medusa_auth_proxy::auth::schedule;
///
/// let (usable_for, refresh_after) = schedule(Duration::from_secs(3600), Duration::from_secs(60));
/// assert_eq!(usable_for, Duration::from_secs(3540));
/// assert_eq!(refresh_after, Duration::from_secs(3540 - 300));
/// ```
pub fn schedule(lifetime: Duration, refresh_before_expiry: Duration) -> (Duration, Duration) {
    let margin = refresh_before_expiry.min(lifetime / 2);
    let usable_for = lifetime - margin;
    let lead = (usable_for / 4).min(Duration::from_secs(300));
    (usable_for, usable_for - lead)
}

#[cfg(test)]
impl Token {
    /// A static-key token (`x-medusa-access-token: <value>`, no JWT to forge) built the way
    /// the driver builds one, naming `user` as its user, for unit tests.
    pub(crate) fn for_tests(id: u64, value: &str, user: Option<&str>) -> std::sync::Arc<Token> {
        let settings = crate::config::Settings::from_toml(
            "[upstream]\nurl=\"http://127.0.0.1:9\"\n[auth]\nflavor=\"v1-api-token\"\napi_key_env=\"K\"",
        )
        .expect("a valid test config");
        let cred = Credential {
            value: Secret::new(value.into()),
            flavor: Flavor::V1ApiToken,
            how: Obtained::KeyCheck,
            user_id: user.map(str::to_owned),
        };
        std::sync::Arc::new(Token::new(cred, &settings.auth, id, false).expect("a valid token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_keeps_margin_and_renews_early() {
        let (use_for, refresh) = schedule(Duration::from_secs(86400), Duration::from_secs(60));
        assert_eq!(use_for, Duration::from_secs(86340));
        assert_eq!(refresh, Duration::from_secs(86340 - 300));
        // Shorter than the margin: half the lifetime, never zero.
        let (use_for, refresh) = schedule(Duration::from_secs(3), Duration::from_secs(60));
        assert_eq!(use_for, Duration::from_millis(1500));
        assert_eq!(refresh, Duration::from_millis(1125));
        let (use_for, refresh) = schedule(Duration::from_secs(100), Duration::from_secs(10));
        assert_eq!(use_for, Duration::from_secs(90));
        assert_eq!(refresh, Duration::from_millis(67500));
    }
}
