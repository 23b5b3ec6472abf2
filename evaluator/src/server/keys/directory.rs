//! The embedded key back end: keys in the data directory, at
//! `<data dir>/keys/<owner>/<id>.<set>.key`, each written to a unique temporary file, fsynced,
//! renamed, and its directory fsynced before the id is returned, so a crash loses no
//! registration and never leaves a half-written key under a real name.
//!
//! A stored key that no longer matches its id is moved to `<data dir>/quarantine/`, logged,
//! and reported as unknown, so its browser uploads it again; uploading a known id repairs a
//! missing or damaged file. Keys unused for longer than the expiry are deleted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use hexray_crypto::{ParameterSet, ServerKey};

use super::{
    cached_or_expanded, key_id, registration, validate_upload, KeyLimits, KeyStorage, Lru,
    Occupancy, Registration, Verified,
};
use crate::durable_file::{write_durably, Readers};
use crate::server::auth::Owner;
use crate::server::store_error::StoreError;

/// One stored key.
#[derive(Clone, Copy, Debug)]
struct Stored {
    set: ParameterSet,
    bytes: u64,
    last_used: SystemTime,
}

/// The data directory back end: one file per key, an index of them in memory, and the
/// expanded-key cache.
pub struct DirectoryKeys {
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

impl DirectoryKeys {
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
        let store = DirectoryKeys {
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
    fn read_intact(
        &self,
        owner: &Owner,
        id: &str,
        set: ParameterSet,
    ) -> Result<Vec<u8>, StoreError> {
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
        Err(StoreError::UnknownKey(id.into()))
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

    /// Deletes `owner`'s key file (gone already is fine) and forgets the key.
    fn delete(&self, owner: &Owner, id: &str, set: ParameterSet) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(owner, id, set)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.forget(owner, id);
        Ok(())
    }

    fn path(&self, owner: &Owner, id: &str, set: ParameterSet) -> PathBuf {
        self.dir
            .join(&owner.0)
            .join(format!("{id}.{}.key", tag(set)))
    }
}

impl KeyStorage for DirectoryKeys {
    fn admit(&self, owner: &Owner, named: Option<&str>, bytes: u64) -> Result<(), StoreError> {
        self.occupancy(owner, named).admit(&self.limits, bytes)
    }

    fn register(&self, owner: &Owner, bytes: &[u8]) -> Result<(String, Registration), StoreError> {
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
        store_key(&path, bytes)
            .map_err(|e| StoreError::Internal(format!("cannot store the key: {e}")))?;
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

    fn lookup(&self, owner: &Owner, id: &str) -> Result<Option<ParameterSet>, StoreError> {
        Ok(self.indexed(owner, id))
    }

    fn check(&self, owner: &Owner, id: &str) -> Result<ParameterSet, StoreError> {
        let set = self
            .indexed(owner, id)
            .ok_or_else(|| StoreError::UnknownKey(id.into()))?;
        self.verified
            .check(&self.cache, owner, id, || self.read_intact(owner, id, set))?;
        Ok(set)
    }

    fn server_key(&self, owner: &Owner, id: &str) -> Result<Arc<ServerKey>, StoreError> {
        let set = self
            .indexed(owner, id)
            .ok_or_else(|| StoreError::UnknownKey(id.into()))?;
        self.touch(owner, id, set);
        cached_or_expanded(&self.cache, id, || self.read_intact(owner, id, set))
    }

    fn remove(&self, owner: &Owner, id: &str) -> Result<bool, StoreError> {
        let _registering = self.registering.lock().expect("registration lock");
        let Some(set) = self.indexed(owner, id) else {
            return Ok(false);
        };
        self.delete(owner, id, set)
            .map_err(|e| StoreError::Internal(format!("cannot delete key {id}: {e}")))?;
        Ok(true)
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
            if let Err(e) = self.delete(owner, id, *set) {
                log::error!("cannot delete expired key {id}: {e}");
            }
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

/// Stores a key at `path` ([`write_durably`]). An owner's first key creates the owner's
/// directory, and its parent is fsynced too, or a crash could lose the directory with the key
/// inside.
fn store_key(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("a key path has a directory");
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        let parent = dir.parent().expect("an owner's directory has a parent");
        std::fs::File::open(parent)?.sync_all()?;
    }
    write_durably(path, bytes, Readers::Umask)
}

fn skip_unreadable(entry: std::io::Result<std::fs::DirEntry>) -> Option<std::fs::DirEntry> {
    entry
        .map_err(|e| log::warn!("skipping an unreadable entry of the key directory: {e}"))
        .ok()
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
