//! The streaming replacement of field values, independent of any body type (so it can be
//! tested, fuzzed and benchmarked on plain byte slices).
//!
//! Why a byte search is enough to find the field: in valid JSON a `"` inside a string is
//! always escaped, i.e. preceded by an odd run of backslashes. So the bytes `"api_token"`
//! whose opening quote follows an even run (zero included) are a structural quote, and since
//! a closing quote can only be followed by `:` `,` `}` `]` or whitespace, never `a`, it opens
//! the string token `api_token`. If the next non-whitespace byte is `:`, that string is a key
//! and the value after it is replaced. Bodies without the needle are never parsed: the
//! common case costs one `memmem` pass and hands Medusa's chunks on unchanged (zero copy).
//!
//! The replacement has the **same length** as the value: `null` padded with spaces
//! (whitespace after a value is valid JSON); a value of 2-3 bytes becomes `""` (+ a space),
//! a 1-byte value `0`. So `Content-Length` stays right and no framing changes: the body can
//! be streamed, never buffered. Only a possible needle prefix at the end of a chunk (at most
//! 10 bytes) and the first 3 bytes of a value are ever held back.
//!
//! A field name spelled with escapes (`"api\u005ftoken"`) is not found; Medusa serialises
//! with `JSON.stringify`, which never escapes ASCII letters or `_`. JSON *inside a string*
//! (escaped quotes) is not a field and is left alone.

use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;

use super::{Scrub, is_ws};

const API_TOKEN: &[u8] = b"\"api_token\"";
const TOKEN: &[u8] = b"\"token\"";
/// Longest needle: a held-back tail is always shorter.
const MAX_NEEDLE: usize = API_TOKEN.len();

static API_TOKEN_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(API_TOKEN));
static TOKEN_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(TOKEN));

#[derive(Debug, Clone, Copy)]
enum Value {
    /// A string; `esc`: the previous byte was an unescaped backslash.
    Str { esc: bool },
    /// An object or array, `depth` brackets deep.
    Nested { depth: u32, in_str: bool, esc: bool },
    /// A number or literal: ends before a delimiter.
    Scalar,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Looking for a needle.
    Scan,
    /// A needle matched: whitespace, then `:` makes it a key.
    AfterKey,
    /// After the `:`: whitespace, then the value.
    BeforeValue,
    /// Inside the value, `len` bytes of it seen so far (and replaced).
    InValue { kind: Value, len: u64 },
}

/// The streaming replacement, independent of any body type (so it can be tested and
/// benchmarked on plain byte slices).
#[derive(Debug)]
pub struct Scanner {
    scrub: Scrub,
    state: State,
    /// A needle prefix held back from the end of the last chunk (starts with an unescaped `"`).
    carry: Option<Bytes>,
    /// The input so far ends with an odd run of backslashes.
    bs_odd: bool,
}

/// Output of one chunk: input slices and replacement bytes, merged at the end. The common
/// case, one untouched slice of the input, needs no allocation.
#[derive(Default)]
struct Out {
    first: Option<Bytes>,
    more: Vec<Bytes>,
}

impl Out {
    fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        match self.first {
            None => self.first = Some(b),
            Some(_) => self.more.push(b),
        }
    }

    fn into_bytes(self) -> Option<Bytes> {
        let first = self.first?;
        if self.more.is_empty() {
            return Some(first);
        }
        let len = first.len() + self.more.iter().map(Bytes::len).sum::<usize>();
        let mut buf = BytesMut::with_capacity(len);
        buf.extend_from_slice(&first);
        for p in &self.more {
            buf.extend_from_slice(p);
        }
        Some(buf.freeze())
    }
}

const SPACES: &[u8; 256] = &[b' '; 256];

fn spaces(out: &mut Out, mut n: u64) {
    while n > 0 {
        let k = n.min(SPACES.len() as u64) as usize;
        out.push(Bytes::from_static(&SPACES[..k]));
        n -= k as u64;
    }
}

