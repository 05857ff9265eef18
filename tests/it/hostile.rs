//! Hostile clients. Every byte a client sends is hostile until parsed: NUL bytes and invalid
//! UTF-8 in every field, endless and oversized lines, stalls, slowloris, floods, deep JSON,
//! peers that never read or never answer, and the server's own panics. Each case must end in an
//! `error` reply, an HTTP status or a close, in bounded time and memory, while a bystander
//! client keeps getting its `pong`.
//!
//! The tests that measure the server (threads, descriptors, resident memory, its log) run the
//! real binary as a subprocess, on ports it picks itself (`127.0.0.1:0`, read back from its
//! log), and look at it through `/proc/PID`.

use crate::cli::Proc;
use crate::config::config_file;
use crate::support::{
    LineClient, TIMEOUT, TestServer, expect_error, get, try_ws_connect_with, ws_send, ws_sync,
    ws_text,
};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

const WS_PING: &str = r#"{"command":"ping"}"#;
const WS_PONG: &str = r#"{"success":true,"command":"ping"}"#;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Polls `cond` until it holds; fails the test after `within`. For effects that have no reply
/// to wait for (a thread ending, a disconnect being noticed).
fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A line client whose socket has a small receive buffer, so that it stalls the server's
/// writes to it after a few kilobytes when it stops reading.
fn small_window_client(addr: SocketAddr) -> LineClient {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).expect("connect");
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    LineClient {
        reader: BufReader::new(stream.try_clone().unwrap()),
        stream,
    }
}

/// A raw connection with the usual timeouts.
fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Reads until the peer closes; a reset after the response counts as the end too.
fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the response: {e}; got so far {out:?}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A plain-text response as mist writes it.
fn plain(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\
         content-type: text/plain; charset=utf-8\r\n\r\n{body}",
        body.len()
    )
}

/// `GET path` on its own connection; the whole response.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = raw_connect(addr);
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: mist\r\n\r\n").as_bytes())
        .unwrap();
    read_response(&mut s)
}

/// The value of one series in the `/metrics` text.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// A WebSocket upgrade request, written by hand; `headers` are extra header lines.
fn upgrade_request(token: Option<&str>, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = String::from(
        "GET /subscribe/websocket HTTP/1.1\r\nHost: mist\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    );
    if let Some(t) = token {
        req.push_str(&format!("X-Auth-Token: {t}\r\n"));
    }
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Upgrades a raw connection by hand and returns it with the response head (read byte by
/// byte, so nothing after the head is consumed).
fn raw_upgrade(http: SocketAddr, token: &str, headers: &[(&str, &str)]) -> (TcpStream, String) {
    let mut s = raw_connect(http);
    s.write_all(&upgrade_request(Some(token), headers)).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 * 1024, "response head too long");
        let n = s
            .read(&mut b)
            .expect("the response head before the timeout");
        assert_eq!(n, 1, "connection closed in the response head: {head:?}");
        head.push(b[0]);
    }
    (s, String::from_utf8(head).unwrap())
}

/// A WebSocket client (tungstenite) with the token in the header and extra headers; on
/// refusal, the HTTP status.
fn ws_with(http: SocketAddr, token: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    try_ws_connect_with(http, Some(token), None, headers)
}

fn ws(http: SocketAddr, token: &str) -> Ws {
    ws_with(http, token, &[]).expect("WebSocket upgrade succeeds")
}

/// `json` followed by spaces up to `len` bytes.
fn padded(json: &str, len: usize) -> String {
    let mut s = json.to_string();
    s.extend(std::iter::repeat_n(' ', len - json.len()));
    s
}

/// Sends a command and expects exactly this reply.
fn call(ws: &mut Ws, json: &str, want: &str) {
    ws_send(ws, json);
    assert_eq!(ws_text(ws), want, "reply to {json:.200}");
}

/// A client frame (masked, as RFC 6455 requires of clients) with the first byte `b0` (FIN and
/// opcode) and this payload, written by hand so it can carry what tungstenite would refuse to
/// send.
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x17, 0xc3, 0x81];
    let mut f = vec![b0];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one server frame from a raw socket: (first byte, payload); `None` at the end of the
/// connection.
fn server_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    match s.read_exact(&mut h) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) =>
        {
            return None;
        }
        Err(e) => panic!("reading a frame: {e}"),
    }
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u64::from(u16::from_be_bytes(l))
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).unwrap();
    Some((h[0], payload))
}

/// The payload of a close frame with this code and reason.
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// Reads raw server frames until a close frame; returns its payload, skipping text and ping
/// frames. Then expects the end of the connection.
fn expect_raw_close(s: &mut TcpStream, code: u16, reason: &str) {
    loop {
        match server_frame(s) {
            Some((0x88, payload)) => {
                assert_eq!(payload, close_payload(code, reason));
                break;
            }
            Some((0x81 | 0x89, _)) => continue,
            Some(other) => panic!("unexpected frame {other:?}"),
            None => panic!("connection ended without a close frame"),
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    assert_eq!(server_frame(s), None, "nothing after the close frame");
}

/// Expects the close frame with this code and reason through tungstenite, then the end.
fn expect_closed(ws: &mut Ws, code: u16, reason: &str) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => {
                assert_eq!((u16::from(f.code), f.reason.as_str()), (code, reason));
                break;
            }
            Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {}
        Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the end of the connection, got {other:?}"),
    }
}

/// Clients that are not part of a case, whose `ping` must be answered during and after every
/// case: the server keeps serving others.
struct Bystander {
    tcp: LineClient,
    ws: Option<Ws>,
}

impl Bystander {
    fn new(server: &TestServer) -> Bystander {
        Bystander {
            tcp: server.client(),
            ws: None,
        }
    }

    /// Also a WebSocket bystander, with a token that must already be registered.
    fn with_ws(server: &TestServer, token: &str) -> Bystander {
        Bystander {
            tcp: server.client(),
            ws: Some(ws(server.http, token)),
        }
    }

