//! The credential: obtaining a token, caching it, refreshing it ahead of expiry, and
//! invalidating it when Medusa rejects it.
//!
//! One background task, the *login driver*, performs every login; requests never log in
//! themselves. That gives single flight for free (there is only one driver), makes a login
//! immune to client cancellation (no request owns it), and bounds logins by the driver's
//! backoff instead of by traffic.
//!
//! ```text
//!   request ──token()──► moka cache hit ──► Arc<Token>           (steady state: no waiting)
//!                          │ miss
//!                          ├─ driver backing off ──► Err(NoToken + Retry-After)   (503 at once)
//!                          └─ notify driver, wait for the status to change ──► cache
//!   driver: loop { sleep until refresh_at or demand; login (login_timeout); cache or back off }
//! ```
//!
//! A 401 from Medusa costs the token only once Medusa confirms that the token itself is
//! rejected ([`TokenManager::confirm_rejected`], [`check`]): a route that answers 401 for its
//! own reasons must not make the proxy log in, let alone back off. A confirmed rejection logs
//! in again at once; only when the token of *that* login is rejected too, before it served a
//! request, does the driver back off as after a failed login.

pub mod backoff;
pub mod check;
pub mod jwt;
pub mod login;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use moka::future::Cache;
use moka::ops::compute::Op;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::config::{AuthSettings, Flavor};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::secret::Secret;
use backoff::Backoff;
use check::{CHECK_EVERY, CheckGate};
use login::{Login, LoginError, Obtained, Verdict};

/// Why no token can be had (provisional alias; see the `auth` branch).
pub type TokenError = ProxyError;

/// A token as cached: the ready-made header value plus what the lifecycle needs.
pub struct Token {
    /// Identity of this token within the process, for "invalidate only if still cached".
    pub id: u64,
    /// The header that carries the credential (`Authorization`, or `x-medusa-access-token`).
    pub header_name: HeaderName,
    /// E.g. `Bearer <jwt>`, marked sensitive, built once per token and shared by every request.
    pub header: HeaderValue,
    /// The raw credential (a v2 refresh presents it again).
    secret: Secret,
    /// How it was obtained.
    pub how: Obtained,
    /// The flavor that produced it (never `Auto`): which route checks it.
    flavor: Flavor,
    pub user_id: Option<String>,
    pub received: Instant,
    pub lifetime: Duration,
    /// Requests stop using the token at this instant (the cache entry expires).
    pub usable_until: Instant,
    /// The driver starts renewing at this instant, ahead of `usable_until`.
    pub refresh_at: Instant,
    /// Set once Medusa accepted the token for a request (a non-401 answer) or a check.
    verified: AtomicBool,
    /// Obtained by the login that followed a confirmed rejection: if this one is rejected too
    /// before Medusa ever accepted it, logging in again at once could loop; back off instead.
    after_rejection: bool,
    /// Verifies a 401 for this token: single flight, at most one check per `CHECK_EVERY`.
    check: CheckGate,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .field("header_name", &self.header_name)
            .field("header", &"***")
            .field("how", &self.how)
            .field("user_id", &self.user_id)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Record that Medusa accepted this token. Cheap: a load first, so the cache line is
    /// written once per token rather than once per request.
    pub fn mark_verified(&self) {
        if !self.verified.load(Ordering::Relaxed) {
            self.verified.store(true, Ordering::Relaxed);
        }
    }

    pub fn is_verified(&self) -> bool {
        self.verified.load(Ordering::Relaxed)
    }
}

/// When to stop using a token and when to start renewing it, from its lifetime.
///
/// The token is used until `lifetime - margin`, where margin is `refresh_before_expiry`, or
/// half the lifetime when the lifetime is shorter than twice that (a 2 s token with a 60 s
/// margin would otherwise never be usable, and every request would log in). Renewal starts a
/// quarter of the usable time earlier (at most 5 minutes), so steady-state requests never
/// wait for a login.
pub fn schedule(lifetime: Duration, refresh_before_expiry: Duration) -> (Duration, Duration) {
    let margin = refresh_before_expiry.min(lifetime / 2);
    let usable_for = lifetime - margin;
    let lead = (usable_for / 4).min(Duration::from_secs(300));
    (usable_for, usable_for - lead)
}

