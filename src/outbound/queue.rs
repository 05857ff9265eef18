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
//! - Replies, notices and control frames are never dropped.
//! - A client that lost messages is told how many (`dropped N`) before its next delivery, or
//!   once a write leaves room for any delivery again ([`notice_if_room`](Queue::notice_if_room)),
//!   whichever comes first.
//! - Items leave in the order they came, except that revocation and discarding remove
//!   deliveries; a partly written item is never removed or changed.

use super::{Limits, Transport};
use crate::message::{Batch, Encoded};
use crate::{line, wsframe, wsjson};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

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
            Item::Copy {
                buf,
                tags_len,
                msgs,
            } => (*msgs, buf.len() - tags_len),
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

/// Messages delivered by the first `done` of `items`.
pub(super) fn delivered(items: &VecDeque<Item>, done: usize) -> usize {
    items.range(..done).map(|it| it.budget().0).sum()
}

/// What [`Queue::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Enqueued {
    /// Messages queued.
    pub queued: usize,
    /// Messages dropped because the queue was full.
    pub dropped: usize,
    /// A slow-consumer notice for this many earlier losses was queued first.
    pub notice: Option<u64>,
}

/// What releasing items freed, for the caller to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(super) struct Released {
    /// Deliveries are down to a quarter of both limits: the client caught up (see `pacing`).
    pub caught_up: bool,
    /// Readers waiting for reply room, or publishers pacing, may go on.
    pub drained: bool,
}

