//! A client's outbound side: its bounded queue, its drop counter and its writer thread.
//!
//! Deliveries and replies are queued here and written by whichever thread finds the socket
//! free. A publishing thread that queued a batch calls [`Outbound::flush`], which writes the
//! queue straight out without blocking (`MSG_DONTWAIT`) when no other thread is writing; only
//! what the socket does not take right away is left to the client's writer thread, which blocks
//! (with a timeout) until the peer reads. So a subscriber that keeps up costs no thread wake-up
//! per message, and one that does not keep up never slows a publisher: its queue fills, and
//! newer deliveries are dropped and counted.
//!
//! The writer thread is started the first time the socket does not take everything at once,
//! and then lives as long as the connection. A client that always keeps up (most idle
//! subscribers) never needs one, which halves the memory an idle connection costs.
//!
//! Invariants:
//! - The state mutex is held only to move items and flags, never during a system call that can
//!   block.
//! - At most one thread writes to the socket at a time (`busy`), so frames and lines never
//!   interleave and the queue order is the wire order.
//! - Replies (`pong`, `list`, errors, WebSocket control frames) are never dropped; deliveries are
//!   dropped only when the queue is at `max_msgs` messages or `max_bytes` bytes.

use crate::line;
use crate::message::{Batch, Encoded, frame_tags};
use crate::metrics::{self, Metrics};
use crate::pacing::Drain;
use crate::wsframe;
use parking_lot::{Condvar, Mutex, MutexGuard};
use socket2::SockRef;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The wire format of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSocket,
}

/// Bounds of one client's queue.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most deliveries waiting.
    pub max_msgs: usize,
    /// Most bytes of deliveries waiting.
    pub max_bytes: usize,
    /// How long a write may make no progress before the peer is given up.
    pub write_timeout: Duration,
    /// Reply bytes waiting beyond which the client's own commands wait for it to read.
    pub reply_backlog: usize,
    /// The most bytes one queued delivery item can be charged: a batch's buffer holds at most
    /// one read of the connection (see `framing.rs`).
    pub max_item_bytes: usize,
    /// The longest a publisher waits per batch for a subscriber that is behind but draining
    /// fast (see [`Outbound::pace`]); zero turns pacing off.
    pub pacing: Duration,
}

/// One queued thing to write. Deliveries are counted against the limits (`msgs` messages,
/// `charge` bytes: the memory the item keeps alive) and may be dropped when the queue is full;
/// `Bytes` are replies, notices and control frames, never dropped.
enum Item {
    /// Consecutive messages of a batch, in the connection's wire format, shared with the
    /// run's other subscribers.
    Run {
        batch: Arc<Batch>,
        span: Range<usize>,
        msgs: usize,
        charge: usize,
    },
    /// Messages copied out of a batch, because they are too small a part of it to keep the
    /// whole batch alive for.
    Copy {
        bytes: Box<[u8]>,
        msgs: usize,
    },
    Bytes(Box<[u8]>),
}

/// A batch's messages in the wire format of `transport`.
fn encoded(batch: &Batch, transport: Transport) -> &Encoded {
    match transport {
        Transport::Tcp => batch.lines(),
        Transport::WebSocket => batch.frames(),
    }
}

impl Item {
    /// The bytes on the wire.
    fn bytes(&self, transport: Transport) -> &[u8] {
        match self {
            Item::Run { batch, span, .. } => encoded(batch, transport).bytes(span.clone()),
            Item::Copy { bytes, .. } | Item::Bytes(bytes) => bytes,
        }
    }

