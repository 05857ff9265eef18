//! The TCP line parser, `line::parse`, and the replies built from what it returns.
//!
//! Input: one byte that picks `max_tags` (1..=32), then the line. Checks that nothing panics,
//! that every accepted command formats back (`Command::to_line`) to a line that parses to the
//! same command, that tag sets re-parse from their wire form, that a publish's delivery line
//! parses to the same message, and that every reply is exactly one line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mist::line::{self, Command};
use mist::tags::{self, TagSet};

fuzz_target!(|input: &[u8]| {
    let Some((&first, text)) = input.split_first() else {
        return;
    };
    let max_tags = usize::from(first % 32) + 1;
    match line::parse(text, max_tags) {
        Ok(cmd) => check_command(&cmd, max_tags),
        Err(e) => one_line(&line::error_reply(&e.to_string())),
    }
    // Replies that quote untrusted input stay one line.
    one_line(&line::error_reply(&String::from_utf8_lossy(text)));
    one_line(&line::error_reply(&line::printable(text, 40)));
});

fn check_command(cmd: &Command<'_>, max_tags: usize) {
    let again = cmd.to_line();
    assert_eq!(line::parse(&again, max_tags).as_ref(), Ok(cmd), "{again:?}");
    match cmd {
        Command::Subscribe(set) | Command::Unsubscribe(set) => check_set(set, max_tags),
        Command::Register { tags, token }
        | Command::Set { tags, token }
        | Command::Unset { tags, token } => {
            check_set(tags, max_tags);
            check_token(token);
            // `tags TOKEN a,b`: the list after the token is the set's wire form.
            let names: Vec<String> = tags.iter().map(String::from).collect();
            let reply = line::tags_reply(token, &names);
            one_line(&reply);
            let prefix = format!("tags {token} ");
            let list = reply
                .strip_prefix(prefix.as_bytes())
                .and_then(|r| r.strip_suffix(b"\n"))
                .expect("tags reply shape");
            assert_eq!(&TagSet::parse(list, max_tags).unwrap(), tags);
        }
        Command::Unregister { token } | Command::Tags { token } => {
            check_token(token);
            one_line(&line::tags_reply(token, &[]));
        }
        Command::Publish {
            tags,
            normalised,
            data,
        } => {
            let set = TagSet::parse(tags, max_tags).expect("publish tags were validated");
            assert_eq!(*normalised, set.as_str().as_bytes() == *tags);
            assert_eq!(tags::check_list(tags, max_tags), Ok(*normalised));
            // The line subscribers get: tags normalised, data as sent.
            let delivery = [b"publish", set.as_str().as_bytes(), data].join(&b' ');
            let want = Command::Publish {
                tags: set.as_str().as_bytes(),
                normalised: true,
                data,
            };
            assert_eq!(line::parse(&delivery, max_tags), Ok(want));
        }
        Command::Auth { token } => assert!(!token.is_empty() && !token.contains(&b' ')),
        // Ping, List (and debug-only commands) carry nothing to check.
        _ => {}
    }
}

fn check_set(set: &TagSet, max_tags: usize) {
    assert!((1..=max_tags).contains(&set.len()));
    assert_eq!(
        &TagSet::parse(set.as_str().as_bytes(), max_tags).unwrap(),
        set
    );
    assert_eq!(
        tags::check_list(set.as_str().as_bytes(), max_tags),
        Ok(true)
    );
    let reply = line::list_reply([set]);
    one_line(&reply);
    assert_eq!(reply, format!("list [[{set}]]\n").into_bytes());
}

fn check_token(token: &str) {
    assert_eq!(tags::validate_token(token.as_bytes()), Ok(token));
}

/// Exactly one line: ends in `\n`, and holds no other `\n` or `\r`.
fn one_line(reply: &[u8]) {
    assert_eq!(reply.last(), Some(&b'\n'), "{reply:?}");
    let breaks = reply.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
    assert_eq!(breaks, 1, "{reply:?}");
}
