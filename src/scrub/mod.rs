//! Credentials in bodies, both directions (issue 12, "no credential leaves").
//!
//! **Responses.** Medusa v1 puts each user's static `api_token` into every user object it
//! returns, and both versions list invite `token`s on `/admin/invites`. [`ScrubBody`] wraps
//! Medusa's response body and replaces the *value* of every JSON field with one of the
//! configured names ([`Scrub`]) as it streams past, whatever the chunking; the replacement
//! itself is the body-independent [`Scanner`] (why a byte search is enough, and why the
//! body keeps its length, are explained there). Bodies that cannot be scanned are told apart
//! by [`scanned_content_type`] and [`encoded`].
//!
//! **Requests.** [`sets_api_token`] tells whether a request body sets an `api_token` field
//! anywhere: every JSON string followed by `:` is a key, decoded (escapes included) and
//! compared, so any depth and duplicate keys count; form-urlencoded keys are
//! percent-decoded.
//!
//! Files: `scanner.rs` the streaming replacement, `body.rs` the response body around it,
//! `inspect.rs` the request check; this file the choice of fields and of scanned bodies.

mod body;
mod inspect;
mod scanner;

pub use body::ScrubBody;
pub use inspect::sets_api_token;
pub use scanner::Scanner;

/// Which JSON fields to blank in a response. `Default` blanks nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scrub {
    /// `api_token`, anywhere (Medusa v1 user objects).
    pub api_token: bool,
    /// `token`, anywhere (meant for invite routes only: elsewhere `token` is too common a name).
    pub invite_token: bool,
}

impl Scrub {
    /// Is any field scrubbed? (If not, bodies pass through untouched.)
    pub fn any(self) -> bool {
        self.api_token || self.invite_token
    }
}

/// Content types that are never scanned: they cannot hold a JSON field, and a binary body may
/// hold the needle bytes by chance. Everything else is (JSON, text, no `Content-Type` at all).
const BINARY_TYPES: [&str; 8] = [
    "image/",
    "audio/",
    "video/",
    "font/",
    "application/octet-stream",
    "application/pdf",
    "application/zip",
    "application/gzip",
];

/// Is a body of this `Content-Type` scanned? `None` (no header) is scanned: Medusa v1 sends
/// some bodies without one.
pub fn scanned_content_type(content_type: Option<&[u8]>) -> bool {
    let Some(ct) = content_type else { return true };
    let ct = ct.trim_ascii();
    !BINARY_TYPES.iter().any(|t| {
        ct.len() >= t.len() && ct[..t.len()].eq_ignore_ascii_case(t.as_bytes()) && {
            // A whole type: `application/pdf` but not `application/pdfx`.
            t.ends_with('/') || matches!(ct.get(t.len()), None | Some(b';' | b' ' | b'\t'))
        }
    })
}

/// Is a `Content-Encoding` value anything but identity (whose bytes we could not scan)?
pub fn encoded(content_encoding: &[u8]) -> bool {
    content_encoding
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"))
}

/// JSON's insignificant whitespace (RFC 8259, section 2).
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value as Json, json};

    #[test]
    fn content_types() {
        for ct in [
            None,
            Some("application/json; charset=utf-8"),
            Some("text/plain"),
            Some("text/html"),
            Some("application/pdfx"),
        ] {
            assert!(scanned_content_type(ct.map(str::as_bytes)), "{ct:?}");
        }
        for ct in [
            "image/png",
            "Application/Octet-Stream",
            "application/pdf; x=y",
            "video/mp4",
            "font/woff2",
            "application/zip",
        ] {
            assert!(!scanned_content_type(Some(ct.as_bytes())), "{ct}");
        }
        assert!(!encoded(b"identity"));
        assert!(!encoded(b" Identity "));
        assert!(encoded(b"gzip"));
        assert!(encoded(b"identity, br"));
    }

    // ---- JSON documents for the property tests of the scanner and of the request check ----

    pub(super) fn leaf() -> impl Strategy<Value = Json> {
        prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            // Quotes, backslashes, the needle itself and unicode inside strings.
            "[a-z\"\\\\_ é]{0,12}".prop_map(Json::String),
            Just(json!("\"api_token\":\"x\"")),
            Just(json!("api_token")),
            Just(json!("\\")),
        ]
    }

    pub(super) fn doc(with_field: bool) -> impl Strategy<Value = Json> {
        let key = if with_field {
            prop_oneof![
                3 => "[a-z_]{1,10}",
                1 => Just("api_token".to_owned()),
                1 => Just("token".to_owned()),
            ]
            .boxed()
        } else {
            prop_oneof!["[a-z_]{1,10}", Just("my_api_token".to_owned())]
                .prop_filter("no needle", |k| k != "api_token")
                .boxed()
        };
        leaf().prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|kv| Json::Object(kv.into_iter().collect())),
            ]
        })
    }
}