    /// Messages and bytes counted against the queue's limits.
    fn budget(&self) -> (usize, usize) {
        match self {
            Item::Run { msgs, charge, .. } => (*msgs, *charge),
            Item::Copy { bytes, msgs } => (*msgs, bytes.len()),
            Item::Bytes(_) => (0, 0),
        }
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Item>,
    /// Bytes of `queue[0]` already written.
    head_done: usize,
    /// Deliveries waiting, including those being written right now.
    msgs: usize,
    /// Their size in bytes.
    bytes: usize,
    /// Reply bytes waiting, including those being written right now.
    replies: usize,
    /// Deliveries dropped since the last notice.
    dropped: u64,
    /// A thread is writing to the socket.
    busy: bool,
    /// The writer thread is waiting for work.
    writer_idle: bool,
    /// The writer thread has been started.
    writer_started: bool,
    /// No new items; shut down once the queue is written.
    closing: bool,
    /// Done: nothing more is written and the writer thread exits.
    closed: bool,
    /// How fast the writes drain the queue, and since when it has been behind (see `pace`).
    drain: Drain,
    /// The socket, until the connection is closed. Publishers may keep an `Outbound` in a
    /// match cache after its client left; dropping the socket here lets its descriptor close.
    sock: Option<Arc<TcpStream>>,
}

/// The outbound half of one client connection.
pub struct Outbound {
    transport: Transport,
    /// The writer thread's name, for when it is started.
    writer_name: String,
    limits: Limits,
    metrics: Arc<Metrics>,
    peer: SocketAddr,
    /// A mutex, not a channel: a writer that could only partly write must put the rest back at
    /// the head of the queue, and "queue empty and nobody writing" must be decided atomically
    /// with taking over the socket. Held for pointer moves only.
    state: Mutex<State>,
    /// Wakes the writer thread when work is queued and nobody else is writing.
    work: Condvar,
    /// Wakes a reader waiting for its reply backlog to shrink, or for the connection to close.
    drained: Condvar,
}

/// How a round of writing ended.
enum Outcome {
    AllWritten,
    WouldBlock,
    Failed(io::Error),
}

/// Stack size of writer threads: they only move pointers and call `sendmsg`.
const WRITER_STACK: usize = 128 * 1024;

/// The most bytes the writer thread writes before it accounts for them (see `run_writer`).
const WRITER_ROUND: usize = 256 * 1024;

/// Writes of at most this many items build their slice list on the stack.
const SMALL_IOV: usize = 8;

/// The most slices handed to one `sendmsg` (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

impl Outbound {
    /// Creates the outbound side of a connection over `sock`.
    pub fn new(
        sock: Arc<TcpStream>,
        transport: Transport,
        limits: Limits,
        metrics: Arc<Metrics>,
        peer: SocketAddr,
    ) -> Arc<Outbound> {
        let kind = match transport {
            Transport::Tcp => "tcp",
            Transport::WebSocket => "ws",
        };
        Arc::new(Outbound {
            writer_name: format!("mist-{kind}-w {peer}"),
            transport,
            limits,
            metrics,
            peer,
            state: Mutex::new(State {
                sock: Some(sock),
                ..State::default()
            }),
            work: Condvar::new(),
            drained: Condvar::new(),
        })
    }

    /// The connection's wire format.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The peer's address, for logs.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Queues messages `run` of a batch, dropping the newest of them when the queue is full.
    /// Never blocks on the socket and never writes: the caller calls [`flush`](Self::flush) once
    /// it has queued everything (and after releasing any broker lock). Returns how many were
    /// queued.
    pub fn enqueue(&self, batch: &Arc<Batch>, run: Range<usize>) -> u64 {
        // Encoded before taking the lock (the first WebSocket subscriber of a batch pays for
        // its frames), so the writer is never kept waiting on it.
        let enc = encoded(batch, self.transport);
        let mut st = self.state.lock();
        if st.closed || st.closing {
            return 0;
        }
        let wanted = run.len();
        let fits = wanted.min(self.limits.max_msgs.saturating_sub(st.msgs));
        let item = self.item(&st, batch, enc, run.start, fits);
        let queued = item.as_ref().map_or(0, |it| it.budget().0);
        if let Some(item) = item {
            if st.dropped > 0 {
                self.push_notice(&mut st);
            }
            let (msgs, bytes) = item.budget();
            st.msgs += msgs;
            st.bytes += bytes;
            st.queue.push_back(item);
        }
        let dropped = (wanted - queued) as u64;
        st.dropped += dropped;
        drop(st);
        metrics::add(&self.metrics.deliveries, queued as u64);
        if dropped > 0 {
            metrics::add(&self.metrics.drops, dropped);
        }
        queued as u64
    }

