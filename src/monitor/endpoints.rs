//! What each path of the monitoring listener answers: routing, the query parameters (pure),
//! and the snapshots behind `/healthz`, `/varz`, `/connz`, `/subsz` and `/metrics`.
//!
//! Answers are snapshots taken without stalling publishers: the connection registry's mutex
//! is held only to copy its `Arc`s, the index's read lock (never its write lock) only to copy
//! counts, and each queue's lock only to copy its counters ([`Outbound::stats`]); the JSON is
//! built afterwards, holding nothing. No answer holds a token or message data.
//!
//! A page in a browser can reach a loopback port; to keep it from reading these answers through
//! a DNS name rebound to 127.0.0.1, a request from a loopback peer must name the server by IP
//! address or `localhost` in its `Host` header (403 otherwise).

use super::Identity;
use crate::context::Context;
use crate::health::Health;
use crate::http::Head;
use crate::outbound::{Outbound, QueueStats, Transport};
use crate::tags::TagSet;
use http::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Connections in a `/connz` answer unless `limit` says otherwise.
pub const CONNZ_LIMIT: usize = 1024;
/// Tag sets in a `/subsz` answer unless `limit` says otherwise.
pub const SUBSZ_LIMIT: usize = 100;
/// The largest `limit` accepted by `/connz` and `/subsz`.
pub const MAX_MONITOR_LIMIT: usize = 1_000_000;

/// What the answers are read from.
pub(super) struct Sources {
    pub ctx: Arc<Context>,
    pub identity: Identity,
    /// The monitoring listener's own address.
    pub monitor: SocketAddr,
    pub health: Arc<Health>,
    pub started: Instant,
}

/// A response before it is written.
#[derive(Debug)]
pub(super) struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    fn text(status: StatusCode, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    fn json(value: &Value) -> Answer {
        let mut body = value.to_string();
        body.push('\n');
        Answer {
            status: StatusCode::OK,
            content_type: "application/json",
            body,
        }
    }
}

/// The answer to a request head from `peer`.
pub(super) fn answer(src: &Sources, head: &Head, peer: SocketAddr) -> Answer {
    if !matches!(head.method.as_str(), "GET" | "HEAD") {
        return Answer::text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let host = head
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok());
    if peer.ip().to_canonical().is_loopback() && !host_allowed(host) {
        return Answer::text(
            StatusCode::FORBIDDEN,
            "name this server by IP address or localhost in the Host header\n",
        );
    }
    match route(src, &head.path, head.query.as_deref()) {
        Ok(a) => a,
        Err(BadRequest(reason)) => Answer::text(StatusCode::BAD_REQUEST, format!("{reason}\n")),
    }
}

/// A request whose parameters cannot be answered; the reason goes back with 400.
#[derive(Debug, PartialEq, Eq)]
struct BadRequest(String);

fn route(src: &Sources, path: &str, query: Option<&str>) -> Result<Answer, BadRequest> {
    Ok(match path {
        "/healthz" => {
            params(query, &[])?;
            healthz(src)
        }
        "/varz" => {
            params(query, &[])?;
            Answer::json(&varz(src))
        }
        "/connz" => Answer {
            status: StatusCode::OK,
            content_type: "application/json",
            body: connz(&src.ctx, &ConnzQuery::parse(query)?),
        },
        "/subsz" => {
            let limit = SubszQuery::parse(query)?.limit;
            Answer::json(&subsz(&src.ctx, limit))
        }
        "/metrics" => {
            params(query, &[])?;
            Answer {
                status: StatusCode::OK,
                content_type: "text/plain; version=0.0.4",
                body: src.ctx.metrics.render(),
            }
        }
        _ => Answer::text(
            StatusCode::NOT_FOUND,
            "not found: /healthz, /varz, /connz, /subsz and /metrics are served here\n",
        ),
    })
}

