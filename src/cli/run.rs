//! `run`: start the proxy, reload on SIGHUP, drain on SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use medusa_auth_proxy::app;
use medusa_auth_proxy::config::{Overrides, Settings};
use medusa_auth_proxy::server::Drained;
use medusa_auth_proxy::upstream::error_chain;

/// Run until a stop signal; exit 2 for a configuration the app refuses, 1 for other start-up
/// failures.
pub async fn run(settings: Settings, path: Option<PathBuf>, overrides: Overrides) -> ExitCode {
    let grace = settings.proxy.shutdown_grace;
    let running = match app::start_with_overrides(settings, path, overrides).await {
        Ok(r) => r,
        Err(e) => {
            // Once, through the log (which may be JSON for a collector); not also on stderr.
            tracing::error!("{}", error_chain(&e));
            return if e.is_config() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            };
        }
    };
    let signal = loop {
        match next_signal().await {
            Signal::Reload => {
                let _ = running.reload("SIGHUP");
            }
            Signal::Stop(name) => break name,
        }
    };
    tracing::info!(
        signal,
        grace_s = grace.as_secs_f64(),
        "shutting down: no new connections, draining in-flight requests"
    );
    match running.shutdown().await {
        Drained::Clean => {
            tracing::info!("drained; bye");
            ExitCode::SUCCESS
        }
        Drained::GraceExceeded => {
            tracing::warn!("shutdown_grace exceeded; closing remaining connections");
            ExitCode::SUCCESS
        }
    }
}

enum Signal {
    Reload,
    Stop(&'static str),
}

async fn next_signal() -> Signal {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        // Without signal handlers we can still be stopped by SIGKILL; wait forever.
        std::future::pending::<()>().await;
        return Signal::Stop("none");
    };
    tokio::select! {
        _ = term.recv() => Signal::Stop("SIGTERM"),
        _ = int.recv() => Signal::Stop("SIGINT"),
        _ = hup.recv() => Signal::Reload,
    }
}
