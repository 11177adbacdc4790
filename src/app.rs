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
use crate::config::{ConfigError, Overrides, Rules, Settings};
use crate::identity::Identity;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::proxy::admit::AdmitLayer;
use crate::reload::{Applied, ReloadError, Reloader};
use crate::roster::{Roster, RosterError};
use crate::secret::SecretError;
use crate::server::{self, Drained};
use crate::stack::swap::Swappable;
use crate::stack::{Listener, Parts, Stack};
use crate::tls::TlsAcceptor;
use crate::watch::FileWatch;

/// Why the proxy did not start. Each message names the config key to change (or the
/// address that could not be bound), never a secret; [`StartError::is_config`] tells a
/// refused configuration from a failure of the environment (the binary's exit status 2 or 1).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The credential could not be read from its source: the config key it was given by
    /// (`auth.password`, `auth.api_key`, ...) and why (variable unset, file unreadable,
    /// empty).
    #[error("{0}: {1}")]
    Secret(std::borrow::Cow<'static, str>, SecretError),
    /// The access or policy rules are invalid (a CIDR, a route rule, the client keys file).
    #[error(transparent)]
    Rules(#[from] ConfigError),
    /// The client for Medusa could not be set up (`upstream.ca_file`, `upstream.url`).
    #[error(transparent)]
    Tls(#[from] crate::upstream::TlsSetupError),
    /// The listener's certificate or key (`proxy.tls_cert_file`, `proxy.tls_key_file`).
    #[error(transparent)]
    ListenerTls(#[from] crate::tls::TlsError),
    /// The client connections of every listener (`[proxy]` and each `[[listeners]]`), plus
    /// the connections to Medusa their slots can hold and what the proxy needs besides,
    /// exceed the file descriptor limit even after the soft limit was raised to the hard one.
    #[error(
        "config key `proxy.max_connections`: {max_connections} client connections and \
         {upstream} connections to Medusa (max_concurrent_requests), the sum over the \
         {listeners} listener(s) ([proxy] and each [[listeners]]), plus {reserve} for the ops \
         listener and files, need {needed} file descriptors, but the limit (RLIMIT_NOFILE, \
         raised to its hard limit) is {limit}; lower max_connections ([proxy] or \
         [[listeners]]) or raise the limit (systemd LimitNOFILE=, docker --ulimit nofile=)"
    )]
    FileDescriptors {
        /// Client connections allowed, summed over the listeners (each one's
        /// `max_connections`, or `[proxy]`'s, or its default).
        max_connections: usize,
        /// Connections to Medusa at most: the listeners' `max_concurrent_requests`, summed.
        upstream: usize,
        /// How many listeners were summed: `[proxy]` and each `[[listeners]]` entry.
        listeners: usize,
        /// Descriptors kept for the ops listener's connections, listeners, files and logins.
        reserve: usize,
        /// `max_connections + upstream + reserve`.
        needed: usize,
        /// The soft `RLIMIT_NOFILE` in force.
        limit: libc::rlim_t,
    },
    /// A listener could not be bound (address in use, no permission for the port, an
    /// address of no local interface).
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// The config key of the address: `proxy.listen` or `ops.listen`.
        key: &'static str,
        /// The address as configured.
        addr: SocketAddr,
        /// What the operating system answered.
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
            | StartError::ListenerTls(_)
            | StartError::FileDescriptors { .. } => true,
            // The address may be fine and merely taken; the port may be free a moment later.
            StartError::Bind { .. } => false,
        }
    }
}

