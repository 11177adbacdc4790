//! Accept loop, admission and graceful shutdown, on an already-bound listener (so tests can
//! bind port 0 and `app` decides the order of start-up). What happens on one connection once
//! admitted (TLS aside, see [`crate::tls`]) is in `server/conn.rs`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Service;

mod conn;
mod peers;

pub use conn::Watched;

use crate::metrics::ConnMetrics;
use crate::tls::TlsAcceptor;
use conn::Conn;
use peers::PeerCounts;

/// How [`serve`] ended, after `shutdown` turned true.
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
    /// Connections one peer (an IPv4 address, an IPv6 /64) may hold open at once; more from
    /// it are closed at accept. `None`: no per-peer cap.
    pub max_connections_per_peer: Option<usize>,
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
            max_connections_per_peer: None,
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
///
/// Every request reaches `service` with a [`PeerAddr`] extension (and [`HeadTooLarge`] or
/// [`ConflictingFraming`](crate::sniff::ConflictingFraming) when those apply). `counters` receives the connection counts.
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use medusa_auth_proxy::metrics::ConnMetrics;
/// use medusa_auth_proxy::server::{self, Drained, Limits, PeerAddr};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let hello = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
///     let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.to_string());
///     let text = format!("hello {}\n", peer.unwrap_or_default());
///     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(text))))
/// });
/// let (stop, stop_rx) = tokio::sync::watch::channel(false);
/// let server = tokio::spawn(server::serve(
///     listener,
///     hello,
///     server::admit_all(),
///     stop_rx,
///     Duration::from_secs(5),
///     Limits::default(),
///     ConnMetrics::default(),
/// ));
/// // ... serve until told to stop:
/// stop.send_replace(true);
/// assert_eq!(server.await?, Drained::Clean);
/// # Ok(()) }
/// ```
#[allow(clippy::too_many_arguments)]
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    admit: Admit,
    shutdown: watch::Receiver<bool>,
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
    serve_tls(
        listener, service, admit, shutdown, grace, limits, counters, None,
    )
    .await
}

/// [`serve`], with every connection a TLS session when `tls` is given (HTTP/1.1 or HTTP/2 by
/// ALPN). The handshake runs in the connection's task after admission, so a refused peer
/// costs none, and it shares the first request head's [`Limits::header_read_timeout`],
/// counted from accept: a silent client holds its slot no longer than on a plain listener.
/// A failed handshake is counted in [`ConnMetrics::closed_tls_handshake`].
#[allow(clippy::too_many_arguments)]
pub async fn serve_tls<S, B>(
    listener: TcpListener,
    service: S,
    admit: Admit,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    limits: Limits,
    counters: ConnMetrics,
    tls: Option<TlsAcceptor>,
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
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(AtomicUsize::new(0));
    let mut refusals_peer = Sparse::default();
    let mut refusals_full = Sparse::default();
    let peers = Arc::new(PeerCounts::default());
    let mut refusals_per_peer = Sparse::default();
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
                // Taken before the listener's slot, and given back if that is refused.
                let peer_slot = match limits.max_connections_per_peer {
                    None => None,
                    Some(max) => {
                        let Some(s) = PeerCounts::take(&peers, peer.ip(), max) else {
                            counters.refused_per_peer.inc();
                            if let Some(more) = refusals_per_peer.log_now() {
                                tracing::warn!(peer = %peer, limit = max, more_since_last_line = more, "connection refused: this peer holds proxy.max_connections_per_peer");
                            }
                            continue;
                        };
                        Some(s)
                    }
                };
                let Some(slot) = ConnSlot::take(&open, &limits, &counters) else {
                    counters.refused_full.inc();
                    if let Some(more) = refusals_full.log_now() {
                        tracing::warn!(peer = %peer, limit = limits.max_connections, more_since_last_line = more, "connection refused: proxy.max_connections reached");
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                cap_send_buffer(&stream);
                let conn = Conn {
                    service: service.clone(),
                    builder: builder.clone(),
                    watcher: graceful.watcher(),
                    peer,
                    limits,
                    counters: counters.clone(),
                    opened: Instant::now(),
                };
                match tls.clone() {
                    None => {
                        tokio::spawn(async move {
                            let _slots = (slot, peer_slot);
                            conn.serve(stream).await;
                        });
                    }
                    Some(tls) => {
                        tokio::spawn(async move {
                            let _slots = (slot, peer_slot);
                            let deadline = conn.opened + limits.header_read_timeout;
                            match tls.accept(stream, deadline).await {
                                Ok(session) => conn.serve(session).await,
                                Err(e) => conn.handshake_failed(e),
                            }
                        });
                    }
                }
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

/// What the kernel may queue toward one client (`SO_SNDBUF`; Linux doubles it for its own
/// bookkeeping): without a cap it autotunes up to `net.ipv4.tcp_wmem`'s maximum (4 MiB by
/// default) for a client that stops reading, which is kernel memory outside the proxy's RSS but
/// charged to its memory cgroup (`sock` in a pod's `memory.stat`): 200 stalled downloads queued
/// ~790 MiB that way (measured, `slow_readers_hold_bounded_memory`). 64 KiB still fills a
/// LAN's bandwidth-delay product several times over; past ~50 ms of latency a large download
/// is held to about 1.3 MB/s per client. (The connections to Medusa get the receive side's
/// cap from their connector, `upstream::tls`.)
const CLIENT_SEND_BUFFER: usize = 64 * 1024;

fn cap_send_buffer(stream: &tokio::net::TcpStream) {
    if let Err(e) = socket2::SockRef::from(stream).set_send_buffer_size(CLIENT_SEND_BUFFER) {
        tracing::debug!(error = %e, "SO_SNDBUF not set");
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
}
