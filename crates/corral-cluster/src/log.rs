//! This replica's own recent events, for peers that missed some and for relayed rounds.

use std::collections::VecDeque;
use std::sync::Arc;

use corral_core::InvalidationEvent;
use parking_lot::Mutex;

#[derive(Debug)]
pub struct EventLog {
    events: Mutex<VecDeque<Arc<InvalidationEvent>>>,
    capacity: usize,
}

impl EventLog {
    pub fn new(capacity: usize) -> Self {
        EventLog {
            events: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    pub fn push(&self, e: Arc<InvalidationEvent>) {
        let mut q = self.events.lock();
        if q.len() == self.capacity {
            q.pop_front();
        }
        q.push_back(e);
    }

    /// Events with `seq > since`, or `None` when some of them are no longer retained.
    pub fn since(&self, since: u64) -> Option<Vec<InvalidationEvent>> {
        self.since_shared(since, usize::MAX)
            .map(|v| v.iter().map(|e| (**e).clone()).collect())
    }

    /// Up to `limit` events with `seq > since`, shared; `None` when some are gone.
    pub fn since_shared(&self, since: u64, limit: usize) -> Option<Vec<Arc<InvalidationEvent>>> {
        let q = self.events.lock();
        let oldest = q.front().map_or(u64::MAX, |e| e.seq);
        let last = q.back().map_or(0, |e| e.seq);
        if since < last && since + 1 < oldest {
            return None;
        }
        Some(
            q.iter()
                .filter(|e| e.seq > since)
                .take(limit)
                .cloned()
                .collect(),
        )
    }

    /// Up to `limit` of the oldest events still retained after `since`, for a peer too far
    /// behind: it gets what is left and recovers the rest through its own gap check.
    pub fn oldest_after(&self, since: u64, limit: usize) -> Vec<Arc<InvalidationEvent>> {
        self.events
            .lock()
            .iter()
            .filter(|e| e.seq > since)
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::{Cause, EventSource, Purge};

    #[test]
    fn log_answers_or_says_gone() {
        let log = EventLog::new(3);
        let src = EventSource::new("a");
        for _ in 0..5 {
            log.push(Arc::new(src.next(Purge::hard().all(), Cause::Admin)));
        }
        // Retained: 3, 4, 5.
        assert_eq!(
            log.since(2)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(log.since(5).unwrap().len(), 0);
        assert!(log.since(1).is_none(), "event 2 is gone");
        assert_eq!(log.oldest_after(1, 2).len(), 2);
        assert_eq!(log.since_shared(3, 1).unwrap()[0].seq, 4);
        assert!(EventLog::new(3).since(0).unwrap().is_empty());
    }
}
