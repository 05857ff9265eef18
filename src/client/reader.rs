//! The connection's reader thread: the only reader of the socket. It splits what arrives into
//! lines, puts deliveries and notices into the [`Inbox`] and hands replies to [`Replies`], so
//! that a program thread blocked in `recv` and another waiting for a `list` reply are both
//! served, and neither holds a lock while the socket is read.

use super::Shared;
use super::event::{DroppedBy, Event, Message};
use super::replies::End;
use super::wire::{self, Line};
use crate::tags::TagSet;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};

/// Size of the read buffer while lines are short.
const BULK: usize = 64 * 1024;
/// The reader thread parses and copies; it needs little stack.
const STACK: usize = 256 * 1024;

/// Starts the reader thread of a connection.
pub(crate) fn spawn(
    sock: Arc<TcpStream>,
    shared: Arc<Shared>,
    max_line: usize,
) -> io::Result<JoinHandle<()>> {
    let name = match sock.peer_addr() {
        Ok(peer) => format!("mist-client {peer}"),
        Err(_) => "mist-client".into(),
    };
    thread::Builder::new()
        .name(name)
        .stack_size(STACK)
        .spawn(move || {
            let end = read_loop(&sock, &shared, max_line);
            // Whatever ended the reading, the connection is over: writers must fail too.
            let _ = sock.shutdown(Shutdown::Both);
            shared.finish(end);
        })
}

/// Reads until the connection ends; returns why it ended.
fn read_loop(sock: &TcpStream, shared: &Shared, max_line: usize) -> End {
    let mut lines = LineBuf::new(max_line);
    let mut events = Vec::new();
    let mut reader = sock;
    loop {
        match lines.fill(&mut reader) {
            Ok(0) if shared.closing.load(Ordering::Acquire) => return End::Local,
            Ok(0) => return End::Eof,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) if shared.closing.load(Ordering::Acquire) => return End::Local,
            Err(e) => return End::io(&e),
        }
        while let Some(item) = lines.next_item() {
            let line = match item {
                Item::Line(line) => line,
                Item::TooLong { delivery: true } => {
                    events.push(Event::Dropped {
                        count: 1,
                        by: DroppedBy::Client,
                    });
                    continue;
                }
                Item::TooLong { delivery: false } => {
                    return End::Protocol(format!("a reply longer than {max_line} bytes"));
                }
            };
            match wire::classify(line) {
                Line::Delivery { tags, data } => match TagSet::parse(tags, usize::MAX) {
                    Ok(tags) => events.push(Event::Message(Message {
                        tags,
                        data: data.to_vec(),
                    })),
                    Err(e) => {
                        return End::Protocol(format!("a delivery with bad tags ({e})"));
                    }
                },
                Line::Dropped(count) => events.push(Event::Dropped {
                    count,
                    by: DroppedBy::Server,
                }),
                reply => {
                    // What arrived before the reply is received first: once a `ping` returns,
                    // every message delivered ahead of its `pong` is waiting in the inbox.
                    shared.inbox.put(&mut events);
                    if let Err(e) = shared.replies.lock().on_line(reply) {
                        return End::Protocol(e);
                    }
                }
            }
        }
        shared.inbox.put(&mut events);
    }
}

/// What the line buffer yields.
#[derive(Debug, PartialEq, Eq)]
enum Item<'a> {
    /// A complete line without its `\n`. Nothing else is taken off: a delivery's data may end
    /// in `\r`.
    Line(&'a [u8]),
    /// A line longer than the limit began (a delivery, or something else); the rest of it is
    /// thrown away unread.
    TooLong { delivery: bool },
}

/// Splits a byte stream into lines of at most `max` bytes, in a buffer that grows only as far
/// as one such line needs.
struct LineBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Where the search for the next `\n` resumes.
    scanned: usize,
    /// Inside an over-long line: drop bytes until its end.
    discarding: bool,
    max: usize,
}

impl LineBuf {
    fn new(max: usize) -> LineBuf {
        LineBuf {
            buf: vec![0; BULK],
            start: 0,
            end: 0,
            scanned: 0,
            discarding: false,
            max,
        }
    }

    /// Reads once. Returns the bytes read; 0 is the end of the stream.
    fn fill(&mut self, r: &mut impl Read) -> io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end, self.scanned) = (0, 0, 0);
            if self.buf.len() > BULK {
                // A long line is done: do not keep its megabytes.
                self.buf = vec![0; BULK];
            }
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.scanned -= self.start;
                self.start = 0;
            }
            // A line and its `\n` fit, however long it may be.
            let most = (self.max + 1).max(BULK);
            if self.end == self.buf.len() && self.buf.len() < most {
                let len = (self.buf.len() * 2).min(most);
                self.buf.resize(len, 0);
            }
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// The next complete line (or over-long line) in what has been read.
    fn next_item(&mut self) -> Option<Item<'_>> {
        loop {
            match memchr::memchr(b'\n', &self.buf[self.scanned..self.end]) {
                Some(i) => {
                    let nl = self.scanned + i;
                    let start = self.start;
                    self.start = nl + 1;
                    self.scanned = self.start;
                    if std::mem::take(&mut self.discarding) {
                        continue;
                    }
                    return Some(Item::Line(&self.buf[start..nl]));
                }
                None => {
                    self.scanned = self.end;
                    if self.discarding {
                        self.start = self.end;
                        return None;
                    }
                    if self.end - self.start > self.max {
                        let delivery = self.buf[self.start..self.end].starts_with(b"publish ");
                        self.discarding = true;
                        self.start = self.end;
                        return Some(Item::TooLong { delivery });
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `data` in reads of at most `chunk` bytes and collects what comes out.
    fn split(data: &[u8], chunk: usize, max: usize) -> Vec<String> {
        let mut lines = LineBuf::new(max);
        let mut out = Vec::new();
        for piece in data.chunks(chunk) {
            let mut r = piece;
            while !r.is_empty() {
                lines.fill(&mut r).unwrap();
                while let Some(item) = lines.next_item() {
                    out.push(match item {
                        Item::Line(l) => String::from_utf8_lossy(l).into_owned(),
                        Item::TooLong { delivery } => format!("too long ({delivery})"),
                    });
                }
            }
            assert!(lines.buf.len() <= (max + 1).max(BULK));
        }
        out
    }

    #[test]
    fn lines_keep_their_carriage_returns() {
        for chunk in [1, 3, 1000] {
            assert_eq!(
                split(b"pong\npublish a x\r\n\npublish a y", chunk, 100),
                ["pong", "publish a x\r", ""],
                "{chunk}"
            );
        }
    }

    #[test]
    fn long_lines_grow_the_buffer_up_to_the_limit_only() {
        let max = 200_000;
        let long = [b"publish a ".as_slice(), &vec![b'x'; max - 10], b"\n"].concat();
        let mut data = long.clone();
        data.extend_from_slice(b"pong\n");
        data.extend_from_slice(&[b"publish a ".as_slice(), &vec![b'y'; max], b"\n"].concat());
        data.extend_from_slice(&[b"list ".as_slice(), &vec![b'z'; max], b"\n"].concat());
        data.extend_from_slice(b"pong\n");
        for chunk in [4096, 100_000] {
            let got = split(&data, chunk, max);
            assert_eq!(got.len(), 5, "{chunk}");
            assert_eq!(got[0].len(), max);
            assert_eq!(
                got[1..],
                ["pong", "too long (true)", "too long (false)", "pong"]
            );
        }
    }
}
