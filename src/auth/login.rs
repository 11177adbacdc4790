//! Obtaining a token from Medusa, per flavor, and classifying why it failed.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use std::sync::atomic::{AtomicU8, Ordering};

use http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};

use crate::config::Flavor;
use crate::secret::{Secret, SecretSource};
use crate::upstream::{Upstream, UpstreamError};

/// A login answer larger than this is not a token answer.
const MAX_LOGIN_RESPONSE: usize = 64 * 1024;

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

impl From<UpstreamError> for LoginError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Timeout(d) => LoginError::Timeout(d),
            other => LoginError::Upstream(other),
        }
    }
}

/// Whether an upstream failure means Medusa is not there (nothing listens, the connection
/// broke), as opposed to something `/health` polling cannot fix (its certificate, a URL that
/// is not TLS, a request that cannot be built).
fn unreachable(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Connect { .. } | UpstreamError::Io(_) => true,
        UpstreamError::Certificate(_)
        | UpstreamError::NotTls { .. }
        | UpstreamError::InvalidUri
        | UpstreamError::Timeout(_) => false,
    }
}

/// A credential obtained from Medusa (or proven to work, for static keys).
pub struct Credential {
    /// The JWT, or the static key.
    pub value: Secret,
    /// The flavor that produced it (never `Auto`).
    pub flavor: Flavor,
    /// How it was obtained, for logs and metrics.
    pub how: Obtained,
    /// The Medusa user the credential acts as, when the answer named one (v1-api-token: the
    /// key check's `GET /admin/auth`). JWT flavors read it from the token's claims instead.
    pub user_id: Option<String>,
}

/// How a credential was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Obtained {
    /// A full login with email and password.
    Login,
    /// v2: `POST /auth/token/refresh` with the still-valid token (no password hash on Medusa).
    Refresh,
    /// Static flavors: a cheap authenticated request proved the key works.
    KeyCheck,
}

impl Obtained {
    /// Label for logs and metrics: `login`, `refresh`, `key_check`.
    pub fn as_str(self) -> &'static str {
        match self {
            Obtained::Login => "login",
            Obtained::Refresh => "refresh",
            Obtained::KeyCheck => "key_check",
        }
    }
}

/// The header that carries a credential of `flavor` to Medusa, marked sensitive.
///
/// ```
/// use medusa_auth_proxy::auth::{Flavor, login::credential_header};
/// let (name, value) = credential_header(Flavor::V2, "a.b.c").unwrap();
/// assert_eq!(name, http::header::AUTHORIZATION);
/// assert!(value.is_sensitive());
/// ```
pub fn credential_header(flavor: Flavor, value: &str) -> Option<(HeaderName, HeaderValue)> {
    use base64::Engine as _;
    let (name, text) = match flavor {
        Flavor::V1 | Flavor::V2 | Flavor::Auto => {
            (header::AUTHORIZATION, format!("Bearer {value}"))
        }
        Flavor::V1ApiToken => (
            HeaderName::from_static("x-medusa-access-token"),
            value.to_owned(),
        ),
        // Medusa v2 reads a secret key from Basic auth with the key as user and no password.
        Flavor::V2SecretKey => (
            header::AUTHORIZATION,
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{value}:"))
            ),
        ),
    };
    let text = zeroize::Zeroizing::new(text);
    let mut v = HeaderValue::from_str(&text).ok()?;
    v.set_sensitive(true);
    Some((name, v))
}

const V1_LOGIN: &str = "/admin/auth/token";
const V2_LOGIN: &str = "/auth/user/emailpass";
const V2_REFRESH: &str = "/auth/token/refresh";
/// Cheap routes that need admin authentication. v1: `GET /admin/auth` ("who am I") answers
/// `{user: {id, ...}}` for a JWT or an `x-medusa-access-token`, so the v1-api-token key check
/// also learns the proxy's own user id (for the `own-user` rule). v2: `GET /admin/users/me`
/// for a JWT; an API key has no user (the actor is the key: real v2 answers that route 404),
/// so the key is checked on `GET /admin/stores` (v2 answers the v1 `/admin/store` 404).
const CHECK_V1: &str = "/admin/auth";
const CHECK_V2_TOKEN: &str = "/admin/users/me";
const KEY_CHECK_V2: &str = "/admin/stores?limit=1";

