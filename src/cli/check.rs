//! `check`: validate the config and its secrets; with `--login`, log in to Medusa once.

use std::process::ExitCode;

use medusa_auth_proxy::app;
use medusa_auth_proxy::auth::jwt;
use medusa_auth_proxy::auth::login::Login;
use medusa_auth_proxy::config::{Rules, Settings};
use medusa_auth_proxy::upstream::{Upstream, error_chain};

/// Print the config's warnings and summary (never a secret); exit 2 for what the config must
/// change, 1 for a failed login.
pub async fn check(settings: Settings, login: bool, no_secrets: bool) -> ExitCode {
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