/// The `Host` rule against DNS rebinding: an IP address or `localhost`, with or without a
/// port. Pure.
fn host_allowed(host: Option<&str>) -> bool {
    let Some(host) = host.map(str::trim) else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<IpAddr>().is_ok(),
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// The query's `key=value` pairs; every key must be one of `allowed`, at most once. Pure.
fn params<'a>(
    query: Option<&'a str>,
    allowed: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, BadRequest> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&k) {
            let shown = crate::line::printable(k.as_bytes(), 40);
            return Err(BadRequest(if allowed.is_empty() {
                format!("unknown parameter '{shown}': this endpoint takes none")
            } else {
                format!(
                    "unknown parameter '{shown}': this endpoint takes {}",
                    allowed.join(", ")
                )
            }));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(BadRequest(format!("parameter '{k}' given twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn limit(value: &str) -> Result<usize, BadRequest> {
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_MONITOR_LIMIT).contains(&n) => Ok(n),
        _ => Err(BadRequest(format!(
            "limit must be a whole number from 1 to {MAX_MONITOR_LIMIT}, not '{}'",
            crate::line::printable(value.as_bytes(), 40)
        ))),
    }
}

/// The order of `/connz`: the largest first, or the oldest first for `age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnzSort {
    QueuedBytes,
    Dropped,
    Subscriptions,
    Age,
}

impl ConnzSort {
    /// Its name in the query.
    pub fn name(self) -> &'static str {
        match self {
            ConnzSort::QueuedBytes => "queued_bytes",
            ConnzSort::Dropped => "dropped",
            ConnzSort::Subscriptions => "subscriptions",
            ConnzSort::Age => "age",
        }
    }

    /// The sort of this name, if any.
    pub fn from_name(value: &str) -> Option<ConnzSort> {
        [
            ConnzSort::QueuedBytes,
            ConnzSort::Dropped,
            ConnzSort::Subscriptions,
            ConnzSort::Age,
        ]
        .into_iter()
        .find(|s| s.name() == value)
    }

    fn parse(value: &str) -> Result<ConnzSort, BadRequest> {
        ConnzSort::from_name(value).ok_or_else(|| {
            BadRequest(format!(
                "sort must be queued_bytes, dropped, subscriptions or age, not '{}'",
                crate::line::printable(value.as_bytes(), 40)
            ))
        })
    }
}

/// The parameters of `/connz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnzQuery {
    sort: ConnzSort,
    limit: usize,
    subs: bool,
}

impl ConnzQuery {
    fn parse(query: Option<&str>) -> Result<ConnzQuery, BadRequest> {
        let mut q = ConnzQuery {
            sort: ConnzSort::QueuedBytes,
            limit: CONNZ_LIMIT,
            subs: false,
        };
        for (k, v) in params(query, &["sort", "limit", "subs"])? {
            match k {
                "sort" => q.sort = ConnzSort::parse(v)?,
                "limit" => q.limit = limit(v)?,
                _ => {
                    q.subs = match v {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(BadRequest("subs must be 1 or 0".into())),
                    }
                }
            }
        }
        Ok(q)
    }
}

/// The parameters of `/subsz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SubszQuery {
    limit: usize,
}

impl SubszQuery {
    fn parse(query: Option<&str>) -> Result<SubszQuery, BadRequest> {
        let mut q = SubszQuery { limit: SUBSZ_LIMIT };
        for (_, v) in params(query, &["limit"])? {
            q.limit = limit(v)?;
        }
        Ok(q)
    }
}

