//! A WebSocket session: JSON commands in, replies and deliveries out.
//!
//! The reader thread reads the client's frames with [`FrameReader`], which checks them (masking,
//! fragmentation, control frames, UTF-8, the size limit) and holds no buffer between them. The
//! server's frames are written only through the client's [`Outbound`] queue, like TCP lines:
//! deliveries are pre-encoded frames shared by every WebSocket subscriber, and pong and close
//! replies are queued there too, so frames never interleave.
//!
//! The server pings a quiet client every `ws_ping_interval`; a client that sends nothing, not
//! even a pong, for two intervals is closed.
//!
//! Admission comes first ([`admit`]): the HTTP listener hands over an upgrade request whose
//! handshake checked out, and the connection is registered only if its token is admitted and
//! it holds a `max_connections` slot. [`run`] then answers 101 and runs the session.

use crate::auth::AccessError;
use crate::brake;
use crate::context::{Conn, Context, Slot};
use crate::metrics;
use crate::net;
use crate::report::ErrorChain;
use crate::wsframe::{
    self, CLOSE_GOING_AWAY, CLOSE_INVALID_DATA, CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_TOO_BIG,
};
use crate::wsjson::{self, WsCommand};
use crate::wsread::{FrameReader, Message, ReadError};
use http::StatusCode;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Why a WebSocket request has no usable token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Neither the header nor the query parameter is there.
    #[error("missing token")]
    Missing,
    /// The token that wins (the header when there is one, else the query parameter) is not
    /// valid UTF-8, so it cannot be any registered token.
    #[error("invalid token encoding")]
    Encoding,
}

/// Why a WebSocket upgrade was refused: the HTTP response to answer it with.
pub(crate) struct Refused {
    pub(crate) status: StatusCode,
    pub(crate) body: String,
    /// Seconds to wait before trying again (`Retry-After`), for a 429.
    pub(crate) retry_after: Option<u64>,
}

/// Admits an upgrade request whose handshake checked out: it needs a token (`token_of` the
/// request), a `max_connections` slot (taken with the connection's first byte, if one was
/// free) and the token store's consent. Then the client is registered, and revocations of its
/// token reach it.
///
/// # Errors
/// The HTTP status and body to refuse the upgrade with: 401 for a missing, unknown or empty
/// token or one that is not UTF-8, 429 when the address is locked out for guessing tokens
/// (see `brake.rs`), 503 when the server is full or the token store unavailable.
pub(crate) fn admit(
    ctx: &Arc<Context>,
    slot: Option<Slot>,
    sock: &Arc<TcpStream>,
    peer: SocketAddr,
    token: Result<String, TokenError>,
) -> Result<Conn, Refused> {
    let token = token.map_err(|e| {
        metrics::add(&ctx.metrics.auth_failures, 1);
        Refused {
            status: StatusCode::UNAUTHORIZED,
            body: format!("{e}\n"),
            retry_after: None,
        }
    })?;
    // An address that guessed too many tokens is refused before its token is looked at.
    if let Err(left) = ctx.brakes.websocket.check(peer) {
        return Err(Refused {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: "too many unknown tokens from this address\n".to_string(),
            retry_after: Some(brake::whole_seconds(left)),
        });
    }
    let Some(slot) = slot else {
        metrics::add(&ctx.metrics.connections_refused, 1);
        log::warn!(
            "{peer}: refused, max_connections ({}) reached",
            ctx.config.max_connections
        );
        return Err(Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: "too many connections\n".to_string(),
            retry_after: None,
        });
    };
    ctx.admit(slot, Arc::clone(sock), peer, token).map_err(|e| {
        let status = match e {
            AccessError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        let reason = ErrorChain(&e);
        if matches!(e, AccessError::UnknownToken) {
            // Counted against the address's budget, and logged by the brake in summaries.
            ctx.brakes.websocket.fail(peer);
        } else {
            log::info!("{peer}: WebSocket refused: {reason}");
        }
        Refused {
            status,
            body: format!("{reason}\n"),
            retry_after: None,
        }
    })
}

