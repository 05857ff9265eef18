//! Broker semantics over the line protocol: a message matches a subscription when the
//! subscription's tags are a subset of the message's; each client gets a message at most once;
//! per publisher, order is kept. Fixed cases first, then a randomized comparison with a plain
//! model.

use crate::support::{LineClient, TIMEOUT, TestServer};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Instant;

/// A client with Nagle's algorithm off: these tests send a command and a `ping` as two small
/// writes many times over, and would otherwise wait for a delayed ACK each time.
fn quick_client(server: &TestServer) -> LineClient {
    let c = server.client();
    c.stream.set_nodelay(true).unwrap();
    c
}

#[test]
fn only_the_subset_subscription_receives() {
    let server = TestServer::start();
    let mut bc = quick_client(&server);
    let mut ad = quick_client(&server);
    bc.send("subscribe b,c");
    ad.send("subscribe a,d");
    bc.ping();
    ad.ping();
    let mut publ = quick_client(&server);
    publ.send("publish a,b,c m");
    publ.ping();
    assert_eq!(bc.sync(), ["publish a,b,c m"]);
    assert_eq!(ad.sync(), Vec::<String>::new());
}

#[test]
fn subset_semantics() {
    // (subscription, message tags, delivered?)
    let cases = [
        ("a", "a", true),
        ("a", "a,b", true),
        ("a", "b,a", true),
        ("a,b", "a", false),
        ("a,b", "b", false),
        ("a,b", "b,a", true),
        ("b,a", "a,b,c", true),
        ("a,b", "a,c", false),
        ("a,b,c", "c,b,a,a", true),
        ("a,b,c", "a,b,d", false),
        ("a", "b", false),
        // Tags are whole words, compared exactly: no prefixes, no case folding.
        ("a", "ab", false),
        ("ab", "a,b", false),
        ("a", "A", false),
        ("é", "x,é", true),
        ("e", "é", false),
        // Duplicates in a subscription fold away.
        ("a,a", "a", true),
    ];
    let server = TestServer::start();
    let mut sub = quick_client(&server);
    let mut publ = quick_client(&server);
    for (i, (subscription, tags, delivered)) in cases.into_iter().enumerate() {
        sub.send(&format!("subscribe {subscription}"));
        sub.ping();
        publ.send(&format!("publish {tags} case {i}"));
        publ.ping();
        let want: Vec<String> = if delivered {
            let mut t: Vec<&str> = tags.split(',').collect();
            t.sort_unstable();
            t.dedup();
            vec![format!("publish {} case {i}", t.join(","))]
        } else {
            Vec::new()
        };
        assert_eq!(
            sub.sync(),
            want,
            "subscription {subscription}, message {tags}"
        );
        sub.send(&format!("unsubscribe {subscription}"));
        sub.send("list");
        sub.expect("list []");
    }
}

#[test]
fn every_matching_client_gets_one_copy_and_others_none() {
    let server = TestServer::start();
    let subscriptions: [&[&str]; 5] = [&["a"], &["a", "a,b"], &["b,c", "c"], &["x"], &["a,b,c,d"]];
    let mut clients: Vec<LineClient> = subscriptions
        .iter()
        .map(|subs| {
            let mut c = quick_client(&server);
            for s in *subs {
                c.send(&format!("subscribe {s}"));
            }
            c.ping();
            c
        })
        .collect();
    let mut publ = quick_client(&server);
    publ.send("publish a,b,c abc");
    publ.send("publish nobody,else dropped");
    publ.send("publish c c");
    publ.ping();
    let got: Vec<Vec<String>> = clients.iter_mut().map(LineClient::sync).collect();
    assert_eq!(
        got,
        [
            vec!["publish a,b,c abc"],
            vec!["publish a,b,c abc"],
            vec!["publish a,b,c abc", "publish c c"],
            vec![],
            vec![],
        ]
    );
    let m = &server.context().metrics();
    assert_eq!(m.messages_published.load(Ordering::Relaxed), 3);
    assert_eq!(m.deliveries.load(Ordering::Relaxed), 4);
}

