//! The identity model: `[upstreams.NAME]`, `[identities.NAME]` (with an optional narrowing
//! `policy`), `[[clients]]` and `[[listeners]]`, validated with the rest of the file. The
//! single form (`[upstream]` + `[auth]`) is one upstream and one identity, both named
//! [`DEFAULT_IDENTITY`]. Errors name the key under its table, e.g.
//! `identities.reporting.upstream`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::file::{RawAuth, RawClient, RawIdentity, RawListener, RawUpstream};
use super::validate::{addr, at_least_one, auth, upstream};
use super::{AuthSettings, ConfigError, PolicySettings, UpstreamSettings, invalid};
use crate::policy::{Narrowing, Policy};

/// The name of the single form's identity and upstream.
pub const DEFAULT_IDENTITY: &str = "default";

/// At most this many identities: a client key's identities are kept as a bit set.
pub const MAX_IDENTITIES: usize = 63;

/// One Medusa: `[upstreams.NAME]`, or the single form's `[upstream]` as `default`.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedUpstream {
    /// The table's name.
    pub name: String,
    /// Its settings (every `[upstream]` key).
    pub settings: UpstreamSettings,
}

/// One account (or key) on one upstream: `[identities.NAME]`, or the single form's `[auth]`
/// as `default`.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentitySettings {
    /// The table's name: in logs, metrics, `/readyz`.
    pub name: String,
    /// The name of its upstream in [`super::Settings::upstreams`].
    pub upstream: String,
    /// Its credential (every `[auth]` key).
    pub auth: AuthSettings,
    /// `[identities.NAME.policy]`: checked after the global `[policy]`, only narrowing it
    /// (see [`Policy::narrow`]). `None`: the global policy alone.
    pub policy: Option<Policy>,
}

/// One `[[clients]]` entry: the callers whose keys are in `keys_file` act as `identity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// A client keys file (the format of `access.client_keys_file`), read by
    /// [`super::Rules::from_settings`].
    pub keys_file: PathBuf,
    /// The identity's index in [`super::Settings::identities`].
    pub identity: usize,
}

/// One `[[listeners]]` entry: one more listener, serving one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Its address.
    pub listen: SocketAddr,
    /// The identity's index in [`super::Settings::identities`].
    pub identity: usize,
    /// Its own `proxy.max_concurrent_requests` (default: `[proxy]`'s).
    pub max_concurrent_requests: Option<usize>,
    /// Its own `proxy.max_connections` (default: `[proxy]`'s).
    pub max_connections: Option<usize>,
    /// Its own `tls_cert_file` and `tls_key_file` (not `[proxy]`'s); `None`: plain HTTP.
    pub tls: Option<super::TlsFiles>,
}

/// Whose requests the main listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MainIdentity {
    /// Always this identity (index): the single form, one identity, or `proxy.identity`.
    Fixed(usize),
    /// The identity the caller's client key maps to through `[[clients]]`.
    ByClientKey,
}

/// The validated identity model.
pub(super) struct Model {
    pub(super) upstreams: Vec<NamedUpstream>,
    pub(super) identities: Vec<IdentitySettings>,
    pub(super) clients: Vec<ClientSettings>,
    pub(super) listeners: Vec<ListenerSettings>,
    pub(super) main: MainIdentity,
}

/// The raw tables of the model.
pub(super) struct RawModel {
    pub(super) upstream: Option<RawUpstream>,
    pub(super) auth: Option<RawAuth>,
    pub(super) upstreams: Option<BTreeMap<String, RawUpstream>>,
    pub(super) identities: Option<BTreeMap<String, RawIdentity>>,
    pub(super) clients: Vec<RawClient>,
    pub(super) listeners: Vec<RawListener>,
    /// `proxy.identity`.
    pub(super) main_identity: Option<String>,
}

