//! No credential read or minted through the proxy (issue 12, attack 5).
//!
//! Medusa v1 returns every user's static `api_token` in user objects, and v1 and v2 list
//! invite `token`s; `POST /admin/users/{id}` with `api_token` sets one. Each test reads or
//! writes those through the proxy, against the fake Medusa's v1/v2 shapes, and looks for the
//! exact secret strings in the bytes the client gets (every secret the fake hands out
//! contains `fake_medusa::SECRET_MARK`), or counts what reached the fake.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::stream;
use http::Request;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;

use crate::common::fake_medusa::{
    self, CHUNK_BYTES_HEADER, ENCODING_HEADER, FakeMedusa, Mode, SECRET_MARK,
};
use crate::common::harness::{self, Reply, client_for, config_text, login_auth, password_file};
use crate::common::process::Proc;

type Body = BoxBody<Bytes, Infallible>;

/// Whether a secret the fake handed out is anywhere in the reply's body.
fn leaks(r: &Reply) -> bool {
    memchr::memmem::find(&r.body, SECRET_MARK.as_bytes()).is_some()
}

/// The proxy under test: the binary, or the in-process app.
struct Target {
    addr: SocketAddr,
    client: Client<HttpConnector, Body>,
    fake: FakeMedusa,
    _proc: Option<Proc>,
    _app: Option<medusa_auth_proxy::app::Running>,
    _dir: tempfile::TempDir,
}

fn config(fake: &FakeMedusa, dir: &std::path::Path, tail: &str) -> String {
    let pw = password_file(dir);
    config_text(
        &fake.url(),
        "",
        &login_auth(fake.mode().flavor(), &pw),
        tail,
    )
}

impl Target {
    /// The proxy binary in front of `fake`.
    async fn binary(fake: FakeMedusa, tail: &str) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let text = config(&fake, dir.path(), tail);
        Target::binary_with(fake, dir, &text).await
    }

    /// The proxy binary in front of `fake`, run with the config `text` (written in `dir`).
    async fn binary_with(fake: FakeMedusa, dir: tempfile::TempDir, text: &str) -> Target {
        let cfg = dir.path().join("proxy.toml");
        std::fs::write(&cfg, text).unwrap();
        let proc = Proc::start(&cfg, &[]);
        let addr = proc.addr().await.parse().unwrap();
        Target {
            addr,
            client: client_for(),
            fake,
            _proc: Some(proc),
            _app: None,
            _dir: dir,
        }
    }

    /// The proxy in-process in front of `fake`.
    async fn in_process(fake: FakeMedusa, tail: &str) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let text = config(&fake, dir.path(), tail);
        let settings = medusa_auth_proxy::config::Settings::from_toml(&text).unwrap();
        let app = medusa_auth_proxy::app::start(harness::quiet(settings))
            .await
            .unwrap();
        Target {
            addr: app.proxy_addr,
            client: client_for(),
            fake,
            _proc: None,
            _app: Some(app),
            _dir: dir,
        }
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Body) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        harness::send(&self.client, req.body(body).unwrap()).await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", path, headers, empty()).await
    }
}

fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

/// A body with a `Content-Length`.
fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// A body without a length: hyper sends it chunked, one chunk per piece.
fn chunked(pieces: Vec<Bytes>) -> Body {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> =
        pieces.into_iter().map(|p| Ok(Frame::data(p))).collect();
    StreamBody::new(stream::iter(frames)).boxed()
}

/// `v` with the values of every field named in `keys` set to null, at any depth.
fn blanked(v: &Value, keys: &[&str]) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if keys.contains(&k.as_str()) {
                        Value::Null
                    } else {
                        blanked(v, keys)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| blanked(v, keys)).collect()),
        other => other.clone(),
    }
}

