//! The PostgreSQL token store (`auth_store postgres`): tokens survive restarts and can be
//! shared by several mist nodes.
//!
//! # Tables
//!
//! ```sql
//! CREATE TABLE mist_tokens (token TEXT PRIMARY KEY);
//! CREATE TABLE mist_token_tags (
//!     token TEXT NOT NULL REFERENCES mist_tokens (token) ON DELETE CASCADE,
//!     tag   TEXT NOT NULL,
//!     PRIMARY KEY (token, tag));
//! ```
//!
//! Every admin command is one transaction, so registering a token with N tags is all or
//! nothing. A lookup (`tags`, made on every WebSocket connect and subscribe) is one query on
//! the primary keys.
//!
//! # Connections
//!
//! A small pool of connections, not one shared connection: WebSocket connects check tokens on
//! many threads at once, and one connection would queue them all behind each other. The pool
//! opens connections lazily up to [`POOL_SIZE`]; a thread that finds them all busy waits for one
//! (at most [`CHECKOUT_TIMEOUT`]).
//!
//! When PostgreSQL goes away, a failed connection is dropped from the pool and the operation
//! reports [`StoreError::Unavailable`]; the next operation connects again, so the store heals
//! by itself when PostgreSQL is back. A connection that died while idle in the pool is found
//! out by its first statement; that statement is retried once on a fresh connection, which is
//! safe because nothing was done on the dead one.

use super::{StoreError, TokenStore};
use crate::config::PgConfig;
use crate::report::ErrorChain;
use crate::tags::TagSet;
use parking_lot::{Condvar, Mutex};
use postgres::{Client, NoTls, Transaction};
use std::time::{Duration, Instant};

/// Most connections the store opens.
pub const POOL_SIZE: usize = 8;
/// Longest wait for a free connection.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait to connect, and longest a statement may run.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Nodes of a cluster that start together create the tables at the same moment, and two
/// concurrent `CREATE TABLE IF NOT EXISTS` of one table can fail with a duplicate key: the
/// advisory lock (on a constant key, held until the end of the transaction) takes turns.
const SCHEMA: &str = "
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT pg_advisory_xact_lock(7164501836215660);
CREATE TABLE IF NOT EXISTS mist_tokens (
    token TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS mist_token_tags (
    token TEXT NOT NULL REFERENCES mist_tokens (token) ON DELETE CASCADE,
    tag   TEXT NOT NULL,
    PRIMARY KEY (token, tag)
);
COMMIT;
";

/// Why the store could not be opened at start-up; the source says why.
#[derive(Debug, thiserror::Error)]
#[error("cannot use PostgreSQL at {address} (database {database}, user {user})")]
pub struct OpenError {
    pub address: String,
    pub database: String,
    pub user: String,
    #[source]
    pub source: PgError,
}

/// Why PostgreSQL could not be used: the source of an [`OpenError`], or of
/// [`StoreError::Unavailable`].
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("pg_address is not host:port")]
    Address,
    /// Every connection of the pool stayed busy for `CHECKOUT_TIMEOUT` (5 s).
    #[error("all database connections are busy")]
    Busy,
    /// A new connection of the pool could not be opened.
    #[error("cannot connect to {address}")]
    Connect {
        address: String,
        #[source]
        error: postgres::Error,
    },
    /// The server refused a statement or the login; its message says why.
    #[error("{}", .0.message())]
    Refused(Box<postgres::error::DbError>),
    /// The connection failed otherwise: lost, timed out, or never made.
    #[error(transparent)]
    Client(postgres::Error),
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> PgError {
        match e.as_db_error() {
            Some(db) => PgError::Refused(Box::new(db.clone())),
            None => PgError::Client(e),
        }
    }
}

/// Tokens in PostgreSQL.
pub struct PgStore {
    config: postgres::Config,
    address: String,
    pool: Mutex<Pool>,
    /// Signalled when a connection is returned or a slot frees up.
    returned: Condvar,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Client>,
    /// Connections that exist: idle, checked out, or being opened.
    open: usize,
}

/// Whether a failed statement left its connection usable.
fn connection_lost(e: &postgres::Error) -> bool {
    e.is_closed() || e.as_db_error().is_none()
}

fn unavailable(e: postgres::Error) -> StoreError {
    StoreError::unavailable(PgError::from(e))
}

