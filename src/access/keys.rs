//! The client keys file: parsing, loading, and verifying a presented key in constant time.
//!
//! Nothing here logs or returns a key: keys are held only as SHA-256 digests, and a caller is
//! identified by an 8-hex-digit fingerprint (`printf %s "$KEY" | sha256sum | cut -c1-8`).

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

/// Shortest key accepted: 16 visible ASCII characters. Keys should be random
/// (`openssl rand -hex 32`); the floor catches placeholders like `changeme`.
const MIN_KEY_LEN: usize = 16;

/// The configured client keys. Only SHA-256 digests and fingerprints are kept, never a key,
/// so neither `Debug` nor a memory dump of this value can reveal one. Immutable and
/// `Send + Sync`: hold it in an `Arc` and swap the `Arc` on reload.
///
/// ```
/// use medusa_auth_proxy::access::ClientKeys;
///
/// let keys = ClientKeys::parse("# the ETL job\nkey-0123456789abcdef\n").unwrap();
/// assert!(keys.verify(b"key-0123456789abcdef").is_some());
/// assert!(keys.verify(b"key-0123456789abcdeX").is_none());
/// assert!(!format!("{keys:?}").contains("0123456789"));
/// ```
#[derive(Clone)]
pub struct ClientKeys {
    keys: Vec<StoredKey>,
}

#[derive(Clone)]
struct StoredKey {
    digest: [u8; 32],
    fingerprint: String,
    /// Bit of the identity this key acts as ([`ClientKeys::owned_by`]); [`NO_OWNER`] for
    /// `access.client_keys_file`.
    owner: u64,
}

/// The owner bit of a key that maps to no identity (`access.client_keys_file`).
pub const NO_OWNER: u64 = 1 << 63;

impl fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKeys")
            .field("count", &self.keys.len())
            .field("fingerprints", &self.fingerprints())
            .finish()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// First 4 bytes of the digest as 8 lowercase hex digits: enough to tell a handful of callers
