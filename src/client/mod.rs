//! A blocking client for mist's line protocol: [`Client`].
//!
//! ```
//! use mist::client::{Client, Event};
//!
//! # let server = mist::doc_server();
//! # let addr = server.tcp_addr();
//! let client = Client::connect(addr)?;
//! client.subscribe("alerts")?;
//! client.publish("alerts,disk", b"disk 91% full")?;
//! client.ping()?; // sends what is buffered, and waits until the server has applied it
//! if let Event::Message(m) = client.recv()? {
//!     assert_eq!(m.data, b"disk 91% full");
//! }
//! # Ok::<(), mist::client::Error>(())
//! ```
//!
//! # How it works
//!
//! A connection has one reader thread, the only reader of the socket. It puts deliveries and
//! slow-consumer notices into a bounded queue that [`Client::recv`] takes from, and hands each
//! reply to the command waiting for it. [`Client`] is a cheap handle for one thread: clone it
//! to give each thread its own, so that one publishes while another blocks in `recv` and a
//! third asks for [`Client::list`]. Lines are written under a lock that is held only while
//! writing, never while waiting.
//!
//! Publishes are buffered in their handle, without a lock, and not answered; every other
//! command waits for its reply.
//! See `examples/follow.rs` for following a tag stream across reconnections, and
//! `examples/pipe.rs` for publishing lines from stdin.
//!
//! # Layout
//!
//! - `buffer`: the write buffer.
//! - `error`: [`Error`], and the server's refusals as [`ServerError`].
//! - `event`: [`Event`], [`Message`].
//! - `wire`: the protocol's lines from the client's side (pure).
//! - `replies`: matching replies to the commands that wait for them (pure).
//! - `inbox`: the bounded queue of received events.
//! - `reader`: the reader thread.

mod buffer;
mod error;
mod event;
mod inbox;
mod reader;
mod replies;
mod wire;

pub use error::{DataError, Error, ServerError, ServerErrorKind};
pub use event::{DroppedBy, Event, Message};

use crate::tags::{self, TagError, TagSet};
use buffer::Buffer;
use inbox::{Inbox, Limits};
use parking_lot::Mutex;
use replies::{Answer, End, Replies, Waiting};
use std::cell::RefCell;
use std::fmt;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Lines from the server may be this long even when [`Options::max_line_bytes`] is lower: a
/// `list` reply for thousands of subscriptions is long, and deliveries are bounded by the
/// server's own `max_line_bytes`, which this client may not know.
const MIN_RECEIVE_LINE: usize = 16 << 20;

/// How a [`Client`] connects, and the limits it keeps. `Options::new().connect(addr)` is
/// [`Client::connect`].
///
/// ```
/// use mist::client::Options;
/// use std::time::Duration;
///
/// # let server = mist::doc_server();
/// # let addr = server.tcp_addr();
/// let client = Options::new()
///     .connect_timeout(Duration::from_secs(1))
///     .read_timeout(Duration::from_secs(5))
///     .connect(addr)?;
/// client.ping()?;
/// # Ok::<(), mist::client::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    max_tags: usize,
    max_line_bytes: usize,
    recv_msgs: usize,
    recv_bytes: usize,
    write_buffer: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_tags: tags::DEFAULT_MAX_TAGS,
            max_line_bytes: crate::Config::default().max_line_bytes,
            recv_msgs: 65_536,
            recv_bytes: 64 << 20,
            write_buffer: 64 * 1024,
        }
    }
}

impl Options {
    /// The defaults: connect timeout 5 s, read and write timeouts 30 s, the server's default
    /// limits (32 tags, lines of 1 MiB), a receive buffer of 65,536 messages or 64 MiB, and a
    /// write buffer of 64 KiB.
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = mist::client::Options::new().connect(addr)?; // as Client::connect(addr)
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    pub fn new() -> Options {
        Options::default()
    }

