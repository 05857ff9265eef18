//! Capacity: a connection that cannot get its thread is refused with a reason, and the start-up
//! log names the kernel setting that keeps `max_connections` out of reach.

use crate::support::process::{Proc, config_file};
use crate::support::{LineClient, TIMEOUT};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A `mist -d` process on ephemeral loopback ports (read back from its log).
pub(crate) struct Daemon {
    pub proc: Proc,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    /// The monitoring listener.
    pub monitor: SocketAddr,
    /// Its log up to the line that says it is ready.
    pub log: Vec<String>,
}

impl Daemon {
    /// Starts `mist -d` with `conf` after lines that put every listener on an ephemeral
    /// loopback port, and waits until it listens.
    pub(crate) fn start(name: &str, conf: &str) -> Daemon {
        let text = format!(
            "tcp_listen_address 127.0.0.1:0\nhttp_listen_address 127.0.0.1:0\n\
             monitor_listen_address 127.0.0.1:0\n{conf}"
        );
        let path = config_file(name, &text);
        let proc = Proc::spawn(&["-d", "--config", path.to_str().unwrap()], &[], None);
        let log = Proc::lines_until(&proc.stderr, |l| {
            l.contains("listening for HTTP and WebSocket clients on ")
        });
        let addr = |what: &str| -> Option<SocketAddr> {
            let line = log.iter().find_map(|l| l.split_once(what))?;
            Some(line.1.trim().parse().expect("a socket address"))
        };
        Daemon {
            tcp: addr("listening for TCP clients on ").expect("TCP address in the log"),
            http: addr("listening for HTTP and WebSocket clients on ").expect("HTTP address"),
            monitor: addr("monitoring on http://").expect("monitoring address"),
            proc,
            log,
        }
    }

    pub(crate) fn pid(&self) -> libc::pid_t {
        self.proc.pid()
    }

    /// A field of `/proc/PID/status` (the number before any unit).
    pub(crate) fn status(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid()))
    }

    /// Sets the process's address-space limit (`RLIMIT_AS`), in bytes.
    fn limit_address_space(&self, bytes: u64) {
        let new = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: prlimit reads `new` and writes nothing (old is null).
        let rc = unsafe {
            libc::prlimit(
                self.pid(),
                libc::RLIMIT_AS,
                &new,
                std::ptr::null_mut::<libc::rlimit>(),
            )
        };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }
}

/// `GET path` on its own connection: the status code and the body.
pub(crate) fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP response, got {raw:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("a status line, got {head:?}"));
    (status, body.to_string())
}

/// The value of one series in Prometheus text.
pub(crate) fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// When the system will not give a connection its thread (here: the address space is
/// exhausted, as it is at `vm.max_map_count`), the client is refused as one over
/// `max_connections` is: an `error` line on TCP, 503 on HTTP, counted; the server and its
/// other clients go on, and new clients are served again once there is room.
#[test]
fn a_connection_without_a_thread_is_refused_with_a_reason() {
    let d = Daemon::start("no-thread", "max_connections 100\n");
    let mut first = LineClient::connect(d.tcp);
    first.ping();
    // Room for small allocations, none for a thread's stack (128 KiB and a guard page).
    let vm_size = d.status("VmSize") * 1024;
    d.limit_address_space(vm_size + 64 * 1024);

    let mut refused = TcpStream::connect(d.tcp).unwrap();
    refused.set_read_timeout(Some(TIMEOUT)).unwrap();
    // Its first commands are on their way before the refusal: they must not turn the close
    // into a reset that loses the refusal.
    refused.write_all(b"subscribe a\nping\n").unwrap();
    let mut reply = String::new();
    refused
        .read_to_string(&mut reply)
        .expect("closed, not reset");
    assert_eq!(reply, "error server busy: no thread for this connection\n");

    let (status, body) = get(d.http, "/ping");
    assert_eq!(
        (status, body.as_str()),
        (503, "server busy: no thread for this connection\n")
    );
    first.ping();
    // The monitoring listener's threads are already there: it still answers, and counts.
    let (status, text) = get(d.monitor, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "mist_thread_start_failures_total"), 2);

    d.limit_address_space(libc::RLIM_INFINITY);
    let mut later = LineClient::connect(d.tcp);
    later.ping();
    let (status, text) = get(d.http, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "mist_connections_refused_total"), 2);
    assert_eq!(metric(&text, "mist_thread_start_failures_total"), 2);
    let log = d.log.join("") + &drain(&d.proc, "cannot start a connection thread", 2);
    assert!(
        log.contains("refused, cannot start a connection thread"),
        "{log}"
    );
}

/// Lines of `proc`'s log until `needle` has appeared `times` times.
fn drain(proc: &Proc, needle: &str, times: usize) -> String {
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = String::new();
    while seen.matches(needle).count() < times {
        let left = deadline.saturating_duration_since(Instant::now());
        match proc.stderr.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(l) => seen.push_str(&l),
            Err(_) => panic!("'{needle}' not logged {times} times: {seen}"),
        }
    }
    seen
}

/// A `max_connections` the kernel's limits cannot hold is warned about at start, naming the
/// setting to raise; the default fits a stock kernel and gets no warning.
#[test]
fn start_up_names_the_setting_that_binds() {
    let d = Daemon::start("too-many", "max_connections 1000000\n");
    let log = d.log.join("");
    assert!(
        log.contains("WARN") && log.contains("max_connections 1000000 cannot be reached: "),
        "{log}"
    );
    assert!(log.contains("vm.max_map_count is "), "{log}");
    assert!(log.contains("raise it to at least "), "{log}");

    let d = Daemon::start("default-conns", "");
    let log = d.log.join("");
    assert!(!log.contains("cannot be reached"), "{log}");
}
