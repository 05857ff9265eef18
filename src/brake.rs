//! The brake on guessing: a failure budget per client address, and logs that summarise.
//!
//! After [`Policy::max_failures`] failed attempts within [`Policy::window`] from one address
//! (wrong admin tokens on the line port, unknown tokens on WebSocket upgrades), every further
//! attempt from that address is refused for [`Policy::lockout`] without being checked, so
//! guessing goes at a few attempts a minute instead of thousands a second. An IPv6 address
//! counts by its /64, which one host usually holds whole.
//!
//! Failures are logged as at most one line per address per [`Policy::log_interval`]: the
//! first on its own, the rest summed up by the next line (written with the address's next
//! event after the interval, or by the next sweep that any address's event runs), so
//! guessing cannot flood the log. A lockout is logged when it begins.
//!
//! At most [`Policy::max_addresses`] addresses are remembered: idle ones are forgotten, and
//! when that is not enough the least recently seen eighth goes at once, so an attacker with
//! many addresses cannot make the brake grow without bound.
//!
//! [`Budget`] is the rule alone, pure, driven by the caller's clock and tested with it;
//! [`Brake`] is a server's thread-safe instance of it, which logs and counts in `/metrics`.

use crate::metrics::{self, Metrics};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

/// The numbers of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures within `window` that lock an address out.
    pub max_failures: u32,
    /// How long failures are counted together, from the first of a run.
    pub window: Duration,
    /// How long a locked-out address is refused.
    pub lockout: Duration,
    /// At most one summary line per address this often.
    pub log_interval: Duration,
    /// The most addresses remembered at once.
    pub max_addresses: usize,
}

/// The brake on token guessing: 10 failures within 10 s lock an address out for 30 s. A
/// person who mistypes a token a few times is never stopped; a program that guesses gets 10
/// tries per 40 s instead of thousands a second.
pub const GUESSING: Policy = Policy {
    max_failures: 10,
    window: Duration::from_secs(10),
    lockout: Duration::from_secs(30),
    log_interval: Duration::from_secs(10),
    max_addresses: 4096,
};

/// Counting and summarised logging only: an address is never locked out (its window restarts
/// long before it could count this many).
pub const LOG_ONLY: Policy = Policy {
    max_failures: u32::MAX,
    ..GUESSING
};

/// How often idle addresses are forgotten and overdue summaries written.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What to log, as [`Budget`] decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The event at hand, on its own: nothing else happened from its address since the last
    /// line about it, which is at least a log interval old. `failure` is false for a refusal.
    Event { key: IpAddr, failure: bool },
    /// What happened from one address since the last line about it, over `over` (zero when
    /// there was none before).
    Summary {
        key: IpAddr,
        failures: u64,
        refused: u64,
        over: Duration,
    },
    /// This failure was the `failures`th `within` the window: the address is refused for
    /// `lockout`.
    Lockout {
        key: IpAddr,
        failures: u32,
        within: Duration,
        lockout: Duration,
    },
    /// So many addresses were forgotten, the least recently seen, to stay within
    /// `max_addresses`.
    Forgot { addresses: usize },
}

/// What an event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Happened {
    Failure,
    Refusal,
}

