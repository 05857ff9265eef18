//! Too much in one piece: endless lines, lines of nothing but separators, thousands of tags,
//! oversized HTTP request heads, WebSocket frames over the limit, and JSON nested past the
//! parser's limit. Each is refused without buffering it whole or overflowing a stack.

use super::*;

/// A 16 MiB line without a newline, on the default 1 MiB `max_line_bytes`: the error comes
/// while the line is still arriving (it is not buffered until its end), exactly once, and the
/// connection goes on. (Memory is measured in `endless_lines_keep_the_servers_memory_bounded`.)
#[test]
fn sixteen_mib_line_without_newline_gets_one_error_and_the_connection_goes_on() {
    let server = TestServer::start();
    let mut by = Bystander::new(&server);
    let mut c = server.client();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let chunk = {
        let mut v = b"publish a ".to_vec();
        v.resize(1 << 20, b'x');
        v
    };
    c.send_raw(&chunk);
    c.send_raw(&chunk[..1024]);
    // The error is there before the rest of the line is even sent.
    c.expect("error line too long (max_line_bytes 1048576)");
    for _ in 0..15 {
        c.send_raw(&chunk[10..]);
        by.check();
    }
    // The end of the line, then a command: one error in all, and the connection goes on.
    c.send_raw(b"\nping\n");
    c.expect("pong");
    c.send("publish a after");
    c.ping();
    assert_eq!(sub.sync(), ["publish a after"]);
    assert_eq!(get(&server.context().metrics().errors_sent), 1);
    by.check();
}

#[test]
fn lines_of_only_spaces_or_commas() {
    let server = TestServer::start();
    let mut by = Bystander::new(&server);
    let mut c = server.client();
    let mut sub = server.client();
    sub.send("subscribe a");
    sub.ping();
    let commas = vec![b','; 100_000];
    let spaces = vec![b' '; 100_000];
    let cases: Vec<(Vec<u8>, String)> = vec![
        (b" ".to_vec(), "error unknown command ''".into()),
        (b"     ".to_vec(), "error unknown command ''".into()),
        (spaces.clone(), "error unknown command ''".into()),
        (b",".to_vec(), "error unknown command ','".into()),
        (b",,,,,".to_vec(), "error unknown command ',,,,,'".into()),
        (
            commas.clone(),
            format!("error unknown command '{}…'", ",".repeat(40)),
        ),
        (b", , ,".to_vec(), "error unknown command ','".into()),
        (b"\t".to_vec(), "error unknown command '\\t'".into()),
        (b"\r".to_vec(), "error empty command".into()),
        (b"\r\r".to_vec(), "error unknown command '\\r'".into()),
        (
            b"subscribe  ".to_vec(),
            "error usage: subscribe TAGS".into(),
        ),
        (
            [&b"subscribe "[..], &spaces].concat(),
            "error usage: subscribe TAGS".into(),
        ),
        (
            b"subscribe ,".to_vec(),
            "error invalid tags: empty tag".into(),
        ),
        (
            [&b"subscribe "[..], &commas].concat(),
            "error invalid tags: empty tag".into(),
        ),
        (
            [&b"publish "[..], &commas, b" x"].concat(),
            "error invalid tags: empty tag".into(),
        ),
        (
            b"publish , x".to_vec(),
            "error invalid tags: empty tag".into(),
        ),
        (
            b"publish a,, x".to_vec(),
            "error invalid tags: empty tag".into(),
        ),
        (
            b"register , tok".to_vec(),
            "error invalid tags: empty tag".into(),
        ),
        (
            b"register a  ".to_vec(),
            "error usage: register TAGS TOKEN".into(),
        ),
        (b"tags  ".to_vec(), "error usage: tags TOKEN".into()),
        (b"auth  ".to_vec(), "error usage: auth ADMIN_TOKEN".into()),
    ];
    for (line, want) in &cases {
        let mut raw = line.clone();
        raw.push(b'\n');
        expect_error(&mut c, &raw, want);
        by.check();
    }
    c.send("list");
    c.expect("list []");
    assert_eq!(sub.sync(), Vec::<String>::new());
}