/// Connection settings for `cfg`: the address, user, database and password, and the
/// settings every mist connection shares (timeouts, keepalives, `statement_timeout`).
///
/// # Errors
/// `pg_address` is not `host:port`.
pub fn client_config(cfg: &PgConfig, application_name: &str) -> Result<postgres::Config, PgError> {
    let (host, port) = cfg
        .address
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(|c| c == '[' || c == ']'), p.parse().ok()?)))
        .ok_or(PgError::Address)?;
    let mut config = postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(&cfg.user)
        .dbname(&cfg.database)
        .application_name(application_name)
        .connect_timeout(STATEMENT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .options(&format!(
            "-c statement_timeout={}",
            STATEMENT_TIMEOUT.as_millis()
        ));
    if let Some(pw) = &cfg.password {
        config.password(pw);
    }
    Ok(config)
}

impl PgStore {
    /// Connects, creates the tables if they do not exist, and keeps that connection in the
    /// pool.
    ///
    /// # Errors
    /// PostgreSQL cannot be reached, refuses the login, or the tables cannot be created.
    pub fn open(cfg: &PgConfig) -> Result<PgStore, OpenError> {
        let open_error = |source: PgError| OpenError {
            address: cfg.address.clone(),
            database: cfg.database.clone(),
            user: cfg.user.clone(),
            source,
        };
        let config = client_config(cfg, "mist").map_err(open_error)?;
        let mut client = config.connect(NoTls).map_err(|e| open_error(e.into()))?;
        client
            .batch_execute(SCHEMA)
            .map_err(|e| open_error(e.into()))?;
        let store = PgStore {
            config,
            address: cfg.address.clone(),
            pool: Mutex::new(Pool {
                idle: vec![client],
                open: 1,
            }),
            returned: Condvar::new(),
        };
        Ok(store)
    }

    /// Takes an idle connection, opens a new one if the pool has room, or waits for one.
    fn checkout(&self) -> Result<Client, StoreError> {
        let deadline = Instant::now() + CHECKOUT_TIMEOUT;
        let mut pool = self.pool.lock();
        loop {
            while let Some(client) = pool.idle.pop() {
                if !client.is_closed() {
                    return Ok(client);
                }
                pool.open -= 1;
            }
            if pool.open < POOL_SIZE {
                pool.open += 1;
                drop(pool);
                return self.connect().inspect_err(|_| {
                    self.pool.lock().open -= 1;
                    self.returned.notify_one();
                });
            }
            if self.returned.wait_until(&mut pool, deadline).timed_out() {
                return Err(StoreError::unavailable(PgError::Busy));
            }
        }
    }

    fn connect(&self) -> Result<Client, StoreError> {
        self.config.connect(NoTls).map_err(|error| {
            log::warn!(
                "cannot connect to PostgreSQL at {}: {}",
                self.address,
                ErrorChain(&error)
            );
            StoreError::unavailable(PgError::Connect {
                address: self.address.clone(),
                error,
            })
        })
    }

    /// Gives a connection back, or drops it when it is broken.
    fn checkin(&self, client: Client, broken: bool) {
        let mut pool = self.pool.lock();
        if broken || client.is_closed() {
            pool.open -= 1;
        } else {
            pool.idle.push(client);
        }
        self.returned.notify_one();
    }

