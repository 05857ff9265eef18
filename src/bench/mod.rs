//! `mist bench`: a load generator that measures a running mist server over TCP or
//! WebSocket, like `redis-benchmark` or `nats bench`.
//!
//! Publishers and subscribers live in this process and share one monotonic [`Clock`]; every
//! payload carries its publisher, sequence number and send time, so each delivery's latency,
//! loss and order can be checked. Subscriptions are confirmed before the first publish (a
//! `ping`/`pong` on TCP, the subscribe reply on WebSocket): that is the barrier.
//!
//! # Layout
//!
//! - [`hist`]: the latency histogram (log2 buckets of 128 linear sub-buckets).
//! - [`payload`]: the shared clock and the payload's stamp.
//! - [`wire`]: parsing what the server sends, and the few frames the benchmark writes (pure).
//! - [`net`]: opening and confirming connections, with the run's deadline on every read.
//! - [`reader`]: epoll threads reading many subscriber connections each.
//! - [`pubsub`]: the publish/subscribe scenarios (fanout, fanin, latency, index, conns).
//! - [`connect`]: the WebSocket connect-rate scenario.
//! - [`sys`]: `/proc`, `getrusage`, the open-files limit and epoll.
//! - [`report`]: the JSON object and the human table.

pub mod connect;
pub mod hist;
pub mod net;
pub mod payload;
pub mod pubsub;
pub mod reader;
pub mod report;
pub mod sys;
pub mod wire;

use crate::cli::Bench;
use mist::TagSet;
use payload::Clock;
use std::fmt;
use std::str::FromStr;

/// Settings that `mist bench` takes from the global flags when it has none of its own.
#[derive(Debug, Default)]
pub struct Globals {
    pub tcp_addr: Option<String>,
    pub http_addr: Option<String>,
    /// `--admin-token` or `$MIST_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad flags (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The connections could not be set up (exit code 1).
    #[error("{0}")]
    Setup(String),
}

impl BenchError {
    /// Whether the flags were at fault.
    pub fn is_usage(&self) -> bool {
        matches!(self, BenchError::Usage(_))
    }
}

fn usage(msg: impl Into<String>) -> BenchError {
    BenchError::Usage(msg.into())
}

/// What a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Fanout,
    Fanin,
    Latency,
    Index,
    Conns,
    Connect,
}

impl FromStr for Scenario {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Scenario, BenchError> {
        Ok(match s {
            "fanout" => Scenario::Fanout,
            "fanin" => Scenario::Fanin,
            "latency" => Scenario::Latency,
            "index" => Scenario::Index,
            "conns" => Scenario::Conns,
            "connect" => Scenario::Connect,
            _ => {
                return Err(usage(format!(
                    "unknown --scenario {s:?}: use fanout, fanin, latency, index, conns or connect"
                )));
            }
        })
    }
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Fanin => "fanin",
            Scenario::Latency => "latency",
            Scenario::Index => "index",
            Scenario::Conns => "conns",
            Scenario::Connect => "connect",
        }
    }
}

/// How subscribers connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Ws,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A run's settings: the flags, with each scenario's defaults filled in and checked.
#[derive(Clone, Debug)]
pub struct Options {
    pub scenario: Scenario,
    pub transport: Transport,
    pub tcp_addr: String,
    /// Where publishers connect, when not `tcp_addr` (another node of a cluster).
    pub pub_addr: Option<String>,
    pub http_addr: String,
    pub subs: usize,
    pub pubs: usize,
    /// Messages per publisher.
    pub msgs: u64,
    pub size: usize,
    /// Messages per second per publisher; 0 is as fast as possible.
    pub rate: f64,
    /// Published tags, as given.
    pub topic: String,
    /// Subscribed tags, as given.
    pub sub_tags: String,
    pub noise_subs: usize,
    pub noise_conns: usize,
    pub compare: bool,
    /// Subscribers that never read.
    pub stalled: usize,
    /// Subscribers that read `slow_read` bytes, then pause `slow_pause` seconds.
    pub slow: usize,
    pub slow_read: usize,
    pub slow_pause: f64,
    pub conns: usize,
    pub threads: usize,
    pub sub_threads: usize,
    pub server_pid: Option<u32>,
    pub admin_token: Option<String>,
    pub timeout: f64,
    pub idle: f64,
    /// Publishers use `mist::Client`.
    pub client: bool,
    pub json: bool,
}