    /// How long connecting to one address may take.
    ///
    /// ```
    /// use mist::client::{Error, Options};
    /// use std::time::Duration;
    ///
    /// // A port where nothing listens any more.
    /// let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    /// let quick = Options::new().connect_timeout(Duration::from_millis(500));
    /// assert!(matches!(quick.connect(addr), Err(Error::Connect { .. })));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Options {
        self.connect_timeout = timeout;
        self
    }

    /// How long a command waits for the server's reply before it fails with
    /// [`Error::Timeout`]. Receiving messages has no timeout of its own: see
    /// [`Client::recv_timeout`].
    ///
    /// ```
    /// use mist::client::Options;
    /// use std::time::Duration;
    ///
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = Options::new().read_timeout(Duration::from_secs(2)).connect(addr)?;
    /// client.ping()?; // fails with Error::Timeout if no pong comes within 2 s
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    pub fn read_timeout(mut self, timeout: Duration) -> Options {
        self.read_timeout = timeout;
        self
    }

    /// How long a write may make no progress (the server not reading) before the connection
    /// is given up.
    ///
    /// ```
    /// use mist::client::Options;
    /// use std::time::Duration;
    ///
    /// let options = Options::new().write_timeout(Duration::from_secs(10));
    /// # let server = mist::doc_server();
    /// # options.connect(server.tcp_addr())?;
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    pub fn write_timeout(mut self, timeout: Duration) -> Options {
        self.write_timeout = timeout;
        self
    }

    /// The most distinct tags in a tag list; set it to the server's `max_tags` when that is
    /// not the default 32.
    ///
    /// ```
    /// use mist::client::{Error, Options};
    /// use mist::TagError;
    ///
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = Options::new().max_tags(2).connect(addr)?;
    /// assert!(matches!(
    ///     client.publish("a,b,c", "x"),
    ///     Err(Error::Invalid(TagError::TooMany(2)))
    /// ));
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    pub fn max_tags(mut self, max: usize) -> Options {
        self.max_tags = max;
        self
    }

    /// The longest line the client sends, `publish TAGS DATA` included; set it to the
    /// server's `max_line_bytes` when that is not the default 1 MiB.
    ///
    /// ```
    /// use mist::client::{DataError, Error, Options};
    ///
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = Options::new().max_line_bytes(100).connect(addr)?;
    /// assert!(matches!(
    ///     client.publish("a", vec![b'x'; 100]),
    ///     Err(Error::Data(DataError::TooLong { len: 110, max: 100 }))
    /// ));
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    pub fn max_line_bytes(mut self, max: usize) -> Options {
        self.max_line_bytes = max;
        self
    }

    /// How many received messages, and how many bytes of their tags and data, wait for the
    /// program before newer ones are dropped (and reported as [`Event::Dropped`] by
    /// [`DroppedBy::Client`]).
    ///
    /// ```
    /// use mist::client::{DroppedBy, Event, Options};
    ///
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = Options::new().recv_buffer(2, 1 << 20).connect(addr)?;
    /// client.subscribe("n")?;
    /// for i in 0..5 {
    ///     client.publish("n", format!("{i}"))?;
    /// }
    /// client.ping()?; // all five have arrived: two are kept
    /// assert!(matches!(client.recv()?, Event::Message(_)));
    /// assert!(matches!(client.recv()?, Event::Message(_)));
    /// assert_eq!(client.recv()?, Event::Dropped { count: 3, by: DroppedBy::Client });
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    pub fn recv_buffer(mut self, msgs: usize, bytes: usize) -> Options {
        self.recv_msgs = msgs.max(1);
        self.recv_bytes = bytes;
        self
    }

    /// How many bytes of publishes a handle buffers before it writes them without a
    /// [`Client::flush`] (each clone has a buffer of its own, allocated when it first
    /// publishes).
    ///
    /// ```
    /// use mist::client::Options;
    ///
    /// // Fewer, larger writes for a program that publishes many messages at once.
    /// let options = Options::new().write_buffer(256 * 1024);
    /// # let server = mist::doc_server();
    /// # options.connect(server.tcp_addr())?;
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    pub fn write_buffer(mut self, bytes: usize) -> Options {
        self.write_buffer = bytes;
        self
    }

    /// Connects to a mist server's line-protocol port, trying each address `addr` resolves
    /// to, and checks with a `ping` that it answers.
    ///
    /// # Errors
    /// [`Error::Connect`] when no address takes the connection; [`Error::Server`] when the
    /// server refuses it (at `max_connections`); [`Error::Timeout`] or
    /// [`Error::Protocol`] when what answers is not a mist server.
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let options = mist::client::Options::new();
    /// let publisher = options.connect(addr)?;
    /// let subscriber = options.connect(addr)?;
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    pub fn connect<A: ToSocketAddrs + fmt::Display>(&self, addr: A) -> Result<Client, Error> {
        let connect_error = |source| Error::Connect {
            addr: addr.to_string(),
            source,
        };
        for timeout in [self.connect_timeout, self.read_timeout, self.write_timeout] {
            if timeout.is_zero() {
                return Err(connect_error(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a timeout of zero",
                )));
            }
        }
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address found");
        for a in addr.to_socket_addrs().map_err(connect_error)? {
            match TcpStream::connect_timeout(&a, self.connect_timeout) {
                Ok(stream) => {
                    let (client, hello) = self.start(stream).map_err(connect_error)?;
                    client.wait(&hello)?;
                    return Ok(client);
                }
                Err(e) => last = e,
            }
        }
        Err(connect_error(last))
    }

    /// Sets up a connected socket: its options, the first `ping`, the reader thread, the
    /// write half. Returns the client and where the `ping`'s answer will come.
    fn start(&self, stream: TcpStream) -> io::Result<(Client, Answers)> {
        // No Nagle delay (commands go out when flushed), keepalive to notice a server that
        // vanished, and the write timeout: the same options the server gives its sockets.
        crate::net::configure_socket(&stream, self.write_timeout)?;
        // The `ping` is waiting before the reader starts: a server that is full sends its
        // `error` at once, and it must find the `ping` to belong to.
        let mut replies = Replies::default();
        let (reply, hello) = mpsc::sync_channel(1);
        replies
            .push(Waiting::Confirm { reply, error: None })
            .expect("a new connection has not ended");
        (&stream).write_all(b"ping\n")?;
        let sock = Arc::new(stream);
        let shared = Arc::new(Shared {
            replies: Mutex::new(replies),
            inbox: Inbox::new(Limits {
                msgs: self.recv_msgs,
                bytes: self.recv_bytes,
            }),
            closing: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        });
        let max_receive = self.max_line_bytes.max(MIN_RECEIVE_LINE);
        let reader = reader::spawn(Arc::clone(&sock), Arc::clone(&shared), max_receive)?;
        let client = Client {
            inner: Arc::new(Inner {
                wire: Mutex::new(Wire {
                    unpinged: false,
                    closed: false,
                }),
                sock,
                shared,
                options: self.clone(),
                reader: Mutex::new(Some(reader)),
            }),
            pending: RefCell::new(Buffer::new(self.write_buffer)),
        };
        Ok((client, hello))
    }
}

