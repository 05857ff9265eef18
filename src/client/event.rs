//! What a client receives: messages, and notices of messages lost.

use crate::tags::TagSet;

/// Something that arrived for this client: a message, or a notice that messages were lost.
///
/// ```
/// use mist::client::{Client, Event};
/// use std::time::Duration;
///
/// # let server = mist::doc_server();
/// # let addr = server.tcp_addr();
/// let client = Client::connect(addr)?;
/// client.subscribe("alerts")?;
/// client.publish("alerts,disk", "disk 91% full")?;
/// client.ping()?;
/// match client.recv_timeout(Duration::from_secs(5))? {
///     Some(Event::Message(m)) => {
///         assert_eq!(m.tags.as_str(), "alerts,disk");
///         assert_eq!(m.data, b"disk 91% full");
///     }
///     Some(Event::Dropped { count, by }) => eprintln!("lost {count} messages ({by:?})"),
///     None => eprintln!("nothing within 5 s"),
/// }
/// # Ok::<(), mist::client::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message that matched one of this connection's subscriptions.
    Message(Message),
    /// `count` messages were lost here, between the events before and after this one: the
    /// server dropped them because this client fell behind (`error slow consumer: dropped N
    /// messages`), or this client did because the program did not receive them fast enough.
    Dropped { count: u64, by: DroppedBy },
}

/// Who dropped the messages of an [`Event::Dropped`].
///
/// ```
/// use mist::client::{DroppedBy, Event};
///
/// fn explain(event: &Event) -> Option<String> {
///     match event {
///         Event::Dropped { count, by: DroppedBy::Server } => {
///             Some(format!("{count} lost: the server's queue for us was full"))
///         }
///         Event::Dropped { count, by: DroppedBy::Client } => {
///             Some(format!("{count} lost: we did not call recv fast enough"))
///         }
///         Event::Message(_) => None,
///     }
/// }
/// let e = Event::Dropped { count: 3, by: DroppedBy::Client };
/// assert_eq!(explain(&e).unwrap(), "3 lost: we did not call recv fast enough");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DroppedBy {
    /// The server: its queue for this connection was full (`client_queue`,
    /// `client_queue_bytes`), or the server was at `queue_memory_limit`.
    Server,
    /// This client: messages not yet received filled its buffer
    /// ([`Options::recv_buffer`](super::Options::recv_buffer)), or a message was longer than it
    /// accepts.
    Client,
}

/// A delivered message.
///
/// ```
/// use mist::client::Message;
///
/// let m = Message { tags: "disk,alerts".parse()?, data: b"91% full".to_vec() };
/// assert!(m.tags.contains("disk"));
/// assert_eq!(m.tags.as_str(), "alerts,disk");
/// # Ok::<(), mist::TagError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message's tags (sorted, without duplicates).
    pub tags: TagSet,
    /// The data, byte for byte as it was published.
    pub data: Vec<u8>,
}

impl Message {
    /// The bytes this message keeps in memory, for the receive buffer's limit.
    pub(crate) fn size(&self) -> usize {
        self.tags.as_str().len() + self.data.len()
    }
}
