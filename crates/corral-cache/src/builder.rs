//! [`CacheBuilder`]: bounds, lifetimes, namespace, schema version, loader, tags, metrics.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::LibraryMetrics;
use crate::{BoxError, Cache, Key, Loader, Tagger, Weigher};

/// Why a builder refused its settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting} = {value}: {allowed}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub value: String,
    pub allowed: &'static str,
}

/// Builds a [`Cache`]. Reads like moka's builder:
///
/// ```
/// use std::time::Duration;
/// let cache: corral_cache::Cache<u64, String> = corral_cache::Cache::builder("prices")
///     .schema_version(2)
///     .max_bytes(64 << 20)
///     .weigher(|_k, v: &String| v.len() as u32)
///     .time_to_live(Duration::from_secs(300))
///     .negative_ttl(Duration::from_secs(5))
///     .build()
///     .unwrap();
/// assert_eq!(cache.namespace(), "prices");
/// ```
pub struct CacheBuilder<K, V> {
    pub(crate) namespace: String,
    pub(crate) schema: u32,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) max_entries: Option<u64>,
    pub(crate) weigher: Option<Weigher<K, V>>,
    pub(crate) ttl: Duration,
    pub(crate) tti: Option<Duration>,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) refresh_ahead: Option<Duration>,
    pub(crate) xfetch_beta: f64,
    pub(crate) loader: Option<Loader<K, V>>,
    pub(crate) tagger: Option<Tagger<K, V>>,
    pub(crate) metrics: Option<LibraryMetrics>,
    pub(crate) l2: Option<Arc<dyn crate::ValueTier<V>>>,
    _p: PhantomData<fn(K, V)>,
}

impl<K: Key, V: Clone + Send + Sync + 'static> CacheBuilder<K, V> {
    pub(crate) fn new(namespace: &str) -> Self {
        CacheBuilder {
            namespace: namespace.to_string(),
            schema: 1,
            max_bytes: None,
            max_entries: None,
            weigher: None,
            ttl: Duration::from_secs(3600),
            tti: None,
            negative_ttl: None,
            refresh_ahead: None,
            xfetch_beta: 0.0,
            loader: None,
            tagger: None,
            metrics: None,
            l2: None,
            _p: PhantomData,
        }
    }

    /// The layout version of `V`. Part of every key ([`Cache::storage_key`]): bump it when the
    /// value's layout changes, and entries of the old layout are orphaned instead of misread
    /// wherever keys outlive a process (a shared tier, warming lists). Default 1.
    pub fn schema_version(mut self, v: u32) -> Self {
        self.schema = v;
        self
    }

    /// Bound the cache by weight: the sum of [`CacheBuilder::weigher`] over entries (bytes, if
    /// the weigher returns bytes). Least useful entries are evicted beyond it (TinyLFU).
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = Some(n);
        self
    }

    /// Bound the cache by entry count instead.
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = Some(n);
        self
    }

    /// The weight of one entry (for [`CacheBuilder::max_bytes`]). A fixed per-entry overhead
    /// is added to it. Default: `size_of::<K>() + size_of::<V>()`.
    pub fn weigher(mut self, f: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(f));
        self
    }

    /// How long an entry stays fresh after it is loaded or written. The safety net under
    /// every invalidation: nothing outlives it. Default 1 h.
    pub fn time_to_live(mut self, d: Duration) -> Self {
        self.ttl = d;
        self
    }

    /// Drop entries not read for this long.
    pub fn time_to_idle(mut self, d: Duration) -> Self {
        self.tti = Some(d);
        self
    }

    /// Cache "not found" (a loader's `Ok(None)`) for this long. Default: not cached.
    pub fn negative_ttl(mut self, d: Duration) -> Self {
        self.negative_ttl = Some(d);
        self
    }

    /// Refresh-ahead: a read within `window` of an entry's expiry starts a background reload
    /// through the [`CacheBuilder::loader`], and keeps serving the current value meanwhile.
    pub fn refresh_ahead(mut self, window: Duration) -> Self {
        self.refresh_ahead = Some(window);
        self
    }

    /// Probabilistic early refresh (XFetch, Vattani et al. 2015): a read refreshes early with
    /// a probability that grows as expiry nears, scaled by how long the last load took and by
    /// `beta` (1.0 is the paper's default; larger refreshes earlier; 0 disables).
    pub fn xfetch_beta(mut self, beta: f64) -> Self {
        self.xfetch_beta = beta;
        self
    }

    /// The source of truth for read-through ([`Cache::get_or_load`]), refresh-ahead, soft
    /// invalidation, the verifier and warming. `Ok(None)` means "not found".
    pub fn loader<F, Fut, E>(mut self, f: F) -> Self
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.loader = Some(Arc::new(move |k| {
            let fut = f(k);
            Box::pin(async move { fut.await.map_err(Into::into) })
        }));
        self
    }

    /// Tags for every value the cache loads (writes may give their own).
    pub fn tags(mut self, f: impl Fn(&K, &V) -> Vec<String> + Send + Sync + 'static) -> Self {
        self.tagger = Some(Arc::new(f));
        self
    }

    /// Report into these (registered) metrics.
    pub fn metrics(mut self, m: &LibraryMetrics) -> Self {
        self.metrics = Some(m.clone());
        self
    }

    /// Builds the cache, or names the setting that is wrong.
    pub fn build(self) -> Result<Cache<K, V>, ConfigError> {
        let ns = &self.namespace;
        if ns.is_empty()
            || ns.len() > 128
            || !ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(ConfigError {
                setting: "namespace",
                value: format!("{ns:?}"),
                allowed: "1 to 128 characters from A-Z a-z 0-9 - _ .",
            });
        }
        if self.ttl.is_zero() {
            return Err(ConfigError {
                setting: "time_to_live",
                value: "0s".into(),
                allowed: "a positive duration",
            });
        }
        if let (Some(b), Some(e)) = (self.max_bytes, self.max_entries) {
            return Err(ConfigError {
                setting: "max_bytes/max_entries",
                value: format!("{b}/{e}"),
                allowed: "one bound, not both",
            });
        }
        if !(self.xfetch_beta.is_finite() && self.xfetch_beta >= 0.0) {
            return Err(ConfigError {
                setting: "xfetch_beta",
                value: self.xfetch_beta.to_string(),
                allowed: "a finite number >= 0",
            });
        }
        if let Some(w) = self.refresh_ahead {
            if w >= self.ttl {
                return Err(ConfigError {
                    setting: "refresh_ahead",
                    value: format!("{w:?}"),
                    allowed: "a window shorter than time_to_live",
                });
            }
        }
        Ok(Cache::from_builder(self))
    }
}
