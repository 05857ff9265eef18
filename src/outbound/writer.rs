//! The writer thread: started the first time a client's socket does not take everything at
//! once, it finishes what is queued with blocking writes (bounded by `write_timeout`) and then
//! waits for more, until the connection closes.

use super::io::{self, Outcome, Round, Written};
use super::{Outbound, State, Transport};
use crate::metrics;
use parking_lot::MutexGuard;
use std::collections::VecDeque;
use std::sync::Arc;

/// Stack size of writer threads: they only move pointers and call `sendmsg`.
const WRITER_STACK: usize = 128 * 1024;

/// The most bytes the writer thread writes before it accounts for them (see `run_writer`).
const WRITER_ROUND: usize = 256 * 1024;

impl Outbound {
    /// Hands the queue to the writer thread, starting it if this is the first time.
    pub(super) fn wake_writer(self: &Arc<Self>, mut st: MutexGuard<'_, State>) {
        if st.writer_started {
            self.work.notify_one();
            return;
        }
        st.writer_started = true;
        st.writer_running = true;
        drop(st);
        let me = Arc::clone(self);
        let mut writer = self.writer.lock();
        // Within the thread budget (see `capacity.rs`), like connection threads.
        // The name is made only now: most connections never start their writer.
        let kind = match self.transport {
            Transport::Tcp => "tcp",
            Transport::WebSocket => "ws",
        };
        let name = format!("mist-{kind}-w {}", self.peer);
        let spawned = crate::capacity::spawn(name, WRITER_STACK, move || {
            me.run_writer();
            me.state.lock().writer_running = false;
        });
        match spawned {
            Ok(handle) => *writer = Some(handle),
            Err(e) => {
                drop(writer);
                self.state.lock().writer_running = false;
                metrics::add(&self.metrics.thread_start_failures, 1);
                log::error!("{}: cannot start a writer thread ({e}); closing", self.peer);
                self.close();
            }
        }
    }

    /// The writer thread's loop: waits for work nobody else is doing, writes all of it with
    /// blocking writes, and repeats until the connection closes.
    fn run_writer(&self) {
        let mut batch = VecDeque::new();
        let round = Round {
            block: true,
            limit: WRITER_ROUND,
            write_timeout: self.limits.write_timeout,
        };
        loop {
            let mut st = self.state.lock();
            loop {
                if st.closed {
                    return;
                }
                if !st.busy && !st.queue.is_empty() {
                    break;
                }
                if !st.busy && st.closing {
                    self.finish(&mut st);
                    return;
                }
                self.work.wait(&mut st);
            }
            let Some(sock) = st.sock.clone() else { return };
            let mut offset = st.queue.take(&mut batch);
            st.busy = true;
            drop(st);

            // The batch goes out in rounds of at most WRITER_ROUND bytes, each accounted as soon
            // as it is written: the queue's room, and the pool's, grow as the peer reads, not
            // only when the whole batch is out.
            let (mut st, outcome) = loop {
                let Written {
                    done,
                    offset: rest,
                    outcome,
                } = io::write_items(&*sock, &batch, self.transport, offset, round);
                offset = rest;
                let mut st = self.state.lock();
                self.account(&mut st, batch.drain(..done));
                if batch.is_empty() || st.closed || !matches!(outcome, Outcome::AllWritten) {
                    break (st, outcome);
                }
            };
            drop(sock);
            st.busy = false;
            if st.closed {
                self.account(&mut st, batch.drain(..));
                return;
            }
            match outcome {
                Outcome::AllWritten => {}
                Outcome::WouldBlock => {
                    metrics::add(&self.metrics.write_timeouts, 1);
                    log::info!(
                        "{}: peer read nothing for {:?}, closing",
                        self.peer,
                        self.limits.write_timeout
                    );
                    self.account(&mut st, batch.drain(..));
                    self.fail(&mut st);
                    return;
                }
                Outcome::Failed(e) => {
                    log::debug!("{}: write failed: {e}", self.peer);
                    self.account(&mut st, batch.drain(..));
                    self.fail(&mut st);
                    return;
                }
            }
            self.notice_if_room(&mut st);
            if batch.capacity() > 4096 {
                batch = VecDeque::new();
            }
        }
    }
}
