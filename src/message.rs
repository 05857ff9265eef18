//! Published messages, encoded once and shared by every subscriber that receives them.
//!
//! The messages a connection publishes in one read form a [`Batch`]: their TCP delivery lines
//! (`publish TAGS DATA\n`) laid out back to back in one buffer. A TCP subscriber that receives
//! a run of consecutive messages of a batch gets that run as one slice of the buffer: one queue
//! item and one iovec however many messages it holds, and no copy. The WebSocket frame of a
//! message is encoded the first time a WebSocket subscriber needs it, at most once, and shared
//! as a [`WsFrame`].

use std::ops::Range;
use std::sync::{Arc, OnceLock};

const PREFIX: &[u8] = b"publish ";

/// Messages published together, in publish order.
pub struct Batch {
    /// Every message's delivery line, back to back.
    lines: Vec<u8>,
    /// Message `i` spans `lines[starts[i]..starts[i + 1]]`; one more entry than messages.
    starts: Vec<usize>,
    /// Where each message's tags end in `lines` (the space before its data).
    tags_ends: Vec<usize>,
    /// Each message's WebSocket frame, encoded on first use. The table itself is allocated
    /// only when a WebSocket subscriber first needs a frame of this batch.
    ws: OnceLock<Box<[OnceLock<Arc<WsFrame>>]>>,
}

/// One message's WebSocket delivery frame, with the message's tags (revocation needs them).
pub struct WsFrame {
    tags: Box<str>,
    frame: Box<[u8]>,
}

impl WsFrame {
    /// The frame's bytes on the wire.
    pub fn bytes(&self) -> &[u8] {
        &self.frame
    }

    /// The message's tags, normalised and comma-joined.
    pub fn tags(&self) -> &str {
        &self.tags
    }
}

/// Builds a [`Batch`].
#[derive(Default)]
pub struct BatchBuilder {
    lines: Vec<u8>,
    starts: Vec<usize>,
    tags_ends: Vec<usize>,
}

impl BatchBuilder {
    /// Appends a message from normalised tags (sorted, de-duplicated, comma-joined) and data.
    pub fn push(&mut self, tags: &[u8], data: &[u8]) {
        self.starts.push(self.lines.len());
        self.lines
            .reserve(PREFIX.len() + tags.len() + data.len() + 2);
        self.lines.extend_from_slice(PREFIX);
        self.lines.extend_from_slice(tags);
        self.tags_ends.push(self.lines.len());
        self.lines.push(b' ');
        self.lines.extend_from_slice(data);
        self.lines.push(b'\n');
    }

    /// The number of messages so far.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// True when no message was pushed.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The tags of message `i`.
    pub fn tags(&self, i: usize) -> &[u8] {
        &self.lines[self.starts[i] + PREFIX.len()..self.tags_ends[i]]
    }

    /// Finishes the batch, leaving the builder empty.
    pub fn build(&mut self) -> Arc<Batch> {
        let mut starts = std::mem::take(&mut self.starts);
        let lines = std::mem::take(&mut self.lines);
        starts.push(lines.len());
        Arc::new(Batch {
            lines,
            starts,
            tags_ends: std::mem::take(&mut self.tags_ends),
            ws: OnceLock::new(),
        })
    }
}

impl Batch {
    /// A batch of one message.
    pub fn single(tags: &[u8], data: &[u8]) -> Arc<Batch> {
        let mut b = BatchBuilder::default();
        b.push(tags, data);
        b.build()
    }

    /// The number of messages.
    pub fn len(&self) -> usize {
        self.tags_ends.len()
    }