    /// The item for the first `fits` messages from `first`, or fewer when the byte budget is
    /// short. A run that is a good part of its batch shares the batch and is charged all of
    /// it (that is what it keeps alive); a smaller one is copied and charged its own size.
    fn item(
        &self,
        st: &State,
        batch: &Arc<Batch>,
        enc: &Encoded,
        first: usize,
        fits: usize,
    ) -> Option<Item> {
        if fits == 0 {
            return None;
        }
        let room = self.limits.max_bytes.saturating_sub(st.bytes);
        let span = enc.span(first..first + fits);
        let size = batch.size();
        if span.len() * 4 >= size && size <= room {
            return Some(Item::Run {
                batch: Arc::clone(batch),
                span,
                msgs: fits,
                charge: size,
            });
        }
        // As many as fit in the bytes left, copied.
        let mut n = fits;
        while n > 0 && enc.span(first..first + n).len() > room {
            n -= 1;
        }
        (n > 0).then(|| Item::Copy {
            bytes: enc.bytes(enc.span(first..first + n)).into(),
            msgs: n,
        })
    }

    /// Queues a reply (never dropped) and writes it out if the socket is free. Returns false
    /// when the connection is closed.
    pub fn reply(self: &Arc<Self>, bytes: Vec<u8>) -> bool {
        if !self.push_bytes(bytes) {
            return false;
        }
        self.flush();
        true
    }

    fn push_bytes(&self, bytes: Vec<u8>) -> bool {
        let mut st = self.state.lock();
        if st.closed || st.closing {
            return false;
        }
        st.replies += bytes.len();
        st.queue.push_back(Item::Bytes(bytes.into_boxed_slice()));
        true
    }

    /// Waits while the client's unread replies exceed the backlog limit, so a client that sends
    /// commands without reading the answers cannot make the server buffer without bound.
    /// Returns false when the connection is closed.
    pub fn wait_reply_room(&self) -> bool {
        let mut st = self.state.lock();
        while st.replies > self.limits.reply_backlog && !st.closed {
            self.drained.wait(&mut st);
        }
        !st.closed
    }

    /// Writes what is queued without blocking, unless another thread is already writing. What
    /// the socket does not take is left to the writer thread.
    ///
    /// Returns true when the client is then more than half way to its limits, which is when
    /// a publisher should consider [`pace`](Self::pace).
    pub fn flush(self: &Arc<Self>) -> bool {
        let mut st = self.state.lock();
        if st.busy || st.closed || st.queue.is_empty() {
            return self.note_behind(&mut st);
        }
        let Some(sock) = st.sock.clone() else {
            return false;
        };
        st.busy = true;
        let mut batch = std::mem::take(&mut st.queue);
        let offset = std::mem::take(&mut st.head_done);
        // A small queue that the socket takes at once is the common case, and pacing learns
        // nothing from it: the clock is read only when there is a backlog to time.
        let timed = st.msgs > self.limits.max_msgs / 4;
        drop(st);

        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        let started = timed.then(Instant::now);
        let (done, offset, outcome) = self.write_items(&sock, &batch, offset, flags, usize::MAX);
        drop(sock);

        let mut st = self.state.lock();
        st.busy = false;
        if let Some(started) = started.filter(|_| done > 0) {
            note_progress(&mut st, started, &batch, done);
        } else if done < batch.len() {
            // The socket filled up: from now on the queue is timed.
            note_progress(&mut st, Instant::now(), &batch, done);
        }
        self.account(&mut st, batch.drain(..done));
        if st.closed {
            self.account(&mut st, batch.drain(..));
            return false;
        }
        if let Outcome::Failed(e) = outcome {
            log::debug!("{}: write failed: {e}", self.peer);
            self.account(&mut st, batch.drain(..));
            self.fail(&mut st);
            return false;
        }
        if !batch.is_empty() {
            // The socket is full: put the rest back in front of anything queued meanwhile.
            st.head_done = offset;
            batch.append(&mut st.queue);
            st.queue = batch;
        }
        self.push_notice_if_room(&mut st);
        let behind = self.note_behind(&mut st);
        if !st.queue.is_empty() {
            self.wake_writer(st);
        } else if st.closing {
            self.finish(&mut st);
        }
        behind
    }

