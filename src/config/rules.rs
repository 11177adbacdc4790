//! `[access]` and `[policy]`: validated with the rest of the file (every entry parsed, every
//! default filled in, a remote listener's exposure checked), and turned into the [`Rules`] the
//! proxy applies once the client keys file is read.

use super::file::{RawAccess, RawPolicy};
use super::validate::size;
use super::{
    AccessSettings, ConfigError, PolicySettings, ProxySettings, Settings, defaults, invalid,
};
use crate::access::{self, AccessConfig, Cidr, ClientKeys, HostList};
use crate::policy::{Policy, PolicyConfig};

/// Everything a reload may change about who may call and what they may reach: the access
/// rules (with the client keys read), the route policy and the body limit.
///
/// ```
/// use medusa_auth_proxy::config::{Rules, Settings};
///
/// let settings = Settings::from_toml(
///     "[upstream]\nurl = \"http://127.0.0.1:9000\"\n\
///      [auth]\nemail = \"admin@example.com\"\npassword_env = \"MEDUSA_PASSWORD\"\n",
/// )
/// .unwrap();
/// let rules = Rules::from_settings(&settings).unwrap();
/// assert!(rules.access.client_keys.is_none());
/// assert_eq!(rules.max_body, 50 << 20);
/// ```
#[derive(Debug)]
pub struct Rules {
    /// Who may call the main listener: peer ranges, hosts, origins, client keys (with
    /// `[[clients]]`, theirs too, each key tagged with its identity).
    pub access: AccessConfig,
    /// Who may call a `[[listeners]]` listener: `[access]` alone (its identity is fixed).
    pub listener_access: AccessConfig,
    /// Which routes may be reached.
    pub policy: Policy,
    /// Largest request body forwarded, in bytes.
    pub max_body: u64,
}

impl Rules {
    /// The rules of a validated config, reading `access.client_keys_file` (at start-up and on
    /// every reload, so a changed keys file takes effect). The only error is that file's.
    pub fn from_settings(s: &Settings) -> Result<Rules, ConfigError> {
        let client_keys = match &s.access.client_keys_file {
            Some(path) => {
                Some(ClientKeys::load(path).map_err(|e| invalid("access.client_keys_file", e))?)
            }
            None => None,
        };
        let mut clients = Vec::with_capacity(s.clients.len());
        for (n, c) in s.clients.iter().enumerate() {
            let keys = ClientKeys::load(&c.keys_file)
                .map_err(|e| invalid(format!("clients[{n}].keys_file"), e))?;
            clients.push(keys.owned_by(c.identity));
        }
        Ok(Rules::with_keys(s, client_keys, clients))
    }

    /// The rules without reading `access.client_keys_file`, for `check --no-secrets` (CI of
    /// manifests whose secrets live elsewhere): a configured keys file stands in as
    /// [`ClientKeys::unread`], which admits no client key. Never serve with these.
    pub fn without_secrets(s: &Settings) -> Rules {
        let client_keys = s
            .access
            .client_keys_file
            .as_ref()
            .map(|_| ClientKeys::unread());
        let clients = s.clients.iter().map(|_| ClientKeys::unread()).collect();
        Rules::with_keys(s, client_keys, clients)
    }

    fn with_keys(s: &Settings, client_keys: Option<ClientKeys>, clients: Vec<ClientKeys>) -> Rules {
        let listener_access = s.access.rules(client_keys.clone());
        let main_keys = if s.clients.is_empty() {
            client_keys
        } else {
            // Every request on the main listener needs a key; one of `access.client_keys_file`
            // alone maps to no identity (refused by the access step, naming [[clients]]).
            Some(ClientKeys::merge(client_keys.into_iter().chain(clients)))
        };
        Rules {
            access: s.access.rules(main_keys),
            listener_access,
            policy: s.policy.routes.clone(),
            max_body: s.policy.max_body,
        }
    }
}

impl Settings {
    /// [`access::unreachable_listener_warning`] for every listener: the main one and each
    /// `[[listeners]]` entry (all share `[access]` allow_cidrs), each named by its key
    /// (`listeners[1].listen`). Logged at start-up and after each reload, printed by `check`.
    pub fn unreachable_listener_warnings(&self) -> Vec<String> {
        let cidrs = &self.access.allow_cidrs;
        let main = access::unreachable_listener_warning("proxy.listen", self.proxy.listen, cidrs);
        let others = self.listeners.iter().enumerate().filter_map(|(n, l)| {
            access::unreachable_listener_warning(&format!("listeners[{n}].listen"), l.listen, cidrs)
        });
        main.into_iter().chain(others).collect()
    }
}

