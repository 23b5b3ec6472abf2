//! Clients' server keys: registered once, persisted, and kept expanded in a memory-bounded cache.
//!
//! A key's id is a hash of its compressed bytes, so registering the same key twice is harmless
//! and a returning client can check its id without uploading 30 MB again. The compressed key
//! is written to `<data dir>/keys/<id>.<set>.key` before the id is returned, so a restart loses
//! no registration. Expanding a key takes about a second and 85 MB, so expanded keys live in an
//! LRU cache whose total size is bounded; an evicted key is simply expanded again from disk.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hexray_crypto::{CompressedServerKey, ParameterSet, ServerKey};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// A registered key, as the API describes it.
#[derive(Clone, Copy, Debug)]
pub struct Registration {
    pub parameter_set: ParameterSet,
    /// False when the key was already registered.
    pub created: bool,
}

pub struct KeyStore {
    dir: PathBuf,
    /// Every persisted key's parameter set, by id.
    index: Mutex<HashMap<String, ParameterSet>>,
    cache: Mutex<Lru>,
}

/// Expanded keys, most recently used last, with their total size bounded by `budget` bytes.
struct Lru {
    budget: usize,
    entries: VecDeque<(String, Arc<ServerKey>)>,
}

impl KeyStore {
    /// Opens (creating it if needed) the key directory under `data_dir` and indexes the keys
    /// registered before a restart.
    pub fn open(data_dir: &std::path::Path, cache_bytes: usize) -> std::io::Result<Self> {
        let dir = data_dir.join("keys");
        std::fs::create_dir_all(&dir)?;
        let mut index = HashMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let Some((id, set)) = name.to_str().and_then(parse_file_name) else {
                continue;
            };
            index.insert(id.to_owned(), set);
        }
        Ok(KeyStore {
            dir,
            index: Mutex::new(index),
            cache: Mutex::new(Lru {
                budget: cache_bytes,
                entries: VecDeque::new(),
            }),
        })
    }

    /// Validates and persists a compressed server key; returns its id. Blocking: it parses and
    /// writes tens of megabytes.
    pub fn register(&self, bytes: &[u8]) -> Result<(String, Registration), ApiError> {
        let key = CompressedServerKey::from_bytes(bytes).map_err(|e| match e {
            hexray_crypto::CryptoError::ParameterMismatch { .. } => {
                ApiError::ParameterMismatch(e.to_string())
            }
            _ => ApiError::MalformedKey(e.to_string()),
        })?;
        let id = key_id(bytes);
        let parameter_set = key.parameter_set();
        if self.lookup(&id).is_some() {
            return Ok((
                id,
                Registration {
                    parameter_set,
                    created: false,
                },
            ));
        }
        // Write to a temporary name, then rename: a crash never leaves a truncated key behind.
        let path = self.path(&id, parameter_set);
        let partial = path.with_extension("partial");
        std::fs::write(&partial, bytes)
            .and_then(|()| std::fs::rename(&partial, &path))
            .map_err(|e| ApiError::Internal(format!("cannot store the key: {e}")))?;
        self.index
            .lock()
            .expect("key index lock")
            .insert(id.clone(), parameter_set);
        log::info!("registered server key {id} ({})", parameter_set.name());
        Ok((
            id,
            Registration {
                parameter_set,
                created: true,
            },
        ))
    }

    /// The parameter set of a registered key.
    pub fn lookup(&self, id: &str) -> Option<ParameterSet> {
        self.index.lock().expect("key index lock").get(id).copied()
    }

    /// The expanded key, from the cache or expanded from disk. Blocking: expansion takes about a
    /// second.
    pub fn server_key(&self, id: &str) -> Result<Arc<ServerKey>, ApiError> {
        if let Some(key) = self.cache.lock().expect("key cache lock").get(id) {
            return Ok(key);
        }
        let set = self
            .lookup(id)
            .ok_or_else(|| ApiError::UnknownKey(id.into()))?;
        let bytes = std::fs::read(self.path(id, set))
            .map_err(|e| ApiError::Internal(format!("cannot read key {id}: {e}")))?;
        let key = CompressedServerKey::from_bytes(&bytes)
            .map_err(|e| ApiError::Internal(format!("stored key {id} no longer reads: {e}")))?;
        let key = Arc::new(key.decompress());
        self.cache
            .lock()
            .expect("key cache lock")
            .insert(id.into(), key.clone());
        Ok(key)
    }

    /// How many expanded keys the cache holds, and their size in bytes.
    pub fn cached(&self) -> (usize, usize) {
        let cache = self.cache.lock().expect("key cache lock");
        (cache.entries.len(), cache.used())
    }

    pub fn registered(&self) -> usize {
        self.index.lock().expect("key index lock").len()
    }

    fn path(&self, id: &str, set: ParameterSet) -> PathBuf {
        self.dir.join(format!("{id}.{}.key", tag(set)))
    }
}

impl Lru {
    fn get(&mut self, id: &str) -> Option<Arc<ServerKey>> {
        let at = self.entries.iter().position(|(k, _)| k == id)?;
        let entry = self.entries.remove(at).expect("position is in range");
        let key = entry.1.clone();
        self.entries.push_back(entry);
        Some(key)
    }

    /// Inserts `key` and evicts the least recently used keys until the budget holds. The new
    /// key always stays, even alone over budget: a job needs it.
    fn insert(&mut self, id: String, key: Arc<ServerKey>) {
        self.entries.retain(|(k, _)| *k != id);
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
    Sha256::digest(bytes)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
