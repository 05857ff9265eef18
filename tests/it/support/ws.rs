//! WebSocket clients (tungstenite's, with a read timeout) and what they read.

use super::http::connect_from;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use tungstenite::Message;
use tungstenite::protocol::WebSocket;

/// A WebSocket client.
pub type Ws = WebSocket<TcpStream>;

/// A WebSocket client connected to `/subscribe/websocket` with `token` in the header.
pub fn ws_connect(http: SocketAddr, token: &str) -> Ws {
    try_ws_connect(http, Some(token), None).expect("WebSocket upgrade succeeds")
}

/// Tries a WebSocket connection; `header` sends the token as `X-Auth-Token`, `query` as the
/// `x-auth-token` query parameter. On refusal returns the HTTP status.
pub fn try_ws_connect(
    http: SocketAddr,
    header: Option<&str>,
    query: Option<&str>,
) -> Result<Ws, u16> {
    try_ws_connect_with(http, header, query, &[])
}

/// [`try_ws_connect`] with extra request headers (an `Origin`, say).
pub fn try_ws_connect_with(
    http: SocketAddr,
    header: Option<&str>,
    query: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<Ws, u16> {
    try_ws_connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), http, header, query, extra)
}

/// [`try_ws_connect_with`] from the local address `from`.
pub fn try_ws_connect_from(
    from: IpAddr,
    http: SocketAddr,
    header: Option<&str>,
    query: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<Ws, u16> {
    let stream = connect_from(from, http);
    let mut url = format!("ws://{http}/subscribe/websocket");
    if let Some(q) = query {
        url.push_str(&format!("?x-auth-token={q}"));
    }
    let mut builder = tungstenite::http::Request::builder()
        .uri(&url)
        .header("Host", http.to_string())
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tungstenite::handshake::client::generate_key(),
        );
    if let Some(h) = header {
        builder = builder.header("X-Auth-Token", h);
    }
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(()).unwrap();
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

/// The next text frame (answering nothing itself); fails on timeout or a non-text frame.
pub fn ws_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("a frame before the timeout") {
            Message::Text(t) => return t.as_str().to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Sends a JSON text frame.
pub fn ws_send(ws: &mut Ws, json: &str) {
    ws.send(Message::text(json)).expect("send");
}

/// Sends `{"command":"ping"}` and returns the text frames that came before its reply.
pub fn ws_sync(ws: &mut Ws) -> Vec<String> {
    ws_send(ws, r#"{"command":"ping"}"#);
    let mut before = Vec::new();
    loop {
        let t = ws_text(ws);
        if t == r#"{"success":true,"command":"ping"}"# {
            return before;
        }
        before.push(t);
    }
}

/// The `ping` command, and its reply.
pub const PING: &str = r#"{"command":"ping"}"#;
pub const PONG: &str = r#"{"success":true,"command":"ping"}"#;

/// Sends a command and expects exactly this reply.
pub fn call(ws: &mut Ws, json: &str, want: &str) {
    ws_send(ws, json);
    assert_eq!(ws_text(ws), want, "reply to {json:.200}");
}

/// What a client can read next.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Close(u16, String),
    /// The server closed the connection after the closing handshake.
    End,
}

/// The next text or close frame, or the end of the connection. Pings and pongs are skipped;
/// a read timeout fails the test.
pub fn next_frame(ws: &mut Ws) -> Frame {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Frame::Text(t.as_str().to_string()),
            Ok(Message::Close(Some(f))) => {
                return Frame::Close(u16::from(f.code), f.reason.as_str().to_string());
            }
            Ok(Message::Close(None)) => return Frame::Close(0, String::new()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("unexpected frame {other:?}"),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Frame::End;
            }
            Err(e) => panic!("WebSocket read failed (or timed out): {e}"),
        }
    }
}

/// Expects the server's close frame with this code and reason next, then the end of the
/// connection.
pub fn expect_closed(ws: &mut Ws, code: u16, reason: &str) {
    assert_eq!(next_frame(ws), Frame::Close(code, reason.to_string()));
    assert_eq!(next_frame(ws), Frame::End);
}
