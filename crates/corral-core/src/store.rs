//! The in-process store: byte-bounded, TinyLFU-admitted (moka), variants per URL, and purges
//! that cost O(1) in the entries they cover.
//!
//! # Layout
//! One moka entry per primary key holds a [`Resource`]: an immutable list of variant
//! [`Entry`]s, newest first, replaced copy-on-write when a variant is added. A hit is a map
//! read plus two reference-count increments; no lock is held while serving and no body byte is
//! copied.
//!
//! # Purges are lazy
//! Every purge takes the next number of a store-wide **purge sequence** and records a *mark*
//! (per tag, per URL, per prefix, or for everything) carrying that number. Each entry carries the
//! sequence number current when the fetch that produced it *started*. A lookup judges an entry
//! against the marks only when some purge happened after its fetch started (one atomic load
//! decides that on the hit path), so a purge is O(selectors), whatever it covers. Memory is
//! reclaimed afterwards by [`Store::reclaim`], a background sweep. Because entries are judged by
//! when their fetch *started*, a fill that was in flight when a purge arrived is judged too: it
//! can never resurrect what the purge removed.
//!
//! Marks are dropped once no entry old enough to be covered can exist any more (older than the
//! longest usable life ever stored, plus the fetch horizon).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use http::HeaderMap;
use parking_lot::RwLock;

use crate::entry::Entry;
use crate::invalidation::Selectors;
use crate::key::{key_parts, key_path};
use crate::tags::Tag;

/// The variants stored under one primary key, newest first.
#[derive(Debug, Default)]
pub struct Resource {
    pub variants: Box<[Arc<Entry>]>,
}

impl Resource {
    fn weight(&self, key: &str) -> u32 {
        let bytes: usize = key.len() + self.variants.iter().map(|e| e.size).sum::<usize>();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    fn expires_at(&self) -> SystemTime {
        self.variants
            .iter()
            .map(|e| e.expires_at)
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// Store sizing.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The byte bound, counting bodies, headers, keys, tags and bookkeeping.
    pub max_bytes: u64,
    /// How long a fetch may take at most: marks are kept at least this long so an in-flight
    /// fill is judged against them.
    pub fetch_horizon: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_bytes: 256 << 20,
            fetch_horizon: Duration::from_secs(600),
        }
    }
}

/// The result of looking a request up.
#[derive(Debug)]
pub enum Lookup {
    /// A stored variant matches the request. It may be soft-purged ([`Entry::is_soft_purged`]).
    Found(Arc<Entry>),
    /// The URL is stored, but no variant matches the request's `Vary`-selected headers.
    VaryMiss,
    /// Nothing stored under the key.
    Miss,
}

/// How a purge mark judges an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Judgement {
    Valid,
    Soft,
    Gone,
}

/// What [`Store::purge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeOutcome {
    /// The purge sequence number this purge took.
    pub seq: u64,
    /// How many stored entries the purge covered when it was applied. Exact for URLs and
    /// `all`; for tags, the store's live count per tag; for prefixes, a scan of the keys.
    pub covered: usize,
}

/// The sequence numbers at which something was last hard- and soft-purged.
#[derive(Debug, Default)]
struct Mark {
    hard: AtomicU64,
    soft: AtomicU64,
    /// When the mark was last raised, for pruning.
    at: parking_lot::Mutex<Option<Instant>>,
}

impl Mark {
    fn raise(&self, seq: u64, soft: bool) {
        let slot = if soft { &self.soft } else { &self.hard };
        slot.fetch_max(seq, Ordering::AcqRel);
        *self.at.lock() = Some(Instant::now());
    }

    fn judge(&self, entry_seq: u64) -> Judgement {
        if self.hard.load(Ordering::Acquire) > entry_seq {
            Judgement::Gone
        } else if self.soft.load(Ordering::Acquire) > entry_seq {
            Judgement::Soft
        } else {
            Judgement::Valid
        }
    }

    fn older_than(&self, horizon: Duration) -> bool {
        self.at.lock().is_none_or(|at| at.elapsed() > horizon)
    }
}

/// The purge marks, consulted only for entries older than the latest purge.
#[derive(Debug, Default)]
struct Marks {
    all: Mark,
    tags: DashMap<Tag, Mark, foldhash::fast::RandomState>,
    /// URL marks keyed by `path?query` (every host) or `host|path?query` (one host).
    urls: DashMap<Box<str>, Mark, foldhash::fast::RandomState>,
    prefixes: RwLock<Vec<(Box<str>, Mark)>>,
}

