//! Config parsing must never panic, whatever the file says: every input is either a typed
//! `Settings` or an error that names a key (or the file).
#![no_main]

use libfuzzer_sys::fuzz_target;
use medusa_auth_proxy::config::{ConfigError, Settings};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = Settings::from_toml(&text) {
        match &e {
            ConfigError::Invalid { key, .. } => assert!(!key.is_empty()),
            ConfigError::Syntax { .. } | ConfigError::Read { .. } => {}
            // Only `run`'s flags are named as flags; a file never is.
            ConfigError::Flag { .. } => panic!("a config file's error named a flag: {e}"),
        }
        // Display must not panic either.
        let _ = e.to_string();
    }
});
