//! Issue "safe by default": who may call, what they may reach, bounded everything, upstream
//! TLS, secret rotation. Each test would fail without the rule it names.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::fake_medusa::{self, FakeMedusa};
use common::harness::{self, Harness, client, client_for, login_auth, password_file, proxy_config};
use common::metrics;
use common::process::{Ran, run};
use common::wait::{self, LONG};
use common::wire;
use http::{Request, StatusCode};
use http_body_util::Full;
use medusa_auth_proxy::app;
use medusa_auth_proxy::config::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A v1 config in front of `fake_url` with its password in `dir/password` (written once):
/// `proxy_extra` goes in `[proxy]`, `sections` at the end (e.g. "[access]\n...").
fn toml(fake_url: &str, dir: &std::path::Path, proxy_extra: &str, sections: &str) -> String {
    let pw = dir.join("password");
    if !pw.exists() {
        password_file(dir);
    }
    let auth = format!("{}login_timeout = \"2s\"\n", login_auth("v1", &pw));
    proxy_config(proxy_extra, fake_url, "", &auth, sections)
}

async fn start(proxy_extra: &str, sections: &str) -> Harness {
    let fake = FakeMedusa::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = toml(&fake.url(), dir.path(), proxy_extra, sections);
    Harness::start(fake, dir, &text).await
}

/// `check --config` of the binary on the config `text` (written to a fresh folder): how the
/// proxy judges a configuration, as an operator runs it.
fn check(text: &str) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("proxy.toml");
    std::fs::write(&cfg, text).unwrap();
    run(&["check", "--config", cfg.to_str().unwrap()], &[])
}

/// Raw bytes on a fresh connection to the proxy: what came back, and whether the proxy closed
/// the connection (EOF or reset) rather than going silent for 3 s.
async fn raw(h: &Harness, bytes: &[u8]) -> (String, bool) {
    wire::exchange(h.proxy.proxy_addr, bytes, Duration::from_secs(3)).await
}

// ---- who may call ------------------------------------------------------------------------------

#[tokio::test]
async fn client_keys_are_required_checked_and_never_forwarded() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("keys");
    std::fs::write(
        &keys,
        "# tools\nfirst-key-0123456789abcdef\nsecond-key-0123456789abcdef\n",
    )
    .unwrap();
    let h = start(
        "",
        &format!("[access]\nclient_keys_file = \"{}\"", keys.display()),
    )
    .await;

    let r = h.call("GET", "/admin/products").await;
    assert_eq!(r.status, StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    assert_eq!(r.headers["proxy-authenticate"], "Bearer");
    let r = h
        .send(
            h.request("GET", "/admin/products")
                .header("proxy-authorization", "Bearer wrong-key-0123456789abcdef")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 407);
    assert!(
        h.fake.requests().is_empty(),
        "nothing reaches Medusa without a key"
    );

    let ok = |key: &'static str| {
        h.request("GET", "/admin/products")
            .header("proxy-authorization", format!("bearer {key}"))
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(h.send(ok("second-key-0123456789abcdef")).await.status, 200);
    let seen = &h.fake.requests_to("/admin/products")[0];
    assert!(seen.headers.get("proxy-authorization").is_none());

    // The file is re-read when it changes: the old key stops working, the new one works.
    std::fs::write(&keys, "third-key-0123456789abcdef\n").unwrap();
    wait::until(LONG, "the key file change picked up", async || {
        match h.send(ok("second-key-0123456789abcdef")).await.status {
            StatusCode::PROXY_AUTHENTICATION_REQUIRED => Ok(()),
            s => Err(format!("the old key still answered {s}")),
        }
    })
    .await;
    assert_eq!(h.send(ok("third-key-0123456789abcdef")).await.status, 200);
    // A broken file keeps the last good keys: once its reload has been rejected.
    std::fs::write(&keys, "short\n").unwrap();
    metrics::wait_metric(
        &h.ops_url(),
        "medusa_auth_proxy_config_reloads_total{result=\"failure\"}",
        1.0,
    )
    .await;
    assert_eq!(h.send(ok("third-key-0123456789abcdef")).await.status, 200);
}

