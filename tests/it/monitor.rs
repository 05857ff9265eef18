//! The monitoring listener: `/healthz`, `/varz`, `/connz`, `/subsz`, `/metrics`, on a port of
//! its own with threads of its own.

use crate::capacity::{get, metric};
use crate::pgsupport::Cluster;
use crate::support::{LineClient, TIMEOUT, TestServer, ws_connect, ws_send, ws_sync};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// A server with the monitoring listener on an ephemeral port.
pub(crate) fn server(f: impl FnOnce(&mut mist::Config)) -> (TestServer, SocketAddr) {
    let s = TestServer::with(|c| {
        c.monitor_listen_address = Some("127.0.0.1:0".into());
        f(c);
    });
    let m = s.monitor.expect("the monitoring listener runs");
    (s, m)
}

/// `GET path`, expecting 200 and JSON.
pub(crate) fn json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// A subscriber that never reads, with deliveries piling up in its queue: publishes until
/// the server says its queue holds something (the socket buffers are full). Returns it, its
/// publisher (kept open, so the set of connections is known) and its id.
pub(crate) fn stalled_subscriber(s: &TestServer, m: SocketAddr) -> (TcpStream, LineClient, u64) {
    let mut stalled = LineClient::connect(s.tcp);
    stalled.send("subscribe slow");
    stalled.ping();
    let id = json(m, "/connz?sort=age")["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .max()
        .unwrap();
    let mut publisher = s.client();
    let data = "x".repeat(60_000);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        for _ in 0..20 {
            publisher.send(&format!("publish slow {data}"));
        }
        publisher.ping();
        let top = &json(m, "/connz?limit=1")["connections"][0];
        if top["id"] == id && top["queued_bytes"].as_u64() > Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "the stalled queue never filled");
    }
    (stalled.stream, publisher, id)
}

#[test]
fn connz_shows_each_connection_and_finds_the_slow_one() {
    let (s, m) = server(|c| c.client_queue_bytes = 4 << 20);
    let mut a = s.client();
    a.send("subscribe b,a");
    a.send("subscribe c");
    a.ping();
    a.send("register feed secret-token-1");
    a.ping();
    let mut ws = ws_connect(s.http, "secret-token-1");
    ws_send(&mut ws, r#"{"command":"subscribe","tags":["feed"]}"#);
    assert_eq!(ws_sync(&mut ws).len(), 1);
    let (_stalled, _publisher, slow_id) = stalled_subscriber(&s, m);

    let all = json(m, "/connz?subs=1");
    // `a`, the WebSocket, the stalled one and its publisher.
    assert_eq!(all["total"], 4, "{all}");
    assert_eq!(all["sort"], "queued_bytes");
    let conns = all["connections"].as_array().unwrap();
    assert_eq!(conns[0]["id"], slow_id, "the slow one first: {all}");
    assert_eq!(conns[0]["writer_running"], true);
    assert!(conns[0]["queued_messages"].as_u64() > Some(0));
    assert!(conns[0]["delivered"].as_u64() > Some(0));
    let by_peer = |port: u16| {
        conns
            .iter()
            .find(|c| c["peer"] == format!("127.0.0.1:{port}"))
            .unwrap_or_else(|| panic!("peer port {port} in {all}"))
    };
    let ca = by_peer(a.stream.local_addr().unwrap().port());
    assert_eq!(ca["transport"], "tcp");
    assert_eq!(ca["subscriptions"], 2);
    assert_eq!(
        ca["subscription_sets"],
        serde_json::json!([["a", "b"], ["c"]])
    );
    assert_eq!(ca["queued_bytes"], 0);
    assert_eq!(ca["writer_running"], false);
    let cw = by_peer(ws.get_ref().local_addr().unwrap().port());
    assert_eq!(cw["transport"], "websocket");
    assert_eq!(cw["subscription_sets"], serde_json::json!([["feed"]]));
    assert!(cw["connected_since"].as_str().unwrap().ends_with('Z'));

    // Sorting and limits.
    let by_subs = json(m, "/connz?sort=subscriptions&limit=1");
    assert_eq!(
        (by_subs["shown"].clone(), by_subs["total"].clone()),
        (1.into(), 4.into())
    );
    assert_eq!(by_subs["connections"][0]["subscriptions"], 2);
    assert!(by_subs["connections"][0].get("subscription_sets").is_none());
    let oldest = json(m, "/connz?sort=age&limit=1");
    assert_eq!(oldest["connections"][0]["peer"], ca["peer"]);

    // Drops show once the stalled queue is over its bytes.
    let mut publisher = s.client();
    let data = "y".repeat(100_000);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        for _ in 0..50 {
            publisher.send(&format!("publish slow {data}"));
        }
        publisher.ping();
        let top = &json(m, "/connz?sort=dropped&limit=1")["connections"][0];
        if top["dropped"].as_u64() > Some(0) {
            assert_eq!(top["id"], slow_id);
            break;
        }
        assert!(Instant::now() < deadline, "nothing was dropped");
    }

    // No answer carries a token or message data.
    for path in ["/connz?subs=1", "/varz", "/subsz", "/metrics", "/healthz"] {
        let (_, body) = get(m, path);
        assert!(!body.contains("secret-token-1"), "{path}: {body}");
        assert!(!body.contains("xxxx") && !body.contains("yyyy"), "{path}");
    }
}

