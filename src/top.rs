//! `mist top`: a live terminal view of a running server, read from its monitoring listener
//! (`/varz` and `/connz`), like `nats-top`.
//!
//! Totals at the top (connections, subscriptions, messages per second in and out, drops per
//! second, queued bytes), then one row per connection, sorted by queued bytes; keys sort by
//! drops, subscriptions or age, and `q` quits. It refreshes every second and fits the
//! terminal. Plain ANSI escapes and `termios`: the terminal is put back as it was on exit, on
//! Ctrl-C and on SIGTERM. `--once` prints one snapshot as a plain table, for scripts.
//!
//! The rendering is pure ([`render`]); only [`run`] touches the terminal and the network.
//! A module of the binary: it is a client of the monitoring listener over HTTP, and takes
//! from the library only the sort keys of `/connz` ([`ConnzSort`]) and the largest `limit`.

use mist::ConnzSort;
use serde_json::Value;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the view is refreshed.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Longest wait for the monitoring listener to connect or answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Why `mist top` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("cannot reach the monitoring listener at {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("{addr}{path}: {reason}")]
    Answer {
        addr: String,
        path: String,
        reason: String,
    },
    #[error("the live view needs a terminal; use --once for a plain table")]
    NoTerminal,
    #[error("terminal: {0}")]
    Terminal(io::Error),
}

/// What to show.
#[derive(Debug, Clone)]
pub struct Options {
    /// The monitoring listener, `HOST:PORT`.
    pub addr: String,
    pub sort: ConnzSort,
    /// Most rows for `--once`.
    pub limit: usize,
    pub once: bool,
}

/// Runs `mist top`.
///
/// # Errors
/// The monitoring listener cannot be reached (for `--once`; the live view keeps retrying), it
/// answers something else than the monitoring endpoints, or there is no terminal.
pub fn run(opts: &Options) -> Result<(), TopError> {
    if opts.once {
        let snap = Snapshot::fetch(&opts.addr, opts.sort, opts.limit)?;
        let mut out = io::stdout().lock();
        for line in render(&snap, None, opts.sort, usize::MAX, usize::MAX) {
            let _ = writeln!(out, "{line}");
        }
        return Ok(());
    }
    live(opts)
}

/// One reading of `/varz` and `/connz`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub varz: Value,
    pub connz: Value,
    pub at: Instant,
}

impl Snapshot {
    /// Reads both endpoints.
    ///
    /// # Errors
    /// See [`run`].
    pub fn fetch(addr: &str, sort: ConnzSort, limit: usize) -> Result<Snapshot, TopError> {
        let varz = get_json(addr, "/varz")?;
        let connz = get_json(addr, &format!("/connz?sort={}&limit={limit}", sort.name()))?;
        Ok(Snapshot {
            varz,
            connz,
            at: Instant::now(),
        })
    }

    fn counter(&self, name: &str) -> u64 {
        self.varz["counters"][name].as_u64().unwrap_or(0)
    }
}

/// `GET path` with `Connection: close`, parsed as JSON.
fn get_json(addr: &str, path: &str) -> Result<Value, TopError> {
    let connect_err = |source| TopError::Connect {
        addr: addr.to_string(),
        source,
    };
    let answer_err = |reason: String| TopError::Answer {
        addr: addr.to_string(),
        path: path.to_string(),
        reason,
    };
    let sock = addr
        .to_socket_addrs()
        .map_err(connect_err)?
        .next()
        .ok_or_else(|| connect_err(io::ErrorKind::NotFound.into()))?;
    let mut s = TcpStream::connect_timeout(&sock, FETCH_TIMEOUT).map_err(connect_err)?;
    s.set_read_timeout(Some(FETCH_TIMEOUT))
        .map_err(connect_err)?;
    s.set_write_timeout(Some(FETCH_TIMEOUT))
        .map_err(connect_err)?;
    // The Host is the address as given: an IP address or localhost passes the listener's rule.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(connect_err)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(connect_err)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| answer_err("not an HTTP response".into()))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        let reason = body.trim();
        return Err(answer_err(format!("HTTP {status}: {reason}")));
    }
    serde_json::from_str(body).map_err(|e| answer_err(format!("not JSON: {e}")))
}

