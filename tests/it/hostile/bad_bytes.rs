//! Bad bytes in every field: NUL bytes, invalid UTF-8 and Unicode spaces in tags, tokens and
//! data, on the line protocol and in WebSocket JSON. Each gets an exact `error` or failure
//! reply and the connection stays; data is opaque and delivered as sent.

use super::*;

const BAD_BYTE: &str = "error invalid tags: a tag contains a space, comma or control character";
const NOT_UTF8: &str = "error invalid tags: a tag is not valid UTF-8";
const TOKEN_BAD_CHAR: &str = "error invalid token: contains whitespace or a control character";
const TOKEN_NOT_UTF8: &str = "error invalid token: not valid UTF-8";

/// Tag lists with a NUL byte or invalid UTF-8, and the error each gets.
fn bad_tag_lists() -> Vec<(&'static [u8], &'static str)> {
    vec![
        (b"\x00", BAD_BYTE),
        (b"a\x00b", BAD_BYTE),
        (b"a,\x00", BAD_BYTE),
        (b"\x00,a", BAD_BYTE),
        (b"a\x00,\xff", BAD_BYTE),
        (b"\xff", NOT_UTF8),
        (b"a,\xc3\x28", NOT_UTF8),
        // A truncated sequence, an encoded surrogate, and the overlong encoding of NUL (which
        // hides a NUL from a byte check; the UTF-8 check refuses it).
        (b"a\xc3", NOT_UTF8),
        (b"\xed\xa0\x80", NOT_UTF8),
        (b"\xc0\x80", NOT_UTF8),
        (b"\xf8\x88\x80\x80\x80", NOT_UTF8),
    ]
}

/// Tokens with a NUL byte, invalid UTF-8 or Unicode whitespace and controls.
fn bad_tokens() -> Vec<(&'static [u8], &'static str)> {
    vec![
        (b"\x00", TOKEN_BAD_CHAR),
        (b"t\x00k", TOKEN_BAD_CHAR),
        (b"tok\x00", TOKEN_BAD_CHAR),
        (b"\xff", TOKEN_NOT_UTF8),
        (b"t\xc3\x28", TOKEN_NOT_UTF8),
        (b"\xc0\x80", TOKEN_NOT_UTF8),
        (b"\xed\xa0\x80", TOKEN_NOT_UTF8),
        // U+0085 (NEL, a C1 control), U+2028 (line separator), U+00A0 (no-break space).
        ("t\u{85}".as_bytes(), TOKEN_BAD_CHAR),
        ("t\u{2028}".as_bytes(), TOKEN_BAD_CHAR),
        ("\u{a0}".as_bytes(), TOKEN_BAD_CHAR),
    ]
}

#[test]
fn nul_and_invalid_utf8_in_every_field_of_every_tcp_command() {
    let server = TestServer::start();
    let mut by = Bystander::new(&server);
    let mut c = server.client();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    // `set` and `unset` must fail on their bad field, not on an unknown token.
    c.send("register keep tok");
    c.ping();
    let mut cases: Vec<(Vec<u8>, String)> = Vec::new();
    let mut case = |line: Vec<u8>, want: &str| cases.push((line, want.to_string()));

    // The command name, and arguments of commands that take none.
    case(b"\x00\n".to_vec(), "error unknown command '\\u{0}'");
    case(b"pi\x00ng\n".to_vec(), "error unknown command 'pi\\u{0}ng'");
    case(b"ping\x00\n".to_vec(), "error unknown command 'ping\\u{0}'");
    case(
        b"\xffping\n".to_vec(),
        "error unknown command '\u{fffd}ping'",
    );
    case(
        b"publish\xff a x\n".to_vec(),
        "error unknown command 'publish\u{fffd}'",
    );
    case(
        b"\xc0\x80\n".to_vec(),
        "error unknown command '\u{fffd}\u{fffd}'",
    );
    case(b"ping \x00\n".to_vec(), "error usage: ping");
    case(b"list \xff\n".to_vec(), "error usage: list");
    // Every tag list of every command.
    for template in [
        "subscribe {}",
        "unsubscribe {}",
        "publish {} data",
        "register {} tok2",
        "set {} tok",
        "unset {} tok",
    ] {
        for (tags, want) in bad_tag_lists() {
            case(fill(template, tags), want);
        }
    }
    // Every token of every command.
    for template in [
        "register a {}",
        "unregister {}",
        "set a {}",
        "unset a {}",
        "tags {}",
    ] {
        for (token, want) in bad_tokens() {
            case(fill(template, token), want);
        }
    }
    // `auth` without an admin_token configured refuses whatever the token is.
    for token in [&b"\x00"[..], b"\xff", b"a\x00b"] {
        case(
            fill("auth {}", token),
            "error auth is not enabled: no admin_token is configured",
        );
    }

    for (line, want) in &cases {
        expect_error(&mut c, line, want);
        by.check();
    }
    // Nothing was changed or delivered by any of them.
    c.send("list");
    c.expect("list []");
    c.send("tags tok");
    c.expect("tags tok keep");
    c.send("tags tok2");
    c.expect("error unknown token");
    assert_eq!(sub.sync(), Vec::<String>::new());
    assert_eq!(
        get(&server.context().metrics().errors_sent),
        cases.len() as u64 + 1
    );
    assert_eq!(get(&server.context().metrics().messages_published), 0);
}

