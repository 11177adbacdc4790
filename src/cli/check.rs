//! `check`: validate the config and the secrets of every identity; with `--login`, log every
//! identity in to its Medusa once, all at the same time, and print each one's lifetime.

use std::process::ExitCode;

use medusa_auth_proxy::app;
use medusa_auth_proxy::auth::jwt;
use medusa_auth_proxy::auth::login::Login;
use medusa_auth_proxy::config::{IdentitySettings, Rules, Settings, UpstreamSettings};
use medusa_auth_proxy::secret::Secret;
use medusa_auth_proxy::tls::cleartext_keys_warnings;
use medusa_auth_proxy::upstream::{Upstream, error_chain};

/// Print the config's warnings and summary (never a secret); exit 2 for what the config must
/// change, 1 for a failed login.
pub async fn check(settings: Settings, login: bool, no_secrets: bool) -> ExitCode {
    // Every identity's secret (the single form's `[auth]` is the one identity `default`).
    let secrets = if no_secrets {
        Vec::new()
    } else {
        match settings.load_secrets() {
            Ok(secrets) => secrets,
            Err((key, e)) => {
                eprintln!("error: {key}: {e}");
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
    for up in &settings.upstreams {
        if let Err(e) = Upstream::<http_body_util::Full<bytes::Bytes>>::new(&up.settings) {
            eprintln!("error: {}", error_chain(&e));
            return ExitCode::from(2);
        }
    }
    // The limit here is this shell's, which may differ from the service's (LimitNOFILE=).
    if let Err(e) = app::connection_budget(&settings) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // Every listener: its TLS pair (the key is a secret: with --no-secrets no file is read,
    // they may exist only in the pod), and the clear-text keys warning.
    let pairs =
        std::iter::once(&settings.proxy.tls).chain(settings.listeners.iter().map(|l| &l.tls));
    for files in pairs.flatten() {
        if !no_secrets && let Err(e) = medusa_auth_proxy::tls::load_pair(files) {
            eprintln!("error: {}", error_chain(&e));
            return ExitCode::from(2);
        }
    }
    for warning in cleartext_keys_warnings(&settings) {
        println!("WARNING: {warning}");
    }
    for up in &settings.upstreams {
        if up.settings.pool_idle_timeout >= std::time::Duration::from_secs(5) {
            // Node (Medusa) closes idle keep-alive connections after 5 s by default.
            println!(
                "WARNING: {}pool_idle_timeout is {} — keep it below Medusa's keep-alive timeout (Node's default: 5s), or requests may land on connections Medusa is closing",
                upstream_table(&settings, &up.name),
                humantime::format_duration(up.settings.pool_idle_timeout)
            );
        }
    }
    // Peers outside allow_cidrs are closed at accept: such a listener serves nobody remote.
    for warning in settings.unreachable_listener_warnings() {
        println!("WARNING: {warning}");
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
    let several = settings.identities.len() > 1;
    if several {
        for id in &settings.identities {
            let url = upstream_of(&settings, id).map_or("", |u| u.url.as_str());
            println!(
                "identity {}: upstream {} = {url} (flavor {})",
                id.name,
                id.upstream,
                id.auth.flavor.as_str()
            );
        }
        for l in &settings.listeners {
            println!(
                "listener {}{}: identity {}",
                l.listen,
                if l.tls.is_some() { " (TLS)" } else { "" },
                settings.identities[l.identity].name
            );
        }
    }
    if !login || no_secrets {
        return ExitCode::SUCCESS;
    }
    // Every identity at once, as at start-up: one slow Medusa does not hold up the others.
    let logins = settings
        .identities
        .iter()
        .zip(secrets)
        .map(|(id, secret)| log_in(&settings, id, secret));
    let mut code = ExitCode::SUCCESS;
    for (id, outcome) in settings
        .identities
        .iter()
        .zip(futures_util::future::join_all(logins).await)
    {
        let who = if several {
            format!("identity {}: ", id.name)
        } else {
            String::new()
        };
        match outcome {
            Ok(line) => println!("{who}{line}"),
            Err(e) => {
                eprintln!("error: {who}{e}");
                code = ExitCode::FAILURE;
            }
        }
    }
    code
}

/// The config table of upstream `name`, for messages: `upstream.` in the single form.
fn upstream_table(settings: &Settings, name: &str) -> String {
    if settings.upstreams.len() == 1 && name == medusa_auth_proxy::config::DEFAULT_IDENTITY {
        "upstream.".to_owned()
    } else {
        format!("upstreams.{name}.")
    }
}

fn upstream_of<'a>(settings: &'a Settings, id: &IdentitySettings) -> Option<&'a UpstreamSettings> {
    settings
        .upstreams
        .iter()
        .find(|u| u.name == id.upstream)
        .map(|u| &u.settings)
}

/// Log identity `id` in once: the `login ok` line, or why not.
async fn log_in(
    settings: &Settings,
    id: &IdentitySettings,
    secret: Secret,
) -> Result<String, String> {
    let up = upstream_of(settings, id)
        .ok_or_else(|| format!("identities.{}.upstream names no upstream", id.name))?;
    let upstream = Upstream::new(up).map_err(|e| error_chain(&e))?;
    let login = Login::new(upstream, id.auth.flavor, id.auth.email.clone(), secret)
        .with_secret_source(&id.auth.secret);
    let timeout = id.auth.login_timeout;
    let cred = match tokio::time::timeout(timeout, login.obtain(None)).await {
        Err(_) => return Err(format!("login timed out after {timeout:?}")),
        Ok(Err(e)) => return Err(format!("login failed: {e}")),
        Ok(Ok(c)) => c,
    };
    if cred.flavor.is_static() {
        return Ok(format!(
            "login ok: flavor {}: the API key was accepted by Medusa (static: it does not expire)",
            cred.flavor.as_str()
        ));
    }
    match jwt::inspect(cred.value.expose(), id.auth.default_token_lifetime) {
        Ok(info) => Ok(format!(
            "login ok: flavor {}, user {}, token valid for {}{}",
            cred.flavor.as_str(),
            info.user_id.as_deref().unwrap_or("(unknown)"),
            humantime::format_duration(std::time::Duration::from_secs(info.lifetime.as_secs())),
            if info.from_claims {
                ""
            } else {
                " (no exp claim: default_token_lifetime)"
            }
        )),
        Err(e) => Err(format!("login answered, but {e}")),
    }
}
