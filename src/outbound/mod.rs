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
use io::{Outcome, Round, Written};
use parking_lot::{Condvar, Mutex};
use queue::{Enqueued, Item, Queue, Released};
use std::collections::VecDeque;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

pub use memory::Memory;

/// The wire format of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSocket,
}

/// A connection's queue counters at one moment (see [`Outbound::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Deliveries waiting, including those being written.
    pub queued_msgs: usize,
    /// Bytes they are charged.
    pub queued_bytes: usize,
    /// Deliveries queued since the connection opened (`mist_deliveries_total` per client).
    pub delivered: u64,
    /// Deliveries dropped since the connection opened.
    pub dropped: u64,
    /// The writer thread is running.
    pub writer_running: bool,
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
}

struct State {
    /// What is waiting to be written, and its budgets.
    queue: Queue,
    /// A thread is writing to the socket.
    busy: bool,
    /// The writer thread has been started.
    writer_started: bool,
    /// The writer thread is running: started, and not ended.
    writer_running: bool,
    /// Deliveries queued since the connection opened (for the monitoring endpoints).
    delivered_total: u64,
    /// Deliveries dropped since the connection opened.
    dropped_total: u64,
    /// No new items; shut down once the queue is written.
    closing: bool,
    /// Done: nothing more is written and the writer thread exits.
    closed: bool,
    /// The socket, until the connection is closed. Publishers may keep an `Outbound` in a
    /// match cache after its client left; dropping the socket here lets its descriptor close.
    sock: Option<Arc<TcpStream>>,
}

/// The outbound half of one client connection.
pub struct Outbound {
    transport: Transport,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// The server's queue memory: the pool this queue counts in, and the other queues, to push
    /// out of when the pool is full.
    memory: Arc<Memory>,
    peer: SocketAddr,
    /// When the connection opened.
    since: SystemTime,
    /// A mutex, not a channel: a writer that could only partly write must put the rest back at
    /// the head of the queue, and "queue empty and nobody writing" must be decided atomically
    /// with taking over the socket. Held for pointer moves only.
    state: Mutex<State>,
    /// Wakes the writer thread when work is queued and nobody else is writing.
    work: Condvar,
    /// Wakes a reader waiting for its reply backlog to shrink, or for the connection to close.
    drained: Condvar,
    /// The writer thread, once started, for [`join_writer`](Outbound::join_writer). A mutex
    /// of its own: held while the thread is started and when it is joined, never with
    /// `state`.
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Outbound {
    /// Creates the outbound side of a connection over `sock`.
    pub fn new(
        sock: Arc<TcpStream>,
        transport: Transport,
        limits: Limits,
        metrics: Arc<Metrics>,
        memory: Arc<Memory>,
        peer: SocketAddr,
    ) -> Arc<Outbound> {
        let pool = Arc::clone(&memory.pool);
        let out = Arc::new(Outbound {
            transport,
            limits,
            metrics,
            memory,
            peer,
            since: SystemTime::now(),
            state: Mutex::new(State {
                queue: Queue::new(transport, limits, pool),
                busy: false,
                writer_started: false,
                writer_running: false,
                delivered_total: 0,
                dropped_total: 0,
                closing: false,
                closed: false,
                sock: Some(sock),
            }),
            work: Condvar::new(),
            drained: Condvar::new(),
            writer: Mutex::new(None),
        });
        out.memory.join(&out);
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

    /// When the connection opened.
    pub fn since(&self) -> SystemTime {
        self.since
    }

    /// A copy of the queue's counters, for the monitoring endpoints. The queue lock is held
    /// only to copy them, as when a publisher queues a delivery.
    pub fn stats(&self) -> QueueStats {
        let st = self.state.lock();
        QueueStats {
            queued_msgs: st.queue.msgs(),
            queued_bytes: st.queue.bytes(),
            delivered: st.delivered_total,
            dropped: st.dropped_total,
            writer_running: st.writer_running,
        }
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
            self.memory.make_room(self, need);
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
        st.delivered_total += queued as u64;
        st.dropped_total += dropped as u64;
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
    /// the socket does not take is left to the writer thread: a publisher never waits for a
    /// subscriber.
    pub fn flush(self: &Arc<Self>) {
        let mut st = self.state.lock();
        if st.busy || st.closed || st.queue.is_empty() {
            return;
        }
        let Some(sock) = st.sock.clone() else {
            return;
        };
        st.busy = true;
        let mut batch = VecDeque::new();
        let offset = st.queue.take(&mut batch);
        drop(st);

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
        self.account(&mut st, batch.drain(..done));
        if st.closed {
            self.account(&mut st, batch.drain(..));
            return;
        }
        if let Outcome::Failed(e) = outcome {
            log::debug!("{}: write failed: {e}", self.peer);
            self.account(&mut st, batch.drain(..));
            self.fail(&mut st);
            return;
        }
        // The socket is full: the rest goes back in front of anything queued meanwhile.
        st.queue.put_back(&mut batch, offset);
        self.notice_if_room(&mut st);
        if !st.queue.is_empty() {
            self.wake_writer(st);
        } else if st.closing {
            self.finish(&mut st);
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

    /// Waits until the connection is closed (see [`wait_closed`](Self::wait_closed)) and its
    /// writer thread, if one was started, has ended: the connection's reader thread calls it
    /// last, so that a connection's threads end together and shutdown, waiting for the
    /// readers, waits for the writers too.
    pub fn join_writer(&self) {
        self.wait_closed();
        // Once closed, no writer is started any more; one being started right now holds the
        // mutex until its handle is in.
        let writer = self.writer.lock().take();
        if let Some(handle) = writer {
            let _ = handle.join();
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
        self.released(released);
        st.queue.push_reply(last);
        st.closing = true;
        drop(st);
        self.flush_or_finish();
    }

    /// Releases the budget of items that were written or discarded.
    fn account(&self, st: &mut State, gone: impl Iterator<Item = Item>) {
        let released = st.queue.release(gone);
        self.released(released);
    }

    /// Acts on what releasing items freed: readers waiting for their replies to be read look
    /// again.
    fn released(&self, released: Released) {
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
        self.released(released);
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
