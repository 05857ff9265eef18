//! Opening and confirming the benchmark's connections. Every blocking call here has a
//! timeout derived from the run's deadline, so set-up never outlives `--timeout`.

use super::wire::{self, Frame, Line, WsText};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest a single connect may take, however far the deadline is.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// The moment the whole run must be over.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(Instant);

impl Deadline {
    /// `secs` from now.
    pub fn after(secs: f64) -> Deadline {
        Deadline(Instant::now() + Duration::from_secs_f64(secs))
    }

    /// Time left.
    ///
    /// # Errors
    /// `TimedOut` when none is left.
    pub fn remaining(&self) -> io::Result<Duration> {
        let left = self.0.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the run's --timeout passed",
            ));
        }
        Ok(left)
    }

    /// Whether it has passed.
    pub fn passed(&self) -> bool {
        self.remaining().is_err()
    }
}

/// Connects to `addr` with Nagle off and read and write timeouts at the deadline.
///
/// # Errors
/// The address does not resolve, nothing answers, or the deadline passes.
pub fn connect(addr: &str, deadline: Deadline) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"));
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, deadline.remaining()?.min(CONNECT_LIMIT)) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                let left = deadline.remaining()?;
                stream.set_read_timeout(Some(left))?;
                stream.set_write_timeout(Some(left))?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the server closed the connection",
    )
}

/// Reads one chunk into `pending`, waiting at most until the deadline.
fn read_more(mut stream: &TcpStream, pending: &mut Vec<u8>, deadline: Deadline) -> io::Result<()> {
    stream.set_read_timeout(Some(deadline.remaining()?))?;
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Err(closed());
    }
    pending.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Reads lines until `pong` (the line protocol's barrier: every earlier command has been
/// applied). Returns the reasons of the `error` lines before it; the bytes after the `pong`
/// stay in `pending`.
///
/// # Errors
/// The connection fails or closes, or the deadline passes.
pub fn await_pong(
    stream: &TcpStream,
    pending: &mut Vec<u8>,
    deadline: Deadline,
) -> io::Result<Vec<String>> {
    let mut errors = Vec::new();
    loop {
        let mut at = 0;
        let mut ponged = false;
        while let Some((line, used)) = wire::next_line(&pending[at..]) {
            at += used;
            match line {
                Line::Pong => {
                    ponged = true;
                    break;
                }
                Line::Error(reason) => errors.push(String::from_utf8_lossy(reason).into_owned()),
                Line::Delivery(_) | Line::Other(_) => {}
            }
        }
        pending.drain(..at);
        if ponged {
            return Ok(errors);
        }
        read_more(stream, pending, deadline)?;
    }
}

/// A fresh WebSocket masking key. Masking only has to be unpredictable to proxies, not
/// secret; a counter through a mixing function is plenty for a benchmark.
pub fn mask_key() -> [u8; 4] {
    static NEXT: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut z = NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let [a, b, c, d, ..] = (z ^ (z >> 31)).to_le_bytes();
    [a, b, c, d]
}

/// Opens a WebSocket to `/subscribe/websocket` on `http_addr` with `token` in the query.
/// Returns the socket and the bytes already read past the response head.
///
/// # Errors
/// A message saying what failed: the connection, the HTTP status, or the handshake.
pub fn ws_connect(
    http_addr: &str,
    token: &str,
    deadline: Deadline,
) -> Result<(TcpStream, Vec<u8>), String> {
    let stream = connect(http_addr, deadline).map_err(|e| format!("connect: {e}"))?;
    ws_upgrade(stream, http_addr, token, deadline)
}

/// Upgrades a connected `stream` to a WebSocket on `/subscribe/websocket` with `token` in the
/// query. Returns the socket and the bytes already read past the response head.
///
/// # Errors
/// A message saying what failed: the HTTP status, or the handshake.
pub fn ws_upgrade(
    mut stream: TcpStream,
    http_addr: &str,
    token: &str,
    deadline: Deadline,
) -> Result<(TcpStream, Vec<u8>), String> {
    let key = tungstenite::handshake::client::generate_key();
    stream
        .write_all(wire::upgrade_request(http_addr, token, &key).as_bytes())
        .map_err(|e| format!("sending the upgrade request: {e}"))?;
    let mut pending = Vec::with_capacity(512);
    loop {
        if let Some(up) = wire::upgrade_response(&pending)? {
            if up.status != 101 {
                let body = String::from_utf8_lossy(&pending[up.head_len..]);
                return Err(format!("HTTP {}: {}", up.status, body.trim()));
            }
            let want = tungstenite::handshake::derive_accept_key(key.as_bytes());
            if up.accept.as_deref() != Some(want.as_str()) {
                return Err("wrong Sec-WebSocket-Accept in the upgrade response".into());
            }
            pending.drain(..up.head_len);
            return Ok((stream, pending));
        }
        read_more(&stream, &mut pending, deadline)
            .map_err(|e| format!("reading the upgrade response: {e}"))?;
    }
}

/// Sends a WebSocket text frame.
///
/// # Errors
/// The write fails.
pub fn ws_send(mut stream: &TcpStream, text: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(text.len() + 14);
    wire::client_frame(&mut frame, wire::OP_TEXT, text, mask_key());
    stream.write_all(&frame)
}

/// Subscribes a WebSocket to `tags` and waits for the server's reply (the barrier: after a
/// success the subscription is in effect). Pings that arrive meanwhile are answered.
///
/// # Errors
/// The server refused the subscription or the connection failed.
pub fn ws_subscribe(
    stream: &TcpStream,
    pending: &mut Vec<u8>,
    tags: &[String],
    deadline: Deadline,
) -> Result<(), String> {
    let cmd = serde_json::json!({ "command": "subscribe", "tags": tags }).to_string();
    ws_send(stream, cmd.as_bytes()).map_err(|e| format!("sending subscribe: {e}"))?;
    loop {
        let mut at = 0;
        let mut outcome = None;
        while let Some((frame, used)) = wire::next_frame(&pending[at..]).map_err(|e| e.0)? {
            at += used;
            match frame {
                Frame::Text(t) => match wire::ws_text(t) {
                    WsText::Ok(b"subscribe") => outcome = Some(Ok(())),
                    WsText::Failure { .. } => {
                        outcome = Some(Err(format!("server said: {}", String::from_utf8_lossy(t))));
                    }
                    _ => {}
                },
                Frame::Ping(p) => {
                    let mut pong = Vec::new();
                    wire::client_frame(&mut pong, wire::OP_PONG, p, mask_key());
                    (&*stream)
                        .write_all(&pong)
                        .map_err(|e| format!("answering a ping: {e}"))?;
                }
                Frame::Close => outcome = Some(Err("the server closed the WebSocket".into())),
                Frame::Other => {}
            }
            if outcome.is_some() {
                break;
            }
        }
        pending.drain(..at);
        if let Some(outcome) = outcome {
            return outcome;
        }
        read_more(stream, pending, deadline)
            .map_err(|e| format!("waiting for the subscribe reply: {e}"))?;
    }
}

/// A token name no other run uses.
pub fn unique_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("mist-bench-{}-{nanos}", std::process::id())
}