    /// Runs `body` in a transaction. When the connection turns out dead at `BEGIN`, nothing
    /// was done, so it is retried once on a fresh connection.
    fn write<T>(
        &self,
        body: impl Fn(&mut Transaction<'_>) -> Result<Result<T, StoreError>, postgres::Error>,
    ) -> Result<T, StoreError> {
        for attempt in 0..2 {
            let mut client = self.checkout()?;
            let outcome = in_transaction(&mut client, &body);
            let lost = matches!(&outcome, Err((e, _)) if connection_lost(e));
            self.checkin(client, lost);
            match outcome {
                Ok(result) => return result,
                Err((_, Stage::Begin)) if lost && attempt == 0 => continue,
                Err((e, _)) => {
                    if lost {
                        log::warn!("lost the connection to PostgreSQL at {}: {e}", self.address);
                    }
                    return Err(unavailable(e));
                }
            }
        }
        unreachable!("the second attempt always returns")
    }

    /// Runs a read-only query, retried once on a fresh connection if the first one was dead.
    fn read<T>(
        &self,
        query: impl Fn(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut last = None;
        for _ in 0..2 {
            let mut client = self.checkout()?;
            match query(&mut client) {
                Ok(v) => {
                    self.checkin(client, false);
                    return Ok(v);
                }
                Err(e) => {
                    let lost = connection_lost(&e);
                    self.checkin(client, lost);
                    if !lost {
                        return Err(unavailable(e));
                    }
                    last = Some(e);
                }
            }
        }
        let e = last.expect("set by the failed attempts");
        log::warn!("lost the connection to PostgreSQL at {}: {e}", self.address);
        Err(unavailable(e))
    }
}

/// Where a transaction failed.
enum Stage {
    Begin,
    Later,
}

/// Runs `body` between `BEGIN` and `COMMIT` (or `ROLLBACK` when it refuses the change).
fn in_transaction<T>(
    client: &mut Client,
    body: &impl Fn(&mut Transaction<'_>) -> Result<Result<T, StoreError>, postgres::Error>,
) -> Result<Result<T, StoreError>, (postgres::Error, Stage)> {
    let mut tx = client.transaction().map_err(|e| (e, Stage::Begin))?;
    let result = match body(&mut tx) {
        Ok(Ok(v)) => tx.commit().map(|()| Ok(v)),
        Ok(Err(refused)) => tx.rollback().map(|()| Err(refused)),
        Err(e) => Err(e),
    };
    result.map_err(|e| (e, Stage::Later))
}

/// The tags as an array parameter.
fn tag_array(tags: &TagSet) -> Vec<&str> {
    tags.iter().collect()
}

/// Locks the token's row; false when it does not exist.
fn lock_token(tx: &mut Transaction<'_>, token: &str) -> Result<bool, postgres::Error> {
    let rows = tx.query(
        "SELECT 1 FROM mist_tokens WHERE token = $1 FOR UPDATE",
        &[&token],
    )?;
    Ok(!rows.is_empty())
}

const INSERT_TAGS: &str = "INSERT INTO mist_token_tags (token, tag)
     SELECT $1, t FROM unnest($2::text[]) AS t ON CONFLICT DO NOTHING";

impl TokenStore for PgStore {
    fn register(&self, token: &str, tags: &TagSet) -> Result<(), StoreError> {
        self.write(|tx| {
            let added = tx.execute(
                "INSERT INTO mist_tokens (token) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&token],
            )?;
            if added == 0 {
                return Ok(Err(StoreError::TokenExists));
            }
            tx.execute(INSERT_TAGS, &[&token, &tag_array(tags)])?;
            Ok(Ok(()))
        })
    }

    fn unregister(&self, token: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            let gone = tx.execute("DELETE FROM mist_tokens WHERE token = $1", &[&token])?;
            Ok(if gone == 0 {
                Err(StoreError::UnknownToken)
            } else {
                Ok(())
            })
        })
    }

    fn set(&self, token: &str, tags: &TagSet) -> Result<(), StoreError> {
        self.write(|tx| {
            if !lock_token(tx, token)? {
                return Ok(Err(StoreError::UnknownToken));
            }
            tx.execute(INSERT_TAGS, &[&token, &tag_array(tags)])?;
            Ok(Ok(()))
        })
    }

    fn unset(&self, token: &str, tags: &TagSet) -> Result<(), StoreError> {
        self.write(|tx| {
            if !lock_token(tx, token)? {
                return Ok(Err(StoreError::UnknownToken));
            }
            tx.execute(
                "DELETE FROM mist_token_tags WHERE token = $1 AND tag = ANY($2::text[])",
                &[&token, &tag_array(tags)],
            )?;
            Ok(Ok(()))
        })
    }

    fn tags(&self, token: &str) -> Result<Vec<String>, StoreError> {
        // One query: the token's row, joined with its tags (NULL when it has none).
        let rows = self.read(|c| {
            c.query(
                "SELECT g.tag FROM mist_tokens t
                 LEFT JOIN mist_token_tags g ON g.token = t.token
                 WHERE t.token = $1 ORDER BY g.tag COLLATE \"C\"",
                &[&token],
            )
        })?;
        if rows.is_empty() {
            return Err(StoreError::UnknownToken);
        }
        Ok(rows
            .iter()
            .filter_map(|r| r.get::<_, Option<String>>(0))
            .collect())
    }
}
