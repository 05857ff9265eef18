//! A publishing connection's batch: the messages parsed from one read, delivered together.
//!
//! A connection reading `publish` lines quickly gets many per `read()`. They are collected here
//! into one [`Batch`](crate::message::Batch) and delivered in one step: one index lookup per
//! run of messages with the same tags (and none at all while the index has not changed since
//! the last lookup for those tags), one queue item per subscriber per run, and one socket write
//! per subscriber per batch. A connection publishing one message at a time gets batches of one,
//! so batching adds no latency.

use crate::broker::{Broker, Subscriber};
use crate::message::BatchBuilder;
use crate::metrics;
use crate::outbound::Outbound;
use crate::tags::TagSet;
use std::sync::Arc;

/// Consecutive messages of the batch with the same tags.
struct Run {
    start: usize,
    end: usize,
}

/// The last match, reused while the index generation and the tags are the same.
struct Cached {
    tags: Vec<u8>,
    generation: u64,
    subs: Vec<Subscriber>,
}

/// Messages waiting to be delivered, in publish order.
pub struct Fanout {
    broker: Broker,
    /// The messages were published on this node (not received from another over the bus).
    local: bool,
    batch: BatchBuilder,
    runs: Vec<Run>,
    cache: Option<Cached>,
    touched: Vec<Arc<Outbound>>,
}

impl Fanout {
    /// An empty batch.
    pub fn new(broker: Broker) -> Fanout {
        Fanout {
            broker,
            local: true,
            batch: BatchBuilder::default(),
            runs: Vec::new(),
            cache: None,
            touched: Vec::new(),
        }
    }

    /// An empty batch for messages received from other nodes: they are not relayed back to
    /// the bus. (Delivering never waits for a subscriber, for them as for local publishers.)
    pub fn from_bus(broker: Broker) -> Fanout {
        Fanout {
            local: false,
            ..Fanout::new(broker)
        }
    }

    /// Adds a message. `tags` are validated; `normalised` tells whether they are already
    /// sorted and de-duplicated.
    pub fn add(&mut self, tags: &[u8], normalised: bool, data: &[u8]) {
        if normalised {
            self.batch.push(tags, data);
        } else {
            let set = TagSet::parse(tags, usize::MAX).expect("tags were validated by the parser");
            self.batch.push(set.as_str().as_bytes(), data);
        }
        let i = self.batch.len() - 1;
        match self.runs.last_mut() {
            Some(run) if self.batch.tags(run.start) == self.batch.tags(i) => run.end = i + 1,
            _ => self.runs.push(Run {
                start: i,
                end: i + 1,
            }),
        }
    }

    /// Delivers the batch: queues each run for its subscribers under the index read lock,
    /// then, with the lock released, writes to the subscribers' sockets.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = self.batch.build();
        if self.local {
            metrics::add(
                &self.broker.metrics().messages_published,
                batch.len() as u64,
            );
            // Other nodes first: the bus's sender works on it while this thread delivers.
            if let Some(relay) = self.broker.relay() {
                relay.publish(&batch);
            }
        }
        {
            let index = self.broker.read();
            for run in &self.runs {
                let tags = batch.tags(run.start);
                let fresh = matches!(&self.cache,
                    Some(c) if c.generation == index.generation() && c.tags == tags);
                if !fresh {
                    self.cache = Some(Cached {
                        tags: tags.to_vec(),
                        generation: index.generation(),
                        subs: index.matches(tags),
                    });
                }
                let cached = self.cache.as_ref().expect("just filled");
                for sub in &cached.subs {
                    if sub.out.enqueue(&batch, run.start..run.end) {
                        self.touched.push(Arc::clone(&sub.out));
                    }
                }
            }
        }
        if self.runs.len() > 1 {
            self.touched
                .sort_unstable_by_key(|o| Arc::as_ptr(o) as usize);
            self.touched.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
        // Never waits: what a socket does not take now stays queued for the writer thread,
        // and a subscriber whose queue is full loses the newer messages.
        for out in self.touched.drain(..) {
            out.flush();
        }
        self.runs.clear();
    }
}