fn healthz(src: &Sources) -> Answer {
    let ctx = &src.ctx;
    let mut problems = Vec::new();
    if ctx.shutting_down() {
        problems.push("shutting down".to_string());
    } else if ctx.conns.len() >= ctx.conns.max() {
        problems.push(format!(
            "not accepting clients: max_connections ({}) reached",
            ctx.conns.max()
        ));
    }
    problems.extend(src.health.problems());
    if problems.is_empty() {
        Answer::text(StatusCode::OK, "ok\n")
    } else {
        Answer::text(StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
}

/// One connection as `/connz` shows it, copied out of the registry, index and queue.
#[derive(Debug, Clone)]
struct Conn {
    id: u64,
    peer: SocketAddr,
    transport: Transport,
    since: SystemTime,
    subscriptions: usize,
    stats: QueueStats,
}

/// Every open connection, each copied out under its own short lock.
fn connections(ctx: &Context) -> Vec<Conn> {
    let open: Vec<(u64, Arc<Outbound>)> = ctx.conns.snapshot();
    let counts: HashMap<u64, usize> = ctx.broker.subscription_counts();
    open.into_iter()
        .map(|(id, out)| Conn {
            id,
            peer: out.peer(),
            transport: out.transport(),
            since: out.since(),
            subscriptions: counts.get(&id).copied().unwrap_or(0),
            stats: out.stats(),
        })
        .collect()
}

/// Sorts for `/connz`: largest first (oldest first for `age`), then by id. Pure.
fn sort_conns(conns: &mut [Conn], sort: ConnzSort) {
    conns.sort_unstable_by(|a, b| {
        let order = match sort {
            ConnzSort::QueuedBytes => b.stats.queued_bytes.cmp(&a.stats.queued_bytes),
            ConnzSort::Dropped => b.stats.dropped.cmp(&a.stats.dropped),
            ConnzSort::Subscriptions => b.subscriptions.cmp(&a.subscriptions),
            ConnzSort::Age => a.since.cmp(&b.since),
        };
        order.then(a.id.cmp(&b.id))
    });
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Tcp => "tcp",
        Transport::WebSocket => "websocket",
    }
}

/// The `/connz` answer. Written straight into a string rather than built as a `Value` tree:
/// with 10,000 connections that is most of the work, and it runs beside the publishers.
fn connz(ctx: &Context, q: &ConnzQuery) -> String {
    let now = SystemTime::now();
    let mut conns = connections(ctx);
    let total = conns.len();
    sort_conns(&mut conns, q.sort);
    conns.truncate(q.limit);
    let mut out = String::with_capacity(64 + conns.len() * 240);
    out.push_str("{\"connections\":[");
    for (i, c) in conns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let sets = q.subs.then(|| {
            let mut sets = ctx.broker.subscriptions(c.id);
            sets.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            sets
        });
        write_conn(&mut out, c, now, sets.as_deref());
    }
    let _ = writeln!(
        out,
        "],\"now\":\"{}\",\"shown\":{},\"sort\":\"{}\",\"total\":{total}}}",
        rfc3339(now),
        conns.len(),
        q.sort.name()
    );
    out
}

/// One connection of `/connz` as a JSON object, keys in alphabetical order.
fn write_conn(out: &mut String, c: &Conn, now: SystemTime, sets: Option<&[TagSet]>) {
    let s = &c.stats;
    let _ = write!(
        out,
        "{{\"age_seconds\":{},\"connected_since\":\"{}\",\"delivered\":{},\"dropped\":{},\
         \"id\":{},\"peer\":\"{}\",\"queued_bytes\":{},\"queued_messages\":{},",
        now.duration_since(c.since).unwrap_or_default().as_secs(),
        rfc3339(c.since),
        s.delivered,
        s.dropped,
        c.id,
        c.peer,
        s.queued_bytes,
        s.queued_msgs,
    );
    if let Some(sets) = sets {
        let sets: Vec<Value> = sets.iter().map(set_json).collect();
        let _ = write!(out, "\"subscription_sets\":{},", Value::from(sets));
    }
    let _ = write!(
        out,
        "\"subscriptions\":{},\"transport\":\"{}\",\"writer_running\":{}}}",
        c.subscriptions,
        transport_name(c.transport),
        s.writer_running
    );
}

fn set_json(set: &TagSet) -> Value {
    set.iter().map(|t| Value::from(t.to_string())).collect()
}

fn subsz(ctx: &Context, limit: usize) -> Value {
    let (top, distinct) = ctx.broker.top_sets(limit);
    let sets: Vec<Value> = top
        .iter()
        .map(|(set, n)| json!({"tags": set_json(set), "subscribers": n}))
        .collect();
    json!({
        "subscriptions": ctx.metrics.subscriptions.load(Ordering::Relaxed),
        "distinct_sets": distinct,
        "shown": sets.len(),
        "sets": sets,
    })
}

