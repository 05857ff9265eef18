//! The WebSocket API's JSON: one text frame in, one [`WsCommand`] out, and the replies.
//!
//! Pure: no I/O. Field order in replies follows the protocol document, so replies are written
//! by hand around `serde_json`'s string escaping instead of through a map.

use crate::tags::{TagError, TagSet};
use serde_json::Value;

/// One WebSocket command.
#[derive(Debug, PartialEq, Eq)]
pub enum WsCommand {
    Ping,
    Subscribe(TagSet),
    Unsubscribe(TagSet),
    List,
}

impl WsCommand {
    /// The command's name as it appears in replies.
    pub fn name(&self) -> &'static str {
        match self {
            WsCommand::Ping => "ping",
            WsCommand::Subscribe(_) => "subscribe",
            WsCommand::Unsubscribe(_) => "unsubscribe",
            WsCommand::List => "list",
        }
    }
}

/// A command that could not be parsed: the command name when it is a known one, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct WsError {
    pub command: Option<&'static str>,
    pub reason: String,
}

impl WsError {
    fn new(command: Option<&'static str>, reason: impl Into<String>) -> WsError {
        WsError {
            command,
            reason: reason.into(),
        }
    }

    /// The failure reply for this error.
    pub fn reply(&self) -> String {
        failure(self.command, &self.reason)
    }
}

const KNOWN: [&str; 4] = ["ping", "subscribe", "unsubscribe", "list"];

/// Parses one text frame.
///
/// # Errors
/// Invalid JSON, not an object, a missing or unknown `command`, or malformed `tags`.
pub fn parse(text: &str, max_tags: usize) -> Result<WsCommand, WsError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| WsError::new(None, format!("invalid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(WsError::new(None, "a command must be a JSON object"));
    };
    let name = match obj.get("command") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(WsError::new(None, "command must be a string")),
        None => return Err(WsError::new(None, "missing command")),
    };
    let Some(&known) = KNOWN.iter().find(|k| **k == name) else {
        let shown = crate::line::printable(name.as_bytes(), 40);
        return Err(WsError::new(None, format!("unknown command '{shown}'")));
    };
    let tags = || -> Result<TagSet, WsError> {
        let err = |r: String| WsError::new(Some(known), r);
        let list = match obj.get("tags") {
            Some(Value::Array(list)) => list,
            Some(_) => return Err(err("tags must be an array of strings".into())),
            None => return Err(err("missing tags".into())),
        };
        let mut strs = Vec::with_capacity(list.len());
        for v in list {
            match v {
                Value::String(s) => strs.push(s.as_str()),
                _ => return Err(err("tags must be an array of strings".into())),
            }
        }
        TagSet::from_strs(&strs, max_tags).map_err(|e: TagError| err(e.to_string()))
    };
    match known {
        "ping" => Ok(WsCommand::Ping),
        "list" => Ok(WsCommand::List),
        "subscribe" => Ok(WsCommand::Subscribe(tags()?)),
        _ => Ok(WsCommand::Unsubscribe(tags()?)),
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialise")
}