    /// True when the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.tags_ends.is_empty()
    }

    /// The memory the batch's lines take, which any queue holding a slice of it pins.
    pub fn size(&self) -> usize {
        self.lines.len()
    }

    /// Where the lines of messages `run` lie in the buffer.
    pub fn span(&self, run: Range<usize>) -> Range<usize> {
        self.starts[run.start]..self.starts[run.end]
    }

    /// Bytes of the buffer.
    pub fn bytes(&self, span: Range<usize>) -> &[u8] {
        &self.lines[span]
    }

    /// The TCP delivery line of message `i`, newline included.
    pub fn line(&self, i: usize) -> &[u8] {
        &self.lines[self.starts[i]..self.starts[i + 1]]
    }

    /// The normalised tags of message `i`, comma-joined.
    pub fn tags(&self, i: usize) -> &[u8] {
        &self.lines[self.starts[i] + PREFIX.len()..self.tags_ends[i]]
    }

    /// The data of message `i`, untouched.
    pub fn data(&self, i: usize) -> &[u8] {
        &self.lines[self.tags_ends[i] + 1..self.starts[i + 1] - 1]
    }

    /// The WebSocket delivery frame of message `i`, encoded on first call and shared after.
    pub fn ws_frame(&self, i: usize) -> Arc<WsFrame> {
        let table = self
            .ws
            .get_or_init(|| (0..self.len()).map(|_| OnceLock::new()).collect());
        Arc::clone(table[i].get_or_init(|| {
            let tags = String::from_utf8_lossy(self.tags(i)).into_owned();
            let json = ws_json(&tags, self.data(i));
            Arc::new(WsFrame {
                tags: tags.into_boxed_str(),
                frame: crate::wsframe::text(json.as_bytes()).into_boxed_slice(),
            })
        }))
    }
}

/// `{"keys":["a","b"],"data":"DATA"}`; bytes of the data that are not UTF-8 become U+FFFD.
pub fn ws_json(tags: &str, data: &[u8]) -> String {
    let keys: Vec<&str> = tags.split(',').collect();
    let data = String::from_utf8_lossy(data);
    // Written by hand so the fields come in the documented order; serde_json escapes.
    let keys = serde_json::to_string(&keys).expect("strings always serialise");
    let data = serde_json::to_string(&data).expect("strings always serialise");
    format!(r#"{{"keys":{keys},"data":{data}}}"#)
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Batch({} messages, {} bytes)", self.len(), self.size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Arc<Batch> {
        let mut b = BatchBuilder::default();
        b.push(b"a,b", b"hello world");
        b.push(b"a", b"");
        b.push(b"c", b"x");
        assert_eq!(b.tags(1), b"a");
        b.build()
    }

    #[test]
    fn lines_lie_back_to_back() {
        let b = batch();
        assert_eq!(b.len(), 3);
        assert_eq!(b.line(0), b"publish a,b hello world\n");
        assert_eq!(b.line(1), b"publish a \n");
        assert_eq!(
            b.bytes(b.span(0..3)),
            b"publish a,b hello world\npublish a \npublish c x\n"
        );
        assert_eq!(b.bytes(b.span(1..2)), b"publish a \n");
        assert_eq!(b.tags(0), b"a,b");
        assert_eq!(b.data(0), b"hello world");
        assert_eq!(b.data(1), b"");
        assert_eq!(b.size(), 47);
    }

    #[test]
    fn builder_is_reusable() {
        let mut b = BatchBuilder::default();
        b.push(b"a", b"1");
        let first = b.build();
        assert!(b.is_empty());
        b.push(b"b", b"2");
        let second = b.build();
        assert_eq!(first.line(0), b"publish a 1\n");
        assert_eq!(second.line(0), b"publish b 2\n");
    }

    #[test]
    fn json_keys_are_sorted_and_bad_utf8_is_replaced() {
        assert_eq!(
            ws_json("a,b", b"say \"hi\"\xff"),
            "{\"keys\":[\"a\",\"b\"],\"data\":\"say \\\"hi\\\"\u{fffd}\"}"
        );
    }

    #[test]
    fn ws_frame_is_built_once_and_shared() {
        let b = batch();
        let f1 = b.ws_frame(2);
        let f2 = b.ws_frame(2);
        assert!(Arc::ptr_eq(&f1, &f2));
        assert_eq!(f1.bytes(), b"\x81\x19{\"keys\":[\"c\"],\"data\":\"x\"}");
        assert_eq!(f1.tags(), "c");
    }
}
