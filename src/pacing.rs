//! Whether a publisher should wait for a subscriber that is behind (pure; no I/O, no clock).
//!
//! A publisher that has queued a batch for a client more than half way to its queue limits may
//! wait, at most `pacing`, for that client's writes to bring the queue down to a quarter. It
//! waits only for a client that keeps up: one whose writes made progress lately, fast enough
//! to clear the backlog in the time left. A client that drains slowly or not at all is never
//! waited for: its newer messages are dropped instead, as the slow-consumer rule says.
//!
//! "Lately" counts from the later of the client's last progress and the moment it fell behind.
//! A reader that had nothing to read for a while (its last timed write is old) and whose
//! thread is then kept off the CPU just as a burst arrives still gets `pacing` to catch up. A
//! reader that never reads stays behind, so it is waited for once, for `pacing`, and then no
//! more.

use std::time::{Duration, Instant};

/// What a client's writes have shown of how fast it drains.
#[derive(Debug, Default, Clone, Copy)]
pub struct Drain {
    /// When a write last delivered messages.
    progress_at: Option<Instant>,
    /// How fast that write (smoothed with the ones before) drained the queue, in messages per
    /// second, including the time it waited for the socket.
    rate: f64,
    /// Since when the queue has been behind: more than half way to a limit, and not written
    /// down to a quarter since.
    behind_since: Option<Instant>,
}

impl Drain {
    /// Records that a write from `started` to `now` delivered `msgs` messages.
    pub fn progress(&mut self, started: Instant, now: Instant, msgs: usize) {
        if msgs == 0 {
            return;
        }
        let secs = now
            .saturating_duration_since(started)
            .as_secs_f64()
            .max(1e-6);
        let rate = msgs as f64 / secs;
        // Smoothed a little, so one lucky write does not decide alone.
        self.rate = if self.progress_at.is_some() {
            (self.rate + rate) / 2.0
        } else {
            rate
        };
        self.progress_at = Some(now);
    }

    /// Records that the queue was found behind at `now`; the first such moment is kept until
    /// [`caught_up`](Self::caught_up).
    pub fn behind(&mut self, now: Instant) {
        self.behind_since.get_or_insert(now);
    }

    /// Whether the queue has been found behind and not caught up since.
    pub fn is_behind(&self) -> bool {
        self.behind_since.is_some()
    }

    /// Records that the queue was written down to a quarter of its limits.
    pub fn caught_up(&mut self) {
        self.behind_since = None;
    }

    /// The latest a publisher arriving at `now` waits until. A client not measured yet gets
    /// `pacing` from when it fell behind, so one that never drains costs one wait, shared by
    /// every client found behind with it.
    pub fn deadline(&self, now: Instant, pacing: Duration) -> Instant {
        match (self.progress_at, self.behind_since) {
            (None, Some(first)) => first + pacing,
            _ => now + pacing,
        }
    }

    /// Whether a publisher should go on waiting at `now`, until `deadline`, for `backlog`
    /// messages beyond a quarter of the queue to be written.
    pub fn worth_waiting(
        &self,
        now: Instant,
        deadline: Instant,
        backlog: usize,
        pacing: Duration,
    ) -> bool {
        if now >= deadline {
            return false;
        }
        let Some(at) = self.progress_at else {
            // Not measured yet: waiting until the deadline is the benefit of the doubt.
            return true;
        };
        let stuck_since = self.behind_since.map_or(at, |b| b.max(at));
        let left = (deadline - now).as_secs_f64();
        now - stuck_since < pacing && self.rate * left >= backlog as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACING: Duration = Duration::from_millis(25);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A client that drained 1,000 messages in 1 ms at `t0 + at`.
    fn fast_at(t0: Instant, at: u64) -> Drain {
        let mut d = Drain::default();
        d.progress(t0 + ms(at) - ms(1), t0 + ms(at), 1000);
        d
    }

    #[test]
    fn a_fast_client_behind_just_now_is_waited_for() {
        let t0 = Instant::now();
        let mut d = fast_at(t0, 0);
        d.behind(t0 + ms(1));
        let now = t0 + ms(2);
        assert!(d.worth_waiting(now, d.deadline(now, PACING), 8000, PACING));
    }

    /// Regression test for 98b8a27: counted from its last write alone, a reader that had kept up
    /// with no backlog was given up on the instant a burst found it behind, and lost deliveries.
    #[test]
    fn an_old_progress_counts_from_when_the_client_fell_behind() {
        // The reader kept up without a timed write for 200 ms, then a burst found it behind.
        let t0 = Instant::now();
        let mut d = fast_at(t0, 0);
        d.behind(t0 + ms(200));
        let now = t0 + ms(210);
        assert!(d.worth_waiting(now, d.deadline(now, PACING), 8000, PACING));
        // No progress within `pacing` of falling behind: given up.
        let later = t0 + ms(226);
        assert!(!d.worth_waiting(later, d.deadline(later, PACING), 8000, PACING));
    }

    #[test]
    fn a_client_behind_for_long_without_progress_is_not_waited_for() {
        let t0 = Instant::now();
        let mut d = fast_at(t0, 0);
        d.behind(t0 + ms(1));
        d.behind(t0 + ms(100)); // still behind: the first moment counts
        let now = t0 + ms(100);
        assert!(!d.worth_waiting(now, d.deadline(now, PACING), 8000, PACING));
    }

    #[test]
    fn catching_up_starts_a_new_window() {
        let t0 = Instant::now();
        let mut d = fast_at(t0, 0);
        d.behind(t0 + ms(1));
        d.caught_up();
        d.behind(t0 + ms(100));
        let now = t0 + ms(101);
        assert!(d.worth_waiting(now, d.deadline(now, PACING), 8000, PACING));
    }

    #[test]
    fn a_slow_client_is_not_waited_for() {
        // 100 messages a second cannot clear 8,000 in 25 ms.
        let t0 = Instant::now();
        let mut d = Drain::default();
        d.progress(t0, t0 + ms(1000), 100);
        d.behind(t0 + ms(1000));
        let now = t0 + ms(1001);
        assert!(!d.worth_waiting(now, d.deadline(now, PACING), 8000, PACING));
        // But it is for a backlog it can clear in the time left.
        assert!(d.worth_waiting(now, d.deadline(now, PACING), 2, PACING));
    }

    #[test]
    fn an_unmeasured_client_gets_pacing_from_when_it_fell_behind() {
        let t0 = Instant::now();
        let mut d = Drain::default();
        d.behind(t0);
        let soon = t0 + ms(10);
        assert_eq!(d.deadline(soon, PACING), t0 + PACING);
        assert!(d.worth_waiting(soon, d.deadline(soon, PACING), 8000, PACING));
        let late = t0 + ms(30);
        assert!(!d.worth_waiting(late, d.deadline(late, PACING), 8000, PACING));
    }

    #[test]
    fn rates_are_smoothed() {
        let t0 = Instant::now();
        let mut d = Drain::default();
        d.progress(t0, t0 + ms(1), 1000); // 1M/s
        d.progress(t0 + ms(1), t0 + ms(2), 3000); // 3M/s
        d.behind(t0 + ms(2));
        // 2M/s clears 40,000 in 20 ms but not 60,000.
        let now = t0 + ms(5);
        let deadline = now + ms(20);
        assert!(d.worth_waiting(now, deadline, 40_000, PACING));
        assert!(!d.worth_waiting(now, deadline, 60_000, PACING));
        // Nothing written is no measurement.
        d.progress(t0 + ms(2), t0 + ms(3), 0);
        assert!(d.worth_waiting(now, deadline, 40_000, PACING));
    }
}
