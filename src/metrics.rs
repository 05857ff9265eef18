//! Server-wide counters, as relaxed atomics, and their Prometheus text form.
//!
//! Nothing here takes a lock: the publish path adds to counters once per batch of messages.

use crate::pool::Pool;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

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
    /// Connection and writer threads the system refused to start (see `capacity.rs`).
    pub thread_start_failures: AtomicU64,
    /// HTTP connections answered 429 because their address had all its request heads in
    /// progress (see `pending.rs`).
    pub http_heads_refused_address: AtomicU64,
    /// HTTP connections answered 503 because the server had all its request heads in progress.
    pub http_heads_refused_server: AtomicU64,
    /// Monitoring connections in service (gauge).
    pub monitor_connections: AtomicU64,
    /// Monitoring connections answered 429: their address had all its connections in service.
    pub monitor_refused_address: AtomicU64,
    /// Monitoring connections answered 503: the listener had all its connections in service.
    pub monitor_refused_server: AtomicU64,
    /// Subscriptions held (gauge).
    pub subscriptions: AtomicU64,
    /// Messages published.
    pub messages_published: AtomicU64,
    /// Messages queued for a subscriber.
    pub deliveries: AtomicU64,
    /// Deliveries dropped because a subscriber's queue was full, or all queues together were.
    pub drops: AtomicU64,
    /// Of `drops`, those for `queue_memory_limit`: refused while the client's own queue had
    /// room, or pushed out for a client holding less.
    pub drops_memory_limit: AtomicU64,
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
    /// This node's name (`node_name`), once the server has started.
    pub(crate) node_name: OnceLock<String>,
    /// The cluster bus's counters, when the node is part of a cluster.
    pub(crate) bus: OnceLock<Arc<BusMetrics>>,
    /// The bytes queued for all clients together, and their limit, shown as gauges.
    pub(crate) queue_pool: Arc<Pool>,
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
    /// The bytes of deliveries queued for all clients together now (`mist_queued_bytes`).
    pub fn queued_bytes(&self) -> usize {
        self.queue_pool.used()
    }

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
            "Client connections refused: max_connections was reached, or no thread could be started.",
            &[("", g(&self.connections_refused))],
        );
        metric(
            "mist_thread_start_failures_total",
            "counter",
            "Connection and writer threads the system refused to start (see vm.max_map_count).",
            &[("", g(&self.thread_start_failures))],
        );
        metric(
            "mist_http_heads_refused_total",
            "counter",
            "HTTP connections refused before their request was read: too many request heads in progress from their address (429) or in all (503).",
            &[
                ("{reason=\"address\"}", g(&self.http_heads_refused_address)),
                ("{reason=\"server\"}", g(&self.http_heads_refused_server)),
            ],
        );
        metric(
            "mist_monitor_connections",
            "gauge",
            "Monitoring connections in service.",
            &[("", g(&self.monitor_connections))],
        );
        metric(
            "mist_monitor_connections_refused_total",
            "counter",
            "Monitoring connections refused at once: too many in service from their address (429) or in all (503).",
            &[
                ("{reason=\"address\"}", g(&self.monitor_refused_address)),
                ("{reason=\"server\"}", g(&self.monitor_refused_server)),
            ],
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
            "Deliveries dropped because a subscriber's queue was full, or queue_memory_limit reached.",
            &[("", g(&self.drops))],
        );
        metric(
            "mist_drops_memory_limit_total",
            "counter",
            "Deliveries dropped because all queues together were at queue_memory_limit.",
            &[("", g(&self.drops_memory_limit))],
        );
        metric(
            "mist_queued_bytes",
            "gauge",
            "Bytes of deliveries waiting in all clients' queues (a shared batch counts once).",
            &[("", self.queue_pool.used() as u64)],
        );
        metric(
            "mist_queue_memory_limit_bytes",
            "gauge",
            "queue_memory_limit: the most bytes all clients' queues may hold together.",
            &[("", self.queue_pool.limit() as u64)],
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
            "mist_errors_sent_total",
            "counter",
            "Error replies sent to clients.",
            &[("", g(&self.errors_sent))],
        );
        if let Some(node) = self.node_name.get() {
            let cluster = self.bus.get().map_or("none", |b| b.engine);
            metric(
                "mist_node_info",
                "gauge",
                "This node: its node_name, and how it shares publishes with other nodes.",
                &[(&format!("{{node=\"{node}\",cluster=\"{cluster}\"}}"), 1)],
            );
        }
        if let Some(bus) = self.bus.get() {
            bus.render(&mut out);
        }
        out
    }
}

