//! Reading the client's WebSocket frames (RFC 6455, section 5) and putting messages together.
//!
//! A connection holds no buffer between frames, so an idle WebSocket costs no more memory than
//! an idle TCP client: the frame header (2 to 14 bytes) is read into an array, then the payload
//! into a buffer of exactly the length the header announced, once the header showed that the
//! message stays within `max` bytes; the buffer leaves with the message. Only the fragments of
//! an unfinished message are kept between frames, bounded by `max` in all.
//!
//! Everything RFC 6455 asks of a server that negotiates no extension is checked here: client
//! frames must be masked, reserved bits clear and opcodes known, control frames whole and at
//! most 125 bytes, continuations only inside a fragmented message, close codes valid and close
//! reasons and text messages UTF-8. Answering (pong, close) is the session's job: the reader
//! only reads.
//!
//! [`FrameReader::read`] can be called again after any error from the stream (a read timeout
//! included) and goes on where it stopped, in the middle of a header or a payload.

use std::io::{self, Read};

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;
/// The longest payload of a control frame.
const MAX_CONTROL: u64 = 125;

/// A frame's opcode, as far as RFC 6455 defines one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A client frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: Opcode,
    pub len: u64,
    pub mask: [u8; 4],
}

/// A complete message, or a control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(String),
    /// The server takes no binary messages; what they held does not matter.
    Binary,
    /// A ping, with the payload its pong must echo (at most 125 bytes).
    Ping(Vec<u8>),
    Pong,
    /// The client's close frame, with its status code if it gave one.
    Close(Option<u16>),
}

/// How a client broke RFC 6455.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("reserved bits set")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("unmasked client frame")]
    Unmasked,
    #[error("64-bit length with its most significant bit set")]
    LengthOverflow,
    #[error("fragmented control frame")]
    FragmentedControl,
    #[error("control frame longer than 125 bytes")]
    LongControl,
    #[error("continuation frame outside a fragmented message")]
    UnexpectedContinuation,
    #[error("new message inside a fragmented message")]
    ExpectedContinuation,
    #[error("close frame with a 1-byte payload")]
    CloseTooShort,
    #[error("close code {0} is not allowed")]
    CloseCode(u16),
}

/// Why no message could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed or timed out; reading again goes on where it stopped.
    #[error("read failed")]
    Io(#[source] io::Error),
    /// The stream ended (between frames or inside one).
    #[error("connection closed")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(#[from] Violation),
    /// A message (with its fragments so far) would be longer than allowed; refused on the
    /// frame header, before its payload is read.
    #[error("message of {size} bytes is larger than {max} bytes")]
    TooBig { size: u64, max: usize },
    /// A text message is not UTF-8.
    #[error("text is not UTF-8")]
    Utf8,
    /// A close frame's reason is not UTF-8.
    #[error("close reason is not UTF-8")]
    CloseReason,
}

/// How many bytes the header has in all, from its second byte: 2, plus 2 or 8 for an extended
/// length, plus 4 for a mask. Pure.
pub fn header_len(second: u8) -> usize {
    let length = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + length + if second & 0x80 != 0 { 4 } else { 0 }
}

/// Parses a whole client frame header (`header_len` bytes) and checks what can be checked on
/// the header alone. Pure.
///
/// # Errors
/// Reserved bits, an unknown opcode, no mask, a 64-bit length over 2^63, a fragmented or long
/// control frame.
pub fn parse_header(bytes: &[u8]) -> Result<Header, Violation> {
    debug_assert_eq!(bytes.len(), header_len(bytes[1]));
    let (first, second) = (bytes[0], bytes[1]);
    if first & 0x70 != 0 {
        return Err(Violation::ReservedBits);
    }
    let opcode = Opcode::from_bits(first & 0x0F).ok_or(Violation::UnknownOpcode(first & 0x0F))?;
    if second & 0x80 == 0 {
        return Err(Violation::Unmasked);
    }
    let (len, rest) = match second & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes([bytes[2], bytes[3]])),
            &bytes[4..],
        ),
        127 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&bytes[2..10]);
            (u64::from_be_bytes(n), &bytes[10..])
        }
        n => (u64::from(n), &bytes[2..]),
    };
    if len >> 63 != 0 {
        return Err(Violation::LengthOverflow);
    }
    let fin = first & 0x80 != 0;
    if opcode.is_control() {
        if !fin {
            return Err(Violation::FragmentedControl);
        }
        if len > MAX_CONTROL {
            return Err(Violation::LongControl);
        }
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(rest);
    Ok(Header {
        fin,
        opcode,
        len,
        mask,
    })
}