fn distinct_tags(n: usize) -> String {
    (0..n)
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn thousands_of_tags_in_one_list() {
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::with_ws(&server, "tok");
    let mut c = server.client();
    let mut sub = server.client();
    sub.send("subscribe t0");
    sub.send("subscribe a");
    sub.ping();
    let too_many = "error invalid tags: more than 32 distinct tags";
    // About 1 MiB of tags, just under the line limit.
    let huge = distinct_tags(120_000);
    assert!(huge.len() < (1 << 20) - 20, "{}", huge.len());
    for n in [33, 5_000] {
        let tags = distinct_tags(n);
        for template in [
            "subscribe {}",
            "publish {} x",
            "register {} tok2",
            "set {} tok",
        ] {
            expect_error(&mut c, &fill(template, tags.as_bytes()), too_many);
        }
        by.check();
    }
    let started = Instant::now();
    expect_error(&mut c, &fill("subscribe {}", huge.as_bytes()), too_many);
    expect_error(&mut c, &fill("publish {} x", huge.as_bytes()), too_many);
    by.check();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Thousands of copies of one tag are one tag.
    let same = vec!["a"; 5_000].join(",");
    let mut d = server.client();
    d.send(&format!("subscribe {same}"));
    d.send("list");
    d.expect("list [[a]]");
    c.send(&format!("publish {same} folded"));
    c.ping();
    assert_eq!(sub.sync(), ["publish a folded"]);
    assert_eq!(d.sync(), ["publish a folded"]);
    // Thousands of distinct tags that fold to 32 pass; 33 do not.
    let mut folded: Vec<String> = (0..5_000).map(|i| format!("t{}", i % 32)).collect();
    c.send(&format!("publish {} fits", folded.join(",")));
    c.ping();
    assert_eq!(
        sub.sync(),
        [format!("publish {} fits", {
            let mut t: Vec<String> = (0..32).map(|i| format!("t{i}")).collect();
            t.sort();
            t.join(",")
        })]
    );
    folded.push("t32".into());
    expect_error(
        &mut c,
        format!("publish {} no\n", folded.join(",")).as_bytes(),
        too_many,
    );

    // The same over WebSocket.
    let mut w = ws(server.http, "tok");
    let list: Vec<String> = (0..5_000).map(|i| format!("t{i}")).collect();
    call(
        &mut w,
        &format!(
            r#"{{"command":"subscribe","tags":{}}}"#,
            serde_json::to_string(&list).unwrap()
        ),
        r#"{"success":false,"command":"subscribe","error":"invalid tags: more than 32 distinct tags"}"#,
    );
    call(
        &mut w,
        &format!(
            r#"{{"command":"subscribe","tags":{}}}"#,
            serde_json::to_string(&vec!["a"; 5_000]).unwrap()
        ),
        r#"{"success":true,"command":"subscribe"}"#,
    );
    call(
        &mut w,
        r#"{"command":"list"}"#,
        r#"{"success":true,"command":"list","subscriptions":[["a"]]}"#,
    );
    assert_eq!(sub.sync(), Vec::<String>::new());
    by.check();
}

#[test]
fn oversized_http_heads_get_431_and_garbage_gets_400() {
    let server = TestServer::start();
    let mut by = Bystander::new(&server);
    let too_large = plain(
        "431 Request Header Fields Too Large",
        "request head larger than 16384 bytes\n",
        "",
    );
    // One huge header (too many small ones: `http_limits.rs`).
    let big = format!(
        "GET /ping HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "b".repeat(17_000)
    );
    // A head that never ends, sent as fast as possible.
    let endless = format!("GET /ping HTTP/1.1\r\nX-Big: {}", "e".repeat(40_000));
    for req in [&big, &endless] {
        let mut s = raw_connect(server.http);
        let _ = s.write_all(req.as_bytes());
        assert_eq!(read_response(&mut s), too_large);
        by.check();
    }
    for req in [
        &b"\x00\x00\x00\x00\r\n\r\n"[..],
        b"GET /ping HTTP/1.1\r\nX-Bad: a\x00b\r\n\r\n",
        b"GET /p\xffng HTTP/1.1\r\n\r\n",
        b"GET /ping HTTP/9.9\r\n\r\n",
        b"\xff\xfe\xfd\r\n\r\n",
    ] {
        let mut s = raw_connect(server.http);
        s.write_all(req).unwrap();
        let resp = read_response(&mut s);
        assert!(
            resp.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{req:?}: {resp}"
        );
        by.check();
    }
}

#[test]
fn websocket_frames_over_the_limit_are_closed_with_1009() {
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::with_ws(&server, "tok");
    let too_big = "message larger than 1048576 bytes";
    // A frame header that announces 1 TiB, and nothing after it: refused on the header alone.
    let (mut s, head) = raw_upgrade(server.http, "tok", &[]);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&header).unwrap();
    expect_raw_close(&mut s, 1009, too_big);
    by.check();
    // One byte over the default limit in one frame: refused on the header too, so most of
    // the payload may meet a closed socket.
    let (mut s, _) = raw_upgrade(server.http, "tok", &[]);
    let _ = s.write_all(&client_frame(0x81, padded(PING, (1 << 20) + 1).as_bytes()));
    expect_raw_close(&mut s, 1009, too_big);
    by.check();
    // Fragments that are each small but add up to more than the limit.
    let (mut s, _) = raw_upgrade(server.http, "tok", &[]);
    let piece = vec![b' '; 400 * 1024];
    s.write_all(&client_frame(0x01, &piece)).unwrap();
    s.write_all(&client_frame(0x00, &piece)).unwrap();
    let _ = s.write_all(&client_frame(0x80, &piece));
    expect_raw_close(&mut s, 1009, too_big);
    by.check();
    // Exactly the limit is fine.
    let mut w = ws(server.http, "tok");
    call(&mut w, &padded(PING, 1 << 20), PONG);
    by.check();
}

