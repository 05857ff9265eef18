//! `Server::shutdown` ends every connection and waits for their threads, whatever state they
//! are in.
//!
//! The test runs alone in a child process of this test binary, so that the mist threads it
//! finds in `/proc/self/task` are its own server's, not those of tests running beside it.

use crate::support::http::{raw_connect, upgrade_request};
use crate::support::{TIMEOUT, TestServer, get, small_window_client, ws_connect, ws_sync};
use mist::MemoryStore;
use mist::TagSet;
use mist::{StoreError, TokenStore};
use parking_lot::Mutex;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

/// Set in the child process that runs the test itself.
const CHILD: &str = "MIST_TEST_SHUTDOWN_CHILD";

/// Runs the test `name` of this binary alone in a child process; fails if it fails or does not
/// run at all.
fn run_alone(name: &str) {
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([name, "--exact", "--test-threads", "1", "--nocapture"])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the test binary starts");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send((out, child.wait()));
    });
    let (out, status) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the child test ends within two minutes");
    assert!(status.unwrap().success(), "child test failed:\n{out}");
    assert!(
        out.contains(&format!("test {name} ... ok")) && out.contains("1 passed"),
        "the child did not run {name}:\n{out}"
    );
}

/// The names of this process's threads that are mist's (`mist-tcp 127.0.`, `mist-http 127.0`,
/// ...; the kernel keeps 15 bytes of a name).
fn mist_threads() -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let comm = task.unwrap().path().join("comm");
        // A thread that ended since the directory was read has no comm any more.
        if let Ok(name) = std::fs::read_to_string(comm) {
            let name = name.trim_end().to_string();
            if name.starts_with("mist-") {
                names.push(name);
            }
        }
    }
    names.sort();
    names
}

/// How many of `names` start with `prefix`.
fn count(names: &[String], prefix: &str) -> usize {
    names.iter().filter(|n| n.starts_with(prefix)).count()
}

/// Polls the thread list until `cond` holds; fails after [`TIMEOUT`]. Threads start and end
/// with no reply to wait for.
fn wait_threads(what: &str, cond: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let names = mist_threads();
        if cond(&names) {
            return names;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {names:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A token store that holds every check of the token `slow` until told to go on: a
/// WebSocket connecting with it stays in admission, its thread started and its slot taken but
/// not registered as a client.
struct HeldStore {
    inner: MemoryStore,
    entered: Mutex<Sender<()>>,
    go: Mutex<Receiver<()>>,
}

impl TokenStore for HeldStore {
    fn register(&self, token: &str, tags: &TagSet) -> Result<(), StoreError> {
        self.inner.register(token, tags)
    }
    fn unregister(&self, token: &str) -> Result<(), StoreError> {
        self.inner.unregister(token)
    }
    fn set(&self, token: &str, tags: &TagSet) -> Result<(), StoreError> {
        self.inner.set(token, tags)
    }
    fn unset(&self, token: &str, tags: &TagSet) -> Result<(), StoreError> {
        self.inner.unset(token, tags)
    }
    fn tags(&self, token: &str) -> Result<Vec<String>, StoreError> {
        if token == "slow" {
            let _ = self.entered.lock().send(());
            let _ = self.go.lock().recv_timeout(TIMEOUT);
        }
        self.inner.tags(token)
    }
}

/// A raw connection that has sent `bytes`.
fn raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = raw_connect(addr);
    s.write_all(bytes).unwrap();
    s
}

/// Connections in every state a connection thread can be in when shutdown comes: TCP idle, TCP
/// in the middle of a line, TCP with its writer thread blocked on a full socket, HTTP reading
/// its request head, WebSocket open, WebSocket in admission (thread started, slot taken, not
/// registered yet). Shutdown closes them all and returns only when their threads have ended;
/// no mist thread is left in the process.
///
/// Regression test for 41fe787: shutdown returned while threads of connections that were not
/// registered (an HTTP request head, a WebSocket in its token check) ran on.
#[test]
fn shutdown_leaves_no_connection_thread_behind() {
    if std::env::var_os(CHILD).is_none() {
        run_alone("shutdown::shutdown_leaves_no_connection_thread_behind");
        return;
    }
    let (entered_tx, entered) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let store = HeldStore {
        inner: MemoryStore::new(),
        entered: Mutex::new(entered_tx),
        go: Mutex::new(go_rx),
    };
    // Nothing ends on its own timers while the test runs.
    let server = TestServer::with_store(
        |c| {
            c.http_head_timeout = 600;
            c.write_timeout = 600;
            c.ws_ping_interval = 600;
        },
        Box::new(store),
    );
    let ctx = std::sync::Arc::clone(server.context());
    let mut admin = server.client();
    admin.send("register a tok");
    admin.send("register a slow");
    admin.ping();

    let mut idle = server.client();
    idle.send("subscribe a");
    idle.ping();
    let mut mid_line = server.client();
    mid_line.send_raw(b"publish a half a li");
    let mut stalled = small_window_client(server.tcp);
    stalled.send("subscribe w");
    stalled.ping();
    let line = format!("publish w {}\n", "x".repeat(60_000));
    for _ in 0..64 {
        admin.send_raw(line.as_bytes());
    }
    admin.ping();
    let mut ws = ws_connect(server.http, "tok");
    assert_eq!(ws_sync(&mut ws), Vec::<String>::new());
    let _head = raw(server.http, b"GET /ping HTTP/1.1\r\nHost: mi");
    let _admitting = raw(server.http, &upgrade_request("", Some("slow"), &[]));
    entered
        .recv_timeout(TIMEOUT)
        .expect("the WebSocket reaches its token check");

    // Every state is there: readers of the four TCP clients (admin among them), the stalled
    // client's writer, and three HTTP threads (request head, WebSocket, admission).
    let before = wait_threads("every connection's threads", |t| {
        count(t, "mist-tcp ") == 4 && count(t, "mist-tcp-w") == 1 && count(t, "mist-http") == 3
    });
    assert_eq!(count(&before, "mist-accept"), 2, "{before:?}");
    assert_eq!(ctx.connection_threads(), 7);

    let shutting = thread::spawn(move || server.stop());
    // The idle client's socket is closed by shutdown, with nothing delivered: the line that
    // `mid_line` had not finished is not run when shutdown ends its read (it once was, and
    // `idle` got `publish a half a li`).
    assert_eq!(idle.read_to_end(), b"");
    // ... but shutdown cannot return while a thread is still in its token check.
    assert!(
        !shutting.is_finished(),
        "shutdown returned while a connection thread was running"
    );
    go.send(()).unwrap();
    shutting.join().expect("shutdown");

    assert_eq!(ctx.connection_threads(), 0);
    assert_eq!(ctx.connections(), 0, "every slot is given back");
    assert_eq!(get(&ctx.metrics().tcp_connections), 0);
    assert_eq!(get(&ctx.metrics().ws_connections), 0);
    // Readers joined their writers before they said they ended; the kernel takes a moment
    // more to remove a thread that has ended.
    wait_threads("every mist thread to end", |t| t.is_empty());
    drop((admin, mid_line, stalled, ws));
}