impl Options {
    /// Resolves the flags against the scenario's defaults.
    ///
    /// # Errors
    /// A flag is out of range or contradicts another.
    pub fn new(b: Bench, g: Globals) -> Result<Options, BenchError> {
        let scenario: Scenario = b.scenario.parse()?;
        let transport = match b.transport.as_str() {
            "tcp" => Transport::Tcp,
            "ws" => Transport::Ws,
            t => return Err(usage(format!("unknown --transport {t:?}: use tcp or ws"))),
        };
        let (subs, pubs, rate, seconds) = match scenario {
            Scenario::Fanout => (100, 1, 0.0, None),
            Scenario::Fanin => (1, 4, 0.0, None),
            Scenario::Latency => (100, 1, 5000.0, Some(5.0)),
            Scenario::Index => (1, 1, 0.0, None),
            Scenario::Conns => (5000, 1, 50.0, Some(10.0)),
            Scenario::Connect => (0, 0, 0.0, None),
        };
        let rate = b.rate.unwrap_or(rate);
        // Paced scenarios default to a duration's worth of messages at their rate.
        let msgs = b.msgs.unwrap_or(match (scenario, seconds) {
            (_, Some(s)) if rate > 0.0 => ((rate * s).ceil() as u64).max(1),
            // Long enough for the server's CPU time (in 10 ms ticks) to compare.
            (Scenario::Index, _) => 1_000_000,
            _ => 100_000,
        });
        let o = Options {
            scenario,
            transport,
            tcp_addr: b
                .addr
                .or(g.tcp_addr)
                .unwrap_or_else(|| "127.0.0.1:1445".into()),
            pub_addr: b.pub_addr,
            http_addr: b
                .http_addr
                .or(g.http_addr)
                .unwrap_or_else(|| "127.0.0.1:8080".into()),
            subs: b.subs.unwrap_or(subs),
            pubs: b.pubs.unwrap_or(pubs),
            msgs,
            size: b.size,
            rate,
            sub_tags: b.sub_tags.unwrap_or_else(|| b.topic.clone()),
            topic: b.topic,
            noise_subs: if scenario == Scenario::Index {
                b.noise_subs.unwrap_or(100_000)
            } else {
                b.noise_subs.unwrap_or(0)
            },
            noise_conns: b.noise_conns,
            compare: b.compare,
            stalled: b.stalled,
            slow: b.slow,
            slow_read: b.slow_read,
            slow_pause: b.slow_pause / 1e3,
            conns: b.conns,
            threads: b.threads,
            sub_threads: b.sub_threads.unwrap_or_else(default_sub_threads),
            server_pid: b.server_pid,
            admin_token: b.admin_token.or(g.admin_token),
            timeout: b.timeout,
            idle: b.idle,
            client: b.client,
            json: b.json,
        };
        o.check()?;
        Ok(o)
    }

