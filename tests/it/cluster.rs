//! Several nodes as one mist (`cluster postgres`): three real `mist -d` processes sharing one
//! PostgreSQL database (a fresh one per test, so parallel tests never hear each other), or a
//! throwaway PostgreSQL cluster that a test stops and starts.
//!
//! Barriers: `ping`/`pong` for what a node does locally; for what crosses the bus, a marker
//! message published after the others by the same connection (per-publisher order makes it
//! arrive last), and `/metrics` or `pg_stat_activity` polled with a deadline for state that has
//! no reply to wait for.

use crate::pgsupport::{Cluster, PgDb};
use crate::support::http::scrape;
use crate::support::process::{Proc, config_file, mist};
use crate::support::{LineClient, TIMEOUT, wait_until, ws_connect, ws_send, ws_sync, ws_text};
use mist::config::PgConfig;
use std::io::Write;
use std::net::TcpStream;
use std::thread;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

/// A `mist -d` node of a cluster, on ports of its own choosing.
struct Node {
    name: String,
    proc: Proc,
}

fn pg_conf(pg: &PgConfig) -> String {
    format!(
        "auth_store postgres\ncluster postgres\npg_address {}\npg_user {}\npg_database {}\n",
        pg.address, pg.user, pg.database
    )
}

impl Node {
    /// Starts a node named `name` on the database of `pg`, with `extra` config lines, and
    /// waits until it listens (it joined the bus before that).
    fn start(name: &str, pg: &PgConfig, extra: &str) -> Node {
        let conf = format!("node_name {name}\n{}{extra}", pg_conf(pg));
        Node {
            name: name.to_string(),
            proc: Proc::server_with(name, &conf),
        }
    }

    fn client(&self) -> LineClient {
        LineClient::connect(self.proc.tcp())
    }

    fn http(&self) -> std::net::SocketAddr {
        self.proc.http()
    }

    /// A line client subscribed to each of `subs` (confirmed by `ping`).
    fn subscriber(&self, subs: &[&str]) -> LineClient {
        let mut c = self.client();
        for s in subs {
            c.send(&format!("subscribe {s}"));
        }
        c.ping();
        c
    }

    /// The whole `/metrics` text.
    fn metrics(&self) -> String {
        scrape(self.http())
    }

    /// The value of one series of the bus, by its name and extra labels (`,link="send"`).
    fn bus(&self, name: &str, labels: &str) -> f64 {
        let series = format!("{name}{{node=\"{}\"{labels}}} ", self.name);
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    }

    /// Polls `/metrics` until `cond` holds for the series; fails the test after [`TIMEOUT`].
    fn wait_bus(&self, name: &str, labels: &str, what: &str, cond: impl Fn(f64) -> bool) {
        wait_until(what, TIMEOUT, || cond(self.bus(name, labels)));
    }

    /// Reads the log until a line contains `what`; returns that line.
    fn wait_log(&mut self, what: &str) -> String {
        self.proc.wait_log(what)
    }

    /// Stops the node with SIGTERM; returns its whole log.
    fn stop(self) -> String {
        self.proc.stop()
    }
}

/// Three nodes on one fresh database.
fn three(test: &str) -> (PgDb, [Node; 3]) {
    let db = PgDb::create();
    let nodes = ["a", "b", "c"].map(|n| Node::start(&format!("{test}-{n}"), &db.config, ""));
    (db, nodes)
}

/// Reads lines until one equals `last`; returns those before it.
fn read_until(c: &mut LineClient, last: &[u8]) -> Vec<Vec<u8>> {
    let mut before = Vec::new();
    loop {
        let l = c.line_bytes();
        if l == last {
            return before;
        }
        before.push(l);
    }
}

/// The delivery line of a message.
fn line(tags: &str, data: &[u8]) -> Vec<u8> {
    let mut l = format!("publish {tags} ").into_bytes();
    l.extend_from_slice(data);
    l
}

