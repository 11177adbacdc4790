//! The request path: client request -> header hygiene -> token -> Medusa -> response hygiene.
//! On a 401 for our token: invalidate it (if still cached), wait for the next token, and
//! replay once if the body was buffered for that.

pub mod headers;
pub mod replay;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::auth::{Token, TokenManager};
use crate::error::ProxyError;
use crate::upstream::{Upstream, UpstreamBody, UpstreamError};
use replay::PreparedBody;

/// Body of every response the proxy sends: Medusa's, streamed, or one of our own.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

pub struct Proxy {
    upstream: Arc<Upstream>,
    tokens: TokenManager,
}

/// What is needed to send the same request again.
struct ReplayParts {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Proxy {
    pub fn new(upstream: Arc<Upstream>, tokens: TokenManager) -> Proxy {
        Proxy { upstream, tokens }
    }

    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let method = req.method().clone();
        match self.forward(req, peer).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(method = %method, status = e.status().as_u16(), error = %e, "request failed");
                e.into_response().map(Either::Right)
            }
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = self.upstream.uri_for(pq).map_err(upstream_error)?;
        let client_host = parts.headers.get(HOST).cloned().or_else(|| {
            // HTTP/2 clients send :authority instead of Host.
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::sanitize_request(&mut parts.headers, peer.ip(), client_host);

        // Fail fast, before reading any body, when no token can be had.
        let token = self.tokens.token().await?;
        let (first_body, replay) = match replay::prepare(&parts.headers, body).await? {
            PreparedBody::Replayable(bytes) => (
                Either::Left(Full::new(bytes.clone())),
                Some(ReplayParts {
                    method: parts.method.clone(),
                    uri: uri.clone(),
                    headers: parts.headers.clone(),
                    body: bytes,
                }),
            ),
            PreparedBody::Streamed(incoming) => (Either::Right(incoming), None),
        };

        let resp = self
            .send(parts.method, uri, parts.headers, first_body, &token)
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            token.mark_verified();
            return Ok(finish(resp));
        }

        // Medusa rejected our token (rotated secret, early expiry): never hand the client a
        // 401 it cannot fix if we can replay; never replay more than once.
        self.tokens.reject(&token).await;
        let Some(replay) = replay else {
            tracing::info!("401 for a streamed body: not replayable, passing the 401 on");
            return Ok(finish(resp));
        };
        drop(resp);
        let fresh = self.tokens.token().await?;
        if fresh.id == token.id {
            return Err(ProxyError::NoToken {
                reason: "Medusa rejected the token and no new one is available".into(),
                retry_after: std::time::Duration::from_secs(1),
            });
        }
        let resp = self
            .send(
                replay.method,
                replay.uri,
                replay.headers,
                Either::Left(Full::new(replay.body)),
                &fresh,
            )
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.tokens.reject(&fresh).await;
        } else {
            fresh.mark_verified();
        }
        tracing::debug!(status = resp.status().as_u16(), "replayed after 401");
        Ok(finish(resp))
    }

    async fn send(
        &self,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        body: UpstreamBody,
        token: &Token,
    ) -> Result<Response<Incoming>, ProxyError> {
        headers.insert(header::AUTHORIZATION, token.header.clone());
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        // Medusa speaks HTTP/1.1 whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        self.upstream.send(req).await.map_err(upstream_error)
    }
}

fn finish(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    headers::sanitize_response(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}

fn upstream_error(e: UpstreamError) -> ProxyError {
    match e {
        UpstreamError::Timeout(d) => ProxyError::UpstreamTimeout(d),
        UpstreamError::InvalidUri => {
            ProxyError::BadRequest("the request target is not a valid URI")
        }
        e @ (UpstreamError::Connect { .. } | UpstreamError::Io(_)) => {
            ProxyError::UpstreamUnreachable(e.to_string())
        }
    }
}
