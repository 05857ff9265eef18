//! What every connection shares: the [`Context`] (configuration, index, tokens, counters), and
//! the [`Connections`] it keeps: `max_connections` slots, the registry of open clients, and the
//! connection threads that shutdown waits for.
//!
//! A connection's resources are taken as guards, each given back by its own `Drop`, also when
//! the connection's thread unwinds from a panic:
//!
//! - [`Live`]: the connection's thread is running; shutdown closes its socket and waits for it.
//! - [`Slot`]: one of the `max_connections` slots, from the connection's first byte.
//! - [`Conn`]: the registered client: its id, its outbound queue, its place in the registry and
//!   the connection gauge, its subscriptions, and a WebSocket's admitted token.

use crate::auth::{AccessError, TokenStore, Tokens};
use crate::brake::Brakes;
use crate::broker::{Broker, ClientId, Subscriber};
use crate::config::Config;
use crate::fanout::Fanout;
use crate::metrics::{self, Metrics};
use crate::net;
use crate::outbound::{Limits, Memory, Outbound, Transport};
use crate::pending::PendingHeads;
use crate::tags::TagSet;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What every connection of a server shares: its configuration, subscription index, token
/// rules and counters. Cheap to reach through `Arc<Context>`.
pub struct Context {
    pub(crate) config: Config,
    pub(crate) broker: Broker,
    pub(crate) tokens: Tokens,
    /// The brakes on guessing tokens, and on HTTP sent to the line port.
    pub(crate) brakes: Brakes,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) conns: Connections,
    /// The HTTP request heads being read, bounded in total and per client address.
    pub(crate) pending_heads: Arc<PendingHeads>,
    /// The bytes all clients' queues hold together (`queue_memory_limit`), and the queues.
    pub(crate) queue_memory: Arc<Memory>,
    shutting_down: AtomicBool,
}

impl Context {
    /// The shared state of a server, without its listeners: for a program that accepts
    /// connections itself and hands them to [`crate::serve`] (see `examples/embed.rs`).
    /// [`crate::Server::start`] builds its context with this.
    pub fn new(config: Config, store: Box<dyn TokenStore>) -> Arc<Context> {
        let limit = config.queue_memory_limit_for(usable_memory());
        let queue_memory = Arc::new(Memory::new(limit));
        let metrics = Arc::new(Metrics {
            queue_pool: Arc::clone(&queue_memory.pool),
            ..Metrics::default()
        });
        let broker = Broker::new(Arc::clone(&metrics), config.max_subscriptions);
        let tokens = Tokens::new(store, broker.clone(), Arc::clone(&metrics));
        Arc::new(Context {
            conns: Connections::new(config.max_connections),
            pending_heads: Arc::new(PendingHeads::default()),
            queue_memory,
            config,
            broker,
            tokens,
            brakes: Brakes::new(&metrics),
            metrics,
            shutting_down: AtomicBool::new(false),
        })
    }

