//! Published messages, encoded once and shared by every subscriber that receives them.
//!
//! The messages a connection publishes in one read form a [`Batch`]: their TCP delivery lines
//! (`publish TAGS DATA\n`) laid out back to back in one buffer. A subscriber that receives a
//! run of consecutive messages of a batch gets that run as one slice of the buffer: one queue
//! item and one iovec however many messages it holds, and no copy. The batch's WebSocket
//! frames are encoded the first time a WebSocket subscriber needs one, all at once and at most
//! once, into a second buffer laid out the same way.

use crate::pool::Pool;
use std::borrow::Cow;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

/// Messages of a batch in one wire format, back to back.
pub struct Encoded {
    bytes: Vec<u8>,
    /// Message `i` spans `bytes[starts[i]..starts[i + 1]]`; one more entry than messages.
    starts: Vec<usize>,
}

impl Encoded {
    /// Where messages `run` lie.
    pub fn span(&self, run: Range<usize>) -> Range<usize> {
        self.starts[run.start]..self.starts[run.end]
    }

    /// Bytes of the buffer.
    pub fn bytes(&self, span: Range<usize>) -> &[u8] {
        &self.bytes[span]
    }

    /// The buffer's size.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
}

const PREFIX: &[u8] = b"publish ";

/// Messages published together, in publish order.
pub struct Batch {
    /// Every message's TCP delivery line.
    lines: Encoded,
    /// Where each message's tags end in the lines (the space before its data).
    tags_ends: Vec<usize>,
    /// Every message's WebSocket delivery frame, encoded on first use.
    ws: OnceLock<Encoded>,
    /// What the batch counts for in the server's queue memory, once a queue holds it.
    pooled: OnceLock<Pooled>,
}

/// A batch's bytes in a [`Pool`]: counted by the first queue that takes the batch (and topped
/// up when its WebSocket frames are added), given back when the batch is dropped, which is
/// when the last queue holding it, or its publisher, lets go of it.
struct Pooled {
    pool: Arc<Pool>,
    bytes: AtomicUsize,
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
        let bytes = std::mem::take(&mut self.lines);
        starts.push(bytes.len());
        Arc::new(Batch {
            lines: Encoded { bytes, starts },
            tags_ends: std::mem::take(&mut self.tags_ends),
            ws: OnceLock::new(),
            pooled: OnceLock::new(),
        })
    }
}

impl Batch {
    /// The number of messages.
    pub fn len(&self) -> usize {
        self.tags_ends.len()
    }

    /// The memory the batch keeps alive for whoever holds a slice of it: its lines, and its
    /// WebSocket frames once encoded.
    pub fn size(&self) -> usize {
        self.lines.len() + self.ws.get().map_or(0, Encoded::len)
    }

    /// Counts the batch's memory, its current [`size`](Self::size), in `pool`, as far as it is
    /// not counted already: once however many queues hold it. False, with nothing counted,
    /// when the pool has no room for it.
    pub fn charge(&self, pool: &Arc<Pool>) -> bool {
        let pooled = self.pooled.get_or_init(|| Pooled {
            pool: Arc::clone(pool),
            bytes: AtomicUsize::new(0),
        });
        debug_assert!(
            Arc::ptr_eq(&pooled.pool, pool),
            "a batch is queued on one server"
        );
        let size = self.size();
        loop {
            let had = pooled.bytes.load(Relaxed);
            if size <= had {
                return true;
            }
            if !pooled.pool.take(size - had) {
                return false;
            }
            // Only the publishing thread queues a batch, so this does not race in the server;
            // if it did, the loser gives its bytes back and looks again.
            match pooled.bytes.compare_exchange(had, size, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(_) => pooled.pool.give(size - had),
            }
        }
    }

    /// The TCP delivery lines.
    pub fn lines(&self) -> &Encoded {
        &self.lines
    }

    /// The WebSocket delivery frames, encoded on the first call (for every message of the
    /// batch at once, so a run of them is one slice) and shared after.
    pub fn frames(&self) -> &Encoded {
        self.ws.get_or_init(|| {
            let mut bytes = Vec::with_capacity(self.lines.len() + self.len() * 24);
            let mut starts = Vec::with_capacity(self.len() + 1);
            // One payload buffer for the whole batch, and the keys of the tags last seen: the
            // messages of a run have the same tags, so a run writes its keys once. No
            // allocation per message.
            let mut payload = Vec::new();
            let mut keys = Vec::new();
            let mut keys_of: Option<&[u8]> = None;
            for i in 0..self.len() {
                starts.push(bytes.len());
                let tags = self.tags(i);
                if keys_of != Some(tags) {
                    keys.clear();
                    write_keys(&mut keys, tags);
                    keys_of = Some(tags);
                }
                payload.clear();
                write_delivery(&mut payload, &keys, self.data(i));
                crate::wsframe::append_text(&mut bytes, &payload);
            }
            starts.push(bytes.len());
            Encoded { bytes, starts }
        })
    }

    /// The TCP delivery line of message `i`, newline included.
    #[cfg(test)]
    pub fn line(&self, i: usize) -> &[u8] {
        self.lines.bytes(self.lines.span(i..i + 1))
    }

