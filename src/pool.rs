//! The bytes of deliveries queued for all the clients of a server together: the [`Pool`]
//! that every client's queue, and every batch they share, counts in. A leaf: the queues
//! (`outbound`) and the batches (`message`) both count in it.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The bytes of deliveries queued for all the clients of a server together, against their
/// bound (`queue_memory_limit`). The default never refuses.
///
/// Queues take bytes when they admit a delivery and give them back when it is written or
/// removed; a shared batch is counted once, by the batch itself (`Batch::charge`), however
/// many queues hold it. Relaxed atomics: the count decides admissions and guards no other
/// memory, and [`take`](Pool::take) checks and takes in one step, so the limit holds even
/// when publishers on several threads take at once.
#[derive(Debug)]
pub struct Pool {
    used: AtomicUsize,
    limit: usize,
    /// The most bytes one queue held when last looked at (by a push-out), raised when a queue
    /// grows past it under pressure: a queue holding less than this that finds no room asks
    /// for a push-out. `usize::MAX` until first looked at.
    biggest: AtomicUsize,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool::unlimited()
    }
}

impl Pool {
    /// An empty pool of `limit` bytes.
    pub fn new(limit: usize) -> Pool {
        Pool {
            used: AtomicUsize::new(0),
            limit,
            biggest: AtomicUsize::new(usize::MAX),
        }
    }

    /// A pool that never refuses (for queues tested on their own).
    pub fn unlimited() -> Pool {
        Pool::new(usize::MAX)
    }

    /// Bytes of deliveries queued now.
    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes not in use.
    pub fn free(&self) -> usize {
        self.limit.saturating_sub(self.used())
    }

    /// Takes `n` bytes if they are free; false, with nothing taken, when they are not.
    pub fn take(&self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let before = self.used.fetch_add(n, Relaxed);
        if before.saturating_add(n) > self.limit {
            self.used.fetch_sub(n, Relaxed);
            return false;
        }
        true
    }

    /// Gives back `n` bytes taken before.
    pub fn give(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Relaxed);
        }
    }

    /// The most bytes one queue is known to hold (see the field).
    pub fn biggest(&self) -> usize {
        self.biggest.load(Relaxed)
    }

    /// Records what a push-out found the biggest queue to hold after it.
    pub fn set_biggest(&self, bytes: usize) {
        self.biggest.store(bytes, Relaxed);
    }
}
