//! A client's outbound queue as plain data: items, their budgets, drops and slow-consumer
//! notices, revocation filters. No I/O, no clock, no lock: [`Outbound`](super::Outbound) keeps
//! a [`Queue`] under its mutex and does the writing, so everything here is tested without a
//! socket.
//!
//! Items leave the queue in two steps. A thread that writes takes them out
//! ([`take`](Queue::take)), writes them without the lock, then hands back what was written
//! ([`release`](Queue::release)) and what was not ([`put_back`](Queue::put_back)). Until
//! released, taken items still count against the limits: they are the client's memory as much
//! as the queued ones.
//!
//! Invariants (checked against a model in the tests):
//! - Deliveries count against `max_msgs` messages and `max_bytes` bytes and never exceed them;
//!   the newest messages that do not fit are dropped and counted.
//! - The deliveries of all queues together count against their server's [`Pool`] and never
//!   exceed its limit (`queue_memory_limit`); a batch that several queues share counts once.
//!   A queue takes a delivery only while its own bytes and the delivery fit in what the pool
//!   has free, so the queues that hold the most are the first to drop, and one that is
//!   emptied as fast as it fills goes on receiving (see [`Queue::byte_room`]).
//! - Replies, notices and control frames are never dropped.
//! - A client that lost messages is told how many (`dropped N`) before its next delivery, or
//!   once a write leaves room for any delivery again ([`notice_if_room`](Queue::notice_if_room)),
//!   whichever comes first; at once when it lost them with nothing queued (a message larger
//!   than it can ever take), since no write would come to announce them.
//! - Items leave in the order they came, except that revocation and discarding remove
//!   deliveries; a partly written item is never removed or changed.

use super::{Limits, Transport};
use crate::message::{Batch, Encoded};
use crate::pool::Pool;
use crate::{line, wsframe, wsjson};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

/// The level to trim queues holding `held` bytes (largest first) down to, so that together
/// they give up at least `short` bytes, trimming as little as possible and none below
/// `floor`: the highest such level. `None` when trimming all of them to `floor` would not
/// free enough. (Longest-queue push-out, as in shared-memory switches.)
pub fn trim_level(held: &[usize], floor: usize, short: usize) -> Option<usize> {
    debug_assert!(held.windows(2).all(|w| w[0] >= w[1]), "largest first");
    let mut sum = 0usize;
    for (k, &b) in held.iter().enumerate() {
        if b <= floor {
            break;
        }
        sum += b;
        let n = k + 1;
        // Trimming the n largest to `level` frees sum - n * level.
        let Some(spare) = sum.checked_sub(short) else {
            continue;
        };
        let level = (spare / n).min(b);
        let next = held.get(n).copied().unwrap_or(0).max(floor);
        if level >= next {
            return Some(level);
        }
    }
    None
}

/// One queued thing to write. Deliveries are counted against the limits (messages, and bytes:
/// the memory the item keeps alive) and may be dropped when the queue is full; `Bytes` are
/// replies, notices and control frames, never dropped.
///
/// A delivery holds messages with the same tags (a run of a publisher's batch), and knows
/// those tags, so revocation can filter it without parsing what it will write.
pub(super) enum Item {
    /// Consecutive messages of a batch, in the connection's wire format, shared with the
    /// run's other subscribers.
    Run {
        batch: Arc<Batch>,
        /// Where the messages lie in the batch's encoding for this connection.
        span: Range<usize>,
        /// The first message's index in the batch (for its tags). 32 bits keep an item at
        /// six words, as many as before it knew its tags: a stalled client holds many.
        first: u32,
        msgs: usize,
        charge: usize,
    },
    /// Messages copied out of a batch, because they are too small a part of it to keep the
    /// whole batch alive for: their tags, then their wire bytes, in one allocation.
    Copy {
        buf: Box<[u8]>,
        tags_len: usize,
        msgs: usize,
    },
    Bytes(Box<[u8]>),
}

/// A batch's messages in the wire format of `transport`.
pub(super) fn encoded(batch: &Batch, transport: Transport) -> &Encoded {
    match transport {
        Transport::Tcp => batch.lines(),
        Transport::WebSocket => batch.frames(),
    }
}

impl Item {
    /// The bytes on the wire.
    pub(super) fn wire(&self, transport: Transport) -> &[u8] {
        match self {
            Item::Run { batch, span, .. } => encoded(batch, transport).bytes(span.clone()),
            Item::Copy { buf, tags_len, .. } => &buf[*tags_len..],
            Item::Bytes(bytes) => bytes,
        }
    }

    /// Messages and bytes counted against the queue's limits.
    pub(super) fn budget(&self) -> (usize, usize) {
        match self {
            Item::Run { msgs, charge, .. } => (*msgs, *charge),
            Item::Copy { buf, msgs, .. } => (*msgs, buf.len()),
            Item::Bytes(_) => (0, 0),
        }
    }

    /// The normalised tags of a delivery's messages; `None` for replies.
    fn tags(&self) -> Option<&[u8]> {
        match self {
            Item::Run { batch, first, .. } => Some(batch.tags(*first as usize)),
            Item::Copy { buf, tags_len, .. } => Some(&buf[..*tags_len]),
            Item::Bytes(_) => None,
        }
    }
}

/// What [`Queue::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Enqueued {
    /// Messages queued.
    pub queued: usize,
    /// Messages dropped because the queue was full, or its share of the pool was.
    pub dropped: usize,
    /// Of those, the messages its own limits would have taken: dropped for the pool.
    pub pooled_out: usize,
    /// A slow-consumer notice for this many losses was queued: before the delivery, for
    /// earlier losses, or alone, for losses with nothing queued.
    pub notice: Option<u64>,
    /// Nothing was done: the run does not fit the pool's free bytes, though the queue holds
    /// less than the biggest queue. The pool needs this many bytes free for it; after a
    /// push-out, offer the run again without one.
    pub short: Option<usize>,
}

/// What releasing items freed, for the caller to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(super) struct Released {
    /// Readers waiting for their replies to be read may go on.
    pub drained: bool,
}

/// What admitting messages `first..first + n` of `batch` charges a queue: the whole batch
/// when they are a good part of it (they share it), else their own bytes and their tags.
fn charge_of(batch: &Batch, enc: &Encoded, first: usize, n: usize) -> usize {
    let span = enc.span(first..first + n).len();
    if span * 4 >= batch.size() {
        batch.size()
    } else {
        batch.tags(first).len() + span
    }
}

/// A client's queue and its budgets.
pub(super) struct Queue {
    transport: Transport,
    limits: Limits,
    /// The bytes of every queue of the server.
    pool: Arc<Pool>,
    items: VecDeque<Item>,
    /// Bytes of `items[0]` already written.
    head_done: usize,
    /// Deliveries waiting, including those taken for writing and not yet released.
    msgs: usize,
    /// Their charge in bytes.
    bytes: usize,
    /// Reply bytes waiting, including those taken for writing.
    replies: usize,
    /// Deliveries dropped since the last notice.
    dropped: u64,
}

