//! The attack suite (issue 12): each test reproduces an attack on the proxy's trust boundary,
//! as an outsider or a caller would try it, and shows it now fails. Most run against the
//! binary (`tests/common/process.rs`); the fake Medusa answers in Medusa v1 and v2 shapes.
//!
//! - `exhaustion`: slots, connections, file descriptors and memory taken by callers who are
//!   not allowed in, or who stop reading.
//! - `lockout`: a 401 that is not about the proxy's token must not cost the token.
//! - `credentials`: no credential read or minted through the proxy.
//! - `smaller`: the framing guard after a refused Upgrade; spoofable origin headers.

#[path = "../common/mod.rs"]
mod common;

mod credentials;
mod exhaustion;
mod lockout;
mod smaller;
