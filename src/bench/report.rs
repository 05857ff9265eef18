//! What a run measured, as one JSON object (`--json`) or as a compact table for people.

use super::hist::Hist;
use super::sys::Memory;
use serde_json::{Map, Value, json};
use std::fmt::Write as _;

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

impl Latency {
    /// From a histogram of nanoseconds.
    pub fn of(h: &Hist) -> Latency {
        let us = |ns: u64| ns as f64 / 1e3;
        Latency {
            p50: us(h.percentile(50.0)),
            p90: us(h.percentile(90.0)),
            p99: us(h.percentile(99.0)),
            p999: us(h.percentile(99.9)),
            max: us(h.max()),
            mean: h.mean() / 1e3,
            count: h.count(),
        }
    }

    fn json(&self) -> Value {
        if self.count == 0 {
            return Value::Null;
        }
        json!({
            "p50": round(self.p50, 1), "p90": round(self.p90, 1), "p99": round(self.p99, 1),
            "p999": round(self.p999, 1), "max": round(self.max, 1), "mean": round(self.mean, 1),
        })
    }

    fn human(&self) -> String {
        if self.count == 0 {
            return "none measured".into();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}",
            micros(self.p50),
            micros(self.p90),
            micros(self.p99),
            micros(self.p999),
            micros(self.max),
            micros(self.mean)
        )
    }
}

/// The server's cost, when `--server-pid` was given.
#[derive(Clone, Copy, Debug, Default)]
pub struct Server {
    /// CPU seconds from the start of the measurement to its end.
    pub cpu_secs: Option<f64>,
    /// Before the benchmark connected anything.
    pub base: Option<Memory>,
    /// Once every connection was open and subscribed.
    pub setup: Option<Memory>,
    /// At the end, with every connection still open.
    pub end: Option<Memory>,
    /// The connections opened between `base` and `setup`.
    pub conns: usize,
    /// The idle subscriptions made between `base` and `setup` (index).
    pub noise_subs: usize,
}

impl Server {
    /// The memory the set-up added, in KiB; `None` when the server shrank meanwhile (it was
    /// still freeing an earlier run's connections: measure on a fresh server).
    fn grown_kb(&self) -> Option<f64> {
        let (base, setup) = (self.base?, self.setup?);
        (setup.rss_kb >= base.rss_kb).then(|| (setup.rss_kb - base.rss_kb) as f64)
    }

    /// Memory per connection, when there were no idle subscriptions to blur it.
    fn per_conn_kb(&self) -> Option<f64> {
        let grown = self.grown_kb()?;
        (self.conns > 0 && self.noise_subs == 0).then(|| grown / self.conns as f64)
    }

    /// Memory per idle subscription (connections included), in bytes.
    fn per_noise_sub_bytes(&self) -> Option<f64> {
        let grown = self.grown_kb()?;
        (self.noise_subs > 0).then(|| grown * 1024.0 / self.noise_subs as f64)
    }

    /// Server CPU microseconds per delivery.
    pub fn cpu_us_per(&self, deliveries: u64) -> Option<f64> {
        self.cpu_secs
            .filter(|_| deliveries > 0)
            .map(|c| c * 1e6 / deliveries as f64)
    }

    fn add_json(&self, o: &mut Map<String, Value>, deliveries: Option<u64>) {
        o.insert(
            "server_cpu_secs".into(),
            opt(self.cpu_secs.map(|c| round(c, 2))),
        );
        if let Some(d) = deliveries {
            let per = self.cpu_us_per(d);
            o.insert(
                "server_cpu_us_per_delivery".into(),
                opt(per.map(|p| round(p, 3))),
            );
        }
        o.insert(
            "server_rss_base_kb".into(),
            opt(self.base.map(|m| m.rss_kb)),
        );
        o.insert(
            "server_rss_setup_kb".into(),
            opt(self.setup.map(|m| m.rss_kb)),
        );
        o.insert("server_rss_kb".into(), opt(self.end.map(|m| m.rss_kb)));
        o.insert("server_hwm_kb".into(), opt(self.end.map(|m| m.hwm_kb)));
        o.insert(
            "server_rss_per_conn_kb".into(),
            opt(self.per_conn_kb().map(|k| round(k, 2))),
        );
        if self.noise_subs > 0 {
            let per = self.per_noise_sub_bytes().map(|b| round(b, 0));
            o.insert("server_rss_per_noise_sub_bytes".into(), opt(per));
        }
    }