/// Reads `path` through the proxy and checks the answer is exactly `original` (what the fake
/// sent) with the credential fields `keys` null: no secret byte anywhere, same length.
async fn read_clean(
    t: &Target,
    path: &str,
    headers: &[(&str, &str)],
    original: &Value,
    keys: &[&str],
) {
    let r = t.get(path, headers).await;
    assert_eq!(
        r.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let sent = original.to_string();
    assert!(
        sent.contains(SECRET_MARK),
        "{path}: the fake sent no secret to hide"
    );
    assert!(
        !leaks(&r),
        "{path} ({headers:?}): a credential reached the client"
    );
    assert_eq!(r.body.len(), sent.len(), "{path}: length changed");
    assert_eq!(r.json(), blanked(original, keys), "{path}: JSON changed");
    if let Some(len) = r.headers.get(http::header::CONTENT_LENGTH) {
        assert_eq!(len.to_str().unwrap(), sent.len().to_string(), "{path}");
    }
}

/// The main read attack, against the binary: every v1 route that returns a user (directly,
/// in a list, embedded as a note's author) and the invite list, with Content-Length and
/// chunked in frames of every size from 1 to 13 bytes (the field name split at every offset),
/// and a ~5 MiB chunked list with 24,000 api_token fields at three depths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_credentials_never_reach_the_client() {
    let t = Target::binary(FakeMedusa::start().await, "").await;
    let user1 = fake_medusa::v1_user_id(1);
    let reads: Vec<(String, Value, &[&str])> = vec![
        (
            "/admin/auth".into(),
            serde_json::json!({"user": fake_medusa::v1_user(0)}),
            &["api_token"],
        ),
        (
            "/admin/users".into(),
            fake_medusa::v1_users_json(3),
            &["api_token"],
        ),
        (
            format!("/admin/users/{user1}"),
            serde_json::json!({"user": fake_medusa::v1_user(1)}),
            &["api_token"],
        ),
        (
            "/admin/notes".into(),
            fake_medusa::v1_notes_json(),
            &["api_token"],
        ),
        (
            "/admin/invites".into(),
            fake_medusa::invites_json(Mode::V1),
            &["api_token", "token"],
        ),
    ];
    for (path, original, keys) in &reads {
        read_clean(&t, path, &[], original, keys).await;
        for n in 1..=13 {
            let n = n.to_string();
            read_clean(&t, path, &[(CHUNK_BYTES_HEADER, &n)], original, keys).await;
        }
    }
    let big = fake_medusa::v1_users_json(12_000);
    assert!(big.to_string().len() > 4 << 20, "not several MiB");
    read_clean(
        &t,
        "/admin/users?limit=12000",
        &[(CHUNK_BYTES_HEADER, "7919")],
        &big,
        &["api_token"],
    )
    .await;
    read_clean(&t, "/admin/users?limit=12000", &[], &big, &["api_token"]).await;
}

/// With the `v1-api-token` flavor the proxy's own credential *is* a user's `api_token`: user
/// 0's, which Medusa returns from `GET /admin/auth`, `GET /admin/users`, `GET /admin/users/{id}`
/// and as an embedded note author. The configured key appears in none of those bodies (in
/// one piece or chunked); the field is null.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_api_token_flavor_never_hands_out_its_own_key() {
    let fake = FakeMedusa::start().await;
    // The key the proxy is configured with is the one Medusa returns as user 0's api_token.
    let key = fake_medusa::v1_api_token(0);
    fake.set_api_key(Some(&key));
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let auth = format!(
        "flavor = \"v1-api-token\"\napi_key_file = \"{}\"\n",
        key_file.display()
    );
    let text = config_text(&fake.url(), "", &auth, "");
    let t = Target::binary_with(fake, dir, &text).await;
    let own = format!("/admin/users/{}", fake_medusa::USER_ID);
    // Each route, and where user 0 is in its answer.
    type User0 = fn(&Value) -> &Value;
    let reads: [(&str, User0); 4] = [
        ("/admin/auth", |v| &v["user"]),
        ("/admin/users", |v| &v["users"][0]),
        (&own, |v| &v["user"]),
        ("/admin/notes", |v| &v["notes"][0]["author"]),
    ];
    for (path, user0) in reads {
        for chunk in [None, Some("5")] {
            let headers: Vec<(&str, &str)> =
                chunk.map(|n| (CHUNK_BYTES_HEADER, n)).into_iter().collect();
            let r = t.get(path, &headers).await;
            assert_eq!(
                r.status,
                200,
                "{path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert!(
                memchr::memmem::find(&r.body, key.as_bytes()).is_none(),
                "{path} ({headers:?}): the proxy's own key reached the client"
            );
            let v = r.json();
            assert_eq!(user0(&v)["id"], fake_medusa::USER_ID, "{path}: {v}");
            assert!(user0(&v)["api_token"].is_null(), "{path}: {v}");
        }
    }
    // The key did work: every answer above was authenticated by it.
    assert!(t.fake.key_requests() >= 8);
}

