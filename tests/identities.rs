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

/// prod (v1, accepting catalog's API token), staging (v2), and [`config`] for them in a
/// temporary directory (kept while this lives).
struct Fakes {
    prod: FakeMedusa,
    staging: FakeMedusa,
    dir: tempfile::TempDir,
    cfg: std::path::PathBuf,
}

/// [`Fakes`] with staging-admin's password file holding `staging_password`.
async fn fakes(staging_password: &str) -> Fakes {
    let prod = FakeMedusa::start().await;
    prod.set_api_key(Some(CATALOG_API_TOKEN));
    let staging = FakeMedusa::start_v2().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &prod.url(), &staging.url(), staging_password);
    Fakes {
        prod,
        staging,
        dir,
        cfg,
    }
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
    let Fakes {
        prod,
        staging,
        dir: _dir,
        cfg,
    } = fakes(fake_medusa::DEFAULT_PASSWORD).await;
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
async fn metrics_count_each_request_under_its_identity() {
    let Fakes {
        prod: _prod,
        staging: _staging,
        dir: _dir,
        cfg,
    } = fakes(fake_medusa::DEFAULT_PASSWORD).await;
    let p = Proc::start(&cfg, &[]);
    let (main, ops, staging_listener) = urls(&p).await;
    let c = client();
    wait_ready(&c, &ops, "", 200).await;

    let products = format!("{main}/admin/products");
    for _ in 0..2 {
        let (status, body) = send(&c, "GET", &products, Some(REPORTING_KEY)).await;
        assert_eq!(status, 200, "{body}");
    }
    // reporting is read-only: its policy denies, counted under it.
    let (status, body) = send(&c, "POST", &products, Some(REPORTING_KEY)).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = send(&c, "GET", &products, Some(CATALOG_KEY)).await;
    assert_eq!(status, 200, "{body}");
    // staging-admin's listener: every request is its own.
    let (status, body) = send(
        &c,
        "GET",
        &format!("{staging_listener}/admin/products"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // No key on the main listener: refused before any identity, `identity=""`.
    let (status, _) = send(&c, "GET", &products, None).await;
    assert_eq!(status, 407);

    // Each request is counted when its response has ended; wait for the exact lines.
    let text = common::metrics::wait_lines(
        &ops,
        &[
            "medusa_auth_proxy_requests_total{identity=\"reporting\",method=\"GET\",status_class=\"2xx\"} 2\n",
            "medusa_auth_proxy_requests_total{identity=\"reporting\",method=\"POST\",status_class=\"4xx\"} 1\n",
            "medusa_auth_proxy_denied_requests_total{identity=\"reporting\",reason=\"route_denied\"} 1\n",
            "medusa_auth_proxy_requests_total{identity=\"catalog\",method=\"GET\",status_class=\"2xx\"} 1\n",
            "medusa_auth_proxy_request_duration_seconds_count{identity=\"catalog\"} 1\n",
            "medusa_auth_proxy_requests_total{identity=\"staging-admin\",method=\"GET\",status_class=\"2xx\"} 1\n",
            "medusa_auth_proxy_requests_total{identity=\"\",method=\"GET\",status_class=\"4xx\"} 1\n",
            "medusa_auth_proxy_denied_requests_total{identity=\"\",reason=\"proxy_auth_required\"} 1\n",
            // Every identity's upstream error kinds are exported from the start.
            "medusa_auth_proxy_upstream_errors_total{identity=\"staging-admin\",kind=\"unreachable\"} 0\n",
            "medusa_auth_proxy_token_checks_total{identity=\"catalog\",outcome=\"error\"} 0\n",
        ],
    )
    .await;
    // Nothing counted under another identity than the request's.
    for absent in [
        "medusa_auth_proxy_denied_requests_total{identity=\"catalog\"",
        "medusa_auth_proxy_denied_requests_total{identity=\"staging-admin\"",
        "medusa_auth_proxy_requests_total{identity=\"default\"",
    ] {
        assert!(!text.contains(absent), "{absent} in\n{text}");
    }
    for (identity, class) in [("catalog", "4xx"), ("staging-admin", "4xx"), ("", "2xx")] {
        let series = format!(
            "medusa_auth_proxy_requests_total{{identity=\"{identity}\",method=\"GET\",status_class=\"{class}\"}}"
        );
        assert_eq!(
            common::metrics::value(&text, &series),
            Some(0.0),
            "{series}"
        );
    }
}

#[tokio::test]
async fn one_identitys_failure_leaves_the_others_serving() {
    // staging-admin's password is wrong.
    let Fakes {
        prod: _prod,
        staging,
        dir: _dir,
        cfg,
    } = fakes("wrong-password").await;
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

/// Replace the config file in one step (as an editor's save or a ConfigMap update does), so
/// the file watcher never reads half of it.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Send SIGHUP and wait for the reload's outcome line (the `n`th such line).
async fn reload(p: &Proc, n: usize) {
    p.signal("HUP");
    common::wait::until(
        Duration::from_secs(10),
        "the reload's outcome line",
        async || {
            let done = p.count_lines("configuration reloaded")
                + p.count_lines("configuration reload rejected");
            if done >= n { Ok(()) } else { Err(p.log()) }
        },
    )
    .await;
}

/// Live reload of the identity model, against the binary: a policy made wider applies at
/// once; a new identity (with its `[[clients]]` key) logs in alone, the others keep their
/// tokens; a removed identity's key stops working and `/readyz` stops naming it; a moved
/// listener says it needs a restart and keeps serving where it is.
#[tokio::test]
async fn a_reload_changes_identities_live_and_logs_in_only_the_new_one() {
    let Fakes {
        prod,
        staging,
        dir,
        cfg,
    } = fakes(fake_medusa::DEFAULT_PASSWORD).await;
    let p = Proc::start(&cfg, &[]);
    let (main, ops, staging_listener) = urls(&p).await;
    let c = client();
    wait_ready(&c, &ops, "", 200).await;
    let logins = || (prod.logins(), staging.logins());
    assert_eq!(logins(), (1, 1));
    let upload = format!("{main}/admin/upload");
    assert_eq!(send(&c, "POST", &upload, Some(REPORTING_KEY)).await.0, 403);

    // 1. reporting's policy widened (still within the global one): applied live.
    let original = std::fs::read_to_string(&cfg).unwrap();
    let widened = original.replace(
        "read_only = true\nallow_paths = [\"/admin/products\"]",
        "read_only = false\nallow_paths = [\"/admin/products\", \"/admin/upload\"]",
    );
    assert_ne!(widened, original);
    write_atomic(&cfg, &widened);
    reload(&p, 1).await;
    let (status, body) = send(&c, "POST", &upload, Some(REPORTING_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(logins(), (1, 1), "a policy change logs nobody in");

    // 2. A new identity on staging, with a key of its own: only it logs in.
    let new_key = "newcomer-key-0123456789abcdef";
    let newcomer_keys = dir.path().join("newcomer-keys");
    std::fs::write(&newcomer_keys, format!("{new_key}\n")).unwrap();
    let added = format!(
        "{widened}\n[identities.newcomer]\nupstream = \"staging\"\nflavor = \"v2\"\n\
         email = \"{email}\"\npassword_file = \"{pw}\"\n\
         [[clients]]\nkeys_file = \"{keys}\"\nidentity = \"newcomer\"\n",
        email = fake_medusa::DEFAULT_EMAIL,
        pw = dir.path().join("staging-password").display(),
        keys = newcomer_keys.display(),
    );
    write_atomic(&cfg, &added);
    reload(&p, 2).await;
    let ready = wait_ready(&c, &ops, "?identity=newcomer", 200).await;
    assert!(ready.contains("newcomer"), "{ready}");
    assert_eq!(logins(), (1, 2), "only the new identity logs in");
    let (status, body) = send(&c, "GET", &format!("{main}/admin/stores"), Some(new_key)).await;
    assert_eq!(status, 200, "the new key reaches staging (v2): {body}");
    // The others serve as before, with the tokens they had.
    assert_eq!(
        send(
            &c,
            "GET",
            &format!("{main}/admin/products"),
            Some(CATALOG_KEY)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        send(&c, "GET", &format!("{staging_listener}/admin/stores"), None)
            .await
            .0,
        200
    );
    assert_eq!(logins(), (1, 2));

    // 3. catalog removed (identity and its client entry): its key is refused, /readyz
    //    no longer names it, nobody logs in.
    let catalog_table = "[identities.catalog]\nupstream = \"prod\"\nflavor = \"v1-api-token\"\n";
    let start = added.find(catalog_table).expect("catalog table");
    let end = start + added[start..].find("\n\n").unwrap();
    let mut removed = format!("{}{}", &added[..start], &added[end..]);
    let client_entry = format!(
        "[[clients]]\nkeys_file = \"{}\"\nidentity = \"catalog\"\n",
        dir.path().join("catalog-keys").display()
    );
    assert!(removed.contains(&client_entry));
    removed = removed.replace(&client_entry, "");
    write_atomic(&cfg, &removed);
    reload(&p, 3).await;
    assert!(
        p.log()
            .lines()
            .any(|l| l.contains("identities reloaded") && l.contains("stopped=[\"catalog\"]")),
        "{}",
        p.log()
    );
    let (status, body) = send(
        &c,
        "GET",
        &format!("{main}/admin/products"),
        Some(CATALOG_KEY),
    )
    .await;
    assert_eq!(status, 407, "{body}");
    assert!(!body.contains(CATALOG_KEY), "{body}");
    assert_eq!(
        send(&c, "GET", &format!("{ops}/readyz?identity=catalog"), None)
            .await
            .0,
        404
    );
    let ready = wait_ready(&c, &ops, "", 200).await;
    assert!(
        !ready.contains("catalog") && ready.contains("newcomer"),
        "{ready}"
    );
    assert_eq!(
        send(
            &c,
            "GET",
            &format!("{main}/admin/products"),
            Some(REPORTING_KEY)
        )
        .await
        .0,
        200
    );
    assert_eq!(logins(), (1, 2));

    // 4. The staging listener moved: needs a restart, keeps serving where it is.
    let moved = removed.replacen(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"",
        "[[listeners]]\nlisten = \"127.0.0.1:1\"",
        1,
    );
    assert_ne!(moved, removed);
    write_atomic(&cfg, &moved);
    reload(&p, 4).await;
    let line = p.wait_line("need a restart").await;
    assert!(line.contains("listeners"), "{line}");
    assert_eq!(
        send(&c, "GET", &format!("{staging_listener}/admin/stores"), None)
            .await
            .0,
        200
    );
    assert_eq!(logins(), (1, 2), "no identity logged in again");
    assert!(!p.log().contains(new_key) && !p.log().contains(REPORTING_KEY));
}

/// `[proxy]` limits are per listener: the staging listener, with one slot of its own, is
/// full while its one request waits on a slow Medusa and answers 503 `overloaded`; the main
/// listener's callers are not affected.
#[tokio::test]
async fn each_listener_has_its_own_slots() {
    let Fakes {
        prod: _prod,
        staging,
        dir: _dir,
        cfg,
    } = fakes(fake_medusa::DEFAULT_PASSWORD).await;
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "identity = \"staging-admin\"\n",
        "identity = \"staging-admin\"\nmax_concurrent_requests = 1\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let p = Proc::start(&cfg, &[]);
    let (main, ops, staging_listener) = urls(&p).await;
    let c = client();
    wait_ready(&c, &ops, "", 200).await;
    staging.set_response_delay(Duration::from_secs(3));
    let slow = {
        let (c, url) = (c.clone(), format!("{staging_listener}/admin/stores"));
        tokio::spawn(async move { send(&c, "GET", &url, None).await })
    };
    // The slow request holds the listener's one slot once it is in flight.
    common::wait::until(
        Duration::from_secs(10),
        "one request in flight",
        async || {
            let (_, metrics) = send(&c, "GET", &format!("{ops}/metrics"), None).await;
            if metrics.contains("medusa_auth_proxy_requests_in_flight 1") {
                Ok(())
            } else {
                Err(metrics)
            }
        },
    )
    .await;
    let (status, body) = send(&c, "GET", &format!("{staging_listener}/admin/stores"), None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("overloaded"), "{body}");
    // The main listener has slots of its own.
    let (status, body) = send(
        &c,
        "GET",
        &format!("{main}/admin/products"),
        Some(REPORTING_KEY),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(slow.await.unwrap().0, 200);
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
