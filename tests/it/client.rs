//! `mist::Client` against real servers over real sockets, and against scripted peers where
//! the server cannot be made to say something on cue. Every wait is bounded by [`TIMEOUT`].

use crate::support::{TIMEOUT, TestServer, get};
use mist::TagSet;
use mist::client::{Client, DataError, DroppedBy, Error, Event, Message, Options, ServerErrorKind};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

#[path = "../../examples/follow.rs"]
#[allow(dead_code)]
mod follow_example;

/// Options whose every wait fails the test rather than hanging it.
fn options() -> Options {
    Options::new()
        .connect_timeout(TIMEOUT)
        .read_timeout(TIMEOUT)
}

fn connect(addr: SocketAddr) -> Client {
    options().connect(addr).expect("connect")
}

/// The next event; fails the test when none comes within [`TIMEOUT`].
fn next(c: &Client) -> Event {
    c.recv_timeout(TIMEOUT)
        .expect("connection open")
        .expect("an event before the timeout")
}

fn message(tags: &str, data: &[u8]) -> Event {
    Event::Message(Message {
        tags: tags.parse().unwrap(),
        data: data.to_vec(),
    })
}

/// A client goes to another thread, or gives it a clone.
#[test]
fn clients_are_send_and_clone() {
    fn send_clone<T: Send + Clone>() {}
    send_clone::<Client>();
}

/// Each clone buffers its own publishes: a `ping` is a barrier for its own, and a clone's
/// commands (or its drop) send only its own.
#[test]
fn each_clone_has_its_own_buffer() -> Result<(), Error> {
    let server = TestServer::start();
    let mut watcher = server.client();
    watcher.send("subscribe a");
    watcher.ping();
    let c = connect(server.tcp);
    let other = c.clone();
    other.publish("a", "from the clone")?;
    c.publish("a", "from the first")?;
    c.ping()?;
    assert_eq!(watcher.sync(), ["publish a from the first"]);
    // A command on the clone sends its publish first, then gets its own answer.
    assert!(other.list()?.is_empty());
    assert_eq!(watcher.sync(), ["publish a from the clone"]);
    other.publish("a", "dropped unflushed")?;
    drop(other);
    // Written by the drop, before the first handle's `ping` on the same connection.
    c.ping()?;
    assert_eq!(watcher.sync(), ["publish a dropped unflushed"]);
    Ok(())
}

#[test]
fn messages_arrive_byte_for_byte_with_their_tags() -> Result<(), Error> {
    let server = TestServer::start();
    let c = connect(server.tcp);
    c.subscribe("a")?;
    // Every byte but `\n`, a `\r` anywhere but at the end, bytes that are not UTF-8, nothing.
    let all: Vec<u8> = (0..=255u8).filter(|&b| b != b'\n').collect();
    let payloads: [&[u8]; 5] = [b"hello  world ", &all, b"\r\rx", &[0xff, 0xfe, 0], b""];
    for p in payloads {
        c.publish("c,a,b,a", p)?;
    }
    let set: TagSet = "a,x".parse().unwrap();
    c.publish(&set, "from a TagSet")?;
    c.publish(&String::from("b"), "not subscribed")?;
    c.ping()?;
    for p in payloads {
        assert_eq!(next(&c), message("a,b,c", p));
    }
    assert_eq!(next(&c), message("a,x", b"from a TagSet"));
    assert!(c.try_recv()?.is_none());
    Ok(())
}

