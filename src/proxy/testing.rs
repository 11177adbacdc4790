//! Stand-ins for the next service of a step, for the steps' unit tests (no sockets): a
//! `tower::service_fn` that counts its calls and keeps the last request it got, so a test can
//! prove that a refusal never reached it and see what an admitted request looked like.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::Service;

use crate::error::ProxyError;

/// What a stand-in saw: how often it was called, and the last request.
pub(crate) struct Probe<B> {
    calls: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<Request<B>>>>,
}

impl<B> Probe<B> {
    /// How many times the stand-in was called.
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The last request the stand-in got (panics if it got none).
    pub(crate) fn last(&self) -> Request<B> {
        self.last
            .lock()
            .unwrap()
            .take()
            .expect("the stand-in was not called")
    }
}

/// A next service that answers `answer(&request)` at once, counting calls.
pub(crate) fn stand_in<B, RB>(
    answer: impl Fn(&Request<B>) -> Result<Response<RB>, ProxyError> + Send + Sync + 'static,
) -> (
    impl Service<Request<B>, Response = Response<RB>, Error = ProxyError, Future: Send>
    + Clone
    + Send
    + 'static,
    Probe<B>,
)
where
    B: Send + 'static,
    RB: Send + 'static,
{
    let probe = Probe {
        calls: Arc::new(AtomicUsize::new(0)),
        last: Arc::new(Mutex::new(None)),
    };
    let (calls, last) = (probe.calls.clone(), probe.last.clone());
    let answer = Arc::new(answer);
    let svc = tower::service_fn(move |req: Request<B>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let answer = answer(&req);
        *last.lock().unwrap() = Some(req);
        std::future::ready(answer)
    });
    (svc, probe)
}

/// A response with `status` and `body`.
pub(crate) fn response(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}

/// The whole body of `resp`, as text.
pub(crate) async fn body_text<B>(body: B) -> String
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = body.collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}
