//! The line-protocol listener's connections: a reader thread that runs the commands; the
//! client's writer thread (see `outbound/writer.rs`) starts when its socket is slow.

use crate::auth::{self, StoreError};
use crate::brake;
use crate::context::{Conn, Context, Slot};
use crate::fanout::Fanout;
use crate::framing::{Event, LineReader};
use crate::line::{self, Command, LineError};
use crate::metrics;
use crate::net;
use crate::report::ErrorChain;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Takes a new TCP connection from the accept loop: refuses it when the server is full,
/// otherwise starts its thread, which holds the connection's slot from the first byte.
pub fn accept(ctx: &Arc<Context>, stream: TcpStream, peer: SocketAddr) {
    let Some(slot) = ctx.reserve() else {
        refuse_full(ctx, &stream, peer);
        return;
    };
    let sock = Arc::new(stream);
    let live = ctx.track(&sock);
    let ctx2 = Arc::clone(ctx);
    // Kept to answer the client if its thread cannot be had.
    let answer = Arc::clone(&sock);
    let spawned = net::spawn(format!("mist-tcp {peer}"), net::CONN_STACK, move || {
        let _live = live;
        run(&ctx2, slot, sock, peer);
    });
    if let Err(e) = spawned {
        // Out of memory mappings, process ids or threads (see `capacity.rs`): refused like a
        // client over max_connections (the slot went back with the closure), not a reset.
        metrics::add(&ctx.metrics.thread_start_failures, 1);
        log::error!("{peer}: refused, cannot start a connection thread: {e}");
        refuse(ctx, &answer, "server busy: no thread for this connection");
    }
}

/// The refusal of a client over `max_connections`.
fn refuse_full(ctx: &Context, stream: &TcpStream, peer: SocketAddr) {
    log::warn!(
        "{peer}: refused, max_connections ({}) reached",
        ctx.config.max_connections
    );
    let reason = format!(
        "too many connections (max_connections {})",
        ctx.config.max_connections
    );
    refuse(ctx, stream, &reason);
}

/// Answers a refused client with one `error` line; the caller closes the socket.
fn refuse(ctx: &Context, mut stream: &TcpStream, reason: &str) {
    metrics::add(&ctx.metrics.connections_refused, 1);
    let reply = line::error_reply(reason);
    // The accept loop must not wait on a client that does not read.
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = stream.write_all(&reply);
    net::close_without_reset(stream);
}

/// The connection's reader thread.
fn run(ctx: &Arc<Context>, slot: Slot, sock: Arc<TcpStream>, peer: SocketAddr) {
    log::debug!("{peer}: connected");
    let mut session = Session {
        fanout: Fanout::new(ctx.broker.clone()),
        conn: ctx.register(slot, Arc::clone(&sock), peer),
        authed: false,
        peer,
        ctx: Arc::clone(ctx),
    };
    session.read_loop(&sock);
    // The client is gone or closed its side: dropping the session stops deliveries and lets
    // what is queued be written before the socket closes. The writer thread ends with this one,
    // so that shutdown, which waits for this thread, waits for both.
    let out = Arc::clone(&session.conn.sub.out);
    drop(session);
    out.join_writer();
    log::debug!("{peer}: disconnected");
}

/// Whether a connection goes on after a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The connection is closing: read nothing more.
    Close,
}

/// One client's command state. Dropping it (its [`Conn`]) removes the client from the index
/// and the registry and closes its queue once written, also when its thread unwinds from a
/// panic.
struct Session {
    ctx: Arc<Context>,
    conn: Conn,
    fanout: Fanout,
    /// The last `auth ADMIN_TOKEN` on this connection was right.
    authed: bool,
    peer: SocketAddr,
}

