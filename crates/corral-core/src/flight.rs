//! Single-flight: concurrent misses for one key make one origin fetch.
//!
//! The first caller for a key becomes the [`Leader`]; later callers become [`Follower`]s and
//! wait for the leader's outcome. Invariants:
//!
//! * exactly one leader per key at a time;
//! * a leader that is dropped without [`Leader::finish`] (its task was cancelled, its client
//!   went away, it panicked) releases its followers with [`Wait::Abandoned`] — they never hang;
//! * followers wait at most the timeout they give; then they go on by themselves;
//! * the key is free again the moment the leader finishes, so the next miss after a
//!   non-storable answer starts a new flight rather than joining a finished one.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

const SHARDS: usize = 64;

type Slot<V> = watch::Sender<Option<V>>;
type Shard<K, V> = Mutex<HashMap<K, Arc<Slot<V>>>>;

/// A table of in-flight fetches keyed by `K`, whose outcome is a `V` shared with followers.
pub struct Flights<K, V> {
    shards: Box<[Shard<K, V>]>,
    hasher: foldhash::fast::RandomState,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

/// The role a caller got for a key.
pub enum Role<K: Hash + Eq + Clone, V: Clone> {
    Leader(Leader<K, V>),
    Follower(Follower<V>),
}

/// The one caller that fetches. Must [`finish`](Leader::finish); dropping it abandons.
pub struct Leader<K: Hash + Eq + Clone, V: Clone> {
    flights: Arc<Flights<K, V>>,
    key: K,
    slot: Arc<Slot<V>>,
    done: bool,
}

/// A caller waiting for a leader.
pub struct Follower<V> {
    rx: watch::Receiver<Option<V>>,
}

/// What a follower got.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait<V> {
    /// The leader's outcome.
    Done(V),
    /// The leader went away without an outcome.
    Abandoned,
    /// The wait timed out.
    TimedOut,
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    fn shard(&self, key: &K) -> &Shard<K, V> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % SHARDS]
    }

    /// Joins the flight for `key`, leading it if there is none.
    pub fn join(self: &Arc<Self>, key: K) -> Role<K, V> {
        let mut shard = self.shard(&key).lock();
        if let Some(slot) = shard.get(&key) {
            return Role::Follower(Follower {
                rx: slot.subscribe(),
            });
        }
        let slot = Arc::new(watch::channel(None).0);
        shard.insert(key.clone(), slot.clone());
        Role::Leader(Leader {
            flights: self.clone(),
            key,
            slot,
            done: false,
        })
    }

    /// Number of keys with a flight in progress.
    pub fn in_flight(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Leader<K, V> {
    /// Publishes the outcome to every follower and frees the key.
    pub fn finish(mut self, outcome: V) {
        self.release(Some(outcome));
    }

    fn release(&mut self, outcome: Option<V>) {
        if self.done {
            return;
        }
        self.done = true;
        let mut shard = self.flights.shard(&self.key).lock();
        if shard
            .get(&self.key)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            shard.remove(&self.key);
        }
        drop(shard);
        // Without an outcome, dropping the last sender closes the channel: followers see
        // Abandoned.
        if let Some(v) = outcome {
            self.slot.send_replace(Some(v));
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Leader<K, V> {
    fn drop(&mut self) {
        self.release(None);
    }
}

impl<V: Clone> Follower<V> {
    /// Waits for the leader's outcome, at most `timeout`.
    pub async fn wait(self, timeout: Duration) -> Wait<V> {
        let outcome = async {
            match self.outcome().await {
                Some(v) => Wait::Done(v),
                None => Wait::Abandoned,
            }
        };
        tokio::time::timeout(timeout, outcome)
            .await
            .unwrap_or(Wait::TimedOut)
    }

    /// Waits for the leader's outcome however long it takes; `None` if the leader went away
    /// without one. For callers whose leader is bounded by other means (a library's loader,
    /// cancelled with its caller).
    pub async fn outcome(mut self) -> Option<V> {
        loop {
            if let Some(v) = self.rx.borrow_and_update().clone() {
                return Some(v);
            }
            if self.rx.changed().await.is_err() {
                // Closed: the outcome may have been sent just before the close.
                return self.rx.borrow().clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_many_followers() {
        let f: Arc<Flights<String, u32>> = Arc::new(Flights::new());
        let Role::Leader(leader) = f.join("k".into()) else {
            panic!("first caller must lead")
        };
        let mut waits = Vec::new();
        for _ in 0..100 {
            let Role::Follower(fl) = f.join("k".into()) else {
                panic!("later callers must follow")
            };
            waits.push(tokio::spawn(fl.wait(Duration::from_secs(5))));
        }
        leader.finish(7);
        for w in waits {
            assert_eq!(w.await.unwrap(), Wait::Done(7));
        }
        assert_eq!(f.in_flight(), 0);
        assert!(matches!(f.join("k".into()), Role::Leader(_)));
    }

    #[tokio::test]
    async fn dropped_leader_abandons() {
        let f: Arc<Flights<&str, u32>> = Arc::new(Flights::new());
        let leader = f.join("k");
        let Role::Follower(fl) = f.join("k") else {
            panic!()
        };
        drop(leader);
        assert_eq!(fl.wait(Duration::from_secs(5)).await, Wait::Abandoned);
        assert_eq!(f.in_flight(), 0);
    }

    #[tokio::test]
    async fn followers_time_out() {
        let f: Arc<Flights<&str, u32>> = Arc::new(Flights::new());
        let _leader = f.join("k");
        let Role::Follower(fl) = f.join("k") else {
            panic!()
        };
        assert_eq!(fl.wait(Duration::from_millis(20)).await, Wait::TimedOut);
    }
}
