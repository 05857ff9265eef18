//! The command-line client: `mist publish`, `mist subscribe` and the rest, over the line
//! protocol.
//!
//! Each command ends with a `ping`, and the client waits for the `pong`: that is the barrier that
//! proves every earlier command was applied, and lets an `error` reply be reported with exit
//! code 1.

use crate::cli::Command;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// How long the client waits for a reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it tries to connect to one address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("{0}")]
    Server(String),
    #[error("connection to the server failed: {0}")]
    Io(#[from] io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("unexpected reply from the server: {0}")]
    Unexpected(String),
    #[error("{0}")]
    Usage(String),
}

/// Runs one client command against the server at `addr`.
///
/// # Errors
/// The server cannot be reached, or it answered with an error.
pub fn run(addr: &str, admin_token: Option<&str>, cmd: Command) -> Result<(), ClientError> {
    let mut conn = Conn::connect(addr)?;
    let admin = matches!(
        cmd,
        Command::Register(_)
            | Command::Unregister(_)
            | Command::Set(_)
            | Command::Unset(_)
            | Command::Tags(_)
    );
    if let (true, Some(token)) = (admin, admin_token) {
        conn.send(&format!("auth {token}"))?;
    }
    match cmd {
        Command::Ping(_) => {
            conn.send("ping")?;
            conn.expect("pong")?;
            println!("pong");
            Ok(())
        }
        Command::Publish(p) if p.data == "-" => publish_stdin(conn, &p.tags),
        Command::Publish(p) => {
            let data = one_line(&p.data)?;
            conn.command(&format!("publish {} {data}", p.tags))
        }
        Command::Subscribe(s) => subscribe(conn, &s.tags, s.with_tags),
        Command::Unsubscribe(u) => conn.command(&format!("unsubscribe {}", u.tags)),
        Command::List(_) => {
            conn.send("list")?;
            let reply = conn.expect_prefix("list ")?;
            println!("{reply}");
            Ok(())
        }
        Command::Register(r) => conn.command(&format!("register {} {}", r.tags, r.token)),
        Command::Unregister(u) => conn.command(&format!("unregister {}", u.token)),
        Command::Set(s) => conn.command(&format!("set {} {}", s.tags, s.token)),
        Command::Unset(u) => conn.command(&format!("unset {} {}", u.tags, u.token)),
        // main runs `mist bench` itself; it is not a single client command.
        Command::Bench(_) => Err(ClientError::Usage(
            "`mist bench` is not a client command".into(),
        )),
        Command::Tags(t) => {
            conn.send(&format!("tags {}", t.token))?;
            let reply = conn.expect_prefix("tags ")?;
            // `tags TOKEN a,b` or `tags TOKEN`: print the list only.
            let list = reply[5..].split_once(' ').map_or("", |(_, tags)| tags);
            println!("{list}");
            Ok(())
        }
    }
}

fn one_line(data: &str) -> Result<&str, ClientError> {
    if data.contains('\n') {
        return Err(ClientError::Usage(
            "a message cannot contain a newline".into(),
        ));
    }
    Ok(data)
}

