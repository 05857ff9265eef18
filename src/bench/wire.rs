//! What the benchmark reads from the server and the few things it writes, pure and
//! allocation-free on the read side: parsers take the bytes received so far and return the
//! next complete item with the number of bytes it used, or `None` when it is not all there.

/// The position of the first `needle` in `hay`, eight bytes at a time.
#[inline]
pub fn find_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(needle);
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes")) ^ pattern;
        // A byte of `word` is zero exactly where `needle` was; this sets its high bit.
        let zero = word.wrapping_sub(LO) & !word & HI;
        if zero != 0 {
            return Some(base + (zero.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|i| base + i)
}

/// The position of `needle` in `hay` (short haystacks: replies and frame heads).
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One line from the TCP line protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// `publish TAGS DATA`: the data.
    Delivery(&'a [u8]),
    Pong,
    /// `error REASON`: the reason.
    Error(&'a [u8]),
    /// Anything else, whole.
    Other(&'a [u8]),
}

/// The next complete line of `buf` and the bytes it took, `\n` included.
#[inline]
pub fn next_line(buf: &[u8]) -> Option<(Line<'_>, usize)> {
    let end = find_byte(b'\n', buf)?;
    let mut line = &buf[..end];
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    let parsed = if let Some(rest) = line.strip_prefix(b"publish ") {
        match find_byte(b' ', rest) {
            Some(space) => Line::Delivery(&rest[space + 1..]),
            None => Line::Other(line),
        }
    } else if line == b"pong" {
        Line::Pong
    } else if let Some(reason) = line.strip_prefix(b"error ") {
        Line::Error(reason)
    } else {
        Line::Other(line)
    };
    Some((parsed, end + 1))
}

/// The count in a slow-consumer notice, `slow consumer: dropped N messages` (the reason of
/// a TCP `error` line or of a WebSocket failure).
pub fn dropped_count(reason: &[u8]) -> Option<u64> {
    let at = find(reason, b"dropped ")? + b"dropped ".len();
    leading_number(&reason[at..])
}

fn leading_number(b: &[u8]) -> Option<u64> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&b[..n]).ok()?.parse().ok()
}

/// A frame the server sent (server frames are never masked).
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    Ping(&'a [u8]),
    Close,
    /// Binary, pong, or a fragment: nothing the benchmark expects.
    Other,
}

/// Why the server's byte stream is not WebSocket.
#[derive(Debug, PartialEq, Eq)]
pub struct BadFrame(pub &'static str);

/// The next complete frame of `buf` and the bytes it took.
///
/// # Errors
/// A masked frame or a length that does not fit in memory.
pub fn next_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, BadFrame> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b1 & 0x80 != 0 {
        return Err(BadFrame("the server sent a masked frame"));
    }
    let (len, head): (u64, usize) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len).map_err(|_| BadFrame("frame too large"))?;
    let Some(payload) = buf.get(head..head.saturating_add(len)) else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let frame = match (fin, b0 & 0x0F) {
        (true, 0x1) => Frame::Text(payload),
        (_, 0x9) => Frame::Ping(payload),
        (_, 0x8) => Frame::Close,
        _ => Frame::Other,
    };
    Ok(Some((frame, head + len)))
}

/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// Appends a final client frame (masked with `mask`, as RFC 6455 requires of clients).
pub fn client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

/// A text frame from mist's WebSocket API, classified without parsing the JSON.
#[derive(Debug, PartialEq, Eq)]
pub enum WsText<'a> {
    /// `{"keys":[...],"data":"DATA"}`: the data (the benchmark's payloads need no escapes).
    Delivery(&'a [u8]),
    /// `{"success":true,"command":"NAME",...}`
    Ok(&'a [u8]),
    /// `{"success":false,...}`, with the count of a slow-consumer notice.
    Failure {
        dropped: Option<u64>,
    },
    Other,
}

/// Classifies a text frame.
#[inline]
pub fn ws_text(t: &[u8]) -> WsText<'_> {
    if t.starts_with(b"{\"keys\":") {
        const DATA: &[u8] = b"\"data\":\"";
        if let Some(at) = find(t, DATA) {
            let start = at + DATA.len();
            if let Some(len) = find_byte(b'"', &t[start..]) {
                return WsText::Delivery(&t[start..start + len]);
            }
        }
        return WsText::Other;
    }
    if t.starts_with(b"{\"success\":false") {
        let dropped = find(t, b"\"dropped\":").and_then(|at| leading_number(&t[at + 10..]));
        return WsText::Failure { dropped };
    }
    if t.starts_with(b"{\"success\":true") {
        const COMMAND: &[u8] = b"\"command\":\"";
        if let Some(at) = find(t, COMMAND) {
            let start = at + COMMAND.len();
            if let Some(len) = find_byte(b'"', &t[start..]) {
                return WsText::Ok(&t[start..start + len]);
            }
        }
    }
    WsText::Other
}