#[test]
fn nothing_is_stored() {
    let server = TestServer::start();
    let mut publ = quick_client(&server);
    publ.send("publish a before");
    publ.ping();
    let mut late = quick_client(&server);
    late.send("subscribe a");
    late.ping();
    publ.send("publish a after");
    publ.ping();
    assert_eq!(late.sync(), ["publish a after"]);
    let m = &server.context().metrics();
    assert_eq!(m.messages_published.load(Ordering::Relaxed), 2);
    assert_eq!(m.deliveries.load(Ordering::Relaxed), 1);
}

#[test]
fn a_disconnected_client_takes_its_subscriptions_with_it() {
    let server = TestServer::start();
    let m = &server.context().metrics();
    let mut keep = quick_client(&server);
    keep.send("subscribe a");
    keep.ping();
    let mut gone = quick_client(&server);
    gone.send("subscribe a");
    gone.send("subscribe b");
    gone.ping();
    assert_eq!(m.subscriptions.load(Ordering::Relaxed), 3);
    drop(gone);
    let deadline = Instant::now() + TIMEOUT;
    while m.subscriptions.load(Ordering::Relaxed) != 1 {
        assert!(
            Instant::now() < deadline,
            "subscriptions of a closed client remain"
        );
        thread::yield_now();
    }
    let mut publ = quick_client(&server);
    publ.send("publish a,b x");
    publ.ping();
    assert_eq!(keep.sync(), ["publish a,b x"]);
    assert_eq!(m.deliveries.load(Ordering::Relaxed), 1);
}

// ---------------------------------------------------------------------------------------------
// Randomized model check
// ---------------------------------------------------------------------------------------------

/// xorshift64*: small, deterministic, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// The tag alphabet: small, so that subsets and overlaps are frequent. Includes a tag that
/// sorts after the others bytewise and one that is a prefix of another.
const ALPHABET: [&str; 6] = ["a", "b", "c", "d", "ab", "é"];

type Set = BTreeSet<usize>;

/// A random non-empty set of up to `max` tags.
fn random_set(rng: &mut Rng, max: usize) -> Set {
    let n = 1 + rng.below(max);
    (0..n).map(|_| rng.below(ALPHABET.len())).collect()
}

/// The set as the wire normalises it: sorted bytewise and comma-joined.
fn normal(set: &Set) -> String {
    let mut tags: Vec<&str> = set.iter().map(|&i| ALPHABET[i]).collect();
    tags.sort_unstable();
    tags.join(",")
}

/// The set as a client might write it: shuffled, sometimes with duplicates.
fn scrambled(rng: &mut Rng, set: &Set) -> String {
    let mut tags: Vec<&str> = set.iter().map(|&i| ALPHABET[i]).collect();
    if rng.chance(30) {
        let extra = tags[rng.below(tags.len())];
        tags.push(extra);
    }
    for i in (1..tags.len()).rev() {
        tags.swap(i, rng.below(i + 1));
    }
    tags.join(",")
}

/// What `list` must answer for these subscriptions.
fn list_line(subs: &BTreeSet<Set>) -> String {
    let mut joined: Vec<String> = subs.iter().map(normal).collect();
    joined.sort();
    let parts: Vec<String> = joined.iter().map(|j| format!("[{j}]")).collect();
    format!("list [{}]", parts.join(" "))
}

/// The publisher of a delivery line, from its data `p<publisher>-<seq>`.
fn publisher_of(line: &str) -> usize {
    let data = line.rsplit(' ').next().unwrap();
    data[1..data.find('-').unwrap()].parse().unwrap()
}