/// Where a command's caller waits for its answer.
type Answers = mpsc::Receiver<Result<Answer, Error>>;

/// A tag list a command takes: a comma-separated `str` or `String` (checked on every call),
/// or a [`TagSet`] (checked once, when it was made).
///
/// ```
/// use mist::{Client, TagSet};
///
/// # let server = mist::doc_server();
/// # let addr = server.tcp_addr();
/// let client = Client::connect(addr)?;
/// client.publish("metrics,web01", "cpu 12")?;
/// let tags: TagSet = "metrics,web01".parse()?;
/// for i in 0..3 {
///     client.publish(&tags, format!("cpu {i}"))?;
/// }
/// client.ping()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait TagList: private::Sealed {
    /// The list in a form the server takes, checked against the protocol's rules with at
    /// most `max_tags` distinct tags.
    ///
    /// ```
    /// use mist::client::TagList;
    /// use mist::{TagError, TagSet};
    ///
    /// assert_eq!("b,a".checked(32), Ok("b,a")); // the server sorts it
    /// assert_eq!("a,,b".checked(32), Err(TagError::EmptyTag));
    /// let set: TagSet = "b,a".parse()?;
    /// assert_eq!(set.checked(32), Ok("a,b"));
    /// assert_eq!(set.checked(1), Err(TagError::TooMany(1)));
    /// # Ok::<(), TagError>(())
    /// ```
    ///
    /// # Errors
    /// The first rule the list breaks.
    fn checked(&self, max_tags: usize) -> Result<&str, TagError>;
}

impl TagList for str {
    fn checked(&self, max_tags: usize) -> Result<&str, TagError> {
        tags::check_list(self.as_bytes(), max_tags)?;
        Ok(self)
    }
}

impl TagList for String {
    fn checked(&self, max_tags: usize) -> Result<&str, TagError> {
        self.as_str().checked(max_tags)
    }
}

impl TagList for TagSet {
    fn checked(&self, max_tags: usize) -> Result<&str, TagError> {
        // k tags take at least 2k - 1 bytes: most sets cannot have too many, uncounted.
        let most = self.as_str().len().div_ceil(2);
        if most > max_tags && self.len() > max_tags {
            return Err(TagError::TooMany(max_tags));
        }
        Ok(self.as_str())
    }
}

impl<T: TagList + ?Sized> TagList for &T {
    fn checked(&self, max_tags: usize) -> Result<&str, TagError> {
        (**self).checked(max_tags)
    }
}

mod private {
    pub trait Sealed {}
    impl Sealed for str {}
    impl Sealed for String {}
    impl Sealed for crate::tags::TagSet {}
    impl<T: Sealed + ?Sized> Sealed for &T {}
}

/// A connection to a mist server over the line protocol.
///
/// A `Client` is a handle on the connection, used by one thread at a time (it is `Send`, not
/// `Sync`): clone it to give another thread its own. All clones share the one connection,
/// which closes when the last is dropped. One thread may block in [`recv`](Client::recv)
/// while others publish or send commands on their clones; no lock is held while waiting for
/// the server.
///
/// Each clone buffers its own publishes, so that publishing takes no lock: they are written
/// when the buffer is full, or at [`flush`](Client::flush), [`ping`](Client::ping) or any
/// other command on the same clone, or when it is dropped. A `ping` is thus a barrier for
/// what its own clone published (and for what other clones had written by then).
///
/// ```
/// use mist::client::{Client, Event};
/// use std::thread;
///
/// # let server = mist::doc_server();
/// # let addr = server.tcp_addr();
/// let client = Client::connect(addr)?;
/// client.subscribe("jobs")?;
///
/// // A thread that receives on the same connection.
/// let receiver = client.clone();
/// let worker = thread::spawn(move || {
///     let mut done = 0;
///     for event in receiver.events() {
///         if let Event::Message(_) = event? {
///             done += 1;
///             if done == 100 {
///                 break;
///             }
///         }
///     }
///     Ok::<_, mist::client::Error>(done)
/// });
///
/// for i in 0..100 {
///     client.publish("jobs", format!("job {i}"))?;
/// }
/// client.flush()?;
/// assert_eq!(worker.join().unwrap()?, 100);
/// # Ok::<(), mist::client::Error>(())
/// ```
pub struct Client {
    inner: Arc<Inner>,
    /// This handle's publishes, not yet written. A `RefCell`: a handle is used by one thread
    /// at a time, so publishing needs no lock; the write half's lock is taken only to write
    /// the buffer out.
    pending: RefCell<Buffer>,
}

