//! The connection to Medusa as a `tower::Service<Request<B>>`, generic over the request body.
//!
//! [`Upstream`] is composed from one layer per concern, outermost first:
//!
//! ```text
//! SessionCookie  cookie.rs  send Medusa's session cookie, keep the one it sets, strip Set-Cookie
//! Resend         resend.rs  once more after a broken connection: idempotent + replayable only
//! Client         client.rs  Host, HTTP/1.1, timeout on the response head, pooled connections
//!   Pool         pool.rs    idle keep-alive connections; bodies give theirs back at their end
//!   tls          tls.rs     rustls connector, system roots + upstream.ca_file
//! ```
//!
//! It knows nothing of the proxy: no access log, no metric names, no body type of the proxy's.
//! What a caller may want to count comes out as data: a resent response carries [`Resent`],
//! and [`Upstream::counting`] takes a hook for requests sent on another connection.

mod chain;
mod client;
mod cookie;
mod error;
mod pool;
mod resend;
mod target;
mod tls;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::Body;
use tower::{Layer, Service, ServiceExt};

use crate::config::UpstreamSettings;
use client::{Client, Hook, Target};

pub use chain::error_chain;
pub use cookie::{SESSION_COOKIE, SessionCookie, SessionCookieFuture, SessionCookieLayer};
pub use error::{BoxError, UpstreamError};
pub use pool::PooledBody;
pub use resend::{Replayable, Resend, ResendFuture, ResendLayer, Resent, is_idempotent};
pub use target::{TargetLayer, TargetService};
pub use tls::TlsSetupError;

/// Medusa's response body: once read to the end, its connection goes back to the pool;
/// dropped before that, the connection is closed. After a `101 Switching Protocols` the
/// connection belongs to the upgrade and is never pooled.
pub type ResponseBody<B> = PooledBody<B>;

/// The layers around the client, outermost first (see the module docs).
type Stack<B> = SessionCookie<Resend<Client<B>>>;

/// The client for one Medusa: a `tower::Service` sending `Request<B>` and answering
/// `Response<ResponseBody<B>>` (see the module docs for what it does to a request).
///
/// Cheap to clone (clones share the pool and the session cookie). The request's URI must be
/// Medusa's request target from [`Upstream::uri_for`], or a client's target passed through
/// [`TargetLayer`] (origin-form, base path included); `Host` is set here.
///
/// ```no_run
/// # async fn demo(settings: &medusa_auth_proxy::config::UpstreamSettings)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use medusa_auth_proxy::upstream::Upstream;
/// use tower::ServiceExt;
///
/// let upstream: Upstream<Full<Bytes>> = Upstream::new(settings)?;
/// let req = http::Request::get(upstream.uri_for("/health")?).body(Full::default())?;
/// let resp = upstream.clone().oneshot(req).await?;
/// println!("{} {:?}", resp.status(), resp.into_body().collect().await?.to_bytes());
/// # Ok(())
/// # }
/// ```
pub struct Upstream<B> {
    stack: Stack<B>,
    session: SessionCookieLayer,
    target: Arc<Target>,
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Upstream {
            stack: self.stack.clone(),
            session: self.session.clone(),
            target: self.target.clone(),
        }
    }
}

