//! Fuzzes the route-policy path canonicaliser and `Policy::check`.
//!
//! Run: `cargo +nightly fuzz run canonicalize -- -max_total_time=60`
//! (from the repository root).
#![no_main]

use std::sync::OnceLock;

use http::Method;
use libfuzzer_sys::fuzz_target;
use medusa_auth_proxy::policy::{Decision, Policy, PolicyConfig, canonicalize};

const OWN: &str = "usr_01ABCdef";

/// The default policy and an "allow everything" one, built once.
fn policies() -> &'static [Policy; 2] {
    static POLICIES: OnceLock<[Policy; 2]> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let build = |cfg| match Policy::new(cfg) {
            Ok(p) => p,
            Err(e) => panic!("fixed fuzz config rejected: {e}"),
        };
        [
            build(PolicyConfig::default()),
            build(PolicyConfig {
                allow_paths: vec!["/".to_owned()],
                ..PolicyConfig::default()
            }),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let path = String::from_utf8_lossy(data);
    let canonical = canonicalize(&path);
    if let Ok(c) = &canonical {
        // Shape of the canonical form: nothing a downstream hop could
        // reinterpret, and lowercase like Express's matching.
        assert!(c.starts_with('/'), "{path:?} -> {c:?}");
        assert!(!c.contains("//"), "{path:?} -> {c:?}");
        assert!(
            !c.contains("/./") && !c.ends_with("/."),
            "{path:?} -> {c:?}"
        );
        assert!(
            !c.contains("/../") && !c.ends_with("/.."),
            "{path:?} -> {c:?}"
        );
        assert!(
            !c.contains("%2f") && !c.contains("%5c"),
            "{path:?} -> {c:?}"
        );
        assert!(!c.contains('\\') && !c.contains(';'), "{path:?} -> {c:?}");
        assert!(
            !c.bytes().any(|b| b.is_ascii_uppercase()),
            "{path:?} -> {c:?}"
        );
        assert!(c == "/" || !c.ends_with('/'), "{path:?} -> {c:?}");
        // Idempotent.
        assert_eq!(canonicalize(c).as_ref(), Ok(c), "{path:?}");
    }
    for policy in policies() {
        for method in [Method::GET, Method::POST] {
            let decision = policy.check(&method, &path, Some(OWN));
            match decision {
                Decision::BadPath(_) => assert!(canonical.is_err(), "{path:?}"),
                _ => assert!(canonical.is_ok(), "{method} {path:?} -> {decision:?}"),
            }
        }
    }
});
