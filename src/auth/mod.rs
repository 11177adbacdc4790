//! The credential: obtaining a token, caching it, refreshing it ahead of expiry, and
//! invalidating it when Medusa rejects it.
//!
//! One background task, the *login driver* ([`TokenManager::spawn_driver`]), performs every
//! login; requests never log in themselves. That gives single flight for free (there is only
//! one driver), makes a login immune to client cancellation (no request owns it), and bounds
//! logins by the driver's backoff instead of by traffic.
//!
//! ```text
//!   request ──token()──► cached token ──► Arc<Token>             (steady state: no waiting)
//!                          │ none
//!                          ├─ driver backing off ──► Err(TokenError + retry_after)  (at once)
//!                          └─ notify driver, wait for the status to change ──► cache
//!   driver: loop { sleep until refresh_at or demand; login (login_timeout); cache or back off }
//! ```
//!
//! A 401 from Medusa costs the token only once Medusa confirms that the token itself is
//! rejected ([`TokenManager::confirm_rejected`], [`check`]): a route that answers 401 for its
//! own reasons must not make the proxy log in, let alone back off. A confirmed rejection logs
//! in again at once; only when the token of *that* login is rejected too, before it served a
//! request, does the driver back off as after a failed login.
//!
//! Where things live: [`Token`] and its [`schedule`] in `token.rs`; the moka cache and the
//! views derived from it in `cache.rs`; the driver's state machine in `driver.rs`; logins per
//! flavor in [`login`], reading Medusa's answers in `credential.rs`; [`TokenError`] and
//! [`login::LoginError`] in `error.rs`; the 401 check in [`check`]; the backoff in
//! [`backoff`]; JWT claims in [`jwt`]; building a manager without the proxy's config file in
//! [`TokenManagerBuilder`] (`builder.rs`).
//!
//! ```no_run
//! use medusa_auth_proxy::auth::{Flavor, SecretSource, TokenManager};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let tokens = TokenManager::builder("http://127.0.0.1:9000", Flavor::V2)
//!     .email("admin@example.com")
//!     .secret(SecretSource::Env("MEDUSA_PASSWORD".into()))
//!     .build()?;
//! let (_stop, stop_rx) = tokio::sync::watch::channel(false);
//! tokens.spawn_driver(stop_rx);
//! let token = tokens.token().await?; // waits for the first login
//! println!("{}: ***", token.header_name);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod backoff;
mod builder;
mod cache;
pub mod check;
mod credential;
mod driver;
mod error;
pub mod jwt;
pub mod login;
mod token;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::AuthSettings;
pub use crate::config::Flavor;
pub use crate::secret::{Secret, SecretSource};
use backoff::Backoff;
pub use builder::{BuildError, TokenManagerBuilder};
use cache::TokenCache;
use check::CHECK_EVERY;
use driver::{DriverState, Phase};
pub use error::TokenError;
use login::{Login, Verdict};
pub use token::{Token, schedule};

/// What the token manager reports for metrics: logins, the expiry of the credential held,
/// and 401 checks. Every method has a no-op default; the proxy's Prometheus registry
/// implements it (`Arc<Metrics>` is accepted wherever an `Arc<dyn TokenEvents>` is).
///
/// ```
/// use medusa_auth_proxy::auth::TokenEvents;
///
/// struct Logins(std::sync::atomic::AtomicU64);
/// impl TokenEvents for Logins {
///     fn login(&self, _kind: &'static str, ok: bool) {
///         if ok {
///             self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         }
///     }
/// }
/// ```
pub trait TokenEvents: Send + Sync + 'static {
    /// A login attempt ended. `kind`: `login`, `refresh` or `key_check`.
    fn login(&self, kind: &'static str, ok: bool) {
        let _ = (kind, ok);
    }
    /// The credential held stops being used at this Unix time (0: none held).
    fn token_expiry(&self, unix_seconds: f64) {
        let _ = unix_seconds;
    }
    /// A 401 check ran: `accepted`, `rejected` or `error`.
    fn token_check(&self, outcome: &'static str) {
        let _ = outcome;
    }
}

/// Reports nothing: the default of [`TokenManagerBuilder`].
///
/// ```
/// let events: std::sync::Arc<dyn medusa_auth_proxy::auth::TokenEvents> =
///     std::sync::Arc::new(medusa_auth_proxy::auth::NoEvents);
/// events.login("login", true);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl TokenEvents for NoEvents {}

