//! Test support: a real server on 127.0.0.1:0, and clients whose every read has a timeout.

#![allow(dead_code)]

use mist::auth::TokenStore;
use mist::auth::memory::MemoryStore;
use mist::{Config, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;
use tungstenite::Message;
use tungstenite::protocol::WebSocket;

/// How long any read in a test may wait before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The defaults, on ephemeral loopback ports.
pub fn test_config() -> Config {
    Config {
        tcp_listen_address: "127.0.0.1:0".into(),
        http_listen_address: "127.0.0.1:0".into(),
        ..Config::default()
    }
}

/// A server running in this process; shut down when dropped.
pub struct TestServer {
    server: Option<Server>,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
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

/// A line-protocol client. Reads fail the test after [`TIMEOUT`].
pub struct LineClient {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl LineClient {
    pub fn connect(addr: SocketAddr) -> LineClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        // A command and its `ping` go out at once, without Nagle's 40 ms wait.
        stream.set_nodelay(true).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        LineClient { reader, stream }
    }

    /// Sends one line (a `\n` is added).
    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    /// Sends bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next line, without its `\n`; fails the test on timeout or end of stream.
    pub fn line(&mut self) -> String {
        String::from_utf8(self.line_bytes()).expect("utf-8 line")
    }

    /// The next line as bytes, without its `\n`.
    pub fn line_bytes(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut buf)
            .expect("read a line before the timeout");
        assert!(n > 0, "connection closed while a line was expected");
        assert_eq!(buf.pop(), Some(b'\n'), "line ends with \\n");
        buf
    }

    /// Expects exactly this line next.
    pub fn expect(&mut self, want: &str) {
        assert_eq!(self.line(), want);
    }

    /// Sends `ping` and returns every line that came before the `pong`.
    pub fn sync(&mut self) -> Vec<String> {
        self.send("ping");
        let mut before = Vec::new();
        loop {
            let l = self.line();
            if l == "pong" {
                return before;
            }
            before.push(l);
        }
    }

    /// Sends `ping` and asserts that nothing arrived before the `pong`.
    pub fn ping(&mut self) {
        assert_eq!(
            self.sync(),
            Vec::<String>::new(),
            "nothing expected before pong"
        );
    }

    /// Reads until the server closes the connection; returns what came.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        self.reader
            .read_to_end(&mut rest)
            .expect("server closes before the timeout");
        rest
    }
}

/// A WebSocket client connected to `/subscribe/websocket` with `token` in the header.
pub fn ws_connect(http: SocketAddr, token: &str) -> WebSocket<TcpStream> {
    try_ws_connect(http, Some(token), None).expect("WebSocket upgrade succeeds")
}

/// Tries a WebSocket connection; `header` sends the token as `X-Auth-Token`, `query` as the
/// `x-auth-token` query parameter. On refusal returns the HTTP status.
pub fn try_ws_connect(
    http: SocketAddr,
    header: Option<&str>,
    query: Option<&str>,
) -> Result<WebSocket<TcpStream>, u16> {
    try_ws_connect_with(http, header, query, &[])
}

/// [`try_ws_connect`] with extra request headers (an `Origin`, say).
pub fn try_ws_connect_with(
    http: SocketAddr,
    header: Option<&str>,
    query: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<WebSocket<TcpStream>, u16> {
    try_ws_connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), http, header, query, extra)
}

/// A TCP connection to `addr` from the local address `from` (any of 127.0.0.0/8 is
/// loopback: a second client address for tests of per-address limits), with the usual
/// timeouts.
pub fn connect_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
    sock.connect(&addr.into()).expect("connect");
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// [`try_ws_connect_with`] from the local address `from`.
pub fn try_ws_connect_from(
    from: IpAddr,
    http: SocketAddr,
    header: Option<&str>,
    query: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<WebSocket<TcpStream>, u16> {
    let stream = connect_from(from, http);
    let mut url = format!("ws://{http}/subscribe/websocket");
    if let Some(q) = query {
        url.push_str(&format!("?x-auth-token={q}"));
    }
    let mut builder = tungstenite::http::Request::builder()
        .uri(&url)
        .header("Host", http.to_string())
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tungstenite::handshake::client::generate_key(),
        );
    if let Some(h) = header {
        builder = builder.header("X-Auth-Token", h);
    }
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(()).unwrap();
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

/// The next text frame (answering nothing itself); fails on timeout or a non-text frame.
pub fn ws_text(ws: &mut WebSocket<TcpStream>) -> String {
    loop {
        match ws.read().expect("a frame before the timeout") {
            Message::Text(t) => return t.as_str().to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Sends a JSON text frame.
pub fn ws_send(ws: &mut WebSocket<TcpStream>, json: &str) {
    ws.send(Message::text(json)).expect("send");
}

/// Sends `{"command":"ping"}` and returns the text frames that came before its reply.
pub fn ws_sync(ws: &mut WebSocket<TcpStream>) -> Vec<String> {
    ws_send(ws, r#"{"command":"ping"}"#);
    let mut before = Vec::new();
    loop {
        let t = ws_text(ws);
        if t == r#"{"success":true,"command":"ping"}"# {
            return before;
        }
        before.push(t);
    }
}

/// Reads raw bytes from any stream until it closes (for HTTP responses).
pub fn read_all(mut s: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    v
}

/// Reads a counter.
pub fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sends `raw` as it is, expects exactly the line `want` back, then proves with a `ping` that
/// the connection is still alive and nothing else came.
pub fn expect_error(c: &mut LineClient, raw: &[u8], want: &str) {
    c.send_raw(raw);
    let got = c.line_bytes();
    assert_eq!(
        String::from_utf8_lossy(&got),
        want,
        "reply to {:?}",
        String::from_utf8_lossy(raw)
    );
    c.ping();
}
