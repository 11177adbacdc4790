//! The access log: one line per request, written without the tracing machinery and buffered.
//!
//! Formatting through `tracing` and one `write(2)` per request cost about 5 µs a request in
//! the benchmark (more than the rest of the proxy's user-space work), so access lines are
//! formatted by hand into a buffer that is written out when it holds 16 KiB or every 100 ms,
//! like nginx's `access_log ... buffer= flush=`. Lines keep the shape of the diagnostic log
//! (same timestamp, `INFO access:` prefix or JSON with `"target":"access"`), so one parser
//! reads both. Diagnostic lines are not buffered.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::config::LogFormat;

/// Buffered lines are written out at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_AT: usize = 16 * 1024;

/// One request, as logged: the fields of an access line, in the order they are written.
pub struct Entry<'a> {
    /// The request method as the client sent it (`GET`, `PROPFIND`, ...).
    pub method: &'a str,
    /// The path and query the client asked for, with every query value already redacted
    /// (see [`redact_query`](crate::proxy::record::redact_query)); `-` when unknown.
    pub path: &'a str,
    /// The status the client got, the proxy's own answers included.
    pub status: u16,
    /// From the request head to the end (or the drop) of the response body; written in
    /// milliseconds with microsecond precision (`duration_ms=1.234`).
    pub duration: Duration,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes handed to the client (not counting the head).
    pub bytes_out: u64,
    /// The TCP peer's address and port.
    pub client: std::net::SocketAddr,
    /// The 8-hex-digit fingerprint of the client key the request presented, never the key;
    /// `None` (written `-` or `null`) without `access.client_keys`.
    pub client_key: Option<&'a str>,
    /// The request was sent to Medusa a second time, with a new token, after Medusa rejected
    /// the first.
    pub replayed: bool,
    /// The identity served as (names are `[A-Za-z0-9_-]`, validated by the config); `None`
    /// in the single form (nothing written: its line is unchanged).
    pub identity: Option<&'a str>,
}

/// Where flushed bytes go (stderr, or a test's buffer).
pub type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;

/// The access log: [`record`](AccessLog::record) appends a line to a buffer that is written
/// to its sink when it holds 16 KiB, or by [`spawn_flusher`](AccessLog::spawn_flusher)'s task
/// at most [`FLUSH_EVERY`] after a line was recorded, and on drop.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use medusa_auth_proxy::access_log::{AccessLog, Entry};
/// use medusa_auth_proxy::config::LogFormat;
///
/// let out = Arc::new(Mutex::new(Vec::new()));
/// let sink = out.clone();
/// let log = AccessLog::with_sink(
///     LogFormat::Text,
///     Box::new(move |bytes: &[u8]| sink.lock().unwrap().extend_from_slice(bytes)),
/// );
/// log.record(&Entry {
///     method: "GET",
///     path: "/admin/products?q=***",
///     status: 200,
///     duration: Duration::from_micros(1234),
///     bytes_in: 0,
///     bytes_out: 512,
///     client: "127.0.0.1:5555".parse().unwrap(),
///     client_key: None,
///     replayed: false,
///     identity: Some("reporting"),
/// });
/// log.flush();
/// let line = String::from_utf8(out.lock().unwrap().clone()).unwrap();
/// assert!(line.contains("INFO access: method=GET path=/admin/products?q=*** status=200 duration_ms=1.234"));
/// assert!(line.ends_with(" identity=reporting\n"));
/// ```
pub struct AccessLog {
    format: LogFormat,
    buf: Mutex<String>,
    sink: Sink,
    /// Lines are buffered and the flusher has been told; it writes them out within
    /// [`FLUSH_EVERY`]. With no traffic nothing is pending and the flusher sleeps.
    pending: AtomicBool,
    wake: Notify,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .finish()
    }
}

impl AccessLog {
    /// Lines go to stderr, like the diagnostic log.
    pub fn stderr(format: LogFormat) -> AccessLog {
        AccessLog::with_sink(
            format,
            Box::new(|bytes| {
                let _ = std::io::stderr().lock().write_all(bytes);
            }),
        )
    }

