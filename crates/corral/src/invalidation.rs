//! The invalidation hub: every purge on this replica goes through [`Hub::invalidate`], which
//! makes the event, applies it to the store, counts and logs it, and hands it to subscribers
//! (the cluster broadcaster and the SSE feed, when they are configured).

use std::sync::Arc;
use std::time::Duration;

use corral_core::store::Store;
use corral_core::{Cause, EventSource, InvalidationEvent, Selectors};
use corral_http::metrics::KindLabel;
use corral_http::{Metrics, PurgeReport};
use tokio::sync::{broadcast, Notify};

/// Applies and publishes invalidations.
pub struct Hub {
    store: Arc<Store>,
    source: EventSource,
    metrics: Metrics,
    events: broadcast::Sender<Arc<InvalidationEvent>>,
    reclaim: Notify,
}

impl Hub {
    pub fn new(store: Arc<Store>, instance: String, metrics: Metrics) -> Arc<Hub> {
        Arc::new(Hub {
            store,
            source: EventSource::new(instance),
            metrics,
            events: broadcast::channel(4096).0,
            reclaim: Notify::new(),
        })
    }

    /// Events applied on this replica, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<InvalidationEvent>> {
        self.events.subscribe()
    }

    pub fn source(&self) -> &EventSource {
        &self.source
    }

    /// Applies an event (local or from a peer) to the store. Idempotent.
    pub fn apply(&self, event: &InvalidationEvent) -> usize {
        let outcome = self.store.purge(&event.selectors, event.soft);
        let s = &event.selectors;
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
        if !event.soft {
            self.reclaim.notify_one();
        }
        outcome.covered
    }

    /// Reclaims purged entries' memory in the background, at most once a second.
    pub async fn run_reclaimer(self: Arc<Self>) {
        loop {
            let periodic = tokio::time::sleep(Duration::from_secs(600));
            tokio::select! {
                () = self.reclaim.notified() => {}
                () = periodic => {}
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let store = self.store.clone();
            let n = tokio::task::spawn_blocking(move || store.reclaim())
                .await
                .unwrap_or(0);
            if n > 0 {
                tracing::debug!(reclaimed = n, "reclaimed purged entries");
            }
        }
    }
}

impl corral_http::InvalidationSink for Hub {
    fn invalidate(&self, selectors: Selectors, soft: bool, cause: Cause, who: &str) -> PurgeReport {
        let event = self.source.next(selectors, soft, cause);
        let purged = self.apply(&event);
        tracing::info!(
            target: "corral::purge",
            event = %event.id,
            who,
            cause = ?cause,
            soft,
            urls = ?event.selectors.urls,
            tags = ?event.selectors.tags,
            prefixes = ?event.selectors.prefixes,
            all = event.selectors.all,
            purged,
            "purge applied"
        );
        let id = event.id.clone();
        let _ = self.events.send(Arc::new(event));
        PurgeReport { purged, event: id }
    }
}