    fn add_rows(&self, rows: &mut Vec<(String, String)>, deliveries: Option<u64>) {
        if let Some(cpu) = self.cpu_secs {
            let mut s = format!("{cpu:.2} s");
            if let Some(per) = deliveries.and_then(|d| self.cpu_us_per(d)) {
                let _ = write!(s, ", {per:.3} µs per delivery");
            }
            rows.push(("server cpu".into(), s));
        }
        if let (Some(base), Some(setup), Some(end)) = (self.base, self.setup, self.end) {
            let mut s = format!(
                "{} KiB at the end (before {}, set up {}, peak {})",
                group(end.rss_kb),
                group(base.rss_kb),
                group(setup.rss_kb),
                group(end.hwm_kb)
            );
            if let Some(per) = self.per_conn_kb() {
                let _ = write!(s, "; {per:.1} KiB per connection");
            }
            if let Some(per) = self.per_noise_sub_bytes() {
                let _ = write!(s, "; {per:.0} B per noise subscription");
            }
            rows.push(("server rss".into(), s));
        }
    }
}

/// The parameters of a run, as resolved from the flags and the scenario's defaults.
#[derive(Clone, Debug)]
pub struct Params {
    pub scenario: &'static str,
    pub transport: &'static str,
    pub subs: usize,
    pub pubs: usize,
    pub msgs: u64,
    pub size: usize,
    pub rate: f64,
    pub topic: String,
    pub sub_tags: String,
    pub noise_subs: usize,
    pub noise_conns: usize,
    pub sub_threads: usize,
    /// Where publishers connected, when not where subscribers did (`--pub-addr`).
    pub pub_addr: Option<String>,
    /// How the publishers write: `raw` (lines written by the benchmark) or `client`
    /// (`mist::Client`).
    pub publisher: &'static str,
}

/// The outcome of a publish/subscribe run.
#[derive(Clone, Debug)]
pub struct PubSub {
    pub params: Params,
    pub published: u64,
    pub publish_secs: f64,
    pub expected: u64,
    pub delivered: u64,
    pub delivery_secs: f64,
    pub seq_gaps: u64,
    pub out_of_order: u64,
    pub errors: u64,
    pub dropped_notified: u64,
    pub bad_payloads: u64,
    pub subs_closed: usize,
    pub publisher_failures: usize,
    pub latency: Latency,
    pub setup_secs: f64,
    pub client_cpu_secs: f64,
    pub server: Server,
    pub end: &'static str,
    pub run_secs: f64,
    /// Subscribers that never read, not counted in the figures above.
    pub stalled: usize,
    /// How many of them were told of losses once read, and of how many losses.
    pub stalled_told: (usize, u64),
    /// From the first publish to the `pong` that answered the last publisher's final `ping`:
    /// how long the server took to take every message. `None` when a pong was missing.
    pub pong_secs: Option<f64>,
    /// Subscribers that read slowly (`--slow`), not counted in the figures above: what they
    /// were owed, received, and were told they lost.
    pub slow: usize,
    pub slow_expected: u64,
    pub slow_delivered: u64,
    pub slow_told: u64,
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

impl PubSub {
    pub fn delivery_rate(&self) -> f64 {
        rate(self.delivered, self.delivery_secs)
    }

    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }

