//! How many connections the kernel lets this process hold, and the warnings given at start
//! when `max_connections` cannot be reached.
//!
//! Every connection has a thread of its own, and a thread costs more than memory: about four
//! memory mappings (its stack and the stack's guard page, and the signal stack with its guard
//! page that Rust gives every thread it starts), one process id, one entry against the
//! system's thread limit, and its socket one descriptor. On a default kernel
//! (`vm.max_map_count` 65530) the mappings run out first, at about 16,000 connections: past
//! that, starting a thread fails, and the connection is refused like one over
//! `max_connections` (see `tcp.rs`, `http.rs`).
//!
//! [`warnings`] is pure: it takes the numbers, so every rule is unit-tested; [`Kernel::read`]
//! reads them from `/proc` and `/sys` once, at start.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

/// Memory mappings one connection thread takes: stack, guard page, signal stack, its guard.
/// Measured with `/proc/PID/maps`: 1,000 idle TCP connections added 4,000 mappings, and so did
/// 1,000 WebSocket connections (their reader has a larger stack, but still one mapping).
pub const MAPS_PER_THREAD: u64 = 4;

/// Room kept for what is not a connection: listeners, the monitoring listener's threads,
/// writer threads of some clients that fall behind, PostgreSQL connections, logs.
const SPARE: u64 = 256;

/// Mappings kept free for what is not a thread: large allocations that malloc maps on their
/// own (read buffers for long lines, big batches), PostgreSQL connections, the log.
pub const MAP_HEADROOM: u64 = 1024;

/// Threads started through this module and still running, in this process.
static THREADS: AtomicU64 = AtomicU64::new(0);

/// The most threads this process starts for connections: what fits under `vm.max_map_count`,
/// read once. Past it a new connection is refused and a client that falls behind loses its
/// connection, both with a reason in the log, before the kernel is out of mappings. Running
/// out there is worse than a refusal: the thread's stack may still be mapped while its signal
/// stack is not, and Rust's thread start-up aborts the whole process when that happens.
fn thread_budget() -> u64 {
    static BUDGET: OnceLock<u64> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let max = read_number("/proc/sys/vm/max_map_count");
        let now = count_lines("/proc/self/maps").unwrap_or(0);
        max.map_or(u64::MAX, |max| {
            max.saturating_sub(now + MAP_HEADROOM) / MAPS_PER_THREAD
        })
    })
}

/// Reads the thread budget (once per process), so that it is not first read when the process
/// may be out of descriptors.
pub fn read_thread_budget() -> u64 {
    thread_budget()
}

/// Counts a running thread; dropped when the thread ends, also by unwinding.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        THREADS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts a thread of a connection (a reader or a writer), within the thread budget.
///
/// # Errors
/// The budget is spent, or the system refused the thread (out of process ids or threads).
pub fn spawn(
    name: String,
    stack: usize,
    f: impl FnOnce() + Send + 'static,
) -> io::Result<thread::JoinHandle<()>> {
    if THREADS.fetch_add(1, Ordering::Relaxed) >= thread_budget() {
        THREADS.fetch_sub(1, Ordering::Relaxed);
        return Err(io::Error::other(
            "no memory mappings left for another thread (raise vm.max_map_count)",
        ));
    }
    let spawned = thread::Builder::new()
        .name(name)
        .stack_size(stack)
        .spawn(move || {
            let _running = Running;
            f();
        });
    if spawned.is_err() {
        THREADS.fetch_sub(1, Ordering::Relaxed);
    }
    spawned
}

/// The limits in force, and how much of each is in use now. `None`: not known (not Linux, no
/// such file, or no such limit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kernel {
    /// `vm.max_map_count`: memory mappings per process.
    pub max_map_count: Option<u64>,
    /// Mappings this process has now.
    pub maps_now: Option<u64>,
    /// `kernel.pid_max`: process and thread ids, system-wide.
    pub pid_max: Option<u64>,
    /// `kernel.threads-max`: threads, system-wide.
    pub threads_max: Option<u64>,
    /// Threads running on the whole system now.
    pub tasks_now: Option<u64>,
    /// The open-files limit (soft, after mist raised it to the hard one).
    pub nofile: Option<u64>,
    /// Descriptors this process has open now.
    pub fds_now: Option<u64>,
    /// The cgroup's `pids.max` (systemd's `TasksMax=`), when there is one.
    pub cgroup_pids_max: Option<u64>,
    /// Tasks in that cgroup now.
    pub cgroup_pids_now: Option<u64>,
}

