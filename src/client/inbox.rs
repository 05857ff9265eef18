//! The events that arrived and wait for the program to receive them: a bounded queue, so that
//! a program that stops receiving costs bounded memory. What does not fit is dropped here and
//! counted, as the server does for a slow client, and the program is told where.

use super::error::Error;
use super::event::{DroppedBy, Event};
use super::replies::End;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::time::Instant;

/// How much the queue holds before it drops messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub msgs: usize,
    pub bytes: usize,
}

/// The queue, without the locking (so it is tested as plain data).
struct Queue {
    events: VecDeque<Event>,
    /// Messages in `events` (notices are not counted: consecutive ones are folded into one).
    msgs: usize,
    /// Their tags and data.
    bytes: usize,
    limits: Limits,
    /// Why the connection ended, once it has; `recv` reports it after the last event.
    end: Option<End>,
}

impl Queue {
    fn new(limits: Limits) -> Queue {
        Queue {
            events: VecDeque::new(),
            msgs: 0,
            bytes: 0,
            limits,
            end: None,
        }
    }

    fn push(&mut self, event: Event) {
        match event {
            Event::Message(m) => {
                let size = m.size();
                // One message always fits in an empty queue, however large: it would never be
                // received otherwise.
                let full = self.msgs >= self.limits.msgs
                    || (self.msgs > 0 && self.bytes + size > self.limits.bytes);
                if full {
                    self.dropped(1, DroppedBy::Client);
                } else {
                    self.msgs += 1;
                    self.bytes += size;
                    self.events.push_back(Event::Message(m));
                }
            }
            Event::Dropped { count, by } => self.dropped(count, by),
        }
    }

    /// Notes a loss where it happened; one notice for a run of losses with nothing between.
    fn dropped(&mut self, count: u64, by: DroppedBy) {
        if let Some(Event::Dropped { count: c, by: b }) = self.events.back_mut()
            && *b == by
        {
            *c = c.saturating_add(count);
            return;
        }
        self.events.push_back(Event::Dropped { count, by });
    }

    fn pop(&mut self) -> Option<Event> {
        let event = self.events.pop_front()?;
        if let Event::Message(m) = &event {
            self.msgs -= 1;
            self.bytes -= m.size();
        }
        Some(event)
    }
}

/// The queue shared by the connection's reader thread, which puts, and the program's threads,
/// which take.
pub(crate) struct Inbox {
    /// A mutex held only to move events in or out, never while reading the socket.
    queue: Mutex<Queue>,
    /// Wakes takers when events arrive or the connection ends.
    arrived: Condvar,
}

impl Inbox {
    pub fn new(limits: Limits) -> Inbox {
        Inbox {
            queue: Mutex::new(Queue::new(limits)),
            arrived: Condvar::new(),
        }
    }

    /// Moves `events` into the queue, in order.
    pub fn put(&self, events: &mut Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut q = self.queue.lock();
        for e in events.drain(..) {
            q.push(e);
        }
        drop(q);
        self.arrived.notify_all();
    }

    /// Marks the end of the connection: takers get the events still queued, then `end`.
    pub fn end(&self, end: End) {
        let mut q = self.queue.lock();
        q.end.get_or_insert(end);
        drop(q);
        self.arrived.notify_all();
    }

    /// The next event, waiting for one until `deadline` (forever with `None`). `Ok(None)` when
    /// the deadline passed.
    pub fn take(&self, deadline: Option<Instant>) -> Result<Option<Event>, Error> {
        let mut q = self.queue.lock();
        loop {
            if let Some(event) = q.pop() {
                return Ok(Some(event));
            }
            if let Some(end) = &q.end {
                return Err(end.error());
            }
            match deadline {
                None => self.arrived.wait(&mut q),
                Some(d) => {
                    if self.arrived.wait_until(&mut q, d).timed_out() {
                        return match q.pop() {
                            Some(event) => Ok(Some(event)),
                            None => q.end.as_ref().map_or(Ok(None), |end| Err(end.error())),
                        };
                    }
                }
            }
        }
    }

