//! Tests of the binary: CLI, config errors, secrets at start-up, signals, logs, memory.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fake_medusa::{self, FakeMedusa};
use common::harness::{client, client_for, fetch, get, proxy_config};
use common::process::{Proc, Ran, run, run_async, run_in};
use common::wait::{self, LONG};
use http::Request;
use http_body_util::{BodyExt, Full};

const PW_VAR: &str = "MAP_TEST_ADMIN_PASSWORD";

/// `dir/proxy.toml` in front of `upstream`, the password from `PW_VAR`, a 10 s shutdown
/// grace, no `flavor` line; `extra_auth`: more `[auth]` lines.
fn config(dir: &Path, upstream: &str, extra_auth: &str) -> PathBuf {
    let p = dir.join("proxy.toml");
    let auth = format!(
        "email = \"{}\"\npassword_env = \"{PW_VAR}\"\nlogin_timeout = \"2s\"\n{extra_auth}",
        fake_medusa::DEFAULT_EMAIL
    );
    let text = proxy_config("shutdown_grace = \"10s\"", upstream, "", &auth, "");
    std::fs::write(&p, text).unwrap();
    p
}

/// The proxy binary with the fake's password in `PW_VAR`, then `env`.
fn spawn(cfg: &Path, env: &[(&str, &str)]) -> Proc {
    let mut all = vec![(PW_VAR, fake_medusa::DEFAULT_PASSWORD)];
    all.extend_from_slice(env);
    Proc::start(cfg, &all)
}