impl Clone for Client {
    /// Another handle on the same connection, with a buffer of its own.
    fn clone(&self) -> Client {
        Client {
            inner: Arc::clone(&self.inner),
            pending: RefCell::new(Buffer::new(self.inner.options.write_buffer)),
        }
    }
}

/// The connection behind every clone of a [`Client`].
struct Inner {
    /// The write half. A mutex: the lines of concurrent handles must not interleave, and the
    /// order of the waiting replies must be the order on the wire. Held while writing, never
    /// while waiting for a reply.
    wire: Mutex<Wire>,
    sock: Arc<TcpStream>,
    shared: Arc<Shared>,
    options: Options,
    /// The reader thread, joined by [`Client::close`].
    reader: Mutex<Option<JoinHandle<()>>>,
}

/// What the reader thread and the callers share.
pub(crate) struct Shared {
    /// Commands waiting for replies. A mutex taken briefly, by writers after their own lock
    /// (never the other way round) and by the reader thread.
    replies: Mutex<Replies>,
    /// Received events.
    inbox: Inbox,
    /// The program closed its side: the end of the stream is then expected.
    closing: AtomicBool,
    /// The reader thread is done; lets `publish` fail fast without taking a lock.
    ended: AtomicBool,
}

impl Shared {
    /// Ends the connection for everyone: waiting commands, later commands and receivers.
    fn finish(&self, end: End) {
        self.replies.lock().end(end.clone());
        self.ended.store(true, Ordering::Release);
        self.inbox.end(end);
    }

    /// Why the connection ended (it has).
    fn end_error(&self) -> Error {
        self.replies
            .lock()
            .ended()
            .map_or(Error::Closed, End::error)
    }
}

/// The state of the write half (the socket itself is written through `&TcpStream`).
struct Wire {
    /// Publishes were written since the last `ping`: another command must send one first,
    /// so that an `error` for a publish cannot be taken for the command's.
    unpinged: bool,
    /// [`Client::close`] was called.
    closed: bool,
}

impl Client {
    /// Connects with the default [`Options`].
    ///
    /// ```
    /// use mist::Client;
    ///
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr().to_string();
    /// let client = Client::connect(addr.as_str())?; // e.g. "127.0.0.1:1445"
    /// client.ping()?;
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// See [`Options::connect`].
    pub fn connect<A: ToSocketAddrs + fmt::Display>(addr: A) -> Result<Client, Error> {
        Options::new().connect(addr)
    }

