//! Micro-benchmarks for the pure pieces of the per-request hot path (`cargo bench`).
//!
//! These time functions, not the proxy: no sockets, no runtime. They are for A/B work on one
//! function (run `cargo bench -- --save-baseline before`, change, `cargo bench -- --baseline
//! before`). The end-to-end comparison against nginx and direct is `bench/run.sh`.
//!
//! Inputs are shaped like real traffic: a tool's request headers (including credentials and
//! hop-by-hop headers the proxy must strip), Medusa's response headers (including the session
//! cookie), a ~390-byte Medusa JWT, the default policy and access settings.
//!
//! The `stack` group times the whole request path of `stack::build` (every layer, the access
//! line and the metrics included) over a `tower::service_fn` stand-in for Medusa, against that
//! stand-in called alone: the difference is what the stack costs per request, with no sockets.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

use medusa_auth_proxy::access::{self, AccessConfig, ClientKeys};
use medusa_auth_proxy::auth::login::credential_header;
use medusa_auth_proxy::config::Flavor;
use medusa_auth_proxy::policy::{Decision, Policy, PolicyConfig};
use medusa_auth_proxy::proxy::headers::{sanitize_request, sanitize_response};
use medusa_auth_proxy::proxy::record::redact_query;
use medusa_auth_proxy::scrub::{Scanner, Scrub};

/// A Medusa v1-shaped admin JWT (HS256, ~390 bytes); only its length and alphabet matter here.
const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhY3Rvcl9pZCI6InVzZXJfMDFIQkVOQ0hBRE1JTjAw\
MDAwMDAwMDAwIiwiYWN0b3JfdHlwZSI6InVzZXIiLCJhcHBfbWV0YWRhdGEiOnsidXNlcl9pZCI6InVzZXJfMDFI\
QkVOQ0hBRE1JTjAwMDAwMDAwMDAifSwiYXV0aF9pZGVudGl0eV9pZCI6ImF1dGhpZF8wMUhCRU5DSDAwMDAwMDAw\
MDAwMDAiLCJleHAiOjQxMDI0NDQ4MDAsImlhdCI6MTc2NzIyNTYwMH0.3kQw2yq0oR1m9cT8h0Xo3tZ5r0y0P4b0v\
Gm3rM2hQyE";

const OWN_USER_ID: &str = "user_01HBENCHADMIN0000000000";
const CLIENT_KEY: &str = "k3y-0123456789abcdef0123456789abcdef";

fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    h
}

