//! What can go wrong on a client connection: [`Error`], and the server's `error` replies as
//! [`ServerError`].

use crate::tags::TagError;
use std::fmt;
use std::io;
use std::time::Duration;

/// Why a [`Client`](super::Client) call failed.
///
/// Three kinds of failure leave the connection usable: a refusal on this side before anything
/// was sent ([`Invalid`](Error::Invalid), [`Data`](Error::Data)), an `error` reply from the
/// server ([`Server`](Error::Server), [`Refused`](Error::Refused)), and a
/// [`Timeout`](Error::Timeout). After any other, the connection is gone: connect again (see
/// `examples/follow.rs`).
///
/// `Display` says what failed; the cause, when there is one, is the error's
/// [`source`](std::error::Error::source) ([`ErrorChain`](crate::ErrorChain) prints both).
///
/// ```
/// use mist::client::{Client, Error, ServerErrorKind};
///
/// # let server = mist::doc_server();
/// # let addr = server.tcp_addr();
/// let client = Client::connect(addr)?;
/// // Refused here, before anything is sent: a tag cannot contain a space.
/// assert!(matches!(client.subscribe("no spaces"), Err(Error::Invalid(_))));
/// // Refused by the server.
/// match client.tags("no-such-token") {
///     Err(Error::Server(e)) => {
///         assert_eq!(e.kind(), ServerErrorKind::UnknownToken);
///         assert_eq!(e.to_string(), "unknown token");
///     }
///     other => panic!("{other:?}"),
/// }
/// // The connection goes on.
/// client.ping()?;
/// # Ok::<(), mist::client::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No connection could be made to any address `addr` resolves to; `source` says why
    /// (for the last address tried).
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// A tag list or token breaks the protocol's rules; nothing was sent.
    #[error(transparent)]
    Invalid(#[from] TagError),
    /// A message's data cannot travel as one line; nothing was sent.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The server answered the command with `error REASON`.
    #[error("{0}")]
    Server(ServerError),
    /// [`ping`](super::Client::ping) found that the server refused `count` of the messages
    /// published since the previous `ping`; `first` says why it refused the first. Everything
    /// else sent before the `ping` was applied.
    #[error("the server refused {count} published message(s)")]
    Refused {
        count: u64,
        #[source]
        first: ServerError,
    },
    /// No reply within the read timeout ([`Options::read_timeout`](super::Options::read_timeout)).
    /// The command may still take effect; a later reply is matched to it and discarded.
    #[error("no reply from the server within {0:?}")]
    Timeout(Duration),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// This program closed the connection ([`Client::close`](super::Client::close)).
    #[error("the connection was closed by this client")]
    Shutdown,
    /// Reading from or writing to the connection failed.
    #[error("connection to the server failed")]
    Io(#[source] io::Error),
    /// The peer sent a line that is not mist's line protocol, or a reply that matches no
    /// command. The connection was closed.
    #[error("unexpected reply from the server: {0}")]
    Protocol(String),
}

/// Why a message's data cannot be published over the line protocol.
///
/// ```
/// use mist::client::{DataError, Error};
///
/// # let server = mist::doc_server();
/// # let addr = server.tcp_addr();
/// let client = mist::Client::connect(addr)?;
/// match client.publish("logs", "line one\r") {
///     Err(Error::Data(DataError::TrailingCarriageReturn)) => {} // strip it, or encode the data
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), mist::client::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A line ends at the first newline.
    #[error("invalid message: data contains a newline")]
    Newline,
    /// The server drops a `\r` at the end of a line, so the message would arrive without it.
    #[error("invalid message: data ends with a carriage return, which the line protocol drops")]
    TrailingCarriageReturn,
    /// `publish TAGS DATA` would be longer than the server's line limit.
    #[error("invalid message: the line would be {len} bytes, over max_line_bytes ({max})")]
    TooLong { len: usize, max: usize },
}

/// An `error REASON` reply from the server.
///
/// `Display` is the reason as the server sent it; [`kind`](ServerError::kind) sorts it for
/// programs.
///
/// ```
/// use mist::client::{ServerError, ServerErrorKind};
///
/// let e = ServerError::new("token already exists");
/// assert_eq!(e.kind(), ServerErrorKind::TokenExists);
/// assert_eq!(e.to_string(), "token already exists");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    kind: ServerErrorKind,
    reason: String,
}

/// What an `error` reply was about.
///
/// ```
/// use mist::client::{Error, ServerErrorKind};
///
/// # let server = mist::doc_server();
/// # let addr = server.tcp_addr();
/// let client = mist::Client::connect(addr)?;
/// // Register, or leave the token alone when it exists.
/// match client.register("alerts", "tok") {
///     Ok(()) => {}
///     Err(Error::Server(e)) if e.kind() == ServerErrorKind::TokenExists => {}
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), mist::client::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerErrorKind {
    /// `unknown token`: `set`, `unset`, `tags` or `unregister` of a token that does not exist.
    UnknownToken,
    /// `token already exists`: `register` of a token that exists.
    TokenExists,
    /// An admin command without `auth` (or, with no `admin_token` configured, from a
    /// non-loopback address).
    NotAllowed,
    /// `auth` with a wrong token, or on a server without an `admin_token`.
    AuthFailed,
    /// A tag list or token the server refused (its `max_tags` may be lower than this client's).
    InvalidTags,
    /// A line longer than the server's `max_line_bytes`.
    LineTooLong,
    /// The connection holds `max_subscriptions` subscriptions already.
    TooManySubscriptions,
    /// The server is at `max_connections`; it closes the connection.
    TooManyConnections,
    /// The server's token store (PostgreSQL) could not be reached.
    StoreUnavailable,
    /// A command the server does not know, or with the wrong arguments.
    BadCommand,
    /// Any other reason.
    Other,
}