    fn check(&mut self) {
        self.tcp.ping();
        if let Some(ws) = &mut self.ws {
            assert_eq!(ws_sync(ws), Vec::<String>::new());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A. Bad input on the line protocol
// ---------------------------------------------------------------------------------------------

const BAD_BYTE: &str = "error invalid tags: a tag contains a space, comma or control character";
const NOT_UTF8: &str = "error invalid tags: a tag is not valid UTF-8";
const TOKEN_BAD_CHAR: &str = "error invalid token: contains whitespace or a control character";
const TOKEN_NOT_UTF8: &str = "error invalid token: not valid UTF-8";

/// Tag lists with a NUL byte or invalid UTF-8, and the error each gets.
fn bad_tag_lists() -> Vec<(&'static [u8], &'static str)> {
    vec![
        (b"\x00", BAD_BYTE),
        (b"a\x00b", BAD_BYTE),
        (b"a,\x00", BAD_BYTE),
        (b"\x00,a", BAD_BYTE),
        (b"a\x00,\xff", BAD_BYTE),
        (b"\xff", NOT_UTF8),
        (b"a,\xc3\x28", NOT_UTF8),
        // A truncated sequence, an encoded surrogate, and the overlong encoding of NUL (which
        // hides a NUL from a byte check; the UTF-8 check refuses it).
        (b"a\xc3", NOT_UTF8),
        (b"\xed\xa0\x80", NOT_UTF8),
        (b"\xc0\x80", NOT_UTF8),
        (b"\xf8\x88\x80\x80\x80", NOT_UTF8),
    ]
}

/// Tokens with a NUL byte, invalid UTF-8 or Unicode whitespace and controls.
fn bad_tokens() -> Vec<(&'static [u8], &'static str)> {
    vec![
        (b"\x00", TOKEN_BAD_CHAR),
        (b"t\x00k", TOKEN_BAD_CHAR),
        (b"tok\x00", TOKEN_BAD_CHAR),
        (b"\xff", TOKEN_NOT_UTF8),
        (b"t\xc3\x28", TOKEN_NOT_UTF8),
        (b"\xc0\x80", TOKEN_NOT_UTF8),
        (b"\xed\xa0\x80", TOKEN_NOT_UTF8),
        // U+0085 (NEL, a C1 control), U+2028 (line separator), U+00A0 (no-break space).
        ("t\u{85}".as_bytes(), TOKEN_BAD_CHAR),
        ("t\u{2028}".as_bytes(), TOKEN_BAD_CHAR),
        ("\u{a0}".as_bytes(), TOKEN_BAD_CHAR),
    ]
}

/// Puts `field` where `{}` is in `template` and ends the line.
fn fill(template: &str, field: &[u8]) -> Vec<u8> {
    let (before, after) = template.split_once("{}").unwrap();
    let mut line = before.as_bytes().to_vec();
    line.extend_from_slice(field);
    line.extend_from_slice(after.as_bytes());
    line.push(b'\n');
    line
}

#[test]
fn nul_and_invalid_utf8_in_every_field_of_every_tcp_command() {
    let server = TestServer::start();
    let mut by = Bystander::new(&server);
    let mut c = server.client();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    // `set` and `unset` must fail on their bad field, not on an unknown token.
    c.send("register keep tok");
    c.ping();
    let mut cases: Vec<(Vec<u8>, String)> = Vec::new();
    let mut case = |line: Vec<u8>, want: &str| cases.push((line, want.to_string()));

    // The command name, and arguments of commands that take none.
    case(b"\x00\n".to_vec(), "error unknown command '\\u{0}'");
    case(b"pi\x00ng\n".to_vec(), "error unknown command 'pi\\u{0}ng'");
    case(b"ping\x00\n".to_vec(), "error unknown command 'ping\\u{0}'");
    case(
        b"\xffping\n".to_vec(),
        "error unknown command '\u{fffd}ping'",
    );
    case(
        b"publish\xff a x\n".to_vec(),
        "error unknown command 'publish\u{fffd}'",
    );
    case(
        b"\xc0\x80\n".to_vec(),
        "error unknown command '\u{fffd}\u{fffd}'",
    );
    case(b"ping \x00\n".to_vec(), "error usage: ping");
    case(b"list \xff\n".to_vec(), "error usage: list");
    // Every tag list of every command.
    for template in [
        "subscribe {}",
        "unsubscribe {}",
        "publish {} data",
        "register {} tok2",
        "set {} tok",
        "unset {} tok",
    ] {
        for (tags, want) in bad_tag_lists() {
            case(fill(template, tags), want);
        }
    }
    // Every token of every command.
    for template in [
        "register a {}",
        "unregister {}",
        "set a {}",
        "unset a {}",
        "tags {}",
    ] {
        for (token, want) in bad_tokens() {
            case(fill(template, token), want);
        }
    }
    // `auth` without an admin_token configured refuses whatever the token is.
    for token in [&b"\x00"[..], b"\xff", b"a\x00b"] {
        case(
            fill("auth {}", token),
            "error auth is not enabled: no admin_token is configured",
        );
    }

    for (line, want) in &cases {
        expect_error(&mut c, line, want);
        by.check();
    }
    // Nothing was changed or delivered by any of them.
    c.send("list");
    c.expect("list []");
    c.send("tags tok");
    c.expect("tags tok keep");
    c.send("tags tok2");
    c.expect("error unknown token");
    assert_eq!(sub.sync(), Vec::<String>::new());
    assert_eq!(
        get(&server.context().metrics.errors_sent),
        cases.len() as u64 + 1
    );
    assert_eq!(get(&server.context().metrics.messages_published), 0);
}

#[test]
fn nul_and_invalid_utf8_in_an_admin_token() {
    let server = TestServer::with(|c| c.admin_token = Some("s3cret".into()));
    let mut by = Bystander::new(&server);
    let mut c = server.client();
    for token in [
        &b"\x00"[..],
        b"s3cret\x00",
        b"\x00s3cret",
        b"s3\x00cret",
        b"\xff",
        b"s3cret\xff",
        b"s3cre\xc3",
        "s3cret\u{a0}".as_bytes(),
    ] {
        expect_error(&mut c, &fill("auth {}", token), "error wrong admin token");
        expect_error(
            &mut c,
            b"register a tok\n",
            "error admin commands need auth ADMIN_TOKEN first",
        );
        by.check();
    }
    assert_eq!(get(&server.context().metrics.auth_failures), 8);
    // The right token still works on the same connection.
    c.send("auth s3cret");
    c.send("register a tok");
    c.send("tags tok");
    c.expect("tags tok a");
}

/// `DATA` is opaque: NUL bytes and invalid UTF-8 are delivered exactly to TCP subscribers, and
/// with U+FFFD for the invalid bytes to WebSocket subscribers (NUL as `\u0000`).
#[test]
fn nul_and_invalid_utf8_in_data_are_delivered_as_they_are() {
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::with_ws(&server, "tok");
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let mut w = ws(server.http, "tok");
    call(
        &mut w,
        r#"{"command":"subscribe","tags":["a"]}"#,
        r#"{"success":true,"command":"subscribe"}"#,
    );
    let mut p = server.client();
    let datas: [&[u8]; 5] = [
        b"\x00",
        b"x\x00y\x00",
        b"\xff\xfe",
        b"\xc0\x80 \xed\xa0\x80",
        b"ok \x7f\x01\x1b[31m",
    ];
    for data in datas {
        let mut line = b"publish a ".to_vec();
        line.extend_from_slice(data);
        line.push(b'\n');
        p.send_raw(&line);
    }
    p.ping();
    for data in datas {
        let mut want = b"publish a ".to_vec();
        want.extend_from_slice(data);
        assert_eq!(sub.line_bytes(), want);
    }
    sub.ping();
    for data in datas {
        let want = format!(
            r#"{{"keys":["a"],"data":{}}}"#,
            serde_json::to_string(&String::from_utf8_lossy(data)).unwrap()
        );
        assert_eq!(ws_text(&mut w), want);
    }
    assert_eq!(ws_sync(&mut w), Vec::<String>::new());
    by.check();
}

// ---------------------------------------------------------------------------------------------
// A. Bad input on the WebSocket API
// ---------------------------------------------------------------------------------------------

#[test]
fn nul_and_invalid_utf8_in_websocket_json_fields() {
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::with_ws(&server, "tok");
    let mut w = ws(server.http, "tok");
    let bad_byte = "invalid tags: a tag contains a space, comma or control character";
    let cases: Vec<(String, String)> = [
        // NUL escaped in JSON strings: in the command, in a tag, in a key.
        (
            r#"{"command":"ping\u0000"}"#.to_string(),
            r#"{"success":false,"error":"unknown command 'ping\\u{0}'"}"#.to_string(),
        ),
        (
            r#"{"command":"\u0000"}"#.to_string(),
            r#"{"success":false,"error":"unknown command '\\u{0}'"}"#.to_string(),
        ),
        (
            r#"{"command":"subscribe","tags":["a\u0000"]}"#.to_string(),
            format!(r#"{{"success":false,"command":"subscribe","error":"{bad_byte}"}}"#),
        ),
        (
            r#"{"command":"unsubscribe","tags":["a","\u0000"]}"#.to_string(),
            format!(r#"{{"success":false,"command":"unsubscribe","error":"{bad_byte}"}}"#),
        ),
        (
            r#"{"comm\u0000and":"ping"}"#.to_string(),
            r#"{"success":false,"error":"missing command"}"#.to_string(),
        ),
        // Extra fields are ignored, whatever they hold.
        (
            r#"{"command":"ping","tags":["\u0000"],"\u0000":"\u0000"}"#.to_string(),
            WS_PONG.to_string(),
        ),
        // A raw NUL byte (valid UTF-8, invalid JSON) inside and outside a string.
        (
            "{\"command\":\"ping\0\"}".to_string(),
            r#"{"success":false,"error":"invalid JSON: control character (\\u0000-\\u001F) found while parsing a string at line 1 column 17"}"#.to_string(),
        ),
        (
            "{\"command\":\"ping\"}\0".to_string(),
            r#"{"success":false,"error":"invalid JSON: trailing characters at line 1 column 19"}"#.to_string(),
        ),
        (
            "\0".to_string(),
            r#"{"success":false,"error":"invalid JSON: expected value at line 1 column 1"}"#.to_string(),
        ),
        // Escapes that are not Unicode scalar values, and one pair that is.
        (
            r#"{"command":"subscribe","tags":["\ud800"]}"#.to_string(),
            r#"{"success":false,"error":"invalid JSON: unexpected end of hex escape at line 1 column 39"}"#.to_string(),
        ),
        (
            r#"{"command":"subscribe","tags":["\ud800\u0041"]}"#.to_string(),
            r#"{"success":false,"error":"invalid JSON: lone leading surrogate in hex escape at line 1 column 44"}"#.to_string(),
        ),
        (
            r#"{"command":"subscribe","tags":["\udc00"]}"#.to_string(),
            r#"{"success":false,"error":"invalid JSON: lone leading surrogate in hex escape at line 1 column 38"}"#.to_string(),
        ),
        (
            r#"{"command":"subscribe","tags":["\ud800\udc00"]}"#.to_string(),
            format!(
                r#"{{"success":false,"command":"subscribe","error":"token lacks the tags {}"}}"#,
                '\u{10000}'
            ),
        ),
        // U+FFFD itself is a fine character, and a fine tag.
        (
            "{\"command\":\"subscribe\",\"tags\":[\"\u{fffd}\"]}".to_string(),
            r#"{"success":false,"command":"subscribe","error":"token lacks the tags �"}"#.to_string(),
        ),
    ]
    .into_iter()
    .collect();
    for (sent, want) in &cases {
        call(&mut w, sent, want);
        assert_eq!(ws_sync(&mut w), Vec::<String>::new(), "after {sent}");
        by.check();
    }
    // Invalid UTF-8 in a binary frame is just an unsupported frame.
    w.get_mut()
        .write_all(&client_frame(0x82, b"{\"command\":\"\xff\"}"))
        .unwrap();
    assert_eq!(
        ws_text(&mut w),
        r#"{"success":false,"error":"binary frames are not supported; send JSON text"}"#
    );
    call(
        &mut w,
        r#"{"command":"list"}"#,
        r#"{"success":true,"command":"list","subscriptions":[]}"#,
    );
    // Invalid UTF-8 in a text frame breaks RFC 6455: close 1007, and only this connection.
    for payload in [
        &b"{\"command\":\"ping\xff\"}"[..],
        b"\xc0\x80",
        b"{\"command\":\"ping\"}\xed\xa0\x80",
    ] {
        let (mut s, head) = raw_upgrade(server.http, "tok", &[]);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        s.write_all(&client_frame(0x81, payload)).unwrap();
        expect_raw_close(&mut s, 1007, "text frame is not UTF-8");
        by.check();
    }
    assert_eq!(ws_sync(&mut w), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// A. Endless lines, blank lines, huge tag lists
// ---------------------------------------------------------------------------------------------

/// A 16 MiB line without a newline, on the default 1 MiB `max_line_bytes`: the error comes
/// while the line is still arriving (it is not buffered until its end), exactly once, and the
/// connection goes on. (Memory is measured in `endless_lines_keep_the_servers_memory_bounded`.)
#[test]
fn sixteen_mib_line_without_newline_gets_one_error_and_the_connection_goes_on() {
    let server = TestServer::start();
    let mut by = Bystander::new(&server);
    let mut c = server.client();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let chunk = {
        let mut v = b"publish a ".to_vec();
        v.resize(1 << 20, b'x');
        v
    };
    c.send_raw(&chunk);
    c.send_raw(&chunk[..1024]);
    // The error is there before the rest of the line is even sent.
    c.expect("error line too long (max_line_bytes 1048576)");
    for _ in 0..15 {
        c.send_raw(&chunk[10..]);
        by.check();
    }
    // The end of the line, then a command: one error in all, and the connection goes on.
    c.send_raw(b"\nping\n");
    c.expect("pong");
    c.send("publish a after");
    c.ping();
    assert_eq!(sub.sync(), ["publish a after"]);
    assert_eq!(get(&server.context().metrics.errors_sent), 1);
    by.check();
}

#[test]
fn lines_of_only_spaces_or_commas() {
    let server = TestServer::start();
    let mut by = Bystander::new(&server);
    let mut c = server.client();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let commas = vec![b','; 100_000];
    let spaces = vec![b' '; 100_000];
    let cases: Vec<(Vec<u8>, String)> = vec![
        (b" ".to_vec(), "error unknown command ''".into()),
        (b"     ".to_vec(), "error unknown command ''".into()),
        (spaces.clone(), "error unknown command ''".into()),
        (b",".to_vec(), "error unknown command ','".into()),
        (b",,,,,".to_vec(), "error unknown command ',,,,,'".into()),
        (
            commas.clone(),
            format!("error unknown command '{}…'", ",".repeat(40)),
        ),
        (b", , ,".to_vec(), "error unknown command ','".into()),
        (b"\t".to_vec(), "error unknown command '\\t'".into()),
        (b"\r".to_vec(), "error empty command".into()),
        (b"\r\r".to_vec(), "error unknown command '\\r'".into()),
        (
            b"subscribe  ".to_vec(),
            "error usage: subscribe TAGS".into(),
        ),
        (
            [&b"subscribe "[..], &spaces].concat(),
            "error usage: subscribe TAGS".into(),
        ),
        (
            b"subscribe ,".to_vec(),
            "error invalid tags: empty tag".into(),
        ),
        (
            [&b"subscribe "[..], &commas].concat(),
            "error invalid tags: empty tag".into(),
        ),
        (
            [&b"publish "[..], &commas, b" x"].concat(),
            "error invalid tags: empty tag".into(),
        ),
        (
            b"publish , x".to_vec(),
            "error invalid tags: empty tag".into(),
        ),
        (
            b"publish a,, x".to_vec(),
            "error invalid tags: empty tag".into(),
        ),
        (
            b"register , tok".to_vec(),
            "error invalid tags: empty tag".into(),
        ),
        (
            b"register a  ".to_vec(),
            "error usage: register TAGS TOKEN".into(),
        ),
        (b"tags  ".to_vec(), "error usage: tags TOKEN".into()),
        (b"auth  ".to_vec(), "error usage: auth ADMIN_TOKEN".into()),
    ];
    for (line, want) in &cases {
        let mut raw = line.clone();
        raw.push(b'\n');
        expect_error(&mut c, &raw, want);
        by.check();
    }
    c.send("list");
    c.expect("list []");
    assert_eq!(sub.sync(), Vec::<String>::new());
}

fn distinct_tags(n: usize) -> String {
    (0..n)
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn thousands_of_tags_in_one_list() {
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::with_ws(&server, "tok");
    let mut c = server.client();
    let mut sub = server.client();
    sub.send("subscribe t0");
    sub.send("subscribe a");
    sub.ping();
    let too_many = "error invalid tags: more than 32 distinct tags";
    // About 1 MiB of tags, just under the line limit.
    let huge = distinct_tags(120_000);
    assert!(huge.len() < (1 << 20) - 20, "{}", huge.len());
    for n in [33, 5_000] {
        let tags = distinct_tags(n);
        for template in [
            "subscribe {}",
            "publish {} x",
            "register {} tok2",
            "set {} tok",
        ] {
            expect_error(&mut c, &fill(template, tags.as_bytes()), too_many);
        }
        by.check();
    }
    let started = Instant::now();
    expect_error(&mut c, &fill("subscribe {}", huge.as_bytes()), too_many);
    expect_error(&mut c, &fill("publish {} x", huge.as_bytes()), too_many);
    by.check();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Thousands of copies of one tag are one tag.
    let same = vec!["a"; 5_000].join(",");
    let mut d = server.client();
    d.send(&format!("subscribe {same}"));
    d.send("list");
    d.expect("list [[a]]");
    c.send(&format!("publish {same} folded"));
    c.ping();
    assert_eq!(sub.sync(), ["publish a folded"]);
    assert_eq!(d.sync(), ["publish a folded"]);
    // Thousands of distinct tags that fold to 32 pass; 33 do not.
    let mut folded: Vec<String> = (0..5_000).map(|i| format!("t{}", i % 32)).collect();
    c.send(&format!("publish {} fits", folded.join(",")));
    c.ping();
    assert_eq!(
        sub.sync(),
        [format!("publish {} fits", {
            let mut t: Vec<String> = (0..32).map(|i| format!("t{i}")).collect();
            t.sort();
            t.join(",")
        })]
    );
    folded.push("t32".into());
    expect_error(
        &mut c,
        format!("publish {} no\n", folded.join(",")).as_bytes(),
        too_many,
    );

    // The same over WebSocket.
    let mut w = ws(server.http, "tok");
    let list: Vec<String> = (0..5_000).map(|i| format!("t{i}")).collect();
    call(
        &mut w,
        &format!(
            r#"{{"command":"subscribe","tags":{}}}"#,
            serde_json::to_string(&list).unwrap()
        ),
        r#"{"success":false,"command":"subscribe","error":"invalid tags: more than 32 distinct tags"}"#,
    );
    call(
        &mut w,
        &format!(
            r#"{{"command":"subscribe","tags":{}}}"#,
            serde_json::to_string(&vec!["a"; 5_000]).unwrap()
        ),
        r#"{"success":true,"command":"subscribe"}"#,
    );
    call(
        &mut w,
        r#"{"command":"list"}"#,
        r#"{"success":true,"command":"list","subscriptions":[["a"]]}"#,
    );
    assert_eq!(sub.sync(), Vec::<String>::new());
    by.check();
}

// ---------------------------------------------------------------------------------------------
// A. Stalls and silence
// ---------------------------------------------------------------------------------------------

#[test]
fn half_a_line_then_a_stall_blocks_nobody() {
    let server = TestServer::start();
    let mut by = Bystander::new(&server);
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let mut stalled = server.client();
    stalled.send("subscribe b");
    stalled.ping();
    stalled.send_raw(b"publish a hal");
    let mut stalled_sub = server.client();
    stalled_sub.send_raw(b"subscr");
    // Others are served while both half lines wait.
    let mut p = server.client();
    for i in 0..100 {
        p.send(&format!("publish a,b other {i}"));
    }
    p.ping();
    by.check();
    let want: Vec<String> = (0..100).map(|i| format!("publish a,b other {i}")).collect();
    assert_eq!(sub.sync(), want);
    // The staller's subscription is served while its half line waits.
    p.send("publish b to the staller");
    p.ping();
    // The half lines complete later, as if they had come at once.
    stalled.send_raw(b"f\n");
    stalled.send("list");
    assert_eq!(stalled.line(), "publish a,b other 0");
    let mut got = vec![];
    loop {
        let l = stalled.line();
        if l.starts_with("list ") {
            assert_eq!(l, "list [[b]]");
            break;
        }
        got.push(l);
    }
    assert_eq!(got.len(), 100);
    assert_eq!(got[99], "publish b to the staller");
    assert_eq!(sub.sync(), ["publish a half"]);
    stalled_sub.send_raw(b"ibe a\n");
    stalled_sub.send("list");
    stalled_sub.expect("list [[a]]");
    by.check();
}

#[test]
fn a_client_that_connects_and_sends_nothing() {
    let server = TestServer::with(|c| c.http_head_timeout = 1);
    let ctx = server.context();
    let mut by = Bystander::new(&server);
    by.check();
    let before = ctx.conns.len();
    // TCP: an idle connection is a legitimate idle subscriber. It holds a slot, blocks nobody,
    // and still works after the others were served.
    let mut idle: Vec<LineClient> = (0..50).map(|_| server.client()).collect();
    by.check();
    wait_until("the idle clients to be counted", TIMEOUT, || {
        ctx.conns.len() == before + 50
    });
    let mut p = server.client();
    p.send("publish a x");
    p.ping();
    for c in &mut idle {
        c.ping();
    }
    // HTTP: a connection that sends nothing gets 408 once the head deadline has passed.
    let started = Instant::now();
    let silent: Vec<TcpStream> = (0..20).map(|_| raw_connect(server.http)).collect();
    by.check();
    for mut s in silent {
        assert_eq!(
            read_response(&mut s),
            plain("408 Request Timeout", "request head not complete in time\n")
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(4),
        "{took:?}"
    );
    by.check();
}

/// A request head dribbled one byte at a time never completes in time: 408 once the whole-head
/// deadline (`http_head_timeout`, 1 s here) has passed, however steadily the bytes come. The
/// pace is the read timeout of the check for a response, not a sleep.
#[test]
fn http_slowloris_gets_408_within_the_head_deadline() {
    let server = TestServer::with(|c| c.http_head_timeout = 1);
    let mut by = Bystander::new(&server);
    let head = format!(
        "GET /ping HTTP/1.1\r\nHost: mist\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(200)
    );
    // Before the connections: the server's deadline starts when it accepts each one.
    let started = Instant::now();
    let lorises: Vec<(TcpStream, usize, Vec<u8>)> = (0..10)
        .map(|_| {
            let s = raw_connect(server.http);
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            (s, 0, Vec::new())
        })
        .collect();
    let mut lorises = lorises;
    let mut answered = 0;
    while answered < lorises.len() {
        assert!(started.elapsed() < Duration::from_secs(5), "no 408 in time");
        for (s, sent, got) in &mut lorises {
            if got.ends_with(b"complete in time\n") {
                continue;
            }
            if *sent < head.len() {
                // After the response the server may reset: stop writing then.
                if s.write_all(&head.as_bytes()[*sent..*sent + 1]).is_ok() {
                    *sent += 1;
                }
            }
            let mut buf = [0u8; 1024];
            match s.read(&mut buf) {
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.ends_with(b"complete in time\n") {
                        answered += 1;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("slowloris read: {e}"),
            }
        }
        by.check();
        // A normal request is answered at once meanwhile.
        assert_eq!(http_get(server.http, "/ping"), plain("200 OK", "pong"));
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(950), "{took:?}");
    for (_, sent, got) in &lorises {
        assert!(*sent < head.len(), "the head was not complete");
        assert_eq!(
            String::from_utf8_lossy(got),
            plain("408 Request Timeout", "request head not complete in time\n")
        );
    }
    by.check();
}

#[test]
fn oversized_http_heads_get_431_and_garbage_gets_400() {
    let server = TestServer::start();
    let mut by = Bystander::new(&server);
    let too_large = plain(
        "431 Request Header Fields Too Large",
        "request head larger than 16384 bytes\n",
    );
    // One huge header (too many small ones: `http_limits.rs`).
    let big = format!(
        "GET /ping HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "b".repeat(17_000)
    );
    // A head that never ends, sent as fast as possible.
    let endless = format!("GET /ping HTTP/1.1\r\nX-Big: {}", "e".repeat(40_000));
    for req in [&big, &endless] {
        let mut s = raw_connect(server.http);
        let _ = s.write_all(req.as_bytes());
        assert_eq!(read_response(&mut s), too_large);
        by.check();
    }
    for req in [
        &b"\x00\x00\x00\x00\r\n\r\n"[..],
        b"GET /ping HTTP/1.1\r\nX-Bad: a\x00b\r\n\r\n",
        b"GET /p\xffng HTTP/1.1\r\n\r\n",
        b"GET /ping HTTP/9.9\r\n\r\n",
        b"\xff\xfe\xfd\r\n\r\n",
    ] {
        let mut s = raw_connect(server.http);
        s.write_all(req).unwrap();
        let resp = read_response(&mut s);
        assert!(
            resp.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{req:?}: {resp}"
        );
        by.check();
    }
}

// ---------------------------------------------------------------------------------------------
// A. WebSocket limits: big frames, silent peers, deep JSON
// ---------------------------------------------------------------------------------------------

#[test]
fn websocket_frames_over_the_limit_are_closed_with_1009() {
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::with_ws(&server, "tok");
    let too_big = "message larger than 1048576 bytes";
    // A frame header that announces 1 TiB, and nothing after it: refused on the header alone.
    let (mut s, head) = raw_upgrade(server.http, "tok", &[]);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&header).unwrap();
    expect_raw_close(&mut s, 1009, too_big);
    by.check();
    // One byte over the default limit in one frame: refused on the header too, so most of
    // the payload may meet a closed socket.
    let (mut s, _) = raw_upgrade(server.http, "tok", &[]);
    let _ = s.write_all(&client_frame(
        0x81,
        padded(WS_PING, (1 << 20) + 1).as_bytes(),
    ));
    expect_raw_close(&mut s, 1009, too_big);
    by.check();
    // Fragments that are each small but add up to more than the limit.
    let (mut s, _) = raw_upgrade(server.http, "tok", &[]);
    let piece = vec![b' '; 400 * 1024];
    s.write_all(&client_frame(0x01, &piece)).unwrap();
    s.write_all(&client_frame(0x00, &piece)).unwrap();
    let _ = s.write_all(&client_frame(0x80, &piece));
    expect_raw_close(&mut s, 1009, too_big);
    by.check();
    // Exactly the limit is fine.
    let mut w = ws(server.http, "tok");
    call(&mut w, &padded(WS_PING, 1 << 20), WS_PONG);
    by.check();
}

/// `ws_ping_interval 1`: a client that never answers the server's ping is closed with 1001
/// after two intervals of silence; one that answers stays.
#[test]
fn a_websocket_that_never_answers_pings_is_closed_after_two_intervals() {
    let server = TestServer::with(|c| c.ws_ping_interval = 1);
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::new(&server);
    let started = Instant::now();
    let (mut mute, head) = raw_upgrade(server.http, "tok", &[]);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // Meanwhile a client that answers, on its own thread: tungstenite answers each ping with a
    // pong as it reads on.
    let polite = ws(server.http, "tok");
    let polite = thread::spawn(move || {
        let mut polite = polite;
        polite
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let mut pings = 0;
        while started.elapsed() < Duration::from_millis(3500) {
            match polite.read() {
                Ok(Message::Ping(p)) => {
                    assert_eq!(p.as_ref(), b"mist");
                    pings += 1;
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("the answering client was closed: {e}"),
            }
        }
        polite.get_ref().set_read_timeout(Some(TIMEOUT)).unwrap();
        (polite, pings)
    });

    // The mute client reads the server's ping, says nothing, and gets the close.
    assert_eq!(server_frame(&mut mute), Some((0x89, b"mist".to_vec())));
    let pinged = started.elapsed();
    assert!(pinged >= Duration::from_millis(900), "{pinged:?}");
    by.check();
    expect_raw_close(&mut mute, 1001, "ping timeout");
    let closed = started.elapsed();
    assert!(
        closed >= Duration::from_millis(1900) && closed < Duration::from_secs(5),
        "{closed:?}"
    );
    by.check();

    // The polite client saw pings, answered them, and is still there after 3.5 s.
    let (mut polite, pings) = polite.join().expect("the answering client is fine");
    assert!(pings >= 2, "{pings} pings");
    call(&mut polite, WS_PING, WS_PONG);
}

/// JSON nested far deeper than serde_json's limit of 128 is refused by the parser, without
/// recursing further: the reader thread's 256 KiB stack is never at risk, in this debug build
/// too. JSON nested right up to the limit is parsed, on that same stack.
#[test]
fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::with_ws(&server, "tok");
    let mut w = ws(server.http, "tok");
    let limit = |column: usize| {
        format!(
            r#"{{"success":false,"error":"invalid JSON: recursion limit exceeded at line 1 column {column}"}}"#
        )
    };
    // Half a million levels of arrays, closed: 1,000,000 bytes, under the 1 MiB frame limit.
    let arrays = format!("{}{}", "[".repeat(500_000), "]".repeat(500_000));
    call(&mut w, &arrays, &limit(128));
    // Never closed, filling the frame.
    call(&mut w, &"[".repeat(1 << 20), &limit(128));
    // Objects.
    let objects = format!("{}1{}", r#"{"a":"#.repeat(150_000), "}".repeat(150_000));
    call(&mut w, &objects, &limit(5 * 127 + 1));
    // Inside a command's tags.
    let tags = format!(
        r#"{{"command":"subscribe","tags":{}"a"{}}}"#,
        "[".repeat(300_000),
        "]".repeat(300_000)
    );
    call(&mut w, &tags, &limit(30 + 127));
    by.check();
    // At the limit: the command object and 126 arrays inside it are 127 levels, parsed; one
    // more is the 128th, refused.
    let deepest = format!(
        r#"{{"command":"ping","x":{}{}}}"#,
        "[".repeat(126),
        "]".repeat(126)
    );
    call(&mut w, &deepest, WS_PONG);
    let over = format!(
        r#"{{"command":"ping","x":{}{}}}"#,
        "[".repeat(127),
        "]".repeat(127)
    );
    call(&mut w, &over, &limit(22 + 127));
    assert_eq!(ws_sync(&mut w), Vec::<String>::new());
    by.check();
}

// ---------------------------------------------------------------------------------------------
// D. Floods and limits
// ---------------------------------------------------------------------------------------------

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
    assert_eq!(ctx.conns.len(), 20);
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
    assert_eq!(get(&ctx.metrics.connections_refused), 60);
    assert_eq!(ctx.conns.len(), 20);
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
    assert_eq!(get(&server.context().metrics.subscriptions), 200);
}

// ---------------------------------------------------------------------------------------------
// C. ws_allowed_origins
// ---------------------------------------------------------------------------------------------

#[test]
fn ws_allowed_origins_refuses_other_and_missing_origins_with_403() {
    let server = TestServer::with(|c| {
        c.ws_allowed_origins = vec!["https://app.example".into(), "http://localhost:8080".into()];
    });
    let ctx = server.context();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::new(&server);
    let forbidden = plain("403 Forbidden", "origin not allowed\n");
    // Allowed origins are upgraded (ASCII case does not matter) and work.
    for origin in [
        "https://app.example",
        "http://localhost:8080",
        "HTTPS://APP.example",
    ] {
        let mut w = ws_with(server.http, "tok", &[("Origin", origin)]).expect("allowed origin");
        call(&mut w, WS_PING, WS_PONG);
    }
    let (_, head) = raw_upgrade(server.http, "tok", &[("Origin", "https://app.example")]);
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    // Other origins, and no origin, get 403 before the upgrade, whatever the token.
    let failures = get(&ctx.metrics.auth_failures);
    let mut refused = 0;
    for origin in [
        Some("https://evil.example"),
        Some("https://app.example.evil.example"),
        Some("http://app.example"),
        Some("https://app.example:443"),
        Some("https://app.example/"),
        Some("null"),
        Some(""),
        None,
    ] {
        for token in ["tok", "unknown-token"] {
            let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
            let mut s = raw_connect(server.http);
            s.write_all(&upgrade_request(Some(token), &headers))
                .unwrap();
            assert_eq!(read_response(&mut s), forbidden, "origin {origin:?}");
            assert_eq!(
                ws_with(server.http, token, &headers).err(),
                Some(403),
                "origin {origin:?}"
            );
            refused += 2;
        }
        by.check();
    }
    // Origin bytes that are not text are refused too.
    let mut s = raw_connect(server.http);
    let mut req = upgrade_request(Some("tok"), &[]);
    req.truncate(req.len() - 2);
    req.extend_from_slice(b"Origin: https://app.example\xff\r\n\r\n");
    s.write_all(&req).unwrap();
    assert_eq!(read_response(&mut s), forbidden);
    refused += 1;
    assert_eq!(get(&ctx.metrics.auth_failures), failures + refused);
    // An allowed origin does not stand in for a token.
    assert_eq!(
        ws_with(
            server.http,
            "unknown-token",
            &[("Origin", "https://app.example")]
        )
        .err(),
        Some(401)
    );
    by.check();
}

/// Without `ws_allowed_origins`, any origin and none are fine (the default).
#[test]
fn without_ws_allowed_origins_any_origin_is_upgraded() {
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    for origin in ["https://anything.example", "null"] {
        let mut w = ws_with(server.http, "tok", &[("Origin", origin)]).expect("upgraded");
        call(&mut w, WS_PING, WS_PONG);
    }
    let mut w = ws_with(server.http, "tok", &[]).expect("upgraded");
    call(&mut w, WS_PING, WS_PONG);
}

// ---------------------------------------------------------------------------------------------
// The real binary, watched through /proc
// ---------------------------------------------------------------------------------------------

/// A `mist -d` process on ports of its own choosing (`127.0.0.1:0`, read back from its log).
struct Daemon {
    proc: Proc,
    pid: libc::pid_t,
    tcp: SocketAddr,
    http: SocketAddr,
    /// Its stderr so far.
    log: Vec<String>,
}

impl Daemon {
    /// Starts `mist -d` with `conf` added to a config file that puts both listeners on
    /// ephemeral loopback ports, and waits until it listens.
    fn start(name: &str, conf: &str) -> Daemon {
        let text =
            format!("tcp_listen_address 127.0.0.1:0\nhttp_listen_address 127.0.0.1:0\n{conf}");
        let path = config_file(name, &text);
        let proc = Proc::spawn(&["-d", "--config", path.to_str().unwrap()], &[], None);
        let log = Proc::lines_until(&proc.stderr, |l| {
            l.contains("listening for HTTP and WebSocket clients on ")
        });
        let addr = |what: &str| -> SocketAddr {
            let line = log
                .iter()
                .find_map(|l| l.split_once(what))
                .unwrap_or_else(|| panic!("no '{what}' in the log: {log:?}"));
            line.1.trim().parse().expect("a socket address")
        };
        let (tcp, http) = (
            addr("listening for TCP clients on "),
            addr("listening for HTTP and WebSocket clients on "),
        );
        let pid = proc.pid();
        Daemon {
            proc,
            pid,
            tcp,
            http,
            log,
        }
    }

    /// A field of `/proc/PID/status` (the number before any unit).
    fn status(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid))
    }

    fn threads(&self) -> u64 {
        self.status("Threads")
    }

    /// Resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        self.status("VmRSS")
    }

    /// Open descriptors.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .count()
    }

    /// One series of `/metrics`.
    fn metric(&self, series: &str) -> u64 {
        let resp = http_get(self.http, "/metrics");
        let (_, body) = resp.split_once("\r\n\r\n").expect("a complete response");
        metric(body, series)
    }

    /// Waits until the threads and descriptors are back to `(threads, fds)`.
    fn settle_to(&self, threads: u64, fds: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = (self.threads(), self.fds());
            if now == (threads, fds) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "threads and descriptors are {now:?}, not back to {:?}",
                (threads, fds)
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server with SIGTERM; returns its whole log.
    fn stop(mut self) -> String {
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.wait(TIMEOUT);
        assert!(status.success(), "mist exited with {status}");
        let mut log = self.log.concat();
        log.push_str(&Proc::rest(&self.proc.stderr));
        log
    }
}

// ---------------------------------------------------------------------------------------------
// B. Dead and stuck peers; leaks
// ---------------------------------------------------------------------------------------------

/// A subscriber that stops reading and never closes: once its socket is full, its writer
/// thread blocks; after `write_timeout` (1 s here) of no progress it is disconnected, counted
/// in `write_timeouts`, and both of its threads end. A publisher is never held up meanwhile.
#[test]
fn a_subscriber_that_stops_reading_is_dropped_after_write_timeout() {
    let d = Daemon::start(
        "write-timeout",
        "write_timeout 1\nclient_queue_bytes 1048576\n",
    );
    let (threads0, fds0) = (d.threads(), d.fds());
    let mut p = LineClient::connect(d.tcp);
    p.ping();
    let mut stuck = small_window_client(d.tcp);
    stuck.send("subscribe a");
    stuck.ping();
    let data = "x".repeat(64 * 1024);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut rounds = 0;
    while d.metric("mist_write_timeouts_total") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no write timeout"
        );
        let t = Instant::now();
        for _ in 0..8 {
            p.send(&format!("publish a {data}"));
        }
        p.ping();
        slowest = slowest.max(t.elapsed());
        rounds += 1;
    }
    let took = started.elapsed();
    eprintln!(
        "write timeout after {took:?}; {rounds} publish rounds of 512 KiB, slowest {slowest:?}"
    );
    assert!(took >= Duration::from_secs(1), "{took:?}");
    // The publisher went on while the subscriber's writer was blocked.
    assert!(rounds >= 5, "{rounds} rounds");
    assert!(slowest < Duration::from_millis(900), "{slowest:?}");
    // The stuck subscriber is disconnected: what it reads now ends.
    let mut sink = [0u8; 64 * 1024];
    loop {
        match stuck.stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the stuck subscriber was not disconnected: {e}"),
        }
    }
    assert_eq!(d.metric("mist_connections{transport=\"tcp\"}"), 1);
    assert_eq!(d.metric("mist_write_timeouts_total"), 1);
    p.ping();
    drop(p);
    drop(stuck);
    d.settle_to(threads0, fds0, TIMEOUT);
    let log = d.stop();
    assert!(log.contains("peer read nothing for 1s, closing"), "{log}");
}

/// The process's scheduler state, the letter after the name in `/proc/PID/stat`.
fn proc_state(pid: libc::pid_t) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').expect("a name in parentheses") + 1..];
    after_name.trim_start().chars().next().expect("a state")
}

/// Stopping and continuing the server (SIGSTOP/SIGCONT, as a debugger or `strace -p` does)
/// interrupts every blocked socket call that has a timeout with EINTR instead of restarting
/// it. Connections must come through that as if nothing happened.
#[test]
fn stopping_and_continuing_the_server_keeps_its_connections() {
    let mut d = Daemon::start("stop-cont", "");
    let mut admin = LineClient::connect(d.tcp);
    admin.send("register a tok");
    admin.ping();
    let mut sub = LineClient::connect(d.tcp);
    sub.send("subscribe a");
    sub.ping();
    let mut w = ws(d.http, "tok");
    call(
        &mut w,
        r#"{"command":"subscribe","tags":["a"]}"#,
        r#"{"success":true,"command":"subscribe"}"#,
    );
    call(&mut w, WS_PING, WS_PONG);
    // Every connection's reader is now blocked in a read.
    d.proc.signal(libc::SIGSTOP);
    wait_until("the server stops", TIMEOUT, || proc_state(d.pid) == 'T');
    d.proc.signal(libc::SIGCONT);
    wait_until("the server runs again", TIMEOUT, || {
        proc_state(d.pid) != 'T'
    });
    admin.send("publish a after");
    admin.ping();
    sub.expect("publish a after");
    sub.ping();
    assert_eq!(
        ws_text(&mut w),
        r#"{"keys":["a"],"data":"after"}"#,
        "the WebSocket subscriber was cut off"
    );
    call(&mut w, WS_PING, WS_PONG);
    drop((admin, sub, w));
    d.stop();
}

/// A client that sends commands as fast as it can and never reads the replies: once its unread
/// replies pass the backlog limit the server stops reading its commands (the replies are never
/// buffered without bound), and once a write has made no progress for `write_timeout` (1 s) it
/// is disconnected. Others are served throughout.
#[test]
fn a_client_that_never_reads_its_replies_is_dropped_after_write_timeout() {
    let server = TestServer::with(|c| c.write_timeout = 1);
    let ctx = server.context();
    let mut by = Bystander::new(&server);
    let flooder = small_window_client(server.tcp);
    let mut w = flooder.stream.try_clone().unwrap();
    let started = Instant::now();
    // 8 MiB of `ping`: far more replies than the backlog (2 MiB) and the socket hold.
    let writer = thread::spawn(move || {
        let pings = "ping\n".repeat((8 << 20) / 5);
        // Fails once the server gives up on the client; that is the point.
        let _ = w.write_all(pings.as_bytes());
    });
    wait_until("the write timeout", TIMEOUT, || {
        by.check();
        get(&ctx.metrics.write_timeouts) == 1
    });
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "{took:?}");
    wait_until("the flooder to be disconnected", TIMEOUT, || {
        get(&ctx.metrics.tcp_connections) == 1
    });
    writer.join().unwrap();
    by.check();
}

/// 10,000 connections come and go (most connect and close, some subscribe, publish, reset,
/// stop mid-line, or are WebSockets and HTTP requests): afterwards the server's threads and
/// descriptors are back to what they were before the first one.
#[test]
fn ten_thousand_connections_leave_no_threads_or_descriptors_behind() {
    let d = Daemon::start("leak", "");
    // Before any connection: the log line says the accept threads are running.
    let (threads0, fds0, rss0) = (d.threads(), d.fds(), d.rss_kib());
    let started = Instant::now();
    {
        let mut admin = LineClient::connect(d.tcp);
        admin.send("register a tok");
        admin.ping();
    }
    let (tcp, http) = (d.tcp, d.http);
    let workers: Vec<_> = (0..4)
        .map(|w| {
            thread::spawn(move || {
                for i in (w..10_000).step_by(4) {
                    cycle(tcp, http, i);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("every cycle went as expected");
    }
    let cycles_took = started.elapsed();
    let peak_threads = d.threads();
    d.settle_to(threads0, fds0, Duration::from_secs(30));
    eprintln!(
        "10,000 connections in {cycles_took:?}, settled after {:?}; threads {threads0} \
         (just after the cycles: {peak_threads}), fds {fds0}, VmRSS {rss0} KiB -> {} KiB",
        started.elapsed(),
        d.rss_kib()
    );
    assert_eq!(d.metric("mist_connections{transport=\"tcp\"}"), 0);
    assert_eq!(d.metric("mist_connections{transport=\"websocket\"}"), 0);
    assert_eq!(d.metric("mist_subscriptions"), 0);
    d.settle_to(threads0, fds0, TIMEOUT);
    let log = d.stop();
    assert!(!log.contains("ERROR"), "{log}");
}

/// One connect/disconnect cycle of kind `i`.
fn cycle(tcp: SocketAddr, http: SocketAddr, i: usize) {
    match i % 20 {
        0 => {
            let mut c = LineClient::connect(tcp);
            c.send(&format!("subscribe a,c{i}"));
            c.ping();
        }
        1 => {
            let mut c = LineClient::connect(tcp);
            c.send(&format!("publish a,c{i} x"));
            c.ping();
        }
        2 => {
            // A WebSocket that closes properly.
            let mut w = ws(http, "tok");
            call(&mut w, WS_PING, WS_PONG);
            w.close(None).unwrap();
            while w.read().is_ok() {}
        }
        3 => {
            // A WebSocket that subscribes (deliveries may come before the reply), then just
            // goes away.
            let mut w = ws(http, "tok");
            ws_send(&mut w, r#"{"command":"subscribe","tags":["a"]}"#);
            let before = ws_sync(&mut w);
            assert!(
                before.contains(&r#"{"success":true,"command":"subscribe"}"#.to_string()),
                "{before:?}"
            );
        }
        // From an address of its own: ten unknown tokens lock it out (see `security.rs`),
        // and the other cycles' upgrades must not be refused for that. 401, then 429.
        4 => {
            let from = std::net::IpAddr::from([127, 0, 0, 3]);
            let refused = crate::support::try_ws_connect_from(from, http, Some("nope"), None, &[]);
            assert!(matches!(refused.err(), Some(401 | 429)));
        }
        5 => assert!(http_get(http, "/ping").starts_with("HTTP/1.1 200 OK\r\n")),
        6 => {
            // A reset instead of a close, with a subscription in place.
            let mut c = LineClient::connect(tcp);
            c.send("subscribe a");
            c.sync();
            socket2::SockRef::from(&c.stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        7 => {
            // Half a line, then gone.
            let mut c = raw_connect(tcp);
            // (A last line without `\n` still counts: this publishes to `h` when it closes.)
            c.write_all(b"publish h half a li").unwrap();
        }
        8 => {
            // Closes its sending side, reads the reply, then the server closes.
            let mut c = raw_connect(tcp);
            c.write_all(b"ping").unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            assert_eq!(read_response(&mut c), "pong\n");
        }
        _ => drop(raw_connect(tcp)),
    }
}

// ---------------------------------------------------------------------------------------------
// E. Memory under endless lines and slow consumers
// ---------------------------------------------------------------------------------------------

/// Four clients each send a 16 MiB line without a newline at once, on the default 1 MiB
/// `max_line_bytes`. Each reader's buffer stops growing at the line limit (1 MiB + 2 bytes), so
/// the server's resident memory grows by at most about 4 MiB for the buffers, plus allocator
/// slack; buffering the lines would cost 64 MiB.
#[test]
fn endless_lines_keep_the_servers_memory_bounded() {
    let d = Daemon::start("endless", "");
    let mut by = LineClient::connect(d.tcp);
    by.ping();
    let rss0 = d.rss_kib();
    let chunk = vec![b'x'; 1 << 20];
    let mut clients: Vec<LineClient> = (0..4).map(|_| LineClient::connect(d.tcp)).collect();
    let mut peak = rss0;
    for mib in 0..16 {
        for c in &mut clients {
            c.send_raw(&chunk);
        }
        by.ping();
        peak = peak.max(d.rss_kib());
        if mib == 1 {
            for c in &mut clients {
                c.expect("error line too long (max_line_bytes 1048576)");
            }
        }
    }
    for c in &mut clients {
        c.send_raw(b"\nping\n");
        c.expect("pong");
    }
    let grew = peak.saturating_sub(rss0);
    eprintln!("16 MiB lines x 4: VmRSS {rss0} KiB, peak {peak} KiB (+{grew} KiB)");
    assert!(grew < 12 * 1024, "VmRSS grew by {grew} KiB");
}

/// The numbers of `stalled_subscriber_under_one_mib_messages_keeps_memory_bounded`.
const BIG: usize = 1 << 20;
const BIG_MESSAGES: usize = 160;

/// One subscriber stops reading (a small receive window, so the kernel holds little for it)
/// while a publisher sends 160 messages of 1 MiB. With `client_queue_bytes` 8 MiB, the
/// server's resident memory stays under a budget that does not depend on how much is
/// published:
///
/// - the stalled client's queue: at most 8 MiB of message batches (`client_queue_bytes`);
/// - the publisher's read buffer and the batch being built from it: at most 2 MiB each
///   (`max_line_bytes` 2 MiB: one read holds at most one longest line);
/// - slack for the allocator (freed megabyte blocks are not always returned to the system at
///   once) and the thread stacks: 8 MiB.
///
/// Socket buffers are kernel memory and not in VmRSS, so the bound does not depend on the
/// kernel's buffer sizes. Without the byte bound the queue alone would hold the 16,384
/// messages of `client_queue`, 16 GiB. When the subscriber reads again it gets what was
/// queued, then one notice counting exactly the messages it lost.
#[test]
fn stalled_subscriber_under_one_mib_messages_keeps_memory_bounded() {
    let d = Daemon::start(
        "slow-consumer",
        "max_line_bytes 2097152\nclient_queue_bytes 8388608\nwrite_timeout 120\n",
    );
    let mut stalled = small_window_client(d.tcp);
    stalled.send("subscribe a");
    stalled.ping();
    let mut p = LineClient::connect(d.tcp);
    // A first round, so that the publisher's buffers and threads exist before measuring.
    p.send("publish b warm-up");
    p.ping();
    let rss0 = d.rss_kib();
    let mut line = b"publish a ".to_vec();
    line.resize(line.len() + BIG, b'm');
    line.push(b'\n');
    let mut peak = rss0;
    let started = Instant::now();
    for i in 0..BIG_MESSAGES {
        // Each message is distinct: its number ends the data.
        let n = format!("{i:06}");
        let end = line.len() - 1;
        line[end - 6..end].copy_from_slice(n.as_bytes());
        p.send_raw(&line);
        if i % 8 == 7 {
            p.ping();
            peak = peak.max(d.rss_kib());
        }
    }
    p.ping();
    let published = started.elapsed();
    peak = peak.max(d.rss_kib());
    let budget_kib = (8 + 2 * 2 + 8) * 1024;
    let grew = peak.saturating_sub(rss0);
    eprintln!(
        "{BIG_MESSAGES} x 1 MiB to a stalled subscriber in {published:?}: VmRSS {rss0} KiB, \
         peak {peak} KiB (+{grew} KiB, budget {budget_kib} KiB)"
    );
    assert!(grew < budget_kib, "VmRSS grew by {grew} KiB");
    let drops = d.metric("mist_drops_total");
    assert!(drops > 0, "nothing was dropped");

    // The subscriber reads again: a prefix of the messages in order, then one notice for the
    // rest (queued once reading made room), then nothing more.
    let mut delivered = 0;
    let notice = loop {
        let l = stalled.line_bytes();
        if let Some(rest) = l.strip_prefix(b"publish a ") {
            assert_eq!(rest.len(), BIG);
            assert_eq!(&rest[BIG - 6..], format!("{delivered:06}").as_bytes());
            delivered += 1;
        } else {
            break String::from_utf8(l).unwrap();
        }
    };
    let lost = BIG_MESSAGES - delivered;
    assert_eq!(
        notice,
        format!("error slow consumer: dropped {lost} messages")
    );
    stalled.ping();
    assert_eq!(drops, lost as u64);
    assert!(
        delivered > 0 && lost > 0,
        "{delivered} delivered, {lost} lost"
    );
    eprintln!("the stalled subscriber got {delivered} messages and a notice for {lost}");
}

// ---------------------------------------------------------------------------------------------
// F. Secrets stay out of the log
// ---------------------------------------------------------------------------------------------

/// Distinctive strings a full session uses as tokens and data; none may reach the log.
struct Secrets {
    admin: String,
    wrong_admin: String,
    token: String,
    header_token: String,
    wrong_token: String,
    data: String,
}

impl Secrets {
    fn new() -> Secrets {
        let n = std::process::id();
        Secrets {
            admin: format!("AdminSecret{n}xq"),
            wrong_admin: format!("WrongAdmin{n}zv"),
            token: format!("TokenSecret{n}kw"),
            header_token: format!("HeaderToken{n}jy"),
            wrong_token: format!("WrongToken{n}pf"),
            data: format!("DataSecret{n}gb"),
        }
    }

    fn all(&self) -> [&str; 6] {
        [
            &self.admin,
            &self.wrong_admin,
            &self.token,
            &self.header_token,
            &self.wrong_token,
            &self.data,
        ]
    }
}

/// A full session against the server in `d` with the secrets of `s`: admin auth (wrong, then
/// right), every token command, publishes, WebSocket connections with the token in the query
/// and in the header, a refused WebSocket, and revocation.
fn secret_session(d: &Daemon, s: &Secrets) {
    let mut admin = LineClient::connect(d.tcp);
    admin.send(&format!("auth {}", s.wrong_admin));
    admin.expect("error wrong admin token");
    admin.send(&format!("register a {}", s.token));
    admin.expect("error admin commands need auth ADMIN_TOKEN first");
    admin.send(&format!("auth {}", s.admin));
    admin.send(&format!("register a {}", s.token));
    admin.send(&format!("register a {}", s.token));
    admin.expect("error token already exists");
    admin.send(&format!("register a,b {}", s.header_token));
    admin.send(&format!("set b,c {}", s.token));
    admin.send(&format!("unset c {}", s.token));
    admin.send(&format!("tags {}", s.token));
    admin.expect(&format!("tags {} a,b", s.token));
    admin.send(&format!("tags {}", s.wrong_token));
    admin.expect("error unknown token");
    admin.ping();

    let mut tcp_sub = LineClient::connect(d.tcp);
    tcp_sub.send("subscribe a");
    tcp_sub.ping();
    let mut in_query =
        crate::support::try_ws_connect(d.http, None, Some(&s.token)).expect("token in the query");
    let mut in_header = ws(d.http, &s.header_token);
    for w in [&mut in_query, &mut in_header] {
        call(
            w,
            r#"{"command":"subscribe","tags":["a"]}"#,
            r#"{"success":true,"command":"subscribe"}"#,
        );
    }
    assert_eq!(
        crate::support::try_ws_connect(d.http, Some(&s.wrong_token), None).err(),
        Some(401)
    );
    assert_eq!(
        crate::support::try_ws_connect(d.http, None, Some(&s.wrong_token)).err(),
        Some(401)
    );
    let mut p = LineClient::connect(d.tcp);
    p.send(&format!("publish a {}", s.data));
    p.send(&format!("publish a,b more {} data", s.data));
    p.ping();
    assert_eq!(
        tcp_sub.sync(),
        [
            format!("publish a {}", s.data),
            format!("publish a,b more {} data", s.data)
        ]
    );
    for w in [&mut in_query, &mut in_header] {
        assert_eq!(
            ws_text(w),
            format!(r#"{{"keys":["a"],"data":"{}"}}"#, s.data)
        );
        assert_eq!(ws_sync(w).len(), 1);
    }
    // Revocation: by unset, then by unregister.
    admin.send(&format!("unset a {}", s.header_token));
    admin.ping();
    assert_eq!(
        ws_text(&mut in_header),
        r#"{"success":true,"command":"unsubscribe","tags":["a"],"reason":"access revoked"}"#
    );
    admin.send(&format!("unregister {}", s.token));
    admin.ping();
    expect_closed(&mut in_query, 1008, "token revoked");
    admin.send(&format!("unregister {}", s.header_token));
    admin.ping();
}

/// Runs the session at `level` with `store_conf` and checks the whole log for the secrets.
/// The log must say something (the wrong admin token, and at DEBUG each connection), so that
/// an empty log cannot pass.
fn no_secrets_in_the_log(level: &str, store_conf: &str) {
    let s = Secrets::new();
    let d = Daemon::start(
        "secrets",
        &format!("log_level {level}\nadmin_token {}\n{store_conf}", s.admin),
    );
    secret_session(&d, &s);
    let log = d.stop();
    assert!(log.contains(": wrong admin token"), "{log}");
    assert!(log.contains("WebSocket refused: unknown token"), "{log}");
    if level == "DEBUG" {
        assert!(log.contains(": connected"), "{log}");
        assert!(log.contains(": error unknown token"), "{log}");
    }
    for secret in s.all() {
        assert!(
            !log.contains(secret),
            "'{secret}' is in the {level} log:\n{log}"
        );
    }
}

#[test]
fn tokens_and_data_never_reach_the_log_at_info() {
    no_secrets_in_the_log("INFO", "");
}

#[test]
fn tokens_and_data_never_reach_the_log_at_debug() {
    no_secrets_in_the_log("DEBUG", "");
}

/// With the tokens in PostgreSQL: the client library logs every statement's parameters (the
/// tokens) at DEBUG; mist's logger drops those lines.
#[test]
fn tokens_never_reach_the_log_at_debug_with_postgres() {
    let db = crate::pgsupport::PgDb::create();
    let (host, port) = db.config.address.rsplit_once(':').unwrap();
    let conf = format!(
        "auth_store postgres\npg_address {host}:{port}\npg_user {}\npg_database {}\n",
        db.config.user, db.config.database
    );
    no_secrets_in_the_log("DEBUG", &conf);
    no_secrets_in_the_log("INFO", &conf);
}

// ---------------------------------------------------------------------------------------------
// G. A panic stays in its connection
// ---------------------------------------------------------------------------------------------

/// The real (debug) binary: a connection thread that panics (`debug-panic`, a fault hook of
/// debug builds) is logged with the peer's address, its connection closes, the counts go back
/// down, and everyone else is served as before.
#[cfg(debug_assertions)]
#[test]
fn a_panicking_connection_is_logged_with_its_peer_and_ends_only_itself() {
    let mut d = Daemon::start("panic", "");
    let (threads0, fds0) = (d.threads(), d.fds());
    let mut sub = LineClient::connect(d.tcp);
    sub.send("subscribe a");
    sub.ping();
    for round in 0..3 {
        let mut doomed = LineClient::connect(d.tcp);
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
        let seen = Proc::lines_until(&d.proc.stderr, |l| l.contains(&want));
        let line = seen.last().unwrap();
        assert!(line.contains("[ERROR]"), "{line}");
        assert!(
            line.ends_with(": debug-panic requested by the client\n"),
            "{line}"
        );
        d.log.extend(seen);
        wait_until("the panicked connection to be counted out", TIMEOUT, || {
            d.metric("mist_connections{transport=\"tcp\"}") == 1
        });
        assert_eq!(d.metric("mist_subscriptions"), 1, "round {round}");
        // The others are served: a new client publishes, the old subscriber receives.
        let mut p = LineClient::connect(d.tcp);
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
#[cfg(debug_assertions)]
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
        wait_until("the slot to come back", TIMEOUT, || ctx.conns.len() == 2);
        assert_eq!(get(&ctx.metrics.subscriptions), 1);
        assert_eq!(get(&ctx.metrics.tcp_connections), 2);
        by.check();
    }
    let mut p = server.client();
    p.send("publish a still here");
    p.ping();
    assert_eq!(sub.sync(), ["publish a still here"]);
}

// ---------------------------------------------------------------------------------------------
// F. Admin commands from a non-loopback address
// ---------------------------------------------------------------------------------------------

/// A network namespace of this test's own, joined to this one by a veth pair with a /30 from
/// 198.18.0.0/15 (the range set aside for network tests), never this machine's own network.
/// Removed when dropped, also when the test fails.
struct NetNs {
    name: String,
    host_if: String,
    host_ip: std::net::Ipv4Addr,
}

fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl NetNs {
    /// `None` when namespaces cannot be made here (not root, no `ip`, no permission).
    fn create() -> Option<NetNs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let pid = std::process::id();
        for attempt in 0..4u32 {
            let block = (pid.wrapping_mul(4).wrapping_add(attempt)) % (1 << 15);
            let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + block * 4;
            let (host_ip, ns_ip) = (
                std::net::Ipv4Addr::from(base + 1),
                std::net::Ipv4Addr::from(base + 2),
            );
            let ns = NetNs {
                name: format!("mist-test-{pid}-{attempt}"),
                host_if: format!("mh{pid}x{attempt}"),
                host_ip,
            };
            let ns_if = format!("mn{pid}x{attempt}");
            let (host_cidr, ns_cidr) = (format!("{host_ip}/30"), format!("{ns_ip}/30"));
            let ok = ip(&["netns", "add", &ns.name])
                && ip(&[
                    "link",
                    "add",
                    &ns.host_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &ns_if,
                ])
                && ip(&["link", "set", &ns_if, "netns", &ns.name])
                && ip(&["addr", "add", &host_cidr, "dev", &ns.host_if])
                && ip(&["link", "set", &ns.host_if, "up"])
                && ip(&[
                    "netns", "exec", &ns.name, "ip", "addr", "add", &ns_cidr, "dev", &ns_if,
                ])
                && ip(&["netns", "exec", &ns.name, "ip", "link", "set", &ns_if, "up"]);
            if ok {
                return Some(ns);
            }
            // Dropping `ns` removes whatever part was made.
        }
        None
    }

    /// Runs the mist client inside the namespace (bounded by `timeout`).
    fn mist(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("timeout")
            .args(["20", "ip", "netns", "exec", &self.name, crate::cli::MIST])
            .args(args)
            .env_remove("MIST_ADMIN_TOKEN")
            .output()
            .expect("run the client in the namespace")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        ip(&["link", "del", &self.host_if]);
        ip(&["netns", "del", &self.name]);
    }
}

/// A client in another network namespace reaches the server from a non-loopback address:
/// without an `admin_token` its admin commands are refused (and other commands work); with one,
/// they work after `auth`. Needs root and `ip netns`; elsewhere the pure rule is covered by
/// `auth::admin_allowed`'s unit test, and this test says it was skipped.
#[test]
fn admin_commands_from_another_network_namespace() {
    let Some(ns) = NetNs::create() else {
        eprintln!("skipped: cannot create a network namespace here (needs root and `ip netns`)");
        return;
    };
    let addr = format!("{}:0", ns.host_ip);
    let open = TestServer::with(|c| c.tcp_listen_address = addr.clone());
    let tcp = open.tcp.to_string();
    let out = ns.mist(&["--tcp-addr", &tcp, "register", "a", "tok"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "mist: admin commands are only allowed from loopback (no admin_token set)\n"
    );
    let out = ns.mist(&["--tcp-addr", &tcp, "ping"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "pong\n")
    );
    // Nothing was registered.
    assert_eq!(
        open.context().tokens.store().tags("tok"),
        Err(mist::auth::StoreError::UnknownToken)
    );

    let guarded = TestServer::with(|c| {
        c.tcp_listen_address = addr.clone();
        c.admin_token = Some("s3cret".into());
    });
    let tcp = guarded.tcp.to_string();
    let out = ns.mist(&["--tcp-addr", &tcp, "register", "a", "tok"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "mist: admin commands need auth ADMIN_TOKEN first\n"
    );
    let out = ns.mist(&[
        "--tcp-addr",
        &tcp,
        "--admin-token",
        "s3cret",
        "register",
        "a",
        "tok",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        guarded.context().tokens.store().tags("tok"),
        Ok(vec!["a".to_string()])
    );
}
