//! Test support: a real server on 127.0.0.1:0, and clients whose every read has a timeout.
//!
//! - here: [`TestServer`], a server in this process, and [`TIMEOUT`];
//! - [`line`]: the line-protocol client;
//! - [`ws`]: WebSocket clients and frames;
//! - [`http`]: HTTP by hand, exact responses, `/metrics`;
//! - [`process`]: the real binary as a child process, also as a server watched in `/proc`;
//! - [`wait`]: waiting for what no reply announces.

pub mod http;
pub mod line;
pub mod process;
pub mod wait;
pub mod ws;

pub use http::connect_from;
pub use line::{LineClient, expect_error, small_window_client};
pub use wait::wait_until;
pub use ws::{
    try_ws_connect, try_ws_connect_from, try_ws_connect_with, ws_connect, ws_send, ws_sync, ws_text,
};

use mist::MemoryStore;
use mist::TokenStore;
use mist::{Config, Server};
use std::net::SocketAddr;
use std::time::Duration;

/// How long any read in a test may wait before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The defaults, on ephemeral loopback ports.
pub fn test_config() -> Config {
    Config {
        tcp_listen_address: "127.0.0.1:0".into(),
        http_listen_address: "127.0.0.1:0".into(),
        // Off unless a test turns it on (on 127.0.0.1:0): most tests do not need its threads.
        monitor_listen_address: None,
        ..Config::default()
    }
}

/// A server running in this process; shut down when dropped.
pub struct TestServer {
    server: Option<Server>,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    /// The monitoring listener, when the config turned it on.
    pub monitor: Option<SocketAddr>,
}

impl TestServer {
    /// A server on the defaults with an in-memory token store.
    pub fn start() -> TestServer {
        TestServer::with(|_| {})
    }

    /// A server whose config `f` adjusts, with an in-memory token store.
    pub fn with(f: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::with_store(f, Box::new(MemoryStore::new()))
    }

    /// A server with its config adjusted by `f` and the given token store.
    pub fn with_store(f: impl FnOnce(&mut Config), store: Box<dyn TokenStore>) -> TestServer {
        let mut config = test_config();
        f(&mut config);
        let server = Server::start(config, store).expect("server starts");
        TestServer {
            tcp: server.tcp_addr(),
            http: server.http_addr(),
            monitor: server.monitor_addr(),
            server: Some(server),
        }
    }

    /// A new line-protocol client.
    pub fn client(&self) -> LineClient {
        LineClient::connect(self.tcp)
    }

    /// The server's shared state (metrics, broker, tokens).
    pub fn context(&self) -> &std::sync::Arc<mist::Context> {
        self.server.as_ref().expect("running").context()
    }

    /// Waits until the server holds `n` subscriptions (a subscriber in another process, or
    /// behind a library's reconnection logic, has no other observable effect to wait for).
    pub fn wait_for_subscriptions(&self, n: u64) {
        let m = self.context().metrics();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while get(&m.subscriptions) != n {
            assert!(
                std::time::Instant::now() < deadline,
                "subscription count never reached {n}"
            );
            std::thread::yield_now();
        }
    }

    /// Shuts the server down now.
    pub fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

/// Reads a counter.
pub fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}
