//! Medusa's session cookie: kept from its answers, sent back on every request, never passed on.
//!
//! Medusa v1 answers every cookie-less request with a new server-side session that lives for
//! 10 hours (express-session, `saveUninitialized: true`), so a proxy that never sends a cookie
//! grows Medusa's memory with its traffic. [`SessionCookie`] keeps the session cookie Medusa
//! gives and sends it back on every request. Every `Set-Cookie` is removed from the answer:
//! a Medusa session must never reach a client (client cookies are never forwarded either,
//! see `proxy::headers`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use arc_swap::ArcSwapOption;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Request, Response};
use tower::{Layer, Service};

/// Name of the session cookie Medusa (express-session) sets.
pub const SESSION_COOKIE: &str = "connect.sid";
/// A session cookie longer than this is ignored rather than stored.
const MAX_SESSION_COOKIE: usize = 4096;

/// Layer of [`SessionCookie`]. Clones share one session: every service it wraps sends the
/// same cookie and stores the newest one any of them received.
///
/// ```
/// use tower::ServiceBuilder;
/// use medusa_auth_proxy::upstream::SessionCookieLayer;
/// # let client = tower::service_fn(|_req: http::Request<()>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// # });
/// let session = SessionCookieLayer::new();
/// let service = ServiceBuilder::new().layer(session.clone()).service(client);
/// # let _ = service;
/// ```
#[derive(Clone, Debug, Default)]
pub struct SessionCookieLayer {
    session: Arc<Session>,
}

impl SessionCookieLayer {
    /// A layer with no session cookie yet.
    pub fn new() -> SessionCookieLayer {
        SessionCookieLayer::default()
    }
}

#[cfg(test)]
impl SessionCookieLayer {
    /// Whether both layers hold the same session.
    pub(crate) fn shares_session_with(&self, other: &SessionCookieLayer) -> bool {
        Arc::ptr_eq(&self.session, &other.session)
    }
}

impl<S> Layer<S> for SessionCookieLayer {
    type Service = SessionCookie<S>;

    fn layer(&self, inner: S) -> SessionCookie<S> {
        SessionCookie {
            inner,
            session: self.session.clone(),
        }
    }
}

/// Sends Medusa's session cookie with each request (replacing any `Cookie` header once one is
/// held), stores the one Medusa sets, and removes every `Set-Cookie` from the response.
#[derive(Clone, Debug)]
pub struct SessionCookie<S> {
    inner: S,
    session: Arc<Session>,
}

/// The session cookie currently held, as the `Cookie` header value `connect.sid=VALUE`.
#[derive(Default)]
struct Session {
    cookie: ArcSwapOption<HeaderValue>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The cookie is a credential of Medusa's: never printed.
        f.debug_struct("Session")
            .field("held", &self.cookie.load().is_some())
            .finish()
    }
}

impl Session {
    /// Remember Medusa's session cookie and remove every `Set-Cookie`.
    fn capture(&self, headers: &mut HeaderMap) {
        let mut found = None;
        if let http::header::Entry::Occupied(e) = headers.entry(SET_COOKIE) {
            for v in e.remove_entry_mult().1 {
                if let Some(pair) = session_pair(&v) {
                    found = Some(pair);
                }
            }
        }
        if let Some(mut pair) = found {
            let current = self.cookie.load();
            if current.as_deref().map(HeaderValue::as_bytes) != Some(pair.as_bytes()) {
                pair.set_sensitive(true);
                self.cookie.store(Some(Arc::new(pair)));
                tracing::debug!("stored a new Medusa session cookie");
            }
        }
    }
}

impl<S> SessionCookie<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, RB> Service<Request<B>> for SessionCookie<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = SessionCookieFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(cookie) = self.session.cookie.load_full() {
            req.headers_mut().insert(COOKIE, (*cookie).clone());
        }
        SessionCookieFuture {
            future: self.inner.call(req),
            session: self.session.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Future of [`SessionCookie`].
    pub struct SessionCookieFuture<F> {
        #[pin]
        future: F,
        session: Arc<Session>,
    }
}

