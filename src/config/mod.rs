//! Configuration, in two stages: raw TOML structs (`file.rs`, unknown keys rejected) ->
//! one validation (`validate.rs`, with `[access]` and `[policy]` in `rules.rs`) -> typed
//! [`Settings`] where every default ([`defaults`]) is filled in. Every error names the key it
//! is about. [`Rules`] are the access and policy rules the proxy applies, built from
//! [`Settings`] by reading the client keys file.

pub mod defaults;
mod file;
mod identities;
mod overrides;
mod rules;
mod validate;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};

use crate::access::{Cidr, HostList};
use crate::policy::Policy;
use crate::secret::{Secret, SecretError, SecretSource};

pub use identities::{
    ClientSettings, DEFAULT_IDENTITY, IdentitySettings, ListenerSettings, MAX_IDENTITIES,
    MainIdentity, NamedUpstream,
};
pub use overrides::Overrides;
pub use rules::Rules;

/// A config problem, naming the key (or file) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}", path = .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML, or has an unknown or mistyped key (toml's message names it).
    #[error("config file {path}: {message}", path = .path.display())]
    Syntax {
        /// The file (`<config>` for text, `<command line>` for flags alone).
        path: PathBuf,
        /// toml's message, with the line.
        message: String,
    },
    /// A value is refused (out of range, malformed, contradicting another key, or a
    /// required key missing).
    #[error("config key `{key}`: {problem}")]
    Invalid {
        /// The key, e.g. `access.allow_cidrs` (or a table, e.g. `upstream`), or
        /// `identities.reporting.upstream` for a key under a named table.
        key: Cow<'static, str>,
        /// What is wrong, quoting the value where it is not secret.
        problem: String,
    },
    /// A value given as a `run` flag is refused: named by the flag, and the key it stands for.
    #[error("`{flag}` ({key}): {problem}")]
    Flag {
        /// The flag, e.g. `--email`.
        flag: &'static str,
        /// The config key it replaces, e.g. `auth.email`.
        key: Cow<'static, str>,
        /// What is wrong, as for [`ConfigError::Invalid`].
        problem: String,
    },
}

fn invalid(key: impl Into<Cow<'static, str>>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// A whole config file, validated: every key checked, every default filled in. Secrets and
/// the client keys file are not read (see [`SecretSource::load`] and [`Rules::from_settings`]).
///
/// ```
/// use medusa_auth_proxy::config::Settings;
///
/// let s = Settings::from_toml(
///     "[upstream]\nurl = \"http://127.0.0.1:9000\"\n\
///      [auth]\nemail = \"admin@example.com\"\npassword_env = \"MEDUSA_PASSWORD\"\n",
/// )
/// .unwrap();
/// assert_eq!(s.proxy.listen.to_string(), "127.0.0.1:7000");
///
/// let e = Settings::from_toml("[upstream]\nurl = \"ftp://x\"\n").unwrap_err();
/// assert!(e.to_string().starts_with("config key `upstream.url`"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `[proxy]`: the listener tools connect to.
    pub proxy: ProxySettings,
    /// `[upstream]`: Medusa. In the general form, the first identity's upstream (by name).
    pub upstream: UpstreamSettings,
    /// `[auth]`: the Medusa account or key. In the general form, the first identity's (by
    /// name).
    pub auth: AuthSettings,
    /// `[ops]`: health, readiness, metrics.
    pub ops: OpsSettings,
    /// `[access]`: who may use the proxy.
    pub access: AccessSettings,
    /// `[policy]`: what callers may reach.
    pub policy: PolicySettings,
    /// `[log]`: format, level and the access log.
    pub log: LogSettings,
    /// `[upstreams.NAME]` in name order; the single form's `[upstream]` as
    /// [`DEFAULT_IDENTITY`].
    pub upstreams: Vec<NamedUpstream>,
    /// `[identities.NAME]` in name order (at least one); the single form's `[auth]` as
    /// [`DEFAULT_IDENTITY`].
    pub identities: Vec<IdentitySettings>,
    /// `[[clients]]`: which client keys act as which identity.
    pub clients: Vec<ClientSettings>,
    /// `[[listeners]]`: more listeners, each serving one identity.
    pub listeners: Vec<ListenerSettings>,
    /// Whose requests the main listener (`proxy.listen`) serves.
    pub main_identity: MainIdentity,
}

