//! `init`: write a commented config file for the answers given as flags.

use std::process::ExitCode;

use medusa_auth_proxy::config::{self, Settings};

use super::InitArgs;

/// `init`: a commented config for the answers given, validated before it is written.
pub fn init(args: InitArgs) -> ExitCode {
    let quote = |v: &str| toml::Value::String(v.to_owned()).to_string();
    // A secret file's path is taken in the working directory of the proxy, not the config's
    // folder: write it absolute, as meant here, so the config works from anywhere.
    let absolute = |p: &std::path::Path| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .to_string_lossy()
            .into_owned()
    };
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
                quote(&absolute(path))
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
                quote(&absolute(path))
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
         #   (from a source checkout: cargo run --release -- and the same arguments)\n\
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
            let next = format!("check --config {} --login", path.display());
            eprintln!(
                "wrote {}; next: medusa-auth-proxy {next}\n  (from a source checkout: cargo run --release -- {next})",
                path.display(),
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
