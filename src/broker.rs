//! The subscription index: who is subscribed to which tag sets, and who a message goes to.
//!
//! No I/O happens here. Publishing is split in two so that no socket is touched under the
//! index lock: [`Broker::read`] gives a guard under which a publisher finds the matching
//! subscribers and queues messages for them (`Outbound::enqueue` only moves pointers), and the
//! publisher writes to sockets after dropping the guard (see `fanout.rs`).
//!
//! # The index
//!
//! Tags are interned to integers while some subscription uses them. Each distinct tag set is
//! one entry holding its subscribers, and each entry is filed under exactly one of its tags: the
//! one whose bucket was smallest when the entry was created. A message with tags `T` looks only
//! at the buckets of the tags in `T` and keeps the entries that are subsets of `T`. So the cost
//! of a publish follows the message's tags and the entries filed under them, not the number of
//! subscriptions: 100,000 subscriptions on other tags are never looked at.
//!
//! The index itself (`Index`) is plain data, generic over what it keeps per subscription, so
//! its tests run it against a simple model with bare client ids instead of sockets. [`Broker`]
//! puts it behind the lock and adds the generation, the metrics and the queues.

use crate::metrics::{self, Metrics};
use crate::outbound::Outbound;
use crate::relay::Relay;
use crate::tags::TagSet;
use parking_lot::{RwLock, RwLockReadGuard};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Identifies a client connection for the lifetime of the server.
pub type ClientId = u64;

type TagId = u32;
type SetId = u32;

/// A subscriber as the index holds it: its id (for de-duplication) and its queue.
#[derive(Clone, Debug)]
pub struct Subscriber {
    pub id: ClientId,
    pub out: Arc<Outbound>,
}

/// What the index needs of the value it keeps per subscription: the client it belongs to, so
/// that a client holds each set once and a match names each client once.
trait HasClientId: Clone {
    fn client_id(&self) -> ClientId;
}

impl HasClientId for Subscriber {
    fn client_id(&self) -> ClientId {
        self.id
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("too many subscriptions on this connection (max_subscriptions {0})")]
    TooManySubscriptions(usize),
}

/// A cheap-to-clone handle on the shared index.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

struct Shared {
    /// Read-mostly: every publish reads it, only (un)subscribes and disconnects write it, so a
    /// reader-writer lock lets publishers on different connections match in parallel.
    index: RwLock<Index<Subscriber>>,
    /// Bumped under the write lock on every change, so a publisher can reuse a match result
    /// while the index has not changed.
    generation: AtomicU64,
    next_id: AtomicU64,
    max_subscriptions: usize,
    metrics: Arc<Metrics>,
    /// Where local publishes and token changes go to reach other nodes; set once, when the
    /// node joins a cluster.
    relay: OnceLock<Arc<dyn Relay>>,
}

struct Entry<S> {
    ids: Box<[TagId]>,
    set: TagSet,
    filed_under: TagId,
    /// One per client holding this set.
    subs: Vec<S>,
}

/// The subscription index without its lock: interned tags, one entry per distinct tag set,
/// the buckets entries are filed in, and each client's entries. `S` is what a match returns
/// for each subscriber (a [`Subscriber`] in the server).
struct Index<S> {
    tag_ids: HashMap<Box<str>, TagId>,
    /// Per tag id: its name (to free it), how many entries use it, and the entries filed
    /// under it.
    tags: Vec<TagSlot>,
    free_tags: Vec<TagId>,
    entry_ids: HashMap<Box<[TagId]>, SetId>,
    entries: Vec<Option<Entry<S>>>,
    free_entries: Vec<SetId>,
    clients: HashMap<ClientId, Vec<SetId>>,
}

#[derive(Default)]
struct TagSlot {
    name: Option<Box<str>>,
    uses: u32,
    bucket: Vec<SetId>,
}

impl Broker {
    /// An empty index; each connection may hold at most `max_subscriptions` subscriptions.
    pub fn new(metrics: Arc<Metrics>, max_subscriptions: usize) -> Broker {
        Broker {
            shared: Arc::new(Shared {
                index: RwLock::new(Index::default()),
                generation: AtomicU64::new(0),
                next_id: AtomicU64::new(1),
                max_subscriptions,
                metrics,
                relay: OnceLock::new(),
            }),
        }
    }

