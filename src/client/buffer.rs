//! A client handle's write buffer: lines are copied into place in a buffer allocated once,
//! and written out, under the connection's write lock, only when it is full or flushed. A
//! publish therefore takes no lock and makes no system call, which is what lets a program
//! publish through [`Client`](super::Client) nearly as fast as a loop that writes prepared
//! lines itself.

/// Bytes waiting to be written.
pub(crate) struct Buffer {
    /// Allocated at its full size on first use (a handle that only receives never needs it).
    buf: Box<[u8]>,
    /// The bytes of `buf` in use.
    len: usize,
    cap: usize,
}

impl Buffer {
    pub fn new(cap: usize) -> Buffer {
        Buffer {
            buf: Box::default(),
            len: 0,
            cap,
        }
    }

    /// Appends the parts of one line when they fit; false (and nothing appended) when they
    /// do not: the caller writes out what is buffered and tries again, or writes a line
    /// longer than the whole buffer on its own.
    #[inline]
    pub fn try_append(&mut self, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.len + len > self.cap {
            return false;
        }
        if self.buf.is_empty() {
            self.buf = vec![0; self.cap].into_boxed_slice();
        }
        let mut at = self.len;
        for part in parts {
            self.buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        self.len = at;
        true
    }

    /// What is buffered.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_go_in_until_the_buffer_is_full() {
        let mut b = Buffer::new(30);
        assert!(b.is_empty());
        assert!(b.try_append(&[b"publish ", b"a,b", b" ", b"one", b"\n"])); // 16 bytes
        assert!(b.try_append(&[b"ping\n"])); // 21
        // 13 more would be 34.
        assert!(!b.try_append(&[b"publish ", b"a", b" ", b"xy", b"\n"]));
        assert_eq!(b.bytes(), b"publish a,b one\nping\n");
        b.clear();
        assert!(b.is_empty());
        assert!(b.try_append(&[b"publish ", b"a", b" ", b"xy", b"\n"]));
        assert_eq!(b.bytes(), b"publish a xy\n");
        // Never more than the buffer: a longer line is the caller's to write.
        b.clear();
        assert!(!b.try_append(&[&[b'x'; 31]]));
        assert!(b.try_append(&[&[b'x'; 30]]));
    }

    #[test]
    fn memory_is_taken_on_first_use() {
        let mut b = Buffer::new(1 << 20);
        assert_eq!(b.buf.len(), 0);
        assert_eq!(b.bytes(), b"");
        assert!(b.try_append(&[b"ping\n"]));
        assert_eq!(b.buf.len(), 1 << 20);
    }
}
