//! The receiving side's reading of payloads: which node sent them, whether any were missed,
//! and the records they carry once reassembled. Pure; no I/O.
//!
//! Payloads of one node arrive in the order it sent them (a node sends them one unit at a time,
//! and PostgreSQL delivers a unit's notifications together, in order). A record that spans
//! payloads is put together from them. When a node's sequence numbers skip (this node was cut
//! off, or the other node's unit failed), what was pending from that node is dropped and
//! reading resumes at the next record boundary, so a message is delivered whole or not at all.

use super::codec::{self, DecodeError, Record, TokenChange};
use crate::tags::TagSet;
use std::collections::HashMap;

/// What the records of the bus are handed to.
pub trait Sink {
    /// A message published on another node; `tags` are valid and normalised.
    fn message(&mut self, tags: &[u8], data: &[u8]);
    /// A token change made on another node.
    fn token_change(&mut self, change: TokenChange<'_>);
}

/// Counts of what the inbox saw, since it was made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Payloads from other nodes.
    pub payloads: u64,
    /// Messages handed on.
    pub messages: u64,
    /// Payloads of other nodes that never arrived (sequence numbers skipped).
    pub missed: u64,
    /// Records or payloads that could not be read, or that break this node's limits.
    pub bad: u64,
}

/// What is known of one other node.
struct Peer {
    next_seq: u64,
    /// The unfinished record its last payload ended in (still escaped).
    pending: Vec<u8>,
    /// The record being received lost its beginning: skip to the next record boundary.
    skipping: bool,
    /// When it was last heard from, in payloads received by this inbox.
    last_heard: u64,
}

/// Most other nodes remembered; the one heard from least recently is forgotten first (nodes
/// that restarted come back under a new id).
const MAX_PEERS: usize = 1024;

/// Reads the payloads of other nodes.
pub struct Inbox {
    own_prefix: String,
    peers: HashMap<u64, Peer>,
    max_tags: usize,
    max_line_bytes: usize,
    /// The last tags found valid, so a run of messages with the same tags is checked once.
    valid_tags: Vec<u8>,
    tags: Vec<u8>,
    data: Vec<u8>,
    counts: Counts,
}

impl Inbox {
    /// An inbox for node `own` (whose payloads are ignored), with this node's limits.
    pub fn new(own: u64, max_tags: usize, max_line_bytes: usize) -> Inbox {
        Inbox {
            own_prefix: codec::node_prefix(own),
            peers: HashMap::new(),
            max_tags,
            max_line_bytes,
            valid_tags: Vec::new(),
            tags: Vec::new(),
            data: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// What was seen so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Forgets every unfinished record: the connection was lost, so what follows them is gone.
    /// (Sequence numbers would show it too; this keeps the memory from waiting for them.)
    pub fn reset(&mut self) {
        for peer in self.peers.values_mut() {
            peer.pending.clear();
            peer.skipping = false;
        }
    }

    /// Reads one payload, handing its complete records to `sink`.
    pub fn take(&mut self, payload: &str, sink: &mut impl Sink) {
        if payload.starts_with(&self.own_prefix) {
            return;
        }
        let (header, body) = match codec::parse_header(payload.as_bytes()) {
            Ok(v) => v,
            Err(_) => {
                self.counts.bad += 1;
                return;
            }
        };
        self.counts.payloads += 1;
        let heard = self.counts.payloads;
        let mut peer = match self.peers.remove(&header.node) {
            Some(p) => p,
            None => {
                self.forget_oldest();
                Peer {
                    // A node not heard from before: whatever it sent earlier is not missed.
                    next_seq: header.seq,
                    pending: Vec::new(),
                    skipping: false,
                    last_heard: heard,
                }
            }
        };
        if header.seq != peer.next_seq {
            self.counts.missed += header.seq.saturating_sub(peer.next_seq).max(1);
            peer.pending.clear();
            peer.skipping = header.continues;
        } else if header.continues && peer.pending.is_empty() && !peer.skipping {
            // The beginning of this record was not received (this node started listening
            // in the middle of the unit).
            peer.skipping = true;
        }
        peer.next_seq = header.seq.wrapping_add(1);
        peer.last_heard = heard;
        self.read_body(&mut peer, body, sink);
        self.peers.insert(header.node, peer);
    }

    fn read_body(&mut self, peer: &mut Peer, mut body: &[u8], sink: &mut impl Sink) {
        if peer.skipping {
            match body.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    peer.skipping = false;
                    self.counts.bad += 1;
                    body = &body[end + 1..];
                }
                None => return,
            }
        }
        let Some(last_end) = body.iter().rposition(|&b| b == b'\n') else {
            self.keep_pending(peer, body);
            return;
        };
        let (complete, rest) = body.split_at(last_end + 1);
        let mut lines = complete[..complete.len() - 1].split(|&b| b == b'\n');
        if !peer.pending.is_empty() {
            let first = lines.next().expect("split yields at least one piece");
            let mut whole = std::mem::take(&mut peer.pending);
            whole.extend_from_slice(first);
            self.record(&whole, sink);
            whole.clear();
            peer.pending = whole;
        }
        for line in lines {
            self.record(line, sink);
        }
        self.keep_pending(peer, rest);
    }

