//! The one validation: raw TOML ([`super::file`]) to typed [`Settings`]. Defaults come from
//! [`super::defaults`]; `[access]` and `[policy]` are validated by [`super::rules`]. Every
//! error names the key it is about.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Authority, Scheme};

use super::file::{RawAuth, RawConfig, RawLog, RawOps, RawProxy, RawUpstream};
use super::{
    AuthSettings, ConfigError, Flavor, LogFormat, LogSettings, OpsSettings, ProxySettings,
    Settings, TlsFiles, UpstreamSettings, defaults, identities, invalid, rules,
};
use crate::secret::SecretSource;

/// Validates a parsed file; secrets and the client keys file are not read here.
pub(super) fn settings(raw: RawConfig) -> Result<Settings, ConfigError> {
    let main_identity = raw.proxy.identity.clone();
    let proxy = proxy(raw.proxy)?;
    let policy = rules::policy(raw.policy)?;
    let model = identities::model(
        identities::RawModel {
            upstream: raw.upstream,
            auth: raw.auth,
            upstreams: raw.upstreams,
            identities: raw.identities,
            clients: raw.clients,
            listeners: raw.listeners,
            main_identity,
        },
        &policy,
    )?;
    // The first identity's: what the single form always had, and what `check` shows.
    let first = &model.identities[0];
    let auth = first.auth.clone();
    let upstream = model
        .upstreams
        .iter()
        .find(|u| u.name == first.upstream)
        .map(|u| u.settings.clone())
        .ok_or_else(|| invalid("identities", "an identity names no upstream"))?;
    let ops = ops(raw.ops, &proxy)?;
    let access = rules::access(raw.access, &proxy, !model.clients.is_empty())?;
    for (n, l) in model.listeners.iter().enumerate() {
        access
            .exposure_ok(l.listen)
            .map_err(|e| invalid(format!("listeners[{n}].listen"), e))?;
        let taken = [Some(proxy.listen), Some(ops.listen)]
            .into_iter()
            .flatten()
            .chain(model.listeners[..n].iter().map(|o| o.listen));
        if l.listen.port() != 0 && taken.into_iter().any(|a| a == l.listen) {
            return Err(invalid(
                format!("listeners[{n}].listen"),
                format!(
                    "{} is already proxy.listen, ops.listen or another listener's",
                    l.listen
                ),
            ));
        }
    }
    let log = log(raw.log)?;
    Ok(Settings {
        proxy,
        upstream,
        auth,
        ops,
        access,
        policy,
        log,
        upstreams: model.upstreams,
        identities: model.identities,
        clients: model.clients,
        listeners: model.listeners,
        main_identity: model.main,
    })
}

fn proxy(raw: RawProxy) -> Result<ProxySettings, ConfigError> {
    Ok(ProxySettings {
        listen: addr("proxy.listen", raw.listen.as_deref(), defaults::LISTEN)?,
        shutdown_grace: duration(
            "proxy.shutdown_grace",
            raw.shutdown_grace.as_deref(),
            defaults::SHUTDOWN_GRACE,
        )?,
        header_read_timeout: positive(
            "proxy.header_read_timeout",
            raw.header_read_timeout.as_deref(),
            defaults::HEADER_READ_TIMEOUT,
        )?,
        max_concurrent_requests: at_least_one(
            "proxy.max_concurrent_requests",
            raw.max_concurrent_requests,
        )?
        .unwrap_or(defaults::MAX_CONCURRENT_REQUESTS),
        // No default here: the app picks one that fits the file descriptor limit.
        max_connections: at_least_one("proxy.max_connections", raw.max_connections)?,
        max_connections_per_peer: at_least_one(
            "proxy.max_connections_per_peer",
            raw.max_connections_per_peer,
        )?,
        max_streams_per_connection: at_least_one(
            "proxy.max_streams_per_connection",
            raw.max_streams_per_connection,
        )?
        .unwrap_or(defaults::MAX_STREAMS_PER_CONNECTION),
        idle_timeout: positive(
            "proxy.idle_timeout",
            raw.idle_timeout.as_deref(),
            defaults::IDLE_TIMEOUT,
        )?,
        send_timeout: positive(
            "proxy.send_timeout",
            raw.send_timeout.as_deref(),
            defaults::SEND_TIMEOUT,
        )?,
        tls: tls_files(
            ("proxy.tls_cert_file", raw.tls_cert_file),
            ("proxy.tls_key_file", raw.tls_key_file),
        )?,
    })
}

