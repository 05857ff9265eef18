//! Matching the server's replies to the commands that asked for them.
//!
//! The server answers commands in the order it read them, but only `ping`, `list` and `tags`
//! have a reply on success; the other commands answer only when they fail (`error REASON`).
//! So the client sends every command that can fail silently followed by its own `ping`, and
//! ends a run of publishes with a `ping` before any other command: each `error` then belongs to
//! exactly one waiting entry, the one at the front of the queue when it arrives. Deliveries
//! and slow-consumer notices, which can arrive between any two replies, never come here.

use super::error::{Error, ServerError};
use super::wire::{self, Line};
use crate::tags::TagSet;
use std::collections::VecDeque;
use std::io;
use std::sync::mpsc::SyncSender;

/// What a command got back on success.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Done,
    List(Vec<TagSet>),
    Tags(Vec<String>),
}

/// Where a command's caller waits for its answer.
pub(crate) type Reply = SyncSender<Result<Answer, Error>>;

/// A command whose reply has not arrived yet.
#[derive(Debug)]
pub(crate) enum Waiting {
    /// A `ping` a caller waits for, or (`None`) one sent only to end a run of publishes. An
    /// `error` before its `pong` is a refused publish (`ping` itself cannot fail).
    Ping(Option<Reply>),
    /// A command with no reply on success, sent with a `ping` after it: an `error` before the
    /// `pong` is the command's.
    Confirm {
        reply: Reply,
        error: Option<ServerError>,
    },
    /// `list`: its reply or an `error`.
    List(Reply),
    /// `tags TOKEN`: its reply or an `error`.
    Tags { token: String, reply: Reply },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// The server closed it.
    Eof,
    /// This program closed it.
    Local,
    /// Reading or writing failed.
    Io(io::ErrorKind, String),
    /// The server broke the protocol.
    Protocol(String),
}

impl End {
    pub fn io(e: &io::Error) -> End {
        End::Io(e.kind(), e.to_string())
    }

    /// The error callers get once the connection has ended.
    pub fn error(&self) -> Error {
        match self {
            End::Eof => Error::Closed,
            End::Local => Error::Shutdown,
            End::Io(kind, msg) => Error::Io(io::Error::new(*kind, msg.clone())),
            End::Protocol(msg) => Error::Protocol(msg.clone()),
        }
    }
}

/// The commands waiting for replies, in the order they were written.
#[derive(Debug, Default)]
pub(crate) struct Replies {
    queue: VecDeque<Waiting>,
    /// Publishes refused since the last caller's `ping`: how many, and the first reason.
    refused: Option<(u64, ServerError)>,
    end: Option<End>,
}

/// Sends an answer; the caller may have stopped waiting (timed out), which is fine.
fn answer(reply: &Reply, result: Result<Answer, Error>) {
    let _ = reply.try_send(result);
}

impl Replies {
    /// Adds a command just being written.
    ///
    /// # Errors
    /// The connection has ended: nothing will answer.
    pub fn push(&mut self, waiting: Waiting) -> Result<(), Error> {
        match &self.end {
            Some(end) => Err(end.error()),
            None => {
                self.queue.push_back(waiting);
                Ok(())
            }
        }
    }

    /// Why the connection ended, if it has.
    pub fn ended(&self) -> Option<&End> {
        self.end.as_ref()
    }

    /// Takes a reply line (anything but a delivery or a notice) and answers whoever it is for.
    ///
    /// # Errors
    /// The line is not a reply to the command at the front: the peer does not speak mist's
    /// protocol, and the connection must end.
    pub fn on_line(&mut self, line: Line<'_>) -> Result<(), String> {
        match line {
            Line::Error(reason) => {
                self.on_error(ServerError::new(String::from_utf8_lossy(reason)));
                Ok(())
            }
            Line::Pong => match self.queue.pop_front() {
                Some(Waiting::Ping(reply)) => {
                    if let Some(reply) = reply {
                        let result = match self.refused.take() {
                            Some((count, first)) => Err(Error::Refused { count, first }),
                            None => Ok(Answer::Done),
                        };
                        answer(&reply, result);
                    }
                    Ok(())
                }
                Some(Waiting::Confirm { reply, error }) => {
                    answer(
                        &reply,
                        error.map_or(Ok(Answer::Done), |e| Err(Error::Server(e))),
                    );
                    Ok(())
                }
                other => self.unexpected(other, "pong"),
            },
            Line::List(rest) => match self.queue.pop_front() {
                Some(Waiting::List(reply)) => {
                    let result = wire::parse_list(rest)
                        .map(Answer::List)
                        .ok_or_else(|| malformed("list", rest));
                    self.answer_or_fail(&reply, result)
                }
                other => self.unexpected(other, "list"),
            },
            Line::Tags(rest) => match self.queue.pop_front() {
                Some(Waiting::Tags { token, reply }) => {
                    let result = wire::parse_tags(rest, &token)
                        .map(Answer::Tags)
                        .ok_or_else(|| malformed("tags", rest));
                    self.answer_or_fail(&reply, result)
                }
                other => self.unexpected(other, "tags"),
            },
            Line::Other(l) => Err(format!("{:?}", String::from_utf8_lossy(l))),
            Line::Delivery { .. } | Line::Dropped(_) => {
                unreachable!("the reader hands deliveries and notices to the inbox")
            }
        }
    }