    /// Publishes `data` with `tags` to every client subscribed to a subset of them.
    ///
    /// The line is buffered in this handle: it goes out when the buffer is full, or at
    /// [`flush`](Self::flush), [`ping`](Self::ping) or any other command on this handle, or
    /// when the handle is dropped. The server does not answer a publish; the
    /// next `ping` reports the ones it refused (which, with the tags and data checked here,
    /// happens only when its limits are lower than this client's [`Options`]).
    ///
    /// ```
    /// use mist::client::{Client, DataError, Error};
    ///
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = Client::connect(addr)?;
    /// client.publish("logs,web01", "GET / 200")?;
    /// client.publish("logs,web01", [0xde, 0xad, 0xbe, 0xef])?; // any bytes but a newline
    /// assert!(matches!(
    ///     client.publish("logs", "two\nlines"),
    ///     Err(Error::Data(DataError::Newline))
    /// ));
    /// client.flush()?;
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Invalid`] or [`Error::Data`] when the tags or the data cannot be published
    /// (nothing is sent); otherwise the connection failed.
    pub fn publish<T: TagList + ?Sized>(
        &self,
        tags: &T,
        data: impl AsRef<[u8]>,
    ) -> Result<(), Error> {
        let data = data.as_ref();
        let o = &self.inner.options;
        let tags = tags.checked(o.max_tags)?;
        wire::check_data(tags.len(), data, o.max_line_bytes)?;
        self.open()?;
        let line = [b"publish ".as_slice(), tags.as_bytes(), b" ", data, b"\n"];
        if self.pending.borrow_mut().try_append(&line) {
            return Ok(());
        }
        // The buffer is full: write it out, and start the next one with this line (or, when
        // the line is longer than the whole buffer, write it too).
        self.send(&[], None)?;
        if self.pending.borrow_mut().try_append(&line) {
            return Ok(());
        }
        self.send(&line, None)
    }

    /// Sends what this handle buffered. It does not wait for the server:
    /// [`ping`](Self::ping) does.
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = mist::Client::connect(addr)?;
    /// client.publish("clock", "tick")?;
    /// client.flush()?; // on its way now
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// The connection failed.
    pub fn flush(&self) -> Result<(), Error> {
        if self.pending.borrow().is_empty() {
            return self.open();
        }
        self.send(&[], None)
    }

    /// Sends what this handle buffered and a `ping`, and waits for the `pong`: when it
    /// returns, the server has applied every command sent before it on this connection, and
    /// every message delivered to the connection before the `pong` is waiting in
    /// [`recv`](Self::recv).
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = mist::Client::connect(addr)?;
    /// client.subscribe("a")?;
    /// client.publish("a", "one")?;
    /// client.ping()?;
    /// assert!(client.try_recv()?.is_some()); // already here
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Refused`] when the server refused publishes sent since the previous `ping`
    /// (the `ping` itself went through); [`Error::Timeout`]; or the connection failed.
    pub fn ping(&self) -> Result<(), Error> {
        self.request(&[b"ping\n"], false, |reply| Waiting::Ping(Some(reply)))
            .map(drop)
    }

    /// Subscribes this connection to every message whose tags include all of `tags`.
    /// Subscribing to the same set twice is one subscription.
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = mist::Client::connect(addr)?;
    /// client.subscribe("alerts,disk")?; // messages tagged with both
    /// client.subscribe("deploys")?;
    /// assert_eq!(client.list()?.len(), 2);
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Invalid`]; [`Error::Server`] when the server refused it (too many
    /// subscriptions); [`Error::Timeout`]; or the connection failed.
    pub fn subscribe<T: TagList + ?Sized>(&self, tags: &T) -> Result<(), Error> {
        let tags = tags.checked(self.inner.options.max_tags)?;
        self.confirm(format!("subscribe {tags}\n"))
    }

    /// Removes exactly the subscription to `tags` (also fine when there was none). Messages
    /// already on their way may still arrive.
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = mist::Client::connect(addr)?;
    /// client.subscribe("a,b")?;
    /// client.unsubscribe("b,a")?;
    /// assert!(client.list()?.is_empty());
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub fn unsubscribe<T: TagList + ?Sized>(&self, tags: &T) -> Result<(), Error> {
        let tags = tags.checked(self.inner.options.max_tags)?;
        self.confirm(format!("unsubscribe {tags}\n"))
    }

    /// This connection's subscriptions, sorted.
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = mist::Client::connect(addr)?;
    /// client.subscribe("b,a")?;
    /// client.subscribe("c")?;
    /// let subs: Vec<String> = client.list()?.iter().map(|s| s.to_string()).collect();
    /// assert_eq!(subs, ["a,b", "c"]);
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Timeout`], or the connection failed.
    pub fn list(&self) -> Result<Vec<TagSet>, Error> {
        match self.request(&[b"list\n"], true, Waiting::List)? {
            Answer::List(sets) => Ok(sets),
            other => unreachable!("a list waiter got {other:?}"),
        }
    }

    /// Sends `auth ADMIN_TOKEN`: on a server with an `admin_token`, the admin commands
    /// ([`register`](Self::register), [`unregister`](Self::unregister), [`set`](Self::set),
    /// [`unset`](Self::unset), [`tags`](Self::tags)) work on this connection after it.
    ///
    /// ```
    /// # let mut config = mist::doc_config();
    /// # config.admin_token = Some("s3cret".into());
    /// # let server = mist::doc_server_with(config);
    /// # let addr = server.tcp_addr();
    /// use mist::client::{Client, Error, ServerErrorKind};
    ///
    /// let client = Client::connect(addr)?;
    /// match client.register("alerts", "browser-token") {
    ///     Err(Error::Server(e)) => assert_eq!(e.kind(), ServerErrorKind::NotAllowed),
    ///     other => panic!("{other:?}"),
    /// }
    /// client.auth("s3cret")?;
    /// client.register("alerts", "browser-token")?;
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Server`] when the token is wrong or the server has none; [`Error::Timeout`];
    /// or the connection failed. The token is checked here only for what a line can carry.
    pub fn auth(&self, admin_token: &str) -> Result<(), Error> {
        if admin_token.is_empty() || admin_token.contains(['\n', '\r', ' ']) {
            return Err(Error::Invalid(TagError::TokenBadChar));
        }
        self.confirm(format!("auth {admin_token}\n"))
    }

    /// Creates `token` with `tags` (admin): WebSocket clients with the token may subscribe to
    /// sets that share a tag with it.
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// // Without an admin_token, admin commands work from loopback addresses.
    /// let client = mist::Client::connect(addr)?;
    /// client.register("alerts,deploys", "dashboard-token")?;
    /// assert_eq!(client.tags("dashboard-token")?, ["alerts", "deploys"]);
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Invalid`]; [`Error::Server`] when the token exists or admin commands are not
    /// allowed; [`Error::Timeout`]; or the connection failed.
    pub fn register<T: TagList + ?Sized>(&self, tags: &T, token: &str) -> Result<(), Error> {
        let tags = tags.checked(self.inner.options.max_tags)?;
        let token = tags::validate_token(token.as_bytes())?;
        self.confirm(format!("register {tags} {token}\n"))
    }

    /// Removes `token` (admin); WebSockets that authenticated with it are closed.
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = mist::Client::connect(addr)?;
    /// client.register("alerts", "old-token")?;
    /// client.unregister("old-token")?;
    /// assert!(client.tags("old-token").is_err());
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`register`](Self::register); an unknown token is an [`Error::Server`].
    pub fn unregister(&self, token: &str) -> Result<(), Error> {
        let token = tags::validate_token(token.as_bytes())?;
        self.confirm(format!("unregister {token}\n"))
    }

    /// Adds `tags` to `token` (admin).
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = mist::Client::connect(addr)?;
    /// client.register("a", "tok")?;
    /// client.set("b,c", "tok")?;
    /// assert_eq!(client.tags("tok")?, ["a", "b", "c"]);
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`register`](Self::register); an unknown token is an [`Error::Server`].
    pub fn set<T: TagList + ?Sized>(&self, tags: &T, token: &str) -> Result<(), Error> {
        let tags = tags.checked(self.inner.options.max_tags)?;
        let token = tags::validate_token(token.as_bytes())?;
        self.confirm(format!("set {tags} {token}\n"))
    }

    /// Removes `tags` from `token` (admin); WebSocket subscriptions that no longer share a tag
    /// with it are removed.
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = mist::Client::connect(addr)?;
    /// client.register("a,b", "tok")?;
    /// client.unset("a,b", "tok")?;
    /// assert!(client.tags("tok")?.is_empty());
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`register`](Self::register); an unknown token is an [`Error::Server`].
    pub fn unset<T: TagList + ?Sized>(&self, tags: &T, token: &str) -> Result<(), Error> {
        let tags = tags.checked(self.inner.options.max_tags)?;
        let token = tags::validate_token(token.as_bytes())?;
        self.confirm(format!("unset {tags} {token}\n"))
    }

    /// The tags of `token` (admin), sorted; empty when it has none.
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = mist::Client::connect(addr)?;
    /// client.register("b,a", "tok")?;
    /// assert_eq!(client.tags("tok")?, ["a", "b"]);
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`register`](Self::register); an unknown token is an [`Error::Server`].
    pub fn tags(&self, token: &str) -> Result<Vec<String>, Error> {
        let token = tags::validate_token(token.as_bytes())?;
        let line = format!("tags {token}\n");
        let token = token.to_string();
        match self.request(&[line.as_bytes()], true, |reply| Waiting::Tags {
            token,
            reply,
        })? {
            Answer::Tags(tags) => Ok(tags),
            other => unreachable!("a tags waiter got {other:?}"),
        }
    }

    /// The next message or notice, waiting as long as it takes.
    ///
    /// ```
    /// use mist::client::{Client, Event};
    ///
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = Client::connect(addr)?;
    /// client.subscribe("greetings")?;
    /// client.publish("greetings,en", "hello")?;
    /// client.flush()?;
    /// match client.recv()? {
    ///     Event::Message(m) => assert_eq!(m.data, b"hello"),
    ///     Event::Dropped { count, .. } => panic!("lost {count}"),
    /// }
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// The connection ended ([`Error::Closed`] when the server closed it), after every event
    /// that arrived before was received.
    pub fn recv(&self) -> Result<Event, Error> {
        self.inner
            .shared
            .inbox
            .take(None)
            .map(|e| e.expect("no deadline"))
    }

    /// The next message or notice, waiting at most `timeout`: `Ok(None)` when nothing
    /// arrived meanwhile.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = mist::Client::connect(addr)?;
    /// client.subscribe("quiet")?;
    /// assert!(client.recv_timeout(Duration::from_millis(10))?.is_none());
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Event>, Error> {
        self.inner.shared.inbox.take(Some(Instant::now() + timeout))
    }

    /// The next message or notice if one is waiting, without waiting.
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = mist::Client::connect(addr)?;
    /// assert!(client.try_recv()?.is_none());
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub fn try_recv(&self) -> Result<Option<Event>, Error> {
        self.inner.shared.inbox.take(Some(Instant::now()))
    }

    /// The messages and notices as they arrive: an iterator of [`recv`](Self::recv) that
    /// yields the error that ends the connection once, then stops.
    ///
    /// ```
    /// use mist::client::{Client, Event};
    ///
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = Client::connect(addr)?;
    /// client.subscribe("temp")?;
    /// for i in 0..3 {
    ///     client.publish("temp,kitchen", format!("{}", 20 + i))?;
    /// }
    /// client.flush()?;
    /// let readings: Vec<Vec<u8>> = client
    ///     .events()
    ///     .take(3)
    ///     .map(|e| match e? {
    ///         Event::Message(m) => Ok(m.data),
    ///         Event::Dropped { count, .. } => panic!("lost {count}"),
    ///     })
    ///     .collect::<Result<_, mist::client::Error>>()?;
    /// assert_eq!(readings, [b"20", b"21", b"22"]);
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    pub fn events(&self) -> Events<'_> {
        Events {
            client: self,
            done: false,
        }
    }

    /// Sends what this handle buffered, tells the server that nothing more comes, and waits
    /// (up to the read timeout) until it has closed its side, by which time it has applied
    /// everything sent. (What other clones still buffer is not sent: flush them first.) Events that arrived before can still be received; then `recv` fails with
    /// [`Error::Shutdown`], in every clone. Dropping the last clone closes the connection
    /// too, without waiting.
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = mist::Client::connect(addr)?;
    /// client.publish("jobs", "last one")?;
    /// client.close()?;
    /// assert!(matches!(client.ping(), Err(mist::client::Error::Shutdown)));
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    ///
    /// # Errors
    /// The buffered commands could not be sent, or the server did not close its side within
    /// the read timeout ([`Error::Timeout`]).
    pub fn close(&self) -> Result<(), Error> {
        let flushed = {
            let mut pending = self.pending.borrow_mut();
            let mut wire = self.inner.wire.lock();
            if wire.closed {
                return Ok(());
            }
            let flushed = match self.usable(&wire) {
                Ok(()) => self.write_out(&mut pending, &[]),
                // Aborted, or already ended: nothing more can be sent.
                Err(_) => Ok(()),
            };
            wire.closed = true;
            self.inner.shared.closing.store(true, Ordering::Release);
            let _ = self.inner.sock.shutdown(Shutdown::Write);
            flushed
        };
        let timeout = self.inner.options.read_timeout;
        if !self.inner.shared.inbox.wait_end(Instant::now() + timeout) {
            let _ = self.inner.sock.shutdown(Shutdown::Both);
            return Err(Error::Timeout(timeout));
        }
        if let Some(reader) = self.inner.reader.lock().take() {
            let _ = reader.join();
        }
        flushed
    }

    /// Closes the connection at once, in both directions, without sending what is buffered
    /// or waiting for anything: for stopping from another thread. Threads blocked in
    /// [`recv`](Self::recv), waiting for a reply or in a write return at once, and every call
    /// after it fails, with [`Error::Shutdown`] (a write that was cut short may report the
    /// failed write instead).
    ///
    /// ```
    /// use mist::client::{Client, Error};
    /// use std::thread;
    ///
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = Client::connect(addr)?;
    /// client.subscribe("rare")?;
    /// let follower = {
    ///     let client = client.clone();
    ///     thread::spawn(move || client.recv())
    /// };
    /// client.abort();
    /// assert!(matches!(follower.join().unwrap(), Err(Error::Shutdown)));
    /// # Ok::<(), mist::client::Error>(())
    /// ```
    pub fn abort(&self) {
        self.inner.shared.closing.store(true, Ordering::Release);
        let _ = self.inner.sock.shutdown(Shutdown::Both);
    }

    /// The server's address.
    ///
    /// ```
    /// # let server = mist::doc_server();
    /// # let addr = server.tcp_addr();
    /// let client = mist::Client::connect(addr)?;
    /// assert_eq!(client.peer_addr()?, addr);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The socket no longer knows it.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.sock.peer_addr()
    }

    /// Sends `line` and a `ping`, and waits: the command succeeded when the `pong` comes
    /// without an `error` before it.
    fn confirm(&self, line: String) -> Result<(), Error> {
        self.request(&[line.as_bytes(), b"ping\n"], true, |reply| {
            Waiting::Confirm { reply, error: None }
        })
        .map(drop)
    }

    /// Writes `lines` (a command that gets a reply) and waits for the answer. With
    /// `end_publishes`, a run of publishes not yet followed by a `ping` gets one first, so
    /// that their refusals cannot be taken for this command's.
    fn request(
        &self,
        lines: &[&[u8]],
        end_publishes: bool,
        waiting: impl FnOnce(replies::Reply) -> Waiting,
    ) -> Result<Answer, Error> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(lines, Some((waiting(tx), end_publishes)))?;
        self.wait(&rx)
    }

    /// Writes this handle's buffered publishes, then `lines`, under the write half's lock.
    /// With `waiting`, `lines` are a command that gets a reply: its entry is queued before
    /// anything is written (a reply cannot come first), and with `end_publishes` a run of
    /// publishes not yet followed by a `ping` gets one before it, so that their refusals
    /// cannot be taken for the command's.
    fn send(&self, lines: &[&[u8]], waiting: Option<(Waiting, bool)>) -> Result<(), Error> {
        let mut pending = self.pending.borrow_mut();
        let mut wire = self.inner.wire.lock();
        self.usable(&wire)?;
        // The buffer holds publishes only: commands are written as soon as they are added.
        wire.unpinged |= !pending.is_empty() || (waiting.is_none() && !lines.is_empty());
        let mut end_run = false;
        if let Some((waiting, end_publishes)) = waiting {
            let mut replies = self.inner.shared.replies.lock();
            end_run = end_publishes && wire.unpinged;
            if end_run {
                replies.push(Waiting::Ping(None))?;
            }
            replies.push(waiting)?;
            // Every command with a reply ends with a line the server answers after what
            // came before it.
            wire.unpinged = false;
        }
        if end_run {
            self.write_out(&mut pending, &[b"ping\n"])?;
        }
        self.write_out(&mut pending, lines)
    }

    /// Writes the buffer and `parts` (one line, or whole lines), in as few writes as they
    /// fit in. Called under the write half's lock.
    fn write_out(&self, pending: &mut Buffer, parts: &[&[u8]]) -> Result<(), Error> {
        let mut sock = &*self.inner.sock;
        let mut written = Ok(());
        if !parts.is_empty() && !pending.try_append(parts) {
            written = sock.write_all(pending.bytes());
            pending.clear();
            if written.is_ok() && !pending.try_append(parts) {
                written = sock.write_all(&parts.concat());
            }
        }
        if written.is_ok() && !pending.is_empty() {
            written = sock.write_all(pending.bytes());
        }
        pending.clear();
        written.map_err(|e| self.broken(&e))
    }

    /// Waits for a command's answer, at most the read timeout.
    fn wait(&self, answers: &Answers) -> Result<Answer, Error> {
        let timeout = self.inner.options.read_timeout;
        match answers.recv_timeout(timeout) {
            Ok(answer) => answer,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::Timeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(self.inner.shared.end_error()),
        }
    }

    /// Fails when the connection can no longer be written to. Under the write half's lock.
    fn usable(&self, wire: &Wire) -> Result<(), Error> {
        if wire.closed {
            return Err(Error::Shutdown);
        }
        self.open()
    }

    /// Fails when the connection has been closed or has ended; takes no lock.
    #[inline]
    fn open(&self) -> Result<(), Error> {
        let shared = &self.inner.shared;
        if shared.closing.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        if shared.ended.load(Ordering::Acquire) {
            return Err(shared.end_error());
        }
        Ok(())
    }

    /// A write failed: part of a line may have gone out, so the connection cannot go on.
    /// Closing it ends the reader thread, which fails whoever waits.
    fn broken(&self, e: &io::Error) -> Error {
        let _ = self.inner.sock.shutdown(Shutdown::Both);
        if self.inner.shared.closing.load(Ordering::Acquire) {
            return Error::Shutdown;
        }
        if self.inner.shared.ended.load(Ordering::Acquire) {
            return self.inner.shared.end_error();
        }
        Error::Io(io::Error::new(e.kind(), e.to_string()))
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Client");
        if let Ok(peer) = self.inner.sock.peer_addr() {
            d.field("peer", &peer);
        }
        d.finish_non_exhaustive()
    }
}

