//! The monitoring listener (`monitor_listen_address`, default `127.0.0.1:9445`): plain HTTP
//! for operators, on a port of its own, with a small thread budget of its own.
//!
//! | path | answer |
//! | --- | --- |
//! | `/healthz` | `200 ok`, or `503` with the reasons: shutting down, full, a backend down |
//! | `/varz` | identity, listen addresses, limits, totals and every counter of `/metrics` |
//! | `/connz?sort=queued_bytes\|dropped\|subscriptions\|age&limit=N&subs=1` | one object per connection |
//! | `/subsz?limit=N` | the tag sets with the most subscribers |
//! | `/metrics` | the Prometheus text of the HTTP port |
//!
//! What each path answers, and how the snapshots are taken without stalling publishers, is in
//! `endpoints`; this module takes the connections.
//!
//! # Threads and bounds
//!
//! One thread (`mist-accept-monitor`) accepts, and [`MAX_MONITOR_CONNECTIONS`] workers
//! (`mist-monitor`), started with the listener, serve the connections it admits: each reads one
//! request head, writes the answer and closes (one request per connection, `Connection: close`,
//! always a `Content-Length`). The workers are there from the start, so the listener still
//! answers when the process can start no more threads, which is when an operator needs it most.
//! Nothing here takes a client's `max_connections` slot, and the client listeners have threads
//! of their own; a flood of monitoring connections costs at most what these bounds allow:
//!
//! - at most [`MAX_MONITOR_CONNECTIONS`] connections in service at once (one per worker, so an
//!   admitted connection never waits for one), and [`MAX_MONITOR_CONNECTIONS_PER_ADDRESS`] from
//!   one client address (an IPv4 address or an IPv6 /64, as in `pending.rs`). A connection past
//!   either is answered by the accept thread at once, 429 (its address) or 503 (all), without
//!   being read, and closed: a request is either served or refused promptly, never left waiting
//!   for a slot. The refusals are counted in `mist_monitor_connections_refused_total`, and the
//!   first of a run is logged.
//! - the request head is read by `http::read_head`, as on the HTTP port: at most `MAX_HEAD`
//!   bytes and `MAX_HEADERS` fields (431), complete within [`MONITOR_HEAD_TIMEOUT`] (408).
//! - the answer is written within [`ANSWER_TIMEOUT`], however slowly the client reads.
//!
//! A slot is thus held for at most the head's 5 s, the answer's 10 s and the closing linger's
//! 1 s. The accept thread outlives accept errors (out of descriptors, say): it logs the first of
//! a run, waits `net::ACCEPT_BACKOFF` and tries again.

mod endpoints;

pub use endpoints::{ConnzSort, MAX_MONITOR_LIMIT};

use crate::context::Context;
use crate::health::Health;
use crate::http::{self, Head};
use crate::metrics::{self, Metrics};
use crate::net;
use crate::pending::{HeadSlot, PendingHeads, Refusal};
use crate::report::ErrorChain;
use ::http::header;
use ::http::{Response, StatusCode};
use crossbeam_channel::{Receiver, Sender};
use endpoints::Sources;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

/// Monitoring connections in service at once, from all addresses, and the workers that serve
/// them. What operators' tools open at once is a handful: a Prometheus scrape, `mist top` (one
/// request at a time), a health check, someone with `curl`. Sixteen leaves room for several of
/// each, and bounds what a flood costs: 16 answers in memory, the largest being a `/connz` of
/// every connection (about 2.5 MB for 10,000 of them), on 16 threads that cost little while
/// idle (their stacks are reserved, not touched; 64 of the process's memory mappings).
pub const MAX_MONITOR_CONNECTIONS: usize = 16;
/// Monitoring connections in service at once from one client address. On the default loopback
/// listener every tool comes from 127.0.0.1: four let a scraper, `mist top`, a health check and
/// one person's `curl` through together, while an address that floods the listener holds at
/// most a quarter of it, and the other addresses are still answered.
pub const MAX_MONITOR_CONNECTIONS_PER_ADDRESS: usize = 4;
/// How long a monitoring client has to send its whole request head. Tools send it in one
/// packet; five seconds is ample on a loaded host, and frees a stalled connection's slot soon.
pub const MONITOR_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing an answer may take. A `/connz` of 10,000 connections crosses loopback in
/// milliseconds; a client that cannot take it in ten seconds gives its slot up.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/varz` tells about the server besides its state.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node_name: String,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    pub started: SystemTime,
}

/// A running monitoring listener.
pub struct Monitor {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
}

/// What the accept thread and the workers share.
struct Shared {
    sources: Sources,
    /// The slots of the connections in service, bounded in total and per address.
    slots: Arc<PendingHeads>,
    /// The sockets of the connections in service, for shutdown to close.
    open: Arc<OpenSockets>,
    stop: AtomicBool,
}

