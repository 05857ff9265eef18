//! The HTTP listener's connections: `/subscribe/websocket` (upgraded to a WebSocket session),
//! `/ping`, `/metrics` and the console's files (see [`crate::console`]); 404 for other paths,
//! 400 for what is not HTTP.
//!
//! A request head is read with a size limit ([`MAX_HEAD`], at most [`MAX_HEADERS`] headers) and
//! a deadline for the whole head (`http_head_timeout`), so a client dribbling bytes cannot hold
//! a thread. How many heads are read at once, in all and from one address, is bounded by the
//! server's [`PendingHeads`](crate::pending::PendingHeads). Heads are parsed by `httparse`;
//! responses are built from the `http` crate's types. One request per connection.

use crate::context::{Context, Slot};
use crate::metrics;
use crate::net;
use crate::pending::Refusal;
use crate::report::ErrorChain;
use crate::ws::{self, TokenError};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest request head accepted, in bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header fields a request head may have. Browsers send about 20, proxies add a few
/// each; Apache and Tomcat allow 100.
pub const MAX_HEADERS: usize = 128;
/// The WebSocket endpoint.
pub const WS_PATH: &str = "/subscribe/websocket";

/// Takes a new HTTP connection from the accept loop and serves it on its own thread.
///
/// The connection takes a `max_connections` slot from its first byte if one is free. One that
/// finds the server full is still answered, within the bounds on pending request heads: plain
/// requests (`/ping`, `/metrics`) are not clients, but its WebSocket upgrade gets 503.
pub fn accept(ctx: &Arc<Context>, stream: TcpStream, peer: SocketAddr) {
    let sock = Arc::new(stream);
    let live = ctx.track(&sock);
    let slot = ctx.reserve();
    let ctx2 = Arc::clone(ctx);
    // Kept to answer the client if its thread cannot be had.
    let answer = Arc::clone(&sock);
    let spawned = net::spawn(format!("mist-http {peer}"), net::WS_STACK, move || {
        let _live = live;
        if let Some(session) = handle(&ctx2, sock, peer, slot) {
            session.run(&ctx2);
        }
    });
    if let Err(e) = spawned {
        // Out of memory mappings, process ids or threads (see `capacity.rs`): refused like an
        // upgrade over max_connections. The request is not read; the accept loop must not
        // wait on this client.
        metrics::add(&ctx.metrics.thread_start_failures, 1);
        metrics::add(&ctx.metrics.connections_refused, 1);
        log::error!("{peer}: refused, cannot start a connection thread: {e}");
        let body = "server busy: no thread for this connection\n";
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\nconnection: close\r\n\
             content-type: text/plain; charset=utf-8\r\n\r\n{body}",
            body.len()
        );
        let _ = answer.set_write_timeout(Some(Duration::from_millis(100)));
        let _ = (&*answer).write_all(response.as_bytes());
        net::close_without_reset(&answer);
    }
}

/// Serves one connection accepted by another program: reads its HTTP request and answers it
/// as mist's HTTP listener would (`/subscribe/websocket`, `/ping`, `/metrics`, the console),
/// running the whole WebSocket session on the calling thread. Returns when the connection is
/// closed.
pub fn serve(ctx: &Arc<Context>, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let sock = Arc::new(stream);
    let _live = ctx.track(&sock);
    let slot = ctx.reserve();
    if let Some(session) = handle(ctx, sock, peer, slot) {
        session.run(ctx);
    }
}

/// A parsed request head: what routing needs, owned.
#[derive(Debug)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// Bytes read past the head (the start of the first WebSocket frame, say).
    pub rest: Vec<u8>,
}

/// Why no request head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("too many headers (more than {MAX_HEADERS})")]
    TooManyHeaders,
    #[error("request head not complete in time")]
    Timeout,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("connection closed before the request was complete")]
    Closed,
    #[error("read failed")]
    Io(#[source] io::Error),
}

impl HeadError {
    /// The status that answers it; `None` when nobody is left to answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => {
                Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            }
            HeadError::Timeout => Some(StatusCode::REQUEST_TIMEOUT),
            HeadError::Malformed(_) => Some(StatusCode::BAD_REQUEST),
            HeadError::Closed | HeadError::Io(_) => None,
        }
    }
}

