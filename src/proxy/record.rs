//! `record`: the outermost step. Counts every request in the metrics and writes its access
//! log line when its response body ends (or when the client goes away first: 499, as nginx
//! logs it). While the access log is on, inner steps write what only they know (the client
//! key's fingerprint, the identity, bytes in) into a [`Notes`] request extension, so that a request which
//! fails further down still gets a complete line; with the log off, nothing is allocated.
//!
//! Not `tower_http::trace::TraceLayer`: the access line has its own stable format (text or
//! JSON, redacted query, key fingerprint, replayed flag) written through a buffered sink, and
//! the metrics are pre-resolved counters; a tracing span per request would cost more than the
//! whole step.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Buf;
use http::{Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use super::inject::Replayed;
use super::limit::BodyStats;
use crate::access_log::{AccessLog, Entry};
use crate::metrics::Metrics;
use crate::server::PeerAddr;
use crate::upstream::Resent;

/// Where inner steps note what the access line needs: a request extension, present only while
/// the access log is on (one allocation per request then, none otherwise).
#[derive(Debug, Clone, Default)]
pub struct Notes(Arc<std::sync::Mutex<Noted>>);

impl Notes {
    /// Note something about the request.
    pub fn note(&self, f: impl FnOnce(&mut Noted)) {
        if let Ok(mut n) = self.0.lock() {
            f(&mut n);
        }
    }

    /// What was noted so far.
    pub fn get(&self) -> Noted {
        self.0.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

/// What inner steps tell the record (see [`Notes`]).
#[derive(Debug, Clone, Default)]
pub struct Noted {
    /// Fingerprint of the client key used (`access`).
    pub key_fingerprint: Option<String>,
    /// Name of the identity the request was served as (`access`).
    pub identity: Option<Arc<str>>,
    /// Bytes of a buffered request body (`limit`).
    pub bytes_in: u64,
    /// Counter of a streamed request body (`limit`).
    pub streamed_in: Option<Arc<BodyStats>>,
}

/// Where the record goes; shared by every request, the access log switchable on reload.
pub struct Recorder {
    metrics: Arc<Metrics>,
    access_log: Arc<AccessLog>,
    access_on: AtomicBool,
}

impl Recorder {
    /// Record into `metrics`, and into `access_log` while `access_on`.
    pub fn new(metrics: Arc<Metrics>, access_log: Arc<AccessLog>, access_on: bool) -> Arc<Self> {
        Arc::new(Recorder {
            metrics,
            access_log,
            access_on: AtomicBool::new(access_on),
        })
    }

    /// Turn the access log on or off (config reload).
    pub fn set_access_log(&self, on: bool) {
        self.access_on.store(on, Ordering::Relaxed);
    }
}

/// The `record` layer, the outermost step: counts every request and writes its access log
/// line through the [`Recorder`] it holds.
#[derive(Clone)]
pub struct RecordLayer(pub Arc<Recorder>);

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;
    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            rec: self.0.clone(),
        }
    }
}

/// The `record` service: counts the request in flight from its head, and records it (metrics,
/// access line) when its response body ends or is dropped ([`Tracked`]).
#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    rec: Arc<Recorder>,
}

