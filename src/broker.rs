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

use crate::metrics::{self, Metrics};
use crate::outbound::Outbound;
use crate::tags::TagSet;
use parking_lot::{RwLock, RwLockReadGuard};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    index: RwLock<Index>,
    /// Bumped under the write lock on every change, so a publisher can reuse a match result
    /// while the index has not changed.
    generation: AtomicU64,
    next_id: AtomicU64,
    max_subscriptions: usize,
    metrics: Arc<Metrics>,
}

struct Entry {
    ids: Box<[TagId]>,
    set: TagSet,
    filed_under: TagId,
    subs: Vec<Subscriber>,
}

#[derive(Default)]
struct Index {
    tag_ids: HashMap<Box<str>, TagId>,
    /// Per tag id: its name (to free it), how many entries use it, and the entries filed
    /// under it.
    tags: Vec<TagSlot>,
    free_tags: Vec<TagId>,
    entry_ids: HashMap<Box<[TagId]>, SetId>,
    entries: Vec<Option<Entry>>,
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

    /// Adds a subscription. Subscribing to a set the client already holds does nothing.
    ///
    /// # Errors
    /// The client already holds `max_subscriptions` subscriptions.
    pub fn subscribe(&self, sub: &Subscriber, set: &TagSet) -> Result<(), BrokerError> {
        let mut ix = self.shared.index.write();
        let held = ix.clients.get(&sub.id).map_or(0, Vec::len);
        let ids = ix.intern(set);
        let eid = match ix.entry_ids.get(&ids[..]) {
            Some(&eid) => eid,
            None => ix.add_entry(ids, set.clone()),
        };
        let entry = ix.entries[eid as usize]
            .as_mut()
            .expect("entry ids point at entries");
        if entry.subs.iter().any(|s| s.id == sub.id) {
            return Ok(());
        }
        if held >= self.shared.max_subscriptions {
            if entry.subs.is_empty() {
                ix.remove_entry(eid);
            }
            return Err(BrokerError::TooManySubscriptions(
                self.shared.max_subscriptions,
            ));
        }
        entry.subs.push(sub.clone());
        ix.clients.entry(sub.id).or_default().push(eid);
        self.changed();
        metrics::add(&self.shared.metrics.subscriptions, 1);
        Ok(())
    }

    /// Removes exactly this set from the client's subscriptions; fine when it was not there.
    pub fn unsubscribe(&self, id: ClientId, set: &TagSet) {
        let mut ix = self.shared.index.write();
        let Some(eid) = ix.lookup(set) else { return };
        if ix.detach(id, eid) {
            self.changed();
            metrics::sub(&self.shared.metrics.subscriptions, 1);
        }
    }

    /// Removes every subscription of a client (it disconnected).
    pub fn remove_client(&self, id: ClientId) {
        let mut ix = self.shared.index.write();
        let Some(eids) = ix.clients.remove(&id) else {
            return;
        };
        for &eid in &eids {
            ix.detach_entry(id, eid);
        }
        self.changed();
        metrics::sub(&self.shared.metrics.subscriptions, eids.len() as u64);
    }

    /// The client's subscriptions, in no particular order.
    pub fn subscriptions(&self, id: ClientId) -> Vec<TagSet> {
        let ix = self.shared.index.read();
        ix.clients.get(&id).map_or_else(Vec::new, |eids| {
            eids.iter().map(|&e| ix.entry(e).set.clone()).collect()
        })
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
        let Some(eids) = ix.clients.get(&id).cloned() else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        let mut out = None;
        for eid in eids {
            let entry = ix.entry(eid);
            if keep(&entry.set) {
                continue;
            }
            if let Some(s) = entry.subs.iter().find(|s| s.id == id) {
                out = Some(Arc::clone(&s.out));
            }
            removed.push(entry.set.clone());
            ix.detach(id, eid);
        }
        if removed.is_empty() {
            return removed;
        }
        self.changed();
        metrics::sub(&self.shared.metrics.subscriptions, removed.len() as u64);
        if let Some(out) = out {
            let remaining: Vec<TagSet> = ix.clients.get(&id).map_or_else(Vec::new, |eids| {
                eids.iter().map(|&e| ix.entry(e).set.clone()).collect()
            });
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
    ix: RwLockReadGuard<'a, Index>,
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
        let ix = &*self.ix;
        let mut ids: Vec<TagId> = Vec::new();
        for tag in tags.split(|&b| b == b',') {
            let Ok(tag) = std::str::from_utf8(tag) else {
                continue;
            };
            if let Some(&id) = ix.tag_ids.get(tag) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut found: Vec<&Entry> = Vec::new();
        for &t in &ids {
            for &eid in &ix.tags[t as usize].bucket {
                let entry = ix.entry(eid);
                if is_subset(&entry.ids, &ids) {
                    found.push(entry);
                }
            }
        }
        match found.as_slice() {
            [] => Vec::new(),
            [one] => one.subs.clone(),
            many => {
                let mut subs: Vec<Subscriber> =
                    many.iter().flat_map(|e| e.subs.iter().cloned()).collect();
                subs.sort_unstable_by_key(|s| s.id);
                subs.dedup_by_key(|s| s.id);
                subs
            }
        }
    }
}

/// True when every id of `small` is in `big`; both sorted.
fn is_subset(small: &[TagId], big: &[TagId]) -> bool {
    let mut big = big.iter();
    small.iter().all(|s| big.any(|b| b == s))
}

impl Index {
    fn entry(&self, eid: SetId) -> &Entry {
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
        if let Some(pos) = entry.subs.iter().position(|s| s.id == id) {
            entry.subs.swap_remove(pos);
        }
        if entry.subs.is_empty() {
            self.remove_entry(eid);
        }
    }
}
