//! Why a request to Medusa got no response head.

use std::time::Duration;

use http::uri::Authority;

/// A boxed error from the connector (TCP connect, DNS), as hyper-util hands it over.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request to Medusa got no response head. Each variant keeps its cause as
/// [`source`](std::error::Error::source); [`error_chain`](super::error_chain) prints the
/// whole line. Ask the predicates ([`is_connection_broken`](UpstreamError::is_connection_broken),
/// [`is_unreachable`](UpstreamError::is_unreachable), ...) rather than matching variants.
///
/// ```
/// use medusa_auth_proxy::upstream::UpstreamError;
///
/// let e = UpstreamError::Timeout(std::time::Duration::from_secs(30));
/// assert!(e.is_timeout() && !e.is_unreachable() && !e.is_connection_broken());
/// ```
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out: Medusa is down or unreachable.
    #[error("cannot connect to Medusa at {authority}")]
    Connect {
        /// Medusa's host and port, as configured in `upstream.url`.
        authority: Authority,
        /// The connector's error: refused, DNS failure, `upstream.connect_timeout` elapsed.
        #[source]
        source: BoxError,
    },
    /// The connection broke while the request was sent or before its response head arrived
    /// (typically a keep-alive connection Medusa closed just as it was used). Medusa may or
    /// may not have seen the request.
    #[error("connection to Medusa failed")]
    ConnectionBroken(#[source] hyper::Error),
    /// No response head within `upstream.request_timeout`.
    #[error("Medusa did not answer within {0:?}")]
    Timeout(Duration),
    /// TLS to Medusa failed because its certificate was not accepted. Medusa answers; it is
    /// the trust store (`upstream.ca_file`) or the certificate that must change.
    #[error("Medusa's TLS certificate was rejected")]
    Certificate {
        /// Medusa's host and port, as configured in `upstream.url`.
        authority: Authority,
        /// rustls's verdict on the certificate (unknown issuer, expired, wrong name, ...).
        #[source]
        source: rustls::Error,
    },
    /// `https://` to a port that answered the TLS handshake with something else (usually
    /// plain HTTP). rustls calls that a corrupt message, which tells an operator nothing, so
    /// it is not kept as the source: this message is the whole story.
    #[error(
        "{authority} does not speak TLS (upstream.url is https://, but this port answered \
         the TLS handshake with something else, probably plain HTTP): use http:// or \
         Medusa's TLS port"
    )]
    NotTls {
        /// Medusa's host and port, as configured in `upstream.url`.
        authority: Authority,
    },
    /// The request could not be built (a path that is not a valid URI).
    #[error("invalid request URI")]
    InvalidUri(#[source] http::uri::InvalidUri),
}

impl UpstreamError {
    /// The connection broke before a response head arrived: the one class where sending the
    /// request again may succeed, and is safe when the method is idempotent and the body can
    /// be replayed (see [`Resend`](super::Resend)).
    pub fn is_connection_broken(&self) -> bool {
        matches!(self, UpstreamError::ConnectionBroken(_))
    }

    /// Medusa cannot be reached or talked to (connect failed, connection broke, not TLS): a
    /// bad gateway, and a reason to watch Medusa's `/health` before trying again. Never a
    /// refused certificate (Medusa is there; the trust is missing) nor a timeout.
    pub fn is_unreachable(&self) -> bool {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::ConnectionBroken(_)
            | UpstreamError::NotTls { .. } => true,
            UpstreamError::Timeout(_)
            | UpstreamError::Certificate { .. }
            | UpstreamError::InvalidUri(_) => false,
        }
    }

    /// Medusa did not answer within the request timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::Timeout(_))
    }

    /// The request timeout that ran out, for [`UpstreamError::Timeout`].
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            UpstreamError::Timeout(d) => Some(*d),
            _ => None,
        }
    }

    /// Medusa's TLS certificate was refused.
    pub fn is_certificate(&self) -> bool {
        matches!(self, UpstreamError::Certificate { .. })
    }

    /// The request itself was at fault (its target is not a valid URI), not Medusa.
    pub fn is_invalid_request(&self) -> bool {
        matches!(self, UpstreamError::InvalidUri(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_is_not_unreachable() {
        let e = UpstreamError::Certificate {
            authority: Authority::from_static("medusa:443"),
            source: rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        };
        assert!(e.is_certificate());
        assert!(!e.is_unreachable());
        assert!(!e.is_connection_broken());
        let line = super::super::error_chain(&e);
        assert!(
            line.starts_with("Medusa's TLS certificate was rejected: "),
            "{line}"
        );
    }

    #[test]
    fn a_failed_connect_keeps_its_cause() {
        let e = UpstreamError::Connect {
            authority: Authority::from_static("127.0.0.1:9"),
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        assert!(e.is_unreachable() && !e.is_connection_broken());
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            super::super::error_chain(&e),
            "cannot connect to Medusa at 127.0.0.1:9: connection refused"
        );
    }
}
