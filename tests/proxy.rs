//! Black-box tests of the proxy (run in-process) against the fake Medusa.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::fake_medusa::{self, FakeMedusa, LoginFailure};
use common::harness::{Harness, client_for, config_text, login_auth, password_file};
use common::wait::{self, LONG};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use medusa_auth_proxy::config::Settings;
use sha2::{Digest, Sha256};

async fn harness(extra: &str) -> Harness {
    let fake = FakeMedusa::start().await;
    harness_with(fake, extra).await
}

/// `extra` is TOML spliced in: `[auth]` lines first, then a `@upstream` marker for upstream
/// lines, then a `@tail` marker for sections appended at the end.
async fn harness_with(fake: FakeMedusa, extra: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path());
    let (extra, tail) = extra.split_once("@tail").unwrap_or((extra, ""));
    let (auth_extra, upstream_extra) = extra.split_once("@upstream").unwrap_or((extra, ""));
    let auth = format!(
        "{}login_timeout = \"2s\"\n{auth_extra}",
        login_auth("v1", &pw)
    );
    let toml = config_text(&fake.url(), upstream_extra, &auth, tail);
    Harness::start(fake, dir, &toml).await
}

fn sha(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    fake_medusa::hex(h)
}

#[tokio::test]
async fn injects_token_and_cleans_headers_both_ways() {
    let h = harness("").await;
    let req = Request::get(h.url("/admin/products?q=a%2Fb&x=%20&&y"))
        .header("authorization", "Bearer client-supplied")
        .header("cookie", "connect.sid=client-session; other=1")
        .header("x-medusa-access-token", "client-api-token")
        .header("proxy-authorization", "Bearer proxy-key")
        .header("connection", "x-custom-hop")
        .header("x-custom-hop", "1")
        .header("te", "trailers")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-end-to-end", "kept")
        .body(Full::default())
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers.get("set-cookie").is_none(),
        "a Medusa session reached the client"
    );

    let seen = h.fake.requests_to("/admin/products");
    assert_eq!(seen.len(), 1);
    let got = &seen[0];
    assert_eq!(
        got.uri, "/admin/products?q=a%2Fb&x=%20&&y",
        "path and query byte for byte"
    );
    let token = h.fake.last_token().unwrap();
    assert_eq!(
        got.headers["authorization"],
        format!("Bearer {token}").as_str()
    );
    assert_eq!(got.headers.get_all("authorization").iter().count(), 1);
    assert!(got.headers.get("x-medusa-access-token").is_none());
    assert!(got.headers.get("proxy-authorization").is_none());
    assert!(got.headers.get("x-custom-hop").is_none());
    assert!(got.headers.get("te").is_none());
    assert!(
        got.headers
            .get("connection")
            .is_none_or(|v| v != "x-custom-hop")
    );
    let cookie = got
        .headers
        .get("cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        cookie
            .as_deref()
            .is_some_and(|c| c.starts_with("connect.sid=s%3A") && !c.contains("client")),
        "only the proxy's own Medusa session is sent: {cookie:?}"
    );
    assert_eq!(got.headers["host"], h.fake.addr.to_string().as_str());
    assert_eq!(got.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got.headers["x-forwarded-proto"], "http");
    assert_eq!(
        got.headers["x-forwarded-host"],
        h.proxy.proxy_addr.to_string().as_str()
    );
    assert_eq!(got.headers["x-end-to-end"], "kept");

    let r = h.get("/admin/hop").await;
    assert_eq!(r.status, 200);
    for gone in [
        "x-hop-custom",
        "keep-alive",
        "proxy-connection",
        "set-cookie",
    ] {
        assert!(r.headers.get(gone).is_none(), "{gone} reached the client");
    }
    assert_eq!(r.headers["x-kept"], "yes");
}

