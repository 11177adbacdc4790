#![allow(dead_code)]
pub mod fake_medusa;
pub mod harness;
pub mod process;