    /// Lines in `format` go to `sink`, which is called with whole lines only (one or more at
    /// a time) from the recording thread or the flusher task.
    pub fn with_sink(format: LogFormat, sink: Sink) -> AccessLog {
        AccessLog {
            format,
            buf: Mutex::new(String::with_capacity(FLUSH_AT * 2)),
            sink,
            pending: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// The task that writes buffered lines out at most [`FLUSH_EVERY`] after they were
    /// recorded, and only wakes when there is something to write.
    pub fn spawn_flusher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            loop {
                log.wake.notified().await;
                tokio::time::sleep(FLUSH_EVERY).await;
                // Before the flush: a line recorded from here on wakes the next round.
                log.pending.store(false, Ordering::Release);
                log.flush();
            }
        })
    }

    /// Append the line of `e` to the buffer (written out at once if the buffer reaches
    /// 16 KiB). Without a running [`spawn_flusher`](AccessLog::spawn_flusher) task, a line
    /// waits for the next full buffer, [`flush`](AccessLog::flush) or drop.
    pub fn record(&self, e: &Entry<'_>) {
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        match self.format {
            LogFormat::Text => write_text(&mut buf, e),
            LogFormat::Json => write_json(&mut buf, e),
        }
        if buf.len() >= FLUSH_AT {
            (self.sink)(buf.as_bytes());
            buf.clear();
        }
        drop(buf);
        // A load first: under traffic the flag is already set and the line stays shared.
        if !self.pending.load(Ordering::Acquire) && !self.pending.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Write out whatever is buffered.
    pub fn flush(&self) {
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        if !buf.is_empty() {
            (self.sink)(buf.as_bytes());
            buf.clear();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

fn timestamp(buf: &mut String) {
    let _ = write!(
        buf,
        "{}",
        humantime::format_rfc3339_micros(SystemTime::now())
    );
}

fn write_text(buf: &mut String, e: &Entry<'_>) {
    timestamp(buf);
    let _ = writeln!(
        buf,
        "  INFO access: method={} path={} status={} duration_ms={}.{:03} bytes_in={} bytes_out={} client={} client_key={} replayed={}",
        e.method,
        e.path,
        e.status,
        e.duration.as_millis(),
        e.duration.subsec_micros() % 1000,
        e.bytes_in,
        e.bytes_out,
        e.client,
        e.client_key.unwrap_or("-"),
        e.replayed
    );
    if let Some(id) = e.identity {
        // Before the newline `writeln!` wrote.
        buf.pop();
        let _ = writeln!(buf, " identity={id}");
    }
}

fn write_json(buf: &mut String, e: &Entry<'_>) {
    buf.push_str("{\"timestamp\":\"");
    timestamp(buf);
    buf.push_str("\",\"level\":\"INFO\",\"target\":\"access\",\"method\":");
    json_str(buf, e.method);
    buf.push_str(",\"path\":");
    json_str(buf, e.path);
    let _ = write!(
        buf,
        ",\"status\":{},\"duration_ms\":{}.{:03},\"bytes_in\":{},\"bytes_out\":{},\"client\":\"{}\",\"client_key\":",
        e.status,
        e.duration.as_millis(),
        e.duration.subsec_micros() % 1000,
        e.bytes_in,
        e.bytes_out,
        e.client
    );
    match e.client_key {
        Some(k) => json_str(buf, k),
        None => buf.push_str("null"),
    }
    let _ = write!(buf, ",\"replayed\":{}", e.replayed);
    if let Some(id) = e.identity {
        buf.push_str(",\"identity\":");
        json_str(buf, id);
    }
    buf.push_str("}\n");
}

/// A JSON string literal. Paths are ASCII in practice; anything else is escaped properly.
fn json_str(buf: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        buf.push('"');
        buf.push_str(s);
        buf.push('"');
    } else {
        buf.push_str(&serde_json::Value::from(s).to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn entry() -> Entry<'static> {
        Entry {
            method: "GET",
            path: "/admin/products?q=***",
            status: 200,
            duration: Duration::from_micros(1234),
            bytes_in: 0,
            bytes_out: 1022,
            client: "127.0.0.1:5555".parse().unwrap(),
            client_key: Some("ab12cd34"),
            replayed: false,
            identity: None,
        }
    }

    fn capture(format: LogFormat) -> (AccessLog, Arc<Mutex<Vec<u8>>>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        let log = AccessLog::with_sink(
            format,
            Box::new(move |b| o.lock().unwrap().extend_from_slice(b)),
        );
        (log, out)
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let (log, out) = capture(LogFormat::Json);
        log.record(&entry());
        log.record(&Entry {
            path: "/a\"b\\c\u{1}",
            client_key: None,
            ..entry()
        });
        assert!(out.lock().unwrap().is_empty(), "buffered until flush");
        log.flush();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let v = &lines[0];
        assert_eq!(v["target"], "access");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/admin/products?q=***");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.234);
        assert_eq!(v["bytes_out"], 1022);
        assert_eq!(v["client"], "127.0.0.1:5555");
        assert_eq!(v["client_key"], "ab12cd34");
        assert_eq!(v["replayed"], false);
        assert_eq!(lines[1]["path"], "/a\"b\\c\u{1}");
        assert!(lines[1]["client_key"].is_null());
    }

    #[tokio::test(start_paused = true)]
    async fn the_flusher_writes_within_flush_every_and_sleeps_without_lines() {
        let (log, out) = capture(LogFormat::Text);
        let log = Arc::new(log);
        let _flusher = log.spawn_flusher();
        // Nothing recorded: an hour passes and the flusher never ran a round.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(out.lock().unwrap().is_empty());
        for round in 1..=3 {
            log.record(&entry());
            tokio::time::sleep(FLUSH_EVERY - Duration::from_millis(1)).await;
            let lines =
                |out: &Mutex<Vec<u8>>| out.lock().unwrap().split(|b| *b == b'\n').count() - 1;
            assert_eq!(lines(&out), round - 1, "round {round}: written too early");
            tokio::time::sleep(Duration::from_millis(2)).await;
            assert_eq!(
                lines(&out),
                round,
                "round {round}: not written within FLUSH_EVERY"
            );
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }

    #[test]
    fn text_lines_and_size_flush() {
        let (log, out) = capture(LogFormat::Text);
        for _ in 0..200 {
            log.record(&entry());
        }
        assert!(
            !out.lock().unwrap().is_empty(),
            "flushed once 16 KiB were buffered"
        );
        log.flush();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 200);
        let line = text.lines().next().unwrap();
        assert!(
            line.contains(
                "  INFO access: method=GET path=/admin/products?q=*** status=200 duration_ms=1.234"
            ),
            "{line}"
        );
        assert!(
            line.contains("client_key=ab12cd34 replayed=false"),
            "{line}"
        );
    }
}
