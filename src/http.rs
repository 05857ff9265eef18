//! The HTTP listener's connections: `/subscribe/websocket` (upgraded to a WebSocket session),
//! `/ping` and `/metrics`; 404 for other paths, 400 for what is not HTTP.
//!
//! A request head is read with a size limit ([`MAX_HEAD`]) and a deadline for the whole head
//! (`http_head_timeout`), so a client dribbling bytes cannot hold a thread. At most
//! [`MAX_PENDING_HEADS`] heads are read at once. Heads are parsed by `httparse`; responses are
//! built from the `http` crate's types. One request per connection.

use crate::context::{Context, Slot};
use crate::metrics;
use crate::net;
use crate::ws;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The largest request head accepted, in bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Request heads read at the same time; past it, new connections get 503 at once.
pub const MAX_PENDING_HEADS: usize = 1024;
/// The WebSocket endpoint.
pub const WS_PATH: &str = "/subscribe/websocket";

static PENDING_HEADS: AtomicUsize = AtomicUsize::new(0);

/// Takes a new HTTP connection from the accept loop and serves it on its own thread.
///
/// The connection takes a `max_connections` slot from its first byte if one is free. One that
/// finds the server full is still answered, on the budget of pending request heads: plain
/// requests (`/ping`, `/metrics`) are not clients, but its WebSocket upgrade gets 503.
pub fn accept(ctx: &Arc<Context>, stream: TcpStream, peer: SocketAddr) {
    let sock = Arc::new(stream);
    let live = ctx.track(&sock);
    let slot = ctx.reserve();
    let ctx2 = Arc::clone(ctx);
    let spawned = net::spawn(format!("mist-http {peer}"), net::WS_STACK, move || {
        let _live = live;
        handle(&ctx2, sock, peer, slot);
    });
    if let Err(e) = spawned {
        log::error!("{peer}: cannot start a connection thread: {e}");
    }
}

/// Serves one connection accepted by another program: reads its HTTP request and answers it
/// as mist's HTTP listener would (`/subscribe/websocket`, `/ping`, `/metrics`), running the
/// whole WebSocket session on the calling thread. Returns when the connection is closed.
pub fn serve(ctx: &Arc<Context>, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let sock = Arc::new(stream);
    let _live = ctx.track(&sock);
    let slot = ctx.reserve();
    handle(ctx, sock, peer, slot);
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
    #[error("request head not complete in time")]
    Timeout,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("connection closed before the request was complete")]
    Closed,
    #[error("read failed: {0}")]
    Io(io::Error),
}

/// Serves one HTTP connection to the end: a plain request, or a whole WebSocket session.
fn handle(ctx: &Arc<Context>, stream: Arc<TcpStream>, peer: SocketAddr, slot: Option<Slot>) {
    log::debug!("{peer}: HTTP connection");
    if PENDING_HEADS.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_HEADS {
        PENDING_HEADS.fetch_sub(1, Ordering::AcqRel);
        log::warn!("{peer}: too many request heads in progress, answered 503");
        respond(
            &stream,
            StatusCode::SERVICE_UNAVAILABLE,
            "too many pending requests\n",
        );
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(ctx.config.http_head_timeout);
    let head = read_head(&stream, deadline);
    PENDING_HEADS.fetch_sub(1, Ordering::AcqRel);
    let head = match head {
        Ok(h) => h,
        Err(e) => {
            log::debug!("{peer}: {e}");
            let status = match e {
                HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                HeadError::Timeout => StatusCode::REQUEST_TIMEOUT,
                HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
                HeadError::Closed | HeadError::Io(_) => return,
            };
            respond(&stream, status, &format!("{e}\n"));
            return;
        }
    };
    let _ = stream.set_read_timeout(None);
    if head.method != "GET" {
        respond_with(
            &stream,
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n",
            &[(header::ALLOW, "GET")],
        );
        return;
    }
    match head.path.as_str() {
        "/ping" => respond(&stream, StatusCode::OK, "pong"),
        "/metrics" => {
            let body = ctx.metrics.render();
            respond_with(
                &stream,
                StatusCode::OK,
                &body,
                &[(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            );
        }
        WS_PATH => upgrade(ctx, stream, peer, head, slot),
        _ => respond(&stream, StatusCode::NOT_FOUND, "not found\n"),
    }
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
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
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
/// parameter. Pure.
pub fn token_of(head: &Head) -> Option<String> {
    if let Some(v) = head.headers.get("x-auth-token") {
        return v.to_str().ok().map(str::to_string);
    }
    let query = head.query.as_deref()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == "x-auth-token").then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` in a query value; invalid escapes are kept as they are.
fn percent_decode(s: &str) -> String {
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
    String::from_utf8_lossy(&out).into_owned()
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
/// [`ws`] for admission and the session; answers its refusal.
fn upgrade(
    ctx: &Arc<Context>,
    stream: Arc<TcpStream>,
    peer: SocketAddr,
    head: Head,
    slot: Option<Slot>,
) {
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
        return;
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
        return;
    }
    if !origin_allowed(&ctx.config.ws_allowed_origins, h.get(header::ORIGIN)) {
        // Before the token is even looked at: a page on a foreign site learns nothing.
        metrics::add(&ctx.metrics.auth_failures, 1);
        let shown = h.get(header::ORIGIN).map_or("none".to_string(), |o| {
            crate::line::printable(o.as_bytes(), 80)
        });
        log::info!("{peer}: WebSocket refused: origin {shown} is not allowed");
        respond(&stream, StatusCode::FORBIDDEN, "origin not allowed\n");
        return;
    }
    let key = key.as_bytes().to_vec();
    match ws::admit(ctx, slot, &stream, peer, token_of(&head)) {
        Ok(conn) => ws::run(ctx, conn, stream, &key, head.rest),
        Err(refused) => match refused.retry_after {
            Some(secs) => respond_with(
                &stream,
                refused.status,
                &refused.body,
                &[(header::RETRY_AFTER, &secs.to_string())],
            ),
            None => respond(&stream, refused.status, &refused.body),
        },
    }
}

/// Writes a plain response and closes the connection.
pub fn respond(stream: &TcpStream, status: StatusCode, body: &str) {
    respond_with(stream, status, body, &[]);
}

fn respond_with(
    mut stream: &TcpStream,
    status: StatusCode,
    body: &str,
    extra: &[(header::HeaderName, &str)],
) {
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CONNECTION, "close");
    if !extra.iter().any(|(n, _)| n == header::CONTENT_TYPE) {
        builder = builder.header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    }
    for (name, value) in extra {
        builder = builder.header(name, *value);
    }
    let response = builder
        .body(body)
        .expect("the headers are static or digits, all valid");
    let bytes = serialize(&response);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(&bytes).is_ok() {
        net::linger(stream);
    }
}

/// The response's bytes on the wire.
fn serialize(response: &Response<&str>) -> Vec<u8> {
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
    out.extend_from_slice(response.body().as_bytes());
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
        assert_eq!(token_of(&head).as_deref(), Some("t k"));
    }

    #[test]
    fn header_token_wins_over_query() {
        let raw = b"GET /subscribe/websocket?x-auth-token=q HTTP/1.1\r\nX-Auth-Token: h\r\n\r\n";
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(token_of(&head).as_deref(), Some("h"));
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
        assert_eq!(percent_decode("a%2Cb+c"), "a,b c");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn response_bytes() {
        let r = Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(header::CONTENT_LENGTH, 3)
            .body("no\n")
            .unwrap();
        assert_eq!(
            serialize(&r),
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nno\n"
        );
    }
}