/// The replacement for value bytes `old..new` (value-relative), `ended`: the value is whole.
/// The first 4 bytes are only written once it is known whether the value is at least 4 long.
fn replace(out: &mut Out, old: u64, new: u64, ended: bool) {
    if new >= 4 {
        if old < 4 {
            out.push(Bytes::from_static(b"null"));
            spaces(out, new - 4);
        } else {
            spaces(out, new - old);
        }
    } else if ended {
        out.push(Bytes::from_static(match new {
            0 => b"",
            1 => b"0",
            2 => b"\"\"",
            _ => b"\"\" ",
        }));
    }
}

impl Scanner {
    /// A scanner at the start of a body. Feed it the chunks with [`Scanner::push`], then
    /// call [`Scanner::finish`]; the output is as long as the input, however it is cut.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use medusa_auth_proxy::scrub::{Scanner, Scrub};
    ///
    /// let mut s = Scanner::new(Scrub { api_token: true, invite_token: false });
    /// let mut out = Vec::new();
    /// for chunk in [&br#"{"api_to"#[..], br#"ken":"s3cret"}"#] {
    ///     out.extend(s.push(Bytes::from_static(chunk)).unwrap_or_default());
    /// }
    /// out.extend(s.finish().unwrap_or_default());
    /// assert_eq!(out, br#"{"api_token":null    }"#);
    /// ```
    pub fn new(scrub: Scrub) -> Scanner {
        Scanner {
            scrub,
            state: State::Scan,
            carry: None,
            bs_odd: false,
        }
    }