    /// Keeps the start of a record for the next payload, unless it is already longer than any
    /// record this node accepts (escaping at most triples a byte).
    fn keep_pending(&mut self, peer: &mut Peer, part: &[u8]) {
        if peer.pending.len() + part.len() > 3 * self.max_line_bytes + 64 {
            peer.pending.clear();
            peer.skipping = true;
            return;
        }
        peer.pending.extend_from_slice(part);
    }

    fn record(&mut self, line: &[u8], sink: &mut impl Sink) {
        if self.try_record(line, sink).is_err() {
            self.counts.bad += 1;
        }
    }

    fn try_record(&mut self, line: &[u8], sink: &mut impl Sink) -> Result<(), DecodeError> {
        match codec::parse_record(line)? {
            Record::Publish { tags, data } => {
                let mut tag_buf = std::mem::take(&mut self.tags);
                let mut data_buf = std::mem::take(&mut self.data);
                let result = self.message(tags, data, &mut tag_buf, &mut data_buf, sink);
                self.tags = tag_buf;
                self.data = data_buf;
                result?;
            }
            Record::Token(change) => {
                let (token, unescaped) = match change {
                    TokenChange::Unregistered(t) | TokenChange::Unset(t) => (t, &mut self.data),
                };
                unescaped.clear();
                codec::unescape_into(token, unescaped)?;
                crate::tags::validate_token(unescaped).map_err(|_| DecodeError::Record)?;
                let token = unescaped.as_slice();
                sink.token_change(match change {
                    TokenChange::Unregistered(_) => TokenChange::Unregistered(token),
                    TokenChange::Unset(_) => TokenChange::Unset(token),
                });
            }
        }
        Ok(())
    }

    /// Checks a message against this node's rules and hands it on. `tags` and `data` are as
    /// received (escaped); the buffers hold them unescaped when they need it.
    fn message(
        &mut self,
        tags: &[u8],
        data: &[u8],
        tag_buf: &mut Vec<u8>,
        data_buf: &mut Vec<u8>,
        sink: &mut impl Sink,
    ) -> Result<(), DecodeError> {
        let tags = unescaped(tags, tag_buf)?;
        let data = unescaped(data, data_buf)?;
        if tags != self.valid_tags.as_slice() {
            // Sent by another mist, so valid and normalised unless something else wrote to
            // the channel or the nodes' `max_tags` differ: checked once per run of equal
            // tags, as the index trusts them.
            let set = TagSet::parse(tags, self.max_tags).map_err(|_| DecodeError::Record)?;
            if set.as_str().as_bytes() != tags {
                return Err(DecodeError::Record);
            }
            self.valid_tags.clear();
            self.valid_tags.extend_from_slice(tags);
        }
        if "publish ".len() + tags.len() + 1 + data.len() > self.max_line_bytes
            || data.contains(&b'\n')
        {
            return Err(DecodeError::Record);
        }
        self.counts.messages += 1;
        sink.message(tags, data);
        Ok(())
    }

    fn forget_oldest(&mut self) {
        if self.peers.len() < MAX_PEERS {
            return;
        }
        if let Some(oldest) = self
            .peers
            .iter()
            .min_by_key(|(_, p)| p.last_heard)
            .map(|(&id, _)| id)
        {
            self.peers.remove(&oldest);
        }
    }
}