    /// A fresh client id.
    pub fn next_client_id(&self) -> ClientId {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Hands local publishes and token changes to `relay` from now on (once per broker).
    pub fn set_relay(&self, relay: Arc<dyn Relay>) {
        let _ = self.shared.relay.set(relay);
    }

    /// Where local publishes and token changes go to reach other nodes, if anywhere.
    pub fn relay(&self) -> Option<&Arc<dyn Relay>> {
        self.shared.relay.get()
    }

    /// Adds a subscription. Subscribing to a set the client already holds does nothing.
    ///
    /// # Errors
    /// The client already holds `max_subscriptions` subscriptions.
    pub fn subscribe(&self, sub: &Subscriber, set: &TagSet) -> Result<(), BrokerError> {
        let mut ix = self.shared.index.write();
        if ix.subscribe(sub, set, self.shared.max_subscriptions)? {
            self.changed();
            metrics::add(&self.shared.metrics.subscriptions, 1);
        }
        Ok(())
    }

    /// Removes exactly this set from the client's subscriptions; fine when it was not there.
    pub fn unsubscribe(&self, id: ClientId, set: &TagSet) {
        let mut ix = self.shared.index.write();
        if ix.unsubscribe(id, set) {
            self.changed();
            metrics::sub(&self.shared.metrics.subscriptions, 1);
        }
    }

    /// Removes every subscription of a client (it disconnected).
    pub fn remove_client(&self, id: ClientId) {
        let mut ix = self.shared.index.write();
        let removed = ix.remove_client(id);
        if removed > 0 {
            self.changed();
            metrics::sub(&self.shared.metrics.subscriptions, removed as u64);
        }
    }

    /// The client's subscriptions, in no particular order.
    pub fn subscriptions(&self, id: ClientId) -> Vec<TagSet> {
        self.shared.index.read().subscriptions(id)
    }

    /// How many subscriptions each client holds (clients without any are left out). One pass
    /// under the read lock: publishers go on matching meanwhile.
    pub fn subscription_counts(&self) -> HashMap<ClientId, usize> {
        let ix = self.shared.index.read();
        ix.clients
            .iter()
            .map(|(&id, sets)| (id, sets.len()))
            .collect()
    }

    /// The `limit` tag sets with the most subscribers, most first (ties in tag order), and the
    /// number of distinct sets. Under the read lock, only the chosen sets are copied.
    pub fn top_sets(&self, limit: usize) -> (Vec<(TagSet, usize)>, usize) {
        let ix = self.shared.index.read();
        let mut counts: Vec<(usize, SetId)> = ix
            .entries
            .iter()
            .enumerate()
            .filter_map(|(eid, e)| Some((e.as_ref()?.subs.len(), eid as SetId)))
            .collect();
        let distinct = counts.len();
        let by_count = |a: &(usize, SetId), b: &(usize, SetId)| b.0.cmp(&a.0);
        if limit < counts.len() {
            counts.select_nth_unstable_by(limit, by_count);
            counts.truncate(limit);
        }
        let mut top: Vec<(TagSet, usize)> = counts
            .into_iter()
            .map(|(n, eid)| (ix.entry(eid).set.clone(), n))
            .collect();
        drop(ix);
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.as_str().cmp(b.0.as_str())));
        (top, distinct)
    }

    /// Removes the client's subscriptions for which `keep` is false, and returns them.
    ///
    /// Under the same write lock (so no publisher can match the old subscriptions any more),
    /// the client's queue loses the deliveries that only the removed subscriptions matched,
    /// and `notice(set)` is queued for each removed set. Nothing matched through a removed
    /// subscription reaches the client after its notice.
    pub fn revoke(
        &self,
        id: ClientId,
        keep: impl Fn(&TagSet) -> bool,
        notice: impl Fn(&TagSet) -> Vec<u8>,
    ) -> Vec<TagSet> {
        let mut ix = self.shared.index.write();
        let (removed, sub) = ix.revoke(id, keep);
        if removed.is_empty() {
            return removed;
        }
        self.changed();
        metrics::sub(&self.shared.metrics.subscriptions, removed.len() as u64);
        if let Some(Subscriber { out, .. }) = sub {
            let remaining = ix.subscriptions(id);
            let still_matches = |tags: &str| {
                TagSet::parse(tags.as_bytes(), usize::MAX)
                    .is_ok_and(|tags| remaining.iter().any(|s| s.is_subset_of(&tags)))
            };
            for (i, set) in removed.iter().enumerate() {
                if i == 0 {
                    out.retain_and_notify(still_matches, notice(set));
                } else {
                    out.retain_and_notify(|_| true, notice(set));
                }
            }
        }
        removed
    }

    /// Takes the index for reading, to match messages and queue them.
    pub fn read(&self) -> ReadGuard<'_> {
        ReadGuard {
            ix: self.shared.index.read(),
            generation: self.generation(),
        }
    }

    /// The index's current generation (see [`ReadGuard::generation`]).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.shared.generation.fetch_add(1, Ordering::Release);
    }
}