/// Serves one HTTP connection: a plain request to the end, or a WebSocket upgrade up to its
/// admission. An admitted upgrade is returned, to be run by the caller once this function's
/// frames are off the stack: the session's thread keeps every stack page it ever touched, so
/// the upgrade's path is kept shallow (reading the head and plain answers have frames of their
/// own, never inlined here), and the session's idle thread holds two pages of stack.
#[inline(never)]
fn handle(
    ctx: &Arc<Context>,
    stream: Arc<TcpStream>,
    peer: SocketAddr,
    slot: Option<Slot>,
) -> Option<ws::Upgraded> {
    let head = receive(ctx, &stream, peer)?;
    if head.method == "GET" && head.path == WS_PATH {
        return upgrade(ctx, stream, peer, head, slot);
    }
    answer(ctx, &stream, &head);
    None
}

/// Reads a request head within the bounds on pending heads and `http_head_timeout`; answers
/// what could not be read.
#[inline(never)]
fn receive(ctx: &Arc<Context>, stream: &TcpStream, peer: SocketAddr) -> Option<Head> {
    log::debug!("{peer}: HTTP connection");
    let pending = match ctx.pending_heads.try_take(peer.ip()) {
        Ok(pending) => pending,
        Err(refusal) => {
            refuse_pending(ctx, stream, peer, refusal);
            return None;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(ctx.config.http_head_timeout);
    let head = read_head(stream, deadline);
    drop(pending);
    match head {
        Ok(head) => {
            let _ = stream.set_read_timeout(None);
            Some(head)
        }
        Err(e) => {
            log::debug!("{peer}: {}", ErrorChain(&e));
            if let Some(status) = e.status() {
                respond(stream, status, &format!("{e}\n"));
            }
            None
        }
    }
}

/// Answers a plain request: anything but a WebSocket upgrade.
#[inline(never)]
fn answer(ctx: &Context, stream: &TcpStream, head: &Head) {
    if head.method != "GET" {
        respond_with(
            stream,
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n",
            &[(header::ALLOW, "GET")],
        );
        return;
    }
    match head.path.as_str() {
        "/ping" => respond(stream, StatusCode::OK, "pong"),
        "/metrics" => {
            let body = ctx.metrics.render();
            respond_with(
                stream,
                StatusCode::OK,
                &body,
                &[(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            );
        }
        path => match crate::console::response(path, &head.headers) {
            Some(page) => send(stream, page),
            None => respond(stream, StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

/// Answers a connection that found no slot to read its head in: 429 when its address holds
/// all of its own, 503 when the whole server is at its bound; counted by reason. Only the
/// first refusal of a run of them is a warning, so that a flood of connections cannot flood
/// the log.
fn refuse_pending(ctx: &Context, stream: &TcpStream, peer: SocketAddr, refusal: Refusal) {
    let (status, body, why, counter) = match refusal {
        Refusal::Address { limit, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "too many pending requests from this address\n",
            format!("{limit} request heads are already in progress from this address"),
            &ctx.metrics.http_heads_refused_address,
        ),
        Refusal::Total { limit, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many pending requests\n",
            format!("{limit} request heads are already in progress"),
            &ctx.metrics.http_heads_refused_server,
        ),
    };
    metrics::add(counter, 1);
    if refusal.first() {
        log::warn!(
            "{peer}: {why}; answering {} to more until some finish",
            status.as_u16()
        );
    } else {
        log::debug!("{peer}: {why}; answered {}", status.as_u16());
    }
    respond(stream, status, body);
}

/// Reads and parses a request head, before `deadline`.
///
/// # Errors
/// The head is too large, too slow, malformed, or the connection ended.
pub fn read_head(mut stream: &TcpStream, deadline: Instant) -> Result<Head, HeadError> {
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(HeadError::Io)?;
        if len == buf.len() {
            buf.resize((buf.len() * 2).min(MAX_HEAD), 0);
        }
        let n = match stream.read(&mut buf[len..]) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::Timeout);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HeadError::Io(e)),
        };
        len += n;
        if let Some(head) = parse_head(&buf[..len])? {
            return Ok(head);
        }
        if len == MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Parses a complete head out of `buf`, or returns `None` when more bytes are needed. Pure.
///
/// # Errors
/// The bytes are not an HTTP/1.x request head.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    // On the heap (4 KiB): the thread that reads the head goes on to run the WebSocket
    // session, and every stack page it touches stays resident for as long as it lives.
    let mut slots = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| HeadError::Malformed(e.to_string()))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|e| HeadError::Malformed(e.to_string()))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        method: req.method.unwrap_or("").to_string(),
        path,
        query,
        headers,
        rest: buf[used..].to_vec(),
    }))
}

