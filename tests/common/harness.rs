//! The in-process harness: the proxy started by `app::start` from a TOML config in front of a
//! fake Medusa, and the one way the tests make HTTP clients and read replies.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use medusa_auth_proxy::app::{self, Running};
use medusa_auth_proxy::config::Settings;

use super::fake_medusa::{self, FakeMedusa};
use super::wait::{self, LONG};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client with its own connection pool, for buffered request bodies.
pub fn client() -> HttpClient {
    client_for()
}

/// An HTTP/1.1 client for request bodies of type `B` (streamed uploads, boxed bodies).
pub fn client_for<B>() -> Client<HttpConnector, B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client with prior knowledge (h2c), for buffered request bodies.
pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `req` through `c` and reads the whole reply; panics if nothing answers or the body
/// breaks off.
pub async fn send<B>(c: &Client<HttpConnector, B>, req: Request<B>) -> Reply
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let resp = c.request(req).await.expect("the proxy answers");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("the whole body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Writes the fake's password, newline-terminated, to `dir/password`; returns its path.
pub fn password_file(dir: &Path) -> PathBuf {
    let pw = dir.join("password");
    std::fs::write(&pw, format!("{}\n", fake_medusa::DEFAULT_PASSWORD)).unwrap();
    pw
}

/// The `[auth]` lines of a login `flavor` with the fake's email and the password file `pw`.
pub fn login_auth(flavor: &str, pw: &Path) -> String {
    format!(
        "flavor = \"{flavor}\"\nemail = \"{}\"\npassword_file = \"{}\"\n",
        fake_medusa::DEFAULT_EMAIL,
        pw.display()
    )
}

/// A proxy config in front of `upstream_url`, both listeners on ephemeral ports, a 5 s
/// shutdown grace. `upstream`: more `[upstream]` lines; `auth`: the whole `[auth]` section;
/// `tail`: sections appended at the end.
pub fn config_text(upstream_url: &str, upstream: &str, auth: &str, tail: &str) -> String {
    proxy_config(
        "shutdown_grace = \"5s\"",
        upstream_url,
        upstream,
        auth,
        tail,
    )
}

/// [`config_text`] with `proxy` as the `[proxy]` lines after `listen` (no shutdown grace
/// unless given there). Every test config is written by these two, so the sections a test
/// does not care about are the same everywhere.
pub fn proxy_config(
    proxy: &str,
    upstream_url: &str,
    upstream: &str,
    auth: &str,
    tail: &str,
) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
{proxy}
[upstream]
url = "{upstream_url}"
connect_timeout = "1s"
{upstream}
[auth]
{auth}
[ops]
listen = "127.0.0.1:0"
{tail}
"#
    )
}

/// `e` and its sources, `: `-separated (hyper's errors say little without their sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// `settings` without the access log, for a proxy run in-process. Its lines go straight to
/// the test process's stderr (the test harness captures only `print!`-style output), so
/// `cargo test` printed ~33,000 of them between the test names. Access logging itself is
/// tested against the binary (tests/operate.rs), where stderr is read.
pub fn quiet(mut settings: Settings) -> Settings {
    settings.log.access = false;
    settings
}

/// Status and body of `GET url` through `c`; panics if nothing answers.
pub async fn fetch(c: &HttpClient, url: &str) -> (StatusCode, Bytes) {
    let r = get(c, url).await;
    (r.status, r.body)
}

/// `GET url` through `c`; panics if nothing answers.
pub async fn get(c: &HttpClient, url: &str) -> Reply {
    send(c, Request::get(url).body(Full::default()).unwrap()).await
}

/// `POST url` through `c` with `body` (no content type); panics if nothing answers.
pub async fn post(c: &HttpClient, url: &str, body: &'static [u8]) -> Reply {
    let req = Request::post(url)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    send(c, req).await
}

/// Polls `GET url` through `c` until it answers 200; panics after [`LONG`].
pub async fn wait_200(c: &HttpClient, url: &str) {
    wait::until(LONG, &format!("200 from {url}"), async || {
        let r = get(c, url).await;
        if r.status == StatusCode::OK {
            Ok(())
        } else {
            Err(format!("last {} {}", r.status, r.text()))
        }
    })
    .await
}

/// The proxy, run in-process in front of `fake`.
pub struct Harness {
    pub fake: FakeMedusa,
    pub proxy: Running,
    pub client: HttpClient,
    /// The folder holding the files the config names (password file, keys).
    pub dir: tempfile::TempDir,
}

/// A response, its body read to the end.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The proxy's `error` code of its own error replies; empty for any other body.
    pub fn code(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

impl Harness {
    /// Starts the proxy from the config `toml` in front of `fake`. `dir` holds the files the
    /// config names; it lives as long as the harness.
    pub async fn start(fake: FakeMedusa, dir: tempfile::TempDir, toml: &str) -> Harness {
        let settings = quiet(Settings::from_toml(toml).expect("test config"));
        let proxy = app::start(settings).await.expect("proxy starts");
        Harness {
            fake,
            proxy,
            client: client(),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy.proxy_addr, path)
    }

    /// The ops listener's base URL (`http://127.0.0.1:port`).
    pub fn ops_url(&self) -> String {
        format!("http://{}", self.proxy.ops_addr)
    }

    /// A request builder for `method path` on the proxy.
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(self.url(path))
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        send(&self.client, req).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call("GET", path).await
    }

    /// `method path` without a body.
    pub async fn call(&self, method: &str, path: &str) -> Reply {
        self.send(self.request(method, path).body(Full::default()).unwrap())
            .await
    }

    pub async fn ops(&self, path: &str) -> Reply {
        get(&self.client, &format!("{}{path}", self.ops_url())).await
    }

    /// One request that succeeds, so the current token is known good.
    pub async fn warm_up(&self) {
        let r = self.get("/admin/products").await;
        assert_eq!(r.status, 200, "warm-up: {:?}", r.body);
    }

    /// Polls `/readyz` until it answers `want`; panics after [`LONG`].
    pub async fn wait_readyz(&self, want: u16) -> Reply {
        self.wait_readyz_until(&want.to_string(), |r| r.status == want)
            .await
    }

    /// Polls `/readyz` until `f` holds for the reply; panics after [`LONG`].
    pub async fn wait_readyz_until(&self, what: &str, f: impl Fn(&Reply) -> bool) -> Reply {
        wait::until(LONG, &format!("/readyz to show {what}"), async || {
            let r = self.ops("/readyz").await;
            if f(&r) {
                Ok(r)
            } else {
                Err(format!("last {} {}", r.status, r.text()))
            }
        })
        .await
    }

    /// Polls `GET path` until it answers 200; panics after [`LONG`].
    pub async fn wait_ok(&self, path: &str) {
        wait_200(&self.client, &self.url(path)).await
    }

    /// `n` concurrent GETs of `path`.
    pub async fn burst(self: &Arc<Self>, n: usize, path: &str) -> Vec<Reply> {
        let mut tasks = Vec::new();
        for i in 0..n {
            let h = self.clone();
            let path = format!("{path}?i={i}");
            tasks.push(tokio::spawn(async move { h.get(&path).await }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }
}
