//! The write half's buffer: lines are assembled in place and written when the buffer is full
//! or flushed. A `publish` line is a few copies into a buffer allocated once, which is what
//! lets a program publish through [`Client`](super::Client) nearly as fast as a loop that
//! writes prepared lines itself.

use std::io::{self, Write};

/// A write buffer over `W`.
pub(crate) struct Buffer<W> {
    /// Allocated once at its full size, so that appending is copying into place.
    buf: Box<[u8]>,
    /// The bytes of `buf` in use.
    len: usize,
    sink: W,
}

impl<W: Write> Buffer<W> {
    pub fn new(sink: W, cap: usize) -> Buffer<W> {
        Buffer {
            buf: vec![0; cap].into_boxed_slice(),
            len: 0,
            sink,
        }
    }

    /// Appends `publish TAGS DATA\n`.
    ///
    /// # Errors
    /// Writing what was buffered failed; the line may then be partly written.
    #[inline]
    pub fn publish(&mut self, tags: &str, data: &[u8]) -> io::Result<()> {
        let parts = [b"publish ".as_slice(), tags.as_bytes(), b" ", data, b"\n"];
        self.append(&parts)
    }

    /// Appends `line` as it is (it ends with its `\n`).
    ///
    /// # Errors
    /// As [`publish`](Self::publish).
    pub fn line(&mut self, line: &[u8]) -> io::Result<()> {
        self.append(&[line])
    }

    /// Writes what is buffered.
    ///
    /// # Errors
    /// The write failed; part of the buffer may have been written.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.len > 0 {
            let len = std::mem::take(&mut self.len);
            self.sink.write_all(&self.buf[..len])?;
        }
        Ok(())
    }

    /// Appends the parts of one line: in place when they fit (after writing what is buffered,
    /// if need be), otherwise written on their own.
    #[inline]
    fn append(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.len + len > self.buf.len() {
            self.flush()?;
            if len > self.buf.len() {
                return self.sink.write_all(&parts.concat());
            }
        }
        let mut at = self.len;
        for part in parts {
            self.buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        self.len = at;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records each write, taking at most `chunk` bytes at a time.
    struct Sink {
        writes: Vec<Vec<u8>>,
        chunk: usize,
        fail: bool,
    }

    impl Write for &mut Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.fail {
                return Err(io::Error::other("broken"));
            }
            let n = buf.len().min(self.chunk);
            self.writes.push(buf[..n].to_vec());
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn sink(chunk: usize) -> Sink {
        Sink {
            writes: Vec::new(),
            chunk,
            fail: false,
        }
    }

    #[test]
    fn lines_wait_for_a_full_buffer_or_a_flush() {
        let mut s = sink(usize::MAX);
        let mut b = Buffer::new(&mut s, 30);
        b.publish("a,b", b"one").unwrap(); // 16 bytes
        b.line(b"ping\n").unwrap(); // 21
        b.publish("a", b"xy").unwrap(); // 13 more would be 34: the first two go out
        b.flush().unwrap();
        b.flush().unwrap();
        assert_eq!(
            s.writes,
            [
                b"publish a,b one\nping\n".to_vec(),
                b"publish a xy\n".to_vec()
            ]
        );
    }

    #[test]
    fn a_line_longer_than_the_buffer_is_written_alone() {
        let mut s = sink(7);
        let mut b = Buffer::new(&mut s, 16);
        b.line(b"ping\n").unwrap();
        b.publish("t", &[b'x'; 40]).unwrap();
        assert_eq!(b.len, 0);
        b.publish("t", b"").unwrap();
        b.flush().unwrap();
        let all: Vec<u8> = s.writes.concat();
        let want = [
            b"ping\n".as_slice(),
            b"publish t ",
            &[b'x'; 40],
            b"\npublish t \n",
        ]
        .concat();
        assert_eq!(all, want);
        // Partial writes were continued, never repeated.
        assert!(s.writes.iter().all(|w| w.len() <= 7));
    }

    #[test]
    fn a_failed_write_is_reported() {
        let mut s = sink(usize::MAX);
        s.fail = true;
        let mut b = Buffer::new(&mut s, 8);
        assert!(b.publish("a", b"too long to stay").is_err());
        assert!(b.flush().is_ok(), "nothing is left to write again");
    }
}
