//! Raw TCP against the proxy: connections from a chosen loopback address, bytes written as a
//! client would, and replies read until a marker, a whole response or the close.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::wait::LONG;

/// A TCP connection to `to` from the loopback address `from` (127.0.0.x).
pub async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(format!("{from}:0").parse().unwrap())?;
    sock.connect(to).await
}

/// The socket address of a base URL `http://host:port`.
pub fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

/// Reads from `s` until `until` appears in what came back; returns all of it. Panics if the
/// connection closes first or nothing more arrives within [`LONG`].
pub async fn read_until(s: &mut TcpStream, until: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(until) {
        let n = tokio::time::timeout(LONG, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for {until:?}; got {:?}",
                    String::from_utf8_lossy(&out)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "closed before {until:?}; got {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one HTTP/1.1 response (head, and a Content-Length or chunked body) from `c`, or what
/// came before the close. Panics if nothing more arrives within [`LONG`].
pub async fn read_response(c: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(LONG, c.read(&mut chunk))
            .await
            .expect("a response")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let body = &text[end + 4..];
            if let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                if body.len() >= len {
                    break;
                }
            } else if head.contains("transfer-encoding: chunked") && body.ends_with("0\r\n\r\n") {
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Writes `bytes` on a fresh connection to `to` and reads until the peer closes or goes
/// silent for `silence`: what came back, and whether the peer closed the connection (EOF or
/// reset) rather than going silent.
pub async fn exchange(to: SocketAddr, bytes: &[u8], silence: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(silence, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Err(_) => break false,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Waits until `s` is closed by the peer (EOF or reset), discarding what it sends; panics
/// after `within`.
pub async fn closed_within(s: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!("the connection was still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
        }
    }
}
