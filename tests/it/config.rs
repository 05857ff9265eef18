//! The server binary: config files (good and bad), flags that override them, signals, and the
//! informational flags. Every server runs as a real `mist -d` process on ports chosen here.

use crate::support::LineClient;
use crate::support::http::http_get;
use crate::support::process::{Output, Proc, config_file, mist};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

/// Two loopback addresses that were free a moment ago (both are held until both are chosen,
/// so they differ).
fn free_addrs() -> (SocketAddr, SocketAddr) {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

/// Asserts that `mist ARGS` stopped at start-up with exit code 2 and the one stderr line
/// `want`.
fn assert_refused(out: &Output, want: &str) {
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
    assert!(out.stderr.starts_with(want), "{out:?}\nwanted: {want}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
}

#[test]
fn bad_config_files_name_file_line_and_key() {
    // (file text, line, key, reason)
    let cases = [
        ("log_level INFO\n\nbogus 1\n", 3, "bogus", "unknown key"),
        (
            "# a comment\nmax_tags lots\n",
            2,
            "max_tags",
            "'lots' is not a whole number",
        ),
        (
            "max_tags 0\n",
            1,
            "max_tags",
            "0 is out of range (1..=4096)",
        ),
        (
            "client_queue -5\n",
            1,
            "client_queue",
            "'-5' is not a whole number",
        ),
        (
            "log_level loud\n",
            1,
            "log_level",
            "'loud' is not one of TRACE, DEBUG, INFO, WARN, ERROR",
        ),
        (
            "auth_store redis\n",
            1,
            "auth_store",
            "'redis' is not one of memory, postgres",
        ),
        (
            "\n  tcp_listen_address nowhere\n",
            2,
            "tcp_listen_address",
            "'nowhere' is not host:port",
        ),
        (
            "max_tags 3\n# again:\nmax_tags 4\n",
            3,
            "max_tags",
            "set twice (first on line 1)",
        ),
        ("admin_token\n", 1, "admin_token", "missing value"),
        (
            "max_connections   \n",
            1,
            "max_connections",
            "missing value",
        ),
        (
            "admin_token two words\n",
            1,
            "admin_token",
            "invalid token: contains whitespace or a control character",
        ),
    ];
    for (text, line, key, reason) in cases {
        let path = config_file(key, text);
        let p = path.to_str().unwrap();
        // Ephemeral ports, so that a file wrongly accepted cannot take the default ones.
        let out = mist(&[
            "-d",
            "--config",
            p,
            "--http-addr",
            "127.0.0.1:0",
            "--tcp-addr",
            "127.0.0.1:0",
        ]);
        assert_refused(&out, &format!("mist: {p}:{line}: {key}: {reason}\n"));
    }
}

#[test]
fn missing_config_file_is_refused() {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mist-no-such-file.conf");
    let p = path.to_str().unwrap();
    let out = mist(&["-d", "--config", p, "--tcp-addr", "127.0.0.1:0"]);
    assert_refused(&out, &format!("mist: {p}: "));
}

#[test]
fn bad_flags_are_refused() {
    let out = mist(&[
        "-d",
        "--log-level",
        "loud",
        "--tcp-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    assert_refused(
        &out,
        "mist: --log-level: 'loud' is not one of TRACE, DEBUG, INFO, WARN, ERROR\n",
    );
    let out = mist(&["-d", "--tcp-addr", "nowhere", "--http-addr", "127.0.0.1:0"]);
    assert_refused(&out, "mist: --tcp-addr: 'nowhere' is not host:port\n");
    // A flag's bad value is refused even when the file is fine.
    let path = config_file("fine", "max_tags 4\n");
    let out = mist(&[
        "-d",
        "--config",
        path.to_str().unwrap(),
        "--log-level",
        "",
        "--tcp-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    assert_refused(&out, "mist: --log-level: ");
}

#[test]
fn a_good_config_file_is_used() {
    let (tcp, http) = free_addrs();
    let text = format!(
        "# mist.conf for a test\n\
         \n\
         tcp_listen_address {tcp}\n\
         \x20 # an indented comment\n\
         http_listen_address {http}\n\
         log_level info\n\
         auth_store memory\n\
         cluster none\n\
         admin_token s3cret\n\
         client_queue 100\n\
         client_queue_bytes 1048576\n\
         max_line_bytes 4096\n\
         max_tags 2\n\
         max_connections 50\n\
         queue_memory_limit 67108864\n\
         publisher_pacing 25\n\
         multicast_interface eth0\n"
    );
    let path = config_file("good", &text);
    let mut server = Proc::server(&["--config", path.to_str().unwrap()]);
    assert_eq!(server.tcp(), tcp);
    server.wait_log(&format!(
        "listening for HTTP and WebSocket clients on {http}"
    ));
    // Accepted but unused settings are warned about, and the bound on all queues is told.
    for what in [
        "multicast_interface is ignored",
        "publisher_pacing is ignored",
        "client queues hold at most 64 MiB together (queue_memory_limit)",
    ] {
        assert!(
            server.log().iter().any(|l| l.contains(what)),
            "{what}: {:?}",
            server.log()
        );
    }

    // The CLI reaches it.
    let out = mist(&["--tcp-addr", &tcp.to_string(), "ping"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "pong\n"),
        "{out:?}"
    );

    // Each setting took effect.
    let mut c = LineClient::connect(tcp);
    c.send("subscribe a,b,c");
    c.expect("error invalid tags: more than 2 distinct tags");
    c.send("register a tok");
    c.expect("error admin commands need auth ADMIN_TOKEN first");
    c.send(&"x".repeat(5000));
    c.expect("error line too long (max_line_bytes 4096)");
    c.send("auth s3cret");
    c.send("register a tok");
    c.send("tags tok");
    c.expect("tags tok a");
    let resp = http_get(http, "/ping");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("\r\n\r\npong"), "{resp}");

    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(2)).code(), Some(0));
}

/// A wrong `auth` is logged, and neither the wrong token nor the real one is written anywhere
/// in the log.
#[test]
fn wrong_auth_is_logged_without_the_token() {
    let (tcp, http) = free_addrs();
    let path = config_file(
        "auth-log",
        &format!(
            "tcp_listen_address {tcp}\nhttp_listen_address {http}\nadmin_token right-s3cret\n"
        ),
    );
    let mut server = Proc::server(&["--config", path.to_str().unwrap()]);
    assert_eq!(server.tcp(), tcp);
    let mut c = LineClient::connect(tcp);
    c.send("auth wrong-guess-42");
    c.expect("error wrong admin token");
    c.send("auth right-s3cret");
    c.ping();
    // The log line is written before the reply is sent.
    server.wait_log("wrong admin token");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(2)).code(), Some(0));
    let mut log = server.log().concat();
    log.push_str(&Proc::rest(&server.stderr));
    assert!(!log.contains("wrong-guess-42"), "{log}");
    assert!(!log.contains("right-s3cret"), "{log}");
}

