//! The monitoring listener: `/healthz`, `/varz`, `/connz`, `/subsz`, `/metrics`, on a port of
//! its own with a thread budget of its own.

use crate::capacity::{Daemon, get, metric};
use crate::http_limits::answered;
use crate::pgsupport::Cluster;
use crate::support::http::{http, plain, raw_connect, read_response};
use crate::support::process::Proc;
use crate::support::{
    LineClient, TIMEOUT, TestServer, connect_from, wait_until, ws_connect, ws_send, ws_sync,
};
use mist::{MAX_MONITOR_CONNECTIONS, MAX_MONITOR_CONNECTIONS_PER_ADDRESS, MONITOR_HEAD_TIMEOUT};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
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
    // Found by its address: connection ids follow the order in which the server took the
    // connections, which need not be the order in which clients connected.
    let me = stalled.stream.local_addr().unwrap().to_string();
    let id = json(m, "/connz?sort=age")["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["peer"] == me.as_str())
        .and_then(|c| c["id"].as_u64())
        .unwrap_or_else(|| panic!("{me} is not in /connz"));
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
        assert!(
            Instant::now() < deadline,
            "the stalled queue never filled (connection {id}): {}",
            json(m, "/connz?sort=age")
        );
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
    assert!(post.contains("\r\nallow: GET, HEAD\r\n"), "{post}");
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
    wait_until("/healthz 200", TIMEOUT, || get(m, "/healthz").0 == 200);
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
    let down = Instant::now();
    wait_until("/healthz 503", Duration::from_secs(2), || {
        get(m, "/healthz").0 == 503
    });
    let took = down.elapsed();
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
    wait_until("/healthz 200", Duration::from_secs(2), || {
        get(m, "/healthz").0 == 200
    });
}

// ---------------------------------------------------------------------------------------------
// The listener's own budget: connections in service, request heads, accept errors
// ---------------------------------------------------------------------------------------------

/// A response of the monitoring listener: plain text, never cached.
fn monitor_plain(status: &str, body: &str) -> String {
    plain(status, body, "cache-control: no-store\r\n")
}

/// `n` connections to the monitoring listener from `from`, each of which sent half a request
/// head and stalls.
fn stalled_monitor_heads(from: &str, monitor: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = connect_from(from.parse().unwrap(), monitor);
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0")
                .unwrap();
            s
        })
        .collect()
}

/// `GET /healthz` from the loopback address `from`: the status line and the body.
fn healthz_from(from: &str, monitor: SocketAddr) -> String {
    let mut s = connect_from(from.parse().unwrap(), monitor);
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {monitor}\r\n\r\n").as_bytes())
        .unwrap();
    read_response(&mut s)
}

/// The names of process `pid`'s threads (the kernel keeps the first 15 bytes of each).
fn thread_names(pid: libc::pid_t) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect()
}

/// Process `pid`'s threads: those of the monitoring listener, and all others but the HTTP
/// port's connection threads (the `/metrics` requests of the test start them, and one may
/// still be ending).
fn threads_of(pid: libc::pid_t) -> (usize, usize) {
    let names = thread_names(pid);
    let monitor = names
        .iter()
        .filter(|n| n.starts_with("mist-monitor") || n.starts_with("mist-accept-mon"))
        .count();
    // The HTTP port's connection threads come and go with the test's own `/metrics` requests;
    // until one has named itself it bears its accept thread's name, so both are left out.
    let others = names
        .iter()
        .filter(|n| !n.starts_with("mist-http ") && !n.starts_with("mist-accept-htt"))
        .count();
    (monitor, others)
}

/// The monitoring listener has exactly the threads it started with, and no other thread was
/// started (one may have ended: a line client's, say).
fn no_new_threads(pid: libc::pid_t, before: (usize, usize)) {
    let now = threads_of(pid);
    assert!(
        now.0 == before.0 && now.1 <= before.1,
        "threads {now:?}, before {before:?}: {:?}",
        thread_names(pid)
    );
}

/// Waits until the HTTP connections of the test's own `/metrics` requests are over: each holds
/// one of the server's `max_connections` slots until its thread ends, and this test's server
/// has two.
fn http_threads_gone(pid: libc::pid_t) {
    wait_until("the HTTP connections to end", TIMEOUT, || {
        let names = thread_names(pid);
        !names.iter().any(|n| n.starts_with("mist-http "))
            && names
                .iter()
                .filter(|n| n.starts_with("mist-accept-htt"))
                .count()
                == 1
    });
}

/// One series of the `/metrics` of the server whose HTTP port is `http`.
fn metric_of(http: SocketAddr, series: &str) -> u64 {
    let (status, text) = get(http, "/metrics");
    assert_eq!(status, 200, "{text}");
    metric(&text, series)
}

