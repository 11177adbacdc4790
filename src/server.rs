//! Accept loop and graceful shutdown, on an already-bound listener (so tests can bind port 0
//! and `app` decides the order of start-up).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::{Service, ServiceExt};

use crate::metrics::ConnMetrics;
use crate::sniff::{ConflictingFraming, Flags, Sniffed};

/// How a server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every in-flight request finished within the grace period.
    Clean,
    /// The grace period ran out with connections still open.
    GraceExceeded,
}

/// Limits on what a client may send, and hold, before and while the handler sees it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A client that has not sent a complete request head within this is disconnected; so is
    /// a connection that sent nothing, or not all of the HTTP/2 preface, within it.
    pub header_read_timeout: Duration,
    /// More header fields than this -> 431 (HTTP/1.1) and the connection closed.
    pub max_headers: usize,
    /// A request head larger than this -> 431 (HTTP/1.1); the HTTP/2 header list cap.
    pub max_head_bytes: usize,
    /// Largest read buffer of a connection (at least `max_head_bytes`). hyper grows it while
    /// reads fill it, so large bodies move in large reads; it also bounds the head hyper will
    /// buffer, so heads between `max_head_bytes` and this are marked [`HeadTooLarge`] for the
    /// handler to refuse. hyper uses the same cap for what it queues to write, which bounds
    /// what a client that stops reading holds (see `app`).
    pub read_buf_max: usize,
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// HTTP/2: concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// HTTP/2: response bytes buffered per stream for a client that does not open its window.
    pub h2_send_buf: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A client that takes no response bytes for this long is disconnected; the request to
    /// Medusa is aborted with it.
    pub send_timeout: Duration,
    /// How long after the last connection closed freed memory is handed back (see
    /// `release_memory_soon`): past the upstream pool's idle timeout. `None`: never (the ops
    /// listener, whose scrapes say nothing about the proxy listener's load).
    pub release_memory_after: Option<Duration>,
}

/// Request extension: the request head is larger than [`Limits::max_head_bytes`].
#[derive(Debug, Clone, Copy)]
pub struct HeadTooLarge(pub usize);

/// The size of a request head as sent (request line, header lines, final empty line), from
/// its parsed form: what the limit is about.
pub fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len()
        + 1
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len();
    let headers: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    line + headers + 2
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_head_bytes: 64 * 1024,
            read_buf_max: 64 * 1024,
            max_connections: 4096,
            max_streams_per_connection: 100,
            h2_send_buf: 64 * 1024,
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            release_memory_after: None,
        }
    }
}

/// The client's address, a request extension set for every request the server hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Which peers may open a connection at all; asked at accept, before a byte is read, with the
/// rules in force at that moment (they can be reloaded).
pub type Admit = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Admit every peer (the ops listener: its own network policy decides who reaches it).
pub fn admit_all() -> Admit {
    Arc::new(|_| true)
}

