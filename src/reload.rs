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
use std::sync::{Arc, Mutex, Weak};

use sha2::{Digest, Sha256};

use crate::config::Rules;
use crate::config::{ConfigError, Overrides, Settings};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::roster::{Changes, RosterError};
use crate::secret::SecretError;
use crate::watch::FileWatch;

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
    /// A new upstream's client cannot be set up, or the new identities do not fit the
    /// listeners that keep running.
    #[error("{0}")]
    Roster(#[source] RosterError),
}

/// Re-reads the config file (if the proxy was started with one) and the secrets it names,
/// and applies what changed to the running proxy through [`Live`]: identities (kept, started
/// or stopped, see [`crate::roster`]), clients, policies and access rules as one new request
/// path, and the access log switch. Started by `app`; SIGHUP and the file watcher call it.
pub struct Reloader {
    config_path: Option<PathBuf>,
    /// The command line's values: they keep winning over the file's after a reload.
    overrides: Overrides,
    current: Mutex<Settings>,
    /// What the last attempt read: SHA-256 over the config file and the files it names.
    last_attempt: Mutex<[u8; 32]>,
    /// The files the last attempt's config names (accepted or not; a config that does not
    /// parse: those of the one in force): the watch covers them, so creating a secret file
    /// that a rejected edit named is what brings that edit in.
    named: Mutex<Vec<PathBuf>>,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    /// The watch on the config and the files it names (renewed when an attempt names others).
    watch: Mutex<Option<FileWatch>>,
    me: Weak<Reloader>,
}

/// What a successful reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Anything differed from what was in force (false: a spurious event or an unchanged file).
    pub changed: bool,
    /// The account or its secret of an identity kept running changed: the token it held was
    /// dropped and its driver logs in with the new credential.
    pub credential_changed: bool,
    /// What happened to each identity.
    pub identities: Changes,
    /// Keys whose new value only takes effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Reloader {
    /// A reloader for a proxy running with `settings` (read from `config_path`, if any, with
    /// `overrides` over it), applying what changes through `live`, counting reloads in
    /// `metrics`. The files as they read now count as the last attempt, so an event for an
    /// unchanged file does nothing. [`Reloader::watch`] starts watching them.
    pub fn new(
        config_path: Option<PathBuf>,
        overrides: Overrides,
        settings: Settings,
        live: Arc<Live>,
        metrics: Arc<Metrics>,
    ) -> Arc<Reloader> {
        let (digest, named) = inputs_digest(config_path.as_deref(), &overrides, &settings);
        Arc::new_cyclic(|me| Reloader {
            config_path,
            overrides,
            last_attempt: Mutex::new(digest),
            named: Mutex::new(named),
            current: Mutex::new(settings),
            live,
            metrics,
            watch: Mutex::new(None),
            me: me.clone(),
        })
    }

    /// Reload when the config file or a file it names changes (directory watches, so
    /// Kubernetes' `..data` symlink swaps are seen), and only when the bytes differ from what
    /// the last attempt read: a rejected edit is reported once, not at every event until it
    /// is fixed. Called at start and again by an attempt whose config names other files (also
    /// one that is rejected: a secret file it names may appear next).
    pub fn watch(&self) {
        let files = self.watched_files();
        let mut slot = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        if files.is_empty() {
            *slot = None;
            return;
        }
        let me = self.me.clone();
        match crate::watch::watch_files(&files, move || {
            if let Some(r) = me.upgrade() {
                let _ = r.reload_if_changed("file change");
            }
        }) {
            Ok(w) => *slot = Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config and secret files; use SIGHUP to reload");
            }
        }
    }

    /// Files whose change should trigger a reload: the config file and the files the last
    /// attempt's config names.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.config_path.iter().cloned().collect();
        files.extend(
            self.named
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
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

    /// Remember what this attempt reads, and watch the files its config names; false when
    /// that is what the last one read.
    fn record_attempt(&self) -> bool {
        let current = self.lock().clone();
        let (digest, named) = inputs_digest(self.config_path.as_deref(), &self.overrides, &current);
        let renamed = {
            let mut watched = self.named.lock().unwrap_or_else(|e| e.into_inner());
            let renamed = *watched != named;
            *watched = named;
            renamed
        };
        if renamed {
            self.watch();
        }
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
        // Validate everything before applying anything: the restart-only values kept, every
        // secret loaded, the rules built.
        let mut current = self.lock();
        let settings_changed = *current != new;
        let needs_restart = restart_keys(&current, &new);
        let kept = keep_running(&current, new, !needs_restart.is_empty())?;
        let secrets = kept
            .load_secrets()
            .map_err(|(key, source)| ReloadError::Secret { key, source })?;
        let rules = Rules::from_settings(&kept).map_err(ReloadError::Rules)?;
        for name in rules.policy.lifted() {
            tracing::warn!(rule = %name, "UNSAFE: built-in deny rule lifted by policy.unsafe_lift_builtin_denies");
        }
        let changes = self
            .live
            .apply(&kept, rules, secrets)
            .map_err(ReloadError::Roster)?;
        self.live.handles().set_access_log(kept.log.access);
        if changes.any() {
            tracing::info!(
                started = ?changes.started,
                stopped = ?changes.stopped,
                credential_changed = ?changes.credential_changed,
                "identities reloaded"
            );
        }
        // A reload can put client keys on a remote listener without TLS ([[clients]] added),
        // or narrow allow_cidrs to loopback under a remote listener.
        let warnings = crate::tls::cleartext_keys_warnings(&kept);
        for warning in warnings
            .into_iter()
            .chain(kept.unreachable_listener_warnings())
        {
            tracing::warn!("{warning}");
        }
        *current = kept;
        drop(current);
        Ok(Applied {
            changed: settings_changed || changes.any(),
            credential_changed: !changes.credential_changed.is_empty(),
            identities: changes,
            needs_restart,
        })
    }
}