impl AccessSettings {
    /// The access rules these settings describe, with `client_keys` as read (or not).
    fn rules(&self, client_keys: Option<ClientKeys>) -> AccessConfig {
        AccessConfig {
            allow_cidrs: self.allow_cidrs.clone(),
            allow_hosts: self.allow_hosts.clone(),
            allow_origins: self.allow_origins.clone(),
            client_keys,
        }
    }
}

/// Validates `[access]`; `proxy` gives the listen address (the default `allow_hosts` and the
/// remote exposure check depend on it).
pub(super) fn access(
    raw: RawAccess,
    proxy: &ProxySettings,
    has_clients: bool,
) -> Result<AccessSettings, ConfigError> {
    let allow_cidrs = match raw.allow_cidrs {
        None => access::default_allow_cidrs(),
        Some(entries) => entries
            .iter()
            .map(|c| c.parse::<Cidr>())
            .collect::<Result<_, _>>()
            .map_err(|e| invalid("access.allow_cidrs", e))?,
    };
    let allow_hosts = HostList::from(match raw.allow_hosts {
        Some(hosts) => hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        None => access::default_allow_hosts(proxy.listen),
    });
    if let Some(e) = allow_hosts.first_error() {
        return Err(invalid("access.allow_hosts", e));
    }
    let allow_origins = raw.allow_origins.unwrap_or_default();
    for entry in &allow_origins {
        access::host::validate_origin_entry(entry)
            .map_err(|e| invalid("access.allow_origins", e))?;
    }
    let settings = AccessSettings {
        allow_cidrs,
        client_keys_file: raw.client_keys_file,
        allow_hosts,
        allow_origins,
        allow_unauthenticated_remote: raw.allow_unauthenticated_remote.unwrap_or(false),
    };
    // With [[clients]], every request on the main listener needs a key.
    let keys = (has_clients || settings.client_keys_file.is_some()).then(ClientKeys::unread);
    access::remote_exposure_ok(
        proxy.listen,
        &settings.rules(keys),
        settings.allow_unauthenticated_remote,
    )
    .map_err(|e| invalid("proxy.listen", e))?;
    Ok(settings)
}

impl AccessSettings {
    /// Whether a `[[listeners]]` address is safe with these rules (only
    /// `access.client_keys_file` guards such a listener): the remote exposure check of
    /// `proxy.listen`.
    pub(super) fn exposure_ok(&self, listen: std::net::SocketAddr) -> Result<(), String> {
        let keys = self.client_keys_file.as_ref().map(|_| ClientKeys::unread());
        access::remote_exposure_ok(listen, &self.rules(keys), self.allow_unauthenticated_remote)
    }
}

/// Validates `[policy]`: path prefixes canonicalise, lifted rules exist, `max_body` is a size.
pub(super) fn policy(raw: RawPolicy) -> Result<PolicySettings, ConfigError> {
    let default = PolicyConfig::default();
    let routes = Policy::new(PolicyConfig {
        allow_paths: raw.allow_paths.unwrap_or(default.allow_paths),
        deny_paths: raw.deny_paths.unwrap_or(default.deny_paths),
        read_only: raw.read_only.unwrap_or(default.read_only),
        lift_builtin: raw
            .unsafe_lift_builtin_denies
            .unwrap_or(default.lift_builtin),
    })
    .map_err(|e| invalid(e.key(), e.problem()))?;
    Ok(PolicySettings {
        routes,
        max_body: size(
            "policy.max_body",
            raw.max_body.as_deref(),
            defaults::MAX_BODY,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_remote_listener_loopback_peers_only_could_use_is_named_by_its_key() {
        let settings = |cidrs: &str| {
            Settings::from_toml(&format!(
                "[proxy]\nlisten = \"0.0.0.0:7000\"\n\
                 [upstream]\nurl = \"http://127.0.0.1:9\"\n\
                 [auth]\nemail = \"a@b.c\"\npassword_env = \"P\"\n\
                 [access]\nclient_keys_file = \"/k\"\n{cidrs}\n\
                 [[listeners]]\nlisten = \"127.0.0.1:7003\"\nidentity = \"default\"\n\
                 [[listeners]]\nlisten = \"[::]:7002\"\nidentity = \"default\"\n"
            ))
            .unwrap()
        };
        // Default allow_cidrs: loopback only. The loopback listeners[0] is fine.
        let w = settings("").unreachable_listener_warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("proxy.listen = \"0.0.0.0:7000\""), "{w:?}");
        assert!(
            w[1].starts_with("listeners[1].listen = \"[::]:7002\""),
            "{w:?}"
        );
        assert!(w.iter().all(|w| w.contains("allow_cidrs")), "{w:?}");
        // One remote range admits someone remote on every listener (they share [access]).
        let w = settings("allow_cidrs = [\"127.0.0.0/8\", \"10.0.0.0/8\"]");
        assert!(w.unreachable_listener_warnings().is_empty());
    }
}