/// Rates between two snapshots, per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub published: f64,
    pub delivered: f64,
    pub dropped: f64,
}

impl Rates {
    /// The rates from `before` to `now`; `None` when no time passed.
    pub fn between(before: &Snapshot, now: &Snapshot) -> Option<Rates> {
        let secs = now.at.saturating_duration_since(before.at).as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let rate =
            |name: &str| now.counter(name).saturating_sub(before.counter(name)) as f64 / secs;
        Some(Rates {
            published: rate("messages_published_total"),
            delivered: rate("deliveries_total"),
            dropped: rate("drops_total"),
        })
    }
}

/// The view as lines of at most `width` characters, at most `height` lines. Pure.
pub fn render(
    snap: &Snapshot,
    rates: Option<Rates>,
    sort: ConnzSort,
    width: usize,
    height: usize,
) -> Vec<String> {
    let v = &snap.varz;
    let c = &snap.connz;
    let mut lines = vec![
        format!(
            "mist {}  {}  up {}  tcp {}  monitor {}",
            v["version"].as_str().unwrap_or("?"),
            v["node_name"].as_str().unwrap_or("?"),
            duration(v["uptime_seconds"].as_u64().unwrap_or(0)),
            v["listen"]["tcp"].as_str().unwrap_or("?"),
            v["listen"]["monitor"].as_str().unwrap_or("?"),
        ),
        format!(
            "connections {} (max {})  subscriptions {}  queued {} in {} messages",
            v["connections"],
            v["limits"]["max_connections"],
            v["subscriptions"],
            bytes(v["queued_bytes"].as_u64().unwrap_or(0)),
            v["queued_messages"],
        ),
        match rates {
            Some(r) => format!(
                "in {:.0} msg/s  out {:.0} msg/s  drops {:.0}/s",
                r.published, r.delivered, r.dropped
            ),
            None => format!(
                "published {}  delivered {}  dropped {}",
                snap.counter("messages_published_total"),
                snap.counter("deliveries_total"),
                snap.counter("drops_total"),
            ),
        },
        format!(
            "sorted by {}; showing {} of {}   keys: b queued bytes, d drops, s subscriptions, a age, q quit",
            sort.name(),
            c["shown"],
            c["total"],
        ),
        String::new(),
        format!(
            "{:>8} {:<22} {:<9} {:>8} {:>6} {:>8} {:>10} {:>11} {:>9} {:<6}",
            "ID",
            "PEER",
            "TRANSPORT",
            "AGE",
            "SUBS",
            "QUEUED",
            "Q_BYTES",
            "DELIVERED",
            "DROPPED",
            "WRITER"
        ),
    ];
    for conn in c["connections"].as_array().into_iter().flatten() {
        if lines.len() >= height {
            break;
        }
        let n = |k: &str| conn[k].as_u64().unwrap_or(0);
        lines.push(format!(
            "{:>8} {:<22} {:<9} {:>8} {:>6} {:>8} {:>10} {:>11} {:>9} {:<6}",
            n("id"),
            conn["peer"].as_str().unwrap_or("?"),
            conn["transport"].as_str().unwrap_or("?"),
            duration(n("age_seconds")),
            n("subscriptions"),
            n("queued_messages"),
            bytes(n("queued_bytes")),
            n("delivered"),
            n("dropped"),
            if conn["writer_running"] == true {
                "yes"
            } else {
                "no"
            },
        ));
    }
    lines.truncate(height);
    for l in &mut lines {
        if let Some((cut, _)) = l.char_indices().nth(width) {
            l.truncate(cut);
        }
    }
    lines
}