#[tokio::test]
async fn every_method_is_forwarded() {
    let h = harness("").await;
    for m in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"] {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let body = if m == "GET" || m == "HEAD" {
            Full::default()
        } else {
            Full::new(Bytes::from_static(b"{\"a\":1}"))
        };
        let r = h
            .send(
                Request::builder()
                    .method(method)
                    .uri(h.url("/admin/things/1"))
                    .body(body)
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 200, "{m}");
    }
    let methods: Vec<String> = h
        .fake
        .requests_to("/admin/things/1")
        .iter()
        .map(|r| r.method.to_string())
        .collect();
    assert_eq!(
        methods,
        ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
    );
    let delete = &h.fake.requests_to("/admin/things/1")[4];
    assert_eq!(delete.body_len, 7, "a DELETE body arrives");
}

#[tokio::test]
async fn burst_after_secret_rotation_costs_exactly_one_login() {
    let h = harness("").await;
    h.warm_up().await;
    assert_eq!(h.fake.logins(), 1);
    h.fake.rotate_secret();
    let h = Arc::new(h);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.get(&format!("/admin/products?i={i}")).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        h.fake.logins(),
        2,
        "one login at start, exactly one after the rotation"
    );
    assert_eq!(h.fake.max_concurrent_logins(), 1);
    // The race: several requests rejected with the old token at once, all waiting on the
    // one re-login. With a single one, the burst was served one by one.
    let rejected = h.fake.rejected_requests();
    eprintln!("burst after rotation: {rejected} requests rejected with the old token");
    if rejected < 2 {
        eprintln!(
            "SKIPPED: only {rejected} request met the rotated secret: concurrent 401s sharing \
             one login were not exercised"
        );
    }
}

#[tokio::test]
async fn late_401_for_an_old_token_keeps_the_new_one() {
    let h = harness("").await;
    h.warm_up().await;
    let old = h.proxy.tokens.token().await.unwrap();
    h.fake.rotate_secret();
    assert_eq!(h.get("/admin/products").await.status, 200);
    assert_eq!(h.fake.logins(), 2);
    // A 401 for the old token arrives now, after the new token was cached.
    h.proxy.tokens.reject(&old).await;
    h.proxy.tokens.reject(&old).await;
    let current = h.proxy.tokens.token().await.unwrap();
    assert_ne!(current.id, old.id);
    assert_eq!(h.get("/admin/products").await.status, 200);
    assert_eq!(h.fake.logins(), 2, "the late 401 caused no login");
}

#[tokio::test]
async fn short_lived_tokens_never_reach_medusa_expired() {
    let fake = FakeMedusa::start().await;
    fake.set_token_lifetime(Duration::from_secs(2));
    let h = Arc::new(harness_with(fake, "").await);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut n = 0;
            // Traffic across several token lifetimes (a load window, not synchronisation),
            // and enough of it however slow the machine.
            while start.elapsed() < Duration::from_secs(5) || n < 26 {
                let r = h.get(&format!("/admin/products?w={w}&n={n}")).await;
                assert_eq!(r.status, 200, "{:?}", r.body);
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert!(total > 100, "too little traffic to prove anything: {total}");
    assert_eq!(h.fake.expired_token_requests(), 0);
    assert_eq!(h.fake.rejected_requests(), 0);
    let logins = h.fake.logins();
    assert!(
        (3..=20).contains(&logins),
        "renewed ahead, never per request: {logins} logins for {total} requests"
    );
}

#[tokio::test]
async fn post_replayed_after_401_arrives_intact() {
    let h = harness("").await;
    h.warm_up().await;
    h.fake.rotate_secret();
    let body: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    let req = Request::post(h.url("/admin/echo"))
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), body.as_slice());
    let seen = h.fake.requests_to("/admin/echo");
    assert_eq!(seen.len(), 2, "sent once, replayed once");
    assert_eq!(seen[0].status, 401);
    assert_eq!(seen[1].status, 200);
    assert_eq!(seen[1].body_sha256, sha(&body));
    assert_eq!(seen[1].headers["content-type"], "application/octet-stream");
}

