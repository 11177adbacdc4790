//! Every default of the config file, written once. The validation (`validate.rs`,
//! `rules.rs`) takes them from here; the CLI's `init` template and help show them from here.
//!
//! Defaults that belong to a decision module live there and are used from there:
//! `[access]` `allow_cidrs` is [`crate::access::default_allow_cidrs`], `allow_hosts` is
//! [`crate::access::default_allow_hosts`], and `[policy]`'s route lists are
//! [`crate::policy::PolicyConfig::default`].

use std::time::Duration;

/// `proxy.listen`: loopback only.
pub const LISTEN: &str = "127.0.0.1:7000";
/// `ops.listen`: loopback only, next to the proxy.
pub const OPS_LISTEN: &str = "127.0.0.1:7001";

/// `proxy.shutdown_grace`: after SIGTERM/SIGINT, in-flight requests get this long to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// `proxy.header_read_timeout`: a client has this long to send a complete request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `proxy.max_concurrent_requests`: requests in flight at once; beyond it, 503 at once.
pub const MAX_CONCURRENT_REQUESTS: usize = 1024;
/// `proxy.max_streams_per_connection`: HTTP/2 streams open at once on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// `proxy.idle_timeout`: a connection with no request in flight this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `proxy.send_timeout`: a client that takes no response bytes this long is disconnected.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// `upstream.connect_timeout`: bound on the TCP connect to Medusa.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `upstream.request_timeout`: bound on waiting for Medusa's response head to one request,
/// and on reading a buffered request body from the client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// `upstream.pool_idle_timeout`: below Node's default keep-alive timeout of 5 s, so a request
/// never lands on a connection Medusa is closing.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// `auth.key_check_interval`: static flavors prove their key still works this often.
pub const KEY_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// `auth.refresh_before_expiry`: a token is renewed, and no longer sent, this long before
/// it expires.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(60);
/// `auth.login_timeout`: bound on one login (and on one check of the token after a 401).
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// `auth.default_token_lifetime`: assumed when a token does not say when it expires.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// `policy.max_body`: 50 MiB.
pub const MAX_BODY: u64 = 50 << 20;

/// `log.level`: a tracing filter directive; `RUST_LOG`, when set, wins.
pub const LOG_LEVEL: &str = "info";