#[tokio::test]
async fn host_and_origin_guards() {
    let h = start(
        "",
        "[access]\nallow_origins = [\"http://tool.internal:3000\"]",
    )
    .await;
    for host in ["evil.example", "localhost.evil.example", "127.0.0.1.nip.io"] {
        let r = h
            .send(
                h.request("GET", "/admin/products")
                    .header("host", host)
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 403, "{host}");
        assert_eq!(r.code(), "host_not_allowed");
    }
    for host in ["localhost", "LOCALHOST:7000", "127.0.0.1:1", "localhost."] {
        let r = h
            .send(
                h.request("GET", "/admin/products")
                    .header("host", host)
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 200, "{host}");
    }
    let r = h
        .send(
            h.request("GET", "/admin/products")
                .header("origin", "http://evil.example")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "origin_not_allowed");
    let r = h
        .send(
            h.request("GET", "/admin/products")
                .header("origin", "null")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = h
        .send(
            h.request("GET", "/admin/products")
                .header("origin", "http://tool.internal:3000")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        h.fake.requests_to("/admin/products").len(),
        5,
        "denied requests never reach Medusa"
    );
}

#[tokio::test]
async fn peers_outside_allow_cidrs_are_refused() {
    let h = start("", "[access]\nallow_cidrs = [\"10.0.0.0/8\"]").await;
    // Closed at accept, before a byte is read: no answer at all (issue 12).
    let req = h
        .request("GET", "/admin/products")
        .body(Full::default())
        .unwrap();
    assert!(h.client.request(req).await.is_err());
    let text = h.ops("/metrics").await.text();
    assert!(
        text.contains("medusa_auth_proxy_connections_refused_total{reason=\"peer_not_allowed\"} 1"),
        "{text}"
    );
    assert!(h.fake.requests().is_empty());
}

#[test]
fn non_loopback_listen_needs_keys_or_explicit_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let base = toml("http://127.0.0.1:9", dir.path(), "", "").replacen(
        "listen = \"127.0.0.1:0\"",
        "listen = \"0.0.0.0:7000\"",
        1,
    );
    let r = check(&base);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.err.contains("[access]") && r.err.contains("proxy.listen"),
        "{}",
        r.err
    );
    let r = check(&format!(
        "{base}\n[access]\nallow_unauthenticated_remote = true"
    ));
    assert!(r.ok(), "{r:?}");
    let r = check(&format!("{base}\n[access]\nallow_cidrs = [\"10.0.0.0/8\"]"));
    assert!(r.ok(), "{r:?}");
    let r = check(&format!(
        "{base}\n[access]\nallow_cidrs = [\"10.0.0.0/33\"]"
    ));
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.err.contains("access.allow_cidrs"), "{}", r.err);
}

// ---- what they may reach -----------------------------------------------------------------------

#[tokio::test]
async fn builtin_denies_hold_for_every_spelling() {
    let h = start("", "").await;
    h.call("GET", "/admin/products").await; // learn the own user id
    let denied = [
        ("POST", "/admin/auth/token"),
        ("GET", "/admin/auth/token"),
        ("POST", "/ADMIN/AUTH/TOKEN"),
        ("POST", "/admin/auth/token/"),
        ("POST", "/Admin/Auth/Token/"),
        ("POST", "/admin/auth"),
        ("DELETE", "/admin/auth"),
        ("POST", "/admin/users/password-token"),
        ("POST", "/admin/users/reset-password"),
        ("POST", "/admin/invites"),
        ("POST", "/admin/invites/accept"),
        ("POST", "/admin/users"),
        ("POST", "/admin/users/usr_01TEST"),
        ("DELETE", "/admin/users/USR_01TEST/"),
        ("POST", "/auth/user/emailpass"),
        ("POST", "/auth/token/refresh"),
        ("DELETE", "/auth/session"),
        ("POST", "/admin/api-keys"),
    ];
    for (m, p) in denied {
        let r = h.call(m, p).await;
        assert_eq!(r.status, 403, "{m} {p}");
    }
    let bad = [
        "/admin//auth/token",
        "/admin/./auth/token",
        "/admin/x/../auth/token",
        "/admin/%61uth/token",
        "/admin/auth%2Ftoken",
        "/admin/auth/token;x",
        "/admin/auth/token%00",
    ];
    for p in bad {
        let r = h.call("POST", p).await;
        assert!(r.status == 400 || r.status == 403, "{p}: {}", r.status);
    }
    assert!(
        h.fake.requests().iter().all(|r| r.uri == "/admin/products"),
        "a denied route reached Medusa"
    );
    // Still allowed: "who am I", other users, ordinary admin routes.
    for (m, p) in [
        ("GET", "/admin/auth"),
        ("POST", "/admin/users/usr_someone_else"),
        ("GET", "/admin/users/usr_01TEST"),
        ("POST", "/admin/products"),
    ] {
        assert_eq!(h.call(m, p).await.status, 200, "{m} {p}");
    }
}

#[tokio::test]
async fn allow_deny_paths_and_read_only() {
    let h = start("", "").await;
    for p in ["/store/products", "/health", "/", "/adminx"] {
        assert_eq!(h.call("GET", p).await.status, 403, "{p}");
    }
    let h = start(
        "",
        "[policy]\nread_only = true\ndeny_paths = [\"/admin/orders\"]",
    )
    .await;
    assert_eq!(h.call("GET", "/admin/products").await.status, 200);
    assert_eq!(h.call("HEAD", "/admin/products").await.status, 200);
    assert_eq!(h.call("POST", "/admin/products").await.status, 403);
    assert_eq!(h.call("DELETE", "/admin/products/1").await.status, 403);
    assert_eq!(h.call("GET", "/admin/orders/1").await.status, 403);
    assert_eq!(h.call("GET", "/ADMIN/ORDERS").await.status, 403);
}

