//! The TCP line protocol, row by row against PROTOCOL.md: exact reply bytes, every error case,
//! line limits, delivery format and order, slow consumers, admin rules, connection limits and
//! metrics.

use crate::support::{LineClient, TIMEOUT, TestServer, expect_error, get, wait_until};
use std::net::{Ipv4Addr, SocketAddr};
use std::thread;

// ---------------------------------------------------------------------------------------------
// The command table
// ---------------------------------------------------------------------------------------------

#[test]
fn ping_replies_pong() {
    let server = TestServer::start();
    let mut c = server.client();
    c.send("ping");
    c.expect("pong");
    c.send_raw(b"ping\nping\nping\n");
    c.expect("pong");
    c.expect("pong");
    c.expect("pong");
}

#[test]
fn subscribe_publish_and_delivery_line_format() {
    let server = TestServer::start();
    let mut sub = server.client();
    let mut publ = server.client();
    // `subscribe` has no reply on success: the `pong` is the very next line.
    sub.send("subscribe a");
    sub.ping();

    publ.send("publish a hello");
    // Tags are sorted bytewise and de-duplicated in the delivery line.
    publ.send("publish c,a,b,a,c sorted");
    publ.send("publish é,a,Z utf8");
    publ.ping();
    assert_eq!(
        sub.sync(),
        [
            "publish a hello",
            "publish a,b,c sorted",
            "publish Z,a,é utf8"
        ]
    );
}

#[test]
fn publish_data_is_kept_exactly() {
    let server = TestServer::start();
    let mut sub = server.client();
    let mut publ = server.client();
    sub.send("subscribe a");
    sub.ping();

    // Empty data: a space after the tags, then nothing.
    publ.send("publish a ");
    // Spaces inside, at the start and at the end of the data are data.
    publ.send("publish a  two  spaces ");
    publ.send("publish a x\ty");
    publ.ping();
    sub.send("ping");
    assert_eq!(sub.line_bytes(), b"publish a ");
    assert_eq!(sub.line_bytes(), b"publish a  two  spaces ");
    assert_eq!(sub.line_bytes(), b"publish a x\ty");
    assert_eq!(sub.line_bytes(), b"pong");

    // Data is opaque bytes: NUL, control bytes, invalid UTF-8 and a lone \r all pass through.
    publ.send_raw(b"publish a \x00\x01\xff\xfe\x7f mid\rdle\n");
    publ.ping();
    sub.send("ping");
    assert_eq!(sub.line_bytes(), b"publish a \x00\x01\xff\xfe\x7f mid\rdle");
    assert_eq!(sub.line_bytes(), b"pong");
}

#[test]
fn unsubscribe_removes_exactly_that_set() {
    let server = TestServer::start();
    let mut sub = server.client();
    let mut publ = server.client();
    sub.send("subscribe a");
    sub.send("subscribe a,b");
    sub.send("unsubscribe a");
    // Not subscribed: fine, no reply.
    sub.send("unsubscribe q");
    sub.send("unsubscribe a,b,c");
    sub.send("list");
    sub.expect("list [[a,b]]");
    sub.ping();

    publ.send("publish a only-a");
    publ.send("publish b,a both");
    publ.ping();
    assert_eq!(sub.sync(), ["publish a,b both"]);

    // Order and duplicates do not matter: `b,a,b` is the set {a,b}.
    sub.send("unsubscribe b,a,b");
    sub.send("list");
    sub.expect("list []");
    sub.ping();
    publ.send("publish a,b gone");
    publ.ping();
    sub.ping();
}

#[test]
fn subscribing_twice_is_one_subscription() {
    let server = TestServer::start();
    let mut sub = server.client();
    let mut publ = server.client();
    sub.send("subscribe a,b");
    sub.send("subscribe b,a");
    sub.send("subscribe a,b,a");
    sub.send("list");
    sub.expect("list [[a,b]]");
    publ.send("publish a,b once");
    publ.ping();
    assert_eq!(sub.sync(), ["publish a,b once"]);
    assert_eq!(get(&server.context().metrics().subscriptions), 1);
    // One unsubscribe removes it.
    sub.send("unsubscribe a,b");
    sub.send("list");
    sub.expect("list []");
}

