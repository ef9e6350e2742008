//! What a replica donates to a peer that warms up from it: its hottest live entries.

use std::time::{Duration, SystemTime};

use super::{Store, Verdict};
use crate::entry::{wire, Entry};
use crate::key::KeyRef;

/// What became of an entry received from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warmed {
    /// Offered to the store like a fill (a new key still passes admission).
    Stored,
    /// Its fetch started before a purge applied here that covers it (hard or soft).
    Purged,
    /// No longer usable by this store's clock.
    Expired,
}

impl Store {
    /// The hottest live entries, hottest first, at most `max_entries` of them and at most
    /// `max_bytes` of bodies and headers together: ranked by the admission sketch's recent
    /// request counts (every variant of a key ranks with it). Expired and purged entries are
    /// left out (a soft-purged one too: the receiver would serve it as fresh). A read-only
    /// scan, one shard's read lock at a time; the entries are shared, not copied.
    pub fn hottest(&self, max_entries: usize, max_bytes: u64) -> Vec<Entry> {
        let now = self.clock.now();
        let last = self.last_applied.load(std::sync::atomic::Ordering::Acquire);
        let mut ranked: Vec<(u8, Entry)> = Vec::new();
        let visit = |key: KeyRef<'_>, variants: &[Entry]| {
            let heat = self.table.frequency(key);
            for e in variants {
                let live = e.expires_at() > now
                    && !e.is_soft_purged()
                    && (e.purge_seq() >= last || self.marks.judge(key, e) == Verdict::Fresh);
                if live {
                    ranked.push((heat, e.clone()));
                }
            }
        };
        self.table.for_each(visit, &mut std::thread::yield_now);
        ranked.sort_by_key(|(heat, _)| std::cmp::Reverse(*heat));
        let mut bytes = 0u64;
        ranked
            .into_iter()
            .map(|(_, e)| e)
            .take(max_entries)
            .take_while(|e| {
                bytes += e.size() as u64;
                bytes <= max_bytes
            })
            .collect()
    }

    /// Stores an entry a peer sent, judged as if its fetch had started here at
    /// `fetch_started - allowance` (the allowance covers the two clocks' disagreement): every
    /// purge applied here since then that covers it refuses it, so nothing purged here can
    /// come back through a peer that had not applied the purge yet.
    pub fn insert_warmed(
        &self,
        record: wire::Record<'_>,
        allowance: Duration,
        max_variants: usize,
    ) -> Warmed {
        self.warm(record, allowance, max_variants, None)
    }

    /// Stores an entry a live peer sent after [`Store::reset`] number `reset` (its snapshot
    /// was taken after the reset): judged as [`Store::insert_warmed`] judges, by every purge
    /// applied here since its fetch started, but not by the resets up to `reset`. A reset
    /// stands in for purges this replica missed and its live peers applied, so what such a
    /// peer still holds valid survived them; a purge this replica did apply still refuses
    /// it, as does a later reset (its snapshot may predate what that one stands in for).
    pub fn insert_rewarmed(
        &self,
        record: wire::Record<'_>,
        allowance: Duration,
        max_variants: usize,
        reset: u64,
    ) -> Warmed {
        self.warm(record, allowance, max_variants, Some(reset))
    }

    fn warm(
        &self,
        record: wire::Record<'_>,
        allowance: Duration,
        max_variants: usize,
        reset: Option<u64>,
    ) -> Warmed {
        let started = record.fetch_started().checked_sub(allowance);
        let seq = self.seq_before(started.unwrap_or(SystemTime::UNIX_EPOCH));
        // Stored past the reset it answers, so that reset never covers it on a lookup; what
        // lies between `seq` and that number is judged now, once.
        let stored_seq = reset.map_or(seq, |r| r.max(seq));
        let entry = record.into_entry(stored_seq);
        if entry.expires_at() <= self.clock.now() {
            return Warmed::Expired;
        }
        let last = self.last_applied.load(std::sync::atomic::Ordering::Acquire);
        if seq < last {
            match self.marks.judge_at(entry.key(), &entry, seq, stored_seq) {
                Verdict::Fresh => {}
                // Soft or hard: the donor would have served it as fresh.
                _ => return Warmed::Purged,
            }
        }
        self.offer(&entry, max_variants);
        Warmed::Stored
    }

    /// The purge sequence this store had at `t` (see `timeline.rs`): give it to an entry
    /// whose fetch started at `t` elsewhere, so that every purge applied here since judges it.
    pub fn seq_before(&self, t: std::time::SystemTime) -> u64 {
        self.timeline.seq_before(t)
    }
}
