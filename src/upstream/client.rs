//! The innermost service: one request on a pooled HTTP/1.1 connection to Medusa, or on a new
//! one (TCP, then TLS for https). Sets `Host` and the protocol version, and bounds the wait
//! for the response head by `upstream.request_timeout`.
//!
//! A request the pool's connection never took (it closed while idle: typically Medusa's
//! keep-alive timeout, or its task ended as the request was handed over) comes back from
//! hyper unsent and goes out on the next connection, whatever its method: nothing of it was
//! written. Once written, it is never sent again here (that is [`Resend`](super::Resend)'s
//! decision, one layer up).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::{Service, ServiceExt};

use super::chain::error_chain;
use super::error::{BoxError, UpstreamError};
use super::pool::{Conn, Pool, PooledBody};
use super::tls::{self, TlsFailure, TlsSetupError};
use crate::config::UpstreamSettings;

/// Called each time a request a pooled connection never took is sent on another one.
pub(crate) type Hook = Arc<dyn Fn() + Send + Sync>;

/// Where requests go: the settings, the origin the connector dials and the `Host` sent.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) settings: UpstreamSettings,
    /// `scheme://authority/`: what the connector connects to.
    origin: Uri,
    host: HeaderValue,
}

impl Target {
    pub(crate) fn new(settings: &UpstreamSettings) -> Result<Target, TlsSetupError> {
        let origin = Uri::builder()
            .scheme(settings.scheme.clone())
            .authority(settings.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(TlsSetupError::Url)?;
        let host = HeaderValue::from_str(settings.authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Ok(Target {
            settings: settings.clone(),
            origin,
            host,
        })
    }

    /// `path` as a full URL on Medusa (scheme, authority, base path), for messages.
    pub(crate) fn url_for(&self, path: &str) -> String {
        let s = &self.settings;
        format!("{}://{}{}{path}", s.scheme, s.authority, s.base_path)
    }

    /// The request target sent to Medusa (origin-form: `/base/path?query`) for a path and
    /// query, byte for byte after the base path.
    pub(crate) fn uri_for(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        super::target::behind(&self.settings.base_path, path_and_query)
    }
}

/// Sends each request on a pooled connection to Medusa (see the module docs). Cheap to clone:
/// clones share the pool.
pub(crate) struct Client<B> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for Client<B> {
    fn clone(&self) -> Self {
        Client {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<B> {
    connector: HttpsConnector<HttpConnector>,
    pool: Arc<Pool<B>>,
    target: Arc<Target>,
    on_unsent: Option<Hook>,
}

impl<B: Send + 'static> Client<B> {
    /// A client with its own pool for `target`, dialing with `connector`.
    pub(crate) fn new(
        target: Arc<Target>,
        connector: HttpsConnector<HttpConnector>,
        on_unsent: Option<Hook>,
    ) -> Client<B> {
        Client {
            shared: Arc::new(Shared {
                connector,
                pool: Pool::new(target.settings.pool_idle_timeout),
                target,
                on_unsent,
            }),
        }
    }

    /// A client for the same Medusa over the same connector, with a pool of its own.
    pub(crate) fn with_body<C: Send + 'static>(&self) -> Client<C> {
        Client::new(
            self.shared.target.clone(),
            self.shared.connector.clone(),
            self.shared.on_unsent.clone(),
        )
    }

    /// Build a client from settings: connector (TLS setup) and target.
    pub(crate) fn from_settings(
        settings: &UpstreamSettings,
        on_unsent: Option<Hook>,
    ) -> Result<Client<B>, TlsSetupError> {
        let connector = tls::connector(settings)?;
        Ok(Client::new(
            Arc::new(Target::new(settings)?),
            connector,
            on_unsent,
        ))
    }

    pub(crate) fn target(&self) -> &Arc<Target> {
        &self.shared.target
    }
}

/// The client's future: boxed, the one allocation of the upstream stack per request (the
/// connect-or-reuse loop is an `async fn` whose type cannot be named).
pub(crate) type ClientFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<PooledBody<B>>, UpstreamError>> + Send>>;

impl<B> Service<Request<B>> for Client<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<PooledBody<B>>;
    type Error = UpstreamError;
    type Future = ClientFuture<B>;

    /// Always ready: a request waits for no other (no connection limit here; the proxy caps
    /// requests in flight).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> ClientFuture<B> {
        req.headers_mut()
            .insert(HOST, self.shared.target.host.clone());
        // Medusa speaks HTTP/1.1 whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;
        let shared = self.shared.clone();
        Box::pin(async move {
            let timeout = shared.target.settings.request_timeout;
            match tokio::time::timeout(timeout, shared.dispatch(req)).await {
                Err(_) => Err(UpstreamError::Timeout(timeout)),
                Ok(result) => result,
            }
        })
    }
}

impl<B> Shared<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Send on a pooled connection, or a new one; a request a pooled connection handed back
    /// unsent goes out on the next one.
    async fn dispatch(
        &self,
        mut req: Request<B>,
    ) -> Result<Response<PooledBody<B>>, UpstreamError> {
        loop {
            let (conn, reused) = match self.pool.take() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            match conn.send(req).await {
                (Ok(resp), conn) => {
                    return Ok(match conn {
                        // 101: the connection now belongs to the upgraded stream.
                        Some(conn) if resp.status() != StatusCode::SWITCHING_PROTOCOLS => {
                            let pool = self.pool.clone();
                            resp.map(|body| PooledBody::new(body, conn, pool))
                        }
                        _ => resp.map(PooledBody::unpooled),
                    });
                }
                (Err(mut e), _) => match e.take_message() {
                    Some(unsent) if reused => {
                        tracing::debug!(error = %error_chain(e.error()), "pooled connection closed before use; sending on another");
                        if let Some(hook) = &self.on_unsent {
                            hook();
                        }
                        req = unsent;
                    }
                    _ => return Err(UpstreamError::ConnectionBroken(e.into_error())),
                },
            }
        }
    }