/// A key of `[upstream]` / `[auth]` / `[policy]` as the same key under a named table:
/// `upstream.url` -> `upstreams.prod.url`; problems that name sibling keys follow.
fn rekey(e: ConfigError, from: &str, to: &str) -> ConfigError {
    match e {
        ConfigError::Invalid { key, problem } => {
            let key: Cow<'static, str> = match key.strip_prefix(from) {
                Some(rest) if rest.is_empty() || rest.starts_with('.') => {
                    Cow::Owned(format!("{to}{rest}"))
                }
                _ => key,
            };
            ConfigError::Invalid {
                key,
                problem: problem.replace(&format!("{from}."), &format!("{to}.")),
            }
        }
        other => other,
    }
}

fn valid_name(table: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("{table}.{name}"),
            "a name is 1 to 64 letters, digits, '-' or '_' (it appears in logs, metrics and /readyz)",
        ))
    }
}

/// Validates the model; `policy` is the global one that identity policies narrow.
pub(super) fn model(raw: RawModel, policy: &PolicySettings) -> Result<Model, ConfigError> {
    let general = raw.upstreams.is_some() || raw.identities.is_some();
    let (upstreams, identities) = if general {
        for (table, set) in [
            ("upstream", raw.upstream.is_some()),
            ("auth", raw.auth.is_some()),
        ] {
            if set {
                return Err(invalid(
                    table,
                    "use either [upstream] + [auth] (one identity) or [upstreams.NAME] + \
                     [identities.NAME], not both",
                ));
            }
        }
        general_form(raw.upstreams, raw.identities, policy)?
    } else {
        let up = upstream(raw.upstream)?;
        let auth = auth(raw.auth)?;
        (
            vec![NamedUpstream {
                name: DEFAULT_IDENTITY.to_owned(),
                settings: up,
            }],
            vec![IdentitySettings {
                name: DEFAULT_IDENTITY.to_owned(),
                upstream: DEFAULT_IDENTITY.to_owned(),
                auth,
                policy: None,
            }],
        )
    };
    let find = |key: String, name: Option<String>| -> Result<usize, ConfigError> {
        let name = name.ok_or_else(|| invalid(key.clone(), "is required (an identity's name)"))?;
        identities
            .iter()
            .position(|i| i.name == name)
            .ok_or_else(|| {
                invalid(
                    key,
                    unknown("identity", &name, identities.iter().map(|i| &i.name)),
                )
            })
    };
    let mut clients = Vec::with_capacity(raw.clients.len());
    for (n, c) in raw.clients.into_iter().enumerate() {
        let keys_file = c.keys_file.ok_or_else(|| {
            invalid(
                format!("clients[{n}].keys_file"),
                "is required (a client keys file, one key a line)",
            )
        })?;
        let identity = find(format!("clients[{n}].identity"), c.identity)?;
        clients.push(ClientSettings {
            keys_file,
            identity,
        });
    }
    let mut listeners = Vec::with_capacity(raw.listeners.len());
    for (n, l) in raw.listeners.into_iter().enumerate() {
        let key = format!("listeners[{n}].listen");
        let listen = match l.listen {
            Some(text) => addr_owned(&key, &text)?,
            None => return Err(invalid(key, "is required (e.g. \"127.0.0.1:7002\")")),
        };
        let identity = find(format!("listeners[{n}].identity"), l.identity)?;
        listeners.push(ListenerSettings {
            listen,
            identity,
            max_concurrent_requests: at_least_one(
                "listeners.max_concurrent_requests",
                l.max_concurrent_requests,
            )?,
            max_connections: at_least_one("listeners.max_connections", l.max_connections)?,
            tls: super::validate::tls_files(
                (format!("listeners[{n}].tls_cert_file"), l.tls_cert_file),
                (format!("listeners[{n}].tls_key_file"), l.tls_key_file),
            )?,
        });
    }
    let main = match raw.main_identity {
        Some(name) => {
            if !clients.is_empty() {
                return Err(invalid(
                    "proxy.identity",
                    "the main listener serves either one identity or the identities of \
                     [[clients]]' keys, not both",
                ));
            }
            MainIdentity::Fixed(find("proxy.identity".to_owned(), Some(name))?)
        }
        None if !clients.is_empty() => MainIdentity::ByClientKey,
        None if identities.len() == 1 => MainIdentity::Fixed(0),
        None => {
            return Err(invalid(
                "clients",
                format!(
                    "{} identities are configured, so the main listener (proxy.listen) needs \
                     [[clients]] entries mapping client keys to identities, or \
                     proxy.identity naming the one it serves",
                    identities.len()
                ),
            ));
        }
    };
    Ok(Model {
        upstreams,
        identities,
        clients,
        listeners,
        main,
    })
}

