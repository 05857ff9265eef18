//! The connect scenario: how fast the server accepts WebSocket clients. One token is
//! registered over TCP; then `--threads` threads open `--conns` connections between them, all
//! at once, each waiting for its `101 Switching Protocols` before opening the next, and every
//! connection stays open until the end, so the server holds them all (and its memory per
//! connection can be read). Each upgrade checks the token in the server's token store, so
//! this compares the memory and PostgreSQL stores.
//!
//! Two times are measured per connection: the TCP connect alone (until the kernel completed
//! the three-way handshake), and the whole handshake up to the `101`. With many threads this
//! is a burst of connects: a listen backlog too small for it shows as connects that take a
//! second or more (a dropped SYN is sent again after 1 s, then 3 s, ...).

use super::hist::Hist;
use super::net::{self, Control, Deadline};
use super::payload::Clock;
use super::report::{Connect, Latency, Server};
use super::{BenchError, Options, progress, sys};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;

/// What one connecting thread did.
struct Share {
    open: Vec<TcpStream>,
    failed: usize,
    first_failure: Option<String>,
    handshakes: Hist,
    /// The TCP connects alone.
    tcp_connects: Hist,
    /// Clock time when its last connection was done.
    finished: u64,
}

/// Runs the connect scenario.
///
/// # Errors
/// The token could not be registered, or a thread could not be started.
pub fn run(o: &Options) -> Result<Connect, BenchError> {
    let clock = Clock::start();
    let deadline = Deadline::after(o.timeout);
    let mut server = Server {
        base: o.server_pid.and_then(sys::memory),
        ..Server::default()
    };
    let token = net::unique_token();
    let mut control = Control::open(&o.tcp_addr, o.admin_token.as_deref(), deadline)
        .map_err(|e| BenchError::Setup(format!("{}: {e}", o.tcp_addr)))?;
    control
        .register(&o.sub_tags, &token, deadline)
        .map_err(|e| BenchError::Setup(format!("registering the WebSocket token: {e}")))?;
    let setup_secs = clock.secs();

    let threads = o.threads.min(o.conns);
    let start = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let count = o.conns / threads + usize::from(t < o.conns % threads);
        let (start, addr, token) = (Arc::clone(&start), o.http_addr.clone(), token.clone());
        let spawned = thread::Builder::new()
            .name(format!("mist-bench-connect-{t}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                start.wait();
                connect_some(count, &addr, &token, clock, deadline)
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The threads already started wait at the barrier until the process exits,
                // which this error leads to; none of them has connected anything.
                return Err(BenchError::Setup(format!("cannot start a thread: {e}")));
            }
        }
    }
    progress(
        &clock,
        format_args!(
            "opening {} WebSocket connections from {threads} threads",
            o.conns
        ),
    );
    let cpu_before = o.server_pid.and_then(sys::cpu_seconds);
    let own_before = sys::own_cpu_seconds();
    let t0 = clock.now();
    start.wait();

    let mut shares = Vec::with_capacity(threads);
    for h in handles {
        shares.push(
            h.join()
                .map_err(|_| BenchError::Setup("a connecting thread panicked".into()))?,
        );
    }
    let finished = shares.iter().map(|s| s.finished).max().unwrap_or(t0);
    // Everything is still open: this is what the server holds for these connections.
    server.setup = o.server_pid.and_then(sys::memory);
    server.end = server.setup;
    let cpu_after = o.server_pid.and_then(sys::cpu_seconds);
    server.cpu_secs = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
    let client_cpu_secs = sys::own_cpu_seconds() - own_before;

    let mut handshakes = Hist::new();
    let mut tcp_connects = Hist::new();
    let (mut connected, mut failed, mut first_failure) = (0, 0, None);
    for s in &shares {
        handshakes.merge(&s.handshakes);
        tcp_connects.merge(&s.tcp_connects);
        connected += s.open.len();
        failed += s.failed;
        if first_failure.is_none() {
            first_failure.clone_from(&s.first_failure);
        }
    }
    server.conns = connected;
    let end = if deadline.passed() && connected + failed < o.conns {
        "timeout"
    } else {
        "complete"
    };
    progress(
        &clock,
        format_args!("{connected} connected, {failed} failed; closing"),
    );
    drop(shares);
    control.unregister(&token);
    Ok(Connect {
        conns: o.conns,
        threads,
        connected,
        failed,
        first_failure,
        connect_secs: finished.saturating_sub(t0) as f64 / 1e9,
        latency: Latency::of(&handshakes),
        tcp_connect: Latency::of(&tcp_connects),
        setup_secs,
        client_cpu_secs,
        server,
        end,
    })
}

/// Opens `count` connections one after another, keeping them open.
fn connect_some(count: usize, addr: &str, token: &str, clock: Clock, deadline: Deadline) -> Share {
    let mut share = Share {
        open: Vec::with_capacity(count),
        failed: 0,
        first_failure: None,
        handshakes: Hist::new(),
        tcp_connects: Hist::new(),
        finished: 0,
    };
    for _ in 0..count {
        if deadline.passed() {
            break;
        }
        let t = clock.now();
        let upgraded = net::connect(addr, deadline)
            .map_err(|e| format!("connect: {e}"))
            .and_then(|stream| {
                share.tcp_connects.record(clock.now() - t);
                net::ws_upgrade(stream, addr, token, deadline)
            });
        match upgraded {
            Ok((stream, _)) => {
                share.handshakes.record(clock.now() - t);
                share.open.push(stream);
            }
            Err(e) => {
                share.failed += 1;
                share.first_failure.get_or_insert(e);
            }
        }
    }
    share.finished = clock.now();
    share
}