#[test]
fn help_and_version() {
    let (ok, out, _) = run(&["--help"], &[]).split();
    assert!(
        ok && out.contains("check")
            && out.contains("--config")
            && out.contains("MEDUSA_AUTH_PROXY_CONFIG")
    );
    let (ok, out, _) = run(&["--version"], &[]).split();
    assert!(ok && out.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9", "");
    let cfg_s = cfg.to_str().unwrap();
    let (ok, out, err) = run(&["check", "--config", cfg_s], &[(PW_VAR, "x")]).split();
    assert!(ok, "{err}");
    assert!(out.contains("config ok"));
    // --config from the environment.
    let (ok, _, err) = run(
        &["check"],
        &[(PW_VAR, "x"), ("MEDUSA_AUTH_PROXY_CONFIG", cfg_s)],
    )
    .split();
    assert!(ok, "{err}");

    let cases = [
        (
            "refresh_before_expiry = \"soon\"",
            "auth.refresh_before_expiry",
        ),
        ("flavour = \"v1\"", "flavour"),
    ];
    for (line, key) in cases {
        let cfg = config(dir.path(), "http://127.0.0.1:9", line);
        let (ok, _, err) = run(
            &["check", "--config", cfg.to_str().unwrap()],
            &[(PW_VAR, "x")],
        )
        .split();
        assert!(!ok, "{line} accepted");
        assert!(err.contains(key), "{key} not named in {err:?}");
    }
    let cfg = config(dir.path(), "ftp://127.0.0.1:9", "");
    let (ok, _, err) = run(
        &["check", "--config", cfg.to_str().unwrap()],
        &[(PW_VAR, "x")],
    )
    .split();
    assert!(!ok && err.contains("upstream.url"), "{err}");
    // A missing secret is named by `check` too.
    let cfg = config(dir.path(), "http://127.0.0.1:9", "");
    let (ok, _, err) = run(&["check", "--config", cfg.to_str().unwrap()], &[]).split();
    assert!(!ok && err.contains(PW_VAR), "{err}");
    let (ok, _, err) = run(&["check", "--config", "/nonexistent/proxy.toml"], &[]).split();
    assert!(!ok && err.contains("/nonexistent/proxy.toml"), "{err}");
}

#[test]
fn missing_secret_fails_fast_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9", "");
    let started = Instant::now();
    let (ok, _, err) = run(&["run", "--config", cfg.to_str().unwrap()], &[]).split();
    assert!(!ok);
    assert!(err.contains(PW_VAR), "{err}");
    // Failing fast is the behaviour (no login attempts, no retry loop, before the listeners
    // serve): the bound is generous against the milliseconds it takes, far below a retry's.
    assert!(started.elapsed() < Duration::from_secs(10));
    let cfg = config(dir.path(), "http://127.0.0.1:9", "")
        .to_str()
        .unwrap()
        .to_owned();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("password_env = \"{PW_VAR}\""),
        "password_file = \"/nonexistent/secret/pw\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let (ok, _, err) = run(&["--config", &cfg], &[]).split();
    assert!(!ok && err.contains("/nonexistent/secret/pw"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_login_prints_lifetime_never_the_token() {
    let fake = FakeMedusa::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "");
    let cfg = cfg.to_str().unwrap().to_owned();
    let (ok, out, err) = run_async(
        &["check", "--login", "--config", &cfg],
        &[(PW_VAR, fake_medusa::DEFAULT_PASSWORD)],
    )
    .await
    .split();
    assert!(ok, "{err}");
    assert!(out.contains("login ok") && out.contains("23h 59m"), "{out}");
    let token = fake.last_token().unwrap();
    assert!(!out.contains(&token) && !err.contains(&token));
    assert!(
        !out.contains(fake_medusa::DEFAULT_PASSWORD)
            && !err.contains(fake_medusa::DEFAULT_PASSWORD)
    );

    fake.set_credentials(fake_medusa::DEFAULT_EMAIL, "other");
    let cfg = dir.path().join("proxy.toml").to_str().unwrap().to_owned();
    let (ok, _, err) = run_async(
        &["check", "--login", "--config", &cfg],
        &[(PW_VAR, fake_medusa::DEFAULT_PASSWORD)],
    )
    .await
    .split();
    assert!(!ok && err.contains("invalid credentials"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish() {
    let fake = FakeMedusa::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(&config(dir.path(), &fake.url(), ""), &[]);
    let addr = p.addr().await;
    let client = client();
    // Medusa holds the request 3 s: the window in which shutdown must refuse new connections
    // and still finish this one.
    let req = Request::get(format!("http://{addr}/admin/products"))
        .header(fake_medusa::DELAY_HEADER, "3000")
        .body(Full::default())
        .unwrap();
    let in_flight = tokio::spawn(client.request(req));
    fake.wait_until(|f| !f.requests_to("/admin/products").is_empty())
        .await;
    p.signal("TERM");
    p.wait_line("shutting down").await;
    // New connections are refused once shutdown began (the log line comes just before the
    // accept loop sees the signal, so allow it a moment) while the request is in flight:
    // polled for as long as the request lasts. In flight after a refusal was seen means in
    // flight when it was refused.
    wait::until(LONG, "a refused connection after SIGTERM", async || {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            assert!(
                !in_flight.is_finished(),
                "still accepting when the in-flight request had ended"
            );
            return Err("still accepting".to_owned());
        }
        assert!(
            !in_flight.is_finished(),
            "the in-flight request ended before new connections were refused"
        );
        Ok(())
    })
    .await;
    let resp = in_flight
        .await
        .unwrap()
        .expect("in-flight request completed, not cut short");
    assert_eq!(resp.status(), 200);
    let status = p.wait_exit(LONG).await;
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_logs_never_contain_secrets() {
    let fake = FakeMedusa::start().await;
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(
        &config(dir.path(), &fake.url(), ""),
        &[("RUST_LOG", "trace")],
    );
    let addr = p.addr().await;
    let client = client();
    let get = |path: &str| {
        Request::get(format!("http://{addr}{path}"))
            .header("authorization", "Bearer client-secret-credential")
            .header("cookie", "connect.sid=client-cookie-secret")
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(
        client
            .request(get("/admin/products"))
            .await
            .unwrap()
            .status(),
        200
    );
    let first = fake.last_token().unwrap();
    fake.rotate_secret(); // a 401, a re-login and a replay, all logged
    let resp = client.request(get("/admin/products")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    let second = fake.last_token().unwrap();
    assert_ne!(first, second);
    p.wait_line("obtained a Medusa token").await;
    let log = p.log();
    assert!(
        log.contains("DEBUG") || log.contains("TRACE"),
        "debug logging is not on"
    );
    for secret in [
        first.as_str(),
        second.as_str(),
        fake_medusa::DEFAULT_PASSWORD,
        "client-secret-credential",
        "client-cookie-secret",
    ] {
        assert!(
            !log.contains(secret),
            "secret {secret:.12}... found in the log"
        );
    }
    // The JWT's signature part is the most secret bit; check it alone too.
    let sig = second.rsplit('.').next().unwrap();
    assert!(!log.contains(sig));
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_flat_for_huge_bodies() {
    const SIZE: u64 = 512 * 1024 * 1024;
    let fake = FakeMedusa::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}\n[policy]\nmax_body = \"2GiB\"\n")).unwrap();
    let p = spawn(&cfg, &[]);
    let addr = p.addr().await;
    let chunk = Bytes::from(vec![1u8; 1024 * 1024]);
    let frames = futures_util::stream::iter(
        (0..SIZE / chunk.len() as u64)
            .map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
    );
    let uploader = client_for();
    let resp = uploader
        .request(
            Request::post(format!("http://{addr}/admin/upload"))
                .body(http_body_util::StreamBody::new(frames))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["bytes"], SIZE);

    let client = client();
    let resp = client
        .request(
            Request::get(format!("http://{addr}/admin/download?bytes={SIZE}"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            total += d.len() as u64;
        }
    }
    assert_eq!(total, SIZE);
    let peak = p.peak_rss_kib();
    // 1 GiB moved through the proxy; its peak RSS must be a small constant, not the body size.
    assert!(
        peak < 64 * 1024,
        "peak RSS {peak} KiB for 2 x 512 MiB bodies"
    );
}

#[test]
fn every_example_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            medusa_auth_proxy::config::Settings::load(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(
        n >= 2,
        "expected the documented and the local example, found {n}"
    );
}

/// Issue 15: the README promises exit status 2 for a configuration the proxy refuses; `run`
/// used to exit 1 for some and print each fatal error twice (a log line and an `error:` line).
#[test]
fn every_configuration_refusal_exits_2_and_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::cell::Cell::new(0);
    // Each case its own folder: config() always writes proxy.toml.
    let fresh = || {
        n.set(n.get() + 1);
        let d = dir.path().join(n.get().to_string());
        std::fs::create_dir(&d).unwrap();
        d
    };
    let edit = |from: &str, to: &str, upstream: &str| {
        let cfg = config(&fresh(), upstream, "");
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.contains(from), "{from} not in the test config");
        std::fs::write(&cfg, text.replacen(from, to, 1)).unwrap();
        cfg
    };
    let pw = [(PW_VAR, "x")];
    // (what is refused, config, environment, words the one message must hold)
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: Vec<(&str, PathBuf, Env, &str)> = vec![
        (
            "a remote listener without keys",
            edit(
                "listen = \"127.0.0.1:0\"",
                "listen = \"0.0.0.0:0\"",
                "http://127.0.0.1:9",
            ),
            &pw,
            "is not a loopback address",
        ),
        (
            "a missing secret",
            config(&fresh(), "http://127.0.0.1:9", ""),
            &[],
            PW_VAR,
        ),
        (
            "more connections than file descriptors",
            edit(
                "shutdown_grace = \"10s\"",
                "shutdown_grace = \"10s\"\nmax_connections = 1000000000",
                "http://127.0.0.1:9",
            ),
            &pw,
            "proxy.max_connections",
        ),
        (
            "an unreadable CA file",
            edit(
                "connect_timeout = \"1s\"",
                "connect_timeout = \"1s\"\nca_file = \"/nonexistent/ca.pem\"",
                "https://127.0.0.1:9",
            ),
            &pw,
            "/nonexistent/ca.pem",
        ),
        (
            "an unknown key",
            edit("[ops]", "[ops]\nlisten_on = 1", "http://127.0.0.1:9"),
            &pw,
            "unknown field `listen_on`",
        ),
    ];
    let mut refused = 0;
    for (what, cfg, env, words) in &cases {
        let cfg = cfg.to_str().unwrap();
        for sub in ["run", "check"] {
            let Ran { code, out, err } = run(&[sub, "--config", cfg], env);
            assert_eq!(code, Some(2), "{sub}: {what}: exit {code:?}\n{out}{err}");
            assert_eq!(
                err.lines().filter(|l| l.contains(words)).count(),
                1,
                "{sub}: {what}: said once, naming {words:?}:\n{err}"
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 2 * cases.len());
}

/// `check --login` against `upstream` with `[auth]` extra lines (a fresh folder each time).
async fn check_login(upstream: &str, auth_extra: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), upstream, auth_extra);
    let text = std::fs::read_to_string(&cfg).unwrap();
    // A `flavor` line replaces nothing (the test config has none); a password_file replaces
    // the env var.
    let text = if auth_extra.contains("password_file") {
        text.replace(&format!("password_env = \"{PW_VAR}\""), "")
    } else {
        text
    };
    std::fs::write(&cfg, text).unwrap();
    let cfg = cfg.to_str().unwrap();
    let Ran { code, out, err } = run_async(&["check", "--login", "--config", cfg], env).await;
    drop(dir);
    (code.unwrap_or(-1), format!("{out}{err}"))
}

/// Issue 15: each refusal names what to change (URL, account, where the secret came from,
/// flavor, prefix, TLS), and never a secret's value.
#[tokio::test(flavor = "multi_thread")]
async fn login_refusals_say_what_to_change_and_never_the_secret() {
    let v1 = FakeMedusa::start().await;
    let v2 = FakeMedusa::start_v2().await;
    let wrong = "wrong-password-for-this-test";
    let mut checked = 0;

    // Wrong password from an environment variable: URL, email, variable named.
    let (code, text) = check_login(&v1.url(), "", &[(PW_VAR, wrong)]).await;
    let url = format!("{}/admin/auth/token", v1.url());
    for words in [
        url.as_str(),
        fake_medusa::DEFAULT_EMAIL,
        &format!("environment variable {PW_VAR}"),
        "auth.email",
    ] {
        assert!(text.contains(words), "{words:?} not in:\n{text}");
        checked += 1;
    }
    assert_eq!(code, 1, "{text}");
    assert!(!text.contains(wrong), "the password was printed:\n{text}");

    // The same from a file: the path named, not the content.
    let pw_dir = tempfile::tempdir().unwrap();
    let pw_file = pw_dir.path().join("medusa-password");
    std::fs::write(&pw_file, wrong).unwrap();
    let (_, text) = check_login(
        &v1.url(),
        &format!("password_file = \"{}\"", pw_file.display()),
        &[],
    )
    .await;
    assert!(
        text.contains(&format!("file {}", pw_file.display())),
        "{text}"
    );
    assert!(!text.contains(wrong), "the password was printed:\n{text}");
    checked += 1;

    // flavor v1 against Medusa v2: v2 answers v1's login route 401, so the refusal says
    // the version may be wrong.
    let pw = [(PW_VAR, fake_medusa::DEFAULT_PASSWORD)];
    let (_, text) = check_login(&v2.url(), "flavor = \"v1\"", &pw).await;
    assert!(
        text.contains("invalid credentials") && text.contains("flavor = \"auto\""),
        "{text}"
    );
    checked += 1;

    // flavor v2 against Medusa v1: 404 on the login route, naming the flavor and the fixes.
    let (_, text) = check_login(&v1.url(), "flavor = \"v2\"", &pw).await;
    for words in [
        "/auth/user/emailpass answered 404",
        "auth.flavor \"v2\"",
        "\"auto\"",
        "path prefix",
    ] {
        assert!(text.contains(words), "{words:?} not in:\n{text}");
        checked += 1;
    }

    // auto, against a server where neither version's login route exists (Medusa under a path
    // prefix, or not Medusa at all): both routes named, the prefix suggested.
    let nothing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nothing_url = format!("http://{}", nothing.local_addr().unwrap());
    let answered = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut n = 0;
        while let Ok((mut s, _)) = nothing.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            n += 1;
            if n == 2 {
                return n;
            }
        }
        n
    });
    let (_, text) = check_login(&nothing_url, "flavor = \"auto\"", &pw).await;
    for words in [
        "/admin/auth/token answered 404",
        "POST /auth/user/emailpass",
        "path prefix",
    ] {
        assert!(text.contains(words), "{words:?} not in:\n{text}");
        checked += 1;
    }
    assert_eq!(
        answered.await.unwrap(),
        2,
        "the v2 probe, then the v1 login"
    );

    // https:// to a plain-HTTP port: one plain sentence, no rustls internals.
    let (_, text) = check_login(&v1.url().replace("http://", "https://"), "", &pw).await;
    assert!(text.contains("does not speak TLS"), "{text}");
    assert!(!text.contains("InvalidContentType"), "{text}");
    checked += 1;

    assert_eq!(checked, 14);
}

/// Issue 15: the start-up line names the version and the account, one `ready` line follows
/// the first credential, and a 403 for a Host names that Host.
#[tokio::test(flavor = "multi_thread")]
async fn startup_ready_and_refused_host_are_named() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = FakeMedusa::start().await;
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(&config(dir.path(), &fake.url(), ""), &[]);
    let line = p.wait_line("medusa-auth-proxy started").await;
    assert!(
        line.contains(&format!("version={}", env!("CARGO_PKG_VERSION")))
            && line.contains(&format!("account={}", fake_medusa::DEFAULT_EMAIL)),
        "{line}"
    );
    let addr = p.addr().await;
    p.wait_line("ready").await;
    // `ready` follows `started`, as the README says: the start-up line is logged before any
    // login starts.
    let log = p.log();
    let started = log.find("medusa-auth-proxy started").unwrap();
    let ready = log.find("ready: holding a Medusa credential").unwrap();
    assert!(started < ready, "{log}");
    // The same for the quickest line a login can log: a refused connection (a port nothing
    // listens on). Before the start-up line came first by construction, it won this race in
    // most starts; three starts make a regression all but certain to show.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    for n in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let q = spawn(&config(dir.path(), &closed_url, ""), &[]);
        q.wait_line("login to Medusa failed").await;
        let log = q.log();
        let started = log.find("medusa-auth-proxy started").unwrap();
        let failed = log.find("login to Medusa failed").unwrap();
        assert!(started < failed, "start {n}: {log}");
    }
    // Two requests, and a token refresh would not log `ready` again.
    let client = client();
    for _ in 0..2 {
        let (status, _) = fetch(&client, &format!("http://{addr}/admin/products")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(p.count_lines("ready: holding a Medusa credential"), 1);

    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /admin/products HTTP/1.1\r\nHost: tools.internal.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("tools.internal.example") && answer.contains("allow_hosts"),
        "{answer}"
    );
    // Junk in Host is never echoed.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /admin/products HTTP/1.1\r\nHost: <script>x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(!answer.contains("<script>"), "{answer}");
    let line = p.wait_line("host=\"tools.internal.example\"").await;
    assert!(line.contains("request denied"), "{line}");
}

