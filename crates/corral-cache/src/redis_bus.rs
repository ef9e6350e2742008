//! Coherence through the Redis bus (cargo feature `redis`): the same signed Redis Stream as the
//! gateway's `cluster.bus = { kind = "redis" }` ([`corral_redis::Bus`]), so library pods and
//! gateways on the same stream (and the same cluster secret) see each other's invalidations,
//! without discovery or a listener.
//!
//! Every invalidation of an attached cache becomes an event (`{instance}-{epoch}-{seq}` id,
//! signed with the cluster secret) appended with `XADD … MAXLEN ~`; every pod reads the stream
//! from its last id (`XREAD BLOCK`) and applies the others' events, deduplicated by id (so
//! the bus may run next to a [`crate::cluster::Member`] or a [`crate::sidecar::Sidecar`]).
//! Events published while Redis is away are kept in order (up to 10 000) and appended when it
//! is back; a pod that was away longer than the stream's retention (trimmed past its
//! position) drops everything it caches in-process. TTL stays the safety net.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use corral_cache::{redis_bus::{BusMember, BusMemberConfig}, Cache};
//! let prices: Cache<u64, u32> = Cache::builder("prices").build()?;
//! let bus = BusMember::start(BusMemberConfig::new(
//!     "redis://10.0.0.5:6379",
//!     &std::env::var("CORRAL_CLUSTER_SECRET")?,
//!     "booking-1",
//! ))?;
//! bus.attach(&prices);
//! prices.invalidate(&7); // reaches every pod and gateway reading `corral:events`
//! # Ok(()) }
//! ```

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use corral_cluster::Secret;
use corral_core::{Applier, Appliers, Cause, EventSource, InvalidationEvent, Purge};
use corral_redis::{BreakerConfig, Bus, BusConfig, RedisConfig, RedisMetrics, Target};
use parking_lot::Mutex;

use crate::{Cache, Key, Publish};

/// Event ids remembered for deduplication.
const SEEN: usize = 50_000;

/// How a [`BusMember`] joins the bus.
#[derive(Debug, Clone)]
pub struct BusMemberConfig {
    /// The Redis holding the stream (one server: the node holding the stream key).
    pub redis: RedisConfig,
    /// The stream key: the gateways' `cluster.bus.stream` (default `corral:events`).
    pub stream: String,
    /// The cluster's signing secret (at least 16 bytes), shared with the gateways.
    pub secret: String,
    /// This pod's name in events (unique among everything on the stream, e.g. the pod name).
    pub instance: String,
    /// Approximate stream length kept (retention).
    pub maxlen: u64,
    /// How long one XREAD blocks.
    pub block: Duration,
    /// Signed entries older than this are refused (replays).
    pub replay_window: Duration,
}

