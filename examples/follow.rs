//! Follows a tag stream with [`mist::Client`], and keeps following it when the connection is
//! lost: the reconnection pattern.
//!
//! A subscription belongs to a connection, so a new connection starts with none: after
//! connecting again, subscribe again. mist stores nothing, so messages published while this
//! program was disconnected are not delivered later; it says when such a gap happened.
//!
//! # Running it
//!
//! ```text
//! cargo run --example follow -- 127.0.0.1:1445 alerts disk,web01
//! ```
//!
//! prints every message tagged `alerts`, and every message tagged both `disk` and `web01`, as
//! `TAGS DATA`. Stop the server and start it again: the program reconnects (waiting a little
//! longer after each failed attempt, at most 5 s) and goes on.

use mist::ErrorChain;
use mist::client::{Client, DroppedBy, Error, Event, Options};
use std::io::Write;
use std::ops::ControlFlow;
use std::thread;
use std::time::Duration;

/// The first wait before connecting again; it doubles after each failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, subscriptions @ ..] = args.as_slice() else {
        eprintln!("usage: follow ADDR TAGS... (e.g. follow 127.0.0.1:1445 alerts disk,web01)");
        std::process::exit(2);
    };
    if subscriptions.is_empty() {
        eprintln!("usage: follow ADDR TAGS... (give at least one tag list)");
        std::process::exit(2);
    }
    let stdout = std::io::stdout();
    let result = follow(addr, subscriptions, |event| {
        let mut out = stdout.lock();
        let written = match event {
            Event::Message(m) => write!(out, "{} ", m.tags).and_then(|()| out.write_all(&m.data)),
            Event::Dropped { count, by } => {
                let who = match by {
                    DroppedBy::Server => "the server",
                    DroppedBy::Client => "this program",
                };
                write!(out, "[{count} messages dropped by {who}: we were too slow]")
            }
        };
        match written.and_then(|()| writeln!(out)) {
            Ok(()) => ControlFlow::Continue(()),
            // stdout is gone (`| head`): stop.
            Err(_) => ControlFlow::Break(()),
        }
    });
    if let Err(e) = result {
        eprintln!("follow: {}", ErrorChain(&e));
        std::process::exit(1);
    }
}

/// Follows `subscriptions` (tag lists such as `"disk,web01"`) on the server at `addr`, handing
/// every event to `on_event` until it returns `Break`.
///
/// When the connection is lost, or cannot be made, it connects again after a wait that grows
/// from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`], and subscribes again. It gives up only on errors
/// that another attempt would repeat: a tag list the client or the server refuses.
///
/// # Errors
/// A tag list is invalid, or the server refused a subscription.
pub fn follow<S: AsRef<str>>(
    addr: &str,
    subscriptions: &[S],
    mut on_event: impl FnMut(Event) -> ControlFlow<()>,
) -> Result<(), Error> {
    let options = Options::new().connect_timeout(Duration::from_secs(2));
    let mut backoff = FIRST_BACKOFF;
    let mut connected_before = false;
    loop {
        let failure = match options.connect(addr) {
            Ok(client) => {
                if connected_before {
                    eprintln!(
                        "follow: connected again to {addr}; messages published meanwhile were missed"
                    );
                }
                connected_before = true;
                match run(&client, subscriptions, &mut backoff, &mut on_event) {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        match failure {
            // Another attempt would be refused the same way.
            Error::Invalid(_) | Error::Server(_) => return Err(failure),
            e => {
                eprintln!(
                    "follow: {}; connecting again in {backoff:?}",
                    ErrorChain(&e)
                );
                thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One connection's life: subscribe, then hand over events until `on_event` stops (`Ok`) or
/// the connection ends (`Err`).
fn run<S: AsRef<str>>(
    client: &Client,
    subscriptions: &[S],
    backoff: &mut Duration,
    on_event: &mut impl FnMut(Event) -> ControlFlow<()>,
) -> Result<(), Error> {
    for tags in subscriptions {
        client.subscribe(tags.as_ref())?;
    }
    // Connected and subscribed: the next loss starts with short waits again.
    *backoff = FIRST_BACKOFF;
    for event in client.events() {
        if on_event(event?).is_break() {
            return Ok(());
        }
    }
    unreachable!("events() ends only after an error")
}