/// Issue 15: a peer outside `allow_cidrs`, closed at accept before a byte is read, is named in
/// the log line: the address the operator would add.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_refused_at_accept_is_named_in_the_log() {
    use tokio::io::AsyncReadExt;
    let fake = FakeMedusa::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &fake.url(),
        "[access]\nallow_cidrs = [\"10.0.0.0/8\"]",
    );
    let p = spawn(&cfg, &[]);
    let addr = p.addr().await;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Closed without an answer.
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let line = p
        .wait_line("connection refused: peer not in access.allow_cidrs")
        .await;
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
}

/// Issue 15: `check` and start-up warn about each listener other machines can reach that
/// refuses them all (`proxy.listen` and every `[[listeners]]` entry, named by its key).
#[tokio::test(flavor = "multi_thread")]
async fn check_warns_about_a_remote_listener_no_remote_peer_may_use() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "a-client-key-of-32-characters-xx\n").unwrap();
    let listeners = |second: &str| {
        format!(
            "[access]\nclient_keys_file = \"{}\"\n\
             [[listeners]]\nlisten = \"127.0.0.1:0\"\nidentity = \"default\"\n\
             [[listeners]]\nlisten = \"{second}\"\nidentity = \"default\"",
            keys.display()
        )
    };
    let cfg = config(dir.path(), "http://127.0.0.1:9", &listeners("0.0.0.0:0"));
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "listen = \"127.0.0.1:0\"",
        "listen = \"0.0.0.0:0\"",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let Ran { code, out, err } = run(
        &["check", "--config", cfg.to_str().unwrap()],
        &[(PW_VAR, "x")],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let warnings: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("WARNING") && l.contains("allow_cidrs"))
        .collect();
    assert_eq!(warnings.len(), 2, "{out}");
    assert!(
        warnings[0].contains("proxy.listen = \"0.0.0.0:0\""),
        "{out}"
    );
    assert!(
        warnings[1].contains("listeners[1].listen = \"0.0.0.0:0\""),
        "{out}"
    );

    // At start-up too (logged before anything listens: the remote address here is of no
    // local interface, so nothing is exposed and the bind then fails).
    let cfg = config(dir.path(), "http://127.0.0.1:9", &listeners("192.0.2.1:0"));
    let p = spawn(&cfg, &[]);
    let line = p
        .wait_line(
            "listeners[1].listen = \"192.0.2.1:0\" accepts connections from other machines, but",
        )
        .await;
    assert!(
        line.contains("WARN") && line.contains("allow_cidrs"),
        "{line}"
    );
    assert_eq!(p.count_lines("proxy.listen = "), 0, "{}", p.log());
}

