//! Live reload: SIGHUP, or a change to the config file or a secret file it names.
//!
//! The new config is validated completely first (parse, secrets, access rules, policy); a bad
//! one is rejected with an error log and a metric while the old one keeps serving. A good one
//! is applied by swapping the rule set and the credential atomically: connections and
//! in-flight requests are untouched. Settings that cannot change in a running process are
//! reported as needing a restart.
//!
//! A file change whose bytes (config and the files it names) equal the last attempt's is not
//! attempted again: a rejected config stays rejected until someone edits it, and saying so once
//! is enough.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::auth::TokenManager;
use crate::config::Rules;
use crate::config::{ConfigError, Overrides, Settings};
use crate::metrics::Metrics;
use crate::secret::SecretError;
use crate::stack::Handles;

/// Why a reload was rejected (the previous configuration keeps serving). Names the key or
/// the file, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config file cannot be read, parsed or validated.
    #[error("{0}")]
    Config(#[source] ConfigError),
    /// The secret it names cannot be loaded.
    #[error("{key}: {source}")]
    Secret {
        /// `auth.password` or `auth.api_key` (`identities.NAME.password`, ...).
        key: std::borrow::Cow<'static, str>,
        /// Why.
        #[source]
        source: SecretError,
    },
    /// The access or policy rules are invalid.
    #[error("{0}")]
    Rules(#[source] ConfigError),
}

/// Re-reads the config file (if the proxy was started with one) and the secrets it names,
/// and applies what changed to the running proxy: access and policy rules through the
/// stack's [`Handles`], the access log switch, the account and its secret through the
/// [`TokenManager`] (a changed credential drops the token held and logs in again). Started by
/// `app`; SIGHUP and the file watcher call it.
pub struct Reloader {
    config_path: Option<PathBuf>,
    /// The command line's values: they keep winning over the file's after a reload.
    overrides: Overrides,
    current: Mutex<Settings>,
    /// What the last attempt read: SHA-256 over the config file and the files it names.
    last_attempt: Mutex<[u8; 32]>,
    proxy: Handles,
    tokens: TokenManager,
    metrics: Arc<Metrics>,
}

/// What a successful reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Anything differed from what was in force (false: a spurious event or an unchanged file).
    pub changed: bool,
    /// The account or its secret changed: the token held was dropped and the driver logs in
    /// with the new credential.
    pub credential_changed: bool,
    /// Keys whose new value only takes effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Reloader {
    /// A reloader for a proxy running with `settings` (read from `config_path`, if any, with
    /// `overrides` over it), applying new rules through `proxy` and a new credential through
    /// `tokens`, counting reloads in `metrics`. The files as they read now count as the last
    /// attempt, so an event for an unchanged file does nothing.
    pub fn new(
        config_path: Option<PathBuf>,
        overrides: Overrides,
        settings: Settings,
        proxy: Handles,
        tokens: TokenManager,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        let last_attempt = Mutex::new(inputs_digest(config_path.as_deref(), &overrides, &settings));
        Reloader {
            config_path,
            overrides,
            last_attempt,
            current: Mutex::new(settings),
            proxy,
            tokens,
            metrics,
        }
    }

    /// Files whose change should trigger a reload.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let s = self.lock();
        let mut files: Vec<PathBuf> = self.config_path.iter().cloned().collect();
        files.extend(named_files(&s));
        files
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For a file change: reload unless the files read the same as at the last attempt
    /// (`None` then, and nothing is logged above debug).
    pub fn reload_if_changed(&self, trigger: &str) -> Option<Result<Applied, ReloadError>> {
        if !self.record_attempt() {
            tracing::debug!(trigger, "files unchanged since the last reload attempt");
            return None;
        }
        Some(self.apply(trigger))
    }

    /// Re-read and apply, whatever the files' contents. `trigger` is for the log ("SIGHUP",
    /// "file change").
    pub fn reload(&self, trigger: &str) -> Result<Applied, ReloadError> {
        // An explicit reload counts as an attempt too, so the file events of the same edit
        // that follow it do not repeat it.
        self.record_attempt();
        self.apply(trigger)
    }

    /// Remember what this attempt reads; false when that is what the last one read.
    fn record_attempt(&self) -> bool {
        let current = self.lock().clone();
        let digest = inputs_digest(self.config_path.as_deref(), &self.overrides, &current);
        let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *last, digest) != digest
    }

    fn apply(&self, trigger: &str) -> Result<Applied, ReloadError> {
        let result = self.try_reload();
        match &result {
            Ok(applied) if !applied.changed => {
                tracing::debug!(trigger, "configuration unchanged");
            }
            Ok(applied) => {
                self.metrics.reload(true);
                tracing::info!(
                    trigger,
                    credential_changed = applied.credential_changed,
                    "configuration reloaded"
                );
                if !applied.needs_restart.is_empty() {
                    tracing::warn!(
                        keys = %applied.needs_restart.join(", "),
                        "changed settings need a restart to take effect; the old values stay in force"
                    );
                }
            }
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!(trigger, error = %e, "configuration reload rejected; the previous configuration keeps serving");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Applied, ReloadError> {
        let new = match &self.config_path {
            Some(path) => {
                Settings::load_with(Some(path), &self.overrides).map_err(ReloadError::Config)?
            }
            None => self.lock().clone(),
        };
        // Validate everything before applying anything.
        // Identities are not swapped live (yet): in the general form the running ones keep
        // serving and only the rules (access, policy, the keys files' contents) apply.
        let single = is_single(&self.lock()) && is_single(&new);
        let secret = new
            .auth
            .secret
            .load()
            .map_err(|source| ReloadError::Secret {
                key: new.auth.secret_name.clone(),
                source,
            })?;
        let rules = Rules::from_settings(&new).map_err(ReloadError::Rules)?;

        let mut current = self.lock();
        let settings_changed = *current != new;
        let mut needs_restart = restart_keys(&current, &new);
        if !single {
            if model(&current) != model(&new) {
                needs_restart.push("identities");
            }
            // The credential of each identity stays as started; only rules are swapped.
            for name in rules.policy.lifted() {
                tracing::warn!(rule = %name, "UNSAFE: built-in deny rule lifted by policy.unsafe_lift_builtin_denies");
            }
            let mut kept = new;
            kept.upstream = current.upstream.clone();
            kept.auth = current.auth.clone();
            kept.upstreams = current.upstreams.clone();
            kept.identities = current.identities.clone();
            kept.clients = current.clients.clone();
            kept.listeners = current.listeners.clone();
            kept.main_identity = current.main_identity;
            kept.proxy = current.proxy.clone();
            kept.ops = current.ops.clone();
            kept.log.format = current.log.format;
            kept.log.level = current.log.level.clone();
            // Rules as the running identities see them: the new [access] and [policy] with
            // the [[clients]] mapping in force.
            let rules = Rules::from_settings(&kept).map_err(ReloadError::Rules)?;
            self.proxy.set_rules(rules);
            self.proxy.set_access_log(kept.log.access);
            *current = kept;
            return Ok(Applied {
                changed: settings_changed,
                credential_changed: false,
                needs_restart,
            });
        }
        for name in rules.policy.lifted() {
            tracing::warn!(rule = %name, "UNSAFE: built-in deny rule lifted by policy.unsafe_lift_builtin_denies");
        }
        self.proxy.set_rules(rules);
        self.proxy.set_access_log(new.log.access);
        let login = self.tokens.login();
        login.set_secret_source(&new.auth.secret);
        let credential_changed = login.set_credentials(new.auth.email.clone(), secret);
        if credential_changed {
            // The cached token belongs to the old credential (it may have been revoked).
            let tokens = self.tokens.clone();
            tokio::spawn(async move { tokens.invalidate().await });
        }
        // Keep the old values of settings that need a restart, so the next diff still shows them.
        let mut kept = new;
        if !needs_restart.is_empty() {
            kept.proxy = current.proxy.clone();
            kept.upstream = current.upstream.clone();
            kept.ops = current.ops.clone();
            kept.auth.flavor = current.auth.flavor;
            kept.auth.refresh_before_expiry = current.auth.refresh_before_expiry;
            kept.auth.login_timeout = current.auth.login_timeout;
            kept.auth.default_token_lifetime = current.auth.default_token_lifetime;
            kept.auth.key_check_interval = current.auth.key_check_interval;
            kept.log.format = current.log.format;
            kept.log.level = current.log.level.clone();
            kept.upstreams = current.upstreams.clone();
        }
        // The single form's one identity is `[auth]`.
        if let Some(id) = kept.identities.first_mut() {
            id.auth = kept.auth.clone();
        }
        *current = kept;
        Ok(Applied {
            changed: settings_changed || credential_changed,
            credential_changed,
            needs_restart,
        })
    }
}

/// The secret and key files a config names.
fn named_files(s: &Settings) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = s
        .identities
        .iter()
        .filter_map(|id| id.auth.secret.file().map(Path::to_path_buf))
        .collect();
    files.extend(s.access.client_keys_file.clone());
    files.extend(s.clients.iter().map(|c| c.keys_file.clone()));
    files
}