    /// The JSON object (see `mist bench --help` and the README for the fields).
    pub fn json(&self) -> Map<String, Value> {
        let p = &self.params;
        let mut o = Map::new();
        let mut put = |k: &str, v: Value| {
            o.insert(k.into(), v);
        };
        put("scenario", json!(p.scenario));
        put("transport", json!(p.transport));
        put("subs", json!(p.subs));
        put("pubs", json!(p.pubs));
        put("msgs_per_pub", json!(p.msgs));
        put("size", json!(p.size));
        put("rate", json!(p.rate));
        put("topic", json!(p.topic));
        put("sub_tags", json!(p.sub_tags));
        put("noise_subs", json!(p.noise_subs));
        put("noise_conns", json!(p.noise_conns));
        put("sub_threads", json!(p.sub_threads));
        put("pub_addr", json!(p.pub_addr));
        put("publisher", json!(p.publisher));
        put("published", json!(self.published));
        put("publish_secs", json!(round(self.publish_secs, 4)));
        put(
            "publish_rate",
            json!(round(rate(self.published, self.publish_secs), 0)),
        );
        put("expected_deliveries", json!(self.expected));
        put("delivered", json!(self.delivered));
        put("delivery_secs", json!(round(self.delivery_secs, 4)));
        put("delivery_rate", json!(round(self.delivery_rate(), 0)));
        put("lost", json!(self.lost()));
        put("seq_gaps", json!(self.seq_gaps));
        put("out_of_order", json!(self.out_of_order));
        put("errors", json!(self.errors));
        put("dropped_notified", json!(self.dropped_notified));
        put("bad_payloads", json!(self.bad_payloads));
        put("subs_closed", json!(self.subs_closed));
        put("publisher_failures", json!(self.publisher_failures));
        put("stalled", json!(self.stalled));
        put("stalled_told", json!(self.stalled_told.0));
        put("stalled_dropped_told", json!(self.stalled_told.1));
        put("pong_secs", opt(self.pong_secs.map(|s| round(s, 4))));
        put("slow", json!(self.slow));
        put("slow_expected", json!(self.slow_expected));
        put("slow_delivered", json!(self.slow_delivered));
        put("slow_dropped_told", json!(self.slow_told));
        put("end", json!(self.end));
        put("run_secs", json!(round(self.run_secs, 3)));
        put("setup_secs", json!(round(self.setup_secs, 3)));
        put("latency_us", self.latency.json());
        put("client_cpu_secs", json!(round(self.client_cpu_secs, 2)));
        self.server.add_json(&mut o, Some(self.delivered));
        o
    }

    /// The table for people.
    pub fn human(&self) -> String {
        let p = &self.params;
        let pace = if p.rate > 0.0 {
            format!("{} msg/s per publisher", group(p.rate as u64))
        } else {
            "as fast as possible".into()
        };
        let mut title = format!(
            "mist bench {} over {}: {} sub{} ({}), {} pub{} × {} msgs of {} B, {pace}",
            p.scenario,
            p.transport,
            group(p.subs as u64),
            if p.subs == 1 { "" } else { "s" },
            p.sub_tags,
            p.pubs,
            if p.pubs == 1 { "" } else { "s" },
            group(p.msgs),
            p.size,
        );
        if let Some(addr) = &p.pub_addr {
            let _ = write!(title, ", publishers on {addr}");
        }
        if p.noise_subs > 0 {
            let _ = write!(
                title,
                ", {} noise subscriptions on {} connections",
                group(p.noise_subs as u64),
                p.noise_conns
            );
        }
        if p.publisher == "client" {
            title.push_str(", publishing through mist::Client");
        }
        let mut rows = vec![
            (
                "published".to_string(),
                format!(
                    "{} msgs in {:.3} s = {} msg/s",
                    group(self.published),
                    self.publish_secs,
                    group(rate(self.published, self.publish_secs) as u64)
                ),
            ),
            (
                "publisher pong".into(),
                self.pong_secs.map_or_else(
                    || "missing".into(),
                    |s| format!("{s:.3} s after the first publish"),
                ),
            ),
            (
                "delivered".into(),
                format!(
                    "{} of {} in {:.3} s = {} msg/s",
                    group(self.delivered),
                    group(self.expected),
                    self.delivery_secs,
                    group(self.delivery_rate() as u64)
                ),
            ),
            (
                "lost".into(),
                format!(
                    "{}  (sequence gaps {}, out of order {}, errors {}, dropped-notified {})",
                    group(self.lost()),
                    group(self.seq_gaps),
                    group(self.out_of_order),
                    group(self.errors),
                    group(self.dropped_notified)
                ),
            ),
            ("latency µs".into(), self.latency.human()),
            (
                "stalled".into(),
                if self.stalled == 0 {
                    "none".into()
                } else {
                    format!(
                        "{} subscribers that never read; {} told of {} dropped messages",
                        self.stalled,
                        self.stalled_told.0,
                        group(self.stalled_told.1)
                    )
                },
            ),
        ];
        if self.slow > 0 {
            rows.push((
                "slow".into(),
                format!(
                    "{} subscribers reading slowly; received {} of {}, told of {} dropped",
                    self.slow,
                    group(self.slow_delivered),
                    group(self.slow_expected),
                    group(self.slow_told)
                ),
            ));
        }
        rows.push((
            "client cpu".into(),
            format!("{:.2} s", self.client_cpu_secs),
        ));
        self.server.add_rows(&mut rows, Some(self.delivered));
        let mut end = format!(
            "{} after {:.2} s (set-up {:.2} s)",
            self.end, self.run_secs, self.setup_secs
        );
        if self.subs_closed > 0 {
            let _ = write!(
                end,
                "; {} subscribers closed by the server",
                self.subs_closed
            );
        }
        if self.publisher_failures > 0 {
            let _ = write!(end, "; {} publishers failed", self.publisher_failures);
        }
        if self.bad_payloads > 0 {
            let _ = write!(end, "; {} foreign payloads", self.bad_payloads);
        }
        rows.push(("end".into(), end));
        table(&title, &rows)
    }
}

