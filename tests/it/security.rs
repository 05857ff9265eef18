//! Attacks from the same machine: a web page in the user's browser sending HTTP to the line
//! port or the HTTP port, token guessing on both ports, and what the log may say about them.
//!
//! Every loopback port is reachable by any page the user visits: the browser makes the
//! requests, the page only cannot read the answers. The whole 127.0.0.0/8 range is loopback,
//! so a second client address is 127.0.0.2.

use crate::support::http::{raw_connect, raw_upgrade_from};
use crate::support::process::Proc;
use crate::support::{LineClient, TestServer, connect_from, expect_error, get, try_ws_connect};
use mist::Context;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const HTTP_REFUSED: &str = "error HTTP is not spoken on this port\n";

/// The commands a page would smuggle in a request body: register a token for a tag, and
/// publish on it.
const SMUGGLED: &[u8] = b"register alerts evil\npublish alerts injected\n";

/// The second loopback address, for "another client".
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A line client connected from `from`.
fn line_client_from(from: IpAddr, addr: SocketAddr) -> LineClient {
    let stream = connect_from(from, addr);
    stream.set_nodelay(true).unwrap();
    LineClient {
        reader: BufReader::new(stream.try_clone().unwrap()),
        stream,
    }
}

/// Reads until the server closes. A reset is not a clean close: it fails the test, since it
/// can throw away what the server wrote last.
fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(e) => panic!(
            "the server did not close cleanly ({e}); got {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
}

/// A line-protocol server on the defaults (no `admin_token`: loopback is trusted), with a
/// subscriber to `alerts`.
struct Target {
    server: TestServer,
    sub: LineClient,
}

impl Target {
    fn new() -> Target {
        let server = TestServer::start();
        let mut sub = server.client();
        sub.send("subscribe alerts");
        sub.ping();
        Target { server, sub }
    }

    fn ctx(&self) -> &Arc<Context> {
        self.server.context()
    }

    /// Nothing the page smuggled happened: no token `evil`, nothing published to `alerts`,
    /// nothing published at all.
    fn assert_untouched(&mut self) {
        let mut admin = self.server.client();
        admin.send("tags evil");
        admin.expect("error unknown token");
        assert_eq!(
            self.sub.sync(),
            Vec::<String>::new(),
            "nothing was delivered"
        );
        assert_eq!(get(&self.ctx().metrics().messages_published), 0);
    }
}

/// A request as `python3 -c "...s.sendall(b'POST / HTTP/1.1\r\nHost: x\r\nOrigin: ...'"` of
/// the report sends it, with `method` and line ending `eol`, its body `SMUGGLED`.
fn request_head(method: &str, eol: &str) -> Vec<u8> {
    format!(
        "{method} / HTTP/1.1{eol}Host: x{eol}Origin: http://evil.example{eol}\
         Content-Length: {}{eol}{eol}",
        SMUGGLED.len()
    )
    .into_bytes()
}

/// Sends `bytes` at once on a new connection to the line port; the server must answer with
/// exactly the one error line and close.
fn send_expecting_refusal(t: &Target, bytes: &[u8]) -> TcpStream {
    let mut s = raw_connect(t.server.tcp);
    s.write_all(bytes).unwrap();
    assert_eq!(
        read_until_closed(&mut s),
        HTTP_REFUSED,
        "reply to {:?}",
        String::from_utf8_lossy(bytes)
    );
    s
}

// ---------------------------------------------------------------------------------------------
// 1. HTTP sent to the line port (cross-protocol requests)
// ---------------------------------------------------------------------------------------------

/// The report's exact request: a POST whose body registers a token and publishes, in one
/// packet. The server answers one error line and closes; the body never runs.
#[test]
fn a_browser_post_to_the_line_port_runs_nothing() {
    let mut t = Target::new();
    let mut req = request_head("POST", "\r\n");
    req.extend_from_slice(SMUGGLED);
    send_expecting_refusal(&t, &req);
    assert_eq!(get(&t.ctx().metrics().line_http_closed), 1);
    assert_eq!(get(&t.ctx().metrics().errors_sent), 1);
    t.assert_untouched();
}