/// The token of a WebSocket request: the `X-Auth-Token` header, else the `x-auth-token` query
/// parameter (percent-decoded). The header's bytes are taken as they are when they are UTF-8,
/// so a token registered as `tokéutf` can be sent raw. A header that is there but not UTF-8 is
/// an error, and the query is then not looked at: the header wins whenever it is given, and a
/// request must not be let in on a different token than the one it put first. Pure.
///
/// # Errors
/// No token, or the winning one is not UTF-8.
pub fn token_of(head: &Head) -> Result<String, TokenError> {
    if let Some(v) = head.headers.get("x-auth-token") {
        return std::str::from_utf8(v.as_bytes())
            .map(str::to_string)
            .map_err(|_| TokenError::Encoding);
    }
    let query = head.query.as_deref().ok_or(TokenError::Missing)?;
    let value = query
        .split('&')
        .find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == "x-auth-token").then_some(v)
        })
        .ok_or(TokenError::Missing)?;
    String::from_utf8(percent_decode(value)).map_err(|_| TokenError::Encoding)
}

/// Decodes `%XX` escapes and `+` in a query value; invalid escapes are kept as they are.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// The `ws_allowed_origins` rule: with no list, every request passes (with or without an
/// `Origin`); with a list, the request's `Origin` must be one of its entries, ignoring ASCII
/// case. A request without `Origin` does not pass a list: browsers always send one on a
/// WebSocket upgrade, and other clients can be given an allowed value. Pure.
pub fn origin_allowed(allowed: &[String], origin: Option<&HeaderValue>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = origin.and_then(|o| o.to_str().ok()) else {
        return false;
    };
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(origin.trim()))
}

/// Checks a WebSocket upgrade request's handshake and origin, then hands the connection to
/// [`ws`] for admission; answers its refusal. What was admitted is returned, to be run.
fn upgrade(
    ctx: &Arc<Context>,
    stream: Arc<TcpStream>,
    peer: SocketAddr,
    mut head: Head,
    slot: Option<Slot>,
) -> Option<ws::Upgraded> {
    let h = &head.headers;
    let is_upgrade = header_has_token(h, header::UPGRADE, "websocket")
        && header_has_token(h, header::CONNECTION, "upgrade");
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).filter(|_| is_upgrade) else {
        respond_with(
            &stream,
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket\n",
            &[(header::UPGRADE, "websocket")],
        );
        return None;
    };
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        respond_with(
            &stream,
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version\n",
            &[(header::SEC_WEBSOCKET_VERSION, "13")],
        );
        return None;
    }
    if !origin_allowed(&ctx.config.ws_allowed_origins, h.get(header::ORIGIN)) {
        // Before the token is even looked at: a page on a foreign site learns nothing.
        metrics::add(&ctx.metrics.auth_failures, 1);
        let shown = h.get(header::ORIGIN).map_or("none".to_string(), |o| {
            crate::line::printable(o.as_bytes(), 80)
        });
        log::info!("{peer}: WebSocket refused: origin {shown} is not allowed");
        respond(&stream, StatusCode::FORBIDDEN, "origin not allowed\n");
        return None;
    }
    let key = key.as_bytes().to_vec();
    match ws::admit(ctx, slot, &stream, peer, token_of(&head)) {
        // Only the bytes read past the head go on: the head is freed when this returns, before
        // the session starts, so that an idle WebSocket does not keep its request's headers.
        Ok(conn) => Some(ws::Upgraded {
            conn,
            sock: stream,
            key,
            rest: std::mem::take(&mut head.rest),
        }),
        Err(refused) => {
            match refused.retry_after {
                Some(secs) => respond_with(
                    &stream,
                    refused.status,
                    &refused.body,
                    &[(header::RETRY_AFTER, &secs.to_string())],
                ),
                None => respond(&stream, refused.status, &refused.body),
            }
            None
        }
    }
}

