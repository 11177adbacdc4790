//! Obtaining a token from Medusa, per flavor, and classifying why it failed.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};

use crate::config::Flavor;
use crate::secret::Secret;
use crate::upstream::{Upstream, UpstreamError};

/// A login answer larger than this is not a token answer.
const MAX_LOGIN_RESPONSE: usize = 64 * 1024;

/// Why a login failed. The classes decide the backoff: rejected credentials wait long
/// (retrying cannot help and may lock the account), transient failures start short.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoginError {
    /// Medusa rejected the email/password (401, or 400 for a malformed login).
    #[error("invalid credentials (Medusa answered {0})")]
    InvalidCredentials(u16),
    /// Medusa answered the login with another status (5xx, 404, ...).
    #[error("Medusa answered the login with status {0}")]
    Status(u16),
    #[error("{0}")]
    Upstream(String),
    #[error("login timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// A 2xx answer that holds no usable token.
    #[error("unusable login response: {0}")]
    BadResponse(&'static str),
    /// Medusa answered 401 to a token it had just issued, before any request succeeded with it.
    #[error("Medusa rejected the token it had just issued")]
    TokenRejected,
}

impl LoginError {
    pub fn is_bad_credentials(&self) -> bool {
        matches!(self, LoginError::InvalidCredentials(_))
    }

    /// Short label for metrics and readiness.
    pub fn kind(&self) -> &'static str {
        match self {
            LoginError::InvalidCredentials(_) => "invalid_credentials",
            LoginError::Status(_) => "bad_status",
            LoginError::Upstream(_) => "unreachable",
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
            other => LoginError::Upstream(other.to_string()),
        }
    }
}

/// Logs in with the configured email and password.
pub struct Login {
    upstream: Arc<Upstream>,
    flavor: Flavor,
    email: String,
    password: ArcSwap<Secret>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("flavor", &self.flavor)
            .field("email", &self.email)
            .field("password", &"***")
            .finish()
    }
}

impl Login {
    pub fn new(upstream: Arc<Upstream>, flavor: Flavor, email: String, password: Secret) -> Self {
        Login {
            upstream,
            flavor,
            email,
            password: ArcSwap::from_pointee(password),
        }
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Replace the password; returns whether it changed.
    pub fn set_password(&self, password: Secret) -> bool {
        let changed = **self.password.load() != password;
        if changed {
            self.password.store(Arc::new(password));
        }
        changed
    }

    /// One login attempt. The caller applies `login_timeout`.
    pub async fn login(&self) -> Result<Secret, LoginError> {
        let (path, field) = match self.flavor {
            Flavor::V1 => ("/admin/auth/token", "access_token"),
        };
        let password = self.password.load_full();
        let body = serde_json::to_vec(&serde_json::json!({
            "email": self.email,
            "password": password.expose(),
        }))
        .map_err(|_| LoginError::BadResponse("cannot encode login request"))?;
        let body = zeroize::Zeroizing::new(body);
        let mut req = Request::new(Either::Left(Full::new(Bytes::copy_from_slice(&body))));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.upstream.uri_for(path)?;
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        req.headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let resp = self.upstream.send(req).await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST {
            return Err(LoginError::InvalidCredentials(status.as_u16()));
        }
        if !status.is_success() {
            return Err(LoginError::Status(status.as_u16()));
        }
        let body = Limited::new(resp.into_body(), MAX_LOGIN_RESPONSE)
            .collect()
            .await
            .map_err(|_| LoginError::BadResponse("body unreadable or larger than 64 KiB"))?
            .to_bytes();
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| LoginError::BadResponse("not JSON"))?;
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
}