/// `90061` seconds as `1d01h`, `3725` as `1h02m`, `65` as `1m05s`.
fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Bytes in binary units: `512`, `1.5K`, `64.0M`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if n < 1024 {
        return n.to_string();
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

/// The sort a key selects, `None` for other keys.
fn sort_for_key(key: u8) -> Option<ConnzSort> {
    match key {
        b'b' => Some(ConnzSort::QueuedBytes),
        b'd' => Some(ConnzSort::Dropped),
        b's' => Some(ConnzSort::Subscriptions),
        b'a' => Some(ConnzSort::Age),
        _ => None,
    }
}

/// The live view: until `q`, Ctrl-C or SIGTERM.
fn live(opts: &Options) -> Result<(), TopError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(TopError::Terminal)?;
    }
    let term = Terminal::enter()?;
    let mut sort = opts.sort;
    let mut before: Option<Snapshot> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            let (width, height) = term.size();
            let rows = height.saturating_sub(6).max(1);
            let screen = match Snapshot::fetch(&opts.addr, sort, rows) {
                Ok(snap) => {
                    let rates = before.as_ref().and_then(|b| Rates::between(b, &snap));
                    let lines = render(&snap, rates, sort, width, height);
                    before = Some(snap);
                    lines
                }
                Err(e) => vec![format!("{e}; retrying every second (q quits)")],
            };
            term.draw(&screen).map_err(TopError::Terminal)?;
            next = Instant::now() + REFRESH;
        }
        match term.key(next.saturating_duration_since(Instant::now())) {
            Some(b'q') => break,
            Some(k) => {
                if let Some(s) = sort_for_key(k) {
                    sort = s;
                    // Redraw at once in the new order; rates restart from this reading.
                    before = None;
                    next = Instant::now();
                }
            }
            None => {}
        }
    }
    drop(term);
    Ok(())
}

/// The terminal in the state `mist top` needs (no echo, keys without Enter, the alternate
/// screen, no cursor); put back as it was when dropped, also when unwinding from a panic.
struct Terminal {
    saved: libc::termios,
    fd: i32,
}

