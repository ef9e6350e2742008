//! Prometheus metrics of the library, every name starting with `corral_library_`, labelled
//! with the cache's namespace.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The `cache` label: the cache's namespace.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    pub cache: String,
}

/// `cache` and `kind` labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub cache: String,
    pub kind: String,
}

type C = Family<CacheLabel, Counter>;
type G = Family<CacheLabel, Gauge>;
type F = Family<CacheLabel, Gauge<f64, AtomicU64>>;

/// Every metric of the library. Cheap to clone (shared handles). Register it once with
/// [`LibraryMetrics::register`] and give it to every cache's builder; caches built without one
/// keep unregistered metrics.
#[derive(Debug, Clone, Default)]
pub struct LibraryMetrics {
    pub hits: C,
    pub misses: C,
    pub negative_hits: C,
    pub loads: C,
    pub load_errors: C,
    pub coalesced: C,
    pub stale_served: C,
    pub refreshes: Family<KindLabel, Counter>,
    pub refresh_errors: C,
    pub invalidations: Family<KindLabel, Counter>,
    pub version_rejected: C,
    pub entries: G,
    pub weighted_size: G,
    pub write_behind_depth: G,
    pub write_behind_oldest_seconds: F,
    pub write_behind_flushed: C,
    pub write_behind_failed: C,
    pub verifier_checked: C,
    pub verifier_drifted: C,
    pub verifier_drift_ratio: F,
    pub warmed: C,
}

impl LibraryMetrics {
    /// New metrics, registered in `registry` under `corral_library_*`.
    pub fn register(registry: &mut Registry) -> LibraryMetrics {
        let m = LibraryMetrics::default();
        let r = registry.sub_registry_with_prefix("corral_library");
        r.register("hits", "Lookups answered from the cache", m.hits.clone());
        r.register(
            "misses",
            "Lookups not answered from the cache",
            m.misses.clone(),
        );
        r.register(
            "negative_hits",
            "Lookups answered by a cached absence",
            m.negative_hits.clone(),
        );
        r.register(
            "loads",
            "Loader calls (single-flight leaders)",
            m.loads.clone(),
        );
        r.register(
            "load_errors",
            "Loader calls that failed (never cached)",
            m.load_errors.clone(),
        );
        r.register(
            "coalesced",
            "Callers that waited for another caller's load",
            m.coalesced.clone(),
        );
        r.register(
            "stale_served",
            "Stale (soft-invalidated) values served while refreshing",
            m.stale_served.clone(),
        );
        r.register(
            "refreshes",
            "Background refreshes by kind (ahead, xfetch, soft)",
            m.refreshes.clone(),
        );
        r.register(
            "refresh_errors",
            "Background refreshes that failed (old value kept)",
            m.refresh_errors.clone(),
        );
        r.register(
            "invalidations",
            "Invalidations applied by kind (key, tag, prefix, all) ",
            m.invalidations.clone(),
        );
        r.register(
            "version_rejected",
            "Versioned writes refused because a newer version is cached",
            m.version_rejected.clone(),
        );
        r.register(
            "entries",
            "Entries in the cache (approximate)",
            m.entries.clone(),
        );
        r.register(
            "weighted_size",
            "Weighted size of the cache (bytes when bounded in bytes)",
            m.weighted_size.clone(),
        );
        r.register(
            "write_behind_depth",
            "Writes queued, not yet flushed to the source",
            m.write_behind_depth.clone(),
        );
        r.register(
            "write_behind_oldest_seconds",
            "Age of the oldest queued write",
            m.write_behind_oldest_seconds.clone(),
        );
        r.register(
            "write_behind_flushed",
            "Writes flushed to the source",
            m.write_behind_flushed.clone(),
        );
        r.register(
            "write_behind_failed",
            "Writes dropped after the flusher failed every retry",
            m.write_behind_failed.clone(),
        );
        r.register(
            "verifier_checked",
            "Entries the verifier compared with the source",
            m.verifier_checked.clone(),
        );
        r.register(
            "verifier_drifted",
            "Entries the verifier found different from the source (invalidated)",
            m.verifier_drifted.clone(),
        );
        r.register(
            "verifier_drift_ratio",
            "Drifted / checked in the verifier's last round",
            m.verifier_drift_ratio.clone(),
        );
        r.register("warmed", "Keys loaded by warming", m.warmed.clone());
        m
    }
}

/// One cache's resolved handles (no label lookup on the hot path).
#[derive(Debug, Clone)]
pub(crate) struct CacheMetrics {
    pub family: LibraryMetrics,
    pub label: CacheLabel,
    pub hits: Counter,
    pub misses: Counter,
    pub negative_hits: Counter,
    pub loads: Counter,
    pub load_errors: Counter,
    pub coalesced: Counter,
    pub stale_served: Counter,
    pub refresh_errors: Counter,
    pub version_rejected: Counter,
    pub entries: Gauge,
    pub weighted_size: Gauge,
}

impl CacheMetrics {
    pub fn new(family: LibraryMetrics, namespace: &str) -> CacheMetrics {
        let label = CacheLabel {
            cache: namespace.to_string(),
        };
        let c = |f: &C| f.get_or_create(&label).clone();
        let entries = family.entries.get_or_create(&label).clone();
        let weighted_size = family.weighted_size.get_or_create(&label).clone();
        CacheMetrics {
            hits: c(&family.hits),
            misses: c(&family.misses),
            negative_hits: c(&family.negative_hits),
            loads: c(&family.loads),
            load_errors: c(&family.load_errors),
            coalesced: c(&family.coalesced),
            stale_served: c(&family.stale_served),
            refresh_errors: c(&family.refresh_errors),
            version_rejected: c(&family.version_rejected),
            entries,
            weighted_size,
            family,
            label,
        }
    }

    pub fn kind(&self, f: &Family<KindLabel, Counter>, kind: &str) {
        f.get_or_create(&KindLabel {
            cache: self.label.cache.clone(),
            kind: kind.to_string(),
        })
        .inc();
    }
}