/// The bytes `text` stands for: `text` itself when it holds no escape (ordinary messages:
/// no copy), else unescaped into `buf`.
fn unescaped<'a>(text: &'a [u8], buf: &'a mut Vec<u8>) -> Result<&'a [u8], DecodeError> {
    if !text.contains(&codec::ESC) {
        return Ok(text);
    }
    buf.clear();
    codec::unescape_into(text, buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::codec::{Charset, pack, push_message, push_token_change};

    #[derive(Default, Debug, PartialEq)]
    struct Got {
        msgs: Vec<(String, Vec<u8>)>,
        tokens: Vec<String>,
    }

    impl Sink for Got {
        fn message(&mut self, tags: &[u8], data: &[u8]) {
            self.msgs
                .push((String::from_utf8(tags.to_vec()).unwrap(), data.to_vec()));
        }
        fn token_change(&mut self, change: TokenChange<'_>) {
            self.tokens.push(format!("{change:?}"));
        }
    }

    fn stream(msgs: &[(&str, &[u8])]) -> String {
        let mut s = String::new();
        for (tags, data) in msgs {
            push_message(&mut s, tags.as_bytes(), data, Charset::Utf8);
        }
        s
    }

    fn data_of(got: &Got) -> Vec<Vec<u8>> {
        got.msgs.iter().map(|(_, d)| d.clone()).collect()
    }

    #[test]
    fn own_payloads_are_ignored() {
        let mut inbox = Inbox::new(5, 32, 1 << 20);
        let mut got = Got::default();
        let mut seq = 0;
        for p in pack(&stream(&[("a", b"1")]), 5, &mut seq, 8000) {
            inbox.take(&p, &mut got);
        }
        assert_eq!(got, Got::default());
        assert_eq!(inbox.counts(), Counts::default());
    }

    #[test]
    fn records_spanning_payloads_are_put_together() {
        let big = vec![b'x'; 1000];
        let mut s = stream(&[("a", b"first"), ("b", &big), ("a", b"\0\xff")]);
        push_token_change(&mut s, TokenChange::Unregistered(b"tok"), Charset::Utf8);
        let mut seq = 0;
        let payloads = pack(&s, 9, &mut seq, 100);
        assert!(payloads.len() > 10);
        let mut inbox = Inbox::new(1, 32, 1 << 20);
        let mut got = Got::default();
        for p in &payloads {
            inbox.take(p, &mut got);
        }
        assert_eq!(data_of(&got), [b"first".to_vec(), big, b"\0\xff".to_vec()]);
        assert_eq!(got.tokens, ["Unregistered([116, 111, 107])"]);
        let c = inbox.counts();
        assert_eq!((c.messages, c.missed, c.bad), (3, 0, 0));
    }

    #[test]
    fn a_gap_drops_the_broken_record_and_resumes_at_the_next() {
        let big = vec![b'y'; 500];
        let s = stream(&[("a", b"1"), ("a", &big), ("a", b"3")]);
        let mut seq = 0;
        let payloads = pack(&s, 9, &mut seq, 100);
        let mut inbox = Inbox::new(1, 32, 1 << 20);
        let mut got = Got::default();
        // Lose the second payload: the big message is broken, the others survive.
        for (i, p) in payloads.iter().enumerate() {
            if i != 2 {
                inbox.take(p, &mut got);
            }
        }
        assert_eq!(data_of(&got), [b"1".to_vec(), b"3".to_vec()]);
        assert_eq!(inbox.counts().missed, 1);

        // A node first heard in the middle of a record skips to the next one.
        let mut late = Inbox::new(1, 32, 1 << 20);
        let mut got = Got::default();
        for p in &payloads[3..] {
            late.take(p, &mut got);
        }
        assert_eq!(data_of(&got), [b"3".to_vec()]);
        assert_eq!(late.counts().missed, 0);
    }

    #[test]
    fn bad_input_is_counted_not_delivered() {
        let mut inbox = Inbox::new(1, 2, 100);
        let mut got = Got::default();
        let mut seq = 0;
        let mut s = stream(&[
            ("b,a", b"not normalised"),
            ("a,b,c", b"too many tags"),
            ("a b", b"x"),
            ("a", &[b'z'; 200]),
            ("ok", b"fine"),
        ]);
        s.push_str("bad\x10zz escape\n");
        s.push_str(" unregister bad token\n");
        push_token_change(&mut s, TokenChange::Unset(b"t\xffk"), Charset::Utf8);
        for p in pack(&s, 9, &mut seq, 8000) {
            inbox.take(&p, &mut got);
        }
        inbox.take("garbage", &mut got);
        // `a b x` is tags `a` and data `b x`: data may hold spaces.
        assert_eq!(
            got.msgs,
            [
                ("a".to_string(), b"b x".to_vec()),
                ("ok".to_string(), b"fine".to_vec())
            ]
        );
        assert!(got.tokens.is_empty(), "{:?}", got.tokens);
        assert_eq!(inbox.counts().bad, 7);
    }

    #[test]
    fn many_nodes_interleave() {
        let mut inbox = Inbox::new(1, 32, 1 << 20);
        let mut got = Got::default();
        let (mut s2, mut s3) = (0, 0);
        let a = pack(&stream(&[("a", &[b'2'; 300])]), 2, &mut s2, 100);
        let b = pack(&stream(&[("a", &[b'3'; 300])]), 3, &mut s3, 100);
        // Units of different nodes never interleave in PostgreSQL, but payloads of
        // different nodes are read independently anyway.
        for (x, y) in a.iter().zip(&b) {
            inbox.take(x, &mut got);
            inbox.take(y, &mut got);
        }
        let mut d = data_of(&got);
        d.sort();
        assert_eq!(d, [vec![b'2'; 300], vec![b'3'; 300]]);
    }
}
