//! The invalidation hub: where every purge on a replica goes, and where every purge from its
//! peers arrives.
//!
//! [`Hub::invalidate`] makes the event (the next number of this replica's
//! [`EventSource`]), applies it to the store, counts and logs it, hands it to the [`Cluster`]
//! for fan-out, then tells this process: first the [observer](Hub::observe) (a shared tier —
//! the Redis L2's marks and bus — that must know of an event before anyone is told of it),
//! then each [`Subscriber`] in the order it was added (the binary's journal and SSE feed), then
//! the [broadcast channel](Hub::subscribe) (`[[forward]]` webhooks). Events from peers (and the
//! Redis bus) come in through [`Applier`]: applied and told locally the same way, never
//! re-broadcast — they are the cluster's to deduplicate and their origin's to fan out.
//!
//! The hub knows nothing of what its subscribers do with an event; the binary wires them.

use std::sync::{Arc, OnceLock};

use corral_core::store::PurgeOutcome;
use corral_core::{Cause, EventSource, InvalidationEvent, Mode, Purge, Reclaimer, Store};
use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast;

use crate::{Applier, Cluster, KindLabel};

/// How many applied events the broadcast channel holds for a slow receiver.
const BROADCAST_CAPACITY: usize = 4096;

/// `corral_purges_total{kind}` and `corral_purged_entries_total`: what purges applied here
/// named and covered, whoever made them.
#[derive(Clone, Default)]
pub struct PurgeMetrics {
    /// Selectors applied, by kind (`url`, `tag`, `prefix`, `all`).
    pub purges: Family<KindLabel, Counter>,
    /// Entries the applied purges covered.
    pub purged_entries: Counter,
}

impl PurgeMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> PurgeMetrics {
        let m = PurgeMetrics::default();
        registry.register(
            "corral_purges",
            "Purges applied, by selector kind",
            m.purges.clone(),
        );
        registry.register(
            "corral_purged_entries",
            "Entries covered by purges",
            m.purged_entries.clone(),
        );
        m
    }
}

/// Where an applied event came from, as subscribers are told.
#[derive(Clone, Copy)]
pub enum Provenance<'a> {
    /// Made here (admin API, `PURGE`, an unsafe method, a database source): `who` asked, and
    /// the event was handed to `cluster` for fan-out when there is one.
    Local {
        who: &'a str,
        cluster: Option<&'a Arc<Cluster>>,
    },
    /// Made by a peer: received through the HTTP fan-out, a relay, log recovery or the bus.
    Peer,
    /// Everything dropped because missed invalidations could not be recovered (`reason`).
    /// The event is this replica's own and unnumbered (`seq` 0): peers never see it.
    Reset { reason: &'a str },
}

/// One event applied here, as subscribers are told of it.
#[derive(Clone, Copy)]
pub struct Applied<'a> {
    pub event: &'a Arc<InvalidationEvent>,
    /// Entries it covered in this replica's store.
    pub purged: usize,
    pub provenance: Provenance<'a>,
}

/// Told of every event applied here, in the order they were applied, on the thread that
/// applied it: it must not block, and must not add subscribers to the hub that calls it.
pub trait Subscriber: Send + Sync + 'static {
    fn applied(&self, applied: &Applied<'_>);
}

/// See [`Hub::observe`]: called with each numbered event applied here and whether it was
/// made here.
pub type Observer = Box<dyn Fn(&Arc<InvalidationEvent>, bool) + Send + Sync>;

/// What [`Hub::invalidate`] did.
#[derive(Debug, Clone)]
pub struct Invalidated {
    /// Entries it covered here (see [`PurgeOutcome::covered`]).
    pub purged: usize,
    /// The event, numbered in this replica's sequence.
    pub event: Arc<InvalidationEvent>,
}

/// Applies and publishes invalidations.
pub struct Hub {
    store: Arc<Store>,
    source: EventSource,
    metrics: PurgeMetrics,
    reclaimer: Arc<Reclaimer>,
    cluster: OnceLock<Arc<Cluster>>,
    observer: OnceLock<Observer>,
    /// Added while the process is wired, read on every purge.
    subscribers: RwLock<Vec<Arc<dyn Subscriber>>>,
    events: broadcast::Sender<Arc<InvalidationEvent>>,
}

