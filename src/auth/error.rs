//! Why there is no token: the login's failure classes ([`LoginError`]) and the manager's
//! answer to a request ([`TokenError`]).

use std::sync::Arc;
use std::time::Duration;

use super::login::unreachable;
use crate::upstream::UpstreamError;

/// Why [`TokenManager::token`](super::TokenManager::token) has no token to give. `Display` is safe to show a client: it
/// names no account, secret or secret source (the driver's log line has those); the source
/// chain ([`std::error::Error::source`]) is for logs.
///
/// ```no_run
/// # async fn demo(tokens: medusa_auth_proxy::auth::TokenManager) {
/// match tokens.token().await {
///     Ok(token) => { /* send with token.header */ }
///     Err(e) => eprintln!("503, Retry-After {:?}: {e}", e.retry_after()),
/// }
/// # }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The last login failed; the driver tries again after `retry_after`.
    #[error("login failed: {}", .source.public_summary())]
    LoginFailed {
        /// Why the login failed (its `Display` may name the account: for logs only).
        #[source]
        source: Arc<LoginError>,
        /// Until the driver's next attempt.
        retry_after: Duration,
    },
    /// A login is under way but did not finish within `login_timeout` (plus a second).
    #[error("timed out waiting for a login to Medusa")]
    Timeout,
    /// Medusa rejected the token and the driver has not obtained another one (for a caller
    /// that wanted a token other than the one it holds).
    #[error("Medusa rejected the token and no new one is available")]
    NotReplaced,
}

impl TokenError {
    /// How long a client should wait before trying again (for `Retry-After`).
    ///
    /// ```
    /// use medusa_auth_proxy::auth::TokenError;
    /// assert_eq!(TokenError::Timeout.retry_after(), std::time::Duration::from_secs(1));
    /// ```
    pub fn retry_after(&self) -> Duration {
        match self {
            TokenError::LoginFailed { retry_after, .. } => *retry_after,
            TokenError::Timeout | TokenError::NotReplaced => Duration::from_secs(1),
        }
    }
}

