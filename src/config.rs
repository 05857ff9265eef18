//! `mist.conf`: parsing, defaults, validation, and the command-line overrides.
//!
//! The format is one `key value` per line; `#` starts a comment line; blank lines are ignored.
//! Every error names the file, the line and the key. Parsing is pure ([`Config::parse`]); only
//! [`Config::load`] touches the file system.

use log::LevelFilter;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// Where tokens live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStore {
    Memory,
    Postgres,
}

/// How nodes share publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    None,
    Postgres,
}

/// PostgreSQL connection settings, for the token store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConfig {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub address: String,
}

/// The validated settings of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub tcp_listen_address: String,
    pub http_listen_address: String,
    pub log_level: LevelFilter,
    pub auth_store: AuthStore,
    pub pg: PgConfig,
    pub cluster: Cluster,
    /// This node's name in logs and metrics; `None`: the host name and the TCP port.
    pub node_name: Option<String>,
    pub multicast_interface: Option<String>,
    pub admin_token: Option<String>,
    pub client_queue: usize,
    pub client_queue_bytes: usize,
    /// Bytes of deliveries all clients' queues may hold together; `None`: a quarter of the
    /// memory the server may use, found at start (see [`Config::queue_memory_limit_for`]).
    pub queue_memory_limit: Option<usize>,
    pub max_line_bytes: usize,
    pub max_tags: usize,
    pub max_connections: usize,
    pub max_subscriptions: usize,
    pub ws_ping_interval: u64,
    /// Accepted for compatibility with older configs and not used (publishers are never
    /// slowed down by subscribers); a warning is logged when set.
    pub publisher_pacing: Option<u64>,
    /// Seconds a write to a client may make no progress before the client is disconnected.
    pub write_timeout: u64,
    /// Seconds an HTTP client has to send its whole request head.
    pub http_head_timeout: u64,
    /// The `Origin` values a WebSocket upgrade may carry, lowercased. Empty: any origin, and
    /// none, is allowed.
    pub ws_allowed_origins: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tcp_listen_address: "127.0.0.1:1445".into(),
            http_listen_address: "127.0.0.1:8080".into(),
            log_level: LevelFilter::Info,
            auth_store: AuthStore::Memory,
            pg: PgConfig {
                user: "postgres".into(),
                password: None,
                database: "postgres".into(),
                address: "127.0.0.1:5432".into(),
            },
            cluster: Cluster::None,
            node_name: None,
            multicast_interface: None,
            admin_token: None,
            client_queue: 1 << 20,
            client_queue_bytes: 64 << 20,
            queue_memory_limit: None,
            max_line_bytes: 1 << 20,
            max_tags: crate::tags::DEFAULT_MAX_TAGS,
            max_connections: 10_000,
            max_subscriptions: 10_000,
            ws_ping_interval: 30,
            publisher_pacing: None,
            write_timeout: 30,
            http_head_timeout: 10,
            ws_allowed_origins: Vec::new(),
        }
    }
}

/// A setting that could not be read. `Display` gives `FILE:LINE: KEY: REASON`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}:{line}: {key}: {reason}")]
    Setting {
        file: String,
        line: usize,
        key: String,
        reason: String,
    },
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    #[error("{flag}: {reason}")]
    Flag { flag: String, reason: String },
}

/// Settings given on the command line; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub tcp_addr: Option<String>,
    pub http_addr: Option<String>,
    pub log_level: Option<String>,
}

/// The smallest `max_line_bytes` that still fits a useful command.
const MIN_LINE_BYTES: usize = 64;

