//! The optional shared second tier under the in-process cache (the Redis L2, feature
//! `redis`): what it is asked, and how the cache's keys and invalidations reach it.

use super::*;

/// What an invalidation covers in a shared second tier.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum TierMark {
    /// One key (its escaped text form).
    Key(String),
    Tag(String),
    /// The whole namespace.
    All,
}

/// A shared second tier under the in-process cache (the Redis L2), type-erased so that only
/// the builder method that adds it needs `V` to be serialisable.
pub(crate) trait ValueTier<V>: Send + Sync + 'static {
    /// The value stored under `key` (`storage_key`) if live, with its remaining life. `None` on
    /// a miss and whenever the tier cannot answer at once (never an error, never a long wait).
    fn get(&self, namespace: &str, key: String) -> BoxFuture<Option<(V, Duration)>>;
    /// Stores `value` behind the caller's back; `born_ms` is the wall-clock time its load started.
    fn put(
        &self,
        namespace: &str,
        key: String,
        value: &V,
        tags: Vec<String>,
        born_ms: u64,
        ttl: Duration,
    );
    /// Records an invalidation (never awaited).
    fn purge(&self, namespace: &str, mark: TierMark);
}

impl<K: Key, V: Clone + Send + Sync + 'static> Inner<K, V> {
    pub(crate) fn l2_purge(&self, mark: TierMark) {
        if let Some(t) = &self.l2 {
            t.purge(&self.namespace, mark);
        }
    }

    pub(crate) fn l2_key(&self, key: &K) -> String {
        format!(
            "{}:v{}:{}",
            self.namespace,
            self.schema,
            key::escape(&key.encode())
        )
    }

    /// Writes a value just loaded from the source to the shared tier (never awaited).
    pub(crate) fn l2_put(&self, key: &K, value: &V, born_ms: u64) {
        if self.l2.is_some() {
            self.l2_put_tagged(key, value, self.tags_for(key, value), born_ms);
        }
    }

    /// Writes `value` with these tags to the shared tier, if any (never awaited).
    pub(crate) fn l2_put_tagged(&self, key: &K, value: &V, tags: Vec<String>, born_ms: u64) {
        if let Some(t) = &self.l2 {
            t.put(
                &self.namespace,
                self.l2_key(key),
                value,
                tags,
                born_ms,
                self.ttl,
            );
        }
    }
}