impl ServerError {
    /// An error with the reason the server sent.
    ///
    /// ```
    /// let e = mist::client::ServerError::new("unknown token");
    /// assert_eq!(e.kind(), mist::client::ServerErrorKind::UnknownToken);
    /// ```
    pub fn new(reason: impl Into<String>) -> ServerError {
        let reason = reason.into();
        ServerError {
            kind: ServerErrorKind::of(&reason),
            reason,
        }
    }

    /// What the error was about.
    ///
    /// ```
    /// let e = mist::client::ServerError::new("line too long (max_line_bytes 100)");
    /// assert_eq!(e.kind(), mist::client::ServerErrorKind::LineTooLong);
    /// ```
    pub fn kind(&self) -> ServerErrorKind {
        self.kind
    }

    /// The reason, as the server sent it after `error `.
    ///
    /// ```
    /// let e = mist::client::ServerError::new("unknown token");
    /// assert_eq!(e.reason(), "unknown token");
    /// ```
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ServerError {}

impl ServerErrorKind {
    /// Sorts a reason by the texts the server sends (the unit tests take them from the
    /// server's own error types, so the two cannot drift apart).
    fn of(reason: &str) -> ServerErrorKind {
        use ServerErrorKind::*;
        const PREFIXES: &[(&str, ServerErrorKind)] = &[
            ("unknown token", UnknownToken),
            ("token already exists", TokenExists),
            ("admin commands ", NotAllowed),
            ("wrong admin token", AuthFailed),
            ("auth is not enabled", AuthFailed),
            ("invalid tags", InvalidTags),
            ("invalid token", InvalidTags),
            ("line too long", LineTooLong),
            ("too many subscriptions", TooManySubscriptions),
            ("too many connections", TooManyConnections),
            ("token store unavailable", StoreUnavailable),
            ("unknown command", BadCommand),
            ("usage: ", BadCommand),
            ("empty command", BadCommand),
        ];
        PREFIXES
            .iter()
            .find(|(prefix, _)| reason.starts_with(prefix))
            .map_or(Other, |&(_, kind)| kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{self, StoreError};
    use crate::broker::BrokerError;
    use crate::line::{self, LineError};
    use std::net::{IpAddr, Ipv4Addr};

    fn kind(reason: &str) -> ServerErrorKind {
        ServerError::new(reason).kind()
    }

    /// The reasons come from the server's own error types, so that a change of wording there
    /// fails here.
    #[test]
    fn the_servers_reasons_are_sorted() {
        use ServerErrorKind::*;
        assert_eq!(kind(&StoreError::UnknownToken.to_string()), UnknownToken);
        assert_eq!(kind(&StoreError::TokenExists.to_string()), TokenExists);
        // The server sends an error with its causes.
        let unavailable = StoreError::Unavailable("down".into());
        assert_eq!(
            kind(&crate::report::ErrorChain(&unavailable).to_string()),
            StoreUnavailable
        );
        let remote = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        for (configured, from) in [(true, Ipv4Addr::LOCALHOST.into()), (false, remote)] {
            let reason = auth::admin_allowed(configured, false, from).unwrap_err();
            assert_eq!(kind(reason), NotAllowed, "{reason}");
        }
        for e in [
            TagError::EmptyTag,
            TagError::TooMany(3),
            TagError::TokenBadChar,
        ] {
            assert_eq!(kind(&LineError::Invalid(e).to_string()), InvalidTags);
        }
        assert_eq!(
            kind(&BrokerError::TooManySubscriptions(5).to_string()),
            TooManySubscriptions
        );
        for e in [
            LineError::Empty,
            LineError::UnknownCommand("x".into()),
            LineError::Usage("ping"),
        ] {
            assert_eq!(kind(&e.to_string()), BadCommand);
        }
        // Literal reasons of `tcp.rs` (the connection code has no error type for them).
        assert_eq!(kind("wrong admin token"), AuthFailed);
        assert_eq!(
            kind("auth is not enabled: no admin_token is configured"),
            AuthFailed
        );
        assert_eq!(kind("line too long (max_line_bytes 100)"), LineTooLong);
        assert_eq!(
            kind("too many connections (max_connections 3)"),
            TooManyConnections
        );
        assert_eq!(kind("something new"), Other);
        // The notice is not an error reply; the reader takes it apart before this.
        assert_eq!(
            kind(&String::from_utf8_lossy(&line::dropped_notice(3))),
            Other
        );
    }

    #[test]
    fn display_is_the_reason() {
        let e = ServerError::new("unknown token");
        assert_eq!(e.to_string(), "unknown token");
        assert_eq!(e.reason(), "unknown token");
        assert_eq!(Error::Server(e).to_string(), "unknown token");
        assert_eq!(
            Error::Invalid(TagError::EmptyTag).to_string(),
            "invalid tags: empty tag"
        );
    }
}