/// 200 monitoring connections that send half a request head and stall, first from one address,
/// then from fifty: the listener serves at most 4 from one address and 16 in all, on the
/// threads it started with, and answers every other connection at once, 429 or 503, without
/// waiting for its request. The contract for everyone else: a request from another address is
/// answered (200) while one address floods; while the whole budget is held it gets 503 at once;
/// never does it wait. Meanwhile clients of the line port connect, up to `max_connections`, and
/// are answered, and the process starts no thread.
#[test]
fn stalled_monitoring_connections_stay_within_the_listeners_budget() {
    mist::raise_fd_limit();
    let d = Daemon::start("monitor-flood", "max_connections 2\n");
    let mut client = LineClient::connect(d.tcp);
    client.ping();
    // Its workers and its accept thread, started with it (a thread bears its name once it has
    // run, which a busy machine may delay).
    wait_until("the monitoring threads to be named", TIMEOUT, || {
        threads_of(d.pid()).0 == MAX_MONITOR_CONNECTIONS + 1
    });
    let threads = threads_of(d.pid());
    let per_address = MAX_MONITOR_CONNECTIONS_PER_ADDRESS;
    let budget = MAX_MONITOR_CONNECTIONS;
    let in_service = || metric_of(d.http, "mist_monitor_connections");

    // One address: four in service, the other 196 refused at once.
    let flooded = Instant::now();
    let flood = stalled_monitor_heads("127.0.0.1", d.monitor, 200);
    let refused = answered(&flood, 200 - per_address);
    let too_many_here = monitor_plain(
        "429 Too Many Requests",
        "too many monitoring connections from this address\n",
    );
    assert!(refused.iter().all(|r| *r == too_many_here), "{refused:?}");
    if flooded.elapsed() < MONITOR_HEAD_TIMEOUT {
        assert_eq!(in_service(), per_address as u64);
    }
    no_new_threads(d.pid(), threads);
    client.ping();
    http_threads_gone(d.pid());
    assert_eq!(
        healthz_from("127.0.0.2", d.monitor),
        monitor_plain("200 OK", "ok\n")
    );
    drop(flood);
    wait_until("the stalled connections are given up", TIMEOUT, || {
        in_service() == 0
    });

    // Fifty addresses, four connections each: sixteen in service, every other one refused.
    let flooded = Instant::now();
    let flood: Vec<TcpStream> = (1..=50)
        .flat_map(|i| stalled_monitor_heads(&format!("127.0.1.{i}"), d.monitor, 4))
        .collect();
    let refused = answered(&flood, 200 - budget);
    let too_many = monitor_plain(
        "503 Service Unavailable",
        "too many monitoring connections\n",
    );
    assert!(refused.iter().all(|r| *r == too_many), "{refused:?}");
    no_new_threads(d.pid(), threads);
    http_threads_gone(d.pid());
    let mut second = LineClient::connect(d.tcp);
    second.ping();
    client.ping();
    let health = healthz_from("127.0.0.2", d.monitor);
    // Before the first stalled head could reach its deadline, every slot was still held.
    if flooded.elapsed() < MONITOR_HEAD_TIMEOUT {
        assert_eq!(in_service(), budget as u64);
        assert_eq!(health, too_many);
    } else {
        assert!(
            health == too_many || health.starts_with("HTTP/1.1 200 OK\r\n"),
            "{health}"
        );
    }

    let refused = |reason: &str| {
        metric_of(
            d.http,
            &format!("mist_monitor_connections_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("address"), 196);
    assert_eq!(refused("server"), 184 + u64::from(health == too_many));
    // No monitoring connection took a client's slot.
    assert_eq!(metric_of(d.http, "mist_connections_refused_total"), 0);
}

/// A script's requests one after another from one address never meet their own slots: a slot
/// is given back once its answer is written, before the connection closes.
#[test]
fn requests_one_after_another_are_all_answered() {
    let (_s, m) = server(|_| {});
    for i in 0..100 {
        let (status, body) = get(m, "/healthz");
        assert_eq!((status, body.as_str()), (200, "ok\n"), "request {i}");
    }
}

/// A request head longer than the limit gets 431 and its connection is closed; so does one with
/// too many header fields. The listener reads no more than `MAX_HEAD` bytes of it.
#[test]
fn a_request_head_over_the_limit_gets_431() {
    let (_s, m) = server(|_| {});
    let mut long = format!("GET /varz HTTP/1.1\r\nHost: {m}\r\nX-Long: ").into_bytes();
    long.resize(mist::MAX_HEAD + 1000, b'a');
    let mut c = raw_connect(m);
    c.write_all(&long).unwrap();
    assert_eq!(
        read_response(&mut c),
        monitor_plain(
            "431 Request Header Fields Too Large",
            "request head larger than 16384 bytes\n"
        )
    );
    let mut many = format!("GET /varz HTTP/1.1\r\nHost: {m}\r\n");
    for i in 0..=mist::MAX_HEADERS {
        many.push_str(&format!("X-Hop-{i}: 10.0.0.1\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(
        http(m, many.as_bytes()),
        monitor_plain(
            "431 Request Header Fields Too Large",
            "too many headers (more than 128)\n"
        )
    );
    assert_eq!(get(m, "/healthz"), (200, "ok\n".to_string()));
}

/// A connection that sends nothing is answered 408 and closed once the head deadline has
/// passed, and its slot is given back. The server runs as a process of its own, so that the
/// time measured is its own, not shared with the servers of other tests in this process.
#[test]
fn a_silent_monitoring_connection_is_dropped_at_the_head_deadline() {
    let d = Daemon::start("monitor-silent", "");
    let mut silent = raw_connect(d.monitor);
    silent
        .set_read_timeout(Some(MONITOR_HEAD_TIMEOUT + TIMEOUT))
        .unwrap();
    let start = Instant::now();
    let answer = read_response(&mut silent);
    let took = start.elapsed();
    assert_eq!(
        answer,
        monitor_plain("408 Request Timeout", "request head not complete in time\n")
    );
    assert!(
        took >= MONITOR_HEAD_TIMEOUT - Duration::from_millis(100),
        "{took:?}"
    );
    assert!(
        took < MONITOR_HEAD_TIMEOUT + Duration::from_secs(3),
        "{took:?}"
    );
    wait_until("its slot is given back", TIMEOUT, || {
        metric_of(d.http, "mist_monitor_connections") == 0
    });
}

/// `HEAD` gets the head of the `GET` answer, its length included, and no body.
#[test]
fn head_gets_the_length_without_the_body() {
    let (_s, m) = server(|_| {});
    assert_eq!(
        http(
            m,
            format!("HEAD /healthz HTTP/1.1\r\nHost: {m}\r\n\r\n").as_bytes()
        ),
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\
         content-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\n\r\n"
    );
}

/// The lowest descriptor number free in process `pid`: with the open-files limit set to it,
/// the process cannot open another.
fn lowest_free_fd(pid: libc::pid_t) -> u64 {
    let open: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|fd| !open.contains(fd)).unwrap()
}

/// Sets the soft open-files limit of process `pid`; returns the one it had.
fn set_open_files(pid: libc::pid_t, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with a null new limit only writes the current one into `old`.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit reads `new` and writes nothing (old is null).
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

/// Out of descriptors, `accept` fails for as long as that lasts: the monitoring listener logs
/// the run of failures once, keeps trying, answers the connection that waited once descriptors
/// are back, and says that it accepts again.
#[test]
fn the_monitoring_listener_keeps_listening_through_accept_errors() {
    let d = Daemon::start("monitor-emfile", "log_level DEBUG\n");
    let was = set_open_files(d.pid(), lowest_free_fd(d.pid()));
    // Linux takes the descriptor for an accepted connection when `accept` is called, before it
    // blocks: if the listener's `accept` was already waiting, this connection is served at
    // once and the next `accept` fails; otherwise this one waits. Either way a run of failures
    // begins now.
    let mut waiting = raw_connect(d.monitor);
    waiting
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", d.monitor).as_bytes())
        .unwrap();
    let mut log = Proc::lines_until(&d.proc.stderr, |l| {
        l.contains("monitoring listener: accept failed: ")
    });
    let first = log.last().unwrap().clone();
    assert!(
        first.contains("[ERROR]") && first.contains("(os error 24)"),
        "{first}"
    );
    // Retries go to DEBUG: three of them, then descriptors are back.
    for _ in 0..3 {
        log.extend(Proc::lines_until(&d.proc.stderr, |l| {
            l.contains("monitoring listener: accept failed again: ")
        }));
    }
    set_open_files(d.pid(), was);
    assert_eq!(read_response(&mut waiting), monitor_plain("200 OK", "ok\n"));
    assert_eq!(get(d.monitor, "/healthz"), (200, "ok\n".to_string()));
    log.extend(Proc::lines_until(&d.proc.stderr, |l| {
        l.contains("monitoring listener: accepting again after ")
    }));
    let attempts: u64 = log
        .last()
        .unwrap()
        .split("accepting again after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap();
    assert!(attempts >= 4, "{log:?}");
    // One error for the whole run. (The other listeners may have had runs of their own, if
    // their `accept` was called while descriptors were out.)
    let loud = log
        .iter()
        .filter(|l| l.contains("monitoring listener"))
        .filter(|l| l.contains("[ERROR]") || l.contains("[WARN]"))
        .count();
    assert_eq!(loud, 1, "{log:?}");
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
    wait_until("200 subscriptions", TIMEOUT, || {
        json(m, "/varz")["subscriptions"] == 200
    });
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
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
        "{head}"
    );
    assert!(!head.contains("transfer-encoding"), "{head}");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["total"], 201);
    drop(clients);
}