    fn needles(&self) -> impl Iterator<Item = &'static [u8]> {
        let api = self.scrub.api_token.then_some(API_TOKEN);
        let tok = self.scrub.invite_token.then_some(TOKEN);
        api.into_iter().chain(tok)
    }

    /// Earliest needle occurrence in `hay`: (offset, needle length).
    fn find(&self, hay: &[u8]) -> Option<(usize, usize)> {
        let api = self
            .scrub
            .api_token
            .then(|| API_TOKEN_FINDER.find(hay).map(|i| (i, API_TOKEN.len())))
            .flatten();
        let tok = self
            .scrub
            .invite_token
            .then(|| TOKEN_FINDER.find(hay).map(|i| (i, TOKEN.len())))
            .flatten();
        match (api, tok) {
            (Some(a), Some(t)) => Some(if a.0 <= t.0 { a } else { t }),
            (a, t) => a.or(t),
        }
    }

    /// Bytes held back that will still be written (for `size_hint`).
    pub fn pending(&self) -> u64 {
        let value = match self.state {
            State::InValue { len, .. } if len < 4 => len,
            _ => 0,
        };
        self.carry.as_ref().map_or(0, |c| c.len() as u64) + value
    }

    /// Is the quote at `data[at]` escaped? `start_odd`: the input before `data` ends with an
    /// odd backslash run.
    fn escaped(data: &[u8], at: usize, start_odd: bool) -> bool {
        let run = data[..at].iter().rev().take_while(|b| **b == b'\\').count();
        (run % 2 == 1) ^ (run == at && start_odd)
    }

    /// Scan one chunk; returns what to write now (`None`: everything is held back).
    pub fn push(&mut self, data: Bytes) -> Option<Bytes> {
        let mut out = Out::default();
        let start_odd = self.bs_odd;
        let mut pos = 0;
        if let Some(carry) = self.carry.take() {
            // The carry is a needle prefix; does this chunk complete it?
            let mut full = None;
            let mut partial = false;
            for needle in self.needles() {
                let Some(rest) = needle.strip_prefix(&carry[..]) else {
                    continue;
                };
                let n = rest.len().min(data.len());
                if data[..n] == rest[..n] {
                    if n == rest.len() {
                        full = Some(n);
                    } else {
                        partial = true;
                    }
                }
            }
            match full {
                Some(n) => {
                    out.push(carry);
                    pos = n;
                    self.state = State::AfterKey;
                }
                None if partial => {
                    let mut grown = BytesMut::with_capacity(carry.len() + data.len());
                    grown.extend_from_slice(&carry);
                    grown.extend_from_slice(&data);
                    self.carry = Some(grown.freeze());
                    return None;
                }
                // Carry ends in a letter or quote, so no backslash run crosses into `data`.
                None => out.push(carry),
            }
        }
        // Input `data[emit..pos]` passes through unchanged once we move past it.
        let mut emit = 0;
        let len = data.len();
        while pos < len {
            match self.state {
                State::Scan => match self.find(&data[pos..]) {
                    Some((i, n)) => {
                        let at = pos + i;
                        if Self::escaped(&data, at, start_odd) {
                            pos = at + 1;
                        } else {
                            pos = at + n;
                            self.state = State::AfterKey;
                        }
                    }
                    None => {
                        let hold = self.held_tail(&data, pos, start_odd);
                        if hold > 0 {
                            out.push(data.slice(emit..len - hold));
                            self.carry = Some(data.slice(len - hold..));
                            self.bs_odd = false;
                            return out.into_bytes();
                        }
                        pos = len;
                    }
                },
                State::AfterKey => {
                    let b = data[pos];
                    if is_ws(b) {
                        pos += 1;
                    } else if b == b':' {
                        pos += 1;
                        self.state = State::BeforeValue;
                    } else {
                        self.state = State::Scan;
                    }
                }
                State::BeforeValue => {
                    let b = data[pos];
                    if is_ws(b) {
                        pos += 1;
                    } else {
                        let kind = match b {
                            b'"' => Value::Str { esc: false },
                            b'{' | b'[' => Value::Nested {
                                depth: 0,
                                in_str: false,
                                esc: false,
                            },
                            _ => Value::Scalar,
                        };
                        out.push(data.slice(emit..pos));
                        emit = pos;
                        self.state = State::InValue { kind, len: 0 };
                    }
                }
                State::InValue { kind, len: seen } => {
                    let (used, kind, ended) = value_bytes(kind, &data[pos..], seen == 0);
                    let now = seen + used as u64;
                    replace(&mut out, seen, now, ended);
                    pos += used;
                    emit = pos;
                    self.state = if ended {
                        State::Scan
                    } else {
                        State::InValue { kind, len: now }
                    };
                }
            }
        }
        out.push(data.slice(emit..len));
        self.bs_odd = trailing_odd(&data, start_odd);
        out.into_bytes()
    }

    /// Length of the longest suffix of `data[from..]` that is a proper needle prefix starting
    /// with an unescaped quote (0 if none).
    fn held_tail(&self, data: &[u8], from: usize, start_odd: bool) -> usize {
        let len = data.len();
        let window = from.max(len.saturating_sub(MAX_NEEDLE - 1));
        let mut q = window;
        while let Some(i) = memchr::memchr(b'"', &data[q..len]) {
            let at = q + i;
            let tail = &data[at..];
            if self
                .needles()
                .any(|n| n.len() > tail.len() && n.starts_with(tail))
                && !Self::escaped(data, at, start_odd)
            {
                return len - at;
            }
            q = at + 1;
        }
        0
    }

    /// The stream ended (or trailers came): write whatever is held back.
    pub fn finish(&mut self) -> Option<Bytes> {
        let mut out = Out::default();
        if let Some(carry) = self.carry.take() {
            out.push(carry);
        }
        if let State::InValue { len, .. } = self.state {
            // A body cut off inside the value: still the same length, still no secret.
            replace(&mut out, len, len, true);
        }
        self.state = State::Scan;
        out.into_bytes()
    }
}

