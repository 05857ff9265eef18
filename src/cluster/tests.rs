//! The bus's threads against an engine in memory: what they promise does not depend on
//! PostgreSQL (tests/it/cluster.rs runs the real thing).

use super::*;
use crate::auth::memory::MemoryStore;
use crate::broker::Subscriber;
use crate::outbound::{Outbound, Transport};
use crate::tags::TagSet;
use crate::{Config, Context};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::time::Instant;

/// Every node's listener gets every unit, whole and in the order units were sent.
#[derive(Default)]
struct Hub {
    listeners: Mutex<Vec<Sender<String>>>,
    /// Held by a test to make every send hang, as a stuck database would.
    gate: Mutex<()>,
    /// Sends begun.
    sends: AtomicUsize,
}

struct MemEngine(Arc<Hub>);
struct MemOut(Arc<Hub>);
struct MemIn(Receiver<String>);

/// Small payloads, so that messages are cut over many of them.
const MEM_PAYLOAD: usize = 100;

impl Engine for MemEngine {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn max_payload(&self) -> usize {
        MEM_PAYLOAD
    }
    fn connect_sender(&self, _node: &str) -> Result<Box<dyn Outgoing>, BusError> {
        Ok(Box::new(MemOut(Arc::clone(&self.0))))
    }
    fn connect_listener(&self, _node: &str) -> Result<Box<dyn Incoming>, BusError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.0.listeners.lock().push(tx);
        Ok(Box::new(MemIn(rx)))
    }
}

impl Outgoing for MemOut {
    fn charset(&self) -> Charset {
        Charset::Utf8
    }
    fn send(&mut self, payloads: &[String]) -> Result<(), BusError> {
        self.0.sends.fetch_add(1, Relaxed);
        let _stuck = self.0.gate.lock();
        for l in self.0.listeners.lock().iter() {
            for p in payloads {
                assert!(p.len() <= MEM_PAYLOAD);
                let _ = l.send(p.clone());
            }
        }
        Ok(())
    }
    fn queue_usage(&mut self) -> Result<Option<f64>, BusError> {
        Ok(Some(0.25))
    }
}

impl Incoming for MemIn {
    fn receive(
        &mut self,
        timeout: Duration,
        max: usize,
        out: &mut Vec<String>,
    ) -> Result<usize, BusError> {
        let Ok(first) = self.0.recv_timeout(timeout) else {
            return Ok(0);
        };
        out.push(first);
        out.extend(self.0.try_iter().take(max - 1));
        Ok(out.len())
    }
}

fn node(hub: &Arc<Hub>, name: &str) -> (Arc<Context>, Bus) {
    let config = Config {
        client_queue: 1 << 20,
        ..Config::default()
    };
    let ctx = Context::new(config, Box::new(MemoryStore::new()));
    let bus = Bus::start(Box::new(MemEngine(Arc::clone(hub))), "memory", name, &ctx).unwrap();
    (ctx, bus)
}

/// A subscriber on `ctx` with the client's end of its socket.
fn subscriber(ctx: &Context, tags: &str) -> BufReader<TcpStream> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (server, peer) = listener.accept().unwrap();
    let out = Outbound::new(
        Arc::new(server),
        Transport::Tcp,
        ctx.limits(),
        Arc::clone(&ctx.metrics),
        Arc::clone(&ctx.queue_memory),
        peer,
    );
    let sub = Subscriber {
        id: ctx.broker.next_client_id(),
        out,
    };
    let set = TagSet::parse(tags.as_bytes(), 32).unwrap();
    ctx.broker.subscribe(&sub, &set).unwrap();
    BufReader::new(client)
}

fn line(r: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut l = Vec::new();
    r.read_until(b'\n', &mut l)
        .expect("a line before the timeout");
    l
}

/// Polls `cond` until it holds; fails after 30 s. For state with nothing to read.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn set(tags: &str) -> TagSet {
    TagSet::parse(tags.as_bytes(), 32).unwrap()
}