/// What Medusa said when asked whether a credential is still good (after a 401 elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An authenticated route answered (2xx, or 404: the route is gone but authentication
    /// passed): the credential works, the 401 was about the route.
    Accepted,
    /// Medusa answered 401 to the check itself: the credential is rejected.
    Rejected,
    /// No answer (transport error, timeout) or an answer that says neither (5xx, 403, ...).
    Unknown,
}

impl Verdict {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Rejected => "rejected",
            Verdict::Unknown => "error",
        }
    }

    fn of(status: StatusCode) -> Verdict {
        if status == StatusCode::UNAUTHORIZED {
            Verdict::Rejected
        } else if status.is_success() || status == StatusCode::NOT_FOUND {
            Verdict::Accepted
        } else {
            Verdict::Unknown
        }
    }
}

/// The route that checks a credential of `flavor` (never `Auto`: a token's flavor is resolved).
fn check_route(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::V1 | Flavor::V1ApiToken | Flavor::Auto => CHECK_V1,
        Flavor::V2 => CHECK_V2_TOKEN,
        Flavor::V2SecretKey => KEY_CHECK_V2,
    }
}

/// Obtains credentials from Medusa for the configured flavor.
pub struct Login {
    upstream: Arc<Upstream>,
    /// For `auto`: the flavor the probe found (0 = not yet known).
    resolved: AtomicU8,
    email: ArcSwap<String>,
    secret: ArcSwap<Secret>,
    /// Where the secret came from ("environment variable X", "file P"), for messages.
    secret_from: ArcSwap<String>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("flavor", &self.flavor())
            .field("email", &self.email.load())
            .field("secret", &"***")
            .finish()
    }
}

fn flavor_code(f: Flavor) -> u8 {
    match f {
        Flavor::Auto => 0,
        Flavor::V1 => 1,
        Flavor::V2 => 2,
        Flavor::V1ApiToken => 3,
        Flavor::V2SecretKey => 4,
    }
}

fn code_flavor(c: u8) -> Flavor {
    match c {
        1 => Flavor::V1,
        2 => Flavor::V2,
        3 => Flavor::V1ApiToken,
        4 => Flavor::V2SecretKey,
        _ => Flavor::Auto,
    }
}

impl Login {
    /// Log in to the Medusa behind `upstream` as `email` (login flavors; `None` for static
    /// ones) with `secret` (the password, or the API key).
    ///
    /// ```no_run
    /// use medusa_auth_proxy::auth::{Flavor, Secret, login::Login};
    /// use medusa_auth_proxy::upstream::Upstream;
    /// # fn demo(settings: &medusa_auth_proxy::config::UpstreamSettings) -> Result<(), Box<dyn std::error::Error>> {
    /// let login = Login::new(
    ///     Upstream::new(settings)?,
    ///     Flavor::V2,
    ///     Some("admin@example.com".into()),
    ///     Secret::new(std::env::var("MEDUSA_PASSWORD")?),
    /// );
    /// # Ok(()) }
    /// ```
    pub fn new(
        upstream: Arc<Upstream>,
        flavor: Flavor,
        email: Option<String>,
        secret: Secret,
    ) -> Self {
        Login {
            upstream,
            resolved: AtomicU8::new(flavor_code(flavor)),
            email: ArcSwap::from_pointee(email.unwrap_or_default()),
            secret: ArcSwap::from_pointee(secret),
            secret_from: ArcSwap::from_pointee("the configured secret".to_owned()),
        }
    }

    /// Name where the secret comes from in refusal messages (see [`SecretSource::describe`]).
    ///
    /// ```no_run
    /// # use medusa_auth_proxy::auth::{SecretSource, login::Login};
    /// # fn demo(login: Login) {
    /// let login = login.with_secret_source(&SecretSource::Env("MEDUSA_PASSWORD".into()));
    /// # }
    /// ```
    pub fn with_secret_source(self, source: &SecretSource) -> Self {
        self.set_secret_source(source);
        self
    }

