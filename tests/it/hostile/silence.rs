//! Stalls and silence: a half line and then nothing, clients that connect and say nothing, a
//! request head dribbled byte by byte (slowloris), a WebSocket that never answers pings. None
//! holds anybody else up; the HTTP and WebSocket ones end on their deadlines.

use super::*;

#[test]
fn half_a_line_then_a_stall_blocks_nobody() {
    let server = TestServer::start();
    let mut by = Bystander::new(&server);
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let mut stalled = server.client();
    stalled.send("subscribe b");
    stalled.ping();
    stalled.send_raw(b"publish a hal");
    let mut stalled_sub = server.client();
    stalled_sub.send_raw(b"subscr");
    // Others are served while both half lines wait.
    let mut p = server.client();
    for i in 0..100 {
        p.send(&format!("publish a,b other {i}"));
    }
    p.ping();
    by.check();
    let want: Vec<String> = (0..100).map(|i| format!("publish a,b other {i}")).collect();
    assert_eq!(sub.sync(), want);
    // The staller's subscription is served while its half line waits.
    p.send("publish b to the staller");
    p.ping();
    // The half lines complete later, as if they had come at once.
    stalled.send_raw(b"f\n");
    stalled.send("list");
    assert_eq!(stalled.line(), "publish a,b other 0");
    let mut got = vec![];
    loop {
        let l = stalled.line();
        if l.starts_with("list ") {
            assert_eq!(l, "list [[b]]");
            break;
        }
        got.push(l);
    }
    assert_eq!(got.len(), 100);
    assert_eq!(got[99], "publish b to the staller");
    assert_eq!(sub.sync(), ["publish a half"]);
    stalled_sub.send_raw(b"ibe a\n");
    stalled_sub.send("list");
    stalled_sub.expect("list [[a]]");
    by.check();
}

#[test]
fn a_client_that_connects_and_sends_nothing() {
    let server = TestServer::with(|c| c.http_head_timeout = 1);
    let ctx = server.context();
    let mut by = Bystander::new(&server);
    by.check();
    let before = ctx.connections();
    // TCP: an idle connection is a legitimate idle subscriber. It holds a slot, blocks nobody,
    // and still works after the others were served.
    let mut idle: Vec<LineClient> = (0..50).map(|_| server.client()).collect();
    by.check();
    wait_until("the idle clients to be counted", TIMEOUT, || {
        ctx.connections() == before + 50
    });
    let mut p = server.client();
    p.send("publish a x");
    p.ping();
    for c in &mut idle {
        c.ping();
    }
    // HTTP: a connection that sends nothing gets 408 once the head deadline has passed.
    let started = Instant::now();
    let silent: Vec<TcpStream> = (0..20).map(|_| raw_connect(server.http)).collect();
    by.check();
    for mut s in silent {
        assert_eq!(
            read_response(&mut s),
            plain(
                "408 Request Timeout",
                "request head not complete in time\n",
                ""
            )
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(4),
        "{took:?}"
    );
    by.check();
}

/// A request head dribbled one byte at a time never completes in time: 408 once the whole-head
/// deadline (`http_head_timeout`, 1 s here) has passed, however steadily the bytes come. The
/// pace is the read timeout of the check for a response, not a sleep.
#[test]
fn http_slowloris_gets_408_within_the_head_deadline() {
    let server = TestServer::with(|c| c.http_head_timeout = 1);
    let mut by = Bystander::new(&server);
    let head = format!(
        "GET /ping HTTP/1.1\r\nHost: mist\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(200)
    );
    // Before the connections: the server's deadline starts when it accepts each one.
    let started = Instant::now();
    let lorises: Vec<(TcpStream, usize, Vec<u8>)> = (0..10)
        .map(|_| {
            let s = raw_connect(server.http);
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            (s, 0, Vec::new())
        })
        .collect();
    let mut lorises = lorises;
    let mut answered = 0;
    while answered < lorises.len() {
        assert!(started.elapsed() < Duration::from_secs(5), "no 408 in time");
        for (s, sent, got) in &mut lorises {
            if got.ends_with(b"complete in time\n") {
                continue;
            }
            if *sent < head.len() {
                // After the response the server may reset: stop writing then.
                if s.write_all(&head.as_bytes()[*sent..*sent + 1]).is_ok() {
                    *sent += 1;
                }
            }
            let mut buf = [0u8; 1024];
            match s.read(&mut buf) {
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.ends_with(b"complete in time\n") {
                        answered += 1;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("slowloris read: {e}"),
            }
        }
        by.check();
        // A normal request is answered at once meanwhile.
        assert_eq!(http_get(server.http, "/ping"), plain("200 OK", "pong", ""));
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(950), "{took:?}");
    for (_, sent, got) in &lorises {
        assert!(*sent < head.len(), "the head was not complete");
        assert_eq!(
            String::from_utf8_lossy(got),
            plain(
                "408 Request Timeout",
                "request head not complete in time\n",
                ""
            )
        );
    }
    by.check();
}

/// `ws_ping_interval 1`: a client that never answers the server's ping is closed with 1001
/// after two intervals of silence; one that answers stays.
#[test]
fn a_websocket_that_never_answers_pings_is_closed_after_two_intervals() {
    let server = TestServer::with(|c| c.ws_ping_interval = 1);
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::new(&server);
    let started = Instant::now();
    let (mut mute, head) = raw_upgrade(server.http, "tok", &[]);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // Meanwhile a client that answers, on its own thread: tungstenite answers each ping with a
    // pong as it reads on.
    let polite = ws(server.http, "tok");
    let polite = thread::spawn(move || {
        let mut polite = polite;
        polite
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let mut pings = 0;
        while started.elapsed() < Duration::from_millis(3500) {
            match polite.read() {
                Ok(Message::Ping(p)) => {
                    assert_eq!(p.as_ref(), b"mist");
                    pings += 1;
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("the answering client was closed: {e}"),
            }
        }
        polite.get_ref().set_read_timeout(Some(TIMEOUT)).unwrap();
        (polite, pings)
    });

    // The mute client reads the server's ping, says nothing, and gets the close.
    assert_eq!(server_frame(&mut mute), Some((0x89, b"mist".to_vec())));
    let pinged = started.elapsed();
    assert!(pinged >= Duration::from_millis(900), "{pinged:?}");
    by.check();
    expect_raw_close(&mut mute, 1001, "ping timeout");
    let closed = started.elapsed();
    assert!(
        closed >= Duration::from_millis(1900) && closed < Duration::from_secs(5),
        "{closed:?}"
    );
    by.check();

    // The polite client saw pings, answered them, and is still there after 3.5 s.
    let (mut polite, pings) = polite.join().expect("the answering client is fine");
    assert!(pings >= 2, "{pings} pings");
    call(&mut polite, PING, PONG);
}
