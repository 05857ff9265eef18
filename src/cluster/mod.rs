//! Several nodes as one mist (`cluster postgres`): the bus that carries publishes and token
//! changes from each node to the others.
//!
//! ```text
//!  publisher ─> Fanout ─> local subscribers (as on a single node)
//!                 │ try_send (never waits; full: the bus copy is dropped and counted)
//!                 v
//!   bounded channel ─> sender thread ─ packs records into payloads ─> Engine (NOTIFY)
//!                                                                        │
//!   local subscribers <─ Fanout <─ Inbox <─ listener thread <┘ (LISTEN)
//! ```
//!
//! The broker knows only the [`Relay`] it hands local publishes and token changes to. The
//! threads, the packing ([`codec`]) and the reading of payloads ([`inbox`]) are the same for
//! every engine; an [`Engine`] only moves text payloads between nodes, so another one (Redis,
//! NATS) is one more module like [`postgres`].
//!
//! # Invariants
//!
//! - A publisher never waits for the bus: it hands an `Arc` of its batch to a bounded channel
//!   with `try_send`, or drops the bus copy (counted, logged once per episode). Local delivery
//!   does not depend on the bus at all.
//! - Messages published here are delivered here directly and never read back: each node has a
//!   random id, new at every start, and skips payloads that carry it.
//! - One sender thread sends a node's payloads one unit (transaction) at a time, so they reach
//!   every node in the order the node's publishers handed them over; a message is never split
//!   across units.
//! - The listener thread never waits for local subscribers (no publisher does), and never
//!   holds the index lock or a queue lock while it talks to the engine.
//! - Messages are delivered at most once: nothing is resent after a failure. While a node is
//!   cut off it serves its own clients; what the others publish meanwhile does not reach it.

pub mod codec;
pub mod inbox;
mod listener;
pub mod postgres;
mod sender;

use crate::message::Batch;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

pub use crate::metrics::BusMetrics;
pub use crate::relay::{Relay, TokenChange};
pub use codec::Charset;

/// The engine's own error, with its causes.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the bus could not be reached or used; the engine's error says why.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The connection could not be made, or was lost.
    #[error(transparent)]
    Lost(Cause),
    /// The engine refused what was sent; the connection is fine.
    #[error(transparent)]
    Refused(Cause),
    /// A thread of the bus could not be started.
    #[error("cannot start the thread {name}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A bus engine: something that carries text payloads from each node to all of them.
pub trait Engine: Send + Sync + 'static {
    /// Where the engine is, for log lines (`PostgreSQL at 127.0.0.1:5432, database mist`).
    fn describe(&self) -> String;
    /// The longest payload, in bytes.
    fn max_payload(&self) -> usize;
    /// A connection to send on.
    ///
    /// # Errors
    /// The engine cannot be reached.
    fn connect_sender(&self, node: &str) -> Result<Box<dyn Outgoing>, BusError>;
    /// A connection that receives every node's payloads from now on.
    ///
    /// # Errors
    /// The engine cannot be reached.
    fn connect_listener(&self, node: &str) -> Result<Box<dyn Incoming>, BusError>;
}

/// A connection that sends.
pub trait Outgoing: Send {
    /// What payloads may hold unescaped on this engine.
    fn charset(&self) -> Charset;
    /// Sends payloads as one unit: every listening node receives all of them, together and in
    /// this order, or none.
    ///
    /// # Errors
    /// `Lost` when the connection is gone, `Refused` when only this unit failed.
    fn send(&mut self, payloads: &[String]) -> Result<(), BusError>;
    /// How full the engine's shared queue is, from 0 to 1, when it has one.
    ///
    /// # Errors
    /// The connection is gone.
    fn queue_usage(&mut self) -> Result<Option<f64>, BusError>;
}

/// A connection that receives.
pub trait Incoming: Send {
    /// Waits at most `timeout` for payloads, then appends those that have arrived, at most
    /// `max`, to `out`. Returns how many were appended (0: none came in time).
    ///
    /// # Errors
    /// The connection is gone.
    fn receive(
        &mut self,
        timeout: Duration,
        max: usize,
        out: &mut Vec<String>,
    ) -> Result<usize, BusError>;
}

/// Most batches waiting for the sender thread.
pub const QUEUE_BATCHES: usize = 65_536;
/// Most bytes of messages waiting for the sender thread (64 MiB): at 250,000 messages/s of
/// 64 bytes, a second and a half of traffic.
pub const QUEUE_BYTES: usize = 64 << 20;
/// Longest wait between two attempts to reconnect.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The part of the bus that publishers and token changes reach: it implements [`Relay`].
struct Outlet {
    data: Sender<Arc<Batch>>,
    control: Sender<OwnedChange>,
    /// True while the sending connection is up; when down, bus copies are dropped at once
    /// instead of filling the channel with messages that would arrive late.
    up: AtomicBool,
    /// Inside a run of drops, which is logged when it starts and when it ends.
    dropping: AtomicBool,
    /// Drops in the current run.
    run_drops: AtomicU64,
    metrics: Arc<BusMetrics>,
}

/// A token change, owned, on its way to the sender thread.
#[derive(Debug, Clone)]
enum OwnedChange {
    Unregistered(Vec<u8>),
    Unset(Vec<u8>),
}

impl OwnedChange {
    fn as_change(&self) -> TokenChange<'_> {
        match self {
            OwnedChange::Unregistered(t) => TokenChange::Unregistered(t),
            OwnedChange::Unset(t) => TokenChange::Unset(t),
        }
    }
}

