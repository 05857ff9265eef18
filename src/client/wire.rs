//! The line protocol from the client's side: what a line from the server is, and the checks on
//! what the client sends. Pure: no I/O.

use super::error::DataError;
use crate::tags::TagSet;

/// One line from the server, without its `\n`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// `publish TAGS DATA`: a delivery.
    Delivery { tags: &'a [u8], data: &'a [u8] },
    /// `error slow consumer: dropped N messages`: the server dropped N deliveries.
    Dropped(u64),
    /// `pong`.
    Pong,
    /// `list [...]`: what follows `list `.
    List(&'a [u8]),
    /// `tags TOKEN ...`: what follows `tags `.
    Tags(&'a [u8]),
    /// `error REASON`: the reason.
    Error(&'a [u8]),
    /// Anything else.
    Other(&'a [u8]),
}

/// Sorts a line from the server.
pub(crate) fn classify(line: &[u8]) -> Line<'_> {
    if let Some(rest) = line.strip_prefix(b"publish ") {
        return match memchr::memchr(b' ', rest) {
            Some(i) => Line::Delivery {
                tags: &rest[..i],
                data: &rest[i + 1..],
            },
            None => Line::Other(line),
        };
    }
    if line == b"pong" {
        return Line::Pong;
    }
    if let Some(reason) = line.strip_prefix(b"error ") {
        return match dropped_count(reason) {
            Some(n) => Line::Dropped(n),
            None => Line::Error(reason),
        };
    }
    if let Some(rest) = line.strip_prefix(b"list ") {
        return Line::List(rest);
    }
    if let Some(rest) = line.strip_prefix(b"tags ") {
        return Line::Tags(rest);
    }
    Line::Other(line)
}

/// The N of exactly `slow consumer: dropped N messages` (`line::dropped_notice`).
fn dropped_count(reason: &[u8]) -> Option<u64> {
    let n = reason
        .strip_prefix(b"slow consumer: dropped ")?
        .strip_suffix(b" messages")?;
    if n.is_empty() || !n.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(n).ok()?.parse().ok()
}

/// The subscriptions of a `list` reply, from what follows `list `: `[[a,b] [c]]` or `[]`.
/// Tags hold no spaces, so the sets are the space-separated words; each is `[` + set + `]`
/// (a tag may itself contain brackets, so only the outer pair is taken off).
pub(crate) fn parse_list(rest: &[u8]) -> Option<Vec<TagSet>> {
    let inner = rest.strip_prefix(b"[")?.strip_suffix(b"]")?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    inner
        .split(|&b| b == b' ')
        .map(|word| {
            let set = word.strip_prefix(b"[")?.strip_suffix(b"]")?;
            // The server's `max_tags` may be above this client's: take what it holds.
            TagSet::parse(set, usize::MAX).ok()
        })
        .collect()
}

/// The tags of a `tags` reply, from what follows `tags `: `TOKEN` or `TOKEN a,b,c`. `None`
/// when it is malformed or about another token.
pub(crate) fn parse_tags(rest: &[u8], token: &str) -> Option<Vec<String>> {
    let list = rest.strip_prefix(token.as_bytes())?;
    if list.is_empty() {
        return Some(Vec::new());
    }
    let set = TagSet::parse(list.strip_prefix(b" ")?, usize::MAX).ok()?;
    Some(set.iter().map(str::to_string).collect())
}

/// Checks that `publish TAGS DATA` carries `data` byte for byte within `max_line` bytes.
#[inline]
pub(crate) fn check_data(tags_len: usize, data: &[u8], max_line: usize) -> Result<(), DataError> {
    if has_newline(data) {
        return Err(DataError::Newline);
    }
    if data.last() == Some(&b'\r') {
        return Err(DataError::TrailingCarriageReturn);
    }
    let len = "publish ".len() + tags_len + 1 + data.len();
    if len > max_line {
        return Err(DataError::TooLong { len, max: max_line });
    }
    Ok(())
}

/// Whether `data` holds a `\n`. Most messages are short: for them a scan without an early
/// exit, which the compiler turns into vector compares, beats `memchr`'s set-up.
#[inline]
fn has_newline(data: &[u8]) -> bool {
    if data.len() <= 256 {
        data.iter().fold(false, |seen, &b| seen | (b == b'\n'))
    } else {
        memchr::memchr(b'\n', data).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line;

    fn set(s: &str) -> TagSet {
        s.parse().unwrap()
    }

    #[test]
    fn lines() {
        assert_eq!(
            classify(b"publish a,b hello  world "),
            Line::Delivery {
                tags: b"a,b",
                data: b"hello  world "
            }
        );
        assert_eq!(
            classify(b"publish a "),
            Line::Delivery {
                tags: b"a",
                data: b""
            }
        );
        // Data is never looked at: it may end in `\r` or look like anything.
        assert_eq!(
            classify(b"publish a pong\r"),
            Line::Delivery {
                tags: b"a",
                data: b"pong\r"
            }
        );
        assert_eq!(classify(b"publish a"), Line::Other(b"publish a"));
        assert_eq!(classify(b"pong"), Line::Pong);
        assert_eq!(classify(b"pong "), Line::Other(b"pong "));
        assert_eq!(classify(b"list []"), Line::List(b"[]"));
        assert_eq!(classify(b"tags t a"), Line::Tags(b"t a"));
        assert_eq!(
            classify(b"error unknown token"),
            Line::Error(b"unknown token")
        );
        assert_eq!(classify(b"hello"), Line::Other(b"hello"));
    }

    #[test]
    fn slow_consumer_notices() {
        let notice = line::dropped_notice(42);
        assert_eq!(classify(&notice[..notice.len() - 1]), Line::Dropped(42));
        assert_eq!(
            classify(b"error slow consumer: dropped 18446744073709551615 messages"),
            Line::Dropped(u64::MAX)
        );
        // Anything short of the exact notice is an ordinary error reply.
        for reason in [
            &b"slow consumer: dropped  messages"[..],
            b"slow consumer: dropped 1x messages",
            b"slow consumer: dropped -1 messages",
            b"slow consumer: dropped 1 messages!",
            b"slow consumer: dropped 99999999999999999999 messages",
        ] {
            let line = [b"error ".as_slice(), reason].concat();
            assert_eq!(classify(&line), Line::Error(reason), "{reason:?}");
        }
    }

    #[test]
    fn list_replies() {
        let sets = [set("b,a"), set("c"), set("x]"), set("[y")];
        let reply = line::list_reply(&sets);
        let rest = reply
            .strip_prefix(b"list ")
            .and_then(|r| r.strip_suffix(b"\n"))
            .unwrap();
        let mut want = sets.to_vec();
        want.sort();
        assert_eq!(parse_list(rest), Some(want));
        assert_eq!(parse_list(b"[]"), Some(vec![]));
        for bad in [
            &b""[..],
            b"[",
            b"[[a]",
            b"[a]",
            b"[[a]  [b]]",
            b"[[a,,b]]",
            b"[[]]",
        ] {
            assert_eq!(parse_list(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tags_replies() {
        let reply = line::tags_reply("tok", &["a".into(), "b".into()]);
        let rest = reply
            .strip_prefix(b"tags ")
            .and_then(|r| r.strip_suffix(b"\n"))
            .unwrap();
        assert_eq!(parse_tags(rest, "tok"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(parse_tags(b"tok", "tok"), Some(vec![]));
        assert_eq!(parse_tags(b"other a", "tok"), None);
        assert_eq!(parse_tags(b"tokx a", "tok"), None);
        assert_eq!(parse_tags(b"tok ", "tok"), None);
    }

    #[test]
    fn newlines_are_found_anywhere_in_short_and_long_data() {
        for len in [0, 1, 7, 31, 64, 255, 256, 257, 1000] {
            let mut data = vec![b'x'; len];
            assert!(!has_newline(&data), "{len}");
            for at in [0, len / 2, len.saturating_sub(1)] {
                if at < len {
                    data[at] = b'\n';
                    assert!(has_newline(&data), "{len} {at}");
                    data[at] = b'x';
                }
            }
        }
    }

    #[test]
    fn data_checks() {
        assert_eq!(check_data(1, b"fine\rhere", 100), Ok(()));
        assert_eq!(check_data(1, b"", 100), Ok(()));
        assert_eq!(check_data(1, b"a\nb", 100), Err(DataError::Newline));
        assert_eq!(
            check_data(1, b"a\r", 100),
            Err(DataError::TrailingCarriageReturn)
        );
        // `publish a ` is 10 bytes, then the data.
        assert_eq!(check_data(1, &[b'x'; 90], 100), Ok(()));
        assert_eq!(
            check_data(1, &[b'x'; 91], 100),
            Err(DataError::TooLong { len: 101, max: 100 })
        );
    }
}
