//! Fuzzes the credential scrubber (`medusa_auth_proxy::scrub`): Medusa's response bodies cut
//! into chunks at arbitrary points, and client request bodies (attacker-controlled).
//!
//! Run: `cargo +nightly fuzz run scrub -- -max_total_time=60` (from `fuzz/`).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use medusa_auth_proxy::scrub::{Scanner, Scrub, sets_api_token};
use serde_json::Value;

/// Whether any object key `name` (at any depth) still holds a value other than null, a
/// number 0, an empty string or `false`-like filler.
fn holds_value(v: &Value, name: &str) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, v)| {
            (k == name && !matches!(v, Value::Null) && v != &Value::from(0) && v != &Value::from(""))
                || holds_value(v, name)
        }),
        Value::Array(a) => a.iter().any(|v| holds_value(v, name)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, body)) = data.split_first() else {
        return;
    };
    // Chunk sizes from the first byte: 1..=16 bytes, repeating.
    let step = usize::from(cuts % 16) + 1;
    let mut scanner = Scanner::new(Scrub {
        api_token: true,
        invite_token: cuts & 0x80 != 0,
    });
    let mut out = Vec::with_capacity(body.len());
    for chunk in body.chunks(step) {
        if let Some(b) = scanner.push(Bytes::copy_from_slice(chunk)) {
            out.extend_from_slice(&b);
        }
    }
    if let Some(b) = scanner.finish() {
        out.extend_from_slice(&b);
    }
    // Length-preserving, always: Content-Length stays valid.
    assert_eq!(out.len(), body.len());
    // A valid JSON document stays valid and keeps no credential value. (Key names spelled
    // with `\u` escapes are not recognised in responses, by design: Medusa's JSON.stringify
    // never writes them; see README, Security.)
    let escapes = body.windows(2).any(|w| w == b"\\u");
    if let (false, Ok(v)) = (escapes, serde_json::from_slice::<Value>(body)) {
        let scrubbed: Value = serde_json::from_slice(&out).expect("scrubbed JSON parses");
        assert!(!holds_value(&scrubbed, "api_token"), "{v}");
        if cuts & 0x80 != 0 {
            assert!(!holds_value(&scrubbed, "token"), "{v}");
        }
    }
    // The request check never panics, on JSON or form bodies.
    let _ = sets_api_token(body, None);
    let _ = sets_api_token(body, Some(b"application/x-www-form-urlencoded"));
});
