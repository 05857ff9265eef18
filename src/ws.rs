//! A WebSocket session: JSON commands in, replies and deliveries out.
//!
//! tungstenite reads and checks the client's frames (masking, fragmentation, UTF-8, size
//! limits) on the reader thread. The server's frames are written only through the client's
//! [`Outbound`] queue, like TCP lines: deliveries are pre-encoded frames shared by every
//! WebSocket subscriber, and pong and close replies are queued there too, so frames never
//! interleave. tungstenite's own automatic replies go to a sink (see [`ReadHalf`]).
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
use crate::wsframe::{self, CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_TOO_BIG};
use crate::wsjson::{self, WsCommand};
use http::StatusCode;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::protocol::{Role, WebSocketConfig, frame::coding::CloseCode};
use tungstenite::{Message, WebSocket};

/// Close code for a text frame that is not UTF-8 (RFC 6455, 7.4.1).
const CLOSE_INVALID_DATA: u16 = 1007;

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

/// The socket as tungstenite sees it: reads come from the client; writes are dropped, because
/// every frame the server sends goes through the outbound queue instead (tungstenite would
/// otherwise answer pings and closes itself, from the reader thread, interleaving with the
/// writer's frames).
struct ReadHalf(Arc<TcpStream>);

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for ReadHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Answers an admitted upgrade request with 101 (`key` is its `Sec-WebSocket-Key`) and runs
/// the session until it closes; `rest` is what the client sent after the request head.
/// Dropping the connection's [`Conn`] at the end gives everything back.
pub(crate) fn run(ctx: &Arc<Context>, conn: Conn, sock: Arc<TcpStream>, key: &[u8], rest: Vec<u8>) {
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
    let max = ctx.config.max_line_bytes;
    let config = WebSocketConfig::default()
        // Small: an idle subscriber should cost little; big messages grow it as needed.
        .read_buffer_size(4096)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let ws = WebSocket::from_partially_read(
        ReadHalf(Arc::clone(&sock)),
        rest,
        Role::Server,
        Some(config),
    );
    let mut session = Session {
        ctx: Arc::clone(ctx),
        conn,
        peer,
    };
    session.read_loop(ws, &sock);
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
    fn read_loop(&mut self, mut ws: WebSocket<ReadHalf>, sock: &TcpStream) {
        let interval = Duration::from_secs(self.ctx.config.ws_ping_interval);
        let _ = sock.set_read_timeout(Some(interval));
        let mut pinged = false;
        loop {
            match ws.read() {
                Ok(msg) => {
                    pinged = false;
                    if !self.handle(msg) {
                        return;
                    }
                }
                // A read interrupted by a signal or a debugger (the socket has a timeout, so
                // the kernel does not restart it) leaves tungstenite's state as it was.
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(WsError::Io(e))
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
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => return,
                Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                    log::debug!("{}: message of {size} bytes over the limit", self.peer);
                    self.close(
                        CLOSE_TOO_BIG,
                        &format!("message larger than {max_size} bytes"),
                    );
                    return;
                }
                Err(WsError::Utf8(_)) => {
                    self.close(CLOSE_INVALID_DATA, "text frame is not UTF-8");
                    return;
                }
                Err(WsError::Protocol(e)) => {
                    log::debug!("{}: protocol error: {e}", self.peer);
                    self.close(CLOSE_PROTOCOL, "protocol error");
                    return;
                }
                Err(e) => {
                    log::debug!("{}: read failed: {e}", self.peer);
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
                let reply = match wsjson::parse(text.as_str(), self.ctx.config.max_tags) {
                    Ok(cmd) => self.execute(cmd),
                    Err(e) => {
                        metrics::add(&self.ctx.metrics.errors_sent, 1);
                        e.reply()
                    }
                };
                self.conn.sub.out.reply(wsframe::text(reply.as_bytes()));
            }
            Message::Binary(_) => {
                metrics::add(&self.ctx.metrics.errors_sent, 1);
                let reply =
                    wsjson::failure(None, "binary frames are not supported; send JSON text");
                self.conn.sub.out.reply(wsframe::text(reply.as_bytes()));
            }
            Message::Ping(payload) => {
                self.conn.sub.out.reply(wsframe::pong(&payload));
            }
            Message::Pong(_) | Message::Frame(_) => {}
            Message::Close(frame) => {
                // Echo the client's code, as RFC 6455 asks; then the session is over.
                let code = frame.map_or(CLOSE_NORMAL, |f| match f.code {
                    CloseCode::Status | CloseCode::Abnormal | CloseCode::Tls => CLOSE_NORMAL,
                    c => u16::from(c),
                });
                self.close(code, "");
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