#[tokio::test]
async fn a_lifted_builtin_deny_is_reachable() {
    let h = start(
        "",
        "[policy]\nunsafe_lift_builtin_denies = [\"v1-auth-session\"]",
    )
    .await;
    assert_eq!(h.call("POST", "/admin/auth").await.status, 200);
    assert_eq!(
        h.call("POST", "/admin/auth/token").await.status,
        403,
        "only the named rule is lifted"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = toml(
        "http://127.0.0.1:9",
        dir.path(),
        "",
        "[policy]\nunsafe_lift_builtin_denies = [\"no-such-rule\"]",
    );
    let r = check(&bad);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.err.contains("unsafe_lift_builtin_denies") && r.err.contains("v1-auth-token"),
        "{}",
        r.err
    );
}

// ---- bounded everything ------------------------------------------------------------------------

#[tokio::test]
async fn max_body_by_length_and_while_streaming() {
    let h = start("", "[policy]\nmax_body = \"1KiB\"").await;
    let r = h
        .send(
            h.request("POST", "/admin/echo")
                .body(Full::new(Bytes::from(vec![1u8; 2048])))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.code(), "payload_too_large");
    assert!(
        h.fake.requests_to("/admin/echo").is_empty(),
        "refused before forwarding"
    );
    assert_eq!(
        h.send(
            h.request("POST", "/admin/echo")
                .body(Full::new(Bytes::from(vec![1u8; 1024])))
                .unwrap()
        )
        .await
        .status,
        200
    );

    // Chunked: no length to refuse by; cut at the limit and never delivered as complete.
    let chunks = (0..10)
        .map(|_| Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(vec![2u8; 1000]))));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let resp = client_for()
        .request(Request::post(h.url("/admin/upload")).body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // If the proxy forwarded part of it, Medusa records the request once the body ends:
    // give it the chance to, then check nothing was taken as complete.
    wait::at_most(Duration::from_secs(2), || {
        !h.fake.requests_to("/admin/upload").is_empty()
    })
    .await;
    for r in h.fake.requests_to("/admin/upload") {
        assert_ne!(
            r.status, 200,
            "Medusa accepted a truncated body as complete ({} bytes)",
            r.body_len
        );
    }
}

#[tokio::test]
async fn concurrency_cap_answers_503_at_once() {
    let h = Arc::new(start("max_concurrent_requests = 2", "").await);
    h.call("GET", "/admin/products").await;
    let slow = |h: Arc<Harness>| async move {
        h.send(
            h.request("GET", "/admin/products")
                .header(fake_medusa::DELAY_HEADER, "1000")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .status
    };
    let a = tokio::spawn(slow(h.clone()));
    let b = tokio::spawn(slow(h.clone()));
    h.fake
        .wait_until(|f| f.requests_to("/admin/products").len() == 3)
        .await;
    let r = h.call("GET", "/admin/products").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.code(), "overloaded");
    assert_eq!(a.await.unwrap(), 200);
    assert_eq!(b.await.unwrap(), 200);
    assert_eq!(
        h.call("GET", "/admin/products").await.status,
        200,
        "slots are released"
    );
}