/// `{"success":true,"command":"NAME"}`.
pub fn ok(command: &str) -> String {
    format!(r#"{{"success":true,"command":{}}}"#, json_str(command))
}

/// `{"success":false,"command":"NAME","error":"REASON"}`; no `command` when it is unknown.
pub fn failure(command: Option<&str>, reason: &str) -> String {
    match command {
        Some(c) => format!(
            r#"{{"success":false,"command":{},"error":{}}}"#,
            json_str(c),
            json_str(reason)
        ),
        None => format!(r#"{{"success":false,"error":{}}}"#, json_str(reason)),
    }
}

/// `{"success":true,"command":"list","subscriptions":[["a","b"],["c"]]}`, in `list` order.
pub fn list<'a>(sets: impl IntoIterator<Item = &'a TagSet>) -> String {
    let mut sets: Vec<&TagSet> = sets.into_iter().collect();
    sets.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    let subs: Vec<Vec<&str>> = sets.iter().map(|s| s.iter().collect()).collect();
    let subs = serde_json::to_string(&subs).expect("strings always serialise");
    format!(r#"{{"success":true,"command":"list","subscriptions":{subs}}}"#)
}

/// The slow-consumer notice.
pub fn dropped_notice(n: u64) -> String {
    format!(r#"{{"success":false,"error":"slow consumer: dropped {n} messages","dropped":{n}}}"#)
}

/// The notice that a subscription was removed because its token lost the tags that allowed it.
pub fn revoked(set: &TagSet) -> String {
    let tags: Vec<&str> = set.iter().collect();
    let tags = serde_json::to_string(&tags).expect("strings always serialise");
    format!(r#"{{"success":true,"command":"unsubscribe","tags":{tags},"reason":"access revoked"}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> TagSet {
        TagSet::parse(s.as_bytes(), 32).unwrap()
    }

    #[test]
    fn commands() {
        assert_eq!(parse(r#"{"command":"ping"}"#, 32), Ok(WsCommand::Ping));
        assert_eq!(
            parse(r#"{"command":"list","extra":1}"#, 32),
            Ok(WsCommand::List)
        );
        assert_eq!(
            parse(r#"{"command":"subscribe","tags":["b","a","b"]}"#, 32),
            Ok(WsCommand::Subscribe(set("a,b")))
        );
        assert_eq!(
            parse(r#"{"command":"unsubscribe","tags":["a"]}"#, 32),
            Ok(WsCommand::Unsubscribe(set("a")))
        );
    }

    #[test]
    fn failures() {
        let e = parse("nope", 32).unwrap_err();
        assert_eq!(e.command, None);
        assert!(e.reason.starts_with("invalid JSON"));
        assert_eq!(
            parse("[1]", 32).unwrap_err().reason,
            "a command must be a JSON object"
        );
        assert_eq!(parse("{}", 32).unwrap_err().reason, "missing command");
        assert_eq!(
            parse(r#"{"command":1}"#, 32).unwrap_err().reason,
            "command must be a string"
        );
        assert_eq!(
            parse(r#"{"command":"dance"}"#, 32).unwrap_err(),
            WsError::new(None, "unknown command 'dance'")
        );
        assert_eq!(
            parse(r#"{"command":"subscribe"}"#, 32).unwrap_err(),
            WsError::new(Some("subscribe"), "missing tags")
        );
        assert_eq!(
            parse(r#"{"command":"subscribe","tags":"a"}"#, 32).unwrap_err(),
            WsError::new(Some("subscribe"), "tags must be an array of strings")
        );
        assert_eq!(
            parse(r#"{"command":"subscribe","tags":[1]}"#, 32).unwrap_err(),
            WsError::new(Some("subscribe"), "tags must be an array of strings")
        );
        assert_eq!(
            parse(r#"{"command":"subscribe","tags":[]}"#, 32).unwrap_err(),
            WsError::new(Some("subscribe"), "invalid tags: empty tag list")
        );
        assert_eq!(
            parse(r#"{"command":"unsubscribe","tags":["a b"]}"#, 32)
                .unwrap_err()
                .reason,
            "invalid tags: a tag contains a space, comma or control character"
        );
    }

    #[test]
    fn replies() {
        assert_eq!(ok("ping"), r#"{"success":true,"command":"ping"}"#);
        assert_eq!(
            failure(Some("subscribe"), "no \"x\""),
            r#"{"success":false,"command":"subscribe","error":"no \"x\""}"#
        );
        assert_eq!(failure(None, "bad"), r#"{"success":false,"error":"bad"}"#);
        assert_eq!(
            list(&[set("c"), set("a,b")]),
            r#"{"success":true,"command":"list","subscriptions":[["a","b"],["c"]]}"#
        );
        assert_eq!(
            list(&[]),
            r#"{"success":true,"command":"list","subscriptions":[]}"#
        );
        assert_eq!(
            dropped_notice(4),
            r#"{"success":false,"error":"slow consumer: dropped 4 messages","dropped":4}"#
        );
        assert_eq!(
            revoked(&set("a,b")),
            r#"{"success":true,"command":"unsubscribe","tags":["a","b"],"reason":"access revoked"}"#
        );
    }

    use crate::tags::strategy;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every command, with any valid tags (shuffled, repeated) and extra fields, sent as
        /// JSON parses to the command with the normalised set.
        #[test]
        fn commands_round_trip(
            name in prop::sample::select(&KNOWN[..]),
            tags in strategy::tag_list(32),
            extra in prop::option::of(any::<String>()),
        ) {
            let mut frame = json!({ "command": name, "tags": tags });
            if let Some(extra) = extra {
                frame["extra"] = json!(extra);
            }
            let set = TagSet::from_strs(&tags, 32).unwrap();
            let want = match name {
                "ping" => WsCommand::Ping,
                "list" => WsCommand::List,
                "subscribe" => WsCommand::Subscribe(set),
                _ => WsCommand::Unsubscribe(set),
            };
            let got = parse(&frame.to_string(), 32).unwrap();
            prop_assert_eq!(got.name(), name);
            prop_assert_eq!(got, want);
        }

        /// Whatever the frame, `parse` does not panic; a refusal's reply is a JSON failure
        /// carrying the reason and the command name when it is known.
        #[test]
        fn failures_reply_with_json(
            text in prop_oneof![
                any::<String>(),
                "\\{\"command\":\"(ping|list|subscribe|unsubscribe|x)\",\"tags\":\\[(\"[a-c ,]{0,3}\",?|1,|null,){0,4}\\]\\}",
            ],
            max_tags in 1..=3usize,
        ) {
            let Err(e) = parse(&text, max_tags) else {
                return Ok(());
            };
            let reply: serde_json::Value = serde_json::from_str(&e.reply()).unwrap();
            prop_assert_eq!(&reply["success"], &json!(false));
            prop_assert_eq!(&reply["error"], &json!(e.reason));
            match e.command {
                Some(c) => prop_assert_eq!(&reply["command"], &json!(c)),
                None => prop_assert!(reply.get("command").is_none()),
            }
        }

        /// The replies that carry tags are JSON with the tags as sent: `list` sorted as on
        /// TCP, the revocation notice with the set's tags.
        #[test]
        fn tag_replies_are_json(lists in prop::collection::vec(strategy::tag_list(4), 0..5)) {
            let sets: Vec<TagSet> = lists.iter().map(|l| TagSet::from_strs(l, 32).unwrap()).collect();
            let reply: serde_json::Value = serde_json::from_str(&list(&sets)).unwrap();
            let mut want: Vec<&TagSet> = sets.iter().collect();
            want.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            let want: Vec<Vec<&str>> = want.iter().map(|s| s.iter().collect()).collect();
            prop_assert_eq!(&reply["subscriptions"], &json!(want));
            for set in &sets {
                let notice: serde_json::Value = serde_json::from_str(&revoked(set)).unwrap();
                prop_assert_eq!(&notice["tags"], &json!(set.iter().collect::<Vec<_>>()));
            }
        }
    }
}