#[test]
fn bad_tags_and_data_are_refused_before_anything_is_sent() -> Result<(), Error> {
    let server = TestServer::start();
    let mut watcher = server.client();
    watcher.send("subscribe a");
    watcher.ping();
    let c = options()
        .max_line_bytes(64)
        .max_tags(2)
        .connect(server.tcp)?;
    let invalid = [
        c.publish("a,,b", "x"),
        c.publish("", "x"),
        c.publish("a b", "x"),
        c.publish("a,b,c", "x"),
        c.subscribe("a\tb"),
        c.unsubscribe("a,"),
        c.register("a", "two words"),
        c.set("a", ""),
        c.unset("a", "tok\n"),
        c.unregister("t\u{7f}"),
        c.tags("x y").map(drop),
        c.auth("a b"),
    ];
    for r in invalid {
        assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    }
    assert!(matches!(
        c.publish("a", "two\nlines"),
        Err(Error::Data(DataError::Newline))
    ));
    assert!(matches!(
        c.publish("a", "cr at the end\r"),
        Err(Error::Data(DataError::TrailingCarriageReturn))
    ));
    // `publish a ` is 10 bytes: 54 bytes of data make 64.
    assert!(matches!(
        c.publish("a", [b'x'; 55]),
        Err(Error::Data(DataError::TooLong { len: 65, max: 64 }))
    ));
    c.publish("a", [b'x'; 54])?;
    c.ping()?;
    // The server saw one good message, and no bad line.
    assert_eq!(watcher.sync(), [format!("publish a {}", "x".repeat(54))]);
    assert_eq!(get(&server.context().metrics().errors_sent), 0);
    Ok(())
}

#[test]
fn server_errors_are_typed_and_the_connection_goes_on() -> Result<(), Error> {
    let server = TestServer::with(|c| c.admin_token = Some("s3cret".into()));
    let c = connect(server.tcp);
    let kind = |r: Result<(), Error>| match r {
        Err(Error::Server(e)) => e.kind(),
        other => panic!("expected a server error, got {other:?}"),
    };
    assert_eq!(kind(c.register("a", "tok")), ServerErrorKind::NotAllowed);
    assert_eq!(kind(c.auth("wrong")), ServerErrorKind::AuthFailed);
    c.auth("s3cret")?;
    c.register("b,a", "tok")?;
    assert_eq!(kind(c.register("a", "tok")), ServerErrorKind::TokenExists);
    assert_eq!(kind(c.set("c", "nope")), ServerErrorKind::UnknownToken);
    assert_eq!(kind(c.unset("c", "nope")), ServerErrorKind::UnknownToken);
    assert_eq!(kind(c.unregister("nope")), ServerErrorKind::UnknownToken);
    match c.tags("nope") {
        Err(Error::Server(e)) => {
            assert_eq!(e.kind(), ServerErrorKind::UnknownToken);
            assert_eq!(e.reason(), "unknown token");
        }
        other => panic!("{other:?}"),
    }
    c.set("c", "tok")?;
    c.unset("a", "tok")?;
    assert_eq!(c.tags("tok")?, ["b", "c"]);
    assert_eq!(server.context().tokens().tags("tok").unwrap(), ["b", "c"]);
    c.unregister("tok")?;
    assert!(server.context().tokens().tags("tok").is_err());
    c.ping()?;
    Ok(())
}

#[test]
fn subscribe_unsubscribe_and_list() -> Result<(), Error> {
    let server = TestServer::with(|c| c.max_subscriptions = 2);
    let c = connect(server.tcp);
    assert!(c.list()?.is_empty());
    c.subscribe("b,a")?;
    c.subscribe("a,b")?;
    c.subscribe("[x]")?;
    let listed: Vec<String> = c.list()?.iter().map(ToString::to_string).collect();
    assert_eq!(listed, ["[x]", "a,b"]);
    match c.subscribe("z") {
        Err(Error::Server(e)) => assert_eq!(e.kind(), ServerErrorKind::TooManySubscriptions),
        other => panic!("{other:?}"),
    }
    c.unsubscribe("a,b")?;
    c.unsubscribe("never")?;
    assert_eq!(c.list()?, ["[x]".parse::<TagSet>().unwrap()]);
    Ok(())
}