/// Sends `publish TAGS DATA` for raw data.
fn publish(c: &mut LineClient, tags: &str, data: &[u8]) {
    let mut l = line(tags, data);
    l.push(b'\n');
    c.send_raw(&l);
}

/// Awkward data: NUL, invalid UTF-8, the bus's escape byte, `\r` inside, every byte value but
/// a newline, and nothing at all.
fn awkward() -> Vec<Vec<u8>> {
    let every: Vec<u8> = (0..=255u8).filter(|&b| b != b'\n').collect();
    vec![
        b"plain text".to_vec(),
        b"nul\0in the middle\0".to_vec(),
        b"\xff\xfe not UTF-8 \xc3".to_vec(),
        b"escape \x10 byte \x1000 and %41".to_vec(),
        b"carriage\rreturn".to_vec(),
        "ünïcødé ✓ 🦀".as_bytes().to_vec(),
        every,
        Vec::new(),
    ]
}

#[test]
fn a_publish_reaches_every_node_once_and_byte_exact() {
    let (_db, [a, b, c]) = three("once");
    let mut token = a.client();
    token.send("register news browser-tok");
    token.ping();
    // On every node: one client with two overlapping subscriptions (it must still get each
    // message once), and one with another matching set.
    let mut subs: Vec<(String, LineClient)> = Vec::new();
    for n in [&a, &b, &c] {
        subs.push((n.name.clone(), n.subscriber(&["news", "eu,news"])));
        subs.push((n.name.clone(), n.subscriber(&["eu"])));
    }
    let mut ws = ws_connect(c.http(), "browser-tok");
    ws_send(&mut ws, r#"{"command":"subscribe","tags":["news"]}"#);
    assert_eq!(
        ws_text(&mut ws),
        r#"{"success":true,"command":"subscribe"}"#
    );

    let data = awkward();
    let mut publisher = a.client();
    for d in &data {
        publish(&mut publisher, "news,eu", d);
    }
    publisher.send("publish news,eu end-1");
    publisher.ping();
    let want: Vec<Vec<u8>> = data.iter().map(|d| line("eu,news", d)).collect();
    for (node, sub) in &mut subs {
        let got = read_until(sub, b"publish eu,news end-1");
        assert_eq!(got, want, "subscriber on {node}");
    }
    let mut frames = Vec::new();
    loop {
        let f = ws_text(&mut ws);
        if f == r#"{"keys":["eu","news"],"data":"end-1"}"# {
            break;
        }
        frames.push(f);
    }
    // Bytes that are not UTF-8 become U+FFFD in the JSON string.
    let want_frames: Vec<String> = data
        .iter()
        .map(|d| {
            let data = serde_json::to_string(&String::from_utf8_lossy(d)).unwrap();
            format!(r#"{{"keys":["eu","news"],"data":{data}}}"#)
        })
        .collect();
    assert_eq!(frames, want_frames);

    // A marker from another node: it was sent after that node received everything above, so
    // on every node (node a included, where a's own notifications come back from PostgreSQL
    // and must be ignored) anything delivered twice would come before it.
    let mut other = b.client();
    other.send("publish eu,news end-2");
    other.ping();
    for (node, sub) in &mut subs {
        assert_eq!(
            read_until(sub, b"publish eu,news end-2"),
            Vec::<Vec<u8>>::new(),
            "subscriber on {node} got something twice"
        );
        sub.ping();
    }
    assert_eq!(ws_text(&mut ws), r#"{"keys":["eu","news"],"data":"end-2"}"#);
    assert_eq!(ws_sync(&mut ws), Vec::<String>::new());
    // Each node sent what was published on it and received the others' (counted just after
    // they are delivered).
    let total = data.len() as f64 + 1.0;
    for (n, sent, received) in [(&a, total, 1.0), (&b, 1.0, total), (&c, 0.0, total + 1.0)] {
        assert_eq!(n.bus("mist_bus_messages_sent_total", ""), sent);
        n.wait_bus("mist_bus_messages_received_total", "", "the count", |v| {
            v == received
        });
    }
    assert!(a.metrics().contains(&format!(
        "mist_node_info{{node=\"{}\",cluster=\"postgres\"}} 1\n",
        a.name
    )));
}

#[test]
fn order_holds_over_10000_messages_with_large_ones_among_them() {
    let (db, [a, b, c]) = three("order");
    let mut subs = [&a, &b, &c].map(|n| n.subscriber(&["seq"]));
    // Five messages of the largest size a line may have (1 MiB), with every byte value but a
    // newline in them, among small ones.
    const LARGE: [usize; 5] = [7, 1000, 3333, 7777, 9999];
    let body = |i: usize| -> Vec<u8> {
        if LARGE.contains(&i) {
            let max = 1 << 20;
            let mut d = format!("{i:05} ").into_bytes();
            let room = max - "publish seq ".len() - d.len();
            d.extend((0..room).map(|k| match (k * 7 + i) % 256 {
                10 => b'\0',
                v => v as u8,
            }));
            d
        } else {
            format!("{i:05} small").into_bytes()
        }
    };
    let mut publisher = a.client();
    let writer = {
        let mut stream = publisher.stream.try_clone().unwrap();
        thread::spawn(move || {
            let mut out = Vec::new();
            for i in 0..10_000 {
                out.extend_from_slice(&line("seq", &body(i)));
                out.push(b'\n');
                if out.len() > 1 << 20 {
                    stream.write_all(&out).unwrap();
                    out.clear();
                }
            }
            out.extend_from_slice(b"publish seq end\nping\n");
            stream.write_all(&out).unwrap();
        })
    };
    for (i, sub) in subs.iter_mut().enumerate() {
        let got = read_until(sub, b"publish seq end");
        assert_eq!(got.len(), 10_000, "node {i}");
        for (k, l) in got.iter().enumerate() {
            if *l != line("seq", &body(k)) {
                panic!(
                    "node {i}: message {k} is not the one published {k}th: {:?}",
                    String::from_utf8_lossy(&l[..l.len().min(40)])
                );
            }
        }
    }
    writer.join().unwrap();
    publisher.expect("pong");
    // Nothing was lost on the way, and nothing is left in the database.
    for n in [&b, &c] {
        n.wait_bus("mist_bus_messages_received_total", "", "the count", |v| {
            v == 10_001.0
        });
        assert_eq!(n.bus("mist_bus_payloads_missed_total", ""), 0.0);
    }
    assert_eq!(a.bus("mist_bus_messages_dropped_total", ""), 0.0);
    let tables: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 2, "only the token tables");
}

/// The next frame that is not a ping or pong.
fn ws_next(ws: &mut tungstenite::WebSocket<TcpStream>) -> Message {
    loop {
        match ws.read().expect("a frame before the timeout") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

#[test]
fn tokens_hold_on_every_node_and_revocation_reaches_them_all() {
    let (_db, [a, b, c]) = three("tokens");
    let mut admin = a.client();
    admin.send("register news,sport tok");
    admin.ping();
    // Registered on a: usable on b and c at once.
    let mut on_b = ws_connect(b.http(), "tok");
    let mut on_c = ws_connect(c.http(), "tok");
    let mut keep_c = ws_connect(c.http(), "tok");
    for ws in [&mut on_b, &mut on_c, &mut keep_c] {
        ws_send(ws, r#"{"command":"subscribe","tags":["sport"]}"#);
        assert_eq!(ws_text(ws), r#"{"success":true,"command":"subscribe"}"#);
    }
    ws_send(&mut keep_c, r#"{"command":"subscribe","tags":["news"]}"#);
    assert_eq!(
        ws_text(&mut keep_c),
        r#"{"success":true,"command":"subscribe"}"#
    );
    let mut other = c.client();
    other.send("tags tok");
    other.expect("tags tok news,sport");

    // `unset` on a revokes the subscriptions on b and c.
    admin.send("unset sport tok");
    admin.ping();
    let notice =
        r#"{"success":true,"command":"unsubscribe","tags":["sport"],"reason":"access revoked"}"#;
    for ws in [&mut on_b, &mut on_c, &mut keep_c] {
        assert_eq!(ws_text(ws), notice);
    }
    let mut publisher = a.client();
    publisher.send("publish sport after-unset");
    publisher.send("publish news still-allowed");
    publisher.ping();
    assert_eq!(
        ws_text(&mut keep_c),
        r#"{"keys":["news"],"data":"still-allowed"}"#
    );
    for ws in [&mut on_b, &mut on_c] {
        assert_eq!(ws_sync(ws), Vec::<String>::new());
    }

    // `unregister` on a closes them on b and c with 1008.
    admin.send("unregister tok");
    admin.ping();
    for ws in [&mut on_b, &mut on_c, &mut keep_c] {
        match ws_next(ws) {
            Message::Close(Some(f)) => {
                assert_eq!(f.code, CloseCode::Policy);
                assert_eq!(f.reason.as_str(), "token revoked");
            }
            m => panic!("expected a close frame, got {m:?}"),
        }
    }
    assert_eq!(
        crate::support::try_ws_connect(c.http(), Some("tok"), None).err(),
        Some(401)
    );
    b.wait_bus(
        "mist_bus_token_changes_received_total",
        "",
        "the count",
        |v| v == 2.0,
    );
    assert_eq!(a.bus("mist_bus_token_changes_sent_total", ""), 2.0);
    // The token is in no log line, at any node.
    for n in [a, b, c] {
        let log = n.stop();
        assert!(!log.contains("tok\n") && !log.contains(" tok "), "{log}");
    }
}

/// The process id of a node's connection, by its `application_name`.
fn backend_pid(db: &mut postgres::Client, application_name: &str) -> i32 {
    let mut pid = None;
    wait_until(
        &format!("a connection named {application_name}"),
        TIMEOUT,
        || {
            pid = db
                .query_opt(
                    "SELECT pid FROM pg_stat_activity
                 WHERE application_name = $1 AND datname = current_database()",
                    &[&application_name],
                )
                .unwrap()
                .map(|r| r.get(0));
            pid.is_some()
        },
    );
    pid.unwrap()
}

fn terminate(db: &mut postgres::Client, pid: i32) {
    let done: bool = db
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap()
        .get(0);
    assert!(done, "terminate backend {pid}");
}

#[test]
fn a_node_heals_after_its_connections_are_terminated() {
    let (db, [a, mut b, _c]) = three("heal");
    let mut pg = db.client();
    let mut sub = b.subscriber(&["x"]);
    let mut publisher = a.client();

    let listen = backend_pid(&mut pg, &format!("mist-bus-listen {}", b.name));
    terminate(&mut pg, listen);
    b.wait_log("[WARN] bus: lost the listening connection");
    // Local service goes on meanwhile.
    let mut local = b.client();
    local.send("publish x local");
    local.ping();
    assert_eq!(sub.line(), "publish x local");
    b.wait_bus("mist_bus_listen_lost_total", "", "the loss counted", |v| {
        v == 1.0
    });
    let back = b.wait_log("cut off from the other nodes for");
    assert!(back.contains("[WARN]"), "{back}");
    b.wait_bus("mist_bus_up", ",link=\"listen\"", "listening again", |v| {
        v == 1.0
    });
    let new = backend_pid(&mut pg, &format!("mist-bus-listen {}", b.name));
    assert_ne!(new, listen);
    publisher.send("publish x after-listen");
    publisher.ping();
    assert_eq!(sub.line(), "publish x after-listen");

    // The sending connection heals the same way.
    let send = backend_pid(&mut pg, &format!("mist-bus-send {}", a.name));
    terminate(&mut pg, send);
    a.wait_bus(
        "mist_bus_send_lost_total",
        "",
        "the sending loss noticed",
        |v| v == 1.0,
    );
    a.wait_bus("mist_bus_up", ",link=\"send\"", "sending again", |v| {
        v == 1.0
    });
    publisher.send("publish x after-send");
    publisher.ping();
    assert_eq!(sub.line(), "publish x after-send");
    sub.ping();
}

/// A node cut off from the bus while tokens are revoked elsewhere revokes them once it hears
/// the bus again: node b logs in as a role of its own, which is refused new connections
/// while its LISTEN connection is terminated, so b stays cut off until the role may log in.
#[test]
fn revocations_made_while_a_node_was_cut_off_reach_it_when_it_is_back() {
    let db = PgDb::create();
    let mut pg = db.client();
    let role = format!("mist_cut_{}", std::process::id());
    pg.batch_execute(&format!("CREATE ROLE {role} LOGIN SUPERUSER"))
        .unwrap();
    let a = Node::start("cut-a", &db.config, "");
    let mut b_config = db.config.clone();
    b_config.user = role.clone();
    let mut b = Node::start("cut-b", &b_config, "");

    let mut admin = a.client();
    admin.send("register news,sport gone");
    admin.send("register news,sport narrowed");
    admin.ping();
    let mut gone = ws_connect(b.http(), "gone");
    let mut narrowed = ws_connect(b.http(), "narrowed");
    let subscribe = |ws: &mut crate::support::ws::Ws, tags: &str| {
        ws_send(
            ws,
            &format!(r#"{{"command":"subscribe","tags":["{tags}"]}}"#),
        );
        assert_eq!(ws_text(ws), r#"{"success":true,"command":"subscribe"}"#);
    };
    subscribe(&mut gone, "news");
    subscribe(&mut narrowed, "sport");
    subscribe(&mut narrowed, "news");

    pg.batch_execute(&format!("ALTER ROLE {role} NOLOGIN"))
        .unwrap();
    let listen = backend_pid(&mut pg, &format!("mist-bus-listen {}", b.name));
    terminate(&mut pg, listen);
    b.wait_log("[WARN] bus: lost the listening connection");
    admin.send("unregister gone");
    admin.send("unset sport narrowed");
    admin.ping();
    // Cut off, b has not heard: the WebSockets there still have what was revoked.
    for ws in [&mut gone, &mut narrowed] {
        assert_eq!(ws_sync(ws), Vec::<String>::new());
    }

    pg.batch_execute(&format!("ALTER ROLE {role} LOGIN"))
        .unwrap();
    b.wait_log("cut off from the other nodes for");
    match ws_next(&mut gone) {
        Message::Close(Some(f)) => {
            assert_eq!(f.code, CloseCode::Policy);
            assert_eq!(f.reason.as_str(), "token revoked");
        }
        m => panic!("expected a close frame, got {m:?}"),
    }
    assert_eq!(
        ws_text(&mut narrowed),
        r#"{"success":true,"command":"unsubscribe","tags":["sport"],"reason":"access revoked"}"#
    );
    let mut publisher = a.client();
    publisher.send("publish sport after");
    publisher.send("publish news still");
    publisher.ping();
    assert_eq!(
        ws_text(&mut narrowed),
        r#"{"keys":["news"],"data":"still"}"#
    );
    b.stop();
    a.stop();
    drop(pg);
    let mut pg = db.client();
    pg.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .unwrap();
}

#[test]
fn a_restarted_node_rejoins_under_a_new_id() {
    let (db, [a, b, c]) = three("restart");
    let id = |n: &mut Node| -> String {
        let l = n.wait_log("joined the cluster");
        l.split_once("(id ").unwrap().1[..16].to_string()
    };
    let mut b = b;
    let old_id = id(&mut b);
    let name = b.name.clone();
    b.stop();
    let mut b = Node::start(&name, &db.config, "");
    assert_ne!(id(&mut b), old_id, "a restarted node must get a new id");
    let mut on_a = a.subscriber(&["r"]);
    let mut on_b = b.subscriber(&["r"]);
    let mut on_c = c.subscriber(&["r"]);
    let mut from_b = b.client();
    from_b.send("publish r from-b");
    from_b.ping();
    let mut from_a = a.client();
    from_a.send("publish r from-a");
    from_a.ping();
    for s in [&mut on_a, &mut on_b, &mut on_c] {
        let mut got = vec![s.line(), s.line()];
        got.sort();
        assert_eq!(got, ["publish r from-a", "publish r from-b"]);
    }
    // Nothing twice: a last marker from c comes after anything else.
    let mut from_c = c.client();
    from_c.send("publish r end");
    from_c.ping();
    for s in [&mut on_a, &mut on_b, &mut on_c] {
        assert_eq!(s.line(), "publish r end");
        s.ping();
    }
}

/// PostgreSQL stops for real: publishers are not held up (their messages still reach local
/// subscribers, and the bus copies are dropped and counted), and the nodes heal when it is
/// back.
#[test]
fn publishers_are_not_held_up_while_postgresql_is_stopped() {
    let pg = Cluster::start();
    let cfg = pg.config();
    let mut a = Node::start("down-a", &cfg, "");
    let b = Node::start("down-b", &cfg, "");
    let mut local = a.subscriber(&["t"]);
    let mut remote = b.subscriber(&["t"]);
    let mut publisher = a.client();
    publisher.send("publish t before");
    publisher.ping();
    assert_eq!(local.line(), "publish t before");
    assert_eq!(remote.line(), "publish t before");

    pg.down();
    let n = 20_000;
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!("publish t while-down {i}\n"));
    }
    publisher.send_raw(batch.as_bytes());
    publisher.ping();
    for i in 0..n {
        assert_eq!(local.line(), format!("publish t while-down {i}"));
    }
    // Every bus copy was dropped (none waited for PostgreSQL to come back).
    a.wait_bus(
        "mist_bus_messages_dropped_total",
        "",
        "the drops counted",
        |v| v == f64::from(n),
    );
    a.wait_log("are not reaching the other nodes");
    a.wait_bus(
        "mist_bus_up",
        ",link=\"listen\"",
        "the listening loss",
        |v| v == 0.0,
    );
    // The other node serves its own clients meanwhile.
    let mut on_b = b.client();
    on_b.send("publish t local-on-b");
    on_b.ping();
    assert_eq!(remote.line(), "publish t local-on-b");

    pg.up();
    for n in [&a, &b] {
        for link in [",link=\"send\"", ",link=\"listen\""] {
            n.wait_bus("mist_bus_up", link, "the bus back up", |v| v == 1.0);
        }
    }
    a.wait_log("cut off from the other nodes for");
    publisher.send("publish t after");
    publisher.ping();
    assert_eq!(local.line(), "publish t after");
    assert_eq!(remote.line(), "publish t after");
    remote.ping();
    local.ping();
    // One episode of drops, logged once when it began and once when it ended.
    let log = a.stop();
    assert_eq!(
        log.matches("are not reaching the other nodes").count(),
        1,
        "{log}"
    );
    assert!(
        log.contains(&format!("{n} messages did not reach them")),
        "{log}"
    );
}

#[test]
fn cluster_postgres_needs_the_postgres_token_store() {
    let path = config_file(
        "cluster-memory",
        "tcp_listen_address 127.0.0.1:0\nhttp_listen_address 127.0.0.1:0\ncluster postgres\n",
    );
    let out = mist(&["-d", "--config", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("cluster postgres requires auth_store postgres"),
        "{out:?}"
    );
}

#[test]
fn postgresql_unreachable_at_start_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = PgConfig {
        user: "postgres".into(),
        password: None,
        database: "postgres".into(),
        address: format!("127.0.0.1:{port}"),
    };
    let path = config_file(
        "cluster-unreachable",
        &format!(
            "tcp_listen_address 127.0.0.1:0\nhttp_listen_address 127.0.0.1:0\n{}",
            pg_conf(&cfg)
        ),
    );
    let out = mist(&["-d", "--config", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("cannot use PostgreSQL at 127.0.0.1:{port}")),
        "{out:?}"
    );
}
