//! One peer as this replica delivers to it.
//!
//! A link is delivered to *directly* (its own queue and task, retried with backoff) when the
//! fleet is small enough for a mesh (`fanout = 0`, or no more peers than `fanout`), or when the
//! peer is *suspect*: it failed to answer, as a relay or directly. Otherwise it is reached
//! through the relay tree ([`crate::tree`]) and its queue stays empty. The queue lock makes
//! "is this link in the tree" and "fill its queue" one step, so an event is never lost between
//! the two paths (it may travel both; receivers deduplicate by id).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use corral_core::{Backoff, InvalidationEvent};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use crate::{Cluster, PeerAddr};

pub(crate) struct Link {
    pub peer: PeerAddr,
    pub queue: Mutex<VecDeque<Arc<InvalidationEvent>>>,
    pub wake: Notify,
    /// Signalled when the peer is seen alive (it sent us something, or answered a heartbeat):
    /// cuts a retry backoff short, so a restarted peer gets its backlog at once rather than
    /// after up to two seconds of backoff.
    pub alive: Notify,
    /// The highest own sequence number the peer acknowledged.
    pub acked: watch::Sender<u64>,
    /// Failed to answer lately: delivered directly, and not chosen as a relay head.
    /// Written only with `queue` locked.
    pub suspect: AtomicBool,
    pub failures: AtomicU64,
    pub dropped: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    pub last_ok: Mutex<Option<SystemTime>>,
    pub gone: AtomicBool,
}

impl Link {
    pub fn new(peer: PeerAddr) -> Link {
        Link {
            peer,
            queue: Mutex::default(),
            wake: Notify::new(),
            alive: Notify::new(),
            acked: watch::channel(0).0,
            suspect: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_error: Mutex::default(),
            last_ok: Mutex::default(),
            gone: AtomicBool::new(false),
        }
    }

    pub fn acked(&self) -> u64 {
        *self.acked.borrow()
    }

    pub fn is_suspect(&self) -> bool {
        self.suspect.load(Ordering::Acquire)
    }

    /// The peer applied everything up to `top`.
    pub fn ack(&self, top: u64) {
        self.acked.send_if_modified(|a| {
            let changed = *a < top;
            *a = (*a).max(top);
            changed
        });
        self.healthy();
    }

    /// The peer answered: an old error no longer describes it.
    pub fn healthy(&self) {
        *self.last_ok.lock() = Some(SystemTime::now());
        *self.last_error.lock() = None;
    }

    pub fn failed(&self, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(error);
    }

    /// Queues `event` for direct delivery unless the relay tree carries it to this peer.
    /// True if queued.
    pub fn offer(&self, event: &Arc<InvalidationEvent>, relaying: bool, capacity: usize) -> bool {
        let mut q = self.queue.lock();
        if relaying && !self.is_suspect() && q.is_empty() {
            return false;
        }
        if q.back().is_some_and(|b| b.seq >= event.seq) {
            return false;
        }
        if q.len() >= capacity {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(event.clone());
        drop(q);
        self.wake.notify_one();
        true
    }
}

impl Cluster {
    /// Moves a link to direct delivery: marks it suspect (when `suspect`) and queues what it has
    /// not acknowledged from the log. Events the log no longer holds are left to the peer's gap
    /// check (it recovers them from the log, or purges everything).
    pub(crate) fn go_direct(&self, link: &Link, suspect: bool) {
        let mut q = link.queue.lock();
        if suspect {
            link.suspect.store(true, Ordering::Release);
        }
        let from = q.back().map_or(link.acked(), |b| b.seq.max(link.acked()));
        let missed = self.log.oldest_after(from, self.config.queue_capacity);
        q.extend(missed);
        drop(q);
        link.wake.notify_one();
    }

    /// Back in the tree once the peer answered and nothing waits for it directly.
    fn rejoin_tree(&self, link: &Link) {
        let q = link.queue.lock();
        if q.is_empty() && link.is_suspect() {
            link.suspect.store(false, Ordering::Release);
            drop(q);
            self.tree_wake.notify_one();
        }
    }

    /// One peer's direct delivery loop: batches, retries with backoff and jitter, until it
    /// leaves. A suspect peer with nothing queued is probed with a heartbeat instead, so it
    /// rejoins the tree as soon as it answers.
    pub(crate) async fn deliver(self: Arc<Self>, link: Arc<Link>) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        while !link.gone.load(Ordering::Acquire) {
            let batch: Vec<Arc<InvalidationEvent>> = link
                .queue
                .lock()
                .iter()
                .take(self.config.batch)
                .cloned()
                .collect();
            let probing = batch.is_empty() && link.is_suspect() && self.relaying();
            if batch.is_empty() && !probing {
                link.wake.notified().await;
                continue;
            }
            let kind = if probing { "heartbeat" } else { "events" };
            match self.send(link.peer.addr, &batch, kind).await {
                Ok(()) => {
                    let top = batch.last().map_or(0, |e| e.seq);
                    {
                        let mut q = link.queue.lock();
                        // Pop what was sent (the queue may have dropped some meanwhile).
                        while q.front().is_some_and(|e| e.seq <= top) {
                            q.pop_front();
                        }
                    }
                    link.ack(top);
                    self.metrics.sent.inc_by(batch.len() as u64);
                    self.update_queue_gauge();
                    self.rejoin_tree(&link);
                    backoff.reset();
                }
                Err(e) => {
                    self.metrics.failures.inc();
                    tracing::debug!(peer = %link.peer.addr, error = %e, "delivery failed; retrying");
                    link.failed(e);
                    tokio::select! {
                        () = backoff.wait() => {}
                        () = link.alive.notified() => {}
                        () = wait_gone(&link) => {}
                    }
                }
            }
        }
        self.update_queue_gauge();
    }
}

async fn wait_gone(link: &Link) {
    while !link.gone.load(Ordering::Acquire) {
        link.wake.notified().await;
    }
}