/// Writes a plain response and closes the connection.
pub fn respond(stream: &TcpStream, status: StatusCode, body: &str) {
    respond_with(stream, status, body, &[]);
}

fn respond_with(
    stream: &TcpStream,
    status: StatusCode,
    body: &str,
    extra: &[(header::HeaderName, &str)],
) {
    let mut builder = Response::builder().status(status);
    if !extra.iter().any(|(n, _)| n == header::CONTENT_TYPE) {
        builder = builder.header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    }
    for (name, value) in extra {
        builder = builder.header(name, *value);
    }
    send(
        stream,
        builder
            .body(body)
            .expect("the headers are static or digits, all valid"),
    );
}

/// Writes a response, its head as [`response_head`] lays it out, and closes the connection.
fn send(mut stream: &TcpStream, response: Response<&str>) {
    let body = *response.body();
    let mut bytes = response_head(response);
    bytes.extend_from_slice(body.as_bytes());
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(&bytes).is_ok() {
        net::linger(stream);
    }
}

/// A response's head on the wire as mist writes every one: the status line, its
/// `Content-Length` (none on a `304`, which has no body) and `Connection: close`, then its own
/// headers and the blank line. The body follows it, except in the answer to `HEAD`.
pub(crate) fn response_head(mut response: Response<&str>) -> Vec<u8> {
    let mut headers = HeaderMap::with_capacity(response.headers().len() + 2);
    if response.status() != StatusCode::NOT_MODIFIED {
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(response.body().len()),
        );
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.extend(std::mem::take(response.headers_mut()));
    *response.headers_mut() = headers;
    head_bytes(&response)
}

