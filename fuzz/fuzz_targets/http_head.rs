//! The HTTP request head parser, `http::parse_head`.
//!
//! Checks that nothing panics; that for a complete head the bytes after it are returned as
//! they were, the path has no query left in it, and every shorter prefix of the head is
//! reported incomplete (the reader parses again as bytes arrive, so a head split over reads
//! must not fail or complete early); that the head written back out parses the same; and that
//! finding its WebSocket token (`http::token_of`) never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mist::http::{parse_head, token_of};

fuzz_target!(|buf: &[u8]| {
    let Ok(Some(head)) = parse_head(buf) else {
        return;
    };
    let used = buf.len() - head.rest.len();
    assert_eq!(&buf[used..], &head.rest[..]);
    assert!(!head.path.contains('?'));
    let _ = token_of(&head);
    // Some prefixes, always including the longest.
    let step = used / 16 + 1;
    for cut in (0..used).step_by(step).chain(used.checked_sub(1)) {
        match parse_head(&buf[..cut]) {
            Ok(None) => {}
            Ok(Some(_)) => panic!("a {cut}-byte prefix of a {used}-byte head is complete"),
            Err(e) => panic!("a {cut}-byte prefix of a {used}-byte head fails: {e}"),
        }
    }
    let mut again = format!("{} {}", head.method, head.path).into_bytes();
    if let Some(q) = &head.query {
        again.push(b'?');
        again.extend_from_slice(q.as_bytes());
    }
    again.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        again.extend_from_slice(name.as_str().as_bytes());
        again.extend_from_slice(b": ");
        again.extend_from_slice(value.as_bytes());
        again.extend_from_slice(b"\r\n");
    }
    again.extend_from_slice(b"\r\n");
    let second = parse_head(&again)
        .expect("the head written back parses")
        .expect("and is complete");
    assert_eq!(
        (&second.method, &second.path, &second.query, &second.headers),
        (&head.method, &head.path, &head.query, &head.headers)
    );
    assert!(second.rest.is_empty());
});
