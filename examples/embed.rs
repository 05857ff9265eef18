//! Serving mist's WebSocket endpoint from another program's own accept loop.
//!
//! This program builds a [`mist::Context`] (the broker, the token rules and the counters, without
//! mist's own listeners), registers a token, accepts connections on its own `TcpListener` and
//! hands each to [`mist::serve`] on a thread. It also publishes a message every second from
//! the program itself with [`mist::Context::publish`]. Every connection gets mist's routes:
//! `/subscribe/websocket`, `/ping` and `/metrics`.
//!
//! # Running it
//!
//! ```text
//! cargo run --example embed                    # listens on 127.0.0.1:8090
//! cargo run --example embed -- 127.0.0.1:9000  # or on another address
//! curl http://127.0.0.1:8090/ping              # pong
//! ```
//!
//! # Connecting with a browser
//!
//! Browsers cannot set the `X-Auth-Token` header on a WebSocket, so the token goes in the
//! `x-auth-token` query parameter. Open the developer console on any `http://` page (or
//! `about:blank`; an `https://` page may refuse a plain `ws://` connection) and run:
//!
//! ```js
//! const ws = new WebSocket("ws://127.0.0.1:8090/subscribe/websocket?x-auth-token=demo-token");
//! ws.onmessage = (e) => console.log(e.data);
//! ws.onopen = () => ws.send(JSON.stringify({ command: "subscribe", tags: ["clock"] }));
//! ```
//!
//! The console shows `{"success":true,"command":"subscribe"}`, then one delivery a second,
//! such as `{"keys":["clock","demo"],"data":"tick 7"}`. The token holds the tags `clock` and
//! `demo`; subscribing to `["other"]` is refused with `token lacks the tags other`.

use mist::MemoryStore;
use mist::TagSet;
use mist::{Config, Context};
use std::net::TcpListener;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const TOKEN: &str = "demo-token";

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".to_string());

    // mist's defaults; the listen addresses in it are not used, this program listens itself.
    let config = Config::default();
    let max_tags = config.max_tags;
    let ctx = Context::new(config, Box::new(MemoryStore::new()));

    let token_tags = TagSet::from_strs(&["clock", "demo"], max_tags).expect("valid tags");
    ctx.tokens()
        .register(TOKEN, &token_tags)
        .expect("a new token in an empty store");

    // The program's own messages: one a second on the tags `clock` and `demo`.
    let publisher = Arc::clone(&ctx);
    thread::spawn(move || {
        let tags = TagSet::from_strs(&["demo", "clock"], max_tags).expect("valid tags");
        for n in 1u64.. {
            thread::sleep(Duration::from_secs(1));
            if let Err(e) = publisher.publish(&tags, format!("tick {n}").as_bytes()) {
                eprintln!("cannot publish: {e}");
            }
        }
    });

    let listener = TcpListener::bind(&addr)?;
    println!(
        "serving mist's WebSocket endpoint on ws://{}/subscribe/websocket (token {TOKEN})",
        listener.local_addr()?
    );
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept failed: {e}");
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        // `serve` runs the whole connection (a plain request, or a WebSocket session until it
        // closes) on the calling thread.
        let spawned = thread::Builder::new()
            .name("embed-conn".into())
            .spawn(move || mist::serve(&ctx, stream));
        if let Err(e) = spawned {
            eprintln!("cannot start a connection thread: {e}");
        }
    }
    Ok(())
}
