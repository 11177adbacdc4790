//! The raw layer: exactly what the file may say. Unknown keys are refused
//! (`deny_unknown_fields`), so a typo is an error naming it rather than a silently ignored
//! setting; every value is optional here and [`super::validate`] decides what is required.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) proxy: RawProxy,
    pub(super) upstream: Option<RawUpstream>,
    pub(super) auth: Option<RawAuth>,
    #[serde(default)]
    pub(super) ops: RawOps,
    #[serde(default)]
    pub(super) access: RawAccess,
    #[serde(default)]
    pub(super) policy: RawPolicy,
    #[serde(default)]
    pub(super) log: RawLog,
    /// `[upstreams.NAME]`: the general form's Medusas.
    pub(super) upstreams: Option<BTreeMap<String, RawUpstream>>,
    /// `[identities.NAME]`: the general form's accounts.
    pub(super) identities: Option<BTreeMap<String, RawIdentity>>,
    /// `[[clients]]`: which client keys act as which identity.
    #[serde(default)]
    pub(super) clients: Vec<RawClient>,
    /// `[[listeners]]`: more listeners, each serving one identity.
    #[serde(default)]
    pub(super) listeners: Vec<RawListener>,
}

/// `[identities.NAME]`: every `[auth]` key, the upstream's name and a narrowing policy.
/// (Spelled out rather than `#[serde(flatten)]`, which does not combine with
/// `deny_unknown_fields`.)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    pub(super) upstream: Option<String>,
    pub(super) policy: Option<RawIdentityPolicy>,
    pub(super) flavor: Option<String>,
    pub(super) email: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) api_key_env: Option<String>,
    pub(super) api_key_file: Option<PathBuf>,
    pub(super) key_check_interval: Option<String>,
    pub(super) refresh_before_expiry: Option<String>,
    pub(super) login_timeout: Option<String>,
    pub(super) default_token_lifetime: Option<String>,
}

impl RawIdentity {
    /// The `[auth]` keys of the identity, and the rest.
    pub(super) fn split(self) -> (RawAuth, Option<String>, Option<RawIdentityPolicy>) {
        let auth = RawAuth {
            flavor: self.flavor,
            email: self.email,
            password_env: self.password_env,
            password_file: self.password_file,
            api_key_env: self.api_key_env,
            api_key_file: self.api_key_file,
            key_check_interval: self.key_check_interval,
            refresh_before_expiry: self.refresh_before_expiry,
            login_timeout: self.login_timeout,
            default_token_lifetime: self.default_token_lifetime,
        };
        (auth, self.upstream, self.policy)
    }
}

/// `[identities.NAME.policy]`: only what narrows.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentityPolicy {
    pub(super) allow_paths: Option<Vec<String>>,
    pub(super) deny_paths: Option<Vec<String>>,
    pub(super) read_only: Option<bool>,
}

/// One `[[clients]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) keys_file: Option<PathBuf>,
    pub(super) identity: Option<String>,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) listen: Option<String>,
    pub(super) identity: Option<String>,
    pub(super) max_concurrent_requests: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) tls_cert_file: Option<PathBuf>,
    pub(super) tls_key_file: Option<PathBuf>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
    pub(super) level: Option<String>,
    pub(super) access: Option<bool>,
}

/// `[access]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    pub(super) allow_cidrs: Option<Vec<String>>,
    pub(super) client_keys_file: Option<PathBuf>,
    pub(super) allow_hosts: Option<Vec<String>>,
    pub(super) allow_origins: Option<Vec<String>>,
    pub(super) allow_unauthenticated_remote: Option<bool>,
}

/// `[policy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) allow_paths: Option<Vec<String>>,
    pub(super) deny_paths: Option<Vec<String>>,
    pub(super) read_only: Option<bool>,
    pub(super) max_body: Option<String>,
    pub(super) unsafe_lift_builtin_denies: Option<Vec<String>>,
}

/// `[proxy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub(super) listen: Option<String>,
    pub(super) identity: Option<String>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) max_concurrent_requests: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_peer: Option<usize>,
    pub(super) max_streams_per_connection: Option<u32>,
    pub(super) idle_timeout: Option<String>,
    pub(super) send_timeout: Option<String>,
    pub(super) tls_cert_file: Option<PathBuf>,
    pub(super) tls_key_file: Option<PathBuf>,
}

/// `[upstream]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) url: Option<String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) pool_idle_timeout: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
}

/// `[auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) flavor: Option<String>,
    pub(super) email: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) api_key_env: Option<String>,
    pub(super) api_key_file: Option<PathBuf>,
    pub(super) key_check_interval: Option<String>,
    pub(super) refresh_before_expiry: Option<String>,
    pub(super) login_timeout: Option<String>,
    pub(super) default_token_lifetime: Option<String>,
}

/// `[ops]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOps {
    pub(super) listen: Option<String>,
}