impl Marks {
    fn judge(&self, key: &str, entry: &Entry) -> Judgement {
        let seq = entry.purge_seq;
        let mut verdict = self.all.judge(seq);
        for tag in entry.tags.iter() {
            if let Some(m) = self.tags.get(tag) {
                verdict = verdict.max(m.judge(seq));
            }
        }
        if let Some(parts) = key_parts(key) {
            if let Some(m) = self.urls.get(parts.path_and_query) {
                verdict = verdict.max(m.judge(seq));
            }
            let host_key = &key[2..]; // strip the method class: "host|path?query"
            if let Some(m) = self.urls.get(host_key) {
                verdict = verdict.max(m.judge(seq));
            }
        }
        let prefixes = self.prefixes.read();
        if !prefixes.is_empty() {
            let path = key_path(key);
            for (prefix, m) in prefixes.iter() {
                if path.starts_with(&**prefix) {
                    verdict = verdict.max(m.judge(seq));
                }
            }
        }
        verdict
    }

    fn prune(&self, horizon: Duration) {
        self.tags.retain(|_, m| !m.older_than(horizon));
        self.urls.retain(|_, m| !m.older_than(horizon));
        self.prefixes
            .write()
            .retain(|(_, m)| !m.older_than(horizon));
    }
}

/// Splits a purge URL into the mark key it raises: `path?query` for a bare path (every host),
/// `host|path?query` for an absolute URL. `None` for anything else.
pub fn url_target(url: &str) -> Option<String> {
    if url.starts_with('/') {
        return Some(normalize_path_and_query(url));
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return None;
    }
    Some(format!(
        "{}|{}",
        host.to_ascii_lowercase(),
        normalize_path_and_query(path)
    ))
}

/// Sorts the query and drops empty parameters, as every key does, so a purge URL matches
/// whatever order its parameters were given in.
fn normalize_path_and_query(pq: &str) -> String {
    match pq.split_once('?') {
        None => pq.to_string(),
        Some((path, query)) => {
            let q = crate::key::QueryPolicy::default().normalize(query);
            if q.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{q}")
            }
        }
    }
}

/// The byte-bounded store of stored responses.
pub struct Store {
    resources: moka::sync::Cache<Arc<str>, Arc<Resource>, foldhash::fast::RandomState>,
    marks: Arc<Marks>,
    /// The purge sequence: the number of the latest purge begun.
    seq: AtomicU64,
    /// The number of the latest purge whose marks are fully written.
    last_applied: AtomicU64,
    /// Live entries per tag, for purge counts.
    tag_counts: Arc<DashMap<Tag, i64, foldhash::fast::RandomState>>,
    /// The longest usable life ever stored, in seconds: marks older than it are dead.
    longest_life: AtomicU64,
    config: StoreConfig,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.resources.entry_count())
            .field("bytes", &self.resources.weighted_size())
            .finish()
    }
}

struct ResourceExpiry;

impl moka::Expiry<Arc<str>, Arc<Resource>> for ResourceExpiry {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<Resource>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(
            value
                .expires_at()
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        )
    }

    fn expire_after_update(
        &self,
        key: &Arc<str>,
        value: &Arc<Resource>,
        now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, now)
    }
}