    /// Open a new connection to Medusa (TCP, then TLS for https) and start its HTTP/1.1
    /// connection task.
    async fn connect(&self) -> Result<Conn<B>, UpstreamError> {
        let authority = || self.target.settings.authority.clone();
        let io = self
            .connector
            .clone()
            .oneshot(self.target.origin.clone())
            .await
            .map_err(|e| match tls::tls_failure(&*e) {
                Some(TlsFailure::Certificate(source)) => UpstreamError::Certificate {
                    authority: authority(),
                    source,
                },
                Some(TlsFailure::NotTls) => UpstreamError::NotTls {
                    authority: authority(),
                },
                None => UpstreamError::Connect {
                    authority: authority(),
                    source: e,
                },
            })?;
        Conn::handshake(io)
            .await
            .map_err(UpstreamError::ConnectionBroken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn settings(url: &str) -> UpstreamSettings {
        Settings::from_toml(&format!(
            "[upstream]\nurl=\"{url}\"\nrequest_timeout=\"5s\"\n[auth]\nemail=\"a\"\npassword_env=\"P\""
        ))
        .unwrap()
        .upstream
    }

    #[test]
    fn urls_and_targets_go_behind_the_base_path() {
        let based = Target::new(&settings("http://127.0.0.1:9/base/")).unwrap();
        assert_eq!(
            based.uri_for("/admin/x?a=%2F").unwrap().to_string(),
            "/base/admin/x?a=%2F"
        );
        assert_eq!(
            based.url_for("/admin/auth"),
            "http://127.0.0.1:9/base/admin/auth"
        );
    }

    #[test]
    fn uri_keeps_path_and_query_bytes() {
        let up = Target::new(&settings("http://127.0.0.1:9/base/")).unwrap();
        let uri = up
            .uri_for("/admin/products?q=a%20b&x[]=1")
            .unwrap_or_else(|_| up.uri_for("/admin/products?q=a%20b&x%5B%5D=1").unwrap());
        assert!(uri.to_string().starts_with("/base/admin/products?q=a%20b"));
        let e = up.uri_for("/a b").unwrap_err();
        assert!(e.is_invalid_request(), "{e:?}");
    }

    /// A server that answers one request per connection as keep-alive (no `Connection:
    /// close`) and then hangs up: every pooled connection is dead by its next use, the race
    /// Medusa's keep-alive timeout creates. Counts the requests it read.
    async fn one_shot_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
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
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        (addr, seen)
    }

    /// A client for a Medusa at `addr`, counting requests sent on another connection.
    fn client_at(addr: std::net::SocketAddr) -> (Client<Full<Bytes>>, Arc<AtomicUsize>) {
        let resent = Arc::new(AtomicUsize::new(0));
        let counted = resent.clone();
        let hook: Hook = Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let client = Client::from_settings(&settings(&format!("http://{addr}")), Some(hook));
        (client.unwrap(), resent)
    }

    /// `POST /admin/products` with the 2-byte JSON body `one_shot_server` waits for.
    fn post(client: &Client<Full<Bytes>>) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::from_static(b"{}")));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = client.target().uri_for("/admin/products").unwrap();
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        req
    }

    #[tokio::test]
    async fn dead_pooled_connections_never_fail_or_duplicate_a_post() {
        let (addr, seen) = one_shot_server().await;
        let (client, _) = client_at(addr);
        for i in 0..200 {
            let req = post(&client);
            // A dead pooled connection is skipped or, if hyper hands the request back unsent,
            // the request goes out on a new one: either way it succeeds.
            let resp = match client.clone().oneshot(req).await {
                Ok(resp) => resp,
                Err(e) => panic!("request {i}: {}", error_chain(&e)),
            };
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        // Each request reached the server exactly once: nothing was sent twice.
        assert_eq!(seen.load(Ordering::SeqCst), 200);
    }

    /// The request a pooled connection took into hyper's queue but never wrote (its task ended
    /// first: the idle-close race, staged here by ending the task by hand) goes out on a new
    /// connection, even a POST, and reaches Medusa exactly once.
    #[tokio::test]
    async fn a_request_a_dead_pooled_connection_never_wrote_is_sent_on_another() {
        use super::super::pool::Staged;
        let (addr, seen) = one_shot_server().await;
        let (client, resent) = client_at(addr);
        // A pooled connection whose task we hold: it is idle and wants a request.
        let Staged {
            conn,
            task,
            alive,
            peer: _peer,
        } = Staged::new();
        client.shared.pool.put(conn);
        let req = post(&client);
        let sending = tokio::spawn(client.clone().oneshot(req));
        // The request is now queued on that connection (its task never runs again)...
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!sending.is_finished(), "waits for the staged connection");
        assert_eq!(seen.load(Ordering::SeqCst), 0);
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
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert_eq!(resent.load(Ordering::SeqCst), 1, "the hook was called");
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable_with_its_cause() {
        // Bound, then closed: nothing listens on that port now.
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let (client, _) = client_at(addr);
        let e = client
            .oneshot(Request::new(Full::default()))
            .await
            .unwrap_err();
        assert!(matches!(e, UpstreamError::Connect { .. }), "{e:?}");
        assert!(e.is_unreachable() && !e.is_connection_broken());
        let line = error_chain(&e);
        assert!(
            line.starts_with(&format!("cannot connect to Medusa at {addr}: ")),
            "{line}"
        );
    }
}
