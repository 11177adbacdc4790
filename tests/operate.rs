//! Issue "operable": metrics, logs (JSON, access log), live reload, the wait command. Run
//! against the binary where the behaviour is the process's (signals, log output).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fake_medusa::{self, FakeMedusa};
use common::harness::{client, config_text, get, login_auth, password_file, post, send};
use common::metrics;
use common::process::{Proc, run_async};
use common::wait::{self, LONG};
use http::Request;
use http_body_util::Full;

fn write_config(path: &Path, upstream: &str, pw_file: &Path, extra: &str) {
    let auth = format!("{}login_timeout = \"2s\"", login_auth("v1", pw_file));
    std::fs::write(path, config_text(upstream, "", &auth, extra)).unwrap();
}

struct Setup {
    fake: FakeMedusa,
    dir: tempfile::TempDir,
    cfg: PathBuf,
    pw: PathBuf,
}

async fn setup(extra: &str) -> Setup {
    let fake = FakeMedusa::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path());
    let cfg = dir.path().join("proxy.toml");
    write_config(&cfg, &fake.url(), &pw, extra);
    Setup { fake, dir, cfg, pw }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_logins_denials_and_replays() {
    let s = setup("").await;
    let p = Proc::start(&s.cfg, &[]);
    let (proxy, ops) = p.urls().await;
    let c = client();
    assert_eq!(
        get(&c, &format!("{proxy}/admin/products")).await.status,
        200
    );
    assert_eq!(
        post(&c, &format!("{proxy}/admin/auth/token"), b"{}")
            .await
            .status,
        403
    );
    s.fake.rotate_secret();
    assert_eq!(
        get(&c, &format!("{proxy}/admin/products")).await.status,
        200
    );
    // A request is counted as its response ends, which the client may see first: wait for
    // the exact counts.
    let text = metrics::wait_lines(
        &ops,
        &[
            "medusa_auth_proxy_requests_total{identity=\"default\",method=\"GET\",status_class=\"2xx\"} 2",
            "medusa_auth_proxy_requests_total{identity=\"default\",method=\"POST\",status_class=\"4xx\"} 1",
            "medusa_auth_proxy_request_duration_seconds_count{identity=\"default\"} 3",
            "medusa_auth_proxy_requests_in_flight 0",
            "medusa_auth_proxy_logins_total{kind=\"login\",result=\"success\"} 2",
            "medusa_auth_proxy_replays_total{identity=\"default\",result=\"success\"} 1",
            "medusa_auth_proxy_denied_requests_total{identity=\"default\",reason=\"route_denied\"} 1",
            "medusa_auth_proxy_upstream_errors_total{identity=\"default\",kind=\"unreachable\"} 0",
            "medusa_auth_proxy_build_info{version=",
            "# EOF",
        ],
    )
    .await;
    let expiry =
        metrics::value(&text, "medusa_auth_proxy_token_expiry_timestamp_seconds ").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now + 3600.0 && expiry < now + 86400.0,
        "expiry {expiry} vs now {now}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_and_access_log_without_secrets() {
    let s = setup("[log]\nformat = \"json\"\nlevel = \"debug\"").await;
    let p = Proc::start(&s.cfg, &[]);
    let (proxy, _) = p.urls().await;
    let c = client();
    let req = Request::get(format!(
        "{proxy}/admin/customers?q=alice@example.com&limit=5"
    ))
    .header("authorization", "Bearer client-secret-value")
    .body(Full::default())
    .unwrap();
    assert_eq!(send(&c, req).await.status, 200);
    let line = p.wait_line("\"target\":\"access\"").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/admin/customers?q=***&limit=***");
    assert_eq!(v["status"], 200);
    assert!(v["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(v["replayed"], false);
    assert!(v["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(v["duration_ms"].is_number());
    let log = p.log();
    for l in log.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }
    let token = s.fake.last_token().unwrap();
    for secret in [
        token.as_str(),
        fake_medusa::DEFAULT_PASSWORD,
        "client-secret-value",
        "alice@example.com",
    ] {
        assert!(!log.contains(secret), "{secret:.10}... in the log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_can_be_switched_off() {
    let s = setup("[log]\naccess = false").await;
    let p = Proc::start(&s.cfg, &[]);
    let (proxy, _) = p.urls().await;
    let c = client();
    assert_eq!(
        get(&c, &format!("{proxy}/admin/products")).await.status,
        200
    );
    p.wait_line("obtained a Medusa token").await;
    assert_eq!(p.count_lines("access"), 0, "{}", p.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_good_config_rejects_bad_and_reports_restarts() {
    let s = setup("").await;
    let p = Proc::start(&s.cfg, &[]);
    let (proxy, ops) = p.urls().await;
    let c = client();
    assert_eq!(
        post(&c, &format!("{proxy}/admin/products"), b"{}")
            .await
            .status,
        200
    );

    // A good change, by SIGHUP: read_only now applies, on the same process and listener.
    write_config(&s.cfg, &s.fake.url(), &s.pw, "[policy]\nread_only = true");
    p.signal("HUP");
    wait::until(LONG, "the reload applied", async || {
        match post(&c, &format!("{proxy}/admin/products"), b"{}")
            .await
            .status
        {
            s if s == 403 => Ok(()),
            s => Err(format!("POST still {s}; log:\n{}", p.log())),
        }
    })
    .await;
    assert_eq!(
        get(&c, &format!("{proxy}/admin/products")).await.status,
        200
    );

    // A bad change (noticed by the file watch, no signal): rejected, the old config serves.
    let before = p.count_lines("configuration reload rejected");
    std::fs::write(&s.cfg, "[proxy]\nlisten = 7\n").unwrap();
    p.wait_lines("configuration reload rejected", before + 1)
        .await;
    assert_eq!(
        post(&c, &format!("{proxy}/admin/products"), b"{}")
            .await
            .status,
        403,
        "old config still in force"
    );
    assert_eq!(
        get(&c, &format!("{proxy}/admin/products")).await.status,
        200
    );
    let metrics = metrics::scrape(&ops).await;
    assert!(
        metrics.contains("medusa_auth_proxy_config_reloads_total{result=\"failure\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("medusa_auth_proxy_config_reloads_total{result=\"success\"}"),
        "{metrics}"
    );

    // A change that cannot apply live is reported.
    write_config(&s.cfg, &s.fake.url(), &s.pw, "[policy]\nread_only = true");
    let text = std::fs::read_to_string(&s.cfg)
        .unwrap()
        .replace("connect_timeout = \"1s\"", "connect_timeout = \"2s\"");
    std::fs::write(&s.cfg, text).unwrap();
    p.signal("HUP");
    let line = p.wait_line("need a restart").await;
    assert!(line.contains("upstream"), "{line}");
    assert_eq!(s.fake.logins(), 1, "no credential change, no new login");
}

/// Issue 15: with the log written next to the config (`--config A/c.toml 2> A/proxy.log`), each
/// reload's own log line was a change in the watched folder: one edit gave 32 reloads in 5 s and
/// a broken edit ~6.6 rejections a second until fixed.
#[tokio::test(flavor = "multi_thread")]
async fn log_next_to_the_config_does_not_cause_a_reload_loop() {
    let s = setup("").await;
    let log = s.dir.path().join("proxy.log");
    let p = Proc::start_logging_to(&s.cfg, &[], &log);
    let (proxy, _) = p.urls().await;
    let c = client();
    assert_eq!(
        get(&c, &format!("{proxy}/admin/products")).await.status,
        200
    );

    // One edit, live and restart-only keys both (the restart warning kept the loop going).
    write_config(
        &s.cfg,
        &s.fake.url(),
        &s.pw,
        "[policy]\nread_only = true\n[log]\nlevel = \"info,hyper=warn\"",
    );
    p.wait_lines("configuration reloaded", 1).await;

    // One broken edit.
    std::fs::write(&s.cfg, "[proxy]\nlisten = 7\n").unwrap();
    p.wait_lines("configuration reload rejected", 1).await;

    // Other files in the folder: an editor's swap file, notes, the log itself.
    std::fs::write(s.dir.path().join(".proxy.toml.swp"), "x").unwrap();
    std::fs::write(s.dir.path().join("notes.txt"), "y").unwrap();

    // The fix: one more reload.
    write_config(
        &s.cfg,
        &s.fake.url(),
        &s.pw,
        "[policy]\nread_only = true\n[log]\nlevel = \"info,hyper=warn\"\naccess = false",
    );
    p.wait_lines("configuration reloaded", 2).await;
    // The same bytes again (an editor saving an unchanged buffer): nothing to do, nothing logged.
    std::fs::write(
        &s.cfg,
        std::fs::read(&s.cfg).unwrap(), // rewritten, byte for byte
    )
    .unwrap();

    // A loop shows only over time; at its measured ~6/s, two seconds without a new line show it
    // is gone. Every step above waited on a condition, not on this.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        p.count_lines("configuration reloaded"),
        2,
        "one reload per real change (the edit, then the fix); log:\n{text}"
    );
    assert_eq!(
        p.count_lines("configuration reload rejected"),
        1,
        "one rejection for one broken edit; log:\n{text}"
    );
    assert_eq!(
        post(&c, &format!("{proxy}/admin/products"), b"{}")
            .await
            .status,
        403,
        "the edit is in force"
    );
}

/// Issue 15: with `--config` and flags, a flag keeps replacing the file's value across reloads:
/// an edit of the file's `auth.email` under `--email` changes nothing about the account, while
/// the rest of the edit is applied; the next login (forced by the fake rotating its signing
/// secret) still uses the flag's email.
#[tokio::test(flavor = "multi_thread")]
async fn a_flag_keeps_overriding_the_file_across_reloads() {
    let s = setup("").await;
    let flag_email = "flag@example.com";
    s.fake
        .set_credentials(flag_email, fake_medusa::DEFAULT_PASSWORD);
    let args: Vec<String> = [
        "run",
        "--config",
        s.cfg.to_str().unwrap(),
        "--email",
        flag_email,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let p = Proc::start_args(&args, &[]);
    let (proxy, _) = p.urls().await;
    let c = client();
    assert_eq!(
        get(&c, &format!("{proxy}/admin/products")).await.status,
        200
    );
    assert_eq!(s.fake.logins(), 1);

    // The file's email changes, and a live key with it.
    let text = std::fs::read_to_string(&s.cfg)
        .unwrap()
        .replace(fake_medusa::DEFAULT_EMAIL, "file-edit@example.com");
    std::fs::write(&s.cfg, format!("{text}\n[policy]\nread_only = true\n")).unwrap();
    p.wait_lines("configuration reloaded", 1).await;
    assert_eq!(
        post(&c, &format!("{proxy}/admin/products"), b"{}")
            .await
            .status,
        403,
        "the edit is in force"
    );
    // A new login: with the flag's email, which the fake accepts (it refuses the file's).
    s.fake.rotate_secret();
    assert_eq!(
        get(&c, &format!("{proxy}/admin/products")).await.status,
        200
    );
    assert_eq!(s.fake.logins(), 2);
    assert_eq!(p.count_lines("login to Medusa failed"), 0, "{}", p.log());
    assert!(!p.log().contains("file-edit@example.com"), "{}", p.log());
}

/// Issue 15: an edit naming a secret file that does not exist yet is rejected once; creating
/// that file then brings the edit in (the watch covers the files the latest attempt named,
/// accepted or not), and re-saving the unchanged config in between does nothing.
#[tokio::test(flavor = "multi_thread")]
async fn creating_the_secret_file_a_rejected_edit_named_reloads_it() {
    // The reloader's debug line says when a file event found nothing new to try.
    let log = "[log]\nlevel = \"info,medusa_auth_proxy::reload=debug\"";
    let s = setup(log).await;
    let p = Proc::start(&s.cfg, &[]);
    let (proxy, _) = p.urls().await;
    let c = client();
    assert_eq!(
        get(&c, &format!("{proxy}/admin/products")).await.status,
        200
    );
    let new_pw = s.dir.path().join("new-password");
    write_config(&s.cfg, &s.fake.url(), &new_pw, log);
    let line = p.wait_line("configuration reload rejected").await;
    assert!(line.contains("new-password"), "{line}");
    // The same bytes again: still nothing new to try (waited for, so that this event is not
    // the one that notices the file created next).
    let unchanged = "files unchanged since the last reload attempt";
    let seen = p.count_lines(unchanged);
    std::fs::write(&s.cfg, std::fs::read(&s.cfg).unwrap()).unwrap();
    p.wait_lines(unchanged, seen + 1).await;

    s.fake
        .set_credentials(fake_medusa::DEFAULT_EMAIL, "new-password-789");
    std::fs::write(&new_pw, "new-password-789\n").unwrap();
    p.wait_lines("configuration reloaded", 1).await;
    s.fake.wait_until(|f| f.logins() == 2).await;
    assert_eq!(
        get(&c, &format!("{proxy}/admin/products")).await.status,
        200
    );
    assert_eq!(
        p.count_lines("configuration reload rejected"),
        1,
        "{}",
        p.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_with_new_password_logs_in_again() {
    let s = setup("").await;
    let p = Proc::start(&s.cfg, &[]);
    let (proxy, _) = p.urls().await;
    let c = client();
    assert_eq!(
        get(&c, &format!("{proxy}/admin/products")).await.status,
        200
    );
    s.fake
        .set_credentials(fake_medusa::DEFAULT_EMAIL, "new-password-789");
    std::fs::write(&s.pw, "new-password-789\n").unwrap();
    s.fake.wait_until(|f| f.logins() == 2).await;
    assert_eq!(
        get(&c, &format!("{proxy}/admin/products")).await.status,
        200
    );
    let _ = &s.dir;
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_command_waits_for_readiness() {
    let s = setup("").await;
    s.fake.set_login_delay(Duration::from_millis(700));
    let p = Proc::start(&s.cfg, &[]);
    let (_, ops) = p.urls().await;
    let out = run_async(&["wait", "--ops", &ops, "--timeout", "30s"], &[]).await;
    assert!(out.ok(), "{}", out.err);
    assert_eq!(s.fake.logins(), 1, "wait returned only after the login");

    // Never ready: wrong password.
    let bad = setup("").await;
    bad.fake
        .set_credentials(fake_medusa::DEFAULT_EMAIL, "other");
    let p2 = Proc::start(&bad.cfg, &[]);
    let (_, ops) = p2.urls().await;
    let out = run_async(&["wait", "--ops", &ops, "--timeout", "1s"], &[]).await;
    assert!(!out.ok());
    assert!(out.err.contains("invalid credentials"), "{}", out.err);
    drop(p);
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_names_the_caller_by_key_fingerprint_never_the_key() {
    const KEY: &str = "etl-job-key-0123456789abcdef";
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("keys");
    std::fs::write(&keys, format!("{KEY}\n")).unwrap();
    let s = setup(&format!(
        "[access]\nclient_keys_file = \"{}\"\n[log]\nformat = \"json\"",
        keys.display()
    ))
    .await;
    let p = Proc::start(&s.cfg, &[("RUST_LOG", "debug")]);
    let (proxy, _) = p.urls().await;
    let c = client();
    let req = Request::get(format!("{proxy}/admin/products"))
        .header("proxy-authorization", format!("Bearer {KEY}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&c, req).await.status, 200);
    let line = p.wait_line("\"target\":\"access\"").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    // The operator can compute it: printf %s "$KEY" | sha256sum | cut -c1-8
    use sha2::Digest;
    let digest = sha2::Sha256::digest(KEY.as_bytes());
    let expected: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    assert_eq!(v["client_key"], expected.as_str());
    assert!(!p.log().contains(KEY), "the client key reached the log");
}