/// The smallest `queue_memory_limit`: room for a few ordinary batches.
const MIN_QUEUE_MEMORY: usize = 1 << 20;

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// The file cannot be read, or a line has an unknown key or a bad value.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            file: name.clone(),
            reason: e.to_string(),
        })?;
        Config::parse(&text, &name)
    }

    /// Parses config text; `file` is only used in error messages.
    ///
    /// # Errors
    /// An unknown key, a missing or bad value, or a key given twice.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        let mut seen: Vec<(String, usize)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.split_once(char::is_whitespace) {
                Some((k, v)) => (k, v.trim()),
                None => (line, ""),
            };
            let err = |reason: String| ConfigError::Setting {
                file: file.to_string(),
                line: line_no,
                key: key.to_string(),
                reason,
            };
            if let Some((_, first)) = seen.iter().find(|(k, _)| k == key) {
                return Err(err(format!("set twice (first on line {first})")));
            }
            if value.is_empty() {
                return Err(err("missing value".into()));
            }
            cfg.apply(key, value).map_err(err)?;
            seen.push((key.to_string(), line_no));
        }
        cfg.check().map_err(|reason| ConfigError::File {
            file: file.to_string(),
            reason,
        })?;
        Ok(cfg)
    }

    /// Checks the rules that span several keys.
    ///
    /// # Errors
    /// The reason, naming the keys.
    pub fn check(&self) -> Result<(), String> {
        if self.cluster == Cluster::Postgres && self.auth_store != AuthStore::Postgres {
            // Every node must see the same tokens: a token registered on one node must work
            // on the others, and removing it must revoke it everywhere.
            return Err("cluster postgres requires auth_store postgres \
                        (tokens kept in memory would differ from node to node)"
                .into());
        }
        Ok(())
    }

    /// `queue_memory_limit` in bytes: as configured, or a quarter of `memory`, the bytes of
    /// memory the server may use (the machine's, or its control group's when lower).
    pub fn queue_memory_limit_for(&self, memory: u64) -> usize {
        self.queue_memory_limit.unwrap_or_else(|| {
            usize::try_from(memory / 4)
                .unwrap_or(usize::MAX)
                .max(MIN_QUEUE_MEMORY)
        })
    }

    /// Applies the command-line overrides.
    ///
    /// # Errors
    /// A flag with a bad value.
    pub fn override_with(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        let pairs = [
            ("--tcp-addr", "tcp_listen_address", &o.tcp_addr),
            ("--http-addr", "http_listen_address", &o.http_addr),
            ("--log-level", "log_level", &o.log_level),
        ];
        for (flag, key, value) in pairs {
            if let Some(v) = value {
                self.apply(key, v).map_err(|reason| ConfigError::Flag {
                    flag: flag.into(),
                    reason,
                })?;
            }
        }
        Ok(())
    }

    /// Sets one key. The error is the reason, without location.
    fn apply(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "tcp_listen_address" => self.tcp_listen_address = address(value)?,
            "http_listen_address" => self.http_listen_address = address(value)?,
            "log_level" => self.log_level = log_level(value)?,
            "auth_store" => {
                self.auth_store = match value {
                    "memory" => AuthStore::Memory,
                    "postgres" => AuthStore::Postgres,
                    _ => return Err(format!("'{value}' is not one of memory, postgres")),
                }
            }
            "pg_user" => self.pg.user = single_word(value)?,
            "pg_password" => self.pg.password = Some(value.to_string()),
            "pg_database" => self.pg.database = single_word(value)?,
            "pg_address" => self.pg.address = host_port(value)?,
            "cluster" => {
                self.cluster = match value {
                    "none" => Cluster::None,
                    "postgres" => Cluster::Postgres,
                    _ => return Err(format!("'{value}' is not one of none, postgres")),
                }
            }
            "node_name" => self.node_name = Some(node_name(value)?),
            "multicast_interface" => self.multicast_interface = Some(single_word(value)?),
            "admin_token" => {
                crate::tags::validate_token(value.as_bytes()).map_err(|e| e.to_string())?;
                self.admin_token = Some(value.to_string());
            }
            "client_queue" => self.client_queue = number(value, 1, 1 << 24)?,
            "client_queue_bytes" => self.client_queue_bytes = number(value, 1024, 1 << 40)?,
            "queue_memory_limit" => {
                self.queue_memory_limit = Some(number(value, MIN_QUEUE_MEMORY, 1 << 50)?);
            }
            "max_line_bytes" => self.max_line_bytes = number(value, MIN_LINE_BYTES, 1 << 30)?,
            "max_tags" => self.max_tags = number(value, 1, 4096)?,
            "max_connections" => self.max_connections = number(value, 1, 1_000_000)?,
            "max_subscriptions" => self.max_subscriptions = number(value, 1, 100_000_000)?,
            "ws_ping_interval" => self.ws_ping_interval = number(value, 1, 3600)? as u64,
            "publisher_pacing" => self.publisher_pacing = Some(number(value, 0, 1000)? as u64),
            "write_timeout" => self.write_timeout = number(value, 1, 3600)? as u64,
            "http_head_timeout" => self.http_head_timeout = number(value, 1, 3600)? as u64,
            "ws_allowed_origins" => self.ws_allowed_origins = origins(value)?,
            _ => return Err("unknown key".into()),
        }
        Ok(())
    }
}

