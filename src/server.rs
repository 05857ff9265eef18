//! The server: its two listeners, their accept loops, and shutdown.

use crate::auth::TokenStore;
use crate::capacity::{self, Kernel};
use crate::cluster::postgres::PgEngine;
use crate::cluster::{Bus, BusError};
use crate::config::{AuthStore, Cluster, Config, DEFAULT_MONITOR_ADDRESS, default_node_name};
use crate::context::Context;
use crate::health::{BusProbe, Health, PgProbe, Probe};
use crate::metrics;
use crate::monitor::{Identity, Monitor};
use crate::net;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

/// How long shutdown waits for connection threads to end once their sockets are closed. They
/// end at once unless one is waiting on the token store (PostgreSQL: at most a checkout and a
/// statement, 5 s each).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the server could not start; the source says why.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the thread {name}")]
    Thread {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("cannot join the cluster")]
    Cluster(#[source] BusError),
}

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    ctx: Arc<Context>,
    tcp_addr: SocketAddr,
    http_addr: SocketAddr,
    acceptors: Vec<JoinHandle<()>>,
    /// The node's place in its cluster, with `cluster postgres`.
    bus: Option<Bus>,
    /// The monitoring listener, unless `monitor_listen_address off`.
    monitor: Option<Monitor>,
}