#[test]
fn nul_and_invalid_utf8_in_an_admin_token() {
    let server = TestServer::with(|c| c.admin_token = Some("s3cret".into()));
    let mut by = Bystander::new(&server);
    let mut c = server.client();
    for token in [
        &b"\x00"[..],
        b"s3cret\x00",
        b"\x00s3cret",
        b"s3\x00cret",
        b"\xff",
        b"s3cret\xff",
        b"s3cre\xc3",
        "s3cret\u{a0}".as_bytes(),
    ] {
        expect_error(&mut c, &fill("auth {}", token), "error wrong admin token");
        expect_error(
            &mut c,
            b"register a tok\n",
            "error admin commands need auth ADMIN_TOKEN first",
        );
        by.check();
    }
    assert_eq!(get(&server.context().metrics().auth_failures), 8);
    // The right token still works on the same connection.
    c.send("auth s3cret");
    c.send("register a tok");
    c.send("tags tok");
    c.expect("tags tok a");
}

/// `DATA` is opaque: NUL bytes and invalid UTF-8 are delivered exactly to TCP subscribers, and
/// with U+FFFD for the invalid bytes to WebSocket subscribers (NUL as `\u0000`).
#[test]
fn nul_and_invalid_utf8_in_data_are_delivered_as_they_are() {
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::with_ws(&server, "tok");
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let mut w = ws(server.http, "tok");
    call(
        &mut w,
        r#"{"command":"subscribe","tags":["a"]}"#,
        r#"{"success":true,"command":"subscribe"}"#,
    );
    let mut p = server.client();
    let datas: [&[u8]; 5] = [
        b"\x00",
        b"x\x00y\x00",
        b"\xff\xfe",
        b"\xc0\x80 \xed\xa0\x80",
        b"ok \x7f\x01\x1b[31m",
    ];
    for data in datas {
        let mut line = b"publish a ".to_vec();
        line.extend_from_slice(data);
        line.push(b'\n');
        p.send_raw(&line);
    }
    p.ping();
    for data in datas {
        let mut want = b"publish a ".to_vec();
        want.extend_from_slice(data);
        assert_eq!(sub.line_bytes(), want);
    }
    sub.ping();
    for data in datas {
        let want = format!(
            r#"{{"keys":["a"],"data":{}}}"#,
            serde_json::to_string(&String::from_utf8_lossy(data)).unwrap()
        );
        assert_eq!(ws_text(&mut w), want);
    }
    assert_eq!(ws_sync(&mut w), Vec::<String>::new());
    by.check();
}

