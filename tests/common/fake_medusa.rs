//! A fake Medusa admin API for the integration tests, modelled on what real servers do on the
//! wire (observed against Medusa 1.20.11 and 2.21.2, which `tests/e2e/` runs). Every knob
//! takes `&self`, so a test can change behaviour mid-flight, and every counter is there so
//! tests count instead of sleeping.
//!
//! - [`FakeMedusa::start`]: v1 (1.20.11). Login `POST /admin/auth/token` -> `{access_token}`;
//!   JWT claims `{user_id, domain, iat, exp}`; a bare-text 401; a fresh `connect.sid` session on
//!   every cookie-less response; a static key (`set_api_key`) is accepted as
//!   `x-medusa-access-token`; `/auth/*` does not exist (404), so an `auto` probe sees v1.
//! - [`FakeMedusa::start_v2`]: v2 (2.21.2). Login `POST /auth/user/emailpass` -> `{token}`;
//!   `POST /auth/token/refresh` with a valid Bearer -> `{token}` (expired or missing: 401);
//!   JWT claims `{actor_id, actor_type: "user", auth_identity_id, app_metadata: {user_id}, ..}`;
//!   401s are JSON `{"message":"Unauthorized"}`; no session cookie is ever set; a static key is
//!   accepted as `Authorization: Basic base64(key + ":")` (`Bearer sk_...` is rejected);
//!   `POST /admin/auth/token` is an ordinary (authenticated) admin route, so 401 without
//!   credentials.
//!
//! `GET /admin/store` (v1) / `GET /admin/stores` (v2) -> 200 when authenticated (the proxy's key check).
//!
//! Per-request knobs (request headers):
//! - `x-fake-delay-ms: N` delays that one response by N ms (on top of `set_response_delay`);
//!   the auth decision is still taken on arrival, as Medusa does.
//! - `x-fake-cut-after: N[;rst][;chunked]` on `GET /admin/download?bytes=T`: the response
//!   declares `Content-Length: T` (or is chunked with `;chunked`), sends only the first N
//!   bytes of the body, then closes the connection (FIN; with `;rst` a TCP reset): a server
//!   dying mid-response.
//! - `x-fake-chunk-delay-ms: N` on `GET /admin/download`: sleep N ms before each 64 KiB chunk
//!   (a very slow response body).
//! - `x-fake-reset-after-body-bytes: N` on any authenticated admin request: read N bytes of
//!   the request body (all of it if shorter), then reset the connection without answering.
//!
//! Connection-level knobs: `set_idle_timeout` closes a keep-alive connection idle that long
//! between requests, like Node's `server.keepAliveTimeout` (5 s by default in Node; none by
//! default here). `set_clock_skew` moves Medusa's clock (tokens' `iat`/`exp` and its own
//! expiry check). `set_reject_all` answers 401 to every admin request while logins still work.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{StreamExt as _, stream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::wait::{self, LONG};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

pub const DEFAULT_EMAIL: &str = "admin@example.com";
pub const DEFAULT_PASSWORD: &str = "supersecret-password-123";
pub const USER_ID: &str = "usr_01TEST";
/// v2: the `auth_identity_id` claim of the admin's tokens.
pub const AUTH_IDENTITY_ID: &str = "authid_01TEST";
/// Request header that delays the response to that one request, in milliseconds.
pub const DELAY_HEADER: &str = "x-fake-delay-ms";
/// Request header: `N[;rst][;chunked]`, see the module docs.
pub const CUT_HEADER: &str = "x-fake-cut-after";
/// Request header: milliseconds to sleep before each chunk of an `/admin/download` body.
pub const CHUNK_DELAY_HEADER: &str = "x-fake-chunk-delay-ms";
/// Request header: reset the connection after reading this many request body bytes.
pub const RESET_BODY_HEADER: &str = "x-fake-reset-after-body-bytes";
const CHUNK: usize = 64 * 1024;

/// Which Medusa the fake plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    V1,
    V2,
}

impl Mode {
    /// The proxy's `auth.flavor` that logs in to this Medusa.
    pub fn flavor(self) -> &'static str {
        match self {
            Mode::V1 => "v1",
            Mode::V2 => "v2",
        }
    }
}

/// How the login route (`POST /admin/auth/token` in v1, `POST /auth/user/emailpass` in v2)
/// misbehaves while set.
#[derive(Clone, Debug)]
pub enum LoginFailure {
    /// 401: `text/plain` "Unauthorized"; 400: `invalid_data` JSON; anything else: JSON error.
    Status(u16),
    /// 200 `text/html`.
    NotJson,
    /// 200 `{"foo":1}`.
    NoToken,
    /// Never answers (until the connection is closed).
    Hang,
    /// v2 with MFA on the account: 200 `{"mfa_required": true, ...}` and no token.
    Mfa,
    /// v2 account that must be verified first: 200 `{"verification_required": true, ...}`.
    Verification,
    /// v2 third-party provider: 200 `{"location": "https://idp.example/..."}`.
    Location,
    /// 200 `application/json` whose body is not JSON (`{"access_token": "eyJ` and no more).
    Garbage,
    /// 200 `application/json` with an empty body.
    Empty,
    /// 200 declaring a `Content-Length` larger than what is sent; the connection is then
    /// closed (a server dying mid-answer).
    Truncated,
    /// 200 with the mode's token field holding an opaque string that is not a JWT.
    NotJwt,
}

/// One request that reached the fake (logins and v2 refreshes excluded).
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Path and query exactly as received.
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub body_sha256: String,
    /// What the fake answered; 0 if the request body broke off before it could answer.
    pub status: u16,
}

struct Knobs {
    email: String,
    password: String,
    lifetime: Duration,
    login_delay: Duration,
    login_failure: Option<LoginFailure>,
    secret: Vec<u8>,
    response_delay: Duration,
    api_key: Option<String>,
    refresh_failure: Option<u16>,
    idle_timeout: Option<Duration>,
    clock_skew: i64,
    reject_all: bool,
}