/// The bus's counters and gauges, shown in `/metrics`.
#[derive(Debug, Default)]
pub struct BusMetrics {
    pub node: String,
    pub engine: &'static str,
    /// 1 while the sending connection is up.
    pub send_up: AtomicU64,
    /// 1 while the listening connection is up.
    pub listen_up: AtomicU64,
    pub messages_sent: AtomicU64,
    pub payloads_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub units_sent: AtomicU64,
    /// Bus copies of local messages that never left: queue full, or the bus down.
    pub messages_dropped: AtomicU64,
    pub messages_received: AtomicU64,
    pub payloads_received: AtomicU64,
    /// Payloads of other nodes that never arrived.
    pub payloads_missed: AtomicU64,
    pub bad_records: AtomicU64,
    pub token_changes_sent: AtomicU64,
    pub token_changes_received: AtomicU64,
    /// Times the listening connection was lost.
    pub listen_lost: AtomicU64,
    /// Times the sending connection was lost.
    pub send_lost: AtomicU64,
    /// Bytes waiting for the sender thread.
    pub queued_bytes: AtomicUsize,
    /// The engine's queue usage (0 to 1), as `f64` bits.
    pub queue_usage: AtomicU64,
}

impl BusMetrics {
    /// Appends the bus's series to a Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let g = |c: &AtomicU64| c.load(Relaxed);
        let node = &self.node;
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{{node=\"{node}\"{labels}}} {v}");
            }
        };
        let one = |v: u64| [("", v.to_string())];
        metric(
            "mist_bus_up",
            "gauge",
            "1 while the bus connection is up, per direction.",
            &[
                (",link=\"send\"", g(&self.send_up).to_string()),
                (",link=\"listen\"", g(&self.listen_up).to_string()),
            ],
        );
        let counters: [(&str, &str, &AtomicU64); 13] = [
            (
                "mist_bus_messages_sent_total",
                "Messages published here and sent to the other nodes.",
                &self.messages_sent,
            ),
            (
                "mist_bus_messages_dropped_total",
                "Messages published here that did not go to the other nodes (bus queue full or bus down).",
                &self.messages_dropped,
            ),
            (
                "mist_bus_messages_received_total",
                "Messages received from the other nodes.",
                &self.messages_received,
            ),
            (
                "mist_bus_payloads_sent_total",
                "Payloads (NOTIFYs) sent.",
                &self.payloads_sent,
            ),
            (
                "mist_bus_payload_bytes_sent_total",
                "Bytes of payloads sent.",
                &self.bytes_sent,
            ),
            (
                "mist_bus_units_sent_total",
                "Units (transactions) sent.",
                &self.units_sent,
            ),
            (
                "mist_bus_payloads_received_total",
                "Payloads received from the other nodes.",
                &self.payloads_received,
            ),
            (
                "mist_bus_payloads_missed_total",
                "Payloads of other nodes that never arrived (this node was cut off, or their send failed).",
                &self.payloads_missed,
            ),
            (
                "mist_bus_bad_records_total",
                "Records received that could not be read or break this node's limits.",
                &self.bad_records,
            ),
            (
                "mist_bus_token_changes_sent_total",
                "Token changes sent to the other nodes.",
                &self.token_changes_sent,
            ),
            (
                "mist_bus_token_changes_received_total",
                "Token changes received from the other nodes.",
                &self.token_changes_received,
            ),
            (
                "mist_bus_listen_lost_total",
                "Times the listening connection was lost.",
                &self.listen_lost,
            ),
            (
                "mist_bus_send_lost_total",
                "Times the sending connection was lost.",
                &self.send_lost,
            ),
        ];
        for (name, help, c) in counters {
            metric(name, "counter", help, &one(g(c)));
        }
        metric(
            "mist_bus_queued_bytes",
            "gauge",
            "Bytes of messages waiting to be sent to the other nodes.",
            &[("", self.queued_bytes.load(Relaxed).to_string())],
        );
        metric(
            "mist_bus_queue_usage",
            "gauge",
            "How full the bus engine's queue is, 0 to 1: pg_notification_queue_usage() for PostgreSQL.",
            &[("", f64::from_bits(g(&self.queue_usage)).to_string())],
        );
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

    #[test]
    fn bus_metrics_carry_the_node() {
        let m = BusMetrics {
            node: "web01:1445".into(),
            ..BusMetrics::default()
        };
        add(&m.messages_sent, 3);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("mist_bus_messages_sent_total{node=\"web01:1445\"} 3\n"));
        assert!(out.contains("mist_bus_up{node=\"web01:1445\",link=\"listen\"} 0\n"));
        assert!(out.contains("mist_bus_queue_usage{node=\"web01:1445\"} 0\n"));
    }
}
