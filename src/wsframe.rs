//! Encoding of the WebSocket frames the server sends (RFC 6455, section 5.2).
//!
//! Server frames are never masked, so a delivery frame is the same bytes for every WebSocket
//! subscriber and can be encoded once per message. Client frames are read by `wsread`.

const FIN: u8 = 0x80;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: going away (server shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code: policy violation (a revoked token).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: a text frame that is not UTF-8 (RFC 6455, 7.4.1).
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    append(&mut out, opcode, payload);
    out
}

fn append(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let len = payload.len();
    out.push(FIN | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// A final text frame.
pub fn text(payload: &[u8]) -> Vec<u8> {
    frame(OP_TEXT, payload)
}

/// Appends a final text frame to `out`.
pub fn append_text(out: &mut Vec<u8>, payload: &[u8]) {
    append(out, OP_TEXT, payload);
}

/// Splits one final, unmasked text frame (as the server writes them) off the front of `bytes`:
/// its payload and what follows it. `None` when `bytes` does not start with a whole one.
#[cfg(test)]
pub fn split_text(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = bytes.split_first()?;
    let (&second, rest) = rest.split_first()?;
    if first != FIN | OP_TEXT || second & 0x80 != 0 {
        return None;
    }
    let (len, rest) = match second {
        126 => {
            let (n, rest) = rest.split_first_chunk::<2>()?;
            (usize::from(u16::from_be_bytes(*n)), rest)
        }
        127 => {
            let (n, rest) = rest.split_first_chunk::<8>()?;
            (usize::try_from(u64::from_be_bytes(*n)).ok()?, rest)
        }
        n => (usize::from(n), rest),
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A pong echoing a ping's payload.
pub fn pong(payload: &[u8]) -> Vec<u8> {
    frame(OP_PONG, payload)
}

/// A ping with the given payload (at most 125 bytes).
pub fn ping(payload: &[u8]) -> Vec<u8> {
    frame(OP_PING, &payload[..payload.len().min(125)])
}

/// A close frame with a status code and a reason (cut to fit the 125-byte control limit).
pub fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(OP_CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(text(b"hi"), b"\x81\x02hi");
        let mid = text(&[b'x'; 200]);
        assert_eq!(&mid[..4], &[0x81, 126, 0, 200]);
        assert_eq!(mid.len(), 204);
        let big = text(&vec![b'x'; 70_000]);
        assert_eq!(&big[..2], &[0x81, 127]);
        assert_eq!(&big[2..10], &70_000u64.to_be_bytes());
    }

    #[test]
    fn split_text_frames() {
        let mut two = text(b"hi");
        append_text(&mut two, &[b'x'; 300]);
        let (first, rest) = split_text(&two).unwrap();
        assert_eq!(first, b"hi");
        let (second, rest) = split_text(rest).unwrap();
        assert_eq!(second, &[b'x'; 300][..]);
        assert!(rest.is_empty());
        assert_eq!(split_text(&two[..3]), None, "cut short");
        assert_eq!(split_text(&pong(b"p")), None, "not text");
        assert_eq!(split_text(b""), None);
    }

    #[test]
    fn control_frames() {
        assert_eq!(pong(b"p"), b"\x8a\x01p");
        assert_eq!(
            close(1008, "token revoked"),
            b"\x88\x0f\x03\xf0token revoked"
        );
        assert!(close(1000, &"é".repeat(100)).len() <= 127);
        assert_eq!(ping(&[0; 200]).len(), 127);
    }

    use proptest::prelude::*;
    use std::io::Cursor;
    use tungstenite::protocol::frame::FrameHeader;
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

    /// Decodes one unmasked server frame: its first byte, and its payload as the length
    /// header says. Checks that the length uses the shortest form RFC 6455 allows.
    fn decode(frame: &[u8]) -> (u8, Vec<u8>) {
        let (len, header) = match frame[1] {
            126 => (u64::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
            127 => (u64::from_be_bytes(frame[2..10].try_into().unwrap()), 10),
            n => (u64::from(n), 2),
        };
        let shortest = match len {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        };
        assert_eq!(header, shortest, "length {len} in a {header}-byte header");
        assert_eq!(frame.len() as u64, header as u64 + len, "length header");
        (frame[0], frame[header..].to_vec())
    }

    /// Payload lengths around the boundaries of the three length forms.
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        let len = prop_oneof![0..=130usize, 65_530..=65_540usize, 0..=70_000usize];
        (len, any::<u8>()).prop_map(|(len, seed)| {
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A text frame is FIN + text, unmasked, and its length header gives back exactly the
        /// payload; tungstenite's parser reads the same header.
        #[test]
        fn text_frames_decode_to_the_payload(payload in payload()) {
            let frame = text(&payload);
            let (first, body) = decode(&frame);
            prop_assert_eq!(first, 0x81);
            prop_assert_eq!(body, payload.clone());
            let mut cursor = Cursor::new(&frame);
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            prop_assert!(header.is_final && header.mask.is_none());
            prop_assert_eq!(header.opcode, OpCode::Data(Data::Text));
            prop_assert_eq!(len, payload.len() as u64);
            prop_assert_eq!(cursor.position() as usize + payload.len(), frame.len());
        }

        /// Control frames fit the 125-byte limit: a ping is cut to it, a close keeps its code
        /// and as much of the reason as fits, cut at a character boundary.
        #[test]
        fn control_frames_fit(bytes in prop::collection::vec(any::<u8>(), 0..300), reason in ".{0,80}", code in any::<u16>()) {
            let (first, body) = decode(&ping(&bytes));
            prop_assert_eq!(first, 0x89);
            prop_assert_eq!(&body[..], &bytes[..bytes.len().min(125)]);
            let (first, body) = decode(&pong(&bytes[..bytes.len().min(125)]));
            prop_assert_eq!(first, 0x8a);
            prop_assert_eq!(&body[..], &bytes[..bytes.len().min(125)]);
            let frame = close(code, &reason);
            let (first, body) = decode(&frame);
            prop_assert_eq!(first, 0x88);
            prop_assert!(body.len() <= 125);
            prop_assert_eq!(u16::from_be_bytes([body[0], body[1]]), code);
            let kept = std::str::from_utf8(&body[2..]).unwrap();
            prop_assert!(reason.starts_with(kept));
            prop_assert!(kept.len() == reason.len() || kept.len() > 119);
            let mut cursor = Cursor::new(&frame);
            let (header, _) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            prop_assert_eq!(header.opcode, OpCode::Control(Control::Close));
        }
    }
}