/// Counters, each with a getter of the same name: `login_attempts` (every request to the
/// mode's login route), `logins` (tokens issued by a login), `logins_in_flight`,
/// `max_concurrent_logins` (high-water mark), `refresh_attempts` (every v2 `POST
/// /auth/token/refresh`), `refreshes` (tokens issued by a refresh), `connections` (TCP
/// accepted), `connections_closed` (accepted connections since gone, whoever closed them; see
/// [`FakeMedusa::open_connections`]), `expired_token_requests`, `rejected_requests` (every auth 401 off the login and
/// refresh routes), `key_requests` (requests authenticated by the static key),
/// `sessions_created` (v1 only), `download_bytes` (body bytes produced by `/admin/download`,
/// counted as the client pulls them), `download_aborts` (`/admin/download` bodies dropped
/// before their last byte was produced: the client went away mid-body), `idle_closes` (connections closed by the idle timeout),
/// `resets` (connections cut by the cut/reset knobs), `health_checks` (`GET /health`, which
/// needs no credential).
macro_rules! counters {
    ($($name:ident),*) => {
        #[derive(Default)]
        struct Counters { $($name: AtomicUsize),* }
        impl FakeMedusa { $(pub fn $name(&self) -> usize { self.state.n.$name.load(SeqCst) })* }
    };
}
counters!(
    login_attempts,
    logins,
    logins_in_flight,
    max_concurrent_logins,
    refresh_attempts,
    refreshes,
    connections,
    connections_closed,
    expired_token_requests,
    rejected_requests,
    key_requests,
    sessions_created,
    download_bytes,
    download_aborts,
    idle_closes,
    resets,
    health_checks
);

struct State {
    mode: Mode,
    knobs: Mutex<Knobs>,
    n: Counters,
    seq: AtomicU64,
    requests: Mutex<Vec<(u64, Recorded)>>,
    /// Whether `requests` records anything (a soak switches it off to keep memory flat).
    record: std::sync::atomic::AtomicBool,
    last_token: Mutex<Option<String>>,
    sessions: Mutex<HashSet<String>>,
    cookie_secret: String,
    /// See the "issue 12, lockout" block at the end of the file.
    lockout: Lockout,
}

