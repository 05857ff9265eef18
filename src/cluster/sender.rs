//! The sender thread: takes what publishers and admin commands handed over, packs it into as
//! few payloads as fit, and sends them one unit at a time. It alone talks to the sending
//! connection, and heals it when it is lost.

use super::codec::{self, Charset};
use super::{Backoff, BusError, Engine, Outgoing, Outlet, OwnedChange};
use crate::message::Batch;
use crate::metrics;
use crate::report::ErrorChain;
use crossbeam_channel::{Receiver, select};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// A unit is closed once its records reach this size (about 32 payloads), so one round trip
/// to the engine carries many messages under load, and a lone message goes out at once.
const UNIT_BYTES: usize = 256 * 1024;
/// How often the engine's queue usage is read.
const USAGE_EVERY: Duration = Duration::from_secs(1);

pub(super) struct SenderThread {
    pub engine: Arc<dyn Engine>,
    pub node: String,
    pub id: u64,
    pub outlet: Arc<Outlet>,
    pub data: Receiver<Arc<Batch>>,
    pub control: Receiver<OwnedChange>,
    pub stop: Receiver<()>,
}

/// What the thread took from the channels for the next unit.
#[derive(Default)]
struct Unit {
    stream: String,
    messages: u64,
    /// Token changes in the unit, kept to be sent again if the connection is lost: a
    /// revocation must not be lost, and applying one twice changes nothing.
    changes: Vec<OwnedChange>,
}

impl Unit {
    fn clear(&mut self) {
        self.stream.clear();
        self.messages = 0;
        self.changes.clear();
    }
}

impl SenderThread {
    pub fn run(self, first: Box<dyn Outgoing>) {
        let mut link: Option<Box<dyn Outgoing>> = Some(first);
        let mut backoff = Backoff::new();
        let mut seq: u64 = 0;
        let mut unit = Unit::default();
        // Token changes of a unit that was lost with its connection, sent first once back.
        let mut retry: Vec<OwnedChange> = Vec::new();
        let mut usage_at = Instant::now();
        let mut down_since: Option<Instant> = None;
        loop {
            let Some(conn) = link.as_mut() else {
                // Down: what waits would arrive late, and publishers drop at once meanwhile.
                self.discard_waiting();
                if super::wait_or_stop(&self.stop, backoff.next()) {
                    return;
                }
                link = self.reconnect(&mut down_since, &mut backoff);
                continue;
            };
            let charset = conn.charset();
            for change in retry.drain(..) {
                self.add_change(&mut unit, change, charset);
            }
            if !self.gather(&mut unit, charset) {
                return;
            }
            if !unit.stream.is_empty() {
                let result = self.send_unit(conn.as_mut(), &unit, &mut seq);
                if let Err(e) = result {
                    self.failed(&unit, &e);
                    if matches!(e, BusError::Lost(_)) {
                        retry.append(&mut unit.changes);
                        link = None;
                        down_since = Some(Instant::now());
                        self.went_down(&e);
                    }
                }
                unit.clear();
            }
            if usage_at.elapsed() >= USAGE_EVERY {
                usage_at = Instant::now();
                if let Some(conn) = link.as_mut() {
                    match conn.queue_usage() {
                        Ok(Some(u)) => self.outlet.metrics.queue_usage.store(u.to_bits(), Relaxed),
                        Ok(None) => {}
                        Err(e) => {
                            link = None;
                            down_since = Some(Instant::now());
                            self.went_down(&e);
                        }
                    }
                }
            }
        }
    }

    /// Waits for work (at most until the next queue-usage reading), then takes whatever else
    /// is waiting, up to a unit's size. Returns false when the bus is stopping.
    fn gather(&self, unit: &mut Unit, charset: Charset) -> bool {
        select! {
            recv(self.stop) -> _ => return false,
            recv(self.control) -> c => {
                if let Ok(c) = c {
                    self.add_change(unit, c, charset);
                }
            }
            recv(self.data) -> b => {
                if let Ok(b) = b {
                    self.add_batch(unit, &b, charset);
                }
            }
            default(USAGE_EVERY) => return true,
        }
        while unit.stream.len() < UNIT_BYTES {
            if let Ok(c) = self.control.try_recv() {
                self.add_change(unit, c, charset);
                continue;
            }
            match self.data.try_recv() {
                Ok(b) => self.add_batch(unit, &b, charset),
                Err(_) => break,
            }
        }
        true
    }