#[tokio::test]
async fn large_or_streamed_bodies_are_not_replayed() {
    let h = harness("").await;
    h.warm_up().await;
    h.fake.rotate_secret();
    let big = Bytes::from(vec![7u8; 100 * 1024]);
    let r = h
        .send(
            Request::post(h.url("/admin/echo"))
                .body(Full::new(big))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 401, "the client gets the 401 instead of a replay");
    assert_eq!(
        h.fake.requests_to("/admin/echo").len(),
        1,
        "never sent twice"
    );
    // Medusa confirmed the rejection (one check), so the token was renewed anyway: the next
    // request succeeds with one more login.
    assert_eq!(h.fake.token_checks(), 1);
    assert_eq!(h.get("/admin/products").await.status, 200);
    assert_eq!(h.fake.logins(), 2);

    // A chunked body (no Content-Length) is streamed and therefore not replayable either.
    h.fake.rotate_secret();
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
        hyper::body::Frame::data(Bytes::from_static(b"tiny")),
    )]);
    let body = http_body_util::StreamBody::new(stream);
    let client = client_for();
    let resp = client
        .request(Request::post(h.url("/admin/echo")).body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(h.fake.requests_to("/admin/echo").len(), 2);
}

#[tokio::test]
async fn medusa_down_is_502_and_slow_is_504() {
    let slow = harness("@upstream\nrequest_timeout = \"300ms\"").await;
    slow.warm_up().await;
    slow.fake.set_response_delay(Duration::from_secs(30));
    let r = slow.get("/admin/products").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");

    let h = harness("").await;
    h.warm_up().await;
    h.fake.stop().await;
    let r = h.get("/admin/products").await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(r.json()["error"], "upstream_unreachable");
    assert_eq!(r.headers["content-type"], "application/json");
}

#[tokio::test]
async fn wrong_password_is_503_with_bounded_logins() {
    let fake = FakeMedusa::start().await;
    fake.set_credentials(fake_medusa::DEFAULT_EMAIL, "another-password");
    let h = Arc::new(harness_with(fake, "").await);
    h.fake.wait_until(|f| f.login_attempts() >= 1).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move { h.get("/admin/products").await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["error"], "no_token");
        assert!(
            r.json()["message"]
                .as_str()
                .unwrap()
                .contains("invalid credentials"),
            "{:?}",
            r.body
        );
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(
            (1..=30).contains(&retry),
            "bad credentials back off ~30s: {retry}"
        );
    }
    assert_eq!(h.fake.login_attempts(), 1, "50 requests, one login attempt");
    let ready = h.ops("/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.json()["reason"]
            .as_str()
            .unwrap()
            .contains("invalid credentials")
    );
    assert_eq!(h.ops("/healthz").await.status, 200);
}

#[tokio::test]
async fn transient_login_failures_back_off_and_recover() {
    let fake = FakeMedusa::start().await;
    fake.set_login_failure(Some(LoginFailure::Status(500)));
    let h = harness_with(fake, "").await;
    h.fake.wait_until(|f| f.login_attempts() >= 1).await;
    let r = h.get("/admin/products").await;
    assert_eq!(r.status, 503);
    assert!(r.headers.contains_key("retry-after"));
    h.fake.set_login_failure(None);
    // The driver retries on its own (backoff ~1s); readiness follows.
    h.fake.wait_until(|f| f.logins() == 1).await;
    assert_eq!(h.get("/admin/products").await.status, 200);
    assert!(h.fake.login_attempts() <= 3, "{}", h.fake.login_attempts());
}

#[tokio::test]
async fn client_abort_mid_login_does_not_restart_it() {
    let fake = FakeMedusa::start().await;
    fake.set_login_delay(Duration::from_millis(800));
    let h = Arc::new(harness_with(fake, "").await);
    h.fake.wait_until(|f| f.login_attempts() == 1).await;
    // Clients that give up while the login is in flight.
    let mut gave_up = 0;
    for _ in 0..10 {
        let c = h.clone();
        let answered = tokio::time::timeout(Duration::from_millis(50), async move {
            c.get("/admin/products").await
        })
        .await;
        if answered.is_err() && h.fake.logins() == 0 {
            gave_up += 1;
        }
    }
    eprintln!("{gave_up} of 10 clients gave up while the login was in flight");
    if gave_up == 0 {
        eprintln!(
            "SKIPPED: the login finished before any client gave up: an abort mid-login was not \
             exercised"
        );
    }
    h.fake.wait_until(|f| f.logins() == 1).await;
    assert_eq!(h.get("/admin/products").await.status, 200);
    assert_eq!(h.fake.login_attempts(), 1);
    assert_eq!(h.fake.max_concurrent_logins(), 1);
}