/// The same with `GET`, with bare `\n` line endings, with a `Host:` line first (in any case),
/// and with every other method.
#[test]
fn every_request_line_and_a_leading_host_header_close_the_connection() {
    let mut t = Target::new();
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for method in [
        "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ] {
        for eol in ["\r\n", "\n"] {
            let mut req = request_head(method, eol);
            req.extend_from_slice(SMUGGLED);
            cases.push(req);
        }
    }
    for host in ["Host: x", "host: x", "HOST:x"] {
        for eol in ["\r\n", "\n"] {
            let mut req = format!("{host}{eol}{eol}").into_bytes();
            req.extend_from_slice(SMUGGLED);
            cases.push(req);
        }
    }
    for req in &cases {
        send_expecting_refusal(&t, req);
    }
    t.assert_untouched();
    assert_eq!(get(&t.ctx().metrics().line_http_closed), cases.len() as u64);
}

/// The body comes in a later packet than the head: the connection is already closed, so it
/// is never read.
#[test]
fn a_body_sent_after_the_head_is_never_read() {
    let mut t = Target::new();
    for eol in ["\r\n", "\n"] {
        let mut s = send_expecting_refusal(&t, &request_head("POST", eol));
        // The connection is gone: the write fails, or lands in a closed socket.
        let _ = s.write_all(SMUGGLED);
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest) {
            Ok(_) => assert_eq!(rest, b""),
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        }
    }
    t.assert_untouched();
}

/// What a browser really sends: a long head (cookies, user agent, accepted types) and the
/// form's body, more than the first read takes. The error line still arrives whole before a
/// clean close.
#[test]
fn a_long_browser_request_gets_the_error_line_and_a_clean_close() {
    let mut t = Target::new();
    let mut req = String::from("POST /submit HTTP/1.1\r\nHost: 127.0.0.1:1445\r\n");
    for i in 0..40 {
        req.push_str(&format!("X-Header-{i}: {}\r\n", "v".repeat(100)));
    }
    let body = SMUGGLED.repeat(2000);
    req.push_str(&format!(
        "Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(&body);
    let mut s = raw_connect(t.server.tcp);
    // The server stops reading, so the body may not all be taken: write from a thread.
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    // Up to the end of the error line; a reset after it is the socket closing with the
    // unread body, which the line is not lost to.
    while !got.ends_with(b"\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e} after {:?}", String::from_utf8_lossy(&got)),
        }
    }
    assert_eq!(String::from_utf8_lossy(&got), HTTP_REFUSED);
    match s.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "nothing after the error line"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    drop(s);
    writer.join().unwrap();
    t.assert_untouched();
}

/// Commands before the HTTP line, in the same packet, are a client's commands like any
/// other and take effect; nothing after it does.
#[test]
fn lines_before_the_request_count_and_none_after_it() {
    let mut t = Target::new();
    let mut bytes = b"publish alerts before\n".to_vec();
    bytes.extend_from_slice(&request_head("POST", "\r\n"));
    bytes.extend_from_slice(SMUGGLED);
    send_expecting_refusal(&t, &bytes);
    assert_eq!(t.sub.sync(), ["publish alerts before"]);
    let mut admin = t.server.client();
    admin.send("tags evil");
    admin.expect("error unknown token");
    assert_eq!(get(&t.ctx().metrics().messages_published), 1);
}

/// Data that contains HTTP words is data: delivered exactly, and the connection goes on.
/// Words that only start like a method or a header are unknown commands, as always.
#[test]
fn http_words_inside_commands_are_untouched() {
    let mut t = Target::new();
    let mut c = t.server.client();
    for data in [
        "POST / HTTP/1.1",
        "Host: evil.example",
        "GET /",
        "x Host: y POST z",
    ] {
        c.send(&format!("publish alerts {data}"));
        c.ping();
        assert_eq!(t.sub.sync(), [format!("publish alerts {data}")]);
    }
    expect_error(&mut c, b"POST\n", "error unknown command 'POST'");
    expect_error(
        &mut c,
        b"Hostname: x\n",
        "error unknown command 'Hostname:'",
    );
    expect_error(&mut c, b"get / HTTP/1.1\n", "error unknown command 'get'");
    assert_eq!(get(&t.ctx().metrics().line_http_closed), 0);
}

