//! Spotting `Content-Length` together with `Transfer-Encoding` on HTTP/1 requests.
//!
//! hyper handles such a request safely (RFC 9112 §6.3: the chunked coding wins, the
//! `Content-Length` is dropped, the connection is closed after the response), but it hides
//! the fact from the service, and we want to refuse such a request with 400 instead of
//! forwarding it: it is a request-smuggling probe. So the connection's bytes are followed as
//! they are read (request heads, then bodies by their framing) and each head is checked. The
//! watcher only ever *reports*; when it meets anything it does not understand (HTTP/2 after
//! its preface, a connection that switched protocols, a malformed message, a huge head) it
//! stops watching, and hyper's own parser stays the judge of the message. An `Upgrade`
//! request that is refused leaves the connection HTTP, so watching goes on: only the server's
//! 101 (see [`Flags::switched_protocols`]) ends it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Request extension: this request carried both `Content-Length` and `Transfer-Encoding`.
#[derive(Debug, Clone, Copy)]
pub struct ConflictingFraming;

/// Larger heads are not followed (hyper refuses them anyway).
const MAX_HEAD: usize = 64 * 1024;

/// Which requests of a connection carried both framing headers. Requests are numbered from 0
/// in the order hyper hands them to the service; bit `i % 64` is set by the sniffer when head
/// `i` is read and taken (cleared) by the service when request `i` is handled, so any number
/// of requests per connection is covered. (Only a client pipelining more than 64 requests
/// ahead could make bits collide, and then only its own requests are affected.)
#[derive(Debug, Default)]
pub struct Flags {
    conflicting: AtomicU64,
    /// Set by the server when it answered a protocol switch: the bytes that follow are no
    /// longer HTTP, so the sniffer stops following them.
    switched: AtomicBool,
    /// The client sent the whole HTTP/2 connection preface (RFC 9113 §3.4).
    h2_preface: AtomicBool,
    /// Bytes written to the client so far, and who waits for that number to grow (see
    /// `server::Watched`, which keeps what hyper queues for a slow client small).
    written: AtomicU64,
    writable: AtomicWaker,
}

impl Flags {
    /// Bytes written to the client so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Wake `cx` at the next write that makes progress.
    pub fn wake_on_write(&self, cx: &Context<'_>) {
        self.writable.register(cx.waker());
    }

    fn wrote(&self, n: usize) {
        if n > 0 {
            self.written.fetch_add(n as u64, Ordering::AcqRel);
            self.writable.wake();
        }
    }

    /// Whether the client sent the complete HTTP/2 connection preface.
    pub fn h2_preface_done(&self) -> bool {
        self.h2_preface.load(Ordering::Acquire)
    }

    /// The connection switched protocols (a 101, or a 2xx to CONNECT): stop following it.
    /// An `Upgrade` request that was refused leaves the connection HTTP, and followed.
    pub fn switched_protocols(&self) {
        self.switched.store(true, Ordering::Release);
    }

    /// Whether request `index` had both headers; clears the mark.
    pub fn take_conflicting(&self, index: u64) -> bool {
        let bit = 1u64 << (index % 64);
        self.conflicting.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }
}

/// RFC 9113 §3.4.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum State {
    Head(Vec<u8>),
    /// How many bytes of the HTTP/2 preface have been seen.
    Preface(usize),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailers(Vec<u8>),
    Off,
}

/// An I/O stream that follows the HTTP/1 requests read through it.
pub struct Sniffed<T> {
    inner: T,
    state: State,
    index: u64,
    flags: Arc<Flags>,
}

