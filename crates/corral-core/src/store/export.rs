//! What a replica donates to a peer that warms up from it: its hottest live entries.

use std::time::{Duration, SystemTime};

use super::{Judgement, Store};
use crate::entry::{wire, Entry};

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
        let visit = |key: &str, variants: &[Entry]| {
            let heat = self.table.frequency(key);
            for e in variants {
                let live = e.expires_at() > now
                    && !e.is_soft_purged()
                    && (e.purge_seq() >= last || self.marks.judge(key, e) == Judgement::Valid);
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
        record: wire::Record,
        allowance: Duration,
        max_variants: usize,
    ) -> Warmed {
        let started = record.fetch_started().checked_sub(allowance);
        let seq = self.seq_before(started.unwrap_or(SystemTime::UNIX_EPOCH));
        let entry = record.into_entry(seq);
        if entry.expires_at() <= self.clock.now() {
            return Warmed::Expired;
        }
        let last = self.last_applied.load(std::sync::atomic::Ordering::Acquire);
        if seq < last && self.marks.judge(entry.key(), &entry) != Judgement::Valid {
            return Warmed::Purged;
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
