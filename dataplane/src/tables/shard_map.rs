//! A hash map that is cheap to copy and cheap to change one key of: the shape the forwarding
//! state needs for tables of thousands of Services.
//!
//! The keys are split over [`SHARDS`] shards by hash, each shard a `hashbrown` map behind an
//! `Arc`, the shard array behind one more `Arc`. Cloning the map clones one `Arc`. Changing one
//! key of a map that a published snapshot still shares copies the shard array (256 pointers)
//! and the one shard the key hashes to (about `len / 256` entries), never the other shards: so
//! one Service added to 10k costs the same as one added to 10, and the workers keep reading
//! the old snapshot, untouched, until they adopt the new one. A lookup is one hash and two
//! pointer reads more than a plain `HashMap`: O(1).

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use hashbrown::HashMap;

/// Number of shards.
pub const SHARDS: usize = 256;

type Hasher = hashbrown::DefaultHashBuilder;

/// See the module documentation.
#[derive(Clone)]
pub struct ShardMap<K, V> {
    shards: Arc<Vec<Arc<HashMap<K, V>>>>,
    hasher: Hasher,
    len: usize,
}

impl<K, V> Default for ShardMap<K, V> {
    fn default() -> Self {
        ShardMap {
            shards: Arc::new((0..SHARDS).map(|_| Arc::new(HashMap::new())).collect()),
            hasher: Hasher::default(),
            len: 0,
        }
    }
}

impl<K: core::fmt::Debug, V: core::fmt::Debug> core::fmt::Debug for ShardMap<K, V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_map()
            .entries(self.shards.iter().flat_map(|s| s.iter()))
            .finish()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ShardMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn shard_of(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) >> 56) as usize % SHARDS
    }

    #[inline]
    pub fn get(&self, key: &K) -> Option<&V> {
        self.shards[self.shard_of(key)].get(key)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Inserts or replaces; returns the previous value.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let i = self.shard_of(&key);
        let shard = Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[i]);
        let old = shard.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.shard_of(key);
        if !self.shards[i].contains_key(key) {
            return None;
        }
        let shard = Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[i]);
        let old = shard.remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove() {
        let mut m = ShardMap::new();
        for i in 0..10_000u32 {
            assert_eq!(m.insert(i, i * 2), None);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.insert(7, 1), Some(14));
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get(&7), Some(&1));
        assert_eq!(m.get(&9999), Some(&19998));
        assert_eq!(m.get(&10_000), None);
        assert_eq!(m.remove(&7), Some(1));
        assert_eq!(m.remove(&7), None);
        assert_eq!(m.len(), 9_999);
        assert_eq!(m.iter().count(), 9_999);
    }

    #[test]
    fn a_clone_is_not_changed_by_later_updates() {
        let mut m = ShardMap::new();
        for i in 0..1000u32 {
            m.insert(i, i);
        }
        let published = m.clone();
        m.insert(5000, 1);
        m.remove(&1);
        m.insert(2, 99);
        assert_eq!(published.len(), 1000);
        assert_eq!(published.get(&5000), None);
        assert_eq!(published.get(&1), Some(&1));
        assert_eq!(published.get(&2), Some(&2));
        assert_eq!(m.get(&2), Some(&99));
        // Only the shards that changed were copied.
        let shared = (0..SHARDS)
            .filter(|&i| Arc::ptr_eq(&m.shards[i], &published.shards[i]))
            .count();
        assert!(shared >= SHARDS - 3, "{shared} shards shared");
    }
}
