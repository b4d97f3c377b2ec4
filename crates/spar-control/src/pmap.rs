//! A persistent map: cloning is O(1) and a change copies one shard (about 1/64 of the map),
//! so a snapshot and its successor share everything a change did not touch. The registry and
//! the translated xDS resources live in these, which is what lets a one-pod change cost the
//! same in a 1,000-pod mesh as in a 100,000-pod one, and lets streams that lag hold on to the
//! snapshot they last sent without holding a copy of the mesh.
//!
//! Iteration order is by shard, then by key within a shard: deterministic, but not sorted.
//! Callers that need key order (first-by-name rules) sort what they collect.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash};
use std::sync::Arc;

const SHARDS: usize = 64;

pub struct PMap<K, V> {
    shards: Arc<Vec<Arc<BTreeMap<K, V>>>>,
    len: usize,
}

impl<K, V> Clone for PMap<K, V> {
    fn clone(&self) -> Self {
        PMap {
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<K: Ord + Hash + Clone, V: Clone> Default for PMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: std::fmt::Debug, V> std::fmt::Debug for PMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PMap({} entries)", self.len)
    }
}

fn shard_of<Q: Hash + ?Sized>(k: &Q) -> usize {
    // A fixed hasher: the same key lands in the same shard in every snapshot and process.
    (BuildHasherDefault::<DefaultHasher>::default().hash_one(k) as usize) % SHARDS
}

impl<K: Ord + Hash + Clone, V: Clone> PMap<K, V> {
    pub fn new() -> Self {
        PMap {
            shards: Arc::new((0..SHARDS).map(|_| Arc::new(BTreeMap::new())).collect()),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        self.shards[shard_of(k)].get(k)
    }

    pub fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        self.get(k).is_some()
    }

    fn shard_mut(&mut self, i: usize) -> &mut BTreeMap<K, V> {
        Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[i])
    }

    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let old = self.shard_mut(shard_of(&k)).insert(k, v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        let i = shard_of(k);
        // Only copy the shard when the key is there.
        self.shards[i].get(k)?;
        let old = self.shard_mut(i).remove(k);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Replace the value at `k` with `f(current)`; `None` removes it.
    pub fn update(&mut self, k: K, f: impl FnOnce(Option<V>) -> Option<V>) {
        let shard = self.shard_mut(shard_of(&k));
        let old = shard.remove(&k);
        let had = old.is_some();
        match (f(old), had) {
            (Some(v), true) => {
                shard.insert(k, v);
            }
            (Some(v), false) => {
                shard.insert(k, v);
                self.len += 1;
            }
            (None, true) => self.len -= 1,
            (None, false) => {}
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}