#[test]
fn list_format_and_order() {
    let server = TestServer::start();
    let mut c = server.client();
    c.send("list");
    c.expect("list []");

    for s in ["c", "b,a", "a", "ab", "a-b", "z,a", "B", "é", "a,b"] {
        c.send(&format!("subscribe {s}"));
    }
    c.send("list");
    // Tags sorted within a subscription; subscriptions sorted bytewise by the comma-joined
    // form: "B" < "a" < "a,b" < "a,z" < "a-b" < "ab" < "c" < "é" (',' is 0x2C, '-' 0x2D).
    c.expect("list [[B] [a] [a,b] [a,z] [a-b] [ab] [c] [é]]");
    c.send("unsubscribe a-b");
    c.send("unsubscribe é");
    c.send("list");
    c.expect("list [[B] [a] [a,b] [a,z] [ab] [c]]");
    // Subscriptions belong to the connection: another one has none.
    let mut other = server.client();
    other.send("list");
    other.expect("list []");
}

#[test]
fn token_commands() {
    let server = TestServer::start();
    let mut c = server.client();
    c.send("register b,a,b tok");
    c.send("tags tok");
    c.expect("tags tok a,b");
    c.send("set c,a tok");
    c.send("tags tok");
    c.expect("tags tok a,b,c");
    // Unsetting a tag the token does not have is fine.
    c.send("unset a,zz tok");
    c.send("tags tok");
    c.expect("tags tok b,c");
    c.send("unset c,b tok");
    c.send("tags tok");
    // A token with no tags: nothing after the token, not even a space.
    c.expect("tags tok");
    c.send("set é,Z,a tok");
    c.send("tags tok");
    c.expect("tags tok Z,a,é");
    // Tokens may contain commas and other punctuation.
    c.send("register x a,b;c=d");
    c.send("tags a,b;c=d");
    c.expect("tags a,b;c=d x");
    c.send("unregister tok");
    c.send("tags tok");
    c.expect("error unknown token");
    c.ping();
    assert_eq!(
        server.context().tokens().tags("a,b;c=d").unwrap(),
        ["x".to_string()]
    );
}

