//! Keys in PostgreSQL. A key's bytes (about 30 MB) are one `bytea` row, written once whoever
//! registers it, with its full SHA-256 beside it; each token's registration is a row of its own.

use std::sync::{Arc, Mutex};

use hexray_crypto::{ParameterSet, ServerKey};
use sha2::{Digest, Sha256};

use super::Database;
use crate::server::auth::Owner;
use crate::server::keys::{
    cached_or_expanded, key_id, registration, validate_upload, KeyLimits, KeyStorage, Lru,
    Occupancy, Registration, Verified,
};
use crate::server::store_error::StoreError;

/// Keys in PostgreSQL, with this node's expanded-key cache in front.
pub struct PgKeys {
    database: Arc<Database>,
    limits: KeyLimits,
    cache: Mutex<Lru>,
    verified: Verified,
}

impl PgKeys {
    pub fn new(database: Arc<Database>, cache_bytes: usize, limits: KeyLimits) -> Self {
        PgKeys {
            database,
            limits,
            cache: Mutex::new(Lru::new(cache_bytes)),
            verified: Verified::default(),
        }
    }

    /// Drops this node's expanded copy of key `id` and its verification: its bytes are gone.
    fn evict(&self, id: &str) {
        self.cache.lock().expect("key cache lock").remove(id);
        self.verified.forget(id);
    }

    /// The stored bytes of `owner`'s key `id`, if they still match their id; a damaged row is
    /// deleted (logged) and the key reported unknown, so its client uploads it again.
    fn read_intact(&self, owner: &Owner, id: &str) -> Result<Vec<u8>, StoreError> {
        let row = self.database.with(|c| {
            c.query_opt(
                "SELECT b.bytes FROM key_blobs b JOIN key_owners o USING (id)
                 WHERE o.owner = $1 AND o.id = $2",
                &[&owner.0, &id],
            )
        })?;
        match row.map(|r| r.get::<_, Vec<u8>>(0)) {
            Some(bytes) if key_id(&bytes) == id => Ok(bytes),
            Some(_) => {
                log::error!(
                    "stored key {id} is damaged (its bytes no longer match its id): deleted"
                );
                self.database
                    .with(|c| c.execute("DELETE FROM key_blobs WHERE id = $1", &[&id]))?;
                self.evict(id);
                Err(StoreError::UnknownKey(id.into()))
            }
            None => {
                self.verified.forget(id);
                Err(StoreError::UnknownKey(id.into()))
            }
        }
    }
}

/// Takes the cluster-wide lock on key registrations for the rest of `tx`: registering, deleting
/// and expiring keys take turns, so that neither a token's quota nor the storage cap, which all
/// tokens share, can be raced past, and a key's bytes are never swept as unowned while another
/// token is registering them.
fn lock_registrations(tx: &mut postgres::Transaction<'_>) -> Result<(), postgres::Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('hexray key registration'))",
        &[],
    )
    .map(drop)
}

/// Deletes the stored bytes that no token's registration names any more.
fn sweep_unowned(tx: &mut postgres::Transaction<'_>) -> Result<(), postgres::Error> {
    tx.execute(
        "DELETE FROM key_blobs b WHERE NOT EXISTS
         (SELECT 1 FROM key_owners o WHERE o.id = b.id)",
        &[],
    )
    .map(drop)
}

/// The store's occupancy for `owner`'s key `id` (the empty id names no key).
fn occupancy(
    c: &mut impl postgres::GenericClient,
    owner: &Owner,
    id: &str,
) -> Result<Occupancy, postgres::Error> {
    let row = c.query_one(
        "SELECT (SELECT count(*) FROM key_owners WHERE owner = $1),
                (SELECT coalesce(sum(size), 0)::bigint FROM key_blobs),
                EXISTS (SELECT 1 FROM key_owners WHERE owner = $1 AND id = $2),
                EXISTS (SELECT 1 FROM key_blobs WHERE id = $2)",
        &[&owner.0, &id],
    )?;
    Ok(Occupancy {
        owned: row.get::<_, i64>(0) as usize,
        used: row.get::<_, i64>(1) as u64,
        known: row.get(2),
        stored: row.get(3),
    })
}

impl KeyStorage for PgKeys {
    fn admit(&self, owner: &Owner, named: Option<&str>, bytes: u64) -> Result<(), StoreError> {
        self.database
            .with(|c| occupancy(c, owner, named.unwrap_or_default()))?
            .admit(&self.limits, bytes)
    }