    /// The normalised tags of message `i`, comma-joined.
    pub fn tags(&self, i: usize) -> &[u8] {
        &self.lines.bytes[self.lines.starts[i] + PREFIX.len()..self.tags_ends[i]]
    }

    /// The data of message `i`, untouched.
    pub fn data(&self, i: usize) -> &[u8] {
        &self.lines.bytes[self.tags_ends[i] + 1..self.lines.starts[i + 1] - 1]
    }
}

/// The tags of a WebSocket delivery frame (`{"keys":[...],...}`), comma-joined; `None` when the
/// bytes are not one whole delivery frame. The server never reads its frames back (a queued
/// delivery knows its tags); the tests do.
#[cfg(test)]
pub(crate) fn frame_tags(frame: &[u8]) -> Option<String> {
    let (payload, rest) = crate::wsframe::split_text(frame)?;
    if !rest.is_empty() {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let keys: Vec<&str> = value
        .get("keys")?
        .as_array()?
        .iter()
        .map(|k| k.as_str())
        .collect::<Option<_>>()?;
    Some(keys.join(","))
}

/// `["a","b"]` for the tags `a,b`.
fn write_keys(out: &mut Vec<u8>, tags: &[u8]) {
    let tags = text(tags);
    let keys: Vec<&str> = tags.split(',').collect();
    serde_json::to_writer(out, &keys).expect("writing to a Vec does not fail");
}

/// `{"keys":KEYS,"data":"DATA"}`, with `keys` from [`write_keys`]; bytes of the data that are
/// not UTF-8 become U+FFFD. Written by hand so the fields come in the documented order;
/// serde_json escapes.
fn write_delivery(out: &mut Vec<u8>, keys: &[u8], data: &[u8]) {
    out.extend_from_slice(b"{\"keys\":");
    out.extend_from_slice(keys);
    out.extend_from_slice(b",\"data\":");
    serde_json::to_writer(&mut *out, &*text(data)).expect("writing to a Vec does not fail");
    out.push(b'}');
}

/// The bytes as text: checked by the fast validation first, since nearly all data is UTF-8;
/// only invalid bytes pay for their replacement.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// A delivery's JSON, as [`Batch::frames`] writes it.
#[cfg(test)]
pub fn ws_json(tags: &str, data: &[u8]) -> String {
    let mut keys = Vec::new();
    write_keys(&mut keys, tags.as_bytes());
    let mut out = Vec::new();
    write_delivery(&mut out, &keys, data);
    String::from_utf8(out).expect("JSON is UTF-8")
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(p) = self.pooled.get_mut() {
            p.pool.give(*p.bytes.get_mut());
        }
    }
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
        let l = b.lines();
        assert_eq!(
            l.bytes(l.span(0..3)),
            b"publish a,b hello world\npublish a \npublish c x\n"
        );
        assert_eq!(l.bytes(l.span(1..2)), b"publish a \n");
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

    /// Runs of equal tags share their keys, and every frame still carries its own message's
    /// tags and data, whatever the data needs escaped or replaced.
    #[test]
    fn each_frame_carries_its_own_tags_and_data() {
        let messages: [(&[u8], &[u8]); 6] = [
            (b"a", b"1"),
            (b"a", b"say \"hi\"\n\t\\"),
            (b"a,b", b"\xff\xfe ok \xc3"),
            (b"a", "é ✓".as_bytes()),
            (b"a", b""),
            (b"b,c,d", b"\x00\x1f"),
        ];
        let mut b = BatchBuilder::default();
        for (tags, data) in messages {
            b.push(tags, data);
        }
        let b = b.build();
        let f = b.frames();
        for (i, (tags, data)) in messages.iter().enumerate() {
            let frame = f.bytes(f.span(i..i + 1));
            let (payload, rest) = crate::wsframe::split_text(frame).unwrap();
            assert!(rest.is_empty());
            let value: serde_json::Value = serde_json::from_slice(payload).unwrap();
            let keys: Vec<&str> = std::str::from_utf8(tags).unwrap().split(',').collect();
            assert_eq!(value["keys"], serde_json::json!(keys), "message {i}");
            assert_eq!(value["data"], *String::from_utf8_lossy(data), "message {i}");
            assert_eq!(payload, ws_json(&keys.join(","), data).as_bytes());
        }
    }

    #[test]
    fn frames_are_built_once_and_lie_back_to_back() {
        let b = batch();
        assert_eq!(b.size(), 47, "no frames before they are needed");
        let f = b.frames();
        assert!(std::ptr::eq(f, b.frames()), "encoded once");
        let third = f.bytes(f.span(2..3));
        assert_eq!(third, b"\x81\x19{\"keys\":[\"c\"],\"data\":\"x\"}");
        assert_eq!(frame_tags(third).as_deref(), Some("c"));
        let two = f.bytes(f.span(1..3));
        assert!(two.ends_with(third));
        assert_eq!(
            frame_tags(&two[..two.len() - third.len()]).as_deref(),
            Some("a")
        );
        assert_eq!(b.size(), 47 + f.len());
        assert_eq!(frame_tags(b"nonsense"), None);
    }
}