/// `log.format`: how diagnostic and access lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`. `RUST_LOG`, when set, wins over `level`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Text or JSON lines (default text).
    pub format: LogFormat,
    /// A tracing filter directive: "info", "debug", "medusa_auth_proxy=debug,info", ...
    /// (default [`defaults::LOG_LEVEL`]).
    pub level: String,
    /// One line per request (target `access`, see [`crate::access_log`]); reloadable.
    pub access: bool,
}

/// `[proxy]`: the listener tools connect to, and what a client may hold of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    /// Address tools connect to (default [`defaults::LISTEN`], loopback only).
    pub listen: SocketAddr,
    /// After SIGTERM/SIGINT, in-flight requests get this long to finish (default
    /// [`defaults::SHUTDOWN_GRACE`]).
    pub shutdown_grace: Duration,
    /// A client that has not sent a complete request head within this is disconnected
    /// (default [`defaults::HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: Duration,
    /// Requests in flight (until their response body ends); beyond it -> 503 at once
    /// (default [`defaults::MAX_CONCURRENT_REQUESTS`]). Also the most connections to Medusa.
    pub max_concurrent_requests: usize,
    /// Client connections open at once; more are closed at accept. `None`: the app's default,
    /// or less when the file descriptor limit cannot hold that many
    /// ([`crate::app::connection_budget`]).
    pub max_connections: Option<usize>,
    /// Client connections one peer may hold open at once on a listener (an IPv6 peer is its
    /// /64); more from it are closed at accept. `None` (the default): no per-peer cap, only
    /// `max_connections`.
    pub max_connections_per_peer: Option<usize>,
    /// HTTP/2 streams open at once on one connection (default
    /// [`defaults::MAX_STREAMS_PER_CONNECTION`]).
    pub max_streams_per_connection: u32,
    /// A connection with no request in flight for this long is closed (default
    /// [`defaults::IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// A client that takes no response bytes for this long is disconnected, and its request
    /// to Medusa aborted (default [`defaults::SEND_TIMEOUT`]).
    pub send_timeout: Duration,
    /// `tls_cert_file` and `tls_key_file`: serve TLS with this pair (see [`crate::tls`]);
    /// `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
}

/// A listener's certificate and private key files (PEM), set together; read by
/// [`crate::tls::TlsAcceptor`] at start-up and again whenever either file changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// The config key that named the certificate file (`proxy.tls_cert_file`): every message
    /// about a file names its key.
    pub cert_setting: Cow<'static, str>,
    /// The config key that named the key file (`proxy.tls_key_file`).
    pub key_setting: Cow<'static, str>,
}

/// `[access]`: who may use the proxy, validated (every entry parsed, defaults filled in, a
/// remote listener's exposure checked). [`Rules::from_settings`] adds the client keys.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessSettings {
    /// Peer ranges; default [`crate::access::default_allow_cidrs`] (loopback).
    pub allow_cidrs: Vec<Cidr>,
    /// The client keys file, read by [`Rules::from_settings`], not here (it holds secrets).
    pub client_keys_file: Option<PathBuf>,
    /// Host names requests may be addressed to; default
    /// [`crate::access::default_allow_hosts`] of `proxy.listen`.
    pub allow_hosts: HostList,
    /// Browser origins (`scheme://host[:port]`) allowed to drive the proxy; default none, so
    /// a request with any `Origin` header is refused.
    pub allow_origins: Vec<String>,
    /// The operator's opt-in to a remote listener with neither client keys nor a
    /// non-loopback `allow_cidrs` entry.
    pub allow_unauthenticated_remote: bool,
}

/// `[policy]`: what callers may reach, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySettings {
    /// The route policy: `allow_paths`, `deny_paths`, `read_only` and
    /// `unsafe_lift_builtin_denies`, defaults from [`PolicyConfig::default`](crate::policy::PolicyConfig).
    pub routes: Policy,
    /// `max_body`: largest request body forwarded, in bytes (default
    /// [`defaults::MAX_BODY`]); reloadable.
    pub max_body: u64,
}