    /// Waits until the connection has ended, or `deadline`. True when it has ended.
    pub fn wait_end(&self, deadline: Instant) -> bool {
        let mut q = self.queue.lock();
        while q.end.is_none() {
            if self.arrived.wait_until(&mut q, deadline).timed_out() {
                return q.end.is_some();
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::event::Message;
    use std::time::Duration;

    fn msg(data: &str) -> Event {
        Event::Message(Message {
            tags: "a".parse().unwrap(),
            data: data.as_bytes().to_vec(),
        })
    }

    fn dropped(count: u64, by: DroppedBy) -> Event {
        Event::Dropped { count, by }
    }

    fn drain(q: &mut Queue) -> Vec<Event> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn keeps_order_and_drops_past_the_message_limit() {
        let mut q = Queue::new(Limits {
            msgs: 2,
            bytes: 1000,
        });
        for d in ["1", "2", "3", "4"] {
            q.push(msg(d));
        }
        q.push(dropped(5, DroppedBy::Server));
        assert_eq!(
            drain(&mut q),
            [
                msg("1"),
                msg("2"),
                dropped(2, DroppedBy::Client),
                dropped(5, DroppedBy::Server)
            ]
        );
        assert_eq!((q.msgs, q.bytes), (0, 0));
        // Room again: messages are kept, and a new run of losses gets its own notice.
        q.push(msg("5"));
        q.push(dropped(1, DroppedBy::Server));
        q.push(dropped(2, DroppedBy::Server));
        q.push(msg("6"));
        q.push(msg("7"));
        assert_eq!(
            drain(&mut q),
            [
                msg("5"),
                dropped(3, DroppedBy::Server),
                msg("6"),
                dropped(1, DroppedBy::Client)
            ]
        );
    }

    #[test]
    fn byte_limit_counts_tags_and_data_but_always_takes_one() {
        // Each message is 1 byte of tag plus its data.
        let mut q = Queue::new(Limits { msgs: 10, bytes: 5 });
        q.push(msg("0123456789"));
        q.push(msg("x"));
        assert_eq!(q.pop(), Some(msg("0123456789")));
        assert_eq!(q.pop(), Some(dropped(1, DroppedBy::Client)));
        q.push(msg("ab"));
        q.push(msg("c"));
        q.push(msg("d"));
        assert_eq!(
            drain(&mut q),
            [msg("ab"), msg("c"), dropped(1, DroppedBy::Client)]
        );
    }

    #[test]
    fn take_waits_then_reports_the_end_after_the_events() {
        let inbox = Inbox::new(Limits {
            msgs: 10,
            bytes: 100,
        });
        let soon = || Some(Instant::now() + Duration::from_millis(20));
        assert!(matches!(inbox.take(soon()), Ok(None)));
        inbox.put(&mut vec![msg("a")]);
        inbox.end(End::Eof);
        inbox.end(End::Local);
        assert_eq!(inbox.take(None).unwrap(), Some(msg("a")));
        assert!(matches!(inbox.take(None), Err(Error::Closed)));
        assert!(matches!(inbox.take(soon()), Err(Error::Closed)));
        assert!(inbox.wait_end(Instant::now()));
    }

    #[test]
    fn a_waiting_taker_is_woken() {
        let inbox = std::sync::Arc::new(Inbox::new(Limits {
            msgs: 10,
            bytes: 100,
        }));
        let taker = {
            let inbox = std::sync::Arc::clone(&inbox);
            std::thread::spawn(move || inbox.take(Some(Instant::now() + Duration::from_secs(10))))
        };
        inbox.put(&mut vec![msg("x")]);
        assert_eq!(taker.join().unwrap().unwrap(), Some(msg("x")));
    }
}
