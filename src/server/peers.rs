//! `proxy.max_connections_per_peer`: how many connections one peer holds open on a listener,
//! asked at accept next to `max_connections`, so one caller inside `allow_cidrs` (a runaway
//! client, a compromised pod) cannot take every connection slot from the others.
//!
//! A peer is its IPv4 address, or its IPv6 /64: one host is commonly handed a whole /64, so
//! counting single IPv6 addresses would let it open as many connections as it has addresses.
//! An IPv4-mapped IPv6 address counts as the IPv4 address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The open connections of each peer on one listener.
#[derive(Debug, Default)]
pub(crate) struct PeerCounts {
    open: Mutex<HashMap<PeerKey, usize>>,
}

/// What counts as one peer: an IPv4 address, or the first 64 bits of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeerKey {
    V4(u32),
    V6Prefix(u64),
}

impl PeerKey {
    fn of(ip: IpAddr) -> PeerKey {
        match ip {
            IpAddr::V4(v4) => PeerKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey::V4(u32::from(v4)),
                None => PeerKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// One connection of one peer; given back when dropped (when the connection's task ends, or
/// at once if the connection is refused for another reason after this was taken).
pub(crate) struct PeerSlot {
    counts: Arc<PeerCounts>,
    key: PeerKey,
}

impl PeerCounts {
    /// A slot for a connection from `ip`, or `None` when that peer already holds `max`.
    pub(crate) fn take(counts: &Arc<PeerCounts>, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let key = PeerKey::of(ip);
        let mut open = counts.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: counts.clone(),
            key,
        })
    }

    /// Peers holding at least one connection (tests: entries are removed at zero, so a flood
    /// of one-off peers leaves nothing behind).
    #[cfg(test)]
    fn peers(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .counts
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_peer_holds_at_most_max_and_gets_them_back() {
        let counts = Arc::new(PeerCounts::default());
        let held: Vec<_> = (0..3)
            .map(|_| PeerCounts::take(&counts, ip("10.0.0.1"), 3).unwrap())
            .collect();
        assert!(PeerCounts::take(&counts, ip("10.0.0.1"), 3).is_none());
        // Another peer is not affected.
        let other = PeerCounts::take(&counts, ip("10.0.0.2"), 3);
        assert!(other.is_some());
        drop(held);
        drop(other);
        assert_eq!(counts.peers(), 0, "entries are removed at zero");
        assert!(PeerCounts::take(&counts, ip("10.0.0.1"), 3).is_some());
    }

    #[test]
    fn an_ipv6_peer_is_its_64_and_a_mapped_ipv4_is_the_ipv4_peer() {
        let counts = Arc::new(PeerCounts::default());
        let a = PeerCounts::take(&counts, ip("2001:db8:1:2::1"), 2).unwrap();
        let b = PeerCounts::take(&counts, ip("2001:db8:1:2:ffff::9"), 2).unwrap();
        assert!(
            PeerCounts::take(&counts, ip("2001:db8:1:2:abcd::7"), 2).is_none(),
            "a third address in the same /64 is the same peer"
        );
        assert!(PeerCounts::take(&counts, ip("2001:db8:1:3::1"), 2).is_some());
        let v4 = PeerCounts::take(&counts, ip("192.0.2.7"), 1).unwrap();
        assert!(PeerCounts::take(&counts, ip("::ffff:192.0.2.7"), 1).is_none());
        drop((a, b, v4));
    }
}
