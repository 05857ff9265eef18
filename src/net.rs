//! Socket plumbing shared by the listeners: the options every client socket gets, the stack
//! sizes of connection threads, the open-files limit, accept errors, writing before a deadline,
//! and the lingering close.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// Stack size of connection threads. They parse, match and copy; nothing recursive runs on
/// them except JSON parsing, which `serde_json` bounds at 128 levels. Small stacks are what let
/// 10,000 connections (20,000 threads) fit in a small host's memory.
pub const CONN_STACK: usize = 128 * 1024;
/// WebSocket readers parse JSON, so they get more. serde_json stops at 128 levels of nesting,
/// and parsing that deep takes under 48 KiB of stack in a release build, so 256 KiB leaves
/// ample room for the rest of the thread. An unoptimised (debug) build needs about 224 KiB for
/// the parse alone, and overflowed 256 KiB, aborting the whole process, on a frame of deeply
/// nested JSON; it gets 1 MiB. Stack memory is only committed as it is touched, so the size
/// costs address space, not resident memory. `tests/it/hostile/oversize.rs` sends such frames.
///
/// What an idle WebSocket's thread does keep resident is every page its stack ever reached:
/// Rust's thread start-up takes about 5 KiB of it, and reading the request head, admitting the
/// client and a session's ordinary commands stay within the next 3 KiB (the head is read in
/// frames of its own, popped before the session starts; see `http::handle`), so the thread
/// holds two pages, as a line-protocol reader does. A client that sends deeply nested JSON
/// makes its own thread keep more, up to what the parse above takes.
pub const WS_STACK: usize = if cfg!(debug_assertions) {
    1024 * 1024
} else {
    256 * 1024
};

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

/// Starts a connection thread named `name` with a stack of `stack` bytes, within the thread
/// budget (see `capacity.rs`).
///
/// # Errors
/// No thread can be had: the budget under `vm.max_map_count` is spent, or the system cannot
/// create another; `f` is dropped then, with whatever it holds.
pub fn spawn(name: String, stack: usize, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    crate::capacity::spawn(name, stack, f).map(drop)
}

/// Ends a refused connection without waiting: half-closes it, then reads and discards what the
/// client has already sent. Closing a socket with unread input makes the kernel send a reset
/// instead of a FIN, and a client that sent its first command at once would then lose the
/// refusal written before it. What arrives after this is still answered with a reset; the
/// accept loop cannot linger.
pub fn close_without_reset(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut budget: usize = 64 * 1024;
    while budget > 0 {
        match (&*stream).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => budget = budget.saturating_sub(n),
        }
    }
}

/// How long an accept loop waits after a failed `accept` before it tries again. The usual
/// causes (out of descriptors, out of memory) last a while; retrying at once would only spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A listener's run of failed `accept` calls, logged once per run: its first failure as an
/// error, the ones after it at DEBUG, and its end, with how many there were, when a connection
/// is accepted again. A listener out of descriptors would otherwise log ten lines a second.
#[derive(Debug)]
pub struct AcceptErrors {
    listener: &'static str,
    failed: u64,
}

impl AcceptErrors {
    /// No failure yet on the listener called `listener` in the log.
    pub fn new(listener: &'static str) -> AcceptErrors {
        AcceptErrors {
            listener,
            failed: 0,
        }
    }

    /// Logs a failed `accept` (the first of a run as an error), then waits [`ACCEPT_BACKOFF`].
    pub fn failed(&mut self, e: &io::Error) {
        self.failed += 1;
        if self.failed == 1 {
            log::error!(
                "{}: accept failed: {e}; retrying every {} ms until it works again",
                self.listener,
                ACCEPT_BACKOFF.as_millis()
            );
        } else {
            log::debug!("{}: accept failed again: {e}", self.listener);
        }
        thread::sleep(ACCEPT_BACKOFF);
    }

    /// A connection was accepted: ends the run of failures, if there was one.
    pub fn accepted(&mut self) {
        if self.failed > 0 {
            log::info!(
                "{}: accepting again after {} failed attempts",
                self.listener,
                self.failed
            );
            self.failed = 0;
        }
    }
}

/// Wakes the thread blocked in `accept` on the listener bound to `addr`: a blocking accept only
/// returns on a connection, so this makes one (its loop sees the stop flag and ends).
pub fn wake_accept(addr: SocketAddr) {
    let _ = TcpStream::connect_timeout(&reachable(addr), Duration::from_millis(500));
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

/// Writes all of `parts`, one after the other, before `deadline`, however slowly the peer
/// reads. The parts go out together (a vectored write), so a response's head and its body need
/// not be copied into one buffer.
///
/// # Errors
/// The deadline passed (`TimedOut`), or the write failed.
pub fn write_all_before(
    mut stream: &TcpStream,
    parts: &[&[u8]],
    deadline: Instant,
) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut left = &mut slices[..];
    IoSlice::advance_slices(&mut left, 0);
    while !left.is_empty() {
        let time = deadline.saturating_duration_since(Instant::now());
        if time.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(time))?;
        match stream.write_vectored(left) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut left, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::ErrorKind::TimedOut.into());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
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

/// Half-closes, then reads briefly what the client still sends, so closing does not reset the
/// connection before the client has read the response.
pub fn linger(mut stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut sink = [0u8; 1024];
    let mut budget: usize = 64 * 1024;
    while budget > 0 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => budget = budget.saturating_sub(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

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

    /// A connected pair: the client's end and the server's.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (client, listener.accept().unwrap().0)
    }

    /// A peer that reads nothing: the write stops at the deadline, not only once a single
    /// write has made no progress for that long.
    #[test]
    fn writing_stops_at_the_deadline() {
        let (_client, server_side) = pair();
        // More than the socket buffers on both sides hold.
        let big = vec![b'x'; 64 << 20];
        let start = Instant::now();
        let e = write_all_before(&server_side, &[&big], start + Duration::from_millis(300))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    /// A peer that reads gets every part, in order, more than the socket buffers hold.
    #[test]
    fn a_reading_peer_gets_everything() {
        let (mut client, server_side) = pair();
        let reader = std::thread::spawn(move || {
            client
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).map(|_| got)
        });
        let (head, body) = (b"head".to_vec(), vec![b'y'; 16 << 20]);
        let deadline = Instant::now() + Duration::from_secs(10);
        write_all_before(&server_side, &[&head, &[], &body], deadline).unwrap();
        drop(server_side);
        let got = reader.join().unwrap().unwrap();
        assert_eq!(got.len(), 4 + (16 << 20));
        assert!(got.starts_with(b"heady"));
    }
}
