//! The connection to Medusa: one pooled keep-alive client shared by logins and proxied
//! requests, the upstream URL, the request timeout, and Medusa's session cookie.
//!
//! Medusa v1 answers every cookie-less request with a new server-side session that lives for
//! 10 hours (express-session, `saveUninitialized: true`), so a proxy that never sends a cookie
//! grows Medusa's memory with its traffic. We keep the session cookie Medusa gives us and send
//! it back on every request of ours. Client cookies are never forwarded (see `proxy::headers`),
//! and upstream `Set-Cookie` never reaches a client.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{COOKIE, HOST, SET_COOKIE};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::ServiceExt;

use crate::body::LimitedBody;
use crate::config::UpstreamSettings;
use crate::pool::{Conn, Pool, PooledBody};
use crate::scrub::ScrubBody;

/// The request body sent to Medusa: buffered (small, replayable) or streamed from the client.
pub type UpstreamBody = Either<Full<Bytes>, LimitedBody>;

/// Medusa's response body (its connection returns to the pool when it has been read). It
/// passes through unchanged unless the proxy switches credential scrubbing on
/// ([`ScrubBody::scrub`]); logins read it as it is.
pub type ResponseBody = ScrubBody<PooledBody<UpstreamBody>>;

/// Name of the session cookie Medusa (express-session) sets.
pub const SESSION_COOKIE: &str = "connect.sid";
/// A session cookie longer than this is ignored rather than stored.
const MAX_SESSION_COOKIE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out: Medusa is down or unreachable.
    #[error("cannot connect to Medusa at {authority}: {detail}")]
    Connect { authority: String, detail: String },
    /// The connection broke while sending the request or reading the response head.
    #[error("connection to Medusa failed: {0}")]
    Io(String),
    /// No response head within the request timeout.
    #[error("Medusa did not answer within {0:?}")]
    Timeout(Duration),
    /// TLS to Medusa failed because its certificate was not accepted.
    #[error("Medusa's TLS certificate was rejected: {0}")]
    Certificate(String),
    /// The request could not be built (a path that is not a valid URI).
    #[error("invalid request URI")]
    InvalidUri,
    /// `https://` to a port that answered the TLS handshake with something else (usually
    /// plain HTTP): rustls calls that a corrupt message, which tells an operator nothing.
    #[error(
        "{authority} does not speak TLS (upstream.url is https://, but this port answered \
         the TLS handshake with something else, probably plain HTTP): use http:// or \
         Medusa's TLS port"
    )]
    NotTls { authority: String },
}

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("config key `upstream.ca_file`: cannot read {path}: {detail}", path = .0.display(), detail = .1)]
    CaFile(std::path::PathBuf, String),
    #[error("config key `upstream.ca_file`: {path} holds no PEM certificate", path = .0.display())]
    CaFileEmpty(std::path::PathBuf),
    #[error("TLS setup failed: {0}")]
    Rustls(String),
    #[error("config key `upstream.url`: {0}")]
    Url(String),
}

pub struct Upstream {
    connector: HttpsConnector<HttpConnector>,
    pool: Arc<Pool<UpstreamBody>>,
    /// `scheme://authority/`: what the connector connects to.
    origin: Uri,
    settings: UpstreamSettings,
    host: HeaderValue,
    session: ArcSwapOption<HeaderValue>,
    /// Requests a pooled connection never took, sent again on another.
    resent: prometheus_client::metrics::counter::Counter,
}

impl Upstream {
    pub fn new(settings: &UpstreamSettings) -> Result<Arc<Upstream>, TlsSetupError> {
        Upstream::counting(settings, Default::default())
    }

