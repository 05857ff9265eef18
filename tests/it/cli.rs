//! The command-line client, run as the real `mist` binary against an in-process server.

use crate::support::process::{Output, Proc, mist, mist_env};
use crate::support::{LineClient, TIMEOUT, TestServer};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

/// `mist --tcp-addr ADDR ARGS`.
fn client(addr: SocketAddr, args: &[&str]) -> Output {
    let addr = addr.to_string();
    let mut all = vec!["--tcp-addr", addr.as_str()];
    all.extend_from_slice(args);
    mist(&all)
}

/// Asserts a successful run that printed exactly `stdout` and nothing on stderr.
fn assert_ok(out: &Output, stdout: &str) {
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (Some(0), stdout, ""),
        "{out:?}"
    );
}

/// Asserts a run that failed with exit code 1, printed nothing on stdout, and exactly
/// `stderr` on stderr.
fn assert_fails(out: &Output, stderr: &str) {
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (Some(1), "", stderr),
        "{out:?}"
    );
}

/// A subscriber on `tags`, ready.
fn subscriber(server: &TestServer, tags: &str) -> LineClient {
    let mut c = server.client();
    c.send(&format!("subscribe {tags}"));
    c.ping();
    c
}

#[test]
fn ping_prints_pong() {
    let server = TestServer::start();
    assert_ok(&client(server.tcp, &["ping"]), "pong\n");
}

#[test]
fn publish_sends_one_message() {
    let server = TestServer::start();
    let mut sub = subscriber(&server, "a");
    assert_ok(
        &client(server.tcp, &["publish", "b,a", "hello  world "]),
        "",
    );
    // The client waits for its `pong`, so the delivery is already queued.
    assert_eq!(sub.sync(), ["publish a,b hello  world "]);
    assert_ok(&client(server.tcp, &["publish", "a", ""]), "");
    assert_ok(&client(server.tcp, &["publish", "--", "a", "-5"]), "");
    assert_eq!(sub.sync(), ["publish a ", "publish a -5"]);
}

/// Regression test for 6152784: `mist publish TAGS -` was refused (a lone `-` looked like a
/// flag to the argument parser).
#[test]
fn publish_dash_sends_each_stdin_line_in_order() {
    let server = TestServer::start();
    let mut sub = subscriber(&server, "a");
    let addr = server.tcp.to_string();
    let args = ["--tcp-addr", addr.as_str(), "publish", "a,b", "-"];
    // An empty line is a message with empty data; the last line needs no `\n`.
    let stdin = b"one\ntwo  two\n\nthree".to_vec();
    let out = mist_env(&args, &[], Some(stdin));
    assert_ok(&out, "");
    assert_eq!(
        sub.sync(),
        [
            "publish a,b one",
            "publish a,b two  two",
            "publish a,b ",
            "publish a,b three"
        ]
    );

    // Many lines keep their order.
    let stdin: String = (0..3000).map(|i| format!("line {i}\n")).collect();
    let out = mist_env(&args, &[], Some(stdin.into_bytes()));
    assert_ok(&out, "");
    let want: Vec<String> = (0..3000).map(|i| format!("publish a,b line {i}")).collect();
    assert_eq!(sub.sync(), want);
}

#[test]
fn publish_dash_reports_refused_messages() {
    let server = TestServer::start();
    let addr = server.tcp.to_string();
    let out = mist_env(
        &["--tcp-addr", &addr, "publish", "a,,b", "-"],
        &[],
        Some(b"x\n".to_vec()),
    );
    assert_fails(
        &out,
        "mist: invalid tags: empty tag\nmist: some messages were refused\n",
    );
}

#[test]
fn subscribe_prints_the_data_of_each_delivery() {
    let server = TestServer::start();
    let addr = server.tcp.to_string();
    let cli = Proc::spawn(&["--tcp-addr", &addr, "subscribe", "b,a"], &[], None);
    server.wait_for_subscriptions(1);
    let mut publ = server.client();
    publ.send("publish c,b,a hello  world ");
    publ.send("publish a only-a");
    publ.send("publish a,b ");
    publ.send("publish a,b last");
    publ.ping();
    assert_eq!(Proc::line(&cli.stdout), "hello  world \n");
    // `only-a` did not match, so the empty message is next.
    assert_eq!(Proc::line(&cli.stdout), "\n");
    assert_eq!(Proc::line(&cli.stdout), "last\n");
}

#[test]
fn subscribe_with_tags_prints_tags_and_data() {
    let server = TestServer::start();
    let addr = server.tcp.to_string();
    let cli = Proc::spawn(
        &["--tcp-addr", &addr, "subscribe", "--with-tags", "a"],
        &[],
        None,
    );
    server.wait_for_subscriptions(1);
    let mut publ = server.client();
    publ.send("publish c,a,b x y");
    publ.send("publish a ");
    publ.ping();
    assert_eq!(Proc::line(&cli.stdout), "a,b,c x y\n");
    assert_eq!(Proc::line(&cli.stdout), "a \n");
}