struct Inner {
    cache: TokenCache,
    driver: DriverState,
    login: Login,
    settings: AuthSettings,
    backoff: Backoff,
    events: Arc<dyn TokenEvents>,
}

/// The token cache and its login driver. Cheap to clone (one `Arc`).
///
/// Build one with [`TokenManager::builder`] (embedding) or [`TokenManager::new`] (the proxy,
/// from its config), then start the driver with [`TokenManager::spawn_driver`].
///
/// ```no_run
/// # async fn demo(tokens: medusa_auth_proxy::auth::TokenManager) -> Result<(), medusa_auth_proxy::auth::TokenError> {
/// let token = tokens.token().await?;
/// // ... Medusa answered 401 to a request sent with it:
/// if tokens.confirm_rejected(&token).await {
///     let fresh = tokens.token().await?; // a new login; replay the request once with it
/// #   let _ = fresh;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("login", &self.inner.login)
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// Start building a manager for the Medusa at `url` (its base URL, with any path prefix)
    /// of `flavor`, without a config file. See [`TokenManagerBuilder`].
    ///
    /// ```no_run
    /// use medusa_auth_proxy::auth::{Flavor, SecretSource, TokenManager};
    /// # fn demo() -> Result<(), medusa_auth_proxy::auth::BuildError> {
    /// let tokens = TokenManager::builder("http://127.0.0.1:9000", Flavor::V1)
    ///     .email("admin@example.com")
    ///     .secret(SecretSource::Env("MEDUSA_PASSWORD".into()))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn builder(url: impl Into<String>, flavor: Flavor) -> TokenManagerBuilder {
        TokenManagerBuilder::new(url.into(), flavor)
    }

    /// Create the manager from a [`Login`] and the `[auth]` settings; call
    /// [`TokenManager::spawn_driver`] to start logging in. `events` receives the login and
    /// check counts (the proxy passes its `Arc<Metrics>`).
    ///
    /// ```no_run
    /// use medusa_auth_proxy::auth::{NoEvents, TokenManager, login::Login};
    /// use medusa_auth_proxy::config::Settings;
    /// use medusa_auth_proxy::upstream::Upstream;
    /// # fn demo(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    /// let secret = settings.auth.secret.load()?;
    /// let upstream = Upstream::new(&settings.upstream)?;
    /// let login = Login::new(upstream, settings.auth.flavor, settings.auth.email.clone(), secret);
    /// let tokens = TokenManager::new(login, settings.auth.clone(), std::sync::Arc::new(NoEvents));
    /// # Ok(()) }
    /// ```
    pub fn new(login: Login, settings: AuthSettings, events: Arc<dyn TokenEvents>) -> TokenManager {
        TokenManager::with_backoff(login, settings, Backoff::default(), events)
    }

    /// Like [`TokenManager::new`], with another backoff schedule for failed logins.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use medusa_auth_proxy::auth::{NoEvents, TokenManager, backoff::Backoff, login::Login};
    /// # fn demo(login: Login, settings: medusa_auth_proxy::config::AuthSettings) {
    /// let patient = Backoff { initial: Duration::from_secs(10), ..Backoff::default() };
    /// let tokens = TokenManager::with_backoff(login, settings, patient, std::sync::Arc::new(NoEvents));
    /// # }
    /// ```
    pub fn with_backoff(
        login: Login,
        settings: AuthSettings,
        backoff: Backoff,
        events: Arc<dyn TokenEvents>,
    ) -> TokenManager {
        TokenManager {
            inner: Arc::new(Inner {
                cache: TokenCache::new(events.clone()),
                driver: DriverState::new(),
                login,
                settings,
                backoff,
                events,
            }),
        }
    }

    /// Start the login driver (see the module docs). It stops when `shutdown` turns true.
    ///
    /// ```no_run
    /// # async fn demo(tokens: medusa_auth_proxy::auth::TokenManager) {
    /// let (stop, stop_rx) = tokio::sync::watch::channel(false);
    /// let driver = tokens.spawn_driver(stop_rx);
    /// // ...
    /// let _ = stop.send(true);
    /// let _ = driver.await;
    /// # }
    /// ```
    pub fn spawn_driver(&self, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.drive(shutdown).await })
    }

    /// The current token, waiting for an in-flight login if none is cached. Never starts a
    /// login of its own: it asks the driver, so a burst of N callers causes one login. While
    /// the driver backs off after a failed login, fails at once.
    ///
    /// ```no_run
    /// # async fn demo(tokens: medusa_auth_proxy::auth::TokenManager) -> Result<(), medusa_auth_proxy::auth::TokenError> {
    /// let token = tokens.token().await?;
    /// let mut req = http::Request::new(());
    /// req.headers_mut().insert(token.header_name.clone(), token.header.clone());
    /// # Ok(()) }
    /// ```
    pub async fn token(&self) -> Result<Arc<Token>, TokenError> {
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        if let Some(t) = self.inner.cache.get().await {
            return Ok(t);
        }
        self.wait_for_token().await
    }

    /// The current token if one is cached and usable now, without waiting: the request
    /// path's hot path (no allocation, no await). `None`: call [`TokenManager::token`].
    pub fn cached(&self) -> Option<Arc<Token>> {
        self.inner.cache.usable()
    }

    async fn wait_for_token(&self) -> Result<Arc<Token>, TokenError> {
        // Bounded: the driver's login is bounded by login_timeout.
        let deadline = Instant::now() + self.inner.settings.login_timeout + Duration::from_secs(1);
        let mut rx = self.inner.driver.status.subscribe();
        loop {
            // Subscribe (above) before looking at the cache, so an insert that happens after
            // the miss is followed by a status change we will see.
            if let Some(t) = self.inner.cache.get().await {
                return Ok(t);
            }
            if let Phase::BackingOff { until, error } = &*rx.borrow_and_update() {
                let now = Instant::now();
                if *until > now {
                    return Err(TokenError::LoginFailed {
                        source: error.clone(),
                        retry_after: *until - now,
                    });
                }
            }
            self.inner.driver.demand.notify_one();
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Err(TokenError::Timeout),
            }
        }
    }

    /// Medusa answered 401 to a request sent with `token`: is the token itself rejected?
    ///
    /// Asks Medusa once ([`Login::check`]), shared by every concurrent caller for the same
    /// token and at most once per [`CHECK_EVERY`] per token (the verdict is reused meanwhile).
    /// `true`: Medusa confirmed the rejection, the token is dropped (only if it is still the
    /// cached one) and a new login is under way; the caller may wait for
    /// [`TokenManager::token`] and replay. `false`: the token works (the 401 was about the
    /// route; the token now counts as verified), or the check could not tell (transport
    /// error, timeout, 5xx): the caller passes Medusa's 401 on and the token stays, because a
    /// token must never be lost to a failure that is not Medusa's rejection of it.
    ///
    /// The check and its consequence run in a task of their own, so a client that goes away
    /// mid-check neither wastes the check nor lets the next 401 start another one.
    ///
    /// ```no_run
    /// # async fn demo(tokens: medusa_auth_proxy::auth::TokenManager, token: std::sync::Arc<medusa_auth_proxy::auth::Token>) {
    /// if !tokens.confirm_rejected(&token).await {
    ///     // pass Medusa's 401 on: it was about the route (or nobody could tell)
    /// }
    /// # }
    /// ```
    pub async fn confirm_rejected(&self, token: &Arc<Token>) -> bool {
        let me = self.clone();
        let token = token.clone();
        let task = tokio::spawn(async move {
            let timeout = me.inner.settings.login_timeout;
            let ask = async {
                let login = &me.inner.login;
                tokio::time::timeout(
                    timeout,
                    login.check(token.flavor, &token.header_name, &token.header),
                )
                .await
                .unwrap_or(Verdict::Unknown)
            };
            let (verdict, ran) = token.check.verdict(CHECK_EVERY, ask).await;
            if ran {
                me.inner.events.token_check(verdict.as_str());
                tracing::info!(
                    token_id = token.id,
                    verdict = verdict.as_str(),
                    "checked the token after a 401 from Medusa"
                );
                if verdict == Verdict::Accepted {
                    token.mark_verified();
                }
            }
            if verdict == Verdict::Rejected {
                // Every caller, not only the one that ran the check: one that reused the
                // verdict may get here before the checker dropped the token, and must not
                // find it still cached (it would see "no new token" and answer 503).
                // Idempotent: only the first removes it.
                me.reject(&token).await;
            }
            verdict == Verdict::Rejected
        });
        // The task panicking is a bug, not a rejection: keep the token.
        task.await.unwrap_or(false)
    }

    /// Medusa confirmed that `token` is rejected. Drop it only if it is still the cached one:
    /// a burst of 401s, or a late 401 for a token already replaced, must not throw away a
    /// newer token (and cause another login). The driver logs in again at once, unless this
    /// token came from the login after a rejection and never worked: then it backs off.
    /// [`TokenManager::confirm_rejected`] calls this once Medusa confirmed a 401.
    ///
    /// ```no_run
    /// # async fn demo(tokens: medusa_auth_proxy::auth::TokenManager) -> Result<(), medusa_auth_proxy::auth::TokenError> {
    /// let old = tokens.token().await?;
    /// tokens.reject(&old).await; // dropped, if still cached
    /// tokens.reject(&old).await; // no effect
    /// # Ok(()) }
    /// ```
    pub async fn reject(&self, token: &Token) {
        if self.inner.cache.remove_if(token.id).await {
            self.inner.driver.rejected(token);
            tracing::info!(
                token_id = token.id,
                "Medusa rejected the cached token; logging in again"
            );
        }
    }

    /// Drop the cached token (e.g. the credential changed) and log in again.
    ///
    /// ```no_run
    /// # async fn demo(tokens: medusa_auth_proxy::auth::TokenManager) {
    /// tokens.invalidate().await;
    /// # }
    /// ```
    pub async fn invalidate(&self) {
        let me = self.clone();
        // In a task: a caller that goes away cannot stop it between the cache and its views.
        let _ = tokio::spawn(async move {
            me.inner.cache.invalidate().await;
            me.inner.driver.demand.notify_one();
        })
        .await;
    }

    /// The login in use: its flavor, and [`Login::set_credentials`] for a new credential.
    ///
    /// ```no_run
    /// # fn demo(tokens: medusa_auth_proxy::auth::TokenManager) {
    /// println!("flavor {}", tokens.login().flavor().as_str());
    /// # }
    /// ```
    pub fn login(&self) -> &Login {
        &self.inner.login
    }

    /// The Medusa user id of the most recent token that named one, if any (for rules about
    /// the proxy's own user, checked before a request waits for a token). No lock, no await.
    ///
    /// ```no_run
    /// # fn demo(tokens: medusa_auth_proxy::auth::TokenManager) {
    /// let hint = tokens.user_id_hint();
    /// let own: Option<&str> = hint.as_deref().map(String::as_str);
    /// # let _ = own;
    /// # }
    /// ```
    pub fn user_id_hint(&self) -> Option<Arc<String>> {
        self.inner.cache.user_id_hint()
    }

    /// `Ok(remaining usable time)` while a token is held, else the reason, safe to show
    /// anyone who can reach the ops port (no account, no secret source).
    ///
    /// ```no_run
    /// # async fn demo(tokens: medusa_auth_proxy::auth::TokenManager) {
    /// match tokens.readiness().await {
    ///     Ok(left) => println!("ready for {left:?}"),
    ///     Err(reason) => println!("not ready: {reason}"),
    /// }
    /// # }
    /// ```
    pub async fn readiness(&self) -> Result<Duration, String> {
        if let Some(t) = self.inner.cache.get().await {
            return Ok(t.usable_until.saturating_duration_since(Instant::now()));
        }
        Err(match &*self.inner.driver.status.borrow() {
            Phase::BackingOff { error, .. } => {
                format!("login failed: {}", error.public_summary())
            }
            Phase::LoggingIn | Phase::Ready => "no token yet: logging in to Medusa".to_owned(),
        })
    }
}

#[cfg(test)]
impl TokenManager {
    /// Tests only: hold a token as if the driver had just obtained one (a static key that
    /// names `user_id`), with no Medusa, no login and no driver; returns it. A `user_id` sets
    /// [`TokenManager::user_id_hint`], as a login naming one does.
    pub(crate) async fn seed_token(&self, user_id: Option<&str>) -> Arc<Token> {
        use std::sync::atomic::{AtomicU64, Ordering};
        // Far above the driver's ids (it counts from 1), so "still the cached one" checks
        // never mistake a seeded token for one of the driver's.
        static NEXT: AtomicU64 = AtomicU64::new(1 << 40);
        let cred = login::Credential {
            value: Secret::new("seeded-test-key".into()),
            flavor: Flavor::V1ApiToken,
            how: login::Obtained::KeyCheck,
            user_id: user_id.map(str::to_owned),
        };
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let token = Token::new(cred, &self.inner.settings, id, false)
            .map(Arc::new)
            .expect("a static key always makes a token");
        self.inner.cache.insert(token.clone()).await;
        token
    }
}
