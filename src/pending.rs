//! The HTTP request heads being read, bounded in total and per client address.
//!
//! Every HTTP connection holds a slot from its first byte until its request head is read (or
//! fails). The total bound keeps threads and buffers in check; the per-address bound keeps one
//! address that opens connections and never finishes its requests from taking every other
//! client's turn. An address counts as one client: an IPv4 address, or an IPv6 /64 network
//! (one host is usually given a whole /64), with IPv4-mapped IPv6 addresses counted as IPv4.
//!
//! The monitoring listener bounds its connections with a [`PendingHeads`] of its own, with
//! smaller bounds, and holds each slot for the whole connection (see `monitor`).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

/// Request heads read at the same time from all addresses; past it, new connections get 503.
pub const MAX_PENDING_HEADS: usize = 1024;
/// Request heads read at the same time from one address; past it, its new connections get 429.
pub const MAX_PENDING_HEADS_PER_ADDRESS: usize = 128;

/// The request heads in progress, per server.
pub struct PendingHeads {
    max_total: usize,
    max_per_address: usize,
    /// A mutex: held for a counter update and one map lookup, twice per HTTP connection,
    /// never across I/O.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    /// Heads in progress per address. An address leaves the map when its count drops to zero,
    /// so the map never holds more than `max_total` entries.
    by_address: HashMap<IpAddr, Entry>,
    /// The total bound's refusal has been logged, and the count has not fallen to half since.
    total_reported: bool,
}

struct Entry {
    pending: usize,
    /// This address's refusal has been logged since it entered the map.
    reported: bool,
}

/// Why no slot was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// All [`MAX_PENDING_HEADS`] slots are taken.
    Total { limit: usize, first: bool },
    /// The client's address holds all of its [`MAX_PENDING_HEADS_PER_ADDRESS`] slots.
    Address { limit: usize, first: bool },
}

impl Refusal {
    /// Whether this is the first refusal of its kind since the bound was last clear: worth a
    /// warning, where the refusals that follow are not (a flood must not flood the log).
    pub fn first(self) -> bool {
        match self {
            Refusal::Total { first, .. } | Refusal::Address { first, .. } => first,
        }
    }
}

/// A slot held while one request head is read; dropping it gives the slot back. It owns a
/// handle on its bounds, so that it can move to the thread that serves the connection.
pub struct HeadSlot {
    heads: Arc<PendingHeads>,
    key: IpAddr,
}

impl std::fmt::Debug for HeadSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadSlot").field("key", &self.key).finish()
    }
}

impl Drop for HeadSlot {
    fn drop(&mut self) {
        self.heads.release(self.key);
    }
}

impl PendingHeads {
    /// Bounds of `max_total` heads in all and `max_per_address` from one address.
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> PendingHeads {
        PendingHeads {
            max_total,
            max_per_address,
            state: Mutex::new(State::default()),
        }
    }

    /// Takes a slot for a head from `ip`.
    ///
    /// # Errors
    /// The address, or the whole server, is at its bound.
    pub(crate) fn try_take(self: &Arc<Self>, ip: IpAddr) -> Result<HeadSlot, Refusal> {
        let key = client_key(ip);
        let mut st = self.state.lock();
        if let Some(e) = st.by_address.get_mut(&key)
            && e.pending >= self.max_per_address
        {
            let first = !e.reported;
            e.reported = true;
            return Err(Refusal::Address {
                limit: self.max_per_address,
                first,
            });
        }
        if st.total >= self.max_total {
            let first = !st.total_reported;
            st.total_reported = true;
            return Err(Refusal::Total {
                limit: self.max_total,
                first,
            });
        }
        st.total += 1;
        st.by_address
            .entry(key)
            .or_insert(Entry {
                pending: 0,
                reported: false,
            })
            .pending += 1;
        Ok(HeadSlot {
            heads: Arc::clone(self),
            key,
        })
    }

    fn release(&self, key: IpAddr) {
        let mut st = self.state.lock();
        st.total -= 1;
        if st.total <= self.max_total / 2 {
            st.total_reported = false;
        }
        if let Some(e) = st.by_address.get_mut(&key) {
            e.pending -= 1;
            if e.pending == 0 {
                st.by_address.remove(&key);
            }
        }
    }