/// The outcome of the connect scenario.
#[derive(Clone, Debug)]
pub struct Connect {
    pub conns: usize,
    pub threads: usize,
    pub connected: usize,
    pub failed: usize,
    pub first_failure: Option<String>,
    pub connect_secs: f64,
    /// The whole handshake: TCP connect, upgrade request, `101`.
    pub latency: Latency,
    /// The TCP connect alone.
    pub tcp_connect: Latency,
    pub setup_secs: f64,
    pub client_cpu_secs: f64,
    pub server: Server,
    pub end: &'static str,
}

impl Connect {
    pub fn json(&self) -> Map<String, Value> {
        let mut o = Map::new();
        let mut put = |k: &str, v: Value| {
            o.insert(k.into(), v);
        };
        put("scenario", json!("connect"));
        put("transport", json!("ws"));
        put("conns", json!(self.conns));
        put("threads", json!(self.threads));
        put("connected", json!(self.connected));
        put("failed", json!(self.failed));
        put("first_failure", json!(self.first_failure));
        put("connect_secs", json!(round(self.connect_secs, 4)));
        put(
            "connects_per_sec",
            json!(round(rate(self.connected as u64, self.connect_secs), 0)),
        );
        put("end", json!(self.end));
        put("setup_secs", json!(round(self.setup_secs, 3)));
        put("latency_us", self.latency.json());
        put("tcp_connect_us", self.tcp_connect.json());
        put("client_cpu_secs", json!(round(self.client_cpu_secs, 2)));
        self.server.add_json(&mut o, None);
        o
    }

    pub fn human(&self) -> String {
        let title = format!(
            "mist bench connect: {} WebSocket connections from {} threads, kept open",
            group(self.conns as u64),
            self.threads
        );
        let mut failed = group(self.failed as u64);
        if let Some(f) = &self.first_failure {
            let _ = write!(failed, "  (first: {f})");
        }
        let mut rows = vec![
            (
                "connected".to_string(),
                format!(
                    "{} in {:.3} s = {} connects/s",
                    group(self.connected as u64),
                    self.connect_secs,
                    group(rate(self.connected as u64, self.connect_secs) as u64)
                ),
            ),
            ("failed".into(), failed),
            ("tcp connect µs".into(), self.tcp_connect.human()),
            ("handshake µs".into(), self.latency.human()),
            (
                "client cpu".into(),
                format!("{:.2} s", self.client_cpu_secs),
            ),
        ];
        self.server.add_rows(&mut rows, None);
        rows.push((
            "end".into(),
            format!("{} (set-up {:.2} s)", self.end, self.setup_secs),
        ));
        table(&title, &rows)
    }
}

/// The index scenario with `--compare`: the same fan-out without noise, then with it.
pub fn compare_json(with: &PubSub, without: &PubSub) -> Map<String, Value> {
    let mut o = with.json();
    o.insert("baseline".into(), Value::Object(without.json()));
    o.insert(
        "noise_ratio".into(),
        opt(noise_ratio(with, without).map(|r| round(r, 3))),
    );
    o.insert(
        "noise_cpu_ratio".into(),
        opt(noise_cpu_ratio(with, without).map(|r| round(r, 3))),
    );
    o
}