/// One address's state.
#[derive(Debug)]
struct Entry {
    /// The current run of failures: when it began, and how many.
    window_start: Instant,
    failures: u32,
    /// Attempts are refused until then.
    locked_until: Option<Instant>,
    /// The last failure or refusal, for forgetting the least recently seen.
    last_seen: Instant,
    /// When the last line about this address was logged, and what happened since.
    logged_at: Option<Instant>,
    pending_failures: u64,
    pending_refused: u64,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            window_start: now,
            failures: 0,
            locked_until: None,
            last_seen: now,
            logged_at: None,
            pending_failures: 0,
            pending_refused: 0,
        }
    }

    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .filter(|&t| now < t)
            .map(|t| t.duration_since(now))
    }

    /// Logs what is pending when this address's log interval is over. `at_hand` is the event
    /// just counted, if the note is made for one (a sweep makes notes for none).
    fn note(
        &mut self,
        key: IpAddr,
        now: Instant,
        interval: Duration,
        at_hand: Option<Happened>,
        notes: &mut Vec<Note>,
    ) {
        let due = self.logged_at.is_none_or(|t| now >= t + interval);
        let (failures, refused) = (self.pending_failures, self.pending_refused);
        if !due || failures + refused == 0 {
            return;
        }
        let note = match at_hand {
            Some(what) if failures + refused == 1 => Note::Event {
                key,
                failure: what == Happened::Failure,
            },
            _ => Note::Summary {
                key,
                failures,
                refused,
                over: self
                    .logged_at
                    .map_or(Duration::ZERO, |t| now.duration_since(t)),
            },
        };
        notes.push(note);
        self.pending_failures = 0;
        self.pending_refused = 0;
        self.logged_at = Some(now);
    }

    /// Nothing to remember: not locked out, no run of failures going on, nothing waiting to
    /// be logged, and no line so recent that the next event should wait for the interval.
    fn idle(&self, now: Instant, policy: &Policy) -> bool {
        self.locked(now).is_none()
            && (self.failures == 0 || now >= self.window_start + policy.window)
            && self.pending_failures + self.pending_refused == 0
            && self
                .logged_at
                .is_none_or(|t| now >= t + policy.log_interval)
    }
}

/// The failure budgets of all addresses, under one policy. Pure: every method takes the
/// time, and returns what to log in `notes`.
#[derive(Debug)]
pub struct Budget {
    policy: Policy,
    entries: HashMap<IpAddr, Entry>,
    next_sweep: Option<Instant>,
}

/// The address a budget is kept for: an IPv4 address (also when it comes mapped into IPv6),
/// or an IPv6 address's /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

impl Budget {
    /// An empty budget.
    pub fn new(policy: Policy) -> Budget {
        Budget {
            policy,
            entries: HashMap::new(),
            next_sweep: None,
        }
    }

    /// Before an attempt from `ip` is checked: `Err` with the time left when the address is
    /// locked out (the refusal is counted for the log), `Ok` otherwise.
    ///
    /// # Errors
    /// The address is locked out; the attempt must be refused without being checked.
    pub fn check(
        &mut self,
        ip: IpAddr,
        now: Instant,
        notes: &mut Vec<Note>,
    ) -> Result<(), Duration> {
        let verdict = self.refuse_if_locked(address_key(ip), now, notes);
        // After the address's own note, which sums up what it had pending with this event.
        self.sweep_if_due(now, notes);
        verdict
    }

    fn refuse_if_locked(
        &mut self,
        key: IpAddr,
        now: Instant,
        notes: &mut Vec<Note>,
    ) -> Result<(), Duration> {
        let Some(e) = self.entries.get_mut(&key) else {
            return Ok(());
        };
        let Some(left) = e.locked(now) else {
            return Ok(());
        };
        e.last_seen = now;
        e.pending_refused += 1;
        let interval = self.policy.log_interval;
        e.note(key, now, interval, Some(Happened::Refusal), notes);
        Err(left)
    }

    /// After a failed attempt from `ip`. Returns true when this failure used up the address's
    /// budget: it is locked out from now on.
    pub fn fail(&mut self, ip: IpAddr, now: Instant, notes: &mut Vec<Note>) -> bool {
        let key = address_key(ip);
        if !self.entries.contains_key(&key) {
            self.make_room(now, notes);
        }
        let locked = self.count_failure(key, now, notes);
        self.sweep_if_due(now, notes);
        locked
    }

    fn count_failure(&mut self, key: IpAddr, now: Instant, notes: &mut Vec<Note>) -> bool {
        let policy = self.policy;
        let e = self.entries.entry(key).or_insert_with(|| Entry::new(now));
        e.last_seen = now;
        e.pending_failures += 1;
        let at_hand = Some(Happened::Failure);
        if e.locked(now).is_some() {
            // Checked before the lockout began, failed after: counted, nothing more.
            e.note(key, now, policy.log_interval, at_hand, notes);
            return false;
        }
        if e.failures == 0 || now >= e.window_start + policy.window {
            e.window_start = now;
            e.failures = 0;
        }
        e.failures += 1;
        if e.failures < policy.max_failures {
            e.note(key, now, policy.log_interval, at_hand, notes);
            return false;
        }
        // The lockout has a line of its own; this failure is summed up with the next one.
        e.failures = 0;
        e.locked_until = Some(now + policy.lockout);
        notes.push(Note::Lockout {
            key,
            failures: policy.max_failures,
            within: policy.window,
            lockout: policy.lockout,
        });
        true
    }