#[test]
fn refused_publishes_are_reported_by_the_next_ping_only() -> Result<(), Error> {
    // The server's limits are below the client's defaults, so only it can refuse.
    let server = TestServer::with(|c| {
        c.max_tags = 2;
        c.max_line_bytes = 100;
    });
    let c = connect(server.tcp);
    c.publish("a,b,c", "three tags")?;
    c.publish("a", "fine")?;
    c.publish("a", "x".repeat(200))?;
    // A command after the publishes gets its own answer, not their refusals.
    c.subscribe("a")?;
    match c.ping() {
        Err(Error::Refused { count, first }) => {
            assert_eq!(count, 2);
            assert_eq!(first.kind(), ServerErrorKind::InvalidTags);
            assert_eq!(first.reason(), "invalid tags: more than 2 distinct tags");
        }
        other => panic!("{other:?}"),
    }
    c.ping()?;
    c.publish("a", "y".repeat(200))?;
    assert_eq!(
        c.list()?,
        ["a".parse::<TagSet>().unwrap()],
        "list is answered despite the refusal before it"
    );
    match c.ping() {
        Err(Error::Refused { count: 1, first }) => {
            assert_eq!(first.kind(), ServerErrorKind::LineTooLong);
        }
        other => panic!("{other:?}"),
    }
    // The one accepted message was published before the subscription.
    assert!(c.try_recv()?.is_none());
    Ok(())
}

#[test]
fn replies_are_matched_while_deliveries_pour_in() -> Result<(), Error> {
    let server = TestServer::start();
    let c = connect(server.tcp);
    c.subscribe("flood")?;
    c.register("a", "tok")?;
    const N: usize = 20_000;
    let publisher = {
        let mut p = server.client();
        thread::spawn(move || {
            for i in 0..N {
                p.send(&format!("publish flood {i}"));
            }
            p.ping();
        })
    };
    // Commands from this thread while another receives everything in order.
    let receiver = {
        let c = c.clone();
        thread::spawn(move || {
            for i in 0..N {
                assert_eq!(next(&c), message("flood", i.to_string().as_bytes()));
            }
        })
    };
    let flood: TagSet = "flood".parse().unwrap();
    for _ in 0..200 {
        assert_eq!(c.list()?, std::slice::from_ref(&flood));
        assert_eq!(c.tags("tok")?, ["a"]);
        c.ping()?;
    }
    publisher.join().expect("publisher");
    receiver
        .join()
        .expect("receiver got every message in order");
    c.ping()?;
    assert!(c.try_recv()?.is_none());
    Ok(())
}

#[test]
fn one_thread_publishes_while_another_blocks_in_recv() -> Result<(), Error> {
    let server = TestServer::start();
    let c = connect(server.tcp);
    c.subscribe("me")?;
    const N: u32 = 10_000;
    let receiver = {
        let c = c.clone();
        thread::spawn(move || -> Result<(), Error> {
            for i in 0..N {
                match c.recv()? {
                    Event::Message(m) => assert_eq!(m.data, i.to_string().as_bytes()),
                    other => panic!("{other:?}"),
                }
            }
            Ok(())
        })
    };
    for i in 0..N {
        c.publish("me", i.to_string())?;
        if i % 1000 == 0 {
            // Commands while the receiver is blocked in `recv`.
            assert_eq!(c.list()?.len(), 1);
        }
    }
    c.ping()?;
    receiver.join().unwrap()?;
    Ok(())
}

#[test]
fn the_receive_buffer_drops_and_says_so() -> Result<(), Error> {
    let server = TestServer::start();
    let c = options().recv_buffer(3, 1 << 20).connect(server.tcp)?;
    c.subscribe("a")?;
    for i in 0..10 {
        c.publish("a", format!("{i}"))?;
    }
    // After the pong, all ten arrived: three kept, seven dropped here.
    c.ping()?;
    for i in 0..3 {
        assert_eq!(next(&c), message("a", format!("{i}").as_bytes()));
    }
    assert_eq!(
        next(&c),
        Event::Dropped {
            count: 7,
            by: DroppedBy::Client
        }
    );
    c.publish("a", "again")?;
    c.ping()?;
    assert_eq!(next(&c), message("a", b"again"));
    Ok(())
}

