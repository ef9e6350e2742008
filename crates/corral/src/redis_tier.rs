//! Wires the Redis tier (`corral-redis`) into the process: the L2 behind the gateway's
//! in-process store, the fill lease, purge marks for every invalidation applied here, and the
//! Redis Streams bus beside the HTTP fan-out.

use std::sync::Arc;
use std::time::Duration;

use corral_core::CachePolicy;
use corral_core::{InvalidationEvent, KeyRef};
use corral_http::{FillLease, LeaseOutcome, SharedEntry, SharedLookup, SharedTier};
use corral_redis::{
    Acquired, Bus, BusConfig, LeaseGuard, Leases, Limiter, RedisClient, RedisMetrics, L2,
};
use futures_util::future::BoxFuture;
use http::HeaderMap;
use prometheus_client::registry::Registry;

use crate::config::Config;
use corral_cluster::hub::Hub;

struct Tier {
    l2: Arc<L2>,
    leases: Option<Arc<Leases>>,
}

struct Held(LeaseGuard);

impl FillLease for Held {
    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(self.0.release())
    }
}

impl SharedTier for Tier {
    fn lookup<'a>(
        &'a self,
        key: KeyRef<'a>,
        request: &'a HeaderMap,
        policy: &'a CachePolicy,
        purge_seq: u64,
    ) -> BoxFuture<'a, SharedLookup> {
        Box::pin(async move {
            match self.l2.get(key, request, purge_seq, policy.keep).await {
                Ok(Some(f)) => SharedLookup::Found(SharedEntry {
                    entry: f.entry,
                    verdict: f.verdict,
                }),
                Ok(None) => SharedLookup::Miss,
                Err(_) => SharedLookup::Unavailable,
            }
        })
    }

    fn store(&self, key: KeyRef<'_>, entry: corral_core::Entry, lease: Option<Box<dyn FillLease>>) {
        self.l2.put(key, entry, lease.map(|l| l.release()));
    }

    fn lease<'a>(&'a self, key: KeyRef<'a>) -> BoxFuture<'a, LeaseOutcome> {
        Box::pin(async move {
            let Some(leases) = &self.leases else {
                return LeaseOutcome::Proceed;
            };
            match leases.acquire(key).await {
                Acquired::Held(g) => LeaseOutcome::Held(Box::new(Held(g))),
                Acquired::Filled => LeaseOutcome::Filled,
                Acquired::Proceed => LeaseOutcome::Proceed,
            }
        })
    }
}

/// Bus events enter through the cluster's dedupe (so the HTTP bus may run too).
struct HubSink {
    hub: Arc<Hub>,
}

impl corral_core::Applier for HubSink {
    fn apply_remote(&self, event: &InvalidationEvent) {
        match self.hub.cluster() {
            Some(c) => {
                c.apply_external(event.clone());
            }
            None => self.hub.apply_remote(event),
        }
    }

    fn purge_everything(&self, reason: &str) {
        self.hub.purge_everything(reason);
        // The stream lost events this replica never read; its peers did read them.
        if let Some(c) = self.hub.cluster() {
            c.rewarm_after_reset(None);
        }
    }
}

/// What of the Redis tier started.
#[derive(Default)]
pub struct Started {
    /// The L2 as a shared tier for the caller to install (alone, or behind owner routing:
    /// `owner_tier`).
    pub tier: Option<Arc<dyn SharedTier>>,
    /// A client for the sources' leader leases (`source_leader.rs`): L2's when configured,
    /// else one to the bus's Redis (only when there are sources).
    pub leases: Option<Arc<RedisClient>>,
}

/// Starts whatever of the Redis tier the configuration asks for.
pub fn start(cfg: &Config, hub: &Arc<Hub>, registry: &mut Registry) -> Result<Started, String> {
    let bus_spec = cfg.cluster.as_ref().and_then(|c| c.bus.clone());
    if cfg.l2.is_none() && bus_spec.is_none() {
        return Ok(Started::default());
    }
    let metrics = RedisMetrics::register(registry);
    let mut lease_client = None;
    let l2 = cfg.l2.as_ref().map(|spec| {
        let client = RedisClient::start(
            spec.redis.clone(),
            metrics.clone(),
            Limiter::new(spec.refill_rate, spec.recovery, spec.refill_jitter),
        );
        lease_client = Some(client.clone());
        let l2 = L2::start(client.clone(), spec.l2.clone());
        let leases = spec
            .lease
            .clone()
            .map(|c| Leases::start(client, l2.prefix(), c));
        let tier: Arc<dyn SharedTier> = Arc::new(Tier {
            l2: l2.clone(),
            leases,
        });
        tracing::info!(redis = ?spec.redis.target, prefix = %l2.prefix(), "L2 tier on");
        (l2, tier)
    });
    let (l2, tier) = match l2 {
        Some((l2, tier)) => (Some(l2), Some(tier)),
        None => (None, None),
    };
    let bus = match (&bus_spec, &cfg.cluster) {
        (Some(spec), Some(cluster)) => {
            let secret = crate::cluster_secret(cluster)?;
            if lease_client.is_none() && !cfg.sources.is_empty() {
                // A few calls a second per source: no refill budget to speak of.
                let limiter = Limiter::new(1000, Duration::from_secs(1), Duration::ZERO);
                lease_client = Some(RedisClient::start(
                    spec.redis.clone(),
                    metrics.clone(),
                    limiter,
                ));
            }
            Some(Bus::start(
                BusConfig {
                    redis: spec.redis.clone(),
                    stream: spec.stream.clone(),
                    maxlen: spec.maxlen,
                    block: spec.block,
                    replay_window: spec.replay_window,
                },
                secret,
                hub.source().origin().to_string(),
                Arc::new(HubSink { hub: hub.clone() }),
                metrics.clone(),
            ))
        }
        _ => None,
    };
    hub.observe(Box::new(
        move |event: &Arc<InvalidationEvent>, local: bool| {
            if event.seq == 0 {
                return; // a local reset (purge everything), not an invalidation others need
            }
            let publish = match (&bus, local) {
                (Some(bus), true) => {
                    let (bus, event) = (bus.clone(), event.clone());
                    Some(Box::new(move || bus.publish(event)) as Box<dyn FnOnce() + Send>)
                }
                _ => None,
            };
            match &l2 {
                // The bus carries the event only once L2 knows of it, so that no replica can
                // read L2 content the event covers after applying the event.
                Some(l2) => l2.purge(&event.purge, event.timestamp_ms, publish),
                None => {
                    if let Some(p) = publish {
                        p();
                    }
                }
            }
        },
    ));
    Ok(Started {
        tier,
        leases: lease_client,
    })
}
