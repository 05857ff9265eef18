//! Encoding of the WebSocket frames the server sends (RFC 6455, section 5.2).
//!
//! Server frames are never masked, so a delivery frame is the same bytes for every WebSocket
//! subscriber and can be encoded once per message. Reading client frames is tungstenite's job.

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
/// Close code: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = Vec::with_capacity(len + 10);
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
    out
}

/// A final text frame.
pub fn text(payload: &[u8]) -> Vec<u8> {
    frame(OP_TEXT, payload)
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
    fn control_frames() {
        assert_eq!(pong(b"p"), b"\x8a\x01p");
        assert_eq!(
            close(1008, "token revoked"),
            b"\x88\x0f\x03\xf0token revoked"
        );
        assert!(close(1000, &"é".repeat(100)).len() <= 127);
        assert_eq!(ping(&[0; 200]).len(), 127);
    }
}
