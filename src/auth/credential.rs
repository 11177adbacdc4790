//! A credential obtained from Medusa, the header that carries it, and reading Medusa's
//! answers (login, refresh, key check, 401 check) into credentials, verdicts and errors.

use http::{HeaderName, HeaderValue, StatusCode, header};

use super::error::LoginError;
use crate::config::Flavor;
use crate::secret::Secret;

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
    ///
    /// ```
    /// # use medusa_auth_proxy::auth::login::Obtained;
    /// assert_eq!(Obtained::Refresh.as_str(), "refresh");
    /// ```
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
    /// Metric label: `accepted`, `rejected`, `error`.
    ///
    /// ```
    /// # use medusa_auth_proxy::auth::login::Verdict;
    /// assert_eq!(Verdict::Unknown.as_str(), "error");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Rejected => "rejected",
            Verdict::Unknown => "error",
        }
    }

    pub(super) fn of(status: StatusCode) -> Verdict {
        if status == StatusCode::UNAUTHORIZED {
            Verdict::Rejected
        } else if status.is_success() || status == StatusCode::NOT_FOUND {
            Verdict::Accepted
        } else {
            Verdict::Unknown
        }
    }
}

/// What is left once [`Login::classify_login`] has named the refusals.
pub(super) fn classify_status(status: StatusCode) -> Result<(), LoginError> {
    if !status.is_success() {
        return Err(LoginError::Status(status.as_u16()));
    }
    Ok(())
}

/// A v2 login or refresh answer. Only a plain `{token}` is a usable admin token: `location`
/// (a third-party provider redirect), `mfa_required` and `verification_required` mean the
/// account cannot be used by a proxy at all.
pub(super) fn v2_answer(
    status: StatusCode,
    body: &[u8],
    how: Obtained,
) -> Result<Credential, LoginError> {
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
pub(super) fn user_id_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = value.get("user")?.get("id")?.as_str()?;
    (!id.is_empty()).then(|| id.to_owned())
}

pub(super) fn token_field(body: &[u8], field: &str) -> Result<Secret, LoginError> {
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
