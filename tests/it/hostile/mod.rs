//! Hostile clients. Every byte a client sends is hostile until parsed: NUL bytes and invalid
//! UTF-8 in every field, endless and oversized lines, stalls, slowloris, floods, deep JSON,
//! peers that never read or never answer, and the server's own panics. Each case must end in an
//! `error` reply, an HTTP status or a close, in bounded time and memory, while a bystander
//! client keeps getting its `pong`. One file per family of abuse:
//!
//! - [`bad_bytes`]: NUL bytes, invalid UTF-8 and Unicode spaces in every field;
//! - [`oversize`]: endless lines, huge tag lists, big heads and frames, deep JSON;
//! - [`frames`]: WebSocket frames that break RFC 6455, and unusual ones that do not;
//! - [`silence`]: stalls, silent clients, slowloris, unanswered pings;
//! - [`floods`]: connection and subscription floods at the limits;
//! - [`origins`]: WebSocket upgrades from foreign pages;
//! - [`stuck_peers`]: peers that stop reading, and the server stopped and continued;
//! - [`leaks`]: threads and descriptors after thousands of connections;
//! - [`memory`]: resident memory under endless lines and slow consumers;
//! - [`secrets`]: tokens and data never in the log;
//! - [`panics`]: a panic stays in its connection;
//! - [`remote_admin`]: admin commands from a non-loopback address.
//!
//! The tests that measure the server (threads, descriptors, resident memory, its log) run the
//! real binary as a subprocess ([`Proc::server_with`]), on ports it picks itself, and look at
//! it through `/proc/PID`.

mod bad_bytes;
mod floods;
mod frames;
mod leaks;
mod memory;
mod origins;
mod oversize;
// The `debug-panic` fault hook exists only in debug builds.
#[cfg(debug_assertions)]
mod panics;
mod remote_admin;
mod secrets;
mod silence;
mod stuck_peers;

use crate::support::http::{
    http_get, plain, raw_connect, raw_upgrade, read_response, upgrade_request,
};
use crate::support::process::Proc;
use crate::support::ws::{PING, PONG, Ws, call};
use crate::support::{
    LineClient, TIMEOUT, TestServer, expect_error, get, small_window_client, try_ws_connect_with,
    wait_until, ws_send, ws_sync, ws_text,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::Message;

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

/// Expects a close frame with this code and reason through tungstenite, skipping the text
/// frames and pings before it, then the end of the connection.
fn expect_close_frame(ws: &mut Ws, code: u16, reason: &str) {
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

/// Puts `field` where `{}` is in `template` and ends the line.
fn fill(template: &str, field: &[u8]) -> Vec<u8> {
    let (before, after) = template.split_once("{}").unwrap();
    let mut line = before.as_bytes().to_vec();
    line.extend_from_slice(field);
    line.extend_from_slice(after.as_bytes());
    line.push(b'\n');
    line
}
