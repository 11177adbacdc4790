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
