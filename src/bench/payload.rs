//! The clock every thread of a run shares, and the payload that carries a message's identity.
//!
//! A payload is `PUB.SEQ.SENT.` followed by `x` up to `--size` bytes: the publisher's index,
//! its sequence number from 0, and the send time in nanoseconds on the run's [`Clock`], all in
//! decimal. It is printable ASCII with no space, quote or backslash, so it travels unchanged
//! in a TCP line and in a WebSocket JSON string.

use std::time::Instant;

/// Digits budgeted for the send time: 10^15 ns is more than eleven days.
const SENT_DIGITS: usize = 15;

/// A monotonic clock started once per run and copied into every thread, so that a send time
/// written by a publisher and a receive time read by a subscriber are comparable.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock reading 0 now.
    pub fn start() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since the clock started.
    #[inline]
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Seconds since the clock started.
    pub fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// What a payload says about its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u64,
    pub seq: u64,
    pub sent: u64,
}

fn digits(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

/// The smallest `--size` that holds the header of every message of a run.
pub fn min_size(publishers: usize, msgs: u64) -> usize {
    digits(publishers.saturating_sub(1) as u64) + digits(msgs.saturating_sub(1)) + SENT_DIGITS + 3
}

/// Writes `v` in decimal at `buf[at..]`; returns the position after it.
#[inline]
fn put_decimal(buf: &mut [u8], at: usize, mut v: u64) -> usize {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let n = tmp.len() - i;
    buf[at..at + n].copy_from_slice(&tmp[i..]);
    at + n
}

/// Fills `buf` (the whole payload) with the stamp and padding.
///
/// # Panics
/// `buf` is shorter than the stamp; [`min_size`] prevents that.
#[inline]
pub fn encode(buf: &mut [u8], stamp: Stamp) {
    let mut at = put_decimal(buf, 0, stamp.publisher);
    buf[at] = b'.';
    at = put_decimal(buf, at + 1, stamp.seq);
    buf[at] = b'.';
    at = put_decimal(buf, at + 1, stamp.sent);
    if at < buf.len() {
        buf[at] = b'.';
        at += 1;
    }
    buf[at..].fill(b'x');
}

/// Reads one decimal number ending at a `.` or at the end; returns it and the position after
/// the dot.
#[inline]
fn take_decimal(p: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let start = at;
    let mut v: u64 = 0;
    while let Some(&c) = p.get(at) {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        at += 1;
    }
    if at == start {
        return None;
    }
    match p.get(at) {
        None => Some((v, at)),
        Some(b'.') => Some((v, at + 1)),
        Some(_) => None,
    }
}

/// Reads the stamp at the start of a payload; `None` when it is not one of ours.
#[inline]
pub fn decode(p: &[u8]) -> Option<Stamp> {
    let (publisher, at) = take_decimal(p, 0)?;
    let (seq, at) = take_decimal(p, at)?;
    let (sent, _) = take_decimal(p, at)?;
    Some(Stamp {
        publisher,
        seq,
        sent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let stamp = Stamp {
            publisher: 3,
            seq: 12_345,
            sent: 987_654_321_012,
        };
        let mut buf = [0u8; 64];
        encode(&mut buf, stamp);
        assert_eq!(&buf[..26], b"3.12345.987654321012.xxxxx");
        assert!(buf.iter().all(|&c| c.is_ascii_graphic() && c != b'"'));
        assert_eq!(decode(&buf), Some(stamp));
    }

    #[test]
    fn the_smallest_size_fits_the_largest_stamp() {
        let mut buf = vec![0u8; min_size(10, 1000)];
        let stamp = Stamp {
            publisher: 9,
            seq: 999,
            sent: 999_999_999_999_999,
        };
        encode(&mut buf, stamp);
        assert_eq!(decode(&buf), Some(stamp));
        assert_eq!(min_size(1, 1), 1 + 1 + 15 + 3);
    }

    #[test]
    fn foreign_payloads_are_refused() {
        for p in [
            &b""[..],
            b"hello",
            b"1.2",
            b"1.x.3",
            b"1..3",
            b"99999999999999999999.1.1",
        ] {
            assert_eq!(decode(p), None, "{}", String::from_utf8_lossy(p));
        }
        assert!(decode(b"1.2.3").is_some());
    }
}