/// `new`, with the values that need a restart as they run now (`restart`: some differ), so
/// the next diff still shows them. Listeners keep running where they are: when the new
/// configuration moves, adds or removes one, each running listener keeps serving its
/// identity (found by name); a running listener whose identity the new configuration
/// removes rejects the reload.
fn keep_running(current: &Settings, new: Settings, restart: bool) -> Result<Settings, ReloadError> {
    let mut kept = new;
    if restart {
        kept.proxy = current.proxy.clone();
        kept.ops = current.ops.clone();
        kept.log.format = current.log.format;
        kept.log.level = current.log.level.clone();
        if is_single(current) && is_single(&kept) {
            kept.upstream = current.upstream.clone();
            kept.upstreams = current.upstreams.clone();
            kept.auth.flavor = current.auth.flavor;
            kept.auth.refresh_before_expiry = current.auth.refresh_before_expiry;
            kept.auth.login_timeout = current.auth.login_timeout;
            kept.auth.default_token_lifetime = current.auth.default_token_lifetime;
            kept.auth.key_check_interval = current.auth.key_check_interval;
            // The single form's one identity is `[auth]`.
            if let Some(id) = kept.identities.first_mut() {
                id.auth = kept.auth.clone();
            }
        }
    }
    if listener_places(current) != listener_places(&kept) {
        let mut listeners = current.listeners.clone();
        for l in &mut listeners {
            let name = &current.identities[l.identity].name;
            l.identity = kept
                .identities
                .iter()
                .position(|id| id.name == *name)
                .ok_or_else(|| {
                    ReloadError::Config(ConfigError::Invalid {
                        key: "listeners".into(),
                        problem: format!(
                            "the listener on {} serves identity `{name}`, which the new \
                             configuration removes; removing or moving a listener needs a restart",
                            l.listen
                        ),
                    })
                })?;
        }
        kept.listeners = listeners;
    }
    Ok(kept)
}

