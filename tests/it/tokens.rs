//! One behaviour suite for both token stores: every test here runs against the in-memory store
//! and against PostgreSQL (a database of its own per test).

use crate::pgsupport::PgDb;
use crate::support::{TestServer, try_ws_connect, ws_connect, ws_send, ws_sync, ws_text};
use mist::Config;
use std::net::TcpStream;
use tungstenite::protocol::WebSocket;

#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    Postgres,
}

/// A server on the given store; the database (if any) outlives the server.
struct Setup {
    server: TestServer,
    _db: Option<PgDb>,
}

fn setup(store: Store, f: impl FnOnce(&mut Config)) -> Setup {
    match store {
        Store::Memory => Setup {
            server: TestServer::with(f),
            _db: None,
        },
        Store::Postgres => {
            let db = PgDb::create();
            let server = TestServer::with_store(f, Box::new(db.store()));
            Setup {
                server,
                _db: Some(db),
            }
        }
    }
}

/// Generates `memory::NAME` and `postgres::NAME` for each behaviour `NAME(store)`.
macro_rules! for_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $name() { super::$name(super::Store::Memory) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(super::Store::Postgres) } )*
        }
    };
}

for_both_stores!(
    admin_commands_and_their_replies,
    tags_are_sorted_bytewise,
    unknown_tokens_are_errors,
    websocket_auth_by_header_and_query,
    websocket_refusals_are_401,
    subscribe_needs_one_allowed_tag,
    unregister_closes_websockets_with_1008,
    unset_revokes_subscriptions_that_lost_their_last_tag,
);

fn admin_commands_and_their_replies(store: Store) {
    let s = setup(store, |_| {});
    let mut c = s.server.client();
    c.send("register b,a,b t1");
    c.ping();
    c.send("tags t1");
    c.expect("tags t1 a,b");
    c.send("register x t1");
    c.expect("error token already exists");
    c.send("set c,a t1");
    c.send("tags t1");
    c.expect("tags t1 a,b,c");
    c.send("unset a,b,zzz t1");
    c.send("tags t1");
    c.expect("tags t1 c");
    c.send("unset c t1");
    c.send("tags t1");
    c.expect("tags t1");
    c.send("unregister t1");
    c.ping();
    c.send("tags t1");
    c.expect("error unknown token");
    // The name is free again.
    c.send("register a t1");
    c.ping();
}

fn tags_are_sorted_bytewise(store: Store) {
    let s = setup(store, |_| {});
    let mut c = s.server.client();
    c.send("register é,b,B,a,_,1 t");
    c.send("tags t");
    c.expect("tags t 1,B,_,a,b,é");
}

fn unknown_tokens_are_errors(store: Store) {
    let s = setup(store, |_| {});
    let mut c = s.server.client();
    for cmd in ["set a nope", "unset a nope", "tags nope", "unregister nope"] {
        c.send(cmd);
        c.expect("error unknown token");
    }
    c.ping();
}

fn websocket_auth_by_header_and_query(store: Store) {
    let s = setup(store, |_| {});
    let mut c = s.server.client();
    c.send("register a good");
    c.ping();
    let mut by_header = ws_connect(s.server.http, "good");
    assert!(ws_sync(&mut by_header).is_empty());
    let mut by_query = try_ws_connect(s.server.http, None, Some("good")).expect("query token");
    assert!(ws_sync(&mut by_query).is_empty());
    // The header wins over the query parameter.
    assert_eq!(
        try_ws_connect(s.server.http, Some("good"), Some("bad")).err(),
        None
    );
    assert_eq!(
        try_ws_connect(s.server.http, Some("bad"), Some("good")).err(),
        Some(401)
    );
}

