//! Exponential backoff with jitter for login attempts.
//!
//! However much traffic arrives, a failing login costs Medusa one attempt per backoff step:
//! requests never trigger logins themselves, the single login driver does.

use std::time::Duration;

/// The pause after each consecutive failed login: doubling from `initial` (or
/// `initial_bad_credentials`) up to `max`, with jitter.
///
/// ```
/// use std::time::Duration;
/// use medusa_auth_proxy::auth::backoff::Backoff;
///
/// let b = Backoff::default();
/// assert_eq!(b.base(3, false), Duration::from_secs(4));
/// assert!(b.delay(3, false) < Duration::from_secs(4));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay after a transient failure (Medusa down, 5xx, timeout).
    pub initial: Duration,
    /// First delay after Medusa rejected the credentials: retrying fast cannot help and may
    /// lock the account.
    pub initial_bad_credentials: Duration,
    /// No delay is longer than this.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            initial_bad_credentials: Duration::from_secs(30),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// Delay after the `failures`-th consecutive failure (1-based), before jitter.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use medusa_auth_proxy::auth::backoff::Backoff;
    /// assert_eq!(Backoff::default().base(1, true), Duration::from_secs(30));
    /// ```
    pub fn base(&self, failures: u32, bad_credentials: bool) -> Duration {
        let start = if bad_credentials {
            self.initial_bad_credentials
        } else {
            self.initial
        };
        let exp = failures.saturating_sub(1).min(20);
        start.saturating_mul(1 << exp).min(self.max)
    }

    /// The base delay scaled by a random factor in [0.5, 1.0): spreads the retries of many
    /// proxies that failed at the same moment, and never waits longer than the base.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use medusa_auth_proxy::auth::backoff::Backoff;
    /// let d = Backoff::default().delay(1, false);
    /// assert!(d >= Duration::from_millis(500) && d < Duration::from_secs(1));
    /// ```
    pub fn delay(&self, failures: u32, bad_credentials: bool) -> Duration {
        self.base(failures, bad_credentials)
            .mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.base(1, false), Duration::from_secs(1));
        assert_eq!(b.base(2, false), Duration::from_secs(2));
        assert_eq!(b.base(5, false), Duration::from_secs(16));
        assert_eq!(b.base(30, false), Duration::from_secs(300));
        assert_eq!(b.base(1, true), Duration::from_secs(30));
        assert_eq!(b.base(4, true), Duration::from_secs(240));
        assert_eq!(b.base(u32::MAX, true), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_in_range() {
        let b = Backoff::default();
        for _ in 0..1000 {
            let d = b.delay(3, false);
            assert!(
                d >= Duration::from_secs(2) && d < Duration::from_secs(4),
                "{d:?}"
            );
        }
    }
}