impl Queue {
    /// An empty queue for a connection speaking `transport`, counting in `pool`.
    pub(super) fn new(transport: Transport, limits: Limits, pool: Arc<Pool>) -> Queue {
        Queue {
            transport,
            limits,
            pool,
            items: VecDeque::new(),
            head_done: 0,
            msgs: 0,
            bytes: 0,
            replies: 0,
            dropped: 0,
        }
    }

    /// True when nothing is queued (items taken for writing do not count).
    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Deliveries waiting, taken ones included.
    pub(super) fn msgs(&self) -> usize {
        self.msgs
    }

    /// Reply bytes waiting, taken ones included.
    pub(super) fn replies(&self) -> usize {
        self.replies
    }

    /// Queues messages `run` of `batch` (all with the same tags), whose encoding for this
    /// connection is `enc`, dropping the newest of them that do not fit. A notice for earlier
    /// losses goes first.
    ///
    /// With `may_push_out`, a run that the pool's free bytes cannot take, offered to a queue
    /// that holds less than the biggest queue, is not dropped: nothing is done, and
    /// [`Enqueued::short`] says how many bytes the pool must have free for it.
    pub(super) fn enqueue(
        &mut self,
        batch: &Arc<Batch>,
        enc: &Encoded,
        run: Range<usize>,
        may_push_out: bool,
    ) -> Enqueued {
        debug_assert!(
            run.is_empty() || batch.tags(run.end - 1) == batch.tags(run.start),
            "a queue item holds messages with the same tags"
        );
        let wanted = run.len();
        let fits = wanted.min(self.limits.max_msgs.saturating_sub(self.msgs));
        let room = self.byte_room();
        let own = self.limits.max_bytes.saturating_sub(self.bytes);
        // The pool bounds this queue's room below its own limit: drops now are the pool's.
        let pool_bound = room < own;
        if pool_bound && may_push_out && fits > 0 {
            let need = charge_of(batch, enc, run.start, fits);
            if need > room && need <= own && self.bytes + need < self.pool.biggest() {
                return Enqueued {
                    queued: 0,
                    dropped: 0,
                    pooled_out: 0,
                    notice: None,
                    short: Some(self.bytes + need),
                };
            }
        }
        let item = self.admit(batch, enc, run.start, fits, room);
        let mut notice = None;
        let mut queued = 0;
        if let Some(item) = item {
            if self.dropped > 0 {
                notice = Some(self.push_notice());
            }
            let (msgs, bytes) = item.budget();
            queued = msgs;
            self.charge(msgs, bytes);
            self.items.push_back(item);
        }
        let dropped = wanted - queued;
        self.dropped += dropped as u64;
        // Losses with nothing queued: no write is coming that could announce them later.
        if queued == 0 && dropped > 0 && self.bytes == 0 {
            notice = Some(self.push_notice());
        }
        // Those that passed the message bound but found no bytes, when the pool set the bound.
        let pooled_out = if pool_bound { fits - queued } else { 0 };
        if pool_bound && queued > 0 && self.bytes > self.pool.biggest() {
            self.pool.set_biggest(self.bytes);
        }
        Enqueued {
            queued,
            dropped,
            pooled_out,
            notice,
            short: None,
        }
    }

    /// Bytes of deliveries waiting, taken ones included.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops the newest queued deliveries until the queue holds at most `to` bytes, or has
    /// nothing more it may drop (items being written and a partly written head stay):
    /// pushed out for a shorter queue, they count as lost like deliveries that found the
    /// queue full. Replies keep their places. Returns the messages dropped, and the notice
    /// queued at once when nothing is left waiting to announce them later.
    pub(super) fn push_out(&mut self, to: usize) -> (usize, Option<u64>) {
        let keep_head = usize::from(self.head_done > 0);
        let mut replies = Vec::new();
        let mut lost = 0;
        while self.bytes > to && self.items.len() > keep_head {
            let item = self.items.pop_back().expect("more items than the head");
            if let Item::Bytes(_) = item {
                replies.push(item);
                continue;
            }
            lost += item.budget().0;
            self.forget(&item);
        }
        self.items.extend(replies.into_iter().rev());
        self.dropped += lost as u64;
        let notice = (lost > 0 && self.bytes == 0).then(|| self.push_notice());
        (lost, notice)
    }

    /// The item for the first `fits` messages from `first`, or fewer when `room`, the byte
    /// budget, is short. A run that is a good part of its batch shares the batch and is
    /// charged all of it (that is what it keeps alive); a smaller one is copied and charged
    /// its own size. The pool is charged too (a shared batch only by its first queue); when
    /// another thread took the pool's last bytes meanwhile, nothing is admitted.
    fn admit(
        &self,
        batch: &Arc<Batch>,
        enc: &Encoded,
        first: usize,
        fits: usize,
        room: usize,
    ) -> Option<Item> {
        if fits == 0 {
            return None;
        }
        let span = enc.span(first..first + fits);
        let size = batch.size();
        if span.len() * 4 >= size && size <= room {
            if !batch.charge(&self.pool) {
                return None;
            }
            return Some(Item::Run {
                batch: Arc::clone(batch),
                span,
                first: u32::try_from(first).expect("a batch holds one read's messages"),
                msgs: fits,
                charge: size,
            });
        }
        // As many as fit in the bytes left, copied with their tags.
        let tags = batch.tags(first);
        let mut n = fits;
        while n > 0 && tags.len() + enc.span(first..first + n).len() > room {
            n -= 1;
        }
        let wire = enc.bytes(enc.span(first..first + n));
        if n == 0 || !self.pool.take(tags.len() + wire.len()) {
            return None;
        }
        let mut buf = Vec::with_capacity(tags.len() + wire.len());
        buf.extend_from_slice(tags);
        buf.extend_from_slice(wire);
        Some(Item::Copy {
            buf: buf.into_boxed_slice(),
            tags_len: tags.len(),
            msgs: n,
        })
    }

    /// Bytes of deliveries the queue can take now: up to its own limit, and up to what the
    /// pool has free, less what it holds already.
    ///
    /// The second bound is the dynamic threshold of shared-buffer switches (Choudhury and
    /// Hahne): a queue may grow only while it is shorter than the pool's free bytes. Queues
    /// that are not emptied (stalled clients) grow until each holds about as much as is left
    /// free, about `limit / (stalled + 1)`, and stop there, so the pool never fills up and a
    /// queue holding less than they do always finds room; the clients that hold the most are
    /// the first to lose deliveries, as the protocol says. One place decides it.
    fn byte_room(&self) -> usize {
        self.limits
            .max_bytes
            .min(self.pool.free())
            .saturating_sub(self.bytes)
    }

    /// Counts admitted deliveries against the budgets.
    fn charge(&mut self, msgs: usize, bytes: usize) {
        self.msgs += msgs;
        self.bytes += bytes;
    }

    /// Gives back the budget of deliveries written or removed.
    fn uncharge(&mut self, msgs: usize, bytes: usize) {
        self.msgs -= msgs;
        self.bytes -= bytes;
    }

