//! The HTTP port's limits: request heads in progress per client address and in total, the
//! number of headers, tokens sent as raw UTF-8, and the listen backlog of every listener.

use crate::support::http::{metric, plain, read_response, upgrade_request_bytes};
use crate::support::{self, LineClient, TIMEOUT, TestServer, wait_until, ws_send, ws_text};
use mist::{MAX_HEADERS, MAX_PENDING_HEADS, MAX_PENDING_HEADS_PER_ADDRESS};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Instant;
use tungstenite::WebSocket;
use tungstenite::protocol::Role;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A connection to `to` from the loopback address `from` (all of 127.0.0.0/8 is loopback, so
/// one machine can be many clients).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    support::connect_from(from.parse().expect("an IP address"), to)
}

/// Sends `request` from `from` and returns the whole response.
fn request_from(from: &str, http: SocketAddr, request: &[u8]) -> String {
    let mut s = connect_from(from, http);
    s.write_all(request).unwrap();
    read_response(&mut s)
}

fn ping_from(from: &str, http: SocketAddr) -> String {
    request_from(from, http, b"GET /ping HTTP/1.1\r\nHost: mist\r\n\r\n")
}

/// Sends an upgrade request from `from`. On `101` returns the WebSocket, proven alive by a
/// ping and its reply; otherwise the whole response.
fn upgrade_from(from: &str, http: SocketAddr, request: &[u8]) -> Result<(), String> {
    let mut s = connect_from(from, http);
    s.write_all(request).unwrap();
    // The response head, byte by byte: nothing past it may be taken from the WebSocket.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading the upgrade response: {e}; got {head:?}"),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101 ") {
        return Err(head + &read_response(&mut s));
    }
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    let mut ws = WebSocket::from_raw_socket(s, Role::Client, None);
    ws_send(&mut ws, r#"{"command":"ping"}"#);
    assert_eq!(ws_text(&mut ws), r#"{"success":true,"command":"ping"}"#);
    Ok(())
}

/// Registers `token` for `tags` over the line port.
fn register(server: &TestServer, tags: &str, token: &str) {
    let mut admin = server.client();
    admin.send(&format!("register {tags} {token}"));
    admin.ping();
}

/// `n` connections from `from`, each of which sent the start of a request head and stalls.
fn stalled_heads(from: &str, http: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = connect_from(from, http);
            s.write_all(b"GET /ping HTTP/1.1\r\nHost: mist\r\n")
                .unwrap();
            s
        })
        .collect()
}

/// Waits until `want` of `conns` have had a complete response (the server answers and closes
/// them), and returns those responses. `poll(2)` is the barrier: the connections that stall
/// never become readable.
pub(crate) fn answered(conns: &[TcpStream], want: usize) -> Vec<String> {
    let mut got: HashMap<RawFd, Vec<u8>> = HashMap::new();
    let mut done = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    for s in conns {
        s.set_nonblocking(true).unwrap();
    }
    while done.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {} of the {want} expected responses came: {:?}",
            done.len(),
            done.first()
        );
        let mut fds: Vec<libc::pollfd> = conns
            .iter()
            .map(|s| s.as_raw_fd())
            .filter(|fd| !done.iter().any(|(d, _)| d == fd))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd of the length passed.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                left.as_millis().min(1000) as libc::c_int,
            )
        };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        for p in fds.iter().filter(|p| p.revents != 0) {
            let s = conns.iter().find(|s| s.as_raw_fd() == p.fd).unwrap();
            let buf = got.entry(p.fd).or_default();
            let mut chunk = [0u8; 4096];
            loop {
                match (&*s).read(&mut chunk) {
                    Ok(0) => {
                        done.push((p.fd, String::from_utf8_lossy(buf).into_owned()));
                        break;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                        done.push((p.fd, String::from_utf8_lossy(buf).into_owned()));
                        break;
                    }
                    Err(e) => panic!("reading a response: {e}"),
                }
            }
        }
    }
    done.into_iter().map(|(_, r)| r).collect()
}

// ---------------------------------------------------------------------------------------------
// Request heads in progress
// ---------------------------------------------------------------------------------------------

