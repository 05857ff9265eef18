//! The WebSocket API and the plain HTTP endpoints on the same address, over real sockets with
//! tungstenite's client. Tokens are registered over TCP from a loopback line client; the
//! barriers are TCP `ping` and WebSocket `{"command":"ping"}`.

use crate::support::http::{http, http_get, metric, plain, scrape, upgrade_request, wait_metric};
use crate::support::ws::{Frame, PING, PONG, Ws, call, expect_closed, next_frame};
use crate::support::{
    LineClient, TIMEOUT, TestServer, test_config, try_ws_connect, ws_connect, ws_send, ws_sync,
    ws_text,
};
use mist::MemoryStore;
use mist::PublishError;
use mist::TagSet;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

const SUBSCRIBED: &str = r#"{"success":true,"command":"subscribe"}"#;
const UNSUBSCRIBED: &str = r#"{"success":true,"command":"unsubscribe"}"#;

/// Registers `token` with `tags` over the admin connection; the `pong` shows it is done.
fn register(admin: &mut LineClient, tags: &str, token: &str) {
    admin.send(&format!("register {tags} {token}"));
    admin.ping();
}

fn tags_json(tags: &[&str]) -> String {
    serde_json::to_string(tags).unwrap()
}

fn subscribe(ws: &mut Ws, tags: &[&str]) {
    let json = format!(r#"{{"command":"subscribe","tags":{}}}"#, tags_json(tags));
    call(ws, &json, SUBSCRIBED);
}

/// The delivery frame of a message with these (sorted) tags and data.
fn delivery(keys: &[&str], data: &str) -> String {
    format!(
        r#"{{"keys":{},"data":{}}}"#,
        tags_json(keys),
        serde_json::to_string(data).unwrap()
    )
}

fn revoked(tags: &[&str]) -> String {
    format!(
        r#"{{"success":true,"command":"unsubscribe","tags":{},"reason":"access revoked"}}"#,
        tags_json(tags)
    )
}

/// A TCP client publishing `line(i)` for i = 0, 1, 2, ... on its own thread until stopped, in
/// batches of 50, each followed by a `ping` so it never runs far ahead of the server.
struct Publisher {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
}

impl Publisher {
    fn start(tcp: SocketAddr, line: impl Fn(u64) -> String + Send + 'static) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut c = LineClient::connect(tcp);
            let mut i = 0;
            // Bounded, in case the test fails without stopping it.
            while !flag.load(Ordering::Acquire) && i < 2_000_000 {
                let mut batch = String::new();
                for _ in 0..50 {
                    batch.push_str(&line(i));
                    batch.push('\n');
                    i += 1;
                }
                c.send_raw(batch.as_bytes());
                c.ping();
            }
            i
        });
        Publisher {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops publishing; returns how many messages were published. Each was handled by the
    /// server (the publisher's last `pong` came after them).
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        let handle = self.handle.take().expect("running");
        handle.join().expect("the publisher never blocks or fails")
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn is_slow_notice(t: &str) -> bool {
    t.starts_with(r#"{"success":false,"error":"slow consumer: dropped "#)
}

#[test]
fn commands_and_replies_are_exact() {
    let server = TestServer::start();
    let mut admin = server.client();
    register(&mut admin, "a,a!,a-b,c", "tok");
    let mut ws = ws_connect(server.http, "tok");
    call(&mut ws, PING, PONG);
    call(
        &mut ws,
        r#"{"command":"list"}"#,
        r#"{"success":true,"command":"list","subscriptions":[]}"#,
    );
    // Sorted by the comma-joined form, as TCP `list` sorts: "a!" (0x21) before "a,c" (0x2C)
    // before "a-b" (0x2D), which differs from comparing the arrays element by element.
    let sets: [&[&str]; 5] = [&["a-b"], &["z", "a"], &["a!"], &["c", "a", "c"], &["a"]];
    let mut tcp = server.client();
    for set in sets {
        subscribe(&mut ws, set);
        tcp.send(&format!("subscribe {}", set.join(",")));
    }
    // Subscribing to a set again, in another order, is a no-op that succeeds.
    call(
        &mut ws,
        r#"{"command":"subscribe","tags":["a","z"]}"#,
        SUBSCRIBED,
    );
    call(
        &mut ws,
        r#"{"command":"list"}"#,
        r#"{"success":true,"command":"list","subscriptions":[["a"],["a!"],["a","c"],["a","z"],["a-b"]]}"#,
    );
    tcp.send("list");
    tcp.expect("list [[a] [a!] [a,c] [a,z] [a-b]]");

    call(
        &mut ws,
        r#"{"command":"unsubscribe","tags":["z","a","z"]}"#,
        UNSUBSCRIBED,
    );
    // Unsubscribing from a set that is not held is fine too.
    call(
        &mut ws,
        r#"{"command":"unsubscribe","tags":["nothing"]}"#,
        UNSUBSCRIBED,
    );
    // Unknown fields are ignored.
    call(
        &mut ws,
        r#"{"command":"list","extra":[1,2]}"#,
        r#"{"success":true,"command":"list","subscriptions":[["a"],["a!"],["a","c"],["a-b"]]}"#,
    );
    assert_eq!(ws_sync(&mut ws), Vec::<String>::new());
}

#[test]
fn deliveries_of_tcp_publishes() {
    let server = TestServer::start();
    let mut admin = server.client();
    register(&mut admin, "a,b", "tok");
    let mut ws = ws_connect(server.http, "tok");
    // Two subscriptions that both match `a,b`: the message still comes once.
    subscribe(&mut ws, &["a"]);
    subscribe(&mut ws, &["b", "a"]);
    subscribe(&mut ws, &["b", "z"]);

    let mut publisher = server.client();
    publisher.send("publish b,a,b hello world");
    publisher.send_raw(b"publish a say \"hi\"\tto C:\\ and \x01 caf\xc3\xa9 \xff\xfe!\n");
    publisher.send("publish a ");
    publisher.send("publish c not for us");
    publisher.send("publish b only b");
    publisher.send("publish z,b,y {\"json\":[1]}");
    publisher.ping();

    assert_eq!(
        ws_text(&mut ws),
        r#"{"keys":["a","b"],"data":"hello world"}"#
    );
    assert_eq!(
        ws_text(&mut ws),
        "{\"keys\":[\"a\"],\"data\":\"say \\\"hi\\\"\\tto C:\\\\ and \\u0001 caf\u{e9} \u{fffd}\u{fffd}!\"}"
    );
    assert_eq!(ws_text(&mut ws), r#"{"keys":["a"],"data":""}"#);
    assert_eq!(
        ws_text(&mut ws),
        r#"{"keys":["b","y","z"],"data":"{\"json\":[1]}"}"#
    );
    assert_eq!(ws_sync(&mut ws), Vec::<String>::new());
}

#[test]
fn failures_are_exact_and_keep_the_connection_open() {
    let server = TestServer::start();
    let mut admin = server.client();
    register(&mut admin, "a", "tok");
    let mut ws = ws_connect(server.http, "tok");

    ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(
        ws_text(&mut ws),
        r#"{"success":false,"error":"binary frames are not supported; send JSON text"}"#
    );
    assert_eq!(ws_sync(&mut ws), Vec::<String>::new());

    let too_many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    let too_many = format!(
        r#"{{"command":"subscribe","tags":{}}}"#,
        serde_json::to_string(&too_many).unwrap()
    );
    let cases: &[(&str, &str)] = &[
        (
            r#"{"command":"#,
            r#"{"success":false,"error":"invalid JSON: EOF while parsing a value at line 1 column 11"}"#,
        ),
        (
            "ping",
            r#"{"success":false,"error":"invalid JSON: expected value at line 1 column 1"}"#,
        ),
        (
            r#"["ping"]"#,
            r#"{"success":false,"error":"a command must be a JSON object"}"#,
        ),
        (
            r#""ping""#,
            r#"{"success":false,"error":"a command must be a JSON object"}"#,
        ),
        (
            r#"{"tags":["a"]}"#,
            r#"{"success":false,"error":"missing command"}"#,
        ),
        (
            r#"{"command":1}"#,
            r#"{"success":false,"error":"command must be a string"}"#,
        ),
        (
            r#"{"command":"publish","tags":["a"]}"#,
            r#"{"success":false,"error":"unknown command 'publish'"}"#,
        ),
        (
            r#"{"command":"PING"}"#,
            r#"{"success":false,"error":"unknown command 'PING'"}"#,
        ),
        (
            r#"{"command":"subscribe"}"#,
            r#"{"success":false,"command":"subscribe","error":"missing tags"}"#,
        ),
        (
            r#"{"command":"subscribe","tags":"a"}"#,
            r#"{"success":false,"command":"subscribe","error":"tags must be an array of strings"}"#,
        ),
        (
            r#"{"command":"subscribe","tags":["a",1]}"#,
            r#"{"success":false,"command":"subscribe","error":"tags must be an array of strings"}"#,
        ),
        (
            r#"{"command":"subscribe","tags":[]}"#,
            r#"{"success":false,"command":"subscribe","error":"invalid tags: empty tag list"}"#,
        ),
        (
            r#"{"command":"subscribe","tags":["a b"]}"#,
            r#"{"success":false,"command":"subscribe","error":"invalid tags: a tag contains a space, comma or control character"}"#,
        ),
        (
            r#"{"command":"subscribe","tags":["a,b"]}"#,
            r#"{"success":false,"command":"subscribe","error":"invalid tags: a tag contains a space, comma or control character"}"#,
        ),
        (
            r#"{"command":"subscribe","tags":["a\u0007"]}"#,
            r#"{"success":false,"command":"subscribe","error":"invalid tags: a tag contains a space, comma or control character"}"#,
        ),
        (
            r#"{"command":"unsubscribe","tags":[""]}"#,
            r#"{"success":false,"command":"unsubscribe","error":"invalid tags: empty tag"}"#,
        ),
        (
            too_many.as_str(),
            r#"{"success":false,"command":"subscribe","error":"invalid tags: more than 32 distinct tags"}"#,
        ),
    ];
    for (sent, want) in cases {
        call(&mut ws, sent, want);
        assert_eq!(ws_sync(&mut ws), Vec::<String>::new(), "after {sent}");
    }
    // Nothing was subscribed by any of them.
    call(
        &mut ws,
        r#"{"command":"list"}"#,
        r#"{"success":true,"command":"list","subscriptions":[]}"#,
    );
}

#[test]
fn token_in_header_or_query_and_the_header_wins() {
    let server = TestServer::start();
    let mut admin = server.client();
    register(&mut admin, "h", "th");
    register(&mut admin, "q", "tq");
    register(&mut admin, "s", "a/b:c");
    let lacks_q = r#"{"success":false,"command":"subscribe","error":"token lacks the tags q"}"#;

    let mut by_header = try_ws_connect(server.http, Some("th"), None).expect("header token");
    subscribe(&mut by_header, &["h"]);
    call(
        &mut by_header,
        r#"{"command":"subscribe","tags":["q"]}"#,
        lacks_q,
    );

    let mut by_query = try_ws_connect(server.http, None, Some("tq")).expect("query token");
    subscribe(&mut by_query, &["q"]);

    // The query value is percent-decoded.
    let mut escaped = try_ws_connect(server.http, None, Some("a%2Fb%3Ac")).expect("decoded");
    subscribe(&mut escaped, &["s"]);

    // Both given: the header's token is the one used.
    let mut both = try_ws_connect(server.http, Some("th"), Some("tq")).expect("both");
    subscribe(&mut both, &["h"]);
    call(
        &mut both,
        r#"{"command":"subscribe","tags":["q"]}"#,
        lacks_q,
    );
    // Even when the header's token is unknown and the query's is valid.
    assert_eq!(
        try_ws_connect(server.http, Some("nope"), Some("tq")).err(),
        Some(401)
    );
}

#[test]
fn refused_tokens_get_401_before_the_upgrade() {
    let server = TestServer::start();
    let mut admin = server.client();
    register(&mut admin, "a", "emptied");
    admin.send("unset a emptied");
    admin.send("tags emptied");
    admin.expect("tags emptied");

    assert_eq!(try_ws_connect(server.http, None, None).err(), Some(401));
    assert_eq!(
        try_ws_connect(server.http, Some("nope"), None).err(),
        Some(401)
    );
    assert_eq!(
        try_ws_connect(server.http, None, Some("nope")).err(),
        Some(401)
    );
    assert_eq!(
        try_ws_connect(server.http, Some("emptied"), None).err(),
        Some(401)
    );

    let cases = [
        (upgrade_request("", None, &[]), "missing token\n"),
        (upgrade_request("", Some("nope"), &[]), "unknown token\n"),
        (
            upgrade_request("?x-auth-token=nope", None, &[]),
            "unknown token\n",
        ),
        (
            upgrade_request("", Some("emptied"), &[]),
            "token has no tags\n",
        ),
        (
            upgrade_request("?x-auth-token=emptied", None, &[]),
            "token has no tags\n",
        ),
    ];
    for (req, body) in cases {
        let resp = http(server.http, &req);
        assert_eq!(resp, plain("401 Unauthorized", body, ""));
    }

    // Setting a tag on the emptied token lets it in again.
    admin.send("set a emptied");
    admin.ping();
    let mut ws = ws_connect(server.http, "emptied");
    subscribe(&mut ws, &["a"]);
}

#[test]
fn subscribe_needs_one_of_the_tokens_tags_at_that_moment() {
    let server = TestServer::start();
    let mut admin = server.client();
    register(&mut admin, "a", "tok");
    let mut ws = ws_connect(server.http, "tok");

    // One allowed tag is enough: every message the subscription gets carries `a`.
    subscribe(&mut ws, &["a", "other"]);
    subscribe(&mut ws, &["a"]);
    call(
        &mut ws,
        r#"{"command":"subscribe","tags":["c","b"]}"#,
        r#"{"success":false,"command":"subscribe","error":"token lacks the tags b,c"}"#,
    );
    call(
        &mut ws,
        r#"{"command":"list"}"#,
        r#"{"success":true,"command":"list","subscriptions":[["a"],["a","other"]]}"#,
    );

    // After `set`, the same subscription is allowed.
    admin.send("set c tok");
    admin.ping();
    subscribe(&mut ws, &["c", "b"]);
    admin.send("publish b,c,d now allowed");
    admin.ping();
    assert_eq!(ws_text(&mut ws), delivery(&["b", "c", "d"], "now allowed"));
    assert_eq!(ws_sync(&mut ws), Vec::<String>::new());
}

#[test]
fn plain_http_endpoints() {
    let server = TestServer::start();
    assert_eq!(http_get(server.http, "/ping"), plain("200 OK", "pong", ""));
    assert_eq!(
        http_get(server.http, "/nope"),
        plain("404 Not Found", "not found\n", "")
    );
    assert_eq!(
        http_get(server.http, "/subscribe/websocket/x"),
        plain("404 Not Found", "not found\n", "")
    );
    assert_eq!(
        http_get(server.http, "/subscribe/websocket"),
        plain(
            "426 Upgrade Required",
            "this endpoint speaks WebSocket\n",
            "upgrade: websocket\r\n"
        )
    );
    let old_version = "GET /subscribe/websocket HTTP/1.1\r\nHost: mist\r\nConnection: Upgrade\r\n\
                       Upgrade: websocket\r\nSec-WebSocket-Version: 8\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Auth-Token: t\r\n\r\n";
    assert_eq!(
        http(server.http, old_version.as_bytes()),
        plain(
            "426 Upgrade Required",
            "unsupported WebSocket version\n",
            "sec-websocket-version: 13\r\n"
        )
    );
    let post = b"POST /ping HTTP/1.1\r\nHost: mist\r\nContent-Length: 2\r\n\r\nhi";
    assert_eq!(
        http(server.http, post),
        plain("405 Method Not Allowed", "only GET\n", "allow: GET\r\n")
    );
    assert_eq!(
        http(server.http, b"\x00\x01 nonsense\r\n\r\n"),
        plain("400 Bad Request", "malformed request: invalid token\n", "")
    );
    assert_eq!(
        http(server.http, b"GET /ping HTTP/1.1\r\nHost mist\r\n\r\n"),
        plain(
            "400 Bad Request",
            "malformed request: invalid header name\n",
            ""
        )
    );
}

#[test]
fn metrics_follow_what_happens() {
    let server = TestServer::start();
    let m = scrape(server.http);
    for series in [
        "mist_connections{transport=\"tcp\"}",
        "mist_connections{transport=\"websocket\"}",
        "mist_subscriptions",
        "mist_messages_published_total",
        "mist_deliveries_total",
        "mist_drops_total",
        "mist_auth_failures_total",
        "mist_revocations_total",
    ] {
        assert_eq!(metric(&m, series), 0, "{series} on a fresh server");
    }
    assert!(m.contains("# TYPE mist_connections gauge\n"), "{m}");
    assert!(m.contains("# TYPE mist_deliveries_total counter\n"), "{m}");

    let mut admin = server.client();
    register(&mut admin, "a,b", "tok");
    admin.send("subscribe a");
    admin.ping();
    let mut ws = ws_connect(server.http, "tok");
    subscribe(&mut ws, &["a"]);
    subscribe(&mut ws, &["b"]);
    let m = scrape(server.http);
    assert_eq!(metric(&m, "mist_connections{transport=\"tcp\"}"), 1);
    assert_eq!(metric(&m, "mist_connections{transport=\"websocket\"}"), 1);
    assert_eq!(metric(&m, "mist_subscriptions"), 3);

    admin.send("publish a,b one");
    admin.send("publish c two");
    assert_eq!(admin.sync(), ["publish a,b one"]);
    assert_eq!(ws_text(&mut ws), delivery(&["a", "b"], "one"));
    let m = scrape(server.http);
    assert_eq!(metric(&m, "mist_messages_published_total"), 2);
    assert_eq!(metric(&m, "mist_deliveries_total"), 2);
    assert_eq!(metric(&m, "mist_drops_total"), 0);

    assert_eq!(
        try_ws_connect(server.http, Some("nope"), None).err(),
        Some(401)
    );
    call(
        &mut ws,
        r#"{"command":"subscribe","tags":["z"]}"#,
        r#"{"success":false,"command":"subscribe","error":"token lacks the tags z"}"#,
    );
    assert_eq!(metric(&scrape(server.http), "mist_auth_failures_total"), 2);

    admin.send("unset b tok");
    admin.ping();
    assert_eq!(ws_text(&mut ws), revoked(&["b"]));
    let m = scrape(server.http);
    assert_eq!(metric(&m, "mist_revocations_total"), 1);
    assert_eq!(metric(&m, "mist_subscriptions"), 2);

    // The gauges go down when clients leave; nothing answers after a close, so poll.
    ws.close(None).unwrap();
    assert_eq!(next_frame(&mut ws), Frame::Close(1000, String::new()));
    assert_eq!(next_frame(&mut ws), Frame::End);
    wait_metric(server.http, "mist_connections{transport=\"websocket\"}", 0);
    wait_metric(server.http, "mist_subscriptions", 1);
    drop(admin);
    wait_metric(server.http, "mist_connections{transport=\"tcp\"}", 0);
    wait_metric(server.http, "mist_subscriptions", 0);
}

#[test]
fn unregister_closes_every_websocket_of_the_token_with_1008() {
    let server = TestServer::start();
    let mut admin = server.client();
    register(&mut admin, "a", "gone");
    register(&mut admin, "a", "kept");
    let mut w1 = ws_connect(server.http, "gone");
    let mut w2 = ws_connect(server.http, "gone");
    let mut w3 = ws_connect(server.http, "kept");
    for ws in [&mut w1, &mut w2, &mut w3] {
        subscribe(ws, &["a"]);
    }

    for i in 0..5 {
        admin.send(&format!("publish a before-{i}"));
    }
    admin.ping();
    admin.send("unregister gone");
    admin.ping();
    // After that pong, nothing more may reach `gone`'s connections.
    for i in 0..5 {
        admin.send(&format!("publish a after-{i}"));
    }
    admin.ping();
    admin.send("tags gone");
    admin.expect("error unknown token");

    for ws in [&mut w1, &mut w2] {
        let mut seen = Vec::new();
        let code = loop {
            match next_frame(ws) {
                Frame::Text(t) => seen.push(t),
                Frame::Close(code, reason) => {
                    assert_eq!(reason, "token revoked");
                    break code;
                }
                Frame::End => panic!("the connection ended without a close frame"),
            }
        };
        assert_eq!(code, 1008);
        // Deliveries queued before the revocation may or may not have gone out; those that
        // did are in order and none was published after the admin's pong.
        let before: Vec<String> = (0..5)
            .map(|i| delivery(&["a"], &format!("before-{i}")))
            .collect();
        assert!(
            before.starts_with(&seen),
            "frames before the close: {seen:?}"
        );
        assert_eq!(next_frame(ws), Frame::End);
    }

    // Another token's connection is untouched.
    for when in ["before", "after"] {
        for i in 0..5 {
            assert_eq!(ws_text(&mut w3), delivery(&["a"], &format!("{when}-{i}")));
        }
    }
    assert_eq!(ws_sync(&mut w3), Vec::<String>::new());
    assert_eq!(
        try_ws_connect(server.http, Some("gone"), None).err(),
        Some(401)
    );
    assert_eq!(
        metric(&scrape(server.http), "mist_revocations_total"),
        2,
        "one per closed connection"
    );
}

#[test]
fn unset_revokes_subscriptions_that_lost_their_last_allowed_tag() {
    let server = TestServer::start();
    let mut admin = server.client();
    register(&mut admin, "a,b", "tok");
    let mut ws = ws_connect(server.http, "tok");
    subscribe(&mut ws, &["a"]);
    subscribe(&mut ws, &["x", "b"]);
    subscribe(&mut ws, &["a", "b"]);
    let mut other = ws_connect(server.http, "tok");
    subscribe(&mut other, &["b"]);

    admin.send("unset b tok");
    admin.ping();
    assert_eq!(ws_text(&mut ws), revoked(&["b", "x"]));
    assert_eq!(ws_sync(&mut ws), Vec::<String>::new());
    assert_eq!(ws_text(&mut other), revoked(&["b"]));
    assert_eq!(ws_sync(&mut other), Vec::<String>::new());
    call(
        &mut ws,
        r#"{"command":"list"}"#,
        r#"{"success":true,"command":"list","subscriptions":[["a"],["a","b"]]}"#,
    );

    admin.send("publish b,x one");
    admin.send("publish a,b two");
    admin.send("publish a three");
    admin.send("publish b four");
    admin.ping();
    assert_eq!(ws_text(&mut ws), delivery(&["a", "b"], "two"));
    assert_eq!(ws_text(&mut ws), delivery(&["a"], "three"));
    assert_eq!(ws_sync(&mut ws), Vec::<String>::new());
    assert_eq!(ws_sync(&mut other), Vec::<String>::new());

    // Unsetting the last tag removes the rest, one notice each.
    admin.send("unset a tok");
    admin.ping();
    let mut notices = vec![ws_text(&mut ws), ws_text(&mut ws)];
    notices.sort();
    let mut want = [revoked(&["a"]), revoked(&["a", "b"])];
    want.sort();
    assert_eq!(notices, want);
    assert_eq!(ws_sync(&mut ws), Vec::<String>::new());
    call(
        &mut ws,
        r#"{"command":"list"}"#,
        r#"{"success":true,"command":"list","subscriptions":[]}"#,
    );
    call(
        &mut ws,
        r#"{"command":"subscribe","tags":["a"]}"#,
        r#"{"success":false,"command":"subscribe","error":"token lacks the tags a"}"#,
    );
    // The open connections stay open; only new connections are refused.
    assert_eq!(
        try_ws_connect(server.http, Some("tok"), None).err(),
        Some(401)
    );
}

#[test]
fn revocation_racing_a_publisher_is_a_barrier_in_the_stream() {
    let server = TestServer::start();
    let mut admin = server.client();
    register(&mut admin, "a,b", "tok");
    let mut ws = ws_connect(server.http, "tok");
    subscribe(&mut ws, &["a"]);
    subscribe(&mut ws, &["b", "x"]);

    // Even messages match only the subscription to be revoked; odd ones only the one kept.
    let publisher = Publisher::start(server.tcp, |i| {
        if i.is_multiple_of(2) {
            format!("publish b,x {i}")
        } else {
            format!("publish a {i}")
        }
    });
    let revoked_sub = revoked(&["b", "x"]);
    // Returns the message number of a delivery, checking its tags by its parity.
    let number = |t: &str| -> u64 {
        let v: serde_json::Value = serde_json::from_str(t).unwrap();
        let n: u64 = v["data"].as_str().unwrap().parse().unwrap();
        let keys = if n.is_multiple_of(2) {
            &["b", "x"][..]
        } else {
            &["a"][..]
        };
        assert_eq!(t, delivery(keys, &n.to_string()), "a delivery");
        n
    };

    // Wait until the doomed subscription is receiving, then revoke mid-stream.
    let mut doomed_seen = 0;
    let mut last = None;
    while doomed_seen < 20 {
        let t = ws_text(&mut ws);
        if is_slow_notice(&t) {
            continue;
        }
        let n = number(&t);
        assert!(last < Some(n), "in publish order");
        last = Some(n);
        doomed_seen += usize::from(n.is_multiple_of(2));
    }
    admin.send("unset b tok");
    admin.ping();
    loop {
        let t = ws_text(&mut ws);
        if t == revoked_sub {
            break;
        }
        if !is_slow_notice(&t) {
            let n = number(&t);
            assert!(last < Some(n), "in publish order");
            last = Some(n);
        }
    }
    // After the notice, only the kept subscription's messages, and they keep coming.
    let mut kept_after = 0;
    while kept_after < 50 {
        let t = ws_text(&mut ws);
        if is_slow_notice(&t) {
            continue;
        }
        let n = number(&t);
        assert_eq!(
            n % 2,
            1,
            "delivery {n} on a revoked subscription after its notice"
        );
        assert!(last < Some(n), "in publish order");
        last = Some(n);
        kept_after += 1;
    }
    let published = publisher.stop();
    for t in ws_sync(&mut ws) {
        if !is_slow_notice(&t) {
            let n = number(&t);
            assert_eq!(
                n % 2,
                1,
                "delivery {n} on a revoked subscription after its notice"
            );
        }
    }
    assert!(
        published > 100,
        "the publisher kept publishing ({published})"
    );
}

/// Revocation with deliveries waiting in the client's queue: the subscriber reads nothing while
/// more is published than its socket can hold, so most deliveries are still queued when the
/// admin command runs. Queued deliveries of a revoked subscription are not sent after the
/// notice; an unregistered token's queue is discarded before the close frame.
#[test]
fn revocation_removes_queued_deliveries() {
    const PAIRS: usize = 200;
    const SIZE: usize = 64 * 1024;
    let server = TestServer::start();
    let mut admin = server.client();
    register(&mut admin, "a,b", "unset");
    register(&mut admin, "a", "gone");
    let mut w1 = ws_connect(server.http, "unset");
    subscribe(&mut w1, &["a"]);
    subscribe(&mut w1, &["b", "x"]);
    let mut w2 = ws_connect(server.http, "gone");
    subscribe(&mut w2, &["a"]);
    for ws in [&w1, &w2] {
        // A small receive buffer, so the kernel cannot absorb the burst.
        socket2::SockRef::from(ws.get_ref())
            .set_recv_buffer_size(16 * 1024)
            .unwrap();
    }
    // Message i: even ones on `b,x` (only w1's revoked subscription), odd ones on `a`.
    let tags = |i: usize| if i.is_multiple_of(2) { "b,x" } else { "a" };
    let data = |i: usize| format!("{i:06}{}", "x".repeat(SIZE - 6));
    let frame = |i: usize| {
        let keys = if i.is_multiple_of(2) {
            &["b", "x"][..]
        } else {
            &["a"][..]
        };
        delivery(keys, &data(i))
    };
    let mut publisher = server.client();
    for i in 0..2 * PAIRS {
        publisher.send(&format!("publish {} {}", tags(i), data(i)));
    }
    publisher.ping();
    admin.send("unset b unset");
    admin.send("unregister gone");
    admin.ping();
    let end = 2 * PAIRS + 20;
    for i in 2 * PAIRS..end {
        publisher.send(&format!("publish {} {}", tags(i), data(i)));
    }
    publisher.ping();

    // The number of a delivery, with its exact bytes checked (without printing 64 KiB).
    let number = |t: &str| -> usize {
        let start = t.find(r#""data":""#).expect("a delivery") + 8;
        let i: usize = t[start..start + 6].parse().expect("a numbered delivery");
        assert!(t == frame(i), "delivery {i} is not exact");
        i
    };

    // w1: a prefix of everything (what was on its way), then only the `a` messages: those
    // still queued are kept, the queued `b,x` ones are gone. Then the notice, then the `a`
    // messages published after the admin command.
    let mut got = Vec::new();
    loop {
        let t = ws_text(&mut w1);
        if t == revoked(&["b", "x"]) {
            break;
        }
        got.push(number(&t));
    }
    let sent = got.iter().enumerate().take_while(|&(j, &i)| i == j).count();
    assert!(
        sent < 2 * PAIRS,
        "deliveries were still queued at the revocation"
    );
    let kept: Vec<usize> = (sent..2 * PAIRS).filter(|i| i % 2 == 1).collect();
    assert_eq!(
        got[sent..],
        kept[..],
        "after the first {sent}, only `a` messages"
    );
    for i in (2 * PAIRS..end).filter(|i| i % 2 == 1) {
        assert_eq!(number(&ws_text(&mut w1)), i, "after the notice");
    }
    assert_eq!(ws_sync(&mut w1), Vec::<String>::new());

    // w2: a prefix of the `a` messages, then the close; the queued rest is discarded.
    let mut odd = (1..end).step_by(2);
    let mut got = 0;
    loop {
        match next_frame(&mut w2) {
            Frame::Text(t) => {
                let i = odd.next().expect("no more than was published");
                assert_eq!(number(&t), i, "delivery {got} on the unregistered token");
                got += 1;
            }
            Frame::Close(code, reason) => {
                assert_eq!((code, reason.as_str()), (1008, "token revoked"));
                break;
            }
            Frame::End => panic!("the connection ended without a close frame"),
        }
    }
    assert!(got < PAIRS, "queued deliveries were discarded ({got} came)");
    assert_eq!(next_frame(&mut w2), Frame::End);
}

/// A subscriber that does not read while a publisher sends more than its socket and queue can
/// hold: the publisher is not slowed, the subscriber gets a prefix, one exact notice counting
/// the rest, and then new deliveries again.
///
/// "One notice" holds per run of losses. The number of runs is up to the kernel: loopback
/// socket buffers grow while the burst is under way, so the queue can drain a little in the
/// middle of it, and a second run starts later. The test allows that, and checks what must hold
/// for every run: the notice comes before the next delivery, no two notices come without a
/// delivery between them, and each counts exactly the messages missing at that point.
fn slow_consumer(adjust: impl FnOnce(&mut mist::Config)) {
    const MSGS: usize = 400;
    const SIZE: usize = 64 * 1024;
    let server = TestServer::with(adjust);
    let mut admin = server.client();
    register(&mut admin, "slow", "tok");
    let mut ws = ws_connect(server.http, "tok");
    // A small receive buffer, so the kernel cannot absorb the whole burst.
    socket2::SockRef::from(ws.get_ref())
        .set_recv_buffer_size(16 * 1024)
        .unwrap();
    subscribe(&mut ws, &["slow"]);
    let data = |i: usize| format!("{i:06}{}", "x".repeat(SIZE - 6));

    let mut publisher = server.client();
    let start = Instant::now();
    for i in 0..MSGS {
        publisher.send(&format!("publish slow {}", data(i)));
        if i % 100 == 99 {
            // Answered while the subscriber reads nothing: the publisher is never blocked.
            publisher.ping();
        }
    }
    publisher.ping();
    assert!(
        start.elapsed() < TIMEOUT,
        "publishing took {:?}",
        start.elapsed()
    );

    // Losses come in runs (usually one): each is followed by exactly one notice counting it.
    let (mut next, mut got, mut dropped, mut notices) = (0, 0, 0, 0);
    let mut pending: Option<usize> = None;
    while next + pending.unwrap_or(0) < MSGS {
        let t = ws_text(&mut ws);
        if is_slow_notice(&t) {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            let n = v["dropped"].as_u64().expect("a count");
            assert_eq!(
                t,
                format!(
                    r#"{{"success":false,"error":"slow consumer: dropped {n} messages","dropped":{n}}}"#
                )
            );
            assert!(n > 0, "a notice for no loss");
            assert_eq!(pending, None, "two notices for one run of losses");
            pending = Some(n as usize);
            dropped += n as usize;
            notices += 1;
            continue;
        }
        // Where the delivery should be: right after the previous one, or after the run of
        // losses that the notice counted.
        let want = next + pending.take().unwrap_or(0);
        if t != delivery(&["slow"], &data(want)) {
            let v: serde_json::Value = serde_json::from_str(&t).expect("JSON");
            let data = v["data"].as_str().unwrap_or("?");
            panic!(
                "expected delivery {want}, got {} ({dropped} dropped in {notices} notices)",
                &data[..data.len().min(6)]
            );
        }
        next = want + 1;
        got += 1;
    }
    assert!(notices >= 1 && got >= 1, "deliveries, then losses");
    assert_eq!(
        got + dropped,
        MSGS,
        "the notices count exactly the missing ones"
    );
    assert_eq!(ws_sync(&mut ws), Vec::<String>::new(), "nothing more");

    // Deliveries resume. One at a time: a publisher's pipelined lines are queued as one batch,
    // and a batch larger than a 4-message queue would lose its tail.
    for i in 0..5 {
        publisher.send(&format!("publish slow again-{i}"));
        publisher.ping();
    }
    for i in 0..5 {
        assert_eq!(ws_text(&mut ws), delivery(&["slow"], &format!("again-{i}")));
    }
    assert_eq!(ws_sync(&mut ws), Vec::<String>::new());

    let m = scrape(server.http);
    assert_eq!(metric(&m, "mist_drops_total"), dropped as u64);
    assert_eq!(
        metric(&m, "mist_slow_consumer_notices_total"),
        notices as u64
    );
    assert_eq!(metric(&m, "mist_deliveries_total"), (got + 5) as u64);
}

#[test]
fn slow_consumer_by_message_count() {
    slow_consumer(|c| c.client_queue = 4);
}

/// Regression test for 1cfa13b: under the byte limit, one run of losses could get two notices.
#[test]
fn slow_consumer_by_bytes() {
    slow_consumer(|c| c.client_queue_bytes = 200 * 1024);
}

#[test]
fn rfc6455_ping_is_answered_while_deliveries_flow() {
    let server = TestServer::start();
    let mut admin = server.client();
    register(&mut admin, "p", "tok");
    let mut ws = ws_connect(server.http, "tok");
    subscribe(&mut ws, &["p"]);
    let publisher = Publisher::start(server.tcp, |i| format!("publish p {i}"));

    let mut deliveries = 0;
    for round in 0..5 {
        let payload = format!("ping-{round}").into_bytes();
        // Deliveries are flowing before each ping.
        let target = deliveries + 10;
        while deliveries < target {
            let t = ws_text(&mut ws);
            deliveries += usize::from(!is_slow_notice(&t));
        }
        ws.send(Message::Ping(payload.clone().into())).unwrap();
        loop {
            match ws.read().expect("a frame before the timeout") {
                Message::Pong(p) => {
                    assert_eq!(&p[..], &payload[..], "the pong echoes the ping's payload");
                    break;
                }
                Message::Text(t) => {
                    assert!(
                        t.as_str().starts_with(r#"{"keys":["p"],"data":""#)
                            || is_slow_notice(t.as_str()),
                        "{t}"
                    );
                    deliveries += 1;
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
    publisher.stop();
    ws_sync(&mut ws);
    // An empty ping is answered too.
    ws.send(Message::Ping(Vec::new().into())).unwrap();
    match ws.read().expect("a pong before the timeout") {
        Message::Pong(p) => assert!(p.is_empty()),
        other => panic!("expected a pong, got {other:?}"),
    }
}

/// Regression test for 1cfa13b: a WebSocket could be shut down while another thread was still
/// writing its close frame.
#[test]
fn close_handshake_echoes_the_code_then_the_connection_ends() {
    let server = TestServer::start();
    let mut admin = server.client();
    register(&mut admin, "a", "tok");
    for (code, want) in [(CloseCode::Normal, 1000), (CloseCode::Library(4321), 4321)] {
        let mut ws = ws_connect(server.http, "tok");
        subscribe(&mut ws, &["a"]);
        ws.close(Some(CloseFrame {
            code,
            reason: "bye".into(),
        }))
        .unwrap();
        assert_eq!(next_frame(&mut ws), Frame::Close(want, String::new()));
        // tungstenite reports the end only once the server closed the TCP connection.
        assert_eq!(next_frame(&mut ws), Frame::End);
        let mut rest = [0u8; 16];
        assert_eq!(
            ws.get_mut().read(&mut rest).unwrap(),
            0,
            "the socket is at EOF"
        );
    }
    // The closed connections' subscriptions are gone.
    wait_metric(server.http, "mist_subscriptions", 0);
}

#[test]
fn a_thousand_messages_arrive_in_order() {
    let server = TestServer::start();
    let mut admin = server.client();
    register(&mut admin, "n", "tok");
    let mut ws = ws_connect(server.http, "tok");
    subscribe(&mut ws, &["n"]);
    let mut batch = String::new();
    for i in 0..1000 {
        batch.push_str(&format!("publish n,m message {i}\n"));
    }
    admin.send_raw(batch.as_bytes());
    admin.ping();
    for i in 0..1000 {
        assert_eq!(
            ws_text(&mut ws),
            delivery(&["m", "n"], &format!("message {i}"))
        );
    }
    assert_eq!(ws_sync(&mut ws), Vec::<String>::new());
}

#[test]
fn max_connections_counts_websockets() {
    let server = TestServer::with(|c| c.max_connections = 1);
    let mut admin = server.client();
    register(&mut admin, "a", "tok");
    assert_eq!(
        try_ws_connect(server.http, Some("tok"), None).err(),
        Some(503)
    );
    assert_eq!(
        http(server.http, &upgrade_request("", Some("tok"), &[])),
        plain("503 Service Unavailable", "too many connections\n", "")
    );
    // Plain HTTP requests are not clients and are still answered.
    assert_eq!(http_get(server.http, "/ping"), plain("200 OK", "pong", ""));
    // Once the TCP client has gone, its slot is free (nothing answers a close: poll).
    drop(admin);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ws = loop {
        match try_ws_connect(server.http, Some("tok"), None) {
            Ok(ws) => break ws,
            Err(503) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Err(status) => panic!("upgrade refused with {status}"),
        }
    };
    subscribe(&mut ws, &["a"]);
    // The WebSocket holds the only slot: a TCP client is refused.
    let mut late = server.client();
    late.expect("error too many connections (max_connections 1)");
    assert_eq!(late.read_to_end(), b"");
}

#[test]
fn max_connections_with_a_websocket_open() {
    let server = TestServer::with(|c| c.max_connections = 2);
    let mut admin = server.client();
    register(&mut admin, "a", "tok");
    let mut ws = ws_connect(server.http, "tok");
    subscribe(&mut ws, &["a"]);
    assert_eq!(
        try_ws_connect(server.http, Some("tok"), None).err(),
        Some(503)
    );
    let mut late = server.client();
    late.expect("error too many connections (max_connections 2)");
    assert_eq!(late.read_to_end(), b"");
    call(&mut ws, PING, PONG);
}

#[test]
fn a_message_over_max_line_bytes_is_closed_with_1009() {
    let server = TestServer::with(|c| c.max_line_bytes = 1024);
    let mut admin = server.client();
    register(&mut admin, "a", "tok");
    let mut ws = ws_connect(server.http, "tok");
    // Exactly the limit is fine.
    let at_limit = format!("{PING:<1024}");
    assert_eq!(at_limit.len(), 1024);
    call(&mut ws, &at_limit, PONG);
    let over = format!("{PING:<1025}");
    ws_send(&mut ws, &over);
    expect_closed(&mut ws, 1009, "message larger than 1024 bytes");
    // The server is fine.
    let mut again = ws_connect(server.http, "tok");
    call(&mut again, PING, PONG);
}

#[test]
fn an_embedding_program_serves_websockets_and_publishes() {
    let ctx = mist::Context::new(test_config(), Box::new(MemoryStore::new()));
    let news = TagSet::from_strs(&["news"], 32).unwrap();
    ctx.tokens().register("embedded", &news).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let served = Arc::clone(&ctx);
    thread::spawn(move || {
        for _ in 0..2 {
            let (stream, _) = listener.accept().unwrap();
            mist::serve(&served, stream);
        }
        done_tx.send(()).unwrap();
    });

    // The same routes as mist's own listener.
    assert_eq!(http_get(addr, "/ping"), plain("200 OK", "pong", ""));
    let mut ws = ws_connect(addr, "embedded");
    subscribe(&mut ws, &["news"]);
    let tags = TagSet::from_strs(&["world", "news"], 32).unwrap();
    ctx.publish(&tags, b"hello \xff").unwrap();
    assert_eq!(
        ws_text(&mut ws),
        delivery(&["news", "world"], "hello \u{fffd}")
    );
    assert_eq!(
        ctx.publish(&tags, b"two\nlines"),
        Err(PublishError::Newline)
    );
    let big = vec![b'x'; ctx.config().max_line_bytes];
    assert_eq!(
        ctx.publish(&tags, &big),
        Err(PublishError::TooLong(ctx.config().max_line_bytes))
    );
    assert_eq!(ws_sync(&mut ws), Vec::<String>::new());
    assert_eq!(
        ctx.metrics()
            .messages_published
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    ws.close(None).unwrap();
    assert_eq!(next_frame(&mut ws), Frame::Close(1000, String::new()));
    assert_eq!(next_frame(&mut ws), Frame::End);
    drop(ws);
    done_rx
        .recv_timeout(TIMEOUT)
        .expect("mist::serve returns when the connection is closed");
}
