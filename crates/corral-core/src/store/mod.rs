//! The in-process store: byte-bounded, CLOCK-evicted, variants per URL, and purges that cost
//! O(1) in the entries they cover.
//!
//! # Layout
//! The `table` maps each primary key to its variant [`Entry`]s, newest first, replaced
//! copy-on-write when a variant is added. A hit is a shard read lock, an index probe and one
//! reference-count increment; no lock is held while serving and no body byte is copied. The
//! `marks` record purges.
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

mod export;
mod marks;
pub mod reclaim;
mod sketch;
mod table;
mod tag_counts;
mod timeline;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;

use crate::clock::{self, Clock};
use crate::entry::Entry;
use crate::invalidation::{Mode, Purge};
use crate::key::{Key, KeyRef, UrlTarget};
use crate::tags::Tag;

pub use export::Warmed;
pub use marks::Verdict;
use marks::{Mark, Marks};
use table::{Change, Table, Variants};
use tag_counts::TagCounts;
use timeline::Timeline;

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
    Found(Entry),
    /// The URL is stored, but no variant matches the request's `Vary`-selected headers.
    VaryMiss,
    /// Nothing stored under the key.
    Miss,
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

/// Slots a full sweep examines per shard-lock hold.
const SWEEP_STEP: usize = 4096;

/// The byte-bounded store of stored responses.
pub struct Store {
    table: Table,
    marks: Marks,
    /// The purge sequence: the number of the latest purge begun.
    seq: AtomicU64,
    /// The number of the latest purge whose marks are fully written.
    last_applied: AtomicU64,
    /// Live entries per tag, for purge counts.
    tag_counts: TagCounts,
    /// The longest usable life ever stored, in seconds: marks older than it are dead.
    longest_life: AtomicU64,
    /// The hosts keys were stored under, so that a purge of a bare path counts what it
    /// covers with one lookup per host instead of a scan. `None` once more than
    /// [`MAX_HOSTS`] were seen (then it scans). Never shrinks: a host with no entries left
    /// costs one lookup that finds nothing.
    hosts: parking_lot::RwLock<Option<Vec<Box<str>>>>,
    /// When recent purges were applied, for entries fetched elsewhere (warm-up).
    timeline: Timeline,
    /// The sequence number of the latest [`Store::reset`] (0: none).
    last_reset: AtomicU64,
    config: StoreConfig,
    /// Where lookups, inserts and the sweep read the time (see [`crate::clock`]).
    clock: Arc<dyn Clock>,
}

/// Hosts tracked for counting URL purges; beyond that, counting scans.
const MAX_HOSTS: usize = 64;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.table.len())
            .field("bytes", &self.table.bytes())
            .finish()
    }
}

impl Store {
    /// A store bounded to `config.max_bytes`.
    pub fn new(config: StoreConfig) -> Store {
        Store::with_clock(config, clock::system())
    }

    /// A store bounded to `config.max_bytes` that reads the time from `clock`.
    pub fn with_clock(config: StoreConfig, clock: Arc<dyn Clock>) -> Store {
        Store {
            table: Table::new(config.max_bytes, clock.clone()),
            marks: Marks::default(),
            seq: AtomicU64::new(0),
            last_applied: AtomicU64::new(0),
            tag_counts: TagCounts::default(),
            longest_life: AtomicU64::new(0),
            hosts: parking_lot::RwLock::new(Some(Vec::new())),
            timeline: Timeline::default(),
            last_reset: AtomicU64::new(0),
            config,
            clock,
        }
    }