/// A running proxy. Dropping it does not stop it; call [`Running::shutdown`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use medusa_auth_proxy::{app, config::Settings};
///
/// let settings = Settings::load(std::path::Path::new("/etc/medusa-auth-proxy.toml"))?;
/// let running = app::start(settings).await?;
/// println!("proxy on {}, ops on {}", running.proxy_addr, running.ops_addr);
/// tokio::signal::ctrl_c().await?;
/// let drained = running.shutdown().await;
/// println!("{drained:?}");
/// # Ok(()) }
/// ```
pub struct Running {
    /// The address the proxy listener is bound to (the port the OS chose for `:0`).
    pub proxy_addr: SocketAddr,
    /// The address the ops listener (`/healthz`, `/readyz`, `/metrics`) is bound to.
    pub ops_addr: SocketAddr,
    /// The bound address of each `[[listeners]]` entry, in order.
    pub listener_addrs: Vec<SocketAddr>,
    /// The first identity's token manager at start (the single form's only one, which a
    /// reload keeps), its login driver running.
    pub tokens: TokenManager,
    /// Every identity at start, in the configuration's order (after a reload:
    /// [`Running::current_identities`]).
    pub identities: Vec<Identity>,
    /// The proxy's metrics registry (what `/metrics` on the ops listener exports).
    pub metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    shutdown: watch::Sender<bool>,
    proxy_task: JoinHandle<Drained>,
    listener_tasks: Vec<JoinHandle<Drained>>,
    ops_task: JoinHandle<Drained>,
    live: Arc<Live>,
    access_log: Arc<AccessLog>,
    flusher: JoinHandle<()>,
    _tls_watch: Vec<FileWatch>,
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
        let mut drained = self.proxy_task.await.unwrap_or(Drained::GraceExceeded);
        for task in self.listener_tasks {
            if task.await.unwrap_or(Drained::GraceExceeded) == Drained::GraceExceeded {
                drained = Drained::GraceExceeded;
            }
        }
        let _ = self.ops_task.await;
        self.live.stop();
        self.flusher.abort();
        self.access_log.flush();
        drained
    }

    /// Re-read the config file (if started with one) and the secrets; see [`Reloader`].
    pub fn reload(&self, trigger: &str) -> Result<Applied, ReloadError> {
        self.reloader.reload(trigger)
    }

    /// The identities in force now (a reload may have added, removed or changed some since
    /// [`Running::identities`] was taken at start).
    pub fn current_identities(&self) -> Vec<Identity> {
        self.live.identities()
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
    // Every secret first: a missing one is a config error before anything listens.
    let secrets = settings
        .load_secrets()
        .map_err(|(key, e)| StartError::Secret(key, e))?;
    let rules = Rules::from_settings(&settings)?;
    for name in rules.policy.lifted() {
        tracing::warn!(
            rule = %name,
            "UNSAFE: built-in deny rule lifted by policy.unsafe_lift_builtin_denies; callers can reach a route that mints or ends credentials"
        );
    }
    let max_connections = connection_budget(&settings)?;
    let tls = listener_tls(&settings.proxy.tls)?;
    let mut listener_tls_acceptors = Vec::with_capacity(settings.listeners.len());
    for l in &settings.listeners {
        listener_tls_acceptors.push(listener_tls(&l.tls)?);
    }
    let warnings = crate::tls::cleartext_keys_warnings(&settings);
    for warning in warnings
        .into_iter()
        .chain(settings.unreachable_listener_warnings())
    {
        tracing::warn!("{warning}");
    }
    let proxy_listener = bind("proxy.listen", settings.proxy.listen).await?;
    let ops_listener = bind("ops.listen", settings.ops.listen).await?;
    let mut extra_listeners = Vec::with_capacity(settings.listeners.len());
    for l in &settings.listeners {
        extra_listeners.push(bind("listeners.listen", l.listen).await?);
    }
    let local = |l: &TcpListener, key, addr| {
        l.local_addr()
            .map_err(|source| StartError::Bind { key, addr, source })
    };
    let proxy_addr = local(&proxy_listener, "proxy.listen", settings.proxy.listen)?;
    let ops_addr = local(&ops_listener, "ops.listen", settings.ops.listen)?;
    let mut listener_addrs = Vec::with_capacity(extra_listeners.len());
    for (l, s) in extra_listeners.iter().zip(&settings.listeners) {
        listener_addrs.push(local(l, "listeners.listen", s.listen)?);
    }

    let metrics = Metrics::new();
    let (shutdown, shutdown_rx) = watch::channel(false);
    // One pooled client per upstream; per identity its token manager, whose driver is its own
    // task: logins at start run concurrently, and one identity's failures and backoff never
    // hold up another's.
    let roster_error = |e| match e {
        RosterError::Config(e) => StartError::Rules(e),
        RosterError::Tls(e) => StartError::Tls(e),
    };
    let mut roster =
        Roster::prepare(&settings, metrics.clone(), shutdown_rx.clone()).map_err(roster_error)?;
    // Nothing can fail now: say so before any driver logs (`ready` follows `started`).
    log_started(&settings, proxy_addr, ops_addr, &listener_addrs);
    roster.next(&settings, secrets).map_err(roster_error)?;
    let identities = roster.identities();
    let tokens = identities[0].tokens().clone();
    // Start-up ends when every identity's first login has answered (or failed): then hand
    // back the code pages only start-up ran (`memory`). No timer: idle must mean asleep.
    let firsts: Vec<_> = identities.iter().map(|i| i.tokens().clone()).collect();
    crate::memory::release_code_after(async move {
        for t in firsts {
            let _ = t.token().await;
        }
    });

    let access_log = Arc::new(AccessLog::stderr(settings.log.format));
    let flusher = access_log.spawn_flusher();
    let (stack, handles) = Stack::proxy(
        Parts {
            identities: identities.clone(),
            main: settings.main_identity,
            rules,
            body_timeout: crate::live::body_timeout(&settings),
            metrics: metrics.clone(),
            access_log: (access_log.clone(), settings.log.access),
        },
        roster.routes(),
    );
    // Each listener serves the stack in force when a request arrives: a reload that changes
    // identities stores a new one (crate::live). Its slots stay the listener's own.
    let main_slots = AdmitLayer::new(settings.proxy.max_concurrent_requests);
    let (main_service, main_swap) =
        Swappable::new(stack.service_with_slots(Listener::Main, main_slots.clone()));
    let mut listener_services = Vec::with_capacity(settings.listeners.len());
    let mut listener_swaps = Vec::with_capacity(settings.listeners.len());
    for l in &settings.listeners {
        let slots = AdmitLayer::new(
            l.max_concurrent_requests
                .unwrap_or(settings.proxy.max_concurrent_requests),
        );
        let fixed = Listener::Fixed {
            identity: l.identity,
        };
        let (service, swap) = Swappable::new(stack.service_with_slots(fixed, slots.clone()));
        listener_services.push(service);
        listener_swaps.push((swap, slots));
    }
    let rebuild: crate::live::Rebuild = Box::new(move |stack, fixed| {
        main_swap.store(stack.service_with_slots(Listener::Main, main_slots.clone()));
        for ((swap, slots), &identity) in listener_swaps.iter().zip(fixed) {
            swap.store(stack.service_with_slots(Listener::Fixed { identity }, slots.clone()));
        }
    });
    let ops = Arc::new(Ops::with_identities(identities.clone(), metrics.clone()));
    let live = Arc::new(Live::new(roster, stack, handles, rebuild, ops.clone()));
    let reloader = Reloader::new(
        config_path,
        overrides,
        settings.clone(),
        live.clone(),
        metrics.clone(),
    );
    let peers = live.clone();
    let admit: server::Admit = Arc::new(move |ip| peers.handles().peer_allowed(ip));
    let limits = |max_connections| server::Limits {
        header_read_timeout: settings.proxy.header_read_timeout,
        // Large uploads move in reads of up to 256 KiB instead of 64 KiB: about 18% more
        // throughput for 1 MiB bodies (bench/), for at most 256 KiB per busy connection.
        read_buf_max: 256 * 1024,
        max_connections,
        max_connections_per_peer: settings.proxy.max_connections_per_peer,
        max_streams_per_connection: settings.proxy.max_streams_per_connection,
        idle_timeout: settings.proxy.idle_timeout,
        send_timeout: settings.proxy.send_timeout,
        release_memory_after: Some(settings.upstream.pool_idle_timeout + Duration::from_secs(1)),
        ..server::Limits::default()
    };
    // Each TLS listener's pair is reloaded when its files change.
    let tls_watch: Vec<FileWatch> = std::iter::once(&tls)
        .chain(&listener_tls_acceptors)
        .flatten()
        .filter_map(TlsAcceptor::watch)
        .collect();
    let proxy_task = tokio::spawn(server::serve_tls(
        proxy_listener,
        main_service,
        admit.clone(),
        shutdown_rx.clone(),
        settings.proxy.shutdown_grace,
        limits(max_connections),
        metrics.connections().clone(),
        tls,
    ));
    // Each [[listeners]] entry: the same stack with its identity fixed, and [proxy] limits
    // of its own.
    let mut listener_tasks = Vec::with_capacity(extra_listeners.len());
    let extra = extra_listeners.into_iter().zip(listener_tls_acceptors);
    for (((listener, tls), l), service) in extra.zip(&settings.listeners).zip(listener_services) {
        listener_tasks.push(tokio::spawn(server::serve_tls(
            listener,
            service,
            admit.clone(),
            shutdown_rx.clone(),
            settings.proxy.shutdown_grace,
            limits(l.max_connections.unwrap_or(max_connections)),
            metrics.connections().clone(),
            tls,
        )));
    }
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
    reloader.watch();
    Ok(Running {
        proxy_addr,
        ops_addr,
        listener_addrs,
        tokens,
        identities,
        metrics,
        reloader,
        shutdown,
        proxy_task,
        listener_tasks,
        ops_task,
        live,
        access_log,
        flusher,
        _tls_watch: tls_watch,
    })
}

