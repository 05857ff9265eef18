//! Pages from foreign sites: `ws_allowed_origins` refuses their WebSocket upgrades with 403
//! before a token is looked at.

use super::*;

#[test]
fn ws_allowed_origins_refuses_other_and_missing_origins_with_403() {
    let server = TestServer::with(|c| {
        c.ws_allowed_origins = vec!["https://app.example".into(), "http://localhost:8080".into()];
    });
    let ctx = server.context();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    let mut by = Bystander::new(&server);
    let forbidden = plain("403 Forbidden", "origin not allowed\n", "");
    // Allowed origins are upgraded (ASCII case does not matter) and work.
    for origin in [
        "https://app.example",
        "http://localhost:8080",
        "HTTPS://APP.example",
    ] {
        let mut w = ws_with(server.http, "tok", &[("Origin", origin)]).expect("allowed origin");
        call(&mut w, PING, PONG);
    }
    let (_, head) = raw_upgrade(server.http, "tok", &[("Origin", "https://app.example")]);
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    // Other origins, and no origin, get 403 before the upgrade, whatever the token.
    let failures = get(&ctx.metrics().auth_failures);
    let mut refused = 0;
    for origin in [
        Some("https://evil.example"),
        Some("https://app.example.evil.example"),
        Some("http://app.example"),
        Some("https://app.example:443"),
        Some("https://app.example/"),
        Some("null"),
        Some(""),
        None,
    ] {
        for token in ["tok", "unknown-token"] {
            let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
            let mut s = raw_connect(server.http);
            s.write_all(&upgrade_request("", Some(token), &headers))
                .unwrap();
            assert_eq!(read_response(&mut s), forbidden, "origin {origin:?}");
            assert_eq!(
                ws_with(server.http, token, &headers).err(),
                Some(403),
                "origin {origin:?}"
            );
            refused += 2;
        }
        by.check();
    }
    // Origin bytes that are not text are refused too.
    let mut s = raw_connect(server.http);
    let mut req = upgrade_request("", Some("tok"), &[]);
    req.truncate(req.len() - 2);
    req.extend_from_slice(b"Origin: https://app.example\xff\r\n\r\n");
    s.write_all(&req).unwrap();
    assert_eq!(read_response(&mut s), forbidden);
    refused += 1;
    assert_eq!(get(&ctx.metrics().auth_failures), failures + refused);
    // An allowed origin does not stand in for a token.
    assert_eq!(
        ws_with(
            server.http,
            "unknown-token",
            &[("Origin", "https://app.example")]
        )
        .err(),
        Some(401)
    );
    by.check();
}

/// Without `ws_allowed_origins`, any origin and none are fine (the default).
#[test]
fn without_ws_allowed_origins_any_origin_is_upgraded() {
    let server = TestServer::start();
    let mut admin = server.client();
    admin.send("register a tok");
    admin.ping();
    for origin in ["https://anything.example", "null"] {
        let mut w = ws_with(server.http, "tok", &[("Origin", origin)]).expect("upgraded");
        call(&mut w, PING, PONG);
    }
    let mut w = ws_with(server.http, "tok", &[]).expect("upgraded");
    call(&mut w, PING, PONG);
}
