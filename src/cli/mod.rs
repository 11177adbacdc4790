//! The command line: clap's definitions of the flags and subcommands, and one file per
//! subcommand. Binary-only: `main.rs` declares this module, the library does not (its API
//! is what an embedding program uses, not the CLI).

mod check;
mod init;
mod run;
mod wait;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use medusa_auth_proxy::config::{self, Overrides};

pub use check::check;
pub use init::init;
pub use run::run;
pub use wait::wait;

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
pub struct Cli {
    /// Config file (TOML).
    #[arg(
        long,
        short,
        global = true,
        env = "MEDUSA_AUTH_PROXY_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
pub struct RunArgs {
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
    /// The flags as config overrides (what the file says, unless a flag says otherwise).
    pub fn overrides(self) -> Overrides {
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

/// `init`'s answers: what the written config will say.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
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