impl Store {
    /// A store bounded to `config.max_bytes`.
    pub fn new(config: StoreConfig) -> Store {
        let tag_counts: Arc<DashMap<Tag, i64, _>> = Arc::default();
        let counts = tag_counts.clone();
        let resources = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|k: &Arc<str>, v: &Arc<Resource>| v.weight(k))
            .expire_after(ResourceExpiry)
            .eviction_listener(move |_k, v: Arc<Resource>, _cause| {
                adjust_counts(&counts, &v, -1);
            })
            .build_with_hasher(foldhash::fast::RandomState::default());
        Store {
            resources,
            marks: Arc::default(),
            seq: AtomicU64::new(0),
            last_applied: AtomicU64::new(0),
            tag_counts,
            longest_life: AtomicU64::new(0),
            config,
        }
    }

    /// The purge sequence now. Take it when a fetch starts and give it to the [`Entry`].
    pub fn purge_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Looks up the variant of `key` that `request` selects.
    ///
    /// Expired variants are skipped; purged ones are judged here (hard: skipped and dropped,
    /// soft: marked). Several matching variants resolve to the newest (RFC 9111 §4.1).
    pub fn lookup(&self, key: &str, request: &HeaderMap) -> Lookup {
        let Some(resource) = self.resources.get(key) else {
            return Lookup::Miss;
        };
        let now = SystemTime::now();
        let last = self.last_applied.load(Ordering::Acquire);
        let mut gone = false;
        let mut live_other_variant = false;
        for entry in resource.variants.iter() {
            if entry.expires_at <= now {
                continue;
            }
            let judgement = if entry.purge_seq < last {
                self.marks.judge(key, entry)
            } else {
                Judgement::Valid
            };
            if judgement == Judgement::Gone {
                gone = true;
                continue;
            }
            if !entry.variant.matches(request) {
                live_other_variant = true;
                continue;
            }
            if judgement == Judgement::Soft {
                entry.mark_soft_purged();
            }
            return Lookup::Found(entry.clone());
        }
        if gone {
            self.drop_gone(key);
        }
        if live_other_variant {
            Lookup::VaryMiss
        } else {
            Lookup::Miss
        }
    }

    /// Stores `entry` under `key`, replacing the variant it matches (same selecting header
    /// values), keeping at most `max_variants`. Returns the entry as shared; an entry that a
    /// purge issued during its fetch already covers is returned but not stored.
    pub fn insert(&self, key: &str, mut entry: Entry, max_variants: usize) -> Arc<Entry> {
        self.intern_tags(&mut entry);
        let entry = Arc::new(entry);
        if entry.purge_seq < self.last_applied.load(Ordering::Acquire) {
            match self.marks.judge(key, &entry) {
                Judgement::Gone => return entry,
                Judgement::Soft => entry.mark_soft_purged(),
                Judgement::Valid => {}
            }
        }
        let life = entry
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        self.longest_life
            .fetch_max(life.as_secs(), Ordering::Relaxed);
        let now = SystemTime::now();
        let added = entry.clone();
        let key: Arc<str> = Arc::from(key);
        let counts = &self.tag_counts;
        self.resources.entry(key).and_upsert_with(|old| {
            let mut variants = vec![added.clone()];
            if let Some(old) = old {
                variants.extend(
                    old.value()
                        .variants
                        .iter()
                        .filter(|e| e.variant != added.variant && e.expires_at > now)
                        .take(max_variants.saturating_sub(1))
                        .cloned(),
                );
            }
            let resource = Arc::new(Resource {
                variants: variants.into_boxed_slice(),
            });
            adjust_counts(counts, &resource, 1);
            resource
        });
        entry
    }

    /// Shares one allocation per tag name among every entry carrying it: a tag like
    /// `packages` on a million entries is stored once, not a million times.
    fn intern_tags(&self, entry: &mut Entry) {
        for tag in entry.tags.iter_mut() {
            if let Some(known) = self.tag_counts.get(&*tag) {
                *tag = known.key().clone();
            }
        }
    }

    /// Replaces `old` by `new` if `old` is still the stored variant (after a revalidation).
    pub fn replace(&self, key: &str, new: Entry, max_variants: usize) -> Arc<Entry> {
        self.insert(key, new, max_variants)
    }

    /// Applies a purge. Returns at once: covered entries become invisible (hard) or stale (soft)
    /// immediately, and their memory is reclaimed by the next [`Store::reclaim`].
    pub fn purge(&self, selectors: &Selectors, soft: bool) -> PurgeOutcome {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let mut covered = 0;
        if selectors.all {
            self.marks.all.raise(seq, soft);
            covered = self.resources.entry_count() as usize;
        }
        for tag in &selectors.tags {
            let tag: Tag = Arc::from(tag.as_str());
            covered += self
                .tag_counts
                .get(&tag)
                .map_or(0, |c| (*c).max(0) as usize);
            self.marks.tags.entry(tag).or_default().raise(seq, soft);
        }
        for url in &selectors.urls {
            if let Some(target) = url_target(url) {
                self.marks
                    .urls
                    .entry(target.into_boxed_str())
                    .or_default()
                    .raise(seq, soft);
            }
        }
        if !selectors.prefixes.is_empty() {
            let mut prefixes = self.marks.prefixes.write();
            for p in &selectors.prefixes {
                match prefixes.iter().position(|(q, _)| **q == **p) {
                    Some(i) => prefixes[i].1.raise(seq, soft),
                    None => {
                        let m = Mark::default();
                        m.raise(seq, soft);
                        prefixes.push((p.clone().into_boxed_str(), m));
                    }
                }
            }
        }
        self.last_applied.fetch_max(seq, Ordering::AcqRel);
        if !selectors.urls.is_empty() || !selectors.prefixes.is_empty() {
            covered += self.count_urls_and_prefixes(selectors);
        }
        PurgeOutcome { seq, covered }
    }

    fn count_urls_and_prefixes(&self, selectors: &Selectors) -> usize {
        let targets: Vec<String> = selectors
            .urls
            .iter()
            .filter_map(|u| url_target(u))
            .collect();
        self.resources
            .iter()
            .filter(|(k, _)| {
                let Some(parts) = key_parts(k) else {
                    return false;
                };
                let path = key_path(k);
                targets
                    .iter()
                    .any(|t| **t == *parts.path_and_query || **t == k[2..])
                    || selectors
                        .prefixes
                        .iter()
                        .any(|p| path.starts_with(p.as_str()))
            })
            .map(|(_, r)| r.variants.len())
            .sum()
    }

    /// Drops from memory every entry a hard purge covers, and forgets marks that can no longer
    /// cover anything. O(entries), all at once: for tests and tools. Servers use
    /// [`Store::purged_keys`] and [`Store::reclaim_keys`] in small steps instead.
    pub fn reclaim(&self) -> usize {
        let keys = self.purged_keys();
        let n = self.reclaim_keys(&keys);
        self.prune_marks();
        n
    }

    /// The keys holding at least one hard-purged variant (a read-only scan).
    pub fn purged_keys(&self) -> Vec<Arc<str>> {
        let last = self.last_applied.load(Ordering::Acquire);
        self.resources
            .iter()
            .filter(|(key, resource)| {
                resource
                    .variants
                    .iter()
                    .any(|e| e.purge_seq < last && self.marks.judge(key, e) == Judgement::Gone)
            })
            .map(|(key, _)| (*key).clone())
            .collect()
    }

    /// Removes the hard-purged variants of `keys`; returns how many went.
    pub fn reclaim_keys(&self, keys: &[Arc<str>]) -> usize {
        keys.iter().map(|k| self.drop_gone(k)).sum()
    }

    /// Forgets marks that can no longer cover anything, and runs pending housekeeping.
    pub fn prune_marks(&self) {
        let horizon = Duration::from_secs(self.longest_life.load(Ordering::Relaxed))
            + self.config.fetch_horizon;
        self.marks.prune(horizon);
        self.resources.run_pending_tasks();
    }

    /// Removes the hard-purged variants of `key`; returns how many went.
    fn drop_gone(&self, key: &str) -> usize {
        let last = self.last_applied.load(Ordering::Acquire);
        let marks = &self.marks;
        let mut removed = 0;
        let counts = &self.tag_counts;
        self.resources
            .entry(Arc::from(key))
            .and_compute_with(|old| {
                let Some(old) = old else {
                    return moka::ops::compute::Op::Nop;
                };
                let keep: Vec<Arc<Entry>> = old
                    .value()
                    .variants
                    .iter()
                    .filter(|e| e.purge_seq >= last || marks.judge(key, e) != Judgement::Gone)
                    .cloned()
                    .collect();
                removed = old.value().variants.len() - keep.len();
                if removed == 0 {
                    moka::ops::compute::Op::Nop
                } else if keep.is_empty() {
                    moka::ops::compute::Op::Remove
                } else {
                    let r = Arc::new(Resource {
                        variants: keep.into_boxed_slice(),
                    });
                    adjust_counts(counts, &r, 1);
                    moka::ops::compute::Op::Put(r)
                }
            });
        removed
    }

    /// Removes every variant of `key` now (no mark: for callers that know no fill is racing).
    pub fn remove(&self, key: &str) {
        self.resources.invalidate(key);
    }

    /// Number of stored URLs (each may hold several variants). Approximate between
    /// maintenance runs.
    pub fn entry_count(&self) -> u64 {
        self.resources.entry_count()
    }

    /// Bytes charged against the bound. Approximate between maintenance runs.
    pub fn weighted_size(&self) -> u64 {
        self.resources.weighted_size()
    }

    /// The configured byte bound.
    pub fn max_bytes(&self) -> u64 {
        self.config.max_bytes
    }

    /// Runs the store's pending housekeeping (eviction, expiry) now.
    pub fn run_pending_tasks(&self) {
        self.resources.run_pending_tasks();
    }
}

fn adjust_counts(
    counts: &DashMap<Tag, i64, foldhash::fast::RandomState>,
    resource: &Resource,
    delta: i64,
) {
    for e in resource.variants.iter() {
        for t in e.tags.iter() {
            if delta > 0 {
                *counts.entry(t.clone()).or_insert(0) += delta;
            } else if let Some(mut c) = counts.get_mut(t) {
                *c += delta;
                if *c <= 0 {
                    drop(c);
                    counts.remove_if(t, |_, c| *c <= 0);
                }
            }
        }
    }
}
