//! `inject`: the credential. Every request leaves with the current Medusa token in its
//! credential header (marked sensitive); a request whose answer is 401 asks Medusa whether
//! the token itself is rejected (one check per token at a time, see `auth::check`) before the
//! token is dropped, and is then sent once more with the next token if its body can be
//! replayed ([`Replayable`]). Medusa's own 401 reaches the caller when the 401 was about the
//! route, when the check could not tell, or when the body was streamed.
//!
//! This is the layer a Rust program uses to talk to Medusa through its own HTTP client: wrap
//! any `tower::Service<http::Request<B>>` (hyper-util's legacy `Client`, say) in
//! [`CredentialLayer`] and it never handles the credential.
//!
//! The hot path (a cached token, no 401) is a plain state machine around the inner future;
//! waiting for a login and the 401 path are boxed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};

use crate::auth::{Token, TokenError, TokenManager};
pub use crate::upstream::Replayable;

/// Where [`Credential`] gets its tokens: [`TokenManager`] in the product; a stand-in in
/// tests. Implement it to put something between the layer and the manager, e.g. to count
/// confirmed rejections:
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use medusa_auth_proxy::auth::{Token, TokenError, TokenManager};
/// use medusa_auth_proxy::proxy::inject::{CredentialLayer, Tokens};
///
/// #[derive(Clone)]
/// struct Counted {
///     tokens: TokenManager,
///     rejected: Arc<AtomicU64>,
/// }
///
/// impl Tokens for Counted {
///     fn cached(&self) -> Option<Arc<Token>> {
///         self.tokens.cached()
///     }
///     async fn token(&self) -> Result<Arc<Token>, TokenError> {
///         self.tokens.token().await
///     }
///     async fn confirm_rejected(&self, token: &Arc<Token>) -> bool {
///         let rejected = self.tokens.confirm_rejected(token).await;
///         if rejected {
///             self.rejected.fetch_add(1, Ordering::Relaxed);
///         }
///         rejected
///     }
/// }
///
/// # fn demo(tokens: TokenManager) {
/// let layer = CredentialLayer::new(Counted { tokens, rejected: Arc::default() });
/// # let _ = layer;
/// # }
/// ```
pub trait Tokens: Clone + Send + Sync + 'static {
    /// A usable token if one is cached, without waiting (the hot path).
    fn cached(&self) -> Option<Arc<Token>>;
    /// The current token, waiting for a login if needed.
    fn token(&self) -> impl Future<Output = Result<Arc<Token>, TokenError>> + Send;
    /// Medusa answered 401 to a request sent with `token`: is the token itself rejected?
    /// `true`: it was dropped and a new login is under way.
    fn confirm_rejected(&self, token: &Arc<Token>) -> impl Future<Output = bool> + Send;
}

impl Tokens for TokenManager {
    fn cached(&self) -> Option<Arc<Token>> {
        TokenManager::cached(self)
    }
    fn token(&self) -> impl Future<Output = Result<Arc<Token>, TokenError>> + Send {
        TokenManager::token(self)
    }
    fn confirm_rejected(&self, token: &Arc<Token>) -> impl Future<Output = bool> + Send {
        TokenManager::confirm_rejected(self, token)
    }
}

/// The request was sent a second time, with a new token, after Medusa rejected the first
/// (a response extension).
///
/// ```
/// use medusa_auth_proxy::proxy::inject::Replayed;
///
/// fn was_replayed<B>(resp: &http::Response<B>) -> bool {
///     resp.extensions().get::<Replayed>().is_some()
/// }
/// assert!(!was_replayed(&http::Response::new(())));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed;

