//! Protocol completeness: WebSocket-style upgrades, streaming responses, HTTP/2 from clients,
//! `Expect: 100-continue`, HEAD and CORS preflights, against a small upstream written here
//! (the shared fake has no upgrade support).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::harness::{self, client, client_for, h2_client};
use common::wait::{self, LONG};
use common::wire::read_until;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use medusa_auth_proxy::app::{self, Running};
use medusa_auth_proxy::config::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

type Body = BoxBody<Bytes, Infallible>;

#[derive(Default)]
struct Upstream {
    token: Mutex<Option<String>>,
    seen: Mutex<Vec<(String, String, http::HeaderMap)>>,
    sse_gate: Notify,
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

async fn upstream_handle(up: Arc<Upstream>, mut req: Request<Incoming>) -> Response<Body> {
    // Medusa must only ever see origin-form targets: an absolute-form one is recorded as
    // such, so no test that looks for a path finds it.
    let path = match req.uri().scheme() {
        Some(_) => format!("absolute-form: {}", req.uri()),
        None => req.uri().path().to_owned(),
    };
    if path == "/admin/auth/token" {
        let claims = serde_json::json!({"user_id": "usr_p", "domain": "admin",
            "iat": now(), "exp": now() + 3600});
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        *up.token.lock().unwrap() = Some(t.clone());
        return Response::new(full(serde_json::json!({"access_token": t}).to_string()));
    }
    up.seen.lock().unwrap().push((
        req.method().to_string(),
        path.clone(),
        req.headers().clone(),
    ));
    let expected = up
        .token
        .lock()
        .unwrap()
        .clone()
        .map(|t| format!("Bearer {t}"));
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == expected.as_deref();
    if !authorized {
        let mut r = Response::new(full("Unauthorized"));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/admin/ws") => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(io) = on_upgrade.await {
                    let mut io = TokioIo::new(io);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut().insert("upgrade", "echo".parse().unwrap());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r
        }
        ("GET", "/admin/ws-refused") => {
            let mut r = Response::new(full("{\"message\":\"no upgrade here\"}"));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r
        }
        ("GET", "/admin/sse") => {
            let up2 = up.clone();
            let stream = async_stream(up2);
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
        ("OPTIONS", _) => {
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r.headers_mut().insert(
                "access-control-allow-origin",
                "http://tool.internal".parse().unwrap(),
            );
            r.headers_mut()
                .insert("access-control-allow-methods", "GET,POST".parse().unwrap());
            r
        }
        ("POST", "/admin/echo") => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::new(full(body))
        }
        _ => Response::new(full(format!("{{\"path\":\"{path}\"}}"))),
    }
}

/// Two events with a gate between them: the second is sent only after the test has seen the
/// first through the proxy, which proves the proxy does not buffer the stream.
fn async_stream(
    up: Arc<Upstream>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    futures_util::stream::unfold(0u8, move |state| {
        let up = up.clone();
        async move {
            match state {
                0 => Some((Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))), 1)),
                1 => {
                    up.sse_gate.notified().await;
                    Some((Ok(Frame::data(Bytes::from_static(b"data: two\n\n"))), 2))
                }
                _ => None,
            }
        }
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn start_upstream() -> (SocketAddr, Arc<Upstream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let up = Arc::new(Upstream::default());
    let state = up.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let up = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let up = up.clone();
                    async move { Ok::<_, Infallible>(upstream_handle(up, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, up)
}

async fn start_proxy(upstream: SocketAddr, extra: &str) -> (Running, tempfile::TempDir) {
    start_proxy_with(upstream, "", extra).await
}

/// `proxy_extra` goes into `[proxy]`, `extra` at the end.
async fn start_proxy_with(
    upstream: SocketAddr,
    proxy_extra: &str,
    extra: &str,
) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "x").unwrap();
    let auth = format!("email = \"a@b.c\"\npassword_file = \"{}\"", pw.display());
    let url = format!("http://{upstream}");
    let toml = harness::proxy_config(proxy_extra, &url, "", &auth, extra);
    let settings = harness::quiet(Settings::from_toml(&toml).unwrap());
    (app::start(settings).await.unwrap(), dir)
}

