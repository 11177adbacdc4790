//! TLS on the proxy's listeners (TLS *to* Medusa is [`crate::upstream`]'s): a certificate and
//! key from two PEM files ([`TlsFiles`]), served with rustls, ALPN `h2` and `http/1.1`.
//!
//! The pair is held behind an [`ArcSwap`] that rustls asks at every handshake
//! ([`ResolvesServerCert`]), so a rotated pair (cert-manager rewriting the Secret) serves the
//! next connection while open ones keep the session they have; a new pair that does not load
//! is refused with a warning naming the file, and the old one keeps serving. The handshake
//! runs after admission (a refused peer costs none) and is bounded by the caller's deadline,
//! so a silent client cannot hold a connection slot.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::TlsFiles;
use crate::watch::FileWatch;

/// Why a certificate and key pair cannot be used. Names the config key and the file; never
/// quotes the key file's contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("config key `{key}`: cannot read {path}", path = .path.display())]
    Read {
        /// The key that names the file.
        key: Cow<'static, str>,
        /// The file.
        path: PathBuf,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file is not PEM, or holds no certificate.
    #[error("config key `{key}`: {path} holds no PEM certificate", path = .path.display())]
    NoCertificate {
        /// The key that names the file.
        key: Cow<'static, str>,
        /// The file.
        path: PathBuf,
        /// The PEM parser's complaint, if it had one (certificates are public).
        #[source]
        source: Option<pem::Error>,
    },
    /// The key file is not PEM, or holds no private key. The parser's message is not kept: it
    /// may quote the file.
    #[error(
        "config key `{key}`: {path} holds no PEM private key (\"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")",
        path = .path.display()
    )]
    NoKey {
        /// The key that names the file.
        key: Cow<'static, str>,
        /// The file.
        path: PathBuf,
    },
    /// The private key is of a kind rustls cannot sign with.
    #[error("config key `{key}`: the private key in {path} is not usable", path = .path.display())]
    UnusableKey {
        /// The key that names the file.
        key: Cow<'static, str>,
        /// The file.
        path: PathBuf,
        /// rustls' reason (it names the key type, not its bytes).
        #[source]
        source: rustls::Error,
    },
    /// The leaf certificate cannot be parsed, or the key is not the certificate's.
    #[error(
        "config key `{key}`: the private key in {path} does not belong to the certificate in {cert} (`{cert_setting}`)",
        path = .path.display(),
        cert = .cert.display()
    )]
    Mismatch {
        /// The key that names the key file.
        key: Cow<'static, str>,
        /// The key file.
        path: PathBuf,
        /// The key that names the certificate file.
        cert_setting: Cow<'static, str>,
        /// The certificate file.
        cert: PathBuf,
        /// rustls' finding: a different public key, or a certificate it cannot parse.
        #[source]
        source: Box<rustls::Error>,
    },
    /// rustls refused the server configuration (no protocol version with this provider).
    #[error("TLS setup failed")]
    Setup(#[source] rustls::Error),
}

/// Read and check a certificate and key pair: the certificate file holds at least one PEM
/// certificate (leaf first), the key file a private key rustls can sign with, and the key is
/// the leaf's. What `check` and every (re)load run.
pub fn load_pair(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    load_pair_with(files, &provider())
}

fn load_pair_with(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let read = |key, path: &Path| {
        std::fs::read(path)
            .map(zeroize::Zeroizing::new)
            .map_err(|source| TlsError::Read {
                key,
                path: path.to_path_buf(),
                source,
            })
    };
    let no_cert = |source| TlsError::NoCertificate {
        key: files.cert_setting.clone(),
        path: files.cert_file.clone(),
        source,
    };
    let pem = read(files.cert_setting.clone(), &files.cert_file)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| no_cert(Some(e)))?;
    if chain.is_empty() {
        return Err(no_cert(None));
    }
    let pem = read(files.key_setting.clone(), &files.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey {
        key: files.key_setting.clone(),
        path: files.key_file.clone(),
    })?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnusableKey {
            key: files.key_setting.clone(),
            path: files.key_file.clone(),
            source,
        })?;
    let pair = CertifiedKey::new(chain, signer);
    match pair.keys_match() {
        // A key type whose public half rustls cannot derive: nothing to compare, accept it.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(pair)
        }
        Err(source) => Err(TlsError::Mismatch {
            key: files.key_setting.clone(),
            path: files.key_file.clone(),
            cert_setting: files.cert_setting.clone(),
            cert: files.cert_file.clone(),
            source: Box::new(source),
        }),
    }
}

