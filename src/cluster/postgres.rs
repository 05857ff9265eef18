//! The PostgreSQL engine of the bus (`cluster postgres`): LISTEN/NOTIFY on the database the
//! tokens live in.
//!
//! - Sending: a connection of its own (`application_name` `mist-bus-send NODE`) sends each unit
//!   as one statement, `SELECT pg_notify(...) FROM unnest($1)`, which is one transaction: its
//!   notifications reach every listener together and in order, or not at all. The session runs
//!   with `synchronous_commit off`: a notification is not durable anyway, and waiting for the
//!   WAL to be flushed would cap the bus at the disk's flush rate.
//! - Receiving: a connection of its own (`mist-bus-listen NODE`), never one of the token
//!   store's pool, that runs `LISTEN` and then only reads. When it has been quiet for a while
//!   it checks that the server is still there, so a connection lost without a word is noticed
//!   in seconds rather than when TCP keepalive gives up.
//!
//! A message larger than a payload is cut over several notifications of its unit (see
//! `codec`), rather than stored in a table and announced by id: both keep order, but the
//! notifications leave nothing behind (PostgreSQL frees its queue once every listener has read
//! it), cost one round trip, and were measured faster (ARCHITECTURE.md, "The bus").

use super::codec::Charset;
use super::{BusError, Engine, Incoming, Outgoing};
use crate::auth::postgres::{OpenError, PgError, STATEMENT_TIMEOUT, client_config};
use crate::config::PgConfig;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls, Statement};
use std::time::{Duration, Instant};

/// The channel, versioned with the payload format: nodes of an incompatible version do not
/// hear each other rather than misread each other.
pub const CHANNEL: &str = "mist_bus_1";
/// PostgreSQL refuses payloads of 8000 bytes or more.
pub const MAX_PAYLOAD: usize = 7999;
/// A listening connection quiet for this long is checked.
const CHECK_IDLE: Duration = Duration::from_secs(5);

/// LISTEN/NOTIFY on one PostgreSQL database.
pub struct PgEngine {
    config: postgres::Config,
    cfg: PgConfig,
}

fn lost(e: postgres::Error) -> BusError {
    BusError::Lost(Box::new(PgError::from(e)))
}

/// Whether a failed statement left its connection usable (the server refused it).
fn refused(e: &postgres::Error) -> bool {
    !e.is_closed() && e.as_db_error().is_some()
}

impl PgEngine {
    /// An engine on the `pg_*` settings; connects only when asked.
    ///
    /// # Errors
    /// `pg_address` is not `host:port`.
    pub fn new(cfg: &PgConfig) -> Result<PgEngine, BusError> {
        let config = client_config(cfg, "mist-bus").map_err(|e| BusError::Lost(Box::new(e)))?;
        Ok(PgEngine {
            config,
            cfg: cfg.clone(),
        })
    }

    fn connect(&self, application_name: &str, options: &str) -> Result<Client, BusError> {
        let mut config = self.config.clone();
        // PostgreSQL keeps at most 63 bytes of it; node names are at most 40.
        config.application_name(application_name);
        config.options(options);
        config.connect(NoTls).map_err(|e| {
            BusError::Lost(Box::new(OpenError {
                address: self.cfg.address.clone(),
                database: self.cfg.database.clone(),
                user: self.cfg.user.clone(),
                source: e.into(),
            }))
        })
    }
}

impl Engine for PgEngine {
    fn describe(&self) -> String {
        format!(
            "PostgreSQL at {} (database {})",
            self.cfg.address, self.cfg.database
        )
    }

    fn max_payload(&self) -> usize {
        MAX_PAYLOAD
    }

    fn connect_sender(&self, node: &str) -> Result<Box<dyn Outgoing>, BusError> {
        let options = format!(
            "-c statement_timeout={} -c synchronous_commit=off",
            STATEMENT_TIMEOUT.as_millis()
        );
        let mut client = self.connect(&format!("mist-bus-send {node}"), &options)?;
        let encoding: String = client
            .query_one("SHOW server_encoding", &[])
            .map_err(lost)?
            .get(0);
        // SQL_ASCII stores bytes as they come; any other encoding but UTF-8 might not hold
        // every character, so everything but ASCII is escaped there.
        let charset = match encoding.as_str() {
            "UTF8" | "SQL_ASCII" => Charset::Utf8,
            _ => Charset::Ascii,
        };
        // ORDER BY the position: PostgreSQL evaluates volatile functions in the select list
        // after sorting, so the notifications are queued in the array's order.
        let notify = client
            .prepare(&format!(
                "SELECT pg_notify('{CHANNEL}', p) FROM unnest($1::text[]) WITH ORDINALITY AS t(p, i) ORDER BY i"
            ))
            .map_err(lost)?;
        // A lone payload (a lone message, at low rates) needs no array.
        let notify_one = client
            .prepare(&format!("SELECT pg_notify('{CHANNEL}', $1)"))
            .map_err(lost)?;
        let usage = client
            .prepare("SELECT pg_notification_queue_usage()")
            .map_err(lost)?;
        Ok(Box::new(PgSender {
            client,
            charset,
            notify,
            notify_one,
            usage,
        }))
    }

    fn connect_listener(&self, node: &str) -> Result<Box<dyn Incoming>, BusError> {
        let mut client = self.connect(&format!("mist-bus-listen {node}"), "")?;
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(lost)?;
        Ok(Box::new(PgListener {
            client,
            heard: Instant::now(),
        }))
    }
}

struct PgSender {
    client: Client,
    charset: Charset,
    notify: Statement,
    notify_one: Statement,
    usage: Statement,
}

impl Outgoing for PgSender {
    fn charset(&self) -> Charset {
        self.charset
    }

    fn send(&mut self, payloads: &[String]) -> Result<(), BusError> {
        let sent = match payloads {
            [one] => self.client.execute(&self.notify_one, &[one]),
            _ => self.client.execute(&self.notify, &[&payloads]),
        };
        match sent {
            Ok(_) => Ok(()),
            Err(e) if refused(&e) => Err(BusError::Refused(Box::new(PgError::from(e)))),
            Err(e) => Err(lost(e)),
        }
    }

    fn queue_usage(&mut self) -> Result<Option<f64>, BusError> {
        let row = self.client.query_one(&self.usage, &[]).map_err(lost)?;
        Ok(Some(row.get(0)))
    }
}

struct PgListener {
    client: Client,
    /// When the server was last heard from.
    heard: Instant,
}

impl Incoming for PgListener {
    fn receive(
        &mut self,
        timeout: Duration,
        max: usize,
        out: &mut Vec<String>,
    ) -> Result<usize, BusError> {
        let before = out.len();
        {
            let mut notes = self.client.notifications();
            let first = notes.timeout_iter(timeout).next().map_err(lost)?;
            if let Some(n) = first {
                out.push(n.payload().to_string());
                let mut more = notes.iter();
                while out.len() - before < max {
                    match more.next().map_err(lost)? {
                        Some(n) => out.push(n.payload().to_string()),
                        None => break,
                    }
                }
            }
        }
        if self.client.is_closed() {
            return Err(BusError::Lost("the server closed the connection".into()));
        }
        if out.len() > before {
            self.heard = Instant::now();
        } else if self.heard.elapsed() >= CHECK_IDLE {
            self.client.is_valid(STATEMENT_TIMEOUT).map_err(lost)?;
            self.heard = Instant::now();
        }
        Ok(out.len() - before)
    }
}