/// 1,100 request heads that never finish, from one address, take that address's share of the
/// slots and no more: its further connections get 429 at once, and another address's `/ping`
/// and WebSocket upgrade go through meanwhile.
#[test]
fn one_address_cannot_starve_the_http_port() {
    mist::raise_fd_limit();
    let server = TestServer::with(|c| c.http_head_timeout = 600);
    register(&server, "a", "tok");
    let stalled = stalled_heads("127.0.0.1", server.http, 1_100);
    let refused = answered(&stalled, 1_100 - MAX_PENDING_HEADS_PER_ADDRESS);
    let want = plain(
        "429 Too Many Requests",
        "too many pending requests from this address\n",
        "",
    );
    for r in &refused {
        assert_eq!(r, &want);
    }
    let heads = server.context().pending_heads();
    assert_eq!(
        (heads.len(), heads.addresses()),
        (MAX_PENDING_HEADS_PER_ADDRESS, 1)
    );
    // The stalled address is still at its bound.
    assert_eq!(ping_from("127.0.0.1", server.http), want);
    // Another address is served as if nothing happened.
    assert_eq!(
        ping_from("127.0.0.2", server.http),
        plain("200 OK", "pong", "")
    );
    upgrade_from(
        "127.0.0.2",
        server.http,
        &upgrade_request_bytes("", b"X-Auth-Token: tok\r\n"),
    )
    .expect("the upgrade from 127.0.0.2 succeeds");
    // Each refusal is counted, by its reason.
    let text = server.context().metrics().render();
    assert_eq!(
        metric(&text, "mist_http_heads_refused_total{reason=\"address\"}"),
        (1_100 - MAX_PENDING_HEADS_PER_ADDRESS + 1) as u64
    );
    assert_eq!(
        metric(&text, "mist_http_heads_refused_total{reason=\"server\"}"),
        0
    );
    // Once the stalled clients leave, nothing is left of them in the server.
    drop(stalled);
    wait_until("the stalled heads are given up", TIMEOUT, || {
        heads.is_empty()
    });
    assert_eq!(heads.addresses(), 0);
    assert_eq!(
        ping_from("127.0.0.1", server.http),
        plain("200 OK", "pong", "")
    );
}

/// The total bound still holds over all addresses: when enough addresses hold all of theirs,
/// a new address gets 503 until some head is done.
#[test]
fn the_total_bound_holds_over_all_addresses() {
    mist::raise_fd_limit();
    let server = TestServer::with(|c| c.http_head_timeout = 600);
    let heads = server.context().pending_heads();
    let addresses = MAX_PENDING_HEADS / MAX_PENDING_HEADS_PER_ADDRESS;
    let mut stalled: Vec<Vec<TcpStream>> = (1..=addresses)
        .map(|i| {
            stalled_heads(
                &format!("127.0.1.{i}"),
                server.http,
                MAX_PENDING_HEADS_PER_ADDRESS,
            )
        })
        .collect();
    wait_until("every stalled head holds a slot", TIMEOUT, || {
        heads.len() == MAX_PENDING_HEADS
    });
    assert_eq!(heads.addresses(), addresses);
    assert_eq!(
        ping_from("127.0.0.2", server.http),
        plain("503 Service Unavailable", "too many pending requests\n", "")
    );
    let text = server.context().metrics().render();
    assert_eq!(
        metric(&text, "mist_http_heads_refused_total{reason=\"server\"}"),
        1
    );
    assert_eq!(
        metric(&text, "mist_http_heads_refused_total{reason=\"address\"}"),
        0
    );
    // One address gives up its heads: the others are served again.
    drop(stalled.pop());
    wait_until("the heads of one address are given up", TIMEOUT, || {
        heads.len() == MAX_PENDING_HEADS - MAX_PENDING_HEADS_PER_ADDRESS
    });
    assert_eq!(
        ping_from("127.0.0.2", server.http),
        plain("200 OK", "pong", "")
    );
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

/// `n` ordinary header lines of the kind proxies add, about 23 bytes each.
fn many_headers(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("X-Forwarded-Hop-{i}: 10.0.{}.{}\r\n", i / 256, i % 256).into_bytes())
        .collect()
}

