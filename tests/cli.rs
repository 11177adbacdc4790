//! Tests of the binary: CLI, config errors, secrets at start-up, signals, logs, memory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fake_medusa::{self, FakeMedusa};
use common::process::{BIN, Proc};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const PW_VAR: &str = "MAP_TEST_ADMIN_PASSWORD";

fn config(dir: &Path, upstream: &str, extra_auth: &str) -> PathBuf {
    let p = dir.join("proxy.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[proxy]
listen = "127.0.0.1:0"
shutdown_grace = "10s"
[upstream]
url = "{upstream}"
connect_timeout = "1s"
[auth]
email = "{email}"
password_env = "{PW_VAR}"
login_timeout = "2s"
{extra_auth}
[ops]
listen = "127.0.0.1:0"
"#,
            email = fake_medusa::DEFAULT_EMAIL
        ),
    )
    .unwrap();
    p
}

/// The proxy binary with the fake's password in `PW_VAR`, then `env`.
fn spawn(cfg: &Path, env: &[(&str, &str)]) -> Proc {
    let mut all = vec![(PW_VAR, fake_medusa::DEFAULT_PASSWORD)];
    all.extend_from_slice(env);
    Proc::start(cfg, &all)
}

fn run_cmd(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("MEDUSA_AUTH_PROXY_CONFIG")
        .env_remove(PW_VAR);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version() {
    let (ok, out, _) = run_cmd(&["--help"], &[]);
    assert!(
        ok && out.contains("check")
            && out.contains("--config")
            && out.contains("MEDUSA_AUTH_PROXY_CONFIG")
    );
    let (ok, out, _) = run_cmd(&["--version"], &[]);
    assert!(ok && out.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9", "");
    let cfg_s = cfg.to_str().unwrap();
    let (ok, out, err) = run_cmd(&["check", "--config", cfg_s], &[(PW_VAR, "x")]);
    assert!(ok, "{err}");
    assert!(out.contains("config ok"));
    // --config from the environment.
    let (ok, _, err) = run_cmd(
        &["check"],
        &[(PW_VAR, "x"), ("MEDUSA_AUTH_PROXY_CONFIG", cfg_s)],
    );
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
        let (ok, _, err) = run_cmd(
            &["check", "--config", cfg.to_str().unwrap()],
            &[(PW_VAR, "x")],
        );
        assert!(!ok, "{line} accepted");
        assert!(err.contains(key), "{key} not named in {err:?}");
    }
    let cfg = config(dir.path(), "ftp://127.0.0.1:9", "");
    let (ok, _, err) = run_cmd(
        &["check", "--config", cfg.to_str().unwrap()],
        &[(PW_VAR, "x")],
    );
    assert!(!ok && err.contains("upstream.url"), "{err}");
    // A missing secret is named by `check` too.
    let cfg = config(dir.path(), "http://127.0.0.1:9", "");
    let (ok, _, err) = run_cmd(&["check", "--config", cfg.to_str().unwrap()], &[]);
    assert!(!ok && err.contains(PW_VAR), "{err}");
    let (ok, _, err) = run_cmd(&["check", "--config", "/nonexistent/proxy.toml"], &[]);
    assert!(!ok && err.contains("/nonexistent/proxy.toml"), "{err}");
}

#[test]
fn missing_secret_fails_fast_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9", "");
    let started = Instant::now();
    let (ok, _, err) = run_cmd(&["run", "--config", cfg.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains(PW_VAR), "{err}");
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
    let (ok, _, err) = run_cmd(&["--config", &cfg], &[]);
    assert!(!ok && err.contains("/nonexistent/secret/pw"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_login_prints_lifetime_never_the_token() {
    let fake = FakeMedusa::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "");
    let cfg = cfg.to_str().unwrap().to_owned();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        run_cmd(
            &["check", "--login", "--config", &cfg],
            &[(PW_VAR, fake_medusa::DEFAULT_PASSWORD)],
        )
    })
    .await
    .unwrap();
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
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        run_cmd(
            &["check", "--login", "--config", &cfg],
            &[(PW_VAR, fake_medusa::DEFAULT_PASSWORD)],
        )
    })
    .await
    .unwrap();
    assert!(!ok && err.contains("invalid credentials"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish() {
    let fake = FakeMedusa::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(&config(dir.path(), &fake.url(), ""), &[]);
    let addr = p.addr().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::get(format!("http://{addr}/admin/products"))
        .header(fake_medusa::DELAY_HEADER, "1500")
        .body(Full::default())
        .unwrap();
    let in_flight = tokio::spawn(client.request(req));
    fake.wait_until(|f| !f.requests_to("/admin/products").is_empty())
        .await;
    p.signal("TERM");
    p.wait_line("shutting down").await;
    // New connections are refused once shutdown began (the log line comes just before the
    // accept loop sees the signal, so allow it a moment) while the request is in flight.
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(&addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "still accepting 0.5 s after SIGTERM");
    assert!(
        !in_flight.is_finished(),
        "the in-flight request was cut short"
    );
    let resp = in_flight
        .await
        .unwrap()
        .expect("in-flight request completed");
    assert_eq!(resp.status(), 200);
    let status = p.wait_exit(Duration::from_secs(10)).await;
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
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
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
    let client = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
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

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
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

/// `(exit code, stdout, stderr)` of the binary.
fn run_code(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("MEDUSA_AUTH_PROXY_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove(PW_VAR);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
            let (code, out, err) = run_code(&[sub, "--config", cfg], env);
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