impl<B> std::fmt::Debug for Upstream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.target.settings.url)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl<B: Send + 'static> Upstream<B> {
    /// A client for the Medusa of `settings` (TLS set up here: an unreadable
    /// `upstream.ca_file` fails now, not at the first request). Nothing is connected yet:
    /// the first request opens the first connection.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use medusa_auth_proxy::config::Settings;
    /// use medusa_auth_proxy::upstream::{TlsSetupError, Upstream};
    ///
    /// let settings = Settings::from_toml(
    ///     "[upstream]\nurl = \"http://127.0.0.1:9000\"\n[auth]\nemail = \"a\"\npassword_env = \"P\"",
    /// )
    /// .unwrap();
    /// let upstream: Upstream<Full<Bytes>> = Upstream::new(&settings.upstream).unwrap();
    /// assert_eq!(upstream.settings().authority, "127.0.0.1:9000");
    ///
    /// let private_ca = Settings::from_toml(
    ///     "[upstream]\nurl = \"https://medusa.internal\"\nca_file = \"/nonexistent/ca.pem\"\n\
    ///      [auth]\nemail = \"a\"\npassword_env = \"P\"",
    /// )
    /// .unwrap();
    /// let e = Upstream::<Full<Bytes>>::new(&private_ca.upstream).unwrap_err();
    /// assert!(matches!(e, TlsSetupError::CaFile { .. }));
    /// ```
    pub fn new(settings: &UpstreamSettings) -> Result<Upstream<B>, TlsSetupError> {
        Upstream::build(settings, None)
    }

    /// Like [`Upstream::new`], calling `on_unsent` each time a request a pooled connection
    /// never took (Medusa closed it while idle) is sent on another connection. Nothing of
    /// such a request had been written; the hook is for counting them.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// # use bytes::Bytes; use http_body_util::Full;
    /// # use medusa_auth_proxy::{config::Settings, upstream::Upstream};
    /// # let settings = Settings::from_toml(
    /// #     "[upstream]\nurl=\"http://127.0.0.1:9000\"\n[auth]\nemail=\"a\"\npassword_env=\"P\"",
    /// # ).unwrap();
    /// let resent = Arc::new(AtomicU64::new(0));
    /// let count = resent.clone();
    /// let upstream: Upstream<Full<Bytes>> = Upstream::counting(&settings.upstream, move || {
    ///     count.fetch_add(1, Ordering::Relaxed);
    /// })
    /// .unwrap();
    /// # let _ = upstream;
    /// ```
    pub fn counting(
        settings: &UpstreamSettings,
        on_unsent: impl Fn() + Send + Sync + 'static,
    ) -> Result<Upstream<B>, TlsSetupError> {
        Upstream::build(settings, Some(Arc::new(on_unsent)))
    }

    fn build(
        settings: &UpstreamSettings,
        hook: Option<Hook>,
    ) -> Result<Upstream<B>, TlsSetupError> {
        let client = Client::from_settings(settings, hook)?;
        Ok(Upstream::around(client, SessionCookieLayer::new()))
    }

    fn around(client: Client<B>, session: SessionCookieLayer) -> Upstream<B> {
        let target = client.target().clone();
        Upstream {
            stack: session.layer(ResendLayer.layer(client)),
            session,
            target,
        }
    }

    /// A client of the same Medusa for another body type: same settings, TLS setup, session
    /// cookie and hook, with a pool of its own (a connection carries one body type). For a
    /// few requests of another kind next to the main traffic, e.g. logins with
    /// `Full<Bytes>` bodies next to proxied ones.
    ///
    /// ```
    /// # use bytes::Bytes; use http_body_util::{Either, Empty, Full};
    /// # use medusa_auth_proxy::{config::Settings, upstream::Upstream};
    /// # let settings = Settings::from_toml(
    /// #     "[upstream]\nurl=\"http://127.0.0.1:9000\"\n[auth]\nemail=\"a\"\npassword_env=\"P\"",
    /// # ).unwrap();
    /// let proxied: Upstream<Either<Full<Bytes>, Empty<Bytes>>> = Upstream::new(&settings.upstream)?;
    /// let logins: Upstream<Full<Bytes>> = proxied.for_body();
    /// # Ok::<_, medusa_auth_proxy::upstream::TlsSetupError>(())
    /// ```
    pub fn for_body<C: Send + 'static>(&self) -> Upstream<C> {
        let client = self.stack_client().with_body();
        Upstream::around(client, self.session.clone())
    }

    /// The same Medusa over the same connection pool, with a session cookie of its own:
    /// each identity on a shared upstream keeps its own Medusa session, so nothing one
    /// identity's requests left in a session can serve another's.
    pub fn with_own_session(&self) -> Upstream<B> {
        Upstream::around(self.stack_client().clone(), SessionCookieLayer::new())
    }

    fn stack_client(&self) -> &Client<B> {
        self.stack.get_ref().get_ref()
    }
}