    /// Like [`Login::with_secret_source`], on a shared `Login` (a reloaded config).
    ///
    /// ```no_run
    /// # use medusa_auth_proxy::auth::{SecretSource, login::Login};
    /// # fn demo(login: &Login) {
    /// login.set_secret_source(&SecretSource::File("/run/secrets/pw".into()));
    /// # }
    /// ```
    pub fn set_secret_source(&self, source: &SecretSource) {
        self.secret_from.store(Arc::new(source.describe()));
    }

    /// The flavor in use: the configured one, or for `auto` what the probe found (`Auto`
    /// until then).
    pub fn flavor(&self) -> Flavor {
        code_flavor(self.resolved.load(Ordering::Relaxed))
    }

    /// Replace the email and password (or key); returns whether either changed.
    pub fn set_credentials(&self, email: Option<String>, secret: Secret) -> bool {
        let email = email.unwrap_or_default();
        let mut changed = false;
        if **self.email.load() != email {
            self.email.store(Arc::new(email));
            changed = true;
        }
        if **self.secret.load() != secret {
            self.secret.store(Arc::new(secret));
            changed = true;
        }
        changed
    }

    /// Obtain a credential. `current` is the token still held, if any (v2 renews it instead
    /// of logging in). The caller applies `login_timeout`.
    pub async fn obtain(&self, current: Option<&Secret>) -> Result<Credential, LoginError> {
        match self.flavor() {
            Flavor::V1 => self.login_v1().await,
            Flavor::V2 => {
                if let Some(cur) = current {
                    match self.refresh_v2(cur).await {
                        Ok(c) => return Ok(c),
                        // Medusa could not be reached: a login would fail the same way (or, as
                        // Medusa goes down, cost a password hash for nothing). Back off and
                        // refresh again while the token is still valid.
                        Err(e @ LoginError::Upstream(_)) => return Err(e),
                        Err(e) => {
                            tracing::info!(error = %e, "token refresh failed; logging in instead")
                        }
                    }
                }
                self.login_v2().await
            }
            Flavor::Auto => self.probe().await,
            f @ (Flavor::V1ApiToken | Flavor::V2SecretKey) => self.key_check(f).await,
        }
    }

    /// Whether Medusa's unauthenticated `GET /health` answers 200 (v1 and v2 both have it).
    pub async fn healthy(&self) -> bool {
        matches!(
            tokio::time::timeout(
                Duration::from_secs(2),
                self.send(Method::GET, "/health", None, Bytes::new())
            )
            .await,
            Ok(Ok((status, _))) if status.is_success()
        )
    }

    /// `auto`: `POST /auth/user/emailpass` exists only in v2 (a v1 server answers 404). We do
    /// not probe v1 routes: v2 answers every unknown /admin route with 401.
    async fn probe(&self) -> Result<Credential, LoginError> {
        let (status, body) = self.post_login(V2_LOGIN).await?;
        if status == StatusCode::NOT_FOUND {
            self.resolved
                .store(flavor_code(Flavor::V1), Ordering::Relaxed);
            tracing::info!(
                flavor = "v1",
                "auto: Medusa v1 detected ({V2_LOGIN} answered 404)"
            );
            return self.login_v1().await.map_err(|e| match e {
                LoginError::LoginNotFound { url, .. } => LoginError::LoginNotFound {
                    url,
                    advice: "neither Medusa v2's login route (POST /auth/user/emailpass) nor \
                             v1's (POST /admin/auth/token) exists there (auth.flavor \"auto\"). \
                             Is upstream.url Medusa's base URL? If Medusa is served under a path \
                             prefix, add it (e.g. \"http://host:9000/prefix\")",
                },
                other => other,
            });
        }
        self.resolved
            .store(flavor_code(Flavor::V2), Ordering::Relaxed);
        tracing::info!(
            flavor = "v2",
            "auto: Medusa v2 detected ({V2_LOGIN} exists)"
        );
        self.classify_login(Flavor::V2, V2_LOGIN, status)?;
        v2_answer(status, &body, Obtained::Login)
    }

