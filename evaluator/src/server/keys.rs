//! Clients' server keys: registered once, persisted durably, checked when loaded, and kept
//! expanded in a memory-bounded cache.
//!
//! A key's id is the first 128 bits of the SHA-256 of its compressed bytes, so registering the
//! same key twice is harmless, a returning client can check its id without uploading 30 MB
//! again, and a stored file can be checked against its name. Each key belongs to the token that
//! registered it and is stored at `<data dir>/keys/<owner>/<id>.<set>.key`: written to a unique
//! temporary file, fsynced, renamed, and its directory fsynced before the id is returned, so a
//! crash loses no registration and never leaves a half-written key under a real name.
//!
//! A stored key that no longer matches its id is moved to `<data dir>/quarantine/`, logged,
//! and reported as unknown, so its browser uploads it again; uploading a known id repairs a
//! missing or damaged file. Keys unused for longer than the expiry are deleted.
//!
//! Expanding a key takes about a second and 85 MB, so expanded keys live in an LRU cache whose
//! total size is bounded; an evicted key is simply expanded again from disk.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hexray_crypto::{CompressedServerKey, ParameterSet, ServerKey};
use hexray_model::file::hex;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::auth::Owner;
use super::error::ApiError;

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
/// [`KeyStore`] keeps them in the data directory, for one server; the PostgreSQL store
/// (`super::postgres::PgKeyStore`) shares them between evaluator nodes. Every method may block
/// (disk, network, hashing, expansion): call them from a blocking thread.
pub trait KeyStorage: Send + Sync {
    /// Whether `owner` has room for a key of `bytes` bytes, asked before its body is read so
    /// that a token at its quota, or a full store, costs no 30 MB upload. `named` is the id the
    /// client says the key has ([`KEY_ID_HEADER`]): a key its owner already has always has
    /// room, for a repair. [`KeyStorage::register`] checks again on the bytes themselves, so a
    /// wrong name gains nothing.
    fn admit(&self, owner: &Owner, named: Option<&str>, bytes: u64) -> Result<(), ApiError>;
    /// Validates and persists a compressed server key for `owner`; returns its id.
    fn register(&self, owner: &Owner, bytes: &[u8]) -> Result<(String, Registration), ApiError>;
    /// The parameter set of a key `owner` registered, if it is registered.
    fn lookup(&self, owner: &Owner, id: &str) -> Result<Option<ParameterSet>, ApiError>;
    /// Checks that `owner`'s key is usable: cached, or stored intact. A damaged copy is set
    /// aside and the key reported unknown, so the client uploads it again.
    fn check(&self, owner: &Owner, id: &str) -> Result<ParameterSet, ApiError>;
    /// The expanded key, from the cache or expanded from storage, marked used.
    fn server_key(&self, owner: &Owner, id: &str) -> Result<Arc<ServerKey>, ApiError>;
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
    pub(crate) fn admit(&self, limits: &KeyLimits, bytes: u64) -> Result<(), ApiError> {
        if self.known {
            return Ok(());
        }
        if self.owned >= limits.per_owner {
            return Err(ApiError::KeyQuota {
                limit: limits.per_owner,
            });
        }
        if !self.stored && self.used + bytes > limits.storage_bytes {
            log::warn!("key storage full: {} bytes used", self.used);
            return Err(ApiError::StorageFull);
        }
        Ok(())
    }
}

/// Parses an upload as a compressed server key: its id and parameter set, or why it is not one.
pub(crate) fn validate_upload(bytes: &[u8]) -> Result<(String, ParameterSet), ApiError> {
    let key = CompressedServerKey::from_bytes(bytes).map_err(|e| match e {
        hexray_crypto::CryptoError::ParameterMismatch { .. } => ApiError::ParameterMismatch {
            context: "the uploaded key".into(),
            source: e,
        },
        _ => ApiError::MalformedKey(e.to_string()),
    })?;
    Ok((key_id(bytes), key.parameter_set()))
}

/// What registering key `id` of `set` answers, logged when it is new.
pub(crate) fn registration(id: String, set: ParameterSet, created: bool) -> (String, Registration) {
    if created {
        log::info!("registered server key {id} ({})", set.name());
    }
    (
        id,
        Registration {
            parameter_set: set,
            created,
        },
    )
}