#[test]
fn tcp_addr_flag_overrides_the_file() {
    let (in_file, on_flag) = free_addrs();
    let (http, _) = free_addrs();
    let path = config_file(
        "override",
        &format!("tcp_listen_address {in_file}\nhttp_listen_address {http}\n"),
    );
    let flag = on_flag.to_string();
    let mut server = Proc::server(&["--config", path.to_str().unwrap(), "--tcp-addr", &flag]);
    assert_eq!(server.tcp(), on_flag);
    assert!(
        !server
            .log()
            .iter()
            .any(|l| l.contains(&in_file.to_string())),
        "{:?}",
        server.log()
    );
    let out = mist(&["--tcp-addr", &flag, "ping"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "pong\n"),
        "{out:?}"
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(2)).code(), Some(0));
}

/// Starts a server, connects clients (one mid-subscription, one idle), sends `sig`, and
/// expects exit code 0 within 2 s with the clients' connections closed.
fn stops_on(sig: libc::c_int) {
    let (tcp, http) = free_addrs();
    let (t, h) = (tcp.to_string(), http.to_string());
    let mut server = Proc::server(&["--tcp-addr", &t, "--http-addr", &h]);
    assert_eq!(server.tcp(), tcp);
    let mut sub = LineClient::connect(tcp);
    sub.send("subscribe a");
    sub.ping();
    let mut idle = LineClient::connect(tcp);
    idle.ping();
    let mut publ = LineClient::connect(tcp);
    publ.send("publish a before");
    publ.ping();
    assert_eq!(sub.sync(), ["publish a before"]);

    server.signal(sig);
    let status = server.wait(Duration::from_secs(2));
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The clients' connections are closed.
    assert_eq!(sub.read_to_end(), b"");
    assert_eq!(idle.read_to_end(), b"");
    assert_eq!(publ.read_to_end(), b"");
}

#[test]
fn sigterm_stops_the_server_with_code_0() {
    stops_on(libc::SIGTERM);
}

