//! The PostgreSQL back end: state that several evaluator nodes share, chosen with
//! `--database-url` / `HEXRAY_DATABASE_URL`. The embedded back end (the data directory and
//! memory) stays the default, with nothing to install.
//!
//! - [`keys`]: registered keys ([`PgKeys`]); any node loads any key into its own
//!   expanded-key cache;
//! - [`jobs`]: the shared job queue ([`PgJobs`]) as the API sees it; any node answers for any
//!   job;
//! - `worker`: each node's workers, which claim images; a dead node's claims lapse and are
//!   taken again;
//! - [`connection`]: the URL, and verified TLS to any host but this one;
//! - [`pool`]: the bounded pool of connections every caller shares.
//!
//! The driver is `postgres`, the blocking face of `tokio-postgres`: every caller already runs
//! on a blocking thread (`web::block`, the job workers), as storage on disk does.

pub mod connection;
pub mod jobs;
pub mod keys;
pub mod pool;
mod worker;

pub use self::connection::Connection;
pub use self::jobs::PgJobs;
pub use self::keys::PgKeys;
pub use self::pool::PoolLimits;

use std::sync::Arc;

use postgres::Client;
use thiserror::Error;

use self::pool::Pool;
use super::store_error::StoreError;

/// The schema, in order. Each runs once, in a transaction, recorded in `hexray_migrations`.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../migrations/0001_keys.sql")),
    (2, include_str!("../../../migrations/0002_jobs.sql")),
    (3, include_str!("../../../migrations/0003_bulk_jobs.sql")),
];

/// The advisory lock nodes take to migrate one at a time ("HEXR").
const MIGRATION_LOCK: i64 = 0x4845_5852;

/// Why the database could not be used.
#[derive(Debug, Error)]
pub enum DatabaseError {
    /// The database refused or failed: the server's own message where it sent one.
    #[error("PostgreSQL: {}", .0.as_db_error().map_or_else(|| .0.to_string(), |e| e.to_string()))]
    Postgres(#[from] postgres::Error),
    /// Every connection of this node's pool stayed busy for the pool's wait.
    #[error("every database connection of this node is busy")]
    Busy,
    /// The URL or the TLS settings are wrong.
    #[error("database settings: {0}")]
    Settings(String),
    /// A newer release migrated the database: this one does not know its schema, and must not
    /// write to it (a rolled-back node beside upgraded ones, say).
    #[error(
        "the database's schema is at version {found}, newer than this hexray's {known}: a newer \
         release upgraded it. Run that release, or restore the backup taken before the upgrade"
    )]
    NewerSchema { found: i32, known: i32 },
}

impl From<DatabaseError> for StoreError {
    fn from(e: DatabaseError) -> Self {
        match e {
            DatabaseError::Busy => StoreError::Busy,
            e => StoreError::Internal(e.to_string()),
        }
    }
}

/// One database, through a bounded pool of connections.
pub struct Database {
    pool: Pool,
}

impl Database {
    /// Connects to `url` ([`Connection::parse`], with `ca_file` as the CA when the URL names
    /// none) and brings the schema up to date. Nodes starting together serialise their
    /// migrations on an advisory lock.
    pub fn open(
        url: &str,
        ca_file: Option<&std::path::Path>,
        limits: PoolLimits,
    ) -> Result<Arc<Self>, DatabaseError> {
        let database = Arc::new(Database {
            pool: Pool::new(Connection::parse(url, ca_file)?, limits),
        });
        // The blocking driver cannot run on a thread that drives async tasks, and a server may
        // be started from one (tests are): the first connection is made on a thread of its own.
        std::thread::scope(|scope| {
            scope
                .spawn(|| database.migrate())
                .join()
                .expect("the migration thread does not panic")
        })?;
        Ok(database)
    }

    fn migrate(&self) -> Result<(), DatabaseError> {
        self.with(|client| {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS hexray_migrations (
                     version integer PRIMARY KEY,
                     applied timestamptz NOT NULL DEFAULT now())",
            )?;
            let found: Option<i32> = tx
                .query_one("SELECT max(version) FROM hexray_migrations", &[])?
                .get(0);
            let known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
            if let Some(found) = found.filter(|&found| found > known) {
                return Ok(Err(DatabaseError::NewerSchema { found, known }));
            }
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
            tx.commit()?;
            Ok(Ok(()))
        })?
    }

    /// Runs `work` on a pooled connection ([`Pool::with`]).
    pub fn with<T>(
        &self,
        work: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, DatabaseError> {
        self.pool.with(work)
    }

    /// How many connections this node has open to the database.
    pub fn connections(&self) -> usize {
        self.pool.open()
    }
}

impl Drop for Database {
    /// Closing a connection of the blocking driver blocks on its runtime, which must not
    /// happen on a thread that drives async tasks (a server may be dropped on one): the pooled
    /// connections are closed on a thread of their own.
    fn drop(&mut self) {
        let idle = self.pool.drain();
        if !idle.is_empty() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}