    /// Publishes a message from the program itself, as a `publish` line from a client would:
    /// every matching subscriber, TCP or WebSocket, gets it once. Never blocks on a slow
    /// subscriber.
    ///
    /// # Errors
    /// The data contains a newline (TCP subscribers get messages as lines), or the delivery
    /// line would be longer than `max_line_bytes`.
    pub fn publish(&self, tags: &TagSet, data: &[u8]) -> Result<(), PublishError> {
        if data.contains(&b'\n') {
            return Err(PublishError::Newline);
        }
        // The line a client would have sent: `publish TAGS DATA`.
        let len = "publish ".len() + tags.as_str().len() + 1 + data.len();
        if len > self.config.max_line_bytes {
            return Err(PublishError::TooLong(self.config.max_line_bytes));
        }
        let mut fanout = Fanout::new(self.broker.clone());
        fanout.add(tags.as_str().as_bytes(), true, data);
        fanout.flush();
        Ok(())
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The server's counters (what `/metrics` shows).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The token rules: register, change and look up tokens as the admin commands do.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The HTTP request heads being read right now.
    pub fn pending_heads(&self) -> &PendingHeads {
        &self.pending_heads
    }

    /// The open connections: the `max_connections` slots taken.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The connection threads running (writer threads apart); zero once
    /// [`Server::shutdown`](crate::Server::shutdown) has returned.
    pub fn connection_threads(&self) -> usize {
        self.conns.threads()
    }

    /// The bounds of a client's outbound queue.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_msgs: self.config.client_queue,
            max_bytes: self.config.client_queue_bytes,
            write_timeout: self.write_timeout(),
            // Enough for the longest reply to a line command, twice.
            reply_backlog: 2 * self.config.max_line_bytes.max(64 * 1024),
            // A batch is at most one read buffer: a longest line, or the bulk read size.
            max_item_bytes: crate::framing::max_buffer(self.config.max_line_bytes),
        }
    }

    /// How long a write to a client may make no progress before the client is given up as
    /// gone (`write_timeout`).
    pub(crate) fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.config.write_timeout)
    }

    /// True once shutdown has begun.
    pub(crate) fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Marks shutdown as begun: accept loops stop at their next connection.
    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Takes one of the `max_connections` slots; `None` when all are taken.
    pub(crate) fn reserve(self: &Arc<Self>) -> Option<Slot> {
        let prev = self.conns.count.fetch_add(1, Ordering::AcqRel);
        if prev >= self.conns.max {
            self.conns.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot {
            ctx: Arc::clone(self),
        })
    }

    /// Records a connection thread about to start on `sock`, so that shutdown can close its
    /// socket and wait for it. Taken on the accepting thread, before the connection's thread
    /// exists, and moved into it.
    pub(crate) fn track(self: &Arc<Self>, sock: &Arc<TcpStream>) -> Live {
        let mut threads = self.conns.threads.lock();
        let key = threads.next;
        threads.next += 1;
        threads.sockets.insert(key, Arc::clone(sock));
        Live {
            ctx: Arc::clone(self),
            key,
        }
    }

    /// Registers a line-protocol client on a connection that holds `slot`: sets the socket's
    /// options, gives the client an id and an outbound queue, and records it in the registry
    /// and the connection gauge. Dropping the returned [`Conn`] undoes all of it and gives the
    /// slot back.
    pub(crate) fn register(
        self: &Arc<Self>,
        slot: Slot,
        sock: Arc<TcpStream>,
        peer: SocketAddr,
    ) -> Conn {
        let sub = self.new_client(sock, peer, Transport::Tcp);
        self.record(slot, sub, None)
    }

    /// Registers a WebSocket client as [`register`](Self::register) does, if its token is
    /// admitted; the token is then recorded so that revocations reach the connection, until
    /// the [`Conn`] is dropped.
    ///
    /// # Errors
    /// The token is refused or the token store is unavailable; the slot is given back.
    pub(crate) fn admit(
        self: &Arc<Self>,
        slot: Slot,
        sock: Arc<TcpStream>,
        peer: SocketAddr,
        token: String,
    ) -> Result<Conn, AccessError> {
        let sub = self.new_client(sock, peer, Transport::WebSocket);
        self.tokens.admit(&token, sub.id, &sub.out)?;
        Ok(self.record(slot, sub, Some(token)))
    }

    /// A client id and an outbound queue for a connection, with its socket options set.
    fn new_client(
        &self,
        sock: Arc<TcpStream>,
        peer: SocketAddr,
        transport: Transport,
    ) -> Subscriber {
        if let Err(e) = net::configure_socket(&sock, self.write_timeout()) {
            log::warn!("{peer}: cannot set socket options: {e}");
        }
        let id = self.broker.next_client_id();
        let out = Outbound::new(
            sock,
            transport,
            self.limits(),
            Arc::clone(&self.metrics),
            Arc::clone(&self.queue_memory),
            peer,
        );
        Subscriber { id, out }
    }

    /// Records a client in the registry and the gauge; the returned guard undoes it.
    fn record(self: &Arc<Self>, slot: Slot, sub: Subscriber, token: Option<String>) -> Conn {
        self.conns.open.lock().insert(sub.id, Arc::clone(&sub.out));
        metrics::add(self.gauge(sub.out.transport()), 1);
        Conn {
            ctx: Arc::clone(self),
            sub,
            token,
            _slot: slot,
        }
    }

    /// The open-connections gauge of a transport.
    fn gauge(&self, transport: Transport) -> &AtomicU64 {
        match transport {
            Transport::Tcp => &self.metrics.tcp_connections,
            Transport::WebSocket => &self.metrics.ws_connections,
        }
    }
}

/// The bytes of memory this process may use: the machine's, or its control group's limit
/// (`memory.max`, cgroup v2) when that is lower, as in a container or under a systemd unit
/// with `MemoryMax`. `queue_memory_limit` defaults to a quarter of it.
pub fn usable_memory() -> u64 {
    // SAFETY: sysconf only reads the system's configuration.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let physical = match (u64::try_from(pages), u64::try_from(page)) {
        (Ok(pages), Ok(page)) if pages > 0 && page > 0 => pages.saturating_mul(page),
        // Unknown: as if the machine had 4 GiB, a 1 GiB bound on all queues.
        _ => 4 << 30,
    };
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    cgroup.map_or(physical, |c| c.min(physical))
}

