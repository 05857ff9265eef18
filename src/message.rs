//! A published message, encoded once and shared by every subscriber that receives it.
//!
//! The TCP delivery line is built when the message is published; the WebSocket frame is built
//! the first time a WebSocket subscriber needs it, and at most once.

use std::sync::{Arc, OnceLock};

/// One published message. Shared through `Arc`; never copied per subscriber.
pub struct Message {
    /// `publish TAGS DATA\n`, tags normalised.
    line: Box<[u8]>,
    /// Where the tags end in `line` (the index of the space before the data).
    tags_end: usize,
    /// The WebSocket text frame `{"keys":[...],"data":"..."}`, built on first use.
    ws: OnceLock<Box<[u8]>>,
}

const PREFIX: &[u8] = b"publish ";

impl Message {
    /// Builds a message from normalised tags (sorted, de-duplicated, comma-joined) and data.
    pub fn new(tags: &[u8], data: &[u8]) -> Arc<Message> {
        let mut line = Vec::with_capacity(PREFIX.len() + tags.len() + data.len() + 2);
        line.extend_from_slice(PREFIX);
        line.extend_from_slice(tags);
        line.push(b' ');
        line.extend_from_slice(data);
        line.push(b'\n');
        Arc::new(Message {
            line: line.into_boxed_slice(),
            tags_end: PREFIX.len() + tags.len(),
            ws: OnceLock::new(),
        })
    }

    /// The TCP delivery line, newline included.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// The normalised tags, comma-joined.
    pub fn tags(&self) -> &[u8] {
        &self.line[PREFIX.len()..self.tags_end]
    }

    /// The data, untouched.
    pub fn data(&self) -> &[u8] {
        &self.line[self.tags_end + 1..self.line.len() - 1]
    }

    /// What the message costs a queue, in bytes.
    pub fn size(&self) -> usize {
        self.line.len()
    }

    /// The WebSocket delivery frame, encoded on first call and reused after.
    pub fn ws_frame(&self) -> &[u8] {
        self.ws.get_or_init(|| {
            let json = self.ws_json();
            crate::wsframe::text(json.as_bytes()).into_boxed_slice()
        })
    }

    /// `{"keys":["a","b"],"data":"DATA"}`; bytes of the data that are not UTF-8 become U+FFFD.
    pub fn ws_json(&self) -> String {
        // Tags are valid UTF-8 by construction; the data may not be.
        let tags = String::from_utf8_lossy(self.tags());
        let keys: Vec<&str> = tags.split(',').collect();
        let data = String::from_utf8_lossy(self.data());
        // Written by hand so the fields come in the documented order; serde_json escapes.
        let keys = serde_json::to_string(&keys).expect("strings always serialise");
        let data = serde_json::to_string(&data).expect("strings always serialise");
        format!(r#"{{"keys":{keys},"data":{data}}}"#)
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Message({:?})", String::from_utf8_lossy(&self.line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_line_and_parts() {
        let m = Message::new(b"a,b", b"hello world");
        assert_eq!(m.line(), b"publish a,b hello world\n");
        assert_eq!(m.tags(), b"a,b");
        assert_eq!(m.data(), b"hello world");
        let e = Message::new(b"a", b"");
        assert_eq!(e.line(), b"publish a \n");
        assert_eq!(e.data(), b"");
    }

    #[test]
    fn json_keys_are_sorted_and_bad_utf8_is_replaced() {
        let m = Message::new(b"a,b", b"say \"hi\"\xff");
        assert_eq!(
            m.ws_json(),
            "{\"keys\":[\"a\",\"b\"],\"data\":\"say \\\"hi\\\"\u{fffd}\"}"
        );
    }

    #[test]
    fn ws_frame_is_built_once() {
        let m = Message::new(b"a", b"x");
        let p1 = m.ws_frame().as_ptr();
        let p2 = m.ws_frame().as_ptr();
        assert_eq!(p1, p2);
        assert_eq!(m.ws_frame()[0], 0x81);
    }
}
