//! The threads that read what the server sends: each watches many connections with epoll
//! and reads into one large buffer per thread, so thousands of subscribers need neither a
//! thread nor a big buffer each. Only a partial line or frame at the end of a read is kept
//! per connection. Deliveries are parsed in place: no allocation per message on TCP.
//!
//! Each delivery's payload is checked against the publisher's sequence (gaps, out-of-order)
//! and its latency (receive time − send time) goes into the thread's histogram. The receive
//! time is read once per `recv`.

use super::hist::Hist;
use super::net::mask_key;
use super::payload::{self, Clock};
use super::sys::{self, Epoll};
use super::wire::{self, Frame, Line, WsText};
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};

/// The read buffer of one reader thread.
const BUF: usize = 256 * 1024;
/// Reads per ready connection before the thread moves on to the others.
const READS_PER_TURN: usize = 4;
/// How long a reader waits for input before it looks at the stop flag again.
const WAIT_MS: i32 = 20;
/// Server error texts echoed to stderr; past this they are only counted.
const ERRORS_SHOWN: usize = 5;

/// What a connection is read for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A line-protocol subscriber.
    Tcp,
    /// A WebSocket subscriber.
    Ws,
    /// A publisher: only `error` lines are expected.
    Drain,
}

/// One connection being read.
pub struct Conn {
    stream: TcpStream,
    role: Role,
    /// Bytes of an incomplete line or frame, kept for the next read.
    pending: Vec<u8>,
    /// The sequence number expected next from each publisher.
    next_seq: Vec<u64>,
    delivered: u64,
    done: bool,
    open: bool,
}

impl Conn {
    /// A confirmed subscriber; `pending` holds bytes read past its confirmation.
    pub fn subscriber(stream: TcpStream, role: Role, pending: Vec<u8>) -> Conn {
        Conn {
            stream,
            role,
            pending,
            next_seq: Vec::new(),
            delivered: 0,
            done: false,
            open: true,
        }
    }

    /// A publisher's socket, read only to count the server's errors.
    pub fn drain(stream: TcpStream) -> Conn {
        Conn::subscriber(stream, Role::Drain, Vec::new())
    }

    fn is_subscriber(&self) -> bool {
        self.role != Role::Drain
    }
}

/// What every reader needs to know about the run.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub clock: Clock,
    pub publishers: usize,
    /// Deliveries a subscriber gets when nothing is lost.
    pub expected_per_sub: u64,
}

/// A reader's running totals, read by the monitoring thread while the run goes on. Atomics
/// because one thread writes and another polls; relaxed, because each value stands alone.
#[derive(Debug, Default)]
pub struct Progress {
    pub delivered: AtomicU64,
    /// Clock time of the latest delivery.
    pub last_rx: AtomicU64,
    /// Subscribers that have everything.
    pub done: AtomicUsize,
    /// Subscribers the server closed before they had everything.
    pub closed: AtomicUsize,
    /// Publishers whose final `ping` was answered.
    pub pongs: AtomicUsize,
}

/// A reader's final counts.
#[derive(Debug, Default)]
pub struct Stats {
    pub delivered: u64,
    pub seq_gaps: u64,
    pub out_of_order: u64,
    /// `error` lines and failure frames, on every connection.
    pub errors: u64,
    /// The sum of the slow-consumer notices' counts.
    pub dropped_notified: u64,
    /// Deliveries whose payload was not the benchmark's.
    pub bad_payloads: u64,
    /// Subscribers closed by the server before they had everything.
    pub subs_closed: usize,
    /// Clock time of the latest delivery.
    pub last_rx: u64,
    /// Publishers whose final `ping` was answered, and when the last answer came: the server
    /// had taken every message by then.
    pub pongs: usize,
    pub last_pong: u64,
    pub latency: Hist,
}