    /// More than half way to a limit: where pacing starts to consider waiting.
    fn behind(&self, st: &State) -> bool {
        st.msgs > self.limits.max_msgs / 2 || st.bytes > self.limits.max_bytes / 2
    }

    /// Whether the client is behind, recording when it fell behind if it just did. The clock
    /// is read only then: a stalled client is found behind on every batch.
    fn note_behind(&self, st: &mut State) -> bool {
        let behind = self.behind(st);
        if behind && !st.drain.is_behind() {
            st.drain.behind(Instant::now());
        }
        behind
    }

    /// Hands the queue to the writer thread, starting it if this is the first time.
    fn wake_writer(self: &Arc<Self>, mut st: MutexGuard<'_, State>) {
        if st.writer_started {
            self.work.notify_one();
            return;
        }
        st.writer_started = true;
        drop(st);
        let me = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name(self.writer_name.clone())
            .stack_size(WRITER_STACK)
            .spawn(move || me.run_writer());
        if let Err(e) = spawned {
            log::error!("{}: cannot start a writer thread ({e}); closing", self.peer);
            self.close();
        }
    }

    /// Everything is written and the connection is closing: half-close so the peer reads it
    /// all, and stop.
    fn finish(&self, st: &mut State) {
        if let Some(sock) = st.sock.take() {
            let _ = sock.shutdown(Shutdown::Write);
        }
        st.closed = true;
        self.work.notify_all();
        self.drained.notify_all();
    }

    /// Flow control for subscribers that keep up: waits, at most `pacing`, while this client's
    /// queue is more than half full but draining fast enough to be down to a quarter in time
    /// (the rule is in [`crate::pacing`]). Returns at once for a client that drains slowly or
    /// not at all, so a slow subscriber never makes a publisher wait for long: its newer
    /// messages are dropped instead. Called by a publisher after it has queued and flushed a
    /// batch, holding no lock.
    pub fn pace(&self) {
        let pacing = self.limits.pacing;
        if pacing.is_zero() {
            return;
        }
        let (max_msgs, max_bytes) = (self.limits.max_msgs, self.limits.max_bytes);
        let mut st = self.state.lock();
        if !self.behind(&st) {
            return;
        }
        let deadline = st.drain.deadline(Instant::now(), pacing);
        let mut waited = false;
        loop {
            if st.closed || (st.msgs <= max_msgs / 4 && st.bytes <= max_bytes / 4) {
                return;
            }
            let now = Instant::now();
            let backlog = st.msgs.saturating_sub(max_msgs / 4);
            if !st.drain.worth_waiting(now, deadline, backlog, pacing) {
                if waited && now >= deadline {
                    metrics::add(&self.metrics.pacing_gave_up, 1);
                }
                return;
            }
            if !waited {
                waited = true;
                metrics::add(&self.metrics.pacing_waits, 1);
            }
            self.drained.wait_until(&mut st, deadline);
        }
    }

    /// Marks the connection for closing once everything queued is written, after `last` (for
    /// example a WebSocket close frame). The writer then shuts the socket down for writing.
    pub fn close_after_flush(self: &Arc<Self>, last: Option<Vec<u8>>) {
        let mut st = self.state.lock();
        if st.closed || st.closing {
            return;
        }
        if let Some(bytes) = last {
            st.replies += bytes.len();
            st.queue.push_back(Item::Bytes(bytes.into_boxed_slice()));
        }
        st.closing = true;
        drop(st);
        self.flush_or_finish();
    }