fn model_check(seed: u64, clients: usize, rounds: usize) {
    let server = TestServer::start();
    let mut rng = Rng::new(seed);
    let mut conns: Vec<LineClient> = (0..clients).map(|_| quick_client(&server)).collect();
    let mut model: Vec<BTreeSet<Set>> = vec![BTreeSet::new(); clients];
    let mut seq = 0usize;
    let mut delivered = 0usize;

    for round in 0..rounds {
        if rng.chance(40) {
            // Change subscriptions. Across connections nothing is ordered, so publishing waits
            // for the next round, after every connection's `ping` proved its changes applied.
            for _ in 0..1 + rng.below(6) {
                let c = rng.below(clients);
                let roll = rng.below(100);
                if roll < 55 {
                    let set = random_set(&mut rng, 3);
                    let line = format!("subscribe {}", scrambled(&mut rng, &set));
                    conns[c].send(&line);
                    model[c].insert(set);
                } else if roll < 95 {
                    // Mostly an existing subscription; sometimes one it does not hold.
                    let set = match model[c].iter().nth(rng.below(model[c].len() + 1)) {
                        Some(s) => s.clone(),
                        None => random_set(&mut rng, 3),
                    };
                    let line = format!("unsubscribe {}", scrambled(&mut rng, &set));
                    conns[c].send(&line);
                    model[c].remove(&set);
                } else {
                    // Leave and come back as a new connection with no subscriptions. The
                    // server's end of stream is the barrier: it closes its side only after
                    // removing the client from the index.
                    let old = std::mem::replace(&mut conns[c], quick_client(&server));
                    old.stream.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut old = old;
                    assert_eq!(old.read_to_end(), b"");
                    model[c].clear();
                }
            }
            for c in conns.iter_mut() {
                c.ping();
            }
            let c = rng.below(clients);
            conns[c].send("list");
            assert_eq!(
                conns[c].line(),
                list_line(&model[c]),
                "seed {seed} round {round}: list of client {c}"
            );
        } else {
            // Publish from random connections, then compare what everyone received.
            let mut expected: Vec<Vec<String>> = vec![Vec::new(); clients];
            let mut publishers = BTreeSet::new();
            for _ in 0..1 + rng.below(10) {
                let p = rng.below(clients);
                let tags = random_set(&mut rng, 4);
                let data = format!("p{p}-{seq}");
                seq += 1;
                conns[p].send(&format!("publish {} {data}", scrambled(&mut rng, &tags)));
                publishers.insert(p);
                let line = format!("publish {} {data}", normal(&tags));
                for (c, subs) in model.iter().enumerate() {
                    if subs.iter().any(|s| s.is_subset(&tags)) {
                        expected[c].push(line.clone());
                    }
                }
            }
            // The barrier: once each publisher's `pong` is back, all deliveries of its
            // publishes are queued; then each client's own `ping` flushes them out to it.
            let mut received: Vec<Vec<String>> = vec![Vec::new(); clients];
            for &p in &publishers {
                received[p].extend(conns[p].sync());
            }
            for (c, conn) in conns.iter_mut().enumerate() {
                received[c].extend(conn.sync());
            }
            for c in 0..clients {
                assert_eq!(
                    received[c].len(),
                    expected[c].len(),
                    "seed {seed} round {round}: client {c} got {:?}, expected {:?}",
                    received[c],
                    expected[c]
                );
                // Across publishers the order is free; from one publisher it is the publish
                // order.
                let by_publisher = |lines: &[String]| {
                    let mut m: BTreeMap<usize, Vec<String>> = BTreeMap::new();
                    for l in lines {
                        m.entry(publisher_of(l)).or_default().push(l.clone());
                    }
                    m
                };
                assert_eq!(
                    by_publisher(&received[c]),
                    by_publisher(&expected[c]),
                    "seed {seed} round {round}: client {c}"
                );
                delivered += expected[c].len();
            }
        }
    }
    let m = &server.context().metrics();
    assert_eq!(m.messages_published.load(Ordering::Relaxed), seq as u64);
    assert_eq!(m.deliveries.load(Ordering::Relaxed), delivered as u64);
    assert_eq!(m.drops.load(Ordering::Relaxed), 0);
    assert!(
        delivered > rounds,
        "the run delivered too little to mean much"
    );
    // The index agrees with the model.
    let held: usize = model.iter().map(BTreeSet::len).sum();
    assert_eq!(m.subscriptions.load(Ordering::Relaxed), held as u64);
}

#[test]
fn randomized_against_a_model_seed_1() {
    model_check(0x9e37_79b9_7f4a_7c15, 8, 1000);
}

#[test]
fn randomized_against_a_model_seed_2() {
    model_check(42, 8, 1000);
}

#[test]
fn randomized_against_a_model_many_clients() {
    model_check(0xdead_beef, 16, 500);
}
