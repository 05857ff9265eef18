//! Splits a byte stream into lines, in a buffer that never grows past the longest allowed line.
//!
//! Generic over `Read`, so it is tested with byte slices. The buffer starts small (an idle
//! subscriber costs little), doubles while reads fill it (a busy publisher gets big reads), and
//! grows beyond that only as far as one line of `max_line` bytes needs. A line longer than that
//! is reported once as [`Event::TooLong`]; the rest of it is read and thrown away, never kept.

use std::io::{self, Read};

/// What the buffer yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete line, without `\n` and without a `\r` before it.
    Line(&'a [u8]),
    /// A line longer than the limit began; its bytes are being discarded.
    TooLong,
}

/// Size of a new connection's buffer.
const INITIAL: usize = 512;
/// Size the buffer may grow to for throughput, whatever the line limit.
const BULK: usize = 64 * 1024;

/// The most a line buffer holds for lines of at most `max_line` bytes: one longest line with
/// its `\r\n`, or the bulk read size, whichever is larger.
pub fn max_buffer(max_line: usize) -> usize {
    (max_line + 2).max(BULK)
}

/// A line splitter over a bounded buffer.
pub struct LineReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Where the search for the next `\n` resumes.
    scanned: usize,
    /// Inside an over-long line: drop bytes until its end.
    discarding: bool,
    max_line: usize,
    /// The last read filled the buffer, so a bigger one would have taken more.
    filled: bool,
}

impl LineReader {
    /// A reader for lines of at most `max_line` bytes (not counting `\r\n`).
    pub fn new(max_line: usize) -> LineReader {
        LineReader {
            buf: Vec::new(),
            start: 0,
            end: 0,
            scanned: 0,
            discarding: false,
            max_line,
            filled: false,
        }
    }

    /// The most the buffer can hold.
    fn cap(&self) -> usize {
        max_buffer(self.max_line)
    }

    /// Reads once from `r`. Returns the number of bytes read; 0 means end of stream.
    ///
    /// # Errors
    /// The read failed.
    pub fn fill(&mut self, r: &mut impl Read) -> io::Result<usize> {
        self.make_room();
        let n = r.read(&mut self.buf[self.end..])?;
        self.filled = self.end + n == self.buf.len();
        self.end += n;
        Ok(n)
    }

    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
            if self.buf.len() > BULK {
                // A long line is done: do not keep its megabyte around.
                self.buf = vec![0; BULK];
            }
        }
        if self.buf.is_empty() {
            self.buf = vec![0; INITIAL];
            return;
        }
        let want_bigger = self.filled && self.buf.len() < BULK;
        if self.end < self.buf.len() && !want_bigger {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.scanned -= self.start;
            self.end -= self.start;
            self.start = 0;
        }
        if (self.end == self.buf.len() || want_bigger) && self.buf.len() < self.cap() {
            let new_len = (self.buf.len() * 2).min(self.cap());
            self.buf.resize(new_len, 0);
        }
    }

    /// The next complete line or event in what has been read, if any.
    pub fn next_event(&mut self) -> Option<Event<'_>> {
        loop {
            let window = &self.buf[self.scanned..self.end];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let nl = self.scanned + i;
                    let (start, discarding) = (self.start, self.discarding);
                    self.start = nl + 1;
                    self.scanned = self.start;
                    self.discarding = false;
                    if discarding {
                        continue;
                    }
                    let mut line = &self.buf[start..nl];
                    if let [rest @ .., b'\r'] = line {
                        line = rest;
                    }
                    if line.len() > self.max_line {
                        return Some(Event::TooLong);
                    }
                    return Some(Event::Line(line));
                }
                None => {
                    self.scanned = self.end;
                    if self.discarding {
                        self.start = self.end;
                        return None;
                    }
                    // A pending line may still end in `\r\n`, so it may be max_line + 1 long.
                    if self.end - self.start > self.max_line + 1 {
                        self.discarding = true;
                        self.start = self.end;
                        return Some(Event::TooLong);
                    }
                    return None;
                }
            }
        }
    }

    /// What is left after the stream ended: an unterminated last line, as a line (less one
    /// `\r` at its end) or `TooLong`; `None` when nothing is left, or when the rest belongs to a
    /// line already reported too long.
    pub fn take_rest(&mut self) -> Option<Event<'_>> {
        if self.discarding || self.start == self.end {
            return None;
        }
        let mut rest = &self.buf[self.start..self.end];
        self.start = self.end;
        if let [line @ .., b'\r'] = rest {
            rest = line;
        }
        Some(if rest.len() > self.max_line {
            Event::TooLong
        } else {
            Event::Line(rest)
        })
    }

    /// The buffer's current size in bytes (for tests of its bounds).
    #[cfg(any(test, fuzzing))]
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
}

