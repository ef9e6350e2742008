//! The Redis tier's Prometheus metrics (all named `corral_…`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A one-label series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Label {
    pub kind: &'static str,
}

/// Handles to every metric of the tier; cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisMetrics {
    /// L2 lookups by result: hit, miss, error, skipped (breaker open or purge marks pending).
    pub l2_lookups: Family<Label, Counter>,
    /// L2 writes by result: stored, too_large, rate_limited, error, skipped.
    pub l2_writes: Family<Label, Counter>,
    /// L2 lookup latency (seconds), including the purge-mark check.
    pub l2_latency: Histogram,
    /// Every Redis call by result: ok, error, timeout, refused (breaker open / not connected).
    pub calls: Family<Label, Counter>,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: Gauge,
    /// Breaker transitions by the state entered.
    pub breaker_transitions: Family<Label, Counter>,
    /// Fill leases by outcome: acquired, waited, filled (woken by the holder), takeover (the
    /// holder's lease vanished unannounced: it died), timeout (waited `lease_wait`), unavailable.
    pub leases: Family<Label, Counter>,
    /// Time spent waiting for another replica's fill.
    pub lease_wait: Histogram,
    /// Bus events appended to the stream.
    pub bus_published: Counter,
    /// Bus appends that failed (retried).
    pub bus_publish_failures: Counter,
    /// Bus events read from the stream (other replicas' events, before dedupe).
    pub bus_received: Counter,
    /// Bus events refused (bad signature, undecodable).
    pub bus_rejected: Counter,
    /// Age of bus events when read (seconds).
    pub bus_lag: Histogram,
    /// Bus resets by reason: trimmed (purge all of L1), recreated (stream lost, resumed from 0).
    pub bus_resets: Family<Label, Counter>,
    /// 1 while the bus reader is connected.
    pub bus_connected: Gauge,
    /// Appends no replica confirmed (Redis Cluster only).
    pub bus_unreplicated: Counter,
    /// Purge marks not yet written to Redis (L2 lookups are skipped while any are pending).
    pub marks_pending: Gauge,
}

impl RedisMetrics {
    pub fn register(r: &mut Registry) -> RedisMetrics {
        let m = RedisMetrics {
            l2_lookups: Family::default(),
            l2_writes: Family::default(),
            l2_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            calls: Family::default(),
            breaker_state: Gauge::default(),
            breaker_transitions: Family::default(),
            leases: Family::default(),
            lease_wait: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            bus_published: Counter::default(),
            bus_publish_failures: Counter::default(),
            bus_received: Counter::default(),
            bus_rejected: Counter::default(),
            bus_lag: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            bus_resets: Family::default(),
            bus_connected: Gauge::default(),
            bus_unreplicated: Counter::default(),
            marks_pending: Gauge::default(),
        };
        r.register(
            "corral_l2_lookups",
            "L2 (Redis) lookups by result",
            m.l2_lookups.clone(),
        );
        r.register(
            "corral_l2_writes",
            "L2 (Redis) writes by result",
            m.l2_writes.clone(),
        );
        r.register(
            "corral_l2_latency_seconds",
            "L2 lookup latency",
            m.l2_latency.clone(),
        );
        r.register(
            "corral_redis_calls",
            "Redis calls by result",
            m.calls.clone(),
        );
        r.register(
            "corral_redis_breaker_state",
            "Redis circuit breaker: 0 closed, 1 open, 2 half-open",
            m.breaker_state.clone(),
        );
        r.register(
            "corral_redis_breaker_transitions",
            "Redis circuit breaker transitions, by state entered",
            m.breaker_transitions.clone(),
        );
        r.register(
            "corral_fill_leases",
            "Cluster-wide fill leases by outcome",
            m.leases.clone(),
        );
        r.register(
            "corral_fill_lease_wait_seconds",
            "Time spent waiting for another replica's fill",
            m.lease_wait.clone(),
        );
        r.register(
            "corral_bus_events_published",
            "Invalidation events appended to the Redis stream",
            m.bus_published.clone(),
        );
        r.register(
            "corral_bus_publish_failures",
            "Failed appends to the Redis stream (retried)",
            m.bus_publish_failures.clone(),
        );
        r.register(
            "corral_bus_events_received",
            "Invalidation events read from the Redis stream",
            m.bus_received.clone(),
        );
        r.register(
            "corral_bus_events_rejected",
            "Redis stream entries refused (bad signature, undecodable)",
            m.bus_rejected.clone(),
        );
        r.register(
            "corral_bus_lag_seconds",
            "Age of invalidation events when read from the Redis stream",
            m.bus_lag.clone(),
        );
        r.register(
            "corral_bus_resets",
            "Redis bus resets by reason (trimmed: L1 purged; recreated: resumed from the start)",
            m.bus_resets.clone(),
        );
        r.register(
            "corral_bus_connected",
            "1 while the Redis bus reader is connected",
            m.bus_connected.clone(),
        );
        r.register(
            "corral_bus_unreplicated",
            "Redis Cluster bus appends no replica confirmed within the call timeout",
            m.bus_unreplicated.clone(),
        );
        r.register(
            "corral_l2_marks_pending",
            "Purge marks not yet written to Redis",
            m.marks_pending.clone(),
        );
        m
    }

    pub(crate) fn inc(family: &Family<Label, Counter>, kind: &'static str) {
        family.get_or_create(&Label { kind }).inc();
    }
}
