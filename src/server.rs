//! The server: listeners, the shared [`Context`], the connection registry and shutdown.

use crate::auth::{TokenStore, Tokens};
use crate::broker::{Broker, ClientId};
use crate::config::Config;
use crate::fanout::Fanout;
use crate::metrics::{self, Metrics};
use crate::outbound::{Limits, Outbound};
use crate::tags::TagSet;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Stack size of connection threads. They parse, match and copy; nothing recursive runs on
/// them except JSON parsing, which `serde_json` bounds at 128 levels. Small stacks are what let
/// 10,000 connections (20,000 threads) fit in a small host's memory.
pub const CONN_STACK: usize = 128 * 1024;
/// WebSocket readers parse JSON, so they get more. serde_json stops at 128 levels of nesting,
/// and parsing that deep takes under 48 KiB of stack in a release build, so 256 KiB leaves
/// ample room for the rest of the thread. An unoptimised (debug) build needs about 224 KiB for
/// the parse alone, and overflowed 256 KiB, aborting the whole process, on a frame of deeply
/// nested JSON; it gets 1 MiB. Stack memory is only committed as it is touched, so the size
/// costs address space, not resident memory. `tests/it/hostile.rs` sends such frames.
pub const WS_STACK: usize = if cfg!(debug_assertions) {
    1024 * 1024
} else {
    256 * 1024
};

/// What every connection shares. Cheap to reach through `Arc<Context>`.
pub struct Context {
    pub config: Config,
    pub broker: Broker,
    pub tokens: Tokens,
    pub metrics: Arc<Metrics>,
    pub conns: Connections,
    shutting_down: AtomicBool,
}

impl Context {
    /// The shared state of a server, without its listeners: for a program that accepts
    /// connections itself and hands them to [`crate::ws::serve`] (see `examples/embed.rs`).
    /// [`Server::start`] builds its context with this.
    pub fn new(config: Config, store: Box<dyn TokenStore>) -> Arc<Context> {
        let metrics = Arc::new(Metrics::default());
        let broker = Broker::new(Arc::clone(&metrics), config.max_subscriptions);
        let tokens = Tokens::new(store, broker.clone(), Arc::clone(&metrics));
        Arc::new(Context {
            conns: Connections::new(config.max_connections),
            config,
            broker,
            tokens,
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

    /// The bounds of a client's outbound queue.
    pub fn limits(&self) -> Limits {
        Limits {
            max_msgs: self.config.client_queue,
            max_bytes: self.config.client_queue_bytes,
            write_timeout: self.write_timeout(),
            // Enough for the longest reply to a line command, twice.
            reply_backlog: 2 * self.config.max_line_bytes.max(64 * 1024),
            // A batch is at most one read buffer: a longest line, or the bulk read size.
            max_item_bytes: crate::framing::max_buffer(self.config.max_line_bytes),
            pacing: Duration::from_millis(self.config.publisher_pacing),
        }
    }

    /// How long a write to a client may make no progress before the client is given up as
    /// gone (`write_timeout`).
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.config.write_timeout)
    }

    /// True once shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// Why [`Context::publish`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("data contains a newline")]
    Newline,
    #[error("message longer than max_line_bytes ({0})")]
    TooLong(usize),
}

/// Open connections: their count against `max_connections`, and their queues, so shutdown can
/// close them.
pub struct Connections {
    max: usize,
    count: AtomicUsize,
    /// A mutex: touched once per connect and disconnect, and by shutdown.
    open: Mutex<HashMap<ClientId, Arc<Outbound>>>,
}

impl Connections {
    fn new(max: usize) -> Connections {
        Connections {
            max,
            count: AtomicUsize::new(0),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one of the `max_connections` slots; false when all are taken.
    pub fn try_reserve(&self) -> bool {
        let prev = self.count.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives a slot back.
    pub fn release(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }

    /// Records an open connection's queue.
    pub fn insert(&self, id: ClientId, out: Arc<Outbound>) {
        self.open.lock().insert(id, out);
    }

    /// Forgets a closed connection.
    pub fn remove(&self, id: ClientId) {
        self.open.lock().remove(&id);
    }

    /// The number of open connections.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn close_all(&self) {
        let open: Vec<Arc<Outbound>> = self.open.lock().values().cloned().collect();
        for out in open {
            out.close();
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
}

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    ctx: Arc<Context>,
    tcp_addr: SocketAddr,
    http_addr: SocketAddr,
    acceptors: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds the listeners and starts accepting.
    ///
    /// # Errors
    /// A listener cannot be bound.
    pub fn start(config: Config, store: Box<dyn TokenStore>) -> Result<Server, StartError> {
        raise_fd_limit();
        let tcp = bind(&config.tcp_listen_address)?;
        let http = bind(&config.http_listen_address)?;
        let tcp_addr = tcp.local_addr().expect("bound sockets have an address");
        let http_addr = http.local_addr().expect("bound sockets have an address");
        let ctx = Context::new(config, store);
        let acceptors = vec![
            spawn_acceptor("mist-accept-tcp", tcp, Arc::clone(&ctx), crate::tcp::accept),
            spawn_acceptor(
                "mist-accept-http",
                http,
                Arc::clone(&ctx),
                crate::http::accept,
            ),
        ];
        // Only now: once these lines are logged, the server is complete (the accept threads
        // run), which is what a supervisor or a test watching the log waits for.
        log::info!("listening for TCP clients on {tcp_addr}");
        log::info!("listening for HTTP and WebSocket clients on {http_addr}");
        Ok(Server {
            ctx,
            tcp_addr,
            http_addr,
            acceptors,
        })
    }

    /// The address of the line-protocol listener.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The address of the HTTP and WebSocket listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The shared state, for embedding and tests.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Stops accepting, closes every client and waits for the listeners to stop.
    pub fn shutdown(self) {
        self.ctx.shutting_down.store(true, Ordering::Release);
        // A blocking accept() only returns on a connection: make one to each listener.
        for addr in [self.tcp_addr, self.http_addr] {
            let _ = TcpStream::connect_timeout(&reachable(addr), Duration::from_millis(500));
        }
        for handle in self.acceptors {
            let _ = handle.join();
        }
        self.ctx.conns.close_all();
        log::info!("stopped");
    }
}

/// The address to connect to in order to reach a listener bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
        }
        other => other,
    }
}

fn bind(addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).map_err(|source| StartError::Bind {
        addr: addr.to_string(),
        source,
    })
}