/// A line-protocol connection.
struct Conn {
    writer: BufWriter<TcpStream>,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn connect(addr: &str) -> Result<Conn, ClientError> {
        let err = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address found");
        for a in addr.to_socket_addrs().map_err(err)? {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(err)?;
                    let _ = stream.set_nodelay(true);
                    let reader = BufReader::new(stream.try_clone().map_err(err)?);
                    return Ok(Conn {
                        writer: BufWriter::new(stream),
                        reader,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(err(last))
    }

    fn send(&mut self, line: &str) -> io::Result<()> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")?;
        self.writer.flush()
    }

    /// Sends a command that has no reply on success, then proves it worked with `ping`.
    fn command(&mut self, line: &str) -> Result<(), ClientError> {
        self.send(&format!("{line}\nping"))?;
        self.expect("pong").map(drop)
    }

    fn read_line(&mut self) -> Result<String, ClientError> {
        let mut buf = Vec::new();
        if self.reader.read_until(b'\n', &mut buf)? == 0 {
            return Err(ClientError::Closed);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Reads the next line, turning `error ...` into an error.
    fn reply(&mut self) -> Result<String, ClientError> {
        let line = self.read_line()?;
        match line.strip_prefix("error ") {
            Some(reason) => Err(ClientError::Server(reason.to_string())),
            None => Ok(line),
        }
    }

    fn expect(&mut self, want: &str) -> Result<String, ClientError> {
        let line = self.reply()?;
        if line == want {
            Ok(line)
        } else {
            Err(ClientError::Unexpected(line))
        }
    }

    fn expect_prefix(&mut self, prefix: &str) -> Result<String, ClientError> {
        let line = self.reply()?;
        if line.starts_with(prefix) {
            Ok(line)
        } else {
            Err(ClientError::Unexpected(line))
        }
    }
}

/// `mist subscribe TAGS`: prints deliveries until the server goes away.
fn subscribe(mut conn: Conn, tags: &str, with_tags: bool) -> Result<(), ClientError> {
    conn.command(&format!("subscribe {tags}"))?;
    conn.reader.get_ref().set_read_timeout(None)?;
    let stdout = io::stdout();
    let mut line = Vec::new();
    loop {
        line.clear();
        if conn.reader.read_until(b'\n', &mut line)? == 0 {
            return Err(ClientError::Closed);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if let Some(rest) = line.strip_prefix(b"publish ") {
            let shown = if with_tags {
                rest
            } else {
                rest.iter()
                    .position(|&b| b == b' ')
                    .map_or(&rest[..0], |i| &rest[i + 1..])
            };
            let mut out = stdout.lock();
            let written = out.write_all(shown).and_then(|()| out.write_all(b"\n"));
            if written.and_then(|()| out.flush()).is_err() {
                // Whoever read our output is gone (`| head -1`): that is a normal end.
                return Ok(());
            }
        } else if let Some(reason) = line.strip_prefix(b"error ") {
            eprintln!("mist: {}", String::from_utf8_lossy(reason));
        }
    }
}

/// `mist publish TAGS -`: one message per line of stdin, then a final `ping` to learn whether
/// any of them was refused.
fn publish_stdin(conn: Conn, tags: &str) -> Result<(), ClientError> {
    let Conn {
        mut writer,
        mut reader,
    } = conn;
    let failed = Arc::new(AtomicBool::new(false));
    let replies = {
        let failed = Arc::clone(&failed);
        reader.get_ref().set_read_timeout(None)?;
        thread::spawn(move || -> Result<(), ClientError> {
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    return Err(ClientError::Closed);
                }
                let l = line.trim_end_matches('\n');
                if l == "pong" {
                    return Ok(());
                }
                if let Some(reason) = l.strip_prefix("error ") {
                    eprintln!("mist: {reason}");
                    failed.store(true, Ordering::Relaxed);
                }
            }
        })
    };
    let prefix = format!("publish {tags} ");
    let mut stdin = BufReader::new(io::stdin().lock());
    let mut line = Vec::new();
    loop {
        line.clear();
        if stdin.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        writer.write_all(prefix.as_bytes())?;
        writer.write_all(&line)?;
        writer.write_all(b"\n")?;
        // Flush when nothing more is waiting on stdin, so `tail -f` lines go out at once.
        if stdin.buffer().is_empty() {
            writer.flush()?;
        }
    }
    writer.write_all(b"ping\n")?;
    writer.flush()?;
    replies
        .join()
        .map_err(|_| ClientError::Unexpected("reply reader panicked".into()))??;
    if failed.load(Ordering::Relaxed) {
        return Err(ClientError::Server("some messages were refused".into()));
    }
    Ok(())
}