impl Drop for Client {
    /// Sends what this handle buffered.
    fn drop(&mut self) {
        if !self.pending.get_mut().is_empty() {
            let _ = self.flush();
        }
    }
}

impl Drop for Inner {
    /// The last clone is gone: close our side. The reader thread reads on until the server
    /// closes its side, so the connection ends cleanly (closing a socket with unread data
    /// would reset it), then exits by itself.
    fn drop(&mut self) {
        if !self.shared.closing.load(Ordering::Acquire) {
            self.shared.closing.store(true, Ordering::Release);
            let _ = self.sock.shutdown(Shutdown::Write);
        }
    }
}

/// The iterator of [`Client::events`]: each [`Client::recv`], until the error that ends the
/// connection.
///
/// ```
/// # let server = mist::doc_server();
/// # let addr = server.tcp_addr();
/// let client = mist::Client::connect(addr)?;
/// client.subscribe("a")?;
/// client.publish("a", "x")?;
/// client.close()?; // the server applies the publish, then closes
/// let mut events = client.events();
/// assert!(matches!(events.next(), Some(Ok(mist::client::Event::Message(_)))));
/// assert!(matches!(events.next(), Some(Err(mist::client::Error::Shutdown))));
/// assert!(events.next().is_none());
/// # Ok::<(), mist::client::Error>(())
/// ```
#[derive(Debug)]
pub struct Events<'a> {
    client: &'a Client,
    done: bool,
}