/// JSON nested far deeper than serde_json's limit of 128 is refused by the parser, without
/// recursing further: the reader thread's 256 KiB stack is never at risk, in this debug build
/// too. JSON nested right up to the limit is parsed, on that same stack.
///
/// Regression test for cf93f0a: JSON nested this deep overflowed the debug build's 256 KiB
/// WebSocket reader stack and aborted the whole process.
#[test]
fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::with_ws(&server, "tok");
    let mut w = ws(server.http, "tok");
    let limit = |column: usize| {
        format!(
            r#"{{"success":false,"error":"invalid JSON: recursion limit exceeded at line 1 column {column}"}}"#
        )
    };
    // Half a million levels of arrays, closed: 1,000,000 bytes, under the 1 MiB frame limit.
    let arrays = format!("{}{}", "[".repeat(500_000), "]".repeat(500_000));
    call(&mut w, &arrays, &limit(128));
    // Never closed, filling the frame.
    call(&mut w, &"[".repeat(1 << 20), &limit(128));
    // Objects.
    let objects = format!("{}1{}", r#"{"a":"#.repeat(150_000), "}".repeat(150_000));
    call(&mut w, &objects, &limit(5 * 127 + 1));
    // Inside a command's tags.
    let tags = format!(
        r#"{{"command":"subscribe","tags":{}"a"{}}}"#,
        "[".repeat(300_000),
        "]".repeat(300_000)
    );
    call(&mut w, &tags, &limit(30 + 127));
    by.check();
    // At the limit: the command object and 126 arrays inside it are 127 levels, parsed; one
    // more is the 128th, refused.
    let deepest = format!(
        r#"{{"command":"ping","x":{}{}}}"#,
        "[".repeat(126),
        "]".repeat(126)
    );
    call(&mut w, &deepest, PONG);
    let over = format!(
        r#"{{"command":"ping","x":{}{}}}"#,
        "[".repeat(127),
        "]".repeat(127)
    );
    call(&mut w, &over, &limit(22 + 127));
    assert_eq!(ws_sync(&mut w), Vec::<String>::new());
    by.check();
}
