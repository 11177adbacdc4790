//! TLS to Medusa: the rustls connector (system roots plus `upstream.ca_file`, no switch to
//! skip verification) and how a failed handshake is told apart from an unreachable Medusa.

use std::path::PathBuf;
use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::config::UpstreamSettings;

/// Why the upstream client could not be built. Each variant names the config key to fix;
/// the cause is its [`source`](std::error::Error::source) (print it with
/// [`error_chain`](super::error_chain)).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// `upstream.ca_file` cannot be read or is not PEM.
    #[error("config key `upstream.ca_file`: cannot read {path}", path = .path.display())]
    CaFile {
        /// `upstream.ca_file` as configured.
        path: PathBuf,
        /// Why it could not be read or parsed (I/O error, malformed PEM).
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// `upstream.ca_file` holds no certificate at all.
    #[error("config key `upstream.ca_file`: {path} holds no PEM certificate", path = .path.display())]
    CaFileEmpty {
        /// `upstream.ca_file` as configured.
        path: PathBuf,
    },
    /// A certificate in `upstream.ca_file` is not a usable trust anchor.
    #[error("config key `upstream.ca_file`: cannot use a certificate of {path}", path = .path.display())]
    CaCertificate {
        /// `upstream.ca_file` as configured.
        path: PathBuf,
        /// Why rustls refused it as a trust anchor.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the configuration (no usable protocol version with this provider).
    #[error("TLS setup failed")]
    Rustls(#[source] rustls::Error),
    /// `upstream.url`'s scheme and authority do not make an origin URI.
    #[error("config key `upstream.url`: not a valid origin")]
    Url(#[source] http::Error),
}

/// `SO_RCVBUF` of each connection to Medusa (see [`connector`]).
const UPSTREAM_RECV_BUFFER: usize = 128 * 1024;

/// The connector to Medusa: TCP with `upstream.connect_timeout` and no Nagle delay, then TLS
/// for `https://` (plain TCP for `http://`), HTTP/1.1 only.
pub(crate) fn connector(
    settings: &UpstreamSettings,
) -> Result<HttpsConnector<HttpConnector>, TlsSetupError> {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(settings.connect_timeout));
    tcp.set_nodelay(true);
    // What the kernel may hold of Medusa's answers once the proxy stops reading (a client that
    // stops reading stops the proxy): without a cap the receive buffer autotunes up to
    // `net.ipv4.tcp_rmem`'s maximum, kernel memory charged to the proxy's memory cgroup (200
    // stalled downloads: ~240 MiB, measured). Set before connecting, so the window Medusa sees
    // matches. 128 KiB (doubled by Linux) still moves large answers at LAN speed.
    tcp.set_recv_buffer_size(Some(UPSTREAM_RECV_BUFFER));
    tcp.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(settings)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp))
}

/// Trust store for an https upstream: the system's roots plus `upstream.ca_file`. There is
/// deliberately no switch to skip verification: use `ca_file` for a private CA.
fn tls_config(settings: &UpstreamSettings) -> Result<rustls::ClientConfig, TlsSetupError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if settings.scheme == http::uri::Scheme::HTTPS {
        // Unreadable system certificates are not fatal: a private CA may be all that is needed.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    }
    if let Some(path) = &settings.ca_file {
        let ca_file = |source| TlsSetupError::CaFile {
            path: path.clone(),
            source,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(ca_file)?
            .collect::<Result<_, _>>()
            .map_err(ca_file)?;
        if certs.is_empty() {
            return Err(TlsSetupError::CaFileEmpty { path: path.clone() });
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|source| TlsSetupError::CaCertificate {
                    path: path.clone(),
                    source,
                })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Rustls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// A TLS handshake that failed for a reason of its own, not because Medusa is unreachable.
#[derive(Debug)]
pub(crate) enum TlsFailure {
    /// Medusa's certificate was not accepted (`rustls::Error::InvalidCertificate`).
    Certificate(rustls::Error),
    /// The peer's first bytes were not a TLS record (usually plain HTTP on that port).
    NotTls,
}

/// The TLS failure behind a connector error, if there is one. `io::Error` hides its inner
/// error from `source()`, so each one is looked into explicitly.
pub(crate) fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        match err.downcast_ref::<rustls::Error>() {
            Some(tls @ rustls::Error::InvalidCertificate(_)) => {
                return Some(TlsFailure::Certificate(tls.clone()));
            }
            // "HTTP/1.1 400 ..." read as a TLS record: its first byte is no content type.
            Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
                return Some(TlsFailure::NotTls);
            }
            _ => {}
        }
        // An io::Error's `source()` skips the error it wraps (and the connector nests them:
        // io::Error(io::Error(rustls::Error))): step into the wrapped one instead.
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_refusal_is_found_inside_nested_io_errors() {
        let cert = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let nested = std::io::Error::other(std::io::Error::other(cert));
        assert!(matches!(
            tls_failure(&nested),
            Some(TlsFailure::Certificate(rustls::Error::InvalidCertificate(
                _
            )))
        ));
        let plain = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let nested = std::io::Error::other(plain);
        assert!(matches!(tls_failure(&nested), Some(TlsFailure::NotTls)));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(tls_failure(&refused).is_none());
    }

    #[test]
    fn an_unreadable_ca_file_names_the_key_and_the_path() {
        let s = crate::config::Settings::from_toml(
            "[upstream]\nurl=\"https://127.0.0.1:9\"\nca_file=\"/nonexistent/ca.pem\"\n\
             [auth]\nemail=\"a\"\npassword_env=\"P\"",
        )
        .unwrap();
        let e = connector(&s.upstream).err().unwrap();
        assert!(matches!(e, TlsSetupError::CaFile { .. }), "{e:?}");
        let line = super::super::error_chain(&e);
        assert!(
            line.starts_with("config key `upstream.ca_file`: cannot read /nonexistent/ca.pem: "),
            "{line}"
        );
    }
}