    fn on_error(&mut self, e: ServerError) {
        match self.queue.front_mut() {
            Some(Waiting::Confirm { error, .. }) => {
                error.get_or_insert(e);
            }
            Some(Waiting::List(_) | Waiting::Tags { .. }) => match self.queue.pop_front() {
                Some(Waiting::List(reply) | Waiting::Tags { reply, .. }) => {
                    answer(&reply, Err(Error::Server(e)));
                }
                _ => unreachable!("the front was a list or tags"),
            },
            // Before a `ping`, or with nothing waiting (publishes not yet followed by one):
            // a publish was refused.
            Some(Waiting::Ping(_)) | None => {
                let (count, _) = self.refused.get_or_insert((0, e));
                *count += 1;
            }
        }
    }

    fn answer_or_fail(
        &mut self,
        reply: &Reply,
        result: Result<Answer, String>,
    ) -> Result<(), String> {
        match result {
            Ok(a) => {
                answer(reply, Ok(a));
                Ok(())
            }
            Err(e) => {
                answer(reply, Err(Error::Protocol(e.clone())));
                Err(e)
            }
        }
    }

    fn unexpected(&mut self, front: Option<Waiting>, got: &str) -> Result<(), String> {
        let want = match &front {
            None => "nothing",
            Some(Waiting::Ping(_) | Waiting::Confirm { .. }) => "pong",
            Some(Waiting::List(_)) => "list",
            Some(Waiting::Tags { .. }) => "tags",
        };
        if let Some(w) = front {
            self.queue.push_front(w);
        }
        Err(format!("a {got} reply while waiting for {want}"))
    }

    /// Ends the connection: every waiting command fails (one that already got its `error`
    /// gets that), and so does every later one.
    pub fn end(&mut self, end: End) {
        for waiting in self.queue.drain(..) {
            match waiting {
                Waiting::Ping(None) => {}
                Waiting::Confirm {
                    reply,
                    error: Some(e),
                } => answer(&reply, Err(Error::Server(e))),
                Waiting::Ping(Some(reply))
                | Waiting::Confirm { reply, .. }
                | Waiting::List(reply)
                | Waiting::Tags { reply, .. } => answer(&reply, Err(end.error())),
            }
        }
        self.end.get_or_insert(end);
    }
}