/// The HTTP port reached by a plain form POST (what a page can send without asking): every
/// path answers 405 and nothing runs; no answer carries CORS headers, so a page on another
/// site can read none of them, and a preflight for anything more gets 405 too.
#[test]
fn a_form_post_to_the_http_port_runs_nothing() {
    let mut t = Target::new();
    let mut admin = t.server.client();
    admin.send("register alerts tok");
    admin.ping();
    for path in [
        "/",
        "/subscribe/websocket",
        "/subscribe/websocket?x-auth-token=tok",
        "/ping",
        "/metrics",
    ] {
        for (method, extra) in [
            (
                "POST",
                "Content-Type: application/x-www-form-urlencoded\r\n\
                 Origin: http://evil.example\r\n",
            ),
            (
                "POST",
                "Content-Type: text/plain\r\nOrigin: http://evil.example\r\n\
                 Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Auth-Token: tok\r\n",
            ),
            (
                "OPTIONS",
                "Origin: http://evil.example\r\nAccess-Control-Request-Method: PUT\r\n",
            ),
        ] {
            let mut s = raw_connect(t.server.http);
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Length: {}\r\n\r\n",
                SMUGGLED.len()
            );
            s.write_all(req.as_bytes()).unwrap();
            s.write_all(SMUGGLED).unwrap();
            let resp = read_until_closed(&mut s);
            assert!(
                resp.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
                "{method} {path}: {resp}"
            );
            assert!(resp.contains("\r\nallow: GET\r\n"), "{resp}");
            assert!(
                !resp.to_ascii_lowercase().contains("access-control-"),
                "{resp}"
            );
        }
    }
    // A GET (an image tag, a link) gets its answer, without CORS headers either.
    let mut s = raw_connect(t.server.http);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\n\r\n")
        .unwrap();
    let resp = read_until_closed(&mut s);
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(
        !resp.to_ascii_lowercase().contains("access-control-"),
        "{resp}"
    );
    assert_eq!(get(&t.ctx().metrics().ws_connections), 0);
    t.assert_untouched();
}

// ---------------------------------------------------------------------------------------------
// 3. The brake on guessing
// ---------------------------------------------------------------------------------------------

const WRONG: &str = "error wrong admin token";
const LOCKED_OUT: &str =
    "error wrong admin token; too many from this address: auth refused for 30 s";

/// `error auth refused for N s: ...` with N from 1 to 30.
fn assert_refused_auth(line: &str) {
    let secs = line
        .strip_prefix("error auth refused for ")
        .and_then(|r| r.strip_suffix(" s: too many wrong admin tokens from this address"))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("not a refused auth: {line}"));
    assert!((1..=30).contains(&secs), "{line}");
}

/// Nine wrong admin tokens are errors; the tenth within ten seconds closes the connection,
/// and from then on `auth` from that address is refused (also with the right token) and
/// closes, while other commands go on and another address is not affected.
#[test]
fn wrong_admin_tokens_lock_the_address_out() {
    let server = TestServer::with(|c| c.admin_token = Some("s3cret".into()));
    let m = &server.context().metrics();
    let mut c = server.client();
    for i in 0..9 {
        expect_error(&mut c, format!("auth guess{i}\n").as_bytes(), WRONG);
    }
    c.send("auth guess9");
    c.expect(LOCKED_OUT);
    assert_eq!(c.read_to_end(), b"", "closed after the lockout");
    assert_eq!(get(&m.auth_failures), 10);
    assert_eq!(get(&m.auth_lockouts_admin), 1);

    // The right token, from the same address, on a new connection: refused unchecked.
    let mut again = server.client();
    again.send("publish a x");
    again.ping();
    again.send("auth s3cret");
    assert_refused_auth(&again.line());
    assert_eq!(again.read_to_end(), b"");
    assert_eq!(get(&m.auth_refused_admin), 1);
    assert_eq!(
        get(&m.auth_failures),
        10,
        "a refused attempt is not checked"
    );

    // Lines after a refused `auth`, even in the same packet, are not run.
    let mut packed = server.client();
    packed.send_raw(b"auth s3cret\nregister a tok\n");
    assert_refused_auth(&packed.line());
    assert_eq!(packed.read_to_end(), b"");
    assert!(server.context().tokens().tags("tok").is_err());

    // Without `auth`, the locked-out address keeps its other commands.
    let mut plain = server.client();
    plain.ping();
    expect_error(
        &mut plain,
        b"register a tok\n",
        "error admin commands need auth ADMIN_TOKEN first",
    );

    // Another address has its own budget.
    let mut other = line_client_from(OTHER, server.tcp);
    expect_error(&mut other, b"auth nope\n", WRONG);
    other.send("auth s3cret");
    other.send("register a tok");
    other.send("tags tok");
    other.expect("tags tok a");
}

