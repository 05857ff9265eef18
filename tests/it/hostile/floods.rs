//! Floods against the limits: more connections than `max_connections`, more subscriptions
//! than `max_subscriptions`.

use super::*;

/// Many clients at once past `max_connections`: every extra TCP client gets the error line and
/// the end of the connection, every extra WebSocket upgrade 503, and the clients inside the
/// limit keep working throughout.
#[test]
fn a_connection_flood_at_max_connections() {
    let server = TestServer::with(|c| c.max_connections = 20);
    let ctx = server.context();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut inside: Vec<LineClient> = (0..19).map(|_| server.client()).collect();
    for (i, c) in inside.iter_mut().enumerate() {
        c.send("subscribe a");
        c.send(&format!("subscribe n{i}"));
        c.ping();
    }
    assert_eq!(ctx.connections(), 20);
    let refused = "error too many connections (max_connections 20)\n";
    let start = Arc::new(Barrier::new(60));
    let flood: Vec<_> = (0..60)
        .map(|i| {
            let (tcp, http, start) = (server.tcp, server.http, Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                if i % 3 == 0 {
                    match ws_with(http, "tok", &[]) {
                        Err(status) => assert_eq!(status, 503),
                        Ok(_) => panic!("a WebSocket past max_connections was upgraded"),
                    }
                } else {
                    let mut c = raw_connect(tcp);
                    // A client that speaks first, as most do.
                    c.write_all(b"publish a,flood x\n").unwrap();
                    assert_eq!(read_response(&mut c), refused);
                }
            })
        })
        .collect();
    // The clients inside the limit are served while the flood goes on.
    for round in 0..5 {
        admin.send(&format!("publish a round {round}"));
        admin.ping();
        for c in &mut inside {
            assert_eq!(c.sync(), [format!("publish a round {round}")]);
        }
    }
    for t in flood {
        t.join().expect("every flooding client was refused cleanly");
    }
    assert_eq!(get(&ctx.metrics().connections_refused), 60);
    assert_eq!(ctx.connections(), 20);
    admin.send("publish n7 after");
    admin.ping();
    assert_eq!(inside[7].sync(), ["publish n7 after"]);
    assert_eq!(inside[8].sync(), Vec::<String>::new());
}

/// A client that subscribes without bound stops at `max_subscriptions` with one error per
/// refused subscribe; what it holds keeps working. The same over WebSocket.
#[test]
fn subscribing_without_bound_stops_at_max_subscriptions() {
    let server = TestServer::with(|c| c.max_subscriptions = 100);
    let mut by = Bystander::new(&server);
    let mut admin = server.client();
    admin.send("register w tok");
    admin.ping();
    let refusal = "too many subscriptions on this connection (max_subscriptions 100)";
    let mut c = server.client();
    let burst: String = (0..1000).map(|i| format!("subscribe t{i}\n")).collect();
    c.send_raw(burst.as_bytes());
    let before_pong = c.sync();
    assert_eq!(before_pong.len(), 900);
    assert!(
        before_pong.iter().all(|l| *l == format!("error {refusal}")),
        "{:?}",
        &before_pong[..3]
    );
    by.check();
    c.send("list");
    let list = c.line();
    assert_eq!(list.matches('[').count(), 101, "{list:.100}");
    let mut p = server.client();
    for tag in ["t0", "t99", "t100", "t999"] {
        p.send(&format!("publish {tag} x"));
    }
    p.ping();
    assert_eq!(c.sync(), ["publish t0 x", "publish t99 x"]);
    // Unsubscribing makes room again.
    c.send("unsubscribe t0");
    c.send("subscribe t500");
    c.ping();

    let mut w = ws(server.http, "tok");
    for i in 0..100 {
        call(
            &mut w,
            &format!(r#"{{"command":"subscribe","tags":["w","n{i}"]}}"#),
            r#"{"success":true,"command":"subscribe"}"#,
        );
    }
    for i in 100..300 {
        call(
            &mut w,
            &format!(r#"{{"command":"subscribe","tags":["w","n{i}"]}}"#),
            &format!(r#"{{"success":false,"command":"subscribe","error":"{refusal}"}}"#),
        );
    }
    by.check();
    p.send("publish n5,w kept");
    p.send("publish n150,w never");
    p.ping();
    assert_eq!(ws_text(&mut w), r#"{"keys":["n5","w"],"data":"kept"}"#);
    assert_eq!(ws_sync(&mut w), Vec::<String>::new());
    assert_eq!(get(&server.context().metrics().subscriptions), 200);
}
