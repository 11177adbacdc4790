//! Wiring: upstream client, token manager, proxy and ops listeners, reload, shutdown order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access_log::AccessLog;
use crate::auth::TokenManager;
use crate::auth::login::Login;
use crate::config::{ConfigError, Overrides, Rules, Settings};
use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::reload::{Applied, ReloadError, Reloader};
use crate::secret::SecretError;
use crate::server::{self, Drained};
use crate::upstream::Upstream;
use crate::watch::FileWatch;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}: {1}")]
    Secret(&'static str, SecretError),
    #[error(transparent)]
    Rules(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] crate::upstream::TlsSetupError),
    #[error(
        "config key `proxy.max_connections`: {max_connections} client connections, plus \
         {upstream} for Medusa (proxy.max_concurrent_requests) and {reserve} for the ops \
         listener and files, need {needed} file descriptors, but the limit (RLIMIT_NOFILE, \
         raised to its hard limit) is {limit}; lower proxy.max_connections or raise the limit \
         (systemd LimitNOFILE=, docker --ulimit nofile=)"
    )]
    FileDescriptors {
        max_connections: usize,
        upstream: usize,
        reserve: usize,
        needed: usize,
        limit: libc::rlim_t,
    },
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// A refusal of the configuration as written (exit status 2), as opposed to a failure of
    /// the environment the proxy runs in (exit status 1).
    pub fn is_config(&self) -> bool {
        match self {
            StartError::Secret(..)
            | StartError::Rules(_)
            | StartError::Tls(_)
            | StartError::FileDescriptors { .. } => true,
            // The address may be fine and merely taken; the port may be free a moment later.
            StartError::Bind { .. } => false,
        }
    }
}

/// A running proxy. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub tokens: TokenManager,
    pub metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    shutdown: watch::Sender<bool>,
    proxy_task: JoinHandle<Drained>,
    ops_task: JoinHandle<Drained>,
    driver: JoinHandle<()>,
    access_log: Arc<AccessLog>,
    flusher: JoinHandle<()>,
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
        self.flusher.abort();
        self.access_log.flush();
        drained
    }

    /// Re-read the config file (if started with one) and the secrets; see [`Reloader`].
    pub fn reload(&self, trigger: &str) -> Result<Applied, ReloadError> {
        self.reloader.reload(trigger)
    }
}

/// Start without a config file to reload from (tests, embedding).
pub async fn start(settings: Settings) -> Result<Running, StartError> {
    start_with(settings, None).await
}

/// Load secrets, bind both listeners, start the login driver and serve. With `config_path`,
/// changes to that file (and to the secret files it names) are reloaded live.
pub async fn start_with(
    settings: Settings,
    config_path: Option<PathBuf>,
) -> Result<Running, StartError> {
    start_with_overrides(settings, config_path, Overrides::default()).await
}