/// The start-up line: which build, which addresses, which account (the first questions when a
/// login is refused); with several identities, one line each before it.
fn log_started(
    settings: &Settings,
    proxy_addr: SocketAddr,
    ops_addr: SocketAddr,
    listener_addrs: &[SocketAddr],
) {
    // Which build and which account: the first two questions when a login is refused.
    let account = |auth: &crate::config::AuthSettings| match &auth.email {
        Some(email) => email.clone(),
        None => format!("API key from {}", auth.secret.describe()),
    };
    if settings.identities.len() > 1 {
        for id in &settings.identities {
            let upstream = settings
                .upstreams
                .iter()
                .find(|x| x.name == id.upstream)
                .map_or("", |x| x.settings.url.as_str());
            tracing::info!(
                identity = %id.name,
                upstream = %upstream,
                flavor = id.auth.flavor.as_str(),
                account = %account(&id.auth),
                "identity"
            );
        }
    }
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        listen = %proxy_addr,
        tls = settings.proxy.tls.is_some(),
        ops = %ops_addr,
        listeners = ?listener_addrs,
        upstream = %settings.upstream.url,
        flavor = settings.auth.flavor.as_str(),
        account = %account(&settings.auth),
        identities = settings.identities.len(),
        "medusa-auth-proxy started"
    );
}