impl Iterator for Events<'_> {
    type Item = Result<Event, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.client.recv();
        self.done = next.is_err();
        Some(next)
    }
}

/// A server on ephemeral loopback ports with an in-memory token store, for the examples in
/// this documentation (each needs a server to talk to). Not part of the API.
#[doc(hidden)]
pub fn doc_server() -> crate::Server {
    doc_server_with(doc_config())
}

/// The defaults, on ephemeral loopback ports (for the examples in this documentation).
#[doc(hidden)]
pub fn doc_config() -> crate::Config {
    crate::Config {
        tcp_listen_address: "127.0.0.1:0".into(),
        http_listen_address: "127.0.0.1:0".into(),
        ..crate::Config::default()
    }
}

/// A server with `config` and an in-memory token store (for the examples in this
/// documentation).
#[doc(hidden)]
pub fn doc_server_with(config: crate::Config) -> crate::Server {
    crate::Server::start(config, Box::new(crate::auth::memory::MemoryStore::new()))
        .expect("a server on ephemeral loopback ports starts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// A peer that answers the first `ping` and then reads everything.
    fn peer() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            (&stream).write_all(b"pong\n").unwrap();
            let _ = io::copy(&mut r, &mut io::sink());
        });
        addr
    }

    /// Regression, fixed by "Client: a publish that fills the buffer starts the next one
    /// instead of being written alone": a publish that did not fit was written right after
    /// the full buffer, in a write of its own, doubling the writes.
    #[test]
    fn a_publish_that_does_not_fit_starts_the_next_buffer() {
        let c = Options::new()
            .write_buffer(100)
            .read_timeout(Duration::from_secs(10))
            .connect(peer())
            .unwrap();
        // `publish a ` + 19 bytes + `\n` = 30 bytes: three fit in 100.
        let data = |i: u8| [b'0' + i; 19];
        for i in 0..3 {
            c.publish("a", data(i)).unwrap();
        }
        assert_eq!(c.pending.borrow().bytes().len(), 90);
        c.publish("a", data(3)).unwrap();
        assert_eq!(
            c.pending.borrow().bytes(),
            b"publish a 3333333333333333333\n"
        );
        // A line longer than the whole buffer goes out at once, with nothing left behind.
        c.publish("a", [b'x'; 200]).unwrap();
        assert!(c.pending.borrow().is_empty());
    }
}