#[test]
fn sigint_stops_the_server_with_code_0() {
    stops_on(libc::SIGINT);
}

/// Regression test for cf93f0a: the "listening" lines came before the accept threads ran, so a
/// client that connected on seeing them could find nobody accepting.
#[test]
fn the_log_says_where_the_server_listens() {
    let (tcp, http) = free_addrs();
    let (t, h) = (tcp.to_string(), http.to_string());
    let mut server = Proc::server(&["--tcp-addr", &t, "--http-addr", &h, "--log-level", "INFO"]);
    assert_eq!(server.tcp(), tcp);
    server.wait_log(&format!(
        "listening for HTTP and WebSocket clients on {http}"
    ));
    let mut c = LineClient::connect(tcp);
    c.ping();
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(2)).code(), Some(0));
}

/// Once the server has said it listens, a SIGTERM must be a clean stop (a supervisor may send
/// one at any time), not the default action of the signal.
///
/// Regression test for 6152784: a SIGTERM right after start-up killed the process.
#[test]
fn sigterm_right_after_start_up_is_a_clean_stop() {
    let (tcp, http) = free_addrs();
    let (t, h) = (tcp.to_string(), http.to_string());
    let mut server = Proc::server(&["--tcp-addr", &t, "--http-addr", &h]);
    assert_eq!(server.tcp(), tcp);
    server.signal(libc::SIGTERM);
    let status = server.wait(Duration::from_secs(2));
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn nothing_to_do_exits_2() {
    let out = mist(&[]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(2), ""), "{out:?}");
    assert!(out.stderr.starts_with("mist: "), "{out:?}");
    let out = mist(&["-d", "--tcp-addr", "127.0.0.1:0", "ping"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(2), ""), "{out:?}");
}

/// `mist --help` promises exit code 2 for bad arguments (and 1 for a failed command).
///
/// Regression test for 6152784: bad arguments exited with 1.
#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["--bogus"][..],
        &["publish", "a"],
        &["subscribe"],
        &["frobnicate"],
        &["--tcp-addr"],
    ] {
        let out = mist(args);
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert_eq!(out.stdout, "", "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn version_flag() {
    let want = format!("mist {}\n", env!("CARGO_PKG_VERSION"));
    for flag in ["-v", "--version"] {
        let out = mist(&[flag]);
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (Some(0), want.as_str(), ""),
            "{flag}"
        );
    }
}

#[test]
fn help_mentions_every_command() {
    let out = mist(&["--help"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let commands: Vec<&str> = out
        .stdout
        .split("\nCommands:\n")
        .nth(1)
        .expect("a Commands section")
        .lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for cmd in [
        "ping",
        "publish",
        "subscribe",
        "unsubscribe",
        "list",
        "register",
        "unregister",
        "set",
        "unset",
        "tags",
    ] {
        assert!(commands.contains(&cmd), "{cmd} in {commands:?}");
    }
    for flag in [
        "-d",
        "--config",
        "--tcp-addr",
        "--http-addr",
        "--log-level",
        "--admin-token",
    ] {
        assert!(out.stdout.contains(flag), "{flag} in the help");
    }
}

/// The one log line of a server that could not start, with its timestamp and level cut off.
fn start_up_error(out: &Output) -> String {
    assert_eq!((out.code, out.stdout.as_str()), (Some(1), ""), "{out:?}");
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{out:?}");
    let (_, message) = errors[0].split_once("] ").expect("a log line");
    message.to_string()
}

/// A server that cannot start says why on one line, each part once: what it could not do,
/// then the cause from the system, without repeating either.
#[test]
fn start_up_failures_say_each_thing_once() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = mist(&["-d", "--tcp-addr", &addr, "--http-addr", "127.0.0.1:0"]);
    assert_eq!(
        start_up_error(&out),
        format!("cannot listen on {addr}: Address already in use (os error 98)")
    );

    // Nothing listens on a port that was just free.
    let pg = free_addrs().0;
    let conf = config_file(
        "pg-down",
        &format!(
            "tcp_listen_address 127.0.0.1:0\nhttp_listen_address 127.0.0.1:0\n\
             auth_store postgres\npg_address {pg}\npg_database tokens\npg_user mist\n"
        ),
    );
    let out = mist(&["-d", "--config", conf.to_str().unwrap()]);
    assert_eq!(
        start_up_error(&out),
        format!(
            "cannot use PostgreSQL at {pg} (database tokens, user mist): \
             error connecting to server: Connection refused (os error 111)"
        )
    );
}