    async fn login_v1(&self) -> Result<Credential, LoginError> {
        let (status, body) = self.post_login(V1_LOGIN).await?;
        self.classify_login(Flavor::V1, V1_LOGIN, status)?;
        let value = token_field(&body, "access_token")?;
        Ok(Credential {
            value,
            flavor: Flavor::V1,
            how: Obtained::Login,
            user_id: None,
        })
    }

    async fn login_v2(&self) -> Result<Credential, LoginError> {
        let (status, body) = self.post_login(V2_LOGIN).await?;
        self.classify_login(Flavor::V2, V2_LOGIN, status)?;
        v2_answer(status, &body, Obtained::Login)
    }

    /// A login answer's status, as an error that says what to change.
    fn classify_login(
        &self,
        flavor: Flavor,
        path: &str,
        status: StatusCode,
    ) -> Result<(), LoginError> {
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST {
            return Err(LoginError::InvalidCredentials {
                status: status.as_u16(),
                url: self.url_of(path),
                email: self.email.load().to_string(),
                secret_from: self.secret_from.load().to_string(),
                // Medusa v2 answers v1's login route 401, not 404 (every /admin route needs
                // authentication there), so a v1 refusal may be the wrong version.
                hint: match flavor {
                    Flavor::V1 => {
                        ". If this Medusa is v2 (it answers 401 on v1's login route too), set auth.flavor = \"auto\" or \"v2\""
                    }
                    _ => "",
                },
            });
        }
        if status == StatusCode::NOT_FOUND {
            return Err(LoginError::LoginNotFound {
                url: self.url_of(path),
                advice: match flavor {
                    Flavor::V2 => {
                        "no Medusa v2 login route there (auth.flavor \"v2\"). If this Medusa is v1, set auth.flavor = \"auto\" or \"v1\"; if it is served under a path prefix, add it to upstream.url"
                    }
                    _ => {
                        "no Medusa v1 login route there (auth.flavor \"v1\"). If this Medusa is v2, set auth.flavor = \"auto\" or \"v2\"; if it is served under a path prefix, add it to upstream.url"
                    }
                },
            });
        }
        classify_status(status)
    }

    /// The full URL of `path` on Medusa, for messages.
    fn url_of(&self, path: &str) -> String {
        self.upstream.url_for(path)
    }

    async fn refresh_v2(&self, current: &Secret) -> Result<Credential, LoginError> {
        let (_, header) = credential_header(Flavor::V2, current.expose())
            .ok_or(LoginError::BadResponse("token is not a header value"))?;
        let (status, body) = self
            .send(
                Method::POST,
                V2_REFRESH,
                Some((header::AUTHORIZATION, header)),
                Bytes::new(),
            )
            .await?;
        v2_answer(status, &body, Obtained::Refresh)
    }