impl Hub {
    /// A hub for `store`, whose events are numbered for `instance` (a fresh epoch per process).
    /// Hard purges wake `reclaimer`; run it to get their memory back.
    pub fn new(
        store: Arc<Store>,
        instance: String,
        metrics: PurgeMetrics,
        reclaimer: Arc<Reclaimer>,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            store,
            source: EventSource::new(instance),
            metrics,
            reclaimer,
            cluster: OnceLock::new(),
            observer: OnceLock::new(),
            subscribers: RwLock::default(),
            events: broadcast::channel(BROADCAST_CAPACITY).0,
        })
    }

    /// Registers the observer of applied events (once; a second is ignored): called with each
    /// numbered event applied here and whether it was made here, before any subscriber — for a
    /// shared tier that must hold an event's marks before anyone is told of the event. Resets
    /// are not numbered, and not observed.
    pub fn observe(&self, f: Observer) {
        let _ = self.observer.set(f);
    }

    /// Adds a subscriber, told of every event applied from now on, after those added before
    /// it. Add subscribers before events can arrive (before the cluster starts) to miss none.
    pub fn add_subscriber(&self, subscriber: Arc<dyn Subscriber>) {
        self.subscribers.write().push(subscriber);
    }

    /// Connects the cluster layer (once): from now on every local event is broadcast.
    pub fn attach_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Events applied on this replica (local, from peers, resets), as they happen; a receiver
    /// more than 4,096 events behind loses the oldest (and is told so by `recv`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<InvalidationEvent>> {
        self.events.subscribe()
    }

    /// This replica's event numbering.
    pub fn source(&self) -> &EventSource {
        &self.source
    }

    /// Makes, applies and publishes an invalidation; `who` names the requester for the log
    /// and the journal.
    pub fn invalidate(&self, purge: Purge, cause: Cause, who: &str) -> Invalidated {
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
        let cluster = self.cluster.get();
        // Handed to the cluster first: the journal waits on its acknowledgements.
        if let Some(c) = cluster {
            c.publish(event.clone());
        }
        self.tell(Applied {
            event: &event,
            purged,
            provenance: Provenance::Local { who, cluster },
        });
        Invalidated { purged, event }
    }

    /// Applies an event (local or from a peer) to the store. Idempotent.
    fn apply(&self, event: &InvalidationEvent) -> usize {
        self.count(event, self.store.purge(&event.purge))
    }

    /// Counts an applied purge and wakes the reclaimer for a hard one; returns what it covered.
    fn count(&self, event: &InvalidationEvent, outcome: PurgeOutcome) -> usize {
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
            self.reclaimer.hard_purge_applied();
        }
        outcome.covered
    }

    /// Tells this process of an applied event: the observer (numbered events), the
    /// subscribers in order, then the broadcast channel.
    fn tell(&self, applied: Applied<'_>) {
        if let Some(o) = self.observer.get() {
            match applied.provenance {
                Provenance::Local { .. } => o(applied.event, true),
                Provenance::Peer => o(applied.event, false),
                Provenance::Reset { .. } => {}
            }
        }
        for s in self.subscribers.read().iter() {
            s.applied(&applied);
        }
        // No receiver (no `[[forward]]`) is not an error.
        let _ = self.events.send(applied.event.clone());
    }
}

impl Applier for Hub {
    fn apply_remote(&self, event: &InvalidationEvent) {
        let purged = self.apply(event);
        tracing::debug!(target: "corral::purge", event = %event.id, origin = %event.origin, purged, "peer purge applied");
        self.tell(Applied {
            event: &Arc::new(event.clone()),
            purged,
            provenance: Provenance::Peer,
        });
    }

    fn purge_everything(&self, reason: &str) {
        // Logged by the transport that found the gap (`receive`, the Redis bus), as the
        // `Applier` contract says.
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
        self.tell(Applied {
            event: &Arc::new(event),
            purged,
            provenance: Provenance::Reset { reason },
        });
    }
}

#[cfg(test)]
mod tests;
