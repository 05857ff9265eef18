//! The monitoring listener (`monitor_listen_address`, default `127.0.0.1:9445`): plain HTTP
//! for operators, served by `tiny_http`.
//!
//! | path | answer |
//! | --- | --- |
//! | `/healthz` | `200 ok`, or `503` with the reasons: shutting down, full, a backend down |
//! | `/varz` | identity, listen addresses, limits, totals and every counter of `/metrics` |
//! | `/connz?sort=queued_bytes\|dropped\|subscriptions\|age&limit=N&subs=1` | one object per connection |
//! | `/subsz?limit=N` | the tag sets with the most subscribers |
//! | `/metrics` | the Prometheus text of the HTTP port |
//!
//! Answers are snapshots taken without stalling publishers: the connection registry's mutex
//! is held only to copy its `Arc`s, the index's read lock (never its write lock) only to copy
//! counts, and each queue's lock only to copy its counters ([`Outbound::stats`]); the JSON is
//! built afterwards, holding nothing. No answer holds a token or message data.
//!
//! # Threads
//!
//! The listener never takes a client's slot or thread: `tiny_http` reads each monitoring
//! connection on a thread of its own pool (separate from `max_connections`), and
//! [`WORKERS`] threads of ours build and write the answers. The listening socket carries a
//! write timeout ([`IO_TIMEOUT`]) and TCP keepalive, which every accepted connection inherits:
//! a client that stops reading its answer frees the worker after that long, and a peer that
//! vanished is noticed. A read timeout cannot be given the same way: on the listening socket
//! it also bounds `accept`, and tiny_http stops listening at its first accept error. So a
//! connection that sends nothing keeps its tiny_http thread until it closes (see
//! ARCHITECTURE.md).
//!
//! A page in a browser can reach a loopback port; to keep it from reading these answers through
//! a DNS name rebound to 127.0.0.1, a request from a loopback peer must name the server by IP
//! address or `localhost` in its `Host` header (403 otherwise).

use crate::context::Context;
use crate::health::Health;
use crate::outbound::{Outbound, QueueStats, Transport};
use crate::tags::TagSet;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Threads that answer monitoring requests.
pub const WORKERS: usize = 2;
/// How long writing an answer may make no progress before the connection is given up.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in a `/connz` answer unless `limit` says otherwise.
pub const CONNZ_LIMIT: usize = 1024;
/// Tag sets in a `/subsz` answer unless `limit` says otherwise.
pub const SUBSZ_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1_000_000;

/// What `/varz` tells about the server besides its state.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node_name: String,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    pub started: SystemTime,
}

/// A running monitoring listener.
pub struct Monitor {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    health: Arc<Health>,
}

/// Everything a worker needs.
struct Shared {
    ctx: Arc<Context>,
    identity: Identity,
    monitor: SocketAddr,
    health: Arc<Health>,
    started: Instant,
}

impl Monitor {
    /// Serves the monitoring endpoints on `listener` (already bound).
    ///
    /// # Errors
    /// The listener's options cannot be set.
    pub fn start(
        listener: TcpListener,
        ctx: Arc<Context>,
        identity: Identity,
        health: Health,
    ) -> io::Result<Monitor> {
        let addr = listener.local_addr()?;
        // Accepted sockets inherit these (Linux copies them from the listening socket).
        let sock = socket2::SockRef::from(&listener);
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(crate::net::KEEPALIVE_TIME)
                .with_interval(crate::net::KEEPALIVE_INTERVAL)
                .with_retries(crate::net::KEEPALIVE_RETRIES),
        )?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map(Arc::new)
            .map_err(io::Error::other)?;
        let health = Arc::new(health);
        let shared = Arc::new(Shared {
            ctx,
            identity,
            monitor: addr,
            health: Arc::clone(&health),
            started: Instant::now(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..WORKERS)
            .map(|_| {
                let (server, shared, stop) =
                    (Arc::clone(&server), Arc::clone(&shared), Arc::clone(&stop));
                thread::Builder::new()
                    .name("mist-monitor".into())
                    .spawn(move || work(&server, &shared, &stop))
                    .expect("cannot start a monitoring thread")
            })
            .collect();
        Ok(Monitor {
            server,
            addr,
            stop,
            workers,
            health,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops answering and waits for the workers and the health thread.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        for _ in &self.workers {
            self.server.unblock();
        }
        for w in self.workers {
            let _ = w.join();
        }
        self.health.shutdown();
        // Dropping the last handle stops tiny_http's accept thread.
    }
}

fn work(server: &tiny_http::Server, shared: &Shared, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let Ok(request) = server.recv() else { continue };
        let answer = answer(shared, &request);
        // The length is known: always Content-Length, never chunked (which tiny_http would
        // pick past 32 KiB), so the simplest client can read a large /connz.
        let mut response = tiny_http::Response::from_string(answer.body)
            .with_chunked_threshold(usize::MAX)
            .with_status_code(answer.status)
            .with_header(header("Content-Type", answer.content_type))
            .with_header(header("Cache-Control", "no-store"));
        if answer.status == 405 {
            response = response.with_header(header("Allow", "GET, HEAD"));
        }
        if let Err(e) = request.respond(response) {
            log::debug!("monitoring: cannot answer: {e}");
        }
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

/// A response before it is written.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn text(status: u16, body: impl Into<String>) -> Answer {
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
            status: 200,
            content_type: "application/json",
            body,
        }
    }
}

fn answer(shared: &Shared, request: &tiny_http::Request) -> Answer {
    use tiny_http::Method;
    if !matches!(request.method(), Method::Get | Method::Head) {
        return Answer::text(405, "only GET\n");
    }
    let host = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Host"))
        .map(|h| h.value.as_str());
    let peer_is_loopback = request
        .remote_addr()
        .is_some_and(|a| a.ip().to_canonical().is_loopback());
    if peer_is_loopback && !host_allowed(host) {
        return Answer::text(
            403,
            "name this server by IP address or localhost in the Host header\n",
        );
    }
    let (path, query) = match request.url().split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (request.url(), None),
    };
    match route(shared, path, query) {
        Ok(a) => a,
        Err(BadRequest(reason)) => Answer::text(400, format!("{reason}\n")),
    }
}

