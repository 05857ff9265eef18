//! The publish/subscribe scenarios: fanout, fanin, latency, index and conns differ only in
//! their defaults (subscribers, publishers, rate, noise), so one run serves them all:
//!
//! 1. With `--transport ws`, register a token over TCP that grants the subscribed tags.
//! 2. Open the noise connections (index), each sending its subscriptions pipelined and one
//!    `ping`, and wait for every `pong`.
//! 3. Open the subscribers, each confirmed (`pong`, or the WebSocket subscribe reply).
//! 4. Open the publishers, each confirmed with a `ping`.
//! 5. Release the publishers together; reader threads count deliveries; the run ends when
//!    every subscriber has everything, when deliveries stop for `--idle` seconds after the
//!    publishers finished, or at `--timeout`.
//! 6. Read the server's CPU time and memory while every connection is still open, then close.

use super::net::{self, Control, Deadline};
use super::payload::{self, Clock, Stamp};
use super::reader::{Conn, Plan, Reader, Role, Stats};
use super::report::{Latency, Params, PubSub, Server};
use super::{BenchError, Options, Transport, progress, sys, wire};
use mist::TagSet;
use mist::client::{self, Client};
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

/// Publishers write through a buffer this large, and flush when it is full (or, when paced,
/// whenever they have caught up with their schedule).
const PUBLISH_BUFFER: usize = 256 * 1024;
/// Threads that open subscriber connections at the same time.
const SETUP_THREADS: usize = 16;
/// Noise tags are drawn from `n0` to `n999999`.
const NOISE_VOCABULARY: u64 = 1_000_000;
/// How often the monitoring loop looks at the readers' progress.
const POLL: Duration = Duration::from_millis(5);

fn setup_error(msg: impl Into<String>) -> BenchError {
    BenchError::Setup(msg.into())
}

/// A WebSocket token registered for the run, removed again when dropped.
struct Token {
    control: Control,
    token: String,
}

impl Drop for Token {
    fn drop(&mut self) {
        self.control.unregister(&self.token);
    }
}

