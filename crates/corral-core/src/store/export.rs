//! What a replica donates to a peer that warms up from it: its hottest live entries.

use super::{Judgement, Store};
use crate::entry::Entry;

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
        ranked.sort_by(|a, b| b.0.cmp(&a.0));
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

    /// The purge sequence this store had at `t` (see `timeline.rs`): give it to an entry
    /// whose fetch started at `t` elsewhere, so that every purge applied here since judges it.
    pub fn seq_before(&self, t: std::time::SystemTime) -> u64 {
        self.timeline.seq_before(t)
    }
}
