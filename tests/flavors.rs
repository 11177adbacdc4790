//! The credential flavors (`[auth] flavor`), black-box against the fake Medusa in v1 and v2
//! mode: v2 login and refresh, the static keys (`v1-api-token`, `v2-secret-key`), `auto`, and
//! `check --login` for them. Tests count what the fake saw; they do not sleep to synchronise.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::fake_medusa::{self, FakeMedusa, LoginFailure, Mode};
use common::harness::{
    self, Harness, client, config_text, login_auth, password_file, proxy_config,
};
use common::process::run_async;
use common::wait::LONG;
use http::{HeaderMap, Request};
use http_body_util::Full;
use medusa_auth_proxy::config::Flavor;

const V1_KEY: &str = "api_token_01TESTKEY0123456789";
const V2_KEY: &str = "sk_01TESTSECRETKEY0123456789abcdef";

/// The `[auth]` lines for `flavor`, with the secret in a file under `dir`: the fake's
/// password for login flavors, `key` for the static ones.
fn auth_section(dir: &std::path::Path, flavor: &str, key: Option<&str>) -> String {
    if let Some(key) = key {
        let path = dir.join("api-key");
        std::fs::write(&path, format!("{key}\n")).unwrap();
        format!(
            "flavor = \"{flavor}\"\napi_key_file = \"{}\"\n",
            path.display()
        )
    } else {
        login_auth(flavor, &password_file(dir))
    }
}

/// A proxy of `flavor` in front of `fake`. `key`: the static key (static flavors only);
/// `extra_auth`: more `[auth]` lines.
async fn harness(fake: FakeMedusa, flavor: &str, key: Option<&str>, extra_auth: &str) -> Harness {
    harness_with_tail(fake, flavor, key, extra_auth, "").await
}

/// [`harness`] with more config sections (`tail`).
async fn harness_with_tail(
    fake: FakeMedusa,
    flavor: &str,
    key: Option<&str>,
    extra_auth: &str,
    tail: &str,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let auth = auth_section(dir.path(), flavor, key);
    let auth = format!("{auth}login_timeout = \"2s\"\n{extra_auth}");
    let toml = config_text(&fake.url(), "", &auth, tail);
    Harness::start(fake, dir, &toml).await
}

impl Harness {
    fn key_checks(&self) -> usize {
        self.fake.requests_to(key_path(self.fake.mode())).len()
    }
}

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

/// The claims of a JWT, without verifying it.
fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

/// Steady traffic from 4 workers for `window` (a load window, not synchronisation); every
/// answer must be 2xx. Returns the number of requests sent.
async fn steady_traffic(h: &Arc<Harness>, window: Duration) -> usize {
    let mut tasks = Vec::new();
    for w in 0..4 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let mut n = 0;
            // And enough of it however slow the machine.
            while start.elapsed() < window || n < 26 {
                let r = h.get(&format!("/admin/products?w={w}&n={n}")).await;
                assert!(r.status.is_success(), "{} {:?}", r.status, r.body);
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

// ---- v2 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn v2_logs_in_and_injects_the_bearer_token() {
    let h = harness(FakeMedusa::start_v2().await, "v2", None, "").await;
    let req = Request::get(h.url("/admin/products"))
        .header("authorization", "Bearer client-supplied")
        .header("cookie", "connect.sid=client-session")
        .header("x-medusa-access-token", "client-api-token")
        .body(Full::default())
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.headers.get("set-cookie").is_none());

    let token = h.fake.last_token().expect("the fake issued a token");
    let c = claims(&token);
    assert_eq!(c["actor_type"], "user");
    assert_eq!(c["actor_id"], fake_medusa::USER_ID);
    let seen = &h.fake.requests_to("/admin/products")[0];
    assert_eq!(
        header(&seen.headers, "authorization"),
        [format!("Bearer {token}")]
    );
    assert!(seen.headers.get("x-medusa-access-token").is_none());
    assert!(
        seen.headers.get("cookie").is_none(),
        "v2 sets no session cookie, so the proxy sends none (and never the client's)"
    );
    assert_eq!(h.fake.login_attempts(), 1);
    assert_eq!(h.fake.logins(), 1);
    assert_eq!(
        h.fake.refresh_attempts(),
        0,
        "a day-long token needs no refresh"
    );
    assert!(
        h.fake.requests_to("/admin/auth/token").is_empty(),
        "no v1 login against v2"
    );

    // The user id comes from v2's actor_id: the own-user rule applies.
    assert_eq!(
        h.proxy.tokens.user_id_hint().as_deref().map(String::as_str),
        Some(fake_medusa::USER_ID)
    );
    let own = Request::post(h.url(&format!("/admin/users/{}", fake_medusa::USER_ID)))
        .body(Full::default())
        .unwrap();
    assert_eq!(h.send(own).await.status, 403);

    let ready = h.ops("/readyz").await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(h.get("/admin/stores").await.status, 200);
}