impl<B> Upstream<B> {
    /// The settings this client was built from.
    pub fn settings(&self) -> &UpstreamSettings {
        &self.target.settings
    }

    /// `path` as a full URL on Medusa (scheme, authority, base path), for messages.
    ///
    /// ```
    /// # use bytes::Bytes; use http_body_util::Full;
    /// # use medusa_auth_proxy::{config::Settings, upstream::Upstream};
    /// # let settings = Settings::from_toml(
    /// #     "[upstream]\nurl=\"http://127.0.0.1:9000/shop\"\n[auth]\nemail=\"a\"\npassword_env=\"P\"",
    /// # ).unwrap();
    /// let upstream: Upstream<Full<Bytes>> = Upstream::new(&settings.upstream).unwrap();
    /// assert_eq!(upstream.url_for("/admin/auth"), "http://127.0.0.1:9000/shop/admin/auth");
    /// ```
    pub fn url_for(&self, path: &str) -> String {
        self.target.url_for(path)
    }

    /// The request target sent to Medusa (origin-form: `/base/path?query`) for a path and
    /// query, byte for byte after the base path.
    ///
    /// ```
    /// # use bytes::Bytes; use http_body_util::Full;
    /// # use medusa_auth_proxy::{config::Settings, upstream::Upstream};
    /// # let settings = Settings::from_toml(
    /// #     "[upstream]\nurl=\"http://127.0.0.1:9000/shop\"\n[auth]\nemail=\"a\"\npassword_env=\"P\"",
    /// # ).unwrap();
    /// let upstream: Upstream<Full<Bytes>> = Upstream::new(&settings.upstream).unwrap();
    /// assert_eq!(upstream.uri_for("/admin/products?q=a%20b").unwrap(), "/shop/admin/products?q=a%20b");
    /// ```
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        self.target.uri_for(path_and_query)
    }
}

impl<B> Upstream<B>
where
    B: Body<Data = Bytes> + Replayable + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Send one request: `self.clone().oneshot(req)`, for callers that hold a shared
    /// reference.
    pub async fn send(&self, req: Request<B>) -> Result<Response<ResponseBody<B>>, UpstreamError> {
        self.clone().oneshot(req).await
    }
}

impl<B> Service<Request<B>> for Upstream<B>
where
    B: Body<Data = Bytes> + Replayable + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = UpstreamError;
    type Future = ResponseFuture<B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        self.stack.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture<B> {
        ResponseFuture {
            inner: self.stack.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// Future of [`Upstream`]: the response head, or why there is none.
    pub struct ResponseFuture<B>
    where
        B: Body<Data = Bytes>,
        B: Replayable,
        B: Send,
        B: Unpin,
        B: 'static,
        B::Error: Into<BoxError>,
    {
        #[pin]
        inner: SessionCookieFuture<ResendFuture<Client<B>, B>>,
    }
}

impl<B> std::future::Future for ResponseFuture<B>
where
    B: Body<Data = Bytes> + Replayable + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, UpstreamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Empty, Full};

    #[test]
    fn a_client_for_another_body_shares_the_session_and_the_settings() {
        let s = crate::config::Settings::from_toml(
            "[upstream]\nurl=\"http://127.0.0.1:9/base\"\n[auth]\nemail=\"a\"\npassword_env=\"P\"",
        )
        .unwrap();
        let proxied: Upstream<Full<Bytes>> = Upstream::new(&s.upstream).unwrap();
        let logins: Upstream<Empty<Bytes>> = proxied.for_body();
        assert!(proxied.session.shares_session_with(&logins.session));
        assert!(Arc::ptr_eq(&proxied.target, &logins.target));
        assert_eq!(logins.url_for("/x"), "http://127.0.0.1:9/base/x");
        // Built separately: a session of its own.
        let other: Upstream<Full<Bytes>> = Upstream::new(&s.upstream).unwrap();
        assert!(!other.session.shares_session_with(&proxied.session));
    }
}
