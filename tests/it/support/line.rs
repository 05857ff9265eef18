//! The line-protocol client.

use super::TIMEOUT;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

/// A line-protocol client. Reads fail the test after [`TIMEOUT`].
pub struct LineClient {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl LineClient {
    pub fn connect(addr: SocketAddr) -> LineClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        // A command and its `ping` go out at once, without Nagle's 40 ms wait.
        stream.set_nodelay(true).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        LineClient { reader, stream }
    }

    /// Sends one line (a `\n` is added).
    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    /// Sends bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next line, without its `\n`; fails the test on timeout or end of stream.
    pub fn line(&mut self) -> String {
        String::from_utf8(self.line_bytes()).expect("utf-8 line")
    }

    /// The next line as bytes, without its `\n`.
    pub fn line_bytes(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut buf)
            .expect("read a line before the timeout");
        assert!(n > 0, "connection closed while a line was expected");
        assert_eq!(buf.pop(), Some(b'\n'), "line ends with \\n");
        buf
    }

    /// Expects exactly this line next.
    pub fn expect(&mut self, want: &str) {
        assert_eq!(self.line(), want);
    }

    /// Sends `ping` and returns every line that came before the `pong`.
    pub fn sync(&mut self) -> Vec<String> {
        self.send("ping");
        let mut before = Vec::new();
        loop {
            let l = self.line();
            if l == "pong" {
                return before;
            }
            before.push(l);
        }
    }

    /// Sends `ping` and asserts that nothing arrived before the `pong`.
    pub fn ping(&mut self) {
        assert_eq!(
            self.sync(),
            Vec::<String>::new(),
            "nothing expected before pong"
        );
    }

    /// Reads until the server closes the connection; returns what came.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        self.reader
            .read_to_end(&mut rest)
            .expect("server closes before the timeout");
        rest
    }
}

/// A line client whose socket has a small receive buffer, so that it stalls the server's
/// writes to it after a few kilobytes when it stops reading.
pub fn small_window_client(addr: SocketAddr) -> LineClient {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).expect("connect");
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    LineClient {
        reader: BufReader::new(stream.try_clone().unwrap()),
        stream,
    }
}

/// Sends `raw` as it is, expects exactly the line `want` back, then proves with a `ping` that
/// the connection is still alive and nothing else came.
pub fn expect_error(c: &mut LineClient, raw: &[u8], want: &str) {
    c.send_raw(raw);
    let got = c.line_bytes();
    assert_eq!(
        String::from_utf8_lossy(&got),
        want,
        "reply to {:?}",
        String::from_utf8_lossy(raw)
    );
    c.ping();
}
