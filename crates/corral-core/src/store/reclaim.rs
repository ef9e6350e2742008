//! The store's housekeeping: giving back the memory of what purges and expiry left behind.
//!
//! Purges are lazy (a mark, never a scan: see the [module docs](super)), so a hard purge of a
//! million entries leaves a million dead entries in memory until something removes them. The
//! [`Reclaimer`] is that something, in steps small enough never to hold a lock or a core for
//! long:
//! * after a hard purge ([`Reclaimer::hard_purge_applied`], debounced by a second) and every 10
//!   minutes, it reclaims the purged entries: a read-only scan for their keys (a shard's read
//!   lock held for 1,024 slots at most), then removals in chunks of 128, on a thread of its own
//!   in Linux's `SCHED_IDLE` class, so it only takes the CPU requests leave (where that class
//!   is refused, it is paced to about a quarter of a core instead);
//! * every second, it sweeps the next 16,384 slots for expired entries (a million entries are
//!   gone round in about a minute; eviction takes expired entries first anyway).
//!
//! A metrics scrape reads exact counts and never sweeps: the reclaimer is the only background
//! work the store needs. It needs a tokio runtime for its timers, and no sockets.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::Store;

/// Slots swept for expired entries each second.
const SWEEP: usize = 16_384;
/// Keys whose hard-purged variants are removed between two pauses.
const CHUNK: usize = 128;
/// How long after a hard purge the reclaim starts, so a burst of purges is reclaimed once.
const DEBOUNCE: Duration = Duration::from_secs(1);
/// How often purged entries are reclaimed even when no hard purge asked for it (marks that
/// can no longer cover anything are forgotten then too).
const EVERY: Duration = Duration::from_secs(600);

/// Reclaims a store's hard-purged and expired entries in the background; see the module docs.
pub struct Reclaimer {
    store: Arc<Store>,
    hard_purged: Notify,
}

impl Reclaimer {
    /// A reclaimer for `store`; it does nothing until [`Reclaimer::run`] is spawned.
    pub fn new(store: Arc<Store>) -> Arc<Reclaimer> {
        Arc::new(Reclaimer {
            store,
            hard_purged: Notify::new(),
        })
    }

    /// Says a hard purge was applied: its entries are reclaimed about a second later. Cheap
    /// (one atomic operation when a wake-up is already pending), so every purge may call it.
    pub fn hard_purge_applied(&self) {
        self.hard_purged.notify_one();
    }

    /// Runs for as long as the process: sweeps every second, reclaims after hard purges and
    /// every 10 minutes.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = self.hard_purged.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                }
                _ = tick.tick() => {
                    self.store.sweep_expired(SWEEP);
                    if last.elapsed() < EVERY {
                        continue;
                    }
                }
            }
            last = tokio::time::Instant::now();
            self.reclaim_purged().await;
        }
    }

    /// Reclaims hard-purged entries on a thread of its own that runs at idle priority: it
    /// only gets the CPU the request threads leave, so a purge of a million entries on a busy
    /// core takes longer to free its memory instead of taking latency from requests.
    async fn reclaim_purged(&self) {
        let store = self.store.clone();
        let (done, finished) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("corral-reclaim".into())
            .spawn(move || {
                let mut pacer = Pacer::new(background_priority());
                let _ = done.send(reclaim(&store, &mut pacer));
            });
        // The log target the binary has always used, so `CORRAL_LOG` filters keep working.
        if let Err(e) = spawned {
            tracing::warn!(target: "corral::invalidation", error = %e, "could not start the reclaim thread");
            return;
        }
        if let Ok(reclaimed) = finished.await {
            if reclaimed > 0 {
                tracing::debug!(target: "corral::invalidation", reclaimed, "reclaimed purged entries");
            }
        }
    }
}

/// Drops every hard-purged entry from `store`: a read-only scan for the keys, then removals
/// in chunks, pausing between steps. Returns how many variants went.
fn reclaim(store: &Store, pacer: &mut Pacer) -> usize {
    let keys = store.purged_keys_paced(&mut || pacer.pause());
    let mut reclaimed = 0;
    for chunk in keys.chunks(CHUNK) {
        reclaimed += store.reclaim_keys(chunk);
        pacer.pause();
    }
    store.prune_marks();
    reclaimed
}

/// Puts the calling thread in Linux's `SCHED_IDLE` class, where it runs only when no other
/// thread on its core wants to. Returns false where that is not available. A thread cannot
/// always leave that class again without privileges, so only a thread of its own may call this.
fn background_priority() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 names the calling thread; `param` is a valid sched_param.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Paces background work. At idle priority the scheduler already gives requests the core,
/// so a pause only yields. Otherwise it keeps the work to about a quarter of a core: after
/// each step it rests three times as long as the step took (at least a millisecond).
/// Reclaiming a purge of a million entries is seconds of CPU; spread out, it costs requests
/// on a busy core less latency and only takes longer.
struct Pacer {
    since: std::time::Instant,
    idle_priority: bool,
}

impl Pacer {
    fn new(idle_priority: bool) -> Pacer {
        Pacer {
            since: std::time::Instant::now(),
            idle_priority,
        }
    }

    /// Rests after the work done since the last pause.
    fn pause(&mut self) {
        if self.idle_priority {
            std::thread::yield_now();
        } else {
            std::thread::sleep((self.since.elapsed() * 3).max(Duration::from_millis(1)));
        }
        self.since = std::time::Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, Purge, StoreConfig};

    /// A response stored under `G|h|/k/{i}`, fresh for a minute, carrying `tags`.
    fn entry(store: &Store, i: usize, tags: &[&str]) -> Entry {
        crate::store::tests::entry(store, &format!("G|h|/k/{i}"), 4, 60, tags)
    }

    /// What the reclaim thread does, on the calling thread: only the hard-purged entries go,
    /// a soft-purged one stays (it may still serve stale).
    #[test]
    fn a_reclaim_drops_the_hard_purged_entries_and_keeps_the_rest() {
        let s = Store::new(StoreConfig {
            max_bytes: 1 << 24,
            fetch_horizon: Duration::from_secs(60),
        });
        for i in 0..300 {
            let tags: &[&str] = if i < 200 { &["gone"] } else { &["kept"] };
            s.insert(entry(&s, i, tags), 4);
        }
        s.insert(entry(&s, 300, &["soft"]), 4);
        assert_eq!(s.purge(&Purge::hard().tag("gone")).covered, 200);
        assert_eq!(s.purge(&Purge::soft().tag("soft")).covered, 1);
        assert_eq!(s.entry_count(), 301, "purges are lazy: nothing removed yet");

        let mut pacer = Pacer::new(true);
        assert_eq!(reclaim(&s, &mut pacer), 200, "more than one chunk of keys");
        assert_eq!(s.entry_count(), 101);
        assert_eq!(reclaim(&s, &mut pacer), 0, "nothing left to reclaim");
    }

    /// The pace without idle priority: each pause rests at least three times the step.
    #[test]
    fn without_idle_priority_a_pause_rests_three_times_the_step() {
        let mut pacer = Pacer::new(false);
        let step = std::time::Instant::now();
        while step.elapsed() < Duration::from_millis(5) {
            std::hint::spin_loop();
        }
        let rest = std::time::Instant::now();
        pacer.pause();
        assert!(
            rest.elapsed() >= Duration::from_millis(15),
            "{:?}",
            rest.elapsed()
        );
    }
}
