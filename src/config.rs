//! Configuration: raw TOML structs (unknown keys rejected) -> [`Settings::from_toml`] -> typed,
//! validated [`Settings`]. Every error names the key it is about.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use serde::Deserialize;

use crate::secret::SecretSource;

/// A config problem, naming the key (or file) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}", path = .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}", path = .path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

// ---- raw layer: exactly what the file may say -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    proxy: RawProxy,
    upstream: Option<RawUpstream>,
    auth: Option<RawAuth>,
    #[serde(default)]
    ops: RawOps,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
    access: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    allow_cidrs: Option<Vec<String>>,
    client_keys_file: Option<PathBuf>,
    allow_hosts: Option<Vec<String>>,
    allow_origins: Option<Vec<String>>,
    allow_unauthenticated_remote: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    allow_paths: Option<Vec<String>>,
    deny_paths: Option<Vec<String>>,
    read_only: Option<bool>,
    max_body: Option<String>,
    unsafe_lift_builtin_denies: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<String>,
    shutdown_grace: Option<String>,
    header_read_timeout: Option<String>,
    max_concurrent_requests: Option<usize>,
    max_connections: Option<usize>,
    max_streams_per_connection: Option<u32>,
    idle_timeout: Option<String>,
    send_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Option<String>,
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    pool_idle_timeout: Option<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    flavor: Option<String>,
    email: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    api_key_env: Option<String>,
    api_key_file: Option<PathBuf>,
    key_check_interval: Option<String>,
    refresh_before_expiry: Option<String>,
    login_timeout: Option<String>,
    default_token_lifetime: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOps {
    listen: Option<String>,
}