#[tokio::test]
async fn websocket_style_upgrade_carries_the_token_and_bytes() {
    let (addr, up) = start_upstream().await;
    let (proxy, _d) = start_proxy(addr, "").await;
    let mut s = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    s.write_all(b"GET /admin/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\nAuthorization: Bearer client\r\n\r\n")
        .await
        .unwrap();
    let head = read_until(&mut s, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    s.write_all(b"ping through the tunnel").await.unwrap();
    let echoed = read_until(&mut s, "ping through the tunnel").await;
    assert!(echoed.contains("ping through the tunnel"));
    let seen = up.seen.lock().unwrap().clone();
    let (_, _, headers) = seen.iter().find(|(_, p, _)| p == "/admin/ws").unwrap();
    let token = up.token.lock().unwrap().clone().unwrap();
    assert_eq!(
        headers["authorization"],
        format!("Bearer {token}").as_str(),
        "token injected on the upgrade request"
    );
    assert_eq!(headers["upgrade"], "echo");
}

/// `proxy.max_concurrent_requests` counts open tunnels: an upgraded connection keeps its
/// request's slot until it closes, so tunnels cannot pile up past the cap.
#[tokio::test]
async fn an_open_tunnel_holds_its_concurrency_slot_until_it_closes() {
    let (addr, _up) = start_upstream().await;
    let (proxy, _d) = start_proxy_with(addr, "max_concurrent_requests = 1", "").await;
    let get = b"GET /admin/products HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut tunnel = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    tunnel
        .write_all(b"GET /admin/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_until(&mut tunnel, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tunnel.write_all(b"still open").await.unwrap();
    read_until(&mut tunnel, "still open").await;
    let mut other = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    other.write_all(get).await.unwrap();
    let refused = read_until(&mut other, "overloaded").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    drop(tunnel);
    // Once both sides of the tunnel have closed, the slot is free again.
    wait::until(LONG, "the slot back after the tunnel closed", async || {
        let mut s = TcpStream::connect(proxy.proxy_addr).await.unwrap();
        s.write_all(get).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let answer = String::from_utf8_lossy(&out).into_owned();
        if answer.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(answer)
        }
    })
    .await;
}

#[tokio::test]
async fn after_a_refused_upgrade_the_connection_still_gets_the_token() {
    let (addr, up) = start_upstream().await;
    let (proxy, _d) = start_proxy(addr, "").await;
    let mut s = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    s.write_all(b"GET /admin/ws-refused HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let first = read_until(&mut s, "no upgrade here").await;
    assert!(first.starts_with("HTTP/1.1 400"), "{first}");
    s.write_all(b"GET /admin/after HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let second = read_until(&mut s, "/admin/after\"}").await;
    assert!(second.contains("HTTP/1.1 200"), "{second}");
    let token = up.token.lock().unwrap().clone().unwrap();
    let seen = up.seen.lock().unwrap().clone();
    let (_, _, h) = seen.iter().find(|(_, p, _)| p == "/admin/after").unwrap();
    assert_eq!(h["authorization"], format!("Bearer {token}").as_str());
}

#[tokio::test]
async fn event_streams_are_not_buffered() {
    let (addr, up) = start_upstream().await;
    let (proxy, _d) = start_proxy(addr, "").await;
    let client = client_for::<Empty<Bytes>>();
    let resp = client
        .get(
            format!("http://{}/admin/sse", proxy.proxy_addr)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    // The first event arrives while the upstream is still holding the second back (for
    // ever: a buffering proxy would never pass it on).
    let first = tokio::time::timeout(LONG, body.frame())
        .await
        .expect("first event buffered")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: one\n\n");
    up.sse_gate.notify_one();
    let second = body.frame().await.unwrap().unwrap();
    assert_eq!(second.into_data().unwrap(), "data: two\n\n");
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let (addr, up) = start_upstream().await;
    let (proxy, _d) = start_proxy(addr, "").await;
    let client = h2_client();
    for i in 0..3 {
        let resp = client
            .request(
                Request::get(format!(
                    "http://127.0.0.1:{}/admin/h2/{i}",
                    proxy.proxy_addr.port()
                ))
                .body(Full::default())
                .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
    }
    let token = up.token.lock().unwrap().clone().unwrap();
    let seen = up.seen.lock().unwrap().clone();
    let h2: Vec<_> = seen
        .iter()
        .filter(|(_, p, _)| p.starts_with("/admin/h2/"))
        .collect();
    assert_eq!(h2.len(), 3);
    assert_eq!(h2[0].2["authorization"], format!("Bearer {token}").as_str());
    assert!(
        h2[0].2["x-forwarded-host"]
            .to_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
}

#[tokio::test]
async fn expect_continue_head_and_preflight() {
    let (addr, up) = start_upstream().await;
    let (proxy, _d) =
        start_proxy(addr, "[access]\nallow_origins = [\"http://tool.internal\"]").await;
    let mut s = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    s.write_all(b"POST /admin/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").await.unwrap();
    let interim = read_until(&mut s, "\r\n\r\n").await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    s.write_all(b"hello").await.unwrap();
    let done = read_until(&mut s, "hello").await;
    assert!(done.contains("200 OK"), "{done}");

    let client = client();
    let head = client
        .request(
            Request::head(format!("http://{}/admin/products", proxy.proxy_addr))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    let pre = client
        .request(
            Request::options(format!("http://{}/admin/products", proxy.proxy_addr))
                .header("origin", "http://tool.internal")
                .header("access-control-request-method", "POST")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        pre.status(),
        204,
        "the preflight reached Medusa's CORS handling"
    );
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "http://tool.internal"
    );
    let seen = up.seen.lock().unwrap().clone();
    let (_, _, h) = seen.iter().find(|(m, _, _)| m == "OPTIONS").unwrap();
    assert_eq!(h["origin"], "http://tool.internal");
    assert_eq!(h["access-control-request-method"], "POST");
}
