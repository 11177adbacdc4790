//! The binary: parse the CLI, initialise logging, load the config, dispatch to a subcommand
//! (`cli/`); map errors to exit codes (2: the configuration or the command line must change,
//! 1: anything else).

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, RunArgs};
use medusa_auth_proxy::config::{LogFormat, LogSettings, Overrides, Settings};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run(RunArgs::default()));
    let (config, overrides, checking) = match command {
        Command::Init(args) => return cli::init(args),
        Command::Wait { ops, timeout } => {
            return match runtime() {
                Ok(rt) => rt.block_on(cli::wait(&ops, timeout)),
                Err(code) => code,
            };
        }
        Command::Run(args) => (cli.config, args.overrides(), None),
        Command::Check { login, no_secrets } => {
            (cli.config, Overrides::default(), Some((login, no_secrets)))
        }
    };
    if config.is_none() && (checking.is_some() || overrides.upstream_url.is_none()) {
        eprintln!(
            "error: --config FILE is required (or set MEDUSA_AUTH_PROXY_CONFIG); `run` also \
             works from flags: --upstream URL --email EMAIL --password-env NAME \
             (see `medusa-auth-proxy run --help`)"
        );
        return ExitCode::from(2);
    }
    let settings = match Settings::load_with(config.as_deref(), &overrides) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    init_tracing(&settings.log);
    match checking {
        None => runtime.block_on(cli::run(settings, config, overrides)),
        Some((login, no_secrets)) => runtime.block_on(cli::check(settings, login, no_secrets)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    runtime_builder().enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
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
