//! # corral-cache
//!
//! Corral's cache engine, in-process, for Rust services: a typed [`Cache<K, V>`] with every
//! caching pattern, and invalidations that reach the same cache in every pod.
//!
//! | pattern | API |
//! | --- | --- |
//! | cache-aside, single-flight | [`Cache::get_with`], [`Cache::try_get_with`] (errors never cached) |
//! | read-through, negative caching | [`CacheBuilder::loader`], [`Cache::get_or_load`], [`CacheBuilder::negative_ttl`] |
//! | refresh-ahead, XFetch | [`CacheBuilder::refresh_ahead`], [`CacheBuilder::xfetch_beta`] |
//! | write-through, versioned | [`Cache::write_through`], [`Cache::insert_versioned`] (compare-and-set on the version) |
//! | write-behind | [`write_behind::WriteBehind`] (bounded, batched, flushed on shutdown; **not durable**) |
//! | invalidation | [`Cache::invalidate`], [`Cache::invalidate_tag`], [`Cache::bump_namespace`], soft variants |
//! | coherence | [`sidecar::Sidecar`] (the local Corral's feed), [`cluster::Member`] (join the cluster) or `redis_bus::BusMember` (the gateway's Redis bus; feature `redis`) |
//! | shared L2 | `redis_l2::RedisL2` and `CacheBuilder::redis_l2` (feature `redis`): L1 → Redis → loader, behind the Redis tier's breaker |
//! | verifier | [`Cache::verify_sample`], [`Cache::spawn_verifier`] (drift ratio metric) |
//! | warming | [`Cache::warm`], [`Cache::is_ready`] |
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use corral_cache::Cache;
//! use std::time::Duration;
//!
//! let prices: Cache<u64, u32> = Cache::builder("prices")
//!     .max_entries(10_000)
//!     .time_to_live(Duration::from_secs(60))
//!     .build()
//!     .unwrap();
//!
//! // Cache-aside with single-flight: concurrent callers for key 7 share one load.
//! let p = prices.get_with(7, async { 1_250 }).await;
//! assert_eq!(p, 1_250);
//! assert_eq!(prices.get(&7), Some(1_250));
//!
//! // Loader errors reach every waiter and are never cached.
//! let e = prices.try_get_with(8, async { Err::<u32, _>("db down") }).await;
//! assert_eq!(*e.unwrap_err(), "db down");
//! assert_eq!(prices.get(&8), None);
//!
//! // A versioned write never lets a slow writer overwrite a newer value.
//! assert!(prices.insert_versioned(7, 1_300, 2));
//! assert!(!prices.insert_versioned(7, 1_200, 1));
//! assert_eq!(prices.get(&7), Some(1_300));
//!
//! prices.invalidate(&7);
//! assert_eq!(prices.get(&7), None);
//! # });
//! ```
//!
//! Keys travel between pods as `/{namespace}/{key}` (percent-encoded [`Key::encode`]), tags as
//! tags and a namespace bump as the prefix `/{namespace}/`: the same invalidation events as
//! the gateway's, so a `POST /purge {"urls": ["/prices/7"]}` on any Corral sidecar of the
//! cluster drops key 7 from every pod's `prices` cache. TTL stays the safety net.

pub mod builder;
pub mod cluster;
mod invalidate;
pub mod key;
mod load;
pub mod metrics;
#[cfg(feature = "redis")]
pub mod redis_bus;
#[cfg(feature = "redis")]
pub mod redis_l2;
pub mod sidecar;
mod tier;
pub mod verifier;
pub mod warming;
pub mod write_behind;

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use corral_core::flight::{Flights, Role};
use corral_core::judge::{judge, Verdict};
use moka::ops::compute::Op;
use parking_lot::RwLock;

pub use builder::{CacheBuilder, ConfigError};
pub use corral_core::{Applier, Mode, Purge, Selectors};
pub use key::Key;
pub use metrics::LibraryMetrics;
pub(crate) use tier::{TierMark, ValueTier};