/// The client's side of the connection: the bytes it sent right after its request head (read
/// with the head), then the socket. Those early bytes are freed once they have been read.
struct Source<'a> {
    early: Vec<u8>,
    taken: usize,
    sock: &'a TcpStream,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.taken < self.early.len() {
            let n = buf.len().min(self.early.len() - self.taken);
            buf[..n].copy_from_slice(&self.early[self.taken..self.taken + n]);
            self.taken += n;
            if self.taken == self.early.len() {
                self.early = Vec::new();
                self.taken = 0;
            }
            return Ok(n);
        }
        self.sock.read(buf)
    }
}

/// An admitted upgrade request, to be answered with 101 and run as a session.
pub(crate) struct Upgraded {
    pub(crate) conn: Conn,
    pub(crate) sock: Arc<TcpStream>,
    /// The request's `Sec-WebSocket-Key`.
    pub(crate) key: Vec<u8>,
    /// What the client sent after the request head.
    pub(crate) rest: Vec<u8>,
}

impl Upgraded {
    /// Answers the upgrade with 101 and runs the session until it closes. Dropping the
    /// connection's [`Conn`] at the end gives everything back.
    #[inline(never)]
    pub(crate) fn run(self, ctx: &Arc<Context>) {
        let Upgraded {
            conn,
            sock,
            key,
            rest,
        } = self;
        run(ctx, conn, sock, &key, rest);
    }
}

/// Answers an admitted upgrade request with 101 (`key` is its `Sec-WebSocket-Key`) and runs
/// the session until it closes; `rest` is what the client sent after the request head.
fn run(ctx: &Arc<Context>, conn: Conn, sock: Arc<TcpStream>, key: &[u8], rest: Vec<u8>) {
    let peer = conn.sub.out.peer();
    let accept_key = tungstenite::handshake::derive_accept_key(key);
    let switching = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n\r\n"
    );
    if let Err(e) = (&*sock).write_all(switching.as_bytes()) {
        log::debug!("{peer}: handshake failed: {e}");
        return;
    }
    log::debug!("{peer}: WebSocket open");
    let out = Arc::clone(&conn.sub.out);
    let mut session = Session {
        ctx: Arc::clone(ctx),
        conn,
        peer,
    };
    let mut src = Source {
        early: rest,
        taken: 0,
        sock: &sock,
    };
    session.read_loop(&mut src, &sock);
    drop(session);
    // Another thread may still be writing the queue, our close frame last: shutting the socket
    // down before that would end the connection without a closing handshake. The writer thread
    // ends with the connection's reader, so that shutdown waits for both.
    out.join_writer();
    // Our close frame is out: read what the client still sends, so closing the socket does
    // not reset the connection before the client has read it.
    net::linger(&sock);
    log::debug!("{peer}: WebSocket closed");
}

/// One WebSocket client's state. Dropping it (its [`Conn`]) removes the client everywhere and
/// closes its queue once written, also when the thread unwinds from a panic.
struct Session {
    ctx: Arc<Context>,
    conn: Conn,
    peer: SocketAddr,
}