#[test]
fn messages_reach_the_other_node_once_in_order_and_whole() {
    let hub = Arc::new(Hub::default());
    let (a, bus_a) = node(&hub, "a");
    let (b, bus_b) = node(&hub, "b");
    let mut on_a = subscriber(&a, "t");
    let mut on_b = subscriber(&b, "t");
    let big: Vec<u8> = (0..5000u32)
        .map(|i| (i % 251) as u8)
        .filter(|&b| b != b'\n')
        .collect();
    let mut want = Vec::new();
    for i in 0..300 {
        let data = if i % 100 == 7 {
            big.clone()
        } else {
            format!("m{i}\0\u{fffd}").into_bytes()
        };
        a.publish(&set("t"), &data).unwrap();
        let mut l = b"publish t ".to_vec();
        l.extend_from_slice(&data);
        l.push(b'\n');
        want.push(l);
    }
    for w in &want {
        assert_eq!(&line(&mut on_b), w);
    }
    // Sent after b received everything, so after a's messages came back to a through the hub
    // (and were skipped): on a, nothing comes between a's own messages and this marker.
    b.publish(&set("t"), b"end").unwrap();
    assert_eq!(line(&mut on_b), b"publish t end\n");
    for w in &want {
        assert_eq!(&line(&mut on_a), w);
    }
    assert_eq!(line(&mut on_a), b"publish t end\n");
    let m = a.metrics.bus.get().unwrap();
    assert_eq!(m.messages_sent.load(Relaxed), 300);
    assert!(
        m.payloads_sent.load(Relaxed) > 300,
        "large messages span payloads"
    );
    // Counted just after the delivery.
    wait_for("a's count", || m.messages_received.load(Relaxed) == 1);
    assert_eq!(
        b.metrics.bus.get().unwrap().messages_received.load(Relaxed),
        300
    );
    assert_eq!(f64::from_bits(m.queue_usage.load(Relaxed)), 0.0);
    bus_a.stop();
    bus_b.stop();
}

/// A bus that hangs (a database that stopped answering) never holds up a publisher: once the
/// channel to the sender is full, the bus copies are dropped and counted, and everything
/// else is sent once the bus moves again.
#[test]
fn a_stuck_bus_never_holds_up_publishers() {
    let hub = Arc::new(Hub::default());
    let (a, bus_a) = node(&hub, "a");
    let (b, bus_b) = node(&hub, "b");
    let mut on_b = subscriber(&b, "t");
    let stuck = hub.gate.lock();
    // The sender takes a first message and hangs in its send.
    a.publish(&set("t"), b"first").unwrap();
    wait_for("the sender to send", || hub.sends.load(Relaxed) > 0);
    // The channel holds QUEUE_BATCHES batches (one message each here); the rest is dropped.
    let n = QUEUE_BATCHES as u64 + 10_000;
    let (done_tx, done_rx) = mpsc::channel();
    let publisher = {
        let a = Arc::clone(&a);
        std::thread::spawn(move || {
            for i in 0..n {
                a.publish(&set("t"), format!("{i}").as_bytes()).unwrap();
            }
            done_tx.send(()).unwrap();
        })
    };
    done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("publishing does not wait for the bus");
    publisher.join().unwrap();
    let m = Arc::clone(a.metrics.bus.get().unwrap());
    assert_eq!(m.messages_dropped.load(Relaxed), 10_000);
    drop(stuck);
    wait_for("the queued messages to be sent", || {
        m.messages_sent.load(Relaxed) == QUEUE_BATCHES as u64 + 1
    });
    assert_eq!(m.messages_dropped.load(Relaxed), 10_000);
    assert_eq!(m.queued_bytes.load(Relaxed), 0);
    // What waited arrives, in order: the first message, then the first QUEUE_BATCHES.
    assert_eq!(line(&mut on_b), b"publish t first\n");
    for i in 0..QUEUE_BATCHES {
        assert_eq!(line(&mut on_b), format!("publish t {i}\n").as_bytes());
    }
    bus_a.stop();
    bus_b.stop();
}

#[test]
fn backoff_doubles_up_to_five_seconds() {
    let mut b = Backoff::new();
    let delays: Vec<u64> = (0..8).map(|_| b.next().as_millis() as u64).collect();
    assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
}

#[test]
fn node_ids_differ() {
    assert_ne!(random_id(), random_id());
}
