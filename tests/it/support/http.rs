//! HTTP by hand: raw connections, requests written byte by byte, responses read to the end,
//! the exact responses mist writes, and `/metrics`.

use super::TIMEOUT;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// A raw connection with the usual timeouts.
pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// A TCP connection to `addr` from the local address `from` (any of 127.0.0.0/8 is
/// loopback: a second client address for tests of per-address limits), with the usual
/// timeouts.
pub fn connect_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
    sock.connect(&addr.into()).expect("connect");
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// Reads until the peer closes; a reset after the response counts as the end too.
pub fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            // A signal meant for another test's child process can interrupt the read.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading the response: {e}; got so far {out:?}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `request` as it is on a connection of its own; the whole response.
pub fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = raw_connect(addr);
    s.write_all(request).expect("write the request");
    read_response(&mut s)
}

/// `GET path` on a connection of its own; the whole response.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: mist\r\n\r\n").as_bytes(),
    )
}

/// A plain-text response as mist writes it; `extra` are more header lines, each ending in
/// `\r\n`.
pub fn plain(status: &str, body: &str, extra: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\
         content-type: text/plain; charset=utf-8\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// The body of `GET /metrics`, after checking the status line and content type.
pub fn scrape(addr: SocketAddr) -> String {
    let resp = http_get(addr, "/metrics");
    let (head, body) = resp.split_once("\r\n\r\n").expect("a complete response");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("\r\ncontent-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// The value of one series (`name{labels}`) in a Prometheus text body.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// Polls `/metrics` until `series` has the value `want`: for gauges that change after a
/// connection has ended, where no reply can serve as a barrier.
pub fn wait_metric(addr: SocketAddr, series: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = metric(&scrape(addr), series);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {got}, want {want}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A WebSocket upgrade request written by hand: `query` follows the path, `token` goes in
/// `X-Auth-Token`, and `headers` are more header lines.
pub fn upgrade_request(query: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut extra = Vec::new();
    if let Some(t) = token {
        extra.extend_from_slice(format!("X-Auth-Token: {t}\r\n").as_bytes());
    }
    for (name, value) in headers {
        extra.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    upgrade_request_bytes(query, &extra)
}

/// A WebSocket upgrade request for `/subscribe/websocket{query}`, with `extra` header lines
/// (each ending in CRLF) written byte for byte, so they can hold what is not UTF-8.
pub fn upgrade_request_bytes(query: &str, extra: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "GET /subscribe/websocket{query} HTTP/1.1\r\nHost: mist\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    .into_bytes();
    r.extend_from_slice(extra);
    r.extend_from_slice(b"\r\n");
    r
}

/// Upgrades a raw connection by hand and returns it with the response head (read byte by
/// byte, so nothing after the head is consumed).
pub fn raw_upgrade(http: SocketAddr, token: &str, headers: &[(&str, &str)]) -> (TcpStream, String) {
    raw_upgrade_from(IpAddr::from([127, 0, 0, 1]), http, token, headers)
}

/// [`raw_upgrade`] from the local address `from`.
pub fn raw_upgrade_from(
    from: IpAddr,
    http: SocketAddr,
    token: &str,
    headers: &[(&str, &str)],
) -> (TcpStream, String) {
    let mut s = connect_from(from, http);
    s.write_all(&upgrade_request("", Some(token), headers))
        .unwrap();
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
