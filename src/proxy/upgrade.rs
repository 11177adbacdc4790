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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Semaphore;
    use tower::ServiceExt;

    use super::*;
    use crate::proxy::testing::stand_in;

    fn asked(proto: &'static str) -> Request<()> {
        let mut req = Request::builder().uri("/ws").body(()).unwrap();
        req.extensions_mut()
            .insert(UpgradeRequested(HeaderValue::from_static(proto)));
        req
    }

    fn answer(status: StatusCode) -> Response<()> {
        Response::builder()
            .status(status)
            .header("upgrade", "websocket")
            .header("x-medusa", "1")
            .body(())
            .unwrap()
    }

    #[tokio::test]
    async fn the_requested_upgrade_is_set_again_for_medusa() {
        let (inner, probe) = stand_in(|_| Ok(answer(StatusCode::OK)));
        UpgradeLayer
            .layer(inner)
            .oneshot(asked("websocket"))
            .await
            .unwrap();
        let seen = probe.last();
        assert_eq!(seen.headers()["upgrade"], "websocket");
        assert_eq!(seen.headers()["connection"], "upgrade");
        assert!(seen.extensions().get::<UpgradeRequested>().is_none());
    }

    #[tokio::test]
    async fn a_request_that_did_not_ask_goes_on_untouched() {
        let (inner, probe) = stand_in(|_| Ok(answer(StatusCode::OK)));
        let req = Request::builder()
            .uri("/admin/products")
            .header("x-client", "1")
            .body(())
            .unwrap();
        UpgradeLayer.layer(inner).oneshot(req).await.unwrap();
        let seen = probe.last();
        assert!(seen.headers().get("upgrade").is_none());
        assert!(seen.headers().get("connection").is_none());
        assert_eq!(seen.headers().len(), 1);
    }

    #[tokio::test]
    async fn an_answer_other_than_101_passes_untouched() {
        let (inner, probe) = stand_in(|_| Ok(answer(StatusCode::BAD_REQUEST)));
        let resp = UpgradeLayer
            .layer(inner)
            .oneshot(asked("websocket"))
            .await
            .unwrap();
        assert_eq!(probe.calls(), 1);
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()["upgrade"], "websocket");
        assert_eq!(resp.headers()["x-medusa"], "1");
        assert!(resp.extensions().get::<TunnelSlot>().is_none());
    }

    #[tokio::test]
    async fn a_101_without_a_client_connection_to_splice_is_passed_through() {
        // Asked, but the request came with no `OnUpgrade` (not from a hyper connection); and
        // not asked at all. Either way nothing is spawned and no slot is asked for.
        for req in [asked("websocket"), Request::new(())] {
            let (inner, probe) = stand_in(|_| Ok(answer(StatusCode::SWITCHING_PROTOCOLS)));
            let resp = UpgradeLayer.layer(inner).oneshot(req).await.unwrap();
            assert_eq!(probe.calls(), 1);
            assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
            assert_eq!(resp.headers()["x-medusa"], "1");
            assert!(resp.extensions().get::<TunnelSlot>().is_none());
        }
    }

    #[tokio::test]
    async fn the_inner_error_is_passed_on() {
        let (inner, probe) = stand_in::<(), ()>(|_| Err(ProxyError::Overloaded(6)));
        let err = UpgradeLayer
            .layer(inner)
            .oneshot(asked("websocket"))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Overloaded(6)), "{err:?}");
        assert_eq!(probe.calls(), 1);
    }

    /// A Medusa on an in-memory pipe (no socket): answers 101 and echoes 4 upgraded bytes,
    /// then closes. Returns the client side of its connection.
    async fn echoing_medusa() -> hyper::client::conn::http1::SendRequest<Incoming> {
        let (medusa_io, proxy_io) = tokio::io::duplex(4096);
        let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(on.await.unwrap());
                let mut buf = [0u8; 4];
                io.read_exact(&mut buf).await.unwrap();
                io.write_all(&buf).await.unwrap();
            });
            Ok::<_, Infallible>(
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("upgrade", "websocket")
                    .header("connection", "upgrade")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(medusa_io), svc)
                .with_upgrades(),
        );
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(proxy_io))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        sender
    }

    #[tokio::test]
    async fn a_101_splices_client_and_medusa_and_the_tunnel_holds_the_slot() {
        let medusa = Arc::new(tokio::sync::Mutex::new(echoing_medusa().await));
        let to_medusa = tower::service_fn(move |req: Request<Incoming>| {
            let medusa = medusa.clone();
            async move {
                let mut medusa = medusa.lock().await;
                medusa
                    .send_request(req)
                    .await
                    .map_err(|_| ProxyError::Internal("the in-memory Medusa failed"))
            }
        });
        let slots = Arc::new(Semaphore::new(1));
        // The proxy's connection, serving what hygiene, upgrade and admit do around a 101.
        let (client_io, proxy_io) = tokio::io::duplex(4096);
        let front_slots = slots.clone();
        let front = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let upgrade = UpgradeLayer.layer(to_medusa.clone());
            let slots = front_slots.clone();
            async move {
                // hygiene: the hop-by-hop headers go, the wish is noted.
                req.headers_mut().remove(header::UPGRADE);
                req.headers_mut().remove(header::CONNECTION);
                req.extensions_mut()
                    .insert(UpgradeRequested(HeaderValue::from_static("websocket")));
                let mut resp = upgrade.oneshot(req).await?;
                // admit: the request's slot goes to the tunnel.
                let TunnelSlot(cell) = resp
                    .extensions_mut()
                    .remove::<TunnelSlot>()
                    .expect("a 101 for a client that asked carries a tunnel slot");
                let permit = slots.try_acquire_owned().unwrap();
                let tx = cell.lock().unwrap().take().unwrap();
                assert!(
                    tx.send(permit).is_ok(),
                    "the tunnel task waits for the slot"
                );
                Ok::<_, ProxyError>(resp)
            }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(proxy_io), front)
                .with_upgrades(),
        );

        let (mut client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        let req = Request::builder()
            .uri("/ws")
            .header("host", "localhost")
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = client.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        let mut tunnel = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
        assert_eq!(
            slots.available_permits(),
            0,
            "the open tunnel holds the slot"
        );
        tunnel.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), tunnel.read_exact(&mut echo))
            .await
            .expect("no echo through the tunnel")
            .unwrap();
        assert_eq!(&echo, b"ping");
        drop(tunnel);
        // Both ends closed: the tunnel ends and gives the slot back.
        let back = tokio::time::timeout(Duration::from_secs(10), slots.acquire()).await;
        assert!(
            back.is_ok(),
            "the slot was not given back when the tunnel closed"
        );
    }
}