/// Why a request through [`Credential`] failed. A 401 from Medusa is not an error: the
/// caller gets Medusa's response whenever there is one.
///
/// ```
/// use hyper_util::client::legacy::Error as ClientError;
/// use medusa_auth_proxy::proxy::inject::CredentialError;
///
/// /// What a program tells its user about one call through the layer.
/// fn report<B>(answer: Result<http::Response<B>, CredentialError<ClientError>>) -> String {
///     match answer {
///         Ok(resp) => format!("Medusa answered {}", resp.status()),
///         Err(CredentialError::Token(e)) => format!("no token, retry in {:?}: {e}", e.retry_after()),
///         Err(CredentialError::Rejected) => "the token was rejected; no new one yet".into(),
///         Err(CredentialError::Inner(e)) => format!("the HTTP client failed: {e}"),
///     }
/// }
/// assert_eq!(report::<()>(Err(CredentialError::Rejected)), "the token was rejected; no new one yet");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum CredentialError<E> {
    /// No token could be had (login failing, Medusa down): retry after
    /// [`TokenError::retry_after`].
    #[error(transparent)]
    Token(TokenError),
    /// Medusa rejected the token and the login that followed brought no new one.
    #[error("Medusa rejected the token and no new one is available")]
    Rejected,
    /// The inner service (the HTTP client) failed: no response from Medusa.
    #[error(transparent)]
    Inner(E),
}

/// Adds Medusa's credential to every request and handles a rejected token (see the module
/// documentation).
///
/// ```no_run
/// # async fn example(tokens: medusa_auth_proxy::auth::TokenManager) {
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use medusa_auth_proxy::proxy::inject::CredentialLayer;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
/// let medusa = ServiceBuilder::new()
///     .layer(CredentialLayer::new(tokens))
///     .service(client);
/// let req = http::Request::get("http://127.0.0.1:9000/admin/products")
///     .body(Empty::new())
///     .unwrap();
/// let resp = medusa.oneshot(req).await.unwrap();
/// println!("{}", resp.status());
/// # }
/// ```
#[derive(Clone)]
pub struct CredentialLayer<T = TokenManager> {
    tokens: T,
}

impl<T> CredentialLayer<T> {
    /// Use the tokens of `tokens` (a [`TokenManager`] whose login driver runs).
    pub fn new(tokens: T) -> CredentialLayer<T> {
        CredentialLayer { tokens }
    }
}

