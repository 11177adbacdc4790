//! The steps of the request path, one `Layer` + `Service` pair per file, each with its own
//! unit tests against `tower::service_fn` stand-ins. They are composed in one place,
//! [`crate::stack`], which reads top to bottom in the order a request meets them. Pure
//! decisions live apart: [`crate::access`], [`crate::policy`], [`headers`], [`replay`],
//! [`crate::scrub`].
//!
//! Where to look:
//! - how is the token injected: [`inject`] (and [`crate::auth`] for where it comes from);
//! - why was my request denied: the `error` code of the JSON answer names the step:
//!   `peer_not_allowed`/`host_not_allowed`/`origin_not_allowed`/`proxy_auth_*`/`no_identity`/
//!   `ambiguous_identity` in [`access`],
//!   `route_denied` in [`policy`], `payload_too_large`/`request_timeout` in [`limit`],
//!   `bad_request`/`header_too_large` in [`guard`], `overloaded` in [`admit`], `no_token` in
//!   [`inject`]; [`crate::error`] maps each to its status and metric;
//! - which identity serves a request: [`access`] picks it, [`route`] sends it to that
//!   identity's credential and upstream;
//! - what happens on a 401: [`inject`].

pub mod access;
pub mod admit;
pub mod future;
pub mod guard;
pub mod headers;
pub mod hygiene;
pub mod inject;
pub mod limit;
pub mod policy;
pub mod record;
pub mod replay;
pub mod respond;
pub mod route;
#[cfg(test)]
pub(crate) mod testing;
pub mod upgrade;