#[test]
fn token_errors_keep_the_connection() {
    let server = TestServer::start();
    let mut c = server.client();
    for cmd in ["set a nope", "unset a nope", "tags nope", "unregister nope"] {
        expect_error(&mut c, format!("{cmd}\n").as_bytes(), "error unknown token");
    }
    c.send("register a tok");
    c.ping();
    expect_error(&mut c, b"register b tok\n", "error token already exists");
    // The failed register changed nothing.
    c.send("tags tok");
    c.expect("tags tok a");
    c.send("unregister tok");
    c.ping();
    expect_error(&mut c, b"unregister tok\n", "error unknown token");
    // The token name is free again.
    c.send("register c tok");
    c.send("tags tok");
    c.expect("tags tok c");
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn every_malformed_command_gets_one_error_and_the_connection_survives() {
    let server = TestServer::start();
    let mut c = server.client();
    let mut sub = server.client();
    // Watches that no refused publish is delivered: every refused publish below has `a`.
    sub.send("subscribe a");
    sub.ping();

    let long_name = "x".repeat(100);
    let long_name_reply = format!("error unknown command '{}…'", "x".repeat(40));
    let cases: Vec<(Vec<u8>, String)> = [
        // Unknown commands: names are lowercase and matched exactly.
        (b"bogus".to_vec(), "error unknown command 'bogus'"),
        (b"PING".to_vec(), "error unknown command 'PING'"),
        (b"Publish a x".to_vec(), "error unknown command 'Publish'"),
        (b"pingx".to_vec(), "error unknown command 'pingx'"),
        (b"he\x01llo".to_vec(), "error unknown command 'he\\u{1}llo'"),
        (
            b"\xff\xfe".to_vec(),
            "error unknown command '\u{fffd}\u{fffd}'",
        ),
        (long_name.into_bytes(), long_name_reply.as_str()),
        // An empty line, and a leading space (words are separated by exactly one space).
        (b"".to_vec(), "error empty command"),
        (b" ping".to_vec(), "error unknown command ''"),
        // Wrong argument counts.
        (b"ping x".to_vec(), "error usage: ping"),
        (b"ping ".to_vec(), "error usage: ping"),
        (b"list x".to_vec(), "error usage: list"),
        (b"subscribe".to_vec(), "error usage: subscribe TAGS"),
        (b"subscribe ".to_vec(), "error usage: subscribe TAGS"),
        (b"subscribe a b".to_vec(), "error usage: subscribe TAGS"),
        (b"subscribe a ".to_vec(), "error usage: subscribe TAGS"),
        (b"subscribe  a".to_vec(), "error usage: subscribe TAGS"),
        (b"unsubscribe".to_vec(), "error usage: unsubscribe TAGS"),
        (b"unsubscribe a b".to_vec(), "error usage: unsubscribe TAGS"),
        (b"publish".to_vec(), "error usage: publish TAGS DATA"),
        // No space after the tags: there is no data separator.
        (b"publish a".to_vec(), "error usage: publish TAGS DATA"),
        (b"publish a,b".to_vec(), "error usage: publish TAGS DATA"),
        (b"register".to_vec(), "error usage: register TAGS TOKEN"),
        (b"register a".to_vec(), "error usage: register TAGS TOKEN"),
        (b"register a ".to_vec(), "error usage: register TAGS TOKEN"),
        (
            b"register a t x".to_vec(),
            "error usage: register TAGS TOKEN",
        ),
        (b"unregister".to_vec(), "error usage: unregister TOKEN"),
        (b"unregister a b".to_vec(), "error usage: unregister TOKEN"),
        (b"set a".to_vec(), "error usage: set TAGS TOKEN"),
        (b"set a t x".to_vec(), "error usage: set TAGS TOKEN"),
        (b"unset a".to_vec(), "error usage: unset TAGS TOKEN"),
        (b"tags".to_vec(), "error usage: tags TOKEN"),
        (b"tags a b".to_vec(), "error usage: tags TOKEN"),
        (b"auth".to_vec(), "error usage: auth ADMIN_TOKEN"),
        (b"auth a b".to_vec(), "error usage: auth ADMIN_TOKEN"),
    ]
    .into_iter()
    .map(|(raw, want)| (raw, want.to_string()))
    .collect();
    for (raw, want) in &cases {
        let mut line = raw.clone();
        line.push(b'\n');
        expect_error(&mut c, &line, want);
    }

    // Nothing was changed by any of them.
    c.send("list");
    c.expect("list []");
    assert_eq!(sub.sync(), Vec::<String>::new());
    assert_eq!(
        get(&server.context().metrics().errors_sent),
        cases.len() as u64
    );
}

/// Every command that takes a tag list, with `{}` where the list goes.
const TAG_COMMANDS: [&str; 6] = [
    "subscribe {}",
    "unsubscribe {}",
    "publish {} data",
    "register {} tok",
    "set {} tok",
    "unset {} tok",
];

#[test]
fn invalid_tags_are_refused_by_every_command() {
    let server = TestServer::start();
    let mut c = server.client();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    // `set` and `unset` must fail on the tags, not on the token: make the token exist.
    c.send("register keep tok");
    c.ping();

    let t256 = "t".repeat(256);
    let empty = "error invalid tags: empty tag";
    let bad = "error invalid tags: a tag contains a space, comma or control character";
    let utf8 = "error invalid tags: a tag is not valid UTF-8";
    let long = "error invalid tags: a tag is longer than 255 bytes";
    let lists: Vec<(Vec<u8>, &str)> = vec![
        (b"a,,b".to_vec(), empty),
        (b",".to_vec(), empty),
        (b"a,".to_vec(), empty),
        (b",a".to_vec(), empty),
        (format!("a,{t256}").into_bytes(), long),
        (b"a,b\tc".to_vec(), bad),
        (b"a,b\x00".to_vec(), bad),
        (b"a,\x01".to_vec(), bad),
        (b"a,\x1f".to_vec(), bad),
        (b"a,b\x7f".to_vec(), bad),
        (b"a,\xff".to_vec(), utf8),
        // A truncated two-byte sequence, and an encoded surrogate.
        (b"a,b\xc3".to_vec(), utf8),
        (b"a,\xed\xa0\x80".to_vec(), utf8),
    ];
    for template in TAG_COMMANDS {
        let (before, after) = template.split_once("{}").unwrap();
        for (list, want) in &lists {
            let mut line = before.as_bytes().to_vec();
            line.extend_from_slice(list);
            line.extend_from_slice(after.as_bytes());
            line.push(b'\n');
            expect_error(&mut c, &line, want);
        }
    }
    // Nothing changed: no subscription, no token, the token's tags as they were, and the
    // subscriber to `a` received none of the refused publishes.
    c.send("list");
    c.expect("list []");
    c.send("tags tok");
    c.expect("tags tok keep");
    assert_eq!(sub.sync(), Vec::<String>::new());
}

#[test]
fn valid_tag_edges_are_accepted() {
    let server = TestServer::start();
    let mut sub = server.client();
    let mut publ = server.client();
    // 255 bytes is the longest tag; UTF-8 and punctuation other than the comma are fine.
    let t255 = "t".repeat(255);
    let odd = "é.ü-_:/@#!%=+*~[]{}<>?";
    sub.send(&format!("subscribe {t255}"));
    sub.send(&format!("subscribe {odd}"));
    sub.send("list");
    sub.expect(&format!("list [[{t255}] [{odd}]]"));
    publ.send(&format!("publish {t255} long"));
    publ.send(&format!("publish {odd} odd"));
    publ.ping();
    assert_eq!(
        sub.sync(),
        [format!("publish {t255} long"), format!("publish {odd} odd")]
    );
}

#[test]
fn max_tags_counts_distinct_tags() {
    let server = TestServer::start();
    let mut c = server.client();
    let mut sub = server.client();
    sub.send("subscribe t00");
    sub.ping();
    c.send("register keep tok");
    c.ping();

    let tags: Vec<String> = (0..33).map(|i| format!("t{i:02}")).collect();
    let sorted32 = tags[..32].join(",");
    let sorted33 = tags.join(",");
    let mut unsorted33: Vec<&str> = tags.iter().map(String::as_str).collect();
    unsorted33.reverse();
    let unsorted33 = unsorted33.join(",");
    // 32 distinct tags plus duplicates (48 in the list) is within the limit, in any order.
    let mut dup_list: Vec<&str> = tags[..32].iter().map(String::as_str).collect();
    dup_list.extend(tags[..16].iter().map(String::as_str));
    dup_list.reverse();
    let dup_list = dup_list.join(",");
    let too_many = "error invalid tags: more than 32 distinct tags";

    for template in TAG_COMMANDS {
        for list in [&sorted33, &unsorted33] {
            let line = format!("{}\n", template.replace("{}", list));
            expect_error(&mut c, line.as_bytes(), too_many);
        }
    }
    assert_eq!(sub.sync(), Vec::<String>::new());

    c.send(&format!("subscribe {dup_list}"));
    c.send(&format!("publish {dup_list} dups"));
    c.send(&format!("publish {sorted32} sorted"));
    c.send(&format!("set {dup_list} tok"));
    c.send("list");
    c.expect(&format!("publish {sorted32} dups"));
    c.expect(&format!("publish {sorted32} sorted"));
    c.expect(&format!("list [[{sorted32}]]"));
    c.send("tags tok");
    c.expect(&format!("tags tok keep,{sorted32}"));
    assert_eq!(
        sub.sync(),
        [
            format!("publish {sorted32} dups"),
            format!("publish {sorted32} sorted")
        ]
    );
}

#[test]
fn max_tags_follows_the_config() {
    let server = TestServer::with(|c| c.max_tags = 2);
    let mut c = server.client();
    expect_error(
        &mut c,
        b"subscribe a,b,c\n",
        "error invalid tags: more than 2 distinct tags",
    );
    expect_error(
        &mut c,
        b"publish c,b,a x\n",
        "error invalid tags: more than 2 distinct tags",
    );
    c.send("subscribe b,a,b,a");
    c.send("publish a,a,b,b x");
    c.expect("publish a,b x");
    c.ping();
}

#[test]
fn invalid_tokens_are_refused() {
    let server = TestServer::start();
    let mut c = server.client();
    let t256 = "t".repeat(256);
    let bad = "error invalid token: contains whitespace or a control character";
    let tokens: Vec<(Vec<u8>, &str)> = vec![
        (
            t256.into_bytes(),
            "error invalid token: longer than 255 bytes",
        ),
        (b"t\x01".to_vec(), bad),
        (b"t\x00k".to_vec(), bad),
        (b"t\x7f".to_vec(), bad),
        (b"t\tk".to_vec(), bad),
        (b"t\x0bk".to_vec(), bad),
        // U+00A0, a no-break space, is whitespace too.
        ("t\u{a0}k".as_bytes().to_vec(), bad),
        // Tokens are text (they are stored as such and travel in HTTP headers).
        (b"t\xff".to_vec(), "error invalid token: not valid UTF-8"),
    ];
    for template in [
        "register a {}",
        "set a {}",
        "unset a {}",
        "tags {}",
        "unregister {}",
    ] {
        let (before, after) = template.split_once("{}").unwrap();
        for (token, want) in &tokens {
            let mut line = before.as_bytes().to_vec();
            line.extend_from_slice(token);
            line.extend_from_slice(after.as_bytes());
            line.push(b'\n');
            expect_error(&mut c, &line, want);
        }
    }
    // The longest token is fine.
    let t255 = "t".repeat(255);
    c.send(&format!("register a {t255}"));
    c.send(&format!("tags {t255}"));
    c.expect(&format!("tags {t255} a"));
}

#[test]
fn max_subscriptions_refuses_more_but_keeps_the_connection() {
    let server = TestServer::with(|c| c.max_subscriptions = 2);
    let mut c = server.client();
    c.send("subscribe a");
    c.send("subscribe b,c");
    c.ping();
    let refused = "error too many subscriptions on this connection (max_subscriptions 2)";
    expect_error(&mut c, b"subscribe d\n", refused);
    // Subscribing again to a held set is still a no-op, not a new subscription.
    c.send("subscribe c,b");
    c.send("list");
    c.expect("list [[a] [b,c]]");
    // Making room allows a new one.
    c.send("unsubscribe a");
    c.send("subscribe d");
    c.send("list");
    c.expect("list [[b,c] [d]]");
    // The limit is per connection.
    let mut other = server.client();
    other.send("subscribe a");
    other.send("subscribe b");
    other.send("list");
    other.expect("list [[a] [b]]");
}

// ---------------------------------------------------------------------------------------------
// Line endings and line length
// ---------------------------------------------------------------------------------------------

#[test]
fn crlf_line_endings_are_accepted() {
    let server = TestServer::start();
    let mut c = server.client();
    let mut sub = server.client();
    c.send_raw(b"ping\r\n");
    c.expect("pong");
    sub.send_raw(b"subscribe a\r\n");
    sub.send_raw(b"list\r\n");
    sub.expect("list [[a]]");
    // The \r is not part of the data, nor of a token.
    c.send_raw(b"publish a hello\r\n");
    c.send_raw(b"publish a \r\n");
    c.send_raw(b"publish a x\ry\r\n");
    c.send_raw(b"register a tok\r\n");
    c.send_raw(b"tags tok\r\n");
    c.expect("tags tok a");
    sub.send("ping");
    assert_eq!(sub.line_bytes(), b"publish a hello");
    assert_eq!(sub.line_bytes(), b"publish a ");
    assert_eq!(sub.line_bytes(), b"publish a x\ry");
    assert_eq!(sub.line_bytes(), b"pong");
    // Errors are reported the same way.
    expect_error(&mut c, b"bogus\r\n", "error unknown command 'bogus'");
    expect_error(&mut c, b"\r\n", "error empty command");
    expect_error(&mut c, b"publish a\r\n", "error usage: publish TAGS DATA");
}

#[test]
fn last_line_without_newline_counts_at_end_of_stream() {
    let server = TestServer::start();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let mut c = server.client();
    c.send_raw(b"publish a last");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.read_to_end(), b"");
    assert_eq!(sub.sync(), ["publish a last"]);

    let mut c = server.client();
    c.send_raw(b"ping");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.read_to_end(), b"pong\n");
}