fn addr_owned(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    addr("listen", Some(text), "").map_err(|e| rekey(e, "listen", key))
}

fn unknown<'a>(what: &str, name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let known: Vec<String> = known.map(|n| format!("{n:?}")).collect();
    format!(
        "no {what} is named {name:?}; configured: {}",
        known.join(", ")
    )
}

type Tables = (Vec<NamedUpstream>, Vec<IdentitySettings>);

fn general_form(
    raw_upstreams: Option<BTreeMap<String, RawUpstream>>,
    raw_identities: Option<BTreeMap<String, RawIdentity>>,
    global: &PolicySettings,
) -> Result<Tables, ConfigError> {
    let mut upstreams = Vec::new();
    for (name, raw) in raw_upstreams.unwrap_or_default() {
        valid_name("upstreams", &name)?;
        let table = format!("upstreams.{name}");
        let settings = upstream(Some(raw)).map_err(|e| rekey(e, "upstream", &table))?;
        upstreams.push(NamedUpstream { name, settings });
    }
    let raw_identities = raw_identities.unwrap_or_default();
    if raw_identities.is_empty() {
        return Err(invalid(
            "identities",
            "at least one [identities.NAME] table is required with [upstreams.NAME]",
        ));
    }
    if raw_identities.len() > MAX_IDENTITIES {
        return Err(invalid(
            "identities",
            format!("at most {MAX_IDENTITIES} identities are supported"),
        ));
    }
    let mut identities = Vec::new();
    for (name, raw) in raw_identities {
        valid_name("identities", &name)?;
        let table = format!("identities.{name}");
        let (raw_auth, up, raw_policy) = raw.split();
        let up = up.ok_or_else(|| {
            invalid(
                format!("{table}.upstream"),
                "is required (the name of an [upstreams.NAME] table)",
            )
        })?;
        if !upstreams.iter().any(|u| u.name == up) {
            return Err(invalid(
                format!("{table}.upstream"),
                unknown("upstream", &up, upstreams.iter().map(|u| &u.name)),
            ));
        }
        let mut auth = auth(Some(raw_auth)).map_err(|e| rekey(e, "auth", &table))?;
        auth.secret_name = Cow::Owned(auth.secret_name.replacen("auth", &table, 1));
        let policy = match raw_policy {
            None => None,
            Some(p) => Some(
                global
                    .routes
                    .narrow(Narrowing {
                        allow_paths: p.allow_paths,
                        deny_paths: p.deny_paths.unwrap_or_default(),
                        read_only: p.read_only.unwrap_or(false),
                    })
                    .map_err(|e| {
                        rekey(
                            invalid(e.key(), e.problem()),
                            "policy",
                            &format!("{table}.policy"),
                        )
                    })?,
            ),
        };
        identities.push(IdentitySettings {
            name,
            upstream: up,
            auth,
            policy,
        });
    }
    Ok((upstreams, identities))
}

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use super::*;
    use http::Method;

    const GENERAL: &str = r#"
[upstreams.prod]
url = "https://medusa.prod.internal"
[upstreams.staging]
url = "http://127.0.0.1:9000"
request_timeout = "5s"

[identities.reporting]
upstream = "prod"
flavor = "v2"
email = "reporting@acme.test"
password_file = "/run/secrets/reporting-password"
[identities.reporting.policy]
read_only = true
allow_paths = ["/admin/orders", "/admin/products"]

