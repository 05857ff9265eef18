//! The console at `/`: its files over plain HTTP, and the page itself in a real headless
//! Chromium driven through the DevTools protocol: messages published over TCP appear in it,
//! data stays text, unsubscribing stops the stream, it reconnects and subscribes again after
//! the server restarts, and it shows revocations.

use crate::cdp::Chromium;
use crate::support::http::read_response;
use crate::support::{LineClient, TIMEOUT, TestServer};
use serde_json::json;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

/// `GET path` with extra header lines; the response's status line, head and body.
fn get(addr: SocketAddr, path: &str, extra: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: mist\r\n{extra}\r\n").unwrap();
    let raw = read_response(&mut s);
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete head");
    let (status, head) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_string(),
        head.to_ascii_lowercase(),
        body.to_string(),
    )
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

#[test]
fn the_console_files_are_served_with_a_strict_policy_and_a_validator() {
    let server = TestServer::start();
    let (status, head, body) = get(server.http, "/", "");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        header(&head, "content-length"),
        Some(&*body.len().to_string())
    );
    assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
    let csp = header(&head, "content-security-policy").expect("a CSP");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(body.contains("<script src=\"/console.js\" defer></script>"));
    let etag = header(&head, "etag").expect("an ETag").to_string();

    // Revalidation: the same tag gets 304 and no body; another tag gets the page.
    let (status, head, body) = get(server.http, "/", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(status, "HTTP/1.1 304 Not Modified");
    assert_eq!(header(&head, "etag"), Some(&*etag));
    assert_eq!(header(&head, "content-length"), None);
    assert_eq!(body, "");
    let (status, _, _) = get(server.http, "/", "If-None-Match: \"0\"\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    // A query string does not change what `/` is.
    assert_eq!(get(server.http, "/?x=1", "").0, "HTTP/1.1 200 OK");

    let (status, head, body) = get(server.http, "/console.js", "");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(body.contains("/subscribe/websocket"));
    assert_ne!(header(&head, "etag"), Some(&*etag));
    let (status, head, _) = get(server.http, "/console.css", "");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/css; charset=utf-8")
    );

    for other in ["/index.html", "/console", "/favicon.ico", "/console.js/x"] {
        assert_eq!(
            get(server.http, other, "").0,
            "HTTP/1.1 404 Not Found",
            "{other}"
        );
    }
    // Still GET only.
    let mut s = TcpStream::connect(server.http).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: mist\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let raw = read_response(&mut s);
    assert!(raw.starts_with("HTTP/1.1 405 "), "{raw}");
}

/// A token with characters that need care in a URL (`+` stays `+` in a fragment; the page
/// must send it as `%2B`).
const TOKEN: &str = "ops+console/7f3a9c";
const TOKEN_TAGS: &str = "alerts,logs,web01";

/// The server's list as the page shows it: each subscription's tags, space-separated.
const SUBS: &str = "[...document.querySelectorAll('#subs[data-source=server] li')]\
                    .map((li) => li.dataset.tags).join(' ')";
/// The text of the message rows in the document (the rows in view).
const ROWS: &str = "document.getElementById('rows').textContent";
const STATE: &str = "document.getElementById('state').dataset.state";
const NOTICES: &str = "document.getElementById('notices').textContent";
const RECEIVED: &str = "Number(document.getElementById('received').dataset.count)";
/// How many kept messages pass the filter.
const SHOWN: &str = "Number(document.getElementById('shown').dataset.count)";
const TOP_DATA: &str = "document.querySelector('#rows .msg .data')?.textContent";

fn shows(text: &str) -> String {
    format!("{ROWS}.includes({})", json!(text))
}

fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target")
}

/// Messages an operator might watch; they fill the screenshots.
const SAMPLE: [&str; 12] = [
    "publish alerts,disk,web01 disk /var 91% full (14.2 GiB free of 160 GiB)",
    "publish logs,nginx,web01 GET /api/orders?page=2 200 12ms 10.0.3.17",
    "publish logs,nginx,web01 POST /api/login 401 3ms 10.0.3.22",
    "publish alerts,cpu,web01 load average 7.82 over 5 min (4 cores)",
    r#"publish app,logs,web01 {"level":"warn","msg":"retrying payment provider","attempt":2,"after_ms":250}"#,
    "publish logs,nginx,web01 GET /healthz 200 0ms 127.0.0.1",
    "publish alerts,db02,replication,web01 replica lag 4.1 s (threshold 2 s)",
    "publish app,logs,web01 order 41872 paid: 3 items, EUR 118.40",
    "publish alerts,cert,web01 TLS certificate for shop.example expires in 6 days",
    "publish logs,nginx,web01 GET /static/app.3f9c.js 304 1ms 10.0.3.17",
    "publish app,deploy,logs,web01 deploy 2026.12.05-3 finished in 48 s",
    "publish alerts,http,web01 5xx rate 2.3% over 1 min (threshold 1%)",
];