/// apart in logs, far too little to help recover a random key.
fn fingerprint_of(digest: &[u8; 32]) -> String {
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl ClientKeys {
    /// Parses a key file:
    /// - one key per line; surrounding whitespace is trimmed; blank lines are ignored;
    /// - a line whose first non-blank character is `#` is a comment;
    /// - a key may be followed by whitespace and a `#` comment (`k3y… # etl job`). This is
    ///   unambiguous because a key never contains whitespace; a `#` inside a key (`ab#cd…`) is
    ///   part of the key, and a key cannot start with `#`;
    /// - a key is at least 16 visible ASCII characters (`!`..`~`);
    /// - the same key twice is an error (two lines, one caller: almost surely a mistake);
    /// - a UTF-8 byte-order mark is ignored; CRLF line ends are fine.
    ///
    /// Errors name the line number and never contain any of the file's text, so they can be
    /// logged and shown by `check`. Zero keys is an error: an empty file must not mean "no
    /// authentication".
    pub fn parse(text: &str) -> Result<ClientKeys, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut keys: Vec<StoredKey> = Vec::new();
        let mut key_lines: Vec<usize> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = match line.find(char::is_whitespace) {
                None => line,
                Some(at) => {
                    let (key, rest) = line.split_at(at);
                    if !rest.trim_start().starts_with('#') {
                        return Err(format!(
                            "line {line_no}: a key must not contain whitespace (a comment after \
                             a key is whitespace, then #)"
                        ));
                    }
                    key
                }
            };
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "line {line_no}: a key may contain only visible ASCII characters"
                ));
            }
            if key.len() < MIN_KEY_LEN {
                return Err(format!(
                    "line {line_no}: the key is shorter than {MIN_KEY_LEN} characters; use a \
                     long random key (e.g. `openssl rand -hex 32`)"
                ));
            }
            let digest = sha256(key.as_bytes());
            if let Some(pos) = keys.iter().position(|k| k.digest == digest) {
                let first = key_lines.get(pos).copied().unwrap_or(0);
                return Err(format!("line {line_no}: the same key as line {first}"));
            }
            keys.push(StoredKey {
                fingerprint: fingerprint_of(&digest),
                digest,
                owner: NO_OWNER,
            });
            key_lines.push(line_no);
        }
        if keys.is_empty() {
            return Err("no keys (every line is blank or a comment)".to_string());
        }
        Ok(ClientKeys { keys })
    }

    /// Stands in for a keys file that was deliberately not read (`check --no-secrets`): the
    /// rules around it validate as if it held keys, and it admits nobody.
    pub fn unread() -> ClientKeys {
        ClientKeys { keys: Vec::new() }
    }

    /// Reads and parses `path`. Every error starts with the path; none contains file text.
    /// The file's bytes are zeroized once parsed, so its keys do not linger in freed memory.
    pub fn load(path: &Path) -> Result<ClientKeys, String> {
        let shown = path.display();
        let bytes = Zeroizing::new(
            std::fs::read(path).map_err(|e| format!("client keys file {shown}: {e}"))?,
        );
        let result = match std::str::from_utf8(&bytes) {
            Ok(text) => ClientKeys::parse(text),
            Err(e) => {
                // Name the line, not the bytes: they may be part of a key.
                let line_no = bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                Err(format!("line {line_no}: not UTF-8 text"))
            }
        };
        result.map_err(|e| format!("client keys file {shown}: {e}"))
    }

    /// The fingerprint of the matching key, or `None`. The presented key is hashed and its
    /// digest compared with every stored digest in constant time ([`subtle`]), with no early
    /// exit on a match: the time taken depends only on the number of keys, not on which (if
    /// any) matched or how much of a key was right, and comparing digests means the presented
    /// key's length is not compared either.
    pub fn verify(&self, presented: &[u8]) -> Option<String> {
        self.verify_owners(presented).map(|(fp, _)| fp)
    }

    /// Like [`ClientKeys::verify`], with the owners of every matching key as a bit set
    /// (bit `i`: identity `i`, see [`ClientKeys::owned_by`]; [`NO_OWNER`]: a key of
    /// `access.client_keys_file`). The same key in two files has two owners.
    pub fn verify_owners(&self, presented: &[u8]) -> Option<(String, u64)> {
        let digest = sha256(presented);
        let mut found = subtle::Choice::from(0);
        let mut index: u64 = 0;
        let mut owners: u64 = 0;
        for (i, key) in (0u64..).zip(&self.keys) {
            let eq = same_digest(&digest, &key.digest);
            index.conditional_assign(&i, eq);
            owners |= u64::conditional_select(&0, &key.owner, eq);
            found |= eq;
        }
        if bool::from(found) {
            let index = usize::try_from(index).ok()?;
            self.keys
                .get(index)
                .map(|k| (k.fingerprint.clone(), owners))
        } else {
            None
        }
    }

    /// These keys, acting as identity `index` (below [`crate::config::MAX_IDENTITIES`]).
    pub fn owned_by(mut self, index: usize) -> ClientKeys {
        let bit = 1u64 << index.min(62);
        for k in &mut self.keys {
            k.owner = bit;
        }
        self
    }

    /// All keys of several files, each keeping its owner.
    pub fn merge(files: impl IntoIterator<Item = ClientKeys>) -> ClientKeys {
        ClientKeys {
            keys: files.into_iter().flat_map(|f| f.keys).collect(),
        }
    }

    /// How many keys the file holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false for a parsed file: [`ClientKeys::parse`] refuses one without keys (true
    /// only for [`ClientKeys::unread`]). Present for clippy's `len_without_is_empty`.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Fingerprints in file order, for the start-up / reload log line.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.fingerprint.clone()).collect()
    }
}

/// Equality of two digests in time independent of where they differ. The inputs are digests,
/// so this reveals nothing useful even if it did short-circuit; it is constant-time anyway so
/// that no reviewer has to take that argument on trust.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> subtle::Choice {
    a.ct_eq(b)
}