/// An admitted connection, on its way to a worker. Dropping it gives its slot back.
struct Job {
    stream: Arc<TcpStream>,
    peer: SocketAddr,
    _slot: HeadSlot,
    _tracked: Tracked,
}

impl Monitor {
    /// Serves the monitoring endpoints on `listener` (already bound).
    ///
    /// # Errors
    /// The listener's address cannot be read, or its threads cannot be started.
    pub fn start(
        listener: TcpListener,
        ctx: Arc<Context>,
        identity: Identity,
        health: Health,
    ) -> io::Result<Monitor> {
        let addr = listener.local_addr()?;
        let open = Arc::new(OpenSockets::new(Arc::clone(&ctx.metrics)));
        let shared = Arc::new(Shared {
            sources: Sources {
                ctx,
                identity,
                monitor: addr,
                health: Arc::new(health),
                started: Instant::now(),
            },
            slots: Arc::new(PendingHeads::new(
                MAX_MONITOR_CONNECTIONS,
                MAX_MONITOR_CONNECTIONS_PER_ADDRESS,
            )),
            open,
            stop: AtomicBool::new(false),
        });
        // Bounded, and never full: it holds admitted connections only, at most one per worker.
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(MAX_MONITOR_CONNECTIONS);
        let workers = (0..MAX_MONITOR_CONNECTIONS)
            .map(|_| {
                let (queue, shared) = (queue.clone(), Arc::clone(&shared));
                thread::Builder::new()
                    .name("mist-monitor".into())
                    // The stack of the WebSocket readers: room for serde_json, also in debug
                    // builds.
                    .stack_size(net::WS_STACK)
                    .spawn(move || work(&queue, &shared.sources))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("mist-accept-monitor".into())
                .spawn(move || accept_loop(&listener, &shared, &jobs))?
        };
        Ok(Monitor {
            shared,
            addr,
            acceptor,
            workers,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends the connections in service and waits for the workers, then stops
    /// the health thread.
    pub fn shutdown(self) {
        self.shared.stop.store(true, Ordering::Release);
        net::wake_accept(self.addr);
        // Its end drops the sending side of the queue: the workers end once it is empty.
        let _ = self.acceptor.join();
        self.shared.open.close_all();
        for w in self.workers {
            let _ = w.join();
        }
        self.shared.sources.health.shutdown();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Shared, jobs: &Sender<Job>) {
    let mut errors = net::AcceptErrors::new("monitoring listener");
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                errors.accepted();
                admit(shared, jobs, stream, peer);
            }
            Err(e) => errors.failed(&e),
        }
    }
}

/// Gives a connection its slot and hands it to the workers, or refuses it at once.
fn admit(shared: &Shared, jobs: &Sender<Job>, stream: TcpStream, peer: SocketAddr) {
    let slot = match shared.slots.try_take(peer.ip()) {
        Ok(slot) => slot,
        Err(refusal) => return refuse(shared, &stream, peer, refusal),
    };
    let stream = Arc::new(stream);
    let job = Job {
        _tracked: shared.open.track(&stream),
        stream,
        peer,
        _slot: slot,
    };
    // Never blocks: a slot is given back only after its job has left the queue, so the queue
    // holds fewer jobs than there are slots.
    if jobs.send(job).is_err() {
        log::debug!("monitoring: {peer}: the workers have stopped");
    }
}

/// Serves admitted connections until the accept thread ends. A panic while serving one ends
/// only that connection: the worker goes on with the next.
fn work(queue: &Receiver<Job>, sources: &Sources) {
    for job in queue {
        let Job {
            stream,
            peer,
            _slot: slot,
            _tracked: tracked,
        } = job;
        let served = panic::catch_unwind(AssertUnwindSafe(|| {
            serve(sources, &stream, peer, slot);
        }));
        if served.is_err() {
            log::error!("monitoring: {peer}: the answer panicked");
        }
        drop(tracked);
    }
}

/// Answers a connection over the bounds, from the accept thread: 429 when its address holds
/// all of its slots, 503 when the listener holds all of them. Counted by reason; only the first
/// refusal of a run is a warning, so that a flood cannot flood the log.
fn refuse(shared: &Shared, stream: &TcpStream, peer: SocketAddr, refusal: Refusal) {
    let m = &shared.sources.ctx.metrics;
    let (status, body, counter) = match refusal {
        Refusal::Address { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "too many monitoring connections from this address\n",
            &m.monitor_refused_address,
        ),
        Refusal::Total { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many monitoring connections\n",
            &m.monitor_refused_server,
        ),
    };
    metrics::add(counter, 1);
    let why = match refusal {
        Refusal::Address { limit, .. } => {
            format!("its address has {limit} monitoring connections in service")
        }
        Refusal::Total { limit, .. } => format!("{limit} monitoring connections in service"),
    };
    if refusal.first() {
        log::warn!(
            "monitoring: {peer}: {why}; answering {} to more until some end",
            status.as_u16()
        );
    } else {
        log::debug!("monitoring: {peer}: {why}; answered {}", status.as_u16());
    }
    write_refusal(stream, status, body);
}

/// Writes a short refusal without reading the request, and closes. The accept thread must not
/// wait on the client: the answer fits in the socket's send buffer, and the close does not
/// linger.
fn write_refusal(stream: &TcpStream, status: StatusCode, body: &str) {
    let head = http::response_head(text(status, body));
    let deadline = Instant::now() + Duration::from_millis(100);
    let _ = net::write_all_before(stream, &[&head, body.as_bytes()], deadline);
    net::close_without_reset(stream);
}

/// Serves one admitted connection: one request head, one answer. Its slot is given back once
/// the answer is written, before the connection is closed: a client that reads the answer to
/// its end finds the slot free again, so a script's requests one after another never meet
/// their own slots (the closing takes a worker for at most a second, and the job queue holds
/// as many jobs as there are slots).
fn serve(sources: &Sources, stream: &TcpStream, peer: SocketAddr, slot: HeadSlot) {
    let written = match http::read_head(stream, Instant::now() + MONITOR_HEAD_TIMEOUT) {
        Ok(head) => {
            let answer = endpoints::answer(sources, &head, peer);
            let r = response(answer.status, answer.content_type, &answer.body);
            write(stream, peer, r, wants_body(&head))
        }
        Err(e) => {
            log::debug!("monitoring: {peer}: {}", ErrorChain(&e));
            match e.status() {
                Some(status) => write(stream, peer, text(status, &format!("{e}\n")), true),
                None => false,
            }
        }
    };
    drop(slot);
    if written {
        net::linger(stream);
    }
}

/// Whether the answer carries its body: not for `HEAD`, which gets only the head.
fn wants_body(head: &Head) -> bool {
    head.method != "HEAD"
}

/// A response of `content_type`, never cached; a 405 says which methods are allowed.
fn response<'a>(status: StatusCode, content_type: &str, body: &'a str) -> Response<&'a str> {
    let mut r = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store");
    if status == StatusCode::METHOD_NOT_ALLOWED {
        r = r.header(header::ALLOW, "GET, HEAD");
    }
    r.body(body).expect("the headers are static, all valid")
}