impl<S, T: Clone> Layer<S> for CredentialLayer<T> {
    type Service = Credential<S, T>;
    fn layer(&self, inner: S) -> Credential<S, T> {
        Credential {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// The service of [`CredentialLayer`]: sends each request to `S` with the token of `T` in
/// its credential header, and handles a 401 as the module documentation says. Its error is
/// [`CredentialError`] of `S`'s; a request body must be [`Replayable`] (`None` is fine: such
/// a request is never sent twice).
///
/// ```no_run
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::{Client, connect::HttpConnector};
/// use hyper_util::rt::TokioExecutor;
/// use medusa_auth_proxy::auth::TokenManager;
/// use medusa_auth_proxy::proxy::inject::{Credential, CredentialLayer};
/// use tower::Layer;
///
/// /// A client for Medusa with the credential managed, as a named type.
/// type Medusa = Credential<Client<HttpConnector, Full<Bytes>>>;
///
/// fn medusa(tokens: TokenManager) -> Medusa {
///     let client = Client::builder(TokioExecutor::new()).build_http();
///     CredentialLayer::new(tokens).layer(client)
/// }
/// ```
#[derive(Clone)]
pub struct Credential<S, T = TokenManager> {
    inner: S,
    tokens: T,
}

type BoxFuture<RB, E> =
    Pin<Box<dyn Future<Output = Result<Response<RB>, CredentialError<E>>> + Send + 'static>>;

impl<S, T, B, RB> Service<Request<B>> for Credential<S, T>
where
    T: Tokens,
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    B: Replayable + Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = CredentialError<S::Error>;
    type Future = CredentialFuture<S::Future, S, T, B, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(CredentialError::Inner)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(token) = self.tokens.cached() else {
            // No usable token cached: wait for the login driver (one login for a burst).
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            let tokens = self.tokens.clone();
            return CredentialFuture::Slow {
                fut: Box::pin(async move {
                    let token = tokens.token().await.map_err(CredentialError::Token)?;
                    let replay = replay_of(&req);
                    authorize(&mut req, &token);
                    let resp = inner
                        .clone()
                        .oneshot(req)
                        .await
                        .map_err(CredentialError::Inner)?;
                    answered(
                        resp,
                        Ctx {
                            token,
                            replay,
                            inner,
                            tokens,
                        },
                    )
                    .await
                }),
            };
        };
        let replay = replay_of(&req);
        authorize(&mut req, &token);
        CredentialFuture::Sending {
            fut: self.inner.call(req),
            ctx: Some(Ctx {
                token,
                replay,
                inner: self.inner.clone(),
                tokens: self.tokens.clone(),
            }),
        }
    }
}

/// What a 401 needs to verify the token and replay the request.
pub struct Ctx<S, T, B> {
    token: Arc<Token>,
    replay: Option<Request<B>>,
    inner: S,
    tokens: T,
}

fn replay_of<B: Replayable>(req: &Request<B>) -> Option<Request<B>> {
    let body = req.body().replay()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

fn authorize<B>(req: &mut Request<B>, token: &Token) {
    req.headers_mut()
        .insert(token.header_name.clone(), token.header.clone());
}

pin_project_lite::pin_project! {
    /// The future of [`Credential`]: a plain state machine around the inner service's
    /// future while the token was cached and no 401 came back; boxed otherwise.
    // pin-project-lite takes no doc comments on fields: the variants describe theirs.
    #[allow(missing_docs)]
    #[project = Proj]
    pub enum CredentialFuture<F, S, T, B, RB> where S: Service<Request<B>> {
        /// Sent with a cached token: `fut` is the inner service's future, `ctx` what a 401
        /// needs to check the token and replay (taken when `fut` completes).
        Sending { #[pin] fut: F, ctx: Option<Ctx<S, T, B>> },
        /// Waiting for a login before sending, or handling a 401 (check, then replay): `fut`
        /// gives the final answer.
        Slow { fut: BoxFuture<RB, S::Error> },
    }
}

impl<F, S, T, B, RB> Future for CredentialFuture<F, S, T, B, RB>
where
    T: Tokens,
    F: Future<Output = Result<Response<RB>, S::Error>>,
    S: Service<Request<B>, Response = Response<RB>> + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    B: Replayable + Send + 'static,
    RB: Send + 'static,
{
    type Output = Result<Response<RB>, CredentialError<S::Error>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                Proj::Sending { fut, ctx } => {
                    let resp = ready!(fut.poll(cx)).map_err(CredentialError::Inner)?;
                    let Some(ctx) = ctx.take() else {
                        return Poll::Ready(Err(CredentialError::Rejected));
                    };
                    if resp.status() != StatusCode::UNAUTHORIZED {
                        ctx.token.mark_verified();
                        return Poll::Ready(Ok(resp));
                    }
                    let fut = Box::pin(answered(resp, ctx));
                    self.set(CredentialFuture::Slow { fut });
                }
                Proj::Slow { fut } => return fut.as_mut().poll(cx),
            }
        }
    }
}