impl<T> Sniffed<T> {
    /// Follow the requests read through `inner` (a freshly accepted connection: the first
    /// bytes must be a request head or the HTTP/2 preface). The [`Flags`] are shared with
    /// the service, which asks them about each request it is handed.
    pub fn new(inner: T) -> (Sniffed<T>, Arc<Flags>) {
        let flags = Arc::new(Flags::default());
        (
            Sniffed {
                inner,
                state: State::Head(Vec::new()),
                index: 0,
                flags: flags.clone(),
            },
            flags,
        )
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Preface(seen) => {
                    // Follow the preface only to know when it is complete (the server closes
                    // a connection that does not complete it in time); hyper judges it.
                    let take = (H2_PREFACE.len() - *seen).min(data.len());
                    if data[..take] != H2_PREFACE[*seen..*seen + take] {
                        self.state = State::Off;
                        return;
                    }
                    *seen += take;
                    data = &data[take..];
                    if *seen == H2_PREFACE.len() {
                        self.flags.h2_preface.store(true, Ordering::Release);
                        self.state = State::Off;
                        return;
                    }
                }
                State::Head(buf) if buf.is_empty() => {
                    if data.starts_with(b"PRI ") {
                        self.state = State::Preface(0);
                        continue;
                    }
                    // The usual case: the whole head arrived in one read; parse it in place.
                    if let Some(end) = find_head_end(data, 0) {
                        self.state = self.on_head(&data[..end]);
                        data = &data[end..];
                    } else {
                        buf.extend_from_slice(data);
                        return;
                    }
                }
                State::Head(buf) => {
                    let before = buf.len();
                    buf.extend_from_slice(data);
                    let Some(end) = find_head_end(buf, before.saturating_sub(3)) else {
                        if buf.len() > MAX_HEAD {
                            self.state = State::Off;
                        }
                        return;
                    };
                    let consumed = end - before;
                    let head = std::mem::take(buf);
                    data = &data[consumed..];
                    self.state = self.on_head(&head[..end]);
                }
                State::Body(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => {
                    let Some(pos) = data.iter().position(|b| *b == b'\n') else {
                        line.extend_from_slice(data);
                        if line.len() > 1024 {
                            self.state = State::Off;
                        }
                        return;
                    };
                    line.extend_from_slice(&data[..pos]);
                    data = &data[pos + 1..];
                    let size = parse_chunk_size(line);
                    self.state = match size {
                        Some(0) => State::Trailers(Vec::new()),
                        Some(n) => State::ChunkData(n),
                        None => State::Off,
                    };
                }
                State::ChunkData(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::ChunkDataEnd(2);
                    }
                }
                State::ChunkDataEnd(left) => {
                    // The CRLF after a chunk's data.
                    *left -= 1;
                    data = &data[1..];
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailers(line) => {
                    let Some(pos) = data.iter().position(|b| *b == b'\n') else {
                        line.extend_from_slice(data);
                        if line.len() > MAX_HEAD {
                            self.state = State::Off;
                        }
                        return;
                    };
                    let empty = line.iter().chain(&data[..pos]).all(|b| *b == b'\r');
                    data = &data[pos + 1..];
                    self.state = if empty {
                        State::Head(Vec::new())
                    } else {
                        State::Trailers(Vec::new())
                    };
                }
            }
        }
    }

    /// Check a complete head; decide how its body is framed.
    fn on_head(&mut self, head: &[u8]) -> State {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = req.parse(head) else {
            return State::Off;
        };
        let mut content_length = None;
        let mut chunked = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                content_length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if content_length.is_none() {
                    return State::Off;
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        }
        let index = self.index;
        self.index += 1;
        if content_length.is_some() && chunked.is_some() {
            self.flags
                .conflicting
                .fetch_or(1 << (index % 64), Ordering::AcqRel);
        }
        match (chunked, content_length) {
            (Some(true), _) => State::ChunkSize(Vec::new()),
            (Some(false), _) => State::Off, // hyper answers 400
            (None, Some(0)) | (None, None) => State::Head(Vec::new()),
            (None, Some(n)) => State::Body(n),
        }
    }
}

fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let hex = line.split(|b| *b == b';').next()?.trim_ascii();
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll
            && !matches!(self.state, State::Off)
        {
            let this = &mut *self;
            if this.flags.switched.load(Ordering::Acquire) {
                this.state = State::Off;
            } else {
                this.feed(&buf.filled()[before..]);
            }
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, b);
        if let Poll::Ready(Ok(n)) = polled {
            self.flags.wrote(n);
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.flags.wrote(n);
        }
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Vec<bool>, bool) {
        let (mut s, flags) = Sniffed::new(());
        for c in chunks {
            s.feed(c);
        }
        let v = (0..4).map(|i| flags.take_conflicting(i)).collect();
        (v, matches!(s.state, State::Off))
    }

    #[test]
    fn flags_only_requests_with_both_headers_across_pipelining_and_splits() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\ncontent-length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        // Whole, and fed one byte at a time: same verdict.
        assert_eq!(run(&[stream]).0, [false, false, false, true]);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes).0, [false, false, false, true]);
        let (v, off) = run(&[stream]);
        assert!(!off && v[3]);
    }

    #[test]
    fn requests_beyond_the_64th_are_covered() {
        let (mut s, flags) = Sniffed::new(());
        for i in 0..200u64 {
            let head: &[u8] = if i == 150 {
                b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            } else {
                b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
            };
            s.feed(head);
            assert!(
                !matches!(s.state, State::Off),
                "stopped following at request {i}"
            );
            assert_eq!(s.index, i + 1);
            assert_eq!(flags.take_conflicting(i), i == 150, "request {i}");
        }
    }

    #[test]
    fn body_bytes_that_look_like_headers_do_not_count() {
        let body = b"x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stream = format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        stream.extend_from_slice(body);
        stream.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(run(&[&stream]).0, [false, false, false, false]);
    }

    #[test]
    fn stops_watching_what_it_does_not_follow() {
        assert!(run(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).1);
        assert!(run(&[b"PRI /x HTTP/1.1\r\n\r\n"]).1);
        assert!(run(&[b"garbage\r\n\r\n"]).1);
        assert!(run(&[b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]).1);
    }

    #[test]
    fn an_upgrade_request_does_not_stop_the_guard() {
        // A refused Upgrade leaves the connection HTTP: the next request is still checked.
        let stream =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (v, off) = run(&[stream]);
        assert!(!off);
        assert_eq!(v, [false, true, false, false]);
    }

    #[test]
    fn the_h2_preface_is_complete_only_when_all_of_it_arrived() {
        let (mut s, flags) = Sniffed::new(());
        s.feed(b"PRI * HTTP/2.0\r\n");
        assert!(!flags.h2_preface_done());
        s.feed(b"\r\nSM\r");
        assert!(!flags.h2_preface_done());
        s.feed(b"\n\r\n\x00\x00");
        assert!(flags.h2_preface_done());
        assert!(matches!(s.state, State::Off));
    }
}