impl Session {
    fn read_loop(&mut self, sock: &TcpStream) {
        let mut lines = LineReader::new(self.ctx.config.max_line_bytes);
        let mut reader = sock;
        loop {
            match lines.fill(&mut reader) {
                Ok(0) => break,
                Ok(_) => {}
                // A signal or a debugger attaching interrupts a blocked read; the data is
                // still there.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("{}: read failed: {e}", self.peer);
                    break;
                }
            }
            while let Some(event) = lines.next_event() {
                let flow = match event {
                    Event::Line(l) => self.handle_line(l),
                    Event::TooLong => {
                        self.too_long();
                        Flow::Continue
                    }
                };
                if flow == Flow::Close {
                    // Not one more line, not even those already read.
                    return;
                }
            }
            self.fanout.flush();
            if self.conn.sub.out.is_closed() {
                return;
            }
        }
        // A last line without `\n` still counts (`printf 'ping' | nc ...`), when the client
        // ended it. When shutdown closed the socket, the rest is a line cut off mid-way: it
        // must not run (a half `publish` would deliver half a message).
        if self.ctx.shutting_down() {
            return;
        }
        match lines.take_rest() {
            Some(Event::Line(rest)) => {
                let rest = rest.to_vec();
                // The connection ends here either way.
                let _ = self.handle_line(&rest);
                self.fanout.flush();
            }
            Some(Event::TooLong) => self.too_long(),
            None => {}
        }
    }

    fn handle_line(&mut self, l: &[u8]) -> Flow {
        match line::parse(l, self.ctx.config.max_tags) {
            Ok(Command::Publish {
                tags,
                normalised,
                data,
            }) => {
                self.fanout.add(tags, normalised, data);
                Flow::Continue
            }
            Ok(cmd) => {
                // Deliver what was published before this command first, so a publisher that is
                // also a subscriber sees its messages before the reply.
                self.fanout.flush();
                if self.conn.sub.out.wait_reply_room() {
                    self.execute(cmd)
                } else {
                    Flow::Continue
                }
            }
            Err(LineError::Http) => self.refuse_http(),
            Err(e) => {
                self.fanout.flush();
                if self.conn.sub.out.wait_reply_room() {
                    self.error(&e.to_string());
                }
                Flow::Continue
            }
        }
    }

    /// A line began like HTTP: most likely a web page made the user's browser send a request
    /// here, whose body would run as commands. Closes without reading another line; what
    /// came before it stands.
    fn refuse_http(&mut self) -> Flow {
        self.fanout.flush();
        metrics::add(&self.ctx.metrics.line_http_closed, 1);
        self.ctx.brakes.http_on_line.fail(self.peer);
        self.close_with(&LineError::Http.to_string());
        Flow::Close
    }

    fn execute(&mut self, cmd: Command<'_>) -> Flow {
        if let (true, Err(reason)) = (cmd.is_admin(), self.admin_allowed()) {
            self.error(reason);
            return Flow::Continue;
        }
        let ctx = Arc::clone(&self.ctx);
        match cmd {
            Command::Ping => self.reply(line::PONG.to_vec()),
            Command::Subscribe(set) => {
                if let Err(e) = ctx.broker.subscribe(&self.conn.sub, &set) {
                    self.error(&e.to_string());
                }
            }
            Command::Unsubscribe(set) => ctx.broker.unsubscribe(self.conn.sub.id, &set),
            Command::List => {
                let subs = ctx.broker.subscriptions(self.conn.sub.id);
                self.reply(line::list_reply(&subs));
            }
            Command::Auth { token } => return self.auth(token),
            Command::Register { tags, token } => {
                self.store_result(ctx.tokens.register(token, &tags))
            }
            Command::Unregister { token } => self.store_result(ctx.tokens.unregister(token)),
            Command::Set { tags, token } => self.store_result(ctx.tokens.set(token, &tags)),
            Command::Unset { tags, token } => self.store_result(ctx.tokens.unset(token, &tags)),
            Command::Tags { token } => match ctx.tokens.tags(token) {
                Ok(tags) => self.reply(line::tags_reply(token, &tags)),
                Err(e) => self.store_result(Err(e)),
            },
            Command::Publish { .. } => unreachable!("publish is batched by handle_line"),
            // The fault hook of debug builds (see `line::Command::DebugPanic`): the unwinding
            // drops the session, which gives everything back, as any panic here would.
            #[cfg(debug_assertions)]
            Command::DebugPanic => panic!("debug-panic requested by the client"),
        }
        Flow::Continue
    }

    /// The admin rule: with an `admin_token`, only after `auth`; without one, only from
    /// loopback.
    fn admin_allowed(&self) -> Result<(), &'static str> {
        auth::admin_allowed(
            self.ctx.config.admin_token.is_some(),
            self.authed,
            self.peer.ip(),
        )
    }

    /// `auth`: checks the admin token, within the address's budget of failures (see
    /// `brake.rs`). The connection holds admin rights only while its last `auth` was right.
    /// A refused attempt, or the failure that uses the budget up, closes the connection.
    fn auth(&mut self, token: &[u8]) -> Flow {
        let Some(expected) = self.ctx.config.admin_token.as_deref() else {
            self.error("auth is not enabled: no admin_token is configured");
            return Flow::Continue;
        };
        self.authed = false;
        let brake = &self.ctx.brakes.admin;
        if let Err(left) = brake.check(self.peer) {
            let secs = brake::whole_seconds(left);
            self.close_with(&format!(
                "auth refused for {secs} s: too many wrong admin tokens from this address"
            ));
            return Flow::Close;
        }
        if auth::secrets_equal(token, expected.as_bytes()) {
            self.authed = true;
            return Flow::Continue;
        }
        metrics::add(&self.ctx.metrics.auth_failures, 1);
        if brake.fail(self.peer) {
            let secs = brake.lockout().as_secs();
            self.close_with(&format!(
                "wrong admin token; too many from this address: auth refused for {secs} s"
            ));
            return Flow::Close;
        }
        self.error("wrong admin token");
        Flow::Continue
    }

    fn store_result(&mut self, result: Result<(), StoreError>) {
        if let Err(e) = result {
            let reason = ErrorChain(&e).to_string();
            if let StoreError::Unavailable(_) = e {
                log::warn!("{}: {reason}", self.peer);
            }
            self.error(&reason);
        }
    }

    fn too_long(&mut self) {
        self.fanout.flush();
        let max = self.ctx.config.max_line_bytes;
        self.error(&format!("line too long (max_line_bytes {max})"));
    }

    /// Sends `error REASON` as the last line and closes once it is written. Nothing more is
    /// read: the caller returns [`Flow::Close`].
    fn close_with(&self, reason: &str) {
        log::debug!("{}: error {reason}; closing", self.peer);
        metrics::add(&self.ctx.metrics.errors_sent, 1);
        self.conn
            .sub
            .out
            .close_after_flush(Some(line::error_reply(reason)));
    }

    fn reply(&self, bytes: Vec<u8>) {
        self.conn.sub.out.reply(bytes);
    }

    fn error(&self, reason: &str) {
        log::debug!("{}: error {reason}", self.peer);
        metrics::add(&self.ctx.metrics.errors_sent, 1);
        self.reply(line::error_reply(reason));
    }
}