impl Outlet {
    /// Counts bus copies that were not sent, and logs the start of a run of drops.
    fn dropped(&self, n: u64, why: &str) {
        crate::metrics::add(&self.metrics.messages_dropped, n);
        self.run_drops.fetch_add(n, Relaxed);
        if !self.dropping.swap(true, Relaxed) {
            log::warn!(
                "bus: messages published on this node are not reaching the other nodes ({why}); \
                 local subscribers still get them"
            );
        }
    }

    /// Ends a run of drops (a unit was sent), logging how many were lost.
    fn sent_again(&self) {
        if self.dropping.load(Relaxed) && self.dropping.swap(false, Relaxed) {
            let n = self.run_drops.swap(0, Relaxed);
            log::warn!("bus: sending to the other nodes again; {n} messages did not reach them");
        }
    }
}

impl Relay for Outlet {
    fn publish(&self, batch: &Arc<Batch>) {
        let n = batch.len() as u64;
        if !self.up.load(Relaxed) {
            self.dropped(n, "the bus is down");
            return;
        }
        let size = batch.lines().len();
        let queued = self.metrics.queued_bytes.fetch_add(size, Relaxed);
        if queued + size > QUEUE_BYTES {
            self.metrics.queued_bytes.fetch_sub(size, Relaxed);
            self.dropped(n, "the bus queue is full");
            return;
        }
        if let Err(e) = self.data.try_send(Arc::clone(batch)) {
            self.metrics.queued_bytes.fetch_sub(size, Relaxed);
            match e {
                TrySendError::Full(_) => self.dropped(n, "the bus queue is full"),
                // Shutting down.
                TrySendError::Disconnected(_) => {}
            }
        }
    }

    fn token_changed(&self, change: TokenChange<'_>) {
        let owned = match change {
            TokenChange::Unregistered(t) => OwnedChange::Unregistered(t.to_vec()),
            TokenChange::Unset(t) => OwnedChange::Unset(t.to_vec()),
        };
        // Unbounded: token changes are rare admin commands, and must not be dropped.
        let _ = self.control.send(owned);
    }
}

/// A node's place on the bus: its threads, until [`Bus::stop`].
pub struct Bus {
    /// Dropped to stop the threads: their `select` on its receiver wakes at once.
    stop: Mutex<Option<Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A random node id, new at every start: a restarted node must not be taken for its old self,
/// whose payloads other nodes may still be reading.
fn random_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

impl Bus {
    /// Joins the bus: connects both directions (so a bus that cannot be reached stops
    /// start-up), installs the relay in the broker, and starts the sender and listener
    /// threads.
    ///
    /// # Errors
    /// The engine cannot be reached.
    pub fn start(
        engine: Box<dyn Engine>,
        engine_name: &'static str,
        node: &str,
        ctx: &Arc<crate::Context>,
    ) -> Result<Bus, BusError> {
        let engine: Arc<dyn Engine> = Arc::from(engine);
        let listen = engine.connect_listener(node)?;
        let send = engine.connect_sender(node)?;
        let id = random_id();
        let metrics = Arc::new(BusMetrics {
            node: node.to_string(),
            engine: engine_name,
            send_up: AtomicU64::new(1),
            listen_up: AtomicU64::new(1),
            ..BusMetrics::default()
        });
        let (data_tx, data_rx) = crossbeam_channel::bounded(QUEUE_BATCHES);
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let outlet = Arc::new(Outlet {
            data: data_tx,
            control: control_tx,
            up: AtomicBool::new(true),
            dropping: AtomicBool::new(false),
            run_drops: AtomicU64::new(0),
            metrics: Arc::clone(&metrics),
        });
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let sender = sender::SenderThread {
            engine: Arc::clone(&engine),
            node: node.to_string(),
            id,
            outlet: Arc::clone(&outlet),
            data: data_rx,
            control: control_rx,
            stop: stop_rx.clone(),
        };
        let listener = listener::ListenerThread {
            engine: Arc::clone(&engine),
            node: node.to_string(),
            id,
            ctx: Arc::clone(ctx),
            metrics: Arc::clone(&metrics),
            stop: stop_rx,
        };
        let mut threads = vec![spawn("mist-bus-send", move || sender.run(send))?];
        match spawn("mist-bus-listen", move || listener.run(listen)) {
            Ok(t) => threads.push(t),
            Err(e) => {
                // The sender stops when the stop channel closes.
                drop(stop_tx);
                for t in threads {
                    let _ = t.join();
                }
                return Err(e);
            }
        }
        ctx.broker.set_relay(outlet);
        let _ = ctx.metrics.bus.set(Arc::clone(&metrics));
        log::info!(
            "bus: node {node} (id {id:016x}) joined the cluster through {}",
            engine.describe()
        );
        Ok(Bus {
            stop: Mutex::new(Some(stop_tx)),
            threads: Mutex::new(threads),
        })
    }

    /// Stops the threads and waits for them.
    pub fn stop(&self) {
        drop(self.stop.lock().take());
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

fn spawn(
    name: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, BusError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|source| BusError::Thread { name, source })
}

/// Waits `d`, or less when the bus is stopping. Returns true when it is.
fn wait_or_stop(stop: &Receiver<()>, d: Duration) -> bool {
    !matches!(
        stop.recv_timeout(d),
        Err(crossbeam_channel::RecvTimeoutError::Timeout)
    )
}

/// Reconnection delays: 100 ms, doubling up to [`MAX_BACKOFF`].
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(100))
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        d
    }
}

#[cfg(test)]
mod tests;
