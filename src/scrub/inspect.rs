//! The request check: does a client's body set an `api_token` field?

use percent_encoding::percent_decode;

use super::is_ws;

/// Does this request body set a field named `api_token` (at any depth, under any JSON
/// spelling of the name, duplicates included)? `content_type` decides only whether the body
/// is also read as a form (`application/x-www-form-urlencoded`: keys percent-decoded, `+` as
/// space; a key *containing* `api_token` counts, which covers `user[api_token]`).
pub fn sets_api_token(body: &[u8], content_type: Option<&[u8]>) -> bool {
    let form = content_type.is_some_and(|ct| {
        let ct = ct.trim_ascii();
        let t = b"application/x-www-form-urlencoded";
        ct.len() >= t.len() && ct[..t.len()].eq_ignore_ascii_case(t)
    });
    if form && form_sets_api_token(body) {
        return true;
    }
    // Without `api_token` spelled out or a `\u` escape no JSON key can decode to it.
    let finder = memchr::memmem::find(body, b"api_token").is_some()
        || memchr::memmem::find(body, b"\\u").is_some();
    finder && json_sets_key(body, b"api_token")
}

fn form_sets_api_token(body: &[u8]) -> bool {
    body.split(|b| *b == b'&').any(|pair| {
        let key = pair.split(|b| *b == b'=').next().unwrap_or(pair);
        // Form decoding also reads `+` as a space, which can neither make nor break the
        // name: percent-decoding alone decides.
        let decoded: Vec<u8> = percent_decode(key).collect();
        memchr::memmem::find(&decoded, b"api_token").is_some()
    })
}

/// Every JSON string followed by `:` is a key: decode it and compare with `name` (ASCII).
/// Strings are tokenised from the start, so a quote inside a string never starts one.
fn json_sets_key(body: &[u8], name: &[u8]) -> bool {
    let mut i = 0;
    while let Some(q) = memchr::memchr(b'"', &body[i..]) {
        let (end, equal) = decode_compare(body, i + q + 1, name);
        let Some(end) = end else { return false };
        let mut j = end + 1;
        while j < body.len() && is_ws(body[j]) {
            j += 1;
        }
        if equal && body.get(j) == Some(&b':') {
            return true;
        }
        i = end + 1;
    }
    false
}

/// Decode the JSON string starting at `start` (after its opening quote): (index of its
/// closing quote, whether it decodes to exactly `name`).
fn decode_compare(body: &[u8], start: usize, name: &[u8]) -> (Option<usize>, bool) {
    // Code units decoded so far, and whether they all matched `name` so far.
    let mut n = 0;
    let mut equal = true;
    let mut i = start;
    while i < body.len() {
        let unit = match body[i] {
            b'"' => return (Some(i), equal && n == name.len()),
            b'\\' => {
                let Some(&e) = body.get(i + 1) else {
                    return (None, false);
                };
                i += 2;
                match e {
                    b'u' => {
                        let code = body
                            .get(i..i + 4)
                            .and_then(|h| std::str::from_utf8(h).ok())
                            .and_then(|h| u32::from_str_radix(h, 16).ok());
                        match code {
                            Some(c) => {
                                i += 4;
                                c
                            }
                            // An invalid escape: JSON.parse rejects the whole body.
                            None => u32::MAX,
                        }
                    }
                    b'b' => 8,
                    b'f' => 12,
                    b'n' => 10,
                    b'r' => 13,
                    b't' => 9,
                    other => u32::from(other),
                }
            }
            // Non-ASCII bytes never equal an ASCII name's units.
            b => {
                i += 1;
                u32::from(b)
            }
        };
        equal = equal && name.get(n).is_some_and(|c| u32::from(*c) == unit);
        n += 1;
    }
    (None, false)
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrub::tests::doc;
    use proptest::prelude::*;
    use serde_json::Value as Json;

    #[test]
    fn request_bodies_that_set_api_token() {
        let json = Some(&b"application/json"[..]);
        for body in [
            r#"{"api_token":"x"}"#,
            r#"{"api\u005ftoken":"x"}"#,
            r#"{"\u0061\u0070\u0069_token" : 1}"#,
            r#"{"first_name":"a","user":{"deep":[{"api_token":null}]}}"#,
            r#"{"api_token":"a","api_token":"b"}"#,
            r#"{"x":"\"api_token\"","api_token":1}"#,
        ] {
            assert!(sets_api_token(body.as_bytes(), json), "{body}");
        }
        for body in [
            r#"{"first_name":"api_token"}"#,
            r#"{"x":"{\"api_token\":1}"}"#,
            r#"{"api_tokens":1,"my_api_token":2}"#,
            r#"{"api\u005ftoken2":1}"#,
            r#"not json"#,
            r#"{"a":"\u12"#,
            "",
        ] {
            assert!(!sets_api_token(body.as_bytes(), json), "{body}");
        }
        let form = Some(&b"application/x-www-form-urlencoded; charset=utf-8"[..]);
        for body in ["api_token=x", "a=1&api%5Ftoken=x", "user%5Bapi_token%5D=1"] {
            assert!(sets_api_token(body.as_bytes(), form), "{body}");
            assert!(!sets_api_token(body.as_bytes(), json), "{body}");
        }
        assert!(!sets_api_token(b"a=api_token", form));
    }

    proptest! {

        /// The request check agrees with a real parser on keys, for any spelling of them.
        #[test]
        fn request_check_matches_the_parsed_keys(v in doc(true), escape in any::<bool>()) {
            fn has(v: &Json) -> bool {
                match v {
                    Json::Object(m) => m.iter().any(|(k, v)| k == "api_token" || has(v)),
                    Json::Array(a) => a.iter().any(has),
                    _ => false,
                }
            }
            let mut text = v.to_string();
            if escape {
                text = text.replace("\"api_token\":", "\"api\\u005Ftoken\":");
            }
            prop_assert_eq!(sets_api_token(text.as_bytes(), None), has(&v), "{}", text);
        }
    }
}