impl Stats {
    /// Adds another reader's counts.
    pub fn merge(&mut self, o: &Stats) {
        self.delivered += o.delivered;
        self.seq_gaps += o.seq_gaps;
        self.out_of_order += o.out_of_order;
        self.errors += o.errors;
        self.dropped_notified += o.dropped_notified;
        self.bad_payloads += o.bad_payloads;
        self.subs_closed += o.subs_closed;
        self.last_rx = self.last_rx.max(o.last_rx);
        self.pongs += o.pongs;
        self.last_pong = self.last_pong.max(o.last_pong);
        self.latency.merge(&o.latency);
    }

    fn error(&mut self, text: &[u8], dropped: Option<u64>) {
        self.errors += 1;
        self.dropped_notified += dropped.unwrap_or(0);
        show_error(text);
    }
}

/// Echoes the first few server errors to stderr.
pub fn show_error(text: &[u8]) {
    // Shared by every thread of the run, only to limit the noise on stderr.
    static SHOWN: AtomicUsize = AtomicUsize::new(0);
    let n = SHOWN.fetch_add(1, Ordering::Relaxed);
    if n < ERRORS_SHOWN {
        eprintln!("mist bench: server said: {}", String::from_utf8_lossy(text));
    } else if n == ERRORS_SHOWN {
        eprintln!("mist bench: (further server errors are only counted)");
    }
}

/// A running reader thread.
pub struct Reader {
    handle: JoinHandle<io::Result<Stats>>,
    pub progress: Arc<Progress>,
}

