//! The `mist` binary: the server (`mist -d`) or a client command (`mist publish ...`).
//! Only arguments, the choice between server and client, and exit codes live here; the
//! process's set-up around the server (log, panics, malloc, signals) is in [`process`], and
//! `mist top`, a terminal program reading the monitoring listener over HTTP, in [`top`].

mod bench;
mod cli;
mod commands;
mod process;
mod top;

use cli::{Args, Bench, Command};
use mist::config::{AuthStore, Config, Overrides};
use mist::{ErrorChain, MemoryStore, PgStore, Server, TokenStore};
use process::StopSignals;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = parse_args();
    if args.version {
        println!("mist {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if args.daemon {
        if args.command.is_some() {
            eprintln!("mist: -d runs the server; give no command with it");
            return ExitCode::from(2);
        }
        return serve(&args);
    }
    let Some(cmd) = args.command else {
        eprintln!("mist: nothing to do. Run `mist -d` to start the server, or `mist --help`.");
        return ExitCode::from(2);
    };
    let admin_token = args
        .admin_token
        .or_else(|| std::env::var("MIST_ADMIN_TOKEN").ok());
    let cmd = match cmd {
        Command::Top(top) => return run_top(top, args.monitor_addr),
        Command::Bench(bench) => {
            let globals = bench::Globals {
                tcp_addr: args.tcp_addr,
                http_addr: args.http_addr,
                admin_token,
            };
            return run_bench(bench, globals);
        }
        cmd => cmd,
    };
    let addr = args.tcp_addr.as_deref().unwrap_or("127.0.0.1:1445");
    match commands::run(addr, admin_token.as_deref(), cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mist: {}", ErrorChain(&e));
            ExitCode::from(1)
        }
    }
}

/// `mist top`: exit code 2 for bad arguments, 1 when the server cannot be read.
fn run_top(top: cli::Top, global_addr: Option<String>) -> ExitCode {
    let Some(sort) = mist::ConnzSort::from_name(&top.sort) else {
        eprintln!(
            "mist top: --sort must be queued_bytes, dropped, subscriptions or age, not '{}'",
            top.sort
        );
        return ExitCode::from(2);
    };
    if top.limit == 0 || top.limit > mist::MAX_MONITOR_LIMIT {
        eprintln!(
            "mist top: --limit must be from 1 to {}",
            mist::MAX_MONITOR_LIMIT
        );
        return ExitCode::from(2);
    }
    let opts = top::Options {
        addr: top
            .monitor_addr
            .or(global_addr)
            .unwrap_or_else(|| mist::config::DEFAULT_MONITOR_ADDRESS.to_string()),
        sort,
        limit: top.limit,
        once: top.once,
    };
    match top::run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mist top: {e}");
            ExitCode::from(1)
        }
    }
}

/// `mist bench`: exit code 2 for bad arguments, 1 when the run could not be set up.
fn run_bench(bench: Bench, globals: bench::Globals) -> ExitCode {
    match bench::run(bench, globals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mist bench: {e}");
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
    }
}

fn serve(args: &Args) -> ExitCode {
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => return config_error(&e),
        },
        None => Config::default(),
    };
    let overrides = Overrides {
        tcp_addr: args.tcp_addr.clone(),
        http_addr: args.http_addr.clone(),
        monitor_addr: args.monitor_addr.clone(),
        log_level: args.log_level.clone(),
    };
    if let Err(e) = config.override_with(&overrides) {
        return config_error(&e);
    }
    process::set_up(config.log_level);
    if config.multicast_interface.is_some() {
        log::warn!(
            "multicast_interface is ignored: nodes share publishes through `cluster postgres`"
        );
    }
    if config.publisher_pacing.is_some() {
        log::warn!(
            "publisher_pacing is ignored: a publisher is never slowed down by subscribers; \
             each client's queue (client_queue_bytes) absorbs bursts"
        );
    }
    let store: Box<dyn TokenStore> = match config.auth_store {
        AuthStore::Memory => Box::new(MemoryStore::new()),
        AuthStore::Postgres => match PgStore::open(&config.pg) {
            Ok(store) => {
                log::info!("tokens are kept in PostgreSQL at {}", config.pg.address);
                Box::new(store)
            }
            Err(e) => {
                log::error!("{}", ErrorChain(&e));
                return ExitCode::from(1);
            }
        },
    };
    // Take over SIGINT and SIGTERM before listening: once the log says the server listens, a
    // signal must be a clean stop, not the signal's default action.
    let signals = match StopSignals::install() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    };
    let server = match Server::start(config, store) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{}", ErrorChain(&e));
            return ExitCode::from(1);
        }
    };
    signals.wait();
    log::info!("shutting down");
    server.shutdown();
    ExitCode::SUCCESS
}

fn config_error(e: &mist::config::ConfigError) -> ExitCode {
    eprintln!("mist: {e}");
    ExitCode::from(2)
}

/// The arguments, as `argh::from_env` parses them, but with exit code 2 for bad arguments, as
/// `--help` documents (argh alone exits with 1).
fn parse_args() -> Args {
    use argh::FromArgs;
    let strings: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = strings.iter().map(String::as_str).collect();
    let name = std::path::Path::new(strs.first().copied().unwrap_or("mist"))
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("mist");
    match Args::from_args(&[name], strs.get(1..).unwrap_or(&[])) {
        Ok(args) => args,
        Err(early) => match early.status {
            Ok(()) => {
                println!("{}", early.output);
                std::process::exit(0);
            }
            Err(()) => {
                eprintln!("{}\nRun {name} --help for more information.", early.output);
                std::process::exit(2);
            }
        },
    }
}
