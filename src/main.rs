//! CLI: parse arguments, initialise logging, load the config, run; map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use medusa_auth_proxy::app;
use medusa_auth_proxy::auth::jwt;
use medusa_auth_proxy::auth::login::Login;
use medusa_auth_proxy::config::{self, LogFormat, LogSettings, Overrides, Rules, Settings};
use medusa_auth_proxy::server::Drained;
use medusa_auth_proxy::upstream::{Upstream, error_chain};

/// Authenticating reverse proxy for the Medusa admin API: tools talk plain HTTP to it, it
/// logs in to Medusa and injects the admin token. Tools never hold a credential.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Examples:
  medusa-auth-proxy init --upstream http://127.0.0.1:9000 --email admin@example.com \\
      --password-env MEDUSA_ADMIN_PASSWORD --output proxy.toml
  medusa-auth-proxy check --config proxy.toml --login
  medusa-auth-proxy --config proxy.toml"
)]
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
    /// Run the proxy (the default), from a config file, from flags, or both (flags win).
    #[command(after_help = "Examples:
  medusa-auth-proxy run --config proxy.toml
  read -rs MEDUSA_ADMIN_PASSWORD && export MEDUSA_ADMIN_PASSWORD   # typed, not echoed
  medusa-auth-proxy run --upstream http://127.0.0.1:9000 --email admin@example.com \\
      --password-env MEDUSA_ADMIN_PASSWORD")]
    Run(RunArgs),
    /// Validate the config file and that every secret resolves.
    #[command(after_help = "Examples:
  medusa-auth-proxy check --config proxy.toml
  medusa-auth-proxy check --config proxy.toml --login      # also log in once
  medusa-auth-proxy check --config deploy/systemd/config.toml --no-secrets   # CI")]
    Check {
        /// Also log in to Medusa once and print the token's remaining lifetime (never the token).
        #[arg(long, conflicts_with = "no_secrets")]
        login: bool,
        /// Validate everything except the secrets' values (password, API key, client keys
        /// file): for CI of manifests whose secrets live elsewhere.
        #[arg(long)]
        no_secrets: bool,
    },
    /// Write a commented config file for the answers given as flags.
    #[command(after_help = "Examples:
  medusa-auth-proxy init --upstream http://127.0.0.1:9000 --email admin@example.com \\
      --password-env MEDUSA_ADMIN_PASSWORD --output proxy.toml
  medusa-auth-proxy init --upstream https://medusa.example.com --flavor v2-secret-key \\
      --api-key-file /run/secrets/medusa-key --output proxy.toml")]
    Init(InitArgs),
    /// Wait until a running proxy is ready (GET /readyz answers 200); for scripts and for
    /// clusters without native sidecars.
    #[command(after_help = "Example:
  medusa-auth-proxy wait --ops http://127.0.0.1:7001 --timeout 30s && ./my-tool")]
    Wait {
        /// The proxy's ops listener.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7001")]
        ops: String,
        /// Give up (exit 1) after this long.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// `run`'s flags: each replaces the config file's value (or stands in for a file).
#[derive(Debug, Default, clap::Args)]
struct RunArgs {
    /// Medusa's base URL (upstream.url).
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// auth.flavor: auto, v1, v2 (without a config file: auto).
    #[arg(long)]
    flavor: Option<String>,
    /// The Medusa account's email (auth.email).
    #[arg(long, value_name = "EMAIL")]
    email: Option<String>,
    /// The environment variable holding the password (auth.password_env). The password itself
    /// is never a flag: it would land in shell history and `ps`.
    #[arg(long, value_name = "NAME", conflicts_with = "password_file")]
    password_env: Option<String>,
    /// The file holding the password (auth.password_file).
    #[arg(long, value_name = "PATH")]
    password_file: Option<PathBuf>,
    /// Address tools connect to (proxy.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Address of /healthz, /readyz and /metrics (ops.listen).
    #[arg(long, value_name = "ADDR")]
    ops_listen: Option<String>,
}

impl RunArgs {
    fn overrides(self) -> Overrides {
        Overrides {
            upstream_url: self.upstream,
            flavor: self.flavor,
            email: self.email,
            password_env: self.password_env,
            password_file: self.password_file,
            listen: self.listen,
            ops_listen: self.ops_listen,
        }
    }
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Medusa's base URL, e.g. http://127.0.0.1:9000.
    #[arg(long, value_name = "URL")]
    upstream: String,
    /// auto (detect v1 or v2), v1, v2, v1-api-token, v2-secret-key.
    #[arg(long, default_value = "auto")]
    flavor: String,
    /// The proxy's Medusa account (login flavors).
    #[arg(long, value_name = "EMAIL")]
    email: Option<String>,
    /// Environment variable that will hold the password (login flavors).
    #[arg(long, value_name = "NAME", group = "password")]
    password_env: Option<String>,
    /// File that will hold the password (login flavors).
    #[arg(long, value_name = "PATH", group = "password")]
    password_file: Option<PathBuf>,
    /// Environment variable that will hold the API key (v1-api-token, v2-secret-key).
    #[arg(long, value_name = "NAME", group = "api_key")]
    api_key_env: Option<String>,
    /// File that will hold the API key (v1-api-token, v2-secret-key).
    #[arg(long, value_name = "PATH", group = "api_key")]
    api_key_file: Option<PathBuf>,
    /// Address tools connect to.
    #[arg(long, value_name = "ADDR", default_value = config::defaults::LISTEN)]
    listen: String,
    /// Write here instead of stdout; an existing file is never overwritten.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run(RunArgs::default()));
    let (config, overrides, checking) = match command {
        Command::Init(args) => return init(args),
        Command::Wait { ops, timeout } => {
            return match runtime() {
                Ok(rt) => rt.block_on(wait(&ops, timeout)),
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
        None => runtime.block_on(run(settings, config, overrides)),
        Some((login, no_secrets)) => runtime.block_on(check(settings, login, no_secrets)),
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

async fn run(settings: Settings, path: Option<PathBuf>, overrides: Overrides) -> ExitCode {
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

async fn check(settings: Settings, login: bool, no_secrets: bool) -> ExitCode {
    let password = if no_secrets {
        None
    } else {
        match settings.auth.secret.load() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("error: {}: {e}", settings.auth.secret_name);
                return ExitCode::from(2);
            }
        }
    };
    let rules = if no_secrets {
        Ok(Rules::without_secrets(&settings))
    } else {
        Rules::from_settings(&settings)
    };
    let rules = match rules {
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
    if let Err(e) = Upstream::<http_body_util::Full<bytes::Bytes>>::new(&settings.upstream) {
        eprintln!("error: {}", error_chain(&e));
        return ExitCode::from(2);
    }
    // The limit here is this shell's, which may differ from the service's (LimitNOFILE=).
    if let Err(e) = app::connection_budget(&settings.proxy) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // The key is a secret: with --no-secrets neither file is read (they may exist only in the pod).
    if let (Some(files), false) = (&settings.proxy.tls, no_secrets)
        && let Err(e) = medusa_auth_proxy::tls::load_pair(files)
    {
        eprintln!("error: {}", error_chain(&e));
        return ExitCode::from(2);
    }
    if let Some(warning) = medusa_auth_proxy::tls::cleartext_keys_warning(
        "proxy",
        settings.proxy.listen,
        settings.access.client_keys_file.is_some(),
        settings.proxy.tls.is_some(),
    ) {
        println!("WARNING: {warning}");
    }
    if settings.upstream.pool_idle_timeout >= std::time::Duration::from_secs(5) {
        // Node (Medusa) closes idle keep-alive connections after 5 s by default.
        println!(
            "WARNING: upstream.pool_idle_timeout is {} — keep it below Medusa's keep-alive timeout (Node's default: 5s), or requests may land on connections Medusa is closing",
            humantime::format_duration(settings.upstream.pool_idle_timeout)
        );
    }
    if !medusa_auth_proxy::access::is_loopback_listen(settings.proxy.listen)
        && !rules.access.allow_cidrs.is_empty()
        && rules
            .access
            .allow_cidrs
            .iter()
            .all(|c| c.is_loopback_only())
    {
        // Peers outside allow_cidrs are closed at accept: such a listener serves nobody remote.
        println!(
            "WARNING: proxy.listen = \"{}\" accepts connections from other machines, but \
             [access] allow_cidrs admits only loopback peers, so every remote caller will be \
             refused: add their network to allow_cidrs (e.g. \"10.0.0.0/8\"), or listen on \
             127.0.0.1",
            settings.proxy.listen
        );
    }
    println!(
        "config ok: proxy {}{} -> {} (flavor {}), ops {}{}",
        settings.proxy.listen,
        if settings.proxy.tls.is_some() {
            " (TLS)"
        } else {
            ""
        },
        settings.upstream.url,
        settings.auth.flavor.as_str(),
        settings.ops.listen,
        if no_secrets {
            "; secrets not read (--no-secrets)"
        } else {
            ""
        }
    );
    let (true, Some(password)) = (login, password) else {
        return ExitCode::SUCCESS;
    };
    let upstream = match Upstream::new(&settings.upstream) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let login = Login::new(
        upstream,
        settings.auth.flavor,
        settings.auth.email.clone(),
        password,
    )
    .with_secret_source(&settings.auth.secret);
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

/// `init`: a commented config for the answers given, validated before it is written.
fn init(args: InitArgs) -> ExitCode {
    let quote = |v: &str| toml::Value::String(v.to_owned()).to_string();
    let flavor = args.flavor.as_str();
    let is_static = matches!(flavor, "v1-api-token" | "v2-secret-key");
    let mut auth = String::new();
    if is_static {
        let secret = match (&args.api_key_env, &args.api_key_file) {
            (Some(name), None) => format!(
                "# The API key is read from this environment variable at start-up (never put\n\
                 # it in this file).\napi_key_env = {}\n",
                quote(name)
            ),
            (None, Some(path)) => format!(
                "# The API key is read from this file (one trailing newline is trimmed) and\n\
                 # re-read when it changes.\napi_key_file = {}\n",
                quote(&path.to_string_lossy())
            ),
            _ => {
                eprintln!("error: flavor {flavor} needs --api-key-env NAME or --api-key-file PATH");
                return ExitCode::from(2);
            }
        };
        auth.push_str(&secret);
    } else {
        let Some(email) = &args.email else {
            eprintln!("error: flavor {flavor} logs in: --email EMAIL is required");
            return ExitCode::from(2);
        };
        auth.push_str(&format!(
            "# The proxy's own Medusa account: give it only the rights your tools need.\n\
             email = {}\n",
            quote(email)
        ));
        let secret = match (&args.password_env, &args.password_file) {
            (Some(name), None) => format!(
                "# The password is read from this environment variable at start-up (never put\n\
                 # it in this file or on a command line).\npassword_env = {}\n",
                quote(name)
            ),
            (None, Some(path)) => format!(
                "# The password is read from this file (one trailing newline is trimmed) and\n\
                 # re-read when it changes.\npassword_file = {}\n",
                quote(&path.to_string_lossy())
            ),
            _ => {
                eprintln!(
                    "error: flavor {flavor} logs in: --password-env NAME or --password-file PATH is required"
                );
                return ExitCode::from(2);
            }
        };
        auth.push_str(&secret);
    }
    let target = args
        .output
        .as_ref()
        .map_or_else(|| "FILE".to_owned(), |p| p.display().to_string());
    let text = format!(
        "# medusa-auth-proxy configuration, written by `medusa-auth-proxy init`.\n\
         #   check it:  medusa-auth-proxy check --config {target} --login\n\
         #   run it:    medusa-auth-proxy --config {target}\n\
         # Every key is documented in config/example.toml; unknown keys are errors. Changes to\n\
         # this file (and to a secret file it names) are applied live.\n\
         \n\
         [proxy]\n\
         # Where tools connect. A loopback address serves this machine only; any other needs\n\
         # [access] client_keys_file or allow_cidrs (`check` says which).\n\
         listen = {listen}\n\
         \n\
         [upstream]\n\
         # Medusa's base URL, with its path prefix if it is served under one.\n\
         url = {url}\n\
         \n\
         [auth]\n\
         # \"auto\" detects Medusa v1 or v2 at the first login; \"v1\", \"v2\" fix it;\n\
         # \"v1-api-token\" and \"v2-secret-key\" use a static key instead of a login.\n\
         flavor = {flavor_q}\n\
         {auth}\
         \n\
         [ops]\n\
         # /healthz, /readyz (200 once a credential is held) and /metrics.\n\
         listen = {ops_listen}\n",
        listen = quote(&args.listen),
        ops_listen = quote(config::defaults::OPS_LISTEN),
        url = quote(&args.upstream),
        flavor_q = quote(flavor),
    );
    // What init writes must pass `check`: validate it the same way before writing it.
    if let Err(e) = Settings::from_toml(&text) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let Some(path) = &args.output else {
        print!("{text}");
        return ExitCode::SUCCESS;
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    match written {
        Ok(()) => {
            eprintln!(
                "wrote {}; next: medusa-auth-proxy check --config {} --login",
                path.display(),
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!(
                "error: {} exists; init never overwrites a file (remove it, or choose another --output)",
                path.display()
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
