//! Helpers shared by every integration test binary: the fake Medusa, the in-process harness
//! and HTTP clients, the binary as a child process, raw TCP, metrics, and waiting on
//! conditions. Each binary uses a part, hence `dead_code` allowed.
#![allow(dead_code)]
pub mod fake_medusa;
pub mod harness;
pub mod metrics;
pub mod process;
pub mod wait;
pub mod wire;