impl<S, B, RB> Service<Request<B>> for Record<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = Infallible>,
{
    type Response = Response<Tracked<RB>>;
    type Error = Infallible;
    type Future = RecordFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let log = self.rec.access_on.load(Ordering::Relaxed);
        let notes = log.then(|| {
            let notes = Notes::default();
            req.extensions_mut().insert(notes.clone());
            notes
        });
        let record = RequestRecord {
            start: Instant::now(),
            method: req.method().clone(),
            path: log.then(|| redact_query(req.uri().path_and_query().map_or("/", |p| p.as_str()))),
            peer: req
                .extensions()
                .get::<PeerAddr>()
                .map_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), |p| p.0),
            status: 0,
            notes,
            replayed: false,
        };
        self.rec.metrics.in_flight().inc();
        RecordFuture {
            inner: self.inner.call(req),
            pending: Some(Pending {
                record: Some(record),
                rec: self.rec.clone(),
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Record`]: the inner future, and the request's record, which goes
    /// into the response body ([`Tracked`]), or is finished at once as a 499 if the future is
    /// dropped (the client went away before the response head).
    pub struct RecordFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F, RB> Future for RecordFuture<F>
where
    F: Future<Output = Result<Response<RB>, Infallible>>,
{
    type Output = Result<Response<Tracked<RB>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(resp) = ready!(this.inner.poll(cx));
        let pending = this.pending.take();
        let record = pending.and_then(|mut p| {
            let mut r = p.record.take()?;
            r.status = resp.status().as_u16();
            r.replayed = resp.extensions().get::<Replayed>().is_some();
            if r.replayed {
                p.rec.metrics.replay(r.status);
            }
            if resp.extensions().get::<Resent>().is_some() {
                p.rec.metrics.upstream_error("retried");
            }
            Some((r, p.rec.clone()))
        });
        Poll::Ready(Ok(resp.map(|inner| Tracked {
            inner,
            bytes_out: 0,
            record,
        })))
    }
}

/// A request whose response has not come yet: if it is dropped (the client went away), the
/// request is recorded as 499.
pub struct Pending {
    record: Option<RequestRecord>,
    rec: Arc<Recorder>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.status = 499;
            finish(&self.rec, r, 0);
        }
    }
}

/// Everything the access log and the metrics need about one request.
pub struct RequestRecord {
    start: Instant,
    method: http::Method,
    /// Path with query values redacted; only computed when the access log is on.
    path: Option<String>,
    peer: SocketAddr,
    status: u16,
    /// Present while the access log is on.
    notes: Option<Notes>,
    replayed: bool,
}

fn finish(rec: &Recorder, r: RequestRecord, bytes_out: u64) {
    let elapsed = r.start.elapsed();
    rec.metrics
        .request(&r.method, r.status, elapsed.as_secs_f64());
    rec.metrics.in_flight().dec();
    if let Some(notes) = &r.notes {
        let noted = notes.get();
        let bytes_in = noted.bytes_in
            + noted
                .streamed_in
                .as_ref()
                .map_or(0, |s| s.bytes.load(Ordering::Relaxed));
        rec.access_log.record(&Entry {
            method: r.method.as_str(),
            path: r.path.as_deref().unwrap_or("-"),
            status: r.status,
            duration: elapsed,
            bytes_in,
            bytes_out,
            client: r.peer,
            client_key: noted.key_fingerprint.as_deref(),
            identity: noted.identity.as_deref(),
            replayed: r.replayed,
        });
    }
}

/// A response body that counts bytes out and records the request when it ends or is dropped
/// (a long download counts as in flight until then).
pub struct Tracked<B> {
    inner: B,
    bytes_out: u64,
    record: Option<(RequestRecord, Arc<Recorder>)>,
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        if let Some((r, rec)) = self.record.take() {
            finish(&rec, r, self.bytes_out);
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(d) = frame.data_ref()
        {
            self.bytes_out += d.remaining() as u64;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
/// The path for the access log with every query value replaced: query strings carry search
/// terms, emails, sometimes tokens; the keys are enough to see what a caller did.
pub fn redact_query(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) => {
                out.push_str(k);
                out.push_str("=***");
            }
            None => out.push_str(pair),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::config::LogFormat;

    fn recorder() -> (Arc<Recorder>, Arc<Mutex<String>>, Arc<AccessLog>) {
        let lines = Arc::new(Mutex::new(String::new()));
        let sink = lines.clone();
        let log = Arc::new(AccessLog::with_sink(
            LogFormat::Text,
            Box::new(move |b| sink.lock().unwrap().push_str(&String::from_utf8_lossy(b))),
        ));
        (Recorder::new(Metrics::new(), log.clone(), true), lines, log)
    }

    fn series(rec: &Recorder, name: &str) -> String {
        rec.metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with(name))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn a_request_is_recorded_when_its_body_ends_with_what_the_steps_noted() {
        let (rec, lines, log) = recorder();
        let svc = RecordLayer(rec.clone()).layer(service_fn(|req: Request<()>| async move {
            let notes = req.extensions().get::<Notes>().expect("the log is on");
            notes.note(|n| {
                n.key_fingerprint = Some("abcd1234".into());
                n.bytes_in = 7;
                n.identity = Some("reporting".into());
            });
            let mut resp = Response::new(Full::new(Bytes::from_static(b"12345")));
            resp.extensions_mut().insert(Replayed);
            Ok::<_, Infallible>(resp)
        }));
        let mut req = Request::get("/admin/customers?q=alice@example.com")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(PeerAddr("127.0.0.7:4000".parse().unwrap()));
        let resp = svc.oneshot(req).await.unwrap();
        assert!(series(&rec, "medusa_auth_proxy_requests_in_flight").ends_with(" 1"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"12345");
        // `collect` consumed the body: the record is written.
        log.flush();
        let line = lines.lock().unwrap().clone();
        for part in [
            "path=/admin/customers?q=***",
            "status=200",
            "bytes_in=7",
            "bytes_out=5",
            "client=127.0.0.7:4000",
            "client_key=abcd1234",
            "replayed=true",
            "identity=reporting",
        ] {
            assert!(line.contains(part), "{part} missing in {line}");
        }
        assert!(!line.contains("alice"), "the query value leaked: {line}");
        assert!(series(&rec, "medusa_auth_proxy_requests_in_flight").ends_with(" 0"));
        assert!(
            series(&rec, "medusa_auth_proxy_replays_total").contains("} 1"),
            "{}",
            series(&rec, "medusa_auth_proxy_replays_total")
        );
    }

    #[tokio::test]
    async fn a_client_gone_before_the_answer_is_recorded_as_499() {
        let (rec, lines, log) = recorder();
        let svc = RecordLayer(rec.clone()).layer(service_fn(|_: Request<()>| async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }));
        let fut = svc.oneshot(Request::get("/slow").body(()).unwrap());
        // The client goes away while Medusa has not answered.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), fut)
                .await
                .is_err()
        );
        log.flush();
        let line = lines.lock().unwrap().clone();
        assert!(line.contains("status=499"), "{line}");
        assert!(series(&rec, "medusa_auth_proxy_requests_in_flight").ends_with(" 0"));
    }

    #[test]
    fn query_values_are_redacted() {
        assert_eq!(redact_query("/admin/products"), "/admin/products");
        assert_eq!(
            redact_query("/admin/customers?q=alice@example.com&limit=10&flag"),
            "/admin/customers?q=***&limit=***&flag"
        );
        assert_eq!(redact_query("/a?token=abc.def"), "/a?token=***");
    }
}