pub struct FakeMedusa {
    pub addr: SocketAddr,
    state: Arc<State>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl FakeMedusa {
    /// A Medusa v1 (1.20.11).
    pub async fn start() -> FakeMedusa {
        FakeMedusa::start_mode(Mode::V1).await
    }

    /// A Medusa v2 (2.21.2).
    pub async fn start_v2() -> FakeMedusa {
        FakeMedusa::start_mode(Mode::V2).await
    }

    pub async fn start_mode(mode: Mode) -> FakeMedusa {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake medusa: bind");
        let addr = listener.local_addr().expect("fake medusa: local_addr");
        let state = Arc::new(State {
            mode,
            knobs: Mutex::new(Knobs {
                email: DEFAULT_EMAIL.into(),
                password: DEFAULT_PASSWORD.into(),
                lifetime: Duration::from_secs(24 * 3600),
                login_delay: Duration::ZERO,
                login_failure: None,
                secret: random_hex(64).into_bytes(),
                response_delay: Duration::ZERO,
                api_key: None,
                refresh_failure: None,
                idle_timeout: None,
                clock_skew: 0,
                reject_all: false,
            }),
            n: Counters::default(),
            seq: AtomicU64::new(0),
            requests: Mutex::default(),
            record: std::sync::atomic::AtomicBool::new(true),
            last_token: Mutex::default(),
            sessions: Mutex::default(),
            cookie_secret: random_hex(32),
            lockout: Lockout::default(),
        });
        let server = Mutex::new(Some(tokio::spawn(serve(listener, state.clone()))));
        FakeMedusa {
            addr,
            state,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn mode(&self) -> Mode {
        self.state.mode
    }

    fn knobs(&self) -> MutexGuard<'_, Knobs> {
        lock(&self.state.knobs)
    }
    pub fn set_credentials(&self, email: &str, password: &str) {
        let mut k = self.knobs();
        (k.email, k.password) = (email.into(), password.into());
    }
    /// `exp = iat + lifetime` in whole seconds.
    pub fn set_token_lifetime(&self, d: Duration) {
        self.knobs().lifetime = d;
    }
    pub fn set_login_delay(&self, d: Duration) {
        self.knobs().login_delay = d;
    }
    pub fn set_login_failure(&self, f: Option<LoginFailure>) {
        self.knobs().login_failure = f;
    }
    /// Like changing Medusa's `jwt_secret`: every token issued so far now gets 401.
    pub fn rotate_secret(&self) {
        self.knobs().secret = random_hex(64).into_bytes();
    }
    pub fn set_response_delay(&self, d: Duration) {
        self.knobs().response_delay = d;
    }
    /// The static key the fake accepts (`None`: no key works): v1 reads it from
    /// `x-medusa-access-token` (a user's `api_token`), v2 from `Authorization: Basic
    /// base64(key + ":")` (a secret API key).
    pub fn set_api_key(&self, key: Option<&str>) {
        self.knobs().api_key = key.map(str::to_owned);
    }
    /// v2: `POST /auth/token/refresh` answers this status (401: `{"message":"Unauthorized"}`,
    /// anything else: a JSON error) instead of a token; `None`: refresh works.
    pub fn set_refresh_failure(&self, status: Option<u16>) {
        self.knobs().refresh_failure = status;
    }
    /// Close a keep-alive connection once it has been idle (no request in flight) this long,
    /// like Node's `server.keepAliveTimeout`; `None` (the default): never. Applies to
    /// connections accepted after the call.
    pub fn set_idle_timeout(&self, d: Option<Duration>) {
        self.knobs().idle_timeout = d;
    }
    /// Medusa's clock runs this many seconds ahead of ours (negative: behind). Tokens get
    /// `iat` = Medusa's now, `exp = iat + lifetime`, and Medusa checks `exp` by its own clock,
    /// so a token is still good for its whole lifetime in real time.
    pub fn set_clock_skew(&self, secs: i64) {
        self.knobs().clock_skew = secs;
    }
    /// While set, every admin request is answered 401 whatever its credentials (counted in
    /// `rejected_requests`); logins and v2 refreshes still issue tokens.
    pub fn set_reject_all(&self, on: bool) {
        self.knobs().reject_all = on;
    }

    /// Whether requests are recorded for [`FakeMedusa::requests`] (default on). Off, nothing
    /// is kept: for long runs whose memory must stay flat.
    pub fn set_record_requests(&self, on: bool) {
        self.state.record.store(on, SeqCst);
    }

    /// Every request except logins and v2 refreshes, in arrival order. An `/admin/echo`
    /// request appears once its body has been streamed back completely.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests)
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        let same = |r: &Recorded| r.uri.split('?').next() == Some(path);
        self.requests().into_iter().filter(same).collect()
    }
    /// Connections accepted and not yet gone.
    pub fn open_connections(&self) -> usize {
        // Closed is read first: a connection closing between the two reads is not counted
        // as closed and never open.
        let closed = self.connections_closed();
        self.connections() - closed
    }

    pub fn last_token(&self) -> Option<String> {
        lock(&self.state.last_token).clone()
    }

    /// Polls `f` until it holds; panics after [`LONG`] with the fake's counters.
    pub async fn wait_until(&self, f: impl Fn(&FakeMedusa) -> bool) {
        wait::until(LONG, "a fake Medusa condition", async || {
            if f(self) {
                return Ok(());
            }
            Err(format!(
                "login_attempts={}, logins={}, refresh_attempts={}, refreshes={}, requests={}, \
                 rejected={}, connections={}",
                self.login_attempts(),
                self.logins(),
                self.refresh_attempts(),
                self.refreshes(),
                self.requests().len(),
                self.rejected_requests(),
                self.connections()
            ))
        })
        .await
    }

    /// Stops accepting and drops every open connection ("Medusa down"). Takes effect at the
    /// runtime's next scheduling point; `stop().await` returns once the listener is closed.
    pub fn shutdown(&self) {
        if let Some(h) = lock(&self.server).as_ref() {
            h.abort();
        }
    }
    pub async fn stop(&self) {
        let handle = lock(&self.server).take();
        if let Some(h) = handle {
            h.abort();
            let _ = h.await;
        }
    }
    /// Medusa comes back on the same address. Like a restart of a real server with an
    /// in-memory session store: JWTs stay valid (same secret), earlier sessions are forgotten.
    pub async fn restart(&self) {
        self.stop().await;
        lock(&self.state.sessions).clear();
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("fake medusa: rebind");
        *lock(&self.server) = Some(tokio::spawn(serve(listener, self.state.clone())));
    }
}

impl Drop for FakeMedusa {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// SHA-256 (hex) of the first `n` bytes of the `/admin/download` pattern.
pub fn pattern_sha256(n: u64) -> String {
    let mut h = Sha256::new();
    let mut off = 0;
    while off < n {
        let len = (n - off).min(CHUNK as u64);
        h.update(pattern_chunk(off, len as usize));
        off += len;
    }
    hex(h)
}

fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    static BUF: OnceLock<Bytes> = OnceLock::new();
    let buf = BUF.get_or_init(|| (0..CHUNK + 251).map(|i| (i % 251) as u8).collect());
    let start = (offset % 251) as usize;
    buf.slice(start..start + len.min(CHUNK))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Lowercase hex of a finished SHA-256.
pub fn hex(h: Sha256) -> String {
    h.finalize().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn random_hex(len: usize) -> String {
    let mut s = String::new();
    while s.len() < len {
        // Each RandomState gets fresh keys (OS-seeded per thread, then perturbed per call).
        let _ = write!(s, "{:016x}", RandomState::new().build_hasher().finish());
    }
    s.truncate(len);
    s
}

/// One accepted connection: what the idle timeout and the cut/reset knobs need.
struct Conn {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// Woken when a request starts or ends.
    wake: tokio::sync::Notify,
    /// Drop the connection now (no graceful close).
    kill: tokio::sync::Notify,
    /// On close, send a TCP reset (SO_LINGER 0) instead of a FIN.
    rst: std::sync::atomic::AtomicBool,
}

impl Conn {
    fn begin(&self) {
        self.in_flight.fetch_add(1, SeqCst);
        self.wake.notify_one();
    }
    fn end(&self) {
        *lock(&self.idle_since) = Instant::now();
        self.in_flight.fetch_sub(1, SeqCst);
        self.wake.notify_one();
    }
    /// Abort the connection: with `rst`, a TCP reset.
    fn cut(&self, st: &State, rst: bool) {
        st.n.resets.fetch_add(1, SeqCst);
        self.rst.store(rst, SeqCst);
        self.kill.notify_one();
    }
    /// Returns once the connection has been idle for `timeout` (never without one).
    async fn idle(&self, timeout: Option<Duration>) {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        loop {
            if self.in_flight.load(SeqCst) > 0 {
                self.wake.notified().await;
                continue;
            }
            let deadline = *lock(&self.idle_since) + timeout;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let idle_for = lock(&self.idle_since).elapsed();
                    if self.in_flight.load(SeqCst) == 0 && idle_for >= timeout {
                        return;
                    }
                }
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// The socket, resetting instead of closing when its connection was cut with `rst`.
struct ConnIo {
    tcp: tokio::net::TcpStream,
    conn: Arc<Conn>,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.conn.rst.load(SeqCst) {
            let _ = self.tcp.set_zero_linger();
        }
    }
}

impl tokio::io::AsyncRead for ConnIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ConnIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A response body that marks the request finished on its connection when it is dropped.
struct EndsRequest {
    inner: Body,
    conn: Arc<Conn>,
}

impl Drop for EndsRequest {
    fn drop(&mut self) {
        self.conn.end();
    }
}

impl hyper::body::Body for EndsRequest {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

async fn serve(listener: TcpListener, st: Arc<State>) {
    // Owning the connection tasks here means aborting this task closes every connection too.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    st.n.connections.fetch_add(1, SeqCst);
                    let _ = tcp.set_nodelay(true);
                    let st = st.clone();
                    let idle_timeout = lock(&st.knobs).idle_timeout;
                    let conn = Arc::new(Conn {
                        in_flight: AtomicUsize::new(0),
                        idle_since: Mutex::new(Instant::now()),
                        wake: tokio::sync::Notify::new(),
                        kill: tokio::sync::Notify::new(),
                        rst: std::sync::atomic::AtomicBool::new(false),
                    });
                    let io = ConnIo { tcp, conn: conn.clone() };
                    conns.spawn(async move {
                        // Counted however the connection ends, an abort ("Medusa down") too.
                        let _closed = CountOnDrop(st.clone());
                        let counters = st.clone();
                        let c = conn.clone();
                        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                            let (st, c) = (st.clone(), c.clone());
                            c.begin();
                            req.extensions_mut().insert(c.clone());
                            async move {
                                let resp = handle(&st, req).await;
                                let resp = resp.map(|inner| {
                                    BodyExt::boxed_unsync(EndsRequest { inner, conn: c })
                                });
                                Ok::<_, Infallible>(resp)
                            }
                        });
                        let served = hyper::server::conn::http1::Builder::new()
                            .header_read_timeout(None)
                            .serve_connection(TokioIo::new(io), svc);
                        let mut served = std::pin::pin!(served);
                        tokio::select! {
                            _ = served.as_mut() => {}
                            _ = conn.kill.notified() => {}
                            _ = conn.idle(idle_timeout) => {
                                counters.n.idle_closes.fetch_add(1, SeqCst);
                                served.as_mut().graceful_shutdown();
                                tokio::select! {
                                    _ = served.as_mut() => {}
                                    _ = conn.kill.notified() => {}
                                }
                            }
                        }
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Counts a connection as closed when its task ends or is dropped.
struct CountOnDrop(Arc<State>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.n.connections_closed.fetch_add(1, SeqCst);
    }
}

async fn handle(st: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let post = req.method() == Method::POST;
    let path = req.uri().path();
    // Unauthenticated in both versions; not recorded (the proxy polls it while Medusa is down).
    if req.method() == Method::GET && path == "/health" {
        st.n.health_checks.fetch_add(1, SeqCst);
        return resp(200, Some("text/plain; charset=utf-8"), "OK");
    }
    let login_route = match st.mode {
        Mode::V1 => "/admin/auth/token",
        Mode::V2 => "/auth/user/emailpass",
    };
    let is_login = post && path == login_route;
    let is_refresh = st.mode == Mode::V2 && post && path == "/auth/token/refresh";
    if st.mode == Mode::V2 {
        // v2 sets no cookie on ordinary (Bearer, key) requests nor on logins.
        return if is_login {
            login(st, req).await
        } else if is_refresh {
            refresh(st, req).await
        } else {
            admin(st, req).await
        };
    }
    let known = known_session(st, req.headers());
    let mut resp = if is_login {
        login(st, req).await
    } else {
        admin(st, req).await
    };
    // express-session with saveUninitialized: a cookie-less request gets a new stored session.
    let sid = known.unwrap_or_else(|| {
        st.n.sessions_created.fetch_add(1, SeqCst);
        let id = random_hex(32);
        lock(&st.sessions).insert(id.clone());
        id
    });
    let expires = http_date(now_secs() + 10 * 3600);
    let cookie = format!(
        "connect.sid=s%3A{sid}.{}; Path=/; Expires={expires}; HttpOnly",
        sign(st, &sid)
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

fn sign(st: &State, id: &str) -> String {
    let mut h = Sha256::new();
    h.update(st.cookie_secret.as_bytes());
    h.update(id.as_bytes());
    hex(h)[..43].to_owned()
}

fn known_session(st: &State, headers: &HeaderMap) -> Option<String> {
    let values = headers.get_all(header::COOKIE).iter();
    let pairs = values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'));
    pairs
        .filter_map(|p| p.trim().strip_prefix("connect.sid="))
        .filter_map(|v| v.strip_prefix("s%3A").or_else(|| v.strip_prefix("s:")))
        .filter_map(|v| v.split_once('.'))
        .find(|(id, sig)| *sig == sign(st, id) && lock(&st.sessions).contains(*id))
        .map(|(id, _)| id.to_owned())
}

struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

async fn login(st: &State, req: Request<Incoming>) -> Response<Body> {
    st.n.login_attempts.fetch_add(1, SeqCst);
    let now = st.n.logins_in_flight.fetch_add(1, SeqCst) + 1;
    st.n.max_concurrent_logins.fetch_max(now, SeqCst);
    let _in_flight = InFlight(&st.n.logins_in_flight);
    let body = Limited::new(req.into_body(), 1 << 20).collect().await;
    let (delay, failure) = {
        let k = lock(&st.knobs);
        (k.login_delay, k.login_failure.clone())
    };
    tokio::time::sleep(delay).await;
    match failure {
        None => {}
        Some(LoginFailure::Status(401)) => return login_unauthorized(st.mode),
        Some(LoginFailure::Status(400)) => return invalid_data("email must be an email"),
        Some(LoginFailure::Status(code)) => {
            let code = Some(code)
                .filter(|c| (200..=599).contains(c))
                .unwrap_or(500);
            let body = json!({"type": "unknown_error", "message": "An unknown error occurred."});
            return json_resp(code, &body);
        }
        Some(LoginFailure::NotJson) => {
            return resp(200, Some("text/html; charset=utf-8"), "<html>Medusa</html>");
        }
        Some(LoginFailure::NoToken) => return json_resp(200, &json!({"foo": 1})),
        Some(LoginFailure::Hang) => return std::future::pending().await,
        Some(LoginFailure::Mfa) => {
            let body = json!({
                "mfa_required": true,
                "mfa_token": format!("mfa_{}", random_hex(24)),
                "available_methods": ["totp"],
            });
            return json_resp(200, &body);
        }
        Some(LoginFailure::Verification) => {
            let body = json!({"verification_required": true, "message": "Verify your email"});
            return json_resp(200, &body);
        }
        Some(LoginFailure::Location) => {
            let body = json!({"location": "https://idp.example/oauth/authorize?client_id=medusa"});
            return json_resp(200, &body);
        }
        Some(LoginFailure::Garbage) => {
            let body = format!("{{\"{}\": \"eyJ", token_field(st.mode));
            return resp(200, Some("application/json; charset=utf-8"), body);
        }
        Some(LoginFailure::Empty) => {
            return resp(200, Some("application/json; charset=utf-8"), Bytes::new());
        }
        Some(LoginFailure::Truncated) => {
            let full = json!({token_field(st.mode): format!("eyJ{}", random_hex(200))});
            return truncated(Bytes::from(full.to_string()), 24);
        }
        Some(LoginFailure::NotJwt) => {
            let body = json!({token_field(st.mode): format!("opaque-{}", random_hex(32))});
            return json_resp(200, &body);
        }
    }
    let v: Value = match body {
        Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let field = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let (Some(email), Some(password)) = (field("email"), field("password")) else {
        if st.mode == Mode::V2 {
            // v2's emailpass provider refuses a malformed login as unauthorized.
            let body = json!({"type": "unauthorized", "message": "Email should be a string"});
            return json_resp(401, &body);
        }
        let missing = ["email", "password"]
            .into_iter()
            .filter(|k| field(k).is_none());
        let missing: Vec<_> = missing
            .map(|k| format!("{k} should not be empty"))
            .collect();
        return invalid_data(&missing.join(", "));
    };
    let token = {
        let k = lock(&st.knobs);
        if email != k.email || password != k.password {
            return login_unauthorized(st.mode);
        }
        issue(st.mode, &k)
    };
    match token {
        Ok(t) => {
            st.n.logins.fetch_add(1, SeqCst);
            *lock(&st.last_token) = Some(t.clone());
            match st.mode {
                Mode::V1 => json_resp(200, &json!({"access_token": t})),
                Mode::V2 => json_resp(200, &json!({"token": t})),
            }
        }
        Err(e) => json_resp(
            500,
            &json!({"type": "unknown_error", "message": e.to_string()}),
        ),
    }
}

/// The field of the mode's login answer that holds the token.
fn token_field(mode: Mode) -> &'static str {
    match mode {
        Mode::V1 => "access_token",
        Mode::V2 => "token",
    }
}

/// A 200 that declares all of `full` (`Content-Length`) but sends only its first `send`
/// bytes, then breaks the connection.
fn truncated(full: Bytes, send: usize) -> Response<Body> {
    let total = full.len();
    let part = full.slice(..send.min(total));
    let frames = stream::unfold(Some(part), |part| async move {
        match part {
            Some(p) => Some((Ok(Frame::data(p)), None)),
            None => {
                // Let the part reach the peer before the connection breaks.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let err: BoxError = "fake medusa: connection cut mid-body".into();
                Some((Err(err), None))
            }
        }
    });
    let frames = frames.take(2);
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    r
}

/// Medusa's "now", in Unix seconds: ours plus the skew.
fn medusa_now(k: &Knobs) -> u64 {
    (now_secs() as i64 + k.clock_skew).max(0) as u64
}

/// A JWT for the mode, signed with the current secret, `exp = iat + lifetime`, `iat` by
/// Medusa's clock.
fn issue(mode: Mode, k: &Knobs) -> jsonwebtoken::errors::Result<String> {
    let iat = medusa_now(k);
    let exp = iat + k.lifetime.as_secs();
    let claims = match mode {
        Mode::V1 => json!({"user_id": USER_ID, "domain": "admin", "iat": iat, "exp": exp}),
        Mode::V2 => json!({
            "actor_id": USER_ID,
            "actor_type": "user",
            "auth_identity_id": AUTH_IDENTITY_ID,
            "auth_provider": "emailpass",
            "app_metadata": {"user_id": USER_ID},
            "user_metadata": {},
            "mfa_enabled": false,
            "iat": iat,
            "exp": exp,
        }),
    };
    let key = EncodingKey::from_secret(&k.secret);
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
}

/// v2 `POST /auth/token/refresh`: a still-valid Bearer JWT buys a new one; the old one stays
/// valid until its `exp`.
async fn refresh(st: &State, req: Request<Incoming>) -> Response<Body> {
    st.n.refresh_attempts.fetch_add(1, SeqCst);
    let (parts, mut body) = req.into_parts();
    let _ = drain(&mut body).await;
    let failure = lock(&st.knobs).refresh_failure;
    match failure {
        None => {}
        Some(401) => return unauthorized(st.mode),
        Some(code) => {
            let code = Some(code)
                .filter(|c| (200..=599).contains(c))
                .unwrap_or(500);
            let body = json!({"type": "unknown_error", "message": "An unknown error occurred."});
            return json_resp(code, &body);
        }
    }
    if bearer(st, &parts.headers).is_err() {
        return unauthorized(st.mode);
    }
    let token = issue(st.mode, &lock(&st.knobs));
    match token {
        Ok(t) => {
            st.n.refreshes.fetch_add(1, SeqCst);
            *lock(&st.last_token) = Some(t.clone());
            json_resp(200, &json!({"token": t}))
        }
        Err(e) => json_resp(
            500,
            &json!({"type": "unknown_error", "message": e.to_string()}),
        ),
    }
}

enum AuthFailure {
    Expired,
    Other,
}

/// How a request was authenticated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Authed {
    /// A Bearer JWT.
    Token,
    /// The static key (`set_api_key`).
    Key,
    /// A route that needs no credentials (`/auth/*` that is neither login nor refresh).
    Open,
}

/// `Authorization: <scheme> <credentials>` with a case-insensitive scheme.
fn authorization<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())?;
    value
        .trim()
        .split_once(' ')
        .filter(|(s, _)| s.eq_ignore_ascii_case(scheme))
        .map(|(_, c)| c.trim())
}

/// A Bearer JWT signed with the current secret, of this mode's shape, not expired.
fn bearer(st: &State, headers: &HeaderMap) -> Result<(), AuthFailure> {
    let token = authorization(headers, "bearer").ok_or(AuthFailure::Other)?;
    let (secret, now) = {
        let k = lock(&st.knobs);
        (k.secret.clone(), medusa_now(&k))
    };
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false; // checked below the way node's jsonwebtoken does: now >= exp
    validation.required_spec_claims.clear();
    let key = DecodingKey::from_secret(&secret);
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation);
    let claims = data.map_err(|_| AuthFailure::Other)?.claims;
    let shape_ok = match st.mode {
        Mode::V1 => claims.get("domain").and_then(Value::as_str) == Some("admin"),
        Mode::V2 => claims.get("actor_type").and_then(Value::as_str) == Some("user"),
    };
    if !shape_ok {
        return Err(AuthFailure::Other);
    }
    match claims.get("exp").and_then(Value::as_f64) {
        Some(exp) if now as f64 >= exp => Err(AuthFailure::Expired),
        _ => Ok(()),
    }
}

fn authenticate(st: &State, headers: &HeaderMap) -> Result<Authed, AuthFailure> {
    let key = lock(&st.knobs).api_key.clone();
    match st.mode {
        // v2: a secret API key in Basic auth first, then the Bearer JWT. `Bearer sk_...` is
        // not a JWT and fails like any garbage token.
        Mode::V2 => {
            if let Some(cred) = authorization(headers, "basic") {
                use base64::Engine as _;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(cred)
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok());
                let presented = decoded.as_deref().and_then(|d| d.strip_suffix(':'));
                return match (presented, key.as_deref()) {
                    (Some(p), Some(k)) if p == k => Ok(Authed::Key),
                    _ => Err(AuthFailure::Other),
                };
            }
            bearer(st, headers).map(|()| Authed::Token)
        }
        // v1: the Bearer JWT, then `x-medusa-access-token` (which still authenticates next to
        // a garbage Authorization header).
        Mode::V1 => {
            let jwt = bearer(st, headers);
            if jwt.is_ok() {
                return Ok(Authed::Token);
            }
            let presented = headers
                .get("x-medusa-access-token")
                .and_then(|v| v.to_str().ok());
            match (presented, key.as_deref()) {
                (Some(p), Some(k)) if p == k => Ok(Authed::Key),
                _ => jwt.map(|()| Authed::Token),
            }
        }
    }
}

async fn drain(body: &mut Incoming) -> (u64, String, bool) {
    let (mut h, mut n) = (Sha256::new(), 0);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    h.update(&d);
                    n += d.len() as u64;
                }
            }
            Err(_) => return (n, hex(h), false),
        }
    }
    (n, hex(h), true)
}

