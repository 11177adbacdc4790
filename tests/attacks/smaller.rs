//! The smaller holes: the framing guard after a refused `Upgrade` on the same connection, and
//! client headers that claim where a request came from or what it is.

use tokio::io::AsyncWriteExt;

use crate::common::process::Proc;
use crate::common::wire::{addr_of, connect_from, read_response};
use crate::exhaustion::setup;

/// A request with `Upgrade` that is not switched (Medusa answers 200, or the proxy refuses
/// it) leaves the connection HTTP: a following request with Content-Length *and*
/// Transfer-Encoding is still refused with 400 and never reaches Medusa.
#[tokio::test(flavor = "multi_thread")]
async fn the_framing_guard_holds_after_a_refused_upgrade() {
    let s = setup("", "", "").await;
    s.fake.set_record_requests(true);
    let p = Proc::start(&s.cfg, &[]);
    let (proxy, _) = p.urls().await;
    let to = addr_of(&proxy);
    for first in ["/admin/products", "/admin/auth/token"] {
        let mut c = connect_from("127.0.0.1", to).await.unwrap();
        c.write_all(
            format!(
                "GET {first} HTTP/1.1\r\nHost: {to}\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let r = read_response(&mut c).await;
        assert!(
            r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.1 403"),
            "{first}: {r}"
        );
        c.write_all(
            format!(
                "POST /admin/products HTTP/1.1\r\nHost: {to}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let r = read_response(&mut c).await;
        assert!(r.starts_with("HTTP/1.1 400"), "after {first}: {r}");
    }
    let posts = s
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == http::Method::POST)
        .count();
    assert_eq!(posts, 0, "a smuggling probe reached Medusa");
}

/// Every client header that claims an origin, a path or a method is removed; the proxy's own
/// `X-Forwarded-For/-Proto/-Host` state what it saw.
#[tokio::test(flavor = "multi_thread")]
async fn client_origin_and_method_claims_never_reach_medusa() {
    let s = setup("", "", "").await;
    s.fake.set_record_requests(true);
    let p = Proc::start(&s.cfg, &[]);
    let (proxy, _) = p.urls().await;
    let to = addr_of(&proxy);
    let claims = [
        "Forwarded: for=6.6.6.6;proto=https",
        "X-Forwarded-For: 6.6.6.6",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Host: admin.evil.example",
        "X-Forwarded-Prefix: /admin/auth",
        "X-Forwarded-Port: 443",
        "X-Forwarded-Server: evil",
        "X-Real-IP: 6.6.6.6",
        "X-Client-IP: 6.6.6.6",
        "True-Client-IP: 6.6.6.6",
        "X-Original-URL: /admin/auth/token",
        "X-Rewrite-URL: /admin/auth/token",
        "X-HTTP-Method-Override: DELETE",
        "X-HTTP-Method: DELETE",
        "X-Method-Override: DELETE",
    ];
    let mut c = connect_from("127.0.0.1", to).await.unwrap();
    c.write_all(
        format!(
            "GET /admin/products HTTP/1.1\r\nHost: {to}\r\n{}\r\nX-Request-Id: kept\r\n\r\n",
            claims.join("\r\n")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let r = read_response(&mut c).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let seen = s.fake.requests_to("/admin/products");
    let h = &seen.last().expect("the request reached Medusa").headers;
    for claim in claims {
        let (name, value) = claim.split_once(": ").unwrap();
        if let Some(v) = h.get(name) {
            assert_ne!(v, value, "{name} passed through");
            assert!(
                matches!(
                    name.to_ascii_lowercase().as_str(),
                    "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host"
                ),
                "{name} reached Medusa"
            );
        }
    }
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], to.to_string().as_str());
    assert_eq!(h["x-request-id"], "kept");
}