    /// The number of addresses remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no address is remembered.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn sweep_if_due(&mut self, now: Instant, notes: &mut Vec<Note>) {
        if self.next_sweep.is_none_or(|t| now >= t) {
            self.sweep(now, notes);
        }
    }

    /// Writes the summaries that are due and forgets idle addresses.
    fn sweep(&mut self, now: Instant, notes: &mut Vec<Note>) {
        self.next_sweep = Some(now + SWEEP_EVERY);
        let policy = self.policy;
        self.entries.retain(|&key, e| {
            e.note(key, now, policy.log_interval, None, notes);
            !e.idle(now, &policy)
        });
    }

    /// Before a new address is added: when the budget is full, forgets idle addresses, and if
    /// that is not enough, the least recently seen eighth (at least one), so that a stream of
    /// new addresses costs a sort only every so many of them.
    fn make_room(&mut self, now: Instant, notes: &mut Vec<Note>) {
        if self.entries.len() < self.policy.max_addresses {
            return;
        }
        self.sweep(now, notes);
        if self.entries.len() < self.policy.max_addresses {
            return;
        }
        let mut seen: Vec<(Instant, IpAddr)> = self
            .entries
            .iter()
            .map(|(k, e)| (e.last_seen, *k))
            .collect();
        let n = (seen.len() / 8).max(1);
        seen.select_nth_unstable(n - 1);
        for (_, key) in &seen[..n] {
            self.entries.remove(key);
        }
        notes.push(Note::Forgot { addresses: n });
    }
}

/// What a brake guards; it decides the wording of the log and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `auth ADMIN_TOKEN` on the line port.
    Admin,
    /// The token of a WebSocket upgrade.
    WebSocket,
    /// HTTP requests sent to the line port (never locked out; summarised in the log).
    HttpOnLine,
}

/// A server's budget for one kind of attempt: thread-safe, logs what the budget decides,
/// counts lockouts and refusals.
pub struct Brake {
    kind: Kind,
    /// A mutex: taken once per attempt of its kind (an `auth`, a WebSocket upgrade), held
    /// for a hash-map lookup, and for a sweep at most once a second.
    budget: Mutex<Budget>,
    metrics: Arc<Metrics>,
}

impl Brake {
    /// A brake with `policy` for attempts of `kind`.
    pub fn new(kind: Kind, policy: Policy, metrics: Arc<Metrics>) -> Brake {
        Brake {
            kind,
            budget: Mutex::new(Budget::new(policy)),
            metrics,
        }
    }

    /// Before an attempt from `peer` is checked.
    ///
    /// # Errors
    /// The address is locked out, for the time returned: refuse the attempt unchecked.
    pub fn check(&self, peer: SocketAddr) -> Result<(), Duration> {
        let mut notes = Vec::new();
        let verdict = self
            .budget
            .lock()
            .check(peer.ip(), Instant::now(), &mut notes);
        if let (Err(_), Some((_, refused))) = (verdict, self.counters()) {
            metrics::add(refused, 1);
        }
        self.log(peer, &notes);
        verdict
    }

    /// After a failed attempt from `peer`. Returns true when it locked the address out.
    pub fn fail(&self, peer: SocketAddr) -> bool {
        let mut notes = Vec::new();
        let locked = self
            .budget
            .lock()
            .fail(peer.ip(), Instant::now(), &mut notes);
        if let (true, Some((lockouts, _))) = (locked, self.counters()) {
            metrics::add(lockouts, 1);
        }
        self.log(peer, &notes);
        locked
    }

    /// How long a locked-out address is refused.
    pub fn lockout(&self) -> Duration {
        self.budget.lock().policy.lockout
    }