/// Runs one publish/subscribe measurement.
///
/// # Errors
/// A connection could not be opened or confirmed before the deadline.
pub fn run(o: &Options) -> Result<PubSub, BenchError> {
    let clock = Clock::start();
    let deadline = Deadline::after(o.timeout);
    let mut server = Server {
        base: o.server_pid.and_then(sys::memory),
        ..Server::default()
    };

    let token = match o.transport {
        Transport::Ws => Some(register_token(o, deadline)?),
        Transport::Tcp => None,
    };
    let noise = open_noise(o, &clock, deadline)?;
    let subs = open_subscribers(
        o,
        token.as_ref().map(|t| t.token.as_str()),
        &clock,
        deadline,
    )?;
    let stalled = open_stalled(o, o.stalled, "stalled", deadline)?;
    let slow_streams = open_stalled(o, o.slow, "slow", deadline)?;
    server.setup = o.server_pid.and_then(sys::memory);
    server.conns = subs.len() + noise.len() + stalled.len() + slow_streams.len();
    server.noise_subs = o.noise_subs;

    let mut publishers = Vec::with_capacity(o.pubs);
    let mut drains = Vec::with_capacity(o.pubs);
    for i in 0..o.pubs {
        let failed = |e: &dyn std::fmt::Display| setup_error(format!("publisher {i}: {e}"));
        if o.client {
            // The client reads its own replies.
            publishers.push(Link::Client(
                open_client(o, deadline).map_err(|e| failed(&e))?,
            ));
            continue;
        }
        let stream = open_publisher(o, deadline).map_err(|e| failed(&e))?;
        drains.push(Conn::drain(stream.try_clone().map_err(|e| failed(&e))?));
        publishers.push(Link::Raw(stream));
    }

    let plan = Plan {
        clock,
        publishers: o.pubs,
        expected_per_sub: o.pubs as u64 * o.msgs,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let readers = spawn_readers(o, subs, drains, plan, &stop)?;
    let slow = slow_streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| SlowReader::spawn(i, stream, o, clock, &stop))
        .collect::<Result<Vec<_>, _>>()?;

    let state = Arc::new(PublishState::default());
    let start = Arc::new(Barrier::new(o.pubs + 1));
    let mut shutdown = Vec::with_capacity(o.pubs);
    let mut handles = Vec::with_capacity(o.pubs);
    let prefix = format!("publish {} ", o.topic).into_bytes();
    let topic = tag_set(&o.topic)?;
    for (i, link) in publishers.into_iter().enumerate() {
        shutdown.push(
            link.try_clone()
                .map_err(|e| setup_error(format!("publisher {i}: {e}")))?,
        );
        let job = Publisher {
            index: i as u64,
            msgs: o.msgs,
            rate: o.rate,
            size: o.size,
            prefix: prefix.clone(),
            topic: topic.clone(),
            clock,
        };
        let (start, stop, state) = (Arc::clone(&start), Arc::clone(&stop), Arc::clone(&state));
        let handle = thread::Builder::new()
            .name(format!("mist-bench-pub-{i}"))
            .spawn(move || job.run(link, &start, &stop, &state))
            .map_err(|e| setup_error(format!("cannot start a publisher thread: {e}")))?;
        handles.push(handle);
    }

    let setup_secs = clock.secs();
    progress(
        &clock,
        format_args!(
            "set up; {} publisher(s) × {} messages to {} subscriber(s)",
            o.pubs, o.msgs, o.subs
        ),
    );
    let cpu_before = o.server_pid.and_then(sys::cpu_seconds);
    let own_before = sys::own_cpu_seconds();
    let started = clock.secs();
    start.wait();

    let end = watch(o, &clock, deadline, &readers, &state);

    let cpu_after = o.server_pid.and_then(sys::cpu_seconds);
    server.end = o.server_pid.and_then(sys::memory);
    let client_cpu_secs = sys::own_cpu_seconds() - own_before;
    server.cpu_secs = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
    let run_secs = clock.secs() - started;

    let slow_counts = finish_slow(&slow, &state, o.idle, &clock);
    let told = hear_stalled(&stalled, o.idle);
    stop.store(true, Ordering::Relaxed);
    for link in &shutdown {
        link.stop();
    }
    let mut published = 0;
    let mut first = u64::MAX;
    let mut last = 0;
    let mut publisher_failures = 0;
    for h in handles {
        let r = h
            .join()
            .map_err(|_| setup_error("a publisher thread panicked"))?;
        published += r.sent;
        first = first.min(r.first);
        last = last.max(r.end);
        if let Some(e) = r.error {
            publisher_failures += 1;
            eprintln!("mist bench: a publisher failed: {e}");
        }
    }
    let mut stats = Stats::default();
    for r in readers {
        let s = r.join().map_err(|e| setup_error(format!("reading: {e}")))?;
        stats.merge(&s);
    }
    for s in slow {
        let _ = s.handle.join();
    }
    drop(noise);
    drop(token);

    let first = if first == u64::MAX { 0 } else { first };
    let secs = |t: u64| t.saturating_sub(first) as f64 / 1e9;
    // What the server was given to deliver: a run that ends early has published less.
    let expected = o.subs as u64 * published;
    progress(
        &clock,
        format_args!("{end}: delivered {} of {expected}", stats.delivered),
    );
    Ok(PubSub {
        params: Params {
            scenario: o.scenario.name(),
            transport: o.transport.name(),
            subs: o.subs,
            pubs: o.pubs,
            msgs: o.msgs,
            size: o.size,
            rate: o.rate,
            topic: o.topic.clone(),
            sub_tags: o.sub_tags.clone(),
            noise_subs: o.noise_subs,
            noise_conns: if o.noise_subs > 0 { o.noise_conns } else { 0 },
            pub_addr: o.pub_addr.clone(),
            sub_threads: o.sub_threads.min(o.subs),
            publisher: if o.client { "client" } else { "raw" },
        },
        published,
        publish_secs: secs(last),
        expected,
        delivered: stats.delivered,
        delivery_secs: if stats.delivered > 0 {
            secs(stats.last_rx)
        } else {
            0.0
        },
        seq_gaps: stats.seq_gaps,
        out_of_order: stats.out_of_order,
        errors: stats.errors,
        dropped_notified: stats.dropped_notified,
        bad_payloads: stats.bad_payloads,
        subs_closed: stats.subs_closed,
        publisher_failures,
        latency: Latency::of(&stats.latency),
        setup_secs,
        client_cpu_secs,
        server,
        end,
        run_secs,
        stalled: o.stalled,
        stalled_told: told,
        pong_secs: (stats.pongs == o.pubs).then(|| secs(stats.last_pong)),
        slow: o.slow,
        slow_expected: o.slow as u64 * published,
        slow_delivered: slow_counts.0,
        slow_told: slow_counts.1,
    })
}