/// The TLS acceptor of a listener serving `files`, if set.
fn listener_tls(
    files: &Option<crate::config::TlsFiles>,
) -> Result<Option<TlsAcceptor>, StartError> {
    Ok(match files {
        Some(files) => Some(TlsAcceptor::new(files.clone())?),
        None => None,
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
/// for its own connections to Medusa. Every listener counts: `[proxy]` and each
/// `[[listeners]]` entry has its own connections and its own slots (each slot a connection to
/// Medusa at most), so the need is their sum. Unset, `proxy.max_connections` is the default or
/// what fits, shared by the listeners that inherit it.
pub fn connection_budget(settings: &crate::config::Settings) -> Result<usize, StartError> {
    fit_connections(raise_fd_limit(), settings)
}

/// [`connection_budget`] under the descriptor limit `limit`.
fn fit_connections(
    limit: libc::rlim_t,
    settings: &crate::config::Settings,
) -> Result<usize, StartError> {
    let p = &settings.proxy;
    let extra = &settings.listeners;
    let upstream: usize = p.max_concurrent_requests
        + extra
            .iter()
            .map(|l| {
                l.max_concurrent_requests
                    .unwrap_or(p.max_concurrent_requests)
            })
            .sum::<usize>();
    let own: usize = extra.iter().filter_map(|l| l.max_connections).sum();
    // The main listener and each entry without a max_connections of its own.
    let inheriting = 1 + extra.iter().filter(|l| l.max_connections.is_none()).count();
    let reserve = OPS_MAX_CONNECTIONS + FD_RESERVE;
    let room = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(upstream + reserve + own);
    let max_connections = match p.max_connections {
        Some(n) => n,
        // Unset: the default, or what fits.
        None => DEFAULT_MAX_CONNECTIONS.min(room / inheriting).max(1),
    };
    let clients = max_connections * inheriting + own;
    let needed = clients + upstream + reserve;
    if (needed as u64) > limit {
        return Err(StartError::FileDescriptors {
            max_connections: clients,
            upstream,
            listeners: 1 + extra.len(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings with `proxy` lines in `[proxy]` and `listeners` appended.
    fn settings(proxy: &str, listeners: &str) -> Settings {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n{proxy}\n[upstream]\nurl = \"http://127.0.0.1:9000\"\n\
             [auth]\nflavor = \"v1\"\nemail = \"a@b.c\"\npassword_env = \"X\"\n{listeners}"
        );
        Settings::from_toml(&text).unwrap()
    }

    const ENTRY: &str = "[[listeners]]\nlisten = \"127.0.0.1:0\"\nidentity = \"default\"\n";

    #[test]
    fn every_listener_counts_against_the_limit() {
        let two = format!("{ENTRY}max_connections = 400\n");
        let s = settings("max_concurrent_requests = 64\nmax_connections = 400", &two);
        // Alone, each fits 1024 (400 + 64 + 128); together: 800 + 128 + 128 = 1056.
        match fit_connections(1024, &s) {
            Err(e @ StartError::FileDescriptors { .. }) => {
                let text = e.to_string();
                for n in [
                    "800 client",
                    "128 connections to Medusa",
                    "1056",
                    "1024",
                    "2 listener",
                ] {
                    assert!(text.contains(n), "{n}: {text}");
                }
                assert!(e.is_config());
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(fit_connections(1056, &s).unwrap(), 400);
        // An entry's own max_concurrent_requests counts as its own connections to Medusa.
        let own = format!("{ENTRY}max_connections = 400\nmax_concurrent_requests = 8\n");
        let s = settings("max_concurrent_requests = 64\nmax_connections = 400", &own);
        assert_eq!(fit_connections(1000, &s).unwrap(), 400);
        assert!(fit_connections(999, &s).is_err());
    }

    #[test]
    fn unset_max_connections_is_shared_by_the_listeners_that_inherit_it() {
        let s = settings("max_concurrent_requests = 64", ENTRY);
        // 1024 - 128 (two listeners' slots) - 128 (reserve) = 768, for two listeners.
        assert_eq!(fit_connections(1024, &s).unwrap(), 384);
        // An entry with its own value takes it off the room first.
        let own = format!("{ENTRY}max_connections = 168\n");
        let s = settings("max_concurrent_requests = 64", &own);
        assert_eq!(fit_connections(1024, &s).unwrap(), 600);
        let s = settings("max_concurrent_requests = 64", "");
        assert_eq!(
            fit_connections(1 << 20, &s).unwrap(),
            DEFAULT_MAX_CONNECTIONS
        );
    }
}