#[test]
fn subscribe_ends_with_code_1_when_the_server_goes_away() {
    let server = TestServer::start();
    let addr = server.tcp.to_string();
    let mut cli = Proc::spawn(&["--tcp-addr", &addr, "subscribe", "a"], &[], None);
    server.wait_for_subscriptions(1);
    server.stop();
    let status = cli.wait(TIMEOUT);
    assert_eq!(status.code(), Some(1));
    assert_eq!(Proc::rest(&cli.stdout), "");
    assert_eq!(
        Proc::rest(&cli.stderr),
        "mist: the server closed the connection\n"
    );
}

#[test]
fn server_errors_go_to_stderr_with_code_1() {
    let server = TestServer::start();
    let mut sub = subscriber(&server, "a");
    assert_fails(
        &client(server.tcp, &["publish", "a,,b", "x"]),
        "mist: invalid tags: empty tag\n",
    );
    assert_fails(
        &client(server.tcp, &["subscribe", "a,,b"]),
        "mist: invalid tags: empty tag\n",
    );
    assert_fails(
        &client(server.tcp, &["unsubscribe", "a,"]),
        "mist: invalid tags: empty tag\n",
    );
    assert_fails(
        &client(server.tcp, &["tags", "nope"]),
        "mist: unknown token\n",
    );
    // A message cannot hold a newline; nothing is sent.
    let out = client(server.tcp, &["publish", "a", "two\nlines"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("newline"), "{out:?}");
    assert_eq!(sub.sync(), Vec::<String>::new());
}

#[test]
fn connection_failure_names_the_address() {
    // A bound socket that does not listen: connecting to it is refused, and no other test can
    // take the port meanwhile.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    for args in [
        &["ping"][..],
        &["publish", "a", "x"],
        &["register", "a", "t"],
    ] {
        let out = client(addr, args);
        assert_eq!(out.code, Some(1), "{out:?}");
        assert_eq!(out.stdout, "");
        assert!(
            out.stderr
                .starts_with(&format!("mist: cannot connect to {addr}: ")),
            "{out:?}"
        );
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    }
}

#[test]
fn list_and_unsubscribe() {
    let server = TestServer::start();
    assert_ok(&client(server.tcp, &["list"]), "list []\n");
    assert_ok(&client(server.tcp, &["unsubscribe", "b,a"]), "");
}

#[test]
fn token_admin_commands() {
    let server = TestServer::start();
    let tokens = &server.context().tokens();
    let a = server.tcp;
    assert_ok(&client(a, &["register", "b,a", "tok"]), "");
    assert_eq!(tokens.tags("tok").unwrap(), ["a", "b"]);
    assert_ok(&client(a, &["tags", "tok"]), "a,b\n");
    assert_ok(&client(a, &["set", "c", "tok"]), "");
    assert_ok(&client(a, &["tags", "tok"]), "a,b,c\n");
    assert_ok(&client(a, &["unset", "a,b,c", "tok"]), "");
    // No tags: an empty line.
    assert_ok(&client(a, &["tags", "tok"]), "\n");
    assert_fails(
        &client(a, &["register", "x", "tok"]),
        "mist: token already exists\n",
    );
    assert_ok(&client(a, &["unregister", "tok"]), "");
    assert!(tokens.tags("tok").is_err());
    for args in [
        &["tags", "tok"][..],
        &["set", "a", "tok"],
        &["unset", "a", "tok"],
        &["unregister", "tok"],
    ] {
        assert_fails(&client(a, args), "mist: unknown token\n");
    }
}

#[test]
fn admin_token_from_flag_or_environment() {
    let server = TestServer::with(|c| c.admin_token = Some("s3cret".into()));
    let tokens = &server.context().tokens();
    let addr = server.tcp.to_string();
    let a = addr.as_str();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["--tcp-addr", a];
        all.extend_from_slice(args);
        mist_env(&all, env, None)
    };
    assert_fails(
        &run(&["register", "a", "tok"], &[]),
        "mist: admin commands need auth ADMIN_TOKEN first\n",
    );
    assert_fails(
        &run(&["--admin-token", "nope", "register", "a", "tok"], &[]),
        "mist: wrong admin token\n",
    );
    assert!(tokens.tags("tok").is_err(), "nothing was registered");

    assert_ok(
        &run(&["--admin-token", "s3cret", "register", "a", "tok"], &[]),
        "",
    );
    assert_ok(
        &run(&["tags", "tok"], &[("MIST_ADMIN_TOKEN", "s3cret")]),
        "a\n",
    );
    assert_fails(
        &run(&["tags", "tok"], &[("MIST_ADMIN_TOKEN", "nope")]),
        "mist: wrong admin token\n",
    );
    // The flag wins over the environment.
    assert_ok(
        &run(
            &["--admin-token", "s3cret", "set", "b", "tok"],
            &[("MIST_ADMIN_TOKEN", "nope")],
        ),
        "",
    );
    assert_eq!(tokens.tags("tok").unwrap(), ["a", "b"]);
    // Commands that are not admin commands do not send the token at all.
    assert_ok(&run(&["--admin-token", "nope", "ping"], &[]), "pong\n");
    assert_eq!(
        server
            .context()
            .metrics()
            .auth_failures
            .load(Ordering::Relaxed),
        2
    );
}
