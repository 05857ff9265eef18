//! The integration tests: real servers on 127.0.0.1:0, real sockets, exact wire bytes.
//! Every read has a timeout; `ping`/`pong` is the only barrier.

mod cdp;
mod pgsupport;
mod support;

mod bench;
mod capacity;
mod cli;
mod client;
mod cluster;
mod config;
mod console;
mod hostile;
mod http_limits;
mod matching;
mod monitor;
mod pg;
mod pressure;
mod security;
mod shutdown;
mod smoke;
mod tcp;
mod tokens;
mod top;
mod ws;
mod ws_python;