/// A certificate and its key, both or neither. The files are read when the listener starts
/// (and by `check`): the key is a secret, and files mounted from a Secret may not exist where
/// a config is merely validated.
pub(super) fn tls_files(
    (cert_key, cert): (impl Into<Cow<'static, str>>, Option<PathBuf>),
    (key_key, key): (impl Into<Cow<'static, str>>, Option<PathBuf>),
) -> Result<Option<TlsFiles>, ConfigError> {
    let (cert_key, key_key): (Cow<'static, str>, Cow<'static, str>) =
        (cert_key.into(), key_key.into());
    for (name, path) in [(&cert_key, &cert), (&key_key, &key)] {
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(invalid(name.clone(), "must name a PEM file"));
        }
    }
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert_file), Some(key_file)) => Ok(Some(TlsFiles {
            cert_file,
            key_file,
            cert_setting: cert_key,
            key_setting: key_key,
        })),
        (Some(_), None) => Err(invalid(
            key_key,
            format!("is required with {cert_key}: set both (TLS) or neither (plain HTTP)"),
        )),
        (None, Some(_)) => Err(invalid(
            cert_key,
            format!("is required with {key_key}: set both (TLS) or neither (plain HTTP)"),
        )),
    }
}

pub(super) fn upstream(raw: Option<RawUpstream>) -> Result<UpstreamSettings, ConfigError> {
    let up = raw.ok_or_else(|| invalid("upstream", "the [upstream] table is required"))?;
    let url = up.url.ok_or_else(|| {
        invalid(
            "upstream.url",
            "is required (Medusa's base URL, e.g. \"http://127.0.0.1:9000\")",
        )
    })?;
    let (scheme, authority, base_path) = parse_base_url(&url)?;
    if up.ca_file.is_some() && scheme != Scheme::HTTPS {
        return Err(invalid(
            "upstream.ca_file",
            "is only used with an https:// upstream.url",
        ));
    }
    Ok(UpstreamSettings {
        url,
        scheme,
        authority,
        base_path,
        connect_timeout: positive(
            "upstream.connect_timeout",
            up.connect_timeout.as_deref(),
            defaults::CONNECT_TIMEOUT,
        )?,
        request_timeout: positive(
            "upstream.request_timeout",
            up.request_timeout.as_deref(),
            defaults::REQUEST_TIMEOUT,
        )?,
        pool_idle_timeout: duration(
            "upstream.pool_idle_timeout",
            up.pool_idle_timeout.as_deref(),
            defaults::POOL_IDLE_TIMEOUT,
        )?,
        ca_file: up.ca_file,
    })
}

pub(super) fn auth(raw: Option<RawAuth>) -> Result<AuthSettings, ConfigError> {
    let a = raw.ok_or_else(|| invalid("auth", "the [auth] table is required"))?;
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
        (None, key, Cow::Borrowed("auth.api_key"))
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
        (Some(email), pw, Cow::Borrowed("auth.password"))
    };
    Ok(AuthSettings {
        flavor,
        email,
        secret,
        secret_name,
        key_check_interval: positive(
            "auth.key_check_interval",
            a.key_check_interval.as_deref(),
            defaults::KEY_CHECK_INTERVAL,
        )?,
        refresh_before_expiry: duration(
            "auth.refresh_before_expiry",
            a.refresh_before_expiry.as_deref(),
            defaults::REFRESH_BEFORE_EXPIRY,
        )?,
        login_timeout: positive(
            "auth.login_timeout",
            a.login_timeout.as_deref(),
            defaults::LOGIN_TIMEOUT,
        )?,
        default_token_lifetime: positive(
            "auth.default_token_lifetime",
            a.default_token_lifetime.as_deref(),
            defaults::DEFAULT_TOKEN_LIFETIME,
        )?,
    })
}

fn ops(raw: RawOps, proxy: &ProxySettings) -> Result<OpsSettings, ConfigError> {
    let ops = OpsSettings {
        listen: addr("ops.listen", raw.listen.as_deref(), defaults::OPS_LISTEN)?,
    };
    if ops.listen == proxy.listen && proxy.listen.port() != 0 {
        return Err(invalid("ops.listen", "must differ from proxy.listen"));
    }
    Ok(ops)
}

fn log(raw: RawLog) -> Result<LogSettings, ConfigError> {
    Ok(LogSettings {
        format: match raw.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?} is not \"text\" or \"json\""),
                ));
            }
        },
        level: match raw.level {
            None => defaults::LOG_LEVEL.to_owned(),
            Some(l)
                if tracing_subscriber::EnvFilter::try_new(&l).is_ok() && !l.trim().is_empty() =>
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
        access: raw.access.unwrap_or(true),
    })
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