fn number(value: &str, min: usize, max: usize) -> Result<usize, String> {
    let n: usize = value
        .parse()
        .map_err(|_| format!("'{value}' is not a whole number"))?;
    if n < min || n > max {
        return Err(format!("{n} is out of range ({min}..={max})"));
    }
    Ok(n)
}

/// The longest `node_name`: it must fit, with a prefix, in PostgreSQL's 63-byte
/// `application_name`.
pub const MAX_NODE_NAME: usize = 40;

/// A node name: printable ASCII without spaces, quotes or backslashes (it goes into log lines,
/// metric labels and PostgreSQL's `application_name` as it is).
fn node_name(value: &str) -> Result<String, String> {
    let ok = value
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'\''));
    if !ok || value.len() > MAX_NODE_NAME {
        return Err(format!(
            "'{value}' is not a node name (1 to {MAX_NODE_NAME} printable ASCII characters, \
             no spaces, quotes or backslashes)"
        ));
    }
    Ok(value.to_string())
}

/// The default node name, `HOST:PORT`: the host name (reduced to the characters a node name
/// may hold) and the TCP listener's port.
pub fn default_node_name(host: &str, tcp_port: u16) -> String {
    let mut host: String = host
        .chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '\''))
        .collect();
    if host.is_empty() {
        host.push_str("localhost");
    }
    let port = format!(":{tcp_port}");
    host.truncate(MAX_NODE_NAME - port.len());
    host + &port
}

fn single_word(value: &str) -> Result<String, String> {
    if value.contains(char::is_whitespace) {
        return Err(format!("'{value}' must be one word"));
    }
    Ok(value.to_string())
}