#[test]
fn line_longer_than_max_line_bytes_gets_one_error() {
    let server = TestServer::with(|c| c.max_line_bytes = 1024);
    let mut c = server.client();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let too_long = "error line too long (max_line_bytes 1024)";

    // Exactly max_line_bytes is accepted, with `\n` or `\r\n` after it.
    let fits = format!("publish a {}", "x".repeat(1024 - 10));
    assert_eq!(fits.len(), 1024);
    c.send(&fits);
    c.send_raw(format!("{fits}\r\n").as_bytes());
    c.ping();
    assert_eq!(sub.sync(), [fits.clone(), fits.clone()]);

    // One byte more is refused, and nothing is published.
    let over = format!("{fits}y");
    expect_error(&mut c, format!("{over}\n").as_bytes(), too_long);
    expect_error(&mut c, format!("{over}\r\n").as_bytes(), too_long);

    // A long line in many small writes still gets exactly one error, and the rest of it (which
    // here looks like commands) is thrown away, not run.
    let mut big = format!("publish a {}", "z".repeat(5000)).into_bytes();
    big.extend_from_slice(b" ping\rping\r");
    big.extend_from_slice(&b"y".repeat(100_000));
    big.push(b'\n');
    for piece in big.chunks(777) {
        c.send_raw(piece);
    }
    c.expect(too_long);
    c.ping();

    // Two long lines in one write, with commands around them.
    let long = "q".repeat(3000);
    c.send_raw(format!("list\n{long}\nping\n{long}\nlist\n").as_bytes());
    c.expect("list []");
    c.expect(too_long);
    c.expect("pong");
    c.expect(too_long);
    c.expect("list []");
    c.ping();

    assert_eq!(sub.sync(), Vec::<String>::new());
}

