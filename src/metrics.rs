//! Server-wide counters, as relaxed atomics, and their Prometheus text form.
//!
//! Nothing here takes a lock: the publish path adds to counters once per batch of messages.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// All counters and gauges of one server: `/metrics` shows them ([`Metrics::render`]). Read
/// one with `load(Ordering::Relaxed)`; counters only grow, gauges say how many now.
#[derive(Default, Debug)]
pub struct Metrics {
    /// Open line-protocol connections (gauge).
    pub tcp_connections: AtomicU64,
    /// Open WebSocket connections (gauge).
    pub ws_connections: AtomicU64,
    /// Connections accepted by either listener.
    pub connections_accepted: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Subscriptions held (gauge).
    pub subscriptions: AtomicU64,
    /// Messages published.
    pub messages_published: AtomicU64,
    /// Messages queued for a subscriber.
    pub deliveries: AtomicU64,
    /// Deliveries dropped because a subscriber's queue was full.
    pub drops: AtomicU64,
    /// Slow-consumer notices sent.
    pub slow_consumer_notices: AtomicU64,
    /// Failed admin authentications and refused WebSocket tokens or origins.
    pub auth_failures: AtomicU64,
    /// Addresses that used up their failure budget (see `brake.rs`), by what they guessed.
    pub auth_lockouts_admin: AtomicU64,
    /// Addresses that used up their failure budget guessing WebSocket tokens.
    pub auth_lockouts_websocket: AtomicU64,
    /// Attempts refused unchecked because their address was locked out.
    pub auth_refused_admin: AtomicU64,
    /// WebSocket upgrades refused unchecked because their address was locked out.
    pub auth_refused_websocket: AtomicU64,
    /// Line-protocol connections closed because a line began like HTTP.
    pub line_http_closed: AtomicU64,
    /// WebSocket subscriptions and connections revoked with their token's tags.
    pub revocations: AtomicU64,
    /// Clients given up because a write made no progress for `write_timeout`.
    pub write_timeouts: AtomicU64,
    /// `error` replies and WebSocket failure replies sent.
    pub errors_sent: AtomicU64,
    /// Times a publisher waited for a subscriber that was behind.
    pub pacing_waits: AtomicU64,
    /// Such waits that reached their deadline with the subscriber still behind.
    pub pacing_gave_up: AtomicU64,
}

/// Adds to a counter.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// Subtracts from a gauge.
#[inline]
pub fn sub(c: &AtomicU64, n: u64) {
    c.fetch_sub(n, Relaxed);
}

impl Metrics {
    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let g = |c: &AtomicU64| c.load(Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        metric(
            "mist_connections",
            "gauge",
            "Open client connections by transport.",
            &[
                ("{transport=\"tcp\"}", g(&self.tcp_connections)),
                ("{transport=\"websocket\"}", g(&self.ws_connections)),
            ],
        );
        metric(
            "mist_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            &[("", g(&self.connections_accepted))],
        );
        metric(
            "mist_connections_refused_total",
            "counter",
            "Client connections refused because max_connections was reached.",
            &[("", g(&self.connections_refused))],
        );
        metric(
            "mist_subscriptions",
            "gauge",
            "Subscriptions held by all clients.",
            &[("", g(&self.subscriptions))],
        );
        metric(
            "mist_messages_published_total",
            "counter",
            "Messages published.",
            &[("", g(&self.messages_published))],
        );
        metric(
            "mist_deliveries_total",
            "counter",
            "Messages handed to a subscriber's queue.",
            &[("", g(&self.deliveries))],
        );
        metric(
            "mist_drops_total",
            "counter",
            "Deliveries dropped because a subscriber's queue was full.",
            &[("", g(&self.drops))],
        );
        metric(
            "mist_slow_consumer_notices_total",
            "counter",
            "Slow-consumer notices sent.",
            &[("", g(&self.slow_consumer_notices))],
        );
        metric(
            "mist_auth_failures_total",
            "counter",
            "Refused WebSocket tokens and wrong admin tokens.",
            &[("", g(&self.auth_failures))],
        );
        metric(
            "mist_auth_lockouts_total",
            "counter",
            "Times an address used up its budget of failed attempts and was locked out.",
            &[
                ("{kind=\"admin\"}", g(&self.auth_lockouts_admin)),
                ("{kind=\"websocket\"}", g(&self.auth_lockouts_websocket)),
            ],
        );
        metric(
            "mist_auth_refused_total",
            "counter",
            "Attempts refused without being checked because their address was locked out.",
            &[
                ("{kind=\"admin\"}", g(&self.auth_refused_admin)),
                ("{kind=\"websocket\"}", g(&self.auth_refused_websocket)),
            ],
        );
        metric(
            "mist_line_http_closed_total",
            "counter",
            "Line-protocol connections closed because a line began like HTTP (a cross-protocol request).",
            &[("", g(&self.line_http_closed))],
        );
        metric(
            "mist_revocations_total",
            "counter",
            "WebSocket connections closed or subscriptions removed by token changes.",
            &[("", g(&self.revocations))],
        );
        metric(
            "mist_write_timeouts_total",
            "counter",
            "Connections closed because the peer stopped reading.",
            &[("", g(&self.write_timeouts))],
        );
        metric(
            "mist_pacing_waits_total",
            "counter",
            "Times a publisher waited for a subscriber that was behind but draining fast.",
            &[("", g(&self.pacing_waits))],
        );
        metric(
            "mist_pacing_gave_up_total",
            "counter",
            "Waits that ended at publisher_pacing with the subscriber still behind.",
            &[("", g(&self.pacing_gave_up))],
        );
        metric(
            "mist_errors_sent_total",
            "counter",
            "Error replies sent to clients.",
            &[("", g(&self.errors_sent))],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        add(&m.deliveries, 5);
        add(&m.tcp_connections, 2);
        sub(&m.tcp_connections, 1);
        let text = m.render();
        assert!(text.contains("# TYPE mist_deliveries_total counter\nmist_deliveries_total 5\n"));
        assert!(text.contains("mist_connections{transport=\"tcp\"} 1\n"));
        assert!(text.contains("mist_connections{transport=\"websocket\"} 0\n"));
    }
}