    /// Writes what is queued, or finishes the close when nothing is; whoever is writing right
    /// now does that when done.
    fn flush_or_finish(self: &Arc<Self>) {
        let mut st = self.state.lock();
        if st.busy || st.closed {
            return;
        }
        if st.queue.is_empty() {
            if st.closing {
                self.finish(&mut st);
            }
            return;
        }
        drop(st);
        self.flush();
    }

    /// Drops everything queued and closes the connection in both directions now.
    pub fn close(&self) {
        let mut st = self.state.lock();
        self.fail(&mut st);
    }

    /// Waits until the connection is closed. After [`close_after_flush`](Self::close_after_flush)
    /// that is when everything queued has been written (whichever thread writes it) and the
    /// socket is shut down for writing, or the peer has been given up; so at most the write
    /// timeout.
    pub fn wait_closed(&self) {
        let mut st = self.state.lock();
        while !st.closed {
            self.drained.wait(&mut st);
        }
    }

    /// True once the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Removes queued WebSocket deliveries whose tags `keep` refuses, then queues `notice`
    /// (never dropped). Deliveries a thread is writing at this moment are already on their way
    /// and precede the notice on the wire. (Only WebSocket clients hold tokens, so only their
    /// deliveries are ever revoked.)
    pub fn retain_and_notify(self: &Arc<Self>, keep: impl Fn(&str) -> bool, notice: Vec<u8>) {
        let mut st = self.state.lock();
        if st.closed || st.closing {
            return;
        }
        debug_assert_eq!(self.transport, Transport::WebSocket);
        // The head may be partly written when no thread is busy; it has to stay whole.
        let keep_head = usize::from(st.head_done > 0);
        let queue = std::mem::take(&mut st.queue);
        let mut kept = VecDeque::with_capacity(queue.len());
        for (i, item) in queue.into_iter().enumerate() {
            if i < keep_head || matches!(item, Item::Bytes(_)) {
                kept.push_back(item);
                continue;
            }
            let (msgs, charge) = item.budget();
            let (frames, n) = keep_frames(item.bytes(self.transport), &keep);
            if n == msgs {
                kept.push_back(item);
                continue;
            }
            st.msgs -= msgs;
            st.bytes -= charge;
            if n > 0 {
                st.msgs += n;
                st.bytes += frames.len();
                kept.push_back(Item::Copy {
                    bytes: frames.into_boxed_slice(),
                    msgs: n,
                });
            }
        }
        st.queue = kept;
        st.replies += notice.len();
        st.queue.push_back(Item::Bytes(notice.into_boxed_slice()));
        drop(st);
        self.flush();
    }

    /// Drops queued deliveries and closes after writing `last` (used when a token is revoked:
    /// nothing more may be delivered, but the close frame must go out).
    pub fn discard_and_close(self: &Arc<Self>, last: Vec<u8>) {
        let mut st = self.state.lock();
        if st.closed || st.closing {
            return;
        }
        let keep_head = usize::from(st.head_done > 0);
        let old = std::mem::take(&mut st.queue);
        let mut kept = VecDeque::new();
        let mut gone = Vec::new();
        for (i, item) in old.into_iter().enumerate() {
            if i < keep_head || matches!(item, Item::Bytes(_)) {
                kept.push_back(item);
            } else {
                gone.push(item);
            }
        }
        self.account(&mut st, gone.into_iter());
        st.queue = kept;
        st.replies += last.len();
        st.queue.push_back(Item::Bytes(last.into_boxed_slice()));
        st.closing = true;
        drop(st);
        self.flush_or_finish();
    }