/// `n` subscribers that subscribe and confirm, and are then left alone: stalled ones never
/// read again, slow ones are read by a [`SlowReader`]. (Their receive buffers are left
/// alone: shrinking one after connecting makes TCP crawl once it is read again.)
fn open_stalled(
    o: &Options,
    n: usize,
    what: &str,
    deadline: Deadline,
) -> Result<Vec<TcpStream>, BenchError> {
    (0..n)
        .map(|i| {
            let mut stream = net::connect(&o.tcp_addr, deadline)
                .map_err(|e| setup_error(format!("{what} subscriber {i}: {e}")))?;
            stream
                .write_all(format!("subscribe {}\nping\n", o.sub_tags).as_bytes())
                .and_then(|()| net::await_pong(&stream, &mut Vec::new(), deadline))
                .map_err(|e| setup_error(format!("{what} subscriber {i}: {e}")))?;
            Ok(stream)
        })
        .collect()
}

/// What a slow subscriber has received so far. Atomics: its thread writes, the main thread
/// polls; relaxed, because each value stands alone.
#[derive(Default)]
struct SlowCounts {
    delivered: AtomicU64,
    /// The sum of the slow-consumer notices' counts.
    told: AtomicU64,
    /// Clock time of the latest read that brought anything.
    last_rx: AtomicU64,
}

/// A subscriber that reads `--slow-read` bytes at a time and pauses `--slow-pause` after
/// each read: a reader that keeps up with a modest stream but not with a burst.
struct SlowReader {
    handle: thread::JoinHandle<()>,
    counts: Arc<SlowCounts>,
}

impl SlowReader {
    fn spawn(
        i: usize,
        stream: TcpStream,
        o: &Options,
        clock: Clock,
        stop: &Arc<AtomicBool>,
    ) -> Result<SlowReader, BenchError> {
        let counts = Arc::new(SlowCounts::default());
        let (c, stop) = (Arc::clone(&counts), Arc::clone(stop));
        let (read, pause) = (o.slow_read, Duration::from_secs_f64(o.slow_pause));
        let handle = thread::Builder::new()
            .name(format!("mist-bench-slow-{i}"))
            .spawn(move || read_slowly(&stream, read, pause, clock, &stop, &c))
            .map_err(|e| setup_error(format!("cannot start a slow reader: {e}")))?;
        Ok(SlowReader { handle, counts })
    }
}

fn read_slowly(
    mut stream: &TcpStream,
    read: usize,
    pause: Duration,
    clock: Clock,
    stop: &AtomicBool,
    counts: &SlowCounts,
) {
    // The connection helpers leave sockets non-blocking; a slow reader blocks, briefly, so
    // that it sees the stop flag.
    if stream.set_nonblocking(false).is_err()
        || stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .is_err()
    {
        return;
    }
    let mut buf = vec![0u8; read];
    let mut tail: Vec<u8> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return,
        };
        tail.extend_from_slice(&buf[..n]);
        let mut at = 0;
        let (mut delivered, mut told) = (0, 0);
        while let Some((line, used)) = wire::next_line(&tail[at..]) {
            at += used;
            match line {
                wire::Line::Delivery(_) => delivered += 1,
                wire::Line::Error(reason) => told += wire::dropped_count(reason).unwrap_or(0),
                _ => {}
            }
        }
        tail.drain(..at);
        counts.delivered.fetch_add(delivered, Ordering::Relaxed);
        counts.told.fetch_add(told, Ordering::Relaxed);
        counts.last_rx.store(clock.now(), Ordering::Relaxed);
        if !pause.is_zero() {
            thread::sleep(pause);
        }
    }
}

