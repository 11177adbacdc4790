//! Accept loop and graceful shutdown, on an already-bound listener (so tests can bind port 0
//! and `app` decides the order of start-up).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::sniff::{ConflictingFraming, Sniffed};
use std::sync::atomic::{AtomicU64, Ordering};

/// How a server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every in-flight request finished within the grace period.
    Clean,
    /// The grace period ran out with connections still open.
    GraceExceeded,
}

/// Limits on what a client may send before the handler sees the request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A client that has not sent a complete request head within this is disconnected.
    pub header_read_timeout: Duration,
    /// More header fields than this -> 431 (HTTP/1.1) and the connection closed.
    pub max_headers: usize,
    /// A request head larger than this -> 431 (HTTP/1.1); the HTTP/2 header list cap.
    pub max_head_bytes: usize,
    /// Largest read buffer of a connection (at least `max_head_bytes`). hyper grows it while
    /// reads fill it, so large bodies move in large reads; it also bounds the head hyper will
    /// buffer, so heads between `max_head_bytes` and this are marked [`HeadTooLarge`] for the
    /// handler to refuse.
    pub read_buf_max: usize,
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
        }
    }
}

/// Serve HTTP/1.1 and HTTP/2 (prior knowledge) on `listener` until `shutdown` becomes true;
/// then stop accepting at once, let in-flight requests finish for up to `grace`, and return.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    limits: Limits,
) -> Drained
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
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
        .max_header_list_size(limits.max_head_bytes as u32);
    let graceful = GracefulShutdown::new();
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
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let (stream, framing) = Sniffed::new(stream);
                let served = AtomicU64::new(0);
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    // hyper hands requests over in the order the sniffer saw their heads.
                    if framing.take_conflicting(served.fetch_add(1, Ordering::Relaxed)) {
                        req.extensions_mut().insert(ConflictingFraming);
                    }
                    if limits.read_buf_max > limits.max_head_bytes
                        && req.version() < http::Version::HTTP_2
                        && head_size(&req) > limits.max_head_bytes
                    {
                        req.extensions_mut().insert(HeadTooLarge(limits.max_head_bytes));
                    }
                    let fut = handler(req, peer);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
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