    /// The time now, by this store's clock: what every freshness computation on its entries
    /// must use.
    #[inline]
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// This store's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The purge sequence now. Take it when a fetch starts and give it to the [`Entry`].
    pub fn purge_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Looks up the variant of `key` that `request` selects.
    ///
    /// Expired variants are skipped; purged ones are judged here (hard: skipped and dropped,
    /// soft: marked). Several matching variants resolve to the newest (RFC 9111 §4.1).
    pub fn lookup(&self, key: KeyRef<'_>, request: &HeaderMap) -> Lookup {
        let mut gone = false;
        let found = self.table.read(key, |variants| {
            let now = self.clock.now();
            let last = self.last_applied.load(Ordering::Acquire);
            let mut live_other_variant = false;
            for entry in variants {
                if entry.expires_at() <= now {
                    continue;
                }
                let verdict = if entry.purge_seq() < last {
                    self.marks.judge(key, entry)
                } else {
                    Verdict::Fresh
                };
                if verdict == Verdict::Gone {
                    gone = true;
                    continue;
                }
                if !entry.variant().matches(request) {
                    live_other_variant = true;
                    continue;
                }
                if verdict == Verdict::Stale {
                    entry.mark_soft_purged();
                }
                return Lookup::Found(entry.clone());
            }
            if live_other_variant {
                Lookup::VaryMiss
            } else {
                Lookup::Miss
            }
        });
        if gone {
            self.drop_gone(key);
        }
        found.unwrap_or(Lookup::Miss)
    }

    /// Stores `entry` under the key it was built for, replacing the variant it matches (same
    /// selecting header values), keeping at most `max_variants`. Returns the entry as shared;
    /// an entry that a purge issued during its fetch already covers, one larger than the whole
    /// bound, and a new key that admission refuses (it was asked for less often lately than
    /// what it would evict: see `table`) are returned but not stored.
    pub fn insert(&self, entry: Entry, max_variants: usize) -> Entry {
        self.offer(&entry, max_variants);
        entry
    }

    /// [`Store::insert`]'s work: stores `entry` unless it is covered or too large.
    fn offer(&self, entry: &Entry, max_variants: usize) {
        let key = entry.key();
        if entry.purge_seq() < self.last_applied.load(Ordering::Acquire) {
            match self.marks.judge(key, entry) {
                Verdict::Gone => return,
                Verdict::Stale => entry.mark_soft_purged(),
                Verdict::Fresh => {}
            }
        }
        if entry.size() as u64 > self.config.max_bytes {
            return;
        }
        let now = self.clock.now();
        let life = entry.expires_at().duration_since(now).unwrap_or_default();
        self.longest_life
            .fetch_max(life.as_secs(), Ordering::Relaxed);
        self.note_host(key);
        let mut stored = Vec::new();
        let gone = self.table.update(key, |old| {
            let mut variants = vec![entry.clone()];
            variants.extend(
                old.iter()
                    .filter(|e| e.variant() != entry.variant() && e.expires_at() > now)
                    .take(max_variants.saturating_sub(1))
                    .cloned(),
            );
            stored.clone_from(&variants);
            Change::Set(variants)
        });
        self.count_tags(&stored, 1);
        self.forget(gone);
    }

    fn note_host(&self, key: KeyRef<'_>) {
        let host = key.host();
        let known = |hosts: &Option<Vec<Box<str>>>| {
            hosts
                .as_ref()
                .is_none_or(|h| h.iter().any(|h| **h == *host))
        };
        if known(&self.hosts.read()) {
            return;
        }
        let mut hosts = self.hosts.write();
        if known(&hosts) {
            return;
        }
        match hosts.as_mut() {
            Some(h) if h.len() < MAX_HOSTS => h.push(host.into()),
            _ => *hosts = None,
        }
    }

    /// Purges everything because invalidations were missed (a sequence gap that no peer's log
    /// could fill), not because anyone asked: it covers every entry as a purge of everything
    /// does, but an entry re-warmed from a live peer afterwards is not judged by it
    /// ([`Store::insert_rewarmed`]), since it only stands in for purges that peer applied.
    pub fn reset(&self) -> PurgeOutcome {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.marks.reset.raise(seq, Mode::Hard);
        self.last_reset.fetch_max(seq, Ordering::AcqRel);
        self.last_applied.fetch_max(seq, Ordering::AcqRel);
        self.timeline.record(self.clock.now(), seq);
        PurgeOutcome {
            seq,
            covered: self.table.len() as usize,
        }
    }

