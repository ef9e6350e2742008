//! Purge marks: what was purged, and at which purge sequence number.
//!
//! A purge records a mark per selector; an entry is judged against the marks only when a purge
//! happened after its fetch started. See the store's module documentation.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::RwLock;

use crate::entry::Entry;
use crate::invalidation::Mode;
use crate::key::{KeyRef, UrlTarget};
use crate::tags::Tag;

pub use crate::judge::Verdict;

/// The sequence numbers at which something was last hard- and soft-purged.
#[derive(Debug, Default)]
pub(super) struct Mark {
    hard: AtomicU64,
    soft: AtomicU64,
    /// When the mark was last raised, for pruning.
    at: parking_lot::Mutex<Option<Instant>>,
}

impl Mark {
    pub(super) fn raise(&self, seq: u64, mode: Mode) {
        let slot = match mode {
            Mode::Hard => &self.hard,
            Mode::Soft => &self.soft,
        };
        slot.fetch_max(seq, Ordering::AcqRel);
        *self.at.lock() = Some(Instant::now());
    }

    fn judge(&self, entry_seq: u64) -> Verdict {
        // Sequence 0 is never a purge's: an unraised mark covers nothing.
        let stamp = |a: &AtomicU64| Some(a.load(Ordering::Acquire)).filter(|&s| s > 0);
        crate::judge::judge_mark(entry_seq, stamp(&self.hard), stamp(&self.soft))
    }

    fn older_than(&self, horizon: Duration) -> bool {
        self.at.lock().is_none_or(|at| at.elapsed() > horizon)
    }
}

/// The purge marks, consulted only for entries older than the latest purge.
#[derive(Debug, Default)]
pub(super) struct Marks {
    /// Purges of everything that were asked for (admin, peers).
    pub(super) all: Mark,
    /// Purges of everything that stand in for events this replica missed (a sequence gap no
    /// log could fill: [`super::Store::reset`]). Judged like `all`, except for an entry a
    /// re-warm takes from a live peer (see `export.rs`).
    pub(super) reset: Mark,
    tags: DashMap<Tag, Mark, foldhash::fast::RandomState>,
    /// URL marks keyed by their target: `path?query` (every host) or `host|path?query` (one
    /// host), found by a key's [`KeyRef::path_and_query`] and [`KeyRef::target`].
    urls: DashMap<UrlTarget, Mark, foldhash::fast::RandomState>,
    pub(super) prefixes: RwLock<Vec<(Box<str>, Mark)>>,
    /// How many tag and URL marks exist: with none, judging skips hashing the entry's tags
    /// and URL (the reclaim after a purge of a million entries judges each of them twice).
    /// Kept under the map's own shard locks, and raised before the purge is published
    /// (`last_applied`), so a judge that must see a mark sees its count too.
    tag_marks: AtomicUsize,
    url_marks: AtomicUsize,
}

impl Marks {
    /// Raises the mark of `tag` to `seq`.
    pub(super) fn raise_tag(&self, tag: Tag, seq: u64, mode: Mode) {
        raise(&self.tags, tag, &self.tag_marks, seq, mode);
    }

    /// Raises the mark of a URL target to `seq`.
    pub(super) fn raise_url(&self, target: UrlTarget, seq: u64, mode: Mode) {
        raise(&self.urls, target, &self.url_marks, seq, mode);
    }

    pub(super) fn judge(&self, key: KeyRef<'_>, entry: &Entry) -> Verdict {
        self.judge_at(key, entry, entry.purge_seq(), entry.purge_seq())
    }

    /// Judges `entry` as if fetched at sequence `seq` by every mark but the resets, which
    /// judge it as if fetched at `reset_seq` (at least `seq`).
    pub(super) fn judge_at(
        &self,
        key: KeyRef<'_>,
        entry: &Entry,
        seq: u64,
        reset_seq: u64,
    ) -> Verdict {
        let mut verdict = self
            .all
            .judge(seq)
            .max(self.reset.judge(reset_seq.max(seq)));
        if self.tag_marks.load(Ordering::Acquire) > 0 {
            for tag in entry.tags() {
                if let Some(m) = self.tags.get(tag) {
                    verdict = verdict.max(m.judge(seq));
                }
            }
        }
        if self.url_marks.load(Ordering::Acquire) == 0 {
            // No URL marks: nothing to look up.
        } else {
            // A bare path's mark (every host), then this host's (either scheme).
            for target in [key.path_and_query(), key.target()] {
                if let Some(m) = self.urls.get(target) {
                    verdict = verdict.max(m.judge(seq));
                }
            }
        }
        let prefixes = self.prefixes.read();
        if !prefixes.is_empty() {
            let path = key.path();
            for (prefix, m) in prefixes.iter() {
                if path.starts_with(&**prefix) {
                    verdict = verdict.max(m.judge(seq));
                }
            }
        }
        verdict
    }

    pub(super) fn prune(&self, horizon: Duration) {
        let keep = |m: &Mark, count: &AtomicUsize| {
            let keep = !m.older_than(horizon);
            if !keep {
                count.fetch_sub(1, Ordering::AcqRel);
            }
            keep
        };
        self.tags.retain(|_, m| keep(m, &self.tag_marks));
        self.urls.retain(|_, m| keep(m, &self.url_marks));
        self.prefixes
            .write()
            .retain(|(_, m)| !m.older_than(horizon));
    }
}

/// Raises `key`'s mark in `marks` to `seq`, counting it in `count` if it is new.
fn raise<K: std::hash::Hash + Eq>(
    marks: &DashMap<K, Mark, foldhash::fast::RandomState>,
    key: K,
    count: &AtomicUsize,
    seq: u64,
    mode: Mode,
) {
    marks
        .entry(key)
        .or_insert_with(|| {
            count.fetch_add(1, Ordering::AcqRel);
            Mark::default()
        })
        .raise(seq, mode);
}