type Handler = fn(&Arc<Context>, TcpStream, SocketAddr);

fn spawn_acceptor(
    name: &str,
    listener: TcpListener,
    ctx: Arc<Context>,
    handler: Handler,
) -> JoinHandle<()> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || accept_loop(&listener, &ctx, handler))
        .expect("cannot start a listener thread")
}

fn accept_loop(listener: &TcpListener, ctx: &Arc<Context>, handler: Handler) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if ctx.shutting_down() {
                    return;
                }
                metrics::add(&ctx.metrics.connections_accepted, 1);
                handler(ctx, stream, peer);
            }
            Err(e) => {
                if ctx.shutting_down() {
                    return;
                }
                // Out of descriptors or memory: back off instead of spinning on the error.
                log::error!("accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit: each connection takes one.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                log::warn!(
                    "cannot raise the open-files limit: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

/// Idle time before the first keepalive probe.
pub const KEEPALIVE_TIME: Duration = Duration::from_secs(60);
/// Time between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the kernel drops the connection: a peer that vanished
/// (unplugged, rebooted, behind a NAT that forgot it) is noticed within about two minutes.
pub const KEEPALIVE_RETRIES: u32 = 6;

/// Sets the options every client socket gets: no Nagle delay (replies and deliveries are
/// already batched), keepalive (to notice peers that vanished), and the write timeout (a
/// blocking write that makes no progress for that long fails, and the peer is given up).
pub fn configure_socket(stream: &TcpStream, write_timeout: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(write_timeout))?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options are really set on the socket, as the kernel reports them back.
    #[test]
    fn client_sockets_get_keepalive_nodelay_and_the_write_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let sock = socket2::SockRef::from(&server_side);
        assert!(!sock.keepalive().unwrap());
        configure_socket(&server_side, Duration::from_secs(7)).unwrap();
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_TIME);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
        assert!(server_side.nodelay().unwrap());
        assert_eq!(
            server_side.write_timeout().unwrap(),
            Some(Duration::from_secs(7))
        );
    }
}