/// Serve HTTP/1.1 and HTTP/2 (prior knowledge) on `listener` until `shutdown` becomes true;
/// then stop accepting at once, let in-flight requests finish for up to `grace`, and return.
///
/// Admission happens before any work: a peer `admit` refuses, or one beyond
/// [`Limits::max_connections`], is closed at accept. Each connection is then watched by its
/// own task (no shared timer), which closes it when it sent no request head in time, had no
/// request in flight for [`Limits::idle_timeout`], or took no response bytes for
/// [`Limits::send_timeout`] (dropping the connection drops the response body, which aborts
/// the request to Medusa).
#[allow(clippy::too_many_arguments)]
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    admit: Admit,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    limits: Limits,
    counters: ConnMetrics,
) -> Drained
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.read_buf_max.max(limits.max_head_bytes).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_head_bytes as u32)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_send_buf_size(limits.h2_send_buf);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(AtomicUsize::new(0));
    let mut refusals_peer = Sparse::default();
    let mut refusals_full = Sparse::default();
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if !admit(peer.ip()) {
                    // Before a byte is read: an outsider holds nothing of ours.
                    counters.refused_peer.inc();
                    if let Some(more) = refusals_peer.log_now() {
                        tracing::warn!(peer = %peer, more_since_last_line = more, "connection refused: peer not in access.allow_cidrs");
                    }
                    continue;
                }
                let Some(slot) = ConnSlot::take(&open, &limits, &counters) else {
                    counters.refused_full.inc();
                    if let Some(more) = refusals_full.log_now() {
                        tracing::warn!(peer = %peer, limit = limits.max_connections, more_since_last_line = more, "connection refused: proxy.max_connections reached");
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let (stream, framing) = Sniffed::new(stream);
                let state = Arc::new(ConnState::new(framing.clone()));
                let svc = {
                    let state = state.clone();
                    let framing = framing.clone();
                    service_fn(move |mut req: Request<Incoming>| {
                        // hyper hands requests over in the order the sniffer saw their heads.
                        let index = state.requests.fetch_add(1, Ordering::Relaxed);
                        let busy = InFlight::new(state.clone());
                        if framing.take_conflicting(index) {
                            req.extensions_mut().insert(ConflictingFraming);
                        }
                        if limits.read_buf_max > limits.max_head_bytes
                            && req.version() < http::Version::HTTP_2
                            && head_size(&req) > limits.max_head_bytes
                        {
                            req.extensions_mut().insert(HeadTooLarge(limits.max_head_bytes));
                        }
                        let connect = req.method() == http::Method::CONNECT;
                        req.extensions_mut().insert(PeerAddr(peer));
                        let fut = service.clone().oneshot(req);
                        let framing = framing.clone();
                        async move {
                            let Ok(resp) = fut.await;
                            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
                                || (connect && resp.status().is_success())
                            {
                                framing.switched_protocols();
                            }
                            Ok::<_, Infallible>(resp.map(|body| Watched::new(body, busy)))
                        }
                    })
                };
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn.into_owned());
                let counters = counters.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let closed = watchdog(conn, &state, &framing, &limits).await;
                    match closed {
                        Ok(()) => {}
                        Err(Closed::Error(e)) if is_timeout(&*e) => {
                            // hyper's own HTTP/1 header_read_timeout, which also runs while a
                            // keep-alive connection waits for its next request.
                            counters.closed_header_timeout.inc();
                            tracing::debug!(peer = %peer, reason = "header_read_timeout", "connection closed by the proxy");
                        }
                        Err(Closed::Error(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                        }
                        Err(Closed::By(why)) => {
                            match why {
                                Why::HeaderTimeout => counters.closed_header_timeout.inc(),
                                Why::Idle => counters.closed_idle.inc(),
                                Why::SendTimeout => counters.closed_send_timeout.inc(),
                            };
                            tracing::debug!(peer = %peer, reason = why.as_str(), "connection closed by the proxy");
                        }
                    }
                });
            }
            _ = shutdown.changed() => {}
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => Drained::Clean,
        _ = tokio::time::sleep(grace) => Drained::GraceExceeded,
    }
}

/// At most one log line per 10 s for a kind of refusal, however many connections a flood
/// brings (the metrics count each one).
#[derive(Default)]
struct Sparse {
    last: Option<Instant>,
    skipped: u64,
}

impl Sparse {
    /// `Some(skipped since the last line)` when a line may be logged now.
    fn log_now(&mut self) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            self.skipped += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.skipped))
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout)
}

/// One of `max_connections`; given back when the connection's task ends.
struct ConnSlot {
    open: Arc<AtomicUsize>,
    gauge: prometheus_client::metrics::gauge::Gauge,
    release_after: Option<Duration>,
}

