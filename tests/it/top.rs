//! `mist top` under a real pseudo-terminal (tmux), and `mist top --once`.

use crate::monitor::{server, stalled_subscriber};
use crate::support::TIMEOUT;
use crate::support::process::{MIST, mist};
use std::process::Command;
use std::time::Instant;

/// A tmux server of the test's own (its own socket), with one session running `cmd` in a
/// 160x40 terminal. Killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, cmd: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("mist-test-{}-{name}", std::process::id()),
        };
        tmux.run(&["new-session", "-d", "-x", "160", "-y", "40", "-s", "t", cmd]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs (scripts/test installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    fn keys(&self, keys: &str) {
        self.run(&["send-keys", "-t", "t", keys]);
    }

    /// Reads the screen until `want` holds; fails after the test timeout, showing the screen.
    fn wait_for(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let screen = self.screen();
            if want(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} on the screen:\n{screen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The id in the first row under the table's header.
fn first_row_id(screen: &str) -> Option<u64> {
    let mut lines = screen
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("ID "));
    lines.next()?;
    lines.next()?.split_whitespace().next()?.parse().ok()
}

/// After `mist top` exits, the shell prints its exit code and whether the terminal echoes
/// and reads lines again (`stty` settings `echo` and `icanon`, not `-echo`, `-icanon`).
fn then_report(top: &str) -> String {
    format!(
        "{top}; echo top-exited-$?; stty -a | tr ' ' '\\n' | grep -x -e echo -e -echo -e icanon -e -icanon | tr '\\n' ' '; echo; echo report-done; cat"
    )
}

#[test]
fn top_shows_the_slow_connection_first_and_quits_cleanly() {
    let (s, m) = server(|c| c.client_queue_bytes = 4 << 20);
    let idle: Vec<_> = (0..3).map(|_| s.client()).collect();
    let (_stalled, _publisher, slow_id) = stalled_subscriber(&s, m);
    let tmux = Tmux::start("q", &then_report(&format!("{MIST} top --monitor-addr {m}")));
    let screen = tmux.wait_for("the stalled connection first", |sc| {
        first_row_id(sc) == Some(slow_id)
    });
    assert!(screen.contains("connections 5 (max 10000)"), "{screen}");
    assert!(screen.contains("sorted by queued_bytes"), "{screen}");
    tmux.keys("a");
    tmux.wait_for("the age order", |sc| sc.contains("sorted by age"));
    tmux.keys("q");
    let screen = tmux.wait_for("the exit", |sc| sc.contains("report-done"));
    assert!(screen.contains("top-exited-0"), "{screen}");
    assert!(
        screen.contains("\nicanon echo"),
        "terminal not restored:\n{screen}"
    );
    assert!(
        !screen.contains("sorted by"),
        "still on the alternate screen:\n{screen}"
    );
    drop(idle);
}

#[test]
fn ctrl_c_restores_the_terminal() {
    let (_s, m) = server(|_| {});
    let tmux = Tmux::start("c", &then_report(&format!("{MIST} top --monitor-addr {m}")));
    tmux.wait_for("the view", |sc| sc.contains("sorted by queued_bytes"));
    tmux.keys("C-c");
    let screen = tmux.wait_for("the exit", |sc| sc.contains("report-done"));
    assert!(screen.contains("top-exited-0"), "{screen}");
    assert!(
        screen.contains("\nicanon echo"),
        "terminal not restored:\n{screen}"
    );
}

#[test]
fn once_prints_a_plain_table() {
    let (s, m) = server(|c| c.client_queue_bytes = 4 << 20);
    let _idle = s.client();
    let (_stalled, _publisher, slow_id) = stalled_subscriber(&s, m);
    let out = mist(&["top", "--once", "--monitor-addr", &m.to_string()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!out.stdout.contains('\x1b'), "no escapes: {:?}", out.stdout);
    assert!(
        out.stdout.contains("connections 3 (max 10000)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("sorted by queued_bytes; showing 3 of 3")
    );
    assert_eq!(first_row_id(&out.stdout), Some(slow_id), "{}", out.stdout);
    let rows = out
        .stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("ID "));
    assert_eq!(rows.count(), 4, "header and three rows: {}", out.stdout);

    let out = mist(&[
        "top",
        "--once",
        "--sort",
        "age",
        "--limit",
        "1",
        "--monitor-addr",
        &m.to_string(),
    ]);
    assert!(
        out.stdout.contains("sorted by age; showing 1 of 3"),
        "{}",
        out.stdout
    );

    let out = mist(&["top", "--once", "--sort", "name"]);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("--sort must be"), "{}", out.stderr);
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = mist(&["top", "--once", "--monitor-addr", &gone.to_string()]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.starts_with(&format!(
            "mist top: cannot reach the monitoring listener at {gone}"
        )),
        "{}",
        out.stderr
    );
    let out = mist(&["top", "--monitor-addr", &m.to_string()]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("needs a terminal; use --once"),
        "{}",
        out.stderr
    );
}
