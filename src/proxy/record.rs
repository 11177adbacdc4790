//! `record`: the outermost step. Counts every request in the metrics and writes its access
//! log line when its response body ends (or when the client goes away first: 499, as nginx
//! logs it). While the access log is on, inner steps write what only they know (the client
//! key's fingerprint, the identity, bytes in) into a [`Notes`] request extension, so that a
//! request which fails further down still gets a complete line; with the log off, nothing is
//! allocated.
//!
//! Each request counts under the `identity` it is served as ([`Attribution`]). A listener
//! whose identity is fixed (the single form, a `[[listeners]]` entry, `proxy.identity`) knows
//! it before the request comes: its series are resolved when the listener's stack is built,
//! and a request costs what it did before identities. On a listener that picks the identity
//! by client key, `access` notes the one it picked in the [`Notes`], which are then present
//! with the log off too (one allocation per request on that listener only).
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
use crate::identity::Resolve;
use crate::metrics::{IdentityMetrics, Metrics, NO_IDENTITY};
use crate::server::PeerAddr;
use crate::upstream::Resent;

/// Where inner steps note what the access line needs, and `access` the identity it picked: a
/// request extension, present only while the access log is on or on a listener that picks the
/// identity by client key (one allocation per request then, none otherwise).
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

    /// [`Noted::identity_index`] alone (no copy of the rest).
    fn identity_index(&self) -> Option<usize> {
        self.0.lock().ok()?.identity_index
    }
}

/// Whose series (the `identity` label) a listener's requests count in: `record` counts the
/// request, its replay and a retry in them, `respond` a denial or an upstream error. Cheap to
/// clone: one `Arc`.
#[derive(Clone, Debug)]
pub struct Attribution(By);

#[derive(Clone, Debug)]
enum By {
    /// Every request of the listener is served as this identity, known before it comes:
    /// refusals by `access` count under it too.
    Fixed(IdentityMetrics),
    /// Picked per request by its client key: `access` notes its index into the first; a
    /// request refused before (peer, host, origin, key) counts under the second,
    /// `identity=""`.
    ByClientKey(Arc<(Vec<IdentityMetrics>, IdentityMetrics)>),
}

impl Attribution {
    /// Every request counts under `identity`.
    pub fn fixed(identity: IdentityMetrics) -> Attribution {
        Attribution(By::Fixed(identity))
    }

    /// The attribution of a listener whose `access` step picks identities as `resolve` says
    /// (`None`: it picks none, all count under `identity=""`), with series in `metrics`.
    pub fn of_listener(metrics: &Metrics, resolve: Option<&Resolve>) -> Attribution {
        match resolve {
            Some(Resolve::Fixed(id)) => Attribution::fixed(metrics.identity(id.name())),
            Some(Resolve::ByClientKey(all)) => {
                // `Identity::index` is the place in this list (`route` relies on it too).
                let each = all.iter().map(|id| metrics.identity(id.name())).collect();
                Attribution(By::ByClientKey(Arc::new((
                    each,
                    metrics.identity(NO_IDENTITY),
                ))))
            }
            None => Attribution::fixed(metrics.identity(NO_IDENTITY)),
        }
    }

    /// Whether the identity is only known from what `access` notes.
    pub(super) fn per_request(&self) -> bool {
        matches!(self.0, By::ByClientKey(_))
    }

    /// The series of a request with these `notes` (`record` inserted them on a listener
    /// that picks by key).
    pub(super) fn of(&self, notes: Option<&Notes>) -> &IdentityMetrics {
        match &self.0 {
            By::Fixed(id) => id,
            By::ByClientKey(table) => {
                let (each, unknown) = &**table;
                notes
                    .and_then(Notes::identity_index)
                    .and_then(|i| each.get(i))
                    .unwrap_or(unknown)
            }
        }
    }
}