fn varz(src: &Sources) -> Value {
    let ctx = &src.ctx;
    let c = &ctx.config;
    let id = &src.identity;
    let (mut queued_msgs, mut queued_bytes) = (0u64, 0u64);
    for (_, out) in ctx.conns.snapshot() {
        let s = out.stats();
        queued_msgs += s.queued_msgs as u64;
        queued_bytes += s.queued_bytes as u64;
    }
    let counters = counters(&ctx.metrics.render());
    json!({
        "server": "mist",
        "version": env!("CARGO_PKG_VERSION"),
        "node_name": id.node_name,
        "start": rfc3339(id.started),
        "uptime_seconds": src.started.elapsed().as_secs(),
        "listen": {
            "tcp": id.tcp.to_string(),
            "http": id.http.to_string(),
            "monitor": src.monitor.to_string(),
        },
        "limits": {
            "max_connections": c.max_connections,
            "max_subscriptions": c.max_subscriptions,
            "client_queue": c.client_queue,
            "client_queue_bytes": c.client_queue_bytes,
            "max_line_bytes": c.max_line_bytes,
            "max_tags": c.max_tags,
            "write_timeout": c.write_timeout,
            "publisher_pacing": c.publisher_pacing,
        },
        "auth_store": format!("{:?}", c.auth_store).to_lowercase(),
        "connections": ctx.conns.len(),
        "subscriptions": ctx.metrics.subscriptions.load(Ordering::Relaxed),
        "queued_messages": queued_msgs,
        "queued_bytes": queued_bytes,
        "queue_memory_limit": ctx.queue_memory.pool.limit(),
        "counters": counters,
    })
}

/// Every sample of Prometheus text as a JSON field: `mist_drops_total 3` is `"drops_total": 3`,
/// `mist_connections{transport="tcp"} 2` is `"connections_tcp": 2`. Pure; so `/varz` carries
/// whatever `/metrics` carries.
fn counters(prometheus: &str) -> Value {
    let mut out = serde_json::Map::new();
    for line in prometheus.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        let series = series.strip_prefix("mist_").unwrap_or(series);
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut key = name.to_string();
                for label in labels.trim_end_matches('}').split(',') {
                    if let Some((_, v)) = label.split_once('=') {
                        let _ = write!(key, "_{}", v.trim_matches('"'));
                    }
                }
                key
            }
            None => series.to_string(),
        };
        out.insert(key, value.into());
    }
    Value::Object(out)
}