/// Medusa answered `resp` to a request sent with `ctx.token`.
///
/// A 401 is about our token (rotated secret, early expiry) or about the route (a customer
/// route, a plugin's own auth): only Medusa can tell. Unless it confirms the token is
/// rejected, the caller gets Medusa's own 401 and nobody else is affected. Confirmed: a new
/// login is under way; the request is replayed once with the next token if its body was
/// kept, never more than once.
async fn answered<S, T, B, RB>(
    resp: Response<RB>,
    ctx: Ctx<S, T, B>,
) -> Result<Response<RB>, CredentialError<S::Error>>
where
    T: Tokens,
    S: Service<Request<B>, Response = Response<RB>>,
{
    if resp.status() != StatusCode::UNAUTHORIZED {
        ctx.token.mark_verified();
        return Ok(resp);
    }
    if !ctx.tokens.confirm_rejected(&ctx.token).await {
        return Ok(resp);
    }
    let Some(mut again) = ctx.replay else {
        tracing::info!("401 for a streamed body: not replayable, passing the 401 on");
        return Ok(resp);
    };
    drop(resp);
    let fresh = ctx.tokens.token().await.map_err(CredentialError::Token)?;
    if fresh.id == ctx.token.id {
        return Err(CredentialError::Rejected);
    }
    authorize(&mut again, &fresh);
    let mut resp = ctx
        .inner
        .oneshot(again)
        .await
        .map_err(CredentialError::Inner)?;
    if resp.status() == StatusCode::UNAUTHORIZED {
        // The fresh token too, or the route? Ask again; if the fresh token is rejected as
        // well, the driver backs off (a Medusa that rejects every token it issues).
        ctx.tokens.confirm_rejected(&fresh).await;
    } else {
        fresh.mark_verified();
    }
    tracing::debug!(status = resp.status().as_u16(), "replayed after 401");
    resp.extensions_mut().insert(Replayed);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{Either, Empty, Full};
    use tower::service_fn;

    use super::*;

    /// Tokens from a list: `cached` is the current one (none: the slow path); a confirmed
    /// rejection moves to the next, as the driver's relogin would.
    #[derive(Clone)]
    struct Fake {
        tokens: Arc<Mutex<Vec<Arc<Token>>>>,
        cache: bool,
        rejects: bool,
        checks: Arc<AtomicUsize>,
        waits: Arc<AtomicUsize>,
    }

    impl Fake {
        fn new(n: u64, rejects: bool) -> Fake {
            Fake {
                tokens: Arc::new(Mutex::new(
                    (1..=n)
                        .map(|i| Token::for_tests(i, &format!("key-{i}"), Some("user_01")))
                        .collect(),
                )),
                cache: true,
                rejects,
                checks: Arc::default(),
                waits: Arc::default(),
            }
        }
        fn current(&self) -> Arc<Token> {
            self.tokens.lock().unwrap()[0].clone()
        }
    }

    impl Tokens for Fake {
        fn cached(&self) -> Option<Arc<Token>> {
            self.cache.then(|| self.current())
        }
        async fn token(&self) -> Result<Arc<Token>, TokenError> {
            self.waits.fetch_add(1, Ordering::SeqCst);
            Ok(self.current())
        }
        async fn confirm_rejected(&self, token: &Arc<Token>) -> bool {
            self.checks.fetch_add(1, Ordering::SeqCst);
            if !self.rejects {
                return false;
            }
            let mut list = self.tokens.lock().unwrap();
            if list[0].id == token.id && list.len() > 1 {
                list.remove(0);
            }
            true
        }
    }

    /// A Medusa stand-in that answers 401 to the tokens in `rejected` and records the
    /// credential each request carried.
    fn medusa(
        rejected: &'static [&'static str],
        seen: Arc<Mutex<Vec<String>>>,
    ) -> impl Service<
        Request<Either<Full<Bytes>, Streamed>>,
        Response = Response<Empty<Bytes>>,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        service_fn(move |req: Request<Either<Full<Bytes>, Streamed>>| {
            let key = req
                .headers()
                .get("x-medusa-access-token")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let status = if rejected.contains(&key.as_str()) {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            };
            seen.lock().unwrap().push(key);
            async move {
                let mut resp = Response::new(Empty::new());
                *resp.status_mut() = status;
                Ok(resp)
            }
        })
    }

    /// A body that streams: never replayable.
    struct Streamed;
    impl Replayable for Streamed {
        fn replay(&self) -> Option<Self> {
            None
        }
    }

    fn get() -> Request<Either<Full<Bytes>, Streamed>> {
        Request::get("/admin/products")
            .body(Either::Left(Full::new(Bytes::new())))
            .unwrap()
    }

    #[tokio::test]
    async fn the_cached_token_is_sent_and_marked_verified() {
        let fake = Fake::new(1, false);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = CredentialLayer::new(fake.clone()).layer(medusa(&[], seen.clone()));
        let resp = svc.oneshot(get()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(*seen.lock().unwrap(), ["key-1"]);
        assert!(fake.current().is_verified());
        assert_eq!(
            fake.waits.load(Ordering::SeqCst),
            0,
            "the hot path does not wait"
        );
        assert!(resp.extensions().get::<Replayed>().is_none());
    }

    #[tokio::test]
    async fn a_401_for_the_token_is_checked_once_and_replayed_once_with_the_next() {
        let fake = Fake::new(2, true);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = CredentialLayer::new(fake.clone()).layer(medusa(&["key-1"], seen.clone()));
        let resp = svc.oneshot(get()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(*seen.lock().unwrap(), ["key-1", "key-2"]);
        assert_eq!(fake.checks.load(Ordering::SeqCst), 1);
        assert!(resp.extensions().get::<Replayed>().is_some());
        assert!(fake.current().is_verified());
    }

    #[tokio::test]
    async fn a_401_about_the_route_reaches_the_client_as_is() {
        let fake = Fake::new(2, false);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = CredentialLayer::new(fake.clone()).layer(medusa(&["key-1"], seen.clone()));
        let resp = svc.oneshot(get()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(*seen.lock().unwrap(), ["key-1"], "no replay");
        assert_eq!(fake.checks.load(Ordering::SeqCst), 1);
        assert_eq!(fake.current().id, 1, "the token is kept");
    }

    #[tokio::test]
    async fn a_streamed_body_is_never_sent_twice() {
        let fake = Fake::new(2, true);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = CredentialLayer::new(fake.clone()).layer(medusa(&["key-1"], seen.clone()));
        let req = Request::post("/admin/products")
            .body(Either::Right(Streamed))
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(*seen.lock().unwrap(), ["key-1"]);
        assert_eq!(
            fake.checks.load(Ordering::SeqCst),
            1,
            "the token is still checked"
        );
    }

    #[tokio::test]
    async fn a_replay_rejected_again_is_checked_and_not_replayed_again() {
        let fake = Fake::new(2, true);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc =
            CredentialLayer::new(fake.clone()).layer(medusa(&["key-1", "key-2"], seen.clone()));
        let resp = svc.oneshot(get()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            *seen.lock().unwrap(),
            ["key-1", "key-2"],
            "sent at most twice"
        );
        assert_eq!(fake.checks.load(Ordering::SeqCst), 2);
        assert!(resp.extensions().get::<Replayed>().is_some());
    }

    #[tokio::test]
    async fn no_new_token_after_a_confirmed_rejection_is_an_error_not_a_loop() {
        let fake = Fake::new(1, true);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = CredentialLayer::new(fake.clone()).layer(medusa(&["key-1"], seen.clone()));
        let err = svc.oneshot(get()).await.unwrap_err();
        assert!(matches!(err, CredentialError::Rejected), "{err:?}");
        assert_eq!(*seen.lock().unwrap(), ["key-1"]);
    }

    #[tokio::test]
    async fn without_a_cached_token_the_request_waits_for_one() {
        let mut fake = Fake::new(1, false);
        fake.cache = false;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = CredentialLayer::new(fake.clone()).layer(medusa(&[], seen.clone()));
        let resp = svc.oneshot(get()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(fake.waits.load(Ordering::SeqCst), 1);
        assert_eq!(*seen.lock().unwrap(), ["key-1"]);
    }

    #[tokio::test]
    async fn the_inner_error_is_passed_on() {
        let fake = Fake::new(1, false);
        let svc = CredentialLayer::new(fake).layer(service_fn(
            |_: Request<Either<Full<Bytes>, Streamed>>| async {
                Err::<Response<Empty<Bytes>>, _>("broken")
            },
        ));
        let err = svc.oneshot(get()).await.unwrap_err();
        assert!(matches!(err, CredentialError::Inner("broken")), "{err:?}");
    }
}
