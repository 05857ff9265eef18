//! The WebSocket JSON command parser, `wsjson::parse`, and its replies.
//!
//! Input: one byte that picks `max_tags` (1..=32), then the frame's text (inputs that are not
//! UTF-8 are skipped: text frames are UTF-8). Checks that nothing panics, that every accepted
//! command sent again as canonical JSON parses to the same command, that tag sets re-parse
//! from their wire form, and that every reply is JSON of the documented shape.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mist::tags::TagSet;
use mist::wsjson::{self, WsCommand};
use serde_json::{Value, json};

fuzz_target!(|input: &[u8]| {
    let Some((&first, text)) = input.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let max_tags = usize::from(first % 32) + 1;
    match wsjson::parse(text, max_tags) {
        Ok(cmd) => check_command(&cmd, max_tags),
        Err(e) => {
            let reply = json_of(&e.reply());
            assert_eq!(reply["success"], json!(false));
            assert_eq!(reply["error"], json!(e.reason));
            match e.command {
                Some(c) => assert_eq!(reply["command"], json!(c)),
                None => assert!(reply.get("command").is_none()),
            }
        }
    }
});

fn check_command(cmd: &WsCommand, max_tags: usize) {
    let name = cmd.name();
    let ok = json_of(&wsjson::ok(name));
    assert_eq!(
        (&ok["success"], &ok["command"]),
        (&json!(true), &json!(name))
    );
    let canonical = match cmd {
        WsCommand::Subscribe(set) | WsCommand::Unsubscribe(set) => {
            check_set(set, max_tags);
            json!({ "command": name, "tags": set.iter().collect::<Vec<_>>() })
        }
        WsCommand::Ping | WsCommand::List => json!({ "command": name }),
    };
    assert_eq!(
        wsjson::parse(&canonical.to_string(), max_tags).as_ref(),
        Ok(cmd)
    );
}

fn check_set(set: &TagSet, max_tags: usize) {
    assert!((1..=max_tags).contains(&set.len()));
    assert_eq!(
        &TagSet::parse(set.as_str().as_bytes(), max_tags).unwrap(),
        set
    );
    let tags: Vec<&str> = set.iter().collect();
    let list = json_of(&wsjson::list([set]));
    assert_eq!(list["subscriptions"], json!([tags]));
    let revoked = json_of(&wsjson::revoked(set));
    assert_eq!(revoked["tags"], json!(tags));
}

fn json_of(reply: &str) -> Value {
    let v: Value = serde_json::from_str(reply).expect("replies are JSON");
    assert!(v.is_object(), "{reply}");
    v
}