/// A flood of wrong tokens in one packet stops at the tenth: the rest is never read.
#[test]
fn a_packet_of_guesses_stops_at_the_budget() {
    let server = TestServer::with(|c| c.admin_token = Some("s3cret".into()));
    let mut c = server.client();
    let mut guesses = String::new();
    for i in 0..1000 {
        guesses.push_str(&format!("auth guess{i}\n"));
    }
    guesses.push_str("auth s3cret\nregister a tok\n");
    c.send_raw(guesses.as_bytes());
    for _ in 0..9 {
        c.expect(WRONG);
    }
    c.expect(LOCKED_OUT);
    assert_eq!(c.read_to_end(), b"");
    assert_eq!(get(&server.context().metrics().auth_failures), 10);
    assert!(server.context().tokens().tags("tok").is_err());
}

/// A wrong `auth` after a right one takes the admin rights away: a connection has them only
/// while its last `auth` was right. A right one gives them back.
#[test]
fn a_wrong_auth_after_a_right_one_drops_the_admin_rights() {
    let server = TestServer::with(|c| c.admin_token = Some("s3cret".into()));
    let mut c = server.client();
    c.send("auth s3cret");
    c.send("register a tok");
    c.ping();
    expect_error(&mut c, b"auth s3cre\n", WRONG);
    expect_error(
        &mut c,
        b"unregister tok\n",
        "error admin commands need auth ADMIN_TOKEN first",
    );
    assert!(server.context().tokens().tags("tok").is_ok());
    c.send("auth s3cret");
    c.send("unregister tok");
    c.send("tags tok");
    c.expect("error unknown token");
}

/// Ten unknown tokens get 401; then every upgrade from that address gets 429 with
/// `Retry-After`, a valid token too, before its token is looked at; another address
/// upgrades as usual.
#[test]
fn unknown_websocket_tokens_lock_the_address_out() {
    let server = TestServer::start();
    let m = &server.context().metrics();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    for i in 0..10 {
        assert_eq!(
            try_ws_connect(server.http, Some(&format!("guess{i}")), None).err(),
            Some(401),
            "guess {i}"
        );
    }
    assert_eq!(get(&m.auth_lockouts_websocket), 1);
    assert_eq!(
        try_ws_connect(server.http, Some("tok"), None).err(),
        Some(429)
    );
    assert_eq!(
        try_ws_connect(server.http, None, Some("guess10")).err(),
        Some(429)
    );
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let head = raw_upgrade_from(local, server.http, "tok", &[]).1;
    assert!(
        head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{head}"
    );
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {head}"));
    assert!((1..=30).contains(&retry), "{head}");
    assert_eq!(get(&m.auth_refused_websocket), 3);
    assert_eq!(get(&m.auth_failures), 10);

    let head = raw_upgrade_from(OTHER, server.http, "tok", &[]).1;
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
}