/// Why [`Context::publish`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("data contains a newline")]
    Newline,
    #[error("message longer than max_line_bytes ({0})")]
    TooLong(usize),
}

/// Open connections: their slots against `max_connections`, the queues of registered clients,
/// and the running connection threads, so shutdown can close them all and wait for them.
pub(crate) struct Connections {
    max: usize,
    /// Slots taken.
    count: AtomicUsize,
    /// A mutex: touched once per connect and disconnect, and by shutdown.
    open: Mutex<HashMap<ClientId, Arc<Outbound>>>,
    /// A mutex: touched once per connection thread's start and end, and by shutdown.
    threads: Mutex<Threads>,
    /// Signalled when the last connection thread ends.
    ended: Condvar,
}

/// The running connection threads, by a key of their own, with their sockets.
#[derive(Default)]
struct Threads {
    next: u64,
    sockets: HashMap<u64, Arc<TcpStream>>,
}

impl Connections {
    fn new(max: usize) -> Connections {
        Connections {
            max,
            count: AtomicUsize::new(0),
            open: Mutex::new(HashMap::new()),
            threads: Mutex::new(Threads::default()),
            ended: Condvar::new(),
        }
    }

    /// The number of open connections: slots taken.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// The `max_connections` in force.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The registered connections' queues, copied out so that no lock is held while they are
    /// looked at (for the monitoring endpoints).
    pub fn snapshot(&self) -> Vec<(ClientId, Arc<Outbound>)> {
        let open = self.open.lock();
        open.iter()
            .map(|(&id, out)| (id, Arc::clone(out)))
            .collect()
    }

    /// The number of connection threads running (one per connection; writer threads are not
    /// counted).
    fn threads(&self) -> usize {
        self.threads.lock().sockets.len()
    }

    /// Closes every connection: registered clients' queues are dropped and their sockets shut
    /// down, and so are the sockets of connections not registered yet (an HTTP request head
    /// being read, a thread that has not got that far). Their threads then end on their own.
    pub(crate) fn close_all(&self) {
        let open: Vec<Arc<Outbound>> = self.open.lock().values().cloned().collect();
        for out in open {
            out.close();
        }
        let sockets: Vec<Arc<TcpStream>> = self.threads.lock().sockets.values().cloned().collect();
        for sock in sockets {
            let _ = sock.shutdown(Shutdown::Both);
        }
    }

    /// Waits, at most `within`, for every connection thread to end; returns how many are
    /// still running.
    pub(crate) fn wait_for_threads(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        let mut threads = self.threads.lock();
        while !threads.sockets.is_empty() {
            if self.ended.wait_until(&mut threads, deadline).timed_out() {
                break;
            }
        }
        threads.sockets.len()
    }
}

/// One of the `max_connections` slots; given back when dropped.
pub(crate) struct Slot {
    ctx: Arc<Context>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.ctx.conns.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running connection thread; dropped as the thread's last act, which lets a waiting
/// shutdown finish.
pub(crate) struct Live {
    ctx: Arc<Context>,
    key: u64,
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut threads = self.ctx.conns.threads.lock();
        threads.sockets.remove(&self.key);
        if threads.sockets.is_empty() {
            self.ctx.conns.ended.notify_all();
        }
    }
}

/// A registered client (see [`Context::register`]). Dropping it removes the client from the
/// index, detaches its token, closes its queue once written, forgets it in the registry and
/// the gauge, and gives its slot back.
pub(crate) struct Conn {
    ctx: Arc<Context>,
    /// The client as the index and the publishers see it.
    pub(crate) sub: Subscriber,
    /// The token a WebSocket was admitted with.
    token: Option<String>,
    /// Dropped after `drop` has run: the slot is given back last.
    _slot: Slot,
}

impl Conn {
    /// The token a WebSocket was admitted with.
    pub(crate) fn token(&self) -> &str {
        self.token.as_deref().unwrap_or_default()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let ctx = &self.ctx;
        let id = self.sub.id;
        ctx.broker.remove_client(id);
        if let Some(token) = &self.token {
            ctx.tokens.detach(token, id);
        }
        self.sub.out.close_after_flush(None);
        ctx.conns.open.lock().remove(&id);
        metrics::sub(ctx.gauge(self.sub.out.transport()), 1);
    }
}