/// The upgrade request for `/subscribe/websocket` with the token in the query.
pub fn upgrade_request(host: &str, token: &str, key: &str) -> String {
    format!(
        "GET /subscribe/websocket?x-auth-token={token} HTTP/1.1\r\nHost: {host}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The server's answer to an upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub status: u16,
    /// The `Sec-WebSocket-Accept` header.
    pub accept: Option<String>,
    /// Bytes of the response head; what follows is WebSocket frames (or an error body).
    pub head_len: usize,
}

/// Parses the response head, when it is complete.
///
/// # Errors
/// The bytes are not an HTTP response.
pub fn upgrade_response(buf: &[u8]) -> Result<Option<Upgrade>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            let accept = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                .map(|h| String::from_utf8_lossy(h.value).into_owned());
            Ok(Some(Upgrade {
                status: response.code.unwrap_or(0),
                accept,
                head_len,
            }))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("bad HTTP response: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_byte_agrees_with_a_plain_search() {
        let hay: Vec<u8> = (0..200u32).map(|i| (i * 7 % 251) as u8).collect();
        for start in 0..20 {
            for needle in [0u8, 7, 10, 250, 255, 0x80] {
                let want = hay[start..].iter().position(|&b| b == needle);
                assert_eq!(find_byte(needle, &hay[start..]), want, "{start} {needle}");
            }
        }
        assert_eq!(find_byte(b'\n', b""), None);
        assert_eq!(find_byte(b'\n', b"0123456789\n"), Some(10));
    }

    #[test]
    fn lines() {
        let buf = b"pong\npublish a,b 0.1.2.xx\r\nerror slow consumer: dropped 7 messages\nlist []\npublish a";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((line, used)) = next_line(&buf[at..]) {
            got.push(format!("{line:?}"));
            if let Line::Error(reason) = line {
                assert_eq!(dropped_count(reason), Some(7));
            }
            at += used;
        }
        assert_eq!(got.len(), 4);
        assert_eq!(&buf[at..], b"publish a");
        assert_eq!(
            next_line(b"publish a,b 0.1.2 x\n"),
            Some((Line::Delivery(b"0.1.2 x"), 20))
        );
        assert_eq!(
            next_line(b"publish a\n"),
            Some((Line::Other(b"publish a"), 10))
        );
        assert_eq!(dropped_count(b"unknown command"), None);
    }

    #[test]
    fn frames() {
        assert_eq!(next_frame(b"\x81"), Ok(None));
        assert_eq!(next_frame(b"\x81\x05hel"), Ok(None));
        assert_eq!(
            next_frame(b"\x81\x05hello\x89"),
            Ok(Some((Frame::Text(b"hello"), 7)))
        );
        assert_eq!(
            next_frame(b"\x89\x04mist"),
            Ok(Some((Frame::Ping(b"mist"), 6)))
        );
        assert_eq!(next_frame(b"\x88\x02\x03\xe8"), Ok(Some((Frame::Close, 4))));
        let mut long = vec![0x81, 126, 1, 0];
        long.extend_from_slice(&[b'x'; 256]);
        assert_eq!(next_frame(&long).unwrap().unwrap().1, 260);
        assert_eq!(next_frame(&long[..100]), Ok(None));
        assert!(next_frame(b"\x81\x85abcd").is_err());
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        client_frame(&mut out, OP_TEXT, b"hi", [1, 2, 3, 4]);
        assert_eq!(out, [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
        out.clear();
        client_frame(&mut out, OP_TEXT, &[0; 300], [9, 9, 9, 9]);
        assert_eq!(&out[..4], &[0x81, 0x80 | 126, 1, 44]);
        assert_eq!(out.len(), 4 + 4 + 300);
    }

    #[test]
    fn ws_texts() {
        assert_eq!(
            ws_text(br#"{"keys":["a","b"],"data":"0.1.2.xx"}"#),
            WsText::Delivery(b"0.1.2.xx")
        );
        assert_eq!(
            ws_text(br#"{"success":true,"command":"subscribe"}"#),
            WsText::Ok(b"subscribe")
        );
        assert_eq!(
            ws_text(
                br#"{"success":false,"error":"slow consumer: dropped 4 messages","dropped":4}"#
            ),
            WsText::Failure { dropped: Some(4) }
        );
        assert_eq!(
            ws_text(br#"{"success":false,"command":"subscribe","error":"no"}"#),
            WsText::Failure { dropped: None }
        );
        assert_eq!(ws_text(b"{}"), WsText::Other);
    }

    #[test]
    fn upgrade() {
        let req = upgrade_request("127.0.0.1:8080", "tok", "a2V5");
        assert!(req.starts_with("GET /subscribe/websocket?x-auth-token=tok HTTP/1.1\r\n"));
        assert!(req.ends_with("Sec-WebSocket-Version: 13\r\n\r\n"));
        let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Accept: abc=\r\n\r\n\x81\x00";
        let up = upgrade_response(resp).unwrap().unwrap();
        assert_eq!(up.status, 101);
        assert_eq!(up.accept.as_deref(), Some("abc="));
        assert_eq!(&resp[up.head_len..], b"\x81\x00");
        assert_eq!(upgrade_response(b"HTTP/1.1 401 Unauth"), Ok(None));
        assert!(upgrade_response(b"garbage\r\n\r\n").is_err());
    }
}
