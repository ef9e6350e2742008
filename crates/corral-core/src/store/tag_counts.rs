//! Live entries per tag, so that a tag purge answers how many entries it covered in O(1).
//!
//! Keyed by a 64-bit hash of the tag's name, not the name: 12 bytes per distinct tag (tags
//! like `product-123` are often as many as the entries). Two distinct tags whose hashes
//! collide (odds ~n²/2⁶⁵ for n tags, under a per-process random seed) share one count, which
//! only makes a purge's reported count too high; what a purge *covers* is decided by the
//! marks, by name.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use parking_lot::Mutex;

const SHARDS: usize = 16;

/// A tag's hash and its live count.
#[derive(Clone, Copy)]
struct Count {
    hash: [u32; 2],
    live: u32,
}

impl Count {
    fn hash(&self) -> u64 {
        u64::from(self.hash[0]) | u64::from(self.hash[1]) << 32
    }
}

pub(super) struct TagCounts {
    shards: Box<[Mutex<HashTable<Count>>]>,
    hasher: foldhash::fast::RandomState,
}

impl Default for TagCounts {
    fn default() -> Self {
        TagCounts {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl TagCounts {
    fn locate(&self, tag: &str) -> (u64, &Mutex<HashTable<Count>>) {
        let hash = self.hasher.hash_one(tag);
        (hash, &self.shards[(hash >> 32) as usize % SHARDS])
    }

    /// Counts one more live entry carrying `tag`.
    pub(super) fn add(&self, tag: &str) {
        let (hash, shard) = self.locate(tag);
        let mut table = shard.lock();
        match table.find_mut(hash, |c| c.hash() == hash) {
            Some(c) => c.live = c.live.saturating_add(1),
            None => {
                let count = Count {
                    hash: [hash as u32, (hash >> 32) as u32],
                    live: 1,
                };
                table.insert_unique(hash, count, Count::hash);
            }
        }
    }

    /// Counts one live entry carrying `tag` fewer; forgets the tag at zero.
    pub(super) fn remove(&self, tag: &str) {
        let (hash, shard) = self.locate(tag);
        let mut table = shard.lock();
        if let Ok(mut found) = table.find_entry(hash, |c| c.hash() == hash) {
            let c = found.get_mut();
            c.live = c.live.saturating_sub(1);
            if c.live == 0 {
                found.remove();
            }
        }
    }

    /// Live entries carrying `tag`.
    pub(super) fn get(&self, tag: &str) -> usize {
        let (hash, shard) = self.locate(tag);
        let table = shard.lock();
        table
            .find(hash, |c| c.hash() == hash)
            .map_or(0, |c| c.live as usize)
    }

    /// Distinct tags counted.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}