#[test]
fn events_iterator_ends_with_the_closing_error() -> Result<(), Error> {
    let server = TestServer::start();
    let c = connect(server.tcp);
    c.subscribe("a")?;
    c.publish("a", "last words")?;
    c.ping()?;
    let stop = thread::spawn(move || server.stop());
    let got: Vec<String> = c
        .events()
        .map(|e| match e {
            Ok(Event::Message(m)) => String::from_utf8(m.data).unwrap(),
            Ok(other) => panic!("{other:?}"),
            Err(e) => format!("error: {e}"),
        })
        .collect();
    assert_eq!(
        got,
        ["last words", "error: the server closed the connection"]
    );
    stop.join().unwrap();
    assert!(matches!(c.recv(), Err(Error::Closed)));
    assert!(matches!(c.ping(), Err(Error::Closed)));
    assert!(matches!(c.publish("a", "x"), Err(Error::Closed)));
    Ok(())
}

#[test]
fn close_waits_until_the_server_applied_everything() -> Result<(), Error> {
    let server = TestServer::start();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let c = connect(server.tcp);
    c.subscribe("a")?;
    for i in 0..1000 {
        c.publish("a", format!("{i}"))?;
    }
    c.close()?;
    let want: Vec<String> = (0..1000).map(|i| format!("publish a {i}")).collect();
    assert_eq!(sub.sync(), want);
    // What arrived before the close can still be received, then the end.
    let mut n = 0;
    loop {
        match c.recv() {
            Ok(Event::Message(_)) => n += 1,
            Err(Error::Shutdown) => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(n <= 1000);
    assert!(matches!(c.publish("a", "x"), Err(Error::Shutdown)));
    assert!(matches!(c.list(), Err(Error::Shutdown)));
    c.close()?;
    Ok(())
}

#[test]
fn dropping_the_last_clone_sends_what_is_buffered() -> Result<(), Error> {
    let server = TestServer::start();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let c = connect(server.tcp);
    let other = c.clone();
    c.publish("a", "one")?;
    drop(c);
    other.publish("a", "two")?;
    drop(other);
    sub.expect("publish a one");
    sub.expect("publish a two");
    Ok(())
}

#[test]
fn connect_failures() {
    // A bound socket that does not listen refuses connections.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    match Client::connect(addr) {
        Err(e @ Error::Connect { .. }) => {
            assert_eq!(e.to_string(), format!("cannot connect to {addr}"));
            let chain = mist::ErrorChain(&e).to_string();
            assert!(
                chain.starts_with(&format!("cannot connect to {addr}: ")),
                "{chain}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Client::connect("no-such-host.invalid:1445"),
        Err(Error::Connect { .. })
    ));

    // A full server says so and closes.
    let server = TestServer::with(|c| c.max_connections = 1);
    let _first = connect(server.tcp);
    match options().connect(server.tcp) {
        Err(Error::Server(e)) => assert_eq!(e.kind(), ServerErrorKind::TooManyConnections),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_peer_that_is_not_mist_is_found_out_at_connect() {
    // An HTTP server, say.
    let (addr, peer) = scripted_peer(|p| {
        p.expect("ping");
        p.send(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    match options().connect(addr) {
        Err(Error::Protocol(_)) => {}
        other => panic!("{other:?}"),
    }
    peer.join().unwrap();
    // A peer that says nothing.
    let (addr, peer) = scripted_peer(|p| {
        p.expect("ping");
        p.expect_end();
    });
    let quick = Duration::from_millis(200);
    match options().read_timeout(quick).connect(addr) {
        Err(Error::Timeout(t)) => assert_eq!(t, quick),
        other => panic!("{other:?}"),
    }
    peer.join().unwrap();
}

#[test]
fn slow_consumer_notices_arrive_in_their_place() -> Result<(), Error> {
    let (addr, peer) = scripted_peer(|p| {
        p.expect("ping");
        p.send(b"pong\n");
        p.expect("subscribe a");
        p.expect("ping");
        p.send(
            b"publish a before\nerror slow consumer: dropped 7 messages\n\
              pong\npublish a after\r\nerror slow consumer: dropped 18446744073709551615 messages\n",
        );
        p.expect_end();
    });
    let c = connect(addr);
    c.subscribe("a")?;
    assert_eq!(next(&c), message("a", b"before"));
    assert_eq!(
        next(&c),
        Event::Dropped {
            count: 7,
            by: DroppedBy::Server
        }
    );
    assert_eq!(next(&c), message("a", b"after\r"));
    assert_eq!(
        next(&c),
        Event::Dropped {
            count: u64::MAX,
            by: DroppedBy::Server
        }
    );
    drop(c);
    peer.join().unwrap();
    Ok(())
}

#[test]
fn a_late_reply_goes_to_the_command_that_timed_out() -> Result<(), Error> {
    let (addr, peer) = scripted_peer(|p| {
        p.expect("ping");
        p.send(b"pong\n");
        // The first ping is answered only after the second arrives.
        p.expect("ping");
        p.expect("list");
        p.send(b"pong\nlist [[a]]\n");
        p.expect_end();
    });
    let quick = Duration::from_millis(100);
    let c = options().read_timeout(quick).connect(addr)?;
    assert!(matches!(c.ping(), Err(Error::Timeout(_))));
    assert_eq!(c.list()?, ["a".parse::<TagSet>().unwrap()]);
    drop(c);
    peer.join().unwrap();
    Ok(())
}

#[test]
fn a_reply_that_matches_no_command_ends_the_connection() {
    let (addr, peer) = scripted_peer(|p| {
        p.expect("ping");
        p.send(b"pong\n");
        p.expect("list");
        p.send(b"pong\n");
        p.expect_end();
    });
    let c = connect(addr);
    match c.list() {
        Err(Error::Protocol(e)) => assert_eq!(e, "a pong reply while waiting for list"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.recv(), Err(Error::Protocol(_))));
    assert!(matches!(c.ping(), Err(Error::Protocol(_))));
    drop(c);
    peer.join().unwrap();
}

#[test]
fn a_command_waiting_when_the_server_goes_away_fails_at_once() {
    let (addr, peer) = scripted_peer(|p| {
        p.expect("ping");
        p.send(b"pong\n");
        p.expect("subscribe a");
        p.expect("ping");
        // Then hang up without answering.
    });
    let c = connect(addr);
    let started = Instant::now();
    assert!(matches!(c.subscribe("a"), Err(Error::Closed)));
    assert!(started.elapsed() < TIMEOUT);
    peer.join().unwrap();
}

/// The reconnection pattern of `examples/follow.rs`, run for real: the server goes away and
/// comes back on the same address, and the follower is subscribed again.
#[test]
fn follow_example_reconnects_and_subscribes_again() {
    let server = TestServer::start();
    let addr = server.tcp;
    let (tx, rx) = mpsc::channel();
    let follower = thread::spawn(move || {
        follow_example::follow(&addr.to_string(), &["a", "b,c"], |event| {
            let stop = matches!(&event, Event::Message(m) if m.data == b"stop");
            let _ = tx.send(event);
            if stop {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
    });
    server.wait_for_subscriptions(2);
    let mut p = server.client();
    p.send("publish a,x first");
    p.ping();
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), message("a,x", b"first"));
    server.stop();

    let server = TestServer::with(|c| c.tcp_listen_address = addr.to_string());
    server.wait_for_subscriptions(2);
    let mut p = server.client();
    p.send("publish c,b again");
    p.send("publish a stop");
    p.ping();
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), message("b,c", b"again"));
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), message("a", b"stop"));
    follower
        .join()
        .unwrap()
        .expect("the follower stopped when told");
}

/// A peer on 127.0.0.1:0 that plays `script` with its first connection.
fn scripted_peer(script: impl FnOnce(&mut Peer) + Send + 'static) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        let mut peer = Peer {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        };
        script(&mut peer);
    });
    (addr, handle)
}

/// The server's side of a scripted connection; every read is bounded by [`TIMEOUT`].
struct Peer {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Peer {
    fn expect(&mut self, want: &str) {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a line in time");
        assert_eq!(line, format!("{want}\n"));
    }

    /// Expects the client to close its side, and nothing before.
    fn expect_end(&mut self) {
        let mut rest = String::new();
        let n = self.reader.read_line(&mut rest).expect("the end in time");
        assert_eq!((n, rest.as_str()), (0, ""));
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }
}
