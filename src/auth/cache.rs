//! The token cache: moka holds the one token; everything else is derived from that entry in
//! one place ([`TokenCache::publish`]).
//!
//! ```text
//!   writers (driver: insert; 401 check: remove_if; reload: invalidate)
//!      └─ take `writes` ─► change the moka entry ─► publish(): read the entry back ─► view,
//!                                                              user id hint, expiry gauge
//!   readers: request path ─► view (one atomic load + a clock read)
//!            driver, readiness, waiters ─► the moka entry itself
//! ```
//!
//! The request path reads a view instead of moka because a moka lookup per request costs a
//! hash, a shard lock and a recency record, for an entry that changes once an hour. The view
//! cannot drift from moka: only `publish` writes it, after every change to the entry, and the
//! writes are serialized so a slow publish never overwrites a newer one. An entry that moka
//! expires needs no publish: the view is only used while its token's `usable_until` (the
//! instant moka expires the entry at) is ahead.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use moka::future::Cache;
use tokio::time::Instant;

use super::Token;
use super::TokenEvents;
use super::jwt;

/// The moka entry (the authority) and the views derived from it.
pub(super) struct TokenCache {
    entry: Cache<(), Arc<Token>>,
    /// The cached token as the request path sees it. Written only by [`TokenCache::publish`].
    view: ArcSwapOption<Token>,
    /// The user id of the last token that named one (for the "own user" route rule, checked
    /// before a request waits for a token). Kept when the token goes: a request arriving
    /// between a rejection and the next login is still checked against the account's user.
    /// Written only by [`TokenCache::publish`].
    user_id: ArcSwapOption<String>,
    /// Serializes writers, so each publish reads the entry its own write left.
    writes: tokio::sync::Mutex<()>,
    events: Arc<dyn TokenEvents>,
}

struct TokenExpiry;

impl moka::Expiry<(), Arc<Token>> for TokenExpiry {
    fn expire_after_create(
        &self,
        _key: &(),
        token: &Arc<Token>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(token.usable_until.saturating_duration_since(Instant::now()))
    }

    /// A renewal replaces the entry: the new token's own lifetime applies, not the old one's
    /// (moka's default keeps the old expiry on update, which would drop a fresh token early).
    fn expire_after_update(
        &self,
        _key: &(),
        token: &Arc<Token>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(token.usable_until.saturating_duration_since(Instant::now()))
    }
}

impl TokenCache {
    pub(super) fn new(events: Arc<dyn TokenEvents>) -> TokenCache {
        TokenCache {
            entry: Cache::builder()
                .max_capacity(4)
                .expire_after(TokenExpiry)
                .build(),
            view: ArcSwapOption::empty(),
            user_id: ArcSwapOption::empty(),
            writes: tokio::sync::Mutex::new(()),
            events,
        }
    }

    /// The request path's read: the cached token while it is usable. No lock, no await.
    pub(super) fn usable(&self) -> Option<Arc<Token>> {
        match &*self.view.load() {
            Some(t) if Instant::now() < t.usable_until => Some(t.clone()),
            _ => None,
        }
    }

    /// The moka entry itself (expired entries are not returned).
    pub(super) async fn get(&self) -> Option<Arc<Token>> {
        self.entry.get(&()).await
    }

    /// The user id of the most recent token that named one.
    pub(super) fn user_id_hint(&self) -> Option<Arc<String>> {
        self.user_id.load_full()
    }

    /// Cache a freshly obtained token (replacing any other).
    pub(super) async fn insert(&self, token: Arc<Token>) {
        let _w = self.writes.lock().await;
        self.entry.insert((), token).await;
        self.publish().await;
    }

    /// Drop the cached token if it is still the one with `id`; returns whether it was.
    pub(super) async fn remove_if(&self, id: u64) -> bool {
        let _w = self.writes.lock().await;
        let is_it = self.entry.get(&()).await.is_some_and(|t| t.id == id);
        if is_it {
            self.entry.invalidate(&()).await;
            self.publish().await;
        }
        is_it
    }

    /// Drop the cached token, whichever it is.
    pub(super) async fn invalidate(&self) {
        let _w = self.writes.lock().await;
        self.entry.invalidate(&()).await;
        self.publish().await;
    }

    /// The one place the derived state follows the moka entry. Callers hold `writes`.
    async fn publish(&self) {
        let current = self.entry.get(&()).await;
        if let Some(id) = current.as_ref().and_then(|t| t.user_id.as_ref())
            && self.user_id.load().as_deref() != Some(id)
        {
            self.user_id.store(Some(Arc::new(id.clone())));
        }
        self.events
            .token_expiry(current.as_ref().map_or(0.0, |t| unix_at(t.usable_until)));
        self.view.store(current);
    }
}

/// An `Instant` as Unix time (for the expiry gauge).
fn unix_at(at: Instant) -> f64 {
    jwt::unix_now() + at.saturating_duration_since(Instant::now()).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::super::NoEvents;
    use super::*;

    fn token(id: u64, user: Option<&str>) -> Arc<Token> {
        Token::for_tests(id, "key", user)
    }

    #[tokio::test]
    async fn the_view_follows_the_entry() {
        let cache = TokenCache::new(Arc::new(NoEvents));
        assert!(cache.usable().is_none());
        cache.insert(token(1, Some("usr_1"))).await;
        assert_eq!(cache.usable().unwrap().id, 1);
        assert_eq!(cache.get().await.unwrap().id, 1);
        // A renewal replaces both.
        cache.insert(token(2, Some("usr_1"))).await;
        assert_eq!(cache.usable().unwrap().id, 2);
        // A late rejection of the old token changes nothing.
        assert!(!cache.remove_if(1).await);
        assert_eq!(cache.usable().unwrap().id, 2);
        assert!(cache.remove_if(2).await);
        assert!(cache.usable().is_none());
        assert!(cache.get().await.is_none());
        cache.insert(token(3, None)).await;
        cache.invalidate().await;
        assert!(cache.usable().is_none());
        assert!(cache.get().await.is_none());
    }

    #[tokio::test]
    async fn the_user_id_hint_is_the_last_one_named() {
        let cache = TokenCache::new(Arc::new(NoEvents));
        assert!(cache.user_id_hint().is_none());
        cache.insert(token(1, Some("usr_1"))).await;
        assert_eq!(
            cache.user_id_hint().as_deref().map(String::as_str),
            Some("usr_1")
        );
        // Kept while no token is held, and by a token that names no user.
        cache.invalidate().await;
        cache.insert(token(2, None)).await;
        assert_eq!(
            cache.user_id_hint().as_deref().map(String::as_str),
            Some("usr_1")
        );
        cache.insert(token(3, Some("usr_2"))).await;
        assert_eq!(
            cache.user_id_hint().as_deref().map(String::as_str),
            Some("usr_2")
        );
    }
}