/// The index, held for reading.
pub struct ReadGuard<'a> {
    ix: RwLockReadGuard<'a, Index<Subscriber>>,
    generation: u64,
}

impl ReadGuard<'_> {
    /// The generation of the index this guard sees. While it is unchanged, a match result
    /// computed earlier is still right.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Everyone a message with these normalised, comma-joined tags goes to, each client once.
    pub fn matches(&self, tags: &[u8]) -> Vec<Subscriber> {
        self.ix.matches(tags)
    }
}

/// True when every id of `small` is in `big`; both sorted.
fn is_subset(small: &[TagId], big: &[TagId]) -> bool {
    let mut big = big.iter();
    small.iter().all(|s| big.any(|b| b == s))
}

impl<S> Default for Index<S> {
    fn default() -> Self {
        Index {
            tag_ids: HashMap::new(),
            tags: Vec::new(),
            free_tags: Vec::new(),
            entry_ids: HashMap::new(),
            entries: Vec::new(),
            free_entries: Vec::new(),
            clients: HashMap::new(),
        }
    }
}

impl<S: HasClientId> Index<S> {
    /// Adds `set` to the subscriptions of `sub`'s client. Returns false when the client
    /// already held it (nothing changed).
    ///
    /// # Errors
    /// The client already holds `max_subscriptions` other sets; nothing changed.
    fn subscribe(
        &mut self,
        sub: &S,
        set: &TagSet,
        max_subscriptions: usize,
    ) -> Result<bool, BrokerError> {
        let id = sub.client_id();
        let held = self.clients.get(&id).map_or(0, Vec::len);
        let ids = self.intern(set);
        let eid = match self.entry_ids.get(&ids[..]) {
            Some(&eid) => eid,
            None => self.add_entry(ids, set.clone()),
        };
        let entry = self.entries[eid as usize]
            .as_mut()
            .expect("entry ids point at entries");
        if entry.subs.iter().any(|s| s.client_id() == id) {
            return Ok(false);
        }
        if held >= max_subscriptions {
            if entry.subs.is_empty() {
                self.remove_entry(eid);
            }
            return Err(BrokerError::TooManySubscriptions(max_subscriptions));
        }
        entry.subs.push(sub.clone());
        self.clients.entry(id).or_default().push(eid);
        Ok(true)
    }

    /// Removes exactly this set from the client's subscriptions. Returns false when the client
    /// did not hold it.
    fn unsubscribe(&mut self, id: ClientId, set: &TagSet) -> bool {
        self.lookup(set).is_some_and(|eid| self.detach(id, eid))
    }

    /// Removes every subscription of a client, and returns how many there were.
    fn remove_client(&mut self, id: ClientId) -> usize {
        let Some(eids) = self.clients.remove(&id) else {
            return 0;
        };
        for &eid in &eids {
            self.detach_entry(id, eid);
        }
        eids.len()
    }

