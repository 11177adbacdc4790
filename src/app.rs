//! Wiring: upstream client, token manager, proxy and ops listeners, shutdown order.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::TokenManager;
use crate::auth::login::Login;
use crate::config::Settings;
use crate::ops::Ops;
use crate::proxy::{Proxy, Rules, RulesError};
use crate::secret::SecretError;
use crate::server::{self, Drained};
use crate::upstream::Upstream;
use crate::watch::FileWatch;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}: {1}")]
    Secret(&'static str, SecretError),
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error(transparent)]
    Tls(#[from] crate::upstream::TlsSetupError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running proxy. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub tokens: TokenManager,
    shutdown: watch::Sender<bool>,
    proxy_task: JoinHandle<Drained>,
    ops_task: JoinHandle<Drained>,
    driver: JoinHandle<()>,
    _watch: Option<FileWatch>,
}

impl Running {
    /// Begin shutdown: stop accepting, drain in-flight requests (up to `shutdown_grace`).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Shut down and wait for the drain. Returns how the proxy listener drained.
    pub async fn shutdown(self) -> Drained {
        self.begin_shutdown();
        self.wait().await
    }

    /// Wait until the servers have stopped (after [`Running::begin_shutdown`]).
    pub async fn wait(self) -> Drained {
        let drained = self.proxy_task.await.unwrap_or(Drained::GraceExceeded);
        let _ = self.ops_task.await;
        self.driver.abort();
        drained
    }
}

/// Load secrets, bind both listeners, start the login driver and serve.
pub async fn start(settings: Settings) -> Result<Running, StartError> {
    let password = settings
        .auth
        .secret
        .load()
        .map_err(|e| StartError::Secret(settings.auth.secret_name, e))?;
    let rules = Rules::from_settings(&settings)?;
    for name in rules.policy.lifted() {
        tracing::warn!(
            rule = %name,
            "UNSAFE: built-in deny rule lifted by policy.unsafe_lift_builtin_denies; callers can reach a route that mints or ends credentials"
        );
    }
    let proxy_listener = TcpListener::bind(settings.proxy.listen)
        .await
        .map_err(|source| StartError::Bind {
            key: "proxy.listen",
            addr: settings.proxy.listen,
            source,
        })?;
    let ops_listener = TcpListener::bind(settings.ops.listen)
        .await
        .map_err(|source| StartError::Bind {
            key: "ops.listen",
            addr: settings.ops.listen,
            source,
        })?;
    let proxy_addr = proxy_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            key: "proxy.listen",
            addr: settings.proxy.listen,
            source,
        })?;
    let ops_addr = ops_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            key: "ops.listen",
            addr: settings.ops.listen,
            source,
        })?;

    let upstream = Upstream::new(&settings.upstream)?;
    let login = Login::new(
        upstream.clone(),
        settings.auth.flavor,
        settings.auth.email.clone(),
        password,
    );
    let tokens = TokenManager::new(login, settings.auth.clone());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let driver = tokens.spawn_driver(shutdown_rx.clone());

    let proxy = Arc::new(Proxy::new(
        upstream,
        tokens.clone(),
        rules,
        settings.proxy.max_concurrent_requests,
    ));
    let proxy_for_watch = proxy.clone();
    let proxy_task = tokio::spawn(server::serve(
        proxy_listener,
        move |req, peer| {
            let proxy = proxy.clone();
            async move { proxy.handle(req, peer).await }
        },
        shutdown_rx.clone(),
        settings.proxy.shutdown_grace,
        server::Limits {
            header_read_timeout: settings.proxy.header_read_timeout,
            ..server::Limits::default()
        },
    ));
    let ops = Arc::new(Ops::new(tokens.clone()));
    let ops_task = tokio::spawn(server::serve(
        ops_listener,
        move |req, peer| {
            let ops = ops.clone();
            async move { ops.handle(req, peer).await }
        },
        shutdown_rx,
        settings.proxy.shutdown_grace,
        server::Limits::default(),
    ));
    let watch = watch_secrets(&settings, &tokens, &proxy_for_watch);
    tracing::info!(
        listen = %proxy_addr,
        ops = %ops_addr,
        upstream = %settings.upstream.url,
        flavor = settings.auth.flavor.as_str(),
        "medusa-auth-proxy started"
    );
    Ok(Running {
        proxy_addr,
        ops_addr,
        tokens,
        shutdown,
        proxy_task,
        ops_task,
        driver,
        _watch: watch,
    })
}

/// Re-read `auth.password_file` and `access.client_keys_file` when they change. A new
/// password invalidates the cached token (the old one may belong to a rotated credential);
/// a bad keys file is rejected with an error log and the old keys stay in force.
fn watch_secrets(
    settings: &Settings,
    tokens: &TokenManager,
    proxy: &Arc<Proxy>,
) -> Option<FileWatch> {
    let mut files = Vec::new();
    files.extend(settings.auth.secret.file().map(|p| p.to_path_buf()));
    files.extend(settings.access.client_keys_file.clone());
    if files.is_empty() {
        return None;
    }
    let settings = settings.clone();
    let tokens = tokens.clone();
    let proxy = proxy.clone();
    let on_change = move || {
        if settings.auth.secret.file().is_some() {
            match settings.auth.secret.load() {
                Ok(pw) => {
                    if tokens.login().set_password(pw) {
                        tracing::info!(
                            "the secret file changed; dropping the token and logging in again"
                        );
                        let tokens = tokens.clone();
                        tokio::spawn(async move { tokens.invalidate().await });
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the secret file changed but cannot be used; keeping the old secret")
                }
            }
        }
        if settings.access.client_keys_file.is_some() {
            match Rules::from_settings(&settings) {
                Ok(rules) => {
                    tracing::info!(
                        keys = rules.access.client_keys.as_ref().map_or(0, |k| k.len()),
                        "access.client_keys_file re-read"
                    );
                    proxy.set_rules(rules);
                }
                Err(e) => {
                    tracing::error!(error = %e, "access.client_keys_file changed but is invalid; keeping the old keys")
                }
            }
        }
    };
    match crate::watch::watch_files(&files, on_change) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch secret files; changes need a restart");
            None
        }
    }
}
