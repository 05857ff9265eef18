//! The command-line client's commands (`mist publish ...`), each a few calls of
//! [`mist::Client`] and the printing of what it returns.

use crate::cli::Command;
use mist::Client;
use mist::client::{Error, Event};
use std::io::{self, BufRead, BufReader, BufWriter, Write};

/// Why a command failed; `main` prints it with its causes after `mist: ` and exits with
/// code 1.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Client(#[from] Error),
    /// `publish TAGS -`: the reasons were printed as they came.
    #[error("some messages were refused")]
    Refused,
    #[error("cannot read stdin")]
    Stdin(#[source] io::Error),
    #[error("`mist bench` is not a client command")]
    NotAClientCommand,
}

/// Runs one client command against the server at `addr`. Admin commands send `auth` first when
/// there is an `admin_token`.
///
/// # Errors
/// The server cannot be reached, or it refused the command.
pub fn run(addr: &str, admin_token: Option<&str>, cmd: Command) -> Result<(), Failure> {
    let client = Client::connect(addr)?;
    let admin = matches!(
        cmd,
        Command::Register(_)
            | Command::Unregister(_)
            | Command::Set(_)
            | Command::Unset(_)
            | Command::Tags(_)
    );
    if let (true, Some(token)) = (admin, admin_token) {
        client.auth(token)?;
    }
    match cmd {
        Command::Ping(_) => {
            client.ping()?;
            println!("pong");
        }
        Command::Publish(p) if p.data == "-" => publish_stdin(&client, &p.tags)?,
        Command::Publish(p) => {
            client.publish(&p.tags, as_line(p.data.as_bytes()))?;
            barrier(&client)?;
        }
        Command::Subscribe(s) => subscribe(&client, &s.tags, s.with_tags)?,
        Command::Unsubscribe(u) => client.unsubscribe(&u.tags)?,
        Command::List(_) => {
            let sets: Vec<String> = client.list()?.iter().map(|s| format!("[{s}]")).collect();
            println!("list [{}]", sets.join(" "));
        }
        Command::Register(r) => client.register(&r.tags, &r.token)?,
        Command::Unregister(u) => client.unregister(&u.token)?,
        Command::Set(s) => client.set(&s.tags, &s.token)?,
        Command::Unset(u) => client.unset(&u.tags, &u.token)?,
        Command::Tags(t) => println!("{}", client.tags(&t.token)?.join(",")),
        // main runs `mist bench` and `mist top` itself.
        Command::Bench(_) | Command::Top(_) => return Err(Failure::NotAClientCommand),
    }
    Ok(())
}

/// The data of a message given on the command line or read from a line of stdin: without one
/// `\r` at its end, which the line protocol would drop anyway (so CRLF input works as it does
/// with `nc -C`).
fn as_line(data: &[u8]) -> &[u8] {
    data.strip_suffix(b"\r").unwrap_or(data)
}

/// `ping`, reporting a refused publish with the server's own reason.
fn barrier(client: &Client) -> Result<(), Error> {
    match client.ping() {
        Err(Error::Refused { first, .. }) => Err(Error::Server(first)),
        other => other,
    }
}

/// `mist subscribe TAGS`: prints deliveries until the server goes away.
fn subscribe(client: &Client, tags: &str, with_tags: bool) -> Result<(), Failure> {
    client.subscribe(tags)?;
    let mut out = BufWriter::new(io::stdout().lock());
    loop {
        // Print what has arrived in one go; flush before waiting for more.
        let event = match client.try_recv()? {
            Some(event) => event,
            None => {
                if out.flush().is_err() {
                    // Whoever read our output is gone (`| head -1`): that is a normal end.
                    return Ok(());
                }
                client.recv()?
            }
        };
        match event {
            Event::Message(m) => {
                let written = if with_tags {
                    write!(out, "{} ", m.tags)
                } else {
                    Ok(())
                };
                if written
                    .and_then(|()| out.write_all(&m.data))
                    .and_then(|()| out.write_all(b"\n"))
                    .is_err()
                {
                    return Ok(());
                }
            }
            Event::Dropped { count, by } => {
                // Keep the order on the terminal: what came before the loss first.
                let _ = out.flush();
                let whose = match by {
                    mist::client::DroppedBy::Server => "",
                    mist::client::DroppedBy::Client => " (in this client)",
                };
                eprintln!("mist: slow consumer: dropped {count} messages{whose}");
            }
        }
    }
}

/// `mist publish TAGS -`: one message per line of stdin. A line that cannot be published is
/// reported and skipped; the final `ping` tells which ones the server refused.
fn publish_stdin(client: &Client, tags: &str) -> Result<(), Failure> {
    let mut stdin = BufReader::new(io::stdin().lock());
    let mut line = Vec::new();
    let mut failed = false;
    loop {
        line.clear();
        if stdin.read_until(b'\n', &mut line).map_err(Failure::Stdin)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        match client.publish(tags, as_line(&line)) {
            Ok(()) => {}
            Err(e @ (Error::Invalid(_) | Error::Data(_))) => {
                eprintln!("mist: {e}");
                failed = true;
            }
            Err(e) => return Err(e.into()),
        }
        // Flush when nothing more is waiting on stdin, so `tail -f` lines go out at once.
        if stdin.buffer().is_empty() {
            client.flush()?;
        }
    }
    if let Err(e) = barrier(client) {
        match e {
            Error::Server(reason) => {
                eprintln!("mist: {reason}");
                failed = true;
            }
            e => return Err(e.into()),
        }
    }
    if failed {
        return Err(Failure::Refused);
    }
    Ok(())
}