    async fn key_check(&self, flavor: Flavor) -> Result<Credential, LoginError> {
        let key = self.secret.load_full();
        let header = credential_header(flavor, key.expose()).ok_or(LoginError::BadResponse(
            "the API key is not a valid header value",
        ))?;
        let (status, body) = self
            .send(Method::GET, check_route(flavor), Some(header), Bytes::new())
            .await?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(LoginError::InvalidKey {
                status: status.as_u16(),
                url: self.url_of(check_route(flavor)),
                secret_from: self.secret_from.load().to_string(),
            });
        }
        if !status.is_success() {
            return Err(LoginError::KeyCheckStatus(status.as_u16()));
        }
        // v2-secret-key: an API key acts as itself, not as a user, so there is no own user
        // for the `own-user` rule to protect (Medusa names the key's creator only in
        // `GET /admin/api-keys/{id}`, and the proxy does not know its key's id).
        let user_id = match flavor {
            Flavor::V1ApiToken => user_id_of(&body),
            Flavor::V1 | Flavor::V2 | Flavor::V2SecretKey | Flavor::Auto => None,
        };
        Ok(Credential {
            value: (*key).clone(),
            flavor,
            how: Obtained::KeyCheck,
            user_id,
        })
    }

    /// Ask Medusa whether the credential `(name, value)` of `flavor` is still accepted, with
    /// one cheap authenticated GET. A transport failure is `Unknown`, never `Rejected`: only
    /// Medusa's own 401 may cost the proxy its token. The caller applies a timeout.
    pub async fn check(&self, flavor: Flavor, name: &HeaderName, value: &HeaderValue) -> Verdict {
        match self
            .send(
                Method::GET,
                check_route(flavor),
                Some((name.clone(), value.clone())),
                Bytes::new(),
            )
            .await
        {
            Ok((status, _)) => Verdict::of(status),
            Err(e) => {
                tracing::info!(error = %e, "token check failed to reach Medusa");
                Verdict::Unknown
            }
        }
    }

    async fn post_login(&self, path: &str) -> Result<(StatusCode, Bytes), LoginError> {
        let password = self.secret.load_full();
        let body = serde_json::to_vec(&serde_json::json!({
            "email": self.email.load().as_str(),
            "password": password.expose(),
        }))
        .map_err(|_| LoginError::BadResponse("cannot encode login request"))?;
        let body = zeroize::Zeroizing::new(body);
        self.send(Method::POST, path, None, Bytes::copy_from_slice(&body))
            .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Option<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), LoginError> {
        let has_body = !body.is_empty();
        let mut req = Request::new(Either::Left(Full::new(body)));
        *req.method_mut() = method;
        *req.uri_mut() = self.upstream.uri_for(path)?;
        if has_body {
            req.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        req.headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some((name, value)) = auth {
            req.headers_mut().insert(name, value);
        }
        let resp = self.upstream.send(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_LOGIN_RESPONSE)
            .collect()
            .await
            .map_err(|_| LoginError::BadResponse("body unreadable or larger than 64 KiB"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// What is left once [`Login::classify_login`] has named the refusals.
fn classify_status(status: StatusCode) -> Result<(), LoginError> {
    if !status.is_success() {
        return Err(LoginError::Status(status.as_u16()));
    }
    Ok(())
}

/// A v2 login or refresh answer. Only a plain `{token}` is a usable admin token: `location`
/// (a third-party provider redirect), `mfa_required` and `verification_required` mean the
/// account cannot be used by a proxy at all.
fn v2_answer(status: StatusCode, body: &[u8], how: Obtained) -> Result<Credential, LoginError> {
    classify_status(status)?;
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| LoginError::BadResponse("not JSON"))?;
    for (field, why) in [
        (
            "mfa_required",
            "this account needs MFA; use a secret API key (flavor \"v2-secret-key\")",
        ),
        (
            "verification_required",
            "this account needs verification; use a secret API key (flavor \"v2-secret-key\")",
        ),
        (
            "location",
            "Medusa answered with a redirect (a third-party auth provider); use a secret API key (flavor \"v2-secret-key\")",
        ),
    ] {
        if value
            .get(field)
            .is_some_and(|v| !v.is_null() && v != &serde_json::Value::Bool(false))
        {
            return Err(LoginError::NeedsInteraction(why));
        }
    }
    let token = token_field(body, "token")?;
    Ok(Credential {
        value: token,
        flavor: Flavor::V2,
        how,
        user_id: None,
    })
}

/// `user.id` of a v1 `GET /admin/auth` answer.
fn user_id_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = value.get("user")?.get("id")?.as_str()?;
    (!id.is_empty()).then(|| id.to_owned())
}

fn token_field(body: &[u8], field: &str) -> Result<Secret, LoginError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| LoginError::BadResponse("not JSON"))?;
    match value.get(field).and_then(|t| t.as_str()) {
        Some(t) if !t.is_empty() && HeaderValue::from_str(t).is_ok() => {
            Ok(Secret::new(t.to_owned()))
        }
        Some(_) => Err(LoginError::BadResponse(
            "token is empty or not a header value",
        )),
        None => Err(LoginError::BadResponse("no token field in the answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_answers_are_classified() {
        let ok = v2_answer(StatusCode::OK, br#"{"token":"a.b.c"}"#, Obtained::Login).unwrap();
        assert_eq!(ok.value.expose(), "a.b.c");
        for body in [
            r#"{"location":"https://accounts.example/auth"}"#,
            r#"{"mfa_required":true,"token":"x"}"#,
            r#"{"verification_required":{"x":1}}"#,
        ] {
            let e = v2_answer(StatusCode::OK, body.as_bytes(), Obtained::Login)
                .err()
                .unwrap();
            assert!(matches!(e, LoginError::NeedsInteraction(_)), "{body}");
            assert!(e.is_bad_credentials(), "must back off long, not loop");
        }
        assert!(matches!(
            v2_answer(StatusCode::UNAUTHORIZED, b"{}", Obtained::Login)
                .err()
                .unwrap(),
            LoginError::Status(401)
        ));
        assert!(matches!(
            v2_answer(StatusCode::OK, b"<html>", Obtained::Login)
                .err()
                .unwrap(),
            LoginError::BadResponse(_)
        ));
    }

    #[test]
    fn check_verdicts() {
        assert_eq!(Verdict::of(StatusCode::OK), Verdict::Accepted);
        // v2 answers `GET /admin/users/me` 404 for an API key: authenticated all the same.
        assert_eq!(Verdict::of(StatusCode::NOT_FOUND), Verdict::Accepted);
        assert_eq!(Verdict::of(StatusCode::UNAUTHORIZED), Verdict::Rejected);
        for s in [502, 503, 500, 403, 429] {
            let s = StatusCode::from_u16(s).unwrap();
            assert_eq!(Verdict::of(s), Verdict::Unknown, "{s}");
        }
        assert_eq!(
            user_id_of(br#"{"user":{"id":"usr_1","email":"a@b"}}"#).as_deref(),
            Some("usr_1")
        );
        assert_eq!(user_id_of(br#"{"user":{"id":""}}"#), None);
        assert_eq!(user_id_of(b"Unauthorized"), None);
    }

    /// A refused certificate is not "Medusa is down": polling `/health` over the same TLS
    /// cannot bring the login forward, so the backoff holds. The source stays reachable.
    #[test]
    fn a_refused_certificate_is_not_unreachable() {
        let cert = LoginError::from(UpstreamError::Certificate("UnknownIssuer".into()));
        assert!(!cert.is_unreachable());
        assert_eq!(cert.kind(), "upstream");
        assert!(cert.to_string().contains("certificate"), "{cert}");
        let source = std::error::Error::source(&cert).expect("the upstream error is the source");
        assert!(matches!(
            source.downcast_ref::<UpstreamError>(),
            Some(UpstreamError::Certificate(_))
        ));
        let not_tls = LoginError::from(UpstreamError::NotTls {
            authority: "127.0.0.1:9".into(),
        });
        assert!(!not_tls.is_unreachable());
        // Nothing listening, or a connection that broke: Medusa is down; /health tells when
        // it is back.
        let refused = LoginError::from(UpstreamError::Connect {
            authority: "127.0.0.1:9".into(),
            detail: "connection refused".into(),
        });
        assert!(refused.is_unreachable());
        assert_eq!(refused.kind(), "unreachable");
        assert!(LoginError::from(UpstreamError::Io("reset".into())).is_unreachable());
        // An upstream timeout is a login timeout (the backoff holds).
        let slow = LoginError::from(UpstreamError::Timeout(Duration::from_secs(1)));
        assert!(matches!(slow, LoginError::Timeout(_)) && !slow.is_unreachable());
    }

    #[test]
    fn headers_per_flavor() {
        let (n, v) = credential_header(Flavor::V2SecretKey, "sk_123").unwrap();
        assert_eq!(n, header::AUTHORIZATION);
        assert_eq!(v, "Basic c2tfMTIzOg==");
        assert!(v.is_sensitive());
        let (n, v) = credential_header(Flavor::V1ApiToken, "tok").unwrap();
        assert_eq!(n.as_str(), "x-medusa-access-token");
        assert_eq!(v, "tok");
        let (_, v) = credential_header(Flavor::V1, "a.b.c").unwrap();
        assert_eq!(v, "Bearer a.b.c");
        assert!(credential_header(Flavor::V1, "bad\nvalue").is_none());
    }
}