    /// The counters of lockouts and refused attempts of this kind.
    fn counters(&self) -> Option<(&AtomicU64, &AtomicU64)> {
        let m = &self.metrics;
        match self.kind {
            Kind::Admin => Some((&m.auth_lockouts_admin, &m.auth_refused_admin)),
            Kind::WebSocket => Some((&m.auth_lockouts_websocket, &m.auth_refused_websocket)),
            Kind::HttpOnLine => None,
        }
    }

    /// Writes the notes. The event at hand on its own names the peer with its port, as any
    /// line about one connection does; summaries name the address.
    fn log(&self, peer: SocketAddr, notes: &[Note]) {
        let level = match self.kind {
            Kind::Admin | Kind::HttpOnLine => log::Level::Warn,
            Kind::WebSocket => log::Level::Info,
        };
        let (failed, refusals, single_failure, single_refusal, locked) = match self.kind {
            Kind::Admin => (
                "wrong admin tokens",
                "auth attempts refused",
                "wrong admin token",
                "auth refused: too many wrong admin tokens from this address",
                "auth from it is refused",
            ),
            Kind::WebSocket => (
                "unknown WebSocket tokens",
                "WebSocket upgrades refused",
                "WebSocket refused: unknown token",
                "WebSocket refused: too many unknown tokens from this address",
                "its WebSocket upgrades are refused",
            ),
            Kind::HttpOnLine => (
                "connections closed for sending HTTP to the line port",
                "refused",
                "closed: it sent HTTP to the line port (a web page's request, or an HTTP \
                 client pointed at the wrong port)",
                "refused",
                "refused",
            ),
        };
        for note in notes {
            match *note {
                Note::Event { failure, .. } => {
                    let what = if failure {
                        single_failure
                    } else {
                        single_refusal
                    };
                    log::log!(level, "{peer}: {what}");
                }
                Note::Summary {
                    key,
                    failures,
                    refused,
                    over,
                } => {
                    let mut line = format!("{key}: {failed}: {failures}");
                    if refused > 0 {
                        line.push_str(&format!(", {refusals}: {refused}"));
                    }
                    if !over.is_zero() {
                        line.push_str(&format!(", in the last {} s", over.as_secs()));
                    }
                    log::log!(level, "{line}");
                }
                Note::Lockout {
                    key,
                    failures,
                    within,
                    lockout,
                } => log::warn!(
                    "{peer}: {failures} {failed} from {key} within {} s: {locked} for {} s",
                    within.as_secs(),
                    lockout.as_secs()
                ),
                Note::Forgot { addresses } => log::warn!(
                    "failed attempts from too many addresses: forgot the {addresses} least \
                     recently seen"
                ),
            }
        }
    }
}

/// The brakes of a server.
pub struct Brakes {
    /// `auth ADMIN_TOKEN` on the line port.
    pub admin: Brake,
    /// Tokens of WebSocket upgrades.
    pub websocket: Brake,
    /// HTTP requests on the line port: only their log lines are summarised.
    pub http_on_line: Brake,
}

impl Brakes {
    /// The brakes of a new server, counting into `metrics`.
    pub fn new(metrics: &Arc<Metrics>) -> Brakes {
        Brakes {
            admin: Brake::new(Kind::Admin, GUESSING, Arc::clone(metrics)),
            websocket: Brake::new(Kind::WebSocket, GUESSING, Arc::clone(metrics)),
            http_on_line: Brake::new(Kind::HttpOnLine, LOG_ONLY, Arc::clone(metrics)),
        }
    }
}

