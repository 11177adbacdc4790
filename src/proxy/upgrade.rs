//! `upgrade`: a protocol upgrade (WebSocket) passes through. The `Upgrade` header the client
//! sent ([`UpgradeRequested`], noted by `hygiene`, which strips hop-by-hop headers) is set
//! again on purpose; when Medusa answers 101, the two upgraded connections are spliced
//! together in a task of their own, which holds the request's concurrency slot
//! ([`TunnelSlot`]) until the tunnel closes.

use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use tokio::sync::oneshot;
use tower::{Layer, Service};

use super::admit::TunnelSlot;
use super::future::{Finish, LayerFuture};
use super::hygiene::UpgradeRequested;
use crate::error::ProxyError;

/// The `upgrade` layer: lets a protocol upgrade (WebSocket) through to Medusa and splices
/// the two connections after a 101. Holds no state.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpgradeLayer;

impl<S> Layer<S> for UpgradeLayer {
    type Service = Upgrade<S>;
    fn layer(&self, inner: S) -> Upgrade<S> {
        Upgrade { inner }
    }
}

/// The `upgrade` service: re-sets the client's `Upgrade` header on the request; on Medusa's
/// 101, spawns the tunnel that copies bytes both ways until either side closes.
#[derive(Debug, Clone)]
pub struct Upgrade<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for Upgrade<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = ProxyError>,
{
    type Response = Response<RB>;
    type Error = ProxyError;
    type Future = LayerFuture<S::Future, Tunnel, Response<RB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let client = match req.extensions_mut().remove::<UpgradeRequested>() {
            Some(UpgradeRequested(proto)) => {
                let h = req.headers_mut();
                h.insert(header::UPGRADE, proto);
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                req.extensions_mut().remove::<OnUpgrade>()
            }
            None => None,
        };
        LayerFuture::called(self.inner.call(req), Tunnel(client))
    }
}

/// Finishes `upgrade`: on a 101, splice the client's connection to Medusa's.
#[derive(Debug)]
pub struct Tunnel(Option<OnUpgrade>);

impl<RB> Finish<Result<Response<RB>, ProxyError>> for Tunnel {
    type Output = Response<RB>;
    fn finish(self, answer: Result<Response<RB>, ProxyError>) -> Result<Response<RB>, ProxyError> {
        let mut resp = answer?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(resp);
        }
        let Some(client) = self.0 else {
            tracing::warn!("Medusa switched protocols for a request that did not ask to");
            return Ok(resp);
        };
        let upstream = hyper::upgrade::on(&mut resp);
        let (slot_tx, slot_rx) = oneshot::channel();
        resp.extensions_mut()
            .insert(TunnelSlot(std::sync::Arc::new(std::sync::Mutex::new(
                Some(slot_tx),
            ))));
        tokio::spawn(async move {
            let _slot = slot_rx.await;
            match tokio::try_join!(client, upstream) {
                Ok((c, u)) => {
                    let mut c = hyper_util::rt::TokioIo::new(c);
                    let mut u = hyper_util::rt::TokioIo::new(u);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        Ok(resp)
    }
}