#[test]
fn three_mib_line_on_the_default_limit() {
    let server = TestServer::start();
    let mut c = server.client();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();

    let mut big = b"publish a ".to_vec();
    big.extend(std::iter::repeat_n(b'y', 3 << 20));
    big.extend_from_slice(b"\nping\n");
    c.send_raw(&big);
    c.expect("error line too long (max_line_bytes 1048576)");
    c.expect("pong");

    // A line of exactly 1 MiB goes through whole.
    let mut fits = b"publish a ".to_vec();
    fits.extend(std::iter::repeat_n(b'w', (1 << 20) - fits.len()));
    assert_eq!(fits.len(), 1 << 20);
    let mut line = fits.clone();
    line.push(b'\n');
    c.send_raw(&line);
    c.ping();
    sub.send("ping");
    assert_eq!(sub.line_bytes(), fits);
    assert_eq!(sub.line_bytes(), b"pong");
}

// ---------------------------------------------------------------------------------------------
// Delivery semantics
// ---------------------------------------------------------------------------------------------

#[test]
fn publisher_receives_its_own_message_before_the_next_reply() {
    let server = TestServer::start();
    let mut c = server.client();
    c.send("subscribe x");
    c.send("publish x,y hi");
    c.send("list");
    c.expect("publish x,y hi");
    c.expect("list [[x]]");
    c.send("publish y no");
    c.ping();
}