#[tokio::test]
async fn readiness_follows_the_token() {
    let fake = FakeMedusa::start().await;
    fake.set_login_delay(Duration::from_millis(500));
    let h = harness_with(fake, "").await;
    let r = h.ops("/readyz").await;
    // Asked before the login was answered (the fake counts it as it answers, before the
    // proxy has the token), the answer must be "not ready". Asked after, it proves nothing.
    if h.fake.logins() == 0 {
        assert_eq!(r.status, 503, "not ready before the first login");
    } else {
        eprintln!(
            "SKIPPED: the first login (500 ms) was answered before /readyz was: readiness \
             before it was not observed"
        );
    }
    h.fake.wait_until(|f| f.logins() == 1).await;
    let r = h.ops("/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(h.ops("/nope").await.status, 404);
}

#[tokio::test]
async fn session_cookie_is_reused_and_connections_pooled() {
    let h = harness("").await;
    for i in 0..30 {
        assert_eq!(h.get(&format!("/admin/products?i={i}")).await.status, 200);
    }
    assert_eq!(
        h.fake.sessions_created(),
        1,
        "Medusa's session store must not grow with traffic"
    );
    assert!(
        h.fake.connections() <= 2,
        "keep-alive pool: {} connections for 31 requests",
        h.fake.connections()
    );
}

#[tokio::test]
async fn big_upload_and_download_stream_intact() {
    let h = harness("@tail[policy]\nmax_body = \"1GiB\"").await;
    const SIZE: u64 = 64 * 1024 * 1024;
    // Upload: a streamed body of SIZE bytes, produced chunk by chunk.
    let chunk = Bytes::from(vec![0xabu8; 256 * 1024]);
    let n = (SIZE / chunk.len() as u64) as usize;
    let frames = futures_util::stream::iter(
        (0..n).map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
    );
    let client = client_for();
    let resp = client
        .request(
            Request::post(h.url("/admin/upload"))
                .body(http_body_util::StreamBody::new(frames))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["bytes"], SIZE);
    let mut expect = Sha256::new();
    let chunk = vec![0xabu8; 256 * 1024];
    for _ in 0..n {
        expect.update(&chunk);
    }
    assert_eq!(v["sha256"], fake_medusa::hex(expect));

    // Download, hashed as it streams.
    let resp = h
        .client
        .request(
            Request::get(h.url(&format!("/admin/download?bytes={SIZE}")))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            total += data.len() as u64;
            hasher.update(&data);
        }
    }
    assert_eq!(total, SIZE);
    assert_eq!(fake_medusa::hex(hasher), fake_medusa::pattern_sha256(SIZE));
}

#[tokio::test]
async fn errors_and_debug_output_never_contain_secrets() {
    let h = harness("").await;
    h.warm_up().await;
    let token = h.fake.last_token().unwrap();
    let current = h.proxy.tokens.token().await.unwrap();
    let dbg = format!("{current:?} {:?}", h.proxy.tokens.login());
    assert!(!dbg.contains(&token), "token in Debug output");
    assert!(
        !dbg.contains(fake_medusa::DEFAULT_PASSWORD),
        "password in Debug output"
    );
    h.fake.stop().await;
    let r = h.get("/admin/products").await;
    let body = String::from_utf8_lossy(&r.body);
    assert!(!body.contains(&token) && !body.contains(fake_medusa::DEFAULT_PASSWORD));
}