/// Issue 15: every subcommand's `--help` ends with an example.
#[test]
fn every_subcommand_help_has_an_example() {
    let mut n = 0;
    for sub in ["run", "check", "init", "wait"] {
        let Ran { code, out, err } = run(&[sub, "--help"], &[]);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.contains("Example") && out.contains(&format!("medusa-auth-proxy {sub}")),
            "{sub}: {out}"
        );
        n += 1;
    }
    assert_eq!(n, 4);
}

/// Issue 15: `init` writes a config that `check` passes, for a login flavor of each version and
/// for a static key; it never overwrites a file.
#[test]
fn init_writes_configs_that_pass_check_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, "sk_test_0123456789abcdef\n").unwrap();
    let key_file = key_file.to_str().unwrap().to_owned();
    let login = [
        "--email",
        "proxy@example.com",
        "--password-env",
        "MAP_INIT_PASSWORD",
    ];
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("v1", [&["--flavor", "v1"][..], &login].concat()),
        ("v2", [&["--flavor", "v2"][..], &login].concat()),
        ("auto", login.to_vec()),
        (
            "v2-secret-key",
            vec!["--flavor", "v2-secret-key", "--api-key-file", &key_file],
        ),
    ];
    let mut passed = 0;
    for (flavor, flags) in &cases {
        let out = dir.path().join(format!("{flavor}.toml"));
        let out_s = out.to_str().unwrap();
        let mut args = vec![
            "init",
            "--upstream",
            "http://127.0.0.1:9000",
            "--output",
            out_s,
        ];
        args.extend(flags.iter().copied());
        let Ran { code, err, .. } = run(&args, &[]);
        assert_eq!(code, Some(0), "init {flavor}: {err}");
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains(&format!("flavor = \"{flavor}\"")), "{text}");
        assert!(
            text.lines().filter(|l| l.starts_with('#')).count() >= 5,
            "not commented"
        );
        let Ran {
            code,
            out: out_text,
            err,
        } = run(
            &["check", "--config", out_s],
            &[("MAP_INIT_PASSWORD", "not-the-real-one")],
        );
        assert_eq!(
            code,
            Some(0),
            "check of init {flavor}: {out_text}{err}\n{text}"
        );
        // A second init to the same file is refused, and the file is left as it was.
        let Ran { code, err, .. } = run(&args, &[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("exists"), "{err}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
        passed += 1;
    }
    assert_eq!(passed, cases.len());
    // Without --output: the config on stdout; a login flavor without a password source refused.
    let Ran { code, out, .. } = run(
        &[
            "init",
            "--upstream",
            "http://127.0.0.1:9000",
            "--email",
            "a@b.c",
            "--password-env",
            "P",
        ],
        &[],
    );
    assert!(code == Some(0) && out.contains("[auth]"), "{out}");
    let Ran { code, err, .. } = run(
        &[
            "init",
            "--upstream",
            "http://127.0.0.1:9000",
            "--email",
            "a@b.c",
        ],
        &[],
    );
    assert!(code == Some(2) && err.contains("--password-env"), "{err}");
}