#[tokio::test]
async fn v2_short_tokens_never_fail_and_are_refreshed() {
    let fake = FakeMedusa::start_v2().await;
    fake.set_token_lifetime(Duration::from_secs(3));
    let h = Arc::new(harness(fake, "v2", None, "").await);
    let total = steady_traffic(&h, Duration::from_secs(6)).await;
    assert!(total > 100, "too little traffic to prove anything: {total}");
    assert_eq!(h.fake.rejected_requests(), 0, "zero 401s");
    assert_eq!(h.fake.expired_token_requests(), 0);
    assert!(
        h.fake.refreshes() > 0,
        "renewed by refresh: refreshes={} attempts={}",
        h.fake.refreshes(),
        h.fake.refresh_attempts()
    );
    assert_eq!(h.fake.refresh_attempts(), h.fake.refreshes());
    // The refreshed tokens were the ones used.
    let mut used: Vec<String> = h
        .fake
        .requests_to("/admin/products")
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    used.dedup();
    assert!(used.len() >= 2, "only {} distinct tokens used", used.len());
    // Renewed ahead, never per request (the exact count is the ignored test below).
    assert!(h.fake.logins() <= 10, "{} logins", h.fake.logins());
}

/// Was a bug: every refresh was followed by a full login. The refreshed token replaced the
/// cached one with `cache.insert`, which in moka is an *update* of the existing entry, and
/// `TokenExpiry` implemented only `expire_after_create`; the default `expire_after_update`
/// keeps the old entry's expiry. So the new token disappeared from the cache at the *old*
/// token's `usable_until`, and the next renewal found no current token and logged in.
#[tokio::test]
async fn v2_short_tokens_cost_one_login_then_only_refreshes() {
    let fake = FakeMedusa::start_v2().await;
    fake.set_token_lifetime(Duration::from_secs(3));
    let h = Arc::new(harness(fake, "v2", None, "").await);
    let total = steady_traffic(&h, Duration::from_secs(6)).await;
    assert!(total > 100, "too little traffic to prove anything: {total}");
    assert_eq!(h.fake.rejected_requests(), 0, "zero 401s");
    assert!(h.fake.refreshes() > 0);
    assert_eq!(
        (h.fake.logins(), h.fake.login_attempts()),
        (1, 1),
        "one login, then only refreshes ({} refreshes)",
        h.fake.refreshes()
    );
}

/// Was a bug, for v1 and v2 alike (same cause as above): after a renewal ahead of expiry,
/// the new token left the cache at the old token's `usable_until` and nothing renewed it
/// until the driver's next `refresh_at` (or a request asked): `/readyz` answered 503 "no
/// token yet" in between. With real 24 h tokens an idle proxy stayed not ready for most of a
/// day after its first renewal; with traffic, requests waited for an extra login.
#[tokio::test]
async fn readiness_holds_across_renewals() {
    for (mode, flavor) in [(Mode::V1, "v1"), (Mode::V2, "v2")] {
        let fake = FakeMedusa::start_mode(mode).await;
        fake.set_token_lifetime(Duration::from_secs(3));
        let h = harness(fake, flavor, None, "").await;
        h.wait_readyz(200).await;
        let renewals = |f: &FakeMedusa| f.logins() + f.refreshes();
        // No traffic: only the driver renews. Sample readiness across three renewals.
        let deadline = Instant::now() + LONG;
        let (mut samples, mut not_ready) = (0, Vec::new());
        while renewals(&h.fake) < 4 {
            let r = h.ops("/readyz").await;
            samples += 1;
            if r.status != 200 {
                not_ready.push(String::from_utf8_lossy(&r.body).into_owned());
            }
            assert!(Instant::now() < deadline, "{flavor}: too few renewals");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            not_ready.is_empty(),
            "{flavor}: /readyz was 503 in {} of {samples} samples across renewals \
             (logins={}, refreshes={}): {:?}",
            not_ready.len(),
            h.fake.logins(),
            h.fake.refreshes(),
            not_ready.first()
        );
        if mode == Mode::V2 {
            assert_eq!(h.fake.logins(), 1, "v2 renews by refresh only");
        }
    }
}