/// Like [`start_with`], with command-line values that keep winning over the file's when it
/// is reloaded.
pub async fn start_with_overrides(
    settings: Settings,
    config_path: Option<PathBuf>,
    overrides: Overrides,
) -> Result<Running, StartError> {
    let secret = settings
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
    let max_connections = connection_budget(&settings.proxy)?;
    let proxy_listener = bind("proxy.listen", settings.proxy.listen).await?;
    let ops_listener = bind("ops.listen", settings.ops.listen).await?;
    let local = |l: &TcpListener, key, addr| {
        l.local_addr()
            .map_err(|source| StartError::Bind { key, addr, source })
    };
    let proxy_addr = local(&proxy_listener, "proxy.listen", settings.proxy.listen)?;
    let ops_addr = local(&ops_listener, "ops.listen", settings.ops.listen)?;

    let metrics = Metrics::new();
    // Requests a pooled connection never took, sent again on another.
    let resent = metrics.upstream_error_counter("resent");
    let upstream: Upstream<crate::proxy::limit::ProxyBody> =
        Upstream::counting(&settings.upstream, move || {
            resent.inc();
        })?;
    let login = Login::new(
        upstream.for_body(),
        settings.auth.flavor,
        settings.auth.email.clone(),
        secret,
    )
    .with_secret_source(&settings.auth.secret);
    let tokens = TokenManager::new(login, settings.auth.clone(), metrics.clone());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let driver = tokens.spawn_driver(shutdown_rx.clone());
    // Start-up ends with the first login's answer (or failure): hand back the pages of code
    // only start-up ran (see `memory`) at once, since load may follow right away; after the
    // login driver's turn (its log lines). No timer: an idle proxy must not wake for this.
    let first = tokens.clone();
    tokio::spawn(async move {
        let _ = first.token().await;
        tokio::task::yield_now().await;
        crate::memory::release_code_pages();
    });

    let access_log = Arc::new(AccessLog::stderr(settings.log.format));
    let flusher = access_log.spawn_flusher();
    let (service, handles) = crate::stack::proxy(
        crate::stack::Parts {
            tokens: tokens.clone(),
            rules,
            max_concurrent: settings.proxy.max_concurrent_requests,
            body_timeout: settings.upstream.request_timeout,
            metrics: metrics.clone(),
            access_log: (access_log.clone(), settings.log.access),
        },
        upstream,
    );
    let reloader = Arc::new(Reloader::new(
        config_path,
        overrides,
        settings.clone(),
        handles.clone(),
        tokens.clone(),
        metrics.clone(),
    ));
    let admit: server::Admit = Arc::new(move |ip| handles.peer_allowed(ip));
    let proxy_task = tokio::spawn(server::serve(
        proxy_listener,
        service,
        admit,
        shutdown_rx.clone(),
        settings.proxy.shutdown_grace,
        server::Limits {
            header_read_timeout: settings.proxy.header_read_timeout,
            // Large uploads move in reads of up to 256 KiB instead of 64 KiB: about 18% more
            // throughput for 1 MiB bodies (bench/), for at most 256 KiB per busy connection.
            read_buf_max: 256 * 1024,
            max_connections,
            max_streams_per_connection: settings.proxy.max_streams_per_connection,
            idle_timeout: settings.proxy.idle_timeout,
            send_timeout: settings.proxy.send_timeout,
            release_memory_after: Some(
                settings.upstream.pool_idle_timeout + Duration::from_secs(1),
            ),
            ..server::Limits::default()
        },
        metrics.connections().clone(),
    ));
    let ops = Arc::new(Ops::new(tokens.clone(), metrics.clone()));
    let ops_task = tokio::spawn(server::serve(
        ops_listener,
        tower::service_fn(move |req| {
            let ops = ops.clone();
            async move { Ok::<_, std::convert::Infallible>(ops.handle(req).await) }
        }),
        server::admit_all(),
        shutdown_rx,
        settings.proxy.shutdown_grace,
        server::Limits {
            header_read_timeout: settings.proxy.header_read_timeout,
            max_connections: OPS_MAX_CONNECTIONS,
            ..server::Limits::default()
        },
        // The ops listener's connections are not the proxy's: counted apart (not exported).
        crate::metrics::ConnMetrics::default(),
    ));
    let watch = watch_files(&reloader);
    // Which build and which account: the first two questions when a login is refused.
    let account = match &settings.auth.email {
        Some(email) => email.clone(),
        None => format!("API key from {}", settings.auth.secret.describe()),
    };
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        listen = %proxy_addr,
        ops = %ops_addr,
        upstream = %settings.upstream.url,
        flavor = settings.auth.flavor.as_str(),
        account = %account,
        "medusa-auth-proxy started"
    );
    Ok(Running {
        proxy_addr,
        ops_addr,
        tokens,
        metrics,
        reloader,
        shutdown,
        proxy_task,
        ops_task,
        driver,
        access_log,
        flusher,
        _watch: watch,
    })
}

/// Connections the ops listener (probes, scrapes) holds at most.
const OPS_MAX_CONNECTIONS: usize = 64;
/// File descriptors kept for everything else: listeners, epoll, the log, secret and config
/// files, the file watcher, a login's connection.
const FD_RESERVE: usize = 64;

/// `proxy.max_connections`, checked against the file descriptor limit: raise the soft limit to
/// the hard one first (as the Go runtime does; the default soft limit of 1024 is a relic of
/// `select`), then make sure client connections cannot take the descriptors the proxy needs
/// for its own connections to Medusa.
pub fn connection_budget(p: &crate::config::ProxySettings) -> Result<usize, StartError> {
    let limit = raise_fd_limit();
    let upstream = p.max_concurrent_requests;
    let reserve = OPS_MAX_CONNECTIONS + FD_RESERVE;
    let room = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(upstream + reserve);
    let max_connections = match p.max_connections {
        Some(n) => n,
        // Unset: the default, or what fits.
        None => DEFAULT_MAX_CONNECTIONS.min(room).max(1),
    };
    let needed = max_connections + upstream + reserve;
    if (needed as u64) > limit {
        return Err(StartError::FileDescriptors {
            max_connections,
            upstream,
            reserve,
            needed,
            limit,
        });
    }
    if p.max_connections.is_none() && max_connections < DEFAULT_MAX_CONNECTIONS {
        tracing::warn!(
            max_connections,
            fd_limit = limit,
            "proxy.max_connections lowered from its default 4096 to fit the file descriptor limit"
        );
    }
    Ok(max_connections)
}

const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; return the soft limit now in force.
fn raise_fd_limit() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { key, addr, source })
}

/// Reload when the config file or a secret file it names changes (directory watches, so
/// Kubernetes' `..data` symlink swaps are seen), and only when its bytes differ from what the
/// last attempt read: a rejected edit is reported once, not at every event until it is fixed.
fn watch_files(reloader: &Arc<Reloader>) -> Option<FileWatch> {
    let files = reloader.watched_files();
    if files.is_empty() {
        return None;
    }
    let r = reloader.clone();
    match crate::watch::watch_files(&files, move || {
        let _ = r.reload_if_changed("file change");
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config and secret files; use SIGHUP to reload");
            None
        }
    }
}
