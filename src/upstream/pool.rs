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
//!
//! Each connection carries a signal that its connection task has ended ([`Conn`]). A request
//! handed to hyper at the instant its connection task shuts down can be left in hyper's
//! request channel after the task has emptied it (tokio's mpsc accepts a message counted
//! before the close and pushed after the receiver's drain). Nothing would ever answer it: it
//! waited for `request_timeout` and became a 504, although Medusa never saw it. Waiting on the
//! response *and* on the task's end, and dropping our sender when the task is gone, hands such
//! a request back unsent (hyper's envelope returns it when the channel is freed).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::SendRequest;
use tokio::sync::oneshot;

/// One HTTP/1.1 connection to Medusa: hyper's request sender and a signal that resolves when
/// the connection's task has ended (everything hyper's dispatcher held has been dropped).
pub(crate) struct Conn<B> {
    tx: SendRequest<B>,
    ended: oneshot::Receiver<std::convert::Infallible>,
}

/// What [`Conn::send`] returns: hyper's answer, and the connection unless its task has ended.
pub(crate) type Sent<B> = (
    Result<Response<Incoming>, TrySendError<Request<B>>>,
    Option<Conn<B>>,
);

/// Largest read buffer of a connection to Medusa.
pub(crate) const UPSTREAM_READ_BUF: usize = 32 * 1024;

impl<B> Conn<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// HTTP/1.1 handshake on an open transport; spawns the connection task (upgrades allowed).
    pub(crate) async fn handshake<T>(io: T) -> hyper::Result<Conn<B>>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            // Response bodies are cut from this buffer; a chunk a slow client has not taken
            // yet keeps its whole allocation alive. hyper's default cap (~400 KiB) made each
            // client that stops reading cost ~0.8 MiB; 32 KiB reads still move large bodies
            // in few system calls (measured in bench/).
            .max_buf_size(UPSTREAM_READ_BUF)
            .handshake(io)
            .await?;
        let (alive, ended) = oneshot::channel();
        tokio::spawn(async move {
            let result = conn.with_upgrades().await;
            // Only now, with hyper's dispatcher and its request channel dropped.
            drop(alive);
            if let Err(e) = result {
                tracing::debug!(error = %super::chain::error_chain(&e), "connection to Medusa ended with an error");
            }
        });
        Ok(Conn { tx, ended })
    }

    /// Send one request. Resolves with the response head or hyper's error (carrying the
    /// request when it was never written); never waits on a connection whose task has ended.
    pub(crate) async fn send(self, req: Request<B>) -> Sent<B> {
        let Conn { mut tx, mut ended } = self;
        // The future owns hyper's response promise, not `tx` (hyper's edition-2021 RPIT).
        let mut sent = std::pin::pin!(tx.try_send_request(req));
        let first = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = sent.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            Pin::new(&mut ended).poll(cx).map(|_| None)
        })
        .await;
        match first {
            Some(result) => (result, Some(Conn { tx, ended })),
            None => {
                // The task is gone. A request it took has been answered (the promise is
                // resolved when the dispatcher drops); one it never took is still in the
                // channel, which our sender keeps alive: dropping it returns the request.
                drop(tx);
                (sent.await, None)
            }
        }
    }
}

impl<B> Conn<B> {
    /// The connection task has ended or the peer closed the connection.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// The connection is idle and its task wants a request.
    pub(crate) fn is_ready(&self) -> bool {
        self.tx.is_ready()
    }
}

/// Test support: a connection over an in-memory pipe whose task the test holds instead of
/// spawning it. Polled once, the task is idle and wants a request (`conn.is_ready()`); a test
/// ends it by dropping `task` and then `alive`, as the spawned task does.
#[cfg(test)]
pub(crate) struct Staged<B: Body + 'static> {
    pub conn: Conn<B>,
    pub task:
        hyper::client::conn::http1::Connection<hyper_util::rt::TokioIo<tokio::io::DuplexStream>, B>,
    pub alive: oneshot::Sender<std::convert::Infallible>,
    /// The other end of the pipe: dropping it would end the task by itself.
    pub peer: tokio::io::DuplexStream,
}

#[cfg(test)]
impl<B> Staged<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new() -> Staged<B> {
        use futures_util::FutureExt;
        let (io, peer) = tokio::io::duplex(4096);
        let (tx, mut task) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .now_or_never()
                .expect("an HTTP/1.1 handshake does no I/O")
                .expect("handshake");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // One poll: the dispatcher finds no request and says it wants one.
        assert!(Pin::new(&mut task).poll(&mut cx).is_pending());
        assert!(tx.is_ready());
        let (alive, ended) = oneshot::channel();
        Staged {
            conn: Conn { tx, ended },
            task,
            alive,
            peer,
        }
    }
}

