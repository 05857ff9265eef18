//! A panic stays in its connection: the `debug-panic` fault hook of debug builds, in the real
//! binary and in process.

use super::*;

/// The real (debug) binary: a connection thread that panics (`debug-panic`, a fault hook of
/// debug builds) is logged with the peer's address, its connection closes, the counts go back
/// down, and everyone else is served as before.
#[test]
fn a_panicking_connection_is_logged_with_its_peer_and_ends_only_itself() {
    let mut d = Proc::server_with("panic", "");
    let (threads0, fds0) = (d.threads(), d.fds());
    let mut sub = LineClient::connect(d.tcp());
    sub.send("subscribe a");
    sub.ping();
    for round in 0..3 {
        let mut doomed = LineClient::connect(d.tcp());
        let peer = doomed.stream.local_addr().unwrap();
        doomed.send("subscribe a");
        doomed.send("subscribe b");
        doomed.ping();
        assert_eq!(d.metric("mist_subscriptions"), 3);
        assert_eq!(d.metric("mist_connections{transport=\"tcp\"}"), 2);
        doomed.send("debug-panic");
        // The connection ends, with nothing more written to it.
        assert_eq!(doomed.read_to_end(), b"");
        let want = format!("thread 'mist-tcp {peer}' panicked at src/tcp.rs:");
        let line = d.wait_log(&want);
        assert!(line.contains("[ERROR]"), "{line}");
        assert!(
            line.ends_with(": debug-panic requested by the client\n"),
            "{line}"
        );
        wait_until("the panicked connection to be counted out", TIMEOUT, || {
            d.metric("mist_connections{transport=\"tcp\"}") == 1
        });
        assert_eq!(d.metric("mist_subscriptions"), 1, "round {round}");
        // The others are served: a new client publishes, the old subscriber receives.
        let mut p = LineClient::connect(d.tcp());
        p.send(&format!("publish a after panic {round}"));
        p.ping();
        assert_eq!(sub.sync(), [format!("publish a after panic {round}")]);
        // The next round counts connections: this one must be counted out first.
        drop(p);
        wait_until("the publisher to be counted out", TIMEOUT, || {
            d.metric("mist_connections{transport=\"tcp\"}") == 1
        });
    }
    drop(sub);
    d.settle_to(threads0, fds0, TIMEOUT);
    let log = d.stop();
    assert_eq!(log.matches("panicked").count(), 3, "{log}");
}

/// The same in-process: a server whose connections keep panicking keeps serving, and gives
/// every slot back (`max_connections` 3, ten panics).
#[test]
fn a_panicking_connection_leaves_the_in_process_server_serving() {
    let server = TestServer::with(|c| c.max_connections = 3);
    let ctx = server.context();
    let mut by = Bystander::new(&server);
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    for _ in 0..10 {
        let mut doomed = server.client();
        doomed.send("subscribe a");
        doomed.ping();
        // (The panic message appears on the test's stderr: this is the panic being tested.)
        doomed.send("debug-panic");
        assert_eq!(doomed.read_to_end(), b"");
        wait_until("the slot to come back", TIMEOUT, || ctx.connections() == 2);
        assert_eq!(get(&ctx.metrics().subscriptions), 1);
        assert_eq!(get(&ctx.metrics().tcp_connections), 2);
        by.check();
    }
    let mut p = server.client();
    p.send("publish a still here");
    p.ping();
    assert_eq!(sub.sync(), ["publish a still here"]);
}
