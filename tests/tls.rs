//! TLS on the listener (`proxy.tls_cert_file` / `proxy.tls_key_file`), against the binary:
//! HTTP/1.1 and HTTP/2 by ALPN, plain HTTP refused, certificate rotation without dropping
//! connections, a bad new pair kept out, the handshake bounded by `header_read_timeout`, and
//! `check` on the pair. Certificates come from a CA made here with rcgen; clients trust it.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::fake_medusa::{self, FakeMedusa};
use common::process::{BIN, Proc};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// A CA and leaf certificates for `localhost` signed by it.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf: its certificate (DER, to compare with what a client was served) and PEM files.
struct Leaf {
    der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn leaf(&self) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        Leaf {
            der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client config trusting this CA only, offering `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

struct Setup {
    fake: FakeMedusa,
    dir: tempfile::TempDir,
    ca: Ca,
    leaf: Leaf,
    cfg: PathBuf,
}

impl Setup {
    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Replace both files at once, as kubelet's swap of a mounted Secret does.
    fn install(&self, cert_pem: &str, key_pem: &str) {
        for (path, text) in [(self.key(), key_pem), (self.cert(), cert_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
    }
}

/// A fake Medusa, a CA, a leaf installed as the listener's pair, and a config using it;
/// `proxy_extra` goes into `[proxy]`.
async fn setup(proxy_extra: &str) -> Setup {
    let fake = FakeMedusa::start().await;
    fake.set_record_requests(true);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf = ca.leaf();
    let pw = dir.path().join("password");
    std::fs::write(&pw, fake_medusa::DEFAULT_PASSWORD).unwrap();
    let cfg = dir.path().join("config.toml");
    let s = Setup {
        fake,
        cfg,
        ca,
        leaf,
        dir,
    };
    s.install(&s.leaf.cert_pem, &s.leaf.key_pem);
    std::fs::write(
        &s.cfg,
        format!(
            r#"
[proxy]
listen = "127.0.0.1:0"
tls_cert_file = "{cert}"
tls_key_file = "{key}"
{proxy_extra}
[upstream]
url = "{url}"
connect_timeout = "1s"
[auth]
email = "{email}"
password_file = "{pw}"
[ops]
listen = "127.0.0.1:0"
"#,
            cert = s.cert().display(),
            key = s.key().display(),
            url = s.fake.url(),
            email = fake_medusa::DEFAULT_EMAIL,
            pw = pw.display(),
        ),
    )
    .unwrap();
    s
}

async fn connect(addr: &str, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the proxy")
}

/// The leaf certificate the proxy presented.
fn served(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    let certs: &[CertificateDer<'_>] = tls.get_ref().1.peer_certificates().unwrap();
    certs[0].to_vec()
}

fn alpn(tls: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn http1(tls: TlsStream<TcpStream>) -> H1 {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn get1(send: &mut H1, path: &str) -> StatusCode {
    send.ready().await.unwrap();
    let resp = send
        .send_request(
            Request::get(path)
                .header("host", "localhost")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}

/// The proxy's `host:port` and its ops base URL.
async fn addrs(p: &Proc) -> (String, String) {
    let (_, ops) = p.urls().await;
    (p.addr().await, ops)
}

async fn metric(ops: &str, series: &str) -> u64 {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let resp = client
        .get(format!("{ops}/metrics").parse().unwrap())
        .await
        .unwrap();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Wait until `series` reads `value` (the proxy counts a connection when its task ends).
async fn wait_metric(ops: &str, series: &str, value: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = metric(ops, series).await;
        if now == value {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} is {now}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `Authorization` header Medusa saw on the last request to `path`.
fn authorization(fake: &FakeMedusa, path: &str) -> String {
    let seen = fake.requests_to(path);
    let last = seen.last().expect("the request reached Medusa");
    last.headers["authorization"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn http1_and_http2_over_tls_reach_medusa_with_the_token() {
    let s = setup("").await;
    let p = Proc::start(&s.cfg, &[]);
    let (addr, _) = addrs(&p).await;

    // HTTP/2, chosen by ALPN.
    let tls = connect(&addr, s.ca.client(&[b"h2", b"http/1.1"])).await;
    assert_eq!(alpn(&tls).as_deref(), Some(&b"h2"[..]));
    assert_eq!(served(&tls), s.leaf.der);
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send.ready().await.unwrap();
    let resp = send
        .send_request(
            Request::get("https://localhost/admin/products?via=h2")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let token = s.fake.last_token().expect("the proxy logged in");
    assert_eq!(
        authorization(&s.fake, "/admin/products"),
        format!("Bearer {token}")
    );

    // HTTP/1.1, chosen by ALPN, then several requests on the same session.
    let tls = connect(&addr, s.ca.client(&[b"http/1.1"])).await;
    assert_eq!(alpn(&tls).as_deref(), Some(&b"http/1.1"[..]));
    let mut send = http1(tls).await;
    for _ in 0..3 {
        assert_eq!(get1(&mut send, "/admin/orders").await, StatusCode::OK);
    }
    assert_eq!(
        authorization(&s.fake, "/admin/orders"),
        format!("Bearer {token}")
    );
    assert_eq!(s.fake.logins(), 1);
}

#[tokio::test]
async fn http1_framing_is_still_checked_inside_tls() {
    let s = setup("").await;
    let p = Proc::start(&s.cfg, &[]);
    let (addr, _) = addrs(&p).await;
    let mut tls = connect(&addr, s.ca.client(&[b"http/1.1"])).await;
    // Content-Length with Transfer-Encoding (a smuggling probe): 400, never forwarded.
    tls.write_all(b"POST /admin/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("Transfer-Encoding"), "{out}");
    assert!(s.fake.requests_to("/admin/echo").is_empty());
    assert!(s.fake.requests_to("/admin/smuggled").is_empty());
}

#[tokio::test]
async fn plain_http_to_the_tls_listener_is_refused_cleanly() {
    let s = setup("").await;
    let p = Proc::start(&s.cfg, &[]);
    let (addr, ops) = addrs(&p).await;
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /admin/products HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    // The proxy answers and closes: read_to_end ends (the timeout only stops a broken test).
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.ends_with("use https:// instead\r\n"), "{out}");
    assert!(s.fake.requests_to("/admin/products").is_empty());
    drop(tcp);
    let failed = "medusa_auth_proxy_connections_closed_total{reason=\"tls_handshake\"}";
    wait_metric(&ops, failed, 1).await;
    // Garbage that is not HTTP either: the handshake fails, counted the same way.
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(&[0x01; 64]).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut Vec::new())).await;
    // The listener serves TLS clients as before.
    let mut send = http1(connect(&addr, s.ca.client(&[b"http/1.1"])).await).await;
    assert_eq!(get1(&mut send, "/admin/products").await, StatusCode::OK);
    wait_metric(&ops, failed, 2).await;
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_connections_while_open_ones_keep_working() {
    let s = setup("").await;
    let p = Proc::start(&s.cfg, &[]);
    let (addr, _) = addrs(&p).await;
    let open = connect(&addr, s.ca.client(&[b"http/1.1"])).await;
    assert_eq!(served(&open), s.leaf.der);
    let mut open = http1(open).await;
    assert_eq!(get1(&mut open, "/admin/products").await, StatusCode::OK);

    let rotated = s.ca.leaf();
    s.install(&rotated.cert_pem, &rotated.key_pem);
    p.wait_line("TLS certificate reloaded").await;

    let fresh = connect(&addr, s.ca.client(&[b"http/1.1"])).await;
    assert_eq!(
        served(&fresh),
        rotated.der,
        "a new connection gets the new pair"
    );
    let mut fresh = http1(fresh).await;
    assert_eq!(get1(&mut fresh, "/admin/products").await, StatusCode::OK);
    // The connection opened before the rotation was not dropped.
    assert_eq!(get1(&mut open, "/admin/orders").await, StatusCode::OK);
}

#[tokio::test]
async fn a_bad_new_pair_keeps_the_old_one_and_says_why() {
    let s = setup("").await;
    let p = Proc::start(&s.cfg, &[]);
    let (addr, _) = addrs(&p).await;
    // A new certificate with a key that is not its own.
    let other = s.ca.leaf();
    s.install(&other.cert_pem, &s.leaf.key_pem);
    let line = p.wait_line("TLS certificate reload rejected").await;
    assert!(line.contains("`proxy.tls_key_file`"), "{line}");
    assert!(
        line.contains(&s.key().display().to_string()),
        "names the file: {line}"
    );
    let key_body: String = s.leaf.key_pem.lines().nth(1).unwrap().to_owned();
    assert!(
        !p.log().contains(&key_body),
        "key material in the log:\n{}",
        p.log()
    );
    // Still the old pair, still serving.
    let tls = connect(&addr, s.ca.client(&[b"http/1.1"])).await;
    assert_eq!(served(&tls), s.leaf.der);
    let mut send = http1(tls).await;
    assert_eq!(get1(&mut send, "/admin/products").await, StatusCode::OK);
    assert_eq!(p.count_lines("TLS certificate reloaded"), 0);
}

#[tokio::test]
async fn a_silent_tls_client_is_closed_after_header_read_timeout() {
    let s = setup("header_read_timeout = \"1s\"").await;
    let p = Proc::start(&s.cfg, &[]);
    let (addr, ops) = addrs(&p).await;
    // One says nothing; one stops in the middle of its ClientHello's record header.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut stalled = TcpStream::connect(&addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    for conn in [&mut silent, &mut stalled] {
        let mut buf = Vec::new();
        // Closed by the proxy (EOF or reset); the 10 s bound only stops a broken test.
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the connection was not closed");
    }
    let timeouts = "medusa_auth_proxy_connections_closed_total{reason=\"header_read_timeout\"}";
    wait_metric(&ops, timeouts, 2).await;
    // The slots were given back.
    wait_metric(&ops, "medusa_auth_proxy_connections_open", 0).await;
}

fn check(cfg: &Path) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", cfg.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .env_remove("MEDUSA_AUTH_PROXY_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_loads_the_pair_and_names_the_key_it_refuses() {
    let s = setup("").await;
    let (code, stdout, stderr) = check(&s.cfg);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("config ok: proxy 127.0.0.1:0 (TLS)"),
        "{stdout}"
    );

    // A key that is not the certificate's.
    let other = s.ca.leaf();
    std::fs::write(s.key(), &other.key_pem).unwrap();
    let (code, _, stderr) = check(&s.cfg);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with("error: config key `proxy.tls_key_file`: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("does not belong to the certificate"),
        "{stderr}"
    );

    // A missing certificate.
    std::fs::remove_file(s.cert()).unwrap();
    let (code, _, stderr) = check(&s.cfg);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with("error: config key `proxy.tls_cert_file`: cannot read "),
        "{stderr}"
    );

    // Half a pair.
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    let half: String = text
        .lines()
        .filter(|l| !l.starts_with("tls_cert_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&s.cfg, half).unwrap();
    let (code, _, stderr) = check(&s.cfg);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("config key `proxy.tls_cert_file`: is required with proxy.tls_key_file"),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_warns_about_client_keys_in_clear_text_on_a_remote_listener() {
    let s = setup("").await;
    let keys = s.dir.path().join("keys");
    std::fs::write(&keys, "a-client-key-of-enough-length\n").unwrap();
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    let plain: String = text
        .lines()
        .filter(|l| !l.starts_with("tls_"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        // Not bound by `check`: nothing listens on it.
        .replacen(
            "listen = \"127.0.0.1:0\"\n",
            "listen = \"0.0.0.0:7000\"\n",
            1,
        )
        + &format!("[access]\nclient_keys_file = \"{}\"\n", keys.display());
    std::fs::write(&s.cfg, &plain).unwrap();
    let (code, stdout, stderr) = check(&s.cfg);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("WARNING: proxy.listen = \"0.0.0.0:7000\"")
            && stdout.contains("no TLS")
            && stdout.contains("proxy.tls_cert_file"),
        "{stdout}"
    );
    // With TLS, no warning.
    let with_tls = plain.replace(
        "[upstream]",
        &format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n[upstream]",
            s.cert().display(),
            s.key().display()
        ),
    );
    std::fs::write(&s.cfg, with_tls).unwrap();
    let (code, stdout, stderr) = check(&s.cfg);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains("no TLS"), "{stdout}");
}

/// A `[[listeners]]` entry with a pair of its own serves TLS with it (not `[proxy]`'s), by
/// ALPN as the main listener does.
#[tokio::test]
async fn a_listeners_entry_serves_tls_with_its_own_pair() {
    let s = setup("").await;
    let own = s.ca.leaf();
    let (cert, key) = (s.dir.path().join("l.crt"), s.dir.path().join("l.key"));
    std::fs::write(&cert, &own.cert_pem).unwrap();
    std::fs::write(&key, &own.key_pem).unwrap();
    let mut text = std::fs::read_to_string(&s.cfg).unwrap();
    text.push_str(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nidentity = \"default\"\n\
         tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    std::fs::write(&s.cfg, text).unwrap();
    let p = Proc::start(&s.cfg, &[]);
    let _ = addrs(&p).await;
    let line = p.wait_line("medusa-auth-proxy started").await;
    let start = line.find("listeners=[").unwrap() + "listeners=[".len();
    let addr = line[start..start + line[start..].find(']').unwrap()].to_owned();

    let tls = connect(&addr, s.ca.client(&[b"h2", b"http/1.1"])).await;
    assert_eq!(alpn(&tls).as_deref(), Some(&b"h2"[..]));
    assert_eq!(served(&tls), own.der, "the listener's own certificate");
    let tls = connect(&addr, s.ca.client(&[b"http/1.1"])).await;
    assert_eq!(served(&tls), own.der);
    let mut send = http1(tls).await;
    assert_eq!(get1(&mut send, "/admin/orders").await, StatusCode::OK);
    let token = s.fake.last_token().expect("the proxy logged in");
    assert_eq!(
        authorization(&s.fake, "/admin/orders"),
        format!("Bearer {token}")
    );
}
