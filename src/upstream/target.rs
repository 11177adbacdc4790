//! `Target`: the request target Medusa gets for a client's. The client's path and query pass
//! byte for byte behind `upstream.url`'s base path (`/shop` + `/admin/products?q=a`), and an
//! absolute-form target (HTTP/2 clients, `GET http://host/path` proxy requests) becomes
//! origin-form: Medusa only ever sees `/base/path?query`. Without a base path an origin-form
//! target is reused as is (no copy: the hot path).
//!
//! The proxy's stack puts it right above the client; the proxy's own requests (logins,
//! checks) build their targets with [`super::Upstream::uri_for`] and do not pass here.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::{Request, Uri};
use tower::{Layer, Service};

use super::UpstreamError;

/// Rewrites request targets for a base path (see the module documentation).
#[derive(Debug, Clone)]
pub struct TargetLayer {
    base_path: Arc<str>,
}

impl TargetLayer {
    /// Targets go behind `base_path` (`""`, or `/shop` without a trailing slash, as
    /// `config::UpstreamSettings::base_path` holds it).
    pub fn new(base_path: &str) -> TargetLayer {
        TargetLayer {
            base_path: base_path.into(),
        }
    }
}

impl<S> Layer<S> for TargetLayer {
    type Service = TargetService<S>;
    fn layer(&self, inner: S) -> TargetService<S> {
        TargetService {
            inner,
            base_path: self.base_path.clone(),
        }
    }
}

/// The service of [`TargetLayer`].
#[derive(Debug, Clone)]
pub struct TargetService<S> {
    inner: S,
    base_path: Arc<str>,
}

/// Medusa's target for a client's `target` behind `base_path`: only its path and query are
/// used (an absolute-form target's scheme and authority are dropped).
pub fn rewrite(base_path: &str, target: &Uri) -> Result<Uri, UpstreamError> {
    match target.path_and_query() {
        Some(pq) if base_path.is_empty() => Ok(Uri::from(pq.clone())),
        pq => behind(base_path, pq.map_or("/", |p| p.as_str())),
    }
}

/// `base_path` + `path_and_query` as an origin-form target, byte for byte.
pub(crate) fn behind(base_path: &str, path_and_query: &str) -> Result<Uri, UpstreamError> {
    let mut out = String::with_capacity(base_path.len() + path_and_query.len());
    out.push_str(base_path);
    out.push_str(path_and_query);
    let pq = http::uri::PathAndQuery::try_from(out).map_err(UpstreamError::InvalidUri)?;
    Ok(Uri::from(pq))
}

impl<S, B> Service<Request<B>> for TargetService<S>
where
    S: Service<Request<B>, Error = UpstreamError>,
{
    type Response = S::Response;
    type Error = UpstreamError;
    type Future = Either<S::Future, Ready<Result<S::Response, UpstreamError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match rewrite(&self.base_path, req.uri()) {
            Ok(uri) => {
                *req.uri_mut() = uri;
                Either::Left(self.inner.call(req))
            }
            Err(e) => Either::Right(ready(Err(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::{ServiceExt, service_fn};

    use super::*;

    fn seen(base: &str, target: &str) -> Result<String, UpstreamError> {
        let svc = TargetLayer::new(base).layer(service_fn(|req: Request<()>| async move {
            Ok::<_, UpstreamError>(req.uri().to_string())
        }));
        let req = Request::get(target).body(()).expect("a valid test request");
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(svc.oneshot(req))
    }

    #[test]
    fn targets_go_behind_the_base_path_byte_for_byte() {
        assert_eq!(
            seen("", "/admin/products?q=a%20b").unwrap(),
            "/admin/products?q=a%20b"
        );
        assert_eq!(
            seen("/shop", "/admin/products?q=a%20b").unwrap(),
            "/shop/admin/products?q=a%20b"
        );
    }

    #[test]
    fn escapes_pass_untouched() {
        assert_eq!(
            seen("/base", "/admin/x?a=%2F").unwrap(),
            "/base/admin/x?a=%2F"
        );
        assert_eq!(seen("", "/admin/x?a=%2F").unwrap(), "/admin/x?a=%2F");
    }

    #[test]
    fn an_absolute_target_becomes_origin_form() {
        assert_eq!(
            seen("", "http://evil.example/admin/y?b").unwrap(),
            "/admin/y?b"
        );
        assert_eq!(
            seen("", "http://proxy.local:7000/admin/orders?x=1").unwrap(),
            "/admin/orders?x=1"
        );
        assert_eq!(
            seen("/shop", "http://proxy.local:7000/admin/orders").unwrap(),
            "/shop/admin/orders"
        );
    }
}