#[test]
fn at_most_once_per_client() {
    let server = TestServer::start();
    let mut a = server.client();
    let mut b = server.client();
    for s in ["a", "b", "a,b", "c", "a,b,c"] {
        a.send(&format!("subscribe {s}"));
    }
    b.send("subscribe c");
    b.send("subscribe b,c");
    a.ping();
    b.ping();
    let mut publ = server.client();
    publ.send("publish a,b,c,d one");
    publ.send("publish c,b two");
    publ.ping();
    assert_eq!(a.sync(), ["publish a,b,c,d one", "publish b,c two"]);
    assert_eq!(b.sync(), ["publish a,b,c,d one", "publish b,c two"]);
    assert_eq!(get(&server.context().metrics().deliveries), 4);
}

#[test]
fn ten_thousand_messages_arrive_in_order() {
    let server = TestServer::start();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let mut publ = server.client();
    let mut burst = String::new();
    for i in 0..10_000 {
        burst.push_str(&format!("publish b,a message {i}\n"));
    }
    publ.send_raw(burst.as_bytes());
    publ.ping();
    sub.send("ping");
    for i in 0..10_000 {
        assert_eq!(sub.line(), format!("publish a,b message {i}"));
    }
    sub.expect("pong");
    assert_eq!(get(&server.context().metrics().drops), 0);
}