/// Undoes the client's masking in place (RFC 6455, 5.3).
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u32::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}

/// Whether a close frame may carry this code (RFC 6455, 7.4): the codes it defines for use
/// in frames, the IANA-registered 1012 and 1013, and the ranges for libraries and applications.
/// 1005, 1006 and 1015 only ever stand for "no code" and the like, never in a frame.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// A close frame's payload: nothing, or a valid code and a UTF-8 reason. Pure.
///
/// # Errors
/// A 1-byte payload or a code not allowed ([`ReadError::Protocol`]), a reason that is not
/// UTF-8 ([`ReadError::CloseReason`]).
pub fn parse_close(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::CloseTooShort.into()),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !close_code_allowed(code) {
                return Err(Violation::CloseCode(code).into());
            }
            std::str::from_utf8(reason).map_err(|_| ReadError::CloseReason)?;
            Ok(Some(code))
        }
    }
}

/// Reads a client's frames and hands out messages; see the module's description.
pub struct FrameReader {
    max: usize,
    /// The header being read: its bytes so far, and how many it has in all (2 until the
    /// second byte tells).
    head: [u8; MAX_HEADER],
    have: usize,
    need: usize,
    /// The frame whose payload is being read, the payload (its own length), and how much of
    /// it has come.
    frame: Option<Header>,
    payload: Vec<u8>,
    filled: usize,
    /// A fragmented message being put together: whether it is text, and its bytes so far.
    partial: Option<(bool, Vec<u8>)>,
}

impl FrameReader {
    /// A reader of messages of at most `max` bytes.
    pub fn new(max: usize) -> FrameReader {
        FrameReader {
            max,
            head: [0; MAX_HEADER],
            have: 0,
            need: 2,
            frame: None,
            payload: Vec::new(),
            filled: 0,
            partial: None,
        }
    }

    /// Reads until a message or a control frame is complete.
    ///
    /// # Errors
    /// The stream's errors (then reading again resumes), its end, a protocol violation, a
    /// message over the limit, text that is not UTF-8. After any but the first, the
    /// connection is to be closed.
    pub fn read(&mut self, src: &mut impl Read) -> Result<Message, ReadError> {
        loop {
            let header = match self.frame {
                Some(header) => header,
                None => self.read_header(src)?,
            };
            while self.filled < self.payload.len() {
                self.filled += read_some(src, &mut self.payload[self.filled..])?;
            }
            self.frame = None;
            self.filled = 0;
            let mut payload = std::mem::take(&mut self.payload);
            unmask(&mut payload, header.mask);
            if let Some(message) = self.complete(header, payload)? {
                return Ok(message);
            }
        }
    }

    /// Reads the rest of a frame header, checks it, and makes room for its payload.
    fn read_header(&mut self, src: &mut impl Read) -> Result<Header, ReadError> {
        while self.have < self.need {
            self.have += read_some(src, &mut self.head[self.have..self.need])?;
            if self.have == 2 {
                self.need = header_len(self.head[1]);
            }
        }
        let header = parse_header(&self.head[..self.need])?;
        self.have = 0;
        self.need = 2;
        if !header.opcode.is_control() {
            let before = self.partial.as_ref().map_or(0, |(_, bytes)| bytes.len());
            let size = (before as u64).saturating_add(header.len);
            if size > self.max as u64 {
                return Err(ReadError::TooBig {
                    size,
                    max: self.max,
                });
            }
        }
        // Within `max` (or 125 bytes), so the allocation is bounded.
        self.payload = vec![0; header.len as usize];
        self.frame = Some(header);
        Ok(header)
    }

    /// Takes a whole frame's payload: a message when it completes one.
    fn complete(&mut self, header: Header, payload: Vec<u8>) -> Result<Option<Message>, ReadError> {
        let text = match header.opcode {
            Opcode::Ping => return Ok(Some(Message::Ping(payload))),
            Opcode::Pong => return Ok(Some(Message::Pong)),
            Opcode::Close => return parse_close(&payload).map(|code| Some(Message::Close(code))),
            Opcode::Continuation => {
                let Some((_, bytes)) = self.partial.as_mut() else {
                    return Err(Violation::UnexpectedContinuation.into());
                };
                // Exactly: fragments must not make the buffer grow past `max` by doubling.
                bytes.reserve_exact(payload.len());
                bytes.extend_from_slice(&payload);
                if !header.fin {
                    return Ok(None);
                }
                let (text, bytes) = self.partial.take().expect("checked above");
                return finish(text, bytes).map(Some);
            }
            Opcode::Text => true,
            Opcode::Binary => false,
        };
        if self.partial.is_some() {
            return Err(Violation::ExpectedContinuation.into());
        }
        if header.fin {
            finish(text, payload).map(Some)
        } else {
            self.partial = Some((text, payload));
            Ok(None)
        }
    }