/// What inner steps tell the record (see [`Notes`]).
#[derive(Debug, Clone, Default)]
pub struct Noted {
    /// Fingerprint of the client key used (`access`).
    pub key_fingerprint: Option<String>,
    /// Name of the identity the request was served as (`access`).
    pub identity: Option<Arc<str>>,
    /// Its place in the listener's identities ([`crate::identity::Identity::index`]), for
    /// the metrics of a listener that picks the identity by key (`access`).
    pub identity_index: Option<usize>,
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

/// The `record` layer, the outermost step: counts every request under the identity its
/// [`Attribution`] gives and writes its access log line through the [`Recorder`] it holds.
#[derive(Clone)]
pub struct RecordLayer {
    rec: Arc<Recorder>,
    by: Attribution,
}

impl RecordLayer {
    /// Record through `rec`, counting under the identities `by` gives.
    pub fn new(rec: Arc<Recorder>, by: Attribution) -> RecordLayer {
        RecordLayer { rec, by }
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;
    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            site: Arc::new(Site {
                rec: self.rec.clone(),
                by: self.by.clone(),
            }),
        }
    }
}

/// Where one listener's requests are recorded: the shared [`Recorder`] and the listener's
/// [`Attribution`]. One `Arc` per request, as the `Recorder` alone was.
struct Site {
    rec: Arc<Recorder>,
    by: Attribution,
}

