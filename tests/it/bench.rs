//! `mist bench` as users run it: the binary, against a server in this process, with `--json`.
//! Sizes are small so that the whole file takes a few seconds; every run is bounded by its own
//! `--timeout` and, from the outside, by [`RUN_LIMIT`].

use crate::support::TestServer;
use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long one benchmark run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Runs `mist bench ARGS` and returns its output.
fn run(args: &[String]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_mist"))
        .arg("bench")
        .args(args)
        .env_remove("MIST_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mist bench");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(RUN_LIMIT)
        .expect("mist bench ends within the limit")
        .expect("mist bench output")
}

/// Runs a benchmark against `server` with `--json` and returns the parsed object.
fn bench(server: &TestServer, args: &[&str]) -> Value {
    let mut all: Vec<String> = [
        "--addr",
        &server.tcp.to_string(),
        "--http-addr",
        &server.http.to_string(),
        "--json",
        "--timeout",
        "30",
        "--idle",
        "2",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    all.extend(args.iter().map(ToString::to_string));
    let out = run(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mist bench {args:?} failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON line on stdout: {stdout}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn num(r: &Value, key: &str) -> f64 {
    r[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is a number in {r}"))
}

fn count(r: &Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is a count in {r}"))
}

/// Latency percentiles exist and are ordered.
fn assert_latency(r: &Value) {
    assert_percentiles(r, "latency_us");
}

/// The percentiles under `key` exist and are ordered.
fn assert_percentiles(r: &Value, key: &str) {
    let l = &r[key];
    let p = |k: &str| l[k].as_f64().unwrap_or_else(|| panic!("{key}.{k} in {r}"));
    assert!(p("p50") > 0.0, "{r}");
    assert!(p("p50") <= p("p90"), "{r}");
    assert!(p("p90") <= p("p99"), "{r}");
    assert!(p("p99") <= p("p999"), "{r}");
    assert!(p("p999") <= p("max"), "{r}");
    assert!(p("mean") <= p("max"), "{r}");
}

/// Everything published reached every subscriber, once and in order.
fn assert_complete(r: &Value, expected: u64) {
    assert_eq!(r["end"], "complete", "{r}");
    assert_eq!(count(r, "expected_deliveries"), expected, "{r}");
    assert_eq!(count(r, "delivered"), expected, "{r}");
    for zero in [
        "lost",
        "seq_gaps",
        "out_of_order",
        "errors",
        "dropped_notified",
        "bad_payloads",
        "subs_closed",
        "publisher_failures",
    ] {
        assert_eq!(count(r, zero), 0, "{zero} in {r}");
    }
    assert!(num(r, "publish_rate") > 0.0, "{r}");
    assert!(num(r, "delivery_rate") > 0.0, "{r}");
    assert!(num(r, "delivery_secs") > 0.0, "{r}");
    assert_latency(r);
}

#[test]
fn fanout_over_tcp() {
    let server = TestServer::start();
    let r = bench(
        &server,
        &["--scenario", "fanout", "--subs", "5", "--msgs", "2000"],
    );
    assert_complete(&r, 5 * 2000);
    assert_eq!((count(&r, "subs"), count(&r, "pubs")), (5, 1));
    assert_eq!(
        (r["scenario"].as_str(), r["transport"].as_str()),
        (Some("fanout"), Some("tcp"))
    );
    assert_eq!(count(&r, "published"), 2000);
    // Without --server-pid there is nothing to say about the server.
    assert!(
        r["server_cpu_secs"].is_null() && r["server_rss_kb"].is_null(),
        "{r}"
    );
}

#[test]
fn fanout_over_websocket() {
    let server = TestServer::start();
    let r = bench(
        &server,
        &[
            "--transport",
            "ws",
            "--subs",
            "5",
            "--msgs",
            "2000",
            "--topic",
            "bench,ws",
            "--sub-tags",
            "ws",
        ],
    );
    assert_complete(&r, 5 * 2000);
    assert_eq!(r["transport"], "ws");
    assert_eq!(r["sub_tags"], "ws");
}

/// Stalled subscribers are reported apart: the others get everything, and the stalled ones,
/// read at the end, were told of their losses; `--compare` also runs without them.
#[test]
fn stalled_subscribers_with_comparison() {
    // 4 MiB per queue: the stalled subscriber's 12 MiB overflow it, while the readers have
    // 1,000 messages of room for scheduling delays. (At 64 messages, without publisher pacing,
    // readers on a loaded machine lost messages of the baseline run.)
    let server = TestServer::with(|c| c.client_queue_bytes = 4 << 20);
    let r = bench(
        &server,
        &[
            "--subs",
            "2",
            "--stalled",
            "1",
            "--msgs",
            "3000",
            "--size",
            "4096",
            "--compare",
        ],
    );
    assert_complete(&r, 2 * 3000);
    assert_eq!(count(&r, "stalled"), 1);
    assert_eq!(
        count(&r, "stalled_told"),
        1,
        "the stalled subscriber was told: {r}"
    );
    assert!(count(&r, "stalled_dropped_told") > 0);
    let base = &r["baseline"];
    assert_eq!(count(base, "stalled"), 0);
    assert_eq!(count(base, "lost"), 0);
    assert!(num(&r, "stall_publish_ratio") > 0.0);
    assert!(num(&r, "stall_delivery_ratio") > 0.0);
}

#[test]
fn fanin() {
    let server = TestServer::start();
    let r = bench(
        &server,
        &["--scenario", "fanin", "--pubs", "2", "--msgs", "2000"],
    );
    assert_complete(&r, 2 * 2000);
    assert_eq!((count(&r, "subs"), count(&r, "pubs")), (1, 2));
    assert_eq!(count(&r, "published"), 4000);
}

#[test]
fn paced_latency() {
    let server = TestServer::start();
    let r = bench(
        &server,
        &[
            "--scenario",
            "latency",
            "--subs",
            "5",
            "--rate",
            "2000",
            "--msgs",
            "400",
        ],
    );
    assert_complete(&r, 5 * 400);
    assert_eq!(num(&r, "rate"), 2000.0);
    // 400 messages at 2000/s are paced over at least 399 intervals of 0.5 ms.
    assert!(num(&r, "publish_secs") >= 0.19, "{r}");
    assert!(num(&r, "publish_rate") <= 2100.0, "{r}");
}

#[test]
fn index_with_noise_and_comparison() {
    let server = TestServer::start();
    let r = bench(
        &server,
        &[
            "--scenario",
            "index",
            "--noise-subs",
            "1000",
            "--noise-conns",
            "3",
            "--msgs",
            "2000",
            "--compare",
        ],
    );
    assert_complete(&r, 2000);
    assert_eq!(
        (count(&r, "noise_subs"), count(&r, "noise_conns")),
        (1000, 3)
    );
    let baseline = &r["baseline"];
    assert_complete(baseline, 2000);
    assert_eq!(count(baseline, "noise_subs"), 0);
    assert!(num(&r, "noise_ratio") > 0.0, "{r}");
}

#[test]
fn many_connections_with_server_stats() {
    let server = TestServer::start();
    // The server runs in this process, so this process's /proc entries are the server's.
    let pid = std::process::id().to_string();
    let r = bench(
        &server,
        &[
            "--scenario",
            "conns",
            "--subs",
            "50",
            "--rate",
            "100",
            "--msgs",
            "20",
            "--server-pid",
            &pid,
        ],
    );
    assert_complete(&r, 50 * 20);
    assert!(num(&r, "server_cpu_secs") >= 0.0, "{r}");
    assert!(count(&r, "server_rss_kb") > 0, "{r}");
    assert!(
        count(&r, "server_hwm_kb") >= count(&r, "server_rss_kb"),
        "{r}"
    );
    assert!(count(&r, "server_rss_base_kb") > 0, "{r}");
    assert!(num(&r, "client_cpu_secs") >= 0.0, "{r}");
}

#[test]
fn websocket_connects() {
    let server = TestServer::start();
    let r = bench(
        &server,
        &["--scenario", "connect", "--conns", "50", "--threads", "5"],
    );
    assert_eq!(r["end"], "complete", "{r}");
    assert_eq!(
        (count(&r, "connected"), count(&r, "failed")),
        (50, 0),
        "{r}"
    );
    assert!(r["first_failure"].is_null(), "{r}");
    assert!(num(&r, "connects_per_sec") > 0.0, "{r}");
    assert_latency(&r);
    // The TCP connect is a part of each handshake.
    assert_percentiles(&r, "tcp_connect_us");
    for p in ["p50", "p99", "max"] {
        assert!(
            r["tcp_connect_us"][p].as_f64() <= r["latency_us"][p].as_f64(),
            "{r}"
        );
    }
}

#[test]
fn websocket_token_registered_after_auth() {
    let server = TestServer::with(|c| c.admin_token = Some("s3cret".into()));
    let r = bench(
        &server,
        &[
            "--scenario",
            "connect",
            "--conns",
            "10",
            "--threads",
            "2",
            "--admin-token",
            "s3cret",
        ],
    );
    assert_eq!(
        (count(&r, "connected"), count(&r, "failed")),
        (10, 0),
        "{r}"
    );

    // Without the admin token the server refuses to register one: a set-up failure.
    let out = run(&[
        "--addr".into(),
        server.tcp.to_string(),
        "--http-addr".into(),
        server.http.to_string(),
        "--scenario".into(),
        "connect".into(),
        "--conns".into(),
        "1".into(),
        "--timeout".into(),
        "20".into(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("registering the WebSocket token"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_exit_with_2() {
    for (args, says) in [
        (&["--scenario", "nope"][..], "unknown --scenario"),
        (&["--transport", "udp"][..], "unknown --transport"),
        (
            &["--topic", "a", "--sub-tags", "b"][..],
            "--sub-tags must be among",
        ),
        (&["--size", "5"][..], "--size 5 is too small"),
        (&["--compare"][..], "--compare applies to"),
        (&["--timeout", "0"][..], "--timeout"),
    ] {
        let args: Vec<String> = args.iter().map(ToString::to_string).collect();
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn no_server_is_a_failure() {
    // Bind a port and free it again, so nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let out = run(&[
        "--addr".into(),
        addr.to_string(),
        "--subs".into(),
        "1".into(),
        "--timeout".into(),
        "10".into(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("subscriber 0"), "{stderr}");
}

#[test]
fn help_explains_every_flag() {
    let out = run(&["--help".into()]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("UTF-8 help");
    for flag in [
        "--scenario",
        "--transport",
        "--addr",
        "--http-addr",
        "--subs",
        "--pubs",
        "--msgs",
        "--size",
        "--rate",
        "--topic",
        "--sub-tags",
        "--noise-subs",
        "--noise-conns",
        "--compare",
        "--conns",
        "--threads",
        "--sub-threads",
        "--server-pid",
        "--admin-token",
        "--timeout",
        "--idle",
        "--json",
    ] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
    assert!(help.contains("Examples:"), "{help}");
}

#[test]
fn websocket_subscribers_answer_the_servers_pings() {
    // The server pings a quiet WebSocket every second and closes it when two seconds pass
    // without an answer: this 2.5-second run completes only if the subscribers answer.
    let server = TestServer::with(|c| c.ws_ping_interval = 1);
    let r = bench(
        &server,
        &[
            "--transport",
            "ws",
            "--scenario",
            "latency",
            "--subs",
            "2",
            "--rate",
            "100",
            "--msgs",
            "250",
        ],
    );
    assert_complete(&r, 2 * 250);
}
