//! The real `mist` binary as a child process: any command, or a server (`mist -d`) whose
//! addresses come from its log, watched through `/proc`. Every wait on the process or its
//! output is bounded, and a process still running when its [`Proc`] is dropped is killed.

use super::TIMEOUT;
use super::http::{http_get, metric};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// The binary under test.
pub const MIST: &str = env!("CARGO_BIN_EXE_mist");

/// A running `mist` process: its output arrives line by line (each line with its `\n`, if it
/// had one) on channels fed by reader threads, and its exit status on another. A server also
/// knows where it listens and keeps the log it has read so far.
pub struct Proc {
    pid: libc::pid_t,
    exit: Receiver<ExitStatus>,
    status: Option<ExitStatus>,
    pub stdout: Receiver<String>,
    pub stderr: Receiver<String>,
    /// A server's log (stderr), as far as it has been read.
    log: Vec<String>,
    /// A server's listeners, from its log.
    addrs: Option<(SocketAddr, SocketAddr)>,
}

/// Forwards what `r` produces, one line at a time, until it ends.
fn forward_lines(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        loop {
            let mut buf = Vec::new();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// The log line of a server that listens; the HTTP listener's comes last.
const LISTENING_TCP: &str = "listening for TCP clients on ";
const LISTENING_HTTP: &str = "listening for HTTP and WebSocket clients on ";

impl Proc {
    /// Starts `mist ARGS` with `env` added (and `MIST_ADMIN_TOKEN` removed unless given), and
    /// `stdin` written to it then closed (no stdin at all when `None`).
    pub fn spawn(args: &[&str], env: &[(&str, &str)], stdin: Option<Vec<u8>>) -> Proc {
        let mut cmd = Command::new(MIST);
        cmd.args(args)
            .env_remove("MIST_ADMIN_TOKEN")
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the mist binary starts");
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        let stdout = forward_lines(child.stdout.take().unwrap());
        let stderr = forward_lines(child.stderr.take().unwrap());
        let pid = child.id() as libc::pid_t;
        let (tx, exit) = mpsc::channel();
        thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = tx.send(status);
            }
        });
        Proc {
            pid,
            exit,
            status: None,
            stdout,
            stderr,
            log: Vec::new(),
            addrs: None,
        }
    }

    /// Starts the server, `mist -d ARGS`, and waits until its log says where it listens; it
    /// accepts connections from then on.
    pub fn server(args: &[&str]) -> Proc {
        let mut all = vec!["-d"];
        all.extend_from_slice(args);
        // No monitoring listener unless asked for: its threads would count in the tests that
        // watch the server's threads, and its default port is one for the whole machine.
        if !args.contains(&"--monitor-addr") {
            all.extend_from_slice(&["--monitor-addr", "off"]);
        }
        let mut proc = Proc::spawn(&all, &[], None);
        proc.log = Proc::lines_until(&proc.stderr, |l| l.contains(LISTENING_HTTP));
        let addr = |what: &str| -> SocketAddr {
            let line = proc
                .log
                .iter()
                .find_map(|l| l.split_once(what))
                .unwrap_or_else(|| panic!("no '{what}' in the log: {:?}", proc.log));
            line.1.trim().parse().expect("a socket address")
        };
        proc.addrs = Some((addr(LISTENING_TCP), addr(LISTENING_HTTP)));
        proc
    }

    /// Starts the server with `conf` added to a config file (named after `name`) that puts
    /// both listeners on ephemeral loopback ports.
    pub fn server_with(name: &str, conf: &str) -> Proc {
        let text =
            format!("tcp_listen_address 127.0.0.1:0\nhttp_listen_address 127.0.0.1:0\n{conf}");
        let path = config_file(name, &text);
        Proc::server(&["--config", path.to_str().unwrap()])
    }

    /// Where a server listens for line-protocol clients.
    pub fn tcp(&self) -> SocketAddr {
        self.addrs.expect("a server").0
    }

    /// Where a server listens for HTTP and WebSocket clients.
    pub fn http(&self) -> SocketAddr {
        self.addrs.expect("a server").1
    }

    /// A server's log so far.
    pub fn log(&self) -> &[String] {
        &self.log
    }

    /// Reads more of a server's log until a line contains `what` (at once if one already
    /// does); returns that line.
    pub fn wait_log(&mut self, what: &str) -> String {
        if let Some(l) = self.log.iter().find(|l| l.contains(what)) {
            return l.clone();
        }
        let more = Proc::lines_until(&self.stderr, |l| l.contains(what));
        self.log.extend(more);
        self.log.last().cloned().expect("the line just read")
    }

    /// Stops a server with SIGTERM, expects a clean exit, and returns its whole log.
    pub fn stop(mut self) -> String {
        self.signal(libc::SIGTERM);
        let status = self.wait(TIMEOUT);
        assert!(status.success(), "mist exited with {status}");
        let mut log = self.log.concat();
        log.push_str(&Proc::rest(&self.stderr));
        log
    }

    /// The process id, for looking at the process in `/proc`.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Waits for the process to exit; fails the test if it takes longer than `within`.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        match self.exit.recv_timeout(within) {
            Ok(s) => {
                self.status = Some(s);
                s
            }
            Err(_) => panic!("mist (pid {}) did not exit within {within:?}", self.pid),
        }
    }

    /// Sends a signal to the process, which must still be running.
    pub fn signal(&mut self, sig: libc::c_int) {
        if let Ok(s) = self.exit.try_recv() {
            self.status = Some(s);
        }
        assert!(self.status.is_none(), "signal to a process that exited");
        // SAFETY: kill touches no memory of ours. The pid is our child's: the thread that reaps
        // it reports the exit at once, and no exit was reported, so the pid is not reused.
        let rc = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid);
    }

    /// The next line from `rx`; fails the test after [`TIMEOUT`] or at end of output.
    pub fn line(rx: &Receiver<String>) -> String {
        match rx.recv_timeout(TIMEOUT) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => panic!("no output line within {TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("output ended while a line was expected"),
        }
    }

    /// Reads lines from `rx` until one satisfies `want`; returns every line read.
    pub fn lines_until(rx: &Receiver<String>, want: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let l = match rx.recv_timeout(TIMEOUT) {
                Ok(l) => l,
                Err(_) => panic!("no matching output line; got {seen:?}"),
            };
            let done = want(&l);
            seen.push(l);
            if done {
                return seen;
            }
        }
    }

    /// Everything left on `rx` until the output ends (the process exited).
    pub fn rest(rx: &Receiver<String>) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut out = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => out.push_str(&l),
                Err(RecvTimeoutError::Disconnected) => return out,
                Err(RecvTimeoutError::Timeout) => panic!("output did not end; got {out:?}"),
            }
        }
    }

    /// A field of `/proc/PID/status` (the number before any unit).
    pub fn status(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid))
    }

    /// The process's threads.
    pub fn threads(&self) -> u64 {
        self.status("Threads")
    }

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status("VmRSS")
    }

    /// Open descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .count()
    }

    /// One series of a server's `/metrics`.
    pub fn metric(&self, series: &str) -> u64 {
        let resp = http_get(self.http(), "/metrics");
        let (_, body) = resp.split_once("\r\n\r\n").expect("a complete response");
        metric(body, series)
    }

    /// Waits until the threads and descriptors are back to `(threads, fds)`.
    pub fn settle_to(&self, threads: u64, fds: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = (self.threads(), self.fds());
            if now == (threads, fds) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "threads and descriptors are {now:?}, not back to {:?}",
                (threads, fds)
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_some() || self.exit.try_recv().is_ok() {
            return;
        }
        // SAFETY: as in `signal`: no exit was reported, so the pid is still our child's.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
        let _ = self.exit.recv_timeout(TIMEOUT);
    }
}

/// What a finished `mist` run left behind.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `mist ARGS` to completion (bounded by [`TIMEOUT`]).
pub fn mist_env(args: &[&str], env: &[(&str, &str)], stdin: Option<Vec<u8>>) -> Output {
    let mut p = Proc::spawn(args, env, stdin);
    let status = p.wait(TIMEOUT);
    Output {
        code: status.code(),
        stdout: Proc::rest(&p.stdout),
        stderr: Proc::rest(&p.stderr),
    }
}

/// Runs `mist ARGS` with no stdin and no extra environment.
pub fn mist(args: &[&str]) -> Output {
    mist_env(args, &[], None)
}

/// Writes `text` to a config file of its own and returns its path.
pub fn config_file(name: &str, text: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("mist-{}-{n}-{name}.conf", std::process::id()));
    std::fs::write(&path, text).expect("write the config file");
    path
}