    fn register(&self, owner: &Owner, bytes: &[u8]) -> Result<(String, Registration), StoreError> {
        let (id, set) = validate_upload(bytes)?;
        let checksum = hexray_model::hex::encode(&Sha256::digest(bytes));
        let size = bytes.len() as i64;
        let limits = self.limits;
        let created = self.database.with(|c| {
            let mut tx = c.transaction()?;
            // Registrations are rare (one per browser and parameter set), and the key was
            // parsed before this.
            lock_registrations(&mut tx)?;
            let occupancy = occupancy(&mut tx, owner, &id)?;
            if occupancy.known {
                // Repair a damaged copy from the new upload, as the embedded store does.
                tx.execute(
                    "UPDATE key_blobs SET bytes = $2, checksum = $3, size = $4
                     WHERE id = $1 AND sha256(bytes) <> decode($3, 'hex')",
                    &[&id, &bytes, &checksum, &size],
                )?;
                tx.commit()?;
                return Ok(Ok(false));
            }
            if let Err(refused) = occupancy.admit(&limits, size as u64) {
                return Ok(Err(refused));
            }
            tx.execute(
                "INSERT INTO key_blobs (id, parameter_set, checksum, size, bytes)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                &[&id, &set.name(), &checksum, &size, &bytes],
            )?;
            let inserted = tx.execute(
                "INSERT INTO key_owners (owner, id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&owner.0, &id],
            )?;
            tx.commit()?;
            Ok(Ok(inserted == 1))
        })??;
        Ok(registration(id, set, created))
    }

    fn lookup(&self, owner: &Owner, id: &str) -> Result<Option<ParameterSet>, StoreError> {
        let name: Option<String> = self
            .database
            .with(|c| {
                c.query_opt(
                    "SELECT b.parameter_set FROM key_blobs b JOIN key_owners o USING (id)
                     WHERE o.owner = $1 AND o.id = $2",
                    &[&owner.0, &id],
                )
            })?
            .map(|row| row.get(0));
        name.map(|n| ParameterSet::from_name(&n))
            .transpose()
            .map_err(|e| StoreError::Internal(format!("stored key {id}: {e}")))
    }

    fn check(&self, owner: &Owner, id: &str) -> Result<ParameterSet, StoreError> {
        let set = self
            .lookup(owner, id)?
            .ok_or_else(|| StoreError::UnknownKey(id.into()))?;
        self.verified
            .check(&self.cache, owner, id, || self.read_intact(owner, id))?;
        Ok(set)
    }

    fn server_key(&self, owner: &Owner, id: &str) -> Result<Arc<ServerKey>, StoreError> {
        let touched = self.database.with(|c| {
            c.execute(
                "UPDATE key_owners SET last_used = now() WHERE owner = $1 AND id = $2",
                &[&owner.0, &id],
            )
        })?;
        if touched == 0 {
            return Err(StoreError::UnknownKey(id.into()));
        }
        cached_or_expanded(&self.cache, id, || self.read_intact(owner, id))
    }

    fn remove(&self, owner: &Owner, id: &str) -> Result<bool, StoreError> {
        let removed = self.database.with(|c| {
            let mut tx = c.transaction()?;
            lock_registrations(&mut tx)?;
            let n = tx.execute(
                "DELETE FROM key_owners WHERE owner = $1 AND id = $2",
                &[&owner.0, &id],
            )?;
            // The bytes go with their last owner (one browser's key under two tokens has two).
            sweep_unowned(&mut tx)?;
            tx.commit()?;
            Ok(n == 1)
        })?;
        if removed {
            self.evict(id);
        }
        Ok(removed)
    }

    fn expire(&self) -> usize {
        let seconds = self.limits.expiry.as_secs_f64();
        let expired = self.database.with(|c| {
            let mut tx = c.transaction()?;
            lock_registrations(&mut tx)?;
            let n = tx.execute(
                "DELETE FROM key_owners WHERE last_used < now() - make_interval(secs => $1)",
                &[&seconds],
            )?;
            sweep_unowned(&mut tx)?;
            tx.commit()?;
            Ok(n as usize)
        });
        match expired {
            Ok(n) => {
                if n > 0 {
                    log::info!("{n} key registrations unused for over {seconds} s: deleted");
                }
                n
            }
            Err(e) => {
                log::error!("cannot expire keys: {e}");
                0
            }
        }
    }

    fn cached(&self) -> (usize, usize) {
        self.cache.lock().expect("key cache lock").usage()
    }

    fn registered(&self) -> usize {
        self.database
            .with(|c| c.query_one("SELECT count(*) FROM key_owners", &[]))
            .map_or(0, |row| row.get::<_, i64>(0) as usize)
    }
}
