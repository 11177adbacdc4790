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
/// tests.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed;

/// Why a request through [`Credential`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError<E> {
    /// No token could be had (login failing, Medusa down): retry after
    /// [`TokenError::retry_after`].
    #[error(transparent)]
    Token(TokenError),
    /// Medusa rejected the token and the login that followed brought no new one.
    #[error("Medusa rejected the token and no new one is available")]
    Rejected,
    /// The inner service failed.
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

/// The service of [`CredentialLayer`].
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
    /// The future of [`Credential`].
    #[project = Proj]
    pub enum CredentialFuture<F, S, T, B, RB> where S: Service<Request<B>> {
        /// Sent with a cached token.
        Sending { #[pin] fut: F, ctx: Option<Ctx<S, T, B>> },
        /// Waiting for a login, or handling a 401.
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
