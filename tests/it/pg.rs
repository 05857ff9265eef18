//! The PostgreSQL token store against real PostgreSQL servers: its tables, transactions,
//! survival across restarts, concurrency, and what happens when the database goes away.

use crate::pgsupport::{Cluster, PgDb};
use crate::support::{TestServer, try_ws_connect, ws_connect, ws_send, ws_sync, ws_text};
use mist::PgStore;
use mist::TagSet;
use mist::{StoreError, TokenStore};
use std::sync::{Arc, Barrier};
use std::thread;

fn set(s: &str) -> TagSet {
    TagSet::parse(s.as_bytes(), 32).unwrap()
}

#[test]
fn tables_have_keys_and_cascade() {
    let db = PgDb::create();
    let store = db.store();
    store.register("tok", &set("a,b")).unwrap();
    let mut c = db.client();
    let pk: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.table_constraints
             WHERE constraint_type = 'PRIMARY KEY'
               AND table_name IN ('mist_tokens', 'mist_token_tags')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(pk, 2, "both tables have a primary key");
    let rule: String = c
        .query_one(
            "SELECT delete_rule FROM information_schema.referential_constraints
             WHERE constraint_name = 'mist_token_tags_token_fkey'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rule, "CASCADE");
    c.execute("DELETE FROM mist_tokens WHERE token = 'tok'", &[])
        .unwrap();
    let left: i64 = c
        .query_one("SELECT count(*) FROM mist_token_tags", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "deleting a token deletes its tags");
    // Opening a second store on the same database finds the tables already there.
    drop(db.store());
}

#[test]
fn register_is_all_or_nothing() {
    let db = PgDb::create();
    let store = db.store();
    // Make the database refuse one tag, after the token row and the first tags were written.
    db.client()
        .batch_execute(
            "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.tag = 'boom' THEN RAISE EXCEPTION 'boom refused'; END IF;
             RETURN NEW; END $$;
             CREATE TRIGGER refuse_boom BEFORE INSERT ON mist_token_tags
             FOR EACH ROW EXECUTE FUNCTION refuse_boom();",
        )
        .unwrap();
    let err = store.register("tok", &set("a,boom,c")).unwrap_err();
    assert_eq!(err, StoreError::Unavailable("boom refused".into()));
    assert_eq!(
        store.tags("tok"),
        Err(StoreError::UnknownToken),
        "no half-registered token"
    );
    store.register("tok", &set("a,c")).unwrap();
    assert!(store.set("tok", &set("b,boom")).is_err());
    assert_eq!(
        store.tags("tok").unwrap(),
        ["a", "c"],
        "a failed set adds nothing"
    );
    // The connection that saw the error is still usable.
    assert_eq!(store.tags("tok").unwrap(), ["a", "c"]);
}

#[test]
fn tokens_survive_a_restart() {
    let db = PgDb::create();
    let first = TestServer::with_store(|_| {}, Box::new(db.store()));
    let mut c = first.client();
    c.send("register b,a lasting");
    c.ping();
    first.stop();
    let second = TestServer::with_store(|_| {}, Box::new(db.store()));
    let mut c = second.client();
    c.send("tags lasting");
    c.expect("tags lasting a,b");
    let mut ws = ws_connect(second.http, "lasting");
    ws_send(&mut ws, r#"{"command":"subscribe","tags":["a"]}"#);
    assert_eq!(
        ws_text(&mut ws),
        r#"{"success":true,"command":"subscribe"}"#
    );
}

#[test]
fn a_burst_of_1000_websocket_connects_all_succeed() {
    let db = PgDb::create();
    let server = TestServer::with_store(|_| {}, Box::new(db.store()));
    let mut admin = server.client();
    admin.send("register burst tok");
    admin.ping();
    let threads = 50;
    let per_thread = 20;
    let start = Arc::new(Barrier::new(threads));
    let http = server.http;
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                // Keep every connection open until all are made: a real burst.
                (0..per_thread)
                    .map(|_| try_ws_connect(http, Some("tok"), None))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ok = 0;
    for w in workers {
        for r in w.join().unwrap() {
            match r {
                Ok(_) => ok += 1,
                Err(status) => panic!("a connect was refused with HTTP {status}"),
            }
        }
    }
    assert_eq!(ok, threads * per_thread);
}

#[test]
fn unreachable_at_start_names_the_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = mist::config::PgConfig {
        user: "postgres".into(),
        password: None,
        database: "postgres".into(),
        address: format!("127.0.0.1:{port}"),
    };
    let err = PgStore::open(&cfg).err().expect("nothing listens there");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );

    // The binary says so and exits with 1.
    let dir = std::env::temp_dir().join(format!("mist-pg-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("mist.conf");
    std::fs::write(
        &conf,
        format!(
            "tcp_listen_address 127.0.0.1:0\nhttp_listen_address 127.0.0.1:0\n\
             auth_store postgres\npg_address 127.0.0.1:{port}\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mist"))
        .args(["-d", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

/// PostgreSQL really stops and starts while mist runs: admin commands fail with a clear error,
/// new WebSockets get 503, open ones keep working, and mist heals when the database is back.
#[test]
fn survives_the_database_going_away_and_heals() {
    let cluster = Cluster::start();
    let server =
        TestServer::with_store(|_| {}, Box::new(PgStore::open(&cluster.config()).unwrap()));
    let mut admin = server.client();
    admin.send("register news tok");
    admin.ping();
    let mut open = ws_connect(server.http, "tok");
    ws_send(&mut open, r#"{"command":"subscribe","tags":["news"]}"#);
    assert_eq!(
        ws_text(&mut open),
        r#"{"success":true,"command":"subscribe"}"#
    );

    cluster.down();

    admin.send("register news other");
    let reply = admin.line();
    assert!(
        reply.starts_with("error token store unavailable: "),
        "{reply}"
    );
    admin.send("tags tok");
    assert!(admin.line().starts_with("error token store unavailable: "));
    assert_eq!(
        try_ws_connect(server.http, Some("tok"), None).err(),
        Some(503)
    );
    // The open WebSocket still gets messages and answers commands that need no database.
    let mut publisher = server.client();
    publisher.send("publish news still here");
    publisher.ping();
    assert_eq!(
        ws_sync(&mut open),
        [r#"{"keys":["news"],"data":"still here"}"#]
    );
    // Subscribing needs the token check: it fails cleanly and the connection stays.
    ws_send(&mut open, r#"{"command":"subscribe","tags":["news","x"]}"#);
    let reply = ws_text(&mut open);
    assert!(
        reply.starts_with(
            r#"{"success":false,"command":"subscribe","error":"token store unavailable: "#
        ),
        "{reply}"
    );

    cluster.up();

    // The first command after the database is back works: dead pooled connections are
    // replaced without an error reaching the client.
    admin.send("register news other");
    admin.ping();
    admin.send("tags other");
    admin.expect("tags other news");
    let mut again = ws_connect(server.http, "other");
    ws_send(&mut again, r#"{"command":"subscribe","tags":["news"]}"#);
    assert_eq!(
        ws_text(&mut again),
        r#"{"success":true,"command":"subscribe"}"#
    );
}
