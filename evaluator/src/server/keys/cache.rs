//! Expanded server keys, kept in memory up to a byte budget. Expanding a key takes about a
//! second and 85 MB, so expanded keys live in an LRU cache whose total size is bounded; an
//! evicted key is simply expanded again from storage.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use hexray_crypto::{CompressedServerKey, ServerKey};

use crate::server::store_error::StoreError;

/// Expanded keys, most recently used last, with their total size bounded by `budget` bytes.
pub(crate) struct Lru {
    budget: usize,
    entries: VecDeque<(String, Arc<ServerKey>)>,
}

/// Key `id`, expanded, from `cache`; or its stored bytes, from `read` (which checks them
/// against their id), expanded and cached.
pub(crate) fn cached_or_expanded(
    cache: &Mutex<Lru>,
    id: &str,
    read: impl FnOnce() -> Result<Vec<u8>, StoreError>,
) -> Result<Arc<ServerKey>, StoreError> {
    if let Some(key) = cache.lock().expect("key cache lock").get(id) {
        return Ok(key);
    }
    let key = CompressedServerKey::from_bytes(&read()?)
        .map_err(|e| StoreError::Internal(format!("stored key {id} no longer reads: {e}")))?;
    let key = Arc::new(key.decompress());
    cache
        .lock()
        .expect("key cache lock")
        .insert(id.into(), key.clone());
    Ok(key)
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

#[cfg(test)]
mod tests {
    use super::*;
    use hexray_crypto::ParameterSet;

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