#[test]
fn each_publishers_order_is_kept_with_two_publishers() {
    let server = TestServer::start();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let n = 5000;
    let publishers: Vec<_> = ["p", "q"]
        .into_iter()
        .map(|name| {
            let mut c = server.client();
            thread::spawn(move || {
                for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
                    let burst: String = chunk
                        .iter()
                        .map(|i| format!("publish a {name} {i}\n"))
                        .collect();
                    c.send_raw(burst.as_bytes());
                }
                c.ping();
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    let got = sub.sync();
    assert_eq!(got.len(), 2 * n);
    for name in ["p", "q"] {
        let seq: Vec<String> = got
            .iter()
            .filter(|l| l.starts_with(&format!("publish a {name} ")))
            .cloned()
            .collect();
        let want: Vec<String> = (0..n).map(|i| format!("publish a {name} {i}")).collect();
        assert_eq!(seq, want, "order of publisher {name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Slow consumers
// ---------------------------------------------------------------------------------------------

/// The stream a stalled subscriber reads once it resumes, checked as it arrives against the
/// slow-consumer rules: messages in publish order; every run of lost messages announced by
/// exactly one notice whose N is the length of that run, placed where the run was (before the
/// next message that did arrive, or last).
#[derive(Debug, Default)]
struct Resumed {
    /// The sequence number the next message would have if nothing more were lost.
    next: usize,
    /// Messages received.
    received: usize,
    /// Losses announced by a notice and not yet accounted for by a gap.
    announced: usize,
    /// The N of each notice.
    notices: Vec<usize>,
    /// Every other line: the replies to the subscriber's own commands.
    replies: Vec<String>,
}

impl Resumed {
    fn take(&mut self, l: String, expect_line: impl Fn(usize) -> String) {
        if let Some(n) = l
            .strip_prefix("error slow consumer: dropped ")
            .and_then(|r| r.strip_suffix(" messages"))
        {
            let n: usize = n.parse().expect("a count");
            assert!(n > 0, "a notice for no loss");
            assert_eq!(self.announced, 0, "two notices for one run of losses");
            self.announced = n;
            self.notices.push(n);
        } else if let Some(rest) = l.strip_prefix("publish a ") {
            let seq: usize = rest
                .split(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {l:.60}"));
            assert_eq!(l, expect_line(seq), "message {seq} intact");
            assert!(seq >= self.next, "message {seq} out of order");
            assert_eq!(
                seq - self.next,
                self.announced,
                "the messages lost before {seq} and the notice before it disagree"
            );
            self.announced = 0;
            self.next = seq + 1;
            self.received += 1;
        } else {
            self.replies.push(l);
        }
    }
}

#[test]
fn slow_consumer_loses_newer_messages_and_is_told() {
    let server = TestServer::with(|c| c.client_queue = 4);
    let metrics = &server.context().metrics();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let mut publ = server.client();

    // Big messages, so the sockets' buffers (a few MiB on loopback) fill up quickly. The
    // subscriber reads nothing from here on.
    let body = "x".repeat(64 * 1024);
    let line = |seq: usize| format!("publish a {seq} {body}");
    let mut sent = 0;
    // Publish until the queue overflows; the publisher's `pong` each round proves it was not
    // blocked by the stalled subscriber.
    let mut rounds = 0;
    while get(&metrics.drops) == 0 {
        rounds += 1;
        assert!(rounds < 1000, "the subscriber's queue never filled");
        let mut burst = String::new();
        for _ in 0..8 {
            burst.push_str(&line(sent));
            burst.push('\n');
            sent += 1;
        }
        publ.send_raw(burst.as_bytes());
        publ.ping();
    }
    // Many more while the subscriber is still stalled: they are dropped, and the publisher
    // still gets its `pong` right away.
    let mut burst = String::new();
    for _ in 0..50 {
        burst.push_str(&line(sent));
        burst.push('\n');
        sent += 1;
    }
    publ.send_raw(burst.as_bytes());
    publ.ping();
    assert_eq!(get(&metrics.messages_published), sent as u64);

    // The stalled subscriber's own commands are answered, in order: replies are never
    // dropped. Where the notices fall among them is not specified.
    sub.send_raw(b"ping\nlist\nbogus\n");
    let mut r = Resumed::default();
    while !(r.replies.len() == 3 && r.next + r.announced >= sent) {
        r.take(sub.line(), line);
    }
    assert_eq!(
        r.replies,
        ["pong", "list [[a]]", "error unknown command 'bogus'"]
    );
    // Every loss was announced, by a notice each run, and counted.
    assert_eq!(r.next + r.announced, sent, "{r:?}");
    let lost: usize = r.notices.iter().sum();
    assert_eq!(r.received + lost, sent, "{r:?}");
    assert!(r.received > 0 && lost > 0, "{r:?}");
    assert_eq!(get(&metrics.drops), lost as u64);
    assert_eq!(get(&metrics.slow_consumer_notices), r.notices.len() as u64);
    // (Normally this is one run: the oldest messages, then one notice for all the others. A
    // socket that briefly frees room while the publisher is still sending splits the losses
    // into more runs, each with its own notice.)

    // Delivery resumes, with no further notice.
    publ.send("publish a after");
    publ.ping();
    assert_eq!(sub.sync(), ["publish a after"]);
    // The publisher never noticed anything.
    publ.ping();
}

// ---------------------------------------------------------------------------------------------
// Admin commands
// ---------------------------------------------------------------------------------------------

const ADMIN_CMDS: [&str; 5] = [
    "register a tok",
    "set b tok",
    "unset a tok",
    "tags tok",
    "unregister tok",
];

#[test]
fn without_admin_token_loopback_may_use_admin_commands() {
    let server = TestServer::start();
    let mut c = server.client();
    c.send("register a tok");
    c.send("set b tok");
    c.send("unset a tok");
    c.send("tags tok");
    c.expect("tags tok b");
    c.send("unregister tok");
    c.ping();
    // `auth` is an error when no admin_token is configured.
    expect_error(
        &mut c,
        b"auth anything\n",
        "error auth is not enabled: no admin_token is configured",
    );
    c.send("register a tok");
    c.send("tags tok");
    c.expect("tags tok a");
}

/// Without an admin_token, loopback clients (IPv4 and IPv6) may run admin commands. The refusal
/// of other addresses is the pure rule `auth::admin_allowed`, unit-tested there: tests never
/// connect through this machine's own network addresses.
#[test]
fn without_admin_token_loopback_may() {
    let server = TestServer::with(|c| c.tcp_listen_address = "[::]:0".into());
    let port = server.tcp.port();
    let mut v4 = LineClient::connect(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
    v4.send("register a tok");
    v4.ping();
    let mut v6 = LineClient::connect(SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), port));
    v6.send("set b tok");
    v6.send("tags tok");
    v6.expect("tags tok a,b");
}

#[test]
fn with_admin_token_auth_is_needed_per_connection() {
    let server = TestServer::with(|c| c.admin_token = Some("s3cret".into()));
    let metrics = &server.context().metrics();
    let mut c = server.client();
    let need = "error admin commands need auth ADMIN_TOKEN first";
    for cmd in ADMIN_CMDS {
        expect_error(&mut c, format!("{cmd}\n").as_bytes(), need);
    }
    // Other commands need no auth.
    c.send("subscribe a");
    c.send("publish a x");
    c.send("list");
    c.expect("publish a x");
    c.expect("list [[a]]");

    // A wrong token is an error, is counted, and does not authenticate.
    expect_error(&mut c, b"auth wrong\n", "error wrong admin token");
    expect_error(&mut c, b"auth s3cre\n", "error wrong admin token");
    expect_error(&mut c, b"auth s3cret2\n", "error wrong admin token");
    assert_eq!(get(&metrics.auth_failures), 3);
    expect_error(&mut c, b"register a tok\n", need);
    assert!(
        server.context().tokens().tags("tok").is_err(),
        "nothing changed"
    );

    // The right token: admin commands work on this connection.
    c.send("auth s3cret");
    c.send("register a tok");
    c.send("set b tok");
    c.send("unset a tok");
    c.send("tags tok");
    c.expect("tags tok b");
    c.ping();
    assert_eq!(get(&metrics.auth_failures), 3);

    // Not on another connection.
    let mut other = server.client();
    for cmd in ADMIN_CMDS {
        expect_error(&mut other, format!("{cmd}\n").as_bytes(), need);
    }
    c.send("tags tok");
    c.expect("tags tok b");
    // A later wrong `auth` on the authenticated connection is an error too, and takes the
    // admin rights away (see also `security.rs`).
    expect_error(&mut c, b"auth nope\n", "error wrong admin token");
    expect_error(&mut c, b"unregister tok\n", need);
    c.send("auth s3cret");
    c.send("unregister tok");
    c.send("tags tok");
    c.expect("error unknown token");
}

// ---------------------------------------------------------------------------------------------
// Connections and metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn max_connections_refuses_the_next_client_with_one_error() {
    let server = TestServer::with(|c| c.max_connections = 2);
    let ctx = server.context();
    let mut a = server.client();
    let mut b = server.client();
    a.send("subscribe a");
    a.ping();
    b.ping();

    let mut third = server.client();
    assert_eq!(
        third.read_to_end(),
        b"error too many connections (max_connections 2)\n"
    );
    assert_eq!(get(&ctx.metrics().connections_refused), 1);

    // The first two keep working.
    b.send("publish a still here");
    b.ping();
    assert_eq!(a.sync(), ["publish a still here"]);

    // A slot comes back when a client leaves.
    drop(b);
    wait_until("the server to notice the disconnect", TIMEOUT, || {
        ctx.connections() < 2
    });
    let mut d = server.client();
    d.send("publish a new");
    d.ping();
    assert_eq!(a.sync(), ["publish a new"]);
    assert_eq!(get(&ctx.metrics().connections_refused), 1);
}

#[test]
fn metrics_follow_the_traffic() {
    let server = TestServer::start();
    let m = &server.context().metrics();
    let mut s1 = server.client();
    let mut s2 = server.client();
    let mut p = server.client();
    s1.send("subscribe a");
    s2.send("subscribe a,b");
    s2.send("subscribe c");
    s1.ping();
    s2.ping();
    p.ping();
    assert_eq!(get(&m.subscriptions), 3);
    assert_eq!(get(&m.tcp_connections), 3);
    assert_eq!(get(&m.connections_accepted), 3);

    p.send("publish a x");
    p.send("publish b,a y");
    p.send("publish z nobody");
    p.ping();
    assert_eq!(get(&m.messages_published), 3);
    assert_eq!(get(&m.deliveries), 3);
    assert_eq!(get(&m.drops), 0);
    assert_eq!(s1.sync(), ["publish a x", "publish a,b y"]);
    assert_eq!(s2.sync(), ["publish a,b y"]);

    expect_error(&mut p, b"bogus\n", "error unknown command 'bogus'");
    assert_eq!(get(&m.errors_sent), 1);

    s2.send("unsubscribe c");
    s2.ping();
    assert_eq!(get(&m.subscriptions), 2);
    let text = m.render();
    assert!(
        text.contains("\nmist_messages_published_total 3\n"),
        "{text}"
    );
    assert!(text.contains("\nmist_deliveries_total 3\n"), "{text}");
    assert!(text.contains("\nmist_subscriptions 2\n"), "{text}");
    assert!(
        text.contains("\nmist_connections{transport=\"tcp\"} 3\n"),
        "{text}"
    );

    // A client that leaves takes its subscriptions with it.
    drop(s2);
    wait_until("the disconnect to be counted", TIMEOUT, || {
        get(&m.tcp_connections) == 2
    });
    assert_eq!(get(&m.subscriptions), 1);
}
