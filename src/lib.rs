//! medusa-auth-proxy: an authenticating reverse proxy for the Medusa admin API, and the
//! library it is built from.
//!
//! A Rust program that talks to Medusa itself can use the proxy's credential handling
//! without the proxy: build a [`TokenManager`](auth::TokenManager) (it logs in, caches the
//! token in moka, refreshes it ahead of expiry, and checks it with Medusa after a 401), start
//! its login driver, and wrap any `tower::Service` HTTP client in
//! [`CredentialLayer`](proxy::inject::CredentialLayer). The program hands over where the
//! password is ([`SecretSource`](secret::SecretSource)) and never handles it.
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Empty};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use medusa_auth_proxy::auth::{Flavor, SecretSource, TokenManager};
//! use medusa_auth_proxy::proxy::inject::CredentialLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tokens = TokenManager::builder("http://127.0.0.1:9000", Flavor::V2)
//!     .email("admin@example.com")
//!     .secret(SecretSource::Env("MEDUSA_PASSWORD".into()))
//!     .build()?;
//! let (_stop, stop_rx) = tokio::sync::watch::channel(false);
//! tokens.spawn_driver(stop_rx);
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
//! let medusa = ServiceBuilder::new()
//!     .layer(CredentialLayer::new(tokens))
//!     .service(client);
//! let req = http::Request::get("http://127.0.0.1:9000/admin/products").body(Empty::new())?;
//! let resp = medusa.oneshot(req).await?;
//! println!("{}", resp.status());
//! let body = resp.into_body().collect().await?.to_bytes();
//! println!("{}", String::from_utf8_lossy(&body[..body.len().min(200)]));
//! # Ok(()) }
//! ```
//!
//! The proxy itself: [`config::Settings`] from the TOML file, [`app::start`] to run it; its
//! request path is the tower stack of [`stack`], served by [`server::serve`].
//!
//! Module map (dependencies point down):
//! `app` -> `stack` -> `proxy`, `ops` -> `auth` -> `upstream` -> `config`, `error`, `secret`;
//! `server`. `config` validates into the pure decision modules `access` and `policy`.

#![warn(missing_docs)]

pub mod access;
pub mod access_log;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod identity;
pub mod live;
mod memory;
pub mod metrics;
pub mod ops;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod roster;
// docs: see the sizes branch
#[allow(missing_docs)]
pub mod scrub;
pub mod secret;
pub mod server;
pub mod sniff;
pub mod stack;
pub mod tls;
pub mod upstream;
pub mod watch;