fn push(st: &State, seq: u64, rec: Recorded) {
    if !st.record.load(SeqCst) {
        return;
    }
    let mut all = lock(&st.requests);
    let at = all.partition_point(|(s, _)| *s < seq);
    all.insert(at, (seq, rec));
}

async fn admin(st: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if let Some(r) = lockout_before_auth(st, &req) {
        return r;
    }
    let seq = st.seq.fetch_add(1, SeqCst);
    let path = req.uri().path();
    // `/auth/*` is not an admin route: v1 has no such routes (404), v2's other than login and
    // refresh are not modelled (404). Every `/admin*` path needs credentials in both.
    let auth = if path == "/auth" || path.starts_with("/auth/") {
        Ok(Authed::Open)
    } else if lock(&st.knobs).reject_all {
        Err(AuthFailure::Other)
    } else {
        authenticate(st, req.headers())
    };
    let conn = req.extensions().get::<Arc<Conn>>().cloned();
    if auth.as_ref().is_ok_and(|a| *a == Authed::Key) {
        st.n.key_requests.fetch_add(1, SeqCst);
    }
    let (parts, mut body) = req.into_parts();
    let header_delay = parts
        .headers
        .get(DELAY_HEADER)
        .and_then(|v| v.to_str().ok());
    let header_delay = header_delay
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let delay = lock(&st.knobs).response_delay + Duration::from_millis(header_delay);
    let mut rec = Recorded {
        method: parts.method.clone(),
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.to_string(), |p| p.to_string()),
        headers: parts.headers.clone(),
        body_len: 0,
        body_sha256: String::new(),
        status: 0,
    };
    let path = parts.uri.path();
    if auth.is_ok()
        && let Some(n) = header_u64(&parts.headers, RESET_BODY_HEADER)
        && let Some(conn) = conn.clone()
    {
        // Read part of the body, then reset the connection without answering.
        let mut got = 0u64;
        while got < n {
            match body.frame().await {
                Some(Ok(f)) => got += f.data_ref().map_or(0, |d| d.len() as u64),
                _ => break,
            }
        }
        rec.body_len = got;
        push(st, seq, rec);
        conn.cut(st, true);
        return std::future::pending().await;
    }
    if auth.is_ok() && path == "/admin/echo" {
        tokio::time::sleep(delay).await;
        let fin = Some((st.clone(), seq, rec));
        let echo = stream::unfold(
            (body, Sha256::new(), 0u64, fin),
            |(mut b, mut h, mut n, mut fin)| async move {
                loop {
                    match b.frame().await {
                        Some(Ok(f)) => {
                            if let Ok(d) = f.into_data() {
                                h.update(&d);
                                n += d.len() as u64;
                                return Some((Ok(Frame::data(d)), (b, h, n, fin)));
                            }
                        }
                        end => {
                            if let Some((st, seq, mut rec)) = fin.take() {
                                (rec.body_len, rec.body_sha256) = (n, hex(h.clone()));
                                rec.status = if end.is_none() { 200 } else { 0 };
                                push(&st, seq, rec);
                            }
                            let err: BoxError = end?.err()?.into();
                            return Some((Err(err), (b, h, n, fin)));
                        }
                    }
                }
            },
        );
        let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(echo)));
        if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
            r.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
        }
        return r;
    }
    let (len, sha, complete) = drain(&mut body).await;
    let response = match auth {
        Err(why) => {
            st.n.rejected_requests.fetch_add(1, SeqCst);
            if matches!(why, AuthFailure::Expired) {
                st.n.expired_token_requests.fetch_add(1, SeqCst);
            }
            unauthorized(st.mode)
        }
        Ok(_) if parts.method == Method::GET && path == "/admin/download" => {
            download(st, conn, &parts.uri, &parts.headers)
        }
        // The credential routes answer v1 `GET /admin/auth` too, with the same user id.
        Ok(a) => credential_routes(st.mode, &parts.method, &parts.uri, &parts.headers)
            .or_else(|| lockout_route(st, a, &parts.method, path))
            .unwrap_or_else(|| route(st.mode, &parts.method, &parts.uri, len, &sha)),
    };
    (rec.body_len, rec.body_sha256) = (len, sha);
    rec.status = if complete {
        response.status().as_u16()
    } else {
        0
    };
    push(st, seq, rec);
    tokio::time::sleep(delay).await;
    response
}