/// A plain-text response.
fn text(status: StatusCode, body: &str) -> Response<&str> {
    response(status, "text/plain; charset=utf-8", body)
}

/// Writes a response within [`ANSWER_TIMEOUT`]; true when it was all written (then the caller
/// closes without cutting the client off). Only the head when `with_body` is false (the answer
/// to `HEAD`).
fn write(stream: &TcpStream, peer: SocketAddr, response: Response<&str>, with_body: bool) -> bool {
    let body = if with_body { *response.body() } else { "" };
    let head = http::response_head(response);
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    match net::write_all_before(stream, &[&head, body.as_bytes()], deadline) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("monitoring: {peer}: cannot answer: {e}");
            false
        }
    }
}

/// The sockets of the connections in service, so that shutdown can end them at once instead of
/// waiting out their deadlines; counted in `mist_monitor_connections`.
struct OpenSockets {
    /// A mutex: taken when a connection is admitted and when it ends, and at shutdown; never
    /// held across I/O other than `shutdown(2)`, which does not block.
    sockets: Mutex<HashMap<u64, Arc<TcpStream>>>,
    next: AtomicU64,
    metrics: Arc<Metrics>,
}

/// A socket in its listener's [`OpenSockets`]; dropping it takes it out.
struct Tracked {
    open: Arc<OpenSockets>,
    id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.open.sockets.lock().remove(&self.id);
        metrics::sub(&self.open.metrics.monitor_connections, 1);
    }
}

impl OpenSockets {
    fn new(metrics: Arc<Metrics>) -> OpenSockets {
        OpenSockets {
            sockets: Mutex::default(),
            next: AtomicU64::new(0),
            metrics,
        }
    }

    fn track(self: &Arc<Self>, stream: &Arc<TcpStream>) -> Tracked {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.sockets.lock().insert(id, Arc::clone(stream));
        metrics::add(&self.metrics.monitor_connections, 1);
        Tracked {
            open: Arc::clone(self),
            id,
        }
    }

    /// Shuts every socket in service: reads and writes on them fail at once.
    fn close_all(&self) {
        for s in self.sockets.lock().values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}