/// A time as RFC 3339 in UTC with milliseconds: `2026-11-27T09:15:02.113Z`. Pure.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Year, month and day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn query_parameters() {
        let q = ConnzQuery::parse(None).unwrap();
        assert_eq!(
            (q.sort, q.limit, q.subs),
            (ConnzSort::QueuedBytes, CONNZ_LIMIT, false)
        );
        let q = ConnzQuery::parse(Some("sort=age&limit=5&subs=1")).unwrap();
        assert_eq!((q.sort, q.limit, q.subs), (ConnzSort::Age, 5, true));
        for (query, reason) in [
            (
                "sort=name",
                "sort must be queued_bytes, dropped, subscriptions or age, not 'name'",
            ),
            (
                "limit=0",
                "limit must be a whole number from 1 to 1000000, not '0'",
            ),
            (
                "limit=-1",
                "limit must be a whole number from 1 to 1000000, not '-1'",
            ),
            (
                "limit=",
                "limit must be a whole number from 1 to 1000000, not ''",
            ),
            ("limit=1&limit=2", "parameter 'limit' given twice"),
            ("subs=yes", "subs must be 1 or 0"),
            (
                "token=x",
                "unknown parameter 'token': this endpoint takes sort, limit, subs",
            ),
        ] {
            assert_eq!(
                ConnzQuery::parse(Some(query)),
                Err(BadRequest(reason.into())),
                "{query}"
            );
        }
        assert_eq!(SubszQuery::parse(Some("limit=3")).unwrap().limit, 3);
        assert_eq!(
            params(Some("x=1"), &[]),
            Err(BadRequest(
                "unknown parameter 'x': this endpoint takes none".into()
            ))
        );
        assert_eq!(params(Some("&&"), &[]), Ok(vec![]));
    }

    #[test]
    fn hosts_against_dns_rebinding() {
        for ok in [
            "127.0.0.1:9445",
            "127.0.0.1",
            "localhost:9445",
            "LOCALHOST",
            "[::1]:9445",
            "[::1]",
            "10.1.2.3:80",
        ] {
            assert!(host_allowed(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.example:9445",
            "evil.example",
            "localhost.evil.example",
            "[evil]:1",
            "",
        ] {
            assert!(!host_allowed(Some(bad)), "{bad}");
        }
        assert!(!host_allowed(None));
    }

    fn conn(id: u64, bytes: usize, dropped: u64, subs: usize, since_s: u64) -> Conn {
        Conn {
            id,
            peer: "127.0.0.1:1".parse().unwrap(),
            transport: Transport::Tcp,
            since: UNIX_EPOCH + Duration::from_secs(since_s),
            subscriptions: subs,
            stats: QueueStats {
                queued_msgs: 0,
                queued_bytes: bytes,
                delivered: 0,
                dropped,
                writer_running: false,
            },
        }
    }

    #[test]
    fn sorting() {
        let mut c = vec![
            conn(1, 10, 0, 3, 30),
            conn(2, 30, 5, 1, 10),
            conn(3, 20, 5, 2, 20),
            conn(4, 30, 0, 0, 40),
        ];
        let ids = |c: &[Conn]| c.iter().map(|c| c.id).collect::<Vec<_>>();
        sort_conns(&mut c, ConnzSort::QueuedBytes);
        assert_eq!(ids(&c), [2, 4, 3, 1]);
        sort_conns(&mut c, ConnzSort::Dropped);
        assert_eq!(ids(&c), [2, 3, 1, 4]);
        sort_conns(&mut c, ConnzSort::Subscriptions);
        assert_eq!(ids(&c), [1, 3, 2, 4]);
        sort_conns(&mut c, ConnzSort::Age);
        assert_eq!(ids(&c), [2, 3, 1, 4]);
    }

    #[test]
    fn a_connection_as_json() {
        let c = conn(7, 100, 2, 1, 1_000);
        let mut v = String::new();
        write_conn(&mut v, &c, UNIX_EPOCH + Duration::from_secs(1_060), None);
        assert_eq!(
            v,
            r#"{"age_seconds":60,"connected_since":"1970-01-01T00:16:40.000Z","delivered":0,"dropped":2,"id":7,"peer":"127.0.0.1:1","queued_bytes":100,"queued_messages":0,"subscriptions":1,"transport":"tcp","writer_running":false}"#
        );
    }

    #[test]
    fn subscription_sets_are_escaped() {
        let c = conn(1, 0, 0, 1, 0);
        let mut v = String::new();
        let sets = [TagSet::parse(br#"a"b,c\d"#, 32).unwrap()];
        write_conn(&mut v, &c, UNIX_EPOCH, Some(&sets));
        let parsed: Value = serde_json::from_str(&v).unwrap();
        assert_eq!(parsed["subscription_sets"], json!([["a\"b", "c\\d"]]));
    }

    #[test]
    fn prometheus_text_as_counters() {
        let text = "# HELP mist_drops_total x\n# TYPE mist_drops_total counter\n\
                    mist_drops_total 3\nmist_connections{transport=\"tcp\"} 2\n\
                    mist_connections{transport=\"websocket\"} 1\n";
        assert_eq!(
            counters(text).to_string(),
            r#"{"connections_tcp":2,"connections_websocket":1,"drops_total":3}"#
        );
        // Every real series comes through.
        let real = counters(&crate::metrics::Metrics::default().render());
        assert!(real["deliveries_total"] == 0 && real["connections_tcp"] == 0);
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_770_902_113);
        assert_eq!(rfc3339(t), "2026-11-27T09:15:02.113Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