/// What the driver is doing, as seen by requests and readiness.
#[derive(Debug, Clone)]
pub enum Phase {
    /// A login is in flight (or about to be): waiting for it is worthwhile.
    LoggingIn,
    /// The last login succeeded.
    Ready,
    /// The last login failed; the next attempt is at `until`.
    BackingOff { until: Instant, error: LoginError },
}

struct Inner {
    cache: Cache<(), Arc<Token>>,
    /// The cached token, mirrored for the request path: one atomic load and a clock read
    /// instead of a moka lookup per request. The moka entry stays the authority (expiry,
    /// conditional invalidation); this mirror is only read while `usable_until` is ahead.
    current: arc_swap::ArcSwapOption<Token>,
    status: watch::Sender<Phase>,
    demand: Notify,
    login: Login,
    settings: AuthSettings,
    backoff: Backoff,
    next_id: AtomicU64,
    /// A token obtained right after a confirmed rejection was rejected too, before Medusa ever
    /// accepted it: the next login waits for backoff.
    rejected_unverified: AtomicBool,
    /// The cached token was dropped because Medusa confirmed it is rejected: the next token
    /// is `after_rejection`.
    relogin: AtomicBool,
    metrics: Arc<Metrics>,
    /// The user id of the last token obtained (for the "own user" route rule).
    user_id: arc_swap::ArcSwapOption<String>,
    /// The one `ready` line is logged (the first credential held; later ones are refreshes).
    ready_logged: AtomicBool,
}

/// The token cache and its login driver. Cheap to clone.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

struct TokenExpiry;

impl moka::Expiry<(), Arc<Token>> for TokenExpiry {
    fn expire_after_create(
        &self,
        _key: &(),
        token: &Arc<Token>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(token.usable_until.saturating_duration_since(Instant::now()))
    }

    /// A renewal replaces the entry: the new token's own lifetime applies, not the old one's
    /// (moka's default keeps the old expiry on update, which would drop a fresh token early).
    fn expire_after_update(
        &self,
        _key: &(),
        token: &Arc<Token>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(token.usable_until.saturating_duration_since(Instant::now()))
    }
}

impl TokenManager {
    /// Create the manager; call [`TokenManager::spawn_driver`] to start logging in.
    pub fn new(login: Login, settings: AuthSettings, metrics: Arc<Metrics>) -> TokenManager {
        TokenManager::with_backoff(login, settings, Backoff::default(), metrics)
    }

    pub fn with_backoff(
        login: Login,
        settings: AuthSettings,
        backoff: Backoff,
        metrics: Arc<Metrics>,
    ) -> TokenManager {
        let cache = Cache::builder()
            .max_capacity(4)
            .expire_after(TokenExpiry)
            .build();
        let (status, _) = watch::channel(Phase::LoggingIn);
        TokenManager {
            inner: Arc::new(Inner {
                cache,
                current: arc_swap::ArcSwapOption::empty(),
                status,
                demand: Notify::new(),
                login,
                settings,
                backoff,
                next_id: AtomicU64::new(1),
                rejected_unverified: AtomicBool::new(false),
                ready_logged: AtomicBool::new(false),
                relogin: AtomicBool::new(false),
                user_id: arc_swap::ArcSwapOption::empty(),
                metrics,
            }),
        }
    }

