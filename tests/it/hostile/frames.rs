//! WebSocket frames that break RFC 6455, and frames that are unusual but right. Every
//! violation is closed with 1002 (1007 for text that is not UTF-8), on that connection only;
//! what is right is understood, whatever the fragments and however they arrive.

use super::*;
use crate::support::http::connect_from;
use std::net::IpAddr;

/// Reads server frames until a close frame and checks its code and reason, then the end of
/// the connection; `case` names what was sent.
fn expect_close(s: &mut TcpStream, code: u16, reason: &str, case: &str) {
    loop {
        match server_frame(s) {
            Some((0x88, payload)) => {
                assert_eq!(payload, close_payload(code, reason), "{case}");
                break;
            }
            Some((0x81 | 0x89, _)) => continue,
            other => panic!("{case}: expected a close frame, got {other:?}"),
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    assert_eq!(
        server_frame(s),
        None,
        "{case}: nothing after the close frame"
    );
}

/// Every way of breaking RFC 6455's framing that a server must refuse ends in close 1002 (or
/// 1007 for a close reason that is not UTF-8), on that connection only.
#[test]
fn frames_that_break_rfc6455_are_closed_with_1002() {
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::with_ws(&server, "tok");
    let ping = PING.as_bytes();
    let mut unmasked = vec![0x81, ping.len() as u8];
    unmasked.extend_from_slice(ping);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an unmasked text frame", unmasked),
        ("a reserved bit", client_frame(0xC1, ping)),
        ("another reserved bit", client_frame(0x91, ping)),
        ("an unknown data opcode", client_frame(0x83, ping)),
        ("an unknown control opcode", client_frame(0x8B, b"")),
        ("a fragmented ping", client_frame(0x09, b"x")),
        ("a ping of 126 bytes", client_frame(0x89, &[b'x'; 126])),
        ("a continuation first", client_frame(0x80, ping)),
        (
            "a text frame inside a fragmented message",
            [client_frame(0x01, b"{"), client_frame(0x81, ping)].concat(),
        ),
        ("a close frame of one byte", client_frame(0x88, b"\x03")),
        (
            "close code 1005",
            client_frame(0x88, &1005u16.to_be_bytes()),
        ),
        ("close code 999", client_frame(0x88, &999u16.to_be_bytes())),
        (
            "close code 5000",
            client_frame(0x88, &5000u16.to_be_bytes()),
        ),
    ];
    for (case, bytes) in cases {
        let (mut s, head) = raw_upgrade(server.http, "tok", &[]);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        s.write_all(&bytes).unwrap();
        expect_close(&mut s, 1002, "protocol error", case);
        by.check();
    }
    let (mut s, _) = raw_upgrade(server.http, "tok", &[]);
    s.write_all(&client_frame(0x88, b"\x03\xe8bye \xff"))
        .unwrap();
    expect_close(&mut s, 1007, "close reason is not UTF-8", "a close reason");
    by.check();
}

/// Frames that are unusual but right are understood: a command sent with the request head,
/// a command in fragments with control frames between them, written a byte at a time, and a
/// close frame without a code.
#[test]
fn fragments_control_frames_and_early_bytes_are_understood() {
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::with_ws(&server, "tok");

    // A command (and half of the next) in the same write as the request head: the server
    // reads them with the head and must take them from there before the socket.
    let mut s = connect_from(IpAddr::from([127, 0, 0, 1]), server.http);
    let list = client_frame(0x81, br#"{"command":"list"}"#);
    let mut first = upgrade_request("", Some("tok"), &[]);
    first.extend(client_frame(0x81, PING.as_bytes()));
    first.extend_from_slice(&list[..5]);
    s.write_all(&first).unwrap();
    let head = read_response_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(server_frame(&mut s), Some((0x81, PONG.as_bytes().to_vec())));
    s.write_all(&list[5..]).unwrap();
    let want = br#"{"success":true,"command":"list","subscriptions":[]}"#;
    assert_eq!(server_frame(&mut s), Some((0x81, want.to_vec())));

    // A subscribe in three fragments, a ping and a pong between them, a byte per write.
    let cmd = br#"{"command":"subscribe","tags":["a"]}"#;
    let mut bytes = client_frame(0x01, &cmd[..10]);
    bytes.extend(client_frame(0x89, b"between"));
    bytes.extend(client_frame(0x00, &cmd[10..20]));
    bytes.extend(client_frame(0x8A, b"unasked"));
    bytes.extend(client_frame(0x80, &cmd[20..]));
    for b in &bytes {
        s.write_all(std::slice::from_ref(b)).unwrap();
    }
    assert_eq!(server_frame(&mut s), Some((0x8A, b"between".to_vec())));
    let want = br#"{"success":true,"command":"subscribe"}"#;
    assert_eq!(server_frame(&mut s), Some((0x81, want.to_vec())));
    admin.send("publish a hi");
    admin.ping();
    let want = br#"{"keys":["a"],"data":"hi"}"#;
    assert_eq!(server_frame(&mut s), Some((0x81, want.to_vec())));
    by.check();

    // A close frame without a code is answered with 1000.
    s.write_all(&client_frame(0x88, b"")).unwrap();
    expect_close(&mut s, 1000, "", "a close without a code");
    by.check();
}

/// The response head of a raw upgrade, read a byte at a time so nothing after it is taken.
fn read_response_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 * 1024, "response head too long");
        assert_eq!(s.read(&mut b).expect("the head before the timeout"), 1);
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}
