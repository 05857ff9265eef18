//! The listener thread: receives every node's payloads on its own connection, reads them with
//! an [`Inbox`], and delivers the messages to local subscribers through a [`Fanout`] that never
//! waits for them. It does nothing else, so the engine's queue is drained as fast as payloads
//! arrive; when the connection is lost it says so, reconnects with backoff, and says for how
//! long the node was cut off.

use super::inbox::{Counts, Inbox, Sink};
use super::{Backoff, BusError, BusMetrics, Engine, Incoming, TokenChange};
use crate::fanout::Fanout;
use crate::metrics;
use crate::report::ErrorChain;
use crossbeam_channel::{Receiver, TryRecvError};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Longest wait for payloads before the thread looks at the stop signal again.
const POLL: Duration = Duration::from_millis(200);
/// Most payloads read before their messages are delivered.
const MAX_PAYLOADS: usize = 64;
/// Messages are delivered whenever this many bytes of them are waiting: a batch is about as
/// big as one read of a publishing connection (see `framing::max_buffer`), so the queues'
/// accounting holds for it.
const BATCH_BYTES: usize = 64 * 1024;

pub(super) struct ListenerThread {
    pub engine: Arc<dyn Engine>,
    pub node: String,
    pub id: u64,
    pub ctx: Arc<crate::Context>,
    pub metrics: Arc<BusMetrics>,
    pub stop: Receiver<()>,
}

/// Where the inbox's records go: local subscribers, and the token rules.
struct Deliver<'a> {
    ctx: &'a crate::Context,
    fanout: Fanout,
    bytes: usize,
    changes: u64,
}

impl Sink for Deliver<'_> {
    fn message(&mut self, tags: &[u8], data: &[u8]) {
        self.fanout.add(tags, true, data);
        self.bytes += "publish ".len() + tags.len() + data.len() + 2;
        if self.bytes >= BATCH_BYTES {
            self.flush();
        }
    }

    fn token_change(&mut self, change: TokenChange<'_>) {
        // Messages that came before the change are delivered before it is applied.
        self.flush();
        self.changes += 1;
        self.ctx.tokens.apply_remote(change);
    }
}

impl Deliver<'_> {
    fn flush(&mut self) {
        self.fanout.flush();
        self.bytes = 0;
    }
}

impl ListenerThread {
    pub fn run(self, first: Box<dyn Incoming>) {
        let config = &self.ctx.config;
        let mut inbox = Inbox::new(self.id, config.max_tags, config.max_line_bytes);
        let mut deliver = Deliver {
            ctx: &self.ctx,
            fanout: Fanout::from_bus(self.ctx.broker.clone()),
            bytes: 0,
            changes: 0,
        };
        let mut link = Some(first);
        let mut backoff = Backoff::new();
        let mut cut_since: Option<Instant> = None;
        let mut payloads: Vec<String> = Vec::with_capacity(MAX_PAYLOADS);
        let mut seen = Counts::default();
        // Token changes made elsewhere may have been missed: check this node's WebSockets
        // against the store again (after the LISTEN is in place, so none is missed after).
        let mut recheck = false;
        let mut recheck_warned = false;
        loop {
            if !matches!(self.stop.try_recv(), Err(TryRecvError::Empty)) {
                return;
            }
            let Some(conn) = link.as_mut() else {
                if super::wait_or_stop(&self.stop, backoff.next()) {
                    return;
                }
                link = self.reconnect(&mut cut_since, &mut backoff);
                recheck = link.is_some();
                continue;
            };
            if recheck {
                recheck = !self.recheck_tokens(&mut recheck_warned);
            }
            match conn.receive(POLL, MAX_PAYLOADS, &mut payloads) {
                Ok(_) => {
                    for p in payloads.drain(..) {
                        inbox.take(&p, &mut deliver);
                    }
                    deliver.flush();
                    recheck |= inbox.counts().missed > seen.missed;
                    self.count(&inbox, &mut seen, &mut deliver);
                }
                Err(e) => {
                    payloads.clear();
                    inbox.reset();
                    link = None;
                    cut_since = Some(Instant::now());
                    self.lost(&e);
                }
            }
        }
    }

    /// Adds what the inbox saw since last time to the metrics.
    fn count(&self, inbox: &Inbox, seen: &mut Counts, deliver: &mut Deliver<'_>) {
        let now = inbox.counts();
        let m = &self.metrics;
        metrics::add(&m.payloads_received, now.payloads - seen.payloads);
        metrics::add(&m.messages_received, now.messages - seen.messages);
        metrics::add(&m.payloads_missed, now.missed - seen.missed);
        metrics::add(
            &m.token_changes_received,
            std::mem::take(&mut deliver.changes),
        );
        if now.bad > seen.bad {
            metrics::add(&m.bad_records, now.bad - seen.bad);
            log::debug!("bus: {} records could not be read", now.bad - seen.bad);
        }
        *seen = now;
    }

    /// Applies token changes this node may have missed; false when the store could not be
    /// read (tried again on the next round, with one warning per run of failures).
    fn recheck_tokens(&self, warned: &mut bool) -> bool {
        match self.ctx.tokens.recheck_all() {
            Ok(n) => {
                *warned = false;
                log::info!("bus: checked the tokens of this node's WebSockets again ({n} tokens)");
                true
            }
            Err(e) => {
                if !std::mem::replace(warned, true) {
                    log::warn!(
                        "bus: cannot check this node's WebSocket tokens again, retrying: {}",
                        ErrorChain(&e)
                    );
                }
                false
            }
        }
    }

    fn lost(&self, e: &BusError) {
        self.metrics.listen_up.store(0, Relaxed);
        metrics::add(&self.metrics.listen_lost, 1);
        log::warn!(
            "bus: lost the listening connection to {} ({}); node {} serves its own clients, \
             but messages published on other nodes do not reach it until it is back",
            self.engine.describe(),
            ErrorChain(e),
            self.node
        );
    }

    fn reconnect(
        &self,
        cut_since: &mut Option<Instant>,
        backoff: &mut Backoff,
    ) -> Option<Box<dyn Incoming>> {
        match self.engine.connect_listener(&self.node) {
            Ok(conn) => {
                *backoff = Backoff::new();
                let cut = cut_since.take().map_or(0.0, |t| t.elapsed().as_secs_f64());
                self.metrics.listen_up.store(1, Relaxed);
                log::warn!(
                    "bus: listening again; node {} was cut off from the other nodes for \
                     {cut:.1} s (messages they published meanwhile did not reach it)",
                    self.node
                );
                Some(conn)
            }
            Err(e) => {
                log::debug!("bus: cannot reconnect to listen: {}", ErrorChain(&e));
                None
            }
        }
    }
}