/// What of the listeners only a restart changes: where each is, its TLS and its limits.
type Place = (
    std::net::SocketAddr,
    Option<crate::config::TlsFiles>,
    Option<usize>,
    Option<usize>,
);
fn listener_places(s: &Settings) -> Vec<Place> {
    s.listeners
        .iter()
        .map(|l| {
            (
                l.listen,
                l.tls.clone(),
                l.max_concurrent_requests,
                l.max_connections,
            )
        })
        .collect()
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

/// SHA-256 over the config file's bytes and those of the files it names (or, when it does
/// not parse, the files `current` names), and those files. Paths and read errors are hashed
/// too, so a file that disappears or is renamed in the config is a change.
fn inputs_digest(
    config_path: Option<&Path>,
    overrides: &Overrides,
    current: &Settings,
) -> ([u8; 32], Vec<PathBuf>) {
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
    (h.finalize().into(), named)
}

fn restart_keys(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            keys.push(key);
        }
    };
    // Every [proxy] key is the listeners' and read once, when they start.
    let (o, n) = (&old.proxy, &new.proxy);
    check(o.listen != n.listen, "proxy.listen");
    check(o.shutdown_grace != n.shutdown_grace, "proxy.shutdown_grace");
    check(
        o.header_read_timeout != n.header_read_timeout,
        "proxy.header_read_timeout",
    );
    check(
        o.max_concurrent_requests != n.max_concurrent_requests,
        "proxy.max_concurrent_requests",
    );
    check(
        o.max_connections != n.max_connections,
        "proxy.max_connections",
    );
    check(
        o.max_connections_per_peer != n.max_connections_per_peer,
        "proxy.max_connections_per_peer",
    );
    check(
        o.max_streams_per_connection != n.max_streams_per_connection,
        "proxy.max_streams_per_connection",
    );
    check(o.idle_timeout != n.idle_timeout, "proxy.idle_timeout");
    check(o.send_timeout != n.send_timeout, "proxy.send_timeout");
    // The files' contents are reloaded when they change (tls::TlsAcceptor::watch); which
    // files, and whether there is TLS at all, is the listener's and needs a restart.
    check(
        old.proxy.tls != new.proxy.tls,
        "proxy.tls_cert_file / proxy.tls_key_file",
    );
    check(
        listener_places(old) != listener_places(new),
        "listeners (listen, tls files, limits)",
    );
    // In the general form identities and upstreams change live (crate::roster); the single
    // form's [upstream] and [auth] timings are its one identity's and need a restart, as ever.
    let single = is_single(old) && is_single(new);
    check(single && old.upstream != new.upstream, "upstream");
    check(single && old.auth.flavor != new.auth.flavor, "auth.flavor");
    check(
        single
            && (old.auth.refresh_before_expiry != new.auth.refresh_before_expiry
                || old.auth.login_timeout != new.auth.login_timeout
                || old.auth.default_token_lifetime != new.auth.default_token_lifetime
                || old.auth.key_check_interval != new.auth.key_check_interval),
        "auth timings",
    );
    check(old.ops != new.ops, "ops.listen");
    check(old.log.format != new.log.format, "log.format");
    check(old.log.level != new.log.level, "log.level");
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERAL: &str = r#"
[upstreams.prod]
url = "http://127.0.0.1:9"
[identities.a]
upstream = "prod"
flavor = "v1"
email = "a@example.com"
password_env = "A_PASSWORD"
[identities.b]
upstream = "prod"
flavor = "v1"
email = "b@example.com"
password_env = "B_PASSWORD"
[proxy]
identity = "a"
[[listeners]]
listen = "127.0.0.1:7002"
identity = "b"
"#;

    fn settings(text: &str) -> Settings {
        Settings::from_toml(text).unwrap()
    }

    #[test]
    fn a_running_listener_keeps_its_identity_by_name_when_listeners_move() {
        let current = settings(GENERAL);
        // Listener moved, and a new identity sorts before `b`: `b` is now index 2.
        let new = settings(&format!(
            "{}\n[identities.aa]\nupstream = \"prod\"\nflavor = \"v1\"\nemail = \"c@example.com\"\npassword_env = \"C\"\n",
            GENERAL.replace("127.0.0.1:7002", "127.0.0.1:7003")
        ));
        let restart = restart_keys(&current, &new);
        assert!(
            restart.iter().any(|k| k.starts_with("listeners")),
            "{restart:?}"
        );
        let kept = keep_running(&current, new, true).unwrap();
        assert_eq!(kept.listeners[0].listen, current.listeners[0].listen);
        assert_eq!(kept.identities[kept.listeners[0].identity].name, "b");
    }

    #[test]
    fn removing_a_running_listeners_identity_is_rejected_naming_it() {
        let current = settings(GENERAL);
        let without_b = GENERAL
            .replace(
                "[identities.b]\nupstream = \"prod\"\nflavor = \"v1\"\nemail = \"b@example.com\"\npassword_env = \"B_PASSWORD\"\n",
                "",
            )
            .replace("[[listeners]]\nlisten = \"127.0.0.1:7002\"\nidentity = \"b\"\n", "");
        let new = settings(&without_b);
        let err = keep_running(&current, new, false).unwrap_err().to_string();
        assert!(err.contains("listeners") && err.contains("`b`"), "{err}");
        assert!(
            err.contains("127.0.0.1:7002") && err.contains("restart"),
            "{err}"
        );
    }

    /// Every `[proxy]` key is read when the listeners start: a reload that changes one says
    /// it needs a restart, naming it (the limits were once silently left as they were).
    #[test]
    fn every_proxy_key_is_a_restart_key_named_as_such() {
        let base = "[upstream]\nurl = \"http://127.0.0.1:9\"\n[auth]\nflavor = \"v1\"\nemail = \"a@b.c\"\npassword_env = \"P\"\n";
        let cases = [
            ("listen = \"127.0.0.1:7100\"", "proxy.listen"),
            ("shutdown_grace = \"3s\"", "proxy.shutdown_grace"),
            ("header_read_timeout = \"3s\"", "proxy.header_read_timeout"),
            (
                "max_concurrent_requests = 7",
                "proxy.max_concurrent_requests",
            ),
            ("max_connections = 70", "proxy.max_connections"),
            (
                "max_connections_per_peer = 7",
                "proxy.max_connections_per_peer",
            ),
            (
                "max_streams_per_connection = 7",
                "proxy.max_streams_per_connection",
            ),
            ("idle_timeout = \"3s\"", "proxy.idle_timeout"),
            ("send_timeout = \"3s\"", "proxy.send_timeout"),
        ];
        for (line, key) in cases {
            let keys = restart_keys(
                &settings(base),
                &settings(&format!("{base}[proxy]\n{line}\n")),
            );
            assert_eq!(keys, vec![key], "{line}");
        }
    }

    #[test]
    fn the_general_form_changes_upstreams_and_identities_without_a_restart() {
        let current = settings(GENERAL);
        let new =
            settings(&GENERAL.replace("127.0.0.1:9\"", "127.0.0.1:10\"\nrequest_timeout = \"3s\""));
        assert!(restart_keys(&current, &new).is_empty());
        // The single form's [upstream] still needs one.
        let single = "[upstream]\nurl = \"http://127.0.0.1:9\"\n[auth]\nflavor = \"v1\"\nemail = \"a@b.c\"\npassword_env = \"P\"\n";
        let keys = restart_keys(&settings(single), &settings(&single.replace(":9", ":10")));
        assert_eq!(keys, vec!["upstream"]);
    }
}
