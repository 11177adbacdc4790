//! The in-process harness: the proxy started by `app::start` from a TOML config in front of a
//! fake Medusa, and a hyper-util client to talk to it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use medusa_auth_proxy::app::{self, Running};
use medusa_auth_proxy::config::Settings;

use super::fake_medusa::{self, FakeMedusa};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
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

/// A proxy config in front of `upstream_url`, both listeners on ephemeral ports. `upstream`:
/// more `[upstream]` lines; `auth`: the whole `[auth]` section; `tail`: sections appended at
/// the end.
pub fn config_text(upstream_url: &str, upstream: &str, auth: &str, tail: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
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
    let req = Request::get(url).body(Full::default()).unwrap();
    let resp = c.request(req).await.expect("the proxy answers");
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// The proxy, run in-process in front of `fake`.
pub struct Harness {
    pub fake: FakeMedusa,
    pub proxy: Running,
    pub client: HttpClient,
    _dir: tempfile::TempDir,
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
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy.proxy_addr, path)
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        let resp = self.client.request(req).await.expect("proxy answers");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Request::get(self.url(path)).body(Full::default()).unwrap())
            .await
    }

    pub async fn ops(&self, path: &str) -> Reply {
        let url = format!("http://{}{}", self.proxy.ops_addr, path);
        self.send(Request::get(url).body(Full::default()).unwrap())
            .await
    }

    /// One request that succeeds, so the current token is known good.
    pub async fn warm_up(&self) {
        let r = self.get("/admin/products").await;
        assert_eq!(r.status, 200, "warm-up: {:?}", r.body);
    }

    /// Polls `/readyz` every 10 ms until it answers `want`; panics after 10 s.
    pub async fn wait_readyz(&self, want: u16) -> Reply {
        self.wait_readyz_until(&want.to_string(), |r| r.status == want)
            .await
    }

    /// Polls `/readyz` every 10 ms until `f` holds for the reply; panics after 10 s.
    pub async fn wait_readyz_until(&self, what: &str, f: impl Fn(&Reply) -> bool) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.ops("/readyz").await;
            if f(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never showed {what}: last {} {}",
                r.status,
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls `GET path` every 20 ms until it answers 200; panics after 10 s.
    pub async fn wait_ok(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.get(path).await;
            if r.status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never recovered: last {} {}",
                r.status,
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