/// The `record` service: counts the request in flight from its head, and records it (metrics,
/// access line) when its response body ends or is dropped ([`Tracked`]).
#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    site: Arc<Site>,
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
        let log = self.site.rec.access_on.load(Ordering::Relaxed);
        let notes = (log || self.site.by.per_request()).then(|| {
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
            log,
            replayed: false,
        };
        self.site.rec.metrics.in_flight().inc();
        RecordFuture {
            inner: self.inner.call(req),
            pending: Some(Pending {
                record: Some(record),
                site: self.site.clone(),
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
            let resent = resp.extensions().get::<Resent>().is_some();
            if r.replayed || resent {
                let identity = p.site.by.of(r.notes.as_ref());
                if r.replayed {
                    identity.replay(r.status);
                }
                if resent {
                    identity.upstream_error("retried");
                }
            }
            Some((r, p.site.clone()))
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
    site: Arc<Site>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.status = 499;
            finish(&self.site, r, 0);
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
    /// Present while the access log is on, and on a listener that picks the identity by key.
    notes: Option<Notes>,
    /// Whether the access log was on when the request came.
    log: bool,
    replayed: bool,
}

fn finish(site: &Site, r: RequestRecord, bytes_out: u64) {
    let elapsed = r.start.elapsed();
    site.by
        .of(r.notes.as_ref())
        .request(&r.method, r.status, elapsed.as_secs_f64());
    let rec = &site.rec;
    rec.metrics.in_flight().dec();
    if let Some(notes) = r.notes.as_ref().filter(|_| r.log) {
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
    record: Option<(RequestRecord, Arc<Site>)>,
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        if let Some((r, site)) = self.record.take() {
            finish(&site, r, self.bytes_out);
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

    /// The layer of a listener whose requests are all served as `default`.
    fn as_default(rec: &Arc<Recorder>) -> RecordLayer {
        RecordLayer::new(
            rec.clone(),
            Attribution::fixed(rec.metrics.identity("default")),
        )
    }

    /// The layer of a listener that picks `catalog` (0) or `reporting` (1) by client key.
    fn by_key(rec: &Arc<Recorder>) -> RecordLayer {
        let m = &rec.metrics;
        let each = vec![m.identity("catalog"), m.identity("reporting")];
        let by = Attribution(By::ByClientKey(Arc::new((each, m.identity(NO_IDENTITY)))));
        RecordLayer::new(rec.clone(), by)
    }

    /// The value of one series (name and labels exactly as exported).
    fn value(rec: &Recorder, series: &str) -> f64 {
        let text = rec.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
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
        let svc = as_default(&rec).layer(service_fn(|req: Request<()>| async move {
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
        assert_eq!(
            value(
                &rec,
                r#"medusa_auth_proxy_requests_total{identity="default",method="GET",status_class="2xx"}"#
            ),
            1.0
        );
    }

    #[tokio::test]
    async fn a_fixed_identity_needs_no_notes_with_the_log_off() {
        let (rec, lines, log) = recorder();
        rec.set_access_log(false);
        let svc = as_default(&rec).layer(service_fn(|req: Request<()>| async move {
            // Nothing allocated for the record: the identity is the listener's.
            assert!(req.extensions().get::<Notes>().is_none());
            let mut resp = Response::new(Full::new(Bytes::new()));
            resp.extensions_mut().insert(Resent);
            Ok::<_, Infallible>(resp)
        }));
        let resp = svc
            .oneshot(Request::get("/x").body(()).unwrap())
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap();
        log.flush();
        assert!(lines.lock().unwrap().is_empty());
        assert_eq!(
            value(
                &rec,
                r#"medusa_auth_proxy_requests_total{identity="default",method="GET",status_class="2xx"}"#
            ),
            1.0
        );
        assert_eq!(
            value(
                &rec,
                r#"medusa_auth_proxy_upstream_errors_total{identity="default",kind="retried"}"#
            ),
            1.0
        );
    }

    #[tokio::test]
    async fn by_key_each_request_counts_under_the_identity_access_noted() {
        let (rec, lines, log) = recorder();
        // With the log off too: the notes carry the identity.
        rec.set_access_log(false);
        let svc = by_key(&rec).layer(service_fn(|req: Request<()>| async move {
            let notes = req.extensions().get::<Notes>().expect("picked per request");
            let resp = match req.uri().path() {
                "/reporting" => {
                    // As `access` does for a key of `reporting`.
                    notes.note(|n| n.identity_index = Some(1));
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    resp.extensions_mut().insert(Replayed);
                    resp
                }
                // Refused before a key named an identity.
                _ => {
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = http::StatusCode::PROXY_AUTHENTICATION_REQUIRED;
                    resp
                }
            };
            Ok::<_, Infallible>(resp)
        }));
        for path in ["/reporting", "/reporting", "/nokey"] {
            let resp = svc
                .clone()
                .oneshot(Request::get(path).body(()).unwrap())
                .await
                .unwrap();
            resp.into_body().collect().await.unwrap();
        }
        // The client goes away before the answer: 499, still under no identity.
        let gone = by_key(&rec).layer(service_fn(|_: Request<()>| async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }));
        let polled_once = futures_util::FutureExt::now_or_never(
            gone.oneshot(Request::get("/slow").body(()).unwrap()),
        );
        assert!(polled_once.is_none());
        log.flush();
        assert!(lines.lock().unwrap().is_empty(), "the log is off");
        let requests = |identity: &str, class: &str| {
            value(
                &rec,
                &format!(
                    "medusa_auth_proxy_requests_total{{identity=\"{identity}\",method=\"GET\",status_class=\"{class}\"}}"
                ),
            )
        };
        assert_eq!(requests("reporting", "2xx"), 2.0);
        assert_eq!(requests("catalog", "2xx"), 0.0);
        assert_eq!(requests("", "4xx"), 2.0);
        assert_eq!(
            value(
                &rec,
                r#"medusa_auth_proxy_replays_total{identity="reporting",result="success"}"#
            ),
            2.0
        );
        assert_eq!(
            value(
                &rec,
                r#"medusa_auth_proxy_request_duration_seconds_count{identity="reporting"}"#
            ),
            2.0
        );
    }

    #[tokio::test]
    async fn a_client_gone_before_the_answer_is_recorded_as_499() {
        let (rec, lines, log) = recorder();
        let svc = as_default(&rec).layer(service_fn(|_: Request<()>| async {
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
