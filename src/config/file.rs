//! The raw layer: exactly what the file may say. Unknown keys are refused
//! (`deny_unknown_fields`), so a typo is an error naming it rather than a silently ignored
//! setting; every value is optional here and [`super::validate`] decides what is required.

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
    pub(super) shutdown_grace: Option<String>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) max_concurrent_requests: Option<usize>,
    pub(super) max_connections: Option<usize>,
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