    /// The bytes this reader holds on the heap (its capacity): none between messages.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.payload.capacity() + self.partial.as_ref().map_or(0, |(_, b)| b.capacity())
    }
}

fn finish(text: bool, bytes: Vec<u8>) -> Result<Message, ReadError> {
    if text {
        String::from_utf8(bytes)
            .map(Message::Text)
            .map_err(|_| ReadError::Utf8)
    } else {
        Ok(Message::Binary)
    }
}

/// One read into a non-empty `buf`, retried when interrupted by a signal.
fn read_some(src: &mut impl Read, buf: &mut [u8]) -> Result<usize, ReadError> {
    loop {
        match src.read(buf) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tungstenite::protocol::frame::{Frame, FrameHeader};

    const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x81];

    /// A masked client frame, encoded by tungstenite: an encoder that is not ours.
    fn frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let opcode = OpCode::from(first & 0x0F);
        let header = FrameHeader {
            is_final: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            rsv2: first & 0x20 != 0,
            rsv3: first & 0x10 != 0,
            opcode,
            mask: Some(mask),
        };
        let mut out = Vec::new();
        Frame::from_payload(header, payload.to_vec().into())
            .format(&mut out)
            .unwrap();
        out
    }

    fn read_all(bytes: &[u8], max: usize) -> Vec<Result<Message, String>> {
        let mut reader = FrameReader::new(max);
        let mut src = bytes;
        let mut out = Vec::new();
        loop {
            match reader.read(&mut src) {
                Ok(m) => out.push(Ok(m)),
                Err(ReadError::Closed) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    fn text(s: &str) -> Result<Message, String> {
        Ok(Message::Text(s.to_string()))
    }

    #[test]
    fn header_lengths() {
        assert_eq!(header_len(0x80 | 5), 6);
        assert_eq!(header_len(0x80 | 126), 8);
        assert_eq!(header_len(0x80 | 127), 14);
        assert_eq!(header_len(5), 2);
        assert_eq!(header_len(127), 10);
    }

    #[test]
    fn one_text_frame() {
        let f = frame(0x81, b"{\"command\":\"ping\"}", MASK);
        assert_eq!(read_all(&f, 1024), [text("{\"command\":\"ping\"}")]);
        assert_eq!(read_all(&frame(0x81, b"", MASK), 1024), [text("")]);
    }

    #[test]
    fn fragments_with_control_frames_between() {
        let mut s = frame(0x01, b"hel", MASK);
        s.extend(frame(0x89, b"p1", MASK));
        s.extend(frame(0x00, b"lo ", [1, 2, 3, 4]));
        s.extend(frame(0x8A, b"", MASK));
        s.extend(frame(0x80, "wörld".as_bytes(), MASK));
        s.extend(frame(0x82, b"\xff\x00", MASK));
        s.extend(frame(0x88, b"\x03\xe8bye", MASK));
        assert_eq!(
            read_all(&s, 1024),
            [
                Ok(Message::Ping(b"p1".to_vec())),
                Ok(Message::Pong),
                text("hello wörld"),
                Ok(Message::Binary),
                Ok(Message::Close(Some(1000))),
            ]
        );
    }

    #[test]
    fn violations() {
        let cases: Vec<(Vec<u8>, Violation)> = vec![
            (frame(0xC1, b"x", MASK), Violation::ReservedBits),
            (frame(0x91, b"x", MASK), Violation::ReservedBits),
            (frame(0x83, b"x", MASK), Violation::UnknownOpcode(3)),
            (frame(0x8B, b"x", MASK), Violation::UnknownOpcode(0xB)),
            (b"\x81\x01x".to_vec(), Violation::Unmasked),
            (frame(0x09, b"x", MASK), Violation::FragmentedControl),
            (frame(0x89, &[0; 126], MASK), Violation::LongControl),
            (frame(0x80, b"x", MASK), Violation::UnexpectedContinuation),
            (
                [frame(0x01, b"a", MASK), frame(0x81, b"b", MASK)].concat(),
                Violation::ExpectedContinuation,
            ),
            (frame(0x88, b"\x03", MASK), Violation::CloseTooShort),
            (frame(0x88, b"\x03\xed", MASK), Violation::CloseCode(1005)),
            (
                frame(0x88, &999u16.to_be_bytes(), MASK),
                Violation::CloseCode(999),
            ),
            (
                frame(0x88, &5000u16.to_be_bytes(), MASK),
                Violation::CloseCode(5000),
            ),
        ];
        for (bytes, want) in cases {
            let got = read_all(&bytes, 1024);
            assert_eq!(got, [Err(ReadError::from(want).to_string())], "{bytes:x?}");
        }
        let mut top_bit = vec![0x81, 0x80 | 127];
        top_bit.extend_from_slice(&(1u64 << 63).to_be_bytes());
        top_bit.extend_from_slice(&MASK);
        assert_eq!(
            parse_header(&top_bit),
            Err(Violation::LengthOverflow),
            "refused on the header"
        );
    }

    #[test]
    fn close_codes() {
        for code in [1000, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 3000, 4999] {
            assert!(close_code_allowed(code), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000, 65535,
        ] {
            assert!(!close_code_allowed(code), "{code}");
        }
        assert_eq!(parse_close(b"").unwrap(), None);
        assert_eq!(parse_close(b"\x0f\xa0").unwrap(), Some(4000));
        assert!(matches!(
            parse_close(b"\x03\xe8\xff"),
            Err(ReadError::CloseReason)
        ));
    }

    #[test]
    fn limits_are_checked_on_the_header() {
        // Exactly the limit is fine, one more is not.
        assert_eq!(read_all(&frame(0x81, &[b' '; 100], MASK), 100).len(), 1);
        let too_big = "message of 101 bytes is larger than 100 bytes";
        assert_eq!(
            read_all(&frame(0x81, &[b' '; 101], MASK)[..8], 100),
            [Err(too_big.to_string())],
            "no payload needed to refuse it"
        );
        // Fragments count together; control frames between them do not.
        let mut s = frame(0x01, &[b' '; 60], MASK);
        s.extend(frame(0x89, &[0; 125], MASK));
        s.extend(frame(0x80, &[b' '; 41], MASK));
        assert_eq!(
            read_all(&s, 100),
            [Ok(Message::Ping(vec![0; 125])), Err(too_big.to_string())]
        );
        // A length of 2^40: refused without allocating it.
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        huge.extend_from_slice(&MASK);
        let want = format!("message of {} bytes is larger than 100 bytes", 1u64 << 40);
        assert_eq!(read_all(&huge, 100), [Err(want)]);
    }

    #[test]
    fn invalid_utf8_text() {
        let e = "text is not UTF-8".to_string();
        assert_eq!(
            read_all(&frame(0x81, b"\xc0\x80", MASK), 64),
            [Err(e.clone())]
        );
        // A character cut between two fragments is fine; an unfinished one at the end is not.
        let mut s = frame(0x01, &"é".as_bytes()[..1], MASK);
        s.extend(frame(0x80, &"é".as_bytes()[1..], MASK));
        assert_eq!(read_all(&s, 64), [text("é")]);
        let mut s = frame(0x01, b"a", MASK);
        s.extend(frame(0x80, &"é".as_bytes()[..1], MASK));
        assert_eq!(read_all(&s, 64), [Err(e)]);
    }

    /// A stream that hands out its bytes in reads of the sizes given (cycled), with timeouts
    /// and interruptions among them.
    struct Chopped {
        data: VecDeque<u8>,
        steps: Vec<Step>,
        next: usize,
    }

    #[derive(Clone, Copy, Debug)]
    enum Step {
        Read(usize),
        Timeout,
        Interrupted,
    }

    impl Read for Chopped {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let step = self.steps[self.next % self.steps.len()];
            self.next += 1;
            match step {
                Step::Timeout => Err(io::ErrorKind::WouldBlock.into()),
                Step::Interrupted => Err(io::ErrorKind::Interrupted.into()),
                Step::Read(n) => {
                    let n = n.min(buf.len()).min(self.data.len());
                    for b in &mut buf[..n] {
                        *b = self.data.pop_front().expect("counted");
                    }
                    Ok(n)
                }
            }
        }
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => (1..40usize).prop_map(Step::Read),
            1 => (1..5000usize).prop_map(Step::Read),
            1 => Just(Step::Timeout),
            1 => Just(Step::Interrupted),
        ]
    }

    /// A message as the client sends it: its text, cut into fragments at these points, with
    /// a ping before some of them.
    #[derive(Clone, Debug)]
    struct Sent {
        text: String,
        cuts: Vec<usize>,
        pings: Vec<Vec<u8>>,
        mask: [u8; 4],
    }

    fn sent() -> impl Strategy<Value = Sent> {
        (
            "\\PC{0,300}",
            prop::collection::vec(any::<usize>(), 0..4),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..=125), 0..3),
            any::<[u8; 4]>(),
        )
            .prop_map(|(text, cuts, pings, mask)| Sent {
                text,
                cuts,
                pings,
                mask,
            })
    }

    /// The frames of `sent`, and the messages they must be read as.
    fn encode(sent: &Sent, out: &mut Vec<u8>, want: &mut Vec<Message>) {
        let bytes = sent.text.as_bytes();
        let mut cuts: Vec<usize> = sent.cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(bytes.len());
        let mut start = 0;
        for (i, &cut) in cuts.iter().enumerate() {
            if let Some(ping) = sent.pings.get(i).filter(|_| i > 0) {
                out.extend(frame(0x89, ping, sent.mask));
                want.push(Message::Ping(ping.clone()));
            }
            let last = i + 1 == cuts.len();
            let opcode = if i == 0 { 0x1 } else { 0x0 };
            let fin = if last { 0x80 } else { 0 };
            out.extend(frame(fin | opcode, &bytes[start..cut], sent.mask));
            start = cut;
        }
        want.push(Message::Text(sent.text.clone()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Messages cut into fragments, with pings between the fragments, come out whole and
        /// in order, the pings where they were, whatever the sizes of the reads and wherever
        /// a read times out; between messages the reader holds no buffer.
        #[test]
        fn messages_come_out_whole_from_any_reads(
            messages in prop::collection::vec(sent(), 1..6),
            steps in prop::collection::vec(step(), 1..12),
        ) {
            let mut bytes = Vec::new();
            let mut want = Vec::new();
            for m in &messages {
                encode(m, &mut bytes, &mut want);
            }
            let total = bytes.len();
            prop_assume!(steps.iter().any(|s| matches!(s, Step::Read(_))));
            let mut src = Chopped { data: bytes.into(), steps, next: 0 };
            let mut reader = FrameReader::new(4096);
            let mut got = Vec::new();
            let mut calls = 0;
            while got.len() < want.len() {
                calls += 1;
                prop_assert!(calls < 10 * total + 100, "no progress");
                match reader.read(&mut src) {
                    Ok(m) => {
                        if matches!(m, Message::Text(_)) {
                            prop_assert_eq!(reader.held(), 0);
                        }
                        got.push(m);
                    }
                    Err(ReadError::Io(e)) => prop_assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
                    Err(e) => prop_assert!(false, "{e}"),
                }
            }
            prop_assert_eq!(got, want);
            prop_assert!(src.data.is_empty());
        }

        /// Any bytes at all: the reader ends in a message, an error or the end of the input,
        /// never panics, and never allocates more than the limit for a payload.
        #[test]
        fn any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut reader = FrameReader::new(64);
            let mut src = &bytes[..];
            while let Ok(m) = reader.read(&mut src) {
                prop_assert!(reader.held() <= 64);
                if let Message::Text(t) = m {
                    prop_assert!(t.len() <= 64);
                }
            }
        }

        /// Our header parser and tungstenite's agree on every masked header.
        #[test]
        fn headers_agree_with_tungstenite(
            first in any::<u8>(),
            len in prop_oneof![0..=130u64, 65_530..=65_540u64, any::<u64>()],
            mask in any::<[u8; 4]>(),
        ) {
            let len = len >> 1;
            let header = FrameHeader {
                is_final: first & 0x80 != 0,
                rsv1: false,
                rsv2: false,
                rsv3: false,
                opcode: OpCode::from(first & 0x0F),
                mask: Some(mask),
            };
            let mut bytes = Vec::new();
            header.format(len, &mut bytes).unwrap();
            prop_assert_eq!(bytes.len(), header_len(bytes[1]));
            let ours = parse_header(&bytes);
            let control = matches!(header.opcode, OpCode::Control(_));
            match header.opcode {
                OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                    prop_assert_eq!(ours, Err(Violation::UnknownOpcode(first & 0x0F)));
                }
                _ if control && !header.is_final => {
                    prop_assert_eq!(ours, Err(Violation::FragmentedControl));
                }
                _ if control && len > 125 => prop_assert_eq!(ours, Err(Violation::LongControl)),
                _ => {
                    let ours = ours.unwrap();
                    prop_assert_eq!((ours.fin, ours.len, ours.mask), (header.is_final, len, mask));
                    prop_assert_eq!(u8::from(header.opcode), first & 0x0F);
                }
            }
        }

        /// Unmasking by words gives what unmasking byte by byte gives.
        #[test]
        fn unmask_by_words(payload in prop::collection::vec(any::<u8>(), 0..40), mask in any::<[u8; 4]>()) {
            let mut fast = payload.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            prop_assert_eq!(fast, slow);
        }
    }
}