    /// Queues a reply, a notice or a control frame: never dropped.
    pub(super) fn push_reply(&mut self, bytes: Vec<u8>) {
        self.replies += bytes.len();
        self.items.push_back(Item::Bytes(bytes.into_boxed_slice()));
    }

    /// Takes everything queued for writing, and how much of the first item was written
    /// already. `into` must be empty; swapping keeps the allocations of both sides.
    pub(super) fn take(&mut self, into: &mut VecDeque<Item>) -> usize {
        debug_assert!(into.is_empty());
        std::mem::swap(&mut self.items, into);
        std::mem::take(&mut self.head_done)
    }

    /// Puts back taken items that were not written, `offset` bytes into the first, in front
    /// of anything queued meanwhile. Leaves `rest` empty.
    pub(super) fn put_back(&mut self, rest: &mut VecDeque<Item>, offset: usize) {
        if rest.is_empty() {
            return;
        }
        debug_assert_eq!(self.head_done, 0, "nothing was written of the newer items");
        self.head_done = offset;
        rest.append(&mut self.items);
        std::mem::swap(&mut self.items, rest);
    }

    /// Gives back what a delivery leaving the queue was charged: its budget, and the pool
    /// bytes of a copy (a shared batch gives its own back when the last holder drops it).
    fn forget(&mut self, delivery: &Item) {
        let (msgs, bytes) = delivery.budget();
        self.uncharge(msgs, bytes);
        if let Item::Copy { .. } = delivery {
            self.pool.give(bytes);
        }
    }

    /// Releases the budget of taken items that were written or discarded.
    pub(super) fn release(&mut self, gone: impl Iterator<Item = Item>) -> Released {
        for item in gone {
            match item {
                Item::Bytes(b) => self.replies -= b.len(),
                delivery => self.forget(&delivery),
            }
        }
        Released {
            drained: self.replies <= self.limits.reply_backlog,
        }
    }

    /// Queues the slow-consumer notice once the queue can take any delivery again. Room for
    /// some bytes is not enough: the next delivery could still be dropped, and one run of
    /// losses would get two notices with nothing between them. Returns the losses announced.
    pub(super) fn notice_if_room(&mut self) -> Option<u64> {
        if self.dropped == 0 {
            return None;
        }
        let room = self.msgs < self.limits.max_msgs
            && (self.bytes == 0 || self.byte_room() >= self.limits.max_item_bytes);
        room.then(|| self.push_notice())
    }

    /// Queues the slow-consumer notice for the losses so far, and returns their number.
    fn push_notice(&mut self) -> u64 {
        let n = std::mem::take(&mut self.dropped);
        let bytes = match self.transport {
            Transport::Tcp => line::dropped_notice(n),
            Transport::WebSocket => wsframe::text(wsjson::dropped_notice(n).as_bytes()),
        };
        self.push_reply(bytes);
        n
    }