use metrics::CacheMetrics;

/// A loader's error, type-erased.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub(crate) type Loader<K, V> =
    Arc<dyn Fn(K) -> BoxFuture<Result<Option<V>, BoxError>> + Send + Sync>;
pub(crate) type Tagger<K, V> = Arc<dyn Fn(&K, &V) -> Vec<String> + Send + Sync>;
pub(crate) type Weigher<K, V> = Arc<dyn Fn(&K, &V) -> u32 + Send + Sync>;

/// A loader's error as [`Cache::get_or_load`] returns it: shared by every caller of the failed
/// load (cheap to clone), and an ordinary `std::error::Error` so `?` works.
#[derive(Debug, Clone)]
pub struct LoadError(pub Arc<BoxError>);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&**self.0, f)
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}

/// Fixed per-entry overhead added to the weigher's figure (slot, moka node, key index).
const ENTRY_OVERHEAD: u32 = 160;

/// One stored value and what the cache knows about it.
struct Slot<V> {
    /// `None`: a cached absence (negative caching).
    value: Option<V>,
    version: u64,
    /// The clock when the load (or write) that produced it started: invalidations after it
    /// cover it.
    born: u64,
    generation: u64,
    expires_at: Instant,
    /// How long the load took (XFetch's delta).
    delta: Duration,
    tags: Box<[Arc<str>]>,
    /// Soft-invalidated: serve while refreshing.
    stale: AtomicBool,
    refreshing: AtomicBool,
}

struct SlotExpiry;

impl<K, V> moka::Expiry<K, Arc<Slot<V>>> for SlotExpiry {
    fn expire_after_create(&self, _: &K, v: &Arc<Slot<V>>, now: Instant) -> Option<Duration> {
        Some(v.expires_at.saturating_duration_since(now))
    }
    fn expire_after_update(
        &self,
        _: &K,
        v: &Arc<Slot<V>>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.expires_at.saturating_duration_since(now))
    }
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    hard: u64,
    soft: u64,
    /// When the mark was last raised: a mark older than the TTL covers nothing any more.
    at: Instant,
}

/// Tag marks kept before old ones are pruned.
const MARKS_PRUNE_AT: usize = 10_000;

/// A finished load, shared with every waiter. The error is an `Arc<E>` behind `Any`.
type Outcome<V> = Result<Option<V>, Arc<dyn Any + Send + Sync>>;

/// Where a cache sends its invalidations so that other pods apply them too.
pub trait Publish: Send + Sync + 'static {
    /// Sends one invalidation (already applied locally) to the other pods.
    fn publish(&self, purge: Purge);
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) struct Inner<K, V> {
    namespace: String,
    schema: u32,
    store: moka::sync::Cache<K, Arc<Slot<V>>>,
    flights: Arc<Flights<K, Outcome<V>>>,
    tag_marks: RwLock<HashMap<Arc<str>, Mark>>,
    /// Advances on every load start, write and invalidation.
    clock: AtomicU64,
    /// The clock at the last key, prefix or whole-cache invalidation: a load that started
    /// before it is returned to its callers but not cached.
    hard_clock: AtomicU64,
    soft_all: AtomicU64,
    /// The clock at the last soft key or prefix invalidation: a load that started before it is
    /// cached as stale.
    soft_clock: AtomicU64,
    generation: AtomicU64,
    /// Highest version written per key (outlives invalidation of the entry, for its TTL).
    versions: moka::sync::Cache<K, u64>,
    ttl: Duration,
    negative_ttl: Option<Duration>,
    refresh_ahead: Option<Duration>,
    xfetch_beta: f64,
    loader: Option<Loader<K, V>>,
    tagger: Option<Tagger<K, V>>,
    pub(crate) metrics: CacheMetrics,
    publishers: RwLock<Vec<Arc<dyn Publish>>>,
    warming: AtomicUsize,
    l2: Option<Arc<dyn ValueTier<V>>>,
}