/// Issue 15: `init` names the command from a source checkout too (the binary is not on `PATH`
/// after `cargo run`), and writes a relative `--password-file` as the absolute path it meant
/// (secret paths are taken in the proxy's working directory, not the config's folder), so the
/// config checks from another folder.
#[test]
fn init_hints_cargo_run_and_writes_secret_paths_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("pw"), "not-the-real-one\n").unwrap();
    let Ran { code, err, .. } = run_in(
        Some(dir),
        &[
            "init",
            "--upstream",
            "http://127.0.0.1:9000",
            "--email",
            "a@b.c",
            "--password-file",
            "pw",
            "--output",
            "sub/r.toml",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("next: medusa-auth-proxy check --config sub/r.toml --login")
            && err.contains("cargo run --release -- check --config sub/r.toml --login"),
        "{err}"
    );
    let text = std::fs::read_to_string(dir.join("sub/r.toml")).unwrap();
    assert!(text.contains("cargo run --release --"), "{text}");
    let absolute = std::fs::canonicalize(dir).unwrap().join("pw");
    let written = text
        .lines()
        .find_map(|l| l.strip_prefix("password_file = "))
        .unwrap();
    assert_eq!(
        std::fs::canonicalize(written.trim_matches('"')).unwrap(),
        absolute,
        "{text}"
    );
    let Ran { code, out, err } = run_in(
        Some(&dir.join("sub")),
        &["check", "--config", "r.toml"],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");
}

/// Issue 15: a refused value given as a `run` flag names the flag typed, and the key it stands for.
#[test]
fn a_refused_flag_value_names_the_flag() {
    let base = ["run", "--email", "a@b.c", "--password-env", PW_VAR];
    for (flag, value, key) in [
        ("--upstream", "ftp://127.0.0.1:9", "upstream.url"),
        ("--listen", "0.0.0.0:7000", "proxy.listen"),
    ] {
        let mut args = base.to_vec();
        if flag != "--upstream" {
            args.extend(["--upstream", "http://127.0.0.1:9"]);
        }
        args.extend([flag, value]);
        let Ran { code, err, .. } = run(&args, &[(PW_VAR, "x")]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(&format!("`{flag}` ({key}): ")), "{err}");
    }
    // The same value from a file is named by its key.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "ftp://127.0.0.1:9", "");
    let Ran { code, err, .. } = run(
        &["run", "--config", cfg.to_str().unwrap()],
        &[(PW_VAR, "x")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("config key `upstream.url`"), "{err}");
}

/// Issue 15: `check --no-secrets` passes every shipped config without their secrets (CI of
/// manifests), and still refuses a broken one.
#[test]
fn check_no_secrets_passes_every_shipped_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs = Vec::new();
    let mut dirs = vec![root.join("config"), root.join("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                configs.push(path);
            }
        }
    }
    for cfg in &configs {
        let Ran { code, out, err } = run(
            &["check", "--no-secrets", "--config", cfg.to_str().unwrap()],
            &[],
        );
        assert_eq!(code, Some(0), "{}: {out}{err}", cfg.display());
        assert!(out.contains("secrets not read"), "{out}");
    }
    assert!(configs.len() >= 5, "found only {configs:?}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "ftp://127.0.0.1:9", "");
    let Ran { code, err, .. } = run(
        &["check", "--no-secrets", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert!(code == Some(2) && err.contains("upstream.url"), "{err}");
}

/// Issue 15: `run` from flags alone serves a request; with `--config`, flags win.
#[tokio::test(flavor = "multi_thread")]
async fn run_from_flags_serves_and_flags_override_the_file() {
    let fake = FakeMedusa::start().await;
    let url = fake.url();
    let run_args = |extra: &[&str]| {
        let mut a = vec![
            "run",
            "--upstream",
            url.as_str(),
            "--email",
            fake_medusa::DEFAULT_EMAIL,
            "--password-env",
            PW_VAR,
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let client = client();
    let env = [(PW_VAR, fake_medusa::DEFAULT_PASSWORD)];

    // No file at all.
    let p = Proc::start_args(&run_args(&[]), &env);
    let line = p.wait_line("medusa-auth-proxy started").await;
    assert!(line.contains("flavor=\"auto\""), "{line}");
    let addr = p.addr().await;
    let (status, _) = fetch(&client, &format!("http://{addr}/admin/products")).await;
    assert_eq!(status, 200);
    drop(p);

    // A file pointing at a dead Medusa with a wrong account: the flags replace both.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(fake_medusa::DEFAULT_EMAIL, "someone-else@example.com")
        .replace(
            &format!("password_env = \"{PW_VAR}\""),
            "password_file = \"/nonexistent/pw\"",
        );
    std::fs::write(&cfg, text).unwrap();
    let p = Proc::start_args(&run_args(&["--config", cfg.to_str().unwrap()]), &env);
    let line = p.wait_line("medusa-auth-proxy started").await;
    assert!(
        line.contains(&format!("upstream={url}"))
            && line.contains(&format!("account={}", fake_medusa::DEFAULT_EMAIL))
            // The file's flavor (unset: v1) is kept: no --flavor flag.
            && line.contains("flavor=\"v1\""),
        "{line}"
    );
    let addr = p.addr().await;
    let (status, _) = fetch(&client, &format!("http://{addr}/admin/products")).await;
    assert_eq!(status, 200);
    assert_eq!(fake.logins(), 2, "one login per process");
}

/// Issue 15: the run log names the refused account, the URL and where the password came from;
/// `/readyz` and the 503 (which anyone reaching the ports may read) say only what failed.
#[tokio::test(flavor = "multi_thread")]
async fn refused_login_is_named_in_the_log_and_summarised_on_readyz() {
    let fake = FakeMedusa::start().await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = "wrong-password-for-this-test";
    let p = Proc::start(&config(dir.path(), &fake.url(), ""), &[(PW_VAR, wrong)]);
    let (proxy, ops) = p.urls().await;
    let line = p.wait_line("login to Medusa failed").await;
    for words in [
        fake_medusa::DEFAULT_EMAIL,
        PW_VAR,
        &format!("{}/admin/auth/token", fake.url()),
    ] {
        assert!(line.contains(words), "{words:?} not in {line}");
    }
    let client = client();
    for url in [format!("{ops}/readyz"), format!("{proxy}/admin/products")] {
        let r = get(&client, &url).await;
        assert_eq!(r.status, 503, "{url}");
        let body = r.text();
        assert!(body.contains("invalid credentials"), "{url}: {body}");
        assert!(
            !body.contains(fake_medusa::DEFAULT_EMAIL) && !body.contains(PW_VAR),
            "{url}: {body}"
        );
    }
    assert!(!p.log().contains(wrong), "the password was logged");
}
