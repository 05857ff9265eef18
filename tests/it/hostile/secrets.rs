//! Secrets stay out of the log: tokens and message data are never logged, at INFO nor at DEBUG,
//! with either token store.

use super::*;

/// Distinctive strings a full session uses as tokens and data; none may reach the log.
struct Secrets {
    admin: String,
    wrong_admin: String,
    token: String,
    header_token: String,
    wrong_token: String,
    data: String,
}

impl Secrets {
    fn new() -> Secrets {
        let n = std::process::id();
        Secrets {
            admin: format!("AdminSecret{n}xq"),
            wrong_admin: format!("WrongAdmin{n}zv"),
            token: format!("TokenSecret{n}kw"),
            header_token: format!("HeaderToken{n}jy"),
            wrong_token: format!("WrongToken{n}pf"),
            data: format!("DataSecret{n}gb"),
        }
    }

    fn all(&self) -> [&str; 6] {
        [
            &self.admin,
            &self.wrong_admin,
            &self.token,
            &self.header_token,
            &self.wrong_token,
            &self.data,
        ]
    }
}

/// A full session against the server in `d` with the secrets of `s`: admin auth (wrong, then
/// right), every token command, publishes, WebSocket connections with the token in the query
/// and in the header, a refused WebSocket, and revocation.
fn secret_session(d: &Proc, s: &Secrets) {
    let mut admin = LineClient::connect(d.tcp());
    admin.send(&format!("auth {}", s.wrong_admin));
    admin.expect("error wrong admin token");
    admin.send(&format!("register a {}", s.token));
    admin.expect("error admin commands need auth ADMIN_TOKEN first");
    admin.send(&format!("auth {}", s.admin));
    admin.send(&format!("register a {}", s.token));
    admin.send(&format!("register a {}", s.token));
    admin.expect("error token already exists");
    admin.send(&format!("register a,b {}", s.header_token));
    admin.send(&format!("set b,c {}", s.token));
    admin.send(&format!("unset c {}", s.token));
    admin.send(&format!("tags {}", s.token));
    admin.expect(&format!("tags {} a,b", s.token));
    admin.send(&format!("tags {}", s.wrong_token));
    admin.expect("error unknown token");
    admin.ping();

    let mut tcp_sub = LineClient::connect(d.tcp());
    tcp_sub.send("subscribe a");
    tcp_sub.ping();
    let mut in_query =
        crate::support::try_ws_connect(d.http(), None, Some(&s.token)).expect("token in the query");
    let mut in_header = ws(d.http(), &s.header_token);
    for w in [&mut in_query, &mut in_header] {
        call(
            w,
            r#"{"command":"subscribe","tags":["a"]}"#,
            r#"{"success":true,"command":"subscribe"}"#,
        );
    }
    assert_eq!(
        crate::support::try_ws_connect(d.http(), Some(&s.wrong_token), None).err(),
        Some(401)
    );
    assert_eq!(
        crate::support::try_ws_connect(d.http(), None, Some(&s.wrong_token)).err(),
        Some(401)
    );
    let mut p = LineClient::connect(d.tcp());
    p.send(&format!("publish a {}", s.data));
    p.send(&format!("publish a,b more {} data", s.data));
    p.ping();
    assert_eq!(
        tcp_sub.sync(),
        [
            format!("publish a {}", s.data),
            format!("publish a,b more {} data", s.data)
        ]
    );
    for w in [&mut in_query, &mut in_header] {
        assert_eq!(
            ws_text(w),
            format!(r#"{{"keys":["a"],"data":"{}"}}"#, s.data)
        );
        assert_eq!(ws_sync(w).len(), 1);
    }
    // Revocation: by unset, then by unregister.
    admin.send(&format!("unset a {}", s.header_token));
    admin.ping();
    assert_eq!(
        ws_text(&mut in_header),
        r#"{"success":true,"command":"unsubscribe","tags":["a"],"reason":"access revoked"}"#
    );
    admin.send(&format!("unregister {}", s.token));
    admin.ping();
    expect_close_frame(&mut in_query, 1008, "token revoked");
    admin.send(&format!("unregister {}", s.header_token));
    admin.ping();
}

/// Runs the session at `level` with `store_conf` and checks the whole log for the secrets.
/// The log must say something (the wrong admin token, and at DEBUG each connection), so that
/// an empty log cannot pass.
fn no_secrets_in_the_log(level: &str, store_conf: &str) {
    let s = Secrets::new();
    let d = Proc::server_with(
        "secrets",
        &format!("log_level {level}\nadmin_token {}\n{store_conf}", s.admin),
    );
    secret_session(&d, &s);
    let log = d.stop();
    assert!(log.contains(": wrong admin token"), "{log}");
    assert!(log.contains("WebSocket refused: unknown token"), "{log}");
    if level == "DEBUG" {
        assert!(log.contains(": connected"), "{log}");
        assert!(log.contains(": error unknown token"), "{log}");
    }
    for secret in s.all() {
        assert!(
            !log.contains(secret),
            "'{secret}' is in the {level} log:\n{log}"
        );
    }
}

#[test]
fn tokens_and_data_never_reach_the_log_at_info() {
    no_secrets_in_the_log("INFO", "");
}

#[test]
fn tokens_and_data_never_reach_the_log_at_debug() {
    no_secrets_in_the_log("DEBUG", "");
}

/// With the tokens in PostgreSQL: the client library logs every statement's parameters (the
/// tokens) at DEBUG; mist's logger drops those lines.
///
/// Regression test for cf93f0a: the PostgreSQL client's DEBUG lines, with every statement's
/// parameters (tokens among them), reached the log.
#[test]
fn tokens_never_reach_the_log_at_debug_with_postgres() {
    let db = crate::pgsupport::PgDb::create();
    let (host, port) = db.config.address.rsplit_once(':').unwrap();
    let conf = format!(
        "auth_store postgres\npg_address {host}:{port}\npg_user {}\npg_database {}\n",
        db.config.user, db.config.database
    );
    no_secrets_in_the_log("DEBUG", &conf);
    no_secrets_in_the_log("INFO", &conf);
}