impl BusMemberConfig {
    /// The gateways' defaults: stream `corral:events`, `MAXLEN ~ 100000`, 1 s blocks, a 24 h
    /// replay window.
    pub fn new(url: &str, secret: &str, instance: &str) -> BusMemberConfig {
        BusMemberConfig {
            redis: RedisConfig {
                target: Target::Url(url.to_string()),
                username: None,
                password: None,
                timeout: Duration::from_millis(500),
                connect_timeout: Duration::from_secs(1),
                connections: 1,
                tls_ca: None,
                breaker: BreakerConfig::default(),
            },
            stream: "corral:events".into(),
            secret: secret.to_string(),
            instance: instance.to_string(),
            maxlen: 100_000,
            block: Duration::from_secs(1),
            replay_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why a bus member could not start.
#[derive(Debug, thiserror::Error)]
pub enum BusMemberError {
    #[error("cluster secret: {0}")]
    Secret(String),
}

#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// True the first time `id` is seen.
    fn first(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() >= SEEN {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

/// Where the bus delivers: the attached caches, behind the bus's own dedupe (an event read
/// twice, e.g. after a reconnection, is applied once).
struct Sink {
    caches: Appliers,
    seen: Mutex<Seen>,
}

impl Applier for Sink {
    fn apply_remote(&self, event: &InvalidationEvent) {
        if !self.seen.lock().first(&event.id) {
            return;
        }
        self.caches.apply_remote(event);
    }

    fn purge_everything(&self, reason: &str) {
        self.caches.purge_everything(reason);
    }
}

/// A pod on the Redis bus. See the [module docs](self). Stops publishing when dropped (the
/// reader stops with the runtime).
pub struct BusMember {
    sink: Arc<Sink>,
    core: Arc<Core>,
}

struct Core {
    bus: Arc<Bus>,
    source: EventSource,
    metrics: RedisMetrics,
}

impl BusMember {
    /// Starts the publisher and the reader (they connect in the background). Needs a Tokio
    /// runtime.
    pub fn start(cfg: BusMemberConfig) -> Result<BusMember, BusMemberError> {
        let secret = Secret::new(&cfg.secret).map_err(BusMemberError::Secret)?;
        let sink = Arc::new(Sink {
            caches: Appliers::default(),
            seen: Mutex::default(),
        });
        let metrics = RedisMetrics::register(&mut prometheus_client::registry::Registry::default());
        let bus = Bus::start(
            BusConfig {
                redis: cfg.redis,
                stream: cfg.stream,
                maxlen: cfg.maxlen,
                block: cfg.block,
                replay_window: cfg.replay_window,
            },
            secret,
            cfg.instance.clone(),
            sink.clone(),
            metrics.clone(),
        );
        Ok(BusMember {
            sink,
            core: Arc::new(Core {
                bus,
                source: EventSource::new(cfg.instance),
                metrics,
            }),
        })
    }

    /// Applies the bus's invalidations to `cache`, and publishes `cache`'s own on the bus.
    pub fn attach<K: Key, V: Clone + Send + Sync + 'static>(&self, cache: &Cache<K, V>) {
        self.sink.caches.add(cache.applier());
        cache.attach_publisher(Arc::new(Publisher(Arc::downgrade(&self.core))));
    }

    /// True while the reader is connected to Redis and following the stream.
    pub fn is_connected(&self) -> bool {
        self.core.metrics.bus_connected.get() == 1
    }

    /// Waits until the reader follows the stream, at most `timeout`. True if it does. Events
    /// appended before that are not read (a new member starts at the stream's end).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_connected() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Events appended to the stream by this member.
    pub fn published(&self) -> u64 {
        self.core.metrics.bus_published.get()
    }

    /// Other members' events read from the stream (before deduplication).
    pub fn received(&self) -> u64 {
        self.core.metrics.bus_received.get()
    }

    /// Stream entries refused (bad signature, undecodable).
    pub fn rejected(&self) -> u64 {
        self.core.metrics.bus_rejected.get()
    }

    /// Registers `corral_library_bus_events_published_total`, `…_received_total`,
    /// `…_rejected_total`, `…_publish_failures_total`, `corral_library_bus_connected` and
    /// `corral_library_bus_resets_total{kind}`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("corral_library_bus");
        let m = &self.core.metrics;
        r.register(
            "events_published",
            "Invalidations appended to the Redis stream",
            m.bus_published.clone(),
        );
        r.register(
            "events_received",
            "Other pods' invalidations read from the Redis stream",
            m.bus_received.clone(),
        );
        r.register(
            "events_rejected",
            "Redis stream entries refused (bad signature, undecodable)",
            m.bus_rejected.clone(),
        );
        r.register(
            "publish_failures",
            "Failed appends to the Redis stream (retried)",
            m.bus_publish_failures.clone(),
        );
        r.register(
            "connected",
            "1 while the Redis bus reader is connected",
            m.bus_connected.clone(),
        );
        r.register(
            "resets",
            "Bus resets by reason (trimmed: every cache emptied; recreated: resumed from the start)",
            m.bus_resets.clone(),
        );
    }
}

struct Publisher(Weak<Core>);

impl Publish for Publisher {
    fn publish(&self, purge: Purge) {
        if let Some(core) = self.0.upgrade() {
            let event = core.source.next(purge, Cause::Admin);
            core.bus.publish(Arc::new(event));
        }
    }
}
