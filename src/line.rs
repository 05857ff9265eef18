//! The TCP line protocol: one line in, one [`Command`] out, and the replies as bytes.
//!
//! Pure: no I/O. The connection code in `tcp.rs` frames lines and calls [`parse`]; replies are
//! built here so their exact bytes are unit-tested in one place.

use crate::tags::{self, TagError, TagSet};
use std::fmt::Write as _;

/// One parsed command. Borrowed parts point into the line.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Ping,
    Subscribe(TagSet),
    Unsubscribe(TagSet),
    /// `tags` is the list as sent, already validated; `normalised` says whether it is sorted
    /// and free of duplicates, so the delivery line can reuse it as it is.
    Publish {
        tags: &'a [u8],
        normalised: bool,
        data: &'a [u8],
    },
    List,
    Register {
        tags: TagSet,
        token: &'a str,
    },
    Unregister {
        token: &'a str,
    },
    Set {
        tags: TagSet,
        token: &'a str,
    },
    Unset {
        tags: TagSet,
        token: &'a str,
    },
    Tags {
        token: &'a str,
    },
    /// The admin token as sent; compared, never validated or logged.
    Auth {
        token: &'a [u8],
    },
    /// `debug-panic`: makes the connection's thread panic, to test that a panic stays local.
    /// A fault hook for tests; it exists only in debug builds (release builds answer
    /// `error unknown command 'debug-panic'`) and is not part of the protocol.
    #[cfg(debug_assertions)]
    DebugPanic,
}

impl Command<'_> {
    /// True for the commands that change or reveal tokens.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Command::Register { .. }
                | Command::Unregister { .. }
                | Command::Set { .. }
                | Command::Unset { .. }
                | Command::Tags { .. }
        )
    }

    /// The command as a line, without the line ending: tag sets in their normalised form,
    /// `publish` tags and data as they are. [`parse`] gives a command it returned back from
    /// this line; the property tests and the fuzz targets rely on that.
    #[cfg(any(test, fuzzing))]
    pub fn to_line(&self) -> Vec<u8> {
        match self {
            Command::Ping => b"ping".to_vec(),
            Command::List => b"list".to_vec(),
            Command::Subscribe(tags) => format!("subscribe {tags}").into_bytes(),
            Command::Unsubscribe(tags) => format!("unsubscribe {tags}").into_bytes(),
            Command::Publish { tags, data, .. } => [b"publish".as_slice(), tags, data].join(&b' '),
            Command::Register { tags, token } => format!("register {tags} {token}").into_bytes(),
            Command::Unregister { token } => format!("unregister {token}").into_bytes(),
            Command::Set { tags, token } => format!("set {tags} {token}").into_bytes(),
            Command::Unset { tags, token } => format!("unset {tags} {token}").into_bytes(),
            Command::Tags { token } => format!("tags {token}").into_bytes(),
            Command::Auth { token } => [b"auth".as_slice(), token].join(&b' '),
            #[cfg(debug_assertions)]
            Command::DebugPanic => b"debug-panic".to_vec(),
        }
    }
}

