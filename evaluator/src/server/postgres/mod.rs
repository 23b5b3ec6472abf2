//! The PostgreSQL back end: state that several evaluator nodes share, chosen with
//! `--database-url` / `HEXRAY_DATABASE_URL`. The embedded back end (the data directory and
//! memory) stays the default, with nothing to install.
//!
//! - [`keys`]: registered keys ([`PgKeyStore`]); any node loads any key into its own
//!   expanded-key cache;
//! - [`jobs`]: the shared job queue ([`PgJobs`]); any node's workers claim images, a dead
//!   node's claims lapse and are taken again, and any node answers for any job.
//!
//! The driver is `postgres`, the blocking face of `tokio-postgres`: every caller already runs
//! on a blocking thread (`web::block`, the job workers), as storage on disk does. A
//! connection that broke (the database restarted) is dropped and the work retried on a fresh
//! one, so nodes reconnect by themselves.

pub mod jobs;
pub mod keys;

pub use self::jobs::PgJobs;
pub use self::keys::PgKeyStore;

use std::sync::{Arc, Mutex};

use postgres::{Client, NoTls};
use thiserror::Error;

use super::error::ApiError;

/// The schema, in order. Each runs once, in a transaction, recorded in `hexray_migrations`.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../migrations/0001_keys.sql")),
    (2, include_str!("../../../migrations/0002_jobs.sql")),
];

/// The advisory lock nodes take to migrate one at a time ("HEXR").
const MIGRATION_LOCK: i64 = 0x4845_5852;

/// Why the database could not be used: the server's own message where it sent one.
#[derive(Debug, Error)]
#[error("PostgreSQL: {}", .0.as_db_error().map_or_else(|| .0.to_string(), |e| e.to_string()))]
pub struct DatabaseError(#[from] postgres::Error);

impl From<DatabaseError> for ApiError {
    fn from(e: DatabaseError) -> Self {
        log::error!("{e}");
        ApiError::Internal(e.to_string())
    }
}

/// A small pool of connections to one database, reopened after a failure.
pub struct Database {
    url: String,
    idle: Mutex<Vec<Client>>,
}

impl Database {
    /// Connects to `url` and brings the schema up to date. Nodes starting together serialise
    /// their migrations on an advisory lock.
    pub fn open(url: &str) -> Result<Arc<Self>, DatabaseError> {
        // The blocking driver cannot run on a thread that drives async tasks, and a server may
        // be started from one (tests are): the first connection is made on a thread of its own.
        std::thread::scope(|scope| {
            scope
                .spawn(|| Self::migrate(url))
                .join()
                .expect("the migration thread does not panic")
        })
    }

    fn migrate(url: &str) -> Result<Arc<Self>, DatabaseError> {
        let database = Arc::new(Database {
            url: url.to_owned(),
            idle: Mutex::new(Vec::new()),
        });
        database.with(|client| {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS hexray_migrations (
                     version integer PRIMARY KEY,
                     applied timestamptz NOT NULL DEFAULT now())",
            )?;
            for (version, sql) in MIGRATIONS {
                let done = tx
                    .query_opt(
                        "SELECT 1 FROM hexray_migrations WHERE version = $1",
                        &[version],
                    )?
                    .is_some();
                if !done {
                    tx.batch_execute(sql)?;
                    tx.execute(
                        "INSERT INTO hexray_migrations (version) VALUES ($1)",
                        &[version],
                    )?;
                    log::info!("database migration {version} applied");
                }
            }
            tx.commit()
        })?;
        Ok(database)
    }

    /// Runs `work` on a pooled connection. A pooled connection that the database closed (it
    /// restarted, or an administrator ended it) is dropped and `work` retried once on a fresh
    /// one, so a restart costs the nodes nothing but a reconnection.
    pub fn with<T>(
        &self,
        mut work: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, DatabaseError> {
        let pooled = self.idle.lock().expect("pool lock").pop();
        if let Some(mut client) = pooled.filter(|c| !c.is_closed()) {
            match work(&mut client) {
                Ok(value) => {
                    self.idle.lock().expect("pool lock").push(client);
                    return Ok(value);
                }
                Err(e) if e.is_closed() || client.is_closed() || e.code().is_some_and(ended) => {
                    log::warn!("database connection lost ({e}); reconnecting");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut client = Client::connect(&self.url, NoTls)?;
        let value = work(&mut client)?;
        self.idle.lock().expect("pool lock").push(client);
        Ok(value)
    }
}

impl Drop for Database {
    /// Closing a connection of the blocking driver blocks on its runtime, which must not
    /// happen on a thread that drives async tasks (a server may be dropped on one): the pooled
    /// connections are closed on a thread of their own.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.idle.lock().expect("pool lock"));
        if !idle.is_empty() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

/// Whether a server error means the connection was ended from the server's side.
fn ended(code: &postgres::error::SqlState) -> bool {
    use postgres::error::SqlState;
    [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
    ]
    .contains(code)
}
