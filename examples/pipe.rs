//! Publishes every line of stdin to mist with [`mist::Client`]: a log shipper in a few lines.
//!
//! # Running it
//!
//! ```text
//! tail -f /var/log/app.log | cargo run --example pipe -- 127.0.0.1:1445 logs,app
//! ```
//!
//! Each line (without its line ending) is one message tagged `logs,app`. Lines are buffered and
//! sent whenever stdin has nothing more waiting, so a burst goes out in a few writes and a
//! quiet `tail -f` line goes out at once. At the end of stdin a `ping` waits until the server
//! has taken everything, and reports messages it refused. The exit code is 1 when any line
//! could not be published.

use mist::client::{Client, Error};
use mist::{ErrorChain, TagSet};
use std::io::{self, BufRead, BufReader};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, tags] = args.as_slice() else {
        eprintln!("usage: pipe ADDR TAGS (e.g. pipe 127.0.0.1:1445 logs,app)");
        return ExitCode::from(2);
    };
    // Checked once here rather than on every line.
    let tags: TagSet = match tags.parse() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("pipe: {e}");
            return ExitCode::from(2);
        }
    };
    match pipe(addr, &tags) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(skipped) => {
            eprintln!("pipe: {skipped} line(s) were not published");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("pipe: {}", ErrorChain(&e));
            ExitCode::from(1)
        }
    }
}

/// Publishes the lines of stdin; returns how many could not be published.
fn pipe(addr: &str, tags: &TagSet) -> Result<u64, Error> {
    let client = Client::connect(addr)?;
    let mut stdin = BufReader::new(io::stdin().lock());
    let mut line = Vec::new();
    let mut skipped = 0;
    loop {
        line.clear();
        if stdin.read_until(b'\n', &mut line).map_err(Error::Io)? == 0 {
            break;
        }
        let data = line.strip_suffix(b"\n").unwrap_or(&line);
        // Windows line endings: the `\r` is not part of the message.
        let data = data.strip_suffix(b"\r").unwrap_or(data);
        match client.publish(tags, data) {
            Ok(()) => {}
            // Too long for the server, say: skip this line, go on with the next.
            Err(e @ Error::Data(_)) => {
                eprintln!("pipe: line skipped: {e}");
                skipped += 1;
            }
            Err(e) => return Err(e),
        }
        if stdin.buffer().is_empty() {
            client.flush()?;
        }
    }
    match client.ping() {
        Ok(()) => Ok(skipped),
        Err(Error::Refused { count, first }) => {
            eprintln!("pipe: the server refused {count} line(s), the first because: {first}");
            Ok(skipped + count)
        }
        Err(e) => Err(e),
    }
}