/// Why a line is not a valid command. Its `Display` is the reason sent after `error `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("empty command")]
    Empty,
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    #[error("usage: {0}")]
    Usage(&'static str),
    #[error(transparent)]
    Invalid(#[from] TagError),
    /// The line begins like an HTTP request or a `Host:` header (see [`looks_like_http`]):
    /// the connection must be closed, not answered line by line.
    #[error("HTTP is not spoken on this port")]
    Http,
}

/// The request methods whose request line [`looks_like_http`] recognises, with their space.
const HTTP_METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// True when a line begins like an HTTP request (`POST / HTTP/1.1`) or a `Host:` header (in
/// any case). A web page can make the user's browser send an HTTP request to the line port;
/// its body would otherwise run as commands. No command begins like either, so nothing a
/// client of the line protocol sends is mistaken for one.
pub fn looks_like_http(line: &[u8]) -> bool {
    HTTP_METHODS.iter().any(|m| line.starts_with(m))
        || line
            .get(..5)
            .is_some_and(|h| h.eq_ignore_ascii_case(b"host:"))
}

/// Parses one line, without its line ending.
///
/// Words are separated by exactly one space; `DATA` of `publish` is everything after the space
/// that follows the tags.
///
/// # Errors
/// An unknown command, wrong arguments, or an invalid tag list or token; [`LineError::Http`]
/// for a line that begins like HTTP, after which the connection must be closed.
pub fn parse(line: &[u8], max_tags: usize) -> Result<Command<'_>, LineError> {
    if line.is_empty() {
        return Err(LineError::Empty);
    }
    let (name, rest) = match memchr(b' ', line) {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    match name {
        b"publish" => parse_publish(rest, max_tags),
        b"ping" => no_args(rest, Command::Ping, "ping"),
        b"list" => no_args(rest, Command::List, "list"),
        b"subscribe" => {
            let [t] = words(rest, "subscribe TAGS")?;
            Ok(Command::Subscribe(TagSet::parse(t, max_tags)?))
        }
        b"unsubscribe" => {
            let [t] = words(rest, "unsubscribe TAGS")?;
            Ok(Command::Unsubscribe(TagSet::parse(t, max_tags)?))
        }
        b"register" => {
            let (tags, token) = tags_and_token(rest, max_tags, "register TAGS TOKEN")?;
            Ok(Command::Register { tags, token })
        }
        b"set" => {
            let (tags, token) = tags_and_token(rest, max_tags, "set TAGS TOKEN")?;
            Ok(Command::Set { tags, token })
        }
        b"unset" => {
            let (tags, token) = tags_and_token(rest, max_tags, "unset TAGS TOKEN")?;
            Ok(Command::Unset { tags, token })
        }
        b"unregister" => {
            let [t] = words(rest, "unregister TOKEN")?;
            Ok(Command::Unregister {
                token: tags::validate_token(t)?,
            })
        }
        b"tags" => {
            let [t] = words(rest, "tags TOKEN")?;
            Ok(Command::Tags {
                token: tags::validate_token(t)?,
            })
        }
        b"auth" => {
            let [t] = words(rest, "auth ADMIN_TOKEN")?;
            Ok(Command::Auth { token: t })
        }
        #[cfg(debug_assertions)]
        b"debug-panic" => no_args(rest, Command::DebugPanic, "debug-panic"),
        // Checked only here, for lines that are no command: the known ones pay nothing.
        _ if looks_like_http(line) => Err(LineError::Http),
        _ => Err(LineError::UnknownCommand(printable(name, 40))),
    }
}

fn parse_publish(rest: Option<&[u8]>, max_tags: usize) -> Result<Command<'_>, LineError> {
    const USAGE: &str = "publish TAGS DATA";
    let rest = rest.ok_or(LineError::Usage(USAGE))?;
    let sp = memchr(b' ', rest).ok_or(LineError::Usage(USAGE))?;
    let (tags, data) = (&rest[..sp], &rest[sp + 1..]);
    let normalised = tags::check_list(tags, max_tags)?;
    Ok(Command::Publish {
        tags,
        normalised,
        data,
    })
}

fn no_args<'a>(
    rest: Option<&[u8]>,
    cmd: Command<'a>,
    usage: &'static str,
) -> Result<Command<'a>, LineError> {
    match rest {
        None => Ok(cmd),
        Some(_) => Err(LineError::Usage(usage)),
    }
}

/// Splits the arguments into exactly `N` non-empty words separated by single spaces.
fn words<'a, const N: usize>(
    rest: Option<&'a [u8]>,
    usage: &'static str,
) -> Result<[&'a [u8]; N], LineError> {
    let rest = rest.ok_or(LineError::Usage(usage))?;
    let mut out = [&rest[..0]; N];
    let mut parts = rest.split(|&b| b == b' ');
    for slot in out.iter_mut() {
        match parts.next() {
            Some(w) if !w.is_empty() => *slot = w,
            _ => return Err(LineError::Usage(usage)),
        }
    }
    if parts.next().is_some() {
        return Err(LineError::Usage(usage));
    }
    Ok(out)
}

fn tags_and_token<'a>(
    rest: Option<&'a [u8]>,
    max_tags: usize,
    usage: &'static str,
) -> Result<(TagSet, &'a str), LineError> {
    let [t, token] = words(rest, usage)?;
    Ok((TagSet::parse(t, max_tags)?, tags::validate_token(token)?))
}

#[inline]
fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Renders untrusted bytes for an error message: lossy UTF-8, control characters escaped,
/// cut at `max` characters, so the reply stays one line.
pub fn printable(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    for (i, c) in String::from_utf8_lossy(bytes).chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `pong\n`.
pub const PONG: &[u8] = b"pong\n";

/// `error REASON\n`. The reason is flattened to one line.
pub fn error_reply(reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + reason.len());
    out.extend_from_slice(b"error ");
    out.extend(
        reason
            .bytes()
            .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    out.push(b'\n');
    out
}

/// `list [[a,b] [c]]\n`: every subscription, sorted bytewise by its comma-joined form.
pub fn list_reply<'a>(sets: impl IntoIterator<Item = &'a TagSet>) -> Vec<u8> {
    let mut joined: Vec<&str> = sets.into_iter().map(TagSet::as_str).collect();
    joined.sort_unstable();
    let mut out = String::from("list [");
    for (i, s) in joined.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push('[');
        out.push_str(s);
        out.push(']');
    }
    out.push_str("]\n");
    out.into_bytes()
}

