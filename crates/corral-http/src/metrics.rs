//! The proxy's Prometheus metrics. Handles are resolved once, so counting on the hit path is
//! one atomic add.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    pub cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// How a request was answered, for `corral_requests_total{cache}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Stale,
    Bypass,
    Revalidated,
}

/// Every metric the proxy updates.
#[derive(Clone)]
pub struct Metrics {
    hit: Counter,
    miss: Counter,
    stale: Counter,
    bypass: Counter,
    revalidated: Counter,
    pub origin_requests: Counter,
    pub coalesced: Counter,
    pub upstream_errors: Family<KindLabel, Counter>,
    pub not_stored: Family<KindLabel, Counter>,
    pub cache_entries: Gauge,
    pub cache_bytes: Gauge,
    pub connections: Gauge,
    pub request_duration: Histogram,
    /// Requests refused before routing (an ambiguous target, a body on GET under `reject`).
    pub refused: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them (every name starts with `corral_`).
    pub fn register(registry: &mut Registry) -> Metrics {
        let requests = Family::<CacheLabel, Counter>::default();
        let by = |cache| requests.get_or_create(&CacheLabel { cache }).clone();
        let m = Metrics {
            hit: by("hit"),
            miss: by("miss"),
            stale: by("stale"),
            bypass: by("bypass"),
            revalidated: by("revalidated"),
            origin_requests: Counter::default(),
            coalesced: Counter::default(),
            upstream_errors: Family::default(),
            not_stored: Family::default(),
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
            connections: Gauge::default(),
            request_duration: Histogram::new(exponential_buckets(0.0001, 2.5, 14)),
            refused: Counter::default(),
        };
        let r = registry;
        r.register(
            "corral_requests",
            "Requests by how the cache answered them",
            requests,
        );
        r.register(
            "corral_origin_requests",
            "Requests sent to origins",
            m.origin_requests.clone(),
        );
        r.register(
            "corral_coalesced_requests",
            "Requests that waited for another request's origin fetch",
            m.coalesced.clone(),
        );
        r.register(
            "corral_upstream_errors",
            "Upstream failures by kind",
            m.upstream_errors.clone(),
        );
        r.register(
            "corral_not_stored",
            "Responses not stored, by reason",
            m.not_stored.clone(),
        );
        r.register(
            "corral_cache_entries",
            "URLs stored in the in-process cache",
            m.cache_entries.clone(),
        );
        r.register(
            "corral_cache_bytes",
            "Bytes charged against the cache bound",
            m.cache_bytes.clone(),
        );
        r.register(
            "corral_connections",
            "Open client connections",
            m.connections.clone(),
        );
        r.register(
            "corral_refused_requests",
            "Requests refused with 400 before routing: an ambiguous target, a body on GET",
            m.refused.clone(),
        );
        r.register(
            "corral_request_duration_seconds",
            "Time to answer a request's head",
            m.request_duration.clone(),
        );
        m
    }

    /// Counts one answered request.
    pub fn answered(&self, outcome: Outcome) {
        match outcome {
            Outcome::Hit => &self.hit,
            Outcome::Miss => &self.miss,
            Outcome::Stale => &self.stale,
            Outcome::Bypass => &self.bypass,
            Outcome::Revalidated => &self.revalidated,
        }
        .inc();
    }

    /// For tests and tools: metrics registered nowhere.
    pub fn unregistered() -> Metrics {
        Metrics::register(&mut Registry::default())
    }
}
