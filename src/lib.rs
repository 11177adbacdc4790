//! medusa-auth-proxy: an authenticating reverse proxy for the Medusa admin API.
//!
//! Module map (dependencies point down):
//! `app` -> `proxy`, `ops` -> `auth` -> `upstream` -> `config`, `error`, `secret`; `server`.
//! `config` validates into the pure decision modules `access` and `policy`.

pub mod access;
pub mod access_log;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
mod memory;
pub mod metrics;
pub mod ops;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod scrub;
pub mod secret;
pub mod server;
pub mod sniff;
pub mod stack;
pub mod upstream;
pub mod watch;