    /// Heads in progress.
    pub fn len(&self) -> usize {
        self.state.lock().total
    }

    /// True when no head is being read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Addresses with a head in progress (the size of the per-address table).
    pub fn addresses(&self) -> usize {
        self.state.lock().by_address.len()
    }
}

impl Default for PendingHeads {
    fn default() -> PendingHeads {
        PendingHeads::new(MAX_PENDING_HEADS, MAX_PENDING_HEADS_PER_ADDRESS)
    }
}

/// The client an address belongs to: IPv4 addresses as they are (also when mapped into
/// IPv6), IPv6 addresses by their /64 network. Pure.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !0xFFFF_FFFF_FFFF_FFFF)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_the_others_turn() {
        let heads = Arc::new(PendingHeads::new(10, 3));
        let a: Vec<_> = (0..3)
            .map(|_| heads.try_take(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(
            heads.try_take(ip("10.0.0.1")).err(),
            Some(Refusal::Address {
                limit: 3,
                first: true
            })
        );
        // Only the first refusal is worth a warning.
        assert!(!heads.try_take(ip("10.0.0.1")).unwrap_err().first());
        // Another address still gets its turn.
        let b = heads.try_take(ip("10.0.0.2")).unwrap();
        assert_eq!((heads.len(), heads.addresses()), (4, 2));
        drop(b);
        drop(a);
        assert_eq!((heads.len(), heads.addresses()), (0, 0));
        // The address left the table, so a later refusal is reported again.
        let _a: Vec<_> = (0..3)
            .map(|_| heads.try_take(ip("10.0.0.1")).unwrap())
            .collect();
        assert!(heads.try_take(ip("10.0.0.1")).unwrap_err().first());
    }

    #[test]
    fn the_total_bounds_all_addresses_together() {
        let heads = Arc::new(PendingHeads::new(4, 3));
        let held: Vec<_> = (1..=4)
            .map(|i| heads.try_take(ip(&format!("10.0.0.{i}"))).unwrap())
            .collect();
        assert_eq!(
            heads.try_take(ip("10.0.0.9")).err(),
            Some(Refusal::Total {
                limit: 4,
                first: true
            })
        );
        assert!(!heads.try_take(ip("10.0.0.1")).unwrap_err().first());
        // Freeing one slot is not enough to warn again; falling to half is.
        let mut held = held.into_iter();
        drop(held.next());
        let again = heads.try_take(ip("10.0.0.9")).unwrap();
        assert!(!heads.try_take(ip("10.0.0.9")).unwrap_err().first());
        drop(again);
        drop(held.next());
        drop(held.next());
        let _x = heads.try_take(ip("10.0.0.9")).unwrap();
        let _y = heads.try_take(ip("10.0.0.9")).unwrap();
        let _z = heads.try_take(ip("10.0.0.9")).unwrap();
        assert!(heads.try_take(ip("10.0.0.8")).unwrap_err().first());
    }

    #[test]
    fn the_table_only_holds_addresses_with_heads_in_progress() {
        let heads = Arc::new(PendingHeads::new(1000, 2));
        for i in 0..500u32 {
            let addr = IpAddr::V4(i.into());
            let s = heads.try_take(addr).unwrap();
            let t = heads.try_take(addr).unwrap();
            assert!(heads.try_take(addr).is_err());
            drop((s, t));
        }
        assert_eq!((heads.len(), heads.addresses()), (0, 0));
    }

    #[test]
    fn client_keys() {
        assert_eq!(client_key(ip("127.0.0.2")), ip("127.0.0.2"));
        assert_eq!(client_key(ip("::ffff:127.0.0.2")), ip("127.0.0.2"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(client_key(ip("::1")), ip("::"));
        // A host's /64 is one client: its addresses share one bound.
        let heads = Arc::new(PendingHeads::new(10, 1));
        let _a = heads.try_take(ip("2001:db8::1")).unwrap();
        assert!(heads.try_take(ip("2001:db8::2")).is_err());
        assert!(heads.try_take(ip("2001:db8:0:1::1")).is_ok());
    }
}