[identities.catalog]
upstream = "prod"
flavor = "v2-secret-key"
api_key_file = "/run/secrets/catalog-key"

[identities.staging-admin]
upstream = "staging"
flavor = "auto"
email = "admin@medusa-test.com"
password_env = "STAGING_PASSWORD"

[[clients]]
keys_file = "/run/secrets/reporting-keys"
identity = "reporting"
[[clients]]
keys_file = "/run/secrets/catalog-keys"
identity = "catalog"

[[listeners]]
listen = "127.0.0.1:7002"
identity = "staging-admin"
"#;

    fn err(text: &str) -> String {
        Settings::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn the_single_form_is_one_identity_named_default() {
        let s = Settings::from_toml(
            "[upstream]\nurl = \"http://127.0.0.1:9000\"\n[auth]\nemail = \"a@b.c\"\npassword_env = \"PW\"\n",
        )
        .unwrap();
        assert_eq!(s.identities.len(), 1);
        assert_eq!(s.identities[0].name, DEFAULT_IDENTITY);
        assert_eq!(s.identities[0].auth, s.auth);
        assert!(s.identities[0].policy.is_none());
        assert_eq!(s.upstreams[0].settings, s.upstream);
        assert_eq!(s.main_identity, MainIdentity::Fixed(0));
        assert!(s.clients.is_empty() && s.listeners.is_empty());
        assert_eq!(s.auth.secret_name, "auth.password");
    }

    #[test]
    fn the_general_form_parses() {
        let s = Settings::from_toml(GENERAL).unwrap();
        let names: Vec<&str> = s.identities.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["catalog", "reporting", "staging-admin"]);
        let ups: Vec<&str> = s.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(ups, ["prod", "staging"]);
        assert_eq!(s.main_identity, MainIdentity::ByClientKey);
        assert_eq!(s.clients[0].identity, 1);
        assert_eq!(s.clients[1].identity, 0);
        assert_eq!(s.listeners[0].identity, 2);
        assert_eq!(s.listeners[0].listen.to_string(), "127.0.0.1:7002");
        assert_eq!(s.listeners[0].tls, None);
        let with_tls = GENERAL.replace(
            "listen = \"127.0.0.1:7002\"",
            "listen = \"127.0.0.1:7002\"\ntls_cert_file = \"/tls/crt\"\ntls_key_file = \"/tls/key\"",
        );
        let tls = Settings::from_toml(&with_tls).unwrap().listeners[0]
            .tls
            .clone()
            .expect("the listener's own pair");
        assert_eq!(tls.key_file, PathBuf::from("/tls/key"));
        assert_eq!(tls.cert_setting, "listeners[0].tls_cert_file");
        // The first identity by name stands for the single form's [upstream] / [auth].
        assert_eq!(s.upstream.url, "https://medusa.prod.internal");
        assert_eq!(s.auth.secret_name, "identities.catalog.api_key");
        assert_eq!(
            s.identities[2].auth.secret_name,
            "identities.staging-admin.password"
        );
        let reporting = s.identities[1].policy.as_ref().unwrap();
        assert_eq!(
            reporting.check(&Method::GET, "/admin/orders", None),
            crate::policy::Decision::Allow
        );
        assert_ne!(
            reporting.check(&Method::POST, "/admin/orders", None),
            crate::policy::Decision::Allow
        );
        assert_ne!(
            reporting.check(&Method::GET, "/admin/customers", None),
            crate::policy::Decision::Allow
        );
        assert!(s.identities[0].policy.is_none());
    }

    #[test]
    fn errors_name_the_key_under_its_table() {
        let cases = [
            (
                GENERAL.replace("upstream = \"staging\"", "upstream = \"stagin\""),
                "identities.staging-admin.upstream",
                "\"stagin\"",
            ),
            (
                GENERAL.replace("identity = \"catalog\"", "identity = \"katalog\""),
                "clients[1].identity",
                "\"katalog\"",
            ),
            (
                GENERAL.replace("identity = \"staging-admin\"", "identity = \"nobody\""),
                "listeners[0].identity",
                "\"nobody\"",
            ),
            (
                GENERAL.replace("http://127.0.0.1:9000", "ftp://x"),
                "upstreams.staging.url",
                "ftp",
            ),
            (
                GENERAL.replace("email = \"admin@medusa-test.com\"", ""),
                "identities.staging-admin.email",
                "required",
            ),
            (
                GENERAL.replace("flavor = \"v2\"", "flavor = \"v9\""),
                "identities.reporting.flavor",
                "v9",
            ),
            (
                GENERAL.replace(
                    "allow_paths = [\"/admin/orders\", \"/admin/products\"]",
                    "allow_paths = [\"/admin/orders\", \"/store\"]",
                ),
                "identities.reporting.policy.allow_paths",
                "\"/store\"",
            ),
            (
                GENERAL.replace("read_only = true", "deny_paths = [\"/admin/*\"]"),
                "identities.reporting.policy.deny_paths",
                "wildcards",
            ),
            (
                GENERAL.replace("127.0.0.1:7002", "127.0.0.1:7000"),
                "listeners[0].listen",
                "already",
            ),
            (
                GENERAL.replace("127.0.0.1:7002", "0.0.0.0:7002"),
                "listeners[0].listen",
                "client_keys_file",
            ),
            (
                GENERAL.replace(
                    "listen = \"127.0.0.1:7002\"",
                    "listen = \"127.0.0.1:7002\"\ntls_cert_file = \"/tls/crt\"",
                ),
                "listeners[0].tls_key_file",
                "is required with listeners[0].tls_cert_file",
            ),
            (
                format!("[upstream]\nurl = \"http://x\"\n{GENERAL}"),
                "upstream",
                "not both",
            ),
            (
                GENERAL.replace("[identities.catalog]", "[identities.\"cat alog\"]"),
                "identities.cat alog",
                "letters",
            ),
        ];
        for (text, key, words) in cases {
            let e = err(&text);
            assert!(
                e.starts_with(&format!("config key `{key}`: ")),
                "{key}: {e}"
            );
            assert!(e.contains(words), "{words:?} not in {e}");
        }
    }

    #[test]
    fn unknown_keys_in_the_new_tables_are_refused() {
        for (from, to) in [
            (
                "read_only = true",
                "read_only = true\nunsafe_lift_builtin_denies = []",
            ),
            (
                "identity = \"catalog\"",
                "identity = \"catalog\"\nidentiti = 1",
            ),
            (
                "upstream = \"prod\"\nflavor = \"v2\"",
                "upstream = \"prod\"\nflavor = \"v2\"\nemial = \"x\"",
            ),
        ] {
            let e = err(&GENERAL.replace(from, to));
            assert!(e.starts_with("config file"), "{e}");
        }
    }

    #[test]
    fn several_identities_need_clients_or_a_main_identity() {
        let no_clients = GENERAL.replace("[[clients]]", "[[xclients]]");
        let no_clients = no_clients.split("[[xclients]]").next().unwrap().to_owned();
        let e = err(&no_clients);
        assert!(e.starts_with("config key `clients`: "), "{e}");
        let s =
            Settings::from_toml(&format!("[proxy]\nidentity = \"catalog\"\n{no_clients}")).unwrap();
        assert_eq!(s.main_identity, MainIdentity::Fixed(0));
        let e = err(&format!("[proxy]\nidentity = \"catalog\"\n{GENERAL}"));
        assert!(e.starts_with("config key `proxy.identity`: "), "{e}");
    }

    #[test]
    fn with_clients_a_remote_main_listener_is_guarded_by_keys() {
        let text = format!("[proxy]\nlisten = \"0.0.0.0:7000\"\n{GENERAL}");
        assert!(Settings::from_toml(&text).is_ok());
    }
}
