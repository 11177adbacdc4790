//! Talk to Medusa's admin API from your own Rust program, without handling its credential.
//!
//! `medusa-auth-proxy` is a library as well as a proxy. This example wraps hyper-util's
//! ordinary HTTP client in the proxy's credential layer
//! ([`CredentialLayer`](medusa_auth_proxy::proxy::inject::CredentialLayer)). The layer puts
//! the current Medusa token on every request. A [`TokenManager`] logs in, caches the token and
//! renews it before it expires. If Medusa answers 401 because the token was rejected (say, its
//! JWT secret changed), the layer checks the token, logs in again and replays the request once.
//! The program only names the place the password is kept, and never reads the password itself.
//!
//! ```text
//! MEDUSA_URL=http://127.0.0.1:9000 \
//! MEDUSA_EMAIL=admin@example.com \
//! MEDUSA_PASSWORD_ENV=MY_MEDUSA_PASSWORD \
//! MY_MEDUSA_PASSWORD=... \
//! cargo run --example embedded_client
//! ```
//!
//! - `MEDUSA_URL`: Medusa's base URL, with any path prefix (`http://` only: this example
//!   uses hyper-util's plain HTTP connector).
//! - `MEDUSA_EMAIL`: the admin account to log in as.
//! - `MEDUSA_PASSWORD_ENV`: the *name* of the environment variable that holds the password.
//!   The library reads the password from there.
//! - `MEDUSA_FLAVOR` (optional): `v1`, `v2` or `auto` (default: detects v1 or v2 with one
//!   probe before the first login).
//! - `RUST_LOG` (optional): e.g. `medusa_auth_proxy=info` shows the login driver at work.
//!
//! It sends `GET /admin/products`, prints the status and the first bytes of the body, and
//! exits with 0 on a 2xx answer. It exits with 1 on any other answer or when no answer came
//! (the login failed, Medusa could not be reached), and with 2 when the environment is
//! incomplete. Error messages name the account and the variable the password comes from,
//! never the password.
//!
//! `tests/embedded.rs` compiles this file as a module and runs the same functions against the
//! test suite's fake Medusa; the e2e suite (`tests/e2e/run.sh`) runs the built example against
//! real Medusa v1 and v2 servers.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use medusa_auth_proxy::auth::login::LoginError;
use medusa_auth_proxy::auth::{BuildError, Flavor, SecretSource, TokenError, TokenManager};
use medusa_auth_proxy::proxy::inject::{Credential, CredentialError, CredentialLayer, Replayed};
use tower::{ServiceBuilder, ServiceExt};

/// Medusa's admin API as a `tower::Service`: hyper-util's client, with the credential layer
/// in front of it. Requests carry no credential of their own; the layer adds it.
///
/// The request body must be one the layer can keep for a replay (`Empty`, `Full`: see
/// `medusa_auth_proxy::upstream::Replayable`). A request with a streamed body is sent once,
/// and Medusa's 401 is passed back to the caller.
pub type MedusaClient = Credential<Client<HttpConnector, Empty<Bytes>>>;

/// What the example was asked to do, read from the environment by [`Config::from_lookup`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Medusa's base URL, with any path prefix.
    pub url: String,
    /// The admin account.
    pub email: String,
    /// Where the library reads the password from. The program never holds the password.
    pub secret: SecretSource,
    /// v1, v2 or auto.
    pub flavor: Flavor,
}

/// Why the example did not get a 2xx. Every message names a variable, an account or a URL,
/// never the password.
#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    /// A required environment variable is missing or empty.
    #[error("{0} is not set; {hint}", hint = usage_hint())]
    MissingVar(&'static str),
    /// `MEDUSA_FLAVOR` names no supported flavor.
    #[error("MEDUSA_FLAVOR={0:?}: expected v1, v2 or auto")]
    BadFlavor(String),
    /// The token manager refused the settings (a malformed URL, an unset password variable).
    #[error("cannot set up the token manager: {0}")]
    Build(#[source] BuildError),
    /// The URL is valid for the library, but this example's client cannot send to it.
    #[error(
        "MEDUSA_URL {0:?}: this example's client speaks plain http; for https, give \
         hyper-util's Client an https connector (hyper-rustls) and the same layer"
    )]
    NotHttp(String),
    /// The login failed (refused credentials, Medusa down or answering errors). The
    /// message names the account, the login URL and where the password came from.
    #[error("login to Medusa failed: {0}")]
    Login(#[source] Arc<LoginError>),
    /// The request failed otherwise: no token in time, or no answer from Medusa.
    #[error("the request failed: {0}")]
    Request(#[source] CredentialError<hyper_util::client::legacy::Error>),
    /// The answer's body broke off.
    #[error("reading Medusa's answer: {0}")]
    Body(#[source] hyper::Error),
}

fn usage_hint() -> &'static str {
    "set MEDUSA_URL, MEDUSA_EMAIL and MEDUSA_PASSWORD_ENV (the name of the variable holding \
     the password), e.g. MEDUSA_PASSWORD_ENV=MY_MEDUSA_PASSWORD"
}

impl ExampleError {
    /// The process exit status: 2 for an incomplete or invalid environment, 1 for anything
    /// that went wrong on the way to Medusa.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExampleError::MissingVar(_)
            | ExampleError::BadFlavor(_)
            | ExampleError::Build(_)
            | ExampleError::NotHttp(_) => 2,
            ExampleError::Login(_) | ExampleError::Request(_) | ExampleError::Body(_) => 1,
        }
    }
}

