//! The write half's buffer: lines are assembled in place and written when the buffer is full
//! or flushed. A `publish` line is three copies into one buffer, which is what lets a program
//! publish through [`Client`](super::Client) about as fast as a loop that writes prepared lines
//! itself.

use std::io::{self, Write};

/// A write buffer over `W`.
pub(crate) struct Buffer<W> {
    buf: Vec<u8>,
    /// Bytes buffered before a write; a longer line is written on its own.
    cap: usize,
    sink: W,
}

impl<W: Write> Buffer<W> {
    pub fn new(sink: W, cap: usize) -> Buffer<W> {
        let cap = cap.max(1);
        Buffer {
            buf: Vec::with_capacity(cap),
            cap,
            sink,
        }
    }

    /// Appends `publish TAGS DATA\n`.
    ///
    /// # Errors
    /// Writing what was buffered failed; the line may then be partly written.
    #[inline]
    pub fn publish(&mut self, tags: &str, data: &[u8]) -> io::Result<()> {
        let len = "publish ".len() + tags.len() + 1 + data.len() + 1;
        self.make_room(len)?;
        self.buf.extend_from_slice(b"publish ");
        self.buf.extend_from_slice(tags.as_bytes());
        self.buf.push(b' ');
        self.buf.extend_from_slice(data);
        self.buf.push(b'\n');
        self.written_if_full()
    }

    /// Appends `line` as it is (it ends with its `\n`).
    ///
    /// # Errors
    /// As [`publish`](Self::publish).
    pub fn line(&mut self, line: &[u8]) -> io::Result<()> {
        self.make_room(line.len())?;
        self.buf.extend_from_slice(line);
        self.written_if_full()
    }

    /// Writes what is buffered.
    ///
    /// # Errors
    /// The write failed; part of the buffer may have been written.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let written = self.sink.write_all(&self.buf);
            self.buf.clear();
            written?;
        }
        Ok(())
    }

    /// Writes what is buffered when `len` more bytes would not fit.
    #[inline]
    fn make_room(&mut self, len: usize) -> io::Result<()> {
        if self.buf.len() + len > self.cap {
            self.flush()?;
        }
        Ok(())
    }

    /// A line longer than the buffer went in alone: write it, and give its memory back.
    #[inline]
    fn written_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() >= self.cap {
            self.flush()?;
            if self.buf.capacity() > self.cap {
                self.buf = Vec::with_capacity(self.cap);
            }
        }
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
    fn a_long_line_is_written_alone_and_its_memory_given_back() {
        let mut s = sink(7);
        let mut b = Buffer::new(&mut s, 16);
        b.line(b"ping\n").unwrap();
        b.publish("t", &[b'x'; 40]).unwrap();
        assert_eq!(b.buf.capacity(), 16);
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
