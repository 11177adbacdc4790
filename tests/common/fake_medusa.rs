//! A fake Medusa admin API for the integration tests, modelled on what real servers do on the
//! wire (`../shared/medusa/README.md`). Every knob takes `&self`, so a test can change behaviour
//! mid-flight, and every counter is there so tests count instead of sleeping.
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
//! Both: `GET /admin/store` -> 200 `{"store": {..}}` when authenticated (the proxy's key check).
//!
//! Per-request knob: a request header `x-fake-delay-ms: N` delays that one response by N ms
//! (on top of `set_response_delay`); the auth decision is still taken on arrival, as Medusa does.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

pub const DEFAULT_EMAIL: &str = "admin@example.com";
pub const DEFAULT_PASSWORD: &str = "supersecret-password-123";
pub const USER_ID: &str = "usr_01TEST";
/// v2: the `auth_identity_id` claim of the admin's tokens.
pub const AUTH_IDENTITY_ID: &str = "authid_01TEST";
/// Request header that delays the response to that one request, in milliseconds.
pub const DELAY_HEADER: &str = "x-fake-delay-ms";
const CHUNK: usize = 64 * 1024;

/// Which Medusa the fake plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    V1,
    V2,
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
}

/// Counters, each with a getter of the same name: `login_attempts` (every request to the
/// mode's login route), `logins` (tokens issued by a login), `logins_in_flight`,
/// `max_concurrent_logins` (high-water mark), `refresh_attempts` (every v2 `POST
/// /auth/token/refresh`), `refreshes` (tokens issued by a refresh), `connections` (TCP
/// accepted), `expired_token_requests`, `rejected_requests` (every auth 401 off the login and
/// refresh routes), `key_requests` (requests authenticated by the static key),
/// `sessions_created` (v1 only).
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
    expired_token_requests,
    rejected_requests,
    key_requests,
    sessions_created
);

struct State {
    mode: Mode,
    knobs: Mutex<Knobs>,
    n: Counters,
    seq: AtomicU64,
    requests: Mutex<Vec<(u64, Recorded)>>,
    last_token: Mutex<Option<String>>,
    sessions: Mutex<HashSet<String>>,
    cookie_secret: String,
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
            }),
            n: Counters::default(),
            seq: AtomicU64::new(0),
            requests: Mutex::default(),
            last_token: Mutex::default(),
            sessions: Mutex::default(),
            cookie_secret: random_hex(32),
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
    pub fn last_token(&self) -> Option<String> {
        lock(&self.state.last_token).clone()
    }

    /// Polls `f` every 5 ms; panics after 10 s.
    pub async fn wait_until(&self, f: impl Fn(&FakeMedusa) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f(self) {
            if Instant::now() > deadline {
                panic!(
                    "fake medusa: condition not met within 10s (login_attempts={}, logins={}, \
                     refresh_attempts={}, refreshes={}, requests={}, rejected={}, connections={})",
                    self.login_attempts(),
                    self.logins(),
                    self.refresh_attempts(),
                    self.refreshes(),
                    self.requests().len(),
                    self.rejected_requests(),
                    self.connections()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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

fn hex(h: Sha256) -> String {
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
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let st = st.clone();
                            async move { Ok::<_, Infallible>(handle(&st, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .header_read_timeout(None)
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn handle(st: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let post = req.method() == Method::POST;
    let path = req.uri().path();
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

/// A JWT for the mode, signed with the current secret, `exp = iat + lifetime`.
fn issue(mode: Mode, k: &Knobs) -> jsonwebtoken::errors::Result<String> {
    let iat = now_secs();
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
    let secret = lock(&st.knobs).secret.clone();
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
        Some(exp) if now_secs() as f64 >= exp => Err(AuthFailure::Expired),
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
    let mut all = lock(&st.requests);
    let at = all.partition_point(|(s, _)| *s < seq);
    all.insert(at, (seq, rec));
}

async fn admin(st: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let seq = st.seq.fetch_add(1, SeqCst);
    let path = req.uri().path();
    // `/auth/*` is not an admin route: v1 has no such routes (404), v2's other than login and
    // refresh are not modelled (404). Every `/admin*` path needs credentials in both.
    let auth = if path == "/auth" || path.starts_with("/auth/") {
        Ok(Authed::Open)
    } else {
        authenticate(st, req.headers())
    };
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
        Ok(_) => route(st.mode, &parts.method, &parts.uri, len, &sha),
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
        (&Method::GET, ["", "admin", "store"]) => json_resp(
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
        (&Method::GET, ["", "admin", "download"]) => {
            let query = uri.query().unwrap_or("").split('&');
            let n = query
                .filter_map(|kv| kv.strip_prefix("bytes="))
                .find_map(|v| v.parse::<u64>().ok());
            let Some(total) = n else {
                return invalid_data("bytes must be a non-negative integer");
            };
            let chunks = stream::unfold(0u64, move |off| async move {
                let len = (total - off).min(CHUNK as u64);
                let chunk = pattern_chunk(off, len as usize);
                (len > 0).then(|| (Ok::<_, BoxError>(Frame::data(chunk)), off + len))
            });
            let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(chunks)));
            let ct = HeaderValue::from_static("application/octet-stream");
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
            r
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