/// Key `id`, expanded, from `cache`; or its stored bytes, from `read` (which checks them
/// against their id), expanded and cached.
pub(crate) fn cached_or_expanded(
    cache: &Mutex<Lru>,
    id: &str,
    read: impl FnOnce() -> Result<Vec<u8>, ApiError>,
) -> Result<Arc<ServerKey>, ApiError> {
    if let Some(key) = cache.lock().expect("key cache lock").get(id) {
        return Ok(key);
    }
    let key = CompressedServerKey::from_bytes(&read()?)
        .map_err(|e| ApiError::Internal(format!("stored key {id} no longer reads: {e}")))?;
    let key = Arc::new(key.decompress());
    cache
        .lock()
        .expect("key cache lock")
        .insert(id.into(), key.clone());
    Ok(key)
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
        read: impl FnOnce() -> Result<Vec<u8>, ApiError>,
    ) -> Result<(), ApiError> {
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

/// One stored key.
#[derive(Clone, Copy, Debug)]
struct Stored {
    set: ParameterSet,
    bytes: u64,
    last_used: SystemTime,
}

pub struct KeyStore {
    dir: PathBuf,
    quarantine: PathBuf,
    limits: KeyLimits,
    index: Mutex<HashMap<(Owner, String), Stored>>,
    cache: Mutex<Lru>,
    verified: Verified,
    /// Held from the quota check to the index entry of a registration, so that two uploads
    /// at once cannot both take a token's last place or the storage's last bytes.
    registering: Mutex<()>,
}

/// Expanded keys, most recently used last, with their total size bounded by `budget` bytes.
pub(crate) struct Lru {
    budget: usize,
    entries: VecDeque<(String, Arc<ServerKey>)>,
}

impl KeyStore {
    /// Opens (creating it if needed) the key directory under `data_dir` and indexes the keys
    /// registered before a restart. Entries that cannot be read are logged and skipped, and
    /// temporary files left by a crash are removed: a damaged directory never stops a start.
    pub fn open(data_dir: &Path, cache_bytes: usize, limits: KeyLimits) -> std::io::Result<Self> {
        let dir = data_dir.join("keys");
        let quarantine = data_dir.join("quarantine");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&quarantine)?;
        let mut index = HashMap::new();
        for owner_dir in std::fs::read_dir(&dir)? {
            let Some(owner_dir) = skip_unreadable(owner_dir) else {
                continue;
            };
            let owner_path = owner_dir.path();
            let Some(owner) = owner_dir.file_name().to_str().map(|s| Owner(s.to_owned())) else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(&owner_path) else {
                log::warn!(
                    "skipping {}: not a readable directory",
                    owner_path.display()
                );
                continue;
            };
            for entry in entries {
                let Some(entry) = skip_unreadable(entry) else {
                    continue;
                };
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".partial") {
                    let _ = std::fs::remove_file(entry.path());
                    continue;
                }
                let (Some((id, set)), Ok(meta)) = (parse_file_name(&name), entry.metadata()) else {
                    log::warn!("skipping {}: not a key file", entry.path().display());
                    continue;
                };
                let stored = Stored {
                    set,
                    bytes: meta.len(),
                    last_used: meta.modified().unwrap_or_else(|_| SystemTime::now()),
                };
                index.insert((owner.clone(), id.to_owned()), stored);
            }
        }
        let store = KeyStore {
            dir,
            quarantine,
            limits,
            index: Mutex::new(index),
            cache: Mutex::new(Lru::new(cache_bytes)),
            verified: Verified::default(),
            registering: Mutex::new(()),
        };
        Ok(store)
    }

    /// The parameter set of a key `owner` registered, from the index.
    fn indexed(&self, owner: &Owner, id: &str) -> Option<ParameterSet> {
        self.index
            .lock()
            .expect("key index lock")
            .get(&(owner.clone(), id.to_owned()))
            .map(|s| s.set)
    }

    /// The index's occupancy for `owner`'s key `id`. Each owner's keys are files of their own
    /// here, so a key is stored exactly when its owner has it.
    fn occupancy(&self, owner: &Owner, id: Option<&str>) -> Occupancy {
        let index = self.index.lock().expect("key index lock");
        let known = id.is_some_and(|id| index.contains_key(&(owner.clone(), id.to_owned())));
        Occupancy {
            owned: index.keys().filter(|(o, _)| o == owner).count(),
            used: index.values().map(|s| s.bytes).sum(),
            known,
            stored: known,
        }
    }

    /// The stored bytes, if they still hash to `id`; otherwise the file is quarantined and the
    /// key forgotten.
    fn read_intact(&self, owner: &Owner, id: &str, set: ParameterSet) -> Result<Vec<u8>, ApiError> {
        let path = self.path(owner, id, set);
        match std::fs::read(&path) {
            Ok(bytes) if key_id(&bytes) == id => return Ok(bytes),
            Ok(_) => {
                let stamp = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let target = self
                    .quarantine
                    .join(format!("{}-{id}-{stamp}.key", owner.0));
                log::error!(
                    "stored key {id} is damaged (its bytes no longer match its id): moved to {}",
                    target.display()
                );
                if let Err(e) = std::fs::rename(&path, &target) {
                    log::error!("cannot quarantine {}: {e}", path.display());
                }
            }
            Err(e) => log::error!("stored key {id} cannot be read: {e}"),
        }
        self.forget(owner, id);
        Err(ApiError::UnknownKey(id.into()))
    }

    fn forget(&self, owner: &Owner, id: &str) {
        self.index
            .lock()
            .expect("key index lock")
            .remove(&(owner.clone(), id.to_owned()));
        self.cache.lock().expect("key cache lock").remove(id);
        self.verified.forget(id);
    }

    /// Records a use, in the index and as the file's modification time, which is what a
    /// restarted server reads back.
    fn touch(&self, owner: &Owner, id: &str, set: ParameterSet) {
        let now = SystemTime::now();
        if let Some(stored) = self
            .index
            .lock()
            .expect("key index lock")
            .get_mut(&(owner.clone(), id.to_owned()))
        {
            stored.last_used = now;
        }
        let file = std::fs::File::options()
            .append(true)
            .open(self.path(owner, id, set));
        if let Err(e) = file.and_then(|f| f.set_modified(now)) {
            log::warn!("cannot record the use of key {id}: {e}");
        }
    }

    fn path(&self, owner: &Owner, id: &str, set: ParameterSet) -> PathBuf {
        self.dir
            .join(&owner.0)
            .join(format!("{id}.{}.key", tag(set)))
    }
}