/// A line-protocol connection for admin commands: registers the WebSocket token of a run,
/// and removes it at the end.
pub struct Control {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Control {
    /// Connects, and sends `auth` when an admin token is given.
    ///
    /// # Errors
    /// The server cannot be reached.
    pub fn open(addr: &str, admin_token: Option<&str>, deadline: Deadline) -> io::Result<Control> {
        let mut stream = connect(addr, deadline)?;
        if let Some(t) = admin_token {
            stream.write_all(format!("auth {t}\n").as_bytes())?;
        }
        Ok(Control {
            stream,
            pending: Vec::new(),
        })
    }

    /// Sends `lines` and a `ping`; fails with the server's first error.
    fn command(&mut self, lines: &str, deadline: Deadline) -> Result<(), String> {
        (&self.stream)
            .write_all(format!("{lines}\nping\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let errors =
            await_pong(&self.stream, &mut self.pending, deadline).map_err(|e| e.to_string())?;
        match errors.into_iter().next() {
            Some(reason) => Err(format!("server said: error {reason}")),
            None => Ok(()),
        }
    }

    /// Creates `token` with `tags` (comma-separated).
    ///
    /// # Errors
    /// The server refused (say, not from loopback and no admin token) or failed.
    pub fn register(&mut self, tags: &str, token: &str, deadline: Deadline) -> Result<(), String> {
        self.command(&format!("register {tags} {token}"), deadline)
    }

    /// Deletes `token` (closing its WebSockets); best effort, at the end of a run.
    pub fn unregister(&mut self, token: &str) {
        let _ = self.command(&format!("unregister {token}"), Deadline::after(5.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keys_differ() {
        let keys: std::collections::HashSet<[u8; 4]> = (0..1000).map(|_| mask_key()).collect();
        assert!(keys.len() > 990);
    }

    #[test]
    fn deadlines() {
        assert!(Deadline::after(0.0).passed());
        assert!(Deadline::after(60.0).remaining().unwrap() > Duration::from_secs(59));
    }
}
