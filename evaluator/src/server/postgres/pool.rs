//! A bounded pool of connections to one database.
//!
//! Every node's routes, workers and lease renewals share it. Its bounds are what keep a node
//! from exhausting the database, whoever sends requests: at most `max` connections are open,
//! a caller that finds them all busy waits at most `wait` and then gets a "database busy"
//! error (503, retry), and a connection left idle for longer than `idle` is closed at the next
//! checkout or return. A connection the database closed (it restarted, or an administrator
//! ended it) is dropped and the work retried once on a fresh one, so a restart costs the nodes
//! nothing but a reconnection.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::Client;

use super::connection::Connection;
use super::DatabaseError;

/// How many connections a node may open, and how long they wait and idle.
#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    /// Connections open at once, all this node's callers together.
    pub max: usize,
    /// How long a caller waits for a connection when all are busy.
    pub wait: Duration,
    /// How long a connection may sit unused before it is closed.
    pub idle: Duration,
}

/// The pool: idle connections, and how many are open in all.
pub struct Pool {
    connection: Connection,
    limits: PoolLimits,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Default)]
struct State {
    /// Connections not in use, each with the time it was returned.
    idle: Vec<(Client, Instant)>,
    /// Connections open: idle, in use, or being opened.
    open: usize,
}

/// One connection slot taken from the pool: a connection, or the right to open one. Dropped,
/// it returns a live connection to the pool, or frees its slot.
struct Lease<'a> {
    pool: &'a Pool,
    client: Option<Client>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        // A closed connection is dropped here, outside the pool's lock.
        let client = self.client.take().filter(|c| !c.is_closed());
        let mut state = self.pool.lock();
        match client {
            Some(client) => state.idle.push((client, Instant::now())),
            None => state.open -= 1,
        }
        drop(state);
        self.pool.freed.notify_one();
    }
}

impl Pool {
    pub fn new(connection: Connection, limits: PoolLimits) -> Self {
        Pool {
            connection,
            limits,
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
        }
    }

    /// Runs `work` on a pooled connection, retried once on a fresh connection if the pooled one
    /// turns out to have been closed by the database.
    pub fn with<T>(
        &self,
        mut work: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, DatabaseError> {
        let mut lease = self.checkout()?;
        if let Some(client) = lease.client.as_mut() {
            match work(client) {
                Err(e) if e.is_closed() || client.is_closed() || e.code().is_some_and(ended) => {
                    log::warn!("database connection lost ({e}); reconnecting");
                    drop(lease.client.take());
                }
                done => return Ok(done?),
            }
        }
        let client = lease.client.insert(self.connection.connect()?);
        Ok(work(client)?)
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("pool lock")
    }

    /// Takes an idle connection, or a slot to open one, waiting while the pool is at its
    /// maximum; closes the connections idle for too long on the way.
    fn checkout(&self) -> Result<Lease<'_>, DatabaseError> {
        let deadline = Instant::now() + self.limits.wait;
        // Declared before the lock's guard, so that they close after it is released: closing a
        // connection waits on the network.
        let mut stale = Vec::new();
        let mut state = self.lock();
        loop {
            let idle = self.limits.idle;
            let (old, fresh): (Vec<_>, Vec<_>) = std::mem::take(&mut state.idle)
                .into_iter()
                .partition(|(_, since)| since.elapsed() > idle);
            state.idle = fresh;
            state.open -= old.len();
            stale.extend(old);
            if let Some((client, _)) = state.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    client: Some(client),
                });
            }
            if state.open < self.limits.max {
                state.open += 1;
                return Ok(Lease {
                    pool: self,
                    client: None,
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!(
                    "all {} database connections stayed busy for {:?}",
                    self.limits.max,
                    self.limits.wait
                );
                return Err(DatabaseError::Busy);
            }
            state = self.freed.wait_timeout(state, left).expect("pool lock").0;
        }
    }

    /// Takes every idle connection out of the pool, for closing.
    pub fn drain(&self) -> Vec<Client> {
        let mut state = self.lock();
        let idle = std::mem::take(&mut state.idle);
        state.open -= idle.len();
        idle.into_iter().map(|(client, _)| client).collect()
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