impl Terminal {
    fn enter() -> Result<Terminal, TopError> {
        let fd = io::stdin().as_raw_fd();
        // SAFETY: isatty and tcgetattr only read the descriptor's state into `saved`.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        let is_tty = unsafe { libc::isatty(fd) == 1 && libc::isatty(1) == 1 };
        if !is_tty || unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(TopError::NoTerminal);
        }
        let mut raw = saved;
        // Keys arrive one by one, unechoed; ISIG stays, so Ctrl-C is a SIGINT we handle.
        raw.c_lflag &= !(libc::ICANON | libc::ECHO);
        raw.c_cc[libc::VMIN] = 0;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: tcsetattr reads `raw`.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(TopError::Terminal(io::Error::last_os_error()));
        }
        let term = Terminal { saved, fd };
        let mut out = io::stdout().lock();
        out.write_all(b"\x1b[?1049h\x1b[?25l")
            .and_then(|()| out.flush())
            .map_err(TopError::Terminal)?;
        Ok(term)
    }

    /// Columns and rows.
    fn size(&self) -> (usize, usize) {
        // SAFETY: TIOCGWINSZ writes a winsize into `ws`.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
        if ok && ws.ws_col > 0 && ws.ws_row > 0 {
            (usize::from(ws.ws_col), usize::from(ws.ws_row))
        } else {
            (80, 24)
        }
    }

    /// Clears the screen and draws `lines` from the top.
    fn draw(&self, lines: &[String]) -> io::Result<()> {
        let mut frame = String::from("\x1b[H\x1b[2J");
        frame.push_str(&lines.join("\r\n"));
        let mut out = io::stdout().lock();
        out.write_all(frame.as_bytes())?;
        out.flush()
    }

    /// The next key pressed within `wait`, if any. Returns early on a signal.
    fn key(&self, wait: Duration) -> Option<u8> {
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll reads and writes the one pollfd we pass.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return None;
        }
        let mut b = [0u8; 1];
        // SAFETY: read writes at most one byte into `b`.
        let n = unsafe { libc::read(self.fd, b.as_mut_ptr().cast(), 1) };
        (n == 1).then_some(b[0])
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let mut out = io::stdout().lock();
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        // SAFETY: tcsetattr reads the termios saved at the start.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snapshot(published: u64, at: Instant) -> Snapshot {
        Snapshot {
            varz: json!({
                "version": "0.1.0", "node_name": "h:1445", "uptime_seconds": 3725,
                "listen": {"tcp": "127.0.0.1:1445", "monitor": "127.0.0.1:9445"},
                "connections": 2, "limits": {"max_connections": 10000}, "subscriptions": 3,
                "queued_bytes": 1_572_864, "queued_messages": 24,
                "counters": {"messages_published_total": published, "deliveries_total": published * 2, "drops_total": 7},
            }),
            connz: json!({
                "total": 2, "shown": 2,
                "connections": [
                    {"id": 3, "peer": "127.0.0.1:40000", "transport": "tcp", "age_seconds": 65,
                     "subscriptions": 1, "queued_messages": 24, "queued_bytes": 1_572_864,
                     "delivered": 100, "dropped": 7, "writer_running": true},
                    {"id": 1, "peer": "[::1]:40001", "transport": "websocket", "age_seconds": 90_061,
                     "subscriptions": 2, "queued_messages": 0, "queued_bytes": 0,
                     "delivered": 5, "dropped": 0, "writer_running": false},
                ],
            }),
            at,
        }
    }

    #[test]
    fn renders_totals_and_rows() {
        let t0 = Instant::now();
        let before = snapshot(1000, t0);
        let now = snapshot(3000, t0 + Duration::from_secs(2));
        let rates = Rates::between(&before, &now);
        assert_eq!(
            rates,
            Some(Rates {
                published: 1000.0,
                delivered: 2000.0,
                dropped: 0.0
            })
        );
        let lines = render(&now, rates, ConnzSort::QueuedBytes, 200, 100);
        assert_eq!(
            lines[0],
            "mist 0.1.0  h:1445  up 1h02m  tcp 127.0.0.1:1445  monitor 127.0.0.1:9445"
        );
        assert_eq!(
            lines[1],
            "connections 2 (max 10000)  subscriptions 3  queued 1.5M in 24 messages"
        );
        assert_eq!(lines[2], "in 1000 msg/s  out 2000 msg/s  drops 0/s");
        assert!(lines[3].starts_with("sorted by queued_bytes; showing 2 of 2"));
        assert_eq!(
            lines[6],
            "       3 127.0.0.1:40000        tcp          1m05s      1       24       1.5M         100         7 yes   "
        );
        assert!(lines[7].contains("[::1]:40001") && lines[7].contains("1d01h"));
        assert_eq!(lines.len(), 8);
    }

    #[test]
    fn fits_the_terminal() {
        let snap = snapshot(0, Instant::now());
        let lines = render(&snap, None, ConnzSort::Age, 30, 7);
        assert_eq!(lines.len(), 7);
        assert!(lines.iter().all(|l| l.chars().count() <= 30));
        assert_eq!(lines[2], "published 0  delivered 0  drop");
        assert!(lines[6].starts_with("       3 127.0.0.1:40000"));
    }

    #[test]
    fn units_and_keys() {
        assert_eq!(bytes(512), "512");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(bytes(64 << 20), "64.0M");
        assert_eq!(duration(59), "59s");
        assert_eq!(sort_for_key(b'd'), Some(ConnzSort::Dropped));
        assert_eq!(sort_for_key(b'x'), None);
    }
}