#[test]
fn varz_subsz_and_metrics() {
    let (s, m) = server(|c| c.max_connections = 77);
    let mut clients: Vec<LineClient> = (0..3).map(|_| s.client()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send("subscribe news");
        if i > 0 {
            c.send("subscribe sport,news");
        }
        if i == 2 {
            c.send("subscribe z");
        }
        c.ping();
    }
    clients[0].send("publish news hello");
    // Every subscriber has read its copy, so no queue holds it any more.
    for c in &mut clients {
        assert_eq!(c.sync(), ["publish news hello"]);
    }

    let v = json(m, "/varz");
    assert_eq!(v["server"], "mist");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["listen"]["tcp"], s.tcp.to_string());
    assert_eq!(v["listen"]["http"], s.http.to_string());
    assert_eq!(v["listen"]["monitor"], m.to_string());
    assert_eq!(v["limits"]["max_connections"], 77);
    assert_eq!(v["connections"], 3);
    assert_eq!(v["subscriptions"], 6);
    assert_eq!(v["counters"]["messages_published_total"], 1);
    assert_eq!(v["counters"]["deliveries_total"], 3);
    assert_eq!(v["counters"]["connections_tcp"], 3);
    assert_eq!(v["queued_bytes"], 0);
    assert!(
        v["node_name"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", s.tcp.port()))
    );
    assert!(v["start"].as_str().unwrap().ends_with('Z'));

    let subs = json(m, "/subsz?limit=2");
    assert_eq!(
        subs,
        serde_json::json!({
            "subscriptions": 6, "distinct_sets": 3, "shown": 2,
            "sets": [
                {"tags": ["news"], "subscribers": 3},
                {"tags": ["news", "sport"], "subscribers": 2},
            ],
        })
    );

    let (status, text) = get(m, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "mist_connections{transport=\"tcp\"}"), 3);
    assert_eq!(metric(&text, "mist_deliveries_total"), 3);
}