impl<F, RB, E> Future for SessionCookieFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut resp = ready!(this.future.poll(cx))?;
        this.session.capture(resp.headers_mut());
        Poll::Ready(Ok(resp))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Mutex;
    use tower::ServiceExt;

    /// A stand-in for Medusa: answers with the `Set-Cookie` values queued for the next call
    /// and records the `Cookie` header of each request.
    #[derive(Clone, Default)]
    struct Medusa {
        set_cookies: Arc<Mutex<Vec<&'static str>>>,
        cookies: Arc<Mutex<Vec<Option<HeaderValue>>>>,
    }

    impl Medusa {
        fn service(
            &self,
        ) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone
        {
            let me = self.clone();
            tower::service_fn(move |req: Request<()>| {
                me.cookies
                    .lock()
                    .unwrap()
                    .push(req.headers().get(COOKIE).cloned());
                let mut resp = Response::new(());
                for v in me.set_cookies.lock().unwrap().drain(..) {
                    resp.headers_mut()
                        .append(SET_COOKIE, HeaderValue::from_static(v));
                }
                async move { Ok::<_, Infallible>(resp) }
            })
        }

        fn answer_with(&self, set_cookies: &[&'static str]) {
            *self.set_cookies.lock().unwrap() = set_cookies.to_vec();
        }

        fn last_cookie(&self) -> Option<HeaderValue> {
            self.cookies.lock().unwrap().last().cloned().flatten()
        }
    }

    async fn call<S>(svc: &SessionCookie<S>) -> Response<()>
    where
        S: Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone,
    {
        svc.clone().oneshot(Request::new(())).await.unwrap()
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
    async fn the_session_cookie_is_captured_every_set_cookie_stripped_and_sent_back() {
        let medusa = Medusa::default();
        let svc = SessionCookieLayer::new().layer(medusa.service());
        // No cookie held yet: none sent.
        medusa.answer_with(&["a=1", "connect.sid=s1; Path=/; HttpOnly"]);
        let resp = call(&svc).await;
        assert_eq!(medusa.last_cookie(), None);
        assert!(
            resp.headers().get(SET_COOKIE).is_none(),
            "never to a client"
        );
        // Sent back from then on, marked sensitive.
        let resp = call(&svc).await;
        let sent = medusa.last_cookie().unwrap();
        assert_eq!(sent, "connect.sid=s1");
        assert!(sent.is_sensitive());
        assert!(resp.headers().get(SET_COOKIE).is_none());
        // A new session replaces the old one; other cookies are stripped, not kept.
        medusa.answer_with(&["connect.sid=s2; Path=/", "b=2"]);
        let resp = call(&svc).await;
        assert!(resp.headers().get(SET_COOKIE).is_none());
        call(&svc).await;
        assert_eq!(medusa.last_cookie().unwrap(), "connect.sid=s2");
    }

    #[tokio::test]
    async fn a_cookie_held_replaces_the_request_s_cookie_header() {
        let medusa = Medusa::default();
        let svc = SessionCookieLayer::new().layer(medusa.service());
        medusa.answer_with(&["connect.sid=s1"]);
        call(&svc).await;
        let mut req = Request::new(());
        req.headers_mut()
            .insert(COOKIE, HeaderValue::from_static("client=secret"));
        svc.clone().oneshot(req).await.unwrap();
        assert_eq!(medusa.last_cookie().unwrap(), "connect.sid=s1");
    }

    #[tokio::test]
    async fn an_oversized_session_cookie_is_ignored_but_still_stripped() {
        let medusa = Medusa::default();
        let svc = SessionCookieLayer::new().layer(medusa.service());
        let huge: &'static str = Box::leak(
            format!("connect.sid={}; Path=/", "x".repeat(MAX_SESSION_COOKIE)).into_boxed_str(),
        );
        medusa.answer_with(&[huge]);
        let resp = call(&svc).await;
        assert!(resp.headers().get(SET_COOKIE).is_none());
        call(&svc).await;
        assert_eq!(medusa.last_cookie(), None, "not stored");
    }

    #[tokio::test]
    async fn services_of_one_layer_share_the_session() {
        let medusa = Medusa::default();
        let layer = SessionCookieLayer::new();
        let first = layer.layer(medusa.service());
        let second = layer.layer(medusa.service());
        medusa.answer_with(&["connect.sid=shared"]);
        call(&first).await;
        call(&second).await;
        assert_eq!(medusa.last_cookie().unwrap(), "connect.sid=shared");
        assert_eq!(
            format!("{:?}", layer),
            "SessionCookieLayer { session: Session { held: true } }"
        );
    }
}
