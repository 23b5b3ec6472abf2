//! Clients' server keys: registered once, persisted durably, checked when loaded, and kept
//! expanded in a memory-bounded cache.
//!
//! A key's id is the first 128 bits of the SHA-256 of its compressed bytes, so registering the
//! same key twice is harmless, a returning client can check its id without uploading 30 MB
//! again, and a stored file can be checked against its name. Each key belongs to the token that
//! registered it.
//!
//! [`KeyStorage`] is what the routes see, with two back ends: the data directory
//! ([`DirectoryKeys`], the default) and PostgreSQL ([`PgKeys`](super::postgres::PgKeys)),
//! which several nodes share. This file holds what both share: the trait, the API's view of a
//! key, quotas, the upload check and the node's memory of checked keys; `cache` holds the
//! expanded keys.

mod cache;
mod directory;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hexray_crypto::{CompressedServerKey, ParameterSet, ServerKey};
use hexray_model::hex;
use sha2::{Digest, Sha256};

use super::auth::Owner;
use super::store_error::StoreError;

pub(crate) use cache::{cached_or_expanded, Lru};
pub use directory::DirectoryKeys;

/// A registered key, as the API describes it.
#[derive(Clone, Copy, Debug)]
pub struct Registration {
    pub parameter_set: ParameterSet,
    /// False when the key was already registered.
    pub created: bool,
}

/// How much key storage clients may use.
#[derive(Clone, Copy, Debug)]
pub struct KeyLimits {
    /// Keys one token may have registered.
    pub per_owner: usize,
    /// Bytes of stored keys, all tokens together.
    pub storage_bytes: u64,
    /// Keys unused for this long are deleted.
    pub expiry: Duration,
}

/// Where registered keys live, and the expanded-key cache in front of them. The embedded
/// [`DirectoryKeys`] keeps them in the data directory, for one server; the PostgreSQL store
/// (`super::postgres::PgKeys`) shares them between evaluator nodes. Every method may block
/// (disk, network, hashing, expansion): call them from a blocking thread.
pub trait KeyStorage: Send + Sync {
    /// Whether `owner` has room for a key of `bytes` bytes, asked before its body is read so
    /// that a token at its quota, or a full store, costs no 30 MB upload. `named` is the id the
    /// client says the key has ([`KEY_ID_HEADER`]): a key its owner already has always has
    /// room, for a repair. [`KeyStorage::register`] checks again on the bytes themselves, so a
    /// wrong name gains nothing.
    fn admit(&self, owner: &Owner, named: Option<&str>, bytes: u64) -> Result<(), StoreError>;
    /// Validates and persists a compressed server key for `owner`; returns its id.
    fn register(&self, owner: &Owner, bytes: &[u8]) -> Result<(String, Registration), StoreError>;
    /// The parameter set of a key `owner` registered, if it is registered.
    fn lookup(&self, owner: &Owner, id: &str) -> Result<Option<ParameterSet>, StoreError>;
    /// Checks that `owner`'s key is usable: cached, or stored intact. A damaged copy is set
    /// aside and the key reported unknown, so the client uploads it again.
    fn check(&self, owner: &Owner, id: &str) -> Result<ParameterSet, StoreError>;
    /// The expanded key, from the cache or expanded from storage, marked used.
    fn server_key(&self, owner: &Owner, id: &str) -> Result<Arc<ServerKey>, StoreError>;
    /// Deletes `owner`'s registration of key `id`, freeing its place under the owner's quota
    /// (a browser that forgets its keys, or that its user no longer uses); false if the owner
    /// had no such key. Jobs still waiting for the key then fail.
    fn remove(&self, owner: &Owner, id: &str) -> Result<bool, StoreError>;
    /// Deletes keys unused for longer than the expiry. Returns how many.
    fn expire(&self) -> usize;
    /// How many expanded keys this node's cache holds, and their size in bytes.
    fn cached(&self) -> (usize, usize);
    /// How many keys are registered, all owners together.
    fn registered(&self) -> usize;
}

/// The request header in which a client may name the key it uploads (its [`key_id`]), so that
/// re-uploading a key it already has passes [`KeyStorage::admit`] at its quota.
pub const KEY_ID_HEADER: &str = "hexray-key-id";

/// What the rule for admitting a key needs to know of a store, read under the lock that
/// registrations hold.
pub(crate) struct Occupancy {
    /// Keys the owner has registered.
    pub owned: usize,
    /// Bytes stored, all owners together.
    pub used: u64,
    /// Whether the owner already has this key.
    pub known: bool,
    /// Whether the key's bytes are already stored (for another owner, on a shared store).
    pub stored: bool,
}

impl Occupancy {
    /// The one rule for both stores, before and after the body is read: a key its owner has
    /// always passes; a new one needs a place under its owner's quota and, unless its bytes
    /// are already stored, room in the storage that all tokens share.
    pub(crate) fn admit(&self, limits: &KeyLimits, bytes: u64) -> Result<(), StoreError> {
        if self.known {
            return Ok(());
        }
        if self.owned >= limits.per_owner {
            return Err(StoreError::KeyQuota {
                limit: limits.per_owner,
            });
        }
        if !self.stored && self.used + bytes > limits.storage_bytes {
            log::warn!("key storage full: {} bytes used", self.used);
            return Err(StoreError::StorageFull);
        }
        Ok(())
    }
}

/// Parses an upload as a compressed server key: its id and parameter set, or why it is not one.
pub(crate) fn validate_upload(bytes: &[u8]) -> Result<(String, ParameterSet), StoreError> {
    let key = CompressedServerKey::from_bytes(bytes).map_err(StoreError::RejectedKey)?;
    Ok((key_id(bytes), key.parameter_set()))
}

/// What registering key `id` of `set` answers (the route logs a new one, with its token).
pub(crate) fn registration(id: String, set: ParameterSet, created: bool) -> (String, Registration) {
    (
        id,
        Registration {
            parameter_set: set,
            created,
        },
    )
}

/// The keys whose stored bytes this node has read back and found intact since it started.
/// Submitting a job checks its key; without this memory, every submission whose key is not
/// expanded in the cache would read and hash 30 MB, which body-less requests could repeat at
/// will. A copy damaged after its check is still caught: expanding it reads it again
/// ([`cached_or_expanded`]), and the job fails with `unknown_key`, so its client uploads it again.
#[derive(Default)]
pub(crate) struct Verified(Mutex<HashSet<(Owner, String)>>);

impl Verified {
    /// Checks `owner`'s key `id` once per node: known intact (checked before, or expanded in
    /// `cache`), or read with `read`, which checks the bytes against their id.
    pub(crate) fn check(
        &self,
        cache: &Mutex<Lru>,
        owner: &Owner,
        id: &str,
        read: impl FnOnce() -> Result<Vec<u8>, StoreError>,
    ) -> Result<(), StoreError> {
        let entry = (owner.clone(), id.to_owned());
        if self.0.lock().expect("verified keys lock").contains(&entry)
            || cache.lock().expect("key cache lock").contains(id)
        {
            return Ok(());
        }
        read()?;
        self.0.lock().expect("verified keys lock").insert(entry);
        Ok(())
    }

    /// Forgets a key found damaged or deleted, so that its next use checks it again.
    pub(crate) fn forget(&self, id: &str) {
        self.0
            .lock()
            .expect("verified keys lock")
            .retain(|(_, known)| known != id);
    }
}

/// A key's id: the first 128 bits of the SHA-256 of its compressed bytes, in hex.
pub fn key_id(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..16])
}