    /// Like [`Upstream::new`], counting resends of requests a pooled connection never took
    /// in `resent` (the `upstream_errors_total{kind="resent"}` metric).
    pub fn counting(
        settings: &UpstreamSettings,
        resent: prometheus_client::metrics::counter::Counter,
    ) -> Result<Arc<Upstream>, TlsSetupError> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let tls = tls_config(settings)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let origin = Uri::builder()
            .scheme(settings.scheme.clone())
            .authority(settings.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| TlsSetupError::Url(e.to_string()))?;
        let host = HeaderValue::from_str(settings.authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Ok(Arc::new(Upstream {
            connector,
            pool: Pool::new(settings.pool_idle_timeout),
            origin,
            settings: settings.clone(),
            host,
            session: ArcSwapOption::empty(),
            resent,
        }))
    }

    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// The request target sent to Medusa (origin-form: `/base/path?query`) for a client's
    /// path and query, byte for byte after the base path.
    /// `path` as a full URL on Medusa (scheme, authority, base path), for messages.
    pub fn url_for(&self, path: &str) -> String {
        format!(
            "{}://{}{}{path}",
            self.settings.scheme, self.settings.authority, self.settings.base_path
        )
    }

    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        let mut pq = String::with_capacity(self.settings.base_path.len() + path_and_query.len());
        pq.push_str(&self.settings.base_path);
        pq.push_str(path_and_query);
        let pq = http::uri::PathAndQuery::try_from(pq).map_err(|_| UpstreamError::InvalidUri)?;
        Ok(Uri::from(pq))
    }

    /// The request target sent to Medusa for a client's request target (origin-form, or the
    /// path and query of an absolute-form one). Without a base path the client's
    /// path-and-query is reused as is (no copy, no re-parse: the hot path).
    pub fn uri_for_target(&self, target: &Uri) -> Result<Uri, UpstreamError> {
        match target.path_and_query() {
            Some(pq) if self.settings.base_path.is_empty() => Ok(Uri::from(pq.clone())),
            pq => self.uri_for(pq.map_or("/", |p| p.as_str())),
        }
    }

    /// Send a request whose URI came from [`Upstream::uri_for`]. Sets `Host` and our session
    /// cookie, applies the request timeout to the response head, and captures the session
    /// cookie from the response (removing every `Set-Cookie` from it).
    pub async fn send(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let headers = req.headers_mut();
        headers.insert(HOST, self.host.clone());
        if let Some(cookie) = self.session.load_full() {
            headers.insert(COOKIE, (*cookie).clone());
        }
        let timeout = self.settings.request_timeout;
        let mut resp = match tokio::time::timeout(timeout, self.dispatch(req)).await {
            Err(_) => return Err(UpstreamError::Timeout(timeout)),
            Ok(result) => result?,
        };
        self.capture_session(resp.headers_mut());
        Ok(resp)
    }

    /// Send on a pooled connection, or a new one. A request the connection never took (it
    /// closed while idle in the pool: typically Medusa's keep-alive timeout, or its task ended
    /// as the request was handed over) comes back from hyper unsent and goes out on the next
    /// connection; once written, it is never resent here.
    async fn dispatch(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        loop {
            let (conn, reused) = match self.pool.take() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            match conn.send(req).await {
                (Ok(resp), conn) => {
                    return Ok(match conn {
                        // 101: the connection now belongs to the upgraded stream.
                        Some(conn) if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS => {
                            let pool = self.pool.clone();
                            resp.map(|body| {
                                ScrubBody::passthrough(PooledBody::new(body, conn, pool))
                            })
                        }
                        _ => resp.map(|body| ScrubBody::passthrough(PooledBody::unpooled(body))),
                    });
                }
                (Err(mut e), _) => match e.take_message() {
                    Some(unsent) if reused => {
                        tracing::debug!(error = %error_chain(e.error()), "pooled connection closed before use; sending on another");
                        self.resent.inc();
                        req = unsent;
                    }
                    _ => return Err(UpstreamError::Io(error_chain(&e.into_error()))),
                },
            }
        }
    }

    /// Open a new connection to Medusa (TCP, then TLS for https) and start its HTTP/1.1
    /// connection task.
    async fn connect(&self) -> Result<Conn<UpstreamBody>, UpstreamError> {
        let io = self
            .connector
            .clone()
            .oneshot(self.origin.clone())
            .await
            .map_err(|e| match tls_error(&*e) {
                Some(TlsFailure::Certificate(c)) => UpstreamError::Certificate(c),
                Some(TlsFailure::NotTls) => UpstreamError::NotTls {
                    authority: self.settings.authority.to_string(),
                },
                None => UpstreamError::Connect {
                    authority: self.settings.authority.to_string(),
                    detail: error_chain(&*e),
                },
            })?;
        Conn::handshake(io)
            .await
            .map_err(|e| UpstreamError::Io(error_chain(&e)))
    }

    /// Remember Medusa's session cookie and remove every `Set-Cookie`: a Medusa session must
    /// never be handed to a client.
    fn capture_session(&self, headers: &mut http::HeaderMap) {
        let mut found = None;
        if let http::header::Entry::Occupied(e) = headers.entry(SET_COOKIE) {
            for v in e.remove_entry_mult().1 {
                if let Some(pair) = session_pair(&v) {
                    found = Some(pair);
                }
            }
        }
        if let Some(pair) = found {
            let current = self.session.load();
            if current.as_deref().map(HeaderValue::as_bytes) != Some(pair.as_bytes()) {
                let mut pair = pair;
                pair.set_sensitive(true);
                self.session.store(Some(Arc::new(pair)));
                tracing::debug!("stored a new Medusa session cookie");
            }
        }
    }

    #[cfg(test)]
    fn session_cookie(&self) -> Option<HeaderValue> {
        self.session.load_full().map(|c| (*c).clone())
    }
}

