//! Identities at run time: one Medusa account (or key) on one upstream, with its own token
//! manager and an optional policy narrowing the global one. The `access` step decides which
//! identity serves a request and leaves it as a request extension ([`Identity`]); `policy`,
//! `inject` and the upstream router read it from there.

use std::sync::Arc;

use crate::auth::TokenManager;
use crate::policy::Policy;

/// The identity a request is served as (a request extension set by `access`). Cheap to
/// clone: one `Arc`.
///
/// ```no_run
/// # fn example(tokens: medusa_auth_proxy::auth::TokenManager) {
/// use medusa_auth_proxy::identity::Identity;
///
/// let reporting = Identity::new(0, "reporting", tokens, None);
/// assert_eq!(reporting.name(), "reporting");
/// # }
/// ```
#[derive(Clone)]
pub struct Identity(Arc<Inner>);

struct Inner {
    index: usize,
    name: Arc<str>,
    tokens: TokenManager,
    policy: Option<Policy>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("index", &self.0.index)
            .field("name", &self.0.name)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Identity number `index` (its place in `Settings::identities`), named `name`, with its
    /// token manager and its narrowing policy (`None`: the global policy alone).
    pub fn new(index: usize, name: &str, tokens: TokenManager, policy: Option<Policy>) -> Identity {
        Identity(Arc::new(Inner {
            index,
            name: name.into(),
            tokens,
            policy,
        }))
    }

    /// Its place in the configuration's list of identities.
    pub fn index(&self) -> usize {
        self.0.index
    }

    /// Its name, as in `[identities.NAME]` (`default` for the single form).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The name, shared (for response extensions that outlive the request).
    pub fn shared_name(&self) -> Arc<str> {
        self.0.name.clone()
    }

    /// Its token manager.
    pub fn tokens(&self) -> &TokenManager {
        &self.0.tokens
    }

    /// The policy checked after the global one, if it has one.
    pub fn policy(&self) -> Option<&Policy> {
        self.0.policy.as_ref()
    }
}

/// How a listener's `access` step picks the identity of a request.
#[derive(Clone, Debug)]
pub enum Resolve {
    /// Always this one: the single form, a `[[listeners]]` entry, `proxy.identity`.
    Fixed(Identity),
    /// The one the client key maps to through `[[clients]]` (all identities, by index).
    ByClientKey(Arc<[Identity]>),
}

/// Why no identity could be chosen for a request with a valid client key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// The key is in no `[[clients]]` file (only in `access.client_keys_file`).
    NoIdentity,
    /// The key is in the files of several `[[clients]]` entries of different identities.
    Ambiguous,
}

impl Unresolved {
    /// The JSON `error` code.
    pub fn code(self) -> &'static str {
        match self {
            Unresolved::NoIdentity => "no_identity",
            Unresolved::Ambiguous => "ambiguous_identity",
        }
    }

    /// Text for the caller: the rule, never the key.
    pub fn message(self) -> &'static str {
        match self {
            Unresolved::NoIdentity => {
                "the client key maps to no identity: it is in no [[clients]] keys_file"
            }
            Unresolved::Ambiguous => {
                "the client key maps to several identities: it is in the keys_file of \
                 [[clients]] entries for different identities"
            }
        }
    }
}

impl Resolve {
    /// The identity of a caller whose key maps to `key_owners` (a bit set, see
    /// [`crate::access::ClientKeys::verify_owners`]).
    pub fn pick(&self, key_owners: u64) -> Result<&Identity, Unresolved> {
        match self {
            Resolve::Fixed(id) => Ok(id),
            Resolve::ByClientKey(all) => {
                let owners = key_owners & !crate::access::NO_OWNER;
                if owners == 0 {
                    return Err(Unresolved::NoIdentity);
                }
                if owners.count_ones() > 1 {
                    return Err(Unresolved::Ambiguous);
                }
                all.get(owners.trailing_zeros() as usize)
                    .ok_or(Unresolved::NoIdentity)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{ClientKeys, NO_OWNER};

    fn identity(index: usize, name: &str) -> Identity {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "password").unwrap();
        let tokens = TokenManager::builder("http://127.0.0.1:9", crate::config::Flavor::V1)
            .email("a@b.c")
            .secret(crate::secret::SecretSource::File(pw))
            .build()
            .unwrap();
        Identity::new(index, name, tokens, None)
    }

    #[tokio::test]
    async fn a_key_picks_exactly_one_identity_or_none() {
        let all: Arc<[Identity]> = vec![identity(0, "a"), identity(1, "b")].into();
        let by_key = Resolve::ByClientKey(all.clone());
        assert_eq!(by_key.pick(1).unwrap().name(), "a");
        assert_eq!(by_key.pick(0b10).unwrap().name(), "b");
        assert_eq!(by_key.pick(0b10 | NO_OWNER).unwrap().name(), "b");
        assert_eq!(by_key.pick(NO_OWNER).unwrap_err(), Unresolved::NoIdentity);
        assert_eq!(by_key.pick(0).unwrap_err(), Unresolved::NoIdentity);
        assert_eq!(by_key.pick(0b11).unwrap_err(), Unresolved::Ambiguous);
        assert_eq!(by_key.pick(0b100).unwrap_err(), Unresolved::NoIdentity);
        // A listener's identity is fixed, whatever the key.
        let fixed = Resolve::Fixed(all[1].clone());
        assert_eq!(fixed.pick(0b01).unwrap().name(), "b");
        for u in [Unresolved::NoIdentity, Unresolved::Ambiguous] {
            assert!(u.message().contains("[[clients]]"));
        }
    }

    #[test]
    fn merged_key_files_keep_their_owners() {
        let k1 = "key-one-0123456789abcdef";
        let k2 = "key-two-0123456789abcdef";
        let shared = "key-shared-0123456789abcdef";
        let access = ClientKeys::parse(&format!("{k1}\n")).unwrap();
        let a = ClientKeys::parse(&format!("{k2}\n{shared}\n"))
            .unwrap()
            .owned_by(0);
        let b = ClientKeys::parse(&format!("{shared}\n"))
            .unwrap()
            .owned_by(3);
        let keys = ClientKeys::merge([access, a, b]);
        assert_eq!(keys.verify_owners(k1.as_bytes()).unwrap().1, NO_OWNER);
        assert_eq!(keys.verify_owners(k2.as_bytes()).unwrap().1, 1);
        assert_eq!(
            keys.verify_owners(shared.as_bytes()).unwrap().1,
            1 | (1 << 3)
        );
        assert!(keys.verify_owners(b"key-none-0123456789abcdef").is_none());
    }
}