    fn add_batch(&self, unit: &mut Unit, batch: &Batch, charset: Charset) {
        self.outlet
            .metrics
            .queued_bytes
            .fetch_sub(batch.lines().len(), Relaxed);
        // Ordinary messages need no escaping: check the batch's lines in one go, and copy each
        // line's record out of them.
        let lines = batch.lines();
        let all = lines.bytes(lines.span(0..batch.len()));
        match std::str::from_utf8(all) {
            Ok(text) if codec::is_plain(all, charset) => {
                for i in 0..batch.len() {
                    codec::push_plain_line(&mut unit.stream, &text[lines.span(i..i + 1)]);
                }
            }
            _ => {
                for i in 0..batch.len() {
                    codec::push_message(&mut unit.stream, batch.tags(i), batch.data(i), charset);
                }
            }
        }
        unit.messages += batch.len() as u64;
    }

    fn add_change(&self, unit: &mut Unit, change: OwnedChange, charset: Charset) {
        codec::push_token_change(&mut unit.stream, change.as_change(), charset);
        unit.changes.push(change);
    }

    fn send_unit(
        &self,
        conn: &mut dyn Outgoing,
        unit: &Unit,
        seq: &mut u64,
    ) -> Result<(), BusError> {
        let payloads = codec::pack(&unit.stream, self.id, seq, self.engine.max_payload());
        conn.send(&payloads)?;
        let m = &self.outlet.metrics;
        metrics::add(&m.messages_sent, unit.messages);
        metrics::add(&m.token_changes_sent, unit.changes.len() as u64);
        metrics::add(&m.payloads_sent, payloads.len() as u64);
        metrics::add(&m.bytes_sent, payloads.iter().map(|p| p.len() as u64).sum());
        metrics::add(&m.units_sent, 1);
        self.outlet.sent_again();
        Ok(())
    }

    /// A unit that was not sent: its messages are lost to the other nodes.
    fn failed(&self, unit: &Unit, e: &BusError) {
        if !unit.changes.is_empty() && matches!(e, BusError::Refused(_)) {
            log::warn!(
                "bus: {} token changes did not reach the other nodes ({}); WebSockets there \
                 keep what was revoked until they reconnect",
                unit.changes.len(),
                ErrorChain(e)
            );
        }
        if unit.messages > 0 {
            self.outlet
                .dropped(unit.messages, &ErrorChain(e).to_string());
        }
    }

    fn went_down(&self, e: &BusError) {
        self.outlet.up.store(false, Relaxed);
        self.outlet.metrics.send_up.store(0, Relaxed);
        metrics::add(&self.outlet.metrics.send_lost, 1);
        log::warn!(
            "bus: lost the sending connection to {} ({}); messages published on node {} do \
             not reach the other nodes until it is back",
            self.engine.describe(),
            ErrorChain(e),
            self.node
        );
    }

    fn reconnect(
        &self,
        down_since: &mut Option<Instant>,
        backoff: &mut Backoff,
    ) -> Option<Box<dyn Outgoing>> {
        match self.engine.connect_sender(&self.node) {
            Ok(conn) => {
                *backoff = Backoff::new();
                let down = down_since.take().map_or(0.0, |t| t.elapsed().as_secs_f64());
                self.outlet.metrics.send_up.store(1, Relaxed);
                self.outlet.up.store(true, Relaxed);
                log::warn!(
                    "bus: sending to the other nodes again, after {down:.1} s without a \
                     sending connection"
                );
                Some(conn)
            }
            Err(e) => {
                log::debug!("bus: cannot reconnect to send: {}", ErrorChain(&e));
                None
            }
        }
    }

    /// Drops the messages that wait while the bus is down, counting them.
    fn discard_waiting(&self) {
        let mut n = 0;
        while let Ok(b) = self.data.try_recv() {
            self.outlet
                .metrics
                .queued_bytes
                .fetch_sub(b.lines().len(), Relaxed);
            n += b.len() as u64;
        }
        if n > 0 {
            self.outlet.dropped(n, "the bus is down");
        }
        // Token changes stay in their channel: they are sent once the bus is back.
    }
}