impl Server {
    /// Binds the listeners and starts accepting.
    ///
    /// # Errors
    /// A listener cannot be bound, or its accept thread cannot be started (the other one is
    /// stopped then); the config breaks a rule that spans keys; the cluster's bus cannot be
    /// reached.
    pub fn start(config: Config, store: Box<dyn TokenStore>) -> Result<Server, StartError> {
        config.check().map_err(StartError::Config)?;
        net::raise_fd_limit();
        for shortfall in capacity::warnings(config.max_connections as u64, &Kernel::read()) {
            log::warn!(
                "max_connections {} cannot be reached: {shortfall}",
                config.max_connections
            );
        }
        // Read now, while descriptors are to spare: read first when the process is out of
        // them, it would fail and leave no budget at all.
        capacity::read_thread_budget();
        let somaxconn = somaxconn();
        let backlog = listen_backlog(config.max_connections, somaxconn);
        log::debug!(
            "listen backlog {backlog} (max_connections {}, net.core.somaxconn {})",
            config.max_connections,
            somaxconn.map_or("unknown".to_string(), |n| n.to_string())
        );
        let (tcp, tcp_addr) = bind(&config.tcp_listen_address, backlog)?;
        let (http, http_addr) = bind(&config.http_listen_address, backlog)?;
        let monitor = bind_monitor(config.monitor_listen_address.as_deref())?;
        let node = config
            .node_name
            .clone()
            .unwrap_or_else(|| default_node_name(&host_name(), tcp_addr.port()));
        let ctx = Context::new(config, store);
        let _ = ctx.metrics.node_name.set(node.clone());
        // Joined before the listeners accept anyone, so no client ever sees a node that is
        // not yet part of its cluster.
        let bus = match ctx.config.cluster {
            Cluster::None => None,
            Cluster::Postgres => {
                let engine = PgEngine::new(&ctx.config.pg).map_err(StartError::Cluster)?;
                Some(
                    Bus::start(Box::new(engine), "postgres", &node, &ctx)
                        .map_err(StartError::Cluster)?,
                )
            }
        };
        log::info!("node {node}");
        log_queue_limits(&ctx);
        let monitor = match monitor {
            Some(listener) => {
                let identity = Identity {
                    node_name: node.clone(),
                    tcp: tcp_addr,
                    http: http_addr,
                    started: SystemTime::now(),
                };
                let health = Health::start(probes(&ctx));
                let m = Monitor::start(listener, Arc::clone(&ctx), identity, health).map_err(
                    |source| StartError::Thread {
                        name: "mist-monitor",
                        source,
                    },
                )?;
                log::info!("monitoring on http://{}", m.addr());
                Some(m)
            }
            None => None,
        };
        let mut server = Server {
            ctx,
            tcp_addr,
            http_addr,
            acceptors: Vec::new(),
            bus,
            monitor,
        };
        let listeners: [(&'static str, &'static str, TcpListener, Handler); 2] = [
            ("mist-accept-tcp", "TCP listener", tcp, crate::tcp::accept),
            (
                "mist-accept-http",
                "HTTP listener",
                http,
                crate::http::accept,
            ),
        ];
        for (name, what, listener, handler) in listeners {
            match spawn_acceptor((name, what), listener, Arc::clone(&server.ctx), handler) {
                Ok(handle) => server.acceptors.push(handle),
                Err(source) => {
                    server.stop();
                    return Err(StartError::Thread { name, source });
                }
            }
        }
        // Only now: once these lines are logged, the server is complete (the accept threads
        // run), which is what a supervisor or a test watching the log waits for.
        log::info!("listening for TCP clients on {tcp_addr}");
        log::info!("listening for HTTP and WebSocket clients on {http_addr}");
        Ok(server)
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

    /// The address of the monitoring listener, unless it is `off`.
    pub fn monitor_addr(&self) -> Option<SocketAddr> {
        self.monitor.as_ref().map(Monitor::addr)
    }

    /// Stops accepting, closes every connection, and waits for the listeners and (at most
    /// `SHUTDOWN_GRACE`, 10 s) for the connections' threads to end.
    pub fn shutdown(mut self) {
        self.stop();
        log::info!("stopped");
    }

    fn stop(&mut self) {
        self.ctx.begin_shutdown();
        for addr in [self.tcp_addr, self.http_addr] {
            net::wake_accept(addr);
        }
        for handle in self.acceptors.drain(..) {
            let _ = handle.join();
        }
        // No more deliveries from other nodes.
        if let Some(bus) = &self.bus {
            bus.stop();
        }
        // No connection thread starts any more: every one is in the registry.
        self.ctx.conns.close_all();
        let left = self.ctx.conns.wait_for_threads(SHUTDOWN_GRACE);
        if left > 0 {
            log::warn!("{left} connection threads still running after {SHUTDOWN_GRACE:?}");
        }
        if let Some(m) = self.monitor.take() {
            m.shutdown();
        }
    }
}

/// What `/healthz` checks besides the server itself: PostgreSQL when the token store uses it,
/// and the cluster bus's links when the node is part of a cluster.
fn probes(ctx: &Context) -> Vec<Box<dyn Probe>> {
    let mut probes: Vec<Box<dyn Probe>> = Vec::new();
    if ctx.config.auth_store == AuthStore::Postgres {
        probes.push(Box::new(PgProbe::new("token store", &ctx.config.pg)));
    }
    if let Some(bus) = ctx.metrics.bus.get() {
        probes.push(Box::new(BusProbe::new(Arc::clone(bus))));
    }
    probes
}

/// Binds the monitoring listener. The built-in default address is allowed to be taken (by
/// another mist on the same host, say): the server then runs without it, with a warning. An
/// address that was configured must be bound.
fn bind_monitor(addr: Option<&str>) -> Result<Option<TcpListener>, StartError> {
    let Some(addr) = addr else { return Ok(None) };
    match bind(addr, 128) {
        Ok((l, _)) => Ok(Some(l)),
        Err(StartError::Bind { source, .. })
            if addr == DEFAULT_MONITOR_ADDRESS && source.kind() == io::ErrorKind::AddrInUse =>
        {
            log::warn!(
                "the monitoring listener is off: {addr} is in use (set monitor_listen_address)"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Says at start how much the queues may hold, and warns about a per-client bound that the
/// longest messages do not fit.
fn log_queue_limits(ctx: &Context) {
    let c = &ctx.config;
    let limit = ctx.queue_memory.pool.limit();
    let how = if c.queue_memory_limit.is_some() {
        "queue_memory_limit"
    } else {
        "queue_memory_limit: a quarter of this machine's memory"
    };
    log::info!(
        "client queues hold at most {} MiB together ({how}), {} MiB each (client_queue_bytes)",
        limit >> 20,
        c.client_queue_bytes >> 20
    );
    if c.client_queue_bytes < c.max_line_bytes {
        log::warn!(
            "client_queue_bytes ({}) is below max_line_bytes ({}): a message longer than a \
             queue is never delivered, and its subscribers get a slow-consumer notice instead",
            c.client_queue_bytes,
            c.max_line_bytes
        );
    }
}

/// This machine's host name, or empty when it has none.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The fewest connections a listener queues for `accept`: what std's `TcpListener::bind`
/// asks for.
pub const MIN_BACKLOG: usize = 128;

/// The listen backlog: room for `max_connections` clients connecting at once (a load balancer
/// failing thousands of WebSockets over to this node), so that a burst is queued by the kernel
/// instead of having SYNs dropped and retried a second later. At least [`MIN_BACKLOG`], and at
/// most `somaxconn`, the kernel's cap (it would silently cut a larger value down). Pure.
pub fn listen_backlog(max_connections: usize, somaxconn: Option<usize>) -> i32 {
    let want = max_connections.max(MIN_BACKLOG);
    let capped = somaxconn.map_or(want, |cap| want.min(cap));
    i32::try_from(capped).unwrap_or(i32::MAX)
}

/// The kernel's cap on listen backlogs, `net.core.somaxconn`; `None` where it cannot be read.
pub fn somaxconn() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Binds a listener on the first of `addr`'s addresses that can be bound (as
/// `TcpListener::bind` does), with a listen backlog of `backlog`; returns it with the address
/// it got (the port, for `:0`).
///
/// # Errors
/// The address does not resolve, or no address of it can be bound.
pub fn bind(addr: &str, backlog: i32) -> Result<(TcpListener, SocketAddr), StartError> {
    let failed = |source| StartError::Bind {
        addr: addr.to_string(),
        source,
    };
    let mut last = io::Error::new(
        io::ErrorKind::InvalidInput,
        "could not resolve to any addresses",
    );
    for a in addr.to_socket_addrs().map_err(failed)? {
        match listen_on(a, backlog).and_then(|l| Ok((l.local_addr()?, l))) {
            Ok((local, listener)) => return Ok((listener, local)),
            Err(e) => last = e,
        }
    }
    Err(failed(last))
}

fn listen_on(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std does: a restarted server can bind its port while old connections linger.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

type Handler = fn(&Arc<Context>, TcpStream, SocketAddr);

/// Starts the accept thread `name` of `listener`, called `what` in the log.
fn spawn_acceptor(
    (name, what): (&'static str, &'static str),
    listener: TcpListener,
    ctx: Arc<Context>,
    handler: Handler,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || accept_loop(&listener, &ctx, handler, what))
}

fn accept_loop(listener: &TcpListener, ctx: &Arc<Context>, handler: Handler, what: &'static str) {
    let mut errors = net::AcceptErrors::new(what);
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if ctx.shutting_down() {
                    return;
                }
                errors.accepted();
                metrics::add(&ctx.metrics.connections_accepted, 1);
                handler(ctx, stream, peer);
            }
            Err(e) => {
                if ctx.shutting_down() {
                    return;
                }
                // Out of descriptors or memory: back off instead of spinning on the error.
                errors.failed(&e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn the_backlog_follows_max_connections_within_the_kernels_cap() {
        assert_eq!(listen_backlog(10_000, Some(4096)), 4096);
        assert_eq!(listen_backlog(2_000, Some(4096)), 2000);
        assert_eq!(listen_backlog(10, Some(4096)), 128);
        assert_eq!(listen_backlog(10, Some(64)), 64);
        assert_eq!(listen_backlog(5_000, None), 5000);
        assert_eq!(listen_backlog(usize::MAX, None), i32::MAX);
    }

    /// The backlog of a listening socket, as the kernel reports it (`TCP_INFO` on a listener
    /// gives its maximum accept queue in `tcpi_sacked`).
    fn kernel_backlog(listener: &TcpListener) -> u32 {
        // SAFETY: getsockopt writes at most `len` bytes into the zeroed struct we pass.
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let rc = libc::getsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            );
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            info.tcpi_sacked
        }
    }

    #[test]
    fn listeners_get_the_backlog() {
        let cap = somaxconn().unwrap_or(4096);
        let backlog = listen_backlog(1000, Some(cap));
        let (listener, local) = bind("127.0.0.1:0", backlog).unwrap();
        assert_eq!(kernel_backlog(&listener), backlog as u32);
        assert_eq!(listener.local_addr().unwrap(), local);
        assert!(local.port() > 0);
        // Name resolution and errors as before.
        assert!(bind("localhost:0", backlog).is_ok());
        let taken = local.to_string();
        let e = bind(&taken, backlog).unwrap_err();
        let e = crate::report::ErrorChain(&e).to_string();
        assert!(e.starts_with(&format!("cannot listen on {taken}: ")), "{e}");
    }
}
