//! Waiting on conditions instead of sleeping: every test that needs something to have happened
//! (a login counted, a log line written, a metric reached, a port refusing) polls for it with
//! a deadline far longer than it ever takes, so a slow or shared machine makes the test slower,
//! never red. A deadline is a bound on "never", not a measurement.
//!
//! ```ignore
//! use common::wait::{self, LONG};
//! wait::eventually(LONG, "the second login", || fake.logins() == 2).await;
//! let status = wait::until(LONG, "a 403 after the reload", async || {
//!     let (status, _) = fetch(&c, &url).await;
//!     if status == 403 { Ok(status) } else { Err(format!("still {status}")) }
//! })
//! .await;
//! ```

use std::time::{Duration, Instant};

/// The deadline for conditions that hold within milliseconds on an idle machine: long enough
/// for a loaded CI runner, short enough that a condition that never holds fails the test.
pub const LONG: Duration = Duration::from_secs(30);

/// How often a condition is polled.
const EVERY: Duration = Duration::from_millis(10);

/// Polls `probe` every 10 ms until it returns `Ok`; panics after `within`, naming `what` and
/// the last `Err` (the state the probe saw).
pub async fn until<T>(
    within: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {what}: {last}"
        );
        tokio::time::sleep(EVERY).await;
    }
}

/// Polls `cond` every 10 ms until it holds; panics after `within`, naming `what`.
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    until(within, what, async || {
        if cond() {
            Ok(())
        } else {
            Err("never held".to_owned())
        }
    })
    .await
}

/// Polls `cond` for up to `within`; whether it held. For a window that may end early: before
/// checking that something did *not* happen, give it the chance to, and stop as soon as it
/// visibly has.
pub async fn at_most(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(EVERY).await;
    }
}
