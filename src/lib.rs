//! mist: a tag-based publish/subscribe server.
//!
//! Messages carry a set of tags; a subscription is a set of tags; a message reaches every
//! client holding a subscription whose tags it all carries. Clients speak a line protocol over
//! TCP or JSON over WebSocket (with tokens mapped to tags). The server is synchronous: one
//! reader and one writer thread per connection, a shared index behind a read-write lock, and a
//! bounded outbound queue per client that drops newer messages when it is full.
//!
//! # Using it
//!
//! A program runs a whole server with [`Server::start`] and a [`Config`]; or builds a
//! [`Context`] and hands the connections it accepts itself to [`serve`]
//! (`examples/embed.rs`), publishing with [`Context::publish`]. Tokens live in a
//! [`TokenStore`]: [`MemoryStore`], [`PgStore`], or the program's own.
//!
//! A program that talks to a mist server over the line protocol uses [`Client`] (see
//! [`client`]).
//!
//! # Layout
//!
//! The modules are private; what a program uses is re-exported above.
//!
//! - `tags`: tag, tag set and token validation and normalisation (pure).
//! - `line`: the TCP line protocol: parsing commands and formatting replies (pure).
//! - `framing`: splitting a byte stream into bounded lines.
//! - `wsjson`: the WebSocket JSON commands and replies (pure).
//! - `wsframe`: encoding the WebSocket frames the server sends (pure).
//! - `wsread`: reading the client's WebSocket frames into messages, no buffer between them.
//! - [`config`]: `mist.conf` parsing, defaults and validation (pure); public.
//! - `message`: a published message, encoded once and shared.
//! - `broker`: the subscription index and matching; no I/O.
//! - `fanout`: a publishing connection's batch of messages and their delivery.
//! - `outbound`: a client's bounded queue, drop counting and writer thread.
//! - `pool`: the bytes all clients' queues hold together, against `queue_memory_limit`.
//! - `context`: what connections share: [`Context`], `max_connections` slots, the
//!   connection registry, and the guards that give a connection's resources back.
//! - `net`: socket options, thread stacks, the open-files limit, accept errors, writing before a
//!   deadline, the lingering close.
//! - `tcp`: line-protocol connections.
//! - `http`: the HTTP listener: `/subscribe/websocket`, `/ping`, `/metrics`, the console;
//!   and [`serve`] for embedding.
//! - `pending`: the HTTP request heads being read, bounded in total and per address (the
//!   monitoring listener bounds its connections with one of its own).
//! - `console`: the page at `/` that watches messages live in a browser (static files).
//! - `ws`: WebSocket admission and sessions.
//! - `auth`: the token store trait, its stores, and the token rules ([`Tokens`]).
//! - `brake`: the per-address budget of failed attempts, and summarised logging (pure core).
//! - `metrics`: counters and their Prometheus form.
//! - `monitor`: the monitoring listener: its accept thread, its budget of connections and
//!   threads, and (`monitor::endpoints`) what `/healthz`, `/varz`, `/connz`, `/subsz` and
//!   `/metrics` answer. [`ConnzSort`] and the listener's limits are public.
//! - `health`: whether the configured backends can be reached, for `/healthz`.
//! - `capacity`: the kernel limits on connections, warned about at start; the thread budget.
//! - `report`: an error and its causes on one line.
//! - `server`: the listeners, their accept loops, and shutdown.
//! - `cluster`: several nodes as one (`cluster postgres`): the bus between them.
//! - `relay`: the hook through which publishes and token changes reach the bus.
//! - [`client`]: [`Client`], the blocking client of the line protocol that programs (and
//!   `mist publish ...`) use.
//!
//! The `mist` binary (`src/main.rs`) has modules of its own, in `src/` beside these: `cli`
//! (its arguments and help), `commands` (the client commands, on [`Client`]), `top` (`mist
//! top`, the live terminal view of a server's monitoring endpoints), `process` (log, panics,
//! malloc, signals) and `bench` (`mist bench`, the load generator).
//!
//! Dependencies run one way: `server` → the listeners (`tcp`, `http`) → `ws` → `context`,
//! `net`; `server` → `monitor` → `http` (request heads, responses), `context`; `server` →
//! `cluster` → `context`; nothing imports a module that imports it back (the broker and the
//! token rules reach the bus through `relay`).

mod auth;
mod brake;
mod broker;
mod capacity;
pub mod client;
mod cluster;
pub mod config;
mod console;
mod context;
mod fanout;
mod health;
mod message;
mod metrics;
mod monitor;
mod net;
mod outbound;
mod pending;
mod pool;
mod relay;
mod report;
mod server;
mod tcp;
mod ws;
mod wsframe;
mod wsread;

// The fuzz targets (`fuzz/`, built with `--cfg fuzzing`) drive the parsers directly.
#[cfg(fuzzing)]
pub mod framing;
#[cfg(not(fuzzing))]
mod framing;
#[cfg(fuzzing)]
pub mod http;
#[cfg(not(fuzzing))]
mod http;
#[cfg(fuzzing)]
pub mod line;
#[cfg(not(fuzzing))]
mod line;
#[cfg(fuzzing)]
pub mod tags;
#[cfg(not(fuzzing))]
mod tags;
#[cfg(fuzzing)]
pub mod wsjson;
#[cfg(not(fuzzing))]
mod wsjson;

pub use auth::memory::MemoryStore;
pub use auth::postgres::{OpenError, PgError, PgStore};
pub use auth::{StoreError, TokenStore, Tokens};
pub use client::Client;
#[doc(hidden)]
pub use client::{doc_config, doc_server, doc_server_with};
pub use cluster::BusError;
pub use config::Config;
pub use context::{Context, PublishError};
pub use http::{MAX_HEAD, MAX_HEADERS, serve};
pub use metrics::Metrics;
pub use monitor::{
    ConnzSort, MAX_MONITOR_CONNECTIONS, MAX_MONITOR_CONNECTIONS_PER_ADDRESS, MAX_MONITOR_LIMIT,
    MONITOR_HEAD_TIMEOUT,
};
pub use net::raise_fd_limit;
pub use pending::{MAX_PENDING_HEADS, MAX_PENDING_HEADS_PER_ADDRESS, PendingHeads};
pub use report::ErrorChain;
pub use server::{Server, StartError};
pub use tags::{TagError, TagSet};