/// The status line and headers of a response, as they are, and the blank line after them.
fn head_bytes(response: &Response<&str>) -> Vec<u8> {
    let status = response.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in response.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head_and_keeps_the_rest() {
        let raw = b"GET /subscribe/websocket?a=1&x-auth-token=t%20k HTTP/1.1\r\nHost: x\r\n\
                    X-Other: y\r\n\r\n\x81\x00";
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, WS_PATH);
        assert_eq!(head.query.as_deref(), Some("a=1&x-auth-token=t%20k"));
        assert_eq!(head.rest, b"\x81\x00");
        assert_eq!(token_of(&head).as_deref(), Ok("t k"));
    }

    #[test]
    fn header_token_wins_over_query() {
        let raw = b"GET /subscribe/websocket?x-auth-token=q HTTP/1.1\r\nX-Auth-Token: h\r\n\r\n";
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(token_of(&head).as_deref(), Ok("h"));
    }

    fn token_of_raw(raw: &[u8]) -> Result<String, TokenError> {
        token_of(&parse_head(raw).unwrap().unwrap())
    }

    #[test]
    fn a_utf8_token_in_the_header_is_taken_as_sent() {
        assert_eq!(
            token_of_raw("GET / HTTP/1.1\r\nX-Auth-Token: tokéutf\r\n\r\n".as_bytes()),
            Ok("tokéutf".to_string())
        );
        assert_eq!(
            token_of_raw("GET / HTTP/1.1\r\nx-auth-token: 鍵🔑\r\n\r\n".as_bytes()),
            Ok("鍵🔑".to_string())
        );
    }

    #[test]
    fn a_header_token_that_is_not_utf8_is_an_encoding_error_and_the_query_is_not_used() {
        // Latin-1 é: a byte HTTP allows in a header value, but no UTF-8 token.
        let raw = b"GET /?x-auth-token=q HTTP/1.1\r\nX-Auth-Token: tok\xe9\r\n\r\n";
        assert_eq!(token_of_raw(raw), Err(TokenError::Encoding));
        assert_eq!(
            token_of_raw(b"GET / HTTP/1.1\r\nX-Auth-Token: \xff\r\n\r\n"),
            Err(TokenError::Encoding)
        );
        assert_eq!(TokenError::Encoding.to_string(), "invalid token encoding");
    }

    #[test]
    fn query_tokens() {
        let q = |target: &str| token_of_raw(format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes());
        assert_eq!(q("/?x-auth-token=tok%C3%A9utf"), Ok("tokéutf".to_string()));
        assert_eq!(
            q("/?a=1&x-auth-token=t&x-auth-token=u"),
            Ok("t".to_string())
        );
        assert_eq!(q("/?x-auth-token=tok%E9"), Err(TokenError::Encoding));
        assert_eq!(q("/?x-auth-token"), Ok(String::new()));
        assert_eq!(q("/?other=1"), Err(TokenError::Missing));
        assert_eq!(q("/"), Err(TokenError::Missing));
        assert_eq!(TokenError::Missing.to_string(), "missing token");
    }

    fn head_with_headers(n: usize) -> Vec<u8> {
        let mut raw = b"GET /ping HTTP/1.1\r\n".to_vec();
        for i in 0..n {
            raw.extend_from_slice(format!("X-Forwarded-Hop-{i}: 10.0.0.{i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw
    }

    #[test]
    fn up_to_max_headers_are_read_and_more_are_refused_as_too_many() {
        for n in [64, 65, 100, MAX_HEADERS] {
            let head = parse_head(&head_with_headers(n)).unwrap().unwrap();
            assert_eq!(head.headers.len(), n);
        }
        let err = parse_head(&head_with_headers(MAX_HEADERS + 1)).unwrap_err();
        assert!(matches!(err, HeadError::TooManyHeaders), "{err:?}");
        assert_eq!(err.to_string(), "too many headers (more than 128)");
        // Known as soon as the extra header is there, before the head is complete.
        let mut partial = head_with_headers(MAX_HEADERS + 1);
        partial.truncate(partial.len() - 2);
        assert!(matches!(
            parse_head(&partial),
            Err(HeadError::TooManyHeaders)
        ));
    }

    #[test]
    fn partial_and_malformed_heads() {
        assert!(
            parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            parse_head(b"\x00\x01 nonsense\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn origins() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        // No list: anything goes, also no origin at all.
        assert!(origin_allowed(&[], None));
        assert!(origin_allowed(&[], Some(&v("https://evil.example"))));
        let list = vec!["https://app.example".to_string(), "null".to_string()];
        assert!(origin_allowed(&list, Some(&v("https://app.example"))));
        assert!(origin_allowed(&list, Some(&v("HTTPS://App.Example"))));
        assert!(origin_allowed(&list, Some(&v("null"))));
        assert!(!origin_allowed(&list, None));
        assert!(!origin_allowed(&list, Some(&v("https://app.example.evil"))));
        assert!(!origin_allowed(&list, Some(&v("https://app.example:444"))));
        assert!(!origin_allowed(&list, Some(&v("http://app.example"))));
        assert!(!origin_allowed(&list, Some(&v(""))));
        let not_utf8 = HeaderValue::from_bytes(b"https://app.example\xff").unwrap();
        assert!(!origin_allowed(&list, Some(&not_utf8)));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Cb+c"), b"a,b c");
        assert_eq!(percent_decode("bad%zz%"), b"bad%zz%");
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%41"), b"A");
        assert_eq!(percent_decode("%ff"), b"\xff");
    }

    #[test]
    fn response_bytes() {
        let r = Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(header::CONTENT_LENGTH, 3)
            .body("no\n")
            .unwrap();
        assert_eq!(
            head_bytes(&r),
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\n"
        );
    }

    #[test]
    fn every_response_says_its_length_and_close() {
        let ok = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body("{}\n")
            .unwrap();
        assert_eq!(
            response_head(ok),
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\
              content-type: application/json\r\n\r\n"
        );
        let not_modified = Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .body("")
            .unwrap();
        assert_eq!(
            response_head(not_modified),
            b"HTTP/1.1 304 Not Modified\r\nconnection: close\r\n\r\n"
        );
    }
}
