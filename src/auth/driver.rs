//! The login driver: the one task that logs in, renews ahead of expiry, and backs off.
//!
//! ```text
//!   loop {
//!     token cached, not yet due ──► sleep until refresh_at, a demand, or shutdown
//!     the token after a rejection was rejected too ──► back off (as after a failed login)
//!     otherwise ──► Phase::LoggingIn (if nothing is cached); login (login_timeout)
//!        ok  ──► cache it; Phase::Ready
//!        err ──► Phase::BackingOff { until }; sleep the backoff, or until /health answers
//!                when Medusa was unreachable
//!   }
//! ```
//!
//! The backoff resets only once Medusa accepted a token: a Medusa that issues tokens and
//! rejects every one of them still sees growing pauses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::login::LoginError;
use super::{Token, TokenManager};

/// How often `/health` is polled while logins back off because Medusa was unreachable.
const HEALTH_POLL: Duration = Duration::from_secs(1);

/// What the driver is doing, as seen by requests and readiness.
#[derive(Debug, Clone)]
pub(super) enum Phase {
    /// A login is in flight (or about to be): waiting for it is worthwhile.
    LoggingIn,
    /// The last login succeeded.
    Ready,
    /// The last login failed; the next attempt is at `until`.
    BackingOff {
        until: Instant,
        error: Arc<LoginError>,
    },
}

/// The driver's state shared with requests: its phase, the demand for a login, and what the
/// last rejection means for the next login.
pub(super) struct DriverState {
    pub(super) status: watch::Sender<Phase>,
    /// A request found no token, or a token was dropped: log in now.
    pub(super) demand: Notify,
    next_id: AtomicU64,
    /// A token obtained right after a confirmed rejection was rejected too, before Medusa ever
    /// accepted it: the next login waits for backoff.
    rejected_unverified: AtomicBool,
    /// The cached token was dropped because Medusa confirmed it is rejected: the next token
    /// is `after_rejection`.
    relogin: AtomicBool,
    /// The one `ready` line is logged (the first credential held; later ones are refreshes).
    ready_logged: AtomicBool,
}

impl DriverState {
    pub(super) fn new() -> DriverState {
        DriverState {
            status: watch::channel(Phase::LoggingIn).0,
            demand: Notify::new(),
            next_id: AtomicU64::new(1),
            rejected_unverified: AtomicBool::new(false),
            relogin: AtomicBool::new(false),
            ready_logged: AtomicBool::new(false),
        }
    }

    /// Medusa confirmed that `token`, the cached one, is rejected, and it was dropped: log in
    /// again at once, unless it came from the login after a rejection and never worked (then
    /// back off).
    pub(super) fn rejected(&self, token: &Token) {
        if token.after_rejection && !token.is_verified() {
            self.rejected_unverified.store(true, Ordering::Relaxed);
        }
        self.relogin.store(true, Ordering::Relaxed);
        self.demand.notify_one();
    }
}

impl TokenManager {
    pub(super) async fn drive(&self, mut shutdown: watch::Receiver<bool>) {
        let state = &self.inner.driver;
        let mut failures: u32 = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Sleep while a token is held and not yet due for renewal.
            if let Some(t) = self.inner.cache.get().await {
                // The backoff resets only once Medusa accepted a token: a Medusa that issues
                // tokens and rejects every one of them must still see growing pauses.
                if t.is_verified() {
                    failures = 0;
                }
                if Instant::now() < t.refresh_at {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t.refresh_at) => {}
                        _ = state.demand.notified() => {}
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
            } else if state.rejected_unverified.swap(false, Ordering::Relaxed) {
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
            let current = self.inner.cache.get().await;
            if current.is_none() {
                state.status.send_replace(Phase::LoggingIn);
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
                    if token.after_rejection {
                        state.relogin.store(false, Ordering::Relaxed);
                    }
                    self.inner.events.login(token.how.as_str(), true);
                    self.inner.cache.insert(token).await;
                    if !state.ready_logged.swap(true, Ordering::Relaxed) {
                        tracing::info!("ready: holding a Medusa credential; forwarding requests");
                    }
                    state.status.send_replace(Phase::Ready);
                }
                Err(error) => {
                    failures += 1;
                    let is_static = self.inner.login.flavor().is_static();
                    self.inner
                        .events
                        .login(if is_static { "key_check" } else { "login" }, false);
                    if error.is_bad_credentials() && is_static {
                        // The key itself was refused: stop using it (not ready) until a
                        // check succeeds again.
                        self.inner.cache.invalidate().await;
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
        self.inner.driver.status.send_replace(Phase::BackingOff {
            until,
            error: Arc::new(error),
        });
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

    /// One login (or renewal, or key check), bounded by `login_timeout`.
    async fn login_once(&self, current: Option<&Token>) -> Result<Arc<Token>, LoginError> {
        let timeout = self.inner.settings.login_timeout;
        let renewable = current.and_then(Token::renewable);
        let cred = tokio::time::timeout(timeout, self.inner.login.obtain(renewable))
            .await
            .map_err(|_| LoginError::Timeout(timeout))??;
        let state = &self.inner.driver;
        Token::new(
            cred,
            &self.inner.settings,
            state.next_id.fetch_add(1, Ordering::Relaxed),
            state.relogin.load(Ordering::Relaxed),
        )
        .map(Arc::new)
    }
}