/// A browser behind a few proxies sends many small headers: up to [`MAX_HEADERS`] are read,
/// for plain requests and upgrades; one more is refused with the real reason.
#[test]
fn a_hundred_headers_are_fine_and_too_many_are_named_as_such() {
    let server = TestServer::start();
    register(&server, "a", "tok");
    for n in [65, 100, MAX_HEADERS - 1] {
        let mut req = b"GET /ping HTTP/1.1\r\nHost: mist\r\n".to_vec();
        req.extend_from_slice(&many_headers(n));
        req.extend_from_slice(b"\r\n");
        assert_eq!(
            request_from("127.0.0.1", server.http, &req),
            plain("200 OK", "pong", ""),
            "{n} headers"
        );
    }
    // The upgrade request has 5 headers of its own and the token.
    let mut extra = b"X-Auth-Token: tok\r\n".to_vec();
    extra.extend_from_slice(&many_headers(100));
    upgrade_from("127.0.0.1", server.http, &upgrade_request_bytes("", &extra))
        .expect("an upgrade with 106 headers succeeds");

    let mut req = b"GET /ping HTTP/1.1\r\n".to_vec();
    req.extend_from_slice(&many_headers(MAX_HEADERS + 1));
    req.extend_from_slice(b"\r\n");
    assert_eq!(
        request_from("127.0.0.1", server.http, &req),
        plain(
            "431 Request Header Fields Too Large",
            &format!("too many headers (more than {MAX_HEADERS})\n"),
            ""
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// A token registered with non-ASCII characters can be sent raw, as UTF-8, in `X-Auth-Token`.
#[test]
fn a_raw_utf8_token_in_the_header_opens_a_websocket() {
    let server = TestServer::start();
    register(&server, "x", "tokéutf");
    upgrade_from(
        "127.0.0.1",
        server.http,
        &upgrade_request_bytes("", "X-Auth-Token: tokéutf\r\n".as_bytes()),
    )
    .expect("the raw UTF-8 token is accepted");
    // Percent-encoded in the query, as a browser sends it, too.
    upgrade_from(
        "127.0.0.1",
        server.http,
        &upgrade_request_bytes("?x-auth-token=tok%C3%A9utf", b""),
    )
    .expect("the percent-encoded token is accepted");
}

/// A header token that is not UTF-8 (Latin-1 `é` here) is named for what it is, and a valid
/// token in the query does not stand in for it: the header wins whenever it is given.
#[test]
fn a_header_token_that_is_not_utf8_is_refused_as_such() {
    let server = TestServer::start();
    register(&server, "x", "tokéutf");
    let metrics = server.context().metrics();
    let failures = crate::support::get(&metrics.auth_failures);
    let encoding = plain("401 Unauthorized", "invalid token encoding\n", "");
    for query in ["", "?x-auth-token=tok%C3%A9utf"] {
        assert_eq!(
            upgrade_from(
                "127.0.0.1",
                server.http,
                &upgrade_request_bytes(query, b"X-Auth-Token: tok\xe9utf\r\n"),
            ),
            Err(encoding.clone()),
            "query {query:?}"
        );
    }
    assert_eq!(
        upgrade_from(
            "127.0.0.1",
            server.http,
            &upgrade_request_bytes("?x-auth-token=tok%E9utf", b"")
        ),
        Err(encoding)
    );
    assert_eq!(
        upgrade_from("127.0.0.1", server.http, &upgrade_request_bytes("", b"")),
        Err(plain("401 Unauthorized", "missing token\n", ""))
    );
    assert_eq!(crate::support::get(&metrics.auth_failures), failures + 4);
}

// ---------------------------------------------------------------------------------------------
// Listen backlog
// ---------------------------------------------------------------------------------------------

/// The backlog of the listening socket of this process bound to `addr`, as the kernel reports
/// it: `TCP_INFO` on a listener gives its maximum accept queue in `tcpi_sacked`.
fn kernel_backlog(addr: SocketAddr) -> u32 {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap();
    for entry in fds {
        let Some(fd) = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        else {
            continue;
        };
        // SAFETY: only socket options are read through the borrowed descriptor; if another
        // test's thread closes it meanwhile, the calls fail with EBADF or look at another
        // socket, which the address check then skips.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let is_ours = sock.local_addr().ok().and_then(|a| a.as_socket()) == Some(addr)
            && sock.is_listener().unwrap_or(false);
        if !is_ours {
            continue;
        }
        // SAFETY: getsockopt writes at most `len` bytes into the zeroed struct we pass.
        let info = unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let rc = libc::getsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            );
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            info
        };
        return info.tcpi_sacked;
    }
    panic!("no listener on {addr} in this process");
}

/// Every listener queues as many connects as `max_connections` allows clients, up to the
/// kernel's cap: a burst of reconnecting clients is queued, not dropped and retried a
/// second later.
#[test]
fn every_listener_has_a_backlog_for_max_connections() {
    let cap: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("net.core.somaxconn is readable")
        .trim()
        .parse()
        .unwrap();
    for max in [2_000, 10_000] {
        let server = TestServer::with(|c| c.max_connections = max);
        let want = max.min(cap) as u32;
        assert_eq!(
            kernel_backlog(server.tcp),
            want,
            "TCP, max_connections {max}"
        );
        assert_eq!(
            kernel_backlog(server.http),
            want,
            "HTTP, max_connections {max}"
        );
    }
    // The fewest is what it always was.
    let server = TestServer::with(|c| c.max_connections = 10);
    assert_eq!(kernel_backlog(server.http), 128.min(cap) as u32);
    // The line port still works as before.
    LineClient::connect(server.tcp).ping();
}