/// A payload that would set `window.pwned` if the page ever treated data as HTML.
const XSS: &str = "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\"> \
                   <b>login</b> from 203.0.113.9";

fn register(client: &mut LineClient) {
    client.send(&format!("register {TOKEN_TAGS} {TOKEN}"));
    client.ping();
}

#[test]
fn the_console_in_a_real_browser() {
    // Queues with room for the whole burst below, so that it loses nothing.
    let server = TestServer::with(|c| c.client_queue = 1 << 20);
    let http = server.http;
    let mut admin = server.client();
    register(&mut admin);
    let mut publisher = server.client();

    let mut chromium = Chromium::launch();
    let url = format!("http://{http}/#token={TOKEN}&tags=alerts&tags=web01,logs");
    let mut page = chromium.open(&url, 1280, 860);
    let page = &mut page;

    // The fragment connected and subscribed at once; the server's list says so. The token left
    // the address bar for the tab's session storage.
    page.wait(
        "connected and subscribed",
        &format!("{SUBS} === 'alerts logs,web01'"),
    );
    assert_eq!(page.eval(STATE), json!("connected"));
    assert_eq!(page.eval("location.href"), json!(format!("http://{http}/")));
    assert_eq!(
        page.eval("sessionStorage.getItem('mist.console.token')"),
        json!(TOKEN)
    );

    // Data published over TCP appears, newest on top, tags as chips.
    publisher.send(SAMPLE[0]);
    publisher.send(SAMPLE[1]);
    publisher.ping();
    page.wait("the first messages", &format!("{SHOWN} === 2"));
    assert_eq!(
        page.eval(TOP_DATA),
        json!("GET /api/orders?page=2 200 12ms 10.0.3.17")
    );
    assert_eq!(
        page.eval("[...document.querySelector('#rows .msg .tags').children].map((c) => c.textContent).join(' ')"),
        json!("logs nginx web01")
    );
    assert!(page.eval(&shows("disk /var 91% full")).as_bool().unwrap());

    // A payload with markup stays inert text, in the table and shown in full (selected with
    // the keyboard: `m` focuses the messages, the arrow keys select).
    publisher.send(&format!("publish alerts,security,web01 {XSS}"));
    publisher.ping();
    page.wait("the markup payload", &shows(XSS));
    page.key("m", "KeyM", 77, Some("m"));
    assert_eq!(page.eval("document.activeElement.id"), json!("scroll"));
    page.key("ArrowDown", "ArrowDown", 40, None);
    page.wait(
        "the payload shown in full",
        &format!(
            "document.getElementById('detail-data').textContent === {}",
            json!(XSS)
        ),
    );
    assert_eq!(page.eval("typeof window.pwned"), json!("undefined"));
    assert_eq!(
        page.eval("document.querySelectorAll('script, img, b').length"),
        json!(1),
        "no element from the payload; the one script is the console's own"
    );
    page.key("Escape", "Escape", 27, None);
    assert_eq!(
        page.eval("document.getElementById('detail').hidden"),
        json!(true)
    );

    // Unsubscribing (the button in the server's list) stops the stream: a message for the
    // removed subscription, then one for the remaining one from the same publisher; once the
    // second is shown, the first would have been too.
    page.eval("document.querySelector('#subs li[data-tags=\"alerts\"] button').click()");
    page.wait(
        "alerts removed from the server's list",
        &format!("{SUBS} === 'logs,web01'"),
    );
    publisher.send("publish alerts,web01 after-unsubscribe-marker");
    publisher.send("publish logs,web01 barrier-after-unsubscribe");
    publisher.ping();
    page.wait("the barrier", &shows("barrier-after-unsubscribe"));
    assert_eq!(page.eval(&shows("after-unsubscribe-marker")), json!(false));
    assert_eq!(page.eval(SHOWN), json!(4));

    // Subscribing again through the form, by keyboard: `s` focuses the tags field.
    page.eval("document.activeElement.blur()");
    page.key("s", "KeyS", 83, Some("s"));
    assert_eq!(page.eval("document.activeElement.id"), json!("tags"));
    page.type_text("alerts");
    page.key("Enter", "Enter", 13, Some("\r"));
    page.wait(
        "alerts back in the server's list",
        &format!("{SUBS} === 'alerts logs,web01'"),
    );
    publisher.send("publish alerts,web01 resubscribed-through-the-form");
    publisher.ping();
    page.wait(
        "a message of the new subscription",
        &shows("resubscribed-through-the-form"),
    );

    // Pause (`p`): messages are counted but the table holds still until resumed.
    page.eval("document.activeElement.blur()");
    page.key("p", "KeyP", 80, Some("p"));
    assert_eq!(
        page.eval("document.getElementById('pause').getAttribute('aria-pressed')"),
        json!("true")
    );
    let before = page.eval(RECEIVED).as_u64().unwrap();
    publisher.send("publish logs,web01 sent-while-paused");
    publisher.ping();
    page.wait(
        "the paused message counted",
        &format!("{RECEIVED} === {}", before + 1),
    );
    assert_eq!(page.eval(&shows("sent-while-paused")), json!(false));
    page.key("p", "KeyP", 80, Some("p"));
    page.wait(
        "the paused message shown after resuming",
        &shows("sent-while-paused"),
    );

    // The filter (`/`), by text or tag; Escape clears it.
    page.key("/", "Slash", 191, Some("/"));
    assert_eq!(page.eval("document.activeElement.id"), json!("filter"));
    page.type_text("nginx");
    page.wait(
        "only the nginx message",
        &format!("{SHOWN} === 1 && {ROWS}.includes('nginx') && !{ROWS}.includes('disk')"),
    );
    page.key("Escape", "Escape", 27, None);
    page.wait("every message again", &format!("{SHOWN} === 6"));

    // Pictures, of a table of ordinary messages with one shown in full: light and dark on a
    // desktop, and a phone (which must not scroll sideways).
    page.eval("document.getElementById('clear').click()");
    for line in SAMPLE {
        publisher.send(line);
    }
    publisher.ping();
    page.wait("the samples", &format!("{SHOWN} === {}", SAMPLE.len()));
    page.eval(
        "[...document.querySelectorAll('#rows .msg')]\
         .find((r) => r.textContent.includes('retrying payment provider')).click()",
    );
    page.wait(
        "the JSON message in full",
        "!document.getElementById('detail').hidden",
    );
    let shots = target_dir();
    page.color_scheme("light");
    page.screenshot(&shots.join("console.png"));
    page.color_scheme("dark");
    page.screenshot(&shots.join("console-dark.png"));
    page.viewport(390, 844, true);
    page.wait(
        "the phone layout fits the width",
        "document.documentElement.scrollWidth <= window.innerWidth",
    );
    page.eval("document.getElementById('stream-title').scrollIntoView()");
    page.screenshot(&shots.join("console-phone.png"));
    page.viewport(1280, 860, false);
    page.color_scheme("light");

    // A burst far larger than the table: the page keeps the last 1,000 messages, newest on top,
    // with only the rows in view in the document; scrolling down reaches the oldest kept.
    let burst: String = (0..2_000)
        .map(|i| format!("publish logs,web01 burst {i}\n"))
        .collect();
    // (DevTools would report each of its frames from the socket worker: not now.)
    page.worker_call("Network.disable", json!({}));
    let received = page.eval(RECEIVED).as_u64().unwrap();
    publisher.send_raw(burst.as_bytes());
    publisher.ping();
    page.wait(
        "the burst received",
        &format!("{RECEIVED} === {}", received + 2_000),
    );
    page.wait(
        "the end of the burst on top",
        &format!("{TOP_DATA} === 'burst 1999' && {SHOWN} === 1000"),
    );
    let in_document = page.eval("document.querySelectorAll('#rows .msg').length");
    assert!(
        in_document.as_u64().unwrap() < 100,
        "{in_document} rows in the document"
    );
    page.eval("document.getElementById('scroll').scrollTop = 1e9");
    page.wait(
        "the oldest kept message at the bottom",
        "document.querySelector('#rows .msg:last-child .data')?.textContent === 'burst 1000'",
    );
    page.eval("document.getElementById('scroll').scrollTop = 0");

    // A large message: one line in the table; in full, the first 262,144 characters.
    publisher.send(&format!("publish logs,web01 large {}", "y".repeat(300_000)));
    publisher.ping();
    page.wait(
        "the large message",
        &format!("{TOP_DATA}?.startsWith('large yyy')"),
    );
    page.eval("document.querySelector('#rows .msg').click()");
    page.wait(
        "the large message in full, as far as kept",
        "document.getElementById('detail-data').firstChild?.textContent.length === 262144 && \
         document.getElementById('detail-data').textContent.includes('more characters, not kept')",
    );
    page.eval("document.getElementById('detail-close').click()");

    page.worker_call("Network.enable", json!({}));

    // The server restarts on the same port: the page notices, reconnects with backoff and
    // subscribes again (the new server has a fresh token store, so the token is registered
    // again).
    server.stop();
    page.wait(
        "the page noticed the server left",
        &format!("{STATE} === 'waiting' && {NOTICES}.includes('does not answer; retrying')"),
    );
    // (This one with small queues, for the slow-consumer notice below.) Until the token is
    // registered again, the page is refused, and says so.
    let server = TestServer::with(|c| {
        c.http_listen_address = http.to_string();
        c.client_queue_bytes = 64 << 10;
    });
    page.wait(
        "the page was refused by the new server",
        &format!("{NOTICES}.includes('the server refused the WebSocket')"),
    );
    let mut admin = server.client();
    register(&mut admin);
    page.wait(
        "reconnected and subscribed again",
        &format!("{STATE} === 'connected' && {SUBS} === 'alerts logs,web01'"),
    );
    assert!(
        page.eval(NOTICES)
            .as_str()
            .unwrap()
            .contains("reconnected; subscribing again")
    );
    let mut publisher = server.client();
    publisher.send("publish logs,web01 after-restart");
    publisher.ping();
    page.wait("a message after the restart", &shows("after-restart"));

    // Everything the page asked for went to its own mist, and the token only ever in the
    // WebSocket's query (never in a page URL; the fragment is not sent).
    page.call("Network.disable", json!({}));
    page.worker_call("Network.disable", json!({}));
    let requests: Vec<String> = page
        .events("Network.requestWillBeSent")
        .iter()
        .map(|e| e["request"]["url"].as_str().unwrap().to_string())
        .collect();
    let sockets: Vec<String> = page
        .events("Network.webSocketCreated")
        .iter()
        .map(|e| e["url"].as_str().unwrap().to_string())
        .collect();
    for file in ["/", "/console.js", "/console.css", "/socket-worker.js"] {
        assert!(
            requests.contains(&format!("http://{http}{file}")),
            "{file} in {requests:?}"
        );
    }
    for url in &requests {
        assert!(
            url.starts_with(&format!("http://{http}/")) || url.starts_with("data:"),
            "a request to {url}"
        );
        assert!(!url.contains("7f3a9c"), "the token in {url}");
    }
    assert!(
        sockets.len() >= 2,
        "a WebSocket before and after the restart: {sockets:?}"
    );
    for url in &sockets {
        assert_eq!(
            url,
            &format!("ws://{http}/subscribe/websocket?x-auth-token=ops%2Bconsole%2F7f3a9c")
        );
    }

    // A slow-consumer notice is shown: with the page's socket worker stopped in the debugger,
    // 8 MiB are published, twice what its 64 KiB queue and the socket buffers held here (about
    // 4 MiB got through); once it reads again, the server tells it how many it lost.
    page.worker_call("Debugger.enable", json!({}));
    page.worker_call("Debugger.pause", json!({}));
    let big = "x".repeat(16 * 1024);
    let flood: String = (0..512)
        .map(|i| format!("publish logs,web01 flood {i} {big}\n"))
        .collect();
    publisher.send_raw(flood.as_bytes());
    publisher.ping();
    page.worker_call("Debugger.resume", json!({}));
    page.wait(
        "the slow-consumer notice",
        &format!("{NOTICES}.includes('slow consumer: dropped ') && {STATE} === 'connected'"),
    );
    page.worker_call("Debugger.disable", json!({}));

    // Revocations are shown: tags taken from the token end a subscription, with a notice;
    // unregistering the token closes the connection with 1008, and the page stays closed.
    admin.send(&format!("unset alerts {TOKEN}"));
    admin.ping();
    page.wait(
        "the revoked subscription gone, with a notice",
        &format!(
            "{SUBS} === 'logs,web01' && \
             {NOTICES}.includes('access revoked: subscription alerts removed')"
        ),
    );
    admin.send(&format!("unregister {TOKEN}"));
    admin.ping();
    page.wait(
        "the page shows the token was revoked",
        &format!("{STATE} === 'revoked' && {NOTICES}.includes('close 1008')"),
    );

    // No script error, and nothing blocked by the page's own policy, all along.
    assert_eq!(
        page.events("Runtime.exceptionThrown"),
        Vec::<serde_json::Value>::new()
    );
    assert!(
        !page
            .eval(NOTICES)
            .as_str()
            .unwrap()
            .contains("security policy")
    );
}