fn malformed(what: &str, rest: &[u8]) -> String {
    format!("malformed {what} reply {:?}", String::from_utf8_lossy(rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::error::ServerErrorKind;
    use std::sync::mpsc::{self, Receiver};

    fn waiter() -> (Reply, Receiver<Result<Answer, Error>>) {
        mpsc::sync_channel(1)
    }

    fn got(rx: &Receiver<Result<Answer, Error>>) -> String {
        match rx.try_recv() {
            Ok(Ok(a)) => format!("{a:?}"),
            Ok(Err(e)) => format!("error: {}", crate::report::ErrorChain(&e)),
            Err(_) => "nothing".into(),
        }
    }

    fn err(reason: &str) -> Line<'_> {
        Line::Error(reason.as_bytes())
    }

    #[test]
    fn errors_belong_to_the_entry_at_the_front() {
        let mut r = Replies::default();
        // publish×2, ping (ending the run), subscribe + ping, list, tags, ping (a caller's).
        let (sub, sub_rx) = waiter();
        let (list, list_rx) = waiter();
        let (tags, tags_rx) = waiter();
        let (ping, ping_rx) = waiter();
        r.push(Waiting::Ping(None)).unwrap();
        r.push(Waiting::Confirm {
            reply: sub,
            error: None,
        })
        .unwrap();
        r.push(Waiting::List(list)).unwrap();
        r.push(Waiting::Tags {
            token: "tok".into(),
            reply: tags,
        })
        .unwrap();
        r.push(Waiting::Ping(Some(ping))).unwrap();

        r.on_line(err("line too long (max_line_bytes 10)")).unwrap();
        r.on_line(Line::Pong).unwrap();
        assert_eq!(got(&sub_rx), "nothing");
        r.on_line(err("invalid tags: empty tag")).unwrap();
        r.on_line(Line::Pong).unwrap();
        assert_eq!(got(&sub_rx), "error: invalid tags: empty tag");
        r.on_line(Line::List(b"[[a,b] [c]]")).unwrap();
        assert_eq!(got(&list_rx), "List([TagSet(a,b), TagSet(c)])");
        r.on_line(err("unknown token")).unwrap();
        match tags_rx.try_recv() {
            Ok(Err(Error::Server(e))) => assert_eq!(e.kind(), ServerErrorKind::UnknownToken),
            other => panic!("{other:?}"),
        }
        // The refusal before the first (internal) ping is reported to the caller's ping.
        r.on_line(Line::Pong).unwrap();
        assert_eq!(
            got(&ping_rx),
            "error: the server refused 1 published message(s): line too long (max_line_bytes 10)"
        );
        assert!(r.queue.is_empty());
        assert!(r.refused.is_none());
    }

    #[test]
    fn refusals_are_counted_until_a_callers_ping() {
        let mut r = Replies::default();
        // Publishes with nothing waiting yet, then a caller's ping.
        r.on_line(err("invalid tags: one")).unwrap();
        let (ping, rx) = waiter();
        r.push(Waiting::Ping(Some(ping))).unwrap();
        r.on_line(err("invalid tags: two")).unwrap();
        r.on_line(Line::Pong).unwrap();
        assert_eq!(
            got(&rx),
            "error: the server refused 2 published message(s): invalid tags: one"
        );
        let (ping, rx) = waiter();
        r.push(Waiting::Ping(Some(ping))).unwrap();
        r.on_line(Line::Pong).unwrap();
        assert_eq!(got(&rx), "Done");
    }

    #[test]
    fn tags_replies_are_checked_against_the_token() {
        let mut r = Replies::default();
        let (tags, rx) = waiter();
        r.push(Waiting::Tags {
            token: "tok".into(),
            reply: tags,
        })
        .unwrap();
        r.on_line(Line::Tags(b"tok b,a")).unwrap();
        assert_eq!(got(&rx), r#"Tags(["a", "b"])"#);
        let (tags, rx) = waiter();
        r.push(Waiting::Tags {
            token: "tok".into(),
            reply: tags,
        })
        .unwrap();
        assert!(r.on_line(Line::Tags(b"other a")).is_err());
        assert!(got(&rx).starts_with("error: unexpected reply from the server: malformed tags"));
    }

    #[test]
    fn replies_that_match_nothing_are_protocol_errors() {
        let mut r = Replies::default();
        assert_eq!(
            r.on_line(Line::Pong),
            Err("a pong reply while waiting for nothing".into())
        );
        let (ping, _rx) = waiter();
        r.push(Waiting::Ping(Some(ping))).unwrap();
        assert_eq!(
            r.on_line(Line::List(b"[]")),
            Err("a list reply while waiting for pong".into())
        );
        assert_eq!(r.on_line(Line::Other(b"hello")), Err("\"hello\"".into()));
        // The entry is still there for the connection's end to fail.
        assert_eq!(r.queue.len(), 1);
    }

    #[test]
    fn the_end_fails_every_waiter_and_every_later_push() {
        let mut r = Replies::default();
        let (sub, sub_rx) = waiter();
        let (list, list_rx) = waiter();
        r.push(Waiting::Confirm {
            reply: sub,
            error: None,
        })
        .unwrap();
        r.push(Waiting::List(list)).unwrap();
        // The server refused the command, then closed (as when it is full).
        r.on_line(err("too many connections (max_connections 1)"))
            .unwrap();
        r.end(End::Eof);
        assert_eq!(
            got(&sub_rx),
            "error: too many connections (max_connections 1)"
        );
        assert_eq!(got(&list_rx), "error: the server closed the connection");
        let (ping, _) = waiter();
        assert!(matches!(
            r.push(Waiting::Ping(Some(ping))),
            Err(Error::Closed)
        ));
        assert_eq!(r.ended(), Some(&End::Eof));
    }
}
