//! Leaks: thousands of connections of every kind come and go, and the real binary's threads
//! and descriptors return to where they were.

use super::*;

/// 10,000 connections come and go (most connect and close, some subscribe, publish, reset,
/// stop mid-line, or are WebSockets and HTTP requests): afterwards the server's threads and
/// descriptors are back to what they were before the first one.
#[test]
fn ten_thousand_connections_leave_no_threads_or_descriptors_behind() {
    let d = Proc::server_with("leak", "");
    // Before any connection: the log line says the accept threads are running.
    let (threads0, fds0, rss0) = (d.threads(), d.fds(), d.rss_kib());
    let started = Instant::now();
    {
        let mut admin = LineClient::connect(d.tcp());
        admin.send("register a tok");
        admin.ping();
    }
    let (tcp, http) = (d.tcp(), d.http());
    let workers: Vec<_> = (0..4)
        .map(|w| {
            thread::spawn(move || {
                for i in (w..10_000).step_by(4) {
                    cycle(tcp, http, i);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("every cycle went as expected");
    }
    let cycles_took = started.elapsed();
    let peak_threads = d.threads();
    d.settle_to(threads0, fds0, Duration::from_secs(30));
    eprintln!(
        "10,000 connections in {cycles_took:?}, settled after {:?}; threads {threads0} \
         (just after the cycles: {peak_threads}), fds {fds0}, VmRSS {rss0} KiB -> {} KiB",
        started.elapsed(),
        d.rss_kib()
    );
    assert_eq!(d.metric("mist_connections{transport=\"tcp\"}"), 0);
    assert_eq!(d.metric("mist_connections{transport=\"websocket\"}"), 0);
    assert_eq!(d.metric("mist_subscriptions"), 0);
    d.settle_to(threads0, fds0, TIMEOUT);
    let log = d.stop();
    assert!(!log.contains("ERROR"), "{log}");
}

/// One connect/disconnect cycle of kind `i`.
fn cycle(tcp: SocketAddr, http: SocketAddr, i: usize) {
    match i % 20 {
        0 => {
            let mut c = LineClient::connect(tcp);
            c.send(&format!("subscribe a,c{i}"));
            c.ping();
        }
        1 => {
            let mut c = LineClient::connect(tcp);
            c.send(&format!("publish a,c{i} x"));
            c.ping();
        }
        2 => {
            // A WebSocket that closes properly.
            let mut w = ws(http, "tok");
            call(&mut w, PING, PONG);
            w.close(None).unwrap();
            while w.read().is_ok() {}
        }
        3 => {
            // A WebSocket that subscribes (deliveries may come before the reply), then just
            // goes away.
            let mut w = ws(http, "tok");
            ws_send(&mut w, r#"{"command":"subscribe","tags":["a"]}"#);
            let before = ws_sync(&mut w);
            assert!(
                before.contains(&r#"{"success":true,"command":"subscribe"}"#.to_string()),
                "{before:?}"
            );
        }
        // From an address of its own: ten unknown tokens lock it out (see `security.rs`),
        // and the other cycles' upgrades must not be refused for that. 401, then 429.
        4 => {
            let from = std::net::IpAddr::from([127, 0, 0, 3]);
            let refused = crate::support::try_ws_connect_from(from, http, Some("nope"), None, &[]);
            assert!(matches!(refused.err(), Some(401 | 429)));
        }
        5 => assert!(http_get(http, "/ping").starts_with("HTTP/1.1 200 OK\r\n")),
        6 => {
            // A reset instead of a close, with a subscription in place.
            let mut c = LineClient::connect(tcp);
            c.send("subscribe a");
            c.sync();
            socket2::SockRef::from(&c.stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        7 => {
            // Half a line, then gone.
            let mut c = raw_connect(tcp);
            // (A last line without `\n` still counts: this publishes to `h` when it closes.)
            c.write_all(b"publish h half a li").unwrap();
        }
        8 => {
            // Closes its sending side, reads the reply, then the server closes.
            let mut c = raw_connect(tcp);
            c.write_all(b"ping").unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            assert_eq!(read_response(&mut c), "pong\n");
        }
        _ => drop(raw_connect(tcp)),
    }
}