/// `host:port`, syntax only (the host is looked up when it is used).
fn host_port(value: &str) -> Result<String, String> {
    let v = single_word(value)?;
    let Some((host, port)) = v.rsplit_once(':') else {
        return Err(format!("'{value}' is not host:port"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("'{value}' is not host:port"));
    }
    Ok(v)
}

/// A listen address: an IP address and port (`127.0.0.1:1445`, `[::1]:8080`) or a host name and
/// port (`localhost:1445`). Checked without resolving anything, so parsing stays pure and never
/// waits for DNS: a name is looked up when the listener is bound, and one that does not resolve
/// stops start-up there, naming the address.
fn address(value: &str) -> Result<String, String> {
    let v = host_port(value)?;
    if v.parse::<SocketAddr>().is_ok() {
        return Ok(v);
    }
    let (host, _) = v.rsplit_once(':').expect("host_port found the colon");
    let name = host.strip_suffix('.').unwrap_or(host);
    let is_name = name.split('.').all(|label| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    if !is_name && host.parse::<IpAddr>().is_err() {
        return Err(format!(
            "'{value}': '{host}' is not an IP address or host name"
        ));
    }
    Ok(v)
}

/// A comma-separated list of origins as browsers send them in `Origin`: `scheme://host` or
/// `scheme://host:port` (no path, not even a trailing slash, which would never match), or
/// `null`. Spaces around the commas are allowed. Stored lowercased, without duplicates: browsers
/// send scheme and host in lowercase, and the check ignores ASCII case.
fn origins(value: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for item in value.split(',') {
        let o = item.trim();
        if o.is_empty() {
            return Err(format!("'{value}' has an empty origin"));
        }
        if o != "null" {
            let shape = "is not an origin (scheme://host or scheme://host:port, no path)";
            let Some((scheme, host)) = o.split_once("://") else {
                return Err(format!("'{o}' {shape}"));
            };
            let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            let host_ok = !host.is_empty()
                && !host.starts_with(':')
                && !host.contains(|c: char| {
                    c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '@')
                });
            if !scheme_ok || !host_ok {
                return Err(format!("'{o}' {shape}"));
            }
        }
        let o = o.to_ascii_lowercase();
        if !out.contains(&o) {
            out.push(o);
        }
    }
    Ok(out)
}

fn log_level(value: &str) -> Result<LevelFilter, String> {
    match value.to_ascii_uppercase().as_str() {
        "TRACE" => Ok(LevelFilter::Trace),
        "DEBUG" => Ok(LevelFilter::Debug),
        "INFO" => Ok(LevelFilter::Info),
        "WARN" => Ok(LevelFilter::Warn),
        "ERROR" => Ok(LevelFilter::Error),
        _ => Err(format!(
            "'{value}' is not one of TRACE, DEBUG, INFO, WARN, ERROR"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.conf")
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(
            parse("# only a comment\n\n   \n  # indented\n").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn every_key() {
        let text = "tcp_listen_address 127.0.0.1:1000\n\
                    http_listen_address [::1]:2000\n\
                    log_level debug\n\
                    auth_store postgres\n\
                    pg_user mist\n\
                    pg_password two words\n\
                    pg_database tokens\n\
                    pg_address db.example:5433\n\
                    cluster postgres\n\
                    node_name web01\n\
                    multicast_interface eth0\n\
                    admin_token s3cret\n\
                    client_queue 10\n\
                    client_queue_bytes 4096\n\
                    queue_memory_limit 134217728\n\
                    max_line_bytes 100\n\
                    max_tags 4\n\
                    max_connections 7\n\
                    max_subscriptions 9\n\
                    ws_ping_interval 5\n\
                    write_timeout 7\n\
                    http_head_timeout 3\n\
                    ws_allowed_origins https://App.example, http://localhost:8080,null\n";
        let c = parse(text).unwrap();
        assert_eq!(c.tcp_listen_address, "127.0.0.1:1000");
        assert_eq!(c.http_listen_address, "[::1]:2000");
        assert_eq!(c.log_level, LevelFilter::Debug);
        assert_eq!(c.auth_store, AuthStore::Postgres);
        assert_eq!(c.pg.user, "mist");
        assert_eq!(c.pg.password.as_deref(), Some("two words"));
        assert_eq!(c.pg.database, "tokens");
        assert_eq!(c.pg.address, "db.example:5433");
        assert_eq!(c.cluster, Cluster::Postgres);
        assert_eq!(c.node_name.as_deref(), Some("web01"));
        assert_eq!(c.multicast_interface.as_deref(), Some("eth0"));
        assert_eq!(c.admin_token.as_deref(), Some("s3cret"));
        assert_eq!(
            (
                c.client_queue,
                c.client_queue_bytes,
                c.max_line_bytes,
                c.max_tags,
                c.max_connections
            ),
            (10, 4096, 100, 4, 7)
        );
        assert_eq!((c.max_subscriptions, c.ws_ping_interval), (9, 5));
        assert_eq!(c.queue_memory_limit, Some(128 << 20));
        assert_eq!(c.queue_memory_limit_for(1 << 40), 128 << 20);
        assert_eq!((c.write_timeout, c.http_head_timeout), (7, 3));
        assert_eq!(
            c.ws_allowed_origins,
            ["https://app.example", "http://localhost:8080", "null"]
        );
        // Still accepted from older configs, and not used.
        let c = parse("publisher_pacing 25\n").unwrap();
        assert_eq!(c.publisher_pacing, Some(25));
    }

    #[test]
    fn queue_memory_limit_is_bytes_and_defaults_to_a_quarter_of_memory() {
        let d = Config::default();
        assert_eq!((d.client_queue, d.client_queue_bytes), (1 << 20, 64 << 20));
        assert_eq!(d.queue_memory_limit, None);
        assert_eq!(d.queue_memory_limit_for(24 << 30), 6 << 30);
        // Never below the smallest value a config may give.
        assert_eq!(d.queue_memory_limit_for(1 << 20), 1 << 20);
        for (bad, reason) in [
            (
                "1048575",
                "1048575 is out of range (1048576..=1125899906842624)",
            ),
            ("64MiB", "'64MiB' is not a whole number"),
            ("-1", "'-1' is not a whole number"),
        ] {
            let e = parse(&format!("queue_memory_limit {bad}\n")).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("test.conf:1: queue_memory_limit: {reason}")
            );
        }
    }

    #[test]
    fn timeouts_are_whole_seconds_in_range() {
        for key in ["write_timeout", "http_head_timeout"] {
            assert!(parse(&format!("{key} 1\n")).is_ok(), "{key}");
            assert!(parse(&format!("{key} 3600\n")).is_ok(), "{key}");
            for (bad, reason) in [
                ("0", "0 is out of range (1..=3600)"),
                ("3601", "3601 is out of range (1..=3600)"),
                ("1.5", "'1.5' is not a whole number"),
                ("10s", "'10s' is not a whole number"),
                ("-1", "'-1' is not a whole number"),
            ] {
                let e = parse(&format!("{key} {bad}\n")).unwrap_err();
                assert_eq!(e.to_string(), format!("test.conf:1: {key}: {reason}"));
            }
        }
        let d = Config::default();
        assert_eq!((d.write_timeout, d.http_head_timeout), (30, 10));
    }

    #[test]
    fn allowed_origins_are_checked_and_normalised() {
        assert!(Config::default().ws_allowed_origins.is_empty());
        let c = parse(
            "ws_allowed_origins https://a.example,HTTPS://A.example,https://b.example:8443\n",
        )
        .unwrap();
        assert_eq!(
            c.ws_allowed_origins,
            ["https://a.example", "https://b.example:8443"]
        );
        let c = parse("ws_allowed_origins http://[::1]:8080\n").unwrap();
        assert_eq!(c.ws_allowed_origins, ["http://[::1]:8080"]);
        let shape = "is not an origin (scheme://host or scheme://host:port, no path)";
        for (bad, reason) in [
            (
                "https://a.example/",
                format!("'https://a.example/' {shape}"),
            ),
            (
                "https://a.example/app",
                format!("'https://a.example/app' {shape}"),
            ),
            ("a.example", format!("'a.example' {shape}")),
            ("https://", format!("'https://' {shape}")),
            ("://a.example", format!("'://a.example' {shape}")),
            ("1http://a.example", format!("'1http://a.example' {shape}")),
            (
                "https://user@a.example",
                format!("'https://user@a.example' {shape}"),
            ),
            (
                "https://a.example?x",
                format!("'https://a.example?x' {shape}"),
            ),
            ("*", format!("'*' {shape}")),
            (
                "https://a.example,,https://b.example",
                "'https://a.example,,https://b.example' has an empty origin".to_string(),
            ),
            (
                "https://a.example,",
                "'https://a.example,' has an empty origin".to_string(),
            ),
        ] {
            let e = parse(&format!("ws_allowed_origins {bad}\n")).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("test.conf:1: ws_allowed_origins: {reason}")
            );
        }
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse("log_level INFO\n\nbogus 1\n").unwrap_err();
        assert_eq!(e.to_string(), "test.conf:3: bogus: unknown key");
        let e = parse("client_queue lots\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "test.conf:1: client_queue: 'lots' is not a whole number"
        );
        let e = parse("max_tags 0\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "test.conf:1: max_tags: 0 is out of range (1..=4096)"
        );
        let e = parse("log_level loud\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("test.conf:1: log_level: 'loud' is not one of")
        );
        let e = parse("auth_store redis\n").unwrap_err();
        assert!(e.to_string().starts_with("test.conf:1: auth_store:"));
        let e = parse("tcp_listen_address nowhere\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("test.conf:1: tcp_listen_address:")
        );
        let e = parse("admin_token\n").unwrap_err();
        assert_eq!(e.to_string(), "test.conf:1: admin_token: missing value");
        let e = parse("max_tags 3\nmax_tags 4\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "test.conf:2: max_tags: set twice (first on line 1)"
        );
        let e = parse("pg_address localhost\n").unwrap_err();
        assert!(e.to_string().starts_with("test.conf:1: pg_address:"));
    }

    #[test]
    fn listen_addresses_are_checked_without_resolving() {
        for ok in [
            "127.0.0.1:1",
            "[::1]:2",
            "::1:3",
            "localhost:4",
            "my-host.example.:5",
            // Not looked up here: a name that does not resolve fails when it is bound.
            "no-such-host.invalid:6",
        ] {
            let c = parse(&format!("tcp_listen_address {ok}\n")).unwrap();
            assert_eq!(c.tcp_listen_address, ok);
        }
        for (bad, reason) in [
            ("a/b:1", "'a/b:1': 'a/b' is not an IP address or host name"),
            (
                "a..b:1",
                "'a..b:1': 'a..b' is not an IP address or host name",
            ),
            (
                "[::1:1",
                "'[::1:1': '[::1' is not an IP address or host name",
            ),
            ("localhost:99999", "'localhost:99999' is not host:port"),
            (":1", "':1' is not host:port"),
        ] {
            let e = parse(&format!("http_listen_address {bad}\n")).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("test.conf:1: http_listen_address: {reason}")
            );
        }
    }

    #[test]
    fn overrides_win() {
        let mut c = parse("tcp_listen_address 127.0.0.1:1\n").unwrap();
        c.override_with(&Overrides {
            tcp_addr: Some("127.0.0.1:2".into()),
            http_addr: None,
            log_level: Some("WARN".into()),
        })
        .unwrap();
        assert_eq!(c.tcp_listen_address, "127.0.0.1:2");
        assert_eq!(c.log_level, LevelFilter::Warn);
        let e = c
            .override_with(&Overrides {
                log_level: Some("x".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.to_string().starts_with("--log-level: "));
    }

    #[test]
    fn cluster_postgres_needs_the_postgres_token_store() {
        let e = parse("cluster postgres\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "test.conf: cluster postgres requires auth_store postgres \
             (tokens kept in memory would differ from node to node)"
        );
        let e = parse("auth_store memory\ncluster postgres\n").unwrap_err();
        assert!(e.to_string().contains("auth_store postgres"), "{e}");
        let c = parse("cluster postgres\nauth_store postgres\n").unwrap();
        assert_eq!(
            (c.cluster, c.auth_store),
            (Cluster::Postgres, AuthStore::Postgres)
        );
        assert_eq!(c.check(), Ok(()));
    }

    #[test]
    fn node_names() {
        assert_eq!(Config::default().node_name, None);
        for ok in ["web01:1445", "a", "node-3.eu_west", "[::1]:1445"] {
            let c = parse(&format!("node_name {ok}\n")).unwrap();
            assert_eq!(c.node_name.as_deref(), Some(ok));
        }
        let long = "n".repeat(MAX_NODE_NAME + 1);
        for bad in ["two words", "quo\"te", "back\\slash", "é", long.as_str()] {
            let e = parse(&format!("node_name {bad}\n")).unwrap_err();
            assert!(
                e.to_string().starts_with("test.conf:1: node_name: '"),
                "{bad}: {e}"
            );
        }
        assert_eq!(default_node_name("web01", 1445), "web01:1445");
        assert_eq!(default_node_name("", 1), "localhost:1");
        assert_eq!(default_node_name("we b\"01", 2), "web01:2");
        let long = default_node_name(&"h".repeat(100), 65535);
        assert_eq!(long.len(), MAX_NODE_NAME);
        assert!(long.ends_with("h:65535"));
    }

    #[test]
    fn shipped_mist_conf_is_the_defaults() {
        let text = include_str!("../mist.conf");
        assert_eq!(parse(text).unwrap(), Config::default());
    }
}