#[tokio::test]
async fn header_limits_and_smuggling_attempts() {
    let h = start("header_read_timeout = \"1s\"", "").await;
    // Too many header fields.
    let mut many = String::from("GET /admin/products HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..200 {
        many.push_str(&format!("x-h{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    let (out, closed) = raw(&h, many.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431") && closed, "{out:.80}");
    // A GET whose one extra header has a value of `n` bytes.
    let big = |n: usize| {
        format!(
            "GET /admin/products HTTP/1.1\r\nHost: localhost\r\nx-big: {}\r\n\r\n",
            "a".repeat(n)
        )
    };
    // A huge header: over the 64 KiB head limit.
    let (out, closed) = raw(&h, big(100_000).as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431") && closed, "{out:.80}");
    assert!(out.contains("header_too_large"), "{out}");
    // Larger than the connection's read buffer: hyper refuses it before the handler runs.
    let (out, closed) = raw(&h, big(300_000).as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431") && closed, "{out:.80}");
    // Just under the 64 KiB head limit: forwarded.
    let (out, _) = raw(&h, big(60_000).as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out:.80}");
    // Conflicting Content-Length: 400 and the connection closed; the smuggled request never runs.
    let (out, closed) = raw(&h, b"POST /admin/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!GET /admin/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400") && closed, "{out:.80}");
    assert!(!out.contains("HTTP/1.1 200"), "{out}");
    // Transfer-Encoding that is not chunked-last: 400 and closed.
    let (out, closed) = raw(&h, b"POST /admin/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400") && closed, "{out:.80}");
    // Transfer-Encoding with Content-Length: 400, never forwarded, the connection closed, so
    // the request pipelined behind it is never processed either.
    let echo_before = h.fake.requests_to("/admin/echo").len();
    let (out, closed) = raw(&h, b"POST /admin/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400") && closed, "{out}");
    assert!(out.contains("Transfer-Encoding"), "{out}");
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    assert_eq!(
        h.fake.requests_to("/admin/echo").len(),
        echo_before,
        "a CL+TE request reached Medusa"
    );
    assert!(
        h.fake.requests_to("/admin/smuggled").is_empty(),
        "a smuggled request reached Medusa"
    );
    // The same with the headers the other way round and in other spellings.
    let (out, closed) = raw(&h, b"POST /admin/echo HTTP/1.1\r\nHost: localhost\r\ntransfer-encoding: CHUNKED\r\ncontent-length: 4\r\n\r\n0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400") && closed, "{out}");
    // A keep-alive connection with ordinary requests first: only the offending one is refused.
    let (out, closed) = raw(&h, b"GET /admin/products HTTP/1.1\r\nHost: localhost\r\n\r\nPOST /admin/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhiPOST /admin/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    assert!(out.contains("HTTP/1.1 400") && closed, "{out}");
    // A slow client is disconnected after header_read_timeout.
    let mut s = TcpStream::connect(h.proxy.proxy_addr).await.unwrap();
    s.write_all(b"GET /admin/products HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    // Disconnected after the 1 s timeout, not never; the bound is five times it.
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("slow client was not disconnected");
    let _ = n;
    // The proxy keeps serving others throughout.
    assert_eq!(h.call("GET", "/admin/products").await.status, 200);
}

// ---- secrets -----------------------------------------------------------------------------------

#[tokio::test]
async fn password_file_rotation_logs_in_again() {
    let h = start("", "").await;
    assert_eq!(h.call("GET", "/admin/products").await.status, 200);
    assert_eq!(h.fake.logins(), 1);
    h.fake
        .set_credentials(fake_medusa::DEFAULT_EMAIL, "rotated-password-456");
    std::fs::write(h.dir.path().join("password"), "rotated-password-456\n").unwrap();
    h.fake.wait_until(|f| f.logins() == 2).await;
    assert_eq!(h.call("GET", "/admin/products").await.status, 200);
}

// ---- upstream TLS ------------------------------------------------------------------------------

/// A TLS terminator in front of the fake: accepts TLS with a certificate from our own CA and
/// pipes the plaintext to the fake.
async fn tls_front(fake: &FakeMedusa) -> (std::net::SocketAddr, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = fake.addr;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let (Ok(mut tls), Ok(mut plain)) = (
                    acceptor.accept(tcp).await,
                    TcpStream::connect(backend).await,
                ) {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (addr, ca.pem())
}

#[tokio::test]
async fn https_upstream_with_private_ca_and_certificate_failures() {
    let fake = FakeMedusa::start().await;
    let (addr, ca_pem) = tls_front(&fake).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let url = format!("https://localhost:{}", addr.port());

    let text = toml(&url, dir.path(), "", "").replace(
        "connect_timeout = \"1s\"",
        &format!(
            "connect_timeout = \"1s\"\nca_file = \"{}\"",
            ca_file.display()
        ),
    );
    let proxy = app::start(harness::quiet(Settings::from_toml(&text).unwrap()))
        .await
        .unwrap();
    let client = client();
    let products = format!("http://{}/admin/products", proxy.proxy_addr);
    assert_eq!(harness::get(&client, &products).await.status, 200);
    assert_eq!(fake.logins(), 1);

    // Without the private CA the certificate is refused, and both the error and readiness say so.
    let text = toml(&url, dir.path(), "", "");
    let proxy = app::start(harness::quiet(Settings::from_toml(&text).unwrap()))
        .await
        .unwrap();
    let ops = format!("http://{}/readyz", proxy.ops_addr);
    wait::until(LONG, "readiness to name the certificate", async || {
        let r = harness::get(&client, &ops).await;
        let reason = r.json()["reason"].as_str().unwrap_or_default().to_owned();
        if reason.contains("certificate") {
            Ok(())
        } else {
            Err(format!("readiness reason: {reason}"))
        }
    })
    .await;
    let r = harness::get(
        &client,
        &format!("http://{}/admin/products", proxy.proxy_addr),
    )
    .await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("certificate"), "{:?}", r.body);
    assert_eq!(fake.logins(), 1, "no login got through without the CA");
}