/// One idle connection and when it went idle.
struct Idle<B> {
    conn: Conn<B>,
    since: Instant,
}

/// Idle connections to Medusa, most recently used last (see the module docs).
pub(crate) struct Pool<B> {
    idle: Mutex<VecDeque<Idle<B>>>,
    idle_timeout: Duration,
    sweeping: std::sync::atomic::AtomicBool,
    /// Told when the pool goes from no idle connection to one: the sweeper sleeps on it, so
    /// an idle proxy with nothing pooled never wakes up.
    refilled: Arc<tokio::sync::Notify>,
}

impl<B: Send + 'static> Pool<B> {
    /// An empty pool whose connections close after `idle_timeout` unused.
    pub(crate) fn new(idle_timeout: Duration) -> Arc<Pool<B>> {
        Arc::new(Pool {
            idle: Mutex::new(VecDeque::new()),
            idle_timeout,
            sweeping: std::sync::atomic::AtomicBool::new(false),
            refilled: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// The most recently used connection that is still open, not idle for too long, and ready
    /// for a request. Connections closed or idle too long are dropped (which closes them).
    /// One handed back the moment its response ended may not be ready yet (hyper's connection
    /// task has not run since): it is skipped and kept, not waited for, so a request never
    /// stalls behind another connection's task; skipping costs at most a new connection.
    pub(crate) fn take(&self) -> Option<Conn<B>> {
        let mut idle = self.lock();
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(entry) = idle.pop_back() {
            if entry.conn.is_closed() || entry.since.elapsed() >= self.idle_timeout {
                continue;
            }
            if entry.conn.is_ready() {
                found = Some(entry.conn);
                break;
            }
            busy.push(entry);
        }
        // Back in their places: still the most recently used.
        idle.extend(busy.into_iter().rev());
        found
    }

    /// Take back a connection whose last response was read to the end.
    pub(crate) fn put(self: &Arc<Self>, conn: Conn<B>) {
        if conn.is_closed() {
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
            if idle.is_empty() {
                self.refilled.notify_one();
            }
            idle.push_back(Idle { conn, since: now });
        }
        self.start_sweeper();
    }

    /// Number of idle connections held.
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// Close connections that stay idle past the timeout even when no request comes to
    /// notice them, at the moment the oldest one times out; with none pooled, it sleeps until
    /// one is (no periodic wake-ups). One sweeper per pool, started on first use (inside the
    /// runtime); it ends with the pool.
    fn start_sweeper(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Pool<B>> = Arc::downgrade(self);
        let refilled = self.refilled.clone();
        runtime.spawn(async move {
            loop {
                let oldest = {
                    let Some(pool) = weak.upgrade() else { return };
                    let now = Instant::now();
                    let mut idle = pool.lock();
                    idle.retain(|i| {
                        !i.conn.is_closed() && now.duration_since(i.since) < pool.idle_timeout
                    });
                    idle.front().map(|i| i.since + pool.idle_timeout)
                };
                match oldest {
                    Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                    // Not holding the pool while waiting: it may be dropped meanwhile.
                    None => refilled.notified().await,
                }
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
    lease: Option<(Conn<B>, Arc<Pool<B>>)>,
    done: bool,
}

impl<B: Send + 'static> PooledBody<B> {
    /// A body whose connection goes back to `pool` once it has been read to the end.
    pub(crate) fn new(inner: Incoming, conn: Conn<B>, pool: Arc<Pool<B>>) -> PooledBody<B> {
        PooledBody {
            inner,
            lease: Some((conn, pool)),
            done: false,
        }
    }

    /// A body whose connection is not to be reused (after a protocol upgrade).
    pub(crate) fn unpooled(inner: Incoming) -> PooledBody<B> {
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
        if let Some((conn, pool)) = self.lease.take()
            && (self.done || self.inner.is_end_stream())
        {
            pool.put(conn);
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::{TcpListener, TcpStream};

    type Tx = Conn<Full<Bytes>>;

    /// A server on 127.0.0.1:0 answering every request with `size` bytes; counts connections.
    async fn server(size: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from(vec![b'x'; size]),
                            )))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (addr, conns)
    }

    async fn connect(addr: std::net::SocketAddr) -> Tx {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Conn::handshake(TokioIo::new(tcp)).await.unwrap()
    }

    fn get() -> Request<Full<Bytes>> {
        Request::builder()
            .uri("/")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    /// Send on `tx` and wrap the response body as the proxy does.
    async fn send(pool: &Arc<Pool<Full<Bytes>>>, tx: Tx) -> PooledBody<Full<Bytes>> {
        let (resp, tx) = tx.send(get()).await;
        PooledBody::new(resp.unwrap().into_body(), tx.unwrap(), pool.clone())
    }

    async fn until(mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("condition not reached within 1 s");
    }

    #[tokio::test]
    async fn a_connection_returns_when_its_body_was_read_and_is_reused() {
        let (addr, conns) = server(100_000).await;
        let pool = Pool::new(Duration::from_secs(30));
        assert!(pool.take().is_none());
        let body = send(&pool, connect(addr).await).await;
        assert_eq!(pool.idle_count(), 0, "in use while the body streams");
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 100_000);
        // Dropped by collect() at its end: back in the pool, and ready once hyper's
        // connection task has run.
        until(|| pool.idle_count() == 1).await;
        until(|| {
            let tx = pool.take();
            let ok = tx.is_some();
            if let Some(tx) = tx {
                pool.put(tx);
            }
            ok
        })
        .await;
        let tx = pool.take().unwrap();
        let body = send(&pool, tx).await;
        drop(body.collect().await.unwrap());
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "one connection served both"
        );
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_the_connection() {
        let (addr, _) = server(1_000_000).await;
        let pool = Pool::new(Duration::from_secs(30));
        let mut body = send(&pool, connect(addr).await).await;
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        drop(body);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            pool.idle_count(),
            0,
            "the rest of the response is still on it"
        );
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn closed_or_stale_connections_are_never_handed_out() {
        let (addr, _) = server(10).await;
        // Stale: idle longer than the timeout.
        let pool = Pool::new(Duration::from_millis(20));
        let tx = connect(addr).await;
        until(|| tx.is_ready()).await;
        pool.put(tx);
        assert_eq!(pool.idle_count(), 1);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(pool.take().is_none(), "idle past pool_idle_timeout");
        // Closed: the peer went away while it was idle.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let closer = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            drop(tcp);
        });
        let pool = Pool::new(Duration::from_secs(30));
        let tx = connect(addr).await;
        closer.await.unwrap();
        until(|| tx.is_closed()).await;
        pool.put(tx);
        assert!(pool.take().is_none(), "closed by the peer");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_timeout_without_traffic() {
        let (addr, _) = server(10).await;
        let pool = Pool::new(Duration::from_millis(50));
        let tx = connect(addr).await;
        until(|| tx.is_ready()).await;
        pool.put(tx);
        assert_eq!(pool.idle_count(), 1);
        // No take() and no put(): only the sweeper can notice it.
        until(|| pool.idle_count() == 0).await;
    }

    #[tokio::test]
    async fn the_most_recently_used_connection_is_handed_out_first() {
        // Two servers told apart by their answer's length.
        let (a, _) = server(10).await;
        let (b, _) = server(20).await;
        let pool = Pool::new(Duration::from_secs(30));
        let older = connect(a).await;
        let newer = connect(b).await;
        until(|| older.is_ready() && newer.is_ready()).await;
        pool.put(older);
        tokio::time::sleep(Duration::from_millis(5)).await;
        pool.put(newer);
        let first = send(&pool, pool.take().unwrap()).await;
        assert_eq!(first.collect().await.unwrap().to_bytes().len(), 20);
        assert_eq!(
            pool.idle_count(),
            2,
            "the newer one came back; the older still idle"
        );
    }
}

/// The race behind the "idle-close hang": a request handed to hyper while its connection task
/// shuts down. Two threads: one drops the connection task (as the runtime does when hyper's
/// dispatcher finishes on Medusa's keep-alive close), the other sends at the same instant,
/// with the delays swept so the two meet inside tokio's mpsc close-and-drain.
#[cfg(test)]
mod race {
    use super::*;
    use http_body_util::Full;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    type B = Full<Bytes>;
    type Task =
        hyper::client::conn::http1::Connection<hyper_util::rt::TokioIo<tokio::io::DuplexStream>, B>;
    type Alive = oneshot::Sender<std::convert::Infallible>;
    /// `Err(true)`: hyper's error came with the request (never written).
    type Outcome = Pin<Box<dyn Future<Output = Result<(), bool>> + Send>>;

    fn spin(n: u32) {
        for _ in 0..n {
            std::hint::spin_loop();
        }
    }

    /// Wait for the other thread: spin briefly, then yield, so the two threads still take
    /// turns when they have to share one core.
    fn wait_until(cond: impl Fn() -> bool) {
        let mut spins = 0u32;
        while !cond() {
            if spins < 2_000 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// How a request ended: answered/handed back, or still waiting after its connection task
    /// is gone (which nothing would ever change: the hang).
    #[derive(Default, Debug)]
    struct Tally {
        stranded: u32,
        handed_back: u32,
        other: u32,
    }

    /// `iterations` races; `send` is how the request is sent.
    fn race(iterations: u32, send: fn(Conn<B>, Request<B>) -> Outcome) -> Tally {
        let mut tally = Tally::default();
        let slot: Mutex<Option<(Task, Alive, u32)>> = Mutex::new(None);
        let (epoch, done, stop) = (AtomicU32::new(0), AtomicU32::new(0), AtomicBool::new(false));
        std::thread::scope(|s| {
            // The connection task's side: waits for a round, then ends the task.
            s.spawn(|| {
                let mut seen = 0;
                let mut spins = 0u32;
                while !stop.load(Ordering::Acquire) {
                    let e = epoch.load(Ordering::Acquire);
                    if e == seen {
                        // Spin, then yield: still takes turns when sharing one core.
                        spins += 1;
                        if spins < 2_000 {
                            std::hint::spin_loop();
                        } else {
                            std::thread::yield_now();
                        }
                        continue;
                    }
                    seen = e;
                    spins = 0;
                    let (task, alive, delay) = slot.lock().unwrap().take().unwrap();
                    spin(delay);
                    drop(task);
                    drop(alive);
                    done.store(seen, Ordering::Release);
                }
            });
            let mut cx = Context::from_waker(std::task::Waker::noop());
            for i in 0..iterations {
                let Staged {
                    conn,
                    task,
                    alive,
                    peer: _peer,
                } = Staged::new();
                // The sender starts from 32 spins before to 63 after the task's end.
                let delay = (i % 4) * 8;
                let offset = (i / 4) % 96;
                *slot.lock().unwrap() = Some((task, alive, delay + 32));
                let req = Request::get("/").body(Full::new(Bytes::new())).unwrap();
                let mut sending = send(conn, req);
                epoch.store(i + 1, Ordering::Release);
                spin(delay + offset);
                let mut polled = sending.as_mut().poll(&mut cx);
                wait_until(|| done.load(Ordering::Acquire) == i + 1);
                if polled.is_pending() {
                    polled = sending.as_mut().poll(&mut cx);
                }
                match polled {
                    Poll::Pending => tally.stranded += 1,
                    Poll::Ready(Err(true)) => tally.handed_back += 1,
                    Poll::Ready(_) => tally.other += 1,
                }
            }
            stop.store(true, Ordering::Release);
        });
        tally
    }

    fn outcome(r: Result<Response<Incoming>, TrySendError<Request<B>>>) -> Result<(), bool> {
        r.map(drop).map_err(|mut e| e.take_message().is_some())
    }

    #[test]
    fn a_request_racing_the_end_of_its_connection_task_is_handed_back_not_stranded() {
        // Calibration: hyper's own try_send_request, waited on alone, is stranded in some
        // rounds (0.1-0.4 % of these, on the 2-core machine this was written on).
        let mut rounds = 0;
        let mut plain = Tally::default();
        let started = Instant::now();
        while plain.stranded == 0 && rounds < 200_000 && started.elapsed() < Duration::from_secs(20)
        {
            let t = race(20_000, |conn, req| {
                Box::pin(async move {
                    let Conn { mut tx, ended } = conn;
                    let r = tx.try_send_request(req).await;
                    drop(ended);
                    outcome(r)
                })
            });
            plain.stranded += t.stranded;
            plain.handed_back += t.handed_back;
            rounds += 20_000;
        }
        if plain.stranded == 0 {
            // Either hyper/tokio fixed the race (then Conn's watch on the task could go), or
            // this machine never ran the two threads at the same time (one core, overloaded).
            // Not a failure of ours, but say so: the test below would show nothing.
            eprintln!(
                "WARNING: in {rounds} rounds hyper never left a request behind ({plain:?}); \
                 the race was not reproduced, so Conn::send was not put to the test"
            );
            return;
        }
        let ours = race(rounds, |conn, req| {
            Box::pin(async move { outcome(conn.send(req).await.0) })
        });
        assert_eq!(
            ours.stranded, 0,
            "Conn::send left requests waiting on ended connections: {ours:?} (plain: {plain:?})"
        );
        assert_eq!(
            ours.handed_back, rounds,
            "every request comes back unsent: {ours:?}"
        );
    }
}