/// What an internal tool sends: a few ordinary headers, plus a credential and a cookie of
/// its own and hop-by-hop headers, all of which the proxy strips.
fn client_request_headers() -> HeaderMap {
    header_map(&[
        ("host", "127.0.0.1:7000"),
        ("user-agent", "python-requests/2.32.3"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("connection", "keep-alive, x-trace-hop"),
        ("x-trace-hop", "1"),
        ("content-type", "application/json"),
        ("x-request-id", "3f1c2a9e-7b4d-4f0a-9c1e-5d2b8a6f0e13"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("authorization", "Bearer client-supplied-token"),
        ("cookie", "connect.sid=s%3Aclient-session"),
        ("x-forwarded-for", "203.0.113.9"),
    ])
}

/// What Medusa (Express) answers with, including its session cookie.
fn upstream_response_headers() -> HeaderMap {
    header_map(&[
        ("x-powered-by", "Express"),
        ("vary", "Origin, Accept-Encoding"),
        ("access-control-allow-credentials", "true"),
        ("content-type", "application/json; charset=utf-8"),
        ("content-length", "1022"),
        ("etag", "W/\"3fe-6m2Kq3pY8Yb1k0a3Qp7g0mQvQ2E\""),
        (
            "set-cookie",
            "connect.sid=s%3AAbCdEf.GhIjKlMnOp; Path=/; Expires=Thu, 27 Nov 2026 22:00:00 GMT; HttpOnly",
        ),
        ("date", "Thu, 27 Nov 2026 12:00:00 GMT"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
    ])
}

fn bench_headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    let client_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let req = client_request_headers();
    let host = req.get(http::header::HOST).cloned();
    g.bench_function("sanitize_request", |b| {
        b.iter_batched_ref(
            || req.clone(),
            |h| sanitize_request(black_box(h), client_ip, host.clone()),
            BatchSize::SmallInput,
        )
    });
    let resp = upstream_response_headers();
    g.bench_function("sanitize_response", |b| {
        b.iter_batched_ref(
            || resp.clone(),
            |h| sanitize_response(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_policy(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy");
    let policy = Policy::new(PolicyConfig::default()).expect("default policy");
    // Sanity: the cases measure what their names say.
    assert_eq!(
        policy.check(&Method::GET, "/admin/products", Some(OWN_USER_ID)),
        Decision::Allow
    );
    assert!(matches!(
        policy.check(&Method::POST, "/Admin/Auth/Token/", Some(OWN_USER_ID)),
        Decision::Deny(_)
    ));
    assert!(matches!(
        policy.check(&Method::POST, "/admin/%61uth/token", Some(OWN_USER_ID)),
        Decision::BadPath(_)
    ));
    let cases = [
        ("allow_get_products", Method::GET, "/admin/products"),
        (
            "allow_post_variant",
            Method::POST,
            "/admin/products/prod_01HBENCH0000000000000001/variants",
        ),
        ("deny_token_route_case", Method::POST, "/Admin/Auth/Token/"),
        (
            "deny_token_route_encoded",
            Method::POST,
            "/admin/%61uth/token",
        ),
    ];
    for (name, method, path) in cases {
        g.bench_function(name, |b| {
            b.iter(|| policy.check(black_box(&method), black_box(path), Some(OWN_USER_ID)))
        });
    }
    g.finish();
}

fn bench_access(c: &mut Criterion) {
    let mut g = c.benchmark_group("access");
    let listen: SocketAddr = "127.0.0.1:7000".parse().expect("listen");
    let defaults = AccessConfig {
        allow_cidrs: access::default_allow_cidrs(),
        allow_hosts: access::default_allow_hosts(listen).into(),
        allow_origins: Vec::new(),
        client_keys: None,
    };
    let with_keys = AccessConfig {
        client_keys: Some(
            ClientKeys::parse(&format!(
                "# bench\nother-key-aaaaaaaaaaaaaaaaaaaaaaaa\n{CLIENT_KEY}\n"
            ))
            .expect("client keys"),
        ),
        ..defaults.clone()
    };
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let uri: Uri = "/admin/products?limit=50".parse().expect("uri");
    let mut headers = client_request_headers();
    headers.insert(
        http::header::PROXY_AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {CLIENT_KEY}")).expect("value"),
    );
    assert!(access::check(&defaults, peer, &headers, &uri).is_ok());
    assert!(access::check(&with_keys, peer, &headers, &uri).is_ok());
    g.bench_function("check_default", |b| {
        b.iter(|| access::check(black_box(&defaults), peer, black_box(&headers), &uri))
    });
    g.bench_function("check_client_key", |b| {
        b.iter(|| access::check(black_box(&with_keys), peer, black_box(&headers), &uri))
    });
    g.finish();
}

fn bench_token_header(c: &mut Criterion) {
    let mut g = c.benchmark_group("token_header");
    g.bench_function("credential_header_v1_jwt", |b| {
        b.iter(|| credential_header(Flavor::V1, black_box(JWT)))
    });
    g.bench_function("credential_header_v2_secret_key", |b| {
        b.iter(|| {
            credential_header(
                Flavor::V2SecretKey,
                black_box("sk_0123456789abcdef0123456789abcdef0123456789abcdef"),
            )
        })
    });
    // What the proxy does per request with a header built once per token: a refcount bump.
    let (_, built) = credential_header(Flavor::V1, JWT).expect("header");
    g.bench_function("clone_prebuilt_header", |b| {
        b.iter(|| black_box(&built).clone())
    });
    g.finish();
}

fn bench_redact_query(c: &mut Criterion) {
    let mut g = c.benchmark_group("redact_query");
    g.bench_function("no_query", |b| {
        b.iter(|| redact_query(black_box("/admin/products")))
    });
    g.bench_function("four_params", |b| {
        b.iter(|| {
            redact_query(black_box(
                "/admin/customers?q=alice@example.com&limit=50&offset=100&expand=orders",
            ))
        })
    });
    g.finish();
}

/// A Medusa-like JSON list of `n` bytes or a little more: products, or (`with_field`) v1
/// users that carry an `api_token` each.
fn json_body(n: usize, with_field: bool) -> Vec<u8> {
    let mut out = String::from("{\"items\":[");
    let mut i = 0;
    while out.len() < n {
        if i > 0 {
            out.push(',');
        }
        if with_field {
            out.push_str(&format!(
                "{{\"id\":\"usr_{i:08}\",\"email\":\"user{i}@example.com\",\"role\":\"member\",\
                 \"first_name\":\"Ann\",\"last_name\":\"Lee\",\"api_token\":\"tok_{i:016x}abcdef\",\
                 \"metadata\":null,\"created_at\":\"2026-01-01T00:00:00.000Z\"}}"
            ));
        } else {
            out.push_str(&format!(
                "{{\"id\":\"prod_{i:08}\",\"title\":\"Shirt \\\"{i}\\\"\",\"handle\":\"shirt-{i}\",\
                 \"status\":\"published\",\"variants\":[{{\"id\":\"variant_{i}\",\"sku\":null,\
                 \"prices\":[{{\"amount\":1999,\"currency_code\":\"eur\"}}]}}],\"token_count\":3}}"
            ));
        }
        i += 1;
    }
    out.push_str("]}");
    out.into_bytes()
}

/// What the scrubber costs per response body, fed as hyper hands it over (16 KiB reads),
/// against a plain pass-through of the same chunks.
fn bench_scrub(c: &mut Criterion) {
    let mut g = c.benchmark_group("scrub");
    let on = Scrub {
        api_token: true,
        invite_token: false,
    };
    for (size, label) in [(4 << 10, "4KiB"), (1 << 20, "1MiB")] {
        for with_field in [false, true] {
            let body = json_body(size, with_field);
            let chunks: Vec<Bytes> = body.chunks(16 << 10).map(Bytes::copy_from_slice).collect();
            let field = if with_field { "with_field" } else { "no_field" };
            g.throughput(Throughput::Bytes(body.len() as u64));
            if !with_field {
                g.bench_function(format!("passthrough_{label}"), |b| {
                    b.iter(|| {
                        for c in &chunks {
                            black_box(c.clone());
                        }
                    })
                });
            }
            g.bench_function(format!("scrub_{label}_{field}"), |b| {
                b.iter(|| {
                    let mut s = Scanner::new(on);
                    for c in &chunks {
                        black_box(s.push(c.clone()));
                    }
                    black_box(s.finish())
                })
            });
        }
    }
    g.finish();
    let policy = Policy::new(PolicyConfig::default()).expect("default policy");
    c.bench_function("policy/body_rules_get_products", |b| {
        b.iter(|| policy.body_rules(black_box(&Method::GET), black_box("/admin/products")))
    });
}

// The fake Medusa of the integration tests: the token manager logs in against it once.
#[allow(dead_code)]
#[path = "../tests/common/fake_medusa.rs"]
mod fake_medusa;
#[allow(dead_code)]
#[path = "../tests/common/wait.rs"]
mod wait;

/// What the bench's fake upstream (`bench/conf/products.json`) answers to `GET /admin/products`.
const PRODUCTS: &[u8] = include_bytes!("../bench/conf/products.json");

/// One request case of the `stack` group: a method, the headers a tool sends (credentials
/// and hop-by-hop headers the stack strips; `Content-Length` for a body) and the body.
struct Case {
    name: &'static str,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
}

impl Case {
    fn new(name: &'static str, method: Method, body: Bytes) -> Case {
        let mut headers = client_request_headers();
        if body.is_empty() {
            headers.remove(http::header::CONTENT_TYPE);
        } else {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        Case {
            name,
            method,
            headers,
            body,
        }
    }

    /// The request as `server::serve` hands it to the stack, with the peer address.
    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = Uri::from_static("/admin/products");
        *req.headers_mut() = self.headers.clone();
        req.extensions_mut()
            .insert(medusa_auth_proxy::server::PeerAddr(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                40000,
            ))));
        req
    }
}

/// `n` requests of `case` through `svc`, one after the other.
async fn drive<S, RB>(svc: &S, case: &Case, n: u64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>> + Clone,
    S::Error: std::fmt::Debug,
    RB: hyper::body::Body,
    RB::Error: std::fmt::Debug,
{
    for _ in 0..n {
        one(svc, case.request()).await;
    }
}

/// Send one request through `svc` as the server does (a clone per request, `oneshot`) and read
/// the whole response body, which is when `record` writes the access line.
async fn one<S, B, RB>(svc: &S, req: Request<B>) -> StatusCode
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    S::Error: std::fmt::Debug,
    RB: hyper::body::Body,
    RB::Error: std::fmt::Debug,
{
    let resp = svc.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    black_box(resp.into_body().collect().await.expect("body").to_bytes());
    status
}

/// `stack/*`: the proxy's request path (`stack::build`: record -> ... -> inject) over a
/// `tower::service_fn` stand-in for Medusa that reads the request body and answers 200 with
/// Medusa's response headers and a 1 KiB product list, against that stand-in alone. The
/// token manager holds a token from one login to the fake Medusa; its driver then sleeps.
/// One current-thread runtime, like the proxy with `TOKIO_WORKER_THREADS=1`; each sample
/// runs its requests in one `block_on`, so the runtime's entry is not counted.
fn bench_stack(c: &mut Criterion) {
    use medusa_auth_proxy::access_log::AccessLog;
    use medusa_auth_proxy::auth::{SecretSource, TokenManager};
    use medusa_auth_proxy::config::{LogFormat, MainIdentity, Rules, Settings};
    use medusa_auth_proxy::identity::Identity;
    use medusa_auth_proxy::metrics::Metrics;
    use medusa_auth_proxy::stack::{Listener, Parts, Stack};
    use medusa_auth_proxy::upstream::UpstreamError;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let password = dir.path().join("password");
    std::fs::write(&password, fake_medusa::DEFAULT_PASSWORD).expect("password file");
    // The config the load benchmark runs (bench/proxy-cmd.sh): defaults apart from addresses.
    let settings = Settings::from_toml(
        "[proxy]\nlisten = \"127.0.0.1:7000\"\n\
         [upstream]\nurl = \"http://127.0.0.1:9\"\n\
         [auth]\nflavor = \"v1\"\nemail = \"admin@example.com\"\npassword_env = \"UNUSED\"\n",
    )
    .expect("settings");
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let (medusa, tokens) = rt.block_on(async {
        let medusa = fake_medusa::FakeMedusa::start().await;
        let tokens = TokenManager::builder(medusa.url(), medusa_auth_proxy::auth::Flavor::V1)
            .email(fake_medusa::DEFAULT_EMAIL)
            .secret(SecretSource::File(password.clone()))
            .build()
            .expect("token manager");
        tokens.spawn_driver(stop_rx);
        tokens.token().await.expect("login");
        (medusa, tokens)
    });
    assert_eq!(medusa.logins(), 1);

    // Medusa stand-in: reads the request body, answers like Express does. The same code
    // serves both arms (the stack's body type is `ProxyBody<Full<Bytes>>`).
    let medusa_headers = upstream_response_headers();
    macro_rules! stand_in {
        ($body:ty) => {{
            let headers = medusa_headers.clone();
            tower::service_fn(move |req: Request<$body>| {
                let headers = headers.clone();
                async move {
                    let body = BodyExt::collect(req.into_body())
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    black_box(body);
                    let mut resp = Response::new(Full::new(Bytes::from_static(PRODUCTS)));
                    *resp.headers_mut() = headers;
                    Ok::<_, UpstreamError>(resp)
                }
            })
        }};
    }
    let alone = stand_in!(Full<Bytes>);
    let upstream = stand_in!(medusa_auth_proxy::proxy::limit::ProxyBody<Full<Bytes>>);
    let (stack, _handles) = Stack::new(
        Parts {
            identities: vec![Identity::new(0, "default", tokens.clone(), None)],
            main: MainIdentity::Fixed(0),
            rules: Rules::from_settings(&settings).expect("rules"),
            body_timeout: settings.upstream.request_timeout,
            metrics: Metrics::new(),
            // Formatted and batched as in the proxy; the batches are dropped, not written.
            // `HOT_PATH_ACCESS_LOG=off` measures the path without it (`log.access = false`).
            access_log: (
                std::sync::Arc::new(AccessLog::with_sink(LogFormat::Text, Box::new(|_| {}))),
                std::env::var("HOT_PATH_ACCESS_LOG").map_or(true, |v| v != "off"),
            ),
        },
        vec![upstream],
    );
    let stack =
        stack.service::<Full<Bytes>, _>(Listener::Main, settings.proxy.max_concurrent_requests);

    let cases = [
        Case::new("get", Method::GET, Bytes::new()),
        Case::new(
            "post_4KiB",
            Method::POST,
            Bytes::from(json_body(4 << 10, false)),
        ),
    ];
    // Sanity: the stack answers as the proxy would, with the token injected.
    for case in &cases {
        assert_eq!(rt.block_on(one(&stack, case.request())), StatusCode::OK);
        assert_eq!(rt.block_on(one(&alone, case.request())), StatusCode::OK);
    }

    // HOT_PATH_STACK_ONLY=<case>_<arm>:N (e.g. get_through_stack:100000) runs N requests and
    // exits, for an instruction count under `valgrind --tool=callgrind`: deterministic where
    // the wall clock of a shared machine is not. Difference two values of N.
    if let Ok(only) = std::env::var("HOT_PATH_STACK_ONLY") {
        let (what, n) = only
            .split_once(':')
            .expect("HOT_PATH_STACK_ONLY=<case>_<arm>:N");
        let n: u64 = n.parse().expect("N");
        let case = cases
            .iter()
            .find(|c| what.starts_with(c.name))
            .expect("case: get or post_4KiB");
        match &what[case.name.len()..] {
            "_stand_in_alone" => rt.block_on(drive(&alone, case, n)),
            "_through_stack" => rt.block_on(drive(&stack, case, n)),
            arm => panic!("arm {arm}: _stand_in_alone or _through_stack"),
        }
        std::process::exit(0);
    }

    let mut g = c.benchmark_group("stack");
    for case in &cases {
        g.bench_function(format!("{}_stand_in_alone", case.name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    drive(&alone, case, iters).await;
                    start.elapsed()
                })
            })
        });
        g.bench_function(format!("{}_through_stack", case.name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    drive(&stack, case, iters).await;
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
    assert_eq!(medusa.logins(), 1, "the token was used, never renewed");
    drop(tokens);
    drop(rt);
}

criterion_group!(
    benches,
    bench_stack,
    bench_scrub,
    bench_headers,
    bench_policy,
    bench_access,
    bench_token_header,
    bench_redact_query
);
criterion_main!(benches);
