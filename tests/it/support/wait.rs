//! Waiting for what has no reply to wait for.

use std::thread;
use std::time::{Duration, Instant};

/// Polls `cond` until it holds; fails the test after `within`. Only for effects that no reply
/// can announce (a thread ending, a disconnect being noticed, a gauge going down): everything
/// else waits for a `pong`.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}