/// `e` and its causes, `: `-separated (none of them quotes the key file).
fn chain(e: &TlsError) -> String {
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s = format!("{s}: {c}");
        cause = c.source();
    }
    s
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The pair rustls serves, swapped whole on rotation.
struct CurrentPair(ArcSwap<CertifiedKey>);

impl std::fmt::Debug for CurrentPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentPair")
    }
}

impl ResolvesServerCert for CurrentPair {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// What [`TlsAcceptor::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The files hold the certificate already served (a spurious event, a `touch`).
    Unchanged,
    /// New connections get the new pair.
    Replaced,
}

/// Why a connection did not become a TLS session.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// No complete handshake by the deadline (a silent or slow client).
    #[error("no TLS handshake within proxy.header_read_timeout")]
    Timeout,
    /// The client spoke plain HTTP; it was answered 400 naming https.
    #[error("plain HTTP on the TLS listener")]
    PlainHttp,
    /// The client closed (or reset) the connection before sending anything: a TCP health
    /// check or a port scan, not a failed handshake.
    #[error("closed before the handshake")]
    Closed,
    /// The handshake failed (not TLS, no common version or cipher, an alert from the client).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
}

/// A listener's TLS: the current certificate pair (reloadable) and the rustls acceptor serving
/// it. Cheap to clone; every clone serves and reloads the same pair.
///
/// ```no_run
/// # async fn serve(listener: tokio::net::TcpListener) -> Result<(), Box<dyn std::error::Error>> {
/// use medusa_auth_proxy::config::TlsFiles;
/// use medusa_auth_proxy::tls::TlsAcceptor;
///
/// let tls = TlsAcceptor::new(TlsFiles {
///     cert_file: "/run/tls/tls.crt".into(),
///     key_file: "/run/tls/tls.key".into(),
///     cert_setting: "proxy.tls_cert_file".into(),
///     key_setting: "proxy.tls_key_file".into(),
/// })?;
/// let _watch = tls.watch(); // reload when either file changes
/// let (tcp, _peer) = listener.accept().await?;
/// let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
/// let session = tls.accept(tcp, deadline).await?; // decrypted stream, ALPN h2 or http/1.1
/// # drop(session); Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsAcceptor {
    files: Arc<TlsFiles>,
    current: Arc<CurrentPair>,
    provider: Arc<CryptoProvider>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("cert_file", &self.files.cert_file)
            .field("key_file", &self.files.key_file)
            .finish_non_exhaustive()
    }
}

/// The first byte of a TLS record carrying a handshake message (RFC 8446 §5.1): what a
/// ClientHello starts with.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Sent to a client that spoke plain HTTP to the TLS listener, as Go's net/http does, so the
/// mistake is named instead of ending in an undecipherable TLS alert.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain; charset=utf-8\r\n\
connection: close\r\n\
content-length: 48\r\n\
\r\n\
this listener speaks TLS: use https:// instead\r\n";

impl TlsAcceptor {
    /// Load the pair (errors as [`load_pair`]) and set up rustls to serve it with ALPN `h2`
    /// and `http/1.1`.
    pub fn new(files: TlsFiles) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(provider());
        let pair = load_pair_with(&files, &provider)?;
        let current = Arc::new(CurrentPair(ArcSwap::from_pointee(pair)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor {
            files: Arc::new(files),
            current,
            provider,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The files this acceptor serves.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Read the files again; a pair that loads replaces the served one for new connections
    /// (open ones are untouched). On an error the served pair stays.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        let pair = load_pair_with(&self.files, &self.provider)?;
        if pair.cert == self.current.0.load().cert {
            return Ok(Reloaded::Unchanged);
        }
        self.current.0.store(Arc::new(pair));
        Ok(Reloaded::Replaced)
    }

    /// [`TlsAcceptor::reload`], with the outcome logged: info for a new pair, a warning naming
    /// the file for one that does not load.
    pub fn reload_logged(&self) {
        match self.reload() {
            Ok(Reloaded::Unchanged) => {
                tracing::debug!(cert_file = %self.files.cert_file.display(), "TLS certificate unchanged");
            }
            Ok(Reloaded::Replaced) => {
                tracing::info!(cert_file = %self.files.cert_file.display(), "TLS certificate reloaded; new connections get it");
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "TLS certificate reload rejected; the previous certificate keeps serving");
            }
        }
    }

    /// Reload (logged) whenever the certificate or key file changes, including Kubernetes'
    /// `..data` swap of a mounted Secret (see [`crate::watch`]). `None`, with a warning, when
    /// the files cannot be watched. Drop the result to stop.
    pub fn watch(&self) -> Option<FileWatch> {
        let files = [self.files.cert_file.clone(), self.files.key_file.clone()];
        let me = self.clone();
        match crate::watch::watch_files(&files, move || me.reload_logged()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the TLS certificate and key files; a rotated certificate needs a restart");
                None
            }
        }
    }