/// `[upstream]`: Medusa's base URL and how to talk to it.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    /// `upstream.url` as configured, for messages.
    pub url: String,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host and port of Medusa.
    pub authority: Authority,
    /// Path prefix of the base URL without a trailing slash ("" for none).
    pub base_path: String,
    /// Bound on the TCP connect to Medusa (default [`defaults::CONNECT_TIMEOUT`]); the TLS
    /// handshake counts against `request_timeout`.
    pub connect_timeout: Duration,
    /// Bound on Medusa's response head to one request, from taking or opening its connection
    /// (TLS handshake included), and on reading a buffered request body from the client
    /// (default [`defaults::REQUEST_TIMEOUT`]).
    pub request_timeout: Duration,
    /// Idle pooled connections are closed after this; keep it below Medusa's keep-alive
    /// timeout (Node's default is 5 s) so a request never lands on a connection the server
    /// is closing (default [`defaults::POOL_IDLE_TIMEOUT`]).
    pub pool_idle_timeout: Duration,
    /// PEM file of extra CA certificates trusted for an https upstream (a private CA).
    pub ca_file: Option<PathBuf>,
}

/// `auth.flavor`: how the proxy gets its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Medusa v1: `POST /admin/auth/token` -> `{access_token}`, sent as a Bearer JWT.
    V1,
    /// Medusa v2: `POST /auth/user/emailpass` -> `{token}`, renewed with
    /// `POST /auth/token/refresh`, sent as a Bearer JWT.
    V2,
    /// Medusa v1 user's static API token, sent as `x-medusa-access-token`.
    V1ApiToken,
    /// Medusa v2 secret API key (`sk_...`), sent as `Authorization: Basic base64("sk_...:")`.
    V2SecretKey,
    /// Email/password; v1 or v2 decided by a probe at start-up.
    Auto,
}

impl Flavor {
    /// The name as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::V1 => "v1",
            Flavor::V2 => "v2",
            Flavor::V1ApiToken => "v1-api-token",
            Flavor::V2SecretKey => "v2-secret-key",
            Flavor::Auto => "auto",
        }
    }

    /// A static credential: no login, no expiry.
    pub fn is_static(self) -> bool {
        match self {
            Flavor::V1ApiToken | Flavor::V2SecretKey => true,
            Flavor::V1 | Flavor::V2 | Flavor::Auto => false,
        }
    }

    const ALL: [Flavor; 5] = [
        Flavor::V1,
        Flavor::V2,
        Flavor::V1ApiToken,
        Flavor::V2SecretKey,
        Flavor::Auto,
    ];
}

/// `[auth]`: the Medusa account (or key) the proxy acts as.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    /// How the credential is obtained (default in a file: [`Flavor::V1`]; without a file,
    /// from the command line alone: [`Flavor::Auto`]).
    pub flavor: Flavor,
    /// The account's email (login flavors); `None` for static flavors.
    pub email: Option<String>,
    /// The password (login flavors) or the API key (static flavors).
    pub secret: SecretSource,
    /// `"auth.password"` or `"auth.api_key"` (`"identities.NAME.password"`, ...), for
    /// messages.
    pub secret_name: Cow<'static, str>,
    /// A token is renewed, and no longer sent, this long before it expires (default
    /// [`defaults::REFRESH_BEFORE_EXPIRY`]).
    pub refresh_before_expiry: Duration,
    /// Bound on one login, and on one check of the token after a 401 (default
    /// [`defaults::LOGIN_TIMEOUT`]).
    pub login_timeout: Duration,
    /// Assumed when a token does not say when it expires (no JWT `exp`; default
    /// [`defaults::DEFAULT_TOKEN_LIFETIME`]).
    pub default_token_lifetime: Duration,
    /// Static flavors: how often a cheap authenticated request proves the key still works
    /// (default [`defaults::KEY_CHECK_INTERVAL`]).
    pub key_check_interval: Duration,
}

/// `[ops]`: the listener of probes and scrapes ([`crate::ops`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OpsSettings {
    /// Address of /healthz, /readyz and /metrics (default [`defaults::OPS_LISTEN`]).
    pub listen: SocketAddr,
}