/// One limit that stops the server short of `max_connections`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// The setting to raise, as an operator would write it.
    pub setting: &'static str,
    /// Its value now.
    pub limit: u64,
    /// About how many connections fit under it.
    pub fit: u64,
    /// What to set it to for `max_connections`, with room to spare.
    pub suggest: u64,
    /// How to raise it.
    pub how: &'static str,
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {}: about {} connections fit; raise it to at least {} ({})",
            self.setting, self.limit, self.fit, self.suggest, self.how
        )
    }
}

/// The limits that keep `max_connections` from being reached, the first to bind first.
pub fn warnings(max_connections: u64, k: &Kernel) -> Vec<Shortfall> {
    let mut out = Vec::new();
    let want = max_connections;
    // Each row: the setting, its value, how much is in use, what one connection takes.
    let rows = [
        (
            "vm.max_map_count",
            k.max_map_count,
            k.maps_now,
            MAPS_PER_THREAD,
            "sysctl; the package installs /usr/lib/sysctl.d/90-mist.conf",
        ),
        (
            "kernel.pid_max",
            k.pid_max,
            k.tasks_now,
            1,
            "sysctl; every thread on the machine takes an id",
        ),
        (
            "kernel.threads-max",
            k.threads_max,
            k.tasks_now,
            1,
            "sysctl; counts every thread on the machine",
        ),
        (
            "the open-files limit",
            k.nofile,
            k.fds_now,
            1,
            "LimitNOFILE= in the unit, or ulimit -n",
        ),
        (
            "the cgroup's pids.max",
            k.cgroup_pids_max,
            k.cgroup_pids_now,
            1,
            "TasksMax= in the unit",
        ),
    ];
    for (setting, limit, used, per_conn, how) in rows {
        let Some(limit) = limit else { continue };
        let spare = if per_conn == MAPS_PER_THREAD {
            MAP_HEADROOM
        } else {
            SPARE
        };
        let used = used.unwrap_or(0) + spare;
        let fit = limit.saturating_sub(used) / per_conn;
        if fit < want {
            out.push(Shortfall {
                setting,
                limit,
                fit,
                suggest: round_up(used + want * per_conn),
                how,
            });
        }
    }
    out.sort_by_key(|s| s.fit);
    out
}

/// Rounds up to two significant digits, so a suggestion reads like a setting.
fn round_up(n: u64) -> u64 {
    let mut unit = 1;
    while n / unit >= 100 {
        unit *= 10;
    }
    n.div_ceil(unit) * unit
}

impl Kernel {
    /// Reads the limits and their use from `/proc` and `/sys`; what cannot be read is `None`.
    pub fn read() -> Kernel {
        let (cgroup_pids_max, cgroup_pids_now) = cgroup_pids();
        Kernel {
            max_map_count: read_number("/proc/sys/vm/max_map_count"),
            maps_now: count_lines("/proc/self/maps"),
            pid_max: read_number("/proc/sys/kernel/pid_max"),
            threads_max: read_number("/proc/sys/kernel/threads-max"),
            tasks_now: tasks_now(),
            nofile: nofile_limit(),
            fds_now: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
            cgroup_pids_max,
            cgroup_pids_now,
        }
    }
}

fn read_number(path: impl AsRef<Path>) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn count_lines(path: &str) -> Option<u64> {
    Some(std::fs::read_to_string(path).ok()?.lines().count() as u64)
}

/// Threads on the whole system: the fourth field of `/proc/loadavg` is `running/total`.
fn tasks_now() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    parse_loadavg_tasks(&text)
}

fn parse_loadavg_tasks(text: &str) -> Option<u64> {
    text.split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()
}

fn nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// The `pids` cgroup of this process: its limit (none when `max`) and its tasks now.
fn cgroup_pids() -> (Option<u64>, Option<u64>) {
    let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else {
        return (None, None);
    };
    let Some(dir) = pids_cgroup_dir(&text) else {
        return (None, None);
    };
    (
        read_number(format!("{dir}/pids.max")),
        read_number(format!("{dir}/pids.current")),
    )
}