#[tokio::test]
async fn v2_invite_tokens_never_reach_the_client() {
    let t = Target::in_process(FakeMedusa::start_v2().await, "").await;
    let original = fake_medusa::invites_json(Mode::V2);
    read_clean(&t, "/admin/invites", &[], &original, &["token"]).await;
    read_clean(&t, "/ADMIN/Invites/", &[], &original, &["token"]).await;
    read_clean(
        &t,
        "/admin/invites",
        &[(CHUNK_BYTES_HEADER, "5")],
        &original,
        &["token"],
    )
    .await;
}

/// The proxy asks Medusa for identity encoding; a compressed body that arrives anyway could
/// not be scanned, so it is refused (502) rather than passed on.
#[tokio::test]
async fn compressed_answers_are_refused_not_passed_on() {
    let t = Target::in_process(FakeMedusa::start().await, "").await;
    t.fake.set_record_requests(true);
    let r = t.get("/admin/users", &[(ENCODING_HEADER, "gzip")]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_encoded");
    assert!(!leaks(&r));
    let r = t
        .get("/admin/users", &[(ENCODING_HEADER, "identity")])
        .await;
    assert_eq!(r.status, 200);
    assert!(!leaks(&r));
    let sent = t.fake.requests_to("/admin/users");
    assert_eq!(sent.len(), 2);
    for rec in sent {
        assert_eq!(rec.headers["accept-encoding"], "identity");
    }
}

/// `POST /admin/users/{id}` setting `api_token`, in every spelling and framing: 403 (or 413
/// for a body too large to inspect), and the fake never sees the request.
#[tokio::test]
async fn api_token_writes_never_reach_medusa() {
    let t = Target::in_process(FakeMedusa::start().await, "").await;
    t.fake.set_record_requests(true);
    let path = format!("/admin/users/{}", fake_medusa::v1_user_id(1));
    let json = ("content-type", "application/json");
    let padding = "x".repeat(70 * 1024);
    // (what, request headers, body, expected status)
    type Attempt<'a> = (&'a str, Vec<(&'a str, &'a str)>, Body, u16);
    let attempts: Vec<Attempt> = vec![
        ("plain", vec![json], full(r#"{"api_token":"mine"}"#), 403),
        (
            "escaped key",
            vec![json],
            full(r#"{"api\u005ftoken":"mine"}"#),
            403,
        ),
        (
            "nested",
            vec![json],
            full(r#"{"metadata":{"a":[{"api_token":"mine"}]}}"#),
            403,
        ),
        (
            "duplicate key",
            vec![json],
            full(r#"{"api_token":null,"first_name":"x","api_token":"mine"}"#),
            403,
        ),
        (
            "chunked, key split",
            vec![json],
            chunked(vec![
                Bytes::from_static(b"{\"first_name\":\"x\",\"api_to"),
                Bytes::from_static(b"ken\":\"mine\"}"),
            ]),
            403,
        ),
        (
            "form",
            vec![("content-type", "application/x-www-form-urlencoded")],
            full("first_name=x&api%5Ftoken=mine"),
            403,
        ),
        (
            "compressed",
            vec![json, ("content-encoding", "gzip")],
            full(&b"\x1f\x8b\x08\x00"[..]),
            403,
        ),
        (
            "utf-16",
            vec![("content-type", "application/json; charset=utf-16le")],
            full(&b"{\x00}\x00"[..]),
            403,
        ),
        (
            "over 64 KiB, Content-Length",
            vec![json],
            full(format!(r#"{{"pad":"{padding}","api_token":"mine"}}"#)),
            413,
        ),
        (
            "over 64 KiB, chunked",
            vec![json],
            chunked(vec![
                Bytes::from(format!(r#"{{"pad":"{padding}"#)),
                Bytes::from_static(br#"","api_token":"mine"}"#),
            ]),
            413,
        ),
    ];
    for (what, headers, body, want) in attempts {
        let r = t.send("POST", &path, &headers, body).await;
        assert_eq!(
            r.status,
            want,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let code = if want == 403 {
            "route_denied"
        } else {
            "payload_too_large"
        };
        assert_eq!(r.json()["error"], code, "{what}");
    }
    assert!(
        t.fake.requests().is_empty(),
        "an api_token write reached Medusa"
    );

    // The same route still takes ordinary updates, chunked ones included, and the answer
    // (a user) is scrubbed too.
    let r = t
        .send(
            "POST",
            &path,
            &[json],
            full(r#"{"first_name":"api_token"}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(!leaks(&r));
    let r = t
        .send(
            "POST",
            &path,
            &[json],
            chunked(vec![Bytes::from_static(br#"{"first_name":"y"}"#)]),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(t.fake.requests_to(&path).len(), 2);

    // Elsewhere a small buffered body is inspected as well.
    let r = t
        .send(
            "POST",
            "/admin/products",
            &[json],
            full(r#"{"api_token":"x"}"#),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(t.fake.requests_to("/admin/products").len(), 0);
}

/// Each rule can be lifted by name (with the start-up warning), and then passes the
/// credential through: the rules are what stops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifted_credential_rules_pass_through_with_a_warning() {
    let tail = "[policy]\nunsafe_lift_builtin_denies = [\"api-token-read\", \"invite-token-read\", \"api-token-write\"]";
    let t = Target::binary(FakeMedusa::start().await, tail).await;
    let proc = t._proc.as_ref().unwrap();
    for rule in ["api-token-read", "invite-token-read", "api-token-write"] {
        let line = proc.wait_line(&format!("rule={rule}")).await;
        assert!(line.contains("UNSAFE"), "{line}");
    }
    let r = t.get("/admin/users", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.len() == fake_medusa::v1_users_json(3).to_string().len());
    assert!(leaks(&r), "lifted api-token-read still scrubbed");
    assert_eq!(r.json(), fake_medusa::v1_users_json(3));
    let r = t.get("/admin/invites", &[]).await;
    assert_eq!(r.json(), fake_medusa::invites_json(Mode::V1));
    t.fake.set_record_requests(true);
    let path = format!("/admin/users/{}", fake_medusa::v1_user_id(1));
    let r = t
        .send(
            "POST",
            &path,
            &[("content-type", "application/json")],
            full(r#"{"api_token":"mine"}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(t.fake.requests_to(&path).len(), 1);
}

/// Lifting one rule leaves the others in force.
#[tokio::test]
async fn lifting_one_credential_rule_keeps_the_others() {
    let tail = "[policy]\nunsafe_lift_builtin_denies = [\"invite-token-read\"]";
    let t = Target::in_process(FakeMedusa::start().await, tail).await;
    let r = t.get("/admin/invites", &[]).await;
    assert_eq!(r.json(), fake_medusa::invites_json(Mode::V1));
    read_clean(
        &t,
        "/admin/users",
        &[],
        &fake_medusa::v1_users_json(3),
        &["api_token"],
    )
    .await;
    let path = format!("/admin/users/{}", fake_medusa::v1_user_id(1));
    let r = t
        .send("POST", &path, &[], full(r#"{"api_token":"mine"}"#))
        .await;
    assert_eq!(r.status, 403);
}

/// Buffering a chunked body for inspection does not lift a `policy.max_body` below 64 KiB.
#[tokio::test]
async fn max_body_still_caps_inspected_chunked_bodies() {
    let t = Target::in_process(FakeMedusa::start().await, "[policy]\nmax_body = \"1KiB\"").await;
    t.fake.set_record_requests(true);
    let path = format!("/admin/users/{}", fake_medusa::v1_user_id(1));
    let pad = "x".repeat(2048);
    let body = chunked(vec![Bytes::from(format!(r#"{{"first_name":"{pad}"}}"#))]);
    let r = t.send("POST", &path, &[], body).await;
    assert_eq!(r.status, 413);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_body"),
        "{:?}",
        r.json()
    );
    assert!(t.fake.requests().is_empty());
}