pub(super) fn addr(
    key: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let v = value.unwrap_or(default);
    v.parse().map_err(|_| {
        invalid(
            key,
            format!("{v:?} is not an IP:port address (e.g. \"127.0.0.1:7000\" or \"[::1]:7000\")"),
        )
    })
}

/// Durations are strings with units ("500ms", "30s", "5m", "1h"): a bare number is ambiguous.
fn duration(
    key: &'static str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(v) = value else {
        return Ok(default);
    };
    humantime::parse_duration(v.trim()).map_err(|e| {
        invalid(
            key,
            format!("{v:?} is not a duration with a unit, like \"30s\" or \"5m\" ({e})"),
        )
    })
}

/// A [`duration`] that must be greater than zero.
fn positive(
    key: &'static str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(key, value, default)?;
    if d.is_zero() {
        Err(invalid(key, "must be greater than zero"))
    } else {
        Ok(d)
    }
}

/// A count that, when given, must be at least 1.
pub(super) fn at_least_one<N: Default + PartialEq>(
    key: &'static str,
    value: Option<N>,
) -> Result<Option<N>, ConfigError> {
    match value {
        Some(n) if n == N::default() => Err(invalid(key, "must be at least 1")),
        other => Ok(other),
    }
}

/// Sizes are strings with a unit: "512B", "64KiB", "50MiB", "1GiB" (also kB/MB/GB, powers of 10).
pub(super) fn size(
    key: &'static str,
    value: Option<&str>,
    default: u64,
) -> Result<u64, ConfigError> {
    let Some(v) = value else {
        return Ok(default);
    };
    let v = v.trim();
    let not_a_size = || {
        invalid(
            key,
            format!("{v:?} is not a size with a unit, like \"64KiB\" or \"50MiB\""),
        )
    };
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
        _ => return Err(not_a_size()),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(not_a_size)
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

    #[test]
    fn sizes_need_units() {
        assert_eq!(size("k", Some("50MiB"), 0).unwrap(), 50 << 20);
        assert_eq!(size("k", Some("1kB"), 0).unwrap(), 1000);
        assert_eq!(size("k", Some("0B"), 0).unwrap(), 0);
        for bad in [
            "50",
            "MiB",
            "1.5MiB",
            "-1KiB",
            "99999999999999999999GiB",
            "5 parsecs",
        ] {
            assert!(
                size("policy.max_body", Some(bad), 0)
                    .unwrap_err()
                    .to_string()
                    .contains("policy.max_body"),
                "{bad}"
            );
        }
    }

    #[test]
    fn tls_files_come_in_pairs_and_errors_name_the_missing_key() {
        let config = |proxy: &str| {
            Settings::from_toml(&format!(
                "[proxy]\n{proxy}\n[upstream]\nurl = \"http://127.0.0.1:9000\"\n\
                 [auth]\nemail = \"a@example.com\"\npassword_env = \"PW\"\n"
            ))
        };
        assert_eq!(config("").unwrap().proxy.tls, None);
        let tls = config("tls_cert_file = \"/tls/crt\"\ntls_key_file = \"/tls/key\"")
            .unwrap()
            .proxy
            .tls
            .unwrap();
        assert_eq!(
            (tls.cert_file, tls.key_file),
            (PathBuf::from("/tls/crt"), PathBuf::from("/tls/key"))
        );
        for (proxy, key) in [
            ("tls_cert_file = \"/tls/crt\"", "proxy.tls_key_file"),
            ("tls_key_file = \"/tls/key\"", "proxy.tls_cert_file"),
            (
                "tls_cert_file = \"\"\ntls_key_file = \"/tls/key\"",
                "proxy.tls_cert_file",
            ),
        ] {
            let e = config(proxy).unwrap_err().to_string();
            assert!(e.starts_with(&format!("config key `{key}`: ")), "{e}");
        }
    }

    #[test]
    fn defaults_apply_only_when_the_key_is_absent() {
        assert_eq!(size("k", None, 7).unwrap(), 7);
        assert_eq!(
            duration("k", None, Duration::from_secs(3)).unwrap(),
            Duration::from_secs(3)
        );
        assert!(positive("k", Some("0s"), Duration::from_secs(3)).is_err());
        assert_eq!(at_least_one::<u32>("k", None).unwrap(), None);
        assert!(at_least_one("k", Some(0usize)).is_err());
    }
}
