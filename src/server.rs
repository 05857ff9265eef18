//! The server: its two listeners, their accept loops, and shutdown.

use crate::auth::TokenStore;
use crate::config::Config;
use crate::context::Context;
use crate::metrics;
use crate::net;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long shutdown waits for connection threads to end once their sockets are closed. They
/// end at once unless one is waiting on the token store (PostgreSQL: at most a checkout and a
/// statement, 5 s each).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
        net::raise_fd_limit();
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

    /// Stops accepting, closes every connection, and waits for the listeners and (at most
    /// [`SHUTDOWN_GRACE`]) for the connections' threads to end.
    pub fn shutdown(self) {
        self.ctx.begin_shutdown();
        // A blocking accept() only returns on a connection: make one to each listener.
        for addr in [self.tcp_addr, self.http_addr] {
            let _ = TcpStream::connect_timeout(&reachable(addr), Duration::from_millis(500));
        }
        for handle in self.acceptors {
            let _ = handle.join();
        }
        // No connection thread starts any more: every one is in the registry.
        self.ctx.conns.close_all();
        let left = self.ctx.conns.wait_for_threads(SHUTDOWN_GRACE);
        if left > 0 {
            log::warn!("{left} connection threads still running after {SHUTDOWN_GRACE:?}");
        }
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