// ---- typed layer -----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub proxy: ProxySettings,
    pub upstream: UpstreamSettings,
    pub auth: AuthSettings,
    pub ops: OpsSettings,
    pub access: AccessSettings,
    pub policy: PolicySettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]`. `RUST_LOG`, when set, wins over `level`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter directive: "info", "debug", "medusa_auth_proxy=debug,info", ...
    pub level: String,
    /// One line per request (target `access`).
    pub access: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    pub listen: SocketAddr,
    pub shutdown_grace: Duration,
    /// A client that has not sent a complete request head within this is disconnected.
    pub header_read_timeout: Duration,
    /// Requests in flight (until their response body ends); beyond it -> 503 at once.
    pub max_concurrent_requests: usize,
    /// Client connections open at once; more are closed at accept. `None`: 4096, or less
    /// when the file descriptor limit cannot hold that many (see `app`).
    pub max_connections: Option<usize>,
    /// HTTP/2 streams open at once on one connection.
    pub max_streams_per_connection: u32,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A client that takes no response bytes for this long is disconnected.
    pub send_timeout: Duration,
}

/// `[access]`: who may use the proxy. Validated further by `proxy::access`.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessSettings {
    pub allow_cidrs: Vec<String>,
    pub client_keys_file: Option<PathBuf>,
    /// `None`: the defaults plus the listen host.
    pub allow_hosts: Option<Vec<String>>,
    pub allow_origins: Vec<String>,
    pub allow_unauthenticated_remote: bool,
}

/// `[policy]`: what callers may reach. Validated further by `proxy::policy`.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySettings {
    pub allow_paths: Vec<String>,
    pub deny_paths: Vec<String>,
    pub read_only: bool,
    pub max_body: u64,
    pub unsafe_lift_builtin_denies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    /// The URL as configured, for messages.
    pub url: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix of the base URL without a trailing slash ("" for none).
    pub base_path: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Idle pooled connections are closed after this; keep it below Medusa's keep-alive
    /// timeout (Node's default is 5 s) so a request never lands on a connection the server
    /// is closing.
    pub pool_idle_timeout: Duration,
    /// PEM file of extra CA certificates trusted for an https upstream (a private CA).
    pub ca_file: Option<PathBuf>,
}

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

#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    pub flavor: Flavor,
    /// The account's email (login flavors); `None` for static flavors.
    pub email: Option<String>,
    /// The password (login flavors) or the API key (static flavors).
    pub secret: SecretSource,
    /// `"auth.password"` or `"auth.api_key"`, for messages.
    pub secret_name: &'static str,
    pub refresh_before_expiry: Duration,
    pub login_timeout: Duration,
    pub default_token_lifetime: Duration,
    /// Static flavors: how often a cheap authenticated request proves the key still works.
    pub key_check_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpsSettings {
    pub listen: SocketAddr,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";
pub const DEFAULT_OPS_LISTEN: &str = "127.0.0.1:7001";

/// Values given on the command line (`run --upstream URL --email E --password-env NAME`):
/// they win over the file's, or stand in for a file altogether (the laptop case).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub upstream_url: Option<String>,
    pub flavor: Option<String>,
    pub email: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub listen: Option<String>,
    pub ops_listen: Option<String>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }

    /// Write the flags into a parsed config file's table, so that one validation covers both.
    fn apply(&self, table: &mut toml::Table, file_given: bool) {
        fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
            let entry = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                // A file with `auth = 3` is refused by validation anyway; the flag wins here.
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                t.insert(key.to_owned(), value);
            }
        }
        let text = |v: &str| toml::Value::String(v.to_owned());
        if let Some(v) = &self.upstream_url {
            set(table, "upstream", "url", text(v));
        }
        match &self.flavor {
            Some(v) => set(table, "auth", "flavor", text(v)),
            // Without a file there is no version to keep: detect it.
            None if !file_given => set(table, "auth", "flavor", text("auto")),
            None => {}
        }
        if let Some(v) = &self.email {
            set(table, "auth", "email", text(v));
        }
        if self.password_env.is_some() || self.password_file.is_some() {
            // A password flag replaces whatever secret the file names.
            if let Some(toml::Value::Table(auth)) = table.get_mut("auth") {
                for key in [
                    "password_env",
                    "password_file",
                    "api_key_env",
                    "api_key_file",
                ] {
                    auth.remove(key);
                }
            }
        }
        if let Some(v) = &self.password_env {
            set(table, "auth", "password_env", text(v));
        }
        if let Some(v) = &self.password_file {
            set(table, "auth", "password_file", text(&v.to_string_lossy()));
        }
        if let Some(v) = &self.listen {
            set(table, "proxy", "listen", text(v));
        }
        if let Some(v) = &self.ops_listen {
            set(table, "ops", "listen", text(v));
        }
    }
}

impl Settings {
    /// The config file (if any) with the command line's values over it.
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
            other => other,
        })
    }

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

    /// Parse and validate. Secrets are not loaded here (see [`SecretSource::load`]).
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::from("<config>"),
            // toml's message names the unknown or mistyped key and shows the line.
            message: e.to_string().trim_end().to_owned(),
        })?;

        let proxy = ProxySettings {
            listen: addr("proxy.listen", raw.proxy.listen.as_deref(), DEFAULT_LISTEN)?,
            shutdown_grace: duration(
                "proxy.shutdown_grace",
                raw.proxy.shutdown_grace.as_deref(),
                "25s",
            )?,
            header_read_timeout: nonzero(
                "proxy.header_read_timeout",
                duration(
                    "proxy.header_read_timeout",
                    raw.proxy.header_read_timeout.as_deref(),
                    "10s",
                )?,
            )?,
            max_concurrent_requests: match raw.proxy.max_concurrent_requests {
                None => 1024,
                Some(0) => {
                    return Err(invalid(
                        "proxy.max_concurrent_requests",
                        "must be at least 1",
                    ));
                }
                Some(n) => n,
            },
            max_connections: match raw.proxy.max_connections {
                Some(0) => return Err(invalid("proxy.max_connections", "must be at least 1")),
                other => other,
            },
            max_streams_per_connection: match raw.proxy.max_streams_per_connection {
                None => 100,
                Some(0) => {
                    return Err(invalid(
                        "proxy.max_streams_per_connection",
                        "must be at least 1",
                    ));
                }
                Some(n) => n,
            },
            idle_timeout: nonzero(
                "proxy.idle_timeout",
                duration(
                    "proxy.idle_timeout",
                    raw.proxy.idle_timeout.as_deref(),
                    "60s",
                )?,
            )?,
            send_timeout: nonzero(
                "proxy.send_timeout",
                duration(
                    "proxy.send_timeout",
                    raw.proxy.send_timeout.as_deref(),
                    "60s",
                )?,
            )?,
        };

        let up = raw
            .upstream
            .ok_or_else(|| invalid("upstream", "the [upstream] table is required"))?;
        let url = up.url.ok_or_else(|| {
            invalid(
                "upstream.url",
                "is required (Medusa's base URL, e.g. \"http://127.0.0.1:9000\")",
            )
        })?;
        let (scheme, authority, base_path) = parse_base_url(&url)?;
        let upstream = UpstreamSettings {
            url,
            scheme,
            authority,
            base_path,
            connect_timeout: duration(
                "upstream.connect_timeout",
                up.connect_timeout.as_deref(),
                "5s",
            )?,
            request_timeout: duration(
                "upstream.request_timeout",
                up.request_timeout.as_deref(),
                "60s",
            )?,
            pool_idle_timeout: duration(
                "upstream.pool_idle_timeout",
                up.pool_idle_timeout.as_deref(),
                "4s",
            )?,
            ca_file: up.ca_file,
        };
        if upstream.ca_file.is_some() && upstream.scheme != Scheme::HTTPS {
            return Err(invalid(
                "upstream.ca_file",
                "is only used with an https:// upstream.url",
            ));
        }

        let a = raw
            .auth
            .ok_or_else(|| invalid("auth", "the [auth] table is required"))?;
        let flavor = match a.flavor.as_deref() {
            None => Flavor::V1,
            Some(name) => Flavor::ALL
                .into_iter()
                .find(|f| f.as_str() == name)
                .ok_or_else(|| {
                    invalid(
                        "auth.flavor",
                        format!(
                            "unknown flavor {name:?}; supported: \"v1\", \"v2\", \"v1-api-token\", \"v2-secret-key\", \"auto\""
                        ),
                    )
                })?,
        };
        let (email, secret, secret_name) = if flavor.is_static() {
            for (key, set) in [
                ("auth.email", a.email.is_some()),
                ("auth.password_env", a.password_env.is_some()),
                ("auth.password_file", a.password_file.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        key,
                        format!(
                            "is not used by flavor \"{}\" (a static key); set auth.api_key_env or auth.api_key_file",
                            flavor.as_str()
                        ),
                    ));
                }
            }
            let key = secret_source(
                "auth.api_key_env",
                "auth.api_key_file",
                a.api_key_env,
                a.api_key_file,
            )?;
            (None, key, "auth.api_key")
        } else {
            for (key, set) in [
                ("auth.api_key_env", a.api_key_env.is_some()),
                ("auth.api_key_file", a.api_key_file.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        key,
                        format!(
                            "is only used by the static flavors \"v1-api-token\" and \"v2-secret-key\", not \"{}\"",
                            flavor.as_str()
                        ),
                    ));
                }
            }
            let email = a.email.filter(|e| !e.trim().is_empty()).ok_or_else(|| {
                invalid(
                    "auth.email",
                    format!("is required for flavor \"{}\"", flavor.as_str()),
                )
            })?;
            let pw = secret_source(
                "auth.password_env",
                "auth.password_file",
                a.password_env,
                a.password_file,
            )?;
            (Some(email), pw, "auth.password")
        };
        let auth = AuthSettings {
            flavor,
            email,
            secret,
            secret_name,
            key_check_interval: nonzero(
                "auth.key_check_interval",
                duration(
                    "auth.key_check_interval",
                    a.key_check_interval.as_deref(),
                    "30s",
                )?,
            )?,
            refresh_before_expiry: duration(
                "auth.refresh_before_expiry",
                a.refresh_before_expiry.as_deref(),
                "60s",
            )?,
            login_timeout: nonzero(
                "auth.login_timeout",
                duration("auth.login_timeout", a.login_timeout.as_deref(), "10s")?,
            )?,
            default_token_lifetime: nonzero(
                "auth.default_token_lifetime",
                duration(
                    "auth.default_token_lifetime",
                    a.default_token_lifetime.as_deref(),
                    "1h",
                )?,
            )?,
        };

        let ops = OpsSettings {
            listen: addr("ops.listen", raw.ops.listen.as_deref(), DEFAULT_OPS_LISTEN)?,
        };
        if ops.listen == proxy.listen && proxy.listen.port() != 0 {
            return Err(invalid("ops.listen", "must differ from proxy.listen"));
        }
        nonzero("upstream.request_timeout", upstream.request_timeout)?;
        nonzero("upstream.connect_timeout", upstream.connect_timeout)?;

        let access = AccessSettings {
            allow_cidrs: raw
                .access
                .allow_cidrs
                .unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1/128".into()]),
            client_keys_file: raw.access.client_keys_file,
            allow_hosts: raw.access.allow_hosts,
            allow_origins: raw.access.allow_origins.unwrap_or_default(),
            allow_unauthenticated_remote: raw.access.allow_unauthenticated_remote.unwrap_or(false),
        };
        let policy = PolicySettings {
            allow_paths: raw
                .policy
                .allow_paths
                .unwrap_or_else(|| vec!["/admin/".into()]),
            deny_paths: raw.policy.deny_paths.unwrap_or_default(),
            read_only: raw.policy.read_only.unwrap_or(false),
            max_body: size("policy.max_body", raw.policy.max_body.as_deref(), "50MiB")?,
            unsafe_lift_builtin_denies: raw.policy.unsafe_lift_builtin_denies.unwrap_or_default(),
        };

        let log = LogSettings {
            format: match raw.log.format.as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(invalid(
                        "log.format",
                        format!("{other:?} is not \"text\" or \"json\""),
                    ));
                }
            },
            level: match raw.log.level {
                None => "info".to_owned(),
                Some(l)
                    if tracing_subscriber::EnvFilter::try_new(&l).is_ok()
                        && !l.trim().is_empty() =>
                {
                    l
                }
                Some(l) => {
                    return Err(invalid(
                        "log.level",
                        format!(
                            "{l:?} is not a level (error, warn, info, debug, trace) or a RUST_LOG-style filter"
                        ),
                    ));
                }
            },
            access: raw.log.access.unwrap_or(true),
        };

        Ok(Settings {
            proxy,
            upstream,
            auth,
            ops,
            access,
            policy,
            log,
        })
    }
}

/// Exactly one of an env var / a file.
fn secret_source(
    env_key: &'static str,
    file_key: &'static str,
    env: Option<String>,
    file: Option<PathBuf>,
) -> Result<SecretSource, ConfigError> {
    match (env, file) {
        (Some(_), Some(_)) => Err(invalid(
            env_key,
            format!("set exactly one of {env_key} and {file_key}, not both"),
        )),
        (None, None) => Err(invalid(
            env_key,
            format!("one of {env_key} or {file_key} is required"),
        )),
        (Some(var), None) if var.is_empty() => {
            Err(invalid(env_key, "must name an environment variable"))
        }
        (Some(var), None) => Ok(SecretSource::Env(var)),
        (None, Some(path)) => Ok(SecretSource::File(path)),
    }
}

fn addr(key: &'static str, value: Option<&str>, default: &str) -> Result<SocketAddr, ConfigError> {
    let v = value.unwrap_or(default);
    v.parse().map_err(|_| {
        invalid(
            key,
            format!("{v:?} is not an IP:port address (e.g. \"127.0.0.1:7000\" or \"[::1]:7000\")"),
        )
    })
}

/// Durations are strings with units ("500ms", "30s", "5m", "1h"): a bare number is ambiguous.
pub fn duration(
    key: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let v = value.unwrap_or(default);
    humantime::parse_duration(v.trim()).map_err(|e| {
        invalid(
            key,
            format!("{v:?} is not a duration with a unit, like \"30s\" or \"5m\" ({e})"),
        )
    })
}

/// Sizes are strings with a unit: "512B", "64KiB", "50MiB", "1GiB" (also kB/MB/GB, powers of 10).
pub fn size(key: &'static str, value: Option<&str>, default: &str) -> Result<u64, ConfigError> {
    let v = value.unwrap_or(default).trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let mult: u64 = match unit.trim() {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(invalid(
                key,
                format!("{v:?} is not a size with a unit, like \"64KiB\" or \"50MiB\""),
            ));
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            invalid(
                key,
                format!("{v:?} is not a size with a unit, like \"64KiB\" or \"50MiB\""),
            )
        })
}

fn nonzero(key: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(invalid(key, "must be greater than zero"))
    } else {
        Ok(d)
    }
}

fn parse_base_url(url: &str) -> Result<(Scheme, Authority, String), ConfigError> {
    let key = "upstream.url";
    let uri: http::Uri = url
        .parse()
        .map_err(|e| invalid(key, format!("{url:?} is not a URL: {e}")))?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::HTTP,
        Some("https") => Scheme::HTTPS,
        Some(other) => {
            return Err(invalid(
                key,
                format!("scheme {other:?} is not supported; use http:// or https://"),
            ));
        }
        None => {
            return Err(invalid(
                key,
                format!("{url:?} has no scheme; write e.g. \"http://127.0.0.1:9000\""),
            ));
        }
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| invalid(key, format!("{url:?} has no host")))?;
    if authority.as_str().contains('@') {
        return Err(invalid(
            key,
            "must not contain user info; credentials belong in [auth]",
        ));
    }
    if uri.query().is_some() {
        return Err(invalid(key, "must not contain a query string"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok((scheme, authority, base_path))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.proxy.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.ops.listen.to_string(), DEFAULT_OPS_LISTEN);
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
    fn sizes_need_units() {
        assert_eq!(size("k", Some("50MiB"), "").unwrap(), 50 << 20);
        assert_eq!(size("k", Some("1kB"), "").unwrap(), 1000);
        assert_eq!(size("k", Some("0B"), "").unwrap(), 0);
        for bad in [
            "50",
            "MiB",
            "1.5MiB",
            "-1KiB",
            "99999999999999999999GiB",
            "5 parsecs",
        ] {
            assert!(
                size("policy.max_body", Some(bad), "")
                    .unwrap_err()
                    .to_string()
                    .contains("policy.max_body"),
                "{bad}"
            );
        }
    }

    #[test]
    fn security_defaults() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        assert_eq!(s.access.allow_cidrs, ["127.0.0.0/8", "::1/128"]);
        assert!(s.access.allow_hosts.is_none() && s.access.allow_origins.is_empty());
        assert!(!s.access.allow_unauthenticated_remote);
        assert_eq!(s.policy.allow_paths, ["/admin/"]);
        assert_eq!(s.policy.max_body, 50 << 20);
        assert_eq!(s.proxy.max_concurrent_requests, 1024);
        assert_eq!(s.proxy.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.proxy.max_connections, None);
        assert_eq!(s.proxy.max_streams_per_connection, 100);
        assert_eq!(s.proxy.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.proxy.send_timeout, Duration::from_secs(60));
    }

    #[test]
    fn base_path_is_kept_without_trailing_slash() {
        let s = Settings::from_toml(&MINIMAL.replace(":9000\"", ":9000/medusa/\"")).unwrap();
        assert_eq!(s.upstream.base_path, "/medusa");
    }
}