impl Session {
    fn read_loop(&mut self, src: &mut Source, sock: &TcpStream) {
        let interval = Duration::from_secs(self.ctx.config.ws_ping_interval);
        let _ = sock.set_read_timeout(Some(interval));
        let mut frames = FrameReader::new(self.ctx.config.max_line_bytes);
        let mut pinged = false;
        loop {
            match frames.read(src) {
                Ok(msg) => {
                    pinged = false;
                    if !self.handle(msg) {
                        return;
                    }
                }
                // A quiet interval: the frame reader keeps what it has read of a frame.
                Err(ReadError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.conn.sub.out.is_closed() {
                        return;
                    }
                    if pinged {
                        log::info!("{}: no answer to ping, closing", self.peer);
                        self.close(CLOSE_GOING_AWAY, "ping timeout");
                        return;
                    }
                    pinged = true;
                    self.conn.sub.out.reply(wsframe::ping(b"mist"));
                }
                Err(ReadError::Closed) => return,
                Err(ReadError::TooBig { size, max }) => {
                    log::debug!("{}: message of {size} bytes over the limit", self.peer);
                    self.close(CLOSE_TOO_BIG, &format!("message larger than {max} bytes"));
                    return;
                }
                Err(ReadError::Utf8) => {
                    self.close(CLOSE_INVALID_DATA, "text frame is not UTF-8");
                    return;
                }
                Err(ReadError::CloseReason) => {
                    self.close(CLOSE_INVALID_DATA, "close reason is not UTF-8");
                    return;
                }
                Err(ReadError::Protocol(e)) => {
                    log::debug!("{}: protocol error: {e}", self.peer);
                    self.close(CLOSE_PROTOCOL, "protocol error");
                    return;
                }
                Err(e @ ReadError::Io(_)) => {
                    log::debug!("{}: {}", self.peer, ErrorChain(&e));
                    return;
                }
            }
        }
    }

    /// Handles one message; false when the session is over.
    fn handle(&mut self, msg: Message) -> bool {
        match msg {
            Message::Text(text) => {
                if !self.conn.sub.out.wait_reply_room() {
                    return false;
                }
                let reply = match wsjson::parse(&text, self.ctx.config.max_tags) {
                    Ok(cmd) => self.execute(cmd),
                    Err(e) => {
                        metrics::add(&self.ctx.metrics.errors_sent, 1);
                        e.reply()
                    }
                };
                self.conn.sub.out.reply(wsframe::text(reply.as_bytes()));
            }
            Message::Binary => {
                metrics::add(&self.ctx.metrics.errors_sent, 1);
                let reply =
                    wsjson::failure(None, "binary frames are not supported; send JSON text");
                self.conn.sub.out.reply(wsframe::text(reply.as_bytes()));
            }
            Message::Ping(payload) => {
                self.conn.sub.out.reply(wsframe::pong(&payload));
            }
            Message::Pong => {}
            Message::Close(code) => {
                // Echo the client's code, as RFC 6455 asks; then the session is over.
                self.close(code.unwrap_or(CLOSE_NORMAL), "");
                return false;
            }
        }
        true
    }

    fn execute(&mut self, cmd: WsCommand) -> String {
        let ctx = Arc::clone(&self.ctx);
        let name = cmd.name();
        match cmd {
            WsCommand::Ping => wsjson::ok(name),
            WsCommand::Subscribe(set) => {
                let result = ctx.tokens.subscribe_checked(self.conn.token(), &set, || {
                    ctx.broker.subscribe(&self.conn.sub, &set)
                });
                match result {
                    Ok(Ok(())) => wsjson::ok(name),
                    Ok(Err(e)) => self.failure(name, &e.to_string()),
                    Err(AccessError::Store(e)) => {
                        let reason = ErrorChain(&e).to_string();
                        log::warn!("{}: {reason}", self.peer);
                        self.failure(name, &reason)
                    }
                    Err(e) => self.failure(name, &e.to_string()),
                }
            }
            WsCommand::Unsubscribe(set) => {
                ctx.broker.unsubscribe(self.conn.sub.id, &set);
                wsjson::ok(name)
            }
            WsCommand::List => wsjson::list(&ctx.broker.subscriptions(self.conn.sub.id)),
        }
    }

    fn failure(&self, command: &str, reason: &str) -> String {
        metrics::add(&self.ctx.metrics.errors_sent, 1);
        wsjson::failure(Some(command), reason)
    }

    fn close(&self, code: u16, reason: &str) {
        self.conn
            .sub
            .out
            .close_after_flush(Some(wsframe::close(code, reason)));
    }
}