/// Consume value bytes from `data`: (bytes used, state, value ended). `first`: `data[0]` is
/// the value's first byte.
fn value_bytes(kind: Value, data: &[u8], first: bool) -> (usize, Value, bool) {
    match kind {
        Value::Str { mut esc } => {
            let skip = usize::from(first); // the opening quote
            for (i, &b) in data.iter().enumerate().skip(skip) {
                if esc {
                    esc = false;
                } else if b == b'\\' {
                    esc = true;
                } else if b == b'"' {
                    return (i + 1, Value::Str { esc }, true);
                }
            }
            (data.len(), Value::Str { esc }, false)
        }
        Value::Nested {
            mut depth,
            mut in_str,
            mut esc,
        } => {
            for (i, &b) in data.iter().enumerate() {
                if in_str {
                    if esc {
                        esc = false;
                    } else if b == b'\\' {
                        esc = true;
                    } else if b == b'"' {
                        in_str = false;
                    }
                    continue;
                }
                match b {
                    b'"' => in_str = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return (i + 1, Value::Nested { depth, in_str, esc }, true);
                        }
                    }
                    _ => {}
                }
            }
            (data.len(), Value::Nested { depth, in_str, esc }, false)
        }
        Value::Scalar => match data
            .iter()
            .position(|&b| matches!(b, b',' | b'}' | b']') || is_ws(b))
        {
            Some(i) => (i, Value::Scalar, true),
            None => (data.len(), Value::Scalar, false),
        },
    }
}