impl KeyStorage for KeyStore {
    fn admit(&self, owner: &Owner, named: Option<&str>, bytes: u64) -> Result<(), ApiError> {
        self.occupancy(owner, named).admit(&self.limits, bytes)
    }

    fn register(&self, owner: &Owner, bytes: &[u8]) -> Result<(String, Registration), ApiError> {
        let (id, set) = validate_upload(bytes)?;
        let path = self.path(owner, &id, set);
        let _registering = self.registering.lock().expect("registration lock");
        let occupancy = self.occupancy(owner, Some(&id));
        if occupancy.known && std::fs::read(&path).is_ok_and(|stored| key_id(&stored) == id) {
            return Ok((
                id,
                Registration {
                    parameter_set: set,
                    created: false,
                },
            ));
        }
        occupancy.admit(&self.limits, bytes.len() as u64)?;
        if occupancy.known {
            log::warn!("repairing the stored copy of key {id} from a new upload");
        }
        write_durably(&path, bytes)
            .map_err(|e| ApiError::Internal(format!("cannot store the key: {e}")))?;
        let stored = Stored {
            set,
            bytes: bytes.len() as u64,
            last_used: SystemTime::now(),
        };
        let created = self
            .index
            .lock()
            .expect("key index lock")
            .insert((owner.clone(), id.clone()), stored)
            .is_none();
        Ok(registration(id, set, created))
    }

    fn lookup(&self, owner: &Owner, id: &str) -> Result<Option<ParameterSet>, ApiError> {
        Ok(self.indexed(owner, id))
    }

    fn check(&self, owner: &Owner, id: &str) -> Result<ParameterSet, ApiError> {
        let set = self
            .indexed(owner, id)
            .ok_or_else(|| ApiError::UnknownKey(id.into()))?;
        self.verified
            .check(&self.cache, owner, id, || self.read_intact(owner, id, set))?;
        Ok(set)
    }

    fn server_key(&self, owner: &Owner, id: &str) -> Result<Arc<ServerKey>, ApiError> {
        let set = self
            .indexed(owner, id)
            .ok_or_else(|| ApiError::UnknownKey(id.into()))?;
        self.touch(owner, id, set);
        cached_or_expanded(&self.cache, id, || self.read_intact(owner, id, set))
    }

    fn expire(&self) -> usize {
        let expiry = self.limits.expiry;
        let expired: Vec<(Owner, String, ParameterSet)> = self
            .index
            .lock()
            .expect("key index lock")
            .iter()
            .filter(|(_, s)| s.last_used.elapsed().is_ok_and(|age| age > expiry))
            .map(|((owner, id), s)| (owner.clone(), id.clone(), s.set))
            .collect();
        for (owner, id, set) in &expired {
            log::info!(
                "key {id} unused for over {} days: deleted",
                expiry.as_secs() / 86_400
            );
            let _ = std::fs::remove_file(self.path(owner, id, *set));
            self.forget(owner, id);
        }
        expired.len()
    }

    fn cached(&self) -> (usize, usize) {
        self.cache.lock().expect("key cache lock").usage()
    }

    fn registered(&self) -> usize {
        self.index.lock().expect("key index lock").len()
    }
}