/// Where the `pids` controller of this process's cgroup is: cgroup v1 has a `N:pids:/path`
/// line (mounted at `/sys/fs/cgroup/pids`), v2 one `0::/path` line.
fn pids_cgroup_dir(proc_self_cgroup: &str) -> Option<String> {
    let mut v2 = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "pids") {
            return Some(format!("/sys/fs/cgroup/pids{}", path.trim_end_matches('/')));
        }
        if controllers.is_empty() {
            v2 = Some(format!("/sys/fs/cgroup{}", path.trim_end_matches('/')));
        }
    }
    v2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's numbers when the issue was found: a default kernel, a raised descriptor
    /// limit, no cgroup limit.
    fn stock() -> Kernel {
        Kernel {
            max_map_count: Some(65_530),
            maps_now: Some(100),
            pid_max: Some(32_768),
            threads_max: Some(192_735),
            tasks_now: Some(300),
            nofile: Some(1_048_576),
            fds_now: Some(10),
            cgroup_pids_max: None,
            cgroup_pids_now: Some(5),
        }
    }

    #[test]
    fn the_default_fits_a_stock_kernel() {
        assert_eq!(warnings(10_000, &stock()), vec![]);
    }

    #[test]
    fn mappings_bind_first_on_a_stock_kernel() {
        let w = warnings(20_000, &stock());
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].setting, "vm.max_map_count");
        // (65530 - 100 - 1024) / 4
        assert_eq!(w[0].fit, 16_101);
        // 100 + 1024 + 4 * 20000, rounded up.
        assert_eq!(w[0].suggest, 82_000);
        assert_eq!(
            w[0].to_string(),
            "vm.max_map_count is 65530: about 16101 connections fit; raise it to at least \
             82000 (sysctl; the package installs /usr/lib/sysctl.d/90-mist.conf)"
        );
    }

    #[test]
    fn every_limit_is_named_tightest_first() {
        let k = Kernel {
            max_map_count: Some(65_530),
            maps_now: Some(100),
            pid_max: Some(32_768),
            threads_max: Some(30_000),
            tasks_now: Some(300),
            nofile: Some(20_000),
            fds_now: Some(10),
            cgroup_pids_max: Some(4_915),
            cgroup_pids_now: Some(5),
        };
        let w = warnings(50_000, &k);
        let names: Vec<&str> = w.iter().map(|s| s.setting).collect();
        assert_eq!(
            names,
            [
                "the cgroup's pids.max",
                "vm.max_map_count",
                "the open-files limit",
                "kernel.threads-max",
                "kernel.pid_max"
            ]
        );
        assert_eq!(w[0].fit, 4_915 - 5 - 256);
        assert!(w.iter().all(|s| s.suggest >= 50_000));
    }

    #[test]
    fn unknown_limits_are_skipped_and_a_full_limit_fits_nothing() {
        let k = Kernel {
            nofile: Some(100),
            fds_now: Some(90),
            ..Kernel::default()
        };
        let w = warnings(1, &k);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].setting, w[0].fit), ("the open-files limit", 0));
        assert_eq!(warnings(1, &Kernel::default()), vec![]);
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up(7), 7);
        assert_eq!(round_up(99), 99);
        assert_eq!(round_up(101), 110);
        assert_eq!(round_up(81_124), 82_000);
        assert_eq!(round_up(81_000), 81_000);
    }

    #[test]
    fn proc_formats() {
        assert_eq!(
            parse_loadavg_tasks("0.52 0.58 0.59 3/467 12345\n"),
            Some(467)
        );
        assert_eq!(parse_loadavg_tasks("garbage"), None);
        let v1 = "9:name=systemd:/\n8:pids:/system.slice/mist.service\n0::/\n";
        assert_eq!(
            pids_cgroup_dir(v1).as_deref(),
            Some("/sys/fs/cgroup/pids/system.slice/mist.service")
        );
        assert_eq!(
            pids_cgroup_dir("0::/system.slice/mist.service\n").as_deref(),
            Some("/sys/fs/cgroup/system.slice/mist.service")
        );
        assert_eq!(pids_cgroup_dir("0::/\n").as_deref(), Some("/sys/fs/cgroup"));
    }

    /// The real numbers of this machine can be read (the test runs on Linux).
    #[test]
    fn reads_this_machine() {
        let k = Kernel::read();
        assert!(k.max_map_count.is_some_and(|n| n > 0));
        assert!(k.maps_now.is_some_and(|n| n > 0));
        assert!(k.pid_max.is_some() && k.threads_max.is_some() && k.tasks_now.is_some());
        assert!(k.fds_now.is_some_and(|n| n >= 3));
    }
}