    /// Start the login driver. It stops when `shutdown` fires.
    pub fn spawn_driver(&self, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.drive(shutdown).await })
    }

    /// The current token if one is cached and usable now, without waiting: the request
    /// path's fast path (no allocation, no await). `None`: call [`TokenManager::token`].
    pub fn cached(&self) -> Option<Arc<Token>> {
        match &*self.inner.current.load() {
            Some(t) if Instant::now() < t.usable_until => Some(t.clone()),
            _ => None,
        }
    }

    /// The current token, waiting for an in-flight login if none is cached. Never starts a
    /// login of its own: it asks the driver, so a burst of N callers causes one login.
    pub async fn token(&self) -> Result<Arc<Token>, ProxyError> {
        if let Some(t) = &*self.inner.current.load()
            && Instant::now() < t.usable_until
        {
            return Ok(t.clone());
        }
        if let Some(t) = self.inner.cache.get(&()).await {
            return Ok(t);
        }
        self.wait_for_token().await
    }

    async fn wait_for_token(&self) -> Result<Arc<Token>, ProxyError> {
        // Bounded: the driver's login is bounded by login_timeout.
        let deadline = Instant::now() + self.inner.settings.login_timeout + Duration::from_secs(1);
        let mut rx = self.inner.status.subscribe();
        loop {
            // Subscribe (above) before looking at the cache, so an insert that happens after
            // the miss is followed by a status change we will see.
            if let Some(t) = self.inner.cache.get(&()).await {
                return Ok(t);
            }
            if let Phase::BackingOff { until, error } = &*rx.borrow_and_update() {
                let now = Instant::now();
                if *until > now {
                    return Err(ProxyError::NoToken {
                        // Callers see the summary; the account is named in the log only.
                        reason: format!("login failed: {}", error.public_summary()),
                        retry_after: *until - now,
                    });
                }
            }
            self.inner.demand.notify_one();
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => {
                    return Err(ProxyError::NoToken {
                        reason: "timed out waiting for a login to Medusa".into(),
                        retry_after: Duration::from_secs(1),
                    });
                }
            }
        }
    }

    /// Medusa answered 401 to a request sent with `token`: is the token itself rejected?
    ///
    /// Asks Medusa once ([`Login::check`]), shared by every concurrent caller for the same
    /// token and at most once per [`CHECK_EVERY`] per token (the verdict is reused meanwhile).
    /// `true`: Medusa confirmed the rejection, the token is dropped ([`TokenManager::reject`])
    /// and a new login is under way; the caller may wait for [`TokenManager::token`] and
    /// replay. `false`: the token works (the 401 was about the route; the token now counts as
    /// verified), or the check could not tell (transport error, timeout, 5xx): the caller
    /// passes Medusa's 401 on and the token stays, because a token must never be lost to a
    /// failure that is not Medusa's rejection of it.
    ///
    /// The check and its consequence run in a task of their own, so a client that goes away
    /// mid-check neither wastes the check nor lets the next 401 start another one.
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
                me.inner.metrics.token_check(verdict.as_str());
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
    pub async fn reject(&self, token: &Token) {
        let id = token.id;
        let result = self
            .inner
            .cache
            .entry(())
            .and_compute_with(|cur| async move {
                match cur {
                    Some(e) if e.value().id == id => Op::Remove,
                    _ => Op::Nop,
                }
            })
            .await;
        if matches!(result, moka::ops::compute::CompResult::Removed(_)) {
            self.inner
                .current
                .rcu(|cur| cur.as_ref().filter(|c| c.id != id).cloned());
            self.inner.metrics.token_expiry(0.0);
            if token.after_rejection && !token.is_verified() {
                self.inner
                    .rejected_unverified
                    .store(true, Ordering::Relaxed);
            }
            self.inner.relogin.store(true, Ordering::Relaxed);
            tracing::info!(
                token_id = id,
                "Medusa rejected the cached token; logging in again"
            );
            self.inner.demand.notify_one();
        }
    }

    /// Drop the cached token (e.g. the credential changed) and log in again.
    pub async fn invalidate(&self) {
        self.inner.current.store(None);
        self.inner.metrics.token_expiry(0.0);
        self.inner.cache.invalidate(&()).await;
        self.inner.demand.notify_one();
    }

    pub fn login(&self) -> &Login {
        &self.inner.login
    }

    /// The Medusa user id of the most recent token, if known.
    pub fn user_id_hint(&self) -> Option<Arc<String>> {
        self.inner.user_id.load_full()
    }

    /// `Ok(remaining usable time)` while a token is held, else the reason.
    pub async fn readiness(&self) -> Result<Duration, String> {
        if let Some(t) = self.inner.cache.get(&()).await {
            return Ok(t.usable_until.saturating_duration_since(Instant::now()));
        }
        Err(match &*self.inner.status.borrow() {
            Phase::BackingOff { error, .. } => {
                format!("login failed: {}", error.public_summary())
            }
            Phase::LoggingIn | Phase::Ready => "no token yet: logging in to Medusa".to_owned(),
        })
    }

    async fn drive(&self, mut shutdown: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Sleep while a token is held and not yet due for renewal.
            if let Some(t) = self.inner.cache.get(&()).await {
                // The backoff resets only once Medusa accepted a token: a Medusa that issues
                // tokens and rejects every one of them must still see growing pauses.
                if t.is_verified() {
                    failures = 0;
                }
                if Instant::now() < t.refresh_at {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t.refresh_at) => {}
                        _ = self.inner.demand.notified() => {}
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
            } else if self
                .inner
                .rejected_unverified
                .swap(false, Ordering::Relaxed)
            {
                // The login after a confirmed rejection produced a token Medusa would not
                // accept either: logging in again at once could loop; back off like a failed
                // login.
                failures += 1;
                if self
                    .back_off(&mut failures, LoginError::TokenRejected, &mut shutdown)
                    .await
                {
                    return;
                }
                continue;
            }
            let current = self.inner.cache.get(&()).await;
            if current.is_none() {
                self.inner.status.send_replace(Phase::LoggingIn);
            }
            match self.login_once(current.as_deref()).await {
                Ok(token) => {
                    tracing::info!(
                        flavor = self.inner.login.flavor().as_str(),
                        kind = token.how.as_str(),
                        lifetime_s = token.lifetime.as_secs(),
                        refresh_in_s = token
                            .refresh_at
                            .saturating_duration_since(token.received)
                            .as_secs(),
                        user_id = token.user_id.as_deref().unwrap_or("-"),
                        "obtained a Medusa token"
                    );
                    if let Some(id) = &token.user_id {
                        self.inner.user_id.store(Some(Arc::new(id.clone())));
                    }
                    if token.after_rejection {
                        self.inner.relogin.store(false, Ordering::Relaxed);
                    }
                    self.inner.metrics.login(token.how.as_str(), true);
                    self.inner.metrics.token_expiry(unix_at(token.usable_until));
                    self.inner.cache.insert((), token.clone()).await;
                    self.inner.current.store(Some(token));
                    if !self.inner.ready_logged.swap(true, Ordering::Relaxed) {
                        tracing::info!("ready: holding a Medusa credential; forwarding requests");
                    }
                    self.inner.status.send_replace(Phase::Ready);
                }
                Err(error) => {
                    failures += 1;
                    let attempted = if self.inner.login.flavor().is_static() {
                        "key_check"
                    } else {
                        "login"
                    };
                    self.inner.metrics.login(attempted, false);
                    if error.is_bad_credentials() && self.inner.login.flavor().is_static() {
                        // The key itself was refused: stop using it (not ready) until a
                        // check succeeds again.
                        self.inner.cache.invalidate(&()).await;
                        self.inner.current.store(None);
                    }
                    if self.back_off(&mut failures, error, &mut shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Publish the failure and sleep the backoff. Returns true on shutdown.
    async fn back_off(
        &self,
        failures: &mut u32,
        error: LoginError,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let delay = self
            .inner
            .backoff
            .delay(*failures, error.is_bad_credentials());
        let until = Instant::now() + delay;
        tracing::warn!(
            error = %error,
            kind = error.kind(),
            attempt = *failures,
            retry_in_ms = delay.as_millis() as u64,
            "login to Medusa failed"
        );
        let unreachable = error.is_unreachable();
        self.inner
            .status
            .send_replace(Phase::BackingOff { until, error });
        tokio::select! {
            _ = tokio::time::sleep_until(until) => false,
            // Medusa was down: a long backoff must not keep the proxy unavailable after it
            // is back. Medusa's unauthenticated `/health` costs it nothing; once it answers,
            // one login is tried at once (logins stay bounded: one per recovery).
            _ = self.medusa_back(), if unreachable => {
                tracing::info!("Medusa answers /health again; logging in now");
                false
            }
            _ = shutdown.changed() => true,
        }
    }

    /// Resolves once Medusa's `/health` answers 200 (polled every second).
    async fn medusa_back(&self) {
        loop {
            tokio::time::sleep(HEALTH_POLL).await;
            if self.inner.login.healthy().await {
                return;
            }
        }
    }

    async fn login_once(&self, current: Option<&Token>) -> Result<Arc<Token>, LoginError> {
        let timeout = self.inner.settings.login_timeout;
        let renewable = current.filter(|t| !t.header_name.as_str().eq("x-medusa-access-token"));
        let cred = tokio::time::timeout(
            timeout,
            self.inner.login.obtain(renewable.map(|t| &t.secret)),
        )
        .await
        .map_err(|_| LoginError::Timeout(timeout))??;
        let received = Instant::now();
        let (header_name, header) = login::credential_header(cred.flavor, cred.value.expose())
            .ok_or(LoginError::BadResponse("token is not a header value"))?;
        let (lifetime, user_id, usable_for, refresh_after) = if cred.flavor.is_static() {
            // A static key does not expire; it is re-checked every key_check_interval, and a
            // failed check (or an upstream 401) takes it out of use.
            let every = self.inner.settings.key_check_interval;
            (every, cred.user_id.clone(), STATIC_USABLE_FOR, every)
        } else {
            let info = jwt::inspect(
                cred.value.expose(),
                self.inner.settings.default_token_lifetime,
            )
            .map_err(|e| match e {
                jwt::JwtError::NotJwt => LoginError::BadResponse("the token is not a JWT"),
                jwt::JwtError::NoLifetime => {
                    LoginError::BadResponse("the token is already expired")
                }
            })?;
            let (usable_for, refresh_after) =
                schedule(info.lifetime, self.inner.settings.refresh_before_expiry);
            (info.lifetime, info.user_id, usable_for, refresh_after)
        };
        Ok(Arc::new(Token {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            header_name,
            header,
            secret: cred.value,
            how: cred.how,
            flavor: cred.flavor,
            user_id,
            received,
            lifetime,
            usable_until: received + usable_for,
            refresh_at: received + refresh_after,
            verified: AtomicBool::new(false),
            after_rejection: self.inner.relogin.load(Ordering::Relaxed),
            check: CheckGate::default(),
        }))
    }
}

/// An `Instant` as Unix time (for the expiry metric).
fn unix_at(at: Instant) -> f64 {
    jwt::unix_now() + at.saturating_duration_since(Instant::now()).as_secs_f64()
}

/// How often `/health` is polled while logins back off because Medusa was unreachable.
const HEALTH_POLL: Duration = Duration::from_secs(1);

/// How long a static key stays in the cache without a failed check (effectively forever).
const STATIC_USABLE_FOR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_keeps_margin_and_renews_early() {
        let (use_for, refresh) = schedule(Duration::from_secs(86400), Duration::from_secs(60));
        assert_eq!(use_for, Duration::from_secs(86340));
        assert_eq!(refresh, Duration::from_secs(86340 - 300));
        // Shorter than the margin: half the lifetime, never zero.
        let (use_for, refresh) = schedule(Duration::from_secs(3), Duration::from_secs(60));
        assert_eq!(use_for, Duration::from_millis(1500));
        assert_eq!(refresh, Duration::from_millis(1125));
        let (use_for, refresh) = schedule(Duration::from_secs(100), Duration::from_secs(10));
        assert_eq!(use_for, Duration::from_secs(90));
        assert_eq!(refresh, Duration::from_millis(67500));
    }
}