fn route(mode: Mode, method: &Method, uri: &http::Uri, len: u64, sha: &str) -> Response<Body> {
    let path = uri.path();
    let segments: Vec<&str> = path.split('/').collect();
    match (method, segments.as_slice()) {
        // v1 has `GET /admin/store`; v2 only `GET /admin/stores` (v2 answers the v1 route 404).
        (&Method::GET, ["", "admin", "store"]) if mode == Mode::V2 => json_resp(
            404,
            &json!({"type": "not_found", "message": "Not found", "path": path}),
        ),
        (&Method::GET, ["", "admin", "stores"]) if mode == Mode::V1 => json_resp(
            404,
            &json!({"type": "not_found", "message": "Not found", "path": path}),
        ),
        (&Method::GET, ["", "admin", "store" | "stores"]) => json_resp(
            200,
            &json!({"store": {
                "id": "store_01TEST",
                "name": "Medusa Store",
                "default_currency_code": "eur",
            }}),
        ),
        // v1's token route is gone in v2: authenticated, it is an unknown admin route.
        (_, ["", "admin", "auth", "token"]) if mode == Mode::V2 => json_resp(
            404,
            &json!({"type": "not_found", "message": "Not found", "path": path}),
        ),
        (&Method::GET, ["", "admin", "products"]) => {
            json_resp(200, &json!({"products": [], "count": 0}))
        }
        (&Method::POST, ["", "admin", "upload"]) => {
            json_resp(200, &json!({"bytes": len, "sha256": sha}))
        }
        (&Method::GET, ["", "admin", "hop"]) => {
            let mut r = json_resp(200, &json!({"hop": true}));
            for (k, v) in [
                ("connection", "x-hop-custom"),
                ("x-hop-custom", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("x-kept", "yes"),
            ] {
                r.headers_mut().insert(k, HeaderValue::from_static(v));
            }
            r
        }
        (_, ["", "admin", "status", code]) => match code.parse::<u16>() {
            Ok(c @ (200..=599)) if c == 204 || c == 304 || method == Method::HEAD => {
                resp(c, None, Bytes::new())
            }
            Ok(c @ (200..=599)) => json_resp(c, &json!({"code": c})),
            _ => invalid_data("status code must be 200..=599"),
        },
        (_, ["", "admin", ..]) => json_resp(200, &json!({"method": method.as_str(), "path": path})),
        _ => json_resp(
            404,
            &json!({"type": "not_found", "message": "Not found", "path": path}),
        ),
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `GET /admin/download?bytes=N`: N bytes of the pattern, produced as the client pulls them
/// (counted in `download_bytes`); the chunk-delay and cut knobs apply.
fn download(
    st: &Arc<State>,
    conn: Option<Arc<Conn>>,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Response<Body> {
    let query = uri.query().unwrap_or("").split('&');
    let n = query
        .filter_map(|kv| kv.strip_prefix("bytes="))
        .find_map(|v| v.parse::<u64>().ok());
    let Some(total) = n else {
        return invalid_data("bytes must be a non-negative integer");
    };
    let chunk_delay = header_u64(headers, CHUNK_DELAY_HEADER).map(Duration::from_millis);
    // `N[;rst][;chunked]`
    let cut = headers
        .get(CUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let mut parts = v.split(';').map(str::trim);
            let after: u64 = parts.next()?.parse().ok()?;
            let flags: Vec<&str> = parts.collect();
            Some((after, flags.contains(&"rst"), flags.contains(&"chunked")))
        });
    let send = cut.map_or(total, |(after, _, _)| after.min(total));
    let st = st.clone();
    let aborted = Arc::new(DownloadAbort {
        st: st.clone(),
        done: AtomicBool::new(false),
    });
    let chunks = stream::unfold(Some(0u64), move |off| {
        let (st, conn, aborted) = (st.clone(), conn.clone(), aborted.clone());
        async move {
            let off = off?;
            if off >= send {
                aborted.done.store(true, SeqCst);
                let (_, rst, _) = cut?;
                // Let what was sent reach the peer, then break the connection.
                tokio::time::sleep(Duration::from_millis(50)).await;
                match conn {
                    Some(c) if rst => {
                        c.cut(&st, true);
                        return std::future::pending().await;
                    }
                    _ => {
                        st.n.resets.fetch_add(1, SeqCst);
                        let err: BoxError = "fake medusa: connection cut mid-body".into();
                        return Some((Err(err), None));
                    }
                }
            }
            if let Some(d) = chunk_delay {
                tokio::time::sleep(d).await;
            }
            let len = (send - off).min(CHUNK as u64);
            st.n.download_bytes.fetch_add(len as usize, SeqCst);
            let chunk = pattern_chunk(off, len as usize);
            Some((Ok::<_, BoxError>(Frame::data(chunk)), Some(off + len)))
        }
    });
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(chunks)));
    let ct = HeaderValue::from_static("application/octet-stream");
    r.headers_mut().insert(header::CONTENT_TYPE, ct);
    if let Some((_, _, false)) = cut {
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    }
    r
}

/// Counts a download body dropped before it was produced to its end (`download_aborts`).
struct DownloadAbort {
    st: Arc<State>,
    done: AtomicBool,
}

impl Drop for DownloadAbort {
    fn drop(&mut self) {
        if !self.done.load(SeqCst) {
            self.st.n.download_aborts.fetch_add(1, SeqCst);
        }
    }
}

fn resp(status: u16, content_type: Option<&'static str>, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(BodyExt::boxed_unsync(
        Full::new(body.into()).map_err(|e| match e {}),
    ));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(ct) = content_type {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    r
}