impl Config {
    /// Read the settings with `lookup` (`std::env::var` in `main`; a map in the tests).
    /// Only the *name* of the password's variable is read here, never its value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ExampleError> {
        let required = |name: &'static str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or(ExampleError::MissingVar(name))
        };
        let url = required("MEDUSA_URL")?;
        let email = required("MEDUSA_EMAIL")?;
        let password_env = required("MEDUSA_PASSWORD_ENV")?;
        let flavor = match lookup("MEDUSA_FLAVOR").as_deref().map(str::trim) {
            None | Some("") | Some("auto") => Flavor::Auto,
            Some("v1") => Flavor::V1,
            Some("v2") => Flavor::V2,
            Some(other) => return Err(ExampleError::BadFlavor(other.to_owned())),
        };
        Ok(Config {
            url,
            email,
            secret: SecretSource::Env(password_env),
            flavor,
        })
    }

    /// A token manager for this account. It validates the settings as the proxy's config
    /// file would, and reads the password once, from its source. Nothing is sent to Medusa
    /// until its driver runs ([`TokenManager::spawn_driver`]).
    pub fn token_manager(&self) -> Result<TokenManager, BuildError> {
        TokenManager::builder(self.url.as_str(), self.flavor)
            .email(self.email.as_str())
            .secret(self.secret.clone())
            .build()
    }

    /// The absolute URI of `path` under Medusa's base URL (keeping any path prefix).
    pub fn uri(&self, path: &str) -> Result<Uri, ExampleError> {
        let not_http = || ExampleError::NotHttp(self.url.clone());
        let uri: Uri = format!("{}{path}", self.url.trim_end_matches('/'))
            .parse()
            .map_err(|_| not_http())?;
        if uri.scheme_str() != Some("http") {
            return Err(not_http());
        }
        Ok(uri)
    }
}

/// hyper-util's pooled HTTP/1 client wrapped in [`CredentialLayer`]. This is the whole
/// integration: a `tower::Service` in, a `tower::Service` that carries a credential out.
/// Clones share the client's connection pool and the manager's token.
pub fn medusa_client(tokens: TokenManager) -> MedusaClient {
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    ServiceBuilder::new()
        .layer(CredentialLayer::new(tokens))
        .service(http)
}

/// Medusa's answer to one request.
#[derive(Debug)]
pub struct Answer {
    /// The status Medusa answered.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
    /// Medusa rejected the token first. The layer confirmed the rejection, logged in again
    /// and sent the request a second time.
    pub replayed: bool,
}

/// `GET uri` through the credential layer, and read the whole answer.
pub async fn get(client: &MedusaClient, uri: Uri) -> Result<Answer, ExampleError> {
    let mut req = Request::new(Empty::new()); // a GET
    *req.uri_mut() = uri;
    // `oneshot` waits for the service to be ready, then calls it. The first call waits for
    // the driver's login; later calls find the token cached.
    let resp = client.clone().oneshot(req).await.map_err(|e| match e {
        // The driver's login failed: its error says why (the layer's own message is the
        // short one the proxy shows its clients).
        CredentialError::Token(TokenError::LoginFailed { source, .. }) => {
            ExampleError::Login(source)
        }
        other => ExampleError::Request(other),
    })?;
    let replayed = resp.extensions().get::<Replayed>().is_some();
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(ExampleError::Body)?
        .to_bytes();
    Ok(Answer {
        status,
        body,
        replayed,
    })
}

/// Everything `main` does once the environment has been read: build the token manager,
/// start its login driver, send `GET /admin/products`, stop the driver.
pub async fn run(config: &Config) -> Result<Answer, ExampleError> {
    let tokens = config.token_manager().map_err(ExampleError::Build)?;
    let uri = config.uri("/admin/products")?;

    // The driver is the only task that logs in: concurrent requests without a token wait for
    // its single login, and no request can be cancelled halfway through a login. It stops
    // when `stop` says true (or is dropped).
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let driver = tokens.spawn_driver(stop_rx);

    let client = medusa_client(tokens);
    let answer = get(&client, uri).await;

    let _ = stop.send(true);
    let _ = driver.await;
    answer
}

/// Up to `max` bytes of `body` as text, with a note when it was cut.
pub fn preview(body: &[u8], max: usize) -> String {
    let shown = String::from_utf8_lossy(&body[..body.len().min(max)]).into_owned();
    if body.len() > max {
        format!("{shown}... ({} bytes in all)", body.len())
    } else {
        shown
    }
}

/// An error with its causes, one per `: `. Safe to print: no layer of the library puts a
/// password or a token in an error message.
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        // `#[error(transparent)]` and "{0}" wrappers repeat their source's message.
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[tokio::main]
async fn main() -> ExitCode {
    // The library logs through `tracing`. Silent by default, so that only this program's
    // own lines are printed; RUST_LOG=medusa_auth_proxy=info shows logins and 401 checks.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let outcome = match Config::from_lookup(|name| std::env::var(name).ok()) {
        Ok(config) => {
            println!(
                "GET {}/admin/products as {} (flavor {}, password from {})",
                config.url.trim_end_matches('/'),
                config.email,
                config.flavor.as_str(),
                config.secret.describe(),
            );
            run(&config).await
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(answer) => {
            let replayed = if answer.replayed {
                " (replayed after Medusa rejected the first token)"
            } else {
                ""
            };
            println!("status: {}{replayed}", answer.status);
            println!("body: {}", preview(&answer.body, 200));
            if answer.status.is_success() {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: Medusa answered {}", answer.status);
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