impl Settings {
    /// Every identity's secret, in identity order (the single form's `[auth]` is its one
    /// identity). An error names the key the first unreadable one was given by
    /// (`auth.password`, `identities.NAME.api_key`, ...) and why, never its value.
    ///
    /// ```
    /// use medusa_auth_proxy::config::Settings;
    ///
    /// let s = Settings::from_toml(
    ///     "[upstream]\nurl = \"http://127.0.0.1:9000\"\n\
    ///      [auth]\nflavor = \"v2\"\nemail = \"a@example.com\"\npassword_env = \"UNSET_IN_THIS_EXAMPLE\"\n",
    /// )
    /// .unwrap();
    /// let (key, _why) = s.load_secrets().unwrap_err();
    /// assert_eq!(key, "auth.password");
    /// ```
    pub fn load_secrets(&self) -> Result<Vec<Secret>, (Cow<'static, str>, SecretError)> {
        self.identities
            .iter()
            .map(|id| {
                id.auth
                    .secret
                    .load()
                    .map_err(|e| (id.auth.secret_name.clone(), e))
            })
            .collect()
    }

    /// The config file (if any) with the command line's values over it, validated as one:
    /// a flag is checked exactly like the key it stands for. Without a file, the flags must
    /// name at least `upstream.url` and the credential; `auth.flavor` is then `auto`.
    ///
    /// ```
    /// use medusa_auth_proxy::config::{Overrides, Settings};
    ///
    /// let flags = Overrides {
    ///     upstream_url: Some("http://127.0.0.1:9000".into()),
    ///     email: Some("admin@example.com".into()),
    ///     password_env: Some("MEDUSA_PASSWORD".into()),
    ///     ..Overrides::default()
    /// };
    /// let s = Settings::load_with(None, &flags).unwrap();
    /// assert_eq!(s.auth.flavor.as_str(), "auto");
    /// ```
    pub fn load_with(path: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        if overrides.is_empty()
            && let Some(path) = path
        {
            return Settings::load(path);
        }
        let (text, shown) = match path {
            Some(path) => (
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?,
                path.to_path_buf(),
            ),
            None => (String::new(), PathBuf::from("<command line>")),
        };
        let syntax = |e: &dyn std::fmt::Display| ConfigError::Syntax {
            path: shown.clone(),
            message: e.to_string().trim_end().to_owned(),
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| syntax(&e))?;
        overrides.apply(&mut table, path.is_some());
        let merged = toml::to_string(&table).map_err(|e| syntax(&e))?;
        Settings::from_toml(&merged).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: shown.clone(),
                message,
            },
            // The value came from a flag: name the flag the user typed.
            ConfigError::Invalid { key, problem } => match overrides.flag_for(&key) {
                Some(flag) => ConfigError::Flag { flag, key, problem },
                None => ConfigError::Invalid { key, problem },
            },
            other => other,
        })
    }

    /// Read and validate the config file at `path`, like [`Settings::from_toml`]. Errors name
    /// the file ([`ConfigError::Read`], [`ConfigError::Syntax`]) or the key
    /// ([`ConfigError::Invalid`]).
    ///
    /// ```
    /// use medusa_auth_proxy::config::{ConfigError, Settings};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("proxy.toml");
    /// std::fs::write(
    ///     &path,
    ///     "[upstream]\nurl = \"http://127.0.0.1:9000\"\n\
    ///      [auth]\nflavor = \"v2\"\nemail = \"admin@example.com\"\npassword_env = \"MEDUSA_PASSWORD\"\n",
    /// )
    /// .unwrap();
    /// let s = Settings::load(&path).unwrap();
    /// assert_eq!(s.upstream.authority, "127.0.0.1:9000");
    ///
    /// let missing = Settings::load(&dir.path().join("nope.toml")).unwrap_err();
    /// assert!(matches!(missing, ConfigError::Read { .. }));
    /// ```
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::from_toml(&text).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parse and validate, in one stage: the result is usable as is, or the error names the
    /// key. Secrets are not loaded here (see [`SecretSource::load`], [`Rules::from_settings`]).
    /// Errors: [`ConfigError::Syntax`] (not TOML, an unknown or mistyped key; the path shown
    /// is `<config>`) or [`ConfigError::Invalid`] (a value refused).
    ///
    /// ```
    /// use std::time::Duration;
    /// use medusa_auth_proxy::config::{ConfigError, Settings};
    ///
    /// let s = Settings::from_toml(
    ///     r#"
    ///     [upstream]
    ///     url = "https://medusa.internal/shop"
    ///     request_timeout = "30s"
    ///     [auth]
    ///     flavor = "v2"
    ///     email = "robot@example.com"
    ///     password_file = "/run/secrets/medusa-password"
    ///     "#,
    /// )
    /// .unwrap();
    /// assert_eq!(s.upstream.base_path, "/shop");
    /// assert_eq!(s.upstream.request_timeout, Duration::from_secs(30));
    ///
    /// let e = Settings::from_toml("[upstream]\nurl = \"http://127.0.0.1:9000\"\ntimeout = 3\n");
    /// assert!(matches!(e, Err(ConfigError::Syntax { .. })));
    /// ```
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let raw: file::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::from("<config>"),
            // toml's message names the unknown or mistyped key and shows the line.
            message: e.to_string().trim_end().to_owned(),
        })?;
        validate::settings(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::default_allow_hosts;
    use crate::policy::{Decision, DenyReason, PolicyConfig};
    use http::Method;

    const MINIMAL: &str = r#"
[upstream]
url = "http://127.0.0.1:9000"
[auth]
email = "admin@example.com"
password_env = "PW"
"#;

    fn err(text: &str) -> String {
        Settings::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        assert_eq!(s.proxy.listen.to_string(), defaults::LISTEN);
        assert_eq!(s.ops.listen.to_string(), defaults::OPS_LISTEN);
        assert_eq!(s.proxy.shutdown_grace, Duration::from_secs(25));
        assert_eq!(s.auth.refresh_before_expiry, Duration::from_secs(60));
        assert_eq!(s.auth.default_token_lifetime, Duration::from_secs(3600));
        assert_eq!(s.upstream.authority.as_str(), "127.0.0.1:9000");
        assert_eq!(s.upstream.base_path, "");
        assert_eq!(s.auth.secret, SecretSource::Env("PW".into()));
        assert_eq!(s.auth.email.as_deref(), Some("admin@example.com"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err(&format!(
            "{MINIMAL}\n[ops]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n"
        ));
        assert!(e.contains("lisen"), "{e}");
        let e = err(&MINIMAL.replace("[auth]", "[auth]\npasword_env = \"X\""));
        assert!(e.contains("pasword_env"), "{e}");
        let e = err(&format!("{MINIMAL}\n[extra]\n"));
        assert!(e.contains("extra"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (MINIMAL.replace("http://127", "ftp://127"), "upstream.url"),
            (
                MINIMAL.replace("http://127.0.0.1:9000", "127.0.0.1:9000"),
                "upstream.url",
            ),
            (
                MINIMAL.replace("[auth]", "[auth]\nlogin_timeout = \"10\""),
                "auth.login_timeout",
            ),
            (
                MINIMAL.replace("[auth]", "[auth]\nlogin_timeout = \"0s\""),
                "auth.login_timeout",
            ),
            (
                MINIMAL.replace("[auth]", "[auth]\nflavor = \"v9\""),
                "auth.flavor",
            ),
            (
                MINIMAL.replace("[auth]", "[auth]\npassword_file = \"/x\""),
                "auth.password_env",
            ),
            (
                MINIMAL.replace("password_env = \"PW\"", ""),
                "auth.password_env",
            ),
            (
                MINIMAL.replace("email = \"admin@example.com\"", ""),
                "auth.email",
            ),
            (
                format!("[proxy]\nlisten = \"localhost\"\n{MINIMAL}"),
                "proxy.listen",
            ),
            (
                format!("[proxy]\nshutdown_grace = \"soon\"\n{MINIMAL}"),
                "proxy.shutdown_grace",
            ),
            (
                format!("[proxy]\nmax_connections_per_peer = 0\n{MINIMAL}"),
                "proxy.max_connections_per_peer",
            ),
            (
                format!("[proxy]\nmax_connections = 0\n{MINIMAL}"),
                "proxy.max_connections",
            ),
            (
                format!("[proxy]\nmax_streams_per_connection = 0\n{MINIMAL}"),
                "proxy.max_streams_per_connection",
            ),
            (
                format!("[proxy]\nidle_timeout = \"0s\"\n{MINIMAL}"),
                "proxy.idle_timeout",
            ),
            (
                format!("[proxy]\nsend_timeout = \"1\"\n{MINIMAL}"),
                "proxy.send_timeout",
            ),
            (
                MINIMAL.replace("9000\"", "9000\"\nrequest_timeout = \"1 fortnight\""),
                "upstream.request_timeout",
            ),
            (
                "[auth]\nemail=\"a\"\npassword_env=\"P\"".to_owned(),
                "upstream",
            ),
        ];
        for (text, key) in cases {
            let e = err(&text);
            assert!(e.contains(key), "expected {key} in {e:?}");
        }
    }

    #[test]
    fn flavors_take_the_right_secrets() {
        for f in ["v1", "v2", "auto"] {
            let s = Settings::from_toml(
                &MINIMAL.replace("[auth]", &format!("[auth]\nflavor = \"{f}\"")),
            )
            .unwrap();
            assert_eq!(s.auth.flavor.as_str(), f);
            assert_eq!(s.auth.secret_name, "auth.password");
        }
        let static_auth = "[upstream]\nurl=\"http://127.0.0.1:9\"\n[auth]\nflavor = \"v2-secret-key\"\napi_key_file = \"/k\"\n";
        let s = Settings::from_toml(static_auth).unwrap();
        assert!(s.auth.flavor.is_static() && s.auth.email.is_none());
        assert_eq!(s.auth.secret, SecretSource::File("/k".into()));
        let e = Settings::from_toml(&format!("{static_auth}email = \"a@b\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.email") && e.contains("api_key"), "{e}");
        let e = Settings::from_toml(&static_auth.replace("api_key_file = \"/k\"", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.api_key_env"), "{e}");
        let e = Settings::from_toml(&MINIMAL.replace("[auth]", "[auth]\napi_key_env = \"K\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.api_key_env"), "{e}");
    }

    #[test]
    fn security_defaults() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        let cidrs: Vec<String> = s.access.allow_cidrs.iter().map(Cidr::to_string).collect();
        assert_eq!(cidrs, ["127.0.0.0/8", "::1/128"]);
        assert_eq!(
            s.access.allow_hosts,
            HostList::from(vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "[::1]".to_owned()
            ])
        );
        assert!(s.access.allow_origins.is_empty() && s.access.client_keys_file.is_none());
        assert!(!s.access.allow_unauthenticated_remote);
        let admin_only = Policy::new(PolicyConfig {
            allow_paths: vec!["/admin/".into()],
            deny_paths: Vec::new(),
            read_only: false,
            lift_builtin: Vec::new(),
        })
        .unwrap();
        assert_eq!(s.policy.routes, admin_only);
        assert!(s.policy.routes.lifted().is_empty());
        assert_eq!(
            s.policy.routes.check(&Method::GET, "/store/products", None),
            Decision::Deny(DenyReason::NotAllowed)
        );
        assert_eq!(s.policy.max_body, 50 << 20);
        assert_eq!(s.proxy.max_concurrent_requests, 1024);
        assert_eq!(s.proxy.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.proxy.max_connections, None);
        assert_eq!(s.proxy.max_connections_per_peer, None);
        assert_eq!(s.proxy.max_streams_per_connection, 100);
        assert_eq!(s.proxy.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.proxy.send_timeout, Duration::from_secs(60));
    }

    #[test]
    fn base_path_is_kept_without_trailing_slash() {
        let s = Settings::from_toml(&MINIMAL.replace(":9000\"", ":9000/medusa/\"")).unwrap();
        assert_eq!(s.upstream.base_path, "/medusa");
    }

    #[test]
    fn default_allow_hosts_follow_the_listen_address() {
        let s = Settings::from_toml(&format!("[proxy]\nlisten = \"10.1.2.3:7000\"\n[access]\nallow_cidrs = [\"10.0.0.0/8\"]\n{MINIMAL}")).unwrap();
        assert_eq!(
            s.access.allow_hosts,
            HostList::from(default_allow_hosts(s.proxy.listen))
        );
        // Listed hosts replace the defaults, lowercased.
        let s = Settings::from_toml(&format!(
            "{MINIMAL}\n[access]\nallow_hosts = [\"Tools.Internal\"]\n"
        ))
        .unwrap();
        assert_eq!(
            s.access.allow_hosts,
            HostList::from(vec!["tools.internal".to_owned()])
        );
    }

    #[test]
    fn access_and_policy_errors_name_the_key_and_the_entry() {
        let cases = [
            (
                "[access]\nallow_cidrs = [\"10.0.0.0/33\"]",
                "access.allow_cidrs",
                "\"10.0.0.0/33\"",
            ),
            (
                "[access]\nallow_cidrs = [\"10.1.2.3/8\"]",
                "access.allow_cidrs",
                "did you mean",
            ),
            (
                "[access]\nallow_hosts = [\"localhost:7000\"]",
                "access.allow_hosts",
                "\"localhost:7000\"",
            ),
            (
                "[access]\nallow_origins = [\"https://a.example/\"]",
                "access.allow_origins",
                "\"https://a.example/\"",
            ),
            (
                "[policy]\nallow_paths = [\"admin/\"]",
                "policy.allow_paths",
                "\"admin/\"",
            ),
            (
                "[policy]\ndeny_paths = [\"/admin/*\"]",
                "policy.deny_paths",
                "wildcards",
            ),
            (
                "[policy]\nunsafe_lift_builtin_denies = [\"no-such-rule\"]",
                "policy.unsafe_lift_builtin_denies",
                "v1-auth-token",
            ),
            ("[policy]\nmax_body = \"50\"", "policy.max_body", "\"50\""),
        ];
        for (section, key, words) in cases {
            let e = err(&format!("{MINIMAL}\n{section}\n"));
            assert!(e.starts_with(&format!("config key `{key}`: ")), "{e}");
            assert!(e.contains(words), "{words:?} not in {e}");
        }
    }

    #[test]
    fn a_remote_listener_needs_keys_or_a_network_or_an_explicit_opt_in() {
        let remote = format!("[proxy]\nlisten = \"0.0.0.0:7000\"\n{MINIMAL}");
        let e = err(&remote);
        assert!(
            e.starts_with("config key `proxy.listen`: \"0.0.0.0:7000\""),
            "{e}"
        );
        assert!(
            e.contains("[access]") && e.contains("client_keys_file"),
            "{e}"
        );
        for ok in [
            "[access]\nallow_unauthenticated_remote = true",
            "[access]\nallow_cidrs = [\"10.0.0.0/8\"]",
            // Configured keys are enough: the file is read later, by `Rules::from_settings`.
            "[access]\nclient_keys_file = \"/nonexistent/keys\"",
        ] {
            assert!(
                Settings::from_toml(&format!("{remote}\n{ok}\n")).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn rules_read_the_keys_file_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let text = format!(
            "{MINIMAL}\n[access]\nclient_keys_file = \"{}\"\n",
            path.display()
        );
        let s = Settings::from_toml(&text).unwrap();
        // Missing file: an error naming the key and the path, from Rules only.
        let e = Rules::from_settings(&s).unwrap_err().to_string();
        assert!(
            e.starts_with("config key `access.client_keys_file`: "),
            "{e}"
        );
        assert!(e.contains(&path.display().to_string()), "{e}");
        let unread = Rules::without_secrets(&s);
        assert!(
            unread
                .access
                .client_keys
                .is_some_and(|k| k.verify(b"").is_none())
        );
        std::fs::write(&path, "a-client-key-of-32-characters-xx\n").unwrap();
        let rules = Rules::from_settings(&s).unwrap();
        let keys = rules.access.client_keys.unwrap();
        assert!(keys.verify(b"a-client-key-of-32-characters-xx").is_some());
        assert_eq!(rules.max_body, s.policy.max_body);
        assert_eq!(rules.policy, s.policy.routes);
    }
}