fn json_resp(status: u16, v: &Value) -> Response<Body> {
    resp(
        status,
        Some("application/json; charset=utf-8"),
        v.to_string(),
    )
}

fn invalid_data(message: &str) -> Response<Body> {
    json_resp(400, &json!({"type": "invalid_data", "message": message}))
}

/// The 401 for wrong credentials on the login route: v1 `text/plain`, v2 JSON.
fn login_unauthorized(mode: Mode) -> Response<Body> {
    match mode {
        Mode::V1 => resp(401, Some("text/plain; charset=utf-8"), "Unauthorized"),
        Mode::V2 => json_resp(
            401,
            &json!({"type": "unauthorized", "message": "Invalid email or password"}),
        ),
    }
}

/// The 401 on admin routes (and v2's refresh): v1 bare text with no Content-Type, v2 JSON;
/// neither sends WWW-Authenticate.
fn unauthorized(mode: Mode) -> Response<Body> {
    match mode {
        Mode::V1 => resp(401, None, "Unauthorized"),
        Mode::V2 => json_resp(401, &json!({"message": "Unauthorized"})),
    }
}

/// IMF-fixdate (RFC 9110 §5.6.7) without a date crate: days-to-civil after H. Hinnant.
fn http_date(secs: u64) -> String {
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    format!(
        "{}, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT",
        WD[(days % 7) as usize],
        MO[(month - 1) as usize]
    )
}