    /// The sequence number of the latest [`Store::reset`]; 0 if there was none.
    pub fn last_reset(&self) -> u64 {
        self.last_reset.load(Ordering::Acquire)
    }

    /// Applies a purge. Returns at once: covered entries become invisible (hard) or stale (soft)
    /// immediately, and their memory is reclaimed by the next [`Store::reclaim`].
    pub fn purge(&self, purge: &Purge) -> PurgeOutcome {
        let Purge { selectors, mode } = purge;
        let mode = *mode;
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let mut covered = 0;
        if selectors.all {
            self.marks.all.raise(seq, mode);
            covered = self.table.len() as usize;
        }
        for tag in &selectors.tags {
            covered += self.tag_counts.get(tag);
            self.marks.raise_tag(Tag::from(tag.as_str()), seq, mode);
        }
        for url in &selectors.urls {
            if let Some(target) = UrlTarget::parse(url) {
                self.marks.raise_url(target, seq, mode);
            }
        }
        // Prefixes are normalised as request paths are (`/%7euser/` covers `/~user/...`).
        let normalized: Vec<String> = selectors
            .prefixes
            .iter()
            .map(|p| crate::target::normalize_prefix(p).unwrap_or_else(|| p.clone()))
            .collect();
        if !normalized.is_empty() {
            let mut prefixes = self.marks.prefixes.write();
            for p in &normalized {
                match prefixes.iter().position(|(q, _)| **q == **p) {
                    Some(i) => prefixes[i].1.raise(seq, mode),
                    None => {
                        let m = Mark::default();
                        m.raise(seq, mode);
                        prefixes.push((p.clone().into_boxed_str(), m));
                    }
                }
            }
        }
        self.last_applied.fetch_max(seq, Ordering::AcqRel);
        self.timeline.record(self.clock.now(), seq);
        covered += self.count_urls(&selectors.urls);
        if !normalized.is_empty() {
            covered += self.count_scanning(&[], &normalized);
        }
        PurgeOutcome { seq, covered }
    }

    /// How many stored variants the URL purge targets cover: a lookup for a URL with a host,
    /// one per known host for a bare path (a scan if there are too many hosts to know).
    fn count_urls(&self, urls: &[String]) -> usize {
        let mut covered = 0;
        let mut unknown = Vec::new();
        let hosts = self.hosts.read();
        let variants_on = |target: &UrlTarget, host: &str| {
            (target.keys_on(host).iter())
                .map(|k| self.table.variants_of(k.view()))
                .sum::<usize>()
        };
        for target in urls.iter().filter_map(|u| UrlTarget::parse(u)) {
            match (target.host(), hosts.as_ref()) {
                (Some(host), _) => covered += variants_on(&target, host),
                (None, Some(hosts)) => {
                    covered += hosts.iter().map(|h| variants_on(&target, h)).sum::<usize>();
                }
                (None, None) => unknown.push(target),
            }
        }
        drop(hosts);
        if !unknown.is_empty() {
            covered += self.count_scanning(&unknown, &[]);
        }
        covered
    }

    /// Counts by scanning every key: URL targets and path prefixes. O(entries).
    fn count_scanning(&self, targets: &[UrlTarget], prefixes: &[String]) -> usize {
        let mut covered = 0;
        let visit = |k: KeyRef<'_>, variants: &[Entry]| {
            let path = k.path();
            let hit = targets.iter().any(|t| k.is_covered_by(t))
                || prefixes.iter().any(|p| path.starts_with(p.as_str()));
            if hit {
                covered += variants.len();
            }
        };
        self.table.for_each(visit, &mut || {});
        covered
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
    pub fn purged_keys(&self) -> Vec<Key> {
        self.purged_keys_paced(&mut std::thread::yield_now)
    }

