//! One admitted connection: HTTP/1.1 or HTTP/2 served on it (plain or decrypted TLS), the
//! framing sniffer on what hyper reads, and the watchdog that closes it when it sends no
//! request head in time, sits idle, or takes no response bytes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::{Service, ServiceExt};

use super::{HeadTooLarge, Limits, PeerAddr, head_size};
use crate::metrics::ConnMetrics;
use crate::sniff::{ConflictingFraming, Flags, Sniffed};
use crate::tls::HandshakeError;

/// One admitted connection, before its first byte is read.
pub(super) struct Conn<S> {
    pub(super) service: S,
    pub(super) builder: Arc<auto::Builder<TokioExecutor>>,
    /// Taken at accept: a shutdown waits for a handshake in progress too.
    pub(super) watcher: Watcher,
    pub(super) peer: SocketAddr,
    pub(super) limits: Limits,
    pub(super) counters: ConnMetrics,
    /// When it was accepted: the header read timeout counts from here.
    pub(super) opened: Instant,
}

impl<S> Conn<S> {
    /// Serve HTTP on `io` (the TCP stream, or the decrypted TLS session: the HTTP/1 framing
    /// sniffer reads what hyper reads) until it ends or the watchdog closes it.
    pub(super) async fn serve<B, IO>(self, io: IO)
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            service,
            builder,
            watcher,
            peer,
            limits,
            counters,
            opened,
        } = self;
        let (stream, framing) = Sniffed::new(io);
        let state = Arc::new(ConnState::new(framing.clone(), opened));
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
                    req.extensions_mut()
                        .insert(HeadTooLarge(limits.max_head_bytes));
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
        let conn = watcher.watch(conn.into_owned());
        match watchdog(conn, &state, &framing, &limits).await {
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
    }

    /// Count and log a connection that did not become a TLS session.
    pub(super) fn handshake_failed(&self, e: HandshakeError) {
        let peer = self.peer;
        match e {
            // A TCP health check: connected, said nothing, left. Nothing failed.
            HandshakeError::Closed => {}
            HandshakeError::Timeout => {
                self.counters.closed_header_timeout.inc();
                tracing::debug!(peer = %peer, reason = "header_read_timeout", "connection closed by the proxy before the TLS handshake completed");
            }
            HandshakeError::PlainHttp | HandshakeError::Tls(_) => {
                self.counters.closed_tls_handshake.inc();
                tracing::debug!(peer = %peer, error = %e, reason = "tls_handshake", "connection closed by the proxy");
            }
        }
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout)
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
    /// `start`: when the connection was accepted (before a TLS handshake).
    fn new(io: Arc<Flags>, start: Instant) -> ConnState {
        ConnState {
            yielded: AtomicU64::new(0),
            io,
            start,
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

/// When the watchdog first looks at a connection: by its header or idle deadline, and soon
/// enough to see a response stuck from the start. (It once looked only at the first two, so a
/// client that stopped reading its first response was cut `header_read_timeout` late.)
fn first_look(limits: &Limits) -> Duration {
    limits
        .header_read_timeout
        .min(limits.idle_timeout)
        .min((limits.send_timeout / 4).max(Duration::from_millis(10)))
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
    let first = state.start + first_look(limits);
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

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(20),
            ..Limits::default()
        }
    }

    fn state() -> ConnState {
        ConnState::new(Arc::new(Flags::default()), Instant::now())
    }

    /// A response stuck from the connection's start is noticed within a quarter of
    /// `send_timeout`, not only at the header deadline: the cut comes within 1.5 x
    /// `send_timeout` of the stall whatever `header_read_timeout` is.
    #[test]
    fn the_first_look_comes_soon_enough_to_time_a_stall() {
        let l = limits();
        assert_eq!(first_look(&l), Duration::from_secs(5));
        let l = Limits {
            header_read_timeout: Duration::from_secs(2),
            ..limits()
        };
        assert_eq!(first_look(&l), Duration::from_secs(2));
        // Stuck from the first look on: closed at the first look at or past send_timeout
        // after it.
        let (s, mut stall) = (state(), Stall::default());
        s.in_flight.fetch_add(1, Ordering::AcqRel);
        s.waiting.fetch_add(1, Ordering::AcqRel);
        let l = Limits {
            header_read_timeout: Duration::from_secs(60),
            ..limits()
        };
        let mut at = s.start + first_look(&l);
        loop {
            match verdict(&s, false, &l, &mut stall, at) {
                Verdict::LookAgainAt(t) => at = t,
                Verdict::Close(why) => {
                    assert_eq!(why, Why::SendTimeout);
                    break;
                }
            }
        }
        assert!(at - s.start <= l.send_timeout * 3 / 2, "{:?}", at - s.start);
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