/// Once the publishers are done, waits until every slow subscriber has received or been told
/// of every message, or has received nothing for `idle` seconds. Returns the deliveries and
/// the losses they were told of, over all slow subscribers.
fn finish_slow(slow: &[SlowReader], state: &PublishState, idle: f64, clock: &Clock) -> (u64, u64) {
    let idle = (idle * 1e9) as u64;
    let sum = |f: fn(&SlowCounts) -> &AtomicU64| -> u64 {
        slow.iter()
            .map(|s| f(&s.counts).load(Ordering::Relaxed))
            .sum()
    };
    while !slow.is_empty() {
        let sent = state.sent.load(Ordering::Relaxed);
        let accounted = sum(|c| &c.delivered) + sum(|c| &c.told);
        let last = slow
            .iter()
            .map(|s| s.counts.last_rx.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
            .max(state.last_end.load(Ordering::Relaxed));
        if accounted >= sent * slow.len() as u64 || clock.now().saturating_sub(last) >= idle {
            break;
        }
        thread::sleep(POLL);
    }
    (sum(|c| &c.delivered), sum(|c| &c.told))
}

/// After the run, reads each stalled subscriber for at most `secs` in all, until it has been
/// told of its losses (`error slow consumer: dropped N messages`). Returns the subscribers
/// told and the losses they were told of.
fn hear_stalled(stalled: &[TcpStream], secs: f64) -> (usize, u64) {
    let until = std::time::Instant::now() + Duration::from_secs_f64(secs);
    let (mut told, mut dropped) = (0, 0);
    let mut buf = vec![0u8; 1 << 16];
    for mut s in stalled {
        // The connection helpers leave sockets non-blocking; here we wait with a timeout.
        if s.set_nonblocking(false).is_err() {
            continue;
        }
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
                break;
            }
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Only whole lines matter; keep the unfinished one.
            tail.extend_from_slice(&buf[..n]);
            let cut = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let notices: Vec<u64> = tail[..cut]
                .split(|&b| b == b'\n')
                .filter_map(|l| l.strip_prefix(b"error slow consumer: dropped "))
                .filter_map(|l| std::str::from_utf8(l).ok()?.split(' ').next()?.parse().ok())
                .collect();
            tail.drain(..cut);
            if !notices.is_empty() {
                told += 1;
                dropped += notices.iter().sum::<u64>();
                break;
            }
        }
    }
    (told, dropped)
}

fn register_token(o: &Options, deadline: Deadline) -> Result<Token, BenchError> {
    let token = net::unique_token();
    let mut control = Control::open(&o.tcp_addr, o.admin_token.as_deref(), deadline)
        .map_err(|e| setup_error(format!("{}: {e}", o.tcp_addr)))?;
    control
        .register(&o.sub_tags, &token, deadline)
        .map_err(|e| setup_error(format!("registering the WebSocket token: {e}")))?;
    Ok(Token { control, token })
}