    /// The server side of a TLS handshake on `tcp`, done by `deadline`. A client that speaks
    /// plain HTTP instead is answered 400 (naming https) and closed.
    pub async fn accept(
        &self,
        mut tcp: TcpStream,
        deadline: Instant,
    ) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let first = async {
            let mut byte = [0u8; 1];
            match tcp.peek(&mut byte).await {
                Ok(0) => Err(HandshakeError::Closed),
                Ok(_) => Ok(byte[0]),
                // Reset before a byte (a port scan, a probe): nothing of TLS was tried.
                Err(_) => Err(HandshakeError::Closed),
            }
        };
        let first = match tokio::time::timeout_at(deadline, first).await {
            Ok(first) => first?,
            Err(_) => return Err(HandshakeError::Timeout),
        };
        if first != TLS_HANDSHAKE_RECORD && first.is_ascii_uppercase() {
            let _ = tokio::time::timeout_at(deadline, refuse_plain_http(&mut tcp)).await;
            return Err(HandshakeError::PlainHttp);
        }
        match tokio::time::timeout_at(deadline, self.acceptor.accept(tcp)).await {
            Ok(session) => session.map_err(HandshakeError::Tls),
            Err(_) => Err(HandshakeError::Timeout),
        }
    }
}

/// Answer [`PLAIN_HTTP_ANSWER`], then read (and drop) what the client sent until it closes:
/// closing with unread bytes would reset the connection before the client reads the answer.
async fn refuse_plain_http(tcp: &mut TcpStream) {
    if tcp.write_all(PLAIN_HTTP_ANSWER).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut budget = 64 * 1024;
    while budget > 0 {
        match tcp.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(n) => budget -= n.min(budget),
        }
    }
}

/// The warning for a listener other machines can reach whose callers send client keys, when
/// it has no TLS: the keys cross the network in clear text. `table` is the config table of the
/// listener (`proxy`). Logged at start-up and printed by `check`.
pub fn cleartext_keys_warning(
    table: &str,
    listen: SocketAddr,
    client_keys: bool,
    tls: bool,
) -> Option<String> {
    if tls || !client_keys || crate::access::is_loopback_listen(listen) {
        return None;
    }
    Some(format!(
        "{table}.listen = \"{listen}\" accepts connections from other machines and callers \
         send client keys, but the listener has no TLS: the keys cross the network in clear \
         text; set {table}.tls_cert_file and {table}.tls_key_file, or terminate TLS in front \
         of the proxy"
    ))
}