/// A request whose parameters cannot be answered; the reason goes back with 400.
#[derive(Debug, PartialEq, Eq)]
struct BadRequest(String);

fn route(shared: &Shared, path: &str, query: Option<&str>) -> Result<Answer, BadRequest> {
    Ok(match path {
        "/healthz" => {
            params(query, &[])?;
            healthz(shared)
        }
        "/varz" => {
            params(query, &[])?;
            Answer::json(&varz(shared))
        }
        "/connz" => Answer {
            status: 200,
            content_type: "application/json",
            body: connz(&shared.ctx, &ConnzQuery::parse(query)?),
        },
        "/subsz" => {
            let limit = SubszQuery::parse(query)?.limit;
            Answer::json(&subsz(&shared.ctx, limit))
        }
        "/metrics" => {
            params(query, &[])?;
            Answer {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: shared.ctx.metrics.render(),
            }
        }
        _ => Answer::text(
            404,
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
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(BadRequest(format!(
            "limit must be a whole number from 1 to {MAX_LIMIT}, not '{}'",
            crate::line::printable(value.as_bytes(), 40)
        ))),
    }
}

/// The order of `/connz`: the largest first, or the oldest first for `age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    QueuedBytes,
    Dropped,
    Subscriptions,
    Age,
}

impl Sort {
    /// Its name in the query.
    pub fn name(self) -> &'static str {
        match self {
            Sort::QueuedBytes => "queued_bytes",
            Sort::Dropped => "dropped",
            Sort::Subscriptions => "subscriptions",
            Sort::Age => "age",
        }
    }

    /// The sort of this name, if any.
    pub fn from_name(value: &str) -> Option<Sort> {
        [
            Sort::QueuedBytes,
            Sort::Dropped,
            Sort::Subscriptions,
            Sort::Age,
        ]
        .into_iter()
        .find(|s| s.name() == value)
    }

    fn parse(value: &str) -> Result<Sort, BadRequest> {
        Sort::from_name(value).ok_or_else(|| {
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
    sort: Sort,
    limit: usize,
    subs: bool,
}

impl ConnzQuery {
    fn parse(query: Option<&str>) -> Result<ConnzQuery, BadRequest> {
        let mut q = ConnzQuery {
            sort: Sort::QueuedBytes,
            limit: CONNZ_LIMIT,
            subs: false,
        };
        for (k, v) in params(query, &["sort", "limit", "subs"])? {
            match k {
                "sort" => q.sort = Sort::parse(v)?,
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

fn healthz(shared: &Shared) -> Answer {
    let ctx = &shared.ctx;
    let mut problems = Vec::new();
    if ctx.shutting_down() {
        problems.push("shutting down".to_string());
    } else if ctx.conns.len() >= ctx.conns.max() {
        problems.push(format!(
            "not accepting clients: max_connections ({}) reached",
            ctx.conns.max()
        ));
    }
    problems.extend(shared.health.problems());
    if problems.is_empty() {
        Answer::text(200, "ok\n")
    } else {
        Answer::text(503, problems.join("\n") + "\n")
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
fn sort_conns(conns: &mut [Conn], sort: Sort) {
    conns.sort_unstable_by(|a, b| {
        let order = match sort {
            Sort::QueuedBytes => b.stats.queued_bytes.cmp(&a.stats.queued_bytes),
            Sort::Dropped => b.stats.dropped.cmp(&a.stats.dropped),
            Sort::Subscriptions => b.subscriptions.cmp(&a.subscriptions),
            Sort::Age => a.since.cmp(&b.since),
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

fn varz(shared: &Shared) -> Value {
    let ctx = &shared.ctx;
    let c = &ctx.config;
    let id = &shared.identity;
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
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "listen": {
            "tcp": id.tcp.to_string(),
            "http": id.http.to_string(),
            "monitor": shared.monitor.to_string(),
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
pub fn rfc3339(t: SystemTime) -> String {
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

    #[test]
    fn query_parameters() {
        let q = ConnzQuery::parse(None).unwrap();
        assert_eq!(
            (q.sort, q.limit, q.subs),
            (Sort::QueuedBytes, CONNZ_LIMIT, false)
        );
        let q = ConnzQuery::parse(Some("sort=age&limit=5&subs=1")).unwrap();
        assert_eq!((q.sort, q.limit, q.subs), (Sort::Age, 5, true));
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
        sort_conns(&mut c, Sort::QueuedBytes);
        assert_eq!(ids(&c), [2, 4, 3, 1]);
        sort_conns(&mut c, Sort::Dropped);
        assert_eq!(ids(&c), [2, 3, 1, 4]);
        sort_conns(&mut c, Sort::Subscriptions);
        assert_eq!(ids(&c), [1, 3, 2, 4]);
        sort_conns(&mut c, Sort::Age);
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