    /// The writer thread's loop: waits for work nobody else is doing, writes all of it with
    /// blocking writes, and repeats until the connection closes.
    fn run_writer(&self) {
        let mut batch: VecDeque<Item> = VecDeque::new();
        loop {
            let mut st = self.state.lock();
            loop {
                if st.closed {
                    return;
                }
                if !st.busy && !st.queue.is_empty() {
                    break;
                }
                if !st.busy && st.closing {
                    self.finish(&mut st);
                    return;
                }
                st.writer_idle = true;
                self.work.wait(&mut st);
                st.writer_idle = false;
            }
            let Some(sock) = st.sock.clone() else { return };
            std::mem::swap(&mut st.queue, &mut batch);
            let mut offset = std::mem::take(&mut st.head_done);
            st.busy = true;
            drop(st);

            // The batch goes out in rounds of at most WRITER_ROUND bytes, each accounted as soon
            // as it is written: publishers waiting in `pace` see the backlog shrink as the peer
            // reads, not only when the whole batch is out.
            let (mut st, outcome) = loop {
                let started = Instant::now();
                let (done, rest, outcome) =
                    self.write_items(&sock, &batch, offset, libc::MSG_NOSIGNAL, WRITER_ROUND);
                offset = rest;
                let mut st = self.state.lock();
                note_progress(&mut st, started, &batch, done);
                self.account(&mut st, batch.drain(..done));
                if batch.is_empty() || st.closed || !matches!(outcome, Outcome::AllWritten) {
                    break (st, outcome);
                }
            };
            drop(sock);
            st.busy = false;
            if st.closed {
                self.account(&mut st, batch.drain(..));
                return;
            }
            match outcome {
                Outcome::AllWritten => {}
                Outcome::WouldBlock => {
                    metrics::add(&self.metrics.write_timeouts, 1);
                    log::info!(
                        "{}: peer read nothing for {:?}, closing",
                        self.peer,
                        self.limits.write_timeout
                    );
                    self.account(&mut st, batch.drain(..));
                    self.fail(&mut st);
                    return;
                }
                Outcome::Failed(e) => {
                    log::debug!("{}: write failed: {e}", self.peer);
                    self.account(&mut st, batch.drain(..));
                    self.fail(&mut st);
                    return;
                }
            }
            self.push_notice_if_room(&mut st);
            if batch.capacity() > 4096 {
                batch = VecDeque::new();
            }
        }
    }

    /// Writes `items` from `offset` bytes into the first, stopping once at least `limit` bytes
    /// are written. Returns how many items were written whole, the offset into the next one,
    /// and why it stopped (`AllWritten` also when it stopped at the limit).
    fn write_items(
        &self,
        sock: &TcpStream,
        items: &VecDeque<Item>,
        mut offset: usize,
        flags: libc::c_int,
        limit: usize,
    ) -> (usize, usize, Outcome) {
        let sock = SockRef::from(sock);
        let mut done = 0;
        let mut written = 0;
        // When a blocked write was first interrupted with nothing written since: the retry's
        // kernel timeout starts over, so the stall is cut off by this instead.
        let mut interrupted: Option<Instant> = None;
        // Most writes are of a few items: their slices go on the stack, not the heap.
        let mut small = [IoSlice::new(&[]); SMALL_IOV];
        let mut large: Vec<IoSlice<'_>> = Vec::new();
        while done < items.len() {
            let want = limit - written;
            let (mut count, mut bytes) = (0, 0);
            large.clear();
            for (i, item) in items.range(done..).enumerate() {
                let b = &item.bytes(self.transport)[if i == 0 { offset } else { 0 }..];
                if large.is_empty() && count < SMALL_IOV {
                    small[count] = IoSlice::new(b);
                } else {
                    if large.is_empty() {
                        large.extend_from_slice(&small[..count]);
                    }
                    large.push(IoSlice::new(b));
                }
                count += 1;
                bytes += b.len();
                if bytes >= want || count == IOV_MAX {
                    break;
                }
            }
            let iov: &[IoSlice<'_>] = if large.is_empty() {
                &small[..count]
            } else {
                &large
            };
            match sock.send_vectored_with_flags(iov, flags) {
                Ok(0) => {
                    return (
                        done,
                        offset,
                        Outcome::Failed(io::ErrorKind::WriteZero.into()),
                    );
                }
                Ok(mut n) => {
                    interrupted = None;
                    written += n;
                    while n > 0 {
                        let left = items[done].bytes(self.transport).len() - offset;
                        if n >= left {
                            n -= left;
                            done += 1;
                            offset = 0;
                        } else {
                            offset += n;
                            n = 0;
                        }
                    }
                    if written >= limit && done < items.len() {
                        return (done, offset, Outcome::AllWritten);
                    }
                }
                // Interrupted by a signal or a debugger (`strace -p`): retry, but for no longer
                // than `write_timeout` without progress, so a stalled peer is still cut off.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    let since = *interrupted.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.limits.write_timeout {
                        return (done, offset, Outcome::WouldBlock);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return (done, offset, Outcome::WouldBlock);
                }
                Err(e) => return (done, offset, Outcome::Failed(e)),
            }
        }
        (done, 0, Outcome::AllWritten)
    }

