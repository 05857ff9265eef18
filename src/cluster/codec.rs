//! What travels on the bus, as text: the escaping of message bytes, the records, and the
//! payloads they are packed into. Pure; no I/O.
//!
//! # Escaping
//!
//! Bus payloads are text (PostgreSQL's NOTIFY payloads are text in the database's encoding and
//! cannot hold a NUL byte), but message data is any bytes but a newline. So data is escaped,
//! cheaply for ordinary text: bytes pass through as they are, except
//!
//! - NUL and the escape byte itself (DLE, 0x10: a control character that text hardly ever
//!   holds, so escaping costs nothing for ordinary messages),
//! - bytes that are not part of valid UTF-8 (or, for [`Charset::Ascii`], every byte above
//!   0x7F, for databases whose encoding is not UTF-8),
//!
//! each of which becomes DLE and two lowercase hex digits. Newlines never occur in what is
//! escaped (tags, tokens and message data cannot hold one), so a newline ends a record.
//!
//! # Records
//!
//! ```text
//! TAGS SP DATA LF                 a published message (tags normalised, comma-joined)
//! SP "unregister" SP TOKEN LF     a token was unregistered: close its WebSockets
//! SP "unset" SP TOKEN LF          a token lost tags: revoke what it no longer allows
//! ```
//!
//! TAGS, DATA and TOKEN are escaped. A record never starts with a space otherwise (tags are
//! never empty), which is what marks the control records.
//!
//! # Payloads
//!
//! The records a node sends in one unit (one PostgreSQL transaction) form a stream that is cut
//! into payloads of at most the engine's limit, each with a header line:
//!
//! ```text
//! NODE SP SEQ SP FLAG LF BODY
//! ```
//!
//! NODE is the sending node's random 64-bit id in 16 hex digits (new at every start), so a node
//! knows its own payloads and can ignore them. SEQ counts the node's payloads from 0 in hex: it
//! makes every payload unique (PostgreSQL folds identical payloads of one transaction into one)
//! and lets a receiver notice payloads it missed. FLAG is `s` when BODY starts a record and `c`
//! when it continues the record the previous payload ended in (a message larger than one
//! payload). A unit's last payload always ends a record, so a receiver that missed payloads
//! skips at most to the next record boundary.

pub use crate::relay::TokenChange;
use std::fmt::Write as _;

/// The escape byte: DLE, "data link escape".
pub const ESC: u8 = 0x10;

/// What the bus's text may hold unescaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// Valid UTF-8 (a database in UTF-8, or SQL_ASCII, which takes any bytes).
    Utf8,
    /// ASCII only: the database has another encoding, which might not hold every character.
    Ascii,
}

/// Why a record or payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad escape sequence")]
    Escape,
    #[error("malformed record")]
    Record,
    #[error("malformed payload header")]
    Header,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `b` is escaped even inside valid UTF-8.
#[inline]
fn special(b: u8) -> bool {
    b == 0 || b == ESC
}