/// The single form: one identity, `default`, on the main listener only.
fn is_single(s: &Settings) -> bool {
    s.identities.len() == 1
        && s.identities[0].name == crate::config::DEFAULT_IDENTITY
        && s.clients.is_empty()
        && s.listeners.is_empty()
}

/// What of a config a live reload does not change (yet) in the general form.
fn model(
    s: &Settings,
) -> (
    &[crate::config::NamedUpstream],
    &[crate::config::IdentitySettings],
    &[crate::config::ClientSettings],
    &[crate::config::ListenerSettings],
    crate::config::MainIdentity,
) {
    (
        &s.upstreams,
        &s.identities,
        &s.clients,
        &s.listeners,
        s.main_identity,
    )
}

/// SHA-256 over the config file's bytes and those of the files it names (or, when it does
/// not parse, the files `current` names). Paths and read errors are hashed too, so a file
/// that disappears or is renamed in the config is a change.
fn inputs_digest(
    config_path: Option<&Path>,
    overrides: &Overrides,
    current: &Settings,
) -> [u8; 32] {
    let mut h = Sha256::new();
    let feed = |h: &mut Sha256, path: &Path| {
        h.update(path.as_os_str().as_encoded_bytes());
        match std::fs::read(path) {
            Ok(bytes) => {
                let bytes = zeroize::Zeroizing::new(bytes);
                h.update([1]);
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes[..]);
            }
            Err(e) => {
                h.update([0]);
                h.update(format!("{:?}", e.kind()).as_bytes());
            }
        }
    };
    let named = match config_path {
        Some(path) => {
            feed(&mut h, path);
            Settings::load_with(Some(path), overrides)
                .map(|s| named_files(&s))
                .unwrap_or_else(|_| named_files(current))
        }
        None => named_files(current),
    };
    for f in &named {
        feed(&mut h, f);
    }
    h.finalize().into()
}

