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
//! # Layout
//!
//! - `queue`: the queue as plain data: items, budgets, drops and notices, revocation, and the
//!   pool of bytes all queues count in (pure).
//! - `memory`: the pool and the queues counting in it, to push out the largest when a short
//!   queue finds the pool full.
//! - `io`: writing items to a `Sink` (the socket): partial writes, `WouldBlock`, `EINTR`.
//! - `writer`: the writer thread.
//! - here: the [`Outbound`] handle, which keeps the queue and the connection's state under one
//!   mutex and decides which thread writes.
//!
//! Invariants:
//! - The state mutex is held only to move items and flags, never during a system call that can
//!   block.
//! - At most one thread writes to the socket at a time (`busy`), so frames and lines never
//!   interleave and the queue order is the wire order.
//! - Replies (`pong`, `list`, errors, WebSocket control frames) are never dropped; deliveries are
//!   dropped only when the queue is at `max_msgs` messages or `max_bytes` bytes.

mod io;
mod memory;
mod queue;
mod writer;

use crate::message::Batch;
use crate::metrics::{self, Metrics};
use crate::pacing::Drain;
use io::{Outcome, Round, Written};
use parking_lot::{Condvar, Mutex};
use queue::{Enqueued, Item, Queue, Released};
use std::collections::VecDeque;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use memory::Memory;
pub use queue::Pool;

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

struct State {
    /// What is waiting to be written, and its budgets.
    queue: Queue,
    /// A thread is writing to the socket.
    busy: bool,
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
        let pool = Arc::clone(&metrics.queue_memory.pool);
        let memory = Arc::clone(&metrics);
        let out = Arc::new(Outbound {
            writer_name: format!("mist-{kind}-w {peer}"),
            transport,
            limits,
            metrics,
            peer,
            state: Mutex::new(State {
                queue: Queue::new(transport, limits, pool),
                busy: false,
                writer_started: false,
                closing: false,
                closed: false,
                drain: Drain::default(),
                sock: Some(sock),
            }),
            work: Condvar::new(),
            drained: Condvar::new(),
        });
        memory.queue_memory.join(&out);
        out
    }

    /// The connection's wire format.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The peer's address, for logs.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Queues messages `run` of a batch (a run of messages with the same tags), dropping the
    /// newest of them when the queue is full. Never blocks on the socket and never writes: the
    /// caller calls [`flush`](Self::flush) once it has queued everything (and after releasing
    /// any broker lock). Returns whether anything was queued (deliveries, or a notice of
    /// their loss), that is whether the client needs a flush.
    pub fn enqueue(&self, batch: &Arc<Batch>, run: Range<usize>) -> bool {
        // Encoded before taking the lock (the first WebSocket subscriber of a batch pays for
        // its frames), so the writer is never kept waiting on it.
        let enc = queue::encoded(batch, self.transport);
        let mut st = self.state.lock();
        if st.closed || st.closing {
            return false;
        }
        let mut done = st.queue.enqueue(batch, enc, run.clone(), true);
        if let Some(need) = done.short {
            // The pool is full, and this client holds less than the largest: make room by
            // pushing out theirs (other queues' locks, so not under this one), then again.
            drop(st);
            self.metrics.queue_memory.make_room(self, need);
            st = self.state.lock();
            if st.closed || st.closing {
                return false;
            }
            done = st.queue.enqueue(batch, enc, run, false);
        }
        let Enqueued {
            queued,
            dropped,
            pooled_out,
            notice,
            ..
        } = done;
        if let Some(n) = notice {
            self.noticed(n);
        }
        drop(st);
        metrics::add(&self.metrics.deliveries, queued as u64);
        if dropped > 0 {
            metrics::add(&self.metrics.drops, dropped as u64);
            if pooled_out > 0 {
                metrics::add(&self.metrics.drops_memory_limit, pooled_out as u64);
            }
        }
        queued > 0 || notice.is_some()
    }

    /// Counts and logs a slow-consumer notice for `n` lost messages.
    fn noticed(&self, n: u64) {
        metrics::add(&self.metrics.slow_consumer_notices, 1);
        log::debug!("{}: slow consumer, dropped {n} messages", self.peer);
    }

    /// Queues the slow-consumer notice if there are losses to announce and room again.
    fn notice_if_room(&self, st: &mut State) {
        if let Some(n) = st.queue.notice_if_room() {
            self.noticed(n);
        }
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
        st.queue.push_reply(bytes);
        true
    }

    /// Waits while the client's unread replies exceed the backlog limit, so a client that sends
    /// commands without reading the answers cannot make the server buffer without bound.
    /// Returns false when the connection is closed.
    pub fn wait_reply_room(&self) -> bool {
        let mut st = self.state.lock();
        while st.queue.replies() > self.limits.reply_backlog && !st.closed {
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
        let mut batch = VecDeque::new();
        let offset = st.queue.take(&mut batch);
        // A small queue that the socket takes at once is the common case, and pacing learns
        // nothing from it: the clock is read only when there is a backlog to time.
        let timed = st.queue.msgs() > self.limits.max_msgs / 4;
        drop(st);

        let started = timed.then(Instant::now);
        let round = Round {
            block: false,
            limit: usize::MAX,
            write_timeout: self.limits.write_timeout,
        };
        let Written {
            done,
            offset,
            outcome,
        } = io::write_items(&*sock, &batch, self.transport, offset, round);
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
        // The socket is full: the rest goes back in front of anything queued meanwhile.
        st.queue.put_back(&mut batch, offset);
        self.notice_if_room(&mut st);
        let behind = self.note_behind(&mut st);
        if !st.queue.is_empty() {
            self.wake_writer(st);
        } else if st.closing {
            self.finish(&mut st);
        }
        behind
    }

    /// Whether the client is behind, recording when it fell behind if it just did. The clock
    /// is read only then: a stalled client is found behind on every batch.
    fn note_behind(&self, st: &mut State) -> bool {
        let behind = st.queue.behind();
        if behind && !st.drain.is_behind() {
            st.drain.behind(Instant::now());
        }
        behind
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
        let mut st = self.state.lock();
        if !st.queue.behind() {
            return;
        }
        let deadline = st.drain.deadline(Instant::now(), pacing);
        let mut waited = false;
        loop {
            if st.closed || st.queue.caught_up() {
                return;
            }
            let now = Instant::now();
            let backlog = st.queue.backlog();
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
            st.queue.push_reply(bytes);
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
        st.queue.retain(keep);
        st.queue.push_reply(notice);
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
        let released = st.queue.discard_deliveries();
        self.released(&mut st, released);
        st.queue.push_reply(last);
        st.closing = true;
        drop(st);
        self.flush_or_finish();
    }

    /// Releases the budget of items that were written or discarded.
    fn account(&self, st: &mut State, gone: impl Iterator<Item = Item>) {
        let released = st.queue.release(gone);
        self.released(st, released);
    }

    /// Acts on what releasing items freed: pacing learns the client caught up, and waiting
    /// readers and publishers look again.
    fn released(&self, st: &mut State, released: Released) {
        if released.caught_up {
            st.drain.caught_up();
        }
        if released.drained {
            self.drained.notify_all();
        }
    }

    /// Closes at once: drops the queue, wakes every waiter and shuts the socket down.
    fn fail(&self, st: &mut State) {
        if st.closed {
            return;
        }
        st.closed = true;
        st.closing = true;
        let released = st.queue.clear();
        self.released(st, released);
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
    let msgs = queue::delivered(batch, done);
    if msgs > 0 {
        st.drain.progress(started, Instant::now(), msgs);
    }
}