fn push_escaped(out: &mut String, b: u8) {
    out.push(ESC as char);
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// Whether `bytes` need no escaping: what ordinary messages are. Each check is one fast pass
/// (`from_utf8` and `is_ascii` go a word at a time, `contains` of a byte is `memchr`), much
/// cheaper than looking at every byte in turn.
pub fn is_plain(bytes: &[u8], charset: Charset) -> bool {
    let text = match charset {
        Charset::Utf8 => std::str::from_utf8(bytes).is_ok(),
        Charset::Ascii => bytes.is_ascii(),
    };
    text && !bytes.contains(&0) && !bytes.contains(&ESC)
}

/// Appends `bytes` to `out`, escaped (see the module's documentation).
pub fn escape_into(bytes: &[u8], charset: Charset, out: &mut String) {
    if is_plain(bytes, charset) {
        out.push_str(std::str::from_utf8(bytes).expect("checked by is_plain"));
        return;
    }
    match charset {
        Charset::Utf8 => {
            for chunk in bytes.utf8_chunks() {
                push_text(chunk.valid(), out);
                for &b in chunk.invalid() {
                    push_escaped(out, b);
                }
            }
        }
        Charset::Ascii => {
            let mut rest = bytes;
            while !rest.is_empty() {
                let plain = rest
                    .iter()
                    .position(|&b| special(b) || !b.is_ascii())
                    .unwrap_or(rest.len());
                out.push_str(std::str::from_utf8(&rest[..plain]).expect("ASCII is UTF-8"));
                if let Some(&b) = rest.get(plain) {
                    push_escaped(out, b);
                    rest = &rest[plain + 1..];
                } else {
                    rest = &[];
                }
            }
        }
    }
}

/// Appends valid text, escaping only NUL and the escape byte.
fn push_text(mut text: &str, out: &mut String) {
    while let Some(at) = text.bytes().position(special) {
        out.push_str(&text[..at]);
        push_escaped(out, text.as_bytes()[at]);
        text = &text[at + 1..];
    }
    out.push_str(text);
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Appends the bytes that `text` (escaped) stands for to `out`.
///
/// # Errors
/// An escape byte not followed by two lowercase hex digits.
pub fn unescape_into(mut text: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    while let Some(at) = text.iter().position(|&b| b == ESC) {
        out.extend_from_slice(&text[..at]);
        let (Some(hi), Some(lo)) = (
            text.get(at + 1).copied().and_then(hex_value),
            text.get(at + 2).copied().and_then(hex_value),
        ) else {
            return Err(DecodeError::Escape);
        };
        out.push((hi << 4) | lo);
        text = &text[at + 3..];
    }
    out.extend_from_slice(text);
    Ok(())
}

/// One record of the stream, as read back.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A message; tags and data are still escaped (see [`unescape_into`]).
    Publish { tags: &'a [u8], data: &'a [u8] },
    /// A token change; the token is still escaped.
    Token(TokenChange<'a>),
}

/// Appends a message record.
pub fn push_message(out: &mut String, tags: &[u8], data: &[u8], charset: Charset) {
    escape_into(tags, charset, out);
    out.push(' ');
    escape_into(data, charset, out);
    out.push('\n');
}

/// Appends a message record for a delivery line (`publish TAGS DATA\n`) already known to be
/// plain text ([`is_plain`]): the record is the line without its `publish ` prefix.
pub fn push_plain_line(out: &mut String, line: &str) {
    out.push_str(line.strip_prefix("publish ").unwrap_or(line));
}

/// Appends a token-change record.
pub fn push_token_change(out: &mut String, change: TokenChange<'_>, charset: Charset) {
    let (word, token) = match change {
        TokenChange::Unregistered(t) => (" unregister ", t),
        TokenChange::Unset(t) => (" unset ", t),
    };
    out.push_str(word);
    escape_into(token, charset, out);
    out.push('\n');
}

/// Reads one record (without its newline).
///
/// # Errors
/// Not one of the record forms.
pub fn parse_record(line: &[u8]) -> Result<Record<'_>, DecodeError> {
    if let Some(control) = line.strip_prefix(b" ") {
        let (word, token) = split_space(control).ok_or(DecodeError::Record)?;
        if token.is_empty() {
            return Err(DecodeError::Record);
        }
        return match word {
            b"unregister" => Ok(Record::Token(TokenChange::Unregistered(token))),
            b"unset" => Ok(Record::Token(TokenChange::Unset(token))),
            _ => Err(DecodeError::Record),
        };
    }
    let (tags, data) = split_space(line).ok_or(DecodeError::Record)?;
    Ok(Record::Publish { tags, data })
}

fn split_space(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = s.iter().position(|&b| b == b' ')?;
    Some((&s[..at], &s[at + 1..]))
}

/// A payload's header, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub node: u64,
    pub seq: u64,
    /// The body continues a record begun in the previous payload.
    pub continues: bool,
}