#[test]
fn bad_requests_get_a_status_and_a_reason() {
    let (_s, m) = server(|_| {});
    for (path, status, reason) in [
        (
            "/connz?sort=name",
            400,
            "sort must be queued_bytes, dropped, subscriptions or age, not 'name'\n",
        ),
        (
            "/connz?limit=0",
            400,
            "limit must be a whole number from 1 to 1000000, not '0'\n",
        ),
        (
            "/connz?limit=1x",
            400,
            "limit must be a whole number from 1 to 1000000, not '1x'\n",
        ),
        ("/connz?subs=maybe", 400, "subs must be 1 or 0\n"),
        (
            "/subsz?sort=age",
            400,
            "unknown parameter 'sort': this endpoint takes limit\n",
        ),
        (
            "/varz?x=1",
            400,
            "unknown parameter 'x': this endpoint takes none\n",
        ),
        (
            "/nope",
            404,
            "not found: /healthz, /varz, /connz, /subsz and /metrics are served here\n",
        ),
    ] {
        assert_eq!(get(m, path), (status, reason.to_string()), "{path}");
    }
    let raw = |request: &str| -> String {
        let mut s = TcpStream::connect(m).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let post = raw(
        "POST /varz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    // A name other than localhost from a loopback peer: a page rebinding a name to 127.0.0.1.
    let rebound =
        raw("GET /connz HTTP/1.1\r\nHost: evil.example:9445\r\nConnection: close\r\n\r\n");
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    assert!(!rebound.contains("connections"), "{rebound}");
    let local = raw("GET /healthz HTTP/1.1\r\nHost: localhost:9445\r\nConnection: close\r\n\r\n");
    assert!(
        local.starts_with("HTTP/1.1 200") && local.ends_with("ok\n"),
        "{local}"
    );
}

#[test]
fn healthz_reports_a_full_server() {
    let (s, m) = server(|c| c.max_connections = 1);
    assert_eq!(get(m, "/healthz"), (200, "ok\n".to_string()));
    let mut c = s.client();
    c.ping();
    assert_eq!(
        get(m, "/healthz"),
        (
            503,
            "not accepting clients: max_connections (1) reached\n".to_string()
        )
    );
    drop(c);
    poll(TIMEOUT, || get(m, "/healthz").0 == 200);
}

/// Calls `f` until it returns true; fails after `within`. Returns how long it took.
fn poll(within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "not within {within:?}");
        thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// `/healthz` follows the PostgreSQL token store: 503 within 2 s of the server going away,
/// 200 again once it is back.
#[test]
fn healthz_follows_the_postgres_token_store() {
    let cluster = Cluster::start();
    let store = mist::PgStore::open(&cluster.config()).expect("store");
    let pg = cluster.config();
    let s = TestServer::with_store(
        |c| {
            c.monitor_listen_address = Some("127.0.0.1:0".into());
            c.auth_store = mist::config::AuthStore::Postgres;
            c.pg = pg;
        },
        Box::new(store),
    );
    let m = s.monitor.unwrap();
    assert_eq!(get(m, "/healthz"), (200, "ok\n".to_string()));

    cluster.down();
    let took = poll(Duration::from_secs(2), || get(m, "/healthz").0 == 503);
    let (_, reason) = get(m, "/healthz");
    assert!(
        reason.starts_with(&format!(
            "token store: PostgreSQL at 127.0.0.1:{} unreachable",
            cluster.port
        )),
        "{reason}"
    );
    eprintln!("healthz turned 503 {took:?} after PostgreSQL stopped");
    // Clients that are connected go on meanwhile.
    let mut c = s.client();
    c.ping();

    cluster.up();
    poll(Duration::from_secs(2), || get(m, "/healthz").0 == 200);
}

/// 200 monitoring connections that send half a request and stall take no client slot and do
/// not starve anybody: clients connect and are answered, and the monitoring listener itself
/// still answers, also after more than its write timeout without a new connection.
#[test]
fn slow_monitoring_connections_take_no_client_slot() {
    let (s, m) = server(|c| c.max_connections = 2);
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut c = TcpStream::connect(m).expect("connect to the monitoring listener");
            c.write_all(b"GET /connz HTTP/1.1\r\nHost: 127.0").unwrap();
            c
        })
        .collect();
    let mut tcp = s.client();
    tcp.ping();
    let mut other = s.client();
    other.ping();
    assert_eq!(
        get(m, "/healthz").0,
        503,
        "two clients fill max_connections 2"
    );
    assert_eq!(get(m, "/varz").0, 200);
    drop(other);
    tcp.ping();

    // Completing a stalled request gets it answered.
    let c = &mut slow[0];
    c.write_all(b".0.1\r\nConnection: close\r\n\r\n").unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Still listening after a quiet spell longer than the write timeout (a timeout on the
    // listening socket would have ended tiny_http's accept loop).
    thread::sleep(Duration::from_secs(6));
    assert_eq!(get(m, "/varz").0, 200);
    let text = s.context().metrics().render();
    assert_eq!(metric(&text, "mist_connections_refused_total"), 0);
}

/// A large answer comes with its length, not chunked: a client that reads to the end of the
/// connection (scripts, `mist top`) gets plain JSON.
#[test]
fn a_large_connz_comes_with_its_length() {
    let (s, m) = server(|_| {});
    let clients: Vec<LineClient> = (0..200)
        .map(|i| {
            let mut c = s.client();
            c.send(&format!(
                "subscribe some-rather-long-tag-name-{i},another-tag"
            ));
            c
        })
        .collect();
    let mut last = s.client();
    last.ping();
    poll(TIMEOUT, || json(m, "/varz")["subscriptions"] == 200);
    let mut c = TcpStream::connect(m).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.write_all(
        format!("GET /connz?subs=1 HTTP/1.1\r\nHost: {m}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(body.len() > 32 * 1024, "{} bytes", body.len());
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["total"], 201);
    drop(clients);
}
