//! Issue 14, identities: two fake Medusas and three identities in one process (the binary).
//! Each caller reaches only its identity's upstream, with its identity's credential and
//! policy; one identity's failure leaves the others serving; `check` refuses unknown names.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::fake_medusa::{self, FakeMedusa};
use common::process::{BIN, Proc};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

const REPORTING_KEY: &str = "reporting-key-0123456789abcdef";
const CATALOG_KEY: &str = "catalog-key-0123456789abcdef";
const CATALOG_API_TOKEN: &str = "catalog-api-token-0123456789";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Status and body of `method url` with an optional client key.
async fn send(c: &HttpClient, method: &str, url: &str, key: Option<&str>) -> (u16, String) {
    let mut req = Request::builder().method(method).uri(url);
    if let Some(k) = key {
        req = req.header("proxy-authorization", format!("Bearer {k}"));
    }
    let resp = c
        .request(req.body(Full::new(Bytes::from_static(b"{}"))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// prod (v1): `reporting` (login, read-only on /admin/products) and `catalog` (an API
/// token); staging (v2): `staging-admin` (login), on a listener of its own.
fn config(dir: &Path, prod: &str, staging: &str, staging_password: &str) -> std::path::PathBuf {
    let pw = dir.join("password");
    std::fs::write(&pw, fake_medusa::DEFAULT_PASSWORD).unwrap();
    let staging_pw = dir.join("staging-password");
    std::fs::write(&staging_pw, staging_password).unwrap();
    let catalog_token = dir.join("catalog-token");
    std::fs::write(&catalog_token, CATALOG_API_TOKEN).unwrap();
    let reporting_keys = dir.join("reporting-keys");
    std::fs::write(&reporting_keys, format!("{REPORTING_KEY}\n")).unwrap();
    let catalog_keys = dir.join("catalog-keys");
    std::fs::write(&catalog_keys, format!("{CATALOG_KEY}\n")).unwrap();
    let email = fake_medusa::DEFAULT_EMAIL;
    let text = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
shutdown_grace = "2s"
[ops]
listen = "127.0.0.1:0"

[upstreams.prod]
url = "{prod}"
connect_timeout = "1s"
[upstreams.staging]
url = "{staging}"
connect_timeout = "1s"

[identities.reporting]
upstream = "prod"
flavor = "v1"
email = "{email}"
password_file = "{pw}"
login_timeout = "2s"
[identities.reporting.policy]
read_only = true
allow_paths = ["/admin/products"]

[identities.catalog]
upstream = "prod"
flavor = "v1-api-token"
api_key_file = "{catalog_token}"

[identities.staging-admin]
upstream = "staging"
flavor = "v2"
email = "{email}"
password_file = "{staging_pw}"
login_timeout = "2s"

[[clients]]
keys_file = "{reporting_keys}"
identity = "reporting"
[[clients]]
keys_file = "{catalog_keys}"
identity = "catalog"

[[listeners]]
listen = "127.0.0.1:0"
identity = "staging-admin"
"#,
        pw = pw.display(),
        catalog_token = catalog_token.display(),
        staging_pw = staging_pw.display(),
        reporting_keys = reporting_keys.display(),
        catalog_keys = catalog_keys.display(),
    );
    let cfg = dir.join("proxy.toml");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// (main, ops, the staging listener) base URLs, from the start-up line.
async fn urls(p: &Proc) -> (String, String, String) {
    let (main, ops) = p.urls().await;
    let line = p.wait_line("medusa-auth-proxy started").await;
    let start = line.find("listeners=[").unwrap() + "listeners=[".len();
    let end = start + line[start..].find(']').unwrap();
    (main, ops, format!("http://{}", &line[start..end]))
}

async fn wait_ready(c: &HttpClient, ops: &str, query: &str, want: u16) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = send(c, "GET", &format!("{ops}/readyz{query}"), None).await;
        if status == want {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz{query} stays {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_caller_reaches_only_its_identitys_upstream_with_its_credential_and_policy() {
    let prod = FakeMedusa::start().await;
    prod.set_api_key(Some(CATALOG_API_TOKEN));
    let staging = FakeMedusa::start_v2().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &prod.url(),
        &staging.url(),
        fake_medusa::DEFAULT_PASSWORD,
    );
    let p = Proc::start(&cfg, &[]);
    let (main, ops, staging_listener) = urls(&p).await;
    let c = client();

    let body = wait_ready(&c, &ops, "", 200).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for name in ["reporting", "catalog", "staging-admin"] {
        assert_eq!(v["identities"][name]["state"], "ready", "{body}");
    }
    let (status, body) = send(&c, "GET", &format!("{ops}/readyz?identity=catalog"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("catalog") && !body.contains("reporting"),
        "{body}"
    );
    let (status, _) = send(&c, "GET", &format!("{ops}/readyz?identity=nobody"), None).await;
    assert_eq!(status, 404);

    // reporting: its login's JWT, on prod, read-only and only /admin/products.
    let (status, body) = send(
        &c,
        "GET",
        &format!("{main}/admin/products"),
        Some(REPORTING_KEY),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = prod.requests_to("/admin/products");
    let last = seen.last().unwrap();
    let auth = last.headers["authorization"].to_str().unwrap();
    assert!(auth.starts_with("Bearer "), "{auth}");
    assert!(!last.headers.contains_key("x-medusa-access-token"));
    for (method, path) in [("POST", "/admin/upload"), ("GET", "/admin/status/200")] {
        let (status, body) = send(&c, method, &format!("{main}{path}"), Some(REPORTING_KEY)).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(body.contains("route_denied"), "{body}");
    }

    // catalog: the API token, on prod, the global policy alone.
    let before = prod.requests_to("/admin/products").len();
    let (status, body) = send(
        &c,
        "GET",
        &format!("{main}/admin/products"),
        Some(CATALOG_KEY),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = prod.requests_to("/admin/products");
    assert_eq!(seen.len(), before + 1);
    let last = seen.last().unwrap();
    assert_eq!(last.headers["x-medusa-access-token"], CATALOG_API_TOKEN);
    assert!(!last.headers.contains_key("authorization"));
    let (status, body) = send(
        &c,
        "POST",
        &format!("{main}/admin/upload"),
        Some(CATALOG_KEY),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // staging-admin: its own listener, staging only.
    let prod_before = prod.requests_to("/admin/products").len();
    let (status, body) = send(
        &c,
        "GET",
        &format!("{staging_listener}/admin/products"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(staging.requests_to("/admin/products").len(), 1);
    assert_eq!(prod.requests_to("/admin/products").len(), prod_before);
    assert!(
        staging.requests_to("/admin/products")[0].headers["authorization"]
            .to_str()
            .unwrap()
            .starts_with("Bearer ")
    );

    // The main listener needs a key that maps to an identity.
    let (status, _) = send(&c, "GET", &format!("{main}/admin/products"), None).await;
    assert_eq!(status, 407);
    let (status, body) = send(
        &c,
        "GET",
        &format!("{main}/admin/products"),
        Some("not-a-configured-key-0123456789"),
    )
    .await;
    assert_eq!(status, 407);
    assert!(!body.contains("not-a-configured-key"), "{body}");
    assert_eq!(staging.requests_to("/admin/products").len(), 1);

    // Logins and token expiry per identity.
    let (_, metrics) = send(&c, "GET", &format!("{ops}/metrics"), None).await;
    for line in [
        "medusa_auth_proxy_identity_logins_total{identity=\"reporting\",kind=\"login\",result=\"success\"} 1",
        "medusa_auth_proxy_identity_logins_total{identity=\"staging-admin\",kind=\"login\",result=\"success\"} 1",
        "medusa_auth_proxy_identity_token_expiry_timestamp_seconds{identity=\"staging-admin\"}",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }

    // The access line names the identity.
    p.wait_line("identity=catalog").await;
    p.wait_line("identity=staging-admin").await;
    let log = p.log();
    for secret in [
        REPORTING_KEY,
        CATALOG_KEY,
        CATALOG_API_TOKEN,
        fake_medusa::DEFAULT_PASSWORD,
    ] {
        assert!(!log.contains(secret), "a secret in the log");
    }
}

#[tokio::test]
async fn one_identitys_failure_leaves_the_others_serving() {
    let prod = FakeMedusa::start().await;
    prod.set_api_key(Some(CATALOG_API_TOKEN));
    let staging = FakeMedusa::start_v2().await;
    let dir = tempfile::tempdir().unwrap();
    // staging-admin's password is wrong.
    let cfg = config(dir.path(), &prod.url(), &staging.url(), "wrong-password");
    let p = Proc::start(&cfg, &[]);
    let (main, ops, staging_listener) = urls(&p).await;
    let c = client();
    let body = wait_ready(&c, &ops, "?identity=reporting", 200).await;
    assert!(body.contains("ready"), "{body}");
    wait_ready(&c, &ops, "?identity=catalog", 200).await;
    let body = wait_ready(&c, &ops, "", 503).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["identities"]["staging-admin"]["state"], "not_ready",
        "{body}"
    );
    assert_eq!(v["identities"]["reporting"]["state"], "ready", "{body}");
    assert!(
        v["reason"].as_str().unwrap().contains("staging-admin"),
        "{body}"
    );
    assert!(!body.contains("wrong-password"));

    for key in [REPORTING_KEY, CATALOG_KEY] {
        let (status, body) = send(&c, "GET", &format!("{main}/admin/products"), Some(key)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = send(
        &c,
        "GET",
        &format!("{staging_listener}/admin/products"),
        None,
    )
    .await;
    assert!(status >= 500, "{status}");

    // Now the staging upstream goes away altogether: prod's identities still serve.
    staging.stop().await;
    for key in [REPORTING_KEY, CATALOG_KEY] {
        let (status, body) = send(&c, "GET", &format!("{main}/admin/products"), Some(key)).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[test]
fn check_refuses_unknown_names_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9", "http://127.0.0.1:9", "x");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let run = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["check", "--config", cfg.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&text);
    assert_eq!(code, Some(0), "{err}");
    for (from, to, key) in [
        (
            "upstream = \"staging\"",
            "upstream = \"stagin\"",
            "identities.staging-admin.upstream",
        ),
        (
            "identity = \"catalog\"",
            "identity = \"katalog\"",
            "clients[1].identity",
        ),
        (
            "identity = \"staging-admin\"",
            "identity = \"staging\"",
            "listeners[0].identity",
        ),
        (
            "allow_paths = [\"/admin/products\"]",
            "allow_paths = [\"/store\"]",
            "identities.reporting.policy.allow_paths",
        ),
    ] {
        let (code, err) = run(&text.replace(from, to));
        assert_eq!(code, Some(2), "{to}: {err}");
        assert!(err.contains(key), "{key} not in {err}");
    }
}

#[tokio::test]
async fn a_reload_that_changes_identities_says_restart_and_keeps_them() {
    let prod = FakeMedusa::start().await;
    prod.set_api_key(Some(CATALOG_API_TOKEN));
    let staging = FakeMedusa::start_v2().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &prod.url(),
        &staging.url(),
        fake_medusa::DEFAULT_PASSWORD,
    );
    let p = Proc::start(&cfg, &[]);
    let (main, ops, _) = urls(&p).await;
    let c = client();
    wait_ready(&c, &ops, "", 200).await;
    // reporting would become writable: not applied live.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("read_only = true", "read_only = false")).unwrap();
    p.signal("HUP");
    let line = p.wait_line("need a restart").await;
    assert!(line.contains("identities"), "{line}");
    let (status, _) = send(
        &c,
        "POST",
        &format!("{main}/admin/upload"),
        Some(REPORTING_KEY),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(
        &c,
        "GET",
        &format!("{main}/admin/products"),
        Some(CATALOG_KEY),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(prod.logins(), 1, "no identity logged in again");
}

/// `check --login` with the general form: every identity logs in (at the same time), each
/// printing its own line; one wrong password fails the check (exit 1) naming that identity,
/// and the others still print theirs.
#[tokio::test]
async fn check_login_logs_in_every_identity_and_names_the_failing_one() {
    let prod = FakeMedusa::start().await;
    prod.set_api_key(Some(CATALOG_API_TOKEN));
    let staging = FakeMedusa::start_v2().await;
    let dir = tempfile::tempdir().unwrap();
    let check = |cfg: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(BIN)
                .args(["check", "--login", "--config", cfg.to_str().unwrap()])
                .env_remove("RUST_LOG")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let cfg = config(
        dir.path(),
        &prod.url(),
        &staging.url(),
        fake_medusa::DEFAULT_PASSWORD,
    );
    let (code, out, err) = check(cfg).await.unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    for line in [
        "identity reporting: login ok: flavor v1,",
        "identity catalog: login ok: flavor v1-api-token",
        "identity staging-admin: login ok: flavor v2,",
        "identity staging-admin: upstream staging = ",
    ] {
        assert!(out.contains(line), "{line:?} missing in {out}");
    }
    assert!(out.contains("token valid for"), "{out}");
    assert_eq!((prod.logins(), staging.logins()), (1, 1));

    let cfg = config(dir.path(), &prod.url(), &staging.url(), "wrong-password");
    let (code, out, err) = check(cfg).await.unwrap();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("identity staging-admin: login failed"),
        "{err}"
    );
    assert!(!err.contains("wrong-password"), "{err}");
    assert!(out.contains("identity reporting: login ok"), "{out}");
    assert!(out.contains("identity catalog: login ok"), "{out}");
}