/// [`cleartext_keys_warning`] for every listener of `settings`: the main one (its callers send
/// keys with `access.client_keys_file` or `[[clients]]`) and each `[[listeners]]` entry (with
/// `access.client_keys_file`). Logged at start-up and after each reload, printed by `check`.
pub fn cleartext_keys_warnings(settings: &crate::config::Settings) -> Vec<String> {
    let keys = settings.access.client_keys_file.is_some();
    let main_keys = keys || !settings.clients.is_empty();
    let p = &settings.proxy;
    let main = cleartext_keys_warning("proxy", p.listen, main_keys, p.tls.is_some());
    let others = settings.listeners.iter().enumerate().filter_map(|(n, l)| {
        cleartext_keys_warning(&format!("listeners[{n}]"), l.listen, keys, l.tls.is_some())
    });
    main.into_iter().chain(others).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_remote_listener_without_tls_whose_callers_send_keys_is_named() {
        let general = |listen: &str, extra: &str| {
            crate::config::Settings::from_toml(&format!(
                "[proxy]\nlisten = \"{listen}\"\n\
                 [upstreams.u]\nurl = \"http://127.0.0.1:9\"\n\
                 [identities.a]\nupstream = \"u\"\nflavor = \"v1\"\nemail = \"a@b.c\"\n\
                 password_env = \"P\"\n{extra}"
            ))
            .unwrap()
        };
        // No keys: nothing to leak.
        let cidrs = "[access]\nallow_cidrs = [\"10.0.0.0/8\"]\n";
        assert!(cleartext_keys_warnings(&general("10.1.2.3:7000", cidrs)).is_empty());
        // [[clients]] puts keys on the main listener only.
        let clients = "[[clients]]\nkeys_file = \"/k\"\nidentity = \"a\"\n\
                       [[listeners]]\nlisten = \"10.1.2.3:7002\"\nidentity = \"a\"\n";
        let w = cleartext_keys_warnings(&general("10.1.2.3:7000", &format!("{cidrs}{clients}")));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("proxy.listen = \"10.1.2.3:7000\""),
            "{w:?}"
        );
        // access.client_keys_file: every listener's callers send keys; loopback is exempt.
        let access = format!(
            "[access]\nclient_keys_file = \"/k\"\nallow_cidrs = [\"10.0.0.0/8\"]\n{clients}"
        );
        let w = cleartext_keys_warnings(&general("127.0.0.1:7000", &access));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("listeners[0].listen"), "{w:?}");
    }

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
            cert_setting: "proxy.tls_cert_file".into(),
            key_setting: "proxy.tls_key_file".into(),
        }
    }

    /// A self-signed certificate for localhost: (cert PEM, key PEM).
    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(f: &TlsFiles, cert: &str, key: &str) {
        std::fs::write(&f.cert_file, cert).unwrap();
        std::fs::write(&f.key_file, key).unwrap();
    }

    #[test]
    fn a_matching_pair_loads_and_each_problem_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let (cert, key) = pair();
        let (_, other_key) = pair();
        write(&f, &cert, &key);
        assert!(load_pair(&f).is_ok());

        let err = |cert: &str, key: &str| {
            write(&f, cert, key);
            load_pair(&f).unwrap_err().to_string()
        };
        let e = err(&cert, &other_key);
        assert!(
            e.starts_with("config key `proxy.tls_key_file`: the private key in ")
                && e.contains("does not belong to the certificate")
                && e.contains("`proxy.tls_cert_file`"),
            "{e}"
        );
        let e = err("not pem", &key);
        assert!(e.starts_with("config key `proxy.tls_cert_file`: "), "{e}");
        // The key file's text is never quoted, whatever it holds.
        let e = err(&cert, "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IQ\n");
        assert!(e.starts_with("config key `proxy.tls_key_file`: "), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
        // A certificate where the key should be.
        let e = err(&cert, &cert);
        assert!(e.starts_with("config key `proxy.tls_key_file`: "), "{e}");
        std::fs::remove_file(&f.cert_file).unwrap();
        let e = load_pair(&f).unwrap_err().to_string();
        assert!(
            e.starts_with("config key `proxy.tls_cert_file`: cannot read "),
            "{e}"
        );
    }

    #[test]
    fn reload_swaps_a_good_pair_and_keeps_the_old_one_on_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let (cert, key) = pair();
        write(&f, &cert, &key);
        let tls = TlsAcceptor::new(f.clone()).unwrap();
        let served = || tls.current.0.load().cert.clone();
        let first = served();
        assert_eq!(tls.reload().unwrap(), Reloaded::Unchanged);

        let (cert2, key2) = pair();
        // Half-written rotation: new certificate, old key.
        std::fs::write(&f.cert_file, &cert2).unwrap();
        assert!(tls.reload().is_err());
        assert_eq!(served(), first);
        std::fs::write(&f.key_file, &key2).unwrap();
        assert_eq!(tls.reload().unwrap(), Reloaded::Replaced);
        assert_ne!(served(), first);
    }

    #[test]
    fn only_remote_listeners_with_keys_and_no_tls_are_warned_about() {
        let remote: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let w = cleartext_keys_warning("proxy", remote, true, false).unwrap();
        assert!(w.contains("proxy.tls_cert_file") && w.contains("0.0.0.0:7000"));
        assert!(cleartext_keys_warning("proxy", remote, true, true).is_none());
        assert!(cleartext_keys_warning("proxy", remote, false, false).is_none());
        assert!(cleartext_keys_warning("proxy", local, true, false).is_none());
    }
}