/// A typed in-process cache. Cheap to clone: clones share one cache.
pub struct Cache<K, V> {
    pub(crate) inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.namespace)
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

/// What a lookup found.
enum Found<V> {
    Hit(Option<V>),
    Miss,
}

impl<K: Key, V: Clone + Send + Sync + 'static> Cache<K, V> {
    /// A builder for a cache in `namespace` (part of every key and of every invalidation on
    /// the wire; use one namespace per kind of value).
    pub fn builder(namespace: &str) -> CacheBuilder<K, V> {
        CacheBuilder::new(namespace)
    }

    fn from_builder(b: CacheBuilder<K, V>) -> Self {
        let weigher = b.weigher.clone();
        let by_bytes = b.max_bytes.is_some();
        let mut mb = moka::sync::Cache::builder().expire_after(SlotExpiry);
        if let Some(n) = b.max_bytes.or(b.max_entries) {
            mb = mb.max_capacity(n);
        }
        if by_bytes {
            mb = mb.weigher(move |k: &K, s: &Arc<Slot<V>>| {
                let w = match (&weigher, &s.value) {
                    (Some(f), Some(v)) => f(k, v),
                    _ => (std::mem::size_of::<K>() + std::mem::size_of::<V>()) as u32,
                };
                w.saturating_add(ENTRY_OVERHEAD)
            });
        }
        if let Some(tti) = b.tti {
            mb = mb.time_to_idle(tti);
        }
        let store = mb.build();
        let mut vb = moka::sync::Cache::builder().time_to_live(b.ttl);
        if let Some(n) = b
            .max_bytes
            .map(|n| n / u64::from(ENTRY_OVERHEAD))
            .or(b.max_entries)
        {
            vb = vb.max_capacity(n.max(1024));
        }
        let metrics = CacheMetrics::new(b.metrics.unwrap_or_default(), &b.namespace);
        Cache {
            inner: Arc::new(Inner {
                namespace: b.namespace,
                schema: b.schema,
                store,
                flights: Arc::new(Flights::new()),
                tag_marks: RwLock::default(),
                clock: AtomicU64::new(1),
                hard_clock: AtomicU64::new(0),
                soft_all: AtomicU64::new(0),
                soft_clock: AtomicU64::new(0),
                generation: AtomicU64::new(0),
                versions: vb.build(),
                ttl: b.ttl,
                negative_ttl: b.negative_ttl,
                refresh_ahead: b.refresh_ahead,
                xfetch_beta: b.xfetch_beta,
                loader: b.loader,
                tagger: b.tagger,
                metrics,
                publishers: RwLock::default(),
                warming: AtomicUsize::new(0),
                l2: b.l2,
            }),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The value layout version.
    pub fn schema_version(&self) -> u32 {
        self.inner.schema
    }

    /// The namespace version: bumped by [`Cache::bump_namespace`] (and by any whole-cache
    /// invalidation, local or from another pod).
    pub fn namespace_version(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The full key of `key` where keys outlive the process: `{namespace}:v{schema}:{key}`.
    pub fn storage_key(&self, key: &K) -> String {
        format!(
            "{}:v{}:{}",
            self.inner.namespace,
            self.inner.schema,
            key::escape(&key.encode())
        )
    }

    /// The path that names `key` in invalidation events: `/{namespace}/{key}`.
    pub fn wire_path(&self, key: &K) -> String {
        format!("/{}/{}", self.inner.namespace, key::escape(&key.encode()))
    }

    /// Approximate number of entries.
    pub fn entry_count(&self) -> u64 {
        self.inner.store.entry_count()
    }

    /// Approximate weighted size (bytes when bounded by [`CacheBuilder::max_bytes`]).
    pub fn weighted_size(&self) -> u64 {
        self.inner.store.weighted_size()
    }

    /// Runs moka's pending maintenance (evictions, expirations) now. Useful in tests.
    pub fn run_pending_tasks(&self) {
        self.inner.store.run_pending_tasks();
        self.inner.update_gauges();
    }

    /// Sends this cache's invalidations to other pods through `p` (see [`sidecar`], [`cluster`]).
    pub fn attach_publisher(&self, p: Arc<dyn Publish>) {
        self.inner.publishers.write().push(p);
    }

    /// This cache as the [`Applier`] coherence transports deliver other pods' invalidations
    /// into (held weakly: a transport does not keep a dropped cache alive). Its
    /// `purge_everything` empties this process's entries only, not the shared L2: the pods
    /// that applied the missed events wrote their marks there.
    pub fn applier(&self) -> Weak<dyn Applier> {
        let a: Arc<dyn Applier> = self.inner.clone();
        Arc::downgrade(&a)
    }

    /// The cached value, if fresh (a soft-invalidated value counts only when a loader can
    /// refresh it: it is then served while a background reload runs). `None` also for a
    /// cached absence; see [`Cache::get_entry`].
    pub fn get(&self, key: &K) -> Option<V> {
        match self.inner.lookup(key) {
            Found::Hit(v) => v,
            Found::Miss => None,
        }
    }

    /// Like [`Cache::get`], but tells a cached absence (`Some(None)`) from a miss (`None`).
    pub fn get_entry(&self, key: &K) -> Option<Option<V>> {
        match self.inner.lookup(key) {
            Found::Hit(v) => Some(v),
            Found::Miss => None,
        }
    }

    /// True if `key` holds a fresh entry (no side effects on statistics or refresh).
    pub fn contains_key(&self, key: &K) -> bool {
        self.inner
            .store
            .get(key)
            .is_some_and(|s| self.inner.state(&s) == State::Fresh)
    }

    /// Cache-aside with single-flight: the value for `key`, loading it with `init` if it is
    /// not cached. Concurrent callers for one key share one load.
    pub async fn get_with(&self, key: K, init: impl Future<Output = V>) -> V {
        match self
            .inner
            .load::<std::convert::Infallible, _>(&key, async { Ok(Some(init.await)) })
            .await
        {
            Ok(Some(v)) => v,
            Ok(None) => unreachable!("get_with's loader always returns a value"),
            Err(e) => match *e {},
        }
    }

    /// Like [`Cache::get_with`] with a fallible loader: an error reaches every waiter of that
    /// load (as one shared `Arc<E>`) and is never cached; the next call loads again.
    pub async fn try_get_with<E: Send + Sync + 'static>(
        &self,
        key: K,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<V, Arc<E>> {
        match self.inner.load(&key, async { init.await.map(Some) }).await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => unreachable!("try_get_with's loader always returns a value"),
            Err(e) => Err(e),
        }
    }

    /// Like [`Cache::try_get_with`], where `Ok(None)` means "not found": cached for
    /// [`CacheBuilder::negative_ttl`] if set, else not cached.
    pub async fn try_get_optional_with<E: Send + Sync + 'static>(
        &self,
        key: K,
        init: impl Future<Output = Result<Option<V>, E>>,
    ) -> Result<Option<V>, Arc<E>> {
        self.inner.load(&key, init).await
    }

    /// Read-through: the value for `key`, loaded through the builder's
    /// [`CacheBuilder::loader`] on a miss (single-flight). `Ok(None)`: not found.
    ///
    /// # Panics
    /// If the cache was built without a loader (a programming error).
    pub async fn get_or_load(&self, key: K) -> Result<Option<V>, LoadError> {
        let loader = self
            .inner
            .loader
            .clone()
            .expect("get_or_load needs CacheBuilder::loader");
        let fut = loader(key.clone());
        self.inner.load(&key, fut).await.map_err(LoadError)
    }

    /// Stores `value` (tags from the builder's tagger). Unconditional: see
    /// [`Cache::insert_versioned`] for writes that may race.
    pub fn insert(&self, key: K, value: V) {
        let tags = self.inner.tags_for(&key, &value);
        self.insert_tagged(key, value, tags);
    }

    /// Stores `value` with these tags, here and in the shared tier if there is one (as a
    /// load would). Other pods' in-process copies are not told: see
    /// [`Cache::write_through`] for a write every pod must see.
    pub fn insert_tagged(&self, key: K, value: V, tags: Vec<String>) {
        let born = self.inner.tick();
        self.inner
            .l2_put_tagged(&key, &value, tags.clone(), now_ms());
        let slot = self.inner.slot(Some(value), 0, born, Duration::ZERO, tags);
        self.inner.store.insert(key, slot);
        self.inner.update_gauges();
    }

    /// Compare-and-set on the version: stores `value` only if no newer-or-equal version of
    /// `key` was written before (even if that entry was since invalidated or evicted, for one
    /// TTL). True if stored. A slow writer never overwrites a newer value.
    pub fn insert_versioned(&self, key: K, value: V, version: u64) -> bool {
        let tags = self.inner.tags_for(&key, &value);
        self.inner.insert_versioned(key, value, version, tags)
    }

    /// The version of the cached entry for `key` (0 for loaded or unversioned values).
    pub fn version_of(&self, key: &K) -> Option<u64> {
        self.inner.store.get(key).map(|s| s.version)
    }

    /// Write-through: writes to the source with `write` (which returns the version the
    /// source assigned, e.g. a row version or an update counter), then stores the value in
    /// this cache guarded by that version ([`Cache::insert_versioned`]), then tells the other
    /// pods to drop their copy. On a source error nothing is cached and the key is invalidated
    /// here and in every pod (the source's state is unknown).
    pub async fn write_through<E>(
        &self,
        key: K,
        value: V,
        write: impl Future<Output = Result<u64, E>>,
    ) -> Result<u64, E> {
        match write.await {
            Ok(version) => {
                let tags = self.inner.tags_for(&key, &value);
                // The shared tier may hold the old value: it is dropped there (this pod's
                // fresh copy lives in L1; the next load anywhere refills L2).
                self.inner
                    .l2_purge(TierMark::Key(key::escape(&key.encode())));
                self.inner
                    .insert_versioned(key.clone(), value, version, tags);
                self.inner.publish(Purge::hard().url(self.wire_path(&key)));
                Ok(version)
            }
            Err(e) => {
                // The source's state is unknown (the write may have landed): drop every copy.
                self.invalidate_key_inner(&key, Mode::Hard);
                Err(e)
            }
        }
    }

    /// True unless a [`Cache::warm`] is still running: use it in readiness checks.
    pub fn is_ready(&self) -> bool {
        self.inner.warming.load(Ordering::Acquire) == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    Stale,
    Dead,
}

impl<K: Key, V: Clone + Send + Sync + 'static> Inner<K, V> {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn tags_for(&self, key: &K, value: &V) -> Vec<String> {
        self.tagger
            .as_ref()
            .map(|t| t(key, value))
            .unwrap_or_default()
    }

    fn slot(
        &self,
        value: Option<V>,
        version: u64,
        born: u64,
        delta: Duration,
        tags: Vec<String>,
    ) -> Arc<Slot<V>> {
        self.slot_for(value, version, born, delta, tags, None)
    }

    fn slot_for(
        &self,
        value: Option<V>,
        version: u64,
        born: u64,
        delta: Duration,
        tags: Vec<String>,
        life: Option<Duration>,
    ) -> Arc<Slot<V>> {
        let ttl = if value.is_none() {
            self.negative_ttl.unwrap_or(Duration::ZERO)
        } else {
            life.map_or(self.ttl, |l| l.min(self.ttl))
        };
        Arc::new(Slot {
            value,
            version,
            born,
            generation: self.generation.load(Ordering::Acquire),
            expires_at: Instant::now() + ttl,
            delta,
            tags: tags.into_iter().map(Arc::from).collect(),
            stale: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
        })
    }

    fn update_gauges(&self) {
        self.metrics.entries.set(self.store.entry_count() as i64);
        self.metrics
            .weighted_size
            .set(self.store.weighted_size() as i64);
    }

    fn state(&self, s: &Slot<V>) -> State {
        if s.generation != self.generation.load(Ordering::Acquire) {
            return State::Dead;
        }
        // Ticks are event counts: core's one purge rule, with `u64` stamps.
        let mut verdict = Verdict::Fresh;
        if !s.tags.is_empty() {
            let marks = self.tag_marks.read();
            if !marks.is_empty() {
                let by_tag = (s.tags.iter().filter_map(|t| marks.get(t)))
                    .flat_map(|m| [(Mode::Hard, m.hard), (Mode::Soft, m.soft)]);
                verdict = judge(s.born, by_tag);
            }
        }
        let soft_all = self.soft_all.load(Ordering::Acquire);
        verdict = verdict.max(judge(s.born, [(Mode::Soft, soft_all)]));
        if s.stale.load(Ordering::Acquire) {
            verdict = verdict.max(Verdict::Stale);
        }
        match verdict {
            Verdict::Fresh => State::Fresh,
            Verdict::Stale => State::Stale,
            Verdict::Gone => State::Dead,
        }
    }

    fn lookup(self: &Arc<Self>, key: &K) -> Found<V> {
        let Some(slot) = self.store.get(key) else {
            self.metrics.misses.inc();
            return Found::Miss;
        };
        match self.state(&slot) {
            State::Dead => {
                self.remove_slot(key, &slot);
                self.metrics.misses.inc();
                return Found::Miss;
            }
            State::Stale => {
                if self.loader.is_some() && self.spawn_refresh(key, &slot, "soft") {
                    self.metrics.stale_served.inc();
                    return self.hit(&slot);
                }
                if slot.refreshing.load(Ordering::Acquire) {
                    self.metrics.stale_served.inc();
                    return self.hit(&slot);
                }
                self.metrics.misses.inc();
                return Found::Miss;
            }
            State::Fresh => {}
        }
        // Expiry itself is moka's (per-entry `Expiry`); the clock is read only to refresh early.
        if self.loader.is_some()
            && slot.value.is_some()
            && (self.refresh_ahead.is_some() || self.xfetch_beta > 0.0)
        {
            let now = Instant::now();
            if slot.expires_at <= now {
                self.metrics.misses.inc();
                return Found::Miss;
            }
            let left = slot.expires_at - now;
            if self.refresh_ahead.is_some_and(|w| left <= w) {
                self.spawn_refresh(key, &slot, "ahead");
            } else if self.xfetch_beta > 0.0 {
                // XFetch: refresh when now - delta * beta * ln(rand) >= expiry.
                let r: f64 = rand::random::<f64>().max(f64::MIN_POSITIVE);
                let early = slot.delta.as_secs_f64() * self.xfetch_beta * -r.ln();
                if early >= left.as_secs_f64() {
                    self.spawn_refresh(key, &slot, "xfetch");
                }
            }
        }
        self.hit(&slot)
    }

    fn hit(&self, slot: &Slot<V>) -> Found<V> {
        if slot.value.is_some() {
            self.metrics.hits.inc();
        } else {
            self.metrics.negative_hits.inc();
        }
        Found::Hit(slot.value.clone())
    }

    /// Removes `key` if it still holds `slot`.
    fn remove_slot(&self, key: &K, slot: &Arc<Slot<V>>) {
        self.store.entry(key.clone()).and_compute_with(|e| match e {
            Some(e) if Arc::ptr_eq(e.value(), slot) => Op::Remove,
            _ => Op::Nop,
        });
    }
}

#[cfg(test)]
mod tests;