/// Why a login failed. The classes decide the backoff: rejected credentials wait long
/// (retrying cannot help and may lock the account), transient failures start short.
///
/// `Display` is for the proxy's log: it names the account and where its secret comes from
/// (never the secret). [`LoginError::public_summary`] is the text for anyone else.
///
/// ```
/// use medusa_auth_proxy::auth::login::LoginError;
/// let e = LoginError::Status(502);
/// assert!(!e.is_bad_credentials());
/// assert_eq!(e.kind(), "bad_status");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Medusa rejected the email/password (401, or 400 for a malformed login). Says what to
    /// change: which account, which URL, where the password came from (never the password).
    #[error(
        "invalid credentials: Medusa at {url} refused the login for {email:?} (answered \
         {status}); the password came from {secret_from}. Set auth.email to the account that \
         password belongs to, or give that account's password there{hint}"
    )]
    InvalidCredentials {
        /// Medusa's answer.
        status: u16,
        /// The login URL.
        url: String,
        /// The account.
        email: String,
        /// Where the password came from ("environment variable X").
        secret_from: String,
        /// What else to check (empty, or a sentence starting with ". ").
        hint: &'static str,
    },
    /// Medusa rejected a static API key (401/403).
    #[error(
        "invalid credentials: Medusa at {url} refused the API key from {secret_from} \
         (answered {status}); put a valid key there, or check auth.flavor"
    )]
    InvalidKey {
        /// Medusa's answer.
        status: u16,
        /// The URL the key was checked on.
        url: String,
        /// Where the key came from.
        secret_from: String,
    },
    /// The login route does not exist where we looked: wrong flavor or a missing path prefix.
    #[error("{url} answered 404: {advice}")]
    LoginNotFound {
        /// The login URL that answered 404.
        url: String,
        /// What to change.
        advice: &'static str,
    },
    /// Medusa answered the login with another status (5xx, ...).
    #[error("Medusa answered the login with status {0}")]
    Status(u16),
    /// A static key's check request got an unexpected status.
    #[error("Medusa answered the API key check with status {0}")]
    KeyCheckStatus(u16),
    /// The request did not get an answer from Medusa (connect, TLS, broken connection).
    #[error("{0}")]
    Upstream(#[source] UpstreamError),
    /// No answer within `auth.login_timeout` (or the upstream request timeout).
    #[error("login timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// A 2xx answer that holds no usable token.
    #[error("unusable login response: {0}")]
    BadResponse(&'static str),
    /// The account cannot log in without a human (MFA, verification, external provider).
    #[error("{0}")]
    NeedsInteraction(&'static str),
    /// Medusa answered 401 to a token it had just issued, before any request succeeded with it.
    #[error("Medusa rejected the token it had just issued")]
    TokenRejected,
}

impl LoginError {
    /// Medusa could not be reached at all (connection refused or broken): worth retrying as
    /// soon as its `/health` answers again. Not a 5xx or a timeout: there `/health` may well
    /// answer while logins still fail, and the backoff must hold. Not a refused TLS
    /// certificate either: Medusa is up, the proxy does not trust it, and `/health` over the
    /// same TLS cannot tell when that changes.
    ///
    /// ```
    /// use medusa_auth_proxy::auth::login::LoginError;
    /// assert!(!LoginError::Status(503).is_unreachable());
    /// ```
    pub fn is_unreachable(&self) -> bool {
        match self {
            LoginError::Upstream(e) => unreachable(e),
            LoginError::InvalidCredentials { .. }
            | LoginError::InvalidKey { .. }
            | LoginError::LoginNotFound { .. }
            | LoginError::Status(_)
            | LoginError::KeyCheckStatus(_)
            | LoginError::Timeout(_)
            | LoginError::BadResponse(_)
            | LoginError::NeedsInteraction(_)
            | LoginError::TokenRejected => false,
        }
    }

    /// Medusa refused the credential itself, or the account cannot log in without a human:
    /// retrying soon cannot help (and may lock the account), so the backoff starts long.
    ///
    /// ```
    /// use medusa_auth_proxy::auth::login::LoginError;
    /// assert!(LoginError::NeedsInteraction("MFA").is_bad_credentials());
    /// ```
    pub fn is_bad_credentials(&self) -> bool {
        matches!(
            self,
            LoginError::InvalidCredentials { .. }
                | LoginError::InvalidKey { .. }
                | LoginError::NeedsInteraction(_)
        )
    }

    /// The error for `/readyz` and clients, which anyone who reaches the proxy may read:
    /// without the account's email or where its password lives (the log line has those).
    ///
    /// ```
    /// use medusa_auth_proxy::auth::login::LoginError;
    /// let e = LoginError::InvalidKey { status: 401, url: "u".into(), secret_from: "env K".into() };
    /// assert!(!e.public_summary().contains("env K"));
    /// ```
    pub fn public_summary(&self) -> String {
        match self {
            LoginError::InvalidCredentials { status, .. }
            | LoginError::InvalidKey { status, .. } => {
                format!(
                    "invalid credentials (Medusa answered {status}); the proxy's log names the \
                     account and where its secret comes from"
                )
            }
            other => other.to_string(),
        }
    }

    /// Short label for logs and metrics.
    ///
    /// ```
    /// use medusa_auth_proxy::auth::login::LoginError;
    /// assert_eq!(LoginError::TokenRejected.kind(), "token_rejected");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            LoginError::InvalidCredentials { .. } | LoginError::InvalidKey { .. } => {
                "invalid_credentials"
            }
            LoginError::NeedsInteraction(_) => "needs_interaction",
            LoginError::Status(_)
            | LoginError::KeyCheckStatus(_)
            | LoginError::LoginNotFound { .. } => "bad_status",
            LoginError::Upstream(e) if unreachable(e) => "unreachable",
            LoginError::Upstream(_) => "upstream",
            LoginError::Timeout(_) => "timeout",
            LoginError::BadResponse(_) => "bad_response",
            LoginError::TokenRejected => "token_rejected",
        }
    }
}