/// The new counters are in `/metrics`.
#[test]
fn the_brake_and_the_http_refusals_are_in_metrics() {
    let server = TestServer::with(|c| c.admin_token = Some("s3cret".into()));
    let mut c = server.client();
    for i in 0..10 {
        c.send(&format!("auth guess{i}"));
    }
    for _ in 0..9 {
        c.expect(WRONG);
    }
    c.expect(LOCKED_OUT);
    let mut s = raw_connect(server.tcp);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_until_closed(&mut s), HTTP_REFUSED);
    let text = server.context().metrics().render();
    for series in [
        "mist_auth_lockouts_total{kind=\"admin\"} 1\n",
        "mist_auth_lockouts_total{kind=\"websocket\"} 0\n",
        "mist_auth_refused_total{kind=\"admin\"} 0\n",
        "mist_auth_refused_total{kind=\"websocket\"} 0\n",
        "mist_line_http_closed_total 1\n",
        "mist_auth_failures_total 10\n",
    ] {
        assert!(text.contains(series), "no {series} in\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// The log: summarised, and free of client data
// ---------------------------------------------------------------------------------------------

/// 50 wrong admin tokens, 50 unknown WebSocket tokens and 50 HTTP requests to the line port,
/// all from one address within a few seconds: the log says what happened in a few lines, not
/// one per attempt.
#[test]
fn guessing_and_cross_protocol_requests_do_not_flood_the_log() {
    let d = Proc::server_with("brake-log", "admin_token s3cret\n");
    let mut c = LineClient::connect(d.tcp());
    for i in 0..50 {
        if i == 10 {
            c = LineClient::connect(d.tcp());
        }
        c.send(&format!("auth guess{i}"));
        let reply = c.line();
        assert!(reply.starts_with("error "), "{reply}");
        if i >= 9 {
            assert_eq!(c.read_to_end(), b"");
            c = LineClient::connect(d.tcp());
        }
    }
    for i in 0..50 {
        let status = try_ws_connect(d.http(), Some(&format!("guess{i}")), None).err();
        assert_eq!(status, Some(if i < 10 { 401 } else { 429 }), "upgrade {i}");
    }
    for _ in 0..50 {
        let mut s = raw_connect(d.tcp());
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_until_closed(&mut s), HTTP_REFUSED);
    }
    let log = d.stop();
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    // The first failure, and the lockout; summaries come at most every 10 s.
    let admin = count("admin token");
    assert!((2..=4).contains(&admin), "{admin} lines:\n{log}");
    assert_eq!(count(": wrong admin token"), 1, "{log}");
    assert_eq!(
        count("10 wrong admin tokens from 127.0.0.1 within 10 s: auth from it is refused for 30 s"),
        1,
        "{log}"
    );
    let ws = count("WebSocket");
    assert!((2..=4).contains(&ws), "{ws} lines:\n{log}");
    assert_eq!(count(": WebSocket refused: unknown token"), 1, "{log}");
    let http = count("HTTP to the line port");
    assert!((1..=2).contains(&http), "{http} lines:\n{log}");
}

/// At TRACE, the WebSocket library would log every frame it receives, with the commands and
/// data in it; mist's logger drops those lines (and its own lines at TRACE still come).
#[test]
fn websocket_frames_never_reach_the_log_at_trace() {
    let d = Proc::server_with("trace", "log_level TRACE\n");
    let mut admin = LineClient::connect(d.tcp());
    admin.send("register SecretTag4kq TokenSecret7yu");
    admin.ping();
    let mut ws = crate::support::ws_connect(d.http(), "TokenSecret7yu");
    crate::support::ws_send(
        &mut ws,
        r#"{"command":"subscribe","tags":["SecretTag4kq"]}"#,
    );
    assert_eq!(
        crate::support::ws_text(&mut ws),
        r#"{"success":true,"command":"subscribe"}"#
    );
    admin.send("publish SecretTag4kq DataSecret2mx");
    admin.ping();
    assert_eq!(
        crate::support::ws_text(&mut ws),
        r#"{"keys":["SecretTag4kq"],"data":"DataSecret2mx"}"#
    );
    crate::support::ws_sync(&mut ws);
    drop(ws);
    let log = d.stop();
    assert!(log.contains(": connected"), "{log}");
    for secret in ["TokenSecret7yu", "DataSecret2mx", "SecretTag4kq"] {
        assert!(
            !log.contains(secret),
            "'{secret}' is in the TRACE log:\n{log}"
        );
    }
}