/// A client's queue and its budgets.
pub(super) struct Queue {
    transport: Transport,
    limits: Limits,
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
    /// An empty queue for a connection speaking `transport`.
    pub(super) fn new(transport: Transport, limits: Limits) -> Queue {
        Queue {
            transport,
            limits,
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
    pub(super) fn enqueue(
        &mut self,
        batch: &Arc<Batch>,
        enc: &Encoded,
        run: Range<usize>,
    ) -> Enqueued {
        debug_assert!(
            run.is_empty() || batch.tags(run.end - 1) == batch.tags(run.start),
            "a queue item holds messages with the same tags"
        );
        let wanted = run.len();
        let fits = wanted.min(self.limits.max_msgs.saturating_sub(self.msgs));
        let item = self.admit(batch, enc, run.start, fits);
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
        Enqueued {
            queued,
            dropped,
            notice,
        }
    }

    /// The item for the first `fits` messages from `first`, or fewer when the byte budget is
    /// short. A run that is a good part of its batch shares the batch and is charged all of
    /// it (that is what it keeps alive); a smaller one is copied and charged its own size.
    fn admit(&self, batch: &Arc<Batch>, enc: &Encoded, first: usize, fits: usize) -> Option<Item> {
        if fits == 0 {
            return None;
        }
        let room = self.byte_room();
        let span = enc.span(first..first + fits);
        let size = batch.size();
        if span.len() * 4 >= size && size <= room {
            return Some(Item::Run {
                batch: Arc::clone(batch),
                span,
                first: u32::try_from(first).expect("a batch holds one read's messages"),
                msgs: fits,
                charge: size,
            });
        }
        // As many as fit in the bytes left, copied.
        let mut n = fits;
        while n > 0 && enc.span(first..first + n).len() > room {
            n -= 1;
        }
        (n > 0).then(|| {
            let tags = batch.tags(first);
            let wire = enc.bytes(enc.span(first..first + n));
            let mut buf = Vec::with_capacity(tags.len() + wire.len());
            buf.extend_from_slice(tags);
            buf.extend_from_slice(wire);
            Item::Copy {
                buf: buf.into_boxed_slice(),
                tags_len: tags.len(),
                msgs: n,
            }
        })
    }

    /// Bytes of deliveries the queue can take now. The one place that decides it, so another
    /// bound (one on all queues together, say) joins here, and in `charge` and `uncharge`.
    fn byte_room(&self) -> usize {
        self.limits.max_bytes.saturating_sub(self.bytes)
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

    /// Releases the budget of taken items that were written or discarded.
    pub(super) fn release(&mut self, gone: impl Iterator<Item = Item>) -> Released {
        for item in gone {
            match item {
                Item::Bytes(b) => self.replies -= b.len(),
                delivery => {
                    let (msgs, bytes) = delivery.budget();
                    self.uncharge(msgs, bytes);
                }
            }
        }
        let quarter = self.msgs <= self.limits.max_msgs / 4;
        Released {
            caught_up: quarter && self.bytes <= self.limits.max_bytes / 4,
            drained: self.replies <= self.limits.reply_backlog || quarter,
        }
    }

    /// Queues the slow-consumer notice once the queue can take any delivery again. Room for
    /// some bytes is not enough: the next delivery could still be dropped, and one run of
    /// losses would get two notices with nothing between them. Returns the losses announced.
    pub(super) fn notice_if_room(&mut self) -> Option<u64> {
        let room = self.msgs < self.limits.max_msgs
            && (self.bytes == 0
                || self.bytes + self.limits.max_item_bytes <= self.limits.max_bytes);
        (self.dropped > 0 && room).then(|| self.push_notice())
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

    /// More than half way to a limit: where pacing starts to consider waiting.
    pub(super) fn behind(&self) -> bool {
        self.msgs > self.limits.max_msgs / 2 || self.bytes > self.limits.max_bytes / 2
    }

    /// Down to a quarter of both limits: where a pacing publisher stops waiting.
    pub(super) fn caught_up(&self) -> bool {
        self.msgs <= self.limits.max_msgs / 4 && self.bytes <= self.limits.max_bytes / 4
    }

    /// Messages beyond a quarter of the limit: what a pacing publisher waits to see written.
    pub(super) fn backlog(&self) -> usize {
        self.msgs.saturating_sub(self.limits.max_msgs / 4)
    }

    /// Removes queued deliveries whose tags (comma-joined) `keep` refuses. Taken items are on
    /// their way already, and a partly written head stays whole.
    pub(super) fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let keep_head = usize::from(self.head_done > 0);
        let (mut msgs, mut bytes) = (0, 0);
        let mut i = 0;
        self.items.retain(|item| {
            i += 1;
            let kept = i <= keep_head
                || item
                    .tags()
                    .is_none_or(|tags| keep(&String::from_utf8_lossy(tags)));
            if !kept {
                let (m, b) = item.budget();
                msgs += m;
                bytes += b;
            }
            kept
        });
        self.uncharge(msgs, bytes);
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
            pacing: Duration::ZERO,
        }
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
        q.enqueue(batch, enc, run)
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
        let mut q = Queue::new(Transport::Tcp, limits(2, 1000));
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
        let mut q = Queue::new(Transport::Tcp, limits(10, 150));
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
        let mut q = Queue::new(Transport::Tcp, limits(100, 1000));
        let b = batch(&[("a", "1"), ("a", "2"), ("b", "3"), ("b", "4")]);
        enqueue(&mut q, &b, 0..2);
        assert!(matches!(q.items[0], Item::Run { .. }));
        assert_eq!((q.msgs, q.bytes), (2, b.size()));
        assert_eq!(Arc::strong_count(&b), 2, "shared, not copied");
    }

    #[test]
    fn a_small_part_of_a_big_batch_is_copied_and_charged_its_own_size() {
        let mut q = Queue::new(Transport::Tcp, limits(100, 1000));
        let others: Vec<(&str, &str)> = vec![("b", "0123456789"); 8];
        let b = batch(&[&[("a", "1")], &others[..]].concat());
        enqueue(&mut q, &b, 0..1);
        assert!(matches!(q.items[0], Item::Copy { .. }));
        assert_eq!((q.msgs, q.bytes), (1, "publish a 1\n".len()));
        assert_eq!(Arc::strong_count(&b), 1, "the batch is not kept alive");
        assert_eq!(q.items[0].tags(), Some(&b"a"[..]));
        assert_eq!(text(&drain_all(&mut q)), "publish a 1\n");
    }

    #[test]
    fn a_short_byte_budget_takes_as_many_messages_as_fit() {
        // 12 bytes a line: 30 bytes hold two of three, so they are copied.
        let mut q = Queue::new(Transport::Tcp, limits(100, 30));
        let r = enqueue(&mut q, &batch(&[("a", "1"), ("a", "2"), ("a", "3")]), 0..3);
        assert_eq!((r.queued, r.dropped), (2, 1));
        assert_eq!((q.msgs, q.bytes), (2, 24));
        // Not even one message fits a budget of 11 bytes.
        let mut q = Queue::new(Transport::Tcp, limits(100, 11));
        let r = enqueue(&mut q, &batch(&[("a", "1")]), 0..1);
        assert_eq!((r.queued, r.dropped), (0, 1));
        assert!(q.is_empty());
    }

    #[test]
    fn an_item_is_six_words() {
        // A stalled client may hold hundreds of thousands of them.
        assert!(std::mem::size_of::<Item>() <= 6 * std::mem::size_of::<usize>());
    }

    #[test]
    fn replies_are_never_dropped() {
        let mut q = Queue::new(Transport::Tcp, limits(1, 20));
        enqueue(&mut q, &batch(&[("a", "1")]), 0..1);
        q.push_reply(b"pong\n".to_vec());
        q.push_reply(vec![b'x'; 500]);
        assert_eq!((q.msgs, q.replies), (1, 505));
        assert_eq!(drain_all(&mut q).len(), 12 + 505);
    }

    #[test]
    fn what_was_not_written_goes_back_in_front() {
        let mut q = Queue::new(Transport::Tcp, limits(10, 1000));
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
        let mut q = Queue::new(Transport::WebSocket, limits(100, 10_000));
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
        let mut q = Queue::new(Transport::Tcp, limits(100, 10_000));
        let b = batch(&[("a", "1"), ("a", "2")]);
        enqueue(&mut q, &b, 0..1);
        q.push_reply(b"pong\n".to_vec());
        enqueue(&mut q, &b, 1..2);
        let mut taken = VecDeque::new();
        q.take(&mut taken);
        q.put_back(&mut taken, 4);
        let released = q.discard_deliveries();
        assert!(released.caught_up && released.drained);
        assert_eq!(q.items.len(), 2);
        assert_eq!(text(&drain_all(&mut q)), "ish a 1\npong\n");
        assert_eq!((q.msgs, q.bytes, q.replies), (0, 0, 0));
    }

    #[test]
    fn clearing_releases_everything_queued_but_not_what_is_being_written() {
        let mut q = Queue::new(Transport::Tcp, limits(100, 10_000));
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

    #[test]
    fn pacing_thresholds() {
        let mut q = Queue::new(Transport::Tcp, limits(8, 1_000_000));
        let msgs: Vec<(&str, &str)> = vec![("a", "1"); 8];
        let b = batch(&msgs);
        enqueue(&mut q, &b, 0..2);
        assert!(!q.behind() && q.caught_up() && q.backlog() == 0);
        enqueue(&mut q, &b, 2..5);
        assert!(q.behind() && !q.caught_up());
        assert_eq!(q.backlog(), 3);
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

    #[derive(Debug, Clone)]
    enum Op {
        /// A batch of messages (tags, data length); the run of `run` messages with the
        /// same tags after `before` is offered to the queue.
        Publish {
            before: Vec<(usize, usize)>,
            tags: usize,
            run: Vec<usize>,
            after: Vec<(usize, usize)>,
        },
        Reply(usize),
        /// A thread takes everything queued, if nothing is taken already.
        Take,
        /// It writes this many bytes of what it took, and releases the items written whole.
        Write(usize),
        /// It puts back what it did not write.
        PutBack,
        NoticeIfRoom,
        Retain(usize),
        Discard,
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        let msg = (0..TAGS.len(), 0..40usize);
        prop_oneof![
            6 => (
                prop::collection::vec(msg.clone(), 0..4),
                0..TAGS.len(),
                prop::collection::vec(0..40usize, 1..6),
                prop::collection::vec(msg, 0..4),
            )
                .prop_map(|(before, tags, run, after)| Op::Publish { before, tags, run, after }),
            1 => (1..30usize).prop_map(Op::Reply),
            2 => Just(Op::Take),
            3 => (0..120usize).prop_map(Op::Write),
            2 => Just(Op::PutBack),
            2 => Just(Op::NoticeIfRoom),
            1 => (0..REVOKED.len()).prop_map(Op::Retain),
            1 => Just(Op::Discard),
            1 => Just(Op::Clear),
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

    /// The queue as a list, with the rules of the protocol written out message by message.
    struct Spec {
        transport: Transport,
        limits: Limits,
        queued: VecDeque<Model>,
        head_done: usize,
        taken: Option<(VecDeque<Model>, usize)>,
        dropped: u64,
        out: Vec<u8>,
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

        /// Offers `run` of `batch`: as many messages as both limits allow, the newest dropped;
        /// a run that is at least a quarter of its batch and whose batch fits the bytes left
        /// is charged the whole batch, otherwise each message its own size.
        fn enqueue(&mut self, batch: &Batch, run: Range<usize>) -> Enqueued {
            let enc = encoded(batch, self.transport);
            let sizes: Vec<usize> = run.clone().map(|i| enc.span(i..i + 1).len()).collect();
            let (msgs, bytes, _) = self.counts();
            let fits = run.len().min(self.limits.max_msgs - msgs);
            let room = self.limits.max_bytes - bytes;
            let own = |n: usize| sizes[..n].iter().sum::<usize>();
            let (n, charge) = if fits > 0 && own(fits) * 4 >= batch.size() && batch.size() <= room {
                (fits, batch.size())
            } else {
                let n = (0..=fits).rev().find(|&n| own(n) <= room).unwrap();
                (n, own(n))
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
                    tags: text(batch.tags(run.start)).to_string(),
                    wire,
                    msgs: n,
                    charge,
                });
            }
            self.dropped += (run.len() - n) as u64;
            Enqueued {
                queued: n,
                dropped: run.len() - n,
                notice,
            }
        }

        fn released(&self) -> Released {
            let (msgs, bytes, replies) = self.counts();
            let l = self.limits;
            Released {
                caught_up: msgs <= l.max_msgs / 4 && bytes <= l.max_bytes / 4,
                drained: replies <= l.reply_backlog || msgs <= l.max_msgs / 4,
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The queue against the list model: the same bytes reach the wire in the same order,
        /// the same deliveries are dropped and announced, the budgets agree and never exceed
        /// the limits, whatever the interleaving of publishers, replies, a writer taking,
        /// partly writing and putting back, revocations and discards.
        #[test]
        fn queue_matches_the_model(
            ws in any::<bool>(),
            max_msgs in 1..12usize,
            max_bytes in 1..600usize,
            max_item_bytes in 1..300usize,
            reply_backlog in 0..100usize,
            ops in prop::collection::vec(op(), 1..60),
        ) {
            let transport = if ws { Transport::WebSocket } else { Transport::Tcp };
            let limits = Limits { max_item_bytes, reply_backlog, ..limits(max_msgs, max_bytes) };
            let mut q = Queue::new(transport, limits);
            let mut spec = Spec {
                transport,
                limits,
                queued: VecDeque::new(),
                head_done: 0,
                taken: None,
                dropped: 0,
                out: Vec::new(),
            };
            let mut taken: Option<(VecDeque<Item>, usize)> = None;
            let mut out = Vec::new();
            let (mut offered, mut queued, mut dropped, mut announced) = (0, 0, 0, 0);
            let mut id = 0;
            for op in ops {
                match op {
                    Op::Publish { before, tags, run, after } => {
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
                        let want = spec.enqueue(&b, range.clone());
                        let got = enqueue(&mut q, &b, range);
                        prop_assert_eq!(got, want);
                        offered += run.len();
                        queued += got.queued;
                        dropped += got.dropped;
                        announced += got.notice.unwrap_or(0);
                    }
                    Op::Reply(len) => {
                        let bytes = data(0, len).into_bytes();
                        q.push_reply(bytes.clone());
                        spec.queued.push_back(Model::Reply(bytes));
                    }
                    Op::Take => {
                        if taken.is_none() {
                            let mut items = VecDeque::new();
                            let offset = q.take(&mut items);
                            taken = Some((items, offset));
                            let all = std::mem::take(&mut spec.queued);
                            spec.taken = Some((all, std::mem::take(&mut spec.head_done)));
                        }
                    }
                    Op::Write(n) => {
                        if let (Some((items, offset)), Some((model, moffset))) =
                            (&mut taken, &mut spec.taken)
                        {
                            let (done, rest) =
                                write(items, |it| it.wire(transport), *offset, n, &mut out);
                            *offset = rest;
                            let (mdone, mrest) =
                                write(model, Model::wire, *moffset, n, &mut spec.out);
                            *moffset = mrest;
                            prop_assert_eq!((done, rest), (mdone, mrest));
                            let got = q.release(items.drain(..done));
                            model.drain(..done);
                            prop_assert_eq!(got, spec.released());
                        }
                    }
                    Op::PutBack => {
                        if let Some((mut items, offset)) = taken.take() {
                            q.put_back(&mut items, offset);
                            let (mut model, moffset) = spec.taken.take().unwrap();
                            if !model.is_empty() {
                                spec.head_done = moffset;
                                model.append(&mut spec.queued);
                                spec.queued = model;
                            }
                        }
                    }
                    Op::NoticeIfRoom => {
                        let (msgs, bytes, _) = spec.counts();
                        let room = msgs < max_msgs
                            && (bytes == 0 || bytes + max_item_bytes <= max_bytes);
                        let want = (spec.dropped > 0 && room).then(|| spec.notice());
                        let got = q.notice_if_room();
                        prop_assert_eq!(got, want);
                        announced += got.unwrap_or(0);
                    }
                    Op::Retain(tag) => {
                        let revoked = REVOKED[tag];
                        let keep = |tags: &str| !tags.split(',').any(|t| t == revoked);
                        q.retain(keep);
                        spec.remove(|tags| !keep(tags));
                    }
                    Op::Discard => {
                        let got = q.discard_deliveries();
                        spec.remove(|_| true);
                        prop_assert_eq!(got, spec.released());
                    }
                    Op::Clear => {
                        let got = q.clear();
                        spec.queued.clear();
                        spec.head_done = 0;
                        prop_assert_eq!(got, spec.released());
                    }
                }
                check(&q, &spec, &out)?;
                // Every message offered was queued or dropped, and every drop is announced
                // or waiting to be.
                prop_assert_eq!(offered, queued + dropped);
                prop_assert_eq!(dropped as u64, announced + q.dropped);
            }
            // The writer finishes: everything left reaches the wire, and nothing is counted.
            if let Some((mut items, offset)) = taken.take() {
                q.put_back(&mut items, offset);
                let (mut model, moffset) = spec.taken.take().unwrap();
                if !model.is_empty() {
                    spec.head_done = moffset;
                    model.append(&mut spec.queued);
                    spec.queued = model;
                }
            }
            out.extend_from_slice(&drain_all(&mut q));
            let (items, offset) = (std::mem::take(&mut spec.queued), spec.head_done);
            write(&items, Model::wire, offset, usize::MAX, &mut spec.out);
            spec.head_done = 0;
            check(&q, &spec, &out)?;
            prop_assert_eq!((q.msgs, q.bytes, q.replies), (0, 0, 0));
        }
    }
}