#[test]
fn nul_and_invalid_utf8_in_websocket_json_fields() {
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::with_ws(&server, "tok");
    let mut w = ws(server.http, "tok");
    let bad_byte = "invalid tags: a tag contains a space, comma or control character";
    let cases: Vec<(String, String)> = [
        // NUL escaped in JSON strings: in the command, in a tag, in a key.
        (
            r#"{"command":"ping\u0000"}"#.to_string(),
            r#"{"success":false,"error":"unknown command 'ping\\u{0}'"}"#.to_string(),
        ),
        (
            r#"{"command":"\u0000"}"#.to_string(),
            r#"{"success":false,"error":"unknown command '\\u{0}'"}"#.to_string(),
        ),
        (
            r#"{"command":"subscribe","tags":["a\u0000"]}"#.to_string(),
            format!(r#"{{"success":false,"command":"subscribe","error":"{bad_byte}"}}"#),
        ),
        (
            r#"{"command":"unsubscribe","tags":["a","\u0000"]}"#.to_string(),
            format!(r#"{{"success":false,"command":"unsubscribe","error":"{bad_byte}"}}"#),
        ),
        (
            r#"{"comm\u0000and":"ping"}"#.to_string(),
            r#"{"success":false,"error":"missing command"}"#.to_string(),
        ),
        // Extra fields are ignored, whatever they hold.
        (
            r#"{"command":"ping","tags":["\u0000"],"\u0000":"\u0000"}"#.to_string(),
            PONG.to_string(),
        ),
        // A raw NUL byte (valid UTF-8, invalid JSON) inside and outside a string.
        (
            "{\"command\":\"ping\0\"}".to_string(),
            r#"{"success":false,"error":"invalid JSON: control character (\\u0000-\\u001F) found while parsing a string at line 1 column 17"}"#.to_string(),
        ),
        (
            "{\"command\":\"ping\"}\0".to_string(),
            r#"{"success":false,"error":"invalid JSON: trailing characters at line 1 column 19"}"#.to_string(),
        ),
        (
            "\0".to_string(),
            r#"{"success":false,"error":"invalid JSON: expected value at line 1 column 1"}"#.to_string(),
        ),
        // Escapes that are not Unicode scalar values, and one pair that is.
        (
            r#"{"command":"subscribe","tags":["\ud800"]}"#.to_string(),
            r#"{"success":false,"error":"invalid JSON: unexpected end of hex escape at line 1 column 39"}"#.to_string(),
        ),
        (
            r#"{"command":"subscribe","tags":["\ud800\u0041"]}"#.to_string(),
            r#"{"success":false,"error":"invalid JSON: lone leading surrogate in hex escape at line 1 column 44"}"#.to_string(),
        ),
        (
            r#"{"command":"subscribe","tags":["\udc00"]}"#.to_string(),
            r#"{"success":false,"error":"invalid JSON: lone leading surrogate in hex escape at line 1 column 38"}"#.to_string(),
        ),
        (
            r#"{"command":"subscribe","tags":["\ud800\udc00"]}"#.to_string(),
            format!(
                r#"{{"success":false,"command":"subscribe","error":"token lacks the tags {}"}}"#,
                '\u{10000}'
            ),
        ),
        // U+FFFD itself is a fine character, and a fine tag.
        (
            "{\"command\":\"subscribe\",\"tags\":[\"\u{fffd}\"]}".to_string(),
            r#"{"success":false,"command":"subscribe","error":"token lacks the tags �"}"#.to_string(),
        ),
    ]
    .into_iter()
    .collect();
    for (sent, want) in &cases {
        call(&mut w, sent, want);
        assert_eq!(ws_sync(&mut w), Vec::<String>::new(), "after {sent}");
        by.check();
    }
    // Invalid UTF-8 in a binary frame is just an unsupported frame.
    w.get_mut()
        .write_all(&client_frame(0x82, b"{\"command\":\"\xff\"}"))
        .unwrap();
    assert_eq!(
        ws_text(&mut w),
        r#"{"success":false,"error":"binary frames are not supported; send JSON text"}"#
    );
    call(
        &mut w,
        r#"{"command":"list"}"#,
        r#"{"success":true,"command":"list","subscriptions":[]}"#,
    );
    // Invalid UTF-8 in a text frame breaks RFC 6455: close 1007, and only this connection.
    for payload in [
        &b"{\"command\":\"ping\xff\"}"[..],
        b"\xc0\x80",
        b"{\"command\":\"ping\"}\xed\xa0\x80",
    ] {
        let (mut s, head) = raw_upgrade(server.http, "tok", &[]);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        s.write_all(&client_frame(0x81, payload)).unwrap();
        expect_raw_close(&mut s, 1007, "text frame is not UTF-8");
        by.check();
    }
    assert_eq!(ws_sync(&mut w), Vec::<String>::new());
}
