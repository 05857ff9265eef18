//! mist: a tag-based publish/subscribe server.
//!
//! Messages carry a set of tags; a subscription is a set of tags; a message reaches every
//! client holding a subscription whose tags it all carries. Clients speak a line protocol over
//! TCP or JSON over WebSocket (with tokens mapped to tags). The server is synchronous: one
//! reader and one writer thread per connection, a shared index behind a read-write lock, and a
//! bounded outbound queue per client that drops newer messages when it is full.
//!
//! # Layout
//!
//! - [`tags`]: tag, tag set and token validation and normalisation (pure).
//! - [`line`]: the TCP line protocol: parsing commands and formatting replies (pure).
//! - [`framing`]: splitting a byte stream into bounded lines.
//! - [`wsjson`]: the WebSocket JSON commands and replies (pure).
//! - [`wsframe`]: encoding the WebSocket frames the server sends (pure).
//! - [`config`]: `mist.conf` parsing, defaults and validation (pure).
//! - [`message`]: a published message, encoded once and shared.
//! - [`broker`]: the subscription index and matching; no I/O.
//! - [`fanout`]: a publishing connection's batch of messages and their delivery.
//! - [`outbound`]: a client's bounded queue, drop counting and writer thread.
//! - [`pacing`]: when a publisher waits for a subscriber that is behind (pure).
//! - [`context`]: what connections share: [`Context`], `max_connections` slots, the
//!   connection registry, and the guards that give a connection's resources back.
//! - [`net`]: socket options, thread stacks, the open-files limit, the lingering close.
//! - [`tcp`]: line-protocol connections.
//! - [`http`]: the HTTP listener: `/subscribe/websocket`, `/ping`, `/metrics`, the console;
//!   and [`serve`] for embedding.
//! - [`pending`]: the HTTP request heads being read, bounded in total and per address.
//! - [`console`]: the page at `/` that watches messages live in a browser (static files).
//! - [`ws`]: WebSocket admission and sessions.
//! - [`auth`]: the token store trait, its in-memory store, and the token rules.
//! - [`brake`]: the per-address budget of failed attempts, and summarised logging (pure core).
//! - [`metrics`]: counters and their Prometheus form.
//! - [`server`]: the listeners, their accept loops, and shutdown.
//! - [`client`]: the command-line client (`mist publish ...`).
//! - [`bench`]: `mist bench`, the load generator that measures a running server.
//! - [`cli`]: command-line arguments.

pub mod auth;
pub mod bench;
pub mod brake;
pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod context;
pub mod fanout;
pub mod framing;
pub mod http;
pub mod line;
pub mod message;
pub mod metrics;
pub mod net;
pub mod outbound;
pub mod pacing;
pub mod pending;
pub mod server;
pub mod tags;
pub mod tcp;
pub mod ws;
pub mod wsframe;
pub mod wsjson;

pub use config::Config;
pub use context::Context;
pub use http::serve;
pub use server::Server;
