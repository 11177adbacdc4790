//! A waker for futures that the holder polls together in one loop (a pooled connection's
//! dispatcher, its response promise, its response body): a wake that one of them gives while
//! the holder is polling them is a sign to poll them again at once, not to reschedule the
//! whole task, which would poll the client connection's entire stack once more for nothing.
//! A wake from outside that loop (the socket became readable) wakes the holder's task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// At most this many rounds in one poll; then the task is woken and yields, so a connection
/// that keeps waking itself cannot starve the others on the thread.
const ROUNDS: usize = 8;

/// The loop's state, shared with the wakers handed to the polled futures.
#[derive(Default)]
struct Shared {
    /// The task holding the connection now.
    task: Mutex<Option<Waker>>,
    /// The holder is inside [`Wakes::poll`].
    polling: AtomicBool,
    /// Woken while `polling`.
    woken: AtomicBool,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(Ordering::SeqCst) {
            self.woken.store(true, Ordering::SeqCst);
            return;
        }
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

/// See the module docs. One per connection.
pub(crate) struct Wakes {
    shared: Arc<Shared>,
    waker: Waker,
}

impl Wakes {
    pub(crate) fn new() -> Wakes {
        let shared = Arc::new(Shared::default());
        Wakes {
            waker: Waker::from(shared.clone()),
            shared,
        }
    }

    /// Run `f` with this waker until it is ready or nothing it polled woke it meanwhile.
    pub(crate) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut f: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        {
            let mut task = self.shared.task.lock().unwrap_or_else(|p| p.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut local = Context::from_waker(&self.waker);
        for _ in 0..ROUNDS {
            self.shared.woken.store(false, Ordering::SeqCst);
            self.shared.polling.store(true, Ordering::SeqCst);
            let polled = f(&mut local);
            self.shared.polling.store(false, Ordering::SeqCst);
            if polled.is_ready() {
                return polled;
            }
            // A wake given after the flag went down went to the task itself; one given
            // before is ours to act on.
            if !self.shared.woken.swap(false, Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
