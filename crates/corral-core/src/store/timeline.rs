//! When each recent purge was applied here, by the store's clock: the bridge between another
//! replica's wall-clock fetch times and this store's purge sequence.
//!
//! Purge sequence numbers are per replica, so an entry that arrives from a peer (warm-up)
//! cannot carry one this store understands. What it does carry is when its fetch started.
//! [`Timeline::seq_before`] maps that time to the sequence number this store had then, and the
//! entry is stored with it: every purge applied here since (or within the clock allowance
//! before) judges it, exactly as it would judge a fill that was in flight here.

use std::collections::VecDeque;
use std::time::SystemTime;

use parking_lot::Mutex;

/// Purges remembered; an older fetch time is judged against every mark still held.
const CAPACITY: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Timeline {
    /// (applied at, sequence number), oldest first.
    applied: Mutex<VecDeque<(SystemTime, u64)>>,
}

impl Timeline {
    pub(super) fn record(&self, at: SystemTime, seq: u64) {
        let mut ring = self.applied.lock();
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back((at, seq));
    }

    /// The purge sequence this store had at `t`: the number of the latest purge applied at
    /// or before it. Before every remembered purge: 0, judged against every mark still held
    /// (the safe answer, also once older purges were forgotten).
    pub(super) fn seq_before(&self, t: SystemTime) -> u64 {
        let ring = self.applied.lock();
        match ring.partition_point(|(at, _)| *at <= t) {
            0 => 0,
            i => ring[i - 1].1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_time_maps_to_the_last_purge_applied_by_then() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let s = |n| t0 + Duration::from_secs(n);
        let tl = Timeline::default();
        assert_eq!(tl.seq_before(s(5)), 0, "no purge yet");
        tl.record(s(10), 1);
        tl.record(s(20), 2);
        assert_eq!(tl.seq_before(s(5)), 0);
        assert_eq!(tl.seq_before(s(10)), 1);
        assert_eq!(tl.seq_before(s(15)), 1);
        assert_eq!(tl.seq_before(s(25)), 2);
        for n in 3..(CAPACITY as u64 + 10) {
            tl.record(s(20 + n), n);
        }
        assert_eq!(
            tl.seq_before(s(5)),
            0,
            "forgotten purges: judged by every mark"
        );
        assert_eq!(tl.seq_before(s(20 + 5000)), CAPACITY as u64 + 9);
    }
}
