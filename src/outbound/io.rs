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
            Ok(0) => {
                return stop(
                    done,
                    offset,
                    Outcome::Failed(io::ErrorKind::WriteZero.into()),
                );
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;

    /// What the scripted sink does on one call.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Takes at most this many bytes.
        Take(usize),
        Fail(io::ErrorKind),
    }

    /// A sink that follows a script, then takes everything; it records what it took.
    #[derive(Default)]
    struct Scripted {
        script: RefCell<VecDeque<Step>>,
        out: RefCell<Vec<u8>>,
        /// Per call: slices offered, bytes offered, and whether it could block.
        calls: RefCell<Vec<(usize, usize, bool)>>,
    }

    impl Scripted {
        fn new(script: &[Step]) -> Scripted {
            Scripted {
                script: RefCell::new(script.iter().copied().collect()),
                ..Scripted::default()
            }
        }

        fn out(&self) -> Vec<u8> {
            self.out.borrow().clone()
        }
    }

    impl Sink for Scripted {
        fn send(&self, bufs: &[IoSlice<'_>], block: bool) -> io::Result<usize> {
            let offered: usize = bufs.iter().map(|b| b.len()).sum();
            self.calls.borrow_mut().push((bufs.len(), offered, block));
            let cap = match self.script.borrow_mut().pop_front() {
                Some(Step::Fail(kind)) => return Err(kind.into()),
                Some(Step::Take(n)) => n,
                None => usize::MAX,
            };
            let mut left = cap.min(offered);
            let n = left;
            for b in bufs {
                let k = b.len().min(left);
                self.out.borrow_mut().extend_from_slice(&b[..k]);
                left -= k;
            }
            Ok(n)
        }
    }

    fn items(parts: &[&str]) -> VecDeque<Item> {
        parts
            .iter()
            .map(|p| Item::Bytes(p.as_bytes().into()))
            .collect()
    }

    fn round(block: bool) -> Round {
        Round {
            block,
            limit: usize::MAX,
            write_timeout: Duration::from_secs(3600),
        }
    }

    fn write(sink: &Scripted, items: &VecDeque<Item>, offset: usize, r: Round) -> Written {
        write_items(sink, items, Transport::Tcp, offset, r)
    }

    #[test]
    fn a_socket_that_takes_everything_gets_one_call() {
        let sink = Scripted::new(&[]);
        let w = write(
            &sink,
            &items(&["one\n", "two\n", "three\n"]),
            0,
            round(false),
        );
        assert_eq!((w.done, w.offset), (3, 0));
        assert!(matches!(w.outcome, Outcome::AllWritten));
        assert_eq!(sink.out(), b"one\ntwo\nthree\n");
        assert_eq!(*sink.calls.borrow(), [(3, 14, false)]);
    }

    #[test]
    fn a_partial_write_stops_mid_item_and_resumes_there() {
        let it = items(&["hello world\n", "next\n"]);
        let sink = Scripted::new(&[Step::Take(5), Step::Fail(io::ErrorKind::WouldBlock)]);
        let w = write(&sink, &it, 0, round(false));
        assert_eq!((w.done, w.offset), (0, 5));
        assert!(matches!(w.outcome, Outcome::WouldBlock));
        assert_eq!(sink.out(), b"hello");
        let w = write(&sink, &it, 5, round(true));
        assert_eq!((w.done, w.offset), (2, 0));
        assert_eq!(sink.out(), b"hello world\nnext\n");
        assert_eq!(
            sink.calls.borrow()[2],
            (2, 12, true),
            "resumed at the offset"
        );
    }

    #[test]
    fn a_write_ending_on_an_item_boundary_leaves_no_offset() {
        let it = items(&["ab", "cd", "ef"]);
        let sink = Scripted::new(&[Step::Take(4), Step::Fail(io::ErrorKind::WouldBlock)]);
        let w = write(&sink, &it, 0, round(false));
        assert_eq!((w.done, w.offset), (2, 0));
        assert!(matches!(w.outcome, Outcome::WouldBlock));
    }

    #[test]
    fn writing_nothing_is_a_failure() {
        let sink = Scripted::new(&[Step::Take(0)]);
        let w = write(&sink, &items(&["x"]), 0, round(true));
        assert_eq!((w.done, w.offset), (0, 0));
        assert!(matches!(w.outcome, Outcome::Failed(e) if e.kind() == io::ErrorKind::WriteZero));
    }

    #[test]
    fn an_error_ends_the_round_with_what_was_written() {
        let it = items(&["abc", "def"]);
        let sink = Scripted::new(&[Step::Take(4), Step::Fail(io::ErrorKind::BrokenPipe)]);
        let w = write(&sink, &it, 0, round(true));
        assert_eq!((w.done, w.offset), (1, 1));
        assert!(matches!(w.outcome, Outcome::Failed(e) if e.kind() == io::ErrorKind::BrokenPipe));
    }

    #[test]
    fn interrupted_calls_are_retried() {
        let interrupted = Step::Fail(io::ErrorKind::Interrupted);
        let sink = Scripted::new(&[interrupted, Step::Take(1), interrupted, interrupted]);
        let w = write(&sink, &items(&["abc"]), 0, round(true));
        assert_eq!((w.done, w.offset), (1, 0));
        assert!(matches!(w.outcome, Outcome::AllWritten));
        assert_eq!(sink.calls.borrow().len(), 5);
        assert_eq!(sink.out(), b"abc");
    }

    #[test]
    fn interrupted_calls_without_progress_stop_after_the_write_timeout() {
        let sink = Scripted::new(&[Step::Fail(io::ErrorKind::Interrupted)]);
        let r = Round {
            write_timeout: Duration::ZERO,
            ..round(true)
        };
        let w = write(&sink, &items(&["abc"]), 0, r);
        assert_eq!((w.done, w.offset), (0, 0));
        assert!(matches!(w.outcome, Outcome::WouldBlock));
    }

    #[test]
    fn a_round_stops_once_its_limit_is_written() {
        let parts = vec!["x".repeat(100); 4];
        let it = items(&parts.iter().map(String::as_str).collect::<Vec<_>>());
        let sink = Scripted::new(&[]);
        let r = Round {
            limit: 150,
            ..round(true)
        };
        let w = write(&sink, &it, 0, r);
        // The slices offered stop at the first item that reaches the limit.
        assert_eq!((w.done, w.offset), (2, 0));
        assert!(matches!(w.outcome, Outcome::AllWritten));
        assert_eq!(*sink.calls.borrow(), [(2, 200, true)]);
        // A short write goes on until the limit is reached.
        let sink = Scripted::new(&[Step::Take(120)]);
        let w = write(&sink, &it, 0, r);
        assert_eq!((w.done, w.offset), (2, 0));
        assert_eq!(*sink.calls.borrow(), [(2, 200, true), (1, 80, true)]);
    }

    #[test]
    fn at_most_iov_max_slices_go_to_one_call() {
        let parts: Vec<String> = (0..2000).map(|i| format!("{i},")).collect();
        let it = items(&parts.iter().map(String::as_str).collect::<Vec<_>>());
        let sink = Scripted::new(&[]);
        let w = write(&sink, &it, 0, round(false));
        assert_eq!(w.done, 2000);
        let slices: Vec<usize> = sink.calls.borrow().iter().map(|c| c.0).collect();
        assert_eq!(slices, [IOV_MAX, 2000 - IOV_MAX]);
        assert_eq!(sink.out(), parts.concat().as_bytes());
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (1..64usize).prop_map(Step::Take),
            1 => Just(Step::Fail(io::ErrorKind::WouldBlock)),
            1 => Just(Step::Fail(io::ErrorKind::Interrupted)),
        ]
    }

    proptest! {
        /// Whatever the socket takes per call, resuming where each round stopped (as a writer
        /// putting back what it did not write does) puts every item on the wire once, in
        /// order; each round reports exactly what the socket took.
        #[test]
        fn rounds_resume_where_they_stopped(
            sizes in prop::collection::vec(1..40usize, 1..30),
            script in prop::collection::vec(step(), 0..40),
            limit in 1..200usize,
        ) {
            let parts: Vec<String> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| format!("{i:>n$}"))
                .collect();
            let mut queue = items(&parts.iter().map(String::as_str).collect::<Vec<_>>());
            let sink = Scripted::new(&script);
            let r = Round { limit, ..round(false) };
            let mut offset = 0;
            while !queue.is_empty() {
                let before = sink.out().len();
                let w = write(&sink, &queue, offset, r);
                let done_bytes: usize = queue.range(..w.done).map(|it| it.wire(Transport::Tcp).len()).sum();
                let took = sink.out().len() - before;
                prop_assert_eq!(took, done_bytes + w.offset - offset);
                if matches!(w.outcome, Outcome::AllWritten) && w.done < queue.len() {
                    prop_assert!(took >= limit);
                }
                prop_assert!(!matches!(w.outcome, Outcome::Failed(_)));
                queue.drain(..w.done);
                offset = w.offset;
            }
            prop_assert_eq!(sink.out(), parts.concat().into_bytes());
        }
    }
}
