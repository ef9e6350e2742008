//! The invalidation hub: every purge on this replica goes through `Hub::invalidate`, which
//! makes the event, applies it to the store, counts and logs it, hands it to the cluster for
//! fan-out, and to local subscribers: the numbered replay window behind the SSE feed
//! ([`crate::feed`]) and a broadcast channel (`[[forward]]` webhooks). Events from peers come in
//! through [`corral_cluster::Applier`]: applied and published locally, never re-broadcast.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use corral_cluster::Cluster;
use corral_core::store::Store;
use corral_core::{Cause, EventSource, InvalidationEvent, Mode, Purge};
use corral_http::metrics::KindLabel;
use corral_http::{Metrics, PurgeReport};
use tokio::sync::{broadcast, Notify};

use crate::feed::{Feed, FeedConfig, FeedMetrics};
use crate::ui::journal::{Journal, Source};

/// Applies and publishes invalidations.
pub struct Hub {
    store: Arc<Store>,
    source: EventSource,
    metrics: Metrics,
    events: broadcast::Sender<Arc<InvalidationEvent>>,
    feed: Arc<Feed>,
    reclaim: Notify,
    cluster: OnceLock<Arc<Cluster>>,
    /// Told of every numbered event applied here, local (`true`) or remote (the Redis tier).
    observer: OnceLock<Observer>,
    /// The last purges applied here, for the dashboard and `corral top`.
    journal: Arc<Journal>,
}

/// See [`Hub::observe`].
pub type Observer = Box<dyn Fn(&Arc<InvalidationEvent>, bool) + Send + Sync>;

impl Hub {
    pub fn new(
        store: Arc<Store>,
        instance: String,
        metrics: Metrics,
        feed: FeedConfig,
        feed_metrics: FeedMetrics,
    ) -> Arc<Hub> {
        let source = EventSource::new(instance.clone());
        let feed = Arc::new(Feed::new(source.epoch(), instance, feed, feed_metrics));
        Arc::new(Hub {
            store,
            source,
            metrics,
            events: broadcast::channel(4096).0,
            feed,
            reclaim: Notify::new(),
            cluster: OnceLock::new(),
            observer: OnceLock::new(),
            journal: Arc::default(),
        })
    }

    /// Registers the observer of applied events (once): called with each numbered event
    /// applied on this replica and whether it was made here.
    pub fn observe(&self, f: Observer) {
        let _ = self.observer.set(f);
    }

    /// Connects the cluster layer: from now on every local event is broadcast.
    pub fn attach_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Events applied on this replica (local and from peers), as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<InvalidationEvent>> {
        self.events.subscribe()
    }

    /// The last purges applied here, with who asked and how far their fan-out got.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// The numbered feed of events applied here, for `GET /_corral/v1/subscribe`.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// Hands an applied event to local subscribers.
    fn publish_locally(&self, event: Arc<InvalidationEvent>) {
        self.feed.publish(&event);
        let _ = self.events.send(event);
    }

    pub fn source(&self) -> &EventSource {
        &self.source
    }

    /// Applies an event (local or from a peer) to the store. Idempotent.
    fn apply(&self, event: &InvalidationEvent) -> usize {
        self.count(event, self.store.purge(&event.purge))
    }

    /// Counts an applied purge and wakes the reclaimer for a hard one; returns what it covered.
    fn count(&self, event: &InvalidationEvent, outcome: corral_core::store::PurgeOutcome) -> usize {
        let s = event.selectors();
        for (kind, n) in [
            ("url", s.urls.len()),
            ("tag", s.tags.len()),
            ("prefix", s.prefixes.len()),
            ("all", usize::from(s.all)),
        ] {
            if n > 0 {
                self.metrics
                    .purges
                    .get_or_create(&KindLabel { kind })
                    .inc_by(n as u64);
            }
        }
        self.metrics.purged_entries.inc_by(outcome.covered as u64);
        if event.purge.mode == Mode::Hard {
            self.reclaim.notify_one();
        }
        outcome.covered
    }