    /// [`Store::purged_keys`], calling `pause` every thousand or so slots (never under a
    /// lock): a server sleeps there, to keep the scan to a fraction of a core.
    pub fn purged_keys_paced(&self, pause: &mut dyn FnMut()) -> Vec<Key> {
        let last = self.last_applied.load(Ordering::Acquire);
        let mut keys = Vec::new();
        let visit = |key: KeyRef<'_>, variants: &[Entry]| {
            let purged = variants
                .iter()
                .any(|e| e.purge_seq() < last && self.marks.judge(key, e) == Verdict::Gone);
            if purged {
                keys.push(key.to_key());
            }
        };
        self.table.for_each(visit, pause);
        keys
    }

    /// Removes the hard-purged variants of `keys`; returns how many went.
    pub fn reclaim_keys(&self, keys: &[Key]) -> usize {
        keys.iter().map(|k| self.drop_gone(k.view())).sum()
    }

    /// Forgets marks that can no longer cover anything.
    pub fn prune_marks(&self) {
        let horizon = Duration::from_secs(self.longest_life.load(Ordering::Relaxed))
            + self.config.fetch_horizon;
        self.marks.prune(horizon);
    }

    /// Removes the hard-purged variants of `key`; returns how many went.
    fn drop_gone(&self, key: KeyRef<'_>) -> usize {
        let last = self.last_applied.load(Ordering::Acquire);
        let mut removed = 0;
        let mut kept = Vec::new();
        let gone = self.table.update(key, |old| {
            let keep: Vec<Entry> = old
                .iter()
                .filter(|e| e.purge_seq() >= last || self.marks.judge(key, e) != Verdict::Gone)
                .cloned()
                .collect();
            removed = old.len() - keep.len();
            if removed == 0 {
                return Change::Keep;
            }
            kept.clone_from(&keep);
            Change::Set(keep)
        });
        self.count_tags(&kept, 1);
        self.forget(gone);
        removed
    }

    /// Removes every variant of `key` now (no mark: for callers that know no fill is racing).
    pub fn remove(&self, key: KeyRef<'_>) {
        let gone = self.table.update(key, |_| Change::Set(Vec::new()));
        self.forget(gone);
    }

    /// Number of stored URLs (each may hold several variants).
    pub fn entry_count(&self) -> u64 {
        self.table.len()
    }

    /// Bytes charged against the bound.
    pub fn weighted_size(&self) -> u64 {
        self.table.bytes()
    }

    /// The configured byte bound.
    pub fn max_bytes(&self) -> u64 {
        self.config.max_bytes
    }

    /// New keys that admission refused since start (asked for less often lately than what
    /// they would have evicted).
    pub fn admissions_refused(&self) -> u64 {
        self.table.admissions_refused()
    }

    /// Removes the URLs whose every variant has expired: the whole store, a bounded step at a
    /// time (O(entries): for tests and tools; servers call [`Store::sweep_expired`]).
    pub fn run_pending_tasks(&self) {
        // One lap: every slot once, wherever the cursor stands.
        let mut left = self.table.capacity() + table::SHARDS;
        while left > 0 {
            let step = left.min(SWEEP_STEP);
            self.forget(self.table.sweep_expired(step));
            left -= step;
        }
    }

    /// Removes the URLs whose every variant has expired among the next `budget` slots of a
    /// sweep that goes round the store; returns how many went. Eviction takes expired entries
    /// first whenever it needs room; sweeping a few thousand slots every second frees their
    /// memory and keeps the counts honest in between, without ever holding a lock for long.
    pub fn sweep_expired(&self, budget: usize) -> usize {
        let gone = self.table.sweep_expired(budget);
        let n = gone.len();
        self.forget(gone);
        n
    }

    /// Accounts for variant lists that left the table: their tags no longer count.
    fn forget(&self, gone: Vec<Variants>) {
        for variants in gone {
            self.count_tags(variants.as_slice(), -1);
        }
    }

    fn count_tags(&self, entries: &[Entry], delta: i64) {
        for t in entries.iter().flat_map(|e| e.tags()) {
            if delta > 0 {
                self.tag_counts.add(t);
            } else {
                self.tag_counts.remove(t);
            }
        }
    }
}

#[cfg(test)]
mod tests;