// ---- issue 12, lockout: a route that always answers 401, and the token-check routes --------
//
// - `GET /store/customers/me` answers 401 in the mode's shape whatever the credentials (real v1
//   does so for the admin's token: the route wants a customer session), counted in
//   `always_401_requests`; never recorded in `requests()`.
// - Authenticated, v1 `GET /admin/auth` answers `{user: {id: USER_ID, email}}` for a JWT or the
//   static key (the proxy's token check, and the v1-api-token key check); v2
//   `GET /admin/users/me` answers `{user: {id: USER_ID, ..}}` for a JWT and 404 for an API key
//   (the actor is the key, as in real v2). Each counts in `token_checks`, and for v2-secret-key
//   `GET /admin/stores` counts too (its key check is the token check). Unauthenticated, they
//   401 like any admin route (and still count: Medusa did answer a check).

/// The path that answers 401 whatever the credentials.
pub const ALWAYS_401: &str = "/store/customers/me";

#[derive(Default)]
struct Lockout {
    always_401_requests: AtomicUsize,
    token_checks: AtomicUsize,
}

impl FakeMedusa {
    /// Requests to [`ALWAYS_401`].
    pub fn always_401_requests(&self) -> usize {
        self.state.lockout.always_401_requests.load(SeqCst)
    }
    /// Requests to a token-check route (v1 `GET /admin/auth`, v2 `GET /admin/users/me`,
    /// v2 `GET /admin/stores`), whatever their answer.
    pub fn token_checks(&self) -> usize {
        self.state.lockout.token_checks.load(SeqCst)
    }
}

fn is_check_route(mode: Mode, method: &Method, path: &str) -> bool {
    method == Method::GET
        && match mode {
            Mode::V1 => path == "/admin/auth",
            Mode::V2 => path == "/admin/users/me" || path == "/admin/stores",
        }
}

/// Answers [`ALWAYS_401`] before any authentication; counts check requests.
fn lockout_before_auth(st: &State, req: &Request<Incoming>) -> Option<Response<Body>> {
    let path = req.uri().path();
    if is_check_route(st.mode, req.method(), path) {
        st.lockout.token_checks.fetch_add(1, SeqCst);
    }
    if path != ALWAYS_401 {
        return None;
    }
    st.lockout.always_401_requests.fetch_add(1, SeqCst);
    Some(unauthorized(st.mode))
}

/// The check routes, once authenticated as `how`; `None`: the ordinary routes answer.
fn lockout_route(st: &State, how: Authed, method: &Method, path: &str) -> Option<Response<Body>> {
    if method != Method::GET {
        return None;
    }
    let email = lock(&st.knobs).email.clone();
    match (st.mode, path) {
        (Mode::V1, "/admin/auth") => Some(json_resp(
            200,
            &json!({"user": {"id": USER_ID, "email": email, "role": "admin"}}),
        )),
        (Mode::V2, "/admin/users/me") if how == Authed::Key => Some(json_resp(
            404,
            &json!({"type": "not_found", "message": "User with id: undefined was not found"}),
        )),
        (Mode::V2, "/admin/users/me") => Some(json_resp(
            200,
            &json!({"user": {"id": USER_ID, "email": email}}),
        )),
        _ => None,
    }
}