/// The rules the line reader is checked against, shared by its property tests and its fuzz
/// target (cargo-fuzz builds with `--cfg fuzzing`): a plain model of the framing, and a driver
/// that feeds a reader in reads of given sizes and checks its bounds after every step.
#[cfg(any(test, fuzzing))]
pub mod oracle {
    use super::{Event, LineReader, max_buffer};

    /// What the reader may report, owned.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Got {
        Line(Vec<u8>),
        TooLong,
        Rest(Vec<u8>),
    }

    /// What a reader for lines of at most `max_line` bytes reports for `data`, however it is
    /// cut into reads: each `\n`-terminated line (less one `\r` before the `\n`) or `TooLong`;
    /// then an unterminated last line, returned as it is when it fits, reported as too long
    /// when it outgrew the `\r\n` allowance while being read, and dropped in between.
    pub fn model(data: &[u8], max_line: usize) -> Vec<Got> {
        let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        let rest = lines.pop().expect("split yields at least one part");
        let mut out: Vec<Got> = lines
            .into_iter()
            .map(|l| {
                let l = l.strip_suffix(b"\r").unwrap_or(l);
                if l.len() > max_line {
                    Got::TooLong
                } else {
                    Got::Line(l.to_vec())
                }
            })
            .collect();
        // Too long while being read (it outgrew the `\r\n` allowance), or at the end.
        let line = rest.strip_suffix(b"\r").unwrap_or(rest);
        if rest.len() > max_line + 1 || line.len() > max_line {
            out.push(Got::TooLong);
        } else if !rest.is_empty() {
            out.push(Got::Rest(line.to_vec()));
        }
        out
    }

    /// Runs a reader over `data` in reads of the given sizes (cycled), checking the bounds
    /// after every step.
    pub fn run(data: &[u8], reads: &[usize], max_line: usize) -> Vec<Got> {
        let mut lr = LineReader::new(max_line);
        let mut out = Vec::new();
        let mut at = 0;
        for &size in reads.iter().cycle() {
            let end = (at + size).min(data.len());
            let n = lr.fill(&mut &data[at..end]).unwrap();
            at += n;
            assert!(
                lr.capacity() <= max_buffer(max_line),
                "buffer {}",
                lr.capacity()
            );
            while let Some(e) = lr.next_event() {
                out.push(match e {
                    Event::Line(l) => {
                        assert!(l.len() <= max_line, "line of {} bytes", l.len());
                        Got::Line(l.to_vec())
                    }
                    Event::TooLong => Got::TooLong,
                });
            }
            if n == 0 {
                assert_eq!(at, data.len(), "a read took nothing before the end");
                break;
            }
        }
        match lr.take_rest() {
            Some(Event::Line(rest)) => out.push(Got::Rest(rest.to_vec())),
            Some(Event::TooLong) => out.push(Got::TooLong),
            None => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its data in fixed-size pieces.
    struct Pieces<'a> {
        data: &'a [u8],
        piece: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.piece.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn events(data: &[u8], piece: usize, max_line: usize) -> Vec<String> {
        let mut r = Pieces { data, piece };
        let mut lr = LineReader::new(max_line);
        let mut out = Vec::new();
        loop {
            let n = lr.fill(&mut r).unwrap();
            while let Some(e) = lr.next_event() {
                out.push(match e {
                    Event::Line(l) => String::from_utf8_lossy(l).into_owned(),
                    Event::TooLong => "<too long>".into(),
                });
            }
            assert!(lr.capacity() <= (max_line + 2).max(BULK));
            if n == 0 {
                match lr.take_rest() {
                    Some(Event::Line(rest)) => {
                        out.push(format!("<rest {}>", String::from_utf8_lossy(rest)));
                    }
                    Some(Event::TooLong) => out.push("<too long>".into()),
                    None => {}
                }
                return out;
            }
        }
    }

    #[test]
    fn splits_lines_in_any_piece_size() {
        for piece in [1, 2, 3, 7, 100, 10_000] {
            assert_eq!(
                events(b"ping\r\nlist\n\nx y\n", piece, 100),
                ["ping", "list", "", "x y"]
            );
        }
    }

    #[test]
    fn too_long_line_is_reported_once_and_skipped() {
        let mut data = b"ping\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 5000));
        data.extend_from_slice(b"\nlist\n");
        for piece in [1, 10, 64, 4096, 100_000] {
            assert_eq!(
                events(&data, piece, 100),
                ["ping", "<too long>", "list"],
                "piece {piece}"
            );
        }
    }

    #[test]
    fn max_line_with_crlf_fits_and_one_more_byte_does_not() {
        let max = 70_000;
        let mut ok = vec![b'a'; max];
        ok.extend_from_slice(b"\r\n");
        let mut long = vec![b'b'; max + 1];
        long.extend_from_slice(b"\n");
        let mut data = ok.clone();
        data.extend_from_slice(&long);
        data.extend_from_slice(b"ping\n");
        for piece in [1000, 65536, 200_000] {
            let ev = events(&data, piece, max);
            assert_eq!(ev.len(), 3);
            assert_eq!(ev[0].len(), max);
            assert_eq!(ev[1..], ["<too long>", "ping"]);
        }
    }

    #[test]
    fn unterminated_last_line_is_returned_at_the_end() {
        assert_eq!(events(b"ping\nlist", 3, 100), ["ping", "<rest list>"]);
        // Like any line, less its `\r` (`printf 'ping\r' | nc`).
        assert_eq!(events(b"ping\r", 3, 100), ["<rest ping>"]);
    }

    #[test]
    fn unterminated_last_line_over_the_limit_is_reported() {
        // One byte over, without `\r`: not a line, and said so.
        let mut over = vec![b'a'; 101];
        assert_eq!(events(&over, 7, 100), ["<too long>"]);
        // The same length ending in `\r` is a whole line of 100 bytes.
        over[100] = b'\r';
        assert_eq!(
            events(&over, 7, 100),
            [format!("<rest {}>", "a".repeat(100))]
        );
        // Longer still: reported once, while it was being read.
        assert_eq!(events(&[b'a'; 300], 7, 100), ["<too long>"]);
    }

    #[test]
    fn buffer_shrinks_after_a_long_line() {
        let mut data = vec![b'a'; 500_000];
        data.push(b'\n');
        let mut r = Pieces {
            data: &data,
            piece: 1 << 20,
        };
        let mut lr = LineReader::new(1 << 20);
        while lr.fill(&mut r).unwrap() > 0 {
            while lr.next_event().is_some() {}
        }
        assert!(lr.capacity() <= BULK);
    }

    use super::oracle::{model, run};
    use proptest::prelude::*;

    /// A stream made of runs of line bytes, `\r` and `\n`, up to `run` bytes each.
    fn stream(runs: usize, run: usize) -> impl Strategy<Value = Vec<u8>> {
        let piece = (prop::sample::select(&b"ab\r\n"[..]), 1..=run);
        prop::collection::vec(piece, 0..runs).prop_map(|pieces| {
            pieces
                .into_iter()
                .flat_map(|(b, n)| std::iter::repeat_n(b, n))
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Short lines around a small limit, read in pieces of any size: the events are the
        /// model's, lines never exceed the limit, and the buffer stays within its bound.
        #[test]
        fn small_lines_in_any_pieces(
            data in stream(40, 12),
            reads in prop::collection::vec(1..=40usize, 1..8),
            max_line in 1..=16usize,
        ) {
            prop_assert_eq!(run(&data, &reads, max_line), model(&data, max_line));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The same around the 64 KiB bulk size, where the buffer grows, is compacted and
        /// shrinks back.
        #[test]
        fn long_lines_in_any_pieces(
            data in stream(8, 70_000),
            reads in prop::collection::vec(1..=100_000usize, 1..6),
            max_line in prop_oneof![100..=200usize, 65_000..=66_000usize, 69_000..=70_000usize],
        ) {
            prop_assert_eq!(run(&data, &reads, max_line), model(&data, max_line));
        }
    }
}
