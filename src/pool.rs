//! Keep-alive connections to Medusa: a stack of idle HTTP/1.1 connections (the most recently
//! used first, so a few warm connections serve steady traffic and the rest age out), handed
//! out one request at a time and taken back when the response body has been read to the end.
//!
//! Built on `hyper::client::conn::http1` rather than hyper-util's general-purpose client: the
//! proxy talks to one origin, so it needs no per-host map, no racing of connect against
//! checkout, and no spawned task per request to wait for a connection to become idle again.
//! It also gives back a request that never reached the wire (hyper's `try_send_request`), so a
//! request that met a connection Medusa had just closed is sent again on a fresh one whatever
//! its method: nothing of it was written.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;

/// One idle connection: its request sender and when it went idle.
struct Idle<B> {
    tx: SendRequest<B>,
    since: Instant,
}

pub struct Pool<B> {
    idle: Mutex<VecDeque<Idle<B>>>,
    idle_timeout: Duration,
    sweeping: std::sync::atomic::AtomicBool,
}

impl<B: Send + 'static> Pool<B> {
    pub fn new(idle_timeout: Duration) -> Arc<Pool<B>> {
        Arc::new(Pool {
            idle: Mutex::new(VecDeque::new()),
            idle_timeout,
            sweeping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The most recently used connection that is still open, not idle for too long, and ready
    /// for a request. Connections closed or idle too long are dropped (which closes them).
    /// One handed back the moment its response ended may not be ready yet (hyper's connection
    /// task has not run since): it is skipped and kept, never waited for, since a connection
    /// that closes at that moment can leave the wait without an end.
    pub fn take(&self) -> Option<SendRequest<B>> {
        let mut idle = self.lock();
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(entry) = idle.pop_back() {
            if entry.tx.is_closed() || entry.since.elapsed() >= self.idle_timeout {
                continue;
            }
            if entry.tx.is_ready() {
                found = Some(entry.tx);
                break;
            }
            busy.push(entry);
        }
        // Back in their places: still the most recently used.
        idle.extend(busy.into_iter().rev());
        found
    }

    /// Take back a connection whose last response was read to the end.
    pub fn put(self: &Arc<Self>, tx: SendRequest<B>) {
        if tx.is_closed() {
            return;
        }
        let now = Instant::now();
        {
            let mut idle = self.lock();
            // Oldest first: everything before the first fresh entry has timed out.
            while idle
                .front()
                .is_some_and(|i| now.duration_since(i.since) >= self.idle_timeout)
            {
                idle.pop_front();
            }
            idle.push_back(Idle { tx, since: now });
        }
        self.start_sweeper();
    }

    /// Number of idle connections held (for tests and diagnostics).
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// Close connections that stay idle past the timeout even when no request comes to
    /// notice them. One sweeper per pool, started on first use (inside the runtime); it ends
    /// with the pool.
    fn start_sweeper(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Pool<B>> = Arc::downgrade(self);
        let period = self.idle_timeout.max(Duration::from_millis(100));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(pool) = weak.upgrade() else { return };
                let now = Instant::now();
                pool.lock().retain(|i| {
                    !i.tx.is_closed() && now.duration_since(i.since) < pool.idle_timeout
                });
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle<B>>> {
        // A panic while holding this lock cannot leave the deque inconsistent.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Medusa's response body. Once it has been read to the end its connection goes back to the
/// pool; dropped before that (the client went away), the connection is closed, since the rest
/// of the response would still be on it.
pub struct PooledBody<B: Send + 'static> {
    inner: Incoming,
    lease: Option<(SendRequest<B>, Arc<Pool<B>>)>,
    done: bool,
}

impl<B: Send + 'static> PooledBody<B> {
    pub fn new(inner: Incoming, tx: SendRequest<B>, pool: Arc<Pool<B>>) -> PooledBody<B> {
        PooledBody {
            inner,
            lease: Some((tx, pool)),
            done: false,
        }
    }

    /// A body whose connection is not to be reused (after a protocol upgrade).
    pub fn unpooled(inner: Incoming) -> PooledBody<B> {
        PooledBody {
            inner,
            lease: None,
            done: false,
        }
    }
}

impl<B: Send + 'static> Body for PooledBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.done = true,
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Send + 'static> Drop for PooledBody<B> {
    fn drop(&mut self) {
        if let Some((tx, pool)) = self.lease.take()
            && (self.done || self.inner.is_end_stream())
        {
            pool.put(tx);
        }
    }
}

impl<B: Send + 'static> std::fmt::Debug for PooledBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