#[tokio::test]
async fn v2_refresh_failure_falls_back_to_login() {
    let fake = FakeMedusa::start_v2().await;
    fake.set_token_lifetime(Duration::from_secs(3));
    let h = harness(fake, "v2", None, "").await;
    assert_eq!(h.get("/admin/products").await.status, 200);
    // A refresh that fails (server error, then "Unauthorized") costs a login, never a request.
    for (status, logins_until) in [(500, 3), (401, 5)] {
        h.fake.set_refresh_failure(Some(status));
        let attempts_before = h.fake.refresh_attempts();
        let deadline = Instant::now() + LONG;
        let mut n = 0;
        while h.fake.logins() < logins_until {
            let r = h.get(&format!("/admin/products?n={n}")).await;
            assert_eq!(r.status, 200, "refresh {status}: {:?}", r.body);
            n += 1;
            assert!(
                Instant::now() < deadline,
                "refresh {status}: no fallback login (logins={}, refresh_attempts={})",
                h.fake.logins(),
                h.fake.refresh_attempts()
            );
        }
        assert!(
            h.fake.refresh_attempts() > attempts_before,
            "the proxy tried the refresh first"
        );
    }
    assert_eq!(h.fake.refreshes(), 0);
    assert_eq!(h.fake.rejected_requests(), 0);

    // Refresh works again: renewals go back to refreshing.
    h.fake.set_refresh_failure(None);
    let deadline = Instant::now() + LONG;
    let mut n = 0;
    while h.fake.refreshes() == 0 {
        let r = h.get(&format!("/admin/products?again={n}")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        n += 1;
        assert!(Instant::now() < deadline, "refresh never resumed");
    }
}

#[tokio::test]
async fn v2_secret_rotation_costs_one_login() {
    let h = Arc::new(harness(FakeMedusa::start_v2().await, "v2", None, "").await);
    assert_eq!(h.get("/admin/products").await.status, 200);
    h.fake.rotate_secret();
    for r in h.burst(50, "/admin/products").await {
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(
        h.fake.logins(),
        2,
        "one login at start, one after the rotation"
    );
    assert_eq!(
        h.fake.refresh_attempts(),
        0,
        "a rejected token is not refreshed"
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
async fn v2_mfa_verification_or_redirect_is_a_configuration_error() {
    for (failure, word) in [
        (LoginFailure::Mfa, "MFA"),
        (LoginFailure::Verification, "verification"),
        (LoginFailure::Location, "redirect"),
    ] {
        let fake = FakeMedusa::start_v2().await;
        fake.set_login_failure(Some(failure.clone()));
        let h = Arc::new(harness(fake, "v2", None, "").await);
        h.fake.wait_until(|f| f.login_attempts() >= 1).await;
        for r in h.burst(50, "/admin/products").await {
            assert_eq!(r.status, 503, "{failure:?}: {:?}", r.body);
            assert_eq!(r.json()["error"], "no_token");
            let message = r.json()["message"].as_str().unwrap().to_owned();
            assert!(message.contains(word), "{failure:?}: {message}");
            let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(
                (5..=30).contains(&retry),
                "{failure:?}: a configuration error backs off long, not 1 s: {retry}"
            );
        }
        assert_eq!(
            h.fake.login_attempts(),
            1,
            "{failure:?}: 50 requests, one login attempt"
        );
        assert!(h.fake.requests().is_empty(), "nothing reached Medusa");
        let ready = h.ops("/readyz").await;
        assert_eq!(ready.status, 503);
        let reason = ready.json()["reason"].as_str().unwrap().to_owned();
        assert!(
            reason.contains(word) && reason.contains("v2-secret-key"),
            "{failure:?}: the reason says what to do: {reason}"
        );
    }
}

// ---- static keys ------------------------------------------------------------------------------

/// `(fake mode, flavor, key, the header Medusa should see)` for both static flavors.
/// The static-key check route: v1 `GET /admin/auth` (it also names the key's user), v2
/// `GET /admin/stores`. The same route checks the key after a 401.
fn key_path(mode: Mode) -> &'static str {
    match mode {
        Mode::V1 => "/admin/auth",
        Mode::V2 => "/admin/stores",
    }
}

fn static_flavors() -> [(Mode, &'static str, &'static str, &'static str, String); 2] {
    [
        (
            Mode::V1,
            "v1-api-token",
            V1_KEY,
            "x-medusa-access-token",
            V1_KEY.to_owned(),
        ),
        (
            Mode::V2,
            "v2-secret-key",
            V2_KEY,
            "authorization",
            basic(V2_KEY),
        ),
    ]
}

#[tokio::test]
async fn static_keys_are_checked_and_injected() {
    for (mode, flavor, key, name, value) in static_flavors() {
        let fake = FakeMedusa::start_mode(mode).await;
        fake.set_api_key(Some(key));
        let h = harness(fake, flavor, Some(key), "").await;
        // Ready without any traffic: the key check proved the key.
        let ready = h.wait_readyz(200).await;
        assert_eq!(ready.json()["status"], "ready", "{flavor}");
        assert_eq!(h.key_checks(), 1, "{flavor}");
        let check = &h.fake.requests_to(key_path(mode))[0];
        assert_eq!(check.method, "GET");
        assert_eq!(check.status, 200, "{flavor}");
        assert_eq!(header(&check.headers, name), [value.as_str()], "{flavor}");

        let req = Request::get(h.url("/admin/products"))
            .header("authorization", "Bearer client-supplied")
            .header("x-medusa-access-token", "client-api-token")
            .header("cookie", "connect.sid=client-session")
            .body(Full::default())
            .unwrap();
        let r = h.send(req).await;
        assert_eq!(r.status, 200, "{flavor}: {:?}", r.body);
        for i in 0..10 {
            let path = format!("/admin/products?i={i}");
            assert_eq!(h.get(&path).await.status, 200, "{flavor}");
        }
        for seen in h.fake.requests_to("/admin/products") {
            assert_eq!(header(&seen.headers, name), [value.as_str()], "{flavor}");
            let auth = header(&seen.headers, "authorization");
            assert!(
                auth.iter()
                    .all(|a| !a.to_ascii_lowercase().starts_with("bearer")),
                "{flavor}: a Bearer header reached Medusa: {auth:?}"
            );
            if mode == Mode::V1 {
                assert!(auth.is_empty(), "{flavor}: {auth:?}");
            } else {
                assert!(seen.headers.get("x-medusa-access-token").is_none());
            }
            let cookie = seen.headers.get("cookie").map(|c| c.to_str().unwrap());
            assert!(
                cookie.is_none_or(|c| !c.contains("client")),
                "{flavor}: {cookie:?}"
            );
        }
        assert_eq!(
            h.fake.key_requests(),
            12,
            "{flavor}: key check + 11 requests"
        );
        assert_eq!(h.fake.login_attempts(), 0, "{flavor}: no password login");
        assert_eq!(h.fake.refresh_attempts(), 0, "{flavor}");
        if mode == Mode::V1 {
            assert_eq!(
                h.fake.sessions_created(),
                1,
                "{flavor}: the v1 session is reused with a key too"
            );
        }
    }
}

#[tokio::test]
async fn static_key_rejected_upstream_is_not_ready_without_a_storm() {
    for (mode, flavor, key, _, _) in static_flavors() {
        let fake = FakeMedusa::start_mode(mode).await;
        fake.set_api_key(Some(key));
        let h = Arc::new(harness(fake, flavor, Some(key), "").await);
        assert_eq!(h.get("/admin/products").await.status, 200, "{flavor}");
        assert_eq!(h.wait_readyz(200).await.status, 200);
        assert_eq!(h.key_checks(), 1);

        // The key is revoked (or rotated) in Medusa.
        h.fake.set_api_key(Some("some-other-key"));
        for r in h.burst(50, "/admin/products").await {
            assert_eq!(r.status, 503, "{flavor}: {:?}", r.body);
            assert_eq!(r.json()["error"], "no_token", "{flavor}");
        }
        let ready = h.ops("/readyz").await;
        assert_eq!(ready.status, 503, "{flavor}");
        let reason = ready.json()["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains("invalid credentials"), "{flavor}: {reason}");
        assert_eq!(
            h.key_checks(),
            3,
            "{flavor}: after the 401s, one check confirming the rejection and one key check by \
             the driver, not one per request"
        );

        // Not ready means nothing reaches Medusa, however much traffic arrives.
        let (checks, seen, rejected) = (
            h.key_checks(),
            h.fake.requests().len(),
            h.fake.rejected_requests(),
        );
        for r in h.burst(50, "/admin/products").await {
            assert_eq!(r.status, 503, "{flavor}");
            assert!(r.headers.contains_key("retry-after"));
        }
        assert_eq!(h.key_checks(), checks, "{flavor}");
        assert_eq!(h.fake.requests().len(), seen, "{flavor}");
        assert_eq!(h.fake.rejected_requests(), rejected, "{flavor}");
        assert_eq!(h.fake.login_attempts(), 0, "{flavor}");
    }
}

#[tokio::test]
async fn static_key_is_rechecked_on_its_interval() {
    for (mode, flavor, key, _, _) in static_flavors() {
        let fake = FakeMedusa::start_mode(mode).await;
        fake.set_api_key(Some(key));
        let h = harness(fake, flavor, Some(key), "key_check_interval = \"200ms\"").await;
        h.fake
            .wait_until(|f| f.requests_to(key_path(f.mode())).len() >= 3)
            .await;
        assert_eq!(h.ops("/readyz").await.status, 200, "{flavor}");
        // Revoked while idle: the next check takes the key out of use.
        h.fake.set_api_key(None);
        let ready = h.wait_readyz(503).await;
        let reason = ready.json()["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains("invalid credentials"), "{flavor}: {reason}");
        assert_eq!(h.get("/admin/products").await.status, 503, "{flavor}");
        assert!(h.fake.requests_to("/admin/products").is_empty());
    }
}

#[tokio::test]
async fn static_key_refused_at_start_is_not_ready() {
    for (mode, flavor, key, _, _) in static_flavors() {
        let fake = FakeMedusa::start_mode(mode).await;
        fake.set_api_key(Some("the-real-key"));
        let h = Arc::new(harness(fake, flavor, Some(key), "").await);
        let ready = h.wait_readyz(503).await;
        // Not ready while the check is in flight either; wait for the verdict.
        h.fake
            .wait_until(|f| f.requests_to(key_path(f.mode())).len() == 1)
            .await;
        for r in h.burst(20, "/admin/products").await {
            assert_eq!(r.status, 503, "{flavor}");
            let message = r.json()["message"].as_str().unwrap().to_owned();
            assert!(
                message.contains("invalid credentials"),
                "{flavor}: {message}"
            );
        }
        assert_eq!(ready.json()["status"], "not_ready");
        assert_eq!(h.key_checks(), 1, "{flavor}: no retry storm");
        assert!(h.fake.requests_to("/admin/products").is_empty());
    }
}

// ---- auto -------------------------------------------------------------------------------------

#[tokio::test]
async fn auto_detects_v1() {
    let h = harness(FakeMedusa::start().await, "auto", None, "").await;
    assert_eq!(h.get("/admin/products").await.status, 200);
    // The probe met v1's 404, then the v1 login ran.
    let probes = h.fake.requests_to("/auth/user/emailpass");
    assert_eq!(probes.len(), 1, "one probe");
    assert_eq!(probes[0].method, "POST");
    assert_eq!(probes[0].status, 404);
    assert_eq!(h.fake.login_attempts(), 1, "one v1 login after the probe");
    assert_eq!(h.fake.logins(), 1);
    let token = h.fake.last_token().unwrap();
    assert_eq!(claims(&token)["domain"], "admin", "a v1 token");
    let seen = &h.fake.requests_to("/admin/products")[0];
    assert_eq!(
        header(&seen.headers, "authorization"),
        [format!("Bearer {token}")]
    );
    assert_eq!(h.proxy.tokens.login().flavor(), Flavor::V1);
    assert_eq!(h.ops("/readyz").await.status, 200);
    // Once detected, the probe is not repeated.
    for i in 0..5 {
        assert_eq!(h.get(&format!("/admin/products?i={i}")).await.status, 200);
    }
    assert_eq!(h.fake.requests_to("/auth/user/emailpass").len(), 1);
}

#[tokio::test]
async fn auto_detects_v2_and_then_refreshes() {
    let fake = FakeMedusa::start_v2().await;
    fake.set_token_lifetime(Duration::from_secs(3));
    let h = harness(fake, "auto", None, "").await;
    assert_eq!(h.get("/admin/products").await.status, 200);
    // The probe was the v2 login itself: no second login, no v1 route tried.
    assert_eq!(h.fake.login_attempts(), 1);
    assert_eq!(h.fake.logins(), 1);
    assert!(h.fake.requests_to("/admin/auth/token").is_empty());
    let token = h.fake.last_token().unwrap();
    assert_eq!(claims(&token)["actor_type"], "user", "a v2 token");
    let seen = &h.fake.requests_to("/admin/products")[0];
    assert_eq!(
        header(&seen.headers, "authorization"),
        [format!("Bearer {token}")]
    );
    assert_eq!(h.proxy.tokens.login().flavor(), Flavor::V2);
    // And it behaves as v2 from then on: renewal by refresh.
    let deadline = Instant::now() + LONG;
    let mut n = 0;
    while h.fake.refreshes() == 0 {
        let r = h.get(&format!("/admin/products?n={n}")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        n += 1;
        assert!(Instant::now() < deadline, "no refresh under auto/v2");
    }
    assert_eq!(h.fake.logins(), 1);
    assert_eq!(h.fake.rejected_requests(), 0);
}

#[tokio::test]
async fn auto_probe_waits_for_medusa_to_come_up() {
    let fake = FakeMedusa::start_v2().await;
    fake.stop().await;
    let h = harness(fake, "auto", None, "").await;
    // The probe cannot connect: not ready, flavor still undecided, nothing guessed.
    assert_eq!(h.ops("/readyz").await.status, 503);
    assert_eq!(h.proxy.tokens.login().flavor(), Flavor::Auto);
    h.fake.restart().await;
    // The driver retries on its own (transient backoff from 1 s).
    h.fake.wait_until(|f| f.logins() == 1).await;
    assert_eq!(h.get("/admin/products").await.status, 200);
    assert_eq!(h.proxy.tokens.login().flavor(), Flavor::V2);
    assert_eq!(h.fake.login_attempts(), 1);
    assert!(h.fake.requests_to("/admin/auth/token").is_empty());
}

// ---- the fake itself, so the tests above mean what they say ------------------------------------

#[tokio::test]
async fn fake_speaks_each_version() {
    let client = client();
    let call = |method: &str, url: String, auth: Option<(&str, String)>| {
        let mut b = Request::builder().method(method).uri(url);
        if let Some((k, v)) = auth {
            b = b.header(k, v);
        }
        let req = b.body(Full::default()).unwrap();
        let client = client.clone();
        async move {
            let r = harness::send(&client, req).await;
            (r.status.as_u16(), r.headers, r.body)
        }
    };

    let v2 = FakeMedusa::start_v2().await;
    v2.set_api_key(Some(V2_KEY));
    let store = format!("{}/admin/stores", v2.url());
    assert_eq!(call("GET", store.clone(), None).await.0, 401);
    let (status, headers, body) =
        call("GET", store.clone(), Some(("authorization", basic(V2_KEY)))).await;
    assert_eq!(status, 200);
    assert!(headers.get("set-cookie").is_none());
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["store"].is_object());
    let (status, _, body) = call(
        "GET",
        store.clone(),
        Some(("authorization", format!("Bearer {V2_KEY}"))),
    )
    .await;
    assert_eq!(status, 401, "Bearer sk_... is rejected");
    assert_eq!(body.as_ref(), br#"{"message":"Unauthorized"}"#);
    assert_eq!(
        call(
            "GET",
            store.clone(),
            Some(("authorization", basic("sk_wrong")))
        )
        .await
        .0,
        401
    );
    let (status, _, _) = call("POST", format!("{}/admin/auth/token", v2.url()), None).await;
    assert_eq!(status, 401, "v1's login route is just an admin route in v2");
    let (status, _, _) = call("POST", format!("{}/auth/token/refresh", v2.url()), None).await;
    assert_eq!(status, 401, "refresh without a token");
    assert_eq!(v2.refresh_attempts(), 1);
    assert_eq!(v2.refreshes(), 0);
    assert_eq!(v2.key_requests(), 1);

    let v1 = FakeMedusa::start().await;
    v1.set_api_key(Some(V1_KEY));
    let (status, _, _) = call("POST", format!("{}/auth/user/emailpass", v1.url()), None).await;
    assert_eq!(status, 404, "v1 has no /auth routes");
    assert_eq!(v1.login_attempts(), 0);
    let store = format!("{}/admin/store", v1.url());
    let (status, headers, _) = call(
        "GET",
        store.clone(),
        Some(("x-medusa-access-token", V1_KEY.to_owned())),
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers.get("set-cookie").is_some(), "v1 sets a session");
    assert_eq!(
        call(
            "GET",
            store.clone(),
            Some(("authorization", format!("Bearer {V1_KEY}")))
        )
        .await
        .0,
        401,
        "Bearer <api_token> is rejected by v1"
    );
}

// ---- check --login ----------------------------------------------------------------------------

/// `check --login` of the binary on `cfg`, with trace logging and `env`.
async fn run_check(cfg: &std::path::Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let mut all = vec![("RUST_LOG", "trace")];
    all.extend_from_slice(env);
    let cfg = cfg.to_str().unwrap();
    run_async(&["check", "--login", "--config", cfg], &all)
        .await
        .split()
}

/// `dir/proxy.toml` in front of `url` with the `[auth]` lines `auth`.
fn check_config(dir: &std::path::Path, url: &str, auth: &str) -> std::path::PathBuf {
    let p = dir.join("proxy.toml");
    let auth = format!("{auth}login_timeout = \"2s\"\n");
    std::fs::write(&p, proxy_config("", url, "", &auth, "")).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn check_login_for_static_flavors_never_prints_the_key() {
    for (mode, flavor, key, _, value) in static_flavors() {
        let fake = FakeMedusa::start_mode(mode).await;
        fake.set_api_key(Some(key));
        let dir = tempfile::tempdir().unwrap();
        let auth = format!("flavor = \"{flavor}\"\napi_key_env = \"MAP_TEST_API_KEY\"\n");
        let cfg = check_config(dir.path(), &fake.url(), &auth);
        let env = [("MAP_TEST_API_KEY", key)];
        let (ok, out, err) = run_check(&cfg, &env).await;
        assert!(ok, "{flavor}: {err}");
        assert!(
            out.contains("login ok") && out.contains(flavor),
            "{flavor}: {out}"
        );
        assert_eq!(
            fake.key_requests(),
            1,
            "{flavor}: the key was really checked"
        );
        let b64 = value.trim_start_matches("Basic ");
        for text in [&out, &err] {
            assert!(!text.contains(key), "{flavor}: the key was printed");
            assert!(!text.contains(b64), "{flavor}: the encoded key was printed");
        }

        // A key Medusa refuses: non-zero, says why, still never prints it.
        fake.set_api_key(Some("another-key"));
        let (ok, out, err) = run_check(&cfg, &env).await;
        assert!(!ok, "{flavor}: a refused key passed the check");
        assert!(err.contains("invalid credentials"), "{flavor}: {err}");
        for text in [&out, &err] {
            assert!(!text.contains(key) && !text.contains(b64), "{flavor}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_login_names_the_flavor_auto_detected() {
    for (mode, want) in [(Mode::V1, "v1"), (Mode::V2, "v2")] {
        let fake = FakeMedusa::start_mode(mode).await;
        let dir = tempfile::tempdir().unwrap();
        let auth = auth_section(dir.path(), "auto", None);
        let cfg = check_config(dir.path(), &fake.url(), &auth);
        let (ok, out, err) = run_check(&cfg, &[]).await;
        assert!(ok, "{want}: {err}");
        assert!(
            out.contains(&format!("login ok: flavor {want},")),
            "{want}: {out}"
        );
        assert!(
            out.contains(fake_medusa::USER_ID),
            "{want}: the user id is read from the {want} claims: {out}"
        );
        assert!(
            err.contains(&format!("Medusa {want} detected")),
            "{want}: the chosen flavor is logged: {err}"
        );
        let token = fake.last_token().unwrap();
        for text in [&out, &err] {
            assert!(!text.contains(&token) && !text.contains(fake_medusa::DEFAULT_PASSWORD));
        }
    }
}

#[tokio::test]
async fn static_keys_survive_a_route_that_answers_401() {
    for (mode, flavor, key, _, _) in static_flavors() {
        let fake = FakeMedusa::start_mode(mode).await;
        fake.set_api_key(Some(key));
        // `/store/` allowed, as the attack needs.
        let allow_store = "[policy]\nallow_paths = [\"/admin/\", \"/store/\"]\n";
        let h = Arc::new(harness_with_tail(fake, flavor, Some(key), "", allow_store).await);
        assert_eq!(h.wait_readyz(200).await.status, 200, "{flavor}");
        assert_eq!(h.key_checks(), 1, "{flavor}");
        for r in h.burst(20, fake_medusa::ALWAYS_401).await {
            assert_eq!(r.status, 401, "{flavor}: Medusa's own 401 is passed on");
        }
        assert_eq!(h.key_checks(), 2, "{flavor}: one check for 20 401s");
        assert_eq!(h.get("/admin/products").await.status, 200, "{flavor}");
        assert_eq!(h.ops("/readyz").await.status, 200, "{flavor}: still ready");
        assert_eq!(h.fake.login_attempts(), 0, "{flavor}");
    }
}

#[tokio::test]
async fn v1_api_token_learns_its_own_user_and_the_own_user_rule_protects_it() {
    let fake = FakeMedusa::start().await;
    fake.set_api_key(Some(V1_KEY));
    let h = harness(fake, "v1-api-token", Some(V1_KEY), "").await;
    assert_eq!(h.wait_readyz(200).await.status, 200);
    h.fake.set_record_requests(true);
    // Bodies no other rule refuses (no api_token): only the own-user rule can stop them.
    let call = async |method: &str, path: &str| {
        let body: &'static [u8] = if method == "POST" {
            br#"{"first_name":"x"}"#
        } else {
            b""
        };
        let req = Request::builder()
            .method(method)
            .uri(h.url(path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        h.send(req).await
    };
    let own = format!("/admin/users/{}", fake_medusa::USER_ID);
    for method in ["DELETE", "POST"] {
        let r = call(method, &own).await;
        assert_eq!(r.status, 403, "{method} {own}: {:?}", r.body);
        assert_eq!(r.json()["error"], "route_denied", "{method}");
        assert!(r.text().contains("own-user"), "{method}: {}", r.text());
    }
    assert!(
        h.fake.requests_to(&own).is_empty(),
        "nothing reached Medusa"
    );
    // Another user stays reachable, with the same requests.
    let other = format!("/admin/users/{}", fake_medusa::v1_user_id(1));
    for method in ["DELETE", "POST"] {
        let r = call(method, &other).await;
        assert_eq!(r.status, 200, "{method} {other}: {:?}", r.body);
    }
    assert_eq!(h.fake.requests_to(&other).len(), 2, "both reached Medusa");
    assert_eq!(h.get(&other).await.status, 200);
}
