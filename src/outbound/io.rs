//! Writing queue items to a socket: one vectored send per round of items, partial writes,
//! `WouldBlock` and interrupted calls. The socket is a [`Sink`], so all of that is tested with
//! a scripted one.

use super::Transport;
use super::queue::Item;
use socket2::SockRef;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Where items are written: a socket, or a scripted sink in the tests.
pub(super) trait Sink {
    /// Writes a prefix of the bytes of `bufs`, in order, and returns its length, like one
    /// `sendmsg`. Unless `block`, fails with `WouldBlock` instead of waiting for room.
    fn send(&self, bufs: &[IoSlice<'_>], block: bool) -> io::Result<usize>;
}

impl Sink for TcpStream {
    fn send(&self, bufs: &[IoSlice<'_>], block: bool) -> io::Result<usize> {
        // MSG_NOSIGNAL: a peer that went away is an error here, not a SIGPIPE for the process.
        let flags = if block {
            libc::MSG_NOSIGNAL
        } else {
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL
        };
        SockRef::from(self).send_vectored_with_flags(bufs, flags)
    }
}

/// How one call of [`write_items`] writes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Round {
    /// Wait for the peer to read (the writer thread), or take what the socket takes now (a
    /// publisher's or a reader's thread).
    pub block: bool,
    /// Stop once at least this many bytes are written.
    pub limit: usize,
    /// How long interrupted calls are retried without progress.
    pub write_timeout: Duration,
}

/// How a round of writing ended.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Everything was written, or the round's limit was reached.
    AllWritten,
    /// The socket takes nothing more now (or, blocking, for `write_timeout`).
    WouldBlock,
    Failed(io::Error),
}

/// What a round wrote.
#[derive(Debug)]
pub(super) struct Written {
    /// Items written whole.
    pub done: usize,
    /// Bytes written of the next item.
    pub offset: usize,
    pub outcome: Outcome,
}

/// Writes of at most this many items build their slice list on the stack.
const SMALL_IOV: usize = 8;

/// The most slices handed to one `sendmsg` (Linux's `IOV_MAX`).
pub(super) const IOV_MAX: usize = 1024;

/// Writes `items` from `offset` bytes into the first, in `transport`'s wire format, until they
/// are all written, `round.limit` bytes are, or the sink takes no more.
pub(super) fn write_items<S: Sink + ?Sized>(
    sink: &S,
    items: &VecDeque<Item>,
    transport: Transport,
    mut offset: usize,
    round: Round,
) -> Written {
    let mut done = 0;
    let mut written = 0;
    let stop = |done, offset, outcome| Written {
        done,
        offset,
        outcome,
    };
    // When a blocked write was first interrupted with nothing written since: the retry's
    // kernel timeout starts over, so the stall is cut off by this instead.
    let mut interrupted: Option<Instant> = None;
    // Most writes are of a few items: their slices go on the stack, not the heap.
    let mut small = [IoSlice::new(&[]); SMALL_IOV];
    let mut large: Vec<IoSlice<'_>> = Vec::new();
    while done < items.len() {
        let want = round.limit - written;
        let (mut count, mut bytes) = (0, 0);
        large.clear();
        for (i, item) in items.range(done..).enumerate() {
            let b = &item.wire(transport)[if i == 0 { offset } else { 0 }..];
            if large.is_empty() && count < SMALL_IOV {
                small[count] = IoSlice::new(b);
            } else {
                if large.is_empty() {
                    large.extend_from_slice(&small[..count]);
                }
                large.push(IoSlice::new(b));
            }
            count += 1;
            bytes += b.len();
            if bytes >= want || count == IOV_MAX {
                break;
            }
        }
        let iov: &[IoSlice<'_>] = if large.is_empty() {
            &small[..count]
        } else {
            &large
        };
        match sink.send(iov, round.block) {
            Ok(0) => return stop(done, offset, Outcome::Failed(io::ErrorKind::WriteZero.into())),
            Ok(mut n) => {
                interrupted = None;
                written += n;
                while n > 0 {
                    let left = items[done].wire(transport).len() - offset;
                    if n >= left {
                        n -= left;
                        done += 1;
                        offset = 0;
                    } else {
                        offset += n;
                        n = 0;
                    }
                }
                if written >= round.limit && done < items.len() {
                    return stop(done, offset, Outcome::AllWritten);
                }
            }
            // Interrupted by a signal or a debugger (`strace -p`): retry, but for no longer
            // than `write_timeout` without progress, so a stalled peer is still cut off.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                let since = *interrupted.get_or_insert_with(Instant::now);
                if since.elapsed() >= round.write_timeout {
                    return stop(done, offset, Outcome::WouldBlock);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return stop(done, offset, Outcome::WouldBlock);
            }
            Err(e) => return stop(done, offset, Outcome::Failed(e)),
        }
    }
    stop(done, 0, Outcome::AllWritten)
}
