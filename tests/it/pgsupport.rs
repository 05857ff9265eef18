//! PostgreSQL for tests: a throwaway database per test on the server named by `MIST_TEST_PG`
//! (`host:port`, user `postgres` unless `MIST_TEST_PG_USER` says otherwise), and throwaway
//! clusters that a test can really stop and start. `scripts/test` sets `MIST_TEST_PG`.

#![allow(dead_code)]

use mist::PgStore;
use mist::config::PgConfig;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const HOW: &str = "the PostgreSQL tests need a PostgreSQL server: run scripts/test, which uses \
                   127.0.0.1:5432 or starts a throwaway one (install the server with \
                   `apt-get install postgresql` if it has none), or set MIST_TEST_PG=host:port";

/// The server the tests use.
pub fn server_address() -> String {
    std::env::var("MIST_TEST_PG").unwrap_or_else(|_| panic!("MIST_TEST_PG is not set; {HOW}"))
}

fn user() -> String {
    std::env::var("MIST_TEST_PG_USER").unwrap_or_else(|_| "postgres".into())
}

fn admin_client(address: &str) -> postgres::Client {
    let (host, port) = address.rsplit_once(':').expect("MIST_TEST_PG is host:port");
    postgres::Config::new()
        .host(host)
        .port(port.parse().expect("MIST_TEST_PG port"))
        .user(&user())
        .dbname("postgres")
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {address}: {e}; {HOW}"))
}

/// A database of its own for one test, dropped afterwards.
pub struct PgDb {
    pub config: PgConfig,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl PgDb {
    /// Creates a fresh, empty database.
    pub fn create() -> PgDb {
        let address = server_address();
        let name = format!(
            "mist_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = admin_client(&address);
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        PgDb {
            config: PgConfig {
                user: user(),
                password: None,
                database: name,
                address,
            },
        }
    }

    /// A store on this database.
    pub fn store(&self) -> PgStore {
        PgStore::open(&self.config).expect("open the PostgreSQL store")
    }

    /// A plain connection to this database, to look at the tables.
    pub fn client(&self) -> postgres::Client {
        let (host, port) = self.config.address.rsplit_once(':').unwrap();
        postgres::Config::new()
            .host(host)
            .port(port.parse().unwrap())
            .user(&self.config.user)
            .dbname(&self.config.database)
            .connect(postgres::NoTls)
            .expect("connect to the test database")
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let mut admin = admin_client(&self.config.address);
        let _ = admin.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.config.database
        ));
    }
}

/// A PostgreSQL cluster of the test's own, in a temporary directory, that can be stopped and
/// started for real.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

fn bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("MIST_TEST_PG_BIN") {
        return dir.into();
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .unwrap_or_else(|e| panic!("cannot run pg_config ({e}); {HOW}"));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (initdb refuses root).
fn run_pg(bin: &Path, tool: &str, args: &[&str]) {
    let exe = bin.join(tool);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let out = cmd
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Creates and starts a new cluster on a free port.
    pub fn start() -> Cluster {
        let bin = bindir();
        let dir = std::env::temp_dir().join(format!(
            "mist-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown the cluster directory");
        }
        let data = dir.join("data");
        run_pg(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        let cluster = Cluster {
            dir,
            bin,
            port: free_port(),
        };
        cluster.up();
        cluster
    }

    /// Starts the (stopped) cluster and waits until it accepts connections.
    pub fn up(&self) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        run_pg(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the cluster (fast shutdown: open sessions are cut).
    pub fn down(&self) {
        let data = self.dir.join("data");
        run_pg(
            &self.bin,
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    /// Settings for the cluster's `postgres` database.
    pub fn config(&self) -> PgConfig {
        PgConfig {
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            address: format!("127.0.0.1:{}", self.port),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let exe = self.bin.join("pg_ctl");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