/// The last lines of `--compare`'s table.
pub fn compare_human(with: &PubSub, without: &PubSub) -> String {
    let ratio = |r: Option<f64>| r.map_or_else(|| "unknown".into(), |r| format!("{r:.3}"));
    let mut s = format!(
        "noise ratio      {}  (delivery rate with {} noise subscriptions / without)\n",
        ratio(noise_ratio(with, without)),
        group(with.params.noise_subs as u64)
    );
    if let Some(r) = noise_cpu_ratio(with, without) {
        let _ = writeln!(
            s,
            "noise cpu ratio  {r:.3}  (server CPU per delivery with noise / without)"
        );
    }
    s
}

/// A run with stalled subscribers and `--compare`: the same run without them, then with.
pub fn stall_json(with: &PubSub, without: &PubSub) -> Map<String, Value> {
    let mut o = with.json();
    o.insert("baseline".into(), Value::Object(without.json()));
    let (publish, delivery) = stall_ratios(with, without);
    o.insert(
        "stall_publish_ratio".into(),
        opt(publish.map(|r| round(r, 3))),
    );
    o.insert(
        "stall_delivery_ratio".into(),
        opt(delivery.map(|r| round(r, 3))),
    );
    o
}

/// The last lines of `--compare --stalled`'s table.
pub fn stall_human(with: &PubSub, without: &PubSub) -> String {
    let ratio = |r: Option<f64>| r.map_or_else(|| "unknown".into(), |r| format!("{r:.3}"));
    let (publish, delivery) = stall_ratios(with, without);
    format!(
        "stall ratios     publish rate {}, delivery rate to the others {}  (with {} stalled / without)\n",
        ratio(publish),
        ratio(delivery),
        with.stalled
    )
}

/// Publish rate and delivery rate (to the subscribers that read) with stalled subscribers over
/// those without.
pub fn stall_ratios(with: &PubSub, without: &PubSub) -> (Option<f64>, Option<f64>) {
    let publish = |r: &PubSub| rate(r.published, r.publish_secs);
    let p = (publish(without) > 0.0).then(|| publish(with) / publish(without));
    let d = (without.delivery_rate() > 0.0).then(|| with.delivery_rate() / without.delivery_rate());
    (p, d)
}

/// Delivery rate with noise over the rate without.
pub fn noise_ratio(with: &PubSub, without: &PubSub) -> Option<f64> {
    let base = without.delivery_rate();
    (base > 0.0).then(|| with.delivery_rate() / base)
}

/// Server CPU per delivery with noise over that without: steadier than the rates when
/// client and server share few CPUs. Only when both runs took enough CPU time to measure
/// (it is counted in 10 ms ticks).
pub fn noise_cpu_ratio(with: &PubSub, without: &PubSub) -> Option<f64> {
    const MEASURABLE: f64 = 0.1;
    if with.server.cpu_secs? < MEASURABLE || without.server.cpu_secs? < MEASURABLE {
        return None;
    }
    let base = without.server.cpu_us_per(without.delivered)?;
    let noisy = with.server.cpu_us_per(with.delivered)?;
    (base > 0.0).then(|| noisy / base)
}

fn table(title: &str, rows: &[(String, String)]) -> String {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut s = format!("{title}\n");
    for (k, v) in rows {
        let pad = width - k.chars().count();
        let _ = writeln!(s, "  {k}{:pad$}  {v}", "");
    }
    s
}

fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map_or(Value::Null, Into::into)
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// Microseconds with as many decimals as are meaningful.
fn micros(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.2}")
    } else if us < 1000.0 {
        format!("{us:.1}")
    } else {
        group(us.round() as u64)
    }
}

/// `1234567` as `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }

    #[test]
    fn tables_align() {
        let t = table(
            "t",
            &[("a".into(), "1".into()), ("long name".into(), "2".into())],
        );
        assert_eq!(t, "t\n  a          1\n  long name  2\n");
    }

    #[test]
    fn micros_formats() {
        assert_eq!(micros(1.234), "1.23");
        assert_eq!(micros(123.45), "123.5");
        assert_eq!(micros(12_345.6), "12,346");
    }
}