// ---- Credential-bearing routes (issue 12, "no credential leaves") ----
//
// What real Medusa returns with credentials in it: v1 user objects carry `api_token` (a static
// credential); invite listings (v1 and v2) carry each invite's `token`. Every secret value
// starts with `SECRET_MARK`, so a test can search a whole body for it.
//
// - v1 `GET /admin/auth` -> `{user}`; `GET /admin/users?limit=N` -> `{users: [N users], count}`
//   (default 3; users with an odd index also carry `api_token` nested in `metadata`, at
//   several depths); `GET /admin/users/{id}` -> `{user}`; `POST /admin/users/{id}` ->
//   `{user}` (an update); `GET /admin/notes` -> notes with an embedded `author` user.
// - v1 and v2 `GET /admin/invites` -> `{invites: [...]}` in the version's shape, with `token`.
// - Request header `x-fake-chunk-bytes: C` on these routes: the body is sent chunked, in
//   C-byte frames (no Content-Length). `x-fake-content-encoding: E` labels the response with
//   `Content-Encoding: E` (the bytes stay plain: only the label matters to the proxy).

/// Every credential value the fake hands out starts with this.
pub const SECRET_MARK: &str = "SECRET-";
/// Request header: send the body in frames of this many bytes.
pub const CHUNK_BYTES_HEADER: &str = "x-fake-chunk-bytes";
/// Request header: the `Content-Encoding` label to put on the response.
pub const ENCODING_HEADER: &str = "x-fake-content-encoding";

/// The api_token of v1 user `i` (user 0 is the admin the proxy logs in as).
pub fn v1_api_token(i: usize) -> String {
    format!("apitok-{SECRET_MARK}{i:06}-7f3a9c")
}

/// The id of v1 user `i`.
pub fn v1_user_id(i: usize) -> String {
    if i == 0 {
        USER_ID.to_owned()
    } else {
        format!("usr_{i:06}")
    }
}

/// v1 user `i` as Medusa 1.20.11 serialises it (api_token included).
pub fn v1_user(i: usize) -> Value {
    let mut metadata = json!({"note": "api_token is a field name", "i": i});
    if i % 2 == 1 {
        // Deeper copies of the field, in objects and arrays, as a plugin might store them.
        metadata["nested"] = json!({
            "api_token": v1_api_token(i),
            "list": [{"deeper": {"api_token": {"value": v1_api_token(i), "n": [1, 2]}}}],
        });
    }
    json!({
        "id": v1_user_id(i),
        "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:00.000Z",
        "deleted_at": null,
        "role": if i == 0 { "admin" } else { "member" },
        "email": format!("user{i}@example.com"),
        "first_name": "First\"quoted\"",
        "last_name": "Last\\",
        "api_token": v1_api_token(i),
        "metadata": metadata,
    })
}

/// The invite token of invite `i`.
pub fn invite_token(i: usize) -> String {
    format!("invtok-{SECRET_MARK}{i:04}.eyJhbGciOiJIUzI1NiJ9.e30")
}

/// `GET /admin/invites` in the shape of `mode`.
pub fn invites_json(mode: Mode) -> Value {
    let invites: Vec<Value> = (0..3)
        .map(|i| match mode {
            Mode::V1 => json!({
                "id": format!("invite_{i}"),
                "user_email": format!("new{i}@example.com"),
                "role": "member",
                "accepted": false,
                "token": invite_token(i),
                "expires_at": "2026-02-01T00:00:00.000Z",
                "metadata": null,
            }),
            Mode::V2 => json!({
                "id": format!("invite_{i}"),
                "email": format!("new{i}@example.com"),
                "accepted": false,
                "token": invite_token(i),
                "expires_at": "2026-02-01T00:00:00.000Z",
                "metadata": null,
                "created_at": "2026-01-01T00:00:00.000Z",
            }),
        })
        .collect();
    json!({"invites": invites, "count": 3, "offset": 0, "limit": 50})
}

/// `GET /admin/users?limit=n` (v1).
pub fn v1_users_json(n: usize) -> Value {
    json!({"users": (0..n).map(v1_user).collect::<Vec<_>>(), "count": n})
}

/// `GET /admin/notes` (v1): notes whose `author` is an embedded user.
pub fn v1_notes_json() -> Value {
    json!({"notes": [
        {"id": "note_1", "resource_type": "order", "resource_id": "order_1",
         "value": "call back", "author_id": USER_ID, "author": v1_user(0)},
        {"id": "note_2", "resource_type": "order", "resource_id": "order_1",
         "value": "done", "author_id": v1_user_id(1), "author": v1_user(1)},
    ], "count": 2, "offset": 0, "limit": 50})
}

fn credential_routes(
    mode: Mode,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Option<Response<Body>> {
    // Express matches routes case-insensitively and ignores one trailing slash.
    let path = uri.path().to_ascii_lowercase();
    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => &path,
    };
    let segments: Vec<&str> = path.split('/').collect();
    let limit = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("limit="))
        .and_then(|v| v.parse::<usize>().ok());
    let body = match (mode, method, segments.as_slice()) {
        (Mode::V1, &Method::GET, ["", "admin", "auth"]) => json!({"user": v1_user(0)}),
        (Mode::V1, &Method::GET, ["", "admin", "users"]) => v1_users_json(limit.unwrap_or(3)),
        (Mode::V1, &Method::GET | &Method::POST, ["", "admin", "users", id]) => {
            let i = (0..3).find(|i| v1_user_id(*i).eq_ignore_ascii_case(id))?;
            json!({"user": v1_user(i)})
        }
        (Mode::V1, &Method::GET, ["", "admin", "notes"]) => v1_notes_json(),
        (_, &Method::GET, ["", "admin", "invites"]) => invites_json(mode),
        _ => return None,
    };
    let text = Bytes::from(body.to_string());
    let mut r = match header_u64(headers, CHUNK_BYTES_HEADER) {
        Some(n) => {
            let n = (n as usize).max(1);
            let frames: Vec<Result<Frame<Bytes>, BoxError>> = (0..text.len())
                .step_by(n)
                .map(|at| Ok(Frame::data(text.slice(at..(at + n).min(text.len())))))
                .collect();
            let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream::iter(frames))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            r
        }
        None => resp(200, Some("application/json; charset=utf-8"), text),
    };
    if let Some(enc) = headers.get(ENCODING_HEADER) {
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, enc.clone());
    }
    Some(r)
}
