//! Peers that stop: a subscriber that stops reading, a client that never reads its replies,
//! and the server itself stopped and continued (as a debugger does). The real binary, watched
//! through `/proc`.

use super::*;

/// A subscriber that stops reading and never closes: once its socket is full, its writer
/// thread blocks; after `write_timeout` (1 s here) of no progress it is disconnected, counted
/// in `write_timeouts`, and both of its threads end. A publisher is never held up meanwhile.
#[test]
fn a_subscriber_that_stops_reading_is_dropped_after_write_timeout() {
    let d = Proc::server_with(
        "write-timeout",
        "write_timeout 1\nclient_queue_bytes 1048576\n",
    );
    let (threads0, fds0) = (d.threads(), d.fds());
    let mut p = LineClient::connect(d.tcp());
    p.ping();
    let mut stuck = small_window_client(d.tcp());
    stuck.send("subscribe a");
    stuck.ping();
    let data = "x".repeat(64 * 1024);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut rounds = 0;
    while d.metric("mist_write_timeouts_total") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no write timeout"
        );
        let t = Instant::now();
        for _ in 0..8 {
            p.send(&format!("publish a {data}"));
        }
        p.ping();
        slowest = slowest.max(t.elapsed());
        rounds += 1;
    }
    let took = started.elapsed();
    eprintln!(
        "write timeout after {took:?}; {rounds} publish rounds of 512 KiB, slowest {slowest:?}"
    );
    assert!(took >= Duration::from_secs(1), "{took:?}");
    // The publisher went on while the subscriber's writer was blocked.
    assert!(rounds >= 5, "{rounds} rounds");
    assert!(slowest < Duration::from_millis(900), "{slowest:?}");
    // The stuck subscriber is disconnected: what it reads now ends.
    let mut sink = [0u8; 64 * 1024];
    loop {
        match stuck.stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("the stuck subscriber was not disconnected: {e}"),
        }
    }
    assert_eq!(d.metric("mist_connections{transport=\"tcp\"}"), 1);
    assert_eq!(d.metric("mist_write_timeouts_total"), 1);
    p.ping();
    drop(p);
    drop(stuck);
    d.settle_to(threads0, fds0, TIMEOUT);
    let log = d.stop();
    assert!(log.contains("peer read nothing for 1s, closing"), "{log}");
}

/// The process's scheduler state, the letter after the name in `/proc/PID/stat`.
fn proc_state(pid: libc::pid_t) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').expect("a name in parentheses") + 1..];
    after_name.trim_start().chars().next().expect("a state")
}

/// Stopping and continuing the server (SIGSTOP/SIGCONT, as a debugger or `strace -p` does)
/// interrupts every blocked socket call that has a timeout with EINTR instead of restarting
/// it. Connections must come through that as if nothing happened.
///
/// Regression test for 564896e: blocked socket calls with a timeout came back with EINTR
/// after SIGSTOP/SIGCONT, and WebSocket readers took that for a failed read and dropped their
/// clients.
#[test]
fn stopping_and_continuing_the_server_keeps_its_connections() {
    let mut d = Proc::server_with("stop-cont", "");
    let mut admin = LineClient::connect(d.tcp());
    admin.send("register a tok");
    admin.ping();
    let mut sub = LineClient::connect(d.tcp());
    sub.send("subscribe a");
    sub.ping();
    let mut w = ws(d.http(), "tok");
    call(
        &mut w,
        r#"{"command":"subscribe","tags":["a"]}"#,
        r#"{"success":true,"command":"subscribe"}"#,
    );
    call(&mut w, PING, PONG);
    // Every connection's reader is now blocked in a read.
    d.signal(libc::SIGSTOP);
    wait_until("the server stops", TIMEOUT, || proc_state(d.pid()) == 'T');
    d.signal(libc::SIGCONT);
    wait_until("the server runs again", TIMEOUT, || {
        proc_state(d.pid()) != 'T'
    });
    admin.send("publish a after");
    admin.ping();
    sub.expect("publish a after");
    sub.ping();
    assert_eq!(
        ws_text(&mut w),
        r#"{"keys":["a"],"data":"after"}"#,
        "the WebSocket subscriber was cut off"
    );
    call(&mut w, PING, PONG);
    drop((admin, sub, w));
    d.stop();
}

/// A client that sends commands as fast as it can and never reads the replies: once its unread
/// replies pass the backlog limit the server stops reading its commands (the replies are never
/// buffered without bound), and once a write has made no progress for `write_timeout` (1 s) it
/// is disconnected. Others are served throughout.
#[test]
fn a_client_that_never_reads_its_replies_is_dropped_after_write_timeout() {
    let server = TestServer::with(|c| c.write_timeout = 1);
    let ctx = server.context();
    let mut by = Bystander::new(&server);
    let flooder = small_window_client(server.tcp);
    let mut w = flooder.stream.try_clone().unwrap();
    let started = Instant::now();
    // 8 MiB of `ping`: far more replies than the backlog (2 MiB) and the socket hold.
    let writer = thread::spawn(move || {
        let pings = "ping\n".repeat((8 << 20) / 5);
        // Fails once the server gives up on the client; that is the point.
        let _ = w.write_all(pings.as_bytes());
    });
    wait_until("the write timeout", TIMEOUT, || {
        by.check();
        get(&ctx.metrics().write_timeouts) == 1
    });
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "{took:?}");
    wait_until("the flooder to be disconnected", TIMEOUT, || {
        get(&ctx.metrics().tcp_connections) == 1
    });
    writer.join().unwrap();
    by.check();
}
