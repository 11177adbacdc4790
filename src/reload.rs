//! Live reload: SIGHUP, or a change to the config file or a secret file it names.
//!
//! The new config is validated completely first (parse, secrets, access rules, policy); a bad
//! one is rejected with an error log and a metric while the old one keeps serving. A good one
//! is applied by swapping the rule set and the credential atomically: connections and
//! in-flight requests are untouched. Settings that cannot change in a running process are
//! reported as needing a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::auth::TokenManager;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, Rules};

pub struct Reloader {
    config_path: Option<PathBuf>,
    current: Mutex<Settings>,
    proxy: Arc<Proxy>,
    tokens: TokenManager,
    metrics: Arc<Metrics>,
}

/// What a successful reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Anything differed from what was in force (false: a spurious event or an unchanged file).
    pub changed: bool,
    pub credential_changed: bool,
    /// Keys whose new value only takes effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Reloader {
    pub fn new(
        config_path: Option<PathBuf>,
        settings: Settings,
        proxy: Arc<Proxy>,
        tokens: TokenManager,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        Reloader {
            config_path,
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
        files.extend(s.auth.secret.file().map(|p| p.to_path_buf()));
        files.extend(s.access.client_keys_file.clone());
        files
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-read and apply. `trigger` is for the log ("SIGHUP", "file change").
    pub fn reload(&self, trigger: &str) -> Result<Applied, String> {
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

    fn try_reload(&self) -> Result<Applied, String> {
        let new = match &self.config_path {
            Some(path) => Settings::load(path).map_err(|e| e.to_string())?,
            None => self.lock().clone(),
        };
        // Validate everything before applying anything.
        let secret = new
            .auth
            .secret
            .load()
            .map_err(|e| format!("{}: {e}", new.auth.secret_name))?;
        let rules = Rules::from_settings(&new).map_err(|e| e.to_string())?;

        let mut current = self.lock();
        let settings_changed = *current != new;
        let needs_restart = restart_keys(&current, &new);
        for name in rules.policy.lifted() {
            tracing::warn!(rule = %name, "UNSAFE: built-in deny rule lifted by policy.unsafe_lift_builtin_denies");
        }
        self.proxy.set_rules(rules);
        self.proxy.set_access_log(new.log.access);
        let credential_changed = self
            .tokens
            .login()
            .set_credentials(new.auth.email.clone(), secret);
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
        }
        *current = kept;
        Ok(Applied {
            changed: settings_changed || credential_changed,
            credential_changed,
            needs_restart,
        })
    }
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