    fn check(&self) -> Result<(), BenchError> {
        // Written with negations so that NaN fails too.
        if !(self.timeout > 0.0 && self.timeout <= 1e6) {
            return Err(usage(
                "--timeout must be above 0 and at most 1000000 seconds",
            ));
        }
        if !(self.idle > 0.0 && self.idle <= 1e6) {
            return Err(usage("--idle must be above 0 and at most 1000000 seconds"));
        }
        if self.scenario == Scenario::Connect {
            if self.conns == 0 || self.threads == 0 {
                return Err(usage("--conns and --threads must be at least 1"));
            }
            return self.check_open_files(self.conns + 8);
        }
        if self.pubs == 0 || self.msgs == 0 {
            return Err(usage("--pubs and --msgs must be at least 1"));
        }
        if self.subs == 0 && self.stalled + self.slow == 0 {
            return Err(usage(
                "--subs must be at least 1, unless there are --stalled or --slow subscribers",
            ));
        }
        if self.slow > 0 && self.transport == Transport::Ws {
            return Err(usage(
                "--slow subscribers are TCP only: use --transport tcp",
            ));
        }
        if self.slow_read == 0 || self.slow_read > 64 << 20 {
            return Err(usage("--slow-read must be between 1 and 67108864 bytes"));
        }
        if !(self.slow_pause >= 0.0 && self.slow_pause <= 10.0) {
            return Err(usage(
                "--slow-pause must be between 0 and 10000 milliseconds",
            ));
        }
        if !(self.rate >= 0.0 && self.rate <= 1e9) {
            return Err(usage("--rate must be between 0 and 1000000000"));
        }
        let min = payload::min_size(self.pubs, self.msgs);
        if self.size < min {
            return Err(usage(format!(
                "--size {} is too small: the stamp needs {min} bytes",
                self.size
            )));
        }
        if self.size > 64 << 20 {
            return Err(usage("--size must be at most 64 MiB"));
        }
        if self.sub_threads == 0 {
            return Err(usage("--sub-threads must be at least 1"));
        }
        if self.noise_subs > 0 && self.noise_conns == 0 {
            return Err(usage("--noise-conns must be at least 1"));
        }
        if self.compare && self.scenario != Scenario::Index && self.stalled == 0 {
            return Err(usage(
                "--compare applies to --scenario index, or to a run with --stalled subscribers",
            ));
        }
        let topic = tag_set("--topic", &self.topic)?;
        let sub = tag_set("--sub-tags", &self.sub_tags)?;
        if !sub.is_subset_of(&topic) {
            return Err(usage(
                "--sub-tags must be among the --topic tags, so that every subscriber gets every message",
            ));
        }
        self.check_open_files(
            self.subs
                + self.stalled
                + self.slow
                + self.pubs
                + self.noise_conns.min(self.noise_subs)
                + 16,
        )
    }

    fn check_open_files(&self, need: usize) -> Result<(), BenchError> {
        let limit = sys::raise_open_files();
        if need as u64 > limit {
            return Err(usage(format!(
                "this run needs about {need} open files, but the limit is {limit} (raise the hard limit: ulimit -Hn)"
            )));
        }
        Ok(())
    }

    /// The subscribed tags, one string each (for the WebSocket command).
    pub fn sub_tag_list(&self) -> Vec<String> {
        self.sub_tags.split(',').map(str::to_string).collect()
    }
}

fn tag_set(flag: &str, list: &str) -> Result<TagSet, BenchError> {
    TagSet::parse(list.as_bytes(), usize::MAX).map_err(|e| usage(format!("{flag} {list:?}: {e}")))
}

/// One reader thread per CPU, at most four: enough to keep up with the server on the
/// machines this runs on, without taking all of its CPUs.
fn default_sub_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(4))
}

/// Prints a progress line on stderr.
pub(crate) fn progress(clock: &Clock, msg: impl fmt::Display) {
    eprintln!("mist bench [{:7.2}s] {msg}", clock.secs());
}

/// Runs `mist bench` and prints its report on stdout.
///
/// # Errors
/// Bad flags, or the benchmark's connections could not be set up. A run that loses messages
/// or times out is not an error: that is what it reports.
pub fn run(b: Bench, g: Globals) -> Result<(), BenchError> {
    let o = Options::new(b, g)?;
    let out = match o.scenario {
        Scenario::Connect => {
            let r = connect::run(&o)?;
            if o.json {
                serde_json::Value::Object(r.json()).to_string()
            } else {
                r.human()
            }
        }
        _ if o.compare && o.stalled > 0 => {
            let without = pubsub::run(&Options {
                stalled: 0,
                ..o.clone()
            })?;
            let with = pubsub::run(&o)?;
            if o.json {
                serde_json::Value::Object(report::stall_json(&with, &without)).to_string()
            } else {
                format!(
                    "{}\n{}\n{}",
                    without.human(),
                    with.human(),
                    report::stall_human(&with, &without)
                )
            }
        }
        Scenario::Index if o.compare => {
            let without = pubsub::run(&Options {
                noise_subs: 0,
                ..o.clone()
            })?;
            let with = pubsub::run(&o)?;
            if o.json {
                serde_json::Value::Object(report::compare_json(&with, &without)).to_string()
            } else {
                format!(
                    "{}\n{}\n{}",
                    without.human(),
                    with.human(),
                    report::compare_human(&with, &without)
                )
            }
        }
        _ => {
            let r = pubsub::run(&o)?;
            if o.json {
                serde_json::Value::Object(r.json()).to_string()
            } else {
                r.human()
            }
        }
    };
    println!("{}", out.trim_end());
    Ok(())
}
