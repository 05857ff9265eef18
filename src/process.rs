//! What the `mist -d` process sets up around the server: the log and what it must never hold,
//! the panic hook, glibc's malloc, and the wait for SIGINT or SIGTERM (which also hands freed
//! memory back to the system).

use signal_hook::consts::{SIGINT, SIGTERM};
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Sets up the process for the server: the log at `level`, the panic hook, one malloc arena.
/// Called before any of the server's threads start.
pub fn set_up(level: log::LevelFilter) {
    init_logging(level);
    log_panics();
    limit_malloc_arenas();
}

/// How often the idle main thread hands freed memory back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// SIGINT and SIGTERM, taken over from their default action.
pub struct StopSignals(UnixStream);

impl StopSignals {
    /// Takes over SIGINT and SIGTERM: from now on they write to a self-pipe, which the main
    /// thread can wait on with a timeout (signal-hook's iterator cannot).
    ///
    /// # Errors
    /// The pipe or the handlers cannot be set up.
    pub fn install() -> io::Result<StopSignals> {
        let (rx, tx) = UnixStream::pair()?;
        signal_hook::low_level::pipe::register(SIGINT, tx.try_clone()?)?;
        signal_hook::low_level::pipe::register(SIGTERM, tx)?;
        Ok(StopSignals(rx))
    }

    /// Blocks until SIGINT or SIGTERM, returning freed memory to the system every
    /// `TRIM_EVERY`.
    pub fn wait(mut self) {
        if let Err(e) = self.0.set_read_timeout(Some(TRIM_EVERY)) {
            log::warn!("cannot time the wait for signals, memory is not trimmed: {e}");
        }
        let mut byte = [0u8; 1];
        loop {
            match self.0.read(&mut byte) {
                Ok(_) => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    trim_malloc();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("cannot wait for signals: {e}");
                    return;
                }
            }
        }
    }
}

/// Returns the free pages inside malloc's heap to the system. glibc gives back only the top of
/// a heap on `free`; memory freed below a live allocation (a slow consumer's queue, the buffers
/// of connections that left) stays resident until something reuses it. Trimming costs one walk
/// of the free lists every `TRIM_EVERY`, with the arena locked meanwhile. At DEBUG it logs
/// malloc's own counters, which tell a leak (memory in use growing) from fragmentation (free
/// memory growing).
fn trim_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory and mallinfo2 only reads malloc's
    // counters; both are thread-safe.
    unsafe {
        libc::malloc_trim(0);
        if log::log_enabled!(log::Level::Debug) {
            let m = libc::mallinfo2();
            log::debug!(
                "malloc: {} KiB in use, {} KiB free in {} KiB of heaps, {} KiB mapped apart",
                m.uordblks / 1024,
                m.fordblks / 1024,
                m.arena / 1024,
                m.hblkhd / 1024
            );
        }
    }
}

/// Keeps glibc's malloc to one arena. By default glibc gives threads up to 8 arenas per CPU,
/// and each keeps its own high-water mark of resident memory: with a thread per connection,
/// connections coming and going made the server's RSS creep up for as long as it ran, with a
/// flat live heap (+26% in two minutes of `scripts/soak` with the default, +13% in ten minutes
/// with two arenas). With one, its extent stays flat. The publish path allocates once per batch,
/// not per message, and glibc's per-thread cache serves small allocations without the arena's
/// lock: fan-out and fan-in ran at the same rates with one arena as with two.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before the server's threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Panics in connection threads end only that connection; log them with the thread's name,
/// which carries the peer's address, on one line:
/// `thread 'mist-tcp 127.0.0.1:5555' panicked at src/tcp.rs:10: MESSAGE`.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info.payload_as_str().unwrap_or("(no message)");
        log::error!(
            "thread '{name}' panicked{at}: {}",
            message.replace(['\n', '\r'], " ")
        );
    }));
}

fn init_logging(level: log::LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .build();
    let logger = simplelog::WriteLogger::new(level, config, std::io::stderr());
    if log::set_boxed_logger(Box::new(Filtered(logger))).is_ok() {
        log::set_max_level(level);
    }
}

/// The log, minus what must never be in it: the PostgreSQL client logs every statement's
/// parameters at DEBUG (`executing statement ... with parameters: [...]`), and those are
/// tokens; the WebSocket library logs every frame it receives at TRACE (`received frame ...`,
/// `Received message ...`), and those carry commands and message data. Their INFO and above
/// (server notices, say) still pass.
struct Filtered(Box<simplelog::WriteLogger<std::io::Stderr>>);

/// Libraries whose DEBUG and TRACE lines can hold tokens or message data.
const QUIET_BELOW_INFO: [&str; 2] = ["tokio_postgres", "tungstenite"];

impl Filtered {
    fn keep(metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
            || !QUIET_BELOW_INFO
                .iter()
                .any(|lib| in_crate(metadata.target(), lib))
    }
}

/// True when a log target belongs to crate `lib` (`lib` itself or `lib::module`), not merely
/// to a crate whose name starts the same.
fn in_crate(target: &str, lib: &str) -> bool {
    target
        .strip_prefix(lib)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

impl log::Log for Filtered {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        Filtered::keep(metadata) && self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if Filtered::keep(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(target: &str, level: log::Level) -> bool {
        Filtered::keep(&log::Metadata::builder().target(target).level(level).build())
    }

    /// The lines that can carry tokens or message data are dropped; the same libraries'
    /// warnings, and mist's own lines at every level, are kept.
    #[test]
    fn library_lines_that_carry_client_data_are_dropped() {
        for target in [
            "tungstenite",
            "tungstenite::protocol",
            "tungstenite::protocol::frame",
            "tokio_postgres::query",
        ] {
            for level in [log::Level::Trace, log::Level::Debug] {
                assert!(!kept(target, level), "{target} at {level}");
            }
            for level in [log::Level::Info, log::Level::Warn, log::Level::Error] {
                assert!(kept(target, level), "{target} at {level}");
            }
        }
        for level in [log::Level::Trace, log::Level::Debug, log::Level::Info] {
            assert!(kept("mist::tcp", level));
            assert!(kept("tungstenite_other", level));
        }
    }
}