    /// The client's subscriptions, in no particular order.
    fn subscriptions(&self, id: ClientId) -> Vec<TagSet> {
        self.clients.get(&id).map_or_else(Vec::new, |eids| {
            eids.iter().map(|&e| self.entry(e).set.clone()).collect()
        })
    }

    /// Removes the client's subscriptions for which `keep` is false. Returns them, and the
    /// value the client was subscribed with (when anything was removed).
    fn revoke(&mut self, id: ClientId, keep: impl Fn(&TagSet) -> bool) -> (Vec<TagSet>, Option<S>) {
        let Some(eids) = self.clients.get(&id).cloned() else {
            return (Vec::new(), None);
        };
        let mut removed = Vec::new();
        let mut sub = None;
        for eid in eids {
            let entry = self.entry(eid);
            if keep(&entry.set) {
                continue;
            }
            if let Some(s) = entry.subs.iter().find(|s| s.client_id() == id) {
                sub = Some(s.clone());
            }
            removed.push(entry.set.clone());
            self.detach(id, eid);
        }
        (removed, sub)
    }

    /// Everyone a message with these normalised, comma-joined tags goes to, each client once.
    fn matches(&self, tags: &[u8]) -> Vec<S> {
        let mut ids: Vec<TagId> = Vec::new();
        for tag in tags.split(|&b| b == b',') {
            let Ok(tag) = std::str::from_utf8(tag) else {
                continue;
            };
            if let Some(&id) = self.tag_ids.get(tag) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut found: Vec<&Entry<S>> = Vec::new();
        for &t in &ids {
            for &eid in &self.tags[t as usize].bucket {
                let entry = self.entry(eid);
                if is_subset(&entry.ids, &ids) {
                    found.push(entry);
                }
            }
        }
        match found.as_slice() {
            [] => Vec::new(),
            [one] => one.subs.clone(),
            many => {
                let mut subs: Vec<S> = many.iter().flat_map(|e| e.subs.iter().cloned()).collect();
                subs.sort_unstable_by_key(S::client_id);
                subs.dedup_by_key(|s| s.client_id());
                subs
            }
        }
    }

    fn entry(&self, eid: SetId) -> &Entry<S> {
        self.entries[eid as usize]
            .as_ref()
            .expect("entry ids point at entries")
    }

    /// The entry for exactly this set, if any.
    fn lookup(&self, set: &TagSet) -> Option<SetId> {
        let mut ids = Vec::with_capacity(set.len());
        for tag in set.iter() {
            ids.push(*self.tag_ids.get(tag)?);
        }
        ids.sort_unstable();
        self.entry_ids.get(&ids[..]).copied()
    }

    /// The sorted tag ids of a set, interning new tags (their use count stays 0 until an entry
    /// takes them; `add_entry` counts them).
    fn intern(&mut self, set: &TagSet) -> Box<[TagId]> {
        let mut ids: Vec<TagId> = set
            .iter()
            .map(|tag| {
                if let Some(&id) = self.tag_ids.get(tag) {
                    return id;
                }
                let id = self.free_tags.pop().unwrap_or_else(|| {
                    self.tags.push(TagSlot::default());
                    (self.tags.len() - 1) as TagId
                });
                self.tags[id as usize].name = Some(tag.into());
                self.tag_ids.insert(tag.into(), id);
                id
            })
            .collect();
        ids.sort_unstable();
        ids.into_boxed_slice()
    }

    fn add_entry(&mut self, ids: Box<[TagId]>, set: TagSet) -> SetId {
        // File under the least crowded tag, so a popular tag's bucket holds only the sets
        // that have nothing rarer to go under.
        let filed_under = *ids
            .iter()
            .min_by_key(|&&t| self.tags[t as usize].bucket.len())
            .expect("tag sets are never empty");
        let entry = Entry {
            ids: ids.clone(),
            set,
            filed_under,
            subs: Vec::new(),
        };
        let eid = match self.free_entries.pop() {
            Some(eid) => {
                self.entries[eid as usize] = Some(entry);
                eid
            }
            None => {
                self.entries.push(Some(entry));
                (self.entries.len() - 1) as SetId
            }
        };
        for &t in ids.iter() {
            self.tags[t as usize].uses += 1;
        }
        self.tags[filed_under as usize].bucket.push(eid);
        self.entry_ids.insert(ids, eid);
        eid
    }

    fn remove_entry(&mut self, eid: SetId) {
        let entry = self.entries[eid as usize]
            .take()
            .expect("entry ids point at entries");
        let bucket = &mut self.tags[entry.filed_under as usize].bucket;
        if let Some(pos) = bucket.iter().position(|&e| e == eid) {
            bucket.swap_remove(pos);
        }
        for &t in entry.ids.iter() {
            let slot = &mut self.tags[t as usize];
            slot.uses -= 1;
            if slot.uses == 0 {
                if let Some(name) = slot.name.take() {
                    self.tag_ids.remove(&name);
                }
                slot.bucket = Vec::new();
                self.free_tags.push(t);
            }
        }
        self.entry_ids.remove(&entry.ids);
        self.free_entries.push(eid);
    }

    /// Removes the client from an entry and the entry from the client. Returns false when the
    /// client was not subscribed to it.
    fn detach(&mut self, id: ClientId, eid: SetId) -> bool {
        let Some(eids) = self.clients.get_mut(&id) else {
            return false;
        };
        let Some(pos) = eids.iter().position(|&e| e == eid) else {
            return false;
        };
        eids.swap_remove(pos);
        if eids.is_empty() {
            self.clients.remove(&id);
        }
        self.detach_entry(id, eid);
        true
    }

    /// Removes the client from the entry's subscribers, and the entry when nobody is left.
    fn detach_entry(&mut self, id: ClientId, eid: SetId) {
        let entry = self.entries[eid as usize]
            .as_mut()
            .expect("entry ids point at entries");
        if let Some(pos) = entry.subs.iter().position(|s| s.client_id() == id) {
            entry.subs.swap_remove(pos);
        }
        if entry.subs.is_empty() {
            self.remove_entry(eid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// In the tests the index keeps bare client ids.
    impl HasClientId for ClientId {
        fn client_id(&self) -> ClientId {
            *self
        }
    }

    fn set(s: &str) -> TagSet {
        TagSet::parse(s.as_bytes(), 32).unwrap()
    }

    fn matches(ix: &Index<ClientId>, tags: &str) -> Vec<ClientId> {
        let mut got = ix.matches(set(tags).as_str().as_bytes());
        got.sort_unstable();
        got
    }

    #[test]
    fn subset_semantics_and_once_per_client() {
        let mut ix = Index::default();
        assert_eq!(ix.subscribe(&1, &set("a"), 10), Ok(true));
        assert_eq!(ix.subscribe(&1, &set("a,b"), 10), Ok(true));
        assert_eq!(ix.subscribe(&1, &set("b,a"), 10), Ok(false));
        assert_eq!(ix.subscribe(&2, &set("b,c"), 10), Ok(true));
        assert_eq!(matches(&ix, "a,b,c"), [1, 2]);
        assert_eq!(matches(&ix, "a"), [1]);
        assert_eq!(matches(&ix, "b"), Vec::<ClientId>::new());
        assert_eq!(matches(&ix, "c,x"), Vec::<ClientId>::new());
        assert!(ix.unsubscribe(1, &set("a")));
        assert!(!ix.unsubscribe(1, &set("a")));
        assert_eq!(matches(&ix, "a"), Vec::<ClientId>::new());
        assert_eq!(matches(&ix, "a,b"), [1]);
    }

    #[test]
    fn subscription_limit() {
        let mut ix = Index::default();
        assert_eq!(ix.subscribe(&1, &set("a"), 1), Ok(true));
        assert_eq!(
            ix.subscribe(&1, &set("b"), 1),
            Err(BrokerError::TooManySubscriptions(1))
        );
        // Holding the set already is not a new subscription.
        assert_eq!(ix.subscribe(&1, &set("a"), 1), Ok(false));
        // The refused set left nothing behind.
        assert_eq!(ix.entry_ids.len(), 1);
        assert_eq!(ix.tag_ids.len(), 1);
    }

    #[test]
    fn removing_everyone_frees_everything() {
        let mut ix = Index::default();
        for (client, tags) in [(1, "a,b"), (2, "b,c"), (2, "d"), (3, "a,b")] {
            ix.subscribe(&client, &set(tags), 10).unwrap();
        }
        let (removed, sub) = ix.revoke(2, |s| !s.contains("c"));
        assert_eq!((removed, sub), (vec![set("b,c")], Some(2)));
        assert_eq!(ix.remove_client(1), 1);
        assert_eq!(ix.remove_client(1), 0);
        assert_eq!(ix.remove_client(2) + ix.remove_client(3), 2);
        check_invariants(&ix);
        assert!(ix.tag_ids.is_empty() && ix.entry_ids.is_empty() && ix.clients.is_empty());
        assert!(ix.entries.iter().all(Option::is_none));
    }

    /// Checks the index's internal bookkeeping: entries, buckets, tag use counts, and the
    /// clients' lists agree with each other, and nothing unused is kept.
    fn check_invariants(ix: &Index<ClientId>) {
        let mut uses: HashMap<TagId, u32> = HashMap::new();
        let mut by_client: BTreeMap<ClientId, BTreeSet<SetId>> = BTreeMap::new();
        for (eid, entry) in ix.entries.iter().enumerate() {
            let eid = eid as SetId;
            let Some(entry) = entry else {
                assert!(ix.free_entries.contains(&eid), "lost entry slot {eid}");
                continue;
            };
            assert!(
                !entry.subs.is_empty(),
                "entry {} has no subscribers",
                entry.set
            );
            let want: Vec<TagId> = entry.set.iter().map(|t| ix.tag_ids[t]).collect();
            let mut want_sorted = want.clone();
            want_sorted.sort_unstable();
            assert_eq!(&*entry.ids, &want_sorted[..]);
            assert_eq!(ix.entry_ids.get(&entry.ids), Some(&eid));
            assert!(entry.ids.contains(&entry.filed_under));
            for (t, slot) in ix.tags.iter().enumerate() {
                let filed = slot.bucket.iter().filter(|&&e| e == eid).count();
                let want = usize::from(t as TagId == entry.filed_under);
                assert_eq!(filed, want, "entry {} in bucket {t}", entry.set);
            }
            for &t in entry.ids.iter() {
                *uses.entry(t).or_default() += 1;
            }
            for &c in &entry.subs {
                assert!(
                    by_client.entry(c).or_default().insert(eid),
                    "twice in an entry"
                );
            }
        }
        assert_eq!(
            ix.entry_ids.len(),
            by_client.values().flatten().collect::<BTreeSet<_>>().len()
        );
        for (t, slot) in ix.tags.iter().enumerate() {
            let t = t as TagId;
            match &slot.name {
                Some(name) => {
                    assert_eq!(ix.tag_ids.get(name), Some(&t));
                    assert_eq!(Some(&slot.uses), uses.get(&t), "use count of {name}");
                }
                None => {
                    assert_eq!((slot.uses, slot.bucket.len()), (0, 0));
                    assert!(ix.free_tags.contains(&t), "lost tag slot {t}");
                }
            }
        }
        assert_eq!(ix.tag_ids.len(), uses.len());
        let clients: BTreeMap<ClientId, BTreeSet<SetId>> = ix
            .clients
            .iter()
            .map(|(&c, eids)| {
                let set: BTreeSet<SetId> = eids.iter().copied().collect();
                assert_eq!(set.len(), eids.len(), "client {c} lists an entry twice");
                (c, set)
            })
            .collect();
        assert_eq!(clients, by_client);
    }

    /// Subscription tags come from a small alphabet, so random sets overlap and share buckets;
    /// messages may also carry a tag nobody subscribes to.
    const TAGS: [&str; 6] = ["a", "b", "c", "d", "é", "f"];
    const MESSAGE_TAGS: [&str; 7] = ["a", "b", "c", "d", "é", "f", "x"];

    type Model = BTreeMap<ClientId, BTreeSet<TagSet>>;

    #[derive(Debug, Clone)]
    enum Op {
        Subscribe(ClientId, TagSet),
        Unsubscribe(ClientId, TagSet),
        RemoveClient(ClientId),
        /// Revokes the client's subscriptions that contain this tag.
        Revoke(ClientId, &'static str),
        Publish(TagSet),
    }

    fn tag_set(alphabet: &'static [&'static str], max: usize) -> impl Strategy<Value = TagSet> {
        prop::collection::vec(prop::sample::select(alphabet), 1..=max)
            .prop_map(|tags| TagSet::from_strs(&tags, 32).unwrap())
    }

    fn op() -> impl Strategy<Value = Op> {
        let client = 1..=4 as ClientId;
        prop_oneof![
            4 => (client.clone(), tag_set(&TAGS, 3)).prop_map(|(c, s)| Op::Subscribe(c, s)),
            1 => (client.clone(), tag_set(&TAGS, 3)).prop_map(|(c, s)| Op::Unsubscribe(c, s)),
            1 => client.clone().prop_map(Op::RemoveClient),
            1 => (client, prop::sample::select(&TAGS[..])).prop_map(|(c, t)| Op::Revoke(c, t)),
            4 => tag_set(&MESSAGE_TAGS, 6).prop_map(Op::Publish),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The index against a plain model (each client's set of tag sets): every message
        /// reaches exactly the clients holding a subset of its tags, each once, whatever
        /// sequence of subscribes, unsubscribes, revocations and disconnects came before.
        #[test]
        fn index_matches_the_model(
            max_subscriptions in 1..=6usize,
            ops in prop::collection::vec(op(), 1..80),
        ) {
            let mut ix: Index<ClientId> = Index::default();
            let mut model = Model::new();
            for op in ops {
                match op {
                    Op::Subscribe(c, s) => {
                        let held = model.entry(c).or_default();
                        let want = if held.contains(&s) {
                            Ok(false)
                        } else if held.len() >= max_subscriptions {
                            Err(BrokerError::TooManySubscriptions(max_subscriptions))
                        } else {
                            Ok(held.insert(s.clone()))
                        };
                        prop_assert_eq!(ix.subscribe(&c, &s, max_subscriptions), want);
                    }
                    Op::Unsubscribe(c, s) => {
                        let want = model.entry(c).or_default().remove(&s);
                        prop_assert_eq!(ix.unsubscribe(c, &s), want);
                    }
                    Op::RemoveClient(c) => {
                        let want = model.remove(&c).unwrap_or_default().len();
                        prop_assert_eq!(ix.remove_client(c), want);
                    }
                    Op::Revoke(c, tag) => {
                        let held = model.entry(c).or_default();
                        let gone: BTreeSet<TagSet> =
                            held.iter().filter(|s| s.contains(tag)).cloned().collect();
                        held.retain(|s| !s.contains(tag));
                        let (removed, sub) = ix.revoke(c, |s| !s.contains(tag));
                        prop_assert_eq!(sub, (!gone.is_empty()).then_some(c));
                        prop_assert_eq!(removed.len(), gone.len());
                        prop_assert_eq!(removed.into_iter().collect::<BTreeSet<_>>(), gone);
                    }
                    Op::Publish(msg) => {
                        let mut got = ix.matches(msg.as_str().as_bytes());
                        got.sort_unstable();
                        let once = got.windows(2).all(|w| w[0] < w[1]);
                        prop_assert!(once, "a client matched twice: {:?}", got);
                        let want: Vec<ClientId> = model
                            .iter()
                            .filter(|(_, sets)| sets.iter().any(|s| s.is_subset_of(&msg)))
                            .map(|(&c, _)| c)
                            .collect();
                        prop_assert_eq!(got, want, "message {}", msg);
                    }
                }
                for c in 1..=4 {
                    let got: BTreeSet<TagSet> = ix.subscriptions(c).into_iter().collect();
                    prop_assert_eq!(got, model.get(&c).cloned().unwrap_or_default());
                }
                check_invariants(&ix);
            }
            // Everyone leaves: nothing is kept.
            for c in 1..=4 {
                ix.remove_client(c);
            }
            check_invariants(&ix);
            prop_assert!(ix.tag_ids.is_empty() && ix.entry_ids.is_empty());
        }
    }
}