    /// Removes queued deliveries whose tags (comma-joined) `keep` refuses. Taken items are on
    /// their way already, and a partly written head stays whole.
    pub(super) fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let keep_head = usize::from(self.head_done > 0);
        let old = std::mem::take(&mut self.items);
        for (i, item) in old.into_iter().enumerate() {
            let kept = i < keep_head
                || item
                    .tags()
                    .is_none_or(|tags| keep(&String::from_utf8_lossy(tags)));
            if kept {
                self.items.push_back(item);
            } else {
                self.forget(&item);
            }
        }
    }

    /// Removes every queued delivery (replies stay, and so does a partly written head).
    pub(super) fn discard_deliveries(&mut self) -> Released {
        let keep_head = usize::from(self.head_done > 0);
        let old = std::mem::take(&mut self.items);
        let mut gone = Vec::new();
        for (i, item) in old.into_iter().enumerate() {
            if i < keep_head || matches!(item, Item::Bytes(_)) {
                self.items.push_back(item);
            } else {
                gone.push(item);
            }
        }
        self.release(gone.into_iter())
    }

    /// Removes everything queued, replies too (the connection is gone).
    pub(super) fn clear(&mut self) -> Released {
        let items = std::mem::take(&mut self.items);
        self.head_done = 0;
        self.release(items.into_iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{BatchBuilder, frame_tags};
    use proptest::prelude::*;
    use std::time::Duration;

    fn limits(max_msgs: usize, max_bytes: usize) -> Limits {
        Limits {
            max_msgs,
            max_bytes,
            write_timeout: Duration::from_secs(1),
            reply_backlog: 100,
            max_item_bytes: 64,
        }
    }

    fn unlimited() -> Arc<Pool> {
        Arc::new(Pool::unlimited())
    }

    /// A batch of messages given as (tags, data).
    fn batch(msgs: &[(&str, &str)]) -> Arc<Batch> {
        let mut b = BatchBuilder::default();
        for (tags, data) in msgs {
            b.push(tags.as_bytes(), data.as_bytes());
        }
        b.build()
    }

    fn enqueue(q: &mut Queue, batch: &Arc<Batch>, run: Range<usize>) -> Enqueued {
        let enc = encoded(batch, q.transport);
        q.enqueue(batch, enc, run, false)
    }

    /// What `Outbound` does for a queue short of room in the pool: trims the queues holding
    /// the most (`others`), largest first, to the highest level that frees enough, then
    /// offers the message again.
    fn enqueue_pushing_out_refs(
        q: &mut Queue,
        others: &mut [&mut Queue],
        b: &Arc<Batch>,
    ) -> Enqueued {
        let enc = encoded(b, q.transport);
        let r = q.enqueue(b, enc, 0..b.len(), true);
        let Some(need) = r.short else { return r };
        let pool = Arc::clone(&q.pool);
        let mut held: Vec<usize> = others.iter().map(|o| o.bytes()).collect();
        held.sort_unstable_by_key(|&b| std::cmp::Reverse(b));
        let short = need.saturating_sub(pool.free());
        if let Some(level) = trim_level(&held, need, short) {
            for o in others.iter_mut() {
                o.push_out(level);
            }
        }
        pool.set_biggest(
            others
                .iter()
                .map(|o| o.bytes())
                .max()
                .unwrap_or(0)
                .max(q.bytes()),
        );
        q.enqueue(b, enc, 0..b.len(), false)
    }

    /// The losses announced by the notices `q` holds.
    fn announced(q: &Queue) -> u64 {
        q.items
            .iter()
            .filter_map(|it| match it {
                Item::Bytes(b) => std::str::from_utf8(b)
                    .ok()?
                    .strip_prefix("error slow consumer: dropped ")?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok(),
                _ => None,
            })
            .sum()
    }

    /// Takes everything and writes it all: the bytes on the wire.
    fn drain_all(q: &mut Queue) -> Vec<u8> {
        let mut items = VecDeque::new();
        let offset = q.take(&mut items);
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            out.extend_from_slice(&item.wire(q.transport)[if i == 0 { offset } else { 0 }..]);
        }
        let _ = q.release(items.into_iter());
        out
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_full_queue_drops_the_newest_and_says_so_before_the_next_delivery() {
        let mut q = Queue::new(Transport::Tcp, limits(2, 1000), unlimited());
        let b = batch(&[("a", "1"), ("a", "2"), ("a", "3")]);
        let r = enqueue(&mut q, &b, 0..3);
        assert_eq!((r.queued, r.dropped, r.notice), (2, 1, None));
        let r = enqueue(&mut q, &batch(&[("a", "4")]), 0..1);
        assert_eq!((r.queued, r.dropped, r.notice), (0, 1, None));
        assert_eq!(q.msgs(), 2);
        assert_eq!(text(&drain_all(&mut q)), "publish a 1\npublish a 2\n");
        let r = enqueue(&mut q, &batch(&[("a", "5")]), 0..1);
        assert_eq!((r.queued, r.dropped, r.notice), (1, 0, Some(2)));
        assert_eq!(
            text(&drain_all(&mut q)),
            "error slow consumer: dropped 2 messages\npublish a 5\n"
        );
        assert_eq!((q.msgs, q.bytes, q.replies, q.dropped), (0, 0, 0, 0));
    }

    #[test]
    fn the_notice_comes_once_any_delivery_fits_again() {
        // max_item_bytes 64: with 100 bytes queued out of 150, a delivery could still be
        // dropped, so the notice waits.
        let mut q = Queue::new(Transport::Tcp, limits(10, 150), unlimited());
        let big = "x".repeat(100 - "publish a \n".len());
        enqueue(&mut q, &batch(&[("a", &big)]), 0..1);
        let r = enqueue(&mut q, &batch(&[("a", &big)]), 0..1);
        assert_eq!((r.queued, r.dropped), (0, 1));
        assert_eq!(q.notice_if_room(), None);
        let mut taken = VecDeque::new();
        q.take(&mut taken);
        let _ = q.release(taken.into_iter());
        assert_eq!(q.notice_if_room(), Some(1));
        assert_eq!(q.notice_if_room(), None, "one notice per run of losses");
        assert_eq!(
            text(&drain_all(&mut q)),
            "error slow consumer: dropped 1 messages\n"
        );
    }

    #[test]
    fn a_good_part_of_a_batch_is_shared_and_charged_the_whole_batch() {
        let mut q = Queue::new(Transport::Tcp, limits(100, 1000), unlimited());
        let b = batch(&[("a", "1"), ("a", "2"), ("b", "3"), ("b", "4")]);
        enqueue(&mut q, &b, 0..2);
        assert!(matches!(q.items[0], Item::Run { .. }));
        assert_eq!((q.msgs, q.bytes), (2, b.size()));
        assert_eq!(Arc::strong_count(&b), 2, "shared, not copied");
    }

    #[test]
    fn a_small_part_of_a_big_batch_is_copied_and_charged_its_own_size_and_tags() {
        let mut q = Queue::new(Transport::Tcp, limits(100, 1000), unlimited());
        let others: Vec<(&str, &str)> = vec![("b", "0123456789"); 8];
        let b = batch(&[&[("a", "1")], &others[..]].concat());
        enqueue(&mut q, &b, 0..1);
        assert!(matches!(q.items[0], Item::Copy { .. }));
        assert_eq!((q.msgs, q.bytes), (1, "a".len() + "publish a 1\n".len()));
        assert_eq!(Arc::strong_count(&b), 1, "the batch is not kept alive");
        assert_eq!(q.items[0].tags(), Some(&b"a"[..]));
        assert_eq!(text(&drain_all(&mut q)), "publish a 1\n");
    }

    #[test]
    fn a_short_byte_budget_takes_as_many_messages_as_fit() {
        // 12 bytes a line and the tag once: 30 bytes hold two of three, so they are copied.
        let mut q = Queue::new(Transport::Tcp, limits(100, 30), unlimited());
        let r = enqueue(&mut q, &batch(&[("a", "1"), ("a", "2"), ("a", "3")]), 0..3);
        assert_eq!((r.queued, r.dropped), (2, 1));
        assert_eq!((q.msgs, q.bytes), (2, 1 + 24));
        // Not even one message fits a budget of 11 bytes.
        let mut q = Queue::new(Transport::Tcp, limits(100, 11), unlimited());
        let r = enqueue(&mut q, &batch(&[("a", "1")]), 0..1);
        assert_eq!((r.queued, r.dropped), (0, 1));
        assert_eq!(q.msgs(), 0);
    }

    #[test]
    fn a_message_larger_than_the_queue_is_announced_at_once() {
        // client_queue_bytes 1024 and a 2,000-byte message: no write is coming that could
        // announce the loss later, so the notice is queued with the drop.
        let mut q = Queue::new(Transport::Tcp, limits(100, 1024), unlimited());
        let big = "x".repeat(2000);
        let r = enqueue(&mut q, &batch(&[("a", &big)]), 0..1);
        assert_eq!((r.queued, r.dropped, r.notice), (0, 1, Some(1)));
        let r = enqueue(&mut q, &batch(&[("a", "small")]), 0..1);
        assert_eq!((r.queued, r.dropped, r.notice), (1, 0, None));
        assert_eq!(
            text(&drain_all(&mut q)),
            "error slow consumer: dropped 1 messages\npublish a small\n"
        );
        // With something queued, the notice waits for the write that makes room.
        enqueue(&mut q, &batch(&[("a", "small")]), 0..1);
        let r = enqueue(&mut q, &batch(&[("a", &big)]), 0..1);
        assert_eq!((r.queued, r.dropped, r.notice), (0, 1, None));
    }

    /// `n` messages of `len` bytes of data for tag `tag`, one batch each.
    fn batches(tag: &str, n: usize, len: usize) -> Vec<Arc<Batch>> {
        (0..n).map(|i| batch(&[(tag, &data(i, len))])).collect()
    }

    #[test]
    fn trimming_takes_from_the_largest_queues_first() {
        // 10 and 6 trimmed to 5 free 6 >= 5; 2 is left alone.
        assert_eq!(trim_level(&[10, 6, 2], 1, 5), Some(5));
        assert_eq!(trim_level(&[10, 6, 2], 1, 4), Some(6));
        // Never below the floor: two queues of 4 above a floor of 3 free at most 2.
        assert_eq!(trim_level(&[4, 4], 3, 5), None);
        assert_eq!(trim_level(&[8], 0, 8), Some(0));
        assert_eq!(trim_level(&[], 0, 1), None);
    }

    proptest! {
        /// The level frees enough, never goes below the floor, and is the highest that does.
        #[test]
        fn the_trim_level_is_the_highest_that_frees_enough(
            mut held in prop::collection::vec(0..1000usize, 0..20),
            floor in 0..500usize,
            short in 1..3000usize,
        ) {
            held.sort_unstable_by_key(|&b| std::cmp::Reverse(b));
            let freed = |level: usize| held.iter().map(|&b| b.saturating_sub(level)).sum::<usize>();
            match trim_level(&held, floor, short) {
                Some(level) => {
                    prop_assert!(level >= floor);
                    prop_assert!(freed(level) >= short);
                    prop_assert!(freed(level + 1) < short);
                }
                None => prop_assert!(freed(floor) < short),
            }
        }
    }

    #[test]
    fn the_pool_counts_a_shared_batch_once_until_the_last_holder_lets_go() {
        let pool = Arc::new(Pool::new(10_000));
        let mut a = Queue::new(Transport::Tcp, limits(100, 10_000), Arc::clone(&pool));
        let mut b = Queue::new(Transport::Tcp, limits(100, 10_000), Arc::clone(&pool));
        let shared = batch(&[("t", "1"), ("t", "2")]);
        enqueue(&mut a, &shared, 0..2);
        enqueue(&mut b, &shared, 0..2);
        let size = shared.size();
        drop(shared);
        assert_eq!((a.bytes, b.bytes, pool.used()), (size, size, size));
        drain_all(&mut a);
        assert_eq!(pool.used(), size, "b still holds it");
        drain_all(&mut b);
        assert_eq!(pool.used(), 0);
        // A copy counts its own bytes, tags included, and gives them back when written.
        let others: Vec<(&str, &str)> = vec![("x", "0123456789"); 8];
        enqueue(&mut a, &batch(&[&[("t", "1")], &others[..]].concat()), 0..1);
        assert_eq!(pool.used(), "t".len() + "publish t 1\n".len());
        drain_all(&mut a);
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn websocket_frames_encoded_later_are_counted_too() {
        let pool = Arc::new(Pool::new(100_000));
        let mut tcp = Queue::new(Transport::Tcp, limits(100, 100_000), Arc::clone(&pool));
        let mut ws = Queue::new(
            Transport::WebSocket,
            limits(100, 100_000),
            Arc::clone(&pool),
        );
        let b = batch(&[("t", "1")]);
        enqueue(&mut tcp, &b, 0..1);
        let lines = pool.used();
        enqueue(&mut ws, &b, 0..1);
        assert!(pool.used() > lines);
        assert_eq!(pool.used(), b.size());
        drop(b);
        drain_all(&mut tcp);
        drain_all(&mut ws);
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn a_queue_grows_only_while_it_is_shorter_than_what_the_pool_has_free() {
        // Each message is 1,000 bytes of line; the pool holds 10,000.
        let pool = Arc::new(Pool::new(10_000));
        let mut q = Queue::new(Transport::Tcp, limits(1000, 1 << 20), Arc::clone(&pool));
        let len = 1000 - "publish t \n".len();
        let mut queued = 0;
        for b in batches("t", 10, len) {
            let r = enqueue(&mut q, &b, 0..1);
            queued += r.queued;
            if r.dropped > 0 {
                assert_eq!(r.pooled_out, 1, "dropped for the pool, not its own limit");
            }
        }
        // Alone, a queue takes at most half: what it holds may not exceed what is free.
        assert_eq!((queued, pool.used()), (5, 5000));
        assert_eq!(q.msgs(), 5);
    }

    #[test]
    fn stalled_queues_leave_room_for_one_that_keeps_up() {
        // 50 stalled clients and one that reads everything at once, 1,000-byte messages, a
        // pool of 128,000 bytes: the issue's scenario at a thousandth of the size.
        let pool = Arc::new(Pool::new(128_000));
        let l = limits(1 << 20, 64_000);
        let mut stalled: Vec<Queue> = (0..50)
            .map(|_| Queue::new(Transport::Tcp, l, Arc::clone(&pool)))
            .collect();
        let mut healthy = Queue::new(Transport::Tcp, l, Arc::clone(&pool));
        let len = 1000 - "publish t \n".len();
        let mut lost = vec![0; 50];
        for round in 0..80 {
            for (i, q) in stalled.iter_mut().enumerate() {
                let r = enqueue(q, &batch(&[("t", &data(round, len))]), 0..1);
                lost[i] += r.dropped;
            }
            let r = enqueue(&mut healthy, &batch(&[("h", &data(round, len))]), 0..1);
            assert_eq!((r.queued, r.dropped), (1, 0), "round {round}");
            drain_all(&mut healthy);
            assert!(pool.used() <= 128_000);
        }
        // Each stalled queue holds a share close to what is left free, and lost the rest.
        for (q, lost) in stalled.iter().zip(&lost) {
            assert!((2..=3).contains(&q.msgs()), "{}", q.msgs());
            assert_eq!(q.msgs() + lost, 80);
        }
        assert!(
            pool.free() >= 1000,
            "room for the next message: {}",
            pool.free()
        );
    }

    #[test]
    fn an_item_is_six_words() {
        // A stalled client may hold hundreds of thousands of them.
        assert!(std::mem::size_of::<Item>() <= 6 * std::mem::size_of::<usize>());
    }

    #[test]
    fn replies_are_never_dropped() {
        let mut q = Queue::new(Transport::Tcp, limits(1, 20), unlimited());
        enqueue(&mut q, &batch(&[("a", "1")]), 0..1);
        q.push_reply(b"pong\n".to_vec());
        q.push_reply(vec![b'x'; 500]);
        assert_eq!((q.msgs, q.replies), (1, 505));
        assert_eq!(drain_all(&mut q).len(), 12 + 505);
    }

    #[test]
    fn what_was_not_written_goes_back_in_front() {
        let mut q = Queue::new(Transport::Tcp, limits(10, 1000), unlimited());
        q.push_reply(b"one\n".to_vec());
        q.push_reply(b"two\n".to_vec());
        let mut taken = VecDeque::new();
        assert_eq!(q.take(&mut taken), 0);
        assert!(q.is_empty());
        // Meanwhile, more is queued; the writer wrote "one\n" and "t".
        q.push_reply(b"three\n".to_vec());
        let _ = q.release(taken.drain(..1));
        q.put_back(&mut taken, 1);
        assert!(taken.is_empty());
        assert_eq!(q.replies(), 4 + 6);
        assert_eq!(text(&drain_all(&mut q)), "wo\nthree\n");
    }

    /// The tags of each delivery frame of `wire`, and the payload of each other frame.
    fn frames(mut wire: &[u8]) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some((payload, rest)) = wsframe::split_text(wire) {
            let frame = &wire[..wire.len() - rest.len()];
            seen.push(frame_tags(frame).unwrap_or_else(|| text(payload).to_string()));
            wire = rest;
        }
        assert!(wire.is_empty(), "whole frames");
        seen
    }

    /// Four WebSocket deliveries (tags a; b,c; a; b,c, the last one copied) and a reply.
    fn revocable() -> (Queue, Arc<Batch>) {
        let mut q = Queue::new(Transport::WebSocket, limits(100, 10_000), unlimited());
        let b = batch(&[("a", "1"), ("b,c", "2"), ("a", "3")]);
        for i in 0..3 {
            enqueue(&mut q, &b, i..i + 1);
        }
        let others: Vec<(&str, &str)> = vec![("x", "0123456789"); 8];
        enqueue(
            &mut q,
            &batch(&[&[("b,c", "4")], &others[..]].concat()),
            0..1,
        );
        assert!(matches!(q.items[3], Item::Copy { .. }));
        q.push_reply(wsframe::text(b"reply"));
        (q, b)
    }

    #[test]
    fn revocation_removes_deliveries_by_their_tags() {
        let (mut q, _) = revocable();
        q.retain(|tags| !tags.split(',').any(|t| t == "a"));
        assert_eq!(q.msgs, 2);
        assert_eq!(frames(&drain_all(&mut q)), ["b,c", "b,c", "reply"]);
        assert_eq!((q.msgs, q.bytes, q.replies), (0, 0, 0));
    }

    #[test]
    fn revocation_keeps_a_partly_written_head() {
        let (mut q, b) = revocable();
        let mut taken = VecDeque::new();
        q.take(&mut taken);
        q.put_back(&mut taken, 3);
        q.retain(|tags| !tags.split(',').any(|t| t == "a" || t == "c"));
        let enc = encoded(&b, Transport::WebSocket);
        let head = enc.bytes(enc.span(0..1));
        let wire = drain_all(&mut q);
        assert_eq!(wire[..head.len() - 3], head[3..], "the rest of the head");
        assert_eq!(frames(&wire[head.len() - 3..]), ["reply"]);
        assert_eq!((q.msgs, q.bytes, q.replies), (0, 0, 0));
    }

    #[test]
    fn discarding_keeps_replies_and_a_partly_written_head() {
        let mut q = Queue::new(Transport::Tcp, limits(100, 10_000), unlimited());
        let b = batch(&[("a", "1"), ("a", "2")]);
        enqueue(&mut q, &b, 0..1);
        q.push_reply(b"pong\n".to_vec());
        enqueue(&mut q, &b, 1..2);
        let mut taken = VecDeque::new();
        q.take(&mut taken);
        q.put_back(&mut taken, 4);
        let released = q.discard_deliveries();
        assert!(released.drained);
        assert_eq!(q.items.len(), 2);
        assert_eq!(text(&drain_all(&mut q)), "ish a 1\npong\n");
        assert_eq!((q.msgs, q.bytes, q.replies), (0, 0, 0));
    }

    #[test]
    fn clearing_releases_everything_queued_but_not_what_is_being_written() {
        let mut q = Queue::new(Transport::Tcp, limits(100, 10_000), unlimited());
        let b = batch(&[("a", "1"), ("a", "2")]);
        enqueue(&mut q, &b, 0..1);
        let mut taken = VecDeque::new();
        q.take(&mut taken);
        enqueue(&mut q, &b, 1..2);
        q.push_reply(b"pong\n".to_vec());
        let _ = q.clear();
        assert!(q.is_empty());
        assert_eq!(
            (q.msgs, q.replies),
            (1, 0),
            "the taken item is still counted"
        );
        let _ = q.release(taken.into_iter());
        assert_eq!((q.msgs, q.bytes), (0, 0));
    }

    /// A message's data: its id, padded to `len` bytes, so reordering or duplication shows.
    fn data(id: usize, len: usize) -> String {
        let mut s = format!("m{id}.");
        while s.len() < len {
            s.push('x');
        }
        s
    }

    /// Tag sets of the generated messages; revocation removes those containing a tag.
    const TAGS: [&str; 4] = ["a", "a,b", "b", "b,c"];
    const REVOKED: [&str; 3] = ["a", "b", "c"];

    /// The queues of one server in the model test, all counting in one pool.
    const QUEUES: usize = 3;

    #[derive(Debug, Clone)]
    enum Op {
        /// A batch of messages (tags, data length); the run of `run` messages with the
        /// same tags after `before` is offered to the queues picked by `to` (a bit each), in
        /// order: they share it.
        Publish {
            before: Vec<(usize, usize)>,
            tags: usize,
            run: Vec<usize>,
            after: Vec<(usize, usize)>,
            to: u8,
        },
        Reply(usize, usize),
        /// A thread takes everything a queue holds, if nothing is taken from it already.
        Take(usize),
        /// It writes this many bytes of what it took, and releases the items written whole.
        Write(usize, usize),
        /// It puts back what it did not write.
        PutBack(usize),
        NoticeIfRoom(usize),
        Retain(usize, usize),
        Discard(usize),
        Clear(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let msg = (0..TAGS.len(), 0..40usize);
        let q = 0..QUEUES;
        prop_oneof![
            6 => (
                prop::collection::vec(msg.clone(), 0..4),
                0..TAGS.len(),
                prop::collection::vec(0..40usize, 1..6),
                prop::collection::vec(msg, 0..4),
                1..(1u8 << QUEUES),
            )
                .prop_map(|(before, tags, run, after, to)| Op::Publish { before, tags, run, after, to }),
            1 => (q.clone(), 1..30usize).prop_map(|(q, n)| Op::Reply(q, n)),
            2 => q.clone().prop_map(Op::Take),
            3 => (q.clone(), 0..120usize).prop_map(|(q, n)| Op::Write(q, n)),
            2 => q.clone().prop_map(Op::PutBack),
            2 => q.clone().prop_map(Op::NoticeIfRoom),
            1 => (q.clone(), 0..REVOKED.len()).prop_map(|(q, t)| Op::Retain(q, t)),
            1 => q.clone().prop_map(Op::Discard),
            1 => q.prop_map(Op::Clear),
        ]
    }

    /// The model's item: what goes on the wire, and what it is charged.
    #[derive(Debug, Clone)]
    enum Model {
        Delivery {
            tags: String,
            wire: Vec<u8>,
            msgs: usize,
            charge: usize,
            /// The batch it shares (its id and size), counted once in the pool; `None` for a
            /// copy, counted in the pool by its charge.
            shared: Option<(usize, usize)>,
        },
        Reply(Vec<u8>),
    }

    impl Model {
        fn wire(&self) -> &[u8] {
            match self {
                Model::Delivery { wire, .. } | Model::Reply(wire) => wire,
            }
        }
    }

    /// A queue as a list, with the rules of the protocol written out message by message.
    struct Spec {
        transport: Transport,
        limits: Limits,
        queued: VecDeque<Model>,
        head_done: usize,
        taken: Option<(VecDeque<Model>, usize)>,
        dropped: u64,
        out: Vec<u8>,
    }

    /// The pool's bytes: every batch held by any queue once, and every copy.
    fn pool_used(specs: &[Spec]) -> usize {
        let mut batches = std::collections::BTreeMap::new();
        let mut copies = 0;
        for it in specs.iter().flat_map(Spec::all) {
            match it {
                Model::Delivery {
                    shared: Some((id, size)),
                    ..
                } => {
                    batches.insert(*id, *size);
                }
                Model::Delivery { charge, .. } => copies += charge,
                Model::Reply(_) => {}
            }
        }
        copies + batches.values().sum::<usize>()
    }

    impl Spec {
        fn all(&self) -> impl Iterator<Item = &Model> {
            self.queued
                .iter()
                .chain(self.taken.iter().flat_map(|(t, _)| t.iter()))
        }

        /// Deliveries, their charge, and reply bytes waiting.
        fn counts(&self) -> (usize, usize, usize) {
            self.all().fold((0, 0, 0), |(m, b, r), it| match it {
                Model::Delivery { msgs, charge, .. } => (m + msgs, b + charge, r),
                Model::Reply(w) => (m, b, r + w.len()),
            })
        }

        fn notice(&mut self) -> u64 {
            let n = std::mem::take(&mut self.dropped);
            let bytes = match self.transport {
                Transport::Tcp => format!("error slow consumer: dropped {n} messages\n").into(),
                Transport::WebSocket => wsframe::text(
                    format!(
                        r#"{{"success":false,"error":"slow consumer: dropped {n} messages","dropped":{n}}}"#
                    )
                    .as_bytes(),
                ),
            };
            self.queued.push_back(Model::Reply(bytes));
            n
        }

        /// Bytes this queue may still take when the pool has `free` bytes free.
        fn room(&self, free: usize) -> usize {
            let (_, bytes, _) = self.counts();
            self.limits.max_bytes.min(free).saturating_sub(bytes)
        }

        /// Offers `run` of `batch` (id `id`) when the pool has `free` bytes: as many messages
        /// as the limits allow, the newest dropped; a run that is at least a quarter of its
        /// batch and whose batch fits the room is charged the whole batch, otherwise each
        /// message its own size and the run its tags once. The room is what is left below the
        /// queue's own limit and below the pool's free bytes.
        fn enqueue(
            &mut self,
            batch: &Batch,
            id: usize,
            run: Range<usize>,
            free: usize,
        ) -> Enqueued {
            let enc = encoded(batch, self.transport);
            let sizes: Vec<usize> = run.clone().map(|i| enc.span(i..i + 1).len()).collect();
            let tags = text(batch.tags(run.start)).to_string();
            let (msgs, bytes, _) = self.counts();
            let fits = run.len().min(self.limits.max_msgs - msgs);
            let room = self.room(free);
            let own = |n: usize| sizes[..n].iter().sum::<usize>();
            let (n, charge, shared) =
                if fits > 0 && own(fits) * 4 >= batch.size() && batch.size() <= room {
                    (fits, batch.size(), Some((id, batch.size())))
                } else {
                    let n = (0..=fits)
                        .rev()
                        .find(|&n| n == 0 || tags.len() + own(n) <= room)
                        .unwrap();
                    (n, tags.len() + own(n), None)
                };
            let mut notice = None;
            if n > 0 {
                if self.dropped > 0 {
                    notice = Some(self.notice());
                }
                let mut wire = Vec::new();
                for i in run.start..run.start + n {
                    wire.extend_from_slice(enc.bytes(enc.span(i..i + 1)));
                }
                self.queued.push_back(Model::Delivery {
                    tags,
                    wire,
                    msgs: n,
                    charge,
                    shared,
                });
            }
            let dropped = run.len() - n;
            self.dropped += dropped as u64;
            // Losses with nothing queued are announced at once.
            if n == 0 && dropped > 0 && bytes == 0 {
                notice = Some(self.notice());
            }
            let pool_bound = room < self.limits.max_bytes.saturating_sub(bytes);
            Enqueued {
                queued: n,
                dropped,
                pooled_out: if pool_bound { fits - n } else { 0 },
                notice,
                short: None,
            }
        }

        fn released(&self) -> Released {
            let (_, _, replies) = self.counts();
            Released {
                drained: replies <= self.limits.reply_backlog,
            }
        }

        /// Removes queued deliveries that `gone` picks; never a partly written head.
        fn remove(&mut self, gone: impl Fn(&str) -> bool) {
            let keep_head = usize::from(self.head_done > 0);
            let mut i = 0;
            self.queued.retain(|it| {
                i += 1;
                i <= keep_head || !matches!(it, Model::Delivery { tags, .. } if gone(tags))
            });
        }

        fn put_back(&mut self) {
            let (mut model, moffset) = self.taken.take().unwrap();
            if !model.is_empty() {
                self.head_done = moffset;
                model.append(&mut self.queued);
                self.queued = model;
            }
        }
    }

    /// Writes up to `n` bytes of `items` from `offset`: items written whole, the new offset.
    fn write<T>(
        items: &VecDeque<T>,
        wire: impl Fn(&T) -> &[u8],
        mut offset: usize,
        mut n: usize,
        out: &mut Vec<u8>,
    ) -> (usize, usize) {
        let mut done = 0;
        while done < items.len() && n > 0 {
            let w = &wire(&items[done])[offset..];
            let k = w.len().min(n);
            out.extend_from_slice(&w[..k]);
            n -= k;
            if k == w.len() {
                done += 1;
                offset = 0;
            } else {
                offset += k;
            }
        }
        (done, offset)
    }

    fn check(q: &Queue, spec: &Spec, out: &[u8]) -> Result<(), TestCaseError> {
        let (msgs, bytes, replies) = spec.counts();
        prop_assert_eq!((q.msgs, q.bytes, q.replies), (msgs, bytes, replies));
        prop_assert!(q.msgs <= q.limits.max_msgs && q.bytes <= q.limits.max_bytes);
        prop_assert_eq!(q.dropped, spec.dropped);
        prop_assert_eq!(
            (q.items.len(), q.head_done),
            (spec.queued.len(), spec.head_done)
        );
        prop_assert!(
            out == spec.out,
            "wire {:?}\nspec {:?}",
            text(out),
            text(&spec.out)
        );
        Ok(())
    }

    /// A queue under test with what a writer thread took from it and what reached its wire.
    struct Under {
        q: Queue,
        taken: Option<(VecDeque<Item>, usize)>,
        out: Vec<u8>,
    }

    proptest! {
        /// Stalled queues (never written) and one that keeps up (written after each
        /// delivery), offered messages of one size in any order, with pushing out: as long
        /// as the pool holds a message per queue, the one that keeps up loses nothing, and
        /// the pool never goes over its limit.
        #[test]
        fn a_queue_that_keeps_up_never_loses_to_stalled_ones(
            stalled in 1..24usize,
            len in 3..200usize,
            spare in 0..4usize,
            order in prop::collection::vec(0..1000usize, 1..500),
        ) {
            let size = "publish t \n".len() + len;
            let limit = (stalled + 1 + spare) * size;
            let pool = Arc::new(Pool::new(limit));
            let l = limits(1 << 20, 1 << 30);
            let mut queues: Vec<Queue> = (0..=stalled)
                .map(|_| Queue::new(Transport::Tcp, l, Arc::clone(&pool)))
                .collect();
            let mut offered = vec![0; stalled + 1];
            for (i, pick) in order.into_iter().enumerate() {
                let k = pick % (stalled + 1);
                // Every message is `size` bytes on the wire: its number, padded.
                let b = batch(&[("t", &format!("{i:0>len$}"))]);
                let (left, right) = queues.split_at_mut(k);
                let (q, rest) = right.split_first_mut().unwrap();
                let mut others: Vec<&mut Queue> = left.iter_mut().chain(rest.iter_mut()).collect();
                let r = enqueue_pushing_out_refs(q, &mut others, &b);
                offered[k] += 1;
                if k == stalled {
                    prop_assert_eq!((r.queued, r.dropped), (1, 0), "message {}", i);
                    drain_all(&mut queues[k]);
                }
                prop_assert!(pool.used() <= limit);
            }
            // Every message offered to a stalled queue is in it, or lost and announced (or
            // waiting to be), whether it found the queue full or was pushed out.
            for (q, offered) in queues.iter().zip(&offered).take(stalled) {
                prop_assert_eq!(q.msgs() as u64 + q.dropped + announced(q), *offered);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The queues of a server against the list model: the same bytes reach each wire in
        /// the same order, the same deliveries are dropped and announced, the budgets agree
        /// and never exceed the limits, and the pool holds every shared batch once and every
        /// copy, never more than its limit, whatever the interleaving of publishers offering
        /// a run to several queues, replies, writers taking, partly writing and putting back,
        /// revocations and discards.
        #[test]
        fn queues_match_the_model(
            ws in any::<bool>(),
            max_msgs in 1..12usize,
            max_bytes in 1..600usize,
            max_item_bytes in 1..300usize,
            reply_backlog in 0..100usize,
            pool_limit in prop_oneof![Just(usize::MAX), 1..1500usize],
            ops in prop::collection::vec(op(), 1..60),
        ) {
            let transport = if ws { Transport::WebSocket } else { Transport::Tcp };
            let limits = Limits { max_item_bytes, reply_backlog, ..limits(max_msgs, max_bytes) };
            let pool = Arc::new(Pool::new(pool_limit));
            let mut under: Vec<Under> = (0..QUEUES)
                .map(|_| Under {
                    q: Queue::new(transport, limits, Arc::clone(&pool)),
                    taken: None,
                    out: Vec::new(),
                })
                .collect();
            let mut specs: Vec<Spec> = (0..QUEUES)
                .map(|_| Spec {
                    transport,
                    limits,
                    queued: VecDeque::new(),
                    head_done: 0,
                    taken: None,
                    dropped: 0,
                    out: Vec::new(),
                })
                .collect();
            let (mut offered, mut queued, mut dropped, mut announced) = (0, 0, 0, 0);
            let mut id = 0;
            for (batch_id, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Publish { before, tags, run, after, to } => {
                        let mut msgs: Vec<(&str, String)> = Vec::new();
                        let mut push = |tags: usize, len: usize| {
                            id += 1;
                            msgs.push((TAGS[tags], data(id, len)));
                        };
                        before.iter().for_each(|&(t, len)| push(t, len));
                        run.iter().for_each(|&len| push(tags, len));
                        after.iter().for_each(|&(t, len)| push(t, len));
                        let pairs: Vec<(&str, &str)> =
                            msgs.iter().map(|(t, d)| (*t, d.as_str())).collect();
                        let b = batch(&pairs);
                        let range = before.len()..before.len() + run.len();
                        for k in (0..QUEUES).filter(|k| to & (1 << k) != 0) {
                            encoded(&b, transport);
                            let free = pool_limit.saturating_sub(pool_used(&specs));
                            let want = specs[k].enqueue(&b, batch_id, range.clone(), free);
                            let got = enqueue(&mut under[k].q, &b, range.clone());
                            prop_assert_eq!(got, want);
                            offered += run.len();
                            queued += got.queued;
                            dropped += got.dropped;
                            announced += got.notice.unwrap_or(0);
                        }
                    }
                    Op::Reply(k, len) => {
                        let bytes = data(0, len).into_bytes();
                        under[k].q.push_reply(bytes.clone());
                        specs[k].queued.push_back(Model::Reply(bytes));
                    }
                    Op::Take(k) => {
                        let u = &mut under[k];
                        if u.taken.is_none() {
                            let mut items = VecDeque::new();
                            let offset = u.q.take(&mut items);
                            u.taken = Some((items, offset));
                            let s = &mut specs[k];
                            let all = std::mem::take(&mut s.queued);
                            s.taken = Some((all, std::mem::take(&mut s.head_done)));
                        }
                    }
                    Op::Write(k, n) => {
                        let u = &mut under[k];
                        let s = &mut specs[k];
                        if let (Some((items, offset)), Some((model, moffset))) =
                            (&mut u.taken, &mut s.taken)
                        {
                            let (done, rest) =
                                write(items, |it| it.wire(transport), *offset, n, &mut u.out);
                            *offset = rest;
                            let (mdone, mrest) = write(model, Model::wire, *moffset, n, &mut s.out);
                            *moffset = mrest;
                            prop_assert_eq!((done, rest), (mdone, mrest));
                            let got = u.q.release(items.drain(..done));
                            model.drain(..done);
                            prop_assert_eq!(got, s.released());
                        }
                    }
                    Op::PutBack(k) => {
                        if let Some((mut items, offset)) = under[k].taken.take() {
                            under[k].q.put_back(&mut items, offset);
                            specs[k].put_back();
                        }
                    }
                    Op::NoticeIfRoom(k) => {
                        let free = pool_limit.saturating_sub(pool_used(&specs));
                        let s = &mut specs[k];
                        let (msgs, bytes, _) = s.counts();
                        let room = msgs < max_msgs
                            && (bytes == 0 || s.room(free) >= max_item_bytes);
                        let want = (s.dropped > 0 && room).then(|| s.notice());
                        let got = under[k].q.notice_if_room();
                        prop_assert_eq!(got, want);
                        announced += got.unwrap_or(0);
                    }
                    Op::Retain(k, tag) => {
                        let revoked = REVOKED[tag];
                        let keep = |tags: &str| !tags.split(',').any(|t| t == revoked);
                        under[k].q.retain(keep);
                        specs[k].remove(|tags| !keep(tags));
                    }
                    Op::Discard(k) => {
                        let got = under[k].q.discard_deliveries();
                        specs[k].remove(|_| true);
                        prop_assert_eq!(got, specs[k].released());
                    }
                    Op::Clear(k) => {
                        let got = under[k].q.clear();
                        specs[k].queued.clear();
                        specs[k].head_done = 0;
                        prop_assert_eq!(got, specs[k].released());
                    }
                }
                for (u, s) in under.iter().zip(&specs) {
                    check(&u.q, s, &u.out)?;
                }
                prop_assert_eq!(pool.used(), pool_used(&specs));
                prop_assert!(pool.used() <= pool_limit);
                // Every message offered was queued or dropped, and every drop is announced
                // or waiting to be.
                prop_assert_eq!(offered, queued + dropped);
                let waiting: u64 = under.iter().map(|u| u.q.dropped).sum();
                prop_assert_eq!(dropped as u64, announced + waiting);
            }
            // The writers finish: everything left reaches the wire, and nothing is counted.
            for (u, s) in under.iter_mut().zip(&mut specs) {
                if let Some((mut items, offset)) = u.taken.take() {
                    u.q.put_back(&mut items, offset);
                    s.put_back();
                }
                let rest = drain_all(&mut u.q);
                u.out.extend_from_slice(&rest);
                let (items, offset) = (std::mem::take(&mut s.queued), s.head_done);
                write(&items, Model::wire, offset, usize::MAX, &mut s.out);
                s.head_done = 0;
                check(&u.q, s, &u.out)?;
                prop_assert_eq!((u.q.msgs, u.q.bytes, u.q.replies), (0, 0, 0));
            }
            prop_assert_eq!(pool.used(), 0);
        }
    }
}