/// `connect.sid=VALUE` from a `Set-Cookie` value, if it is the session cookie.
fn session_pair(set_cookie: &HeaderValue) -> Option<HeaderValue> {
    let bytes = set_cookie.as_bytes();
    if bytes.len() > MAX_SESSION_COOKIE {
        return None;
    }
    let pair = bytes.split(|b| *b == b';').next()?;
    let eq = pair.iter().position(|b| *b == b'=')?;
    let name = pair[..eq].trim_ascii();
    if name != SESSION_COOKIE.as_bytes() {
        return None;
    }
    let value = pair[eq + 1..].trim_ascii();
    if value.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(name.len() + 1 + value.len());
    out.extend_from_slice(name);
    out.push(b'=');
    out.extend_from_slice(value);
    HeaderValue::from_bytes(&out).ok()
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
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsSetupError::CaFile(path.clone(), e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| TlsSetupError::CaFile(path.clone(), e.to_string()))?;
        if certs.is_empty() {
            return Err(TlsSetupError::CaFileEmpty(path.clone()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| TlsSetupError::CaFile(path.clone(), e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The certificate problem, if this error is a TLS certificate rejection. `io::Error` hides
/// its inner error from `source()`, so look inside each one explicitly.
enum TlsFailure {
    Certificate(String),
    /// The peer's first bytes were not a TLS record.
    NotTls,
}

fn tls_error(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        match err.downcast_ref::<rustls::Error>() {
            Some(rustls::Error::InvalidCertificate(c)) => {
                return Some(TlsFailure::Certificate(format!("{c:?}")));
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

/// "a: b: c" from an error and its sources. hyper's errors carry no header values or bodies.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn upstream() -> Arc<Upstream> {
        let s = Settings::from_toml(
            "[upstream]\nurl=\"http://127.0.0.1:9/base/\"\n[auth]\nemail=\"a\"\npassword_env=\"P\"",
        )
        .unwrap();
        Upstream::new(&s.upstream).unwrap()
    }

    #[test]
    fn session_cookie_pair_is_extracted() {
        let v = HeaderValue::from_static("connect.sid=s%3Aabc.def; Path=/; HttpOnly");
        assert_eq!(session_pair(&v).unwrap(), "connect.sid=s%3Aabc.def");
        assert!(session_pair(&HeaderValue::from_static("other=1; Path=/")).is_none());
        assert!(session_pair(&HeaderValue::from_static("connect.sid=; Path=/")).is_none());
        assert!(session_pair(&HeaderValue::from_static("garbage")).is_none());
    }

    #[tokio::test]
    async fn set_cookie_is_removed_and_session_kept() {
        let up = upstream();
        let mut h = http::HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("a=1"));
        h.append(
            SET_COOKIE,
            HeaderValue::from_static("connect.sid=s1; Path=/"),
        );
        up.capture_session(&mut h);
        assert!(h.get(SET_COOKIE).is_none());
        assert_eq!(up.session_cookie().unwrap(), "connect.sid=s1");
    }

    #[tokio::test]
    async fn uri_for_target_reuses_or_prefixes() {
        let up = upstream();
        let target: Uri = "/admin/x?a=%2F".parse().unwrap();
        assert_eq!(
            up.uri_for_target(&target).unwrap().to_string(),
            "/base/admin/x?a=%2F"
        );
        let s = Settings::from_toml(
            "[upstream]\nurl=\"http://127.0.0.1:9\"\n[auth]\nemail=\"a\"\npassword_env=\"P\"",
        )
        .unwrap();
        let plain = Upstream::new(&s.upstream).unwrap();
        assert_eq!(
            plain.uri_for_target(&target).unwrap().to_string(),
            "/admin/x?a=%2F"
        );
        // An absolute-form request target: only its path and query are used.
        let abs: Uri = "http://evil.example/admin/y?b".parse().unwrap();
        assert_eq!(
            plain.uri_for_target(&abs).unwrap().to_string(),
            "/admin/y?b"
        );
    }

    #[tokio::test]
    async fn uri_keeps_path_and_query_bytes() {
        let up = upstream();
        let uri = up
            .uri_for("/admin/products?q=a%20b&x[]=1")
            .unwrap_or_else(|_| up.uri_for("/admin/products?q=a%20b&x%5B%5D=1").unwrap());
        assert!(uri.to_string().starts_with("/base/admin/products?q=a%20b"));
    }

    /// A server that answers one request per connection as keep-alive (no `Connection:
    /// close`) and then hangs up: every pooled connection is dead by its next use, the race
    /// Medusa's keep-alive timeout creates. Counts the requests it read.
    async fn one_shot_server() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Head, then the 2-byte body every test request carries.
                    loop {
                        let Ok(n) = tcp.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
                            && buf.len() >= end + 4 + 2
                        {
                            break;
                        }
                    }
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        (addr, seen)
    }

    /// An `Upstream` for a Medusa at `addr`, counting resends in `resent`.
    fn upstream_at(
        addr: std::net::SocketAddr,
        resent: prometheus_client::metrics::counter::Counter,
    ) -> Arc<Upstream> {
        let s = Settings::from_toml(&format!(
            "[upstream]\nurl=\"http://{addr}\"\nrequest_timeout=\"5s\"\n[auth]\nemail=\"a\"\npassword_env=\"P\""
        ))
        .unwrap();
        Upstream::counting(&s.upstream, resent).unwrap()
    }

    /// `POST /admin/products` with the 2-byte JSON body `one_shot_server` waits for.
    fn post(up: &Upstream) -> Request<UpstreamBody> {
        let mut req = Request::new(Either::Left(Full::new(Bytes::from_static(b"{}"))));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = up.uri_for("/admin/products").unwrap();
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        req
    }

    #[tokio::test]
    async fn dead_pooled_connections_never_fail_or_duplicate_a_post() {
        use http_body_util::BodyExt;
        let (addr, seen) = one_shot_server().await;
        let up = upstream_at(addr, Default::default());
        for i in 0..200 {
            let req = post(&up);
            // A dead pooled connection is skipped or, if hyper hands the request back unsent,
            // the request goes out on a new one: either way it succeeds.
            let resp = match up.send(req).await {
                Ok(resp) => resp,
                Err(e) => panic!("request {i}: {e}"),
            };
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        // Each request reached the server exactly once: nothing was sent twice.
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 200);
    }

    /// The request a pooled connection took into hyper's queue but never wrote (its task ended
    /// first: the idle-close race, staged here by ending the task by hand) goes out on a new
    /// connection, even a POST, and reaches Medusa exactly once.
    #[tokio::test]
    async fn a_request_a_dead_pooled_connection_never_wrote_is_sent_on_another() {
        use crate::pool::Staged;
        use http_body_util::BodyExt;
        let (addr, seen) = one_shot_server().await;
        let resent = prometheus_client::metrics::counter::Counter::<u64>::default();
        let up = upstream_at(addr, resent.clone());
        // A pooled connection whose task we hold: it is idle and wants a request.
        let Staged {
            conn,
            task,
            alive,
            peer: _peer,
        } = Staged::new();
        up.pool.put(conn);
        let req = post(&up);
        let sending = tokio::spawn({
            let up = up.clone();
            async move { up.send(req).await }
        });
        // The request is now queued on that connection (its task never runs again)...
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!sending.is_finished(), "waits for the staged connection");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
        // ...which ends without having written it.
        drop(task);
        drop(alive);
        let resp = tokio::time::timeout(Duration::from_secs(2), sending)
            .await
            .expect("not left waiting")
            .unwrap()
            .expect("sent on a new connection");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(resent.get(), 1, "counted for /metrics");
    }
}
