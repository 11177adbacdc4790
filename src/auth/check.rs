//! Verifying a 401 before it costs the token.
//!
//! Medusa answers 401 for two different reasons: the proxy's token is no longer accepted
//! (secret rotated, early expiry, key revoked), or the route wants some other credential (v1
//! `GET /store/customers/me` wants a customer, a plugin route its own auth). Only the first
//! means the token must go; treating the second the same way lets any caller who can reach such
//! a route make the proxy drop its token, log in, and back off for everyone. So a 401 is
//! checked with one cheap authenticated request ([`super::login::Login::check`]) before the
//! token is dropped.
//!
//! Each token owns one [`CheckGate`]:
//!
//! ```text
//!   401 ──► gate ── a verdict younger than CHECK_EVERY? ──yes──► reuse it     (bound)
//!            │ no
//!            └─ hold the gate's lock, ask Medusa once; callers that queued on the lock
//!               meanwhile find the fresh verdict and reuse it                  (single flight)
//! ```
//!
//! The bound applies to every verdict, not only to `Accepted`: a route that answers 401 for its
//! own reasons, hit at any rate, costs Medusa at most one check per token per `CHECK_EVERY`.
//! The price: a token that Medusa starts rejecting within `CHECK_EVERY` of a check that
//! accepted it keeps being used until that verdict ages out (its callers get Medusa's 401,
//! which is what Medusa answered; nothing is lost but those requests).

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::login::Verdict;

/// At most one check per token in this long; a verdict is reused for as long.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// One token's check: the last verdict and when it was taken, behind an async lock that makes
/// concurrent 401s for the same token share one check.
#[derive(Debug, Default)]
pub struct CheckGate {
    last: Mutex<Option<(Instant, Verdict)>>,
}

impl CheckGate {
    /// The verdict on this token: the last one if younger than `every`, else the result of
    /// `check`, run by exactly one of any number of concurrent callers. Returns the verdict and
    /// whether this call ran the check (the caller acts on a verdict, e.g. drops the token,
    /// once).
    ///
    /// ```
    /// use medusa_auth_proxy::auth::check::{CHECK_EVERY, CheckGate};
    /// use medusa_auth_proxy::auth::login::Verdict;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let gate = CheckGate::default();
    /// assert_eq!(gate.verdict(CHECK_EVERY, async { Verdict::Accepted }).await, (Verdict::Accepted, true));
    /// // Within CHECK_EVERY the verdict is reused; the new check does not run.
    /// assert_eq!(gate.verdict(CHECK_EVERY, async { Verdict::Rejected }).await, (Verdict::Accepted, false));
    /// # }
    /// ```
    pub async fn verdict<F>(&self, every: Duration, check: F) -> (Verdict, bool)
    where
        F: std::future::Future<Output = Verdict>,
    {
        // Held across the check: this is the single flight. A caller cancelled while waiting
        // here, or while running the check, leaves the gate consistent (no verdict recorded:
        // the next 401 checks again).
        let mut last = self.last.lock().await;
        if let Some((at, verdict)) = *last
            && at.elapsed() < every
        {
            return (verdict, false);
        }
        let verdict = check.await;
        *last = Some((Instant::now(), verdict));
        (verdict, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A check that counts its runs, takes `takes` (virtual time), and answers `verdict`.
    async fn counted(runs: &AtomicUsize, takes: Duration, verdict: Verdict) -> Verdict {
        runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(takes).await;
        verdict
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_401s_share_one_check() {
        let gate = Arc::new(CheckGate::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (gate, runs) = (gate.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                gate.verdict(CHECK_EVERY, async {
                    counted(&runs, Duration::from_millis(300), Verdict::Rejected).await
                })
                .await
            }));
        }
        let mut ran = 0;
        for t in tasks {
            let (verdict, did) = t.await.unwrap();
            assert_eq!(
                verdict,
                Verdict::Rejected,
                "every caller gets the one verdict"
            );
            ran += usize::from(did);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one check for 50 callers");
        assert_eq!(ran, 1, "exactly one caller acts on the verdict");
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_one_check_per_interval_whatever_the_verdict() {
        for verdict in [Verdict::Accepted, Verdict::Rejected, Verdict::Unknown] {
            let gate = CheckGate::default();
            let runs = AtomicUsize::new(0);
            let start = Instant::now();
            // One 401 every 100 ms for 30 s.
            while start.elapsed() < Duration::from_secs(30) {
                let (v, _) = gate
                    .verdict(CHECK_EVERY, counted(&runs, Duration::ZERO, verdict))
                    .await;
                assert_eq!(v, verdict);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // 30 s / 5 s, counting the first: exactly 6 (virtual time, no jitter).
            assert_eq!(runs.load(Ordering::SeqCst), 6, "{verdict:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_verdict_is_reused_until_it_ages_out() {
        let gate = CheckGate::default();
        let runs = AtomicUsize::new(0);
        let check = |v| counted(&runs, Duration::ZERO, v);
        assert_eq!(
            gate.verdict(CHECK_EVERY, check(Verdict::Accepted)).await,
            (Verdict::Accepted, true)
        );
        tokio::time::advance(CHECK_EVERY - Duration::from_millis(1)).await;
        // Still the remembered verdict, although Medusa would now say otherwise.
        assert_eq!(
            gate.verdict(CHECK_EVERY, check(Verdict::Rejected)).await,
            (Verdict::Accepted, false)
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            gate.verdict(CHECK_EVERY, check(Verdict::Rejected)).await,
            (Verdict::Rejected, true)
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_check_records_nothing() {
        let gate = CheckGate::default();
        let runs = AtomicUsize::new(0);
        let slow = counted(&runs, Duration::from_secs(60), Verdict::Rejected);
        let cancelled =
            tokio::time::timeout(Duration::from_secs(1), gate.verdict(CHECK_EVERY, slow)).await;
        assert!(cancelled.is_err());
        let (v, ran) = gate
            .verdict(
                CHECK_EVERY,
                counted(&runs, Duration::ZERO, Verdict::Accepted),
            )
            .await;
        assert_eq!((v, ran), (Verdict::Accepted, true));
    }
}