impl ConnSlot {
    fn take(open: &Arc<AtomicUsize>, limits: &Limits, counters: &ConnMetrics) -> Option<ConnSlot> {
        // Only the accept loop adds, so a load then an add cannot overshoot.
        if open.load(Ordering::Acquire) >= limits.max_connections {
            return None;
        }
        open.fetch_add(1, Ordering::AcqRel);
        counters.open.inc();
        Some(ConnSlot {
            open: open.clone(),
            gauge: counters.open.clone(),
            release_after: limits.release_memory_after,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let was = self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
        if was == 1
            && let Some(after) = self.release_after
        {
            // What the client connections held is free now (their Medusa connections' share
            // follows when the pool lets them go): hand it back before the next burst piles
            // on top of it, not only after a quiet spell.
            crate::memory::trim_heap(Duration::from_secs(1));
            release_memory_soon(self.open.clone(), after);
        }
    }
}

/// The last connection closed: `after` that ([`Limits::release_memory_after`]), if still none
/// is open, give freed heap memory, and the code pages mapped since, back to the system
/// (`memory::release_unused`). glibc keeps what many connections freed (per-thread arenas,
/// fragmented pages), so after a burst of slow clients the process
/// would stay at its peak; `malloc_trim` returns free pages inside the heap too. The delay
/// lets the pooled connections to Medusa those clients used time out and free their buffers
/// first (measured: a trim 1 s after left ~10 MiB that one 5 s after returned), and makes it
/// two trims (two wake-ups) per quiet spell; a busy proxy never pays for it on a request.
fn release_memory_soon(open: Arc<AtomicUsize>, after: Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if PENDING.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            PENDING.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(async move {
            // Twice: what the pool's sweeper and late connection tasks free after the first
            // trim is still returned (once was not always enough in the attack suite).
            for _ in 0..2 {
                tokio::time::sleep(after).await;
                if open.load(Ordering::Acquire) != 0 {
                    break;
                }
                crate::memory::release_unused();
            }
            PENDING.store(false, Ordering::Release);
        });
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    drop(open);
}

/// What the connection's watchdog needs to know; updated by the service and the response
/// bodies with a few uncontended atomics per request and per response frame.
struct ConnState {
    start: Instant,
    /// Request heads handed to the service so far.
    requests: AtomicU64,
    /// Requests whose response has not ended (or whose handler still runs).
    in_flight: AtomicUsize,
    /// When `in_flight` last dropped to 0, in ms since `start`.
    idle_since_ms: AtomicU64,
    /// Response frames hyper has pulled: progress towards the client.
    frames: AtomicU64,
    /// Response bodies holding a frame hyper took and has not come back for: a client that
    /// is not reading (TCP or HTTP/2 flow control) keeps this above 0 with `frames` still.
    waiting: AtomicUsize,
    /// Response body bytes handed to hyper, against `io.written()`: their difference is what
    /// hyper holds for the client.
    yielded: AtomicU64,
    io: Arc<Flags>,
}

impl ConnState {
    fn new(io: Arc<Flags>) -> ConnState {
        ConnState {
            yielded: AtomicU64::new(0),
            io,
            start: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
        }
    }
}

/// Marks one request in flight on its connection, from its head to the end of its response.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(state: Arc<ConnState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        let ms = s.start.elapsed().as_millis() as u64;
        s.idle_since_ms.store(ms, Ordering::Release);
        s.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body as hyper sends it: records progress for the connection's watchdog and
/// keeps the request counted in flight until the body ends or is dropped.
pub struct Watched<B> {
    inner: B,
    busy: InFlight,
    holding: bool,
}

impl<B> Watched<B> {
    fn new(inner: B, busy: InFlight) -> Watched<B> {
        Watched {
            inner,
            busy,
            holding: false,
        }
    }

    fn release(&mut self) {
        if self.holding {
            self.holding = false;
            self.busy.0.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<B> Drop for Watched<B> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Response bytes hyper may hold for an HTTP/1 client before the body waits for the socket to
/// take some. hyper's own cap on what it queues is its read buffer size (256 KiB here, for
/// fast uploads), and each queued chunk keeps its upstream read buffer alive: this keeps a
/// client that stops reading to about one upstream buffer. (HTTP/2 streams are bounded by
/// flow control and `Limits::h2_send_buf` instead.)
const WRITE_BUDGET: u64 = 32 * 1024;

impl<B> Watched<B> {
    /// Whether hyper already holds more than [`WRITE_BUDGET`] unwritten bytes of this
    /// connection's responses; if so, `cx` is woken at the next write.
    fn over_budget(&self, cx: &Context<'_>) -> bool {
        let s = &self.busy.0;
        if s.io.h2_preface_done() {
            return false;
        }
        let queued = || {
            s.yielded
                .load(Ordering::Acquire)
                .saturating_sub(s.io.written())
        };
        if queued() <= WRITE_BUDGET {
            return false;
        }
        s.io.wake_on_write(cx);
        // A write between the check and the registration would be missed: look again.
        queued() > WRITE_BUDGET
    }
}

impl<B: Body<Data = bytes::Bytes> + Unpin> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.over_budget(cx) {
            // Still holding: to the watchdog this is a client that takes nothing.
            return Poll::Pending;
        }
        this.release();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let s = &this.busy.0;
            s.yielded.fetch_add(data.len() as u64, Ordering::AcqRel);
            s.frames.fetch_add(1, Ordering::Relaxed);
            s.waiting.fetch_add(1, Ordering::AcqRel);
            this.holding = true;
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

/// Why the proxy closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    HeaderTimeout,
    Idle,
    SendTimeout,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::HeaderTimeout => "header_read_timeout",
            Why::Idle => "idle_timeout",
            Why::SendTimeout => "send_timeout",
        }
    }
}

enum Closed {
    Error(Box<dyn std::error::Error + Send + Sync>),
    By(Why),
}

/// What the watchdog decides at one look.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Close(Why),
    LookAgainAt(Instant),
}

/// A response that has not progressed since the watchdog first saw it stuck.
#[derive(Debug, Default)]
struct Stall {
    since: Option<(Instant, u64)>,
}

fn verdict(
    s: &ConnState,
    h2_preface_done: bool,
    limits: &Limits,
    stall: &mut Stall,
    now: Instant,
) -> Verdict {
    if s.in_flight.load(Ordering::Acquire) > 0 {
        let frames = s.frames.load(Ordering::Acquire);
        if s.waiting.load(Ordering::Acquire) > 0 {
            match stall.since {
                Some((t, f)) if f == frames => {
                    if now.duration_since(t) >= limits.send_timeout {
                        return Verdict::Close(Why::SendTimeout);
                    }
                }
                _ => stall.since = Some((now, frames)),
            }
        } else {
            stall.since = None;
        }
        // Checked a few times per send_timeout: a stall is noticed within 1.25 x of it.
        let tick = (limits.send_timeout / 4).max(Duration::from_millis(10));
        return Verdict::LookAgainAt(now + tick);
    }
    stall.since = None;
    if s.requests.load(Ordering::Acquire) == 0 && !h2_preface_done {
        let deadline = s.start + limits.header_read_timeout;
        return if now >= deadline {
            Verdict::Close(Why::HeaderTimeout)
        } else {
            Verdict::LookAgainAt(deadline)
        };
    }
    let idle_since = s.start + Duration::from_millis(s.idle_since_ms.load(Ordering::Acquire));
    let deadline = idle_since + limits.idle_timeout;
    if now >= deadline {
        Verdict::Close(Why::Idle)
    } else {
        Verdict::LookAgainAt(deadline)
    }
}

/// Drive one connection; close it (by dropping it) when [`verdict`] says so.
async fn watchdog<C, E>(
    conn: C,
    state: &ConnState,
    framing: &Flags,
    limits: &Limits,
) -> Result<(), Closed>
where
    C: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut stall = Stall::default();
    let first = state.start + limits.header_read_timeout.min(limits.idle_timeout);
    let sleep = tokio::time::sleep_until(first.into());
    let mut sleep = std::pin::pin!(sleep);
    loop {
        tokio::select! {
            ended = &mut conn => return ended.map_err(|e| Closed::Error(e.into())),
            _ = &mut sleep => {
                let now = Instant::now();
                match verdict(state, framing.h2_preface_done(), limits, &mut stall, now) {
                    Verdict::Close(why) => return Err(Closed::By(why)),
                    Verdict::LookAgainAt(t) => sleep.as_mut().reset(t.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_size_counts_the_request_line_and_header_lines() {
        let req = Request::builder()
            .method("GET")
            .uri("/admin/x?a=1")
            .header("host", "localhost")
            .header("x-a", "bb")
            .body(())
            .unwrap();
        // "GET /admin/x?a=1 HTTP/1.1\r\n" + "host: localhost\r\n" + "x-a: bb\r\n" + "\r\n"
        assert_eq!(head_size(&req), 27 + 17 + 9 + 2);
    }

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(20),
            ..Limits::default()
        }
    }

    fn state() -> ConnState {
        ConnState::new(Arc::new(Flags::default()))
    }

    #[test]
    fn a_connection_without_a_request_head_gets_header_read_timeout() {
        let (s, l, mut stall) = (state(), limits(), Stall::default());
        let at = |secs| s.start + Duration::from_secs(secs);
        assert_eq!(
            verdict(&s, false, &l, &mut stall, at(9)),
            Verdict::LookAgainAt(at(10))
        );
        assert_eq!(
            verdict(&s, false, &l, &mut stall, at(10)),
            Verdict::Close(Why::HeaderTimeout)
        );
        // A complete HTTP/2 preface: from then on it is an idle connection.
        assert_eq!(
            verdict(&s, true, &l, &mut stall, at(10)),
            Verdict::LookAgainAt(at(60))
        );
        assert_eq!(
            verdict(&s, true, &l, &mut stall, at(60)),
            Verdict::Close(Why::Idle)
        );
    }

    #[test]
    fn idle_counts_from_the_end_of_the_last_request() {
        let (s, l, mut stall) = (state(), limits(), Stall::default());
        s.requests.store(3, Ordering::Relaxed);
        s.idle_since_ms.store(30_000, Ordering::Relaxed);
        let at = |secs| s.start + Duration::from_secs(secs);
        assert_eq!(
            verdict(&s, false, &l, &mut stall, at(89)),
            Verdict::LookAgainAt(at(90))
        );
        assert_eq!(
            verdict(&s, false, &l, &mut stall, at(90)),
            Verdict::Close(Why::Idle)
        );
        // A request in flight is never idle, however long it takes Medusa.
        s.in_flight.store(1, Ordering::Relaxed);
        assert_eq!(
            verdict(&s, false, &l, &mut stall, at(500)),
            Verdict::LookAgainAt(at(505))
        );
    }

    #[test]
    fn only_a_response_the_client_takes_nothing_of_times_out() {
        let (s, l, mut stall) = (state(), limits(), Stall::default());
        s.requests.store(1, Ordering::Relaxed);
        s.in_flight.store(1, Ordering::Relaxed);
        let at = |secs| s.start + Duration::from_secs(secs);
        // A frame handed to hyper and not taken: the stall starts being watched at 0.
        s.waiting.store(1, Ordering::Relaxed);
        s.frames.store(7, Ordering::Relaxed);
        assert!(matches!(
            verdict(&s, false, &l, &mut stall, at(0)),
            Verdict::LookAgainAt(_)
        ));
        assert!(matches!(
            verdict(&s, false, &l, &mut stall, at(19)),
            Verdict::LookAgainAt(_)
        ));
        // Progress (the client took a frame) starts the clock again.
        s.frames.store(8, Ordering::Relaxed);
        assert!(matches!(
            verdict(&s, false, &l, &mut stall, at(20)),
            Verdict::LookAgainAt(_)
        ));
        assert!(matches!(
            verdict(&s, false, &l, &mut stall, at(39)),
            Verdict::LookAgainAt(_)
        ));
        assert_eq!(
            verdict(&s, false, &l, &mut stall, at(40)),
            Verdict::Close(Why::SendTimeout)
        );
        // Waiting on Medusa (no frame held) is not the client's stall.
        let mut stall = Stall::default();
        s.waiting.store(0, Ordering::Relaxed);
        for t in [0, 30, 60, 90] {
            assert!(matches!(
                verdict(&s, false, &l, &mut stall, at(t)),
                Verdict::LookAgainAt(_)
            ));
        }
    }
}