/// Writes `bytes` to `path` so that a crash at any point leaves either no file or the whole
/// file: a unique temporary file (concurrent uploads of one key never share one), fsynced,
/// renamed, and the directory fsynced so the rename itself survives. An owner's first key
/// creates the owner's directory, and its parent is fsynced too, or a crash could lose the
/// directory with the key inside.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("a key path has a directory");
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        let parent = dir.parent().expect("an owner's directory has a parent");
        std::fs::File::open(parent)?.sync_all()?;
    }
    let mut nonce = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let name = path
        .file_name()
        .expect("a key path has a name")
        .to_string_lossy();
    let partial = dir.join(format!(
        ".{name}.{:016x}.partial",
        u64::from_le_bytes(nonce)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&partial, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn skip_unreadable(entry: std::io::Result<std::fs::DirEntry>) -> Option<std::fs::DirEntry> {
    entry
        .map_err(|e| log::warn!("skipping an unreadable entry of the key directory: {e}"))
        .ok()
}

impl Lru {
    pub(crate) fn new(budget: usize) -> Self {
        Lru {
            budget,
            entries: VecDeque::new(),
        }
    }

    /// How many keys it holds, and their size in bytes.
    pub(crate) fn usage(&self) -> (usize, usize) {
        (self.entries.len(), self.used())
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == id)
    }

    pub(crate) fn get(&mut self, id: &str) -> Option<Arc<ServerKey>> {
        let at = self.entries.iter().position(|(k, _)| k == id)?;
        let entry = self.entries.remove(at).expect("position is in range");
        let key = entry.1.clone();
        self.entries.push_back(entry);
        Some(key)
    }

    pub(crate) fn remove(&mut self, id: &str) {
        self.entries.retain(|(k, _)| k != id);
    }

    /// Inserts `key` and evicts the least recently used keys until the budget holds. The new
    /// key always stays, even alone over budget: a job needs it.
    pub(crate) fn insert(&mut self, id: String, key: Arc<ServerKey>) {
        self.remove(&id);
        self.entries.push_back((id, key));
        while self.used() > self.budget && self.entries.len() > 1 {
            let (evicted, _) = self.entries.pop_front().expect("more than one entry");
            log::info!("evicted expanded key {evicted} from the cache");
        }
    }

    fn used(&self) -> usize {
        self.entries
            .iter()
            .map(|(_, k)| k.parameter_set().server_key_memory_bytes())
            .sum()
    }
}

/// A key's id: the first 128 bits of the SHA-256 of its compressed bytes, in hex.
pub fn key_id(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes)[..16])
}

fn tag(set: ParameterSet) -> &'static str {
    match set {
        ParameterSet::Ks64 => "ks64",
        ParameterSet::Ks32 => "ks32",
    }
}

fn parse_file_name(name: &str) -> Option<(&str, ParameterSet)> {
    let (id, rest) = name.split_once('.')?;
    let set = match rest {
        "ks64.key" => ParameterSet::Ks64,
        "ks32.key" => ParameterSet::Ks32,
        _ => return None,
    };
    let hex = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then_some((id, set))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache's ids, least recently used first.
    fn ids(lru: &Lru) -> Vec<&str> {
        lru.entries.iter().map(|(id, _)| id.as_str()).collect()
    }

    #[test]
    fn the_least_recently_used_key_is_evicted_first_and_the_newest_always_stays() {
        // The cache sizes keys by their parameter set, so one expanded key stands for all.
        let (_, compressed) =
            hexray_crypto::ClientKey::generate_deterministic(ParameterSet::Ks32, 5);
        let key = Arc::new(compressed.decompress());
        let one = ParameterSet::Ks32.server_key_memory_bytes();
        let mut lru = Lru {
            budget: 2 * one,
            entries: VecDeque::new(),
        };
        lru.insert("a".into(), key.clone());
        lru.insert("b".into(), key.clone());
        assert_eq!(ids(&lru), ["a", "b"]);
        // Using "a" makes "b" the least recently used, so "c" evicts "b".
        assert!(lru.get("a").is_some());
        lru.insert("c".into(), key.clone());
        assert_eq!(ids(&lru), ["a", "c"]);
        assert!(lru.get("b").is_none());
        assert_eq!(lru.used(), 2 * one);
        // Inserting a cached id again moves it, without a second copy.
        lru.insert("a".into(), key.clone());
        assert_eq!(ids(&lru), ["c", "a"]);
        // A budget smaller than one key still keeps the key a job is about to use.
        lru.budget = one / 2;
        lru.insert("d".into(), key);
        assert_eq!(ids(&lru), ["d"]);
    }
}