/// `tags TOKEN a,b,c\n`, or `tags TOKEN\n` when the token has no tags. `tags` must be sorted.
pub fn tags_reply(token: &str, tags: &[String]) -> Vec<u8> {
    let mut out = format!("tags {token}");
    if !tags.is_empty() {
        out.push(' ');
        out.push_str(&tags.join(","));
    }
    out.push('\n');
    out.into_bytes()
}

/// The slow-consumer notice, `error slow consumer: dropped N messages\n`.
pub fn dropped_notice(n: u64) -> Vec<u8> {
    format!("error slow consumer: dropped {n} messages\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<Command<'_>, LineError> {
        parse(line.as_bytes(), 32)
    }

    fn set(s: &str) -> TagSet {
        TagSet::parse(s.as_bytes(), 32).unwrap()
    }

    #[test]
    fn simple_commands() {
        assert_eq!(p("ping"), Ok(Command::Ping));
        assert_eq!(p("list"), Ok(Command::List));
        assert_eq!(p("subscribe b,a"), Ok(Command::Subscribe(set("a,b"))));
        assert_eq!(p("unsubscribe a"), Ok(Command::Unsubscribe(set("a"))));
        assert_eq!(
            p("register a,b tok"),
            Ok(Command::Register {
                tags: set("a,b"),
                token: "tok"
            })
        );
        assert_eq!(
            p("set a tok"),
            Ok(Command::Set {
                tags: set("a"),
                token: "tok"
            })
        );
        assert_eq!(
            p("unset a tok"),
            Ok(Command::Unset {
                tags: set("a"),
                token: "tok"
            })
        );
        assert_eq!(
            p("unregister tok"),
            Ok(Command::Unregister { token: "tok" })
        );
        assert_eq!(p("tags tok"), Ok(Command::Tags { token: "tok" }));
        assert_eq!(p("auth s3cret"), Ok(Command::Auth { token: b"s3cret" }));
    }

    /// The fault hook exists in debug builds only, and is not an admin command.
    #[test]
    fn debug_panic_only_in_debug_builds() {
        #[cfg(debug_assertions)]
        {
            assert_eq!(p("debug-panic"), Ok(Command::DebugPanic));
            assert!(!Command::DebugPanic.is_admin());
            assert_eq!(p("debug-panic x"), Err(LineError::Usage("debug-panic")));
        }
        #[cfg(not(debug_assertions))]
        assert_eq!(
            p("debug-panic"),
            Err(LineError::UnknownCommand("debug-panic".into()))
        );
    }

    #[test]
    fn publish_keeps_data_untouched() {
        assert_eq!(
            p("publish a,b hello  world "),
            Ok(Command::Publish {
                tags: b"a,b",
                normalised: true,
                data: b"hello  world "
            })
        );
        assert_eq!(
            p("publish b,a x"),
            Ok(Command::Publish {
                tags: b"b,a",
                normalised: false,
                data: b"x"
            })
        );
        // A space and nothing after it is empty data.
        assert_eq!(
            p("publish a "),
            Ok(Command::Publish {
                tags: b"a",
                normalised: true,
                data: b""
            })
        );
        let raw = b"publish a \xff\x00\x01";
        assert_eq!(
            parse(raw, 32),
            Ok(Command::Publish {
                tags: b"a",
                normalised: true,
                data: b"\xff\x00\x01"
            })
        );
    }

    #[test]
    fn publish_errors() {
        assert_eq!(p("publish a"), Err(LineError::Usage("publish TAGS DATA")));
        assert_eq!(p("publish"), Err(LineError::Usage("publish TAGS DATA")));
        assert_eq!(
            p("publish  data"),
            Err(LineError::Invalid(TagError::EmptyList))
        );
        assert_eq!(
            p("publish a,,b data"),
            Err(LineError::Invalid(TagError::EmptyTag))
        );
    }

    #[test]
    fn argument_errors() {
        assert_eq!(p(""), Err(LineError::Empty));
        assert_eq!(p("ping x"), Err(LineError::Usage("ping")));
        assert_eq!(p("ping "), Err(LineError::Usage("ping")));
        assert_eq!(p("subscribe"), Err(LineError::Usage("subscribe TAGS")));
        assert_eq!(p("subscribe "), Err(LineError::Usage("subscribe TAGS")));
        assert_eq!(p("subscribe a b"), Err(LineError::Usage("subscribe TAGS")));
        assert_eq!(p("subscribe  a"), Err(LineError::Usage("subscribe TAGS")));
        assert_eq!(
            p("register a"),
            Err(LineError::Usage("register TAGS TOKEN"))
        );
        assert_eq!(
            p("register a b c"),
            Err(LineError::Usage("register TAGS TOKEN"))
        );
        assert_eq!(
            p("subscribe ,"),
            Err(LineError::Invalid(TagError::EmptyTag))
        );
        assert_eq!(p("PING"), Err(LineError::UnknownCommand("PING".into())));
        assert_eq!(
            parse(b"he\x01llo", 32),
            Err(LineError::UnknownCommand("he\\u{1}llo".into()))
        );
    }

    /// Request lines of every method and `Host:` headers in any case, with either line ending
    /// (framing has removed the `\n`; a `\r` may be left only inside the line), are HTTP.
    #[test]
    fn http_request_lines_and_host_headers_are_recognised() {
        for line in [
            "GET / HTTP/1.1",
            "POST / HTTP/1.1",
            "PUT /x HTTP/1.0",
            "HEAD / HTTP/1.1",
            "DELETE /a?b HTTP/1.1",
            "OPTIONS * HTTP/1.1",
            "PATCH / HTTP/1.1",
            "CONNECT 127.0.0.1:1445 HTTP/1.1",
            "TRACE / HTTP/1.1",
            "POST ",
            "Host: 127.0.0.1:1445",
            "host:x",
            "HOST: x",
            "hOsT:",
        ] {
            assert!(looks_like_http(line.as_bytes()), "{line}");
            assert_eq!(p(line), Err(LineError::Http), "{line}");
        }
        assert_eq!(
            LineError::Http.to_string(),
            "HTTP is not spoken on this port"
        );
    }

    /// Commands whose arguments or data contain the same words are commands; and a word that
    /// only starts like a method or a header is an unknown command, as before.
    #[test]
    fn lines_that_only_contain_http_words_are_not_http() {
        assert_eq!(
            p("publish a POST / HTTP/1.1"),
            Ok(Command::Publish {
                tags: b"a",
                normalised: true,
                data: b"POST / HTTP/1.1"
            })
        );
        assert_eq!(
            p("publish a Host: x"),
            Ok(Command::Publish {
                tags: b"a",
                normalised: true,
                data: b"Host: x"
            })
        );
        for line in [
            "POST",
            "GET",
            "get / HTTP/1.1",
            "post / HTTP/1.1",
            "GETX /",
            "Host",
            "Hostname: x",
            "Host :x",
            " GET / HTTP/1.1",
            "X-Host: x",
        ] {
            assert!(!looks_like_http(line.as_bytes()), "{line}");
            assert!(
                matches!(p(line), Err(LineError::UnknownCommand(_))),
                "{line}: {:?}",
                p(line)
            );
        }
    }

    #[test]
    fn error_text() {
        assert_eq!(
            p("bogus").unwrap_err().to_string(),
            "unknown command 'bogus'"
        );
        assert_eq!(p("ping x").unwrap_err().to_string(), "usage: ping");
        assert_eq!(
            p("subscribe a,,b").unwrap_err().to_string(),
            "invalid tags: empty tag"
        );
    }

    #[test]
    fn replies() {
        assert_eq!(error_reply("bad\nthing"), b"error bad thing\n");
        assert_eq!(list_reply(&[]), b"list []\n");
        assert_eq!(list_reply(&[set("c"), set("b,a")]), b"list [[a,b] [c]]\n");
        // Bytewise order of the joined form: "a,b" < "a" is false, "a" < "a,b" is true.
        assert_eq!(list_reply(&[set("a,b"), set("a")]), b"list [[a] [a,b]]\n");
        assert_eq!(tags_reply("t", &["a".into(), "b".into()]), b"tags t a,b\n");
        assert_eq!(tags_reply("t", &[]), b"tags t\n");
        assert_eq!(
            dropped_notice(3),
            b"error slow consumer: dropped 3 messages\n"
        );
    }

    #[test]
    fn printable_escapes_and_truncates() {
        assert_eq!(printable(b"abc", 2), "ab…");
        assert_eq!(printable(b"a\nb", 10), "a\\nb");
        assert_eq!(printable(b"\xff", 10), "\u{fffd}");
    }

    use crate::tags::{check_list, strategy};
    use proptest::prelude::*;

    /// Builds command number `kind` (every kind has one) from owned parts; `tags` is a valid
    /// list, `auth` has no space.
    fn build<'a>(kind: u8, tags: &'a str, token: &'a str, data: &'a [u8]) -> Command<'a> {
        let set = || TagSet::parse(tags.as_bytes(), 32).unwrap();
        match kind {
            0 => Command::Ping,
            1 => Command::List,
            2 => Command::Subscribe(set()),
            3 => Command::Unsubscribe(set()),
            4 => Command::Publish {
                tags: tags.as_bytes(),
                normalised: check_list(tags.as_bytes(), 32).unwrap(),
                data,
            },
            5 => Command::Register { tags: set(), token },
            6 => Command::Set { tags: set(), token },
            7 => Command::Unset { tags: set(), token },
            8 => Command::Unregister { token },
            9 => Command::Tags { token },
            _ => Command::Auth { token: data },
        }
    }

    const NAMES: [&str; 13] = [
        "ping",
        "list",
        "subscribe",
        "unsubscribe",
        "publish",
        "register",
        "unregister",
        "set",
        "unset",
        "tags",
        "auth",
        "bogus",
        "",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every kind of command, with any valid tags, token and data, formatted as a line
        /// parses back to the same command; a publish's delivery line (its tags normalised)
        /// parses to the same message.
        #[test]
        fn commands_round_trip(
            kind in 0..=10u8,
            tags in strategy::tag_list(32),
            token in strategy::token(),
            data in prop::collection::vec(any::<u8>(), 0..40),
            auth in prop::collection::vec(any::<u8>().prop_filter("no space", |b| *b != b' '), 1..40),
        ) {
            let tags = tags.join(",");
            let data = if kind == 10 { auth } else { data };
            let cmd = build(kind, &tags, &token, &data);
            let line = cmd.to_line();
            prop_assert_eq!(parse(&line, 32), Ok(cmd));
            if kind == 4 {
                let set = TagSet::parse(tags.as_bytes(), 32).unwrap();
                let delivery = [b"publish", set.as_str().as_bytes(), &data[..]].join(&b' ');
                prop_assert_eq!(
                    parse(&delivery, 32),
                    Ok(Command::Publish { tags: set.as_str().as_bytes(), normalised: true, data: &data })
                );
            }
        }

        /// Whatever follows a command name, `parse` does not panic; what it accepts formats
        /// back to a line that parses to the same command, and what it refuses gets a
        /// one-line error reply.
        #[test]
        fn parse_accepts_only_what_round_trips(
            name in prop::sample::select(&NAMES[..]),
            rest in prop::option::of(prop::collection::vec(
                prop::sample::select(&b"ab,, \x00\r\n\t\x7f\xc3\xa9\xff"[..]),
                0..24,
            )),
            max_tags in 1..=3usize,
        ) {
            let mut line = name.as_bytes().to_vec();
            if let Some(rest) = &rest {
                line.push(b' ');
                line.extend_from_slice(rest);
            }
            match parse(&line, max_tags) {
                Ok(cmd) => {
                    let again = cmd.to_line();
                    prop_assert_eq!(parse(&again, max_tags), Ok(cmd));
                }
                Err(e) => {
                    let reply = error_reply(&e.to_string());
                    prop_assert!(reply.starts_with(b"error "));
                    prop_assert_eq!(reply.iter().filter(|&&b| b == b'\n' || b == b'\r').count(), 1);
                    prop_assert_eq!(reply.last(), Some(&b'\n'));
                }
            }
        }

        /// Error replies are one line whatever the reason says, and `printable` keeps
        /// control characters out and respects its length.
        #[test]
        fn replies_are_one_line(reason in any::<String>(), bytes in prop::collection::vec(any::<u8>(), 0..64), max in 0..20usize) {
            let reply = error_reply(&reason);
            prop_assert_eq!(reply.iter().filter(|&&b| b == b'\n' || b == b'\r').count(), 1);
            prop_assert_eq!(reply.last(), Some(&b'\n'));
            let shown = printable(&bytes, max);
            prop_assert!(!shown.chars().any(char::is_control), "{:?}", shown);
            // At most `max` characters are kept, and an escaped control character takes at
            // most six (`\u{9f}`); `…` marks a cut.
            prop_assert!(shown.chars().count() <= 6 * max + 1);
            if String::from_utf8_lossy(&bytes).chars().count() > max {
                prop_assert!(shown.ends_with('…'));
            }
        }
    }
}
