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
//! - A client that lost messages is told how many (`dropped N`) before its next delivery, or as
//!   soon as the queue has room for any delivery again, whichever comes first.
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
        /// The first message's index in the batch (for its tags).
        first: usize,
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
            Item::Run { batch, first, .. } => Some(batch.tags(*first)),
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
            run.clone().all(|i| batch.tags(i) == batch.tags(run.start)),
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
            self.msgs += msgs;
            self.bytes += bytes;
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
                first,
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
    /// bound (one on all queues together, say) joins here.
    fn byte_room(&self) -> usize {
        self.limits.max_bytes.saturating_sub(self.bytes)
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
                    self.msgs -= msgs;
                    self.bytes -= bytes;
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
        self.msgs -= msgs;
        self.bytes -= bytes;
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
