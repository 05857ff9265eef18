//! A third-party WebSocket client against mist: Python's `websockets` package, driven by
//! `tests/python/ws_client.py`. The test fails (never skips) when Python or the package is
//! missing.

use crate::support::{TIMEOUT, TestServer};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Instant;

const INSTALL: &str = "the `websockets` package: run the README's test script, `scripts/test` \
                       (it installs the package with `pip install websockets`), or \
                       `pip install websockets` yourself";

/// Kills the script if the test fails before it exits.
struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fails the test, with how to fix it, unless `python3` can import `websockets.sync.client`.
fn require_websockets() {
    let out = Command::new("python3")
        .args(["-c", "import websockets.sync.client"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); it is needed, with {INSTALL}"));
    assert!(
        out.status.success(),
        "python3 cannot import websockets.sync.client (version 11 or later of {INSTALL})\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_websockets_client() {
    require_websockets();
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register py,x pytok");
    admin.ping();

    const COUNT: usize = 50;
    let prefix = "msg \"é\" ";
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/ws_client.py");
    let url = format!("ws://{}/subscribe/websocket", server.http);
    let child = Command::new("python3")
        .arg(&script)
        .args(["--url", &url, "--token", "pytok", "--refused-token", "nope"])
        .args(["--subscribe", "x,py", "--refuse", "z,q"])
        .args(["--keys", "py,x", "--prefix", prefix])
        .args(["--count", &COUNT.to_string()])
        .args(["--timeout", &TIMEOUT.as_secs().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut script = Script(child);

    // The script's output, line by line; the channel disconnects when it closes stdout.
    let (lines_tx, lines) = mpsc::channel();
    let stdout = script.0.stdout.take().expect("piped");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = script.0.stderr.take().expect("piped");
    let errors = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    // Wait until it has subscribed (its `list` reply came back).
    match lines.recv_timeout(TIMEOUT * 2) {
        Ok(line) => assert_eq!(line, "subscribed"),
        Err(RecvTimeoutError::Timeout) => panic!("ws_client.py did not subscribe in time"),
        Err(RecvTimeoutError::Disconnected) => {
            let status = script.0.wait().expect("wait for python3");
            panic!(
                "ws_client.py exited early ({status}):\n{}",
                errors.join().unwrap_or_default()
            );
        }
    }

    // Unsorted tags: keys come sorted. A message on `py` alone matches nothing it holds.
    admin.send("publish py,other not for it");
    for i in 0..COUNT {
        admin.send(&format!("publish x,py,x {prefix}{i}"));
    }
    admin.send("publish py not for it either");
    admin.ping();

    // Wait for it to finish: its stdout closes when it exits.
    let deadline = Instant::now() + TIMEOUT * 3;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => out.push(line),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("ws_client.py did not finish: {out:?}"),
        }
    }
    let status = script.0.wait().expect("wait for python3");
    let errors = errors.join().unwrap_or_default();
    assert!(
        status.success(),
        "ws_client.py failed ({status}):\n{errors}"
    );
    assert_eq!(
        out,
        [format!("ok: {COUNT} deliveries")],
        "stderr:\n{errors}"
    );
}