/// Whole seconds, rounded up, as said to a client that must wait (`Retry-After`).
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// A budget on the default policy and a clock that starts now.
    fn guessing() -> (Budget, Instant) {
        (Budget::new(GUESSING), Instant::now())
    }

    /// The lines about events: (address, failures, refusals).
    fn summaries(notes: &[Note]) -> Vec<(IpAddr, u64, u64)> {
        notes
            .iter()
            .filter_map(|n| match *n {
                Note::Summary {
                    key,
                    failures,
                    refused,
                    ..
                } => Some((key, failures, refused)),
                Note::Event { key, failure } => {
                    Some((key, u64::from(failure), u64::from(!failure)))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ten_failures_within_ten_seconds_lock_out_for_thirty() {
        let (mut b, t0) = guessing();
        let mut notes = Vec::new();
        for i in 0..9 {
            assert!(
                !b.fail(A, t0 + secs(f64::from(i)), &mut notes),
                "failure {i}"
            );
            assert_eq!(b.check(A, t0 + secs(f64::from(i)), &mut notes), Ok(()));
        }
        assert!(b.fail(A, t0 + secs(9.5), &mut notes), "the tenth locks out");
        assert!(notes.contains(&Note::Lockout {
            key: A,
            failures: 10,
            within: secs(10.0),
            lockout: secs(30.0),
        }));
        let locked = t0 + secs(9.5);
        assert_eq!(b.check(A, locked, &mut notes), Err(secs(30.0)));
        assert_eq!(b.check(A, locked + secs(29.0), &mut notes), Err(secs(1.0)));
        assert_eq!(b.check(A, locked + secs(30.0), &mut notes), Ok(()));
        // Afterwards a new run of failures starts from nothing.
        for i in 0..9 {
            assert!(!b.fail(A, locked + secs(30.0 + f64::from(i) / 10.0), &mut notes));
        }
        assert_eq!(b.check(A, locked + secs(31.0), &mut notes), Ok(()));
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_lock_out() {
        let (mut b, t0) = guessing();
        let mut notes = Vec::new();
        // Nine failures in every ten seconds, for ten minutes.
        for i in 0..540 {
            let now = t0 + secs(f64::from(i) * 10.0 / 9.0 + 0.001);
            assert_eq!(b.check(A, now, &mut notes), Ok(()), "attempt {i}");
            assert!(!b.fail(A, now, &mut notes), "failure {i}");
        }
    }

    #[test]
    fn addresses_are_counted_apart_ipv6_by_its_64() {
        let (mut b, t0) = guessing();
        let mut notes = Vec::new();
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        for _ in 0..10 {
            b.fail(A, t0, &mut notes);
            b.fail(v6("2001:db8:1:2::1"), t0, &mut notes);
        }
        assert!(b.check(A, t0, &mut notes).is_err());
        assert_eq!(b.check(B, t0, &mut notes), Ok(()));
        // The same /64, and the IPv4 address written as IPv6, share a budget.
        assert!(b.check(v6("2001:db8:1:2:ffff::9"), t0, &mut notes).is_err());
        assert!(b.check(v6("::ffff:192.0.2.1"), t0, &mut notes).is_err());
        assert_eq!(b.check(v6("2001:db8:1:3::1"), t0, &mut notes), Ok(()));
        assert_eq!(address_key(v6("::1")), v6("::"));
        assert_eq!(address_key(A), A);
    }

    /// A flood of failures, then refusals, over 35 seconds: the first is logged at once, the
    /// lockout once, and the rest in at most one line per log interval; every failure and
    /// refusal is in some line once the next sweep has run.
    #[test]
    fn logging_sums_up_a_flood_in_one_line_per_interval() {
        let (mut b, t0) = guessing();
        let mut notes = Vec::new();
        let (mut failed, mut refused) = (0u64, 0u64);
        for ms in 0..35_000u64 {
            let now = t0 + Duration::from_millis(ms);
            if b.check(A, now, &mut notes).is_ok() {
                b.fail(A, now, &mut notes);
                failed += 1;
            } else {
                refused += 1;
            }
        }
        // Lockouts at 0 s and when the first ended, 30 s later.
        assert_eq!(failed, 20);
        assert_eq!(refused, 35_000 - 20);
        let lockouts = notes
            .iter()
            .filter(|n| matches!(n, Note::Lockout { .. }))
            .count();
        assert_eq!(lockouts, 2);
        let lines = summaries(&notes);
        assert_eq!(lines[0], (A, 1, 0), "the first failure, on its own");
        assert!(lines.len() <= 35 / 10 + 1, "{lines:?}");
        // Another address's event later runs the sweep, which writes what is left.
        b.check(B, t0 + secs(50.0), &mut notes).unwrap();
        let lines = summaries(&notes);
        let total_failed: u64 = lines.iter().map(|l| l.1).sum();
        let total_refused: u64 = lines.iter().map(|l| l.2).sum();
        assert_eq!((total_failed, total_refused), (failed, refused));
        assert!(lines.len() <= 35 / 10 + 2, "{lines:?}");
    }

    #[test]
    fn a_lone_failure_is_logged_at_once_with_no_interval() {
        let (mut b, t0) = guessing();
        let mut notes = Vec::new();
        b.fail(A, t0, &mut notes);
        assert_eq!(
            notes,
            [Note::Event {
                key: A,
                failure: true
            }]
        );
        // A second one a minute later is logged at once too, on its own.
        notes.clear();
        b.fail(A, t0 + secs(60.0), &mut notes);
        assert_eq!(
            notes,
            [Note::Event {
                key: A,
                failure: true
            }]
        );
    }

    /// What was left from a burst is summed up with the next event from the address, in one
    /// line over the time since the last, not shown as if it were that event alone.
    #[test]
    fn leftovers_are_summed_up_with_the_next_event() {
        let (mut b, t0) = guessing();
        let mut notes = Vec::new();
        b.fail(A, t0, &mut notes);
        b.fail(A, t0 + secs(1.0), &mut notes);
        assert_eq!(
            notes.len(),
            1,
            "the second waits for the interval: {notes:?}"
        );
        notes.clear();
        b.fail(A, t0 + secs(60.0), &mut notes);
        assert_eq!(
            notes,
            [Note::Summary {
                key: A,
                failures: 2,
                refused: 0,
                over: secs(60.0)
            }]
        );
        // A sweep run by another address writes leftovers as a summary, even of one event.
        notes.clear();
        b.fail(A, t0 + secs(61.0), &mut notes);
        b.fail(B, t0 + secs(75.0), &mut notes);
        assert_eq!(
            notes,
            [
                Note::Event {
                    key: B,
                    failure: true
                },
                Note::Summary {
                    key: A,
                    failures: 1,
                    refused: 0,
                    over: secs(15.0)
                }
            ]
        );
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let (mut b, t0) = guessing();
        let mut notes = Vec::new();
        for _ in 0..10 {
            b.fail(A, t0, &mut notes);
        }
        b.fail(B, t0, &mut notes);
        assert_eq!(b.len(), 2);
        // B is idle once its window and log interval are over; A only once its lockout is.
        b.check(A, t0 + secs(11.0), &mut notes).unwrap_err();
        assert_eq!(b.len(), 1);
        b.check(B, t0 + secs(31.0), &mut notes).unwrap();
        b.check(B, t0 + secs(42.0), &mut notes).unwrap();
        assert!(b.is_empty(), "{b:?}");
    }

    /// Many addresses that each fail once: the budget never holds more than its cap, drops
    /// the least recently seen, and keeps an address that stays busy locked out.
    #[test]
    fn memory_stays_bounded_under_many_addresses() {
        let policy = Policy {
            max_addresses: 64,
            ..GUESSING
        };
        let mut b = Budget::new(policy);
        let t0 = Instant::now();
        let mut notes = Vec::new();
        for _ in 0..10 {
            b.fail(A, t0, &mut notes);
        }
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 100);
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            b.fail(ip, now, &mut notes);
            assert!(b.len() <= 64, "{} addresses", b.len());
            if i % 4 == 0 {
                assert!(b.check(A, now, &mut notes).is_err(), "A forgotten at {i}");
            }
        }
        let forgot: usize = notes
            .iter()
            .map(|n| match n {
                Note::Forgot { addresses } => *addresses,
                _ => 0,
            })
            .sum();
        assert_eq!(forgot + b.len(), 10_001);
    }

    #[test]
    fn log_only_never_locks_out() {
        let mut b = Budget::new(LOG_ONLY);
        let t0 = Instant::now();
        let mut notes = Vec::new();
        for i in 0..100_000u64 {
            let now = t0 + Duration::from_micros(i);
            assert!(!b.fail(A, now, &mut notes));
            assert_eq!(b.check(A, now, &mut notes), Ok(()));
        }
        assert_eq!(summaries(&notes), [(A, 1, 0)]);
    }

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(secs(0.001)), 1);
        assert_eq!(whole_seconds(secs(30.0)), 30);
        assert_eq!(whole_seconds(secs(29.5)), 30);
    }
}