fn restart_keys(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            keys.push(key);
        }
    };
    check(old.proxy.listen != new.proxy.listen, "proxy.listen");
    check(
        old.proxy.shutdown_grace != new.proxy.shutdown_grace,
        "proxy.shutdown_grace",
    );
    check(
        old.proxy.header_read_timeout != new.proxy.header_read_timeout,
        "proxy.header_read_timeout",
    );
    check(
        old.proxy.max_concurrent_requests != new.proxy.max_concurrent_requests,
        "proxy.max_concurrent_requests",
    );
    // The files' contents are reloaded when they change (tls::TlsAcceptor::watch); which
    // files, and whether there is TLS at all, is the listener's and needs a restart.
    check(
        old.proxy.tls != new.proxy.tls,
        "proxy.tls_cert_file / proxy.tls_key_file",
    );
    check(old.upstream != new.upstream, "upstream");
    check(old.auth.flavor != new.auth.flavor, "auth.flavor");
    check(
        old.auth.refresh_before_expiry != new.auth.refresh_before_expiry
            || old.auth.login_timeout != new.auth.login_timeout
            || old.auth.default_token_lifetime != new.auth.default_token_lifetime
            || old.auth.key_check_interval != new.auth.key_check_interval,
        "auth timings",
    );
    check(old.ops != new.ops, "ops.listen");
    check(old.log.format != new.log.format, "log.format");
    check(old.log.level != new.log.level, "log.level");
    keys
}