#[tokio::test]
async fn after_an_outage_the_login_follows_health_not_the_long_backoff() {
    use medusa_auth_proxy::auth::TokenManager;
    use medusa_auth_proxy::auth::backoff::Backoff;
    use medusa_auth_proxy::auth::login::Login;
    use medusa_auth_proxy::config::Flavor;
    use medusa_auth_proxy::secret::Secret;
    use medusa_auth_proxy::upstream::Upstream;

    let fake = FakeMedusa::start().await;
    fake.stop().await; // Medusa is down when the proxy starts.
    let settings = Settings::from_toml(&format!(
        "[upstream]\nurl = \"{}\"\nconnect_timeout = \"1s\"\n[auth]\nemail = \"{}\"\npassword_env = \"UNUSED\"\nlogin_timeout = \"2s\"",
        fake.url(),
        fake_medusa::DEFAULT_EMAIL
    ))
    .unwrap();
    let upstream = Upstream::new(&settings.upstream).unwrap();
    let login = Login::new(
        upstream,
        Flavor::V1,
        settings.auth.email.clone(),
        Secret::new(fake_medusa::DEFAULT_PASSWORD.into()),
    );
    // A backoff far longer than the test: only the /health probe can bring the login forward.
    let backoff = Backoff {
        initial: Duration::from_secs(120),
        initial_bad_credentials: Duration::from_secs(120),
        max: Duration::from_secs(300),
    };
    let tokens = TokenManager::with_backoff(
        login,
        settings.auth.clone(),
        backoff,
        medusa_auth_proxy::metrics::Metrics::new(),
    );
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let _driver = tokens.spawn_driver(stop_rx);
    wait::until(LONG, "a failed login", async || {
        match tokens.readiness().await {
            Err(reason) if reason.contains("login failed") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    fake.restart().await;
    fake.wait_until(|f| f.logins() == 1).await;
    assert!(
        fake.health_checks() >= 1,
        "recovered without probing /health?"
    );
    assert_eq!(
        fake.login_attempts(),
        1,
        "one login once Medusa is back, no storm"
    );
    // The fake counts the login when it answers; the proxy caches the token just after.
    wait::until(LONG, "ready after the login", async || {
        tokens.readiness().await.map_err(|r| r.to_string())
    })
    .await;
}

#[tokio::test]
async fn a_401_whose_check_cannot_reach_medusa_keeps_the_token() {
    let h = harness("@tail[policy]\nallow_paths = [\"/admin/\", \"/store/\"]\n").await;
    h.warm_up().await;
    // Every authenticated answer now takes far longer than a check may wait (login_timeout,
    // 2 s): the timeout fires first however loaded the machine; the always-401 route
    // answers at once.
    h.fake.set_response_delay(Duration::from_secs(10));
    let r = h.get(fake_medusa::ALWAYS_401).await;
    h.fake.set_response_delay(Duration::ZERO);
    assert_eq!(r.status, 401, "Medusa's 401 is passed on");
    assert_eq!(r.text(), "Unauthorized", "unchanged");
    assert_eq!(h.fake.token_checks(), 1, "checked once");
    let metrics = h.ops("/metrics").await.text();
    assert!(
        metrics.contains(
            "medusa_auth_proxy_token_checks_total{identity=\"default\",outcome=\"error\"} 1"
        ),
        "{metrics}"
    );
    // The token was kept: no login, and the next request uses it.
    assert_eq!(h.get("/admin/products").await.status, 200);
    assert_eq!(h.fake.logins(), 1, "a check that timed out cost no token");
}

#[tokio::test]
async fn a_401_for_the_route_is_passed_on_unchanged_and_the_token_stays() {
    let h = harness("@tail[policy]\nallow_paths = [\"/admin/\", \"/store/\"]\n").await;
    h.warm_up().await;
    // A replayable body: still not replayed, the token confirmed good.
    let r = h
        .send(
            Request::post(h.url(fake_medusa::ALWAYS_401))
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.text(), "Unauthorized");
    assert!(r.headers.get("www-authenticate").is_none());
    assert_eq!(h.fake.always_401_requests(), 1, "not replayed");
    let metrics = h.ops("/metrics").await.text();
    assert!(
        metrics.contains(
            "medusa_auth_proxy_token_checks_total{identity=\"default\",outcome=\"accepted\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("medusa_auth_proxy_replays_total{"),
        "no replay: {metrics}"
    );
    assert_eq!(h.get("/admin/products").await.status, 200);
    assert_eq!(h.fake.logins(), 1);
}
