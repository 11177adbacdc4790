//! Reading a JWT's claims, without verifying the signature: the proxy has no secret. The claims
//! only decide when to refresh; Medusa still verifies every token it receives.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
struct Claims {
    exp: Option<f64>,
    iat: Option<f64>,
    /// Medusa v1.
    user_id: Option<String>,
    /// Medusa v2: `actor_id` of an `actor_type: "user"` token.
    actor_id: Option<String>,
}

/// What the proxy needs to know about a freshly received token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    /// How long the token is valid from the moment it was received.
    pub lifetime: Duration,
    /// Whether `lifetime` came from the token's claims (false: no `exp`, default used).
    pub from_claims: bool,
    /// The Medusa user the token acts as: v1's `user_id`, v2's `actor_id`.
    pub user_id: Option<String>,
}

/// Why a token's claims give no lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts with JSON claims.
    #[error("the token is not a JWT")]
    NotJwt,
    /// `exp` is not after `iat`.
    #[error("the token expired before it was issued (exp <= iat)")]
    NoLifetime,
}

/// Clocks further apart than this are treated as disagreeing (see [`inspect`]).
const CLOCK_SKEW_TOLERANCE: f64 = 60.0;

/// Read lifetime and user id from a JWT received just now.
///
/// The lifetime is `exp - now` when our clock and Medusa's agree. When they disagree (a token
/// already expired by our clock, or issued far in the future or past), the token's own
/// lifetime `exp - iat`, counted from now, is the only figure that means anything; using
/// `exp - now` would cause a login per request or a token used past its real expiry.
///
/// ```
/// use std::time::Duration;
/// use medusa_auth_proxy::auth::jwt::{JwtError, inspect};
/// assert_eq!(inspect("not-a-jwt", Duration::from_secs(3600)), Err(JwtError::NotJwt));
/// ```
pub fn inspect(token: &str, default_lifetime: Duration) -> Result<TokenInfo, JwtError> {
    inspect_at(token, default_lifetime, unix_now())
}

/// [`inspect`] with `now` (Unix seconds) given, for tests of clock skew.
///
/// ```
/// use std::time::Duration;
/// use medusa_auth_proxy::auth::jwt::inspect_at;
/// assert!(inspect_at("x.y.z", Duration::from_secs(60), 1.7e9).is_err());
/// ```
pub fn inspect_at(
    token: &str,
    default_lifetime: Duration,
    now: f64,
) -> Result<TokenInfo, JwtError> {
    let claims: Claims =
        jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| JwtError::NotJwt)?;
    let user_id = claims.user_id.or(claims.actor_id);
    let Some(exp) = claims.exp.filter(|e| e.is_finite()) else {
        return Ok(TokenInfo {
            lifetime: default_lifetime,
            from_claims: false,
            user_id,
        });
    };
    let own = claims.iat.filter(|i| i.is_finite()).map(|iat| exp - iat);
    if own.is_some_and(|l| l <= 0.0) {
        return Err(JwtError::NoLifetime);
    }
    let by_clock = exp - now;
    let clocks_agree = match claims.iat.filter(|i| i.is_finite()) {
        Some(iat) => (iat - now).abs() <= CLOCK_SKEW_TOLERANCE,
        None => true,
    };
    let secs = match own {
        Some(own) if !clocks_agree || by_clock <= 0.0 => own,
        // Clocks within the tolerance can still be apart by more than a short token lives:
        // never use a token longer than its own lifetime.
        Some(own) => by_clock.min(own),
        None if by_clock > 0.0 => by_clock,
        None => return Err(JwtError::NoLifetime),
    };
    Ok(TokenInfo {
        lifetime: Duration::from_secs_f64(secs.min(1e9)),
        from_claims: true,
        user_id,
    })
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        use jsonwebtoken::{EncodingKey, Header, encode};
        encode(&Header::default(), &claims, &EncodingKey::from_secret(b"s")).unwrap()
    }

    const NOW: f64 = 1_800_000_000.0;
    const DEF: Duration = Duration::from_secs(3600);

    #[test]
    fn lifetime_from_exp_when_clocks_agree() {
        let t = jwt(
            serde_json::json!({"user_id":"usr_1","iat":NOW as i64 - 10,"exp":NOW as i64 + 100}),
        );
        let i = inspect_at(&t, DEF, NOW).unwrap();
        assert_eq!(i.lifetime, Duration::from_secs(100));
        assert_eq!(i.user_id.as_deref(), Some("usr_1"));
        assert!(i.from_claims);
    }

    #[test]
    fn own_lifetime_when_clocks_disagree() {
        // Medusa's clock is two hours behind: exp is in the past by ours.
        let t = jwt(serde_json::json!({"iat":NOW as i64 - 7200,"exp":NOW as i64 - 7200 + 300}));
        assert_eq!(
            inspect_at(&t, DEF, NOW).unwrap().lifetime,
            Duration::from_secs(300)
        );
        // Medusa's clock is hours ahead: exp - now would be far too long.
        let t = jwt(serde_json::json!({"iat":NOW as i64 + 7200,"exp":NOW as i64 + 7200 + 300}));
        assert_eq!(
            inspect_at(&t, DEF, NOW).unwrap().lifetime,
            Duration::from_secs(300)
        );
    }

    #[test]
    fn skew_within_tolerance_never_stretches_a_short_token() {
        // Medusa 30 s ahead, 4 s tokens: exp - now would be 34 s.
        let t = jwt(serde_json::json!({"iat":NOW as i64 + 30,"exp":NOW as i64 + 34}));
        assert_eq!(
            inspect_at(&t, DEF, NOW).unwrap().lifetime,
            Duration::from_secs(4)
        );
    }

    #[test]
    fn v2_actor_id_and_missing_exp() {
        let t = jwt(serde_json::json!({"actor_id":"user_9","actor_type":"user"}));
        let i = inspect_at(&t, DEF, NOW).unwrap();
        assert_eq!(i.lifetime, DEF);
        assert!(!i.from_claims);
        assert_eq!(i.user_id.as_deref(), Some("user_9"));
    }

    #[test]
    fn garbage_and_dead_tokens_are_errors() {
        assert_eq!(inspect_at("not-a-jwt", DEF, NOW), Err(JwtError::NotJwt));
        assert_eq!(inspect_at("a.b.c", DEF, NOW), Err(JwtError::NotJwt));
        let t = jwt(serde_json::json!({"iat":NOW as i64,"exp":NOW as i64}));
        assert_eq!(inspect_at(&t, DEF, NOW), Err(JwtError::NoLifetime));
        let t = jwt(serde_json::json!({"exp":NOW as i64 - 5}));
        assert_eq!(inspect_at(&t, DEF, NOW), Err(JwtError::NoLifetime));
    }
}
