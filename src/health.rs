//! Whether the backends the server is configured with can be reached, for `/healthz`.
//!
//! Each backend is a [`Probe`]. One thread (`mist-health`) runs every probe every
//! [`INTERVAL`] and keeps the latest answers, so `/healthz` answers at once from them and never
//! waits on a backend itself. A probe whose last success is older than [`STALE`] counts as
//! failing even when its check has not come back yet (a backend that hangs instead of
//! refusing), so `/healthz` turns 503 within two seconds of a backend going away either way.
//!
//! The PostgreSQL token store has [`PgProbe`], on a connection of its own. The cluster bus
//! adds its own probe where the server starts it (see `Server::start`).

use crate::config::PgConfig;
use crate::metrics::BusMetrics;
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often every probe runs.
pub const INTERVAL: Duration = Duration::from_millis(500);
/// How old a probe's last success may be before the backend counts as unreachable.
pub const STALE: Duration = Duration::from_millis(1500);
/// Longest wait for a probe's connection to be made, and for the backend to acknowledge data.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A backend that can be checked.
pub trait Probe: Send {
    /// What `/healthz` calls it: "token store", "cluster bus".
    fn name(&self) -> &str;
    /// Checks that the backend answers now.
    ///
    /// # Errors
    /// Why it does not, in words for an operator (never a secret).
    fn check(&mut self) -> Result<(), String>;
}

/// The latest answer of one probe.
#[derive(Debug, Clone)]
struct Status {
    name: String,
    last_ok: Option<Instant>,
    last_error: Option<String>,
}

/// The probes' latest answers, and the thread that renews them.
pub struct Health {
    shared: Arc<Shared>,
    /// A mutex only so that shutdown can take it through a shared handle.
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    /// A mutex: written once per probe per interval, read by `/healthz`.
    statuses: Mutex<Vec<Status>>,
    /// Set on shutdown; the condvar wakes the thread from its wait.
    stop: Mutex<bool>,
    wake: Condvar,
}

