//! medusa-auth-proxy: an authenticating reverse proxy for the Medusa admin API.
//!
//! Module map (dependencies point down):
//! `app` -> `proxy`, `ops` -> `auth` -> `upstream` -> `config`, `error`, `secret`; `server`.

pub mod access_log;
pub mod app;
pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod reload;
pub mod scrub;
pub mod secret;
pub mod server;
pub mod sniff;
pub mod upstream;
pub mod watch;
