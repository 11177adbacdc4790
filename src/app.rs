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
use crate::proxy::Proxy;
use crate::secret::SecretError;
use crate::server::{self, Drained};
use crate::upstream::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("auth.password: {0}")]
    Secret(#[from] SecretError),
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
    let password = settings.auth.password.load()?;
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

    let upstream = Upstream::new(&settings.upstream);
    let login = Login::new(
        upstream.clone(),
        settings.auth.flavor,
        settings.auth.email.clone(),
        password,
    );
    let tokens = TokenManager::new(login, settings.auth.clone());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let driver = tokens.spawn_driver(shutdown_rx.clone());

    let proxy = Arc::new(Proxy::new(upstream, tokens.clone()));
    let proxy_task = tokio::spawn(server::serve(
        proxy_listener,
        move |req, peer| {
            let proxy = proxy.clone();
            async move { proxy.handle(req, peer).await }
        },
        shutdown_rx.clone(),
        settings.proxy.shutdown_grace,
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
    ));
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
    })
}