    /// Releases the budget of items that were written or discarded.
    fn account(&self, st: &mut State, gone: impl Iterator<Item = Item>) {
        for item in gone {
            match item {
                Item::Bytes(b) => st.replies -= b.len(),
                delivery => {
                    let (msgs, bytes) = delivery.budget();
                    st.msgs -= msgs;
                    st.bytes -= bytes;
                }
            }
        }
        if st.msgs <= self.limits.max_msgs / 4 && st.bytes <= self.limits.max_bytes / 4 {
            st.drain.caught_up();
        }
        if st.replies <= self.limits.reply_backlog || st.msgs <= self.limits.max_msgs / 4 {
            self.drained.notify_all();
        }
    }

    /// Queues the slow-consumer notice once the queue can take any delivery again. Room for
    /// some bytes is not enough: the next delivery could still be dropped, and one run of
    /// losses would get two notices with nothing between them.
    fn push_notice_if_room(&self, st: &mut State) {
        let room = st.msgs < self.limits.max_msgs
            && (st.bytes == 0 || st.bytes + self.limits.max_item_bytes <= self.limits.max_bytes);
        if st.dropped > 0 && room {
            self.push_notice(st);
        }
    }

    /// Queues the slow-consumer notice for the losses so far.
    fn push_notice(&self, st: &mut State) {
        let n = std::mem::take(&mut st.dropped);
        let bytes = match self.transport {
            Transport::Tcp => line::dropped_notice(n),
            Transport::WebSocket => wsframe::text(crate::wsjson::dropped_notice(n).as_bytes()),
        };
        st.replies += bytes.len();
        st.queue.push_back(Item::Bytes(bytes.into_boxed_slice()));
        metrics::add(&self.metrics.slow_consumer_notices, 1);
        log::debug!("{}: slow consumer, dropped {n} messages", self.peer);
    }

    /// Closes at once: drops the queue, wakes every waiter and shuts the socket down.
    fn fail(&self, st: &mut State) {
        if st.closed {
            return;
        }
        st.closed = true;
        st.closing = true;
        let queue = std::mem::take(&mut st.queue);
        st.head_done = 0;
        self.account(st, queue.into_iter());
        if let Some(sock) = st.sock.take() {
            let _ = sock.shutdown(Shutdown::Both);
        }
        self.work.notify_all();
        self.drained.notify_all();
    }
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbound({}, {:?})", self.peer, self.transport)
    }
}

/// Records that a write started at `started` delivered the first `done` items of `batch`.
fn note_progress(st: &mut State, started: Instant, batch: &VecDeque<Item>, done: usize) {
    let msgs: usize = batch.range(..done).map(|it| it.budget().0).sum();
    if msgs > 0 {
        st.drain.progress(started, Instant::now(), msgs);
    }
}

/// The frames of `bytes` (server text frames, back to back) whose tags `keep` accepts, and how
/// many they are.
fn keep_frames(mut bytes: &[u8], keep: &impl Fn(&str) -> bool) -> (Vec<u8>, usize) {
    let (mut kept, mut n) = (Vec::new(), 0);
    while let Some((_, rest)) = wsframe::split_text(bytes) {
        let frame = &bytes[..bytes.len() - rest.len()];
        if frame_tags(frame).is_some_and(|tags| keep(&tags)) {
            kept.extend_from_slice(frame);
            n += 1;
        }
        bytes = rest;
    }
    (kept, n)
}