fn websocket_refusals_are_401(store: Store) {
    let s = setup(store, |_| {});
    let mut c = s.server.client();
    c.send("register a tagless");
    c.send("unset a tagless");
    c.ping();
    assert_eq!(
        try_ws_connect(s.server.http, None, None).err(),
        Some(401),
        "missing token"
    );
    assert_eq!(
        try_ws_connect(s.server.http, Some("nope"), None).err(),
        Some(401),
        "unknown"
    );
    assert_eq!(
        try_ws_connect(s.server.http, Some("tagless"), None).err(),
        Some(401),
        "no tags"
    );
}

fn subscribe(ws: &mut WebSocket<TcpStream>, tags: &str) -> String {
    ws_send(ws, &format!(r#"{{"command":"subscribe","tags":{tags}}}"#));
    ws_text(ws)
}

const OK: &str = r#"{"success":true,"command":"subscribe"}"#;

fn subscribe_needs_one_allowed_tag(store: Store) {
    let s = setup(store, |_| {});
    let mut c = s.server.client();
    c.send("register news,sport t");
    c.ping();
    let mut ws = ws_connect(s.server.http, "t");
    assert_eq!(subscribe(&mut ws, r#"["news"]"#), OK);
    assert_eq!(
        subscribe(&mut ws, r#"["news","weather"]"#),
        OK,
        "one allowed tag is enough"
    );
    assert_eq!(
        subscribe(&mut ws, r#"["weather","tv"]"#),
        r#"{"success":false,"command":"subscribe","error":"token lacks the tags tv,weather"}"#
    );
    c.send("set weather t");
    c.ping();
    assert_eq!(
        subscribe(&mut ws, r#"["weather","tv"]"#),
        OK,
        "checked against the tags now"
    );
    ws_send(&mut ws, r#"{"command":"list"}"#);
    assert_eq!(
        ws_text(&mut ws),
        r#"{"success":true,"command":"list","subscriptions":[["news"],["news","weather"],["tv","weather"]]}"#
    );
}

fn unregister_closes_websockets_with_1008(store: Store) {
    let s = setup(store, |_| {});
    let mut c = s.server.client();
    c.send("register news doomed");
    c.send("register news other");
    c.ping();
    let mut a = ws_connect(s.server.http, "doomed");
    let mut b = ws_connect(s.server.http, "doomed");
    let mut keep = ws_connect(s.server.http, "other");
    for ws in [&mut a, &mut b, &mut keep] {
        assert_eq!(subscribe(ws, r#"["news"]"#), OK);
    }
    c.send("unregister doomed");
    c.ping();
    // After the admin command is answered, nothing more is delivered to the revoked clients.
    c.send("publish news after");
    c.ping();
    for ws in [&mut a, &mut b] {
        match ws.read().expect("a close frame") {
            tungstenite::Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1008);
                assert_eq!(frame.reason.as_str(), "token revoked");
            }
            other => panic!("expected close 1008, got {other:?}"),
        }
    }
    assert_eq!(ws_sync(&mut keep), [r#"{"keys":["news"],"data":"after"}"#]);
    assert_eq!(
        try_ws_connect(s.server.http, Some("doomed"), None).err(),
        Some(401)
    );
}

fn unset_revokes_subscriptions_that_lost_their_last_tag(store: Store) {
    let s = setup(store, |_| {});
    let mut c = s.server.client();
    c.send("register news,sport t");
    c.ping();
    let mut ws = ws_connect(s.server.http, "t");
    assert_eq!(subscribe(&mut ws, r#"["sport"]"#), OK);
    assert_eq!(subscribe(&mut ws, r#"["news","sport"]"#), OK);
    c.send("unset sport t");
    c.ping();
    c.send("publish sport only-sport");
    c.send("publish news,sport both");
    c.ping();
    assert_eq!(
        ws_sync(&mut ws),
        [
            r#"{"success":true,"command":"unsubscribe","tags":["sport"],"reason":"access revoked"}"#,
            r#"{"keys":["news","sport"],"data":"both"}"#,
        ]
    );
    ws_send(&mut ws, r#"{"command":"list"}"#);
    assert_eq!(
        ws_text(&mut ws),
        r#"{"success":true,"command":"list","subscriptions":[["news","sport"]]}"#
    );
}