impl Reader {
    /// Starts reading `conns` until `stop` is set.
    ///
    /// # Errors
    /// The thread or its epoll instance cannot be created.
    pub fn spawn(
        name: String,
        conns: Vec<Conn>,
        plan: Plan,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Reader> {
        let progress = Arc::new(Progress::default());
        let epoll = Epoll::new()?;
        for (i, c) in conns.iter().enumerate() {
            epoll.add(c.stream.as_raw_fd(), i as u64)?;
        }
        let p = Arc::clone(&progress);
        let handle = thread::Builder::new()
            .name(name)
            .spawn(move || read_loop(epoll, conns, plan, &stop, &p))?;
        Ok(Reader { handle, progress })
    }

    /// Waits for the thread (after `stop` was set) and returns its counts.
    ///
    /// # Errors
    /// epoll failed, or the thread panicked.
    pub fn join(self) -> io::Result<Stats> {
        self.handle
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a reader thread panicked")))
    }
}

/// What a turn on one connection ended with.
enum Turn {
    Open,
    Closed,
}

fn read_loop(
    epoll: Epoll,
    mut conns: Vec<Conn>,
    plan: Plan,
    stop: &AtomicBool,
    progress: &Progress,
) -> io::Result<Stats> {
    let mut stats = Stats::default();
    let mut buf = vec![0u8; BUF];
    let mut events = sys::events(512);
    for c in &mut conns {
        c.next_seq = vec![
            0;
            if c.is_subscriber() {
                plan.publishers
            } else {
                0
            }
        ];
        // Bytes that came with a subscriber's confirmation (none are expected).
        if !c.pending.is_empty() {
            let data = std::mem::take(&mut c.pending);
            let used = parse(c, &data, plan.clock.now(), &mut stats, &plan);
            c.pending.extend_from_slice(&data[used..]);
        }
    }
    while !stop.load(Ordering::Relaxed) {
        let n = epoll.wait(&mut events, WAIT_MS)?;
        for ev in &events[..n] {
            let c = &mut conns[ev.u64 as usize];
            if !c.open {
                continue;
            }
            let was_done = c.done;
            if let Turn::Closed = turn(c, &mut buf, &mut stats, &plan) {
                epoll.remove(c.stream.as_raw_fd());
                c.open = false;
                if c.is_subscriber() && !c.done {
                    stats.subs_closed += 1;
                    progress.closed.fetch_add(1, Ordering::Relaxed);
                }
            }
            if c.done && !was_done {
                progress.done.fetch_add(1, Ordering::Relaxed);
            }
        }
        progress.delivered.store(stats.delivered, Ordering::Relaxed);
        progress.last_rx.store(stats.last_rx, Ordering::Relaxed);
        progress.pongs.store(stats.pongs, Ordering::Relaxed);
    }
    Ok(stats)
}

/// Reads what one ready connection has, parses the complete lines or frames, and keeps the
/// rest for next time.
fn turn(c: &mut Conn, buf: &mut Vec<u8>, stats: &mut Stats, plan: &Plan) -> Turn {
    for _ in 0..READS_PER_TURN {
        let kept = c.pending.len();
        if buf.len() < kept + BUF / 2 {
            buf.resize(kept + BUF, 0);
        }
        buf[..kept].copy_from_slice(&c.pending);
        let room = buf.len() - kept;
        match sys::recv_now(c.stream.as_raw_fd(), &mut buf[kept..]) {
            Ok(0) => return Turn::Closed,
            Ok(n) => {
                let now = plan.clock.now();
                let data = &buf[..kept + n];
                let used = parse(c, data, now, stats, plan);
                if !c.open {
                    return Turn::Closed;
                }
                c.pending.clear();
                c.pending.extend_from_slice(&data[used..]);
                if n < room {
                    return Turn::Open;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Open,
            Err(_) => return Turn::Closed,
        }
    }
    Turn::Open
}

/// Handles the complete lines or frames at the start of `data`; returns the bytes used. A
/// close frame or a stream that is not WebSocket marks the connection closed.
#[inline]
fn parse(c: &mut Conn, data: &[u8], now: u64, stats: &mut Stats, plan: &Plan) -> usize {
    let mut at = 0;
    if c.role == Role::Ws {
        loop {
            match wire::next_frame(&data[at..]) {
                Ok(Some((frame, used))) => {
                    at += used;
                    match frame {
                        Frame::Text(t) => match wire::ws_text(t) {
                            WsText::Delivery(p) => deliver(c, p, now, stats, plan),
                            WsText::Failure { dropped } => stats.error(t, dropped),
                            WsText::Ok(_) | WsText::Other => {}
                        },
                        Frame::Ping(p) => {
                            let mut pong = Vec::with_capacity(p.len() + 6);
                            wire::client_frame(&mut pong, wire::OP_PONG, p, mask_key());
                            if (&c.stream).write_all(&pong).is_err() {
                                c.open = false;
                            }
                        }
                        Frame::Close => c.open = false,
                        Frame::Other => {}
                    }
                }
                Ok(None) => break,
                Err(bad) => {
                    stats.error(bad.0.as_bytes(), None);
                    c.open = false;
                    break;
                }
            }
        }
        return at;
    }
    while let Some((line, used)) = wire::next_line(&data[at..]) {
        at += used;
        match line {
            Line::Delivery(p) if c.is_subscriber() => deliver(c, p, now, stats, plan),
            Line::Error(reason) => stats.error(reason, wire::dropped_count(reason)),
            Line::Pong if !c.is_subscriber() => {
                stats.pongs += 1;
                stats.last_pong = stats.last_pong.max(now);
            }
            Line::Delivery(_) | Line::Pong | Line::Other(_) => {}
        }
    }
    at
}

/// Checks and counts one delivered payload.
#[inline]
fn deliver(c: &mut Conn, p: &[u8], now: u64, stats: &mut Stats, plan: &Plan) {
    let Some(stamp) = payload::decode(p) else {
        stats.bad_payloads += 1;
        return;
    };
    let Some(next) = usize::try_from(stamp.publisher)
        .ok()
        .and_then(|i| c.next_seq.get_mut(i))
    else {
        stats.bad_payloads += 1;
        return;
    };
    if stamp.seq == *next {
        *next += 1;
    } else if stamp.seq > *next {
        stats.seq_gaps += stamp.seq - *next;
        *next = stamp.seq + 1;
    } else {
        stats.out_of_order += 1;
    }
    c.delivered += 1;
    if c.delivered >= plan.expected_per_sub {
        c.done = true;
    }
    stats.delivered += 1;
    stats.latency.record(now.saturating_sub(stamp.sent));
    stats.last_rx = stats.last_rx.max(now);
}
