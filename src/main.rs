//! CLI: parse arguments, initialise logging, load the config, run; map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use medusa_auth_proxy::app;
use medusa_auth_proxy::auth::jwt;
use medusa_auth_proxy::auth::login::Login;
use medusa_auth_proxy::config::{LogFormat, LogSettings, Settings};
use medusa_auth_proxy::proxy::Rules;
use medusa_auth_proxy::server::Drained;
use medusa_auth_proxy::upstream::Upstream;

/// Authenticating reverse proxy for the Medusa admin API: tools talk plain HTTP to it, it
/// logs in to Medusa and injects the admin token. Tools never hold a credential.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML).
    #[arg(
        long,
        short,
        global = true,
        env = "MEDUSA_AUTH_PROXY_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config file and that every secret resolves.
    Check {
        /// Also log in to Medusa once and print the token's remaining lifetime (never the token).
        #[arg(long)]
        login: bool,
    },
    /// Wait until a running proxy is ready (GET /readyz answers 200); for scripts and for
    /// clusters without native sidecars.
    Wait {
        /// The proxy's ops listener.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7001")]
        ops: String,
        /// Give up (exit 1) after this long.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Wait { ops, timeout }) = &cli.command {
        return runtime.block_on(wait(ops, *timeout));
    }
    let Some(path) = cli.config else {
        eprintln!("error: --config FILE is required (or set MEDUSA_AUTH_PROXY_CONFIG)");
        return ExitCode::from(2);
    };
    let settings = match Settings::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&settings.log);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => runtime.block_on(run(settings, path)),
        Command::Check { login } => runtime.block_on(check(settings, login)),
        Command::Wait { .. } => ExitCode::FAILURE,
    }
}

/// One worker thread (`TOKIO_WORKER_THREADS=1`, the usual sidecar setting) gets the
/// current-thread scheduler: same behaviour, none of the cross-thread wake-up machinery.
fn runtime_builder() -> tokio::runtime::Builder {
    match std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .as_deref()
        .map(str::trim)
    {
        Some("1") => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
}

/// `RUST_LOG`, when set, wins over `[log] level`.
fn init_tracing(log: &LogSettings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a human at a terminal, never into log files or collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

async fn run(settings: Settings, path: PathBuf) -> ExitCode {
    let grace = settings.proxy.shutdown_grace;
    let running = match app::start_with(settings, Some(path)).await {
        Ok(r) => r,
        Err(e) => {
            // Once, through the log (which may be JSON for a collector); not also on stderr.
            tracing::error!("{e}");
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

/// Poll `{ops}/readyz` until it answers 200.
async fn wait(ops: &str, timeout: std::time::Duration) -> ExitCode {
    use http_body_util::BodyExt;
    let url = format!("{}/readyz", ops.trim_end_matches('/'));
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: --ops {ops:?} is not a URL: {e}");
            return ExitCode::from(2);
        }
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: String;
    loop {
        let attempt =
            tokio::time::timeout(std::time::Duration::from_secs(2), client.get(uri.clone())).await;
        match attempt {
            Ok(Ok(resp)) if resp.status() == http::StatusCode::OK => {
                println!("ready");
                return ExitCode::SUCCESS;
            }
            Ok(Ok(resp)) => {
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                last = format!("{status}: {}", String::from_utf8_lossy(&body));
            }
            Ok(Err(e)) => last = format!("cannot reach {url}: {e}"),
            Err(_) => last = format!("{url} did not answer within 2s"),
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "error: not ready after {}: {last}",
                humantime::format_duration(timeout)
            );
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn check(settings: Settings, login: bool) -> ExitCode {
    let password = match settings.auth.secret.load() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}: {e}", settings.auth.secret_name);
            return ExitCode::from(2);
        }
    };
    let rules = match Rules::from_settings(&settings) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    for name in rules.policy.lifted() {
        println!(
            "WARNING: built-in deny rule {name:?} is lifted (policy.unsafe_lift_builtin_denies)"
        );
    }
    if let Err(e) = Upstream::new(&settings.upstream) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // The limit here is this shell's, which may differ from the service's (LimitNOFILE=).
    if let Err(e) = app::connection_budget(&settings.proxy) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if settings.upstream.pool_idle_timeout >= std::time::Duration::from_secs(5) {
        // Node (Medusa) closes idle keep-alive connections after 5 s by default.
        println!(
            "WARNING: upstream.pool_idle_timeout is {} — keep it below Medusa's keep-alive timeout (Node's default: 5s), or requests may land on connections Medusa is closing",
            humantime::format_duration(settings.upstream.pool_idle_timeout)
        );
    }
    println!(
        "config ok: proxy {} -> {} (flavor {}), ops {}",
        settings.proxy.listen,
        settings.upstream.url,
        settings.auth.flavor.as_str(),
        settings.ops.listen
    );
    if !login {
        return ExitCode::SUCCESS;
    }
    let upstream = match Upstream::new(&settings.upstream) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let login = Login::new(
        upstream,
        settings.auth.flavor,
        settings.auth.email.clone(),
        password,
    );
    let timeout = settings.auth.login_timeout;
    let cred = match tokio::time::timeout(timeout, login.obtain(None)).await {
        Err(_) => {
            eprintln!("error: login timed out after {timeout:?}");
            return ExitCode::FAILURE;
        }
        Ok(Err(e)) => {
            eprintln!("error: login failed: {e}");
            return ExitCode::FAILURE;
        }
        Ok(Ok(c)) => c,
    };
    if cred.flavor.is_static() {
        println!(
            "login ok: flavor {}: the API key was accepted by Medusa (static: it does not expire)",
            cred.flavor.as_str()
        );
        return ExitCode::SUCCESS;
    }
    match jwt::inspect(cred.value.expose(), settings.auth.default_token_lifetime) {
        Ok(info) => {
            println!(
                "login ok: flavor {}, user {}, token valid for {}{}",
                cred.flavor.as_str(),
                info.user_id.as_deref().unwrap_or("(unknown)"),
                humantime::format_duration(std::time::Duration::from_secs(info.lifetime.as_secs())),
                if info.from_claims {
                    ""
                } else {
                    " (no exp claim: default_token_lifetime)"
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: login answered, but {e}");
            ExitCode::FAILURE
        }
    }
}