/// The fingerprint a key is logged as (tests of other modules compare against it).
#[cfg(test)]
pub(super) fn fingerprint(key: &str) -> String {
    fingerprint_of(&sha256(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY_A: &str = "key-a-0123456789abcdef";

    fn fp(key: &str) -> String {
        fingerprint(key)
    }

    #[test]
    fn key_file_syntax() {
        let text = "\u{feff}# leading comment\n\n   \n  key-one-0123456789abcdef  \r\n\
                    key-two-0123456789abcdef # etl job\n\
                    key#three-0123456789abcdef\t# # hashes are fine in keys\n   # indented comment\n";
        let keys = ClientKeys::parse(text).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(!keys.is_empty());
        assert_eq!(
            keys.fingerprints(),
            vec![
                fp("key-one-0123456789abcdef"),
                fp("key-two-0123456789abcdef"),
                fp("key#three-0123456789abcdef")
            ]
        );
        assert!(keys.verify(b"key-two-0123456789abcdef").is_some());
        assert!(keys.verify(b"key#three-0123456789abcdef").is_some());
        assert!(keys.verify(b"key-two-0123456789abcdef # etl job").is_none());
        assert!(keys.verify(b"key").is_none());
        assert!(keys.verify(b"").is_none());
    }

    #[test]
    fn key_file_errors_name_the_line_and_never_the_key() {
        let cases: [(&str, &str, &str); 6] = [
            ("# c\nshort-secretkey\n", "line 2:", "short-secretkey"),
            (
                "ok-key-0123456789abcdef\n\nsecret-part-one secret-part-two\n",
                "line 3:",
                "secret-part",
            ),
            (
                "ok-key-0123456789abcdef\nsecret\u{1}control-0123456789\n",
                "line 2:",
                "control",
            ),
            ("sécret-non-ascii-0123456789\n", "line 1:", "cret-non-ascii"),
            (
                "dup-key-0123456789abcdef\n# x\ndup-key-0123456789abcdef # again\n",
                "line 3: the same key as line 1",
                "dup-key",
            ),
            (
                "ok-key-0123456789abcdef\nsecret-key-0123456789abcdef trailing\n",
                "line 2:",
                "trailing",
            ),
        ];
        for (text, expected, secret) in cases {
            let err = ClientKeys::parse(text).unwrap_err();
            assert!(
                err.starts_with(expected),
                "{err:?} should start with {expected:?}"
            );
            assert!(!err.contains(secret), "{err:?} leaks {secret:?}");
        }
        for empty in ["", "\n\n", "# only comments\n  # here\n"] {
            assert!(ClientKeys::parse(empty).unwrap_err().contains("no keys"));
        }
    }

    #[test]
    fn key_file_load_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("# callers\n{KEY_A}\n")).unwrap();
        let keys = ClientKeys::load(&path).unwrap();
        assert_eq!(keys.fingerprints(), vec![fp(KEY_A)]);

        std::fs::write(&path, "tooshort-secret\n").unwrap();
        let err = ClientKeys::load(&path).unwrap_err();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("line 1:"),
            "{err}"
        );
        assert!(!err.contains("tooshort"), "{err}");

        std::fs::write(
            &path,
            b"ok-key-0123456789abcdef\nsecret\xffbytes-0123456789\n",
        )
        .unwrap();
        let err = ClientKeys::load(&path).unwrap_err();
        assert!(err.contains("line 2: not UTF-8"), "{err}");
        assert!(!err.contains("secret"), "{err}");

        let missing = dir.path().join("missing");
        let err = ClientKeys::load(&missing).unwrap_err();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn unread_admits_nobody() {
        let keys = ClientKeys::unread();
        assert!(keys.is_empty());
        assert!(keys.verify(b"").is_none());
        assert!(keys.verify(KEY_A.as_bytes()).is_none());
    }

    #[test]
    fn same_digest_is_equality() {
        let a = sha256(b"a");
        let mut b = a;
        assert!(bool::from(same_digest(&a, &b)));
        for i in 0..32 {
            for bit in 0..8 {
                b = a;
                b[i] ^= 1 << bit;
                assert!(!bool::from(same_digest(&a, &b)));
            }
        }
    }

    /// A key as the file format accepts it.
    fn key_strategy() -> impl Strategy<Value = String> {
        "[!-~]{16,48}".prop_filter("a key cannot start with #", |k| !k.starts_with('#'))
    }

    proptest! {
        #[test]
        fn verify_never_accepts_a_key_not_in_the_set(
            set in proptest::collection::hash_set(key_strategy(), 1..6),
            candidate in proptest::collection::vec(any::<u8>(), 0..64),
            near in key_strategy(),
        ) {
            let text: String = set.iter().map(|k| format!("{k}\n")).collect();
            let keys = ClientKeys::parse(&text).unwrap();
            prop_assert_eq!(keys.len(), set.len());
            for k in &set {
                prop_assert_eq!(keys.verify(k.as_bytes()), Some(fp(k)));
                // Prefixes and extensions of a real key are not keys.
                prop_assert!(keys.verify(&k.as_bytes()[..k.len() - 1]).is_none() || set.contains(&k[..k.len() - 1]));
                let longer = format!("{k}x");
                prop_assert!(keys.verify(longer.as_bytes()).is_none() || set.contains(&longer));
            }
            for c in [candidate.as_slice(), near.as_bytes()] {
                let member = std::str::from_utf8(c).is_ok_and(|s| set.contains(s));
                prop_assert_eq!(keys.verify(c).is_some(), member);
            }
        }
    }
}