/// The longest header: 16 hex digits, a space, up to 16 hex digits, a space, the flag and the
/// newline.
pub const MAX_HEADER: usize = 16 + 1 + 16 + 1 + 1 + 1;

/// Reads a payload's header; returns it and the body.
///
/// # Errors
/// Not a header this version writes.
pub fn parse_header(payload: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
    let bad = DecodeError::Header;
    let end = payload
        .iter()
        .take(MAX_HEADER)
        .position(|&b| b == b'\n')
        .ok_or(bad.clone())?;
    let mut words = payload[..end].split(|&b| b == b' ');
    let (Some(node), Some(seq), Some(flag), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(bad);
    };
    let hex = |w: &[u8]| -> Result<u64, DecodeError> {
        if w.is_empty() || w.len() > 16 {
            return Err(DecodeError::Header);
        }
        let s = std::str::from_utf8(w).map_err(|_| DecodeError::Header)?;
        u64::from_str_radix(s, 16).map_err(|_| DecodeError::Header)
    };
    let continues = match flag {
        b"s" => false,
        b"c" => true,
        _ => return Err(bad),
    };
    let header = Header {
        node: hex(node)?,
        seq: hex(seq)?,
        continues,
    };
    Ok((header, &payload[end + 1..]))
}

/// The node id as it appears in a payload's header (16 hex digits), which is how a receiver
/// recognises its own payloads without reading the rest of the header.
pub fn node_prefix(node: u64) -> String {
    format!("{node:016x} ")
}