/// Does the input end with an odd run of backslashes, after `data`?
fn trailing_odd(data: &[u8], before_odd: bool) -> bool {
    let run = data.iter().rev().take_while(|b| **b == b'\\').count();
    (run % 2 == 1) ^ (run == data.len() && before_odd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrub::tests::doc;
    use proptest::prelude::*;
    use serde_json::{Value as Json, json};

    const BOTH: Scrub = Scrub {
        api_token: true,
        invite_token: true,
    };
    const API: Scrub = Scrub {
        api_token: true,
        invite_token: false,
    };

    /// Scrub `input` fed in pieces cut at `cuts` (offsets, any order).
    fn run(scrub: Scrub, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut s = Scanner::new(scrub);
        let mut out = Vec::new();
        let mut prev = 0;
        for c in cuts.into_iter().chain([input.len()]) {
            if let Some(b) = s.push(Bytes::copy_from_slice(&input[prev..c])) {
                out.extend_from_slice(&b);
            }
            prev = c;
        }
        if let Some(b) = s.finish() {
            out.extend_from_slice(&b);
        }
        out
    }

    fn every_split(scrub: Scrub, input: &str, want: &str) {
        let input = input.as_bytes();
        assert_eq!(input.len(), want.len(), "test wants the same length");
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let got = run(scrub, input, &[a, b]);
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    want,
                    "cuts at {a},{b} of {:?}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn value_kinds_are_replaced_with_the_same_length_at_every_split() {
        for (input, want) in [
            (r#"{"api_token":"secret-1"}"#, r#"{"api_token":null      }"#),
            (
                r#"{"a":1, "api_token" :  "s\"e\\" ,"b":2}"#,
                r#"{"a":1, "api_token" :  null     ,"b":2}"#,
            ),
            (r#"{"api_token":12345}"#, r#"{"api_token":null }"#),
            (r#"{"api_token":null}"#, r#"{"api_token":null}"#),
            (r#"{"api_token":true }"#, r#"{"api_token":null }"#),
            (r#"{"api_token":1}"#, r#"{"api_token":0}"#),
            (r#"{"api_token":12}"#, r#"{"api_token":""}"#),
            (r#"{"api_token":"x"}"#, r#"{"api_token":"" }"#),
            (
                r#"[{"api_token":{"x":["}",{"api_token":"]"}]}},"api_token"]"#,
                r#"[{"api_token":null                         },"api_token"]"#,
            ),
            ("{\"api_token\"\n:\t[1,2]\n}", "{\"api_token\"\n:\tnull \n}"),
        ] {
            every_split(API, input, want);
        }
    }

    #[test]
    fn needles_that_are_not_keys_or_are_escaped_stay() {
        for input in [
            r#"{"name":"api_token","x":["api_token"]}"#,
            r#"{"s":"say \"api_token\": \"v\""}"#,
            r#"{"s":"\\\"api_token\":1"}"#,
            r#"{"my_api_token":"keep","api_tokens":"keep"}"#,
            r#"{"token":"keep"}"#,
        ] {
            every_split(API, input, input);
        }
        // An even backslash run ends the string: the needle after it is real.
        every_split(
            API,
            r#"["\\","x",{"api_token":"abcd"}]"#,
            r#"["\\","x",{"api_token":null  }]"#,
        );
    }

    #[test]
    fn invite_tokens_and_api_tokens_together() {
        every_split(
            BOTH,
            r#"{"invites":[{"token":"inv-secret","user":{"api_token":"a1b2"}}]}"#,
            r#"{"invites":[{"token":null        ,"user":{"api_token":null  }}]}"#,
        );
    }

    #[test]
    fn body_cut_off_inside_a_value_keeps_its_length() {
        let input = br#"{"api_token":"secr"#;
        let got = run(API, input, &[]);
        assert_eq!(got, br#"{"api_token":null "#);
        assert_eq!(run(API, br#"{"api_token":"s"#, &[]), br#"{"api_token":"""#);
        // A needle prefix at the end is written out when the body ends.
        assert_eq!(run(API, br#"{"api_tok"#, &[]), br#"{"api_tok"#);
    }

    #[test]
    fn chunks_without_the_needle_pass_through_without_a_copy() {
        let mut s = Scanner::new(BOTH);
        let chunk = Bytes::from_static(br#"{"products":[{"id":"prod_1","title":"x"}]}"#);
        let out = s.push(chunk.clone()).unwrap_or_default();
        // Same allocation: a slice of the input, not a copy.
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(out.len(), chunk.len());
        assert!(s.finish().is_none());
    }

    // ---- property tests ----

    /// `v` with every `api_token` value set to null; `false` if one of them was not one of
    /// the replacements (`null`, `""`, `0`: which one depends on the value's printed length).
    fn blanked(v: &Json, ok: &mut bool) -> Json {
        match v {
            Json::Object(m) => Json::Object(
                m.iter()
                    .map(|(k, v)| {
                        if k == "api_token" {
                            *ok &= v.is_null() || *v == json!("") || *v == json!(0);
                            (k.clone(), Json::Null)
                        } else {
                            (k.clone(), blanked(v, ok))
                        }
                    })
                    .collect(),
            ),
            Json::Array(a) => Json::Array(a.iter().map(|v| blanked(v, ok)).collect()),
            other => other.clone(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Random documents with `api_token` at random depths, printed compact or pretty,
        /// split at random points: same length, same JSON with those values blanked, and
        /// the secret bytes gone.
        #[test]
        fn scrubbed_json_parses_to_the_same_document(
            v in doc(true),
            pretty in any::<bool>(),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            } else {
                v.to_string()
            };
            let out = run(API, text.as_bytes(), &cuts);
            prop_assert_eq!(out.len(), text.len());
            let parsed: Json = serde_json::from_slice(&out)
                .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out))))?;
            let mut replaced = true;
            let got = blanked(&parsed, &mut replaced);
            prop_assert!(replaced, "{}", String::from_utf8_lossy(&out));
            prop_assert_eq!(got, blanked(&v, &mut true));
        }

        /// Without the field, the output is the input, byte for byte, however it is split.
        #[test]
        fn documents_without_the_field_are_unchanged(
            v in doc(false),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let text = v.to_string();
            prop_assert_eq!(run(API, text.as_bytes(), &cuts), text.as_bytes());
        }

        /// Arbitrary bytes: never a panic, always the same length.
        #[test]
        fn any_bytes_keep_their_length(
            data in prop::collection::vec(prop_oneof![
                Just(b'"'), Just(b'\\'), Just(b':'), Just(b'{'), Just(b'}'),
                Just(b'a'), Just(b'p'), Just(b'i'), Just(b'_'), Just(b't'), any::<u8>(),
            ], 0..200),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut data = data;
            data.extend_from_slice(b"\"api_token\":");
            prop_assert_eq!(run(BOTH, &data, &cuts).len(), data.len());
        }
    }
}
