//! A server's queue memory: the [`Pool`] that every client's queue counts in
//! (`queue_memory_limit`), and the queues themselves, so that one holding little that finds
//! the pool full can push out deliveries of the ones holding the most.
//!
//! The pool's dynamic threshold (see `Queue::byte_room`) keeps stalled queues from filling
//! it while they stall together; this covers what it cannot: queues that stalled one after
//! another, the first ones taking more than their share and never giving it back, or new
//! stalled clients taking the last free bytes. Then a short queue would lose deliveries while
//! stalled ones hold the memory. Instead, the publishing thread trims the largest queues, their
//! newest deliveries first, to the highest level that frees enough (longest-queue push-out,
//! as in shared-memory switches), and offers the delivery again. The pool remembers the size
//! of the largest queue, so a queue that is itself among the largest drops its delivery
//! without looking: it happens only when a short queue is starved, not per delivery.

use super::{Outbound, queue};
use crate::metrics;
use crate::pool::Pool;
use parking_lot::Mutex;
use std::sync::{Arc, Weak};

/// The pool and the queues counting in it.
#[derive(Debug, Default)]
pub struct Memory {
    /// The bytes of all queues, and their limit.
    pub pool: Arc<Pool>,
    /// Every queue counting in the pool, for finding the largest. A mutex: touched when a
    /// connection opens and when pushing out, never per message.
    members: Mutex<Members>,
    /// One push-out at a time: two would trim the same queues twice.
    pushing: Mutex<()>,
}

#[derive(Debug, Default)]
struct Members {
    list: Vec<Weak<Outbound>>,
    /// The list's length after it was last pruned of closed connections.
    pruned: usize,
}

impl Memory {
    /// Queue memory bounded to `limit` bytes.
    pub fn new(limit: usize) -> Memory {
        Memory {
            pool: Arc::new(Pool::new(limit)),
            ..Memory::default()
        }
    }

    /// Adds a connection's queue. Connections that closed are pruned as the list doubles, so
    /// it stays within twice the open ones.
    pub(super) fn join(&self, out: &Arc<Outbound>) {
        let mut m = self.members.lock();
        m.list.push(Arc::downgrade(out));
        if m.list.len() >= 2 * m.pruned.max(64) {
            m.list.retain(|w| w.strong_count() > 0);
            m.pruned = m.list.len();
        }
    }

    /// Frees the pool until it has `need` bytes free, by pushing out the newest deliveries of
    /// the queues other than `me` that hold the most, none trimmed below `need` (what `me`
    /// would hold). Returns false when that cannot free enough, or another thread is pushing
    /// out already; `me`'s delivery is then dropped.
    pub(super) fn make_room(&self, me: &Outbound, need: usize) -> bool {
        let Some(_one) = self.pushing.try_lock() else {
            return false;
        };
        let members: Vec<Arc<Outbound>> = {
            let mut m = self.members.lock();
            m.list.retain(|w| w.strong_count() > 0);
            m.pruned = m.list.len();
            m.list.iter().filter_map(Weak::upgrade).collect()
        };
        let mut held: Vec<(usize, Arc<Outbound>)> = members
            .into_iter()
            .filter(|o| !std::ptr::eq(o.as_ref(), me))
            .map(|o| (o.queued_bytes(), o))
            .collect();
        held.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        let short = need.saturating_sub(self.pool.free());
        let sizes: Vec<usize> = held.iter().map(|h| h.0).collect();
        if short > 0
            && let Some(level) = queue::trim_level(&sizes, need, short)
        {
            for (bytes, out) in &held {
                if *bytes <= level {
                    break;
                }
                out.push_out(level);
            }
        }
        let biggest = held
            .iter()
            .map(|(_, o)| o.queued_bytes())
            .chain([me.queued_bytes()])
            .max()
            .unwrap_or(0);
        self.pool.set_biggest(biggest);
        self.pool.free() >= need
    }
}

impl Outbound {
    /// Bytes of deliveries this client's queue holds.
    fn queued_bytes(&self) -> usize {
        self.state.lock().queue.bytes()
    }

    /// Pushes out this client's newest deliveries until it holds at most `to` bytes; they
    /// count as dropped (for `queue_memory_limit`), and the client is told as usual.
    ///
    /// Called by a publisher that holds the index lock, so it writes nothing itself: a notice
    /// queued here (when nothing was left to announce the losses later) is written by the
    /// client's writer thread, woken if it waits, or by whoever writes to it next.
    fn push_out(&self, to: usize) {
        let mut st = self.state.lock();
        if st.closed {
            return;
        }
        let (lost, notice) = st.queue.push_out(to);
        st.dropped_total += lost as u64;
        if let Some(n) = notice {
            self.noticed(n);
            if st.writer_started && !st.busy {
                self.work.notify_one();
            }
        }
        drop(st);
        if lost > 0 {
            metrics::add(&self.metrics.drops, lost as u64);
            metrics::add(&self.metrics.drops_memory_limit, lost as u64);
        }
    }
}