    /// Store housekeeping in the background, in steps small enough never to hold a lock or a
    /// core for long:
    /// * after a hard purge (and every 10 minutes), reclaims the purged entries' memory: a scan
    ///   then removals in small chunks, on a thread at idle priority (see
    ///   [`Hub::reclaim_purged`]), so that reclaiming a purge of a million entries never takes
    ///   the CPU away from requests;
    /// * every second, sweeps the next slots of the store for expired entries (a million
    ///   entries are gone round in about a minute; eviction takes expired entries first anyway).
    pub async fn run_reclaimer(self: Arc<Self>) {
        const SWEEP: usize = 16_384;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = self.reclaim.notified() => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                _ = tick.tick() => {
                    self.store.sweep_expired(SWEEP);
                    if last.elapsed() < Duration::from_secs(600) {
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
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the reclaim thread");
            return;
        }
        if let Ok(reclaimed) = finished.await {
            if reclaimed > 0 {
                tracing::debug!(reclaimed, "reclaimed purged entries");
            }
        }
    }
}

/// Drops every hard-purged entry from `store`: a read-only scan for the keys, then removals
/// in chunks, pausing between steps. Returns how many variants went.
fn reclaim(store: &Store, pacer: &mut Pacer) -> usize {
    const CHUNK: usize = 128;
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

impl corral_http::InvalidationSink for Hub {
    fn invalidate(&self, purge: Purge, cause: Cause, who: &str) -> PurgeReport {
        let event = Arc::new(self.source.next(purge, cause));
        let purged = self.apply(&event);
        tracing::info!(
            target: "corral::purge",
            event = %event.id,
            who,
            cause = %event.cause,
            soft = event.purge.is_soft(),
            urls = ?event.selectors().urls,
            tags = ?event.selectors().tags,
            prefixes = ?event.selectors().prefixes,
            all = event.selectors().all,
            purged,
            "purge applied"
        );
        if let Some(c) = self.cluster.get() {
            c.publish(event.clone());
        }
        self.journal
            .record(&event, purged, who, Source::Local, self.cluster.get());
        if let Some(o) = self.observer.get() {
            o(&event, true);
        }
        let report = PurgeReport {
            purged,
            event: event.id.clone(),
            seq: event.seq,
        };
        self.publish_locally(event);
        report
    }
}

impl corral_cluster::Applier for Hub {
    fn apply_remote(&self, event: &InvalidationEvent) {
        let purged = self.apply(event);
        tracing::debug!(target: "corral::purge", event = %event.id, origin = %event.origin, purged, "peer purge applied");
        self.journal
            .record(event, purged, &event.origin, Source::Peer, None);
        let event = Arc::new(event.clone());
        if let Some(o) = self.observer.get() {
            o(&event, false);
        }
        self.publish_locally(event);
    }

    fn purge_everything(&self, reason: &str) {
        tracing::warn!(
            reason,
            "purging everything: missed invalidations could not be recovered"
        );
        // A local reset, not one of this replica's numbered events: peers already know what
        // they need to, and a number taken here would be a hole in our stream for them.
        let now = corral_core::invalidation::now_ms();
        let event = InvalidationEvent {
            id: format!("{}-reset-{now}", self.source.origin()),
            origin: self.source.origin().to_string(),
            epoch: self.source.epoch(),
            seq: 0,
            purge: Purge::hard().all(),
            timestamp_ms: now,
            cause: Cause::Admin,
        };
        // `Store::reset`, not a purge of everything: a re-warm from a live peer is not judged
        // by it (the rule in docs/architecture.md, "Warm-up from peers").
        let purged = self.count(&event, self.store.reset());
        self.journal
            .record(&event, purged, reason, Source::Reset, None);
        self.publish_locally(Arc::new(event));
    }
}