/// Cuts a unit's stream of records into payloads of at most `max` bytes, numbering them from
/// `*seq` on. Cuts fall on character boundaries (a payload is text). Returns the payloads in
/// order; `*seq` is advanced past them.
pub fn pack(stream: &str, node: u64, seq: &mut u64, max: usize) -> Vec<String> {
    debug_assert!(max > MAX_HEADER + 4, "room for a header and a character");
    let mut out = Vec::with_capacity(stream.len() / (max - MAX_HEADER) + 1);
    let mut rest = stream;
    let mut continues = false;
    while !rest.is_empty() {
        let mut payload = String::with_capacity(max.min(rest.len() + MAX_HEADER));
        let _ = writeln!(
            payload,
            "{node:016x} {:x} {}",
            *seq,
            if continues { 'c' } else { 's' }
        );
        *seq += 1;
        let mut take = (max - payload.len()).min(rest.len());
        while !rest.is_char_boundary(take) {
            take -= 1;
        }
        payload.push_str(&rest[..take]);
        continues = !rest[..take].ends_with('\n');
        rest = &rest[take..];
        out.push(payload);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn esc(bytes: &[u8], charset: Charset) -> String {
        let mut s = String::new();
        escape_into(bytes, charset, &mut s);
        s
    }

    fn unesc(text: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        unescape_into(text, &mut v).unwrap();
        v
    }

    #[test]
    fn ordinary_text_passes_unchanged() {
        for s in [
            "hello world",
            "disk 91% full",
            "C:\\path",
            "{\"a\":1}",
            "ünïcödé ✓",
            "",
        ] {
            assert_eq!(esc(s.as_bytes(), Charset::Utf8), s);
        }
        assert_eq!(esc(b"plain ascii", Charset::Ascii), "plain ascii");
    }

    #[test]
    fn nul_escape_and_invalid_utf8_are_escaped() {
        assert_eq!(esc(b"a\0b", Charset::Utf8), "a\x1000b");
        assert_eq!(esc(b"\x10", Charset::Utf8), "\x1010");
        assert_eq!(esc(b"x\xff\xfey", Charset::Utf8), "x\x10ff\x10fey");
        // A truncated multi-byte character: each of its bytes is escaped.
        assert_eq!(esc(b"\xe2\x9c", Charset::Utf8), "\x10e2\x109c");
        assert_eq!(esc("é".as_bytes(), Charset::Ascii), "\x10c3\x10a9");
        assert_eq!(unesc(b"a\x1000b\x10ff"), b"a\0b\xff");
    }

    #[test]
    fn plain_lines_are_their_records() {
        assert!(is_plain(b"publish a,b hello world\n", Charset::Utf8));
        assert!(is_plain("publish é ü\n".as_bytes(), Charset::Utf8));
        assert!(!is_plain("publish é ü\n".as_bytes(), Charset::Ascii));
        for bad in [&b"a\0b"[..], b"a\x10b", b"a\xffb"] {
            assert!(!is_plain(bad, Charset::Utf8), "{bad:?}");
        }
        let mut plain = String::new();
        push_plain_line(&mut plain, "publish a,b hello world\n");
        let mut escaped = String::new();
        push_message(&mut escaped, b"a,b", b"hello world", Charset::Utf8);
        assert_eq!(plain, escaped);
    }

    #[test]
    fn bad_escapes_are_errors() {
        for bad in [&b"\x10"[..], b"\x101", b"\x10zz", b"\x10FF", b"ab\x10"] {
            let mut v = Vec::new();
            assert_eq!(
                unescape_into(bad, &mut v),
                Err(DecodeError::Escape),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn records() {
        let mut s = String::new();
        push_message(&mut s, b"a,b", b"hi there", Charset::Utf8);
        push_message(&mut s, b"a", b"", Charset::Utf8);
        push_token_change(&mut s, TokenChange::Unregistered(b"tok"), Charset::Utf8);
        push_token_change(&mut s, TokenChange::Unset(b"t\xffk"), Charset::Utf8);
        assert_eq!(s, "a,b hi there\na \n unregister tok\n unset t\x10ffk\n");
        let lines: Vec<&[u8]> = s.as_bytes().split(|&b| b == b'\n').collect();
        assert_eq!(
            parse_record(lines[0]),
            Ok(Record::Publish {
                tags: b"a,b",
                data: b"hi there"
            })
        );
        assert_eq!(
            parse_record(lines[1]),
            Ok(Record::Publish {
                tags: b"a",
                data: b""
            })
        );
        assert_eq!(
            parse_record(lines[2]),
            Ok(Record::Token(TokenChange::Unregistered(b"tok")))
        );
        assert_eq!(
            parse_record(lines[3]),
            Ok(Record::Token(TokenChange::Unset(b"t\x10ffk")))
        );
        for bad in [
            &b"notags"[..],
            b" unregister",
            b" unregister ",
            b" other tok",
            b" ",
        ] {
            assert_eq!(parse_record(bad), Err(DecodeError::Record), "{bad:?}");
        }
    }

    #[test]
    fn headers() {
        let mut seq = 0x2a;
        let p = pack("a 1\n", 0x3f2a_9c0d_11aa_4b7e, &mut seq, 100);
        assert_eq!(p, ["3f2a9c0d11aa4b7e 2a s\na 1\n"]);
        assert_eq!(seq, 0x2b);
        let (h, body) = parse_header(p[0].as_bytes()).unwrap();
        assert_eq!(
            h,
            Header {
                node: 0x3f2a_9c0d_11aa_4b7e,
                seq: 0x2a,
                continues: false
            }
        );
        assert_eq!(body, b"a 1\n");
        assert!(p[0].starts_with(&node_prefix(0x3f2a_9c0d_11aa_4b7e)));
        for bad in [
            &b""[..],
            b"1 2\n",
            b"1 2 x\n",
            b"1 2 s 4\n",
            b"g 2 s\n",
            b"1 -2 s\n",
            b"11112222333344445 2 s\n",
            b"1 2 s",
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn long_records_are_cut_into_continuing_payloads() {
        let mut stream = String::new();
        push_message(&mut stream, b"big", &[b'x'; 250], Charset::Utf8);
        push_message(&mut stream, b"small", b"1", Charset::Utf8);
        let mut seq = 0;
        let payloads = pack(&stream, 1, &mut seq, 100);
        assert!(payloads.len() >= 3);
        assert_eq!(seq, payloads.len() as u64);
        let mut joined = String::new();
        for (i, p) in payloads.iter().enumerate() {
            assert!(p.len() <= 100);
            let (h, body) = parse_header(p.as_bytes()).unwrap();
            assert_eq!(h.seq, i as u64);
            assert_eq!(h.continues, !joined.is_empty() && !joined.ends_with('\n'));
            joined.push_str(std::str::from_utf8(body).unwrap());
        }
        assert_eq!(joined, stream);
    }

    /// Bytes that are mostly text, with the awkward ones mixed in; or any Unicode text.
    fn data(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            6 => prop::sample::select(&b"abc xyz,.%\\\"{}"[..]),
            1 => Just(0u8),
            1 => Just(ESC),
            1 => 0x80u8..=0xff,
            1 => any::<u8>().prop_filter("no newline", |&b| b != b'\n'),
        ];
        prop_oneof![
            prop::collection::vec(byte, 0..max_len),
            prop::collection::vec(any::<char>(), 0..max_len / 3).prop_map(|chars| {
                chars
                    .into_iter()
                    .filter(|&c| c != '\n')
                    .collect::<String>()
                    .into_bytes()
            }),
        ]
    }

    fn charset() -> impl Strategy<Value = Charset> {
        prop_oneof![Just(Charset::Utf8), Just(Charset::Ascii)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes but a newline come back byte-exact, the escaped text is valid text for
        /// the charset without NUL or newline, and valid UTF-8 without NUL or DLE is not
        /// touched.
        #[test]
        fn escaping_round_trips(bytes in data(300), charset in charset()) {
            prop_assume!(!bytes.contains(&b'\n'));
            let text = esc(&bytes, charset);
            prop_assert!(!text.contains('\0') && !text.contains('\n'));
            if charset == Charset::Ascii {
                prop_assert!(text.is_ascii());
            }
            prop_assert_eq!(unesc(text.as_bytes()), bytes.clone());
            if let (Ok(s), Charset::Utf8) = (std::str::from_utf8(&bytes), charset)
                && !bytes.iter().any(|&b| special(b))
            {
                prop_assert_eq!(text.as_str(), s);
            }
        }

        /// Messages and token changes packed into payloads of any size come back in order
        /// and byte-exact; every payload is within the limit, unique, and numbered in order.
        #[test]
        fn packing_round_trips(
            msgs in prop::collection::vec((data(12), data(120), any::<bool>()), 1..12),
            max in 44usize..400,
            charset in charset(),
            first_seq in 0u64..u64::MAX / 2,
        ) {
            let mut stream = String::new();
            let mut want = Vec::new();
            for (tags, payload, control) in &msgs {
                let tags: Vec<u8> = tags.iter().copied().filter(|&b| b != b' ').collect();
                if *control && !payload.is_empty() {
                    push_token_change(&mut stream, TokenChange::Unset(payload), charset);
                    want.push((Vec::new(), payload.clone()));
                } else if !tags.is_empty() {
                    push_message(&mut stream, &tags, payload, charset);
                    want.push((tags, payload.clone()));
                }
            }
            let mut seq = first_seq;
            let payloads = pack(&stream, 7, &mut seq, max);
            let mut joined = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                prop_assert!(p.len() <= max);
                let (h, body) = parse_header(p.as_bytes()).unwrap();
                prop_assert_eq!((h.node, h.seq), (7, first_seq + i as u64));
                joined.extend_from_slice(body);
            }
            prop_assert_eq!(seq, first_seq + payloads.len() as u64);
            let mut got = Vec::new();
            for line in joined.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                match parse_record(line).unwrap() {
                    Record::Publish { tags, data } => got.push((unesc(tags), unesc(data))),
                    Record::Token(TokenChange::Unset(t)) => got.push((Vec::new(), unesc(t))),
                    Record::Token(other) => prop_assert!(false, "{:?}", other),
                }
            }
            prop_assert_eq!(got, want);
        }
    }
}