impl Health {
    /// Starts checking `probes` (none: nothing to check, and no thread).
    pub fn start(probes: Vec<Box<dyn Probe>>) -> Health {
        let statuses = probes
            .iter()
            .map(|p| Status {
                name: p.name().to_string(),
                last_ok: None,
                last_error: Some("not checked yet".into()),
            })
            .collect();
        let shared = Arc::new(Shared {
            statuses: Mutex::new(statuses),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let thread = (!probes.is_empty()).then(|| {
            let shared = Arc::clone(&shared);
            let mut probes = probes;
            // Run once before returning, so a healthy server is healthy from its first answer.
            check_all(&shared, &mut probes);
            thread::Builder::new()
                .name("mist-health".into())
                .spawn(move || run(&shared, probes))
                .expect("cannot start the health thread")
        });
        Health {
            shared,
            thread: Mutex::new(thread),
        }
    }

    /// The backends that cannot be reached now, each with the reason; empty when all can.
    pub fn problems(&self) -> Vec<String> {
        let now = Instant::now();
        self.shared
            .statuses
            .lock()
            .iter()
            .filter_map(|s| problem(s, now))
            .collect()
    }

    /// Stops the thread.
    pub fn shutdown(&self) {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// Why a probe's backend counts as unreachable, if it does. Pure.
fn problem(s: &Status, now: Instant) -> Option<String> {
    let fresh = s
        .last_ok
        .is_some_and(|t| now.saturating_duration_since(t) <= STALE);
    match (&s.last_error, fresh) {
        (None, true) => None,
        (Some(e), _) => Some(format!("{}: {e}", s.name)),
        (None, false) => Some(format!("{}: no answer for {STALE:?}", s.name)),
    }
}

fn run(shared: &Shared, mut probes: Vec<Box<dyn Probe>>) {
    loop {
        let mut stop = shared.stop.lock();
        if !*stop {
            shared.wake.wait_for(&mut stop, INTERVAL);
        }
        if *stop {
            return;
        }
        drop(stop);
        check_all(shared, &mut probes);
    }
}

fn check_all(shared: &Shared, probes: &mut [Box<dyn Probe>]) {
    for (i, probe) in probes.iter_mut().enumerate() {
        let result = probe.check();
        let mut statuses = shared.statuses.lock();
        let s = &mut statuses[i];
        match result {
            Ok(()) => {
                if s.last_error.is_some() && s.last_ok.is_some() {
                    log::info!("{} is reachable again", s.name);
                }
                s.last_ok = Some(Instant::now());
                s.last_error = None;
            }
            Err(e) => {
                if s.last_error.is_none() {
                    log::warn!("{} is unreachable: {e}", s.name);
                }
                s.last_error = Some(e);
            }
        }
    }
}

/// Checks a PostgreSQL server with `SELECT 1` on a connection of the probe's own (so a busy
/// token-store pool never makes the server look down), reconnecting after every failure.
pub struct PgProbe {
    name: String,
    address: String,
    config: postgres::Config,
    client: Option<postgres::Client>,
}

impl PgProbe {
    /// A probe of the server in `cfg`, named `name` in `/healthz`.
    pub fn new(name: &str, cfg: &PgConfig) -> PgProbe {
        let mut config = postgres::Config::new();
        let (host, port) = cfg
            .address
            .rsplit_once(':')
            .map(|(h, p)| (h.trim_matches(['[', ']']), p.parse().unwrap_or(5432)))
            .unwrap_or((cfg.address.as_str(), 5432));
        config
            .host(host)
            .port(port)
            .user(&cfg.user)
            .dbname(&cfg.database)
            .application_name("mist-health")
            .connect_timeout(PROBE_TIMEOUT)
            .tcp_user_timeout(PROBE_TIMEOUT);
        if let Some(pw) = &cfg.password {
            config.password(pw);
        }
        PgProbe {
            name: name.to_string(),
            address: cfg.address.clone(),
            config,
            client: None,
        }
    }
}

impl Probe for PgProbe {
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&mut self) -> Result<(), String> {
        let fail = |e: postgres::Error| {
            let mut text = e.to_string();
            if let Some(source) = std::error::Error::source(&e) {
                text = format!("{text}: {source}");
            }
            text
        };
        let client = match &mut self.client {
            Some(c) => c,
            None => {
                let c = self.config.connect(postgres::NoTls).map_err(|e| {
                    format!("PostgreSQL at {} unreachable: {}", self.address, fail(e))
                })?;
                self.client.insert(c)
            }
        };
        if let Err(e) = client.simple_query("SELECT 1") {
            self.client = None;
            return Err(format!(
                "PostgreSQL at {} unreachable: {}",
                self.address,
                fail(e)
            ));
        }
        Ok(())
    }
}

/// The cluster bus's two links to PostgreSQL (sending and listening), as the bus itself sees
/// them: a link it found broken is down until it has reconnected.
pub struct BusProbe {
    metrics: Arc<BusMetrics>,
}

impl BusProbe {
    /// A probe of the bus whose gauges are `metrics`.
    pub fn new(metrics: Arc<BusMetrics>) -> BusProbe {
        BusProbe { metrics }
    }
}

impl Probe for BusProbe {
    fn name(&self) -> &str {
        "cluster bus"
    }

    fn check(&mut self) -> Result<(), String> {
        let up =
            |g: &std::sync::atomic::AtomicU64| g.load(std::sync::atomic::Ordering::Relaxed) == 1;
        match (up(&self.metrics.send_up), up(&self.metrics.listen_up)) {
            (true, true) => Ok(()),
            (send, listen) => Err(format!(
                "{} link down, reconnecting",
                match (send, listen) {
                    (false, false) => "sending and listening",
                    (false, true) => "sending",
                    _ => "listening",
                }
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_is_healthy_while_its_last_success_is_fresh() {
        let now = Instant::now();
        let status = |ok_ago: Option<u64>, error: Option<&str>| Status {
            name: "token store".into(),
            last_ok: ok_ago.map(|ms| now - Duration::from_millis(ms)),
            last_error: error.map(String::from),
        };
        assert_eq!(problem(&status(Some(100), None), now), None);
        assert_eq!(
            problem(&status(Some(100), Some("refused")), now).as_deref(),
            Some("token store: refused")
        );
        assert_eq!(
            problem(&status(Some(1600), None), now).as_deref(),
            Some("token store: no answer for 1.5s")
        );
        assert_eq!(
            problem(&status(None, Some("not checked yet")), now).as_deref(),
            Some("token store: not checked yet")
        );
    }

    struct Flaky {
        answers: Vec<Result<(), String>>,
    }

    impl Probe for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn check(&mut self) -> Result<(), String> {
            if self.answers.len() > 1 {
                self.answers.remove(0)
            } else {
                self.answers[0].clone()
            }
        }
    }

    #[test]
    fn the_first_check_runs_before_start_returns() {
        let h = Health::start(vec![Box::new(Flaky {
            answers: vec![Err("down".into())],
        })]);
        assert_eq!(h.problems(), ["flaky: down"]);
        h.shutdown();
        let h = Health::start(vec![Box::new(Flaky {
            answers: vec![Ok(())],
        })]);
        assert_eq!(h.problems(), Vec::<String>::new());
        h.shutdown();
        let h = Health::start(Vec::new());
        assert!(h.problems().is_empty() && h.thread.lock().is_none());
        h.shutdown();
    }
}