/// Runs `job(i)` for every `i` in `0..n` on up to `threads` threads; the results in order, or
/// the first failure (after which the other threads stop early).
fn parallel<T: Send>(
    n: usize,
    threads: usize,
    job: impl Fn(usize) -> Result<T, String> + Sync,
) -> Result<Vec<T>, String> {
    let threads = threads.clamp(1, n.max(1));
    let failed = AtomicBool::new(false);
    let parts: Vec<Result<Vec<(usize, T)>, String>> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                let (job, failed) = (&job, &failed);
                s.spawn(move || {
                    let mut done = Vec::new();
                    for i in (w..n).step_by(threads) {
                        if failed.load(Ordering::Relaxed) {
                            break;
                        }
                        match job(i) {
                            Ok(t) => done.push((i, t)),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a set-up thread panicked".into()))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(n);
    for part in parts {
        all.extend(part?);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

/// The index scenario's idle subscriptions: `--noise-subs` tag sets of 1 to 3 tags that
/// never match a published message, spread over `--noise-conns` connections.
fn open_noise(
    o: &Options,
    clock: &Clock,
    deadline: Deadline,
) -> Result<Vec<TcpStream>, BenchError> {
    if o.noise_subs == 0 {
        return Ok(Vec::new());
    }
    let conns = o.noise_conns.min(o.noise_subs);
    let topic =
        TagSet::parse(o.topic.as_bytes(), usize::MAX).map_err(|e| setup_error(e.to_string()))?;
    let seed = clock.now() ^ (u64::from(std::process::id()) << 32);
    let streams = parallel(conns, conns, |c| {
        let count = o.noise_subs / conns + usize::from(c < o.noise_subs % conns);
        let mut rng = Rng::new(seed.wrapping_add(c as u64));
        open_noise_conn(o, &topic, count, &mut rng, deadline)
            .map_err(|e| format!("noise connection {c}: {e}"))
    })
    .map_err(setup_error)?;
    progress(
        clock,
        format_args!(
            "{} noise subscriptions confirmed on {conns} connections",
            o.noise_subs
        ),
    );
    Ok(streams)
}

fn open_noise_conn(
    o: &Options,
    topic: &TagSet,
    count: usize,
    rng: &mut Rng,
    deadline: Deadline,
) -> Result<TcpStream, String> {
    let stream = net::connect(&o.tcp_addr, deadline).map_err(|e| e.to_string())?;
    let mut w = BufWriter::with_capacity(64 * 1024, &stream);
    let mut line = Vec::with_capacity(64);
    for _ in 0..count {
        noise_subscription(rng, NOISE_VOCABULARY, topic, &mut line);
        w.write_all(&line).map_err(|e| e.to_string())?;
    }
    w.write_all(b"ping\n").map_err(|e| e.to_string())?;
    w.flush().map_err(|e| e.to_string())?;
    drop(w);
    let errors = net::await_pong(&stream, &mut Vec::new(), deadline).map_err(|e| e.to_string())?;
    if let Some(e) = errors.first() {
        return Err(format!(
            "{} of {count} subscriptions refused; server said: error {e}",
            errors.len()
        ));
    }
    Ok(stream)
}

/// `subscribe nA,nB\n` with 1 to 3 random tags, at least one of them not published.
fn noise_subscription(rng: &mut Rng, vocabulary: u64, topic: &TagSet, line: &mut Vec<u8>) {
    loop {
        line.clear();
        line.extend_from_slice(b"subscribe ");
        let k = 1 + rng.below(3);
        let mut matches_topic = true;
        for j in 0..k {
            let tag = format!("n{}", rng.below(vocabulary));
            matches_topic &= topic.contains(&tag);
            if j > 0 {
                line.push(b',');
            }
            line.extend_from_slice(tag.as_bytes());
        }
        line.push(b'\n');
        if !matches_topic {
            return;
        }
    }
}

/// Opens and confirms every subscriber.
fn open_subscribers(
    o: &Options,
    token: Option<&str>,
    clock: &Clock,
    deadline: Deadline,
) -> Result<Vec<Conn>, BenchError> {
    let tags = o.sub_tag_list();
    let subs = parallel(o.subs, SETUP_THREADS, |i| {
        open_subscriber(o, token, &tags, deadline).map_err(|e| format!("subscriber {i}: {e}"))
    })
    .map_err(setup_error)?;
    progress(
        clock,
        format_args!("{} {} subscribers confirmed", o.subs, o.transport.name()),
    );
    Ok(subs)
}

fn open_subscriber(
    o: &Options,
    token: Option<&str>,
    tags: &[String],
    deadline: Deadline,
) -> Result<Conn, String> {
    match (o.transport, token) {
        (Transport::Ws, Some(token)) => {
            let (stream, mut pending) = net::ws_connect(&o.http_addr, token, deadline)?;
            net::ws_subscribe(&stream, &mut pending, tags, deadline)?;
            Ok(Conn::subscriber(stream, Role::Ws, pending))
        }
        _ => {
            let mut stream = net::connect(&o.tcp_addr, deadline).map_err(|e| e.to_string())?;
            stream
                .write_all(format!("subscribe {}\nping\n", o.sub_tags).as_bytes())
                .map_err(|e| e.to_string())?;
            let mut pending = Vec::new();
            let errors =
                net::await_pong(&stream, &mut pending, deadline).map_err(|e| e.to_string())?;
            if let Some(e) = errors.first() {
                return Err(format!("server said: error {e}"));
            }
            Ok(Conn::subscriber(stream, Role::Tcp, pending))
        }
    }
}

/// A publisher on `mist::Client`, with the same write buffer as the benchmark's own.
fn open_client(o: &Options, deadline: Deadline) -> Result<Client, client::Error> {
    let left = deadline.remaining().map_err(client::Error::Io)?;
    client::Options::new()
        .connect_timeout(left)
        .read_timeout(left)
        .write_buffer(PUBLISH_BUFFER)
        .max_tags(usize::MAX)
        .connect(o.pub_addr.as_deref().unwrap_or(&o.tcp_addr))
}

fn tag_set(list: &str) -> Result<TagSet, BenchError> {
    TagSet::parse(list.as_bytes(), usize::MAX)
        .map_err(|e| setup_error(format!("--topic {list:?}: {e}")))
}

/// A publisher's connection: a socket it writes lines to itself, or a [`Client`].
enum Link {
    Raw(TcpStream),
    Client(Client),
}

impl Link {
    /// A second handle, for stopping the publisher from the main thread.
    fn try_clone(&self) -> io::Result<Link> {
        Ok(match self {
            Link::Raw(s) => Link::Raw(s.try_clone()?),
            Link::Client(c) => Link::Client(c.clone()),
        })
    }

    /// Makes a publisher blocked in a write return.
    fn stop(&self) {
        match self {
            Link::Raw(s) => {
                let _ = s.shutdown(Shutdown::Both);
            }
            Link::Client(c) => c.abort(),
        }
    }
}

fn open_publisher(o: &Options, deadline: Deadline) -> io::Result<TcpStream> {
    let addr = o.pub_addr.as_deref().unwrap_or(&o.tcp_addr);
    let mut stream = net::connect(addr, deadline)?;
    stream.write_all(b"ping\n")?;
    let errors = net::await_pong(&stream, &mut Vec::new(), deadline)?;
    if let Some(e) = errors.first() {
        return Err(io::Error::other(format!("server said: error {e}")));
    }
    Ok(stream)
}

/// Spreads the subscribers over `--sub-threads` readers; the first also drains the
/// publishers' sockets.
fn spawn_readers(
    o: &Options,
    subs: Vec<Conn>,
    drains: Vec<Conn>,
    plan: Plan,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<Reader>, BenchError> {
    let n = o.sub_threads.clamp(1, subs.len().max(1));
    let mut groups: Vec<Vec<Conn>> = (0..n).map(|_| Vec::new()).collect();
    for (i, c) in subs.into_iter().enumerate() {
        groups[i % n].push(c);
    }
    groups[0].extend(drains);
    groups
        .into_iter()
        .enumerate()
        .map(|(i, conns)| {
            Reader::spawn(
                format!("mist-bench-read-{i}"),
                conns,
                plan,
                Arc::clone(stop),
            )
            .map_err(|e| setup_error(format!("cannot start a reader: {e}")))
        })
        .collect()
}

/// What the publishers tell the monitoring loop. Atomics: written by the publisher threads,
/// polled by the main thread.
#[derive(Default)]
struct PublishState {
    finished: AtomicUsize,
    /// Messages the finished publishers sent.
    sent: AtomicU64,
    /// Clock time at which the latest publisher finished.
    last_end: AtomicU64,
}

/// One publisher's job.
struct Publisher {
    index: u64,
    msgs: u64,
    rate: f64,
    size: usize,
    /// `publish TOPIC ` (raw links).
    prefix: Vec<u8>,
    /// The topic (client links).
    topic: TagSet,
    clock: Clock,
}

/// What a publisher did.
struct Published {
    sent: u64,
    /// Clock time of the first publish (`u64::MAX` when none).
    first: u64,
    /// Clock time of the last flush.
    end: u64,
    error: Option<String>,
}

impl Publisher {
    fn run(
        self,
        link: Link,
        start: &Barrier,
        stop: &AtomicBool,
        state: &PublishState,
    ) -> Published {
        let mut out = Published {
            sent: 0,
            first: u64::MAX,
            end: 0,
            error: None,
        };
        start.wait();
        let result = match &link {
            Link::Raw(stream) => self.publish(stream, stop, &mut out),
            Link::Client(client) => self
                .publish_client(client, stop, &mut out)
                .map_err(io::Error::other),
        };
        out.end = self.clock.now();
        if let Err(e) = result {
            // After the stop, a failing write is just the socket being shut down.
            if !stop.load(Ordering::Relaxed) {
                out.error = Some(e.to_string());
            }
        }
        state.last_end.fetch_max(out.end, Ordering::Relaxed);
        state.sent.fetch_add(out.sent, Ordering::Relaxed);
        state.finished.fetch_add(1, Ordering::Relaxed);
        out
    }

    /// Publishes until done or stopped. `out.sent` counts only what reached the socket:
    /// lines still in the buffer when a write fails are not published.
    fn publish(
        &self,
        stream: &TcpStream,
        stop: &AtomicBool,
        out: &mut Published,
    ) -> io::Result<()> {
        let mut w = BufWriter::with_capacity(PUBLISH_BUFFER, stream);
        let mut line = self.prefix.clone();
        let at = line.len();
        line.resize(at + self.size, 0);
        line.push(b'\n');
        let result = self.write_all(&mut w, &mut line, at, stop, out);
        // Every line has the same length; a partly written one was not published.
        let (_, unsent) = w.into_parts();
        let unsent = unsent.map_or_else(|p| p.into_inner().len(), |b| b.len());
        out.sent -= unsent.div_ceil(line.len()) as u64;
        result?;
        // Its `pong` (read by the reader that drains this socket) says when the server had
        // taken every message: the publisher's own view of how long publishing took.
        let mut s = stream;
        s.write_all(b"ping\n")
    }

    fn write_all(
        &self,
        w: &mut BufWriter<&TcpStream>,
        line: &mut [u8],
        at: usize,
        stop: &AtomicBool,
        out: &mut Published,
    ) -> io::Result<()> {
        let t0 = self.clock.now();
        for seq in 0..self.msgs {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(wait) = self.ahead(t0, seq) {
                // Caught up with the schedule: send what is buffered, then wait.
                w.flush()?;
                thread::sleep(wait);
            }
            self.stamp(&mut line[at..at + self.size], seq, out);
            w.write_all(line)?;
            out.sent += 1;
        }
        w.flush()
    }

    /// [`write_all`](Self::write_all) through `mist::Client`: the same schedule and payloads,
    /// with the client's buffering, checks and line format. `out.sent` counts the messages the
    /// client took.
    fn publish_client(
        &self,
        client: &Client,
        stop: &AtomicBool,
        out: &mut Published,
    ) -> Result<(), client::Error> {
        let mut payload = vec![0; self.size];
        let t0 = self.clock.now();
        for seq in 0..self.msgs {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(wait) = self.ahead(t0, seq) {
                client.flush()?;
                thread::sleep(wait);
            }
            self.stamp(&mut payload, seq, out);
            client.publish(&self.topic, &payload)?;
            out.sent += 1;
        }
        client.flush()
    }

    /// How long to wait before message `seq` when paced and ahead of the schedule.
    fn ahead(&self, t0: u64, seq: u64) -> Option<Duration> {
        if self.rate <= 0.0 {
            return None;
        }
        let interval = 1e9 / self.rate;
        let due = t0 + (seq as f64 * interval) as u64;
        let now = self.clock.now();
        (now < due).then(|| Duration::from_nanos(due - now))
    }

    /// Writes message `seq`'s payload, stamped now.
    fn stamp(&self, payload: &mut [u8], seq: u64, out: &mut Published) {
        let sent = self.clock.now();
        out.first = out.first.min(sent);
        payload::encode(
            payload,
            Stamp {
                publisher: self.index,
                seq,
                sent,
            },
        );
    }
}

/// Waits for the end of the run; returns how it ended.
fn watch(
    o: &Options,
    clock: &Clock,
    deadline: Deadline,
    readers: &[Reader],
    state: &PublishState,
) -> &'static str {
    let idle = (o.idle * 1e9) as u64;
    let mut next_report = clock.secs() + 1.0;
    loop {
        thread::sleep(POLL);
        let (mut delivered, mut last_rx, mut done, mut closed, mut pongs) = (0, 0, 0, 0, 0);
        for r in readers {
            let p = &r.progress;
            delivered += p.delivered.load(Ordering::Relaxed);
            last_rx = last_rx.max(p.last_rx.load(Ordering::Relaxed));
            done += p.done.load(Ordering::Relaxed);
            closed += p.closed.load(Ordering::Relaxed);
            pongs += p.pongs.load(Ordering::Relaxed);
        }
        // Complete once every subscriber has everything and every publisher its `pong`.
        if done >= o.subs && pongs >= o.pubs {
            return if o.subs == 0 { "published" } else { "complete" };
        }
        if o.subs > 0 && done + closed >= o.subs && done < o.subs {
            return "closed";
        }
        if state.finished.load(Ordering::Relaxed) == o.pubs {
            let quiet_since = last_rx.max(state.last_end.load(Ordering::Relaxed));
            if clock.now().saturating_sub(quiet_since) >= idle {
                return "idle";
            }
        }
        if deadline.passed() {
            return "timeout";
        }
        if clock.secs() >= next_report {
            next_report += 1.0;
            progress(
                clock,
                format_args!(
                    "delivered {delivered} of {}",
                    o.subs as u64 * o.pubs as u64 * o.msgs
                ),
            );
        }
    }
}

/// xorshift64*: enough to pick noise tags.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_never_matches_the_topic() {
        let topic = TagSet::parse(b"n1,n2,n3", 32).unwrap();
        let mut rng = Rng::new(7);
        let mut line = Vec::new();
        for _ in 0..1000 {
            // From n0..n4, most draws match: the generator must retry those.
            noise_subscription(&mut rng, 5, &topic, &mut line);
            let list = std::str::from_utf8(&line).unwrap();
            let list = list.strip_prefix("subscribe ").unwrap().trim_end();
            let set = TagSet::parse(list.as_bytes(), 32).unwrap();
            assert!(!set.is_subset_of(&topic), "{list}");
            assert!((1..=3).contains(&list.split(',').count()));
        }
    }

    #[test]
    fn parallel_keeps_order_and_reports_failures() {
        let squares = parallel(100, 7, |i| Ok(i * i)).unwrap();
        assert_eq!(squares, (0..100).map(|i| i * i).collect::<Vec<_>>());
        let failed = parallel(100, 7, |i| {
            if i == 42 {
                Err("no".to_string())
            } else {
                Ok(i)
            }
        });
        assert_eq!(failed, Err("no".to_string()));
        assert_eq!(parallel(0, 4, Ok), Ok(Vec::<usize>::new()));
    }
}
