//! Obtaining a credential from Medusa, per flavor, checking one after a 401, and what the
//! upstream client's failures mean for a login. Reading Medusa's answers is in
//! `credential.rs`; the classes of failure in `error.rs`.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use std::sync::atomic::{AtomicU8, Ordering};

use http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use tower::ServiceExt;

pub use super::credential::{Credential, Obtained, Verdict, credential_header};
use super::credential::{classify_status, token_field, user_id_of, v2_answer};
pub use super::error::LoginError;
use crate::config::Flavor;
use crate::secret::{Secret, SecretSource};
use crate::upstream::{Upstream, UpstreamError};

/// A login answer larger than this is not a token answer.
const MAX_LOGIN_RESPONSE: usize = 64 * 1024;

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
pub(super) fn unreachable(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Connect { .. } | UpstreamError::ConnectionBroken(_) => true,
        UpstreamError::Certificate { .. }
        | UpstreamError::NotTls { .. }
        | UpstreamError::InvalidUri(_)
        | UpstreamError::Timeout(_) => false,
    }
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
    upstream: Upstream<Full<Bytes>>,
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
        upstream: Upstream<Full<Bytes>>,
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
    ///
    /// ```no_run
    /// # fn demo(login: &medusa_auth_proxy::auth::login::Login) {
    /// if login.flavor().is_static() { /* an API key: checked, never renewed */ }
    /// # }
    /// ```
    pub fn flavor(&self) -> Flavor {
        code_flavor(self.resolved.load(Ordering::Relaxed))
    }

    /// Replace the email and password (or key); returns whether either changed (then the
    /// cached token belongs to the old credential: [`TokenManager::invalidate`] it).
    ///
    /// [`TokenManager::invalidate`]: super::TokenManager::invalidate
    ///
    /// ```no_run
    /// # use medusa_auth_proxy::auth::{SecretSource, TokenManager};
    /// # async fn demo(tokens: TokenManager) -> Result<(), Box<dyn std::error::Error>> {
    /// let secret = SecretSource::Env("MEDUSA_PASSWORD".into()).load()?;
    /// if tokens.login().set_credentials(Some("admin@example.com".into()), secret) {
    ///     tokens.invalidate().await;
    /// }
    /// # Ok(()) }
    /// ```
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
    /// of logging in). The caller applies `login_timeout`. A
    /// [`TokenManager`](super::TokenManager) calls this from its driver; call it directly for
    /// a one-off login (the `login` command does).
    ///
    /// ```no_run
    /// # async fn demo(login: medusa_auth_proxy::auth::login::Login) -> Result<(), Box<dyn std::error::Error>> {
    /// let cred = tokio::time::timeout(std::time::Duration::from_secs(10), login.obtain(None)).await??;
    /// println!("logged in as flavor {}", cred.flavor.as_str());
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(login: medusa_auth_proxy::auth::login::Login) {
    /// if !login.healthy().await { eprintln!("Medusa is down"); }
    /// # }
    /// ```
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
    ///
    /// ```no_run
    /// # use medusa_auth_proxy::auth::{Flavor, login::{Login, Verdict, credential_header}};
    /// # async fn demo(login: Login) {
    /// let (name, value) = credential_header(Flavor::V2, "a.b.c").unwrap();
    /// if login.check(Flavor::V2, &name, &value).await == Verdict::Rejected { /* log in again */ }
    /// # }
    /// ```
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
        let mut req = Request::new(Full::new(body));
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
        let resp = self.upstream.clone().oneshot(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_LOGIN_RESPONSE)
            .collect()
            .await
            .map_err(|_| LoginError::BadResponse("body unreadable or larger than 64 KiB"))?
            .to_bytes();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused certificate is not "Medusa is down": polling `/health` over the same TLS
    /// cannot bring the login forward, so the backoff holds. The source stays reachable.
    #[test]
    fn a_refused_certificate_is_not_unreachable() {
        let authority = http::uri::Authority::from_static("127.0.0.1:9");
        let cert = LoginError::from(UpstreamError::Certificate {
            authority: authority.clone(),
            source: rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        });
        assert!(!cert.is_unreachable());
        assert_eq!(cert.kind(), "upstream");
        assert!(cert.to_string().contains("certificate"), "{cert}");
        let source = std::error::Error::source(&cert).expect("the upstream error is the source");
        assert!(matches!(
            source.downcast_ref::<UpstreamError>(),
            Some(UpstreamError::Certificate { .. })
        ));
        let not_tls = LoginError::from(UpstreamError::NotTls {
            authority: authority.clone(),
        });
        assert!(!not_tls.is_unreachable());
        // Nothing listening, or a connection that broke: Medusa is down; /health tells when
        // it is back.
        let refused = LoginError::from(UpstreamError::Connect {
            authority,
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        });
        assert!(refused.is_unreachable());
        assert_eq!(refused.kind(), "unreachable");
        // An upstream timeout is a login timeout (the backoff holds).
        let slow = LoginError::from(UpstreamError::Timeout(Duration::from_secs(1)));
        assert!(matches!(slow, LoginError::Timeout(_)) && !slow.is_unreachable());
    }
}
